//! A tokio service that guards a file with the lock service and a fencing
//! check: `cargo run --example fenced_file`.
//!
//! It starts a 3-replica lock service on loopback inside this process (the
//! same `lock::server::run` that `ringfence node` runs, with fsync'd files
//! in a temporary directory), then two workers append to `ledger.txt`:
//!
//! - each worker takes the lock `ledger`, and before every append passes
//!   its fencing token through a [`FencedResource`], which refuses a token
//!   lower than one it has accepted;
//! - worker `slow` stalls for longer than its lease after taking the lock
//!   (a GC pause), meanwhile the lease expires and `fast` takes the lock
//!   with a higher token and appends; when `slow` wakes up, still believing
//!   it holds the lock, its append is refused by the fence.
//!
//! To guard a file on a running cluster instead, build the client from the
//! cluster file: `ClusterConfig::load(path)` gives the servers
//! (`lock_servers`), the client settings (`lock_client_config`) and the
//! credentials (`client_env`).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringfence::env::NodeId;
use ringfence::lock::{self, ClientConfig, FencedResource, LockClient, ServerConfig, Token};
use ringfence::log::membership::founding;
use ringfence::observe::Ignore;
use ringfence::real::auth::{ClientCredentials, ClusterSecret, FIRST_PRINCIPAL};
use ringfence::real::{NodeConfig, RealEnv};
use tokio::net::TcpListener;

const TTL: Duration = Duration::from_millis(1000);

/// A file that only takes appends under a current fencing token.
struct FencedFile {
    path: PathBuf,
    fence: FencedResource,
}

impl FencedFile {
    fn append(&mut self, token: Token, line: &str) -> Result<(), String> {
        let next = self.fence.value() + 1;
        self.fence
            .write(token, next)
            .map_err(|stale| format!("refused: {stale:?}"))?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| e.to_string())?;
        writeln!(file, "token {token}: {line}").map_err(|e| e.to_string())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("ringfence-example-{}", std::process::id()));
    // The cluster secret makes the replicas members; a client proves
    // itself with the key of its principal, derived from the secret.
    let secret = ClusterSecret::generate();
    let credentials = secret.client_credentials(FIRST_PRINCIPAL)?;
    let servers = start_lock_service(&dir, &secret).await?;
    let file = Arc::new(Mutex::new(FencedFile {
        path: dir.join("ledger.txt"),
        fence: FencedResource::new(),
    }));

    // `fast` asks for the lock once `slow` holds it.
    let (slow_holds, slow_has_it) = tokio::sync::oneshot::channel();
    let slow = tokio::spawn(worker(
        "slow",
        credentials.clone(),
        servers.clone(),
        file.clone(),
        Duration::from_millis(1500),
        Some(slow_holds),
    ));
    slow_has_it.await?;
    let fast = tokio::spawn(worker(
        "fast",
        credentials,
        servers.clone(),
        file.clone(),
        Duration::ZERO,
        None,
    ));
    slow.await??;
    fast.await??;

    let ledger = std::fs::read_to_string(dir.join("ledger.txt"))?;
    println!("\n{} now holds:\n{ledger}", dir.join("ledger.txt").display());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Takes the lock (says so on `holds`), stalls for `pause`, then tries to
/// append twice.
async fn worker(
    name: &'static str,
    credentials: ClientCredentials,
    servers: BTreeMap<NodeId, SocketAddr>,
    file: Arc<Mutex<FencedFile>>,
    pause: Duration,
    holds: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), String> {
    let env = RealEnv::client(&credentials, &servers);
    // The TTL is the servers'; the client learns it when it opens.
    let client = LockClient::new(env, servers.keys().copied().collect(), ClientConfig::default());
    client.open().await.map_err(|e| e.to_string())?;
    let lease = client
        .acquire("ledger", Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    println!("{name}: got the lock with token {}", lease.token);
    if let Some(holds) = holds {
        let _ = holds.send(());
    }
    if !pause.is_zero() {
        println!("{name}: stalls for {pause:?} (its lease is {TTL:?})");
        tokio::time::sleep(pause).await;
    }
    for n in 1..=2 {
        // A real holder checks its lease first; a paused one cannot know
        // how long it was gone, which is why the fence exists.
        let outcome = file.lock().unwrap().append(lease.token, &format!("{name} entry {n}"));
        match outcome {
            Ok(()) => println!("{name}: appended entry {n} with token {}", lease.token),
            Err(e) => println!("{name}: append with token {} {e}", lease.token),
        }
    }
    match client.release(&lease).await {
        Ok(()) => println!("{name}: released"),
        Err(e) => println!("{name}: release failed ({e}): the lease had expired"),
    }
    Ok(())
}

/// Three lock replicas on loopback ports, in this process.
async fn start_lock_service(dir: &Path, secret: &ClusterSecret) -> std::io::Result<BTreeMap<NodeId, SocketAddr>> {
    let mut listeners = BTreeMap::new();
    for id in 1..=3 {
        listeners.insert(id, TcpListener::bind("127.0.0.1:0").await?);
    }
    let peers: BTreeMap<NodeId, SocketAddr> = listeners
        .iter()
        .map(|(&id, l)| Ok((id, l.local_addr()?)))
        .collect::<std::io::Result<_>>()?;
    for (id, listener) in listeners {
        let env = RealEnv::start_on(
            NodeConfig {
                id,
                peers: peers.clone(),
                data_dir: dir.join(format!("node-{id}")),
                secret: secret.clone(),
                cluster_id: "example".to_string(),
                init: true,
                limits: Default::default(),
            },
            listener,
        )?;
        let config = ServerConfig {
            ttl: TTL,
            ..ServerConfig::default()
        };
        let members = peers.keys().copied().collect();
        tokio::spawn(lock::server::run(env, founding(members), config, Arc::new(Ignore)));
    }
    Ok(peers)
}
