//! The bank's checks, each shown catching the history it exists for.

use super::*;
use crate::txn::placement::RingShardMap;
use crate::txn::{Decision, TxnEvent};

/// The classic coordinator's id in these histories.
const COORDINATOR: NodeId = 1;

const T: TxnId = (1 << 32) | 1;

fn placement() -> RingShardMap {
    RingShardMap::new(vec![2, 3, 4]).expect("distinct shard ids")
}

fn transfer(txn: TxnId, reads: Vec<(u32, i64)>, writes: Vec<(u32, i64)>) -> BankOp {
    BankOp::Transfer {
        from: 0,
        to: 1,
        amount: 10,
        txn: Some(txn),
        reads,
        writes,
        reason: None,
    }
}

fn invoke() -> BankOp {
    BankOp::Transfer {
        from: 0,
        to: 1,
        amount: 10,
        txn: None,
        reads: vec![],
        writes: vec![],
        reason: None,
    }
}

fn audit_invoke() -> BankOp {
    BankOp::Audit {
        txn: None,
        balances: None,
        reason: None,
    }
}

fn audit(balances: Vec<i64>) -> BankOp {
    BankOp::Audit {
        txn: Some(T + 1),
        balances: Some(balances),
        reason: None,
    }
}

/// One committed transfer of 10 from account 0 to 1, then the probe's
/// audit showing `final_balances`.
fn history(final_balances: Vec<i64>) -> History<BankOp> {
    let mut h = History::default();
    h.push(0, 1, EventKind::Invoke, invoke());
    h.push(
        0,
        2,
        EventKind::Ok,
        transfer(T, vec![(0, 100), (1, 100)], vec![(0, 90), (1, 110)]),
    );
    h.push(1, 3, EventKind::Invoke, audit_invoke());
    h.push(1, 4, EventKind::Ok, audit(final_balances));
    h
}

fn shards_of_transfer() -> Vec<NodeId> {
    let p = placement();
    let mut s: Vec<_> = [0, 1].iter().map(|&a| p.shard_for(&account_key(a))).collect();
    s.sort();
    s.dedup();
    s
}

fn clean_events() -> Vec<(NodeId, TxnEvent)> {
    let shards = shards_of_transfer();
    let mut events = vec![];
    for &s in &shards {
        events.push((s, TxnEvent::Voted { txn: T, yes: true }));
    }
    events.push((
        COORDINATOR,
        TxnEvent::Announced {
            txn: T,
            decision: Decision::Commit,
            participants: shards.clone(),
        },
    ));
    for &s in &shards {
        events.push((
            s,
            TxnEvent::Applied {
                txn: T,
                decision: Decision::Commit,
                prepared: true,
            },
        ));
    }
    events
}

fn bank(placement: &RingShardMap) -> Bank<'_> {
    Bank {
        accounts: 6,
        placement: Some(placement),
        probe_client: 1,
    }
}

fn first(h: &History<BankOp>, events: &[(NodeId, TxnEvent)]) -> Option<String> {
    check(h, events, bank(&placement()))
        .first()
        .map(|v| v.invariant.clone())
}

const FINAL: [i64; 6] = [90, 110, 100, 100, 100, 100];

#[test]
fn a_clean_run_passes() {
    assert_eq!(first(&history(FINAL.to_vec()), &clean_events()), None);
}

#[test]
fn catches_a_shard_that_aborted_after_voting_yes() {
    let mut events = clean_events();
    let last = events.len() - 1;
    events[last].1 = TxnEvent::Applied {
        txn: T,
        decision: Decision::Abort,
        prepared: true,
    };
    let h = history(FINAL.to_vec());
    if shards_of_transfer().len() > 1 {
        assert_eq!(first(&h, &events).as_deref(), Some("atomicity"));
    } else {
        assert_eq!(first(&h, &events).as_deref(), Some("acked-commit-lost"));
    }
}

#[test]
fn an_unprepared_abort_is_not_a_decision() {
    let mut events = clean_events();
    events.insert(
        0,
        (
            shards_of_transfer()[0],
            TxnEvent::Applied {
                txn: T,
                decision: Decision::Abort,
                prepared: false,
            },
        ),
    );
    assert_eq!(first(&history(FINAL.to_vec()), &events), None);
}

#[test]
fn catches_commit_without_votes_and_changed_decisions() {
    let mut events = clean_events();
    events.remove(0);
    assert_eq!(
        first(&history(FINAL.to_vec()), &events).as_deref(),
        Some("commit-without-yes-vote")
    );
    let mut events = clean_events();
    events.push((
        COORDINATOR,
        TxnEvent::Announced {
            txn: T,
            decision: Decision::Abort,
            participants: vec![],
        },
    ));
    assert_eq!(
        first(&history(FINAL.to_vec()), &events).as_deref(),
        Some("decision-changed")
    );
    let mut events = clean_events();
    events.push((2, TxnEvent::CommitUnprepared { txn: T }));
    assert_eq!(
        first(&history(FINAL.to_vec()), &events).as_deref(),
        Some("commit-without-yes-vote")
    );
}

#[test]
fn a_commit_only_a_recovered_log_holds_is_judged_as_committed() {
    // The coordinator crashed between syncing the commit record and
    // announcing it; its next incarnation found it and re-sent it.
    let recovered: Vec<_> = clean_events()
        .into_iter()
        .map(|(n, e)| match e {
            TxnEvent::Announced {
                txn,
                decision,
                participants,
            } => (
                n,
                TxnEvent::Recovered {
                    txn,
                    decision,
                    participants,
                },
            ),
            e => (n, e),
        })
        .collect();
    assert_eq!(first(&history(FINAL.to_vec()), &recovered), None);
    // A later incarnation that presumes it aborted changed the decision.
    let mut events = recovered;
    events.push((
        COORDINATOR,
        TxnEvent::Announced {
            txn: T,
            decision: Decision::Abort,
            participants: vec![],
        },
    ));
    assert_eq!(
        first(&history(FINAL.to_vec()), &events).as_deref(),
        Some("decision-changed")
    );
}

#[test]
fn catches_lost_money_and_dirty_reads() {
    assert_eq!(
        first(&history(vec![90, 100, 100, 100, 100, 100]), &clean_events()).as_deref(),
        Some("final-state")
    );
    // The transfer's writes never committed, yet the audit saw them.
    let events: Vec<_> = clean_events()
        .into_iter()
        .filter(|(_, e)| !matches!(e, TxnEvent::Announced { .. }))
        .collect();
    let mut h = History::default();
    h.push(0, 1, EventKind::Invoke, invoke());
    h.push(
        0,
        2,
        EventKind::Fail,
        transfer(T, vec![(0, 100), (1, 100)], vec![(0, 90), (1, 110)]),
    );
    h.push(1, 3, EventKind::Invoke, audit_invoke());
    h.push(2, 4, EventKind::Invoke, audit_invoke());
    h.push(2, 5, EventKind::Ok, audit(vec![90, 110, 100, 100, 100, 100]));
    h.push(1, 6, EventKind::Ok, audit(vec![100; 6]));
    assert_eq!(first(&h, &events).as_deref(), Some("aborted-read"));
    let mut h = history(FINAL.to_vec());
    h.push(2, 5, EventKind::Invoke, audit_invoke());
    h.push(2, 6, EventKind::Ok, audit(vec![90, 100, 100, 100, 100, 100]));
    let v = check(&h, &clean_events(), bank(&placement()));
    assert!(v.iter().any(|v| v.invariant == "audit-total"), "{v:?}");
}

// Register transactions, judged for isolation.
const T1: TxnId = (1 << 32) | 1;
const T2: TxnId = (1 << 32) | 2;

fn op(txn: Option<TxnId>, reads: Vec<(u32, Option<TxnId>)>, writes: Vec<(u32, TxnId)>) -> BankOp {
    BankOp::Registers {
        txn,
        reads,
        writes,
        reason: None,
    }
}

/// Write skew: each read the register the other wrote, before it did.
/// `second` is how T2's client heard of its commit.
fn skew(second: EventKind) -> History<BankOp> {
    let mut h = History::default();
    h.push(0, 1, EventKind::Invoke, op(None, vec![], vec![]));
    h.push(1, 2, EventKind::Invoke, op(None, vec![], vec![]));
    h.push(0, 3, EventKind::Ok, op(Some(T1), vec![(0, None)], vec![(1, T1)]));
    h.push(1, 4, second, op(Some(T2), vec![(1, None)], vec![(0, T2)]));
    h
}

fn check_with(h: &History<BankOp>, events: &[(NodeId, TxnEvent)]) -> Vec<String> {
    let placement = RingShardMap::new(vec![2, 3, 4]).unwrap();
    registers(h, &Reports::new(events), Some(&placement))
        .into_iter()
        .map(|v| v.detail)
        .collect()
}

#[test]
fn write_skew_is_a_g2_cycle() {
    let found = check_with(&skew(EventKind::Ok), &[]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("G2: "), "{}", found[0]);
}

#[test]
fn an_unknown_outcome_counts_once_the_coordinator_committed_it() {
    // T2's client heard nothing: its reads are not judged...
    assert!(check_with(&skew(EventKind::Info), &[]).is_empty());
    // ...until the coordinator's own record shows it committed.
    let committed = TxnEvent::Announced {
        txn: T2,
        decision: Decision::Commit,
        participants: vec![],
    };
    assert_eq!(check_with(&skew(EventKind::Info), &[(1, committed)]).len(), 1);
}

#[test]
fn the_shards_apply_order_orders_the_versions() {
    // Both read nothing and wrote register 0 (a lost update); the
    // shard applied T1 then T2, so the cycle has one anti-dependency.
    let mut h = History::default();
    h.push(0, 1, EventKind::Invoke, op(None, vec![], vec![]));
    h.push(1, 2, EventKind::Invoke, op(None, vec![], vec![]));
    h.push(0, 3, EventKind::Ok, op(Some(T1), vec![(0, None)], vec![(0, T1)]));
    h.push(1, 4, EventKind::Ok, op(Some(T2), vec![(0, None)], vec![(0, T2)]));
    let placement = RingShardMap::new(vec![2, 3, 4]).unwrap();
    let shard = placement.shard_for(&register_key(0));
    let applied = |txn| TxnEvent::Applied {
        txn,
        decision: Decision::Commit,
        prepared: true,
    };
    let found = check_with(&h, &[(shard, applied(T1)), (shard, applied(T2))]);
    assert!(found[0].starts_with("G-single: "), "{found:?}");
    assert!(check_with(&h, &[])[0].starts_with("G2: "));
}
