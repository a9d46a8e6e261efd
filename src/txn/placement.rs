//! Which shard holds a key: the consistent-hashing ring (`src/ring`) over
//! the shards, so that a shard added later takes over only its share of
//! the keys instead of reshuffling almost all of them, as `hash % n` would.

use crate::env::NodeId;
use crate::ring::{self, NodeSpec, RingConfig, RingView, ViewError};

/// Maps keys to the shard (participant node) that owns them.
pub trait Placement: Send + Sync {
    fn shard_for(&self, key: &str) -> NodeId;
    /// Every shard, in a stable order.
    fn shards(&self) -> &[NodeId];
}

/// Shards on a weighted virtual-node ring (160 points each, sha1-placed):
/// the same mapping on every node, platform and release.
#[derive(Debug, Clone)]
pub struct RingPlacement {
    ring: RingView,
    shards: Vec<NodeId>,
}

impl RingPlacement {
    /// Fails on an empty or duplicated shard list.
    pub fn new(shards: Vec<NodeId>) -> Result<Self, ViewError> {
        let nodes: Vec<NodeSpec> = shards.iter().map(|&s| NodeSpec::new(u64::from(s))).collect();
        let ring = RingView::build(0, &nodes, RingConfig::default().with_replicas(1))?;
        Ok(RingPlacement { ring, shards })
    }
}

impl Placement for RingPlacement {
    fn shard_for(&self, key: &str) -> NodeId {
        let owner = ring::Placement::owner(&self.ring, key.as_bytes());
        NodeId::try_from(owner.0).expect("ring nodes are shard ids")
    }
    fn shards(&self) -> &[NodeId] {
        &self.shards
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_stable_and_uses_every_shard() {
        let p = RingPlacement::new(vec![2, 3, 4]).unwrap();
        let keys: Vec<String> = (0..30).map(|i| format!("acct-{i}")).collect();
        let a: Vec<_> = keys.iter().map(|k| p.shard_for(k)).collect();
        let b: Vec<_> = keys.iter().map(|k| p.shard_for(k)).collect();
        assert_eq!(a, b);
        for s in [2, 3, 4] {
            assert!(a.contains(&s));
        }
    }

    #[test]
    fn bad_shard_lists_are_refused() {
        assert!(RingPlacement::new(vec![]).is_err());
        assert!(RingPlacement::new(vec![2, 2]).is_err());
    }
}
