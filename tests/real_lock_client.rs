//! The lock client as a tokio service uses it, against an in-process
//! 3-node cluster on loopback: cancelled acquires withdraw their claims,
//! guards renew themselves and free the lock promptly when dropped, one
//! client serves many tasks, and errors say what happened.
//!
//! The servers' TTL is long (10 s) where a test shows that something
//! happens "within a round trip, not a TTL".

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringfence::lock::{FenceError, FencedResource, LockClient, LockError};
use ringfence::real::embedded::EmbeddedCluster;
use ringfence::real::RealEnv;

const LONG_TTL_MS: u64 = 10_000;

async fn cluster(dir: &Path, ttl_ms: u64) -> EmbeddedCluster {
    let mut config = EmbeddedCluster::config(dir, 3).unwrap();
    config.lock.ttl_ms = ttl_ms;
    EmbeddedCluster::start_with(dir, config).await.unwrap()
}

async fn opened(cluster: &EmbeddedCluster) -> LockClient<RealEnv> {
    let client = cluster.lock_client();
    client.open().await.unwrap();
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_acquire_is_never_left_holding_and_blocks_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), LONG_TTL_MS).await;
    let holder = opened(&cluster).await;
    let quitter = opened(&cluster).await;
    let next = opened(&cluster).await;
    let held = holder.acquire("x", Duration::from_secs(5)).await.unwrap();

    // The quitter queues behind the holder, then gives up from outside.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(400),
        quitter.acquire("x", Duration::from_secs(30)),
    )
    .await;
    assert!(gave_up.is_err(), "the acquire cannot finish while the lock is held");
    // The withdrawal runs in the background: the line empties.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !holder.status("x").await.unwrap().waiters.is_empty() {
        assert!(Instant::now() < deadline, "the cancelled claim is still in line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    holder.release(&held).await.unwrap();
    let start = Instant::now();
    let lease = next.acquire("x", Duration::from_secs(3)).await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(2), "waited {:?}", start.elapsed());
    let view = next.status("x").await.unwrap();
    assert_eq!(view.holder, Some((next.session(), lease.token)));
    let quitter_holds = quitter.keep_alive().await.unwrap();
    assert!(
        quitter_holds.is_empty(),
        "the cancelled acquire was granted: {quitter_holds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_guard_or_client_frees_the_lock_within_a_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), LONG_TTL_MS).await;
    let first = opened(&cluster).await;
    let second = opened(&cluster).await;

    let guard = first.lock("y", Duration::from_secs(5)).await.unwrap();
    // At work long enough for its renewal task to be asleep.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(guard);
    let start = Instant::now();
    let guard = second.lock("y", Duration::from_secs(3)).await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(1), "waited {:?}", start.elapsed());

    // A client dropped while holding (a plain lease, not a guard) closes
    // its session on the way out.
    drop(guard);
    let lease = first.acquire("z", Duration::from_secs(5)).await.unwrap();
    assert!(lease.token > 0);
    // The renewal task the first guard started must not keep the dropped
    // client's session alive until its next renewal (a third of a TTL).
    drop(first);
    let start = Instant::now();
    second.acquire("z", Duration::from_secs(8)).await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(1), "waited {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_renews_itself_and_reports_its_loss() {
    let dir = tempfile::tempdir().unwrap();
    // A TTL long enough that a renewal held up by a loaded machine (two
    // cores, a parallel build) still lands inside the lease: at 600 ms,
    // one run under load found the guard lapsed after 3 s.
    let mut cluster = cluster(dir.path(), 1_000).await;
    let owner = opened(&cluster).await;
    assert_eq!(
        owner.ttl(),
        Some(Duration::from_millis(1_000)),
        "the TTL comes from the servers"
    );

    let guard = owner.lock("r", Duration::from_secs(5)).await.unwrap();
    // Five TTLs with nobody calling keep_alive.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(guard.is_valid());
    let other = opened(&cluster).await;
    assert_eq!(other.try_acquire("r").await, Err(LockError::Busy));
    let view = other.status("r").await.unwrap();
    assert_eq!(view.holder, Some((owner.session(), guard.token())));
    let mut resource = FencedResource::new();
    guard.write(&mut resource, 7).unwrap();

    // Two of three servers gone: no renewal gets through, and the guard
    // learns it by the time its lease runs out.
    let ids = cluster.ids();
    let start = Instant::now();
    cluster.stop_node(ids[0]).await;
    cluster.stop_node(ids[1]).await;
    let why = tokio::time::timeout(Duration::from_secs(3), guard.lost())
        .await
        .expect("the loss is reported");
    assert_eq!(why, LockError::LeaseExpired);
    assert!(
        start.elapsed() < Duration::from_millis(2_500),
        "noticed after {:?}",
        start.elapsed()
    );
    assert!(!guard.is_valid());
    assert!(matches!(guard.write(&mut resource, 8), Err(FenceError::Lost(_))));
    assert_eq!(resource.value(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_shared_by_many_tasks_excludes_them_from_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 2000).await;
    let client = opened(&cluster).await;
    let inside = Arc::new(AtomicBool::new(false));
    let resource = Arc::new(Mutex::new(FencedResource::new()));
    let rounds = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (client, inside, resource, rounds) = (client.clone(), inside.clone(), resource.clone(), rounds.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..4 {
                let guard = client.lock("shared", Duration::from_secs(10)).await.unwrap();
                assert!(!inside.swap(true, Ordering::SeqCst), "two tasks hold the lock at once");
                let value = guard.read(&mut resource.lock().unwrap()).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                guard.write(&mut resource.lock().unwrap(), value + 1).unwrap();
                inside.store(false, Ordering::SeqCst);
                rounds.fetch_add(1, Ordering::SeqCst);
                guard.release().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(rounds.load(Ordering::SeqCst), 24);
    assert_eq!(resource.lock().unwrap().value(), 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 2000).await;
    let client = cluster.lock_client();
    assert_eq!(
        client.acquire("e", Duration::from_secs(1)).await,
        Err(LockError::NotOpen)
    );
    assert!(matches!(
        client.lock("e", Duration::from_secs(1)).await,
        Err(LockError::NotOpen)
    ));
    client.open().await.unwrap();

    let holder = opened(&cluster).await;
    let _held = holder.lock("e", Duration::from_secs(1)).await.unwrap();
    let wait = Duration::from_millis(300);
    assert_eq!(
        client.acquire("e", wait).await,
        Err(LockError::WaitExpired { waited: wait })
    );
    assert!(matches!(client.try_lock("e").await, Err(LockError::Busy)));
    let long = "n".repeat(ringfence::lock::MAX_LOCK_NAME_BYTES + 1);
    let refused = client.try_acquire(&long).await.unwrap_err();
    assert!(refused.to_string().contains("name is too long"), "{refused}");

    // Nothing listening: the error names the addresses it tried.
    let config = cluster.cluster_config().clone();
    let servers = config.lock_servers();
    cluster.shutdown().await;
    let lonely = LockClient::new(
        RealEnv::client(&config.client_credentials().unwrap(), &servers),
        servers.keys().copied().collect(),
        Default::default(),
    );
    let error = lonely.open().await.unwrap_err();
    assert!(matches!(error, LockError::Unavailable { .. }), "{error:?}");
    for addr in servers.values() {
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }
}
