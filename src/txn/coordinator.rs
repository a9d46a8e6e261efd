//! The coordinator: presumed-abort two-phase commit, as a sans-io core.
//!
//! - **Ids.** [`CoordMsg::Begin`] gets a fresh id `epoch << 32 | seq`, where the
//!   epoch counts the coordinator's boots (a synced boot record each). An id
//!   from an earlier epoch that the log does not know was never committed.
//! - **Prepare.** [`CoordMsg::Commit`] from the client names the participants
//!   (with the shard epoch each reported); the coordinator sends `Prepare`
//!   and re-sends it to silent shards until `prepare_timeout`, then aborts.
//! - **Decide.** Any no vote aborts. All yes: the commit record is appended
//!   and **synced before** the decision is sent to anyone. Aborts are not
//!   logged (presumed abort): after a crash an unknown transaction is
//!   aborted, which is what a lost abort would have said anyway.
//! - **Finish.** Commits are re-sent until every participant acknowledges,
//!   then an end record is appended (unsynced: losing it only causes
//!   harmless re-sends).
//! - **Outcome queries.** A retried `Commit` and a participant's `Query` are
//!   answered from the log (committed), from memory (aborted this epoch) or
//!   by presumption (unknown from an earlier epoch: aborted). A decision
//!   therefore never changes, and a client retrying after a lost reply
//!   learns the real outcome.
//! - **Recovery.** Rebuild committed transactions from the log and re-send
//!   their decisions to unacknowledged participants; everything else that
//!   was in flight is aborted by presumption.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::phases::{announce, too_many, Delivery, Ids, Round, Tally, Waiters, MAX_PARTICIPANTS};
use super::{
    epoch_of, AbortReason, CoordMsg, Decision, Msg, Outcome, Output, ReplyMsg, ShardMsg, TxnBug, TxnEvent, TxnId,
};
use crate::env::{codec, NodeId};

/// What the coordinator writes to its log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// One per incarnation, synced before it issues any id: the next boot
    /// takes a higher epoch, so ids are never reused.
    Boot {
        /// This incarnation's epoch (the high half of its ids).
        epoch: u64,
    },
    /// Synced before the commit decision is sent.
    Commit {
        /// The committed transaction.
        txn: TxnId,
        /// The shards to tell, again after a crash, until they acknowledge.
        participants: Vec<NodeId>,
    },
    /// Every participant acknowledged the commit.
    End {
        /// The transaction whose commit needs no more re-sending.
        txn: TxnId,
    },
}

/// Timing of a classic coordinator (and its planted bugs).
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Re-send prepares to silent shards and commits to unacknowledging ones
    /// this often.
    pub resend_every: Duration,
    /// Abort a transaction whose votes are not all in after this long.
    pub prepare_timeout: Duration,
    /// A planted bug ([`TxnBug::DecisionBeforeSync`],
    /// [`TxnBug::RecoveryPresumesCommit`]); `None`, the correct protocol,
    /// by default.
    pub bug: Option<TxnBug>,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            resend_every: Duration::from_millis(200),
            prepare_timeout: Duration::from_millis(1_000),
            bug: None,
        }
    }
}

#[derive(Debug, Clone)]
enum State {
    Preparing(Round),
    Committed(Delivery),
    Aborted { reason: AbortReason },
}

/// The coordinator's protocol state. Rebuilt by [`Coordinator::recover`].
#[derive(Debug)]
pub struct Coordinator {
    id: NodeId,
    epoch: u64,
    ids: Ids,
    config: CoordinatorConfig,
    txns: BTreeMap<TxnId, State>,
    /// Clients waiting for an outcome.
    waiting: Waiters,
}

/// Largest boot epoch: epochs fill the high half of transaction ids, and
/// every id stays below 2^63.
const MAX_EPOCH: u64 = (1 << 31) - 1;

/// The coordinator's log holds a record it cannot make sense of.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// A record's bytes are not a [`Record`].
    #[error("undecodable coordinator record {position}: {error}")]
    Decode {
        /// Which record, counted from the first.
        position: usize,
        /// What the decoder objected to.
        error: codec::CodecError,
    },
    /// A boot record already at the largest epoch ids can carry: the next
    /// incarnation has no fresh epoch left, so it refuses to start.
    #[error("coordinator record {position}: boot epochs are exhausted")]
    EpochsExhausted {
        /// Which record, counted from the first.
        position: usize,
    },
}

impl Coordinator {
    /// Rebuilds the coordinator from its log. The returned effects (a synced
    /// boot record, then the re-sent commit decisions) must be carried out
    /// before it serves anything.
    pub fn recover(
        id: NodeId,
        log: &[Vec<u8>],
        now: Duration,
        config: CoordinatorConfig,
    ) -> Result<(Self, Output), RecoverError> {
        let mut c = Coordinator {
            id,
            epoch: 1,
            ids: Ids::default(),
            config,
            txns: BTreeMap::new(),
            waiting: Waiters::default(),
        };
        // Every durable decision is reported, whoever announced it before.
        let mut out = Output::default();
        for (position, bytes) in log.iter().enumerate() {
            match codec::decode::<Record>(bytes).map_err(|error| RecoverError::Decode { position, error })? {
                Record::Boot { epoch } => {
                    // Epochs are the high half of transaction ids.
                    if epoch >= MAX_EPOCH {
                        return Err(RecoverError::EpochsExhausted { position });
                    }
                    c.epoch = c.epoch.max(epoch + 1);
                }
                Record::Commit { txn, participants } => {
                    out.event(TxnEvent::Recovered {
                        txn,
                        decision: Decision::Commit,
                        participants: participants.clone(),
                    });
                    c.txns.insert(txn, State::Committed(Delivery::new(participants, now)));
                }
                Record::End { txn } => {
                    if let Some(State::Committed(delivery)) = c.txns.get_mut(&txn) {
                        *delivery = Delivery::new([], now);
                    }
                }
            }
        }
        out.record(&Record::Boot { epoch: c.epoch });
        out.sync();
        out.extend(c.tick(now));
        c.checked();
        Ok((c, out))
    }

    /// This incarnation's boot epoch: ids it issues carry it, and an
    /// unknown id of another epoch is presumed aborted.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The decision for `txn`, if one was taken (or is presumed).
    pub fn decision(&self, txn: TxnId) -> Option<Decision> {
        match self.txns.get(&txn) {
            Some(State::Committed(_)) => Some(Decision::Commit),
            Some(State::Aborted { .. }) => Some(Decision::Abort),
            Some(State::Preparing(_)) => None,
            None if epoch_of(txn) < self.epoch => Some(self.presumption()),
            None => None,
        }
    }

    fn presumption(&self) -> Decision {
        if self.config.bug == Some(TxnBug::RecoveryPresumesCommit) {
            Decision::Commit
        } else {
            Decision::Abort
        }
    }

    /// Asserts the coordinator's own invariants (run after every handler
    /// under the `core-checks` feature): it holds state only about ids it
    /// gave out, and only this incarnation's transactions are still
    /// preparing (recovery presumes every earlier in-flight one aborted).
    pub fn check(&self) {
        for (&txn, state) in &self.txns {
            assert!(
                self.ids.issued(self.epoch, txn),
                "coordinator {}: holds {txn}, an id it never gave out",
                self.id
            );
            if let State::Preparing(_) = state {
                assert_eq!(
                    epoch_of(txn),
                    self.epoch,
                    "coordinator {}: {txn} of an earlier incarnation still preparing",
                    self.id
                );
            }
        }
    }

    /// Handles one message from a client or a shard; messages meant for
    /// other roles are ignored. The effects are carried out as
    /// [`Output`] says (a commit record is synced before its decision is
    /// sent).
    pub fn on_message(&mut self, now: Duration, from: NodeId, msg: CoordMsg) -> Output {
        let mut out = Output::default();
        self.handle(now, from, msg, &mut out);
        self.checked();
        out
    }

    fn handle(&mut self, now: Duration, from: NodeId, msg: CoordMsg, out: &mut Output) {
        match msg {
            CoordMsg::Begin { request } => match self.ids.issue(self.epoch) {
                Some(txn) => out.send(from, ReplyMsg::Began { request, txn }),
                // A restart starts the next epoch's ids.
                None => tracing::error!(coordinator = self.id, "transaction ids of this epoch exhausted"),
            },
            CoordMsg::Commit { txn, participants } => self.on_commit(now, from, txn, participants, out),
            CoordMsg::Status { txn } => {
                if self.known_or_presumed(txn, out).is_some() {
                    let outcome = self.outcome(txn).expect("decided");
                    out.send(from, ReplyMsg::Outcome { txn, outcome });
                }
            }
            CoordMsg::Vote { txn, yes } => self.on_vote(from, txn, yes, out),
            CoordMsg::Ack { txn } => {
                if let Some(State::Committed(delivery)) = self.txns.get_mut(&txn) {
                    if !delivery.done() && delivery.ack(from) {
                        out.record(&Record::End { txn });
                    }
                }
            }
            CoordMsg::Query { txn } => {
                if let Some(decision) = self.known_or_presumed(txn, out) {
                    out.send(from, ShardMsg::Decide { txn, decision });
                }
            }
            CoordMsg::Log(_) => {}
        }
    }

    /// The decision for `txn`, fixing a presumption in memory the first time
    /// it is given (and reporting it to `out`). `None` while the vote is
    /// still running.
    fn known_or_presumed(&mut self, txn: TxnId, out: &mut Output) -> Option<Decision> {
        match self.txns.get(&txn) {
            Some(State::Committed(_)) => Some(Decision::Commit),
            Some(State::Aborted { .. }) => Some(Decision::Abort),
            Some(State::Preparing(_)) => None,
            // Not given out yet: a presumption now would decide whichever
            // transaction gets the id later.
            None if !self.ids.issued(self.epoch, txn) => None,
            None => {
                // Unknown: from an earlier epoch (lost in a crash, never
                // committed) or never begun here. Presumed aborted.
                let decision = if epoch_of(txn) != self.epoch {
                    self.presumption()
                } else {
                    Decision::Abort
                };
                let state = match decision {
                    Decision::Abort => State::Aborted {
                        reason: AbortReason::CoordinatorRestarted,
                    },
                    Decision::Commit => State::Committed(Delivery::new([], Duration::MAX)),
                };
                self.txns.insert(txn, state);
                out.event(TxnEvent::Announced {
                    txn,
                    decision,
                    participants: vec![],
                });
                Some(decision)
            }
        }
    }

    fn outcome(&self, txn: TxnId) -> Option<Outcome> {
        match self.txns.get(&txn)? {
            State::Committed(_) => Some(Outcome::Committed),
            State::Aborted { reason } => Some(Outcome::Aborted(reason.clone())),
            State::Preparing(_) => None,
        }
    }

    fn on_commit(
        &mut self,
        now: Duration,
        client: NodeId,
        txn: TxnId,
        participants: Vec<(NodeId, u64)>,
        out: &mut Output,
    ) {
        if !self.ids.issued(self.epoch, txn) {
            // Deciding it now would decide the transaction this id is
            // later given to.
            tracing::warn!(
                coordinator = self.id,
                client,
                txn,
                "ignoring a commit of an id not issued"
            );
            return;
        }
        if !self.txns.contains_key(&txn) && epoch_of(txn) == self.epoch && too_many(&participants) {
            let reason = AbortReason::TooManyParticipants {
                limit: MAX_PARTICIPANTS,
            };
            self.txns.insert(txn, State::Aborted { reason: reason.clone() });
            self.waiting.add(txn, client);
            // No shard was asked: none is told.
            announce(txn, Decision::Abort, vec![], out);
            return self.waiting.notify(txn, &Outcome::Aborted(reason), out);
        }
        if !self.txns.contains_key(&txn) && epoch_of(txn) == self.epoch {
            let empty = participants.is_empty();
            self.txns
                .insert(txn, State::Preparing(Round::new(client, participants, now)));
            if empty {
                self.waiting.add(txn, client);
                return self.decide_commit(txn, out);
            }
        }
        self.waiting.add(txn, client);
        self.known_or_presumed(txn, out);
        match (self.outcome(txn), self.txns.get_mut(&txn)) {
            (Some(outcome), _) => self.waiting.notify(txn, &outcome, out),
            (None, Some(State::Preparing(round))) => {
                round.prepares(txn, &[self.id], (now, self.config.resend_every), out)
            }
            (None, _) => {}
        }
    }

    fn on_vote(&mut self, from: NodeId, txn: TxnId, yes: bool, out: &mut Output) {
        match self.txns.get_mut(&txn) {
            Some(State::Preparing(round)) => match round.vote(from, yes) {
                Some(Tally::No) => self.decide_abort(txn, AbortReason::VotedNo { shard: from }, out),
                Some(Tally::AllYes) => self.decide_commit(txn, out),
                Some(Tally::Pending) | None => {}
            },
            // A late yes for an aborted transaction: that shard is waiting.
            Some(State::Aborted { .. }) if yes => out.send(
                from,
                Msg::Shard(ShardMsg::Decide {
                    txn,
                    decision: Decision::Abort,
                }),
            ),
            Some(_) => {}
            None if yes => {
                if let Some(decision) = self.known_or_presumed(txn, out) {
                    out.send(from, ShardMsg::Decide { txn, decision });
                }
            }
            None => {}
        }
    }

    /// All yes: log, sync, then tell everyone.
    fn decide_commit(&mut self, txn: TxnId, out: &mut Output) {
        let Some(State::Preparing(round)) = self.txns.get(&txn) else {
            unreachable!("only a preparing transaction commits");
        };
        let ids = round.participants();
        let delivery = Delivery::new(ids.iter().copied(), Duration::ZERO);
        self.txns.insert(txn, State::Committed(delivery));
        out.record(&Record::Commit {
            txn,
            participants: ids.clone(),
        });
        if self.config.bug != Some(TxnBug::DecisionBeforeSync) {
            out.sync();
        }
        announce(txn, Decision::Commit, ids, out);
        self.waiting.notify(txn, &Outcome::Committed, out);
    }

    fn decide_abort(&mut self, txn: TxnId, reason: AbortReason, out: &mut Output) {
        let Some(State::Preparing(round)) = self.txns.get(&txn) else {
            unreachable!("only a preparing transaction aborts");
        };
        let ids = round.participants();
        self.txns.insert(txn, State::Aborted { reason: reason.clone() });
        // Best effort: prepared shards would also learn it by asking.
        announce(txn, Decision::Abort, ids, out);
        self.waiting.notify(txn, &Outcome::Aborted(reason), out);
    }

    /// Timeouts: re-send prepares and commits; abort slow votes.
    pub fn tick(&mut self, now: Duration) -> Output {
        let mut out = Output::default();
        self.timeouts(now, &mut out);
        self.checked();
        out
    }

    /// Runs [`Self::check`] where checks are built in (unit tests, and the
    /// `core-checks` feature the simulator turns on).
    fn checked(&self) {
        if cfg!(any(test, feature = "core-checks")) {
            crate::check::run(|| self.check());
        }
    }

    /// When [`Coordinator::tick`] next has something to do: a round's
    /// re-send or timeout, a commit's re-send.
    pub fn next_deadline(&self) -> Duration {
        self.txns
            .values()
            .map(|state| match state {
                State::Preparing(round) => round.due(self.config.prepare_timeout),
                State::Committed(delivery) => delivery.due(),
                State::Aborted { .. } => Duration::MAX,
            })
            .min()
            .unwrap_or(Duration::MAX)
    }

    fn timeouts(&mut self, now: Duration, out: &mut Output) {
        let (resend_every, prepare_timeout) = (self.config.resend_every, self.config.prepare_timeout);
        let mut timed_out = Vec::new();
        for (&txn, state) in &mut self.txns {
            match state {
                State::Preparing(round) if round.timed_out(now, prepare_timeout) => timed_out.push(txn),
                State::Preparing(round) => round.prepares_due(txn, &[self.id], (now, resend_every), out),
                State::Committed(delivery) => delivery.resend_due(txn, Decision::Commit, (now, resend_every), out),
                State::Aborted { .. } => {}
            }
        }
        for txn in timed_out {
            self.decide_abort(txn, AbortReason::PrepareTimeout, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: NodeId = 100;
    const MS: Duration = Duration::from_millis(1);

    fn boot(log: &[Vec<u8>]) -> (Coordinator, Output) {
        Coordinator::recover(1, log, Duration::ZERO, CoordinatorConfig::default()).unwrap()
    }

    fn begin(c: &mut Coordinator) -> TxnId {
        match &c.on_message(MS, CLIENT, CoordMsg::Begin { request: 0 }).messages[..] {
            [(CLIENT, Msg::Reply(ReplyMsg::Began { txn, .. }))] => *txn,
            other => panic!("{other:?}"),
        }
    }

    fn commit(c: &mut Coordinator, txn: TxnId) -> Output {
        c.on_message(
            MS,
            CLIENT,
            CoordMsg::Commit {
                txn,
                participants: vec![(2, 1), (3, 1)],
            },
        )
    }

    fn outcome(out: &Output) -> Option<Outcome> {
        out.messages.iter().find_map(|s| match s {
            (CLIENT, Msg::Reply(ReplyMsg::Outcome { outcome, .. })) => Some(outcome.clone()),
            _ => None,
        })
    }

    fn log_of(outs: &[&Output]) -> Vec<Vec<u8>> {
        outs.iter().flat_map(|out| out.append.iter().cloned()).collect()
    }

    #[test]
    fn commits_after_all_yes_with_the_record_synced_before_any_send() {
        let (mut c, boot_steps) = boot(&[]);
        let txn = begin(&mut c);
        let prepares = commit(&mut c, txn);
        assert_eq!(
            prepares
                .messages
                .iter()
                .filter(|s| matches!(s, (_, Msg::Shard(ShardMsg::Prepare { .. }))))
                .count(),
            2
        );
        assert!(c.on_message(MS, 2, CoordMsg::Vote { txn, yes: true }).is_empty());
        let steps = c.on_message(MS, 3, CoordMsg::Vote { txn, yes: true });
        let appended: Vec<Record> = steps.append.iter().map(|r| codec::decode(r).unwrap()).collect();
        assert!(matches!(appended[..], [Record::Commit { .. }]));
        assert!(steps.sync, "synced before the decision goes");
        assert_eq!(outcome(&steps), Some(Outcome::Committed));
        // Recovery from that log keeps the commit and re-sends it.
        let (mut c2, resent) = boot(&log_of(&[&boot_steps, &steps]));
        assert_eq!(c2.epoch(), 2);
        assert_eq!(
            resent
                .messages
                .iter()
                .filter(|s| matches!(
                    s,
                    (
                        _,
                        Msg::Shard(ShardMsg::Decide {
                            decision: Decision::Commit,
                            ..
                        })
                    )
                ))
                .count(),
            2
        );
        assert_eq!(outcome(&commit(&mut c2, txn)), Some(Outcome::Committed));
    }

    #[test]
    fn a_shard_listed_twice_is_asked_once_and_its_yes_counts() {
        let (mut c, _) = boot(&[]);
        let txn = begin(&mut c);
        let participants = vec![(2, 1), (3, 1), (2, 1)];
        let prepares = c.on_message(MS, CLIENT, CoordMsg::Commit { txn, participants });
        let asked: Vec<NodeId> = prepares
            .messages
            .iter()
            .filter_map(|s| match s {
                (to, Msg::Shard(ShardMsg::Prepare { .. })) => Some(*to),
                _ => None,
            })
            .collect();
        assert_eq!(asked, vec![2, 3]);
        c.on_message(MS, 2, CoordMsg::Vote { txn, yes: true });
        let steps = c.on_message(MS, 3, CoordMsg::Vote { txn, yes: true });
        assert_eq!(outcome(&steps), Some(Outcome::Committed));
    }

    #[test]
    fn a_commit_listing_too_many_shards_is_aborted_without_asking_any() {
        let (mut c, _) = boot(&[]);
        let txn = begin(&mut c);
        let listed = MAX_PARTICIPANTS as NodeId + 1;
        // Listed twice each: only distinct shards count.
        let at_the_limit: Vec<(NodeId, u64)> = (0..MAX_PARTICIPANTS as NodeId).flat_map(|n| [(n, 1), (n, 1)]).collect();
        assert!(!too_many(&at_the_limit));
        let participants = (0..listed).map(|n| (n + 100, 1)).collect();
        let steps = c.on_message(MS, CLIENT, CoordMsg::Commit { txn, participants });
        assert!(
            !steps
                .messages
                .iter()
                .any(|s| matches!(s, (_, Msg::Shard(ShardMsg::Prepare { .. })))),
            "{steps:?}"
        );
        let limit = MAX_PARTICIPANTS;
        assert_eq!(
            outcome(&steps),
            Some(Outcome::Aborted(AbortReason::TooManyParticipants { limit }))
        );
    }

    #[test]
    fn boot_epochs_end_where_transaction_ids_would_reach_bit_63() {
        let boot_at = |epoch| vec![codec::encode(&Record::Boot { epoch }).unwrap()];
        let (mut last, _) = boot(&boot_at((1 << 31) - 2));
        let txn = begin(&mut last);
        assert_eq!(txn >> 32, (1 << 31) - 1, "the last epoch");
        assert!(txn < 1 << 63);
        let refused = Coordinator::recover(1, &boot_at((1 << 31) - 1), Duration::ZERO, CoordinatorConfig::default());
        assert!(matches!(refused, Err(RecoverError::EpochsExhausted { position: 0 })));
    }

    #[test]
    fn an_unknown_transaction_is_presumed_aborted_only_from_an_earlier_epoch() {
        let (c1, boot1) = boot(&[]);
        let (c2, _) = boot(&log_of(&[&boot1]));
        let (old, current) = ((c1.epoch() << 32) | 7, (c2.epoch() << 32) | 7);
        assert_eq!(c2.decision(old), Some(Decision::Abort));
        assert_eq!(c2.decision(current), None, "not begun yet, or still running");
        assert_eq!(c2.decision((c2.epoch() + 1) << 32 | 7), None, "a later epoch's");
    }

    #[test]
    fn recovery_reports_every_durable_commit() {
        let (mut c, boot1) = boot(&[]);
        let txn = begin(&mut c);
        commit(&mut c, txn);
        c.on_message(MS, 2, CoordMsg::Vote { txn, yes: true });
        let steps = c.on_message(MS, 3, CoordMsg::Vote { txn, yes: true });
        // A crash after the commit record was synced, before anything
        // after it ran: only the log knows the decision.
        let log = log_of(&[&boot1, &steps]);
        let (_, resent) = boot(&log);
        assert_eq!(
            resent.events[0],
            TxnEvent::Recovered {
                txn,
                decision: Decision::Commit,
                participants: vec![2, 3]
            }
        );
        // Acknowledged and ended, it is still a durable decision.
        let end = c.on_message(MS, 2, CoordMsg::Ack { txn });
        let end2 = c.on_message(MS, 3, CoordMsg::Ack { txn });
        let (_, again) = boot(&log_of(&[&boot1, &steps, &end, &end2]));
        assert!(again.events.iter().any(|e| matches!(e, TxnEvent::Recovered { .. })));
    }

    #[test]
    fn any_no_vote_aborts_and_the_answer_never_changes() {
        let (mut c, _) = boot(&[]);
        let txn = begin(&mut c);
        commit(&mut c, txn);
        c.on_message(MS, 2, CoordMsg::Vote { txn, yes: true });
        let steps = c.on_message(MS, 3, CoordMsg::Vote { txn, yes: false });
        assert_eq!(
            outcome(&steps),
            Some(Outcome::Aborted(AbortReason::VotedNo { shard: 3 }))
        );
        assert!(steps.append.is_empty(), "aborts are not logged");
        c.on_message(MS, 2, CoordMsg::Vote { txn, yes: true });
        assert!(matches!(outcome(&commit(&mut c, txn)), Some(Outcome::Aborted(_))));
    }

    #[test]
    fn after_a_crash_undecided_transactions_are_aborted() {
        let (mut c, boot1) = boot(&[]);
        let txn = begin(&mut c);
        commit(&mut c, txn);
        c.on_message(MS, 2, CoordMsg::Vote { txn, yes: true });
        // Crash before the last vote; recover.
        let (mut c, _) = boot(&log_of(&[&boot1]));
        let steps = c.on_message(MS, 2, CoordMsg::Query { txn });
        assert!(steps.messages.contains(&(
            2,
            Msg::Shard(ShardMsg::Decide {
                txn,
                decision: Decision::Abort
            })
        )));
        assert_eq!(
            outcome(&commit(&mut c, txn)),
            Some(Outcome::Aborted(AbortReason::CoordinatorRestarted))
        );
        // A late yes cannot revive it.
        c.on_message(MS, 3, CoordMsg::Vote { txn, yes: true });
        assert_eq!(c.decision(txn), Some(Decision::Abort));
        // New ids come from the new epoch.
        assert_eq!(epoch_of(begin(&mut c)), 2);
    }

    #[test]
    fn a_late_yes_is_told_the_abort_and_a_late_no_needs_no_answer() {
        let abort_to = |out: &Output, shard: NodeId| {
            out.messages.iter().any(
                |s| matches!(s, (to, Msg::Shard(ShardMsg::Decide { decision: Decision::Abort, .. })) if *to == shard),
            )
        };
        let (mut c, boot1) = boot(&[]);
        let txn = begin(&mut c);
        commit(&mut c, txn);
        c.on_message(MS, 2, CoordMsg::Vote { txn, yes: false });
        // Shard 3 prepared and waits: it is told at once.
        assert!(abort_to(&c.on_message(MS, 3, CoordMsg::Vote { txn, yes: true }), 3));
        assert!(c.on_message(MS, 3, CoordMsg::Vote { txn, yes: false }).is_empty());
        // After a restart the transaction is unknown: presumed aborted,
        // and a waiting shard is told so.
        let (mut c, _) = boot(&log_of(&[&boot1]));
        assert!(c.on_message(MS, 3, CoordMsg::Vote { txn, yes: false }).is_empty());
        assert!(abort_to(&c.on_message(MS, 3, CoordMsg::Vote { txn, yes: true }), 3));
    }

    #[test]
    fn only_the_participants_votes_count() {
        let (mut c, _) = boot(&[]);
        let txn = begin(&mut c);
        commit(&mut c, txn);
        c.on_message(MS, 2, CoordMsg::Vote { txn, yes: true });
        // Shard 4 takes no part (the commit listed 2 and 3): its yes is not
        // shard 3's.
        assert!(c.on_message(MS, 4, CoordMsg::Vote { txn, yes: true }).is_empty());
        assert_eq!(c.decision(txn), None);
        c.on_message(MS, 3, CoordMsg::Vote { txn, yes: true });
        assert_eq!(c.decision(txn), Some(Decision::Commit));
    }

    #[test]
    fn ids_not_given_out_yet_are_never_decided_or_presumed() {
        let (mut c, _) = boot(&[]);
        let later_epoch = (c.epoch() + 1) << 32 | 1;
        let unissued = (c.epoch() << 32) | 1;
        for txn in [later_epoch, unissued] {
            let commit = CoordMsg::Commit {
                txn,
                participants: vec![(2, 1)],
            };
            assert!(c.on_message(MS, 7, commit).is_empty());
            assert!(c.on_message(MS, 7, CoordMsg::Status { txn }).is_empty());
            assert!(c.on_message(MS, 3, CoordMsg::Vote { txn, yes: true }).is_empty());
            assert_eq!(c.decision(txn), None);
        }
        // The id, once issued, belongs to its client alone.
        assert_eq!(begin(&mut c), unissued);
        commit(&mut c, unissued);
        c.on_message(
            MS,
            2,
            CoordMsg::Vote {
                txn: unissued,
                yes: true,
            },
        );
        let steps = c.on_message(
            MS,
            3,
            CoordMsg::Vote {
                txn: unissued,
                yes: true,
            },
        );
        assert_eq!(outcome(&steps), Some(Outcome::Committed));
    }

    #[test]
    fn slow_votes_time_out_into_an_abort() {
        let (mut c, _) = boot(&[]);
        let txn = begin(&mut c);
        commit(&mut c, txn);
        let resent = c.tick(Duration::from_millis(300));
        assert_eq!(resent.messages.len(), 2);
        let steps = c.tick(Duration::from_secs(2));
        assert!(steps.events.iter().any(|e| matches!(
            e,
            TxnEvent::Announced {
                decision: Decision::Abort,
                ..
            }
        )));
        assert_eq!(c.decision(txn), Some(Decision::Abort));
    }

    #[test]
    fn commits_are_resent_until_acknowledged() {
        let (mut c, _) = boot(&[]);
        let txn = begin(&mut c);
        commit(&mut c, txn);
        c.on_message(MS, 2, CoordMsg::Vote { txn, yes: true });
        c.on_message(MS, 3, CoordMsg::Vote { txn, yes: true });
        c.on_message(MS, 2, CoordMsg::Ack { txn });
        let steps = c.tick(Duration::from_secs(1));
        assert_eq!(
            steps.messages,
            vec![(
                3,
                Msg::Shard(ShardMsg::Decide {
                    txn,
                    decision: Decision::Commit
                })
            )]
        );
        let end = c.on_message(MS, 3, CoordMsg::Ack { txn });
        assert_eq!(end.append, vec![codec::encode(&Record::End { txn }).unwrap()]);
        assert!(!end.sync && end.messages.is_empty());
        assert!(c.tick(Duration::from_secs(2)).is_empty());
    }

    /// The shell ticks the coordinator when it says: a round's prepares
    /// are re-sent after `resend_every`; an idle coordinator has no deadline.
    #[test]
    fn the_next_deadline_is_the_earliest_resend_or_timeout() {
        let (mut c, _) = boot(&[]);
        assert_eq!(c.next_deadline(), Duration::MAX);
        let txn = begin(&mut c);
        commit(&mut c, txn);
        let config = CoordinatorConfig::default();
        assert_eq!(c.next_deadline(), MS + config.resend_every);
        assert!(c.tick(MS + config.resend_every - MS).is_empty());
        assert!(
            !c.tick(MS + config.resend_every).is_empty(),
            "prepares re-sent when due"
        );
    }

    /// The coordinator's own check stops at a round left over from an
    /// earlier incarnation, which recovery presumes aborted.
    #[test]
    #[should_panic(expected = "of an earlier incarnation still preparing")]
    fn the_check_stops_a_round_of_an_earlier_incarnation() {
        let (mut c, _) = boot(&[]);
        let txn = begin(&mut c);
        commit(&mut c, txn);
        c.check();
        c.epoch += 1;
        c.check();
    }

    /// The coordinator's own check stops at state about an id it never
    /// gave out.
    #[test]
    #[should_panic(expected = "an id it never gave out")]
    fn the_check_stops_state_about_an_id_never_given_out() {
        holding_an_id_never_given_out().check();
    }

    /// Every handler runs the check after it: a broken state stops the
    /// coordinator at its next message, before it can act on it.
    #[test]
    #[should_panic(expected = "an id it never gave out")]
    fn a_handler_runs_the_check_after_it() {
        begin(&mut holding_an_id_never_given_out());
    }

    /// A coordinator that has given out one id and holds an outcome for
    /// one far beyond it (past the next ids a test may issue).
    fn holding_an_id_never_given_out() -> Coordinator {
        let (mut c, _) = boot(&[]);
        let txn = begin(&mut c);
        let reason = AbortReason::CoordinatorRestarted;
        c.txns.insert(txn + 100, State::Aborted { reason });
        c
    }
}
