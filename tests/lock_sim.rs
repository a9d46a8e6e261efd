//! The lock scenario's checker on hand-written histories, and a calm
//! simulated run that must pass. (The default sweep and the planted-bug
//! sweep of `lock` run in tests/sim_sweep.rs with every other scenario.)

use ringfence::history::{EventKind, History};
use ringfence_sim::scenarios::lock::{check_lock, LockOp};
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

#[test]
fn calm_seed_passes_and_makes_progress() {
    use ringfence_sim::plan::FaultPlan;
    use ringfence_sim::runner::RunOptions;
    use ringfence_sim::scenarios;
    let scenario = scenarios::find("lock").unwrap();
    let mut case = scenarios::default_case(scenario, 1, None);
    case.plan = Some(FaultPlan::calm(3_000));
    let outcome = ringfence_sim::sweep::run_isolated(scenario, &case, RunOptions::default());
    assert!(outcome.violations.is_empty(), "{:?}", outcome.violations);
    assert!(outcome.ops > 20, "only {} operations completed", outcome.ops);
}
