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
//! batches ([`pack`]), and the part is read in pages that each install as
//! one command ([`LockQuery::Part`]). A run that stops halfway leaves
//! pages installed; the next run may cut the pages differently (another
//! limit), and the target installs only what its earlier pages did not.

use std::collections::BTreeMap;
use std::time::Duration;

use super::machine::{
    pack, LockCommand, LockMachine, LockOutput, LockPart, LockQuery, PartPage, ShardCommand, MAX_PAGE_BYTES,
};
use super::LockBug;
use crate::env::{codec, Env};
use crate::log::client::{Client, ClientError};
use crate::log::MAX_COMMAND_BYTES;
use crate::ring::{diff_ranges, KeyHash, Placement, RingView};
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
    /// that needs more is sent in several (a single range or lock larger
    /// than this goes alone). At most [`MAX_COMMAND_BYTES`], which a
    /// group's log refuses to exceed; smaller values split moves more
    /// finely (the simulator draws them to explore split moves).
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
    /// Install commands sent: one per page of a part.
    pub installs: usize,
    /// For each part this run installed, how long its names were served
    /// by neither group: from sending the first fence to the last page's
    /// install answer, on the operator's clock (an upper bound).
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
    /// From sending the first fence to the last page's install answer,
    /// if this run installed the part.
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
    let limit = config.max_command_bytes.min(MAX_PAGE_BYTES as usize);
    if config.has(LockBug::FlipBeforeFence) {
        // PLANTED BUG: the target serves the ranges before the source
        // stops, and without the source's locks or floor.
        let empty = |ranges| ShardCommand::Install {
            epoch,
            from,
            part: LockPart {
                ranges,
                ..LockPart::default()
            },
        };
        for (batch, _) in pack(ranges, &[], empty(RangeSet::default()), limit) {
            let _ = shard(groups, to, empty(batch), config).await;
        }
    }
    let fence = |ranges| ShardCommand::Fence { epoch, to, ranges };
    for (batch, _) in pack(ranges, &[], fence(RangeSet::default()), limit) {
        shard(groups, from, fence(batch), config).await?;
    }
    // The part, page by page, each page installed as one command.
    let mut shipment = Shipment::default();
    let mut page_from = 0;
    loop {
        let Some(page) = fenced_page(groups, (from, to, epoch), page_from, limit, config).await? else {
            // Dropped: an earlier run installed it.
            return Ok(shipment);
        };
        let mut part = page.part;
        if config.has(LockBug::FloorNotCarried) {
            // PLANTED BUG: the part carries its own locks' tokens, not the
            // source's counter, so a lock released before the move (absent
            // from the part) is granted again below its earlier tokens.
            part.floor = part.locks.iter().map(|m| m.last_granted).max().unwrap_or(0);
        }
        if config.has(LockBug::HoldersNotShipped) {
            // PLANTED BUG: ownership flips without the holders' state.
            part.locks.clear();
        }
        shipment.bytes += codec::encode(&part).map_or(0, |b| b.len());
        let installed = shard(groups, to, ShardCommand::Install { epoch, from, part }, config).await;
        shipment.locks += match installed {
            Err(RebalanceError::Refused { .. }) if config.has(LockBug::FlipBeforeFence) => 0,
            installed => installed?,
        };
        shipment.installs += 1;
        match page.next {
            Some(next) => page_from = next,
            None => break,
        }
    }
    let installed_at = groups.get(&to).map(|c| c.env().now());
    shard(groups, from, ShardCommand::Drop { epoch, to }, config).await?;
    shipment.window = fenced_at
        .zip(installed_at)
        .map(|(fenced, installed)| installed.saturating_sub(fenced));
    Ok(shipment)
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

/// The page from hash `page_from` on of the part `from` fenced for `to`
/// at `epoch`, `None` once dropped.
async fn fenced_page<E: Env>(
    groups: &mut BTreeMap<GroupId, Client<E, LockMachine>>,
    (from, to, epoch): (GroupId, GroupId, u64),
    page_from: KeyHash,
    limit: usize,
    config: &RebalanceConfig,
) -> Result<Option<PartPage>, RebalanceError> {
    let client = groups.get_mut(&from).ok_or(RebalanceError::UnknownGroup(from))?;
    let query = LockQuery::Part {
        epoch,
        to,
        from: page_from,
        limit: limit as u32,
    };
    let out = client
        .read(query, config.step_timeout)
        .await
        .map_err(|error| RebalanceError::Unavailable { group: from, error })?;
    match out {
        LockOutput::Part(page) => Ok(page),
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
