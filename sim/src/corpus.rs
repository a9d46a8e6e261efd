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
//! must stay caught). Every aimed fault in the plan must find its moment
//! (its situation must occur), or the case fails. Without `plan`, the plan is generated from the seed;
//! shrunk cases carry their reduced plan explicitly.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plan::Fault;
use crate::runner::{Case, Outcome, RunOptions};
use crate::scenarios;
use crate::sweep::run_isolated;

/// What a corpus case must do when replayed.
pub const PASS: &str = "pass";

/// One file of the corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    pub expect: String,
    #[serde(flatten)]
    pub case: Case,
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
pub fn replay(entry: &Entry) -> Result<Outcome, String> {
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
