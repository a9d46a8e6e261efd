//! The state of one simulated run that lives outside every node: disks,
//! clocks, the network (its fault settings, cut links and the copies it
//! holds in flight), fault counters and the trace.
//!
//! It survives node crashes on purpose — a disk outlives its process, and a
//! message outlives its sender — and is shared by the nodes'
//! [`SimEnv`](crate::SimEnv)s and the nemesis. madsim runs a whole
//! simulation on one thread, so a plain mutex never contends.
//!
//! **Fault accounting counts effects, not decisions.** `fired` grows where a
//! fault's effect happens, never where the nemesis decides on it: a lost
//! message when its bytes are dropped, a duplicate when its second copy
//! reaches an inbox, a delay when a copy arrives at least that late, a
//! partition when it refuses a message, a crash when the node boots again
//! as a new incarnation (an unsynced crash only if bytes were lost), a pause
//! when a task spawned on the node could not run until the resume, drift
//! when the node's clock advanced at another rate than real time, a jump
//! when its reading moved forward, a disk fault when bytes changed or a sync
//! failed, a rogue burst when a message reached an inbox. The hidden
//! [`WorldState::disabled`] knob switches one kind's effect off while its
//! decisions are still made; a test shows every kind's count then stays at
//! zero, so an effect that silently stops working fails `cargo test`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringfence::env::{record, NodeId};

use crate::plan::{DiskLoss, FaultKind};
use crate::trace::{Trace, TraceEvent};

/// UDP-style port every simulated node listens on.
pub const PORT: u16 = 7000;

/// madsim's default one-way latency, which the network's delayed copies
/// get on top of their delay.
const LATENCY: std::ops::Range<Duration> = Duration::from_millis(1)..Duration::from_millis(10);

/// Fixed seed-stream labels, so each consumer of randomness gets its own
/// stream and adding draws in one never shifts another.
pub mod stream {
    pub const PLAN: u64 = 1;
    pub const NETWORK: u64 = 2;
    pub const DISK: u64 = 3;
    pub const NODE: u64 = 4;
    pub const CLOCK: u64 = 5;
    pub const CRASH: u64 = 6;
    /// Rogue-message plans (a label no other stream will pick).
    pub const ROGUE: u64 = u64::from_be_bytes(*b"\0\0\0rogue");
    /// Client-crash plans.
    pub const CLIENT_CRASH: u64 = u64::from_be_bytes(*b"\0clcrash");
    /// Which isolations keep the node's clients.
    pub const ISOLATE: u64 = u64::from_be_bytes(*b"isolate\0");
    /// Correlated server crashes (a power loss).
    pub const POWER_LOSS: u64 = u64::from_be_bytes(*b"powerlos");
    /// Which network windows deliver some duplicates late.
    pub const LATE_COPIES: u64 = u64::from_be_bytes(*b"latecopy");
    /// A scenario's per-run protocol settings (e.g. the log's timers).
    pub const SETTINGS: u64 = u64::from_be_bytes(*b"settings");
    /// Whether a crash loses the sync watermark's write-back.
    pub const WRITEBACK: u64 = u64::from_be_bytes(*b"writebak");
    /// Which server loses its disk, and when.
    pub const DISK_LOST: u64 = u64::from_be_bytes(*b"disklost");
    /// Which partitions start as slow links (gray failure).
    pub const GRAY: u64 = u64::from_be_bytes(*b"grayfail");
    /// Whether a moment split fires and whom it keeps together; and, as a
    /// ChaCha stream, the splits a scenario's plan draws.
    pub const SPLIT: u64 = u64::from_be_bytes(*b"\0\0\0split");
    /// Stalls of the node that last reached a moment.
    pub const STALL: u64 = u64::from_be_bytes(*b"\0\0\0stall");
}

/// A ChaCha generator for `(seed, stream, index)`.
pub fn derive_rng(seed: u64, stream: u64, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[0..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&stream.to_le_bytes());
    key[16..24].copy_from_slice(&index.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// The simulated address of a node.
pub fn addr_of(id: NodeId) -> SocketAddr {
    let [_, a, b, c] = id.to_be_bytes();
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, a, b, c)), PORT)
}

/// The node at a simulated address.
pub fn node_of(addr: SocketAddr) -> Option<NodeId> {
    match addr.ip() {
        IpAddr::V4(ip) => {
            let [ten, a, b, c] = ip.octets();
            (ten == 10).then(|| u32::from_be_bytes([0, a, b, c]))
        }
        IpAddr::V6(_) => None,
    }
}

/// A node's clock: `now = anchor_local + (real - anchor_real) * rate`,
/// with the exact history of its rate changes and jumps, so checkers can
/// judge any window of the run from what the clock really did.
#[derive(Debug, Clone)]
pub struct Clock {
    anchor_real: Duration,
    anchor_local: Duration,
    rate: f64,
    changes: Vec<ClockChange>,
}

/// One change of a clock, at real time `at`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClockChange {
    Rate { at: Duration, rate: f64 },
    Jump { at: Duration, forward: Duration },
}

/// What a clock did over a window of real time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockSpan {
    pub min_rate: f64,
    pub max_rate: f64,
    pub jumped: bool,
}

impl Clock {
    fn new(origin: Duration) -> Self {
        Clock {
            anchor_real: Duration::ZERO,
            anchor_local: origin,
            rate: 1.0,
            changes: Vec::new(),
        }
    }

    /// The rates the clock ran at during `[from, to]` of real time, and
    /// whether it jumped then.
    pub fn over(&self, from: Duration, to: Duration) -> ClockSpan {
        let mut rate = 1.0;
        let mut span = ClockSpan {
            min_rate: f64::INFINITY,
            max_rate: 0.0,
            jumped: false,
        };
        for change in &self.changes {
            match *change {
                ClockChange::Rate { at, rate: r } if at <= from => rate = r,
                ClockChange::Rate { at, rate: r } if at <= to => {
                    span.min_rate = span.min_rate.min(r);
                    span.max_rate = span.max_rate.max(r);
                }
                ClockChange::Jump { at, .. } if from <= at && at <= to => span.jumped = true,
                _ => {}
            }
        }
        span.min_rate = span.min_rate.min(rate);
        span.max_rate = span.max_rate.max(rate);
        span
    }

    pub fn now(&self, real: Duration) -> Duration {
        self.anchor_local + (real - self.anchor_real).mul_f64(self.rate)
    }

    /// Real time that passes while this clock advances by `local`.
    pub fn real_for(&self, local: Duration) -> Duration {
        local.div_f64(self.rate)
    }

    /// Changes the rate from `real` on; `true` if the clock ran at another
    /// rate than real time since the last change.
    fn set_rate(&mut self, real: Duration, rate: f64) -> bool {
        let local = self.now(real);
        let drifted = local - self.anchor_local != real - self.anchor_real;
        self.anchor_local = local;
        self.anchor_real = real;
        self.rate = rate;
        self.changes.push(ClockChange::Rate { at: real, rate });
        drifted
    }

    fn jump(&mut self, real: Duration, forward: Duration) {
        self.anchor_local += forward;
        self.changes.push(ClockChange::Jump { at: real, forward });
    }
}

/// A node's disk, framed as the real files are ([`record`]): a file whose
/// first `durable` bytes a completed sync covered, followed by batches
/// written but not yet synced, plus the records appended since the last
/// sync began, which live only in the process's memory.
///
/// Offsets are absolute: a sync makes durable everything written before it
/// began, however syncs overlap, and nothing written after.
///
/// The sync watermark ([`record::Watermark`]) lives beside the file, as on
/// a real disk: rewritten after each sync but fsynced only by compaction
/// and recovery, so a crash (a power loss) keeps either its last fsynced
/// or its last written value. Disk faults damage only what the watermark
/// that survived, or a later valid batch, vouches for: damage past both is
/// a torn write to any recovery (see [`record`]'s module docs).
#[derive(Debug, Default, Clone)]
pub struct Disk {
    file: Vec<u8>,
    durable: usize,
    memory: record::Batch,
    chain: record::Chain,
    /// The watermark as last written, and as last fsynced.
    watermark: record::Watermark,
    watermark_synced: record::Watermark,
    /// Bumped by `rewrite`, so a sync that straddles one does not mistake
    /// the new log's bytes for the ones it was asked to make durable.
    generation: u64,
    /// Records the durable bytes held at the last crash: recovery must
    /// give back at least these, or report corruption.
    synced_records: usize,
    /// Set by an injected write/fsync error: the process must restart.
    failed: bool,
    /// Crashed and not recovered since (recovery runs when the node first
    /// reads its disk, as opening a real file does).
    needs_recovery: bool,
    /// The planted recovery bug, if the scenario switched it on.
    pub bug: Option<record::RecordBug>,
    /// This disk took the place of a lost one.
    replaced: bool,
}

/// Where a sync ends.
#[derive(Debug, Clone, Copy)]
pub struct SyncPoint {
    generation: u64,
    /// Absolute end offset of what it makes durable.
    end: usize,
    /// The chain after its last batch: the watermark once it completes.
    chain: record::Chain,
}

impl SyncPoint {
    /// The file length the sync makes durable.
    pub fn end(&self) -> usize {
        self.end
    }
}

/// A storage failure the disk was told to inject.
pub const INJECTED_FAILURE: &str = "injected write/fsync failure";

/// What a crash did to the bytes after the last sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashDamage {
    /// Unsynced bytes lost (cut off, overwritten, or never written).
    pub lost: usize,
    /// Zeroed or garbage bytes the crash left past the last sync.
    pub junk: usize,
}

/// Zeroed or garbage bytes a crash may leave past the end of what it kept
/// (a size update that reached the disk before the data did).
const MAX_JUNK: usize = 512;

impl Disk {
    pub fn append(&mut self, payload: &[u8]) -> Result<(), record::TooLarge> {
        self.memory.push(payload)
    }

    /// Whether the node holds writes a crash may lose.
    pub fn has_unsynced(&self) -> bool {
        !self.memory.is_empty() || self.durable < self.file.len()
    }

    /// Starts a sync: writes the records appended so far as one batch and
    /// returns what the sync must make durable when it completes.
    pub fn start_sync(&mut self) -> SyncPoint {
        if !self.memory.is_empty() {
            let batch = self.memory.seal(&mut self.chain);
            self.file.extend(batch);
        }
        SyncPoint {
            generation: self.generation,
            end: self.file.len(),
            chain: self.chain,
        }
    }

    /// Completes a sync started at `point`, and marks it in the watermark.
    pub fn finish_sync(&mut self, point: SyncPoint) {
        if point.generation == self.generation {
            self.durable = self.durable.max(point.end);
            let mark = record::Watermark::of(point.chain);
            self.watermark = self.watermark.max(mark);
        }
    }

    /// Whether this is the node's first disk and nothing on it was ever
    /// made durable: what an operator knows of a machine whose
    /// initialization never completed (and of none other).
    pub fn original_and_unused(&self) -> bool {
        !self.replaced && self.durable == 0
    }

    pub fn rewrite(&mut self, records: &[Vec<u8>]) -> Result<(), record::TooLarge> {
        let (bytes, chain) = record::encode_log(records, self.chain)?;
        self.watermark = record::Watermark::of(chain);
        self.watermark_synced = self.watermark;
        self.generation += 1;
        self.file = bytes;
        self.durable = self.file.len();
        self.chain = chain;
        self.memory = record::Batch::default();
        Ok(())
    }

    /// The injected failure, if one happened: the process must restart.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Fails this and every later write until the process restarts.
    pub fn fail(&mut self) {
        self.failed = true;
    }

    /// What a crash leaves: the durable bytes plus, depending on `loss`,
    /// part of what was not yet synced. Records appended but not yet
    /// written count as a sync in flight, except under
    /// [`DiskLoss::LoseUnsynced`]. With `writeback_lost`, the watermark
    /// falls back to its last fsynced value.
    fn crash(&mut self, loss: DiskLoss, rng: &mut ChaCha8Rng, writeback_lost: bool) -> CrashDamage {
        self.failed = false;
        // A disk not opened since the last crash holds nothing new: what
        // it must give back, and its watermark, stay as they were (a disk
        // fault may have damaged it meanwhile).
        let was_running = !std::mem::replace(&mut self.needs_recovery, true);
        if was_running {
            if let Ok(synced) = record::decode(&self.file[..self.durable]) {
                self.synced_records = synced.records.len();
            }
        }
        // Records still in memory are lost unless they count as written.
        let mut unwritten = 0;
        if loss == DiskLoss::LoseUnsynced {
            unwritten = self.memory.records().iter().map(Vec::len).sum();
        } else {
            self.start_sync();
        }
        self.memory = record::Batch::default();
        let tail = self.file.split_off(self.durable);
        let keep = match loss {
            DiskLoss::LoseUnsynced => 0,
            DiskLoss::KeepPrefix => {
                let cuts = batch_boundaries(&tail);
                cuts[rng.gen_range(0..cuts.len())]
            }
            DiskLoss::Torn | DiskLoss::Zeroed | DiskLoss::Garbage => rng.gen_range(0..=tail.len()),
        };
        self.file.extend_from_slice(&tail[..keep]);
        let junk = match loss {
            DiskLoss::Zeroed | DiskLoss::Garbage => {
                // The rest of the tail, and maybe more, reads back as junk.
                let len = (tail.len() - keep).max(rng.gen_range(1..=MAX_JUNK));
                let start = self.file.len();
                self.file.resize(start + len, 0);
                if loss == DiskLoss::Garbage {
                    rng.fill(&mut self.file[start..]);
                }
                len
            }
            _ => 0,
        };
        if was_running && writeback_lost {
            self.watermark = self.watermark_synced;
        }
        CrashDamage {
            lost: unwritten + tail.len() - keep,
            junk,
        }
    }

    /// Flips one bit of the synced bytes that recovery can prove synced:
    /// those before the last batch, or those the watermark covers (the
    /// last batch included); returns the byte offset, or `None` if there
    /// are none.
    pub fn flip_synced_bit(&mut self, rng: &mut ChaCha8Rng) -> Option<usize> {
        let (boundaries, covered) = self.synced_batches()?;
        let proven = boundaries[covered].max(boundaries[boundaries.len() - 2]);
        if proven == 0 {
            return None;
        }
        let bit = rng.gen_range(0..proven * 8);
        self.file[bit / 8] ^= 1 << (bit % 8);
        Some(bit / 8)
    }

    /// Loses synced batches from the end of a crashed node's log, at least
    /// one the watermark covers: cuts it at a batch boundary, or zeroes it
    /// from there (a lost write; a file cut or zeroed by hand). Says what
    /// it did, or `None` if the watermark covers no batch of the file.
    pub fn lose_synced_tail(&mut self, rng: &mut ChaCha8Rng) -> Option<String> {
        let (boundaries, covered) = self.synced_batches()?;
        let cut = *boundaries[..covered].choose(rng)?;
        let lost = self.durable - cut;
        if rng.gen_bool(0.5) {
            self.file[cut..].fill(0);
            Some(format!("{lost} bytes from byte {cut} on read back as zeros"))
        } else {
            self.file.truncate(cut);
            self.durable = cut;
            Some(format!("cut at byte {cut}, {lost} synced bytes gone"))
        }
    }

    /// Where the synced batches of the file start and end (from 0 to
    /// `durable`), and how many of them the watermark covers; `None` if
    /// nothing is synced.
    fn synced_batches(&self) -> Option<(Vec<usize>, usize)> {
        // Only the valid batches: a fault may have damaged the file since.
        let synced = record::decode(&self.file[..self.durable]).ok()?;
        let boundaries = batch_boundaries(&self.file[..synced.valid_len]);
        let batches = boundaries.len() - 1;
        if batches == 0 {
            return None;
        }
        let first_seq = synced.chain.seq - batches as u64;
        let covered = self
            .watermark
            .synced_batches
            .saturating_sub(first_seq)
            .min(batches as u64);
        Some((boundaries, covered as usize))
    }

    /// Recovers the disk if it was not since the last crash (see
    /// [`Disk::recover`]).
    pub fn open(&mut self) -> Result<(), DiskError> {
        if self.needs_recovery {
            self.recover()?;
            self.needs_recovery = false;
        }
        Ok(())
    }

    /// Recovery after a crash, as opening a real file does: drops a torn
    /// tail and truncates it, or reports corruption (the node refuses to
    /// start). A recovery that gives back fewer records than were synced
    /// before the crash is the `synced-record-lost` violation.
    pub fn recover(&mut self) -> Result<(), DiskError> {
        let recovered = record::recover(&self.file, self.watermark, self.bug).map_err(DiskError::Corrupt)?;
        if recovered.records.len() < self.synced_records {
            return Err(DiskError::SyncedRecordLost {
                synced: self.synced_records,
                recovered: recovered.records.len(),
            });
        }
        self.file.truncate(recovered.valid_len);
        // Recovery syncs what it kept and marks it (as the real storage
        // does), so a batch that survived a crash unsynced counts as synced.
        self.durable = self.file.len();
        self.watermark = self.watermark.max(record::Watermark::of(recovered.chain));
        self.watermark_synced = self.watermark;
        self.chain = recovered.chain;
        self.synced_records = recovered.records.len();
        Ok(())
    }

    /// Every record: what the file holds, then what is appended but not
    /// yet written (a live process reads back what it wrote).
    pub fn load(&self) -> Result<Vec<Vec<u8>>, record::CorruptRecord> {
        let mut records = record::decode(&self.file)?.records;
        records.extend(self.memory.records());
        Ok(records)
    }
}

/// Why a node's disk cannot be used at boot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskError {
    /// Damage recovery detected: the node must refuse to start.
    #[error(transparent)]
    Corrupt(record::CorruptRecord),
    /// Recovery silently dropped synced records: a simulator-detected
    /// violation, never a correct outcome.
    #[error("recovery gave back {recovered} records, but {synced} were synced before the crash")]
    SyncedRecordLost { synced: usize, recovered: usize },
}

/// Offsets at which a framed log can be cut between whole batches (always
/// includes 0).
fn batch_boundaries(bytes: &[u8]) -> Vec<usize> {
    let mut cuts = vec![0];
    let mut offset = 0;
    while offset + record::HEADER_BYTES <= bytes.len() {
        let len = u32::from_le_bytes(bytes[offset + 24..offset + 28].try_into().expect("4 bytes")) as usize;
        offset += record::HEADER_BYTES + len;
        if offset > bytes.len() {
            break;
        }
        cuts.push(offset);
    }
    cuts
}

/// Per-node state the world keeps.
#[derive(Debug)]
pub struct NodeState {
    pub madsim_id: Option<madsim::task::NodeId>,
    pub clock: Clock,
    pub disk: Disk,
    /// Bumped at every (re)start; old tasks never see the new incarnation.
    pub incarnation: u64,
    rng_draws: u64,
    pub down: bool,
    pub paused: bool,
    /// The crash kind that killed the running incarnation, counted when the
    /// node boots again (the crash's effect); `None` for a crash that does
    /// not count (an unsynced crash that lost no bytes).
    pub killed_by: Option<FaultKind>,
}

/// Message faults in force on the whole network.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NetFaults {
    pub loss: f64,
    pub duplicate: f64,
    pub delay: f64,
    pub max_delay: Duration,
    /// Non-zero: half the second copies, and a quarter of the delayed
    /// messages, arrive between `max_delay` and this late.
    pub late: Duration,
}

/// What the network layer decided for one message.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub id: u64,
    pub drop: bool,
    /// Extra delay for the first copy and, if duplicated, the second.
    pub delays: [Option<Duration>; 2],
}

/// A copy of a message the network holds: delayed copies travel as tasks on
/// the network's own node, so they outlive a crashed sender and keep moving
/// while it is paused.
#[derive(Debug)]
pub struct InFlight {
    pub from: NodeId,
    pub to: NodeId,
    pub id: u64,
    /// 0 for the original, 1 for a duplicate.
    pub copy: u8,
    /// When it was sent, and how long the network holds it (its delay
    /// plus latency).
    pub sent_at: Duration,
    pub late: Duration,
    pub bytes: Vec<u8>,
}

/// A crash a node's own actions asked for (an unsynced or moment crash);
/// the nemesis carries it out as soon as the node yields.
#[derive(Debug, Clone)]
pub struct CrashRequest {
    pub node: NodeId,
    /// The plan fault that asked for it.
    pub index: usize,
    pub kind: FaultKind,
    pub down: Duration,
    /// What the node had just done, for the trace.
    pub why: String,
}

/// A moment-crash window in force.
#[derive(Debug, Clone)]
pub struct MomentWindow {
    pub moment: String,
    pub after_sends: u32,
    pub probability: f64,
    pub down: Duration,
}

/// A moment-split window in force ([`crate::plan::Fault::MomentSplit`]).
#[derive(Debug, Clone)]
pub struct SplitWindow {
    pub moment: String,
    /// A moment some server must reach first (empty: none).
    pub after: String,
    pub with: u32,
    pub probability: f64,
    pub split: Duration,
}

/// A moment-split window and where it stands.
#[derive(Debug, Clone)]
pub struct SplitState {
    pub window: SplitWindow,
    /// Whether its `after` moment was reached since it began or last split.
    pub primed: bool,
    /// Whether a split it set off is in force.
    pub splitting: bool,
}

impl SplitState {
    pub fn new(window: SplitWindow) -> Self {
        let primed = window.after.is_empty();
        SplitState {
            window,
            primed,
            splitting: false,
        }
    }
}

/// A split a moment set off: its links are cut already; the nemesis notes
/// it and heals it after `split`.
#[derive(Debug, Clone)]
pub struct SplitRequest {
    /// The plan fault that set it off.
    pub index: usize,
    pub links: Vec<(NodeId, NodeId)>,
    pub split: Duration,
    /// Who was split from whom, for the trace.
    pub why: String,
}

/// A node that reached an aimed-at moment: it crashes once `sends_left`
/// more messages to servers have gone out.
#[derive(Debug, Clone)]
struct Armed {
    index: usize,
    window: MomentWindow,
    sends_left: u32,
}

/// The run's shared state.
pub struct WorldState {
    pub seed: u64,
    pub nodes: BTreeMap<NodeId, NodeState>,
    pub net: NetFaults,
    net_rng: ChaCha8Rng,
    disk_rng: ChaCha8Rng,
    writeback_rng: ChaCha8Rng,
    next_message: u64,
    /// Faults that actually took effect, by kind.
    pub fired: BTreeMap<FaultKind, u64>,
    pub trace: Trace,
    /// Messages delivered to a node's inbox; the bench compares it to madsim.
    pub delivered: u64,
    /// The unsynced-crash fault in force: (plan index, probability, down time).
    pub unsynced_crash: Option<(usize, f64, Duration)>,
    crash_rng: ChaCha8Rng,
    /// Crashes servers asked for; the nemesis carries them out as soon as
    /// the node yields.
    pub crash_requests: Vec<CrashRequest>,
    /// Moment-crash windows in force, by plan index.
    pub moment_windows: BTreeMap<usize, MomentWindow>,
    /// Moment-split windows in force, by plan index.
    pub split_windows: BTreeMap<usize, SplitState>,
    split_rng: ChaCha8Rng,
    /// Splits moments set off, for the nemesis to note and heal.
    pub split_requests: Vec<SplitRequest>,
    armed: BTreeMap<NodeId, Armed>,
    /// Each moment's last server to reach it: whom [`crate::plan::Fault::Isolate`]
    /// cuts off.
    last_at_moment: BTreeMap<String, NodeId>,
    pub crash_wakeup: Arc<tokio::sync::Notify>,
    /// Servers: the nodes an unsynced-crash may hit.
    pub servers: Vec<NodeId>,
    /// Role name → the nodes playing it now, as the scenario publishes
    /// them; aimed faults fire at these.
    pub roles: BTreeMap<String, Vec<NodeId>>,
    /// Named situations aimed faults brought about, by name.
    pub situations: BTreeMap<String, u64>,
    /// Extra delay on every message over a directed link.
    pub link_delay: BTreeMap<(NodeId, NodeId), Duration>,
    /// An armed crash: (node, plan index, down time), carried out at the
    /// node's next disk append.
    pub crash_on_append: Option<(NodeId, usize, Duration)>,
    /// An armed write/fsync failure: (node, plan index, down time),
    /// carried out at the node's next sync.
    pub disk_error: Option<(NodeId, usize, Duration)>,
    /// Each running node's inbox, where rogue messages and late copies are
    /// put ([`WorldState::inject`], [`WorldState::deliver_late`]).
    pub inboxes: BTreeMap<NodeId, Inbox>,
    /// Directed links partitions cut now: for each, the plan index and
    /// kind of every fault cutting it (cut while any does).
    cut: BTreeMap<(NodeId, NodeId), BTreeMap<usize, FaultKind>>,
    /// Partition faults that refused at least one message.
    refused_by: std::collections::BTreeSet<usize>,
    /// The madsim node the network's in-flight copies run on; it is never
    /// killed or paused.
    pub network: Option<madsim::runtime::NodeHandle>,
    /// Test knob: this kind's effect is not carried out, though every
    /// decision about it is still made (see the module docs).
    #[doc(hidden)]
    pub disabled: Option<FaultKind>,
}

/// The sending side of a node incarnation's inbox: `(from, bytes)`.
pub type Inbox = tokio::sync::mpsc::UnboundedSender<(NodeId, Vec<u8>)>;

/// Cheap handle to a run's [`WorldState`].
#[derive(Clone)]
pub struct World(Arc<Mutex<WorldState>>);

impl World {
    pub fn new(seed: u64, nodes: &[NodeId], servers: &[NodeId], trace: Trace) -> Self {
        let mut clock_rng = derive_rng(seed, stream::CLOCK, 0);
        let nodes = nodes
            .iter()
            .map(|&id| {
                // Clocks start at unrelated origins: comparing two nodes'
                // readings is a bug the simulator should expose.
                let origin = Duration::from_millis(clock_rng.gen_range(0..1_000_000));
                let state = NodeState {
                    madsim_id: None,
                    clock: Clock::new(origin),
                    disk: Disk::default(),
                    incarnation: 0,
                    rng_draws: 0,
                    down: false,
                    paused: false,
                    killed_by: None,
                };
                (id, state)
            })
            .collect();
        World(Arc::new(Mutex::new(WorldState {
            seed,
            nodes,
            net: NetFaults::default(),
            net_rng: derive_rng(seed, stream::NETWORK, 0),
            disk_rng: derive_rng(seed, stream::DISK, 0),
            writeback_rng: derive_rng(seed, stream::WRITEBACK, 0),
            next_message: 0,
            fired: BTreeMap::new(),
            trace,
            delivered: 0,
            unsynced_crash: None,
            crash_rng: derive_rng(seed, stream::CRASH, 0),
            crash_requests: Vec::new(),
            moment_windows: BTreeMap::new(),
            split_windows: BTreeMap::new(),
            split_rng: derive_rng(seed, stream::SPLIT, 0),
            split_requests: Vec::new(),
            armed: BTreeMap::new(),
            last_at_moment: BTreeMap::new(),
            crash_wakeup: Arc::new(tokio::sync::Notify::new()),
            servers: servers.to_vec(),
            roles: BTreeMap::new(),
            situations: BTreeMap::new(),
            link_delay: BTreeMap::new(),
            crash_on_append: None,
            disk_error: None,
            inboxes: BTreeMap::new(),
            cut: BTreeMap::new(),
            refused_by: Default::default(),
            network: None,
            disabled: None,
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, WorldState> {
        // A panic in a node aborts the whole run, so poisoning carries no
        // extra information here.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Simulated real time since the run began.
pub fn elapsed() -> Duration {
    madsim::time::TimeHandle::current().elapsed()
}

impl WorldState {
    pub fn node(&mut self, id: NodeId) -> &mut NodeState {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("node {id} is not part of this run"))
    }

    pub fn count(&mut self, kind: FaultKind) {
        *self.fired.entry(kind).or_default() += 1;
    }

    pub fn event(&mut self, event: TraceEvent) {
        self.trace.record(elapsed(), event);
    }

    /// A fresh rng for `id`'s current incarnation.
    pub fn node_rng(&mut self, id: NodeId) -> ChaCha8Rng {
        let seed = self.seed;
        let node = self.node(id);
        node.rng_draws += 1;
        let index = (u64::from(id) << 40) ^ (node.incarnation << 24) ^ node.rng_draws;
        derive_rng(seed, stream::NODE, index)
    }

    /// Whether `kind`'s effect is switched off (the test knob).
    pub fn effect_off(&self, kind: FaultKind) -> bool {
        self.disabled == Some(kind)
    }

    /// Cuts (or restores) the directed link `from → to` for plan fault
    /// `index` of `kind`. Sends on a cut link are refused
    /// ([`WorldState::refused`]).
    pub fn cut_link(&mut self, from: NodeId, to: NodeId, index: usize, kind: FaultKind, cut: bool) {
        let faults = self.cut.entry((from, to)).or_default();
        if cut {
            faults.insert(index, kind);
        } else {
            faults.remove(&index);
            if faults.is_empty() {
                self.cut.remove(&(from, to));
            }
        }
    }

    /// Restores every link.
    pub fn uncut_all(&mut self) {
        self.cut.clear();
    }

    /// Whether a partition refuses a message on `from → to` now; counts
    /// each partition fault the first time it refuses one (its effect).
    pub fn refused(&mut self, from: NodeId, to: NodeId) -> bool {
        let Some(faults) = self.cut.get(&(from, to)) else {
            return false;
        };
        let cutting: Vec<(usize, FaultKind)> = faults
            .iter()
            .map(|(&i, &k)| (i, k))
            .filter(|&(_, k)| !self.effect_off(k))
            .collect();
        for &(index, kind) in &cutting {
            if self.refused_by.insert(index) {
                self.count(kind);
            }
        }
        !cutting.is_empty()
    }

    /// Decides the fate of one message: refused by a partition, or lost,
    /// duplicated and delayed under the current network faults. A loss is
    /// counted here, where its bytes are dropped; a duplicate and a delay
    /// where their copy is delivered.
    pub fn route(&mut self, from: NodeId, to: NodeId, bytes: &[u8]) -> Delivery {
        let id = self.next_message;
        self.next_message += 1;
        let net = self.net;
        let mut delivery = Delivery {
            id,
            drop: false,
            delays: [Some(Duration::ZERO), None],
        };
        if self.refused(from, to) {
            delivery.drop = true;
        } else if net != NetFaults::default() {
            let rng = &mut self.net_rng;
            // Past every ordinary delay: seconds late, as a message that sat
            // in a queue or a retransmission buffer arrives.
            let late = |rng: &mut ChaCha8Rng, odds: f64| {
                (net.late > net.max_delay && rng.gen_bool(odds)).then(|| rng.gen_range(net.max_delay..net.late))
            };
            let extra = |rng: &mut ChaCha8Rng| {
                if net.delay > 0.0 && rng.gen_bool(net.delay) && !net.max_delay.is_zero() {
                    Some(late(rng, 0.25).unwrap_or_else(|| rng.gen_range(Duration::ZERO..net.max_delay)))
                } else {
                    Some(Duration::ZERO)
                }
            };
            let lost = net.loss > 0.0 && rng.gen_bool(net.loss);
            delivery.delays[0] = extra(rng);
            if net.duplicate > 0.0 && rng.gen_bool(net.duplicate) {
                delivery.delays[1] = late(rng, 0.5).or_else(|| extra(rng));
            }
            if lost && !self.effect_off(FaultKind::MessageLoss) {
                delivery.drop = true;
                self.count(FaultKind::MessageLoss);
            }
        }
        if let Some(&late) = self.link_delay.get(&(from, to)) {
            for d in delivery.delays.iter_mut().flatten() {
                *d += late;
            }
        }
        // A delayed copy bypasses madsim, so it gets madsim's latency too.
        for d in delivery.delays.iter_mut().flatten().filter(|d| !d.is_zero()) {
            *d += self.net_rng.gen_range(LATENCY);
        }
        self.event(TraceEvent::Send {
            from,
            to,
            id,
            len: bytes.len(),
            digest: crate::trace::digest(bytes),
            dropped: delivery.drop,
        });
        delivery
    }

    /// Counts what a copy reaching `to`'s inbox shows: a duplicate if it is
    /// the second copy, a delay if it arrived at least `late` after it was
    /// sent.
    pub fn delivered_copy(&mut self, to: NodeId, from: NodeId, id: u64, copy: u8, sent_at: Duration, late: Duration) {
        self.delivered += 1;
        if copy == 1 {
            self.count(FaultKind::MessageDuplicate);
        }
        if !late.is_zero() && elapsed() >= sent_at + late {
            self.count(FaultKind::MessageDelay);
        }
        self.event(TraceEvent::Deliver { to, from, id });
    }

    /// Hands a delayed copy to the network: it waits on the network's own
    /// node, then goes through [`WorldState::deliver_late`].
    pub fn send_late(&mut self, world: World, copy: InFlight) {
        let network = self.network.as_ref().expect("the runner starts the network node");
        let wait = if self.effect_off(FaultKind::MessageDelay) {
            Duration::ZERO
        } else {
            copy.late
        };
        network.spawn(async move {
            madsim::time::sleep(wait).await;
            world.lock().deliver_late(copy);
        });
    }

    /// Delivers a delayed copy to whichever incarnation of its receiver runs
    /// now, unless a partition cuts the link or the receiver is down. A
    /// paused receiver finds it in its inbox when it resumes.
    pub fn deliver_late(&mut self, copy: InFlight) {
        let InFlight {
            from,
            to,
            id,
            copy,
            sent_at,
            late,
            bytes,
        } = copy;
        if self.refused(from, to) || self.node(to).down {
            return;
        }
        let Some(inbox) = self.inboxes.get(&to) else { return };
        if inbox.send((from, bytes)).is_ok() {
            self.delivered_copy(to, from, id, copy, sent_at, late);
        }
    }

    /// Puts `bytes` in `to`'s inbox as if `from` had sent them, past every
    /// link fault (the forger sits inside the network). `false` if `to` is
    /// not running.
    pub fn inject(&mut self, from: NodeId, to: NodeId, bytes: Vec<u8>) -> bool {
        if self.node(to).down || self.effect_off(FaultKind::Rogue) {
            return false;
        }
        let (len, digest) = (bytes.len(), crate::trace::digest(&bytes));
        let Some(inbox) = self.inboxes.get(&to) else {
            return false;
        };
        if inbox.send((from, bytes)).is_err() {
            return false;
        }
        let id = self.next_message;
        self.next_message += 1;
        self.delivered += 1;
        self.event(TraceEvent::Send {
            from,
            to,
            id,
            len,
            digest,
            dropped: false,
        });
        self.event(TraceEvent::Deliver { to, from, id });
        true
    }

    pub fn next_message_id(&self) -> u64 {
        self.next_message
    }

    /// Called after `id` sent a message: if an unsynced-crash fault is in
    /// force and `id` is a server with unsynced writes, maybe ask the
    /// nemesis to crash it.
    pub fn after_send(&mut self, id: NodeId) {
        let Some((index, probability, down)) = self.unsynced_crash else {
            return;
        };
        if !self.servers.contains(&id) || !self.node(id).disk.has_unsynced() || self.node(id).down {
            return;
        }
        if self.crash_rng.gen_bool(probability) && !self.crash_requested(id) {
            let why = "sent while holding unsynced writes".into();
            self.request_crash(id, index, FaultKind::UnsyncedCrash, down, why);
        }
    }

    fn crash_requested(&self, id: NodeId) -> bool {
        self.crash_requests.iter().any(|r| r.node == id)
    }

    fn request_crash(&mut self, node: NodeId, index: usize, kind: FaultKind, down: Duration, why: String) {
        self.crash_requests.push(CrashRequest {
            node,
            index,
            kind,
            down,
            why,
        });
        self.crash_wakeup.notify_one();
    }

    /// A server reports that it reached `moment`; a moment-split window in
    /// force for it may split it off at once, and a moment-crash window may
    /// arm a crash a few sends later.
    pub fn moment(&mut self, id: NodeId, moment: &str) {
        match self.last_at_moment.get_mut(moment) {
            Some(last) => *last = id,
            None => {
                self.last_at_moment.insert(moment.to_string(), id);
            }
        }
        if !self.servers.contains(&id) || self.node(id).down {
            return;
        }
        self.split_at_moment(id, moment);
        if self.armed.contains_key(&id) || self.crash_requested(id) {
            return;
        }
        let windows: Vec<(usize, MomentWindow)> = self
            .moment_windows
            .iter()
            .filter(|(_, w)| w.moment == moment)
            .map(|(&i, w)| (i, w.clone()))
            .collect();
        for (index, window) in windows {
            if self.crash_rng.gen_bool(window.probability) {
                let sends_left = window.after_sends;
                self.armed.insert(
                    id,
                    Armed {
                        index,
                        window,
                        sends_left,
                    },
                );
                return;
            }
        }
    }

    /// Splits `id`, which just reached `moment`, with some other servers
    /// from the rest, if a window in force for `moment` has no split in
    /// force and its draw says so. The links are cut before `id` sends
    /// anything more.
    fn split_at_moment(&mut self, id: NodeId, moment: &str) {
        for state in self.split_windows.values_mut() {
            state.primed |= state.window.after == moment;
        }
        let Some((&index, state)) = self
            .split_windows
            .iter()
            .find(|(_, s)| s.primed && !s.splitting && s.window.moment == moment)
        else {
            return;
        };
        if !self.split_rng.gen_bool(state.window.probability) {
            return;
        }
        let window = state.window.clone();
        // Its side is drawn from the servers it can reach now.
        let up = |n: &NodeId| self.nodes.get(n).is_some_and(|s| !s.down);
        let (mut reachable, unreachable): (Vec<NodeId>, Vec<NodeId>) = self
            .servers
            .iter()
            .copied()
            .filter(|&n| n != id)
            .partition(|n| up(n) && !self.cut.contains_key(&(id, *n)));
        reachable.shuffle(&mut self.split_rng);
        let with = (window.with as usize).min(reachable.len());
        let side: Vec<NodeId> = std::iter::once(id).chain(reachable[..with].iter().copied()).collect();
        let rest: Vec<NodeId> = reachable[with..].iter().chain(&unreachable).copied().collect();
        let links: Vec<(NodeId, NodeId)> = side
            .iter()
            .flat_map(|&a| rest.iter().flat_map(move |&b| [(a, b), (b, a)]))
            .collect();
        for &(a, b) in &links {
            self.cut_link(a, b, index, FaultKind::Isolate, true);
        }
        if let Some(state) = self.split_windows.get_mut(&index) {
            state.splitting = true;
            state.primed = window.after.is_empty();
        }
        let why = format!("{moment} moment: servers {side:?} split from {rest:?}");
        self.split_requests.push(SplitRequest {
            index,
            links,
            split: window.split,
            why,
        });
        self.crash_wakeup.notify_one();
    }

    /// Whether `from` may send to `to` now: a server armed to crash before
    /// its next message to a server crashes instead, and a server whose
    /// moment crash was requested sends nothing more (it is dying at an
    /// exact point).
    pub fn may_send(&mut self, from: NodeId, to: NodeId) -> bool {
        let dying = |r: &CrashRequest| r.node == from && r.kind == FaultKind::MomentCrash;
        if self.crash_requests.iter().any(dying) {
            return false;
        }
        if self.servers.contains(&to) && self.armed.get(&from).is_some_and(|a| a.sends_left == 0) {
            self.fire_armed(from);
            return false;
        }
        true
    }

    /// Counts a message `from` sent to `to` against its armed crash.
    pub fn sent(&mut self, from: NodeId, to: NodeId) {
        if !self.servers.contains(&to) {
            return;
        }
        let Some(armed) = self.armed.get_mut(&from) else {
            return;
        };
        armed.sends_left = armed.sends_left.saturating_sub(1);
        if armed.sends_left == 0 {
            self.fire_armed(from);
        }
    }

    fn fire_armed(&mut self, id: NodeId) {
        let armed = self.armed.remove(&id).expect("armed");
        let w = armed.window;
        let why = format!("{} moment, after {} sends to servers", w.moment, w.after_sends);
        self.request_crash(id, armed.index, FaultKind::MomentCrash, w.down, why);
    }

    /// The live server that last reached `moment`.
    pub fn last_up_at(&mut self, moment: &str) -> Option<NodeId> {
        let last = *self.last_at_moment.get(moment)?;
        (!self.node(last).down).then_some(last)
    }

    /// Forgets what a crashed process was armed to do.
    pub fn disarm(&mut self, id: NodeId) {
        self.armed.remove(&id);
    }

    /// Ends every moment-crash and moment-split window and arm.
    pub fn clear_role_faults(&mut self) {
        self.moment_windows.clear();
        self.split_windows.clear();
        self.split_requests.clear();
        self.armed.clear();
    }

    /// Applies a crash to `id`'s disk; returns what it did to the
    /// unsynced bytes.
    pub fn crash_disk(&mut self, id: NodeId, loss: DiskLoss) -> CrashDamage {
        let loss = match loss {
            DiskLoss::Zeroed | DiskLoss::Garbage if self.effect_off(FaultKind::DiskTail) => DiskLoss::Torn,
            loss => loss,
        };
        let WorldState {
            nodes,
            disk_rng,
            writeback_rng,
            ..
        } = self;
        let node = nodes.get_mut(&id).expect("known node");
        let damage = node.disk.crash(loss, disk_rng, writeback_rng.gen_bool(0.5));
        if damage.junk > 0 {
            self.count(FaultKind::DiskTail);
        }
        damage
    }

    /// Damages `id`'s synced records as `kind` says (a bit flip, or
    /// synced batches lost from the end); what it did, if the disk held
    /// anything it could damage.
    pub fn damage_disk(&mut self, id: NodeId, kind: FaultKind) -> Option<String> {
        if self.effect_off(kind) {
            return None;
        }
        let WorldState { nodes, disk_rng, .. } = self;
        let disk = &mut nodes.get_mut(&id).expect("known node").disk;
        let damage = match kind {
            FaultKind::BitFlip => disk
                .flip_synced_bit(disk_rng)
                .map(|offset| format!("bit flip on node {id}'s disk at byte {offset}")),
            FaultKind::LostWrite => disk
                .lose_synced_tail(disk_rng)
                .map(|loss| format!("node {id}'s disk lost synced batches: {loss}")),
            FaultKind::DiskLost => {
                let held = disk.file.len();
                *disk = Disk {
                    bug: disk.bug,
                    replaced: true,
                    ..Disk::default()
                };
                Some(format!("node {id}'s disk ({held} bytes) replaced by an empty one"))
            }
            other => unreachable!("{other} does not damage synced records"),
        };
        if damage.is_some() {
            self.count(kind);
        }
        damage
    }

    /// Called as `id` starts a sync: carries out an armed write/fsync
    /// failure. The sync fails, the storage refuses further writes, and the
    /// process fail-stops (the nemesis kills it as soon as it yields and a
    /// supervisor restarts it `down` later). `true` if the sync must fail.
    pub fn sync_fails(&mut self, id: NodeId) -> bool {
        if self.node(id).disk.failed() {
            return true;
        }
        let Some((node, index, down)) = self.disk_error.filter(|a| a.0 == id) else {
            return false;
        };
        self.disk_error = None;
        if self.effect_off(FaultKind::DiskError) {
            return false;
        }
        self.node(node).disk.fail();
        self.count(FaultKind::DiskError);
        let why = "a write or fsync failed".to_string();
        self.request_crash(node, index, FaultKind::DiskError, down, why);
        true
    }

    /// Sets `id`'s clock rate; counts drift if, since the last change, the
    /// clock advanced at another rate than real time.
    pub fn set_clock_rate(&mut self, id: NodeId, rate: f64) {
        let now = elapsed();
        if self.node(id).clock.set_rate(now, rate) {
            self.count(FaultKind::ClockDrift);
        }
    }

    /// Jumps `id`'s clock forward; counted if its reading moved that far.
    pub fn jump_clock(&mut self, id: NodeId, forward: Duration) {
        if self.effect_off(FaultKind::ClockJump) {
            return;
        }
        let now = elapsed();
        let clock = &mut self.node(id).clock;
        let before = clock.now(now);
        clock.jump(now, forward);
        if clock.now(now) >= before + forward {
            self.count(FaultKind::ClockJump);
        }
    }

    /// Replaces the published roles and wakes the nemesis, which may have
    /// aimed faults waiting for one of them.
    pub fn set_roles(&mut self, roles: BTreeMap<String, Vec<NodeId>>) {
        if self.roles != roles {
            self.roles = roles;
            self.crash_wakeup.notify_one();
        }
    }

    pub fn count_situation(&mut self, situation: &str) {
        *self.situations.entry(situation.to_string()).or_default() += 1;
    }

    /// Called after `id` appended to its disk: carries out an armed
    /// crash-on-append (the nemesis kills it as soon as it yields, before
    /// its sync completes).
    pub fn after_append(&mut self, id: NodeId) {
        if let Some((node, index, down)) = self.crash_on_append.filter(|a| a.0 == id) {
            self.crash_on_append = None;
            self.request_crash(
                node,
                index,
                FaultKind::UnsyncedCrash,
                down,
                "crash at its next append".to_string(),
            );
            self.crash_wakeup.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk_with(synced: &[&[u8]], unsynced: &[&[u8]]) -> Disk {
        let mut disk = Disk::default();
        for r in synced {
            disk.append(r).unwrap();
        }
        let point = disk.start_sync();
        disk.finish_sync(point);
        for r in unsynced {
            disk.append(r).unwrap();
        }
        disk
    }

    fn owned(records: &[&[u8]]) -> Vec<Vec<u8>> {
        records.iter().map(|r| r.to_vec()).collect()
    }

    fn crash_and_recover(disk: &mut Disk, loss: DiskLoss, seed: u64) -> Result<Vec<Vec<u8>>, DiskError> {
        disk.crash(loss, &mut derive_rng(seed, 0, 0), false);
        disk.recover()?;
        Ok(disk.load().unwrap())
    }

    #[test]
    fn a_crash_keeps_exactly_the_synced_records_when_it_loses_the_tail() {
        let mut disk = disk_with(&[b"a", b"b"], &[b"c"]);
        let got = crash_and_recover(&mut disk, DiskLoss::LoseUnsynced, 0).unwrap();
        assert_eq!(got, owned(&[b"a", b"b"]));
    }

    #[test]
    fn every_crash_loss_keeps_synced_records_and_invents_none() {
        let all = owned(&[b"a", b"bb", b"ccc", b"dddd"]);
        for seed in 0..200 {
            for loss in [
                DiskLoss::KeepPrefix,
                DiskLoss::Torn,
                DiskLoss::Zeroed,
                DiskLoss::Garbage,
            ] {
                let mut disk = disk_with(&[b"a"], &[b"bb"]);
                disk.start_sync(); // written, never synced
                disk.append(b"ccc").unwrap();
                disk.start_sync();
                disk.append(b"dddd").unwrap();
                let got = crash_and_recover(&mut disk, loss, seed).unwrap();
                assert!(
                    !got.is_empty() && got[..] == all[..got.len()],
                    "{loss:?} seed {seed}: {got:?}"
                );
                // After recovery the log is clean: appends and syncs work on.
                disk.append(b"e").unwrap();
                let point = disk.start_sync();
                disk.finish_sync(point);
                let got = crash_and_recover(&mut disk, DiskLoss::LoseUnsynced, seed).unwrap();
                assert_eq!(got.last().unwrap(), b"e");
            }
        }
    }

    #[test]
    fn a_sync_started_before_more_appends_covers_only_what_came_before() {
        let mut disk = disk_with(&[], &[b"a"]);
        let point = disk.start_sync();
        disk.append(b"b").unwrap();
        disk.finish_sync(point);
        let got = crash_and_recover(&mut disk, DiskLoss::LoseUnsynced, 0).unwrap();
        assert_eq!(got, owned(&[b"a"]));
    }

    /// Two overlapping syncs: the second to start finishes second. With
    /// lengths relative to the unsynced tail, the second one used to drain
    /// bytes written after it began, making "c" durable though no sync
    /// covered it.
    #[test]
    fn overlapping_syncs_make_durable_only_what_each_covered() {
        let mut disk = disk_with(&[], &[b"a"]);
        let first = disk.start_sync();
        disk.append(b"b").unwrap();
        let second = disk.start_sync();
        disk.append(b"c").unwrap();
        disk.start_sync(); // a third sync, still in flight at the crash
        disk.finish_sync(first);
        disk.finish_sync(second);
        let got = crash_and_recover(&mut disk, DiskLoss::LoseUnsynced, 0).unwrap();
        assert_eq!(got, owned(&[b"a", b"b"]));
    }

    #[test]
    fn a_sync_that_straddles_a_rewrite_does_not_sync_the_new_tail() {
        let mut disk = disk_with(&[], &[b"old"]);
        let point = disk.start_sync();
        disk.rewrite(&[b"snapshot".to_vec()]).unwrap();
        disk.append(b"new").unwrap();
        disk.start_sync();
        disk.finish_sync(point);
        let got = crash_and_recover(&mut disk, DiskLoss::LoseUnsynced, 0).unwrap();
        assert_eq!(got, owned(&[b"snapshot"]));
    }

    /// What recovery made of one hostile-disk fault after a crash, over
    /// many seeds (the crash keeps or loses the watermark's write-back):
    /// how often the fault found something to damage, and each outcome.
    fn disk_fault_outcomes(
        bug: Option<record::RecordBug>,
        build: impl Fn() -> Disk,
        fault: impl Fn(&mut Disk, &mut ChaCha8Rng) -> bool,
    ) -> (usize, Vec<Result<(), DiskError>>) {
        let mut struck = 0;
        let mut outcomes = Vec::new();
        for seed in 0..100 {
            let mut disk = build();
            disk.bug = bug;
            disk.crash(DiskLoss::LoseUnsynced, &mut derive_rng(seed, 0, 0), seed % 2 == 1);
            if fault(&mut disk, &mut derive_rng(seed, 1, 0)) {
                struck += 1;
                outcomes.push(disk.recover());
            }
        }
        (struck, outcomes)
    }

    fn three_synced_batches() -> Disk {
        let mut disk = disk_with(&[b"a", b"b"], &[]);
        for r in [b"c", b"d"] {
            disk.append(r).unwrap();
            let point = disk.start_sync();
            disk.finish_sync(point);
        }
        disk
    }

    fn flip(disk: &mut Disk, rng: &mut ChaCha8Rng) -> bool {
        disk.flip_synced_bit(rng).is_some()
    }

    fn lose_tail(disk: &mut Disk, rng: &mut ChaCha8Rng) -> bool {
        disk.lose_synced_tail(rng).is_some()
    }

    fn lost(outcome: &Result<(), DiskError>) -> bool {
        matches!(outcome, Err(DiskError::SyncedRecordLost { .. }))
    }

    /// A flip recovery can prove synced is always refused. The old rule
    /// (any damage a torn tail) loses records where only a later batch,
    /// not the watermark, vouches for the damaged one.
    #[test]
    fn a_flipped_synced_bit_is_refused_and_the_old_rule_loses_records() {
        let (struck, outcomes) = disk_fault_outcomes(None, three_synced_batches, flip);
        assert_eq!(struck, 100);
        assert!(
            outcomes.iter().all(|o| matches!(o, Err(DiskError::Corrupt(_)))),
            "{outcomes:?}"
        );
        let old = Some(record::RecordBug::AnyDamageIsTornTail);
        let (_, outcomes) = disk_fault_outcomes(old, three_synced_batches, flip);
        assert!(outcomes.iter().any(lost), "{outcomes:?}");
        // Nothing synced: nothing to flip.
        let mut disk = disk_with(&[], &[b"a"]);
        disk.crash(DiskLoss::LoseUnsynced, &mut derive_rng(0, 0, 0), false);
        assert_eq!(disk.flip_synced_bit(&mut derive_rng(0, 0, 0)), None);
    }

    /// With one synced batch only the watermark can vouch for it: a flip
    /// strikes only when its write-back survived, and is then refused;
    /// recovery that ignores the watermark loses the batch.
    #[test]
    fn a_flip_in_the_last_synced_batch_is_refused_while_the_watermark_covers_it() {
        let one_batch = || disk_with(&[b"a", b"b"], &[]);
        let (struck, outcomes) = disk_fault_outcomes(None, one_batch, flip);
        assert!(struck > 20 && struck < 80, "struck {struck} of 100");
        assert!(
            outcomes.iter().all(|o| matches!(o, Err(DiskError::Corrupt(_)))),
            "{outcomes:?}"
        );
        let ignores = Some(record::RecordBug::IgnoresWatermark);
        let (_, outcomes) = disk_fault_outcomes(ignores, one_batch, flip);
        assert!(outcomes.iter().all(lost), "{outcomes:?}");
    }

    #[test]
    fn a_lost_synced_tail_is_refused_and_unnoticed_without_the_watermark() {
        let compacted = || {
            let mut disk = three_synced_batches();
            disk.rewrite(&[b"snapshot".to_vec()]).unwrap();
            disk.append(b"e").unwrap();
            let point = disk.start_sync();
            disk.finish_sync(point);
            disk
        };
        let (struck, outcomes) = disk_fault_outcomes(None, compacted, lose_tail);
        // The compaction fsynced the watermark: it always covers a batch.
        assert_eq!(struck, 100);
        for outcome in &outcomes {
            assert!(
                matches!(outcome, Err(DiskError::Corrupt(e)) if e.reason.contains("watermark")),
                "{outcome:?}"
            );
        }
        let ignores = Some(record::RecordBug::IgnoresWatermark);
        let (_, outcomes) = disk_fault_outcomes(ignores, compacted, lose_tail);
        assert!(outcomes.iter().all(lost), "{outcomes:?}");
    }

    /// Whole batches that survived a crash unsynced are synced and marked
    /// by recovery: damage to them afterwards is refused, not dropped.
    #[test]
    fn recovery_marks_what_it_kept() {
        let mut disk = disk_with(&[b"a"], &[b"b"]);
        disk.start_sync(); // written, never synced
        disk.crash(DiskLoss::KeepPrefix, &mut derive_rng(1, 0, 0), false);
        disk.recover().unwrap();
        let kept = disk.load().unwrap().len();
        disk.crash(DiskLoss::LoseUnsynced, &mut derive_rng(0, 0, 0), false);
        disk.file.truncate(disk.file.len() - 1);
        match disk.recover() {
            Err(DiskError::Corrupt(_)) => {}
            other => panic!("kept {kept} records, then {other:?}"),
        }
    }

    #[test]
    fn drifting_clocks_stay_monotonic_and_jump_only_forward() {
        let mut clock = Clock::new(Duration::from_secs(100));
        let t1 = clock.now(Duration::from_secs(1));
        clock.set_rate(Duration::from_secs(1), 1.5);
        let t2 = clock.now(Duration::from_secs(2));
        assert_eq!(t2 - t1, Duration::from_millis(1500));
        clock.jump(Duration::from_secs(2), Duration::from_secs(10));
        assert!(clock.now(Duration::from_secs(2)) > t2);
        assert_eq!(clock.real_for(Duration::from_millis(1500)), Duration::from_secs(1));
    }

    #[test]
    fn a_clock_window_sees_only_the_rates_and_jumps_in_force_then() {
        let secs = Duration::from_secs;
        let mut clock = Clock::new(secs(0));
        clock.set_rate(secs(1), 1.5);
        clock.jump(secs(3), secs(10));
        clock.set_rate(secs(5), 0.9);
        let span = |from, to| clock.over(secs(from), secs(to));
        assert_eq!(
            span(0, 1),
            ClockSpan {
                min_rate: 1.0,
                max_rate: 1.5,
                jumped: false
            }
        );
        assert_eq!(
            span(2, 2),
            ClockSpan {
                min_rate: 1.5,
                max_rate: 1.5,
                jumped: false
            }
        );
        assert!(span(2, 4).jumped && !span(4, 6).jumped);
        assert_eq!(span(4, 6).min_rate, 0.9);
        assert_eq!(span(6, 9).max_rate, 0.9);
    }

    #[test]
    fn a_moment_crash_fires_after_its_sends_to_servers_and_silences_the_node() {
        let world = World::new(1, &[1, 2, 3, 100], &[1, 2, 3], Trace::new(false));
        let mut w = world.lock();
        let window = |moment: &str, after_sends| MomentWindow {
            moment: moment.to_string(),
            after_sends,
            probability: 1.0,
            down: Duration::from_millis(5),
        };
        w.moment_windows.insert(0, window("handed-over", 1));
        w.moment(1, "in-charge"); // no window aims at it
        assert!(w.may_send(1, 2));
        w.sent(1, 2);
        assert_eq!(w.last_up_at("in-charge"), Some(1));
        w.moment(2, "handed-over");
        assert!(w.may_send(2, 100));
        w.sent(2, 100); // messages to clients do not count
        assert!(w.crash_requests.is_empty());
        assert!(w.may_send(2, 1));
        w.sent(2, 1);
        assert_eq!(w.crash_requests.len(), 1);
        assert_eq!(
            (w.crash_requests[0].node, w.crash_requests[0].kind),
            (2, FaultKind::MomentCrash)
        );
        assert!(
            !w.may_send(2, 3),
            "a node about to crash at its moment sends nothing more"
        );

        // After 0 sends: the first message to a server is never sent.
        w.moment_windows.insert(1, window("announcing", 0));
        w.moment(3, "announcing");
        assert!(w.may_send(3, 100));
        assert!(!w.may_send(3, 1));
        assert_eq!(w.crash_requests.last().map(|r| r.node), Some(3));
    }

    #[test]
    fn a_moment_split_cuts_the_node_and_a_reachable_peer_off_before_its_next_send() {
        let world = World::new(1, &[1, 2, 3, 4, 5, 100], &[1, 2, 3, 4, 5], Trace::new(false));
        let mut w = world.lock();
        let window = SplitWindow {
            moment: "in-charge".to_string(),
            after: "changed".to_string(),
            with: 1,
            probability: 1.0,
            split: Duration::from_millis(500),
        };
        w.split_windows.insert(7, SplitState::new(window));
        // Node 5 is cut off from node 1 already: never its partner.
        w.cut_link(1, 5, 0, FaultKind::Partition, true);
        w.moment(1, "in-charge");
        assert!(w.split_requests.is_empty(), "not before a server reached `after`");
        w.moment(3, "changed");
        w.moment(1, "in-charge");
        let split = w.split_requests.pop().expect("a split");
        assert_eq!(split.index, 7);
        let side: std::collections::BTreeSet<NodeId> = split.links.iter().flat_map(|&(a, b)| [a, b]).collect();
        assert_eq!(side.len(), 5, "every server is on one side or the other");
        let partner = (2..=4)
            .find(|&n| !split.links.contains(&(1, n)))
            .expect("one reachable partner");
        assert!(
            !w.refused(1, partner) && !w.refused(100, 1),
            "its partner and clients still reach it"
        );
        for other in (2..=5).filter(|&n| n != partner) {
            assert!(
                w.refused(1, other) && w.refused(other, partner),
                "{other} is on the other side"
            );
        }
        // One split at a time, and the next needs `after` again.
        w.moment(3, "changed");
        w.moment(2, "in-charge");
        assert!(w.split_requests.is_empty());
    }

    #[test]
    fn addresses_map_back_to_node_ids() {
        for id in [1, 100, 101, 300, 65_000] {
            assert_eq!(node_of(addr_of(id)), Some(id));
        }
    }
}
