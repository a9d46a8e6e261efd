//! The replicated log: Raft consensus over a group of 2f+1 voters whose
//! membership changes one server at a time ([`membership`]), with
//! exactly-once client commands, linearizable reads, and snapshots.
//!
//! # Why Raft (and not Viewstamped Replication)
//!
//! Both tolerate f crashes out of 2f+1 and have the same message complexity.
//! Raft was chosen because its safety argument is the one most readers know
//! (election restriction + "commit only current-term entries by counting",
//! Figure 8 of the paper), so the planted bugs below map onto named,
//! well-documented mistakes, and because its durable state is tiny and
//! explicit (term, vote, log), which is exactly what our storage boundary
//! (`append` + `sync`, `rewrite` for compaction) is shaped for. VR's
//! view-change needs the log shipped in `DoViewChange` messages, which would
//! run into the message-size limit without extra chunking machinery.
//!
//! # Shape
//!
//! - [`Raft`] (in `raft.rs`) is the protocol: synchronous deterministic
//!   handlers returning an [`Output`] (records to persist, whether to sync
//!   before sending, messages, observer events). No async, no clock reads,
//!   no rng other than the one it was given.
//! - [`service::run`] is the one async engine over any [`crate::env::Env`]
//!   for every service on the log: it loads the records, rebuilds the
//!   replica, then loops over recv / timer → handler → persist → sync →
//!   send, with a [`service::Companion`] for what the service adds (timers,
//!   proposals of its own, traffic beside the log); the plain log's
//!   companion adds nothing ([`service::run_plain`]).
//! - [`client::Client`] sends commands and reads, retrying across replicas.
//! - [`StateMachine`] is what services implement; [`Kv`] is the test subject.
//!
//! # Limits (explicit, TigerBeetle-style)
//!
//! [`MAX_ENTRIES_PER_APPEND`] by default (configurable), [`MAX_COMMAND_BYTES`]
//! per command (so an append fits in [`crate::env::MAX_MESSAGE_BYTES`]),
//! [`Config::max_snapshot_bytes`] per snapshot (sent in chunks of
//! [`Config::snapshot_chunk_bytes`] and kept in the log as records of one
//! chunk each, at most [`MAX_SNAPSHOT_BYTES`]), [`MAX_MEMBERS`], and bounded session and
//! pending read tables (see [`Config`]).
//!
//! # Not done
//!
//! No leader leases (reads always cost a confirmation round, so clock drift
//! cannot break them). A snapshot is held in memory while it is taken, sent
//! and installed, as the state machine it encodes is.

pub mod admin;
pub mod client;
pub mod membership;
mod raft;
pub mod service;
mod state_machine;
mod types;

#[cfg(test)]
mod adversary_tests;
#[cfg(test)]
mod membership_tests;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use raft::{Output, Raft, RecoverError, Role, WireOf};
pub use state_machine::{Applied, Kv, KvCommand, KvOutput, KvQuery, Replicated, SnapshotError, StateMachine};
pub use types::{
    ClientId, Entry, Event, Index, Message, Outcome, Payload, Record, Reject, RequestId, Response, Term, Wire,
};

/// Largest group.
pub const MAX_MEMBERS: usize = 15;
/// Default cap on entries in one `Append` message.
pub const MAX_ENTRIES_PER_APPEND: usize = 64;
/// Largest encoded command accepted (larger ones are rejected).
pub const MAX_COMMAND_BYTES: usize = 8 << 10;
/// Largest snapshot any configuration allows: the largest state the codec
/// encodes. A snapshot is kept in the log as records of one chunk each,
/// so no record limit bounds it; a replica holds it in memory, as it holds
/// the state machine it encodes.
pub const MAX_SNAPSHOT_BYTES: usize = crate::env::codec::MAX_STATE_BYTES;
/// Default for `Config::max_snapshot_bytes`: 1 GiB.
pub const DEFAULT_MAX_SNAPSHOT_BYTES: usize = 1 << 30;
/// Largest snapshot chunk: it must fit one message with room to spare.
pub const MAX_SNAPSHOT_CHUNK_BYTES: usize = crate::env::MAX_MESSAGE_BYTES - (64 << 10);
/// Largest term a replica adopts from a message above its own. Honest terms
/// grow by one per election, so even a replica cut off for years stays far
/// below this; a message that jumps further is refused, so that a faulty
/// member cannot exhaust the term space (terms must stay incrementable, see
/// `docs/log.md`).
pub const MAX_TERM_STEP: Term = 1 << 32;
/// Largest log index a replica accepts in a message or a record: index
/// arithmetic (`index + 1`, a log's length on top of its start) then never
/// overflows. A log grows by one index per command, so no honest log gets
/// near it.
pub const MAX_INDEX: Index = 1 << 62;

/// Deliberately broken variants, so the simulator can prove it catches the
/// mistakes that matter. `None` in [`Config::bug`] is the correct protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogBug {
    /// A voter replies before its new term and vote are synced; after a
    /// crash it can vote again in the same term → two leaders in a term.
    VoteNotSynced,
    /// A leader commits an entry of an earlier term as soon as a majority
    /// stores it (Raft Figure 8) → a committed entry can be overwritten.
    CommitEarlierTermByCounting,
    /// A leader that sees a higher term adopts it but keeps leading (in the
    /// new term) → two leaders in one term.
    NoStepDownOnHigherTerm,
    /// A follower acknowledges appended entries before syncing them; a crash
    /// loses entries that were counted for commit → committed entries vanish.
    AckBeforeSync,
    /// A replica adopts any term a member sends, however far ahead, and
    /// increments its own with wrapping arithmetic: one forged message with
    /// term `u64::MAX` spreads to every replica, and a pre-vote for the
    /// next term (wrapped to 0) is refused by all, so the group never
    /// elects a leader again.
    UncheckedTerm,
    /// The member with the highest id takes heartbeats but refuses every
    /// entry, forever: a majority without it still commits, so only a check
    /// that every replica catches up after the faults heal notices.
    RefuseEntries,
    /// A new leader serves reads at its own commit index before its term's
    /// no-op commits, when it may not yet know every committed entry: a
    /// read can miss a write the old leader acknowledged before the read
    /// began. The replicas' logs stay correct; only a result no
    /// linearization allows shows it.
    ReadBeforeNoOp,
    /// Pre-vote replies are counted as votes: a replica that gathers a
    /// majority of pre-votes takes the next term as its leader without an
    /// election. A voter grants pre-votes to several askers, so two
    /// replicas can lead the same term.
    PreVoteCountsAsVote,
    /// A leader appends a configuration change before an entry of its own
    /// term has committed (the bug in the first version of Ongaro's
    /// single-server changes): a change an earlier leader left uncommitted
    /// and this one can be decided by majorities that do not overlap.
    ChangeBeforeTermCommits,
    /// A leader counts its learners' acknowledgements toward commits: an
    /// entry "committed" by a leader and a learner is on no majority of
    /// voters, and the next leader overwrites it.
    LearnerCounted,
    /// A candidate counts every vote it receives, from whoever sent it: a
    /// removed member that never heard of its removal still elects
    /// leaders, beside the leader the real voters elected.
    RemovedStillVotes,
    /// A node whose disk was lost comes back as the incarnation it was
    /// (its id is its identity): it votes again in terms it voted in, and
    /// its acknowledgements count for entries it no longer has.
    RejoinKeepsIdentity,
    /// A read is confirmed by acknowledgements of the heartbeat round
    /// before its own, sent before the read arrived: a leader that stalled
    /// after that round, while another was elected and served writes,
    /// answers the reads that queued during the stall from its stale
    /// state.
    ReadCountsEarlierRound,
}

impl LogBug {
    /// Every planted bug, for sweeps that must show each one is caught.
    pub const ALL: [LogBug; 13] = [
        LogBug::VoteNotSynced,
        LogBug::CommitEarlierTermByCounting,
        LogBug::NoStepDownOnHigherTerm,
        LogBug::AckBeforeSync,
        LogBug::UncheckedTerm,
        LogBug::RefuseEntries,
        LogBug::ReadBeforeNoOp,
        LogBug::PreVoteCountsAsVote,
        LogBug::ChangeBeforeTermCommits,
        LogBug::LearnerCounted,
        LogBug::RemovedStillVotes,
        LogBug::RejoinKeepsIdentity,
        LogBug::ReadCountsEarlierRound,
    ];
}

/// Tuning and limits of a replica. Every replica of a group should use the
/// same values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Election timeouts are drawn uniformly from `[min, max]` with the env's
    /// rng each time the timer is reset.
    pub election_timeout_min: Duration,
    /// Upper end of the election timeout range; the spread is what keeps
    /// replicas from timing out together and splitting the vote. It must be
    /// at least a tenth of the minimum: replicas whose timers fire within a
    /// round trip of each other split the vote, and in a window much
    /// narrower than that they do so election after election (5 replicas
    /// with a 1 ms window never elected a leader in the simulator).
    pub election_timeout_max: Duration,
    /// Leader heartbeat (and retransmission) period; well below the minimum
    /// election timeout.
    pub heartbeat_interval: Duration,
    /// Cap on entries in one `Append` ([`MAX_ENTRIES_PER_APPEND`] by
    /// default); with [`MAX_COMMAND_BYTES`] it must fit one message.
    pub max_entries_per_append: usize,
    /// Compact the log into a snapshot every this many applied entries.
    /// Each compaction rewrites the log file and frees the old one's
    /// blocks, which stalls the disk for tens of milliseconds on this
    /// project's machine (ext4 with `discard`); see the default's figures.
    pub snapshot_every: u64,
    /// Largest snapshot a replica takes, installs or recovers
    /// ([`DEFAULT_MAX_SNAPSHOT_BYTES`] by default, at most
    /// [`MAX_SNAPSHOT_BYTES`]). A state that outgrows it is not compacted
    /// (the log keeps everything and the error is logged); a snapshot
    /// offered above it is refused, and a log holding one is refused at
    /// start with an error that names the setting.
    pub max_snapshot_bytes: usize,
    /// Bytes of a snapshot per `InstallSnapshot` message (1 up to
    /// [`MAX_SNAPSHOT_CHUNK_BYTES`]); a leader sends the next chunk once
    /// the follower acknowledged the last, and the current one again at
    /// each heartbeat until then.
    pub snapshot_chunk_bytes: usize,
    /// Client sessions remembered for deduplication (least recently used
    /// evicted; a client idle for that many other clients' commands loses
    /// exactly-once protection).
    pub max_sessions: usize,
    /// Reads waiting for confirmation at the leader; more are refused Busy.
    pub max_pending_reads: usize,
    /// Ask for pre-votes before campaigning ([`types::Message::PreVote`]),
    /// so a replica that was cut off does not depose a working leader
    /// when it returns.
    pub pre_vote: bool,
    /// A leader that has not heard from a majority within the maximum
    /// election timeout steps down, so a leader cut off in a minority
    /// stops taking commands it cannot commit (clients go elsewhere).
    pub check_quorum: bool,
    /// Recheck whole-log invariants after every handler (tests).
    pub paranoid: bool,
    /// A planted bug, or `None` for the correct protocol.
    pub bug: Option<LogBug>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            heartbeat_interval: Duration::from_millis(50),
            max_entries_per_append: MAX_ENTRIES_PER_APPEND,
            // Measured with `ringfence bench` (3 nodes, fsync on), 32
            // clients on distinct locks: 1024 gave 5,448 cycles/s with a
            // p99 of 45 ms, 8192 gave 9,145 and 25 ms, 32768 gave 9,976
            // and 4.9 ms. 32768 entries of a lock log are about 2 MB.
            snapshot_every: 32768,
            max_snapshot_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
            // Half a message: two chunks in flight at most (one resent
            // at a heartbeat) stay under the transport's queue sizes.
            snapshot_chunk_bytes: 512 << 10,
            max_sessions: 4096,
            max_pending_reads: 1024,
            pre_vote: true,
            check_quorum: true,
            paranoid: false,
            bug: None,
        }
    }
}

impl Config {
    /// Panics on a configuration that cannot work.
    pub fn validate(&self) {
        assert!(self.election_timeout_min > Duration::ZERO);
        assert!(
            self.election_timeout_max - self.election_timeout_min >= self.election_timeout_min / 10,
            "the election timeout window must be at least a tenth of its minimum, or split votes repeat"
        );
        assert!(self.heartbeat_interval < self.election_timeout_min);
        assert!(self.max_entries_per_append >= 1);
        assert!(
            self.max_entries_per_append * MAX_COMMAND_BYTES < crate::env::MAX_MESSAGE_BYTES,
            "a full append must fit one message"
        );
        assert!(self.snapshot_every >= 1);
        assert!(
            (1..=MAX_SNAPSHOT_BYTES).contains(&self.max_snapshot_bytes),
            "a snapshot may be at most {MAX_SNAPSHOT_BYTES} bytes"
        );
        assert!(
            (1..=MAX_SNAPSHOT_CHUNK_BYTES).contains(&self.snapshot_chunk_bytes),
            "a snapshot chunk must fit one message: at most {MAX_SNAPSHOT_CHUNK_BYTES} bytes"
        );
        assert!(self.max_sessions >= 1);
        assert!(self.max_pending_reads >= 1);
    }
}
