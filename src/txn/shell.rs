//! The async shells: drive a [`Participant`] or [`Coordinator`] core over an
//! [`Env`]. They own no protocol logic — recover from the log, then feed
//! messages and clock ticks to the core and execute its steps in order
//! (append, sync, send, report).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::coordinator::{Coordinator, CoordinatorConfig};
use super::participant::{Participant, ParticipantConfig};
use super::{Msg, Step, TxnEvent};
use crate::env::{codec, timeout, Env, NodeId};

/// Receives every [`TxnEvent`] a core reports, with the reporting node.
/// The simulator collects them for its checks; a service may log them.
pub type Observer = Arc<dyn Fn(NodeId, &TxnEvent) + Send + Sync>;

/// An observer that ignores everything.
pub fn no_observer() -> Observer {
    Arc::new(|_, _| {})
}

/// How often the cores' timeouts are evaluated.
pub const TICK: Duration = Duration::from_millis(50);

/// How often the planted "sync later" bugs sync.
const LAZY_SYNC_EVERY: Duration = Duration::from_millis(250);

/// Executes a core's steps in order. A step list that syncs before it sends
/// is what makes "durable before visible" hold.
pub async fn execute<E: Env, R: Serialize>(env: &E, steps: Vec<Step<R>>, observer: &Observer) {
    for step in steps {
        match step {
            Step::Append(record) => env
                .append(&codec::encode(&record).expect("records encode"))
                .expect("append to the txn log"),
            Step::Sync => env.sync().await.expect("sync the txn log"),
            Step::Send(to, msg) => {
                let _ = env.send(to, codec::encode(&msg).expect("messages encode")).await;
            }
            Step::Event(event) => {
                tracing::debug!(?event, "txn");
                observer(env.id(), &event);
            }
        }
    }
}

fn spawn_lazy_syncer<E: Env>(env: &E) {
    let syncer = env.clone();
    env.spawn(async move {
        loop {
            syncer.sleep(LAZY_SYNC_EVERY).await;
            syncer.sync().await.expect("sync");
        }
    });
}

/// Receives the next message, or `None` when a tick is due.
async fn next_message<E: Env>(env: &E, next_tick: Duration) -> Option<(NodeId, Msg)> {
    let wait = next_tick.saturating_sub(env.now());
    let (from, bytes) = timeout(env, wait, env.recv()).await?;
    match codec::decode::<Msg>(&bytes) {
        Ok(msg) => Some((from, msg)),
        Err(e) => {
            tracing::warn!(from, error = %e, "dropping a malformed txn message");
            None
        }
    }
}

/// What the shell drives: a core's two handlers, both returning steps.
trait Core {
    type Record: Serialize;
    fn on_message(&mut self, now: Duration, from: NodeId, msg: Msg) -> Vec<Step<Self::Record>>;
    fn tick(&mut self, now: Duration) -> Vec<Step<Self::Record>>;
}

impl Core for Participant {
    type Record = super::participant::Record;
    fn on_message(&mut self, now: Duration, from: NodeId, msg: Msg) -> Vec<Step<Self::Record>> {
        Participant::on_message(self, now, from, msg)
    }
    fn tick(&mut self, now: Duration) -> Vec<Step<Self::Record>> {
        Participant::tick(self, now)
    }
}

impl Core for Coordinator {
    type Record = super::coordinator::Record;
    fn on_message(&mut self, now: Duration, from: NodeId, msg: Msg) -> Vec<Step<Self::Record>> {
        Coordinator::on_message(self, now, from, msg)
    }
    fn tick(&mut self, now: Duration) -> Vec<Step<Self::Record>> {
        Coordinator::tick(self, now)
    }
}

/// Feeds messages and ticks to a recovered core forever, executing its
/// steps in order.
async fn serve<E: Env, C: Core>(env: E, mut core: C, observer: Observer) {
    let mut next_tick = env.now() + TICK;
    loop {
        if let Some((from, msg)) = next_message(&env, next_tick).await {
            let steps = core.on_message(env.now(), from, msg);
            execute(&env, steps, &observer).await;
        }
        let now = env.now();
        if now >= next_tick {
            next_tick = now + TICK;
            let steps = core.tick(now);
            execute(&env, steps, &observer).await;
        }
    }
}

/// Runs a shard from whatever its log holds. Never returns.
pub async fn run_participant<E: Env>(env: E, config: ParticipantConfig, observer: Observer) {
    if config.bugs.vote_without_sync {
        spawn_lazy_syncer(&env);
    }
    let log = env.load().expect("the participant log is readable");
    let (core, steps) = Participant::recover(env.id(), &log, env.now(), config);
    execute(&env, steps, &observer).await;
    serve(env, core, observer).await
}

/// Runs the coordinator from whatever its log holds. Never returns.
pub async fn run_coordinator<E: Env>(env: E, config: CoordinatorConfig, observer: Observer) {
    if config.bugs.decision_before_sync {
        spawn_lazy_syncer(&env);
    }
    let log = env.load().expect("the coordinator log is readable");
    let (core, steps) = Coordinator::recover(env.id(), &log, env.now(), config);
    execute(&env, steps, &observer).await;
    serve(env, core, observer).await
}
