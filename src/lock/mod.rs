//! The fenced lock service, a state machine on the replicated log.
//!
//! - [`LockMachine`] (`machine.rs`): sessions with leases, named locks with
//!   FIFO waiters, try-acquire and acquire, release only by the owner,
//!   idempotent acquire by request id, and fencing tokens taken from the
//!   machine's revision (the count of applied commands) — a function of the
//!   committed log, so strictly increasing per lock and never reused, also
//!   after every server restarts.
//! - [`server::run`]: a Raft replica of the machine whose leader measures
//!   leases on its clock and proposes `Expire` through the log, so time
//!   enters the replicated state only as committed commands.
//! - [`LockClient`] (`client.rs`): sessions, heartbeats, acquire with a
//!   timeout, the lease arithmetic `ttl·(1−ρ)` from the request's send time.
//! - [`FencedResource`] (`resource.rs`): refuses accesses whose token is
//!   lower than the highest it accepted, so a stale holder is stopped at the
//!   resource even when its lease belief was wrong.
//!
//! See `docs/lock.md` for what each mechanism guarantees.

/// Deliberately broken variants of the lock service, so the simulator can
/// show it catches the mistakes that matter. The configs carry one only
/// with the `planted-bugs` feature; `None` is the correct protocol. (The
/// demo resource's own are `resource::ResourceBug`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockBug {
    /// Client: a queued acquire returns once the holder ahead is gone,
    /// timing its lease from that read instead of asking again.
    NoRecheck,
    /// Client: the lease is trusted for the full TTL, with no margin for
    /// clock drift.
    NoDriftMargin,
    /// Server: the leader stamps acquires with tokens from its own counter,
    /// written to its disk without sync and not replicated.
    UnsyncedToken,
    /// Server: a client's `Hinted` command is admitted, so the client
    /// chooses its own fencing token.
    ClientToken,
    /// Server: an uncommitted expiry is proposed again after a quarter of a
    /// heartbeat instead of a TTL, so in an expiry storm the retries fill
    /// the log faster than it commits.
    ExpiryRetryTooSoon,
    /// Server: a configuration request is admitted from any client, not
    /// only from an operator, so a client can remove the lock servers.
    AnyoneReconfigures,
    /// Rebalancer: the target is given the moving ranges (empty, with no
    /// floor) before the source is fenced, so both serve them for a while.
    FlipBeforeFence,
    /// Rebalancer: the part's floor is its own locks' highest token, not
    /// the source's counter, so a lock freed before the move is granted at
    /// the target below tokens the source gave it.
    FloorNotCarried,
    /// Rebalancer: the part is installed without its locks, so the target
    /// grants a moved lock while its holder's lease still runs.
    HoldersNotShipped,
}

pub mod client;
mod machine;
pub mod rebalance;
pub mod resource;
pub mod server;
pub mod sharded;

#[cfg(test)]
mod tests;

pub use client::{ClientConfig, FenceError, Lease, LockClient, LockError, LockGuard};
pub use machine::{
    pack, LockCommand, LockMachine, LockOutput, LockPart, LockQuery, LockView, MovedLock, PartPage, Refusal, Request,
    SessionId, ShardCommand, Token, MAX_FLOOR, MAX_PAGE_BYTES,
};
pub use resource::{FencedResource, Stale};
pub use server::ServerConfig;
pub use sharded::{ShardedLease, ShardedLockClient};

/// Live sessions the machine keeps; more are refused.
pub const MAX_SESSIONS: usize = 1024;
/// Live sessions one principal may own: a quarter of the table, so one
/// client (or every instance of one principal together) cannot fill it,
/// and far above what one process needs (a session per lock user).
pub const MAX_SESSIONS_PER_PRINCIPAL: usize = 256;

/// The principal a node id belongs to. The transport authenticates
/// clients and guarantees that a client's id is `principal << 16 |
/// instance` and usable only by that principal.
pub fn principal(node: crate::env::NodeId) -> u32 {
    node >> 16
}
/// Locks that exist at once (a lock exists while held or waited for).
pub const MAX_LOCKS: usize = 1024;
/// Locks the sessions of one principal may hold or wait for at once: a
/// quarter of the table, so one client cannot take every slot and leave
/// the others refused.
pub const MAX_LOCKS_PER_PRINCIPAL: usize = MAX_LOCKS / 4;
/// Waiters per lock.
pub const MAX_WAITERS: usize = 64;
/// Waiters one principal's sessions may have in one lock's line: three
/// quarters of it, so one client cannot fill another's lock queue, while
/// a service's 32 instances contending for one lock all fit (a quarter
/// refused half of the 32-client contended benchmark).
pub const MAX_WAITERS_PER_PRINCIPAL: usize = MAX_WAITERS - MAX_WAITERS / 4;
/// Longest lock name.
pub const MAX_LOCK_NAME_BYTES: usize = 128;
