//! The nemesis: carries out a fault plan against a running simulation, then
//! heals everything when the plan's window ends.
//!
//! Every fault becomes a start and (where it lasts) an end action on one
//! timeline. The nemesis only decides; faults are counted where their
//! effect shows (see [`crate::world`]), so the sweep's "faults fired"
//! figures are what really happened. Partitions are cut links the network
//! layer refuses to carry, not madsim clogs, so the network's own late
//! copies obey them too.

use std::collections::BTreeMap;
use std::time::Duration;

use madsim::runtime::Handle;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use ringfence::env::NodeId;

use crate::plan::{AimedAction, DiskFault, DiskLoss, Fault, FaultKind, FaultPlan};
use crate::trace::{Phase, TraceEvent};
use crate::world::{MomentWindow, NetFaults, NodeState, SplitState, SplitWindow, World};

enum Action {
    Start(usize),
    End(usize),
    /// Restart a node an unsynced-crash took down.
    Restart(NodeId),
    /// Heal the split a moment-split fault set off.
    Unsplit(usize),
}

/// Crafts one hostile message as if `from` sent it to `to` (the scenario's
/// [`crate::scenario::Scenario::rogue`]); `None` when it has none.
pub type Adversary = Box<dyn Fn(&mut ChaCha8Rng, NodeId, NodeId) -> Option<Vec<u8>> + Send>;

/// Called with a client node the nemesis has just killed, before it
/// restarts: the runner closes the operation it had in flight.
pub type OnClientCrash = Box<dyn Fn(NodeId) + Send>;

/// Executes plans. Overlapping partitions compose: a link stays cut while
/// any partition cuts it (the world keeps which).
pub struct Nemesis {
    world: World,
    handle: Handle,
    /// Nodes that partitions apply to.
    nodes: Vec<NodeId>,
    active_network: Option<usize>,
    /// Aimed faults waiting for their role to be played, by plan index.
    armed: Vec<usize>,
    /// Aimed faults that fired: the node hit, and the concrete fault the
    /// action became where there is one (for its end).
    aimed: BTreeMap<usize, (NodeId, Option<Fault>)>,
    /// Links each isolation or moment split cut, by plan index: whom it
    /// cuts off is only known when it starts.
    isolated: BTreeMap<usize, Vec<(NodeId, NodeId)>>,
    /// Stalls in force: the node each one paused.
    stalled: BTreeMap<usize, NodeId>,
    /// Crafts the messages of rogue faults.
    adversary: Option<Adversary>,
    on_client_crash: Option<OnClientCrash>,
    /// Per paused node: whether a task spawned on it at the pause has run.
    heartbeats: BTreeMap<NodeId, std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Nemesis {
    pub fn new(world: World, nodes: Vec<NodeId>) -> Self {
        Nemesis {
            world,
            handle: Handle::current(),
            nodes,
            active_network: None,
            armed: Vec::new(),
            aimed: BTreeMap::new(),
            isolated: BTreeMap::new(),
            stalled: BTreeMap::new(),
            adversary: None,
            on_client_crash: None,
            heartbeats: BTreeMap::new(),
        }
    }

    /// `hook` hears of every client crash (see [`OnClientCrash`]).
    pub fn on_client_crash(mut self, hook: OnClientCrash) -> Self {
        self.on_client_crash = Some(hook);
        self
    }

    /// Rogue faults inject what `adversary` crafts; without one they do
    /// nothing (and are not counted).
    pub fn with_adversary(mut self, adversary: Adversary) -> Self {
        self.adversary = Some(adversary);
        self
    }

    /// Delivers the adversary's messages to `to` as if `from` sent them.
    /// Counted once per burst that reached a running node.
    fn rogue(&mut self, index: usize, from: NodeId, to: NodeId, messages: u32, salt: u64) {
        let Some(adversary) = &self.adversary else { return };
        let mut rng = ChaCha8Rng::seed_from_u64(salt);
        let mut delivered = 0;
        for _ in 0..messages {
            if let Some(bytes) = adversary(&mut rng, from, to) {
                delivered += u32::from(self.world.lock().inject(from, to, bytes));
            }
        }
        if delivered == 0 {
            return;
        }
        self.world.lock().count(FaultKind::Rogue);
        let text = format!("rogue: {delivered} hostile messages to node {to} as if from node {from}");
        self.note(Phase::Instant, FaultKind::Rogue, Some(index), vec![from, to], text);
    }

    /// Applies `plan` in simulated time; returns when its window has ended
    /// and everything is healed. Besides the plan's own timeline it serves
    /// crash requests from servers (the unsynced-crash fault) as they come.
    pub async fn run(mut self, plan: &FaultPlan) {
        // Keyed by (time, order): ends sort before starts at the same
        // instant, so back-to-back faults on one node do not trip over each
        // other.
        let mut queue: BTreeMap<(Duration, u64), Action> = BTreeMap::new();
        for (i, fault) in plan.faults.iter().enumerate() {
            let at = Duration::from_millis(fault.at_ms());
            queue.insert((at, 2 * i as u64 + 1), Action::Start(i));
            // An aimed fault's end is timed from when it fires.
            if let Some(ms) = fault.duration_ms().filter(|_| !matches!(fault, Fault::Aimed { .. })) {
                queue.insert((at + Duration::from_millis(ms), 2 * i as u64), Action::End(i));
            }
        }
        let start = madsim::time::Instant::now(); // determinism: ok — simulated time
        let window = Duration::from_millis(plan.duration_ms);
        let wakeup = self.world.lock().crash_wakeup.clone();
        // Actions the run set off (restarts, heals), ordered after the plan's own.
        let mut set_off = 0;
        loop {
            let requests = std::mem::take(&mut self.world.lock().crash_requests);
            for r in requests {
                // After a failed write or fsync, what the kernel kept of it is unknown.
                let loss = if r.kind == FaultKind::DiskError {
                    DiskLoss::Torn
                } else {
                    DiskLoss::LoseUnsynced
                };
                if self.crash(r.node, loss, r.index, r.kind, &r.why) {
                    if let Some(Fault::Aimed { situation, .. }) = plan.faults.get(r.index) {
                        self.world.lock().count_situation(situation);
                    }
                    set_off += 1;
                    queue.insert((start.elapsed() + r.down, u64::MAX - set_off), Action::Restart(r.node));
                }
            }
            let splits = std::mem::take(&mut self.world.lock().split_requests);
            for split in splits {
                let text = format!("moment split ({})", split.why);
                self.note(
                    Phase::Start,
                    FaultKind::Partition,
                    Some(split.index),
                    endpoints(&split.links),
                    text,
                );
                self.isolated.insert(split.index, split.links);
                set_off += 1;
                queue.insert(
                    (start.elapsed() + split.split, u64::MAX - set_off),
                    Action::Unsplit(split.index),
                );
            }
            for (index, end) in self.fire_armed(plan) {
                queue.insert((start.elapsed() + end, 2 * index as u64), Action::End(index));
            }
            let next = queue.first_key_value().map_or(window, |(&(at, _), _)| at.min(window));
            if next >= window && start.elapsed() >= window {
                break;
            }
            let sleep = std::pin::pin!(madsim::time::sleep_until(start + next));
            let request = std::pin::pin!(wakeup.notified());
            if let futures::future::Either::Right(_) = futures::future::select(sleep, request).await {
                continue;
            }
            if next >= window {
                break;
            }
            let (_, action) = queue.pop_first().expect("the next action exists");
            match action {
                Action::Start(i) => self.start(i, &plan.faults[i]),
                Action::End(i) => self.end(i, &plan.faults[i]),
                Action::Restart(node) => self.restart(node),
                Action::Unsplit(i) => self.unsplit(i),
            }
        }
        self.heal();
    }

    /// Kills `node`, applying `disk` loss; `false` if it was already down
    /// (or the kind's effect is switched off). `why` says what the node had
    /// just done, for crashes it asked for. The crash is counted when the
    /// node boots again.
    fn crash(&mut self, node: NodeId, disk: DiskLoss, index: usize, kind: FaultKind, why: &str) -> bool {
        let lost = {
            let mut w = self.world.lock();
            let off = w.effect_off(kind);
            let state = w.node(node);
            if state.down || off {
                return false;
            }
            state.down = true;
            state.paused = false;
            w.disarm(node);
            let lost = w.crash_disk(node, disk);
            // An unsynced crash is one only if it lost unsynced bytes; a
            // failed sync was counted when it failed.
            let counts = match kind {
                FaultKind::UnsyncedCrash => lost.lost > 0,
                FaultKind::DiskError => false,
                _ => true,
            };
            w.node(node).killed_by = counts.then_some(kind);
            lost
        };
        self.handle.kill(self.madsim_id(node));
        self.heartbeats.remove(&node);
        if kind == FaultKind::ClientCrash {
            if let Some(hook) = &self.on_client_crash {
                hook(node);
            }
        }
        let why = if why.is_empty() {
            String::new()
        } else {
            format!("{why}; ")
        };
        let junk = if lost.junk > 0 {
            format!(", {} bytes of junk after", lost.junk)
        } else {
            String::new()
        };
        let text = format!(
            "{kind} node {node} ({why}{disk:?}, {} unsynced bytes lost{junk})",
            lost.lost
        );
        self.note(Phase::Start, FaultKind::Crash, Some(index), vec![node], text);
        true
    }

    /// Starts a hostile-disk fault. A bit flip or lost write strikes a
    /// stopped node (a running one would not read its disk again until it
    /// restarts), so the node crashes first; a write/fsync failure is armed
    /// for the node's next sync (see [`crate::world::WorldState::sync_fails`]).
    fn disk_fault(&mut self, index: usize, node: NodeId, what: DiskFault, down: Duration) {
        match what {
            DiskFault::BitFlip | DiskFault::LostTail | DiskFault::Lost => {
                let (kind, why) = match what {
                    DiskFault::BitFlip => (FaultKind::BitFlip, "its disk is about to flip a bit"),
                    DiskFault::LostTail => (FaultKind::LostWrite, "its disk is about to lose synced writes"),
                    _ => (FaultKind::DiskLost, "its disk is about to be lost"),
                };
                self.crash(node, DiskLoss::LoseUnsynced, index, FaultKind::Crash, why);
                let Some(text) = self.world.lock().damage_disk(node, kind) else {
                    return;
                };
                self.note(Phase::Instant, kind, Some(index), vec![node], text);
            }
            DiskFault::Error => {
                self.world.lock().disk_error = Some((node, index, down));
                let text = format!("node {node}'s next write or fsync fails");
                self.note(Phase::Instant, FaultKind::DiskError, Some(index), vec![node], text);
            }
        }
    }

    fn note(&self, phase: Phase, kind: FaultKind, index: Option<usize>, nodes: Vec<NodeId>, text: String) {
        tracing::info!(target: "nemesis", "{text}");
        self.world.lock().event(TraceEvent::Fault {
            phase,
            kind,
            index,
            nodes,
            text,
        });
    }

    fn madsim_id(&self, node: NodeId) -> madsim::task::NodeId {
        self.world
            .lock()
            .node(node)
            .madsim_id
            .expect("node was built before the nemesis started")
    }

    fn start(&mut self, index: usize, fault: &Fault) {
        match fault {
            Fault::Partition { .. } | Fault::OneWay { .. } => self.partition(index, fault, true),
            Fault::Slow { links, delay_ms, .. } => self.slow(index, links, Some(*delay_ms)),
            Fault::Crash { node, disk, .. } => {
                self.crash(*node, *disk, index, FaultKind::Crash, "");
            }
            Fault::ClientCrash { node, .. } => {
                self.crash(*node, DiskLoss::LoseUnsynced, index, FaultKind::ClientCrash, "");
            }
            Fault::Pause { node, .. } => {
                self.pause(index, *node, format!("pause node {node}"));
            }
            Fault::Network {
                loss,
                duplicate,
                delay,
                max_delay_ms,
                late_ms,
                ..
            } => {
                let faults = NetFaults {
                    loss: *loss,
                    duplicate: *duplicate,
                    delay: *delay,
                    max_delay: Duration::from_millis(*max_delay_ms),
                    late: Duration::from_millis(*late_ms),
                };
                self.world.lock().net = faults;
                self.active_network = Some(index);
                let mut text =
                    format!("network loss={loss:.3} duplicate={duplicate:.3} delay={delay:.3} up to {max_delay_ms}ms");
                if *late_ms > 0 {
                    text += &format!(", some copies late up to {late_ms}ms");
                }
                self.note(Phase::Start, FaultKind::MessageLoss, Some(index), vec![], text);
            }
            Fault::Drift { node, ppm, .. } => {
                let mut w = self.world.lock();
                let rate = if w.effect_off(FaultKind::ClockDrift) {
                    1.0
                } else {
                    1.0 + *ppm as f64 / 1e6
                };
                w.set_clock_rate(*node, rate);
                drop(w);
                self.note(
                    Phase::Instant,
                    FaultKind::ClockDrift,
                    Some(index),
                    vec![*node],
                    format!("clock drift node {node} {ppm:+}ppm"),
                );
            }
            Fault::Jump { node, forward_ms, .. } => {
                self.world.lock().jump_clock(*node, Duration::from_millis(*forward_ms));
                self.note(
                    Phase::Instant,
                    FaultKind::ClockJump,
                    Some(index),
                    vec![*node],
                    format!("clock jump node {node} +{forward_ms}ms"),
                );
            }
            Fault::Aimed { .. } => self.armed.push(index),
            Fault::UnsyncedCrash {
                probability, down_ms, ..
            } => {
                self.world.lock().unsynced_crash = Some((index, *probability, Duration::from_millis(*down_ms)));
                let text = format!("unsynced-crash window: p={probability:.2}, down {down_ms}ms");
                self.note(Phase::Start, FaultKind::UnsyncedCrash, Some(index), vec![], text);
            }
            Fault::MomentCrash {
                moment,
                after_sends,
                probability,
                down_ms,
                ..
            } => {
                let window = MomentWindow {
                    moment: moment.clone(),
                    after_sends: *after_sends,
                    probability: *probability,
                    down: Duration::from_millis(*down_ms),
                };
                self.world.lock().moment_windows.insert(index, window);
                let text = format!(
                    "moment-crash window: {moment} moment, after {after_sends} sends, p={probability:.2}, down {down_ms}ms"
                );
                self.note(Phase::Start, FaultKind::MomentCrash, Some(index), vec![], text);
            }
            Fault::MomentSplit {
                moment,
                after,
                with,
                probability,
                split_ms,
                ..
            } => {
                let window = SplitWindow {
                    moment: moment.clone(),
                    after: after.clone(),
                    with: *with,
                    probability: *probability,
                    split: Duration::from_millis(*split_ms),
                };
                self.world.lock().split_windows.insert(index, SplitState::new(window));
                let after = if after.is_empty() {
                    String::new()
                } else {
                    format!(" after {after}")
                };
                let text = format!(
                    "moment-split window: {moment} moment{after}, with {with} others, p={probability:.2}, for {split_ms}ms"
                );
                self.note(Phase::Start, FaultKind::Isolate, Some(index), vec![], text);
            }
            Fault::Disk {
                node, what, down_ms, ..
            } => self.disk_fault(index, *node, *what, Duration::from_millis(*down_ms)),
            Fault::Rogue {
                from,
                to,
                messages,
                salt,
                ..
            } => self.rogue(index, *from, *to, *messages, *salt),
            Fault::Isolate {
                moment, keep_clients, ..
            } => {
                let (node, links) = {
                    let mut w = self.world.lock();
                    let Some(node) = w.last_up_at(moment) else {
                        return;
                    };
                    let from = if *keep_clients { &w.servers } else { &self.nodes };
                    (node, isolation_links(node, from))
                };
                self.cut_links(&links, index, FaultKind::Isolate, true);
                self.isolated.insert(index, links.clone());
                let text = format!("isolate node {node}, the last to reach {moment}");
                self.note(Phase::Start, FaultKind::Partition, Some(index), endpoints(&links), text);
            }
            Fault::Stall { moment, .. } => {
                let Some(node) = self.world.lock().last_up_at(moment) else {
                    return;
                };
                // A node already paused stays under the pause that has it,
                // which this stall's end must not cut short.
                if self.pause(index, node, format!("stall node {node}, the last to reach {moment}")) {
                    self.stalled.insert(index, node);
                }
            }
        }
    }

    fn end(&mut self, index: usize, fault: &Fault) {
        match fault {
            Fault::Partition { .. } | Fault::OneWay { .. } => self.partition(index, fault, false),
            Fault::Slow { links, .. } => self.slow(index, links, None),
            Fault::Crash { node, .. } | Fault::Disk { node, .. } | Fault::ClientCrash { node, .. } => {
                self.restart(*node)
            }
            Fault::Pause { node, .. } => self.resume(*node),
            Fault::Network { .. } => {
                if self.active_network == Some(index) {
                    self.world.lock().net = NetFaults::default();
                    self.active_network = None;
                    self.note(
                        Phase::End,
                        FaultKind::MessageLoss,
                        Some(index),
                        vec![],
                        "network faults end".into(),
                    );
                }
            }
            Fault::UnsyncedCrash { .. } => {
                let mut w = self.world.lock();
                if w.unsynced_crash.is_some_and(|(active, ..)| active == index) {
                    w.unsynced_crash = None;
                    drop(w);
                    self.note(
                        Phase::End,
                        FaultKind::UnsyncedCrash,
                        Some(index),
                        vec![],
                        "unsynced-crash window ends".into(),
                    );
                }
            }
            Fault::Aimed { action, .. } => match (self.aimed.remove(&index), action) {
                (Some((_, Some(concrete))), _) => self.end(index, &concrete),
                (Some((node, None)), AimedAction::DelayTo { to, .. }) => {
                    let mut w = self.world.lock();
                    for &t in to {
                        w.link_delay.remove(&(node, t));
                    }
                    drop(w);
                    let text = format!("delay node {node} -> {to:?} ends");
                    self.note(Phase::End, FaultKind::MessageDelay, Some(index), vec![node], text);
                }
                _ => {}
            },
            Fault::MomentCrash { .. } => {
                if self.world.lock().moment_windows.remove(&index).is_some() {
                    let text = "moment-crash window ends".into();
                    self.note(Phase::End, FaultKind::MomentCrash, Some(index), vec![], text);
                }
            }
            Fault::MomentSplit { .. } => {
                // A split in force heals on its own time.
                if self.world.lock().split_windows.remove(&index).is_some() {
                    let text = "moment-split window ends".into();
                    self.note(Phase::End, FaultKind::Isolate, Some(index), vec![], text);
                }
            }
            Fault::Stall { .. } => {
                if let Some(node) = self.stalled.remove(&index) {
                    self.resume(node);
                }
            }
            Fault::Isolate { .. } => {
                if let Some(links) = self.isolated.remove(&index) {
                    self.cut_links(&links, index, FaultKind::Isolate, false);
                    let text = "isolation healed".into();
                    self.note(Phase::End, FaultKind::Partition, Some(index), endpoints(&links), text);
                }
            }
            Fault::Drift { .. } | Fault::Jump { .. } | Fault::Rogue { .. } => {}
        }
    }

    /// Fires every armed aimed fault whose role some live, running node
    /// plays now. Returns (plan index, time until its end) for those that last.
    fn fire_armed(&mut self, plan: &FaultPlan) -> Vec<(usize, Duration)> {
        let mut ends = Vec::new();
        for index in std::mem::take(&mut self.armed) {
            let Fault::Aimed {
                situation,
                role,
                action,
                ..
            } = &plan.faults[index]
            else {
                unreachable!("only aimed faults are armed")
            };
            let target = {
                let w = self.world.lock();
                w.roles
                    .get(role)
                    .into_iter()
                    .flatten()
                    .copied()
                    .find(|n| w.nodes.get(n).is_some_and(|s| !s.down && !s.paused))
            };
            let Some(node) = target else {
                self.armed.push(index);
                continue;
            };
            // The concrete fault starts now; its own start time is not read.
            let at_ms = 0;
            let concrete = match action {
                AimedAction::Pause { for_ms } => Some(Fault::Pause {
                    at_ms,
                    node,
                    for_ms: *for_ms,
                }),
                AimedAction::Crash { down_ms, disk } => Some(Fault::Crash {
                    at_ms,
                    node,
                    down_ms: *down_ms,
                    disk: *disk,
                }),
                AimedAction::Isolate { from, for_ms } => {
                    let others = |out: &[NodeId]| self.nodes.iter().copied().filter(|n| !out.contains(n)).collect();
                    Some(Fault::Partition {
                        at_ms,
                        for_ms: *for_ms,
                        shape: format!("aimed isolate {node}"),
                        groups: vec![others(from), others(&[node])],
                    })
                }
                AimedAction::Deafen { from, for_ms } => Some(Fault::OneWay {
                    at_ms,
                    for_ms: *for_ms,
                    from: from.clone(),
                    to: vec![node],
                }),
                AimedAction::Jump { forward_ms } => Some(Fault::Jump {
                    at_ms,
                    node,
                    forward_ms: *forward_ms,
                }),
                AimedAction::DelayTo { to, delay_ms, .. } => {
                    let late = Duration::from_millis(*delay_ms);
                    self.world
                        .lock()
                        .link_delay
                        .extend(to.iter().map(|&t| ((node, t), late)));
                    let text = format!("delay node {node} -> {to:?} by {delay_ms}ms");
                    self.note(Phase::Start, FaultKind::MessageDelay, Some(index), vec![node], text);
                    None
                }
                AimedAction::CrashOnAppend { down_ms } => {
                    self.world.lock().crash_on_append = Some((node, index, Duration::from_millis(*down_ms)));
                    None
                }
            };
            if let Some(concrete) = &concrete {
                self.start(index, concrete);
            }
            self.aimed.insert(index, (node, concrete));
            if !matches!(action, AimedAction::CrashOnAppend { .. }) {
                self.world.lock().count_situation(situation);
            }
            tracing::info!(target: "nemesis", "aimed at {role} (node {node}): {situation}");
            if let Some(ms) = action
                .duration_ms()
                .filter(|_| !matches!(action, AimedAction::CrashOnAppend { .. }))
            {
                ends.push((index, Duration::from_millis(ms)));
            }
        }
        ends
    }

    /// Cuts (or restores) the directed links a partition fault blocks.
    fn partition(&mut self, index: usize, fault: &Fault, cut: bool) {
        let links = fault.cut_links(&self.nodes);
        let text = match fault {
            Fault::Partition { groups, shape, .. } => format!("partition {shape} {groups:?}"),
            Fault::OneWay { from, to, .. } => format!("one-way partition {from:?} -/-> {to:?}"),
            _ => unreachable!("only partitions cut links"),
        };
        self.cut_links(&links, index, FaultKind::Partition, cut);
        let phase = if cut { Phase::Start } else { Phase::End };
        let text = if cut { text } else { format!("{text} healed") };
        self.note(phase, FaultKind::Partition, Some(index), endpoints(&links), text);
    }

    /// Slows `links` by `delay_ms` (their delays counted where the copies
    /// arrive late), or ends it with `None`.
    fn slow(&mut self, index: usize, links: &[(NodeId, NodeId)], delay_ms: Option<u64>) {
        let mut w = self.world.lock();
        for link in links {
            match delay_ms {
                Some(ms) => w.link_delay.insert(*link, Duration::from_millis(ms)),
                None => w.link_delay.remove(link),
            };
        }
        drop(w);
        let (phase, text) = match delay_ms {
            Some(ms) => (Phase::Start, format!("slow links ({ms} ms later) before a partition")),
            None => (Phase::End, "slow links end".to_string()),
        };
        self.note(phase, FaultKind::MessageDelay, Some(index), endpoints(links), text);
    }

    fn restart(&mut self, node: NodeId) {
        if self.clear_flag(node, |state| &mut state.down) {
            self.handle.restart(self.madsim_id(node));
            self.note(
                Phase::End,
                FaultKind::Crash,
                None,
                vec![node],
                format!("restart node {node}"),
            );
        }
    }

    fn resume(&mut self, node: NodeId) {
        if self.clear_flag(node, |state| &mut state.paused) {
            let ran = self.heartbeats.remove(&node);
            if ran.is_some_and(|r| !r.load(std::sync::atomic::Ordering::Relaxed)) {
                self.world.lock().count(FaultKind::Pause);
            }
            self.handle.resume(self.madsim_id(node));
            self.note(
                Phase::End,
                FaultKind::Pause,
                None,
                vec![node],
                format!("resume node {node}"),
            );
        }
    }

    /// Clears a node's down/paused flag; `false` if it was not set.
    fn clear_flag(&self, node: NodeId, flag: fn(&mut NodeState) -> &mut bool) -> bool {
        std::mem::replace(flag(self.world.lock().node(node)), false)
    }

    /// Ends every fault: links restored, processes resumed and restarted,
    /// network clean, clocks back to the true rate (jumps stay: a monotonic
    /// clock never goes back).
    fn heal(&mut self) {
        self.world.lock().uncut_all();
        self.isolated.clear();
        self.stalled.clear();
        let nodes: Vec<NodeId> = self.world.lock().nodes.keys().copied().collect();
        for &node in &nodes {
            self.resume(node);
            self.restart(node);
        }
        let mut w = self.world.lock();
        w.net = NetFaults::default();
        w.unsynced_crash = None;
        w.crash_requests.clear();
        w.link_delay.clear();
        w.crash_on_append = None;
        w.disk_error = None;
        w.clear_role_faults();
        for &node in &nodes {
            w.set_clock_rate(node, 1.0);
        }
        drop(w);
        self.active_network = None;
        tracing::info!(target: "nemesis", "heal: all faults end");
        self.world.lock().event(TraceEvent::Heal);
    }

    /// Pauses `node` for plan fault `index`, unless it is down or paused
    /// already; whether it did.
    fn pause(&mut self, index: usize, node: NodeId, text: String) -> bool {
        let off = {
            let mut w = self.world.lock();
            let off = w.effect_off(FaultKind::Pause);
            let state = w.node(node);
            if state.down || state.paused {
                return false;
            }
            state.paused = true;
            off
        };
        // The pause's effect, checked at the resume: a task spawned on the
        // node now must not have run by then.
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.heartbeats.insert(node, ran.clone());
        let spawner = self.handle.get_node(self.madsim_id(node)).expect("node exists");
        spawner.spawn(async move { ran.store(true, std::sync::atomic::Ordering::Relaxed) });
        if !off {
            self.handle.pause(self.madsim_id(node));
        }
        self.note(Phase::Start, FaultKind::Pause, Some(index), vec![node], text);
        true
    }

    /// Heals the split moment-split fault `index` set off; its window, if
    /// still in force, may split again.
    fn unsplit(&mut self, index: usize) {
        let Some(links) = self.isolated.remove(&index) else {
            return;
        };
        self.cut_links(&links, index, FaultKind::Isolate, false);
        if let Some(state) = self.world.lock().split_windows.get_mut(&index) {
            state.splitting = false;
        }
        let text = "moment split healed".into();
        self.note(Phase::End, FaultKind::Partition, Some(index), endpoints(&links), text);
    }

    fn cut_links(&mut self, links: &[(NodeId, NodeId)], index: usize, kind: FaultKind, cut: bool) {
        let mut w = self.world.lock();
        for &(a, b) in links {
            w.cut_link(a, b, index, kind, cut);
        }
    }
}

/// Every node on either end of `links`, sorted and unique.
fn endpoints(links: &[(NodeId, NodeId)]) -> Vec<NodeId> {
    let set: std::collections::BTreeSet<NodeId> = links.iter().flat_map(|&(a, b)| [a, b]).collect();
    set.into_iter().collect()
}

/// Both directions of every link between `node` and the others of `from`:
/// what an isolation of `node` from them cuts.
fn isolation_links(node: NodeId, from: &[NodeId]) -> Vec<(NodeId, NodeId)> {
    from.iter()
        .filter(|&&other| other != node)
        .flat_map(|&other| [(node, other), (other, node)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_isolation_that_keeps_clients_cuts_only_the_links_to_servers() {
        let (servers, nodes) = ([1, 2, 3], [1, 2, 3, 10, 11]);
        let from_peers = isolation_links(2, &servers);
        assert_eq!(from_peers, vec![(2, 1), (1, 2), (2, 3), (3, 2)]);
        let from_all = isolation_links(2, &nodes);
        assert_eq!(from_all.len(), 8);
        assert!(from_all.contains(&(2, 10)) && from_all.contains(&(11, 2)));
    }
}
