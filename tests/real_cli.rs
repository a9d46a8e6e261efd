//! The `ringfence` binary end to end: a loopback cluster of node processes,
//! then the lock and bank commands against it, and clear errors for bad
//! input.

use std::path::Path;
use std::process::{Command, Output};

use ringfence::real::local::LocalCluster;

fn ringfence(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_bank_commands_work_against_a_loopback_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalCluster::free_ports_config(3, dir.path()).unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_ringfence"));
    let mut cluster = LocalCluster::start(exe, dir.path(), config).await.unwrap();
    let file = cluster.config_path().to_str().unwrap().to_string();

    let held = ringfence(&[
        "lock",
        "acquire",
        "demo",
        "--config",
        &file,
        "--",
        "sh",
        "-c",
        "echo token=$RINGFENCE_LOCK_TOKEN",
    ]);
    let out = stdout(&held);
    assert!(out.contains("granted lock=demo token="), "{out}");
    assert!(out.contains("released lock=demo"), "{out}");
    assert!(stdout(&ringfence(&["lock", "status", "demo", "-c", &file])).contains("lock=demo free"));

    assert!(stdout(&ringfence(&["txn", "transfer", "0", "1", "30", "-c", &file])).contains("committed"));
    let audit = stdout(&ringfence(&["txn", "audit", "--accounts", "2", "-c", &file]));
    assert!(
        audit.contains("account 0: 70") && audit.contains("account 1: 130") && audit.contains("total: 200"),
        "{audit}"
    );
    cluster.stop().await;
}

#[test]
fn bad_input_gets_a_clear_error() {
    let missing = ringfence(&["lock", "status", "x", "--config", "/nonexistent/cluster.toml"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read /nonexistent/cluster.toml"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("cluster.toml");
    std::fs::write(&bad, "data_dir = \"d\"\n[[node]]\nid = 1\nlock = \"127.0.0.1:1\"\n").unwrap();
    let parsed = ringfence(&["node", "--config", bad.to_str().unwrap(), "--id", "1"]);
    assert!(!parsed.status.success());
    assert!(String::from_utf8_lossy(&parsed.stderr).contains("missing field `txn`"));

    // A cluster file from before cluster ids: told what to add.
    let old = dir.path().join("old.toml");
    let node = "[[node]]\nid = 1\nlock = \"127.0.0.1:1\"\ntxn = \"127.0.0.1:2\"\nshard = \"127.0.0.1:3\"\n";
    std::fs::write(&old, format!("data_dir = \"d\"\n{node}")).unwrap();
    let unnamed = ringfence(&["node", "--config", old.to_str().unwrap(), "--id", "1"]);
    assert!(!unnamed.status.success());
    assert!(String::from_utf8_lossy(&unnamed.stderr).contains("no cluster_id: add a line `cluster_id = "));

    let duration = ringfence(&["lock", "acquire", "x", "--wait", "soon"]);
    assert!(!duration.status.success());
    assert!(String::from_utf8_lossy(&duration.stderr).contains("is not a duration"));
}
