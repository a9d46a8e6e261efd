//! `ringfence-sim bench`: the simulator's own performance, measured in one
//! run so that ratios are comparable on a noisy machine.
//!
//! - seeds/s and simulated-to-wall ratio of every scenario's default sweep;
//! - our fault layer ([`SimEnv`]) against plain `madsim::net` sending the
//!   same messages (round trips between two nodes), interleaved runs, ratio
//!   of medians;
//! - seeds and wall seconds until the default sweep catches each planted bug;
//! - the replicated log's calm throughput: committed commands per simulated
//!   second with no faults.

use std::time::{Duration, Instant};

use clap::Args;
use madsim::net::Endpoint;
use ringfence::env::Env;

use crate::plan::FaultPlan;
use crate::runner::{Case, RunOptions};
use crate::scenario::Workload;
use crate::scenarios;
use crate::sweep::{self, run_isolated, SweepPlan};
use crate::trace::Trace;
use crate::world::{addr_of, World};
use crate::SimEnv;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Seeds per scenario for the throughput figures.
    #[arg(long, default_value_t = 64)]
    seeds: u64,
    /// Round trips per overhead measurement.
    #[arg(long, default_value_t = 20_000)]
    round_trips: u32,
    /// Interleaved repetitions of the overhead measurement.
    #[arg(long, default_value_t = 5)]
    reps: u32,
    /// Most seeds to try per planted bug.
    #[arg(long, default_value_t = 500)]
    bug_seeds: u64,
    /// Seeds per client count for the log's calm throughput.
    #[arg(long, default_value_t = 8)]
    calm_seeds: u64,
}

fn jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn run(args: &BenchArgs) -> Result<(), String> {
    println!("## scenario throughput ({} seeds each, {} jobs)", args.seeds, jobs());
    let plan = SweepPlan {
        groups: sweep::default_groups(Some(0..args.seeds)),
        jobs: jobs(),
        determinism_every: 0,
        progress: false,
        stop_at_first_failure: false,
    };
    println!(
        "{:<12} {:>9} {:>10} {:>12} {:>10}",
        "scenario", "seeds/s", "sim/wall", "ops/sim-s", "failures"
    );
    for s in sweep::sweep(&plan) {
        let ops_per_sim_sec = s.ops as f64 / s.sim_secs.max(1e-9);
        println!(
            "{:<12} {:>9.1} {:>9.0}x {:>12.1} {:>10}",
            s.scenario,
            s.seeds_per_sec,
            s.sim_to_wall,
            ops_per_sim_sec,
            s.failures.len()
        );
    }

    println!(
        "\n## fault layer overhead ({} round trips, {} interleaved reps, medians)",
        args.round_trips, args.reps
    );
    let (mut plain, mut ours) = (Vec::new(), Vec::new());
    let n = args.round_trips;
    for rep in 0..u64::from(args.reps) {
        plain.push(timed(move || ping_pong_plain(rep, n)));
        ours.push(timed(move || ping_pong_simenv(rep, n)));
    }
    let (plain, ours) = (median(plain), median(ours));
    let per = |d: Duration| d.as_nanos() as f64 / f64::from(args.round_trips * 2);
    println!(
        "{:<28} {:>10.3} s {:>8.0} ns/msg",
        "plain madsim::net",
        plain.as_secs_f64(),
        per(plain)
    );
    println!(
        "{:<28} {:>10.3} s {:>8.0} ns/msg",
        "SimEnv (fault layer, calm)",
        ours.as_secs_f64(),
        per(ours)
    );
    println!(
        "overhead: {:.2}x (target <= 1.5x)",
        ours.as_secs_f64() / plain.as_secs_f64()
    );

    println!("\n## planted bugs: seeds until the default sweep catches each");
    println!(
        "{:<12} {:<26} {:>7} {:>9} {:<24}",
        "scenario", "bug", "seeds", "wall s", "first violation"
    );
    for scenario in scenarios::ALL {
        for bug in scenario.bugs() {
            let plan = SweepPlan {
                groups: vec![(
                    *scenario,
                    sweep::default_cases(*scenario, Some(0..args.bug_seeds), Some(bug.name)),
                )],
                jobs: jobs(),
                determinism_every: 0,
                progress: false,
                stop_at_first_failure: true,
            };
            let summary = sweep::sweep(&plan).remove(0);
            match summary.failures.first() {
                Some(f) => println!(
                    "{:<12} {:<26} {:>7} {:>9.2} {:<24}",
                    scenario.name(),
                    bug.name,
                    f.seed + 1,
                    summary.wall_secs,
                    f.violation.invariant
                ),
                None => println!(
                    "{:<12} {:<26} NOT CAUGHT in {} seeds",
                    scenario.name(),
                    bug.name,
                    args.bug_seeds
                ),
            }
        }
    }
    calm_log_throughput(args.calm_seeds);
    Ok(())
}

/// The replicated log with no faults and every client issuing operations
/// back to back for the whole window (no operation budget): committed
/// commands and linearizable reads per simulated second, under the
/// simulator's network latency (1-10 ms) and fsync cost, and how fast the
/// simulator runs it. Seeds run one after another, keeping their history
/// to count the commands.
fn calm_log_throughput(seeds: u64) {
    let scenario = scenarios::find("log").expect("the log scenario is registered");
    let window_ms = 5_000;
    println!("\n## calm throughput (log, 3 replicas, no faults, {window_ms} ms window, {seeds} seeds, 1 job)");
    println!(
        "{:<8} {:>15} {:>12} {:>9} {:>9}",
        "clients", "commands/sim-s", "reads/sim-s", "seeds/s", "wall s"
    );
    for clients in [1, 4, 16] {
        let (mut commands, mut reads, mut sim_secs) = (0u64, 0u64, 0.0);
        let started = Instant::now(); // determinism: ok — benchmark wall time, outside the simulation
        for seed in 0..seeds {
            let case = Case {
                workload: Workload { clients, ops: u32::MAX },
                plan: Some(FaultPlan::calm(window_ms)),
                ..scenarios::default_case(scenario, seed, None)
            };
            let outcome = run_isolated(scenario, &case, RunOptions { keep_trace: true });
            assert!(
                !outcome.failed(),
                "calm log seed {seed} failed: {:?}",
                outcome.violations
            );
            for line in &outcome.history {
                let event: serde_json::Value = serde_json::from_str(line).expect("history lines are JSON");
                if event["kind"] == "ok" {
                    if event["op"].get("Add").is_some() {
                        commands += 1;
                    } else {
                        reads += 1;
                    }
                }
            }
            sim_secs += outcome.sim_time.as_secs_f64();
        }
        let wall = started.elapsed().as_secs_f64();
        println!(
            "{:<8} {:>15.1} {:>12.1} {:>9.1} {:>9.2}",
            clients,
            commands as f64 / sim_secs,
            reads as f64 / sim_secs,
            seeds as f64 / wall,
            wall
        );
    }
}

/// Runs `f` on a fresh thread (madsim needs one per simulation) and returns
/// the wall time it took.
fn timed(f: impl FnOnce() + Send + 'static) -> Duration {
    std::thread::Builder::new()
        .name("ringfence-bench".into())
        .spawn(move || {
            let t = Instant::now(); // determinism: ok — benchmark wall time, outside the simulation
            f();
            t.elapsed()
        })
        .expect("spawn a benchmark thread")
        .join()
        .expect("benchmark run")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `n` request/reply round trips between two nodes on bare madsim.
fn ping_pong_plain(seed: u64, n: u32) {
    let runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    runtime.block_on(async move {
        let handle = madsim::runtime::Handle::current();
        let a = handle.create_node().ip(addr_of(1).ip()).build();
        let b = handle.create_node().ip(addr_of(2).ip()).build();
        b.spawn(async move {
            let ep = Endpoint::bind(addr_of(2)).await.expect("bind");
            loop {
                let (msg, from) = ep.recv_from_raw(1).await.expect("recv");
                let bytes = *msg.downcast::<Vec<u8>>().expect("bytes");
                ep.send_to_raw(from, 1, Box::new(bytes)).await.expect("send");
            }
        });
        a.spawn(async move {
            let ep = Endpoint::bind(addr_of(1)).await.expect("bind");
            for i in 0..n {
                ep.send_to_raw(addr_of(2), 1, Box::new(i.to_le_bytes().to_vec()))
                    .await
                    .expect("send");
                ep.recv_from_raw(1).await.expect("recv");
            }
        })
        .await
        .expect("client finishes");
    });
}

/// The same round trips through [`SimEnv`], with no faults active.
fn ping_pong_simenv(seed: u64, n: u32) {
    let runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    let world = World::new(seed, &[1, 2], &[], Trace::new(false));
    runtime.block_on(async move {
        let handle = madsim::runtime::Handle::current();
        let a = handle.create_node().ip(addr_of(1).ip()).build();
        let b = handle.create_node().ip(addr_of(2).ip()).build();
        let wb = world.clone();
        b.spawn(async move {
            let env = SimEnv::boot(wb, 2).await;
            loop {
                let (from, bytes) = env.recv().await;
                env.send(from, bytes).await.expect("send");
            }
        });
        a.spawn(async move {
            let env = SimEnv::boot(world, 1).await;
            for i in 0..n {
                env.send(2, i.to_le_bytes().to_vec()).await.expect("send");
                env.recv().await;
            }
        })
        .await
        .expect("client finishes");
    });
}
