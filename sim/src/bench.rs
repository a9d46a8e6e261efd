//! `ringfence-sim bench`: the simulator's own performance, measured in one
//! run so that ratios are comparable on a noisy machine.
//!
//! - seeds/s and simulated-to-wall ratio of every scenario's default sweep;
//! - our fault layer ([`SimEnv`]) against plain `madsim::net` sending the
//!   same messages (round trips between two nodes), interleaved runs, ratio
//!   of medians;
//! - seeds and wall seconds until the default sweep catches each planted bug
//!   by the bug's own invariant (`--bugs-only` runs just that table);
//! - committed bank transfers per simulated second for each transaction
//!   coordinator mode, calm and under the default faults.
//! - the replicated log's calm throughput: committed commands per simulated
//!   second with no faults.

use std::time::{Duration, Instant};

use clap::Args;
use madsim::net::Endpoint;
use ringfence::env::Env;
use ringfence::log::membership::founding;

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
    /// Only the planted-bug table.
    #[arg(long)]
    bugs_only: bool,
}

fn jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn run(args: &BenchArgs) -> Result<(), String> {
    if args.bugs_only {
        planted_bugs(args.bug_seeds);
        return Ok(());
    }
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

    txn_commit_rates(args.seeds.min(32));
    lock_round_trips();

    planted_bugs(args.bug_seeds);
    calm_log_throughput(args.calm_seeds);
    Ok(())
}

/// For each planted bug, the default seeds in order, a few at a time, until
/// one fails with the bug's *named* invariant: a bug caught only through a
/// consequence (a liveness failure, another invariant) is not counted as
/// caught. Twice: with every fault the plans generate, and with the faults
/// that know where to strike removed ([`FaultPlan::unaimed`]: aimed roles,
/// moment crashes, leader isolation), so the table shows which catches are
/// found by exploration and which still need aiming. The first violation of
/// any kind (aimed on) is shown beside them.
fn planted_bugs(bug_seeds: u64) {
    println!("\n## planted bugs: seeds until the default sweep fails with the bug's own invariant");
    println!(
        "{:<15} {:<28} {:<24} {:>13} {:>8} {:>13} {:>8}  first violation of any kind",
        "scenario", "bug", "invariant", "aimed: seeds", "wall s", "unaimed: seeds", "wall s"
    );
    for scenario in scenarios::ALL {
        for bug in scenario.bugs() {
            let aimed = first_catch(*scenario, bug, bug_seeds, true);
            let unaimed = first_catch(*scenario, bug, bug_seeds, false);
            let seeds = |c: &Catch| c.named.map_or(format!("> {bug_seeds}"), |seed| (seed + 1).to_string());
            let any = aimed
                .first_any
                .as_ref()
                .map_or("none".to_string(), |(seed, invariant)| {
                    format!("seed {seed}: {invariant}")
                });
            println!(
                "{:<15} {:<28} {:<24} {:>13} {:>8.2} {:>13} {:>8.2}  {any}",
                scenario.name(),
                bug.name,
                bug.symptoms(),
                seeds(&aimed),
                aimed.wall,
                seeds(&unaimed),
                unaimed.wall,
            );
        }
    }
}

/// Where a planted bug was first caught in a run of default seeds.
struct Catch {
    /// The first seed failing with the bug's own invariant.
    named: Option<u64>,
    /// The first failing seed, and its invariant.
    first_any: Option<(u64, String)>,
    wall: f64,
}

fn first_catch(
    scenario: &'static dyn scenarios::DynScenario,
    bug: &crate::scenario::Bug,
    bug_seeds: u64,
    aimed: bool,
) -> Catch {
    let chunk = (4 * jobs()) as u64;
    let mut catch = Catch {
        named: None,
        first_any: None,
        wall: 0.0,
    };
    let mut start = 0;
    while start < bug_seeds && catch.named.is_none() {
        let end = (start + chunk).min(bug_seeds);
        let mut cases = sweep::default_cases(scenario, Some(start..end), Some(bug.name));
        if !aimed {
            for case in &mut cases {
                case.plan = Some(scenario.plan(case).unaimed());
            }
        }
        let plan = SweepPlan {
            groups: vec![(scenario, cases)],
            jobs: jobs(),
            determinism_every: 0,
            progress: false,
            stop_at_first_failure: false,
        };
        let summary = sweep::sweep(&plan).remove(0);
        catch.wall += summary.wall_secs;
        let mut failures = summary.failures;
        failures.sort_by_key(|f| f.seed);
        if catch.first_any.is_none() {
            catch.first_any = failures.first().map(|f| (f.seed, f.violation.invariant.clone()));
        }
        catch.named = failures
            .iter()
            .find(|f| bug.is_caught_by(&f.violation.invariant))
            .map(|f| f.seed);
        start = end;
    }
    catch
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

/// Committed transfers per simulated second of the bank scenarios, read
/// from the histories of `seeds` runs per mode, calm and with each seed's
/// faults (the default sweep's seeds/s is in the throughput table).
fn txn_commit_rates(seeds: u64) {
    use crate::plan::FaultPlan;
    use crate::runner::RunOptions;
    use crate::scenarios::txn::BankOp;
    use ringfence::history::{Event, EventKind};

    println!("\n## transactions: committed transfers per simulated second ({seeds} seeds each)");
    println!(
        "{:<16} {:<8} {:>10} {:>10} {:>12}",
        "scenario", "faults", "committed", "sim s", "per sim-s"
    );
    for name in ["txn", "txn-replicated"] {
        let scenario = scenarios::find(name).expect("registered");
        for calm in [true, false] {
            let (mut committed, mut sim_secs) = (0u64, 0f64);
            for seed in 0..seeds {
                let mut case = scenarios::default_case(scenario, seed, None);
                if calm {
                    case.plan = Some(FaultPlan::calm(scenario_window_ms(&case)));
                }
                let outcome = sweep::run_isolated(scenario, &case, RunOptions { keep_trace: true });
                sim_secs += outcome.sim_time.as_secs_f64();
                committed += outcome
                    .history
                    .iter()
                    .filter_map(|line| serde_json::from_str::<Event<BankOp>>(line).ok())
                    .filter(|e| e.kind == EventKind::Ok && matches!(e.op, BankOp::Transfer { .. }))
                    .count() as u64;
            }
            println!(
                "{:<16} {:<8} {:>10} {:>10.1} {:>12.2}",
                name,
                if calm { "calm" } else { "all" },
                committed,
                sim_secs,
                committed as f64 / sim_secs.max(1e-9)
            );
        }
    }
}

/// The fault window the seed's own plan would use, for a calm plan of the
/// same length.
fn scenario_window_ms(case: &crate::runner::Case) -> u64 {
    scenarios::validate(case).expect("default case").plan(case).duration_ms
}

/// Calm lock-service throughput: acquire/release round trips per simulated
/// second on three lock servers, with clients on distinct locks and on one
/// shared lock, and how fast such runs simulate.
fn lock_round_trips() {
    use ringfence::lock::{server, ClientConfig, LockClient, ServerConfig};
    use ringfence::observe::Ignore;
    use scenarios::lock::{DRIFT_BOUND, TTL};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    const SEEDS: u64 = 3;
    const WARM_UP: Duration = Duration::from_secs(1);
    const MEASURED: Duration = Duration::from_secs(10);

    /// One run: round trips completed in the measured window.
    fn run(seed: u64, clients: u32, shared: bool) -> u64 {
        let servers: Vec<u32> = vec![1, 2, 3];
        let ids: Vec<u32> = (0..clients).map(|i| 101 + i).collect();
        let all: Vec<u32> = servers.iter().chain(&ids).copied().collect();
        let world = World::new(seed, &all, &servers, Trace::new(false));
        let runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        let trips = Arc::new(AtomicU64::new(0));
        let counted = trips.clone();
        runtime.block_on(async move {
            let handle = madsim::runtime::Handle::current();
            for &id in &servers {
                let (node_world, members) = (world.clone(), servers.clone());
                let node = handle
                    .create_node()
                    .ip(addr_of(id).ip())
                    .init(move || {
                        let (world, members) = (node_world.clone(), members.clone());
                        async move {
                            let env = SimEnv::boot(world, id).await;
                            let config = ServerConfig {
                                log: scenarios::log::sim_config(None),
                                ttl: TTL,
                                ..ServerConfig::default()
                            };
                            let _ = server::run(env, founding(members), config, Arc::new(Ignore)).await;
                        }
                    })
                    .build();
                world.lock().node(id).madsim_id = Some(node.id());
            }
            let mut running = Vec::new();
            for (i, &id) in ids.iter().enumerate() {
                let (world, servers, trips) = (world.clone(), servers.clone(), counted.clone());
                let node = handle.create_node().ip(addr_of(id).ip()).build();
                running.push(node.spawn(async move {
                    let env = SimEnv::boot(world, id).await;
                    let config = ClientConfig {
                        drift_bound: DRIFT_BOUND,
                        request_timeout: Duration::from_millis(600),
                        ..ClientConfig::default()
                    };
                    let lc = LockClient::new(env.clone(), servers, config);
                    while lc.open().await.is_err() {}
                    let lock = if shared {
                        "shared".to_string()
                    } else {
                        format!("lock-{i}")
                    };
                    let now = || madsim::time::TimeHandle::current().elapsed();
                    madsim::time::sleep(WARM_UP.saturating_sub(now())).await;
                    while now() < WARM_UP + MEASURED {
                        if let Ok(lease) = lc.acquire(&lock, Duration::from_secs(2)).await {
                            if lc.release(&lease).await.is_ok() && now() < WARM_UP + MEASURED {
                                trips.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
            futures::future::join_all(running).await;
        });
        trips.load(Ordering::Relaxed)
    }

    println!(
        "\n## lock service, calm: acquire/release round trips ({SEEDS} seeds x {}s simulated, 3 lock servers)",
        MEASURED.as_secs()
    );
    println!(
        "{:<28} {:>14} {:>16} {:>9} {:>10}",
        "clients", "trips/sim-s", "ms/trip/client", "runs/s", "sim/wall"
    );
    for (clients, shared) in [(1, false), (4, false), (4, true)] {
        let total = Arc::new(AtomicU64::new(0));
        let mut wall = Duration::ZERO;
        for seed in 0..SEEDS {
            let total = total.clone();
            wall += timed(move || {
                total.fetch_add(run(seed, clients, shared), Ordering::Relaxed);
            });
        }
        let trips = total.load(Ordering::Relaxed);
        let per_sec = trips as f64 / (SEEDS as f64 * MEASURED.as_secs_f64());
        let label = format!("{clients} on {}", if shared { "one lock" } else { "own locks" });
        println!(
            "{:<28} {:>14.1} {:>16.1} {:>9.2} {:>9.0}x",
            label,
            per_sec,
            1_000.0 * f64::from(clients) / per_sec.max(1e-9),
            SEEDS as f64 / wall.as_secs_f64(),
            SEEDS as f64 * (WARM_UP + MEASURED).as_secs_f64() / wall.as_secs_f64()
        );
    }
}
