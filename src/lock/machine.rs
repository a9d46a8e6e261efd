//! The lock service as a replicated state machine: sessions, named locks,
//! FIFO waiters and fencing tokens. Everything here is deterministic and
//! clock-free — time enters only through `Expire` commands that the leader
//! proposes (see `server.rs`), so every replica applies the same decisions.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::{MAX_LOCKS, MAX_LOCK_NAME_BYTES, MAX_SESSIONS, MAX_WAITERS};
use crate::env::codec;
use crate::log::{SnapshotError, StateMachine};

/// A client session, chosen at random by the client.
pub type SessionId = u64;
/// A fencing token: strictly increasing per lock, never reused.
pub type Token = u64;

/// A state-changing request, appended to the log. Every command of a live
/// session renews its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockCommand {
    /// Starts a session (or renews it, for a retried `Open`).
    Open { session: SessionId },
    /// Renews the session; answered with the locks it holds.
    KeepAlive { session: SessionId },
    /// Takes `lock`, or queues for it (`wait`), or reports `Busy`.
    /// `request` makes retries idempotent: the same request gets the same
    /// grant or queue slot, an older one is refused as stale.
    /// `token_hint` is set only by servers running the `UnsyncedToken`
    /// planted bug; clients leave it `None`.
    Acquire {
        session: SessionId,
        lock: String,
        request: u64,
        wait: bool,
        token_hint: Option<Token>,
    },
    /// Releases `lock` if `session` holds it with `token`.
    Release {
        session: SessionId,
        lock: String,
        token: Token,
    },
    /// Leaves the queue for `lock` (answered `Granted` if it was already
    /// granted: the caller then owns it and should release it).
    Cancel {
        session: SessionId,
        lock: String,
        request: u64,
    },
    /// Ends the session, releasing everything.
    Close { session: SessionId },
    /// Proposed by a leader whose clock says `session` has not renewed for
    /// a TTL since the renewal at revision `renewed`. Ignored if the session
    /// renewed since (the leader decided on stale information).
    Expire { session: SessionId, renewed: u64 },
}

/// Read-only requests (served linearizably by the log's read-index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockQuery {
    /// Holder and waiters of a lock.
    Lock { lock: String },
    /// The same answer, but the leader holds the request while the lock
    /// still looks like `seen` (for at most [`super::server::WATCH_PARK`]):
    /// how a queued acquirer learns of its grant without polling.
    Watch { lock: String, seen: Option<LockView> },
}

/// Who holds a lock and who waits for it (in line order), as
/// `(session, token)` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockView {
    pub holder: Option<(SessionId, Token)>,
    pub waiters: Vec<(SessionId, Token)>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    TooManySessions,
    TooManyLocks,
    TooManyWaiters,
    NameTooLong,
    /// The request id is older than one this session already finished.
    StaleRequest,
    /// `Open` of a session id that existed before.
    SessionReused,
}

/// Results of commands and queries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockOutput {
    Opened,
    Alive {
        held: Vec<(String, Token)>,
    },
    Granted {
        token: Token,
    },
    /// Queued behind `ahead` (the token just before ours in line).
    Queued {
        token: Token,
        ahead: Token,
    },
    /// Try-acquire of a held lock.
    Busy,
    Released,
    NotOwner,
    Cancelled,
    /// The session does not exist (expired, closed, or never opened).
    SessionExpired,
    Expired,
    Ignored,
    Refused(Refusal),
    Lock(LockView),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    session: SessionId,
    request: u64,
    token: Token,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LockState {
    holder: Option<Claim>,
    waiters: VecDeque<Claim>,
    /// Highest token ever granted for this lock (assertion: grants increase).
    last_granted: Token,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    /// Revision of the command that last renewed the lease.
    renewed: u64,
    /// Locks held or waited for.
    locks: BTreeSet<String>,
    finished: Finished,
}

/// The requests a session finished (released or cancelled), so a late
/// duplicate of one is refused rather than granted again.
///
/// Per lock for the latest [`FINISHED_MEMORY`] locks, then one bound for
/// the rest: the table lives in the snapshot, which must fit one message,
/// and a long-lived session may take thousands of differently named locks.
/// A session's request ids increase (its client numbers them in order), so
/// an evicted lock's requests all lie at or below `below`. A request at or
/// below it that is not a duplicate (a client sending requests out of
/// order) is refused too; its client retries under a new id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Finished {
    by_lock: BTreeMap<String, u64>,
    below: u64,
}

/// Locks whose finished request is remembered exactly, per session.
const FINISHED_MEMORY: usize = 64;

impl Finished {
    fn is_stale(&self, lock: &str, request: u64) -> bool {
        request <= self.below || self.by_lock.get(lock).is_some_and(|&done| request <= done)
    }

    fn record(&mut self, lock: &str, request: u64) {
        let done = self.by_lock.entry(lock.to_string()).or_default();
        *done = (*done).max(request);
        if self.by_lock.len() > FINISHED_MEMORY {
            let (oldest, done) = self
                .by_lock
                .iter()
                .min_by_key(|(_, &done)| done)
                .map(|(name, &done)| (name.clone(), done))
                .expect("over the limit, so not empty");
            self.by_lock.remove(&oldest);
            self.below = self.below.max(done);
        }
    }
}

/// The replicated lock table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockMachine {
    /// Count of applied commands: the logical clock tokens come from. It is
    /// a pure function of the committed log, so it is durable exactly as
    /// the log is, on every replica, across every restart.
    revision: u64,
    sessions: BTreeMap<SessionId, Session>,
    locks: BTreeMap<String, LockState>,
    /// Recently ended sessions, so a late `Open` cannot revive one.
    ended: VecDeque<SessionId>,
}

/// How many ended session ids are remembered.
const ENDED_MEMORY: usize = 1024;

impl LockMachine {
    /// Sessions and the revision of their last renewal.
    pub fn sessions(&self) -> impl Iterator<Item = (SessionId, u64)> + '_ {
        self.sessions.iter().map(|(id, s)| (*id, s.renewed))
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The holder's session and token.
    /// `lock` as a read shows it (a lock nobody holds or waits for is free).
    pub fn view(&self, lock: &str) -> LockView {
        match self.locks.get(lock) {
            Some(l) => LockView {
                holder: l.holder.as_ref().map(|c| (c.session, unmark(c.token))),
                waiters: l.waiters.iter().map(|c| (c.session, unmark(c.token))).collect(),
            },
            None => LockView::default(),
        }
    }

    pub fn holder(&self, lock: &str) -> Option<(SessionId, Token)> {
        self.locks.get(lock)?.holder.as_ref().map(|c| (c.session, c.token))
    }

    /// Checks the table's internal consistency (run after every command).
    fn check(&self) {
        for (name, lock) in &self.locks {
            let mut prev = 0;
            for claim in lock.holder.iter().chain(&lock.waiters) {
                let s = self
                    .sessions
                    .get(&claim.session)
                    .expect("claims belong to live sessions");
                assert!(s.locks.contains(name), "session tracks its claim");
                if !claim_is_hinted(claim) {
                    assert!(claim.token > prev, "FIFO queue tokens increase");
                }
                prev = claim.token;
            }
            assert!(
                lock.holder.is_some() || lock.waiters.is_empty(),
                "a free lock has no waiters"
            );
            assert!(lock.waiters.len() <= MAX_WAITERS);
        }
    }

    fn end_session(&mut self, session: SessionId) {
        let Some(s) = self.sessions.remove(&session) else {
            return;
        };
        for name in s.locks {
            let lock = self.locks.get_mut(&name).expect("tracked lock exists");
            lock.waiters.retain(|c| c.session != session);
            if lock.holder.as_ref().is_some_and(|c| c.session == session) {
                lock.holder = None;
                Self::grant_next(lock);
            }
            if lock.holder.is_none() {
                self.locks.remove(&name);
            }
        }
        self.ended.push_back(session);
        if self.ended.len() > ENDED_MEMORY {
            self.ended.pop_front();
        }
    }

    fn grant_next(lock: &mut LockState) {
        debug_assert!(lock.holder.is_none());
        if let Some(next) = lock.waiters.pop_front() {
            Self::grant(lock, next);
        }
    }

    fn grant(lock: &mut LockState, claim: Claim) {
        // Fencing tokens strictly increase per lock (skipped under the
        // planted bug, whose hinted tokens are exactly what breaks this).
        assert!(
            claim.token > lock.last_granted || claim_is_hinted(&claim),
            "token {} granted after {}",
            claim.token,
            lock.last_granted
        );
        lock.last_granted = lock.last_granted.max(claim.token);
        lock.holder = Some(claim);
    }

    fn acquire(&mut self, session: SessionId, name: &str, request: u64, wait: bool, hint: Option<Token>) -> LockOutput {
        if name.len() > MAX_LOCK_NAME_BYTES {
            return LockOutput::Refused(Refusal::NameTooLong);
        }
        let s = self.sessions.get(&session).expect("caller checked");
        if s.finished.is_stale(name, request) {
            return LockOutput::Refused(Refusal::StaleRequest);
        }
        if let Some(lock) = self.locks.get_mut(name) {
            // Idempotence: the session's existing claim answers a retry (and
            // a newer request of the same session takes the claim over).
            if let Some(h) = lock.holder.as_mut().filter(|c| c.session == session) {
                h.request = h.request.max(request);
                return LockOutput::Granted { token: unmark(h.token) };
            }
            let mut ahead = lock.holder.as_ref().map_or(0, |c| unmark(c.token));
            for w in lock.waiters.iter_mut() {
                if w.session == session {
                    w.request = w.request.max(request);
                    return LockOutput::Queued {
                        token: unmark(w.token),
                        ahead,
                    };
                }
                ahead = unmark(w.token);
            }
        }
        let token = hint.unwrap_or(self.revision);
        if !self.locks.contains_key(name) && self.locks.len() >= MAX_LOCKS {
            return LockOutput::Refused(Refusal::TooManyLocks);
        }
        let lock = self.locks.entry(name.to_string()).or_default();
        let claim = Claim {
            session,
            request,
            token: mark_hinted(token, hint.is_some()),
        };
        let out = if lock.holder.is_none() {
            Self::grant(lock, claim);
            LockOutput::Granted { token }
        } else if !wait {
            return LockOutput::Busy;
        } else if lock.waiters.len() >= MAX_WAITERS {
            return LockOutput::Refused(Refusal::TooManyWaiters);
        } else {
            let ahead = lock
                .waiters
                .back()
                .or(lock.holder.as_ref())
                .map_or(0, |c| unmark(c.token));
            lock.waiters.push_back(claim);
            LockOutput::Queued { token, ahead }
        };
        self.sessions
            .get_mut(&session)
            .expect("caller checked")
            .locks
            .insert(name.to_string());
        out
    }

    fn release(&mut self, session: SessionId, name: &str, token: Token) -> LockOutput {
        let Some(lock) = self.locks.get_mut(name) else {
            return LockOutput::NotOwner;
        };
        match &lock.holder {
            Some(h) if h.session == session && unmark(h.token) == token => {
                let request = h.request;
                lock.holder = None;
                Self::grant_next(lock);
                if lock.holder.is_none() {
                    self.locks.remove(name);
                }
                let s = self.sessions.get_mut(&session).expect("caller checked");
                s.locks.remove(name);
                s.finished.record(name, request);
                LockOutput::Released
            }
            _ => LockOutput::NotOwner,
        }
    }

    fn cancel(&mut self, session: SessionId, name: &str, request: u64) -> LockOutput {
        let s = self.sessions.get_mut(&session).expect("caller checked");
        let Some(lock) = self.locks.get_mut(name) else {
            s.finished.record(name, request);
            return LockOutput::Cancelled;
        };
        if let Some(h) = lock.holder.as_ref().filter(|c| c.session == session) {
            return LockOutput::Granted { token: unmark(h.token) };
        }
        s.finished.record(name, request);
        let before = lock.waiters.len();
        lock.waiters.retain(|c| c.session != session);
        if lock.waiters.len() != before {
            s.locks.remove(name);
        }
        LockOutput::Cancelled
    }

    fn held(&self, session: SessionId) -> Vec<(String, Token)> {
        let s = &self.sessions[&session];
        s.locks
            .iter()
            .filter_map(|name| {
                let h = self.locks[name].holder.as_ref()?;
                (h.session == session).then(|| (name.clone(), unmark(h.token)))
            })
            .collect()
    }
}

// Hinted (planted-bug) tokens carry a marker bit inside the machine so the
// monotonicity assertion can tell them apart; it never leaves the machine.
const HINT_BIT: u64 = 1 << 63;
fn mark_hinted(token: Token, hinted: bool) -> Token {
    if hinted {
        token | HINT_BIT
    } else {
        token
    }
}
fn unmark(token: Token) -> Token {
    token & !HINT_BIT
}
fn claim_is_hinted(claim: &Claim) -> bool {
    claim.token & HINT_BIT != 0
}

impl StateMachine for LockMachine {
    type Command = LockCommand;
    type Query = LockQuery;
    type Output = LockOutput;

    fn apply(&mut self, command: &LockCommand) -> LockOutput {
        self.revision += 1;
        let revision = self.revision;
        let session = match command {
            LockCommand::Open { session }
            | LockCommand::KeepAlive { session }
            | LockCommand::Acquire { session, .. }
            | LockCommand::Release { session, .. }
            | LockCommand::Cancel { session, .. }
            | LockCommand::Close { session }
            | LockCommand::Expire { session, .. } => *session,
        };
        let out = match command {
            LockCommand::Open { .. } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.renewed = revision;
                    return LockOutput::Opened;
                }
                if self.ended.contains(&session) {
                    return LockOutput::Refused(Refusal::SessionReused);
                }
                if self.sessions.len() >= MAX_SESSIONS {
                    return LockOutput::Refused(Refusal::TooManySessions);
                }
                self.sessions.insert(
                    session,
                    Session {
                        renewed: revision,
                        ..Session::default()
                    },
                );
                LockOutput::Opened
            }
            LockCommand::Expire { renewed, .. } => match self.sessions.get(&session) {
                Some(s) if s.renewed == *renewed => {
                    self.end_session(session);
                    LockOutput::Expired
                }
                _ => LockOutput::Ignored,
            },
            _ => {
                let Some(s) = self.sessions.get_mut(&session) else {
                    return LockOutput::SessionExpired;
                };
                s.renewed = revision;
                match command {
                    LockCommand::KeepAlive { .. } => LockOutput::Alive {
                        held: self.held(session),
                    },
                    LockCommand::Acquire {
                        lock,
                        request,
                        wait,
                        token_hint,
                        ..
                    } => self.acquire(session, lock, *request, *wait, *token_hint),
                    LockCommand::Release { lock, token, .. } => self.release(session, lock, *token),
                    LockCommand::Cancel { lock, request, .. } => self.cancel(session, lock, *request),
                    LockCommand::Close { .. } => {
                        self.end_session(session);
                        LockOutput::Released
                    }
                    LockCommand::Open { .. } | LockCommand::Expire { .. } => unreachable!(),
                }
            }
        };
        self.check();
        out
    }

    fn query(&self, query: &LockQuery) -> LockOutput {
        match query {
            LockQuery::Lock { lock } | LockQuery::Watch { lock, .. } => LockOutput::Lock(self.view(lock)),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        codec::encode(self).expect("lock table fits a snapshot (bounded by MAX_* limits)")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        *self = codec::decode(snapshot)?;
        Ok(())
    }
}
