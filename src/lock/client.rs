//! [`LockClient`]: a session with the lock service, over the log's client
//! (leader discovery, retries, exactly-once commands).
//!
//! Lease arithmetic, on this node's clock only: a command that renews the
//! session and was *first sent* at local time `s` proves the servers'
//! timer for it started no earlier than `s`. The servers expire a session
//! after `ttl` on their clocks; clocks may run at different rates, up to a
//! relative drift of `ρ`; so the client trusts its lease until
//! `s + ttl·(1−ρ)` — equivalently `received + ttl·(1−ρ) − round trip`.

use std::time::Duration;

use rand::Rng;

use super::machine::{LockCommand, LockMachine, LockOutput, LockQuery, LockView, Refusal, Request, SessionId, Token};
use crate::env::{Env, NodeId};
use crate::log::client::{Client, ClientError};

/// Client settings. `ttl` must equal the servers' TTL.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub ttl: Duration,
    /// ρ: bound on the relative drift between this client's clock and any
    /// server's (0.25 = a server clock may run up to 1/(1−0.25) times as
    /// fast as ours).
    pub drift_bound: f64,
    /// How long one command is retried across servers before the outcome
    /// is reported unknown.
    pub request_timeout: Duration,
    /// Planted bug `NoRecheck`.
    pub no_recheck: bool,
    /// Planted bug `NoDriftMargin`.
    pub no_drift_margin: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            ttl: Duration::from_secs(2),
            drift_bound: 0.01,
            request_timeout: Duration::from_secs(1),
            no_recheck: false,
            no_drift_margin: false,
        }
    }
}

/// A granted lock. Valid while [`LockClient::is_valid`] says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub lock: String,
    pub token: Token,
}

/// Why a lock operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// Try-acquire: someone holds it.
    #[error("lock is held")]
    Busy,
    /// No answer in time. The operation may still take effect.
    #[error("timed out")]
    Timeout,
    /// The servers expired this session (or it never existed). Open a new one.
    #[error("session expired")]
    SessionExpired,
    /// Release by a session that does not hold the lock with that token.
    #[error("not the owner")]
    NotOwner,
    #[error("refused: {0:?}")]
    Refused(Refusal),
}

/// A lock session bound to one node's env.
pub struct LockClient<E: Env> {
    env: E,
    log: Client<E, LockMachine>,
    session: SessionId,
    next_request: u64,
    /// Local time until which the session lease is trusted (`None`: no
    /// session, or expired).
    valid_until: Option<Duration>,
    last_renewal: Duration,
    config: ClientConfig,
}

impl<E: Env> LockClient<E> {
    /// A client with a fresh session id; call [`LockClient::open`] first.
    pub fn new(env: E, servers: Vec<NodeId>, config: ClientConfig) -> Self {
        assert!((0.0..1.0).contains(&config.drift_bound));
        let session = env.rng().gen();
        let mut log = Client::new(env.clone(), servers);
        log.attempt_timeout = Duration::from_millis(200);
        LockClient {
            env,
            log,
            session,
            next_request: 0,
            valid_until: None,
            last_renewal: Duration::ZERO,
            config,
        }
    }

    pub fn session(&self) -> SessionId {
        self.session
    }

    /// The holder and the waiters (in line order) of `lock`, read
    /// linearizably; renews nothing.
    pub async fn status(&mut self, lock: &str) -> Result<LockView, LockError> {
        let query = LockQuery::Lock { lock: lock.to_string() };
        match self.log.read(query, self.config.request_timeout).await {
            Ok(LockOutput::Lock(view)) => Ok(view),
            Ok(other) => panic!("status answered {other:?}"),
            Err(ClientError::Timeout) => Err(LockError::Timeout),
            Err(ClientError::Rejected(_)) => Err(LockError::Refused(Refusal::NameTooLong)),
        }
    }

    /// Whether the session lease (and every lock it holds) is still valid
    /// on this node's clock.
    pub fn is_valid(&self) -> bool {
        self.valid_until.is_some_and(|t| self.env.now() < t)
    }

    /// How much longer the lease is trusted.
    pub fn valid_for(&self) -> Duration {
        self.valid_until
            .map_or(Duration::ZERO, |t| t.saturating_sub(self.env.now()))
    }

    /// The lease length the client trusts after a renewal.
    fn trusted(&self) -> Duration {
        if self.config.no_drift_margin {
            // PLANTED BUG: trusts the full TTL, as if clocks agreed.
            self.config.ttl
        } else {
            self.config.ttl.mul_f64(1.0 - self.config.drift_bound)
        }
    }

    /// Runs a session request; renews the local lease from its send time.
    /// (`owner` is filled in for form's sake: the server overwrites it with
    /// the node the request came from.)
    async fn command(&mut self, request: Request) -> Result<LockOutput, LockError> {
        let sent = self.env.now();
        let command = LockCommand::Client {
            owner: self.env.id(),
            request,
        };
        let out = match self.log.execute(command, self.config.request_timeout).await {
            Ok(out) => out,
            Err(ClientError::Timeout) => return Err(LockError::Timeout),
            Err(ClientError::Rejected(_)) => return Err(LockError::Refused(Refusal::NameTooLong)),
        };
        match out {
            // A session id another node owns is as good as expired to us.
            LockOutput::SessionExpired | LockOutput::Refused(Refusal::SessionReused | Refusal::ForeignSession) => {
                self.valid_until = None;
                Err(LockError::SessionExpired)
            }
            out => {
                let until = sent + self.trusted();
                self.valid_until = Some(self.valid_until.map_or(until, |t| t.max(until)));
                self.last_renewal = self.last_renewal.max(sent);
                Ok(out)
            }
        }
    }

    /// Opens the session (idempotent). After `SessionExpired`, call
    /// [`LockClient::reopen`] instead.
    pub async fn open(&mut self) -> Result<(), LockError> {
        match self.command(Request::Open { session: self.session }).await? {
            LockOutput::Opened => Ok(()),
            LockOutput::Refused(r) => Err(LockError::Refused(r)),
            other => panic!("open answered {other:?}"),
        }
    }

    /// Starts over with a new session id. The log session stays: a new one
    /// would number its requests from 1 again, and a late reply to the old
    /// one's request with the same number would pass for the answer.
    pub async fn reopen(&mut self) -> Result<(), LockError> {
        self.session = self.env.rng().gen();
        self.valid_until = None;
        self.open().await
    }

    /// Renews the session; returns the locks it holds.
    pub async fn keep_alive(&mut self) -> Result<Vec<(String, Token)>, LockError> {
        match self.command(Request::KeepAlive { session: self.session }).await? {
            LockOutput::Alive { held } => Ok(held),
            other => panic!("keep-alive answered {other:?}"),
        }
    }

    /// Takes `lock` if it is free, without waiting.
    pub async fn try_acquire(&mut self, lock: &str) -> Result<Lease, LockError> {
        self.next_request += 1;
        let request = self.next_request;
        let deadline = self.env.now() + self.config.request_timeout * 2;
        loop {
            let command = self.acquire_command(lock, request, false);
            match self.command(command).await {
                Ok(LockOutput::Granted { token }) => return self.lease(lock, token),
                Ok(LockOutput::Busy) => return Err(LockError::Busy),
                Ok(LockOutput::Queued { .. }) => {
                    // This session was already in line (an earlier acquire
                    // whose cancel was lost): leave, and report busy.
                    self.give_up(lock, request).await;
                    return Err(LockError::Busy);
                }
                Ok(LockOutput::Refused(r)) => return Err(LockError::Refused(r)),
                Ok(other) => panic!("try-acquire answered {other:?}"),
                Err(LockError::Timeout) if self.env.now() < deadline => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn acquire_command(&self, lock: &str, request: u64, wait: bool) -> Request {
        Request::Acquire {
            session: self.session,
            lock: lock.to_string(),
            request,
            wait,
        }
    }

    fn lease(&self, lock: &str, token: Token) -> Result<Lease, LockError> {
        Ok(Lease {
            lock: lock.to_string(),
            token,
        })
    }

    /// Takes `lock`, waiting in line (FIFO) for at most `wait`. On success
    /// the session was confirmed to hold the lock by a round trip that
    /// started after the grant, and the lease is valid.
    pub async fn acquire(&mut self, lock: &str, wait: Duration) -> Result<Lease, LockError> {
        self.next_request += 1;
        let request = self.next_request;
        let deadline = self.env.now() + wait;
        // Enqueue; a timeout is retried with the same request id, which the
        // servers answer with the same grant or place in line.
        let (token, ahead) = loop {
            if self.env.now() >= deadline {
                self.give_up(lock, request).await;
                return Err(LockError::Timeout);
            }
            match self.command(self.acquire_command(lock, request, true)).await {
                Ok(LockOutput::Granted { token }) => return self.lease(lock, token),
                Ok(LockOutput::Queued { token, ahead }) => break (token, ahead),
                Ok(LockOutput::Refused(r)) => return Err(LockError::Refused(r)),
                Ok(other) => panic!("acquire answered {other:?}"),
                Err(LockError::Timeout) => continue,
                Err(e) => return Err(e),
            }
        };
        // Watch the lock: the leader answers once it differs from what we
        // saw last (or after a while), so a grant is noticed at once.
        let mut seen = None;
        loop {
            if self.env.now() >= deadline {
                self.give_up(lock, request).await;
                return Err(LockError::Timeout);
            }
            let polled = self.env.now();
            let query = LockQuery::Watch {
                lock: lock.to_string(),
                seen: seen.take(),
            };
            if let Ok(LockOutput::Lock(view)) = self.log.read(query, self.config.request_timeout).await {
                let LockView { holder, waiters } = &view;
                let (holder, waiters) = (*holder, waiters.clone());
                seen = Some(view);
                if self.config.no_recheck {
                    // PLANTED BUG: the line moved past whoever was ahead,
                    // so "it must be ours now" — no confirmation, and the
                    // lease is timed from this read, which renews nothing.
                    let gone = holder.is_none_or(|(_, t)| t != ahead) && waiters.iter().all(|&(_, t)| t != ahead);
                    if gone {
                        let until = polled + self.trusted();
                        self.valid_until = Some(self.valid_until.map_or(until, |t| t.max(until)));
                        return self.lease(lock, token);
                    }
                } else if holder == Some((self.session, token)) {
                    // Granted: this read ran after the grant, so the session
                    // held the lock then, and the servers cannot have expired
                    // it while our lease from the last renewal lasts. With
                    // little of that left, renew (and re-check) first.
                    if self.valid_for() > self.config.ttl / 2 || self.confirm(lock, token).await? {
                        return self.lease(lock, token);
                    }
                } else if !waiters.contains(&(self.session, token)) {
                    // Out of line: expired, or granted and lost. Ask.
                    if self.confirm(lock, token).await? {
                        return self.lease(lock, token);
                    }
                    return Err(LockError::SessionExpired);
                }
            }
            if self.env.now().saturating_sub(self.last_renewal) >= self.config.ttl / 4 {
                self.confirm(lock, token).await?;
            }
        }
    }

    /// Keep-alive that reports whether we hold `lock` with `token`.
    async fn confirm(&mut self, lock: &str, token: Token) -> Result<bool, LockError> {
        match self.keep_alive().await {
            Ok(held) => Ok(held.iter().any(|(l, t)| l == lock && *t == token) && self.is_valid()),
            Err(LockError::Timeout) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Leaves the line; if the grant raced the cancel, releases the lock.
    async fn give_up(&mut self, lock: &str, request: u64) {
        let cancel = Request::Cancel {
            session: self.session,
            lock: lock.to_string(),
            request,
        };
        if let Ok(LockOutput::Granted { token }) = self.command(cancel).await {
            let _ = self
                .release(&Lease {
                    lock: lock.to_string(),
                    token,
                })
                .await;
        }
    }

    /// Releases a lock this session holds with `lease.token`.
    pub async fn release(&mut self, lease: &Lease) -> Result<(), LockError> {
        let command = Request::Release {
            session: self.session,
            lock: lease.lock.clone(),
            token: lease.token,
        };
        match self.command(command).await? {
            LockOutput::Released => Ok(()),
            LockOutput::NotOwner => Err(LockError::NotOwner),
            other => panic!("release answered {other:?}"),
        }
    }

    /// Ends the session, releasing everything it holds.
    pub async fn close(&mut self) -> Result<(), LockError> {
        self.command(Request::Close { session: self.session }).await?;
        self.valid_until = None;
        Ok(())
    }
}
