//! The async shells: drive a [`Participant`], a [`Coordinator`] or a replica
//! of the replicated coordinator over an [`Env`]. They own no protocol
//! logic — recover from the log, then feed messages and clock ticks to the
//! core and execute its steps in order (append, sync, send, report).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::coordinator::{Coordinator, CoordinatorConfig};
use super::participant::{Participant, ParticipantConfig};
use super::replicated::{Command, CoordMachine, Driver, Effects, ReplicatedConfig, View};
use super::{Msg, Step, TxnEvent, TxnId};
use crate::env::{codec, timeout, Env, EnvError, NodeId};
use crate::log::node::{self, NoProbe, NodeError};
use crate::log::{Event, Output, Payload, Raft, Role, StateMachine, Wire, WireOf};

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

/// Receives the next message, or `None` when `deadline` is reached first.
async fn next_message<E: Env>(env: &E, deadline: Duration) -> Option<(NodeId, Msg)> {
    let wait = deadline.saturating_sub(env.now());
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
    let (core, steps) = match Participant::recover(env.id(), &log, env.now(), config) {
        Ok(recovered) => recovered,
        Err(error) => {
            // Serving without what the log promised could break atomicity:
            // the shard stays down for an operator.
            tracing::error!(shard = env.id(), %error, "participant cannot recover; not serving");
            return std::future::pending().await;
        }
    };
    execute(&env, steps, &observer).await;
    serve(env, core, observer).await
}

/// Runs the coordinator from whatever its log holds. Never returns.
pub async fn run_coordinator<E: Env>(env: E, config: CoordinatorConfig, observer: Observer) {
    if config.bugs.decision_before_sync {
        spawn_lazy_syncer(&env);
    }
    let log = env.load().expect("the coordinator log is readable");
    let (core, steps) = match Coordinator::recover(env.id(), &log, env.now(), config) {
        Ok(recovered) => recovered,
        Err(error) => {
            // Deciding without the logged commits could contradict them.
            tracing::error!(coordinator = env.id(), %error, "coordinator cannot recover; not serving");
            return std::future::pending().await;
        }
    };
    execute(&env, steps, &observer).await;
    serve(env, core, observer).await
}

/// Runs replica `env.id()` of a replicated coordinator over the group
/// `coordinators`, from whatever its log holds. Returns only when storage
/// fails (the replica stops rather than promise what may not be durable).
///
/// One loop serves both protocols: `Msg::Log` from the group's replicas
/// goes to the Raft replica (a log command or read from anyone is
/// dropped), everything else to the [`Driver`]; after every step the
/// driver sees which transactions the log applied, and its proposals go
/// back into the log.
pub async fn run_replicated_coordinator<E: Env>(
    env: E,
    coordinators: Vec<NodeId>,
    config: ReplicatedConfig,
    observer: Observer,
) -> Result<(), NodeError> {
    let records = env.load()?;
    let mut raft = Raft::<CoordMachine>::recover(
        env.id(),
        &coordinators,
        config.log.clone(),
        env.rng(),
        &records,
        env.now(),
    )?;
    let speculate = config.bugs.send_before_commit;
    let mut driver = Driver::new(env.id(), coordinators, config);
    let mut next_tick = env.now() + TICK;
    loop {
        let mut applied = Vec::new();
        let mut fx = Effects::default();
        match next_message(&env, raft.next_deadline().min(next_tick)).await {
            Some((from, Msg::Log(bytes))) => match codec::decode::<WireOf<CoordMachine>>(&bytes) {
                // Replica traffic only (Raft drops a non-member's): the
                // group's log takes commands from its own driver alone, so
                // a forged commit, abort or forget never reaches it.
                Ok(wire @ Wire::Raft(_)) => {
                    applied = carry_out(&env, raft.on_message(env.now(), from, wire), &observer).await?
                }
                Ok(_) => tracing::warn!(from, "dropping a coordinator log command or read from the network"),
                Err(e) => tracing::warn!(from, error = %e, "dropping a malformed log message"),
            },
            Some((from, msg)) => {
                let spec = speculate.then(|| uncommitted(&raft));
                fx = driver.on_message(env.now(), from, msg, &view(&raft, spec.as_ref()));
            }
            None => {}
        }
        let now = env.now();
        if now >= raft.next_deadline() {
            applied.extend(carry_out(&env, raft.on_tick(now), &observer).await?);
        }
        if now >= next_tick {
            next_tick = now + TICK;
            let spec = speculate.then(|| uncommitted(&raft));
            fx.extend(driver.tick(now, &view(&raft, spec.as_ref())));
        }
        loop {
            let spec = speculate.then(|| uncommitted(&raft));
            fx.extend(driver.on_applied(now, &view(&raft, spec.as_ref()), std::mem::take(&mut applied)));
            for (client, seq, command) in std::mem::take(&mut fx.propose) {
                if speculate {
                    // PLANTED BUG: what was appended is acted on at once.
                    applied.extend(command.txn());
                }
                let output = raft.on_message(now, env.id(), Wire::Command { client, seq, command });
                applied.extend(carry_out(&env, output, &observer).await?);
            }
            execute(&env, std::mem::take(&mut fx.steps), &observer).await;
            if applied.is_empty() {
                break;
            }
        }
    }
}

/// The driver's view of its replica: the applied state, or (planted bug)
/// `speculative`, the state its whole log would give.
fn view<'a>(raft: &'a Raft<CoordMachine>, speculative: Option<&'a CoordMachine>) -> View<'a> {
    View {
        leading: (raft.role() == Role::Leader).then(|| raft.term()),
        leader: raft.leader(),
        machine: speculative.unwrap_or(raft.state_machine()),
    }
}

/// The applied state plus every entry appended but not yet committed.
fn uncommitted(raft: &Raft<CoordMachine>) -> CoordMachine {
    let mut machine = raft.state_machine().clone();
    for index in raft.applied_index() + 1..=raft.last_index() {
        if let Some(Payload::Command { command, .. }) = raft.entry(index).map(|e| &e.payload) {
            machine.apply(command);
        }
    }
    machine
}

/// Persists a log output, then sends its messages wrapped in `Msg::Log`
/// (answers to this replica's own proposals dropped). Returns the
/// transactions whose commands it applied; reports snapshots and
/// forgetting to `observer`.
async fn carry_out<E: Env>(
    env: &E,
    mut output: Output<CoordMachine>,
    observer: &Observer,
) -> Result<Vec<TxnId>, EnvError> {
    let mut applied = Vec::new();
    for event in &output.events {
        let report = match event {
            Event::Applied { payload, .. } => match codec::decode::<Payload<Command>>(payload) {
                Ok(Payload::Command {
                    command: Command::Forget { below },
                    ..
                }) => Some(TxnEvent::Forgot { below }),
                Ok(Payload::Command { command, .. }) => {
                    applied.extend(command.txn());
                    None
                }
                Ok(Payload::Noop) => None,
                Err(e) => panic!("an applied entry must decode: {e}"),
            },
            Event::Compacted { index } => Some(TxnEvent::Snapshot {
                index: *index,
                installed: false,
            }),
            Event::Restored { index, .. } => Some(TxnEvent::Snapshot {
                index: *index,
                installed: true,
            }),
            _ => None,
        };
        if let Some(report) = report {
            observer(env.id(), &report);
        }
    }
    let messages = std::mem::take(&mut output.messages);
    node::execute(env, output, &NoProbe).await?;
    let me = env.id();
    for (to, wire) in messages.into_iter().filter(|(to, _)| *to != me) {
        let inner = codec::encode(&wire).expect("log limits keep messages encodable");
        let bytes = codec::encode(&Msg::Log(inner)).expect("log limits keep messages encodable");
        let _ = env.send(to, bytes).await;
    }
    Ok(applied)
}
