//! Shrinking: reduce a failing case to a small one that still violates the
//! same invariant, so a person can read it in one screen.
//!
//! Greedy delta debugging over the case's parts, repeated until nothing more
//! can go: remove faults (ddmin over the plan's fault list), shorten the
//! faults that remain and switch off message-fault rates they do not need,
//! shorten the fault window, then drop clients, lower the
//! operation budget and drop servers (down to the scenario's minimum). Every
//! candidate is a full deterministic run; a candidate is kept only if it
//! fails with the original invariant. The seed never changes, so the result
//! is a case like any other: replayable, and savable to `seeds/`.

use ringfence::env::NodeId;
use serde::Serialize;

use crate::plan::{Fault, FaultPlan};
use crate::runner::{Case, RunOptions, RunReport};
use crate::scenario::server_ids;
use crate::scenarios::DynScenario;
use crate::sweep::run_isolated;

/// How big a case is, in the terms a reader cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Size {
    pub faults: usize,
    /// Client operations the run completed.
    pub ops: u64,
    pub clients: u32,
    pub ops_per_client: u32,
    pub servers: u32,
    pub window_ms: u64,
}

impl Size {
    fn of(outcome: &RunReport) -> Size {
        Size {
            faults: outcome.plan.faults.len(),
            ops: outcome.ops,
            clients: outcome.case.workload.clients,
            ops_per_client: outcome.case.workload.ops,
            servers: outcome.case.servers,
            window_ms: outcome.plan.duration_ms,
        }
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} faults, {} ops ({} clients x {}), {} servers, {} ms window",
            self.faults, self.ops, self.clients, self.ops_per_client, self.servers, self.window_ms
        )
    }
}

/// The result of shrinking.
#[derive(Debug, Clone, Serialize)]
pub struct Shrunk {
    pub invariant: String,
    pub before: Size,
    pub after: Size,
    /// Simulation runs the shrinker spent.
    pub runs: u32,
    pub case: Case,
    #[serde(skip)]
    pub outcome: RunReport,
}

struct Shrinker {
    scenario: &'static dyn DynScenario,
    invariant: String,
    best: RunReport,
    runs: u32,
    max_runs: u32,
}

impl Shrinker {
    /// Runs `candidate`; keeps it if it still fails the same way.
    fn try_case(&mut self, candidate: Case) -> bool {
        if self.runs >= self.max_runs {
            return false;
        }
        self.runs += 1;
        let outcome = run_isolated(self.scenario, &candidate, RunOptions::default());
        let same = outcome.violations.iter().any(|v| v.invariant == self.invariant);
        if same {
            self.best = outcome;
        }
        same
    }

    fn with_plan(&self, plan: FaultPlan) -> Case {
        Case {
            plan: Some(plan),
            ..self.best.case.clone()
        }
    }

    fn plan(&self) -> FaultPlan {
        self.best.plan.clone()
    }

    /// ddmin over the fault list: remove chunks, finer and finer.
    fn remove_faults(&mut self) -> bool {
        let mut progress = false;
        let mut chunks = 2;
        while !self.plan().faults.is_empty() {
            let faults = self.plan().faults;
            let size = faults.len().div_ceil(chunks);
            let mut removed = false;
            for start in (0..faults.len()).step_by(size.max(1)) {
                let mut plan = self.plan();
                plan.faults = faults
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i < start || *i >= start + size)
                    .map(|(_, f)| f.clone())
                    .collect();
                if self.try_case(self.with_plan(plan)) {
                    removed = true;
                    break;
                }
            }
            if removed {
                progress = true;
                chunks = (chunks - 1).max(2);
            } else if size <= 1 {
                break;
            } else {
                chunks = (chunks * 2).min(faults.len());
            }
        }
        progress
    }

    /// Halves each lasting fault's duration while the failure persists.
    fn shorten_faults(&mut self) -> bool {
        let mut progress = false;
        for i in 0..self.plan().faults.len() {
            while let Some(ms) = self.plan().faults[i].duration_ms().filter(|&ms| ms > 1) {
                let mut plan = self.plan();
                plan.faults[i] = plan.faults[i].with_duration_ms(ms / 2);
                if !self.try_case(self.with_plan(plan)) {
                    break;
                }
                progress = true;
            }
        }
        progress
    }

    /// Turns off the message-fault rates (and late copies) a network window
    /// does not need.
    fn simplify_network(&mut self) -> bool {
        let mut progress = false;
        for i in 0..self.plan().faults.len() {
            for which in 0..3 {
                let mut plan = self.plan();
                let Fault::Network {
                    loss, duplicate, delay, ..
                } = &mut plan.faults[i]
                else {
                    break;
                };
                let rate = [loss, duplicate, delay].into_iter().nth(which).expect("three rates");
                if *rate == 0.0 {
                    continue;
                }
                *rate = 0.0;
                progress |= self.try_case(self.with_plan(plan));
            }
            let mut plan = self.plan();
            if let Fault::Network { late_ms, .. } = &mut plan.faults[i] {
                if *late_ms > 0 {
                    *late_ms = 0;
                    progress |= self.try_case(self.with_plan(plan));
                }
            }
        }
        progress
    }

    /// Ends the fault window just after the last fault ends.
    fn shorten_window(&mut self) -> bool {
        let plan = self.plan();
        let last = plan
            .faults
            .iter()
            .map(|f| f.at_ms() + f.duration_ms().unwrap_or(0))
            .max()
            .unwrap_or(0);
        let mut progress = false;
        for target in [last + 1, last + 100, (last + plan.duration_ms) / 2] {
            let current = self.plan().duration_ms;
            if target >= current {
                continue;
            }
            let mut candidate = self.plan();
            candidate.duration_ms = target;
            if self.try_case(self.with_plan(candidate)) {
                progress = true;
                break;
            }
        }
        progress
    }

    /// Lowers a node count (clients or servers) one at a time down to
    /// `min`, dropping the faults on nodes that disappear.
    fn drop_nodes(&mut self, count: fn(&mut Case) -> &mut u32, min: u32) -> bool {
        let mut progress = false;
        while *count(&mut self.best.case.clone()) > min {
            let mut case = self.best.case.clone();
            *count(&mut case) -= 1;
            case.plan = Some(restrict(
                &self.plan(),
                &server_ids(case.servers),
                &self.scenario.client_ids(case.workload.clients),
            ));
            if !self.try_case(case) {
                break;
            }
            progress = true;
        }
        progress
    }

    fn lower_ops(&mut self) -> bool {
        let mut progress = false;
        let mut step = self.best.case.workload.ops / 2;
        while step > 0 {
            let mut case = self.best.case.clone();
            if case.workload.ops > step {
                case.workload.ops -= step;
                if self.try_case(case) {
                    progress = true;
                    continue;
                }
            }
            step /= 2;
        }
        progress
    }
}

/// The plan without faults on nodes that no longer exist, and partitions
/// reduced to the nodes that remain.
pub fn restrict(plan: &FaultPlan, servers: &[NodeId], clients: &[NodeId]) -> FaultPlan {
    let exists = |n: &NodeId| servers.contains(n) || clients.contains(n);
    let keep = |nodes: &[NodeId]| nodes.iter().copied().filter(|n| exists(n)).collect::<Vec<_>>();
    let faults = plan
        .faults
        .iter()
        .filter_map(|f| match f {
            Fault::Crash { node, .. }
            | Fault::Pause { node, .. }
            | Fault::Drift { node, .. }
            | Fault::Jump { node, .. }
            | Fault::ClientCrash { node, .. }
            | Fault::Disk { node, .. } => exists(node).then(|| f.clone()),
            Fault::Rogue { from, to, .. } => (exists(from) && exists(to)).then(|| f.clone()),
            Fault::Partition {
                at_ms,
                for_ms,
                shape,
                groups,
            } => Some(Fault::Partition {
                at_ms: *at_ms,
                for_ms: *for_ms,
                shape: shape.clone(),
                groups: groups.iter().map(|g| keep(g)).filter(|g| !g.is_empty()).collect(),
            }),
            Fault::OneWay {
                at_ms,
                for_ms,
                from,
                to,
            } => {
                let (from, to) = (keep(from), keep(to));
                (!from.is_empty() && !to.is_empty()).then_some(Fault::OneWay {
                    at_ms: *at_ms,
                    for_ms: *for_ms,
                    from,
                    to,
                })
            }
            Fault::Slow {
                at_ms,
                for_ms,
                delay_ms,
                links,
            } => {
                let links: Vec<_> = links
                    .iter()
                    .copied()
                    .filter(|&(a, b)| exists(&a) && exists(&b))
                    .collect();
                (!links.is_empty()).then_some(Fault::Slow {
                    at_ms: *at_ms,
                    for_ms: *for_ms,
                    delay_ms: *delay_ms,
                    links,
                })
            }
            // Aimed faults name roles, and links to nodes that are gone are no-ops.
            Fault::Network { .. }
            | Fault::UnsyncedCrash { .. }
            | Fault::Aimed { .. }
            | Fault::MomentCrash { .. }
            | Fault::MomentSplit { .. }
            | Fault::Isolate { .. }
            | Fault::Stall { .. } => Some(f.clone()),
        })
        .collect();
    FaultPlan { faults, ..plan.clone() }
}

/// Shrinks a failing `case`. `Err` if it does not fail.
pub fn shrink(scenario: &'static dyn DynScenario, case: &Case, max_runs: u32) -> Result<Shrunk, String> {
    let first = run_isolated(scenario, case, RunOptions::default());
    let invariant = first
        .violations
        .first()
        .map(|v| v.invariant.clone())
        .ok_or_else(|| format!("seed {} of {} passes: nothing to shrink", case.seed, case.scenario))?;
    let before = Size::of(&first);
    let mut best = first;
    best.case.plan = Some(best.plan.clone());
    let mut s = Shrinker {
        scenario,
        invariant,
        best,
        runs: 1,
        max_runs,
    };
    loop {
        let mut progress = s.remove_faults();
        progress |= s.shorten_faults();
        progress |= s.simplify_network();
        progress |= s.shorten_window();
        progress |= s.drop_nodes(|c| &mut c.workload.clients, 1);
        progress |= s.lower_ops();
        progress |= s.drop_nodes(|c| &mut c.servers, scenario.min_servers());
        if !progress || s.runs >= s.max_runs {
            break;
        }
    }
    Ok(Shrunk {
        invariant: s.invariant,
        before,
        after: Size::of(&s.best),
        runs: s.runs,
        case: s.best.case.clone(),
        outcome: s.best,
    })
}

/// The corpus file name for a shrunk case.
pub fn corpus_name(case: &Case) -> String {
    format!(
        "{}-{}-seed{}.json",
        case.scenario,
        case.bug.as_deref().unwrap_or("found"),
        case.seed
    )
}
