//! The lock server: a Raft replica running [`LockMachine`], plus the one
//! thing a replicated state machine cannot do by itself — notice that time
//! has passed.
//!
//! Only the leader measures leases, on its own clock: it remembers, per
//! session, when it first saw the session's latest renewal (or when it became
//! leader, whichever is later), and once a TTL has passed on its clock it
//! proposes `Expire { session, renewed }` through the log. Every replica
//! applies that command the same way, and ignores it if the session renewed
//! in the meantime. So time enters the replicated state only as committed
//! commands, and a deposed leader's stale opinion can never commit on its own.
//!
//! Why a new leader may start every timer at its election: any renewal that
//! commits was stored by a majority, one member of which voted for the new
//! leader *after* storing it, so the renewal's request was sent before the
//! election — the client's lease, measured from its send time, started
//! earlier than the new leader's timer (see `docs/lock.md`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::machine::{LockCommand, LockMachine, LockOutput, LockQuery, LockView, Request, SessionId};
use super::{LockBug, MAX_SESSIONS};
use crate::env::{Env, NodeId};
use crate::log::membership::{is_operator, Boot};
use crate::log::service::{self, Companion, NodeError, Out};
use crate::log::{ClientId, Outcome, Raft, RequestId, Response, Role, Wire, WireOf};
use crate::observe::Observer;

/// Configuration of a lock server; build with `..ServerConfig::default()`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The replicated log's settings (elections, heartbeats, limits).
    pub log: crate::log::Config,
    /// Session lease: a session that has not renewed for this long on the
    /// leader's clock is expired. Clients learn it when they open.
    pub ttl: Duration,
    /// The group joins a sharded deployment ([`crate::shard`]): it takes
    /// no client command until an operator's `Assign` applied, so it never
    /// serves a name as an unsharded group would (every name). Only the
    /// group that founds a deployment runs without it.
    pub joining: bool,
    /// A planted bug (the server's variants of [`LockBug`]).
    #[cfg(feature = "planted-bugs")]
    #[doc(hidden)]
    pub bug: Option<LockBug>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            log: crate::log::Config::default(),
            ttl: Duration::from_secs(2),
            joining: false,
            #[cfg(feature = "planted-bugs")]
            bug: None,
        }
    }
}

impl ServerConfig {
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

/// Marks the planted bug's counter records among the log's records.
const COUNTER_MAGIC: [u8; 3] = [0xFF, b'T', b'K'];

/// The leader's view of session leases. Volatile: rebuilt (conservatively,
/// from "now") whenever this replica becomes leader.
#[derive(Debug)]
pub struct LeaseTimer {
    ttl: Duration,
    retry: Duration,
    /// Whether this replica leads (it measures leases only then).
    leading: bool,
    /// Session → (renewal revision, local time we first saw it).
    seen: BTreeMap<SessionId, (u64, Duration)>,
    /// Sessions with an `Expire` in flight, and when it was proposed.
    pending: BTreeMap<SessionId, Duration>,
}

impl LeaseTimer {
    /// `retry`: how long an `Expire` may stay uncommitted before it is
    /// proposed again.
    pub fn new(ttl: Duration, retry: Duration) -> Self {
        LeaseTimer {
            ttl,
            retry,
            leading: false,
            seen: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }

    /// This replica started leading a term (every timer starts now, at the
    /// next poll) or stopped leading.
    pub fn lead(&mut self, leading: bool) {
        self.leading = leading;
        self.seen.clear();
        self.pending.clear();
    }

    /// Looks at the applied state after a round: returns the `Expire`
    /// commands to propose now.
    pub fn poll(&mut self, machine: &LockMachine, now: Duration) -> Vec<LockCommand> {
        if !self.leading {
            return vec![];
        }
        let live: BTreeMap<SessionId, u64> = machine.sessions().collect();
        self.seen.retain(|s, _| live.contains_key(s));
        self.pending.retain(|s, _| live.contains_key(s));
        let mut out = Vec::new();
        for (&session, &renewed) in &live {
            let entry = self.seen.entry(session).or_insert((renewed, now));
            if entry.0 != renewed {
                *entry = (renewed, now);
                self.pending.remove(&session);
            }
            if now.saturating_sub(entry.1) < self.ttl {
                continue;
            }
            if self
                .pending
                .get(&session)
                .is_some_and(|&at| now.saturating_sub(at) < self.retry)
            {
                continue;
            }
            self.pending.insert(session, now);
            out.push(LockCommand::Expire { session, renewed });
        }
        out
    }

    /// When [`LeaseTimer::poll`] next has something to do.
    pub fn next_due(&self) -> Duration {
        if !self.leading {
            return Duration::MAX;
        }
        self.seen
            .iter()
            .map(|(s, (_, since))| match self.pending.get(s) {
                Some(&at) => at + self.retry,
                None => *since + self.ttl,
            })
            .min()
            .unwrap_or(Duration::MAX)
    }
}

/// Runs lock server `env.id()` of the group `members` until storage fails;
/// `boot` says how an empty disk starts (a founder of the group, or a node
/// joining it: [`crate::log::membership::founding`] for the first).
/// After a crash, call it again: it rebuilds from `env.load()`.
pub async fn run<E: Env>(
    env: E,
    group: (Vec<NodeId>, Boot),
    config: ServerConfig,
    observer: Arc<dyn Observer<crate::log::Event>>,
) -> Result<(), NodeError> {
    let log = config.log.clone();
    let companion = LockService::new(env.id(), config);
    service::run(env, group, log, companion, observer).await
}

/// The lock service's companion on the log: admission of client commands,
/// the leader's lease timer, watches parked at the leader, and `Settings`
/// answered without a round through the log.
pub struct LockService {
    me: NodeId,
    config: ServerConfig,
    leases: LeaseTimer,
    watches: Watches,
    /// The planted bug's token counter, as its records last left it.
    counter: u64,
}

impl LockService {
    /// The companion of lock server `me`.
    pub fn new(me: NodeId, config: ServerConfig) -> Self {
        // A proposed expiry commits within a round trip unless this replica
        // stops leading (which resets the timer), so a retry is only a safety
        // net: once a TTL, not every two heartbeats, or a storm of retries
        // would fill the log faster than it commits.
        let retry = if config.has(LockBug::ExpiryRetryTooSoon) {
            // PLANTED BUG: a retry timer shorter than a round trip.
            config.log.heartbeat_interval / 4
        } else {
            config.ttl
        };
        LockService {
            me,
            leases: LeaseTimer::new(config.ttl, retry),
            watches: Watches::default(),
            counter: 0,
            config,
        }
    }
}

impl Companion for LockService {
    type Machine = LockMachine;
    type Wire = WireOf<LockMachine>;

    fn wrap(msg: WireOf<LockMachine>) -> WireOf<LockMachine> {
        msg
    }

    fn recover(&mut self, records: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut log = Vec::with_capacity(records.len());
        for r in records {
            if r.len() == COUNTER_MAGIC.len() + 8 && r.starts_with(&COUNTER_MAGIC) {
                self.counter = u64::from_le_bytes(r[3..].try_into().expect("8 bytes"));
            } else {
                log.push(r);
            }
        }
        log
    }

    fn on_message(
        &mut self,
        now: Duration,
        from: NodeId,
        mut msg: WireOf<LockMachine>,
        replica: &Raft<LockMachine>,
        out: &mut Out<LockMachine, WireOf<LockMachine>>,
    ) -> Option<WireOf<LockMachine>> {
        if !admit(self.me, from, &mut msg, &self.config) {
            return None;
        }
        let unassigned = self.config.joining && replica.state_machine().ownership().is_unsharded();
        if let (true, Wire::Command { command, .. }) = (unassigned, &msg) {
            if !matches!(command, LockCommand::Shard(_)) {
                tracing::debug!(node = self.me, from, "not assigned yet: ignoring a client command");
                return None;
            }
        }
        if let Wire::Read {
            client,
            id,
            query: LockQuery::Settings,
        } = msg
        {
            // Any replica knows its configuration: no round through the log.
            let ttl_ms = u64::try_from(self.config.ttl.as_millis()).unwrap_or(u64::MAX);
            out.send(
                from,
                Wire::Response(Response {
                    client,
                    id: RequestId::Read(id),
                    outcome: Outcome::Done(LockOutput::Settings { ttl_ms }),
                }),
            );
            return None;
        }
        if self.config.has(LockBug::UnsyncedToken) && replica.role() == Role::Leader {
            self.stamp_own_token(&mut msg, out);
        }
        self.watches.park(from, msg, replica, now)
    }

    fn on_leadership(&mut self, _: Duration, replica: &Raft<LockMachine>, _: &mut Out<LockMachine, Self::Wire>) {
        self.leases.lead(replica.role() == Role::Leader);
    }

    fn on_tick(&mut self, now: Duration, replica: &Raft<LockMachine>, out: &mut Out<LockMachine, Self::Wire>) {
        let expiries = self.leases.poll(replica.state_machine(), now);
        if !expiries.is_empty() {
            tracing::debug!(node = self.me, count = expiries.len(), "proposing expiries");
        }
        for expiry in expiries {
            out.propose(expiry);
        }
        for (from, read) in self.watches.due(replica, now) {
            out.pass(from, read);
        }
    }

    fn next_deadline(&self) -> Duration {
        self.leases.next_due().min(self.watches.next_due())
    }
}

impl LockService {
    /// PLANTED BUG [`LockBug::UnsyncedToken`]: the leader stamps an acquire with a
    /// token from its own counter, whose record is appended but not synced.
    fn stamp_own_token(&mut self, msg: &mut WireOf<LockMachine>, out: &mut Out<LockMachine, WireOf<LockMachine>>) {
        if let Wire::Command {
            command:
                command @ LockCommand::Client {
                    request: Request::Acquire { .. },
                    ..
                },
            ..
        } = msg
        {
            let LockCommand::Client { owner, request } = command else {
                unreachable!("matched above")
            };
            self.counter += 1;
            *command = LockCommand::Hinted {
                owner: *owner,
                request: request.clone(),
                token: self.counter,
            };
            let mut record = COUNTER_MAGIC.to_vec();
            record.extend_from_slice(&self.counter.to_le_bytes());
            out.records.push(record);
        }
    }
}

/// Admission of a message that arrived from `from` (authenticated by the
/// transport). A client command is rebuilt with `owner = from`, whatever
/// the client wrote there; commands only the leader's own machinery may
/// propose (`Expire`, `Hinted`) are dropped. Returns whether to keep it.
///
/// Configuration requests and shard commands pass from operators only
/// ([`crate::log::membership::OPERATOR_IDS`], which the real transport
/// grants only to holders of the cluster secret): any client could
/// otherwise remove the members.
///
/// Replica traffic and client reads pass unchanged. A follower needs no
/// admission of its own: it answers every client command `NotLeader` and
/// never forwards one, so only the leader's admitted commands reach the log.
pub fn admit(me: NodeId, from: NodeId, msg: &mut WireOf<LockMachine>, config: &ServerConfig) -> bool {
    if let Wire::Reconfigure { change, .. } = msg {
        if is_operator(from) || config.has(LockBug::AnyoneReconfigures) {
            // PLANTED BUG (the second condition): anyone reconfigures.
            return true;
        }
        tracing::warn!(
            node = me,
            from,
            ?change,
            "dropping a configuration request from the network"
        );
        return false;
    }
    let Wire::Command { command, .. } = msg else {
        return true;
    };
    match command {
        LockCommand::Client { owner, .. } => {
            *owner = from;
            true
        }
        LockCommand::Hinted { owner, .. } if config.has(LockBug::ClientToken) => {
            // PLANTED BUG: the client's own token goes into the log.
            *owner = from;
            true
        }
        // Moving lock names between groups is an operator's procedure:
        // a client that could fence would take names out of service.
        LockCommand::Shard(_) if is_operator(from) => true,
        LockCommand::Hinted { .. } | LockCommand::Expire { .. } | LockCommand::Shard(_) => {
            tracing::warn!(
                node = me,
                from,
                ?command,
                "dropping an internal lock command from the network"
            );
            false
        }
    }
}

/// Longest a watch waits at the leader: well under the client's
/// per-attempt timeout, so a parked watch is not taken for a dead leader.
pub const WATCH_PARK: Duration = Duration::from_millis(100);

/// A watch the leader holds until its lock changes.
struct Parked {
    from: NodeId,
    client: ClientId,
    id: u64,
    lock: String,
    seen: LockView,
    until: Duration,
}

/// Watches parked at the leader (volatile: a new leader starts with none,
/// and the clients' retries find it).
#[derive(Default)]
struct Watches {
    parked: Vec<Parked>,
}

impl Watches {
    /// Parks `msg` if it is a watch that must wait: this replica leads and
    /// the lock still looks as the client last saw it. Returns it otherwise.
    fn park(
        &mut self,
        from: NodeId,
        msg: WireOf<LockMachine>,
        replica: &Raft<LockMachine>,
        now: Duration,
    ) -> Option<WireOf<LockMachine>> {
        if replica.role() != Role::Leader || self.parked.len() >= MAX_SESSIONS {
            return Some(msg);
        }
        match msg {
            Wire::Read {
                client,
                id,
                query: LockQuery::Watch { lock, seen: Some(seen) },
            } if replica.state_machine().view(&lock) == seen => {
                self.parked.push(Parked {
                    from,
                    client,
                    id,
                    lock,
                    seen,
                    until: now + WATCH_PARK,
                });
                None
            }
            msg => Some(msg),
        }
    }

    /// The parked watches to answer now, as reads for the log to confirm:
    /// their lock changed, they waited long enough, or we stopped leading.
    fn due(&mut self, raft: &Raft<LockMachine>, now: Duration) -> Vec<(NodeId, WireOf<LockMachine>)> {
        let leading = raft.role() == Role::Leader;
        let machine = raft.state_machine();
        let (due, parked) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p: &Parked| !leading || now >= p.until || machine.view(&p.lock) != p.seen);
        self.parked = parked;
        due.into_iter()
            .map(|p: Parked| {
                let query = LockQuery::Watch {
                    lock: p.lock,
                    seen: None,
                };
                let read = Wire::Read {
                    client: p.client,
                    id: p.id,
                    query,
                };
                (p.from, read)
            })
            .collect()
    }

    fn next_due(&self) -> Duration {
        self.parked.iter().map(|p| p.until).min().unwrap_or(Duration::MAX)
    }
}
