//! A whole cluster inside this process: every node's lock replica,
//! transaction coordinator replica and shard run as tokio tasks on
//! loopback ports, with fsync'd files under a directory of the caller's
//! choosing. For tests, examples and trying the library out; the
//! `ringfence` binary's [`LocalCluster`] runs
//! nodes as processes instead.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ringfence::real::embedded::EmbeddedCluster;
//! let dir = std::env::temp_dir().join("ringfence-demo");
//! let cluster = EmbeddedCluster::start(&dir, 3).await?;
//! let locks = cluster.lock_client();
//! locks.open().await?;
//! // ...
//! cluster.shutdown().await; // or drop it
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::auth::ClientCredentials;
use super::cluster::{run_node, ClusterConfig, RunError, Start};
use super::local::LocalCluster;
use super::RealEnv;
use crate::env::NodeId;
use crate::lock::LockClient;
use crate::txn::client::TxnClient;

/// How long a started node has to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running in-process cluster. Dropping it stops every node (what they
/// synced stays in the directory).
pub struct EmbeddedCluster {
    config: ClusterConfig,
    credentials: ClientCredentials,
    nodes: BTreeMap<NodeId, JoinHandle<Result<(), RunError>>>,
}

impl EmbeddedCluster {
    /// Starts `nodes` nodes with default settings, data and credentials
    /// under `dir` (created if missing; a new cluster each time, so use
    /// an empty or fresh directory). Returns once every node listens and
    /// the lock service answers.
    pub async fn start(dir: &Path, nodes: u32) -> std::io::Result<EmbeddedCluster> {
        let config = Self::config(dir, nodes)?;
        Self::start_with(dir, config).await
    }

    /// A cluster file for `nodes` nodes on free loopback ports with data
    /// under `dir`, to adjust (e.g. `lock.ttl_ms`) and pass to
    /// [`EmbeddedCluster::start_with`].
    pub fn config(dir: &Path, nodes: u32) -> std::io::Result<ClusterConfig> {
        LocalCluster::free_ports_config(nodes, dir)
    }

    /// Starts every node of `config` (whose credential paths say where
    /// the cluster secret and client key are written).
    pub async fn start_with(dir: &Path, config: ClusterConfig) -> std::io::Result<EmbeddedCluster> {
        std::fs::create_dir_all(dir)?;
        config.validate().map_err(std::io::Error::other)?;
        config.create_credentials().map_err(std::io::Error::other)?;
        let credentials = config.client_credentials().map_err(std::io::Error::other)?;
        let mut cluster = EmbeddedCluster {
            config,
            credentials,
            nodes: BTreeMap::new(),
        };
        for id in cluster.ids() {
            cluster.spawn(id, Start::Found);
        }
        for id in cluster.ids() {
            cluster.wait_until_serving(id).await?;
        }
        cluster.wait_until_locks_answer().await?;
        Ok(cluster)
    }

    /// Returns once the lock service answers a read, that is once its log
    /// has a leader: a first request must not race the election (on a
    /// loaded machine it can outlast a client's one-second request
    /// timeout).
    async fn wait_until_locks_answer(&self) -> std::io::Result<()> {
        let client = self.lock_client();
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            match client.status("ready").await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(std::io::Error::other(format!(
                        "the lock service did not answer within {START_TIMEOUT:?}: {e}"
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn spawn(&mut self, id: NodeId, start: Start) {
        let config = self.config.clone();
        let task = tokio::spawn(async move { run_node(&config, id, start, Default::default(), None).await });
        self.nodes.insert(id, task);
    }

    async fn wait_until_serving(&mut self, id: NodeId) -> std::io::Result<()> {
        let addr = self.config.node(id).map_err(std::io::Error::other)?.bound_last();
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if let Some(task) = self.nodes.get_mut(&id) {
                if task.is_finished() {
                    let result = task.await;
                    self.nodes.remove(&id);
                    return Err(std::io::Error::other(format!(
                        "node {id} stopped while starting: {result:?}"
                    )));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(std::io::Error::other(format!(
                    "node {id} did not listen on {addr} within {START_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The cluster file this cluster runs.
    pub fn cluster_config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The node ids.
    pub fn ids(&self) -> Vec<NodeId> {
        self.config.nodes.iter().map(|n| n.id).collect()
    }

    /// The credentials of the cluster's first client principal.
    pub fn client_credentials(&self) -> &ClientCredentials {
        &self.credentials
    }

    /// Lock service replicas by id.
    pub fn lock_servers(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.config.lock_servers()
    }

    /// A new lock client (its own connection and session; call `open`).
    pub fn lock_client(&self) -> LockClient<RealEnv> {
        let servers = self.lock_servers();
        let env = RealEnv::client(&self.credentials, &servers);
        LockClient::new(env, servers.into_keys().collect(), self.config.lock_client_config())
    }

    /// A new transaction client (its own connection).
    pub fn txn_client(&self) -> TxnClient<RealEnv> {
        let env = RealEnv::client(&self.credentials, &self.config.txn_nodes());
        self.config.txn_client(env)
    }

    /// Stops node `id` (all three of its services), as a crash would,
    /// minus torn writes: what it synced stays.
    pub async fn stop_node(&mut self, id: NodeId) {
        if let Some(task) = self.nodes.remove(&id) {
            task.abort();
            let _ = task.await;
        }
    }

    /// Starts node `id` again on its data (after [`stop_node`](Self::stop_node)).
    pub async fn restart_node(&mut self, id: NodeId) -> std::io::Result<()> {
        self.stop_node(id).await;
        // The stopped node's listeners close as their tasks notice: a bind
        // may fail for a moment.
        let mut attempts = 0;
        loop {
            self.spawn(id, Start::Restart);
            match self.wait_until_serving(id).await {
                Err(_) if attempts < 50 && !self.nodes.contains_key(&id) => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                result => return result,
            }
        }
    }

    /// Stops every node and waits until they are gone.
    pub async fn shutdown(mut self) {
        for id in self.ids() {
            self.stop_node(id).await;
        }
    }
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        for task in self.nodes.values() {
            task.abort();
        }
    }
}
