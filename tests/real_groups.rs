//! Lock names moving between the groups of a sharded lock service, and
//! bank accounts between the shards, on real processes, with lock and bank
//! clients running the whole time and nodes killed: three nodes host two
//! lock groups, the directory, a shard each and the account directory.
//! `ringfence group` puts lock group 2 in the ring, takes group 1 out
//! while a node is down, brings group 1 back with twice the weight while
//! another node is SIGKILLed and restarted, and takes group 2 out;
//! `ringfence group --accounts` puts node 2's shard in the bank's ring,
//! node 3's while node 1 (the founding shard's) is SIGKILLed and
//! restarted, and takes node 1's out.
//!
//! Judged on what the clients were granted (`support/grants.rs`): no
//! fencing token granted twice on a lock across both groups, every grant
//! asked for after an acknowledged release fenced above it, no two
//! acknowledged holds at once, and the service never without a grant for
//! longer than [`UNAVAILABLE_BOUND`]. After each change, every lock must
//! be granted by the group the new view names within [`MOVED_BOUND`], so
//! names did move under the clients. Every bank audit, and one after the
//! last change, must see the opening total, and the moves must have
//! shipped accounts with their balances.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringfence::lock::LockError;
use ringfence::real::cluster::{ClusterConfig, Layout, GROUP_VNODES};
use ringfence::real::local::LocalCluster;
use ringfence::ring::Placement;
use ringfence::shard::directory::ViewSpec;
use ringfence::shard::GroupId;

#[path = "support/bank.rs"]
mod bank_clients;
#[path = "support/grants.rs"]
mod grants;
use bank_clients::{assert_conserved, banker, final_audit};
use grants::{judge, Grant};

/// Lock clients, two to a lock.
const CLIENTS: usize = 8;
const LOCKS: usize = 4;
/// Bank clients, and the accounts they transfer between.
const BANKERS: u32 = 2;
const ACCOUNTS: u32 = 6;
/// Longest the lock service may grant nothing while clients ask: an
/// election after a killed leader, a move's fence-to-install window, and
/// a client's timeouts on the way to the new group.
const UNAVAILABLE_BOUND: Duration = Duration::from_secs(10);
/// How long after a change every lock must have been granted by the
/// group the new view names: a lock moved while held stays with its old
/// holder's lease until a TTL (2 s) after the install, and a killed node
/// may cost an election.
const MOVED_BOUND: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_move_between_groups_under_lock_clients_while_nodes_die() {
    let (mut cluster, config, path) = start_sharded().await;

    let stop = Arc::new(AtomicBool::new(false));
    let grants = Arc::new(Mutex::new(Vec::new()));
    let granted_by = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let logs = (grants.clone(), granted_by.clone());
            tokio::spawn(lock_loop((i, i % LOCKS), config.clone(), stop.clone(), logs))
        })
        .collect();
    let bankers: Vec<_> = (0..BANKERS)
        .map(|id| {
            let stop = stop.clone();
            tokio::spawn(banker(id, config.clone(), ACCOUNTS, move || {
                !stop.load(Ordering::SeqCst)
            }))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let changed = Instant::now();
    group(&path, &["add", "2"]).await;
    served_by(&granted_by, changed, &[(1, 1), (2, 1)]).await;
    let mut shipped = accounts_shipped(&group(&path, &["--accounts", "add", "2"]).await);

    cluster.kill(2).await.unwrap();
    let changed = Instant::now();
    group(&path, &["remove", "1"]).await;
    assert_ring(&path, &["group 2: weight 1, 100.0%"]).await;
    served_by(&granted_by, changed, &[(2, 1)]).await;
    cluster.restart(2).await.unwrap();

    let killed = tokio::spawn({
        let mut cluster = cluster;
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cluster.kill(1).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            cluster.restart(1).await.unwrap();
            cluster
        }
    });
    let changed = Instant::now();
    let (_, accounts) = tokio::join!(
        group(&path, &["add", "1", "--weight", "2"]),
        group(&path, &["--accounts", "add", "3"])
    );
    shipped += accounts_shipped(&accounts);
    let mut cluster = killed.await.unwrap();
    served_by(&granted_by, changed, &[(1, 2), (2, 1)]).await;

    let changed = Instant::now();
    group(&path, &["remove", "2"]).await;
    assert_ring(&path, &["group 1: weight 2, 100.0%"]).await;
    served_by(&granted_by, changed, &[(1, 2)]).await;
    shipped += accounts_shipped(&group(&path, &["--accounts", "remove", "1"]).await);
    assert_ring(
        &path,
        &["--accounts", "shard of node 2: weight 1", "shard of node 3: weight 1"],
    )
    .await;

    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    let mut audits = Vec::new();
    for task in bankers {
        let (committed, seen) = task.await.unwrap();
        println!("banker: {committed} transfers, {} audits", seen.len());
        audits.extend(seen);
    }
    audits.push(final_audit(&config, ACCOUNTS, UNAVAILABLE_BOUND).await);
    cluster.stop().await;
    assert_conserved(&audits, ACCOUNTS);
    assert!(shipped > 0, "the moves shipped no account with a balance");
    let grants = grants.lock().unwrap().clone();
    judge(&grants, UNAVAILABLE_BOUND);
}

/// How many accounts with a balance a `ringfence group --accounts`
/// change says it shipped.
fn accounts_shipped(output: &Output) -> usize {
    let shown = String::from_utf8_lossy(&output.stdout);
    let count = shown
        .split(", ")
        .find_map(|part| part.strip_suffix(" account(s) with a balance shipped\n"))
        .unwrap_or_else(|| panic!("no account count in {shown:?}"));
    count.parse().unwrap()
}

/// A client holding a lock that moves takes it again from the new group
/// once the old hold's lease has run out (its session at the old group,
/// ended by the fence, replaced by a new one), and its old grant no
/// longer counts, even while the new session at the old group is live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_lock_moved_takes_it_again_from_the_new_group() {
    let (mut cluster, config, path) = start_sharded().await;
    let env = config.client_env(&config.lock_service_peers()).unwrap();
    let mut client = config.sharded_lock_client(env);

    group(&path, &["add", "2"]).await;
    // As `group` builds the views: group 2 at weight 1, then at weight 3.
    let ring = |epoch, weight| {
        let view = ViewSpec {
            epoch,
            groups: vec![(1, 1), (2, weight)],
            vnodes: GROUP_VNODES,
        };
        view.build().unwrap()
    };
    let (before, after) = (ring(2, 1), ring(3, 3));
    let owned = |prefix: &str, then: GroupId, now: GroupId| {
        (0..)
            .map(|i| format!("{prefix}-{i}"))
            .find(|name| before.owner(name.as_bytes()) == then && after.owner(name.as_bytes()) == now)
            .unwrap()
    };
    let (name, staying) = (owned("moving", 1, 2), owned("staying", 1, 1));
    let held = client.acquire(&name, Duration::from_secs(5)).await.unwrap();
    assert_eq!(held.group, 1);
    group(&path, &["add", "2", "--weight", "3"]).await;

    // A name group 1 keeps: the fence ended the session, so the client
    // opens a new one there.
    let kept = client.acquire(&staying, Duration::from_secs(5)).await.unwrap();
    assert_eq!(kept.group, 1);
    assert!(client.is_valid(&kept));
    assert!(!client.is_valid(&held), "the old grant's session is gone");
    assert_eq!(
        client.release(&held).await,
        Err(LockError::NotOwner),
        "the old grant is no longer the client's to release"
    );
    // Asked of the group its cached view names, the moved name is
    // followed to group 2, once its moved hold's TTL ran out.
    let again = client.acquire(&name, Duration::from_secs(10)).await.unwrap();
    assert_eq!(again.group, 2);
    assert!(again.lease.token > held.lease.token, "fenced above the moved grant");
    client.release(&again).await.unwrap();
    client.release(&kept).await.unwrap();
    cluster.stop().await;
}

/// A move whose state does not fit one log command (a weight-3 group
/// takes about 480 ranges, and with them over a hundred held locks with
/// long names, tens of KiB against the log's 8 KiB per command) is
/// shipped in several commands and finishes: every held lock the new
/// view gives group 2 arrives there, and is granted again from it,
/// fenced above its moved grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_larger_than_one_log_command_finishes() {
    const HELD: usize = 150;
    // Sessions outlive taking the locks and the move's first steps on a
    // loaded machine, so every lock is still held when fenced.
    let (mut cluster, config, path) = start_sharded_with_ttl(5000).await;
    let env = config.client_env(&config.lock_service_peers()).unwrap();
    let mut client = config.sharded_lock_client(env);
    let names: Vec<String> = (0..HELD).map(|i| format!("{i:03}-{}", "n".repeat(120))).collect();
    let mut held = Vec::new();
    for name in &names {
        held.push(client.acquire(name, Duration::from_secs(5)).await.unwrap());
    }

    // A view too large for any move to carry is refused before anything
    // is fenced.
    let refused = group_once(&path, &["add", "2", "--weight", "1000"]).await;
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("160160 points") && said.contains("lower --weight"),
        "{said}"
    );

    let output = group(&path, &["add", "2", "--weight", "3"]).await;
    let view = ViewSpec {
        epoch: 2,
        groups: vec![(1, 1), (2, 3)],
        vnodes: GROUP_VNODES,
    };
    let ring = view.build().unwrap();
    let moving: Vec<usize> = (0..HELD).filter(|&i| ring.owner(names[i].as_bytes()) == 2).collect();
    assert!(moving.len() > HELD / 2, "the view moves most names: {}", moving.len());
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(
        shown.contains(&format!("{} held lock(s) shipped", moving.len())),
        "{shown}"
    );
    assert_ring(&path, &["group 2: weight 3"]).await;

    let first = moving[0];
    // The moved hold's ghost keeps the lock for a TTL after the install.
    let again = client.acquire(&names[first], Duration::from_secs(15)).await.unwrap();
    assert_eq!(again.group, 2);
    assert!(
        again.lease.token > held[first].lease.token,
        "fenced above the moved grant"
    );
    cluster.stop().await;
}

/// The bank's commands on accounts that move: before any view the first
/// node's shard serves every account; a transfer, then moves that put
/// node 2's shard in the ring and take node 1's out, and the audit still
/// reads what the transfer wrote, from the shards that now hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bank_commands_follow_accounts_that_move() {
    let (mut cluster, _, path) = start_sharded().await;
    let txn = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringfence"))
            .arg("txn")
            .args(args)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        shown
    };
    assert_ring(
        &path,
        &["--accounts", "no ring view yet: shard of node 1 serves all accounts"],
    )
    .await;
    assert!(txn(&["transfer", "0", "1", "30"]).contains("committed"));

    let unknown = group_once(&path, &["--accounts", "add", "7"]).await;
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        !unknown.status.success() && said.contains("no shard of node 7"),
        "{said}"
    );

    group(&path, &["--accounts", "add", "2"]).await;
    group(&path, &["--accounts", "remove", "1"]).await;
    assert_ring(
        &path,
        &["--accounts", "shard of node 2: weight 1, 100.0% of the accounts"],
    )
    .await;
    let audit = txn(&["audit", "--accounts", "8"]);
    for line in ["account 0: 70", "account 1: 130", "account 2: 100", "total: 800"] {
        assert!(audit.contains(line), "{line:?} not in:\n{audit}");
    }
    cluster.stop().await;
}

/// A shard on a node added to the running cluster (`member add
/// --shard`) takes accounts once put in the bank's ring, and a node whose
/// shard was taken out of the ring leaves the cluster (`member remove`,
/// refused while its shard still holds accounts), the founding shard's
/// included; the accounts stay whole throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_join_and_leave_a_running_cluster() {
    let (mut cluster, _, path) = start_sharded().await;
    let spare = tempfile::tempdir().unwrap();
    let layout = Layout {
        lock_groups: 2,
        movable_accounts: true,
    };
    let planned = LocalCluster::free_ports_sharded(4, layout, spare.path()).unwrap();
    let new = planned.node(4).unwrap().clone();
    let committed = ringfence(&path, "txn", &["transfer", "0", "1", "30"]).await;
    assert!(
        committed.status.success(),
        "{}",
        String::from_utf8_lossy(&committed.stderr)
    );

    let addresses = [new.lock, new.txn, new.shard.unwrap()].map(|a| a.to_string());
    let adding = tokio::spawn({
        let path = path.clone();
        async move {
            let [lock, txn, shard] = addresses.each_ref().map(String::as_str);
            let add = ["add", "--id", "4", "--lock", lock, "--txn", txn, "--shard", shard];
            ringfence(&path, "member", &add).await
        }
    });
    while ClusterConfig::load(&path).unwrap().node(4).is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.join(4).await.unwrap();
    let added = adding.await.unwrap();
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));

    group(&path, &["--accounts", "add", "4", "--weight", "3"]).await;
    let refused = ringfence(&path, "member", &["remove", "--id", "4"]).await;
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("still holds accounts"),
        "{said}"
    );
    for node in ["1", "2", "3"] {
        group(&path, &["--accounts", "remove", node]).await;
    }
    assert_ring(
        &path,
        &["--accounts", "shard of node 4: weight 3, 100.0% of the accounts"],
    )
    .await;

    let removed = ringfence(&path, "member", &["remove", "--id", "1"]).await;
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    cluster.kill(1).await.unwrap();
    let audit = audit_until(&path, |audit| audit.status.success()).await;
    let audit = String::from_utf8_lossy(&audit.stdout);
    for line in ["account 0: 70", "account 1: 130", "total: 800"] {
        assert!(audit.contains(line), "{line:?} not in:\n{audit}");
    }
    cluster.stop().await;
}

/// The founding shard's node loses its disk and is replaced (`node
/// --join`, `member replace`) while the views still give its shard
/// accounts: the new disk knows none of them, so the shard serves nothing
/// (on a later restart too) and an audit is refused, rather than answered
/// with opening balances for the accounts the lost disk held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_founding_shard_serves_nothing_it_lost() {
    let (mut cluster, _, path) = start_sharded().await;
    let committed = ringfence(&path, "txn", &["transfer", "0", "1", "30"]).await;
    assert!(
        committed.status.success(),
        "{}",
        String::from_utf8_lossy(&committed.stderr)
    );
    group(&path, &["--accounts", "add", "2"]).await;

    cluster.destroy(1).await.unwrap();
    cluster.join(1).await.unwrap();
    let replaced = ringfence(&path, "member", &["replace", "--id", "1"]).await;
    assert!(
        replaced.status.success(),
        "{}",
        String::from_utf8_lossy(&replaced.stderr)
    );
    for restarted in [false, true] {
        if restarted {
            cluster.restart(1).await.unwrap();
        }
        let refused = |audit: &Output| String::from_utf8_lossy(&audit.stderr).contains("shard 1001 does not serve");
        let audit = audit_until(&path, |audit| audit.status.success() || refused(audit)).await;
        let said = String::from_utf8_lossy(&audit.stderr);
        assert!(
            !audit.status.success() && said.contains("shard 1001 does not serve"),
            "restarted: {restarted}; said {said:?}, printed {}",
            String::from_utf8_lossy(&audit.stdout)
        );
    }
    cluster.stop().await;
}

/// Three nodes hosting two lock groups, the directory, a shard each and
/// the account directory: the cluster, its file and where the file is.
async fn start_sharded() -> (LocalCluster, ClusterConfig, PathBuf) {
    start_sharded_with_ttl(2000).await
}

/// [`start_sharded`] with sessions that last `ttl_ms`.
async fn start_sharded_with_ttl(ttl_ms: u64) -> (LocalCluster, ClusterConfig, PathBuf) {
    let dir = tempfile::tempdir().unwrap().keep();
    let layout = Layout {
        lock_groups: 2,
        movable_accounts: true,
    };
    let mut config = LocalCluster::free_ports_sharded(3, layout, &dir).unwrap();
    config.lock.ttl_ms = ttl_ms;
    let exe = Path::new(env!("CARGO_BIN_EXE_ringfence"));
    let cluster = LocalCluster::start(exe, &dir, config).await.unwrap();
    let (config, path) = (cluster.config().clone(), cluster.config_path().to_owned());
    (cluster, config, path)
}

/// Runs `ringfence group ARGS` until it succeeds (a change cut short by
/// a killed node is finished by running it again), at most three times.
async fn group(config: &Path, args: &[&str]) -> Output {
    let mut failures = Vec::new();
    for _ in 0..3 {
        let output = group_once(config, args).await;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        println!("ringfence group {}:\n{text}", args.join(" "));
        if output.status.success() {
            return output;
        }
        failures.push(text);
    }
    panic!("ringfence group {args:?} failed three times: {failures:?}");
}

/// Runs `ringfence group ARGS` once.
async fn group_once(config: &Path, args: &[&str]) -> Output {
    ringfence(config, "group", args).await
}

/// Runs `ringfence txn audit --accounts 8` until `settled` takes its
/// output or [`UNAVAILABLE_BOUND`] passes (after a member change the
/// coordinators may be electing a leader); the last output.
async fn audit_until(config: &Path, settled: impl Fn(&Output) -> bool) -> Output {
    let deadline = Instant::now() + UNAVAILABLE_BOUND;
    loop {
        let output = ringfence(config, "txn", &["audit", "--accounts", "8"]).await;
        if settled(&output) || Instant::now() > deadline {
            return output;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `ringfence COMMAND ARGS` once on the cluster file `config`.
async fn ringfence(config: &Path, command: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ringfence"))
        .arg(command)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .await
        .unwrap()
}

/// `ringfence group status` shows the current view with `lines` and no
/// rebalance in progress; the bank's with `--accounts` first.
async fn assert_ring(config: &Path, lines: &[&str]) {
    let (args, lines) = match lines {
        ["--accounts", rest @ ..] => (vec!["--accounts", "status"], rest),
        _ => (vec!["status"], lines),
    };
    let output = group(config, &args).await;
    let shown = String::from_utf8_lossy(&output.stdout);
    for line in lines {
        assert!(shown.contains(line), "{line:?} not in:\n{shown}");
    }
    assert!(!shown.contains("in progress"), "{shown}");
}

/// When each grant was answered, of which lock, by which group.
type GrantedBy = Arc<Mutex<Vec<(Instant, usize, GroupId)>>>;

/// Waits until every lock has been granted, since `changed`, by the group
/// that owns it in the view of `weights` (as `ringfence group` builds it),
/// for at most [`MOVED_BOUND`].
async fn served_by(granted_by: &GrantedBy, changed: Instant, weights: &[(GroupId, u32)]) {
    let view = ViewSpec {
        epoch: 1,
        groups: weights.to_vec(),
        vnodes: GROUP_VNODES,
    };
    let ring = view.build().unwrap();
    let owner = |lock: usize| ring.owner(format!("lock-{lock}").as_bytes());
    let deadline = Instant::now() + MOVED_BOUND;
    loop {
        let granted: BTreeSet<usize> = granted_by
            .lock()
            .unwrap()
            .iter()
            .filter(|&&(at, lock, group)| at >= changed && group == owner(lock))
            .map(|&(_, lock, _)| lock)
            .collect();
        if granted.len() == LOCKS {
            println!(
                "every lock granted by its owner {:?} after the change to {weights:?}",
                changed.elapsed()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{MOVED_BOUND:?} after the change to {weights:?}, only locks {granted:?} were granted by their owner"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Client `id`: acquire its lock, hold it briefly, release; again until
/// stopped. Logs every grant in both logs.
async fn lock_loop(
    (id, lock): (usize, usize),
    config: ClusterConfig,
    stop: Arc<AtomicBool>,
    (grants, granted_by): (Arc<Mutex<Vec<Grant>>>, GrantedBy),
) {
    let env = config.client_env(&config.lock_service_peers()).unwrap();
    let mut client = config.sharded_lock_client(env);
    let name = format!("lock-{lock}");
    while !stop.load(Ordering::SeqCst) {
        let asked = Instant::now();
        let Ok(lease) = client.acquire(&name, Duration::from_secs(3)).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let granted = Instant::now();
        granted_by.lock().unwrap().push((granted, lock, lease.group));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let releasing = Instant::now();
        let released = client.release(&lease).await.ok().map(|()| (releasing, Instant::now()));
        grants.lock().unwrap().push(Grant {
            client: id,
            lock,
            token: lease.lease.token,
            asked,
            granted,
            released,
        });
    }
    let _ = client.close().await;
}
