//! Atomic commitment, judged on what the servers report
//! ([`TxnEvent`]s: votes cast, decisions announced or found in a recovered
//! log, decisions applied), not on what clients heard. One function per
//! invariant; each returns its first violation. The simulator's bank
//! scenarios run them; anything that collects the events can.

use std::collections::{BTreeMap, BTreeSet};

use super::Violation;
use crate::env::NodeId;
use crate::txn::{Decision, TxnEvent, TxnId};

/// What the servers of a two-phase-commit run reported, by transaction.
#[derive(Debug, Default)]
pub struct Reports {
    votes: BTreeMap<TxnId, BTreeMap<NodeId, BTreeSet<bool>>>,
    /// Decisions applied by shards that had voted yes.
    applied: BTreeMap<TxnId, BTreeMap<NodeId, BTreeSet<Decision>>>,
    /// Decisions announced (or recovered) by any coordinator, and the
    /// participants they named.
    announced: BTreeMap<TxnId, (BTreeSet<Decision>, BTreeSet<NodeId>)>,
    /// Shards told to commit a transaction they hold no prepare record of.
    unprepared: Vec<(NodeId, TxnId)>,
    /// Per shard, the commits it applied, in the order it first applied them.
    commit_order: BTreeMap<NodeId, Vec<TxnId>>,
    /// The commits any shard applied, in the order one first did.
    first_commit_order: Vec<TxnId>,
}

impl Reports {
    /// Indexes `events` (each with the node that reported it).
    pub fn new(events: &[(NodeId, TxnEvent)]) -> Self {
        let mut r = Reports::default();
        let mut first_applied = BTreeSet::new();
        for (node, event) in events {
            match event {
                TxnEvent::Voted { txn, yes } => {
                    r.votes.entry(*txn).or_default().entry(*node).or_default().insert(*yes);
                }
                // Only a shard that voted yes is bound by the decision; an
                // unprepared shard's own abort (conflict, timeout, restart)
                // is not a decision.
                TxnEvent::Applied {
                    txn,
                    decision,
                    prepared: true,
                } => {
                    r.applied
                        .entry(*txn)
                        .or_default()
                        .entry(*node)
                        .or_default()
                        .insert(*decision);
                    if *decision == Decision::Commit {
                        // A restarted shard reports what its log holds
                        // again; the first report is where it took its place.
                        let order = r.commit_order.entry(*node).or_default();
                        if !order.contains(txn) {
                            order.push(*txn);
                        }
                        if first_applied.insert(*txn) {
                            r.first_commit_order.push(*txn);
                        }
                    }
                }
                TxnEvent::Applied { prepared: false, .. }
                | TxnEvent::Snapshot { .. }
                | TxnEvent::Forgot { .. }
                | TxnEvent::Serving { .. } => {}
                TxnEvent::CommitUnprepared { txn } => r.unprepared.push((*node, *txn)),
                // A decision a coordinator found in its log counts as
                // announced: a crash may have cut off the announcement.
                TxnEvent::Announced {
                    txn,
                    decision,
                    participants,
                }
                | TxnEvent::Recovered {
                    txn,
                    decision,
                    participants,
                } => {
                    let entry = r.announced.entry(*txn).or_default();
                    entry.0.insert(*decision);
                    entry.1.extend(participants);
                }
            }
        }
        r
    }

    /// Whether any coordinator announced (or recovered) a commit of `txn`.
    pub fn committed(&self, txn: TxnId) -> bool {
        self.announced
            .get(&txn)
            .is_some_and(|(d, _)| d.contains(&Decision::Commit))
    }

    /// Whether some shard applied `txn` as committed (a commit takes
    /// effect there even if its announcement was never reported).
    pub fn applied_commit(&self, txn: TxnId) -> bool {
        self.applied
            .get(&txn)
            .is_some_and(|by| by.values().any(|d| d.contains(&Decision::Commit)))
    }

    /// Whether `shard`, having voted yes, applied `txn` as committed.
    pub fn applied_commit_at(&self, txn: TxnId, shard: NodeId) -> bool {
        self.applied
            .get(&txn)
            .and_then(|a| a.get(&shard))
            .is_some_and(|d| d.contains(&Decision::Commit))
    }

    /// The commits `shard` applied, in order.
    pub fn commit_order(&self, shard: NodeId) -> &[TxnId] {
        self.commit_order.get(&shard).map_or(&[], Vec::as_slice)
    }

    /// The commits any shard applied, in the order one first applied each.
    pub fn first_commit_order(&self) -> &[TxnId] {
        &self.first_commit_order
    }

    /// The shards every announcement (or recovered record) of `txn` named.
    pub fn participants(&self, txn: TxnId) -> BTreeSet<NodeId> {
        self.announced.get(&txn).map(|(_, p)| p.clone()).unwrap_or_default()
    }
}

/// `commit-without-yes-vote`: a transaction commits only if every
/// participant voted yes, durably. Participants are the ones any
/// announcement named, the shards that voted or applied, and `touched(txn)`
/// (the shards the history says it used); `cite(txn)` gives the history
/// events to cite.
pub fn commit_without_yes_vote(
    reports: &Reports,
    touched: impl Fn(TxnId) -> BTreeSet<NodeId>,
    cite: impl Fn(TxnId) -> Vec<usize>,
) -> Option<Violation> {
    if let Some(&(node, txn)) = reports.unprepared.first() {
        return Some(Violation::new(
            "commit-without-yes-vote",
            format!(
                "shard {node} was told to commit txn {txn:#x} but holds no prepare record for it: its yes vote was not durable"
            ),
            cite(txn),
        ));
    }
    for (&txn, (decisions, listed)) in &reports.announced {
        if !decisions.contains(&Decision::Commit) {
            continue;
        }
        let mut participants = listed.clone();
        participants.extend(touched(txn));
        participants.extend(reports.votes.get(&txn).into_iter().flat_map(|v| v.keys()));
        participants.extend(reports.applied.get(&txn).into_iter().flat_map(|v| v.keys()));
        let voted_yes = |shard| {
            reports
                .votes
                .get(&txn)
                .and_then(|v| v.get(&shard))
                .is_some_and(|v| v.contains(&true))
        };
        if let Some(shard) = participants.into_iter().find(|&s| !voted_yes(s)) {
            return Some(Violation::new(
                "commit-without-yes-vote",
                format!("txn {txn:#x} was committed, but participant {shard} never voted yes"),
                cite(txn),
            ));
        }
    }
    None
}

/// `decision-changed`: no transaction is announced both committed and
/// aborted, by any coordinator or incarnation.
pub fn decision_changed(reports: &Reports, cite: impl Fn(TxnId) -> Vec<usize>) -> Option<Violation> {
    let (txn, _) = reports.announced.iter().find(|(_, (d, _))| d.len() > 1)?;
    Some(Violation::new(
        "decision-changed",
        format!("the coordinator announced both commit and abort for txn {txn:#x}"),
        cite(*txn),
    ))
}

/// `atomicity` (TC-consistency): no transaction is applied as committed at
/// one shard and as aborted at another that had voted yes.
pub fn atomicity(reports: &Reports, cite: impl Fn(TxnId) -> Vec<usize>) -> Option<Violation> {
    reports.applied.iter().find_map(|(txn, by_node)| {
        let all: BTreeSet<Decision> = by_node.values().flatten().copied().collect();
        (all.len() > 1).then(|| {
            let detail = by_node
                .iter()
                .map(|(n, d)| format!("shard {n}: {d:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            Violation::new(
                "atomicity",
                format!("txn {txn:#x} was committed at one shard and aborted at another ({detail})"),
                cite(*txn),
            )
        })
    })
}
