//! The regression corpus in `seeds/`: one JSON file per case worth keeping,
//! replayed by `cargo test`.
//!
//! Format (all fields but `plan`, `bug` and `note` required):
//!
//! ```json
//! {
//!   "note": "why this case is here",
//!   "expect": "acked-increment-lost",
//!   "scenario": "counter",
//!   "seed": 12,
//!   "bug": "ack-before-sync",
//!   "servers": 1,
//!   "workload": { "clients": 3, "ops": 40 },
//!   "plan": { "duration_ms": 5000, "swarm": {...}, "faults": [...] }
//! }
//! ```
//!
//! `expect` is `"pass"` for a case that must run clean (a fixed bug must stay
//! fixed), or the name of the invariant the case must violate (a planted bug
//! must stay caught). `violated` (optional) names the invariant a case
//! violated when a sweep found it. Every aimed fault in the plan must find its moment
//! (its situation must occur), or the case fails. Without `plan`, the plan is generated from the seed;
//! shrunk cases carry their reduced plan explicitly.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plan::Fault;
use crate::runner::{Case, RunOptions, RunReport};
use crate::scenarios;
use crate::shrink;
use crate::sweep::{run_isolated, Failure};

/// What a corpus case must do when replayed.
pub const PASS: &str = "pass";

/// One file of the corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    pub expect: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub violated: String,
    #[serde(flatten)]
    pub case: Case,
}

impl Entry {
    /// The entry for a case a sweep found violating `invariant`. With a
    /// planted bug the case must stay caught by that invariant; without one
    /// it is a real bug, so the case must pass: `cargo test` fails until the
    /// bug is fixed, and keeps it fixed (the way proptest's regression files
    /// work).
    pub fn found(case: Case, invariant: &str, note: String) -> Entry {
        Entry {
            note,
            expect: if case.bug.is_some() {
                invariant.to_string()
            } else {
                PASS.to_string()
            },
            violated: invariant.to_string(),
            case,
        }
    }
}

/// Reads every `*.json` file in `dir`, sorted by name.
pub fn load_dir(dir: &Path) -> Result<Vec<(PathBuf, Entry)>, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read corpus directory {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths.into_iter().map(|p| load(&p).map(|e| (p, e))).collect()
}

/// Reads and validates one corpus file.
pub fn load(path: &Path) -> Result<Entry, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let entry: Entry =
        serde_json::from_str(&text).map_err(|e| format!("{}: not a corpus case: {e}", path.display()))?;
    scenarios::validate(&entry.case).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(entry)
}

/// Writes `entry` as pretty JSON.
pub fn save(path: &Path, entry: &Entry) -> Result<(), String> {
    let text = serde_json::to_string_pretty(entry).expect("corpus entries serialize") + "\n";
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Replays an entry; `Err` says how the outcome differs from `expect`.
pub fn replay(entry: &Entry) -> Result<RunReport, String> {
    let scenario = scenarios::validate(&entry.case)?;
    let outcome = run_isolated(scenario, &entry.case, RunOptions::default());
    let got: Vec<&str> = outcome.violations.iter().map(|v| v.invariant.as_str()).collect();
    let matches = if entry.expect == PASS {
        got.is_empty()
    } else {
        got.contains(&entry.expect.as_str())
    };
    // A case whose aimed faults never found their moment tests nothing.
    let missed: Vec<&str> = outcome
        .plan
        .faults
        .iter()
        .filter_map(|f| match f {
            Fault::Aimed { situation, .. } if !outcome.situations.contains_key(situation) => Some(situation.as_str()),
            _ => None,
        })
        .collect();
    if !missed.is_empty() {
        return Err(format!("aimed situations never occurred: {}", missed.join(", ")));
    }
    if matches {
        Ok(outcome)
    } else {
        let detail: Vec<String> = outcome.violations.iter().map(|v| v.to_string()).collect();
        Err(format!(
            "expected {}, got {}",
            entry.expect,
            if detail.is_empty() {
                PASS.to_string()
            } else {
                detail.join("; ")
            }
        ))
    }
}

/// How [`save_found`] saves failures.
#[derive(Debug, Clone, Copy)]
pub struct SaveOptions {
    /// Shrink each case before saving it (at most this many runs each).
    pub shrink: Option<u32>,
    /// Most cases saved per scenario, bug and invariant: a planted bug can
    /// fail on most seeds, and a few cases of it say as much as thousands.
    pub per_invariant: usize,
}

/// What [`save_found`] did.
#[derive(Debug, Default)]
pub struct Saved {
    pub paths: Vec<PathBuf>,
    /// Files that already held the same case (found by an earlier run).
    pub existing: Vec<PathBuf>,
    /// Failures beyond `per_invariant`, not saved.
    pub skipped: usize,
}

/// Saves found failures to the corpus in `dir`, each with its fault plan
/// written out (so a later change to plan generation cannot change what
/// the case tests), shrunk first if asked. A file already holding the same
/// case is left alone.
pub fn save_found(dir: &Path, failures: &[Failure], options: SaveOptions) -> Result<Saved, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut saved = Saved::default();
    let mut per_invariant: std::collections::BTreeMap<(String, Option<String>, String), usize> = Default::default();
    for failure in failures {
        let key = (
            failure.case.scenario.clone(),
            failure.case.bug.clone(),
            failure.violation.invariant.clone(),
        );
        let count = per_invariant.entry(key).or_default();
        if *count >= options.per_invariant {
            saved.skipped += 1;
            continue;
        }
        *count += 1;
        let scenario = scenarios::validate(&failure.case)?;
        let entry = match options.shrink {
            Some(max_runs) => {
                let shrunk = shrink::shrink(scenario, &failure.case, max_runs)?;
                let note = format!(
                    "found by a sweep, shrunk from {}; violates {}: {}",
                    shrunk.before, shrunk.invariant, failure.violation.detail
                );
                Entry::found(shrunk.case, &shrunk.invariant, note)
            }
            None => {
                let mut case = failure.case.clone();
                case.plan = Some(scenario.plan(&case));
                let note = format!(
                    "found by a sweep; violates {}: {}",
                    failure.violation.invariant, failure.violation.detail
                );
                Entry::found(case, &failure.violation.invariant, note)
            }
        };
        let path = dir.join(shrink::corpus_name(&entry.case));
        if load(&path).is_ok_and(|old| old.case == entry.case) {
            saved.existing.push(path);
            continue;
        }
        save(&path, &entry)?;
        saved.paths.push(path);
    }
    Ok(saved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_found_case_must_pass_unless_its_bug_is_planted() {
        let scenario = scenarios::find("counter").unwrap();
        let real = Entry::found(
            scenarios::default_case(scenario, 7, None),
            "acked-increment-lost",
            "n".into(),
        );
        assert_eq!(
            (real.expect.as_str(), real.violated.as_str()),
            (PASS, "acked-increment-lost")
        );
        let planted = scenarios::default_case(scenario, 7, Some("ack-before-sync"));
        let planted = Entry::found(planted, "acked-increment-lost", "n".into());
        assert_eq!(planted.expect, "acked-increment-lost");
        let text = serde_json::to_string(&real).unwrap();
        assert_eq!(
            serde_json::from_str::<Entry>(&text).unwrap(),
            real,
            "`violated` round-trips"
        );
    }
}
