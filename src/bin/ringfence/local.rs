//! `ringfence cluster`: a local cluster for trying things out.

use std::path::PathBuf;

use ringfence::real::cluster::{ClusterConfig, Layout};
use ringfence::real::local::LocalCluster;

#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// Number of nodes (3 tolerates one failure, 5 tolerates two).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=15))]
    nodes: u32,
    /// Directory for the cluster file, the nodes' data and their output.
    #[arg(long, default_value = "ringfence-cluster")]
    dir: PathBuf,
    /// Node `i`'s lock service listens on 127.0.0.1:<base-port + i>, its
    /// transaction replica on +100 and its shard on +200 (all at most 65535).
    #[arg(long, default_value_t = 7100, value_parser = clap::value_parser!(u16).range(1..))]
    base_port: u16,
    /// Split the lock service into this many groups on every node, with a
    /// directory replica on every node (+300) and group `g` on
    /// +100·(g+2). Group 1 serves every name until `ringfence group add`
    /// puts the others in the ring.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    lock_groups: u32,
    /// Let accounts move between the shards: an account directory replica
    /// on every node (on the hundred above the other services). The first
    /// node's shard serves every account until `ringfence group --accounts
    /// add` puts the others in the ring.
    #[arg(long)]
    movable_accounts: bool,
}

pub async fn run(args: ClusterArgs) -> Result<(), String> {
    let data = std::path::absolute(args.dir.join("data")).map_err(|e| e.to_string())?;
    let layout = Layout {
        lock_groups: args.lock_groups,
        movable_accounts: args.movable_accounts,
    };
    let mut config =
        ClusterConfig::loopback(args.nodes, layout, args.base_port, data).map_err(|e| format!("--base-port: {e}"))?;
    // Started again in the same directory: the nodes' data belongs to the
    // cluster the old file names, so keep its id.
    if let Ok(old) = ClusterConfig::load(&args.dir.join("cluster.toml")) {
        config.cluster_id = old.cluster_id;
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let mut cluster = LocalCluster::start(&exe, &args.dir, config)
        .await
        .map_err(|e| format!("cluster did not start: {e}"))?;
    say!(
        "{} nodes up; cluster file {} (lock service on {})",
        args.nodes,
        cluster.config_path().display(),
        cluster
            .config()
            .nodes
            .iter()
            .map(|n| n.lock.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    say!("try: ringfence lock acquire my-lock --hold 10s   (Ctrl-C stops the cluster)");
    let mut check = tokio::time::interval(std::time::Duration::from_millis(500));
    let result = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = check.tick() => {
                if let Some((id, status)) = cluster.exited() {
                    break Err(format!("node {id} exited with {status}; see its output in {}", args.dir.display()));
                }
            }
        }
    };
    cluster.stop().await;
    result
}
