//! What runs on top of the log: the [`StateMachine`] trait, the session
//! table that makes client commands exactly-once, and [`Kv`], a small
//! key-value machine used as the test subject.

use std::collections::BTreeMap;
use std::fmt::Debug;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::types::{ClientId, Index};
use crate::env::codec::{self, CodecError};
use crate::env::NodeId;

/// A snapshot that cannot become a state: it does not decode, or it breaks
/// a limit the replica keeps. A replica refuses it and keeps its own state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes are not an encoded snapshot of this machine.
    #[error("undecodable snapshot: {0}")]
    Decode(#[from] CodecError),
    /// The session table is larger than this replica's
    /// [`super::Config::max_sessions`], so installing it would break the
    /// bound every replica keeps.
    #[error("snapshot holds {sessions} client sessions, more than the {max} this replica keeps")]
    TooManySessions {
        /// Sessions in the snapshot.
        sessions: usize,
        /// This replica's limit.
        max: usize,
    },
    /// It decodes, but breaks an invariant of the state machine (the
    /// message names which); no command sequence produces such a state.
    #[error("invalid snapshot: {0}")]
    Invalid(&'static str),
}

/// A deterministic state machine replicated by the log.
///
/// Every replica applies the same commands in the same order, so `apply`
/// must be a pure function of the current state and the command: no clock,
/// no rng, no iteration over hash maps.
pub trait StateMachine: Default + Send + 'static {
    /// A state-changing operation, appended to the log.
    type Command: Clone + Debug + Serialize + DeserializeOwned + Send + 'static;
    /// A read-only operation, served by the leader through read-index.
    type Query: Clone + Debug + Serialize + DeserializeOwned + Send + 'static;
    /// The result of a command or query.
    type Output: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + 'static;

    /// Applies a committed command; every replica calls it with the same
    /// commands in the same order, once each.
    fn apply(&mut self, command: &Self::Command) -> Self::Output;
    /// Answers a read without changing the state; the leader calls it once
    /// the read-index round has confirmed it is still the leader.
    fn query(&self, query: &Self::Query) -> Self::Output;
    /// The whole state, for compaction and for catching up lagging replicas.
    /// A state too large for the codec is an error, not a panic: clients
    /// may grow a state past any fixed limit, and the replica then goes on
    /// without compacting.
    fn snapshot(&self) -> Result<Vec<u8>, CodecError>;
    /// Replaces the whole state by one produced by [`StateMachine::snapshot`].
    /// The bytes may come from a faulty peer: anything that is not such a
    /// snapshot is an error (and `self` is then left unchanged), never a
    /// panic.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError>;
}

/// The last command of one client session and its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Session<O> {
    seq: u64,
    output: O,
    /// Log index of that command: the least recently used session is the
    /// one evicted when the table is full (the same on every replica).
    index: Index,
}

/// A state machine with the client session table in front of it: the layer
/// where retried commands are deduplicated. Both are replicated and
/// snapshotted together, so deduplication survives crashes and leader
/// changes.
#[derive(Debug, Default)]
pub struct Replicated<S: StateMachine> {
    machine: S,
    sessions: BTreeMap<SessionKey, Session<S::Output>>,
    max_sessions: usize,
}

/// A client session of the table: the node that sent the command (its
/// transport identity, which the sender cannot choose on an authenticated
/// transport) and the client id it chose. Keying by both means no client
/// can name another's session, so none can make another's commands look
/// like stale retries or take its remembered answers.
pub type SessionKey = (NodeId, ClientId);

/// What the session table decided about a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied<O> {
    /// First time: applied, with this result.
    Fresh(O),
    /// A retry of the session's last command: not applied again; the
    /// remembered result.
    Duplicate(O),
    /// Older than the session's last command: the client has moved on and
    /// nobody waits for it. Not applied.
    Stale,
}

impl<S: StateMachine> Replicated<S> {
    /// An empty machine whose table remembers at most `max_sessions`
    /// clients (least recently used evicted).
    pub fn new(max_sessions: usize) -> Self {
        assert!(max_sessions > 0);
        Replicated {
            machine: S::default(),
            sessions: BTreeMap::new(),
            max_sessions,
        }
    }

    /// The service's state behind the session table, for queries and
    /// checkers.
    pub fn machine(&self) -> &S {
        &self.machine
    }

    /// The answer to `(session, seq)` if that command was already applied.
    pub fn lookup(&self, session: SessionKey, seq: u64) -> Option<Applied<S::Output>> {
        let session = self.sessions.get(&session)?;
        if seq == session.seq {
            Some(Applied::Duplicate(session.output.clone()))
        } else if seq < session.seq {
            Some(Applied::Stale)
        } else {
            None
        }
    }

    /// Applies the command at log index `index`, at most once per
    /// `(session, seq)`.
    pub fn apply(&mut self, index: Index, client: SessionKey, seq: u64, command: &S::Command) -> Applied<S::Output> {
        if let Some(seen) = self.lookup(client, seq) {
            if let Some(session) = self.sessions.get_mut(&client) {
                session.index = index;
            }
            return seen;
        }
        let output = self.machine.apply(command);
        self.sessions.insert(
            client,
            Session {
                seq,
                output: output.clone(),
                index,
            },
        );
        if self.sessions.len() > self.max_sessions {
            let (&oldest, _) = self
                .sessions
                .iter()
                .min_by_key(|(id, s)| (s.index, **id))
                .expect("table is not empty");
            self.sessions.remove(&oldest);
        }
        assert!(self.sessions.len() <= self.max_sessions);
        Applied::Fresh(output)
    }

    /// Reads the machine; queries bypass the session table, as retrying a
    /// read is harmless.
    pub fn query(&self, query: &S::Query) -> S::Output {
        self.machine.query(query)
    }

    /// Sessions and machine state, encoded together.
    pub fn snapshot(&self) -> Result<Vec<u8>, CodecError> {
        let sessions: Vec<(SessionKey, &Session<S::Output>)> = self.sessions.iter().map(|(k, v)| (*k, v)).collect();
        codec::encode_state(&(sessions, self.machine.snapshot()?))
    }

    /// The state a [`Replicated::snapshot`] encodes, keeping at most
    /// `max_sessions` sessions; a snapshot with more (which no replica with
    /// this limit writes) is refused.
    pub fn restored(max_sessions: usize, bytes: &[u8]) -> Result<Self, SnapshotError> {
        type Decoded<O> = (Vec<(SessionKey, Session<O>)>, Vec<u8>);
        let (sessions, state): Decoded<S::Output> = codec::decode_state(bytes)?;
        let sessions: BTreeMap<SessionKey, Session<S::Output>> = sessions.into_iter().collect();
        if sessions.len() > max_sessions {
            return Err(SnapshotError::TooManySessions {
                sessions: sessions.len(),
                max: max_sessions,
            });
        }
        let mut machine = S::default();
        machine.restore(&state)?;
        Ok(Replicated {
            machine,
            sessions,
            max_sessions,
        })
    }

    /// The session limit this table was built with.
    pub fn max_sessions(&self) -> usize {
        self.max_sessions
    }
}

/// A command of the [`Kv`] machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// Sets `key` to `value`.
    Put {
        /// The key set.
        key: String,
        /// Its new value.
        value: u64,
    },
    /// Adds `delta` (wrapping) to the key's value (absent = 0). Not
    /// idempotent, which is what makes exactly-once observable.
    Add {
        /// The key incremented.
        key: String,
        /// The amount added.
        delta: u64,
    },
    /// Sets `new` if the current value equals `expected`.
    Cas {
        /// The key compared and perhaps set.
        key: String,
        /// The value required; `None` requires the key to be absent.
        expected: Option<u64>,
        /// The value set when it matched.
        new: u64,
    },
}

/// A query of the [`Kv`] machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvQuery {
    /// The key's current value (`None` when absent).
    Get {
        /// The key read.
        key: String,
    },
}

/// A result of the [`Kv`] machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOutput {
    /// `Put` done.
    Ok,
    /// `Get` and `Add`: the value (after the add, for `Add`).
    Value(Option<u64>),
    /// `Cas`: whether it swapped, and the value it found.
    Cas {
        /// Whether the value matched and was replaced.
        ok: bool,
        /// The value found before (unchanged if `ok` is false).
        previous: Option<u64>,
    },
}

/// A replicated map from string keys to integers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kv {
    data: BTreeMap<String, u64>,
}

impl Kv {
    /// A key's value straight from this replica's state, bypassing the
    /// log: for tests and checkers, not a linearizable read.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.data.get(key).copied()
    }
}

impl StateMachine for Kv {
    type Command = KvCommand;
    type Query = KvQuery;
    type Output = KvOutput;

    fn apply(&mut self, command: &KvCommand) -> KvOutput {
        match command {
            KvCommand::Put { key, value } => {
                self.data.insert(key.clone(), *value);
                KvOutput::Ok
            }
            KvCommand::Add { key, delta } => {
                let v = self.data.entry(key.clone()).or_insert(0);
                *v = v.wrapping_add(*delta);
                KvOutput::Value(Some(*v))
            }
            KvCommand::Cas { key, expected, new } => {
                let previous = self.data.get(key).copied();
                let ok = previous == *expected;
                if ok {
                    self.data.insert(key.clone(), *new);
                }
                KvOutput::Cas { ok, previous }
            }
        }
    }

    fn query(&self, query: &KvQuery) -> KvOutput {
        match query {
            KvQuery::Get { key } => KvOutput::Value(self.get(key)),
        }
    }

    fn snapshot(&self) -> Result<Vec<u8>, CodecError> {
        let pairs: Vec<(&String, &u64)> = self.data.iter().collect();
        codec::encode_state(&pairs)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        let pairs: Vec<(String, u64)> = codec::decode_state(snapshot)?;
        self.data = pairs.into_iter().collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(key: &str) -> KvCommand {
        KvCommand::Add {
            key: key.into(),
            delta: 1,
        }
    }

    #[test]
    fn retries_are_applied_once() {
        let mut r = Replicated::<Kv>::new(16);
        assert_eq!(
            r.apply(1, (0, 7), 1, &add("x")),
            Applied::Fresh(KvOutput::Value(Some(1)))
        );
        assert_eq!(
            r.apply(2, (0, 7), 1, &add("x")),
            Applied::Duplicate(KvOutput::Value(Some(1)))
        );
        assert_eq!(
            r.apply(3, (0, 7), 2, &add("x")),
            Applied::Fresh(KvOutput::Value(Some(2)))
        );
        assert_eq!(r.apply(4, (0, 7), 1, &add("x")), Applied::Stale);
        assert_eq!(r.machine().get("x"), Some(2));
    }

    /// Two nodes that pick the same client id have two sessions: a rogue
    /// naming another's id with a huge sequence number cannot make that
    /// client's next command look like a stale retry.
    #[test]
    fn sessions_are_per_sending_node() {
        let mut r = Replicated::<Kv>::new(16);
        assert!(matches!(r.apply(1, (2, 7), u64::MAX, &add("x")), Applied::Fresh(_)));
        assert_eq!(
            r.apply(2, (1, 7), 1, &add("x")),
            Applied::Fresh(KvOutput::Value(Some(2)))
        );
        assert_eq!(r.lookup((1, 7), 1), Some(Applied::Duplicate(KvOutput::Value(Some(2)))));
    }

    #[test]
    fn snapshot_carries_sessions() {
        let mut r = Replicated::<Kv>::new(16);
        r.apply(1, (0, 7), 1, &add("x"));
        let mut s = Replicated::<Kv>::restored(16, &r.snapshot().unwrap()).unwrap();
        assert_eq!(s.machine().get("x"), Some(1));
        assert!(matches!(s.apply(2, (0, 7), 1, &add("x")), Applied::Duplicate(_)));
        assert_eq!(s.machine().get("x"), Some(1));
    }

    #[test]
    fn refuses_bad_snapshots() {
        assert!(matches!(
            Replicated::<Kv>::restored(16, &[0xff, 0xff]),
            Err(SnapshotError::Decode(_))
        ));
        let mut r = Replicated::<Kv>::new(4);
        for client in 0..4 {
            r.apply(client + 1, (0, client), 1, &add("x"));
        }
        assert!(matches!(
            Replicated::<Kv>::restored(3, &r.snapshot().unwrap()),
            Err(SnapshotError::TooManySessions { sessions: 4, max: 3 })
        ));
        assert!(Replicated::<Kv>::restored(4, &r.snapshot().unwrap()).is_ok());
    }

    #[test]
    fn evicts_least_recently_used_session() {
        let mut r = Replicated::<Kv>::new(2);
        r.apply(1, (0, 1), 1, &add("x"));
        r.apply(2, (0, 2), 1, &add("x"));
        r.apply(3, (0, 1), 2, &add("x"));
        r.apply(4, (0, 3), 1, &add("x"));
        assert!(r.lookup((0, 2), 1).is_none(), "client 2 was least recently used");
        assert!(r.lookup((0, 1), 2).is_some());
        assert!(r.lookup((0, 3), 1).is_some());
    }

    #[test]
    fn cas_and_put() {
        let mut kv = Kv::default();
        let cas = |expected, new| KvCommand::Cas {
            key: "k".into(),
            expected,
            new,
        };
        assert_eq!(
            kv.apply(&cas(Some(1), 2)),
            KvOutput::Cas {
                ok: false,
                previous: None
            }
        );
        assert_eq!(
            kv.apply(&cas(None, 2)),
            KvOutput::Cas {
                ok: true,
                previous: None
            }
        );
        assert_eq!(
            kv.apply(&KvCommand::Put {
                key: "k".into(),
                value: 5
            }),
            KvOutput::Ok
        );
        assert_eq!(kv.query(&KvQuery::Get { key: "k".into() }), KvOutput::Value(Some(5)));
    }
}
