//! The participant: a shard holding key-value data, as a sans-io core.
//!
//! Concurrency control is strict two-phase locking with **no-wait** deadlock
//! avoidance: a request that would wait for a conflicting lock aborts its
//! own transaction at once ([`AbortReason::LockConflict`] names the key and
//! the holder). Reads take shared locks, writes exclusive ones (a sole
//! reader upgrades), writes are buffered per transaction, and every lock is
//! held until the decision.
//!
//! Voting: yes only for a transaction that is active here in this
//! incarnation (`epoch`), after its prepare record — buffered writes and
//! held locks — is appended **and synced**. A shard that restarted lost its
//! unprepared transactions and votes no for them; the epoch the client
//! echoes back in every request makes that detectable.
//!
//! After voting yes the shard never decides alone. It waits for the
//! coordinator's decision, and every `query_every` asks the coordinator (every
//! replica of a replicated one) and the other participants (cooperative termination): a peer that knows the
//! decision answers it; a peer that has not voted yet aborts and answers
//! abort (it may, having not voted yes); a prepared peer is as uncertain as
//! the asker. Recovery rebuilds committed data, re-acquires the locks of
//! prepared transactions and resumes asking.

mod moves;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use moves::{AccountMove, AccountPage, AccountPart, MoveAnswer, MAX_MOVE_BYTES};

use super::{
    AbortReason, CoordMsg, Decision, Key, Knowledge, Msg, Output, ReplyMsg, ShardMsg, TxnBug, TxnEvent, TxnId, Value,
    Writes,
};
use crate::env::{codec, NodeId};
use crate::shard::{GroupId, Ownership, RangeSet};

/// What a participant writes to its log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// One per incarnation: the epoch is the number of boots so far.
    Boot {
        /// This incarnation's epoch; requests carrying another are from
        /// transactions that died with an earlier one.
        epoch: u64,
    },
    /// Synced before voting yes: enough to finish the transaction either way
    /// after a crash.
    Prepared {
        /// The transaction voted yes for.
        txn: TxnId,
        /// Whom to ask for the decision after a crash.
        coordinators: Vec<NodeId>,
        /// The other shards of the transaction, asked too (cooperative
        /// termination).
        participants: Vec<NodeId>,
        /// Its buffered writes here, installed if it commits.
        writes: Writes,
        /// Locks held: key and whether exclusive.
        locks: Vec<(Key, bool)>,
    },
    /// The decision, applied. Synced before acknowledging a commit.
    Decided {
        /// The prepared transaction decided.
        txn: TxnId,
        /// How it ended: a commit installs the prepared writes on replay.
        decision: Decision,
    },
    /// A step of moving accounts ([`AccountMove`], never `Part`), as
    /// applied: an install lists only what it added. Synced before
    /// answered.
    Moved(AccountMove),
}

/// How long a prepared transaction waits before the planted bug
/// [`TxnBug::AbortAlone`] aborts it alone.
pub const ABORT_ALONE_AFTER: Duration = Duration::from_millis(300);

/// Who a shard listens to and how long it waits.
#[derive(Debug, Clone)]
pub struct ParticipantConfig {
    /// The coordinator's node ids (every replica of a replicated one): the
    /// only senders whose prepares and decisions this shard accepts.
    pub coordinators: Vec<NodeId>,
    /// An active (unprepared) transaction idle this long is aborted here,
    /// releasing its locks (the client vanished, or its abort was lost).
    pub active_timeout: Duration,
    /// A prepared transaction asks the coordinator and its peers this often.
    pub query_every: Duration,
    /// The shard joins a bank whose accounts move: it serves no account
    /// until an operator's [`AccountMove::Assign`], so it never serves one as
    /// an unsharded shard would (every account) and nothing written to it
    /// before can make the assignment refuse it. Only the shard that
    /// founds the bank runs without it.
    pub joining: bool,
    /// A planted bug (the shard's variants of [`TxnBug`]); `None`, the
    /// correct protocol, by default.
    pub bug: Option<TxnBug>,
}

impl Default for ParticipantConfig {
    fn default() -> Self {
        ParticipantConfig {
            coordinators: Vec::new(),
            active_timeout: Duration::from_millis(1_000),
            query_every: Duration::from_millis(200),
            joining: false,
            bug: None,
        }
    }
}

/// The most bytes of keys and values one transaction may hold at one shard,
/// counted as its prepare record stores them (each locked key, each
/// written key and value): a quarter of the codec's limit, so the record
/// always encodes, with room for its participant lists.
pub const MAX_TXN_BYTES: usize = crate::env::MAX_MESSAGE_BYTES / 4;

#[derive(Debug, Clone)]
struct Lock {
    exclusive: bool,
    holders: BTreeSet<TxnId>,
}

#[derive(Debug, Clone)]
enum Phase {
    Active {
        /// The node whose first operation began it here: only its client
        /// may add to it or abort it.
        client: NodeId,
        last: Duration,
    },
    Prepared {
        coordinators: Vec<NodeId>,
        participants: Vec<NodeId>,
        since: Duration,
        next_query: Duration,
    },
}

#[derive(Debug, Clone)]
struct Txn {
    phase: Phase,
    writes: Writes,
    /// Keys this transaction holds a lock on here.
    locked: BTreeSet<Key>,
    /// Bytes its prepare record would store ([`stored_bytes`]), kept as it
    /// grows so each operation checks [`MAX_TXN_BYTES`] in constant time.
    bytes: usize,
}

/// Bytes of keys and values a prepare record stores: each locked key, each
/// written key and value.
fn stored_bytes(locked: &BTreeSet<Key>, writes: &Writes) -> usize {
    locked.iter().map(String::len).sum::<usize>() + writes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

/// The participant's log holds a record it cannot make sense of.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// A record's bytes are not a [`Record`].
    #[error("undecodable participant record {position}: {error}")]
    Decode {
        /// Which record, counted from the first.
        position: usize,
        /// What the decoder objected to.
        error: codec::CodecError,
    },
    /// A record decodes but cannot be replayed (e.g. a boot epoch with no
    /// successor).
    #[error("participant record {position}: {reason}")]
    Invalid {
        /// Which record, counted from the first.
        position: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A shard's protocol state. Rebuilt from the log by [`Participant::recover`].
#[derive(Debug)]
pub struct Participant {
    id: NodeId,
    epoch: u64,
    config: ParticipantConfig,
    data: BTreeMap<Key, Value>,
    locks: BTreeMap<Key, Lock>,
    txns: BTreeMap<TxnId, Txn>,
    /// Decisions applied (or, for unprepared transactions, taken) here.
    done: BTreeMap<TxnId, Decision>,
    /// Which account keys this shard serves (all, unless sharded by moves).
    ownership: Ownership,
    /// Ranges fenced for a move `(epoch, target)` and not dropped yet.
    outbox: BTreeMap<(u64, GroupId), RangeSet>,
}

impl Participant {
    /// Rebuilds the shard from its log. The returned effects (a new boot
    /// record, synced, then queries for every prepared transaction) must be
    /// carried out before the shard serves anything.
    pub fn recover(
        id: NodeId,
        log: &[Vec<u8>],
        now: Duration,
        config: ParticipantConfig,
    ) -> Result<(Self, Output), RecoverError> {
        let mut p = Participant {
            id,
            epoch: 1,
            config,
            data: BTreeMap::new(),
            locks: BTreeMap::new(),
            txns: BTreeMap::new(),
            done: BTreeMap::new(),
            ownership: Ownership::default(),
            outbox: BTreeMap::new(),
        };
        let mut recovered = Vec::new();
        let mut replayed = Output::default();
        for (position, bytes) in log.iter().enumerate() {
            let record: Record = codec::decode(bytes).map_err(|error| RecoverError::Decode { position, error })?;
            match record {
                Record::Boot { epoch } => {
                    let next = epoch.checked_add(1).ok_or(RecoverError::Invalid {
                        position,
                        reason: "a boot epoch that cannot be incremented",
                    })?;
                    p.epoch = p.epoch.max(next);
                }
                Record::Prepared {
                    txn,
                    coordinators,
                    participants,
                    writes,
                    locks,
                } => {
                    if p.done.contains_key(&txn) {
                        continue;
                    }
                    let mut locked = BTreeSet::new();
                    for (key, exclusive) in locks {
                        let lock = p.locks.entry(key.clone()).or_insert(Lock {
                            exclusive,
                            holders: BTreeSet::new(),
                        });
                        // Prepared transactions never conflict: a later one
                        // could only prepare after this one's decision. A
                        // log that says otherwise is not this shard's.
                        let others = lock.holders.iter().any(|&h| h != txn);
                        if others && (lock.exclusive || exclusive) {
                            return Err(RecoverError::Invalid {
                                position,
                                reason: "two undecided prepared transactions hold conflicting locks",
                            });
                        }
                        lock.holders.insert(txn);
                        locked.insert(key);
                    }
                    p.txns.insert(
                        txn,
                        Txn {
                            phase: Phase::Prepared {
                                coordinators,
                                participants,
                                since: now,
                                next_query: now,
                            },
                            bytes: stored_bytes(&locked, &writes),
                            writes,
                            locked,
                        },
                    );
                }
                Record::Decided { txn, decision } => {
                    let prepared = p.txns.remove(&txn).inspect(|t| {
                        if decision == Decision::Commit {
                            p.data.extend(t.writes.clone());
                        }
                        p.release(txn, t);
                    });
                    p.done.insert(txn, decision);
                    // What the disk holds is what was applied, reported
                    // again: a crash between the decision's sync and its
                    // report leaves it known only to this incarnation.
                    recovered.push(TxnEvent::Applied {
                        txn,
                        decision,
                        prepared: prepared.is_some(),
                    });
                }
                Record::Moved(step) => {
                    // Steps replay in log order between the decisions they
                    // came between, so a fence sees the prepared
                    // transactions it saw then (the active ones died with
                    // the last incarnation).
                    // (No transaction is active in a rebuilt shard, so the
                    // replay aborts none.)
                    if let (MoveAnswer::Refused(_), _) = p.apply_move(step, &mut replayed) {
                        return Err(RecoverError::Invalid {
                            position,
                            reason: "a move step that does not apply",
                        });
                    }
                }
            }
        }
        debug_assert!(replayed.is_empty(), "a replay aborted work: {replayed:?}");
        let mut out = Output::default();
        out.record(&Record::Boot { epoch: p.epoch });
        out.sync();
        if !p.ownership.is_unsharded() {
            out.event(p.serving());
        }
        out.events.extend(recovered);
        out.extend(p.tick(now));
        p.checked();
        Ok((p, out))
    }

    /// Whether `from` may tell this shard how `txn` ended: a coordinator,
    /// or a peer this shard asked (one listed in its prepare).
    fn may_decide(&self, from: NodeId, txn: TxnId) -> bool {
        self.config.bug == Some(TxnBug::DecideFromAnyone)
            || self.config.coordinators.contains(&from)
            || matches!(
                self.txns.get(&txn).map(|t| &t.phase),
                Some(Phase::Prepared { coordinators, participants, .. })
                    if coordinators.contains(&from) || participants.contains(&from)
            )
    }

    fn refuse(&self, from: NodeId, txn: TxnId, what: &'static str) {
        tracing::warn!(
            shard = self.id,
            from,
            txn,
            "refusing {what} from a node that may not send it"
        );
    }

    /// This incarnation's epoch (echoed by clients in every request).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The committed value of `key`.
    pub fn committed(&self, key: &str) -> Option<&Value> {
        self.data.get(key)
    }

    /// Asserts the shard's own invariants (the shells run it after every
    /// handler when the `core-checks` feature is on, as the simulator and
    /// the tests build it): locks and transactions agree both ways, an
    /// exclusive lock has one holder, every buffered write sits under its
    /// transaction's exclusive lock, no decided transaction is still
    /// active or prepared, and each transaction's byte count is the one
    /// its prepare record would store, under the limit.
    pub fn check(&self) {
        for (key, lock) in &self.locks {
            assert!(
                !lock.holders.is_empty(),
                "shard {}: lock on {key:?} held by no one",
                self.id
            );
            assert!(
                !lock.exclusive || lock.holders.len() == 1 || self.config.bug == Some(TxnBug::BlindWriteIgnoresReaders),
                "shard {}: exclusive lock on {key:?} has holders {:?}",
                self.id,
                lock.holders
            );
            for holder in &lock.holders {
                let holds = self.txns.get(holder).is_some_and(|t| t.locked.contains(key));
                assert!(
                    holds,
                    "shard {}: lock on {key:?} held by {holder}, which does not hold it",
                    self.id
                );
            }
        }
        for (txn, t) in &self.txns {
            assert!(
                !self.done.contains_key(txn),
                "shard {}: decided {txn} is still {:?}",
                self.id,
                t.phase
            );
            for key in &t.locked {
                let held = self.locks.get(key).is_some_and(|l| l.holders.contains(txn));
                assert!(
                    held,
                    "shard {}: {txn} lists {key:?} as locked, the lock table does not",
                    self.id
                );
            }
            for key in t.writes.keys() {
                let exclusive = self
                    .locks
                    .get(key)
                    .is_some_and(|l| l.exclusive && l.holders.contains(txn));
                assert!(
                    exclusive,
                    "shard {}: {txn} writes {key:?} without its exclusive lock",
                    self.id
                );
            }
            assert_eq!(
                t.bytes,
                stored_bytes(&t.locked, &t.writes),
                "shard {}: {txn}'s byte count",
                self.id
            );
            assert!(
                t.bytes <= MAX_TXN_BYTES,
                "shard {}: {txn} holds {} bytes",
                self.id,
                t.bytes
            );
            if matches!(t.phase, Phase::Active { .. }) {
                for key in &t.locked {
                    assert!(
                        self.not_served(key).is_none(),
                        "shard {}: active {txn} holds {key:?}, which it does not serve",
                        self.id
                    );
                }
            }
        }
        self.check_moves();
    }

    /// Transactions prepared here and not yet decided.
    pub fn prepared(&self) -> Vec<TxnId> {
        self.txns
            .iter()
            .filter(|(_, t)| matches!(t.phase, Phase::Prepared { .. }))
            .map(|(id, _)| *id)
            .collect()
    }

    /// How `txn` ended here, if it did.
    pub fn decision(&self, txn: TxnId) -> Option<Decision> {
        self.done.get(&txn).copied()
    }

    /// A message from anyone: prepares and decisions only count from the
    /// configured coordinators (and answers to this shard's queries from
    /// the peers it asked); anything else is refused.
    pub fn on_message(&mut self, now: Duration, from: NodeId, msg: ShardMsg) -> Output {
        let mut out = Output::default();
        self.handle(now, from, msg, &mut out);
        self.checked();
        out
    }

    fn handle(&mut self, now: Duration, from: NodeId, msg: ShardMsg, out: &mut Output) {
        match msg {
            ShardMsg::Prepare { txn, .. } | ShardMsg::Decide { txn, .. }
                if self.config.bug != Some(TxnBug::DecideFromAnyone) && !self.config.coordinators.contains(&from) =>
            {
                self.refuse(from, txn, "a prepare or decision")
            }
            ShardMsg::Known {
                txn,
                knowledge: Knowledge::Decided(_),
            } if !self.may_decide(from, txn) => self.refuse(from, txn, "a decision"),
            ShardMsg::Get {
                txn,
                request,
                key,
                epoch,
            } => self.on_op(now, from, txn, request, epoch, key, None, out),
            ShardMsg::Put {
                txn,
                request,
                key,
                value,
                epoch,
            } => self.on_op(now, from, txn, request, epoch, key, Some(value), out),
            ShardMsg::Abort { txn } => match self.txns.get(&txn) {
                Some(Txn {
                    phase: Phase::Active { client, .. },
                    ..
                }) if *client != from => self.refuse(from, txn, "an abort of another client's transaction"),
                Some(Txn {
                    phase: Phase::Active { .. },
                    ..
                }) => self.abort_active(txn, out),
                // Only the coordinator decides a prepared transaction.
                _ => {}
            },
            ShardMsg::Prepare {
                txn,
                client,
                epoch,
                participants,
                coordinators,
            } => self.on_prepare(now, from, txn, client, epoch, (participants, coordinators), out),
            ShardMsg::Decide { txn, decision } => {
                self.apply(txn, decision, out);
                out.send(from, CoordMsg::Ack { txn });
            }
            ShardMsg::Query { txn } => self.on_query(txn, from, out),
            ShardMsg::Move { client, request, step } => self.on_move(from, (client, request), step, out),
            ShardMsg::Known {
                txn,
                knowledge: Knowledge::Decided(decision),
            } => self.apply(txn, decision, out),
            ShardMsg::Known {
                knowledge: Knowledge::Uncertain,
                ..
            } => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_op(
        &mut self,
        now: Duration,
        from: NodeId,
        txn: TxnId,
        request: u64,
        epoch: Option<u64>,
        key: Key,
        put: Option<Value>,
        out: &mut Output,
    ) {
        let reply = |out: &mut Output, epoch, result| {
            out.send(
                from,
                Msg::Reply(ReplyMsg::OpReply {
                    txn,
                    request,
                    epoch,
                    result,
                }),
            )
        };
        if self.done.contains_key(&txn) {
            return reply(out, self.epoch, Err(AbortReason::NotActive));
        }
        match self.txns.get(&txn) {
            Some(Txn {
                phase: Phase::Prepared { .. },
                ..
            }) => return reply(out, self.epoch, Err(AbortReason::NotActive)),
            // Another node's transaction: not one this sender may touch.
            Some(Txn {
                phase: Phase::Active { client, .. },
                ..
            }) if *client != from => return reply(out, self.epoch, Err(AbortReason::NotActive)),
            // Moved (or moving) to another shard. The transaction's other
            // work here is void too: the client starts it again where the
            // ring now says.
            _ if self.not_served(&key).is_some() => {
                let refusal = self.not_served(&key).expect("guarded");
                if self.txns.contains_key(&txn) {
                    self.abort_active(txn, out);
                }
                return reply(out, self.epoch, Err(refusal));
            }
            Some(_) => {}
            None if epoch.is_some_and(|e| e != self.epoch) => {
                // The client began here in an earlier incarnation: its locks
                // and writes died with it.
                return reply(out, self.epoch, Err(AbortReason::ShardLostTxn { shard: self.id }));
            }
            None => {
                self.txns.insert(
                    txn,
                    Txn {
                        phase: Phase::Active {
                            client: from,
                            last: now,
                        },
                        writes: Writes::new(),
                        locked: BTreeSet::new(),
                        bytes: 0,
                    },
                );
            }
        }
        let t = &self.txns[&txn];
        let locks = if t.locked.contains(&key) { 0 } else { key.len() };
        let writes = put.as_ref().map_or(0, |v| key.len() + v.len());
        let replaced = put
            .as_ref()
            .and(t.writes.get(&key))
            .map_or(0, |old| key.len() + old.len());
        let bytes = t.bytes + locks + writes - replaced;
        if bytes > MAX_TXN_BYTES {
            self.abort_active(txn, out);
            return reply(out, self.epoch, Err(AbortReason::TooLarge { limit: MAX_TXN_BYTES }));
        }
        if let Err(holder) = self.acquire(txn, &key, put.is_some()) {
            self.abort_active(txn, out);
            return reply(out, self.epoch, Err(AbortReason::LockConflict { key, holder }));
        }
        let t = self.txns.get_mut(&txn).expect("active above");
        t.phase = Phase::Active {
            client: from,
            last: now,
        };
        t.bytes = bytes;
        t.locked.insert(key.clone());
        let result = match put {
            Some(value) => {
                t.writes.insert(key, value);
                None
            }
            None => t.writes.get(&key).or_else(|| self.data.get(&key)).cloned(),
        };
        reply(out, self.epoch, Ok(result))
    }

    #[allow(clippy::too_many_arguments)]
    fn on_prepare(
        &mut self,
        now: Duration,
        from: NodeId,
        txn: TxnId,
        client: NodeId,
        epoch: u64,
        (participants, coordinators): (Vec<NodeId>, Vec<NodeId>),
        out: &mut Output,
    ) {
        // Every vote sent is reported, repeats too: after a crash between
        // the prepare record's sync and the vote, the repeat is the only one.
        let vote = |out: &mut Output, yes| {
            out.event(TxnEvent::Voted { txn, yes });
            out.send(from, CoordMsg::Vote { txn, yes });
        };
        if let Some(&d) = self.done.get(&txn) {
            return vote(out, d == Decision::Commit);
        }
        let Some(t) = self.txns.get_mut(&txn) else {
            // Unknown here: lost in a crash (or never reached us). Never yes.
            self.done.insert(txn, Decision::Abort);
            return vote(out, false);
        };
        match t.phase {
            Phase::Prepared { .. } => vote(out, true),
            // Work of an earlier incarnation, or a commit asked for by
            // someone other than the client whose work this is.
            Phase::Active { client: owner, .. } if epoch != self.epoch || owner != client => {
                self.abort_active(txn, out);
                vote(out, false);
            }
            Phase::Active { .. } => {
                t.phase = Phase::Prepared {
                    coordinators: coordinators.clone(),
                    participants: participants.clone(),
                    since: now,
                    next_query: now + self.config.query_every,
                };
                let locks = t
                    .locked
                    .iter()
                    .map(|k| (k.clone(), self.locks.get(k).is_some_and(|l| l.exclusive)))
                    .collect();
                out.record(&Record::Prepared {
                    txn,
                    coordinators,
                    participants,
                    writes: t.writes.clone(),
                    locks,
                });
                if self.config.bug != Some(TxnBug::VoteWithoutSync) {
                    out.sync();
                }
                vote(out, true);
            }
        }
    }

    fn on_query(&mut self, txn: TxnId, from: NodeId, out: &mut Output) {
        let known = |out: &mut Output, knowledge| out.send(from, ShardMsg::Known { txn, knowledge });
        if let Some(&d) = self.done.get(&txn) {
            return known(out, Knowledge::Decided(d));
        }
        match self.txns.get(&txn).map(|t| &t.phase) {
            Some(Phase::Prepared { .. }) => known(out, Knowledge::Uncertain),
            Some(Phase::Active { .. }) => {
                // Not voted yet, so we may abort — and then the asker may too.
                self.abort_active(txn, out);
                known(out, Knowledge::Decided(Decision::Abort));
            }
            None => {
                // Never prepared here (a prepare is durable), so never a yes.
                self.done.insert(txn, Decision::Abort);
                known(out, Knowledge::Decided(Decision::Abort));
            }
        }
    }

    /// Applies a decision learned from the coordinator or a peer.
    fn apply(&mut self, txn: TxnId, decision: Decision, out: &mut Output) {
        if self.done.contains_key(&txn) {
            return;
        }
        let Some(t) = self.txns.remove(&txn) else {
            self.done.insert(txn, decision);
            if decision == Decision::Commit {
                out.event(TxnEvent::CommitUnprepared { txn });
            }
            return;
        };
        self.release(txn, &t);
        self.done.insert(txn, decision);
        match (&t.phase, decision) {
            (Phase::Active { .. }, Decision::Commit) => out.event(TxnEvent::CommitUnprepared { txn }),
            (Phase::Active { .. }, Decision::Abort) => out.event(TxnEvent::Applied {
                txn,
                decision,
                prepared: false,
            }),
            (Phase::Prepared { .. }, _) => {
                if decision == Decision::Commit {
                    self.data.extend(t.writes);
                }
                // Durable before the ack, an abort too: the ack lets the
                // coordinator stop re-sending and, replicated, forget the
                // transaction; a shard that lost an acknowledged abort in
                // a crash would be prepared again, asking a coordinator
                // that no longer answers, its locks held for good
                // (txn-replicated seed 547).
                out.record(&Record::Decided { txn, decision });
                out.sync();
                out.event(TxnEvent::Applied {
                    txn,
                    decision,
                    prepared: true,
                });
            }
        }
    }

    fn abort_active(&mut self, txn: TxnId, out: &mut Output) {
        let t = self.txns.remove(&txn).expect("aborting a known transaction");
        assert!(
            matches!(t.phase, Phase::Active { .. }),
            "a prepared transaction is only decided by the coordinator"
        );
        self.release(txn, &t);
        self.done.insert(txn, Decision::Abort);
        out.event(TxnEvent::Applied {
            txn,
            decision: Decision::Abort,
            prepared: false,
        });
    }

    /// Timeouts: idle active transactions abort; prepared ones ask around.
    pub fn tick(&mut self, now: Duration) -> Output {
        let mut out = Output::default();
        self.timeouts(now, &mut out);
        self.checked();
        out
    }

    /// Runs [`Self::check`] where checks are built in (unit tests, and the
    /// `core-checks` feature the simulator turns on).
    fn checked(&self) {
        if cfg!(any(test, feature = "core-checks")) {
            crate::check::run(|| self.check());
        }
    }

    /// When [`Participant::tick`] next has something to do: an active
    /// transaction's idle timeout, a prepared one's next query.
    pub fn next_deadline(&self) -> Duration {
        self.txns
            .values()
            .map(|t| match &t.phase {
                Phase::Active { last, .. } => *last + self.config.active_timeout,
                Phase::Prepared { since, next_query, .. } if self.config.bug == Some(TxnBug::AbortAlone) => {
                    (*next_query).min(*since + ABORT_ALONE_AFTER)
                }
                Phase::Prepared { next_query, .. } => *next_query,
            })
            .min()
            .unwrap_or(Duration::MAX)
    }

    fn timeouts(&mut self, now: Duration, out: &mut Output) {
        let ids: Vec<TxnId> = self.txns.keys().copied().collect();
        for txn in ids {
            let t = self.txns.get_mut(&txn).expect("listed");
            match &mut t.phase {
                Phase::Active { last, .. } => {
                    if now.saturating_sub(*last) >= self.config.active_timeout {
                        self.abort_active(txn, out);
                    }
                }
                Phase::Prepared {
                    coordinators,
                    participants,
                    since,
                    next_query,
                } => {
                    if self.config.bug == Some(TxnBug::AbortAlone) && now.saturating_sub(*since) >= ABORT_ALONE_AFTER {
                        // The planted bug: a unilateral abort after a yes vote.
                        self.apply(txn, Decision::Abort, out);
                        continue;
                    }
                    if now >= *next_query {
                        *next_query = now + self.config.query_every;
                        let me = self.id;
                        let peers = participants.iter().copied().filter(|&p| p != me);
                        out.send_all(coordinators.iter().copied(), &CoordMsg::Query { txn });
                        out.send_all(peers, &ShardMsg::Query { txn });
                    }
                }
            }
        }
    }

    fn acquire(&mut self, txn: TxnId, key: &str, exclusive: bool) -> Result<(), TxnId> {
        let Some(lock) = self.locks.get_mut(key) else {
            self.locks.insert(
                key.to_string(),
                Lock {
                    exclusive,
                    holders: BTreeSet::from([txn]),
                },
            );
            return Ok(());
        };
        let sole = lock.holders.len() == 1 && lock.holders.contains(&txn);
        if sole {
            lock.exclusive |= exclusive;
            return Ok(());
        }
        if !exclusive && !lock.exclusive {
            lock.holders.insert(txn);
            return Ok(());
        }
        if self.config.bug == Some(TxnBug::BlindWriteIgnoresReaders)
            && exclusive
            && !lock.exclusive
            && !lock.holders.contains(&txn)
        {
            // The planted bug: the readers keep their shared locks.
            lock.exclusive = true;
            lock.holders.insert(txn);
            return Ok(());
        }
        Err(*lock.holders.iter().find(|&&h| h != txn).expect("another holder"))
    }

    fn release(&mut self, txn: TxnId, t: &Txn) {
        for key in &t.locked {
            if let Some(lock) = self.locks.get_mut(key) {
                lock.holders.remove(&txn);
                if lock.holders.is_empty() {
                    self.locks.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const C: NodeId = 1;
    pub(super) const CLIENT: NodeId = 100;
    pub(super) const MS: Duration = Duration::from_millis(1);

    pub(super) fn config() -> ParticipantConfig {
        ParticipantConfig {
            coordinators: vec![C],
            ..ParticipantConfig::default()
        }
    }

    pub(super) fn shard() -> Participant {
        Participant::recover(2, &[], Duration::ZERO, config()).unwrap().0
    }

    pub(super) fn get(p: &mut Participant, txn: TxnId, key: &str) -> Result<Option<Value>, AbortReason> {
        let epoch = p.epoch();
        op_result(p.on_message(
            MS,
            CLIENT,
            ShardMsg::Get {
                txn,
                request: 0,
                key: key.into(),
                epoch: Some(epoch),
            },
        ))
    }

    pub(super) fn put(p: &mut Participant, txn: TxnId, key: &str, v: u8) -> Result<Option<Value>, AbortReason> {
        let epoch = p.epoch();
        op_result(p.on_message(
            MS,
            CLIENT,
            ShardMsg::Put {
                txn,
                request: 0,
                key: key.into(),
                value: vec![v],
                epoch: if p.txns.contains_key(&txn) { Some(epoch) } else { None },
            },
        ))
    }

    pub(super) fn op_result(out: Output) -> Result<Option<Value>, AbortReason> {
        out.messages
            .into_iter()
            .find_map(|s| match s {
                (_, Msg::Reply(ReplyMsg::OpReply { result, .. })) => Some(result),
                _ => None,
            })
            .expect("a reply")
    }

    pub(super) fn prepare(p: &mut Participant, txn: TxnId) -> Output {
        let epoch = p.epoch();
        p.on_message(
            MS,
            C,
            ShardMsg::Prepare {
                txn,
                client: CLIENT,
                epoch,
                participants: vec![2, 3],
                coordinators: vec![C],
            },
        )
    }

    pub(super) fn vote_of(out: &Output) -> Option<bool> {
        out.messages.iter().find_map(|s| match s {
            (_, Msg::Coord(CoordMsg::Vote { yes, .. })) => Some(*yes),
            _ => None,
        })
    }

    /// The log a crash would leave: every appended record (as if all synced).
    pub(super) fn log_of(outs: &[Output]) -> Vec<Vec<u8>> {
        outs.iter().flat_map(|out| out.append.iter().cloned()).collect()
    }

    /// The records `out` appends.
    pub(super) fn records(out: &Output) -> Vec<Record> {
        out.append.iter().map(|r| codec::decode(r).unwrap()).collect()
    }

    #[test]
    fn no_wait_conflict_aborts_the_requester_with_the_key_and_holder() {
        let mut p = shard();
        assert_eq!(put(&mut p, 10, "a", 1), Ok(None));
        let err = get(&mut p, 11, "a").unwrap_err();
        assert_eq!(
            err,
            AbortReason::LockConflict {
                key: "a".into(),
                holder: 10
            }
        );
        // Shared locks coexist, and a sole reader upgrades.
        assert_eq!(get(&mut p, 12, "b"), Ok(None));
        assert_eq!(get(&mut p, 13, "b"), Ok(None));
        assert!(put(&mut p, 12, "b", 2).is_err());
        assert_eq!(get(&mut p, 14, "c"), Ok(None));
        assert_eq!(put(&mut p, 14, "c", 3), Ok(None));
        assert_eq!(get(&mut p, 14, "c"), Ok(Some(vec![3])), "reads see own writes");
    }

    #[test]
    fn votes_yes_only_after_a_synced_prepare_record() {
        let mut p = shard();
        put(&mut p, 10, "a", 1).unwrap();
        let out = prepare(&mut p, 10);
        assert!(matches!(records(&out)[..], [Record::Prepared { .. }]), "{out:?}");
        assert!(out.sync, "the record is synced before the vote goes");
        assert_eq!(vote_of(&out), Some(true));
    }

    #[test]
    fn votes_no_for_unknown_or_aborted_transactions() {
        let mut p = shard();
        assert_eq!(vote_of(&prepare(&mut p, 10)), Some(false));
        put(&mut p, 11, "a", 1).unwrap();
        p.on_message(MS, CLIENT, ShardMsg::Abort { txn: 11 });
        assert_eq!(vote_of(&prepare(&mut p, 11)), Some(false));
    }

    #[test]
    fn locks_are_held_until_the_decision_and_commit_installs_writes() {
        let mut p = shard();
        put(&mut p, 10, "a", 7).unwrap();
        prepare(&mut p, 10);
        assert!(get(&mut p, 11, "a").is_err(), "prepared locks block");
        // A client abort cannot touch a prepared transaction.
        p.on_message(MS, CLIENT, ShardMsg::Abort { txn: 10 });
        assert!(get(&mut p, 12, "a").is_err());
        let steps = p.on_message(
            MS,
            C,
            ShardMsg::Decide {
                txn: 10,
                decision: Decision::Commit,
            },
        );
        assert!(steps
            .messages
            .iter()
            .any(|s| matches!(s, (C, Msg::Coord(CoordMsg::Ack { txn: 10 })))));
        assert_eq!(p.committed("a"), Some(&vec![7]));
        assert_eq!(get(&mut p, 13, "a"), Ok(Some(vec![7])));
    }

    #[test]
    fn recovery_reports_every_decision_its_log_holds() {
        // A crash right after the decision's sync, before its report: only
        // the next incarnation knows the commit was applied, and says so.
        let (mut p, boot1) = Participant::recover(2, &[], Duration::ZERO, config()).unwrap();
        put(&mut p, 10, "a", 7).unwrap();
        let prepared = prepare(&mut p, 10);
        let decided = p.on_message(
            MS,
            C,
            ShardMsg::Decide {
                txn: 10,
                decision: Decision::Commit,
            },
        );
        let (p, boot) = Participant::recover(2, &log_of(&[boot1, prepared, decided]), 5 * MS, config()).unwrap();
        assert_eq!(p.committed("a"), Some(&vec![7]));
        assert!(boot.events.contains(&TxnEvent::Applied {
            txn: 10,
            decision: Decision::Commit,
            prepared: true
        }));
    }

    #[test]
    fn a_transaction_too_large_for_its_prepare_record_is_aborted_not_stored() {
        let mut p = shard();
        let write = |p: &mut Participant, txn, key: &str, bytes: usize| {
            let msg = ShardMsg::Put {
                txn,
                request: 0,
                key: key.into(),
                value: vec![7; bytes],
                epoch: Some(p.epoch()),
            };
            op_result(p.on_message(MS, CLIENT, msg))
        };
        // Up to the limit, the prepare record still encodes.
        let half = MAX_TXN_BYTES / 2 - 10;
        write(&mut p, 10, "a", half).unwrap();
        write(&mut p, 10, "b", half).unwrap();
        let prepared = prepare(&mut p, 10);
        assert_eq!(vote_of(&prepared), Some(true));
        assert!(
            matches!(records(&prepared)[..], [Record::Prepared { .. }]),
            "the prepare record fits"
        );
        // One byte more is refused and the transaction aborted, its locks
        // released.
        write(&mut p, 11, "c", MAX_TXN_BYTES - 2).unwrap();
        let limit = MAX_TXN_BYTES;
        assert_eq!(write(&mut p, 11, "d", 0), Err(AbortReason::TooLarge { limit }));
        assert_eq!(p.decision(11), Some(Decision::Abort));
        assert!(get(&mut p, 12, "c").is_ok());
        // A write replaces what the key held: rewriting never adds up.
        for _ in 0..3 {
            write(&mut p, 13, "e", MAX_TXN_BYTES / 2).unwrap();
        }
        let t = &p.txns[&13];
        assert_eq!(t.bytes, stored_bytes(&t.locked, &t.writes));
    }

    #[test]
    fn an_idle_transaction_is_aborted_at_its_timeout_and_not_before() {
        let mut p = shard();
        put(&mut p, 10, "a", 7).unwrap();
        let timeout = config().active_timeout;
        p.tick(MS + timeout - MS);
        assert!(get(&mut p, 11, "a").is_err(), "still active: its lock holds");
        let steps = p.tick(MS + timeout);
        assert!(steps.events.contains(&TxnEvent::Applied {
            txn: 10,
            decision: Decision::Abort,
            prepared: false
        }));
        assert_eq!(p.decision(10), Some(Decision::Abort));
        assert!(get(&mut p, 12, "a").is_ok(), "the lock went with it");
    }

    #[test]
    fn a_transaction_begun_again_in_a_new_incarnation_cannot_prepare() {
        // The client wrote "a" and "b" at epoch 1; the shard restarts, and a
        // late duplicate of the first write (sent before any reply, so
        // without an epoch) begins the transaction again with "a" alone.
        let (mut p, boot) = Participant::recover(2, &[], Duration::ZERO, config()).unwrap();
        put(&mut p, 10, "a", 7).unwrap();
        put(&mut p, 10, "b", 8).unwrap();
        let (mut p, _) = Participant::recover(2, &log_of(&[boot]), MS, config()).unwrap();
        assert_eq!(p.epoch(), 2);
        let duplicate = ShardMsg::Put {
            txn: 10,
            request: 0,
            key: "a".into(),
            value: vec![7],
            epoch: None,
        };
        op_result(p.on_message(MS, CLIENT, duplicate)).unwrap();
        let prepare_at_epoch_1 = ShardMsg::Prepare {
            txn: 10,
            client: CLIENT,
            epoch: 1,
            participants: vec![2],
            coordinators: vec![C],
        };
        assert_eq!(vote_of(&p.on_message(MS, C, prepare_at_epoch_1)), Some(false));
    }

    #[test]
    fn only_the_client_that_began_a_transaction_may_add_to_it_or_abort_it() {
        let mut p = shard();
        put(&mut p, 10, "a", 7).unwrap();
        let stranger = CLIENT + 1;
        let forged_put = ShardMsg::Put {
            txn: 10,
            request: 0,
            key: "b".into(),
            value: vec![66],
            epoch: Some(p.epoch()),
        };
        assert_eq!(
            op_result(p.on_message(MS, stranger, forged_put)),
            Err(AbortReason::NotActive)
        );
        assert!(p.on_message(MS, stranger, ShardMsg::Abort { txn: 10 }).is_empty());
        // The client's transaction is untouched: it prepares with its own
        // write only, and the key the stranger named is not locked.
        assert_eq!(vote_of(&prepare(&mut p, 10)), Some(true));
        assert_eq!(p.txns[&10].writes.keys().collect::<Vec<_>>(), ["a"]);
        assert!(get(&mut p, 11, "b").is_ok());
    }

    #[test]
    fn a_commit_asked_for_by_someone_else_gets_a_no_vote() {
        let mut p = shard();
        put(&mut p, 10, "a", 7).unwrap();
        let forged = ShardMsg::Prepare {
            txn: 10,
            client: CLIENT + 1,
            epoch: p.epoch(),
            participants: vec![2],
            coordinators: vec![C],
        };
        assert_eq!(vote_of(&p.on_message(MS, C, forged)), Some(false));
        assert_eq!(p.decision(10), Some(Decision::Abort));
        assert_eq!(p.committed("a"), None);
    }

    #[test]
    fn recovery_refuses_prepared_transactions_whose_locks_conflict() {
        // Two shards each prepare a write of "a"; one log holding both
        // records cannot be this shard's own.
        let prepared_write = |txn| {
            let (mut p, boot) = Participant::recover(2, &[], Duration::ZERO, config()).unwrap();
            put(&mut p, txn, "a", 7).unwrap();
            vec![boot, prepare(&mut p, txn)]
        };
        let (mut first, second) = (prepared_write(10), prepared_write(11));
        first.push(second[1].clone());
        let error = Participant::recover(2, &log_of(&first), MS, config()).unwrap_err();
        assert!(matches!(error, RecoverError::Invalid { position: 2, .. }), "{error:?}");

        // Shared locks do not conflict, and a record written twice is one
        // transaction, not two.
        let (mut p, boot) = Participant::recover(2, &[], Duration::ZERO, config()).unwrap();
        get(&mut p, 10, "a").unwrap();
        get(&mut p, 11, "a").unwrap();
        let (ten, eleven) = (prepare(&mut p, 10), prepare(&mut p, 11));
        let history = [boot, ten.clone(), eleven, ten];
        let (p, _) = Participant::recover(2, &log_of(&history), MS, config()).unwrap();
        assert_eq!(p.prepared(), vec![10, 11]);
    }

    #[test]
    fn recovery_reacquires_locks_of_prepared_transactions_and_asks_around() {
        let (mut p, boot1) = Participant::recover(2, &[], Duration::ZERO, config()).unwrap();
        let mut history = vec![boot1];
        put(&mut p, 10, "a", 7).unwrap();
        put(&mut p, 11, "b", 8).unwrap();
        history.push(prepare(&mut p, 10));
        // Crash: txn 11 was only active, txn 10 prepared.
        let (mut p, boot) = Participant::recover(2, &log_of(&history), 5 * MS, config()).unwrap();
        assert_eq!(p.epoch(), 2);
        assert_eq!(p.prepared(), vec![10]);
        let queries: Vec<_> = boot
            .messages
            .iter()
            .filter_map(|s| match s {
                (to, Msg::Coord(CoordMsg::Query { txn: 10 }) | Msg::Shard(ShardMsg::Query { txn: 10 })) => Some(*to),
                _ => None,
            })
            .collect();
        assert_eq!(queries, vec![C, 3]);
        assert!(get(&mut p, 12, "a").is_err(), "the prepared lock came back");
        assert_eq!(
            vote_of(&prepare(&mut p, 11)),
            Some(false),
            "active work died with the crash"
        );
        // An op from the old incarnation is refused.
        let old = p.on_message(
            MS,
            CLIENT,
            ShardMsg::Get {
                txn: 13,
                request: 0,
                key: "c".into(),
                epoch: Some(1),
            },
        );
        assert_eq!(op_result(old), Err(AbortReason::ShardLostTxn { shard: 2 }));
    }

    #[test]
    fn a_prepared_shard_never_decides_alone_but_learns_from_peers() {
        let mut p = shard();
        put(&mut p, 10, "a", 7).unwrap();
        prepare(&mut p, 10);
        for i in 1..100 {
            let steps = p.tick(Duration::from_millis(100 * i));
            assert!(!steps.events.iter().any(|e| matches!(e, TxnEvent::Applied { .. })));
        }
        assert_eq!(p.prepared(), vec![10]);
        p.on_message(
            MS,
            3,
            ShardMsg::Known {
                txn: 10,
                knowledge: Knowledge::Uncertain,
            },
        );
        assert_eq!(p.prepared(), vec![10]);
        p.on_message(
            MS,
            3,
            ShardMsg::Known {
                txn: 10,
                knowledge: Knowledge::Decided(Decision::Abort),
            },
        );
        assert!(p.prepared().is_empty());
        assert_eq!(p.decision(10), Some(Decision::Abort));
        assert_eq!(p.committed("a"), None);
    }

    #[test]
    fn a_peer_that_has_not_voted_aborts_when_asked() {
        let mut p = shard();
        put(&mut p, 10, "a", 7).unwrap();
        let steps = p.on_message(MS, 3, ShardMsg::Query { txn: 10 });
        assert!(steps.messages.contains(&(
            3,
            Msg::Shard(ShardMsg::Known {
                txn: 10,
                knowledge: Knowledge::Decided(Decision::Abort)
            })
        )));
        assert_eq!(vote_of(&prepare(&mut p, 10)), Some(false));
    }

    #[test]
    fn idle_active_transactions_time_out() {
        let mut p = shard();
        put(&mut p, 10, "a", 7).unwrap();
        p.tick(Duration::from_secs(5));
        assert_eq!(get(&mut p, 11, "a"), Ok(None));
    }

    /// The shell ticks a shard when it says: an active transaction at its
    /// idle timeout, a prepared one at its next query; an idle shard never.
    #[test]
    fn the_next_deadline_is_the_earliest_timeout() {
        let mut p = shard();
        assert_eq!(p.next_deadline(), Duration::MAX);
        assert_eq!(put(&mut p, 10, "a", 1), Ok(None));
        let idle = MS + ParticipantConfig::default().active_timeout;
        assert_eq!(p.next_deadline(), idle);
        assert!(p.tick(idle - MS).is_empty(), "nothing due before it");
        prepare(&mut p, 10);
        let query = p.next_deadline();
        assert!(query > MS && query < idle, "{query:?}");
        assert!(!p.tick(query).is_empty(), "the query goes out when due");
        assert!(p.next_deadline() > query);
    }

    /// A decision of a prepared transaction is synced before it is
    /// acknowledged, an abort as well as a commit.
    #[test]
    fn an_abort_is_synced_before_it_is_acknowledged() {
        let mut p = shard();
        assert_eq!(put(&mut p, 10, "a", 7), Ok(None));
        prepare(&mut p, 10);
        let steps = p.on_message(
            MS,
            C,
            ShardMsg::Decide {
                txn: 10,
                decision: Decision::Abort,
            },
        );
        assert!(matches!(records(&steps)[..], [Record::Decided { .. }]), "{steps:?}");
        assert!(steps.sync, "synced before the ack goes: {steps:?}");
        assert!(
            steps.messages.contains(&(C, Msg::Coord(CoordMsg::Ack { txn: 10 }))),
            "{steps:?}"
        );
    }
}
