//! From a failing seed to an understood bug: `shrink` saves a smaller case
//! that fails the same way and replays from the corpus, `replay --trace`
//! writes JSON lines ending in the violation, `replay --html` writes a
//! self-contained timeline naming it.

use std::path::PathBuf;
use std::process::Command;

use ringfence_sim::runner::RunOptions;
use ringfence_sim::sweep::{self, run_isolated};
use ringfence_sim::{corpus, scenarios};

fn sim(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringfence-sim"))
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringfence-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The first seed at which the counter's planted bug fails.
fn first_failing_counter_seed() -> u64 {
    let scenario = scenarios::find("counter").unwrap();
    sweep::default_cases(scenario, Some(0..50), Some("ack-before-sync"))
        .iter()
        .find(|case| run_isolated(scenario, case, RunOptions::default()).failed())
        .expect("the planted bug fails within 50 seeds")
        .seed
}

#[test]
fn shrink_saves_a_smaller_case_that_fails_the_same_way() {
    let dir = scratch("shrink");
    let seed = first_failing_counter_seed().to_string();
    let (code, out) = sim(&[
        "shrink",
        "-s",
        "counter",
        "--seed",
        &seed,
        "--bug",
        "ack-before-sync",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let saved = dir.join(format!("counter-ack-before-sync-seed{seed}.json"));
    let entry = corpus::load(&saved).expect("the shrunk case is a valid corpus file");
    assert_eq!(entry.expect, "acked-increment-lost");
    let plan = entry.case.plan.as_ref().expect("shrunk cases carry their plan");
    assert!(plan.faults.len() <= 3, "{out}");
    let workload = entry.case.workload;
    assert!(
        workload.clients * workload.ops < 3 * 40,
        "the workload shrank too: {out}"
    );
    corpus::replay(&entry).expect("the shrunk case still fails the same way");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn replay_writes_a_trace_and_a_timeline_that_name_the_violation() {
    let dir = scratch("replay");
    let (trace, html) = (dir.join("t.jsonl"), dir.join("t.html"));
    let (code, out) = sim(&[
        "replay",
        "--case-file",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../seeds/counter-ack-before-sync-seed3.json"
        ),
        "--trace",
        trace.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
        "--log",
        "off",
    ]);
    assert_eq!(code, 1, "{out}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    let kinds: std::collections::BTreeSet<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    for kind in ["boot", "send", "deliver", "op", "fault", "heal", "violation"] {
        assert!(kinds.contains(kind), "no {kind} event in the trace: {kinds:?}");
    }
    assert_eq!(lines.last().unwrap()["invariant"], "acked-increment-lost");
    assert!(lines.iter().all(|l| l["time_ns"].is_u64()));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("acked-increment-lost") && page.contains("createElementNS"));
    std::fs::remove_dir_all(dir).unwrap();
}
