//! Consistent hashing with bounded loads (Mirrokni, Thorup & Zadimoghaddam,
//! 2018), over a [`RingView`].
//!
//! Plain consistent hashing bounds a node's load only statistically (a node
//! with a long arc gets more keys). Here every node of weight `w` has a hard
//! cap of `ceil((1+ε) · m · w / W)` keys for `m` keys and total weight `W`;
//! a key goes to the first node clockwise from its hash that is below its
//! cap. ε trades balance against movement: a small ε flattens the load but
//! lets one membership change cascade further along the ring.
//!
//! ε is quantised to parts per million and the cap computed in integer
//! arithmetic: in `f64`, `(1 + 0.1) · 200000 / 100` is `2200.0000000000005` and
//! its ceiling 2201, one key above the promised bound. Integers make the
//! bound exact (and trivially identical on every platform).
//!
//! The assignment is a function of the *set* of keys, not of their arrival
//! order: keys are placed in ascending hash order. So every process that
//! holds the same ring and the same key set computes the same assignment.
//! Keys are identified by their 64-bit hash ([`super::hash_key`]); two keys
//! with equal hashes are treated as one key (for a million keys the chance
//! of any such pair is about 3·10⁻⁸).

use super::hash::KeyHash;
use super::select::select;
use super::view::{NodeSpec, ViewError};
use super::vnode::RingView;
use super::{NodeId, Placement};

/// Parts per million: the unit ε is quantised to.
const PPM: u128 = 1_000_000;

/// Largest ε accepted (1000, i.e. caps of 1001× the average): keeps the cap
/// arithmetic inside `u128` for any key count and weight.
const MAX_EPSILON: f64 = 1000.0;

/// `ceil((1 + ε) · m · w / W)` with ε = `eps_ppm` / 10⁶, exactly.
pub fn cap(eps_ppm: u64, keys: u64, weight: u32, total_weight: u64) -> u64 {
    let num = (PPM + u128::from(eps_ppm)) * u128::from(keys) * u128::from(weight);
    let den = PPM * u128::from(total_weight);
    num.div_ceil(den) as u64
}

/// A bounded-load assignment of a fixed key set.
#[derive(Clone, Debug)]
pub struct BoundedLoad {
    ring: RingView,
    epsilon: f64,
    eps_ppm: u64,
    /// Cap per node index.
    caps: Vec<u64>,
    /// Keys assigned per node index.
    loads: Vec<u64>,
    /// `(key hash, node index)`, sorted by hash, hashes unique.
    assigned: Vec<(KeyHash, u32)>,
}

impl BoundedLoad {
    /// Assigns `keys` (as hashes) over `ring` with slack `epsilon`, which
    /// must lie in [10⁻⁶, 1000] and is rounded to a multiple of 10⁻⁶.
    pub fn new<I>(ring: RingView, epsilon: f64, keys: I) -> Result<Self, ViewError>
    where
        I: IntoIterator<Item = KeyHash>,
    {
        if !(epsilon.is_finite() && (0.000_000_5..=MAX_EPSILON).contains(&epsilon)) {
            return Err(ViewError::BadEpsilon(epsilon));
        }
        // In range, so the rounded value is in [1, 10⁹] and the cast exact.
        let eps_ppm = (epsilon * 1e6).round() as u64;
        let mut hashes: Vec<KeyHash> = keys.into_iter().collect();
        hashes.sort_unstable();
        hashes.dedup();
        let m = hashes.len() as u64;
        let total_w = ring.members.total_weight();
        let caps: Vec<u64> = ring
            .members
            .nodes
            .iter()
            .map(|n| cap(eps_ppm, m, n.weight, total_w))
            .collect();
        let total_cap: u64 = caps.iter().sum();
        assert!(total_cap >= m, "caps {total_cap} below key count {m}");

        let mut loads = vec![0u64; caps.len()];
        let mut assigned = Vec::with_capacity(hashes.len());
        for h in hashes {
            let node = ring
                .walk(ring.position(h))
                .find(|&i| loads[i as usize] < caps[i as usize])
                .expect("total capacity exceeds the key count, so some node has room");
            loads[node as usize] += 1;
            assigned.push((h, node));
        }
        let b = BoundedLoad {
            ring,
            epsilon,
            eps_ppm,
            caps,
            loads,
            assigned,
        };
        debug_assert!(b.loads.iter().zip(&b.caps).all(|(l, c)| l <= c));
        Ok(b)
    }

    /// The ring this assignment runs over.
    pub fn ring(&self) -> &RingView {
        &self.ring
    }

    /// ε as given.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }

    /// ε in parts per million, as used for the caps.
    pub fn epsilon_ppm(&self) -> u64 {
        self.eps_ppm
    }

    /// Number of distinct keys assigned.
    pub fn keys(&self) -> usize {
        self.assigned.len()
    }

    /// `(node, load, cap)` for every node, in view order.
    pub fn loads(&self) -> impl Iterator<Item = (NodeId, u64, u64)> + '_ {
        self.ring
            .members
            .nodes
            .iter()
            .zip(self.loads.iter().zip(&self.caps))
            .map(|(n, (&l, &c))| (n.id, l, c))
    }

    /// Heap bytes held (ring plus assignment).
    pub fn memory_bytes(&self) -> usize {
        self.ring.memory_bytes()
            + (self.caps.capacity() + self.loads.capacity()) * 8
            + self.assigned.capacity() * std::mem::size_of::<(KeyHash, u32)>()
    }

    fn owner_index(&self, hash: KeyHash) -> u32 {
        match self.assigned.binary_search_by_key(&hash, |&(h, _)| h) {
            Ok(i) => self.assigned[i].1,
            // Not in the key set: where the key would go if it were added
            // next (first node clockwise with room), without changing
            // anything. If every node is full (only possible with no keys),
            // the plain ring owner.
            Err(_) => {
                let pos = self.ring.position(hash);
                self.ring
                    .walk(pos)
                    .find(|&i| self.loads[i as usize] < self.caps[i as usize])
                    .unwrap_or(self.ring.node_at(pos))
            }
        }
    }
}

impl Placement for BoundedLoad {
    fn epoch(&self) -> u64 {
        self.ring.members.epoch
    }

    fn nodes(&self) -> &[NodeSpec] {
        &self.ring.members.nodes
    }

    fn replicas(&self) -> usize {
        self.ring.members.replicas
    }

    fn owner_of_hash(&self, hash: KeyHash) -> NodeId {
        self.ring.members.nodes[self.owner_index(hash) as usize].id
    }

    /// The bounded owner first, then distinct nodes (and zones) clockwise
    /// from the key's point. Only the owner is load-bounded.
    fn preference_of_hash(&self, hash: KeyHash, out: &mut Vec<NodeId>) {
        let owner = self.owner_index(hash);
        let walk = self.ring.walk(self.ring.position(hash));
        select(&self.ring.members, Some(owner), walk, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The case that made caps integer: f64 gives 2200.0000000000005 here.
    #[test]
    fn cap_is_exact() {
        let eps = std::hint::black_box(0.1f64);
        assert!((1.0 + eps) * 200_000.0 / 100.0 > 2200.0);
        assert_eq!(cap(100_000, 200_000, 1, 100), 2200);
        assert_eq!(cap(100_000, 200_001, 1, 100), 2201);
        assert_eq!(cap(50_000, 10, 3, 4), 8); // ceil(1.05 · 7.5) = ceil(7.875)
        assert_eq!(cap(1, 0, 1, 1), 0);
    }
}
