//! An operator's procedure that moves keys between the groups of a
//! sharded service when the ring changes: for every hash range whose
//! owner differs between two ring views ([`diff_ranges`]), fence it at the
//! source, read the part the fence cut out, install it at the target and
//! drop it at the source (the steps of [`crate::shard`]). [`step`] does a
//! whole rebalance through the directory that holds the ring views.
//!
//! The procedure is one for every service: what a step is and how it
//! reaches a group is the service's [`Groups`] (the lock service's
//! groups are replicated logs, `crate::lock::rebalance`; the bank's
//! shards take steps as messages, `crate::txn::rebalance`).
//!
//! Every step is idempotent, so a procedure cut short by a timeout or a
//! crash of the operator's process is finished by running it again with
//! the same views: a repeated fence cuts nothing new, the part stays at
//! the source until dropped, a repeated install is answered as done.
//!
//! A group takes no step larger than a limit; a weighty group takes
//! hundreds of ranges, and a busy range hundreds of items. So the ranges
//! are fenced in batches ([`crate::shard::pack`]), and the part is read
//! in pages that each install as one step. A run that stops halfway
//! leaves pages installed; the next run may cut the pages differently
//! (another limit), and the target installs only what its earlier pages
//! did not.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use super::directory::{Directory, DirectoryCommand, DirectoryOutput, DirectoryQuery, DirectoryRefusal, ViewSpec};
use super::{GroupId, RangeSet, ShardRefusal};
use crate::env::Env;
use crate::log::client::{Client, ClientError};
use crate::ring::{diff_ranges, KeyHash, Placement, RingView};

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
    /// A group answered something its service never gives.
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
    /// The largest step sent, encoded: a fence or an install that needs
    /// more is sent in several (a single range or item larger than this
    /// goes alone). Capped by each service's own limit
    /// ([`Groups::max_step_bytes`]); smaller values split moves more
    /// finely (the simulator draws them to explore split moves).
    pub max_command_bytes: usize,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            step_timeout: Duration::from_secs(5),
            max_command_bytes: usize::MAX,
        }
    }
}

/// A page of a fenced part, as a source answered it.
#[derive(Debug, Clone)]
pub struct Page<P> {
    /// Some of the part's ranges, with their items.
    pub part: P,
    /// The first hash of the next page, if any is left.
    pub next: Option<KeyHash>,
}

/// The groups of one sharded service, as the procedure drives them: each
/// method sends one step to one group and waits (for at most `timeout`)
/// for its answer. A refusal is [`RebalanceError::Refused`].
pub trait Groups {
    /// A fenced part (or a page of it) as the service ships it.
    type Part;

    /// The groups this service was given clients for.
    fn ids(&self) -> Vec<GroupId>;
    /// The operator's clock, for the unavailability windows.
    fn now(&self) -> Duration;
    /// The service's own limit on one step, encoded.
    fn max_step_bytes(&self) -> usize;
    /// The encoded length of a fence of `to` at `epoch` with no ranges.
    fn empty_fence_bytes(&self, epoch: u64, to: GroupId) -> usize;
    /// How many items (held locks, accounts) `part` carries, and its
    /// encoded length.
    fn measure(part: &Self::Part) -> (usize, usize);
    /// A part of `ranges` with nothing in them.
    fn empty_part(ranges: RangeSet) -> Self::Part;
    /// Whether the procedure runs with the planted bug that installs an
    /// empty part at the target before it fences the source, so both
    /// serve the keys for a while (each service names it in its own bug
    /// enum).
    #[doc(hidden)]
    fn installs_before_fence(&self) -> bool {
        false
    }

    /// Makes a group that founds nothing part of the deployment, serving
    /// nothing yet.
    fn assign(&mut self, group: GroupId, timeout: Duration) -> impl Future<Output = Result<(), RebalanceError>>;
    /// Stops `group` serving `ranges`, cut out for the move `fenced`
    /// (its epoch and target).
    fn fence(
        &mut self,
        group: GroupId,
        fenced: (u64, GroupId),
        ranges: RangeSet,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), RebalanceError>>;
    /// The page from hash `from` on of the part `group` fenced for the
    /// move `fenced` (its epoch and target), installable as one step of at most `limit` bytes;
    /// `None` once the part was dropped.
    fn page(
        &mut self,
        group: GroupId,
        fenced: (u64, GroupId),
        from: KeyHash,
        limit: usize,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<Page<Self::Part>>, RebalanceError>>;
    /// Installs `part` of the move `moved` (its epoch and source) at
    /// `group`: the items it added.
    fn install(
        &mut self,
        group: GroupId,
        moved: (u64, GroupId),
        part: Self::Part,
        timeout: Duration,
    ) -> impl Future<Output = Result<usize, RebalanceError>>;
    /// `group` forgets the part it fenced for the move `fenced`.
    fn drop_part(
        &mut self,
        group: GroupId,
        fenced: (u64, GroupId),
        timeout: Duration,
    ) -> impl Future<Output = Result<(), RebalanceError>>;
}

/// What a rebalance moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Moves {
    /// `(source, target, ranges)` for every pair of groups that moved
    /// keys, in the order they moved.
    pub ranges: Vec<(GroupId, GroupId, RangeSet)>,
    /// Items (held locks, accounts) shipped.
    pub items: usize,
    /// Bytes of the parts shipped, encoded as the install carries them.
    pub bytes: usize,
    /// Install steps sent: one per page of a part.
    pub installs: usize,
    /// For each part this run installed, how long its keys were served
    /// by neither group: from sending the first fence to the last page's
    /// install answer, on the operator's clock (an upper bound).
    pub windows: Vec<Duration>,
}

impl Moves {
    /// Adds what another rebalance moved.
    pub fn extend(&mut self, other: Moves) {
        self.ranges.extend(other.ranges);
        self.items += other.items;
        self.bytes += other.bytes;
        self.installs += other.installs;
        self.windows.extend(other.windows);
    }
}

/// What one move of ranges shipped; all zero when a run before this one
/// had installed it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shipment {
    /// Items shipped.
    pub items: usize,
    /// Bytes of the part, encoded.
    pub bytes: usize,
    /// Install steps sent.
    pub installs: usize,
    /// From sending the first fence to the last page's install answer,
    /// if this run installed the part.
    pub window: Option<Duration>,
}

/// Moves every range whose owner differs between `old` and `new` (ring
/// views whose nodes are group ids), at `new`'s epoch.
pub async fn rebalance<G: Groups>(
    groups: &mut G,
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
        let shipment = move_ranges(groups, (from, to), new.epoch(), &ranges, config).await?;
        moves.items += shipment.items;
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
pub async fn move_ranges<G: Groups>(
    groups: &mut G,
    (from, to): (GroupId, GroupId),
    epoch: u64,
    ranges: &RangeSet,
    config: &RebalanceConfig,
) -> Result<Shipment, RebalanceError> {
    let timeout = config.step_timeout;
    let fenced_at = groups.now();
    let limit = config.max_command_bytes.min(groups.max_step_bytes());
    let empty_fence = groups.empty_fence_bytes(epoch, to);
    let no_items: &[()] = &[];
    for (batch, _) in super::pack(ranges, no_items, |_| 0, empty_fence, limit) {
        if groups.installs_before_fence() {
            // PLANTED BUG: the target serves the ranges before the source
            // stops, and without their items.
            let _ = groups
                .install(to, (epoch, from), G::empty_part(batch.clone()), timeout)
                .await;
        }
        groups.fence(from, (epoch, to), batch, timeout).await?;
    }
    // The part, page by page, each page installed as one step.
    let mut shipment = Shipment::default();
    let mut page_from = 0;
    loop {
        let Some(page) = groups.page(from, (epoch, to), page_from, limit, timeout).await? else {
            // Dropped: an earlier run installed it.
            return Ok(shipment);
        };
        shipment.bytes += G::measure(&page.part).1;
        shipment.items += match groups.install(to, (epoch, from), page.part, timeout).await {
            // The planted bug's early install overlaps the real one.
            Err(RebalanceError::Refused { .. }) if groups.installs_before_fence() => 0,
            installed => installed?,
        };
        shipment.installs += 1;
        match page.next {
            Some(next) => page_from = next,
            None => break,
        }
    }
    let installed_at = groups.now();
    groups.drop_part(from, (epoch, to), timeout).await?;
    shipment.window = Some(installed_at.saturating_sub(fenced_at));
    Ok(shipment)
}

/// One rebalance through the directory ([`super::directory`]): if a
/// rebalance is in progress (a rebalancer stopped in the middle), it is
/// finished; otherwise `choose` makes the next view of the current one
/// (`None` for the first view, which must hold only the group that founds
/// the deployment; `choose` returning `None` means nothing to do), the
/// directory records it as next, every range whose owner changes is
/// moved, and the directory marks it current. Returns the epoch finished
/// and what moved.
pub async fn step<E: Env, G: Groups>(
    directory: &mut Client<E, Directory>,
    groups: &mut G,
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
/// serving nothing yet (the assignment a joining group waits for before
/// it takes any client request). Idempotent: a group assigned before is
/// left as it is.
pub async fn assign_joining<G: Groups>(
    groups: &mut G,
    founder: GroupId,
    config: &RebalanceConfig,
) -> Result<(), RebalanceError> {
    for group in groups.ids().into_iter().filter(|&g| g != founder) {
        match groups.assign(group, config.step_timeout).await {
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
pub async fn rebalance_to<E: Env, G: Groups>(
    directory: &mut Client<E, Directory>,
    groups: &mut G,
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
