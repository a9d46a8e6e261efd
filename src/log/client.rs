//! A client of a replicated state machine: finds the leader, retries on
//! timeouts and redirects, and numbers its commands so that a retry is
//! applied at most once.
//!
//! One client has at most one request outstanding (the session table keeps
//! only each client's last command). Run several clients for concurrency.

use std::marker::PhantomData;
use std::time::Duration;

use rand::Rng;

use super::raft::WireOf;
use super::state_machine::StateMachine;
use super::types::{ClientId, Outcome, Reject, RequestId, Wire};
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

/// A client session bound to one node's env (its inbox must be its own).
pub struct Client<E: Env, S: StateMachine> {
    env: E,
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
    pub fn new(env: E, servers: Vec<NodeId>) -> Self {
        assert!(!servers.is_empty());
        let mut rng = env.rng();
        let id = rng.gen();
        let cursor = rng.gen_range(0..servers.len());
        Client {
            env,
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

    pub fn id(&self) -> ClientId {
        self.id
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
        self.request(RequestId::Command(self.seq), msg, give_up).await
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
        self.request(RequestId::Read(id), msg, give_up).await
    }

    async fn request(&mut self, id: RequestId, msg: WireOf<S>, give_up: Duration) -> Result<S::Output, ClientError> {
        let bytes = codec::encode(&msg).map_err(|_| ClientError::Rejected(Reject::TooLarge))?;
        let end = self.env.now() + give_up;
        while self.env.now() < end {
            let target = self.leader.unwrap_or(self.servers[self.cursor]);
            let _ = self.env.send(target, bytes.clone()).await;
            let wait = self.attempt_timeout.min(end.saturating_sub(self.env.now()));
            match timeout(&self.env, wait, self.wait_for(id)).await {
                Some(Outcome::Done(output)) => {
                    self.leader = Some(target);
                    return Ok(output);
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
                None => {
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
            let (_, bytes) = self.env.recv().await;
            if let Ok(Wire::Response(response)) = codec::decode::<WireOf<S>>(&bytes) {
                if response.client == self.id && response.id == id {
                    return response.outcome;
                }
            }
        }
    }
}
