//! Which shard holds a key.
//!
//! This is the seam where the consistent-hashing ring (`src/ring`) plugs in:
//! implement [`Placement`] over a ring view. Until then [`HashPlacement`]
//! places keys by a stable hash modulo the shard count — fine for a fixed set
//! of shards (nothing is ever rebalanced here), wrong the moment shards come
//! and go, which is exactly what the ring is for.

use crate::env::NodeId;

/// Maps keys to the shard (participant node) that owns them.
pub trait Placement: Send + Sync {
    fn shard_for(&self, key: &str) -> NodeId;
    /// Every shard, in a stable order.
    fn shards(&self) -> &[NodeId];
}

/// Stable hash modulo the number of shards (FNV-1a, identical on every
/// platform and run).
#[derive(Debug, Clone)]
pub struct HashPlacement {
    shards: Vec<NodeId>,
}

impl HashPlacement {
    pub fn new(shards: Vec<NodeId>) -> Self {
        assert!(!shards.is_empty(), "a placement needs at least one shard");
        HashPlacement { shards }
    }
}

/// FNV-1a over the key's bytes.
pub fn stable_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Placement for HashPlacement {
    fn shard_for(&self, key: &str) -> NodeId {
        self.shards[(stable_hash(key) % self.shards.len() as u64) as usize]
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
        let p = HashPlacement::new(vec![2, 3, 4]);
        let keys: Vec<String> = (0..30).map(|i| format!("acct-{i}")).collect();
        let a: Vec<_> = keys.iter().map(|k| p.shard_for(k)).collect();
        let b: Vec<_> = keys.iter().map(|k| p.shard_for(k)).collect();
        assert_eq!(a, b);
        for s in [2, 3, 4] {
            assert!(a.contains(&s));
        }
    }
}
