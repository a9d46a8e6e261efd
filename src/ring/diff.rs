//! What moves between two views, so a data mover knows exactly what to copy.
//!
//! - [`diff_ranges`] (rings): the hash ranges whose owner or replica set
//!   changes. Between two consecutive points of the *union* of both rings
//!   the successor in each ring is constant, so evaluating one hash per
//!   union segment gives the exact answer, with no sampling.
//! - [`diff_keys`] (any [`Placement`]): for placements without ranges (jump,
//!   rendezvous, bounded-load), the listed keys whose owner or replica set
//!   changes.
//!
//! A change counts when the owner differs or the replica *set* differs; a
//! mere reordering of the non-owner replicas needs no data movement and is
//! not reported.

use super::hash::{hash_key, KeyHash};
use super::vnode::RingView;
use super::{NodeId, Placement};

/// An inclusive range of key hashes, `start..=end`. Ranges never wrap:
/// a range across the top of the ring is reported as two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct HashRange {
    /// First hash of the range.
    pub start: KeyHash,
    /// Last hash of the range (inclusive).
    pub end: KeyHash,
}

impl HashRange {
    /// Whether `h` lies in the range.
    pub fn contains(&self, h: KeyHash) -> bool {
        self.start <= h && h <= self.end
    }

    /// Number of hashes in the range, as a fraction of the whole space.
    /// The share of the hash space the range covers.
    pub fn fraction(&self) -> f64 {
        ((self.end - self.start) as f64 + 1.0) / 18_446_744_073_709_551_616.0
    }
}

/// A hash range whose preference list changes from `from` to `to`
/// (owner first in both).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeMove {
    /// The hashes that move.
    pub range: HashRange,
    /// Their preference list before (owner first).
    pub from: Vec<NodeId>,
    /// Their preference list after.
    pub to: Vec<NodeId>,
}

impl RangeMove {
    /// Whether the owner changes (not only a replica).
    pub fn owner_changed(&self) -> bool {
        self.from.first() != self.to.first()
    }
}

/// A listed key whose preference list changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyMove {
    /// Position of the key in the list given to [`diff_keys`].
    pub index: usize,
    /// The key's hash.
    pub hash: KeyHash,
    /// Its preference list before (owner first).
    pub from: Vec<NodeId>,
    /// Its preference list after.
    pub to: Vec<NodeId>,
}

impl KeyMove {
    /// Whether the owner changes (not only a replica): with R > 1 a key
    /// also "moves" when only a replica does, so count owners with this.
    pub fn owner_changed(&self) -> bool {
        self.from.first() != self.to.first()
    }
}

/// True when the data for a key must move: new owner or new replica set.
fn changed(from: &[NodeId], to: &[NodeId]) -> bool {
    if from.first() != to.first() || from.len() != to.len() {
        return true;
    }
    // Sets of at most MAX_REPLICAS: quadratic is fine.
    !from.iter().all(|n| to.contains(n))
}

/// The exact hash ranges whose owner or replica set differs between `old`
/// and `new`, in ascending order, adjacent ranges with the same change
/// merged.
pub fn diff_ranges(old: &RingView, new: &RingView) -> Vec<RangeMove> {
    let mut ends: Vec<KeyHash> = old.point_slice().iter().chain(new.point_slice()).copied().collect();
    ends.push(u64::MAX);
    ends.sort_unstable();
    ends.dedup();

    let mut moves: Vec<RangeMove> = Vec::new();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut start = 0u64;
    for &end in &ends {
        // Every hash in start..=end has the same successor in each ring as
        // `end` itself, because no point of either ring lies in start..end.
        old.preference_of_hash(end, &mut a);
        new.preference_of_hash(end, &mut b);
        if changed(&a, &b) {
            match moves.last_mut() {
                Some(m) if m.range.end.wrapping_add(1) == start && m.from == a && m.to == b => {
                    m.range.end = end;
                }
                _ => moves.push(RangeMove {
                    range: HashRange { start, end },
                    from: a.clone(),
                    to: b.clone(),
                }),
            }
        }
        if end == u64::MAX {
            break;
        }
        start = end + 1;
    }
    moves
}

/// The keys (from `keys`) whose owner or replica set differs between `old`
/// and `new`, in input order.
pub fn diff_keys<P, Q, I>(old: &P, new: &Q, keys: I) -> Vec<KeyMove>
where
    P: Placement + ?Sized,
    Q: Placement + ?Sized,
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut out = Vec::new();
    for (index, key) in keys.into_iter().enumerate() {
        let hash = hash_key(key.as_ref());
        old.preference_of_hash(hash, &mut a);
        new.preference_of_hash(hash, &mut b);
        if changed(&a, &b) {
            out.push(KeyMove {
                index,
                hash,
                from: a.clone(),
                to: b.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{NodeSpec, RingConfig};

    fn ring(epoch: u64, ids: &[NodeId], r: usize) -> RingView {
        let nodes: Vec<NodeSpec> = ids.iter().map(|&i| NodeSpec::new(i)).collect();
        RingView::build(epoch, &nodes, RingConfig { vnodes: 8, replicas: r }).unwrap()
    }

    /// Ranges are exact: every probed hash is inside a reported range iff
    /// its preference list changed, and then with the reported lists.
    #[test]
    fn ranges_are_exact() {
        let old = ring(1, &[1, 2, 3, 4], 2);
        let new = ring(2, &[1, 2, 4, 5], 2);
        let moves = diff_ranges(&old, &new);
        assert!(!moves.is_empty());
        assert!(moves.windows(2).all(|w| w[0].range.end < w[1].range.start));
        let mut probes = vec![0u64, u64::MAX];
        for (p, _) in old.iter_points().chain(new.iter_points()) {
            probes.extend([p.wrapping_sub(1), p, p.wrapping_add(1)]);
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for h in probes {
            old.preference_of_hash(h, &mut a);
            new.preference_of_hash(h, &mut b);
            let hit = moves.iter().find(|m| m.range.contains(h));
            match hit {
                Some(m) => {
                    assert_eq!((&m.from, &m.to), (&a, &b), "hash {h:#x}");
                }
                None => assert!(!changed(&a, &b), "hash {h:#x} changed but not reported"),
            }
        }
    }

    #[test]
    fn identical_views_have_no_diff() {
        let a = ring(1, &[1, 2, 3], 3);
        let b = ring(2, &[3, 2, 1], 3);
        assert!(diff_ranges(&a, &b).is_empty());
        assert!(diff_keys(&a, &b, (0..100u32).map(|i| i.to_be_bytes())).is_empty());
    }
}
