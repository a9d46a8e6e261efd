//! Lookup time per key: our vnode ring vs the `hashring` crate vs our jump
//! hash, side by side in one run, for n ∈ {10, 100, 1000} nodes and
//! vnodes ∈ {40, 160, 1000} per node.
//!
//! Each iteration looks up the next key of a 64 Ki-key table (strings like
//! `key-12345`), so the ring is probed at random places as in production
//! rather than one hot cache line; each contender hashes the key itself
//! (ours: xxh3 over the bytes; hashring: its default SipHash over `&String`;
//! jump: xxh3 then jump). `ours_prehashed` isolates the lookup structure.
//!
//! Run (about 2 minutes on 2 cores):
//! `cargo bench -p ringfence-bench --bench ring -- --warm-up-time 1 --measurement-time 2`
//! and filter with e.g. `-- lookup/n=1000/v=160`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use hashring::HashRing;
use ringfence::ring::{hash_key, JumpView, NodeSpec, Placement, RingConfig, RingView};

const KEYS: usize = 1 << 16;

/// How `hashring` is meant to be used with virtual nodes (see its docs): one
/// ring entry per (node, replica index).
#[derive(Clone, Copy, Debug, Hash, PartialEq)]
struct VNode {
    node: u64,
    idx: u32,
}

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("key-{i}")).collect()
}

fn lookup(c: &mut Criterion) {
    let keys = keys();
    let hashes: Vec<u64> = keys.iter().map(|k| hash_key(k.as_bytes())).collect();
    for n in [10u64, 100, 1000] {
        let nodes: Vec<NodeSpec> = (0..n).map(NodeSpec::new).collect();
        let jump = JumpView::build(1, &nodes, 1).unwrap();
        for v in [40u32, 160, 1000] {
            let ring = RingView::build(1, &nodes, RingConfig { vnodes: v, replicas: 1 }).unwrap();
            let mut theirs: HashRing<VNode> = HashRing::new();
            theirs.batch_add(
                (0..n)
                    .flat_map(|node| (0..v).map(move |idx| VNode { node, idx }))
                    .collect(),
            );
            let mut g = c.benchmark_group(format!("lookup/n={n}/v={v}"));
            let mut i = 0usize;
            g.bench_function("ours", |b| {
                b.iter(|| {
                    i = (i + 1) & (KEYS - 1);
                    ring.owner(black_box(keys[i].as_bytes()))
                })
            });
            g.bench_function("ours_prehashed", |b| {
                b.iter(|| {
                    i = (i + 1) & (KEYS - 1);
                    ring.owner_of_hash(black_box(hashes[i]))
                })
            });
            g.bench_function("hashring", |b| {
                b.iter(|| {
                    i = (i + 1) & (KEYS - 1);
                    theirs.get(black_box(&keys[i])).map(|v| v.node)
                })
            });
            g.bench_function("jump", |b| {
                b.iter(|| {
                    i = (i + 1) & (KEYS - 1);
                    jump.owner(black_box(keys[i].as_bytes()))
                })
            });
            g.finish();
        }
    }
}

/// Building a view is on the membership-change path, not the request path;
/// measured so its cost is known (dominated by one sha1 per point).
fn build(c: &mut Criterion) {
    let nodes: Vec<NodeSpec> = (0..1000).map(NodeSpec::new).collect();
    let mut g = c.benchmark_group("build");
    g.sample_size(10);
    g.bench_function("n=1000/v=160", |b| {
        b.iter(|| {
            RingView::build(
                1,
                black_box(&nodes),
                RingConfig {
                    vnodes: 160,
                    replicas: 3,
                },
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, lookup, build);
criterion_main!(benches);
