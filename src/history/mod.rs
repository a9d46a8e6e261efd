//! Operation histories and the vocabulary of invariant violations.
//!
//! Workloads record, per client, when each operation was invoked and how it
//! ended. Checkers judge histories, never protocol internals, so the same
//! checker judges a simulated run and a real loopback run.

pub mod bank;
pub mod commit;
pub mod counter;
pub mod isolation;
pub mod kv;
pub mod linearizability;
pub mod lock;
pub mod owners;
pub mod replicas;

use std::fmt;

use serde::{Deserialize, Serialize};

/// How an operation event ended (or that it began).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The client sent the request.
    Invoke,
    /// The operation took effect, and the client knows it.
    Ok,
    /// The operation certainly did not take effect.
    Fail,
    /// Unknown outcome (timeout, lost reply): it may or may not have happened.
    Info,
}

/// One entry of a history. `op` carries the operation's arguments on
/// `Invoke` and its result on completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event<Op> {
    /// Position in the history, unique.
    pub index: usize,
    /// The client (process) that performed the operation.
    pub client: u32,
    /// Real (simulated) time in nanoseconds since the run began.
    pub time_ns: u64,
    /// Whether this opens an operation or how it ended; pairs with the same
    /// client's previous `Invoke`.
    pub kind: EventKind,
    /// Arguments on `Invoke`, the observed result on `Ok`/`Fail`/`Info`.
    pub op: Op,
}

/// An ordered record of client operations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct History<Op> {
    events: Vec<Event<Op>>,
}

impl<Op> Default for History<Op> {
    fn default() -> Self {
        History { events: Vec::new() }
    }
}

#[cfg(test)]
impl<Op: Clone> History<Op> {
    /// A history of `(client, kind, op)` events whose time is their
    /// position, for checker tests.
    pub(crate) fn in_order(events: &[(u32, EventKind, Op)]) -> Self {
        let mut h = History::default();
        for (t, (client, kind, op)) in events.iter().enumerate() {
            h.push(*client, t as u64, *kind, op.clone());
        }
        h
    }
}

impl<Op> History<Op> {
    /// Appends an event and returns its index.
    pub fn push(&mut self, client: u32, time_ns: u64, kind: EventKind, op: Op) -> usize {
        let index = self.events.len();
        if let Some(last) = self.events.last() {
            assert!(last.time_ns <= time_ns, "history events must be recorded in time order");
        }
        self.events.push(Event {
            index,
            client,
            time_ns,
            kind,
            op,
        });
        index
    }

    /// The raw events in recording (time) order, for checkers that need
    /// more than the invoke/completion pairs of [`History::operations`].
    pub fn events(&self) -> &[Event<Op>] {
        &self.events
    }

    /// Number of events (invocations and completions counted separately).
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when nothing was recorded, e.g. a run that never reached its
    /// workload.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Operations pairs: each invocation with its completion, if any.
    pub fn operations(&self) -> Vec<(&Event<Op>, Option<&Event<Op>>)> {
        let mut open: std::collections::BTreeMap<u32, usize> = Default::default();
        let mut pairs: Vec<(&Event<Op>, Option<&Event<Op>>)> = Vec::new();
        for event in &self.events {
            if event.kind == EventKind::Invoke {
                assert!(
                    !open.contains_key(&event.client),
                    "client {} invoked twice without completing",
                    event.client
                );
                open.insert(event.client, pairs.len());
                pairs.push((event, None));
            } else {
                let slot = open.remove(&event.client).expect("completion without invocation");
                pairs[slot].1 = Some(event);
            }
        }
        pairs
    }
}

/// A broken invariant: which one, what happened, and the events involved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Stable name of the invariant, e.g. `acked-write-lost`.
    pub invariant: String,
    /// One or two sentences a person can act on.
    pub detail: String,
    /// History indices of the events that show it.
    pub events: Vec<usize>,
}

impl Violation {
    /// Builds a violation from the invariant's stable name, a readable
    /// explanation and the history indices that show it.
    pub fn new(invariant: impl Into<String>, detail: impl Into<String>, events: Vec<usize>) -> Self {
        Violation {
            invariant: invariant.into(),
            detail: detail.into(),
            events,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)?;
        if !self.events.is_empty() {
            write!(f, " (events {:?})", self.events)?;
        }
        Ok(())
    }
}
