//! The state of one simulated run that lives outside every node: disks,
//! clocks, network fault settings, fault counters and the trace.
//!
//! It survives node crashes on purpose — a disk outlives its process — and is
//! shared by the nodes' [`SimEnv`](crate::SimEnv)s and the nemesis. madsim runs
//! a whole simulation on one thread, so a plain mutex never contends.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringfence::env::{record, NodeId};

use crate::plan::{DiskLoss, FaultKind, Moment};
use crate::trace::{Trace, TraceEvent};

/// UDP-style port every simulated node listens on.
pub const PORT: u16 = 7000;

/// Fixed seed-stream labels, so each consumer of randomness gets its own
/// stream and adding draws in one never shifts another.
pub mod stream {
    pub const PLAN: u64 = 1;
    pub const NETWORK: u64 = 2;
    pub const DISK: u64 = 3;
    pub const NODE: u64 = 4;
    pub const CLOCK: u64 = 5;
    pub const CRASH: u64 = 6;
    /// Rogue-message plans (a label no other stream will pick).
    pub const ROGUE: u64 = u64::from_be_bytes(*b"\0\0\0rogue");
}

/// A ChaCha generator for `(seed, stream, index)`.
pub fn derive_rng(seed: u64, stream: u64, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[0..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&stream.to_le_bytes());
    key[16..24].copy_from_slice(&index.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// The simulated address of a node.
pub fn addr_of(id: NodeId) -> SocketAddr {
    let [_, a, b, c] = id.to_be_bytes();
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, a, b, c)), PORT)
}

/// The node at a simulated address.
pub fn node_of(addr: SocketAddr) -> Option<NodeId> {
    match addr.ip() {
        IpAddr::V4(ip) => {
            let [ten, a, b, c] = ip.octets();
            (ten == 10).then(|| u32::from_be_bytes([0, a, b, c]))
        }
        IpAddr::V6(_) => None,
    }
}

/// A node's clock: `now = anchor_local + (real - anchor_real) * rate`.
#[derive(Debug, Clone)]
pub struct Clock {
    anchor_real: Duration,
    anchor_local: Duration,
    rate: f64,
}

impl Clock {
    fn new(origin: Duration) -> Self {
        Clock {
            anchor_real: Duration::ZERO,
            anchor_local: origin,
            rate: 1.0,
        }
    }

    pub fn now(&self, real: Duration) -> Duration {
        self.anchor_local + (real - self.anchor_real).mul_f64(self.rate)
    }

    /// Real time that passes while this clock advances by `local`.
    pub fn real_for(&self, local: Duration) -> Duration {
        local.div_f64(self.rate)
    }

    fn set_rate(&mut self, real: Duration, rate: f64) {
        self.anchor_local = self.now(real);
        self.anchor_real = real;
        self.rate = rate;
    }

    fn jump(&mut self, forward: Duration) {
        self.anchor_local += forward;
    }
}

/// A node's disk: framed records, split at the last sync.
#[derive(Debug, Default, Clone)]
pub struct Disk {
    synced: Vec<u8>,
    unsynced: Vec<u8>,
    /// Bumped by `rewrite`, so a sync that straddles one does not mistake
    /// the new log's bytes for the ones it was asked to make durable.
    generation: u64,
}

/// The unsynced bytes a sync must cover: `(generation, length)`.
pub type SyncPoint = (u64, usize);

impl Disk {
    pub fn append(&mut self, payload: &[u8]) {
        record::encode(payload, &mut self.unsynced);
    }

    /// What a sync started now must make durable.
    pub fn pending(&self) -> SyncPoint {
        (self.generation, self.unsynced.len())
    }

    /// Makes the unsynced bytes up to `point` durable.
    pub fn sync_prefix(&mut self, point: SyncPoint) {
        let (generation, len) = point;
        if generation != self.generation {
            return; // a rewrite replaced (and durably wrote) the log meanwhile
        }
        let len = len.min(self.unsynced.len());
        self.synced.extend(self.unsynced.drain(..len));
    }

    pub fn rewrite(&mut self, records: &[Vec<u8>]) {
        self.generation += 1;
        self.synced.clear();
        self.unsynced.clear();
        for r in records {
            record::encode(r, &mut self.synced);
        }
    }

    /// What a crash leaves: the synced bytes plus, depending on `loss`, part
    /// of the unsynced tail (cut at a record boundary, or torn mid-record).
    fn crash(&mut self, loss: DiskLoss, rng: &mut ChaCha8Rng) -> usize {
        let tail = std::mem::take(&mut self.unsynced);
        let keep = match loss {
            DiskLoss::LoseUnsynced => 0,
            DiskLoss::KeepPrefix => {
                let cuts = record_boundaries(&tail);
                cuts[rng.gen_range(0..cuts.len())]
            }
            DiskLoss::Torn if tail.is_empty() => 0,
            DiskLoss::Torn => rng.gen_range(0..tail.len()),
        };
        self.synced.extend_from_slice(&tail[..keep]);
        tail.len() - keep
    }

    /// Recovers the records, dropping a torn tail as a real restart would.
    pub fn load(&mut self) -> Result<Vec<Vec<u8>>, record::CorruptRecord> {
        if !self.unsynced.is_empty() {
            // A live process reads back what it wrote, synced or not.
            let mut all = self.synced.clone();
            all.extend_from_slice(&self.unsynced);
            return Ok(record::decode(&all)?.records);
        }
        let recovered = record::decode(&self.synced)?;
        self.synced.truncate(recovered.valid_len);
        Ok(recovered.records)
    }
}

/// Offsets at which a framed log can be cut without tearing a record
/// (always includes 0).
fn record_boundaries(bytes: &[u8]) -> Vec<usize> {
    let mut cuts = vec![0];
    let mut offset = 0;
    while offset + record::HEADER_BYTES <= bytes.len() {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes")) as usize;
        offset += record::HEADER_BYTES + len;
        if offset > bytes.len() {
            break;
        }
        cuts.push(offset);
    }
    cuts
}

/// Per-node state the world keeps.
#[derive(Debug)]
pub struct NodeState {
    pub madsim_id: Option<madsim::task::NodeId>,
    pub clock: Clock,
    pub disk: Disk,
    /// Bumped at every (re)start; old tasks never see the new incarnation.
    pub incarnation: u64,
    rng_draws: u64,
    pub down: bool,
    pub paused: bool,
}

/// Message faults in force on the whole network.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NetFaults {
    pub loss: f64,
    pub duplicate: f64,
    pub delay: f64,
    pub max_delay: Duration,
}

/// What the network layer decided for one message.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub id: u64,
    pub drop: bool,
    /// Extra delay for the first copy and, if duplicated, the second.
    pub delays: [Option<Duration>; 2],
}

/// A crash a node's own actions asked for (an unsynced or moment crash);
/// the nemesis carries it out as soon as the node yields.
#[derive(Debug, Clone)]
pub struct CrashRequest {
    pub node: NodeId,
    /// The plan fault that asked for it.
    pub index: usize,
    pub kind: FaultKind,
    pub down: Duration,
    /// What the node had just done, for the trace.
    pub why: String,
}

/// A moment-crash window in force.
#[derive(Debug, Clone, Copy)]
pub struct MomentWindow {
    pub moment: Moment,
    pub after_sends: u32,
    pub probability: f64,
    pub down: Duration,
}

/// A node that reached an aimed-at moment: it crashes once `sends_left`
/// more messages to servers have gone out.
#[derive(Debug, Clone, Copy)]
struct Armed {
    index: usize,
    window: MomentWindow,
    sends_left: u32,
}

/// The run's shared state.
pub struct WorldState {
    pub seed: u64,
    pub nodes: BTreeMap<NodeId, NodeState>,
    pub net: NetFaults,
    net_rng: ChaCha8Rng,
    disk_rng: ChaCha8Rng,
    next_message: u64,
    /// Faults that actually took effect, by kind.
    pub fired: BTreeMap<FaultKind, u64>,
    pub trace: Trace,
    /// Messages delivered to a node's inbox; the bench compares it to madsim.
    pub delivered: u64,
    /// The unsynced-crash fault in force: (plan index, probability, down time).
    pub unsynced_crash: Option<(usize, f64, Duration)>,
    crash_rng: ChaCha8Rng,
    /// Crashes servers asked for; the nemesis carries them out as soon as
    /// the node yields.
    pub crash_requests: Vec<CrashRequest>,
    /// Moment-crash windows in force, by plan index.
    pub moment_windows: BTreeMap<usize, MomentWindow>,
    armed: BTreeMap<NodeId, Armed>,
    /// The last server to report [`Moment::Lead`]: who "the leader" is for
    /// faults that aim at it.
    pub leader: Option<NodeId>,
    pub crash_wakeup: Arc<tokio::sync::Notify>,
    /// Servers: the nodes an unsynced-crash may hit.
    pub servers: Vec<NodeId>,
    /// Role name → the nodes playing it now, as the scenario publishes
    /// them; aimed faults fire at these.
    pub roles: BTreeMap<String, Vec<NodeId>>,
    /// Named situations aimed faults brought about, by name.
    pub situations: BTreeMap<String, u64>,
    /// Extra delay on every message over a directed link.
    pub link_delay: BTreeMap<(NodeId, NodeId), Duration>,
    /// An armed crash: (node, plan index, down time), carried out at the
    /// node's next disk append.
    pub crash_on_append: Option<(NodeId, usize, Duration)>,
    /// Each running node's inbox, where rogue messages are put
    /// ([`WorldState::inject`]).
    pub inboxes: BTreeMap<NodeId, Inbox>,
}

/// The sending side of a node incarnation's inbox: `(from, bytes)`.
pub type Inbox = tokio::sync::mpsc::UnboundedSender<(NodeId, Vec<u8>)>;

/// Cheap handle to a run's [`WorldState`].
#[derive(Clone)]
pub struct World(Arc<Mutex<WorldState>>);

impl World {
    pub fn new(seed: u64, nodes: &[NodeId], servers: &[NodeId], trace: Trace) -> Self {
        let mut clock_rng = derive_rng(seed, stream::CLOCK, 0);
        let nodes = nodes
            .iter()
            .map(|&id| {
                // Clocks start at unrelated origins: comparing two nodes'
                // readings is a bug the simulator should expose.
                let origin = Duration::from_millis(clock_rng.gen_range(0..1_000_000));
                let state = NodeState {
                    madsim_id: None,
                    clock: Clock::new(origin),
                    disk: Disk::default(),
                    incarnation: 0,
                    rng_draws: 0,
                    down: false,
                    paused: false,
                };
                (id, state)
            })
            .collect();
        World(Arc::new(Mutex::new(WorldState {
            seed,
            nodes,
            net: NetFaults::default(),
            net_rng: derive_rng(seed, stream::NETWORK, 0),
            disk_rng: derive_rng(seed, stream::DISK, 0),
            next_message: 0,
            fired: BTreeMap::new(),
            trace,
            delivered: 0,
            unsynced_crash: None,
            crash_rng: derive_rng(seed, stream::CRASH, 0),
            crash_requests: Vec::new(),
            moment_windows: BTreeMap::new(),
            armed: BTreeMap::new(),
            leader: None,
            crash_wakeup: Arc::new(tokio::sync::Notify::new()),
            servers: servers.to_vec(),
            roles: BTreeMap::new(),
            situations: BTreeMap::new(),
            link_delay: BTreeMap::new(),
            crash_on_append: None,
            inboxes: BTreeMap::new(),
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, WorldState> {
        // A panic in a node aborts the whole run, so poisoning carries no
        // extra information here.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Simulated real time since the run began.
pub fn elapsed() -> Duration {
    madsim::time::TimeHandle::current().elapsed()
}

impl WorldState {
    pub fn node(&mut self, id: NodeId) -> &mut NodeState {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("node {id} is not part of this run"))
    }

    pub fn count(&mut self, kind: FaultKind) {
        *self.fired.entry(kind).or_default() += 1;
    }

    pub fn event(&mut self, event: TraceEvent) {
        self.trace.record(elapsed(), event);
    }

    /// A fresh rng for `id`'s current incarnation.
    pub fn node_rng(&mut self, id: NodeId) -> ChaCha8Rng {
        let seed = self.seed;
        let node = self.node(id);
        node.rng_draws += 1;
        let index = (u64::from(id) << 40) ^ (node.incarnation << 24) ^ node.rng_draws;
        derive_rng(seed, stream::NODE, index)
    }

    /// Decides the fate of one message under the current network faults.
    pub fn route(&mut self, from: NodeId, to: NodeId, bytes: &[u8]) -> Delivery {
        let id = self.next_message;
        self.next_message += 1;
        let net = self.net;
        let mut delivery = Delivery {
            id,
            drop: false,
            delays: [Some(Duration::ZERO), None],
        };
        if net != NetFaults::default() {
            let rng = &mut self.net_rng;
            let extra = |rng: &mut ChaCha8Rng| {
                if net.delay > 0.0 && rng.gen_bool(net.delay) && !net.max_delay.is_zero() {
                    Some(rng.gen_range(Duration::ZERO..net.max_delay))
                } else {
                    Some(Duration::ZERO)
                }
            };
            delivery.drop = net.loss > 0.0 && rng.gen_bool(net.loss);
            delivery.delays[0] = extra(rng);
            if net.duplicate > 0.0 && rng.gen_bool(net.duplicate) {
                delivery.delays[1] = extra(rng);
            }
        }
        if let Some(&late) = self.link_delay.get(&(from, to)) {
            for d in delivery.delays.iter_mut().flatten() {
                *d += late;
            }
        }
        if delivery.drop {
            self.count(FaultKind::MessageLoss);
        }
        if delivery.delays[1].is_some() && !delivery.drop {
            self.count(FaultKind::MessageDuplicate);
        }
        if delivery.delays.iter().flatten().any(|d| !d.is_zero()) && !delivery.drop {
            self.count(FaultKind::MessageDelay);
        }
        self.event(TraceEvent::Send {
            from,
            to,
            id,
            len: bytes.len(),
            digest: crate::trace::digest(bytes),
            dropped: delivery.drop,
        });
        delivery
    }

    /// Puts `bytes` in `to`'s inbox as if `from` had sent them, past every
    /// link fault (the forger sits inside the network). `false` if `to` is
    /// not running.
    pub fn inject(&mut self, from: NodeId, to: NodeId, bytes: Vec<u8>) -> bool {
        if self.node(to).down {
            return false;
        }
        let (len, digest) = (bytes.len(), crate::trace::digest(&bytes));
        let Some(inbox) = self.inboxes.get(&to) else {
            return false;
        };
        if inbox.send((from, bytes)).is_err() {
            return false;
        }
        let id = self.next_message;
        self.next_message += 1;
        self.delivered += 1;
        self.event(TraceEvent::Send {
            from,
            to,
            id,
            len,
            digest,
            dropped: false,
        });
        self.event(TraceEvent::Deliver { to, from, id });
        true
    }

    pub fn next_message_id(&self) -> u64 {
        self.next_message
    }

    /// Called after `id` sent a message: if an unsynced-crash fault is in
    /// force and `id` is a server with unsynced writes, maybe ask the
    /// nemesis to crash it.
    pub fn after_send(&mut self, id: NodeId) {
        let Some((index, probability, down)) = self.unsynced_crash else {
            return;
        };
        if !self.servers.contains(&id) || self.node(id).disk.pending().1 == 0 || self.node(id).down {
            return;
        }
        if self.crash_rng.gen_bool(probability) && !self.crash_requested(id) {
            let why = "sent while holding unsynced writes".into();
            self.request_crash(id, index, FaultKind::UnsyncedCrash, down, why);
        }
    }

    fn crash_requested(&self, id: NodeId) -> bool {
        self.crash_requests.iter().any(|r| r.node == id)
    }

    fn request_crash(&mut self, node: NodeId, index: usize, kind: FaultKind, down: Duration, why: String) {
        self.crash_requests.push(CrashRequest {
            node,
            index,
            kind,
            down,
            why,
        });
        self.crash_wakeup.notify_one();
    }

    /// A server reports that it reached `moment`; a moment-crash window in
    /// force for it may arm a crash a few sends later.
    pub fn moment(&mut self, id: NodeId, moment: Moment) {
        if moment == Moment::Lead {
            self.leader = Some(id);
        }
        if !self.servers.contains(&id) || self.node(id).down || self.armed.contains_key(&id) || self.crash_requested(id)
        {
            return;
        }
        let windows: Vec<(usize, MomentWindow)> = self
            .moment_windows
            .iter()
            .filter(|(_, w)| w.moment == moment)
            .map(|(&i, &w)| (i, w))
            .collect();
        for (index, window) in windows {
            if self.crash_rng.gen_bool(window.probability) {
                let sends_left = window.after_sends;
                self.armed.insert(
                    id,
                    Armed {
                        index,
                        window,
                        sends_left,
                    },
                );
                return;
            }
        }
    }

    /// Whether `from` may send to `to` now: a server armed to crash before
    /// its next message to a server crashes instead, and a server whose
    /// moment crash was requested sends nothing more (it is dying at an
    /// exact point).
    pub fn may_send(&mut self, from: NodeId, to: NodeId) -> bool {
        let dying = |r: &CrashRequest| r.node == from && r.kind == FaultKind::MomentCrash;
        if self.crash_requests.iter().any(dying) {
            return false;
        }
        if self.servers.contains(&to) && self.armed.get(&from).is_some_and(|a| a.sends_left == 0) {
            self.fire_armed(from);
            return false;
        }
        true
    }

    /// Counts a message `from` sent to `to` against its armed crash.
    pub fn sent(&mut self, from: NodeId, to: NodeId) {
        if !self.servers.contains(&to) {
            return;
        }
        let Some(armed) = self.armed.get_mut(&from) else {
            return;
        };
        armed.sends_left = armed.sends_left.saturating_sub(1);
        if armed.sends_left == 0 {
            self.fire_armed(from);
        }
    }

    fn fire_armed(&mut self, id: NodeId) {
        let armed = self.armed.remove(&id).expect("armed");
        let w = armed.window;
        let why = format!("{} moment, after {} sends to servers", w.moment, w.after_sends);
        self.request_crash(id, armed.index, FaultKind::MomentCrash, w.down, why);
    }

    /// Forgets what a crashed process was armed to do.
    pub fn disarm(&mut self, id: NodeId) {
        self.armed.remove(&id);
    }

    /// Ends every moment-crash window and arm.
    pub fn clear_role_faults(&mut self) {
        self.moment_windows.clear();
        self.armed.clear();
    }

    /// Applies a crash to `id`'s disk; returns the unsynced bytes lost.
    pub fn crash_disk(&mut self, id: NodeId, loss: DiskLoss) -> usize {
        let WorldState { nodes, disk_rng, .. } = self;
        let node = nodes.get_mut(&id).expect("known node");
        node.disk.crash(loss, disk_rng)
    }

    pub fn set_clock_rate(&mut self, id: NodeId, rate: f64) {
        let now = elapsed();
        self.node(id).clock.set_rate(now, rate);
    }

    pub fn jump_clock(&mut self, id: NodeId, forward: Duration) {
        self.node(id).clock.jump(forward);
    }

    /// Replaces the published roles and wakes the nemesis, which may have
    /// aimed faults waiting for one of them.
    pub fn set_roles(&mut self, roles: BTreeMap<String, Vec<NodeId>>) {
        if self.roles != roles {
            self.roles = roles;
            self.crash_wakeup.notify_one();
        }
    }

    pub fn count_situation(&mut self, situation: &str) {
        *self.situations.entry(situation.to_string()).or_default() += 1;
    }

    /// Called after `id` appended to its disk: carries out an armed
    /// crash-on-append (the nemesis kills it as soon as it yields, before
    /// its sync completes).
    pub fn after_append(&mut self, id: NodeId) {
        if let Some((node, index, down)) = self.crash_on_append.filter(|a| a.0 == id) {
            self.crash_on_append = None;
            self.request_crash(
                node,
                index,
                FaultKind::UnsyncedCrash,
                down,
                "crash at its next append".to_string(),
            );
            self.crash_wakeup.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk_with(synced: &[&[u8]], unsynced: &[&[u8]]) -> Disk {
        let mut disk = Disk::default();
        for r in synced {
            disk.append(r);
        }
        disk.sync_prefix(disk.pending());
        for r in unsynced {
            disk.append(r);
        }
        disk
    }

    #[test]
    fn a_crash_keeps_exactly_the_synced_records_when_it_loses_the_tail() {
        let mut disk = disk_with(&[b"a", b"b"], &[b"c"]);
        let lost = disk.crash(DiskLoss::LoseUnsynced, &mut derive_rng(0, 0, 0));
        assert_eq!(lost, record::HEADER_BYTES + 1);
        assert_eq!(disk.load().unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn prefix_and_torn_crashes_never_lose_synced_records_or_invent_any() {
        for seed in 0..200 {
            for loss in [DiskLoss::KeepPrefix, DiskLoss::Torn] {
                let mut disk = disk_with(&[b"a"], &[b"bb", b"ccc", b"dddd"]);
                disk.crash(loss, &mut derive_rng(seed, 0, 0));
                let got = disk.load().unwrap();
                let all: Vec<Vec<u8>> = [&b"a"[..], b"bb", b"ccc", b"dddd"].iter().map(|r| r.to_vec()).collect();
                assert!(
                    !got.is_empty() && got[..] == all[..got.len()],
                    "{loss:?} seed {seed}: {got:?}"
                );
                // After recovery the log is clean: appends and syncs work on.
                disk.append(b"e");
                disk.sync_prefix(disk.pending());
                assert_eq!(disk.load().unwrap().last().unwrap(), b"e");
            }
        }
    }

    #[test]
    fn a_sync_started_before_more_appends_covers_only_what_came_before() {
        let mut disk = disk_with(&[], &[b"a"]);
        let pending = disk.pending();
        disk.append(b"b");
        disk.sync_prefix(pending);
        disk.crash(DiskLoss::LoseUnsynced, &mut derive_rng(0, 0, 0));
        assert_eq!(disk.load().unwrap(), vec![b"a".to_vec()]);
    }

    #[test]
    fn a_sync_that_straddles_a_rewrite_does_not_sync_the_new_tail() {
        let mut disk = disk_with(&[], &[b"old"]);
        let pending = disk.pending();
        disk.rewrite(&[b"snapshot".to_vec()]);
        disk.append(b"new");
        disk.sync_prefix(pending);
        disk.crash(DiskLoss::LoseUnsynced, &mut derive_rng(0, 0, 0));
        assert_eq!(disk.load().unwrap(), vec![b"snapshot".to_vec()]);
    }

    #[test]
    fn drifting_clocks_stay_monotonic_and_jump_only_forward() {
        let mut clock = Clock::new(Duration::from_secs(100));
        let t1 = clock.now(Duration::from_secs(1));
        clock.set_rate(Duration::from_secs(1), 1.5);
        let t2 = clock.now(Duration::from_secs(2));
        assert_eq!(t2 - t1, Duration::from_millis(1500));
        clock.jump(Duration::from_secs(10));
        assert!(clock.now(Duration::from_secs(2)) > t2);
        assert_eq!(clock.real_for(Duration::from_millis(1500)), Duration::from_secs(1));
    }

    #[test]
    fn a_moment_crash_fires_after_its_sends_to_servers_and_silences_the_node() {
        let world = World::new(1, &[1, 2, 3, 100], &[1, 2, 3], Trace::new(false));
        let mut w = world.lock();
        let window = |moment, after_sends| MomentWindow {
            moment,
            after_sends,
            probability: 1.0,
            down: Duration::from_millis(5),
        };
        w.moment_windows.insert(0, window(Moment::Vote, 1));
        w.moment(1, Moment::Lead); // no window aims at it
        assert!(w.may_send(1, 2));
        w.sent(1, 2);
        assert_eq!(w.leader, Some(1));
        w.moment(2, Moment::Vote);
        assert!(w.may_send(2, 100));
        w.sent(2, 100); // messages to clients do not count
        assert!(w.crash_requests.is_empty());
        assert!(w.may_send(2, 1));
        w.sent(2, 1);
        assert_eq!(w.crash_requests.len(), 1);
        assert_eq!(
            (w.crash_requests[0].node, w.crash_requests[0].kind),
            (2, FaultKind::MomentCrash)
        );
        assert!(
            !w.may_send(2, 3),
            "a node about to crash at its moment sends nothing more"
        );

        // After 0 sends: the first message to a server is never sent.
        w.moment_windows.insert(1, window(Moment::Propose, 0));
        w.moment(3, Moment::Propose);
        assert!(w.may_send(3, 100));
        assert!(!w.may_send(3, 1));
        assert_eq!(w.crash_requests.last().map(|r| r.node), Some(3));
    }

    #[test]
    fn addresses_map_back_to_node_ids() {
        for id in [1, 100, 101, 300, 65_000] {
            assert_eq!(node_of(addr_of(id)), Some(id));
        }
    }
}
