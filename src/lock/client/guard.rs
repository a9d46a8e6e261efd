//! [`LockGuard`]: a held lock that keeps its session renewed, tells when
//! it is lost, releases on drop, and is the only way its token reaches a
//! [`FencedResource`].

use std::sync::Arc;

use tokio::sync::{watch, OwnedMutexGuard};

use super::{Lease, LockError, Shared};
use crate::env::Env;
use crate::lock::machine::{SessionId, Token};
use crate::lock::resource::{FencedResource, Stale};

/// A held lock: renewed in the background while it lives, released when
/// dropped (in the background, so the next holder waits about a round
/// trip, not a TTL), and the only way to touch a [`FencedResource`] with
/// its token.
///
/// The lock can be lost while the guard lives (the lease ran out during a
/// partition or a long pause): [`LockGuard::lost`] resolves then, and the
/// resource refuses the stale token once a newer holder has used it.
pub struct LockGuard<E: Env> {
    pub(super) shared: Arc<Shared<E>>,
    pub(super) session: SessionId,
    pub(super) lease: Lease,
    pub(super) lost: watch::Receiver<Option<LockError>>,
    pub(super) local: Option<OwnedMutexGuard<()>>,
    pub(super) released: bool,
}

impl<E: Env> std::fmt::Debug for LockGuard<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("lock", &self.lease.lock)
            .field("token", &self.lease.token)
            .field("session", &self.session)
            .finish()
    }
}

impl<E: Env> LockGuard<E> {
    /// The fencing token of this grant.
    pub fn token(&self) -> Token {
        self.lease.token
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.lease.lock
    }

    /// Whether the lock is still held as far as this client can tell: not
    /// reported lost, and the session lease valid on this node's clock.
    pub fn is_valid(&self) -> bool {
        self.lost.borrow().is_none() && self.shared.is_valid()
    }

    /// Resolves when the lock is lost, with the reason; pending while it
    /// is held. Cancel-safe (it only watches), so it fits a `select!` arm
    /// beside the work the lock protects.
    pub async fn lost(&self) -> LockError {
        let mut lost = self.lost.clone();
        let why = match lost.wait_for(Option::is_some).await {
            Ok(why) => why.clone(),
            Err(_) => None,
        };
        why.unwrap_or(LockError::LeaseExpired)
    }

    /// Reads `resource` under this grant's token (fenced: a read is an
    /// access, and raises the resource's floor). Refused while lost here.
    pub fn read(&self, resource: &mut FencedResource) -> Result<u64, FenceError> {
        self.check()?;
        Ok(resource.read(self.lease.token)?.0)
    }

    /// Writes `value` to `resource` under this grant's token; refused if a
    /// newer holder has used the resource, or while lost here.
    pub fn write(&self, resource: &mut FencedResource, value: u64) -> Result<(), FenceError> {
        self.check()?;
        resource.write(self.lease.token, value)?;
        Ok(())
    }

    fn check(&self) -> Result<(), FenceError> {
        if let Some(why) = self.lost.borrow().clone() {
            return Err(FenceError::Lost(why));
        }
        Ok(())
    }

    /// Releases the lock and waits for the servers to confirm; a guard
    /// already lost is still released at the servers (its lease may only
    /// have run out here) and reports why it was lost. Cancel-safe:
    /// dropped before it returns, the release goes on in the background.
    pub async fn release(mut self) -> Result<(), LockError> {
        self.shared.unregister(&self.lease.lock, self.lease.token);
        let lost = self.lost.borrow().clone();
        let result = self.shared.release(self.session, &self.lease).await;
        self.released = true;
        match lost {
            Some(why) => Err(why),
            None => result,
        }
    }
}

impl<E: Env> Drop for LockGuard<E> {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.shared.unregister(&self.lease.lock, self.lease.token);
        let (shared, session, lease) = (self.shared.clone(), self.session, self.lease.clone());
        let local = self.local.take();
        self.shared.env.spawn(async move {
            let _local = local;
            let _ = shared.release(session, &lease).await;
        });
    }
}

/// Why a fenced access through a [`LockGuard`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    /// The resource has accepted a newer token: another holder has it.
    #[error(transparent)]
    Stale(#[from] Stale),
    /// This client already knows the lock is lost.
    #[error("lock lost: {0}")]
    Lost(LockError),
}
