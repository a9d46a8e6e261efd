//! `ringfence member`: the members of a running cluster's replicated groups
//! (the lock service and the transaction coordinators) — see them, add a
//! node, remove one, replace one whose data was lost. The procedure an
//! operator follows is in docs/real.md ("Replacing a machine").
//!
//! These commands act as an operator: they read the cluster secret (run
//! them where a node's files are) and connect under the operators' identity,
//! the only one the services take configuration changes from.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::Subcommand;
use ringfence::env::{Env, NodeId};
use ringfence::log::admin::{self, AdminError};
use ringfence::log::client::Client;
use ringfence::log::membership::ConfigStatus;
use ringfence::log::StateMachine;
use ringfence::real::cluster::{ClusterConfig, NodeEntry, SHARD_ID_BASE};
use ringfence::shard::directory::{DirectoryOutput, DirectoryQuery, ViewSpec};

use crate::{parse_duration, ConfigArg};

#[derive(clap::Args, Debug)]
pub struct MemberArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// How long a change may take, a new member catching up included; a
    /// change cut short is finished by running the command again.
    #[arg(long, default_value = "60s", value_parser = parse_duration, global = true)]
    wait: Duration,
    #[command(subcommand)]
    command: MemberCommand,
}

#[derive(Subcommand, Debug)]
enum MemberCommand {
    /// The members of the lock and coordinator groups, as their leaders
    /// see them.
    Status,
    /// Add node ID to the cluster file and make it a voter of both groups.
    /// Start it with `ringfence node --join --id ID` (before or while this
    /// waits for it to catch up).
    Add {
        #[arg(long)]
        id: NodeId,
        /// Where its lock service replica listens.
        #[arg(long)]
        lock: SocketAddr,
        /// Where its transaction coordinator replica listens.
        #[arg(long)]
        txn: SocketAddr,
        /// Where its shard listens, in a cluster whose accounts move
        /// (founded with `ringfence cluster --movable-accounts`): the shard
        /// serves no account until `ringfence group --accounts add ID`.
        #[arg(long)]
        shard: Option<SocketAddr>,
    },
    /// Remove node ID from both groups, then from the cluster file; stop
    /// its process afterwards. A node holding a shard only in a cluster
    /// whose accounts move, once its shard is out of the bank's ring
    /// (`ringfence group --accounts remove ID`).
    Remove {
        #[arg(long)]
        id: NodeId,
    },
    /// Replace node ID, whose data was lost, by a node started with
    /// `ringfence node --join` under the same id and addresses: the old
    /// voter is removed from both groups, the new one added once it has
    /// caught up. Only while the other members make a majority.
    Replace {
        #[arg(long)]
        id: NodeId,
    },
    /// Hand the leadership of both groups to node ID (before stopping the
    /// leader's machine for maintenance): each leader stops taking
    /// commands, brings ID up to date and tells it to campaign at once.
    Transfer {
        #[arg(long)]
        to: NodeId,
    },
}

/// What a command does to each group.
#[derive(Debug, Clone, Copy)]
enum Procedure {
    Add,
    Remove,
    Replace,
    Transfer,
}

pub async fn run(args: MemberArgs) -> Result<(), String> {
    let path = args.config.config.as_path();
    let mut config = args.config.load()?;
    match args.command {
        MemberCommand::Status => {
            let mut groups = config.operator().map_err(|e| e.to_string())?;
            print_status("lock", admin::status(&mut groups.lock, args.wait).await);
            print_status("coordinator", admin::status(&mut groups.coordinators, args.wait).await);
            Ok(())
        }
        MemberCommand::Add { id, lock, txn, shard } => {
            if shard.is_some() {
                may_hold_a_new_shard(&config, id)?;
            }
            match config.node(id) {
                Ok(entry) if entry.lock == lock && entry.txn == txn && entry.shard == shard => {}
                Ok(_) => return Err(format!("node {id} is in {} with other addresses", path.display())),
                Err(_) => {
                    config.nodes.push(NodeEntry {
                        id,
                        lock,
                        txn,
                        shard,
                        lock_groups: Vec::new(),
                        directory: None,
                        account_directory: None,
                    });
                    save(&config, path)?;
                    say!("added node {id} to {}", path.display());
                }
            }
            say!(
                "start it with `ringfence node --config {} --id {id} --join`; waiting for it to catch up",
                path.display()
            );
            change_both(&config, Procedure::Add, id, args.wait).await
        }
        MemberCommand::Remove { id } => {
            if let Ok(NodeEntry { shard: Some(_), .. }) = config.node(id) {
                holds_no_accounts(&config, id, args.wait).await?;
            }
            change_both(&config, Procedure::Remove, id, args.wait).await?;
            if config.node(id).is_ok() {
                config.nodes.retain(|n| n.id != id);
                save(&config, path)?;
                say!("removed node {id} from {}; stop its process", path.display());
            }
            Ok(())
        }
        MemberCommand::Replace { id } => {
            config.node(id).map_err(|e| e.to_string())?;
            say!(
                "start the new node with `ringfence node --config {} --id {id} --join` on an empty data \
                 directory; waiting for it to catch up",
                path.display()
            );
            change_both(&config, Procedure::Replace, id, args.wait).await
        }
        MemberCommand::Transfer { to } => {
            config.node(to).map_err(|e| e.to_string())?;
            change_both(&config, Procedure::Transfer, to, args.wait).await
        }
    }
}

/// Runs `procedure` for `node` on the lock group, then the coordinators.
/// Whether node `id` may hold a shard added to the running cluster: only
/// where accounts move (a fixed ring over the shards would place accounts
/// anew), and above the founding shard (the lowest), which serves every
/// account until the bank's first ring view.
fn may_hold_a_new_shard(config: &ClusterConfig, id: NodeId) -> Result<(), String> {
    if !config.movable_accounts() {
        return Err(format!(
            "the accounts of this cluster are placed by a fixed ring over its founding shards: a shard on \
             node {id} would move that ring under them (only a cluster founded with `ringfence cluster \
             --movable-accounts` takes new shards)"
        ));
    }
    let founder = config.shards()[0] - SHARD_ID_BASE;
    if id < founder {
        return Err(format!(
            "node {id} is below node {founder}, whose shard founded the bank: a new shard needs a higher id"
        ));
    }
    Ok(())
}

/// Whether node `id`'s shard may leave: its accounts live only there
/// unless they moved, so only from a cluster whose accounts move, once
/// no ring view of the bank (current, or a rebalance's next) gives it any.
async fn holds_no_accounts(config: &ClusterConfig, id: NodeId, wait: Duration) -> Result<(), String> {
    if !config.movable_accounts() {
        return Err(format!(
            "node {id} holds a shard, and its accounts live only there (this cluster's accounts do not \
             move); replace the node instead (`ringfence member replace`)"
        ));
    }
    let mut operator = config.account_operator().map_err(|e| e.to_string())?;
    let views = match operator.directory.read(DirectoryQuery::Views, wait).await {
        Ok(DirectoryOutput::Views(views)) => views,
        Ok(other) => return Err(format!("the account directory answered {other:?}")),
        Err(e) => return Err(format!("the account directory did not answer: {e}")),
    };
    let shard = SHARD_ID_BASE + id;
    let in_ring = |spec: &Option<ViewSpec>| spec.as_ref().is_some_and(|s| s.groups.iter().any(|&(g, _)| g == shard));
    // Before the first view, the founding shard serves every account.
    let founding = views.current.is_none() && config.shards()[0] == shard;
    if founding || in_ring(&views.current) || in_ring(&views.next) {
        return Err(format!(
            "node {id}'s shard still holds accounts: move them off first (`ringfence group --accounts remove {id}`)"
        ));
    }
    Ok(())
}

async fn change_both(config: &ClusterConfig, procedure: Procedure, node: NodeId, wait: Duration) -> Result<(), String> {
    let mut groups = config.operator().map_err(|e| e.to_string())?;
    let status = change(&mut groups.lock, procedure, node, wait).await;
    report("lock", procedure, node, status)?;
    let status = change(&mut groups.coordinators, procedure, node, wait).await;
    report("coordinator", procedure, node, status)
}

async fn change<E: Env, S: StateMachine>(
    client: &mut Client<E, S>,
    procedure: Procedure,
    node: NodeId,
    wait: Duration,
) -> Result<ConfigStatus, AdminError> {
    match procedure {
        Procedure::Add => admin::add_member(client, node, wait).await,
        Procedure::Remove => admin::remove_member(client, node, wait).await,
        Procedure::Replace => admin::replace_member(client, node, wait).await,
        Procedure::Transfer => admin::transfer_leadership(client, node, wait).await,
    }
}

fn report(
    group: &str,
    procedure: Procedure,
    node: NodeId,
    status: Result<ConfigStatus, AdminError>,
) -> Result<(), String> {
    let status = status.map_err(|e| format!("{group} group: {e}; run the command again to finish it"))?;
    let done = match procedure {
        Procedure::Add | Procedure::Replace => format!("node {node} votes"),
        Procedure::Remove => format!("node {node} is out"),
        Procedure::Transfer => format!("leadership handed to node {node}"),
    };
    say!("{group} group: {done}; voters {}", voters(&status));
    Ok(())
}

fn save(config: &ClusterConfig, path: &Path) -> Result<(), String> {
    config.validate()?;
    config
        .save(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn voters(status: &ConfigStatus) -> String {
    let names: Vec<String> = status.membership.voters.keys().map(|v| v.to_string()).collect();
    names.join(", ")
}

fn print_status<E: std::fmt::Display>(group: &str, status: Result<ConfigStatus, E>) {
    let status = match status {
        Ok(status) => status,
        Err(e) => {
            say!("{group} group: no leader answered ({e})");
            return;
        }
    };
    let state = if status.committed {
        "committed"
    } else {
        "not yet committed"
    };
    say!(
        "{group} group: configuration of log index {} ({state}); voters {}",
        status.index,
        voters(&status)
    );
    for (&node, incarnation) in &status.membership.voters {
        say!(
            "  node {node}: voter, incarnation {incarnation}{}",
            heard(&status, node)
        );
    }
    for &node in &status.membership.learners {
        say!("  node {node}: learner{}", heard(&status, node));
    }
}

/// What the leader last heard from `node` (nothing: it is the leader).
fn heard(status: &ConfigStatus, node: NodeId) -> String {
    match status.peers.iter().find(|p| p.node == node) {
        None => ", leader".to_string(),
        Some(peer) => match peer.incarnation {
            Some(incarnation) => format!(
                ", heard in incarnation {incarnation}, log matched to index {}",
                peer.matched
            ),
            None => ", not heard from".to_string(),
        },
    }
}
