//! Chaos on real processes: a 3-node loopback cluster of `ringfence node`
//! processes (fsync on), lock clients in processes of their own taking
//! turns on a fenced counter, bank clients running transfers and audits on
//! the replicated transaction coordinator, and a nemesis with the faults
//! that matter for locks:
//!
//! - SIGKILL a node and restart it;
//! - SIGSTOP a node for a while, then SIGCONT (a stalled leader);
//! - partition a client from every lock server (TCP proxies the test
//!   controls sit between each client and the servers);
//! - the GC pause: the resource SIGSTOPs the client whose read it just
//!   served, for longer than the lease, so another client takes the lock;
//!   the paused one then resumes and writes what it read.
//!
//! The protected resource lives in this process and records every access
//! it applied with its token (the ground truth); the clients record what
//! they asked and heard. `history::lock::check_lock` judges both, merged on
//! the machine's monotonic clock: fencing and lost increments on the
//! resource's accesses, token order and lease overlap on the clients'.
//!
//! `RINGFENCE_CHAOS_SECS` sets the workload's length (default 8);
//! `RINGFENCE_CHAOS_NO_FENCING=1` switches the resource's fencing off, and
//! the main test then fails with the violations found. A second test runs
//! without fencing until the first violation, and asserts it is found.
//! Disk-full is not injected: it needs a small filesystem mounted for the
//! nodes' data, which CI machines may not allow.

#[path = "support/bank.rs"]
mod bank_clients;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bank_clients::{assert_conserved, banker, final_audit};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringfence::history::lock::{check_lock, LockOp, ResourceTruth};
use ringfence::history::{Event, EventKind, History, Violation};
use ringfence::lock::{FencedResource, LockClient, LockError};
use ringfence::real::cluster::ClusterConfig;
use ringfence::real::local::LocalCluster;
use ringfence::real::RealEnv;
use serde::{Deserialize, Serialize};
use support::proxy::Proxy;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const CLIENTS: u32 = 4;
const BANK_CLIENTS: u32 = 2;
const ACCOUNTS: u32 = 6;
const LOCK: &str = "chaos";
/// Session TTL of the cluster: short, so a paused holder loses its lease
/// (and another client takes the lock) within a couple of seconds.
const TTL_MS: u64 = 1000;
/// Lock granted again after the faults end within this (TTL + elections).
const LIVENESS_BOUND: Duration = Duration::from_secs(15);
/// Where a client process finds its orders (JSON [`ClientSpec`]).
const CLIENT_ENV: &str = "RINGFENCE_CHAOS_CLIENT";

/// The machine's monotonic clock in nanoseconds: the same in every
/// process, so the clients' histories and the resource's merge in order.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) }, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a process this test started.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

fn workload_secs() -> u64 {
    std::env::var("RINGFENCE_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_bank_survive_kills_stops_partitions_and_paused_holders() {
    let fencing = std::env::var("RINGFENCE_CHAOS_NO_FENCING").is_err();
    let run = chaos(Duration::from_secs(workload_secs()), fencing, false).await;
    println!(
        "fencing {}: faults {:?}, {} history events, {} accepted increments, lock granted {:?} after the faults ended",
        if fencing { "on" } else { "off" },
        run.faults,
        run.events,
        run.increments,
        run.granted_after
    );
    assert!(
        run.violations.is_empty(),
        "violations (fencing {}): {:#?}\nnode output in {}",
        if fencing { "on" } else { "off" },
        run.violations,
        run.dir.display()
    );
    for kind in ["kill", "node-stop", "partition", "holder-pause"] {
        assert!(
            run.faults.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} fired: {:?}",
            run.faults
        );
    }
    assert!(run.increments > 0, "no increment got through");
    assert!(run.transfers > 0, "no transfer committed");
}

/// The negative control: with the resource's fencing off, the checker
/// finds the paused holder's stale write on the resource's own record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fencing_a_paused_holders_stale_write_is_found() {
    let run = chaos(Duration::from_secs(30), false, true).await;
    println!(
        "no fencing: first violation {:?} into the workload; faults {:?}",
        run.caught_after, run.faults
    );
    let found: Vec<&str> = run.violations.iter().map(|v| v.invariant.as_str()).collect();
    assert!(
        found.iter().any(|v| *v == "fencing" || *v == "lost-increment"),
        "no fencing violation in 30 s: {found:?}, faults {:?}",
        run.faults
    );
}

/// What one chaos run saw.
struct Run {
    violations: Vec<Violation>,
    faults: BTreeMap<&'static str, u32>,
    events: usize,
    increments: u64,
    transfers: u64,
    granted_after: Duration,
    /// When the first access the checker flags was applied, from the
    /// workload's start.
    caught_after: Option<Duration>,
    dir: PathBuf,
}

/// Runs the workload and the nemesis for `length` (or, with `stop_early`,
/// until the resource's record shows a violation), then checks.
async fn chaos(length: Duration, fencing: bool, stop_early: bool) -> Run {
    let dir = tempfile::tempdir().unwrap().keep();
    let mut config = LocalCluster::free_ports_config(3, &dir).unwrap();
    config.lock.ttl_ms = TTL_MS;
    let exe = Path::new(env!("CARGO_BIN_EXE_ringfence"));
    let mut cluster = LocalCluster::start(exe, &dir, config.clone()).await.unwrap();

    let resource = Resource::start(fencing).await;
    let start = mono_ns();
    let until = start + length.as_nanos() as u64;
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        clients.push(ClientProcess::start(id, &config, &dir, resource.addr, until).await);
    }
    let bank_until = tokio::time::Instant::now() + length;
    let bankers: Vec<_> = (0..BANK_CLIENTS)
        .map(|id| {
            let stop = dir.join("stop");
            let running = move || tokio::time::Instant::now() < bank_until && !stop.exists();
            tokio::spawn(banker(id, config.clone(), ACCOUNTS, running))
        })
        .collect();

    let mut rng = ChaCha8Rng::from_entropy(); // determinism: ok
    let mut faults = BTreeMap::new();
    let ttl = Duration::from_millis(TTL_MS);
    // Rounds of every fault kind in a random order (the GC pause twice, the
    // fault fencing is for), until the time is up and one round is done.
    let mut round = Vec::new();
    while mono_ns() < until || !round.is_empty() {
        if round.is_empty() {
            round = vec!["kill", "node-stop", "partition", "holder-pause", "holder-pause"];
            round.shuffle(&mut rng);
        }
        let kind = round.pop().expect("refilled");
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..800))).await;
        *faults.entry(kind).or_insert(0) += 1;
        match kind {
            "kill" => {
                let victim = cluster.ids()[rng.gen_range(0..3)];
                cluster.kill(victim).await.unwrap();
                tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1000))).await;
                cluster.restart(victim).await.unwrap();
            }
            "node-stop" => {
                let pid = cluster.pids()[rng.gen_range(0..3)];
                signal(pid, libc::SIGSTOP);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(300..2000))).await;
                signal(pid, libc::SIGCONT);
            }
            "partition" => {
                let victim = &clients[rng.gen_range(0..clients.len())];
                victim.partition(true);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2500))).await;
                victim.partition(false);
            }
            _ => {
                let pause = ttl.mul_f64(rng.gen_range(1.5..3.0));
                if !resource.pause_next_reader(pause, Duration::from_secs(3)).await {
                    *faults.get_mut(kind).unwrap() -= 1;
                }
            }
        }
        if stop_early && !check_lock(&merge(start, resource.truth()), ResourceTruth::InHistory, &|_| false).is_empty() {
            break;
        }
    }
    resource.resume_all();
    std::fs::write(dir.join("stop"), "").unwrap();

    let mut merged = Vec::new();
    for client in clients {
        merged.extend(client.finish().await);
    }
    let (mut transfers, mut audits) = (0, Vec::new());
    for task in bankers {
        let (committed, seen) = task.await.unwrap();
        transfers += committed;
        audits.extend(seen);
    }
    let granted_after = liveness(&config).await;
    audits.push(final_audit(&config, ACCOUNTS, LIVENESS_BOUND).await);
    cluster.stop().await;
    assert_conserved(&audits, ACCOUNTS);

    let truth = resource.truth();
    let increments = truth.iter().filter(|e| matches!(e.op, LockOp::Write { .. })).count() as u64;
    merged.extend(truth);
    let history = merge(start, merged);
    // Leases are judged: every process reads the same clock, so no drift.
    let violations = check_lock(&history, ResourceTruth::InHistory, &|_| true);
    // The first violation is shown by its latest event.
    let caught_after = violations.first().map(|v| {
        let at = v.events.iter().map(|&i| history.events()[i].time_ns).max().unwrap_or(0);
        Duration::from_nanos(at)
    });
    Run {
        violations,
        faults,
        events: history.len(),
        increments,
        transfers,
        granted_after,
        caught_after,
        dir,
    }
}

/// Events from every process in time order, timed from `start`.
fn merge(start: u64, mut events: Vec<Event<LockOp>>) -> History<LockOp> {
    events.sort_by_key(|e| e.time_ns);
    let mut history = History::default();
    for e in events {
        history.push(e.client, e.time_ns.saturating_sub(start), e.kind, e.op);
    }
    history
}

/// With every node back and every fault healed, a new client gets the lock
/// within [`LIVENESS_BOUND`]; returns how long that took.
async fn liveness(config: &ClusterConfig) -> Duration {
    let started = tokio::time::Instant::now();
    let probe = lock_client(config);
    let granted = tokio::time::timeout(LIVENESS_BOUND, async {
        loop {
            if probe.open().await.is_ok() && probe.acquire(LOCK, Duration::from_secs(5)).await.is_ok() {
                return;
            }
            let _ = probe.reopen().await;
        }
    })
    .await;
    assert!(
        granted.is_ok(),
        "the lock was not granted within {LIVENESS_BOUND:?} after the faults ended"
    );
    started.elapsed()
}

fn lock_client(config: &ClusterConfig) -> LockClient<RealEnv> {
    let env = config.client_env(&config.lock_servers()).unwrap();
    LockClient::new(
        env,
        config.lock_servers().into_keys().collect(),
        config.lock_client_config(),
    )
}

// ---------------------------------------------------------------------------
// The resource: a fenced counter served over TCP, one line per access:
// `R <token>` / `W <token> <value>`, answered `OK <value> <seq>` or
// `STALE <highest>`. A connection starts with `HELLO <client> <pid>`.

struct Resource {
    addr: SocketAddr,
    state: Arc<Mutex<ResourceState>>,
}

struct ResourceState {
    counter: FencedResource,
    /// Every access applied: the ground truth the checker judges.
    applied: Vec<Event<LockOp>>,
    /// Set by the nemesis: stop the next client whose read is served, for
    /// this long; the flag is raised once it is stopped.
    pause_next: Option<(Duration, Arc<AtomicBool>)>,
    /// Clients stopped now (pid), to resume them all at the end.
    stopped: Vec<u32>,
}

impl Resource {
    async fn start(fencing: bool) -> Resource {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ResourceState {
            counter: if fencing {
                FencedResource::new()
            } else {
                FencedResource::without_fencing()
            },
            applied: Vec::new(),
            pause_next: None,
            stopped: Vec::new(),
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        Resource { addr, state }
    }

    /// Arms a holder pause and waits until it fired and ended (false if no
    /// read came within `arm_for`).
    async fn pause_next_reader(&self, pause: Duration, arm_for: Duration) -> bool {
        let fired = Arc::new(AtomicBool::new(false));
        self.state.lock().unwrap().pause_next = Some((pause, fired.clone()));
        let deadline = tokio::time::Instant::now() + arm_for;
        while tokio::time::Instant::now() < deadline && !fired.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !fired.load(Ordering::SeqCst) {
            self.state.lock().unwrap().pause_next = None;
            return false;
        }
        tokio::time::sleep(pause).await;
        true
    }

    fn resume_all(&self) {
        let mut state = self.state.lock().unwrap();
        state.pause_next = None;
        for pid in state.stopped.drain(..) {
            signal(pid, libc::SIGCONT);
        }
    }

    fn truth(&self) -> Vec<Event<LockOp>> {
        self.state.lock().unwrap().applied.clone()
    }
}

impl ResourceState {
    /// Applies one access line from `client`; the answer line.
    fn apply(&mut self, client: u32, line: &str) -> Option<String> {
        let words: Vec<u64> = line.split(' ').skip(1).map(|w| w.parse().ok()).collect::<Option<_>>()?;
        let (result, op) = match (line.as_bytes().first()?, words.as_slice()) {
            (b'R', &[token]) => {
                let result = self.counter.read(token);
                let op = result.map(|(value, seq)| LockOp::Read {
                    token,
                    value: Some(value),
                    seq: Some(seq),
                });
                (result, op)
            }
            (b'W', &[token, value]) => {
                let result = self.counter.write(token, value).map(|seq| (value, seq));
                let op = result.map(|(_, seq)| LockOp::Write {
                    token,
                    value,
                    seq: Some(seq),
                });
                (result, op)
            }
            _ => return None,
        };
        let Ok(op) = op else {
            return Some(format!("STALE {}", self.counter.highest()));
        };
        self.applied.push(Event {
            index: 0,
            client,
            time_ns: mono_ns(),
            kind: EventKind::Ok,
            op,
        });
        let (value, seq) = result.expect("applied");
        Some(format!("OK {value} {seq}"))
    }
}

async fn serve(stream: TcpStream, state: Arc<Mutex<ResourceState>>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let Ok(Some(hello)) = lines.next_line().await else {
        return;
    };
    let ids: Vec<u32> = hello.split(' ').skip(1).filter_map(|w| w.parse().ok()).collect();
    let &[client, pid] = ids.as_slice() else {
        return;
    };
    while let Ok(Some(line)) = lines.next_line().await {
        let (answer, pause) = {
            let mut state = state.lock().unwrap();
            let answer = state.apply(client, &line).unwrap_or_else(|| "BAD".to_string());
            // The GC pause: the reader stops before it hears the value, so
            // it is between its lease check and its write.
            let pause = match state.pause_next.take() {
                Some((pause, fired)) if line.starts_with('R') && answer.starts_with("OK") => {
                    signal(pid, libc::SIGSTOP);
                    state.stopped.push(pid);
                    fired.store(true, Ordering::SeqCst);
                    Some(pause)
                }
                other => {
                    state.pause_next = other;
                    None
                }
            };
            (answer, pause)
        };
        if let Some(pause) = pause {
            let state = state.clone();
            tokio::spawn(async move {
                tokio::time::sleep(pause).await;
                let mut state = state.lock().unwrap();
                if let Some(at) = state.stopped.iter().position(|&p| p == pid) {
                    state.stopped.remove(at);
                    signal(pid, libc::SIGCONT);
                }
            });
        }
        if write.write_all(format!("{answer}\n").as_bytes()).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Lock client processes: this test binary run again with CLIENT_ENV set,
// reaching the lock servers through proxies the parent controls.

/// A client process's orders.
#[derive(Serialize, Deserialize)]
struct ClientSpec {
    id: u32,
    /// Its cluster file (lock addresses are its proxies).
    config: PathBuf,
    resource: SocketAddr,
    /// Stop at this [`mono_ns`] time, or once this file exists.
    until: u64,
    stop: PathBuf,
    /// Where to write its history (JSON).
    out: PathBuf,
}

struct ClientProcess {
    child: tokio::process::Child,
    proxies: Vec<Proxy>,
    out: PathBuf,
}

impl ClientProcess {
    async fn start(id: u32, config: &ClusterConfig, dir: &Path, resource: SocketAddr, until: u64) -> ClientProcess {
        let mut own = config.clone();
        let mut proxies = Vec::new();
        for node in &mut own.nodes {
            let proxy = Proxy::start(node.lock).await.unwrap();
            node.lock = proxy.addr();
            proxies.push(proxy);
        }
        let file = dir.join(format!("client-{id}.toml"));
        own.save(&file).unwrap();
        let spec = ClientSpec {
            id,
            config: file,
            resource,
            until,
            stop: dir.join("stop"),
            out: dir.join(format!("client-{id}.history.json")),
        };
        let log = std::fs::File::create(dir.join(format!("client-{id}.out"))).unwrap();
        let child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["chaos_client_process", "--exact", "--nocapture", "--test-threads", "1"])
            .env(CLIENT_ENV, serde_json::to_string(&spec).unwrap())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        ClientProcess {
            child,
            proxies,
            out: spec.out,
        }
    }

    fn partition(&self, cut: bool) {
        for proxy in &self.proxies {
            if cut {
                proxy.partition();
            } else {
                proxy.heal();
            }
        }
    }

    /// Waits for the process to finish its loop; its history.
    async fn finish(mut self) -> Vec<Event<LockOp>> {
        self.partition(false);
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("a client process finishes within 30 s of its deadline")
            .unwrap();
        assert!(status.success(), "client process failed: {status}");
        let text = std::fs::read_to_string(&self.out).unwrap();
        let history: History<LockOp> = serde_json::from_str(&text).unwrap();
        history.events().to_vec()
    }
}

/// Not a check of its own: the body of a lock client process that the
/// chaos tests start (this binary run again with `RINGFENCE_CHAOS_CLIENT`
/// set). Without that variable it returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_client_process() {
    let Ok(spec) = std::env::var(CLIENT_ENV) else {
        return;
    };
    let spec: ClientSpec = serde_json::from_str(&spec).unwrap();
    let config = ClusterConfig::load(&spec.config).unwrap();
    let history = lock_loop(&spec, &config).await;
    std::fs::write(&spec.out, serde_json::to_string(&history).unwrap()).unwrap();
}

/// Acquire, a few fenced read-modify-writes while the lease holds (checked
/// before each read, not again before the write: the window fencing
/// exists for), release; until the deadline.
async fn lock_loop(spec: &ClientSpec, config: &ClusterConfig) -> History<LockOp> {
    let mut history = History::default();
    let id = spec.id;
    let mut record = |time: u64, kind, op| {
        history.push(id, time, kind, op);
    };
    let stream = TcpStream::connect(spec.resource).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut answers = BufReader::new(read).lines();
    write
        .write_all(format!("HELLO {id} {}\n", std::process::id()).as_bytes())
        .await
        .unwrap();
    let mut access = async |line: String| -> Option<(u64, u64)> {
        write.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        let answer = answers.next_line().await.unwrap().unwrap();
        let mut words = answer.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some("OK"), Some(a), Some(b)) => Some((a.parse().unwrap(), b.parse().unwrap())),
            _ => None,
        }
    };
    let lc = lock_client(config);
    let mut acquires = 0;
    while mono_ns() < spec.until && !spec.stop.exists() {
        if !lc.is_valid() && lc.reopen().await.is_err() {
            continue;
        }
        record(mono_ns(), EventKind::Invoke, LockOp::Acquire { token: None });
        acquires += 1;
        let lease = match lc.acquire(LOCK, Duration::from_secs(3)).await {
            Ok(lease) if lc.is_valid() => lease,
            Ok(_) | Err(LockError::Unavailable { .. } | LockError::WaitExpired { .. }) => {
                record(mono_ns(), EventKind::Info, LockOp::Acquire { token: None });
                continue;
            }
            Err(_) => {
                record(mono_ns(), EventKind::Fail, LockOp::Acquire { token: None });
                continue;
            }
        };
        let token = lease.token;
        record(mono_ns(), EventKind::Ok, LockOp::Acquire { token: Some(token) });
        for _ in 0..3 {
            // Stamped before the check: the belief ends no later than this.
            let checked = mono_ns();
            if !lc.is_valid() {
                break;
            }
            record(
                checked,
                EventKind::Invoke,
                LockOp::Read {
                    token,
                    value: None,
                    seq: None,
                },
            );
            let Some((value, _)) = access(format!("R {token}")).await else {
                break;
            };
            tokio::time::sleep(Duration::from_millis(5)).await;
            if access(format!("W {token} {}", value + 1)).await.is_none() {
                break;
            }
        }
        record(mono_ns(), EventKind::Invoke, LockOp::Release { token });
        let kind = match lc.release(&lease).await {
            Ok(()) => EventKind::Ok,
            Err(LockError::Unavailable { .. }) => EventKind::Info,
            Err(_) => EventKind::Fail,
        };
        record(mono_ns(), kind, LockOp::Release { token });
    }
    let _ = lc.close().await;
    println!("client {id}: {acquires} acquires");
    history
}
