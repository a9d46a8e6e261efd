//! The lock service's invariants, judged on a history of client
//! operations: the simulator's lock scenario and the real-process chaos
//! test record the same [`LockOp`]s and call the same [`check_lock`], and a
//! service built on [`crate::lock`] can record its own and do the same.
//!
//! - `fencing`: in the resource's acceptance order, tokens never decrease;
//! - `lost-increment`: accepted writes strictly increase and every accepted
//!   read sees every earlier accepted write;
//! - `token-order`: an acquire that began after another was granted gets a
//!   higher token;
//! - `release-owner`: a release succeeds only while its token still owns
//!   the lock, and once;
//! - `lease-overlap` (only when the caller says leases can be judged: every
//!   clock stayed within the drift bound the clients assume and no lock
//!   server's clock jumped): no two clients' believed lease intervals —
//!   from the acquire's success to the last lease check that passed, a
//!   read's invocation — overlap in real time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{EventKind, History, Violation};
use crate::lock::Token;

/// A client operation as the history records it: lock requests, and
/// accesses to a fenced resource holding a counter that holders increment
/// (read, then write back one more).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LockOp {
    /// `token` is `None` on invocation.
    Acquire {
        token: Option<Token>,
    },
    Release {
        token: Token,
    },
    /// A fenced read of the counter; `value` and the resource's acceptance
    /// position `seq` on success.
    Read {
        token: Token,
        value: Option<u64>,
        seq: Option<u64>,
    },
    /// A fenced write of `value`; `seq` on success.
    Write {
        token: Token,
        value: u64,
        seq: Option<u64>,
    },
}

/// The lock invariants on a history. `leases_judged`: whether the run's
/// clocks stayed within the drift bound (then believed leases must not
/// overlap).
pub fn check_lock(history: &History<LockOp>, leases_judged: bool) -> Vec<Violation> {
    let mut v = Vec::new();
    check_resource(history, &mut v);
    check_tokens(history, &mut v);
    if leases_judged {
        check_leases(history, &mut v);
    }
    v
}

fn check_resource(history: &History<LockOp>, v: &mut Vec<Violation>) {
    // Accepted accesses in the resource's order: (seq, token, value, write, event).
    let mut accepted: Vec<(u64, Token, u64, bool, usize)> = history
        .events()
        .iter()
        .filter(|e| e.kind == EventKind::Ok)
        .filter_map(|e| match e.op {
            LockOp::Read {
                token,
                value: Some(value),
                seq: Some(seq),
            } => Some((seq, token, value, false, e.index)),
            LockOp::Write {
                token,
                value,
                seq: Some(seq),
            } => Some((seq, token, value, true, e.index)),
            _ => None,
        })
        .collect();
    accepted.sort_unstable();
    let mut highest: Option<(Token, usize)> = None;
    let mut written: Option<(u64, usize)> = None;
    for &(seq, token, value, write, event) in &accepted {
        if let Some((h, at)) = highest {
            if token < h {
                v.push(Violation::new(
                    "fencing",
                    format!("the resource accepted token {token} (access #{seq}) after it had accepted token {h}"),
                    vec![at, event],
                ));
                break;
            }
        }
        if highest.is_none_or(|(h, _)| token > h) {
            highest = Some((token, event));
        }
        if let Some((w, at)) = written {
            if (write && value <= w) || (!write && value < w) {
                v.push(Violation::new(
                    "lost-increment",
                    format!(
                        "counter {} {value} at access #{seq}, after an accepted write of {w}",
                        if write { "written back as" } else { "read as" }
                    ),
                    vec![at, event],
                ));
                break;
            }
        }
        if write {
            written = Some((value, event));
        }
    }
}

fn check_tokens(history: &History<LockOp>, v: &mut Vec<Violation>) {
    // Highest token granted (ok) so far, and where.
    let mut granted: Option<(Token, usize)> = None;
    // Per client: the floor its open acquire/release must beat.
    let mut floor: BTreeMap<u32, Option<(Token, usize)>> = BTreeMap::new();
    let mut released: BTreeMap<Token, usize> = BTreeMap::new();
    // Token → client it was granted to. A session that still holds a lock
    // (say, its release timed out) is granted the same claim again: that
    // is its ownership continuing, not a new grant.
    let mut owner: BTreeMap<Token, u32> = BTreeMap::new();
    for e in history.events() {
        match (&e.kind, &e.op) {
            (EventKind::Invoke, LockOp::Acquire { .. } | LockOp::Release { .. }) => {
                floor.insert(e.client, granted);
            }
            (EventKind::Ok, LockOp::Acquire { token: Some(t) }) => {
                let same_claim = owner.get(t) == Some(&e.client);
                owner.insert(*t, e.client);
                if let Some(Some((f, at))) = floor.get(&e.client).filter(|_| !same_claim) {
                    if t <= f {
                        v.push(Violation::new(
                            "token-order",
                            format!("acquire granted token {t}, but token {f} had been granted before it began"),
                            vec![*at, e.index],
                        ));
                        return;
                    }
                }
                if granted.is_none_or(|(g, _)| *t > g) {
                    granted = Some((*t, e.index));
                }
            }
            (EventKind::Ok, LockOp::Release { token }) => {
                if let Some(Some((f, at))) = floor.get(&e.client) {
                    if f > token {
                        v.push(Violation::new(
                            "release-owner",
                            format!("release of token {token} succeeded after token {f} had been granted"),
                            vec![*at, e.index],
                        ));
                        return;
                    }
                }
                if let Some(first) = released.insert(*token, e.index) {
                    v.push(Violation::new(
                        "release-owner",
                        format!("token {token} was released twice"),
                        vec![first, e.index],
                    ));
                    return;
                }
            }
            _ => {}
        }
    }
}

fn check_leases(history: &History<LockOp>, v: &mut Vec<Violation>) {
    // (client, token) → (start ns, start event, end ns, end event)
    let mut leases: BTreeMap<(u32, Token), (u64, usize, u64, usize)> = BTreeMap::new();
    for e in history.events() {
        match (&e.kind, &e.op) {
            (EventKind::Ok, LockOp::Acquire { token: Some(t) }) => {
                // A repeated grant of the same claim continues the lease.
                leases
                    .entry((e.client, *t))
                    .or_insert((e.time_ns, e.index, e.time_ns, e.index));
            }
            (EventKind::Invoke, LockOp::Read { token, .. }) => {
                if let Some(l) = leases.get_mut(&(e.client, *token)) {
                    l.2 = e.time_ns;
                    l.3 = e.index;
                }
            }
            _ => {}
        }
    }
    let list: Vec<_> = leases.into_iter().collect();
    for (i, ((ca, ta), a)) in list.iter().enumerate() {
        for ((cb, tb), b) in &list[i + 1..] {
            if ca != cb && a.0 < b.2 && b.0 < a.2 {
                let (first, second) = if a.0 <= b.0 {
                    ((ca, ta, a), (cb, tb, b))
                } else {
                    ((cb, tb, b), (ca, ta, a))
                };
                v.push(Violation::new(
                    "lease-overlap",
                    format!(
                        "client {} believed it held token {} until {:.3}s, but client {} was granted token {} at {:.3}s",
                        first.0,
                        first.1,
                        first.2 .2 as f64 / 1e9,
                        second.0,
                        second.1,
                        second.2 .0 as f64 / 1e9
                    ),
                    vec![first.2 .1, second.2 .1, first.2 .3],
                ));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EventKind::{Invoke, Ok};

    fn history(events: &[(u32, EventKind, LockOp)]) -> History<LockOp> {
        let mut h = History::default();
        for (t, (client, kind, op)) in events.iter().enumerate() {
            h.push(*client, t as u64 * 1000, *kind, op.clone());
        }
        h
    }

    fn acq(token: Option<u64>) -> LockOp {
        LockOp::Acquire { token }
    }
    fn read(token: u64, value: Option<u64>, seq: Option<u64>) -> LockOp {
        LockOp::Read { token, value, seq }
    }
    fn write(token: u64, value: u64, seq: Option<u64>) -> LockOp {
        LockOp::Write { token, value, seq }
    }

    fn invariants(h: &History<LockOp>, judged: bool) -> Vec<String> {
        check_lock(h, judged).into_iter().map(|v| v.invariant).collect()
    }

    #[test]
    fn a_clean_handover_passes() {
        let h = history(&[
            (0, Invoke, acq(None)),
            (0, Ok, acq(Some(3))),
            (0, Invoke, read(3, None, None)),
            (0, Ok, read(3, Some(0), Some(1))),
            (0, Invoke, write(3, 1, None)),
            (0, Ok, write(3, 1, Some(2))),
            (0, Invoke, LockOp::Release { token: 3 }),
            (0, Ok, LockOp::Release { token: 3 }),
            (1, Invoke, acq(None)),
            (1, Ok, acq(Some(5))),
            (1, Invoke, read(5, None, None)),
            (1, Ok, read(5, Some(1), Some(3))),
        ]);
        assert!(invariants(&h, true).is_empty());
    }

    #[test]
    fn a_stale_write_after_the_next_holder_is_a_fencing_violation() {
        let h = history(&[
            (0, Invoke, write(3, 1, None)),
            (1, Invoke, read(5, None, None)),
            (1, Ok, read(5, Some(0), Some(1))),
            (0, Ok, write(3, 1, Some(2))),
        ]);
        assert_eq!(invariants(&h, false), vec!["fencing"]);
    }

    #[test]
    fn two_writes_of_the_same_value_lose_an_increment() {
        let h = history(&[
            (0, Invoke, write(5, 1, None)),
            (0, Ok, write(5, 1, Some(1))),
            (0, Invoke, write(5, 1, None)),
            (0, Ok, write(5, 1, Some(2))),
        ]);
        assert_eq!(invariants(&h, false), vec!["lost-increment"]);
    }

    #[test]
    fn a_token_not_above_an_earlier_grant_breaks_token_order() {
        let h = history(&[
            (0, Invoke, acq(None)),
            (0, Ok, acq(Some(7))),
            (1, Invoke, acq(None)),
            (1, Ok, acq(Some(7))),
        ]);
        assert_eq!(invariants(&h, false), vec!["token-order"]);
    }

    #[test]
    fn release_after_a_later_grant_is_not_by_the_owner() {
        let h = history(&[
            (1, Invoke, acq(None)),
            (1, Ok, acq(Some(9))),
            (0, Invoke, LockOp::Release { token: 4 }),
            (0, Ok, LockOp::Release { token: 4 }),
        ]);
        assert_eq!(invariants(&h, false), vec!["release-owner"]);
    }

    #[test]
    fn overlapping_beliefs_are_judged_only_within_the_drift_bound() {
        let h = history(&[
            (0, Invoke, acq(None)),
            (0, Ok, acq(Some(3))),
            (1, Invoke, acq(None)),
            (1, Ok, acq(Some(5))),
            (0, Invoke, read(3, None, None)),
        ]);
        assert_eq!(invariants(&h, true), vec!["lease-overlap"]);
        assert!(invariants(&h, false).is_empty());
    }
}
