//! Runs one case — a scenario, a seed, optionally a planted bug, a workload
//! and a fault plan — to a verdict.
//!
//! A run is a pure function of its case: madsim is seeded with the case's
//! seed, every other random choice comes from ChaCha streams derived from it,
//! and the trace hash over all events proves it (same case ⇒ same hash).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringfence::history::Violation;
use serde::{Deserialize, Serialize};

use crate::env::SimEnv;
use crate::nemesis::Nemesis;
use crate::plan::{FaultKind, FaultPlan, Targets};
use crate::scenario::{server_ids, Budget, Client, Params, Recorder, Scenario, Workload, PROBE_ID};
use crate::trace::{Stamped, Trace, TraceEvent};
use crate::world::{addr_of, World};

/// Everything that determines a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub scenario: String,
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bug: Option<String>,
    pub servers: u32,
    pub workload: Workload,
    /// The fault plan; `None` means "generate it from the seed".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<FaultPlan>,
}

impl Case {
    /// The command that reruns this case exactly. A case whose plan was
    /// edited (shrunk) is replayed from its saved file instead.
    pub fn repro_command(&self, defaults: (u32, Workload)) -> String {
        let mut cmd = format!(
            "cargo run --release -p ringfence-sim -- replay --scenario {} --seed {}",
            self.scenario, self.seed
        );
        if let Some(bug) = &self.bug {
            cmd += &format!(" --bug {bug}");
        }
        if self.servers != defaults.0 {
            cmd += &format!(" --servers {}", self.servers);
        }
        if self.workload.clients != defaults.1.clients {
            cmd += &format!(" --clients {}", self.workload.clients);
        }
        if self.workload.ops != defaults.1.ops {
            cmd += &format!(" --ops {}", self.workload.ops);
        }
        cmd
    }
}

/// The trace hash with the run's verdicts folded in, so that the
/// determinism check also catches a rerun that judged differently.
fn verdict_hash(trace: u64, violations: &[Violation]) -> u64 {
    use std::hash::{Hash, Hasher};
    // determinism: ok — `DefaultHasher::new` has fixed keys.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    trace.hash(&mut hasher);
    for v in violations {
        (&v.invariant, &v.detail, &v.events).hash(&mut hasher);
    }
    hasher.finish()
}

/// What a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub case: Case,
    /// The plan that ran (generated or given).
    pub plan: FaultPlan,
    pub trace_hash: u64,
    pub trace_events: u64,
    /// Completed client operations.
    pub ops: u64,
    /// Fault effects by kind, counted where they took effect (see
    /// [`crate::world`]).
    pub fired: BTreeMap<FaultKind, u64>,
    /// Named situations aimed faults brought about.
    pub situations: BTreeMap<String, u64>,
    pub violations: Vec<Violation>,
    /// Simulated time the run covered.
    pub sim_time: Duration,
    /// Messages our layer delivered.
    pub messages: u64,
    #[serde(skip)]
    pub events: Vec<Stamped>,
    /// The history as JSON lines, when the trace was kept.
    #[serde(skip)]
    pub history: Vec<String>,
}

impl RunReport {
    pub fn failed(&self) -> bool {
        !self.violations.is_empty()
    }

    /// The outcome of a run that panicked: a node's assertion failed (an
    /// invariant the protocol checks itself) or the runner hit its limit.
    pub fn from_panic(plan: FaultPlan, case: Case, violation: Violation) -> RunReport {
        RunReport {
            case,
            plan,
            // The panic is the run's verdict: a rerun that panics elsewhere,
            // or not at all, must not compare equal.
            trace_hash: verdict_hash(0, std::slice::from_ref(&violation)),
            trace_events: 0,
            ops: 0,
            fired: BTreeMap::new(),
            situations: BTreeMap::new(),
            violations: vec![violation],
            sim_time: Duration::ZERO,
            messages: 0,
            events: Vec::new(),
            history: Vec::new(),
        }
    }
}

/// Run options that do not change the outcome.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Keep every trace event and the history (for replay output).
    pub keep_trace: bool,
}

/// Time allowed after the heal for clients to finish the operation they
/// had in flight.
const DRAIN_BOUND: Duration = Duration::from_secs(10);

/// The fault plan for a case: the one it carries, or the seed's.
pub fn plan_for<S: Scenario>(case: &Case) -> FaultPlan {
    case.plan.clone().unwrap_or_else(|| {
        let clients = S::client_ids(case.workload.clients);
        let servers = server_ids(case.servers);
        let targets = Targets {
            replaceable: S::replaceable_servers(&servers),
            servers,
            crashable_clients: S::crashable_clients(&clients),
            clients,
            kinds: S::fault_kinds(),
            aiming: S::SPEC.aiming,
        };
        S::plan(case.seed, &targets)
    })
}

/// Runs `case` against scenario `S`. Must be called on a thread that has
/// not run a simulation before (madsim seeds its hash maps once per thread).
pub fn run<S: Scenario>(case: &Case, bug: Option<&'static crate::scenario::Bug>, options: RunOptions) -> RunReport {
    run_with::<S>(case, bug, options, None)
}

/// [`run`], with the test knob: no effect of `disable_effect` is carried
/// out, while every decision about it is still made (see [`crate::world`]).
#[doc(hidden)]
pub fn run_with<S: Scenario>(
    case: &Case,
    bug: Option<&'static crate::scenario::Bug>,
    options: RunOptions,
    disable_effect: Option<FaultKind>,
) -> RunReport {
    let plan = plan_for::<S>(case);
    let params = Params {
        seed: case.seed,
        bug,
        servers: case.servers,
        workload: case.workload,
    };
    let servers = server_ids(case.servers);
    let clients = S::client_ids(case.workload.clients);
    let all: Vec<_> = servers.iter().chain([&PROBE_ID]).chain(&clients).copied().collect();
    let world = World::new(case.seed, &all, &servers, Trace::new(options.keep_trace));
    world.lock().disabled = disable_effect;

    let mut runtime = madsim::runtime::Runtime::with_seed_and_config(case.seed, madsim::Config::default());
    // A safety net far past every bound: a run that never ends is a bug in
    // the runner or the scenario, and must not hang a sweep.
    runtime.set_time_limit(
        Duration::from_millis(plan.duration_ms) + DRAIN_BOUND + S::SPEC.liveness_bound + Duration::from_secs(60),
    );
    let scenario = Arc::new(S::new(&params));
    let recorder = Recorder::<S::Op>::new(world.clone());
    let (violations, sim_time) = runtime.block_on(drive(
        scenario.clone(),
        &plan,
        &world,
        &servers,
        &clients,
        case.workload.ops,
        recorder.clone(),
    ));

    let history = recorder.take();
    // The scenario's own verdict first: it names the invariant, while a
    // liveness failure is often only a consequence.
    let mut all_violations = scenario.check(&history);
    all_violations.extend(violations);
    let mut w = world.lock();
    let mut events = w.trace.take_events();
    if options.keep_trace {
        let time_ns = sim_time.as_nanos() as u64;
        events.extend(all_violations.iter().map(|v| Stamped {
            time_ns,
            event: TraceEvent::Violation {
                invariant: v.invariant.clone(),
                detail: v.detail.clone(),
                events: v.events.clone(),
            },
        }));
    }
    RunReport {
        case: case.clone(),
        plan,
        trace_hash: verdict_hash(w.trace.hash(), &all_violations),
        trace_events: w.trace.len(),
        ops: history.operations().iter().filter(|(_, done)| done.is_some()).count() as u64,
        fired: std::mem::take(&mut w.fired),
        situations: std::mem::take(&mut w.situations),
        violations: all_violations,
        sim_time,
        messages: w.delivered,
        events,
        history: if options.keep_trace {
            history
                .events()
                .iter()
                .map(|e| serde_json::to_string(e).expect("history serializes"))
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// Which clients' workloads have returned (in any incarnation).
#[derive(Default)]
struct Finished {
    done: std::sync::Mutex<BTreeSet<u32>>,
    wakeup: tokio::sync::Notify,
}

impl Finished {
    fn done(&self, client: u32) {
        self.done.lock().unwrap_or_else(|e| e.into_inner()).insert(client);
        self.wakeup.notify_one();
    }

    async fn all(&self, clients: usize) {
        while self.done.lock().unwrap_or_else(|e| e.into_inner()).len() < clients {
            self.wakeup.notified().await;
        }
    }
}

async fn drive<S: Scenario>(
    scenario: Arc<S>,
    plan: &FaultPlan,
    world: &World,
    servers: &[u32],
    clients: &[u32],
    ops: u32,
    recorder: Recorder<S::Op>,
) -> (Vec<Violation>, Duration) {
    let handle = madsim::runtime::Handle::current();
    let start = madsim::time::Instant::now(); // determinism: ok — simulated time
                                              // The network's own node, where delayed copies wait: no fault touches it.
    world.lock().network = Some(handle.create_node().name("network").build());
    for &id in servers {
        let (scenario, node_world) = (scenario.clone(), world.clone());
        let node = handle
            .create_node()
            .name(format!("server-{id}"))
            .ip(addr_of(id).ip())
            .init(move || {
                let (scenario, world) = (scenario.clone(), node_world.clone());
                async move {
                    let env = SimEnv::boot(world, id).await;
                    scenario.server(env).await;
                }
            })
            .build();
        world.lock().node(id).madsim_id = Some(node.id());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(Finished::default());
    for (index, &id) in clients.iter().enumerate() {
        let index = index as u32;
        let budget = Budget::new(ops);
        let (scenario, node_world, servers) = (scenario.clone(), world.clone(), servers.to_vec());
        let (stop, recorder, finished) = (stop.clone(), recorder.clone(), finished.clone());
        // Every (re)start runs the workload on with what is left of the budget.
        let node = handle
            .create_node()
            .name(format!("client-{id}"))
            .ip(addr_of(id).ip())
            .init(move || {
                let (scenario, world, finished) = (scenario.clone(), node_world.clone(), finished.clone());
                let client = Client::new(index, servers.clone(), budget.clone(), stop.clone(), recorder.clone());
                async move {
                    let env = SimEnv::boot(world, id).await;
                    scenario.client(env, client).await;
                    finished.done(index);
                }
            })
            .build();
        world.lock().node(id).madsim_id = Some(node.id());
    }
    let probe_node = handle.create_node().name("probe").ip(addr_of(PROBE_ID).ip()).build();
    world.lock().node(PROBE_ID).madsim_id = Some(probe_node.id());

    let targets: Vec<_> = servers.iter().chain(clients).copied().collect();
    let adversary = scenario.clone();
    let (crashed, client_nodes) = (recorder.clone(), clients.to_vec());
    Nemesis::new(world.clone(), targets)
        .with_adversary(Box::new(move |rng, from, to| adversary.rogue(rng, from, to)))
        .on_client_crash(Box::new(move |node| {
            if let Some(index) = client_nodes.iter().position(|&c| c == node) {
                crashed.crashed(index as u32);
            }
        }))
        .run(plan)
        .await;
    stop.store(true, Ordering::Relaxed);

    // Both bounds run from the heal. The probe starts once the clients have
    // finished what they had in flight (checkers take its reads as final),
    // so a slow drain eats into the liveness bound.
    let healed = madsim::time::Instant::now(); // determinism: ok — simulated time
    let mut violations = Vec::new();
    let drained = madsim::time::timeout(DRAIN_BOUND, finished.all(clients.len())).await;
    if drained.is_err() {
        violations.push(Violation::new(
            "liveness",
            format!("clients did not finish their in-flight operations within {DRAIN_BOUND:?} after the faults healed"),
            vec![],
        ));
    }
    let probe = Client::new(
        clients.len() as u32,
        servers.to_vec(),
        Budget::new(1),
        Arc::new(AtomicBool::new(false)),
        recorder.clone(),
    );
    let probe_world = world.clone();
    let probed = probe_node.spawn(async move {
        let env = SimEnv::boot(probe_world, PROBE_ID).await;
        scenario.probe(env, probe).await;
    });
    let left = S::SPEC.liveness_bound.saturating_sub(healed.elapsed());
    if madsim::time::timeout(left, probed).await.is_err() {
        violations.push(Violation::new(
            "liveness",
            format!(
                "the probe did not complete within {:?} after the faults healed (the clients took {:?} to finish)",
                S::SPEC.liveness_bound,
                S::SPEC.liveness_bound - left
            ),
            vec![],
        ));
    }
    (violations, start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_change_the_trace_hash() {
        let lost = Violation::new("acked-write-lost", "write 3", vec![4]);
        let other = Violation::new("acked-write-lost", "write 5", vec![4]);
        let clean = verdict_hash(7, &[]);
        assert_ne!(clean, verdict_hash(7, std::slice::from_ref(&lost)));
        assert_ne!(verdict_hash(7, std::slice::from_ref(&lost)), verdict_hash(7, &[other]));
        assert_eq!(verdict_hash(7, std::slice::from_ref(&lost)), verdict_hash(7, &[lost]));
        assert_ne!(clean, verdict_hash(8, &[]));
    }
}
