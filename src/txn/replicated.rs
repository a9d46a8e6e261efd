//! The replicated coordinator: presumed-abort two-phase commit whose state
//! is a state machine on the replicated log (`crate::log`), so that losing
//! any f of its 2f+1 replicas blocks nothing.
//!
//! - **State.** [`CoordMachine`] holds every transaction whose commit was
//!   asked for: its participants, then its decision. The commands are
//!   [`Command::Start`] (the participants to prepare), [`Command::Commit`]
//!   (with the yes votes, which the machine checks), [`Command::Abort`] and
//!   [`Command::End`] (every participant acknowledged the commit). **First
//!   writer wins**: a decision for a decided transaction is ignored, so the
//!   log, not a replica's memory, settles a race between a late commit and
//!   an abort.
//! - **Decided means committed on the log.** A replica tells a decision to
//!   anyone (shard, client, a peer's query) only once the entry deciding it
//!   has been applied — which it is only after a majority stored it. Votes
//!   are collected in the leader's memory: they are durable at the
//!   participants (a prepare record each), so a new leader simply asks
//!   again.
//! - **Any leader drives.** The [`CoordLeader`] runs on every replica and acts
//!   only while its replica leads: when it becomes leader it takes over
//!   every undecided transaction in the machine (prepares re-sent, votes
//!   counted afresh, a fresh prepare timeout on its own clock) and every
//!   commit not yet acknowledged. Its proposals use one exactly-once session
//!   of the log per (replica, term).
//! - **Presumed abort, logged.** A question about a transaction the log does
//!   not know (a retried commit lost with a leader, a status query, a yes
//!   vote) is answered abort only after an `Abort` command for it is
//!   applied; a `Start` or `Commit` arriving later changes nothing.
//! - **Acknowledged decisions.** The leader re-sends a decision, commit or
//!   abort, until every participant acknowledged it, then logs `End`. Plain
//!   presumed abort skips the abort's acknowledgements (a prepared shard
//!   that missed one asks); here they are what makes an aborted
//!   transaction safe to forget.
//! - **Ids** are `term << 32 | seq`, issued by the leader without the log:
//!   a term has at most one leader, so they are unique, and an id the log
//!   never saw committed is presumed aborted.
//! - **Followers** answer outcome questions from their applied state (only
//!   decided transactions) and redirect clients to the leader.
//! - **Forgetting.** The machine would otherwise grow with every
//!   transaction, and its snapshot must fit one message. When more than
//!   [`ReplicatedConfig::retain_finished`] finished transactions (aborted,
//!   or committed and acknowledged by every participant) are held, the
//!   leader logs [`Command::Forget`]: finished transactions below an id
//!   are dropped and that id becomes the machine's *floor*. An id below the
//!   floor that the machine does not hold is *forgotten*: it finished, or
//!   it was begun and never started (its client is slow). Then:
//!   - every command about it is ignored, a `Start` too, and nothing is
//!     presumed: an abort presumed now could contradict a forgotten commit;
//!   - a client's commit request or status question is told
//!     [`ReplyMsg::Forgotten`]: the outcome is unknown here, as after a lost
//!     reply. It is never run again: a re-run would be prepared on the
//!     participants the asker lists, and any node may list a shard that
//!     never heard of the transaction, whose no vote would abort a
//!     forgotten commit. A slow client's transaction that was never
//!     started is not lost either way: it never committed, and its shards
//!     abort it when it idles past their timeout;
//!   - a shard's vote or query about it is a stale duplicate (every
//!     participant of a finished transaction acknowledged its decision)
//!     and gets no answer.
//!
//!   So [`ReplicatedConfig::retain_finished`] is what bounds how late a
//!   client may retry a commit whose reply it lost and still learn the
//!   outcome.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::phases::{announce, too_many, Delivery, Ids, Round, Tally, Waiters, MAX_PARTICIPANTS};
use super::{AbortReason, CoordMsg, Decision, Outcome, Output, ReplyMsg, ShardMsg, TxnBug, TxnEvent, TxnId};
use crate::env::{codec, NodeId};
use crate::log::{SnapshotError, StateMachine, Term};

/// A command on the coordinator's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A client asked to commit `txn`: the participants to prepare, with the
    /// shard epoch each reported. Ignored if `txn` is known.
    Start {
        /// The transaction to prepare.
        txn: TxnId,
        /// The node that asked to commit it (named in every prepare).
        client: NodeId,
        /// Each shard with the epoch the client saw, as in [`CoordMsg::Commit`].
        participants: Vec<(NodeId, u64)>,
    },
    /// Every participant voted yes; `votes` lists them.
    Commit {
        /// The transaction to commit.
        txn: TxnId,
        /// The shards that voted yes; the machine refuses a commit they do
        /// not cover.
        votes: Vec<NodeId>,
    },
    /// A no vote, a prepare timeout, or a question about a transaction the
    /// log does not know.
    Abort {
        /// The transaction to abort.
        txn: TxnId,
        /// Why, as the client will be told.
        reason: AbortReason,
    },
    /// Every participant acknowledged the decision: stop re-sending it.
    End {
        /// The transaction now finished.
        txn: TxnId,
    },
    /// Drop the finished transactions below `below` and raise the floor to
    /// it (module docs, "Forgetting").
    Forget {
        /// The new floor.
        below: TxnId,
    },
}

impl Command {
    /// The transaction the command is about (`None` for `Forget`).
    pub fn txn(&self) -> Option<TxnId> {
        match self {
            Command::Start { txn, .. }
            | Command::Commit { txn, .. }
            | Command::Abort { txn, .. }
            | Command::End { txn } => Some(*txn),
            Command::Forget { .. } => None,
        }
    }
}

/// One transaction in the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnState {
    /// Started: the leader is collecting votes.
    Preparing {
        /// The node that asked to commit, named in every prepare.
        client: NodeId,
        /// Each shard with the epoch the client saw, to put in prepares.
        participants: Vec<(NodeId, u64)>,
    },
    /// Committed on the log: the leader re-sends the commit until `ended`.
    Committed {
        /// The shards to tell, until each acknowledges.
        participants: Vec<NodeId>,
        /// Every participant acknowledged.
        ended: bool,
    },
    /// Aborted on the log; acknowledged too, so that it can be forgotten.
    Aborted {
        /// Empty when the abort was presumed (the log never saw a `Start`).
        participants: Vec<NodeId>,
        /// Why, as the client is told.
        reason: AbortReason,
        /// Every participant acknowledged (at once when there are none).
        ended: bool,
    },
}

impl TxnState {
    /// The decision the log settled on; `None` while preparing.
    pub fn decision(&self) -> Option<Decision> {
        match self {
            TxnState::Preparing { .. } => None,
            TxnState::Committed { .. } => Some(Decision::Commit),
            TxnState::Aborted { .. } => Some(Decision::Abort),
        }
    }

    fn outcome(&self) -> Option<Outcome> {
        match self {
            TxnState::Preparing { .. } => None,
            TxnState::Committed { .. } => Some(Outcome::Committed),
            TxnState::Aborted { reason, .. } => Some(Outcome::Aborted(reason.clone())),
        }
    }

    /// Whether `shard` takes part in the transaction.
    fn involves(&self, shard: NodeId) -> bool {
        match self {
            TxnState::Preparing { participants, .. } => participants.iter().any(|&(n, _)| n == shard),
            TxnState::Committed { participants, .. } | TxnState::Aborted { participants, .. } => {
                participants.contains(&shard)
            }
        }
    }

    /// This decided state with every participant's acknowledgement in
    /// (`None` while preparing: there is nothing to acknowledge).
    fn acknowledged(&self) -> Option<TxnState> {
        let mut next = self.clone();
        match &mut next {
            TxnState::Preparing { .. } => return None,
            TxnState::Committed { ended, .. } | TxnState::Aborted { ended, .. } => *ended = true,
        }
        Some(next)
    }

    /// Decided, and acknowledged by every participant.
    fn finished(&self) -> bool {
        matches!(
            self,
            TxnState::Aborted { ended: true, .. } | TxnState::Committed { ended: true, .. }
        )
    }
}

/// The coordinator's replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoordMachine {
    txns: BTreeMap<TxnId, TxnState>,
    /// The ids of the finished transactions in `txns` (derived).
    finished: BTreeSet<TxnId>,
    /// Ids below this that `txns` does not hold are forgotten.
    floor: TxnId,
}

impl CoordMachine {
    /// The transaction's state, if the machine holds it (not never started
    /// nor forgotten: see [`CoordMachine::forgotten`]).
    pub fn get(&self, txn: TxnId) -> Option<&TxnState> {
        self.txns.get(&txn)
    }

    /// Whether `txn` finished and was dropped by a `Forget` (module docs).
    pub fn forgotten(&self, txn: TxnId) -> bool {
        txn < self.floor && !self.txns.contains_key(&txn)
    }

    /// The `Forget` bound that would leave `retain` finished transactions,
    /// once more than `retain` plus an eighth are held (so that forgetting
    /// comes in batches, not one command per transaction).
    fn forget_bound(&self, retain: usize) -> Option<TxnId> {
        let excess = self.finished.len().saturating_sub(retain);
        if excess == 0 || excess < retain / 8 {
            return None;
        }
        self.finished.iter().nth(excess - 1).map(|&last| last + 1)
    }

    /// Drops the finished transactions below `below` and raises the floor
    /// to `below` if it is lower.
    fn forget_below(&mut self, below: TxnId) {
        let kept = self.finished.split_off(&below);
        for txn in std::mem::replace(&mut self.finished, kept) {
            self.txns.remove(&txn);
        }
        self.floor = self.floor.max(below);
    }

    /// Whether a `Forget { below }` is still to be applied.
    fn holds_finished_below(&self, below: TxnId) -> bool {
        self.finished.range(..below).next().is_some()
    }

    /// The applied decision for `txn`; `None` while preparing, or when the
    /// machine does not hold it.
    pub fn decision(&self, txn: TxnId) -> Option<Decision> {
        self.txns.get(&txn).and_then(TxnState::decision)
    }
}

impl StateMachine for CoordMachine {
    type Command = Command;
    /// The decision for a transaction.
    type Query = TxnId;
    /// The decision standing after the command (first writer wins).
    type Output = Option<Decision>;

    fn apply(&mut self, command: &Command) -> Option<Decision> {
        let txn = match command {
            Command::Forget { below } => {
                self.forget_below(*below);
                return None;
            }
            other => other.txn().expect("every other command names its transaction"),
        };
        if self.forgotten(txn) {
            return None;
        }
        let state = self.txns.get(&txn);
        let next = match (command, state) {
            (
                Command::Start {
                    client, participants, ..
                },
                None,
            ) => Some(TxnState::Preparing {
                client: *client,
                participants: participants.clone(),
            }),
            (Command::Commit { votes, .. }, Some(TxnState::Preparing { participants, .. })) => {
                let votes: BTreeSet<NodeId> = votes.iter().copied().collect();
                assert!(
                    participants.iter().all(|(n, _)| votes.contains(n)),
                    "txn {txn:#x}: a commit needs a yes vote from every participant"
                );
                Some(TxnState::Committed {
                    participants: participants.iter().map(|(n, _)| *n).collect(),
                    ended: false,
                })
            }
            (Command::Abort { reason, .. }, None) => Some(TxnState::Aborted {
                participants: vec![],
                reason: reason.clone(),
                ended: true,
            }),
            (Command::Abort { reason, .. }, Some(TxnState::Preparing { participants, .. })) => {
                Some(TxnState::Aborted {
                    participants: participants.iter().map(|(n, _)| *n).collect(),
                    reason: reason.clone(),
                    ended: participants.is_empty(),
                })
            }
            (Command::End { .. }, Some(decided)) => decided.acknowledged(),
            // Start of a known transaction, a decision for a decided one, or
            // a commit the log cannot vouch for: the first writer stands.
            _ => None,
        };
        if let Some(next) = next {
            if next.finished() {
                self.finished.insert(txn);
            }
            self.txns.insert(txn, next);
        }
        self.decision(txn)
    }

    fn query(&self, txn: &TxnId) -> Option<Decision> {
        self.decision(*txn)
    }

    fn snapshot(&self) -> Result<Vec<u8>, crate::env::codec::CodecError> {
        let txns: Vec<(&TxnId, &TxnState)> = self.txns.iter().collect();
        codec::encode_state(&(self.floor, txns))
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        let (floor, txns): (TxnId, Vec<(TxnId, TxnState)>) = codec::decode_state(snapshot)?;
        self.txns = txns.into_iter().collect();
        self.finished = self
            .txns
            .iter()
            .filter(|(_, t)| t.finished())
            .map(|(&id, _)| id)
            .collect();
        self.floor = floor;
        Ok(())
    }
}

/// Timing and limits of a replicated coordinator replica; every replica
/// of the group should use the same.
#[derive(Debug, Clone)]
pub struct ReplicatedConfig {
    /// Re-send prepares to silent shards and commits to unacknowledging ones
    /// this often.
    pub resend_every: Duration,
    /// Abort a transaction whose votes are not all in after this long (on
    /// the leader's clock, from when it started leading the transaction).
    pub prepare_timeout: Duration,
    /// Finished transactions the machine keeps answering for; older ones
    /// are forgotten (module docs). The default keeps the snapshot well
    /// under the message limit: about 30 bytes per transaction.
    pub retain_finished: usize,
    /// The replicated log's own tuning.
    pub log: crate::log::Config,
    /// A planted bug (the replicated coordinator's variants of
    /// [`TxnBug`]); `None`, the correct protocol, by default.
    pub bug: Option<TxnBug>,
}

impl Default for ReplicatedConfig {
    fn default() -> Self {
        ReplicatedConfig {
            resend_every: Duration::from_millis(200),
            prepare_timeout: Duration::from_millis(1_000),
            retain_finished: 8192,
            log: crate::log::Config::default(),
            bug: None,
        }
    }
}

/// What the leader logic sees of its replica.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// `Some(term)` while this replica leads `term`.
    pub leading: Option<Term>,
    /// The leader this replica believes in, for redirects.
    pub leader: Option<NodeId>,
    /// The applied (hence committed) state.
    pub machine: &'a CoordMachine,
}

/// What the leader logic asks for: commands to propose to the log, then
/// messages and events ([`Output`]; the leader logic has no log of its
/// own, so it never appends or syncs).
#[derive(Debug, Default)]
pub struct LeaderOutput {
    /// Commands for the log, in order; the log service's engine proposes
    /// them under this replica's session for the term.
    pub propose: Vec<Command>,
    /// Messages to send and events to report.
    pub out: Output,
}

impl LeaderOutput {
    /// Appends `other`'s proposals and effects after these, keeping order.
    pub fn extend(&mut self, other: LeaderOutput) {
        self.propose.extend(other.propose);
        self.out.extend(other.out);
    }
}

/// The leader's side of the replicated coordinator, as a sans-io core fed
/// messages, ticks and the transactions each log handler applied. Its state
/// is volatile: rebuilt from the machine whenever its replica becomes leader.
#[derive(Debug)]
pub struct CoordLeader {
    id: NodeId,
    coordinators: Vec<NodeId>,
    config: ReplicatedConfig,
    /// The term this replica leads, if it does.
    term: Option<Term>,
    ids: Ids,
    rounds: BTreeMap<TxnId, Round>,
    /// Decisions being re-sent until every participant acknowledges.
    deliveries: BTreeMap<TxnId, (Decision, Delivery)>,
    waiting: Waiters,
    /// Proposed in this term and not applied yet. A leader's entry commits
    /// unless it loses leadership (which resets all of this), so each is
    /// proposed once per term.
    starting: BTreeSet<TxnId>,
    deciding: BTreeSet<TxnId>,
    /// The `Forget` bound proposed in this term and not applied yet.
    forgetting: Option<TxnId>,
}

impl CoordLeader {
    /// The leader logic of replica `id` of the group `coordinators` (the ids put
    /// in prepares, so shards know whom to ask); it drives nothing until
    /// its replica leads.
    pub fn new(id: NodeId, coordinators: Vec<NodeId>, config: ReplicatedConfig) -> Self {
        assert!(
            coordinators.contains(&id),
            "the leader logic runs on a coordinator replica"
        );
        CoordLeader {
            id,
            coordinators,
            config,
            term: None,
            ids: Ids::default(),
            rounds: BTreeMap::new(),
            deliveries: BTreeMap::new(),
            waiting: Waiters::default(),
            starting: BTreeSet::new(),
            deciding: BTreeSet::new(),
            forgetting: None,
        }
    }

    /// Adopts the replica's role: a new leadership takes over every pending
    /// transaction; losing leadership forgets the volatile state. Every
    /// handler calls it first; the log service's engine calls it as soon as
    /// the role changes.
    pub fn follow(&mut self, now: Duration, view: &View) {
        if self.term == view.leading {
            return;
        }
        self.term = view.leading;
        self.rounds.clear();
        self.deliveries.clear();
        self.waiting.clear();
        self.starting.clear();
        self.deciding.clear();
        self.forgetting = None;
        let Some(term) = view.leading else { return };
        if term >= 1 << 31 {
            // Only a faulty member's terms get this high (see the log's term
            // rule); they no longer fit transaction ids, so drive nothing
            // rather than issue ids that collide.
            tracing::error!(
                replica = self.id,
                term,
                "term too large for transaction ids; not driving"
            );
            self.term = None;
            return;
        }
        self.ids = Ids::default();
        for (&txn, state) in &view.machine.txns {
            match state {
                // PLANTED BUG (ignore_inherited): no round for inherited ones.
                TxnState::Preparing { client, participants } if self.config.bug != Some(TxnBug::IgnoreInherited) => {
                    self.rounds.insert(txn, Round::new(*client, participants.clone(), now));
                }
                TxnState::Committed {
                    participants,
                    ended: false,
                }
                | TxnState::Aborted {
                    participants,
                    ended: false,
                    ..
                } => {
                    let decision = state.decision().expect("decided");
                    let delivery = Delivery::new(participants.iter().copied(), now);
                    self.deliveries.insert(txn, (decision, delivery));
                }
                _ => {}
            }
        }
    }

    fn propose(&mut self, fx: &mut LeaderOutput, command: Command) {
        fx.propose.push(command);
    }

    /// Whether a leader could have issued `txn`: one of an earlier term,
    /// or of this term up to the last this leader gave out. Any other id
    /// names a transaction that does not exist yet, and logging it (a
    /// start, a presumed abort) would let anyone fill the machine with ids
    /// above every real one and raise its forgetting floor past them.
    fn may_exist(&self, txn: TxnId) -> bool {
        self.term.is_none_or(|term| self.ids.issued(term, txn))
    }

    fn abort(&mut self, fx: &mut LeaderOutput, txn: TxnId, reason: AbortReason) {
        if self.deciding.insert(txn) {
            self.propose(fx, Command::Abort { txn, reason });
        }
    }

    fn commit(&mut self, fx: &mut LeaderOutput, txn: TxnId) {
        if self.deciding.insert(txn) {
            let votes = self.rounds[&txn].yes_votes();
            self.propose(fx, Command::Commit { txn, votes });
        }
    }

    fn redirect(&self, to: NodeId, view: &View, out: &mut Output) {
        out.send(to, ReplyMsg::Redirect { leader: view.leader });
    }

    /// A message from a client or a shard (log traffic goes to the log).
    pub fn on_message(&mut self, now: Duration, from: NodeId, msg: CoordMsg, view: &View) -> LeaderOutput {
        let fx = self.handle_message(now, from, msg, view);
        self.checked(view);
        fx
    }

    fn handle_message(&mut self, now: Duration, from: NodeId, msg: CoordMsg, view: &View) -> LeaderOutput {
        self.follow(now, view);
        let mut fx = LeaderOutput::default();
        let machine = view.machine;
        match msg {
            CoordMsg::Begin { request } => match self.term.map(|term| self.ids.issue(term)) {
                Some(Some(txn)) => fx.out.send(from, ReplyMsg::Began { request, txn }),
                // This term's ids are used up; the next leader's are fresh.
                Some(None) => tracing::error!(replica = self.id, "transaction ids of this term exhausted"),
                None => self.redirect(from, view, &mut fx.out),
            },
            // It finished and the machine no longer knows how, or it was
            // never started before the floor passed it (module docs).
            // PLANTED BUG (forget_presumes_abort): a forgotten one presumed aborted.
            CoordMsg::Commit { txn, .. } | CoordMsg::Status { txn }
                if machine.forgotten(txn) && self.config.bug == Some(TxnBug::ForgetPresumesAbort) =>
            {
                presume_abort(from, txn, &mut fx.out)
            }
            CoordMsg::Commit { txn, .. } | CoordMsg::Status { txn } if machine.forgotten(txn) => {
                fx.out.send(from, ReplyMsg::Forgotten { txn })
            }
            CoordMsg::Commit { txn, .. }
            | CoordMsg::Status { txn }
            | CoordMsg::Query { txn }
            | CoordMsg::Vote { txn, .. }
                if !self.may_exist(txn) =>
            {
                tracing::warn!(
                    replica = self.id,
                    from,
                    txn,
                    "ignoring a transaction id no leader issued"
                );
            }
            CoordMsg::Commit { txn, participants } => match machine.get(txn) {
                Some(state) if state.decision().is_some() => tell_outcome(from, txn, state, &mut fx.out),
                _ if self.term.is_none() => self.redirect(from, view, &mut fx.out),
                Some(_) => self.waiting.add(txn, from),
                None if too_many(&participants) => {
                    self.waiting.add(txn, from);
                    let reason = AbortReason::TooManyParticipants {
                        limit: MAX_PARTICIPANTS,
                    };
                    self.abort(&mut fx, txn, reason);
                }
                None => {
                    self.waiting.add(txn, from);
                    if self.starting.insert(txn) {
                        self.propose(
                            &mut fx,
                            Command::Start {
                                txn,
                                client: from,
                                participants,
                            },
                        );
                    }
                }
            },
            CoordMsg::Status { txn } => match machine.get(txn) {
                Some(state) if state.decision().is_some() => tell_outcome(from, txn, state, &mut fx.out),
                _ if self.term.is_none() => self.redirect(from, view, &mut fx.out),
                Some(_) => self.waiting.add(txn, from),
                None => {
                    self.waiting.add(txn, from);
                    self.abort(&mut fx, txn, AbortReason::NotLogged);
                }
            },
            CoordMsg::Vote { txn, yes } if self.term.is_some() => match self.rounds.get_mut(&txn) {
                Some(round) => match round.vote(from, yes) {
                    Some(Tally::No) => self.abort(&mut fx, txn, AbortReason::VotedNo { shard: from }),
                    Some(Tally::AllYes) => self.commit(&mut fx, txn),
                    Some(Tally::Pending) | None => {}
                },
                None => match machine.get(txn) {
                    // A late yes: that shard waits for the decision. A
                    // commit goes only to a shard that took part: told to
                    // commit what it never prepared, a shard (or an
                    // auditor) would take it for a lost yes vote.
                    Some(state) if yes => match state.decision() {
                        Some(Decision::Commit) if !state.involves(from) => {}
                        Some(decision) => tell_shard(from, txn, decision, &mut fx.out),
                        None => {}
                    },
                    // A repeat from a shard that knows the decision.
                    None if machine.forgotten(txn) => {}
                    None if yes => self.abort(&mut fx, txn, AbortReason::NotLogged),
                    _ => {}
                },
            },
            CoordMsg::Ack { txn } => {
                if self.deliveries.get_mut(&txn).is_some_and(|(_, d)| d.ack(from)) {
                    self.deliveries.remove(&txn);
                    self.propose(&mut fx, Command::End { txn });
                }
            }
            CoordMsg::Query { txn } => match machine.decision(txn) {
                Some(decision) => tell_shard(from, txn, decision, &mut fx.out),
                None if machine.forgotten(txn) && self.config.bug == Some(TxnBug::ForgetPresumesAbort) => {
                    tell_shard(from, txn, Decision::Abort, &mut fx.out)
                }
                // A stale duplicate: every participant has the decision.
                None if machine.forgotten(txn) => {}
                // PLANTED BUG: abort presumed from this replica's memory.
                None if self.config.bug == Some(TxnBug::ReplicaPresumesAbort) => {
                    tell_shard(from, txn, Decision::Abort, &mut fx.out)
                }
                None if self.term.is_some() && machine.get(txn).is_none() => {
                    self.abort(&mut fx, txn, AbortReason::NotLogged)
                }
                // Undecided: the leader drives it; a follower leaves it to the leader.
                None => {}
            },
            CoordMsg::Vote { .. } | CoordMsg::Log(_) => {}
        }
        fx
    }

    /// When [`CoordLeader::tick`] next has something to do: a voting
    /// round's re-send or timeout, a decision's re-send.
    pub fn next_deadline(&self) -> Duration {
        let rounds = self
            .rounds
            .iter()
            .filter(|(txn, _)| !self.deciding.contains(txn))
            .map(|(_, round)| round.due(self.config.prepare_timeout));
        let deliveries = self.deliveries.values().map(|(_, delivery)| delivery.due());
        rounds.chain(deliveries).min().unwrap_or(Duration::MAX)
    }

    /// Timeouts: re-send prepares and decisions; abort slow votes.
    pub fn tick(&mut self, now: Duration, view: &View) -> LeaderOutput {
        let fx = self.timeouts(now, view);
        self.checked(view);
        fx
    }

    fn timeouts(&mut self, now: Duration, view: &View) -> LeaderOutput {
        self.follow(now, view);
        let mut fx = LeaderOutput::default();
        let (every, timeout) = (self.config.resend_every, self.config.prepare_timeout);
        let mut timed_out = Vec::new();
        for (&txn, round) in &mut self.rounds {
            if self.deciding.contains(&txn) {
                continue;
            }
            if round.timed_out(now, timeout) {
                timed_out.push(txn);
            } else {
                round.prepares_due(txn, &self.coordinators, (now, every), &mut fx.out);
            }
        }
        for txn in timed_out {
            self.abort(&mut fx, txn, AbortReason::PrepareTimeout);
        }
        for (&txn, (decision, delivery)) in &mut self.deliveries {
            delivery.resend_due(txn, *decision, (now, every), &mut fx.out);
        }
        fx
    }

    /// The log applied commands about `txns`: act on what is now decided.
    /// Only here does a leader send a decision — after the log committed it.
    pub fn on_applied(&mut self, now: Duration, view: &View, txns: impl IntoIterator<Item = TxnId>) -> LeaderOutput {
        let fx = self.act_on_applied(now, view, txns);
        self.checked(view);
        fx
    }

    /// Runs [`Self::check`] where checks are built in (unit tests, and the
    /// `core-checks` feature the simulator turns on).
    fn checked(&self, view: &View) {
        if cfg!(any(test, feature = "core-checks")) {
            crate::check::run(|| self.check(view.machine));
        }
    }

    fn act_on_applied(&mut self, now: Duration, view: &View, txns: impl IntoIterator<Item = TxnId>) -> LeaderOutput {
        self.follow(now, view);
        let mut fx = LeaderOutput::default();
        if self.term.is_none() {
            return fx;
        }
        let txns: BTreeSet<TxnId> = txns.into_iter().collect();
        for txn in txns {
            let Some(state) = view.machine.get(txn) else {
                if view.machine.forgotten(txn) {
                    // Decided, ended and forgotten in one batch: finished.
                    self.forget_round(txn);
                    self.deliveries.remove(&txn);
                    self.waiting.forgotten(txn, &mut fx.out);
                }
                continue;
            };
            match state {
                TxnState::Preparing { client, participants } => {
                    let inherited = !self.starting.remove(&txn);
                    // PLANTED BUG (ignore_inherited): leave inherited ones alone.
                    let skip = inherited && self.config.bug == Some(TxnBug::IgnoreInherited);
                    if !skip && !self.rounds.contains_key(&txn) {
                        let mut round = Round::new(*client, participants.clone(), now);
                        round.prepares(txn, &self.coordinators, (now, self.config.resend_every), &mut fx.out);
                        self.rounds.insert(txn, round);
                        if participants.is_empty() {
                            self.commit(&mut fx, txn);
                        }
                    }
                }
                TxnState::Committed {
                    participants,
                    ended: false,
                }
                | TxnState::Aborted {
                    participants,
                    ended: false,
                    ..
                } => {
                    let decision = state.decision().expect("decided");
                    self.forget_round(txn);
                    if !self.deliveries.contains_key(&txn) {
                        let resend = now + self.config.resend_every;
                        let delivery = Delivery::new(participants.iter().copied(), resend);
                        self.deliveries.insert(txn, (decision, delivery));
                        announce(txn, decision, participants.clone(), &mut fx.out);
                    }
                    self.waiting
                        .notify(txn, &state.outcome().expect("decided"), &mut fx.out);
                }
                // Aborted with no participant to tell (presumed): finished
                // the moment it is decided.
                TxnState::Aborted {
                    participants, reason, ..
                } if participants.is_empty() => {
                    self.forget_round(txn);
                    announce(txn, Decision::Abort, vec![], &mut fx.out);
                    self.waiting.notify(txn, &Outcome::Aborted(reason.clone()), &mut fx.out);
                }
                // `End` applied: every participant acknowledged. The
                // decision may have been applied in the same batch (a new
                // leader catching up on its predecessor's entries), so its
                // round and its waiting clients are settled here too.
                TxnState::Committed { ended: true, .. } | TxnState::Aborted { ended: true, .. } => {
                    self.forget_round(txn);
                    self.deliveries.remove(&txn);
                    self.waiting
                        .notify(txn, &state.outcome().expect("decided"), &mut fx.out);
                }
            }
        }
        self.maybe_forget(&mut fx, view.machine);
        fx
    }

    /// Proposes a `Forget` when too many finished transactions are held and
    /// none is pending.
    fn maybe_forget(&mut self, fx: &mut LeaderOutput, machine: &CoordMachine) {
        if self.forgetting.is_some_and(|below| machine.holds_finished_below(below)) {
            return;
        }
        self.forgetting = machine.forget_bound(self.config.retain_finished);
        if let Some(below) = self.forgetting {
            self.propose(fx, Command::Forget { below });
        }
    }

    /// Asserts the leader logic's own invariants against `machine`, the
    /// state it was last shown (run after every handler under the
    /// `core-checks` feature): a follower drives nothing; a voting round
    /// runs only for a transaction the machine holds as preparing; a
    /// decision is re-sent only while the machine holds it decided and not
    /// ended.
    pub fn check(&self, machine: &CoordMachine) {
        if self.term.is_none() {
            assert!(
                self.rounds.is_empty() && self.deliveries.is_empty() && self.forgetting.is_none(),
                "replica {}: drives transactions while not leading",
                self.id
            );
            return;
        }
        for txn in self.rounds.keys() {
            assert!(
                matches!(machine.get(*txn), Some(TxnState::Preparing { .. })),
                "replica {}: a voting round for {txn}, which is {:?}",
                self.id,
                machine.get(*txn)
            );
        }
        for (txn, (decision, _)) in &self.deliveries {
            let state = machine.get(*txn);
            assert!(
                state.is_some_and(|t| t.decision() == Some(*decision) && !t.finished()),
                "replica {}: re-sends {decision:?} for {txn}, which is {state:?}",
                self.id
            );
        }
    }

    fn forget_round(&mut self, txn: TxnId) {
        self.rounds.remove(&txn);
        self.starting.remove(&txn);
        self.deciding.remove(&txn);
    }
}

/// A client's answer from a decided transaction.
fn tell_outcome(client: NodeId, txn: TxnId, state: &TxnState, out: &mut Output) {
    let decision = state.decision().expect("decided");
    let outcome = state.outcome().expect("decided");
    out.event(TxnEvent::Announced {
        txn,
        decision,
        participants: vec![],
    });
    out.send(client, ReplyMsg::Outcome { txn, outcome });
}

/// The planted bug's answer to a client about a forgotten transaction.
fn presume_abort(client: NodeId, txn: TxnId, out: &mut Output) {
    let presumed = TxnState::Aborted {
        participants: vec![],
        reason: AbortReason::NotLogged,
        ended: true,
    };
    tell_outcome(client, txn, &presumed, out);
}

/// A shard's answer (to a query or a late vote).
fn tell_shard(shard: NodeId, txn: TxnId, decision: Decision, out: &mut Output) {
    out.event(TxnEvent::Announced {
        txn,
        decision,
        participants: vec![],
    });
    out.send(shard, ShardMsg::Decide { txn, decision });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::Msg;

    const CLIENT: NodeId = 100;
    const MS: Duration = Duration::from_millis(1);
    const TERM: Term = 3;

    fn leader_logic() -> CoordLeader {
        CoordLeader::new(1, vec![1, 2, 3], ReplicatedConfig::default())
    }

    fn leading(machine: &CoordMachine) -> View<'_> {
        View {
            leading: Some(TERM),
            leader: Some(1),
            machine,
        }
    }

    fn following(machine: &CoordMachine) -> View<'_> {
        View {
            leading: None,
            leader: Some(2),
            machine,
        }
    }

    /// The log commits and applies every proposal; the leader logic then sees it.
    fn commit_log(d: &mut CoordLeader, m: &mut CoordMachine, fx: &LeaderOutput) -> LeaderOutput {
        let txns: Vec<TxnId> = fx.propose.iter().filter_map(|c| c.txn()).collect();
        for command in &fx.propose {
            m.apply(command);
        }
        d.on_applied(MS, &leading(m), txns)
    }

    /// Begins a transaction at the leader logic and returns its id.
    fn begin(d: &mut CoordLeader, m: &CoordMachine) -> TxnId {
        let began = d.on_message(MS, CLIENT, CoordMsg::Begin { request: 1 }, &leading(m));
        match began.out.messages[..] {
            [(CLIENT, Msg::Reply(ReplyMsg::Began { txn, .. }))] => txn,
            _ => panic!("{:?}", began.out),
        }
    }

    fn decides(fx: &LeaderOutput) -> Vec<(NodeId, Decision)> {
        fx.out
            .messages
            .iter()
            .filter_map(|s| match s {
                (to, Msg::Shard(ShardMsg::Decide { decision, .. })) => Some((*to, *decision)),
                _ => None,
            })
            .collect()
    }

    fn outcome(fx: &LeaderOutput) -> Option<Outcome> {
        fx.out.messages.iter().find_map(|s| match s {
            (CLIENT, Msg::Reply(ReplyMsg::Outcome { outcome, .. })) => Some(outcome.clone()),
            _ => None,
        })
    }

    #[test]
    fn the_first_decision_on_the_log_stands() {
        let mut m = CoordMachine::default();
        let start = Command::Start {
            txn: 7,
            client: CLIENT,
            participants: vec![(4, 1), (5, 1)],
        };
        assert_eq!(m.apply(&start), None);
        let abort = Command::Abort {
            txn: 7,
            reason: AbortReason::PrepareTimeout,
        };
        assert_eq!(m.apply(&abort), Some(Decision::Abort));
        let late = Command::Commit {
            txn: 7,
            votes: vec![4, 5],
        };
        assert_eq!(m.apply(&late), Some(Decision::Abort), "a late commit changes nothing");
        // A presumed abort of an unknown transaction also stands.
        let presumed = Command::Abort {
            txn: 8,
            reason: AbortReason::NotLogged,
        };
        assert_eq!(m.apply(&presumed), Some(Decision::Abort));
        let start8 = Command::Start {
            txn: 8,
            client: CLIENT,
            participants: vec![(4, 1)],
        };
        assert_eq!(m.apply(&start8), Some(Decision::Abort));
        let mut restored = CoordMachine::default();
        restored.restore(&m.snapshot().unwrap()).unwrap();
        assert_eq!(restored, m);
    }

    #[test]
    fn a_late_yes_is_told_a_commit_only_by_a_participant() {
        let mut m = CoordMachine::default();
        m.apply(&Command::Start {
            txn: 7,
            client: CLIENT,
            participants: vec![(4, 1)],
        });
        m.apply(&Command::Commit { txn: 7, votes: vec![4] });
        let mut d = leader_logic();
        let yes = CoordMsg::Vote { txn: 7, yes: true };
        assert_eq!(
            decides(&d.on_message(MS, 4, yes.clone(), &leading(&m))),
            [(4, Decision::Commit)]
        );
        // Shard 5 never took part: it holds no prepare to commit, and being
        // told to would look, to the shard and to any auditor, like a yes
        // vote of its that was lost.
        assert!(decides(&d.on_message(MS, 5, yes.clone(), &leading(&m))).is_empty());
        // An abort harms no one: a stranger's yes on an aborted
        // transaction is told so.
        m.apply(&Command::Abort {
            txn: 8,
            reason: AbortReason::NotLogged,
        });
        let yes8 = CoordMsg::Vote { txn: 8, yes: true };
        assert_eq!(
            decides(&d.on_message(MS, 5, yes8, &leading(&m))),
            [(5, Decision::Abort)]
        );
    }

    /// A late no needs no answer: the shard that sent it aborted its part
    /// when it voted.
    #[test]
    fn a_late_no_is_not_answered() {
        let mut m = CoordMachine::default();
        m.apply(&Command::Start {
            txn: 7,
            client: CLIENT,
            participants: vec![(4, 1), (5, 1)],
        });
        m.apply(&Command::Abort {
            txn: 7,
            reason: AbortReason::VotedNo { shard: 5 },
        });
        let mut d = leader_logic();
        let no = CoordMsg::Vote { txn: 7, yes: false };
        let fx = d.on_message(MS, 5, no, &leading(&m));
        assert!(fx.out.messages.is_empty() && fx.propose.is_empty(), "{fx:?}");
    }

    /// The leader logic's own check stops at a voting round for a
    /// transaction the machine it was shown does not hold.
    #[test]
    #[should_panic(expected = "a voting round for")]
    fn the_check_stops_a_round_the_machine_does_not_hold() {
        let (mut d, mut m) = (leader_logic(), CoordMachine::default());
        let txn = begin(&mut d, &m);
        let commit = CoordMsg::Commit {
            txn,
            participants: vec![(4, 1), (5, 1)],
        };
        let fx = d.on_message(MS, CLIENT, commit, &leading(&m));
        commit_log(&mut d, &mut m, &fx);
        d.check(&m);
        d.check(&CoordMachine::default());
    }

    /// Applies the commands that finish `txn`: committed (else aborted on a
    /// lock conflict), then acknowledged by every participant.
    fn finish(m: &mut CoordMachine, txn: TxnId, commit: bool) {
        m.apply(&Command::Start {
            txn,
            client: CLIENT,
            participants: vec![(1004, 1), (1005, 1)],
        });
        if commit {
            m.apply(&Command::Commit {
                txn,
                votes: vec![1004, 1005],
            });
        } else {
            m.apply(&Command::Abort {
                txn,
                reason: AbortReason::LockConflict {
                    key: "account-63".into(),
                    holder: (TERM << 32) | 1_000_000,
                },
            });
        }
        assert!(
            !m.get(txn).is_some_and(TxnState::finished),
            "not before the acknowledgements"
        );
        m.apply(&Command::End { txn });
    }

    #[test]
    fn forget_drops_finished_transactions_for_good() {
        let mut m = CoordMachine::default();
        for txn in 1..=6 {
            finish(&mut m, txn, txn % 2 == 0);
        }
        // 7 committed but not acknowledged, 8 still preparing: not finished.
        m.apply(&Command::Start {
            txn: 7,
            client: CLIENT,
            participants: vec![(1004, 1)],
        });
        m.apply(&Command::Commit {
            txn: 7,
            votes: vec![1004],
        });
        m.apply(&Command::Start {
            txn: 8,
            client: CLIENT,
            participants: vec![(1004, 1)],
        });
        finish(&mut m, 9, true);
        assert_eq!(m.forget_bound(2), Some(6), "7 finished, keep the newest 2 (6 and 9)");
        m.apply(&Command::Forget { below: 9 });
        assert!((1..=6).all(|t| m.forgotten(t)));
        assert!(!m.forgotten(7) && !m.forgotten(8) && !m.forgotten(9));
        assert_eq!(m.decision(7), Some(Decision::Commit));
        // A late start, decision or end about a forgotten transaction is
        // ignored.
        for late in [
            Command::Start {
                txn: 3,
                client: CLIENT,
                participants: vec![(1004, 1)],
            },
            Command::Abort {
                txn: 4,
                reason: AbortReason::NotLogged,
            },
            Command::Commit {
                txn: 5,
                votes: vec![1004],
            },
            Command::End { txn: 6 },
        ] {
            assert_eq!(m.apply(&late), None);
        }
        assert!((3..=6).all(|t| m.forgotten(t)));
        // A lower bound later keeps the floor; it survives a snapshot.
        m.apply(&Command::Forget { below: 2 });
        assert_eq!(m.floor, 9);
        let mut restored = CoordMachine::default();
        restored.restore(&m.snapshot().unwrap()).unwrap();
        assert_eq!(restored, m);
        // Ids at or above the floor are new as before.
        assert_eq!(
            m.apply(&Command::Abort {
                txn: 10,
                reason: AbortReason::NotLogged
            }),
            Some(Decision::Abort)
        );
    }

    /// The default retention keeps the snapshot within half the limit, with
    /// every finished transaction as large as the bank's aborts.
    #[test]
    fn the_default_retention_fits_a_snapshot() {
        let retain = ReplicatedConfig::default().retain_finished;
        let mut m = CoordMachine::default();
        // Up to an eighth more are held before a Forget.
        let held = retain + retain / 8;
        for i in 0..held as u64 {
            finish(&mut m, (TERM << 32) | (i + 1), false);
        }
        let bytes = m.snapshot().unwrap().len();
        assert!(
            bytes <= crate::log::DEFAULT_MAX_SNAPSHOT_BYTES / 2,
            "{bytes} bytes for {held} transactions"
        );
    }

    #[test]
    fn the_leader_forgets_in_batches_and_still_answers_shards() {
        let config = ReplicatedConfig {
            retain_finished: 16,
            ..ReplicatedConfig::default()
        };
        let (mut d, mut m) = (CoordLeader::new(1, vec![1, 2, 3], config), CoordMachine::default());
        // Issued and finished under an earlier leader.
        let ids: Vec<TxnId> = (1..=17).map(|i| ((TERM - 1) << 32) | i).collect();
        for &txn in &ids {
            finish(&mut m, txn, txn % 2 == 1);
        }
        // 17 finished, 16 retained: an excess of one is below a batch (2).
        assert!(d.on_applied(MS, &leading(&m), []).propose.is_empty());
        let txn = ((TERM - 1) << 32) | 18;
        finish(&mut m, txn, false);
        let fx = d.on_applied(MS, &leading(&m), [txn]);
        let below = ids[1] + 1;
        assert!(matches!(fx.propose[..], [Command::Forget { below: b }] if b == below));
        assert!(
            d.on_applied(MS, &leading(&m), []).propose.is_empty(),
            "one Forget at a time"
        );
        commit_log(&mut d, &mut m, &fx);
        assert!(m.forgotten(ids[0]) && m.forgotten(ids[1]) && !m.forgotten(ids[2]));
        // A shard's query or vote about one is a stale duplicate (every
        // participant acknowledged the decision): no answer, nothing logged.
        for msg in [
            CoordMsg::Query { txn: ids[0] },
            CoordMsg::Vote { txn: ids[0], yes: true },
        ] {
            let fx = d.on_message(MS, 1004, msg, &leading(&m));
            assert!(fx.propose.is_empty() && fx.out.is_empty(), "{fx:?}");
        }
        // A status question, at the leader or a follower: the client
        // learns it is forgotten; nothing is logged.
        for view in [leading(&m), following(&m)] {
            let fx = d.on_message(MS, CLIENT, CoordMsg::Status { txn: ids[1] }, &view);
            assert!(fx.propose.is_empty());
            assert!(
                matches!(&fx.out.messages[..], [(CLIENT, Msg::Reply(ReplyMsg::Forgotten { txn }))] if *txn == ids[1])
            );
        }
        // A retried commit, from its client or from anyone listing any
        // shards, is never run again: a shard that never heard of it would
        // vote no and abort a forgotten commit (txn-replicated-load seed
        // 1171). The asker learns it is forgotten; nothing is logged.
        for (from, shard) in [(CLIENT, 1004), (1005, 1006)] {
            let retried = CoordMsg::Commit {
                txn: ids[1],
                participants: vec![(shard, 1)],
            };
            let fx = d.on_message(MS, from, retried, &leading(&m));
            assert!(fx.propose.is_empty(), "{fx:?}");
            assert!(
                matches!(&fx.out.messages[..], [(to, Msg::Reply(ReplyMsg::Forgotten { txn }))] if *to == from && *txn == ids[1])
            );
        }
    }

    #[test]
    #[should_panic(expected = "a yes vote from every participant")]
    fn the_machine_refuses_a_commit_without_every_vote() {
        let mut m = CoordMachine::default();
        m.apply(&Command::Start {
            txn: 7,
            client: CLIENT,
            participants: vec![(4, 1), (5, 1)],
        });
        m.apply(&Command::Commit { txn: 7, votes: vec![4] });
    }

    #[test]
    fn ids_no_leader_issued_are_never_logged() {
        let (mut d, m) = (leader_logic(), CoordMachine::default());
        let issued = begin(&mut d, &m);
        let unissued = [issued + 1, (TERM + 1) << 32 | 1, u64::MAX];
        for txn in unissued {
            let asks = [
                CoordMsg::Status { txn },
                CoordMsg::Commit {
                    txn,
                    participants: vec![(4, 1)],
                },
                CoordMsg::Query { txn },
                CoordMsg::Vote { txn, yes: true },
            ];
            for msg in asks {
                let fx = d.on_message(MS, 4, msg.clone(), &leading(&m));
                assert!(fx.propose.is_empty() && fx.out.is_empty(), "{msg:?} gave {fx:?}");
            }
        }
        // Issued ones, this term's and an earlier term's, are asked about.
        for txn in [issued, (TERM - 1) << 32 | 9] {
            let fx = d.on_message(MS, CLIENT, CoordMsg::Status { txn }, &leading(&m));
            assert!(matches!(fx.propose[..], [Command::Abort { .. }]), "{fx:?}");
        }
    }

    #[test]
    fn a_commit_listing_too_many_shards_is_aborted_not_started() {
        let (mut d, mut m) = (leader_logic(), CoordMachine::default());
        let txn = begin(&mut d, &m);
        let participants = (0..=MAX_PARTICIPANTS as NodeId).map(|n| (n + 100, 1)).collect();
        let fx = d.on_message(MS, CLIENT, CoordMsg::Commit { txn, participants }, &leading(&m));
        let limit = MAX_PARTICIPANTS;
        let reason = AbortReason::TooManyParticipants { limit };
        assert!(
            matches!(&fx.propose[..], [Command::Abort { reason: r, .. }] if *r == reason),
            "{fx:?}"
        );
        let fx = commit_log(&mut d, &mut m, &fx);
        assert!(
            !fx.out
                .messages
                .iter()
                .any(|s| matches!(s, (_, Msg::Shard(ShardMsg::Prepare { .. })))),
            "{fx:?}"
        );
        assert!(fx
            .out
            .messages
            .iter()
            .any(|s| matches!(s, (CLIENT, Msg::Reply(ReplyMsg::Outcome { outcome: Outcome::Aborted(r), .. })) if *r == reason)));
    }

    #[test]
    fn a_decision_is_sent_only_after_the_log_applied_it() {
        let (mut d, mut m) = (leader_logic(), CoordMachine::default());
        let txn = begin(&mut d, &m);
        assert_eq!(txn >> 32, TERM);
        let commit = CoordMsg::Commit {
            txn,
            participants: vec![(4, 1), (5, 1)],
        };
        let fx = d.on_message(MS, CLIENT, commit.clone(), &leading(&m));
        assert!(matches!(fx.propose[..], [Command::Start { .. }]));
        assert!(fx.out.is_empty(), "nothing is sent before the start is logged");
        // A retry while the start is in flight proposes nothing new.
        assert!(d.on_message(MS, CLIENT, commit, &leading(&m)).propose.is_empty());
        let prepared = commit_log(&mut d, &mut m, &fx);
        assert_eq!(
            prepared
                .out
                .messages
                .iter()
                .filter(|s| matches!(s, (_, Msg::Shard(ShardMsg::Prepare { coordinators, .. })) if coordinators == &[1, 2, 3]))
                .count(),
            2
        );
        assert!(d
            .on_message(MS, 4, CoordMsg::Vote { txn, yes: true }, &leading(&m))
            .propose
            .is_empty());
        let fx = d.on_message(MS, 5, CoordMsg::Vote { txn, yes: true }, &leading(&m));
        assert!(matches!(&fx.propose[..], [Command::Commit { votes, .. }] if votes == &[4, 5]));
        assert!(
            decides(&fx).is_empty() && outcome(&fx).is_none(),
            "not before the log commits it"
        );
        let decided = commit_log(&mut d, &mut m, &fx);
        assert_eq!(decides(&decided), vec![(4, Decision::Commit), (5, Decision::Commit)]);
        assert_eq!(outcome(&decided), Some(Outcome::Committed));
        // Acknowledgements end it, through the log.
        assert!(d
            .on_message(MS, 4, CoordMsg::Ack { txn }, &leading(&m))
            .propose
            .is_empty());
        let fx = d.on_message(MS, 5, CoordMsg::Ack { txn }, &leading(&m));
        assert!(matches!(fx.propose[..], [Command::End { .. }]));
    }

    #[test]
    fn questions_about_unknown_transactions_are_answered_by_a_logged_abort() {
        let (mut d, mut m) = (leader_logic(), CoordMachine::default());
        let txn = (2 << 32) | 9;
        let fx = d.on_message(MS, 4, CoordMsg::Query { txn }, &leading(&m));
        assert!(matches!(fx.propose[..], [Command::Abort { .. }]));
        assert!(decides(&fx).is_empty());
        commit_log(&mut d, &mut m, &fx);
        let answer = d.on_message(MS, 4, CoordMsg::Query { txn }, &leading(&m));
        assert_eq!(decides(&answer), vec![(4, Decision::Abort)]);
        // The client's late commit cannot revive it.
        let late = CoordMsg::Commit {
            txn,
            participants: vec![(4, 1)],
        };
        let fx = d.on_message(MS, CLIENT, late, &leading(&m));
        assert!(fx.propose.is_empty());
        assert!(matches!(outcome(&fx), Some(Outcome::Aborted(AbortReason::NotLogged))));
    }

    #[test]
    fn a_follower_redirects_clients_and_answers_only_logged_decisions() {
        let (mut d, mut m) = (leader_logic(), CoordMachine::default());
        let fx = d.on_message(MS, CLIENT, CoordMsg::Begin { request: 1 }, &following(&m));
        assert_eq!(
            fx.out.messages,
            vec![(CLIENT, Msg::Reply(ReplyMsg::Redirect { leader: Some(2) }))]
        );
        let fx = d.on_message(MS, 4, CoordMsg::Query { txn: 7 }, &following(&m));
        assert!(
            fx.propose.is_empty() && fx.out.is_empty(),
            "undecided: the leader's business"
        );
        m.apply(&Command::Start {
            txn: 7,
            client: CLIENT,
            participants: vec![(4, 1)],
        });
        m.apply(&Command::Commit { txn: 7, votes: vec![4] });
        let fx = d.on_message(MS, 4, CoordMsg::Query { txn: 7 }, &following(&m));
        assert_eq!(decides(&fx), vec![(4, Decision::Commit)]);
    }

    #[test]
    fn a_new_leader_takes_over_undecided_and_unacknowledged_transactions() {
        let (mut d, mut m) = (leader_logic(), CoordMachine::default());
        m.apply(&Command::Start {
            txn: 7,
            client: CLIENT,
            participants: vec![(4, 1), (5, 1)],
        });
        m.apply(&Command::Start {
            txn: 8,
            client: CLIENT,
            participants: vec![(4, 1)],
        });
        m.apply(&Command::Commit { txn: 8, votes: vec![4] });
        // Was a follower; now leads.
        d.tick(MS, &following(&m));
        let fx = d.tick(100 * MS, &leading(&m));
        let prepares = fx
            .out
            .messages
            .iter()
            .filter(|s| matches!(s, (_, Msg::Shard(ShardMsg::Prepare { txn: 7, .. }))))
            .count();
        assert_eq!(prepares, 2);
        assert_eq!(decides(&fx), vec![(4, Decision::Commit)]);
        // Votes never come: its own prepare timeout aborts, through the log.
        let fx = d.tick(1_200 * MS, &leading(&m));
        assert!(matches!(
            fx.propose[..],
            [Command::Abort {
                txn: 7,
                reason: AbortReason::PrepareTimeout
            }]
        ));
    }

    /// A leader that inherited preparing transaction 7 with a client
    /// waiting on it, and a machine that has since applied its commit and
    /// `End` (not yet shown to the leader logic).
    fn inherited_then_committed_and_ended() -> (CoordLeader, CoordMachine) {
        let (mut d, mut m) = (leader_logic(), CoordMachine::default());
        m.apply(&Command::Start {
            txn: 7,
            client: CLIENT,
            participants: vec![(4, 1)],
        });
        d.tick(MS, &leading(&m));
        assert!(d
            .on_message(MS, CLIENT, CoordMsg::Status { txn: 7 }, &leading(&m))
            .out
            .is_empty());
        m.apply(&Command::Commit { txn: 7, votes: vec![4] });
        m.apply(&Command::End { txn: 7 });
        (d, m)
    }

    /// A new leader inherits a preparing transaction, then applies its
    /// predecessor's decision and `End` in one batch: the round ends there
    /// (it used to stay, re-sending prepares for a finished transaction and
    /// proposing an abort the machine ignores, until the next election), and
    /// a client waiting on it is told. `check` runs after every handler.
    #[test]
    fn a_decision_and_its_end_applied_together_end_the_round() {
        let (mut d, m) = inherited_then_committed_and_ended();
        let fx = d.on_applied(2 * MS, &leading(&m), [7, 7]);
        assert_eq!(outcome(&fx), Some(Outcome::Committed));
        let fx = d.tick(1_200 * MS, &leading(&m));
        assert!(fx.propose.is_empty() && fx.out.is_empty(), "{fx:?}");
    }

    /// The same when the batch also forgets the transaction: the machine no
    /// longer holds it, and the leader logic lets go of it as well (it
    /// used to keep its round and re-send its commit forever).
    #[test]
    fn a_transaction_decided_ended_and_forgotten_in_one_batch_is_let_go() {
        let (mut d, mut m) = inherited_then_committed_and_ended();
        m.apply(&Command::Forget { below: 8 });
        assert!(m.forgotten(7));
        let fx = d.on_applied(2 * MS, &leading(&m), [7, 7]);
        assert_eq!(
            fx.out.messages,
            vec![(CLIENT, Msg::Reply(ReplyMsg::Forgotten { txn: 7 }))]
        );
        let fx = d.tick(1_200 * MS, &leading(&m));
        assert!(fx.propose.is_empty() && fx.out.is_empty(), "{fx:?}");
    }
}
