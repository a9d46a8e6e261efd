//! The lock scenario: a calm simulated run that must pass, and how its
//! fault plans aim at the situations. (The checker's own tests on
//! hand-written histories are in `ringfence::history::lock`; the default
//! sweep and the planted-bug sweep of `lock` run in tests/sim_sweep.rs with
//! every other scenario.)

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

#[test]
fn every_situation_has_named_corpus_cases_aimed_at_it() {
    use ringfence_sim::corpus;
    use ringfence_sim::plan::Fault;
    use ringfence_sim::scenarios::lock::situation;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for name in situation::ALL {
        let entry = corpus::load(&dir.join(format!("lock-{name}.json"))).expect("a passing case per situation");
        assert_eq!(entry.expect, corpus::PASS, "{name}");
        assert!(entry.case.bug.is_none(), "{name}");
        let aims = |e: &corpus::Entry| {
            e.case
                .plan
                .iter()
                .flat_map(|p| &p.faults)
                .any(|f| matches!(f, Fault::Aimed { situation, .. } if situation == name))
        };
        assert!(aims(&entry), "lock-{name}.json aims at nothing");
    }
    // The planted bug each situation exposes, caught by its invariant
    // (replayed, with the passing cases, by tests/sim_corpus.rs).
    for (name, bug, invariant) in [
        (situation::GC_PAUSE, "no-fencing", "fencing"),
        (situation::DELAYED_WRITE, "no-fencing", "fencing"),
        (situation::CLOCK_JUMP, "no-fencing", "fencing"),
        (situation::LEADER_FAILOVER, "unsynced-token", "token-order"),
        (situation::UNSYNCED_CRASH, "unsynced-token", "token-order"),
        (situation::EXPIRED_WHILE_QUEUED, "no-recheck", "lease-overlap"),
        (situation::DRIFT_WITHIN_BOUND, "no-drift-margin", "lease-overlap"),
    ] {
        let entry = corpus::load(&dir.join(format!("lock-{name}-{bug}.json"))).expect("a bug case");
        assert_eq!(
            (entry.case.bug.as_deref(), entry.expect.as_str()),
            (Some(bug), invariant)
        );
    }
}

#[test]
fn drift_situations_stay_within_the_bound_the_clients_assume() {
    use ringfence_sim::plan::Fault;
    use ringfence_sim::scenarios::lock::{drift_bound, plan_situation, situation, DRIFT_BOUND};
    use ringfence_sim::world::derive_rng;
    let bounds: Vec<f64> = (0..200).map(drift_bound).collect();
    assert!(bounds.contains(&DRIFT_BOUND) && bounds.iter().any(|&b| b < 0.02));
    for (seed, bound) in (0..200).zip(bounds) {
        let faults = plan_situation(
            situation::DRIFT_WITHIN_BOUND,
            bound,
            &mut derive_rng(seed, 0, 0),
            0,
            &[1, 2, 3],
            4,
        );
        for f in faults {
            if let Fault::Drift { ppm, .. } = f {
                let rate = 1.0 + ppm as f64 / 1e6;
                assert!(rate > 1.0 && rate * (1.0 - bound) <= 1.0, "rate {rate} bound {bound}");
            }
        }
    }
}

#[test]
fn odd_seeds_take_the_situations_in_turn() {
    use ringfence_sim::plan::Fault;
    use ringfence_sim::scenarios::{self, lock::situation};
    let scenario = scenarios::find("lock").unwrap();
    for (i, name) in situation::ALL.iter().enumerate() {
        let seed = 2 * i as u64 + 1 + 2 * situation::ALL.len() as u64;
        let plan = scenario.plan(&scenarios::default_case(scenario, seed, None));
        let aimed: Vec<&str> = plan
            .faults
            .iter()
            .filter_map(|f| match f {
                Fault::Aimed { situation, .. } => Some(situation.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(aimed, vec![*name; 2], "seed {seed}");
    }
}

/// Default-sweep seeds of the lock scenario that catch `bug` through
/// `invariant`, among `seeds`.
fn caught(bug: &str, invariant: &str, seeds: impl Iterator<Item = u64>) -> Vec<u64> {
    use ringfence_sim::runner::RunOptions;
    use ringfence_sim::scenarios;
    let scenario = scenarios::find("lock").unwrap();
    seeds
        .filter(|&seed| {
            let case = scenarios::default_case(scenario, seed, Some(bug));
            let outcome = ringfence_sim::sweep::run_isolated(scenario, &case, RunOptions::default());
            outcome.violations.iter().any(|v| v.invariant == invariant)
        })
        .collect()
}

/// A leader that retries uncommitted expiries too soon floods its log under
/// the storm seeds' 600 vanishing sessions: the service does not recover
/// within the liveness bound. (The same seeds pass without the bug: the
/// default sweep.)
#[test]
fn the_expiry_storm_catches_expiry_retry_too_soon_on_default_seeds() {
    use ringfence_sim::scenarios::lock::storm_at;
    let storms: Vec<u64> = (0..100).filter(|&s| storm_at(s).is_some()).collect();
    assert!(storms.len() >= 10, "storm seeds {storms:?}");
    let hits = caught("expiry-retry-too-soon", "liveness", storms.iter().copied());
    assert!(hits.len() >= 3, "caught on {hits:?} of storm seeds {storms:?}");
}

/// A rogue's own choice of token, admitted, shows as a grant that is not
/// above the lock's previous one in what the replicas applied.
#[test]
fn the_rogue_client_catches_client_token_on_default_seeds() {
    let hits = caught("client-token", "client-token", 0..12);
    assert!(hits.len() >= 3, "caught on {hits:?}");
}
