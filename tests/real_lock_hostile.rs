//! The lock service on real processes against hostile clients and an
//! expiry storm: a 3-node loopback cluster of `ringfence node` processes
//! (fsync on).
//!
//! - A raw client (hand-built `Wire::Command`s over `RealEnv::client`)
//!   tries to choose its own fencing token, to act on a session another
//!   node opened, and to propose `Expire`: all refused, replicas alive.
//! - 1,000 sessions from 8 principals vanish at once: the lock one of them
//!   held is granted again within TTL + a few seconds.

use std::path::Path;
use std::time::{Duration, Instant};

use ringfence::env::NodeId;
use ringfence::lock::{LockClient, LockCommand, LockMachine, LockOutput, Refusal, Request, MAX_SESSIONS_PER_PRINCIPAL};
use ringfence::log::client::{Client, ClientError};
use ringfence::real::auth::principal_of;
use ringfence::real::cluster::ClusterConfig;
use ringfence::real::local::LocalCluster;
use ringfence::real::RealEnv;

const TIMEOUT: Duration = Duration::from_secs(3);
/// How long a command the servers drop is retried before giving up.
const DROPPED: Duration = Duration::from_secs(1);

async fn cluster(dir: &Path) -> (LocalCluster, ClusterConfig) {
    let config = LocalCluster::free_ports_config(3, dir).unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_ringfence"));
    let cluster = LocalCluster::start(exe, dir, config.clone()).await.unwrap();
    (cluster, config)
}

/// A client of the lock servers as node `id`, authenticated with the key
/// of `id`'s principal (minted from the cluster secret the test holds).
fn client_env(config: &ClusterConfig, id: NodeId) -> RealEnv {
    let credentials = config.secret().unwrap().client_credentials(principal_of(id)).unwrap();
    RealEnv::client_as(id, &credentials, &config.lock_servers()).unwrap()
}

/// A log client speaking raw lock commands as node `id`.
fn raw(config: &ClusterConfig, id: NodeId) -> Client<RealEnv, LockMachine> {
    let servers = config.lock_servers();
    Client::new(client_env(config, id), servers.into_keys().collect())
}

fn lock_client(config: &ClusterConfig, id: NodeId) -> LockClient<RealEnv> {
    let servers = config.lock_servers();
    LockClient::new(
        client_env(config, id),
        servers.into_keys().collect(),
        config.lock_client_config(),
    )
}

fn assert_alive(cluster: &mut LocalCluster, dir: &Path) {
    if let Some((id, status)) = cluster.exited() {
        panic!(
            "node {id} exited with {status}; see {}",
            dir.join(format!("node-{id}.out")).display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_client_cannot_choose_tokens_act_on_foreign_sessions_or_expire() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, config) = cluster(dir.path()).await;
    // The victim: an ordinary client holding a lock.
    let victim = lock_client(&config, 100 << 16 | 1);
    victim.open().await.unwrap();
    let lease = victim.acquire("v", Duration::from_secs(5)).await.unwrap();
    let session = victim.session();

    // The rogue, of another principal. Proposing the victim's expiry, for
    // exactly its latest renewal (the machine's revision counts commands:
    // open 1, acquire 2, then each keep-alive): dropped at admission.
    let rogue_id = 200 << 16 | 1;
    let mut rogue = raw(&config, rogue_id);
    for renewed in 3..=4 {
        victim.keep_alive().await.unwrap();
        let expire = LockCommand::Expire { session, renewed };
        assert_eq!(rogue.execute(expire, DROPPED).await, Err(ClientError::Timeout));
    }
    // Claiming to be the victim's node: the owner is where it came from.
    let as_victim = |request| LockCommand::Client {
        owner: 100 << 16 | 1,
        request,
    };
    let foreign = LockOutput::Refused(Refusal::ForeignSession);
    for request in [
        Request::KeepAlive { session },
        Request::Release {
            session,
            lock: "v".into(),
            token: lease.token,
        },
        Request::Close { session },
        Request::Open { session },
    ] {
        let out = rogue.execute(as_victim(request.clone()), TIMEOUT).await;
        assert_eq!(out, Ok(foreign.clone()), "{request:?}");
    }
    // Choosing its own token, far above and then below the revision.
    let mine = 777;
    let open = LockCommand::Client {
        owner: rogue_id,
        request: Request::Open { session: mine },
    };
    assert_eq!(rogue.execute(open, TIMEOUT).await, Ok(LockOutput::Opened));
    for (n, token) in [1_000_000_000_000u64, 1].into_iter().enumerate() {
        victim.keep_alive().await.unwrap();
        let hinted = LockCommand::Hinted {
            owner: rogue_id,
            request: Request::Acquire {
                session: mine,
                lock: format!("t{n}"),
                request: n as u64 + 1,
                wait: true,
            },
            token,
        };
        assert_eq!(rogue.execute(hinted, DROPPED).await, Err(ClientError::Timeout));
    }

    // The victim still holds its lock, and a fresh acquire of the rogue's
    // lock names gets ordinary revision tokens.
    let held = victim.keep_alive().await.unwrap();
    assert_eq!(held, vec![("v".to_string(), lease.token)]);
    let other = lock_client(&config, 300 << 16 | 1);
    other.open().await.unwrap();
    let t = other.acquire("t0", Duration::from_secs(5)).await.unwrap();
    assert!(t.token < 1_000_000, "token {}", t.token);
    assert_alive(&mut cluster, dir.path());
    cluster.stop().await;
}

/// Sessions opened per principal: within the quota.
const PER_PRINCIPAL: usize = 125;
const PRINCIPALS: u32 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_vanishing_at_once_do_not_wedge_the_service() {
    const { assert!(PER_PRINCIPAL <= MAX_SESSIONS_PER_PRINCIPAL) };
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, config) = cluster(dir.path()).await;
    let ttl = config.lock_ttl();
    // Each principal's client opens its sessions one after another (a new
    // session id each time, the old ones left to expire); the last one of
    // principal 0 takes the lock.
    let opened = Instant::now(); // determinism: ok
    let tasks: Vec<_> = (0..PRINCIPALS)
        .map(|p| {
            let client = lock_client(&config, (1_000 + p) << 16 | 1);
            tokio::spawn(async move {
                client.open().await.unwrap();
                for _ in 1..PER_PRINCIPAL {
                    while client.reopen().await.is_err() {}
                }
                if p == 0 {
                    client.try_acquire("storm").await.unwrap();
                }
                client
            })
        })
        .collect();
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await.unwrap());
    }
    println!(
        "{} sessions opened in {:?}",
        PER_PRINCIPAL * PRINCIPALS as usize,
        opened.elapsed()
    );
    // Every client vanishes at once.
    drop(clients);
    let vanished = Instant::now(); // determinism: ok
    let bound = ttl + Duration::from_secs(5);
    let probe = lock_client(&config, 2_000 << 16 | 1);
    let granted = tokio::time::timeout(bound, async {
        loop {
            if probe.open().await.is_ok() {
                if let Ok(lease) = probe.acquire("storm", Duration::from_secs(2)).await {
                    return lease;
                }
            }
            let _ = probe.reopen().await;
        }
    })
    .await;
    let waited = vanished.elapsed();
    assert_alive(&mut cluster, dir.path());
    assert!(
        granted.is_ok(),
        "the lock was not granted within {bound:?} (TTL {ttl:?}) after 1,000 sessions vanished; node output in {}",
        dir.keep().display()
    );
    println!("lock granted again {waited:?} after 1,000 sessions vanished (TTL {ttl:?})");
    cluster.stop().await;
}
