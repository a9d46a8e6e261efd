//! The lock service split into groups, with lock names moving between
//! them while the faults run (`lock-moves`): the lock groups the
//! [`rebalancer`](super::rebalancer) moves names between, and the
//! ground-truth checks that no two groups serve a name at once and that
//! tokens keep increasing across moves.
//!
//! Groups are the ring's nodes, numbered from 1: group 1 founds the
//! deployment serving every name. Clients know every group's servers; when one
//! answers `NotServed`, a [`Router`] reads the directory's views and
//! names the group to ask ([`reroute`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::Rng;
use ringfence::env::{Env, NodeId};
use ringfence::history::lock::{replay, AppliedEntry};
use ringfence::history::owners::{owner_overlap, Served};
use ringfence::history::Violation;
use ringfence::lock::rebalance::LockGroups;
use ringfence::lock::ShardedLockClient;
use ringfence::lock::{LockBug, LockCommand, LockMachine, Request, SessionId, ShardCommand, Token};
use ringfence::log::client::{Client as LogClient, Inbox};
use ringfence::log::Index;
use ringfence::shard::directory::Router;
use ringfence::shard::{GroupId, RangeSet};

use crate::env::SimEnv;
use crate::scenario::Client;
use crate::scenarios::rebalancer::{self, Watch};

/// Few points per group, so a weight change moves large ranges and the
/// scenario's lock moves often.
const VNODES: u32 = 4;

/// The group id of group index `g` (ring node ids start at 1).
pub fn group_id(g: usize) -> GroupId {
    g as GroupId + 1
}

/// Moves lock names between `groups` (each a list of servers) through
/// the directory on `directory` ([`rebalancer::run`]), watching lock
/// `watched`.
pub async fn rebalancer<Op: Clone + std::fmt::Debug>(
    env: &SimEnv,
    client: &mut Client<Op>,
    groups: &[Vec<NodeId>],
    directory: &[NodeId],
    watched: &str,
    bug: Option<LockBug>,
) {
    let inbox = Inbox::new(env.clone());
    let clients: BTreeMap<GroupId, LogClient<SimEnv, LockMachine>> = groups
        .iter()
        .enumerate()
        .map(|(g, servers)| (group_id(g), LogClient::sharing(inbox.clone(), servers.clone())))
        .collect();
    let groups = LockGroups::new(clients).with_bug(bug);
    let watch = Watch {
        key: watched,
        key_moved: "lock-moved",
        items_moved: "held-lock-moved",
    };
    rebalancer::run(env, client, (inbox, groups), directory, VNODES, watch).await;
}

/// The group (index, of `groups`) a client asks for lock `name` after
/// group `refused` answered `NotServed { epoch }`: the one the directory's
/// views name ([`Router`]), or the same one a moment later while the
/// name is moving.
pub async fn reroute(
    env: &SimEnv,
    router: &mut Router<SimEnv>,
    name: &str,
    refused: usize,
    epoch: u64,
    groups: usize,
) -> usize {
    match router.after_refusal(name.as_bytes(), group_id(refused), epoch).await {
        Some(g) => {
            env.world().lock().count_situation("routed-by-view");
            (g as usize - 1).min(groups - 1)
        }
        None => {
            env.sleep(Duration::from_millis(50)).await;
            refused
        }
    }
}

/// A lock user beside the scenario's: now and then takes lock `name`,
/// holds it briefly and releases it, through the library's one client
/// over every group ([`ShardedLockClient`]), which follows the name from
/// group to group. Its lock is free most of the time, so moves carry free
/// locks too, whose tokens only the floor keeps increasing.
pub async fn side_user(
    env: SimEnv,
    mut client: ShardedLockClient<SimEnv>,
    name: String,
    mut next_op: impl FnMut() -> bool,
) {
    let mut rng = env.rng();
    let mut granted_by = None;
    while next_op() {
        env.sleep(Duration::from_millis(rng.gen_range(50..300))).await;
        if let Ok(lease) = client.try_acquire(&name).await {
            if granted_by.is_some_and(|g| g != lease.group) {
                env.world().lock().count_situation("side-lock-followed");
            }
            granted_by = Some(lease.group);
            env.sleep(Duration::from_millis(rng.gen_range(10..80))).await;
            let _ = client.release(&lease).await;
        }
    }
}

/// `client-token` across groups: every grant of a lock, in whichever
/// group, carries a token above every earlier grant of it (by the real
/// time the first replica applied each). A lock moved in keeps the token
/// it was granted with: a move, not a grant.
pub fn check_tokens(groups: &[(GroupId, &BTreeMap<Index, AppliedEntry>)], max_sessions: usize) -> Vec<Violation> {
    let mut grants: BTreeMap<String, Vec<(Duration, Token, GroupId)>> = BTreeMap::new();
    for &(group, applied) in groups {
        let mut names: BTreeSet<String> = BTreeSet::new();
        let mut holders: BTreeMap<String, (SessionId, Token)> = BTreeMap::new();
        replay(applied, max_sessions, |_, entry, command, machine| {
            let moved_in = match command {
                LockCommand::Client {
                    request: Request::Acquire { lock, .. },
                    ..
                } => {
                    names.insert(lock.clone());
                    false
                }
                LockCommand::Shard(ShardCommand::Install { part, .. }) => {
                    names.extend(part.locks.iter().map(|m| m.name.clone()));
                    true
                }
                _ => false,
            };
            for name in &names {
                let now = machine.holder(name);
                if now == holders.get(name).copied() {
                    continue;
                }
                match now {
                    Some(held) => {
                        holders.insert(name.clone(), held);
                        if !moved_in {
                            grants.entry(name.clone()).or_default().push((entry.at, held.1, group));
                        }
                    }
                    None => {
                        holders.remove(name);
                    }
                }
            }
        });
    }
    let mut violations = Vec::new();
    for (name, mut grants) in grants {
        grants.sort();
        let mut top: Option<(Duration, Token, GroupId)> = None;
        for grant in grants {
            if let Some(before) = top.filter(|before| grant.1 <= before.1) {
                if violations.len() < 5 {
                    violations.push(Violation::new(
                        "client-token",
                        format!(
                            "lock {name:?} granted by group {} with token {} at {:.3}s, not above token {} granted by group {} at {:.3}s",
                            grant.2,
                            grant.1,
                            grant.0.as_secs_f64(),
                            before.1,
                            before.2,
                            before.0.as_secs_f64()
                        ),
                        vec![],
                    ));
                }
                continue;
            }
            top = Some(grant);
        }
    }
    violations
}

/// `owner-overlap`: no two groups serve lock name `name` at once. Each
/// group's applied log (by index, with the real time the first replica
/// applied each entry) is replayed through a shadow machine; the real
/// times during which it served the name must not overlap another's.
/// `founder` serves every name from the start; another group counts only
/// from its first shard command (before it, it is not part of the
/// deployment, and no client is sent to it).
pub fn check_owners(
    groups: &[(GroupId, &BTreeMap<Index, AppliedEntry>)],
    founder: GroupId,
    name: &str,
    max_sessions: usize,
) -> Vec<Violation> {
    // Per group: what it served after each entry that changed it, from
    // its first shard command on.
    let mut reports: Vec<Served> = Vec::new();
    for &(group, applied) in groups {
        let mut joined = group == founder;
        let mut last: Option<RangeSet> = None;
        replay(applied, max_sessions, |_, entry, command, machine| {
            joined |= matches!(command, LockCommand::Shard(_));
            let serving = machine.ownership().serving();
            if joined && last.as_ref() != Some(serving) {
                last = Some(serving.clone());
                reports.push(Served {
                    at: entry.at,
                    group,
                    ranges: serving.clone(),
                });
            }
        });
    }
    owner_overlap(&reports, founder, &[name.to_string()])
}
