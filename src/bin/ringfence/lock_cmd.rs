//! `ringfence lock`: the lock service from the command line.

use std::time::Duration;

use clap::Subcommand;
use ringfence::lock::{Lease, LockClient};
use ringfence::real::cluster::ClusterConfig;
use ringfence::real::RealEnv;

use crate::{parse_duration, ConfigArg};

#[derive(clap::Args, Debug)]
pub struct LockArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(subcommand)]
    command: LockCommand,
}

#[derive(Subcommand, Debug)]
enum LockCommand {
    /// Take a lock and hold it (keeping the session alive) while COMMAND
    /// runs, for --hold, or until Ctrl-C; then release it. COMMAND sees the
    /// fencing token in RINGFENCE_LOCK_TOKEN.
    Acquire {
        name: String,
        /// How long to wait in line for the lock.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        wait: Duration,
        /// Hold the lock this long, then release it.
        #[arg(long, value_parser = parse_duration, conflicts_with = "command")]
        hold: Option<Duration>,
        /// Run this while holding the lock.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Show who holds a lock and who waits for it.
    Status { name: String },
}

pub async fn run(args: LockArgs) -> Result<(), String> {
    let config = args.config.load()?;
    match args.command {
        LockCommand::Acquire {
            name,
            wait,
            hold,
            command,
        } => acquire(&config, &name, wait, hold, command).await,
        LockCommand::Status { name } => {
            let mut client = LockClient::new(env(&config)?, servers(&config), config.lock_client_config());
            let status = client.status(&name).await.map_err(|e| format!("status {name}: {e}"))?;
            match status.holder {
                Some((session, token)) => println!("lock={name} holder session={session} token={token}"),
                None => println!("lock={name} free"),
            }
            for (place, (session, token)) in status.waiters.iter().enumerate() {
                println!("  waiter {} session={session} token={token}", place + 1);
            }
            Ok(())
        }
    }
}

fn env(config: &ClusterConfig) -> Result<RealEnv, String> {
    config.client_env(&config.lock_servers()).map_err(|e| e.to_string())
}

fn servers(config: &ClusterConfig) -> Vec<ringfence::env::NodeId> {
    config.lock_servers().into_keys().collect()
}

async fn acquire(
    config: &ClusterConfig,
    name: &str,
    wait: Duration,
    hold: Option<Duration>,
    command: Vec<String>,
) -> Result<(), String> {
    let mut client = LockClient::new(env(config)?, servers(config), config.lock_client_config());
    client.open().await.map_err(|e| format!("open session: {e}"))?;
    let lease = client
        .acquire(name, wait)
        .await
        .map_err(|e| format!("acquire {name}: {e}"))?;
    println!(
        "granted lock={name} token={} session={} valid_for={:?}",
        lease.token,
        client.session(),
        client.valid_for()
    );
    let held = hold_while(&mut client, &lease, hold, command).await;
    client
        .release(&lease)
        .await
        .map_err(|e| format!("release {name}: {e}"))?;
    println!("released lock={name} token={}", lease.token);
    held
}

/// Keeps the session alive while the command runs / the hold lasts / until
/// Ctrl-C. A lost lease is reported as an error: the holder may no longer
/// be the only one.
async fn hold_while(
    client: &mut LockClient<RealEnv>,
    lease: &Lease,
    hold: Option<Duration>,
    command: Vec<String>,
) -> Result<(), String> {
    let mut child = match command.split_first() {
        Some((program, args)) => Some(
            tokio::process::Command::new(program)
                .args(args)
                .env("RINGFENCE_LOCK_TOKEN", lease.token.to_string())
                .spawn()
                .map_err(|e| format!("cannot run {program}: {e}"))?,
        ),
        None => None,
    };
    let until = hold.map(|h| tokio::time::Instant::now() + h);
    let renew_every = client.valid_for() / 3;
    loop {
        let sleep = tokio::time::sleep(renew_every);
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            status = async { child.as_mut().expect("guarded").wait().await }, if child.is_some() => {
                let status = status.map_err(|e| e.to_string())?;
                return if status.success() { Ok(()) } else { Err(format!("command failed: {status}")) };
            }
            _ = async { tokio::time::sleep_until(until.expect("guarded")).await }, if until.is_some() => return Ok(()),
            _ = sleep => {
                let held = client.keep_alive().await.map_err(|e| format!("keep-alive: {e}"))?;
                if !held.iter().any(|(l, t)| *l == lease.lock && *t == lease.token) || !client.is_valid() {
                    return Err(format!("lost lock {} (token {})", lease.lock, lease.token));
                }
            }
        }
    }
}
