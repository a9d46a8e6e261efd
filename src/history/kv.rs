//! The replicated log's key-value counters ([`crate::log::Kv`]) as a
//! linearizability model: the simulator's log scenarios record a
//! [`KvOp`] history and [`check`] judges it.

use serde::{Deserialize, Serialize};

use super::linearizability::{self, Model};
use super::{History, Violation};

/// A client operation as the history records it. Results are `None` on
/// invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum KvOp {
    /// Adds 1 to counter `key`; the result is the counter's new value.
    Add {
        /// The counter.
        key: u8,
        /// Its new value.
        result: Option<u64>,
    },
    /// Reads counter `key` (absent = 0).
    Get {
        /// The counter.
        key: u8,
        /// The value read.
        value: Option<u64>,
    },
}

/// `linearizable`: some order of the operations, consistent with real
/// time, gives every result. The search alone judges results: a cheap
/// pre-check (results within real-time bounds) would only speed up
/// histories that fail, and would make the search the catcher of nothing.
pub fn check(history: &History<KvOp>) -> Vec<Violation> {
    linearizability::check(&Counters, history).err().into_iter().collect()
}

/// The replicated counters as a linearizability model: `Add` returns the
/// new value, `Get` the current one.
pub struct Counters;

impl Model for Counters {
    type Op = KvOp;
    type Key = u8;
    type State = u64;

    fn key(&self, op: &KvOp) -> u8 {
        match op {
            KvOp::Add { key, .. } | KvOp::Get { key, .. } => *key,
        }
    }

    fn init(&self) -> u64 {
        0
    }

    fn step(&self, state: &u64, invoke: &KvOp, completion: Option<&KvOp>) -> Option<u64> {
        match (invoke, completion) {
            (KvOp::Add { .. }, None) => Some(state + 1),
            (KvOp::Add { .. }, Some(KvOp::Add { result: Some(r), .. })) => (*r == state + 1).then_some(state + 1),
            (KvOp::Get { .. }, None) => Some(*state),
            (KvOp::Get { .. }, Some(KvOp::Get { value: Some(v), .. })) => (v == state).then_some(*state),
            _ => None,
        }
    }

    fn is_read_only(&self, op: &KvOp) -> bool {
        matches!(op, KvOp::Get { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::EventKind::{self, Info, Invoke, Ok};

    fn history(events: &[(u32, EventKind, KvOp)]) -> History<KvOp> {
        History::in_order(events)
    }
    fn add(result: Option<u64>) -> KvOp {
        KvOp::Add { key: 0, result }
    }
    fn get(value: Option<u64>) -> KvOp {
        KvOp::Get { key: 0, value }
    }

    #[test]
    fn accepts_concurrent_and_unknown_adds() {
        let h = history(&[
            (0, Invoke, add(None)),
            (1, Invoke, add(None)),
            (1, Ok, add(Some(1))),
            (0, Info, add(None)),
            (1, Invoke, get(None)),
            (1, Ok, get(Some(2))),
        ]);
        assert!(linearizability::check(&Counters, &h).is_ok());
    }

    #[test]
    fn catches_a_duplicated_add_result() {
        let h = history(&[
            (0, Invoke, add(None)),
            (0, Ok, add(Some(1))),
            (1, Invoke, add(None)),
            (1, Ok, add(Some(1))),
        ]);
        assert_eq!(invariant(&h), "linearizable");
    }

    #[test]
    fn catches_a_stale_read() {
        let h = history(&[
            (0, Invoke, add(None)),
            (0, Ok, add(Some(1))),
            (1, Invoke, get(None)),
            (1, Ok, get(Some(0))),
        ]);
        assert_eq!(invariant(&h), "linearizable");
    }

    fn invariant(h: &History<KvOp>) -> String {
        linearizability::check(&Counters, h)
            .expect_err("not linearizable")
            .invariant
    }

    #[test]
    fn catches_a_read_from_the_future() {
        let h = history(&[(1, Invoke, get(None)), (1, Ok, get(Some(1))), (0, Invoke, add(None))]);
        assert_eq!(invariant(&h), "linearizable");
    }

    #[test]
    fn the_counter_model_rejects_an_impossible_read_and_accepts_an_unknown_add() {
        // One add completed and one is unknown: no order lets a read see 3.
        let h = history(&[
            (0, Invoke, add(None)),
            (0, Ok, add(Some(1))),
            (1, Invoke, KvOp::Get { key: 0, value: None }),
            (1, Ok, KvOp::Get { key: 0, value: Some(1) }),
            (0, Invoke, add(None)),
            (2, Invoke, KvOp::Get { key: 0, value: None }),
            (2, Ok, KvOp::Get { key: 0, value: Some(3) }),
            (0, Info, add(None)),
        ]);
        assert!(linearizability::check(&Counters, &h).is_err());
        let fine = history(&[
            (0, Invoke, add(None)),
            (1, Invoke, KvOp::Get { key: 0, value: None }),
            (1, Ok, KvOp::Get { key: 0, value: Some(1) }),
            (0, Info, add(None)),
        ]);
        assert!(linearizability::check(&Counters, &fine).is_ok());
    }
}
