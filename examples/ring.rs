//! Consistent hashing: place keys on five nodes, add a sixth, count the
//! keys whose owner moved: `cargo run --example ring`.

use ringfence::ring::{diff_keys, NodeSpec, Placement, RingConfig, RingView};

/// Runs the example (also run by `cargo test`, `tests/examples.rs`).
pub fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    let config = RingConfig::default().with_replicas(1);
    let five: Vec<NodeSpec> = (1..=5).map(NodeSpec::new).collect();
    let before = RingView::build(1, &five, config)?;
    let six: Vec<NodeSpec> = (1..=6).map(NodeSpec::new).collect();
    let after = RingView::build(2, &six, config)?;

    println!("user-42 lives on node {}", before.owner(b"user-42"));
    let moved = diff_keys(&before, &after, keys.iter().map(|k| k.as_bytes()));
    let owners_moved = moved.iter().filter(|m| m.owner_changed()).count();
    println!("adding a sixth node moved {owners_moved} of {} keys", keys.len());
    // Every moved key went to the new node, and about a sixth moved.
    assert!(moved.iter().all(|m| m.to == [6]));
    assert!((1_200..2_200).contains(&owners_moved));
    Ok(())
}
