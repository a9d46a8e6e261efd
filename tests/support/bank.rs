//! Bank clients for the real-process tests: transfers and audits while
//! the cluster is attacked, judged by the total every audit saw.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringfence::real::cluster::ClusterConfig;
use ringfence::txn::{bank, Outcome};

/// Transfers between random accounts of `accounts`, and an audit every
/// fourth operation, while `running()`; returns the transfers that
/// committed and every committed audit.
pub async fn banker(id: u32, config: ClusterConfig, accounts: u32, running: impl Fn() -> bool) -> (u64, Vec<Vec<i64>>) {
    let env = config.client_env(&config.txn_nodes()).unwrap();
    let mut txc = config.txn_client(env);
    let mut rng = ChaCha8Rng::from_entropy(); // determinism: ok
    let (mut committed, mut audits) = (0, Vec::new());
    let mut op = u64::from(id);
    while running() {
        op += 1;
        if op % 4 == 0 {
            if let Ok(balances) = bank::audit(&mut txc, accounts).await {
                audits.push(balances);
            }
            continue;
        }
        let from = rng.gen_range(0..accounts);
        let to = (from + rng.gen_range(1..accounts)) % accounts;
        if let Ok(Outcome::Committed) = bank::transfer(&mut txc, from, to, rng.gen_range(1..20)).await {
            committed += 1;
        }
    }
    (committed, audits)
}

/// Every node back: an audit that commits within `bound`.
pub async fn final_audit(config: &ClusterConfig, accounts: u32, bound: Duration) -> Vec<i64> {
    let env = config.client_env(&config.txn_nodes()).unwrap();
    let mut txc = config.txn_client(env);
    tokio::time::timeout(bound, async {
        loop {
            if let Ok(balances) = bank::audit(&mut txc, accounts).await {
                return balances;
            }
        }
    })
    .await
    .expect("a final audit commits once every node is back")
}

/// Every audit saw the opening total of `accounts` accounts.
pub fn assert_conserved(audits: &[Vec<i64>], accounts: u32) {
    let total = i64::from(accounts) * bank::INITIAL;
    for balances in audits {
        assert_eq!(balances.iter().sum::<i64>(), total, "an audit saw {balances:?}");
    }
}
