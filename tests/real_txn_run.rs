//! `TxnClient::run` against an in-process 3-node cluster: contending
//! transfers all commit through retries (no-wait locking aborts most of
//! them on the first try), money is conserved, and a body that fails
//! commits nothing; log commands forged by a client change nothing.

use std::time::Duration;

use ringfence::env::{codec, Env};
use ringfence::log::{Wire, WireOf};
use ringfence::real::embedded::EmbeddedCluster;
use ringfence::real::RealEnv;
use ringfence::txn::bank::{account_key, audit, decode_balance, encode_balance, transfer, INITIAL};
use ringfence::txn::client::RunError;
use ringfence::txn::replicated::{Command, CoordMachine};
use ringfence::txn::{AbortReason, CoordMsg, Msg, Outcome};

const ACCOUNTS: u32 = 3;
const TRANSFERS: u32 = 9;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contending_transfers_all_commit_and_a_failed_body_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EmbeddedCluster::start(dir.path(), 3).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..TRANSFERS {
        let mut client = cluster.txn_client();
        tasks.push(tokio::spawn(async move {
            let (from, to) = (account_key(i % ACCOUNTS), account_key((i + 1) % ACCOUNTS));
            let mut bodies = 0;
            let result = client
                .run(|tx| {
                    bodies += 1;
                    let (from, to) = (from.clone(), to.clone());
                    async move {
                        let a = decode_balance(tx.get(&from).await?);
                        let b = decode_balance(tx.get(&to).await?);
                        tx.put(&from, encode_balance(a - 1)).await?;
                        tx.put(&to, encode_balance(b + 1)).await?;
                        Ok::<_, RunError>(())
                    }
                })
                .await;
            (result, bodies)
        }));
    }
    let mut retried = 0;
    for task in tasks {
        let (result, bodies) = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(result, Ok(()));
        retried += u32::from(bodies > 1);
    }
    println!("{retried} of {TRANSFERS} transfers retried after an abort");

    let mut client = cluster.txn_client();
    let balances = audit(&mut client, ACCOUNTS).await.unwrap();
    assert_eq!(balances.iter().sum::<i64>(), INITIAL * i64::from(ACCOUNTS));
    // Every account sent and received three transfers of 1.
    assert_eq!(balances, vec![INITIAL; ACCOUNTS as usize]);

    let failed = client
        .run(|tx| async move {
            tx.put(&account_key(0), encode_balance(-1)).await?;
            Err::<(), _>(RunError::Failed("changed my mind"))
        })
        .await;
    assert_eq!(failed, Err(RunError::Failed("changed my mind")));
    assert_eq!(audit(&mut client, 1).await.unwrap(), vec![INITIAL]);

    // To itself, or a negative amount: no money is made.
    assert_eq!(transfer(&mut client, 0, 0, 5).await.unwrap(), Outcome::Committed);
    assert!(matches!(
        transfer(&mut client, 0, 1, -5).await.unwrap(),
        Outcome::Aborted(_)
    ));
    assert_eq!(audit(&mut client, 2).await.unwrap(), vec![INITIAL, INITIAL]);
}

/// The coordinators' log takes commands from its own leader only: a client
/// that sends the group log commands itself (abort someone else's
/// transaction, commit it without votes) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_coordinator_log_commands_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EmbeddedCluster::start(dir.path(), 3).await.unwrap();
    let config = cluster.cluster_config();
    let forger = RealEnv::client(cluster.client_credentials(), &config.txn_nodes());
    let forge = |seq: u64, command: Command| {
        let wire: WireOf<CoordMachine> = Wire::Command {
            client: 7,
            seq,
            command,
        };
        codec::encode(&Msg::Coord(CoordMsg::Log(codec::encode(&wire).unwrap()))).unwrap()
    };

    let mut client = cluster.txn_client();
    let mut txn = client.begin().await.unwrap();
    client
        .put(&mut txn, &account_key(0), encode_balance(INITIAL - 1))
        .await
        .unwrap();
    client
        .put(&mut txn, &account_key(1), encode_balance(INITIAL + 1))
        .await
        .unwrap();
    let victim = txn.id;
    // Forget would cover the abort's tracks: the abort alone shows the hole.
    let forged = [
        Command::Commit {
            txn: victim,
            votes: vec![],
        },
        Command::Abort {
            txn: victim,
            reason: AbortReason::PrepareTimeout,
        },
    ];
    for (seq, command) in (1..).zip(forged) {
        let bytes = forge(seq, command);
        for &coordinator in &config.coordinators() {
            forger.send(coordinator, bytes.clone()).await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let outcome = tokio::time::timeout(Duration::from_secs(20), client.commit(txn)).await;
    assert!(
        matches!(outcome, Ok(Ok(Outcome::Committed))),
        "the forged abort decided the transaction: {outcome:?}"
    );
    assert_eq!(audit(&mut client, 2).await.unwrap(), vec![INITIAL - 1, INITIAL + 1]);
    cluster.shutdown().await;
}
