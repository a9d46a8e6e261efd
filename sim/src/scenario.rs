//! The interface a protocol implements to be simulated.
//!
//! A scenario says how many server and client nodes it wants, what a server
//! runs (again after every restart, from its disk), what a client does with
//! its operation budget, how to probe liveness after the faults heal, and how
//! to judge the recorded history. The runner does the rest: nodes, nemesis,
//! trace, timing, checks. `scenarios/counter.rs` is the worked example.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use ringfence::env::NodeId;
use ringfence::history::{EventKind, History, Violation};
use serde::{Deserialize, Serialize};

use ringfence::env::record::RecordBug;
use ringfence::lock::resource::ResourceBug;
use ringfence::lock::LockBug;
use ringfence::log::LogBug;
use ringfence::txn::TxnBug;

use crate::env::SimEnv;
use crate::plan::{Aiming, FaultKind, FaultPlan, Targets};
use crate::trace::TraceEvent;
use crate::world::{elapsed, World};

/// A deliberately broken variant of a protocol, and the invariant that must
/// catch it. The scenarios' `BUGS` lists are the one table from the
/// simulator's bug names to the library's switches.
#[derive(Debug, Clone, Copy)]
pub struct Bug {
    pub name: &'static str,
    pub about: &'static str,
    /// The invariants the default sweep may report for this bug: its
    /// symptoms (most bugs have one).
    pub caught_by: &'static [&'static str],
    /// The switch it turns on.
    pub planted: Planted,
}

impl Bug {
    /// Whether a violation of `invariant` is one of this bug's symptoms.
    pub fn is_caught_by(&self, invariant: &str) -> bool {
        self.caught_by.contains(&invariant)
    }

    /// Its symptoms, for people: "a or b".
    pub fn symptoms(&self) -> String {
        self.caught_by.join(" or ")
    }
}

/// A planted bug's switch: one variant per protocol's bug enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planted {
    Log(LogBug),
    Record(RecordBug),
    Lock(LockBug),
    Resource(ResourceBug),
    Txn(TxnBug),
    /// A bug in the scenario's own service (the counter tutorial's).
    Scenario,
}

impl Params {
    /// The switch of the run's planted bug, if any.
    pub fn planted(&self) -> Option<Planted> {
        self.bug.map(|b| b.planted)
    }
}

/// How much work the clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub clients: u32,
    /// Operations per client (at most; the plan's end also stops them).
    pub ops: u32,
}

/// A scenario as data: what it is called, how large it runs, and how its
/// default sweep and liveness are bounded.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub name: &'static str,
    pub about: &'static str,
    /// Its planted bugs; the default sweep catches each.
    pub bugs: &'static [Bug],
    /// Default number of server nodes, and the smallest that makes sense.
    pub servers: u32,
    pub min_servers: u32,
    pub workload: Workload,
    /// Simulated time during which faults happen, before everything heals.
    pub fault_window: Duration,
    /// After healing, the probe must complete within this bound (the
    /// liveness guarantee the scenario states).
    pub liveness_bound: Duration,
    /// Seeds in the default sweep (`cargo test` and `ringfence-sim sweep`),
    /// sized so the whole default sweep fits a 2-core machine.
    pub default_seeds: u64,
    /// How to aim the moment kinds ([`FaultKind::ROLE_AWARE`]) at the
    /// moments this scenario's servers report ([`crate::SimEnv::moment`]).
    pub aiming: Option<Aiming>,
    /// Named situations the scenario's plans aim for (see
    /// [`Fault::Aimed`](crate::plan::Fault::Aimed)); a sweep large enough to
    /// demand fault coverage fails if one never occurred.
    pub situations: &'static [&'static str],
}

/// What a scenario instance is built from.
#[derive(Debug, Clone)]
pub struct Params {
    /// The run's seed, for choices a scenario makes once per run (draw
    /// them from their own stream, [`crate::world::derive_rng`], so the
    /// fault plan and everything else stay as they were).
    pub seed: u64,
    /// Planted bug to switch on, validated against the scenario's [`Spec::bugs`].
    pub bug: Option<&'static Bug>,
    pub servers: u32,
    pub workload: Workload,
}

/// A protocol under simulation. One instance exists per run, so it may hold
/// per-run shared observations (e.g. every leader ever elected).
pub trait Scenario: Send + Sync + Sized + 'static {
    /// A client operation, as recorded in the history.
    type Op: Clone + fmt::Debug + Serialize + Send + Sync + 'static;

    /// What the scenario is, as data: its name, sizes and default sweep.
    const SPEC: Spec;
    /// The node ids of `clients` workload clients (by default 101, 102, ...;
    /// a scenario may place some in other principals, `id >> 16`).
    fn client_ids(clients: u32) -> Vec<NodeId> {
        client_ids(clients)
    }
    /// Fault kinds the nemesis may use against this scenario.
    fn fault_kinds() -> Vec<FaultKind> {
        FaultKind::ALL.to_vec()
    }

    /// The clients (of `clients`, this scenario's client node ids) that a
    /// [`FaultKind::ClientCrash`] may hit; by default all. A crashed client
    /// restarts as a new incarnation with the rest of its budget, and the
    /// operation it had in flight is recorded as indeterminate (`info`). A
    /// scenario keeps out a client whose loss would blind its checker.
    fn crashable_clients(clients: &[NodeId]) -> Vec<NodeId> {
        clients.to_vec()
    }

    /// The servers whose disk a [`FaultKind::DiskLost`] may take for good
    /// (a member the group must take back as a new one); by default all. A
    /// scenario keeps out a server whose durable state is the ground truth
    /// its checker reads, or that no protocol replicates.
    fn replaceable_servers(servers: &[NodeId]) -> Vec<NodeId> {
        servers.to_vec()
    }

    /// The fault plan for `seed`: by default the swarm plan over
    /// [`Scenario::fault_kinds`]. A scenario may add faults aimed at its roles.
    fn plan(seed: u64, targets: &Targets) -> FaultPlan {
        FaultPlan::generate(seed, Self::SPEC.fault_window.as_millis() as u64, targets)
    }

    fn new(params: &Params) -> Self;

    /// Runs server `env.id()` from whatever its disk holds. Called at first
    /// boot and after every restart; never returns.
    fn server(self: Arc<Self>, env: SimEnv) -> impl Future<Output = ()> + Send;

    /// Runs one client's workload until [`Client::next_op`] says stop.
    fn client(self: Arc<Self>, env: SimEnv, client: Client<Self::Op>) -> impl Future<Output = ()> + Send;

    /// After the faults heal: the operation that shows the system is live
    /// again (e.g. a read of everything acknowledged). It is recorded in the
    /// history like any client's, and must finish within [`Spec::liveness_bound`].
    fn probe(self: Arc<Self>, env: SimEnv, client: Client<Self::Op>) -> impl Future<Output = ()> + Send;

    /// Judges the history (and any per-run observations the instance kept).
    fn check(&self, history: &History<Self::Op>) -> Vec<Violation>;

    /// The adversary behind [`FaultKind::Rogue`]: one encoded, well-formed
    /// but hostile message (absurd terms, indices, snapshots...) that the
    /// nemesis delivers to `to` as if `from` sent it. The simulator knows no
    /// protocol; the scenario does. Its messages must be ones the correct
    /// protocol refuses or survives, so that a violation means a bug. A
    /// scenario that has an adversary opts in to the kind through
    /// [`Scenario::fault_kinds`]; by default there is none.
    fn rogue(&self, _rng: &mut ChaCha8Rng, _from: NodeId, _to: NodeId) -> Option<Vec<u8>> {
        None
    }
}

/// Stops the whole run now with a named violation. For invariants observed
/// while the run goes on (e.g. two leaders in one term, seen by an observer
/// the servers report to), where carrying on would only bury the evidence.
/// A plain panic in a node also stops the run, reported as `panic`.
pub fn abort_run(violation: Violation) -> ! {
    std::panic::panic_any(violation)
}

/// Node ids the runner assigns: servers `1..=n`, the probe, then clients.
pub fn server_ids(servers: u32) -> Vec<NodeId> {
    (1..=servers).collect()
}
pub const PROBE_ID: NodeId = 100;
pub fn client_ids(clients: u32) -> Vec<NodeId> {
    (0..clients).map(|i| 101 + i).collect()
}

/// A client's handle on the run: where the servers are, its operation
/// budget, and the history recorder. The budget is shared by the client's
/// incarnations: one that restarts after a crash goes on with what is left.
pub struct Client<Op> {
    /// This client's index in the history.
    pub id: u32,
    pub servers: Vec<NodeId>,
    budget: Arc<Budget>,
    stop: Arc<AtomicBool>,
    recorder: Recorder<Op>,
}

/// Operations a client (all its incarnations) may still start, and how
/// many it has claimed.
#[derive(Debug)]
pub(crate) struct Budget {
    total: u32,
    claimed: std::sync::atomic::AtomicU32,
}

impl Budget {
    pub(crate) fn new(total: u32) -> Arc<Self> {
        Arc::new(Budget {
            total,
            claimed: 0.into(),
        })
    }
}

impl<Op: Clone + fmt::Debug> Client<Op> {
    pub(crate) fn new(
        id: u32,
        servers: Vec<NodeId>,
        budget: Arc<Budget>,
        stop: Arc<AtomicBool>,
        recorder: Recorder<Op>,
    ) -> Self {
        Client {
            id,
            servers,
            budget,
            stop,
            recorder,
        }
    }

    /// Whether the fault window is still open (a client that does not
    /// spend the operation budget, an operator, stops when it closes).
    pub fn window_open(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    /// Claims the next operation of the budget; `false` once the budget is
    /// spent or the fault window has ended.
    pub fn next_op(&mut self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        let total = self.budget.total;
        self.budget
            .claimed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < total).then_some(n + 1))
            .is_ok()
    }

    /// How many operations this client has claimed so far, over all its
    /// incarnations: a number no earlier incarnation used for its current
    /// operation, for ids that must stay unique across restarts.
    pub fn claimed(&self) -> u32 {
        self.budget.claimed.load(Ordering::Relaxed)
    }

    /// Records that this client sends `op`; returns its history index.
    pub fn invoke(&self, op: Op) -> usize {
        self.recorder.record(self.id, EventKind::Invoke, op)
    }

    /// What the client has learned of its operation in flight (an id the
    /// servers gave it, what it wrote): if the client crashes before the
    /// operation completes, the operation ends as `info` with this, so a
    /// checker still knows what may have taken effect.
    pub fn progress(&self, op: Op) {
        self.recorder.progress(self.id, op);
    }

    /// The operation took effect; `op` carries its result.
    pub fn ok(&self, op: Op) -> usize {
        self.recorder.record(self.id, EventKind::Ok, op)
    }

    /// The operation certainly did not take effect.
    pub fn fail(&self, op: Op) -> usize {
        self.recorder.record(self.id, EventKind::Fail, op)
    }

    /// The outcome is unknown (timeout, lost reply).
    pub fn info(&self, op: Op) -> usize {
        self.recorder.record(self.id, EventKind::Info, op)
    }
}

/// Appends to the run's history, stamping simulated time and tracing it.
pub struct Recorder<Op> {
    history: Arc<Mutex<Recording<Op>>>,
    world: World,
}

struct Recording<Op> {
    history: History<Op>,
    /// Each client's operation in flight: invoked, not yet completed.
    open: BTreeMap<u32, Op>,
}

impl<Op> Clone for Recorder<Op> {
    fn clone(&self) -> Self {
        Recorder {
            history: self.history.clone(),
            world: self.world.clone(),
        }
    }
}

impl<Op: Clone + fmt::Debug> Recorder<Op> {
    pub(crate) fn new(world: World) -> Self {
        Recorder {
            history: Arc::new(Mutex::new(Recording {
                history: History::default(),
                open: BTreeMap::new(),
            })),
            world,
        }
    }

    /// Client `client` crashed: the operation it had in flight, if any,
    /// ends with an unknown outcome.
    pub(crate) fn crashed(&self, client: u32) {
        let open = self.lock().open.get(&client).cloned();
        if let Some(op) = open {
            self.record(client, EventKind::Info, op);
        }
    }

    fn progress(&self, client: u32, op: Op) {
        if let Some(open) = self.lock().open.get_mut(&client) {
            *open = op;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recording<Op>> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, client: u32, kind: EventKind, op: Op) -> usize {
        let now = elapsed();
        let text = format!("{op:?}");
        let index = {
            let mut recording = self.lock();
            if kind == EventKind::Invoke {
                recording.open.insert(client, op.clone());
            } else {
                recording.open.remove(&client);
            }
            recording.history.push(client, now.as_nanos() as u64, kind, op)
        };
        let kind = format!("{kind:?}").to_lowercase();
        tracing::debug!(client, index, %kind, op = %text, "history");
        self.world.lock().event(TraceEvent::Op {
            client,
            index,
            kind,
            op: text,
        });
        index
    }

    pub(crate) fn take(&self) -> History<Op> {
        std::mem::take(&mut self.lock().history)
    }
}
