//! Chaos on real processes: a 3-node loopback cluster of `ringfence node`
//! processes (fsync on), lock clients taking turns on a fenced counter, bank
//! clients running transfers and audits on the replicated transaction
//! coordinator, and a nemesis that SIGKILLs random nodes and restarts them.
//! The lock history is judged by the same checker the simulator's lock
//! scenario uses; every committed audit must see the opening total.
//!
//! Bounded in time and count: `RINGFENCE_CHAOS_SECS` seconds of workload
//! (default 8, enough for several kills), loopback only.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringfence::history::lock::{check_lock, LockOp};
use ringfence::history::{EventKind, History};
use ringfence::lock::{FencedResource, Lease, LockClient, LockError};
use ringfence::real::cluster::ClusterConfig;
use ringfence::real::local::LocalCluster;
use ringfence::real::RealEnv;
use ringfence::txn::{bank, Outcome};

const CLIENTS: u32 = 4;
const BANK_CLIENTS: u32 = 3;
const ACCOUNTS: u32 = 6;
const LOCK: &str = "chaos";
/// Lock granted again after the last restart within this (TTL + elections).
const LIVENESS_BOUND: Duration = Duration::from_secs(15);

/// The history, stamped with real time since the test began.
struct Recorder {
    start: Instant,
    history: Mutex<History<LockOp>>,
}

impl Recorder {
    fn record(&self, client: u32, kind: EventKind, op: LockOp) {
        let mut history = self.history.lock().unwrap();
        let now = self.start.elapsed().as_nanos() as u64; // determinism: ok
        history.push(client, now, kind, op);
    }
}

fn workload_secs() -> u64 {
    std::env::var("RINGFENCE_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_bank_survive_sigkill_and_restart_of_real_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalCluster::free_ports_config(3, dir.path()).unwrap();
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_ringfence"));
    let mut cluster = LocalCluster::start(exe, dir.path(), config.clone()).await.unwrap();

    let recorder = Arc::new(Recorder {
        start: Instant::now(), // determinism: ok
        history: Mutex::new(History::default()),
    });
    let resource = Arc::new(Mutex::new(FencedResource::new()));
    let until = Instant::now() + Duration::from_secs(workload_secs()); // determinism: ok
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client(id, config.clone(), recorder.clone(), resource.clone(), until)))
        .collect();
    let bankers: Vec<_> = (0..BANK_CLIENTS)
        .map(|id| tokio::spawn(banker(id, config.clone(), until)))
        .collect();

    // The nemesis: kill a random node, let the others carry on, restart it.
    let mut rng = ChaCha8Rng::from_entropy(); // determinism: ok
    let mut kills = 0;
    while Instant::now() < until {
        // determinism: ok
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..1500))).await;
        let ids = cluster.ids();
        let victim = ids[rng.gen_range(0..ids.len())];
        cluster.kill(victim).await.unwrap();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1000))).await;
        cluster.restart(victim).await.unwrap();
    }
    let mut increments = 0;
    for task in clients {
        increments += task.await.unwrap();
    }
    let (mut transfers, mut audits) = (0, Vec::new());
    for task in bankers {
        let (committed, seen) = task.await.unwrap();
        transfers += committed;
        audits.extend(seen);
    }

    // Liveness: with every node back, a new client gets the lock in time.
    let started = Instant::now(); // determinism: ok
    let mut probe = lock_client(&config);
    let granted = tokio::time::timeout(LIVENESS_BOUND, async {
        loop {
            if probe.open().await.is_ok() {
                if let Ok(lease) = probe.acquire(LOCK, Duration::from_secs(5)).await {
                    return lease;
                }
            }
            let _ = probe.reopen().await;
        }
    })
    .await;
    assert!(
        granted.is_ok(),
        "the lock was not granted within {LIVENESS_BOUND:?} after the last restart (waited {:?})",
        started.elapsed()
    );
    let granted_after = started.elapsed();
    // Every node back: a final audit sees the opening total too.
    let env = config.client_env(&config.txn_nodes()).unwrap();
    let mut txc = config.txn_client(env);
    let last = tokio::time::timeout(LIVENESS_BOUND, async {
        loop {
            if let Ok(balances) = bank::audit(&mut txc, ACCOUNTS).await {
                return balances;
            }
        }
    })
    .await
    .expect("a final audit commits once every node is back");
    cluster.stop().await;
    println!("{transfers} transfers committed, {} audits committed", audits.len());
    let total = i64::from(ACCOUNTS) * bank::INITIAL;
    for balances in audits.iter().chain([&last]) {
        assert_eq!(balances.iter().sum::<i64>(), total, "an audit saw {balances:?}");
    }
    assert!(transfers > 0, "no transfer committed");

    let history = recorder.history.lock().unwrap();
    let violations = check_lock(&history, true);
    println!(
        "{kills} kills, {} history events, {increments} increments, lock granted {granted_after:?} after the last restart",
        history.len()
    );
    assert!(
        violations.is_empty(),
        "violations after {kills} kills: {violations:#?}\nnode output in {}",
        dir.keep().display()
    );
    assert!(kills >= 2, "the nemesis ran {kills} kills");
    assert!(increments > 0, "no increment got through");
    assert_eq!(
        resource.lock().unwrap().value(),
        increments,
        "every acknowledged increment is in the counter"
    );
}

/// Transfers between random accounts, and an audit every fourth operation;
/// returns the transfers that committed and every committed audit.
async fn banker(id: u32, config: ClusterConfig, until: Instant) -> (u64, Vec<Vec<i64>>) {
    let env = config.client_env(&config.txn_nodes()).unwrap();
    let mut txc = config.txn_client(env);
    let mut rng = ChaCha8Rng::from_entropy(); // determinism: ok
    let (mut committed, mut audits) = (0, Vec::new());
    let mut op = u64::from(id);
    while Instant::now() < until {
        // determinism: ok
        op += 1;
        if op % 4 == 0 {
            if let Ok(balances) = bank::audit(&mut txc, ACCOUNTS).await {
                audits.push(balances);
            }
            continue;
        }
        let from = rng.gen_range(0..ACCOUNTS);
        let to = (from + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
        if let Ok(Outcome::Committed) = bank::transfer(&mut txc, from, to, rng.gen_range(1..20)).await {
            committed += 1;
        }
    }
    (committed, audits)
}

fn lock_client(config: &ClusterConfig) -> LockClient<RealEnv> {
    let env = config.client_env(&config.lock_servers()).unwrap();
    LockClient::new(
        env,
        config.lock_servers().into_keys().collect(),
        config.lock_client_config(),
    )
}

/// One client's loop: acquire, fenced read-modify-write while the lease
/// holds, release. Returns the increments the resource acknowledged.
async fn client(
    id: u32,
    config: ClusterConfig,
    recorder: Arc<Recorder>,
    resource: Arc<Mutex<FencedResource>>,
    until: Instant,
) -> u64 {
    let mut lc = lock_client(&config);
    let mut increments = 0;
    while Instant::now() < until {
        // determinism: ok
        if !lc.is_valid() && lc.reopen().await.is_err() {
            continue;
        }
        recorder.record(id, EventKind::Invoke, LockOp::Acquire { token: None });
        let lease = match lc.acquire(LOCK, Duration::from_secs(3)).await {
            Ok(lease) if lc.is_valid() => lease,
            Ok(_) | Err(LockError::Timeout) => {
                recorder.record(id, EventKind::Info, LockOp::Acquire { token: None });
                continue;
            }
            Err(_) => {
                recorder.record(id, EventKind::Fail, LockOp::Acquire { token: None });
                continue;
            }
        };
        let token = lease.token;
        recorder.record(id, EventKind::Ok, LockOp::Acquire { token: Some(token) });
        for _ in 0..2 {
            if !lc.is_valid() {
                break;
            }
            if !increment(id, &recorder, &resource, token).await {
                break;
            }
            increments += 1;
        }
        release(id, &recorder, &mut lc, &lease).await;
    }
    let _ = lc.close().await;
    increments
}

/// A fenced read, some work, a fenced write of the value plus one.
async fn increment(id: u32, recorder: &Recorder, resource: &Mutex<FencedResource>, token: u64) -> bool {
    let read_op = |value, seq| LockOp::Read { token, value, seq };
    recorder.record(id, EventKind::Invoke, read_op(None, None));
    let read = resource.lock().unwrap().read(token);
    let Ok((value, seq)) = read else {
        recorder.record(id, EventKind::Fail, read_op(None, None));
        return false;
    };
    recorder.record(id, EventKind::Ok, read_op(Some(value), Some(seq)));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let write_op = |seq| LockOp::Write {
        token,
        value: value + 1,
        seq,
    };
    recorder.record(id, EventKind::Invoke, write_op(None));
    let written = resource.lock().unwrap().write(token, value + 1);
    match written {
        Ok(seq) => {
            recorder.record(id, EventKind::Ok, write_op(Some(seq)));
            true
        }
        Err(_) => {
            recorder.record(id, EventKind::Fail, write_op(None));
            false
        }
    }
}

async fn release(id: u32, recorder: &Recorder, lc: &mut LockClient<RealEnv>, lease: &Lease) {
    let token = lease.token;
    recorder.record(id, EventKind::Invoke, LockOp::Release { token });
    let kind = match lc.release(lease).await {
        Ok(()) => EventKind::Ok,
        Err(LockError::Timeout) => EventKind::Info,
        Err(_) => EventKind::Fail,
    };
    recorder.record(id, kind, LockOp::Release { token });
}
