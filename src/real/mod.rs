//! The runtime boundary on the real world: tokio, TCP, files with fsync.
//!
//! [`RealEnv`] implements [`Env`] for one node of a cluster described by a
//! static peer map. Protocol code written against [`Env`] runs on it
//! unchanged; see `docs/real.md` for how a service sets a node up.
//!
//! - clock: tokio's monotonic [`Instant`](tokio::time::Instant), from the
//!   moment the node started;
//! - network: [`transport`] (TCP, length-delimited frames, reconnects),
//!   every connection authenticated by [`auth`];
//! - storage: [`storage`] (one record file per node, fsync, group commit);
//! - rng: ChaCha seeded from the OS — the one place `from_entropy` is allowed,
//!   since a real run is not meant to be reproducible from a seed.

pub mod auth;
pub mod cluster;
pub mod embedded;
pub mod identity;
pub mod local;
pub mod storage;
mod throttle;
pub mod transport;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::env::{Env, EnvError, NodeId};
use auth::{ClientCredentials, ClusterSecret, Credentials};

pub use identity::Identity;
pub use storage::FileStorage;
pub use transport::Transport;

/// Client ids start here (principal [`auth::FIRST_PRINCIPAL`]); member ids
/// stay below.
pub const FIRST_CLIENT_ID: NodeId = auth::FIRST_PRINCIPAL << 16;

/// What a node needs to know to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id; must be a key of `peers`.
    pub id: NodeId,
    /// Every node of the cluster (this one included) and where it listens.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Where this node keeps its record log (`node-<id>.log`) and the
    /// identity file that ties the directory to this member.
    pub data_dir: PathBuf,
    /// The cluster secret: proves this node a member and checks everyone
    /// who connects to it.
    pub secret: ClusterSecret,
    /// The cluster this node belongs to (the cluster file's `cluster_id`).
    pub cluster_id: String,
    /// Initialize `data_dir` as a new member's if it holds nothing of this
    /// member yet; otherwise a missing or wiped directory is refused.
    pub init: bool,
    /// What the listener allows (connections, handshake and idle time).
    pub limits: transport::Limits,
}

/// One node's environment on tokio. Cheap to clone; clones share the node.
#[derive(Clone)]
pub struct RealEnv {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    /// `None` for a client, which does not listen.
    local_addr: Option<SocketAddr>,
    origin: tokio::time::Instant,
    /// Where each peer is dialled (for error messages).
    peers: std::sync::RwLock<BTreeMap<NodeId, SocketAddr>>,
    transport: Arc<Transport>,
    /// `None` for a client, which keeps nothing on disk.
    storage: Option<FileStorage>,
    shutdown: CancellationToken,
}

impl RealEnv {
    /// Binds this node's address from the peer map, opens its storage and
    /// starts the transport. Must be called within a tokio runtime.
    pub async fn start(config: NodeConfig) -> std::io::Result<RealEnv> {
        let addr = *config.peers.get(&config.id).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("node {} is not in its own peer map", config.id),
            )
        })?;
        let listener = TcpListener::bind(addr).await?;
        Self::start_on(config, listener)
    }

    /// Like [`start`](Self::start) with an already bound listener, so tests
    /// (and supervisors) can bind port 0 first and build the peer map from
    /// the ports the OS chose. Must be called within a tokio runtime.
    pub fn start_on(config: NodeConfig, listener: TcpListener) -> std::io::Result<RealEnv> {
        let local_addr = listener.local_addr()?;
        let identity = Identity::new(config.cluster_id.clone(), config.id);
        let storage = if config.init {
            FileStorage::init(&config.data_dir, &identity)
        } else {
            FileStorage::open(&config.data_dir, &identity)
        };
        let storage = storage.map_err(|e| std::io::Error::other(e.to_string()))?;
        let shutdown = CancellationToken::new();
        let credentials = Credentials::Member(config.secret.clone());
        let transport = Transport::start(
            config.id,
            &config.peers,
            Some((listener, config.limits)),
            credentials,
            &shutdown,
        );
        tracing::info!(node = config.id, %local_addr, data = %storage.path().display(), "node started");
        Ok(RealEnv::new(
            config.id,
            Some(local_addr),
            config.peers,
            transport,
            Some(storage),
            shutdown,
        ))
    }

    /// A client of the nodes in `servers`, under a fresh node id of its
    /// principal: it connects to each of them and reads their answers on
    /// those connections, so it needs no listener, no place in the servers'
    /// peer maps and no disk (its storage calls fail). Must be called
    /// within a tokio runtime.
    pub fn client(credentials: &ClientCredentials, servers: &BTreeMap<NodeId, SocketAddr>) -> RealEnv {
        Self::client_as(credentials.random_id(), credentials, servers).expect("a random id of its own principal")
    }

    /// Like [`client`](Self::client) under a chosen id, which must belong to
    /// the credentials' principal (`id >> 16`) and be unique among the
    /// clients connected at once (a second connection under the same id
    /// takes its answers over).
    pub fn client_as(
        id: NodeId,
        credentials: &ClientCredentials,
        servers: &BTreeMap<NodeId, SocketAddr>,
    ) -> std::io::Result<RealEnv> {
        if !credentials.owns(id) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("client id {id} does not belong to principal {}", credentials.principal),
            ));
        }
        let shutdown = CancellationToken::new();
        let transport = Transport::start(id, servers, None, Credentials::Client(credentials.clone()), &shutdown);
        Ok(RealEnv::new(id, None, servers.clone(), transport, None, shutdown))
    }

    fn new(
        id: NodeId,
        local_addr: Option<SocketAddr>,
        peers: BTreeMap<NodeId, SocketAddr>,
        transport: Arc<Transport>,
        storage: Option<FileStorage>,
        shutdown: CancellationToken,
    ) -> RealEnv {
        RealEnv {
            inner: Arc::new(Inner {
                id,
                local_addr,
                peers: std::sync::RwLock::new(peers),
                origin: tokio::time::Instant::now(),
                transport,
                storage,
                shutdown,
            }),
        }
    }

    /// The address this node accepts connections on (`None` for a client).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local_addr
    }

    fn storage(&self) -> Result<&FileStorage, EnvError> {
        self.inner
            .storage
            .as_ref()
            .ok_or_else(|| EnvError::Storage("a client has no storage".to_string()))
    }

    /// Waits up to `limit` until every message sent so far is written to
    /// its connection (or lost with it); `false` if some were not. A
    /// process calls it before it exits, so its last messages leave with
    /// it (a transaction's abort, which nothing answers).
    pub async fn flush(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.inner.transport.flush()).await.is_ok()
    }

    /// Adds member `id` at `addr` while the node runs (a member added to
    /// the cluster): messages to it are sent from now on, and its
    /// connections are taken as a member's. A known member keeps its
    /// address.
    pub fn add_peer(&self, id: NodeId, addr: SocketAddr) {
        self.inner.transport.add_peer(id, addr);
        self.inner
            .peers
            .write()
            .expect("peer table poisoned")
            .entry(id)
            .or_insert(addr);
    }

    /// Stops the node: closes the listener and every connection and ends
    /// every task started with [`Env::spawn`]. What was synced stays on disk,
    /// so a new `RealEnv` on the same data directory is a restarted node.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }
}

impl Drop for Inner {
    /// The last handle gone means nobody can use the node: stop its tasks.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Env for RealEnv {
    fn id(&self) -> NodeId {
        self.inner.id
    }

    fn now(&self) -> Duration {
        self.inner.origin.elapsed()
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }

    fn send(&self, to: NodeId, msg: Vec<u8>) -> impl Future<Output = Result<(), EnvError>> + Send {
        std::future::ready(self.inner.transport.send(to, msg))
    }

    fn recv(&self) -> impl Future<Output = (NodeId, Vec<u8>)> + Send {
        let transport = self.inner.transport.clone();
        async move { transport.recv().await }
    }

    fn rng(&self) -> ChaCha8Rng {
        ChaCha8Rng::from_entropy()
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        transport::spawn_until(&self.inner.shutdown, task);
    }

    fn load(&self) -> Result<Vec<Vec<u8>>, EnvError> {
        self.storage()?.load()
    }

    fn append(&self, record: &[u8]) -> Result<(), EnvError> {
        self.storage()?.append(record)
    }

    fn sync(&self) -> impl Future<Output = Result<(), EnvError>> + Send {
        let storage = self.storage().cloned();
        async move { storage?.sync().await }
    }

    fn rewrite(&self, records: &[Vec<u8>]) -> impl Future<Output = Result<(), EnvError>> + Send {
        let (storage, records) = (self.storage().cloned(), records.to_vec());
        async move { storage?.rewrite(records).await }
    }

    fn peer_name(&self, node: NodeId) -> String {
        match self.inner.peers.read().expect("peer table poisoned").get(&node) {
            Some(addr) => format!("node {node} at {addr}"),
            None => format!("node {node}"),
        }
    }
}
