//! The nemesis: carries out a fault plan against a running simulation, then
//! heals everything when the plan's window ends.
//!
//! Every fault becomes a start and (where it lasts) an end action on one
//! timeline. A fault that cannot take effect — crashing a node that is
//! already down, pausing a crashed node — is skipped and not counted, so the
//! sweep's "faults fired" figures are what really happened.

use std::collections::BTreeMap;
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::Handle;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use ringfence::env::NodeId;

use crate::plan::{AimedAction, DiskFault, DiskLoss, Fault, FaultKind, FaultPlan};
use crate::trace::{Phase, TraceEvent};
use crate::world::{MomentWindow, NetFaults, NodeState, World};

enum Action {
    Start(usize),
    End(usize),
    /// Restart a node an unsynced-crash took down.
    Restart(NodeId),
}

/// Crafts one hostile message as if `from` sent it to `to` (the scenario's
/// [`crate::scenario::Scenario::rogue`]); `None` when it has none.
pub type Adversary = Box<dyn Fn(&mut ChaCha8Rng, NodeId, NodeId) -> Option<Vec<u8>> + Send>;

/// Executes plans; owns the clog bookkeeping so overlapping partitions
/// compose (a link stays cut while any partition cuts it).
pub struct Nemesis {
    world: World,
    handle: Handle,
    net: std::sync::Arc<NetSim>,
    /// Nodes that partitions apply to.
    nodes: Vec<NodeId>,
    cut: BTreeMap<(NodeId, NodeId), u32>,
    active_network: Option<usize>,
    /// Aimed faults waiting for their role to be played, by plan index.
    armed: Vec<usize>,
    /// Aimed faults that fired: the node hit, and the concrete fault the
    /// action became where there is one (for its end).
    aimed: BTreeMap<usize, (NodeId, Option<Fault>)>,
    /// Links each leader isolation cut, by plan index: who led is only
    /// known when it starts.
    isolated: BTreeMap<usize, Vec<(NodeId, NodeId)>>,
    /// Crafts the messages of rogue faults.
    adversary: Option<Adversary>,
}

impl Nemesis {
    pub fn new(world: World, nodes: Vec<NodeId>) -> Self {
        Nemesis {
            world,
            handle: Handle::current(),
            net: NetSim::current(),
            nodes,
            cut: BTreeMap::new(),
            active_network: None,
            armed: Vec::new(),
            aimed: BTreeMap::new(),
            isolated: BTreeMap::new(),
            adversary: None,
        }
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
        let mut restarts = 0;
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
                    restarts += 1;
                    queue.insert((start.elapsed() + r.down, u64::MAX - restarts), Action::Restart(r.node));
                }
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
            }
        }
        self.heal();
    }

    /// Kills `node`, applying `disk` loss; `false` if it was already down.
    /// `why` says what the node had just done, for crashes it asked for.
    fn crash(&mut self, node: NodeId, disk: DiskLoss, index: usize, kind: FaultKind, why: &str) -> bool {
        let lost = {
            let mut w = self.world.lock();
            let state = w.node(node);
            if state.down {
                return false;
            }
            state.down = true;
            state.paused = false;
            w.count(kind);
            w.disarm(node);
            w.crash_disk(node, disk)
        };
        self.handle.kill(self.madsim_id(node));
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

    /// Starts a hostile-disk fault. A bit flip strikes a stopped node (a
    /// running one would not read its disk again until it restarts), so
    /// the node crashes first; a write/fsync failure is armed for the
    /// node's next sync (see [`crate::world::WorldState::sync_fails`]).
    fn disk_fault(&mut self, index: usize, node: NodeId, what: DiskFault, down: Duration) {
        match what {
            DiskFault::BitFlip => {
                self.crash(
                    node,
                    DiskLoss::LoseUnsynced,
                    index,
                    FaultKind::Crash,
                    "its disk is about to flip a bit",
                );
                let Some(offset) = self.world.lock().flip_bit(node) else {
                    return;
                };
                let text = format!("bit flip on node {node}'s disk at byte {offset}");
                self.note(Phase::Instant, FaultKind::BitFlip, Some(index), vec![node], text);
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
            Fault::Crash { node, disk, .. } => {
                self.crash(*node, *disk, index, FaultKind::Crash, "");
            }
            Fault::Pause { node, .. } => {
                {
                    let mut w = self.world.lock();
                    let state = w.node(*node);
                    if state.down || state.paused {
                        return;
                    }
                    state.paused = true;
                    w.count(FaultKind::Pause);
                }
                self.handle.pause(self.madsim_id(*node));
                self.note(
                    Phase::Start,
                    FaultKind::Pause,
                    Some(index),
                    vec![*node],
                    format!("pause node {node}"),
                );
            }
            Fault::Network {
                loss,
                duplicate,
                delay,
                max_delay_ms,
                ..
            } => {
                let faults = NetFaults {
                    loss: *loss,
                    duplicate: *duplicate,
                    delay: *delay,
                    max_delay: Duration::from_millis(*max_delay_ms),
                };
                self.world.lock().net = faults;
                self.active_network = Some(index);
                let text =
                    format!("network loss={loss:.3} duplicate={duplicate:.3} delay={delay:.3} up to {max_delay_ms}ms");
                self.note(Phase::Start, FaultKind::MessageLoss, Some(index), vec![], text);
            }
            Fault::Drift { node, ppm, .. } => {
                let mut w = self.world.lock();
                w.set_clock_rate(*node, 1.0 + *ppm as f64 / 1e6);
                w.count(FaultKind::ClockDrift);
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
                let mut w = self.world.lock();
                w.jump_clock(*node, Duration::from_millis(*forward_ms));
                w.count(FaultKind::ClockJump);
                drop(w);
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
                    moment: *moment,
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
            Fault::IsolateLeader { .. } => {
                let leader = {
                    let mut w = self.world.lock();
                    w.leader.filter(|&l| !w.node(l).down)
                };
                let Some(leader) = leader else { return };
                let links: Vec<_> = self.pairs().filter(|&(a, b)| a == leader || b == leader).collect();
                self.cut_links(&links, true);
                self.isolated.insert(index, links.clone());
                self.world.lock().count(FaultKind::IsolateLeader);
                let text = format!("isolate leader {leader}");
                self.note(Phase::Start, FaultKind::Partition, Some(index), endpoints(&links), text);
            }
        }
    }

    fn end(&mut self, index: usize, fault: &Fault) {
        match fault {
            Fault::Partition { .. } | Fault::OneWay { .. } => self.partition(index, fault, false),
            Fault::Crash { node, .. } | Fault::Disk { node, .. } => self.restart(*node),
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
            Fault::IsolateLeader { .. } => {
                if let Some(links) = self.isolated.remove(&index) {
                    self.cut_links(&links, false);
                    let text = "leader isolation healed".into();
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
        let (links, text): (Vec<_>, String) = match fault {
            Fault::Partition { groups, shape, .. } => (
                self.pairs()
                    .filter(|(a, b)| !groups.iter().any(|g| g.contains(a) && g.contains(b)))
                    .collect(),
                format!("partition {shape} {groups:?}"),
            ),
            Fault::OneWay { from, to, .. } => (
                self.pairs()
                    .filter(|(a, b)| from.contains(a) && to.contains(b))
                    .collect(),
                format!("one-way partition {from:?} -/-> {to:?}"),
            ),
            _ => unreachable!("only partitions cut links"),
        };
        self.cut_links(&links, cut);
        let phase = if cut {
            self.world.lock().count(FaultKind::Partition);
            Phase::Start
        } else {
            Phase::End
        };
        let text = if cut { text } else { format!("{text} healed") };
        self.note(phase, FaultKind::Partition, Some(index), endpoints(&links), text);
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
        let links: Vec<_> = self.cut.keys().copied().collect();
        for (a, b) in links {
            self.net.unclog_link(self.madsim_id(a), self.madsim_id(b));
        }
        self.cut.clear();
        self.isolated.clear();
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

    fn pairs(&self) -> impl Iterator<Item = (NodeId, NodeId)> + '_ {
        self.nodes
            .iter()
            .flat_map(move |&a| self.nodes.iter().filter(move |&&b| b != a).map(move |&b| (a, b)))
    }

    fn cut_links(&mut self, links: &[(NodeId, NodeId)], cut: bool) {
        for &(a, b) in links {
            let (ma, mb) = (self.madsim_id(a), self.madsim_id(b));
            let count = self.cut.entry((a, b)).or_default();
            if cut {
                *count += 1;
                if *count == 1 {
                    self.net.clog_link(ma, mb);
                }
            } else {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.cut.remove(&(a, b));
                    self.net.unclog_link(ma, mb);
                }
            }
        }
    }
}

/// Every node on either end of `links`, sorted and unique.
fn endpoints(links: &[(NodeId, NodeId)]) -> Vec<NodeId> {
    let set: std::collections::BTreeSet<NodeId> = links.iter().flat_map(|&(a, b)| [a, b]).collect();
    set.into_iter().collect()
}
