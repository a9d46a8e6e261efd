//! The runtime boundary: everything a protocol may touch of the outside world.
//!
//! Protocols in this crate never call tokio, madsim, `std::time` or an OS rng.
//! They are generic over [`Env`], which has two implementations:
//! `ringfence-sim`'s `SimEnv` (deterministic, with faults) and `crate::real`
//! (tokio, TCP, files with fsync). Keeping the boundary this narrow is what
//! lets one seed reproduce a whole distributed execution.
//!
//! The contract, which the simulator enforces and the real runtime provides:
//! - **Clock.** [`Env::now`] is this node's monotonic clock. It never goes
//!   backwards, but it may run fast or slow against real time (drift) and may
//!   jump forward. Two nodes' clocks are not comparable.
//! - **Network.** [`Env::send`] is fire-and-forget: a message may be lost,
//!   duplicated, delayed or reordered, and arrives whole or not at all.
//!   [`Env::recv`] is cancel-safe: dropping its future loses nothing.
//! - **Storage.** One append-only record log per node. After a crash the node
//!   gets back every record that was [`sync`](Env::sync)ed, in order; records
//!   appended after the last sync may be lost, and the last one may be torn
//!   (the framing in [`record`] detects and drops it). Damage to synced
//!   records is reported as an error, never dropped: the node must not
//!   start on them.
//! - **Rng.** [`Env::rng`] gives a ChaCha generator derived from the run's seed
//!   and the node (in simulation) or from the OS (for real).

pub mod codec;
pub mod record;
pub mod retry;

use std::future::Future;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;

/// Identifies a node (server or client) in a cluster.
pub type NodeId = u32;

/// Largest message the transports carry. Larger sends are refused with
/// [`EnvError::MessageTooLarge`] instead of being split or silently dropped.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Errors the environment reports to a protocol.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EnvError {
    /// The message is larger than [`MAX_MESSAGE_BYTES`].
    #[error("message of {size} bytes exceeds the {max}-byte limit")]
    MessageTooLarge {
        /// The message's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The destination is not part of the cluster.
    #[error("unknown peer {0}")]
    UnknownPeer(NodeId),
    /// Durable storage failed; the protocol must not acknowledge anything
    /// that depended on the failed write.
    #[error("storage: {0}")]
    Storage(String),
}

/// The world as one node sees it. Cheap to clone; clones share the node.
pub trait Env: Clone + Send + Sync + 'static {
    /// This node's id.
    fn id(&self) -> NodeId;

    /// This node's monotonic clock, measured from an arbitrary origin.
    fn now(&self) -> Duration;

    /// Completes after `duration` has passed on this node's clock.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send;

    /// Sends `msg` to `to`, unreliably (see the module docs). Errors are
    /// local only: too large, unknown peer. Delivery is never confirmed, and
    /// the future never waits for the peer (a full queue drops the message).
    fn send(&self, to: NodeId, msg: Vec<u8>) -> impl Future<Output = Result<(), EnvError>> + Send;

    /// Waits for the next message addressed to this node: `(sender, bytes)`.
    fn recv(&self) -> impl Future<Output = (NodeId, Vec<u8>)> + Send;

    /// A fresh, independently seeded ChaCha generator for this node.
    fn rng(&self) -> ChaCha8Rng;

    /// Runs `task` concurrently on this node; it dies with the node.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static);

    /// Every record this node's storage holds, oldest first.
    fn load(&self) -> Result<Vec<Vec<u8>>, EnvError>;

    /// Appends one record. Not durable until [`Env::sync`] returns.
    fn append(&self, record: &[u8]) -> Result<(), EnvError>;

    /// Makes every record appended so far durable.
    fn sync(&self) -> impl Future<Output = Result<(), EnvError>> + Send;

    /// Atomically and durably replaces the whole log with `records`
    /// (compaction: a snapshot plus the entries after it).
    fn rewrite(&self, records: &[Vec<u8>]) -> impl Future<Output = Result<(), EnvError>> + Send;

    /// How error messages name `node`: an id here, the real runtime adds
    /// the address it dials, so "unavailable" says where it looked.
    fn peer_name(&self, node: NodeId) -> String {
        format!("node {node}")
    }
}

/// Runs `fut` for at most `limit` on the node's clock; `None` on timeout.
pub async fn timeout<E: Env, T>(env: &E, limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    use futures::future::{select, Either};
    let fut = std::pin::pin!(fut);
    let sleep = std::pin::pin!(env.sleep(limit));
    match select(fut, sleep).await {
        Either::Left((value, _)) => Some(value),
        Either::Right(((), _)) => None,
    }
}
