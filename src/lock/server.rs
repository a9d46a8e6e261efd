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

use futures::FutureExt;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::machine::{LockCommand, LockMachine, LockOutput, LockQuery, LockView, Request, SessionId};
use super::MAX_SESSIONS;
use crate::env::{codec, Env, NodeId};
use crate::log::node::{drain_ready, execute, next_batch, NodeError, Probe};
use crate::log::{ClientId, Outcome, Output, Raft, RequestId, Response, Role, Term, Wire, WireOf};

/// Configuration of a lock server; build with `..ServerConfig::default()`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The replicated log's settings (elections, heartbeats, limits).
    pub log: crate::log::Config,
    /// Session lease: a session that has not renewed for this long on the
    /// leader's clock is expired. Clients learn it when they open.
    pub ttl: Duration,
    /// Planted bug `UnsyncedToken`: the leader stamps acquires with tokens
    /// from its own counter, written to its disk without sync.
    #[cfg(feature = "planted-bugs")]
    #[doc(hidden)]
    pub unsynced_token: bool,
    /// Planted bug `ClientToken`: a client's `Hinted` command is admitted,
    /// so the client chooses its own fencing token.
    #[cfg(feature = "planted-bugs")]
    #[doc(hidden)]
    pub client_token: bool,
    /// Planted bug `SyncPerExpiry`: each due expiry is proposed and synced
    /// on its own, retried every two heartbeats, and a passed deadline is
    /// served without reading the inbox (the expiry storm that wedges).
    #[cfg(feature = "planted-bugs")]
    #[doc(hidden)]
    pub sync_per_expiry: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            log: crate::log::Config::default(),
            ttl: Duration::from_secs(2),
            #[cfg(feature = "planted-bugs")]
            unsynced_token: false,
            #[cfg(feature = "planted-bugs")]
            client_token: false,
            #[cfg(feature = "planted-bugs")]
            sync_per_expiry: false,
        }
    }
}

/// The planted bugs, read as `false` when the feature is off.
#[derive(Debug, Clone, Copy, Default)]
struct Bugs {
    unsynced_token: bool,
    client_token: bool,
    sync_per_expiry: bool,
}

impl ServerConfig {
    fn bugs(&self) -> Bugs {
        #[cfg(feature = "planted-bugs")]
        return Bugs {
            unsynced_token: self.unsynced_token,
            client_token: self.client_token,
            sync_per_expiry: self.sync_per_expiry,
        };
        #[cfg(not(feature = "planted-bugs"))]
        Bugs::default()
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
    term: Option<Term>,
    /// Session → (renewal revision, local time we first saw it).
    seen: BTreeMap<SessionId, (u64, Duration)>,
    /// Sessions with an `Expire` in flight, and when it was proposed.
    pending: BTreeMap<SessionId, Duration>,
    client: ClientId,
    seq: u64,
    /// Draws each leadership's exactly-once session id (see `poll`).
    rng: ChaCha8Rng,
}

impl LeaseTimer {
    /// `retry`: how long an `Expire` may stay uncommitted before it is
    /// proposed again.
    pub fn new(ttl: Duration, retry: Duration, rng: ChaCha8Rng) -> Self {
        LeaseTimer {
            ttl,
            retry,
            term: None,
            seen: BTreeMap::new(),
            pending: BTreeMap::new(),
            client: 0,
            seq: 0,
            rng,
        }
    }

    /// Looks at the replica after a handler: returns the `Expire` commands
    /// to propose now, as `(client, seq, command)`.
    pub fn poll(&mut self, raft: &Raft<LockMachine>, now: Duration) -> Vec<(ClientId, u64, LockCommand)> {
        if raft.role() != Role::Leader {
            self.term = None;
            self.seen.clear();
            self.pending.clear();
            return vec![];
        }
        if self.term != Some(raft.term()) {
            // A new leadership: every timer starts now.
            self.term = Some(raft.term());
            self.seen.clear();
            self.pending.clear();
            // One exactly-once session per leadership: only this replica
            // proposes under it, in order. Random, because the log's session
            // table is shared with clients: a client that named a predictable
            // id with a huge sequence number would make every later `Expire`
            // a "stale duplicate", and no session would ever expire.
            self.client = self.rng.gen();
            self.seq = 0;
        }
        let machine = raft.state_machine();
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
            self.seq += 1;
            out.push((self.client, self.seq, LockCommand::Expire { session, renewed }));
        }
        out
    }

    /// When [`LeaseTimer::poll`] next has something to do.
    pub fn next_due(&self) -> Duration {
        if self.term.is_none() {
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

/// Runs lock server `env.id()` of the group `members` until storage fails.
/// After a crash, call it again: it rebuilds from `env.load()`.
pub async fn run<E: Env>(
    env: E,
    members: Vec<NodeId>,
    config: ServerConfig,
    probe: Arc<dyn Probe>,
) -> Result<(), NodeError> {
    let records = env.load()?;
    let mut counter = 0u64;
    let mut raft_records = Vec::with_capacity(records.len());
    for r in records {
        if r.len() == COUNTER_MAGIC.len() + 8 && r.starts_with(&COUNTER_MAGIC) {
            counter = u64::from_le_bytes(r[3..].try_into().expect("8 bytes"));
        } else {
            raft_records.push(r);
        }
    }
    let mut raft = Raft::<LockMachine>::recover(
        env.id(),
        &members,
        config.log.clone(),
        env.rng(),
        &raft_records,
        env.now(),
    )?;
    // A proposed expiry commits within a round trip unless this replica
    // stops leading (which resets the timer), so a retry is only a safety
    // net: once a TTL, not every two heartbeats, or a storm of retries
    // would fill the log faster than it commits.
    let retry = if config.bugs().sync_per_expiry {
        config.log.heartbeat_interval * 2
    } else {
        config.ttl
    };
    let mut leases = LeaseTimer::new(config.ttl, retry, env.rng());
    let mut watches = Watches::default();
    loop {
        let deadline = raft.next_deadline().min(leases.next_due()).min(watches.next_due());
        let mut batch = match next_batch::<_, WireOf<LockMachine>>(&env, deadline).await {
            Some(batch) => batch,
            None => {
                let output = raft.on_tick(env.now());
                carry_out(&env, output, probe.as_ref()).await?;
                // A deadline that passed while the last round ran must not
                // keep the inbox unread: the followers' acknowledgements are
                // what commits our proposals. (Under the planted bug the
                // loop only ticks, and an expiry round longer than a
                // heartbeat never reads its inbox again.)
                match env.recv().now_or_never() {
                    Some(first) if !config.bugs().sync_per_expiry => drain_ready(&env, first),
                    _ => Vec::new(),
                }
            }
        };
        batch.retain_mut(|(from, msg)| admit(env.id(), *from, msg, &config));
        answer_settings(&env, &mut batch, &config).await;
        if config.bugs().unsynced_token && raft.role() == Role::Leader {
            for (_, msg) in &mut batch {
                // PLANTED BUG: a token from a local counter whose record is
                // appended but never synced.
                if let Wire::Command { command, .. } = msg {
                    if let LockCommand::Client {
                        owner,
                        request: request @ Request::Acquire { .. },
                    } = command
                    {
                        counter += 1;
                        *command = LockCommand::Hinted {
                            owner: *owner,
                            request: request.clone(),
                            token: counter,
                        };
                        let mut record = COUNTER_MAGIC.to_vec();
                        record.extend_from_slice(&counter.to_le_bytes());
                        env.append(&record)?;
                    }
                }
            }
        }
        if !batch.is_empty() {
            watches.park(&mut batch, &raft, env.now());
            let output = raft.on_messages(env.now(), batch);
            carry_out(&env, output, probe.as_ref()).await?;
        }
        let now = env.now();
        let expiries: Vec<_> = leases
            .poll(&raft, now)
            .into_iter()
            .map(|(client, seq, command)| (env.id(), Wire::Command { client, seq, command }))
            .collect();
        if config.bugs().sync_per_expiry {
            // PLANTED BUG: one proposal, and one sync, per expiry.
            for (from, msg) in expiries {
                let output = raft.on_message(now, from, msg);
                carry_out(&env, output, probe.as_ref()).await?;
            }
        } else if !expiries.is_empty() {
            // Every expiry due now in one batch: one append, one sync, one
            // `Append` per follower, however many sessions vanished at once.
            tracing::debug!(node = env.id(), count = expiries.len(), "proposing expiries");
            let output = raft.on_messages(now, expiries);
            carry_out(&env, output, probe.as_ref()).await?;
        }
        let due = watches.due(&raft, now);
        if !due.is_empty() {
            let output = raft.on_messages(now, due);
            carry_out(&env, output, probe.as_ref()).await?;
        }
    }
}

/// Admission of a message that arrived from `from` (authenticated by the
/// transport). A client command is rebuilt with `owner = from`, whatever
/// the client wrote there; commands only the leader's own machinery may
/// propose (`Expire`, `Hinted`) are dropped. Returns whether to keep it.
///
/// Replica traffic and client reads pass unchanged. A follower needs no
/// admission of its own: it answers every client command `NotLeader` and
/// never forwards one, so only the leader's admitted commands reach the log.
pub fn admit(me: NodeId, from: NodeId, msg: &mut WireOf<LockMachine>, config: &ServerConfig) -> bool {
    let Wire::Command { command, .. } = msg else {
        return true;
    };
    match command {
        LockCommand::Client { owner, .. } => {
            *owner = from;
            true
        }
        LockCommand::Hinted { owner, .. } if config.bugs().client_token => {
            // PLANTED BUG: the client's own token goes into the log.
            *owner = from;
            true
        }
        LockCommand::Hinted { .. } | LockCommand::Expire { .. } => {
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

/// Answers `Settings` reads from this replica's configuration (any
/// replica knows it; no round through the log) and takes them out of
/// `batch`.
async fn answer_settings<E: Env>(env: &E, batch: &mut Vec<(NodeId, WireOf<LockMachine>)>, config: &ServerConfig) {
    let mut answers = Vec::new();
    batch.retain(|(from, msg)| match msg {
        Wire::Read {
            client,
            id,
            query: LockQuery::Settings,
        } => {
            answers.push((*from, *client, *id));
            false
        }
        _ => true,
    });
    let ttl_ms = u64::try_from(config.ttl.as_millis()).unwrap_or(u64::MAX);
    for (to, client, id) in answers {
        let answer: WireOf<LockMachine> = Wire::Response(Response {
            client,
            id: RequestId::Read(id),
            outcome: Outcome::Done(LockOutput::Settings { ttl_ms }),
        });
        if let Ok(bytes) = codec::encode(&answer) {
            let _ = env.send(to, bytes).await;
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
    /// Takes out of `batch` the watches that must wait: this replica leads
    /// and their lock still looks as the client last saw it.
    fn park(&mut self, batch: &mut Vec<(NodeId, WireOf<LockMachine>)>, raft: &Raft<LockMachine>, now: Duration) {
        if raft.role() != Role::Leader {
            return;
        }
        let machine = raft.state_machine();
        batch.retain(|(from, msg)| match msg {
            Wire::Read {
                client,
                id,
                query: LockQuery::Watch { lock, seen: Some(seen) },
            } if self.parked.len() < MAX_SESSIONS && machine.view(lock) == *seen => {
                self.parked.push(Parked {
                    from: *from,
                    client: *client,
                    id: *id,
                    lock: lock.clone(),
                    seen: seen.clone(),
                    until: now + WATCH_PARK,
                });
                false
            }
            _ => true,
        });
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

/// Executes an output, minus answers to our own `Expire` proposals.
async fn carry_out<E: Env>(env: &E, mut output: Output<LockMachine>, probe: &dyn Probe) -> Result<(), NodeError> {
    let me = env.id();
    output.messages.retain(|(to, _)| *to != me);
    execute(env, output, probe).await?;
    Ok(())
}
