//! Hostile parts of the `lock` scenario's workload.
//!
//! - [`rogue`]: a client that sends well-formed adversarial commands from
//!   its own node id: other clients' session ids (read from the lock's
//!   view), absurd tokens and request ids, `Expire`, hinted acquires with
//!   tokens of its choosing, and requests to remove lock servers from the
//!   group (only an operator may; a removed server would never catch up
//!   after the heal, `replica-behind`). No replica may panic, and every
//!   invariant must still hold.
//! - [`storm`]: a client that opens hundreds of sessions in one burst and
//!   vanishes, so their expiries all fall due together (the expiry storm).
//!   The run's liveness bound then says the service recovers in time.
//!
//! `ringfence::history::lock::check_grants` (`client-token`) judges what
//! the rogue tries: it replays the entries the replicas applied.

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use ringfence::env::{codec, Env, NodeId};
use ringfence::lock::{LockCommand, LockMachine, LockOutput, LockQuery, Request, SessionId};
use ringfence::log::client::Client as LogClient;
use ringfence::log::membership::Change;
use ringfence::log::{Wire, WireOf};

use crate::env::SimEnv;

/// How long the rogue waits for one command (dropped ones time out).
const ROGUE_PATIENCE: Duration = Duration::from_millis(250);

/// Tokens and request ids a rogue likes: edges and far-off values.
fn absurd(rng: &mut impl Rng) -> u64 {
    *[0, 1, 2, u64::MAX, u64::MAX - 1, 1 << 40, 1 << 63, rng.gen()]
        .choose(rng)
        .expect("non-empty")
}

/// One adversarial command. `seen` are other clients' sessions, `own` the
/// rogue's; the `owner` it writes is a lie the servers must overwrite.
fn rogue_command(rng: &mut impl Rng, lock: &str, seen: &[SessionId], own: &[SessionId]) -> LockCommand {
    let victim = seen.choose(rng).copied().unwrap_or_else(|| rng.gen());
    let mine = own.choose(rng).copied().unwrap_or_else(|| rng.gen());
    let owner = rng.gen();
    let name = if rng.gen_bool(0.7) {
        lock.to_string()
    } else {
        "rogue".to_string()
    };
    let client = |request| LockCommand::Client { owner, request };
    match rng.gen_range(0..9) {
        0 => client(Request::KeepAlive { session: victim }),
        1 => client(Request::Release {
            session: victim,
            lock: name,
            token: absurd(rng),
        }),
        2 => client(Request::Close { session: victim }),
        3 => client(Request::Cancel {
            session: victim,
            lock: name,
            request: absurd(rng),
        }),
        4 => client(Request::Acquire {
            session: victim,
            lock: name,
            request: absurd(rng),
            wait: rng.gen(),
        }),
        5 => client(Request::Open { session: victim }),
        6 => LockCommand::Expire {
            session: victim,
            renewed: rng.gen_range(0..200),
        },
        // Its own session, with a token of its choosing.
        7 => LockCommand::Hinted {
            owner,
            request: Request::Acquire {
                session: mine,
                lock: name,
                request: absurd(rng),
                wait: false,
            },
            token: absurd(rng),
        },
        _ => client(Request::Acquire {
            session: mine,
            lock: "rogue".to_string(),
            request: absurd(rng),
            wait: rng.gen(),
        }),
    }
}

/// The rogue client's loop, one command per operation of its budget
/// (`next_op`); it records no history.
pub async fn rogue(env: SimEnv, servers: Vec<NodeId>, lock: &str, mut next_op: impl FnMut() -> bool) {
    let mut rng = env.rng();
    let mut log = LogClient::<SimEnv, LockMachine>::new(env.clone(), servers.clone());
    log.attempt_timeout = Duration::from_millis(100);
    let mut own: Vec<SessionId> = Vec::new();
    let mut seen: Vec<SessionId> = Vec::new();
    while next_op() {
        let view = LockQuery::Lock { lock: lock.to_string() };
        if let Ok(LockOutput::Lock(view)) = log.read(view, ROGUE_PATIENCE).await {
            let sessions = view.holder.iter().chain(&view.waiters).map(|&(s, _)| s);
            seen.extend(sessions.filter(|s| !own.contains(s)));
            let drop = seen.len().saturating_sub(8);
            seen.drain(..drop);
        }
        if own.len() < 3 || rng.gen_bool(0.1) {
            let session = rng.gen();
            let open = LockCommand::Client {
                owner: rng.gen(),
                request: Request::Open { session },
            };
            if let Ok(LockOutput::Opened) = log.execute(open, ROGUE_PATIENCE).await {
                own.push(session);
            }
        }
        if rng.gen_bool(0.1) {
            // Only an operator may reconfigure the group: dropped unanswered.
            let victim = servers[rng.gen_range(0..servers.len())];
            let out = log
                .reconfigure(Change::Remove(victim), rng.gen_range(0..64), ROGUE_PATIENCE)
                .await;
            tracing::debug!(?out, "rogue reconfiguration answered");
        }
        let command = rogue_command(&mut rng, lock, &seen, &own);
        let hinted = matches!(command, LockCommand::Hinted { .. });
        let out = log.execute(command, ROGUE_PATIENCE).await;
        tracing::debug!(?out, "rogue command answered");
        if hinted && matches!(out, Ok(LockOutput::Granted { .. })) {
            // Do not sit on a lock it should never have had.
            for session in own.drain(..) {
                let close = LockCommand::Client {
                    owner: 0,
                    request: Request::Close { session },
                };
                let _ = log.execute(close, ROGUE_PATIENCE).await;
            }
        }
    }
}

/// Opens `sessions` sessions in one burst (pipelined commands of one log
/// session, to every lock server: the leader admits them in a batch or
/// two), at `at` into the run, then vanishes: nothing renews them.
pub async fn storm(env: SimEnv, servers: Vec<NodeId>, sessions: u64, at: Duration) {
    env.sleep(at).await;
    let mut rng = env.rng();
    let client = rng.gen();
    for seq in 1..=sessions {
        let command = LockCommand::Client {
            owner: env.id(),
            request: Request::Open { session: rng.gen() },
        };
        let msg: WireOf<LockMachine> = Wire::Command { client, seq, command };
        let bytes = codec::encode(&msg).expect("a small command encodes");
        for &server in &servers {
            let _ = env.send(server, bytes.clone()).await;
        }
    }
}
