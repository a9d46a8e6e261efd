//! A cluster described by a small TOML file, and one node of it as a process.
//!
//! ```toml
//! data_dir = "data"          # node <id> keeps its files in data/node-<id>/
//!
//! [lock]
//! ttl_ms = 2000              # session lease; servers and clients read it here
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

use super::{NodeConfig, RealEnv};
use crate::env::NodeId;
use crate::lock::{self, ServerConfig};
use crate::log::node::{NoProbe, NodeError};
use crate::txn;
use crate::txn::client::TxnClient;
use crate::txn::participant::ParticipantConfig;
use crate::txn::placement::RingPlacement;
use crate::txn::shell::{self, no_observer};

/// The cluster file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Root of every node's data; relative paths are taken from the
    /// directory of the file itself.
    pub data_dir: PathBuf,
    #[serde(default)]
    pub lock: LockSettings,
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

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
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
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}: {error}")]
    Parse { path: PathBuf, error: Box<toml::de::Error> },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("node {0} is not in the cluster file")]
    UnknownNode(NodeId),
}

impl ClusterConfig {
    /// A cluster of `nodes` nodes on loopback: node `i` listens on
    /// `base_port + i` (lock), `+ 100 + i` (txn) and `+ 200 + i` (shard).
    pub fn loopback(nodes: u32, base_port: u16, data_dir: PathBuf) -> ClusterConfig {
        ClusterConfig {
            data_dir,
            lock: LockSettings::default(),
            nodes: (1..=nodes)
                .map(|id| {
                    let port = |offset: u16| SocketAddr::from(([127, 0, 0, 1], base_port + offset + id as u16));
                    NodeEntry {
                        id,
                        lock: port(0),
                        txn: port(100),
                        shard: port(200),
                    }
                })
                .collect(),
        }
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
        if config.data_dir.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            config.data_dir = base.join(&config.data_dir);
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

    /// Checks what serde cannot: ids, addresses, sizes.
    pub fn validate(&self) -> Result<(), String> {
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
        if self.lock.ttl_ms < 100 {
            return Err("lock.ttl_ms must be at least 100".to_string());
        }
        Ok(())
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

    pub fn coordinators(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn shards(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| SHARD_ID_BASE + n.id).collect()
    }

    /// A transaction client of this cluster on `env` (a client of
    /// [`ClusterConfig::txn_nodes`]).
    pub fn txn_client(&self, env: RealEnv) -> TxnClient<RealEnv> {
        let placement = RingPlacement::new(self.shards()).expect("validated: distinct shard ids");
        TxnClient::new(
            env,
            self.coordinators(),
            Arc::new(placement),
            txn::client::ClientConfig::default(),
        )
    }

    pub fn lock_ttl(&self) -> Duration {
        Duration::from_millis(self.lock.ttl_ms)
    }

    /// Where node `id` keeps its files.
    pub fn node_dir(&self, id: NodeId) -> PathBuf {
        self.data_dir.join(format!("node-{id}"))
    }

    /// Settings for a lock client of this cluster.
    pub fn lock_client_config(&self) -> lock::ClientConfig {
        lock::ClientConfig {
            ttl: self.lock_ttl(),
            ..lock::ClientConfig::default()
        }
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

/// Runs node `id` of the cluster until one of its services fails.
pub async fn run_node(config: &ClusterConfig, id: NodeId) -> Result<(), RunError> {
    let entry = config
        .nodes
        .iter()
        .find(|n| n.id == id)
        .ok_or(ConfigError::UnknownNode(id))?;
    let start = |id, peers, dir: &str| {
        RealEnv::start(NodeConfig {
            id,
            peers,
            data_dir: config.node_dir(entry.id).join(dir),
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
        Arc::new(NoProbe),
    );
    let coordinator = shell::run_replicated_coordinator(
        txn_env.clone(),
        config.coordinators(),
        Default::default(),
        no_observer(),
    );
    let shard_config = ParticipantConfig {
        coordinators: config.coordinators(),
        ..Default::default()
    };
    let shard = shell::run_participant(shard_env.clone(), shard_config, no_observer());
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
