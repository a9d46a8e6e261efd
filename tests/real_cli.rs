//! The `ringfence` binary end to end: a loopback cluster of node processes,
//! then the lock and bank commands against it, clear errors for bad input,
//! and `lock acquire -- CMD` stopping CMD once the lease is lost (to a
//! stopped client process, or to servers it can no longer reach).

// Shared with real_chaos.rs, which uses all of it; this file only cuts.
#[allow(dead_code)]
mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ringfence::real::cluster::ClusterConfig;
use ringfence::real::local::LocalCluster;
use support::proxy::Proxy;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

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

    // Durations too long for a deadline are refused before anything runs.
    for flag in ["--hold", "--wait", "--grace"] {
        let huge = ringfence(&["lock", "acquire", "demo", "-c", &file, flag, "99999999999s"]);
        let err = String::from_utf8_lossy(&huge.stderr);
        assert_eq!(huge.status.code(), Some(2), "{flag}: {err}");
        assert!(
            err.contains("is too long") && !err.contains("panicked"),
            "{flag}: {err}"
        );
    }

    // A reader that stops reading (`| head -1`, here nobody at all) stops
    // neither the command nor the release: printing to the closed pipe
    // used to panic, leaving the lock held until its session expired.
    let mut unread = Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .args(["lock", "acquire", "piped", "--hold", "0s", "--config", &file])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(unread.stdout.take());
    let out = unread.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&ringfence(&["lock", "status", "piped", "-c", &file])).contains("lock=piped free"));

    assert!(stdout(&ringfence(&["txn", "transfer", "0", "1", "30", "-c", &file])).contains("committed"));
    let audit = stdout(&ringfence(&["txn", "audit", "--accounts", "2", "-c", &file]));
    assert!(
        audit.contains("account 0: 70") && audit.contains("account 1: 130") && audit.contains("total: 200"),
        "{audit}"
    );
    // Accounts placed by a fixed ring are not moved: the command says how
    // to found a cluster whose accounts move.
    let fixed = ringfence(&["group", "--accounts", "status", "-c", &file]);
    let said = String::from_utf8_lossy(&fixed.stderr);
    assert!(!fixed.status.success() && said.contains("--movable-accounts"), "{said}");
    cluster.stop().await;
}

/// A transfer the client aborts (too little money) frees its shared
/// locks at once: the abort used to be only queued when the command
/// exited, so the next transfer on those accounts met a lock conflict
/// until the shard's idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_transfer_frees_its_locks_before_the_command_exits() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalCluster::free_ports_config(3, dir.path()).unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_ringfence"));
    let mut cluster = LocalCluster::start(exe, dir.path(), config).await.unwrap();
    let file = cluster.config_path().to_str().unwrap().to_string();
    for round in 0..5 {
        let refused = ringfence(&["txn", "transfer", "0", "1", "1000000", "-c", &file]);
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains("aborted"), "round {round}: {err}");
        let next = ringfence(&["txn", "transfer", "1", "0", "1", "-c", &file]);
        assert!(
            stdout(&next).contains("committed"),
            "round {round}: {}",
            String::from_utf8_lossy(&next.stderr)
        );
    }
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

    // Every count is checked by the flag parser (status 2, clap's usage error).
    for args in [
        &["bench", "--nodes", "0"][..],
        &["bench", "--nodes", "16"],
        &["bench", "--clients", "0"],
        &["bench", "--accounts", "1"],
        &["txn", "audit", "--accounts", "0"],
        &["txn", "audit", "--accounts", "4294967295"],
        &["cluster", "--nodes", "0"],
        &["cluster", "--base-port", "70000"],
        // Lock names the servers would refuse, or that would reach another
        // user's terminal through `status`: refused before any connection.
        &["lock", "status", &"n".repeat(ringfence::lock::MAX_LOCK_NAME_BYTES + 1)],
        &["lock", "status", ""],
        &["lock", "acquire", "\u{1b}[2J"],
    ] {
        let refused = ringfence(args);
        let err = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("invalid value"), "{args:?}: {err}");
    }
}

/// Each `lock acquire` ends its session when it exits. It used to leave it
/// to expire, so a principal running the command in a loop hit its session
/// quota within one TTL (here a minute) and was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_command_ends_its_session_when_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LocalCluster::free_ports_config(3, dir.path()).unwrap();
    config.lock.ttl_ms = u64::MAX;
    assert!(
        config.validate().unwrap_err().contains("ttl_ms"),
        "an endless lease is refused"
    );
    config.lock.ttl_ms = 60_000;
    let exe = Path::new(env!("CARGO_BIN_EXE_ringfence"));
    let mut cluster = LocalCluster::start(exe, dir.path(), config).await.unwrap();
    let file = cluster.config_path().to_str().unwrap().to_string();
    for round in 0..ringfence::lock::MAX_SESSIONS_PER_PRINCIPAL + 4 {
        let out = ringfence(&["lock", "acquire", "loop", "--hold", "0s", "--config", &file]);
        assert!(
            out.status.success(),
            "acquire {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    cluster.stop().await;
}

/// A node raises its soft open-file limit to what its listeners may hold:
/// started under `ulimit -S -n 512`, a flood of connections would take
/// every descriptor and stop the node at its next log compaction.
#[tokio::test]
async fn a_node_raises_its_open_file_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalCluster::free_ports_config(1, dir.path()).unwrap();
    let path = dir.path().join("cluster.toml");
    config.save(&path).unwrap();
    ClusterConfig::load(&path).unwrap().create_credentials().unwrap();
    let mut node = tokio::process::Command::new("sh")
        .args(["-c", "ulimit -S -n 512 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_ringfence"))
        .args(["node", "--init", "--id", "1", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let limits = format!("/proc/{}/limits", node.id().unwrap());
    let open_files = || -> (u64, u64) {
        let text = std::fs::read_to_string(&limits).unwrap_or_default();
        let line = text.lines().find(|l| l.starts_with("Max open files")).unwrap_or("");
        let numbers: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        (
            numbers.first().copied().unwrap_or(0),
            numbers.get(1).copied().unwrap_or(0),
        )
    };
    // Serving means the node has set its limits.
    let lock = config.lock_servers()[&1];
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(lock).await.is_err() {
        assert!(Instant::now() < deadline, "the node did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (soft, hard) = open_files();
    let _ = node.kill().await;
    let wanted = hard.min(3 * (1024 + 256) + 256);
    assert!(hard > 0 && soft >= wanted, "soft open-file limit {soft} (hard {hard})");
}

/// A stranger's refused connections cost the node's log a bounded number
/// of lines: 300 crafted handshakes once wrote 300 warnings (about 320
/// bytes each, at whatever rate the stranger connects).
#[tokio::test]
async fn a_flood_of_refused_connections_writes_a_bounded_number_of_warnings() {
    use tokio::io::AsyncWriteExt;

    let dir = tempfile::tempdir().unwrap();
    let config = LocalCluster::free_ports_config(1, dir.path()).unwrap();
    let path = dir.path().join("cluster.toml");
    config.save(&path).unwrap();
    ClusterConfig::load(&path).unwrap().create_credentials().unwrap();
    let out_path = dir.path().join("node.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut node = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .args(["node", "--init", "--id", "1", "--config"])
        .arg(&path)
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lock = config.lock_servers()[&1];
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(lock).await.is_err() {
        assert!(Instant::now() < deadline, "the node did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..300 {
        let mut stream = tokio::net::TcpStream::connect(lock).await.unwrap();
        // A handshake frame announcing 1 MiB: refused from its length.
        stream.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
        let mut byte = [0u8; 1];
        let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut byte).await;
    }
    let _ = node.kill().await;
    let log = std::fs::read_to_string(&out_path).unwrap();
    let warnings = log.lines().filter(|l| l.contains("disconnected a peer")).count();
    assert!(warnings >= 1, "the refusals are still reported:\n{log}");
    assert!(warnings <= 10, "{warnings} warnings for 300 refused connections");
}

/// Ports past 65535 are refused, not wrapped around to low ports.
#[tokio::test]
async fn cluster_refuses_a_base_port_whose_ports_would_pass_65535() {
    let dir = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .args(["cluster", "--base-port", "65530", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("`cluster --base-port 65530` must fail at once, not start a cluster")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("base port 65530") && err.contains("65535"), "{err}");
    assert!(!dir.path().join("cluster.toml").exists());
}

/// `lock acquire` exits with this when the lock was lost (see docs/real.md).
const EXIT_LOCK_LOST: i32 = 3;

/// A running `ringfence lock acquire NAME -- sh -c '... exec sleep 600'`,
/// once it printed its grant, and the pid of its command.
struct Holder {
    child: tokio::process::Child,
    command_pid: i32,
}

impl Holder {
    async fn start(config: &Path, name: &str, dir: &Path) -> Holder {
        let pid_file = dir.join(format!("{name}.pid"));
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringfence"))
            .args(["lock", "acquire", name, "--config"])
            .arg(config)
            .args(["--", "sh", "-c"])
            .arg(format!("echo $$ > {}; exec sleep 600", pid_file.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let granted = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("granted within 20 s")
            .unwrap()
            .unwrap_or_default();
        assert!(granted.starts_with(&format!("granted lock={name}")), "{granted}");
        let command_pid = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                break pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        Holder { child, command_pid }
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.id().unwrap() as i32;
        // SAFETY: kill(2) on a child process we started.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits (at most `bound`) for `lock acquire` to exit: its status, its
    /// stderr and how long it took.
    async fn exit(mut self, bound: Duration) -> (Option<i32>, String, Duration) {
        let started = Instant::now();
        let status = tokio::time::timeout(bound, self.child.wait()).await;
        let took = started.elapsed();
        if status.is_err() {
            let _ = self.child.start_kill();
        }
        let alive = Path::new(&format!("/proc/{}", self.command_pid)).exists();
        if alive {
            // SAFETY: the test's own `sleep 600`, left behind (it holds
            // the stderr pipe open too).
            unsafe { libc::kill(self.command_pid, libc::SIGKILL) };
        }
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        let status =
            status.unwrap_or_else(|_| panic!("`lock acquire` still running {bound:?} after the lease was lost"));
        assert!(!alive, "the command outlived `lock acquire` (status {status:?}): {err}");
        (status.unwrap().code(), err, took)
    }
}

/// The holder stopped (SIGSTOP) past its TTL while another client takes
/// the lock and finishes: once it runs again it must not let its command
/// carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_is_stopped_once_its_paused_holder_resumes_without_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalCluster::free_ports_config(3, dir.path()).unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_ringfence"));
    let mut cluster = LocalCluster::start(exe, dir.path(), config.clone()).await.unwrap();
    let file = cluster.config_path().to_owned();

    let holder = Holder::start(&file, "paused", dir.path()).await;
    holder.signal(libc::SIGSTOP);
    let other = tokio::process::Command::new(exe)
        .args([
            "lock", "acquire", "paused", "--wait", "20s", "--hold", "200ms", "--config",
        ])
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(other.status.success(), "{}", String::from_utf8_lossy(&other.stderr));
    assert!(String::from_utf8_lossy(&other.stdout).contains("granted lock=paused"));
    holder.signal(libc::SIGCONT);

    let (code, err, took) = holder.exit(Duration::from_secs(10)).await;
    println!("stopped {took:?} after SIGCONT: {err}");
    assert_eq!(code, Some(EXIT_LOCK_LOST), "{err}");
    assert!(err.contains("lost the lock paused"), "{err}");
    assert!(err.contains("SIGKILL after 1s"), "the default grace: {err}");
    // Stopping at once: SIGTERM ends `sleep`, well inside the grace.
    assert!(took < Duration::from_secs(2), "stopped {took:?} after SIGCONT");
    cluster.stop().await;
}

/// The holder cut off from every server: its command is stopped when the
/// lease runs out, while `lock acquire` itself keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_is_stopped_when_the_lease_runs_out_behind_a_partition() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalCluster::free_ports_config(3, dir.path()).unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_ringfence"));
    let mut cluster = LocalCluster::start(exe, dir.path(), config.clone()).await.unwrap();
    let mut behind_proxies = config.clone();
    let mut proxies = Vec::new();
    for node in &mut behind_proxies.nodes {
        let proxy = Proxy::start(node.lock).await.unwrap();
        node.lock = proxy.addr();
        proxies.push(proxy);
    }
    let client_file = dir.path().join("client.toml");
    behind_proxies.save(&client_file).unwrap();
    ClusterConfig::load(&client_file).unwrap();

    let holder = Holder::start(&client_file, "cut", dir.path()).await;
    // Renewals go through for a while first.
    tokio::time::sleep(config.lock_ttl()).await;
    for proxy in &proxies {
        proxy.partition();
    }
    let (code, err, took) = holder.exit(Duration::from_secs(10)).await;
    println!("stopped {took:?} after the partition: {err}");
    assert_eq!(code, Some(EXIT_LOCK_LOST), "{err}");
    assert!(err.contains("lost the lock cut"), "{err}");
    // At most a TTL of trust after the last renewal, plus the grace.
    assert!(
        took <= config.lock_ttl() + Duration::from_millis(1500),
        "stopped {took:?} after the partition"
    );
    cluster.stop().await;
}
