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
//! The `txn` workload: C clients each run bank transfers between random
//! accounts back to back (begin, read both, write both, commit on the
//! replicated coordinator); counted are transfers that committed inside the
//! window, their latency, and the aborts (no-wait locking aborts a transfer
//! that meets a conflicting one).

use std::path::PathBuf;
use std::time::Duration;

use ringfence::lock::LockClient;
use ringfence::real::cluster::ClusterConfig;
use ringfence::real::local::LocalCluster;
use ringfence::real::RealEnv;
use tokio::time::Instant;

use crate::parse_duration;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Measure this running cluster instead of starting a fresh one.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Nodes of the cluster started for the run (fsync on, loopback).
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Client counts, one phase per count and mode.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
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
    /// Which workloads to run.
    #[arg(long, value_delimiter = ',', default_value = "lock,txn")]
    workloads: Vec<Workload>,
    /// Accounts the transfers pick from.
    #[arg(long, default_value_t = 64)]
    accounts: u32,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Lock,
    Txn,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Contended,
    Uncontended,
}

/// Longest wait for one acquire before it counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

struct Phase {
    clients: usize,
    mode: Mode,
    window: Duration,
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    wall: Duration,
    client_cpu: f64,
    server_cpu: Option<f64>,
}

pub async fn run(args: BenchArgs) -> Result<(), String> {
    let (config, cluster) = match &args.config {
        Some(path) => (ClusterConfig::load(path).map_err(|e| e.to_string())?, None),
        None => {
            let dir = std::env::temp_dir().join(format!("ringfence-bench-{}", std::process::id()));
            let config = LocalCluster::free_ports_config(args.nodes, &dir).map_err(|e| e.to_string())?;
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let cluster = LocalCluster::start(&exe, &dir, config.clone())
                .await
                .map_err(|e| format!("cluster did not start: {e}"))?;
            eprintln!("started {} nodes (fsync on) in {}", args.nodes, dir.display());
            (config, Some((cluster, dir)))
        }
    };
    let server_pids = cluster.as_ref().map(|(c, _)| c.pids()).unwrap_or_default();
    let mut result = Ok(());
    if args.workloads.contains(&Workload::Lock) {
        if !args.json {
            println!(
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
    if result.is_ok() && args.workloads.contains(&Workload::Txn) {
        if !args.json {
            println!(
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
            let phase = transfers_phase(&config, &args, &server_pids, clients).await;
            report_transfers(&phase, args.json);
        }
    }
    if let Some((mut cluster, dir)) = cluster {
        cluster.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

async fn phase(
    config: &ClusterConfig,
    args: &BenchArgs,
    server_pids: &[u32],
    tag: usize,
    clients: usize,
    mode: Mode,
) -> Result<Phase, String> {
    let started = Instant::now();
    let (client_cpu0, server_cpu0) = (cpu_seconds(&[std::process::id()]), cpu_seconds(server_pids));
    let servers: Vec<_> = config.lock_servers().into_keys().collect();
    let mut sessions = Vec::with_capacity(clients);
    for _ in 0..clients {
        let env = RealEnv::client(RealEnv::client_id(), &config.lock_servers());
        let mut client = LockClient::new(env, servers.clone(), config.lock_client_config());
        client.open().await.map_err(|e| format!("open session: {e}"))?;
        sessions.push(client);
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
    let mut phase = Phase {
        clients,
        mode,
        window: args.duration,
        latencies_us: Vec::new(),
        errors: 0,
        first_error: None,
        wall: Duration::ZERO,
        client_cpu: 0.0,
        server_cpu: None,
    };
    for task in tasks {
        let (latencies, errors, first_error) = task.await.map_err(|e| e.to_string())?;
        phase.latencies_us.extend(latencies);
        phase.errors += errors;
        phase.first_error = phase.first_error.or(first_error);
    }
    phase.latencies_us.sort_unstable();
    phase.wall = started.elapsed();
    phase.client_cpu = cpu_seconds(&[std::process::id()]).unwrap_or(0.0) - client_cpu0.unwrap_or(0.0);
    phase.server_cpu = cpu_seconds(server_pids)
        .zip(server_cpu0)
        .map(|(end, begin)| end - begin);
    Ok(phase)
}

/// One client's loop; returns (latencies of counted cycles, errors, first error).
async fn cycles(
    mut client: LockClient<RealEnv>,
    name: String,
    t0: Instant,
    (window_start, window_end): (Instant, Instant),
) -> (Vec<u64>, u64, Option<String>) {
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
            if client.reopen().await.is_err() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            continue;
        }
        let done = Instant::now();
        if done >= window_start && done <= window_end {
            latencies.push(done.duration_since(start).as_micros() as u64);
        }
    }
    let _ = client.close().await;
    (latencies, errors, first_error)
}

struct TransferPhase {
    clients: usize,
    window: Duration,
    latencies_us: Vec<u64>,
    aborts: u64,
    errors: u64,
    wall: Duration,
    client_cpu: f64,
    server_cpu: Option<f64>,
}

async fn transfers_phase(
    config: &ClusterConfig,
    args: &BenchArgs,
    server_pids: &[u32],
    clients: usize,
) -> TransferPhase {
    let started = Instant::now();
    let (client_cpu0, server_cpu0) = (cpu_seconds(&[std::process::id()]), cpu_seconds(server_pids));
    let t0 = Instant::now() + Duration::from_millis(50);
    let window = (t0 + args.warmup, t0 + args.warmup + args.duration);
    let accounts = args.accounts.max(2);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let env = RealEnv::client(RealEnv::client_id(), &config.txn_nodes());
            tokio::spawn(transfers(config.txn_client(env), accounts, t0, window))
        })
        .collect();
    let mut phase = TransferPhase {
        clients,
        window: args.duration,
        latencies_us: Vec::new(),
        aborts: 0,
        errors: 0,
        wall: Duration::ZERO,
        client_cpu: 0.0,
        server_cpu: None,
    };
    for task in tasks {
        if let Ok((latencies, aborts, errors)) = task.await {
            phase.latencies_us.extend(latencies);
            phase.aborts += aborts;
            phase.errors += errors;
        } else {
            phase.errors += 1;
        }
    }
    phase.latencies_us.sort_unstable();
    phase.wall = started.elapsed();
    phase.client_cpu = cpu_seconds(&[std::process::id()]).unwrap_or(0.0) - client_cpu0.unwrap_or(0.0);
    phase.server_cpu = cpu_seconds(server_pids)
        .zip(server_cpu0)
        .map(|(end, begin)| end - begin);
    phase
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
    let lat = &phase.latencies_us;
    let ms = |us: Option<&u64>| us.map_or(f64::NAN, |&us| us as f64 / 1000.0);
    let percentile = |p: f64| {
        let rank = ((p / 100.0) * lat.len() as f64).ceil() as usize;
        ms(lat.get(rank.clamp(1, lat.len().max(1)) - 1))
    };
    let per_sec = lat.len() as f64 / phase.window.as_secs_f64();
    let mean = lat.iter().sum::<u64>() as f64 / lat.len().max(1) as f64 / 1000.0;
    let wall = phase.wall.as_secs_f64();
    let (cli_cores, srv_cores) = (phase.client_cpu / wall, phase.server_cpu.map(|c| c / wall));
    if json {
        println!(
            "{{\"clients\":{},\"workload\":\"transfer\",\"commits_per_sec\":{per_sec:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"mean_ms\":{mean:.3},\"max_ms\":{:.3},\"aborts\":{},\"errors\":{},\"client_cores\":{cli_cores:.2},\"server_cores\":{}}}",
            phase.clients,
            percentile(50.0),
            percentile(99.0),
            ms(lat.last()),
            phase.aborts,
            phase.errors,
            srv_cores.map_or("null".to_string(), |c| format!("{c:.2}")),
        );
    } else {
        println!(
            "{:>7} {:<11} {:>10.1} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8} {:>6} {:>7.2} {:>7}",
            phase.clients,
            "transfer",
            per_sec,
            percentile(50.0),
            percentile(99.0),
            mean,
            ms(lat.last()),
            phase.aborts,
            phase.errors,
            cli_cores,
            srv_cores.map_or("-".to_string(), |c| format!("{c:.2}")),
        );
    }
}

fn report(phase: &Phase, json: bool) {
    let lat = &phase.latencies_us;
    let ms = |us: Option<&u64>| us.map_or(f64::NAN, |&us| us as f64 / 1000.0);
    let percentile = |p: f64| {
        let rank = ((p / 100.0) * lat.len() as f64).ceil() as usize;
        ms(lat.get(rank.clamp(1, lat.len().max(1)) - 1))
    };
    let cycles_per_sec = lat.len() as f64 / phase.window.as_secs_f64();
    let mean = lat.iter().sum::<u64>() as f64 / lat.len().max(1) as f64 / 1000.0;
    // One lock changes hands once per cycle: the time between grants.
    let handoff = match phase.mode {
        Mode::Contended if !lat.is_empty() => 1000.0 / cycles_per_sec,
        _ => f64::NAN,
    };
    let wall = phase.wall.as_secs_f64();
    let (cli_cores, srv_cores) = (phase.client_cpu / wall, phase.server_cpu.map(|c| c / wall));
    let mode = format!("{:?}", phase.mode).to_lowercase();
    if json {
        println!(
            "{{\"clients\":{},\"mode\":\"{mode}\",\"cycles_per_sec\":{cycles_per_sec:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"mean_ms\":{mean:.3},\"max_ms\":{:.3},\"handoff_ms\":{},\"errors\":{},\"client_cores\":{cli_cores:.2},\"server_cores\":{},\"first_error\":{}}}",
            phase.clients,
            percentile(50.0),
            percentile(99.0),
            ms(lat.last()),
            if handoff.is_nan() { "null".to_string() } else { format!("{handoff:.3}") },
            phase.errors,
            srv_cores.map_or("null".to_string(), |c| format!("{c:.2}")),
            phase.first_error.as_ref().map_or("null".to_string(), |e| format!("{e:?}")),
        );
    } else {
        println!(
            "{:>7} {:<11} {:>10.1} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>11} {:>6} {:>7.2} {:>7}",
            phase.clients,
            mode,
            cycles_per_sec,
            percentile(50.0),
            percentile(99.0),
            mean,
            ms(lat.last()),
            if handoff.is_nan() {
                "-".to_string()
            } else {
                format!("{handoff:.3}")
            },
            phase.errors,
            cli_cores,
            srv_cores.map_or("-".to_string(), |c| format!("{c:.2}")),
        );
        if let Some(e) = &phase.first_error {
            eprintln!("  first error: {e}");
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
