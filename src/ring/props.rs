//! The properties every placement is judged by, next to the code they
//! judge (the proptest suite in `tests/ring_props.rs` drives them with
//! generated views and keys; the planted `hash % n` bug must fail them).
//!
//! Each check returns the first counterexample as a [`Violation`] rather
//! than panicking, so a test can also assert that a broken placement *does*
//! violate a property.

use std::collections::BTreeMap;

use super::bounded::BoundedLoad;
use super::hash::KeyHash;
use super::{NodeId, Placement};

/// A property that did not hold, with the key that shows it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{property} violated for key hash {hash:#018x}: {detail}")]
pub struct Violation {
    /// The property's name.
    pub property: &'static str,
    /// The key hash that shows it.
    pub hash: KeyHash,
    /// What went wrong.
    pub detail: String,
}

fn fail(property: &'static str, hash: KeyHash, detail: String) -> Result<(), Violation> {
    Err(Violation { property, hash, detail })
}

/// Same view ⇒ same mapping: two placements built from the same input
/// agree on every owner and preference list.
pub fn same_mapping<P: Placement + ?Sized, Q: Placement + ?Sized>(
    a: &P,
    b: &Q,
    keys: &[KeyHash],
) -> Result<(), Violation> {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for &h in keys {
        a.preference_of_hash(h, &mut x);
        b.preference_of_hash(h, &mut y);
        if x != y || a.owner_of_hash(h) != b.owner_of_hash(h) {
            return fail("same_mapping", h, format!("{x:?} vs {y:?}"));
        }
    }
    Ok(())
}

/// On add: every key whose owner changes moves to the added node.
pub fn add_moves_only_to_new<P: Placement + ?Sized, Q: Placement + ?Sized>(
    old: &P,
    new: &Q,
    added: NodeId,
    keys: &[KeyHash],
) -> Result<(), Violation> {
    for &h in keys {
        let (a, b) = (old.owner_of_hash(h), new.owner_of_hash(h));
        if a != b && b != added {
            return fail(
                "add_moves_only_to_new",
                h,
                format!("moved {a} -> {b}, but only {added} was added"),
            );
        }
    }
    Ok(())
}

/// On remove: only keys the removed node owned change owner.
pub fn remove_moves_only_removed<P: Placement + ?Sized, Q: Placement + ?Sized>(
    old: &P,
    new: &Q,
    removed: NodeId,
    keys: &[KeyHash],
) -> Result<(), Violation> {
    for &h in keys {
        let (a, b) = (old.owner_of_hash(h), new.owner_of_hash(h));
        if a != b && a != removed {
            return fail(
                "remove_moves_only_removed",
                h,
                format!("moved {a} -> {b}, but only {removed} was removed"),
            );
        }
    }
    Ok(())
}

/// Preference lists hold R distinct nodes, owner first, and cover
/// `min(R, zones)` distinct zones (a node without a zone is its own zone).
pub fn preference_lists_valid<P: Placement + ?Sized>(p: &P, keys: &[KeyHash]) -> Result<(), Violation> {
    let zone_of: BTreeMap<NodeId, (u8, u64)> = p
        .nodes()
        .iter()
        .map(|n| (n.id, n.zone.map_or((1, u64::from(n.id)), |z| (0, u64::from(z.0)))))
        .collect();
    let zones = zone_of.values().collect::<std::collections::BTreeSet<_>>().len();
    let r = p.replicas();
    let mut list = Vec::new();
    for &h in keys {
        p.preference_of_hash(h, &mut list);
        let distinct = list.iter().collect::<std::collections::BTreeSet<_>>().len();
        if list.len() != r || distinct != r {
            return fail(
                "preference_lists_valid",
                h,
                format!("{list:?} is not {r} distinct nodes"),
            );
        }
        if list[0] != p.owner_of_hash(h) {
            return fail(
                "preference_lists_valid",
                h,
                format!("{list:?} does not start with the owner"),
            );
        }
        let covered = list
            .iter()
            .map(|n| zone_of[n])
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if covered != r.min(zones) {
            return fail(
                "preference_lists_valid",
                h,
                format!("{list:?} covers {covered} zones, {} possible", r.min(zones)),
            );
        }
    }
    Ok(())
}

/// Bounded load: no node holds more than its cap, and the cap is the
/// smallest integer `>= (1+ε) · m · w / W` (checked here independently of
/// the implementation: `cap · W · 10⁶ >= (10⁶ + ε_ppm) · m · w`, and one
/// less would not be).
pub fn bounded_within_cap(b: &BoundedLoad) -> Result<(), Violation> {
    let m = b.keys() as u128;
    let total_w: u128 = b.nodes().iter().map(|n| u128::from(n.weight)).sum();
    let need = |w: u32| (1_000_000 + u128::from(b.epsilon_ppm())) * m * u128::from(w);
    for ((node, load, cap), spec) in b.loads().zip(b.nodes()) {
        let enough = |c: u64| u128::from(c) * total_w * 1_000_000 >= need(spec.weight);
        let tight = enough(cap) && (cap == 0 || !enough(cap - 1));
        if !tight || load > cap {
            return fail(
                "bounded_within_cap",
                0,
                format!("{node}: load {load}, cap {cap} (tight: {tight})"),
            );
        }
    }
    Ok(())
}

/// Keys per node over `keys` (every node of the view present, possibly 0).
pub fn load_per_node<P: Placement + ?Sized>(p: &P, keys: &[KeyHash]) -> BTreeMap<NodeId, u64> {
    let mut load: BTreeMap<NodeId, u64> = p.nodes().iter().map(|n| (n.id, 0)).collect();
    for &h in keys {
        *load.entry(p.owner_of_hash(h)).or_default() += 1;
    }
    load
}
