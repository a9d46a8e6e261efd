//! `ringfence bench --workloads moves`: lock names moving between the
//! groups of a sharded lock service while clients use them.
//!
//! C clients run acquire+release cycles on their own locks (as the
//! uncontended lock phase), while an operator takes the last group out of
//! the ring and puts it back, a TTL and a half-second apart
//! ([`ringfence::shard::rebalance::rebalance_to`]). Per
//! rebalance: the share of names moved, the bytes of the parts shipped,
//! and each part's window (fence sent to install answered: its names are
//! served by neither group). Per client: the longest time without a
//! completed cycle, which is what a user sees of a move: a client whose
//! lock moved while held waits a TTL for its old session's hold to end.

use std::time::Duration;

use ringfence::real::cluster::{ClusterConfig, GROUP_VNODES};
use ringfence::shard::rebalance::{Moves, RebalanceConfig};
use ringfence::shard::GroupId;
use tokio::time::Instant;

use super::{cycles, BenchArgs, Latencies};

/// The pause between two rebalances beyond the session TTL: a lock moved
/// while held stays held by its old holder's lease until a TTL after its
/// last move, so moves closer together than a TTL would keep it
/// unavailable throughout.
const BEYOND_TTL: Duration = Duration::from_millis(500);

/// One rebalance: how long it took and what it moved.
struct Rebalance {
    took: Duration,
    moves: Moves,
}

/// Runs the workload with `clients` clients and prints its report.
pub async fn phase(config: &ClusterConfig, args: &BenchArgs, clients: usize) -> Result<(), String> {
    let groups: Vec<_> = config.lock_groups().into_keys().collect();
    if groups.len() < 2 {
        return Err("the moves workload needs a sharded lock service: --lock-groups 2 or more".to_string());
    }
    let t0 = Instant::now() + Duration::from_millis(50);
    let window = (t0 + args.warmup, t0 + args.warmup + args.duration);
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let env = config
            .client_env(&config.lock_service_peers())
            .map_err(|e| e.to_string())?;
        let name = format!("bench/moves/{clients}/client-{i}");
        tasks.push(tokio::spawn(cycles(config.sharded_lock_client(env), name, t0, window)));
    }
    let rebalances = operate(config, &groups, window).await?;
    let mut first_error = None;
    let (mut latencies, mut gaps, mut errors) = (Vec::new(), Vec::new(), 0);
    for task in tasks {
        let run = task.await.map_err(|e| e.to_string())?;
        errors += run.errors;
        first_error = first_error.or(run.first_error);
        let mut done: Vec<Instant> = run.cycles.iter().map(|&(at, _)| at).collect();
        done.sort_unstable();
        // From the window's start to its end: a client stuck at the end
        // shows its whole wait.
        let marks: Vec<Instant> = [window.0].into_iter().chain(done).chain([window.1]).collect();
        let longest = marks.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
        gaps.push(longest.as_micros() as u64);
        latencies.extend(run.cycles.into_iter().map(|(_, us)| us));
    }
    report(
        clients,
        args,
        &Latencies::new(latencies),
        &Latencies::new(gaps),
        errors,
        &rebalances,
    );
    if let (Some(e), false) = (first_error, args.json) {
        eprintln!("  first error: {e}");
    }
    Ok(())
}

/// Takes the last group out of the ring and puts it back until the window
/// ends; returns every rebalance made inside it.
async fn operate(
    config: &ClusterConfig,
    groups: &[GroupId],
    (start, end): (Instant, Instant),
) -> Result<Vec<Rebalance>, String> {
    let mut operator = config.shard_operator().map_err(|e| e.to_string())?;
    let all: Vec<(GroupId, u32)> = groups.iter().map(|&g| (g, 1)).collect();
    let fewer = all[..all.len() - 1].to_vec();
    tokio::time::sleep_until(start).await;
    let mut rebalances = Vec::new();
    for weights in [fewer, all].into_iter().cycle() {
        if Instant::now() >= end {
            break;
        }
        let began = Instant::now();
        let (_, moves) = operator
            .rebalance_to(weights, GROUP_VNODES, &RebalanceConfig::default())
            .await
            .map_err(|e| format!("rebalancing: {e}"))?;
        rebalances.push(Rebalance {
            took: began.elapsed(),
            moves,
        });
        tokio::time::sleep(config.lock_ttl() + BEYOND_TTL).await;
    }
    Ok(rebalances)
}

fn report(
    clients: usize,
    args: &BenchArgs,
    latencies: &Latencies,
    gaps: &Latencies,
    errors: u64,
    rebalances: &[Rebalance],
) {
    let count = rebalances.len().max(1) as f64;
    let share: f64 = rebalances
        .iter()
        .flat_map(|r| &r.moves.ranges)
        .flat_map(|(_, _, ranges)| ranges.ranges())
        .map(|r| r.fraction())
        .sum::<f64>()
        / count;
    let locks: usize = rebalances.iter().map(|r| r.moves.items).sum();
    let bytes: Vec<u64> = rebalances.iter().map(|r| r.moves.bytes as u64).collect();
    let windows = Latencies::new(
        rebalances
            .iter()
            .flat_map(|r| &r.moves.windows)
            .map(|w| w.as_micros() as u64)
            .collect(),
    );
    let took = Latencies::new(rebalances.iter().map(|r| r.took.as_micros() as u64).collect());
    let cycles_per_sec = latencies.count() as f64 / args.duration.as_secs_f64();
    let mean_bytes = bytes.iter().sum::<u64>() as f64 / count;
    let max_bytes = bytes.iter().max().copied().unwrap_or(0);
    if args.json {
        say!(
            "{{\"workload\":\"moves\",\"clients\":{clients},\"cycles_per_sec\":{cycles_per_sec:.1},\"errors\":{errors},\"rebalances\":{},\"share_moved\":{share:.4},\"held_locks_shipped\":{locks},\"bytes_mean\":{mean_bytes:.0},\"bytes_max\":{max_bytes},\"window_p50_ms\":{:.3},\"window_max_ms\":{:.3},\"rebalance_mean_ms\":{:.3},\"client_gap_p50_ms\":{:.3},\"client_gap_max_ms\":{:.3}}}",
            rebalances.len(),
            windows.percentile(50.0),
            windows.max(),
            took.mean(),
            gaps.percentile(50.0),
            gaps.max(),
        );
    } else {
        say!(
            "{:>7} {:>10.1} {:>6} {:>10} {:>7.1} {:>7} {:>9.0} {:>9} {:>8.3} {:>8.3} {:>9.3} {:>8.3} {:>8.3}",
            clients,
            cycles_per_sec,
            errors,
            rebalances.len(),
            share * 100.0,
            locks,
            mean_bytes,
            max_bytes,
            windows.percentile(50.0),
            windows.max(),
            took.mean(),
            gaps.percentile(50.0),
            gaps.max(),
        );
    }
}

/// The table's header.
pub fn header() {
    say!(
        "\n{:>7} {:>10} {:>6} {:>10} {:>7} {:>7} {:>9} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8}",
        "clients",
        "cycles/s",
        "errors",
        "rebalances",
        "moved%",
        "locks",
        "bytes",
        "max bytes",
        "win p50",
        "win max",
        "rebal ms",
        "gap p50",
        "gap max"
    );
}
