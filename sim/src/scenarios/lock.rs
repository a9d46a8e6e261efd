//! The fenced lock service (`ringfence::lock`) under the full fault mix.
//!
//! Nodes: servers `1..n-1` are lock servers (Raft replicas of the lock
//! machine); server `n` is a [`FencedResource`](ringfence::lock::FencedResource)
//! node holding a counter, so a holder's reads and writes travel the network
//! and can be delayed, duplicated, or outlive its lease. Crashes hit both.
//!
//! Each client, in a loop: (re)opens a session; acquires the lock `counter`
//! (sometimes try-acquire); while its lease is valid does 1–3
//! read-modify-write increments through the resource with its token —
//! checking the lease once before the read, then "working" 20–60 ms, then
//! writing, as a real holder would (a GC pause or a slow network after the
//! check is exactly what fencing exists for); renews when half the lease is
//! used; releases (now and then twice, to test "only the owner releases").
//! One cycle in four *abandons* the lock: the holder keeps working while its
//! lease belief lasts without renewing, then walks away without releasing —
//! a holder that dies; the servers must expire it and grant the next waiter.
//!
//! Invariants on the history (see [`check_lock`]):
//! - `fencing`: in the resource's acceptance order, tokens never decrease;
//! - `lost-increment`: accepted writes strictly increase and every accepted
//!   read sees every earlier accepted write;
//! - `token-order`: an acquire that began after another was granted gets a
//!   higher token;
//! - `release-owner`: a release succeeds only while its token still owns
//!   the lock, and once;
//! - `lease-overlap` (only when every clock stayed within the drift bound
//!   and no lock server's clock jumped): no two clients' believed lease
//!   intervals — from the acquire's success to the last lease check that
//!   passed — overlap in real time;
//! - liveness (the runner): after healing, the probe acquires the lock
//!   within TTL + election time + retries.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use ringfence::env::{Env, NodeId};
use ringfence::history::{EventKind, History, Violation};
use ringfence::lock::resource::{self, ResourceRequest};
use ringfence::lock::{server, ClientConfig, LockClient, LockError, ServerConfig, Token};
use ringfence::log::node::NoProbe;
use serde::{Deserialize, Serialize};

use crate::env::SimEnv;
use crate::scenario::{client_ids, Bug, Client, Params, Scenario, Workload};
use crate::world::{elapsed, World};

/// A client operation as the history records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LockOp {
    /// `token` is `None` on invocation.
    Acquire {
        token: Option<Token>,
    },
    Release {
        token: Token,
    },
    /// A fenced read of the counter; `value` and the resource's acceptance
    /// position `seq` on success.
    Read {
        token: Token,
        value: Option<u64>,
        seq: Option<u64>,
    },
    /// A fenced write of `value`; `seq` on success.
    Write {
        token: Token,
        value: u64,
        seq: Option<u64>,
    },
}

pub const NO_FENCING: Bug = Bug {
    name: "no-fencing",
    about:
        "the resource accepts every token, so a paused or partitioned holder's late write lands after the next holder's",
    caught_by: "fencing",
};
pub const UNSYNCED_TOKEN: Bug = Bug {
    name: "unsynced-token",
    about: "tokens come from the leader's own counter, appended to its disk without sync and not replicated",
    caught_by: "token-order",
};
pub const NO_RECHECK: Bug = Bug {
    name: "no-recheck",
    about: "a queued acquire returns once the holder ahead is gone, without re-checking its own session (which may have expired while queued)",
    caught_by: "lease-overlap",
};
pub const NO_DRIFT_MARGIN: Bug = Bug {
    name: "no-drift-margin",
    about:
        "the client trusts its lease for the full TTL instead of ttl*(1-rho), so a fast server clock expires it first",
    caught_by: "lease-overlap",
};

/// Server lease TTL.
pub const TTL: Duration = Duration::from_millis(1500);
/// ρ, the drift bound clients assume. The nemesis drifts clocks by up to
/// ±20%, so the bound is wide; runs that exceed it are not judged on
/// lease overlap (fencing must still hold).
pub const DRIFT_BOUND: f64 = 0.25;
const LOCK: &str = "counter";

/// Clock rates and jumps seen during the run, sampled from the world.
#[derive(Debug)]
struct ClockWatch {
    last: BTreeMap<NodeId, (Duration, Duration, f64)>,
    max_server_rate: f64,
    min_client_rate: f64,
    server_jumped: bool,
}

impl ClockWatch {
    fn sample(&mut self, world: &World, servers: &[NodeId], clients: &[NodeId]) {
        let real = elapsed();
        let w = world.lock();
        for (&id, is_server) in servers
            .iter()
            .map(|s| (s, true))
            .chain(clients.iter().map(|c| (c, false)))
        {
            let Some(node) = w.nodes.get(&id) else { continue };
            let one = Duration::from_secs(1);
            let rate = one.as_secs_f64() / node.clock.real_for(one).as_secs_f64();
            let local = node.clock.now(real);
            if let Some((r0, l0, rate0)) = self.last.get(&id) {
                let slack = (real - *r0).mul_f64(rate.max(*rate0)) + Duration::from_millis(1);
                if is_server && local.saturating_sub(*l0) > slack {
                    self.server_jumped = true;
                }
            }
            self.last.insert(id, (real, local, rate));
            if is_server {
                self.max_server_rate = self.max_server_rate.max(rate);
            } else {
                self.min_client_rate = self.min_client_rate.min(rate);
            }
        }
    }

    /// Whether the lease arithmetic's assumption held all run.
    fn within_bound(&self) -> bool {
        !self.server_jumped && self.max_server_rate * (1.0 - DRIFT_BOUND) <= self.min_client_rate
    }
}

/// The lock scenario; one instance per run.
pub struct LockScenario {
    bug: Option<&'static str>,
    servers: u32,
    clients: Vec<NodeId>,
    watch: Arc<Mutex<ClockWatch>>,
}

impl LockScenario {
    fn lock_servers(&self) -> Vec<NodeId> {
        (1..self.servers).collect()
    }
    fn resource(&self) -> NodeId {
        self.servers
    }
    fn has(&self, bug: &Bug) -> bool {
        self.bug == Some(bug.name)
    }

    fn client_config(&self) -> ClientConfig {
        ClientConfig {
            ttl: TTL,
            drift_bound: DRIFT_BOUND,
            request_timeout: Duration::from_millis(600),
            no_recheck: self.has(&NO_RECHECK),
            no_drift_margin: self.has(&NO_DRIFT_MARGIN),
        }
    }

    fn server_config(&self) -> ServerConfig {
        ServerConfig {
            log: crate::scenarios::log::sim_config(None),
            ttl: TTL,
            unsynced_token: self.has(&UNSYNCED_TOKEN),
        }
    }

    /// Opens (or reopens) a session, retrying while the run goes on.
    async fn open(lc: &mut LockClient<SimEnv>, fresh: bool) {
        let mut fresh = fresh;
        loop {
            let r = if fresh { lc.reopen().await } else { lc.open().await };
            match r {
                Ok(()) => return,
                Err(_) => fresh = true,
            }
        }
    }
}

/// One fenced resource access, recorded. `None`: outcome unknown.
struct Access<'a> {
    env: &'a SimEnv,
    resource: NodeId,
    req: u64,
}

impl Access<'_> {
    async fn read(&mut self, client: &Client<LockOp>, token: Token) -> Option<Result<u64, ()>> {
        client.invoke(LockOp::Read {
            token,
            value: None,
            seq: None,
        });
        self.req += 1;
        let request = ResourceRequest::Read { req: self.req, token };
        match resource::call(self.env, self.resource, &request, 3, Duration::from_millis(150)).await {
            Some(Ok((value, seq))) => {
                client.ok(LockOp::Read {
                    token,
                    value: Some(value),
                    seq: Some(seq),
                });
                Some(Ok(value))
            }
            Some(Err(_)) => {
                client.fail(LockOp::Read {
                    token,
                    value: None,
                    seq: None,
                });
                Some(Err(()))
            }
            None => {
                client.info(LockOp::Read {
                    token,
                    value: None,
                    seq: None,
                });
                None
            }
        }
    }

    async fn write(&mut self, client: &Client<LockOp>, token: Token, value: u64) -> bool {
        client.invoke(LockOp::Write {
            token,
            value,
            seq: None,
        });
        self.req += 1;
        let request = ResourceRequest::Write {
            req: self.req,
            token,
            value,
        };
        match resource::call(self.env, self.resource, &request, 3, Duration::from_millis(150)).await {
            Some(Ok((_, seq))) => {
                client.ok(LockOp::Write {
                    token,
                    value,
                    seq: Some(seq),
                });
                true
            }
            Some(Err(_)) => {
                client.fail(LockOp::Write {
                    token,
                    value,
                    seq: None,
                });
                false
            }
            None => {
                client.info(LockOp::Write {
                    token,
                    value,
                    seq: None,
                });
                false
            }
        }
    }
}

async fn release(client: &Client<LockOp>, lc: &mut LockClient<SimEnv>, lease: &ringfence::lock::Lease) {
    let token = lease.token;
    client.invoke(LockOp::Release { token });
    match lc.release(lease).await {
        Ok(()) => client.ok(LockOp::Release { token }),
        Err(LockError::Timeout) => client.info(LockOp::Release { token }),
        Err(_) => client.fail(LockOp::Release { token }),
    };
}

impl Scenario for LockScenario {
    type Op = LockOp;

    const NAME: &'static str = "lock";
    const ABOUT: &'static str =
        "fenced lock service on the replicated log: sessions with leases, FIFO waiters, fencing tokens, a fenced counter";
    const BUGS: &'static [Bug] = &[NO_FENCING, UNSYNCED_TOKEN, NO_RECHECK, NO_DRIFT_MARGIN];
    /// Three lock servers and the resource node.
    const SERVERS: u32 = 4;
    const MIN_SERVERS: u32 = 2;
    const WORKLOAD: Workload = Workload { clients: 4, ops: 40 };
    const FAULT_WINDOW: Duration = Duration::from_secs(6);
    /// TTL (an abandoned session expires) + a few election timeouts + the
    /// acquire's retries.
    const LIVENESS_BOUND: Duration = Duration::from_secs(5);
    const DEFAULT_SEEDS: u64 = 100;

    fn new(params: &Params) -> Self {
        LockScenario {
            bug: params.bug.map(|b| b.name),
            servers: params.servers,
            clients: client_ids(params.workload.clients),
            watch: Arc::new(Mutex::new(ClockWatch {
                last: BTreeMap::new(),
                max_server_rate: 1.0,
                min_client_rate: 1.0,
                server_jumped: false,
            })),
        }
    }

    async fn server(self: Arc<Self>, env: SimEnv) {
        if env.id() == self.resource() {
            if let Err(error) = resource::serve(env, self.has(&NO_FENCING)).await {
                tracing::warn!(%error, "resource stopped");
            }
        } else if let Err(error) = server::run(env, self.lock_servers(), self.server_config(), Arc::new(NoProbe)).await
        {
            tracing::warn!(%error, "lock server stopped");
        }
        std::future::pending::<()>().await;
    }

    async fn client(self: Arc<Self>, env: SimEnv, mut client: Client<LockOp>) {
        if client.id == 0 {
            // One sampler per run (clients are never crashed). Rates hold
            // until the next drift fault, so sampling misses little.
            let (watch, world) = (self.watch.clone(), env.world().clone());
            let (servers, clients) = (self.lock_servers(), self.clients.clone());
            env.spawn(async move {
                loop {
                    watch
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .sample(&world, &servers, &clients);
                    madsim::time::sleep(Duration::from_millis(10)).await;
                }
            });
        }
        let mut rng = env.rng();
        let mut lc = LockClient::new(env.clone(), self.lock_servers(), self.client_config());
        let mut access = Access {
            env: &env,
            resource: self.resource(),
            req: 0,
        };
        let mut fresh = false;
        while client.next_op() {
            if !lc.is_valid() {
                Self::open(&mut lc, fresh).await;
            }
            let mode = rng.gen_range(0..4);
            let abandon = mode == 0;
            client.invoke(LockOp::Acquire { token: None });
            let got = if mode == 1 {
                lc.try_acquire(LOCK).await
            } else {
                lc.acquire(LOCK, Duration::from_secs(2)).await
            };
            let lease = match got {
                Ok(lease) if lc.is_valid() => {
                    client.ok(LockOp::Acquire {
                        token: Some(lease.token),
                    });
                    lease
                }
                Ok(_) | Err(LockError::Timeout) => {
                    client.info(LockOp::Acquire { token: None });
                    fresh = true;
                    continue;
                }
                Err(LockError::SessionExpired) => {
                    client.fail(LockOp::Acquire { token: None });
                    fresh = true;
                    continue;
                }
                Err(_) => {
                    client.fail(LockOp::Acquire { token: None });
                    continue;
                }
            };
            let token = lease.token;
            let rounds = if abandon { u32::MAX } else { rng.gen_range(1..=3) };
            for _ in 0..rounds {
                if !abandon && lc.valid_for() < TTL / 2 && lc.keep_alive().await.is_err() {
                    break;
                }
                if abandon && lc.valid_for() < Duration::from_millis(100) {
                    // Use the lease to its last moment, as a holder whose
                    // heartbeats stopped would.
                    env.sleep(lc.valid_for().saturating_sub(Duration::from_millis(2))).await;
                }
                // The lease check: the history's Read invoke marks the last
                // moment this client believed it held the lock.
                if !lc.is_valid() {
                    break;
                }
                let Some(Ok(value)) = access.read(&client, token).await else {
                    break;
                };
                env.sleep(Duration::from_millis(rng.gen_range(20..60))).await;
                if !access.write(&client, token, value + 1).await {
                    break;
                }
            }
            if abandon {
                // Walk away without releasing; a new session next time.
                fresh = true;
                lc = LockClient::new(env.clone(), self.lock_servers(), self.client_config());
                continue;
            }
            release(&client, &mut lc, &lease).await;
            if rng.gen_range(0..6) == 0 {
                release(&client, &mut lc, &lease).await;
            }
        }
        let _ = lc.close().await;
    }

    async fn probe(self: Arc<Self>, env: SimEnv, client: Client<LockOp>) {
        let mut lc = LockClient::new(env.clone(), self.lock_servers(), self.client_config());
        let mut access = Access {
            env: &env,
            resource: self.resource(),
            req: 0,
        };
        loop {
            if !lc.is_valid() {
                Self::open(&mut lc, true).await;
            }
            client.invoke(LockOp::Acquire { token: None });
            match lc.acquire(LOCK, Duration::from_secs(1)).await {
                Ok(lease) if lc.is_valid() => {
                    client.ok(LockOp::Acquire {
                        token: Some(lease.token),
                    });
                    if let Some(Ok(_)) = access.read(&client, lease.token).await {
                        release(&client, &mut lc, &lease).await;
                        return;
                    }
                }
                _ => {
                    client.info(LockOp::Acquire { token: None });
                }
            }
        }
    }

    fn check(&self, history: &History<LockOp>) -> Vec<Violation> {
        let within = self.watch.lock().unwrap_or_else(|e| e.into_inner()).within_bound();
        check_lock(history, within)
    }
}

/// The lock invariants on a history. `leases_judged`: whether the run's
/// clocks stayed within the drift bound (then believed leases must not
/// overlap).
pub fn check_lock(history: &History<LockOp>, leases_judged: bool) -> Vec<Violation> {
    let mut v = Vec::new();
    check_resource(history, &mut v);
    check_tokens(history, &mut v);
    if leases_judged {
        check_leases(history, &mut v);
    }
    v
}

fn check_resource(history: &History<LockOp>, v: &mut Vec<Violation>) {
    // Accepted accesses in the resource's order: (seq, token, value, write, event).
    let mut accepted: Vec<(u64, Token, u64, bool, usize)> = history
        .events()
        .iter()
        .filter(|e| e.kind == EventKind::Ok)
        .filter_map(|e| match e.op {
            LockOp::Read {
                token,
                value: Some(value),
                seq: Some(seq),
            } => Some((seq, token, value, false, e.index)),
            LockOp::Write {
                token,
                value,
                seq: Some(seq),
            } => Some((seq, token, value, true, e.index)),
            _ => None,
        })
        .collect();
    accepted.sort_unstable();
    let mut highest: Option<(Token, usize)> = None;
    let mut written: Option<(u64, usize)> = None;
    for &(seq, token, value, write, event) in &accepted {
        if let Some((h, at)) = highest {
            if token < h {
                v.push(Violation::new(
                    "fencing",
                    format!("the resource accepted token {token} (access #{seq}) after it had accepted token {h}"),
                    vec![at, event],
                ));
                break;
            }
        }
        if highest.is_none_or(|(h, _)| token > h) {
            highest = Some((token, event));
        }
        if let Some((w, at)) = written {
            if (write && value <= w) || (!write && value < w) {
                v.push(Violation::new(
                    "lost-increment",
                    format!(
                        "counter {} {value} at access #{seq}, after an accepted write of {w}",
                        if write { "written back as" } else { "read as" }
                    ),
                    vec![at, event],
                ));
                break;
            }
        }
        if write {
            written = Some((value, event));
        }
    }
}

fn check_tokens(history: &History<LockOp>, v: &mut Vec<Violation>) {
    // Highest token granted (ok) so far, and where.
    let mut granted: Option<(Token, usize)> = None;
    // Per client: the floor its open acquire/release must beat.
    let mut floor: BTreeMap<u32, Option<(Token, usize)>> = BTreeMap::new();
    let mut released: BTreeMap<Token, usize> = BTreeMap::new();
    // Token → client it was granted to. A session that still holds a lock
    // (say, its release timed out) is granted the same claim again: that
    // is its ownership continuing, not a new grant.
    let mut owner: BTreeMap<Token, u32> = BTreeMap::new();
    for e in history.events() {
        match (&e.kind, &e.op) {
            (EventKind::Invoke, LockOp::Acquire { .. } | LockOp::Release { .. }) => {
                floor.insert(e.client, granted);
            }
            (EventKind::Ok, LockOp::Acquire { token: Some(t) }) => {
                let same_claim = owner.get(t) == Some(&e.client);
                owner.insert(*t, e.client);
                if let Some(Some((f, at))) = floor.get(&e.client).filter(|_| !same_claim) {
                    if t <= f {
                        v.push(Violation::new(
                            "token-order",
                            format!("acquire granted token {t}, but token {f} had been granted before it began"),
                            vec![*at, e.index],
                        ));
                        return;
                    }
                }
                if granted.is_none_or(|(g, _)| *t > g) {
                    granted = Some((*t, e.index));
                }
            }
            (EventKind::Ok, LockOp::Release { token }) => {
                if let Some(Some((f, at))) = floor.get(&e.client) {
                    if f > token {
                        v.push(Violation::new(
                            "release-owner",
                            format!("release of token {token} succeeded after token {f} had been granted"),
                            vec![*at, e.index],
                        ));
                        return;
                    }
                }
                if let Some(first) = released.insert(*token, e.index) {
                    v.push(Violation::new(
                        "release-owner",
                        format!("token {token} was released twice"),
                        vec![first, e.index],
                    ));
                    return;
                }
            }
            _ => {}
        }
    }
}

fn check_leases(history: &History<LockOp>, v: &mut Vec<Violation>) {
    // (client, token) → (start ns, start event, end ns, end event)
    let mut leases: BTreeMap<(u32, Token), (u64, usize, u64, usize)> = BTreeMap::new();
    for e in history.events() {
        match (&e.kind, &e.op) {
            (EventKind::Ok, LockOp::Acquire { token: Some(t) }) => {
                // A repeated grant of the same claim continues the lease.
                leases
                    .entry((e.client, *t))
                    .or_insert((e.time_ns, e.index, e.time_ns, e.index));
            }
            (EventKind::Invoke, LockOp::Read { token, .. }) => {
                if let Some(l) = leases.get_mut(&(e.client, *token)) {
                    l.2 = e.time_ns;
                    l.3 = e.index;
                }
            }
            _ => {}
        }
    }
    let list: Vec<_> = leases.into_iter().collect();
    for (i, ((ca, ta), a)) in list.iter().enumerate() {
        for ((cb, tb), b) in &list[i + 1..] {
            if ca != cb && a.0 < b.2 && b.0 < a.2 {
                let (first, second) = if a.0 <= b.0 {
                    ((ca, ta, a), (cb, tb, b))
                } else {
                    ((cb, tb, b), (ca, ta, a))
                };
                v.push(Violation::new(
                    "lease-overlap",
                    format!(
                        "client {} believed it held token {} until {:.3}s, but client {} was granted token {} at {:.3}s",
                        first.0,
                        first.1,
                        first.2 .2 as f64 / 1e9,
                        second.0,
                        second.1,
                        second.2 .0 as f64 / 1e9
                    ),
                    vec![first.2 .1, second.2 .1, first.2 .3],
                ));
                return;
            }
        }
    }
}
