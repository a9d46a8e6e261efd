//! The Raft core: a plain struct with synchronous, deterministic handlers.
//!
//! Every handler (`on_message`, `on_tick`) mutates the replica and returns an
//! [`Output`]: records to append (or a whole log to rewrite), whether they
//! must be synced before the messages go out, the messages, and events for
//! observers. The engine (the async shell in [`super::service`], or a test)
//! must persist, sync when asked, and only then send — and must finish one
//! output before calling the next handler. Crash recovery is [`Raft::recover`]
//! from whatever records survived.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::membership::{Boot, Change, ConfigStatus, Incarnation, Membership, PeerStatus, Refusal, GENESIS};
use super::state_machine::{Applied, Replicated, SnapshotError, StateMachine};
use super::types::{
    ClientId, Entry, Event, Index, Message, Outcome, Payload, Record, Reject, RequestId, Response, Term, Wire,
};
use super::{Config, LogBug, MAX_COMMAND_BYTES, MAX_INDEX, MAX_TERM_STEP};
use crate::effects::{Core, Effects};
use crate::env::codec::{self, CodecError};
use crate::env::NodeId;

/// The message type of a replica running `S`.
pub type WireOf<S> = Wire<<S as StateMachine>::Command, <S as StateMachine>::Query, <S as StateMachine>::Output>;

/// What a replica's handler asks its engine to do: the one effect type of
/// every core ([`Effects`]), carrying this replica's messages and events.
pub type Output<S> = Effects<WireOf<S>, Event>;

/// A replica's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts entries from the leader of its term; campaigns if none is
    /// heard from within an election timeout.
    Follower,
    /// Asking whether it could win the next term ([`Message::PreVote`]),
    /// still in its old one.
    PreCandidate,
    /// Asking for votes in a new term.
    Candidate,
    /// Won its term's election: the only replica that appends, commits and
    /// serves reads.
    Leader,
}

/// Recovery found records it cannot make sense of.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// A record's bytes are not a [`Record`].
    #[error("undecodable log record {position}: {error}")]
    Decode {
        /// Which record, counted from the first durable one.
        position: usize,
        /// What the decoder objected to.
        error: CodecError,
    },
    /// The records decode but contradict each other (an index gap, a term
    /// going backwards...).
    #[error("log record {position} breaks the log's structure: {reason}")]
    Structure {
        /// Which record, counted from the first durable one.
        position: usize,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A snapshot record the state machine refuses to restore.
    #[error("log record {position} holds a snapshot that cannot be restored: {error}")]
    Snapshot {
        /// Which record, counted from the first durable one.
        position: usize,
        /// Why the state machine refused it.
        error: SnapshotError,
    },
}

/// The in-memory log: a snapshot boundary plus the entries after it, and
/// the configurations they set.
#[derive(Debug, Clone)]
struct Log<C> {
    /// Index of the last entry covered by the snapshot (0: none).
    start: Index,
    start_term: Term,
    /// The configuration in effect at `start`.
    start_config: Membership,
    entries: Vec<Entry<C>>,
    /// The configuration entries among `entries`, in order: the last one is
    /// in effect, committed or not ([`super::membership`]).
    configs: Vec<(Index, Membership)>,
}

impl<C: Clone> Log<C> {
    /// An empty log whose snapshot boundary is `start`.
    fn starting_at(start: Index, start_term: Term, start_config: Membership) -> Self {
        Log {
            start,
            start_term,
            start_config,
            entries: Vec::new(),
            configs: Vec::new(),
        }
    }

    /// The configuration in effect: the last one in the log.
    fn config(&self) -> &Membership {
        self.configs.last().map_or(&self.start_config, |(_, m)| m)
    }

    /// Index of the entry that set [`Log::config`] (`start` if the
    /// snapshot did).
    fn config_index(&self) -> Index {
        self.configs.last().map_or(self.start, |(i, _)| *i)
    }

    /// The configuration in effect at `index` (at least `start`).
    fn config_at(&self, index: Index) -> &Membership {
        self.configs
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map_or(&self.start_config, |(_, m)| m)
    }

    fn last_index(&self) -> Index {
        self.start + self.entries.len() as Index
    }

    fn last_term(&self) -> Term {
        self.entries.last().map_or(self.start_term, |e| e.term)
    }

    /// The term of the entry at `index`, if this log still knows it.
    fn term_at(&self, index: Index) -> Option<Term> {
        if index == self.start {
            Some(self.start_term)
        } else if index < self.start || index > self.last_index() {
            None
        } else {
            Some(self.entries[(index - self.start - 1) as usize].term)
        }
    }

    fn entry(&self, index: Index) -> &Entry<C> {
        assert!(index > self.start && index <= self.last_index());
        let e = &self.entries[(index - self.start - 1) as usize];
        assert_eq!(e.index, index);
        e
    }

    fn push(&mut self, entry: Entry<C>) {
        assert_eq!(entry.index, self.last_index() + 1, "log must stay contiguous");
        assert!(entry.term >= self.last_term(), "terms in a log never decrease");
        if let Payload::Config(membership) = &entry.payload {
            self.configs.push((entry.index, membership.clone()));
        }
        self.entries.push(entry);
    }

    /// Drops entries at `index` and after (and the configurations they set).
    fn truncate_from(&mut self, index: Index) {
        assert!(index > self.start, "cannot truncate into the snapshot");
        self.entries.truncate((index - self.start - 1) as usize);
        self.configs.retain(|(i, _)| *i < index);
    }

    /// Forgets entries up to and including `index`, which becomes the
    /// snapshot boundary, with `config` in effect there.
    fn compact_to(&mut self, index: Index, term: Term, config: Membership) {
        assert!(index >= self.start);
        if index <= self.last_index() {
            assert_eq!(self.term_at(index), Some(term));
            self.entries.drain(..(index - self.start) as usize);
        } else {
            self.entries.clear();
        }
        self.configs.retain(|(i, _)| *i > index);
        self.start = index;
        self.start_term = term;
        self.start_config = config;
    }

    fn slice(&self, from: Index, max: usize) -> Vec<Entry<C>> {
        assert!(from > self.start);
        let lo = (from - self.start - 1) as usize;
        let hi = (lo + max).min(self.entries.len());
        self.entries.get(lo..hi).map(<[_]>::to_vec).unwrap_or_default()
    }
}

/// The leader's view of one follower.
#[derive(Debug, Clone)]
struct Progress {
    next: Index,
    matched: Index,
    /// Probing (after a rejection or at election): send one entry at a time
    /// until the follower's log position is found, then whole batches.
    probing: bool,
    /// Highest confirmation round this follower acknowledged in our term.
    acked_seq: u64,
    /// When it last answered this leader (check-quorum).
    heard_at: Duration,
    /// The incarnation its last answer came from: its answers count in
    /// quorums only if the configuration names this one.
    incarnation: Option<Incarnation>,
    /// The snapshot being sent to it (by its last index) and how many of
    /// its bytes it acknowledged: where the next chunk starts.
    snapshot_sent: (Index, u64),
}

impl Progress {
    /// A member this leader has not heard from yet, sent entries from `next`.
    fn new(next: Index, now: Duration) -> Self {
        Progress {
            next,
            matched: 0,
            probing: true,
            acked_seq: 0,
            // A new leader (or member) gets a full timeout to answer.
            heard_at: now,
            incarnation: None,
            snapshot_sent: (0, 0),
        }
    }
}

/// A snapshot arriving in chunks from one leader, until its last byte.
struct Incoming {
    term: Term,
    leader: NodeId,
    last_index: Index,
    last_term: Term,
    total: u64,
    bytes: Vec<u8>,
}

impl Incoming {
    /// Whether a chunk with these headers belongs to this snapshot.
    fn matches(&self, term: Term, leader: NodeId, (last_index, last_term, total): (Index, Term, u64)) -> bool {
        (self.term, self.leader, self.last_index, self.last_term, self.total)
            == (term, leader, last_index, last_term, total)
    }
}

/// One `InstallSnapshot` chunk as a follower handles it: where it goes,
/// and, when it is the last, the whole snapshot decoded.
struct Chunk<S: StateMachine> {
    offset: u64,
    total: u64,
    data: Vec<u8>,
    complete: Option<(Vec<u8>, Replicated<S>)>,
}

/// An operator waiting for a configuration change to commit.
#[derive(Debug, Clone)]
struct PendingChange {
    /// The entry that makes the change.
    index: Index,
    from: NodeId,
    client: ClientId,
    id: u64,
}

/// A linearizable read waiting at the leader.
#[derive(Debug, Clone)]
struct PendingRead<Q> {
    from: NodeId,
    client: ClientId,
    id: u64,
    query: Q,
    /// Confirmation round that must reach a majority after the read arrived.
    seq: u64,
    /// The state must include everything up to here before the query runs.
    read_index: Index,
}

#[derive(Debug, Clone)]
struct LeaderState<Q> {
    progress: BTreeMap<NodeId, Progress>,
    heartbeat_due: Duration,
    /// Current confirmation round, incremented on every broadcast.
    read_seq: u64,
    reads: VecDeque<PendingRead<Q>>,
    /// Index of this term's no-op entry.
    term_start: Index,
    /// Configuration changes to answer once they commit.
    changes: Vec<PendingChange>,
    /// A leadership transfer under way: no commands are taken meanwhile.
    transfer: Option<Transfer>,
}

/// A leader handing its leadership to `to` ([`Change::TransferLeadership`]).
#[derive(Debug, Clone)]
struct Transfer {
    to: NodeId,
    /// When the leader gives up and leads on.
    until: Duration,
    /// The operator to answer once `to` was told to campaign (`None` once
    /// answered).
    asker: Option<PendingChange>,
}

/// A Raft replica.
pub struct Raft<S: StateMachine> {
    id: NodeId,
    /// The nodes this replica takes replica traffic from besides the
    /// members its log names: the group as its operator described it.
    known: BTreeSet<NodeId>,
    config: Config,
    /// Which life of this node's disk this replica is.
    incarnation: Incarnation,
    /// The configuration before the log's first entry (durable in the
    /// identity record).
    genesis: Membership,
    rng: ChaCha8Rng,

    // Durable state.
    term: Term,
    voted_for: Option<NodeId>,
    log: Log<S::Command>,
    /// The encoded state at `log.start` (empty when `log.start == 0`).
    snapshot: Vec<u8>,
    /// Applied index at which the state last proved too large to snapshot
    /// (volatile: a restarted replica tries again).
    compaction_refused_at: Index,
    /// A leader's snapshot received in part (volatile: a restarted replica
    /// asks for it from the start).
    incoming: Option<Incoming>,

    // Volatile state.
    role: Role,
    leader: Option<NodeId>,
    /// Votes, or pre-votes while a pre-candidate, received in this round.
    /// (Each with the incarnation it came from.)
    votes: BTreeMap<NodeId, Incarnation>,
    /// When an `Append` or snapshot last came from this term's leader: a
    /// replica refuses pre-votes while its leader is alive.
    leader_heard_at: Option<Duration>,
    lead: Option<LeaderState<S::Query>>,
    commit: Index,
    applied: Index,
    machine: Replicated<S>,
    election_due: Duration,
    /// Candidates re-ask silent peers for votes at this time (a lost
    /// RequestVote would otherwise cost a whole election timeout).
    vote_resend_due: Duration,
    reported_leader_term: Term,
    rewrite_pending: bool,
    /// New commands or reads want an `Append` round; `finish` sends one for
    /// the whole batch.
    replicate_pending: bool,
    out: Output<S>,
}

impl<S: StateMachine> Raft<S> {
    /// Rebuilds a replica from the records its storage kept. With none, it
    /// starts as `boot` says: a founding member, or a new incarnation
    /// joining a running group. `members` are the nodes it takes replica
    /// traffic from besides those its log names: the cluster as its
    /// operator describes it.
    #[allow(clippy::too_many_arguments)]
    pub fn recover(
        id: NodeId,
        members: &[NodeId],
        boot: Boot,
        config: Config,
        rng: ChaCha8Rng,
        records: &[Vec<u8>],
        now: Duration,
    ) -> Result<Self, RecoverError> {
        let known: BTreeSet<NodeId> = members.iter().copied().collect();
        assert!(
            known.len() <= super::MAX_MEMBERS,
            "at most {} members",
            super::MAX_MEMBERS
        );
        config.validate();
        let mut raft = Raft {
            id,
            known,
            machine: Replicated::new(config.max_sessions),
            config,
            incarnation: GENESIS,
            genesis: Membership::default(),
            rng,
            term: 0,
            voted_for: None,
            log: Log::starting_at(0, 0, Membership::default()),
            snapshot: Vec::new(),
            compaction_refused_at: 0,
            incoming: None,
            role: Role::Follower,
            leader: None,
            votes: BTreeMap::new(),
            leader_heard_at: None,
            lead: None,
            commit: 0,
            applied: 0,
            election_due: now,
            vote_resend_due: now,
            reported_leader_term: 0,
            rewrite_pending: false,
            replicate_pending: false,
            out: Effects::default(),
        };
        if records.is_empty() {
            raft.initialize(boot);
        }
        // A snapshot whose parts are still being read: its header and the
        // bytes so far.
        let mut partial: Option<(Index, Term, Membership, u64, Vec<u8>)> = None;
        for (position, bytes) in records.iter().enumerate() {
            let record: Record<S::Command> =
                codec::decode_state(bytes).map_err(|error| RecoverError::Decode { position, error })?;
            let bad = |reason| RecoverError::Structure { position, reason };
            if (position == 0) != matches!(record, Record::Identity { .. }) {
                return Err(bad("the identity record is not the log's first"));
            }
            if partial.is_some() != matches!(record, Record::SnapshotPart(_)) {
                return Err(bad(if partial.is_some() {
                    "a snapshot's parts end before its size"
                } else {
                    "a snapshot part without its snapshot"
                }));
            }
            match record {
                Record::Identity { incarnation, genesis } => {
                    if genesis.voters.len() + genesis.learners.len() > super::MAX_MEMBERS {
                        return Err(bad("a configuration larger than any group"));
                    }
                    raft.incarnation = incarnation;
                    raft.log.start_config = genesis.clone();
                    raft.genesis = genesis;
                }
                Record::HardState { term, voted_for } => {
                    if term < raft.term {
                        return Err(bad("term went backwards"));
                    }
                    if term == Term::MAX && !raft.bug(LogBug::UncheckedTerm) {
                        return Err(bad("a term that cannot be incremented"));
                    }
                    raft.term = term;
                    raft.voted_for = voted_for;
                }
                Record::Entry(entry) => {
                    if entry.index > MAX_INDEX {
                        return Err(bad("entry index beyond the largest"));
                    }
                    if entry.index <= raft.log.start || entry.index > raft.log.last_index() + 1 {
                        return Err(bad("entry outside the log"));
                    }
                    if entry.index <= raft.log.last_index() {
                        raft.log.truncate_from(entry.index);
                    }
                    if entry.term < raft.log.last_term() {
                        return Err(bad("entry term below its predecessor's"));
                    }
                    raft.log.push(entry);
                }
                Record::Snapshot {
                    last_index,
                    last_term,
                    membership,
                    size,
                } => {
                    if last_index > MAX_INDEX {
                        return Err(bad("snapshot index beyond the largest"));
                    }
                    if size > raft.config.max_snapshot_bytes as u64 {
                        return Err(bad("a snapshot larger than max_snapshot_bytes"));
                    }
                    partial = Some((last_index, last_term, membership, size, Vec::new()));
                }
                Record::SnapshotPart(part) => {
                    let (.., size, data) = partial.as_mut().expect("checked above");
                    data.extend_from_slice(&part);
                    if data.len() as u64 > *size {
                        return Err(bad("a snapshot's parts exceed its size"));
                    }
                }
            }
            if let Some((last_index, last_term, membership, _, data)) =
                partial.take_if(|(.., size, data)| data.len() as u64 == *size)
            {
                raft.machine = Replicated::restored(raft.config.max_sessions, &data)
                    .map_err(|error| RecoverError::Snapshot { position, error })?;
                raft.log = Log::starting_at(last_index, last_term, membership);
                raft.snapshot = data;
                raft.commit = last_index;
                raft.applied = last_index;
            }
        }
        if partial.is_some() {
            return Err(RecoverError::Structure {
                position: records.len(),
                reason: "a snapshot's parts end before its size",
            });
        }
        if raft.log.last_term() > raft.term {
            return Err(RecoverError::Structure {
                position: records.len(),
                reason: "an entry's term exceeds the durable term",
            });
        }
        raft.reset_election_timer(now);
        raft.check();
        Ok(raft)
    }

    /// Gives an empty disk its identity record, first in the first output.
    fn initialize(&mut self, boot: Boot) {
        match boot {
            Boot::Genesis(founders) => {
                assert!(founders.contains(&self.id), "a founding replica must be a founder");
                assert!(
                    founders.len() <= super::MAX_MEMBERS,
                    "at most {} members",
                    super::MAX_MEMBERS
                );
                self.genesis = Membership::genesis(&founders);
            }
            Boot::Join if self.bug(LogBug::RejoinKeepsIdentity) => {
                // PLANTED BUG: a fresh disk takes the founding identity back.
            }
            Boot::Join => self.incarnation = self.rng.gen_range(1..=Incarnation::MAX),
        }
        self.log.start_config = self.genesis.clone();
        let record: Record<S::Command> = Record::Identity {
            incarnation: self.incarnation,
            genesis: self.genesis.clone(),
        };
        self.out.append.push(codec::encode(&record).expect("small"));
        self.out.sync = true;
    }

    // ----- accessors ------------------------------------------------------

    /// This replica's member id, as the group's member list names it.
    pub fn id(&self) -> NodeId {
        self.id
    }
    /// Whether it follows, campaigns or leads right now.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The current (durable) term: the highest it has seen, carried by
    /// every vote and append it sends.
    pub fn term(&self) -> Term {
        self.term
    }
    /// The leader this replica believes in, if any (itself when leader).
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    /// Highest index this replica knows committed: entries up to it are
    /// never overwritten and may be applied.
    pub fn commit_index(&self) -> Index {
        self.commit
    }
    /// Highest index applied to the state machine; it trails
    /// [`Raft::commit_index`] while the replica catches up.
    pub fn applied_index(&self) -> Index {
        self.applied
    }
    /// Index of the last entry it stores, committed or not.
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }
    /// The log index of the entry that set the configuration in effect
    /// (0: the founding one); what a change request names as its base.
    pub fn config_index(&self) -> Index {
        self.log.config_index()
    }
    /// Index covered by the latest snapshot.
    pub fn snapshot_index(&self) -> Index {
        self.log.start
    }
    /// The encoded size of this replica's snapshot (0 without one).
    pub fn snapshot_bytes(&self) -> usize {
        self.snapshot.len()
    }
    /// The service's state as of [`Raft::applied_index`], for checkers
    /// comparing replicas.
    pub fn state_machine(&self) -> &S {
        self.machine.machine()
    }
    /// The term of the entry at `index`, if the log (or its snapshot
    /// boundary) still holds it.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.log.term_at(index)
    }
    /// The entry at `index`, if it is in the log (not compacted).
    pub fn entry(&self, index: Index) -> Option<&Entry<S::Command>> {
        (index > self.log.start && index <= self.log.last_index()).then(|| self.log.entry(index))
    }
    /// The configuration in effect here: the last one in this replica's
    /// log, committed or not.
    pub fn membership(&self) -> &Membership {
        self.log.config()
    }
    /// Which life of its node's disk this replica is.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }
    /// When [`Raft::on_tick`] next has something to do.
    pub fn next_deadline(&self) -> Duration {
        match &self.lead {
            Some(lead) => lead.heartbeat_due,
            None if self.role != Role::Follower => self.election_due.min(self.vote_resend_due),
            None => self.election_due,
        }
    }

    // ----- handlers -------------------------------------------------------

    /// Timers: election timeout (followers, candidates) or heartbeat
    /// (leader). Call when `now >= next_deadline()`; earlier is harmless.
    pub fn on_tick(&mut self, now: Duration) -> Output<S> {
        match self.role {
            Role::Leader => {
                self.expire_transfer(now);
                let due = self.lead.as_ref().expect("leader state").heartbeat_due;
                if now >= due {
                    if self.lost_quorum(now) {
                        tracing::info!(
                            node = self.id,
                            term = self.term,
                            "no majority heard from: stepping down"
                        );
                        self.become_follower(self.term, None);
                        self.reset_election_timer(now);
                        return self.finish();
                    }
                    self.broadcast_append();
                    self.lead_mut().heartbeat_due = now + self.config.heartbeat_interval;
                }
            }
            Role::Follower | Role::PreCandidate | Role::Candidate => {
                if now >= self.election_due && !self.may_campaign() {
                    // A learner, a removed member or a new incarnation:
                    // nobody would count its votes.
                    tracing::debug!(
                        node = self.id,
                        term = self.term,
                        last = self.log.last_index(),
                        commit = self.commit,
                        membership = ?self.log.config(),
                        "not campaigning: no configuration in its log counts it"
                    );
                    self.role = Role::Follower;
                    self.reset_election_timer(now);
                } else if now >= self.election_due {
                    if self.config.pre_vote {
                        self.start_pre_vote(now);
                    } else {
                        self.start_election(now);
                    }
                } else if self.role != Role::Follower && now >= self.vote_resend_due {
                    self.request_votes(now);
                }
            }
        }
        self.finish()
    }

    /// A message from a replica or a client.
    pub fn on_message(&mut self, now: Duration, from: NodeId, msg: WireOf<S>) -> Output<S> {
        self.on_messages(now, [(from, msg)])
    }

    /// Several messages that arrived together, handled as one: their
    /// records share one sync, and the commands among them leave in one
    /// `Append` per follower.
    pub fn on_messages(&mut self, now: Duration, msgs: impl IntoIterator<Item = (NodeId, WireOf<S>)>) -> Output<S> {
        for (from, msg) in msgs {
            match msg {
                Wire::Raft(m) => {
                    if self.knows(from) && from != self.id {
                        self.on_raft(now, from, m);
                    }
                }
                Wire::Command { client, seq, command } => self.on_command(from, client, seq, command),
                Wire::Read { client, id, query } => self.on_read(from, client, id, query),
                Wire::Reconfigure {
                    client,
                    id,
                    change,
                    base,
                } => self.on_reconfigure(now, from, (client, id), change, base),
                Wire::Response(_) => {} // replicas ask nothing of anyone
            }
        }
        self.finish()
    }

    fn on_raft(&mut self, now: Duration, from: NodeId, msg: Message<S::Command>) {
        let term = msg.term();
        if let Err(reason) = self.admit(&msg) {
            self.refuse(from, term, reason);
            return;
        }
        // A snapshot this replica would install (its last chunk) must
        // decode before the message changes anything, its term included.
        let snapshot = match &msg {
            Message::InstallSnapshot {
                last_index,
                last_term,
                offset,
                total,
                data,
                ..
            } if term >= self.term && *last_index > self.commit => {
                let held = self
                    .incoming
                    .as_ref()
                    .filter(|i| i.matches(term, from, (*last_index, *last_term, *total)))
                    .map_or(0, |i| i.bytes.len() as u64);
                if *offset == held && held + data.len() as u64 == *total {
                    let mut bytes = match self.incoming.take() {
                        Some(incoming) if held > 0 => incoming.bytes,
                        _ => Vec::new(),
                    };
                    bytes.extend_from_slice(data);
                    match Replicated::restored(self.config.max_sessions, &bytes) {
                        Ok(machine) => Some((bytes, machine)),
                        Err(error) => {
                            tracing::warn!(node = self.id, from, term, %error, "refusing a snapshot");
                            return;
                        }
                    }
                } else {
                    None
                }
            }
            _ => None,
        };
        // A pre-vote or a granted reply speaks of a term nobody is in yet.
        let future_term = matches!(
            msg,
            Message::PreVote { .. } | Message::PreVoteReply { granted: true, .. }
        );
        if term > self.term && !future_term {
            if self.role == Role::Leader && self.bug(LogBug::NoStepDownOnHigherTerm) {
                // PLANTED BUG: adopt the term but keep leading in it.
                self.term = term;
                self.voted_for = None;
                self.persist_hard_state();
            } else {
                self.become_follower(term, None);
            }
        }
        match msg {
            Message::RequestVote {
                term,
                last_index,
                last_term,
            } => self.on_request_vote(now, from, term, last_index, last_term),
            Message::PreVote {
                term,
                last_index,
                last_term,
            } => self.on_pre_vote(now, from, term, last_index, last_term),
            Message::PreVoteReply {
                term,
                granted,
                incarnation,
            } => self.on_pre_vote_reply(now, from, term, granted, incarnation),
            Message::Vote {
                term,
                granted,
                incarnation,
            } => self.on_vote(now, from, term, granted, incarnation),
            Message::Append {
                term,
                prev_index,
                prev_term,
                entries,
                commit,
                read_seq,
            } => self.on_append(now, from, term, prev_index, prev_term, entries, commit, read_seq),
            Message::AppendReply {
                term,
                success,
                index,
                read_seq,
                incarnation,
            } => self.on_append_reply(now, from, (term, incarnation), success, index, read_seq),
            Message::InstallSnapshot {
                term,
                last_index,
                last_term,
                membership,
                offset,
                total,
                data,
                read_seq,
            } => self.on_install_snapshot(
                now,
                from,
                term,
                (last_index, last_term, membership),
                Chunk {
                    offset,
                    total,
                    data,
                    complete: snapshot,
                },
                read_seq,
            ),
            Message::TimeoutNow { term } => self.on_timeout_now(now, from, term),
            Message::SnapshotReply {
                term,
                last_index,
                received,
                read_seq,
                incarnation,
            } => {
                if term == self.term && self.role == Role::Leader {
                    if let Err(reason) = self.admit_ack(last_index, read_seq) {
                        self.refuse(from, term, reason);
                        return;
                    }
                    let snapshot_index = self.log.start;
                    let Some(p) = self.answered(from, incarnation, now) else {
                        return;
                    };
                    let mut advanced = last_index > p.matched || p.probing;
                    p.matched = p.matched.max(last_index);
                    p.next = p.next.max(last_index + 1);
                    p.probing = false;
                    p.acked_seq = p.acked_seq.max(read_seq);
                    // Part of the snapshot in place: the next chunk follows
                    // at once (the current one again at the next heartbeat).
                    if received.0 == snapshot_index && p.next <= snapshot_index && received != p.snapshot_sent {
                        p.snapshot_sent = received;
                        advanced = true;
                    }
                    self.advance_commit();
                    self.serve_reads();
                    if advanced && self.role == Role::Leader {
                        self.send_append(from);
                    }
                }
            }
        }
    }

    /// Checks what a message claims against what any honest member could
    /// send, before it changes anything; a message that fails is refused
    /// (dropped and logged). The term rule: a term is adopted only if it can
    /// still be incremented (below `Term::MAX`) and lies at most
    /// [`MAX_TERM_STEP`] above this replica's own.
    fn admit(&self, msg: &Message<S::Command>) -> Result<(), &'static str> {
        let term = msg.term();
        if !self.bug(LogBug::UncheckedTerm) {
            // (The planted bug adopts any term, as the code once did.)
            if term == Term::MAX {
                return Err("its term cannot be incremented");
            }
            if term > self.term.saturating_add(MAX_TERM_STEP) {
                return Err("its term jumps too far ahead");
            }
        }
        match msg {
            Message::RequestVote {
                last_index, last_term, ..
            }
            | Message::PreVote {
                last_index, last_term, ..
            } => {
                if *last_term > term {
                    return Err("the candidate's log ends in a term above its own");
                }
                if *last_index > MAX_INDEX {
                    return Err("an index beyond the largest");
                }
            }
            Message::Vote { .. } | Message::PreVoteReply { .. } | Message::TimeoutNow { .. } => {}
            Message::Append {
                prev_index,
                prev_term,
                entries,
                ..
            } => {
                if *prev_term > term {
                    return Err("the entry before the batch is from a term above the sender's");
                }
                if *prev_index == 0 && *prev_term != 0 {
                    return Err("nothing precedes index 1");
                }
                if *prev_index > MAX_INDEX - entries.len() as Index {
                    return Err("an index beyond the largest");
                }
                let mut previous = *prev_term;
                for (i, e) in entries.iter().enumerate() {
                    if e.index != prev_index + 1 + i as Index {
                        return Err("entries do not follow each other");
                    }
                    if e.term < previous || e.term > term {
                        return Err("entry terms decrease or exceed the sender's term");
                    }
                    previous = e.term;
                    match &e.payload {
                        Payload::Command { command, .. } => {
                            if codec::encode(command).map_or(true, |b| b.len() > MAX_COMMAND_BYTES) {
                                return Err("an entry's command is larger than any replica accepts");
                            }
                        }
                        Payload::Config(m) => {
                            if m.voters.len() + m.learners.len() > super::MAX_MEMBERS {
                                return Err("a configuration larger than any group");
                            }
                        }
                        Payload::Noop => {}
                    }
                }
            }
            Message::AppendReply { index, .. } => {
                if *index > MAX_INDEX {
                    return Err("an index beyond the largest");
                }
            }
            Message::InstallSnapshot {
                last_index,
                last_term,
                membership,
                offset,
                total,
                data,
                ..
            } => {
                if membership.voters.len() + membership.learners.len() > super::MAX_MEMBERS {
                    return Err("a configuration larger than any group");
                }
                if *last_term > term {
                    return Err("the snapshot ends in a term above the sender's");
                }
                if *last_index > MAX_INDEX {
                    return Err("an index beyond the largest");
                }
                if *total > self.config.max_snapshot_bytes as u64 {
                    return Err("a snapshot larger than this replica takes");
                }
                if offset.checked_add(data.len() as u64).is_none_or(|end| end > *total) {
                    return Err("a snapshot chunk past the snapshot's end");
                }
            }
            Message::SnapshotReply { last_index, .. } => {
                if *last_index > MAX_INDEX {
                    return Err("an index beyond the largest");
                }
            }
        }
        Ok(())
    }

    /// A follower's acknowledgement, as this leader of its term sees it: it
    /// cannot match beyond the leader's log nor echo a confirmation round
    /// not yet sent.
    fn admit_ack(&self, matched: Index, read_seq: u64) -> Result<(), &'static str> {
        if matched > self.log.last_index() {
            return Err("the follower claims to match beyond the leader's log");
        }
        if read_seq > self.lead.as_ref().map_or(0, |l| l.read_seq) {
            return Err("the follower acknowledges a round never sent");
        }
        Ok(())
    }

    fn refuse(&self, from: NodeId, term: Term, reason: &'static str) {
        tracing::warn!(node = self.id, from, term, reason, "refusing a message");
    }

    fn on_request_vote(&mut self, now: Duration, from: NodeId, term: Term, last_index: Index, last_term: Term) {
        let up_to_date = self.up_to_date(last_index, last_term);
        let granted = term == self.term
            && matches!(self.role, Role::Follower | Role::PreCandidate)
            && (self.voted_for.is_none() || self.voted_for == Some(from))
            && up_to_date;
        if granted {
            self.voted_for = Some(from);
            self.persist_hard_state();
            self.reset_election_timer(now);
            self.out.events.push(Event::Voted {
                term: self.term,
                candidate: from,
            });
        }
        self.send(
            from,
            Message::Vote {
                term: self.term,
                granted,
                incarnation: self.incarnation,
            },
        );
        if self.bug(LogBug::VoteNotSynced) {
            // PLANTED BUG: the vote (and term) go out before they are durable.
            self.out.sync = false;
        }
    }

    fn on_vote(&mut self, now: Duration, from: NodeId, term: Term, granted: bool, incarnation: Incarnation) {
        if term != self.term || self.role != Role::Candidate || !granted || !self.counts_vote(from, incarnation) {
            return;
        }
        self.votes.insert(from, incarnation);
        if self.votes.len() >= self.quorum() {
            self.become_leader(now);
        }
    }

    /// Whether a candidate whose log ends at `last_index` of `last_term` is
    /// at least as up to date as this replica's (§5.4.1): the later last
    /// term wins, then the longer log. One rule for votes and pre-votes.
    fn up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        (last_term, last_index) >= (self.log.last_term(), self.log.last_index())
    }

    /// Would this replica vote for `from` in `term`? Changes nothing here:
    /// neither the term, nor the vote, nor the election timer.
    fn on_pre_vote(&mut self, now: Duration, from: NodeId, term: Term, last_index: Index, last_term: Term) {
        let up_to_date = self.up_to_date(last_index, last_term);
        let leader_alive = self.role == Role::Leader
            || self
                .leader_heard_at
                .is_some_and(|at| now < at + self.config.election_timeout_min);
        let granted = term > self.term && up_to_date && !leader_alive;
        let term = if granted { term } else { self.term };
        let incarnation = self.incarnation;
        self.send(
            from,
            Message::PreVoteReply {
                term,
                granted,
                incarnation,
            },
        );
    }

    fn on_pre_vote_reply(&mut self, now: Duration, from: NodeId, term: Term, granted: bool, incarnation: Incarnation) {
        if self.role != Role::PreCandidate
            || Some(term) != self.next_term()
            || !granted
            || !self.counts_vote(from, incarnation)
        {
            return;
        }
        self.votes.insert(from, incarnation);
        if self.votes.len() >= self.quorum() {
            if self.bug(LogBug::PreVoteCountsAsVote) {
                // PLANTED BUG: the pre-votes stand in for the election.
                self.term = term;
                self.role = Role::Candidate;
                self.voted_for = Some(self.id);
                self.persist_hard_state();
                self.become_leader(now);
                return;
            }
            self.start_election(now);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_append(
        &mut self,
        now: Duration,
        from: NodeId,
        term: Term,
        prev_index: Index,
        prev_term: Term,
        mut entries: Vec<Entry<S::Command>>,
        leader_commit: Index,
        read_seq: u64,
    ) {
        if term < self.term {
            self.reply_append(from, false, 0, read_seq);
            return;
        }
        if self.role == Role::Leader {
            // Only one leader per term: the sender is not an honest one.
            self.refuse(from, term, "an append from another leader of this replica's term");
            return;
        }
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(term, Some(from));
        }
        self.reset_election_timer(now);
        self.leader_heard_at = Some(now);
        if self.bug(LogBug::RefuseEntries)
            && !entries.is_empty()
            && self.log.config().voters.keys().last() == Some(&self.id)
        {
            // PLANTED BUG: heartbeats are taken, entries never are.
            self.reply_append(from, false, self.log.last_index(), read_seq);
            return;
        }

        // Entries at or below our snapshot are committed, hence identical.
        let mut prev_index = prev_index;
        let mut prev_term = prev_term;
        if prev_index < self.log.start {
            let skip = ((self.log.start - prev_index) as usize).min(entries.len());
            entries.drain(..skip);
            prev_index += skip as Index;
            if prev_index < self.log.start {
                // Everything sent is already in our snapshot.
                self.reply_append(from, true, prev_index, read_seq);
                return;
            }
            prev_term = self.log.start_term;
            if entries.first().is_some_and(|e| e.term < prev_term) {
                self.refuse(from, term, "entries from terms before the snapshot that covers them");
                return;
            }
        }

        if self.log.term_at(prev_index) != Some(prev_term) {
            let hint = if prev_index > self.log.last_index() {
                self.log.last_index()
            } else {
                // Skip the whole conflicting term at once.
                let bad = self.log.term_at(prev_index);
                let mut i = prev_index.saturating_sub(1);
                while i > self.log.start && self.log.term_at(i) == bad {
                    i -= 1;
                }
                i
            };
            self.reply_append(from, false, hint, read_seq);
            return;
        }

        let match_index = prev_index + entries.len() as Index;
        let conflict = entries
            .iter()
            .find(|e| self.log.term_at(e.index).is_some_and(|t| t != e.term));
        if let Some(e) = conflict.filter(|e| e.index <= self.commit) {
            // Committed entries never change: the sender contradicts them.
            tracing::warn!(
                node = self.id,
                from,
                term,
                index = e.index,
                commit = self.commit,
                "refusing an append that would truncate committed entry"
            );
            self.out.events.push(Event::Contradicted { from, index: e.index });
            return;
        }
        for entry in entries {
            match self.log.term_at(entry.index) {
                Some(t) if t == entry.term => {} // already have it
                Some(_) => {
                    self.log.truncate_from(entry.index);
                    self.append_entry(entry);
                }
                None => self.append_entry(entry),
            }
        }
        let new_commit = leader_commit.min(match_index);
        if new_commit > self.commit {
            self.commit = new_commit;
            self.apply_committed();
        }
        self.reply_append(from, true, match_index, read_seq);
        if self.bug(LogBug::AckBeforeSync) {
            // PLANTED BUG: acknowledge entries that are not yet durable.
            self.out.sync = false;
        }
    }

    fn reply_append(&mut self, to: NodeId, success: bool, index: Index, read_seq: u64) {
        self.send(
            to,
            Message::AppendReply {
                term: self.term,
                success,
                index,
                read_seq,
                incarnation: self.incarnation,
            },
        );
    }

    fn on_append_reply(
        &mut self,
        now: Duration,
        from: NodeId,
        (term, incarnation): (Term, Incarnation),
        success: bool,
        index: Index,
        read_seq: u64,
    ) {
        if term != self.term || self.role != Role::Leader {
            return;
        }
        let last = self.log.last_index();
        if let Err(reason) = self.admit_ack(if success { index } else { 0 }, read_seq) {
            self.refuse(from, term, reason);
            return;
        }
        let Some(p) = self.answered(from, incarnation, now) else {
            return;
        };
        p.acked_seq = p.acked_seq.max(read_seq);
        // Only a reply that taught us something triggers the next send:
        // duplicated or stale replies must not start parallel send chains.
        if success {
            let advanced = index > p.matched || p.probing;
            p.matched = p.matched.max(index);
            p.next = p.next.max(index + 1);
            p.probing = false;
            let more = advanced && p.next <= last;
            self.advance_commit();
            self.serve_reads();
            if more && self.role == Role::Leader {
                self.send_append(from);
            }
            self.continue_transfer(from);
        } else {
            // A stale rejection must not move `next` below what matched.
            let next = index.saturating_add(1).min(p.next).max(p.matched + 1);
            let moved = next < p.next || !p.probing;
            p.next = next;
            p.probing = true;
            self.serve_reads();
            if moved {
                self.send_append(from);
            }
        }
    }

    fn on_install_snapshot(
        &mut self,
        now: Duration,
        from: NodeId,
        term: Term,
        (last_index, last_term, membership): (Index, Term, Membership),
        chunk: Chunk<S>,
        read_seq: u64,
    ) {
        if term < self.term {
            self.send(
                from,
                Message::SnapshotReply {
                    term: self.term,
                    last_index: 0,
                    received: (last_index, 0),
                    read_seq,
                    incarnation: self.incarnation,
                },
            );
            return;
        }
        if self.role == Role::Leader {
            self.refuse(from, term, "a snapshot from another leader of this replica's term");
            return;
        }
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(term, Some(from));
        }
        self.reset_election_timer(now);
        self.leader_heard_at = Some(now);
        let header = (last_index, last_term, chunk.total);
        let matched = match chunk.complete {
            // Decoded before anything changed, exactly when it is installed.
            Some((bytes, machine)) if last_index > self.commit => {
                if self.log.term_at(last_index) == Some(last_term) {
                    // We have the entries: keep the suffix after the snapshot.
                    self.log.compact_to(last_index, last_term, membership);
                } else {
                    self.log = Log::starting_at(last_index, last_term, membership);
                }
                self.machine = machine;
                self.snapshot = bytes;
                self.commit = last_index;
                self.applied = last_index;
                self.rewrite_pending = true;
                self.out.events.push(Event::Restored {
                    index: last_index,
                    term: last_term,
                });
                last_index
            }
            // Committed entries are the same everywhere, so up to
            // `last_index` this log matches the leader's already.
            _ if last_index <= self.commit => last_index,
            // A part: kept if it continues what arrived, or starts anew.
            _ => {
                let continues = self.incoming.as_ref().is_some_and(|i| i.matches(term, from, header));
                if !continues && chunk.offset == 0 {
                    self.incoming = Some(Incoming {
                        term,
                        leader: from,
                        last_index,
                        last_term,
                        total: chunk.total,
                        bytes: Vec::new(),
                    });
                }
                if let Some(incoming) = self.incoming.as_mut().filter(|i| i.matches(term, from, header)) {
                    if incoming.bytes.len() as u64 == chunk.offset {
                        incoming.bytes.extend_from_slice(&chunk.data);
                    }
                }
                0
            }
        };
        let received = match &self.incoming {
            _ if matched > 0 => chunk.total,
            Some(incoming) if incoming.matches(term, from, header) => incoming.bytes.len() as u64,
            _ => 0,
        };
        self.send(
            from,
            Message::SnapshotReply {
                term: self.term,
                last_index: matched,
                received: (last_index, received),
                read_seq,
                incarnation: self.incarnation,
            },
        );
    }

    // ----- leadership transfer ------------------------------------------------

    /// Begins handing leadership to `to` for the operator `asker`: refused
    /// unless `to` is another voter; while under way, commands go to `to`.
    fn start_transfer(&mut self, now: Duration, to: NodeId, asker: PendingChange) {
        let rid = RequestId::Reconfigure(asker.id);
        if to == self.id {
            let status = self.config_status();
            self.respond(asker.from, asker.client, rid, Outcome::Configured(status));
            return;
        }
        if !self.log.config().voters.contains_key(&to) {
            let refusal = Outcome::Rejected(Reject::Reconfiguration(Refusal::NotApplicable));
            self.respond(asker.from, asker.client, rid, refusal);
            return;
        }
        tracing::info!(node = self.id, term = self.term, to, "handing leadership over");
        let until = now + self.config.election_timeout_max;
        self.lead_mut().transfer = Some(Transfer {
            to,
            until,
            asker: Some(asker),
        });
        if !self.continue_transfer(to) {
            self.send_append(to);
        }
    }

    /// Once `peer`, the transfer's target, has every entry of this log:
    /// tells it to campaign and answers the operator. Whether it did.
    fn continue_transfer(&mut self, peer: NodeId) -> bool {
        let last = self.log.last_index();
        let Some(lead) = self.lead.as_mut() else {
            return false;
        };
        let Some(transfer) = lead.transfer.as_mut().filter(|t| t.to == peer && t.asker.is_some()) else {
            return false;
        };
        if lead.progress.get(&peer).is_none_or(|p| p.matched < last) {
            return false;
        }
        let asker = transfer.asker.take().expect("filtered on it");
        self.send(peer, Message::TimeoutNow { term: self.term });
        let status = self.config_status();
        self.respond(
            asker.from,
            asker.client,
            RequestId::Reconfigure(asker.id),
            Outcome::Configured(status),
        );
        true
    }

    /// A transfer that has not handed over within an election timeout is
    /// given up: this replica leads on and takes commands again.
    fn expire_transfer(&mut self, now: Duration) {
        let Some(lead) = self.lead.as_mut() else {
            return;
        };
        let Some(transfer) = lead.transfer.take_if(|t| now >= t.until) else {
            return;
        };
        if let Some(asker) = transfer.asker {
            let refusal = Outcome::Rejected(Reject::Reconfiguration(Refusal::TargetBehind));
            self.respond(asker.from, asker.client, RequestId::Reconfigure(asker.id), refusal);
        }
    }

    /// The leader hands its leadership over: campaign at once, skipping the
    /// pre-vote (the group's leader itself asks, so no leader is disrupted).
    /// Only from this replica's leader of its own term.
    fn on_timeout_now(&mut self, now: Duration, from: NodeId, term: Term) {
        if term != self.term || self.leader != Some(from) || self.role != Role::Follower {
            tracing::warn!(
                node = self.id,
                from,
                term,
                "ignoring a handover from no leader of this term"
            );
            return;
        }
        if !self.may_campaign() {
            return;
        }
        tracing::info!(node = self.id, term, "leadership handed over: campaigning");
        self.start_election(now);
    }

    fn on_command(&mut self, from: NodeId, client: ClientId, seq: u64, command: S::Command) {
        let id = RequestId::Command(seq);
        if self.role != Role::Leader {
            self.respond(from, client, id, Outcome::NotLeader(self.leader));
            return;
        }
        // Handing over: a client goes to the next leader. The service's own
        // proposals (this replica's) are still taken: the leader logic
        // counts on them within its term (the replicated coordinator lost
        // a decision this way, and a transaction's locks stayed held).
        if let Some(transfer) = self
            .lead
            .as_ref()
            .and_then(|l| l.transfer.as_ref())
            .filter(|_| from != self.id)
        {
            let to = transfer.to;
            self.respond(from, client, id, Outcome::NotLeader(Some(to)));
            return;
        }
        match self.machine.lookup((from, client), seq) {
            Some(Applied::Duplicate(output)) => {
                self.respond(from, client, id, Outcome::Done(output));
                return;
            }
            Some(Applied::Stale) => return,
            Some(Applied::Fresh(_)) => unreachable!("lookup never reports fresh"),
            None => {}
        }
        let size = codec::encode(&command).map_or(usize::MAX, |b| b.len());
        if size > MAX_COMMAND_BYTES {
            self.respond(from, client, id, Outcome::Rejected(Reject::TooLarge));
            return;
        }
        let entry = Entry {
            term: self.term,
            index: self.log.last_index() + 1,
            payload: Payload::Command {
                client,
                seq,
                reply_to: from,
                command,
            },
        };
        let (index, term) = (entry.index, entry.term);
        self.append_entry(entry);
        self.out.events.push(Event::Proposed {
            index,
            term,
            change: false,
        });
        self.advance_commit(); // a one-member group commits at once
        self.replicate_pending = true;
    }

    /// An operator's configuration request ([`super::membership`]): a
    /// status query is answered at once; a change is checked against the
    /// rules that keep single-server changes safe, appended, and answered
    /// once it commits.
    fn on_reconfigure(
        &mut self,
        now: Duration,
        from: NodeId,
        (client, id): (ClientId, u64),
        change: Option<Change>,
        base: Index,
    ) {
        let rid = RequestId::Reconfigure(id);
        if self.role != Role::Leader {
            self.respond(from, client, rid, Outcome::NotLeader(self.leader));
            return;
        }
        let Some(change) = change else {
            let status = self.config_status();
            self.respond(from, client, rid, Outcome::Configured(status));
            return;
        };
        if let Change::TransferLeadership(to) = change {
            let asker = PendingChange {
                index: 0,
                from,
                client,
                id,
            };
            self.start_transfer(now, to, asker);
            return;
        }
        let config = self.log.config();
        let already = match change {
            Change::AddLearner(node) => config.learners.contains(&node),
            Change::Promote(node) => config.voters.contains_key(&node),
            Change::Remove(node) => !config.contains(node),
            Change::TransferLeadership(_) => unreachable!("handled above"),
        };
        let pending = self.log.config_index() > self.commit;
        if already || pending {
            if already && pending {
                // A retry of the change in flight: answered with it.
                let index = self.log.config_index();
                let change = PendingChange {
                    index,
                    from,
                    client,
                    id,
                };
                self.lead_mut().changes.push(change);
            } else if already {
                let status = self.config_status();
                self.respond(from, client, rid, Outcome::Configured(status));
            } else {
                let refusal = Outcome::Rejected(Reject::Reconfiguration(Refusal::ChangeInProgress));
                self.respond(from, client, rid, refusal);
            }
            return;
        }
        if base != self.log.config_index() {
            let refusal = Outcome::Rejected(Reject::Reconfiguration(Refusal::Stale));
            self.respond(from, client, rid, refusal);
            return;
        }
        let term_start = self.lead.as_ref().expect("leader state").term_start;
        if self.commit < term_start && !self.bug(LogBug::ChangeBeforeTermCommits) {
            let refusal = Outcome::Rejected(Reject::Reconfiguration(Refusal::LeaderNotReady));
            self.respond(from, client, rid, refusal);
            return;
        }
        let caught_up = match change {
            Change::Promote(node) => self
                .lead
                .as_ref()
                .and_then(|l| l.progress.get(&node))
                .filter(|p| p.matched >= self.commit)
                .and_then(|p| p.incarnation),
            _ => None,
        };
        let next = match self.log.config().change(change, caught_up) {
            Ok(next) if self.heard_voters(&next, now) < next.quorum() => Err(Refusal::WouldLoseQuorum),
            other => other,
        };
        let next = match next {
            Ok(next) => next,
            Err(refusal) => {
                self.respond(from, client, rid, Outcome::Rejected(Reject::Reconfiguration(refusal)));
                return;
            }
        };
        let index = self.log.last_index() + 1;
        tracing::info!(node = self.id, term = self.term, index, ?change, "configuration change");
        self.append_entry(Entry {
            term: self.term,
            index,
            payload: Payload::Config(next),
        });
        self.out.events.push(Event::Proposed {
            index,
            term: self.term,
            change: true,
        });
        self.lead_mut().changes.push(PendingChange {
            index,
            from,
            client,
            id,
        });
        self.track_members(now);
        self.advance_commit();
        self.replicate_pending = true;
    }

    /// Voters of `config` this leader heard from within an election
    /// timeout, in the incarnation `config` names (itself included).
    fn heard_voters(&self, config: &Membership, now: Duration) -> usize {
        let since = now.saturating_sub(self.config.election_timeout_max);
        let lead = self.lead.as_ref().expect("leader state");
        let peers = lead
            .progress
            .iter()
            .filter(|(&node, p)| p.heard_at >= since && p.incarnation.is_some_and(|i| config.is_voter(node, i)));
        peers.count() + usize::from(config.is_voter(self.id, self.incarnation))
    }

    /// The leader's configuration and what it knows of each member.
    fn config_status(&self) -> ConfigStatus {
        let progress = self.lead.as_ref().map(|l| &l.progress);
        ConfigStatus {
            membership: self.log.config().clone(),
            index: self.log.config_index(),
            committed: self.log.config_index() <= self.commit,
            peers: progress
                .into_iter()
                .flatten()
                .map(|(&node, p)| PeerStatus {
                    node,
                    incarnation: p.incarnation,
                    matched: p.matched,
                })
                .collect(),
        }
    }

    fn on_read(&mut self, from: NodeId, client: ClientId, id: u64, query: S::Query) {
        let rid = RequestId::Read(id);
        if self.role != Role::Leader {
            self.respond(from, client, rid, Outcome::NotLeader(self.leader));
            return;
        }
        let max = self.config.max_pending_reads;
        let commit = self.commit;
        let skip_no_op = self.bug(LogBug::ReadBeforeNoOp);
        let lead = self.lead_mut();
        if lead.reads.len() >= max {
            self.respond(from, client, rid, Outcome::Rejected(Reject::Busy));
            return;
        }
        // Read index: our commit, but never before this term's no-op (until
        // that commits we may not know every committed entry).
        let read_index = if skip_no_op {
            commit // PLANTED BUG: the no-op is not waited for
        } else {
            commit.max(lead.term_start)
        };
        let seq = lead.read_seq + 1;
        lead.reads.push_back(PendingRead {
            from,
            client,
            id,
            query,
            seq,
            read_index,
        });
        self.out.events.push(Event::ReadArrived {
            term: self.term,
            round: seq,
        });
        self.replicate_pending = true; // the round `seq`, sent by `finish`
        self.serve_reads(); // a one-member group needs no round
    }

    // ----- role changes ---------------------------------------------------

    /// The term this replica would campaign in, if it may campaign at all.
    fn next_term(&self) -> Option<Term> {
        if self.bug(LogBug::UncheckedTerm) {
            // PLANTED BUG: past `Term::MAX` the term wraps to 0.
            return Some(self.term.wrapping_add(1));
        }
        // Never campaign into a term that could not be incremented in
        // turn. Only billions of forged terms, each within `MAX_TERM_STEP`
        // of the last, get a replica here.
        self.term.checked_add(1).filter(|&t| t < Term::MAX)
    }

    /// [`Self::next_term`] when this election timeout may start a campaign
    /// (or a pre-vote); otherwise says why not and waits for the next one.
    fn campaign_term(&mut self, now: Duration) -> Option<Term> {
        let next = self.next_term();
        if next.is_none() {
            tracing::error!(
                node = self.id,
                term = self.term,
                "term space exhausted: not campaigning"
            );
            self.reset_election_timer(now);
        }
        next
    }

    fn start_election(&mut self, now: Duration) {
        let Some(next) = self.campaign_term(now) else {
            return;
        };
        tracing::debug!(node = self.id, term = next, "campaigning");
        self.term = next;
        self.role = Role::Candidate;
        self.leader = None;
        self.voted_for = Some(self.id);
        self.votes = self.own_vote();
        self.persist_hard_state();
        self.reset_election_timer(now);
        if self.votes.len() >= self.quorum() {
            self.become_leader(now);
            return;
        }
        self.request_votes(now);
    }

    /// Asks the group whether this replica could win the next term, before
    /// campaigning in it; a group of one campaigns at once.
    fn start_pre_vote(&mut self, now: Duration) {
        if self.quorum() == 1 && self.counts(self.id, self.incarnation) {
            self.start_election(now);
            return;
        }
        if self.campaign_term(now).is_none() {
            return;
        }
        tracing::debug!(node = self.id, term = self.term, "asking for pre-votes");
        self.role = Role::PreCandidate;
        self.leader = None;
        self.leader_heard_at = None;
        self.votes = self.own_vote();
        self.reset_election_timer(now);
        self.request_votes(now);
    }

    /// Asks every peer that has not granted its vote (or pre-vote) yet.
    fn request_votes(&mut self, now: Duration) {
        self.vote_resend_due = now + self.config.heartbeat_interval;
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let msg = match self.role {
            Role::PreCandidate => Message::PreVote {
                term: self.next_term().unwrap_or(self.term),
                last_index,
                last_term,
            },
            _ => Message::RequestVote {
                term: self.term,
                last_index,
                last_term,
            },
        };
        // Every node it knows, not only its voters: a node whose log does
        // not show it added yet must still vote (thesis §4.1), and whose
        // vote counts is the asker's to judge.
        let asked: BTreeSet<NodeId> = self.known.iter().copied().chain(self.log.config().members()).collect();
        for peer in asked {
            if peer != self.id && !self.votes.contains_key(&peer) {
                self.send(peer, msg.clone());
            }
        }
    }

    /// Whether check-quorum finds this leader cut off: a whole maximum
    /// election timeout has passed (since it was elected, at least) without
    /// a majority answering it.
    fn lost_quorum(&self, now: Duration) -> bool {
        let Some(since) = now.checked_sub(self.config.election_timeout_max) else {
            return false;
        };
        let Some(lead) = &self.lead else { return false };
        let heard = lead
            .progress
            .iter()
            .filter(|(&node, p)| {
                // A voter not heard from yet has had a timeout's grace
                // since this leader's election (or its own addition).
                let counts = p
                    .incarnation
                    .map_or(self.log.config().voters.contains_key(&node), |i| self.counts(node, i));
                p.heard_at >= since && counts
            })
            .count()
            + usize::from(self.counts(self.id, self.incarnation));
        self.config.check_quorum && heard < self.quorum()
    }

    fn become_leader(&mut self, now: Duration) {
        assert_eq!(self.role, Role::Candidate);
        assert_eq!(self.voted_for, Some(self.id));
        self.role = Role::Leader;
        self.leader = Some(self.id);
        let next = self.log.last_index() + 1;
        self.lead = Some(LeaderState {
            progress: BTreeMap::new(),
            heartbeat_due: Duration::ZERO, // first tick broadcasts
            read_seq: 0,
            reads: VecDeque::new(),
            // Without the no-op (planted bug) reads wait for the inherited log.
            term_start: if self.bug(LogBug::CommitEarlierTermByCounting) {
                next - 1
            } else {
                next
            },
            changes: Vec::new(),
            transfer: None,
        });
        self.track_members(now);
        // The voters just heard from, in the incarnations their votes came from.
        for (node, incarnation) in std::mem::take(&mut self.votes) {
            if let Some(p) = self.lead_mut().progress.get_mut(&node) {
                p.incarnation = Some(incarnation);
            }
        }
        if !self.bug(LogBug::CommitEarlierTermByCounting) {
            self.append_entry(Entry {
                term: self.term,
                index: next,
                payload: Payload::Noop,
            });
        }
        // (Under the planted bug the leader skips the no-op, as in the
        // paper's Figure 2 read naively, and so relies on counting alone.)
        self.advance_commit();
        self.broadcast_append();
    }

    /// Steps down (or stays follower) in `term`, following `leader`.
    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        assert!(term >= self.term);
        if term > self.term {
            self.term = term;
            self.voted_for = None;
            self.persist_hard_state();
        }
        if let Some(lead) = self.lead.take() {
            for read in lead.reads {
                let hint = leader;
                self.respond(
                    read.from,
                    read.client,
                    RequestId::Read(read.id),
                    Outcome::NotLeader(hint),
                );
            }
            // The change may still commit under the next leader; the
            // operator asks it (a retry of an applied change is answered
            // with the configuration that has it).
            for change in lead.changes {
                let id = RequestId::Reconfigure(change.id);
                self.respond(change.from, change.client, id, Outcome::NotLeader(leader));
            }
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
    }

    // ----- replication ----------------------------------------------------

    fn broadcast_append(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        self.lead_mut().read_seq += 1;
        for peer in self.peers() {
            self.send_append(peer);
        }
    }

    fn send_append(&mut self, peer: NodeId) {
        let lead = self.lead.as_ref().expect("only leaders replicate");
        let read_seq = lead.read_seq;
        let p = &lead.progress[&peer];
        if p.next <= self.log.start {
            let sent = match p.snapshot_sent {
                (index, bytes) if index == self.log.start => bytes as usize,
                _ => 0,
            };
            let start = sent.min(self.snapshot.len());
            let end = (start + self.config.snapshot_chunk_bytes).min(self.snapshot.len());
            let msg = Message::InstallSnapshot {
                term: self.term,
                last_index: self.log.start,
                last_term: self.log.start_term,
                membership: self.log.start_config.clone(),
                offset: start as u64,
                total: self.snapshot.len() as u64,
                data: self.snapshot[start..end].to_vec(),
                read_seq,
            };
            self.send(peer, msg);
            return;
        }
        let max = if p.probing {
            1
        } else {
            self.config.max_entries_per_append
        };
        let prev_index = p.next - 1;
        let prev_term = self.log.term_at(prev_index).expect("prev is in the log");
        let entries = self.log.slice(p.next, max);
        let msg = Message::Append {
            term: self.term,
            prev_index,
            prev_term,
            entries,
            commit: self.commit,
            read_seq,
        };
        self.send(peer, msg);
    }

    fn advance_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let lead = self.lead.as_ref().expect("leader state");
        let learners_count = self.bug(LogBug::LearnerCounted);
        let mut matched: Vec<Index> = lead
            .progress
            .iter()
            .filter(|(&node, p)| {
                p.incarnation.is_some_and(|i| self.counts(node, i))
                    || (learners_count && self.log.config().learners.contains(&node))
            })
            .map(|(_, p)| p.matched)
            .collect();
        if self.counts(self.id, self.incarnation) {
            matched.push(self.log.last_index());
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&n) = matched.get(self.quorum() - 1) else {
            return;
        };
        if n <= self.commit {
            return;
        }
        // Figure 8: only an entry of the current term is committed by
        // counting replicas; earlier ones commit with it.
        let current = self.log.term_at(n) == Some(self.term);
        if current || self.bug(LogBug::CommitEarlierTermByCounting) {
            self.commit = n;
            self.out.events.push(Event::Committed { index: n });
            self.apply_committed();
            self.serve_reads();
            self.answer_changes();
        }
    }

    /// Answers the operators whose changes committed; a leader whose own
    /// removal committed then steps down (it is counted in no quorum).
    fn answer_changes(&mut self) {
        let commit = self.commit;
        let lead = self.lead_mut();
        let (done, waiting) = lead.changes.drain(..).partition(|c| c.index <= commit);
        lead.changes = waiting;
        let done: Vec<PendingChange> = done;
        if !done.is_empty() {
            let status = self.config_status();
            for change in done {
                let id = RequestId::Reconfigure(change.id);
                self.respond(change.from, change.client, id, Outcome::Configured(status.clone()));
            }
        }
        if self.log.config_index() <= commit && !self.counts(self.id, self.incarnation) {
            tracing::info!(
                node = self.id,
                term = self.term,
                "removed from the group: stepping down"
            );
            // The members learn of the commit before this leader goes.
            self.broadcast_append();
            self.become_follower(self.term, None);
        }
    }

    fn apply_committed(&mut self) {
        assert!(self.commit <= self.log.last_index());
        while self.applied < self.commit {
            let index = self.applied + 1;
            let entry = self.log.entry(index).clone();
            let payload = codec::encode(&entry.payload).expect("entries fit the codec");
            self.applied = index;
            self.out.events.push(Event::Applied {
                index,
                term: entry.term,
                payload,
            });
            if let Payload::Command {
                client,
                seq,
                reply_to,
                command,
            } = entry.payload
            {
                let result = self.machine.apply(index, (reply_to, client), seq, &command);
                if self.role == Role::Leader {
                    if let Applied::Fresh(output) | Applied::Duplicate(output) = result {
                        self.respond(reply_to, client, RequestId::Command(seq), Outcome::Done(output));
                    }
                }
            }
        }
        self.maybe_compact();
    }

    fn serve_reads(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let quorum = self.quorum();
        let applied = self.applied;
        let me = usize::from(self.counts(self.id, self.incarnation));
        // PLANTED BUG (when set): the round before the read's own counts.
        let earlier = u64::from(self.bug(LogBug::ReadCountsEarlierRound));
        let mut ready = Vec::new();
        {
            let lead = self.lead.as_ref().expect("leader state");
            let voters: Vec<u64> = lead
                .progress
                .iter()
                .filter(|(&node, p)| p.incarnation.is_some_and(|i| self.counts(node, i)))
                .map(|(_, p)| p.acked_seq)
                .collect();
            // Reads are queued in round order, so a prefix is confirmed.
            let confirmed = lead
                .reads
                .iter()
                .take_while(|read| {
                    let acks = me + voters.iter().filter(|&&seq| seq + earlier >= read.seq).count();
                    acks >= quorum && applied >= read.read_index
                })
                .count();
            let lead = self.lead.as_mut().expect("leader state");
            ready.extend(lead.reads.drain(..confirmed));
        }
        for read in ready {
            self.out.events.push(Event::ReadServed {
                term: self.term,
                round: read.seq,
            });
            let output = self.machine.query(&read.query);
            self.respond(read.from, read.client, RequestId::Read(read.id), Outcome::Done(output));
        }
    }

    fn maybe_compact(&mut self) {
        let since = self.log.start.max(self.compaction_refused_at);
        if self.applied - since < self.config.snapshot_every {
            return;
        }
        let term = self.log.term_at(self.applied).expect("applied entry is in the log");
        let config = self.log.config_at(self.applied).clone();
        let snapshot = match self.machine.snapshot() {
            Ok(bytes) if bytes.len() <= self.config.max_snapshot_bytes => bytes,
            too_large => {
                // The state outgrew max_snapshot_bytes: keep the whole log
                // (it still holds everything) and try again a period later,
                // rather than stop every replica on the same entry.
                let size = too_large.map_or_else(|e| e.to_string(), |b| format!("{} bytes", b.len()));
                tracing::error!(node = self.id, applied = self.applied, %size, "state too large to snapshot; not compacting");
                self.compaction_refused_at = self.applied;
                return;
            }
        };
        self.snapshot = snapshot;
        self.log.compact_to(self.applied, term, config);
        self.rewrite_pending = true;
        self.out.events.push(Event::Compacted { index: self.applied });
    }

    // ----- persistence and output -------------------------------------------

    fn persist_hard_state(&mut self) {
        let record: Record<S::Command> = Record::HardState {
            term: self.term,
            voted_for: self.voted_for,
        };
        self.out.append.push(codec::encode(&record).expect("small"));
        self.out.sync = true;
    }

    fn append_entry(&mut self, entry: Entry<S::Command>) {
        let record = Record::Entry(entry.clone());
        self.out
            .append
            .push(codec::encode(&record).expect("entries fit the codec"));
        self.out.sync = true;
        self.log.push(entry);
    }

    /// Every record needed to rebuild the current durable state.
    fn full_log(&self) -> Vec<Vec<u8>> {
        let mut records = Vec::with_capacity(self.log.entries.len() + 3);
        let identity: Record<S::Command> = Record::Identity {
            incarnation: self.incarnation,
            genesis: self.genesis.clone(),
        };
        records.push(codec::encode(&identity).expect("small"));
        if self.log.start > 0 {
            let snap: Record<S::Command> = Record::Snapshot {
                last_index: self.log.start,
                last_term: self.log.start_term,
                membership: self.log.start_config.clone(),
                size: self.snapshot.len() as u64,
            };
            records.push(codec::encode(&snap).expect("small"));
            for part in self.snapshot.chunks(self.config.snapshot_chunk_bytes) {
                let part: Record<S::Command> = Record::SnapshotPart(part.to_vec());
                records.push(codec::encode(&part).expect("a chunk fits a message"));
            }
        }
        let hard: Record<S::Command> = Record::HardState {
            term: self.term,
            voted_for: self.voted_for,
        };
        records.push(codec::encode(&hard).expect("small"));
        for e in &self.log.entries {
            records.push(codec::encode(&Record::Entry(e.clone())).expect("fits"));
        }
        records
    }

    fn finish(&mut self) -> Output<S> {
        if std::mem::take(&mut self.replicate_pending) {
            self.broadcast_append();
        }
        if self.role == Role::Leader && self.reported_leader_term != self.term {
            self.reported_leader_term = self.term;
            self.out.events.push(Event::Leader { term: self.term });
        }
        if self.rewrite_pending {
            self.rewrite_pending = false;
            self.out.append.clear();
            self.out.sync = false;
            self.out.rewrite = Some(self.full_log());
        }
        crate::check::run(|| self.check());
        std::mem::take(&mut self.out)
    }

    /// Invariants that hold between handlers (TigerBeetle-style: a broken
    /// one stops the replica rather than letting it spread).
    fn check(&self) {
        assert!(self.applied <= self.commit, "applied beyond commit");
        assert!(self.commit <= self.log.last_index(), "commit beyond the log");
        assert!(self.log.start <= self.applied, "snapshot beyond applied");
        assert!(self.log.last_term() <= self.term, "entry from a future term");
        assert_eq!(self.role == Role::Leader, self.lead.is_some());
        if self.role == Role::Leader {
            assert_eq!(self.leader, Some(self.id));
            assert!(self.bug(LogBug::NoStepDownOnHigherTerm) || self.voted_for == Some(self.id));
            // Its own changes, one at a time (a log inherited from earlier
            // terms may hold several this leader does not know committed).
            let term_start = self.lead.as_ref().map_or(0, |l| l.term_start);
            let own = self
                .log
                .configs
                .iter()
                .filter(|(i, _)| *i >= term_start && *i > self.commit);
            assert!(
                own.count() <= 1 || self.bug(LogBug::ChangeBeforeTermCommits),
                "a leader with two uncommitted configurations of its own"
            );
        }
        if self.config.paranoid {
            for (i, e) in self.log.entries.iter().enumerate() {
                assert_eq!(e.index, self.log.start + 1 + i as Index);
            }
            for w in self.log.entries.windows(2) {
                assert!(w[0].term <= w[1].term);
            }
        }
    }

    // ----- small helpers ----------------------------------------------------

    fn bug(&self, bug: LogBug) -> bool {
        self.config.bug == Some(bug)
    }

    fn quorum(&self) -> usize {
        self.log.config().quorum()
    }

    /// The members this leader replicates to.
    fn peers(&self) -> Vec<NodeId> {
        self.log.config().members().filter(|&m| m != self.id).collect()
    }

    /// Whether replica traffic from `from` is taken: from a node the
    /// operator named or one some configuration in the log names.
    fn knows(&self, from: NodeId) -> bool {
        self.known.contains(&from)
            || self.log.start_config.contains(from)
            || self.log.configs.iter().any(|(_, m)| m.contains(from))
    }

    /// Whether `node` in `incarnation` is a voter of the configuration in
    /// effect: whose votes and acknowledgements count.
    fn counts(&self, node: NodeId, incarnation: Incarnation) -> bool {
        self.log.config().is_voter(node, incarnation)
    }

    /// Whether this replica may campaign: whenever its log names a group.
    /// Votes are counted by its latest configuration, and only voters'
    /// (its own only if it is one), so who campaigns does not matter to
    /// safety, only to liveness — and the replica with the most up-to-date
    /// log may be one its own log does not count: a leader that appended
    /// its own removal and crashed before it committed, or a learner that
    /// holds entries a voter lacks. The others may need its vote and never
    /// get it unless it can win (the simulator found both). Once its term's
    /// entry commits, a leader its configuration does not count steps down.
    fn may_campaign(&self) -> bool {
        !self.log.config().voters.is_empty()
    }

    /// The votes a campaign starts with: its own, if it counts.
    fn own_vote(&self) -> BTreeMap<NodeId, Incarnation> {
        let counted = self.counts(self.id, self.incarnation);
        counted.then_some((self.id, self.incarnation)).into_iter().collect()
    }

    /// [`Self::counts`], for a vote or pre-vote just received.
    fn counts_vote(&self, node: NodeId, incarnation: Incarnation) -> bool {
        // PLANTED BUG: a grant counts from whoever sent it.
        self.bug(LogBug::RemovedStillVotes) || self.counts(node, incarnation)
    }

    /// Keeps this leader's progress in step with the configuration: new
    /// members are probed from the end of the log, gone ones forgotten.
    fn track_members(&mut self, now: Duration) {
        let peers = self.peers();
        let next = self.log.last_index() + 1;
        let lead = self.lead_mut();
        lead.progress.retain(|node, _| peers.contains(node));
        for peer in peers {
            lead.progress.entry(peer).or_insert_with(|| Progress::new(next, now));
        }
    }

    fn lead_mut(&mut self) -> &mut LeaderState<S::Query> {
        self.lead.as_mut().expect("leader state")
    }

    /// The progress of a member that just answered this leader from
    /// `incarnation`; `None` if it is no member.
    fn answered(&mut self, from: NodeId, incarnation: Incarnation, now: Duration) -> Option<&mut Progress> {
        let next = self.log.last_index() + 1;
        let p = self.lead_mut().progress.get_mut(&from)?;
        if p.incarnation.is_some_and(|known| known != incarnation) {
            // Another life of this node: what the last one stored is gone.
            *p = Progress::new(next, now);
        }
        p.incarnation = Some(incarnation);
        p.heard_at = now;
        Some(p)
    }

    fn reset_election_timer(&mut self, now: Duration) {
        let lo = self.config.election_timeout_min.as_nanos() as u64;
        let hi = self.config.election_timeout_max.as_nanos() as u64;
        self.election_due = now + Duration::from_nanos(self.rng.gen_range(lo..=hi));
    }

    fn send(&mut self, to: NodeId, msg: Message<S::Command>) {
        self.out.messages.push((to, Wire::Raft(msg)));
    }

    fn respond(&mut self, to: NodeId, client: ClientId, id: RequestId, outcome: Outcome<S::Output>) {
        self.out
            .messages
            .push((to, Wire::Response(Response { client, id, outcome })));
    }
}

/// The replica as every engine sees a core; the log's engine hands it a
/// whole round at once ([`Raft::on_messages`]).
impl<S: StateMachine> Core for Raft<S> {
    type In = WireOf<S>;
    type Out = WireOf<S>;
    type Event = Event;

    fn on_message(&mut self, now: Duration, from: NodeId, msg: WireOf<S>) -> Output<S> {
        Raft::on_message(self, now, from, msg)
    }

    fn on_tick(&mut self, now: Duration) -> Output<S> {
        Raft::on_tick(self, now)
    }

    fn next_deadline(&self) -> Duration {
        Raft::next_deadline(self)
    }
}
