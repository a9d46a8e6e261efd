//! An operator for scenarios whose servers run the replicated log: while
//! the faults run it changes the group's membership at random, one
//! single-server change at a time, as the log's rules allow
//! (`ringfence::log::membership`); after the heal it settles the group.
//!
//! It asks the leader what it knows (`Client::config_status`), then asks
//! for a change against the configuration the answer showed:
//!
//! 1. promotes a learner (refused until the learner has caught up);
//! 2. removes a voter the leader heard from in another incarnation than
//!    the configuration names: a node back with an empty disk, which
//!    counts in no quorum until it is added again as a new member;
//! 3. otherwise adds a server outside the group as a learner, or removes a
//!    voter (the leader among them), keeping three to five voters, or now
//!    and then hands the leadership to a voter.
//!
//! Settling does 1 and 2, and adds learners until there are three voters;
//! it is done once the leader has heard from every member and the last
//! change has committed. What it returns is the group every member of
//! which must catch up.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::seq::IteratorRandom;
use rand::Rng;
use ringfence::env::{Env, NodeId};
use ringfence::log::client::Client as LogClient;
use ringfence::log::membership::{Change, ConfigStatus};
use ringfence::log::{StateMachine, Term};

use super::judge::Judge;
use crate::scenario::Client;

/// Voters the operator keeps while the faults run: never fewer than three
/// (a group of two stops at one failure), never more than five.
const VOTERS: std::ops::RangeInclusive<usize> = 3..=5;
/// How long one request is retried.
const GIVE_UP: Duration = Duration::from_secs(2);

/// Changes the membership of the group on `servers` until the fault window
/// closes, from `env`: the operator's node as the group's clients see it
/// (a [`SimEnv`], or an envelope around one). Like automation that reconciles after a failover, it also
/// reacts to a new leader (as `judge` saw it elected) at once, half the
/// time, with a change sent straight to it: the moment a new leader has
/// not yet committed an entry of its term.
pub async fn run<E: Env, S: StateMachine, Op: Clone + std::fmt::Debug>(
    env: &E,
    client: &Client<Op>,
    servers: &[NodeId],
    judge: &Judge,
) {
    let mut rng = env.rng();
    let mut log = LogClient::<E, S>::new(env.clone(), servers.to_vec());
    let mut last: Option<ConfigStatus> = None;
    let mut leader = judge.last_leader();
    while client.window_open() {
        let pause = Duration::from_millis(rng.gen_range(50..=300));
        let elected = new_leader(env, judge, &mut leader, pause).await;
        if let (Some(node), Some(status)) = (elected, &last) {
            if rng.gen_bool(0.5) {
                // From what may be an old status: only changes that never
                // shrink the group below three voters.
                let grow = outside(status, servers).choose(&mut rng).map(Change::AddLearner);
                if let Some(change) = next_change(status, servers, false).or(grow) {
                    let mut direct = LogClient::<E, S>::new(env.clone(), vec![node]);
                    let result = direct.reconfigure(change, status.index, GIVE_UP).await;
                    tracing::info!(?change, to = node, ok = result.is_ok(), "operator, after an election");
                    continue;
                }
            }
        }
        let status = match log.config_status(GIVE_UP).await {
            Ok(status) => status,
            Err(error) => {
                tracing::debug!(%error, "operator: no status");
                continue;
            }
        };
        tracing::debug!(?status, "operator");
        let change = next_change(&status, servers, false).or_else(|| wander(&status, servers, &mut rng));
        let base = status.index;
        last = Some(status);
        if let Some(change) = change {
            let result = log.reconfigure(change, base, GIVE_UP).await;
            tracing::info!(?change, ok = result.is_ok(), "operator");
        }
    }
}

/// Failover automation beside the operator, from a client of its own:
/// when `judge` sees a new leader, it asks that leader at once to remove
/// the deposed one (keeping three voters), from the configuration it last
/// read, without waiting for whatever change the operator has in flight.
/// Two hands on one group: a change the deposed leader left in its log
/// and this one are decided under different configurations, which is
/// safe only because a leader takes a change once its own term has
/// committed (the bug in the first version of Ongaro's single-server
/// changes, `change-before-term-commits`).
pub async fn failover<E: Env, S: StateMachine, Op: Clone + std::fmt::Debug>(
    env: &E,
    client: &Client<Op>,
    servers: &[NodeId],
    judge: &Judge,
) {
    let mut rng = env.rng();
    let mut log = LogClient::<E, S>::new(env.clone(), servers.to_vec());
    let mut last: Option<ConfigStatus> = None;
    let mut leader = judge.last_leader();
    while client.window_open() {
        let deposed = leader.map(|(_, node)| node);
        let pause = Duration::from_millis(rng.gen_range(50..=300));
        let Some(node) = new_leader(env, judge, &mut leader, pause).await else {
            // Briefly: while the group has no leader, the next one must
            // not be missed.
            last = log.config_status(pause).await.ok().or(last);
            continue;
        };
        let Some((old, status)) = deposed.zip(last.as_ref()) else {
            continue;
        };
        let voters = &status.membership.voters;
        if old != node && voters.len() > *VOTERS.start() && voters.contains_key(&old) {
            let mut direct = LogClient::<E, S>::new(env.clone(), vec![node]);
            let result = direct.reconfigure(Change::Remove(old), status.index, GIVE_UP).await;
            tracing::info!(removed = old, to = node, ok = result.is_ok(), "failover automation");
        }
    }
}

/// Waits up to `pause` for a leader of a term after `seen`'s; returns it.
async fn new_leader(
    env: &impl Env,
    judge: &Judge,
    seen: &mut Option<(Term, NodeId)>,
    pause: Duration,
) -> Option<NodeId> {
    let until = env.now() + pause;
    while env.now() < until {
        let latest = judge.last_leader();
        if latest.map(|(term, _)| term) > seen.map(|(term, _)| term) {
            *seen = latest;
            return latest.map(|(_, node)| node);
        }
        env.sleep(Duration::from_millis(1)).await;
    }
    None
}

/// Brings the group to a settled membership (see the module docs) and
/// returns its members.
pub async fn settle<E: Env, S: StateMachine>(env: &E, servers: &[NodeId]) -> BTreeSet<NodeId> {
    let mut log = LogClient::<E, S>::new(env.clone(), servers.to_vec());
    loop {
        let Ok(status) = log.config_status(GIVE_UP).await else {
            continue;
        };
        if let Some(change) = next_change(&status, servers, true) {
            let result = log.reconfigure(change, status.index, GIVE_UP).await;
            tracing::info!(?change, ok = result.is_ok(), "operator settles");
            if result.is_err() {
                env.sleep(Duration::from_millis(50)).await;
            }
            continue;
        }
        let everyone_heard = status.peers.iter().all(|p| p.incarnation.is_some());
        if status.committed && everyone_heard {
            return status.membership.members().collect();
        }
        env.sleep(Duration::from_millis(50)).await;
    }
}

/// The change the rules call for, if any (steps 1 and 2, and when
/// `settling` a learner while there are fewer than three voters).
fn next_change(status: &ConfigStatus, servers: &[NodeId], settling: bool) -> Option<Change> {
    let group = &status.membership;
    if let Some(&learner) = group.learners.iter().next() {
        return Some(Change::Promote(learner));
    }
    let heard = |node: NodeId| status.peers.iter().find(|p| p.node == node).and_then(|p| p.incarnation);
    let stale = group
        .voters
        .iter()
        .find(|&(&node, &incarnation)| heard(node).is_some_and(|i| i != incarnation));
    if let Some((&node, _)) = stale {
        return Some(Change::Remove(node));
    }
    if settling && group.voters.len() < *VOTERS.start() {
        return outside(status, servers).next().map(Change::AddLearner);
    }
    None
}

/// A random change within [`VOTERS`], or none; now and then a leadership
/// handover to a random voter instead.
fn wander(status: &ConfigStatus, servers: &[NodeId], rng: &mut impl Rng) -> Option<Change> {
    if rng.gen_ratio(1, 6) {
        return status
            .membership
            .voters
            .keys()
            .copied()
            .choose(rng)
            .map(Change::TransferLeadership);
    }
    let voters = status.membership.voters.len();
    let add = (voters < *VOTERS.end())
        .then(|| outside(status, servers).choose(rng))
        .flatten();
    let remove = (voters > *VOTERS.start())
        .then(|| status.membership.voters.keys().copied().choose(rng))
        .flatten();
    match (add, remove, rng.gen_range(0..4)) {
        (_, _, 0) => None,
        (Some(node), _, 1) | (Some(node), None, _) => Some(Change::AddLearner(node)),
        (_, Some(node), _) => Some(Change::Remove(node)),
        (None, None, _) => None,
    }
}

/// Servers outside the group.
fn outside<'a>(status: &'a ConfigStatus, servers: &'a [NodeId]) -> impl Iterator<Item = NodeId> + 'a {
    servers
        .iter()
        .copied()
        .filter(|&node| !status.membership.contains(node))
}
