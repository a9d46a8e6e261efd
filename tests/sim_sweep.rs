//! The default seed sweep of every scenario, as `cargo test` runs it: no
//! violations, every fault kind fired, a sample of seeds rerun with identical
//! trace hashes, and every planted bug caught by its own invariant on at
//! least [`MIN_CATCHES`] distinct seeds (so a change in how plans draw from
//! the rng cannot silently drop a catch that hung on one seed).

use ringfence_sim::scenarios;
use ringfence_sim::sweep::{self, SweepPlan};

/// Distinct default seeds on which every planted bug must be caught.
const MIN_CATCHES: usize = 3;

fn jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[test]
fn default_sweep_is_clean_deterministic_and_fires_every_fault_kind() {
    let plan = SweepPlan {
        groups: sweep::default_groups(None),
        jobs: jobs(),
        determinism_every: 10,
        progress: false,
        stop_at_first_failure: false,
    };
    let summaries = sweep::sweep(&plan);
    let table = sweep::table(&summaries);
    println!("{table}");
    assert_eq!(summaries.len(), scenarios::ALL.len());
    for s in &summaries {
        assert!(s.passed(), "default sweep of {} failed:\n{table}", s.scenario);
        assert!(s.determinism_checked > 0);
        assert!(s.ops > 0, "{} ran no operations", s.scenario);
    }
}

#[test]
fn every_planted_bug_is_caught_by_the_default_sweep() {
    let mut report = String::new();
    let mut missed = Vec::new();
    for scenario in scenarios::ALL {
        for bug in scenario.bugs() {
            let plan = SweepPlan {
                groups: vec![(*scenario, sweep::default_cases(*scenario, None, Some(bug.name)))],
                jobs: jobs(),
                determinism_every: 0,
                progress: false,
                stop_at_first_failure: false,
            };
            let summary = sweep::sweep(&plan).remove(0);
            report += &sweep::table(std::slice::from_ref(&summary));
            let caught: std::collections::BTreeSet<u64> = summary
                .failures
                .iter()
                .filter(|f| f.violation.invariant == bug.caught_by)
                .map(|f| f.seed)
                .collect();
            if caught.len() < MIN_CATCHES {
                missed.push(format!(
                    "{} +{} (expected {} on {MIN_CATCHES} seeds, caught on {caught:?})",
                    scenario.name(),
                    bug.name,
                    bug.caught_by
                ));
            }
        }
    }
    println!("{report}");
    assert!(missed.is_empty(), "planted bugs not caught: {missed:?}\n{report}");
}
