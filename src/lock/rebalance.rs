//! The lock service's side of moving names between groups
//! ([`crate::shard::rebalance`]): each step is a command (or, for a page
//! of a part, a read) of a group's log, which takes none larger than
//! [`MAX_COMMAND_BYTES`].

use std::collections::BTreeMap;
use std::time::Duration;

use super::machine::{LockCommand, LockMachine, LockOutput, LockPart, LockQuery, ShardCommand};
use super::LockBug;
use crate::env::{codec, Env};
use crate::log::client::Client;
use crate::log::MAX_COMMAND_BYTES;
use crate::ring::KeyHash;
use crate::shard::rebalance::{Groups, Page, RebalanceError};
use crate::shard::{GroupId, RangeSet};

/// A client of every group of a sharded lock service (clients of one node
/// share an inbox: [`Client::sharing`]), for the rebalancing procedure.
pub struct LockGroups<E: Env> {
    clients: BTreeMap<GroupId, Client<E, LockMachine>>,
    bug: Option<LockBug>,
}

impl<E: Env> LockGroups<E> {
    /// The groups reached through `clients`.
    pub fn new(clients: BTreeMap<GroupId, Client<E, LockMachine>>) -> Self {
        LockGroups { clients, bug: None }
    }

    /// The same groups, moved by a procedure with a planted bug (the
    /// rebalancer's variants of [`LockBug`]).
    #[cfg(feature = "planted-bugs")]
    #[doc(hidden)]
    pub fn with_bug(self, bug: Option<LockBug>) -> Self {
        LockGroups { bug, ..self }
    }

    fn has(&self, bug: LockBug) -> bool {
        self.bug == Some(bug)
    }

    /// Runs one shard command on `group`: the locks it moved.
    async fn shard(
        &mut self,
        group: GroupId,
        command: ShardCommand,
        timeout: Duration,
    ) -> Result<usize, RebalanceError> {
        let client = self
            .clients
            .get_mut(&group)
            .ok_or(RebalanceError::UnknownGroup(group))?;
        let out = client
            .execute(LockCommand::Shard(command), timeout)
            .await
            .map_err(|error| RebalanceError::Unavailable { group, error })?;
        match out {
            LockOutput::Moved { locks } => Ok(locks),
            LockOutput::ShardRefused(refusal) => Err(RebalanceError::Refused { group, refusal }),
            other => Err(RebalanceError::Protocol {
                group,
                answer: format!("{other:?}"),
            }),
        }
    }
}

impl<E: Env> Groups for LockGroups<E> {
    type Part = LockPart;

    fn ids(&self) -> Vec<GroupId> {
        self.clients.keys().copied().collect()
    }

    fn now(&self) -> Duration {
        self.clients.values().next().map_or(Duration::ZERO, |c| c.env().now())
    }

    fn max_step_bytes(&self) -> usize {
        MAX_COMMAND_BYTES
    }

    fn empty_fence_bytes(&self, epoch: u64, to: GroupId) -> usize {
        let ranges = RangeSet::default();
        let fence = LockCommand::Shard(ShardCommand::Fence { epoch, to, ranges });
        codec::encode(&fence).map_or(usize::MAX, |b| b.len())
    }

    fn measure(part: &LockPart) -> (usize, usize) {
        (part.locks.len(), codec::encode(part).map_or(0, |b| b.len()))
    }

    fn empty_part(ranges: RangeSet) -> LockPart {
        LockPart {
            ranges,
            ..LockPart::default()
        }
    }

    fn installs_before_fence(&self) -> bool {
        self.has(LockBug::FlipBeforeFence)
    }

    async fn assign(&mut self, group: GroupId, timeout: Duration) -> Result<(), RebalanceError> {
        let ranges = RangeSet::default();
        self.shard(group, ShardCommand::Assign { epoch: 1, ranges }, timeout)
            .await?;
        Ok(())
    }

    async fn fence(
        &mut self,
        group: GroupId,
        (epoch, to): (u64, GroupId),
        ranges: RangeSet,
        timeout: Duration,
    ) -> Result<(), RebalanceError> {
        self.shard(group, ShardCommand::Fence { epoch, to, ranges }, timeout)
            .await?;
        Ok(())
    }

    async fn page(
        &mut self,
        group: GroupId,
        (epoch, to): (u64, GroupId),
        from: KeyHash,
        limit: usize,
        timeout: Duration,
    ) -> Result<Option<Page<LockPart>>, RebalanceError> {
        let client = self
            .clients
            .get_mut(&group)
            .ok_or(RebalanceError::UnknownGroup(group))?;
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        let out = client
            .read(LockQuery::Part { epoch, to, from, limit }, timeout)
            .await
            .map_err(|error| RebalanceError::Unavailable { group, error })?;
        match out {
            LockOutput::Part(page) => Ok(page.map(|page| Page {
                part: page.part,
                next: page.next,
            })),
            other => Err(RebalanceError::Protocol {
                group,
                answer: format!("{other:?}"),
            }),
        }
    }

    async fn install(
        &mut self,
        group: GroupId,
        (epoch, from): (u64, GroupId),
        mut part: LockPart,
        timeout: Duration,
    ) -> Result<usize, RebalanceError> {
        if self.has(LockBug::FloorNotCarried) {
            // PLANTED BUG: the part carries its own locks' tokens, not the
            // source's counter, so a lock released before the move (absent
            // from the part) is granted again below its earlier tokens.
            part.floor = part.locks.iter().map(|m| m.last_granted).max().unwrap_or(0);
        }
        if self.has(LockBug::HoldersNotShipped) {
            // PLANTED BUG: ownership flips without the holders' state.
            part.locks.clear();
        }
        self.shard(group, ShardCommand::Install { epoch, from, part }, timeout)
            .await
    }

    async fn drop_part(
        &mut self,
        group: GroupId,
        (epoch, to): (u64, GroupId),
        timeout: Duration,
    ) -> Result<(), RebalanceError> {
        self.shard(group, ShardCommand::Drop { epoch, to }, timeout).await?;
        Ok(())
    }
}
