//! File storage on a real disk: recovery, torn tails, corruption reports,
//! atomic rewrites.

use std::fs;

use std::path::Path;

use ringfence::env::{record, EnvError, NodeId};
use ringfence::real::{FileStorage, Identity};

fn member(id: NodeId) -> Identity {
    Identity::new("test-cluster", id)
}

/// A new member's storage in `dir`.
fn init(dir: &Path, id: NodeId) -> FileStorage {
    FileStorage::init(dir, &member(id)).unwrap()
}

/// The member's existing storage in `dir`, as a restart opens it.
fn reopen(dir: &Path, id: NodeId) -> Result<FileStorage, String> {
    FileStorage::open(dir, &member(id)).map_err(|e| e.to_string())
}

fn records(names: &[&str]) -> Vec<Vec<u8>> {
    names.iter().map(|n| n.as_bytes().to_vec()).collect()
}

#[tokio::test]
async fn synced_records_survive_a_restart_and_unsynced_ones_may_not() {
    let dir = tempfile::tempdir().unwrap();
    let storage = init(dir.path(), 1);
    assert_eq!(storage.load().unwrap(), Vec::<Vec<u8>>::new());
    storage.append(b"a").unwrap();
    storage.append(b"").unwrap();
    storage.sync().await.unwrap();
    storage.append(b"unsynced").unwrap();
    // The running node sees everything it appended.
    assert_eq!(storage.load().unwrap(), records(&["a", "", "unsynced"]));
    drop(storage);
    // A restart (a crash, for this implementation) keeps what was synced.
    let reopened = reopen(dir.path(), 1).unwrap();
    assert_eq!(reopened.load().unwrap(), records(&["a", ""]));
    // Another node's log in the same directory is separate.
    assert!(init(dir.path(), 2).load().unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_syncs_all_become_durable() {
    let dir = tempfile::tempdir().unwrap();
    let storage = init(dir.path(), 1);
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
    let mut got = reopen(dir.path(), 1).unwrap().load().unwrap();
    got.sort();
    let mut expected: Vec<Vec<u8>> = (0..32u32).map(|i| i.to_le_bytes().to_vec()).collect();
    expected.sort();
    assert_eq!(got, expected);
}

/// Three synced batches ("first", "second", "third"), one per sync; the
/// log's path and each batch's offset.
async fn three_batches(dir: &Path) -> (std::path::PathBuf, Vec<u64>) {
    let storage = init(dir, 1);
    let mut starts = Vec::new();
    for r in ["first", "second", "third"] {
        starts.push(fs::metadata(storage.path()).unwrap().len());
        storage.append(r.as_bytes()).unwrap();
        storage.sync().await.unwrap();
    }
    (storage.path().to_path_buf(), starts)
}

/// Appends `tail` to the file at `path`.
fn append_bytes(path: &Path, tail: &[u8]) {
    let mut bytes = fs::read(path).unwrap();
    bytes.extend_from_slice(tail);
    fs::write(path, &bytes).unwrap();
}

#[tokio::test]
async fn torn_zeroed_and_garbage_tails_are_dropped_and_truncated() {
    // A batch cut short, a zero-filled tail (typical after a power loss: the
    // size reached the disk, the data did not), and garbage.
    let mut torn = record::Batch::default();
    torn.push(b"fourth, never synced").unwrap();
    let mut torn = torn.seal(&mut record::Chain::default());
    torn.truncate(record::HEADER_BYTES + 3);
    let garbage: Vec<u8> = (0..300u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for tail in [torn, vec![0; 4096], garbage] {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = three_batches(dir.path()).await;
        let good_len = fs::metadata(&path).unwrap().len();
        append_bytes(&path, &tail);

        let storage = reopen(dir.path(), 1).unwrap();
        assert_eq!(storage.load().unwrap(), records(&["first", "second", "third"]));
        assert_eq!(fs::metadata(&path).unwrap().len(), good_len, "tail truncated");
        // New records land after the valid prefix, not after the garbage.
        storage.append(b"fifth").unwrap();
        storage.sync().await.unwrap();
        drop(storage);
        let storage = reopen(dir.path(), 1).unwrap();
        assert_eq!(storage.load().unwrap(), records(&["first", "second", "third", "fifth"]));
    }
}

/// The defect found on real processes: a flipped bit in a mid-log length
/// field made the record run past the end of the file, which recovery took
/// for a torn tail and truncated, dropping synced records.
#[tokio::test]
async fn a_flipped_length_bit_mid_log_is_refused_with_the_offset_and_nothing_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let (path, starts) = three_batches(dir.path()).await;
    let mut bytes = fs::read(&path).unwrap();
    // The high bit of the second batch's body length.
    bytes[starts[1] as usize + 27] ^= 0x80;
    fs::write(&path, &bytes).unwrap();

    let message = reopen(dir.path(), 1).err().expect("a corrupt log must not open");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains(&format!("byte offset {}", starts[1])), "{message}");
    assert!(message.contains("checksum"), "{message}");
    assert!(message.contains("--join"), "says what to do: {message}");
    // Nothing was truncated: the damage is for a person to look at.
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

#[tokio::test]
async fn a_flipped_bit_in_any_synced_batch_but_the_last_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, starts) = three_batches(dir.path()).await;
    let clean = fs::read(&path).unwrap();
    for byte in 0..starts[2] as usize {
        let mut bytes = clean.clone();
        bytes[byte] ^= 1 << (byte % 8);
        fs::write(&path, &bytes).unwrap();
        let err = FileStorage::open(dir.path(), &member(1)).err();
        let Some(EnvError::Storage(message)) = err else {
            panic!("flip at byte {byte} was not refused")
        };
        let batch = if byte < starts[1] as usize {
            starts[0]
        } else {
            starts[1]
        };
        assert!(message.contains(&format!("byte offset {batch}:")), "{message}");
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }
}

#[tokio::test]
async fn a_wiped_or_never_initialized_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let message = reopen(&dir.path().join("missing"), 1).err().unwrap();
    assert!(message.contains("no identity file"), "{message}");
    assert!(message.contains("--join"), "{message}");

    three_batches(dir.path()).await;
    for entry in fs::read_dir(dir.path()).unwrap() {
        fs::remove_file(entry.unwrap().path()).unwrap(); // wiped
    }
    let message = reopen(dir.path(), 1).err().unwrap();
    assert!(message.contains("no identity file"), "{message}");
    // Initializing it again is the operator's explicit choice.
    assert!(init(dir.path(), 1).load().unwrap().is_empty());
}

#[tokio::test]
async fn another_members_or_clusters_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    three_batches(dir.path()).await;
    let foreign = Identity::new("another-cluster", 1);
    for attempt in [
        FileStorage::open(dir.path(), &foreign),
        FileStorage::init(dir.path(), &foreign),
    ] {
        let message = attempt.err().unwrap().to_string();
        assert!(
            message.contains("belongs to member 1 of cluster \"test-cluster\""),
            "{message}"
        );
    }
    // Another member's log copied in under this member's name.
    fs::copy(dir.path().join("node-1.log"), dir.path().join("node-2.log")).unwrap();
    let message = FileStorage::init(dir.path(), &member(2)).err().unwrap().to_string();
    assert!(message.contains("without an identity file"), "{message}");
}

#[tokio::test]
async fn rewrite_replaces_the_log_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let storage = init(dir.path(), 1);
    for r in ["e1", "e2", "e3"] {
        storage.append(r.as_bytes()).unwrap();
    }
    storage.sync().await.unwrap();
    storage.append(b"unsynced, replaced too").unwrap();
    storage.rewrite(records(&["snapshot", "e3"])).await.unwrap();
    assert_eq!(storage.load().unwrap(), records(&["snapshot", "e3"]));
    // Appends after a rewrite go to the new file and continue its chain.
    storage.append(b"e4").unwrap();
    storage.sync().await.unwrap();
    let path = storage.path().to_path_buf();
    drop(storage);
    let storage = reopen(dir.path(), 1).unwrap();
    assert_eq!(storage.load().unwrap(), records(&["snapshot", "e3", "e4"]));
    drop(storage);

    // A crash during a rewrite, before the rename, leaves a temp file: the
    // old log is still whole and the temp file is discarded on open.
    let tmp = path.with_file_name("node-1.log.tmp");
    fs::write(&tmp, b"half a snapshot").unwrap();
    let storage = reopen(dir.path(), 1).unwrap();
    assert!(!tmp.exists());
    assert_eq!(storage.load().unwrap(), records(&["snapshot", "e3", "e4"]));
    // No temp file is left behind by a completed rewrite either.
    storage.rewrite(records(&["only"])).await.unwrap();
    assert!(!tmp.exists());
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, vec!["node-1.identity", "node-1.log", "node-1.synced"]);
}

/// What an attack on a local cluster did: a log cut back at a batch
/// boundary (or emptied, or zeroed from one) looked like a shorter log to
/// the file alone, and a lock service granted tokens again. The
/// watermark refuses it, and the file is left for a person to look at.
#[tokio::test]
async fn a_log_cut_or_zeroed_at_a_batch_boundary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, starts) = three_batches(dir.path()).await;
    let clean = fs::read(&path).unwrap();
    for &cut in &starts {
        for zeroed in [0, clean.len() - cut as usize] {
            let mut bytes = clean[..cut as usize].to_vec();
            bytes.resize(cut as usize + zeroed, 0);
            fs::write(&path, &bytes).unwrap();
            let message = reopen(dir.path(), 1)
                .err()
                .expect("a log that lost synced batches must not open");
            assert!(message.contains("watermark says 3 were synced"), "{message}");
            assert!(message.contains("--join"), "says what to do: {message}");
            assert_eq!(fs::read(&path).unwrap(), bytes);
        }
    }
    // Whole again, it opens.
    fs::write(&path, &clean).unwrap();
    assert_eq!(
        reopen(dir.path(), 1).unwrap().load().unwrap(),
        records(&["first", "second", "third"])
    );
}

/// No later batch vouches for the last one: only the watermark tells a
/// flipped bit there from a torn write.
#[tokio::test]
async fn a_flipped_bit_in_the_last_synced_batch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, starts) = three_batches(dir.path()).await;
    let clean = fs::read(&path).unwrap();
    for byte in starts[2] as usize..clean.len() {
        let mut bytes = clean.clone();
        bytes[byte] ^= 1 << (byte % 8);
        fs::write(&path, &bytes).unwrap();
        let message = reopen(dir.path(), 1)
            .err()
            .expect("flip in the last batch must not open");
        assert!(message.contains("watermark"), "byte {byte}: {message}");
    }
}

/// After a compaction the new log continues the old one's numbering, so
/// the watermark still holds; cutting the compacted log is refused too.
#[tokio::test]
async fn the_watermark_holds_across_a_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let storage = init(dir.path(), 1);
    for r in ["e1", "e2"] {
        storage.append(r.as_bytes()).unwrap();
        storage.sync().await.unwrap();
    }
    storage.rewrite(records(&["snapshot"])).await.unwrap();
    storage.append(b"e3").unwrap();
    storage.sync().await.unwrap();
    let path = storage.path().to_path_buf();
    drop(storage);
    assert_eq!(
        reopen(dir.path(), 1).unwrap().load().unwrap(),
        records(&["snapshot", "e3"])
    );
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 6 - 4 - record::HEADER_BYTES]).unwrap();
    let message = reopen(dir.path(), 1)
        .err()
        .expect("the compacted log lost its last batch");
    assert!(message.contains("watermark"), "{message}");
}

#[tokio::test]
async fn a_missing_or_damaged_watermark_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(three_batches(dir.path()).await);
    let watermark = dir.path().join("node-1.synced");
    let clean = fs::read(&watermark).unwrap();
    let mut flipped = clean.clone();
    flipped[9] ^= 1;
    fs::write(&watermark, &flipped).unwrap();
    let message = reopen(dir.path(), 1)
        .err()
        .expect("a damaged watermark must not be trusted");
    assert!(message.contains("checksum"), "{message}");
    fs::remove_file(&watermark).unwrap();
    let message = reopen(dir.path(), 1)
        .err()
        .expect("a missing watermark must not be trusted");
    assert!(message.contains("sync watermark"), "{message}");
    fs::write(&watermark, &clean).unwrap();
    assert!(reopen(dir.path(), 1).is_ok());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Recovery from whatever bytes follow a valid log never panics and
    /// never loses the proven records: it yields them (and maybe more) or
    /// an error.
    #[test]
    fn recovery_never_panics_on_arbitrary_files(
        bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        valid_prefix in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..16), 0..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        drop(init(dir.path(), 1));
        let (mut file, _) = record::encode_log(&valid_prefix, record::Chain::default()).unwrap();
        file.extend_from_slice(&bytes);
        fs::write(dir.path().join("node-1.log"), &file).unwrap();
        if let Ok(storage) = FileStorage::open(dir.path(), &member(1)) {
            let got = storage.load().unwrap();
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
        cluster_id: "test-cluster".to_string(),
        init: true,
        limits: Default::default(),
    };
    let env = RealEnv::start_on(config.clone(), listener).unwrap();
    env.append(b"term=3").unwrap();
    env.sync().await.unwrap();
    env.shutdown();
    drop(env);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let restart = NodeConfig { init: false, ..config };
    let env = RealEnv::start_on(restart, listener).unwrap();
    assert_eq!(env.load().unwrap(), records(&["term=3"]));
    let before = env.now();
    env.sleep(std::time::Duration::from_millis(10)).await;
    assert!(env.now() >= before + std::time::Duration::from_millis(10));
}

/// Node processes: one whose synced log has a flipped bit refuses to start
/// and says where and what to do; one whose data directory was wiped
/// refuses to rejoin silently; the two others keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_processes_refuse_a_corrupt_log_and_a_wiped_directory() {
    use ringfence::real::local::LocalCluster;

    let dir = tempfile::tempdir().unwrap();
    let config = LocalCluster::free_ports_config(3, dir.path()).unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_ringfence"));
    let mut cluster = LocalCluster::start(exe, dir.path(), config).await.unwrap();
    let log = cluster.config().node_dir(1).join("lock").join("node-1.log");
    // Wait until the lock replica has synced a batch that a later one proves.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let bytes = fs::read(&log).unwrap();
        if record::decode(&bytes).unwrap().unproven_from > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no second batch in {}",
            log.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    cluster.kill(1).await.unwrap();
    let mut bytes = fs::read(&log).unwrap();
    bytes[record::HEADER_BYTES - 1] ^= 0x10; // in the first batch's header
    fs::write(&log, &bytes).unwrap();
    let err = cluster.restart(1).await.unwrap_err().to_string();
    assert!(err.contains("node 1 exited"), "{err}");
    let out = fs::read_to_string(dir.path().join("node-1.out")).unwrap();
    assert!(out.contains(&log.display().to_string()), "{out}");
    assert!(out.contains("byte offset 0: batch header checksum mismatch"), "{out}");
    assert_eq!(fs::read(&log).unwrap(), bytes, "nothing truncated");

    cluster.kill(2).await.unwrap();
    fs::remove_dir_all(cluster.config().node_dir(2)).unwrap();
    let err = cluster.restart(2).await.unwrap_err().to_string();
    assert!(err.contains("node 2 exited"), "{err}");
    let out = fs::read_to_string(dir.path().join("node-2.out")).unwrap();
    assert!(out.contains("no identity file"), "{out}");
    cluster.stop().await;
}
