//! `ringfence-sim`: sweep seeds, replay one, list scenarios, benchmark.

use std::io::{IsTerminal, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use ringfence_sim::explore::{Explore, Group, Progress};
use ringfence_sim::merge::{self, Report, Shard, SweepConfig};
use ringfence_sim::runner::{Case, RunOptions};
use ringfence_sim::scenario::Workload;
use ringfence_sim::scenarios::{self, DynScenario};
use ringfence_sim::sweep::{self, SweepPlan};
use ringfence_sim::{bench, corpus, knobs, logging, shrink, timeline, trace};

/// Deterministic simulation testing for ringfence's protocols.
#[derive(Parser)]
#[command(name = "ringfence-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a range of seeds for each scenario and report violations.
    Sweep(SweepArgs),
    /// Rerun one case with logs, print its trace hash and verdict.
    Replay(ReplayArgs),
    /// Reduce a failing case to a minimal one that fails the same way, and
    /// save it to the corpus.
    Shrink(ShrinkArgs),
    /// Fold the JSON reports of a sweep's shards into one table, one list of
    /// failures and one exit status (1 if any shard is missing).
    Merge(MergeArgs),
    /// Replay every case saved in a corpus directory.
    Corpus {
        /// Directory of corpus JSON files.
        #[arg(default_value = "seeds")]
        dir: PathBuf,
    },
    /// List scenarios and their planted bugs.
    List,
    /// Measure seeds/s, simulated-to-wall ratio, the fault layer's overhead
    /// over plain madsim, and how fast each planted bug is caught.
    Bench(bench::BenchArgs),
}

/// Options that shape a case.
#[derive(Args, Clone)]
struct CaseArgs {
    /// Switch on a planted bug (see `list`).
    #[arg(long)]
    bug: Option<String>,
    /// Number of server nodes (default: the scenario's).
    #[arg(long)]
    servers: Option<u32>,
    /// Number of clients (default: the scenario's).
    #[arg(long)]
    clients: Option<u32>,
    /// Operations per client (default: the scenario's).
    #[arg(long)]
    ops: Option<u32>,
}

impl CaseArgs {
    fn case(&self, scenario: &dyn DynScenario, seed: u64) -> Result<Case, String> {
        let defaults = scenario.default_workload();
        let case = Case {
            scenario: scenario.name().to_string(),
            seed,
            bug: self.bug.clone(),
            servers: self.servers.unwrap_or(scenario.default_servers()),
            workload: Workload {
                clients: self.clients.unwrap_or(defaults.clients),
                ops: self.ops.unwrap_or(defaults.ops),
            },
            plan: None,
        };
        scenarios::validate(&case)?;
        Ok(case)
    }
}

#[derive(Args)]
struct SweepArgs {
    /// Scenario to sweep; repeat for several (default: all).
    #[arg(long = "scenario", short = 's')]
    scenarios: Vec<String>,
    /// Seeds to run: `START..END` (end exclusive), a single seed, or
    /// `START..` with --for (default: each scenario's default sweep, `0..N`
    /// (see `list`); with --for, the seeds after it).
    #[arg(long, value_parser = parse_seeds)]
    seeds: Option<Range<u64>>,
    /// Explore fresh seeds of every scenario, interleaved, for this long
    /// (e.g. `90s`, `10m`, `2h`), saving every failure to the corpus.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    budget: Option<Duration>,
    #[command(flatten)]
    case: CaseArgs,
    /// Worker threads (default: all cores).
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
    /// Run only shard I of N (1-based), e.g. `--shard 2/8`, to split a sweep
    /// across machines.
    #[arg(long, default_value = "1/1", value_parser = parse_shard)]
    shard: (u64, u64),
    /// Print the report (JSON, what `merge` reads) on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the report (JSON, what `merge` reads) to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Rerun every seed and fail on any trace-hash difference.
    #[arg(long)]
    check_determinism: bool,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Shrink the first failure of each scenario before reporting it, and
    /// save the result in `seeds/`; with --for, shrink every failure saved.
    #[arg(long)]
    shrink: bool,
    /// Corpus directory where --for saves the failures it finds.
    #[arg(long, default_value = "seeds")]
    corpus: PathBuf,
    /// With --for, do not save failures.
    #[arg(long)]
    no_save: bool,
    /// With --for, most failures saved per scenario, bug and invariant.
    #[arg(long, default_value_t = 10)]
    save_max: usize,
    /// With --for, how often the running table is shown.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    report_every: Duration,
}

#[derive(Args)]
struct MergeArgs {
    /// Shard reports (`sweep --out FILE`), or directories holding them.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// Print the merged report as JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the merged report (JSON) to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Most failures listed per row (default: all).
    #[arg(long)]
    show: Option<usize>,
}

/// Which case to run: a scenario and seed (plus case options), or a saved file.
#[derive(Args)]
struct CaseSelect {
    /// Scenario to run (not needed with --case-file).
    #[arg(long, short = 's', required_unless_present = "case_file")]
    scenario: Option<String>,
    /// Seed to run (not needed with --case-file).
    #[arg(long, required_unless_present = "case_file")]
    seed: Option<u64>,
    #[command(flatten)]
    case: CaseArgs,
    /// Run a saved case (a corpus JSON file) instead.
    #[arg(long, conflicts_with_all = ["scenario", "seed"])]
    case_file: Option<PathBuf>,
}

impl CaseSelect {
    fn resolve(&self) -> Result<(&'static dyn DynScenario, Case), String> {
        match &self.case_file {
            Some(path) => {
                let entry = corpus::load(path)?;
                Ok((scenarios::validate(&entry.case)?, entry.case))
            }
            None => {
                let scenario = scenarios::find(self.scenario.as_deref().expect("clap requires it"))?;
                let case = self.case.case(scenario, self.seed.expect("clap requires it"))?;
                Ok((scenario, case))
            }
        }
    }
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    select: CaseSelect,
    /// Log filter, e.g. `debug` or `info` (every line shows simulated time and node).
    #[arg(long, default_value = "info")]
    log: String,
    /// Write the trace as JSON lines to this file.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Write a self-contained HTML timeline (space-time diagram) to this file.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Print the fault plan.
    #[arg(long)]
    show_plan: bool,
}

#[derive(Args)]
struct ShrinkArgs {
    #[command(flatten)]
    select: CaseSelect,
    /// Most simulation runs to spend.
    #[arg(long, default_value_t = 400)]
    max_runs: u32,
    /// Corpus directory to save the shrunk case in.
    #[arg(long, default_value = "seeds")]
    out: PathBuf,
    /// Print the shrunk case without saving it.
    #[arg(long)]
    no_save: bool,
}

fn parse_seeds(text: &str) -> Result<Range<u64>, String> {
    let parse = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("`{s}` is not a seed (a non-negative integer)"))
    };
    let range = match text.split_once("..") {
        Some((a, "")) => parse(a)?..u64::MAX,
        Some((a, b)) => parse(a)?..parse(b)?,
        None => {
            let seed = parse(text)?;
            seed..seed.checked_add(1).ok_or("seed too large")?
        }
    };
    if range.is_empty() {
        return Err(format!(
            "seed range `{text}` is empty (use START..END with END > START)"
        ));
    }
    Ok(range)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    knobs::parse_duration(text)
}

fn parse_shard(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("`{text}` is not a shard: use I/N with 1 <= I <= N, e.g. 2/8");
    let (i, n) = text.split_once('/').ok_or_else(bad)?;
    let (i, n) = (
        i.parse::<u64>().map_err(|_| bad())?,
        n.parse::<u64>().map_err(|_| bad())?,
    );
    if n == 0 || i == 0 || i > n {
        return Err(bad());
    }
    Ok((i, n))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sweep(args) => run_sweep(args),
        Command::Replay(args) => run_replay(args),
        Command::Shrink(args) => run_shrink(args),
        Command::Merge(args) => run_merge(args),
        Command::Corpus { dir } => run_corpus(&dir),
        Command::List => {
            list();
            Ok(true)
        }
        Command::Bench(args) => bench::run(&args).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn run_sweep(args: SweepArgs) -> Result<bool, String> {
    let chosen: Vec<&'static dyn DynScenario> = if args.scenarios.is_empty() {
        if args.case.bug.is_some() {
            return Err("--bug needs exactly one --scenario".into());
        }
        scenarios::ALL.to_vec()
    } else {
        args.scenarios
            .iter()
            .map(|name| scenarios::find(name))
            .collect::<Result<_, _>>()?
    };
    let open = args.seeds.as_ref().is_some_and(|s| s.end == u64::MAX);
    if open && args.budget.is_none() {
        return Err("an open seed range `START..` needs a time budget (--for)".into());
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let config = SweepConfig {
        scenarios: chosen.iter().map(|s| s.name().to_string()).collect(),
        seeds: args.seeds.as_ref().map(|r| match r.end {
            u64::MAX => format!("{}..", r.start),
            end => format!("{}..{end}", r.start),
        }),
        bug: args.case.bug.clone(),
        servers: args.case.servers,
        clients: args.case.clients,
        ops: args.case.ops,
        budget_secs: args.budget.map(|b| b.as_secs()),
        check_determinism: args.check_determinism,
    };
    let started = Instant::now(); // determinism: ok — wall time for the report only
    let summaries = match args.budget {
        None => {
            let mut groups = Vec::new();
            for &scenario in &chosen {
                let template = args.case.case(scenario, 0)?;
                let seeds = args.seeds.clone().unwrap_or(0..scenario.default_seeds());
                groups.push((scenario, sweep::cases(scenario, seeds, args.shard, &template)));
            }
            sweep::sweep(&SweepPlan {
                groups,
                jobs,
                determinism_every: usize::from(args.check_determinism),
                progress: !args.no_progress && !args.json,
                stop_at_first_failure: false,
            })
        }
        Some(budget) => {
            let groups = chosen
                .iter()
                .map(|&scenario| {
                    Ok(Group {
                        scenario,
                        template: args.case.case(scenario, 0)?,
                        seeds: args.seeds.clone().unwrap_or(scenario.default_seeds()..u64::MAX),
                    })
                })
                .collect::<Result<_, String>>()?;
            let progress = if args.no_progress {
                Progress::Hidden
            } else if std::io::stderr().is_terminal() {
                Progress::Bar
            } else {
                Progress::Lines
            };
            Explore {
                groups,
                shard: args.shard,
                jobs,
                budget,
                check_determinism: args.check_determinism,
                progress,
                report_every: args.report_every,
            }
            .run()
        }
    };
    let report = Report {
        format: merge::FORMAT,
        sweep: config,
        shard: Shard {
            index: args.shard.0,
            count: args.shard.1,
        },
        wall_secs: started.elapsed().as_secs_f64(),
        summaries,
    };
    let json = || serde_json::to_string_pretty(&report).expect("reports serialize");
    if let Some(path) = &args.out {
        std::fs::write(path, json() + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    // With --json, stdout holds only the report; everything else goes to stderr.
    let say = |text: String| {
        if args.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    };
    if args.json {
        println!("{}", json());
    } else {
        print!("{}", sweep::table(&report.summaries));
    }
    if args.budget.is_some() {
        for s in &report.summaries {
            if let (Some(first), Some(last)) = (s.trace_hashes.keys().next(), s.trace_hashes.keys().last()) {
                say(format!("{}: explored {} seeds, {first} to {last}", s.label(), s.seeds));
            }
        }
        if !args.no_save {
            let failures: Vec<sweep::Failure> = report.summaries.iter().flat_map(|s| s.failures.clone()).collect();
            let options = corpus::SaveOptions {
                shrink: args.shrink.then_some(400),
                per_invariant: args.save_max,
            };
            let saved = corpus::save_found(&args.corpus, &failures, options)?;
            for path in &saved.paths {
                say(format!(
                    "saved {}; replay: cargo run --release -p ringfence-sim -- replay --case-file {}",
                    path.display(),
                    path.display()
                ));
            }
            for path in &saved.existing {
                say(format!("already in the corpus: {}", path.display()));
            }
            if saved.skipped > 0 {
                say(format!(
                    "{} more failures not saved (--save-max {} per scenario and invariant)",
                    saved.skipped, args.save_max
                ));
            }
        }
    } else if args.shrink {
        for failure in report.summaries.iter().filter_map(|s| s.failures.first()) {
            let scenario = scenarios::validate(&failure.case)?;
            let shrunk = shrink::shrink(scenario, &failure.case, 400)?;
            report_shrunk(&shrunk, Some(std::path::Path::new("seeds")))?;
        }
    }
    Ok(report.passed())
}

fn run_merge(args: MergeArgs) -> Result<bool, String> {
    let paths = merge::report_paths(&args.reports)?;
    let reports = paths
        .into_iter()
        .map(|path| merge::load(&path).map(|report| (path, report)))
        .collect::<Result<Vec<_>, _>>()?;
    let merged = merge::merge(reports)?;
    let json = || serde_json::to_string_pretty(&merged.report).expect("reports serialize");
    if let Some(path) = &args.out {
        std::fs::write(path, json() + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if args.json {
        println!("{}", json());
    } else {
        print!("{}", merged.text(args.show.unwrap_or(usize::MAX)));
    }
    Ok(merged.passed())
}

fn run_replay(args: ReplayArgs) -> Result<bool, String> {
    let (scenario, case) = args.select.resolve()?;
    logging::init(&args.log)?;
    let options = RunOptions {
        keep_trace: args.trace.is_some() || args.html.is_some(),
    };
    let outcome = ringfence_sim::sweep::run_isolated(scenario, &case, options);
    if args.show_plan {
        println!(
            "{}",
            serde_json::to_string_pretty(&outcome.plan).expect("plans serialize")
        );
    }
    if let Some(path) = &args.trace {
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?,
        );
        trace::write_jsonl(&outcome.events, &mut file)
            .and_then(|()| file.flush())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("trace: {} events written to {}", outcome.events.len(), path.display());
    }
    if let Some(path) = &args.html {
        std::fs::write(path, timeline::html(&outcome)).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("timeline: written to {}", path.display());
    }
    let fired: Vec<String> = outcome.fired.iter().map(|(k, n)| format!("{k}={n}")).collect();
    let situations: Vec<String> = outcome.situations.iter().map(|(k, n)| format!("{k}={n}")).collect();
    println!(
        "scenario {} seed {}{}: {} ops, {} faults in plan, fired [{}], situations [{}], simulated {:.3}s",
        case.scenario,
        case.seed,
        case.bug.as_deref().map(|b| format!(" bug {b}")).unwrap_or_default(),
        outcome.ops,
        outcome.plan.faults.len(),
        fired.join(" "),
        situations.join(" "),
        outcome.sim_time.as_secs_f64()
    );
    println!(
        "trace hash: {:016x} ({} events)",
        outcome.trace_hash, outcome.trace_events
    );
    if outcome.violations.is_empty() {
        println!("verdict: pass");
    }
    for v in &outcome.violations {
        println!("verdict: VIOLATION {v}");
    }
    Ok(!outcome.failed())
}

fn run_shrink(args: ShrinkArgs) -> Result<bool, String> {
    let (scenario, case) = args.select.resolve()?;
    let shrunk = shrink::shrink(scenario, &case, args.max_runs)?;
    report_shrunk(&shrunk, (!args.no_save).then_some(args.out.as_path()))?;
    Ok(true)
}

/// Prints a shrink result and saves it to `dir` when given.
fn report_shrunk(shrunk: &shrink::Shrunk, dir: Option<&std::path::Path>) -> Result<(), String> {
    println!(
        "shrunk seed {} ({}) in {} runs",
        shrunk.case.seed, shrunk.invariant, shrunk.runs
    );
    println!("  before: {}", shrunk.before);
    println!("  after:  {}", shrunk.after);
    let entry = corpus::Entry::found(
        shrunk.case.clone(),
        &shrunk.invariant,
        format!("shrunk from {}; violates {}", shrunk.before, shrunk.invariant),
    );
    println!("{}", serde_json::to_string_pretty(&entry).expect("entries serialize"));
    if let Some(dir) = dir {
        let path = dir.join(shrink::corpus_name(&shrunk.case));
        corpus::save(&path, &entry)?;
        println!(
            "saved to {}; replay: cargo run --release -p ringfence-sim -- replay --case-file {}",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

fn run_corpus(dir: &std::path::Path) -> Result<bool, String> {
    let entries = corpus::load_dir(dir)?;
    let mut ok = true;
    for (path, entry) in &entries {
        match corpus::replay(entry) {
            Ok(_) => println!("ok    {}", path.display()),
            Err(why) => {
                ok = false;
                println!("FAIL  {}: {why}", path.display());
            }
        }
    }
    println!("{} cases replayed", entries.len());
    Ok(ok)
}

fn list() {
    for s in scenarios::ALL {
        let w = s.default_workload();
        println!(
            "{:<12} {} (servers {}, clients {}, ops {}, default sweep {} seeds)",
            s.name(),
            s.about(),
            s.default_servers(),
            w.clients,
            w.ops,
            s.default_seeds()
        );
        for b in s.bugs() {
            println!("  --bug {:<28} {} [caught by {}]", b.name, b.about, b.symptoms());
        }
    }
}
