//! Runtime-free tests: several [`Raft`] cores in one thread, with a tiny
//! deterministic shuttle (seeded delivery order, loss, duplication, delay,
//! partitions) and simulated disks (crash keeps the synced records and a
//! random prefix of the unsynced ones). Checkers watch every output.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::membership::{Boot, GENESIS};
use super::*;
use crate::env::{codec, NodeId};

type W = WireOf<Kv>;

const CLIENT_BASE: NodeId = 100;

#[derive(Default)]
struct Disk {
    synced: Vec<Vec<u8>>,
    pending: Vec<Vec<u8>>,
}

struct Slot {
    raft: Option<Raft<Kv>>,
    disk: Disk,
    incarnation: u64,
    restart_at: Duration,
    /// Per-node clock offset: clocks are not comparable across nodes.
    offset: Duration,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Add(u64),
    Read(u64),
}

struct TestClient {
    node: NodeId,
    id: ClientId,
    seq: u64,
    reads: u64,
    pending: Option<(Op, Duration)>,
    target: NodeId,
    next_send: Duration,
}

#[derive(Clone, Copy)]
struct Faults {
    loss: f64,
    dup: f64,
    max_delay_ms: u64,
    crash_per_s: f64,
    partition_per_s: f64,
    /// Crash or isolate whoever leads (Jepsen's "kill the primary").
    leader_kill_per_s: f64,
}

const CALM: Faults = Faults {
    loss: 0.0,
    dup: 0.0,
    max_delay_ms: 5,
    crash_per_s: 0.0,
    partition_per_s: 0.0,
    leader_kill_per_s: 0.0,
};

struct Cluster {
    rng: ChaCha8Rng,
    now: Duration,
    members: Vec<NodeId>,
    config: Config,
    slots: BTreeMap<NodeId, Slot>,
    net: Vec<(Duration, NodeId, NodeId, W)>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    faults: Faults,
    clients: Vec<TestClient>,
    // Checker state.
    leaders: BTreeMap<Term, NodeId>,
    committed: BTreeMap<Index, (Term, Vec<u8>)>,
    last_applied: BTreeMap<NodeId, Index>,
    /// (client, seq) → value returned by the acked Add.
    acked_adds: BTreeMap<(ClientId, u64), u64>,
    /// Adds invoked so far (an upper bound for any read).
    adds_invoked: u64,
    /// Highest Add result acknowledged so far (a lower bound for reads).
    max_acked: u64,
    /// Reads: (lower bound at invoke, value, upper bound at completion).
    reads_done: Vec<(u64, u64, u64, u64)>,
    restored: usize,
    /// `InstallSnapshot` messages sent (each one chunk).
    snapshot_chunks: usize,
    crashes: usize,
    /// Clients finish what they started but start nothing new.
    stop_clients: bool,
    violation: Option<String>,
}

impl Cluster {
    fn new(seed: u64, n: u32, clients: u32, config: Config, faults: Faults) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let members: Vec<NodeId> = (1..=n).collect();
        let mut slots = BTreeMap::new();
        for &id in &members {
            let offset = Duration::from_millis(rng.gen_range(0..100_000));
            slots.insert(
                id,
                Slot {
                    raft: None,
                    disk: Disk::default(),
                    incarnation: 0,
                    restart_at: Duration::ZERO,
                    offset,
                },
            );
        }
        let clients = (0..clients)
            .map(|i| TestClient {
                node: CLIENT_BASE + i,
                id: rng.gen(),
                seq: 0,
                reads: 0,
                pending: None,
                target: members[rng.gen_range(0..members.len())],
                next_send: Duration::from_millis(rng.gen_range(0..50)),
            })
            .collect();
        let mut c = Cluster {
            rng,
            now: Duration::ZERO,
            members,
            config,
            slots,
            net: Vec::new(),
            blocked: BTreeSet::new(),
            faults,
            clients,
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            last_applied: BTreeMap::new(),
            acked_adds: BTreeMap::new(),
            adds_invoked: 0,
            max_acked: 0,
            reads_done: Vec::new(),
            restored: 0,
            snapshot_chunks: 0,
            crashes: 0,
            stop_clients: false,
            violation: None,
        };
        for id in c.members.clone() {
            c.start(id);
        }
        c
    }

    fn node_now(&self, id: NodeId) -> Duration {
        self.now + self.slots[&id].offset
    }

    fn start(&mut self, id: NodeId) {
        let now = self.node_now(id);
        let slot = self.slots.get_mut(&id).unwrap();
        slot.incarnation += 1;
        let rng = ChaCha8Rng::seed_from_u64(u64::from(id) << 32 | slot.incarnation);
        let raft = Raft::<Kv>::recover(
            id,
            &self.members,
            Boot::Genesis(self.members.to_vec()),
            self.config.clone(),
            rng,
            &slot.disk.synced,
            now,
        )
        .expect("recovery from synced records");
        self.last_applied.insert(id, raft.applied_index());
        slot.raft = Some(raft);
    }

    fn crash(&mut self, id: NodeId) {
        let keep;
        {
            let pending = self.slots[&id].disk.pending.len();
            keep = self.rng.gen_range(0..=pending);
        }
        let restart = self.now + Duration::from_millis(self.rng.gen_range(10..600));
        let slot = self.slots.get_mut(&id).unwrap();
        slot.raft = None;
        let kept: Vec<_> = slot.disk.pending.drain(..).take(keep).collect();
        slot.disk.synced.extend(kept);
        slot.restart_at = restart;
        self.crashes += 1;
    }

    fn fail(&mut self, why: String) {
        if self.violation.is_none() {
            self.violation = Some(format!("t={:?}: {why}", self.now));
        }
    }

    /// Carries out a replica's output the way the async shell does.
    fn execute(&mut self, id: NodeId, out: Output<Kv>) {
        let slot = self.slots.get_mut(&id).unwrap();
        if let Some(records) = out.rewrite {
            slot.disk.synced = records;
            slot.disk.pending.clear();
        } else {
            slot.disk.pending.extend(out.append);
            if out.sync {
                let pending = std::mem::take(&mut slot.disk.pending);
                slot.disk.synced.extend(pending);
            }
        }
        for event in out.events {
            self.observe(id, event);
        }
        for (to, msg) in out.messages {
            self.post(id, to, msg);
        }
    }

    fn observe(&mut self, id: NodeId, event: Event) {
        match event {
            Event::Leader { term } => {
                if let Some(&other) = self.leaders.get(&term) {
                    if other != id {
                        self.fail(format!("two leaders in term {term}: {other} and {id}"));
                    }
                }
                self.leaders.insert(term, id);
            }
            Event::Applied { index, term, payload } => {
                let last = self.last_applied[&id];
                if index != last + 1 {
                    self.fail(format!("node {id} applied {index} after {last}"));
                }
                self.last_applied.insert(id, index);
                match self.committed.get(&index) {
                    Some(prev) if *prev != (term, payload.clone()) => self.fail(format!(
                        "committed entry {index} changed: term {} then term {term} (node {id})",
                        prev.0
                    )),
                    Some(_) => {}
                    None => {
                        self.committed.insert(index, (term, payload));
                    }
                }
            }
            Event::Restored { index, term } => {
                self.restored += 1;
                match self.committed.get(&index) {
                    Some((t, _)) if *t != term => {
                        self.fail(format!("snapshot at {index} has term {term}, committed {t}"))
                    }
                    _ => {}
                }
                self.last_applied.insert(id, index);
            }
            Event::Contradicted { from, index } => {
                self.fail(format!("node {from} contradicts node {id}'s committed entry {index}"))
            }
            Event::Compacted { .. }
            | Event::ReadArrived { .. }
            | Event::ReadServed { .. }
            | Event::Voted { .. }
            | Event::Proposed { .. }
            | Event::Committed { .. } => {}
        }
    }

    fn post(&mut self, from: NodeId, to: NodeId, msg: W) {
        let size = crate::env::codec::encode(&msg).expect("encodable").len();
        assert!(size <= crate::env::MAX_MESSAGE_BYTES, "a {size}-byte message");
        if matches!(msg, Wire::Raft(Message::InstallSnapshot { .. })) {
            self.snapshot_chunks += 1;
        }
        if self.rng.gen_bool(self.faults.loss) {
            return;
        }
        let copies = if self.rng.gen_bool(self.faults.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = Duration::from_millis(self.rng.gen_range(1..=self.faults.max_delay_ms));
            self.net.push((self.now + delay, from, to, msg.clone()));
        }
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, msg: W) {
        if self.blocked.contains(&(from, to)) {
            return;
        }
        if to >= CLIENT_BASE {
            self.client_receive(to, msg);
            return;
        }
        let now = self.node_now(to);
        let Some(raft) = self.slots.get_mut(&to).unwrap().raft.as_mut() else {
            return;
        };
        let out = raft.on_message(now, from, msg);
        self.execute(to, out);
    }

    fn client_receive(&mut self, node: NodeId, msg: W) {
        let Wire::Response(Response { id, outcome, .. }) = msg else {
            return;
        };
        let ci = (node - CLIENT_BASE) as usize;
        let Some(client) = self.clients.get(ci) else {
            return;
        };
        let (op, invoked_lower) = match client.pending {
            Some(p) => p,
            None => return,
        };
        let matches = matches!((op, id), (Op::Add(s), RequestId::Command(r)) if s == r)
            || matches!((op, id), (Op::Read(s), RequestId::Read(r)) if s == r);
        if !matches {
            return;
        }
        match outcome {
            Outcome::Done(output) => {
                let value = match output {
                    KvOutput::Value(v) => v.unwrap_or(0),
                    other => panic!("unexpected output {other:?}"),
                };
                let client = self.clients[ci].id;
                match op {
                    Op::Add(seq) => {
                        if let Some(prev) = self.acked_adds.insert((client, seq), value) {
                            if prev != value {
                                self.fail(format!("add ({client},{seq}) answered {prev} then {value}"));
                            }
                        }
                        self.max_acked = self.max_acked.max(value);
                    }
                    Op::Read(_) => {
                        let lower = invoked_lower.as_nanos() as u64;
                        self.reads_done
                            .push((lower, value, self.adds_invoked, self.now.as_nanos() as u64));
                    }
                }
                let c = &mut self.clients[ci];
                c.pending = None;
                c.next_send = self.now + Duration::from_millis(self.rng.gen_range(0..20));
            }
            Outcome::NotLeader(hint) => {
                let members = self.members.len();
                let c = &mut self.clients[ci];
                c.target = match hint {
                    Some(h) => h,
                    None => self.members[self.rng.gen_range(0..members)],
                };
                c.next_send = self.now + Duration::from_millis(10);
            }
            Outcome::Rejected(r) => panic!("rejected: {r:?}"),
            Outcome::Configured(c) => panic!("a command answered with a configuration: {c:?}"),
        }
    }

    fn drive_clients(&mut self) {
        for ci in 0..self.clients.len() {
            if self.clients[ci].next_send > self.now {
                continue;
            }
            if self.clients[ci].pending.is_none() {
                if self.stop_clients {
                    continue;
                }
                let read = self.rng.gen_bool(0.3);
                let c = &mut self.clients[ci];
                if read {
                    c.reads += 1;
                    // Lower bound for the read: every Add acked before now.
                    c.pending = Some((Op::Read(c.reads), Duration::from_nanos(self.max_acked)));
                } else {
                    c.seq += 1;
                    c.pending = Some((Op::Add(c.seq), Duration::ZERO));
                    self.adds_invoked += 1;
                }
            }
            let c = &self.clients[ci];
            let (op, _) = c.pending.unwrap();
            let msg: W = match op {
                Op::Add(seq) => Wire::Command {
                    client: c.id,
                    seq,
                    command: KvCommand::Add {
                        key: "x".into(),
                        delta: 1,
                    },
                },
                Op::Read(id) => Wire::Read {
                    client: c.id,
                    id,
                    query: KvQuery::Get { key: "x".into() },
                },
            };
            let (node, target) = (c.node, c.target);
            self.post(node, target, msg);
            let retry = Duration::from_millis(self.rng.gen_range(100..300));
            let members = self.members.len();
            let next_target = self.members[self.rng.gen_range(0..members)];
            let c = &mut self.clients[ci];
            c.next_send = self.now + retry;
            // If this attempt gets no answer, the retry goes elsewhere.
            c.target = next_target;
        }
    }

    fn nemesis(&mut self) {
        let per_ms = |rate: f64| rate / 1000.0;
        if self.faults.leader_kill_per_s > 0.0 && self.rng.gen_bool(per_ms(self.faults.leader_kill_per_s)) {
            if let Some(leader) = self.leader() {
                if self.rng.gen_bool(0.5) {
                    self.crash(leader);
                } else {
                    self.blocked.clear();
                    for &m in &self.members {
                        if m != leader {
                            self.blocked.insert((m, leader));
                            self.blocked.insert((leader, m));
                        }
                    }
                }
            }
        }
        if self.faults.crash_per_s > 0.0 && self.rng.gen_bool(per_ms(self.faults.crash_per_s)) {
            let id = self.members[self.rng.gen_range(0..self.members.len())];
            if self.slots[&id].raft.is_some() {
                self.crash(id);
            }
        }
        if self.faults.partition_per_s > 0.0 && self.rng.gen_bool(per_ms(self.faults.partition_per_s)) {
            self.blocked.clear();
            if self.rng.gen_bool(0.7) {
                // Random halves (sometimes one-way).
                let side: Vec<bool> = self.members.iter().map(|_| self.rng.gen_bool(0.5)).collect();
                let one_way = self.rng.gen_bool(0.2);
                for (i, &a) in self.members.iter().enumerate() {
                    for (j, &b) in self.members.iter().enumerate() {
                        if side[i] != side[j] && (!one_way || side[i]) {
                            self.blocked.insert((a, b));
                        }
                    }
                }
            }
        }
    }

    fn step(&mut self) {
        self.now += Duration::from_millis(1);
        // Restarts.
        for id in self.members.clone() {
            let slot = &self.slots[&id];
            if slot.raft.is_none() && slot.restart_at <= self.now {
                self.start(id);
            }
        }
        // Deliver due messages in a seeded order.
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            if self.net[i].0 <= self.now {
                due.push(self.net.swap_remove(i));
            } else {
                i += 1;
            }
        }
        while !due.is_empty() {
            let k = self.rng.gen_range(0..due.len());
            let (_, from, to, msg) = due.swap_remove(k);
            self.deliver(from, to, msg);
        }
        // Timers.
        for id in self.members.clone() {
            let now = self.node_now(id);
            let slot = self.slots.get_mut(&id).unwrap();
            if let Some(raft) = slot.raft.as_mut() {
                if raft.next_deadline() <= now {
                    let out = raft.on_tick(now);
                    self.execute(id, out);
                }
            }
        }
        self.drive_clients();
        self.nemesis();
    }

    fn check_log_matching(&mut self) {
        let live: Vec<&Raft<Kv>> = self.slots.values().filter_map(|s| s.raft.as_ref()).collect();
        for (ai, a) in live.iter().enumerate() {
            for b in &live[ai + 1..] {
                let lo = a.snapshot_index().max(b.snapshot_index()) + 1;
                let hi = a.last_index().min(b.last_index());
                let mut last_same_term = None;
                for i in lo..=hi {
                    if a.term_at(i) == b.term_at(i) {
                        last_same_term = Some(i);
                    }
                }
                if let Some(top) = last_same_term {
                    for i in lo..=top {
                        if a.entry(i) != b.entry(i) {
                            let msg = format!(
                                "log matching: nodes {} and {} agree on the term at {top} but differ at {i}",
                                a.id(),
                                b.id()
                            );
                            self.fail(msg);
                            return;
                        }
                    }
                }
            }
        }
    }

    fn run_ms(&mut self, ms: u64) {
        for t in 0..ms {
            self.step();
            if t % 50 == 0 {
                self.check_log_matching();
            }
            if self.net.len() > 50_000 {
                self.fail(format!("message storm: {} messages in flight", self.net.len()));
            }
            if self.violation.is_some() {
                return;
            }
        }
    }

    fn heal(&mut self) {
        self.faults = CALM;
        self.blocked.clear();
        for id in self.members.clone() {
            if self.slots[&id].raft.is_none() {
                self.start(id);
            }
        }
    }

    fn leader(&self) -> Option<NodeId> {
        let mut best: Option<(Term, NodeId)> = None;
        for (&id, slot) in &self.slots {
            if let Some(r) = &slot.raft {
                if r.role() == Role::Leader && best.is_none_or(|(t, _)| r.term() > t) {
                    best = Some((r.term(), id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    fn raft(&self, id: NodeId) -> &Raft<Kv> {
        self.slots[&id].raft.as_ref().unwrap()
    }

    /// History checks: exactly-once adds and linearizable reads of the
    /// counter (each Add increments by one and returns the new value).
    fn check_history(&mut self) {
        let mut seen = BTreeMap::new();
        for (&(c, s), &v) in &self.acked_adds {
            if let Some(other) = seen.insert(v, (c, s)) {
                let msg = format!("adds {other:?} and {:?} both returned {v}", (c, s));
                self.fail(msg);
                return;
            }
        }
        for &(lower, value, upper, at) in &self.reads_done.clone() {
            if value < lower || value > upper {
                self.fail(format!("read at {at}ns returned {value}, outside [{lower}, {upper}]"));
                return;
            }
        }
    }

    /// Liveness after healing, and agreement of every replica.
    fn check_converged(&mut self) {
        let Some(leader) = self.leader() else {
            self.fail("no leader after healing".into());
            return;
        };
        if self.clients.iter().any(|c| c.pending.is_some()) {
            self.fail("a client request is still pending after healing".into());
            return;
        }
        let commit = self.raft(leader).commit_index();
        let value = self.raft(leader).state_machine().get("x").unwrap_or(0);
        for id in self.members.clone() {
            let r = self.raft(id);
            if r.applied_index() != commit || r.state_machine().get("x").unwrap_or(0) != value {
                let msg = format!(
                    "node {id} applied {} (x={:?}), leader {leader} committed {commit} (x={value})",
                    r.applied_index(),
                    r.state_machine().get("x")
                );
                self.fail(msg);
                return;
            }
        }
        // Exactly once: the counter equals the number of distinct commands
        // ever committed.
        let mut distinct = BTreeSet::new();
        for (_, payload) in self.committed.values() {
            if let Ok(Payload::Command { client, seq, .. }) = crate::env::codec::decode::<Payload<KvCommand>>(payload) {
                distinct.insert((client, seq));
            }
        }
        if value != distinct.len() as u64 {
            self.fail(format!(
                "counter is {value} but {} distinct adds committed",
                distinct.len()
            ));
        }
    }
}

/// Swarm testing: each seed picks how hard each fault kind hits.
fn chaos(seed: u64) -> Faults {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_f00d);
    let pick = |rng: &mut ChaCha8Rng, options: &[f64]| options[rng.gen_range(0..options.len())];
    Faults {
        loss: pick(&mut rng, &[0.0, 0.02, 0.1]),
        dup: pick(&mut rng, &[0.0, 0.05]),
        max_delay_ms: [5, 30, 100][rng.gen_range(0..3)],
        crash_per_s: pick(&mut rng, &[0.5, 2.0, 8.0]),
        partition_per_s: pick(&mut rng, &[0.0, 1.0, 4.0]),
        leader_kill_per_s: pick(&mut rng, &[0.0, 2.0, 6.0]),
    }
}

fn test_config(bug: Option<LogBug>) -> Config {
    Config {
        snapshot_every: 32,
        max_entries_per_append: 8,
        paranoid: true,
        bug,
        ..Config::default()
    }
}

/// For tests that script an election message by message: replicas
/// campaign at once, without a pre-vote round.
fn scripted_config(bug: Option<LogBug>) -> Config {
    Config {
        pre_vote: false,
        ..test_config(bug)
    }
}

struct RunStats {
    restored: usize,
    crashes: usize,
    committed: usize,
}

/// One seeded chaos run: faults, then heal, then liveness and history
/// checks. `Err` is a violation (or a replica's assertion).
fn chaos_run(seed: u64, n: u32, bug: Option<LogBug>) -> Result<RunStats, String> {
    let result = std::panic::catch_unwind(|| {
        let mut config = test_config(bug);
        if seed % 3 == 0 {
            // Swarm: a narrow timeout range makes split votes common.
            config.election_timeout_max = config.election_timeout_min + Duration::from_millis(20);
        }
        let mut c = Cluster::new(seed, n, 4, config, chaos(seed));
        c.run_ms(6_000);
        if c.violation.is_none() {
            c.heal();
            // Liveness bound: 3 s of calm (election ≤ ~0.6 s with retries,
            // then client retries every ≤ 0.3 s).
            c.run_ms(3_000);
            // Clients finish what they started, then everything settles.
            c.stop_clients = true;
            c.run_ms(1_000);
        }
        if c.violation.is_none() {
            c.check_history();
        }
        if c.violation.is_none() {
            c.check_converged();
        }
        match c.violation {
            Some(v) => Err(v),
            None => Ok(RunStats {
                restored: c.restored,
                crashes: c.crashes,
                committed: c.committed.len(),
            }),
        }
    });
    match result {
        Ok(r) => r,
        Err(panic) => Err(format!(
            "replica panicked: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}

#[test]
#[should_panic(expected = "the election timeout window must be at least a tenth of its minimum")]
fn an_election_window_too_narrow_to_break_split_votes_is_refused() {
    // 5 replicas with a 1 ms window never elected a leader in the
    // simulator (log-5 seeds 100 and 153, drawn timers 223-224 ms and
    // 123-124 ms): their timers fired together election after election.
    let narrow = Config {
        election_timeout_min: Duration::from_millis(150),
        election_timeout_max: Duration::from_millis(151),
        heartbeat_interval: Duration::from_millis(30),
        ..Config::default()
    };
    let wide_enough = Config {
        election_timeout_max: Duration::from_millis(165),
        ..narrow.clone()
    };
    wide_enough.validate();
    narrow.validate();
}

#[test]
fn single_node_commits_and_reads() {
    let mut c = Cluster::new(1, 1, 2, test_config(None), CALM);
    c.run_ms(2_000);
    assert_eq!(c.violation, None);
    assert_eq!(c.leader(), Some(1));
    assert!(c.acked_adds.len() > 10);
    assert!(!c.reads_done.is_empty());
    c.check_history();
    assert_eq!(c.violation, None);
}

/// The command size limit is inclusive: a command of exactly
/// `MAX_COMMAND_BYTES` is taken, one byte more is refused.
#[test]
fn a_command_of_the_largest_size_is_taken_and_one_byte_more_refused() {
    let mut c = Cluster::new(1, 1, 0, test_config(None), CALM);
    c.run_ms(500);
    assert_eq!(c.leader(), Some(1));
    let put = |len: usize| KvCommand::Put {
        key: "k".repeat(len),
        value: 0,
    };
    let len = (0..MAX_COMMAND_BYTES)
        .find(|&len| crate::env::codec::encode(&put(len)).unwrap().len() == MAX_COMMAND_BYTES)
        .expect("a key length that hits the limit");
    for (seq, len, refused) in [(1, len, false), (2, len + 1, true)] {
        let command = W::Command {
            client: 9,
            seq,
            command: put(len),
        };
        let replies = c.drive(1, |r, now| r.on_message(now, 50, command));
        assert_eq!(
            format!("{replies:?}").contains("TooLarge"),
            refused,
            "{len} bytes of key"
        );
    }
}

#[test]
fn a_candidate_wakes_to_resend_its_vote_requests_before_its_election_times_out() {
    let config = test_config(None);
    let rng = ChaCha8Rng::seed_from_u64(1);
    let mut raft = Raft::<Kv>::recover(
        1,
        &[1, 2, 3],
        Boot::Genesis(vec![1, 2, 3]),
        config.clone(),
        rng,
        &[],
        Duration::ZERO,
    )
    .unwrap();
    let due = raft.next_deadline();
    let out = raft.on_tick(due);
    assert_eq!(raft.role(), Role::PreCandidate);
    assert!(format!("{:?}", out.messages).contains("PreVote"));
    // Pre-vote (and vote) requests lost on the way are sent again a
    // heartbeat later, not an election timeout later.
    assert_eq!(raft.next_deadline(), due + config.heartbeat_interval);
    assert!(config.heartbeat_interval < config.election_timeout_min);
}

#[test]
fn three_nodes_calm_elect_replicate_and_agree() {
    let mut c = Cluster::new(7, 3, 3, test_config(None), CALM);
    c.run_ms(3_000);
    assert_eq!(c.violation, None);
    assert_eq!(c.leaders.len(), 1, "one election suffices when calm");
    assert!(c.acked_adds.len() > 50, "acked {}", c.acked_adds.len());
    c.stop_clients = true;
    c.run_ms(200);
    c.check_history();
    c.check_converged();
    assert_eq!(c.violation, None);
}

#[test]
fn duplicate_command_is_applied_once() {
    let mut c = Cluster::new(3, 3, 0, test_config(None), CALM);
    c.run_ms(1_000);
    let leader = c.leader().expect("leader");
    let cmd: W = Wire::Command {
        client: 42,
        seq: 1,
        command: KvCommand::Add {
            key: "x".into(),
            delta: 1,
        },
    };
    for _ in 0..3 {
        c.post(CLIENT_BASE + 50, leader, cmd.clone());
        c.run_ms(100);
    }
    // A retry of an already applied command, sent after commit.
    c.post(CLIENT_BASE + 50, leader, cmd);
    c.run_ms(100);
    for id in 1..=3 {
        assert_eq!(c.raft(id).state_machine().get("x"), Some(1));
    }
    assert_eq!(c.violation, None);
}

/// Clients can grow a state past the snapshot limit. The replicas then keep
/// serving on their whole log instead of stopping on the same entry
/// (before: an assertion in compaction, on every replica).
#[test]
fn a_state_too_large_to_snapshot_does_not_stop_the_replicas() {
    let config = Config {
        max_snapshot_bytes: 1 << 20,
        ..test_config(None)
    };
    let mut c = Cluster::new(5, 3, 0, config, CALM);
    c.run_ms(1_000);
    put_large_keys(&mut c, 200);
    c.run_ms(1_000);
    assert_eq!(c.violation, None);
    for id in 1..=3 {
        let raft = c.raft(id);
        assert!(
            raft.snapshot_index() + 64 < raft.applied_index(),
            "node {id} kept compacting past the limit"
        );
        assert_eq!(c.raft(id).state_machine().get(&large_key(199)), Some(199), "node {id}");
    }
}

/// A snapshot larger than a message travels in chunks, each sent once
/// the follower acknowledged the last: a follower cut off while the leader
/// compacted 2 MiB of state catches up by installing it, under message
/// loss and duplication (a lost chunk is sent again at a heartbeat, a
/// duplicate is ignored).
#[test]
fn a_snapshot_larger_than_a_message_installs_in_chunks() {
    let config = Config {
        snapshot_chunk_bytes: 64 << 10,
        ..test_config(None)
    };
    let lossy = Faults {
        loss: 0.05,
        dup: 0.05,
        ..CALM
    };
    let mut c = Cluster::new(5, 3, 0, config, lossy);
    c.run_ms(1_000);
    let leader = c.leader().expect("leader");
    let lagger = c.members.iter().copied().find(|&m| m != leader).unwrap();
    for &m in &c.members.clone() {
        if m != lagger {
            c.blocked.insert((m, lagger));
            c.blocked.insert((lagger, m));
        }
    }
    put_large_keys(&mut c, 300);
    c.run_ms(1_000);
    let leader = c.leader().expect("leader");
    let ahead = c.raft(leader).snapshot_index();
    assert!(
        ahead > c.raft(lagger).last_index(),
        "the leader compacted past the lagger"
    );
    let (restored, chunks) = (c.restored, c.snapshot_chunks);
    c.blocked.clear();
    c.run_ms(3_000);
    assert_eq!(c.violation, None);
    assert!(c.restored > restored, "the lagger installed the snapshot");
    assert!(c.raft(lagger).applied_index() >= ahead);
    assert_eq!(c.raft(lagger).state_machine().get(&large_key(299)), Some(299));
    let sent = c.snapshot_chunks - chunks;
    let size = c.raft(leader).snapshot_bytes();
    assert!(size > crate::env::MAX_MESSAGE_BYTES, "a {size}-byte snapshot");
    assert!(
        sent >= size.div_ceil(64 << 10),
        "{size} bytes in 64 KiB chunks, {sent} sent"
    );
    // The installed snapshot is on the lagger's disk in parts of a chunk
    // each, and it recovers from them.
    let parts = c.slots[&lagger]
        .disk
        .synced
        .iter()
        .filter(|r| matches!(codec::decode_state(r), Ok(Record::<KvCommand>::SnapshotPart(_))))
        .count();
    assert!(parts > 1, "{parts} parts on disk");
    c.crash(lagger);
    c.run_ms(1_000);
    assert_eq!(c.violation, None);
    assert_eq!(c.raft(lagger).state_machine().get(&large_key(299)), Some(299));
}

/// Key `i` of [`put_large_keys`]: about 7 KiB.
fn large_key(i: u64) -> String {
    format!("{i:07}{}", "k".repeat(7 << 10))
}

/// Puts `n` keys of about 7 KiB through the leader, one every 20 ms.
fn put_large_keys(c: &mut Cluster, n: u64) {
    for i in 0..n {
        let leader = c.leader().expect("leader");
        let cmd: W = Wire::Command {
            client: 7,
            seq: i + 1,
            command: KvCommand::Put {
                key: large_key(i),
                value: i,
            },
        };
        c.post(CLIENT_BASE + 7, leader, cmd);
        c.run_ms(20);
    }
}

#[test]
fn lagging_node_catches_up_from_snapshot() {
    let mut c = Cluster::new(11, 3, 3, test_config(None), CALM);
    c.run_ms(800);
    let leader = c.leader().expect("leader");
    let lagger = c.members.iter().copied().find(|&m| m != leader).unwrap();
    for &m in &c.members.clone() {
        if m != lagger {
            c.blocked.insert((m, lagger));
            c.blocked.insert((lagger, m));
        }
    }
    c.run_ms(3_000);
    assert_eq!(c.violation, None);
    let ahead = c.raft(leader).snapshot_index();
    assert!(ahead > c.raft(lagger).last_index(), "leader compacted past the lagger");
    c.blocked.clear();
    c.run_ms(1_500);
    assert_eq!(c.violation, None);
    assert!(c.restored >= 1, "the lagger installed a snapshot");
    assert!(c.raft(lagger).applied_index() >= ahead);
    c.stop_clients = true;
    c.run_ms(500);
    c.check_converged();
    assert_eq!(c.violation, None);
}

/// A late append whose entries all lie inside the follower's snapshot is
/// acknowledged up to its end, not refused: a refusal would send the
/// leader back over entries (or a snapshot) the follower already has.
#[test]
fn an_append_inside_the_followers_snapshot_is_acknowledged() {
    let mut c = Cluster::new(11, 3, 3, test_config(None), CALM);
    c.run_ms(2_000);
    let leader = c.leader().expect("leader");
    let follower = c.members.iter().copied().find(|&m| m != leader).unwrap();
    let start = c.raft(follower).snapshot_index();
    assert!(start > 2, "the follower compacted");
    let term = c.raft(leader).term();
    // The index the follower acknowledges for an append from the leader.
    let acknowledged = |c: &mut Cluster, prev_index, entries| {
        let append = W::Raft(Message::Append {
            term,
            prev_index,
            prev_term: 0,
            entries,
            commit: 0,
            read_seq: 0,
        });
        let replies = c.drive(follower, |r, now| r.on_message(now, leader, append));
        let W::Raft(Message::AppendReply { success, index, .. }) = to(&replies, leader) else {
            panic!("{replies:?}")
        };
        assert!(success, "{replies:?}");
        index
    };
    let noop = |index, term| Entry {
        index,
        term,
        payload: Payload::Noop,
    };
    assert_eq!(acknowledged(&mut c, 0, vec![noop(1, 1)]), 1);

    // An append that starts inside the snapshot and goes past it: the part
    // past it is taken in the same message, not left for another round.
    let next = c
        .raft(follower)
        .entry(start + 1)
        .cloned()
        .expect("an entry past the snapshot");
    assert!(c.raft(follower).last_index() > start);
    let at_start = noop(start, c.raft(follower).term_at(start).expect("the snapshot's term"));
    assert_eq!(
        acknowledged(&mut c, start - 1, vec![at_start, next]),
        start + 1,
        "acknowledged through the entry past the snapshot"
    );
}

#[test]
fn recovery_rebuilds_exactly_the_synced_state() {
    let mut c = Cluster::new(5, 3, 3, test_config(None), CALM);
    c.run_ms(2_000);
    for id in c.members.clone() {
        let before = c.raft(id);
        let (term, last, snap) = (before.term(), before.last_index(), before.snapshot_index());
        let entries: Vec<_> = (snap + 1..=last).map(|i| before.entry(i).cloned()).collect();
        // The correct protocol syncs before every send, so nothing is pending.
        assert!(c.slots[&id].disk.pending.is_empty());
        c.crash(id);
        c.start(id);
        let after = c.raft(id);
        assert_eq!(
            (after.term(), after.last_index(), after.snapshot_index()),
            (term, last, snap)
        );
        let again: Vec<_> = (snap + 1..=last).map(|i| after.entry(i).cloned()).collect();
        assert_eq!(entries, again);
    }
}

#[test]
fn chaos_sweep_three_and_five_nodes() {
    let mut restored = 0;
    let mut crashes = 0;
    let mut committed = 0;
    for seed in 0..100 {
        let n = if seed % 2 == 0 { 3 } else { 5 };
        match chaos_run(seed, n, None) {
            Ok(s) => {
                restored += s.restored;
                crashes += s.crashes;
                committed += s.committed;
            }
            Err(v) => panic!("seed {seed} ({n} nodes): {v}"),
        }
    }
    assert!(
        crashes > 0 && restored > 0,
        "faults fired: {crashes} crashes, {restored} snapshot installs"
    );
    assert!(committed > 1_000, "progress under faults: {committed} entries");
}

fn first_catch(bug: LogBug, seeds: std::ops::Range<u64>) -> Option<(u64, String)> {
    for seed in seeds {
        let n = if seed % 2 == 0 { 3 } else { 5 };
        if let Err(v) = chaos_run(seed, n, Some(bug)) {
            return Some((seed, v));
        }
    }
    None
}

#[test]
fn random_sweep_catches_step_down_and_ack_bugs() {
    for bug in [LogBug::NoStepDownOnHigherTerm, LogBug::AckBeforeSync] {
        let caught = first_catch(bug, 0..60);
        assert!(caught.is_some(), "{bug:?} not caught in 60 seeds");
        let (seed, v) = caught.unwrap();
        eprintln!("{bug:?}: caught at seed {seed}: {v}");
    }
}

impl Cluster {
    /// Runs one handler on `id` by hand; persists and observes like
    /// `execute`, but returns the messages instead of posting them.
    fn drive(&mut self, id: NodeId, handler: impl FnOnce(&mut Raft<Kv>, Duration) -> Output<Kv>) -> Vec<(NodeId, W)> {
        let now = self.node_now(id);
        let raft = self.slots.get_mut(&id).unwrap().raft.as_mut().unwrap();
        let mut out = handler(raft, now);
        let messages = std::mem::take(&mut out.messages);
        self.execute(id, out);
        messages
    }

    /// Crash losing every unsynced record, then restart at once.
    fn crash_clean_and_restart(&mut self, id: NodeId) {
        let slot = self.slots.get_mut(&id).unwrap();
        slot.raft = None;
        slot.disk.pending.clear();
        self.start(id);
    }
}

fn to(messages: &[(NodeId, W)], dest: NodeId) -> W {
    messages
        .iter()
        .find(|(d, _)| *d == dest)
        .map(|(_, m)| m.clone())
        .expect("a message to dest")
}

/// The voter crashes right after granting its vote; a competing candidate
/// of the same term then asks it.
fn vote_then_crash(bug: Option<LogBug>) -> Option<String> {
    let mut c = Cluster::new(1, 3, 0, scripted_config(bug), CALM);
    c.now = Duration::from_secs(10); // every election timer has expired
    let from1 = c.drive(1, |r, now| r.on_tick(now));
    let from2 = c.drive(2, |r, now| r.on_tick(now));
    assert_eq!((c.raft(1).role(), c.raft(2).role()), (Role::Candidate, Role::Candidate));
    assert_eq!(c.raft(1).term(), c.raft(2).term(), "a split election");
    let vote = c.drive(3, |r, now| r.on_message(now, 1, to(&from1, 3)));
    c.drive(1, |r, now| r.on_message(now, 3, to(&vote, 1)));
    assert_eq!(c.raft(1).role(), Role::Leader);
    c.crash_clean_and_restart(3);
    let vote = c.drive(3, |r, now| r.on_message(now, 2, to(&from2, 3)));
    c.drive(2, |r, now| r.on_message(now, 3, to(&vote, 2)));
    c.violation
}

/// A calm leader whose every round was acknowledged takes a read; whether
/// it answers at once, before any round sent after the read came back.
fn read_answered_without_a_new_round(bug: Option<LogBug>) -> bool {
    let mut c = Cluster::new(4, 3, 0, scripted_config(bug), CALM);
    c.run_ms(1_000);
    let leader = c.leader().expect("a leader");
    let read: W = Wire::Read {
        client: 9,
        id: 1,
        query: KvQuery::Get { key: "x".into() },
    };
    let client = CLIENT_BASE + 50;
    let sent = c.drive(leader, |r, now| r.on_message(now, client, read));
    sent.iter().any(|(to, _)| *to == client)
}

/// The leader may have been deposed while it stalled after its last
/// round: only a round sent after the read arrived confirms it still leads.
#[test]
fn a_read_waits_for_a_round_sent_after_it_arrived() {
    assert!(!read_answered_without_a_new_round(None));
    assert!(read_answered_without_a_new_round(Some(LogBug::ReadCountsEarlierRound)));
}

#[test]
fn vote_not_synced_is_caught_by_crash_after_vote() {
    assert_eq!(vote_then_crash(None), None);
    let v = vote_then_crash(Some(LogBug::VoteNotSynced)).expect("violation");
    assert!(v.contains("two leaders in term"), "{v}");
}

/// Raft's Figure 8, played with partitions on five replicas: an entry of
/// an earlier term reaches a majority under a later leader, which commits
/// it by counting; a replica holding a conflicting entry of a higher term
/// then wins an election and overwrites it.
fn figure_8(bug: Option<LogBug>) -> Option<String> {
    let mut c = Cluster::new(3, 5, 0, scripted_config(bug), CALM);
    let all = c.members.clone();
    let isolate = |c: &mut Cluster, groups: &[&[NodeId]]| {
        c.blocked.clear();
        for &a in &all {
            for &b in &all {
                let together = groups.iter().any(|g| g.contains(&a) && g.contains(&b));
                if a != b && !together {
                    c.blocked.insert((a, b));
                }
            }
        }
    };
    let leader_among = |c: &Cluster, group: &[NodeId]| -> Option<NodeId> {
        group
            .iter()
            .copied()
            .filter(|&m| c.raft(m).role() == Role::Leader)
            .max_by_key(|&m| c.raft(m).term())
    };
    let mut seq = 0;
    let mut submit = |c: &mut Cluster, node: NodeId| {
        seq += 1;
        let cmd: W = Wire::Command {
            client: 9,
            seq,
            command: KvCommand::Add {
                key: "x".into(),
                delta: seq,
            },
        };
        c.post(CLIENT_BASE + 50, node, cmd);
    };
    c.run_ms(1_000);
    let a = c.leader().expect("a first leader");
    let b = *all.iter().find(|&&m| m != a).unwrap();
    let rest: Vec<NodeId> = all.iter().copied().filter(|&m| m != a && m != b).collect();
    // (a) A leads {A, B}; its entry X reaches B only.
    isolate(&mut c, &[&[a, b], &rest]);
    submit(&mut c, a);
    c.run_ms(1_000);
    // (b) The other three elect S; S alone takes entry Y at the same index.
    let s = leader_among(&c, &rest).expect("majority side elects");
    let others: Vec<NodeId> = rest.iter().copied().filter(|&m| m != s).collect();
    isolate(&mut c, &[&[a, b], &[s], &others]);
    submit(&mut c, s);
    c.run_ms(300);
    // (c) A or B leads {A, B, C} and brings X to a majority.
    let cc = others[0];
    isolate(&mut c, &[&[a, b, cc], &[s], &[others[1]]]);
    c.run_ms(2_000);
    // (d) The leader of (c) is cut off; S wins with C, D, E.
    isolate(&mut c, &[&[a], &[b], &[s, cc, others[1]]]);
    c.run_ms(2_000);
    c.violation
}

/// A checker's violation or a replica's failed assertion.
fn violation_or_panic(f: impl FnOnce() -> Option<String> + std::panic::UnwindSafe) -> Option<String> {
    match std::panic::catch_unwind(f) {
        Ok(v) => v,
        Err(panic) => Some(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        ),
    }
}

#[test]
fn figure_8_is_caught() {
    assert_eq!(figure_8(None), None);
    let v = violation_or_panic(|| figure_8(Some(LogBug::CommitEarlierTermByCounting))).expect("violation");
    // The follower refuses to truncate its committed entry (an assertion in
    // the core), or the checker sees the entry change.
    assert!(v.contains("committed entry"), "{v}");
}

#[test]
#[ignore]
fn bug_catch_rates() {
    for bug in LogBug::ALL {
        let mut caught = 0;
        let mut first = None;
        for seed in 0..200 {
            let n = if seed % 2 == 0 { 3 } else { 5 };
            if let Err(v) = chaos_run(seed, n, Some(bug)) {
                caught += 1;
                first.get_or_insert((seed, v));
            }
        }
        eprintln!("{bug:?}: {caught}/200, first {first:?}");
    }
}

/// Cuts `node` off from every other member, both ways.
fn isolate(c: &mut Cluster, node: NodeId) {
    c.blocked.clear();
    for &m in &c.members.clone() {
        if m != node {
            c.blocked.insert((m, node));
            c.blocked.insert((node, m));
        }
    }
}

/// A follower cut off for many election timeouts asks for pre-votes in
/// vain and keeps its term; when it returns, the leader keeps leading in
/// its term. Without pre-votes its term races ahead and its return deposes
/// the leader.
#[test]
fn a_returning_follower_does_not_depose_the_leader() {
    for pre_vote in [true, false] {
        let config = Config {
            pre_vote,
            ..test_config(None)
        };
        let mut c = Cluster::new(5, 3, 0, config, CALM);
        c.run_ms(1_000);
        let leader = c.leader().expect("a leader");
        let term = c.raft(leader).term();
        let follower = *c.members.iter().find(|&&m| m != leader).unwrap();
        isolate(&mut c, follower);
        c.run_ms(3_000);
        let isolated_term = c.raft(follower).term();
        c.heal();
        c.run_ms(1_000);
        assert_eq!(c.violation, None);
        if pre_vote {
            assert_eq!(isolated_term, term, "a pre-candidate keeps its term");
            assert_eq!(c.leader(), Some(leader), "the leader was not deposed");
            assert_eq!(c.raft(leader).term(), term);
        } else {
            assert!(isolated_term > term + 3, "campaigns raise the term: {isolated_term}");
            assert!(c.raft(leader).term() > term, "the return forced a new election");
        }
    }
}

/// A pre-vote changes nothing at the voter: not its term, not its vote,
/// not its election timer; a refusal carries the voter's own term.
#[test]
fn a_pre_vote_changes_nothing_at_the_voter() {
    let config = test_config(None);
    let rng = ChaCha8Rng::seed_from_u64(3);
    let mut raft = Raft::<Kv>::recover(
        1,
        &[1, 2, 3],
        Boot::Genesis(vec![1, 2, 3]),
        config,
        rng,
        &[],
        Duration::ZERO,
    )
    .unwrap();
    let first = raft.on_messages(Duration::ZERO, std::iter::empty());
    assert_eq!(first.append.len(), 1, "an empty disk gets its identity record first");
    let deadline = raft.next_deadline();
    let ask = |term| {
        Wire::Raft(Message::PreVote {
            term,
            last_index: 0,
            last_term: 0,
        })
    };
    let out = raft.on_message(Duration::from_millis(1), 2, ask(7));
    assert_eq!(
        out.messages,
        vec![(
            2,
            Wire::Raft(Message::PreVoteReply {
                term: 7,
                granted: true,
                incarnation: GENESIS
            })
        )]
    );
    assert!(out.append.is_empty() && !out.sync, "nothing to persist");
    assert_eq!((raft.term(), raft.next_deadline()), (0, deadline));
    // Granting one pre-vote does not stop it granting another.
    let out = raft.on_message(Duration::from_millis(2), 3, ask(7));
    assert_eq!(
        out.messages,
        vec![(
            3,
            Wire::Raft(Message::PreVoteReply {
                term: 7,
                granted: true,
                incarnation: GENESIS
            })
        )]
    );
    // Not above its own term: refused, with its own term.
    let out = raft.on_message(Duration::from_millis(3), 3, ask(0));
    assert_eq!(
        out.messages,
        vec![(
            3,
            Wire::Raft(Message::PreVoteReply {
                term: 0,
                granted: false,
                incarnation: GENESIS,
            })
        )]
    );
}

/// A leader cut off from every follower steps down within a few election
/// timeouts (check-quorum); without check-quorum it goes on leading alone.
#[test]
fn an_isolated_leader_steps_down() {
    for check_quorum in [true, false] {
        let config = Config {
            check_quorum,
            ..test_config(None)
        };
        let mut c = Cluster::new(9, 3, 0, config, CALM);
        c.run_ms(1_000);
        let leader = c.leader().expect("a leader");
        isolate(&mut c, leader);
        c.run_ms(1_000);
        let still_leading = c.raft(leader).role() == Role::Leader;
        assert_eq!(still_leading, !check_quorum, "check_quorum {check_quorum}");
        c.heal();
        c.run_ms(1_000);
        assert_eq!(c.violation, None);
    }
}
