//! Environment variables that widen or pin the sweeps `cargo test` runs, in
//! the manner of `PROPTEST_CASES` and `MADSIM_TEST_SEED`. A failing test
//! prints them, the one command that reproduces the failure, and where it
//! saved the case so that the next plain `cargo test` replays it.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::corpus::{self, SaveOptions};
use crate::explore::{Explore, Group, Progress};
use crate::runner::Case;
use crate::scenarios::{self, DynScenario};
use crate::sweep::{self, ScenarioSummary, SweepPlan};

/// The knobs, as a failing test prints them.
pub const HELP: &str = "\
knobs (environment variables read by cargo test):
  RINGFENCE_SEEDS=N or A..B   seeds per scenario: 0..N, or A..B (default: each scenario's default sweep)
  RINGFENCE_SEED=S            only seed S (reproduce one failure)
  RINGFENCE_SCENARIO=a,b      only these scenarios (sweep, planted bugs, corpus)
  RINGFENCE_SWEEP_TIME=10m    after those seeds, explore fresh ones until this much time has passed
  RINGFENCE_JOBS=N            worker threads (default: all cores)
  RINGFENCE_SAVE=DIR or off   where failures outside the default seeds are saved (default: seeds/)
  RINGFENCE_SHRINK=1          shrink a failure before saving it
  RINGFENCE_CASE=TEXT         only corpus files whose name contains TEXT";

/// Most runs spent shrinking one saved failure.
const SHRINK_RUNS: u32 = 400;

/// The knobs' values.
#[derive(Debug, Clone, PartialEq)]
pub struct Knobs {
    /// Seeds per scenario; `None` for each scenario's default sweep.
    pub seeds: Option<Range<u64>>,
    /// `RINGFENCE_SEED` was given: one seed, to reproduce a failure.
    pub pinned: bool,
    pub scenarios: Option<Vec<String>>,
    pub budget: Option<Duration>,
    pub jobs: usize,
    /// Where found failures are saved; `None` to not save them.
    pub save: Option<PathBuf>,
    pub shrink: bool,
    /// Corpus files to replay: those whose name contains this.
    pub case: Option<String>,
}

impl Knobs {
    /// Reads the knobs from the environment; `corpus` is where found failures
    /// go unless `RINGFENCE_SAVE` says otherwise.
    pub fn from_env(corpus: &Path) -> Result<Knobs, String> {
        Knobs::parse(|name| std::env::var(name).ok(), corpus)
    }

    /// Reads the knobs through `get` (the environment, or a test's table).
    pub fn parse(get: impl Fn(&str) -> Option<String>, corpus: &Path) -> Result<Knobs, String> {
        let get = |name: &str| get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let bad = |name: &str, value: &str, why: &str| format!("{name}={value}: {why}\n{HELP}");
        let number = |name: &str, value: &str| {
            value
                .parse::<u64>()
                .map_err(|_| bad(name, value, "not a non-negative integer"))
        };
        let (seeds, pinned) = match (get("RINGFENCE_SEED"), get("RINGFENCE_SEEDS")) {
            (Some(_), Some(_)) => return Err(format!("set RINGFENCE_SEED or RINGFENCE_SEEDS, not both\n{HELP}")),
            (Some(seed), None) => {
                let s = number("RINGFENCE_SEED", &seed)?;
                (Some(s..s.saturating_add(1)), true)
            }
            (None, Some(seeds)) => {
                let range = match seeds.split_once("..") {
                    Some((a, b)) => number("RINGFENCE_SEEDS", a)?..number("RINGFENCE_SEEDS", b)?,
                    None => 0..number("RINGFENCE_SEEDS", &seeds)?,
                };
                if range.is_empty() {
                    return Err(bad(
                        "RINGFENCE_SEEDS",
                        &seeds,
                        "no seeds (use N > 0 or A..B with B > A)",
                    ));
                }
                (Some(range), false)
            }
            (None, None) => (None, false),
        };
        let scenarios = match get("RINGFENCE_SCENARIO") {
            Some(list) => {
                let names: Vec<String> = list
                    .split([',', ' '])
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                for name in &names {
                    scenarios::find(name).map_err(|e| bad("RINGFENCE_SCENARIO", &list, &e))?;
                }
                Some(names)
            }
            None => None,
        };
        let budget = match get("RINGFENCE_SWEEP_TIME") {
            Some(_) if pinned => {
                return Err(format!(
                    "RINGFENCE_SEED pins one seed; it cannot be combined with RINGFENCE_SWEEP_TIME\n{HELP}"
                ))
            }
            Some(text) => Some(parse_duration(&text).map_err(|e| bad("RINGFENCE_SWEEP_TIME", &text, &e))?),
            None => None,
        };
        let jobs = match get("RINGFENCE_JOBS") {
            Some(text) => match number("RINGFENCE_JOBS", &text)? {
                0 => return Err(bad("RINGFENCE_JOBS", &text, "needs at least one job")),
                n => n as usize,
            },
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let save = match get("RINGFENCE_SAVE").as_deref() {
            None => Some(corpus.to_path_buf()),
            Some("off" | "0" | "no" | "false") => None,
            Some(dir) => Some(PathBuf::from(dir)),
        };
        let shrink = match get("RINGFENCE_SHRINK").as_deref() {
            None | Some("0" | "no" | "false" | "off") => false,
            Some("1" | "yes" | "true" | "on") => true,
            Some(other) => return Err(bad("RINGFENCE_SHRINK", other, "use 1 or 0")),
        };
        Ok(Knobs {
            seeds,
            pinned,
            scenarios,
            budget,
            jobs,
            save,
            shrink,
            case: get("RINGFENCE_CASE"),
        })
    }

    /// Whether the knobs keep scenario `name`.
    pub fn selects(&self, name: &str) -> bool {
        self.scenarios
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == name))
    }

    /// The scenarios to sweep, in the registry's order.
    pub fn scenarios(&self) -> Vec<&'static dyn DynScenario> {
        scenarios::ALL
            .iter()
            .copied()
            .filter(|s| self.selects(s.name()))
            .collect()
    }

    /// The seeds of `scenario` that run before any exploration.
    pub fn seeds_of(&self, scenario: &dyn DynScenario) -> Range<u64> {
        self.seeds.clone().unwrap_or(0..scenario.default_seeds())
    }

    /// The default cases over the chosen seeds of the chosen scenarios.
    pub fn groups(&self) -> Vec<(&'static dyn DynScenario, Vec<Case>)> {
        self.scenarios()
            .into_iter()
            .map(|s| (s, sweep::default_cases(s, Some(self.seeds_of(s)), None)))
            .collect()
    }

    /// The sweep `cargo test` runs: the chosen seeds (every tenth rerun to
    /// check determinism), then fresh seeds until the time budget is spent.
    pub fn sweep(&self) -> Vec<ScenarioSummary> {
        let started = Instant::now(); // determinism: ok — the budget is wall time
        let mut summaries = sweep::sweep(&SweepPlan {
            groups: self.groups(),
            jobs: self.jobs,
            determinism_every: 10,
            progress: false,
            stop_at_first_failure: false,
        });
        let left = self.budget.map(|b| b.saturating_sub(started.elapsed()));
        if let Some(budget) = left.filter(|b| !b.is_zero()) {
            let explore = Explore {
                groups: self
                    .scenarios()
                    .into_iter()
                    .map(|scenario| Group {
                        scenario,
                        template: scenarios::default_case(scenario, 0, None),
                        seeds: self.seeds_of(scenario).end..u64::MAX,
                    })
                    .collect(),
                shard: (1, 1),
                jobs: self.jobs,
                budget,
                check_determinism: false,
                progress: Progress::Hidden,
                report_every: Duration::MAX,
            };
            for ((summary, more), scenario) in summaries.iter_mut().zip(explore.run()).zip(self.scenarios()) {
                summary.absorb(more);
                let wall = summary.wall_secs;
                summary.finish(scenario, wall);
            }
        }
        summaries
    }

    /// Judges a sweep's summaries for test `test` (a name filter for
    /// `cargo test --test sim_sweep`): `Ok` with the table, or `Err` with
    /// the table, each failure's reproduce commands, the files it was saved
    /// to, and the knobs.
    pub fn conclude(&self, summaries: &[ScenarioSummary], test: &str) -> Result<String, String> {
        let table = sweep::table(summaries);
        if summaries.iter().all(|s| s.passed()) {
            return Ok(table);
        }
        let mut message = format!("the sweep failed:\n{table}\n");
        for s in summaries {
            for f in &s.failures {
                message += &format!(
                    "{} seed {} violates {}\n  reproduce: {}\n  with a trace: {}\n",
                    s.label(),
                    f.seed,
                    f.violation.invariant,
                    self.repro(test, &f.case),
                    f.repro
                );
            }
            if !s.nondeterministic.is_empty() {
                let seed = s.nondeterministic[0];
                message += &format!(
                    "{} is nondeterministic at seeds {:?}; reproduce: cargo run --release -p ringfence-sim -- \
                     sweep -s {} --seeds {seed} --check-determinism\n",
                    s.label(),
                    s.nondeterministic,
                    s.scenario
                );
            }
        }
        // Failures outside the default seeds would not run again by
        // themselves: keep them in the corpus.
        let fresh: Vec<sweep::Failure> = summaries
            .iter()
            .flat_map(|s| &s.failures)
            .filter(|f| scenarios::find(&f.case.scenario).is_ok_and(|s| f.seed >= s.default_seeds()))
            .cloned()
            .collect();
        if let (Some(dir), false) = (&self.save, fresh.is_empty()) {
            let options = SaveOptions {
                shrink: self.shrink.then_some(SHRINK_RUNS),
                per_invariant: usize::MAX,
            };
            match corpus::save_found(dir, &fresh, options) {
                Ok(saved) => {
                    for path in &saved.paths {
                        message += &format!("saved {} (the next cargo test replays it)\n", path.display());
                    }
                    for path in &saved.existing {
                        message += &format!("already in the corpus: {}\n", path.display());
                    }
                }
                Err(e) => message += &format!("could not save the failures: {e}\n"),
            }
        }
        Err(format!("{message}\n{HELP}"))
    }

    /// The one command that reruns `case` in test `test` of `sim_sweep`.
    pub fn repro(&self, test: &str, case: &Case) -> String {
        format!(
            "RINGFENCE_SCENARIO={} RINGFENCE_SEED={} cargo test --test sim_sweep {test}",
            case.scenario, case.seed
        )
    }
}

/// `10m`, `1h 30m`, `90s`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    match text.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(text).map_err(|e| format!("not a duration ({e}); e.g. 90s, 10m, 1h")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs(vars: &[(&str, &str)]) -> Result<Knobs, String> {
        Knobs::parse(
            |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()),
            Path::new("seeds"),
        )
    }

    #[test]
    fn no_knobs_is_the_default_sweep() {
        let k = knobs(&[]).unwrap();
        assert_eq!((k.seeds.clone(), k.pinned, k.budget), (None, false, None));
        assert_eq!(k.save, Some(PathBuf::from("seeds")));
        let groups = k.groups();
        assert_eq!(groups.len(), scenarios::ALL.len());
        for (scenario, cases) in groups {
            assert_eq!(cases.len() as u64, scenario.default_seeds());
        }
    }

    #[test]
    fn knobs_widen_pin_and_filter_the_sweep() {
        let k = knobs(&[("RINGFENCE_SEEDS", "500"), ("RINGFENCE_SCENARIO", "counter,log")]).unwrap();
        let groups = k.groups();
        let names: Vec<_> = groups.iter().map(|(s, _)| s.name()).collect();
        assert_eq!(names, ["counter", "log"]);
        assert!(groups.iter().all(|(_, cases)| cases.len() == 500));

        let k = knobs(&[("RINGFENCE_SEEDS", "1000..1010")]).unwrap();
        let seeds: Vec<u64> = k.groups()[0].1.iter().map(|c| c.seed).collect();
        assert_eq!(seeds, (1000..1010).collect::<Vec<_>>());

        let k = knobs(&[("RINGFENCE_SEED", "77"), ("RINGFENCE_SCENARIO", "lock")]).unwrap();
        assert!(k.pinned);
        let groups = k.groups();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].1.iter().map(|c| c.seed).collect::<Vec<_>>(), [77]);

        let k = knobs(&[("RINGFENCE_SWEEP_TIME", "1m 30s"), ("RINGFENCE_SAVE", "off")]).unwrap();
        assert_eq!(k.budget, Some(Duration::from_secs(90)));
        assert_eq!(k.save, None);
        assert_eq!(
            knobs(&[("RINGFENCE_SWEEP_TIME", "45")]).unwrap().budget,
            Some(Duration::from_secs(45))
        );
    }

    #[test]
    fn bad_knobs_are_refused_with_the_list_of_knobs() {
        for (vars, expected) in [
            (&[("RINGFENCE_SEEDS", "9..3")][..], "no seeds"),
            (&[("RINGFENCE_SEEDS", "many")][..], "not a non-negative integer"),
            (&[("RINGFENCE_SEED", "1"), ("RINGFENCE_SEEDS", "5")][..], "not both"),
            (&[("RINGFENCE_SCENARIO", "nope")][..], "unknown scenario `nope`"),
            (&[("RINGFENCE_SWEEP_TIME", "soon")][..], "not a duration"),
            (
                &[("RINGFENCE_SEED", "1"), ("RINGFENCE_SWEEP_TIME", "1m")][..],
                "cannot be combined",
            ),
            (&[("RINGFENCE_JOBS", "0")][..], "at least one job"),
            (&[("RINGFENCE_SHRINK", "maybe")][..], "use 1 or 0"),
        ] {
            let err = knobs(vars).unwrap_err();
            assert!(err.contains(expected), "{vars:?}: {err}");
            assert!(err.contains("RINGFENCE_SWEEP_TIME=10m"), "the knobs are listed: {err}");
        }
    }

    #[test]
    fn a_failure_beyond_the_default_seeds_is_saved_and_replays() {
        let dir = std::env::temp_dir().join(format!("ringfence-knobs-{}", std::process::id()));
        let k = Knobs {
            save: Some(dir.clone()),
            ..knobs(&[]).unwrap()
        };
        let scenario = scenarios::find("counter").unwrap();
        let first_fresh = scenario.default_seeds();
        // Seeds on both sides of the default range, with the planted bug on.
        let cases = sweep::default_cases(
            scenario,
            Some(first_fresh - 15..first_fresh + 15),
            Some("ack-before-sync"),
        );
        let summaries = sweep::sweep(&SweepPlan {
            groups: vec![(scenario, cases)],
            jobs: 2,
            determinism_every: 0,
            progress: false,
            stop_at_first_failure: false,
        });
        let failures = &summaries[0].failures;
        assert!(failures.iter().any(|f| f.seed < first_fresh) && failures.iter().any(|f| f.seed >= first_fresh));

        let message = k.conclude(&summaries, "default_sweep_is_clean").unwrap_err();
        let f = &failures[0];
        assert!(
            message.contains(&format!(
                "reproduce: RINGFENCE_SCENARIO=counter RINGFENCE_SEED={} cargo test --test sim_sweep default_sweep_is_clean",
                f.seed
            )),
            "{message}"
        );
        assert!(message.contains(&f.repro), "{message}");
        assert!(message.contains("RINGFENCE_SEEDS="), "the knobs are listed: {message}");

        let saved = corpus::load_dir(&dir).unwrap();
        let fresh: Vec<u64> = failures
            .iter()
            .filter(|f| f.seed >= first_fresh)
            .map(|f| f.seed)
            .collect();
        let mut saved_seeds: Vec<u64> = saved.iter().map(|(_, e)| e.case.seed).collect();
        saved_seeds.sort_unstable();
        assert_eq!(
            saved_seeds, fresh,
            "every failure outside the default seeds, and only those"
        );
        for (path, entry) in &saved {
            assert!(
                entry.case.seed >= first_fresh,
                "{} is in the default sweep",
                path.display()
            );
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert_eq!(entry.expect, "acked-increment-lost", "a planted bug must stay caught");
            assert!(entry.case.plan.is_some(), "the plan is written out");
            corpus::replay(entry).expect("the saved case fails the same way");
        }
        let again = k.conclude(&summaries, "default_sweep_is_clean").unwrap_err();
        assert!(
            !again.contains("the next cargo test replays it"),
            "nothing new to save: {again}"
        );
        for (path, _) in &saved {
            assert!(
                again.contains(&format!("already in the corpus: {}", path.display())),
                "{again}"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
