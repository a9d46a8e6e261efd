//! `ringfence`: run a node or a local cluster, use the lock service from the
//! command line, and measure it.

/// `println!` for the command's output, except that a reader that went
/// away (`ringfence lock acquire NAME -- CMD | head -1`) stops nothing: the
/// command still runs and the lock is still released on the way out, which
/// a panic on the broken pipe skipped.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod bench;
mod group_cmd;
mod local;
mod lock_cmd;
mod member_cmd;
mod txn_cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ringfence::env::NodeId;
use ringfence::real::cluster::{run_node, ClusterConfig, Start};
use ringfence::real::transport::Limits;

#[derive(Parser)]
#[command(
    name = "ringfence",
    version,
    about = "High-availability protocols on tokio over TCP."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node of a cluster described by a cluster file.
    Node {
        /// The cluster file (see `ringfence cluster` for one it writes).
        #[arg(long, short)]
        config: PathBuf,
        /// This node's id in the file.
        #[arg(long)]
        id: NodeId,
        /// Found the cluster: initialize this node's data directories if
        /// they hold nothing of it yet, as a founding member. Only for the
        /// cluster's first start; a node whose data was lost comes back
        /// with `--join`. Without either, a missing or wiped directory is
        /// refused.
        #[arg(long, conflicts_with = "join")]
        init: bool,
        /// Join the running cluster: initialize empty data directories as
        /// a new member, which counts in no quorum until an operator adds
        /// it (`ringfence member add` or `member replace`).
        #[arg(long)]
        join: bool,
    },
    /// Start a local cluster on loopback (one process per node) and keep it
    /// running until Ctrl-C.
    Cluster(local::ClusterArgs),
    /// Write credentials for another client principal (reads the cluster
    /// secret, so run it where a node's files are).
    ClientKey {
        #[command(flatten)]
        config: ConfigArg,
        /// The principal, 16..65536; its clients use node ids
        /// `principal << 16 | instance`.
        #[arg(long, value_parser = clap::value_parser!(u32).range(16..65536))]
        principal: u32,
        /// Where to write the key file (owner-only permissions).
        #[arg(long)]
        out: PathBuf,
    },
    /// The members of the replicated groups: status, add, remove, replace,
    /// transfer (an operator's commands: they read the cluster secret).
    Member(member_cmd::MemberArgs),
    /// The groups of a sharded lock service: status, add, remove (an
    /// operator's commands: they read the cluster secret).
    Group(group_cmd::GroupArgs),
    /// Lock service: acquire, release, status.
    Lock(lock_cmd::LockArgs),
    /// Transactions (the bank workload): transfer, audit.
    Txn(txn_cmd::TxnArgs),
    /// Measure the lock service with the client shapes of the etcd
    /// benchmark (acquire+release cycles, contended and uncontended), and
    /// bank transfers on the transaction service.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Node { config, id, init, join } => {
                let start = match (init, join) {
                    (true, _) => Start::Found,
                    (_, true) => Start::Join,
                    _ => Start::Restart,
                };
                node(&config, id, start).await.map_err(Failure::from)
            }
            Command::Member(args) => member_cmd::run(args).await.map_err(Failure::from),
            Command::Cluster(args) => local::run(args).await.map_err(Failure::from),
            Command::ClientKey { config, principal, out } => {
                client_key(&config, principal, &out).map_err(Failure::from)
            }
            Command::Group(args) => group_cmd::run(args).await.map_err(Failure::from),
            Command::Lock(args) => lock_cmd::run(args).await,
            Command::Txn(args) => txn_cmd::run(args).await.map_err(Failure::from),
            Command::Bench(args) => bench::run(args).await.map_err(Failure::from),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { status, message }) => {
            eprintln!("error: {message}");
            ExitCode::from(status)
        }
    }
}

/// Exit status of a command that failed: its error message, and the status
/// ([`EXIT_ERROR`] unless the command documents another for the case).
#[derive(Debug)]
pub struct Failure {
    pub status: u8,
    pub message: String,
}

/// Any error without a status of its own (clap's usage errors exit with 2).
pub const EXIT_ERROR: u8 = 1;

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            status: EXIT_ERROR,
            message,
        }
    }
}

/// Writes the key of client `principal` to `out`.
fn client_key(config: &ConfigArg, principal: u32, out: &std::path::Path) -> Result<(), String> {
    let config = config.load()?;
    config.mint_client_key(principal, out).map_err(|e| e.to_string())?;
    say!("wrote the key of principal {principal} to {}", out.display());
    Ok(())
}

async fn node(path: &std::path::Path, id: NodeId, start: Start) -> Result<(), String> {
    let config = ClusterConfig::load(path).map_err(|e| e.to_string())?;
    let listeners = config.node(id).map_err(|e| e.to_string())?.listeners();
    let open_files = raise_open_file_limit(listeners);
    let limits = Limits::within_open_files(open_files, listeners);
    if limits != Limits::default() {
        tracing::warn!(
            open_files,
            client_connections = limits.max_connections,
            pending_handshakes = limits.max_pending_handshakes,
            "the open-file limit is below what a flood of connections can take: each listener takes fewer \
             connections; raise `ulimit -n` to {}",
            node_open_files(listeners)
        );
    }
    tokio::select! {
        result = run_node(&config, id, start, limits, Some(path)) => result.map_err(|e| e.to_string()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Open files a node with `listeners` listeners may hold at once under the
/// default limits: each listener with its client connections and pending
/// handshakes, plus peers, logs and slack.
fn node_open_files(listeners: usize) -> usize {
    use ringfence::real::transport::{MAX_INBOUND_CONNECTIONS, MAX_PENDING_HANDSHAKES, RESERVED_OPEN_FILES};
    listeners * (MAX_INBOUND_CONNECTIONS + MAX_PENDING_HANDSHAKES) + RESERVED_OPEN_FILES
}

/// Raises the soft open-file limit to what a node may need (within the
/// hard limit) and returns it. At the common default of 1,024, a flood of
/// connections used up the descriptors and the node stopped when a log
/// compaction could not open its file; where the hard limit is lower, the
/// node takes fewer connections ([`Limits::within_open_files`]).
fn raise_open_file_limit(listeners: usize) -> usize {
    let needed = node_open_files(listeners);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return needed;
    }
    let wanted = (needed as libc::rlim_t).min(limit.rlim_max);
    if limit.rlim_cur < wanted {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = wanted;
        }
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

/// The longest duration any flag takes: longer ones are refused, not left
/// to overflow a deadline.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `250ms`, `2s`, `1.5s`, `3m`, or a bare number of seconds, at most
/// [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (try 500ms, 2s, 1m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit `{unit}` in `{text}` (use ms, s or m)")),
    };
    match Duration::try_from_secs_f64(seconds) {
        Ok(duration) if duration <= MAX_DURATION => Ok(duration),
        _ => Err(format!(
            "`{text}` is too long (at most 365 days, {}s)",
            MAX_DURATION.as_secs()
        )),
    }
}

/// The cluster file: `--config`, else `ringfence-cluster/cluster.toml`
/// (where `ringfence cluster` writes it).
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArg {
    /// The cluster file.
    #[arg(long, short, global = true, default_value = "ringfence-cluster/cluster.toml")]
    pub config: PathBuf,
}

impl ConfigArg {
    pub fn load(&self) -> Result<ClusterConfig, String> {
        ClusterConfig::load(&self.config).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_duration("31536000"), Ok(MAX_DURATION));
        assert!(parse_duration("31536001s").unwrap_err().contains("too long"));
        assert!(parse_duration("99999999999999999999s")
            .unwrap_err()
            .contains("too long"));
    }
}
