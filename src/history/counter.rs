//! A grow-only counter's history ([`CounterOp`]): increments with unique
//! ids, and reads that return every id the counter holds. The simulator's
//! counter scenario (the tutorial protocol) is judged here; anything that
//! records such a history can be. One function per invariant; [`check`]
//! runs them all.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Event, EventKind, History, Violation};

/// A counter operation as the history records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CounterOp {
    /// Adds the unique `id`.
    Increment {
        /// The increment's id, chosen by the client.
        id: u64,
    },
    /// Reads the ids the counter holds: `None` on invocation, the set on
    /// success.
    Read {
        /// What the read returned.
        ids: Option<Vec<u64>>,
    },
}

/// Every invariant of the counter, on the history alone; at most one
/// violation each.
pub fn check(history: &History<CounterOp>) -> Vec<Violation> {
    [
        acked_increment_lost(history),
        phantom_increment(history),
        non_monotonic_read(history),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The successful reads: invocation, completion and the ids returned.
fn reads(history: &History<CounterOp>) -> Vec<(&Event<CounterOp>, &Event<CounterOp>, BTreeSet<u64>)> {
    history
        .operations()
        .into_iter()
        .filter_map(|(invoke, done)| {
            let done = done.filter(|d| d.kind == EventKind::Ok)?;
            let CounterOp::Read { ids: Some(ids) } = &done.op else {
                return None;
            };
            Some((invoke, done, ids.iter().copied().collect()))
        })
        .collect()
}

/// `acked-increment-lost`: a read contains every increment acknowledged
/// before the read began.
pub fn acked_increment_lost(history: &History<CounterOp>) -> Option<Violation> {
    // Acknowledged increments: (time acked, id, event).
    let acked: Vec<(u64, u64, usize)> = history
        .events()
        .iter()
        .filter_map(|e| match (&e.kind, &e.op) {
            (EventKind::Ok, CounterOp::Increment { id }) => Some((e.time_ns, *id, e.index)),
            _ => None,
        })
        .collect();
    reads(history).into_iter().find_map(|(invoke, done, seen)| {
        let &(_, id, ack_event) = acked
            .iter()
            .find(|&&(acked_at, id, _)| acked_at < invoke.time_ns && !seen.contains(&id))?;
        Some(Violation::new(
            "acked-increment-lost",
            format!("increment {id:#x} was acknowledged before the read began, but the read does not contain it"),
            vec![ack_event, invoke.index, done.index],
        ))
    })
}

/// `phantom-increment`: a read shows only ids some client sent.
pub fn phantom_increment(history: &History<CounterOp>) -> Option<Violation> {
    let invoked: BTreeSet<u64> = history
        .events()
        .iter()
        .filter_map(|e| match (&e.kind, &e.op) {
            (EventKind::Invoke, CounterOp::Increment { id }) => Some(*id),
            _ => None,
        })
        .collect();
    reads(history).into_iter().find_map(|(_, done, seen)| {
        let phantom = seen.iter().find(|id| !invoked.contains(id))?;
        Some(Violation::new(
            "phantom-increment",
            format!("read shows increment {phantom:#x}, which no client sent"),
            vec![done.index],
        ))
    })
}

/// `non-monotonic-read`: every id a completed read returned is in every
/// read invoked after that read completed — the counter never forgets
/// what it showed.
pub fn non_monotonic_read(history: &History<CounterOp>) -> Option<Violation> {
    let reads = reads(history);
    for (_, earlier_done, earlier) in &reads {
        for (later_invoke, later_done, later) in &reads {
            if later_invoke.time_ns <= earlier_done.time_ns {
                continue;
            }
            if let Some(gone) = earlier.difference(later).next() {
                return Some(Violation::new(
                    "non-monotonic-read",
                    format!("a read showed increment {gone:#x}; a read that began after it ended does not"),
                    vec![earlier_done.index, later_invoke.index, later_done.index],
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(events: &[(u32, EventKind, CounterOp)]) -> History<CounterOp> {
        History::in_order(events)
    }

    use CounterOp::{Increment, Read};
    use EventKind::{Info, Invoke, Ok};

    #[test]
    fn accepts_a_read_that_contains_every_acked_increment() {
        let h = history(&[
            (0, Invoke, Increment { id: 1 }),
            (0, Ok, Increment { id: 1 }),
            (1, Invoke, Increment { id: 2 }),
            (1, Info, Increment { id: 2 }),
            (0, Invoke, Read { ids: None }),
            (0, Ok, Read { ids: Some(vec![1]) }),
        ]);
        assert!(check(&h).is_empty());
    }

    #[test]
    fn catches_a_lost_acknowledged_increment() {
        let h = history(&[
            (0, Invoke, Increment { id: 1 }),
            (0, Ok, Increment { id: 1 }),
            (0, Invoke, Read { ids: None }),
            (0, Ok, Read { ids: Some(vec![]) }),
        ]);
        let v = check(&h);
        assert_eq!(v[0].invariant, "acked-increment-lost");
        assert_eq!(v[0].events, vec![1, 2, 3]);
    }

    #[test]
    fn concurrent_ack_may_be_missing_from_a_read() {
        // The read began before the ack arrived: either order is fine.
        let h = history(&[
            (0, Invoke, Increment { id: 1 }),
            (1, Invoke, Read { ids: None }),
            (0, Ok, Increment { id: 1 }),
            (1, Ok, Read { ids: Some(vec![]) }),
        ]);
        assert!(check(&h).is_empty());
    }

    #[test]
    fn catches_a_read_that_forgets_what_an_earlier_read_showed() {
        // Increment 1 was never acknowledged, but a read showed it.
        let h = history(&[
            (0, Invoke, Increment { id: 1 }),
            (1, Invoke, Read { ids: None }),
            (1, Ok, Read { ids: Some(vec![1]) }),
            (0, Info, Increment { id: 1 }),
            (1, Invoke, Read { ids: None }),
            (1, Ok, Read { ids: Some(vec![]) }),
        ]);
        let v = check(&h);
        assert_eq!(v[0].invariant, "non-monotonic-read");
        assert_eq!(v[0].events, vec![2, 4, 5]);
        // Overlapping reads may disagree.
        let h = history(&[
            (0, Invoke, Increment { id: 1 }),
            (1, Invoke, Read { ids: None }),
            (2, Invoke, Read { ids: None }),
            (1, Ok, Read { ids: Some(vec![1]) }),
            (2, Ok, Read { ids: Some(vec![]) }),
        ]);
        assert!(check(&h).is_empty());
    }

    #[test]
    fn catches_a_phantom_increment() {
        let h = history(&[(0, Invoke, Read { ids: None }), (0, Ok, Read { ids: Some(vec![9]) })]);
        assert_eq!(check(&h)[0].invariant, "phantom-increment");
    }
}
