//! The weighted virtual-node ring.
//!
//! Each node of weight `w` gets `vnodes · w` points on a 64-bit circle
//! ([`super::hash::point`]); a key belongs to the first point at or after
//! its hash, wrapping at the top. Many points per node average out the arc
//! lengths (relative spread of a node's share ≈ 1/√(vnodes·w)), and because
//! points depend only on their own node, a membership change moves exactly
//! the keys on the arcs that changed hands.
//!
//! Layout, chosen for lookup speed (a few cached reads and no
//! data-dependent branch per lookup):
//! - the full sorted points (`u64`) are kept for exactness, iteration and
//!   diffs, but a lookup rarely touches them;
//! - an index on the top `bits` bits of the hash, with four to eight points
//!   per bucket on average: `index[b]` is the first point whose top bits are
//!   `≥ b`. One `u32` per four to eight points (128 KiB for 160 000 points),
//!   it replaces the ~17 dependent probes of a binary search with one read;
//! - per point, its *fragment* (the 16 hash bits that follow the index bits)
//!   in one `u16` array and its owner's node index in another. A lookup
//!   compares the key's fragment with a fixed window of `WINDOW`
//!   fragments starting at its bucket (32 bytes, one or two cache lines),
//!   masks out the lanes past the bucket and counts those below the key:
//!   fixed-width code the compiler turns into a few vector instructions, and
//!   no branch that depends on the data, so consecutive lookups overlap
//!   in the pipeline instead of each paying a mispredicted loop exit. Only
//!   when the successor's fragment equals the key's (chance about 2⁻¹⁶) or
//!   the bucket is larger than the window does it take an exact scan that
//!   reads the full points, so results are exactly those of a binary search
//!   over the full points. At 1000 nodes × 160 vnodes the hot data is
//!   313 KiB of fragments, 313 KiB of node indexes and 128 KiB of index,
//!   which fits a 1 MiB L2.

use super::hash::{point, KeyHash};
use super::select::select;
use super::view::{Members, NodeSpec, ViewError};
use super::{NodeId, Placement};

/// Upper bound on the number of points in one ring (16 bytes each, so the
/// entry array stays below 512 MiB).
pub const MAX_POINTS: u64 = 1 << 25;

/// Largest index: 2^22 buckets (16 MiB of index). Must stay ≤ 48 so that a
/// 16-bit fragment covers the bits right below the index bits.
const MAX_INDEX_BITS: u32 = 22;

/// Target points per index bucket, as a power of two (a mean of 4 to 8):
/// buckets rarely reach [`WINDOW`] (16 or more points: under 1 % of
/// buckets at mean 8, 0.005 % at 1000 × 160's mean of 4.9) while the index
/// stays small.
const POINTS_PER_BUCKET_LOG2: u32 = 2;

/// Fragments compared per lookup on the branch-free path: 32 bytes, two
/// SSE registers. Measured at 1000 × 160 (ad-hoc min-of-batches loop, one
/// process): 16 lanes over a mean of 4.9 points per bucket took 12 ns per
/// pre-hashed lookup, 8 lanes over 2.4 took 15 ns, 32 lanes over 9.8 took
/// 27 ns, and the previous early-exit scan 27 ns.
const WINDOW: usize = 16;

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

/// An immutable ring view: build a new one (with a higher epoch) for every
/// membership change, and compare two with [`super::diff_ranges`].
#[derive(Clone, Debug)]
pub struct RingView {
    pub(crate) members: Members,
    config: RingConfig,
    /// All points, sorted (ties by node id).
    points: Vec<u64>,
    /// `frags[i]` = the 16 bits of `points[i]` right below the index bits,
    /// followed by [`WINDOW`] padding entries so a lookup may read a full
    /// window from any bucket.
    frags: Vec<u16>,
    /// `nodes[i]` = index (in the node list) of the owner of `points[i]`,
    /// followed by one entry holding the owner of point 0: a hash above
    /// every point wraps around to it without a branch. Node indexes fit in
    /// 16 bits because views hold at most [`super::view::MAX_NODES`] = 2^16
    /// nodes.
    nodes: Vec<u16>,
    /// Node ids by node index, 8 bytes each, so the last read of a lookup
    /// hits a small table.
    ids: Vec<NodeId>,
    /// `index[b]` = first point whose top `bits` bits are `>= b`;
    /// `index.len() == 2^bits + 1`, the last word is `points.len()`.
    index: Vec<u32>,
    /// `64 - bits`: shift that turns a hash into its bucket.
    shift: u32,
    /// `bits`: shift that drops the bucket bits before taking a fragment.
    bits: u32,
}

impl RingView {
    /// Builds and validates a ring view.
    pub fn build(epoch: u64, nodes: &[NodeSpec], config: RingConfig) -> Result<Self, ViewError> {
        let members = Members::new(epoch, nodes, config.replicas)?;
        if config.vnodes == 0 {
            return Err(ViewError::ZeroVnodes);
        }
        let total = members.total_weight().saturating_mul(u64::from(config.vnodes));
        if total > MAX_POINTS {
            return Err(ViewError::TooManyPoints {
                points: total,
                max: MAX_POINTS,
            });
        }
        let mut entries: Vec<(u64, u32)> = Vec::with_capacity(total as usize);
        for (i, n) in members.nodes.iter().enumerate() {
            // Within limits by the MAX_POINTS check: weight · vnodes ≤ 2^25.
            let count = n.weight * config.vnodes;
            for v in 0..count {
                entries.push((point(u64::from(n.id), v), i as u32));
            }
        }
        // Ties (two equal 64-bit points) are broken by node id, not by list
        // position, so the ring does not depend on the order of `nodes`.
        let ids: Vec<NodeId> = members.nodes.iter().map(|n| n.id).collect();
        entries.sort_unstable_by_key(|&(p, node)| (p, ids[node as usize]));

        let bits = index_bits(entries.len());
        let shift = 64 - bits;
        let buckets = 1usize << bits;
        let mut index = Vec::with_capacity(buckets + 1);
        let mut pos = 0usize;
        for b in 0..buckets as u64 {
            while pos < entries.len() && (entries[pos].0 >> shift) < b {
                pos += 1;
            }
            index.push(pos as u32);
        }
        index.push(entries.len() as u32);
        let mut frags = Vec::with_capacity(entries.len() + WINDOW);
        frags.extend(entries.iter().map(|&(p, _)| fragment(p, bits)));
        frags.resize(entries.len() + WINDOW, u16::MAX);
        // `node < MAX_NODES = 2^16`, checked by `Members::new`.
        let mut node_idx = Vec::with_capacity(entries.len() + 1);
        node_idx.extend(entries.iter().map(|&(_, node)| node as u16));
        node_idx.push(node_idx[0]);
        let points = entries.iter().map(|&(p, _)| p).collect();

        let view = RingView {
            members,
            config,
            points,
            frags,
            nodes: node_idx,
            ids,
            index,
            shift,
            bits,
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
        self.points.len()
    }

    /// Iterates the ring's points in order, with their owners.
    pub fn iter_points(&self) -> impl Iterator<Item = (u64, NodeId)> + '_ {
        self.points
            .iter()
            .zip(&self.nodes)
            .map(|(&p, &n)| (p, self.ids[usize::from(n)]))
    }

    /// The sorted points.
    pub(crate) fn point_slice(&self) -> &[u64] {
        &self.points
    }

    /// Index (in the node list) of the owner of point `pos`.
    pub(crate) fn node_at(&self, pos: usize) -> u32 {
        u32::from(self.nodes[pos])
    }

    /// Heap bytes held by this view (points, fragments, node indexes, index,
    /// node list).
    pub fn memory_bytes(&self) -> usize {
        self.points.capacity() * std::mem::size_of::<u64>()
            + self.frags.capacity() * std::mem::size_of::<u16>()
            + self.nodes.capacity() * std::mem::size_of::<u16>()
            + self.ids.capacity() * std::mem::size_of::<NodeId>()
            + self.index.capacity() * std::mem::size_of::<u32>()
            + self.members.memory_bytes()
    }

    /// Position of the point that owns `hash`: the first point `>= hash`,
    /// or 0 when `hash` is above every point (wrap-around).
    #[inline]
    pub(crate) fn position(&self, hash: KeyHash) -> usize {
        let i = self.successor(hash);
        if i == self.points.len() {
            0
        } else {
            i
        }
    }

    /// Position of the first point `>= hash`, or `points.len()` when there
    /// is none (`nodes[points.len()]` then holds the wrapped-around owner).
    #[inline]
    fn successor(&self, hash: KeyHash) -> usize {
        let b = (hash >> self.shift) as usize;
        // `b < 2^bits`, so `b + 1 < index.len()`.
        let lo = self.index[b] as usize;
        let len = self.index[b + 1] as usize - lo;
        let f = fragment(hash, self.bits);
        // In bounds: `lo <= points.len()` and `WINDOW` padding entries follow.
        let window: &[u16; WINDOW] = self.frags[lo..lo + WINDOW].try_into().expect("window length");
        // All points of the bucket share the hash's top bits, so comparing
        // the next 16 bits orders them against the hash unless they are
        // equal. Bit j of `below` = lane j is in the bucket and below `f`;
        // fragments are sorted within the bucket, so the set bits are a
        // prefix and the count is the trailing ones.
        let mut below = 0u32;
        for (j, &g) in window.iter().enumerate() {
            below |= u32::from(g < f) << j;
        }
        below &= (1u32 << len.min(WINDOW)) - 1;
        let c = below.trailing_ones() as usize;
        if len >= WINDOW || window[c] == f {
            return self.successor_exact(hash, lo, lo + len);
        }
        lo + c
    }

    /// The exact scan of bucket `lo..hi`: a fragment tie is broken by the
    /// full point.
    #[cold]
    fn successor_exact(&self, hash: KeyHash, lo: usize, hi: usize) -> usize {
        lo + self.points[lo..hi].partition_point(|&p| p < hash)
    }

    /// Node indexes along the ring starting at `pos`, one full turn.
    pub(crate) fn walk(&self, pos: usize) -> impl Iterator<Item = u32> + '_ {
        let (a, b) = self.nodes[..self.points.len()].split_at(pos);
        b.iter().chain(a.iter()).map(|&n| u32::from(n))
    }

    /// Structural invariants, asserted after every build in debug builds.
    fn check_invariants(&self) -> bool {
        let sorted = self.points.windows(2).all(|w| w[0] <= w[1]);
        let len = self.points.len();
        let frags_ok = self.frags.len() == len + WINDOW
            && self
                .frags
                .iter()
                .zip(&self.points)
                .all(|(&f, &p)| f == fragment(p, self.bits));
        let nodes_ok = self.nodes.len() == len + 1 && self.nodes[len] == self.nodes[0];
        let ids_ok = self.ids.len() == self.members.nodes.len()
            && self.ids.iter().zip(&self.members.nodes).all(|(&id, n)| id == n.id);
        let index_ok = self.index.windows(2).all(|w| w[0] <= w[1])
            && self.index.iter().enumerate().all(|(b, &p)| {
                let p = p as usize;
                let below = p == 0 || (self.points[p - 1] >> self.shift) < b as u64;
                let at = p == self.points.len() || (self.points[p] >> self.shift) >= b as u64;
                below && at
            });
        sorted && frags_ok && nodes_ok && ids_ok && index_ok
    }
}

/// Four to eight points per bucket on average: fewer buckets overflow the
/// lookup window more often, more make the index too large to stay cached.
fn index_bits(points: usize) -> u32 {
    let mut bits = 1;
    while bits < MAX_INDEX_BITS && (1usize << (bits + 1 + POINTS_PER_BUCKET_LOG2)) <= points {
        bits += 1;
    }
    bits
}

/// The 16 bits of `x` right below its top `bits` bits.
#[inline]
fn fragment(x: u64, bits: u32) -> u16 {
    ((x << bits) >> 48) as u16
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
        self.ids[usize::from(self.nodes[self.successor(hash)])]
    }

    fn preference_of_hash(&self, hash: KeyHash, out: &mut Vec<NodeId>) {
        select(&self.members, None, self.walk(self.position(hash)), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: NodeId) -> Vec<NodeSpec> {
        (0..n).map(NodeSpec::new).collect()
    }

    /// The indexed lookup agrees with a plain binary search everywhere,
    /// including the wrap-around above the last point and exact hits.
    #[test]
    fn index_lookup_matches_binary_search() {
        for (n, v) in [(1, 1), (3, 7), (10, 40), (50, 160), (200, 160)] {
            let ring = RingView::build(1, &nodes(n), RingConfig { vnodes: v, replicas: 1 }).unwrap();
            let reference = |h: u64| {
                let p = ring.points.partition_point(|&x| x < h);
                if p == ring.points.len() {
                    0
                } else {
                    p
                }
            };
            let mut probes: Vec<u64> = vec![0, 1, u64::MAX, u64::MAX - 1];
            for &p in &ring.points {
                // Exact hits, neighbours, and hashes that share a point's
                // fragment but differ in the low bits (the tie-break path).
                probes.extend([p, p.wrapping_sub(1), p.wrapping_add(1), p ^ 0x3ff, p & !0xfff]);
            }
            let mut x = 7u64;
            for _ in 0..2000 {
                x = super::super::hash::mix64(x);
                probes.push(x);
            }
            for h in probes {
                assert_eq!(ring.position(h), reference(h), "hash {h:#x}");
            }
            if n == 200 {
                // 32 000 points in 4096 buckets: some overflow the window,
                // so the exact scan is exercised too.
                assert!(ring.index.windows(2).any(|w| (w[1] - w[0]) as usize >= WINDOW));
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
        assert_eq!(r.iter_points().filter(|p| p.1 == 2).count(), 30);
    }

    #[test]
    fn errors_not_panics() {
        let cfg = RingConfig::default();
        assert_eq!(RingView::build(1, &[], cfg).unwrap_err(), ViewError::NoNodes);
        assert_eq!(
            RingView::build(1, &[NodeSpec::new(1), NodeSpec::new(1)], cfg).unwrap_err(),
            ViewError::DuplicateNode(1)
        );
        assert_eq!(
            RingView::build(
                1,
                &[NodeSpec::new(1).with_weight(0)],
                RingConfig { vnodes: 1, replicas: 1 }
            )
            .unwrap_err(),
            ViewError::ZeroWeight(1)
        );
        assert_eq!(
            RingView::build(1, &nodes(2), cfg).unwrap_err(),
            ViewError::TooManyReplicas { replicas: 3, nodes: 2 }
        );
        assert_eq!(
            RingView::build(1, &nodes(2), RingConfig { vnodes: 0, replicas: 1 }).unwrap_err(),
            ViewError::ZeroVnodes
        );
        assert!(matches!(
            RingView::build(1, &[NodeSpec::new(1).with_weight(u32::MAX)], cfg.with_replicas(1)),
            Err(ViewError::TooManyPoints { .. })
        ));
    }
}
