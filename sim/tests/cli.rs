//! The `ringfence-sim` binary: bad input gets a clear error and exit code 2,
//! a sweep's JSON parses, and a printed repro command reproduces the failure
//! with the same trace hash.

use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringfence-sim"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn invalid_input_is_refused_with_a_clear_error() {
    let cases: &[(&[&str], &str)] = &[
        (&["sweep", "--seeds", "9..3"], "is empty"),
        (&["sweep", "--seeds", "x"], "not a seed"),
        (&["sweep", "--shard", "0/4"], "not a shard"),
        (&["sweep", "--shard", "5/4"], "not a shard"),
        (
            &["sweep", "-s", "nope"],
            "unknown scenario `nope`; known scenarios: counter",
        ),
        (
            &["sweep", "-s", "counter", "--bug", "nope"],
            "has no planted bug `nope`",
        ),
        (
            &["sweep", "--bug", "ack-before-sync"],
            "--bug needs exactly one --scenario",
        ),
        (
            &["sweep", "-s", "counter", "--clients", "0"],
            "clients must be between 1 and 64",
        ),
        (&["replay", "-s", "counter"], "--seed"),
        (
            &["replay", "--case-file", "/nonexistent.json"],
            "cannot read /nonexistent.json",
        ),
    ];
    for (args, expected) in cases {
        let out = sim(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: expected `{expected}` in: {}",
            stderr(&out)
        );
    }
}

#[test]
fn sweep_json_reports_failures_whose_repro_command_reproduces_them() {
    let out = sim(&[
        "sweep",
        "-s",
        "counter",
        "--bug",
        "ack-before-sync",
        "--seeds",
        "0..12",
        "--json",
        "-j",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1), "violations exit 1: {}", stderr(&out));
    let summaries: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let failure = &summaries["summaries"][0]["failures"][0];
    let repro = failure["repro"].as_str().expect("a repro command");
    let hash = failure["trace_hash"].as_str().expect("a trace hash");
    let args: Vec<&str> = repro
        .split(" -- ")
        .nth(1)
        .expect("cargo run ... -- ARGS")
        .split_whitespace()
        .collect();
    let replay = sim(&[&args[..], &["--log", "off"]].concat());
    let stdout = String::from_utf8_lossy(&replay.stdout);
    assert_eq!(replay.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&format!("trace hash: {hash}")), "{stdout}");
    let invariant = failure["violation"]["invariant"].as_str().unwrap();
    assert!(stdout.contains(&format!("VIOLATION {invariant}")), "{stdout}");
}

#[test]
fn a_clean_sweep_exits_zero() {
    let out = sim(&["sweep", "-s", "counter", "--seeds", "0..4", "--no-progress"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("counter"));
}
