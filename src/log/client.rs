//! A client of a replicated state machine: finds the leader, retries on
//! timeouts and redirects, and numbers its commands so that a retry is
//! applied at most once.
//!
//! One client has at most one request outstanding (the session table keeps
//! only each client's last command). Run several clients for concurrency:
//! clients of one node share its inbox through an [`Inbox`], which hands
//! each answer to the client it names.

use std::any::TypeId;
use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;

use super::membership::{Change, ConfigStatus};
use super::raft::WireOf;
use super::state_machine::StateMachine;
use super::types::{ClientId, Index, Outcome, Reject, RequestId, Response, Wire};
use crate::env::{codec, timeout, Env, NodeId};

/// A request that did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// No answer before the deadline. A command may or may not have been
    /// applied (and may still be, later); a read had no effect.
    #[error("timed out; outcome unknown")]
    Timeout,
    /// Refused without being executed.
    #[error("rejected: {0:?}")]
    Rejected(Reject),
}

/// Answers held for one client until it asks; beyond this the oldest go
/// (a client that stopped waiting leaves late answers behind).
const QUEUED_PER_CLIENT: usize = 64;

/// A protocol whose answers name the client they are for, so that one
/// node's clients of several services share its [`Inbox`]: the replicated
/// log's ([`LogAnswers`]), or a service's own (a bank shard's answers to
/// an operator's move steps).
pub trait Addressed: 'static {
    /// An answer, decoded.
    type Answer;
    /// `bytes` as an answer of this protocol, with the client it is for.
    fn read(bytes: &[u8]) -> Option<(ClientId, Self::Answer)>;
}

/// The replicated log's answers to a [`Client`] of machine `S`.
pub struct LogAnswers<S>(PhantomData<fn() -> S>);

impl<S: StateMachine> Addressed for LogAnswers<S> {
    type Answer = Response<S::Output>;
    fn read(bytes: &[u8]) -> Option<(ClientId, Self::Answer)> {
        match codec::decode::<WireOf<S>>(bytes) {
            Ok(Wire::Response(response)) => Some((response.client, response)),
            _ => None,
        }
    }
}

/// One node's inbox shared by several [`Client`]s, of any state machines:
/// whichever client waits reads the node's messages, keeps its own answers
/// and queues the others' (still encoded) for their clients, so concurrent
/// clients on one node never lose each other's answers, be they clients of
/// one service or of several (a lock group and the directory of a sharded
/// deployment, say). Messages that are not answers to a registered client
/// are dropped.
pub struct Inbox<E: Env> {
    env: E,
    /// Held by the one waiter reading `env.recv()`; fair, so a waiter whose
    /// answer was queued gets its turn next.
    reader: tokio::sync::Mutex<()>,
    state: Mutex<Registry>,
}

/// The registered clients and how to tell which one a frame answers.
#[derive(Default)]
struct Registry {
    /// Per client: its protocol, and its queued answers.
    queues: BTreeMap<ClientId, (TypeId, VecDeque<Vec<u8>>)>,
    /// Per protocol: the client a frame answers, if it is an answer of
    /// that protocol.
    readers: BTreeMap<TypeId, AnswerReader>,
}

/// Reads which client a frame answers, in one protocol.
type AnswerReader = fn(&[u8]) -> Option<ClientId>;

/// The client `bytes` answer, if they are an answer of protocol `P`.
fn addressee_in<P: Addressed>(bytes: &[u8]) -> Option<ClientId> {
    P::read(bytes).map(|(client, _)| client)
}

impl<E: Env> Inbox<E> {
    /// The inbox of `env`'s node. Nothing else may read `env.recv()` while
    /// clients use it.
    pub fn new(env: E) -> Arc<Self> {
        Arc::new(Inbox {
            env,
            reader: tokio::sync::Mutex::new(()),
            state: Mutex::new(Registry::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node's env.
    pub fn env(&self) -> &E {
        &self.env
    }

    /// Registers `client` (a random id: ids are unique per incarnation)
    /// as a client of protocol `P`, to which [`Inbox::next`] hands its
    /// answers.
    pub fn register<P: Addressed>(&self, client: ClientId) {
        let mut state = self.state();
        let protocol = TypeId::of::<P>();
        state.readers.insert(protocol, addressee_in::<P>);
        state.queues.insert(client, (protocol, VecDeque::new()));
    }

    /// Forgets a client: answers for it are dropped from now on.
    pub fn unregister(&self, client: ClientId) {
        self.state().queues.remove(&client);
    }

    fn pop<P: Addressed>(&self, client: ClientId) -> Option<P::Answer> {
        loop {
            let bytes = self.state().queues.get_mut(&client)?.1.pop_front()?;
            if let Some((_, answer)) = P::read(&bytes) {
                return Some(answer);
            }
        }
    }

    /// The registered client `bytes` answer, read by the protocol of that
    /// client's machine.
    fn addressee(&self, bytes: &[u8]) -> Option<ClientId> {
        let state = self.state();
        state
            .readers
            .iter()
            .filter_map(|(machine, read)| read(bytes).filter(|c| state.queues.get(c).is_some_and(|q| q.0 == *machine)))
            .next()
    }

    /// The next answer addressed to `client`, registered for protocol `P`.
    /// Cancel-safe: an answer read while this future is dropped is queued,
    /// not lost.
    pub async fn next<P: Addressed>(&self, client: ClientId) -> P::Answer {
        loop {
            if let Some(answer) = self.pop::<P>(client) {
                return answer;
            }
            let _reading = self.reader.lock().await;
            if let Some(answer) = self.pop::<P>(client) {
                return answer;
            }
            let (_, bytes) = self.env.recv().await;
            // Our own answer, the common case, is decoded once.
            if let Some((addressee, answer)) = P::read(&bytes) {
                if addressee == client {
                    return answer;
                }
            }
            let Some(addressee) = self.addressee(&bytes).filter(|&a| a != client) else {
                continue;
            };
            if let Some((_, queue)) = self.state().queues.get_mut(&addressee) {
                if queue.len() >= QUEUED_PER_CLIENT {
                    queue.pop_front();
                }
                queue.push_back(bytes);
            }
        }
    }
}

/// A client session bound to one node's env. Its answers come through an
/// [`Inbox`]: its own ([`Client::new`]) or one shared with other clients of
/// the node ([`Client::sharing`]).
pub struct Client<E: Env, S: StateMachine> {
    env: E,
    inbox: Arc<Inbox<E>>,
    servers: Vec<NodeId>,
    id: ClientId,
    seq: u64,
    next_read: u64,
    leader: Option<NodeId>,
    cursor: usize,
    /// How long to wait for one replica before trying the next.
    pub attempt_timeout: Duration,
    _machine: PhantomData<fn() -> S>,
}

impl<E: Env, S: StateMachine> Client<E, S> {
    /// A new session with a fresh random id drawn from the env's rng (unique
    /// per incarnation, as exactly-once requires).
    /// The client reads `env.recv()` itself: nothing else on the node may.
    pub fn new(env: E, servers: Vec<NodeId>) -> Self {
        Self::sharing(Inbox::new(env), servers)
    }

    /// A new session reading its answers from `inbox`, which other clients
    /// of the same node may share.
    pub fn sharing(inbox: Arc<Inbox<E>>, servers: Vec<NodeId>) -> Self {
        assert!(!servers.is_empty());
        let env = inbox.env.clone();
        let mut rng = env.rng();
        let id = rng.gen();
        let cursor = rng.gen_range(0..servers.len());
        inbox.register::<LogAnswers<S>>(id);
        Client {
            env,
            inbox,
            servers,
            id,
            seq: 0,
            next_read: 0,
            leader: None,
            cursor,
            attempt_timeout: Duration::from_millis(500),
            _machine: PhantomData,
        }
    }

    /// This session's id, which names it in every request and answer.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// The node this client runs on.
    pub fn env(&self) -> &E {
        &self.env
    }

    /// The replica this client currently believes leads.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// Applies `command` exactly once if it succeeds; retries (with the same
    /// sequence number) until `give_up` has passed on this node's clock.
    pub async fn execute(&mut self, command: S::Command, give_up: Duration) -> Result<S::Output, ClientError> {
        self.seq += 1;
        let msg: WireOf<S> = Wire::Command {
            client: self.id,
            seq: self.seq,
            command,
        };
        match self.request(RequestId::Command(self.seq), msg, give_up).await? {
            Outcome::Done(output) => Ok(output),
            _ => unreachable!("request returns the answer its request asks for"),
        }
    }

    /// A linearizable read, retried until `give_up`.
    pub async fn read(&mut self, query: S::Query, give_up: Duration) -> Result<S::Output, ClientError> {
        self.next_read += 1;
        let id = self.next_read;
        let msg: WireOf<S> = Wire::Read {
            client: self.id,
            id,
            query,
        };
        match self.request(RequestId::Read(id), msg, give_up).await? {
            Outcome::Done(output) => Ok(output),
            _ => unreachable!("request returns the answer its request asks for"),
        }
    }

    /// The leader's configuration and what it knows of each member;
    /// retried until `give_up`.
    pub async fn config_status(&mut self, give_up: Duration) -> Result<ConfigStatus, ClientError> {
        self.configuration(None, 0, give_up).await
    }

    /// Asks the leader for a configuration change ([`Change`]) against the
    /// configuration set at log index `base` (a status's
    /// [`ConfigStatus::index`]), answered once it commits; retried until
    /// `give_up`. A change already in effect is answered as done, so a
    /// retry is harmless; one asked against a configuration that changed
    /// since is refused ([`super::membership::Refusal::Stale`]).
    pub async fn reconfigure(
        &mut self,
        change: Change,
        base: Index,
        give_up: Duration,
    ) -> Result<ConfigStatus, ClientError> {
        self.configuration(Some(change), base, give_up).await
    }

    async fn configuration(
        &mut self,
        change: Option<Change>,
        base: Index,
        give_up: Duration,
    ) -> Result<ConfigStatus, ClientError> {
        self.next_read += 1;
        let id = self.next_read;
        let msg: WireOf<S> = Wire::Reconfigure {
            client: self.id,
            id,
            change,
            base,
        };
        match self.request(RequestId::Reconfigure(id), msg, give_up).await? {
            Outcome::Configured(status) => Ok(status),
            _ => unreachable!("request returns the answer its request asks for"),
        }
    }

    /// Sends `msg` to the leader until it answers: with `Done` for a
    /// command or read, `Configured` for a configuration request.
    async fn request(
        &mut self,
        id: RequestId,
        msg: WireOf<S>,
        give_up: Duration,
    ) -> Result<Outcome<S::Output>, ClientError> {
        let bytes = codec::encode(&msg).map_err(|_| ClientError::Rejected(Reject::TooLarge))?;
        let end = self.env.now() + give_up;
        while self.env.now() < end {
            let target = self.leader.unwrap_or(self.servers[self.cursor]);
            let _ = self.env.send(target, bytes.clone()).await;
            let wait = self.attempt_timeout.min(end.saturating_sub(self.env.now()));
            match timeout(&self.env, wait, self.wait_for(id)).await {
                Some(answer @ Outcome::Done(_)) if !matches!(id, RequestId::Reconfigure(_)) => {
                    self.leader = Some(target);
                    return Ok(answer);
                }
                Some(answer @ Outcome::Configured(_)) if matches!(id, RequestId::Reconfigure(_)) => {
                    self.leader = Some(target);
                    return Ok(answer);
                }
                Some(Outcome::Rejected(reject)) => return Err(ClientError::Rejected(reject)),
                Some(Outcome::NotLeader(hint)) => match hint {
                    Some(h) if h != target => self.leader = Some(h),
                    _ => {
                        self.leader = None;
                        self.rotate();
                        // Nobody knows a leader: an election is under way.
                        self.env.sleep(Duration::from_millis(20)).await;
                    }
                },
                // No answer, or one no honest replica gives to this request.
                None | Some(Outcome::Done(_) | Outcome::Configured(_)) => {
                    self.leader = None;
                    self.rotate();
                }
            }
        }
        Err(ClientError::Timeout)
    }

    fn rotate(&mut self) {
        self.cursor = (self.cursor + 1) % self.servers.len();
    }

    /// The next answer to request `id`; answers to older requests (late
    /// replies, duplicates) are dropped.
    async fn wait_for(&self, id: RequestId) -> Outcome<S::Output> {
        loop {
            let response = self.inbox.next::<LogAnswers<S>>(self.id).await;
            if response.id == id {
                return response.outcome;
            }
        }
    }
}

impl<E: Env, S: StateMachine> Drop for Client<E, S> {
    fn drop(&mut self) {
        self.inbox.unregister(self.id);
    }
}
