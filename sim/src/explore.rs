//! Time-budgeted sweeps: fresh seeds of every scenario, interleaved in one
//! worker pool, until the budget runs out.
//!
//! Workers claim seeds in order (the k-th seed of every group before the
//! (k+1)-th of any), and a claimed seed always finishes, so the seeds that ran
//! are a prefix of each group's sequence: a later run continues where the
//! report says this one stopped, and shards stay disjoint.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::runner::{Case, RunOptions};
use crate::scenarios::DynScenario;
use crate::sweep::{self, run_isolated, ScenarioSummary};

/// One scenario (with a planted bug, servers and workload from `template`)
/// and the seeds to take from, in order; `seeds.end` may be `u64::MAX`.
#[derive(Clone)]
pub struct Group {
    pub scenario: &'static dyn DynScenario,
    pub template: Case,
    pub seeds: Range<u64>,
}

impl Group {
    /// The `k`-th seed of this group that belongs to shard `(index, count)`
    /// (the seeds `s` with `s % count == index - 1`, as in [`sweep::cases`]).
    pub fn nth(&self, k: u64, (index, count): (u64, u64)) -> Option<u64> {
        let first = self.seeds.start + ((index - 1) + count - self.seeds.start % count) % count;
        let seed = first.checked_add(k.checked_mul(count)?)?;
        (seed < self.seeds.end).then_some(seed)
    }
}

/// How an exploration shows that it is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Hidden,
    /// A progress bar on a terminal, failures and the running table above it.
    Bar,
    /// A plain progress line and the running table every report interval, for logs.
    Lines,
}

/// A time-budgeted sweep.
#[derive(Clone)]
pub struct Explore {
    pub groups: Vec<Group>,
    pub shard: (u64, u64),
    pub jobs: usize,
    pub budget: Duration,
    /// Rerun every seed and compare trace hashes.
    pub check_determinism: bool,
    pub progress: Progress,
    /// How often the running table is shown.
    pub report_every: Duration,
}

impl Explore {
    /// The next seed to run, or `None` once every group is exhausted.
    fn claim(&self, next: &AtomicU64) -> Option<(usize, u64)> {
        let groups = self.groups.len() as u64;
        loop {
            let claim = next.fetch_add(1, Ordering::Relaxed);
            let (group, k) = ((claim % groups) as usize, claim / groups);
            if let Some(seed) = self.groups[group].nth(k, self.shard) {
                return Some((group, seed));
            }
            if self.groups.iter().all(|g| g.nth(k, self.shard).is_none()) {
                return None;
            }
        }
    }

    /// Runs until the budget is spent or every group's seeds ran, and
    /// returns one summary per group.
    pub fn run(&self) -> Vec<ScenarioSummary> {
        assert!(!self.groups.is_empty(), "nothing to explore");
        let started = Instant::now(); // determinism: ok — the budget is wall time
        let deadline = started + self.budget;
        let tallies: Mutex<Vec<ScenarioSummary>> = Mutex::new(
            self.groups
                .iter()
                .map(|g| ScenarioSummary::empty(g.scenario, g.template.bug.clone()))
                .collect(),
        );
        let next = AtomicU64::new(0);
        let bar = self.bar();
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..self.jobs.max(1))
                .map(|_| scope.spawn(|| self.work(&next, deadline, &tallies, &bar)))
                .collect();
            let mut last_report = Instant::now(); // determinism: ok — report pacing
            while !workers.iter().all(|w| w.is_finished()) {
                std::thread::sleep(Duration::from_millis(100)); // determinism: ok — the reporter paces its output, it runs no seed
                let elapsed = started.elapsed();
                let (seeds, failing) = totals(&tallies.lock().expect("no panics hold this lock"));
                bar.set_position(elapsed.as_millis().min(self.budget.as_millis()) as u64);
                bar.set_message(format!(
                    "{seeds} seeds, {failing} failing, {:.0} seeds/s",
                    seeds as f64 / elapsed.as_secs_f64().max(1e-9)
                ));
                if last_report.elapsed() >= self.report_every {
                    last_report = Instant::now(); // determinism: ok — report pacing
                    let snapshot = self.finish(tallies.lock().expect("no panics hold this lock").clone(), elapsed);
                    let line = format!(
                        "[{:>6.0} s of {:.0} s] {seeds} seeds, {failing} failing\n{}",
                        elapsed.as_secs_f64(),
                        self.budget.as_secs_f64(),
                        sweep::table_showing(&snapshot, 0)
                    );
                    self.show(&bar, line.trim_end());
                }
            }
        });
        bar.finish_and_clear();
        let tallies = tallies.into_inner().expect("workers finished");
        self.finish(tallies, started.elapsed())
    }

    fn work(
        &self,
        next: &AtomicU64,
        deadline: Instant,
        tallies: &Mutex<Vec<ScenarioSummary>>,
        bar: &indicatif::ProgressBar,
    ) {
        // The budget is wall time: it decides how many seeds run, never how
        // one runs.
        loop {
            let spent = Instant::now() >= deadline; // determinism: ok — the budget of `--for`
            if spent {
                return;
            }
            let Some((g, seed)) = self.claim(next) else { return };
            let group = &self.groups[g];
            let case = Case {
                seed,
                scenario: group.scenario.name().to_string(),
                ..group.template.clone()
            };
            let t = Instant::now(); // determinism: ok — wall time for the report only
            let outcome = run_isolated(group.scenario, &case, RunOptions::default());
            let took = t.elapsed();
            let rerun = self
                .check_determinism
                .then(|| run_isolated(group.scenario, &case, RunOptions::default()).trace_hash);
            let mut tallies = tallies.lock().expect("no panics hold this lock");
            let tally = &mut tallies[g];
            let failures_before = tally.failures.len();
            tally.add(group.scenario, &outcome, took, rerun);
            if let Some(failure) = tally.failures.get(failures_before) {
                let line = format!("{}: {}", tally.label(), sweep::failure_line(failure).trim_start());
                self.show(bar, line.trim_end());
            }
        }
    }

    /// Summaries with rates: each group is charged its share of the wall
    /// time, in proportion to the time its seeds took.
    fn finish(&self, mut tallies: Vec<ScenarioSummary>, wall: Duration) -> Vec<ScenarioSummary> {
        let busy: f64 = tallies.iter().map(|t| t.busy_secs).sum();
        for (tally, group) in tallies.iter_mut().zip(&self.groups) {
            let share = if busy > 0.0 { tally.busy_secs / busy } else { 0.0 };
            tally.finish(group.scenario, wall.as_secs_f64() * share);
        }
        tallies
    }

    fn bar(&self) -> indicatif::ProgressBar {
        if self.progress != Progress::Bar {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new(self.budget.as_millis() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} exploring [{bar:30}] {elapsed} of {len_secs} {msg}")
                .expect("valid template")
                .with_key(
                    "len_secs",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{}s", state.len().unwrap_or(0) / 1000);
                    },
                )
                .progress_chars("=> "),
        );
        bar
    }

    fn show(&self, bar: &indicatif::ProgressBar, text: &str) {
        match self.progress {
            Progress::Hidden => {}
            Progress::Bar => bar.println(text),
            Progress::Lines => eprintln!("{text}"),
        }
    }
}

fn totals(tallies: &[ScenarioSummary]) -> (u64, usize) {
    (
        tallies.iter().map(|t| t.seeds).sum(),
        tallies.iter().map(|t| t.failures.len()).sum(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios;

    fn group(seeds: Range<u64>) -> Group {
        let scenario = scenarios::find("counter").unwrap();
        Group {
            scenario,
            template: scenarios::default_case(scenario, 0, None),
            seeds,
        }
    }

    #[test]
    fn shard_seeds_match_fixed_sweeps() {
        let scenario = scenarios::find("counter").unwrap();
        let template = scenarios::default_case(scenario, 0, None);
        for shard in [(1, 1), (1, 3), (2, 3), (3, 3), (4, 7)] {
            for range in [0..20, 5..31, 13..14] {
                let fixed: Vec<u64> = sweep::cases(scenario, range.clone(), shard, &template)
                    .iter()
                    .map(|c| c.seed)
                    .collect();
                let g = group(range.clone());
                let explored: Vec<u64> = (0..).map_while(|k| g.nth(k, shard)).collect();
                assert_eq!(fixed, explored, "{range:?} shard {shard:?}");
            }
        }
        assert_eq!(group(u64::MAX - 2..u64::MAX).nth(5, (1, 1)), None, "no overflow");
    }

    #[test]
    fn claims_interleave_groups_and_end_when_all_are_exhausted() {
        let explore = Explore {
            groups: vec![group(0..2), group(10..15)],
            shard: (1, 1),
            jobs: 1,
            budget: Duration::from_secs(1),
            check_determinism: false,
            progress: Progress::Hidden,
            report_every: Duration::from_secs(60),
        };
        let next = AtomicU64::new(0);
        let claims: Vec<(usize, u64)> = std::iter::from_fn(|| explore.claim(&next)).collect();
        assert_eq!(
            claims,
            vec![(0, 0), (1, 10), (0, 1), (1, 11), (1, 12), (1, 13), (1, 14)]
        );
    }

    #[test]
    fn a_budget_stops_an_open_ended_exploration() {
        let explore = Explore {
            groups: vec![group(1000..u64::MAX)],
            shard: (1, 1),
            jobs: 2,
            budget: Duration::from_millis(300),
            check_determinism: false,
            progress: Progress::Hidden,
            report_every: Duration::from_secs(60),
        };
        let started = Instant::now(); // determinism: ok — the test measures the wall-time budget
        let summary = explore.run().remove(0);
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(summary.seeds > 0);
        // The seeds that ran are a prefix: 1000, 1001, ... with no gap.
        let seeds: Vec<u64> = summary.trace_hashes.keys().copied().collect();
        assert_eq!(seeds, (1000..1000 + summary.seeds).collect::<Vec<_>>());
    }
}
