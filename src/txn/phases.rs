//! The bookkeeping of the two phases, shared by both coordinator modes:
//! transaction ids, a voting round (prepares re-sent to silent shards, votes counted, a
//! deadline), the delivery of a commit until every participant acknowledges
//! it, and the clients waiting for an outcome. The modes differ only in what
//! makes a decision durable — a synced local record, or a committed log
//! entry — so that is all they implement themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{epoch_of, Decision, Msg, Outcome, Output, ReplyMsg, ShardMsg, TxnEvent, TxnId};
use crate::env::NodeId;

/// Transaction ids `epoch << 32 | seq` as one coordinator incarnation gives
/// them out (the classic one's boot epoch, a leader's term); the epoch is
/// passed in, not kept, so it has one home.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ids {
    /// The last sequence number given out in this epoch (0: none yet).
    last: u64,
}

impl Ids {
    /// The next id of `epoch`, or `None` once its sequence numbers are used
    /// up (the next epoch's are fresh).
    pub(crate) fn issue(&mut self, epoch: u64) -> Option<TxnId> {
        if self.last >= u64::from(u32::MAX) {
            return None;
        }
        self.last += 1;
        Some((epoch << 32) | self.last)
    }

    /// Whether `txn` was given out, by an earlier epoch or by `epoch` so
    /// far. Deciding, presuming or logging anything about another id would
    /// decide whichever transaction gets it later.
    pub(crate) fn issued(&self, epoch: u64, txn: TxnId) -> bool {
        let seq = txn & u64::from(u32::MAX);
        epoch_of(txn) < epoch || (epoch_of(txn) == epoch && (1..=self.last).contains(&seq))
    }
}

/// How a round stands after a vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tally {
    Pending,
    AllYes,
    No,
}

/// Most shards one transaction may span. A commit request that lists more
/// is aborted at once: one message must not make a coordinator prepare, and
/// re-send to, a list as long as the message can hold.
pub const MAX_PARTICIPANTS: usize = 256;

/// Whether a commit request lists more distinct shards than
/// [`MAX_PARTICIPANTS`].
pub(crate) fn too_many(participants: &[(NodeId, u64)]) -> bool {
    participants.len() > MAX_PARTICIPANTS
        && participants
            .iter()
            .map(|&(node, _)| node)
            .collect::<BTreeSet<_>>()
            .len()
            > MAX_PARTICIPANTS
}

/// Phase one of one transaction: prepares out, votes in.
#[derive(Debug, Clone)]
pub(crate) struct Round {
    /// The node that asked to commit, named in every prepare.
    client: NodeId,
    /// Each participant with the shard epoch the client reported.
    participants: Vec<(NodeId, u64)>,
    yes: BTreeSet<NodeId>,
    started: Duration,
    next_resend: Duration,
}

impl Round {
    /// A round whose prepares are due at once. A shard the client listed
    /// twice is asked once (the first listing counts), or its single yes
    /// could never make the votes complete.
    pub(crate) fn new(client: NodeId, mut participants: Vec<(NodeId, u64)>, now: Duration) -> Self {
        let mut listed = BTreeSet::new();
        participants.retain(|&(node, _)| listed.insert(node));
        Round {
            client,
            participants,
            yes: BTreeSet::new(),
            started: now,
            next_resend: now,
        }
    }

    pub(crate) fn participants(&self) -> Vec<NodeId> {
        self.participants.iter().map(|(n, _)| *n).collect()
    }

    /// Counts a vote; `None` if `from` is not a participant.
    pub(crate) fn vote(&mut self, from: NodeId, yes: bool) -> Option<Tally> {
        if !self.participants.iter().any(|(n, _)| *n == from) {
            return None;
        }
        if !yes {
            return Some(Tally::No);
        }
        self.yes.insert(from);
        Some(if self.yes.len() == self.participants.len() {
            Tally::AllYes
        } else {
            Tally::Pending
        })
    }

    /// The participants that voted yes, as a log command records them.
    pub(crate) fn yes_votes(&self) -> Vec<NodeId> {
        self.yes.iter().copied().collect()
    }

    /// When the round next needs a tick: its prepares' re-send or its
    /// timeout, whichever comes first.
    pub(crate) fn due(&self, prepare_timeout: Duration) -> Duration {
        self.next_resend.min(self.started + prepare_timeout)
    }

    pub(crate) fn timed_out(&self, now: Duration, prepare_timeout: Duration) -> bool {
        now.saturating_sub(self.started) >= prepare_timeout
    }

    /// `Prepare` to every participant that has not voted yes, now.
    pub(crate) fn prepares(
        &mut self,
        txn: TxnId,
        coordinators: &[NodeId],
        (now, resend_every): (Duration, Duration),
        out: &mut Output,
    ) {
        self.next_resend = now + resend_every;
        let ids = self.participants();
        for &(n, epoch) in self.participants.iter().filter(|(n, _)| !self.yes.contains(n)) {
            out.send(
                n,
                Msg::Shard(ShardMsg::Prepare {
                    txn,
                    client: self.client,
                    epoch,
                    participants: ids.clone(),
                    coordinators: coordinators.to_vec(),
                }),
            );
        }
    }

    /// [`Round::prepares`] if the re-send is due.
    pub(crate) fn prepares_due(
        &mut self,
        txn: TxnId,
        coordinators: &[NodeId],
        (now, resend_every): (Duration, Duration),
        out: &mut Output,
    ) {
        if now >= self.next_resend {
            self.prepares(txn, coordinators, (now, resend_every), out);
        }
    }
}

/// Phase two of a committed transaction: the decision re-sent until every
/// participant acknowledged it (aborts are not tracked: presumed abort lets
/// a prepared shard learn them by asking).
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    unacked: BTreeSet<NodeId>,
    next_resend: Duration,
}

impl Delivery {
    /// A delivery whose next send is due at `next_resend`.
    pub(crate) fn new(participants: impl IntoIterator<Item = NodeId>, next_resend: Duration) -> Self {
        Delivery {
            unacked: participants.into_iter().collect(),
            next_resend,
        }
    }

    pub(crate) fn done(&self) -> bool {
        self.unacked.is_empty()
    }

    /// When the decision is next re-sent (never, once all acknowledged).
    pub(crate) fn due(&self) -> Duration {
        if self.done() {
            Duration::MAX
        } else {
            self.next_resend
        }
    }

    /// Records an acknowledgement; `true` if it was the last one missing.
    pub(crate) fn ack(&mut self, from: NodeId) -> bool {
        self.unacked.remove(&from) && self.unacked.is_empty()
    }

    /// The decision again to every silent participant, if the re-send is
    /// due.
    pub(crate) fn resend_due(
        &mut self,
        txn: TxnId,
        decision: Decision,
        (now, resend_every): (Duration, Duration),
        out: &mut Output,
    ) {
        if self.done() || now < self.next_resend {
            return;
        }
        self.next_resend = now + resend_every;
        out.send_all(self.unacked.iter().copied(), &ShardMsg::Decide { txn, decision });
    }
}

/// Reports a decision and sends it to the participants.
pub(crate) fn announce(txn: TxnId, decision: Decision, participants: Vec<NodeId>, out: &mut Output) {
    out.send_all(participants.iter().copied(), &ShardMsg::Decide { txn, decision });
    out.event(TxnEvent::Announced {
        txn,
        decision,
        participants,
    });
}

/// Clients waiting for the outcome of a transaction.
#[derive(Debug, Default)]
pub(crate) struct Waiters(BTreeMap<TxnId, BTreeSet<NodeId>>);

impl Waiters {
    pub(crate) fn add(&mut self, txn: TxnId, client: NodeId) {
        self.0.entry(txn).or_default().insert(client);
    }

    /// Tells everyone waiting for `txn` its outcome.
    pub(crate) fn notify(&mut self, txn: TxnId, outcome: &Outcome, out: &mut Output) {
        let clients = self.0.remove(&txn).unwrap_or_default();
        out.send_all(
            clients,
            &Msg::Reply(ReplyMsg::Outcome {
                txn,
                outcome: outcome.clone(),
            }),
        );
    }

    /// Tells everyone waiting for `txn` that it finished and is forgotten
    /// (its outcome is no longer known here).
    pub(crate) fn forgotten(&mut self, txn: TxnId, out: &mut Output) {
        let clients = self.0.remove(&txn).unwrap_or_default();
        out.send_all(clients, &ReplyMsg::Forgotten { txn });
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_gives_out_ids_until_its_sequence_space_ends() {
        let mut ids = Ids {
            last: u64::from(u32::MAX) - 1,
        };
        let last = ids.issue(1).expect("one left");
        assert_eq!(
            last,
            (1 << 32) | u64::from(u32::MAX),
            "epoch 1, the last sequence number"
        );
        assert_eq!(ids.issue(1), None, "no id past the epoch's space");
        assert!(ids.issued(1, last));
    }

    #[test]
    fn issued_means_an_earlier_epoch_or_this_one_so_far() {
        let mut ids = Ids::default();
        assert!(!ids.issued(2, 2 << 32 | 1), "nothing given out yet");
        let first = ids.issue(2).unwrap();
        assert!(ids.issued(2, first));
        assert!(!ids.issued(2, first + 1));
        assert!(!ids.issued(2, 2 << 32), "sequence 0 is never given out");
        assert!(ids.issued(2, 1 << 32 | 77), "an earlier epoch's");
        assert!(!ids.issued(2, 3 << 32 | 1), "a later epoch's");
    }
}
