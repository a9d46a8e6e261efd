//! File storage on a real disk: recovery, torn tails, corruption reports,
//! atomic rewrites.

use std::fs;

use ringfence::env::{record, EnvError};
use ringfence::real::FileStorage;

fn records(names: &[&str]) -> Vec<Vec<u8>> {
    names.iter().map(|n| n.as_bytes().to_vec()).collect()
}

#[tokio::test]
async fn synced_records_survive_a_restart_and_unsynced_ones_may_not() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FileStorage::open(dir.path(), 1).unwrap();
    assert_eq!(storage.load().unwrap(), Vec::<Vec<u8>>::new());
    storage.append(b"a").unwrap();
    storage.append(b"").unwrap();
    storage.sync().await.unwrap();
    storage.append(b"unsynced").unwrap();
    // The running node sees everything it appended.
    assert_eq!(storage.load().unwrap(), records(&["a", "", "unsynced"]));
    drop(storage);
    // A restart (a crash, for this implementation) keeps what was synced.
    let reopened = FileStorage::open(dir.path(), 1).unwrap();
    assert_eq!(reopened.load().unwrap(), records(&["a", ""]));
    // Another node's log in the same directory is separate.
    assert!(FileStorage::open(dir.path(), 2).unwrap().load().unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_syncs_all_become_durable() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FileStorage::open(dir.path(), 1).unwrap();
    let tasks: Vec<_> = (0..32u32)
        .map(|i| {
            let storage = storage.clone();
            tokio::spawn(async move {
                storage.append(&i.to_le_bytes()).unwrap();
                storage.sync().await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let mut got = FileStorage::open(dir.path(), 1).unwrap().load().unwrap();
    got.sort();
    let mut expected: Vec<Vec<u8>> = (0..32u32).map(|i| i.to_le_bytes().to_vec()).collect();
    expected.sort();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn a_torn_tail_is_dropped_and_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FileStorage::open(dir.path(), 1).unwrap();
    storage.append(b"first").unwrap();
    storage.append(b"second").unwrap();
    storage.sync().await.unwrap();
    let path = storage.path().to_path_buf();
    drop(storage);
    let good_len = fs::metadata(&path).unwrap().len();
    // A crash in the middle of writing a third record: header and a bit.
    let mut torn = Vec::new();
    record::encode(b"third, never synced", &mut torn);
    torn.truncate(record::HEADER_BYTES + 3);
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(&torn);
    fs::write(&path, &bytes).unwrap();

    let storage = FileStorage::open(dir.path(), 1).unwrap();
    assert_eq!(storage.load().unwrap(), records(&["first", "second"]));
    assert_eq!(fs::metadata(&path).unwrap().len(), good_len, "tail truncated");
    // New records land after the valid prefix, not after the garbage.
    storage.append(b"fourth").unwrap();
    storage.sync().await.unwrap();
    drop(storage);
    let storage = FileStorage::open(dir.path(), 1).unwrap();
    assert_eq!(storage.load().unwrap(), records(&["first", "second", "fourth"]));
}

#[tokio::test]
async fn damage_before_the_tail_names_the_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FileStorage::open(dir.path(), 1).unwrap();
    for r in ["first", "second", "third"] {
        storage.append(r.as_bytes()).unwrap();
    }
    storage.sync().await.unwrap();
    let path = storage.path().to_path_buf();
    drop(storage);
    let mut bytes = fs::read(&path).unwrap();
    let second = record::HEADER_BYTES + "first".len();
    bytes[second + record::HEADER_BYTES] ^= 0xff; // a bit flip in "second"
    fs::write(&path, &bytes).unwrap();

    let err = FileStorage::open(dir.path(), 1).unwrap().load().unwrap_err();
    let EnvError::Storage(message) = err else {
        panic!("expected a storage error, got {err:?}")
    };
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains(&format!("byte offset {second}")), "{message}");
    assert!(message.contains("checksum"), "{message}");
    // Nothing was truncated: the damage is for a person to look at.
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

#[tokio::test]
async fn rewrite_replaces_the_log_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FileStorage::open(dir.path(), 1).unwrap();
    for r in ["e1", "e2", "e3"] {
        storage.append(r.as_bytes()).unwrap();
    }
    storage.sync().await.unwrap();
    storage.append(b"unsynced, replaced too").unwrap();
    storage.rewrite(records(&["snapshot", "e3"])).await.unwrap();
    assert_eq!(storage.load().unwrap(), records(&["snapshot", "e3"]));
    // Appends after a rewrite go to the new file.
    storage.append(b"e4").unwrap();
    storage.sync().await.unwrap();
    let path = storage.path().to_path_buf();
    drop(storage);
    let storage = FileStorage::open(dir.path(), 1).unwrap();
    assert_eq!(storage.load().unwrap(), records(&["snapshot", "e3", "e4"]));
    drop(storage);

    // A crash during a rewrite, before the rename, leaves a temp file: the
    // old log is still whole and the temp file is discarded on open.
    let tmp = path.with_file_name("node-1.log.tmp");
    fs::write(&tmp, b"half a snapshot").unwrap();
    let storage = FileStorage::open(dir.path(), 1).unwrap();
    assert!(!tmp.exists());
    assert_eq!(storage.load().unwrap(), records(&["snapshot", "e3", "e4"]));
    // No temp file is left behind by a completed rewrite either.
    storage.rewrite(records(&["only"])).await.unwrap();
    assert!(!tmp.exists());
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("node-1.log")]);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Recovery from whatever bytes the file holds never panics: it yields
    /// records or an error.
    #[test]
    fn recovery_never_panics_on_arbitrary_files(
        bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        valid_prefix in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..16), 0..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut file = Vec::new();
        for r in &valid_prefix {
            record::encode(r, &mut file);
        }
        file.extend_from_slice(&bytes);
        fs::write(dir.path().join("node-1.log"), &file).unwrap();
        let storage = FileStorage::open(dir.path(), 1).unwrap();
        if let Ok(got) = storage.load() {
            proptest::prop_assert!(got.len() >= valid_prefix.len());
            proptest::prop_assert_eq!(&got[..valid_prefix.len()], &valid_prefix[..]);
        }
    }
}

/// The same storage through the `Env` trait, as a protocol uses it, across
/// a node restart on the same data directory.
#[tokio::test]
async fn a_node_env_recovers_its_log_after_restart() {
    use ringfence::env::Env;
    use ringfence::real::{NodeConfig, RealEnv};

    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = NodeConfig {
        id: 1,
        peers: [(1, listener.local_addr().unwrap())].into(),
        data_dir: dir.path().to_path_buf(),
        secret: ringfence::real::auth::ClusterSecret::generate(),
    };
    let env = RealEnv::start_on(config.clone(), listener).unwrap();
    env.append(b"term=3").unwrap();
    env.sync().await.unwrap();
    env.shutdown();
    drop(env);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let env = RealEnv::start_on(config, listener).unwrap();
    assert_eq!(env.load().unwrap(), records(&["term=3"]));
    let before = env.now();
    env.sleep(std::time::Duration::from_millis(10)).await;
    assert!(env.now() >= before + std::time::Duration::from_millis(10));
}
