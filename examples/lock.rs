//! A fenced lock on an in-process 3-node cluster: `cargo run --example lock`.
//!
//! Two tasks share one client (one session); each takes the lock as a
//! guard, which renews itself while held and is released when dropped,
//! and writes a fenced register with the guard's token.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringfence::lock::FencedResource;
use ringfence::real::embedded::EmbeddedCluster;

/// Runs the example (also run by `cargo test`, `tests/examples.rs`).
#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let dir = std::env::temp_dir().join(format!("ringfence-example-lock-{}", std::process::id()));
    let cluster = EmbeddedCluster::start(&dir, 3).await?;
    let locks = cluster.lock_client();
    locks.open().await?; // learns the servers' TTL
    let ledger = Arc::new(Mutex::new(FencedResource::new()));

    let mut tasks = Vec::new();
    for name in ["alice", "bob"] {
        let (locks, ledger) = (locks.clone(), ledger.clone());
        tasks.push(tokio::spawn(async move {
            let guard = locks.lock("ledger", Duration::from_secs(5)).await?;
            let value = guard.read(&mut ledger.lock().unwrap())?;
            guard.write(&mut ledger.lock().unwrap(), value + 1)?;
            println!("{name}: wrote {} with token {}", value + 1, guard.token());
            guard.release().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    assert_eq!(ledger.lock().unwrap().value(), 2);

    cluster.shutdown().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
