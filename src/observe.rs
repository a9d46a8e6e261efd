//! One way to watch what any node's protocol does: the log's replicas
//! report [`crate::log::Event`]s, the transaction roles
//! [`crate::txn::TxnEvent`]s, both through [`Observer`]. Tests and the
//! simulator's checkers collect them; a service may log them.

use std::time::Duration;

use crate::env::NodeId;

/// Receives every event `node` reports, stamped with its clock's `now`.
/// Called synchronously, in order, before the handler's messages are sent:
/// it must not block, the node waits for it. A closure
/// `Fn(NodeId, Duration, &E)` is one.
pub trait Observer<E>: Send + Sync + 'static {
    /// One event of `node`.
    fn observe(&self, node: NodeId, now: Duration, event: &E);
}

impl<E, F> Observer<E> for F
where
    F: Fn(NodeId, Duration, &E) + Send + Sync + 'static,
{
    fn observe(&self, node: NodeId, now: Duration, event: &E) {
        self(node, now, event)
    }
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ignore;

impl<E> Observer<E> for Ignore {
    fn observe(&self, _: NodeId, _: Duration, _: &E) {}
}
