//! Money transfers as transactions on an in-process 3-node cluster:
//! `cargo run --example transfer`.
//!
//! Six transfers run at once over three accounts; no-wait locking aborts
//! most first attempts, and `TxnClient::run` retries them with backoff
//! until each commits. An audit then sees every unit of money.

use ringfence::real::embedded::EmbeddedCluster;
use ringfence::txn::bank::{account_key, audit, decode_balance, encode_balance, INITIAL};
use ringfence::txn::client::RunError;

/// Runs the example (also run by `cargo test`, `tests/examples.rs`).
#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let dir = std::env::temp_dir().join(format!("ringfence-example-transfer-{}", std::process::id()));
    let cluster = EmbeddedCluster::start(&dir, 3).await?;

    let mut tasks = Vec::new();
    for i in 0..6u32 {
        let mut client = cluster.txn_client();
        let (from, to) = (account_key(i % 3), account_key((i + 1) % 3));
        tasks.push(tokio::spawn(async move {
            client
                .run(|tx| {
                    let (from, to) = (from.clone(), to.clone());
                    async move {
                        let a = decode_balance(tx.get(&from).await?);
                        if a < 10 {
                            return Err(RunError::Failed(format!("{from} holds only {a}")));
                        }
                        let b = decode_balance(tx.get(&to).await?);
                        tx.put(&from, encode_balance(a - 10)).await?;
                        tx.put(&to, encode_balance(b + 10)).await?;
                        Ok(())
                    }
                })
                .await
        }));
    }
    for task in tasks {
        task.await??;
    }
    let balances = audit(&mut cluster.txn_client(), 3).await?;
    println!("balances after six transfers: {balances:?}");
    assert_eq!(balances.iter().sum::<i64>(), 3 * INITIAL);

    cluster.shutdown().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
