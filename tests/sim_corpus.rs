//! Replays every case in `seeds/`: fixed bugs stay fixed, planted bugs stay
//! caught.

use std::path::Path;

use ringfence_sim::corpus;

#[test]
fn every_corpus_case_replays_as_expected() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let entries = corpus::load_dir(&dir).expect("the corpus loads");
    assert!(!entries.is_empty(), "seeds/ holds no cases");
    let failures: Vec<String> = entries
        .iter()
        .filter_map(|(path, entry)| {
            corpus::replay(entry)
                .err()
                .map(|why| format!("{}: {why}", path.display()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "corpus cases that changed outcome:\n{}",
        failures.join("\n")
    );
}
