//! Which keys a replicated group serves, and how ranges of keys move
//! between groups while they serve.
//!
//! A sharded deployment runs several groups (each a replicated log with
//! its service); the ring ([`crate::ring`]) maps a key's hash to a group,
//! and [`crate::ring::diff_ranges`] says exactly which hash ranges change
//! group when the ring does. This module is the group's side of that: the
//! [`Ownership`] a service's state machine keeps as replicated state, so
//! that every replica of a group agrees, at every log index, on which keys
//! the group serves.
//!
//! A range moves in three logged steps (`docs/sharding.md` argues each):
//!
//! 1. **Fence** at the source: the range leaves [`Ownership::serves`], so
//!    from that log index on the source refuses every request on its keys,
//!    and its state is cut out into a part that no later command changes.
//! 2. **Install** at the target: the part goes through the target's log,
//!    and from that index on the target serves the range.
//! 3. **Drop** at the source: the part is forgotten once installed.
//!
//! Between 1 and 2 no group serves the range (the move's unavailability
//! window); at no log index of any group do two groups serve one key,
//! because the target installs only what the source has already fenced.
//!
//! The ring view itself is the replicated state of a group of its own,
//! the [`directory`]: a rebalance is recorded there before it moves
//! anything, so one cut short is finished by whoever runs next.

pub mod directory;
mod pack;
pub mod rebalance;

pub use pack::pack;

use serde::{Deserialize, Serialize};

use crate::ring::{HashRange, KeyHash};

/// A group of a sharded deployment, as the ring names it.
pub type GroupId = crate::ring::NodeId;

/// A set of key hashes: disjoint, sorted ranges, adjacent ones merged.
/// Decoding rebuilds that shape from whatever ranges the bytes list (a
/// shard command or a snapshot may come from a faulty peer), and refuses a
/// range that ends before it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<HashRange>", into = "Vec<HashRange>")]
pub struct RangeSet(Vec<HashRange>);

impl TryFrom<Vec<HashRange>> for RangeSet {
    type Error = &'static str;

    fn try_from(ranges: Vec<HashRange>) -> Result<Self, Self::Error> {
        if ranges.iter().any(|r| r.start > r.end) {
            return Err("a hash range that ends before it starts");
        }
        Ok(RangeSet::from_ranges(ranges))
    }
}

impl From<RangeSet> for Vec<HashRange> {
    fn from(set: RangeSet) -> Self {
        set.0
    }
}

impl RangeSet {
    /// Every hash.
    pub fn full() -> Self {
        RangeSet(vec![HashRange {
            start: 0,
            end: u64::MAX,
        }])
    }

    /// The union of `ranges`, in any order, overlapping or not.
    pub fn from_ranges(ranges: impl IntoIterator<Item = HashRange>) -> Self {
        let mut set = RangeSet::default();
        for r in ranges {
            set.insert(r);
        }
        set
    }

    /// The ranges, ascending.
    pub fn ranges(&self) -> &[HashRange] {
        &self.0
    }

    /// The lowest hash in the set.
    pub fn first(&self) -> Option<KeyHash> {
        self.0.first().map(|r| r.start)
    }

    /// Whether the set holds no hash.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `h` is in the set.
    pub fn contains(&self, h: KeyHash) -> bool {
        let i = self.0.partition_point(|r| r.end < h);
        self.0.get(i).is_some_and(|r| r.contains(h))
    }

    /// Adds `range`.
    pub fn insert(&mut self, range: HashRange) {
        debug_assert!(range.start <= range.end);
        let mut merged = range;
        // Ranges that overlap or touch `range` are absorbed into it (those
        // before `first` end too early; the scan stops at one that starts
        // too late).
        let first = self.0.partition_point(|r| r.end.saturating_add(1) < range.start);
        let mut last = first;
        while last < self.0.len() && self.0[last].start <= merged.end.saturating_add(1) {
            merged.start = merged.start.min(self.0[last].start);
            merged.end = merged.end.max(self.0[last].end);
            last += 1;
        }
        self.0.splice(first..last, [merged]);
    }

    /// Removes every hash of `other`, in one pass over both.
    pub fn subtract(&mut self, other: &RangeSet) {
        let mut kept = Vec::with_capacity(self.0.len() + other.0.len());
        let mut cuts = other.0.iter().peekable();
        for r in &self.0 {
            let mut rest = Some(*r);
            // Cuts that end before `r` starts cut nothing of it or of any
            // later range.
            while cuts.peek().is_some_and(|c| c.end < r.start) {
                cuts.next();
            }
            let mut ahead = cuts.clone();
            while let (Some(left), Some(cut)) = (rest, ahead.peek()) {
                if cut.start > left.end {
                    break;
                }
                if cut.start > left.start {
                    kept.push(HashRange {
                        start: left.start,
                        end: cut.start - 1,
                    });
                }
                rest = (cut.end < left.end).then(|| HashRange {
                    start: cut.end + 1,
                    end: left.end,
                });
                if cut.end <= left.end {
                    ahead.next();
                }
                if rest.is_none() {
                    break;
                }
            }
            kept.extend(rest);
        }
        self.0 = kept;
    }

    /// The hashes in both sets, in one pass over both.
    pub fn intersection(&self, other: &RangeSet) -> RangeSet {
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while let (Some(a), Some(b)) = (self.0.get(i), other.0.get(j)) {
            let (start, end) = (a.start.max(b.start), a.end.min(b.end));
            if start <= end {
                out.push(HashRange { start, end });
            }
            // The range that ends first meets nothing further.
            if a.end < b.end {
                i += 1;
            } else {
                j += 1;
            }
        }
        RangeSet(out)
    }
}

/// The latest moves a group remembers installing (with the ranges each
/// installed), so a repeated `Install` is recognised, and not applied
/// over what the group did since, for that many moves. A rebalancer
/// repeats only the move in progress.
pub const INSTALLED_MEMORY: usize = 64;

/// What a group serves, as replicated state: every replica applies the
/// same fences and installs at the same log indexes.
///
/// The default is an unsharded group, serving every key at epoch 0: a
/// single-group deployment never issues a shard command and never sees a
/// refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    /// The highest epoch of any move this group took part in: what it
    /// tells a client that asked for a key it does not serve.
    epoch: u64,
    serving: RangeSet,
    /// Moves installed here, `(epoch, source, ranges installed)`, the
    /// latest last: a move may come in pieces, cut differently by
    /// different runs of the rebalancer.
    installed: Vec<(u64, GroupId, RangeSet)>,
}

impl Default for Ownership {
    fn default() -> Self {
        Ownership {
            epoch: 0,
            serving: RangeSet::full(),
            installed: Vec::new(),
        }
    }
}

/// Why a shard command was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ShardRefusal {
    /// `Assign` to a group that already took part in a move: what it
    /// serves is settled by moves alone from then on.
    #[error("the group's ranges are already settled by moves")]
    AlreadyAssigned,
    /// `Install` of ranges of which this group still serves a part: two
    /// groups would serve those keys.
    #[error("the group already serves part of the ranges")]
    Overlaps,
    /// `Assign` to a group that already holds state of its own: it was
    /// not created for the deployment (see `ServerConfig::joining`).
    #[error("the group already holds state of its own")]
    NotEmpty,
    /// A part no source could have fenced: a name outside its ranges or
    /// listed twice, a token above its floor, a floor near overflow.
    #[error("the part is not one a group could have fenced")]
    InvalidPart,
    /// A fence or install of a move older than one this group has taken
    /// part in since: a late copy of a step whose rebalance finished long
    /// ago, which would take ranges out of service (or serve them twice).
    #[error("the step belongs to a rebalance older than the group's")]
    Stale,
    /// A fence to a joining group not assigned yet: it serves nothing,
    /// and cutting ranges out of "everything" would leave it serving the
    /// rest (a shard whose disk was replaced, still named by the views).
    #[error("the group serves nothing until it is assigned")]
    NotAssigned,
}

impl Ownership {
    /// The highest epoch this group took part in.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The hashes this group serves.
    pub fn serving(&self) -> &RangeSet {
        &self.serving
    }

    /// Whether the group is as it started: serving every key at epoch 0,
    /// never assigned, fenced or installed.
    pub fn is_unsharded(&self) -> bool {
        self.epoch == 0 && self.installed.is_empty() && self.serving == RangeSet::full()
    }

    /// Whether this group serves the key with hash `h` now.
    pub fn serves(&self, h: KeyHash) -> bool {
        self.serving.contains(h)
    }

    /// A group created for a sharded deployment starts serving `ranges`
    /// (a new group joining the ring: none) at `epoch`.
    /// Assigning it the same again (a retry) is done.
    pub fn assign(&mut self, epoch: u64, ranges: RangeSet) -> Result<(), ShardRefusal> {
        if self.installed.is_empty() && self.epoch == epoch && self.serving == ranges {
            return Ok(());
        }
        if !self.is_unsharded() {
            return Err(ShardRefusal::AlreadyAssigned);
        }
        self.epoch = epoch;
        self.serving = ranges;
        Ok(())
    }

    /// Stops serving `ranges` for a move at `epoch`; returns the hashes it
    /// served among them (empty for a repeated fence), whose state the
    /// caller cuts out.
    pub fn fence(&mut self, epoch: u64, ranges: &RangeSet) -> RangeSet {
        let leaving = self.serving.intersection(ranges);
        self.serving.subtract(&leaving);
        self.epoch = self.epoch.max(epoch);
        leaving
    }

    /// The hashes of `ranges` the move `(epoch, from)` has not installed
    /// here yet: all of them for a move not seen, none for a repeat.
    pub fn not_installed(&self, epoch: u64, from: GroupId, ranges: &RangeSet) -> RangeSet {
        let mut rest = ranges.clone();
        for (_, _, done) in self.installed.iter().filter(|(e, f, _)| (*e, *f) == (epoch, from)) {
            rest.subtract(done);
        }
        rest
    }

    /// Starts serving `ranges`, moved from `from` at `epoch` (the whole
    /// move or a piece of it). The caller installs only what
    /// [`Ownership::not_installed`] leaves: a repeat is answered, not
    /// applied.
    pub fn install(&mut self, epoch: u64, from: GroupId, ranges: &RangeSet) -> Result<(), ShardRefusal> {
        if !self.serving.intersection(ranges).is_empty() {
            return Err(ShardRefusal::Overlaps);
        }
        for r in ranges.ranges() {
            self.serving.insert(*r);
        }
        self.epoch = self.epoch.max(epoch);
        match self.installed.iter_mut().find(|(e, f, _)| (*e, *f) == (epoch, from)) {
            Some((_, _, done)) => {
                for r in ranges.ranges() {
                    done.insert(*r);
                }
            }
            None => {
                self.installed.push((epoch, from, ranges.clone()));
                if self.installed.len() > INSTALLED_MEMORY {
                    self.installed.remove(0);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn r(start: u64, end: u64) -> HashRange {
        HashRange { start, end }
    }

    /// The set as the hashes it holds, over a small universe.
    fn members(set: &RangeSet, universe: u64) -> Vec<u64> {
        (0..universe).filter(|&h| set.contains(h)).collect()
    }

    fn small_ranges() -> impl Strategy<Value = Vec<HashRange>> {
        prop::collection::vec((0u64..64, 0u64..8).prop_map(|(s, len)| r(s, s + len)), 0..12)
    }

    proptest! {
        /// Insert, subtract and intersect agree with the same operations on
        /// plain sets of hashes, and the ranges stay sorted, disjoint and
        /// merged.
        #[test]
        fn range_sets_behave_as_sets_of_hashes(a in small_ranges(), b in small_ranges()) {
            let (sa, sb) = (RangeSet::from_ranges(a.clone()), RangeSet::from_ranges(b.clone()));
            let in_any = |rs: &[HashRange], h: u64| rs.iter().any(|x| x.contains(h));
            let want_a: Vec<u64> = (0..80).filter(|&h| in_any(&a, h)).collect();
            prop_assert_eq!(members(&sa, 80), want_a);
            for w in sa.ranges().windows(2) {
                prop_assert!(w[0].end + 1 < w[1].start, "not merged: {:?}", sa);
            }
            let mut diff = sa.clone();
            diff.subtract(&sb);
            let want: Vec<u64> = (0..80).filter(|&h| in_any(&a, h) && !in_any(&b, h)).collect();
            prop_assert_eq!(members(&diff, 80), want);
            let want: Vec<u64> = (0..80).filter(|&h| in_any(&a, h) && in_any(&b, h)).collect();
            prop_assert_eq!(members(&sa.intersection(&sb), 80), want);
        }
    }

    /// Bytes that list ranges out of order, overlapping, are decoded into
    /// the set's shape; an inverted range is refused.
    #[test]
    fn decoding_rebuilds_the_shape_and_refuses_inverted_ranges() {
        let crafted = vec![r(20, 30), r(0, 9), r(5, 12)];
        let bytes = crate::env::codec::encode(&crafted).unwrap();
        let set: RangeSet = crate::env::codec::decode(&bytes).unwrap();
        assert_eq!(set.ranges(), &[r(0, 12), r(20, 30)]);
        assert!(set.contains(11) && !set.contains(15));
        let inverted = crate::env::codec::encode(&vec![r(9, 3)]).unwrap();
        assert!(crate::env::codec::decode::<RangeSet>(&inverted).is_err());
    }

    #[test]
    fn the_ends_of_the_hash_space_are_handled() {
        let mut s = RangeSet::full();
        s.subtract(&RangeSet::from_ranges([r(0, 0), r(u64::MAX, u64::MAX)]));
        assert_eq!(s.ranges(), &[r(1, u64::MAX - 1)]);
        s.insert(r(u64::MAX, u64::MAX));
        s.insert(r(0, 0));
        assert_eq!(s, RangeSet::full());
    }

    /// A fence gives up only what the group served; an install of a range
    /// the group still serves is refused, and a group that took part in a
    /// move cannot be assigned afresh.
    #[test]
    fn a_range_moves_from_one_group_to_another() {
        let (mut source, mut target) = (Ownership::default(), Ownership::default());
        target.assign(1, RangeSet::default()).unwrap();
        assert!(!target.serves(5));
        let moving = RangeSet::from_ranges([r(0, 9)]);
        assert_eq!(
            target.install(1, 7, &RangeSet::full()),
            Ok(()),
            "an empty group may take anything"
        );
        assert_eq!(target.install(2, 7, &moving), Err(ShardRefusal::Overlaps));
        assert_eq!(source.fence(2, &moving), moving);
        assert!(!source.serves(5) && source.serves(10));
        assert_eq!(
            source.fence(2, &moving),
            RangeSet::default(),
            "a repeated fence cuts nothing"
        );
        assert_eq!(source.epoch(), 2);
        assert_eq!(source.assign(3, RangeSet::full()), Err(ShardRefusal::AlreadyAssigned));
        assert_eq!(
            target.assign(1, RangeSet::default()),
            Err(ShardRefusal::AlreadyAssigned)
        );
        let mut fresh = Ownership::default();
        fresh.assign(4, moving.clone()).unwrap();
        assert_eq!(fresh.assign(4, moving.clone()), Ok(()), "a repeated assignment is done");
        assert!(target.not_installed(1, 7, &RangeSet::full()).is_empty());
        assert_eq!(target.not_installed(2, 7, &moving), moving);
    }
}
