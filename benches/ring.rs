//! Lookup time per key: our vnode ring vs the `hashring` crate vs our jump
//! hash, side by side in one run, for n ∈ {10, 100, 1000} nodes and
//! vnodes ∈ {40, 160, 1000} per node.
//!
//! Keys are `key-0` .. `key-65535`, looked up in order, so the ring is
//! probed at random places as in production rather than one hot cache line;
//! each contender hashes the key itself (ours: xxh3 over the bytes;
//! hashring: its default SipHash; jump: xxh3 then jump).
//! `ours_prehashed` isolates the lookup structure. A timed iteration looks
//! up a block of [`BLOCK`] keys and reports the time per key, so criterion's
//! `time:` line is nanoseconds per key without the harness's per-iteration
//! overhead, which is of the same order as one lookup.
//!
//! Run (about 2 minutes on 2 cores):
//! `cargo bench -p ringfence-bench --bench ring -- --warm-up-time 1 --measurement-time 2`
//! and filter with e.g. `-- lookup/n=1000/v=160`.

use std::hint::black_box;
use std::time::Instant;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
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

/// Keys per timed iteration.
const BLOCK: usize = 256;

/// The benchmark's keys, packed end to end in one buffer (about 800 KiB
/// with their offsets).
///
/// A request's key is in cache when the ring is asked about it. A table of
/// 64 Ki separately allocated `String`s (24-byte headers plus 32-byte heap
/// blocks, about 3.5 MiB) would instead stream through this machine's
/// 1 MiB-per-core L2 on every pass and evict the lookup structure under
/// test, so the figure would measure the harness's memory traffic more than
/// the lookup.
struct Keys {
    bytes: Vec<u8>,
    /// Key `i` is `bytes[starts[i]..starts[i + 1]]`.
    starts: Vec<u32>,
}

impl Keys {
    fn new() -> Self {
        let mut bytes = Vec::new();
        let mut starts = Vec::with_capacity(KEYS + 1);
        starts.push(0);
        for i in 0..KEYS {
            bytes.extend_from_slice(format!("key-{i}").as_bytes());
            starts.push(bytes.len() as u32);
        }
        Keys { bytes, starts }
    }

    #[inline]
    fn get(&self, i: usize) -> &[u8] {
        &self.bytes[self.starts[i] as usize..self.starts[i + 1] as usize]
    }
}

/// Times `lookup` over consecutive key numbers, [`BLOCK`] per iteration,
/// and reports the time per key.
fn per_key(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut lookup: impl FnMut(usize) -> u64) {
    let mut next = 0usize;
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut acc = 0u64;
            for _ in 0..iters {
                for i in next..next + BLOCK {
                    acc = acc.wrapping_add(lookup(black_box(i)));
                }
                next = (next + BLOCK) & (KEYS - 1);
            }
            black_box(acc);
            start.elapsed() / BLOCK as u32
        })
    });
}

fn lookup(c: &mut Criterion) {
    let keys = Keys::new();
    let hashes: Vec<u64> = (0..KEYS).map(|i| hash_key(keys.get(i))).collect();
    for n in [10u32, 100, 1000] {
        let nodes: Vec<NodeSpec> = (0..n).map(NodeSpec::new).collect();
        let jump = JumpView::build(1, &nodes, 1).unwrap();
        for v in [40u32, 160, 1000] {
            let ring = RingView::build(1, &nodes, RingConfig { vnodes: v, replicas: 1 }).unwrap();
            let mut theirs: HashRing<VNode> = HashRing::new();
            theirs.batch_add(
                (0..u64::from(n))
                    .flat_map(|node| (0..v).map(move |idx| VNode { node, idx }))
                    .collect(),
            );
            let mut g = c.benchmark_group(format!("lookup/n={n}/v={v}"));
            per_key(&mut g, "ours", |i| u64::from(ring.owner(keys.get(i))));
            per_key(&mut g, "ours_prehashed", |i| u64::from(ring.owner_of_hash(hashes[i])));
            per_key(&mut g, "hashring", |i| theirs.get(&keys.get(i)).map_or(0, |v| v.node));
            per_key(&mut g, "jump", |i| u64::from(jump.owner(keys.get(i))));
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
