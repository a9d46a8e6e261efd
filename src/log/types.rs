//! The vocabulary of the replicated log: terms, indices, entries, the
//! messages replicas exchange, the requests clients send and the records the
//! log keeps on disk. Everything here is plain data that crosses the codec.

use serde::{Deserialize, Serialize};

use super::membership::{Change, ConfigStatus, Incarnation, Membership, Refusal};
use crate::env::NodeId;

/// A Raft term: a logical epoch with at most one leader.
pub type Term = u64;

/// Position of an entry in the log, starting at 1 (0 means "before the log").
pub type Index = u64;

/// Identifies a client session for exactly-once commands. Must be unique per
/// client *incarnation*: a client that restarts with the same id and counts
/// its sequence numbers from 1 again would be answered from its old session.
pub type ClientId = u64;

/// One slot of the replicated log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry<C> {
    /// The term of the leader that appended it: what log matching and the
    /// election restriction compare.
    pub term: Term,
    /// Its position in the log.
    pub index: Index,
    /// What applying it does.
    pub payload: Payload<C>,
}

/// What a log entry carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload<C> {
    /// Appended by every new leader, so that it commits an entry of its own
    /// term promptly (Raft §5.4.2 / §8): this is what lets it commit entries
    /// of earlier terms and serve read-index reads.
    Noop,
    /// A client command. `(client, seq)` deduplicates retries; `reply_to` is
    /// the node the leader answers when the entry is applied.
    Command {
        /// The client session that sent it.
        client: ClientId,
        /// Its sequence number in that session.
        seq: u64,
        /// The node to answer once applied (the sender as the transport
        /// saw it, which also keys the session).
        reply_to: NodeId,
        /// The state machine's command.
        command: C,
    },
    /// The group's next configuration ([`super::membership`]), in effect
    /// on each replica from the moment the entry is in its log.
    Config(Membership),
}

/// Replica-to-replica messages (Raft, with read-index confirmation rounds
/// piggybacked on `Append` via `read_seq`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<C> {
    /// A candidate asks for a vote in `term`.
    RequestVote {
        /// The candidate's new term.
        term: Term,
        /// Index of its last entry; with `last_term`, how up to date its
        /// log is (voters refuse a candidate behind them).
        last_index: Index,
        /// Term of its last entry.
        last_term: Term,
    },
    /// A replica whose election timer fired asks whether it could win
    /// `term` before it campaigns in it (Ongaro's thesis, §9.6). Nothing
    /// changes for the asker or the voter, not even their terms: a replica
    /// cut off from the group asks in vain instead of raising its term
    /// election after election and deposing the leader when it returns.
    PreVote {
        /// The term it would campaign in (its own plus one).
        term: Term,
        /// Index of its last entry.
        last_index: Index,
        /// Term of its last entry.
        last_term: Term,
    },
    /// A voter's answer to `PreVote`: granted if the asker's log is as up
    /// to date as the voter's and the voter has not heard from a leader
    /// within the minimum election timeout.
    PreVoteReply {
        /// Granted: the term asked about (echoed, never adopted). Refused:
        /// the voter's own term, which an asker behind adopts as from any
        /// message, so a replica whose log is ahead but whose term is
        /// behind can still win the next election.
        term: Term,
        /// Whether the voter would vote.
        granted: bool,
        /// The voter's incarnation: a pre-vote counts only from the one
        /// the asker's configuration names.
        incarnation: Incarnation,
    },
    /// A voter's answer to `RequestVote`.
    Vote {
        /// The voter's term (higher than the candidate's makes it step
        /// down).
        term: Term,
        /// Whether the vote went to the candidate.
        granted: bool,
        /// The voter's incarnation: a vote counts only from the one the
        /// candidate's configuration names.
        incarnation: Incarnation,
    },
    /// The leader's entries (or an empty heartbeat) for one follower.
    Append {
        /// The leader's term.
        term: Term,
        /// Index of the entry just before `entries`; the follower must
        /// hold it with `prev_term` to accept them.
        prev_index: Index,
        /// Term of the entry at `prev_index`.
        prev_term: Term,
        /// The entries after `prev_index`, at most
        /// [`super::Config::max_entries_per_append`].
        entries: Vec<Entry<C>>,
        /// The leader's commit index, so followers apply what committed.
        commit: Index,
        /// The leader's confirmation round; echoed in the reply.
        read_seq: u64,
    },
    /// A follower's answer to `Append`.
    AppendReply {
        /// The follower's term.
        term: Term,
        /// Whether the entries were accepted (its log matched at
        /// `prev_index`).
        success: bool,
        /// On success, the index up to which the follower's log now matches
        /// the leader's. On failure, a hint: the follower's log certainly
        /// does not match beyond this index.
        index: Index,
        /// The `read_seq` of the `Append` answered: confirms the leader's
        /// reads up to that round.
        read_seq: u64,
        /// The follower's incarnation: its acknowledgements count toward
        /// commits only if the configuration names this one.
        incarnation: Incarnation,
    },
    /// One chunk of the leader's snapshot, for a follower that needs
    /// entries already compacted away. Chunks go one at a time, each after
    /// the follower acknowledged the bytes before it
    /// ([`super::Config::snapshot_chunk_bytes`]); the follower installs the
    /// snapshot once it holds all `total` bytes.
    InstallSnapshot {
        /// The leader's term.
        term: Term,
        /// Last index the snapshot covers.
        last_index: Index,
        /// Term of the entry at `last_index`.
        last_term: Term,
        /// The configuration in effect at `last_index`.
        membership: Membership,
        /// Where in the encoded snapshot this chunk starts.
        offset: u64,
        /// The encoded snapshot's length.
        total: u64,
        /// The chunk: bytes `offset..offset + data.len()` of the encoded
        /// state (session table and state machine together).
        data: Vec<u8>,
        /// The leader's confirmation round; echoed in the reply.
        read_seq: u64,
    },
    /// The leader hands its leadership over: the receiver, caught up with
    /// the leader's log, campaigns at once (without a pre-vote round). Taken
    /// only from the receiver's leader of its own term.
    TimeoutNow {
        /// The leader's term.
        term: Term,
    },
    /// A follower's answer to `InstallSnapshot`.
    SnapshotReply {
        /// The follower's term.
        term: Term,
        /// The index its log now matches the leader's up to: the
        /// snapshot's once it is installed (0 while chunks are still
        /// missing, or when the snapshot came from a stale term).
        last_index: Index,
        /// The snapshot being received (by its last index) and how many of
        /// its bytes the follower holds: where the next chunk starts.
        received: (Index, u64),
        /// The `read_seq` of the snapshot answered.
        read_seq: u64,
        /// The follower's incarnation, as in `AppendReply`.
        incarnation: Incarnation,
    },
}

impl<C> Message<C> {
    /// The sender's term.
    pub fn term(&self) -> Term {
        match self {
            Message::RequestVote { term, .. }
            | Message::PreVote { term, .. }
            | Message::PreVoteReply { term, .. }
            | Message::Vote { term, .. }
            | Message::Append { term, .. }
            | Message::AppendReply { term, .. }
            | Message::InstallSnapshot { term, .. }
            | Message::TimeoutNow { term }
            | Message::SnapshotReply { term, .. } => *term,
        }
    }
}

/// Which client request a [`Response`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RequestId {
    /// A command, by its session sequence number.
    Command(u64),
    /// A read, by a client-chosen id.
    Read(u64),
    /// A configuration request, by a client-chosen id.
    Reconfigure(u64),
}

/// Why a request was refused without being executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reject {
    /// The command is larger than [`super::MAX_COMMAND_BYTES`].
    TooLarge,
    /// Too many reads are waiting at the leader; retry later.
    Busy,
    /// The leader refused a configuration change, for this reason.
    Reconfiguration(Refusal),
}

/// How a request ended at the replica that answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome<O> {
    /// Executed (commands: exactly once; reads: linearizably).
    Done(O),
    /// This replica is not the leader; try `leader` if known. The request was
    /// not executed *by this reply's sender*, but a command may still commit
    /// through an earlier attempt.
    NotLeader(Option<NodeId>),
    /// Refused before execution, for the reason given.
    Rejected(Reject),
    /// A configuration request's answer: for a change, the configuration
    /// once the change committed; for a status query, the leader's latest.
    Configured(ConfigStatus),
}

/// A replica's answer to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response<O> {
    /// The client session asking: a node may host several in turn, and an
    /// answer to an earlier one must not pass for an answer to the next.
    pub client: ClientId,
    /// The request answered, so a client ignores late answers to ones it
    /// gave up on.
    pub id: RequestId,
    /// What happened to it.
    pub outcome: Outcome<O>,
}

/// Everything that travels between nodes: one enum, so replicas and clients
/// share one inbox and one codec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wire<C, Q, O> {
    /// Between replicas of the group (dropped when from anyone else).
    Raft(Message<C>),
    /// A client's command to the replica it takes for the leader.
    Command {
        /// The client's session.
        client: ClientId,
        /// Its sequence number in the session; a retry reuses it.
        seq: u64,
        /// The state machine's command.
        command: C,
    },
    /// A client's linearizable read.
    Read {
        /// The client's session.
        client: ClientId,
        /// Client-chosen, echoed in the response's [`RequestId::Read`].
        id: u64,
        /// The state machine's query.
        query: Q,
    },
    /// An operator's configuration request, answered by the leader: a
    /// change once it commits, or (`None`) the configuration and what the
    /// leader knows of each member.
    Reconfigure {
        /// The operator's session, to route the answer.
        client: ClientId,
        /// Client-chosen, echoed in [`RequestId::Reconfigure`].
        id: u64,
        /// The change asked for, or `None` for a status query.
        change: Option<Change>,
        /// The configuration the change was asked against: the log index
        /// of the entry that set it ([`super::membership::ConfigStatus::index`]).
        /// A change is made only while it is still the leader's, so a copy
        /// of an old request that arrives late (a duplicate, a retry
        /// outliving its operator) cannot undo what was decided after it.
        base: Index,
    },
    /// A replica's answer to a client.
    Response(Response<O>),
}

/// A record of a replica's durable log (one `Env::append` each).
///
/// Recovery replays them in order: `HardState` overwrites term and vote;
/// `Entry` at index `i` first drops any entries at `i` and later (that is how
/// a conflicting suffix is truncated durably: no separate truncate record);
/// `Snapshot` starts a rewritten log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record<C> {
    /// Written once, first, when the replica's disk is initialized: which
    /// incarnation of its node this disk is, and the configuration it
    /// starts from (the founding one, or empty for a replica that joins an
    /// existing group and learns it from the leader).
    Identity {
        /// Drawn when the disk was initialized ([`super::membership`]).
        incarnation: Incarnation,
        /// The configuration before the first entry.
        genesis: Membership,
    },
    /// The replica's term and vote, which must survive a crash so it never
    /// votes twice in one term.
    HardState {
        /// The current term.
        term: Term,
        /// Whom it voted for in `term`, if anyone.
        voted_for: Option<NodeId>,
    },
    /// A log entry, appended (or overwriting a conflicting suffix).
    Entry(Entry<C>),
    /// The state up to `last_index`, replacing the entries it covers. Its
    /// bytes follow in [`Record::SnapshotPart`]s, so a snapshot is bounded
    /// by configuration (`Config::max_snapshot_bytes`), not by the size of
    /// one record.
    Snapshot {
        /// Last index the snapshot covers.
        last_index: Index,
        /// Term of the entry at `last_index`, for log matching after it.
        last_term: Term,
        /// The configuration in effect at `last_index`.
        membership: Membership,
        /// How many bytes the parts that follow hold together.
        size: u64,
    },
    /// The next bytes of the encoded state (session table and state
    /// machine together) announced by the [`Record::Snapshot`] before it.
    SnapshotPart(Vec<u8>),
}

/// Something a replica did that an observer (a test, the simulator's
/// checkers) may want to know. Not needed to run the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This replica acts as leader of `term` (reported once per term).
    Leader {
        /// The term it leads.
        term: Term,
    },
    /// This replica granted its vote in `term` to `candidate`.
    Voted {
        /// The election's term.
        term: Term,
        /// Who got the vote.
        candidate: NodeId,
    },
    /// This replica, as leader, appended a client command or a
    /// configuration change at `index` and is about to replicate it.
    Proposed {
        /// Where it sits in the log.
        index: Index,
        /// The leader's term, which the entry carries.
        term: Term,
        /// Whether the entry is a configuration change.
        change: bool,
    },
    /// This replica, as leader, learned that the log up to `index` is
    /// committed (before telling the followers).
    Committed {
        /// The new commit index.
        index: Index,
    },
    /// This replica applied the entry at `index` to its state machine.
    /// `payload` is the entry's encoded payload, for comparing replicas.
    Applied {
        /// The entry's index.
        index: Index,
        /// The entry's term.
        term: Term,
        /// The entry's payload, encoded: equal on every replica for one
        /// index, or the log diverged.
        payload: Vec<u8>,
    },
    /// This replica replaced its state by a snapshot ending at `index`.
    Restored {
        /// Last index the snapshot covers.
        index: Index,
        /// Term of the entry at `index`.
        term: Term,
    },
    /// This replica, as leader of `term`, took a read and queued it to be
    /// confirmed by heartbeat round `round` (or later): a majority must
    /// acknowledge a round sent after the read arrived before it is served.
    ReadArrived {
        /// The leader's term.
        term: Term,
        /// The round whose acknowledgements confirm the read.
        round: u64,
    },
    /// This replica, as leader of `term`, served a read that waited for
    /// round `round`.
    ReadServed {
        /// The leader's term.
        term: Term,
        /// The round the read waited for.
        round: u64,
    },
    /// This replica compacted its log into a snapshot ending at `index`.
    Compacted {
        /// Last index the new snapshot covers.
        index: Index,
    },
    /// `from` sent entries that contradict this replica's committed entry
    /// at `index`; refused. Among honest replicas that means a leader lost
    /// a committed entry: a safety violation elsewhere, worth reporting.
    Contradicted {
        /// The sender of the contradicting entries.
        from: NodeId,
        /// The committed index they contradict.
        index: Index,
    },
}
