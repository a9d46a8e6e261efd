//! Seed sweeps: many cases across all cores, each on a fresh thread (madsim
//! seeds hash maps once per thread, so reusing a thread would make a seed's
//! run depend on the seeds before it), panics caught and reported as
//! failures, determinism optionally re-checked, results summarized.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use ringfence::history::Violation;
use serde::{Deserialize, Serialize};

use crate::plan::FaultKind;
use crate::runner::{Case, RunOptions, RunReport};
use crate::scenarios::{self, DynScenario};

thread_local! {
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

const SEED_THREAD: &str = "ringfence-seed";

/// Installs (once) a panic hook that keeps panics on seed threads quiet and
/// remembers their message and location for the report.
fn quiet_seed_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(SEED_THREAD) {
                let message = info
                    .payload()
                    .downcast_ref::<Violation>()
                    .map(|v| v.to_string())
                    .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".into());
                let location = info.location().map(|l| format!(" at {l}")).unwrap_or_default();
                PANIC.with(|p| *p.borrow_mut() = Some(format!("{message}{location}")));
            } else {
                default(info);
            }
        }));
    });
}

/// Runs one validated case on a fresh thread; a panic becomes a violation
/// instead of aborting the caller: the one passed to
/// [`abort_run`](crate::scenario::abort_run), or `panic` for any other.
pub fn run_isolated(scenario: &'static dyn DynScenario, case: &Case, options: RunOptions) -> RunReport {
    run_isolated_with(scenario, case, options, None)
}

/// [`run_isolated`] with the test knob of [`crate::runner::run_with`].
#[doc(hidden)]
pub fn run_isolated_with(
    scenario: &'static dyn DynScenario,
    case: &Case,
    options: RunOptions,
    disable_effect: Option<FaultKind>,
) -> RunReport {
    quiet_seed_panics();
    let case = case.clone();
    // determinism: ok — a fresh OS thread per seed is what makes runs independent.
    std::thread::Builder::new()
        .name(SEED_THREAD.into())
        .stack_size(32 << 20)
        .spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                scenario.run_with(&case, options, disable_effect)
            }));
            result.unwrap_or_else(|payload| {
                let message = PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| "panic".into());
                let violation = match payload.downcast::<Violation>() {
                    Ok(violation) => *violation,
                    // A sans-IO core's own invariant, checked between its
                    // handlers.
                    Err(_) if ringfence::check::failed() => Violation::new("core-check", message, vec![]),
                    Err(_) => Violation::new("panic", message, vec![]),
                };
                RunReport::from_panic(scenario.plan(&case), case, violation)
            })
        })
        .expect("spawn a seed thread")
        .join()
        .expect("seed threads catch their panics")
}

/// One failing seed, with the command that reproduces it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    pub seed: u64,
    pub violation: Violation,
    pub repro: String,
    pub trace_hash: String,
    /// The case that failed (its plan is the seed's), so that a merged
    /// report can still save it to the corpus.
    pub case: Case,
}

/// The results for one scenario (and planted bug, if any).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioSummary {
    pub scenario: String,
    pub bug: Option<String>,
    pub seeds: u64,
    pub ops: u64,
    pub messages: u64,
    pub fired: BTreeMap<FaultKind, u64>,
    /// Fault kinds the scenario supports that never fired in this sweep.
    pub never_fired: Vec<FaultKind>,
    /// Named situations aimed faults brought about, summed over seeds.
    pub situations: BTreeMap<String, u64>,
    /// Situations the scenario aims for that never occurred in this sweep.
    pub never_occurred: Vec<String>,
    pub failures: Vec<Failure>,
    /// Seeds whose rerun gave a different trace hash.
    pub nondeterministic: Vec<u64>,
    pub determinism_checked: u64,
    pub wall_secs: f64,
    /// Wall time of the seeds' runs, summed (more than `wall_secs` with
    /// several jobs).
    #[serde(default)]
    pub busy_secs: f64,
    /// Simulated seconds, summed over seeds.
    pub sim_secs: f64,
    pub seeds_per_sec: f64,
    /// Simulated seconds per wall second of one core.
    pub sim_to_wall: f64,
    /// Every seed that ran and its trace hash: what shows that a merged
    /// sweep ran the same cases as an unsharded one.
    #[serde(default)]
    pub trace_hashes: BTreeMap<u64, String>,
}

impl ScenarioSummary {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
            && self.nondeterministic.is_empty()
            && self.never_fired.is_empty()
            && self.never_occurred.is_empty()
    }

    /// An empty summary, to fold seeds or other summaries into.
    pub fn empty(scenario: &dyn DynScenario, bug: Option<String>) -> ScenarioSummary {
        ScenarioSummary {
            scenario: scenario.name().to_string(),
            bug,
            seeds: 0,
            ops: 0,
            messages: 0,
            fired: BTreeMap::new(),
            never_fired: Vec::new(),
            situations: BTreeMap::new(),
            never_occurred: Vec::new(),
            failures: Vec::new(),
            nondeterministic: Vec::new(),
            determinism_checked: 0,
            wall_secs: 0.0,
            busy_secs: 0.0,
            sim_secs: 0.0,
            seeds_per_sec: 0.0,
            sim_to_wall: 0.0,
            trace_hashes: BTreeMap::new(),
        }
    }

    /// Folds one seed in: its outcome, the wall time it took, and the trace
    /// hash of its rerun if determinism was checked.
    pub fn add(&mut self, scenario: &dyn DynScenario, outcome: &RunReport, took: Duration, rerun: Option<u64>) {
        for (kind, n) in &outcome.fired {
            *self.fired.entry(*kind).or_default() += n;
        }
        for (situation, n) in &outcome.situations {
            *self.situations.entry(situation.clone()).or_default() += n;
        }
        self.seeds += 1;
        self.ops += outcome.ops;
        self.messages += outcome.messages;
        self.sim_secs += outcome.sim_time.as_secs_f64();
        self.busy_secs += took.as_secs_f64();
        let hash = format!("{:016x}", outcome.trace_hash);
        if let Some(rerun) = rerun {
            self.determinism_checked += 1;
            if rerun != outcome.trace_hash {
                self.nondeterministic.push(outcome.case.seed);
            }
        }
        if let Some(violation) = outcome.violations.first() {
            let defaults = (scenario.default_servers(), scenario.default_workload());
            self.failures.push(Failure {
                seed: outcome.case.seed,
                violation: violation.clone(),
                repro: outcome.case.repro_command(defaults),
                trace_hash: hash.clone(),
                case: outcome.case.clone(),
            });
        }
        self.trace_hashes.insert(outcome.case.seed, hash);
    }

    /// Folds in the summary of other seeds of the same scenario and bug (a
    /// shard, or a later batch). A seed present in both with different trace
    /// hashes is nondeterministic.
    pub fn absorb(&mut self, other: ScenarioSummary) {
        for (kind, n) in other.fired {
            *self.fired.entry(kind).or_default() += n;
        }
        for (situation, n) in other.situations {
            *self.situations.entry(situation).or_default() += n;
        }
        self.ops += other.ops;
        self.messages += other.messages;
        self.sim_secs += other.sim_secs;
        self.busy_secs += other.busy_secs;
        self.wall_secs += other.wall_secs;
        self.determinism_checked += other.determinism_checked;
        self.failures.extend(other.failures);
        self.nondeterministic.extend(other.nondeterministic);
        let mut seen_twice = 0;
        for (seed, hash) in other.trace_hashes {
            match self.trace_hashes.get(&seed) {
                Some(mine) => {
                    seen_twice += 1;
                    if *mine != hash {
                        self.nondeterministic.push(seed);
                    }
                }
                None => {
                    self.trace_hashes.insert(seed, hash);
                }
            }
        }
        self.seeds += other.seeds - seen_twice.min(other.seeds);
        self.failures.sort_by_key(|f| f.seed);
        self.failures.dedup_by_key(|f| f.seed);
        self.nondeterministic.sort_unstable();
        self.nondeterministic.dedup();
    }

    /// Recomputes what depends on all seeds together: fault-kind and
    /// situation coverage (demanded from [`MIN_SEEDS_FOR_FAULT_COVERAGE`]
    /// seeds on) and the rates, given the wall time to charge.
    pub fn finish(&mut self, scenario: &dyn DynScenario, wall_secs: f64) {
        let covered = self.seeds >= MIN_SEEDS_FOR_FAULT_COVERAGE;
        self.never_fired = if covered {
            scenario
                .fault_kinds()
                .into_iter()
                .filter(|k| !k.opportunistic() && !self.fired.contains_key(k))
                .collect()
        } else {
            Vec::new()
        };
        self.never_occurred = if covered {
            scenario
                .situations()
                .iter()
                .filter(|s| !self.situations.contains_key(**s))
                .map(|s| s.to_string())
                .collect()
        } else {
            Vec::new()
        };
        self.wall_secs = wall_secs;
        self.seeds_per_sec = self.seeds as f64 / wall_secs.max(1e-9);
        self.sim_to_wall = self.sim_secs / self.busy_secs.max(1e-9);
    }

    /// The scenario's name with its planted bug, as tables show it.
    pub fn label(&self) -> String {
        match &self.bug {
            Some(bug) => format!("{} +{bug}", self.scenario),
            None => self.scenario.clone(),
        }
    }
}

/// What to sweep.
#[derive(Clone)]
pub struct SweepPlan {
    /// One entry per scenario (and bug) to sweep, each with its cases.
    pub groups: Vec<(&'static dyn DynScenario, Vec<Case>)>,
    pub jobs: usize,
    /// Rerun every `n`-th case and compare trace hashes (0 = never).
    pub determinism_every: usize,
    pub progress: bool,
    /// Stop a group at its first failure (used to time how fast bugs are caught).
    pub stop_at_first_failure: bool,
}

/// Sweeps below this many seeds are too small to demand that every fault
/// kind fired.
pub const MIN_SEEDS_FOR_FAULT_COVERAGE: u64 = 32;

/// Runs every group and returns one summary per group.
pub fn sweep(plan: &SweepPlan) -> Vec<ScenarioSummary> {
    let total: u64 = plan.groups.iter().map(|(_, cases)| cases.len() as u64).sum();
    let bar = if plan.progress {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg:<24} [{bar:30}] {pos}/{len} seeds {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let summaries = plan
        .groups
        .iter()
        .map(|(scenario, cases)| sweep_group(*scenario, cases, plan, &bar))
        .collect();
    bar.finish_and_clear();
    summaries
}

fn sweep_group(
    scenario: &'static dyn DynScenario,
    cases: &[Case],
    plan: &SweepPlan,
    bar: &indicatif::ProgressBar,
) -> ScenarioSummary {
    bar.set_message(match cases.first().and_then(|c| c.bug.as_deref()) {
        Some(bug) => format!("{} +{bug}", scenario.name()),
        None => scenario.name().to_string(),
    });
    let started = Instant::now(); // determinism: ok — wall time for the report only
    let next = AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let results: Mutex<Vec<SeedResult>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..plan.jobs.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cases.len() || stop.load(Ordering::Relaxed) {
                    return;
                }
                let t = Instant::now(); // determinism: ok — wall time for the report only
                let outcome = run_isolated(scenario, &cases[i], RunOptions::default());
                let wall = t.elapsed();
                let rerun = (plan.determinism_every > 0 && i % plan.determinism_every == 0)
                    .then(|| run_isolated(scenario, &cases[i], RunOptions::default()).trace_hash);
                if outcome.failed() && plan.stop_at_first_failure {
                    stop.store(true, Ordering::Relaxed);
                }
                bar.inc(1);
                results
                    .lock()
                    .expect("no panics hold this lock")
                    .push((i, outcome, wall, rerun));
            });
        }
    });
    let mut results = results.into_inner().expect("workers finished");
    results.sort_by_key(|(i, ..)| *i);
    summarize(scenario, results, started.elapsed())
}

/// One seed's outcome: case index, outcome, wall time, rerun trace hash.
type SeedResult = (usize, RunReport, Duration, Option<u64>);

fn summarize(scenario: &dyn DynScenario, results: Vec<SeedResult>, wall: Duration) -> ScenarioSummary {
    let bug = results.first().and_then(|(_, o, ..)| o.case.bug.clone());
    let mut summary = ScenarioSummary::empty(scenario, bug);
    for (_, outcome, took, rerun) in &results {
        summary.add(scenario, outcome, *took, *rerun);
    }
    summary.finish(scenario, wall.as_secs_f64());
    summary
}

/// Cases for `seeds` of `scenario`, keeping those of shard `shard` (1-based
/// index, count).
pub fn cases(scenario: &dyn DynScenario, seeds: std::ops::Range<u64>, shard: (u64, u64), template: &Case) -> Vec<Case> {
    let (index, count) = shard;
    seeds
        .filter(|seed| seed % count == index - 1)
        .map(|seed| Case {
            seed,
            scenario: scenario.name().to_string(),
            ..template.clone()
        })
        .collect()
}

/// A text table of sweep results, with the first few failures of each row.
pub fn table(summaries: &[ScenarioSummary]) -> String {
    table_showing(summaries, 5)
}

/// A text table of sweep results, with at most `shown` failures of each row.
pub fn table_showing(summaries: &[ScenarioSummary], shown: usize) -> String {
    let mut out = String::new();
    let header = format!(
        "{:<22} {:>6} {:>7} {:>8} {:>5} {:>8} {:>9}  faults fired\n",
        "scenario", "seeds", "ops", "msgs", "fail", "seeds/s", "sim/wall"
    );
    out += &header;
    for s in summaries {
        let name = s.label();
        let fired: Vec<String> = s.fired.iter().map(|(k, n)| format!("{k}={n}")).collect();
        out += &format!(
            "{:<22} {:>6} {:>7} {:>8} {:>5} {:>8.1} {:>8.0}x  {}\n",
            name,
            s.seeds,
            s.ops,
            s.messages,
            s.failures.len(),
            s.seeds_per_sec,
            s.sim_to_wall,
            fired.join(" ")
        );
        if !s.situations.is_empty() {
            let seen: Vec<String> = s.situations.iter().map(|(k, n)| format!("{k}={n}")).collect();
            out += &format!("  situations: {}\n", seen.join(" "));
        }
        if !s.never_occurred.is_empty() {
            out += &format!("  SITUATIONS NEVER OCCURRED: {}\n", s.never_occurred.join(", "));
        }
        if !s.never_fired.is_empty() {
            let kinds: Vec<_> = s.never_fired.iter().map(|k| k.name()).collect();
            out += &format!("  FAULTS NEVER FIRED: {}\n", kinds.join(", "));
        }
        if !s.nondeterministic.is_empty() {
            out += &format!(
                "  NONDETERMINISTIC SEEDS (trace hash differs on rerun): {:?}\n",
                s.nondeterministic
            );
        } else if s.determinism_checked > 0 {
            out += &format!(
                "  determinism: {} seeds rerun, identical trace hashes\n",
                s.determinism_checked
            );
        }
        for f in s.failures.iter().take(shown) {
            out += &failure_line(f);
        }
        if s.failures.len() > shown {
            let rest: Vec<String> = s.failures[shown..].iter().map(|f| f.seed.to_string()).collect();
            out += &format!("  ... and {} more failing seeds: {}\n", rest.len(), rest.join(" "));
        }
    }
    out
}

/// One failure with its reproduce command, as tables print it.
pub fn failure_line(f: &Failure) -> String {
    format!(
        "  seed {} violates {}: {}\n    reproduce: {}  (trace hash {})\n",
        f.seed, f.violation.invariant, f.violation.detail, f.repro, f.trace_hash
    )
}

/// Every scenario's default cases over its default seeds (or `seeds`) —
/// what `cargo test` and a plain `ringfence-sim sweep` run.
pub fn default_groups(seeds: Option<std::ops::Range<u64>>) -> Vec<(&'static dyn DynScenario, Vec<Case>)> {
    scenarios::ALL
        .iter()
        .map(|&s| (s, default_cases(s, seeds.clone(), None)))
        .collect()
}

/// `scenario`'s default cases, optionally with a planted bug on.
pub fn default_cases(scenario: &dyn DynScenario, seeds: Option<std::ops::Range<u64>>, bug: Option<&str>) -> Vec<Case> {
    let seeds = seeds.unwrap_or(0..scenario.default_seeds());
    cases(scenario, seeds, (1, 1), &scenarios::default_case(scenario, 0, bug))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(hashes: &[(u64, &str)]) -> ScenarioSummary {
        let mut s = ScenarioSummary::empty(scenarios::find("counter").unwrap(), None);
        s.seeds = hashes.len() as u64;
        s.ops = 10 * s.seeds;
        s.trace_hashes = hashes.iter().map(|(seed, h)| (*seed, h.to_string())).collect();
        s
    }

    #[test]
    fn absorbing_counts_each_seed_once_and_flags_differing_hashes() {
        let mut a = summary(&[(0, "aa"), (2, "bb")]);
        a.absorb(summary(&[(1, "cc"), (3, "dd")]));
        assert_eq!((a.seeds, a.ops, a.nondeterministic.len()), (4, 40, 0));
        a.absorb(summary(&[(2, "bb"), (3, "ee")]));
        assert_eq!(a.seeds, 4, "seeds 2 and 3 were already there");
        assert_eq!(a.nondeterministic, [3], "seed 3 ran twice with different hashes");
        assert!(!a.passed());
    }

    #[test]
    fn coverage_is_judged_on_the_folded_seeds() {
        let scenario = scenarios::find("counter").unwrap();
        let mut small = summary(&(0..20).map(|s| (s, "aa")).collect::<Vec<_>>());
        small.finish(scenario, 1.0);
        assert!(small.never_fired.is_empty(), "too few seeds to judge");
        small.absorb(summary(&(20..40).map(|s| (s, "aa")).collect::<Vec<_>>()));
        small.finish(scenario, 1.0);
        assert!(!small.never_fired.is_empty(), "40 seeds fired nothing");
    }
}
