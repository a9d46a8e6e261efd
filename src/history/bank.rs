//! The bank workload's history ([`BankOp`]) and its invariants: the
//! atomic-commit ones of [`super::commit`], judged on what the servers
//! reported, then money (no acknowledged commit lost, the final balances,
//! every audit's total, no read of an uncommitted write) and the register
//! transactions' isolation ([`super::isolation`]). One function per
//! invariant; [`check`] runs them all.
//!
//! Accounts are `0..accounts` under [`account_key`], each opening at
//! [`INITIAL`]; registers are keys `reg-<n>` ([`register_key`]) whose
//! values are the id of the transaction that wrote them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::commit::{self, Reports};
use super::isolation::{self, Mop, Options, Status, Txn};
use super::{Event, EventKind, History, Violation};
use crate::env::NodeId;
use crate::txn::bank::{account_key, INITIAL};
use crate::txn::placement::ShardMap;
use crate::txn::TxnId;

/// A bank operation as the history records it. Completions carry the
/// transaction id (once begun), the balances read and the balances written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BankOp {
    /// Moves `amount` from account `from` to `to`.
    Transfer {
        /// Account debited.
        from: u32,
        /// Account credited.
        to: u32,
        /// Amount moved.
        amount: i64,
        /// The transaction, once begun.
        txn: Option<TxnId>,
        /// Balances read, by account.
        reads: Vec<(u32, i64)>,
        /// Balances written, by account.
        writes: Vec<(u32, i64)>,
        /// Why it failed, if it did.
        reason: Option<String>,
    },
    /// Reads every account in one transaction.
    Audit {
        /// The transaction, once begun.
        txn: Option<TxnId>,
        /// Every account's balance, when the audit committed.
        balances: Option<Vec<i64>>,
        /// Why it failed, if it did.
        reason: Option<String>,
    },
    /// A register transaction: each read with the id of the transaction
    /// whose write it saw (`None`: never written), and each write with its
    /// value (this transaction's id).
    Registers {
        /// The transaction, once begun.
        txn: Option<TxnId>,
        /// Registers read, with the writer seen.
        reads: Vec<(u32, Option<TxnId>)>,
        /// Registers written (the value is `txn`).
        writes: Vec<(u32, TxnId)>,
        /// Why it failed, if it did.
        reason: Option<String>,
    },
}

/// The key register `register` is stored under.
pub fn register_key(register: u32) -> String {
    format!("reg-{register}")
}

/// The workload's shape, which the checks need.
#[derive(Clone, Copy)]
pub struct Bank<'a> {
    /// Number of accounts (`0..accounts`).
    pub accounts: u32,
    /// Where each key lives, if that never changes; `None` for a bank
    /// whose accounts move between shards: then a transaction's shards
    /// are the ones its coordinator named, and a register's versions are
    /// ordered by when a shard first applied each.
    pub placement: Option<&'a dyn ShardMap>,
    /// The client whose last audit, after the heal, shows the final
    /// balances.
    pub probe_client: u32,
}

/// Every invariant of the bank over `history` and what the servers
/// reported (`events`); at most one violation per invariant, atomic
/// commitment first.
pub fn check(history: &History<BankOp>, events: &[(NodeId, crate::txn::TxnEvent)], bank: Bank<'_>) -> Vec<Violation> {
    let reports = Reports::new(events);
    let ops = history.operations();
    let index = TxnIndex::new(&ops, bank, &reports);
    let cite = |txn| index.events.get(&txn).cloned().unwrap_or_default();
    let touched = |txn| index.shards.get(&txn).cloned().unwrap_or_default();
    let final_audit = final_audit(&ops, bank.probe_client);
    let committed = CommittedTransfers::new(&ops, &reports, bank.accounts);
    [
        commit::commit_without_yes_vote(&reports, touched, cite),
        commit::decision_changed(&reports, cite),
        commit::atomicity(&reports, cite),
        final_audit
            .as_ref()
            .and_then(|f| acked_commit_lost(&ops, &reports, &index, f)),
        final_audit.as_ref().and_then(|f| final_state(&committed, f)),
        audit_total(&ops, bank),
        aborted_read(&ops, &committed),
    ]
    .into_iter()
    .flatten()
    .chain(registers(history, &reports, bank.placement))
    .collect()
}

type Operations<'h> = [(&'h Event<BankOp>, Option<&'h Event<BankOp>>)];

/// Per transaction: the history events that mention it and the shards its
/// keys live on.
struct TxnIndex {
    events: BTreeMap<TxnId, Vec<usize>>,
    shards: BTreeMap<TxnId, BTreeSet<NodeId>>,
}

impl TxnIndex {
    fn new(ops: &Operations<'_>, bank: Bank<'_>, reports: &Reports) -> Self {
        let mut index = TxnIndex {
            events: BTreeMap::new(),
            shards: BTreeMap::new(),
        };
        for (invoke, done) in ops {
            let Some(done) = done else { continue };
            let (txn, accounts) = match (&invoke.op, &done.op) {
                (BankOp::Transfer { from, to, .. }, BankOp::Transfer { txn: Some(t), .. }) => (*t, vec![*from, *to]),
                (BankOp::Audit { .. }, BankOp::Audit { txn: Some(t), .. }) => (*t, (0..bank.accounts).collect()),
                _ => continue,
            };
            index.events.entry(txn).or_default().extend([invoke.index, done.index]);
            let shards = index.shards.entry(txn).or_default();
            match bank.placement {
                Some(placement) => shards.extend(accounts.iter().map(|&a| placement.shard_for(&account_key(a)))),
                None => shards.extend(reports.participants(txn)),
            }
        }
        index
    }
}

/// The probe's audit after the heal: balances, its completion's index and
/// when it was invoked.
struct FinalAudit {
    balances: Vec<i64>,
    index: usize,
    began_ns: u64,
}

fn final_audit(ops: &Operations<'_>, probe_client: u32) -> Option<FinalAudit> {
    ops.iter().rev().find_map(|(invoke, done)| match done {
        Some(d) if invoke.client == probe_client && d.kind == EventKind::Ok => match &d.op {
            BankOp::Audit { balances: Some(b), .. } => Some(FinalAudit {
                balances: b.clone(),
                index: d.index,
                began_ns: invoke.time_ns,
            }),
            _ => None,
        },
        _ => None,
    })
}

/// `acked-commit-lost`: every shard of a transaction acknowledged as
/// committed applied the commit. Judged for acknowledgements before the
/// probe's audit began: that audit could only commit once their locks were
/// released everywhere.
fn acked_commit_lost(
    ops: &Operations<'_>,
    reports: &Reports,
    index: &TxnIndex,
    last: &FinalAudit,
) -> Option<Violation> {
    ops.iter().find_map(|(invoke, done)| {
        let done = (*done)?;
        if done.kind != EventKind::Ok || done.time_ns >= last.began_ns {
            return None;
        }
        let txn = match &done.op {
            BankOp::Transfer { txn: Some(t), .. } | BankOp::Audit { txn: Some(t), .. } => *t,
            _ => return None,
        };
        let shard = index
            .shards
            .get(&txn)
            .into_iter()
            .flatten()
            .find(|&&shard| !reports.applied_commit_at(txn, shard))?;
        Some(Violation::new(
            "acked-commit-lost",
            format!("txn {txn:#x} was acknowledged as committed, but shard {shard} never applied the commit"),
            vec![invoke.index, done.index],
        ))
    })
}

/// The transfers that committed: the balances they give, and every value
/// they wrote per account.
struct CommittedTransfers {
    balances: Vec<i64>,
    written: BTreeMap<u32, BTreeSet<i64>>,
}

impl CommittedTransfers {
    fn new(ops: &Operations<'_>, reports: &Reports, accounts: u32) -> Self {
        let mut balances: Vec<i64> = vec![INITIAL; accounts as usize];
        let mut written: BTreeMap<u32, BTreeSet<i64>> = BTreeMap::new();
        for (invoke, done) in ops {
            let (
                BankOp::Transfer { from, to, amount, .. },
                Some(Event {
                    op: BankOp::Transfer {
                        txn: Some(txn), writes, ..
                    },
                    ..
                }),
            ) = (&invoke.op, done)
            else {
                continue;
            };
            if reports.committed(*txn) && !writes.is_empty() {
                balances[*from as usize] -= amount;
                balances[*to as usize] += amount;
                for &(account, value) in writes {
                    written.entry(account).or_default().insert(value);
                }
            }
        }
        CommittedTransfers { balances, written }
    }
}

/// `final-state`: after the heal the balances are the opening ones plus
/// every committed transfer.
fn final_state(committed: &CommittedTransfers, last: &FinalAudit) -> Option<Violation> {
    let expected = &committed.balances;
    (last.balances != *expected).then(|| {
        Violation::new(
            "final-state",
            format!(
                "after the heal the balances are {:?}, but the committed transfers give {expected:?}",
                last.balances
            ),
            vec![last.index],
        )
    })
}

/// `audit-total`: every audit sees the same total (money is only moved).
fn audit_total(ops: &Operations<'_>, bank: Bank<'_>) -> Option<Violation> {
    let total = INITIAL * i64::from(bank.accounts);
    ops.iter().find_map(|(_, done)| {
        let Some(Event {
            kind: EventKind::Ok,
            op: BankOp::Audit { balances: Some(b), .. },
            index,
            ..
        }) = done
        else {
            return None;
        };
        let sum: i64 = b.iter().sum();
        (sum != total).then(|| {
            Violation::new(
                "audit-total",
                format!("an audit saw balances {b:?} totalling {sum}, not {total}"),
                vec![*index],
            )
        })
    })
}

/// `aborted-read`: a read sees the opening balance or a value some
/// committed transfer wrote.
fn aborted_read(ops: &Operations<'_>, committed: &CommittedTransfers) -> Option<Violation> {
    let committed_value = |account: u32, value: i64| {
        value == INITIAL || committed.written.get(&account).is_some_and(|w| w.contains(&value))
    };
    ops.iter().find_map(|(_, done)| {
        let done = (*done)?;
        let reads: Vec<(u32, i64)> = match &done.op {
            BankOp::Transfer { reads, .. } => reads.clone(),
            BankOp::Audit { balances: Some(b), .. } => b.iter().enumerate().map(|(a, &v)| (a as u32, v)).collect(),
            BankOp::Audit { .. } | BankOp::Registers { .. } => vec![],
        };
        let (account, value) = reads.into_iter().find(|&(a, v)| !committed_value(a, v))?;
        Some(Violation::new(
            "aborted-read",
            format!("a read of account {account} returned {value}, which no committed transaction wrote"),
            vec![done.index],
        ))
    })
}

/// Isolation of the register transactions: `serializable` (a cycle of
/// ww/wr/rw dependencies, an aborted or intermediate read) and
/// `strict-serializable` (a cycle that needs real-time order). Two facts
/// only the servers know complete the history: whether a transaction whose
/// client heard nothing committed, and the order in which each register's
/// shard applied its versions.
pub fn registers(history: &History<BankOp>, reports: &Reports, placement: Option<&dyn ShardMap>) -> Vec<Violation> {
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
            _ if reports.committed(*id) || reports.applied_commit(*id) => Status::Committed,
            EventKind::Fail => Status::Aborted,
            _ => Status::Unknown,
        };
        for &(r, _) in reads {
            writers.entry(r).or_default();
        }
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
    let versions = writers
        .iter()
        .map(|(&r, of_register)| {
            let key = register_key(r);
            let order = match placement {
                Some(placement) => reports.commit_order(placement.shard_for(&key)),
                // A register's next version is written only once its
                // lock is free at the shard serving it then, after its
                // last version was applied there (and, if it moved in
                // between, shipped): the first application anywhere
                // orders them.
                None => reports.first_commit_order(),
            };
            let order: Vec<TxnId> = order.iter().filter(|t| of_register.contains(t)).copied().collect();
            (key, order)
        })
        .collect();
    isolation::violations(&isolation::check(&txns, &versions, Options { realtime: true }))
}

#[cfg(test)]
mod tests;
