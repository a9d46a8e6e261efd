//! `ringfence lock`: the lock service from the command line.
//!
//! `acquire NAME -- COMMAND` runs COMMAND only while the lease is trusted:
//! the session is renewed in the background, and the moment the lease can
//! no longer be trusted (its deadline on this machine's clock passes, or a
//! renewal says the session no longer holds the lock) COMMAND's process
//! group gets SIGTERM, then SIGKILL after `--grace`, and the command exits
//! with [`EXIT_LOCK_LOST`]. COMMAND may still act for up to the grace
//! after the lease ended, so what it writes must be fenced with the token
//! it gets in `RINGFENCE_LOCK_TOKEN`.

use std::process::ExitStatus;
use std::time::Duration;

use clap::Subcommand;
use ringfence::lock::{LockClient, LockError, LockGuard, ShardedLockClient, Token};
use ringfence::real::cluster::ClusterConfig;
use ringfence::real::RealEnv;
use tokio::process::Child;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use crate::{parse_duration, ConfigArg, Failure, EXIT_ERROR};

/// `lock acquire`: the lease ended before the command or the hold did; the
/// command was stopped and the lock was not released (it is no longer ours).
pub const EXIT_LOCK_LOST: u8 = 3;
/// `lock acquire`: the lock was not granted within `--wait`.
pub const EXIT_NOT_GRANTED: u8 = 4;

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
    /// runs, for --hold, or until Ctrl-C / SIGTERM; then release it.
    /// COMMAND sees the fencing token in RINGFENCE_LOCK_TOKEN. Exit status:
    /// 0 done and released; 1 error (COMMAND failed, no cluster, ...);
    /// 3 the lock was lost (COMMAND stopped); 4 not granted within --wait.
    Acquire {
        #[arg(value_parser = parse_lock_name)]
        name: String,
        /// How long to wait in line for the lock.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        wait: Duration,
        /// Hold the lock this long, then release it.
        #[arg(long, value_parser = parse_duration, conflicts_with = "command")]
        hold: Option<Duration>,
        /// When the lock is lost: how long COMMAND has between SIGTERM and
        /// SIGKILL.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        grace: Duration,
        /// Run this while holding the lock.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Show who holds a lock and who waits for it.
    Status {
        #[arg(value_parser = parse_lock_name)]
        name: String,
    },
}

/// A lock name the servers accept: 1 to `MAX_LOCK_NAME_BYTES` bytes, no
/// control characters (they would reach other users' terminals through
/// `status`).
fn parse_lock_name(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("a lock name cannot be empty".to_string());
    }
    if text.len() > ringfence::lock::MAX_LOCK_NAME_BYTES {
        return Err(format!(
            "a lock name has at most {} bytes, this one {}",
            ringfence::lock::MAX_LOCK_NAME_BYTES,
            text.len()
        ));
    }
    if text.chars().any(char::is_control) {
        return Err("a lock name cannot hold control characters".to_string());
    }
    Ok(text.to_string())
}

pub async fn run(args: LockArgs) -> Result<(), Failure> {
    let config = args.config.load()?;
    match args.command {
        LockCommand::Acquire {
            name,
            wait,
            hold,
            grace,
            command,
        } => {
            let mut client = client(&config)?;
            let result = acquire(&mut client, &name, wait, hold, grace, command).await;
            // End the session now, not a TTL from now: a principal running
            // this command in a loop would otherwise fill its session
            // quota. Best effort: an unreachable cluster expires it instead.
            let _ = tokio::time::timeout(CLOSE_WITHIN, client.close()).await;
            result
        }
        LockCommand::Status { name } => {
            let mut client = client(&config)?;
            let (_, status) = client.status(&name).await.map_err(|e| format!("status {name}: {e}"))?;
            match status.holder {
                Some((session, token)) => say!("lock={name} holder session={session} token={token}"),
                None => say!("lock={name} free"),
            }
            for (place, (session, token)) in status.waiters.iter().enumerate() {
                say!("  waiter {} session={session} token={token}", place + 1);
            }
            Ok(())
        }
    }
}

/// A lock client of the cluster's lock service (of every group, when it
/// is sharded).
fn client(config: &ClusterConfig) -> Result<ShardedLockClient<RealEnv>, String> {
    let env = config
        .client_env(&config.lock_service_peers())
        .map_err(|e| e.to_string())?;
    Ok(config.sharded_lock_client(env))
}

/// How holding the lock ended.
enum Ended {
    /// The hold elapsed, or COMMAND exited (with this status).
    Finished(Option<ExitStatus>),
    /// Ctrl-C, SIGTERM or SIGHUP.
    Interrupted,
    /// The lease can no longer be trusted, for this reason.
    Lost(String),
}

/// How long an exiting `lock acquire` waits for its session to close.
const CLOSE_WITHIN: Duration = Duration::from_secs(1);

/// Acquires `name` (opening a session of the group that serves it) and
/// holds it.
async fn acquire(
    client: &mut ShardedLockClient<RealEnv>,
    name: &str,
    wait: Duration,
    hold: Option<Duration>,
    grace: Duration,
    command: Vec<String>,
) -> Result<(), Failure> {
    // The guard renews the session in the background and says when the
    // lock is lost; the loop below only watches it.
    let (group, guard) = match client.lock(name, wait).await {
        Ok((group, guard)) if guard.is_valid() => (group, guard),
        Ok(_) => return Err(lost(name, None, "the lease ran out before the grant was confirmed")),
        Err(LockError::WaitExpired { .. }) => {
            return Err(Failure {
                status: EXIT_NOT_GRANTED,
                message: format!("acquire {name}: not granted within {wait:?}"),
            })
        }
        Err(e) => return Err(format!("acquire {name}: {e}").into()),
    };
    let token = guard.token();
    let client = client.group(group).expect("the group that granted the lock");
    say!(
        "granted lock={name} token={token} session={} valid_for={:?}",
        client.session(),
        client.valid_for()
    );
    let mut child = match command.split_first() {
        Some((program, args)) => Some(
            tokio::process::Command::new(program)
                .args(args)
                .env("RINGFENCE_LOCK_TOKEN", token.to_string())
                // Its own process group, so stopping it reaches whatever
                // it started (a shell's pipeline, say) too.
                .process_group(0)
                // A safety net for the error paths that return early.
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot run {program}: {e}"))?,
        ),
        None => None,
    };
    let ended = hold_while(client, &guard, hold, child.as_mut()).await?;
    if let (Ended::Lost(_) | Ended::Interrupted, Some(child)) = (&ended, child.as_mut()) {
        if let Ended::Lost(reason) = &ended {
            eprintln!(
                "lost the lock {name} (token {token}): {reason}; stopping the command (SIGTERM, SIGKILL after {grace:?})"
            );
        }
        let status = stop(child, grace)
            .await
            .map_err(|e| format!("stopping the command: {e}"))?;
        eprintln!("command stopped: {status}");
    }
    if let Ended::Lost(reason) = ended {
        return Err(lost(name, Some(token), &reason));
    }
    // The lease held throughout; a release that fails now only means the
    // servers free the lock when the session expires instead.
    match guard.release().await {
        Ok(()) => say!("released lock={name} token={token}"),
        Err(e) => eprintln!("warning: release {name}: {e} (the lock is freed when the session expires)"),
    }
    match ended {
        Ended::Finished(Some(status)) if !status.success() => Err(Failure {
            status: EXIT_ERROR,
            message: format!("command failed: {status}"),
        }),
        _ => Ok(()),
    }
}

fn lost(name: &str, token: Option<Token>, reason: &str) -> Failure {
    let token = token.map_or(String::new(), |t| format!(" (token {t})"));
    Failure {
        status: EXIT_LOCK_LOST,
        message: format!("lost the lock {name}{token}: {reason}"),
    }
}

/// Holds the lock while the command runs / the hold lasts / until a
/// signal. The guard renews in the background and reports a loss; the
/// lease's deadline on this machine's clock is also watched here, so after
/// a stall (the process stopped past its deadline) an expired lease wins
/// over everything else that became ready at the same time.
async fn hold_while(
    client: &LockClient<RealEnv>,
    guard: &LockGuard<RealEnv>,
    hold: Option<Duration>,
    mut child: Option<&mut Child>,
) -> Result<Ended, String> {
    let until = hold.map(|h| Instant::now() + h);
    let signal_error = |e: std::io::Error| format!("cannot watch signals: {e}");
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(signal_error)?;
    loop {
        let expires = Instant::now() + client.valid_for();
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(expires) => {
                // A renewal may have moved the deadline since.
                if !guard.is_valid() {
                    return Ok(Ended::Lost("the lease expired on this machine's clock (no renewal confirmed in time)".to_string()));
                }
            }
            why = guard.lost() => return Ok(Ended::Lost(why.to_string())),
            _ = interrupt.recv() => return Ok(Ended::Interrupted),
            _ = terminate.recv() => return Ok(Ended::Interrupted),
            _ = hangup.recv() => return Ok(Ended::Interrupted),
            status = async { child.as_mut().expect("guarded").wait().await }, if child.is_some() => {
                return status.map(|s| Ended::Finished(Some(s))).map_err(|e| format!("waiting for the command: {e}"));
            }
            () = async { tokio::time::sleep_until(until.expect("guarded")).await }, if until.is_some() => {
                return Ok(Ended::Finished(None));
            }
        }
    }
}

/// SIGTERM to the command's process group; SIGKILL to it after `grace` if
/// the command has not exited. Returns how the command ended.
async fn stop(child: &mut Child, grace: Duration) -> std::io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    let group = child.id().map(|pid| pid as libc::pid_t);
    let send = |sig| {
        if let Some(group) = group {
            // SAFETY: kill(2) with a negative pid signals that process
            // group; it touches no memory of ours.
            unsafe { libc::kill(-group, sig) };
        }
    };
    send(libc::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            send(libc::SIGKILL);
            child.wait().await
        }
    }
}
