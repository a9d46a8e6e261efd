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
//! # A sharded lock service (optional): lock group 1 is `lock` above,
//! # groups 2, 3, ... are these; the directory holds their ring view.
//! lock_groups = ["127.0.0.1:7111"]
//! directory = "127.0.0.1:7401"
//! # Accounts that move between the shards (optional): the replicated
//! # ring view of the bank, which `ringfence group --accounts` changes.
//! account_directory = "127.0.0.1:7501"
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
//! A sharded lock service: lock group `g`'s replica on node `i` has id
//! [`lock_replica_id`]`(g, i)` (group 1's are the node ids), the
//! directory's [`DIRECTORY_ID_BASE`]` + i`, so one client reaches every
//! group and the directory on one connection set. Group 1 founds the
//! service serving every name; the others join serving none until an
//! operator puts them in the ring (`ringfence group add`), which moves
//! their share of the names to them online ([`crate::shard::rebalance`]).
//! Their members are the nodes that list them when the cluster is
//! founded (`ringfence member` changes group 1 and the coordinators).
//!
//! Transactions: the coordinator is replicated on a Raft group of every
//! node's `txn` replica (ids = node ids), and node `i`'s shard has id
//! [`SHARD_ID_BASE`]` + i` in the same address space; keys are placed on
//! the shards by the consistent-hashing ring. Without an account
//! directory that ring is fixed: every shard serves its share from the
//! founding on. With one (replica ids [`ACCOUNT_DIRECTORY_ID_BASE`]` + i`,
//! in the same address space), the lowest shard founds the bank serving
//! every account, the others join serving none, and an operator moves
//! accounts between them online (`ringfence group --accounts`,
//! [`crate::txn::rebalance`]); clients route by the directory's views
//! ([`crate::txn::placement::DirectoryRouting`]).

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
use crate::lock::rebalance::LockGroups;
use crate::lock::{self, ServerConfig, ShardedLockClient};
use crate::log::client::{Client, Inbox};
use crate::log::membership::{founding, Boot};
use crate::log::service::NodeError;
use crate::observe::Ignore;
use crate::shard::directory::{self, Directory};
use crate::shard::rebalance::{self, Moves, RebalanceConfig, RebalanceError};
use crate::shard::GroupId;
use crate::txn;
use crate::txn::client::TxnClient;
use crate::txn::participant::ParticipantConfig;
use crate::txn::placement::{DirectoryRouting, RingShardMap};
use crate::txn::rebalance::ShardGroups;
use crate::txn::shell::{self, CoordLogEnv};

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
    /// Where this node's shard listens, if it holds one. Without an
    /// account directory the shards are the founding nodes' (a fixed ring
    /// places accounts on them); with one, its views do, and a node added
    /// later may hold a shard too (`ringfence member add --shard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<SocketAddr>,
    /// Where this node's replicas of lock groups 2, 3, ... listen (a
    /// sharded lock service; group 1 is `lock`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lock_groups: Vec<SocketAddr>,
    /// Where this node's replica of the directory listens: the replicated
    /// ring view of a sharded lock service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<SocketAddr>,
    /// Where this node's replica of the account directory listens: the
    /// replicated ring view of a bank whose accounts move between the
    /// shards. Without any, the accounts stay where a fixed ring over the
    /// shards puts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_directory: Option<SocketAddr>,
}

impl NodeEntry {
    /// How many addresses the node listens on (one per service replica).
    pub fn listeners(&self) -> usize {
        let optional = [self.directory, self.account_directory].iter().flatten().count();
        3 + self.lock_groups.len() + optional - usize::from(self.shard.is_none())
    }

    /// The address the node binds last (its shard's, else its
    /// coordinator's): once it accepts there, every service has started.
    pub fn bound_last(&self) -> SocketAddr {
        self.shard.unwrap_or(self.txn)
    }
}

/// Shard ids are node ids plus this, so they never meet coordinator ids.
pub const SHARD_ID_BASE: NodeId = 1000;

/// Most lock groups a cluster may have.
pub const MAX_LOCK_GROUPS: usize = 16;

/// Directory replica ids are node ids plus this, above every lock
/// replica's id.
pub const DIRECTORY_ID_BASE: NodeId = MAX_LOCK_GROUPS as NodeId * SHARD_ID_BASE;

/// Account directory replica ids are node ids plus this: in the
/// transaction service's address space, above the shards'.
pub const ACCOUNT_DIRECTORY_ID_BASE: NodeId = 2 * SHARD_ID_BASE;

/// The services a new cluster runs beside the first lock group, the
/// coordinators and the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Lock groups (1: the lock service is not sharded; more: a directory
    /// replica on every node too).
    pub lock_groups: u32,
    /// An account directory on every node, so that accounts can move
    /// between the shards.
    pub movable_accounts: bool,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            lock_groups: 1,
            movable_accounts: false,
        }
    }
}

/// The id of lock group `group`'s replica on node `node`: group 1's are
/// the node ids, group `g`'s the node ids plus `(g − 1)·1000`, so the
/// replicas of every group are distinct peers of one client.
pub fn lock_replica_id(group: GroupId, node: NodeId) -> NodeId {
    (group - 1) * SHARD_ID_BASE + node
}

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
    /// `base_port + i` (lock), `+ 100 + i` (txn) and `+ 200 + i` (shard);
    /// with `lock_groups` above 1, on `+ 300 + i` (directory) and
    /// `+ 100·(g + 2) + i` (lock group `g`) too; with movable accounts,
    /// the account directory on the next hundred above those. Refused when
    /// a port would pass 65535 (rather than wrap around) or two services
    /// would share one (more than 99 nodes).
    pub fn loopback(nodes: u32, layout: Layout, base_port: u16, data_dir: PathBuf) -> Result<ClusterConfig, String> {
        let Layout {
            lock_groups,
            movable_accounts,
        } = layout;
        if nodes > 99 {
            return Err(format!(
                "{nodes} nodes on loopback: at most 99 (ports are base + 100·service + id)"
            ));
        }
        if !(1..=MAX_LOCK_GROUPS as u32).contains(&lock_groups) {
            return Err(format!("{lock_groups} lock groups: from 1 to {MAX_LOCK_GROUPS}"));
        }
        let services = if lock_groups > 1 { lock_groups + 2 } else { 2 } + u32::from(movable_accounts);
        let highest = u32::from(base_port) + 100 * services + nodes;
        if highest > u32::from(u16::MAX) {
            return Err(format!(
                "base port {base_port} with {nodes} nodes needs ports up to {highest}; the highest is 65535 \
                 (use a base port of at most {})",
                u32::from(u16::MAX) - 100 * services - nodes
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
                    shard: Some(port(200, id)),
                    lock_groups: (2..=lock_groups).map(|g| port(100 * (g + 2), id)).collect(),
                    directory: (lock_groups > 1).then(|| port(300, id)),
                    account_directory: movable_accounts.then(|| port(100 * services, id)),
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

    /// Writes the file atomically: a reader (a node watching it, a client
    /// starting) sees the old file or the new one, never half of one, and
    /// a crash leaves one of them (written beside it, synced, renamed over
    /// it, the directory synced).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let text = toml::to_string_pretty(self).map_err(std::io::Error::other)?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        file.write_all(text.as_bytes())?;
        file.as_file().sync_all()?;
        file.persist(path).map_err(|e| e.error)?;
        std::fs::File::open(dir)?.sync_all()
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
        if self.nodes.iter().all(|n| n.shard.is_none()) {
            return Err("no [[node]] holds a shard: the founding nodes hold the accounts".to_string());
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
            if node.lock_groups.len() >= MAX_LOCK_GROUPS {
                return Err(format!(
                    "node {} lists {} lock groups beside `lock`: at most {MAX_LOCK_GROUPS} groups in all",
                    node.id,
                    node.lock_groups.len()
                ));
            }
            let services = [
                Some(node.lock),
                Some(node.txn),
                node.shard,
                node.directory,
                node.account_directory,
            ];
            for addr in services.into_iter().flatten().chain(node.lock_groups.iter().copied()) {
                if !addrs.insert(addr) {
                    return Err(format!("address {addr} appears twice"));
                }
            }
        }
        if self.lock_groups().len() > 1 && self.directory_servers().is_empty() {
            return Err(
                "lock groups beyond the first need a directory: give some [[node]] a `directory` address".into(),
            );
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

    /// An operator's clients of the two groups (reads the secret: the
    /// operators' key is derived from it).
    pub fn operator(&self) -> Result<OperatorClients, ConfigError> {
        let credentials = self.secret()?.operator_credentials();
        let lock_servers = self.lock_servers();
        let coordinators: BTreeMap<NodeId, SocketAddr> = self.nodes.iter().map(|n| (n.id, n.txn)).collect();
        Ok(OperatorClients {
            lock: Client::new(
                RealEnv::client(&credentials, &lock_servers),
                lock_servers.into_keys().collect(),
            ),
            coordinators: Client::new(
                CoordLogEnv(RealEnv::client(&credentials, &coordinators)),
                coordinators.into_keys().collect(),
            ),
        })
    }

    /// Lock service replicas by id.
    pub fn lock_servers(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.nodes.iter().map(|n| (n.id, n.lock)).collect()
    }

    /// Every lock group's replicas by id (group 1's are
    /// [`ClusterConfig::lock_servers`]): group `g`'s are on the nodes that
    /// list at least `g − 1` addresses in `lock_groups`.
    pub fn lock_groups(&self) -> BTreeMap<GroupId, BTreeMap<NodeId, SocketAddr>> {
        let mut groups = BTreeMap::from([(1, self.lock_servers())]);
        for node in &self.nodes {
            for (i, &addr) in node.lock_groups.iter().enumerate() {
                let group = i as GroupId + 2;
                let replicas = groups.entry(group).or_default();
                replicas.insert(lock_replica_id(group, node.id), addr);
            }
        }
        groups
    }

    /// The directory's replicas by id (none when the lock service is not
    /// sharded).
    pub fn directory_servers(&self) -> BTreeMap<NodeId, SocketAddr> {
        let replicas = self
            .nodes
            .iter()
            .filter_map(|n| Some((DIRECTORY_ID_BASE + n.id, n.directory?)));
        replicas.collect()
    }

    /// Every replica a client of the lock service may ask: each group's
    /// and the directory's.
    pub fn lock_service_peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        let groups = self.lock_groups().into_values().flatten();
        groups.chain(self.directory_servers()).collect()
    }

    /// A lock client of every group of this cluster's lock service on
    /// `env` (a client of [`ClusterConfig::lock_service_peers`]).
    pub fn sharded_lock_client(&self, env: RealEnv) -> ShardedLockClient<RealEnv> {
        let groups = self.lock_groups().into_iter();
        let groups = groups
            .map(|(g, replicas)| (g, replicas.into_keys().collect()))
            .collect();
        let directory = self.directory_servers().into_keys().collect();
        ShardedLockClient::new(env, groups, directory, self.lock_client_config())
    }

    /// An operator's clients of every lock group and of the directory,
    /// sharing one connection set, for [`crate::shard::rebalance`].
    pub fn shard_operator(&self) -> Result<ShardOperator<LockGroups<RealEnv>>, ConfigError> {
        let credentials = self.secret()?.operator_credentials();
        let env = RealEnv::client(&credentials, &self.lock_service_peers());
        let inbox = Inbox::new(env);
        let groups = self.lock_groups().into_iter();
        let groups = groups.map(|(g, replicas)| (g, Client::sharing(inbox.clone(), replicas.into_keys().collect())));
        Ok(ShardOperator {
            founder: FOUNDER_GROUP,
            groups: LockGroups::new(groups.collect()),
            directory: Client::sharing(inbox, self.directory_servers().into_keys().collect()),
        })
    }

    /// Coordinator replicas, shards and account directory replicas by
    /// id: the transaction service's address space.
    pub fn txn_nodes(&self) -> BTreeMap<NodeId, SocketAddr> {
        let coordinators = self.nodes.iter().map(|n| (n.id, n.txn));
        let shards = self.nodes.iter().filter_map(|n| Some((SHARD_ID_BASE + n.id, n.shard?)));
        coordinators
            .chain(shards)
            .chain(self.account_directory_servers())
            .collect()
    }

    /// The account directory's replicas by id (none when accounts do not
    /// move).
    pub fn account_directory_servers(&self) -> BTreeMap<NodeId, SocketAddr> {
        let replicas = self
            .nodes
            .iter()
            .filter_map(|n| Some((ACCOUNT_DIRECTORY_ID_BASE + n.id, n.account_directory?)));
        replicas.collect()
    }

    /// Whether accounts move between the shards (the cluster has an
    /// account directory).
    pub fn movable_accounts(&self) -> bool {
        self.nodes.iter().any(|n| n.account_directory.is_some())
    }

    /// An operator's clients of every shard and of the account directory,
    /// sharing one connection set, for [`crate::shard::rebalance`]. The
    /// lowest shard founds the bank.
    pub fn account_operator(&self) -> Result<ShardOperator<ShardGroups<RealEnv>>, ConfigError> {
        let credentials = self.secret()?.operator_credentials();
        let inbox = Inbox::new(RealEnv::client(&credentials, &self.txn_nodes()));
        let shards = self.shards();
        let directory = self.account_directory_servers().into_keys().collect();
        Ok(ShardOperator {
            founder: shards[0],
            groups: ShardGroups::new(inbox.clone(), shards),
            directory: Client::sharing(inbox, directory),
        })
    }

    /// The transaction coordinator replicas' ids.
    pub fn coordinators(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The shards' ids, lowest (the founding shard of movable accounts)
    /// first.
    pub fn shards(&self) -> Vec<NodeId> {
        let shards = self.nodes.iter().filter(|n| n.shard.is_some());
        let shards: BTreeSet<NodeId> = shards.map(|n| SHARD_ID_BASE + n.id).collect();
        shards.into_iter().collect()
    }

    /// Node `id`'s entry.
    pub fn node(&self, id: NodeId) -> Result<&NodeEntry, ConfigError> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or(ConfigError::UnknownNode(id))
    }

    /// A transaction client of this cluster on `env` (a client of
    /// [`ClusterConfig::txn_nodes`]): it finds accounts by the fixed ring
    /// over the shards, or by the account directory's views when accounts
    /// move.
    pub fn txn_client(&self, env: RealEnv) -> TxnClient<RealEnv> {
        let config = txn::client::ClientConfig::default();
        if self.movable_accounts() {
            let directory = self.account_directory_servers().into_keys().collect();
            let routing = DirectoryRouting::new(self.shards(), directory);
            return TxnClient::routed(env, self.coordinators(), routing, config);
        }
        let placement = RingShardMap::new(self.shards()).expect("validated: distinct shard ids");
        TxnClient::new(env, self.coordinators(), Arc::new(placement), config)
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

/// An operator's clients of the cluster's replicated groups, for the
/// procedures of [`crate::log::admin`].
pub struct OperatorClients {
    /// The lock service's group.
    pub lock: Client<RealEnv, crate::lock::LockMachine>,
    /// The transaction coordinators' group.
    pub coordinators: Client<CoordLogEnv<RealEnv>, crate::txn::replicated::CoordMachine>,
}

/// The lock group that founds a cluster's lock service (`lock` of each
/// node): it serves every name until the first ring view.
pub const FOUNDER_GROUP: GroupId = 1;

/// Ring points per unit of weight in the views `ringfence group` and the
/// bench make, unless told otherwise.
pub const GROUP_VNODES: u32 = 160;

/// An operator's clients of a sharded service: the lock groups
/// ([`ClusterConfig::shard_operator`]) or the bank's shards
/// ([`ClusterConfig::account_operator`]), and its directory.
pub struct ShardOperator<G> {
    /// The group that founded the service, serving every key until the
    /// first view.
    pub founder: GroupId,
    /// A client of each group.
    pub groups: G,
    /// A client of the directory.
    pub directory: Client<RealEnv, Directory>,
}

impl<G: rebalance::Groups> ShardOperator<G> {
    /// Brings the service to the ring of `weights` with `vnodes` points
    /// per unit of weight ([`rebalance::rebalance_to`]).
    pub async fn rebalance_to(
        &mut self,
        weights: Vec<(GroupId, u32)>,
        vnodes: u32,
        config: &RebalanceConfig,
    ) -> Result<(u64, Moves), RebalanceError> {
        let (directory, groups) = (&mut self.directory, &mut self.groups);
        rebalance::rebalance_to(directory, groups, self.founder, (weights, vnodes), config).await
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
    #[error("lock group {0}: {1}")]
    LockGroup(GroupId, NodeError),
    #[error("directory: {0}")]
    Directory(NodeError),
    #[error("transaction coordinator: {0}")]
    Coordinator(NodeError),
    #[error("shard: {0}")]
    Shard(NodeError),
}

/// A fresh random cluster id (16 hex digits).
pub fn new_cluster_id() -> String {
    use rand::{Rng, SeedableRng};
    format!("{:016x}", rand_chacha::ChaCha8Rng::from_entropy().gen::<u64>())
}

/// How a node starts on its data directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// On what its directories hold: a restart. A missing or wiped
    /// directory is refused.
    Restart,
    /// A founding node of a new cluster: initializes empty directories and
    /// founds the groups with every node of the file as a voter. Only for
    /// the cluster's first start: a founder whose data was lost and that
    /// founded again would vote as if it remembered its votes.
    Found,
    /// A node joining a running cluster, or one whose data was lost coming
    /// back: initializes empty directories under a new incarnation that
    /// counts in no quorum until an operator adds it to the groups
    /// (`ringfence member add` or `member replace`).
    Join,
}

/// How often a running node reads its cluster file again for members
/// added since it started.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Runs node `id` of the cluster until one of its services fails. `start`
/// says what its data directories may hold. With `watch`, the cluster file
/// there is read again every [`WATCH_INTERVAL`], and members added to it
/// are connected to while the node runs.
pub async fn run_node(
    config: &ClusterConfig,
    id: NodeId,
    start: Start,
    limits: Limits,
    watch: Option<&Path>,
) -> Result<(), RunError> {
    let entry = config.node(id)?;
    let secret = config.secret()?;
    let env = |id, peers, dir: &str| {
        RealEnv::start(NodeConfig {
            id,
            peers,
            data_dir: config.node_dir(entry.id).join(dir),
            secret: secret.clone(),
            cluster_id: config.cluster_id.clone(),
            init: start != Start::Restart,
            limits,
        })
    };
    let boot = |members: Vec<NodeId>| match start {
        Start::Found => founding(members),
        Start::Restart | Start::Join => (members, Boot::Join),
    };
    let lock_env = env(id, config.lock_servers(), "lock").await?;
    // Started before the coordinator and the shard, so that once the
    // address bound last accepts every service has started.
    let mut sharded = Vec::new();
    for (group, replicas) in config.lock_groups().into_iter().skip(1) {
        let me = lock_replica_id(group, id);
        if replicas.contains_key(&me) {
            let members = replicas.keys().copied().collect();
            sharded.push((Some(group), members, env(me, replicas, &format!("lock-{group}")).await?));
        }
    }
    let directories = [
        (DIRECTORY_ID_BASE, config.directory_servers(), "directory"),
        (
            ACCOUNT_DIRECTORY_ID_BASE,
            config.account_directory_servers(),
            "account-directory",
        ),
    ];
    for (base, servers, dir) in directories {
        if servers.contains_key(&(base + id)) {
            let members = servers.keys().copied().collect();
            sharded.push((None, members, env(base + id, servers, dir).await?));
        }
    }
    let txn_env = env(id, config.txn_nodes(), "txn").await?;
    let shard_env = match entry.shard {
        Some(_) => Some(env(SHARD_ID_BASE + id, config.txn_nodes(), "shard").await?),
        None => None,
    };
    let shard_joined = config.node_dir(id).join("shard").join(JOINED_MARKER);
    if start == Start::Join && shard_env.is_some() {
        mark_joined(&shard_joined)?;
    }
    tracing::info!(node = id, lock = %entry.lock, txn = %entry.txn, shard = ?entry.shard, "serving");
    let lock = lock::server::run(
        lock_env.clone(),
        boot(config.lock_servers().into_keys().collect()),
        config.lock_server_config(),
        Arc::new(Ignore),
    );
    let coordinator = shell::run_replicated_coordinator(
        txn_env.clone(),
        boot(config.coordinators()),
        Default::default(),
        Arc::new(Ignore),
        Arc::new(Ignore),
    );
    let shard = async {
        match &shard_env {
            Some(env) => {
                let shard_config = ParticipantConfig {
                    coordinators: config.coordinators(),
                    // With movable accounts, the lowest shard founds the
                    // bank on its first disk; the others, and any shard
                    // on a disk that joined later, serve nothing until
                    // assigned.
                    joining: config.movable_accounts()
                        && (SHARD_ID_BASE + id != config.shards()[0] || shard_joined.exists()),
                    ..Default::default()
                };
                shell::run_participant(env.clone(), shard_config, Arc::new(Ignore)).await
            }
            None => std::future::pending().await,
        }
    };
    // The lock groups beyond the first (joining: they serve nothing until
    // an operator assigns them names) and the directories.
    let sharded_services = sharded.iter().map(|(group, members, env): &(_, Vec<NodeId>, _)| {
        let (env, group_boot) = (env.clone(), boot(members.clone()));
        let service: ServiceFuture = match *group {
            Some(group) => {
                let config = ServerConfig {
                    joining: true,
                    ..config.lock_server_config()
                };
                let run = lock::server::run(env, group_boot, config, Arc::new(Ignore));
                Box::pin(async move { run.await.map_err(|e| RunError::LockGroup(group, e)) })
            }
            None => {
                let run = directory::run(env, group_boot, Default::default(), Arc::new(Ignore));
                Box::pin(async move { run.await.map_err(RunError::Directory) })
            }
        };
        service
    });
    let sharded_services: Vec<_> = sharded_services.collect();
    let sharded_services = async move {
        if sharded_services.is_empty() {
            std::future::pending().await
        } else {
            futures::future::select_all(sharded_services).await.0
        }
    };
    let envs = Envs {
        lock: lock_env.clone(),
        txn: txn_env.clone(),
        shard: shard_env.clone(),
    };
    let watch = async {
        match watch {
            Some(path) => envs.watch(path).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        result = lock => result.map_err(RunError::Lock),
        result = coordinator => result.map_err(RunError::Coordinator),
        result = shard => result.map_err(RunError::Shard),
        result = sharded_services => result,
        () = watch => unreachable!("the watch never ends"),
    };
    for env in [Some(lock_env), Some(txn_env), shard_env].into_iter().flatten() {
        env.shutdown();
    }
    for (_, _, env) in sharded {
        env.shutdown();
    }
    result
}

/// A file in a shard's directory recording that its disk joined a running
/// cluster (`Start::Join`): the shard serves nothing until assigned, on
/// every later start too, even where it is the founding shard's node,
/// whose first disk served every account. A replaced founding shard that
/// served every account again would hand out opening balances for the
/// accounts its lost disk held, and take writes for accounts that live
/// elsewhere from any client whose views are stale.
const JOINED_MARKER: &str = "joined";

/// Writes the joined marker durably (the file, then its directory).
fn mark_joined(path: &Path) -> std::io::Result<()> {
    std::fs::File::create(path)?.sync_all()?;
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// One service of a node, run until it fails.
type ServiceFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), RunError>> + Send>>;

/// A node's three environments, told about members added to the file.
struct Envs {
    lock: RealEnv,
    txn: RealEnv,
    shard: Option<RealEnv>,
}

impl Envs {
    /// Reads the cluster file at `path` every [`WATCH_INTERVAL`] and adds
    /// the members it names (a file that cannot be read or is invalid is
    /// skipped with a warning: the running node keeps what it knows).
    async fn watch(&self, path: &Path) {
        let mut seen = None;
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            match ClusterConfig::load(path) {
                Ok(config) if seen.as_ref() != Some(&config) => {
                    self.add(&config);
                    seen = Some(config);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the cluster file again; keeping the members known"),
            }
        }
    }

    /// Adds every member of `config` this node does not know yet.
    fn add(&self, config: &ClusterConfig) {
        for (id, addr) in config.lock_servers() {
            self.lock.add_peer(id, addr);
        }
        for (id, addr) in config.txn_nodes() {
            self.txn.add_peer(id, addr);
            if let Some(shard) = &self.shard {
                shard.add_peer(id, addr);
            }
        }
    }
}
