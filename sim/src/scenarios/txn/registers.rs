//! The bank scenarios' register workload, judged for isolation.
//!
//! Balances repeat, so the bank's reads cannot say which write they saw;
//! registers can. Each register transaction reads one register and writes
//! another without reading it first (a blind write, which the bank never
//! does), or reads both; a written value is the writer's transaction id,
//! unique by construction. The history's transactions go to
//! [`ringfence::history::isolation`], with two facts only the simulator
//! knows: whether a transaction whose client heard nothing committed (the
//! coordinator's decisions), and the order in which each shard installed a
//! register's versions (its applied commits).

use std::collections::{BTreeMap, BTreeSet};

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use ringfence::env::NodeId;
use ringfence::history::isolation::{self, Mop, Options, Status, Txn};
use ringfence::history::{EventKind, History, Violation};
use ringfence::txn::client::{TxnClient, TxnError};
use ringfence::txn::placement::ShardMap;
use ringfence::txn::{Decision, Outcome, TxnEvent, TxnId, Value};

use super::{Bank, BankOp};
use crate::env::SimEnv;
use crate::scenario::Client;

/// Registers `reg-0..REGISTERS`: few, so that transactions meet.
pub const REGISTERS: u32 = 2;

pub fn register_key(register: u32) -> String {
    format!("reg-{register}")
}

/// A register's value: the id of the transaction that wrote it.
fn encode(txn: TxnId) -> Value {
    txn.to_le_bytes().to_vec()
}

fn decode(value: Option<Value>) -> Option<TxnId> {
    value.map(|bytes| TxnId::from_le_bytes(bytes.try_into().expect("register values are 8 bytes")))
}

/// Runs one register transaction and records it.
pub(super) async fn run<const C: u32, const LOAD: u32>(
    bank: &Bank<C, LOAD>,
    txc: &mut TxnClient<SimEnv>,
    client: &Client<BankOp>,
    rng: &mut ChaCha8Rng,
) {
    let mut registers: Vec<u32> = (0..REGISTERS).collect();
    registers.shuffle(rng);
    let write = rng.gen_bool(2.0 / 3.0).then_some(registers[1]);
    let read: Vec<u32> = if write.is_some() { vec![registers[0]] } else { registers };
    client.invoke(BankOp::Registers {
        txn: None,
        reads: vec![],
        writes: vec![],
        reason: None,
    });
    let (mut id, mut reads, mut writes) = (None, Vec::new(), Vec::new());
    let result: Result<Outcome, TxnError> = async {
        let mut txn = txc.begin().await?;
        id = Some(txn.id);
        for &r in &read {
            reads.push((r, decode(txc.get(&mut txn, &register_key(r)).await?)));
        }
        if let Some(w) = write {
            let value = encode(txn.id);
            txc.put(&mut txn, &register_key(w), value).await?;
            writes.push((w, txn.id));
        }
        // A crash of this client from here on leaves a transaction that may
        // commit: its writes must be in the history, or a later read of
        // them looks like garbage.
        client.progress(BankOp::Registers {
            txn: id,
            reads: reads.clone(),
            writes: writes.clone(),
            reason: None,
        });
        txc.commit(txn).await
    }
    .await;
    let unknown = matches!(result, Err(TxnError::Unavailable { .. } | TxnError::Forgotten { .. }));
    if matches!(result, Ok(Outcome::Committed)) || unknown && !writes.is_empty() {
        bank.recheck(id.expect("begun"));
    }
    let reason = match &result {
        Ok(Outcome::Committed) => None,
        Ok(Outcome::Aborted(r)) | Err(TxnError::Aborted(r)) => Some(r.to_string()),
        Err(e) => Some(e.to_string()),
    };
    let op = BankOp::Registers {
        txn: id,
        reads,
        writes,
        reason,
    };
    match result {
        Ok(Outcome::Committed) => client.ok(op),
        // During commit an unanswered request leaves the outcome unknown.
        _ if unknown && id.is_some() => client.info(op),
        _ => client.fail(op),
    };
}

/// Isolation of the register transactions: `serializable` (a cycle of
/// ww/wr/rw dependencies, an aborted or intermediate read) and
/// `strict-serializable` (a cycle that needs real-time order).
pub(super) fn check(
    history: &History<BankOp>,
    events: &[(NodeId, TxnEvent)],
    placement: &dyn ShardMap,
) -> Vec<Violation> {
    let mut committed: BTreeSet<TxnId> = BTreeSet::new();
    // Commits each shard applied, in order.
    let mut applied: BTreeMap<NodeId, Vec<TxnId>> = BTreeMap::new();
    for (node, event) in events {
        match event {
            TxnEvent::Announced {
                txn,
                decision: Decision::Commit,
                ..
            }
            | TxnEvent::Recovered {
                txn,
                decision: Decision::Commit,
                ..
            } => {
                committed.insert(*txn);
            }
            TxnEvent::Applied {
                txn,
                decision: Decision::Commit,
                prepared: true,
            } => {
                committed.insert(*txn);
                // A restarted shard reports what its log holds again; the
                // first report is where the commit took its place.
                let order = applied.entry(*node).or_default();
                if !order.contains(txn) {
                    order.push(*txn);
                }
            }
            _ => {}
        }
    }
    let mut txns = Vec::new();
    let mut writers: BTreeMap<u32, BTreeSet<TxnId>> = BTreeMap::new();
    for (invoke, done) in history.operations() {
        let Some(done) = done else { continue };
        let BankOp::Registers {
            txn: Some(id),
            reads,
            writes,
            ..
        } = &done.op
        else {
            continue;
        };
        let status = match done.kind {
            EventKind::Ok => Status::Committed,
            _ if committed.contains(id) => Status::Committed,
            EventKind::Fail => Status::Aborted,
            _ => Status::Unknown,
        };
        for &(r, _) in writes {
            writers.entry(r).or_default().insert(*id);
        }
        let mut mops: Vec<Mop> = reads.iter().map(|&(r, v)| Mop::Read(register_key(r), v)).collect();
        mops.extend(writes.iter().map(|&(r, v)| Mop::Write(register_key(r), v)));
        txns.push(Txn {
            name: format!("txn {id:#x}"),
            invoked_ns: invoke.time_ns,
            committed_ns: (done.kind == EventKind::Ok).then_some(done.time_ns),
            status,
            mops,
            events: vec![invoke.index, done.index],
        });
    }
    // The order each register's shard installed its versions in.
    let mut versions = BTreeMap::new();
    for r in 0..REGISTERS {
        let key = register_key(r);
        let of_key = writers.get(&r);
        let order: Vec<u64> = applied
            .get(&placement.shard_for(&key))
            .into_iter()
            .flatten()
            .filter(|t| of_key.is_some_and(|w| w.contains(t)))
            .copied()
            .collect();
        versions.insert(key, order);
    }
    isolation::violations(&isolation::check(&txns, &versions, Options { realtime: true }))
}

#[cfg(test)]
mod tests {
    use ringfence::txn::placement::RingShardMap;

    use super::*;

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
        check(h, events, &placement).into_iter().map(|v| v.detail).collect()
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
}
