//! The replicated log (`ringfence::log`, Raft) under the full fault mix,
//! with a replicated key-value store as the state machine.
//!
//! Same shape as the counter tutorial:
//!
//! 1. **The protocol** is `ringfence::log::service::run_plain` with [`Kv`]; each boot
//!    rebuilds the replica from its disk. A [`Judge`] (a
//!    `ringfence::observe::Observer`) watches every replica's events as they
//!    happen and stops the run at the first safety violation that
//!    `ringfence::history::replicas` finds, naming it:
//!    - `leader-per-term`: at most one leader per term;
//!    - `committed-entry-changed`: an index, once applied anywhere, holds the
//!      same entry everywhere forever (across crashes and snapshots);
//!    - `apply-order`: every replica applies indices in order, without gaps
//!      (so, with the previous check, all apply the same sequence).
//!
//!    The replicas' own assertions (election safety on receiving an append,
//!    never truncating a committed entry) stop the run the same way.
//! 2. **The clients** add 1 to one of a few counters or read one, through
//!    `ringfence::log::client::Client` (leader discovery, retries with the
//!    same sequence number, so retried adds apply once).
//! 3. **The probe**, after the faults heal: one add and one read must
//!    complete within [`Spec::liveness_bound`] (an election plus
//!    retries).
//! 4. **The checker** judges the whole history with the linearizability
//!    checker (`ringfence::history::linearizability`, per-key Wing–Gong–Lowe
//!    search) under a counter model: an add applied twice, a stale read or a
//!    read from the future has no linearization. The planted bug
//!    `read-before-no-op` has no other symptom.
//!
//! Planted bugs (`ringfence::log::LogBug`): each makes the judge stop the
//! run with a named violation ([`abort_run`]), or a replica's own assertion
//! stop it as a `panic` whose detail says what broke; `tests/log_sim.rs`
//! checks each is caught for the right reason.
//!
//! `vote-not-synced` and `commit-earlier-term` need a precise sequence of
//! events that random faults almost never produce (0 of 1,200 seeds each).
//! They are caught through the role-aware faults the scenario opts in to
//! ([`FaultKind::ROLE_AWARE`]): each replica reports its votes, elections,
//! proposals and commits as moments ([`moment`]), and the nemesis crashes the node
//! that just voted and the leader it elected, or a leader before its new
//! entry reaches a majority and right after it learns of a commit — the
//! two hazards behind those bugs.
//!
//! The disk is hostile too ([`FaultKind::DISK`]): crashes leave zeroed or
//! garbage tails, a write or fsync fails (the replica stops and restarts),
//! and one replica per run finds a flipped bit in records it synced, or
//! synced batches lost from the end of its log, so it refuses to start and
//! stays down while the other replicas go on. The planted bugs
//! `torn-tail-anywhere` (`RecordBug::AnyDamageIsTornTail`, the recovery
//! rule found dropping synced records on real processes) and
//! `synced-tail-unnoticed` (`RecordBug::IgnoresWatermark`: a lock log cut
//! at a batch boundary on a real cluster reissued granted tokens) are
//! caught by the simulated disk's own check, `synced-record-lost`: a node
//! got back fewer records than it had synced before its crash.

//!
//! `log-members` (`LogScenario<5, true>`) runs the same log while an
//! operator ([`operator`]) adds, promotes, removes and replaces members,
//! and one server may lose its disk (`FaultKind::DiskLost`): four founders
//! start the group, the other servers join as learners when the operator
//! adds them, and after the heal every member of the settled configuration
//! must catch up. Its planted bugs break the membership rules of
//! `ringfence::log::membership`.

use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use ringfence::env::record::RecordBug;
use ringfence::env::{codec, Env, NodeId};
use ringfence::history::{kv, History, Violation};
use ringfence::log::client::{Client as LogClient, ClientError};
use ringfence::log::membership::Boot;
use ringfence::log::service;
use ringfence::log::{Config, Event, Kv, KvCommand, KvOutput, KvQuery, LogBug, Wire, WireOf};
use ringfence::observe::Observer;

use super::judge::Judge;
use super::{operator, rogue};
use crate::env::SimEnv;
use crate::plan::{Aiming, Fault, FaultKind};
use crate::scenario::{Bug, Client, Params, Planted, Scenario, Spec, Workload};
use crate::world::{derive_rng, stream};

pub use ringfence::history::kv::KvOp;

pub const VOTE_NOT_SYNCED: Bug = Bug {
    name: "vote-not-synced",
    about: "a voter replies before its term and vote are synced; after a crash it may vote twice in a term",
    caught_by: &["leader-per-term"],
    planted: Planted::Log(LogBug::VoteNotSynced),
};
pub const COMMIT_EARLIER_TERM: Bug = Bug {
    name: "commit-earlier-term",
    about: "a leader commits earlier-term entries by counting replicas (Raft figure 8), without a no-op",
    caught_by: &["committed-entry-changed"],
    planted: Planted::Log(LogBug::CommitEarlierTermByCounting),
};
pub const NO_STEP_DOWN: Bug = Bug {
    name: "no-step-down",
    about: "a leader that sees a higher term adopts it but keeps leading",
    caught_by: &["leader-per-term"],
    planted: Planted::Log(LogBug::NoStepDownOnHigherTerm),
};
pub const TERM_OVERFLOW: Bug = Bug {
    name: "term-overflow",
    about: "a replica adopts any term a member sends; a forged term near u64::MAX spreads to every replica, and no pre-vote can ask for a term above it, so the group never elects a leader again",
    caught_by: &["liveness"],
    planted: Planted::Log(LogBug::UncheckedTerm),
};
pub const ACK_BEFORE_SYNC: Bug = Bug {
    name: "ack-before-sync",
    about: "a follower acknowledges appended entries before syncing them",
    caught_by: &["committed-entry-changed"],
    planted: Planted::Log(LogBug::AckBeforeSync),
};

pub const REFUSE_ENTRIES: Bug = Bug {
    name: "refuse-entries",
    about: "one follower takes heartbeats but refuses every entry, while the others commit without it",
    caught_by: &["replica-behind"],
    planted: Planted::Log(LogBug::RefuseEntries),
};

pub const READ_BEFORE_NO_OP: Bug = Bug {
    name: "read-before-no-op",
    about: "a new leader serves reads at its own commit index before its term's no-op commits, missing writes the old leader acknowledged",
    caught_by: &["linearizable"],
    planted: Planted::Log(LogBug::ReadBeforeNoOp),
};

pub const TORN_TAIL_ANYWHERE: Bug = Bug {
    name: "torn-tail-anywhere",
    about: "storage recovery takes any damage for a torn tail, so a bit flipped mid-log silently drops synced records",
    caught_by: &["synced-record-lost"],
    planted: Planted::Record(RecordBug::AnyDamageIsTornTail),
};

pub const PRE_VOTE_COUNTS_AS_VOTE: Bug = Bug {
    name: "pre-vote-counts-as-vote",
    about: "a replica that gathers a majority of pre-votes takes the next term as leader without an election; voters grant pre-votes to several askers, so two replicas lead one term",
    caught_by: &["leader-per-term"],
    planted: Planted::Log(LogBug::PreVoteCountsAsVote),
};

pub const LEARNER_COUNTED: Bug = Bug {
    name: "learner-counted",
    about: "a leader counts learners' acknowledgements toward commits, so an entry stored by a leader and its learners is committed on no majority of voters",
    caught_by: &["committed-entry-changed"],
    planted: Planted::Log(LogBug::LearnerCounted),
};

pub const CHANGE_BEFORE_TERM_COMMITS: Bug = Bug {
    name: "change-before-term-commits",
    about: "a new leader takes a configuration change before an entry of its own term commits (the single-server-change bug in Ongaro's thesis): two changes are decided by majorities that share no server, which then elect two leaders in one term or overwrite a committed entry",
    caught_by: &["committed-entry-changed", "leader-per-term"],
    planted: Planted::Log(LogBug::ChangeBeforeTermCommits),
};

pub const READ_EARLIER_ROUND: Bug = Bug {
    name: "read-earlier-round",
    about: "a read is confirmed by the heartbeat round before its own: a leader that stalls after that round answers the reads queued meanwhile from stale state",
    caught_by: &["read-by-deposed-leader"],
    planted: Planted::Log(LogBug::ReadCountsEarlierRound),
};

pub const REMOVED_STILL_VOTES: Bug = Bug {
    name: "removed-still-votes",
    about: "a candidate counts every vote it receives: a removed member that never heard of its removal helps elect a second leader",
    caught_by: &["leader-per-term"],
    planted: Planted::Log(LogBug::RemovedStillVotes),
};

pub const REJOIN_KEEPS_IDENTITY: Bug = Bug {
    name: "rejoin-keeps-identity",
    about: "a node back with an empty disk takes its old identity: it votes again in terms it voted in and its acknowledgements count for entries it no longer has",
    caught_by: &["committed-entry-changed"],
    planted: Planted::Log(LogBug::RejoinKeepsIdentity),
};

pub const SYNCED_TAIL_UNNOTICED: Bug = Bug {
    name: "synced-tail-unnoticed",
    about: "storage recovery trusts the file alone, so a log that lost synced batches from its end (a lost write, a file cut at a batch boundary) starts as a shorter log",
    caught_by: &["synced-record-lost"],
    planted: Planted::Record(RecordBug::IgnoresWatermark),
};

/// With `CHANGES`, the client that is failover automation
/// ([`operator::failover`]); client 0 is the operator.
const FAILOVER: u32 = 1;

/// Counters the clients touch: few, so operations contend.
const KEYS: u8 = 3;
/// How long a client keeps retrying one operation before giving up.
const GIVE_UP: Duration = Duration::from_secs(2);

/// The moments a replica reports ([`SimEnv::moment`]).
pub mod moment {
    /// It granted its vote to a candidate.
    pub const VOTE: &str = "vote";
    /// It has just become leader.
    pub const LEAD: &str = "lead";
    /// As leader, it appended a new client entry and is about to replicate it.
    pub const PROPOSE: &str = "propose";
    /// As leader, it appended a configuration change and is about to
    /// replicate it.
    pub const RECONFIGURE: &str = "reconfigure";
    /// As leader, it learned that entries are committed, before telling the
    /// followers.
    pub const COMMIT: &str = "commit";
}

/// The hazards a moment-crash window aims at, each a set of moments that
/// compose into one known failure pattern (random mixes mostly cancel out:
/// a window that crashes every new leader never lets one replicate).
#[derive(Clone, Copy)]
enum Hazard {
    /// The leader is cut off to force an election, then the voter and the
    /// leader it elects both crash before anyone else hears of the new
    /// term (vote durability).
    Election,
    /// A leader dies before a new entry reaches a majority, and right after
    /// learning of a commit, before the followers do: logs diverge across
    /// terms (the commit rule, Raft's figure 8).
    Replication,
}

/// With membership changing, windows also set up the single-server
/// change bug of Ongaro's thesis: a change left only in a deposed leader's
/// log while the others elect a successor, which takes a change of its own
/// (the operator and the failover automation ask a new leader at once).
/// Half the windows crash a leader right after it appends a change, before
/// it tells anyone (the other half are [`hazard_window`]s); and, drawn
/// apart, four windows in five also cut such a leader off from the other
/// servers, then split the leader elected next off with one other server
/// the moment it wins, before the rest hear of its term: two servers that
/// are a majority of a three-voter configuration, while the deposed leader
/// comes back among the others.
fn membership_hazard_window(rng: &mut ChaCha8Rng, at_ms: u64, intensity: f64, servers: usize, out: &mut Vec<Fault>) {
    // The splits draw from a stream of their own, so the other faults are
    // those drawn before splits existed.
    let mut split = rng.clone();
    split.set_stream(stream::SPLIT);
    if rng.gen_bool(0.5) {
        hazard_window(rng, at_ms, intensity, servers, out);
    } else {
        let for_ms = rng.gen_range(1_000..=(1_500 + (3_000.0 * intensity) as u64));
        out.push(moment_crash(rng, (at_ms, for_ms), moment::RECONFIGURE, 0, intensity));
    }
    if split.gen_bool(0.8) {
        changes_decided_apart(&mut split, at_ms, intensity, out);
    }
}

/// The two splits of [`membership_hazard_window`]: a leader alone at the
/// moment it appends a change, then the next leader with one other server.
fn changes_decided_apart(rng: &mut ChaCha8Rng, at_ms: u64, intensity: f64, out: &mut Vec<Fault>) {
    let for_ms = rng.gen_range(1_000..=(1_500 + (3_000.0 * intensity) as u64));
    let cut_ms = rng.gen_range(200..=(600 + (1_000.0 * intensity) as u64));
    out.push(Fault::MomentSplit {
        at_ms,
        for_ms,
        moment: moment::RECONFIGURE.to_string(),
        after: String::new(),
        with: 0,
        probability: rng.gen_range(0.5..=1.0),
        split_ms: cut_ms,
    });
    out.push(Fault::MomentSplit {
        at_ms,
        for_ms: for_ms + 1_000,
        moment: moment::LEAD.to_string(),
        after: moment::RECONFIGURE.to_string(),
        with: 1,
        probability: rng.gen_range(0.5..=1.0),
        split_ms: cut_ms + rng.gen_range(500..=(1_500 + (2_000.0 * intensity) as u64)),
    });
}

/// A window `(at_ms, for_ms)` of crashes at `moment`, `after_sends`
/// messages to servers later, each likely and each down for a while.
fn moment_crash(
    rng: &mut ChaCha8Rng,
    (at_ms, for_ms): (u64, u64),
    moment: &str,
    after_sends: u32,
    intensity: f64,
) -> Fault {
    Fault::MomentCrash {
        at_ms,
        for_ms,
        moment: moment.to_string(),
        after_sends,
        probability: rng.gen_range(0.75..=1.0),
        down_ms: rng.gen_range(20..=(200 + (1_000.0 * intensity) as u64)),
    }
}

/// One window of moment crashes aimed at a random [`Hazard`].
fn hazard_window(rng: &mut ChaCha8Rng, at_ms: u64, intensity: f64, servers: usize, out: &mut Vec<Fault>) {
    let for_ms = rng.gen_range(1_000..=(1_500 + (3_000.0 * intensity) as u64));
    let moments: &[&str] = match [Hazard::Election, Hazard::Replication].choose(rng).expect("non-empty") {
        Hazard::Election => {
            out.push(Fault::Isolate {
                at_ms,
                for_ms: rng.gen_range(300..=(500 + (1_500.0 * intensity) as u64)),
                moment: moment::LEAD.to_string(),
                keep_clients: false,
            });
            &[moment::VOTE, moment::LEAD]
        }
        Hazard::Replication => &[moment::PROPOSE, moment::COMMIT],
    };
    // A leader's messages are cut before they reach a majority with it.
    let short_of_majority = (servers as u32).saturating_sub(1) / 2;
    for &moment in moments {
        // A vote is one message: worth crashing right after it is sent.
        let after_sends = if moment == moment::VOTE {
            1
        } else {
            rng.gen_range(0..short_of_majority.max(1))
        };
        out.push(moment_crash(rng, (at_ms, for_ms), moment, after_sends, intensity));
    }
}

/// One replica's observer: the shared [`Judge`] judges, and the replica's
/// votes, elections, proposals and commits are reported to the simulator as
/// moments for the role-aware faults to aim at.
struct ReplicaObserver {
    judge: Arc<Judge>,
    env: SimEnv,
}

impl Observer<Event> for ReplicaObserver {
    fn observe(&self, node: NodeId, now: Duration, event: &Event) {
        self.judge.observe(node, now, event);
        let moment = match event {
            Event::Voted { .. } => moment::VOTE,
            Event::Leader { .. } => moment::LEAD,
            Event::Proposed { change: true, .. } => moment::RECONFIGURE,
            Event::Proposed { .. } => moment::PROPOSE,
            Event::Committed { .. } => moment::COMMIT,
            Event::Applied { .. }
            | Event::Restored { .. }
            | Event::Compacted { .. }
            | Event::Contradicted { .. }
            | Event::ReadArrived { .. }
            | Event::ReadServed { .. } => return,
        };
        self.env.moment(moment);
    }
}

/// The log scenario over `N` replicas; with `CHANGES`, the group is
/// founded by three of them and an operator changes its membership while
/// the faults run ([`operator`]).
pub struct LogScenario<const N: u32, const CHANGES: bool = false> {
    bug: Option<LogBug>,
    record_bug: Option<RecordBug>,
    members: Vec<NodeId>,
    /// The founding members: every server, or three with `CHANGES`.
    founders: Vec<NodeId>,

    /// This run's replica timers ([`Timers::for_seed`]).
    timers: Timers,
    /// Whether this run's replicas pre-vote and check their quorum
    /// ([`Guards::for_seed`]; always with `CHANGES`).
    guards: Guards,
    /// How this run's clients use the log ([`Mix::for_seed`]).
    mix: Mix,
    judge: Arc<Judge>,
}

/// How a run's clients use the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Every client adds, and reads one operation in three.
    Mixed,
    /// Odd-numbered clients only read, one read every `poll` (as a
    /// dashboard polls); the others only add. A reader keeps reading from
    /// the replica that last answered it, so a deposed leader that still
    /// answers reads is read from while the writers have moved on.
    Split {
        /// The pause between a reader's reads.
        poll: Duration,
    },
}

impl Mix {
    /// The mix of run `seed`: half the runs each, drawn from a settings
    /// stream of its own, so fault plans and timers are unchanged.
    pub fn for_seed(seed: u64) -> Self {
        let mut rng = derive_rng(seed, stream::SETTINGS, 1);
        if rng.gen_bool(0.5) {
            Mix::Mixed
        } else {
            Mix::Split {
                poll: Duration::from_millis(rng.gen_range(10..=100)),
            }
        }
    }

    /// Client `id`'s `n`th operation, and how long to pause before it.
    fn op(self, id: u32, n: u32) -> (KvOp, Duration) {
        let key = ((n + id) % u32::from(KEYS)) as u8;
        let read = KvOp::Get { key, value: None };
        let add = KvOp::Add { key, result: None };
        match self {
            Mix::Mixed if n % 3 == 0 => (read, Duration::ZERO),
            Mix::Mixed => (add, Duration::ZERO),
            Mix::Split { poll } if id % 2 == 1 => (read, poll),
            Mix::Split { .. } => (add, Duration::ZERO),
        }
    }
}

/// The replica configuration the scenario runs.
pub fn sim_config(bug: Option<LogBug>) -> Config {
    timed_config(bug, Timers::default())
}

/// A replica's timers, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    election_min: u64,
    election_max: u64,
    heartbeat: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            election_min: 150,
            election_max: 300,
            heartbeat: 50,
        }
    }
}

impl Timers {
    /// The timers of run `seed`: half the runs keep the defaults; the
    /// others draw what an operator might configure — an election window
    /// as narrow as `Config::validate` allows (a tenth of its minimum, plus
    /// up to 15 ms: candidates of one term are common, and so are late
    /// votes among them), or up to twice its minimum, with a heartbeat
    /// anywhere below a third of it.
    pub fn for_seed(seed: u64) -> Self {
        let mut rng = derive_rng(seed, stream::SETTINGS, 0);
        if rng.gen_bool(0.5) {
            return Timers::default();
        }
        let election_min: u64 = rng.gen_range(80..=250);
        let spread = if rng.gen_bool(0.5) {
            election_min.div_ceil(10) + rng.gen_range(0..=15)
        } else {
            rng.gen_range(election_min / 2..=election_min * 2)
        };
        Timers {
            election_min,
            election_max: election_min + spread,
            heartbeat: rng.gen_range(10..=election_min / 3),
        }
    }
}

/// Whether a run's replicas ask for pre-votes and check their quorum. Both
/// are on by default and either may be switched off (`Config::pre_vote`,
/// `Config::check_quorum`), so a quarter of the runs each go without:
/// an election rule broken on one path (a vote, say) is not hidden by the
/// pre-vote round that tests the same rule first. Drawn from a stream of
/// its own, so fault plans and timers are unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guards {
    pre_vote: bool,
    check_quorum: bool,
}

impl Guards {
    /// Both on: what the membership scenarios keep, since without them a
    /// removed member that never learned of its removal disrupts the group
    /// for good (the reason they exist).
    const ON: Guards = Guards {
        pre_vote: true,
        check_quorum: true,
    };

    /// The guards of run `seed`.
    pub fn for_seed(seed: u64) -> Self {
        let mut rng = derive_rng(seed, stream::SETTINGS, 2);
        Guards {
            pre_vote: !rng.gen_ratio(1, 4),
            check_quorum: !rng.gen_ratio(1, 4),
        }
    }

    fn apply(self, config: Config) -> Config {
        Config {
            pre_vote: self.pre_vote,
            check_quorum: self.check_quorum,
            ..config
        }
    }
}

/// [`sim_config`] with `timers`.
pub fn timed_config(bug: Option<LogBug>, timers: Timers) -> Config {
    Config {
        election_timeout_min: Duration::from_millis(timers.election_min),
        election_timeout_max: Duration::from_millis(timers.election_max),
        heartbeat_interval: Duration::from_millis(timers.heartbeat),
        // Small enough that snapshots, compaction and InstallSnapshot
        // happen within a run, and that a snapshot travels in several
        // chunks, each of which a fault may lose, delay or duplicate.
        snapshot_every: 48,
        snapshot_chunk_bytes: 1 << 10,
        max_entries_per_append: 16,
        paranoid: true,
        bug,
        ..Config::default()
    }
}

impl<const N: u32, const CHANGES: bool> LogScenario<N, CHANGES> {
    /// Runs one operation through the client and records it.
    async fn operate(client: &Client<KvOp>, log: &mut LogClient<SimEnv, Kv>, op: KvOp) -> bool {
        client.invoke(op.clone());
        match op {
            KvOp::Add { key, .. } => {
                let command = KvCommand::Add {
                    key: key.to_string(),
                    delta: 1,
                };
                match log.execute(command, GIVE_UP).await {
                    Ok(KvOutput::Value(Some(v))) => {
                        client.ok(KvOp::Add { key, result: Some(v) });
                        true
                    }
                    Ok(other) => panic!("add answered {other:?}"),
                    Err(ClientError::Timeout) => {
                        client.info(KvOp::Add { key, result: None });
                        false
                    }
                    Err(ClientError::Rejected(r)) => {
                        client.fail(KvOp::Add { key, result: None });
                        tracing::warn!(?r, "add rejected");
                        false
                    }
                }
            }
            KvOp::Get { key, .. } => {
                let query = KvQuery::Get { key: key.to_string() };
                match log.read(query, GIVE_UP).await {
                    Ok(KvOutput::Value(v)) => {
                        client.ok(KvOp::Get {
                            key,
                            value: Some(v.unwrap_or(0)),
                        });
                        true
                    }
                    Ok(other) => panic!("get answered {other:?}"),
                    // A read changes nothing: without an answer it failed.
                    Err(_) => {
                        client.fail(KvOp::Get { key, value: None });
                        false
                    }
                }
            }
        }
    }
}

impl<const N: u32, const CHANGES: bool> Scenario for LogScenario<N, CHANGES> {
    type Op = KvOp;

    const SPEC: Spec = Spec {
        name: match (N, CHANGES) {
            (_, true) => "log-members",
            (3, false) => "log",
            _ => "log-5",
        },
        about: if CHANGES {
            "the replicated log while an operator adds, promotes, removes and replaces members, and a node may lose its disk: leader per term, committed entries stable, linearizable adds, every final member caught up"
        } else {
            "Raft replicated log with a KV state machine: leader per term, committed entries stable, same apply order, exactly-once adds"
        },
        // On five replicas `ack-before-sync` needs two followers to lose the
        // same acknowledged entries (caught once in 200 seeds, and only as a
        // liveness failure), and `vote-not-synced` and `commit-earlier-term`,
        // though caught there too, are left to the three-replica sweep to
        // keep `cargo test` short. With `CHANGES`:
        // `change-before-term-commits` (the thesis bug) needs a change left
        // only in a deposed leader's log, a successor that takes another
        // change before its own term commits, and a voter of the first
        // change that missed the second when the deposed leader returns.
        // The moment splits of [`membership_hazard_window`] and the failover
        // automation set it up; it shows as two leaders in one term or a
        // committed entry overwritten, on 17 of seeds 0..3000 (5 of the
        // default 1,000).
        bugs: if CHANGES {
            &[
                LEARNER_COUNTED,
                REMOVED_STILL_VOTES,
                REJOIN_KEEPS_IDENTITY,
                CHANGE_BEFORE_TERM_COMMITS,
                READ_EARLIER_ROUND,
            ]
        } else if N == 3 {
            &[
                NO_STEP_DOWN,
                ACK_BEFORE_SYNC,
                VOTE_NOT_SYNCED,
                COMMIT_EARLIER_TERM,
                TORN_TAIL_ANYWHERE,
                SYNCED_TAIL_UNNOTICED,
                TERM_OVERFLOW,
                REFUSE_ENTRIES,
                READ_BEFORE_NO_OP,
                PRE_VOTE_COUNTS_AS_VOTE,
            ]
        } else {
            &[NO_STEP_DOWN]
        },
        servers: N,
        min_servers: 1,
        // With `CHANGES`, two more: the operator and the failover automation.
        workload: Workload {
            clients: if CHANGES { 6 } else { 4 },
            ops: 60,
        },
        fault_window: Duration::from_secs(5),
        // After healing: elections finish within a few timeouts (≤ 750 ms
        // each, plus clock drift), then a client needs a few retries; with
        // `CHANGES` the operator then settles the membership, one committed
        // change after another.
        liveness_bound: Duration::from_secs(if CHANGES { 10 } else { 5 }),
        // `commit-earlier-term` needs the Figure 8 sequence, which the
        // moment crashes aim at: 11 of seeds 0..600, the third at seed 210
        // (`sweep -s log --bug commit-earlier-term --seeds 0..600`). With
        // `CHANGES`, runs are short (about 4 ms each on this machine) and
        // the rarest catches come 5 or 6 times in 1,000 seeds: 1,000.
        default_seeds: if CHANGES { 1_000 } else { 300 },
        // Isolations cut off the newest leader; crash windows aim at the
        // election and replication hazards ([`hazard_window`]).
        aiming: Some(Aiming {
            isolate_after: moment::LEAD,
            crash_window: if CHANGES {
                membership_hazard_window
            } else {
                hazard_window
            },
        }),
        situations: &[],
    };

    fn new(params: &Params) -> Self {
        LogScenario {
            bug: match params.planted() {
                Some(Planted::Log(bug)) => Some(bug),
                _ => None,
            },
            record_bug: match params.planted() {
                Some(Planted::Record(bug)) => Some(bug),
                _ => None,
            },
            members: (1..=params.servers).collect(),
            // With changes, four founders: a group of four voters is where
            // two single-server changes can be decided by majorities that
            // share no server (the thesis bug needs it).
            founders: (1..=if CHANGES { params.servers.min(4) } else { params.servers }).collect(),

            timers: Timers::for_seed(params.seed),
            guards: if CHANGES {
                Guards::ON
            } else {
                Guards::for_seed(params.seed)
            },
            mix: Mix::for_seed(params.seed),
            judge: Arc::new(Judge::default()),
        }
    }

    /// Everything, including the faults that aim at replicas' votes,
    /// elections, proposals and commits, hostile messages from members, and
    /// a hostile disk: a replica that finds its synced records damaged
    /// refuses to start and stays down, and the others go on as a majority.
    /// With `CHANGES`, a lost disk takes the place of damaged records: a
    /// node that refuses to start stays down for good, and a group that
    /// shrinks to three voters cannot lose one for good and another's disk.
    fn fault_kinds() -> Vec<FaultKind> {
        let disk = FaultKind::DISK
            .into_iter()
            .filter(|&k| !CHANGES || !matches!(k, FaultKind::BitFlip | FaultKind::LostWrite));
        let replacement = FaultKind::REPLACEMENT.into_iter().filter(|_| CHANGES);
        FaultKind::ALL
            .into_iter()
            .chain(FaultKind::ROLE_AWARE)
            .chain(disk)
            .chain(replacement)
            .chain(FaultKind::ADVERSARIAL)
            .collect()
    }

    /// Hostile Raft messages a correct replica refuses ([`rogue`]).
    fn rogue(&self, rng: &mut ChaCha8Rng, _from: NodeId, _to: NodeId) -> Option<Vec<u8>> {
        let known = self.judge.last_leader_term().unwrap_or(0);
        let msg: WireOf<Kv> = Wire::Raft(rogue::raft_message(rng, known));
        codec::encode(&msg).ok()
    }

    async fn server(self: Arc<Self>, env: SimEnv) {
        let node_id = env.id();
        self.judge.booted(node_id);
        // A founder's disk holds its founding identity once it was ever
        // synced; until then (a crash before its first sync) it founds
        // again. Any other empty disk joins as a new incarnation.
        let boot = if self.founders.contains(&node_id) && env.original_disk_unused() {
            Boot::Genesis(self.founders.clone())
        } else {
            Boot::Join
        };
        env.set_record_bug(self.record_bug);
        let observer = Arc::new(ReplicaObserver {
            judge: self.judge.clone(),
            env: env.clone(),
        });
        let config = self.guards.apply(timed_config(self.bug, self.timers));
        tracing::info!(timers = ?self.timers, guards = ?self.guards, "replica boots");
        let result = service::run_plain::<SimEnv, Kv>(env, (self.members.clone(), boot), config, observer).await;
        if let Err(error) = result {
            // The replica stopped to protect what it acknowledged (a failed
            // write, or a corrupt disk it refuses to start on); it stays
            // down until the nemesis restarts it.
            tracing::warn!(%error, "replica stopped");
            self.judge.stopped(node_id);
            std::future::pending::<()>().await;
        }
    }

    async fn client(self: Arc<Self>, env: SimEnv, mut client: Client<KvOp>) {
        if CHANGES && client.id == 0 {
            return operator::run::<_, Kv, _>(&env, &client, &self.members, &self.judge).await;
        }
        if CHANGES && client.id == FAILOVER {
            return operator::failover::<_, Kv, _>(&env, &client, &self.members, &self.judge).await;
        }
        let mut log = LogClient::<SimEnv, Kv>::new(env.clone(), client.servers.clone());
        let mut n = 0u32;
        while client.next_op() {
            n += 1;
            let (op, pause) = self.mix.op(client.id, n);
            if !pause.is_zero() {
                env.sleep(pause).await;
            }
            Self::operate(&client, &mut log, op).await;
        }
    }

    /// A write and a read succeed, then every running replica catches up
    /// with everything applied anywhere (a majority serving is not enough:
    /// a replica that never catches up is one failure from unavailability).
    async fn probe(self: Arc<Self>, env: SimEnv, client: Client<KvOp>) {
        let mut log = LogClient::<SimEnv, Kv>::new(env.clone(), client.servers.clone());
        while !Self::operate(&client, &mut log, KvOp::Add { key: 0, result: None }).await {}
        while !Self::operate(&client, &mut log, KvOp::Get { key: 0, value: None }).await {}
        let members = if CHANGES {
            Some(operator::settle::<_, Kv>(&env, &self.members).await)
        } else {
            None
        };
        self.judge.all_caught_up(&env, members).await;
    }

    /// Linearizability of the counters ([`kv::check`]).
    fn check(&self, history: &History<KvOp>) -> Vec<Violation> {
        kv::check(history)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{FaultPlan, Targets};
    use std::collections::BTreeSet;

    #[test]
    fn half_the_runs_split_clients_into_pacing_readers_and_writers() {
        let split = (0..64)
            .filter(|&seed| matches!(Mix::for_seed(seed), Mix::Split { .. }))
            .count();
        assert!((16..=48).contains(&split), "{split} of 64 runs split");
        let mix = Mix::Split {
            poll: Duration::from_millis(30),
        };
        for n in 1..=6 {
            assert!(matches!(mix.op(1, n), (KvOp::Get { .. }, pause) if pause == Duration::from_millis(30)));
            assert!(matches!(mix.op(2, n), (KvOp::Add { .. }, pause) if pause.is_zero()));
        }
        let reads = (1..=6)
            .filter(|&n| matches!(Mix::Mixed.op(0, n).0, KvOp::Get { .. }))
            .count();
        assert_eq!(reads, 2, "one operation in three reads");
    }

    /// What `log-members` plans for: five servers, two clients.
    fn members_targets() -> Targets {
        Targets {
            servers: vec![1, 2, 3, 4, 5],
            clients: vec![10, 11],
            crashable_clients: vec![10, 11],
            replaceable: vec![1, 2, 3, 4, 5],
            kinds: FaultKind::ALL.into_iter().chain(FaultKind::ROLE_AWARE).collect(),
            aiming: LogScenario::<5, true>::SPEC.aiming,
        }
    }

    #[test]
    fn with_membership_changing_half_the_crash_windows_strike_a_fresh_change() {
        let targets = members_targets();
        let (mut fresh, mut others) = (0, 0);
        for seed in 0..64 {
            for f in FaultPlan::generate(seed, 5_000, &targets).faults {
                match f {
                    Fault::MomentCrash {
                        moment, after_sends, ..
                    } if moment == moment::RECONFIGURE => {
                        assert_eq!(after_sends, 0, "before the change reaches anyone");
                        fresh += 1;
                    }
                    Fault::MomentCrash { .. } => others += 1,
                    _ => {}
                }
            }
        }
        assert!(
            fresh > 0 && others > 0,
            "{fresh} crashes at a change, {others} at other moments"
        );
    }

    #[test]
    fn moment_crash_windows_aim_at_one_hazard_each() {
        let targets = Targets {
            servers: vec![1, 2, 3],
            clients: vec![10, 11],
            crashable_clients: vec![10, 11],
            replaceable: vec![1, 2, 3],
            kinds: FaultKind::ALL.into_iter().chain(FaultKind::ROLE_AWARE).collect(),
            aiming: LogScenario::<3>::SPEC.aiming,
        };
        let election = BTreeSet::from([moment::VOTE, moment::LEAD]);
        let replication = BTreeSet::from([moment::PROPOSE, moment::COMMIT]);
        let mut seen = BTreeSet::new();
        for seed in 0..64 {
            let plan = FaultPlan::generate(seed, 5_000, &targets);
            for f in &plan.faults {
                let Fault::MomentCrash { at_ms, .. } = f else { continue };
                let together: BTreeSet<&str> = plan
                    .faults
                    .iter()
                    .filter_map(|g| match g {
                        Fault::MomentCrash {
                            at_ms: a, moment: m, ..
                        } if a == at_ms => Some(m.as_str()),
                        _ => None,
                    })
                    .collect();
                assert!(together == election || together == replication, "{together:?}");
                if together == election {
                    // The election it aims at is forced by isolating the leader.
                    assert!(plan.faults.iter().any(
                        |g| matches!(g, Fault::Isolate { at_ms: a, moment: m, .. } if a == at_ms && m == moment::LEAD)
                    ));
                }
                seen.insert(together.into_iter().map(str::to_string).collect::<Vec<_>>());
            }
        }
        assert_eq!(seen.len(), 2, "both hazards appear in 64 seeds");
    }

    /// With membership changing, windows also cut a leader off at the
    /// moment it appends a change, then split the next leader off with a
    /// partner for longer: the setting of `change-before-term-commits`.
    #[test]
    fn membership_windows_split_a_changing_leader_then_its_successor() {
        let targets = members_targets();
        let mut pairs = 0;
        for seed in 0..64 {
            let plan = FaultPlan::generate(seed, 5_000, &targets);
            let splits: Vec<&Fault> = plan
                .faults
                .iter()
                .filter(|f| matches!(f, Fault::MomentSplit { .. }))
                .collect();
            for pair in splits.chunks(2) {
                let [Fault::MomentSplit {
                    at_ms,
                    moment,
                    with: 0,
                    split_ms: alone,
                    ..
                }, Fault::MomentSplit {
                    at_ms: next_at,
                    moment: next,
                    after,
                    with: 1,
                    split_ms: together,
                    ..
                }] = pair
                else {
                    panic!("splits come in pairs: {pair:?}")
                };
                assert_eq!((at_ms, moment.as_str()), (next_at, moment::RECONFIGURE));
                assert_eq!((next.as_str(), after.as_str()), (moment::LEAD, moment::RECONFIGURE));
                assert!(together > alone, "the successor's split outlasts the deposed leader's");
                pairs += 1;
            }
        }
        assert!(pairs > 0, "64 seeds set the thesis bug up at least once");
    }
}
