//! The async shells: drive a [`Participant`], a [`Coordinator`] or a replica
//! of the replicated coordinator over an [`Env`]. They own no protocol
//! logic — recover from the log, then feed messages and clock ticks to the
//! core ([`Core`]) and carry out its [`Output`]: persist, report, send.
//! Storage that fails stops the role with [`NodeError::Storage`], as on the
//! log's engine.

use std::sync::Arc;
use std::time::Duration;

use super::coordinator::{Coordinator, CoordinatorConfig};
use super::participant::{Participant, ParticipantConfig};
use super::replicated::{Command, CoordLeader, CoordMachine, LeaderOutput, ReplicatedConfig, View};
use super::{CoordMsg, Msg, Output, ShardMsg, TxnBug, TxnEvent, TxnId};
use crate::effects::{carry_out, serve, Core, NodeError, TICK_FLOOR};
use crate::env::{codec, Env, EnvError, NodeId};
use crate::log::membership::{is_operator, Boot};
use crate::log::service::{self, Companion, Out};
use crate::log::{Event, Payload, Raft, Role, StateMachine, Wire, WireOf};
use crate::observe::Observer;

/// Receives every [`TxnEvent`] a role reports (see [`crate::observe`]).
pub type TxnObserver = Arc<dyn Observer<TxnEvent>>;

/// How often the planted "sync later" bugs sync.
const LAZY_SYNC_EVERY: Duration = Duration::from_millis(250);

fn spawn_lazy_syncer<E: Env>(env: &E) {
    let syncer = env.clone();
    env.spawn(async move {
        loop {
            syncer.sleep(LAZY_SYNC_EVERY).await;
            if syncer.sync().await.is_err() {
                // Storage refuses everything after a failed sync (both
                // runtimes), so the role's next append fails and stops it.
                return;
            }
        }
    });
}

impl Core for Participant {
    type In = ShardMsg;
    type Out = Msg;
    type Event = TxnEvent;
    fn on_message(&mut self, now: Duration, from: NodeId, msg: ShardMsg) -> Output {
        Participant::on_message(self, now, from, msg)
    }
    fn on_tick(&mut self, now: Duration) -> Output {
        Participant::tick(self, now)
    }
    fn next_deadline(&self) -> Duration {
        Participant::next_deadline(self)
    }
}

impl Core for Coordinator {
    type In = CoordMsg;
    type Out = Msg;
    type Event = TxnEvent;
    fn on_message(&mut self, now: Duration, from: NodeId, msg: CoordMsg) -> Output {
        Coordinator::on_message(self, now, from, msg)
    }
    fn on_tick(&mut self, now: Duration) -> Output {
        Coordinator::tick(self, now)
    }
    fn next_deadline(&self) -> Duration {
        Coordinator::next_deadline(self)
    }
}

/// Runs a shard from whatever its log holds. Returns only when it must
/// stop: its log does not rebuild it (serving without what the log
/// promised could break atomicity), or storage failed.
pub async fn run_participant<E: Env>(
    env: E,
    config: ParticipantConfig,
    observer: TxnObserver,
) -> Result<(), NodeError> {
    if config.bug == Some(TxnBug::VoteWithoutSync) {
        spawn_lazy_syncer(&env);
    }
    let log = env.load()?;
    let (core, out) = Participant::recover(env.id(), &log, env.now(), config).map_err(NodeError::recover)?;
    carry_out(&env, out, &*observer, |msg: Msg| msg).await?;
    serve(env, core, &*observer).await
}

/// Runs the coordinator from whatever its log holds. Returns only when it
/// must stop: its log does not rebuild it (deciding without the logged
/// commits could contradict them), or storage failed.
pub async fn run_coordinator<E: Env>(
    env: E,
    config: CoordinatorConfig,
    observer: TxnObserver,
) -> Result<(), NodeError> {
    if config.bug == Some(TxnBug::DecisionBeforeSync) {
        spawn_lazy_syncer(&env);
    }
    let log = env.load()?;
    let (core, out) = Coordinator::recover(env.id(), &log, env.now(), config).map_err(NodeError::recover)?;
    carry_out(&env, out, &*observer, |msg: Msg| msg).await?;
    serve(env, core, &*observer).await
}

/// Runs replica `env.id()` of a replicated coordinator over the group
/// `coordinators`, from whatever its log holds, on the log service's
/// engine ([`service::run`]); `boot` says how an empty disk starts. `observer` sees the transactions,
/// `log_observer` the replica's log (elections, applies, snapshots).
/// Returns only when storage fails (the replica stops rather than promise
/// what may not be durable).
pub async fn run_replicated_coordinator<E: Env>(
    env: E,
    (coordinators, boot): (Vec<NodeId>, Boot),
    config: ReplicatedConfig,
    observer: TxnObserver,
    log_observer: Arc<dyn Observer<Event>>,
) -> Result<(), NodeError> {
    let log = config.log.clone();
    let companion = CoordService::new(env.id(), coordinators.clone(), config, observer, env.now());
    service::run(env, (coordinators, boot), log, companion, log_observer).await
}

/// A node as a client of the coordinators' log sees it: every message
/// travels in the coordinators' envelope ([`CoordMsg::Log`]), so a
/// [`crate::log::client::Client`] on this env speaks to the group's log
/// (an operator reconfiguring it; commands and reads are refused there).
#[derive(Clone)]
pub struct CoordLogEnv<E>(pub E);

impl<E: Env> Env for CoordLogEnv<E> {
    fn id(&self) -> NodeId {
        self.0.id()
    }

    fn now(&self) -> Duration {
        self.0.now()
    }

    fn sleep(&self, duration: Duration) -> impl std::future::Future<Output = ()> + Send {
        self.0.sleep(duration)
    }

    fn send(&self, to: NodeId, msg: Vec<u8>) -> impl std::future::Future<Output = Result<(), EnvError>> + Send {
        let size = msg.len();
        let envelope = codec::encode(&Msg::Coord(CoordMsg::Log(msg)));
        let env = self.0.clone();
        async move {
            let bytes = envelope.map_err(|_| EnvError::MessageTooLarge {
                size,
                max: crate::env::MAX_MESSAGE_BYTES,
            })?;
            env.send(to, bytes).await
        }
    }

    fn recv(&self) -> impl std::future::Future<Output = (NodeId, Vec<u8>)> + Send {
        let env = self.0.clone();
        async move {
            loop {
                let (from, bytes) = env.recv().await;
                if let Ok(Msg::Coord(CoordMsg::Log(inner))) = codec::decode(&bytes) {
                    return (from, inner);
                }
            }
        }
    }

    fn rng(&self) -> rand_chacha::ChaCha8Rng {
        self.0.rng()
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.0.spawn(task)
    }

    fn load(&self) -> Result<Vec<Vec<u8>>, EnvError> {
        self.0.load()
    }

    fn append(&self, record: &[u8]) -> Result<(), EnvError> {
        self.0.append(record)
    }

    fn sync(&self) -> impl std::future::Future<Output = Result<(), EnvError>> + Send {
        self.0.sync()
    }

    fn rewrite(&self, records: &[Vec<u8>]) -> impl std::future::Future<Output = Result<(), EnvError>> + Send {
        self.0.rewrite(records)
    }

    fn peer_name(&self, node: NodeId) -> String {
        self.0.peer_name(node)
    }
}

/// The replicated coordinator's companion on the log: `CoordMsg::Log` from the
/// group's replicas goes to the replica (a log command or read from anyone
/// is dropped: the group's log takes commands from its own leader logic
/// alone, so a forged commit, abort or forget never reaches it); every
/// other message goes to the [`CoordLeader`], which also sees which
/// transactions each replica handler applied and whose proposals go back
/// into the log.
pub struct CoordService {
    me: NodeId,
    leader: CoordLeader,
    observer: TxnObserver,
    /// When the leader logic last ticked ([`TICK_FLOOR`]).
    last_tick: Duration,
    /// Planted bug `send_before_commit`: the leader logic sees the state its
    /// whole log would give, and acts on what it proposed at once.
    speculate: bool,
    /// Transactions proposed under that bug, to act on as if applied.
    speculated: Vec<TxnId>,
}

impl CoordService {
    /// The companion of replica `me` of `coordinators`, started at `now`.
    pub fn new(
        me: NodeId,
        coordinators: Vec<NodeId>,
        config: ReplicatedConfig,
        observer: TxnObserver,
        now: Duration,
    ) -> Self {
        CoordService {
            me,
            speculate: config.bug == Some(TxnBug::SendBeforeCommit),
            leader: CoordLeader::new(me, coordinators, config),
            observer,
            last_tick: now,
            speculated: Vec::new(),
        }
    }

    /// Hands the leader logic's proposals to the log, its messages to the
    /// network and its events to the observer.
    fn carry(&mut self, now: Duration, fx: LeaderOutput, out: &mut Out<CoordMachine, Msg>) {
        for command in fx.propose {
            if self.speculate {
                // PLANTED BUG: what was appended is acted on at once.
                self.speculated.extend(command.txn());
            }
            out.propose(command);
        }
        debug_assert!(
            fx.out.append.is_empty() && fx.out.rewrite.is_none() && !fx.out.sync,
            "the leader logic keeps no records of its own"
        );
        for event in &fx.out.events {
            tracing::debug!(?event, "txn");
            self.observer.observe(self.me, now, event);
        }
        for (to, msg) in fx.out.messages {
            out.send(to, msg);
        }
    }

    /// What the leader logic acts on: `replica`, or under the planted bug
    /// the state its whole log would give.
    fn act<R>(&mut self, replica: &Raft<CoordMachine>, act: impl FnOnce(&mut CoordLeader, &View) -> R) -> R {
        let speculative = self.speculate.then(|| uncommitted(replica));
        let view = View {
            leading: (replica.role() == Role::Leader).then(|| replica.term()),
            leader: replica.leader(),
            machine: speculative.as_ref().unwrap_or(replica.state_machine()),
        };
        act(&mut self.leader, &view)
    }
}

impl Companion for CoordService {
    type Machine = CoordMachine;
    type Wire = Msg;

    fn wrap(msg: WireOf<CoordMachine>) -> Msg {
        Msg::Coord(CoordMsg::Log(
            codec::encode(&msg).expect("log limits keep messages encodable"),
        ))
    }

    fn on_message(
        &mut self,
        now: Duration,
        from: NodeId,
        msg: Msg,
        replica: &Raft<CoordMachine>,
        out: &mut Out<CoordMachine, Msg>,
    ) -> Option<WireOf<CoordMachine>> {
        match msg {
            Msg::Coord(CoordMsg::Log(bytes)) => match codec::decode::<WireOf<CoordMachine>>(&bytes) {
                // Replica traffic (Raft drops a non-member's), and
                // configuration requests from operators only.
                Ok(wire @ Wire::Raft(_)) => Some(wire),
                Ok(wire @ Wire::Reconfigure { .. }) if is_operator(from) => Some(wire),
                Ok(_) => {
                    tracing::warn!(from, "dropping a coordinator log command or read from the network");
                    None
                }
                Err(e) => {
                    tracing::warn!(from, error = %e, "dropping a malformed log message");
                    None
                }
            },
            Msg::Coord(msg) => {
                let fx = self.act(replica, |leader, view| leader.on_message(now, from, msg, view));
                self.carry(now, fx, out);
                None
            }
            other => {
                tracing::debug!(from, ?other, "dropping a txn message meant for another role");
                None
            }
        }
    }

    fn on_leadership(&mut self, now: Duration, replica: &Raft<CoordMachine>, _: &mut Out<CoordMachine, Msg>) {
        self.act(replica, |leader, view| leader.follow(now, view));
    }

    fn on_events(
        &mut self,
        now: Duration,
        events: &[Event],
        replica: &Raft<CoordMachine>,
        out: &mut Out<CoordMachine, Msg>,
    ) {
        let mut applied = std::mem::take(&mut self.speculated);
        for event in events {
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
                    Ok(Payload::Noop | Payload::Config(_)) => None,
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
                self.observer.observe(self.me, now, &report);
            }
        }
        let fx = self.act(replica, |leader, view| leader.on_applied(now, view, applied));
        self.carry(now, fx, out);
    }

    fn on_tick(&mut self, now: Duration, replica: &Raft<CoordMachine>, out: &mut Out<CoordMachine, Msg>) {
        if now < self.next_deadline() {
            return;
        }
        self.last_tick = now;
        let fx = self.act(replica, |leader, view| leader.tick(now, view));
        self.carry(now, fx, out);
    }

    fn next_deadline(&self) -> Duration {
        self.leader.next_deadline().max(self.last_tick + TICK_FLOOR)
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

#[cfg(test)]
mod tests {
    use crate::observe::Ignore;
    use std::collections::VecDeque;

    use rand::SeedableRng;

    use super::*;
    use crate::txn::ReplyMsg;

    const MS: Duration = Duration::from_millis(1);
    const CLIENT: NodeId = 9;
    const SHARD: NodeId = 4;

    /// Three coordinator replicas with replica 1 elected, every message
    /// between them delivered.
    fn group() -> Vec<Raft<CoordMachine>> {
        let mut group: Vec<_> = (1..=3)
            .map(|id| {
                let rng = rand_chacha::ChaCha8Rng::seed_from_u64(id.into());
                Raft::recover(
                    id,
                    &[1, 2, 3],
                    Boot::Genesis(vec![1, 2, 3]),
                    crate::log::Config::default(),
                    rng,
                    &[],
                    Duration::ZERO,
                )
                .unwrap()
            })
            .collect();
        let output = group[0].on_tick(1_000 * MS);
        deliver(&mut group, 1, output.messages);
        assert_eq!(group[0].role(), Role::Leader);
        group
    }

    /// Delivers `messages` from `from`, and every answer they set off;
    /// returns replica 1's events.
    fn deliver(
        group: &mut [Raft<CoordMachine>],
        from: NodeId,
        messages: Vec<(NodeId, WireOf<CoordMachine>)>,
    ) -> Vec<Event> {
        let mut queue: VecDeque<_> = messages.into_iter().map(|(to, m)| (from, to, m)).collect();
        let mut events = Vec::new();
        while let Some((from, to, msg)) = queue.pop_front() {
            let output = group[to as usize - 1].on_message(1_000 * MS, from, msg);
            if to == 1 {
                events.extend(output.events);
            }
            queue.extend(output.messages.into_iter().map(|(next, m)| (to, next, m)));
        }
        events
    }

    /// Begins a transaction at the leader's companion and asks to commit
    /// it on one shard; returns the round's log output, not yet delivered.
    fn commit_one(
        leader: &mut Raft<CoordMachine>,
        service: &mut CoordService,
        out: &mut Out<CoordMachine, Msg>,
    ) -> crate::log::Output<CoordMachine> {
        let now = 1_000 * MS;
        service.on_leadership(now, leader, out);
        assert!(service
            .on_message(now, CLIENT, Msg::Coord(CoordMsg::Begin { request: 1 }), leader, out)
            .is_none());
        let [(CLIENT, Msg::Reply(ReplyMsg::Began { txn, .. }))] = out.messages[..] else {
            panic!("{:?}", out.messages)
        };
        out.messages.clear();
        let commit = Msg::Coord(CoordMsg::Commit {
            txn,
            participants: vec![(SHARD, 1)],
        });
        assert!(service.on_message(now, CLIENT, commit, leader, out).is_none());
        assert!(matches!(
            out.proposals().collect::<Vec<_>>()[..],
            [Command::Start { .. }]
        ));
        let output = leader.on_messages(now, std::mem::take(&mut out.to_log));
        service.on_events(now, &output.events, leader, out);
        output
    }

    fn prepares(out: &Out<CoordMachine, Msg>) -> usize {
        out.messages
            .iter()
            .filter(|(to, m)| *to == SHARD && matches!(m, Msg::Shard(ShardMsg::Prepare { .. })))
            .count()
    }

    /// The leader logic prepares a transaction only once its `Start` is
    /// committed: not while the followers have yet to store it, and at once
    /// when they have. Runs the companion without a runtime.
    #[test]
    fn the_coordinator_companion_prepares_only_what_the_log_committed() {
        let mut group = group();
        let config = ReplicatedConfig::default();
        let mut service = CoordService::new(1, vec![1, 2, 3], config, Arc::new(Ignore), Duration::ZERO);
        let mut out = Out::new(1, Some(group[0].term()));
        let output = commit_one(&mut group[0], &mut service, &mut out);
        assert_eq!(prepares(&out), 0, "appended, not committed: {:?}", out.messages);
        let events = deliver(&mut group, 1, output.messages);
        service.on_events(1_000 * MS, &events, &group[0], &mut out);
        assert_eq!(prepares(&out), 1, "{:?}", out.messages);
    }

    /// Planted bug `send_before_commit`, now inside the companion: the
    /// leader logic acts on what it appended before a majority stored it.
    #[test]
    fn send_before_commit_prepares_what_only_the_leader_stored() {
        let mut group = group();
        let config = ReplicatedConfig {
            bug: Some(TxnBug::SendBeforeCommit),
            ..ReplicatedConfig::default()
        };
        let mut service = CoordService::new(1, vec![1, 2, 3], config, Arc::new(Ignore), Duration::ZERO);
        let mut out = Out::new(1, Some(group[0].term()));
        let _undelivered = commit_one(&mut group[0], &mut service, &mut out);
        assert_eq!(prepares(&out), 1, "{:?}", out.messages);
    }

    /// Configuration requests reach the coordinators' log from operators
    /// only; log commands and reads from anyone are dropped.
    #[test]
    fn only_operators_reconfigure_the_coordinators() {
        let group = group();
        let mut service = CoordService::new(
            1,
            vec![1, 2, 3],
            ReplicatedConfig::default(),
            Arc::new(Ignore),
            Duration::ZERO,
        );
        let mut out = Out::new(1, Some(group[0].term()));
        let remove: WireOf<CoordMachine> = Wire::Reconfigure {
            client: 1,
            id: 1,
            change: Some(crate::log::membership::Change::Remove(2)),
            base: 0,
        };
        let msg = || Msg::Coord(CoordMsg::Log(codec::encode(&remove).unwrap()));
        let operator = crate::log::membership::OPERATOR_IDS.start;
        for from in [CLIENT, 2, 16 << 16] {
            assert!(
                service.on_message(MS, from, msg(), &group[0], &mut out).is_none(),
                "from {from}"
            );
        }
        assert_eq!(
            service.on_message(MS, operator, msg(), &group[0], &mut out),
            Some(remove)
        );
        let command: WireOf<CoordMachine> = Wire::Command {
            client: 1,
            seq: 1,
            command: Command::Forget { below: 9 },
        };
        let forged = Msg::Coord(CoordMsg::Log(codec::encode(&command).unwrap()));
        assert!(service.on_message(MS, operator, forged, &group[0], &mut out).is_none());
    }
}
