//! The `txn` and `txn-replicated` scenarios end to end: fault-free runs
//! commit transfers and pass every check, the committed-transfer rate per
//! simulated second (a deterministic figure: simulated time, not wall time)
//! is reported, and a coordinator that stays down blocks classic 2PC but not
//! the replicated coordinator. The register workload's isolation checker
//! alone catches write skew, and under load the replicated coordinator
//! forgets and compacts.

use ringfence::history::{Event, EventKind};
use ringfence_sim::plan::{DiskLoss, Fault, FaultPlan};
use ringfence_sim::runner::{Case, RunOptions};
use ringfence_sim::scenarios::txn::{COMPACTED, FORGOT, INSTALLED_SNAPSHOT, RECOVERED_UNANNOUNCED};
use ringfence_sim::scenarios::{self, txn::BankOp};
use ringfence_sim::sweep::{self, run_isolated, SweepPlan};
use ringfence_sim::trace::TraceEvent;

/// Transfers committed, transfers failed, audits committed, and the latest
/// transfer commit's simulated time, in one run's history.
fn tally(case: &Case) -> (u64, u64, u64, f64, Vec<u64>) {
    let scenario = scenarios::find(&case.scenario).unwrap();
    let outcome = run_isolated(scenario, case, RunOptions { keep_trace: true });
    assert!(
        outcome.violations.is_empty(),
        "{} seed {}: {:?}",
        case.scenario,
        case.seed,
        outcome.violations
    );
    let (mut committed, mut aborted, mut audits, mut commit_times) = (0, 0, 0, vec![]);
    for line in &outcome.history {
        let event: Event<BankOp> = serde_json::from_str(line).unwrap();
        match (event.kind, &event.op) {
            (EventKind::Ok, BankOp::Transfer { .. }) => {
                committed += 1;
                commit_times.push(event.time_ns / 1_000_000);
            }
            (EventKind::Fail, BankOp::Transfer { .. }) => aborted += 1,
            (EventKind::Ok, BankOp::Audit { .. }) => audits += 1,
            _ => {}
        }
    }
    (committed, aborted, audits, outcome.sim_time.as_secs_f64(), commit_times)
}

#[test]
fn calm_runs_commit_transfers_and_pass_every_check() {
    for name in ["txn", "txn-replicated"] {
        let scenario = scenarios::find(name).unwrap();
        let (mut committed, mut aborted, mut audits, mut sim_secs) = (0, 0, 0, 0.0);
        for seed in 0..4 {
            let mut case = scenarios::default_case(scenario, seed, None);
            case.plan = Some(FaultPlan::calm(5_000));
            let (c, a, au, secs, _) = tally(&case);
            (committed, aborted, audits, sim_secs) = (committed + c, aborted + a, audits + au, sim_secs + secs);
        }
        println!(
            "calm {name} runs: {committed} transfers committed, {aborted} aborted, {audits} audits committed in {sim_secs:.2} simulated s = {:.1} committed transfers per simulated second",
            committed as f64 / sim_secs
        );
        assert!(committed > 0 && audits > 0, "{name}");
    }
}

/// The coordinator (replica `node`) crashes at 1 s and stays down until the
/// heal at 6 s; clients have work for the whole window.
fn coordinator_down(name: &str, node: u32) -> Case {
    let scenario = scenarios::find(name).unwrap();
    let mut case = scenarios::default_case(scenario, 7, None);
    case.workload.ops = 400;
    let mut plan = FaultPlan::calm(6_000);
    plan.faults.push(Fault::Crash {
        at_ms: 1_000,
        node,
        down_ms: 60_000,
        disk: DiskLoss::LoseUnsynced,
    });
    case.plan = Some(plan);
    case
}

#[test]
fn classic_blocks_while_its_coordinator_is_down_and_replicated_does_not() {
    // Classic: nothing commits from the crash to the heal (and the run stays
    // live only because the heal restarts the coordinator).
    let (total, _, _, _, times) = tally(&coordinator_down("txn", 1));
    let during = times.iter().filter(|&&t| (1_000..6_000).contains(&t)).count();
    println!("txn, coordinator down 1-6 s: {total} transfers committed, {during} of them while it was down");
    assert_eq!(during, 0, "classic 2PC cannot decide without its coordinator");
    // Replicated: whichever replica is lost (the leader among them), the
    // other two keep deciding.
    for node in 1..=3 {
        let (_, _, _, _, times) = tally(&coordinator_down("txn-replicated", node));
        let during = times.iter().filter(|&&t| (1_500..6_000).contains(&t)).count();
        println!("txn-replicated, replica {node} down 1-6 s: {during} transfers committed while it was down");
        assert!(during > 0, "replica {node} down blocked the replicated coordinator");
    }
}

#[test]
fn every_planted_txn_bug_is_registered_with_a_distinct_name() {
    let names = |s: &str| -> Vec<_> { scenarios::find(s).unwrap().bugs().iter().map(|b| b.name).collect() };
    assert_eq!(
        names("txn"),
        [
            "decision-before-sync",
            "vote-without-synced-prepare",
            "participant-aborts-alone",
            "recovery-presumes-commit",
            "decide-from-anyone",
            "blind-write-ignores-readers"
        ]
    );
    assert_eq!(
        names("txn-replicated"),
        [
            "send-before-commit",
            "replica-presumes-abort",
            "ignore-inherited",
            "forget-presumes-abort"
        ]
    );
}

/// The default sweep of `txn` with the planted write skew: the isolation
/// checker catches it on several seeds, and on no seed does any of the
/// bank's own invariants (checked first) fire, so without the isolation
/// checker the bug would pass.
#[test]
fn only_the_isolation_checker_catches_write_skew() {
    let scenario = scenarios::find("txn").unwrap();
    let plan = SweepPlan {
        groups: vec![(
            scenario,
            sweep::default_cases(scenario, None, Some("blind-write-ignores-readers")),
        )],
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        determinism_every: 0,
        progress: false,
        stop_at_first_failure: false,
    };
    let summary = sweep::sweep(&plan).remove(0);
    let caught: Vec<u64> = summary.failures.iter().map(|f| f.seed).collect();
    println!(
        "blind-write-ignores-readers: caught on {} of {} default seeds: {caught:?}",
        caught.len(),
        summary.seeds
    );
    if let Some(f) = summary.failures.first() {
        println!("seed {}: {}", f.seed, f.violation.detail);
    }
    for f in &summary.failures {
        assert_eq!(
            f.violation.invariant, "serializable",
            "seed {}: {}",
            f.seed, f.violation
        );
    }
    assert!(caught.len() >= 3, "caught on {caught:?} only");
}

#[test]
fn under_load_the_replicated_coordinator_forgets_compacts_and_installs_snapshots() {
    let scenario = scenarios::find("txn-replicated-load").unwrap();
    let mut totals = std::collections::BTreeMap::<String, u64>::new();
    let mut ops = 0;
    for seed in 0..2 {
        let case = scenarios::default_case(scenario, seed, None);
        let outcome = run_isolated(scenario, &case, RunOptions::default());
        assert!(outcome.violations.is_empty(), "seed {seed}: {:?}", outcome.violations);
        ops += outcome.ops;
        for (situation, n) in outcome.situations {
            *totals.entry(situation).or_default() += n;
        }
    }
    println!("txn-replicated-load seeds 0..2: {ops} operations, {totals:?}");
    for situation in [FORGOT, COMPACTED, INSTALLED_SNAPSHOT] {
        assert!(
            totals.get(situation).is_some_and(|&n| n > 0),
            "no {situation}: {totals:?}"
        );
    }
}

/// The classic coordinator crashes while its commit record is being synced,
/// and the crash keeps the record: no incarnation announced the commit, the
/// next one re-sends it. The run must be judged with that commit counted
/// (before recovered commits were reported, the shards' writes looked
/// uncommitted: `final-state`).
#[test]
fn a_commit_only_the_recovered_coordinator_knows_is_judged() {
    let scenario = scenarios::find("txn").unwrap();
    let mut calm = scenarios::default_case(scenario, 1, None);
    calm.plan = Some(FaultPlan::calm(5_000));
    let outcome = run_isolated(scenario, &calm, RunOptions { keep_trace: true });
    // The coordinator's syncs after its boot are commit records; a crash at
    // a whole millisecond inside one (they take 200 us) cuts it short.
    let crash_points: Vec<u64> = outcome
        .events
        .iter()
        .filter(|s| matches!(s.event, TraceEvent::Sync { node: 1, .. }))
        .skip(1)
        .filter_map(|s| {
            let at_ms = (s.time_ns - 200_000).div_ceil(1_000_000);
            (at_ms * 1_000_000 < s.time_ns).then_some(at_ms)
        })
        .collect();
    let mut seen = 0;
    for &at_ms in crash_points.iter().take(12) {
        let mut case = calm.clone();
        let mut plan = FaultPlan::calm(5_000);
        plan.faults.push(Fault::Crash {
            at_ms,
            node: 1,
            down_ms: 300,
            disk: DiskLoss::KeepPrefix,
        });
        case.plan = Some(plan);
        let outcome = run_isolated(scenario, &case, RunOptions::default());
        assert!(
            outcome.violations.is_empty(),
            "crash at {at_ms} ms: {:?}",
            outcome.violations
        );
        seen += outcome.situations.get(RECOVERED_UNANNOUNCED).copied().unwrap_or(0);
    }
    println!(
        "{} crash points tried, {seen} commits known only to a recovered coordinator",
        crash_points.len().min(12)
    );
    assert!(seen > 0, "no crash kept an unannounced commit: {crash_points:?}");
}
