//! `owner-overlap`: no two groups of a sharded service serve one key at
//! once, judged from what each group durably did (its ownership after
//! every logged move step), not from what clients heard.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Violation;
use crate::ring::hash_key;
use crate::shard::{GroupId, RangeSet};

/// What a group served from a moment on (the real time its step became
/// durable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The real time.
    pub at: Duration,
    /// The group.
    pub group: GroupId,
    /// Every key hash it serves from then on.
    pub ranges: RangeSet,
}

/// The intervals during which two different groups both served one of
/// `keys`. `founder` serves every key from the start; another group
/// counts only from its first report (before, it is not part of the
/// deployment and no client is sent to it). Reports of one group must be
/// in time order. At most five violations.
pub fn owner_overlap(reports: &[Served], founder: GroupId, keys: &[String]) -> Vec<Violation> {
    let mut by_group: BTreeMap<GroupId, Vec<&Served>> = BTreeMap::new();
    for report in reports {
        by_group.entry(report.group).or_default().push(report);
    }
    by_group.entry(founder).or_default();
    let mut violations = Vec::new();
    for key in keys {
        let h = hash_key(key.as_bytes());
        // Per group: the real-time intervals it served the key.
        let mut served: Vec<(GroupId, Duration, Duration)> = Vec::new();
        for (&group, reports) in &by_group {
            let mut since = (group == founder).then_some(Duration::ZERO);
            for report in reports {
                match (since, report.ranges.contains(h)) {
                    (None, true) => since = Some(report.at),
                    (Some(from), false) => {
                        served.push((group, from, report.at));
                        since = None;
                    }
                    _ => {}
                }
            }
            if let Some(from) = since {
                served.push((group, from, Duration::MAX));
            }
        }
        for (i, a) in served.iter().enumerate() {
            for b in &served[i + 1..] {
                if a.0 != b.0 && a.1 < b.2 && b.1 < a.2 && violations.len() < 5 {
                    violations.push(Violation::new(
                        "owner-overlap",
                        format!(
                            "groups {} and {} both served {key:?}: from {:.3}s and from {:.3}s",
                            a.0,
                            b.0,
                            a.1.as_secs_f64(),
                            b.1.as_secs_f64()
                        ),
                        vec![],
                    ));
                }
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::HashRange;

    fn only(key: &str) -> RangeSet {
        let h = hash_key(key.as_bytes());
        RangeSet::from_ranges([HashRange { start: h, end: h }])
    }

    fn at(ms: u64, group: GroupId, ranges: RangeSet) -> Served {
        Served {
            at: Duration::from_millis(ms),
            group,
            ranges,
        }
    }

    /// A move fenced at the source before the target installs it is
    /// clean; the target installing before the source's fence is caught.
    #[test]
    fn a_key_served_by_two_groups_at_once_is_caught() {
        let keys = vec!["a".to_string(), "b".to_string()];
        let mut rest = RangeSet::full();
        rest.subtract(&only("a"));
        let joined = at(1, 2, RangeSet::default());
        let clean = [joined.clone(), at(10, 1, rest.clone()), at(20, 2, only("a"))];
        assert!(owner_overlap(&clean, 1, &keys).is_empty());
        let flipped = [joined, at(10, 2, only("a")), at(20, 1, rest)];
        let found = owner_overlap(&flipped, 1, &keys);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains("\"a\""), "{found:?}");
    }

    /// A group that never joined serves nothing, whatever a fresh,
    /// unsharded one would answer.
    #[test]
    fn a_group_counts_from_its_first_report() {
        let keys = vec!["a".to_string()];
        assert!(owner_overlap(&[], 1, &keys).is_empty());
        let joined_empty = [at(5, 2, RangeSet::default())];
        assert!(owner_overlap(&joined_empty, 1, &keys).is_empty());
    }
}
