//! The replicated log's safety and catch-up, judged for every scenario
//! whose servers run it: each replica's observer forwards its
//! [`Event`]s to one shared [`Judge`], which stops the run at the first
//! violation [`Replicas`] finds ([`abort_run`]), and the scenario's probe
//! asks it at the end whether every running replica caught up.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use ringfence::env::{timeout, Env, NodeId};
use ringfence::history::replicas::Replicas;
use ringfence::history::Violation;
use ringfence::log::{Event, Index, Term};
use ringfence::observe::Observer;

use crate::env::SimEnv;
use crate::scenario::abort_run;

/// How long, after the probe's own operations, every running replica has
/// to apply everything applied anywhere: a few heartbeats and one snapshot.
const CATCH_UP_BOUND: Duration = Duration::from_secs(2);

/// What the replicas of one log reported; see the module docs.
#[derive(Default)]
pub struct Judge {
    state: Mutex<Observed>,
}

#[derive(Default)]
struct Observed {
    replicas: Replicas,
    /// Replicas that stopped on purpose (a corrupt disk, a failed write).
    stopped: BTreeSet<NodeId>,
}

impl Judge {
    /// `node`'s replica (re)started from its disk.
    pub fn booted(&self, node: NodeId) {
        let mut s = self.lock();
        s.replicas.booted(node);
        s.stopped.remove(&node);
    }

    /// `node`'s replica stopped to protect what it acknowledged; it is not
    /// expected to catch up until it boots again.
    pub fn stopped(&self, node: NodeId) {
        self.lock().stopped.insert(node);
    }

    /// The highest term some replica led.
    pub fn last_leader_term(&self) -> Option<Term> {
        self.lock().replicas.last_leader_term()
    }

    /// The leader of the highest term some replica led, with its term.
    pub fn last_leader(&self) -> Option<(Term, NodeId)> {
        self.lock().replicas.last_leader()
    }

    /// `replica-behind`: within [`CATCH_UP_BOUND`], every running replica
    /// (of `members`, when the group's membership changed) applies up to
    /// the highest index applied anywhere now. A majority serving is not
    /// enough: a replica that never catches up is one failure from
    /// unavailability.
    pub async fn all_caught_up(&self, env: &SimEnv, members: Option<BTreeSet<NodeId>>) {
        let target = self.lock().replicas.highest_applied().unwrap_or(0);
        let members = &members;
        let caught_up = timeout(env, CATCH_UP_BOUND, async {
            while !self.behind(target, members).is_empty() {
                env.sleep(Duration::from_millis(10)).await;
            }
        });
        if caught_up.await.is_none() {
            abort_run(Violation::new(
                "replica-behind",
                format!(
                    "after the heal, replicas (id, last applied) {:?} did not apply up to index {target} within {CATCH_UP_BOUND:?}",
                    self.behind(target, members)
                ),
                vec![],
            ));
        }
    }

    /// Running replicas (of `members`, if given) that have not applied up
    /// to `index`.
    fn behind(&self, index: Index, members: &Option<BTreeSet<NodeId>>) -> Vec<(NodeId, Option<Index>)> {
        let s = self.lock();
        let counted = |node| members.as_ref().is_none_or(|m| m.contains(&node));
        s.replicas
            .behind(index, |node| !s.stopped.contains(&node) && counted(node))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Observer<Event> for Judge {
    fn observe(&self, node: NodeId, _now: Duration, event: &Event) {
        if let Err(violation) = self.lock().replicas.observe(node, event) {
            abort_run(violation);
        }
    }
}
