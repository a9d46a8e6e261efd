//! The async shell: drives a [`Raft`] replica over any [`Env`].
//!
//! It owns the event loop and nothing else: wait for a message or the next
//! timer, call the handler, then carry out the [`Output`] in the one order
//! that is safe — persist (rewrite, or append and sync if asked) *before*
//! sending anything, because the messages may promise what was persisted.
//! One output is finished before the next handler runs, so the replica never
//! acts on state that is not yet durable (except under a planted bug).
//!
//! Messages that are already waiting when the shell wakes up are handled as
//! one batch ([`drain_ready`], [`Raft::on_messages`]): one sync and one
//! `Append` per follower then serve every command in it, which is what lets
//! many clients share each fsync.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{select, Either};
use futures::FutureExt;
use serde::de::DeserializeOwned;

use super::raft::{Output, Raft, RecoverError};
use super::state_machine::StateMachine;
use super::types::Event;
use super::Config;
use crate::env::{codec, Env, EnvError, NodeId};

/// Watches what replicas do (tests and the simulator's checkers). Called
/// synchronously, in order, before the output's messages are sent.
pub trait Probe: Send + Sync + 'static {
    /// Called with each observer event of `node`'s replica, stamped with
    /// its clock's `now`; must not block, the replica waits for it.
    fn observe(&self, node: NodeId, now: Duration, event: &Event);
}

/// A probe that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProbe;

impl Probe for NoProbe {
    fn observe(&self, _: NodeId, _: Duration, _: &Event) {}
}

/// Why a replica stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The durable records do not rebuild a valid replica: it refuses to
    /// start rather than run on a log it cannot trust.
    #[error("recovery failed: {0}")]
    Recover(#[from] RecoverError),
    /// Storage failed: the replica stops rather than acknowledge anything
    /// that might not be durable.
    #[error("storage failed: {0}")]
    Storage(#[from] EnvError),
}

/// Runs replica `env.id()` of the group `members` until storage fails.
/// Restart after a crash by calling it again: it rebuilds from `env.load()`.
pub async fn run<E: Env, S: StateMachine>(
    env: E,
    members: Vec<NodeId>,
    config: Config,
    probe: Arc<dyn Probe>,
) -> Result<(), NodeError> {
    let records = env.load()?;
    let mut raft = Raft::<S>::recover(env.id(), &members, config, env.rng(), &records, env.now())?;
    tracing::debug!(
        node = env.id(),
        term = raft.term(),
        last = raft.last_index(),
        "replica recovered"
    );
    loop {
        let deadline = raft.next_deadline();
        let output = match next_batch(&env, deadline).await {
            Some(batch) => raft.on_messages(env.now(), batch),
            None => raft.on_tick(env.now()),
        };
        execute(&env, output, probe.as_ref()).await?;
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

/// Carries out one handler's output: observe, persist, sync, send.
pub async fn execute<E: Env, S: StateMachine>(env: &E, output: Output<S>, probe: &dyn Probe) -> Result<(), EnvError> {
    let now = env.now();
    for event in &output.events {
        probe.observe(env.id(), now, event);
    }
    if let Some(records) = &output.rewrite {
        env.rewrite(records).await?;
    } else {
        for record in &output.append {
            env.append(record)?;
        }
        if output.sync {
            env.sync().await?;
        }
    }
    for (to, msg) in output.messages {
        match codec::encode(&msg) {
            Ok(bytes) => {
                if let Err(error) = env.send(to, bytes).await {
                    tracing::debug!(node = env.id(), to, %error, "send failed");
                }
            }
            Err(error) => {
                // Limits on commands and snapshots make this unreachable.
                panic!("replica produced an unencodable message: {error}")
            }
        }
    }
    Ok(())
}
