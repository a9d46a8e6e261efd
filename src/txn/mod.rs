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
//! The cores are plain structs with synchronous handlers that return
//! [`Step`]s (append a record, sync, send a message, report an event) to be
//! executed in order, so the protocol is unit-tested without a runtime and
//! the ordering "sync, then send" is explicit data.
//!
//! **Classic mode blocks.** With a single coordinator, a participant that has
//! voted yes holds its locks until it learns the decision; if the coordinator
//! is down and no peer knows the outcome, those keys stay locked until the
//! coordinator restarts. That is 2PC's known blocking window, not a bug. The
//! replicated mode closes it for up to f lost coordinator replicas.

pub mod bank;
pub mod client;
pub mod coordinator;
pub mod participant;
mod phases;
pub mod placement;
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
pub type Key = String;
pub type Value = Vec<u8>;

/// The coordinator epoch a transaction id was issued in.
pub fn epoch_of(txn: TxnId) -> u64 {
    txn >> 32
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Decision {
    Commit,
    Abort,
}

/// Why a transaction was aborted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbortReason {
    /// No-wait locking: `key` is locked in a conflicting mode by `holder`.
    LockConflict { key: Key, holder: TxnId },
    /// The shard restarted (or timed the transaction out) and lost its
    /// locks and buffered writes, so it cannot vouch for the reads.
    ShardLostTxn { shard: NodeId },
    /// A participant voted no (it had lost or aborted the transaction).
    VotedNo { shard: NodeId },
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
        }
    }
}

/// What a client learns from `commit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Committed,
    Aborted(AbortReason),
}

/// What a peer knows about a transaction, answering a cooperative
/// termination query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Knowledge {
    Decided(Decision),
    /// Prepared (voted yes) and waiting, like the asker.
    Uncertain,
}

/// Every message of the protocol (client, coordinator and shards share one
/// enum so a node can tell a stray message from garbage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    // client -> coordinator
    Begin {
        request: u64,
    },
    /// Commit `txn`, which touched these shards (with the shard epoch each
    /// reported). Retrying it is safe: it is also the outcome query.
    Commit {
        txn: TxnId,
        participants: Vec<(NodeId, u64)>,
    },
    /// What became of `txn`? Answered once decided; never starts a commit.
    Status {
        txn: TxnId,
    },
    // coordinator -> client
    Began {
        request: u64,
        txn: TxnId,
    },
    Outcome {
        txn: TxnId,
        outcome: Outcome,
    },
    /// The replicated coordinator no longer knows what became of `txn`: it
    /// finished (committed or aborted) and was forgotten, or it began so
    /// long ago that the coordinator forgot past it before it was started.
    Forgotten {
        txn: TxnId,
    },
    /// A replica of a replicated coordinator that does not lead: try
    /// `leader` (if known) instead.
    Redirect {
        leader: Option<NodeId>,
    },

    // client -> shard
    Get {
        txn: TxnId,
        request: u64,
        key: Key,
        epoch: Option<u64>,
    },
    Put {
        txn: TxnId,
        request: u64,
        key: Key,
        value: Value,
        epoch: Option<u64>,
    },
    /// Abort an active (not yet prepared) transaction: release its locks.
    Abort {
        txn: TxnId,
    },
    // shard -> client
    OpReply {
        txn: TxnId,
        request: u64,
        epoch: u64,
        result: Result<Option<Value>, AbortReason>,
    },

    // coordinator -> shard
    Prepare {
        txn: TxnId,
        epoch: u64,
        participants: Vec<NodeId>,
        /// Whom a prepared shard asks for the decision: the coordinator, or
        /// every replica of a replicated coordinator.
        coordinators: Vec<NodeId>,
    },
    Decide {
        txn: TxnId,
        decision: Decision,
    },
    // shard -> coordinator
    Vote {
        txn: TxnId,
        yes: bool,
    },
    Ack {
        txn: TxnId,
    },

    // shard -> coordinator and peers (cooperative termination)
    Query {
        txn: TxnId,
    },
    // peer -> shard
    Known {
        txn: TxnId,
        knowledge: Knowledge,
    },

    /// Between replicas of a replicated coordinator: an encoded message of
    /// their log (`crate::log::WireOf<CoordMachine>`), so that one inbox and
    /// one codec serve both protocols.
    Log(Vec<u8>),
}

/// Something a core reports about what it did, for tracing and for the
/// simulator's invariant checks (it never affects the protocol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnEvent {
    /// A shard voted (after syncing its prepare record, for a yes).
    Voted { txn: TxnId, yes: bool },
    /// A shard applied a decision (released locks; installed writes on
    /// commit). `prepared` says whether it had voted yes: an unprepared
    /// shard may abort on its own (lock conflict, timeout, restart), and
    /// only prepared shards are bound by the global decision.
    Applied {
        txn: TxnId,
        decision: Decision,
        prepared: bool,
    },
    /// A shard was told to commit a transaction it holds no prepare record
    /// for — its yes vote was not durable. Never happens in a correct run.
    CommitUnprepared { txn: TxnId },
    /// The coordinator announced `decision` for `txn` (to a client, a shard or
    /// a query). `participants` is empty when it answered from presumption.
    Announced {
        txn: TxnId,
        decision: Decision,
        participants: Vec<NodeId>,
    },
    /// A restarted classic coordinator found `decision` for `txn` durable in
    /// its log. A crash between the sync and the announcement leaves a
    /// decision that only the next incarnation knows (and acts on).
    Recovered {
        txn: TxnId,
        decision: Decision,
        participants: Vec<NodeId>,
    },
    /// A replica of a replicated coordinator compacted its log into a
    /// snapshot ending at `index`, or (`installed`) replaced its state by
    /// its leader's snapshot.
    Snapshot { index: u64, installed: bool },
    /// A replica of a replicated coordinator applied `Forget { below }`.
    Forgot { below: TxnId },
}

/// One effect of a handler. Executed strictly in order by the shell: an
/// `Append` then `Sync` before a `Send` is the durability guarantee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<R> {
    Append(R),
    Sync,
    Send(NodeId, Msg),
    Event(TxnEvent),
}

/// Convenience for building step lists.
pub(crate) fn sends<R>(to: impl IntoIterator<Item = NodeId>, msg: &Msg) -> Vec<Step<R>> {
    to.into_iter().map(|n| Step::Send(n, msg.clone())).collect()
}

/// Buffered writes of one transaction at one shard.
pub type Writes = BTreeMap<Key, Value>;
