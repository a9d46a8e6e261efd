//! Fault plans: what the nemesis does and when, as plain data.
//!
//! A plan is generated from the seed, printed on failure, stored in `seeds/`,
//! replayed exactly and shrunk by removing or shortening faults. Generation
//! is swarm testing: each seed first picks which fault kinds are on and how
//! hard they hit, so some seeds are calm and some brutal, and rare fault
//! combinations are not drowned out by always-on noise.
//!
//! The simulator names no protocol. A scenario reports the moments its
//! servers reach ([`crate::SimEnv::moment`], by names it chooses) and the
//! roles its nodes play ([`crate::world::WorldState::set_roles`]); faults aim
//! at those names, and a scenario says how to aim its moment faults
//! ([`Aiming`], e.g. the log scenario's election and replication hazards).
//!
//! Adding a fault kind, in this order (the compiler finds every match
//! arm after the first two steps):
//! 1. here: a [`FaultKind`] (in `EVERY`, its `name`, and in `ALL` or an
//!    opt-in set), a [`Fault`] variant with its `at_ms` and duration, and its
//!    generation in [`FaultPlan::generate`] — from its own seed stream
//!    (`derive_rng`) unless every existing seed may change its plan;
//! 2. `nemesis.rs`: what starting and ending it does;
//! 3. `world.rs` or `env.rs`: the effect, which calls `count` when it
//!    actually happens and honours `effect_off`, so that
//!    `tests/sim_framework.rs` (every kind counted by its effect) covers it
//!    once `firing_ground` names a scenario where it fires;
//! 4. `shrink.rs` (how it is shortened) and `timeline.rs` (its lane).

use std::fmt;

use rand::seq::SliceRandom;
use rand::Rng;
use ringfence::env::NodeId;
use serde::{Deserialize, Serialize};

use crate::world::{derive_rng, stream};

/// The kinds of fault, as counted in sweep summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    Partition,
    Crash,
    Pause,
    #[serde(rename = "loss")]
    MessageLoss,
    #[serde(rename = "duplicate")]
    MessageDuplicate,
    #[serde(rename = "delay")]
    MessageDelay,
    #[serde(rename = "drift")]
    ClockDrift,
    #[serde(rename = "jump")]
    ClockJump,
    /// A crash right after a node sends a message while it has writes not
    /// yet synced: the moment a promise may outrun durability.
    UnsyncedCrash,
    /// A crash aimed at a protocol moment the scenario reports
    /// ([`crate::SimEnv::moment`]), a few sends after it.
    MomentCrash,
    /// A partition that cuts off the node that last reached a moment.
    Isolate,
    /// A crash leaves a zero-filled or garbage tail past the last sync.
    DiskTail,
    /// A bit flips in one node's synced records while it is down.
    BitFlip,
    /// One node's disk loses synced batches from the end of its log while
    /// it is down (a lost write; a file cut or zeroed at a batch boundary).
    LostWrite,
    /// A write or fsync fails; the node fail-stops and restarts.
    DiskError,
    /// One node's disk is lost while it is down: it restarts empty under
    /// its old id, as a machine whose disk was replaced.
    DiskLost,
    /// Hostile messages injected into the network as if a member sent
    /// them: well-formed, with absurd fields the scenario's adversary
    /// crafts ([`crate::scenario::Scenario::rogue`]).
    Rogue,
    /// A client process dies and restarts as a new incarnation; the
    /// operation it had in flight is indeterminate.
    ClientCrash,
}

impl FaultKind {
    /// Every kind, for the checks that must cover them all.
    pub const EVERY: [FaultKind; 18] = [
        FaultKind::Partition,
        FaultKind::Crash,
        FaultKind::Pause,
        FaultKind::MessageLoss,
        FaultKind::MessageDuplicate,
        FaultKind::MessageDelay,
        FaultKind::ClockDrift,
        FaultKind::ClockJump,
        FaultKind::UnsyncedCrash,
        FaultKind::MomentCrash,
        FaultKind::Isolate,
        FaultKind::DiskTail,
        FaultKind::BitFlip,
        FaultKind::DiskError,
        FaultKind::LostWrite,
        FaultKind::DiskLost,
        FaultKind::Rogue,
        FaultKind::ClientCrash,
    ];

    /// The kinds every scenario takes by default. Client crashes draw from
    /// their own seed stream (`client_crashes`), so they leave the other
    /// kinds' plans as they were.
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Partition,
        FaultKind::Crash,
        FaultKind::Pause,
        FaultKind::MessageLoss,
        FaultKind::MessageDuplicate,
        FaultKind::MessageDelay,
        FaultKind::ClockDrift,
        FaultKind::ClockJump,
        FaultKind::UnsyncedCrash,
        FaultKind::ClientCrash,
    ];

    /// Kinds aimed at protocol moments, which only a scenario that reports
    /// them ([`crate::SimEnv::moment`]) can use; it opts in through
    /// `Scenario::fault_kinds` and says how to aim them in
    /// `Spec::aiming`.
    pub const ROLE_AWARE: [FaultKind; 2] = [FaultKind::MomentCrash, FaultKind::Isolate];

    /// Hostile-disk kinds, for scenarios whose servers are replicated, so
    /// that a node refusing to start on a corrupt disk (or stopping on a
    /// failed fsync) leaves a majority; they opt in through
    /// `Scenario::fault_kinds`. Drawn from their own seed stream
    /// (`disk_faults`), so adding them leaves other kinds' plans as they were.
    pub const DISK: [FaultKind; 4] = [
        FaultKind::DiskTail,
        FaultKind::BitFlip,
        FaultKind::DiskError,
        FaultKind::LostWrite,
    ];
    /// Kinds for scenarios that replace members: a node that lost its
    /// disk is one its group must take back only as a new member. Drawn
    /// from their own seed stream (`disk_losses`).
    pub const REPLACEMENT: [FaultKind; 1] = [FaultKind::DiskLost];
    /// Kinds that need the scenario's adversary (a protocol-aware message
    /// forger); a scenario that has one opts in through
    /// `Scenario::fault_kinds`.
    pub const ADVERSARIAL: [FaultKind; 1] = [FaultKind::Rogue];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::Crash => "crash",
            FaultKind::Pause => "pause",
            FaultKind::MessageLoss => "loss",
            FaultKind::MessageDuplicate => "duplicate",
            FaultKind::MessageDelay => "delay",
            FaultKind::ClockDrift => "drift",
            FaultKind::ClockJump => "jump",
            FaultKind::UnsyncedCrash => "unsynced-crash",
            FaultKind::MomentCrash => "moment-crash",
            FaultKind::Isolate => "isolate",
            FaultKind::DiskTail => "disk-tail",
            FaultKind::BitFlip => "bit-flip",
            FaultKind::DiskError => "disk-error",
            FaultKind::LostWrite => "lost-write",
            FaultKind::DiskLost => "disk-lost",
            FaultKind::Rogue => "rogue",
            FaultKind::ClientCrash => "client-crash",
        }
    }

    /// Fires only when the protocol offers the moment: a correct protocol
    /// that syncs before it sends never does, so sweeps do not require it.
    pub fn opportunistic(self) -> bool {
        self == FaultKind::UnsyncedCrash
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a crash does to the unsynced tail of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskLoss {
    /// Everything after the last sync is gone.
    LoseUnsynced,
    /// A random number of whole unsynced records survive.
    KeepPrefix,
    /// The tail is cut at a random byte, possibly inside a record.
    Torn,
    /// Cut at a random byte; from there on the file reads back as zeros
    /// (a size update reached the disk, the data did not).
    Zeroed,
    /// Cut at a random byte; from there on the file reads back as garbage.
    Garbage,
}

/// One fault. Times are milliseconds of simulated time from the run's start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "kebab-case")]
pub enum Fault {
    /// Nodes can talk only within a group they share; nodes in no group are
    /// isolated. Overlapping groups make a bridge.
    Partition {
        at_ms: u64,
        for_ms: u64,
        shape: String,
        groups: Vec<Vec<NodeId>>,
    },
    /// Messages from `from` to `to` are blocked; the reverse direction works.
    OneWay {
        at_ms: u64,
        for_ms: u64,
        from: Vec<NodeId>,
        to: Vec<NodeId>,
    },
    /// The process dies; after `down_ms` it restarts from its disk.
    Crash {
        at_ms: u64,
        node: NodeId,
        down_ms: u64,
        disk: DiskLoss,
    },
    /// The process stops running (a GC pause) but keeps its state.
    Pause { at_ms: u64, node: NodeId, for_ms: u64 },
    /// Messages are lost, duplicated and delayed with these probabilities.
    Network {
        at_ms: u64,
        for_ms: u64,
        loss: f64,
        duplicate: f64,
        delay: f64,
        max_delay_ms: u64,
        /// When non-zero, half the duplicates' second copies and a quarter
        /// of the delayed messages arrive between `max_delay_ms` and this
        /// late: messages of an earlier round of the protocol, or messages of
        /// a sender's earlier incarnation.
        #[serde(default, skip_serializing_if = "is_zero")]
        late_ms: u64,
    },
    /// The node's clock runs `ppm` parts per million fast (or slow if negative).
    Drift { at_ms: u64, node: NodeId, ppm: i64 },
    /// The node's clock jumps forward.
    Jump { at_ms: u64, node: NodeId, forward_ms: u64 },
    /// While it lasts, a server that sends a message while it has unsynced
    /// writes crashes right after, with this probability, losing them; it
    /// restarts `down_ms` later.
    UnsyncedCrash {
        at_ms: u64,
        for_ms: u64,
        probability: f64,
        down_ms: u64,
    },
    /// Armed at `at_ms`, fires at the first moment after it that a node
    /// plays `role` (a name the scenario publishes at run time, e.g. "the
    /// lock holder, mid-write"), against that node. The plan stays data, yet
    /// hits the moments that matter; `situation` names the moment for the
    /// sweep's coverage report.
    Aimed {
        at_ms: u64,
        situation: String,
        role: String,
        action: AimedAction,
    },
    /// While it lasts, a server that reaches `moment` crashes, with this
    /// probability, once it has sent `after_sends` more messages to other
    /// servers (0: before it tells anyone; 1: right after a moment that
    /// is one message; k: once k servers heard of it). Its unsynced writes
    /// are lost; it restarts `down_ms` later.
    MomentCrash {
        at_ms: u64,
        for_ms: u64,
        moment: String,
        after_sends: u32,
        probability: f64,
        down_ms: u64,
    },
    /// Cuts off the node that last reached `moment` before `at_ms`, if it
    /// is up: from every other node, or, with `keep_clients`, from the
    /// other servers only — a node whose links to its peers failed while
    /// its clients still reach it (a deposed primary that goes on serving
    /// whoever asks, the classic source of stale reads).
    Isolate {
        at_ms: u64,
        for_ms: u64,
        moment: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keep_clients: bool,
    },
    /// Pauses the node that last reached `moment` before `at_ms`, if it is
    /// up, for `for_ms`: the process that just took charge stops (a
    /// collector's pause, a migrated VM) while its messages queue, and
    /// handles them, and whatever its timers would have done first, when
    /// it resumes.
    Stall { at_ms: u64, for_ms: u64, moment: String },
    /// While it lasts, a server that reaches `moment` is split, with
    /// probability `probability` and before it sends another message, from
    /// the other servers together with `with` of them (picked when it
    /// fires), for `split_ms`; clients still reach every server. With
    /// `after`, only a `moment` reached after some server reached `after`
    /// (since the window began or its last split) sets one off. One split
    /// per window at a time. A partition at the protocol's most delicate
    /// instant, e.g. a node that just took charge, with one peer, cut off
    /// before the rest hear of it.
    MomentSplit {
        at_ms: u64,
        for_ms: u64,
        moment: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        after: String,
        with: u32,
        probability: f64,
        split_ms: u64,
    },
    /// Delivers `messages` hostile messages to `to` as if `from` sent them,
    /// crafted by the scenario's adversary from an rng seeded with `salt`.
    Rogue {
        at_ms: u64,
        from: NodeId,
        to: NodeId,
        messages: u32,
        salt: u64,
    },
    /// Every message on `links` is `delay_ms` later: the links a partition
    /// is about to cut, degrading first as failing links do (gray
    /// failure), so what is sent just before the cut arrives late.
    Slow {
        at_ms: u64,
        for_ms: u64,
        delay_ms: u64,
        links: Vec<(NodeId, NodeId)>,
    },
    /// The client process dies; after `down_ms` it restarts as a new
    /// incarnation with the rest of its operation budget.
    ClientCrash { at_ms: u64, node: NodeId, down_ms: u64 },
    /// A hostile disk under `node` (see [`DiskFault`]).
    Disk {
        at_ms: u64,
        node: NodeId,
        down_ms: u64,
        what: DiskFault,
    },
}

/// The longest time a plan may name (a day): a plan's run, a fault's start,
/// length, delay or clock jump. Longer ones come only from crafted files.
pub const MAX_PLAN_MS: u64 = 24 * 60 * 60 * 1_000;

/// The largest clock drift a plan may name: a clock at half or 1.5 times
/// the true rate, far past any real oscillator; more only from crafted
/// files (at -1,000,000 ppm a clock would stop or run backwards).
pub const MAX_DRIFT_PPM: u64 = 500_000;

/// How late a late message or duplicate may arrive ([`Fault::Network`]'s `late_ms`):
/// past several protocol timeouts and a lease, so a stale message reaches
/// a node that has moved on to a later round.
const LATE_COPY_MS: std::ops::RangeInclusive<u64> = 500..=3_000;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a [`Fault::Disk`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskFault {
    /// The node crashes, a bit flips in records it synced, and it
    /// restarts `down_ms` later: it must refuse to start.
    BitFlip,
    /// The node crashes, its disk loses synced batches from the end of
    /// its log, and it restarts `down_ms` later: it must refuse to start.
    LostTail,
    /// The node's next write or fsync fails: it must stop acknowledging
    /// and fail-stop; a supervisor restarts it `down_ms` later.
    Error,
    /// The node crashes, its disk is replaced by an empty one, and it
    /// restarts `down_ms` later under the same id.
    Lost,
}

impl Fault {
    pub fn at_ms(&self) -> u64 {
        match self {
            Fault::Partition { at_ms, .. }
            | Fault::OneWay { at_ms, .. }
            | Fault::Crash { at_ms, .. }
            | Fault::Pause { at_ms, .. }
            | Fault::Network { at_ms, .. }
            | Fault::Drift { at_ms, .. }
            | Fault::Jump { at_ms, .. }
            | Fault::UnsyncedCrash { at_ms, .. }
            | Fault::Aimed { at_ms, .. }
            | Fault::MomentCrash { at_ms, .. }
            | Fault::MomentSplit { at_ms, .. }
            | Fault::Isolate { at_ms, .. }
            | Fault::Stall { at_ms, .. }
            | Fault::Disk { at_ms, .. }
            | Fault::ClientCrash { at_ms, .. }
            | Fault::Rogue { at_ms, .. }
            | Fault::Slow { at_ms, .. } => *at_ms,
        }
    }

    /// How long the fault lasts, where that is a property of the fault.
    pub fn duration_ms(&self) -> Option<u64> {
        match self {
            Fault::Partition { for_ms, .. }
            | Fault::OneWay { for_ms, .. }
            | Fault::Pause { for_ms, .. }
            | Fault::Network { for_ms, .. }
            | Fault::UnsyncedCrash { for_ms, .. }
            | Fault::MomentCrash { for_ms, .. }
            | Fault::MomentSplit { for_ms, .. }
            | Fault::Isolate { for_ms, .. }
            | Fault::Stall { for_ms, .. }
            | Fault::Slow { for_ms, .. } => Some(*for_ms),
            Fault::Crash { down_ms, .. } | Fault::ClientCrash { down_ms, .. } => Some(*down_ms),
            Fault::Disk { down_ms, what, .. } => (*what != DiskFault::Error).then_some(*down_ms),
            Fault::Drift { .. } | Fault::Jump { .. } | Fault::Rogue { .. } => None,
            Fault::Aimed { action, .. } => action.duration_ms(),
        }
    }

    /// The links among `nodes` a partition cuts: every ordered pair in no
    /// group together, or from `from` to `to` for a one-way one; none for
    /// any other fault.
    pub fn cut_links(&self, nodes: &[NodeId]) -> Vec<(NodeId, NodeId)> {
        let pairs = nodes
            .iter()
            .flat_map(|&a| nodes.iter().filter(move |&&b| b != a).map(move |&b| (a, b)));
        match self {
            Fault::Partition { groups, .. } => pairs
                .filter(|(a, b)| !groups.iter().any(|g| g.contains(a) && g.contains(b)))
                .collect(),
            Fault::OneWay { from, to, .. } => pairs.filter(|(a, b)| from.contains(a) && to.contains(b)).collect(),
            _ => Vec::new(),
        }
    }

    /// Every node the fault names.
    fn nodes(&self) -> Vec<NodeId> {
        match self {
            Fault::Partition { groups, .. } => groups.concat(),
            Fault::OneWay { from, to, .. } => [from.as_slice(), to].concat(),
            Fault::Crash { node, .. }
            | Fault::Pause { node, .. }
            | Fault::Drift { node, .. }
            | Fault::Jump { node, .. }
            | Fault::ClientCrash { node, .. }
            | Fault::Disk { node, .. } => vec![*node],
            Fault::Rogue { from, to, .. } => vec![*from, *to],
            Fault::Slow { links, .. } => links.iter().flat_map(|&(a, b)| [a, b]).collect(),
            Fault::Aimed { action, .. } => match action {
                AimedAction::Isolate { from, .. } | AimedAction::Deafen { from, .. } => from.clone(),
                AimedAction::DelayTo { to, .. } => to.clone(),
                AimedAction::Pause { .. }
                | AimedAction::Crash { .. }
                | AimedAction::CrashOnAppend { .. }
                | AimedAction::Jump { .. } => vec![],
            },
            Fault::Network { .. }
            | Fault::UnsyncedCrash { .. }
            | Fault::MomentCrash { .. }
            | Fault::MomentSplit { .. }
            | Fault::Isolate { .. }
            | Fault::Stall { .. } => vec![],
        }
    }

    /// Times the fault names beside its start and length: delays, late
    /// copies, clock jumps, a split's length.
    fn extra_ms(&self) -> Option<u64> {
        match self {
            Fault::Network {
                max_delay_ms, late_ms, ..
            } => Some((*max_delay_ms).max(*late_ms)),
            Fault::Slow { delay_ms, .. } => Some(*delay_ms),
            Fault::Jump { forward_ms, .. } => Some(*forward_ms),
            Fault::MomentSplit { split_ms, .. } => Some(*split_ms),
            Fault::MomentCrash { down_ms, .. } | Fault::UnsyncedCrash { down_ms, .. } => Some(*down_ms),
            Fault::Aimed { action, .. } => match action {
                AimedAction::DelayTo { delay_ms, .. } => Some(*delay_ms),
                AimedAction::Jump { forward_ms } => Some(*forward_ms),
                _ => None,
            },
            _ => None,
        }
    }

    /// Every probability the fault carries, by name.
    fn probabilities(&self) -> Vec<(&'static str, f64)> {
        match self {
            Fault::Network {
                loss, duplicate, delay, ..
            } => vec![("loss", *loss), ("duplicate", *duplicate), ("delay", *delay)],
            Fault::UnsyncedCrash { probability, .. }
            | Fault::MomentCrash { probability, .. }
            | Fault::MomentSplit { probability, .. } => vec![("probability", *probability)],
            _ => vec![],
        }
    }

    /// Returns a copy lasting `ms` instead (used by the shrinker).
    pub fn with_duration_ms(&self, ms: u64) -> Fault {
        let mut f = self.clone();
        match &mut f {
            Fault::Partition { for_ms, .. }
            | Fault::OneWay { for_ms, .. }
            | Fault::Pause { for_ms, .. }
            | Fault::Network { for_ms, .. }
            | Fault::UnsyncedCrash { for_ms, .. }
            | Fault::MomentCrash { for_ms, .. }
            | Fault::MomentSplit { for_ms, .. }
            | Fault::Isolate { for_ms, .. }
            | Fault::Stall { for_ms, .. }
            | Fault::Slow { for_ms, .. } => *for_ms = ms,
            Fault::Crash { down_ms, .. } | Fault::Disk { down_ms, .. } | Fault::ClientCrash { down_ms, .. } => {
                *down_ms = ms
            }
            Fault::Drift { .. } | Fault::Jump { .. } | Fault::Rogue { .. } => {}
            Fault::Aimed { action, .. } => match action {
                AimedAction::Pause { for_ms }
                | AimedAction::Isolate { for_ms, .. }
                | AimedAction::Deafen { for_ms, .. }
                | AimedAction::DelayTo { for_ms, .. } => *for_ms = ms,
                AimedAction::Crash { down_ms, .. } | AimedAction::CrashOnAppend { down_ms } => *down_ms = ms,
                AimedAction::Jump { .. } => {}
            },
        }
        f
    }
}

/// Which fault kinds a seed turned on, and how hard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Swarm {
    pub enabled: Vec<FaultKind>,
    /// 0.0 (calm) to 1.0 (brutal): scales fault counts and rates.
    pub intensity: f64,
}

/// The complete set of faults for one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultPlan {
    /// Faults are applied during `[0, duration_ms)`; then everything heals.
    pub duration_ms: u64,
    pub swarm: Swarm,
    pub faults: Vec<Fault>,
}

/// What the plan generator needs to know about the cluster.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Nodes that may crash (processes with durable state).
    pub servers: Vec<NodeId>,
    /// Client nodes: may be paused, partitioned and drift.
    pub clients: Vec<NodeId>,
    /// The clients a client crash may hit
    /// ([`crate::scenario::Scenario::crashable_clients`]).
    pub crashable_clients: Vec<NodeId>,
    /// The servers whose disk may be lost for good
    /// ([`crate::scenario::Scenario::replaceable_servers`]).
    pub replaceable: Vec<NodeId>,
    /// Fault kinds this scenario supports.
    pub kinds: Vec<FaultKind>,
    /// How the scenario aims the moment kinds ([`FaultKind::ROLE_AWARE`]);
    /// without it they are never generated.
    pub aiming: Option<Aiming>,
}

/// How a scenario whose protocol reports moments ([`crate::SimEnv::moment`])
/// aims the moment kinds. The simulator knows no protocol: the scenario
/// says which moments compose into a hazard worth crashing at, and whose
/// node an isolation cuts off.
#[derive(Debug, Clone, Copy)]
pub struct Aiming {
    /// [`Fault::Isolate`] cuts off, and [`Fault::Stall`] pauses, the node
    /// that last reached this moment.
    pub isolate_after: &'static str,
    /// Appends one window of [`Fault::MomentCrash`]es starting at `at_ms`
    /// (and any fault that sets the hazard up, such as a
    /// [`Fault::MomentSplit`]) to `out`, drawing from `rng`.
    pub crash_window:
        fn(rng: &mut rand_chacha::ChaCha8Rng, at_ms: u64, intensity: f64, servers: usize, out: &mut Vec<Fault>),
}

impl FaultPlan {
    /// A plan with no faults (for calm runs and benchmarks).
    pub fn calm(duration_ms: u64) -> Self {
        FaultPlan {
            duration_ms,
            swarm: Swarm {
                enabled: vec![],
                intensity: 0.0,
            },
            faults: vec![],
        }
    }

    /// The same plan without the faults that know where to strike: aimed
    /// faults (roles the scenario publishes), crashes at protocol moments
    /// and isolation of the node that reached one. What a sweep still catches then is found by
    /// exploration alone (the bench's aimed-off column).
    pub fn unaimed(&self) -> FaultPlan {
        let aimed = |kind: &FaultKind| FaultKind::ROLE_AWARE.contains(kind);
        FaultPlan {
            duration_ms: self.duration_ms,
            swarm: Swarm {
                enabled: self.swarm.enabled.iter().copied().filter(|k| !aimed(k)).collect(),
                intensity: self.swarm.intensity,
            },
            faults: self
                .faults
                .iter()
                .filter(|f| {
                    !matches!(
                        f,
                        Fault::Aimed { .. }
                            | Fault::MomentCrash { .. }
                            | Fault::MomentSplit { .. }
                            | Fault::Isolate { .. }
                            | Fault::Stall { .. }
                    )
                })
                .cloned()
                .collect(),
        }
    }

    /// Checks a plan read from a file (a saved or hand-edited case) against
    /// the run's `nodes`: every node a fault names takes part, every
    /// probability is one, every time fits in [`MAX_PLAN_MS`]. A crafted
    /// plan is refused with the fault it is wrong about, instead of
    /// failing the run as if the protocol had.
    pub fn validate(&self, nodes: &[NodeId]) -> Result<(), String> {
        if self.duration_ms > MAX_PLAN_MS {
            return Err(format!(
                "the plan lasts {} ms, more than {MAX_PLAN_MS}",
                self.duration_ms
            ));
        }
        if !(0.0..=1.0).contains(&self.swarm.intensity) {
            return Err(format!(
                "swarm intensity {} is not between 0 and 1",
                self.swarm.intensity
            ));
        }
        for (index, fault) in self.faults.iter().enumerate() {
            let wrong = |what: String| Err(format!("fault {index} ({fault:?}): {what}"));
            if let Some(node) = fault.nodes().into_iter().find(|n| !nodes.contains(n)) {
                return wrong(format!("node {node} is not part of this run (nodes: {nodes:?})"));
            }
            if let Some((name, p)) = fault
                .probabilities()
                .into_iter()
                .find(|(_, p)| !(0.0..=1.0).contains(p))
            {
                return wrong(format!("{name} {p} is not a probability"));
            }
            if let Fault::Drift { ppm, .. } = fault {
                if ppm.unsigned_abs() > MAX_DRIFT_PPM {
                    return wrong(format!("a drift of {ppm} ppm is beyond ±{MAX_DRIFT_PPM} (a clock between half and 1.5 times the true rate)"));
                }
            }
            let times = [Some(fault.at_ms()), fault.duration_ms(), fault.extra_ms()];
            if let Some(ms) = times.into_iter().flatten().find(|&ms| ms > MAX_PLAN_MS) {
                return wrong(format!("{ms} ms is more than {MAX_PLAN_MS}"));
            }
        }
        Ok(())
    }

    /// The plan for `seed`: swarm selection, then faults spread over the run.
    pub fn generate(seed: u64, duration_ms: u64, targets: &Targets) -> Self {
        let mut rng = derive_rng(seed, stream::PLAN, 0);
        // One seed in ten is calm (no faults at all): the baseline must work
        // too, and a calm failure is the easiest to read.
        let calm = rng.gen_bool(0.1);
        // Disk faults and rogue messages draw from their own streams (see
        // `disk_faults`, `rogue_faults`), so opting in to them leaves every
        // other fault of a seed as it was.
        let kinds: Vec<FaultKind> = targets
            .kinds
            .iter()
            .copied()
            .filter(|k| !FaultKind::DISK.contains(k) && !matches!(k, FaultKind::Rogue | FaultKind::ClientCrash))
            .collect();
        let mut enabled: Vec<FaultKind> = kinds.iter().copied().filter(|_| rng.gen_bool(0.5)).collect();
        if calm {
            enabled.clear();
        } else if enabled.is_empty() && !kinds.is_empty() {
            enabled.push(*kinds.choose(&mut rng).expect("non-empty"));
        }
        let intensity: f64 = rng.gen_range(0.1..1.0);
        let all: Vec<NodeId> = targets.servers.iter().chain(&targets.clients).copied().collect();
        let mut faults = Vec::new();
        let at = |rng: &mut rand_chacha::ChaCha8Rng| rng.gen_range(0..duration_ms * 9 / 10);
        let count = |rng: &mut rand_chacha::ChaCha8Rng| 1 + rng.gen_range(0..=(intensity * 4.0) as u64);
        for &kind in &enabled {
            match kind {
                FaultKind::Partition => {
                    for _ in 0..count(&mut rng) {
                        let at_ms = at(&mut rng);
                        let for_ms = rng.gen_range(100..=(200 + (2_000.0 * intensity) as u64));
                        faults.push(random_partition(&mut rng, &all, at_ms, for_ms));
                    }
                }
                FaultKind::Crash if !targets.servers.is_empty() => {
                    for _ in 0..count(&mut rng) {
                        let disk = *[DiskLoss::LoseUnsynced, DiskLoss::KeepPrefix, DiskLoss::Torn]
                            .choose(&mut rng)
                            .expect("3");
                        faults.push(Fault::Crash {
                            at_ms: at(&mut rng),
                            node: *targets.servers.choose(&mut rng).expect("non-empty"),
                            down_ms: rng.gen_range(10..=(100 + (1_500.0 * intensity) as u64)),
                            disk,
                        });
                    }
                }
                FaultKind::Pause => {
                    for _ in 0..count(&mut rng) {
                        faults.push(Fault::Pause {
                            at_ms: at(&mut rng),
                            node: *all.choose(&mut rng).expect("non-empty"),
                            for_ms: rng.gen_range(50..=(100 + (3_000.0 * intensity) as u64)),
                        });
                    }
                }
                // One window carries every enabled message fault; see below.
                FaultKind::MessageLoss | FaultKind::MessageDuplicate | FaultKind::MessageDelay => {}
                FaultKind::ClockDrift => {
                    for _ in 0..count(&mut rng) {
                        let bound = (1_000.0 + 200_000.0 * intensity) as i64;
                        faults.push(Fault::Drift {
                            at_ms: at(&mut rng),
                            node: *all.choose(&mut rng).expect("non-empty"),
                            ppm: rng.gen_range(-bound..=bound),
                        });
                    }
                }
                FaultKind::ClockJump => {
                    for _ in 0..count(&mut rng) {
                        faults.push(Fault::Jump {
                            at_ms: at(&mut rng),
                            node: *all.choose(&mut rng).expect("non-empty"),
                            forward_ms: rng.gen_range(10..=(100 + (5_000.0 * intensity) as u64)),
                        });
                    }
                }
                FaultKind::UnsyncedCrash if !targets.servers.is_empty() => {
                    for _ in 0..count(&mut rng) {
                        let at_ms = at(&mut rng);
                        faults.push(Fault::UnsyncedCrash {
                            at_ms,
                            for_ms: rng.gen_range(100..=(500 + (2_000.0 * intensity) as u64)),
                            probability: rng.gen_range(0.05..(0.1 + 0.6 * intensity)),
                            down_ms: rng.gen_range(1..=(20 + (300.0 * intensity) as u64)),
                        });
                    }
                }
                FaultKind::MomentCrash => match targets.aiming {
                    Some(aiming) if !targets.servers.is_empty() => {
                        for _ in 0..count(&mut rng) {
                            let at_ms = at(&mut rng);
                            (aiming.crash_window)(&mut rng, at_ms, intensity, targets.servers.len(), &mut faults);
                        }
                    }
                    _ => {}
                },
                FaultKind::Isolate => {
                    if let Some(aiming) = targets.aiming {
                        // Whom it stays reachable by comes from a stream of
                        // its own, so the plans drawn before it are kept.
                        let mut shape = derive_rng(seed, stream::ISOLATE, 0);
                        for _ in 0..count(&mut rng) {
                            faults.push(Fault::Isolate {
                                at_ms: at(&mut rng),
                                for_ms: rng.gen_range(100..=(300 + (1_500.0 * intensity) as u64)),
                                moment: aiming.isolate_after.to_string(),
                                keep_clients: shape.gen_bool(0.5),
                            });
                        }
                        // Stalls too draw from a stream of their own.
                        let mut stalls = derive_rng(seed, stream::STALL, 0);
                        for _ in 0..stalls.gen_range(1..=3) {
                            faults.push(Fault::Stall {
                                at_ms: at(&mut stalls),
                                for_ms: stalls.gen_range(200..=(400 + (2_000.0 * intensity) as u64)),
                                moment: aiming.isolate_after.to_string(),
                            });
                        }
                    }
                }
                FaultKind::Crash | FaultKind::UnsyncedCrash => {}
                FaultKind::DiskTail
                | FaultKind::BitFlip
                | FaultKind::DiskError
                | FaultKind::LostWrite
                | FaultKind::DiskLost => {}
                // Generated below, from their own streams.
                FaultKind::Rogue | FaultKind::ClientCrash => {}
            }
        }
        if !calm {
            disk_faults(seed, duration_ms, intensity, targets, &mut enabled, &mut faults);
            disk_losses(seed, duration_ms, intensity, targets, &mut enabled, &mut faults);
            gray_failures(seed, &all, &mut faults);
        }
        let on = |kind| enabled.contains(&kind);
        if on(FaultKind::MessageLoss) || on(FaultKind::MessageDuplicate) || on(FaultKind::MessageDelay) {
            // Windows never overlap, so each one's settings are exactly what
            // the network does while it lasts.
            let windows = count(&mut rng);
            let slot = duration_ms / windows;
            for w in 0..windows {
                let mut rate = |kind| {
                    if on(kind) {
                        rng.gen_range(0.01..(0.05 + 0.3 * intensity))
                    } else {
                        0.0
                    }
                };
                let (loss, duplicate, delay) = (
                    rate(FaultKind::MessageLoss),
                    rate(FaultKind::MessageDuplicate),
                    rate(FaultKind::MessageDelay),
                );
                let max_delay_ms = if delay > 0.0 {
                    rng.gen_range(5..=(20 + (500.0 * intensity) as u64))
                } else {
                    0
                };
                let for_ms = rng.gen_range(slot / 4..=slot);
                let at_ms = w * slot + rng.gen_range(0..=slot - for_ms);
                // From a stream of its own, so the rest of the plan is as
                // it was before late copies existed.
                let mut late = derive_rng(seed, stream::LATE_COPIES, w);
                let late_ms = if (duplicate > 0.0 || delay > 0.0) && late.gen_bool(0.5) {
                    late.gen_range(LATE_COPY_MS)
                } else {
                    0
                };
                faults.push(Fault::Network {
                    at_ms,
                    for_ms,
                    loss,
                    duplicate,
                    delay,
                    max_delay_ms,
                    late_ms,
                });
            }
        }
        if !calm && targets.kinds.contains(&FaultKind::Rogue) {
            rogue_faults(
                seed,
                duration_ms,
                intensity,
                &targets.servers,
                &mut enabled,
                &mut faults,
            );
        }
        if !calm && targets.kinds.contains(&FaultKind::ClientCrash) {
            client_crashes(seed, duration_ms, intensity, targets, &mut enabled, &mut faults);
        }
        if enabled.contains(&FaultKind::Crash) {
            power_loss(seed, duration_ms, intensity, &targets.servers, &mut faults);
        }
        faults.sort_by_key(Fault::at_ms);
        FaultPlan {
            duration_ms,
            swarm: Swarm { enabled, intensity },
            faults,
        }
    }
}

/// On half the seeds that crash servers, one correlated crash besides: a
/// power loss takes two to all of the servers down within a few
/// milliseconds, each restarting after its own delay and losing its own
/// unsynced writes. Independent crashes rarely overlap, but real machines
/// share racks and power, and a cluster must come back from all of its
/// members restarting at once, in any order (a shard recovering prepared
/// transactions while its coordinator is still down, a whole replica group
/// recovering from disks alone). Drawn from the seed's own stream.
fn power_loss(seed: u64, duration_ms: u64, intensity: f64, servers: &[NodeId], out: &mut Vec<Fault>) {
    let mut rng = derive_rng(seed, stream::POWER_LOSS, 0);
    if servers.len() < 2 || !rng.gen_bool(0.5) {
        return;
    }
    let at_ms = rng.gen_range(0..duration_ms * 9 / 10);
    let mut hit = servers.to_vec();
    hit.shuffle(&mut rng);
    hit.truncate(rng.gen_range(2..=servers.len()));
    for node in hit {
        out.push(Fault::Crash {
            at_ms: at_ms + rng.gen_range(0..5),
            node,
            down_ms: rng.gen_range(10..=(100 + (1_500.0 * intensity) as u64)),
            disk: *[DiskLoss::LoseUnsynced, DiskLoss::KeepPrefix, DiskLoss::Torn]
                .choose(&mut rng)
                .expect("3"),
        });
    }
}

/// On most seeds of a scenario that takes [`FaultKind::DiskLost`], one
/// server loses its disk (one: a group that lost a majority's disks cannot
/// decide anything, not even to replace them). Drawn from its own stream.
fn disk_losses(
    seed: u64,
    duration_ms: u64,
    intensity: f64,
    targets: &Targets,
    enabled: &mut Vec<FaultKind>,
    out: &mut Vec<Fault>,
) {
    let mut rng = derive_rng(seed, stream::DISK_LOST, 0);
    if !targets.kinds.contains(&FaultKind::DiskLost) || targets.replaceable.is_empty() || !rng.gen_bool(0.75) {
        return;
    }
    enabled.push(FaultKind::DiskLost);
    out.push(Fault::Disk {
        at_ms: rng.gen_range(0..duration_ms * 3 / 4),
        node: *targets.replaceable.choose(&mut rng).expect("non-empty"),
        down_ms: rng.gen_range(10..=(300 + (1_000.0 * intensity) as u64)),
        what: DiskFault::Lost,
    });
}

/// On half the seeds, crashes of clients the scenario lets crash, drawn
/// from the seed's own client-crash stream.
fn client_crashes(
    seed: u64,
    duration_ms: u64,
    intensity: f64,
    targets: &Targets,
    enabled: &mut Vec<FaultKind>,
    out: &mut Vec<Fault>,
) {
    let mut rng = derive_rng(seed, stream::CLIENT_CRASH, 0);
    if targets.crashable_clients.is_empty() || !rng.gen_bool(0.5) {
        return;
    }
    enabled.push(FaultKind::ClientCrash);
    for _ in 0..1 + rng.gen_range(0..=(intensity * 3.0) as u64) {
        out.push(Fault::ClientCrash {
            at_ms: rng.gen_range(0..duration_ms * 9 / 10),
            node: *targets.crashable_clients.choose(&mut rng).expect("non-empty"),
            down_ms: rng.gen_range(10..=(100 + (1_000.0 * intensity) as u64)),
        });
    }
}

/// Hostile-disk faults ([`FaultKind::DISK`]) the scenario takes, from their
/// own seed stream: each kind is on for half the seeds. At most one node's
/// synced records are damaged per run, so a majority always stays able to
/// start.
fn disk_faults(
    seed: u64,
    duration_ms: u64,
    intensity: f64,
    targets: &Targets,
    enabled: &mut Vec<FaultKind>,
    out: &mut Vec<Fault>,
) {
    let mut rng = derive_rng(seed, stream::PLAN, 1);
    let mut injury = derive_rng(seed, stream::PLAN, 2);
    if targets.servers.is_empty() {
        return;
    }
    // Synced data damaged on one replica, which then stays down: a bit
    // flip or, on half those seeds, a lost write, so that a majority
    // remains. Drawn in the bit flip's place (the lost write's own draw
    // comes from a stream of its own), so other faults are as they were.
    for slot in FaultKind::DISK.into_iter().filter(|&k| k != FaultKind::LostWrite) {
        if !targets.kinds.contains(&slot) || !rng.gen_bool(0.5) {
            continue;
        }
        let kind = match slot {
            FaultKind::BitFlip if targets.kinds.contains(&FaultKind::LostWrite) && injury.gen_bool(0.5) => {
                FaultKind::LostWrite
            }
            slot => slot,
        };
        enabled.push(kind);
        let count = match kind {
            FaultKind::BitFlip | FaultKind::LostWrite => 1,
            _ => 1 + rng.gen_range(0..=(intensity * 3.0) as u64),
        };
        for _ in 0..count {
            let at_ms = rng.gen_range(0..duration_ms * 9 / 10);
            let node = *targets.servers.choose(&mut rng).expect("non-empty");
            let down_ms = rng.gen_range(10..=(100 + (1_000.0 * intensity) as u64));
            out.push(match kind {
                FaultKind::DiskTail => Fault::Crash {
                    at_ms,
                    node,
                    down_ms,
                    disk: *[DiskLoss::Zeroed, DiskLoss::Garbage].choose(&mut rng).expect("2"),
                },
                FaultKind::BitFlip => Fault::Disk {
                    at_ms,
                    node,
                    down_ms,
                    what: DiskFault::BitFlip,
                },
                FaultKind::LostWrite => Fault::Disk {
                    at_ms,
                    node,
                    down_ms,
                    what: DiskFault::LostTail,
                },
                _ => Fault::Disk {
                    at_ms,
                    node,
                    down_ms,
                    what: DiskFault::Error,
                },
            });
        }
    }
}

/// On half the seeds, bursts of rogue messages between two servers, drawn
/// from the seed's own rogue stream.
fn rogue_faults(
    seed: u64,
    duration_ms: u64,
    intensity: f64,
    servers: &[NodeId],
    enabled: &mut Vec<FaultKind>,
    out: &mut Vec<Fault>,
) {
    let mut rng = derive_rng(seed, stream::ROGUE, 0);
    if servers.len() < 2 || !rng.gen_bool(0.5) {
        return;
    }
    enabled.push(FaultKind::Rogue);
    for _ in 0..1 + rng.gen_range(0..=(intensity * 4.0) as u64) {
        let pair: Vec<NodeId> = servers.choose_multiple(&mut rng, 2).copied().collect();
        out.push(Fault::Rogue {
            at_ms: rng.gen_range(0..duration_ms * 9 / 10),
            from: pair[0],
            to: pair[1],
            messages: rng.gen_range(1..=8),
            salt: rng.gen(),
        });
    }
}

fn random_partition(rng: &mut rand_chacha::ChaCha8Rng, all: &[NodeId], at_ms: u64, for_ms: u64) -> Fault {
    let mut nodes = all.to_vec();
    nodes.shuffle(rng);
    let n = nodes.len();
    match rng.gen_range(0..4) {
        0 if n >= 2 => {
            let cut = rng.gen_range(1..n);
            let (a, b) = nodes.split_at(cut);
            Fault::Partition {
                at_ms,
                for_ms,
                shape: "halves".into(),
                groups: vec![sorted(a), sorted(b)],
            }
        }
        1 if n >= 3 => {
            // Two majorities overlapping in one bridge node.
            let bridge = nodes[0];
            let rest = &nodes[1..];
            let cut = rest.len() / 2;
            let mut a = rest[..cut].to_vec();
            let mut b = rest[cut..].to_vec();
            a.push(bridge);
            b.push(bridge);
            Fault::Partition {
                at_ms,
                for_ms,
                shape: "bridge".into(),
                groups: vec![sorted(&a), sorted(&b)],
            }
        }
        2 if n >= 2 => {
            let cut = rng.gen_range(1..n);
            let (a, b) = nodes.split_at(cut);
            Fault::OneWay {
                at_ms,
                for_ms,
                from: sorted(a),
                to: sorted(b),
            }
        }
        _ => {
            let isolated = nodes[0];
            Fault::Partition {
                at_ms,
                for_ms,
                shape: "isolate".into(),
                groups: vec![vec![isolated], sorted(&nodes[1..])],
            }
        }
    }
}

/// Half the partitions start as slow links (gray failure): for 100–800 ms
/// before the cut, every message on the links it will cut is 20–300 ms
/// late, so an answer sent just before the cut still arrives, late (a
/// lease renewed then, say). From a stream of its own, so the rest of the
/// plan is as it was.
fn gray_failures(seed: u64, all: &[NodeId], faults: &mut Vec<Fault>) {
    let mut rng = derive_rng(seed, stream::GRAY, 0);
    let slow: Vec<Fault> = faults
        .iter()
        .filter(|f| matches!(f, Fault::Partition { .. } | Fault::OneWay { .. }))
        .filter_map(|f| {
            let degrades = rng.gen_bool(0.5);
            let lead_ms = rng.gen_range(100..=800).min(f.at_ms());
            let delay_ms = rng.gen_range(20..=300);
            (degrades && lead_ms > 0).then(|| Fault::Slow {
                at_ms: f.at_ms() - lead_ms,
                for_ms: lead_ms,
                delay_ms,
                links: f.cut_links(all),
            })
        })
        .collect();
    faults.extend(slow);
}

fn sorted(nodes: &[NodeId]) -> Vec<NodeId> {
    let mut v = nodes.to_vec();
    v.sort_unstable();
    v
}

/// What an aimed fault does to the node it hits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case")]
pub enum AimedAction {
    Pause {
        for_ms: u64,
    },
    Crash {
        down_ms: u64,
        disk: DiskLoss,
    },
    /// Crashes the node at its next disk append, before that write is
    /// synced: a server dying with unsynced state.
    CrashOnAppend {
        down_ms: u64,
    },
    /// Cuts the node off from `from`, both ways; other links stay up.
    Isolate {
        from: Vec<NodeId>,
        for_ms: u64,
    },
    /// Messages from `from` to the node are lost (its replies, say).
    Deafen {
        from: Vec<NodeId>,
        for_ms: u64,
    },
    /// Messages the node sends to `to` arrive `delay_ms` late.
    DelayTo {
        to: Vec<NodeId>,
        delay_ms: u64,
        for_ms: u64,
    },
    Jump {
        forward_ms: u64,
    },
}

impl AimedAction {
    /// How long the action lasts once fired.
    pub fn duration_ms(&self) -> Option<u64> {
        match self {
            AimedAction::Pause { for_ms }
            | AimedAction::Isolate { for_ms, .. }
            | AimedAction::Deafen { for_ms, .. }
            | AimedAction::DelayTo { for_ms, .. } => Some(*for_ms),
            AimedAction::Crash { down_ms, .. } | AimedAction::CrashOnAppend { down_ms } => Some(*down_ms),
            AimedAction::Jump { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> Targets {
        Targets {
            servers: vec![1, 2, 3],
            clients: vec![10, 11],
            crashable_clients: vec![10, 11],
            replaceable: vec![1, 2, 3],
            kinds: FaultKind::ALL.to_vec(),
            aiming: None,
        }
    }

    #[test]
    fn same_seed_same_plan() {
        assert_eq!(
            FaultPlan::generate(7, 5_000, &targets()),
            FaultPlan::generate(7, 5_000, &targets())
        );
    }

    #[test]
    fn half_the_partitions_start_as_slow_links_up_to_the_cut() {
        let all: Vec<NodeId> = vec![1, 2, 3, 10, 11];
        let (mut partitions, mut slowed) = (0, 0);
        for seed in 0..64 {
            let plan = FaultPlan::generate(seed, 5_000, &targets());
            for f in &plan.faults {
                let Fault::Slow {
                    at_ms, for_ms, links, ..
                } = f
                else {
                    partitions += usize::from(!f.cut_links(&all).is_empty());
                    continue;
                };
                slowed += 1;
                let cut = at_ms + for_ms;
                assert!(
                    plan.faults
                        .iter()
                        .any(|p| p.at_ms() == cut && p.cut_links(&all) == *links),
                    "seed {seed}: slow links end where a partition cuts them"
                );
            }
        }
        assert!(
            partitions / 4 < slowed && slowed < partitions,
            "{slowed} of {partitions} partitions start slow"
        );
    }

    #[test]
    fn swarm_varies_across_seeds() {
        let plans: Vec<_> = (0..64).map(|s| FaultPlan::generate(s, 5_000, &targets())).collect();
        let calm = plans.iter().filter(|p| p.faults.is_empty()).count();
        let brutal = plans.iter().filter(|p| p.swarm.enabled.len() >= 5).count();
        assert!(calm > 0 && brutal > 0, "calm {calm}, brutal {brutal}");
        for kind in FaultKind::ALL {
            assert!(
                plans.iter().any(|p| p.swarm.enabled.contains(&kind)),
                "{kind} never enabled"
            );
        }
    }

    #[test]
    fn opting_in_to_rogue_messages_leaves_every_other_fault_as_it_was() {
        let rogue = Targets {
            kinds: FaultKind::ALL.into_iter().chain(FaultKind::ADVERSARIAL).collect(),
            ..targets()
        };
        let mut fired = 0;
        for seed in 0..64 {
            let mut with = FaultPlan::generate(seed, 5_000, &rogue);
            let before = with.faults.len();
            with.faults.retain(|f| !matches!(f, Fault::Rogue { .. }));
            fired += before - with.faults.len();
            with.swarm.enabled.retain(|&k| k != FaultKind::Rogue);
            assert_eq!(with, FaultPlan::generate(seed, 5_000, &targets()), "seed {seed}");
        }
        assert!(fired > 0, "no seed of 64 plans rogue messages");
    }

    #[test]
    fn opting_in_to_client_crashes_leaves_every_other_fault_as_it_was() {
        let without = Targets {
            kinds: FaultKind::ALL
                .into_iter()
                .filter(|&k| k != FaultKind::ClientCrash)
                .collect(),
            ..targets()
        };
        let mut crashes = 0;
        for seed in 0..64 {
            let mut with = FaultPlan::generate(seed, 5_000, &targets());
            for f in &with.faults {
                if let Fault::ClientCrash { node, .. } = f {
                    assert!([10, 11].contains(node), "seed {seed}: {f:?}");
                    crashes += 1;
                }
            }
            with.faults.retain(|f| !matches!(f, Fault::ClientCrash { .. }));
            with.swarm.enabled.retain(|&k| k != FaultKind::ClientCrash);
            assert_eq!(with, FaultPlan::generate(seed, 5_000, &without), "seed {seed}");
        }
        assert!(crashes > 0, "no seed of 64 plans a client crash");
        let none = Targets {
            crashable_clients: vec![],
            ..targets()
        };
        assert!((0..64).all(|seed| !FaultPlan::generate(seed, 5_000, &none)
            .faults
            .iter()
            .any(|f| matches!(f, Fault::ClientCrash { .. }))));
    }

    #[test]
    fn a_crafted_plan_is_refused_with_the_fault_it_is_wrong_about() {
        let nodes = [1, 2, 3, 100, 101];
        let plan = |fault: Fault| FaultPlan {
            faults: vec![fault],
            ..FaultPlan::calm(5_000)
        };
        let refused = |fault: Fault| plan(fault).validate(&nodes).expect_err("refused");
        let pause = |node| Fault::Pause {
            at_ms: 10,
            node,
            for_ms: 100,
        };
        assert!(plan(pause(3)).validate(&nodes).is_ok());
        let e = refused(pause(9));
        assert!(
            e.contains("fault 0") && e.contains("node 9 is not part of this run"),
            "{e}"
        );
        let e = refused(Fault::UnsyncedCrash {
            at_ms: 10,
            for_ms: 100,
            probability: 1.5,
            down_ms: 10,
        });
        assert!(e.contains("probability 1.5 is not a probability"), "{e}");
        let e = refused(Fault::Network {
            at_ms: 10,
            for_ms: 100,
            loss: f64::NAN,
            duplicate: 0.0,
            delay: 0.0,
            max_delay_ms: 0,
            late_ms: 0,
        });
        assert!(e.contains("loss NaN"), "{e}");
        let e = refused(Fault::Stall {
            at_ms: u64::MAX,
            for_ms: 100,
            moment: "lead".into(),
        });
        assert!(e.contains("more than"), "{e}");
        let e = refused(Fault::Drift {
            at_ms: 10,
            node: 1,
            ppm: -1_000_000,
        });
        assert!(e.contains("-1000000 ppm"), "{e}");
    }

    #[test]
    fn plans_round_trip_through_json() {
        let plan = FaultPlan::generate(3, 5_000, &targets());
        let text = serde_json::to_string_pretty(&plan).unwrap();
        assert_eq!(serde_json::from_str::<FaultPlan>(&text).unwrap(), plan);
    }

    #[test]
    fn a_power_loss_takes_down_two_or_more_servers_together_on_about_half_the_seeds() {
        let servers = [1, 2, 3];
        let mut losses = 0;
        for seed in 0..64 {
            let mut crashes = Vec::new();
            power_loss(seed, 5_000, 0.5, &servers, &mut crashes);
            if crashes.is_empty() {
                continue;
            }
            losses += 1;
            let (mut nodes, mut at): (Vec<NodeId>, Vec<u64>) = crashes
                .iter()
                .map(|f| match f {
                    Fault::Crash { node, at_ms, .. } => (*node, *at_ms),
                    other => panic!("seed {seed}: {other:?}"),
                })
                .unzip();
            nodes.sort_unstable();
            nodes.dedup();
            at.sort_unstable();
            assert!(
                nodes.len() >= 2 && nodes.len() == crashes.len(),
                "seed {seed}: {crashes:?}"
            );
            assert!(at[at.len() - 1] - at[0] < 5, "seed {seed}: not together: {crashes:?}");
        }
        assert!((16..=48).contains(&losses), "{losses} of 64 seeds");
    }

    #[test]
    fn crashes_only_hit_servers() {
        for seed in 0..64 {
            for f in FaultPlan::generate(seed, 5_000, &targets()).faults {
                if let Fault::Crash { node, .. } = f {
                    assert!(node <= 3);
                }
            }
        }
    }
}
