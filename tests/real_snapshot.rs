//! A snapshot far larger than a message or a log record, on real nodes:
//! three replicas of the plain log over TCP with fsync'd files grow 80 MiB
//! of state (past the 64 MiB a record may hold) and
//! compact it; a fourth node joins on an empty disk (`Boot::Join`) and an
//! operator adds it (`log::admin::add_member`). Its promotion needs its log
//! to match the leader's, which it can only reach by installing the
//! snapshot: about 160 chunks of 512 KiB, written to its disk as records
//! of a chunk each.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringfence::env::NodeId;
use ringfence::log::admin;
use ringfence::log::client::Client;
use ringfence::log::membership::{founding, Boot};
use ringfence::log::service;
use ringfence::log::{Config, Event, Kv, KvCommand, KvOutput};
use ringfence::real::auth::{ClusterSecret, FIRST_PRINCIPAL};
use ringfence::real::{NodeConfig, RealEnv};
use tokio::net::TcpListener;

/// State the founders grow before the new node joins.
const STATE_BYTES: usize = 80 << 20;
/// Bytes of each key (a put stays within a command's 8 KiB).
const KEY_BYTES: usize = 7_500;
/// Clients putting keys at once.
const WRITERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_installs_an_80_mib_snapshot() {
    let ids: Vec<NodeId> = vec![1, 2, 3, 4];
    let mut listeners = BTreeMap::new();
    for &id in &ids {
        listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let peers: BTreeMap<NodeId, SocketAddr> = listeners.iter().map(|(&id, l)| (id, l.local_addr().unwrap())).collect();
    let dir = tempfile::tempdir().unwrap();
    let secret = ClusterSecret::generate();
    let config = Config {
        // Compacts well before the end, so the whole state is in the
        // snapshot the new node needs.
        snapshot_every: 1_024,
        ..Config::default()
    };
    // The largest snapshot any replica installed.
    let installed = Arc::new(AtomicU64::new(0));
    let restored = installed.clone();
    let observer = Arc::new(move |_node, _now, event: &Event| {
        if let Event::Restored { index, .. } = event {
            restored.fetch_max(*index, Ordering::SeqCst);
        }
    });
    let start = |id: NodeId, listener: TcpListener, boot: Boot| {
        let node = NodeConfig {
            id,
            peers: peers.clone(),
            data_dir: dir.path().join(format!("n{id}")),
            secret: secret.clone(),
            cluster_id: "snapshot".to_string(),
            init: true,
            limits: Default::default(),
        };
        let env = RealEnv::start_on(node, listener).unwrap();
        let group = match boot {
            Boot::Genesis(founders) => founding(founders),
            Boot::Join => (vec![1, 2, 3, 4], Boot::Join),
        };
        let task = service::run_plain::<RealEnv, Kv>(env.clone(), group, config.clone(), observer.clone());
        tokio::spawn(task);
        env
    };
    let mut envs = Vec::new();
    for id in [1, 2, 3] {
        let listener = listeners.remove(&id).unwrap();
        envs.push(start(id, listener, Boot::Genesis(vec![1, 2, 3])));
    }

    let credentials = secret.client_credentials(FIRST_PRINCIPAL).unwrap();
    let founders: BTreeMap<NodeId, SocketAddr> =
        peers.iter().filter(|(&id, _)| id <= 3).map(|(&i, &a)| (i, a)).collect();
    let keys = STATE_BYTES / KEY_BYTES + 1;
    let began = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let env = RealEnv::client(&credentials, &founders);
            tokio::spawn(async move {
                let mut client = Client::<RealEnv, Kv>::new(env, vec![1, 2, 3]);
                for k in (w..keys).step_by(WRITERS) {
                    let command = KvCommand::Put {
                        key: key(k),
                        value: k as u64,
                    };
                    let out = client.execute(command, Duration::from_secs(30)).await;
                    assert_eq!(out, Ok(KvOutput::Ok), "put {k}");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    println!(
        "{keys} keys ({} MiB) put in {:?}",
        (keys * KEY_BYTES) >> 20,
        began.elapsed()
    );

    let joined = Instant::now();
    envs.push(start(4, listeners.remove(&4).unwrap(), Boot::Join));
    let operator = RealEnv::client(&secret.operator_credentials(), &founders);
    let mut admin_client = Client::<RealEnv, Kv>::new(operator, vec![1, 2, 3]);
    let status = admin::add_member(&mut admin_client, 4, Duration::from_secs(120))
        .await
        .expect("node 4 added and promoted");
    let took = joined.elapsed();
    assert!(status.membership.voters.contains_key(&4), "{status:?}");
    let index = installed.load(Ordering::SeqCst);
    assert!(
        index > keys as u64 / 2,
        "node 4 caught up from a snapshot, not from entries ({index})"
    );
    // A snapshot had to fit one 64 MiB record: the last one taken held
    // the state of index 8,202, and the rest came as entries.
    assert!(
        index as usize * KEY_BYTES > 64 << 20,
        "the snapshot node 4 installed holds more state than one 64 MiB record ({index} entries)"
    );
    let log = dir.path().join("n4").join("node-4.log");
    let size = std::fs::metadata(&log).unwrap().len();
    println!("node 4 caught up and voted {took:?} after it started; its log holds {size} bytes");
    assert!(
        size as usize > STATE_BYTES,
        "the snapshot is on node 4's disk: {size} bytes"
    );
    for env in envs {
        env.shutdown();
    }
}

/// Key `k`: its number, padded to [`KEY_BYTES`].
fn key(k: usize) -> String {
    format!("{k:08}{}", "x".repeat(KEY_BYTES - 8))
}
