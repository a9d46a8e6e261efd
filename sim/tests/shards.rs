//! Fan-out as the CI matrix and the Kubernetes Indexed Job run it: N shards
//! of a sweep as separate processes of the binary, each writing its report,
//! then `merge`. The merged result must be the unsharded sweep's (same seeds,
//! same trace hashes, same failures, same exit status), and a missing or
//! foreign shard must not pass for green.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use ringfence_sim::corpus;
use ringfence_sim::merge::{self, Report};

fn sim(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringfence-sim"));
    command.args(args);
    command
}

fn run(args: &[&str]) -> Output {
    sim(args).output().expect("the binary runs")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringfence-shards-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

/// Runs `sweep ARGS` unsharded and as `n` concurrent shard processes, merges
/// the shards, and checks both give the same result; returns the exit code.
fn sharded_equals_unsharded(name: &str, args: &[&str], n: u64) -> i32 {
    let dir = scratch(name);
    let whole = dir.join("whole.json");
    let unsharded = run(&[&["sweep", "-j", "1", "--no-progress", "--out", path(&whole)], args].concat());
    let code = unsharded.status.code().expect("exits");
    assert!(code <= 1, "{}", String::from_utf8_lossy(&unsharded.stderr));

    let shards_dir = dir.join("shards");
    std::fs::create_dir_all(&shards_dir).unwrap();
    let children: Vec<(u64, Child)> = (1..=n)
        .map(|i| {
            let shard = format!("{i}/{n}");
            let out = shards_dir.join(format!("shard-{i}.json"));
            let child = sim(&[
                &[
                    "sweep",
                    "-j",
                    "1",
                    "--no-progress",
                    "--shard",
                    &shard,
                    "--out",
                    path(&out),
                ],
                args,
            ]
            .concat())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("a shard starts");
            (i, child)
        })
        .collect();
    for (i, mut child) in children {
        let status = child.wait().expect("a shard ends");
        assert!(status.code().is_some_and(|c| c <= 1), "shard {i}/{n}: {status}");
    }

    let merged_path = dir.join("merged.json");
    let merged = run(&["merge", path(&shards_dir), "--out", path(&merged_path)]);
    let text = String::from_utf8_lossy(&merged.stdout);
    assert_eq!(merged.status.code(), Some(code), "merge exit status: {text}");
    assert!(text.contains(&format!("merged {n} of {n} shards")), "{text}");

    let whole = merge::load(&whole).unwrap();
    let merged = merge::load(&merged_path).unwrap();
    assert_eq!(whole.sweep, merged.sweep);
    assert_eq!(whole.summaries.len(), merged.summaries.len());
    for (a, b) in whole.summaries.iter().zip(&merged.summaries) {
        let row = a.label();
        assert_eq!(row, b.label());
        assert!(!a.trace_hashes.is_empty());
        assert_eq!(a.seeds, a.trace_hashes.len() as u64, "{row}");
        assert_eq!(
            (a.seeds, &a.trace_hashes),
            (b.seeds, &b.trace_hashes),
            "{row}: seeds and trace hashes"
        );
        let failures = |r: &ringfence_sim::sweep::ScenarioSummary| -> Vec<(u64, String, String, String)> {
            r.failures
                .iter()
                .map(|f| {
                    (
                        f.seed,
                        f.violation.invariant.clone(),
                        f.trace_hash.clone(),
                        f.repro.clone(),
                    )
                })
                .collect()
        };
        assert_eq!(failures(a), failures(b), "{row}: failures");
        assert_eq!((a.ops, a.messages), (b.ops, b.messages), "{row}");
        assert_eq!((&a.fired, &a.situations), (&b.fired, &b.situations), "{row}");
        assert_eq!(
            (&a.never_fired, &a.never_occurred),
            (&b.never_fired, &b.never_occurred),
            "{row}"
        );
        assert_eq!(a.passed(), b.passed(), "{row}");
        // Every failure is listed with its reproduce command.
        for f in &b.failures {
            assert!(text.contains(&f.repro), "{row}: {text}");
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
    code
}

#[test]
fn merged_shards_equal_the_unsharded_sweep_with_failures() {
    let code = sharded_equals_unsharded(
        "bug",
        &["-s", "counter", "--bug", "ack-before-sync", "--seeds", "0..60"],
        3,
    );
    assert_eq!(code, 1, "the planted bug is caught");
}

#[test]
fn merged_shards_equal_the_unsharded_sweep_of_several_scenarios() {
    // 40 seeds per scenario, while each shard has fewer than the 32 from
    // which fault coverage is demanded: the merge judges coverage over all.
    let code = sharded_equals_unsharded("clean", &["-s", "counter", "-s", "log", "--seeds", "0..40"], 4);
    assert_eq!(code, 0);
}

#[test]
fn a_missing_duplicated_or_foreign_shard_is_not_green() {
    let dir = scratch("missing");
    let shard = |i: u64, n: u64, seeds: &str| {
        let out = dir.join(format!("s{i}of{n}-{seeds}.json"));
        let args = [
            "sweep",
            "-s",
            "counter",
            "--seeds",
            seeds,
            "--shard",
            &format!("{i}/{n}"),
            "--out",
            path(&out),
            "--no-progress",
        ];
        assert_eq!(run(&args).status.code(), Some(0));
        out
    };
    let (one, three) = (shard(1, 3, "0..9"), shard(3, 3, "0..9"));
    let out = run(&["merge", path(&one), path(&three)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("merged 2 of 3 shards") && text.contains("MISSING SHARDS (their seeds did not run): 2/3"),
        "{text}"
    );

    let out = run(&["merge", path(&one), path(&one)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shard 1/3 given twice"));

    let foreign = shard(2, 3, "0..12");
    let out = run(&["merge", path(&one), path(&foreign), path(&three)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("are not shards of one sweep"));

    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("../seeds/counter-ack-before-sync-seed3.json");
    let out = run(&["merge", path(&one), path(&case)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a sweep report"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_budgeted_sweep_explores_fresh_seeds_and_saves_what_fails() {
    let dir = scratch("budget");
    let (report, found) = (dir.join("report.json"), dir.join("found"));
    let out = run(&[
        "sweep",
        "-s",
        "counter",
        "--bug",
        "ack-before-sync",
        "--for",
        "2s",
        "--seeds",
        "5000..",
        "--corpus",
        path(&found),
        "--save-max",
        "2",
        "--out",
        path(&report),
        "-j",
        "2",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Report = merge::load(&report).unwrap();
    assert_eq!(report.sweep.budget_secs, Some(2));
    let s = &report.summaries[0];
    let seeds: Vec<u64> = s.trace_hashes.keys().copied().collect();
    assert!(seeds.len() > 10, "{stdout}");
    assert_eq!(
        seeds,
        (5000..5000 + seeds.len() as u64).collect::<Vec<_>>(),
        "a prefix of the fresh seeds"
    );
    assert!(
        stdout.contains(&format!("explored {} seeds, 5000 to", seeds.len())),
        "{stdout}"
    );
    assert!(s.failures.len() > 2, "{stdout}");

    let saved = corpus::load_dir(&found).unwrap();
    assert_eq!(saved.len(), 2, "--save-max 2 per invariant: {stdout}");
    assert!(stdout.contains("more failures not saved"), "{stdout}");
    for (file, entry) in &saved {
        assert!(stdout.contains(&format!("saved {}", file.display())), "{stdout}");
        assert_eq!(entry.violated, "acked-increment-lost");
        corpus::replay(entry).expect("a saved case fails the same way");
    }

    let out = run(&["sweep", "-s", "counter", "--seeds", "10.."]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a time budget (--for)"));
    std::fs::remove_dir_all(dir).unwrap();
}
