//! `ringfence group`: the groups of a sharded service — see the ring
//! view its directory holds, put a group in the ring, take one out, or
//! weigh them. Every change moves the keys whose owner changes, online
//! ([`ringfence::shard::rebalance::rebalance_to`]); one cut short (a
//! timeout, a crash of this process) is finished by running any group
//! command again.
//!
//! Two services are sharded this way: the lock service, whose groups are
//! the cluster file's lock groups (`lock` and `lock_groups` of each node),
//! and, with `--accounts`, the bank, whose groups are the nodes' shards
//! (named by their node's id), in a cluster with an account directory.
//! Either way the groups are hosted from the cluster's founding: a group
//! out of the ring runs and serves nothing. These commands act as an
//! operator: they read the cluster secret.

use std::time::Duration;

use clap::Subcommand;
use ringfence::real::cluster::{ShardOperator, GROUP_VNODES, SHARD_ID_BASE};
use ringfence::ring::RingView;
use ringfence::shard::directory::{DirectoryOutput, DirectoryQuery, ViewSpec, Views};
use ringfence::shard::rebalance::{Groups, RebalanceConfig};
use ringfence::shard::GroupId;

use crate::{parse_duration, ConfigArg};

#[derive(clap::Args, Debug)]
pub struct GroupArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// How long each step of a move (fence, read, install, drop) is
    /// retried before the command gives up; run it again to finish.
    #[arg(long, default_value = "10s", value_parser = parse_duration, global = true)]
    wait: Duration,
    /// Ring points per unit of weight in the new view (more points: a
    /// more even split and more, smaller moves).
    #[arg(long, default_value_t = GROUP_VNODES, value_parser = clap::value_parser!(u32).range(1..=4096), global = true)]
    vnodes: u32,
    /// Move the bank's accounts between the nodes' shards instead of lock
    /// names between lock groups: GROUP is then the id of a node holding a
    /// shard (a cluster founded with `ringfence cluster
    /// --movable-accounts`).
    #[arg(long, global = true)]
    accounts: bool,
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(Subcommand, Debug)]
enum GroupCommand {
    /// The ring view: each group's weight and share of the keys, and the
    /// view a rebalance in progress moves to.
    Status,
    /// Put group GROUP in the ring (or change its weight): it takes its
    /// share of the keys from the others.
    Add {
        group: GroupId,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        weight: u32,
    },
    /// Take group GROUP out of the ring: its keys move to the others.
    Remove { group: GroupId },
}

/// How the command speaks of one sharded service.
struct Service {
    /// What it shards ("names", "accounts").
    keys: &'static str,
    /// What a move ships ("held lock(s)", "account(s) with a balance").
    items: &'static str,
    /// Its groups' ids.
    groups: Vec<GroupId>,
    /// A group's id from what the operator types.
    id: fn(u32) -> GroupId,
    /// A group as the operator names it.
    name: fn(GroupId) -> String,
}

pub async fn run(args: GroupArgs) -> Result<(), String> {
    let config = args.config.load()?;
    let path = args.config.config.display();
    if args.accounts {
        if !config.movable_accounts() {
            return Err(format!(
                "the accounts of {path} do not move: found the cluster with an `account_directory` address on \
                 the nodes (`ringfence cluster --movable-accounts` does)"
            ));
        }
        let service = Service {
            keys: "accounts",
            items: "account(s) with a balance",
            groups: config.shards(),
            id: |node| SHARD_ID_BASE.saturating_add(node),
            name: |shard| format!("shard of node {}", shard.saturating_sub(SHARD_ID_BASE)),
        };
        let operator = config.account_operator().map_err(|e| e.to_string())?;
        return change(operator, &service, args).await;
    }
    if config.lock_groups().len() < 2 {
        return Err(format!(
            "the lock service of {path} has one group: give the nodes `lock_groups` addresses and a `directory` \
             when founding the cluster (`ringfence cluster --lock-groups N` does)"
        ));
    }
    let service = Service {
        keys: "names",
        items: "held lock(s)",
        groups: config.lock_groups().into_keys().collect(),
        id: |group| group,
        name: |group| format!("group {group}"),
    };
    let operator = config.shard_operator().map_err(|e| e.to_string())?;
    change(operator, &service, args).await
}

/// Runs the command on `service`, through `operator`.
async fn change<G: Groups>(mut operator: ShardOperator<G>, service: &Service, args: GroupArgs) -> Result<(), String> {
    let views = match operator.directory.read(DirectoryQuery::Views, args.wait).await {
        Ok(DirectoryOutput::Views(views)) => views,
        Ok(other) => return Err(format!("the directory answered {other:?}")),
        Err(e) => return Err(format!("the directory did not answer: {e}")),
    };
    let founder = operator.founder;
    let mut weights = newest(&views).map_or(vec![(founder, 1)], |spec| spec.groups.clone());
    match args.command {
        GroupCommand::Status => {
            print_views(&views, founder, service);
            return Ok(());
        }
        GroupCommand::Add { group, weight } => {
            let group = known(service, group)?;
            weights.retain(|&(g, _)| g != group);
            weights.push((group, weight));
        }
        GroupCommand::Remove { group } => {
            let group = known(service, group)?;
            weights.retain(|&(g, _)| g != group);
            if weights.is_empty() {
                return Err(format!(
                    "{} is the last in the ring: add another first",
                    (service.name)(group)
                ));
            }
        }
    }
    let view = ViewSpec {
        epoch: 0,
        groups: weights.clone(),
        vnodes: args.vnodes,
    };
    if let Err(e) = view.build() {
        return Err(format!("{e}: lower --weight or --vnodes"));
    }
    let rebalance = RebalanceConfig {
        step_timeout: args.wait,
        ..RebalanceConfig::default()
    };
    let (epoch, moves) = operator
        .rebalance_to(weights, args.vnodes, &rebalance)
        .await
        .map_err(|e| format!("{e} (run the command again to finish)"))?;
    let share: f64 = moves
        .ranges
        .iter()
        .flat_map(|(_, _, r)| r.ranges())
        .map(|r| r.fraction())
        .sum();
    say!(
        "epoch {epoch}: moved {:.1}% of the {} in {} range set(s), {} {} shipped",
        share * 100.0,
        service.keys,
        moves.ranges.len(),
        moves.items,
        service.items
    );
    Ok(())
}

/// The view a rebalance in progress moves to, else the current one.
fn newest(views: &Views) -> Option<&ViewSpec> {
    views.next.as_ref().or(views.current.as_ref())
}

/// The group the operator typed, if the service has it.
fn known(service: &Service, typed: u32) -> Result<GroupId, String> {
    let group = (service.id)(typed);
    match service.groups.contains(&group) {
        true => Ok(group),
        false => {
            let names: Vec<String> = service.groups.iter().map(|&g| (service.name)(g)).collect();
            Err(format!(
                "no {} in the cluster file (it has {})",
                (service.name)(group),
                names.join(", ")
            ))
        }
    }
}

fn print_views(views: &Views, founder: GroupId, service: &Service) {
    match &views.current {
        None => say!(
            "no ring view yet: {} serves all {}",
            (service.name)(founder),
            service.keys
        ),
        Some(spec) => print_view("current", spec, service),
    }
    if let Some(spec) = &views.next {
        print_view("moving to", spec, service);
        say!("a rebalance is in progress: any `ringfence group` change finishes it first");
    }
}

fn print_view(label: &str, spec: &ViewSpec, service: &Service) {
    say!(
        "{label}: epoch {} ({} points per unit of weight)",
        spec.epoch,
        spec.vnodes
    );
    let Ok(ring) = spec.build() else {
        say!("  (not a valid ring)");
        return;
    };
    for (group, weight) in &spec.groups {
        say!(
            "  {}: weight {weight}, {:.1}% of the {}",
            (service.name)(*group),
            share(&ring, *group) * 100.0,
            service.keys
        );
    }
}

/// The share of the hash space `group` owns in `ring`: each point owns
/// the hashes after the point before it, up to itself.
fn share(ring: &RingView, group: GroupId) -> f64 {
    let points: Vec<(u64, GroupId)> = ring.iter_points().collect();
    match points.as_slice() {
        [] => 0.0,
        [(_, owner)] => f64::from(u8::from(*owner == group)),
        [.., (last, _)] => {
            let mut before = *last;
            let mut owned = 0f64;
            for &(point, owner) in &points {
                if owner == group {
                    owned += point.wrapping_sub(before) as f64;
                }
                before = point;
            }
            owned / 18_446_744_073_709_551_616.0
        }
    }
}
