//! The lock service as a replicated state machine: sessions, named locks,
//! FIFO waiters and fencing tokens. Everything here is deterministic and
//! clock-free — time enters only through `Expire` commands that the leader
//! proposes (see `server.rs`), so every replica applies the same decisions.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::{
    principal, MAX_LOCKS, MAX_LOCKS_PER_PRINCIPAL, MAX_LOCK_NAME_BYTES, MAX_SESSIONS, MAX_SESSIONS_PER_PRINCIPAL,
    MAX_WAITERS, MAX_WAITERS_PER_PRINCIPAL,
};
use crate::env::{codec, NodeId};
use crate::log::{SnapshotError, StateMachine};
use crate::ring::{hash_key, KeyHash};
use crate::shard::{GroupId, Ownership, RangeSet, ShardRefusal};

mod moves;

pub use moves::pack;

/// A client session, chosen at random by the client.
pub type SessionId = u64;
/// A fencing token: strictly increasing per lock, never reused.
pub type Token = u64;

/// What a client may ask for: the only commands a lock server admits from
/// the network. Every request of a live session renews its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Starts a session (or renews it, for a retried `Open`).
    Open {
        /// The new session's id, chosen at random by the client.
        session: SessionId,
    },
    /// Renews the session; answered with the locks it holds.
    KeepAlive {
        /// The session to renew.
        session: SessionId,
    },
    /// Takes `lock`, or queues for it (`wait`), or reports `Busy`.
    /// `request` makes retries idempotent: the same request gets the same
    /// grant or queue slot, an older one is refused as stale.
    Acquire {
        /// The session that will hold the lock; it must be the sender's.
        session: SessionId,
        /// The lock's name, at most [`super::MAX_LOCK_NAME_BYTES`] bytes.
        lock: String,
        /// The client's id for this attempt, increasing per session.
        request: u64,
        /// Queue behind the holder instead of answering `Busy`.
        wait: bool,
    },
    /// Releases `lock` if `session` holds it with `token`.
    Release {
        /// The session that holds the lock.
        session: SessionId,
        /// The lock's name.
        lock: String,
        /// The token it was granted: a release under an older grant is
        /// `NotOwner`, not a release of a newer one.
        token: Token,
    },
    /// Leaves the queue for `lock` (answered `Granted` if it was already
    /// granted: the caller then owns it and should release it). Acts only
    /// on a claim of `request` or an older one: a claim a newer acquire of
    /// the session took over stays, and the answer is `Cancelled`.
    Cancel {
        /// The session that queued.
        session: SessionId,
        /// The lock's name.
        lock: String,
        /// The acquire's request id, remembered so that a late duplicate
        /// of that acquire is refused rather than queued again.
        request: u64,
    },
    /// Ends the session, releasing everything.
    Close {
        /// The session to end.
        session: SessionId,
    },
}

impl Request {
    /// The session the request acts on.
    pub fn session(&self) -> SessionId {
        match self {
            Request::Open { session }
            | Request::KeepAlive { session }
            | Request::Acquire { session, .. }
            | Request::Release { session, .. }
            | Request::Cancel { session, .. }
            | Request::Close { session } => *session,
        }
    }
}

/// A command as the log carries it. Only `Client` may come from a client,
/// and only with `owner` overwritten by the leader's shell (see
/// `server::admit`); the other variants are proposed by the leader's own
/// machinery and dropped when they arrive from the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockCommand {
    /// A client's request. `owner` is the node it came from, as the
    /// transport authenticated it: a session belongs to the node that
    /// opened it, and its principal (`owner >> 16`) carries the quota.
    Client {
        /// The authenticated sender, stamped by the leader, never trusted
        /// from the client.
        owner: NodeId,
        /// What the client asked for.
        request: Request,
    },
    /// Planted bug `UnsyncedToken`: an acquire stamped by the leader with a
    /// token from its own counter instead of the machine's revision.
    Hinted {
        /// The authenticated sender, as for `Client`.
        owner: NodeId,
        /// The client's request (an `Acquire` is what the hint affects).
        request: Request,
        /// The leader's own counter value, used as the token if granted.
        token: Token,
    },
    /// Proposed by a leader whose clock says `session` has not renewed for
    /// a TTL since the renewal at revision `renewed`. Ignored if the session
    /// renewed since (the leader decided on stale information).
    Expire {
        /// The session whose lease ran out on the leader's clock.
        session: SessionId,
        /// The revision of the renewal the leader saw last: a renewal
        /// after it makes the command a no-op.
        renewed: u64,
    },
    /// A step of moving lock names between groups of a sharded deployment
    /// (see [`crate::shard`]), admitted from operators only.
    Shard(ShardCommand),
}

/// The steps of moving a range of lock names from one group to another.
/// Each is idempotent, so a rebalancer that crashed or timed out repeats
/// the step it is unsure of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardCommand {
    /// A group created for a sharded deployment serves `ranges` (a group
    /// joining the ring: none) from now on. Only a group that has taken no
    /// part in a move yet may be assigned.
    Assign {
        /// The ring's epoch the group joins at.
        epoch: u64,
        /// The lock-name hashes it serves.
        ranges: RangeSet,
    },
    /// Stops serving `ranges` and cuts their locks out into the part for
    /// `to` (read with [`LockQuery::Part`]): from this command on, every
    /// request on those names is answered [`LockOutput::NotServed`].
    Fence {
        /// The epoch of the ring view the move leads to.
        epoch: u64,
        /// The group the names move to.
        to: GroupId,
        /// The lock-name hashes that move.
        ranges: RangeSet,
    },
    /// Starts serving the part a group fenced for this one.
    Install {
        /// The move's epoch.
        epoch: u64,
        /// The group that fenced the part.
        from: GroupId,
        /// What it fenced.
        part: LockPart,
    },
    /// The source forgets the part it fenced for `to` at `epoch`, once
    /// the target installed it.
    Drop {
        /// The move's epoch.
        epoch: u64,
        /// The target group.
        to: GroupId,
    },
}

/// The state of a range of lock names, as a source fenced it.
///
/// Only holders travel: a moved lock stays held at the target, by a
/// *ghost* session that nobody can renew, until the target's leader
/// expires it a TTL after the install. At the source the fence turns the
/// holder's session into a ghost too, so its client hears
/// `SessionExpired` and stops trusting its locks, while its lease, timed
/// from a request sent before the fence, ends before either ghost does.
/// Waiters are told to go to the new owner ([`LockOutput::NotServed`])
/// and queue there afresh.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockPart {
    /// The lock-name hashes the part covers.
    pub ranges: RangeSet,
    /// The source's next token at the fence: every token it granted for
    /// these names is below it, and the target's tokens start above it.
    pub floor: Token,
    /// The held locks of the ranges.
    pub locks: Vec<MovedLock>,
}

/// A held lock in a [`LockPart`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedLock {
    /// The lock's name.
    pub name: String,
    /// The holder's session at the source.
    pub session: SessionId,
    /// The node that owns that session.
    pub owner: NodeId,
    /// The holder's token.
    pub token: Token,
    /// The highest token the source granted for this lock.
    pub last_granted: Token,
}

/// Largest floor a part may carry: tokens above it could overflow.
pub const MAX_FLOOR: Token = 1 << 62;

/// Read-only requests (served linearizably by the log's read-index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockQuery {
    /// Holder and waiters of a lock.
    Lock {
        /// The lock's name.
        lock: String,
    },
    /// The same answer, but the leader holds the request while the lock
    /// still looks like `seen` (for at most [`super::server::WATCH_PARK`]):
    /// how a queued acquirer learns of its grant without polling.
    Watch {
        /// The lock's name.
        lock: String,
        /// The view the watcher already has; `None` answers at once.
        seen: Option<LockView>,
    },
    /// The servers' lease settings, answered by any replica's shell (see
    /// `server::run`), so a client agrees on the TTL when it opens.
    Settings,
    /// A page of the part this group fenced for group `to` at `epoch`, if
    /// it still keeps it: what a rebalancer installs at the target, one
    /// install command a page. The page covers the part's hashes from
    /// `from` on, as many as fit an install of `limit` bytes (at most
    /// [`MAX_PAGE_BYTES`]; a page holds at least one range).
    Part {
        /// The move's epoch.
        epoch: u64,
        /// The target group.
        to: GroupId,
        /// The first hash of the page: 0 for the first page, then the
        /// `next` of the page before.
        from: KeyHash,
        /// The most bytes an install of the page may take.
        limit: u32,
    },
}

/// The largest page of a part a group answers: the largest command its
/// log takes, so every page installs as one command and every answer is
/// far below a message.
pub const MAX_PAGE_BYTES: u32 = crate::log::MAX_COMMAND_BYTES as u32;

/// One page of a fenced part ([`LockQuery::Part`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartPage {
    /// The part's ranges and locks from the page's first hash on, as far
    /// as the page goes, with the whole part's floor.
    pub part: LockPart,
    /// The first hash of the next page; `None` on the last.
    pub next: Option<KeyHash>,
}

/// Who holds a lock and who waits for it (in line order), as
/// `(session, token)` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockView {
    /// The owning session and its token; `None` when the lock is free.
    pub holder: Option<(SessionId, Token)>,
    /// The queue, first in line first; each token is what that session
    /// will hold once granted.
    pub waiters: Vec<(SessionId, Token)>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The table already holds [`super::MAX_SESSIONS`] sessions: the
    /// snapshot must fit one message.
    TooManySessions,
    /// The table already holds [`super::MAX_LOCKS`] locks, and this one
    /// would be new.
    TooManyLocks,
    /// The lock already has [`super::MAX_WAITERS`] queued.
    TooManyWaiters,
    /// The lock name exceeds [`super::MAX_LOCK_NAME_BYTES`].
    NameTooLong,
    /// The request id is older than one this session already finished.
    StaleRequest,
    /// `Open` of a session id that existed before.
    SessionReused,
    /// The session belongs to another node: only the node that opened a
    /// session may renew, use or close it.
    ForeignSession,
    /// The owner's principal already has [`super::MAX_SESSIONS_PER_PRINCIPAL`]
    /// live sessions.
    PrincipalQuota,
    /// The owner's principal already holds or waits for
    /// [`super::MAX_LOCKS_PER_PRINCIPAL`] locks, and this one would be new.
    PrincipalLockQuota,
    /// The owner's principal already has
    /// [`super::MAX_WAITERS_PER_PRINCIPAL`] sessions waiting for this lock.
    PrincipalWaiterQuota,
}

/// Results of commands and queries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockOutput {
    /// `Open` succeeded: the session is live (new, or renewed by a retry).
    Opened,
    /// `KeepAlive` renewed the session.
    Alive {
        /// The locks the session holds (not those it waits for), so the
        /// client learns of grants and losses while renewing.
        held: Vec<(String, Token)>,
    },
    /// The session holds the lock (now, or already: retries get the same
    /// answer; also `Cancel`'s answer when the grant came first).
    Granted {
        /// The fencing token to present to resources.
        token: Token,
    },
    /// Queued behind `ahead` (the token just before ours in line).
    Queued {
        /// The token the session will hold once granted.
        token: Token,
        /// The token just ahead in line (the holder's, when first).
        ahead: Token,
    },
    /// Try-acquire of a held lock.
    Busy,
    /// `Release` gave the lock up, or `Close` ended the session and
    /// everything it held.
    Released,
    /// `Release` with a lock or token the session does not hold (any more).
    NotOwner,
    /// `Cancel` left the queue (or there was nothing to leave).
    Cancelled,
    /// The session does not exist (expired, closed, or never opened).
    SessionExpired,
    /// `Expire` ended the session and released its locks.
    Expired,
    /// `Expire` found the session renewed since (or gone): nothing done.
    Ignored,
    /// The request was refused for the reason given; no session, lock or
    /// queue slot was created.
    Refused(Refusal),
    /// Answer to [`LockQuery::Lock`] and [`LockQuery::Watch`].
    Lock(LockView),
    /// The session TTL the servers enforce (0 from the bare machine, which
    /// keeps no clock settings).
    Settings {
        /// The session lease, in milliseconds.
        ttl_ms: u64,
    },
    /// This group does not serve the lock named: a client refreshes its
    /// ring view to at least `epoch` (the latest move this group took part
    /// in) and asks the group the view names.
    NotServed {
        /// The latest epoch this group took part in.
        epoch: u64,
    },
    /// A shard command took effect (or had already): `locks` were cut out,
    /// installed or forgotten.
    Moved {
        /// How many locks the command moved (0 for a repetition).
        locks: usize,
    },
    /// A shard command was refused; nothing changed.
    ShardRefused(ShardRefusal),
    /// Answer to [`LockQuery::Part`]: `None` once the part was dropped.
    Part(Option<PartPage>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    session: SessionId,
    request: u64,
    token: Token,
    /// The token came from a leader's hint (planted bug `UnsyncedToken`),
    /// not from the revision, so the machine promises nothing about it.
    hinted: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LockState {
    holder: Option<Claim>,
    waiters: VecDeque<Claim>,
    /// Highest revision-derived token granted for this lock (assertion:
    /// such grants increase; hinted ones are the planted bug's business).
    last_granted: Token,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    /// The node that opened the session: the only one that may act on it.
    owner: NodeId,
    /// Revision of the command that last renewed the lease.
    renewed: u64,
    /// Locks held or waited for.
    locks: BTreeSet<String>,
    finished: Finished,
    /// The holder of locks moved in from another group, kept until it
    /// expires: nobody may renew or act on it (see [`LockPart`]).
    ghost: bool,
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
pub(super) const FINISHED_MEMORY: usize = 64;

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
    /// Which lock names this group serves (all of them, unsharded).
    ownership: Ownership,
    /// Added to the revision to make a token: raised by an install so the
    /// tokens granted here start above every token the source granted.
    token_offset: Token,
    /// Parts fenced for other groups, by `(epoch, target)`, until dropped.
    outbox: BTreeMap<(u64, GroupId), LockPart>,
}

/// How many ended session ids are remembered.
pub(super) const ENDED_MEMORY: usize = 1024;

impl LockMachine {
    /// Sessions and the revision of their last renewal.
    pub fn sessions(&self) -> impl Iterator<Item = (SessionId, u64)> + '_ {
        self.sessions.iter().map(|(id, s)| (*id, s.renewed))
    }

    /// The count of applied commands: the logical clock that tokens and
    /// the renewal revisions of [`LockMachine::sessions`] are read from.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Which lock names this group serves.
    pub fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    /// The token an acquire applied now would get.
    fn next_token(&self) -> Token {
        self.revision + self.token_offset
    }

    /// `lock` as a read shows it (a lock nobody holds or waits for is free).
    pub fn view(&self, lock: &str) -> LockView {
        match self.locks.get(lock) {
            Some(l) => LockView {
                holder: l.holder.as_ref().map(|c| (c.session, c.token)),
                waiters: l.waiters.iter().map(|c| (c.session, c.token)).collect(),
            },
            None => LockView::default(),
        }
    }

    /// The holder's session and token.
    pub fn holder(&self, lock: &str) -> Option<(SessionId, Token)> {
        self.locks.get(lock)?.holder.as_ref().map(|c| (c.session, c.token))
    }

    /// Live sessions of `owner`'s principal.
    /// Locks held or waited for by the sessions of `owner`'s principal.
    fn claims_of_principal(&self, owner: NodeId) -> usize {
        let p = principal(owner);
        self.sessions
            .values()
            .filter(|s| !s.ghost && principal(s.owner) == p)
            .map(|s| s.locks.len())
            .sum()
    }

    fn sessions_of_principal(&self, owner: NodeId) -> usize {
        let p = principal(owner);
        self.sessions
            .values()
            .filter(|s| !s.ghost && principal(s.owner) == p)
            .count()
    }

    /// Checks the table's internal consistency (run after every command).
    /// Every assertion here is an invariant no command sequence can break;
    /// `tests.rs` drives arbitrary sequences through `apply` to hold it so.
    pub(super) fn check(&self) {
        if let Err(broken) = self.consistency() {
            panic!("lock table invariant broken: {broken}");
        }
    }

    /// The table's internal consistency: what every command keeps, and what
    /// a snapshot from a peer must show before it replaces this table.
    fn consistency(&self) -> Result<(), &'static str> {
        let ensure = |ok: bool, broken: &'static str| if ok { Ok(()) } else { Err(broken) };
        let ghosts: Vec<&Session> = self.sessions.values().filter(|s| s.ghost).collect();
        ensure(
            self.sessions.len() - ghosts.len() <= MAX_SESSIONS,
            "more sessions than the table holds",
        )?;
        // Moved-in locks come on top of the table's own: an install never
        // fails for want of room, and each such lock is held by a ghost.
        let moved_in: usize = ghosts.iter().map(|s| s.locks.len()).sum();
        ensure(
            self.locks.len() <= MAX_LOCKS + moved_in,
            "more locks than the table holds",
        )?;
        ensure(
            ghosts.iter().all(|s| !s.locks.is_empty()),
            "a ghost session that holds nothing",
        )?;
        ensure(
            self.locks
                .keys()
                .all(|name| self.ownership.serves(hash_key(name.as_bytes()))),
            "a lock of a name the group does not serve",
        )?;
        let mut per_principal: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
        for s in self.sessions.values().filter(|s| !s.ghost) {
            let (sessions, claims) = per_principal.entry(principal(s.owner)).or_default();
            *sessions += 1;
            *claims += s.locks.len();
        }
        ensure(
            per_principal.values().all(|&(n, _)| n <= MAX_SESSIONS_PER_PRINCIPAL),
            "a principal over its session quota",
        )?;
        ensure(
            per_principal.values().all(|&(_, n)| n <= MAX_LOCKS_PER_PRINCIPAL),
            "a principal over its lock quota",
        )?;
        for (name, lock) in &self.locks {
            let Some(holder) = lock.holder.as_ref() else {
                return Err("a lock without holder stays in the table");
            };
            ensure(lock.waiters.len() <= MAX_WAITERS, "more waiters than a lock holds")?;
            // Revision tokens increase along the line (hinted ones, from
            // the planted bug, are whatever the leader's counter said).
            let mut prev = 0;
            for claim in lock.holder.iter().chain(&lock.waiters) {
                let Some(s) = self.sessions.get(&claim.session) else {
                    return Err("a claim of a session that does not exist");
                };
                ensure(s.locks.contains(name), "a session does not track its claim")?;
                if !claim.hinted {
                    ensure(claim.token > prev, "queue tokens do not increase")?;
                    prev = claim.token;
                }
            }
            ensure(
                holder.hinted || holder.token <= lock.last_granted,
                "a holder's token above the last granted",
            )?;
            ensure(
                lock.last_granted <= self.next_token(),
                "a token granted above the next token",
            )?;
            ensure(
                lock.waiters.iter().all(|c| !self.sessions[&c.session].ghost),
                "a ghost session waits",
            )?;
        }
        for (id, s) in &self.sessions {
            for name in &s.locks {
                let Some(lock) = self.locks.get(name) else {
                    return Err("a session tracks a lock that does not exist");
                };
                let mut claims = lock.holder.iter().chain(&lock.waiters);
                ensure(
                    claims.any(|c| c.session == *id),
                    "a tracked lock lacks the session's claim",
                )?;
            }
        }
        Ok(())
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
        if !claim.hinted {
            // Revision tokens strictly increase per lock: a claim's token is
            // the revision that queued it, and the line is in that order.
            assert!(
                claim.token > lock.last_granted,
                "token {} granted after {}",
                claim.token,
                lock.last_granted
            );
            lock.last_granted = claim.token;
        }
        lock.holder = Some(claim);
    }

    fn acquire(&mut self, session: SessionId, name: &str, request: u64, wait: bool, hint: Option<Token>) -> LockOutput {
        let s = self.sessions.get(&session).expect("caller checked");
        if s.finished.is_stale(name, request) {
            return LockOutput::Refused(Refusal::StaleRequest);
        }
        if let Some(lock) = self.locks.get_mut(name) {
            // Idempotence: the session's existing claim answers a retry (and
            // a newer request of the same session takes the claim over).
            if let Some(h) = lock.holder.as_mut().filter(|c| c.session == session) {
                h.request = h.request.max(request);
                return LockOutput::Granted { token: h.token };
            }
            let mut ahead = lock.holder.as_ref().map_or(0, |c| c.token);
            for w in lock.waiters.iter_mut() {
                if w.session == session {
                    w.request = w.request.max(request);
                    return LockOutput::Queued { token: w.token, ahead };
                }
                ahead = w.token;
            }
        }
        if self.claims_of_principal(self.sessions[&session].owner) >= MAX_LOCKS_PER_PRINCIPAL {
            return LockOutput::Refused(Refusal::PrincipalLockQuota);
        }
        if !self.locks.contains_key(name) && self.locks.len() >= MAX_LOCKS {
            return LockOutput::Refused(Refusal::TooManyLocks);
        }
        let owner = principal(self.sessions[&session].owner);
        let queued_by_owner = self.locks.get(name).map_or(0, |lock| {
            lock.waiters
                .iter()
                .filter(|c| {
                    self.sessions
                        .get(&c.session)
                        .is_some_and(|s| principal(s.owner) == owner)
                })
                .count()
        });
        let token = hint.unwrap_or(self.next_token());
        let claim = Claim {
            session,
            request,
            token,
            hinted: hint.is_some(),
        };
        let lock = self.locks.entry(name.to_string()).or_default();
        let out = if lock.holder.is_none() {
            Self::grant(lock, claim);
            LockOutput::Granted { token }
        } else if !wait {
            return LockOutput::Busy;
        } else if lock.waiters.len() >= MAX_WAITERS {
            return LockOutput::Refused(Refusal::TooManyWaiters);
        } else if queued_by_owner >= MAX_WAITERS_PER_PRINCIPAL {
            return LockOutput::Refused(Refusal::PrincipalWaiterQuota);
        } else {
            let ahead = lock.waiters.back().or(lock.holder.as_ref()).map_or(0, |c| c.token);
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
            Some(h) if h.session == session && h.token == token => {
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
        // A claim a newer acquire of the session took over is that
        // acquire's: withdrawing an older one leaves it in place.
        if let Some(h) = lock
            .holder
            .as_ref()
            .filter(|c| c.session == session && c.request <= request)
        {
            return LockOutput::Granted { token: h.token };
        }
        s.finished.record(name, request);
        let before = lock.waiters.len();
        lock.waiters.retain(|c| c.session != session || c.request > request);
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
                (h.session == session).then(|| (name.clone(), h.token))
            })
            .collect()
    }

    /// `Open`: a new session owned by `owner`, or a retry by its owner.
    fn open(&mut self, owner: NodeId, session: SessionId) -> LockOutput {
        let revision = self.revision;
        if let Some(s) = self.sessions.get_mut(&session) {
            if s.ghost {
                return LockOutput::Refused(Refusal::SessionReused);
            }
            if s.owner != owner {
                return LockOutput::Refused(Refusal::ForeignSession);
            }
            s.renewed = revision;
            return LockOutput::Opened;
        }
        if self.ended.contains(&session) {
            return LockOutput::Refused(Refusal::SessionReused);
        }
        if self.sessions.len() >= MAX_SESSIONS {
            return LockOutput::Refused(Refusal::TooManySessions);
        }
        if self.sessions_of_principal(owner) >= MAX_SESSIONS_PER_PRINCIPAL {
            return LockOutput::Refused(Refusal::PrincipalQuota);
        }
        let session_state = Session {
            owner,
            renewed: revision,
            ..Session::default()
        };
        self.sessions.insert(session, session_state);
        LockOutput::Opened
    }

    /// A client's request on behalf of `owner`; `hint` only under the
    /// planted bug.
    fn request(&mut self, owner: NodeId, request: &Request, hint: Option<Token>) -> LockOutput {
        let session = request.session();
        if let Request::Open { .. } = request {
            return self.open(owner, session);
        }
        // Every request that names a lock, since each may be remembered
        // (a cancel of an unknown name is, in the session's finished table).
        if let Request::Acquire { lock, .. } | Request::Release { lock, .. } | Request::Cancel { lock, .. } = request {
            if lock.len() > MAX_LOCK_NAME_BYTES {
                return LockOutput::Refused(Refusal::NameTooLong);
            }
        }
        let revision = self.revision;
        let Some(s) = self.sessions.get_mut(&session).filter(|s| !s.ghost) else {
            return LockOutput::SessionExpired;
        };
        if s.owner != owner {
            return LockOutput::Refused(Refusal::ForeignSession);
        }
        s.renewed = revision;
        // After the session checks: a holder whose session a fence ended
        // must hear that (it lost its locks), not that the lock moved.
        if let Request::Acquire { lock, .. } | Request::Release { lock, .. } | Request::Cancel { lock, .. } = request {
            if !self.ownership.serves(hash_key(lock.as_bytes())) {
                return LockOutput::NotServed {
                    epoch: self.ownership.epoch(),
                };
            }
        }
        match request {
            Request::Open { .. } => LockOutput::Opened,
            Request::KeepAlive { .. } => LockOutput::Alive {
                held: self.held(session),
            },
            Request::Acquire {
                lock, request, wait, ..
            } => self.acquire(session, lock, *request, *wait, hint),
            Request::Release { lock, token, .. } => self.release(session, lock, *token),
            Request::Cancel { lock, request, .. } => self.cancel(session, lock, *request),
            Request::Close { .. } => {
                self.end_session(session);
                LockOutput::Released
            }
        }
    }
}

impl StateMachine for LockMachine {
    type Command = LockCommand;
    type Query = LockQuery;
    type Output = LockOutput;

    fn apply(&mut self, command: &LockCommand) -> LockOutput {
        self.revision += 1;
        let out = match command {
            LockCommand::Client { owner, request } => self.request(*owner, request, None),
            LockCommand::Hinted { owner, request, token } => self.request(*owner, request, Some(*token)),
            LockCommand::Expire { session, renewed } => match self.sessions.get(session) {
                Some(s) if s.renewed == *renewed => {
                    self.end_session(*session);
                    LockOutput::Expired
                }
                _ => LockOutput::Ignored,
            },
            LockCommand::Shard(command) => self.shard(command),
        };
        crate::check::run(|| self.check());
        out
    }

    fn query(&self, query: &LockQuery) -> LockOutput {
        match query {
            // A name this group does not serve has no view here: the
            // reader (a status, a waiter watching its place) is sent on.
            LockQuery::Lock { lock } | LockQuery::Watch { lock, .. }
                if !self.ownership.serves(hash_key(lock.as_bytes())) =>
            {
                LockOutput::NotServed {
                    epoch: self.ownership.epoch(),
                }
            }
            LockQuery::Lock { lock } | LockQuery::Watch { lock, .. } => LockOutput::Lock(self.view(lock)),
            LockQuery::Settings => LockOutput::Settings { ttl_ms: 0 },
            LockQuery::Part { epoch, to, from, limit } => {
                let part = self.outbox.get(&(*epoch, *to));
                LockOutput::Part(part.map(|part| part.page(*epoch, *from, (*limit).min(MAX_PAGE_BYTES))))
            }
        }
    }

    fn snapshot(&self) -> Result<Vec<u8>, crate::env::codec::CodecError> {
        codec::encode_state(self)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        let table: LockMachine = codec::decode_state(snapshot)?;
        table.consistency().map_err(SnapshotError::Invalid)?;
        *self = table;
        Ok(())
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;

    fn client(request: Request) -> LockCommand {
        LockCommand::Client {
            owner: 1 << 20,
            request,
        }
    }

    /// A member may send any bytes as a snapshot: a table that decodes but
    /// breaks the table's invariants is refused, not installed to trip an
    /// assertion on the next command.
    #[test]
    fn an_inconsistent_snapshot_is_refused() {
        let mut m = LockMachine::default();
        m.apply(&client(Request::Open { session: 7 }));
        m.apply(&client(Request::Acquire {
            session: 7,
            lock: "a".into(),
            request: 1,
            wait: false,
        }));
        let mut broken = m.clone();
        broken.sessions.clear(); // the lock's holder no longer exists
        let mut r = LockMachine::default();
        assert!(matches!(
            r.restore(&codec::encode(&broken).unwrap()),
            Err(SnapshotError::Invalid(_))
        ));
        assert_eq!(r, LockMachine::default(), "nothing installed");
        r.restore(&m.snapshot().unwrap()).unwrap();
        assert_eq!(r, m);
    }

    /// The check run after every command stops at a broken table.
    #[test]
    #[should_panic(expected = "lock table invariant broken")]
    fn the_check_after_every_command_stops_a_broken_table() {
        let mut m = LockMachine::default();
        m.apply(&client(Request::Open { session: 7 }));
        m.apply(&client(Request::Acquire {
            session: 7,
            lock: "a".into(),
            request: 1,
            wait: false,
        }));
        m.sessions.clear();
        m.check();
    }

    /// A snapshot that gives one principal more sessions than its quota
    /// (which no command sequence can) is refused too.
    #[test]
    fn a_snapshot_over_a_principals_quota_is_refused() {
        let mut m = LockMachine::default();
        m.apply(&client(Request::Open { session: 1 }));
        let mut over = m.clone();
        let session = over.sessions[&1].clone();
        for id in 2..=MAX_SESSIONS_PER_PRINCIPAL as u64 + 1 {
            over.sessions.insert(id, session.clone());
        }
        let mut r = LockMachine::default();
        assert!(matches!(
            r.restore(&codec::encode(&over).unwrap()),
            Err(SnapshotError::Invalid("a principal over its session quota"))
        ));
        over.sessions.remove(&2);
        r.restore(&codec::encode(&over).unwrap()).unwrap();
    }

    /// A snapshot in which two claims on one lock carry the same token is
    /// refused: a token fences one grant only.
    #[test]
    fn a_snapshot_with_a_token_repeated_in_a_line_is_refused() {
        let mut m = LockMachine::default();
        for session in [1, 2] {
            m.apply(&client(Request::Open { session }));
            m.apply(&client(Request::Acquire {
                session,
                lock: "a".into(),
                request: 1,
                wait: true,
            }));
        }
        let line = &m.locks["a"];
        assert_eq!(line.waiters.len(), 1);
        let mut r = LockMachine::default();
        r.restore(&m.snapshot().unwrap()).unwrap();
        let mut repeated = m.clone();
        let lock = repeated.locks.get_mut("a").unwrap();
        lock.waiters[0].token = lock.holder.as_ref().unwrap().token;
        assert!(matches!(
            r.restore(&codec::encode(&repeated).unwrap()),
            Err(SnapshotError::Invalid("queue tokens do not increase"))
        ));
    }

    /// Likewise a snapshot in which one principal claims more locks than
    /// its quota: a table at the quota installs, one lock more is refused.
    #[test]
    fn a_snapshot_over_a_principals_lock_quota_is_refused() {
        let mut m = LockMachine::default();
        m.apply(&client(Request::Open { session: 1 }));
        for n in 0..MAX_LOCKS_PER_PRINCIPAL as u64 {
            m.apply(&client(Request::Acquire {
                session: 1,
                lock: format!("l{n}"),
                request: n + 1,
                wait: false,
            }));
        }
        assert_eq!(m.sessions[&1].locks.len(), MAX_LOCKS_PER_PRINCIPAL);
        let mut r = LockMachine::default();
        r.restore(&m.snapshot().unwrap()).unwrap();
        let mut over = m.clone();
        let extra = over.locks["l0"].clone();
        over.locks.insert("extra".into(), extra);
        over.sessions.get_mut(&1).unwrap().locks.insert("extra".into());
        assert!(matches!(
            r.restore(&codec::encode(&over).unwrap()),
            Err(SnapshotError::Invalid("a principal over its lock quota"))
        ));
        assert_eq!(r, m, "the refused snapshot installed nothing");
    }
}
