//! `ringfence group`: the groups of a sharded lock service — see the ring
//! view the directory holds, put a group in the ring, take one out, or
//! weigh them. Every change moves the names whose owner changes, online
//! ([`ringfence::shard::rebalance::rebalance_to`]); one cut short (a
//! timeout, a crash of this process) is finished by running any group
//! command again.
//!
//! The groups themselves are the cluster file's (`lock` and `lock_groups`
//! of each node), hosted from the cluster's founding: a group out of the
//! ring runs and serves nothing. These commands act as an operator: they
//! read the cluster secret.

use std::time::Duration;

use clap::Subcommand;
use ringfence::real::cluster::{ClusterConfig, FOUNDER_GROUP, GROUP_VNODES};
use ringfence::ring::RingView;
use ringfence::shard::directory::{DirectoryOutput, DirectoryQuery, ViewSpec, Views};
use ringfence::shard::rebalance::RebalanceConfig;
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
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(Subcommand, Debug)]
enum GroupCommand {
    /// The ring view: each group's weight and share of the lock names,
    /// and the view a rebalance in progress moves to.
    Status,
    /// Put group GROUP in the ring (or change its weight): it takes its
    /// share of the names from the others.
    Add {
        group: GroupId,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        weight: u32,
    },
    /// Take group GROUP out of the ring: its names move to the others.
    Remove { group: GroupId },
}

pub async fn run(args: GroupArgs) -> Result<(), String> {
    let config = args.config.load()?;
    if config.lock_groups().len() < 2 {
        return Err(format!(
            "the lock service of {} has one group: give the nodes `lock_groups` addresses and a `directory` \
             when founding the cluster (`ringfence cluster --lock-groups N` does)",
            args.config.config.display()
        ));
    }
    let mut operator = config.shard_operator().map_err(|e| e.to_string())?;
    let views = match operator.directory.read(DirectoryQuery::Views, args.wait).await {
        Ok(DirectoryOutput::Views(views)) => views,
        Ok(other) => return Err(format!("the directory answered {other:?}")),
        Err(e) => return Err(format!("the directory did not answer: {e}")),
    };
    let mut weights = newest(&views).map_or(vec![(FOUNDER_GROUP, 1)], |spec| spec.groups.clone());
    match args.command {
        GroupCommand::Status => {
            print_views(&views);
            return Ok(());
        }
        GroupCommand::Add { group, weight } => {
            known(&config, group)?;
            weights.retain(|&(g, _)| g != group);
            weights.push((group, weight));
        }
        GroupCommand::Remove { group } => {
            known(&config, group)?;
            weights.retain(|&(g, _)| g != group);
            if weights.is_empty() {
                return Err(format!("group {group} is the last in the ring: add another first"));
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
        "epoch {epoch}: moved {:.1}% of the names in {} range set(s), {} held lock(s) shipped",
        share * 100.0,
        moves.ranges.len(),
        moves.items
    );
    Ok(())
}

/// The view a rebalance in progress moves to, else the current one.
fn newest(views: &Views) -> Option<&ViewSpec> {
    views.next.as_ref().or(views.current.as_ref())
}

fn known(config: &ClusterConfig, group: GroupId) -> Result<(), String> {
    let groups = config.lock_groups();
    match groups.contains_key(&group) {
        true => Ok(()),
        false => Err(format!(
            "no lock group {group} in the cluster file (it has {})",
            groups.keys().map(|g| g.to_string()).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn print_views(views: &Views) {
    match &views.current {
        None => say!("no ring view yet: group {FOUNDER_GROUP} serves every name"),
        Some(spec) => print_view("current", spec),
    }
    if let Some(spec) = &views.next {
        print_view("moving to", spec);
        say!("a rebalance is in progress: any `ringfence group` change finishes it first");
    }
}

fn print_view(label: &str, spec: &ViewSpec) {
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
            "  group {group}: weight {weight}, {:.1}% of the names",
            share(&ring, *group) * 100.0
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
