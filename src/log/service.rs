//! The one engine under every service hosted on the replicated log: the
//! plain log, the lock service and the replicated coordinator all run on
//! [`run`], each with a [`Companion`].
//!
//! A replicated state machine cannot notice time passing, propose commands
//! of its own, or speak a protocol beside the log's. A companion does those
//! things, as a sans-IO core beside the [`Raft`] replica: it sees every
//! arriving message first, the replica's events after each handler, and
//! its own timers; it answers with effects pushed into an [`Out`]. The
//! engine owns everything else, once for every service:
//!
//! - **Batched receive.** Messages already waiting when the replica wakes
//!   are handled as one batch ([`drain_ready`]), and a deadline that passed
//!   while a round ran never leaves the inbox unread (the followers'
//!   acknowledgements are what commit the leader's proposals).
//! - **One proposer session per (replica, term).** A companion proposes
//!   bare commands; the engine sends them in order under the exactly-once
//!   session `(this replica, term)`. The log keys its sessions by sender, so
//!   no client can name this one, however it picks its ids (a client that
//!   could would make every later proposal a "stale duplicate" with one
//!   huge sequence number), and a term has at most one leader.
//! - **The term-change reset.** [`Companion::on_leadership`] runs whenever
//!   this replica starts or stops leading, before anything else sees the
//!   new role.
//! - **One sync per round.** All the proposals (and the log messages a
//!   companion passes on) of one round go to the replica in one
//!   [`Raft::on_messages`]: one append, one sync and one `Append` per
//!   follower, however many there are (an expiry storm of a thousand
//!   sessions costs one sync, not a thousand).
//! - **Self-replies dropped.** The log answers a proposal to its proposer;
//!   answers addressed to this replica are not sent.
//! - **One envelope.** Log traffic and the service's own travel as one
//!   [`Companion::Wire`]; [`Companion::wrap`] puts a log message into it.
//! - **One storage policy.** A failed append, sync or rewrite stops the
//!   replica with [`NodeError::Storage`]: it never acknowledges what may
//!   not be durable. Records that do not rebuild a replica stop it with
//!   [`NodeError::Recover`].
//!
//! The order inside a round is the one that is safe: persist (and sync if
//! asked) *before* sending, because the messages may promise what was
//! persisted; one output is finished before the next handler runs.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{select, Either};
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::membership::Boot;
use super::raft::{Output, Raft, Role, WireOf};
use super::state_machine::StateMachine;
use super::types::{ClientId, Event, Term, Wire};
use super::Config;
pub use crate::effects::NodeError;
use crate::effects::{self, send};
use crate::env::{codec, Env, NodeId};
use crate::observe::Observer;

/// What a service adds to a replica of the log. Every handler gets the
/// replica read-only (role, term, leader, applied state) and pushes its
/// effects into `out`; none does I/O or reads a clock.
pub trait Companion: Send + 'static {
    /// The replicated state machine.
    type Machine: StateMachine;
    /// Every frame a replica of this service receives or sends: the log's
    /// traffic and the service's own.
    type Wire: Serialize + DeserializeOwned + Send + 'static;

    /// Puts one of the log's messages into the envelope.
    fn wrap(msg: WireOf<Self::Machine>) -> Self::Wire;

    /// Takes the companion's own records out of what storage holds at
    /// start, returning the log's. Most companions keep none.
    fn recover(&mut self, records: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        records
    }

    /// One arriving message, before the replica sees any of its batch:
    /// return the log message to hand to the replica, or `None` when the
    /// companion answered it, parked it or refused it.
    fn on_message(
        &mut self,
        now: Duration,
        from: NodeId,
        msg: Self::Wire,
        replica: &Raft<Self::Machine>,
        out: &mut Out<Self::Machine, Self::Wire>,
    ) -> Option<WireOf<Self::Machine>>;

    /// This replica started leading a term (`replica.role()` is leader)
    /// or stopped leading: drop what belonged to the old leadership. A
    /// companion that keeps nothing per leadership leaves it empty.
    fn on_leadership(
        &mut self,
        _now: Duration,
        _replica: &Raft<Self::Machine>,
        _out: &mut Out<Self::Machine, Self::Wire>,
    ) {
    }

    /// The events of one replica handler (entries applied, snapshots...).
    fn on_events(
        &mut self,
        _now: Duration,
        _events: &[Event],
        _replica: &Raft<Self::Machine>,
        _out: &mut Out<Self::Machine, Self::Wire>,
    ) {
    }

    /// Called once per round, after the round's messages: the companion's
    /// timers (none by default).
    fn on_tick(&mut self, _now: Duration, _replica: &Raft<Self::Machine>, _out: &mut Out<Self::Machine, Self::Wire>) {}

    /// When [`Companion::on_tick`] next has something to do (never by
    /// default).
    fn next_deadline(&self) -> Duration {
        Duration::MAX
    }
}

/// The effects a companion asks for.
#[derive(Debug)]
pub struct Out<M: StateMachine, W> {
    me: NodeId,
    /// The proposer session of the term this replica leads.
    session: Option<ClientId>,
    seq: u64,
    /// For the replica, in order: proposals (from this replica) and the
    /// messages the companion passes on for their senders.
    pub to_log: Vec<(NodeId, WireOf<M>)>,
    /// For the network, sent after the replica's output is persisted.
    pub messages: Vec<(NodeId, W)>,
    /// The companion's own records, appended before the round's log
    /// output (and durable only with the log's next sync).
    pub records: Vec<Vec<u8>>,
}

impl<M: StateMachine, W> Out<M, W> {
    /// Effects of replica `me`; while it leads term `leading`, proposals go
    /// out under the session that term names (module docs).
    pub fn new(me: NodeId, leading: Option<Term>) -> Self {
        Out {
            me,
            session: leading,
            seq: 0,
            to_log: Vec::new(),
            messages: Vec::new(),
            records: Vec::new(),
        }
    }

    /// Proposes `command` to the log under this leadership's session, after
    /// every proposal made before it. Returns false (and proposes nothing)
    /// when the replica does not lead.
    pub fn propose(&mut self, command: M::Command) -> bool {
        let Some(client) = self.session else {
            return false;
        };
        self.seq += 1;
        let seq = self.seq;
        self.to_log.push((self.me, Wire::Command { client, seq, command }));
        true
    }

    /// Hands `msg` to the replica as if it had just arrived from `from`
    /// (a request the companion held back, now due).
    pub fn pass(&mut self, from: NodeId, msg: WireOf<M>) {
        self.to_log.push((from, msg));
    }

    /// Sends `msg` to `to` once the round's log output is durable.
    pub fn send(&mut self, to: NodeId, msg: W) {
        self.messages.push((to, msg));
    }

    /// The commands proposed since the last round, in order.
    pub fn proposals(&self) -> impl Iterator<Item = &M::Command> {
        self.to_log.iter().filter_map(move |(from, msg)| match msg {
            Wire::Command { command, .. } if *from == self.me => Some(command),
            _ => None,
        })
    }

    /// A new leadership (or none): proposals start a fresh session.
    fn lead(&mut self, leading: Option<Term>) {
        self.session = leading;
        self.seq = 0;
    }
}

/// A service that is the state machine alone: every message goes to the
/// replica. The plain replicated log runs on it.
#[derive(Debug)]
pub struct Plain<S>(std::marker::PhantomData<fn() -> S>);

impl<S> Default for Plain<S> {
    fn default() -> Self {
        Plain(std::marker::PhantomData)
    }
}

impl<S: StateMachine> Companion for Plain<S> {
    type Machine = S;
    type Wire = WireOf<S>;

    fn wrap(msg: WireOf<S>) -> WireOf<S> {
        msg
    }

    fn on_message(
        &mut self,
        _: Duration,
        _: NodeId,
        msg: WireOf<S>,
        _: &Raft<S>,
        _: &mut Out<S, WireOf<S>>,
    ) -> Option<WireOf<S>> {
        Some(msg)
    }
}

/// Runs the plain replicated log: replica `env.id()` of `members` serving
/// `S` with no companion. See [`run`].
pub async fn run_plain<E: Env, S: StateMachine>(
    env: E,
    (members, boot): (Vec<NodeId>, Boot),
    config: Config,
    observer: Arc<dyn Observer<Event>>,
) -> Result<(), NodeError> {
    run(env, (members, boot), config, Plain::<S>::default(), observer).await
}

/// Runs replica `env.id()` of the group `members` with `companion` until
/// storage fails. Restart after a crash by calling it again: it rebuilds
/// from `env.load()`. `boot` says how an empty disk starts
/// ([`Raft::recover`]).
pub async fn run<E: Env, C: Companion>(
    env: E,
    (members, boot): (Vec<NodeId>, Boot),
    config: Config,
    companion: C,
    observer: Arc<dyn Observer<Event>>,
) -> Result<(), NodeError> {
    let records = env.load()?;
    let mut engine = Engine::start(&env, (members, boot), config, companion, records, observer)?;
    // A new disk's identity record is made durable before anything else.
    let output = engine.raft.on_tick(env.now());
    engine.carry_out(output).await?;
    loop {
        engine.round().await?;
    }
}

/// One replica with its companion, and the state the engine keeps for it.
struct Engine<'e, E: Env, C: Companion> {
    env: &'e E,
    raft: Raft<C::Machine>,
    companion: C,
    out: Out<C::Machine, C::Wire>,
    /// The term this replica leads, as last told to the companion.
    leading: Option<Term>,
    observer: Arc<dyn Observer<Event>>,
}

impl<'e, E: Env, C: Companion> Engine<'e, E, C> {
    fn start(
        env: &'e E,
        (members, boot): (Vec<NodeId>, Boot),
        config: Config,
        mut companion: C,
        records: Vec<Vec<u8>>,
        observer: Arc<dyn Observer<Event>>,
    ) -> Result<Self, NodeError> {
        let records = companion.recover(records);
        let raft = Raft::recover(env.id(), &members, boot, config, env.rng(), &records, env.now())
            .map_err(NodeError::recover)?;
        tracing::debug!(
            node = env.id(),
            term = raft.term(),
            last = raft.last_index(),
            "replica recovered"
        );
        Ok(Engine {
            env,
            raft,
            companion,
            out: Out::new(env.id(), None),
            leading: None,
            observer,
        })
    }

    /// Waits for messages or the next deadline, then handles what came and
    /// the companion's timers, each followed by everything it set off.
    async fn round(&mut self) -> Result<(), NodeError> {
        let deadline = self.raft.next_deadline().min(self.companion.next_deadline());
        let batch = match next_batch::<_, C::Wire>(self.env, deadline).await {
            Some(batch) => batch,
            None => {
                let now = self.env.now();
                if now >= self.raft.next_deadline() {
                    let output = self.raft.on_tick(now);
                    self.carry_out(output).await?;
                }
                // What arrived while the last round ran is read now: a
                // deadline that keeps passing must not starve the inbox.
                match self.env.recv().now_or_never() {
                    Some(first) => drain_ready(self.env, first),
                    None => Vec::new(),
                }
            }
        };
        if !batch.is_empty() {
            let now = self.env.now();
            for (from, msg) in batch {
                if let Some(msg) = self.companion.on_message(now, from, msg, &self.raft, &mut self.out) {
                    self.out.pass(from, msg);
                }
            }
            self.settle().await?;
        }
        let now = self.env.now();
        self.companion.on_tick(now, &self.raft, &mut self.out);
        self.settle().await
    }

    /// Carries out what the companion asked for, and what that sets off,
    /// until it asks for nothing more: its records, then everything for the
    /// replica in one handler, then its messages.
    async fn settle(&mut self) -> Result<(), NodeError> {
        loop {
            for record in std::mem::take(&mut self.out.records) {
                self.env.append(&record)?;
            }
            let to_log = std::mem::take(&mut self.out.to_log);
            let messages = std::mem::take(&mut self.out.messages);
            let handled = !to_log.is_empty();
            if handled {
                let output = self.raft.on_messages(self.env.now(), to_log);
                self.carry_out(output).await?;
            }
            for (to, msg) in messages {
                send(self.env, to, &msg).await;
            }
            if !handled && self.out.messages.is_empty() && self.out.records.is_empty() {
                return Ok(());
            }
        }
    }

    /// Executes one replica output, then tells the companion about a change
    /// of leadership and about the output's events.
    async fn carry_out(&mut self, mut output: Output<C::Machine>) -> Result<(), NodeError> {
        let me = self.env.id();
        output.messages.retain(|(to, _)| *to != me);
        let events = effects::carry_out(self.env, output, &*self.observer, C::wrap).await?;
        let now = self.env.now();
        let leading = (self.raft.role() == Role::Leader).then(|| self.raft.term());
        if leading != self.leading {
            self.leading = leading;
            self.out.lead(leading);
            self.companion.on_leadership(now, &self.raft, &mut self.out);
        }
        self.companion.on_events(now, &events, &self.raft, &mut self.out);
        Ok(())
    }
}

/// The messages that arrive before `deadline` (see [`drain_ready`]), or
/// `None` once it has passed on this node's clock.
pub async fn next_batch<E: Env, M: DeserializeOwned>(env: &E, deadline: Duration) -> Option<Vec<(NodeId, M)>> {
    let now = env.now();
    if now >= deadline {
        return None;
    }
    let recv = std::pin::pin!(env.recv());
    let sleep = std::pin::pin!(env.sleep(deadline - now));
    match select(recv, sleep).await {
        Either::Left((first, _)) => Some(drain_ready(env, first)),
        Either::Right(((), _)) => None,
    }
}

/// Most messages handled as one batch.
pub const MAX_BATCH: usize = 256;

/// `first` and the messages already waiting behind it (at most
/// [`MAX_BATCH`] in all), decoded; undecodable ones are dropped and logged.
pub fn drain_ready<E: Env, M: DeserializeOwned>(env: &E, first: (NodeId, Vec<u8>)) -> Vec<(NodeId, M)> {
    let mut batch = Vec::new();
    let mut next = Some(first);
    let mut taken = 0;
    while let Some((from, bytes)) = next.take() {
        taken += 1;
        match codec::decode(&bytes) {
            Ok(msg) => batch.push((from, msg)),
            Err(error) => tracing::debug!(node = env.id(), from, %error, "dropping undecodable message"),
        }
        if taken < MAX_BATCH {
            // Cancel-safe receive, polled once: a message already there.
            next = env.recv().now_or_never();
        }
    }
    batch
}
