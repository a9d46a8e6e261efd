use proptest::prelude::*;

use super::*;

fn r(key: &str, value: Option<Value>) -> Mop {
    Mop::Read(key.into(), value)
}

fn w(key: &str, value: Value) -> Mop {
    Mop::Write(key.into(), value)
}

/// Transaction `n`, invoked at `10 n` and committed at `10 n + 5`.
fn txn(n: usize, status: Status, mops: Vec<Mop>) -> Txn {
    Txn {
        name: format!("T{n}"),
        invoked_ns: 10 * n as u64,
        committed_ns: (status == Status::Committed).then_some(10 * n as u64 + 5),
        status,
        mops,
        events: vec![n],
    }
}

/// Concurrent: every transaction invoked at 0 and committed at 100.
fn concurrent(txns: Vec<Txn>) -> Vec<Txn> {
    txns.into_iter()
        .map(|mut t| {
            t.invoked_ns = 0;
            t.committed_ns = t.committed_ns.map(|_| 100);
            t
        })
        .collect()
}

fn names(txns: &[Txn], versions: &[(&str, Vec<Value>)], realtime: bool) -> Vec<String> {
    let versions = versions.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    check(txns, &versions, Options { realtime })
        .into_iter()
        .map(|a| a.name)
        .collect()
}

use Status::{Aborted, Committed, Unknown};

#[test]
fn a_serial_history_passes() {
    let txns = vec![
        txn(0, Committed, vec![r("x", None), w("x", 1), w("y", 1)]),
        txn(1, Committed, vec![r("x", Some(1)), r("y", Some(1)), w("x", 2)]),
        txn(2, Aborted, vec![w("y", 9)]),
        txn(3, Committed, vec![r("x", Some(2)), r("y", Some(1))]),
    ];
    assert!(names(&txns, &[], true).is_empty());
    assert!(names(&txns, &[("x", vec![1, 2]), ("y", vec![1])], true).is_empty());
}

#[test]
fn g0_write_cycle() {
    let txns = concurrent(vec![
        txn(0, Committed, vec![w("x", 1), w("y", 1)]),
        txn(1, Committed, vec![w("x", 2), w("y", 2)]),
    ]);
    // Each key's versions in opposite orders: T0 -ww-> T1 -ww-> T0.
    let found = check(
        &txns,
        &[("x".to_string(), vec![1, 2]), ("y".to_string(), vec![2, 1])].into(),
        Options::default(),
    );
    assert_eq!(found[0].name, "G0");
    assert_eq!(found[0].detail, "T0 -ww x-> T1 -ww y-> T0");
    assert_eq!(found[0].invariant(), "serializable");
    assert_eq!(found[0].events, vec![0, 1]);
}

#[test]
fn g1a_aborted_read() {
    let txns = vec![
        txn(0, Aborted, vec![w("x", 1)]),
        txn(1, Committed, vec![r("x", Some(1))]),
    ];
    assert_eq!(names(&txns, &[], true), ["G1a"]);
    // A write whose outcome is unknown may have committed: reading it is fine.
    let txns = vec![
        txn(0, Unknown, vec![w("x", 1)]),
        txn(1, Committed, vec![r("x", Some(1))]),
    ];
    assert!(names(&txns, &[], true).is_empty());
}

#[test]
fn g1b_intermediate_read() {
    let txns = vec![
        txn(0, Committed, vec![w("x", 1), w("x", 2)]),
        txn(1, Committed, vec![r("x", Some(1))]),
    ];
    assert_eq!(names(&txns, &[], false), ["G1b"]);
}

#[test]
fn g1c_circular_information_flow() {
    let txns = concurrent(vec![
        txn(0, Committed, vec![w("x", 1), r("y", Some(1))]),
        txn(1, Committed, vec![w("y", 1), r("x", Some(1))]),
    ]);
    let found = check(&txns, &BTreeMap::new(), Options::default());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].name, "G1c");
    assert!(found[0].detail.contains("-wr x->") && found[0].detail.contains("-wr y->"));
}

#[test]
fn g_single_read_skew_and_lost_update() {
    // T1 saw x before T0 and y after it.
    let txns = concurrent(vec![
        txn(0, Committed, vec![r("x", None), r("y", None), w("x", 1), w("y", 1)]),
        txn(1, Committed, vec![r("x", None), r("y", Some(1))]),
    ]);
    let found = check(&txns, &BTreeMap::new(), Options::default());
    assert_eq!(found[0].name, "G-single");
    assert_eq!(found[0].detail, "T0 -wr y-> T1 -rw x-> T0");
    // Lost update: both read the initial x and wrote it; the database
    // installed 1 then 2.
    let txns = concurrent(vec![
        txn(0, Committed, vec![r("x", None), w("x", 1)]),
        txn(1, Committed, vec![r("x", None), w("x", 2)]),
    ]);
    assert_eq!(names(&txns, &[("x", vec![1, 2])], false), ["G-single"]);
    // Without the installed order, two anti-dependencies.
    assert_eq!(names(&txns, &[], false), ["G2"]);
}

#[test]
fn g2_write_skew() {
    let txns = concurrent(vec![
        txn(0, Committed, vec![r("x", None), w("y", 1)]),
        txn(1, Committed, vec![r("y", None), w("x", 1)]),
    ]);
    let found = check(&txns, &BTreeMap::new(), Options { realtime: true });
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].name, "G2");
    assert_eq!(found[0].detail, "T0 -rw x-> T1 -rw y-> T0");
}

#[test]
fn a_stale_read_is_a_realtime_anomaly_only() {
    // T0 committed at 5; T1, invoked at 10, still read the initial x.
    let txns = vec![
        txn(0, Committed, vec![w("x", 1)]),
        txn(1, Committed, vec![r("x", None)]),
    ];
    assert!(names(&txns, &[], false).is_empty());
    let found = check(&txns, &BTreeMap::new(), Options { realtime: true });
    assert_eq!(found[0].name, "G-single-realtime");
    assert_eq!(found[0].invariant(), "strict-serializable");
    assert_eq!(found[0].detail, "T0 -rt-> T1 -rw x-> T0");
    // Concurrent, the same reads are fine.
    assert!(names(&concurrent(txns), &[], true).is_empty());
}

#[test]
fn internal_and_garbage_reads() {
    let txns = vec![txn(0, Committed, vec![w("x", 1), r("x", None)])];
    assert_eq!(names(&txns, &[], false), ["internal"]);
    let txns = vec![
        txn(0, Committed, vec![r("x", None), r("x", Some(3))]),
        txn(1, Committed, vec![w("x", 3)]),
    ];
    assert!(names(&txns, &[], false).contains(&"internal".to_string()));
    let txns = vec![txn(0, Committed, vec![r("x", Some(7))])];
    assert_eq!(names(&txns, &[], false), ["garbage-read"]);
    // Aborted readers are not judged.
    let txns = vec![txn(0, Aborted, vec![r("x", Some(7))])];
    assert!(names(&txns, &[], false).is_empty());
}

#[test]
fn violations_keep_the_first_anomaly_per_invariant() {
    let txns = vec![
        txn(0, Aborted, vec![w("x", 1)]),
        txn(1, Committed, vec![r("x", Some(1)), r("y", Some(9))]),
    ];
    let found = check(&txns, &BTreeMap::new(), Options::default());
    let v = violations(&found);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].invariant, "serializable");
    assert!(v[0].detail.starts_with("G1a: "), "{}", v[0].detail);
}

/// A random serial execution: each transaction runs alone, in order, over
/// four keys; some abort (their writes never become visible), some end
/// unknown (their writes may or may not).
fn serial() -> impl Strategy<Value = (Vec<Txn>, BTreeMap<Key, Vec<Value>>)> {
    let mop = (any::<bool>(), 0..4u8);
    let spec = (prop::collection::vec(mop, 1..6), 0..6u8, any::<bool>());
    prop::collection::vec(spec, 1..24).prop_map(|specs| {
        let mut state: BTreeMap<Key, Value> = BTreeMap::new();
        let mut versions: BTreeMap<Key, Vec<Value>> = BTreeMap::new();
        let mut next = 0;
        let mut txns = Vec::new();
        for (n, (mops, fate, applied)) in specs.into_iter().enumerate() {
            let status = match fate {
                0 => Aborted,
                1 => Unknown,
                _ => Committed,
            };
            let mut local = state.clone();
            let mut written = BTreeMap::new();
            let mops = mops
                .into_iter()
                .map(|(write, k)| {
                    let key = format!("k{k}");
                    if write {
                        next += 1;
                        local.insert(key.clone(), next);
                        written.insert(key.clone(), next);
                        Mop::Write(key, next)
                    } else {
                        Mop::Read(key.clone(), local.get(&key).copied())
                    }
                })
                .collect();
            if status == Committed || status == Unknown && applied {
                for (key, value) in written {
                    versions.entry(key).or_default().push(value);
                }
                state = local;
            }
            txns.push(txn(n, status, mops));
        }
        (txns, versions)
    })
}

proptest! {
    #[test]
    fn serial_histories_are_always_accepted((txns, versions) in serial(), realtime in any::<bool>(), known in any::<bool>()) {
        let versions = if known { versions } else { BTreeMap::new() };
        let found = check(&txns, &versions, Options { realtime });
        prop_assert!(found.is_empty(), "{:?}", found);
    }
}
