//! The operator that moves keys between the groups of a sharded service
//! while the faults run (`lock-moves`, `txn-moves`), for any service's
//! [`Groups`].
//!
//! The first group founds the deployment, serving every key; the others
//! start serving none (the rebalancer assigns them so before anything
//! else). Then, every few hundred milliseconds, the rebalancer draws new
//! weights for the groups (a weight of 0 takes a group out of the ring),
//! builds the ring view of the next epoch and moves every range whose
//! owner changed ([`ringfence::shard::rebalance`]), retrying a move cut
//! short by the faults until it finishes. Each incarnation first assigns
//! the joining groups (again: assignments are idempotent) and finishes
//! any rebalance the directory says is in progress, so a rebalancer that
//! crashed in the middle of a move is succeeded by one that completes it.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use ringfence::env::{Env, NodeId};
use ringfence::log::client::{Client as LogClient, Inbox};
use ringfence::log::membership::Boot;
use ringfence::log::Config;
use ringfence::ring::hash_key;
use ringfence::shard::directory::{self, Directory, ViewSpec};
use ringfence::shard::rebalance::{assign_joining, step, Groups, RebalanceConfig};
use ringfence::shard::GroupId;

use crate::env::SimEnv;
use crate::scenario::Client;
use crate::scenarios::judge::Judge;

/// Step sizes that split the scenario's moves: room for a handful of
/// ranges or items each.
const SMALL_STEPS: std::ops::RangeInclusive<usize> = 100..=240;
/// How long a step is retried before the whole move is tried again.
const STEP_TIMEOUT: Duration = Duration::from_millis(800);

/// Runs a replica of the directory on `members` (a fresh disk founds the
/// group), judged by `judge`; a replica that stops to protect what it
/// promised stays down until the nemesis restarts it.
pub async fn serve_directory(env: SimEnv, members: Vec<NodeId>, config: Config, judge: Arc<Judge>) {
    let me = env.id();
    judge.booted(me);
    let boot = if env.original_disk_unused() {
        Boot::Genesis(members.clone())
    } else {
        Boot::Join
    };
    if let Err(error) = directory::run(env, (members, boot), config, judge.clone()).await {
        tracing::warn!(%error, "directory replica stopped");
        judge.stopped(me);
    }
}

/// What the rebalancer counts as situations: the moves of one key, and
/// the moves that shipped an item (a held lock, an account with a value).
pub struct Watch<'a> {
    /// The key watched.
    pub key: &'a str,
    /// The situation counted when a move carries it.
    pub key_moved: &'static str,
    /// The situation counted when a move ships items.
    pub items_moved: &'static str,
}

/// Moves keys between `groups` (reached through `inbox`, which the
/// directory's client shares), through the directory on `directory`,
/// with `vnodes` ring points per unit of weight, until the operator's
/// budget is spent.
pub async fn run<Op: Clone + std::fmt::Debug, G: Groups>(
    env: &SimEnv,
    client: &mut Client<Op>,
    (inbox, mut groups): (Arc<Inbox<SimEnv>>, G),
    directory: &[NodeId],
    vnodes: u32,
    watch: Watch<'_>,
) {
    let mut views = LogClient::<SimEnv, Directory>::sharing(inbox, directory.to_vec());
    let mut rng = env.rng();
    let config = RebalanceConfig {
        step_timeout: STEP_TIMEOUT,
        // Half the incarnations send steps small enough that a move takes
        // several fences and installs, as a busy group's does.
        max_command_bytes: match rng.gen_bool(0.5) {
            true => rng.gen_range(SMALL_STEPS),
            false => usize::MAX,
        },
    };
    let ids = groups.ids();
    let founder = ids[0];
    while let Err(error) = assign_joining(&mut groups, founder, &config).await {
        tracing::info!(%error, "assigning again");
    }
    let spec = |epoch, groups| ViewSpec { epoch, groups, vnodes };
    let first = |current: Option<&ViewSpec>| current.is_none().then(|| spec(1, vec![(founder, 1)]));
    if rebalance_until_done(env, &mut views, &mut groups, first, &config, &watch).await > Some(1) {
        // A rebalance an earlier incarnation began, finished by this one.
        env.world().lock().count_situation("rebalance-resumed");
    }
    while client.next_op() {
        env.sleep(Duration::from_millis(rng.gen_range(150..600))).await;
        let mut weights: Vec<(GroupId, u32)> = ids
            .iter()
            .map(|&g| (g, rng.gen_range(0..=3)))
            .filter(|&(_, weight)| weight > 0)
            .collect();
        if weights.is_empty() {
            weights.push((ids[rng.gen_range(0..ids.len())], 1));
        }
        let next = |current: Option<&ViewSpec>| Some(spec(current.map_or(1, |c| c.epoch + 1), weights.clone()));
        rebalance_until_done(env, &mut views, &mut groups, next, &config, &watch).await;
    }
}

/// One rebalance ([`step`]), retried until it finishes: a rebalance in
/// progress is finished first, then `choose`'s. Returns the epoch
/// finished, if any.
async fn rebalance_until_done<G: Groups>(
    env: &SimEnv,
    views: &mut LogClient<SimEnv, Directory>,
    groups: &mut G,
    choose: impl Fn(Option<&ViewSpec>) -> Option<ViewSpec>,
    config: &RebalanceConfig,
    watch: &Watch<'_>,
) -> Option<u64> {
    loop {
        match step(views, groups, &choose, config).await {
            Ok(done) => {
                tracing::info!(?done, "rebalanced");
                let (epoch, moves) = done?;
                let mut world = env.world().lock();
                let watched = hash_key(watch.key.as_bytes());
                if moves.ranges.iter().any(|(_, _, r)| r.contains(watched)) {
                    world.count_situation(watch.key_moved);
                }
                if moves.items > 0 {
                    world.count_situation(watch.items_moved);
                }
                if moves.installs > moves.ranges.len() {
                    world.count_situation("move-in-pieces");
                }
                return Some(epoch);
            }
            Err(error) => tracing::info!(%error, "rebalancing again"),
        }
    }
}
