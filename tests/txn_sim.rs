//! The `txn` scenario end to end: fault-free runs commit transfers and pass
//! every check, and the committed-transfer rate per simulated second (a
//! deterministic figure: simulated time, not wall time) is reported.

use ringfence::history::{Event, EventKind};
use ringfence_sim::plan::FaultPlan;
use ringfence_sim::runner::RunOptions;
use ringfence_sim::scenarios::{self, txn::BankOp};
use ringfence_sim::sweep::run_isolated;

#[test]
fn calm_runs_commit_transfers_and_pass_every_check() {
    let scenario = scenarios::find("txn").unwrap();
    let (mut committed, mut aborted, mut audits, mut sim_secs) = (0u64, 0u64, 0u64, 0f64);
    for seed in 0..4 {
        let mut case = scenarios::default_case(scenario, seed, None);
        case.plan = Some(FaultPlan::calm(5_000));
        let outcome = run_isolated(scenario, &case, RunOptions { keep_trace: true });
        assert!(outcome.violations.is_empty(), "seed {seed}: {:?}", outcome.violations);
        sim_secs += outcome.sim_time.as_secs_f64();
        for line in &outcome.history {
            let event: Event<BankOp> = serde_json::from_str(line).unwrap();
            match (event.kind, &event.op) {
                (EventKind::Ok, BankOp::Transfer { .. }) => committed += 1,
                (EventKind::Fail, BankOp::Transfer { .. }) => aborted += 1,
                (EventKind::Ok, BankOp::Audit { .. }) => audits += 1,
                _ => {}
            }
        }
    }
    println!(
        "calm txn runs: {committed} transfers committed, {aborted} aborted, {audits} audits committed in {sim_secs:.2} simulated s = {:.1} committed transfers per simulated second",
        committed as f64 / sim_secs
    );
    assert!(committed > 0 && audits > 0);
}

#[test]
fn every_planted_txn_bug_is_registered_with_a_distinct_name() {
    let scenario = scenarios::find("txn").unwrap();
    let names: Vec<_> = scenario.bugs().iter().map(|b| b.name).collect();
    assert_eq!(
        names,
        [
            "decision-before-sync",
            "vote-without-synced-prepare",
            "participant-aborts-alone",
            "recovery-presumes-commit"
        ]
    );
}
