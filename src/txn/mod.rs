//! Atomic commit across shards: two-phase commit with presumed abort.
//!
//! The pieces, each with one job:
//! - [`participant`]: a shard holding key-value data. Strict two-phase
//!   locking with no-wait deadlock avoidance, a prepare record synced before
//!   voting yes, locks held until the decision, recovery from its log, and
//!   cooperative termination (a prepared shard asks the coordinator and its
//!   peers, and never decides alone).
//! - [`coordinator`]: issues transaction ids, runs presumed-abort 2PC, syncs
//!   a commit decision before sending it, answers outcome queries from its
//!   log, and after a crash re-sends logged commits (anything undecided is
//!   aborted).
//! - [`client`]: `begin` / `get` / `put` / `commit`, generic over
//!   [`Env`](crate::env::Env); a commit retried after a lost reply reports
//!   the real outcome.
//! - [`replicated`]: the second coordinator mode — the coordinator's state
//!   is a state machine on the replicated log (`crate::log`), decisions are
//!   log commands, and whichever replica leads drives pending transactions,
//!   so losing any f of 2f+1 coordinator replicas blocks nothing.
//! - `phases`: the bookkeeping both coordinator modes share (voting
//!   rounds, delivering a commit until acknowledged, waiting clients).
//! - [`shell`]: the thin async loops that drive the cores over an `Env`.
//! - [`placement`]: which shard holds a key — the seam where the
//!   consistent-hashing ring plugs in.
//!
//! The cores are plain structs with synchronous handlers that return an
//! [`Output`] (records to append, whether to sync them, messages to send,
//! events to report): the one effect type of every core in the crate
//! ([`crate::effects`]). Its shells persist before they report or send, so
//! the protocol is unit-tested without a runtime and "synced before sent"
//! is explicit data.
//!
//! **Classic mode blocks.** With a single coordinator, a participant that has
//! voted yes holds its locks until it learns the decision; if the coordinator
//! is down and no peer knows the outcome, those keys stay locked until the
//! coordinator restarts. That is 2PC's known blocking window, not a bug. The
//! replicated mode closes it for up to f lost coordinator replicas.

/// Deliberately broken variants of the transaction protocol, so the
/// simulator can show it catches the mistakes that matter. `None` in a
/// role's `bug` is the correct protocol; each role acts only on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TxnBug {
    /// Shard: vote yes as soon as the prepare record is appended, without
    /// syncing it (the shell then syncs on an interval).
    VoteWithoutSync,
    /// Shard: after [`participant::ABORT_ALONE_AFTER`] in the prepared
    /// state, abort alone.
    AbortAlone,
    /// Shard: accept prepares and decisions from any sender, as the shard
    /// once did: one forged `Decide` commits or aborts what it likes.
    DecideFromAnyone,
    /// Shard: a write of a key the transaction has not read takes the
    /// exclusive lock even while other transactions hold it shared ("a
    /// writer that read nothing cannot spoil a read"): two transactions
    /// that each read what the other writes both commit (write skew).
    BlindWriteIgnoresReaders,
    /// Classic coordinator: send the commit decision without syncing its
    /// record first (the shell then syncs on an interval).
    DecisionBeforeSync,
    /// Classic coordinator: after a restart, answer queries about unknown
    /// transactions with commit instead of abort.
    RecoveryPresumesCommit,
    /// Replicated coordinator: the leader acts on the entries in its own
    /// log as if committed: it prepares and sends decisions (to shards and
    /// clients) before a majority stored them. A deposed leader's decisions
    /// then contradict the log's. Carried out by the companion
    /// ([`shell::CoordService`]), which shows the leader logic that state
    /// instead of the applied one.
    SendBeforeCommit,
    /// Replicated coordinator: a replica answers a shard's query about a
    /// transaction it has no applied decision for with abort, without
    /// logging that abort.
    ReplicaPresumesAbort,
    /// Replicated coordinator: a new leader drives only the transactions
    /// started in its own term, not those it inherited.
    IgnoreInherited,
    /// Replicated coordinator: a replica answers every question about a
    /// forgotten transaction (a client's commit or status, a shard's query)
    /// with abort, as plain presumed abort would, though it may have
    /// committed.
    ForgetPresumesAbort,
    /// Shard: a fenced part of accounts is read and shipped while prepared
    /// transactions still hold locks on them, so a commit decided after
    /// the move lands at a shard that no longer serves those accounts (a
    /// moving prepared transaction dropped).
    ShipBeforeDrained,
    /// Rebalancer: the target shard serves moving accounts (installed
    /// empty) before the source fences them, so both serve them for a
    /// while and the target without their balances.
    InstallBeforeFence,
    /// Shard: the source keeps taking operations on fenced accounts until
    /// it drops them, so writes that commit after their part was read are
    /// left behind, and the target serves the same accounts meanwhile.
    ServeAfterFence,
}

pub mod bank;
pub mod client;
pub mod coordinator;
pub mod participant;
mod phases;
pub use phases::MAX_PARTICIPANTS;
pub mod placement;
pub mod rebalance;
pub mod replicated;
pub mod shell;

#[cfg(test)]
mod adversary_tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::env::NodeId;

/// A transaction id, issued by the coordinator: its boot epoch in the high
/// 32 bits and a per-epoch sequence in the low 32, so ids are unique across
/// coordinator crashes and an id from an earlier epoch that the log does not
/// know is, by presumed abort, aborted.
pub type TxnId = u64;
/// A key of the sharded store; [`placement`] maps it to its shard.
pub type Key = String;
/// A stored value: opaque bytes (the [`bank`] workload puts balances in
/// them).
pub type Value = Vec<u8>;

/// The coordinator epoch a transaction id was issued in.
pub fn epoch_of(txn: TxnId) -> u64 {
    txn >> 32
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Decision {
    /// Every participant voted yes and the decision is durable: each shard
    /// installs its writes.
    Commit,
    /// Taken (or presumed) by the coordinator, or by an unprepared shard
    /// alone: each shard drops its writes.
    Abort,
}

/// Why a transaction was aborted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbortReason {
    /// No-wait locking: `key` is locked in a conflicting mode by `holder`.
    LockConflict {
        /// The key the request needed.
        key: Key,
        /// A transaction holding it (one of them, for shared locks).
        holder: TxnId,
    },
    /// The shard restarted (or timed the transaction out) and lost its
    /// locks and buffered writes, so it cannot vouch for the reads.
    ShardLostTxn {
        /// The shard that restarted or timed the transaction out.
        shard: NodeId,
    },
    /// A participant voted no (it had lost or aborted the transaction).
    VotedNo {
        /// The first shard whose no was counted.
        shard: NodeId,
    },
    /// Not every participant voted within the coordinator's prepare timeout.
    PrepareTimeout,
    /// The coordinator restarted before deciding; presumed abort.
    CoordinatorRestarted,
    /// The replicated coordinator's log has no record of the commit request
    /// (it was lost with a leader); presumed abort, logged.
    NotLogged,
    /// The client gave up (e.g. a shard did not answer), or asked to abort.
    ClientAbort,
    /// The transaction is no longer active at the shard.
    NotActive,
    /// The transaction's keys and values at one shard would exceed
    /// [`participant::MAX_TXN_BYTES`], past which its prepare record could
    /// not be stored.
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The commit request listed more shards than
    /// [`MAX_PARTICIPANTS`].
    TooManyParticipants {
        /// The limit, in shards.
        limit: usize,
    },
    /// The shard does not serve the key: it moved (or is moving) to
    /// another shard. The client reads the ring's views again and runs the
    /// transaction where they say.
    NotServed {
        /// The shard that refused.
        shard: NodeId,
        /// The highest ring epoch that shard took part in.
        epoch: u64,
    },
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AbortReason::LockConflict { key, holder } => write!(f, "lock conflict on {key} (held by {holder:#x})"),
            AbortReason::ShardLostTxn { shard } => write!(f, "shard {shard} lost the transaction"),
            AbortReason::VotedNo { shard } => write!(f, "shard {shard} voted no"),
            AbortReason::PrepareTimeout => f.write_str("prepare timed out"),
            AbortReason::CoordinatorRestarted => f.write_str("coordinator restarted before deciding"),
            AbortReason::NotLogged => f.write_str("the coordinator log has no record of the commit request"),
            AbortReason::ClientAbort => f.write_str("client aborted"),
            AbortReason::NotActive => f.write_str("transaction not active at the shard"),
            AbortReason::TooLarge { limit } => {
                write!(
                    f,
                    "the transaction's keys and values at one shard would exceed {limit} bytes"
                )
            }
            AbortReason::TooManyParticipants { limit } => {
                write!(f, "the commit request lists more than {limit} shards")
            }
            AbortReason::NotServed { shard, epoch } => {
                write!(f, "shard {shard} does not serve the key (its ring epoch is {epoch})")
            }
        }
    }
}

/// What a client learns from `commit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Durably committed: every write is installed, or will be once each
    /// shard hears the decision.
    Committed,
    /// None of its writes took effect, for the reason given.
    Aborted(AbortReason),
}

/// What a peer knows about a transaction, answering a cooperative
/// termination query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Knowledge {
    /// The peer knows the decision (or, not having voted, just aborted),
    /// which settles the asker's transaction too.
    Decided(Decision),
    /// Prepared (voted yes) and waiting, like the asker.
    Uncertain,
}

/// Every frame of the protocol on the wire: one envelope, so that a node
/// tells a stray message from garbage, split by the role that handles it,
/// so that no role's handler lists the messages meant for another. A
/// frame for another role is dropped by the shell before any core sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// For a shard.
    Shard(ShardMsg),
    /// For a coordinator, classic or a replica of the replicated one.
    Coord(CoordMsg),
    /// For a client or an operator: the answers.
    Reply(ReplyMsg),
}

/// What a shard handles: a client's reads, writes and aborts, a
/// coordinator's prepares and decisions, its peers' questions and answers,
/// an operator's moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardMsg {
    /// Reads `key` under a shared lock (seeing the transaction's own
    /// buffered write, if any).
    Get {
        /// The transaction reading.
        txn: TxnId,
        /// Client-chosen, echoed in `OpReply` to match the answer.
        request: u64,
        /// The key read.
        key: Key,
        /// The shard epoch from this transaction's earlier replies here;
        /// `None` on its first request to the shard.
        epoch: Option<u64>,
    },
    /// Buffers a write of `key` under an exclusive lock, installed only if
    /// the transaction commits.
    Put {
        /// The transaction writing.
        txn: TxnId,
        /// Client-chosen, echoed in `OpReply` to match the answer.
        request: u64,
        /// The key written.
        key: Key,
        /// The new value.
        value: Value,
        /// The shard epoch from this transaction's earlier replies here;
        /// `None` on its first request to the shard.
        epoch: Option<u64>,
    },
    /// Abort an active (not yet prepared) transaction: release its locks.
    Abort {
        /// The transaction to abort.
        txn: TxnId,
    },
    /// Phase one: vote on `txn`.
    Prepare {
        /// The transaction to prepare.
        txn: TxnId,
        /// The node that asked to commit it: a shard votes no unless that
        /// is the client whose work the transaction holds there, so no one
        /// commits a part of someone else's transaction.
        client: NodeId,
        /// The shard epoch the client reported: a shard now in another
        /// epoch lost the transaction and votes no.
        epoch: u64,
        /// Every shard of the transaction, the peers a prepared shard asks.
        participants: Vec<NodeId>,
        /// Whom a prepared shard asks for the decision: the coordinator, or
        /// every replica of a replicated coordinator.
        coordinators: Vec<NodeId>,
    },
    /// Phase two: the decision (also the answer to a shard's `Query`).
    Decide {
        /// The decided transaction.
        txn: TxnId,
        /// How it ended.
        decision: Decision,
    },
    /// A prepared peer asks how `txn` ended (cooperative termination).
    Query {
        /// The transaction asked about.
        txn: TxnId,
    },
    /// A peer shard's answer to `Query`.
    Known {
        /// The transaction asked about.
        txn: TxnId,
        /// What the peer knows of it.
        knowledge: Knowledge,
    },
    /// A step of moving accounts between shards.
    Move {
        /// The operator's client id (its inbox hands the answer to it).
        client: u64,
        /// Operator-chosen, echoed in `MoveReply`.
        request: u64,
        /// The step.
        step: participant::AccountMove,
    },
}

/// What a coordinator handles: a client's begin, commit and status, its
/// shards' votes, acknowledgements and questions, and (replicated) its
/// replicas' log traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordMsg {
    /// Asks for a fresh transaction id.
    Begin {
        /// Client-chosen, echoed in `Began` to match the answer.
        request: u64,
    },
    /// Commit `txn`, which touched these shards (with the shard epoch each
    /// reported). Retrying it is safe: it is also the outcome query.
    Commit {
        /// The transaction to commit.
        txn: TxnId,
        /// Each shard touched, with the epoch it reported: a shard that
        /// restarted since votes no.
        participants: Vec<(NodeId, u64)>,
    },
    /// What became of `txn`? Answered once decided; never starts a commit.
    Status {
        /// The transaction asked about.
        txn: TxnId,
    },
    /// A shard's vote; a yes is durable before it is sent.
    Vote {
        /// The transaction voted on.
        txn: TxnId,
        /// Whether the shard prepared it.
        yes: bool,
    },
    /// The shard applied a `Decide` (a commit durably), so the coordinator
    /// can stop re-sending it.
    Ack {
        /// The transaction acknowledged.
        txn: TxnId,
    },
    /// A prepared shard asks its coordinator how `txn` ended.
    Query {
        /// The transaction asked about.
        txn: TxnId,
    },
    /// Between replicas of a replicated coordinator: an encoded message of
    /// their log (`crate::log::WireOf<CoordMachine>`), so that one inbox and
    /// one codec serve both protocols.
    Log(Vec<u8>),
}

/// What a client or an operator is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyMsg {
    /// Answers `Begin`.
    Began {
        /// The `Begin`'s request id.
        request: u64,
        /// The new transaction's id.
        txn: TxnId,
    },
    /// Answers `Commit` and `Status` once the transaction is decided.
    Outcome {
        /// The transaction decided.
        txn: TxnId,
        /// How it ended.
        outcome: Outcome,
    },
    /// The replicated coordinator no longer knows what became of `txn`: it
    /// finished (committed or aborted) and was forgotten, or it began so
    /// long ago that the coordinator forgot past it before it was started.
    Forgotten {
        /// The transaction asked about.
        txn: TxnId,
    },
    /// A replica of a replicated coordinator that does not lead: try
    /// `leader` (if known) instead.
    Redirect {
        /// The replica it believes leads, if any.
        leader: Option<NodeId>,
    },
    /// Answers `Get` and `Put`.
    OpReply {
        /// The transaction.
        txn: TxnId,
        /// The request answered.
        request: u64,
        /// The shard's current epoch: a change between replies means it
        /// restarted and lost the transaction.
        epoch: u64,
        /// The value read (`None` for a `Put` or an absent key), or why the
        /// transaction was aborted here.
        result: Result<Option<Value>, AbortReason>,
    },
    /// Answers `Move` once the step is durable.
    MoveReply {
        /// The `Move`'s client id.
        client: u64,
        /// The `Move`'s request id.
        request: u64,
        /// What the shard did.
        answer: participant::MoveAnswer,
    },
}

macro_rules! role_msg {
    ($role:ident, $variant:ident) => {
        impl From<$role> for Msg {
            fn from(msg: $role) -> Msg {
                Msg::$variant(msg)
            }
        }

        /// The frame, if it is for this role; otherwise the frame back.
        impl TryFrom<Msg> for $role {
            type Error = Msg;
            fn try_from(msg: Msg) -> Result<$role, Msg> {
                match msg {
                    Msg::$variant(msg) => Ok(msg),
                    other => Err(other),
                }
            }
        }
    };
}
role_msg!(ShardMsg, Shard);
role_msg!(CoordMsg, Coord);
role_msg!(ReplyMsg, Reply);

/// Something a core reports about what it did, for tracing and for the
/// simulator's invariant checks (it never affects the protocol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnEvent {
    /// A shard voted (after syncing its prepare record, for a yes).
    Voted {
        /// The transaction voted on.
        txn: TxnId,
        /// The vote.
        yes: bool,
    },
    /// A shard applied a decision (released locks; installed writes on
    /// commit). `prepared` says whether it had voted yes: an unprepared
    /// shard may abort on its own (lock conflict, timeout, restart), and
    /// only prepared shards are bound by the global decision.
    Applied {
        /// The transaction.
        txn: TxnId,
        /// The decision applied.
        decision: Decision,
        /// Whether the shard had voted yes.
        prepared: bool,
    },
    /// A shard was told to commit a transaction it holds no prepare record
    /// for — its yes vote was not durable. Never happens in a correct run.
    CommitUnprepared {
        /// The transaction.
        txn: TxnId,
    },
    /// The coordinator announced `decision` for `txn` (to a client, a shard or
    /// a query). `participants` is empty when it answered from presumption.
    Announced {
        /// The transaction.
        txn: TxnId,
        /// The decision announced.
        decision: Decision,
        /// The shards it involved, as the coordinator knew them.
        participants: Vec<NodeId>,
    },
    /// A restarted classic coordinator found `decision` for `txn` durable in
    /// its log. A crash between the sync and the announcement leaves a
    /// decision that only the next incarnation knows (and acts on).
    Recovered {
        /// The transaction.
        txn: TxnId,
        /// The logged decision (always a commit: aborts are not logged).
        decision: Decision,
        /// The shards the commit record names.
        participants: Vec<NodeId>,
    },
    /// A replica of a replicated coordinator compacted its log into a
    /// snapshot ending at `index`, or (`installed`) replaced its state by
    /// its leader's snapshot.
    Snapshot {
        /// Last log index the snapshot covers.
        index: u64,
        /// True when it came from the leader, false for its own compaction.
        installed: bool,
    },
    /// A bank shard's ownership once a move step became durable, or as
    /// its log rebuilt it at recovery: every key hash it serves from now
    /// on (the simulator judges `owner-overlap` from these).
    Serving {
        /// The hashes served.
        ranges: crate::shard::RangeSet,
    },
    /// A replica of a replicated coordinator applied `Forget { below }`.
    Forgot {
        /// The bound applied: transactions below it are forgotten.
        below: TxnId,
    },
}

/// What a 2PC core's handler asks its shell to do: the one effect type of
/// every core ([`crate::effects::Effects`]) with this protocol's messages
/// and events. Records are persisted (and synced if asked) before any
/// message goes: that is what makes "durable before visible" hold.
pub type Output = crate::effects::Effects<Msg, TxnEvent>;

/// Buffered writes of one transaction at one shard.
pub type Writes = BTreeMap<Key, Value>;
