//! A cluster described by a small TOML file, and one node of it as a process.
//!
//! ```toml
//! cluster_id = "5f0c2a9e41d7b388"  # ties every node's data directory to this cluster
//! data_dir = "data"          # node <id> keeps its files in data/node-<id>/
//!
//! [auth]
//! secret_file = "cluster.secret"   # members only: the cluster secret
//! client_key_file = "client.key"   # clients: a principal and its key
//!
//! [lock]
//! ttl_ms = 2000              # session lease; servers read it, clients learn it at open
//!
//! [[node]]
//! id = 1
//! lock = "127.0.0.1:7101"    # the lock service replica
//! txn = "127.0.0.1:7201"     # the transaction coordinator replica
//! shard = "127.0.0.1:7301"   # the shard (2PC participant) holding data
//!
//! [[node]]
//! id = 2
//! # ...
//! ```
//!
//! Paths are taken from the directory of the file itself. Nodes read the
//! secret, clients read the client key; [`ClusterConfig::create_credentials`]
//! writes both for a new cluster, and [`ClusterConfig::mint_client_key`]
//! more client keys (see `docs/security.md`).
//!
//! Every service replica is its own [`RealEnv`] with its own address and
//! record file, so services never share an inbox or a log. Clients read the
//! same file to find the servers and the TTL their leases must assume.
//!
//! Transactions: the coordinator is replicated on a Raft group of every
//! node's `txn` replica (ids = node ids), and node `i`'s shard has id
//! [`SHARD_ID_BASE`]` + i` in the same address space; keys are placed on
//! the shards by the consistent-hashing ring.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::auth::{ClientCredentials, ClusterSecret, CredentialError, FIRST_PRINCIPAL};
use super::transport::Limits;
use super::{NodeConfig, RealEnv};
use crate::env::NodeId;
use crate::lock::{self, ServerConfig};
use crate::log::service::NodeError;
use crate::observe::Ignore;
use crate::txn;
use crate::txn::client::TxnClient;
use crate::txn::participant::ParticipantConfig;
use crate::txn::placement::RingShardMap;
use crate::txn::shell;

/// The longest session lease a cluster may configure, in milliseconds.
pub const MAX_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// The cluster file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Names this cluster; written into each member's data directory when
    /// it is initialized, so a directory from another cluster is refused.
    /// `ringfence cluster` generates one; files from before it existed must
    /// add one (any string unique to the cluster).
    #[serde(default)]
    pub cluster_id: String,
    /// Root of every node's data; relative paths are taken from the
    /// directory of the file itself.
    pub data_dir: PathBuf,
    /// Where the credentials are.
    #[serde(default)]
    pub auth: AuthSettings,
    /// The lock service's settings.
    #[serde(default)]
    pub lock: LockSettings,
    /// Every node, as `[[node]]` tables.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeEntry>,
}

/// Settings of the lock service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockSettings {
    /// Session lease in milliseconds.
    pub ttl_ms: u64,
}

impl Default for LockSettings {
    fn default() -> Self {
        LockSettings { ttl_ms: 2000 }
    }
}

/// Where the credentials are; relative paths are taken from the directory
/// of the cluster file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The cluster secret (64 hex digits), read by nodes only.
    pub secret_file: PathBuf,
    /// The credentials the command-line clients use.
    pub client_key_file: PathBuf,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            secret_file: PathBuf::from("cluster.secret"),
            client_key_file: PathBuf::from("client.key"),
        }
    }
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// The node's id (1..1000).
    pub id: NodeId,
    /// Where this node's lock service replica listens.
    pub lock: SocketAddr,
    /// Where this node's transaction coordinator replica listens.
    pub txn: SocketAddr,
    /// Where this node's shard listens.
    pub shard: SocketAddr,
}

/// Shard ids are node ids plus this, so they never meet coordinator ids.
pub const SHARD_ID_BASE: NodeId = 1000;

/// A cluster file that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's message says what it means
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}: {error}")]
    Parse { path: PathBuf, error: Box<toml::de::Error> },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("node {0} is not in the cluster file")]
    UnknownNode(NodeId),
    #[error("credentials: {0}")]
    Credentials(#[from] CredentialError),
}

impl ClusterConfig {
    /// A cluster of `nodes` nodes on loopback: node `i` listens on
    /// `base_port + i` (lock), `+ 100 + i` (txn) and `+ 200 + i` (shard).
    /// Refused when a port would pass 65535 (rather than wrap around) or
    /// two services would share one (more than 99 nodes).
    pub fn loopback(nodes: u32, base_port: u16, data_dir: PathBuf) -> Result<ClusterConfig, String> {
        if nodes > 99 {
            return Err(format!(
                "{nodes} nodes on loopback: at most 99 (ports are base + 100·service + id)"
            ));
        }
        let highest = u32::from(base_port) + 200 + nodes;
        if highest > u32::from(u16::MAX) {
            return Err(format!(
                "base port {base_port} with {nodes} nodes needs ports up to {highest}; the highest is 65535 \
                 (use a base port of at most {})",
                u32::from(u16::MAX) - 200 - nodes
            ));
        }
        let port =
            |offset: u32, id: u32| SocketAddr::from(([127, 0, 0, 1], (u32::from(base_port) + offset + id) as u16));
        Ok(ClusterConfig {
            cluster_id: new_cluster_id(),
            data_dir,
            auth: AuthSettings::default(),
            lock: LockSettings::default(),
            nodes: (1..=nodes)
                .map(|id| NodeEntry {
                    id,
                    lock: port(0, id),
                    txn: port(100, id),
                    shard: port(200, id),
                })
                .collect(),
        })
    }

    /// Reads and validates a cluster file.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let mut config: ClusterConfig = toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            error: Box::new(error),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for path in [
            &mut config.data_dir,
            &mut config.auth.secret_file,
            &mut config.auth.client_key_file,
        ] {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        config.validate().map_err(|reason| ConfigError::Invalid {
            path: path.to_owned(),
            reason,
        })?;
        Ok(config)
    }

    /// Writes the file (for `ringfence cluster`).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = toml::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }

    /// Checks what serde cannot: ids, addresses, sizes, the lease.
    pub fn validate(&self) -> Result<(), String> {
        if self.cluster_id.is_empty() {
            return Err(
                "no cluster_id: add a line `cluster_id = \"...\"` with a string unique to this \
                        cluster (`ringfence cluster` generates one)"
                    .to_string(),
            );
        }
        if self.nodes.is_empty() {
            return Err("the cluster has no [[node]]".to_string());
        }
        if self.nodes.len() > crate::log::MAX_MEMBERS {
            return Err(format!("at most {} nodes", crate::log::MAX_MEMBERS));
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for node in &self.nodes {
            if node.id == 0 || node.id >= SHARD_ID_BASE {
                return Err(format!("node id {} is outside 1..{SHARD_ID_BASE}", node.id));
            }
            if !ids.insert(node.id) {
                return Err(format!("node id {} appears twice", node.id));
            }
            for addr in [node.lock, node.txn, node.shard] {
                if !addrs.insert(addr) {
                    return Err(format!("address {addr} appears twice"));
                }
            }
        }
        if !(100..=MAX_TTL_MS).contains(&self.lock.ttl_ms) {
            return Err(format!(
                "lock.ttl_ms must be from 100 to {MAX_TTL_MS} (a day): a lease longer than that outlives \
                 any client that crashed holding it"
            ));
        }
        Ok(())
    }

    /// The cluster secret, for a node.
    pub fn secret(&self) -> Result<ClusterSecret, ConfigError> {
        Ok(ClusterSecret::load(&self.auth.secret_file)?)
    }

    /// The command-line clients' credentials.
    pub fn client_credentials(&self) -> Result<ClientCredentials, ConfigError> {
        Ok(ClientCredentials::load(&self.auth.client_key_file)?)
    }

    /// Writes a fresh cluster secret and a client key (principal
    /// [`FIRST_PRINCIPAL`]) where the settings say, unless a secret is
    /// already there: a running cluster keeps its credentials.
    pub fn create_credentials(&self) -> Result<(), ConfigError> {
        if self.auth.secret_file.exists() {
            return Ok(());
        }
        let secret = ClusterSecret::generate();
        secret.save(&self.auth.secret_file)?;
        let client = secret
            .client_credentials(FIRST_PRINCIPAL)
            .expect("the first principal is valid");
        client.save(&self.auth.client_key_file)?;
        Ok(())
    }

    /// Writes credentials for client `principal` to `path` (needs the
    /// secret, so only an operator with a node's files can do it).
    pub fn mint_client_key(&self, principal: u32, path: &Path) -> Result<(), ConfigError> {
        let credentials = self
            .secret()?
            .client_credentials(principal)
            .map_err(|reason| ConfigError::Invalid {
                path: path.to_owned(),
                reason,
            })?;
        Ok(credentials.save(path)?)
    }

    /// A client of `servers` with the command-line credentials.
    pub fn client_env(&self, servers: &BTreeMap<NodeId, SocketAddr>) -> Result<RealEnv, ConfigError> {
        Ok(RealEnv::client(&self.client_credentials()?, servers))
    }

    /// Lock service replicas by id.
    pub fn lock_servers(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.nodes.iter().map(|n| (n.id, n.lock)).collect()
    }

    /// Coordinator replicas and shards by id: the transaction service's
    /// address space.
    pub fn txn_nodes(&self) -> BTreeMap<NodeId, SocketAddr> {
        let coordinators = self.nodes.iter().map(|n| (n.id, n.txn));
        coordinators
            .chain(self.nodes.iter().map(|n| (SHARD_ID_BASE + n.id, n.shard)))
            .collect()
    }

    /// The transaction coordinator replicas' ids.
    pub fn coordinators(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The shards' ids.
    pub fn shards(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| SHARD_ID_BASE + n.id).collect()
    }

    /// A transaction client of this cluster on `env` (a client of
    /// [`ClusterConfig::txn_nodes`]).
    pub fn txn_client(&self, env: RealEnv) -> TxnClient<RealEnv> {
        let placement = RingShardMap::new(self.shards()).expect("validated: distinct shard ids");
        TxnClient::new(
            env,
            self.coordinators(),
            Arc::new(placement),
            txn::client::ClientConfig::default(),
        )
    }

    /// The lock servers' session TTL.
    pub fn lock_ttl(&self) -> Duration {
        Duration::from_millis(self.lock.ttl_ms)
    }

    /// Where node `id` keeps its files.
    pub fn node_dir(&self, id: NodeId) -> PathBuf {
        self.data_dir.join(format!("node-{id}"))
    }

    /// Settings for a lock client of this cluster (the TTL it learns from
    /// the servers at open).
    pub fn lock_client_config(&self) -> lock::ClientConfig {
        lock::ClientConfig::default()
    }

    /// Settings for the lock service replicas of this cluster.
    pub fn lock_server_config(&self) -> ServerConfig {
        ServerConfig {
            ttl: self.lock_ttl(),
            ..ServerConfig::default()
        }
    }
}

/// Why a node stopped.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's message says what it means
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start: {0}")]
    Start(#[from] std::io::Error),
    #[error("lock service: {0}")]
    Lock(NodeError),
    #[error("transaction coordinator: {0}")]
    Coordinator(NodeError),
    #[error("shard stopped")]
    Shard,
}

/// A fresh random cluster id (16 hex digits).
pub fn new_cluster_id() -> String {
    use rand::{Rng, SeedableRng};
    format!("{:016x}", rand_chacha::ChaCha8Rng::from_entropy().gen::<u64>())
}

/// Runs node `id` of the cluster until one of its services fails. `init`
/// initializes the node's data directories if they hold nothing of it yet
/// (a new member); without it a missing or wiped directory is refused.
pub async fn run_node(config: &ClusterConfig, id: NodeId, init: bool, limits: Limits) -> Result<(), RunError> {
    let entry = config
        .nodes
        .iter()
        .find(|n| n.id == id)
        .ok_or(ConfigError::UnknownNode(id))?;
    let secret = config.secret()?;
    let start = |id, peers, dir: &str| {
        RealEnv::start(NodeConfig {
            id,
            peers,
            data_dir: config.node_dir(entry.id).join(dir),
            secret: secret.clone(),
            cluster_id: config.cluster_id.clone(),
            init,
            limits,
        })
    };
    let lock_env = start(id, config.lock_servers(), "lock").await?;
    let txn_env = start(id, config.txn_nodes(), "txn").await?;
    let shard_env = start(SHARD_ID_BASE + id, config.txn_nodes(), "shard").await?;
    tracing::info!(node = id, lock = %entry.lock, txn = %entry.txn, shard = %entry.shard, "serving");
    let lock = lock::server::run(
        lock_env.clone(),
        config.lock_servers().into_keys().collect(),
        config.lock_server_config(),
        Arc::new(Ignore),
    );
    let coordinator = shell::run_replicated_coordinator(
        txn_env.clone(),
        config.coordinators(),
        Default::default(),
        Arc::new(Ignore),
        Arc::new(Ignore),
    );
    let shard_config = ParticipantConfig {
        coordinators: config.coordinators(),
        ..Default::default()
    };
    let shard = shell::run_participant(shard_env.clone(), shard_config, Arc::new(Ignore));
    let result = tokio::select! {
        result = lock => result.map_err(RunError::Lock),
        result = coordinator => result.map_err(RunError::Coordinator),
        () = shard => Err(RunError::Shard),
    };
    for env in [lock_env, txn_env, shard_env] {
        env.shutdown();
    }
    result
}
