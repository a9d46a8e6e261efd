//! The one contract every sans-IO core follows, and the one effect type it
//! answers with.
//!
//! A core — a Raft replica ([`crate::log::Raft`]), a 2PC shard
//! ([`crate::txn::participant::Participant`]) or coordinator
//! ([`crate::txn::coordinator::Coordinator`]) — is a plain struct whose
//! handlers mutate it and return [`Effects`]: records to append (or a whole
//! log to rewrite), whether they must be synced, the messages to send and
//! the events that report what happened. None does I/O or reads a clock.
//!
//! Every engine carries a core's effects out with [`carry_out`], in the one
//! order that makes "durable before visible" hold: persist (rewrite, or
//! append then sync if asked), then report the events, then send — what is
//! reported or sent may promise what was persisted, so a crash during the
//! sync leaves neither seen. One handler's effects are finished before the
//! next handler runs.
//!
//! Two engines run cores: [`serve`], the loop of a core that owns its
//! node's network (the 2PC roles, the simulator's counter tutorial), and
//! [`crate::log::service::run`], the engine of the services hosted on the
//! log, which hands a [`crate::log::Raft`] replica a whole round of
//! messages at once and adds a companion beside it
//! ([`crate::log::service::Companion`]), whose messages it sends after the
//! replica's output is persisted.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::env::{codec, timeout, Env, EnvError, NodeId};
use crate::observe::Observer;

/// What a handler asks its engine to do, in this order: persist
/// (`rewrite`, or `append` then `sync` if `sync`), then send `messages`.
/// `M` is the message type the core sends, `E` the event type it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effects<M, E> {
    /// Encoded records to append to the core's log.
    pub append: Vec<Vec<u8>>,
    /// When set, replaces the whole durable log (it includes everything in
    /// `append`, which is then empty). Durable when `Env::rewrite` returns.
    pub rewrite: Option<Vec<Vec<u8>>>,
    /// Sync the appended records before sending any message.
    pub sync: bool,
    /// Messages to send, each to its node, only once the records are
    /// durable: they may promise what was persisted.
    pub messages: Vec<(NodeId, M)>,
    /// What happened, for the engine to pass to observers (tests, the
    /// simulator's checkers); no effect on the protocol.
    pub events: Vec<E>,
}

impl<M, E> Default for Effects<M, E> {
    fn default() -> Self {
        Effects {
            append: Vec::new(),
            rewrite: None,
            sync: false,
            messages: Vec::new(),
            events: Vec::new(),
        }
    }
}

impl<M, E> Effects<M, E> {
    /// Appends `record`, encoded. Cores bound what a record can hold (keys,
    /// values, commands), so one that does not encode is a bug of the core.
    pub fn record<R: Serialize>(&mut self, record: &R) {
        self.append
            .push(codec::encode(record).expect("a core's records are bounded to encode"));
    }

    /// Makes every record appended so far durable before any message goes.
    pub fn sync(&mut self) {
        self.sync = true;
    }

    /// Sends `msg` to `to` once the records are persisted.
    pub fn send(&mut self, to: NodeId, msg: impl Into<M>) {
        self.messages.push((to, msg.into()));
    }

    /// Sends a copy of `msg` to each of `to`.
    pub fn send_all<T: Clone + Into<M>>(&mut self, to: impl IntoIterator<Item = NodeId>, msg: &T) {
        self.messages.extend(to.into_iter().map(|n| (n, msg.clone().into())));
    }

    /// Reports `event` to observers.
    pub fn event(&mut self, event: E) {
        self.events.push(event);
    }

    /// Adds `other`'s effects after these: its records after these records,
    /// a sync if either asks, its messages and events after these. A
    /// rewrite in either stays a rewrite of everything appended.
    pub fn extend(&mut self, other: Effects<M, E>) {
        match (&mut self.rewrite, other.rewrite) {
            (Some(log), None) => log.extend(other.append),
            (_, Some(log)) => {
                self.rewrite = Some(log);
                self.append.clear();
            }
            (None, None) => self.append.extend(other.append),
        }
        self.sync |= other.sync;
        self.messages.extend(other.messages);
        self.events.extend(other.events);
    }

    /// True when there is nothing to carry out.
    pub fn is_empty(&self) -> bool {
        self.append.is_empty()
            && self.rewrite.is_none()
            && !self.sync
            && self.messages.is_empty()
            && self.events.is_empty()
    }
}

/// The calling contract of a sans-IO core, as its engine sees it: a message
/// or a clock tick in, [`Effects`] out, and when the next tick is due. Each
/// handler checks the core's own invariants where checks are built in
/// ([`crate::check`]), so tests and simulation judge every step.
pub trait Core {
    /// The messages the core handles.
    type In;
    /// The messages it sends.
    type Out;
    /// The events it reports.
    type Event;

    /// One arriving message from `from`.
    fn on_message(&mut self, now: Duration, from: NodeId, msg: Self::In) -> Effects<Self::Out, Self::Event>;

    /// The clock reached [`Core::next_deadline`] (or later).
    fn on_tick(&mut self, now: Duration) -> Effects<Self::Out, Self::Event>;

    /// When the core next needs [`Core::on_tick`]; `Duration::MAX` when
    /// nothing is due.
    fn next_deadline(&self) -> Duration;
}

/// The shortest time between two ticks of a core: each core says when it
/// next needs one ([`Core::next_deadline`]), and this floor keeps a
/// deadline that a tick did not move from spinning the loop.
pub const TICK_FLOOR: Duration = Duration::from_millis(1);

/// Longest wait of an idle loop (a core with nothing due has no deadline;
/// no runtime's sleep should be asked for forever).
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// The one loop of a core that owns its node's network alone (a 2PC role,
/// the tutorial's counter): feeds it each message and its ticks, carrying
/// out each handler's effects before the next handler runs, until storage
/// fails. Frames travel as `Core::Out`, the protocol's envelope; one that
/// does not decode, or is for another role (`Core::In` refuses it), is
/// dropped here. Services on the replicated log run on
/// [`crate::log::service::run`] instead.
pub async fn serve<En: Env, C>(env: En, mut core: C, observer: &dyn Observer<C::Event>) -> Result<(), NodeError>
where
    C: Core,
    C::Out: Serialize + DeserializeOwned,
    C::In: TryFrom<C::Out>,
    C::Event: 'static,
{
    let mut last_tick = env.now();
    loop {
        let due = core.next_deadline().max(last_tick + TICK_FLOOR);
        if let Some((from, msg)) = next_message::<En, C>(&env, due.min(env.now() + IDLE_WAKE)).await {
            let out = core.on_message(env.now(), from, msg);
            carry_out(&env, out, observer, |msg| msg).await?;
        }
        let now = env.now();
        if now >= core.next_deadline().max(last_tick + TICK_FLOOR) {
            last_tick = now;
            let out = core.on_tick(now);
            carry_out(&env, out, observer, |msg| msg).await?;
        }
    }
}

/// Receives the next message for `C`, or `None` when `deadline` is reached
/// first or the frame is not one `C` handles.
async fn next_message<En: Env, C>(env: &En, deadline: Duration) -> Option<(NodeId, C::In)>
where
    C: Core,
    C::Out: DeserializeOwned,
    C::In: TryFrom<C::Out>,
{
    let wait = deadline.saturating_sub(env.now());
    let (from, bytes) = timeout(env, wait, env.recv()).await?;
    match codec::decode::<C::Out>(&bytes).map(C::In::try_from) {
        Ok(Ok(msg)) => Some((from, msg)),
        Ok(Err(_)) => {
            tracing::debug!(node = env.id(), from, "dropping a message meant for another role");
            None
        }
        Err(error) => {
            tracing::warn!(node = env.id(), from, %error, "dropping a malformed message");
            None
        }
    }
}

/// Why an engine stopped its core: the one storage policy of every engine.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The durable records do not rebuild a valid core: it refuses to
    /// start rather than run on a log it cannot trust.
    #[error("recovery failed: {0}")]
    Recover(Box<dyn std::error::Error + Send + Sync>),
    /// Storage failed: the core stops rather than acknowledge anything
    /// that might not be durable.
    #[error("storage failed: {0}")]
    Storage(#[from] EnvError),
}

impl NodeError {
    /// A core's own recovery error.
    pub fn recover(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        NodeError::Recover(Box::new(error))
    }
}

/// Carries out one handler's `effects`: persists them, reports each event
/// to `observer`, then sends each message in the engine's envelope
/// (`wrap`). Returns the events, for an engine that reacts to them.
pub async fn carry_out<En: Env, M, E: 'static, W: Serialize>(
    env: &En,
    effects: Effects<M, E>,
    observer: &dyn Observer<E>,
    wrap: impl Fn(M) -> W,
) -> Result<Vec<E>, EnvError> {
    persist(env, &effects).await?;
    let (me, now) = (env.id(), env.now());
    for event in &effects.events {
        observer.observe(me, now, event);
    }
    for (to, msg) in effects.messages {
        send(env, to, &wrap(msg)).await;
    }
    Ok(effects.events)
}

/// Sends one message; a failed send is a lost message, which every
/// protocol here tolerates.
pub async fn send<En: Env, W: Serialize>(env: &En, to: NodeId, msg: &W) {
    match codec::encode(msg) {
        Ok(bytes) => {
            if let Err(error) = env.send(to, bytes).await {
                tracing::debug!(node = env.id(), to, %error, "send failed");
            }
        }
        // Every core bounds what a message carries (commands, snapshots,
        // keys and values, answers), which makes this unreachable.
        Err(error) => panic!("a core produced an unencodable message: {error}"),
    }
}

/// Persists the storage half of `effects`: the rewrite, or the appends and
/// then the sync if asked.
async fn persist<En: Env, M, E>(env: &En, effects: &Effects<M, E>) -> Result<(), EnvError> {
    if let Some(records) = &effects.rewrite {
        env.rewrite(records).await
    } else {
        for record in &effects.append {
            env.append(record)?;
        }
        if effects.sync {
            env.sync().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Fx = Effects<&'static str, u8>;

    #[test]
    fn extend_keeps_order_and_any_sync() {
        let mut first = Fx::default();
        first.append.push(vec![1]);
        first.send(2, "a");
        first.event(1);
        let mut second = Fx::default();
        second.append.push(vec![2]);
        second.sync();
        second.send(3, "b");
        second.event(2);
        first.extend(second);
        assert_eq!(first.append, vec![vec![1], vec![2]]);
        assert!(first.sync);
        assert_eq!(first.messages, vec![(2, "a"), (3, "b")]);
        assert_eq!(first.events, vec![1, 2]);
    }

    #[test]
    fn a_rewrite_takes_in_what_is_appended_after_it() {
        let mut first = Fx {
            rewrite: Some(vec![vec![0]]),
            ..Fx::default()
        };
        let mut second = Fx::default();
        second.append.push(vec![9]);
        first.extend(second);
        assert_eq!(first.rewrite, Some(vec![vec![0], vec![9]]));
        assert!(first.append.is_empty());

        let mut third = Fx::default();
        third.append.push(vec![5]);
        third.extend(Fx {
            rewrite: Some(vec![vec![7]]),
            ..Fx::default()
        });
        assert_eq!(third.rewrite, Some(vec![vec![7]]), "a later rewrite replaces the log");
        assert!(third.append.is_empty(), "nothing is appended beside a rewrite");
    }

    #[test]
    fn nothing_to_do_is_empty() {
        assert!(Fx::default().is_empty());
        let mut fx = Fx::default();
        fx.sync();
        assert!(!fx.is_empty());
    }
}
