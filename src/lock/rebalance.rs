//! An operator's procedure that moves lock names between the groups of a
//! sharded lock service when the ring changes: for every hash range whose
//! owner differs between two ring views ([`diff_ranges`]), fence it at the
//! source, read the part the fence cut out, install it at the target and
//! drop it at the source (the steps of [`crate::shard`]). [`step`] does a
//! whole rebalance through the directory that holds the ring views.
//!
//! Every step is idempotent, so a procedure cut short by a timeout or a
//! crash of the operator's process is finished by running it again with
//! the same views: a repeated fence cuts nothing new, the part stays at
//! the source until dropped, a repeated install is answered as done.
//!
//! Each step is a command of a group's log, which takes none larger than
//! [`MAX_COMMAND_BYTES`]; a weighty group takes hundreds of ranges, and a
//! busy range hundreds of held locks. So the ranges are fenced in
//! batches, and the part is installed in pieces ([`pack`]): pieces of one
//! part cover disjoint ranges and are cut from it the same way by every
//! run, so a repeated piece is recognised by its first hash.

use std::collections::BTreeMap;
use std::time::Duration;

use super::machine::{LockCommand, LockMachine, LockOutput, LockPart, LockQuery, MovedLock, ShardCommand};
use super::LockBug;
use crate::env::{codec, Env};
use crate::log::client::{Client, ClientError};
use crate::log::MAX_COMMAND_BYTES;
use crate::ring::{diff_ranges, hash_key, HashRange, Placement, RingView};
use crate::shard::directory::{
    Directory, DirectoryCommand, DirectoryOutput, DirectoryQuery, DirectoryRefusal, ViewSpec,
};
use crate::shard::{GroupId, RangeSet, ShardRefusal};

/// Why a move did not finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RebalanceError {
    /// A group did not answer in time: run the procedure again to finish.
    #[error("group {group}: {error}")]
    Unavailable {
        /// The group that did not answer.
        group: GroupId,
        /// What its client reported.
        error: ClientError,
    },
    /// A group refused a step: the views do not match what it serves.
    #[error("group {group} refused: {refusal}")]
    Refused {
        /// The group that refused.
        group: GroupId,
        /// Why.
        refusal: ShardRefusal,
    },
    /// The directory did not answer in time: run the procedure again.
    #[error("directory: {0}")]
    DirectoryUnavailable(ClientError),
    /// The directory refused a view.
    #[error("directory refused: {0}")]
    Directory(DirectoryRefusal),
    /// A view names a group the procedure was given no client for.
    #[error("no client for group {0}")]
    UnknownGroup(GroupId),
    /// A range or a lock does not fit one command of
    /// [`RebalanceConfig::max_command_bytes`] even alone.
    #[error("a shard command of {needed} bytes does not fit the limit of {limit}")]
    CommandTooSmall {
        /// The bytes the smallest piece needs.
        needed: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A group answered something no lock server gives.
    #[error("group {group}: unexpected answer {answer}")]
    Protocol {
        /// The group.
        group: GroupId,
        /// Its answer.
        answer: String,
    },
}

/// How the procedure runs.
#[derive(Debug, Clone)]
pub struct RebalanceConfig {
    /// How long each step is retried before the procedure gives up.
    pub step_timeout: Duration,
    /// The largest shard command sent, encoded: a fence or an install
    /// that needs more is sent in several. At most [`MAX_COMMAND_BYTES`],
    /// which a group's log refuses to exceed; smaller values split moves
    /// more finely (the simulator draws them to explore split moves).
    pub max_command_bytes: usize,
    /// A planted bug (the rebalancer's variants of [`LockBug`]).
    #[cfg(feature = "planted-bugs")]
    #[doc(hidden)]
    pub bug: Option<LockBug>,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            step_timeout: Duration::from_secs(5),
            max_command_bytes: MAX_COMMAND_BYTES,
            #[cfg(feature = "planted-bugs")]
            bug: None,
        }
    }
}

impl RebalanceConfig {
    fn has(&self, bug: LockBug) -> bool {
        #[cfg(feature = "planted-bugs")]
        return self.bug == Some(bug);
        #[cfg(not(feature = "planted-bugs"))]
        {
            let _ = bug;
            false
        }
    }
}

/// What a rebalance moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Moves {
    /// `(source, target, ranges)` for every pair of groups that moved
    /// names, in the order they moved.
    pub ranges: Vec<(GroupId, GroupId, RangeSet)>,
    /// Held locks shipped.
    pub locks: usize,
    /// Bytes of the parts shipped, encoded as the install carries them.
    pub bytes: usize,
    /// Install commands sent: one per part, more for a part shipped in
    /// pieces.
    pub installs: usize,
    /// For each part this run installed, how long its names were served
    /// by neither group: from sending the fence to the install's answer,
    /// on the operator's clock (an upper bound).
    pub windows: Vec<Duration>,
}

impl Moves {
    /// Adds what another rebalance moved.
    pub fn extend(&mut self, other: Moves) {
        self.ranges.extend(other.ranges);
        self.locks += other.locks;
        self.bytes += other.bytes;
        self.installs += other.installs;
        self.windows.extend(other.windows);
    }
}

/// What one move of ranges shipped; all zero when a run before this one
/// had installed it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shipment {
    /// Held locks shipped.
    pub locks: usize,
    /// Bytes of the part, encoded.
    pub bytes: usize,
    /// Install commands sent.
    pub installs: usize,
    /// From sending the fence to the install's answer, if this run
    /// installed the part.
    pub window: Option<Duration>,
}

/// Moves every range whose owner differs between `old` and `new` (ring
/// views whose nodes are group ids), at `new`'s epoch. `groups` has a
/// client for every group of either view (clients of one node share an
/// inbox: [`Client::sharing`]).
pub async fn rebalance<E: Env>(
    groups: &mut BTreeMap<GroupId, Client<E, LockMachine>>,
    old: &RingView,
    new: &RingView,
    config: &RebalanceConfig,
) -> Result<Moves, RebalanceError> {
    let mut pairs: BTreeMap<(GroupId, GroupId), RangeSet> = BTreeMap::new();
    for m in diff_ranges(old, new).into_iter().filter(|m| m.owner_changed()) {
        let (from, to) = (m.from[0], m.to[0]);
        pairs.entry((from, to)).or_default().insert(m.range);
    }
    let mut moves = Moves::default();
    for ((from, to), ranges) in pairs {
        let shipment = move_ranges(groups, from, to, new.epoch(), &ranges, config).await?;
        moves.locks += shipment.locks;
        moves.bytes += shipment.bytes;
        moves.installs += shipment.installs;
        moves.windows.extend(shipment.window);
        moves.ranges.push((from, to, ranges));
    }
    Ok(moves)
}

/// Moves `ranges` from group `from` to group `to` for a move at `epoch`;
/// returns what the install shipped (nothing when a run before this one
/// finished the move).
pub async fn move_ranges<E: Env>(
    groups: &mut BTreeMap<GroupId, Client<E, LockMachine>>,
    from: GroupId,
    to: GroupId,
    epoch: u64,
    ranges: &RangeSet,
    config: &RebalanceConfig,
) -> Result<Shipment, RebalanceError> {
    let fenced_at = groups.get(&from).map(|c| c.env().now());
    if config.has(LockBug::FlipBeforeFence) {
        // PLANTED BUG: the target serves the ranges before the source
        // stops, and without the source's locks or floor.
        let empty = LockPart {
            ranges: ranges.clone(),
            ..LockPart::default()
        };
        let _ = install(groups, from, to, epoch, empty, config).await;
    }
    let fence = |ranges| ShardCommand::Fence { epoch, to, ranges };
    for (batch, _) in pack(ranges, &[], fence(RangeSet::default()), config.max_command_bytes)? {
        shard(groups, from, fence(batch), config).await?;
    }
    let Some(mut part) = fenced_part(groups, from, to, epoch, config).await? else {
        // Dropped: an earlier run installed it.
        return Ok(Shipment::default());
    };
    if config.has(LockBug::FloorNotCarried) {
        // PLANTED BUG: the part carries its own locks' tokens, not the
        // source's counter, so a lock released before the move (absent from
        // the part) is granted again below its earlier tokens.
        part.floor = part.locks.iter().map(|m| m.last_granted).max().unwrap_or(0);
    }
    if config.has(LockBug::HoldersNotShipped) {
        // PLANTED BUG: ownership flips without the holders' state.
        part.locks.clear();
    }
    let bytes = codec::encode(&part).map_or(0, |b| b.len());
    let shipped = install(groups, from, to, epoch, part, config).await;
    let (locks, installs) = match shipped {
        Err(RebalanceError::Refused { .. }) if config.has(LockBug::FlipBeforeFence) => (0, 0),
        shipped => shipped?,
    };
    let installed_at = groups.get(&to).map(|c| c.env().now());
    shard(groups, from, ShardCommand::Drop { epoch, to }, config).await?;
    Ok(Shipment {
        locks,
        bytes,
        installs,
        window: fenced_at
            .zip(installed_at)
            .map(|(fenced, installed)| installed.saturating_sub(fenced)),
    })
}

/// Installs `part` at `to` in as many pieces as the command limit needs:
/// the locks it moved and the commands sent.
async fn install<E: Env>(
    groups: &mut BTreeMap<GroupId, Client<E, LockMachine>>,
    from: GroupId,
    to: GroupId,
    epoch: u64,
    part: LockPart,
    config: &RebalanceConfig,
) -> Result<(usize, usize), RebalanceError> {
    let floor = part.floor;
    let piece = |ranges, locks| {
        let part = LockPart { ranges, floor, locks };
        ShardCommand::Install { epoch, from, part }
    };
    let pieces = pack(
        &part.ranges,
        &part.locks,
        piece(RangeSet::default(), Vec::new()),
        config.max_command_bytes,
    )?;
    let (mut locks, installs) = (0, pieces.len());
    for (ranges, moved) in pieces {
        locks += shard(groups, to, piece(ranges, moved), config).await?;
    }
    Ok((locks, installs))
}

/// Cuts `ranges`, with the `locks` that lie in them, into pieces, each of
/// which makes `empty` (a shard command with no ranges and no locks) at
/// most `limit` bytes long when put in it. The pieces ascend by hash and
/// cover `ranges` exactly; a range is cut just below a lock's hash where
/// its locks overflow a piece. The same input always gives the same
/// pieces.
pub fn pack(
    ranges: &RangeSet,
    locks: &[MovedLock],
    empty: ShardCommand,
    limit: usize,
) -> Result<Vec<(RangeSet, Vec<MovedLock>)>, RebalanceError> {
    let encoded_len = |bytes: Result<Vec<u8>, _>| bytes.map_or(usize::MAX, |b: Vec<u8>| b.len());
    // Each list's length prefix grows from the one byte `empty` has to at
    // most three bytes below two million entries; every range is counted
    // as its widest encoding.
    let base = encoded_len(codec::encode(&LockCommand::Shard(empty))).saturating_add(4);
    let range_bytes = encoded_len(codec::encode(&HashRange {
        start: u64::MAX,
        end: u64::MAX,
    }));
    let mut by_hash: Vec<(u64, &MovedLock)> = locks.iter().map(|m| (hash_key(m.name.as_bytes()), m)).collect();
    by_hash.sort_by_key(|&(h, _)| h);
    let mut pieces = Vec::new();
    let mut piece = Piece::new(base);
    let mut next = 0;
    for range in ranges.ranges() {
        if piece.bytes + range_bytes > limit {
            pieces.push(piece.take(base));
        }
        piece.open(*range, range_bytes, limit)?;
        while let Some(&(h, lock)) = by_hash.get(next).filter(|&&(h, _)| h <= range.end) {
            next += 1;
            let lock_bytes = encoded_len(codec::encode(lock));
            if piece.bytes + lock_bytes > limit {
                let (rest, same_hash) = piece.cut_below(h, range_bytes);
                pieces.push(piece.take(base));
                piece.open(rest, range_bytes, limit)?;
                piece.bytes += same_hash.iter().map(|(_, bytes)| bytes).sum::<usize>();
                piece.locks.extend(same_hash.into_iter().map(|(lock, _)| lock));
            }
            piece.bytes += lock_bytes;
            piece.locks.push(lock.clone());
            if piece.bytes > limit {
                return Err(RebalanceError::CommandTooSmall {
                    needed: piece.bytes,
                    limit,
                });
            }
        }
    }
    pieces.push(piece.take(base));
    Ok(pieces.into_iter().filter(|(ranges, _)| !ranges.is_empty()).collect())
}

/// A piece [`pack`] is filling: its ranges, the last still open.
struct Piece {
    ranges: Vec<HashRange>,
    locks: Vec<MovedLock>,
    bytes: usize,
}

impl Piece {
    fn new(base: usize) -> Self {
        Piece {
            ranges: Vec::new(),
            locks: Vec::new(),
            bytes: base,
        }
    }

    /// The piece as filled, leaving an empty one in its place.
    fn take(&mut self, base: usize) -> (RangeSet, Vec<MovedLock>) {
        let piece = std::mem::replace(self, Piece::new(base));
        (RangeSet::from_ranges(piece.ranges), piece.locks)
    }

    fn open(&mut self, range: HashRange, range_bytes: usize, limit: usize) -> Result<(), RebalanceError> {
        self.ranges.push(range);
        self.bytes += range_bytes;
        match self.bytes <= limit {
            true => Ok(()),
            false => Err(RebalanceError::CommandTooSmall {
                needed: self.bytes,
                limit,
            }),
        }
    }

    /// Ends the open range just below hash `h` (leaving it out if it
    /// starts at `h`); returns the range's rest, from `h` on, and the
    /// locks of hash `h` the piece held (names whose hashes collide), with
    /// their bytes, which go with the rest.
    fn cut_below(&mut self, h: u64, range_bytes: usize) -> (HashRange, Vec<(MovedLock, usize)>) {
        let mut same_hash = Vec::new();
        while self.locks.last().is_some_and(|m| hash_key(m.name.as_bytes()) == h) {
            let lock = self.locks.pop().expect("checked above");
            let bytes = codec::encode(&lock).map_or(0, |b| b.len());
            self.bytes -= bytes;
            same_hash.push((lock, bytes));
        }
        same_hash.reverse();
        let open = self.ranges.last_mut().expect("a lock is cut inside an open range");
        let rest = HashRange {
            start: h,
            end: open.end,
        };
        if h <= open.start {
            self.ranges.pop();
            self.bytes -= range_bytes;
        } else {
            open.end = h - 1;
        }
        (rest, same_hash)
    }
}

/// Runs one shard command on `group`: the locks it moved.
async fn shard<E: Env>(
    groups: &mut BTreeMap<GroupId, Client<E, LockMachine>>,
    group: GroupId,
    command: ShardCommand,
    config: &RebalanceConfig,
) -> Result<usize, RebalanceError> {
    let client = groups.get_mut(&group).ok_or(RebalanceError::UnknownGroup(group))?;
    let out = client
        .execute(LockCommand::Shard(command), config.step_timeout)
        .await
        .map_err(|error| RebalanceError::Unavailable { group, error })?;
    match out {
        LockOutput::Moved { locks } => Ok(locks),
        LockOutput::ShardRefused(refusal) => Err(RebalanceError::Refused { group, refusal }),
        other => Err(RebalanceError::Protocol {
            group,
            answer: format!("{other:?}"),
        }),
    }
}

/// The part `from` fenced for `to` at `epoch`, `None` once dropped.
async fn fenced_part<E: Env>(
    groups: &mut BTreeMap<GroupId, Client<E, LockMachine>>,
    from: GroupId,
    to: GroupId,
    epoch: u64,
    config: &RebalanceConfig,
) -> Result<Option<LockPart>, RebalanceError> {
    let client = groups.get_mut(&from).ok_or(RebalanceError::UnknownGroup(from))?;
    let out = client
        .read(LockQuery::Part { epoch, to }, config.step_timeout)
        .await
        .map_err(|error| RebalanceError::Unavailable { group: from, error })?;
    match out {
        LockOutput::Part(part) => Ok(part),
        other => Err(RebalanceError::Protocol {
            group: from,
            answer: format!("{other:?}"),
        }),
    }
}

/// One rebalance through the directory ([`crate::shard::directory`]): if
/// a rebalance is in progress (a rebalancer stopped in the middle), it is
/// finished; otherwise `choose` makes the next view of the current one
/// (`None` for the first view, which must hold only the group that founds
/// the deployment; `choose` returning `None` means nothing to do), the
/// directory records it as next, every range whose owner changes is
/// moved, and the directory marks it current. Returns the epoch finished
/// and what moved.
pub async fn step<E: Env>(
    directory: &mut Client<E, Directory>,
    groups: &mut BTreeMap<GroupId, Client<E, LockMachine>>,
    choose: impl FnOnce(Option<&ViewSpec>) -> Option<ViewSpec>,
    config: &RebalanceConfig,
) -> Result<Option<(u64, Moves)>, RebalanceError> {
    let views = match directed(directory, Directed::Read, config).await? {
        DirectoryOutput::Views(views) => views,
        other => return Err(directory_protocol(other)),
    };
    let next = match views.next {
        Some(next) => next,
        None => {
            let Some(next) = choose(views.current.as_ref()) else {
                return Ok(None);
            };
            directed(
                directory,
                Directed::Command(DirectoryCommand::Begin(next.clone())),
                config,
            )
            .await?;
            next
        }
    };
    let mut moves = Moves::default();
    if let Some(current) = &views.current {
        let invalid = |_| RebalanceError::Directory(DirectoryRefusal::InvalidView);
        let (old, new) = (current.build().map_err(invalid)?, next.build().map_err(invalid)?);
        moves = rebalance(groups, &old, &new, config).await?;
    }
    let finish = DirectoryCommand::Finish { epoch: next.epoch };
    directed(directory, Directed::Command(finish), config).await?;
    Ok(Some((next.epoch, moves)))
}

/// Puts every group of `groups` but `founder` into the deployment,
/// serving nothing yet (the `Assign` a joining group waits for before it
/// takes any client command). Idempotent: a group assigned before is
/// left as it is.
pub async fn assign_joining<E: Env>(
    groups: &mut BTreeMap<GroupId, Client<E, LockMachine>>,
    founder: GroupId,
    config: &RebalanceConfig,
) -> Result<(), RebalanceError> {
    let joining: Vec<GroupId> = groups.keys().copied().filter(|&g| g != founder).collect();
    for group in joining {
        let assign = ShardCommand::Assign {
            epoch: 1,
            ranges: RangeSet::default(),
        };
        match shard(groups, group, assign, config).await {
            Ok(_)
            | Err(RebalanceError::Refused {
                refusal: ShardRefusal::AlreadyAssigned,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Brings a deployment founded by group `founder` to the ring of
/// `weights` (each group in it with its weight, at least 1; a group left
/// out serves nothing) with `vnodes` points per unit of weight: assigns
/// the joining groups, records the first view (the founder alone) if the
/// directory holds none, finishes a rebalance in progress, then moves to
/// the new view unless it is the current one. What an operator runs to
/// add, remove or reweigh groups; run again after an error, it finishes
/// what was left. Returns the epoch reached and every move made.
pub async fn rebalance_to<E: Env>(
    directory: &mut Client<E, Directory>,
    groups: &mut BTreeMap<GroupId, Client<E, LockMachine>>,
    founder: GroupId,
    (mut weights, vnodes): (Vec<(GroupId, u32)>, u32),
    config: &RebalanceConfig,
) -> Result<(u64, Moves), RebalanceError> {
    weights.sort_unstable();
    assign_joining(groups, founder, config).await?;
    let mut moved = Moves::default();
    loop {
        let choose = |current: Option<&ViewSpec>| match current {
            None => Some(ViewSpec {
                epoch: 1,
                groups: vec![(founder, 1)],
                vnodes,
            }),
            Some(current) if current.groups == weights && current.vnodes == vnodes => None,
            Some(current) => Some(ViewSpec {
                epoch: current.epoch + 1,
                groups: weights.clone(),
                vnodes,
            }),
        };
        match step(directory, groups, choose, config).await? {
            Some((_, moves)) => moved.extend(moves),
            None => break,
        }
    }
    match directed(directory, Directed::Read, config).await? {
        DirectoryOutput::Views(views) => Ok((views.epoch(), moved)),
        other => Err(directory_protocol(other)),
    }
}

enum Directed {
    Read,
    Command(DirectoryCommand),
}

/// One request to the directory; a refusal is an error.
async fn directed<E: Env>(
    directory: &mut Client<E, Directory>,
    request: Directed,
    config: &RebalanceConfig,
) -> Result<DirectoryOutput, RebalanceError> {
    let out = match request {
        Directed::Read => directory.read(DirectoryQuery::Views, config.step_timeout).await,
        Directed::Command(command) => directory.execute(command, config.step_timeout).await,
    };
    match out.map_err(RebalanceError::DirectoryUnavailable)? {
        DirectoryOutput::Refused(refusal) => Err(RebalanceError::Directory(refusal)),
        out => Ok(out),
    }
}

fn directory_protocol(answer: DirectoryOutput) -> RebalanceError {
    RebalanceError::Protocol {
        group: 0,
        answer: format!("{answer:?}"),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn moved(name: String) -> MovedLock {
        MovedLock {
            name,
            session: 7,
            owner: 3,
            token: 5,
            last_granted: 9,
        }
    }

    /// Names (long and short), and ranges some of which start or end at
    /// a name's hash, so pieces are cut at every kind of boundary.
    fn part() -> impl Strategy<Value = (RangeSet, Vec<MovedLock>)> {
        let names = prop::collection::btree_set((0u32..10_000, 1usize..128), 0..80);
        let cuts = prop::collection::vec((any::<u64>(), 0u64..1 << 62, any::<bool>()), 0..40);
        (names, cuts).prop_map(|(names, cuts)| {
            let names: Vec<String> = names
                .into_iter()
                .map(|(i, len)| format!("{i}{}", "x".repeat(len)))
                .collect();
            let hashes: Vec<u64> = names.iter().map(|n| hash_key(n.as_bytes())).collect();
            let ranges = RangeSet::from_ranges(cuts.into_iter().enumerate().map(|(i, (start, len, at_name))| {
                let start = match (at_name, hashes.get(i)) {
                    (true, Some(&h)) => h,
                    _ => start,
                };
                HashRange {
                    start,
                    end: start.saturating_add(len),
                }
            }));
            let locks = names
                .into_iter()
                .filter(|n| ranges.contains(hash_key(n.as_bytes())))
                .map(moved)
                .collect();
            (ranges, locks)
        })
    }

    proptest! {
        /// The pieces cover the part's ranges exactly, in ascending,
        /// disjoint ranges with distinct first hashes; each lock is in
        /// exactly one piece, inside its ranges; every piece's command fits
        /// the limit; and the same part is always cut the same way.
        #[test]
        fn pieces_cover_the_part_and_each_fits_one_command(
            (ranges, locks) in part(),
            limit in 400usize..3000,
        ) {
            let piece = |ranges, locks| ShardCommand::Install {
                epoch: 4,
                from: 2,
                part: LockPart { ranges, floor: 1 << 40, locks },
            };
            let pieces = pack(&ranges, &locks, piece(RangeSet::default(), Vec::new()), limit).unwrap();
            prop_assert_eq!(&pieces, &pack(&ranges, &locks, piece(RangeSet::default(), Vec::new()), limit).unwrap());
            let mut covered = RangeSet::default();
            let mut shipped = Vec::new();
            for (i, (piece_ranges, piece_locks)) in pieces.iter().enumerate() {
                prop_assert!(!piece_ranges.is_empty());
                prop_assert!(covered.intersection(piece_ranges).is_empty(), "pieces overlap");
                if i > 0 {
                    prop_assert!(pieces[i - 1].0.first() < piece_ranges.first(), "pieces ascend");
                }
                for lock in piece_locks {
                    prop_assert!(piece_ranges.contains(hash_key(lock.name.as_bytes())));
                }
                for r in piece_ranges.ranges() {
                    covered.insert(*r);
                }
                shipped.extend(piece_locks.iter().cloned());
                let command = LockCommand::Shard(piece(piece_ranges.clone(), piece_locks.clone()));
                prop_assert!(codec::encode(&command).unwrap().len() <= limit);
            }
            prop_assert_eq!(covered, ranges);
            let name = |m: &MovedLock| m.name.clone();
            let mut want: Vec<String> = locks.iter().map(name).collect();
            let mut got: Vec<String> = shipped.iter().map(name).collect();
            want.sort();
            got.sort();
            prop_assert_eq!(got, want);
        }
    }

    /// A lock that cannot fit a command even alone is an error, not a
    /// command the log would refuse.
    #[test]
    fn a_limit_too_small_for_one_lock_is_an_error() {
        let name = "n".repeat(100);
        let h = hash_key(name.as_bytes());
        let ranges = RangeSet::from_ranges([HashRange { start: h, end: h }]);
        let empty = ShardCommand::Install {
            epoch: 1,
            from: 1,
            part: LockPart::default(),
        };
        let packed = pack(&ranges, &[moved(name)], empty, 100);
        assert!(
            matches!(packed, Err(RebalanceError::CommandTooSmall { limit: 100, .. })),
            "{packed:?}"
        );
    }
}
