//! Rendezvous / highest-random-weight hashing (Thaler & Ravishankar).
//!
//! Every node scores every key; the highest score owns it and the next
//! highest are its replicas. Movement is optimal for any change (only the
//! removed node's keys move; a new node takes only keys it now wins) and
//! there is no table, but a lookup costs O(n). Kept for comparison and for
//! small clusters.
//!
//! Weights use the logarithmic method (score = w / -ln u), which gives node
//! i a share of exactly w_i / Σw. The logarithm is [`det_ln`], computed from
//! IEEE basic operations only: the platform's `f64::ln` comes from libm and
//! is not guaranteed to round identically everywhere, and one differing bit
//! could make two nodes disagree on an owner.

use super::hash::{mix64, node_seed, KeyHash};
use super::select::select;
use super::view::{Members, NodeSpec, ViewError};
use super::{NodeId, Placement};

/// A rendezvous view.
#[derive(Clone, Debug)]
pub struct RendezvousView {
    members: Members,
    /// Per-node seed, from the node id only (never its list position).
    seeds: Vec<u64>,
    /// All weights equal: integer scores suffice (and are faster).
    uniform: bool,
}

impl RendezvousView {
    /// The view of `nodes` at `epoch` with `replicas` replicas per key.
    pub fn build(epoch: u64, nodes: &[NodeSpec], replicas: usize) -> Result<Self, ViewError> {
        let members = Members::new(epoch, nodes, replicas)?;
        let seeds = members.nodes.iter().map(|n| node_seed(u64::from(n.id))).collect();
        let w0 = members.nodes[0].weight;
        let uniform = members.nodes.iter().all(|n| n.weight == w0);
        Ok(RendezvousView {
            members,
            seeds,
            uniform,
        })
    }

    /// Heap bytes held by this view.
    pub fn memory_bytes(&self) -> usize {
        self.members.memory_bytes() + self.seeds.capacity() * 8
    }

    /// The score of node `i` for `hash`, as a totally ordered key: higher
    /// wins, ties (practically impossible) go to the larger node id.
    #[inline]
    fn score(&self, hash: KeyHash, i: usize) -> (u64, NodeId) {
        // 52 bits, so `k + 0.5` below is exact and the float score is a
        // monotone function of `k`: the integer fast path for equal weights
        // orders nodes the same way the weighted path would.
        let k = mix64(hash ^ self.seeds[i]) >> 12;
        let id = self.members.nodes[i].id;
        if self.uniform {
            return (k, id);
        }
        // u in (0, 1); -ln u in (0, ~37]; score = w / -ln u > 0.
        let u = (k as f64 + 0.5) * (1.0 / (1u64 << 52) as f64);
        let s = f64::from(self.members.nodes[i].weight) / -det_ln(u);
        // Positive finite f64s order like their bit patterns.
        (s.to_bits(), id)
    }
}

impl Placement for RendezvousView {
    fn epoch(&self) -> u64 {
        self.members.epoch
    }

    fn nodes(&self) -> &[NodeSpec] {
        &self.members.nodes
    }

    fn replicas(&self) -> usize {
        self.members.replicas
    }

    fn owner_of_hash(&self, hash: KeyHash) -> NodeId {
        (0..self.members.nodes.len())
            .map(|i| self.score(hash, i))
            .max()
            .map(|(_, id)| id)
            .expect("views are never empty")
    }

    fn preference_of_hash(&self, hash: KeyHash, out: &mut Vec<NodeId>) {
        let mut order: Vec<((u64, NodeId), u32)> = (0..self.members.nodes.len())
            .map(|i| (self.score(hash, i), i as u32))
            .collect();
        order.sort_unstable_by_key(|o| std::cmp::Reverse(o.0));
        select(&self.members, None, order.into_iter().map(|(_, i)| i), out);
    }
}

/// Natural logarithm of a positive finite `x` from IEEE basic operations
/// only (bit manipulation, +, −, ×, ÷), so it is bit-identical on every
/// platform. Accurate to a few ulps, which is all placement needs; what it
/// must be is *reproducible*.
pub fn det_ln(x: f64) -> f64 {
    debug_assert!(x > 0.0 && x.is_finite());
    let mut bits = x.to_bits();
    let mut e: i64 = ((bits >> 52) & 0x7ff) as i64 - 1023;
    if (bits >> 52) & 0x7ff == 0 {
        // Subnormal: scale into the normal range first.
        let y = x * (1u64 << 54) as f64;
        bits = y.to_bits();
        e = ((bits >> 52) & 0x7ff) as i64 - 1023 - 54;
    }
    // Mantissa m in [1, 2), then folded into [√½, √2) so |s| ≤ 0.172.
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    // ln m = 2·atanh(s) = 2(s + s³/3 + s⁵/5 + …), s = (m−1)/(m+1).
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut sum = 0.0;
    let mut k = 25.0;
    while k >= 1.0 {
        sum = sum * s2 + 1.0 / k;
        k -= 2.0;
    }
    e as f64 * std::f64::consts::LN_2 + 2.0 * s * sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn det_ln_is_accurate() {
        for &x in &[1e-300, 1e-17, 0.001, 0.3, 0.5, 0.7072, 0.99999, 1.0, 2.0, 1e10] {
            let (a, b) = (det_ln(x), x.ln());
            assert!((a - b).abs() <= 1e-14 * b.abs().max(1.0), "{x}: {a} vs {b}");
        }
        assert!((det_ln(f64::MIN_POSITIVE / 4.0) - (f64::MIN_POSITIVE / 4.0).ln()).abs() < 1e-10);
    }
}
