//! The `txn` and `txn-replicated` scenarios end to end: fault-free runs
//! commit transfers and pass every check, the committed-transfer rate per
//! simulated second (a deterministic figure: simulated time, not wall time)
//! is reported, and a coordinator that stays down blocks classic 2PC but not
//! the replicated coordinator.

use ringfence::history::{Event, EventKind};
use ringfence_sim::plan::{DiskLoss, Fault, FaultPlan};
use ringfence_sim::runner::{Case, RunOptions};
use ringfence_sim::scenarios::{self, txn::BankOp};
use ringfence_sim::sweep::run_isolated;

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
            "decide-from-anyone"
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
