//! Moving accounts between shards: a bank shard's side of the steps in
//! [`crate::shard`] (fence, install, drop), taken from operators only.
//!
//! **Drain, then ship.** A fence aborts the active transactions that
//! touch the fenced ranges and from then on refuses every operation on
//! their keys ([`AbortReason::NotServed`]). A *prepared* transaction
//! cannot be aborted (it voted yes), so the part — the committed accounts
//! of the ranges — is not readable while one holds a lock there
//! ([`MoveAnswer::Draining`]): it commits or aborts here first, and its
//! writes travel with the part. A prepared transaction is therefore
//! never shipped half-done; a move waits for the slowest one on its
//! ranges (2PC's blocking window, which the replicated coordinator
//! bounds).
//!
//! Every step is synced to the shard's log before it is answered and
//! replayed on recovery; every step is idempotent, so the operator's
//! procedure ([`crate::shard::rebalance`]) retries any of them freely.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Participant, Phase, Record};
use crate::env::{codec, NodeId};
use crate::log::membership::is_operator;
use crate::ring::{hash_key, HashRange, KeyHash};
use crate::shard::{GroupId, RangeSet, ShardRefusal};
use crate::txn::{AbortReason, Key, Msg, Output, ReplyMsg, ShardMsg, TxnBug, TxnEvent, Value};

/// The most bytes of accounts one install carries, encoded: a quarter
/// of the codec's limit, so the install's message and log record always
/// encode.
pub const MAX_MOVE_BYTES: usize = crate::env::MAX_MESSAGE_BYTES / 4;

/// One step of moving accounts, sent by an operator to a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountMove {
    /// A shard created for a sharded deployment serves `ranges` (a shard
    /// joining the ring: none). Only a shard that holds no accounts and
    /// has taken no part in a move may be assigned.
    Assign {
        /// The ring's epoch the shard joins at.
        epoch: u64,
        /// The account-key hashes it serves.
        ranges: RangeSet,
    },
    /// Stops serving `ranges` (aborting the active transactions on them)
    /// and keeps their accounts as the part for `to`.
    Fence {
        /// The epoch of the ring view the move leads to.
        epoch: u64,
        /// The shard the accounts move to.
        to: GroupId,
        /// The account-key hashes that move.
        ranges: RangeSet,
    },
    /// Reads the page from hash `from` on of the part fenced for `to` at
    /// `epoch`, cut to install as one step of at most `limit` bytes.
    Part {
        /// The move's epoch.
        epoch: u64,
        /// The target shard.
        to: GroupId,
        /// The first hash of the page.
        from: KeyHash,
        /// The most bytes the page's install may take (at most
        /// [`MAX_MOVE_BYTES`]).
        limit: u32,
    },
    /// Starts serving the part (or a page of it) a shard fenced for this
    /// one.
    Install {
        /// The move's epoch.
        epoch: u64,
        /// The shard that fenced it.
        from: GroupId,
        /// Its ranges and accounts.
        part: AccountPart,
    },
    /// The source forgets the part it fenced for `to` at `epoch`, once
    /// the target installed it.
    Drop {
        /// The move's epoch.
        epoch: u64,
        /// The target shard.
        to: GroupId,
    },
}

/// Accounts of some ranges, as a source fenced them: committed values
/// only (no transaction is in flight on them once the part is readable).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountPart {
    /// The account-key hashes the part covers.
    pub ranges: RangeSet,
    /// Every account with a value in those ranges.
    pub accounts: Vec<(Key, Value)>,
}

/// A page of a part, and where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountPage {
    /// The page: some of the part's ranges, with their accounts.
    pub part: AccountPart,
    /// The first hash of the next page, if any is left.
    pub next: Option<KeyHash>,
}

/// A shard's answer to an [`AccountMove`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveAnswer {
    /// Applied (a repeat too): how many accounts it fenced, installed or
    /// dropped.
    Done {
        /// Accounts moved by this step.
        accounts: usize,
    },
    /// The page asked for; `None` once the part was dropped (an earlier
    /// run installed it).
    Page(Option<AccountPage>),
    /// The part is not readable yet: prepared transactions hold locks on
    /// its accounts. Ask again.
    Draining {
        /// How many.
        prepared: usize,
    },
    /// Not applied.
    Refused(ShardRefusal),
}

impl Participant {
    /// An operator's step of a move, answered to `from` once durable.
    pub(super) fn on_move(&mut self, from: NodeId, (client, request): (u64, u64), step: AccountMove, out: &mut Output) {
        if !is_operator(from) {
            tracing::warn!(shard = self.id, from, ?step, "refusing a move step from a non-operator");
            return;
        }
        tracing::debug!(shard = self.id, ?step, "move step asked");
        let answer = match step {
            AccountMove::Part {
                epoch,
                to,
                from: page_from,
                limit,
            } => self.page(epoch, to, page_from, limit),
            step => {
                let (answer, record) = self.apply_move(step, out);
                if let Some(step) = record {
                    out.record(&Record::Moved(step));
                    out.sync();
                    out.event(self.serving());
                }
                answer
            }
        };
        out.send(
            from,
            Msg::Reply(ReplyMsg::MoveReply {
                client,
                request,
                answer,
            }),
        );
    }

    /// Applies a step that changes the shard (not `Part`): its answer and
    /// the record that replays it (`None` if it changed nothing); the
    /// aborts of the transactions a fence cut off go to `out`. Recovery
    /// replays the records through here.
    pub(super) fn apply_move(&mut self, step: AccountMove, out: &mut Output) -> (MoveAnswer, Option<AccountMove>) {
        let done = |accounts| MoveAnswer::Done { accounts };
        let epoch = match &step {
            AccountMove::Fence { epoch, .. } | AccountMove::Install { epoch, .. } => *epoch,
            _ => u64::MAX,
        };
        if epoch < self.ownership.epoch() {
            // Steps reach a shard as plain messages, which the network may
            // copy and deliver late: a fence of a finished rebalance would
            // take ranges the shard serves again out of service for good.
            return (MoveAnswer::Refused(ShardRefusal::Stale), None);
        }
        match step {
            AccountMove::Assign { epoch, ranges } => {
                let prepared = self.txns.values().any(|t| matches!(t.phase, Phase::Prepared { .. }));
                if self.ownership.is_unsharded() && (!self.data.is_empty() || prepared) {
                    // Its accounts would fall outside what it serves.
                    return (MoveAnswer::Refused(ShardRefusal::NotEmpty), None);
                }
                match self.ownership.assign(epoch, ranges.clone()) {
                    // Work begun before (a stray client's) on keys it
                    // does not serve now is void.
                    Ok(()) => {
                        self.abort_unserved(out);
                        (done(0), Some(AccountMove::Assign { epoch, ranges }))
                    }
                    Err(refusal) => (MoveAnswer::Refused(refusal), None),
                }
            }
            AccountMove::Fence { .. } if self.unassigned() => (MoveAnswer::Refused(ShardRefusal::NotAssigned), None),
            AccountMove::Fence { epoch, to, ranges } => {
                let leaving = self.ownership.fence(epoch, &ranges);
                self.abort_unserved(out);
                let accounts = self.accounts_in(&leaving).count();
                if !leaving.is_empty() || self.outbox.contains_key(&(epoch, to)) {
                    let part = self.outbox.entry((epoch, to)).or_default();
                    for r in leaving.ranges() {
                        part.insert(*r);
                    }
                }
                (done(accounts), Some(AccountMove::Fence { epoch, to, ranges }))
            }
            AccountMove::Install { epoch, from, part } => self.install(epoch, from, part),
            AccountMove::Drop { epoch, to } => {
                let Some(ranges) = self.outbox.remove(&(epoch, to)) else {
                    return (done(0), None);
                };
                // What it serves again since (a later move back) stays.
                let mut gone = ranges;
                gone.subtract(self.ownership.serving());
                let keys: Vec<Key> = self.accounts_in(&gone).map(|(k, _)| k.clone()).collect();
                for key in &keys {
                    self.data.remove(key);
                }
                (done(keys.len()), Some(AccountMove::Drop { epoch, to }))
            }
            AccountMove::Part { .. } => (done(0), None),
        }
    }

    /// Starts serving what `part` brings that the move `(epoch, from)`
    /// has not installed here yet (a run of the rebalancer may cut the
    /// pages differently from the last): a repeat changes nothing.
    fn install(&mut self, epoch: u64, from: GroupId, part: AccountPart) -> (MoveAnswer, Option<AccountMove>) {
        let mut keys = BTreeSet::new();
        let valid = part
            .accounts
            .iter()
            .all(|(key, _)| keys.insert(key.as_str()) && part.ranges.contains(hash_key(key.as_bytes())));
        if !valid {
            return (MoveAnswer::Refused(ShardRefusal::InvalidPart), None);
        }
        let fresh = self.ownership.not_installed(epoch, from, &part.ranges);
        if fresh.is_empty() {
            return (MoveAnswer::Done { accounts: 0 }, None);
        }
        if let Err(refusal) = self.ownership.install(epoch, from, &fresh) {
            return (MoveAnswer::Refused(refusal), None);
        }
        let stale: Vec<Key> = self.accounts_in(&fresh).map(|(k, _)| k.clone()).collect();
        for key in stale {
            self.data.remove(&key);
        }
        let arriving: Vec<(Key, Value)> = part
            .accounts
            .into_iter()
            .filter(|(key, _)| fresh.contains(hash_key(key.as_bytes())))
            .collect();
        self.data.extend(arriving.iter().cloned());
        let record = AccountMove::Install {
            epoch,
            from,
            part: AccountPart {
                ranges: fresh,
                accounts: arriving.clone(),
            },
        };
        (
            MoveAnswer::Done {
                accounts: arriving.len(),
            },
            Some(record),
        )
    }

    /// The page of the part fenced for `to` at `epoch` from hash `from`
    /// on, once no prepared transaction holds any of its accounts.
    fn page(&self, epoch: u64, to: GroupId, from: KeyHash, limit: u32) -> MoveAnswer {
        let Some(ranges) = self.outbox.get(&(epoch, to)) else {
            return MoveAnswer::Page(None);
        };
        let prepared = self
            .txns
            .values()
            .filter(|t| t.locked.iter().any(|k| ranges.contains(hash_key(k.as_bytes()))))
            .count();
        if prepared > 0 && self.config.bug != Some(TxnBug::ShipBeforeDrained) {
            // PLANTED BUG (the second condition): the part ships while a
            // prepared transaction may still commit writes to it here.
            return MoveAnswer::Draining { prepared };
        }
        let mut rest = ranges.clone();
        if let Some(below) = from.checked_sub(1) {
            rest.subtract(&RangeSet::from_ranges([HashRange { start: 0, end: below }]));
        }
        let accounts: Vec<(Key, Value)> = self.accounts_in(&rest).map(|(k, v)| (k.clone(), v.clone())).collect();
        let empty = Msg::Shard(ShardMsg::Move {
            client: u64::MAX,
            request: u64::MAX,
            step: AccountMove::Install {
                epoch,
                from: GroupId::MAX,
                part: AccountPart::default(),
            },
        });
        let empty_bytes = codec::encode(&empty).map_or(usize::MAX, |b| b.len());
        let limit = (limit as usize).min(MAX_MOVE_BYTES);
        let mut pieces =
            crate::shard::pack(&rest, &accounts, |(k, _)| hash_key(k.as_bytes()), empty_bytes, limit).into_iter();
        let (ranges, accounts) = pieces.next().unwrap_or_default();
        MoveAnswer::Page(Some(AccountPage {
            part: AccountPart { ranges, accounts },
            next: pieces.next().and_then(|(ranges, _)| ranges.first()),
        }))
    }

    /// The report of what the shard serves now.
    pub(super) fn serving(&self) -> TxnEvent {
        TxnEvent::Serving {
            ranges: self.ownership.serving().clone(),
        }
    }

    /// Aborts the active transactions holding a key this shard no longer
    /// serves: they could never prepare here.
    fn abort_unserved(&mut self, out: &mut Output) {
        let cut_off: Vec<_> = self
            .txns
            .iter()
            .filter(|(_, t)| matches!(t.phase, Phase::Active { .. }))
            .filter(|(_, t)| t.locked.iter().any(|k| self.not_served(k).is_some()))
            .map(|(&txn, _)| txn)
            .collect();
        for txn in cut_off {
            self.abort_active(txn, out);
        }
    }

    /// The committed accounts whose key hashes lie in `ranges`.
    fn accounts_in<'a>(&'a self, ranges: &'a RangeSet) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
        self.data
            .iter()
            .filter(|(k, _)| ranges.contains(hash_key(k.as_bytes())))
    }

    /// A joining shard not assigned yet: it serves nothing.
    fn unassigned(&self) -> bool {
        self.config.joining && self.ownership.is_unsharded()
    }

    /// The refusal of an operation on `key` if this shard does not serve
    /// it (a joining shard serves nothing until assigned).
    pub(super) fn not_served(&self, key: &str) -> Option<AbortReason> {
        let h = hash_key(key.as_bytes());
        let fenced_but_served =
            self.config.bug == Some(TxnBug::ServeAfterFence) && self.outbox.values().any(|r| r.contains(h));
        let served = !self.unassigned() && (self.ownership.serves(h) || fenced_but_served);
        (!served).then_some(AbortReason::NotServed {
            shard: self.id,
            epoch: self.ownership.epoch(),
        })
    }

    /// The moving part of [`Participant::check`]: a fenced range is not
    /// served; every account lies in a range served or fenced; every lock
    /// on a key not served is held by prepared transactions only, which
    /// the fence could not abort.
    pub(super) fn check_moves(&self) {
        let served = self.ownership.serving();
        for ((epoch, to), ranges) in &self.outbox {
            assert!(
                served.intersection(ranges).is_empty(),
                "shard {}: serves part of what it fenced for {to} at {epoch}",
                self.id
            );
        }
        let kept = |key: &str| {
            let h = hash_key(key.as_bytes());
            served.contains(h) || self.outbox.values().any(|r| r.contains(h))
        };
        for key in self.data.keys() {
            assert!(
                kept(key),
                "shard {}: holds account {key:?} it neither serves nor ships",
                self.id
            );
        }
        for (key, lock) in &self.locks {
            if served.contains(hash_key(key.as_bytes())) {
                continue;
            }
            for holder in &lock.holders {
                let prepared = self
                    .txns
                    .get(holder)
                    .is_some_and(|t| matches!(t.phase, Phase::Prepared { .. }));
                assert!(
                    prepared && kept(key),
                    "shard {}: {holder} holds {key:?}, which it does not serve, without being prepared",
                    self.id
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{config, get, log_of, prepare, put, records, shard, vote_of, C, CLIENT, MS};
    use super::super::ParticipantConfig;
    use super::*;
    use crate::log::membership::OPERATOR_IDS;
    use crate::txn::{Decision, TxnEvent};

    const OPERATOR: NodeId = OPERATOR_IDS.start;
    const TARGET: GroupId = 3;

    /// Every hash of key `key`'s: a range holding it alone.
    fn only(key: &str) -> RangeSet {
        let h = hash_key(key.as_bytes());
        RangeSet::from_ranges([HashRange { start: h, end: h }])
    }

    fn step(p: &mut Participant, step: AccountMove) -> (MoveAnswer, Output) {
        let steps = p.on_message(
            MS,
            OPERATOR,
            ShardMsg::Move {
                client: 9,
                request: 7,
                step,
            },
        );
        let answer = steps
            .messages
            .iter()
            .find_map(|s| match s {
                (
                    OPERATOR,
                    Msg::Reply(ReplyMsg::MoveReply {
                        client: 9,
                        request: 7,
                        answer,
                    }),
                ) => Some(answer.clone()),
                _ => None,
            })
            .expect("an answer to the operator");
        (answer, steps)
    }

    fn commit(p: &mut Participant, txn: u64, key: &str, v: u8) -> Vec<Output> {
        put(p, txn, key, v).unwrap();
        let prepared = prepare(p, txn);
        let decided = p.on_message(
            MS,
            C,
            ShardMsg::Decide {
                txn,
                decision: Decision::Commit,
            },
        );
        vec![prepared, decided]
    }

    fn part(p: &mut Participant, to: GroupId) -> MoveAnswer {
        step(
            p,
            AccountMove::Part {
                epoch: 2,
                to,
                from: 0,
                limit: u32::MAX,
            },
        )
        .0
    }

    /// An empty shard joining the ring.
    fn target() -> Participant {
        joined().0
    }

    /// An empty shard joining the ring, and the steps that assigned it.
    fn joined() -> (Participant, Output) {
        let mut t = Participant::recover(TARGET, &[], Duration::ZERO, config()).unwrap().0;
        let assign = AccountMove::Assign {
            epoch: 1,
            ranges: RangeSet::default(),
        };
        let (answer, steps) = step(&mut t, assign);
        assert_eq!(answer, MoveAnswer::Done { accounts: 0 });
        (t, steps)
    }

    /// The whole move of `acct-1`, each step durable before its answer:
    /// the source refuses the key from the fence on, the target serves it
    /// with its committed value from the install on, the source forgets
    /// it at the drop.
    #[test]
    fn an_account_moves_with_its_committed_value() {
        let mut source = shard();
        commit(&mut source, 1, "acct-1", 40);
        commit(&mut source, 2, "acct-2", 50);
        let mut target = target();
        let (answer, steps) = step(
            &mut source,
            AccountMove::Fence {
                epoch: 2,
                to: TARGET,
                ranges: only("acct-1"),
            },
        );
        assert_eq!(answer, MoveAnswer::Done { accounts: 1 });
        assert!(
            matches!(records(&steps)[..], [Record::Moved(_)])
                && steps.sync
                && matches!(steps.events[..], [TxnEvent::Serving { .. }])
                && steps.messages.len() == 1,
            "synced and reported before answered: {steps:?}"
        );
        assert_eq!(
            get(&mut source, 3, "acct-1"),
            Err(AbortReason::NotServed { shard: 2, epoch: 2 })
        );
        assert_eq!(get(&mut source, 4, "acct-2"), Ok(Some(vec![50])), "the rest is served");
        assert_eq!(
            get(&mut target, 5, "acct-1"),
            Err(AbortReason::NotServed {
                shard: TARGET,
                epoch: 1
            })
        );
        let MoveAnswer::Page(Some(page)) = part(&mut source, TARGET) else {
            panic!("a page")
        };
        assert_eq!(page.part.accounts, vec![("acct-1".to_string(), vec![40])]);
        assert_eq!(page.next, None);
        let install = AccountMove::Install {
            epoch: 2,
            from: 2,
            part: page.part,
        };
        assert_eq!(step(&mut target, install.clone()).0, MoveAnswer::Done { accounts: 1 });
        assert_eq!(
            step(&mut target, install).0,
            MoveAnswer::Done { accounts: 0 },
            "a repeat installs nothing"
        );
        assert_eq!(get(&mut target, 6, "acct-1"), Ok(Some(vec![40])));
        let drop = AccountMove::Drop { epoch: 2, to: TARGET };
        assert_eq!(step(&mut source, drop.clone()).0, MoveAnswer::Done { accounts: 1 });
        assert_eq!(step(&mut source, drop).0, MoveAnswer::Done { accounts: 0 });
        assert_eq!(source.committed("acct-1"), None);
        assert_eq!(
            part(&mut source, TARGET),
            MoveAnswer::Page(None),
            "dropped: installed before"
        );
    }

    /// A fence aborts the active transactions on its ranges (they never
    /// vote yes), and one prepared there holds the part back until it is
    /// decided: its commit travels with the accounts.
    #[test]
    fn a_prepared_transaction_is_decided_at_the_source_before_its_accounts_ship() {
        let mut source = shard();
        put(&mut source, 1, "acct-1", 41).unwrap();
        prepare(&mut source, 1);
        put(&mut source, 2, "acct-1x", 9).unwrap();
        let mut ranges = only("acct-1");
        for r in only("acct-1x").ranges() {
            ranges.insert(*r);
        }
        let (_, fenced) = step(
            &mut source,
            AccountMove::Fence {
                epoch: 2,
                to: TARGET,
                ranges,
            },
        );
        let aborted = fenced.events.iter().any(|e| {
            matches!(
                e,
                TxnEvent::Applied {
                    txn: 2,
                    decision: Decision::Abort,
                    prepared: false
                }
            )
        });
        assert!(aborted, "the active transaction is aborted: {fenced:?}");
        assert_eq!(vote_of(&prepare(&mut source, 2)), Some(false));
        assert_eq!(part(&mut source, TARGET), MoveAnswer::Draining { prepared: 1 });
        source.on_message(
            MS,
            C,
            ShardMsg::Decide {
                txn: 1,
                decision: Decision::Commit,
            },
        );
        let MoveAnswer::Page(Some(page)) = part(&mut source, TARGET) else {
            panic!("a page once decided")
        };
        assert_eq!(page.part.accounts, vec![("acct-1".to_string(), vec![41])]);
    }

    /// The planted bug ships the part while the prepared transaction still
    /// holds it: its commit is then applied where the account no longer
    /// lives.
    #[test]
    fn the_planted_bug_ships_before_the_prepared_transaction_is_decided() {
        let mut source = Participant::recover(
            2,
            &[],
            Duration::ZERO,
            ParticipantConfig {
                bug: Some(TxnBug::ShipBeforeDrained),
                ..config()
            },
        )
        .unwrap()
        .0;
        put(&mut source, 1, "acct-1", 41).unwrap();
        prepare(&mut source, 1);
        let fence = AccountMove::Fence {
            epoch: 2,
            to: TARGET,
            ranges: only("acct-1"),
        };
        step(&mut source, fence);
        let MoveAnswer::Page(Some(page)) = part(&mut source, TARGET) else {
            panic!("a page at once")
        };
        assert!(page.part.accounts.is_empty(), "the prepared write is not in it");
    }

    /// A fenced account is refused from the fence on. The planted bug
    /// takes the operation, and the shard's own check stops it there: an
    /// active transaction holds an account the shard does not serve.
    #[test]
    fn a_fenced_account_is_refused_and_the_planted_bug_fails_the_check() {
        let fenced = |bug| {
            let config = ParticipantConfig { bug, ..config() };
            let mut source = Participant::recover(2, &[], Duration::ZERO, config).unwrap().0;
            let fence = AccountMove::Fence {
                epoch: 2,
                to: TARGET,
                ranges: only("acct-1"),
            };
            step(&mut source, fence);
            source
        };
        let mut correct = fenced(None);
        let refused = Err(AbortReason::NotServed { shard: 2, epoch: 2 });
        assert_eq!(put(&mut correct, 1, "acct-1", 5), refused);
        let mut buggy = fenced(Some(TxnBug::ServeAfterFence));
        let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| put(&mut buggy, 1, "acct-1", 5)));
        assert!(
            taken.is_err(),
            "the shard's check stops a shard serving a fenced account"
        );
    }

    /// A late copy of a fence from a finished rebalance (the network
    /// duplicates and delays messages) is refused: applied, it took ranges
    /// the shard served again out of service for good (txn-moves seed 57).
    #[test]
    fn a_late_copy_of_an_old_fence_is_refused() {
        let mut source = shard();
        commit(&mut source, 1, "acct-1", 40);
        let newer = AccountMove::Fence {
            epoch: 3,
            to: TARGET,
            ranges: only("acct-2"),
        };
        step(&mut source, newer);
        let late = AccountMove::Fence {
            epoch: 2,
            to: TARGET,
            ranges: only("acct-1"),
        };
        assert_eq!(step(&mut source, late).0, MoveAnswer::Refused(ShardRefusal::Stale));
        assert_eq!(get(&mut source, 2, "acct-1"), Ok(Some(vec![40])), "still served");
        let late_install = AccountMove::Install {
            epoch: 2,
            from: 4,
            part: AccountPart {
                ranges: only("acct-2"),
                accounts: vec![],
            },
        };
        assert_eq!(
            step(&mut source, late_install).0,
            MoveAnswer::Refused(ShardRefusal::Stale)
        );
    }

    /// Work a stray client began at a shard before it joined the ring is
    /// aborted by the assignment that leaves its keys unserved (seen at
    /// txn-moves seed 449, where a rogue's write reached a joining shard).
    #[test]
    fn an_assignment_aborts_work_on_keys_it_leaves_unserved() {
        let mut joining = Participant::recover(TARGET, &[], Duration::ZERO, config()).unwrap().0;
        put(&mut joining, 1, "acct-1", 5).unwrap();
        let assign = AccountMove::Assign {
            epoch: 1,
            ranges: RangeSet::default(),
        };
        let (answer, steps) = step(&mut joining, assign);
        assert_eq!(answer, MoveAnswer::Done { accounts: 0 });
        assert!(
            steps
                .events
                .iter()
                .any(|e| matches!(e, TxnEvent::Applied { txn: 1, .. })),
            "{steps:?}"
        );
        assert_eq!(vote_of(&prepare(&mut joining, 1)), Some(false));
    }

    /// A joining shard serves nothing before its assignment, so a write
    /// sent to it early (a rogue's, a client's with a wrong map) is
    /// refused and cannot make the assignment refuse the shard as not
    /// empty, and a fence is refused, which would leave it serving
    /// everything else; once assigned, it serves what it installs.
    #[test]
    fn a_joining_shard_serves_nothing_until_assigned() {
        let joining = ParticipantConfig {
            joining: true,
            ..config()
        };
        let mut t = Participant::recover(TARGET, &[], Duration::ZERO, joining).unwrap().0;
        assert_eq!(
            put(&mut t, 1, "acct-1", 5),
            Err(AbortReason::NotServed {
                shard: TARGET,
                epoch: 0
            })
        );
        let assign = AccountMove::Assign {
            epoch: 1,
            ranges: RangeSet::default(),
        };
        let fence = AccountMove::Fence {
            epoch: 2,
            to: 2,
            ranges: only("acct-2"),
        };
        assert_eq!(
            step(&mut t, fence.clone()).0,
            MoveAnswer::Refused(ShardRefusal::NotAssigned),
            "a fence would leave it serving everything else"
        );
        assert_eq!(step(&mut t, assign).0, MoveAnswer::Done { accounts: 0 });
        assert_eq!(step(&mut t, fence).0, MoveAnswer::Done { accounts: 0 });
        let install = AccountMove::Install {
            epoch: 2,
            from: 2,
            part: AccountPart {
                ranges: only("acct-1"),
                accounts: vec![],
            },
        };
        assert_eq!(step(&mut t, install).0, MoveAnswer::Done { accounts: 0 });
        assert_eq!(put(&mut t, 2, "acct-1", 5), Ok(None));
    }

    /// Everything a move changed is rebuilt from the shard's log.
    #[test]
    fn moves_are_replayed_after_a_restart() {
        let mut source = shard();
        let mut log = commit(&mut source, 1, "acct-1", 40);
        log.extend(commit(&mut source, 2, "acct-2", 50));
        let fence = AccountMove::Fence {
            epoch: 2,
            to: TARGET,
            ranges: only("acct-1"),
        };
        log.push(step(&mut source, fence).1);
        let (mut target, assigned) = joined();
        let MoveAnswer::Page(Some(page)) = part(&mut source, TARGET) else {
            panic!("a page")
        };
        let install = AccountMove::Install {
            epoch: 2,
            from: 2,
            part: page.part,
        };
        let target_log = vec![assigned, step(&mut target, install).1];
        let (mut source, _) = Participant::recover(2, &log_of(&log), MS, config()).unwrap();
        assert!(matches!(
            get(&mut source, 9, "acct-1"),
            Err(AbortReason::NotServed { .. })
        ));
        assert!(
            matches!(part(&mut source, TARGET), MoveAnswer::Page(Some(_))),
            "the part is kept"
        );
        let (mut target, _) = Participant::recover(TARGET, &log_of(&target_log), MS, config()).unwrap();
        assert_eq!(get(&mut target, 10, "acct-1"), Ok(Some(vec![40])));
        assert!(matches!(
            get(&mut target, 11, "acct-2"),
            Err(AbortReason::NotServed { .. })
        ));
    }

    /// Only operators move accounts; a part no source could have fenced,
    /// an install over what the shard serves and an assignment of a shard
    /// holding accounts are refused.
    #[test]
    fn crafted_move_steps_are_refused() {
        let mut source = shard();
        commit(&mut source, 1, "acct-1", 40);
        let fence = AccountMove::Fence {
            epoch: 2,
            to: TARGET,
            ranges: only("acct-1"),
        };
        let steps = source.on_message(
            MS,
            CLIENT,
            ShardMsg::Move {
                client: 1,
                request: 1,
                step: fence,
            },
        );
        assert!(steps.is_empty(), "a client's step is dropped: {steps:?}");
        assert_eq!(get(&mut source, 2, "acct-1"), Ok(Some(vec![40])), "still served");
        let assign = AccountMove::Assign {
            epoch: 1,
            ranges: RangeSet::default(),
        };
        assert_eq!(step(&mut source, assign).0, MoveAnswer::Refused(ShardRefusal::NotEmpty));
        let mut target = target();
        let forged = AccountPart {
            ranges: only("acct-1"),
            accounts: vec![("acct-2".to_string(), vec![1])],
        };
        let install = |part| AccountMove::Install {
            epoch: 2,
            from: 2,
            part,
        };
        assert_eq!(
            step(&mut target, install(forged)).0,
            MoveAnswer::Refused(ShardRefusal::InvalidPart)
        );
        let everything = AccountPart {
            ranges: RangeSet::full(),
            accounts: vec![],
        };
        assert_eq!(
            step(&mut target, install(everything.clone())).0,
            MoveAnswer::Done { accounts: 0 }
        );
        let again = AccountMove::Install {
            epoch: 3,
            from: 4,
            part: everything,
        };
        assert_eq!(step(&mut target, again).0, MoveAnswer::Refused(ShardRefusal::Overlaps));
    }
}
