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
use ringfence::env::NodeId;

use crate::plan::{Fault, FaultKind, FaultPlan};
use crate::trace::TraceEvent;
use crate::world::{NetFaults, World};

enum Action {
    Start(usize),
    End(usize),
}

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
        }
    }

    /// Applies `plan` in simulated time; returns when its window has ended
    /// and everything is healed.
    pub async fn run(mut self, plan: &FaultPlan) {
        let mut timeline: Vec<(u64, usize, Action)> = Vec::new();
        for (i, fault) in plan.faults.iter().enumerate() {
            timeline.push((fault.at_ms(), 2 * i + 1, Action::Start(i)));
            if let Some(ms) = fault.duration_ms() {
                timeline.push((fault.at_ms() + ms, 2 * i, Action::End(i)));
            }
        }
        // Ends sort before starts at the same instant, so back-to-back faults
        // on one node do not trip over each other.
        timeline.sort_by_key(|(at, order, _)| (*at, *order));
        let start = madsim::time::Instant::now();
        for (at, _, action) in timeline {
            if at >= plan.duration_ms {
                break;
            }
            madsim::time::sleep_until(start + Duration::from_millis(at)).await;
            match action {
                Action::Start(i) => self.start(i, &plan.faults[i]),
                Action::End(i) => self.end(i, &plan.faults[i]),
            }
        }
        madsim::time::sleep_until(start + Duration::from_millis(plan.duration_ms)).await;
        self.heal();
    }

    fn note(&self, text: String) {
        tracing::info!(target: "nemesis", "{text}");
        self.world.lock().event(TraceEvent::Fault { fault: text });
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
            Fault::Partition { groups, shape, .. } => {
                let links: Vec<_> = self
                    .pairs()
                    .filter(|(a, b)| !groups.iter().any(|g| g.contains(a) && g.contains(b)))
                    .collect();
                self.cut_links(&links, true);
                self.world.lock().count(FaultKind::Partition);
                self.note(format!("partition {shape} {groups:?}"));
            }
            Fault::OneWay { from, to, .. } => {
                let links: Vec<_> = self
                    .pairs()
                    .filter(|(a, b)| from.contains(a) && to.contains(b))
                    .collect();
                self.cut_links(&links, true);
                self.world.lock().count(FaultKind::Partition);
                self.note(format!("one-way partition {from:?} -/-> {to:?}"));
            }
            Fault::Crash { node, disk, .. } => {
                let id = self.madsim_id(*node);
                let lost = {
                    let mut w = self.world.lock();
                    if w.node(*node).down {
                        return;
                    }
                    let state = w.node(*node);
                    state.down = true;
                    state.paused = false;
                    w.count(FaultKind::Crash);
                    w.crash_disk(*node, *disk)
                };
                self.handle.kill(id);
                self.note(format!("crash node {node} ({disk:?}, {lost} unsynced bytes lost)"));
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
                self.note(format!("pause node {node}"));
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
                self.note(format!(
                    "network loss={loss:.3} duplicate={duplicate:.3} delay={delay:.3} up to {max_delay_ms}ms"
                ));
            }
            Fault::Drift { node, ppm, .. } => {
                let mut w = self.world.lock();
                w.set_clock_rate(*node, 1.0 + *ppm as f64 / 1e6);
                w.count(FaultKind::ClockDrift);
                drop(w);
                self.note(format!("clock drift node {node} {ppm:+}ppm"));
            }
            Fault::Jump { node, forward_ms, .. } => {
                let mut w = self.world.lock();
                w.jump_clock(*node, Duration::from_millis(*forward_ms));
                w.count(FaultKind::ClockJump);
                drop(w);
                self.note(format!("clock jump node {node} +{forward_ms}ms"));
            }
        }
    }

    fn end(&mut self, index: usize, fault: &Fault) {
        match fault {
            Fault::Partition { groups, .. } => {
                let links: Vec<_> = self
                    .pairs()
                    .filter(|(a, b)| !groups.iter().any(|g| g.contains(a) && g.contains(b)))
                    .collect();
                self.cut_links(&links, false);
                self.note(format!("partition {groups:?} healed"));
            }
            Fault::OneWay { from, to, .. } => {
                let links: Vec<_> = self
                    .pairs()
                    .filter(|(a, b)| from.contains(a) && to.contains(b))
                    .collect();
                self.cut_links(&links, false);
                self.note(format!("one-way partition {from:?} -/-> {to:?} healed"));
            }
            Fault::Crash { node, .. } => self.restart(*node),
            Fault::Pause { node, .. } => self.resume(*node),
            Fault::Network { .. } => {
                if self.active_network == Some(index) {
                    self.world.lock().net = NetFaults::default();
                    self.active_network = None;
                    self.note("network faults end".into());
                }
            }
            Fault::Drift { .. } | Fault::Jump { .. } => {}
        }
    }

    fn restart(&mut self, node: NodeId) {
        {
            let mut w = self.world.lock();
            if !w.node(node).down {
                return;
            }
            w.node(node).down = false;
        }
        self.handle.restart(self.madsim_id(node));
        self.note(format!("restart node {node}"));
    }

    fn resume(&mut self, node: NodeId) {
        {
            let mut w = self.world.lock();
            if !w.node(node).paused {
                return;
            }
            w.node(node).paused = false;
        }
        self.handle.resume(self.madsim_id(node));
        self.note(format!("resume node {node}"));
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
        let nodes: Vec<NodeId> = self.world.lock().nodes.keys().copied().collect();
        for &node in &nodes {
            self.resume(node);
            self.restart(node);
        }
        let mut w = self.world.lock();
        w.net = NetFaults::default();
        for &node in &nodes {
            w.set_clock_rate(node, 1.0);
        }
        drop(w);
        self.active_network = None;
        self.note("heal: all faults end".into());
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
