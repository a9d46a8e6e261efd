//! The client API: `begin`, `get`, `put`, `commit` over an [`Env`].
//!
//! Reads and writes go straight to the shard that owns the key (found by a
//! [`ShardMap`]); the shard locks the key and buffers writes. `commit` asks
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
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::placement::{DirectoryRouting, ShardMap};
use super::{AbortReason, CoordMsg, Msg, Outcome, ReplyMsg, ShardMsg, TxnId, Value};
use crate::env::retry::{exchange, Retry};
use crate::env::{codec, Env, NodeId};

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
    Unavailable {
        /// The node that did not answer.
        node: NodeId,
    },
    /// The replicated coordinator no longer remembers the transaction (see
    /// `txn::replicated`, "Forgetting"): its outcome is unknown, as with
    /// `Unavailable` for a commit, and asking again will not tell.
    #[error("the coordinator no longer remembers transaction {txn:#x}; its outcome is unknown")]
    Forgotten {
        /// The transaction.
        txn: TxnId,
    },
}

/// Retry policy; build with `..ClientConfig::default()`.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Wait this long for a reply before resending.
    pub retry_after: Duration,
    /// Attempts for `begin`, `get` and `put`.
    pub op_attempts: u32,
    /// Attempts for `commit` (it waits out a prepare round).
    pub commit_attempts: u32,
    /// Transactions [`TxnClient::run`] starts before it gives up on one
    /// that keeps aborting.
    pub run_attempts: u32,
    /// [`TxnClient::run`]'s first pause after an abort; each further one
    /// doubles (up to 64 times this), with jitter so that contenders
    /// spread out.
    pub backoff: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            retry_after: Duration::from_millis(100),
            op_attempts: 5,
            commit_attempts: 20,
            run_attempts: 20,
            backoff: Duration::from_millis(5),
        }
    }
}

/// Why [`TxnClient::run`] did not commit: the one error type of a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError<E = std::convert::Infallible> {
    /// Every attempt aborted (conflicts, shard restarts); nothing committed.
    #[error("aborted {attempts} times, last: {reason:?}")]
    Aborted {
        /// The last attempt's reason.
        reason: AbortReason,
        /// Transactions started.
        attempts: u32,
    },
    /// A node stopped answering before commit: nothing committed.
    #[error("node {node} did not answer; nothing committed")]
    Unavailable {
        /// The node that did not answer.
        node: NodeId,
    },
    /// The commit was sent and no answer says how it ended: it may have
    /// committed. Retrying could apply it twice.
    #[error("outcome of transaction {txn:#x} unknown; it may have committed")]
    OutcomeUnknown {
        /// The transaction, for [`TxnClient::outcome`].
        txn: TxnId,
    },
    /// The body gave up with its own error; nothing committed.
    #[error("failed: {0}")]
    Failed(E),
}

impl<E> From<TxnError> for RunError<E> {
    /// Lets the body use `?` on [`Tx`] operations: an abort is retried,
    /// anything else ends the run.
    fn from(error: TxnError) -> Self {
        match error {
            TxnError::Aborted(reason) => RunError::Aborted { reason, attempts: 0 },
            TxnError::Unavailable { node } => RunError::Unavailable { node },
            TxnError::Forgotten { txn } => RunError::OutcomeUnknown { txn },
        }
    }
}

/// The transaction a [`TxnClient::run`] body works in; clones share it.
pub struct Tx<E: Env> {
    inner: Arc<tokio::sync::Mutex<(TxnClient<E>, Txn)>>,
    id: TxnId,
}

impl<E: Env> Clone for Tx<E> {
    fn clone(&self) -> Self {
        Tx {
            inner: self.inner.clone(),
            id: self.id,
        }
    }
}

impl<E: Env> Tx<E> {
    /// Reads `key` (seeing this transaction's own writes).
    pub async fn get(&self, key: &str) -> Result<Option<Value>, TxnError> {
        let mut guard = self.inner.lock().await;
        let (client, txn) = &mut *guard;
        client.get(txn, key).await
    }

    /// Writes `key`, applied at commit.
    pub async fn put(&self, key: &str, value: Value) -> Result<(), TxnError> {
        let mut guard = self.inner.lock().await;
        let (client, txn) = &mut *guard;
        client.put(txn, key, value).await
    }

    /// This attempt's transaction id.
    pub fn id(&self) -> TxnId {
        self.id
    }
}

/// An open transaction.
#[derive(Debug, Clone)]
pub struct Txn {
    /// Its id, issued by the coordinator.
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
    placement: Arc<dyn ShardMap>,
    /// Where the views are read again, for a bank whose accounts move.
    routing: Option<DirectoryRouting>,
    config: ClientConfig,
    next_request: u64,
}

impl<E: Env> TxnClient<E> {
    /// A client of a bank whose accounts move between shards: it routes
    /// by the directory's ring views, and reads them again before the
    /// next transaction once a shard refused a key it no longer serves
    /// ([`super::AbortReason::NotServed`]; that transaction aborts).
    pub fn routed(env: E, coordinators: Vec<NodeId>, routing: DirectoryRouting, config: ClientConfig) -> Self {
        let mut client = TxnClient::new(env, coordinators, routing.map.clone(), config);
        client.routing = Some(routing);
        client
    }

    /// Reads the views again if a shard refused a key since they were
    /// last read (a client of [`TxnClient::routed`]; [`TxnClient::begin`]
    /// does it first); whether it read them.
    pub async fn refresh_routing(&self) -> bool {
        match &self.routing {
            Some(routing) => routing.refresh(&self.env).await,
            None => false,
        }
    }

    /// `coordinators` is the classic coordinator alone, or every replica of
    /// a replicated one.
    pub fn new(env: E, coordinators: Vec<NodeId>, placement: Arc<dyn ShardMap>, config: ClientConfig) -> Self {
        assert!(!coordinators.is_empty());
        // Request ids start anywhere, so that a reply meant for an earlier
        // client on this node (a restarted process's, arriving late) does
        // not answer this one's request: a stale `Began` handed a new
        // transaction an old, committed id (txn-replicated seed 1307).
        let next_request = env.rng().gen();
        TxnClient {
            env,
            coordinators,
            current: 0,
            placement,
            routing: None,
            config,
            next_request,
        }
    }

    /// Sends `request` to `to` until `accept` takes a reply or the attempts
    /// run out (see [`Retry::call`]).
    async fn call<T>(&self, to: NodeId, request: &Msg, attempts: u32, accept: impl Fn(Msg) -> Option<T>) -> Option<T> {
        let bytes = codec::encode(request).expect("requests encode");
        let retry = Retry {
            attempts,
            wait: self.config.retry_after,
        };
        retry.call(&self.env, to, &bytes, replies(accept)).await
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
            Msg::Reply(ReplyMsg::Redirect { leader }) => Some(Err(leader)),
            m => accept(m).map(Ok),
        };
        for _ in 0..attempts {
            let to = self.coordinators[self.current];
            let next = (self.current + 1) % self.coordinators.len();
            match exchange(&self.env, to, &bytes, self.config.retry_after, replies(&accept)).await {
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
        self.next_request = self.next_request.wrapping_add(1);
        self.next_request
    }

    /// Starts a transaction (the coordinator issues its id).
    pub async fn begin(&mut self) -> Result<Txn, TxnError> {
        self.refresh_routing().await;
        let request = self.request_id();
        let txn = self
            .call_coordinator(
                &Msg::Coord(CoordMsg::Begin { request }),
                self.config.op_attempts,
                |m| match m {
                    Msg::Reply(ReplyMsg::Began { request: r, txn }) if r == request => Some(txn),
                    _ => None,
                },
            )
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
            Some(value) => Msg::Shard(ShardMsg::Put {
                txn: txn.id,
                request,
                key: key.to_string(),
                value,
                epoch,
            }),
            None => Msg::Shard(ShardMsg::Get {
                txn: txn.id,
                request,
                key: key.to_string(),
                epoch,
            }),
        };
        let id = txn.id;
        let reply = self
            .call(shard, &msg, self.config.op_attempts, |m| match m {
                Msg::Reply(ReplyMsg::OpReply {
                    txn: t,
                    request: r,
                    epoch,
                    result,
                }) if t == id && r == request => Some((epoch, result)),
                _ => None,
            })
            .await;
        let error = match reply {
            None => TxnError::Unavailable { node: shard },
            Some((_, Err(reason))) => {
                if let AbortReason::NotServed { shard, epoch } = reason {
                    self.placement.refused(shard, epoch);
                }
                TxnError::Aborted(reason)
            }
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
    /// a shard that misses this times the transaction out). Nothing
    /// answers an abort: a process about to exit flushes its messages
    /// first (`RealEnv::flush`), or the abort may leave with it.
    pub async fn abort(&mut self, txn: Txn) {
        let bytes = codec::encode(&Msg::Shard(ShardMsg::Abort { txn: txn.id })).expect("encodes");
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
        let msg = Msg::Coord(CoordMsg::Commit {
            txn: txn.id,
            participants,
        });
        self.ask(txn.id, msg).await
    }

    /// The outcome of a transaction whose commit returned `Unavailable`.
    /// Asking never commits anything: the coordinator answers from its log
    /// or memory, or presumes abort (and then never commits it).
    pub async fn outcome(&mut self, txn: TxnId) -> Result<Outcome, TxnError> {
        self.ask(txn, Msg::Coord(CoordMsg::Status { txn })).await
    }

    /// Runs `body` in a transaction and commits it, starting over after
    /// every abort (with backoff) until it commits or
    /// [`ClientConfig::run_attempts`] transactions aborted: FoundationDB's
    /// `transact`. The body may run several times, so it should only read
    /// and write through its [`Tx`]; it ends the run early by returning
    /// `Err(RunError::Failed(..))`. The body's future owns what it uses
    /// (clone captures into it), so a run can be spawned.
    ///
    /// ```no_run
    /// # use ringfence::txn::client::{RunError, TxnClient};
    /// # async fn demo(client: &mut TxnClient<ringfence::real::RealEnv>) -> Result<(), RunError<String>> {
    /// client
    ///     .run(|tx| async move {
    ///         let a = tx.get("a").await?.unwrap_or_default();
    ///         if a.is_empty() {
    ///             return Err(RunError::Failed("a is empty".to_string()));
    ///         }
    ///         tx.put("b", a).await?;
    ///         Ok(())
    ///     })
    ///     .await
    /// # }
    /// ```
    pub async fn run<T, X, F, Fut>(&mut self, mut body: F) -> Result<T, RunError<X>>
    where
        F: FnMut(Tx<E>) -> Fut,
        Fut: Future<Output = Result<T, RunError<X>>>,
    {
        let mut rng = self.env.rng();
        let mut pause = self.config.backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let reason = match self.attempt(&mut body).await {
                Ok(value) => return Ok(value),
                Err(RunError::Aborted { reason, .. }) => reason,
                Err(other) => return Err(other),
            };
            if attempts >= self.config.run_attempts {
                return Err(RunError::Aborted { reason, attempts });
            }
            // Jittered exponential backoff: the contenders that made this
            // attempt abort are unlikely to meet again.
            let jitter = rng.gen_range(0.5..1.5);
            self.env.sleep(pause.mul_f64(jitter)).await;
            pause = (pause * 2).min(self.config.backoff * 64);
        }
    }

    /// One transaction of [`TxnClient::run`]. The body works on a copy of
    /// this client (so its future owns everything); the copy's request
    /// numbering and leader guess come back afterwards.
    async fn attempt<T, X, Fut>(&mut self, body: &mut impl FnMut(Tx<E>) -> Fut) -> Result<T, RunError<X>>
    where
        Fut: Future<Output = Result<T, RunError<X>>>,
    {
        let txn = self.begin().await?;
        let id = txn.id;
        let fork = TxnClient {
            env: self.env.clone(),
            coordinators: self.coordinators.clone(),
            current: self.current,
            placement: self.placement.clone(),
            routing: self.routing.clone(),
            config: self.config.clone(),
            next_request: self.next_request,
        };
        let inner = Arc::new(tokio::sync::Mutex::new((fork, txn)));
        let result = body(Tx {
            inner: inner.clone(),
            id,
        })
        .await;
        let txn = {
            let guard = inner.lock().await;
            self.next_request = guard.0.next_request;
            self.current = guard.0.current;
            guard.1.clone()
        };
        let value = match result {
            Ok(value) => value,
            Err(error) => {
                self.abort(txn).await;
                return Err(error);
            }
        };
        let outcome = match self.commit(txn).await {
            Ok(outcome) => outcome,
            // Unknown: ask once more before saying so.
            Err(TxnError::Unavailable { .. }) => match self.outcome(id).await {
                Ok(outcome) => outcome,
                Err(_) => return Err(RunError::OutcomeUnknown { txn: id }),
            },
            Err(_) => return Err(RunError::OutcomeUnknown { txn: id }),
        };
        match outcome {
            Outcome::Committed => Ok(value),
            Outcome::Aborted(reason) => Err(RunError::Aborted { reason, attempts: 0 }),
        }
    }

    async fn ask(&mut self, txn: TxnId, msg: Msg) -> Result<Outcome, TxnError> {
        self.call_coordinator(&msg, self.config.commit_attempts, |m| match m {
            Msg::Reply(ReplyMsg::Outcome { txn: t, outcome }) if t == txn => Some(Ok(outcome)),
            Msg::Reply(ReplyMsg::Forgotten { txn: t }) if t == txn => Some(Err(TxnError::Forgotten { txn })),
            _ => None,
        })
        .await?
    }
}

/// A reply filter over frames: those that decode as a [`Msg`] `accept` takes.
fn replies<T>(accept: impl Fn(Msg) -> Option<T>) -> impl FnMut(NodeId, &[u8]) -> Option<T> {
    move |_, frame| codec::decode::<Msg>(frame).ok().and_then(&accept)
}
