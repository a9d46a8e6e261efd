//! Shard reports and their merge. Each shard of a sweep (`sweep --shard
//! I/N --out F`) writes one [`Report`]; `merge` folds the reports of all N
//! shards into one, and refuses to call a sweep green when a shard is
//! missing or the reports come from different sweeps. The engine that ran
//! the shards (a CI matrix, a Kubernetes Indexed Job) is not our business.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::scenarios;
use crate::sweep::{self, ScenarioSummary};

/// Version of the report format; merge refuses others.
pub const FORMAT: u32 = 1;

/// What was swept: identical in every shard of one sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepConfig {
    pub scenarios: Vec<String>,
    /// `A..B`, `A..` (explored until the budget ran out), or absent for each
    /// scenario's default seeds.
    pub seeds: Option<String>,
    pub bug: Option<String>,
    pub servers: Option<u32>,
    pub clients: Option<u32>,
    pub ops: Option<u32>,
    /// The time budget (`sweep --for`), in seconds.
    pub budget_secs: Option<u64>,
    pub check_determinism: bool,
}

/// One shard of a sweep, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

/// What one sweep process writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub format: u32,
    pub sweep: SweepConfig,
    pub shard: Shard,
    /// Wall time of the whole process's sweep.
    pub wall_secs: f64,
    pub summaries: Vec<ScenarioSummary>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.summaries.iter().all(|s| s.passed())
    }
}

/// The merge of every shard's report.
#[derive(Debug, Clone)]
pub struct Merged {
    /// The folded report, itself a valid 1/1 report (merges compose).
    pub report: Report,
    pub shards: u64,
    pub missing: Vec<u64>,
    /// Wall time of the slowest shard and of all shards together.
    pub longest_secs: f64,
    pub total_secs: f64,
}

impl Merged {
    /// Green only if every shard is present and the folded sweep passes.
    pub fn passed(&self) -> bool {
        self.missing.is_empty() && self.report.passed()
    }

    /// The merged table, every failure with its reproduce command (at most
    /// `shown` per row), and what is missing.
    pub fn text(&self, shown: usize) -> String {
        let seeds: u64 = self.report.summaries.iter().map(|s| s.seeds).sum();
        let failures: usize = self.report.summaries.iter().map(|s| s.failures.len()).sum();
        let mut out = format!(
            "merged {} of {} shards: {seeds} seeds, {failures} failing; longest shard {:.1} s, all shards {:.1} s\n",
            self.shards - self.missing.len() as u64,
            self.shards,
            self.longest_secs,
            self.total_secs
        );
        out += &sweep::table_showing(&self.report.summaries, shown);
        if !self.missing.is_empty() {
            let missing: Vec<String> = self.missing.iter().map(|i| format!("{i}/{}", self.shards)).collect();
            out += &format!("MISSING SHARDS (their seeds did not run): {}\n", missing.join(" "));
        }
        out
    }
}

/// Reads one report.
pub fn load(path: &Path) -> Result<Report, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let report: Report =
        serde_json::from_str(&text).map_err(|e| format!("{}: not a sweep report: {e}", path.display()))?;
    if report.format != FORMAT {
        return Err(format!(
            "{}: report format {} (this build reads {FORMAT})",
            path.display(),
            report.format
        ));
    }
    Ok(report)
}

/// The report files named by `args`: files as given, directories searched
/// recursively for `*.json` (each of which must be a report), sorted.
pub fn report_paths(args: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    for arg in args {
        if arg.is_dir() {
            for entry in walkdir::WalkDir::new(arg).sort_by_file_name() {
                let entry = entry.map_err(|e| format!("cannot list {}: {e}", arg.display()))?;
                if entry.file_type().is_file() && entry.path().extension().is_some_and(|x| x == "json") {
                    paths.push(entry.into_path());
                }
            }
        } else {
            paths.push(arg.clone());
        }
    }
    if paths.is_empty() {
        return Err("no report files given (directories hold none)".into());
    }
    Ok(paths)
}

/// Folds the reports of one sweep's shards. `Err` if they are not shards of
/// one sweep (different settings or shard counts, a shard given twice).
pub fn merge(reports: Vec<(PathBuf, Report)>) -> Result<Merged, String> {
    let (first_path, first) = reports.first().ok_or("nothing to merge")?;
    let (sweep, count) = (first.sweep.clone(), first.shard.count);
    let mut seen: BTreeMap<u64, &Path> = BTreeMap::new();
    for (path, report) in &reports {
        if report.sweep != sweep {
            return Err(format!(
                "{} and {} are not shards of one sweep: {:?} vs {:?}",
                first_path.display(),
                path.display(),
                sweep,
                report.sweep
            ));
        }
        if report.shard.count != count {
            return Err(format!(
                "{} is shard {}/{}, but {} is one of {count}",
                path.display(),
                report.shard.index,
                report.shard.count,
                first_path.display()
            ));
        }
        if let Some(other) = seen.insert(report.shard.index, path) {
            return Err(format!(
                "shard {}/{count} given twice: {} and {}",
                report.shard.index,
                other.display(),
                path.display()
            ));
        }
    }
    let missing: Vec<u64> = (1..=count).filter(|i| !seen.contains_key(i)).collect();
    let mut reports: Vec<Report> = reports.into_iter().map(|(_, r)| r).collect();
    reports.sort_by_key(|r| r.shard.index);
    let longest_secs = reports.iter().map(|r| r.wall_secs).fold(0.0, f64::max);
    let total_secs = reports.iter().map(|r| r.wall_secs).sum();

    // Rows in the order the first shard lists them; a row only some shards
    // have (a shard with no seeds of it) is added where first seen.
    let mut rows: Vec<ScenarioSummary> = Vec::new();
    for summary in reports.into_iter().flat_map(|r| r.summaries) {
        match rows
            .iter_mut()
            .find(|row| row.scenario == summary.scenario && row.bug == summary.bug)
        {
            Some(row) => row.absorb(summary),
            None => {
                let scenario = scenarios::find(&summary.scenario)?;
                let mut row = ScenarioSummary::empty(scenario, summary.bug.clone());
                row.absorb(summary);
                rows.push(row);
            }
        }
    }
    for row in &mut rows {
        let scenario = scenarios::find(&row.scenario)?;
        let wall = row.wall_secs;
        row.finish(scenario, wall);
    }
    Ok(Merged {
        report: Report {
            format: FORMAT,
            sweep,
            shard: Shard { index: 1, count: 1 },
            wall_secs: longest_secs,
            summaries: rows,
        },
        shards: count,
        missing,
        longest_secs,
        total_secs,
    })
}
