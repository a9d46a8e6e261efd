//! The hand-written bugs in `docs/bugs` (docs/mutation.md) are applied to
//! the protocol code and swept. One that no longer applies to the tree is a
//! bug nobody can sweep any more: refresh it with the code it patches.

use std::path::Path;
use std::process::Command;

#[test]
fn every_documented_bug_patch_applies_to_the_tree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut patches: Vec<_> = std::fs::read_dir(root.join("docs/bugs"))
        .expect("docs/bugs is readable")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "patch"))
        .collect();
    patches.sort();
    assert!(patches.len() >= 20, "only {} patches found", patches.len());
    let stale: Vec<String> = patches
        .iter()
        .filter_map(|patch| {
            let out = Command::new("git")
                .args(["apply", "--check"])
                .arg(patch)
                .current_dir(root)
                .output()
                .expect("git runs");
            (!out.status.success()).then(|| format!("{}: {}", patch.display(), String::from_utf8_lossy(&out.stderr)))
        })
        .collect();
    assert!(stale.is_empty(), "patches that no longer apply:\n{}", stale.join("\n"));
}
