//! [`LockClient`]: a session with the lock service, over the log's client
//! (leader discovery, retries, exactly-once commands); [`LockGuard`]: a
//! held lock that renews itself and is released when dropped.
//!
//! Lease arithmetic, on this node's clock only: a command that renews the
//! session and was *first sent* at local time `s` proves the servers'
//! timer for it started no earlier than `s`. The servers expire a session
//! after `ttl` on their clocks; clocks may run at different rates, up to a
//! relative drift of `ρ`; so the client trusts its lease until
//! `s + ttl·(1−ρ)` — equivalently `received + ttl·(1−ρ) − round trip`.
//!
//! Cancellation: every public async method may be dropped at any await
//! (a `tokio::time::timeout`, a `select!` arm). An acquire dropped before
//! it returned withdraws its claim in the background (leaving the line, or
//! releasing a grant that raced the drop), so a caller that gave up is
//! never left holding the lock and never blocks the next one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{watch, OwnedMutexGuard};

use super::machine::{LockCommand, LockMachine, LockOutput, LockQuery, LockView, Refusal, Request, SessionId, Token};
use super::LockBug;
use crate::env::{timeout, Env, NodeId};
use crate::log::client::{Client, ClientError, Inbox};
use crate::log::Reject;

mod guard;
pub use guard::{FenceError, LockGuard};

/// Client settings; build with `..ClientConfig::default()`. The session
/// TTL is not among them: [`LockClient::open`] asks the servers for theirs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// ρ: bound on the relative drift between this client's clock and any
    /// server's (0.25 = a server clock may run up to 1/(1−0.25) times as
    /// fast as ours).
    pub drift_bound: f64,
    /// How long one command is retried across servers before it is
    /// reported [`LockError::Unavailable`].
    pub request_timeout: Duration,
    /// A planted bug (the client's variants of [`LockBug`]; simulator
    /// only).
    #[cfg(feature = "planted-bugs")]
    #[doc(hidden)]
    pub bug: Option<LockBug>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            drift_bound: 0.01,
            request_timeout: Duration::from_secs(1),
            #[cfg(feature = "planted-bugs")]
            bug: None,
        }
    }
}

impl ClientConfig {
    /// Whether planted bug `bug` is on (never without the feature).
    fn has(&self, bug: LockBug) -> bool {
        #[cfg(feature = "planted-bugs")]
        return self.bug == Some(bug);
        #[cfg(not(feature = "planted-bugs"))]
        {
            let _ = bug;
            false
        }
    }
}

/// A granted lock, as plain data: valid while [`LockClient::is_valid`]
/// says so, renewed only by the session's own requests. [`LockGuard`] is
/// the self-renewing, self-releasing form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The lock's name.
    pub lock: String,
    /// The fencing token of this grant.
    pub token: Token,
}

/// Why a lock operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// Try-acquire: another session holds the lock.
    #[error("lock is held by another session")]
    Busy,
    /// No server answered within the request timeout (nothing listening,
    /// or no quorum). A command may still take effect later; an acquire's
    /// claim is withdrawn in the background.
    #[error("no lock server answered (tried {})", tried.join(", "))]
    Unavailable {
        /// The servers asked, as the env names them (with addresses on
        /// the real runtime).
        tried: Vec<String>,
    },
    /// The acquire waited its whole `wait` in line without being granted;
    /// its claim is withdrawn.
    #[error("not granted within {waited:?}")]
    WaitExpired {
        /// How long it waited.
        waited: Duration,
    },
    /// The servers ended this session (expired, closed, or never opened
    /// there): every lock it held is lost. [`LockClient::reopen`] starts
    /// a new one.
    #[error("session expired at the servers; its locks are lost")]
    SessionExpired,
    /// The lease ran out on this client's clock before a renewal got
    /// through: the servers may already have granted the lock to another.
    #[error("lease ran out before a renewal got through")]
    LeaseExpired,
    /// This session does not hold the lock with that token (released,
    /// or lost).
    #[error("this session does not hold the lock with that token")]
    NotOwner,
    /// The servers refused the request.
    #[error("refused: {}", describe(.0))]
    Refused(Refusal),
    /// Called before [`LockClient::open`] succeeded.
    #[error("the session is not open: call LockClient::open first")]
    NotOpen,
    /// This group of a sharded deployment does not serve the lock (it
    /// moved, or never was here): ask the group that serves it, in a ring
    /// view of at least `epoch`. The session stays valid.
    #[error("this group does not serve the lock (ring epoch {epoch})")]
    NotServed {
        /// The latest epoch the group took part in.
        epoch: u64,
    },
    /// The directory routes the lock to a group this client was not
    /// given the servers of.
    #[error("the ring view routes the lock to group {group}, whose servers this client does not know")]
    UnknownGroup {
        /// The group.
        group: crate::shard::GroupId,
    },
    /// An answer that makes no sense for the request (a server of another
    /// version or service).
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

fn describe(refusal: &Refusal) -> &'static str {
    match refusal {
        Refusal::TooManySessions => "the servers hold as many sessions as they allow",
        Refusal::TooManyLocks => "the servers hold as many locks as they allow",
        Refusal::TooManyWaiters => "the lock has as many waiters as allowed",
        Refusal::PrincipalWaiterQuota => "this principal has as many sessions waiting for the lock as it may",
        Refusal::NameTooLong => "the lock name is too long",
        Refusal::StaleRequest => "a newer request of this session already finished",
        Refusal::SessionReused => "the session id was used before",
        Refusal::ForeignSession => "the session belongs to another client",
        Refusal::PrincipalQuota => "this principal holds as many sessions as it may",
        Refusal::PrincipalLockQuota => "this principal holds or waits for as many locks as it may",
    }
}

fn unexpected(what: &str, out: &LockOutput) -> LockError {
    LockError::Protocol(format!("{what} answered {out:?}"))
}

/// A handle on one lock session. `Clone` and `&self`: every clone shares
/// the session, so many tasks can take locks through one client.
///
/// ```no_run
/// # async fn demo(client: ringfence::lock::LockClient<ringfence::real::RealEnv>) -> Result<(), ringfence::lock::LockError> {
/// use std::time::Duration;
/// client.open().await?; // agrees on the TTL with the servers
/// let guard = client.lock("ledger", Duration::from_secs(5)).await?;
/// println!("holding with fencing token {}", guard.token());
/// // ... work; the session renews in the background while `guard` lives ...
/// guard.release().await?; // or drop it: released in the background
/// # Ok(()) }
/// ```
///
/// Two APIs share the session: [`LockClient::lock`] returns a
/// [`LockGuard`] (renewed in the background, released on drop, exclusive
/// among the tasks of this client); [`LockClient::acquire`] returns a
/// plain [`Lease`] that the caller renews ([`LockClient::keep_alive`]) and
/// releases ([`LockClient::release`]). A session holds a lock at most
/// once, so two `acquire`s of one name through one client get the same
/// grant: use `lock` for exclusion between tasks.
pub struct LockClient<E: Env> {
    shared: Arc<Shared<E>>,
}

impl<E: Env> Clone for LockClient<E> {
    fn clone(&self) -> Self {
        LockClient {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<E: Env> {
    env: E,
    servers: Vec<NodeId>,
    config: ClientConfig,
    inbox: Arc<Inbox<E>>,
    /// Log clients not in use: each carries one request at a time, so
    /// concurrent operations take one each.
    idle: Mutex<Vec<Client<E, LockMachine>>>,
    state: Mutex<State>,
    /// Serializes the session (re)opening that `lock` does by itself.
    opening: tokio::sync::Mutex<()>,
    /// Per lock name, held by whichever task of this client acquires or
    /// holds it through `lock` (and by the background withdrawal of a
    /// dropped one), so tasks sharing the session exclude each other.
    names: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    guards: Mutex<Guards>,
}

struct State {
    session: SessionId,
    opened: bool,
    /// The servers' TTL, learned at open.
    ttl: Option<Duration>,
    next_request: u64,
    /// Local time until which the session lease is trusted.
    valid_until: Option<Duration>,
    last_renewal: Duration,
}

/// The live guards, which the renewal task watches.
#[derive(Default)]
struct Guards {
    live: BTreeMap<String, GuardEntry>,
    /// Numbers registrations, so a renewal only judges guards that existed
    /// when it was sent.
    registered: u64,
    renewing: bool,
}

struct GuardEntry {
    token: Token,
    registered: u64,
    lost: watch::Sender<Option<LockError>>,
}

/// A log client on loan from the pool, returned when dropped (also when
/// the operation using it is cancelled: a late answer to its abandoned
/// request is told apart by sequence number).
struct Pooled<'a, E: Env> {
    shared: &'a Shared<E>,
    client: Option<Client<E, LockMachine>>,
}

impl<E: Env> std::ops::Deref for Pooled<'_, E> {
    type Target = Client<E, LockMachine>;
    fn deref(&self) -> &Self::Target {
        self.client.as_ref().expect("present until dropped")
    }
}

impl<E: Env> std::ops::DerefMut for Pooled<'_, E> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.client.as_mut().expect("present until dropped")
    }
}

impl<E: Env> Drop for Pooled<'_, E> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            lock(&self.shared.idle).push(client);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A claim an acquire has sent and not yet settled. Dropped armed (the
/// acquire was cancelled, or its outcome is unknown), it withdraws the
/// claim in the background.
struct Claim<E: Env> {
    shared: Arc<Shared<E>>,
    session: SessionId,
    lock: String,
    request: u64,
    local: Option<OwnedMutexGuard<()>>,
    armed: bool,
}

impl<E: Env> Claim<E> {
    /// The claim is settled: nothing to withdraw.
    fn settle(mut self) -> Option<OwnedMutexGuard<()>> {
        self.armed = false;
        self.local.take()
    }
}

impl<E: Env> Drop for Claim<E> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let shared = self.shared.clone();
        let (session, name, request) = (self.session, std::mem::take(&mut self.lock), self.request);
        // The name stays locked for this client's other tasks until the
        // withdrawal is through: an acquire of ours before then would be
        // answered with this very claim.
        let local = self.local.take();
        self.shared.env.spawn(async move {
            let _local = local;
            shared.give_up(session, &name, request).await;
        });
    }
}

impl<E: Env> LockClient<E> {
    /// A client with a fresh session id; call [`LockClient::open`] first.
    /// The client reads `env`'s inbox: nothing else on that node may.
    pub fn new(env: E, servers: Vec<NodeId>, config: ClientConfig) -> Self {
        let inbox = Inbox::new(env.clone());
        Self::sharing(env, inbox, servers, config)
    }

    /// A client that shares `inbox` with the node's other clients: one per
    /// group of a sharded lock service, say, each with its own session.
    pub fn sharing(env: E, inbox: Arc<Inbox<E>>, servers: Vec<NodeId>, config: ClientConfig) -> Self {
        assert!((0.0..1.0).contains(&config.drift_bound));
        assert!(!servers.is_empty());
        let session = env.rng().gen();
        LockClient {
            shared: Arc::new(Shared {
                inbox,
                env,
                servers,
                config,
                idle: Mutex::new(Vec::new()),
                state: Mutex::new(State {
                    session,
                    opened: false,
                    ttl: None,
                    next_request: 0,
                    valid_until: None,
                    last_renewal: Duration::ZERO,
                }),
                opening: tokio::sync::Mutex::new(()),
                names: Mutex::new(BTreeMap::new()),
                guards: Mutex::new(Guards::default()),
            }),
        }
    }

    /// The current session's id.
    pub fn session(&self) -> SessionId {
        lock(&self.shared.state).session
    }

    /// The servers' session TTL, once [`LockClient::open`] learned it.
    pub fn ttl(&self) -> Option<Duration> {
        lock(&self.shared.state).ttl
    }

    /// Whether the session lease (and every lock it holds) is still valid
    /// on this node's clock.
    pub fn is_valid(&self) -> bool {
        self.shared.is_valid()
    }

    /// How much longer the lease is trusted.
    pub fn valid_for(&self) -> Duration {
        self.shared.valid_for()
    }

    /// The holder and the waiters (in line order) of `lock`, read
    /// linearizably; renews nothing. Cancel-safe: a read has no effect.
    pub async fn status(&self, lock: &str) -> Result<LockView, LockError> {
        let query = LockQuery::Lock { lock: lock.to_string() };
        let mut log = self.shared.log();
        match log.read(query, self.shared.config.request_timeout).await {
            Ok(LockOutput::Lock(view)) => Ok(view),
            Ok(LockOutput::NotServed { epoch }) => Err(LockError::NotServed { epoch }),
            Ok(other) => Err(unexpected("status", &other)),
            Err(e) => Err(self.shared.client_error(e)),
        }
    }

    /// Asks the servers for their TTL, then opens the session (idempotent).
    /// After `SessionExpired`, call [`LockClient::reopen`] instead.
    /// Cancel-safe: dropped, the session may or may not be open; calling
    /// `open` again settles it.
    pub async fn open(&self) -> Result<(), LockError> {
        self.shared.open().await
    }

    /// Starts over with a new session id; the old session's guards are
    /// lost. Cancel-safe like [`LockClient::open`].
    pub async fn reopen(&self) -> Result<(), LockError> {
        self.shared.reopen().await
    }

    /// Renews the session; returns the locks it holds. Cancel-safe: a
    /// renewal is idempotent.
    pub async fn keep_alive(&self) -> Result<Vec<(String, Token)>, LockError> {
        self.shared.keep_alive().await
    }

    /// Takes `lock` if it is free, without waiting. Cancel-safe: dropped
    /// before it returns, a grant that raced the drop is released in the
    /// background.
    pub async fn try_acquire(&self, lock: &str) -> Result<Lease, LockError> {
        self.shared
            .clone()
            .try_acquire(lock, None)
            .await
            .map(|(lease, _)| lease)
    }

    /// Takes `lock`, waiting in line (FIFO) for at most `wait`. On success
    /// the session was confirmed to hold the lock by a round trip that
    /// started after the grant, and the lease is valid. Cancel-safe:
    /// dropped before it returns, the claim leaves the line in the
    /// background (releasing the lock if the grant raced the drop).
    pub async fn acquire(&self, lock: &str, wait: Duration) -> Result<Lease, LockError> {
        self.shared
            .clone()
            .acquire(lock, wait, None)
            .await
            .map(|(lease, _)| lease)
    }

    /// Takes `lock` as [`LockClient::acquire`] does, exclusively among the
    /// tasks of this client, and returns a guard that keeps the session
    /// renewed while it lives and releases the lock when dropped. Opens a
    /// new session if the last one ran out. Cancel-safe as `acquire`.
    pub async fn lock(&self, lock: &str, wait: Duration) -> Result<LockGuard<E>, LockError> {
        let start = self.shared.env.now();
        let local = self.shared.local_lock(lock);
        let Some(local) = timeout(&self.shared.env, wait, local.lock_owned()).await else {
            return Err(LockError::WaitExpired { waited: wait });
        };
        self.shared.ensure_session().await?;
        let left = wait.saturating_sub(self.shared.env.now().saturating_sub(start));
        let (lease, local) = self.shared.clone().acquire(lock, left, Some(local)).await?;
        Ok(self.shared.guard(lease, local))
    }

    /// Takes `lock` if it is free, as a self-renewing [`LockGuard`]; `Busy`
    /// also when another task of this client holds it. Cancel-safe as
    /// [`LockClient::try_acquire`].
    pub async fn try_lock(&self, lock: &str) -> Result<LockGuard<E>, LockError> {
        let Ok(local) = self.shared.local_lock(lock).try_lock_owned() else {
            return Err(LockError::Busy);
        };
        self.shared.ensure_session().await?;
        let (lease, local) = self.shared.clone().try_acquire(lock, Some(local)).await?;
        Ok(self.shared.guard(lease, local))
    }

    /// Releases a lock this session holds with `lease.token`. Cancel-safe
    /// in that calling it again is: dropped, the lock may or may not be
    /// released yet, and a second release answers `NotOwner` if it was.
    pub async fn release(&self, lease: &Lease) -> Result<(), LockError> {
        let session = self.session();
        self.shared.release(session, lease).await
    }

    /// Ends the session, releasing everything it holds; its guards are
    /// lost. Cancel-safe: closing again is harmless.
    pub async fn close(&self) -> Result<(), LockError> {
        let session = self.session();
        self.shared.command(Request::Close { session }).await?;
        lock(&self.shared.state).opened = false;
        self.shared.forget_session(LockError::SessionExpired);
        Ok(())
    }
}

impl<E: Env> Shared<E> {
    fn log(&self) -> Pooled<'_, E> {
        let client = lock(&self.idle).pop().unwrap_or_else(|| {
            let mut client = Client::sharing(self.inbox.clone(), self.servers.clone());
            client.attempt_timeout = Duration::from_millis(200);
            client
        });
        Pooled {
            shared: self,
            client: Some(client),
        }
    }

    fn client_error(&self, error: ClientError) -> LockError {
        match error {
            ClientError::Rejected(Reject::TooLarge) => LockError::Refused(Refusal::NameTooLong),
            ClientError::Timeout | ClientError::Rejected(Reject::Busy | Reject::Reconfiguration(_)) => {
                LockError::Unavailable {
                    tried: self.servers.iter().map(|&s| self.env.peer_name(s)).collect(),
                }
            }
        }
    }

    fn is_valid(&self) -> bool {
        lock(&self.state).valid_until.is_some_and(|t| self.env.now() < t)
    }

    fn valid_for(&self) -> Duration {
        lock(&self.state)
            .valid_until
            .map_or(Duration::ZERO, |t| t.saturating_sub(self.env.now()))
    }

    fn ttl(&self) -> Result<Duration, LockError> {
        let state = lock(&self.state);
        match state.ttl {
            Some(ttl) if state.opened => Ok(ttl),
            _ => Err(LockError::NotOpen),
        }
    }

    /// The lease length the client trusts after a renewal.
    fn trusted(&self, ttl: Duration) -> Duration {
        if self.config.has(LockBug::NoDriftMargin) {
            // PLANTED BUG: trusts the full TTL, as if clocks agreed.
            ttl
        } else {
            ttl.mul_f64(1.0 - self.config.drift_bound)
        }
    }

    fn next_request(&self) -> (SessionId, u64) {
        let mut state = lock(&self.state);
        state.next_request += 1;
        (state.session, state.next_request)
    }

    /// Runs a session request on a pooled log client.
    async fn command(&self, request: Request) -> Result<LockOutput, LockError> {
        let mut log = self.log();
        self.command_on(&mut log, request).await
    }

    /// Runs a session request; renews the local lease from its send time.
    /// (`owner` is filled in for form's sake: the server overwrites it with
    /// the node the request came from.)
    async fn command_on(&self, log: &mut Client<E, LockMachine>, request: Request) -> Result<LockOutput, LockError> {
        let ttl = lock(&self.state).ttl.ok_or(LockError::NotOpen)?;
        let session = request.session();
        let sent = self.env.now();
        let command = LockCommand::Client {
            owner: self.env.id(),
            request,
        };
        let out = log
            .execute(command, self.config.request_timeout)
            .await
            .map_err(|e| self.client_error(e))?;
        let mut state = lock(&self.state);
        let current = state.session == session;
        match out {
            // A session id another node owns is as good as expired to us.
            LockOutput::SessionExpired | LockOutput::Refused(Refusal::SessionReused | Refusal::ForeignSession) => {
                if current {
                    state.valid_until = None;
                }
                Err(LockError::SessionExpired)
            }
            out => {
                if current {
                    let until = sent + self.trusted(ttl);
                    state.valid_until = Some(state.valid_until.map_or(until, |t| t.max(until)));
                    state.last_renewal = state.last_renewal.max(sent);
                }
                match out {
                    LockOutput::NotServed { epoch } => Err(LockError::NotServed { epoch }),
                    out => Ok(out),
                }
            }
        }
    }

    async fn open(&self) -> Result<(), LockError> {
        let settings = {
            let mut log = self.log();
            log.read(LockQuery::Settings, self.config.request_timeout).await
        };
        let ttl = match settings {
            Ok(LockOutput::Settings { ttl_ms }) if ttl_ms > 0 => Duration::from_millis(ttl_ms),
            Ok(other) => return Err(unexpected("settings", &other)),
            Err(e) => return Err(self.client_error(e)),
        };
        let session = {
            let mut state = lock(&self.state);
            state.ttl = Some(ttl);
            state.session
        };
        match self.command(Request::Open { session }).await? {
            LockOutput::Opened => {
                lock(&self.state).opened = true;
                Ok(())
            }
            LockOutput::Refused(r) => Err(LockError::Refused(r)),
            other => Err(unexpected("open", &other)),
        }
    }

    /// Starts over with a new session id. The log sessions stay: a new one
    /// would number its requests from 1 again, and a late reply to the old
    /// one's request with the same number would pass for the answer.
    async fn reopen(&self) -> Result<(), LockError> {
        {
            let mut state = lock(&self.state);
            state.session = self.env.rng().gen();
            state.opened = false;
            state.valid_until = None;
        }
        self.forget_session(LockError::SessionExpired);
        self.open().await
    }

    /// Opens a session if none is valid (for `lock`/`try_lock`, which keep
    /// their own session going). Only after an explicit `open`.
    async fn ensure_session(&self) -> Result<(), LockError> {
        self.ttl()?;
        if self.is_valid() {
            return Ok(());
        }
        let _opening = self.opening.lock().await;
        if self.is_valid() {
            return Ok(());
        }
        self.reopen().await
    }

    async fn keep_alive(&self) -> Result<Vec<(String, Token)>, LockError> {
        self.ttl()?;
        let session = lock(&self.state).session;
        match self.command(Request::KeepAlive { session }).await? {
            LockOutput::Alive { held } => Ok(held),
            other => Err(unexpected("keep-alive", &other)),
        }
    }

    fn local_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut names = lock(&self.names);
        // Forget names nobody uses, so the map stays as small as the set
        // of names in use.
        names.retain(|_, m| Arc::strong_count(m) > 1 || m.try_lock().is_err());
        names.entry(name.to_string()).or_default().clone()
    }

    fn claim(
        self: &Arc<Self>,
        session: SessionId,
        name: &str,
        request: u64,
        local: Option<OwnedMutexGuard<()>>,
    ) -> Claim<E> {
        Claim {
            shared: self.clone(),
            session,
            lock: name.to_string(),
            request,
            local,
            armed: true,
        }
    }

    async fn try_acquire(
        self: Arc<Self>,
        name: &str,
        local: Option<OwnedMutexGuard<()>>,
    ) -> Result<(Lease, Option<OwnedMutexGuard<()>>), LockError> {
        self.ttl()?;
        let (session, request) = self.next_request();
        let claim = self.claim(session, name, request, local);
        let deadline = self.env.now() + self.config.request_timeout * 2;
        let mut log = self.log();
        loop {
            let command = acquire_command(session, name, request, false);
            match self.command_on(&mut log, command).await {
                Ok(LockOutput::Granted { token }) => return Ok((lease(name, token), claim.settle())),
                Ok(LockOutput::Busy) => {
                    claim.settle();
                    return Err(LockError::Busy);
                }
                Ok(LockOutput::Queued { .. }) => {
                    // This session was already in line (an earlier acquire
                    // whose cancel was lost): leave, and report busy.
                    self.give_up(session, name, request).await;
                    claim.settle();
                    return Err(LockError::Busy);
                }
                Ok(LockOutput::Refused(r)) => {
                    claim.settle();
                    return Err(LockError::Refused(r));
                }
                Ok(other) => return Err(unexpected("try-acquire", &other)),
                Err(LockError::Unavailable { .. }) if self.env.now() < deadline => continue,
                Err(LockError::SessionExpired) => {
                    claim.settle();
                    return Err(LockError::SessionExpired);
                }
                // Unknown outcome: the armed claim withdraws it.
                Err(e) => return Err(e),
            }
        }
    }

    async fn acquire(
        self: Arc<Self>,
        name: &str,
        wait: Duration,
        local: Option<OwnedMutexGuard<()>>,
    ) -> Result<(Lease, Option<OwnedMutexGuard<()>>), LockError> {
        let ttl = self.ttl()?;
        let (session, request) = self.next_request();
        let claim = self.claim(session, name, request, local);
        let deadline = self.env.now() + wait;
        let mut log = self.log();
        // Enqueue; an unanswered request is retried with the same request
        // id, which the servers answer with the same grant or place in line.
        let (token, ahead) = loop {
            match self
                .command_on(&mut log, acquire_command(session, name, request, true))
                .await
            {
                Ok(LockOutput::Granted { token }) => return Ok((lease(name, token), claim.settle())),
                Ok(LockOutput::Queued { token, ahead }) => break (token, ahead),
                Ok(LockOutput::Refused(r)) => {
                    claim.settle();
                    return Err(LockError::Refused(r));
                }
                Ok(other) => return Err(unexpected("acquire", &other)),
                // Never reached the servers: say so (the armed claim
                // withdraws whatever may yet arrive).
                Err(e @ LockError::Unavailable { .. }) if self.env.now() >= deadline => return Err(e),
                Err(LockError::Unavailable { .. }) => continue,
                Err(LockError::SessionExpired) => {
                    claim.settle();
                    return Err(LockError::SessionExpired);
                }
                Err(e) => return Err(e),
            }
        };
        // Watch the lock: the leader answers once it differs from what we
        // saw last (or after a while), so a grant is noticed at once.
        let mut seen = None;
        loop {
            if self.env.now() >= deadline {
                self.give_up(session, name, request).await;
                claim.settle();
                return Err(LockError::WaitExpired { waited: wait });
            }
            let polled = self.env.now();
            let query = LockQuery::Watch {
                lock: name.to_string(),
                seen: seen.take(),
            };
            let answer = log.read(query, self.config.request_timeout).await;
            if let Ok(LockOutput::NotServed { epoch }) = answer {
                // The name moved to another group while we waited: the
                // fence dropped our place in line, nothing to withdraw.
                claim.settle();
                return Err(LockError::NotServed { epoch });
            }
            if let Ok(LockOutput::Lock(view)) = answer {
                let LockView { holder, waiters } = &view;
                let (holder, waiters) = (*holder, waiters.clone());
                seen = Some(view);
                if self.config.has(LockBug::NoRecheck) {
                    // PLANTED BUG: the line moved past whoever was ahead,
                    // so "it must be ours now" — no confirmation, and the
                    // lease is timed from this read, which renews nothing.
                    let gone = holder.is_none_or(|(_, t)| t != ahead) && waiters.iter().all(|&(_, t)| t != ahead);
                    if gone {
                        let mut state = lock(&self.state);
                        let until = polled + self.trusted(ttl);
                        state.valid_until = Some(state.valid_until.map_or(until, |t| t.max(until)));
                        drop(state);
                        return Ok((lease(name, token), claim.settle()));
                    }
                } else if holder == Some((session, token)) {
                    // Granted: this read ran after the grant, so the session
                    // held the lock then, and the servers cannot have expired
                    // it while our lease from the last renewal lasts. With
                    // little of that left, renew (and re-check) first.
                    if self.valid_for() > ttl / 2 || self.confirm(&mut log, session, name, token).await? {
                        return Ok((lease(name, token), claim.settle()));
                    }
                } else if !waiters.contains(&(session, token)) {
                    // Out of line: expired, or granted and lost. Ask.
                    if self.confirm(&mut log, session, name, token).await? {
                        return Ok((lease(name, token), claim.settle()));
                    }
                    claim.settle();
                    return Err(LockError::SessionExpired);
                }
            }
            let last_renewal = lock(&self.state).last_renewal;
            if self.env.now().saturating_sub(last_renewal) >= ttl / 4 {
                self.confirm(&mut log, session, name, token).await?;
            }
        }
    }

    /// Keep-alive that reports whether we hold `lock` with `token`.
    async fn confirm(
        &self,
        log: &mut Client<E, LockMachine>,
        session: SessionId,
        name: &str,
        token: Token,
    ) -> Result<bool, LockError> {
        match self.command_on(log, Request::KeepAlive { session }).await {
            Ok(LockOutput::Alive { held }) => Ok(held.iter().any(|(l, t)| l == name && *t == token) && self.is_valid()),
            Ok(other) => Err(unexpected("keep-alive", &other)),
            Err(LockError::Unavailable { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Leaves the line; if the grant raced the cancel, releases the lock.
    /// Retried while the session may still hold the claim.
    async fn give_up(&self, session: SessionId, name: &str, request: u64) {
        let Ok(ttl) = self.ttl() else { return };
        let until = self.env.now() + ttl;
        while self.env.now() < until {
            let cancel = Request::Cancel {
                session,
                lock: name.to_string(),
                request,
            };
            match self.command(cancel).await {
                Ok(LockOutput::Granted { token }) => {
                    let _ = self.release(session, &lease(name, token)).await;
                    return;
                }
                Err(LockError::Unavailable { .. }) => continue,
                _ => return,
            }
        }
    }

    async fn release(&self, session: SessionId, lease: &Lease) -> Result<(), LockError> {
        let command = Request::Release {
            session,
            lock: lease.lock.clone(),
            token: lease.token,
        };
        match self.command(command).await? {
            LockOutput::Released => Ok(()),
            LockOutput::NotOwner => Err(LockError::NotOwner),
            other => Err(unexpected("release", &other)),
        }
    }

    /// Registers a guard for a fresh grant and makes sure the session is
    /// being renewed.
    fn guard(self: &Arc<Self>, lease: Lease, local: Option<OwnedMutexGuard<()>>) -> LockGuard<E> {
        let (tx, rx) = watch::channel(None);
        let session = lock(&self.state).session;
        let mut guards = lock(&self.guards);
        guards.registered += 1;
        let entry = GuardEntry {
            token: lease.token,
            registered: guards.registered,
            lost: tx,
        };
        guards.live.insert(lease.lock.clone(), entry);
        if !guards.renewing {
            guards.renewing = true;
            self.env.spawn(Self::renew(Arc::downgrade(self)));
        }
        LockGuard {
            shared: self.clone(),
            session,
            lease,
            lost: rx,
            local,
            released: false,
        }
    }

    /// Drops a guard's entry (it was released or dropped).
    fn unregister(&self, name: &str, token: Token) {
        let mut guards = lock(&self.guards);
        if guards.live.get(name).is_some_and(|g| g.token == token) {
            guards.live.remove(name);
        }
    }

    /// Tells every live guard it is lost.
    fn forget_session(&self, why: LockError) {
        let mut guards = lock(&self.guards);
        for (_, entry) in std::mem::take(&mut guards.live) {
            let _ = entry.lost.send(Some(why.clone()));
        }
    }

    /// Keeps the session renewed while any guard lives: a renewal a third
    /// of a TTL after the last, each bounded by what is left of the lease;
    /// guards whose lock the servers no longer list, or whose lease ran
    /// out, are told so. It holds the client only weakly while it sleeps:
    /// the guards keep the client alive, and a client whose last handle
    /// is dropped closes its session at once, not at the next renewal.
    async fn renew(client: Weak<Self>) {
        loop {
            let (env, pause) = {
                let Some(this) = client.upgrade() else { return };
                let mut guards = lock(&this.guards);
                if guards.live.is_empty() {
                    guards.renewing = false;
                    return;
                }
                drop(guards);
                let state = lock(&this.state);
                let next = state.last_renewal + state.ttl.unwrap_or_default() / 3;
                drop(state);
                (this.env.clone(), next.saturating_sub(this.env.now()))
            };
            env.sleep(pause).await;
            let Some(this) = client.upgrade() else { return };
            this.renew_once().await;
        }
    }

    /// One renewal on behalf of the live guards.
    async fn renew_once(&self) {
        let left = self.valid_for();
        if left.is_zero() {
            self.forget_session(LockError::LeaseExpired);
            return;
        }
        let sent = lock(&self.guards).registered;
        match timeout(&self.env, left, self.keep_alive()).await {
            None => self.forget_session(LockError::LeaseExpired),
            Some(Ok(held)) => {
                let mut guards = lock(&self.guards);
                guards.live.retain(|name, g| {
                    let kept = g.registered > sent || held.iter().any(|(l, t)| l == name && *t == g.token);
                    if !kept {
                        let _ = g.lost.send(Some(LockError::NotOwner));
                    }
                    kept
                });
            }
            Some(Err(LockError::Unavailable { .. })) => {}
            Some(Err(e)) => self.forget_session(e),
        }
    }
}

impl<E: Env> Drop for Shared<E> {
    /// The last handle is gone: end the session in the background, so
    /// whatever it holds is free now rather than a TTL from now.
    fn drop(&mut self) {
        let state = lock(&self.state);
        if !state.opened {
            return;
        }
        let session = state.session;
        drop(state);
        let mut log = lock(&self.idle)
            .pop()
            .unwrap_or_else(|| Client::sharing(self.inbox.clone(), self.servers.clone()));
        let give_up = self.config.request_timeout;
        self.env.spawn(async move {
            let close = LockCommand::Client {
                owner: 0,
                request: Request::Close { session },
            };
            let _ = log.execute(close, give_up).await;
        });
    }
}

fn acquire_command(session: SessionId, lock: &str, request: u64, wait: bool) -> Request {
    Request::Acquire {
        session,
        lock: lock.to_string(),
        request,
        wait,
    }
}

fn lease(lock: &str, token: Token) -> Lease {
    Lease {
        lock: lock.to_string(),
        token,
    }
}
