//! The fenced lock service (`ringfence::lock`) under the full fault mix.
//!
//! Nodes: servers `1..n-1` are lock servers (Raft replicas of the lock
//! machine); server `n` is a [`FencedResource`](ringfence::lock::FencedResource)
//! node holding a counter, so a holder's reads and writes travel the network
//! and can be delayed, duplicated, or outlive its lease. Crashes hit both.
//!
//! Each client, in a loop: (re)opens a session; acquires the lock `counter`
//! (sometimes try-acquire), and now and then first releases its previous
//! lease again, late; while its lease is valid does 1–3 (one cycle in
//! four: 8–20) read-modify-write increments through the resource with its
//! token — checking the lease once before the read, then "working"
//! 20–60 ms, then writing, as a real holder would (a GC pause or a slow
//! network after the check is exactly what fencing exists for); renews
//! when half the lease is used, or, for a lazy client, in its last few
//! milliseconds (see [`Habits`]; half the runs' clients assume a tight
//! drift bound, [`drift_bound`]); releases (now and then twice, to test
//! "only the owner releases").
//! One cycle in four *abandons* the lock — a holder that dies: it stops
//! renewing, makes one last access at its lease's last moment (where a
//! wrong lease belief shows), then walks away without releasing; the servers
//! must expire it and grant the next waiter. A holder whose renewal times
//! out (cut off from the servers) does the same.
//!
//! Fault plans aim at the situations the issue lists ([`situation`]): the
//! clients and the lock servers publish roles (holder, mid-write holder,
//! queued client, leader while the lock is held, ...) and aimed faults
//! strike whoever plays the role when they are due. Odd seeds run one
//! situation alone, in turn; even seeds run the swarm plan, half of them with
//! one situation on top. Sweeps report how often each situation occurred.
//!
//! Invariants (see [`check_lock`]), judged from ground truth where the
//! simulator owns it:
//! - `fencing`: in the resource's acceptance order, tokens never decrease;
//! - `lost-increment`: accepted writes strictly increase and every accepted
//!   read sees every earlier accepted write. Both are judged on the
//!   resource node's own record of every access it made durable, so an
//!   access whose answer was lost (an `info` in the history) still counts;
//! - `token-order`: an acquire that began after another was granted gets a
//!   higher token;
//! - `release-owner`: a release succeeds only while its token still owns
//!   the lock, and once;
//! - `lease-overlap`: no two clients' believed lease intervals — from the
//!   acquire's success to the last lease check that passed — overlap in
//!   real time. Each overlapping pair is judged over its own window with the
//!   world's exact record of every node's clock: judged when, over that
//!   window, the holder's clock ran within the drift bound of every lock
//!   server's and no lock server's clock jumped;
//! - `client-token`: every grant in the committed log carries a token above
//!   every earlier grant of that lock (replayed from the log itself);
//! - liveness (the runner): after healing, the probe acquires the lock
//!   within TTL + election time + retries.

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::{select, Either};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use ringfence::env::retry::Retry;
use ringfence::env::{Env, NodeId};
use ringfence::history::lock::{
    check_expiries, check_grants, check_lease_ends, check_lock, AppliedEntry, LeasePair, LockOp, ResourceTruth,
};
use ringfence::history::{History, Violation};
use ringfence::lock::resource::{self, ResourceBug, ResourceRequest};
use ringfence::lock::{
    server, ClientConfig, LockBug, LockClient, LockError, LockMachine, ServerConfig, ShardedLockClient, Token,
};
use ringfence::log::client::Inbox;
use ringfence::log::membership::{is_operator, Boot, OPERATOR_IDS};
use ringfence::log::{Event, Index, Term};
use ringfence::observe::Observer;
use ringfence::real::auth::FIRST_PRINCIPAL;
use ringfence::shard::directory::Router;

use crate::env::SimEnv;
use crate::plan::{AimedAction, DiskLoss, Fault, FaultKind, FaultPlan, Swarm, Targets};
use crate::scenario::{client_ids, Bug, Client, Params, Planted, Scenario, Spec, Workload, PROBE_ID};
use crate::scenarios::judge::Judge;
use crate::scenarios::log::REMOVED_STILL_VOTES;
use crate::scenarios::{lock_hostile, lock_moves, operator, rebalancer};
use crate::world::{derive_rng, stream, World};

pub const NO_FENCING: Bug = Bug {
    name: "no-fencing",
    about:
        "the resource accepts every token, so a paused or partitioned holder's late write lands after the next holder's",
    caught_by: &["fencing"],
    planted: Planted::Resource(ResourceBug::NoFencing),
};
pub const UNSYNCED_TOKEN: Bug = Bug {
    name: "unsynced-token",
    about: "tokens come from the leader's own counter, appended to its disk without sync and not replicated",
    caught_by: &["token-order"],
    planted: Planted::Lock(LockBug::UnsyncedToken),
};
pub const NO_RECHECK: Bug = Bug {
    name: "no-recheck",
    about: "a queued acquire returns once the holder ahead is gone, without re-checking its own session (which may have expired while queued)",
    caught_by: &["lease-overlap"],
    planted: Planted::Lock(LockBug::NoRecheck),
};
pub const NO_DRIFT_MARGIN: Bug = Bug {
    name: "no-drift-margin",
    about:
        "the client trusts its lease for the full TTL instead of ttl*(1-rho), so a fast server clock expires it first",
    caught_by: &["lease-overlap"],
    planted: Planted::Lock(LockBug::NoDriftMargin),
};
pub const CLIENT_TOKEN: Bug = Bug {
    name: "client-token",
    about: "the server admits a client's hinted acquire, so a client chooses its own fencing token",
    caught_by: &["client-token"],
    planted: Planted::Lock(LockBug::ClientToken),
};
pub const ANYONE_RECONFIGURES: Bug = Bug {
    name: "anyone-reconfigures",
    about: "the server admits a configuration request from any client, not only from an operator: the rogue client removes lock servers, which then never catch up",
    caught_by: &["replica-behind"],
    planted: Planted::Lock(LockBug::AnyoneReconfigures),
};
pub const REAPPLY_RETRIES: Bug = Bug {
    name: "reapply-retries",
    about: "the resource applies a retried or duplicated request again instead of answering it from its table, so a write delayed in the network lands twice",
    caught_by: &["lost-increment"],
    planted: Planted::Resource(ResourceBug::ReapplyRetries),
};
pub const EXPIRY_RETRY_TOO_SOON: Bug = Bug {
    name: "expiry-retry-too-soon",
    about: "the leader proposes an uncommitted expiry again after a quarter of a heartbeat instead of a TTL: in an expiry storm the retries fill the log faster than it commits",
    caught_by: &["liveness"],
    planted: Planted::Lock(LockBug::ExpiryRetryTooSoon),
};

/// Server lease TTL.
pub const TTL: Duration = Duration::from_millis(1500);
/// ρ, the drift bound clients assume on half the runs. The nemesis drifts
/// clocks by up to ±20%, so the bound is wide; lease pairs whose window
/// exceeds it are not judged on overlap (fencing must still hold). The
/// other half run a tight bound: see [`drift_bound`].
pub const DRIFT_BOUND: f64 = 0.25;

/// The drift bound ρ the clients of run `seed` assume: [`DRIFT_BOUND`] on
/// half the runs, on the others a tight one of 0.2–2%, around the
/// library's default of 1%. A tight bound leaves a lazy client's renewal
/// within a commit latency of the leader's expiry deadline, a race a wide
/// bound never reaches (an `Expire` that ignored a renewal went unseen on
/// 600 seeds of wide bounds). Drawn from a stream of its own, so fault
/// plans are unchanged.
///
/// Runs that aim at drift within the bound alone (see [`lock_plan`])
/// always assume the wide bound: only a bound that wide leaves room for
/// drift large enough that a client ignoring it overlaps.
pub fn drift_bound(seed: u64) -> f64 {
    let mut rng = derive_rng(seed, stream::SETTINGS, 0);
    if rng.gen_bool(0.5) || situation_alone(seed) == Some(situation::DRIFT_WITHIN_BOUND) {
        DRIFT_BOUND
    } else {
        rng.gen_range(0.002..0.02)
    }
}

/// How one lock user of a run behaves, drawn from a stream of its own.
struct Habits {
    /// Renew once the lease has less than this left: half the lease for a
    /// careful client, the last few milliseconds for a lazy one.
    renew_below: Duration,
    /// Draws which cycles hold the lock long and which release a stale
    /// lease ([`Habits::rounds`], [`Habits::stale_release`]).
    rng: ChaCha8Rng,
}

impl Habits {
    fn of(seed: u64, client: u32) -> Self {
        let mut rng = derive_rng(seed, stream::SETTINGS, 1 + u64::from(client));
        let renew_below = if rng.gen_bool(0.5) {
            TTL / 2
        } else {
            Duration::from_millis(rng.gen_range(1..=20))
        };
        Habits { renew_below, rng }
    }

    /// Whether to release the last lease again after the next grant: one
    /// grant in four.
    fn stale_release(&mut self) -> bool {
        self.rng.gen_range(0..4) == 0
    }

    /// Read-modify-write rounds in a cycle that takes the lock: 1–3 (as
    /// drawn by `workload`), or, one cycle in four, 8–20 — a holder that
    /// keeps the lock past its lease and must renew.
    fn rounds(&mut self, workload: &mut ChaCha8Rng) -> u32 {
        if self.rng.gen_range(0..4) == 0 {
            self.rng.gen_range(8..=20)
        } else {
            workload.gen_range(1..=3)
        }
    }
}
const LOCK: &str = "counter";

/// How long a client waits in `acquire` before it counts as queued.
const QUEUED_AFTER: Duration = Duration::from_millis(100);
/// How long a resource access is retried before its outcome is unknown:
/// longer than the longest delay the plans put on a write in flight, so a
/// late write's fate is recorded.
const ACCESS_RETRY: Retry = Retry {
    attempts: 20,
    wait: Duration::from_millis(150),
};

/// The situations the issue lists, each aimed at deliberately by the plans
/// (see [`plan_situation`]) and counted when it occurs.
pub mod situation {
    /// The holder, between its read and its write, is paused past its lease.
    pub const GC_PAUSE: &str = "gc-pause";
    /// The holder is cut off from the lock servers but still reaches the resource.
    pub const HOLDER_CUT_OFF: &str = "holder-cut-off";
    /// The holder's write is delayed in flight past its lease's expiry.
    pub const DELAYED_WRITE: &str = "delayed-write";
    /// The lock-server leader crashes while the lock is held and a client is queued.
    pub const LEADER_FAILOVER: &str = "leader-failover";
    /// A queued client is paused until its session expires.
    pub const EXPIRED_WHILE_QUEUED: &str = "expired-while-queued";
    /// The servers' replies to an acquiring client are lost; it retries.
    pub const LOST_ACQUIRE_REPLY: &str = "lost-acquire-reply";
    /// The leader crashes with an appended, unsynced write while the lock is held.
    pub const UNSYNCED_CRASH: &str = "unsynced-crash";
    /// Lock-server clocks run fast, within the drift bound, while a holder
    /// that cannot renew uses its lease to the end.
    pub const DRIFT_WITHIN_BOUND: &str = "drift-within-bound";
    /// The leader's clock jumps forward beyond the bound while the lock is held.
    pub const CLOCK_JUMP: &str = "clock-jump";

    pub const ALL: [&str; 9] = [
        GC_PAUSE,
        HOLDER_CUT_OFF,
        DELAYED_WRITE,
        LEADER_FAILOVER,
        EXPIRED_WHILE_QUEUED,
        LOST_ACQUIRE_REPLY,
        UNSYNCED_CRASH,
        DRIFT_WITHIN_BOUND,
        CLOCK_JUMP,
    ];
}

/// Roles the scenario publishes for aimed faults.
mod role {
    /// A client that holds the lock and has just passed a lease check.
    pub const HOLDER: &str = "holder";
    /// A holder between its read and its write.
    pub const WORKING: &str = "working";
    /// A holder that will use its lease to the end without renewing (a
    /// dying holder, or one that could not renew).
    pub const ABANDONING: &str = "abandoning";
    /// A client whose acquire has just started.
    pub const ACQUIRING: &str = "acquiring";
    /// A client that has waited in `acquire` for a while: in line.
    pub const QUEUED: &str = "queued";
    /// The lock-server leader while a client holds the lock.
    pub const LEADER_HELD: &str = "leader-held";
    /// The leader while a client holds the lock and another is queued.
    pub const LEADER_HELD_QUEUED: &str = "leader-held-queued";
}

/// What a client is doing, as far as aimed faults care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Idle,
    Acquiring,
    Queued,
    /// Holds the lock; `abandoning`: will use the lease to its end.
    Holding {
        abandoning: bool,
    },
    Working {
        abandoning: bool,
    },
}

/// Who plays which role now: client statuses and the latest leader.
#[derive(Debug, Default)]
struct Roles {
    clients: BTreeMap<NodeId, Status>,
    leader: Option<(Term, NodeId)>,
}

impl Roles {
    /// Publishes the roles to the world, where the nemesis looks them up.
    fn publish(&self, world: &World) {
        let with = |wanted: fn(Status) -> bool| -> Vec<NodeId> {
            let nodes = self.clients.iter().filter(|(_, &s)| wanted(s));
            nodes.map(|(&n, _)| n).collect()
        };
        let holders = with(|s| matches!(s, Status::Holding { .. } | Status::Working { .. }));
        let queued = with(|s| s == Status::Queued);
        let leader: Vec<NodeId> = self.leader.iter().map(|&(_, n)| n).collect();
        let mut roles = BTreeMap::new();
        let mut put = |name: &str, nodes: Vec<NodeId>| {
            if !nodes.is_empty() {
                roles.insert(name.to_string(), nodes);
            }
        };
        put(role::HOLDER, holders.clone());
        put(role::WORKING, with(|s| matches!(s, Status::Working { .. })));
        put(
            role::ABANDONING,
            with(|s| {
                matches!(
                    s,
                    Status::Holding { abandoning: true } | Status::Working { abandoning: true }
                )
            }),
        );
        put(role::ACQUIRING, with(|s| s == Status::Acquiring));
        put(role::QUEUED, queued.clone());
        if !holders.is_empty() {
            put(role::LEADER_HELD, leader.clone());
            if !queued.is_empty() {
                put(role::LEADER_HELD_QUEUED, leader);
            }
        }
        world.lock().set_roles(roles);
    }
}

/// Reports each lock server's leaderships into [`Roles`], and the entries
/// the replicas applied (by index; every replica applies the same), with
/// the real time the first replica applied each, for the `client-token`
/// and `expiry-early` checkers.
struct LeaderWatch {
    roles: Arc<Mutex<Roles>>,
    world: World,
    applied: Arc<Mutex<BTreeMap<Index, AppliedEntry>>>,
    judge: Arc<Judge>,
}

impl Observer<Event> for LeaderWatch {
    fn observe(&self, node: NodeId, now: Duration, event: &Event) {
        self.judge.observe(node, now, event);
        if let Event::Applied { index, payload, .. } = event {
            let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
            applied.entry(*index).or_insert_with(|| AppliedEntry {
                payload: payload.clone(),
                at: crate::world::elapsed(),
            });
        }
        if let Event::Leader { term } = event {
            let mut roles = self.roles.lock().unwrap_or_else(|e| e.into_inner());
            if roles.leader.is_none_or(|(t, _)| *term > t) {
                roles.leader = Some((*term, node));
                roles.publish(&self.world);
            }
        }
    }
}

/// Aimed faults that bring about `name`, armed at `at_ms`, for clients that
/// assume `drift_bound`. `servers` are the lock servers, `resource` the
/// resource node.
pub fn plan_situation(
    name: &str,
    drift_bound: f64,
    rng: &mut ChaCha8Rng,
    at_ms: u64,
    servers: &[NodeId],
    resource: NodeId,
) -> Vec<Fault> {
    let ttl = TTL.as_millis() as u64;
    let aimed = |role: &str, action| Fault::Aimed {
        at_ms,
        situation: name.to_string(),
        role: role.to_string(),
        action,
    };
    let from = servers.to_vec();
    match name {
        situation::GC_PAUSE => vec![aimed(
            role::WORKING,
            AimedAction::Pause {
                for_ms: rng.gen_range(ttl + 200..=ttl + 2_500),
            },
        )],
        situation::HOLDER_CUT_OFF => vec![aimed(
            role::HOLDER,
            AimedAction::Isolate {
                from,
                for_ms: rng.gen_range(ttl + 300..=2 * ttl),
            },
        )],
        situation::DELAYED_WRITE => {
            // Longer than the holder's remaining lease plus the next
            // holder's grant; every retry in the window is as late.
            let delay_ms = rng.gen_range(ttl + 200..=ttl + 1_000);
            vec![aimed(
                role::WORKING,
                AimedAction::DelayTo {
                    to: vec![resource],
                    delay_ms,
                    for_ms: delay_ms + 300,
                },
            )]
        }
        situation::LEADER_FAILOVER => vec![aimed(
            role::LEADER_HELD_QUEUED,
            AimedAction::Crash {
                down_ms: rng.gen_range(300..=1_500),
                disk: *[DiskLoss::LoseUnsynced, DiskLoss::KeepPrefix, DiskLoss::Torn]
                    .choose(rng)
                    .expect("3"),
            },
        )],
        situation::EXPIRED_WHILE_QUEUED => vec![aimed(
            role::QUEUED,
            AimedAction::Pause {
                for_ms: rng.gen_range(ttl + 300..=ttl + 2_000),
            },
        )],
        situation::LOST_ACQUIRE_REPLY => vec![aimed(
            role::ACQUIRING,
            AimedAction::Deafen {
                from,
                for_ms: rng.gen_range(700..=1_500),
            },
        )],
        situation::UNSYNCED_CRASH => vec![aimed(
            role::LEADER_HELD,
            AimedAction::CrashOnAppend {
                down_ms: rng.gen_range(100..=1_000),
            },
        )],
        situation::DRIFT_WITHIN_BOUND => {
            // Every lock server fast by a quarter to 90% of what the run's
            // bound allows, 1/(1-ρ): up to 30% for ρ = 0.25.
            let allowed = drift_bound / (1.0 - drift_bound) * 1e6;
            let mut faults: Vec<Fault> = servers
                .iter()
                .map(|&node| Fault::Drift {
                    at_ms,
                    node,
                    ppm: rng.gen_range(allowed * 0.25..=allowed * 0.9) as i64,
                })
                .collect();
            faults.push(aimed(
                role::ABANDONING,
                AimedAction::Isolate {
                    from,
                    for_ms: rng.gen_range(ttl + 500..=2 * ttl),
                },
            ));
            faults
        }
        situation::CLOCK_JUMP => vec![aimed(
            role::LEADER_HELD,
            AimedAction::Jump {
                forward_ms: rng.gen_range(ttl..=3 * ttl),
            },
        )],
        other => panic!("unknown lock situation `{other}`"),
    }
}

/// The fault kinds a situation's faults count under.
fn situation_kinds(name: &str) -> Vec<FaultKind> {
    match name {
        situation::GC_PAUSE | situation::EXPIRED_WHILE_QUEUED => vec![FaultKind::Pause],
        situation::HOLDER_CUT_OFF | situation::LOST_ACQUIRE_REPLY => vec![FaultKind::Partition],
        situation::DELAYED_WRITE => vec![FaultKind::MessageDelay],
        situation::LEADER_FAILOVER => vec![FaultKind::Crash],
        situation::UNSYNCED_CRASH => vec![FaultKind::UnsyncedCrash],
        situation::DRIFT_WITHIN_BOUND => vec![FaultKind::Partition, FaultKind::ClockDrift],
        _ => vec![FaultKind::ClockJump],
    }
}

/// Stream index of the aimed-fault draws within the plan stream (the
/// swarm plan uses index 0).
const AIM_STREAM: u64 = 1;

/// The situation an odd seed runs alone; even seeds run the swarm.
fn situation_alone(seed: u64) -> Option<&'static str> {
    (seed % 2 == 1).then(|| situation::ALL[(seed / 2) as usize % situation::ALL.len()])
}

/// Odd seeds: one situation, aimed at twice, and nothing else (situations
/// take turns, so every one comes up in any 18 consecutive seeds). Even
/// seeds: the swarm plan, half of them with one aimed situation on top.
fn lock_plan(seed: u64, targets: &Targets) -> FaultPlan {
    let window = LockScenario::<Single>::SPEC.fault_window.as_millis() as u64;
    let mut rng = derive_rng(seed, stream::PLAN, AIM_STREAM);
    let (&resource, servers) = targets.servers.split_last().expect("lock servers and a resource");
    let bound = drift_bound(seed);
    let aim = |name, rng: &mut ChaCha8Rng, at_ms| plan_situation(name, bound, rng, at_ms, servers, resource);
    if seed % 2 == 0 {
        let mut plan = FaultPlan::generate(seed, window, targets);
        if rng.gen_bool(0.5) {
            let name = *situation::ALL.choose(&mut rng).expect("non-empty");
            let at_ms = rng.gen_range(100..window * 8 / 10);
            plan.faults.extend(aim(name, &mut rng, at_ms));
            plan.faults.sort_by_key(Fault::at_ms);
        }
        return plan;
    }
    let name = situation_alone(seed).expect("an odd seed");
    let mut faults = Vec::new();
    for at_ms in [
        rng.gen_range(100..window * 4 / 10),
        rng.gen_range(window / 2..window * 8 / 10),
    ] {
        faults.extend(aim(name, &mut rng, at_ms));
    }
    faults.sort_by_key(Fault::at_ms);
    FaultPlan {
        duration_ms: window,
        swarm: Swarm {
            enabled: situation_kinds(name),
            intensity: 0.5,
        },
        faults,
    }
}

/// How far before a holder's last lease check its lease's window starts:
/// the renewal its belief rests on was sent at most a TTL (on its clock)
/// earlier, and the servers count the TTL from about then.
const LEASE_LOOKBACK: Duration = Duration::from_millis(2 * TTL.as_millis() as u64);

/// Whether the lease arithmetic's assumption held over `pair`'s window,
/// by the world's record of every clock: the holder's clock never ran
/// slower than `(1 − ρ)` times any lock server's, and no lock server's
/// clock jumped.
fn clocks_kept_bound(world: &World, drift_bound: f64, holder: NodeId, servers: &[NodeId], pair: &LeasePair) -> bool {
    let until = Duration::from_nanos(pair.until_ns);
    let from = until
        .saturating_sub(LEASE_LOOKBACK)
        .min(Duration::from_nanos(pair.from_ns));
    let to = until.max(Duration::from_nanos(pair.granted_ns));
    let w = world.lock();
    let Some(holder) = w.nodes.get(&holder) else {
        return false;
    };
    let slowest_holder = holder.clock.over(from, to).min_rate;
    servers.iter().filter_map(|s| w.nodes.get(s)).all(|server| {
        let span = server.clock.over(from, to);
        !span.jumped && span.max_rate * (1.0 - drift_bound) <= slowest_holder
    })
}

/// The highest rate any of `servers`' clocks ran at during `[from, to]`,
/// or `None` if one jumped.
fn fastest_server_clock(world: &World, servers: &[NodeId], from: Duration, to: Duration) -> Option<f64> {
    let w = world.lock();
    servers
        .iter()
        .filter_map(|s| w.nodes.get(s))
        .map(|server| server.clock.over(from, to))
        .try_fold(0.0_f64, |fastest, span| {
            (!span.jumped).then_some(fastest.max(span.max_rate))
        })
}

/// Clients that take the lock and touch the resource (history indices
/// 0..4); after them come the rogue and the storm clients.
const LOCK_USERS: u32 = 4;
/// The rogue client's index (see [`lock_hostile::rogue`]).
const ROGUE: u32 = LOCK_USERS;
/// The operator's client index (with `CHANGES`), after the storm clients.
const OPERATOR: u32 = ROGUE + 1 + STORM_CLIENTS;
/// Storm clients, each of its own principal (the per-principal quota is
/// 256), each opening [`STORM_SESSIONS`] sessions and vanishing.
const STORM_CLIENTS: u32 = 3;
const STORM_SESSIONS: u64 = 200;
/// One seed in this many runs the storm (the heavy configuration).
const STORM_EVERY: u64 = 8;
const STORM_STREAM: u64 = 0x5707;

/// Whether `seed` runs the expiry storm, and when (into the run).
pub fn storm_at(seed: u64) -> Option<Duration> {
    (seed % STORM_EVERY == STORM_EVERY / 2)
        .then(|| Duration::from_millis(derive_rng(seed, STORM_STREAM, 0).gen_range(1_000..3_000)))
}

/// Which deployment of the lock service a run simulates.
pub trait Variant: Send + Sync + 'static {
    const NAME: &'static str;
    const ABOUT: &'static str;
    const BUGS: &'static [Bug];
    const SERVERS: u32;
    const MIN_SERVERS: u32;
    /// An operator changes the group's membership ([`operator`]): five
    /// lock servers, three of which found the group.
    const CHANGES: bool = false;
    /// Groups the lock servers form, in equal shares; with more than one,
    /// an operator moves lock names between them ([`lock_moves`]).
    const GROUPS: u32 = 1;
}

/// One group of three lock servers.
pub struct Single;
/// One group whose members an operator changes.
pub struct Members;
/// Two groups of three, lock names moving between them.
pub struct Moves;

impl Variant for Single {
    const NAME: &'static str = "lock";
    const ABOUT: &'static str =
        "fenced lock service on the replicated log: sessions with leases, FIFO waiters, fencing tokens, a fenced counter";
    const BUGS: &'static [Bug] = &[
        NO_FENCING,
        UNSYNCED_TOKEN,
        NO_RECHECK,
        NO_DRIFT_MARGIN,
        CLIENT_TOKEN,
        EXPIRY_RETRY_TOO_SOON,
        REAPPLY_RETRIES,
        ANYONE_RECONFIGURES,
    ];
    const SERVERS: u32 = 4;
    const MIN_SERVERS: u32 = 2;
}

impl Variant for Members {
    const NAME: &'static str = "lock-members";
    const ABOUT: &'static str = "the fenced lock service while an operator adds, promotes, removes and replaces lock servers, and a server may lose its disk: every lock invariant, and every final member caught up";
    const BUGS: &'static [Bug] = &[REMOVED_STILL_VOTES];
    const SERVERS: u32 = 6;
    const MIN_SERVERS: u32 = 4;
    const CHANGES: bool = true;
}

impl Variant for Moves {
    const NAME: &'static str = "lock-moves";
    const ABOUT: &'static str = "the fenced lock service split into two groups while an operator moves lock names between them by ring changes: every lock invariant across moves, and no two groups serving a name at once";
    const BUGS: &'static [Bug] = &[FLIP_BEFORE_FENCE, FLOOR_NOT_CARRIED, HOLDERS_NOT_SHIPPED];
    const SERVERS: u32 = 10;
    const MIN_SERVERS: u32 = 6;
    const GROUPS: u32 = 2;
}

pub const FLIP_BEFORE_FENCE: Bug = Bug {
    name: "flip-before-fence",
    about: "the rebalancer gives the moving names to the target (empty, with no floor) before it fences the source, so both groups serve them for a while",
    caught_by: &["owner-overlap"],
    planted: Planted::Lock(LockBug::FlipBeforeFence),
};
pub const FLOOR_NOT_CARRIED: Bug = Bug {
    name: "floor-not-carried",
    about: "the part's token floor is its own locks' highest token, not the source's counter, so a lock freed before the move is granted at the target below tokens the source gave it",
    caught_by: &["client-token"],
    planted: Planted::Lock(LockBug::FloorNotCarried),
};
pub const HOLDERS_NOT_SHIPPED: Bug = Bug {
    name: "holders-not-shipped",
    about: "the rebalancer installs the part without its locks, so the target grants a moved lock while its holder's lease still runs",
    caught_by: &["lease-overlap"],
    planted: Planted::Lock(LockBug::HoldersNotShipped),
};

/// The lock scenario; one instance per run, of the deployment `V`.
pub struct LockScenario<V: Variant = Single> {
    bug: Option<Planted>,
    servers: u32,
    /// The lock servers that found each group: all of it, or three with
    /// `CHANGES`.
    founders: Vec<Vec<NodeId>>,
    /// The group the operator settled after the heal (with `CHANGES`),
    /// whose every member must catch up.
    settled: Arc<Mutex<Option<BTreeSet<NodeId>>>>,
    /// Every client's node id, by history index; the probe comes after
    /// them (whose clocks the lease arithmetic concerns).
    clients: Vec<NodeId>,
    roles: Arc<Mutex<Roles>>,
    /// Each group's applied entries.
    applied: Vec<Arc<Mutex<BTreeMap<Index, AppliedEntry>>>>,
    /// Each group's log safety and replicas' catch-up.
    judges: Vec<Arc<Judge>>,
    /// The resource node's record of every access it made durable.
    accesses: Arc<Mutex<Vec<resource::Applied>>>,
    /// The run's world, for the clock record (set when a server boots).
    world: Arc<OnceLock<World>>,
    /// ρ, the drift bound the run's clients assume ([`drift_bound`]).
    drift_bound: f64,
    variant: PhantomData<fn() -> V>,
}

impl<V: Variant> LockScenario<V> {
    /// Whether an operator client runs: to change members or move names.
    const OPERATED: bool = V::CHANGES || V::GROUPS > 1;

    fn lock_servers(&self) -> Vec<NodeId> {
        (1..self.servers - self.directory_servers().len() as u32).collect()
    }
    /// The directory's replicas, with groups: the three servers before the
    /// resource.
    fn directory_servers(&self) -> Vec<NodeId> {
        if V::GROUPS > 1 {
            (self.servers - 3..self.servers).collect()
        } else {
            vec![]
        }
    }
    /// The lock servers of each group.
    fn groups(&self) -> Vec<Vec<NodeId>> {
        let servers = self.lock_servers();
        let groups = (V::GROUPS as usize).min(servers.len());
        let per_group = servers.len() / groups;
        (0..groups)
            .map(|g| {
                let end = if g + 1 == groups {
                    servers.len()
                } else {
                    (g + 1) * per_group
                };
                servers[g * per_group..end].to_vec()
            })
            .collect()
    }
    /// The group (index) lock server `node` belongs to.
    fn group_of(&self, node: NodeId) -> usize {
        let groups = self.groups();
        groups
            .iter()
            .position(|g| g.contains(&node))
            .unwrap_or(groups.len() - 1)
    }
    /// One lock client per group, and a router that finds a lock's group
    /// in the directory (with groups), sharing the node's inbox.
    fn lock_clients(&self, env: &SimEnv) -> (Vec<LockClient<SimEnv>>, Option<Router<SimEnv>>) {
        let inbox = Inbox::new(env.clone());
        let groups = self.groups().into_iter();
        let clients = groups
            .map(|servers| LockClient::sharing(env.clone(), inbox.clone(), servers, self.client_config()))
            .collect();
        let directory = self.directory_servers();
        let router = (!directory.is_empty()).then(|| Router::new(inbox, directory));
        (clients, router)
    }
    fn resource(&self) -> NodeId {
        self.servers
    }
    /// The run's planted bug if it is the lock service's.
    fn lock_bug(&self) -> Option<LockBug> {
        match self.bug {
            Some(Planted::Lock(bug)) => Some(bug),
            _ => None,
        }
    }

    /// Records what client `env` is doing, for aimed faults.
    fn status(&self, env: &SimEnv, status: Status) {
        let mut roles = self.roles.lock().unwrap_or_else(|e| e.into_inner());
        if roles.clients.insert(env.id(), status) != Some(status) {
            roles.publish(env.world());
        }
    }

    fn client_config(&self) -> ClientConfig {
        ClientConfig {
            drift_bound: self.drift_bound,
            request_timeout: Duration::from_millis(600),
            bug: self.lock_bug(),
        }
    }

    fn server_config(&self) -> ServerConfig {
        let log_bug = match self.bug {
            Some(Planted::Log(bug)) => Some(bug),
            _ => None,
        };
        ServerConfig {
            log: crate::scenarios::log::sim_config(log_bug),
            ttl: TTL,
            joining: false,
            bug: self.lock_bug(),
        }
    }

    /// Opens (or reopens) a session, retrying while the run goes on.
    async fn open(lc: &mut LockClient<SimEnv>, fresh: bool) {
        let mut fresh = fresh;
        loop {
            let r = if fresh { lc.reopen().await } else { lc.open().await };
            match r {
                Ok(()) => return,
                Err(_) => fresh = true,
            }
        }
    }
}

/// One fenced resource access, recorded. `None`: outcome unknown.
struct Access<'a> {
    env: &'a SimEnv,
    resource: NodeId,
    req: u64,
}

impl Access<'_> {
    async fn read(&mut self, client: &Client<LockOp>, token: Token) -> Option<Result<u64, ()>> {
        client.invoke(LockOp::Read {
            token,
            value: None,
            seq: None,
        });
        self.req += 1;
        let request = ResourceRequest::Read { req: self.req, token };
        match resource::call(self.env, self.resource, &request, ACCESS_RETRY).await {
            Some(Ok((value, seq))) => {
                client.ok(LockOp::Read {
                    token,
                    value: Some(value),
                    seq: Some(seq),
                });
                Some(Ok(value))
            }
            Some(Err(_)) => {
                client.fail(LockOp::Read {
                    token,
                    value: None,
                    seq: None,
                });
                Some(Err(()))
            }
            None => {
                client.info(LockOp::Read {
                    token,
                    value: None,
                    seq: None,
                });
                None
            }
        }
    }

    async fn write(&mut self, client: &Client<LockOp>, token: Token, value: u64) -> bool {
        client.invoke(LockOp::Write {
            token,
            value,
            seq: None,
        });
        self.req += 1;
        let request = ResourceRequest::Write {
            req: self.req,
            token,
            value,
        };
        match resource::call(self.env, self.resource, &request, ACCESS_RETRY).await {
            Some(Ok((_, seq))) => {
                client.ok(LockOp::Write {
                    token,
                    value,
                    seq: Some(seq),
                });
                true
            }
            Some(Err(_)) => {
                client.fail(LockOp::Write {
                    token,
                    value,
                    seq: None,
                });
                false
            }
            None => {
                client.info(LockOp::Write {
                    token,
                    value,
                    seq: None,
                });
                false
            }
        }
    }
}

async fn release(client: &Client<LockOp>, lc: &mut LockClient<SimEnv>, lease: &ringfence::lock::Lease) {
    let token = lease.token;
    client.invoke(LockOp::Release { token });
    match lc.release(lease).await {
        Ok(()) => client.ok(LockOp::Release { token }),
        Err(LockError::Unavailable { .. }) => client.info(LockOp::Release { token }),
        Err(_) => client.fail(LockOp::Release { token }),
    };
}

impl<V: Variant> Scenario for LockScenario<V> {
    type Op = LockOp;

    const SPEC: Spec = Spec {
        name: V::NAME,
        about: V::ABOUT,
        bugs: V::BUGS,
        // The lock servers and the resource node.
        servers: V::SERVERS,
        min_servers: V::MIN_SERVERS,
        // Four lock users, the rogue, three storm clients; the operator, if
        // it runs.
        workload: Workload {
            clients: LOCK_USERS + 1 + STORM_CLIENTS + Self::OPERATED as u32,
            ops: 40,
        },
        fault_window: Duration::from_secs(6),
        // TTL (an abandoned session expires) + a few election timeouts + the
        // acquire's retries; with `CHANGES`, the operator settles the
        // membership first, one committed change after another; with
        // groups, it finishes the move in progress first.
        liveness_bound: Duration::from_secs(if Self::OPERATED { 10 } else { 5 }),
        default_seeds: 100,
        aiming: None,
        situations: &situation::ALL,
    };

    /// Lock users 101.., the rogue and storm client `k` each in a client
    /// principal of its own (16, 17 + k): each has its own session quota.
    /// The operator in the operators' principal
    /// ([`ringfence::log::membership::OPERATOR_IDS`]), the only one the
    /// lock service takes configuration changes from.
    fn client_ids(clients: u32) -> Vec<NodeId> {
        client_ids(clients)
            .into_iter()
            .enumerate()
            .map(|(i, id)| match i as u32 {
                i if i < ROGUE => id,
                OPERATOR if Self::OPERATED => OPERATOR_IDS.start | id,
                i => (FIRST_PRINCIPAL + i - ROGUE) << 16 | id,
            })
            .collect()
    }

    /// The lock servers: the resource's disk is the ground truth the
    /// checker reads.
    fn replaceable_servers(servers: &[NodeId]) -> Vec<NodeId> {
        servers.split_last().map(|(_, lock)| lock.to_vec()).unwrap_or_default()
    }

    /// The membership operator stays up: it settles the group after the
    /// heal. The rebalancer may crash: its next incarnation finishes the
    /// move the directory says is in progress.
    fn crashable_clients(clients: &[NodeId]) -> Vec<NodeId> {
        let kept = |id: NodeId| V::CHANGES && is_operator(id);
        clients.iter().copied().filter(|&id| !kept(id)).collect()
    }

    /// The full mix; with `CHANGES`, a lost disk too.
    fn fault_kinds() -> Vec<FaultKind> {
        let replacement = FaultKind::REPLACEMENT.into_iter().filter(|_| V::CHANGES);
        FaultKind::ALL.into_iter().chain(replacement).collect()
    }
    fn plan(seed: u64, targets: &Targets) -> FaultPlan {
        lock_plan(seed, targets)
    }

    fn new(params: &Params) -> Self {
        let mut scenario = LockScenario {
            bug: params.planted(),
            servers: params.servers,
            founders: vec![],
            settled: Arc::default(),
            clients: Self::client_ids(params.workload.clients),
            roles: Arc::default(),
            applied: vec![],
            judges: vec![],
            accesses: Arc::default(),
            world: Arc::default(),
            drift_bound: drift_bound(params.seed),
            variant: PhantomData,
        };
        let groups = scenario.groups();
        scenario.founders = groups
            .iter()
            .map(|g| g[..if V::CHANGES { g.len().min(3) } else { g.len() }].to_vec())
            .collect();
        scenario.applied = groups.iter().map(|_| Arc::default()).collect();
        // One judge per group, and the directory's last.
        let logs = groups.len() + usize::from(V::GROUPS > 1);
        scenario.judges = (0..logs).map(|_| Arc::default()).collect();
        scenario
    }

    async fn server(self: Arc<Self>, env: SimEnv) {
        let _ = self.world.set(env.world().clone());
        if env.id() == self.resource() {
            let bug = match self.bug {
                Some(Planted::Resource(bug)) => Some(bug),
                _ => None,
            };
            let accesses = self.accesses.clone();
            let record = move |a| accesses.lock().unwrap_or_else(|e| e.into_inner()).push(a);
            let served = match bug {
                Some(bug) => resource::serve_with_bug(env, bug, record).await,
                None => resource::serve_recorded(env, record).await,
            };
            if let Err(error) = served {
                tracing::warn!(%error, "resource stopped");
            }
        } else if self.directory_servers().contains(&env.id()) {
            let judge = self.judges.last().expect("a directory judge").clone();
            rebalancer::serve_directory(env, self.directory_servers(), self.server_config().log, judge).await;
        } else {
            let me = env.id();
            let g = self.group_of(me);
            let judge = self.judges[g].clone();
            let watch = Arc::new(LeaderWatch {
                roles: self.roles.clone(),
                world: env.world().clone(),
                applied: self.applied[g].clone(),
                judge: judge.clone(),
            });
            judge.booted(me);
            // A founder founds the group until its disk has been synced;
            // any other empty disk joins as a new incarnation.
            let founders = &self.founders[g];
            let boot = if founders.contains(&me) && env.original_disk_unused() {
                Boot::Genesis(founders.clone())
            } else {
                Boot::Join
            };
            let group = (self.groups().swap_remove(g), boot);
            let config = ServerConfig {
                joining: g > 0,
                ..self.server_config()
            };
            if let Err(error) = server::run(env, group, config, watch).await {
                tracing::warn!(%error, "lock server stopped");
                judge.stopped(me);
            }
        }
        std::future::pending::<()>().await;
    }

    async fn client(self: Arc<Self>, env: SimEnv, mut client: Client<LockOp>) {
        if V::CHANGES && client.id == OPERATOR {
            let servers = self.lock_servers();
            operator::run::<_, LockMachine, _>(&env, &client, &servers, &self.judges[0]).await;
            let members = operator::settle::<_, LockMachine>(&env, &servers).await;
            *self.settled.lock().unwrap_or_else(|e| e.into_inner()) = Some(members);
            return;
        }
        if V::GROUPS > 1 && client.id == OPERATOR {
            let (groups, directory) = (self.groups(), self.directory_servers());
            return lock_moves::rebalancer(&env, &mut client, &groups, &directory, LOCK, self.lock_bug()).await;
        }
        if client.id == ROGUE {
            return lock_hostile::rogue(env, self.lock_servers(), LOCK, || client.next_op()).await;
        }
        if client.id > ROGUE {
            let seed = env.world().lock().seed;
            if let Some(at) = storm_at(seed) {
                lock_hostile::storm(env, self.lock_servers(), STORM_SESSIONS, at).await;
            } else if V::GROUPS > 1 {
                let groups = self.groups().into_iter().enumerate();
                let groups = groups.map(|(g, servers)| (lock_moves::group_id(g), servers)).collect();
                let sharded =
                    ShardedLockClient::new(env.clone(), groups, self.directory_servers(), self.client_config());
                let name = format!("side-{}", client.id - ROGUE);
                lock_moves::side_user(env, sharded, name, || client.next_op()).await;
            }
            return;
        }
        let mut rng = env.rng();
        let mut habits = Habits::of(env.world().lock().seed, client.id);
        let mut released = None;
        // One client per group; `group` is the one the lock was last found
        // in, and a `NotServed` sends the client on to the next.
        let (mut clients, mut router) = self.lock_clients(&env);
        let mut group = 0;
        let mut access = Access {
            env: &env,
            resource: self.resource(),
            req: 0,
        };
        let mut fresh = false;
        while client.next_op() {
            let lc = &mut clients[group];
            if !lc.is_valid() {
                Self::open(lc, fresh).await;
            }
            let mode = rng.gen_range(0..4);
            let mut abandon = mode == 0;
            client.invoke(LockOp::Acquire { token: None });
            self.status(&env, Status::Acquiring);
            let got = if mode == 1 {
                lc.try_acquire(LOCK).await
            } else {
                let acquire = std::pin::pin!(lc.acquire(LOCK, Duration::from_secs(2)));
                match select(acquire, std::pin::pin!(env.sleep(QUEUED_AFTER))).await {
                    Either::Left((got, _)) => got,
                    Either::Right(((), acquire)) => {
                        self.status(&env, Status::Queued);
                        acquire.await
                    }
                }
            };
            self.status(&env, Status::Idle);
            let lease = match got {
                Ok(lease) if lc.is_valid() => {
                    client.ok(LockOp::Acquire {
                        token: Some(lease.token),
                    });
                    lease
                }
                Ok(_) | Err(LockError::Unavailable { .. } | LockError::WaitExpired { .. }) => {
                    client.info(LockOp::Acquire { token: None });
                    fresh = true;
                    continue;
                }
                Err(LockError::SessionExpired) => {
                    client.fail(LockOp::Acquire { token: None });
                    fresh = true;
                    continue;
                }
                Err(LockError::NotServed { epoch }) => {
                    client.fail(LockOp::Acquire { token: None });
                    let router = router.as_mut().expect("only groups refuse a name");
                    group = lock_moves::reroute(&env, router, LOCK, group, epoch, clients.len()).await;
                    continue;
                }
                Err(_) => {
                    client.fail(LockOp::Acquire { token: None });
                    continue;
                }
            };
            let stale = released.take().filter(|_| habits.stale_release());
            // The same grant again (a release that timed out, then an
            // acquire that found the lock still this session's): releasing
            // it frees this grant, so it is not a stale handle.
            if let Some(old) = stale.filter(|old: &ringfence::lock::Lease| old.token != lease.token) {
                // A stale handle released late (a guard of an earlier grant
                // dropped after the next one): it must not free this grant.
                release(&client, lc, &old).await;
            }
            let token = lease.token;
            let mut rounds = habits.rounds(&mut rng);
            // The last access of a holder that stopped renewing, made at its
            // lease's last moment: where a wrong lease belief shows.
            let mut at_edge = false;
            loop {
                if rounds == 0 {
                    if !abandon || at_edge {
                        break;
                    }
                    env.sleep(lc.valid_for().saturating_sub(Duration::from_millis(2))).await;
                    (at_edge, rounds) = (true, 1);
                }
                rounds -= 1;
                if !abandon && lc.valid_for() < habits.renew_below {
                    match lc.keep_alive().await {
                        Ok(_) => {}
                        // Cut off from the servers: the lease still runs;
                        // use it to the end, as a holder that cannot renew would.
                        Err(LockError::Unavailable { .. }) => abandon = true,
                        Err(_) => break,
                    }
                }
                // The lease check: the history's Read invoke marks the last
                // moment this client believed it held the lock.
                if !lc.is_valid() {
                    break;
                }
                self.status(&env, Status::Holding { abandoning: abandon });
                let Some(Ok(value)) = access.read(&client, token).await else {
                    break;
                };
                self.status(&env, Status::Working { abandoning: abandon });
                env.sleep(Duration::from_millis(rng.gen_range(20..60))).await;
                if !access.write(&client, token, value + 1).await {
                    break;
                }
            }
            self.status(&env, Status::Idle);
            if abandon {
                // Walk away without releasing, and start a new session.
                fresh = true;
                Self::open(lc, true).await;
                continue;
            }
            release(&client, lc, &lease).await;
            if rng.gen_range(0..6) == 0 {
                release(&client, lc, &lease).await;
            }
            released = Some(lease);
        }
        for lc in &mut clients {
            let _ = lc.close().await;
        }
    }

    async fn probe(self: Arc<Self>, env: SimEnv, client: Client<LockOp>) {
        let (mut clients, mut router) = self.lock_clients(&env);
        let mut group = 0;
        let mut access = Access {
            env: &env,
            resource: self.resource(),
            req: 0,
        };
        loop {
            let lc = &mut clients[group];
            if !lc.is_valid() {
                Self::open(lc, true).await;
            }
            client.invoke(LockOp::Acquire { token: None });
            match lc.acquire(LOCK, Duration::from_secs(1)).await {
                Ok(lease) if lc.is_valid() => {
                    client.ok(LockOp::Acquire {
                        token: Some(lease.token),
                    });
                    if let Some(Ok(_)) = access.read(&client, lease.token).await {
                        release(&client, lc, &lease).await;
                        let settled = self.settled.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        for judge in &self.judges {
                            judge.all_caught_up(&env, settled.clone()).await;
                        }
                        return;
                    }
                }
                Err(LockError::NotServed { epoch }) => {
                    client.fail(LockOp::Acquire { token: None });
                    let router = router.as_mut().expect("only groups refuse a name");
                    group = lock_moves::reroute(&env, router, LOCK, group, epoch, clients.len()).await;
                }
                _ => {
                    client.info(LockOp::Acquire { token: None });
                }
            }
        }
    }

    fn check(&self, history: &History<LockOp>) -> Vec<Violation> {
        let accesses = self.accesses.lock().unwrap_or_else(|e| e.into_inner());
        let servers = self.lock_servers();
        let judged = |pair: &LeasePair| {
            // The probe's history index comes after every client's.
            let holder = match self.clients.get(pair.holder as usize) {
                Some(&id) => id,
                None => PROBE_ID,
            };
            self.world
                .get()
                .is_some_and(|world| clocks_kept_bound(world, self.drift_bound, holder, &servers, pair))
        };
        let mut violations = check_lock(history, ResourceTruth::Applied(&accesses), &judged);
        let max_sessions = crate::scenarios::log::sim_config(None).max_sessions;
        let fastest = |from, to| {
            self.world
                .get()
                .and_then(|world| fastest_server_clock(world, &servers, from, to))
        };
        let applied: Vec<_> = self
            .applied
            .iter()
            .map(|a| a.lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        for applied in &applied {
            violations.extend(check_grants(applied, max_sessions));
            violations.extend(check_expiries(applied, max_sessions, TTL, &fastest));
            violations.extend(check_lease_ends(history, applied, LOCK, max_sessions, &judged));
        }
        if V::GROUPS > 1 {
            let groups: Vec<_> = (0..applied.len())
                .map(|g| (lock_moves::group_id(g), &*applied[g]))
                .collect();
            violations.extend(lock_moves::check_owners(
                &groups,
                lock_moves::group_id(0),
                LOCK,
                max_sessions,
            ));
            violations.extend(lock_moves::check_tokens(&groups, max_sessions));
        }
        violations
    }
}
