//! Jump consistent hash (Lamping & Veach, 2014).
//!
//! No table at all, O(log n) time, and near-perfect balance; the price is
//! that buckets are *positions* `0..n`: a node can only be added or removed
//! at the end of the list without moving other nodes' keys, and there are no
//! weights. Kept for comparison and for users whose membership only grows
//! and shrinks at the tail (e.g. numbered shards).

use super::hash::{mix64, KeyHash};
use super::select::select;
use super::view::{Members, NodeSpec, ViewError};
use super::{NodeId, Placement};

/// Extra jump attempts (with re-mixed hashes) tried per replica before
/// replica selection falls back to a scan; the scan guarantees termination
/// when zones force many skips.
const REPLICA_ATTEMPTS: u64 = 8;

/// The bucket of `key` among `n` buckets. Uses only integer arithmetic and
/// IEEE basic operations (correctly rounded everywhere), so the result is
/// the same on every platform.
#[inline]
pub fn jump_hash(mut key: u64, n: u32) -> u32 {
    debug_assert!(n > 0);
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(n) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// A jump-hash view: bucket `i` is `nodes[i]`.
#[derive(Clone, Debug)]
pub struct JumpView {
    members: Members,
}

impl JumpView {
    /// Builds a view; every node must have weight 1.
    pub fn build(epoch: u64, nodes: &[NodeSpec], replicas: usize) -> Result<Self, ViewError> {
        let members = Members::new(epoch, nodes, replicas)?;
        members.require_unweighted()?;
        Ok(JumpView { members })
    }

    /// Heap bytes held by this view (just the node list).
    pub fn memory_bytes(&self) -> usize {
        self.members.memory_bytes()
    }

    fn n(&self) -> u32 {
        self.members.nodes.len() as u32
    }
}

impl Placement for JumpView {
    fn epoch(&self) -> u64 {
        self.members.epoch
    }

    fn nodes(&self) -> &[NodeSpec] {
        &self.members.nodes
    }

    fn replicas(&self) -> usize {
        self.members.replicas
    }

    #[inline]
    fn owner_of_hash(&self, hash: KeyHash) -> NodeId {
        self.members.nodes[jump_hash(hash, self.n()) as usize].id
    }

    fn preference_of_hash(&self, hash: KeyHash, out: &mut Vec<NodeId>) {
        let n = self.n();
        let first = jump_hash(hash, n);
        let attempts = REPLICA_ATTEMPTS * self.members.replicas as u64;
        let rehashed = (1..=attempts).map(move |i| jump_hash(mix64(hash ^ mix64(i)), n));
        let scan = (1..n).map(move |i| (first + i) % n);
        select(&self.members, Some(first), rehashed.chain(scan), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from the paper's C++ implementation.
    #[test]
    fn matches_reference() {
        assert_eq!(jump_hash(0, 1), 0);
        let mut prev = 0;
        for n in 1..200 {
            let b = jump_hash(0xdead_beef, n);
            assert!(b < n);
            // Growing n moves the key only to the new bucket.
            assert!(b == prev || b == n - 1);
            prev = b;
        }
    }

    #[test]
    fn rejects_weights() {
        let e = JumpView::build(1, &[NodeSpec::new(1).with_weight(2)], 1).unwrap_err();
        assert!(matches!(e, ViewError::WeightUnsupported { .. }));
    }
}
