//! The weighted virtual-node ring.
//!
//! Each node of weight `w` gets `vnodes · w` points on a 64-bit circle
//! ([`super::hash::point`]); a key belongs to the first point at or after
//! its hash, wrapping at the top. Many points per node average out the arc
//! lengths (relative spread of a node's share ≈ 1/√(vnodes·w)), and because
//! points depend only on their own node, a membership change moves exactly
//! the keys on the arcs that changed hands.
//!
//! Layout, chosen for lookup speed:
//! - one flat array of `(point, node index)` entries sorted by point, so the
//!   point found and its owner share a cache line (array of structs rather
//!   than two parallel arrays: one cache miss instead of two);
//! - an index on the top `bits` bits of the hash, with `2^bits ≈` the number
//!   of points: `index[b]` is the first entry whose point has top bits `≥ b`.
//!   A lookup reads two adjacent index words and then searches the one to
//!   two entries of its bucket, instead of ~17 dependent probes of a binary
//!   search over 160 000 points.

use super::hash::{point, KeyHash};
use super::select::select;
use super::view::{Members, NodeSpec, ViewError};
use super::{NodeId, Placement};

/// Upper bound on the number of points in one ring (16 bytes each, so the
/// entry array stays below 512 MiB).
pub const MAX_POINTS: u64 = 1 << 25;

/// Largest index: 2^22 buckets (16 MiB of index).
const MAX_INDEX_BITS: u32 = 22;

/// How a ring view is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Virtual nodes per unit of weight.
    pub vnodes: u32,
    /// Replicas per key (R).
    pub replicas: usize,
}

impl Default for RingConfig {
    /// 160 virtual nodes (relative spread of a node's share ≈ 8 %) and 3
    /// replicas.
    fn default() -> Self {
        RingConfig {
            vnodes: 160,
            replicas: 3,
        }
    }
}

impl RingConfig {
    /// This configuration with a different R.
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// This configuration with a different number of virtual nodes per unit
    /// of weight.
    pub fn with_vnodes(mut self, vnodes: u32) -> Self {
        self.vnodes = vnodes;
        self
    }
}

/// One point on the ring and the index (in the view's node list) of the
/// node that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Entry {
    pub(crate) point: u64,
    pub(crate) node: u32,
}

/// An immutable ring view: build a new one (with a higher epoch) for every
/// membership change, and compare two with [`super::diff_ranges`].
#[derive(Clone, Debug)]
pub struct RingView {
    pub(crate) members: Members,
    config: RingConfig,
    pub(crate) entries: Vec<Entry>,
    /// `index[b]` = first entry whose point's top `bits` bits are `>= b`;
    /// `index.len() == 2^bits + 1`, the last word is `entries.len()`.
    index: Vec<u32>,
    /// `64 - bits`: shift that turns a hash into its bucket.
    shift: u32,
}

impl RingView {
    /// Builds and validates a ring view.
    pub fn build(epoch: u64, nodes: &[NodeSpec], config: RingConfig) -> Result<Self, ViewError> {
        let members = Members::new(epoch, nodes, config.replicas)?;
        if config.vnodes == 0 {
            return Err(ViewError::ZeroVnodes);
        }
        let total = members
            .total_weight()
            .saturating_mul(u64::from(config.vnodes));
        if total > MAX_POINTS {
            return Err(ViewError::TooManyPoints {
                points: total,
                max: MAX_POINTS,
            });
        }
        let mut entries = Vec::with_capacity(total as usize);
        for (i, n) in members.nodes.iter().enumerate() {
            // Within limits by the MAX_POINTS check: weight · vnodes ≤ 2^25.
            let count = n.weight * config.vnodes;
            for v in 0..count {
                entries.push(Entry {
                    point: point(n.id.0, v),
                    node: i as u32,
                });
            }
        }
        // Ties (two equal 64-bit points) are broken by node id, not by list
        // position, so the ring does not depend on the order of `nodes`.
        let ids: Vec<NodeId> = members.nodes.iter().map(|n| n.id).collect();
        entries.sort_unstable_by_key(|e| (e.point, ids[e.node as usize]));

        let bits = index_bits(entries.len());
        let shift = 64 - bits;
        let buckets = 1usize << bits;
        let mut index = Vec::with_capacity(buckets + 1);
        let mut pos = 0usize;
        for b in 0..buckets as u64 {
            while pos < entries.len() && (entries[pos].point >> shift) < b {
                pos += 1;
            }
            index.push(pos as u32);
        }
        index.push(entries.len() as u32);

        let view = RingView {
            members,
            config,
            entries,
            index,
            shift,
        };
        debug_assert!(view.check_invariants());
        Ok(view)
    }

    /// The configuration this view was built with.
    pub fn config(&self) -> RingConfig {
        self.config
    }

    /// Number of points on the ring.
    pub fn points(&self) -> usize {
        self.entries.len()
    }

    /// Iterates the ring's points in order, with their owners.
    pub fn iter_points(&self) -> impl Iterator<Item = (u64, NodeId)> + '_ {
        self.entries
            .iter()
            .map(|e| (e.point, self.members.nodes[e.node as usize].id))
    }

    /// Heap bytes held by this view (entries, index, node list).
    pub fn memory_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.index.capacity() * std::mem::size_of::<u32>()
            + self.members.memory_bytes()
    }

    /// Position in `entries` of the point that owns `hash`: the first point
    /// `>= hash`, or 0 when `hash` is above every point (wrap-around).
    #[inline]
    pub(crate) fn position(&self, hash: KeyHash) -> usize {
        let b = (hash >> self.shift) as usize;
        // `b < 2^bits`, so `b + 1 < index.len()`.
        let lo = self.index[b] as usize;
        let hi = self.index[b + 1] as usize;
        let bucket = &self.entries[lo..hi];
        let mut i = lo;
        // Buckets hold ~1 point on average; a linear scan has no
        // unpredictable halving and stops at the first point >= hash.
        for e in bucket {
            if e.point >= hash {
                break;
            }
            i += 1;
        }
        if i == self.entries.len() {
            0
        } else {
            i
        }
    }

    /// Node indexes along the ring starting at `pos`, one full turn.
    pub(crate) fn walk(&self, pos: usize) -> impl Iterator<Item = u32> + '_ {
        let (a, b) = self.entries.split_at(pos);
        b.iter().chain(a.iter()).map(|e| e.node)
    }

    /// Structural invariants, asserted after every build in debug builds.
    fn check_invariants(&self) -> bool {
        let sorted = self.entries.windows(2).all(|w| w[0].point <= w[1].point);
        let index_ok = self.index.windows(2).all(|w| w[0] <= w[1])
            && self.index.iter().enumerate().all(|(b, &p)| {
                let p = p as usize;
                let below = p == 0 || (self.entries[p - 1].point >> self.shift) < b as u64;
                let at =
                    p == self.entries.len() || (self.entries[p].point >> self.shift) >= b as u64;
                below && at
            });
        sorted && index_ok
    }
}

/// About one point per bucket: fewer buckets make buckets longer, more make
/// the index larger than the entries without saving probes.
fn index_bits(points: usize) -> u32 {
    let mut bits = 1;
    while bits < MAX_INDEX_BITS && (1usize << (bits + 1)) <= points {
        bits += 1;
    }
    bits
}

impl Placement for RingView {
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
        let e = self.entries[self.position(hash)];
        self.members.nodes[e.node as usize].id
    }

    fn preference_of_hash(&self, hash: KeyHash, out: &mut Vec<NodeId>) {
        select(&self.members, None, self.walk(self.position(hash)), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u64) -> Vec<NodeSpec> {
        (0..n).map(NodeSpec::new).collect()
    }

    /// The indexed lookup agrees with a plain binary search everywhere,
    /// including the wrap-around above the last point and exact hits.
    #[test]
    fn index_lookup_matches_binary_search() {
        for (n, v) in [(1, 1), (3, 7), (10, 40), (50, 160)] {
            let ring = RingView::build(
                1,
                &nodes(n),
                RingConfig {
                    vnodes: v,
                    replicas: 1,
                },
            )
            .unwrap();
            let reference = |h: u64| {
                let p = ring.entries.partition_point(|e| e.point < h);
                if p == ring.entries.len() {
                    0
                } else {
                    p
                }
            };
            let mut probes: Vec<u64> = vec![0, 1, u64::MAX, u64::MAX - 1];
            for e in &ring.entries {
                probes.extend([e.point, e.point.wrapping_sub(1), e.point.wrapping_add(1)]);
            }
            let mut x = 7u64;
            for _ in 0..2000 {
                x = super::super::hash::mix64(x);
                probes.push(x);
            }
            for h in probes {
                assert_eq!(ring.position(h), reference(h), "hash {h:#x}");
            }
        }
    }

    #[test]
    fn node_order_does_not_matter() {
        let mut ns = nodes(20);
        let a = RingView::build(1, &ns, RingConfig::default()).unwrap();
        ns.reverse();
        let b = RingView::build(1, &ns, RingConfig::default()).unwrap();
        assert!(a.iter_points().eq(b.iter_points()));
    }

    #[test]
    fn weight_multiplies_points() {
        let ns = vec![NodeSpec::new(1), NodeSpec::new(2).with_weight(3)];
        let r = RingView::build(
            1,
            &ns,
            RingConfig {
                vnodes: 10,
                replicas: 2,
            },
        )
        .unwrap();
        assert_eq!(r.points(), 40);
        assert_eq!(r.iter_points().filter(|p| p.1 == NodeId(2)).count(), 30);
    }

    #[test]
    fn errors_not_panics() {
        let cfg = RingConfig::default();
        assert_eq!(
            RingView::build(1, &[], cfg).unwrap_err(),
            ViewError::NoNodes
        );
        assert_eq!(
            RingView::build(1, &[NodeSpec::new(1), NodeSpec::new(1)], cfg).unwrap_err(),
            ViewError::DuplicateNode(NodeId(1))
        );
        assert_eq!(
            RingView::build(
                1,
                &[NodeSpec::new(1).with_weight(0)],
                RingConfig {
                    vnodes: 1,
                    replicas: 1
                }
            )
            .unwrap_err(),
            ViewError::ZeroWeight(NodeId(1))
        );
        assert_eq!(
            RingView::build(1, &nodes(2), cfg).unwrap_err(),
            ViewError::TooManyReplicas {
                replicas: 3,
                nodes: 2
            }
        );
        assert_eq!(
            RingView::build(
                1,
                &nodes(2),
                RingConfig {
                    vnodes: 0,
                    replicas: 1
                }
            )
            .unwrap_err(),
            ViewError::ZeroVnodes
        );
        assert!(matches!(
            RingView::build(
                1,
                &[NodeSpec::new(1).with_weight(u32::MAX)],
                cfg.with_replicas(1)
            ),
            Err(ViewError::TooManyPoints { .. })
        ));
    }
}
