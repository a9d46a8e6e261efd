//! Replays every case in `seeds/`: fixed bugs stay fixed, planted bugs stay
//! caught, and failures a sweep found stay found until fixed.
//! `RINGFENCE_SCENARIO` and `RINGFENCE_CASE` narrow it (`knobs::HELP`).

use std::path::Path;

use ringfence_sim::corpus;
use ringfence_sim::knobs::{Knobs, HELP};

#[test]
fn every_corpus_case_replays_as_expected() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let knobs = Knobs::from_env(&dir).unwrap_or_else(|e| panic!("{e}"));
    let entries = corpus::load_dir(&dir).expect("the corpus loads");
    assert!(!entries.is_empty(), "seeds/ holds no cases");
    let chosen: Vec<_> = entries
        .iter()
        .filter(|(path, entry)| {
            knobs.selects(&entry.case.scenario)
                && knobs.case.as_ref().is_none_or(|text| {
                    path.file_name()
                        .is_some_and(|name| name.to_string_lossy().contains(text.as_str()))
                })
        })
        .collect();
    assert!(!chosen.is_empty(), "the knobs leave no corpus case to replay\n{HELP}");
    let failures: Vec<String> = chosen
        .iter()
        .filter_map(|(path, entry)| {
            let name = path.file_name().expect("a file").to_string_lossy();
            corpus::replay(entry).err().map(|why| {
                format!(
                    "{name}: {why}\n  reproduce: RINGFENCE_CASE={name} cargo test --test sim_corpus\n  \
                     with a trace: cargo run --release -p ringfence-sim -- replay --case-file seeds/{name}"
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "corpus cases that changed outcome:\n{}\n\n{HELP}",
        failures.join("\n")
    );
}
