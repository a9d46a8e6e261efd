//! The bank's side of moving accounts between shards
//! ([`crate::shard::rebalance`]): the ring's groups are the shards
//! themselves (a group id is a shard's node id), and each step is a
//! message ([`ShardMsg::Move`]) sent again every attempt until the shard
//! answers it durably ([`ReplyMsg::MoveReply`]). The steps are idempotent, so a
//! repeat that crossed a late answer changes nothing.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::participant::{AccountMove, AccountPart, MoveAnswer, MAX_MOVE_BYTES};
use super::{Msg, ReplyMsg, ShardMsg, TxnBug};
use crate::env::{codec, timeout, Env};
use crate::log::client::{Addressed, ClientError, Inbox};
use crate::log::ClientId;
use crate::ring::KeyHash;
use crate::shard::rebalance::{Groups, Page, RebalanceError};
use crate::shard::{GroupId, RangeSet};

/// How long one attempt waits for a shard's answer before sending again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(100);
/// How long to wait before asking again for a part whose prepared
/// transactions are not decided yet.
const DRAIN_RETRY: Duration = Duration::from_millis(50);

/// Shards' answers to move steps, for an [`Inbox`].
struct MoveAnswers;

impl Addressed for MoveAnswers {
    type Answer = (u64, MoveAnswer);
    fn read(bytes: &[u8]) -> Option<(ClientId, Self::Answer)> {
        match codec::decode::<Msg>(bytes) {
            Ok(Msg::Reply(ReplyMsg::MoveReply {
                client,
                request,
                answer,
            })) => Some((client, (request, answer))),
            _ => None,
        }
    }
}

/// An operator's client of every shard of a bank, for the rebalancing
/// procedure. It reads answers through the node's [`Inbox`], which a
/// client of the directory shares.
pub struct ShardGroups<E: Env> {
    inbox: Arc<Inbox<E>>,
    shards: Vec<GroupId>,
    client: ClientId,
    next_request: u64,
    bug: Option<TxnBug>,
}

impl<E: Env> ShardGroups<E> {
    /// The shards `shards` (their node ids), reached from `inbox`'s node,
    /// which must be an operator's ([`crate::log::membership::OPERATOR_IDS`]):
    /// shards take move steps from no one else.
    pub fn new(inbox: Arc<Inbox<E>>, shards: Vec<GroupId>) -> Self {
        let client = inbox.env().rng().gen();
        inbox.register::<MoveAnswers>(client);
        ShardGroups {
            inbox,
            shards,
            client,
            next_request: 0,
            bug: None,
        }
    }

    /// The same shards, moved by a procedure with a planted bug (the
    /// rebalancer's variants of [`TxnBug`]).
    #[cfg(feature = "planted-bugs")]
    #[doc(hidden)]
    pub fn with_bug(mut self, bug: Option<TxnBug>) -> Self {
        self.bug = bug;
        self
    }

    /// Sends `step` to `shard` until it answers or `limit` passes.
    async fn ask(&mut self, shard: GroupId, step: AccountMove, limit: Duration) -> Result<MoveAnswer, RebalanceError> {
        if !self.shards.contains(&shard) {
            return Err(RebalanceError::UnknownGroup(shard));
        }
        self.next_request += 1;
        let request = self.next_request;
        let msg = Msg::Shard(ShardMsg::Move {
            client: self.client,
            request,
            step,
        });
        let bytes = codec::encode(&msg).map_err(|e| RebalanceError::Protocol {
            group: shard,
            answer: format!("the step does not encode: {e}"),
        })?;
        let env = self.inbox.env().clone();
        let deadline = env.now() + limit;
        while env.now() < deadline {
            let _ = env.send(shard, bytes.clone()).await;
            let wait = ATTEMPT_TIMEOUT.min(deadline.saturating_sub(env.now()));
            let answered = timeout(&env, wait, async {
                loop {
                    let (answered, answer) = self.inbox.next::<MoveAnswers>(self.client).await;
                    if answered == request {
                        return answer;
                    }
                }
            })
            .await;
            match answered {
                Some(MoveAnswer::Refused(refusal)) => return Err(RebalanceError::Refused { group: shard, refusal }),
                Some(answer) => return Ok(answer),
                None => {}
            }
        }
        Err(RebalanceError::Unavailable {
            group: shard,
            error: ClientError::Timeout,
        })
    }

    /// `ask` for a step answered `Done`: the accounts it moved.
    async fn done(&mut self, shard: GroupId, step: AccountMove, limit: Duration) -> Result<usize, RebalanceError> {
        match self.ask(shard, step, limit).await? {
            MoveAnswer::Done { accounts } => Ok(accounts),
            other => Err(unexpected(shard, other)),
        }
    }
}

impl<E: Env> Drop for ShardGroups<E> {
    fn drop(&mut self) {
        self.inbox.unregister(self.client);
    }
}

fn unexpected(group: GroupId, answer: MoveAnswer) -> RebalanceError {
    RebalanceError::Protocol {
        group,
        answer: format!("{answer:?}"),
    }
}

impl<E: Env> Groups for ShardGroups<E> {
    type Part = AccountPart;

    fn ids(&self) -> Vec<GroupId> {
        self.shards.clone()
    }

    fn now(&self) -> Duration {
        self.inbox.env().now()
    }

    fn max_step_bytes(&self) -> usize {
        MAX_MOVE_BYTES
    }

    fn empty_fence_bytes(&self, epoch: u64, to: GroupId) -> usize {
        let ranges = RangeSet::default();
        let msg = Msg::Shard(ShardMsg::Move {
            client: ClientId::MAX,
            request: u64::MAX,
            step: AccountMove::Fence { epoch, to, ranges },
        });
        codec::encode(&msg).map_or(usize::MAX, |b| b.len())
    }

    fn measure(part: &AccountPart) -> (usize, usize) {
        (part.accounts.len(), codec::encode(part).map_or(0, |b| b.len()))
    }

    fn empty_part(ranges: RangeSet) -> AccountPart {
        AccountPart {
            ranges,
            accounts: vec![],
        }
    }

    fn installs_before_fence(&self) -> bool {
        self.bug == Some(TxnBug::InstallBeforeFence)
    }

    async fn assign(&mut self, group: GroupId, limit: Duration) -> Result<(), RebalanceError> {
        let ranges = RangeSet::default();
        self.done(group, AccountMove::Assign { epoch: 1, ranges }, limit)
            .await?;
        Ok(())
    }

    async fn fence(
        &mut self,
        group: GroupId,
        (epoch, to): (u64, GroupId),
        ranges: RangeSet,
        limit: Duration,
    ) -> Result<(), RebalanceError> {
        self.done(group, AccountMove::Fence { epoch, to, ranges }, limit)
            .await?;
        Ok(())
    }

    async fn page(
        &mut self,
        group: GroupId,
        (epoch, to): (u64, GroupId),
        from: KeyHash,
        limit: usize,
        wait: Duration,
    ) -> Result<Option<Page<AccountPart>>, RebalanceError> {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        let env = self.inbox.env().clone();
        let deadline = env.now() + wait;
        loop {
            let left = deadline.saturating_sub(env.now());
            let step = AccountMove::Part { epoch, to, from, limit };
            match self.ask(group, step, left).await? {
                MoveAnswer::Page(page) => {
                    return Ok(page.map(|page| Page {
                        part: page.part,
                        next: page.next,
                    }))
                }
                // Prepared transactions still hold some of its accounts.
                MoveAnswer::Draining { .. } if env.now() + DRAIN_RETRY < deadline => env.sleep(DRAIN_RETRY).await,
                MoveAnswer::Draining { .. } => {
                    return Err(RebalanceError::Unavailable {
                        group,
                        error: ClientError::Timeout,
                    })
                }
                other => return Err(unexpected(group, other)),
            }
        }
    }

    async fn install(
        &mut self,
        group: GroupId,
        (epoch, from): (u64, GroupId),
        part: AccountPart,
        limit: Duration,
    ) -> Result<usize, RebalanceError> {
        self.done(group, AccountMove::Install { epoch, from, part }, limit)
            .await
    }

    async fn drop_part(
        &mut self,
        group: GroupId,
        (epoch, to): (u64, GroupId),
        limit: Duration,
    ) -> Result<(), RebalanceError> {
        self.done(group, AccountMove::Drop { epoch, to }, limit).await?;
        Ok(())
    }
}
