//! Which shard holds a key: the consistent-hashing ring (`src/ring`) over
//! the shards, so that a shard added later takes over only its share of
//! the keys instead of reshuffling almost all of them, as `hash % n` would.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::env::{Env, NodeId};
use crate::log::client::Client;
use crate::ring::{self, NodeSpec, RingConfig, RingView, ViewError};
use crate::shard::directory::{Directory, DirectoryOutput, DirectoryQuery, Views};

/// Maps keys to the shard (participant node) that owns them.
pub trait ShardMap: Send + Sync {
    /// The shard that owns `key`.
    fn shard_for(&self, key: &str) -> NodeId;
    /// Every shard, in a stable order.
    fn shards(&self) -> &[NodeId];
    /// `shard` refused a key it does not serve, its ring epoch being
    /// `epoch` ([`super::AbortReason::NotServed`]): the map may be out of
    /// date. Nothing to do for a map that never changes.
    fn refused(&self, shard: NodeId, epoch: u64) {
        let _ = (shard, epoch);
    }
}

/// Shards on a weighted virtual-node ring (160 points each, sha1-placed):
/// the same mapping on every node, platform and release.
#[derive(Debug, Clone)]
pub struct RingShardMap {
    ring: RingView,
    shards: Vec<NodeId>,
}

impl RingShardMap {
    /// Fails on an empty or duplicated shard list.
    pub fn new(shards: Vec<NodeId>) -> Result<Self, ViewError> {
        let nodes: Vec<NodeSpec> = shards.iter().map(|&s| NodeSpec::new(s)).collect();
        let ring = RingView::build(0, &nodes, RingConfig::default().with_replicas(1))?;
        Ok(RingShardMap { ring, shards })
    }
}

impl ShardMap for RingShardMap {
    fn shard_for(&self, key: &str) -> NodeId {
        ring::Placement::owner(&self.ring, key.as_bytes())
    }
    fn shards(&self) -> &[NodeId] {
        &self.shards
    }
}

/// Shards by the ring views of a bank whose accounts move
/// ([`crate::shard::directory`]; a ring node is a shard's node id): a
/// key's owner in the next view if a rebalance runs (where it is once its
/// move is done), else in the current one; before any view, the founding
/// shard, which serves every key until the first. A shard's refusal marks
/// the views stale ([`ViewShardMap::stale`]); whoever holds a client of
/// the directory reads them again and [`ViewShardMap::set`]s them (a
/// [`DirectoryRouting`] does, for a [`super::client::TxnClient`]).
#[derive(Debug)]
pub struct ViewShardMap {
    shards: Vec<NodeId>,
    state: Mutex<Routing>,
}

#[derive(Debug, Default)]
struct Routing {
    views: Views,
    /// The newest view's ring, built once per `set`.
    ring: Option<RingView>,
    /// A shard refused a key at this epoch or later.
    refused_at: Option<u64>,
}

impl ViewShardMap {
    /// The bank's shards, the founding one first. Stale until views are
    /// first set: a client starting on a bank whose accounts have moved
    /// reads where they are before its first transaction, rather than
    /// learn it from a refusal.
    pub fn new(shards: Vec<NodeId>) -> Self {
        assert!(!shards.is_empty(), "a bank has at least its founding shard");
        let never_read = Routing {
            refused_at: Some(0),
            ..Routing::default()
        };
        ViewShardMap {
            shards,
            state: Mutex::new(never_read),
        }
    }

    fn state(&self) -> MutexGuard<'_, Routing> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes by `views` from now on (older views than the ones held are
    /// ignored), and clears a refusal they answer.
    pub fn set(&self, views: Views) {
        let mut state = self.state();
        if views.epoch() < state.views.epoch() {
            return;
        }
        if state.refused_at.is_some_and(|e| e <= views.epoch()) {
            state.refused_at = None;
        }
        state.ring = views
            .next
            .as_ref()
            .or(views.current.as_ref())
            .and_then(|s| s.build().ok());
        state.views = views;
    }

    /// Whether a shard refused a key since the views were last set: they
    /// should be read again.
    pub fn stale(&self) -> bool {
        self.state().refused_at.is_some()
    }
}

impl ShardMap for ViewShardMap {
    fn shard_for(&self, key: &str) -> NodeId {
        match &self.state().ring {
            Some(ring) => ring::Placement::owner(ring, key.as_bytes()),
            None => self.shards[0],
        }
    }
    fn shards(&self) -> &[NodeId] {
        &self.shards
    }
    fn refused(&self, _shard: NodeId, epoch: u64) {
        let mut state = self.state();
        state.refused_at = Some(state.refused_at.map_or(epoch, |e| e.min(epoch)));
    }
}

/// How long one directory replica is given to answer a read of the views.
const VIEW_ATTEMPT: Duration = Duration::from_millis(100);
/// How long a read of the views is tried before routing on as before.
const VIEW_READ: Duration = Duration::from_millis(300);
/// The pause after a read of the views that failed, so that a client
/// whose directory is down does not spin on it.
const VIEW_READ_PAUSE: Duration = Duration::from_millis(50);

/// How a client of a bank whose accounts move finds them: the views it
/// routes by, and the directory replicas it reads them again from when a
/// shard refuses a key.
#[derive(Debug, Clone)]
pub struct DirectoryRouting {
    /// The views (the client's [`ShardMap`]).
    pub map: Arc<ViewShardMap>,
    /// The directory's replicas.
    pub directory: Vec<NodeId>,
}

impl DirectoryRouting {
    /// Routing over `shards` (the founding one first) by the views of the
    /// directory on `directory`; before they are first read, the founding
    /// shard serves every key.
    pub fn new(shards: Vec<NodeId>, directory: Vec<NodeId>) -> Self {
        DirectoryRouting {
            map: Arc::new(ViewShardMap::new(shards)),
            directory,
        }
    }

    /// Reads the directory's views on `env`'s node if a shard refused a
    /// key since they were last read; whether it read them. Only between
    /// transactions: the directory's client reads the node's messages
    /// meanwhile, and drops what is not its own.
    pub async fn refresh<E: Env>(&self, env: &E) -> bool {
        if !self.map.stale() {
            return false;
        }
        let mut directory = Client::<E, Directory>::new(env.clone(), self.directory.clone());
        directory.attempt_timeout = VIEW_ATTEMPT;
        let read = directory.read(DirectoryQuery::Views, VIEW_READ).await;
        tracing::debug!(?read, "views read");
        match read {
            Ok(DirectoryOutput::Views(views)) => {
                self.map.set(views);
                true
            }
            _ => {
                env.sleep(VIEW_READ_PAUSE).await;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_stable_and_uses_every_shard() {
        let p = RingShardMap::new(vec![2, 3, 4]).unwrap();
        let keys: Vec<String> = (0..30).map(|i| format!("acct-{i}")).collect();
        let a: Vec<_> = keys.iter().map(|k| p.shard_for(k)).collect();
        let b: Vec<_> = keys.iter().map(|k| p.shard_for(k)).collect();
        assert_eq!(a, b);
        for s in [2, 3, 4] {
            assert!(a.contains(&s));
        }
    }

    /// A map never read is stale; before any view the founding shard
    /// serves everything; a refusal marks the views stale until views at
    /// least as new are set; older views (a late read) never replace
    /// newer ones.
    #[test]
    fn routing_by_views_follows_the_newest_and_hears_refusals() {
        use crate::shard::directory::ViewSpec;
        let map = ViewShardMap::new(vec![2, 3, 4]);
        assert_eq!(map.shard_for("acct-1"), 2);
        assert!(map.stale(), "never read");
        map.set(Views::default());
        assert!(!map.stale(), "no view yet is an answer too");
        assert_eq!(map.shard_for("acct-1"), 2);
        map.refused(2, 1);
        assert!(map.stale());
        let spec = |epoch, groups| ViewSpec {
            epoch,
            groups,
            vnodes: 4,
        };
        let only_3 = Views {
            current: Some(spec(1, vec![(2, 1)])),
            next: Some(spec(2, vec![(3, 1)])),
        };
        map.set(only_3);
        assert!(!map.stale(), "views of epoch 2 answer a refusal at epoch 1");
        assert_eq!(map.shard_for("acct-1"), 3, "the next view's owner first");
        let late = Views {
            current: Some(spec(1, vec![(2, 1)])),
            next: None,
        };
        map.set(late);
        assert_eq!(map.shard_for("acct-1"), 3, "an older read is ignored");
        map.refused(3, 5);
        map.set(Views {
            current: Some(spec(2, vec![(3, 1)])),
            next: None,
        });
        assert!(map.stale(), "views older than the refusal leave it stale");
    }

    #[test]
    fn bad_shard_lists_are_refused() {
        assert!(RingShardMap::new(vec![]).is_err());
        assert!(RingShardMap::new(vec![2, 2]).is_err());
    }

    /// One `NodeId` across the crate: a ring built from the cluster's node
    /// ids answers with those ids, and the shard map is that ring's owner.
    #[test]
    fn the_shard_map_is_the_rings_owner_in_the_clusters_ids() {
        let shards: Vec<NodeId> = vec![2, 3, 4];
        let nodes: Vec<NodeSpec> = shards.iter().map(|&s| NodeSpec::new(s)).collect();
        let ring = RingView::build(0, &nodes, RingConfig::default().with_replicas(1)).unwrap();
        let map = RingShardMap::new(shards).unwrap();
        for i in 0..100 {
            let key = format!("acct-{i}");
            let owner: NodeId = ring::Placement::owner(&ring, key.as_bytes());
            assert_eq!(map.shard_for(&key), owner);
        }
    }

    /// Which shard owns an account is part of the cluster's data layout:
    /// every client and shard, in every process, platform and release, must
    /// agree. Pinned for a 3-node cluster's shards (ids 1001..1003).
    #[test]
    fn the_owners_of_accounts_are_pinned() {
        let p = RingShardMap::new(vec![1001, 1002, 1003]).unwrap();
        let owners: Vec<NodeId> = (0..12).map(|i| p.shard_for(&format!("acct-{i}"))).collect();
        assert_eq!(
            owners,
            [1002, 1002, 1001, 1001, 1002, 1003, 1002, 1003, 1001, 1002, 1001, 1001]
        );
    }
}
