//! Scenarios `txn` and `txn-replicated`: a bank on two-phase commit
//! (`ringfence::txn`), with the classic single coordinator ([`Bank<1>`]) or
//! a coordinator replicated on the log over 3 replicas ([`Bank<3>`]).
//!
//! Servers `1..=C` are the coordinator (replicas); the rest are shards, each
//! holding some of [`ACCOUNTS`] accounts (placed by the consistent-hashing ring,
//! `RingShardMap`). Every account starts with [`INITIAL`]. Clients run transfers
//! (read two balances, write both, commit), audits (read every account in
//! one transaction, commit) and register transactions ([`registers`]: read
//! one register and blindly write another, or read both). After the heal
//! the probe audits until one commits: it has to wait out every
//! transaction still holding locks, so its success also shows that every
//! transaction got decided.
//!
//! Servers report what they did ([`TxnEvent`]: votes, applied decisions,
//! announced decisions) into this run's instance; [`ringfence::history::bank::check`] judges
//! those observations together with the history:
//!
//! | invariant | meaning |
//! |---|---|
//! | `commit-without-yes-vote` | a committed transaction had a participant that never voted yes, or a shard was told to commit a transaction it holds no prepare record for |
//! | `decision-changed` | the coordinator announced both commit and abort for one transaction |
//! | `atomicity` | a transaction committed at one shard and aborted at another that had voted yes (TLA+ TCConsistent over prepared shards; an unprepared shard may abort alone) |
//! | `acked-commit-lost` | a commit the client saw was not applied at every participant by the end |
//! | `final-state` | the probe's balances differ from the initial ones plus every committed transfer |
//! | `audit-total` | an audit saw a total other than the invariant sum |
//! | `aborted-read` | a read returned a value that only uncommitted transactions wrote |
//! | `serializable` | the register transactions' dependency graph has a cycle (G0, G1c, G-single, G2) or a read of an aborted or intermediate write (G1a, G1b) |
//! | `strict-serializable` | a cycle that needs real-time order (a stale read) |
//!
//! Liveness: the probe must commit an audit within its `Spec::liveness_bound` (5 s)
//! of the heal. In classic mode that *includes* the time for a coordinator
//! that was down at the heal to restart: classic 2PC blocks prepared shards
//! while the coordinator is down, so the bound only holds because the heal
//! restarts it. The replicated mode needs no restart — any majority of its
//! replicas decides (`tests/txn_sim.rs` shows both while a coordinator
//! replica is down).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use ringfence::env::{codec, Env, NodeId};
use ringfence::history::bank::register_key;
use ringfence::history::owners::{owner_overlap, Served};
use ringfence::history::{bank, History, Violation};
use ringfence::log::client::Inbox;
use ringfence::log::membership::{Boot, OPERATOR_IDS};
use ringfence::log::LogBug;
use ringfence::log::{Wire, WireOf};
use ringfence::txn::client::{ClientConfig, Txn, TxnClient, TxnError};
use ringfence::txn::coordinator::CoordinatorConfig;
use ringfence::txn::participant::ParticipantConfig;
use ringfence::txn::placement::{DirectoryRouting, RingShardMap};
use ringfence::txn::rebalance::ShardGroups;
use ringfence::txn::replicated::{Command, CoordMachine, ReplicatedConfig};
use ringfence::txn::shell::{run_coordinator, run_participant, run_replicated_coordinator, CoordLogEnv, TxnObserver};
use ringfence::txn::{AbortReason, CoordMsg, Decision, Msg, Outcome, ShardMsg, TxnBug, TxnEvent, TxnId};

use ringfence::txn::bank::{account_key, decode_balance, encode_balance};

use super::log::REMOVED_STILL_VOTES;
use super::rebalancer::{self, Watch};
use super::{operator, rogue};

pub mod registers;
use crate::env::SimEnv;
use crate::plan::FaultKind;
use crate::scenario::{client_ids, Bug, Client, Params, Planted, Scenario, Spec, Workload};
use crate::scenarios::judge::Judge;

/// Number of accounts.
pub const ACCOUNTS: u32 = 6;
pub use ringfence::txn::bank::INITIAL;
/// The classic coordinator's node id (the first replica in replicated
/// mode); shards are the servers after the coordinators.
pub const COORDINATOR: NodeId = 1;

pub use ringfence::history::bank::BankOp;

pub const DECISION_BEFORE_SYNC: Bug = Bug {
    name: "decision-before-sync",
    about: "the coordinator sends a commit decision before its record is synced (it syncs every 250 ms)",
    caught_by: &["decision-changed"],
    planted: Planted::Txn(TxnBug::DecisionBeforeSync),
};
pub const VOTE_WITHOUT_SYNCED_PREPARE: Bug = Bug {
    name: "vote-without-synced-prepare",
    about: "a shard votes yes before its prepare record is synced (it syncs every 250 ms)",
    caught_by: &["commit-without-yes-vote"],
    planted: Planted::Txn(TxnBug::VoteWithoutSync),
};
pub const PARTICIPANT_ABORTS_ALONE: Bug = Bug {
    name: "participant-aborts-alone",
    about: "a shard that voted yes aborts on its own after 300 ms without a decision",
    caught_by: &["atomicity"],
    planted: Planted::Txn(TxnBug::AbortAlone),
};
pub const DECIDE_FROM_ANYONE: Bug = Bug {
    name: "decide-from-anyone",
    about: "a shard accepts prepares and decisions from any sender, not only from the coordinator",
    caught_by: &["commit-without-yes-vote"],
    planted: Planted::Txn(TxnBug::DecideFromAnyone),
};
pub const BLIND_WRITE_IGNORES_READERS: Bug = Bug {
    name: "blind-write-ignores-readers",
    about: "a shard grants a write of a key the transaction has not read while other transactions hold it shared (write skew)",
    caught_by: &["serializable"],
    planted: Planted::Txn(TxnBug::BlindWriteIgnoresReaders),
};
pub const RECOVERY_PRESUMES_COMMIT: Bug = Bug {
    name: "recovery-presumes-commit",
    about: "a restarted coordinator answers queries about transactions it does not know with commit",
    caught_by: &["commit-without-yes-vote"],
    planted: Planted::Txn(TxnBug::RecoveryPresumesCommit),
};

pub const SEND_BEFORE_COMMIT: Bug = Bug {
    name: "send-before-commit",
    about: "the coordinator leader acts on entries in its own log as if committed: prepares and sends decisions before a majority stored them",
    caught_by: &["decision-changed"],
    planted: Planted::Txn(TxnBug::SendBeforeCommit),
};
pub const REPLICA_PRESUMES_ABORT: Bug = Bug {
    name: "replica-presumes-abort",
    about: "a coordinator replica answers a query about a transaction it has no applied decision for with abort, without logging it",
    caught_by: &["decision-changed"],
    planted: Planted::Txn(TxnBug::ReplicaPresumesAbort),
};
pub const IGNORE_INHERITED: Bug = Bug {
    name: "ignore-inherited",
    about: "a new coordinator leader drives only transactions started in its own term, not those it inherited",
    caught_by: &["liveness"],
    planted: Planted::Txn(TxnBug::IgnoreInherited),
};
pub const SHIP_BEFORE_DRAINED: Bug = Bug {
    name: "ship-before-drained",
    about: "a shard ships the accounts of a fenced range while a prepared transaction still holds them, whose commit then lands where they no longer live",
    caught_by: &["final-state"],
    planted: Planted::Txn(TxnBug::ShipBeforeDrained),
};
pub const INSTALL_BEFORE_FENCE: Bug = Bug {
    name: "install-before-fence",
    about: "the rebalancer has the target shard serve moving accounts (installed empty) before the source fences them",
    caught_by: &["owner-overlap"],
    planted: Planted::Txn(TxnBug::InstallBeforeFence),
};
pub const SERVE_AFTER_FENCE: Bug = Bug {
    name: "serve-after-fence",
    about: "the source shard keeps taking operations on fenced accounts until it drops them, so writes committed after their part was read are left behind",
    caught_by: &["core-check"],
    planted: Planted::Txn(TxnBug::ServeAfterFence),
};
pub const FORGET_PRESUMES_ABORT: Bug = Bug {
    name: "forget-presumes-abort",
    about:
        "a coordinator replica answers questions about a forgotten transaction with abort, though it may have committed",
    caught_by: &["decision-changed"],
    planted: Planted::Txn(TxnBug::ForgetPresumesAbort),
};

/// The bank scenario with `C` coordinator replicas (1: classic 2PC; 3: the
/// coordinator replicated on the log) and `LOAD` times the clients. One
/// instance per run; it collects the servers' observations.
///
/// Under load (`LOAD` > 1, replicated only) the coordinator keeps
/// [`LOAD_RETAIN_FINISHED`] finished transactions and compacts its log every
/// [`LOAD_SNAPSHOT_EVERY`] entries, so that a run forgets under pressure
/// and its replicas snapshot, install snapshots and restart from them.
pub struct Bank<const C: u32, const LOAD: u32 = 1, const CHANGES: bool = false, const MOVES: bool = false> {
    /// The run's planted bug if it is the transaction protocol's (each
    /// role acts only on its own).
    bug: Option<TxnBug>,
    /// The run's planted bug if it is the coordinators' log's.
    log_bug: Option<LogBug>,
    /// The coordinator replicas that found the group: all, or three with
    /// `CHANGES`.
    founders: Vec<NodeId>,
    /// The group the operator settled after the heal (with `CHANGES`),
    /// whose every member must catch up.
    settled: Mutex<Option<BTreeSet<NodeId>>>,
    /// Where each account lives, unless accounts move (`MOVES`): then each
    /// client routes by the directory's views ([`DirectoryRouting`]).
    placement: Arc<RingShardMap>,
    /// Server count: with `MOVES`, the last three host the directory.
    servers: u32,
    /// The directory's log (with `MOVES`).
    directory_judge: Arc<Judge>,
    /// What each shard served after each durable move step (with
    /// `MOVES`): the ground truth of `owner-overlap`.
    served: Mutex<Vec<Served>>,
    probe_client: u32,
    events: Mutex<Vec<(NodeId, TxnEvent)>>,
    /// Transactions whose commit the clients saw succeed or not answer: the
    /// probe asks the coordinator for each one's outcome again at the end.
    to_recheck: Mutex<Vec<TxnId>>,
    /// The replicated coordinator's log: its safety and its replicas'
    /// catch-up.
    judge: Arc<Judge>,
    /// Transfers whose commit a client has sent and not heard back on,
    /// with the shards each touched: what a rogue replica, or a rogue shard
    /// outside one, votes on ([`Bank::rogue`]).
    committing: Mutex<BTreeMap<TxnId, Vec<NodeId>>>,
}

impl<const C: u32, const LOAD: u32, const CHANGES: bool, const MOVES: bool> Bank<C, LOAD, CHANGES, MOVES> {
    /// Collects what `env`'s node reports; the replicated coordinator's
    /// forgetting and snapshots are counted as situations of the run.
    fn observer(self: &Arc<Self>, env: &SimEnv) -> TxnObserver {
        let me = self.clone();
        let world = env.world().clone();
        Arc::new(move |node, _now, event: &TxnEvent| {
            if let TxnEvent::Serving { ranges } = event {
                me.served.lock().unwrap_or_else(|e| e.into_inner()).push(Served {
                    at: crate::world::elapsed(),
                    group: node,
                    ranges: ranges.clone(),
                });
            }
            let mut events = me.events.lock().unwrap_or_else(|e| e.into_inner());
            let situation = match event {
                TxnEvent::Recovered { txn, .. } if !events.iter().any(|(_, e)| announced(e, *txn)) => {
                    Some(RECOVERED_UNANNOUNCED)
                }
                TxnEvent::Forgot { .. } => Some(FORGOT),
                TxnEvent::Snapshot { installed: false, .. } => Some(COMPACTED),
                TxnEvent::Snapshot { installed: true, .. } => Some(INSTALLED_SNAPSHOT),
                _ => None,
            };
            events.push((node, event.clone()));
            drop(events);
            if let Some(situation) = situation {
                world.lock().count_situation(situation);
            }
        })
    }

    /// Commits `txn`, listed in `committing` while the answer is awaited
    /// (a client that crashes meanwhile leaves it listed: a vote on a
    /// finished transaction is as foreign).
    async fn commit(&self, txc: &mut TxnClient<SimEnv>, txn: Txn) -> Result<Outcome, TxnError> {
        let id = txn.id;
        self.committing().insert(id, txn.shards());
        let result = txc.commit(txn).await;
        self.committing().remove(&id);
        result
    }

    fn committing(&self) -> std::sync::MutexGuard<'_, BTreeMap<TxnId, Vec<NodeId>>> {
        self.committing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A transfer being committed.
    fn live_transfer(&self, rng: &mut ChaCha8Rng) -> Option<TxnId> {
        let live: Vec<TxnId> = self.committing().keys().copied().collect();
        live.choose(rng).copied()
    }

    /// A transfer being committed that shard `shard` takes no part in.
    fn foreign_transfer(&self, rng: &mut ChaCha8Rng, shard: NodeId) -> Option<TxnId> {
        let foreign: Vec<TxnId> = self
            .committing()
            .iter()
            .filter(|(_, shards)| !shards.contains(&shard))
            .map(|(&txn, _)| txn)
            .collect();
        foreign.choose(rng).copied()
    }

    fn recheck(&self, txn: TxnId) {
        self.to_recheck.lock().unwrap_or_else(|e| e.into_inner()).push(txn);
    }

    /// The shards: every server after the coordinators, but the
    /// directory's.
    fn shards(&self) -> Vec<NodeId> {
        (COORDINATOR + C..=self.servers - 3 * MOVES as u32).collect()
    }

    /// The directory's servers (with `MOVES`): the last three.
    fn directory_servers(&self) -> Vec<NodeId> {
        match MOVES {
            true => (self.servers - 2..=self.servers).collect(),
            false => vec![],
        }
    }

    /// A client of the bank; with `MOVES`, it routes by the directory's
    /// views.
    fn txn_client(&self, env: SimEnv) -> TxnClient<SimEnv> {
        let config = if C == 1 {
            ClientConfig::default()
        } else {
            // Begin waits out an election (up to 300 ms, plus a retry).
            ClientConfig {
                op_attempts: 8,
                ..ClientConfig::default()
            }
        };
        match MOVES {
            true => {
                let routing = DirectoryRouting::new(self.shards(), self.directory_servers());
                TxnClient::routed(env, coordinators(C), routing, config)
            }
            false => TxnClient::new(env, coordinators(C), self.placement.clone(), config),
        }
    }

    /// Reads the directory's views if a shard refused a key since they
    /// were last read (between transactions: the bank client and the
    /// directory's share the node's messages).
    async fn reroute(&self, env: &SimEnv, txc: &TxnClient<SimEnv>) {
        if txc.refresh_routing().await {
            env.world().lock().count_situation(ROUTED_BY_VIEW);
        }
    }

    /// Moves accounts between the shards until the operator's budget is
    /// spent ([`rebalancer::run`]): few ring points per shard, so a weight
    /// change moves large ranges and accounts move often.
    async fn rebalancer(&self, env: &SimEnv, client: &mut Client<BankOp>) {
        let inbox = Inbox::new(env.clone());
        let groups = ShardGroups::new(inbox.clone(), self.shards()).with_bug(self.bug);
        let watch = Watch {
            key: &account_key(0),
            key_moved: "account-0-moved",
            items_moved: ACCOUNTS_MOVED,
        };
        rebalancer::run(env, client, (inbox, groups), &self.directory_servers(), 4, watch).await;
    }
}

/// A coordinator-log message from outside the group: one of the commands
/// only the group's own leader may propose (a commit without the votes, an
/// abort, forgetting everything), sent as a client would, or a Raft
/// message from a node that is not a member. Transaction ids are drawn
/// where the replicated coordinator issues them (term in the high half).
fn forged_log_message(rng: &mut ChaCha8Rng, to: NodeId) -> Result<Vec<u8>, codec::CodecError> {
    let txn = rng.gen_range(1..=4u64) << 32 | rng.gen_range(1..=64u64);
    let command = match rng.gen_range(0..4) {
        0 => Command::Commit { txn, votes: vec![] },
        1 => Command::Abort {
            txn,
            reason: AbortReason::PrepareTimeout,
        },
        2 => Command::Forget { below: u64::MAX },
        _ => Command::Start {
            txn,
            client: to,
            participants: vec![(to, 1)],
        },
    };
    let wire: WireOf<CoordMachine> = if rng.gen_bool(0.8) {
        Wire::Command {
            client: rng.gen(),
            seq: rng.gen_range(1..=8),
            command,
        }
    } else {
        Wire::Raft(rogue::raft_message(rng, 0))
    };
    codec::encode(&wire)
}

fn coordinators(c: u32) -> Vec<NodeId> {
    (COORDINATOR..COORDINATOR + c).collect()
}

/// Runs one transfer; records it in the history.
async fn transfer<const C: u32, const LOAD: u32, const CHANGES: bool, const MOVES: bool>(
    bank: &Bank<C, LOAD, CHANGES, MOVES>,
    txc: &mut TxnClient<SimEnv>,
    client: &Client<BankOp>,
    from: u32,
    to: u32,
    amount: i64,
) {
    let mut op = BankOp::Transfer {
        from,
        to,
        amount,
        txn: None,
        reads: vec![],
        writes: vec![],
        reason: None,
    };
    client.invoke(op.clone());
    let BankOp::Transfer {
        txn: op_txn,
        reads,
        writes,
        reason,
        ..
    } = &mut op
    else {
        unreachable!()
    };
    let result: Result<Outcome, TxnError> = async {
        let mut txn = txc.begin().await?;
        *op_txn = Some(txn.id);
        let a = decode_balance(txc.get(&mut txn, &account_key(from)).await?);
        reads.push((from, a));
        let b = decode_balance(txc.get(&mut txn, &account_key(to)).await?);
        reads.push((to, b));
        if a < amount {
            txc.abort(txn).await;
            return Ok(Outcome::Aborted(ringfence::txn::AbortReason::ClientAbort));
        }
        txc.put(&mut txn, &account_key(from), encode_balance(a - amount))
            .await?;
        txc.put(&mut txn, &account_key(to), encode_balance(b + amount)).await?;
        writes.extend([(from, a - amount), (to, b + amount)]);
        // A crash from here on leaves a transfer that may commit.
        client.progress(BankOp::Transfer {
            from,
            to,
            amount,
            txn: Some(txn.id),
            reads: reads.clone(),
            writes: writes.clone(),
            reason: None,
        });
        bank.commit(txc, txn).await
    }
    .await;
    if matches!(result, Ok(Outcome::Committed))
        || !writes.is_empty() && matches!(result, Err(TxnError::Unavailable { .. } | TxnError::Forgotten { .. }))
    {
        bank.recheck(op_txn.expect("begun"));
    }
    match result {
        Ok(Outcome::Committed) => client.ok(op),
        Ok(Outcome::Aborted(r)) | Err(TxnError::Aborted(r)) => {
            *reason = Some(r.to_string());
            client.fail(op)
        }
        // Before commit, an unanswered request abandons the transaction;
        // during commit the outcome is unknown.
        Err(TxnError::Unavailable { node }) => {
            *reason = Some(format!("node {node} did not answer"));
            if writes.is_empty() {
                client.fail(op)
            } else {
                client.info(op)
            }
        }
        // Only commit hears this, and then the outcome is unknown.
        Err(e @ TxnError::Forgotten { .. }) => {
            *reason = Some(e.to_string());
            client.info(op)
        }
    };
}

/// Runs one audit; `true` if it committed.
async fn audit(txc: &mut TxnClient<SimEnv>, client: &Client<BankOp>) -> bool {
    client.invoke(BankOp::Audit {
        txn: None,
        balances: None,
        reason: None,
    });
    let mut id = None;
    let result: Result<(Outcome, Vec<i64>), TxnError> = async {
        let mut txn = txc.begin().await?;
        id = Some(txn.id);
        let mut balances = Vec::new();
        for account in 0..ACCOUNTS {
            balances.push(decode_balance(txc.get(&mut txn, &account_key(account)).await?));
        }
        Ok((txc.commit(txn).await?, balances))
    }
    .await;
    match result {
        Ok((Outcome::Committed, balances)) => {
            client.ok(BankOp::Audit {
                txn: id,
                balances: Some(balances),
                reason: None,
            });
            true
        }
        Ok((Outcome::Aborted(r), _)) | Err(TxnError::Aborted(r)) => {
            client.fail(BankOp::Audit {
                txn: id,
                balances: None,
                reason: Some(r.to_string()),
            });
            false
        }
        // A read-only transaction changes nothing: unknown is as good as failed.
        Err(e @ (TxnError::Unavailable { .. } | TxnError::Forgotten { .. })) => {
            client.fail(BankOp::Audit {
                txn: id,
                balances: None,
                reason: Some(e.to_string()),
            });
            false
        }
    }
}

/// Situations (counted per run): a coordinator replica applied a `Forget`,
/// compacted its log, installed its leader's snapshot.
pub const FORGOT: &str = "coordinator-forgot";
pub const COMPACTED: &str = "coordinator-compacted";
pub const INSTALLED_SNAPSHOT: &str = "coordinator-installed-snapshot";
/// A restarted classic coordinator found a commit in its log that no
/// incarnation had announced (a crash during the record's sync).
pub const RECOVERED_UNANNOUNCED: &str = "coordinator-recovered-unannounced-commit";

fn announced(event: &TxnEvent, txn: TxnId) -> bool {
    matches!(event, TxnEvent::Announced { txn: t, .. } | TxnEvent::Recovered { txn: t, .. } if *t == txn)
}

/// A bank client read the directory's views after a shard refused an
/// account that moved.
pub const ROUTED_BY_VIEW: &str = "routed-by-view";
/// A move shipped accounts with values (`MOVES`).
pub const ACCOUNTS_MOVED: &str = "accounts-moved";

/// Finished transactions the replicated coordinator keeps under load.
pub const LOAD_RETAIN_FINISHED: usize = 16;
/// Log entries between the replicated coordinator's snapshots under load.
pub const LOAD_SNAPSHOT_EVERY: u64 = 64;

impl<const C: u32, const LOAD: u32, const CHANGES: bool, const MOVES: bool> Bank<C, LOAD, CHANGES, MOVES> {
    /// The scenario's name and description, by mode.
    const NAME_ABOUT: (&'static str, &'static str) = match (C, LOAD, CHANGES) {
        (_, _, true) if MOVES => ("txn-members-moves", "accounts moving between 3 shards while the replicated coordinator's members change under them (5 replicas, 3 founders, a replica may lose its disk): two operators, one of each kind, on one bank"),
        (1, _, _) if MOVES => ("txn-moves", "bank on classic two-phase commit over 3 shards while an operator moves accounts between them by ring changes (a directory of 3 servers holds the views): atomic, durable, conserved across moves"),
        _ if MOVES => ("txn-replicated-moves", "txn-moves with the coordinator replicated on the log (3 replicas): a drain never waits for a coordinator to restart"),
        (_, _, true) => ("txn-replicated-members", "txn-replicated over 5 coordinator replicas, 3 of which found the group, while an operator adds, promotes, removes and replaces them and a replica may lose its disk: atomic, durable, conserved, every final member caught up"),
        (1, _, _) => ("txn", "bank on classic two-phase commit: transfers and audits over 3 shards + 1 coordinator; atomic, durable, conserved"),
        (_, 1, _) => ("txn-replicated", "bank on two-phase commit with the coordinator replicated on the log (3 replicas) over 3 shards; no single crash blocks"),
        _ => ("txn-replicated-load", "txn-replicated with 4x the clients, a small retained window and frequent log snapshots: forgetting and compaction under load"),
    };
}

impl<const C: u32, const LOAD: u32, const CHANGES: bool, const MOVES: bool> Scenario for Bank<C, LOAD, CHANGES, MOVES> {
    type Op = BankOp;

    const SPEC: Spec = Spec {
        name: Self::NAME_ABOUT.0,
        about: Self::NAME_ABOUT.1,
        bugs: if MOVES && CHANGES {
            // Each is swept where it is caught alone: txn-moves and
            // txn-replicated-members.
            &[]
        } else if MOVES {
            &[SHIP_BEFORE_DRAINED, INSTALL_BEFORE_FENCE, SERVE_AFTER_FENCE]
        } else if CHANGES {
            &[REMOVED_STILL_VOTES]
        } else if LOAD > 1 {
            &[]
        } else if C == 1 {
            &[
                DECISION_BEFORE_SYNC,
                VOTE_WITHOUT_SYNCED_PREPARE,
                PARTICIPANT_ABORTS_ALONE,
                RECOVERY_PRESUMES_COMMIT,
                DECIDE_FROM_ANYONE,
                BLIND_WRITE_IGNORES_READERS,
            ]
        } else {
            &[
                SEND_BEFORE_COMMIT,
                REPLICA_PRESUMES_ABORT,
                IGNORE_INHERITED,
                FORGET_PRESUMES_ABORT,
            ]
        },
        servers: C + 3 + 3 * MOVES as u32,
        min_servers: C + 1 + 3 * MOVES as u32,
        // Classic runs get more operations: a quarter of them are register
        // transactions, and its planted bugs need commits to go wrong.
        // With `CHANGES`, one more client: the operator.
        workload: Workload {
            clients: 4 * LOAD + CHANGES as u32 + MOVES as u32,
            ops: if C == 1 { 40 } else { 30 },
        },
        fault_window: Duration::from_secs(5),
        // Coordinator restart at the heal (classic) or an election
        // (replicated, at most 300 ms plus a lost vote round), a query round
        // (200 ms) for prepared shards, a new leader's prepare timeout (1 s)
        // for inherited transactions, the active-transaction timeout (1 s,
        // stretched by clock drift) for abandoned ones, and the probe's own
        // retries.
        // With `CHANGES`, the operator settles the membership first.
        liveness_bound: Duration::from_secs(if CHANGES { 10 } else { 5 }),
        // The replicated mode's `send-before-commit` needs a leader cut off
        // from the other replicas while still reaching shards and clients for
        // longer than an election: 19 of seeds 0..1500, the third at seed 475
        // (`sweep -s txn-replicated --bug send-before-commit --seeds 0..1500`;
        // since each core ticks at its own deadline instead of every 50 ms).
        // The classic mode is cheap: 250 seeds
        // include runs where a power loss restarts a shard holding prepared
        // transactions while its coordinator is still down (a shard that
        // recovered them without their locks was found at seeds 77, 204 and
        // 234). Under load, fewer: each run is several times longer.
        default_seeds: match (C, LOAD, CHANGES) {
            (_, _, true) if MOVES => 50,
            _ if MOVES => 100,
            (_, _, true) => 200,
            (1, _, _) => 250,
            (_, 1, _) => 500,
            _ => 10,
        },
        // Under load, a large enough sweep must see the coordinator forget and
        // compact.
        situations: if LOAD > 1 {
            &[FORGOT, COMPACTED]
        } else if MOVES {
            &[ACCOUNTS_MOVED, ROUTED_BY_VIEW]
        } else {
            &[]
        },
        aiming: None,
    };

    /// With `CHANGES`, the last client is the membership operator; with
    /// `MOVES`, the one before it (or the last) the rebalancer: both in
    /// the operators' principal
    /// ([`ringfence::log::membership::OPERATOR_IDS`]), the only one the
    /// coordinators take configuration changes and shards move steps from.
    fn client_ids(clients: u32) -> Vec<NodeId> {
        let mut ids = client_ids(clients);
        let operators = usize::from(CHANGES) + usize::from(MOVES);
        let first = ids.len().saturating_sub(operators);
        for id in &mut ids[first..] {
            *id |= OPERATOR_IDS.start;
        }
        ids
    }

    /// The membership operator stays up: it settles the group after the
    /// heal. The rebalancer may crash: its next incarnation finishes the
    /// move the directory says is in progress.
    fn crashable_clients(clients: &[NodeId]) -> Vec<NodeId> {
        let stays_up = clients.last().copied().filter(|_| CHANGES);
        clients.iter().copied().filter(|&id| Some(id) != stays_up).collect()
    }

    /// The coordinator replicas: a shard's disk is its accounts, which
    /// nothing replicates.
    fn replaceable_servers(servers: &[NodeId]) -> Vec<NodeId> {
        servers
            .iter()
            .copied()
            .filter(|id| coordinators(C).contains(id))
            .collect()
    }
    /// The default kinds, and hostile messages from members; with
    /// `CHANGES`, a lost disk too.
    /// A failed write or fsync stops a role and a supervisor restarts it
    /// (every role recovers from its log); the kinds that damage synced
    /// data would leave an unreplicated shard down for good.
    fn fault_kinds() -> Vec<FaultKind> {
        let replacement = FaultKind::REPLACEMENT.into_iter().filter(|_| CHANGES);
        FaultKind::ALL
            .into_iter()
            .chain(FaultKind::ADVERSARIAL)
            .chain([FaultKind::DiskError])
            .chain(replacement)
            .collect()
    }

    /// What a member may not say: a coordinator replica, or a shard
    /// outside it, voting yes on a live transfer, a shard forging prepares
    /// and decisions to another shard, or work and aborts
    /// in some client's transaction, and (replicated
    /// mode) absurd Raft messages between coordinator replicas
    /// ([`rogue`]), and the coordinators' own log commands sent to them
    /// from outside the group. A coordinator may decide, so nothing is
    /// forged in its name to shards; a participant's vote is its own to
    /// give, so no shard votes on a transfer it is in, nor is named in a
    /// forged commit it could then vote on (a forged yes from a real
    /// participant is indistinguishable from its vote: seed 571 of
    /// txn-replicated committed on one).
    fn rogue(&self, rng: &mut ChaCha8Rng, from: NodeId, to: NodeId) -> Option<Vec<u8>> {
        let coordinators = coordinators(C);
        let msg = match (coordinators.contains(&from), coordinators.contains(&to)) {
            // A replica, never a shard, voting yes on a live transfer; or
            // absurd Raft.
            (true, true) if C > 1 => match rng.gen_bool(0.5).then(|| self.live_transfer(rng)).flatten() {
                Some(txn) => Msg::Coord(CoordMsg::Vote { txn, yes: true }),
                None => {
                    let raft: WireOf<CoordMachine> = Wire::Raft(rogue::raft_message(rng, 0));
                    Msg::Coord(CoordMsg::Log(codec::encode(&raft).ok()?))
                }
            },
            (false, true) if C > 1 && rng.gen_bool(0.5) => Msg::Coord(CoordMsg::Log(forged_log_message(rng, to).ok()?)),
            // A yes on a live transfer this shard takes no part in.
            (false, true) if rng.gen_bool(0.25) => Msg::Coord(CoordMsg::Vote {
                txn: self.foreign_transfer(rng, from)?,
                yes: true,
            }),
            // A commit of a live transaction in its client's stead, naming
            // only one shard, never the forger (whose yes would then be its
            // own to give).
            (false, true) if rng.gen_bool(0.5) => {
                let others: Vec<NodeId> = (C + 1..=C + 3).filter(|&n| n != from).collect();
                Msg::Coord(CoordMsg::Commit {
                    txn: rng.gen_range(1..=4u64) << 32 | rng.gen_range(1..=64u64),
                    participants: vec![(*others.choose(rng)?, rng.gen_range(1..=2))],
                })
            }
            // Questions about ids no leader issued: near the top of the id
            // space, or just above what the current term gave out.
            (false, true) if C > 1 => {
                let txn = if rng.gen() {
                    u64::MAX - rng.gen_range(0..1_000)
                } else {
                    rng.gen_range(1..=4u64) << 32 | rng.gen_range(1_000..2_000u64)
                };
                if rng.gen() {
                    Msg::Coord(CoordMsg::Status { txn })
                } else {
                    Msg::Coord(CoordMsg::Commit {
                        txn,
                        participants: vec![],
                    })
                }
            }
            (false, false) => {
                // Ids as coordinators issue them: an epoch (or term) in the
                // high half, a small sequence number in the low.
                let txn = rng.gen_range(1..=3u64) << 32 | rng.gen_range(1..=64u64);
                match rng.gen_range(0..4) {
                    0 => {
                        let decision = if rng.gen() { Decision::Commit } else { Decision::Abort };
                        Msg::Shard(ShardMsg::Decide { txn, decision })
                    }
                    1 => Msg::Shard(ShardMsg::Prepare {
                        txn,
                        client: from,
                        epoch: rng.gen_range(1..=3),
                        participants: vec![to],
                        coordinators: vec![from],
                    }),
                    // Work in some client's transaction, in its name.
                    2 => Msg::Shard(ShardMsg::Put {
                        txn,
                        request: rng.gen(),
                        key: account_key(rng.gen_range(0..ACCOUNTS)),
                        value: encode_balance(rng.gen_range(0..1_000)),
                        epoch: None,
                    }),
                    _ => Msg::Shard(ShardMsg::Abort { txn }),
                }
            }
            _ => return None,
        };
        codec::encode(&msg).ok()
    }

    fn new(params: &Params) -> Self {
        Bank {
            bug: match params.planted() {
                Some(Planted::Txn(bug)) => Some(bug),
                _ => None,
            },
            log_bug: match params.planted() {
                Some(Planted::Log(bug)) => Some(bug),
                _ => None,
            },
            founders: coordinators(if CHANGES { C.min(3) } else { C }),
            settled: Mutex::default(),
            placement: Arc::new(
                RingShardMap::new((COORDINATOR + C..=params.servers - 3 * MOVES as u32).collect())
                    .expect("distinct shard ids"),
            ),
            servers: params.servers,
            directory_judge: Arc::default(),
            served: Mutex::default(),
            probe_client: params.workload.clients,
            events: Mutex::new(Vec::new()),
            to_recheck: Mutex::new(Vec::new()),
            judge: Arc::default(),
            committing: Mutex::default(),
        }
    }

    async fn server(self: Arc<Self>, env: SimEnv) {
        let observer = self.observer(&env);
        if self.directory_servers().contains(&env.id()) {
            let config = crate::scenarios::log::sim_config(self.log_bug);
            rebalancer::serve_directory(env, self.directory_servers(), config, self.directory_judge.clone()).await;
            std::future::pending::<()>().await
        } else if C == 1 && env.id() == COORDINATOR {
            let config = CoordinatorConfig {
                bug: self.bug,
                ..CoordinatorConfig::default()
            };
            if let Err(error) = run_coordinator(env, config, observer).await {
                // Stopped to protect what it promised; down until the
                // nemesis restarts it.
                tracing::warn!(%error, "coordinator stopped");
            }
            std::future::pending::<()>().await
        } else if env.id() < COORDINATOR + C {
            let mut config = ReplicatedConfig {
                bug: self.bug,
                // Small, so that runs forget transactions (a Forget every
                // few decisions) while clients still retry and shards ask.
                retain_finished: 4,
                ..ReplicatedConfig::default()
            };
            if LOAD > 1 {
                config.retain_finished = LOAD_RETAIN_FINISHED;
                config.log.snapshot_every = LOAD_SNAPSHOT_EVERY;
            }
            config.log.bug = self.log_bug;
            let me = env.id();
            self.judge.booted(me);
            let judge = self.judge.clone();
            // A founder founds the group until its disk has been synced;
            // any other empty disk joins as a new incarnation.
            let boot = if self.founders.contains(&me) && env.original_disk_unused() {
                Boot::Genesis(self.founders.clone())
            } else {
                Boot::Join
            };
            if let Err(error) = run_replicated_coordinator(env, (coordinators(C), boot), config, observer, judge).await
            {
                // The replica stopped to protect what it promised; it stays
                // down until the nemesis restarts it.
                tracing::warn!(%error, "coordinator replica stopped");
                self.judge.stopped(me);
            }
            std::future::pending::<()>().await
        } else {
            let config = ParticipantConfig {
                coordinators: coordinators(C),
                // The founding shard serves every account until the first
                // view; the others nothing until assigned.
                joining: MOVES && env.id() != self.shards()[0],
                bug: self.bug,
                ..ParticipantConfig::default()
            };
            if let Err(error) = run_participant(env, config, observer).await {
                tracing::warn!(%error, "shard stopped");
            }
            std::future::pending::<()>().await
        }
    }

    async fn client(self: Arc<Self>, env: SimEnv, mut client: Client<BankOp>) {
        if CHANGES && client.id == self.probe_client - 1 {
            let (env, servers) = (CoordLogEnv(env), coordinators(C));
            operator::run::<_, CoordMachine, _>(&env, &client, &servers, &self.judge).await;
            let members = operator::settle::<_, CoordMachine>(&env, &servers).await;
            *self.settled.lock().unwrap_or_else(|e| e.into_inner()) = Some(members);
            return;
        }
        if MOVES && client.id == self.probe_client - 1 - u32::from(CHANGES) {
            return self.rebalancer(&env, &mut client).await;
        }
        let mut rng = env.rng();
        // Its own stream: the bank's draws stay as they were.
        let mut register_rng = env.rng();
        let mut txc = self.txn_client(env.clone());
        let mut n = 0u32;
        while client.next_op() {
            self.reroute(&env, &txc).await;
            n += 1;
            if n % 4 == 0 {
                audit(&mut txc, &client).await;
            } else if n % 4 == 2 {
                registers::run(&self, &mut txc, &client, &mut register_rng).await;
            } else {
                let from = rng.gen_range(0..ACCOUNTS);
                let to = (from + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
                transfer(&self, &mut txc, &client, from, to, rng.gen_range(1..=20)).await;
            }
        }
    }

    async fn probe(self: Arc<Self>, env: SimEnv, client: Client<BankOp>) {
        let mut txc = self.txn_client(env.clone());
        while !audit(&mut txc, &client).await {
            env.sleep(Duration::from_millis(50)).await;
            self.reroute(&env, &txc).await;
        }
        // A decision never changes: ask again about every commit a client
        // saw (or did not hear back about). The coordinator answers from its
        // log; its answers are checked as announcements.
        let txns = self.to_recheck.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for txn in txns {
            // Forgotten is final too (the coordinator keeps only the latest
            // finished transactions).
            while let Err(TxnError::Unavailable { .. }) = txc.outcome(txn).await {}
        }
        let settled = self.settled.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.judge.all_caught_up(&env, settled).await;
        if MOVES {
            self.directory_judge.all_caught_up(&env, None).await;
        }
    }

    fn check(&self, history: &History<BankOp>) -> Vec<Violation> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let bank = bank::Bank {
            accounts: ACCOUNTS,
            placement: (!MOVES).then_some(self.placement.as_ref() as &dyn ringfence::txn::placement::ShardMap),
            probe_client: self.probe_client,
        };
        // Ownership first: two shards serving an account explain any
        // money that went astray.
        let mut violations = Vec::new();
        if MOVES {
            let served = self.served.lock().unwrap_or_else(|e| e.into_inner());
            let accounts = (0..ACCOUNTS).map(account_key);
            let keys: Vec<String> = accounts.chain((0..registers::REGISTERS).map(register_key)).collect();
            violations.extend(owner_overlap(&served, self.shards()[0], &keys));
        }
        violations.extend(bank::check(history, &events, bank));
        violations
    }
}
