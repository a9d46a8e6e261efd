//! The client API: `begin`, `get`, `put`, `commit` over an [`Env`].
//!
//! Reads and writes go straight to the shard that owns the key (found by a
//! [`Placement`]); the shard locks the key and buffers writes. `commit` asks
//! the coordinator to run two-phase commit over the shards touched. A
//! replicated coordinator is a group: the client talks to the replica it
//! believes leads, follows `Redirect` hints, and moves on to the next
//! replica when one does not answer.
//!
//! Retries are safe: operations carry a request id and a transaction's
//! writes are idempotent, and the coordinator answers a retried `Commit` from
//! its log, so a commit whose reply was lost reports the real outcome. Only
//! when no answer arrives at all does `commit` return
//! [`TxnError::Unavailable`] — the outcome is then unknown (ask again later
//! with the same [`Txn`] id via [`TxnClient::outcome`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::placement::Placement;
use super::{AbortReason, Msg, Outcome, TxnId, Value};
use crate::env::{codec, timeout, Env, NodeId};

/// Why an operation did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    /// The transaction is aborted (and will never commit).
    #[error("aborted: {0}")]
    Aborted(AbortReason),
    /// `node` did not answer. For `begin`, `get` and `put` the transaction
    /// has been abandoned (it will never commit); for `commit` the outcome
    /// is unknown.
    #[error("node {node} did not answer")]
    Unavailable { node: NodeId },
    /// The replicated coordinator no longer remembers the transaction (see
    /// `txn::replicated`, "Forgetting"): its outcome is unknown, as with
    /// `Unavailable` for a commit, and asking again will not tell.
    #[error("the coordinator no longer remembers transaction {txn:#x}; its outcome is unknown")]
    Forgotten { txn: TxnId },
}

/// Retry policy.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Wait this long for a reply before resending.
    pub retry_after: Duration,
    /// Attempts for `begin`, `get` and `put`.
    pub op_attempts: u32,
    /// Attempts for `commit` (it waits out a prepare round).
    pub commit_attempts: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            retry_after: Duration::from_millis(100),
            op_attempts: 5,
            commit_attempts: 20,
        }
    }
}

/// An open transaction.
#[derive(Debug, Clone)]
pub struct Txn {
    pub id: TxnId,
    /// Shards touched, with the shard epoch they reported (`None` when no
    /// reply came back yet).
    shards: BTreeMap<NodeId, Option<u64>>,
}

impl Txn {
    /// Shards this transaction touched.
    pub fn shards(&self) -> Vec<NodeId> {
        self.shards.keys().copied().collect()
    }
}

/// A transaction client.
pub struct TxnClient<E: Env> {
    env: E,
    coordinators: Vec<NodeId>,
    /// Index in `coordinators` of the replica asked first.
    current: usize,
    placement: Arc<dyn Placement>,
    config: ClientConfig,
    next_request: u64,
}

impl<E: Env> TxnClient<E> {
    /// `coordinators` is the classic coordinator alone, or every replica of
    /// a replicated one.
    pub fn new(env: E, coordinators: Vec<NodeId>, placement: Arc<dyn Placement>, config: ClientConfig) -> Self {
        assert!(!coordinators.is_empty());
        TxnClient {
            env,
            coordinators,
            current: 0,
            placement,
            config,
            next_request: 0,
        }
    }

    /// Sends `request` to `to` until `accept` takes a reply or the attempts
    /// run out. Other messages (stale replies) are dropped.
    async fn call<T>(&self, to: NodeId, request: &Msg, attempts: u32, accept: impl Fn(Msg) -> Option<T>) -> Option<T> {
        let bytes = codec::encode(request).expect("requests encode");
        for _ in 0..attempts {
            if let Some(value) = self.exchange(to, &bytes, &accept).await {
                return Some(value);
            }
        }
        None
    }

    /// One send and the wait for an accepted reply.
    async fn exchange<T>(&self, to: NodeId, bytes: &[u8], accept: impl Fn(Msg) -> Option<T>) -> Option<T> {
        let _ = self.env.send(to, bytes.to_vec()).await;
        let wait = async {
            loop {
                let (_, reply) = self.env.recv().await;
                if let Some(value) = codec::decode::<Msg>(&reply).ok().and_then(&accept) {
                    return value;
                }
            }
        };
        timeout(&self.env, self.config.retry_after, wait).await
    }

    /// [`TxnClient::call`] to the coordinator group: each attempt goes to the
    /// replica believed to lead; a redirect names the next one to try, and
    /// silence (or "no leader known", during an election: after a pause)
    /// moves on to the next replica.
    async fn call_coordinator<T>(
        &mut self,
        request: &Msg,
        attempts: u32,
        accept: impl Fn(Msg) -> Option<T>,
    ) -> Result<T, TxnError> {
        let bytes = codec::encode(request).expect("requests encode");
        let accept = |m: Msg| match m {
            Msg::Redirect { leader } => Some(Err(leader)),
            m => accept(m).map(Ok),
        };
        for _ in 0..attempts {
            let to = self.coordinators[self.current];
            let next = (self.current + 1) % self.coordinators.len();
            match self.exchange(to, &bytes, &accept).await {
                Some(Ok(value)) => return Ok(value),
                Some(Err(Some(leader))) if leader != to => {
                    self.current = self.coordinators.iter().position(|&c| c == leader).unwrap_or(next);
                }
                Some(Err(_)) => {
                    self.current = next;
                    self.env.sleep(self.config.retry_after).await;
                }
                None => self.current = next,
            }
        }
        Err(TxnError::Unavailable {
            node: self.coordinators[self.current],
        })
    }

    fn request_id(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    /// Starts a transaction (the coordinator issues its id).
    pub async fn begin(&mut self) -> Result<Txn, TxnError> {
        let request = self.request_id();
        let txn = self
            .call_coordinator(&Msg::Begin { request }, self.config.op_attempts, |m| match m {
                Msg::Began { request: r, txn } if r == request => Some(txn),
                _ => None,
            })
            .await?;
        Ok(Txn {
            id: txn,
            shards: BTreeMap::new(),
        })
    }

    /// Reads `key` (seeing this transaction's own writes). On error the
    /// transaction is aborted.
    pub async fn get(&mut self, txn: &mut Txn, key: &str) -> Result<Option<Value>, TxnError> {
        self.op(txn, key, None).await
    }

    /// Writes `key`, buffered at its shard until commit. On error the
    /// transaction is aborted.
    pub async fn put(&mut self, txn: &mut Txn, key: &str, value: Value) -> Result<(), TxnError> {
        self.op(txn, key, Some(value)).await.map(|_| ())
    }

    async fn op(&mut self, txn: &mut Txn, key: &str, put: Option<Value>) -> Result<Option<Value>, TxnError> {
        let shard = self.placement.shard_for(key);
        let epoch = *txn.shards.entry(shard).or_insert(None);
        let request = self.request_id();
        let msg = match put {
            Some(value) => Msg::Put {
                txn: txn.id,
                request,
                key: key.to_string(),
                value,
                epoch,
            },
            None => Msg::Get {
                txn: txn.id,
                request,
                key: key.to_string(),
                epoch,
            },
        };
        let id = txn.id;
        let reply = self
            .call(shard, &msg, self.config.op_attempts, |m| match m {
                Msg::OpReply {
                    txn: t,
                    request: r,
                    epoch,
                    result,
                } if t == id && r == request => Some((epoch, result)),
                _ => None,
            })
            .await;
        let error = match reply {
            None => TxnError::Unavailable { node: shard },
            Some((_, Err(reason))) => TxnError::Aborted(reason),
            Some((got, Ok(_))) if epoch.is_some_and(|e| e != got) => {
                TxnError::Aborted(AbortReason::ShardLostTxn { shard })
            }
            Some((got, Ok(value))) => {
                txn.shards.insert(shard, Some(got));
                return Ok(value);
            }
        };
        self.abort(txn.clone()).await;
        Err(error)
    }

    /// Abandons the transaction: its shards release its locks (best effort;
    /// a shard that misses this times the transaction out).
    pub async fn abort(&mut self, txn: Txn) {
        let bytes = codec::encode(&Msg::Abort { txn: txn.id }).expect("encodes");
        for shard in txn.shards.keys() {
            let _ = self.env.send(*shard, bytes.clone()).await;
        }
    }

    /// Commits: two-phase commit over the shards touched. `Err(Unavailable)`
    /// and `Err(Forgotten)` mean the outcome is unknown.
    pub async fn commit(&mut self, txn: Txn) -> Result<Outcome, TxnError> {
        let participants: Option<Vec<(NodeId, u64)>> = txn.shards.iter().map(|(&n, e)| e.map(|e| (n, e))).collect();
        let Some(participants) = participants else {
            // An operation failed earlier: the transaction is already aborted.
            self.abort(txn).await;
            return Ok(Outcome::Aborted(AbortReason::ClientAbort));
        };
        let msg = Msg::Commit {
            txn: txn.id,
            participants,
        };
        self.ask(txn.id, msg).await
    }

    /// The outcome of a transaction whose commit returned `Unavailable`.
    /// Asking never commits anything: the coordinator answers from its log
    /// or memory, or presumes abort (and then never commits it).
    pub async fn outcome(&mut self, txn: TxnId) -> Result<Outcome, TxnError> {
        self.ask(txn, Msg::Status { txn }).await
    }

    async fn ask(&mut self, txn: TxnId, msg: Msg) -> Result<Outcome, TxnError> {
        self.call_coordinator(&msg, self.config.commit_attempts, |m| match m {
            Msg::Outcome { txn: t, outcome } if t == txn => Some(Ok(outcome)),
            Msg::Forgotten { txn: t } if t == txn => Some(Err(TxnError::Forgotten { txn })),
            _ => None,
        })
        .await?
    }
}
