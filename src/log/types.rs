//! The vocabulary of the replicated log: terms, indices, entries, the
//! messages replicas exchange, the requests clients send and the records the
//! log keeps on disk. Everything here is plain data that crosses the codec.

use serde::{Deserialize, Serialize};

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
    pub term: Term,
    pub index: Index,
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
        client: ClientId,
        seq: u64,
        reply_to: NodeId,
        command: C,
    },
}

/// Replica-to-replica messages (Raft, with read-index confirmation rounds
/// piggybacked on `Append` via `read_seq`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<C> {
    RequestVote {
        term: Term,
        last_index: Index,
        last_term: Term,
    },
    Vote {
        term: Term,
        granted: bool,
    },
    Append {
        term: Term,
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry<C>>,
        commit: Index,
        /// The leader's confirmation round; echoed in the reply.
        read_seq: u64,
    },
    AppendReply {
        term: Term,
        success: bool,
        /// On success, the index up to which the follower's log now matches
        /// the leader's. On failure, a hint: the follower's log certainly
        /// does not match beyond this index.
        index: Index,
        read_seq: u64,
    },
    InstallSnapshot {
        term: Term,
        last_index: Index,
        last_term: Term,
        data: Vec<u8>,
        read_seq: u64,
    },
    SnapshotReply {
        term: Term,
        last_index: Index,
        read_seq: u64,
    },
}

impl<C> Message<C> {
    /// The sender's term.
    pub fn term(&self) -> Term {
        match self {
            Message::RequestVote { term, .. }
            | Message::Vote { term, .. }
            | Message::Append { term, .. }
            | Message::AppendReply { term, .. }
            | Message::InstallSnapshot { term, .. }
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
}

/// Why a request was refused without being executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reject {
    /// The command is larger than [`super::MAX_COMMAND_BYTES`].
    TooLarge,
    /// Too many reads are waiting at the leader; retry later.
    Busy,
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
    Rejected(Reject),
}

/// A replica's answer to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response<O> {
    /// The client session asking: a node may host several in turn, and an
    /// answer to an earlier one must not pass for an answer to the next.
    pub client: ClientId,
    pub id: RequestId,
    pub outcome: Outcome<O>,
}

/// Everything that travels between nodes: one enum, so replicas and clients
/// share one inbox and one codec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wire<C, Q, O> {
    Raft(Message<C>),
    Command { client: ClientId, seq: u64, command: C },
    Read { client: ClientId, id: u64, query: Q },
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
    HardState {
        term: Term,
        voted_for: Option<NodeId>,
    },
    Entry(Entry<C>),
    Snapshot {
        last_index: Index,
        last_term: Term,
        data: Vec<u8>,
    },
}

/// Something a replica did that an observer (a test, the simulator's
/// checkers) may want to know. Not needed to run the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This replica acts as leader of `term` (reported once per term).
    Leader { term: Term },
    /// This replica granted its vote in `term` to `candidate`.
    Voted { term: Term, candidate: NodeId },
    /// This replica, as leader, appended a client command at `index` and is
    /// about to replicate it.
    Proposed { index: Index, term: Term },
    /// This replica, as leader, learned that the log up to `index` is
    /// committed (before telling the followers).
    Committed { index: Index },
    /// This replica applied the entry at `index` to its state machine.
    /// `payload` is the entry's encoded payload, for comparing replicas.
    Applied { index: Index, term: Term, payload: Vec<u8> },
    /// This replica replaced its state by a snapshot ending at `index`.
    Restored { index: Index, term: Term },
    /// This replica compacted its log into a snapshot ending at `index`.
    Compacted { index: Index },
    /// `from` sent entries that contradict this replica's committed entry
    /// at `index`; refused. Among honest replicas that means a leader lost
    /// a committed entry: a safety violation elsewhere, worth reporting.
    Contradicted { from: NodeId, index: Index },
}
