//! Balance, movement, bounded-load and memory figures for `docs/ring.md`.
//!
//! These are counts, not timings, so they come from this deterministic
//! program rather than from criterion (lookup times: `benches/ring.rs`).
//! Every number is a pure function of the code: rerunning prints the same
//! tables.
//!
//! `cargo run --release -p ringfence-bench --example ring_report`
//! (`-- quick` for a smaller run that skips n = 1000.)

use std::collections::BTreeMap;

use hashring::HashRing;
use ringfence::ring::{
    diff_ranges, hash_key, BoundedLoad, JumpView, KeyHash, ModuloPlacement, NodeId, NodeSpec, Placement,
    RendezvousView, RingConfig, RingView,
};

#[derive(Clone, Copy, Debug, Hash, PartialEq)]
struct VNode {
    node: u64,
    idx: u32,
}

const TWO64: f64 = 18_446_744_073_709_551_616.0;

fn nodes(ids: impl IntoIterator<Item = u64>) -> Vec<NodeSpec> {
    ids.into_iter().map(spec).collect()
}

/// The report counts nodes in `u64`; node ids are `u32`.
fn spec(id: u64) -> NodeSpec {
    NodeSpec::new(NodeId::try_from(id).expect("node ids fit in u32"))
}

fn ring(ids: &[NodeSpec], v: u32) -> RingView {
    RingView::build(1, ids, RingConfig { vnodes: v, replicas: 1 }).unwrap()
}

fn hashring(n: u64, v: u32, skip: Option<u64>) -> HashRing<VNode> {
    let mut r = HashRing::new();
    r.batch_add(
        (0..n)
            .filter(|&x| Some(x) != skip)
            .flat_map(|node| (0..v).map(move |idx| VNode { node, idx }))
            .collect(),
    );
    r
}

struct Stats {
    peak_over_avg: f64,
    stddev: f64,
    avg: f64,
}

fn stats(loads: &[u64]) -> Stats {
    let n = loads.len() as f64;
    let m: u64 = loads.iter().sum();
    let avg = m as f64 / n;
    let var = loads.iter().map(|&l| (l as f64 - avg).powi(2)).sum::<f64>() / n;
    Stats {
        peak_over_avg: *loads.iter().max().unwrap() as f64 / avg,
        stddev: var.sqrt(),
        avg,
    }
}

fn loads_of<P: Placement + ?Sized>(p: &P, hashes: &[KeyHash]) -> Vec<u64> {
    let mut by: BTreeMap<NodeId, u64> = p.nodes().iter().map(|n| (n.id, 0)).collect();
    for &h in hashes {
        *by.get_mut(&p.owner_of_hash(h)).unwrap() += 1;
    }
    by.into_values().collect()
}

/// Exact hash-space share of each node of a ring (arc lengths, no sampling).
fn exact_peak_share(r: &RingView, n: usize) -> f64 {
    let pts: Vec<(u64, NodeId)> = r.iter_points().collect();
    let mut share: BTreeMap<NodeId, f64> = BTreeMap::new();
    for i in 0..pts.len() {
        let prev = if i == 0 { pts[pts.len() - 1].0 } else { pts[i - 1].0 };
        let arc = pts[i].0.wrapping_sub(prev) as f64 / TWO64;
        *share.entry(pts[i].1).or_default() += arc;
    }
    share.values().cloned().fold(0.0, f64::max) * n as f64
}

/// Exact fraction of the hash space whose owner changes (ring, R = 1).
fn exact_moved(a: &RingView, b: &RingView) -> f64 {
    diff_ranges(a, b)
        .iter()
        .filter(|m| m.owner_changed())
        .map(|m| m.range.fraction())
        .sum()
}

fn moved<P: Placement + ?Sized, Q: Placement + ?Sized>(a: &P, b: &Q, hashes: &[KeyHash]) -> f64 {
    hashes
        .iter()
        .filter(|&&h| a.owner_of_hash(h) != b.owner_of_hash(h))
        .count() as f64
        / hashes.len() as f64
}

fn moved_hashring(a: &HashRing<VNode>, b: &HashRing<VNode>, keys: &[String]) -> f64 {
    keys.iter()
        .filter(|k| a.get(k).map(|v| v.node) != b.get(k).map(|v| v.node))
        .count() as f64
        / keys.len() as f64
}

/// (mean, min, max) of a list of ratios.
fn summary(xs: &[f64]) -> (f64, f64, f64) {
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let min = xs.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = xs.iter().cloned().fold(0.0, f64::max);
    (mean, min, max)
}

/// Standard error of the mean of a list of ratios (sample stddev / √T).
fn std_err(xs: &[f64]) -> f64 {
    let t = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / t;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (t - 1.0);
    (var / t).sqrt()
}

/// Movement when a sharded deployment's groups go from 4 to 5
/// (`ring_report groups`): the exact share of lock names that change
/// group, as a ratio to the optimum 1/5. The fifth group leaving moves the
/// same ranges back.
fn groups_report() {
    println!("## Groups of a sharded deployment: 4 → 5\n");
    println!("Exact hash-space fractions from `diff_ranges`, as a ratio to the optimum 1/5; 64 trials, each with another id for the fifth group. Its leaving moves the same ranges back.\n");
    println!("| vnodes | mean ratio | min–max |");
    println!("|---|---|---|");
    for v in [40u32, 160, 1000] {
        let four = nodes(1..5);
        let join: Vec<f64> = (0..64)
            .map(|t| {
                let mut five = four.clone();
                five.push(spec(5 + t));
                exact_moved(&ring(&four, v), &ring(&five, v)) * 5.0
            })
            .collect();
        let (mean, min, max) = summary(&join);
        println!("| {v} | {mean:.4} ± {:.4} | {min:.3}–{max:.3} |", std_err(&join));
    }
}

fn main() {
    if std::env::args().any(|a| a == "groups") {
        return groups_report();
    }
    let quick = std::env::args().any(|a| a == "quick");
    let sizes: &[u64] = if quick { &[10, 100] } else { &[10, 100, 1000] };
    let vnodes = [40u32, 160, 1000];
    let m = 1_000_000usize;
    let keys: Vec<String> = (0..m).map(|i| format!("key-{i}")).collect();
    let hashes: Vec<KeyHash> = keys.iter().map(|k| hash_key(k.as_bytes())).collect();

    // ---------------------------------------------------------------- balance
    println!("## Balance: {m} keys (`key-0` … `key-{}`)\n", m - 1);
    println!("Binomial ideal = stddev of a perfectly random assignment, √(m·p·(1−p)), p = 1/n.");
    println!(
        "Exact peak share × n = largest node's share of the hash space (arc lengths, no key sampling) over the mean.\n"
    );
    println!("Ring theory stddev = √(avg²·(n−1)/(n·v+1) + binomial²): with n·v random points a node's share of the circle is Beta(v, (n−1)·v) (relative spread ≈ 1/√v), plus the key-sampling noise.\n");
    println!("| n | vnodes | placement | peak/avg | stddev keys/node | stddev/avg | binomial ideal stddev | ring theory stddev | exact peak share × n |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &n in sizes {
        let ns = nodes(0..n);
        let p = 1.0 / n as f64;
        let ideal = (m as f64 * p * (1.0 - p)).sqrt();
        for v in vnodes {
            let r = ring(&ns, v);
            let s = stats(&loads_of(&r, &hashes));
            let nv = n as f64 * f64::from(v);
            let theory = (s.avg * s.avg * (n as f64 - 1.0) / (nv + 1.0) + ideal * ideal).sqrt();
            println!(
                "| {n} | {v} | ours (ring) | {:.4} | {:.1} | {:.4} | {:.1} | {theory:.1} | {:.4} |",
                s.peak_over_avg,
                s.stddev,
                s.stddev / s.avg,
                ideal,
                exact_peak_share(&r, n as usize)
            );
            let hr = hashring(n, v, None);
            let mut by: BTreeMap<u64, u64> = (0..n).map(|x| (x, 0)).collect();
            for k in &keys {
                *by.get_mut(&hr.get(k).unwrap().node).unwrap() += 1;
            }
            let s = stats(&by.into_values().collect::<Vec<_>>());
            println!(
                "| {n} | {v} | hashring | {:.4} | {:.1} | {:.4} | {:.1} | {theory:.1} | – |",
                s.peak_over_avg,
                s.stddev,
                s.stddev / s.avg,
                ideal
            );
        }
        let j = JumpView::build(1, &ns, 1).unwrap();
        let s = stats(&loads_of(&j, &hashes));
        println!(
            "| {n} | – | jump | {:.4} | {:.1} | {:.4} | {:.1} | – | – |",
            s.peak_over_avg,
            s.stddev,
            s.stddev / s.avg,
            ideal
        );
        let h = RendezvousView::build(1, &ns, 1).unwrap();
        let s = stats(&loads_of(&h, &hashes));
        println!(
            "| {n} | – | rendezvous | {:.4} | {:.1} | {:.4} | {:.1} | – | – |",
            s.peak_over_avg,
            s.stddev,
            s.stddev / s.avg,
            ideal
        );
    }

    // --------------------------------------------------------------- movement
    println!("\n## Keys moved on one add / one remove, as a ratio to the optimum\n");
    println!("Add: n → n+1 nodes, optimum 1/(n+1) of the keys. Remove: n → n−1, optimum 1/n.");
    println!(
        "Ring figures are exact hash-space fractions from `diff_ranges` (no sampling); the others count the {m} keys."
    );
    println!("Mean ± standard error over T trials, each adding a different new node id / removing a different node (jump: always the tail). T is given as add/remove; at n = 10 the remove trials cover every node once, which makes that mean exactly 1 (the shares sum to 1).");
    println!("Spread (theory) = stddev of one trial's ratio for random points: the changed node's share is Beta(v, (n−1)·v) on a remove and Beta(v, n·v) on an add, so one trial deviates by ≈ 1/√v; a mean over T trials by that over √T.\n");
    println!("| n | vnodes | placement | T | add: mean ratio | add: min–max | remove: mean ratio | remove: min–max | spread per trial (theory, remove) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &n in sizes {
        let base = nodes(0..n);
        for v in vnodes {
            // 1000 × 1000 rebuilds a million points per trial; its spread is small.
            let adds: u64 = if n * u64::from(v) >= 1_000_000 { 16 } else { 64 };
            let removes = adds.min(n);
            let r0 = ring(&base, v);
            let (mut add, mut rem) = (Vec::new(), Vec::new());
            for t in 0..adds {
                let mut grown = base.clone();
                grown.push(spec(n + t));
                add.push(exact_moved(&r0, &ring(&grown, v)) * (n + 1) as f64);
            }
            for gone in 0..removes {
                let less: Vec<NodeSpec> = base.iter().copied().filter(|x| u64::from(x.id) != gone).collect();
                rem.push(exact_moved(&r0, &ring(&less, v)) * n as f64);
            }
            let (a, b) = (summary(&add), summary(&rem));
            let spread = ((n as f64 - 1.0) / (n as f64 * f64::from(v) + 1.0)).sqrt();
            println!(
                "| {n} | {v} | ours (ring) | {adds}/{removes} | {:.4} ± {:.4} | {:.3}–{:.3} | {:.4} ± {:.4} | {:.3}–{:.3} | {spread:.3} |",
                a.0,
                std_err(&add),
                a.1,
                a.2,
                b.0,
                std_err(&rem),
                b.1,
                b.2
            );
            if v == 160 {
                let h0 = hashring(n, v, None);
                let (mut add, mut rem) = (Vec::new(), Vec::new());
                for t in 0..4 {
                    let mut h1 = hashring(n, v, None);
                    h1.batch_add((0..v).map(|idx| VNode { node: n + t, idx }).collect());
                    add.push(moved_hashring(&h0, &h1, &keys) * (n + 1) as f64);
                    rem.push(moved_hashring(&h0, &hashring(n, v, Some(t)), &keys) * n as f64);
                }
                let (a, b) = (summary(&add), summary(&rem));
                println!(
                    "| {n} | {v} | hashring | 4/4 | {:.4} ± {:.4} | {:.3}–{:.3} | {:.4} ± {:.4} | {:.3}–{:.3} | {spread:.3} |",
                    a.0,
                    std_err(&add),
                    a.1,
                    a.2,
                    b.0,
                    std_err(&rem),
                    b.1,
                    b.2
                );
            }
        }
        let j0 = JumpView::build(1, &base, 1).unwrap();
        let j1 = JumpView::build(2, &nodes(0..n + 1), 1).unwrap();
        let jm = JumpView::build(2, &nodes(0..n - 1), 1).unwrap();
        println!(
            "| {n} | – | jump (tail) | 1/1 | {:.4} | – | {:.4} | – | – |",
            moved(&j0, &j1, &hashes) * (n + 1) as f64,
            moved(&j0, &jm, &hashes) * n as f64
        );
        if n <= 100 {
            let h0 = RendezvousView::build(1, &base, 1).unwrap();
            let mut grown = base.clone();
            grown.push(spec(n));
            let h1 = RendezvousView::build(2, &grown, 1).unwrap();
            let hm = RendezvousView::build(2, &base[1..], 1).unwrap();
            println!(
                "| {n} | – | rendezvous | 1/1 | {:.4} | – | {:.4} | – | – |",
                moved(&h0, &h1, &hashes) * (n + 1) as f64,
                moved(&h0, &hm, &hashes) * n as f64
            );
        }
        let m0 = ModuloPlacement::build(1, &base, 1).unwrap();
        let m1 = ModuloPlacement::build(2, &nodes(0..n + 1), 1).unwrap();
        let mm = ModuloPlacement::build(2, &nodes(0..n - 1), 1).unwrap();
        println!(
            "| {n} | – | hash % n (planted bug) | 1/1 | {:.4} | – | {:.4} | – | – |",
            moved(&m0, &m1, &hashes) * (n + 1) as f64,
            moved(&m0, &mm, &hashes) * n as f64
        );
    }

    // ----------------------------------------------------------- bounded load
    let bm = 200_000usize;
    let bh = &hashes[..bm];
    println!("\n## Bounded load: {bm} keys, 160 vnodes\n");
    println!("peak/avg = most loaded node over m/n; cap = ceil((1+ε)·m/n). Moved = fraction of keys whose owner changes, as a ratio to the optimum (1/(n+1) add, 1/n remove), mean over T trials.\n");
    println!("| n | ε | cap | peak/avg | ≤ 1+ε? | T | add: moved ratio | remove: moved ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    for &n in sizes {
        let base = nodes(0..n);
        let trials: u64 = if n >= 1000 { 3 } else { 5 };
        let r0 = ring(&base, 160);
        for eps in [0.05, 0.1, 0.25, f64::INFINITY] {
            let build = |r: RingView| -> Box<dyn Placement> {
                if eps.is_finite() {
                    Box::new(BoundedLoad::new(r, eps, bh.iter().copied()).unwrap())
                } else {
                    Box::new(r)
                }
            };
            let b0 = build(r0.clone());
            let loads = loads_of(&*b0, bh);
            let peak = *loads.iter().max().unwrap() as f64 / (bm as f64 / n as f64);
            // Exact integer ceil((1+ε)·m/n), the bound the caps promise.
            let cap = ringfence::ring::bounded::cap((eps * 1e6).round() as u64, bm as u64, 1, n);
            let (mut add, mut rem) = (Vec::new(), Vec::new());
            for t in 0..trials {
                let mut grown = base.clone();
                grown.push(spec(n + t));
                add.push(moved(&*b0, &*build(ring(&grown, 160)), bh) * (n + 1) as f64);
                let less: Vec<NodeSpec> = base.iter().copied().filter(|x| u64::from(x.id) != t).collect();
                rem.push(moved(&*b0, &*build(ring(&less, 160)), bh) * n as f64);
            }
            let label = if eps.is_finite() {
                format!("{eps}")
            } else {
                "∞ (plain ring)".into()
            };
            let cap = if eps.is_finite() {
                format!("{cap}")
            } else {
                "–".into()
            };
            let ok = if eps.is_finite() {
                if peak <= (1.0 + eps) * (1.0 + 1e-12) {
                    "yes"
                } else {
                    "no"
                }
            } else {
                "–"
            };
            println!(
                "| {n} | {label} | {cap} | {peak:.4} | {ok} | {trials} | {:.3} | {:.3} |",
                summary(&add).0,
                summary(&rem).0
            );
        }
    }

    // ----------------------------------------------------------------- memory
    println!("\n## Memory per view (heap bytes)\n");
    println!(
        "hashring is an estimate: entries × (8-byte hash + size_of::<VNode>() = {} bytes), as its Vec is private.\n",
        8 + std::mem::size_of::<VNode>()
    );
    println!("| n | vnodes | ours (ring) | bytes/point | hashring (est.) | jump | rendezvous |");
    println!("|---|---|---|---|---|---|---|");
    for &n in sizes {
        let ns = nodes(0..n);
        let j = JumpView::build(1, &ns, 1).unwrap().memory_bytes();
        let h = RendezvousView::build(1, &ns, 1).unwrap().memory_bytes();
        for v in vnodes {
            let r = ring(&ns, v);
            let bytes = r.memory_bytes();
            let hr = n as usize * v as usize * (8 + std::mem::size_of::<VNode>());
            println!(
                "| {n} | {v} | {bytes} | {:.1} | {hr} | {j} | {h} |",
                bytes as f64 / r.points() as f64
            );
        }
    }
}
