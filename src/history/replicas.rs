//! A replicated log's safety, judged on the events its replicas report
//! ([`crate::log::Event`]) as they happen, so that a run can stop at the
//! first violation with the moment it happened in view. The simulator's log
//! scenarios feed every replica's events to one [`Replicas`]; a test or a
//! service can do the same with a [`crate::observe::Observer`].
//!
//! - `leader-per-term`: at most one leader per term;
//! - `apply-order`: a replica applies consecutive indices (after a restart
//!   it resumes from its snapshot, wherever that is);
//! - `committed-entry-changed`: every replica applies, restores or is sent
//!   the same entry at an index that some replica applied;
//! - `read-by-deposed-leader`: a leader never serves a read that arrived
//!   after a replica had become leader of a later term. Events are judged
//!   in the order they happen, so this needs no clock: the later leader
//!   holds votes of a majority, one of which would refuse the round that
//!   confirms the read, since that round is sent after the read arrived.
//!   A stale read is caught here even when no client could tell (no write
//!   came between), which a linearizability check of clients' histories
//!   cannot do.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{Excluded, Unbounded};

use super::Violation;
use crate::env::NodeId;
use crate::log::{Event, Index, Term};

/// What the replicas of one log have reported so far.
#[derive(Debug, Default)]
pub struct Replicas {
    leaders: BTreeMap<Term, NodeId>,
    /// Every index ever applied anywhere: its term and encoded payload.
    applied: BTreeMap<Index, (Term, Vec<u8>)>,
    /// Last index each replica applied since it booted (`None`: just
    /// booted, it resumes from its snapshot).
    last_applied: BTreeMap<NodeId, Option<Index>>,
    /// Confirmation rounds (replica, term, round) of reads that arrived
    /// after a later term had a leader: serving one is a stale read.
    deposed_reads: BTreeSet<(NodeId, Term, u64)>,
}

impl Replicas {
    /// `node` (re)started from its disk.
    pub fn booted(&mut self, node: NodeId) {
        self.last_applied.insert(node, None);
    }

    /// Judges one event `node` reported; the first invariant it breaks.
    pub fn observe(&mut self, node: NodeId, event: &Event) -> Result<(), Violation> {
        let broken = |invariant, detail| Err(Violation::new(invariant, detail, vec![]));
        match event {
            Event::Leader { term } => {
                if let Some(&other) = self.leaders.get(term).filter(|&&other| other != node) {
                    return broken(
                        "leader-per-term",
                        format!("nodes {other} and {node} both lead term {term}"),
                    );
                }
                self.leaders.insert(*term, node);
            }
            Event::Applied { index, term, payload } => {
                if let Some(Some(last)) = self
                    .last_applied
                    .get(&node)
                    .filter(|last| matches!(last, Some(l) if l + 1 != *index))
                {
                    return broken("apply-order", format!("node {node} applied {index} right after {last}"));
                }
                self.last_applied.insert(node, Some(*index));
                match self.applied.get(index) {
                    Some((t, p)) if t != term || p != payload => {
                        return broken(
                            "committed-entry-changed",
                            format!("index {index} was applied with term {t}, node {node} applied term {term}"),
                        )
                    }
                    Some(_) => {}
                    None => {
                        self.applied.insert(*index, (*term, payload.clone()));
                    }
                }
            }
            Event::Restored { index, term } => {
                if let Some((t, _)) = self.applied.get(index).filter(|(t, _)| t != term) {
                    return broken(
                        "committed-entry-changed",
                        format!(
                            "node {node} restored a snapshot ending at {index} with term {term}, applied with term {t}"
                        ),
                    );
                }
                self.last_applied.insert(node, Some(*index));
            }
            Event::Contradicted { from, index } => {
                return broken(
                    "committed-entry-changed",
                    format!("node {from} sent node {node} entries that contradict its committed entry {index}"),
                )
            }
            Event::ReadArrived { term, round } => {
                // Excluded, not `term + 1`: a term of `u64::MAX` is judged too.
                if self.leaders.range((Excluded(*term), Unbounded)).next().is_some() {
                    self.deposed_reads.insert((node, *term, *round));
                }
            }
            Event::ReadServed { term, round } => {
                if self.deposed_reads.contains(&(node, *term, *round)) {
                    let (later, leader) = self.last_leader().expect("a later term has a leader");
                    return broken(
                        "read-by-deposed-leader",
                        format!(
                            "node {node}, leader of term {term}, served a read (round {round}) that arrived after node {leader} led term {later}"
                        ),
                    );
                }
            }
            Event::Compacted { .. } | Event::Voted { .. } | Event::Proposed { .. } | Event::Committed { .. } => {}
        }
        Ok(())
    }

    /// The highest term some replica led.
    pub fn last_leader_term(&self) -> Option<Term> {
        self.last_leader().map(|(term, _)| term)
    }

    /// The leader of the highest term some replica led, with its term.
    pub fn last_leader(&self) -> Option<(Term, NodeId)> {
        self.leaders.last_key_value().map(|(&term, &node)| (term, node))
    }

    /// The highest index some replica applied.
    pub fn highest_applied(&self) -> Option<Index> {
        self.applied.last_key_value().map(|(&index, _)| index)
    }

    /// The replicas, among those `running`, that have not applied up to
    /// `index`, with the last index each applied.
    pub fn behind(&self, index: Index, running: impl Fn(NodeId) -> bool) -> Vec<(NodeId, Option<Index>)> {
        self.last_applied
            .iter()
            .filter(|&(&node, applied)| running(node) && applied.is_none_or(|a| a < index))
            .map(|(&node, &applied)| (node, applied))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(index: Index, term: Term, payload: &[u8]) -> Event {
        Event::Applied {
            index,
            term,
            payload: payload.to_vec(),
        }
    }

    fn invariant(result: Result<(), Violation>) -> String {
        result.expect_err("a violation").invariant
    }

    #[test]
    fn two_leaders_of_one_term_are_caught() {
        let mut r = Replicas::default();
        r.observe(1, &Event::Leader { term: 3 }).unwrap();
        r.observe(1, &Event::Leader { term: 3 }).unwrap();
        assert_eq!(invariant(r.observe(2, &Event::Leader { term: 3 })), "leader-per-term");
        assert_eq!(r.last_leader_term(), Some(3));
    }

    #[test]
    fn an_entry_applied_differently_or_out_of_order_is_caught() {
        let mut r = Replicas::default();
        r.booted(1);
        r.booted(2);
        r.observe(1, &applied(1, 1, b"a")).unwrap();
        r.observe(2, &applied(1, 1, b"a")).unwrap();
        assert_eq!(invariant(r.observe(2, &applied(3, 1, b"c"))), "apply-order");
        assert_eq!(
            invariant(
                r.observe(1, &applied(2, 1, b"b"))
                    .and_then(|()| r.observe(2, &applied(2, 2, b"b")))
            ),
            "committed-entry-changed"
        );
        let mut r = Replicas::default();
        r.observe(1, &applied(1, 1, b"a")).unwrap();
        assert_eq!(
            invariant(r.observe(2, &Event::Restored { index: 1, term: 2 })),
            "committed-entry-changed"
        );
        assert_eq!(
            invariant(r.observe(2, &Event::Contradicted { from: 1, index: 1 })),
            "committed-entry-changed"
        );
    }

    #[test]
    fn a_read_served_by_a_leader_deposed_before_it_arrived_is_caught() {
        let mut r = Replicas::default();
        r.observe(1, &Event::Leader { term: 1 }).unwrap();
        // Arrived while node 1 was the latest leader: served, even after a
        // later leader (the confirming round was acknowledged before it).
        r.observe(1, &Event::ReadArrived { term: 1, round: 4 }).unwrap();
        r.observe(2, &Event::Leader { term: 2 }).unwrap();
        r.observe(1, &Event::ReadServed { term: 1, round: 4 }).unwrap();
        // Arrived after term 2 had a leader: it may never be served.
        r.observe(1, &Event::ReadArrived { term: 1, round: 5 }).unwrap();
        r.observe(2, &Event::ReadArrived { term: 2, round: 1 }).unwrap();
        r.observe(2, &Event::ReadServed { term: 2, round: 1 }).unwrap();
        assert_eq!(
            invariant(r.observe(1, &Event::ReadServed { term: 1, round: 5 })),
            "read-by-deposed-leader"
        );
        // The last term there is (a forged or wrapped one) has no later.
        r.observe(3, &Event::Leader { term: Term::MAX }).unwrap();
        r.observe(
            3,
            &Event::ReadArrived {
                term: Term::MAX,
                round: 1,
            },
        )
        .unwrap();
        r.observe(
            3,
            &Event::ReadServed {
                term: Term::MAX,
                round: 1,
            },
        )
        .unwrap();
    }

    #[test]
    fn a_restarted_replica_resumes_anywhere_and_lagging_ones_are_named() {
        let mut r = Replicas::default();
        r.booted(1);
        r.booted(2);
        r.observe(1, &applied(5, 1, b"e")).unwrap();
        r.observe(1, &applied(6, 1, b"f")).unwrap();
        assert_eq!(r.highest_applied(), Some(6));
        assert_eq!(r.behind(6, |_| true), vec![(2, None)]);
        assert!(r.behind(6, |n| n != 2).is_empty());
        r.booted(1);
        r.observe(1, &applied(9, 1, b"i")).unwrap();
    }
}
