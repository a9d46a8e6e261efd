//! The registry of simulated scenarios: one line per protocol in [`ALL`].

pub mod counter;
pub mod judge;
pub mod lock;
pub mod lock_hostile;
pub mod lock_moves;
pub mod log;
pub mod operator;
pub mod rebalancer;
pub mod rogue;
pub mod txn;

use std::marker::PhantomData;

use crate::plan::{FaultKind, FaultPlan};
use crate::runner::{plan_for, run_with, Case, RunOptions, RunReport};
use crate::scenario::{Bug, Scenario, Workload};

/// A scenario with its types erased, so the CLI and sweeps can hold a list.
pub trait DynScenario: Sync {
    fn name(&self) -> &'static str;
    fn about(&self) -> &'static str;
    fn bugs(&self) -> &'static [Bug];
    fn default_servers(&self) -> u32;
    fn min_servers(&self) -> u32;
    fn default_workload(&self) -> Workload;
    fn client_ids(&self, clients: u32) -> Vec<ringfence::env::NodeId>;
    fn default_seeds(&self) -> u64;
    fn fault_kinds(&self) -> Vec<FaultKind>;
    fn situations(&self) -> &'static [&'static str];
    /// The fault plan `case` runs with.
    fn plan(&self, case: &Case) -> FaultPlan;
    /// Runs a validated case (see [`validate`]).
    fn run(&self, case: &Case, options: RunOptions) -> RunReport {
        self.run_with(case, options, None)
    }
    /// [`DynScenario::run`] with the test knob of [`crate::runner::run_with`].
    #[doc(hidden)]
    fn run_with(&self, case: &Case, options: RunOptions, disable_effect: Option<FaultKind>) -> RunReport;
}

struct Registered<S>(PhantomData<fn() -> S>);

impl<S: Scenario> DynScenario for Registered<S> {
    fn name(&self) -> &'static str {
        S::SPEC.name
    }
    fn about(&self) -> &'static str {
        S::SPEC.about
    }
    fn bugs(&self) -> &'static [Bug] {
        S::SPEC.bugs
    }
    fn default_servers(&self) -> u32 {
        S::SPEC.servers
    }
    fn min_servers(&self) -> u32 {
        S::SPEC.min_servers
    }
    fn default_workload(&self) -> Workload {
        S::SPEC.workload
    }
    fn client_ids(&self, clients: u32) -> Vec<ringfence::env::NodeId> {
        S::client_ids(clients)
    }
    fn default_seeds(&self) -> u64 {
        S::SPEC.default_seeds
    }
    fn fault_kinds(&self) -> Vec<FaultKind> {
        S::fault_kinds()
    }
    fn situations(&self) -> &'static [&'static str] {
        S::SPEC.situations
    }
    fn plan(&self, case: &Case) -> FaultPlan {
        plan_for::<S>(case)
    }
    fn run_with(&self, case: &Case, options: RunOptions, disable_effect: Option<FaultKind>) -> RunReport {
        let bug = case
            .bug
            .as_deref()
            .map(|name| find_bug(S::SPEC.bugs, name).expect("case was validated"));
        run_with::<S>(case, bug, options, disable_effect)
    }
}

/// Type-erases a scenario, e.g. to sweep your own scenario without adding
/// it to [`ALL`].
pub fn erase<S: Scenario>() -> &'static dyn DynScenario {
    &Registered::<S>(PhantomData)
}

/// Every scenario, in the order sweeps run them.
pub static ALL: &[&dyn DynScenario] = &[
    &Registered::<counter::Counter>(PhantomData),
    &Registered::<log::LogScenario<3>>(PhantomData),
    &Registered::<log::LogScenario<5>>(PhantomData),
    &Registered::<log::LogScenario<5, true>>(PhantomData),
    &Registered::<lock::LockScenario>(PhantomData),
    &Registered::<lock::LockScenario<lock::Members>>(PhantomData),
    &Registered::<lock::LockScenario<lock::Moves>>(PhantomData),
    &Registered::<txn::Bank<1>>(PhantomData),
    &Registered::<txn::Bank<3>>(PhantomData),
    &Registered::<txn::Bank<3, 4>>(PhantomData),
    &Registered::<txn::Bank<5, 1, true>>(PhantomData),
    &Registered::<txn::Bank<1, 1, false, true>>(PhantomData),
    &Registered::<txn::Bank<3, 1, false, true>>(PhantomData),
    &Registered::<txn::Bank<5, 1, true, true>>(PhantomData),
];

fn find_bug(bugs: &'static [Bug], name: &str) -> Option<&'static Bug> {
    bugs.iter().find(|b| b.name == name)
}

/// Looks a scenario up by name, with an error that lists the valid names.
pub fn find(name: &str) -> Result<&'static dyn DynScenario, String> {
    ALL.iter().copied().find(|s| s.name() == name).ok_or_else(|| {
        let names: Vec<_> = ALL.iter().map(|s| s.name()).collect();
        format!("unknown scenario `{name}`; known scenarios: {}", names.join(", "))
    })
}

/// Checks a case against its registered scenario before running it.
pub fn validate(case: &Case) -> Result<&'static dyn DynScenario, String> {
    let scenario = find(&case.scenario)?;
    validate_for(scenario, case)?;
    Ok(scenario)
}

/// Most server nodes a case may have (their ids stay below the probe's).
pub const MAX_SERVERS: u32 = 16;

/// Checks a case against `scenario`.
pub fn validate_for(scenario: &dyn DynScenario, case: &Case) -> Result<(), String> {
    if let Some(bug) = &case.bug {
        if find_bug(scenario.bugs(), bug).is_none() {
            let names: Vec<_> = scenario.bugs().iter().map(|b| b.name).collect();
            return Err(format!(
                "scenario `{}` has no planted bug `{bug}`; its bugs: {}",
                scenario.name(),
                names.join(", ")
            ));
        }
    }
    if case.servers < scenario.min_servers() || case.servers > MAX_SERVERS {
        return Err(format!(
            "scenario `{}` needs between {} and {MAX_SERVERS} servers, got {}",
            scenario.name(),
            scenario.min_servers(),
            case.servers
        ));
    }
    if case.workload.clients == 0 || case.workload.clients > 64 {
        return Err(format!(
            "clients must be between 1 and 64, got {}",
            case.workload.clients
        ));
    }
    if let Some(plan) = &case.plan {
        let mut nodes = crate::scenario::server_ids(case.servers);
        nodes.push(crate::scenario::PROBE_ID);
        nodes.extend(scenario.client_ids(case.workload.clients));
        plan.validate(&nodes)?;
    }
    Ok(())
}

/// The default case for `scenario` and `seed`.
pub fn default_case(scenario: &dyn DynScenario, seed: u64, bug: Option<&str>) -> Case {
    Case {
        scenario: scenario.name().to_string(),
        seed,
        bug: bug.map(str::to_string),
        servers: scenario.default_servers(),
        workload: scenario.default_workload(),
        plan: None,
    }
}
