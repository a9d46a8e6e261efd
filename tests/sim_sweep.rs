//! The default seed sweep of every scenario, as `cargo test` runs it: no
//! violations, every fault kind fired, a sample of seeds rerun with identical
//! trace hashes, and every planted bug caught by its own invariant on at
//! least [`MIN_CATCHES`] distinct seeds (so a change in how plans draw from
//! the rng cannot silently drop a catch that hung on one seed).
//!
//! `RINGFENCE_SEEDS`, `RINGFENCE_SEED`, `RINGFENCE_SCENARIO`,
//! `RINGFENCE_SWEEP_TIME`, ... widen or pin the sweep (the list:
//! `ringfence_sim::knobs::HELP`); a failure prints the command that
//! reproduces it and saves cases outside the default seeds to `seeds/`.

use std::path::Path;

use ringfence_sim::knobs::{Knobs, HELP};
use ringfence_sim::sweep::{self, SweepPlan};

/// Distinct default seeds on which every planted bug must be caught.
const MIN_CATCHES: usize = 3;

fn knobs() -> Knobs {
    Knobs::from_env(&Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn default_sweep_is_clean_deterministic_and_fires_every_fault_kind() {
    let knobs = knobs();
    let summaries = knobs.sweep();
    assert_eq!(summaries.len(), knobs.scenarios().len());
    match knobs.conclude(&summaries, "default_sweep_is_clean") {
        Ok(table) => println!("{table}"),
        Err(message) => panic!("{message}"),
    }
    for s in &summaries {
        assert!(s.determinism_checked > 0, "{} rechecked no seed", s.scenario);
        assert!(s.ops > 0, "{} ran no operations", s.scenario);
    }
}

#[test]
fn every_planted_bug_is_caught_by_the_default_sweep() {
    let knobs = knobs();
    let mut report = String::new();
    let mut missed = Vec::new();
    for scenario in knobs.scenarios() {
        for bug in scenario.bugs() {
            let plan = SweepPlan {
                groups: vec![(scenario, sweep::default_cases(scenario, None, Some(bug.name)))],
                jobs: knobs.jobs,
                determinism_every: 0,
                progress: false,
                stop_at_first_failure: false,
            };
            let summary = sweep::sweep(&plan).remove(0);
            report += &sweep::table(std::slice::from_ref(&summary));
            let caught: std::collections::BTreeSet<u64> = summary
                .failures
                .iter()
                .filter(|f| bug.is_caught_by(&f.violation.invariant))
                .map(|f| f.seed)
                .collect();
            if caught.len() < MIN_CATCHES {
                missed.push(format!(
                    "{} +{} (expected {} on {MIN_CATCHES} seeds, caught on {caught:?}); reproduce: cargo run --release -p ringfence-sim -- sweep -s {} --bug {}",
                    scenario.name(),
                    bug.name,
                    bug.symptoms(),
                    scenario.name(),
                    bug.name
                ));
            }
        }
    }
    println!("{report}");
    assert!(
        missed.is_empty(),
        "planted bugs not caught:\n{}\n{report}\n{HELP}",
        missed.join("\n")
    );
}
