//! A cluster of `ringfence node` processes on loopback: what `ringfence
//! cluster` runs, what the benchmarks measure and what the chaos test kills.
//! Starting one creates its credentials next to the cluster file.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::process::{Child, Command};

use super::cluster::{AuthSettings, ClusterConfig, Layout, Start};
use crate::env::NodeId;

/// How long a started node has to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The lowest port [`LocalCluster::free_ports_config`] draws.
const LISTEN_PORTS_FROM: u16 = 10_000;

/// Where the OS starts choosing ports for outgoing connections (Linux's
/// default when it cannot be read).
fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .filter(|&start| start > LISTEN_PORTS_FROM + 1000)
        .unwrap_or(32_768)
}

/// Running node processes of one cluster file. Dropping it kills them.
pub struct LocalCluster {
    exe: PathBuf,
    config_path: PathBuf,
    config: ClusterConfig,
    children: BTreeMap<NodeId, Child>,
}

impl LocalCluster {
    /// Writes `config` to `<dir>/cluster.toml` and starts every node with
    /// `exe node --init` (the `ringfence` binary: a new cluster's nodes
    /// initialize their data directories; restarts do not), each logging to
    /// `<dir>/node-<id>.out`; returns once every node accepts connections.
    pub async fn start(exe: &Path, dir: &Path, config: ClusterConfig) -> std::io::Result<LocalCluster> {
        std::fs::create_dir_all(dir)?;
        let config_path = dir.join("cluster.toml");
        config.save(&config_path)?;
        // Read back, so relative credential paths resolve against `dir`.
        let config = ClusterConfig::load(&config_path).map_err(std::io::Error::other)?;
        config.create_credentials().map_err(std::io::Error::other)?;
        let mut cluster = LocalCluster {
            exe: exe.to_owned(),
            config_path,
            config,
            children: BTreeMap::new(),
        };
        let ids: Vec<NodeId> = cluster.config.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            cluster.spawn(id, Start::Found)?;
        }
        for id in cluster.ids() {
            cluster.wait_until_serving(id).await?;
        }
        Ok(cluster)
    }

    /// A loopback config for `nodes` nodes on ports free now, data under
    /// `dir`. The ports are drawn below the OS's ephemeral range, so an
    /// outgoing connection of another process cannot take one before the
    /// node binds it; another listener still could (the node then fails
    /// loudly), which drawing at random makes unlikely.
    pub fn free_ports_config(nodes: u32, dir: &Path) -> std::io::Result<ClusterConfig> {
        Self::free_ports_sharded(nodes, Layout::default(), dir)
    }

    /// As [`LocalCluster::free_ports_config`], with the services of
    /// `layout` on every node.
    pub fn free_ports_sharded(nodes: u32, layout: Layout, dir: &Path) -> std::io::Result<ClusterConfig> {
        let mut config = ClusterConfig::loopback(nodes, layout, 0, dir.join("data")).map_err(std::io::Error::other)?;
        // Absolute, so that copies of this config find them from anywhere.
        config.auth = AuthSettings {
            secret_file: dir.join("cluster.secret"),
            client_key_file: dir.join("client.key"),
        };
        // Held until every port is chosen, so no two are the same.
        let mut held = Vec::new();
        let below = ephemeral_range_start();
        let mut rng = rand_chacha::ChaCha8Rng::from_entropy(); // determinism: ok — real runtime, port choice
        let mut free_port = || -> std::io::Result<SocketAddr> {
            let listener = (0..64)
                .find_map(|_| TcpListener::bind(("127.0.0.1", rng.gen_range(LISTEN_PORTS_FROM..below))).ok())
                .map_or_else(|| TcpListener::bind("127.0.0.1:0"), Ok)?;
            let addr = listener.local_addr()?;
            held.push(listener);
            Ok(addr)
        };
        for node in &mut config.nodes {
            node.lock = free_port()?;
            node.txn = free_port()?;
            node.shard = Some(free_port()?);
            for addr in &mut node.lock_groups {
                *addr = free_port()?;
            }
            for addr in [&mut node.directory, &mut node.account_directory].into_iter().flatten() {
                *addr = free_port()?;
            }
        }
        Ok(config)
    }

    /// The cluster file the nodes run.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Where the cluster file is.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The node ids of the cluster file.
    pub fn ids(&self) -> Vec<NodeId> {
        self.config.nodes.iter().map(|n| n.id).collect()
    }

    /// Process ids of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.children.values().filter_map(Child::id).collect()
    }

    /// SIGKILLs node `id` (nothing unsynced survives) and reaps it.
    pub async fn kill(&mut self, id: NodeId) -> std::io::Result<()> {
        if let Some(mut child) = self.children.remove(&id) {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts node `id` again on its data directory.
    pub async fn restart(&mut self, id: NodeId) -> std::io::Result<()> {
        self.kill(id).await?;
        self.spawn(id, Start::Restart)?;
        self.wait_until_serving(id).await
    }

    /// Starts node `id` as a new member (`node --join`) on an empty data
    /// directory, after reading the cluster file again (an operator added
    /// it there, or it replaces a node whose data was lost). It counts in
    /// no quorum until an operator adds it to the groups.
    pub async fn join(&mut self, id: NodeId) -> std::io::Result<()> {
        self.kill(id).await?;
        self.reload()?;
        self.spawn(id, Start::Join)?;
        self.wait_until_serving(id).await
    }

    /// Kills node `id` and deletes its data directory: a machine lost.
    pub async fn destroy(&mut self, id: NodeId) -> std::io::Result<()> {
        self.kill(id).await?;
        match std::fs::remove_dir_all(self.config.node_dir(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Reads the cluster file again (an operator changed its members).
    pub fn reload(&mut self) -> std::io::Result<()> {
        self.config = ClusterConfig::load(&self.config_path).map_err(std::io::Error::other)?;
        Ok(())
    }

    /// A node that exited on its own: `(id, exit status)`.
    pub fn exited(&mut self) -> Option<(NodeId, std::process::ExitStatus)> {
        self.children
            .iter_mut()
            .find_map(|(&id, child)| child.try_wait().ok().flatten().map(|status| (id, status)))
    }

    /// Kills every node.
    pub async fn stop(&mut self) {
        let running: Vec<NodeId> = self.children.keys().copied().collect();
        for id in running {
            let _ = self.kill(id).await;
        }
    }

    /// Starts node `id`'s process.
    fn spawn(&mut self, id: NodeId, start: Start) -> std::io::Result<()> {
        let dir = self.config_path.parent().unwrap_or(Path::new("."));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("node-{id}.out")))?;
        let child = Command::new(&self.exe)
            .arg("node")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--id")
            .arg(id.to_string())
            .args(match start {
                Start::Restart => None,
                Start::Found => Some("--init"),
                Start::Join => Some("--join"),
            })
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()?;
        self.children.insert(id, child);
        Ok(())
    }

    async fn wait_until_serving(&mut self, id: NodeId) -> std::io::Result<()> {
        let addr = self.config.node(id).map_err(std::io::Error::other)?.bound_last();
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if let Some(child) = self.children.get_mut(&id) {
                if let Some(status) = child.try_wait()? {
                    return Err(std::io::Error::other(format!(
                        "node {id} exited with {status} while starting; see node-{id}.out"
                    )));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(std::io::Error::other(format!(
                    "node {id} did not listen on {addr} within {START_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
