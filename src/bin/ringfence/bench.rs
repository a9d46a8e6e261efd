//! `ringfence bench`: lock acquire+release cycles against a loopback
//! cluster, with the client shapes of the etcd lock benchmark
//! (`shared/bench/etcd-lock`), so the two tables compare line by line.
//!
//! Per phase (C clients, contended | uncontended) every client opens one
//! session on its own connections, then loops acquire + release — on one
//! shared lock (contended) or its own lock (uncontended). After a warm-up,
//! a cycle counts if its release completes inside the window; its latency
//! is the whole cycle, waiting included. Percentiles are nearest-rank.
//!
//! `--lock-groups N` starts the lock service split into N groups on the
//! same nodes, each in the ring with weight 1, and the lock clients route
//! between them ([`ShardedLockClient`]): run it beside `--lock-groups 1`
//! to compare one group's throughput with N's.
//!
//! The `moves` workload ([`moves`]): lock names moving between groups
//! while clients cycle on them.
//!
//! The `txn` workload: C clients each run bank transfers between random
//! accounts back to back (begin, read both, write both, commit on the
//! replicated coordinator); counted are transfers that committed inside the
//! window, their latency, and the aborts (no-wait locking aborts a transfer
//! that meets a conflicting one).

use std::path::PathBuf;
use std::time::Duration;

use ringfence::lock::ShardedLockClient;
use ringfence::real::cluster::{ClusterConfig, Layout, GROUP_VNODES};
use ringfence::real::local::LocalCluster;
use ringfence::real::RealEnv;
use ringfence::shard::rebalance::RebalanceConfig;
use tokio::time::Instant;

use crate::parse_duration;

mod moves;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Measure this running cluster instead of starting a fresh one.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Nodes of the cluster started for the run (fsync on, loopback).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=15))]
    nodes: u32,
    /// Client counts, one phase per count and mode.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_CLIENTS))]
    clients: Vec<usize>,
    /// `contended` (one shared lock) and/or `uncontended` (a lock per client).
    #[arg(long, value_delimiter = ',', default_value = "contended,uncontended")]
    modes: Vec<Mode>,
    /// Measurement window per phase.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up before the window.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Which workloads to run: lock, txn, moves (moves needs --lock-groups
    /// 2 or more).
    #[arg(long, value_delimiter = ',', default_value = "lock,txn")]
    workloads: Vec<Workload>,
    /// Lock groups of the cluster started for the run, each in the ring
    /// with weight 1 (with --config: the cluster's, as they are).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    lock_groups: u32,
    /// Accounts the transfers pick from.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
    accounts: u32,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Lock,
    Txn,
    Moves,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Contended,
    Uncontended,
}

/// Most clients in one phase: each keeps a connection to every node, all
/// under the cluster file's one client principal, and a node serves at most
/// `real::transport::MAX_CONNECTIONS_PER_PRINCIPAL` of one principal.
const MAX_CLIENTS: u64 = ringfence::real::transport::MAX_CONNECTIONS_PER_PRINCIPAL as u64;

/// Longest wait for one acquire before it counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

struct Phase {
    clients: usize,
    mode: Mode,
    window: Duration,
    latencies: Latencies,
    errors: u64,
    first_error: Option<String>,
    usage: Usage,
}

pub async fn run(args: BenchArgs) -> Result<(), String> {
    let (config, cluster) = match &args.config {
        Some(path) => (ClusterConfig::load(path).map_err(|e| e.to_string())?, None),
        None => {
            let dir = std::env::temp_dir().join(format!("ringfence-bench-{}", std::process::id()));
            let config = {
                let layout = Layout {
                    lock_groups: args.lock_groups,
                    ..Layout::default()
                };
                LocalCluster::free_ports_sharded(args.nodes, layout, &dir).map_err(|e| e.to_string())?
            };
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let cluster = LocalCluster::start(&exe, &dir, config.clone())
                .await
                .map_err(|e| format!("cluster did not start: {e}"))?;
            let config = cluster.config().clone();
            if args.lock_groups > 1 {
                spread(&config).await?;
            }
            eprintln!(
                "started {} nodes (fsync on), {} lock group(s), in {}",
                args.nodes,
                args.lock_groups,
                dir.display()
            );
            (config, Some((cluster, dir)))
        }
    };
    let server_pids = cluster.as_ref().map(|(c, _)| c.pids()).unwrap_or_default();
    let mut result = Ok(());
    if args.workloads.contains(&Workload::Lock) {
        if !args.json {
            say!(
                "{:>7} {:<11} {:>10} {:>8} {:>8} {:>8} {:>8} {:>11} {:>6} {:>7} {:>7}",
                "clients",
                "mode",
                "cycles/s",
                "p50 ms",
                "p99 ms",
                "mean ms",
                "max ms",
                "handoff ms",
                "errors",
                "cli cpu",
                "srv cpu"
            );
        }
        'phases: for (index, &mode) in args.modes.iter().enumerate() {
            for &clients in &args.clients {
                let phase = phase(&config, &args, &server_pids, index * 100 + clients, clients, mode).await;
                match phase {
                    Ok(phase) => report(&phase, args.json),
                    Err(e) => {
                        result = Err(e);
                        break 'phases;
                    }
                }
            }
        }
    }
    if result.is_ok() && args.workloads.contains(&Workload::Moves) {
        if !args.json {
            moves::header();
        }
        for &clients in &args.clients {
            if let Err(e) = moves::phase(&config, &args, clients).await {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() && args.workloads.contains(&Workload::Txn) {
        if !args.json {
            say!(
                "\n{:>7} {:<11} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>7}",
                "clients",
                "workload",
                "commits/s",
                "p50 ms",
                "p99 ms",
                "mean ms",
                "max ms",
                "aborts",
                "errors",
                "cli cpu",
                "srv cpu"
            );
        }
        for &clients in &args.clients {
            let phase = transfers_phase(&config, &args, &server_pids, clients).await?;
            report_transfers(&phase, args.json);
        }
    }
    if let Some((mut cluster, dir)) = cluster {
        cluster.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

/// Puts every lock group of `config` in the ring with weight 1.
async fn spread(config: &ClusterConfig) -> Result<(), String> {
    let mut operator = config.shard_operator().map_err(|e| e.to_string())?;
    let weights = config.lock_groups().into_keys().map(|g| (g, 1)).collect();
    operator
        .rebalance_to(weights, GROUP_VNODES, &RebalanceConfig::default())
        .await
        .map_err(|e| format!("spreading the names over the lock groups: {e}"))?;
    Ok(())
}

async fn phase(
    config: &ClusterConfig,
    args: &BenchArgs,
    server_pids: &[u32],
    tag: usize,
    clients: usize,
    mode: Mode,
) -> Result<Phase, String> {
    let meter = Meter::start(server_pids);
    let mut sessions = Vec::with_capacity(clients);
    for _ in 0..clients {
        let env = config
            .client_env(&config.lock_service_peers())
            .map_err(|e| e.to_string())?;
        sessions.push(config.sharded_lock_client(env));
    }
    let t0 = Instant::now() + Duration::from_millis(50);
    let window = (t0 + args.warmup, t0 + args.warmup + args.duration);
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let name = match mode {
                Mode::Contended => format!("bench/{tag}/shared"),
                Mode::Uncontended => format!("bench/{tag}/client-{i}"),
            };
            tokio::spawn(cycles(client, name, t0, window))
        })
        .collect();
    let (mut all, mut errors, mut first) = (Vec::new(), 0, None);
    for task in tasks {
        let run = task.await.map_err(|e| e.to_string())?;
        all.extend(run.cycles.into_iter().map(|(_, us)| us));
        errors += run.errors;
        first = first.or(run.first_error);
    }
    Ok(Phase {
        clients,
        mode,
        window: args.duration,
        latencies: Latencies::new(all),
        errors,
        first_error: first,
        usage: meter.stop(),
    })
}

/// What one client's loop did inside the window.
struct ClientRun {
    /// Each counted cycle: when it completed, and its latency in µs.
    cycles: Vec<(Instant, u64)>,
    errors: u64,
    first_error: Option<String>,
}

/// One client's loop. Sessions open in the warm-up, one per group the
/// client meets.
async fn cycles(
    mut client: ShardedLockClient<RealEnv>,
    name: String,
    t0: Instant,
    (window_start, window_end): (Instant, Instant),
) -> ClientRun {
    let (mut latencies, mut errors, mut first_error) = (Vec::new(), 0, None);
    tokio::time::sleep_until(t0).await;
    loop {
        let start = Instant::now();
        if start >= window_end {
            break;
        }
        let outcome = match client.acquire(&name, OP_TIMEOUT).await {
            Ok(lease) => client.release(&lease).await.map_err(|e| format!("release: {e}")),
            Err(e) => Err(format!("acquire: {e}")),
        };
        if let Err(e) = outcome {
            errors += 1;
            first_error.get_or_insert(e);
            // The client opens a new session once the old one ran out.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let done = Instant::now();
        if done >= window_start && done <= window_end {
            latencies.push((done, done.duration_since(start).as_micros() as u64));
        }
    }
    let _ = client.close().await;
    ClientRun {
        cycles: latencies,
        errors,
        first_error,
    }
}

struct TransferPhase {
    clients: usize,
    window: Duration,
    latencies: Latencies,
    aborts: u64,
    errors: u64,
    usage: Usage,
}

async fn transfers_phase(
    config: &ClusterConfig,
    args: &BenchArgs,
    server_pids: &[u32],
    clients: usize,
) -> Result<TransferPhase, String> {
    let credentials = &config.client_credentials().map_err(|e| e.to_string())?;
    let meter = Meter::start(server_pids);
    let t0 = Instant::now() + Duration::from_millis(50);
    let window = (t0 + args.warmup, t0 + args.warmup + args.duration);
    let accounts = args.accounts;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let env = RealEnv::client(credentials, &config.txn_nodes());
            tokio::spawn(transfers(config.txn_client(env), accounts, t0, window))
        })
        .collect();
    let (mut all, mut aborts, mut errors) = (Vec::new(), 0, 0);
    for task in tasks {
        if let Ok((latencies, aborted, failed)) = task.await {
            all.extend(latencies);
            aborts += aborted;
            errors += failed;
        } else {
            errors += 1;
        }
    }
    Ok(TransferPhase {
        clients,
        window: args.duration,
        latencies: Latencies::new(all),
        aborts,
        errors,
        usage: meter.stop(),
    })
}

/// One client's transfers; returns (latencies of counted commits, aborts, errors).
async fn transfers(
    mut client: ringfence::txn::client::TxnClient<RealEnv>,
    accounts: u32,
    t0: Instant,
    (window_start, window_end): (Instant, Instant),
) -> (Vec<u64>, u64, u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::from_entropy(); // determinism: ok — a real load generator
    let (mut latencies, mut aborts, mut errors) = (Vec::new(), 0, 0);
    tokio::time::sleep_until(t0).await;
    loop {
        let start = Instant::now();
        if start >= window_end {
            break;
        }
        let from = rng.gen_range(0..accounts);
        let to = (from + rng.gen_range(1..accounts)) % accounts;
        let outcome = ringfence::txn::bank::transfer(&mut client, from, to, 1).await;
        let done = Instant::now();
        let counted = done >= window_start && done <= window_end;
        match outcome {
            Ok(ringfence::txn::Outcome::Committed) if counted => {
                latencies.push(done.duration_since(start).as_micros() as u64)
            }
            Ok(ringfence::txn::Outcome::Committed) => {}
            Ok(ringfence::txn::Outcome::Aborted(_)) | Err(ringfence::txn::client::TxnError::Aborted(_)) => {
                aborts += u64::from(counted)
            }
            Err(_) => errors += u64::from(counted),
        }
    }
    (latencies, aborts, errors)
}

fn report_transfers(phase: &TransferPhase, json: bool) {
    let lat = &phase.latencies;
    let per_sec = lat.count() as f64 / phase.window.as_secs_f64();
    let usage = &phase.usage;
    if json {
        say!(
            "{{\"clients\":{},\"workload\":\"transfer\",\"commits_per_sec\":{per_sec:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"mean_ms\":{:.3},\"max_ms\":{:.3},\"aborts\":{},\"errors\":{},\"client_cores\":{:.2},\"server_cores\":{}}}",
            phase.clients,
            lat.percentile(50.0),
            lat.percentile(99.0),
            lat.mean(),
            lat.max(),
            phase.aborts,
            phase.errors,
            usage.client_cores,
            usage.server_cores.map_or("null".to_string(), |c| format!("{c:.2}")),
        );
    } else {
        say!(
            "{:>7} {:<11} {:>10.1} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8} {:>6} {:>7.2} {:>7}",
            phase.clients,
            "transfer",
            per_sec,
            lat.percentile(50.0),
            lat.percentile(99.0),
            lat.mean(),
            lat.max(),
            phase.aborts,
            phase.errors,
            usage.client_cores,
            usage.server_cores.map_or("-".to_string(), |c| format!("{c:.2}")),
        );
    }
}

fn report(phase: &Phase, json: bool) {
    let lat = &phase.latencies;
    let cycles_per_sec = lat.count() as f64 / phase.window.as_secs_f64();
    // One lock changes hands once per cycle: the time between grants.
    let handoff = match phase.mode {
        Mode::Contended if lat.count() > 0 => 1000.0 / cycles_per_sec,
        _ => f64::NAN,
    };
    let usage = &phase.usage;
    let mode = format!("{:?}", phase.mode).to_lowercase();
    if json {
        say!(
            "{{\"clients\":{},\"mode\":\"{mode}\",\"cycles_per_sec\":{cycles_per_sec:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"mean_ms\":{:.3},\"max_ms\":{:.3},\"handoff_ms\":{},\"errors\":{},\"client_cores\":{:.2},\"server_cores\":{},\"first_error\":{}}}",
            phase.clients,
            lat.percentile(50.0),
            lat.percentile(99.0),
            lat.mean(),
            lat.max(),
            if handoff.is_nan() { "null".to_string() } else { format!("{handoff:.3}") },
            phase.errors,
            usage.client_cores,
            usage.server_cores.map_or("null".to_string(), |c| format!("{c:.2}")),
            phase.first_error.as_ref().map_or("null".to_string(), |e| format!("{e:?}")),
        );
    } else {
        say!(
            "{:>7} {:<11} {:>10.1} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>11} {:>6} {:>7.2} {:>7}",
            phase.clients,
            mode,
            cycles_per_sec,
            lat.percentile(50.0),
            lat.percentile(99.0),
            lat.mean(),
            lat.max(),
            if handoff.is_nan() {
                "-".to_string()
            } else {
                format!("{handoff:.3}")
            },
            phase.errors,
            usage.client_cores,
            usage.server_cores.map_or("-".to_string(), |c| format!("{c:.2}")),
        );
        if let Some(e) = &phase.first_error {
            eprintln!("  first error: {e}");
        }
    }
}

/// Latencies of counted operations in µs, sorted; read in milliseconds,
/// percentiles nearest-rank (as the etcd benchmark computes them).
struct Latencies(Vec<u64>);

impl Latencies {
    fn new(mut us: Vec<u64>) -> Self {
        us.sort_unstable();
        Latencies(us)
    }

    fn count(&self) -> usize {
        self.0.len()
    }

    fn percentile(&self, p: f64) -> f64 {
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        ms(self.0.get(rank.clamp(1, self.0.len().max(1)) - 1))
    }

    fn mean(&self) -> f64 {
        self.0.iter().sum::<u64>() as f64 / self.0.len().max(1) as f64 / 1000.0
    }

    fn max(&self) -> f64 {
        ms(self.0.last())
    }
}

fn ms(us: Option<&u64>) -> f64 {
    us.map_or(f64::NAN, |&us| us as f64 / 1000.0)
}

/// CPU cores the load generator and the servers kept busy over a phase.
struct Usage {
    client_cores: f64,
    server_cores: Option<f64>,
}

/// Measures [`Usage`] from `start` to `stop`.
struct Meter {
    started: Instant,
    server_pids: Vec<u32>,
    client_cpu: Option<f64>,
    server_cpu: Option<f64>,
}

impl Meter {
    fn start(server_pids: &[u32]) -> Meter {
        Meter {
            started: Instant::now(),
            server_pids: server_pids.to_vec(),
            client_cpu: cpu_seconds(&[std::process::id()]),
            server_cpu: cpu_seconds(server_pids),
        }
    }

    fn stop(&self) -> Usage {
        let wall = self.started.elapsed().as_secs_f64();
        let client = cpu_seconds(&[std::process::id()]).unwrap_or(0.0) - self.client_cpu.unwrap_or(0.0);
        let server = cpu_seconds(&self.server_pids)
            .zip(self.server_cpu)
            .map(|(end, begin)| end - begin);
        Usage {
            client_cores: client / wall,
            server_cores: server.map(|c| c / wall),
        }
    }
}

/// utime + stime of these processes in seconds (Linux `/proc`, USER_HZ 100).
fn cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    let mut total = 0.0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
        let (user, system): (f64, f64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
        total += (user + system) / 100.0;
    }
    Some(total)
}
