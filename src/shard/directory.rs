//! The directory: the ring view of a sharded deployment as the replicated
//! state of a small group of its own, changed only through its log.
//!
//! It holds the current view and, while a rebalance runs, the next one.
//! The rebalancer ([`crate::shard::rebalance::step`]) writes the next view
//! before it moves anything and marks it current once every move is done,
//! so a rebalancer that crashed finds the move it was making and finishes
//! it. Clients read the views to find the group that serves a name
//! ([`Router`]) when a group answers that it does not.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::GroupId;
use crate::env::{codec, Env, NodeId};
use crate::log::client::{Client, Inbox};
use crate::log::membership::{is_operator, Boot};
use crate::log::service::{self, Companion, NodeError, Out};
use crate::log::{Config, Event, Raft, SnapshotError, StateMachine, Wire, WireOf};
use crate::observe::Observer;
use crate::ring::{NodeSpec, Placement, RingConfig, RingView, ViewError};

/// A ring view as data: what every process needs to build the same
/// [`RingView`] (groups are the ring's nodes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewSpec {
    /// The view's epoch: each rebalance moves to the next.
    pub epoch: u64,
    /// Each group in the ring, with its weight (at least 1).
    pub groups: Vec<(GroupId, u32)>,
    /// Points per unit of weight.
    pub vnodes: u32,
}

/// The most ring points a view may have (the sum over its groups of
/// weight × points per unit). A move fences and pages up to every range
/// of the view (one per point); every group's served ranges, the ranges
/// it remembers installing, the ring each directory replica builds to
/// check a view and every client's ring are this large too. 16 groups at
/// weight 12 with 160 points per unit stay below it.
pub const MAX_VIEW_POINTS: u64 = 1 << 15;

impl ViewSpec {
    /// The ring this spec describes (one replica per key: a group is
    /// itself replicated); refused above [`MAX_VIEW_POINTS`].
    pub fn build(&self) -> Result<RingView, ViewError> {
        let points: u64 = self
            .groups
            .iter()
            .map(|&(_, w)| u64::from(w) * u64::from(self.vnodes))
            .sum();
        if points > MAX_VIEW_POINTS {
            return Err(ViewError::TooManyPoints {
                points,
                max: MAX_VIEW_POINTS,
            });
        }
        let nodes: Vec<NodeSpec> = self
            .groups
            .iter()
            .map(|&(group, weight)| NodeSpec::new(group).with_weight(weight))
            .collect();
        let config = RingConfig::default().with_replicas(1).with_vnodes(self.vnodes);
        RingView::build(self.epoch, &nodes, config)
    }
}

/// What the directory is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryCommand {
    /// A rebalance to `view` begins: it becomes the next view. The first
    /// view of a deployment begins the same way.
    Begin(ViewSpec),
    /// Every move to the next view, of this epoch, is done: it becomes
    /// the current view.
    Finish {
        /// The next view's epoch.
        epoch: u64,
    },
}

/// What the directory is asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryQuery {
    /// The current and the next view.
    Views,
}

/// Why a directory command was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum DirectoryRefusal {
    /// Another rebalance is in progress: finish it first.
    #[error("another rebalance is in progress")]
    InProgress,
    /// The view's epoch is not the one after the current view's.
    #[error("the view's epoch does not follow the current one")]
    WrongEpoch,
    /// The view does not build into a ring (no group, a zero weight...).
    #[error("the view is not a valid ring")]
    InvalidView,
}

/// The directory's answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryOutput {
    /// The command took effect, or had already.
    Done,
    /// The command was refused; nothing changed.
    Refused(DirectoryRefusal),
    /// Answer to [`DirectoryQuery::Views`].
    Views(Views),
}

/// The current view and the one a rebalance is moving to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Views {
    /// The view every move has completed to; `None` before the first.
    pub current: Option<ViewSpec>,
    /// The view a rebalance is moving to, if one runs.
    pub next: Option<ViewSpec>,
}

impl Views {
    /// The epoch of the newest view.
    pub fn epoch(&self) -> u64 {
        self.next.as_ref().or(self.current.as_ref()).map_or(0, |v| v.epoch)
    }

    /// The groups that may serve `key`, the likeliest first: its owner in
    /// the next view (where it is once its move is done), then in the
    /// current one.
    pub fn owners(&self, key: &[u8]) -> Vec<GroupId> {
        let mut owners = Vec::new();
        for spec in [&self.next, &self.current].into_iter().flatten() {
            if let Ok(view) = spec.build() {
                let owner = view.owner(key);
                if !owners.contains(&owner) {
                    owners.push(owner);
                }
            }
        }
        owners
    }
}

/// The directory's replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    views: Views,
}

impl StateMachine for Directory {
    type Command = DirectoryCommand;
    type Query = DirectoryQuery;
    type Output = DirectoryOutput;

    fn apply(&mut self, command: &DirectoryCommand) -> DirectoryOutput {
        let views = &mut self.views;
        let refused = DirectoryOutput::Refused;
        match command {
            DirectoryCommand::Begin(view) => {
                if views.next.as_ref() == Some(view) || views.current.as_ref() == Some(view) {
                    return DirectoryOutput::Done;
                }
                if views.next.is_some() {
                    return refused(DirectoryRefusal::InProgress);
                }
                if view.epoch != views.current.as_ref().map_or(1, |c| c.epoch + 1) {
                    return refused(DirectoryRefusal::WrongEpoch);
                }
                if view.build().is_err() {
                    return refused(DirectoryRefusal::InvalidView);
                }
                views.next = Some(view.clone());
                DirectoryOutput::Done
            }
            DirectoryCommand::Finish { epoch } => {
                if views.current.as_ref().is_some_and(|c| c.epoch == *epoch) {
                    return DirectoryOutput::Done;
                }
                match views.next.take() {
                    Some(next) if next.epoch == *epoch => {
                        views.current = Some(next);
                        DirectoryOutput::Done
                    }
                    other => {
                        views.next = other;
                        refused(DirectoryRefusal::WrongEpoch)
                    }
                }
            }
        }
    }

    fn query(&self, query: &DirectoryQuery) -> DirectoryOutput {
        match query {
            DirectoryQuery::Views => DirectoryOutput::Views(self.views.clone()),
        }
    }

    fn snapshot(&self) -> Result<Vec<u8>, codec::CodecError> {
        codec::encode_state(self)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        let directory: Directory = codec::decode_state(snapshot)?;
        let valid = |spec: &Option<ViewSpec>| spec.as_ref().is_none_or(|s| s.build().is_ok());
        if !valid(&directory.views.current) || !valid(&directory.views.next) {
            return Err(SnapshotError::Invalid("a view that is not a valid ring"));
        }
        *self = directory;
        Ok(())
    }
}

/// A client's cache of the directory's views: which group to ask for a
/// key, read again from the directory when a group refuses the key at an
/// epoch the cache has not reached, or the cache names the group that
/// refused. The views' rings are built once per read, not per key.
pub struct Router<E: Env> {
    directory: Client<E, Directory>,
    views: Views,
    /// The rings of `views`: the next view's first, then the current one's.
    rings: Vec<RingView>,
    /// How long a read of the views may take.
    pub timeout: Duration,
}

impl<E: Env> Router<E> {
    /// A router reading the directory on `servers` through the node's
    /// `inbox` (shared with its clients of the groups).
    pub fn new(inbox: Arc<Inbox<E>>, servers: Vec<NodeId>) -> Self {
        let mut directory = Client::sharing(inbox, servers);
        directory.attempt_timeout = Duration::from_millis(100);
        Router {
            directory,
            views: Views::default(),
            rings: Vec::new(),
            timeout: Duration::from_millis(300),
        }
    }

    /// The group the cached views name for `key` (none before the first
    /// read).
    pub fn owner(&self, key: &[u8]) -> Option<GroupId> {
        self.owners(key).next()
    }

    /// The group to ask first for `key`: the cached views' owner, the
    /// views read first if none were. `None` when the directory did not
    /// answer or holds no view yet.
    pub async fn route(&mut self, key: &[u8]) -> Option<GroupId> {
        if self.rings.is_empty() {
            self.refresh().await;
        }
        self.owner(key)
    }

    /// The group to ask for `key` after group `refused` answered that it
    /// does not serve it, at `epoch`: its owner in the next view, else in
    /// the current one. `None` when the views name no other group (the
    /// key is moving and not installed yet: ask again shortly), or the
    /// directory did not answer.
    pub async fn after_refusal(&mut self, key: &[u8], refused: GroupId, epoch: u64) -> Option<GroupId> {
        if self.views.epoch() < epoch || self.owner(key) == Some(refused) {
            self.refresh().await;
        }
        self.owners(key).find(|&g| g != refused)
    }

    /// Reads the views again (kept as they were if the directory does
    /// not answer).
    async fn refresh(&mut self) {
        if let Ok(DirectoryOutput::Views(views)) = self.directory.read(DirectoryQuery::Views, self.timeout).await {
            self.rings = [&views.next, &views.current]
                .into_iter()
                .flatten()
                .filter_map(|spec| spec.build().ok())
                .collect();
            self.views = views;
        }
    }

    /// The groups the cached views name for `key`, as [`Views::owners`].
    fn owners<'a>(&'a self, key: &'a [u8]) -> impl Iterator<Item = GroupId> + 'a {
        let mut seen = None;
        self.rings.iter().map(move |ring| ring.owner(key)).filter(move |&g| {
            let new = seen != Some(g);
            seen = Some(g);
            new
        })
    }
}

/// The directory's companion on the log: views and membership change at
/// an operator's request only (the real transport grants operator ids only
/// to holders of the cluster secret); anyone may read the views.
#[derive(Debug, Default)]
pub struct DirectoryService;

impl Companion for DirectoryService {
    type Machine = Directory;
    type Wire = WireOf<Directory>;

    fn wrap(msg: WireOf<Directory>) -> WireOf<Directory> {
        msg
    }

    fn on_message(
        &mut self,
        _: Duration,
        from: NodeId,
        msg: WireOf<Directory>,
        _: &Raft<Directory>,
        _: &mut Out<Directory, WireOf<Directory>>,
    ) -> Option<WireOf<Directory>> {
        if matches!(msg, Wire::Command { .. } | Wire::Reconfigure { .. }) && !is_operator(from) {
            tracing::warn!(from, "dropping a directory change from a non-operator");
            return None;
        }
        Some(msg)
    }
}

/// Runs replica `env.id()` of the directory group `members` until
/// storage fails (see [`crate::log::service::run`]).
pub async fn run<E: Env>(
    env: E,
    group: (Vec<NodeId>, Boot),
    config: Config,
    observer: Arc<dyn Observer<Event>>,
) -> Result<(), NodeError> {
    service::run(env, group, config, DirectoryService, observer).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(epoch: u64, groups: &[(GroupId, u32)]) -> ViewSpec {
        ViewSpec {
            epoch,
            groups: groups.to_vec(),
            vnodes: 8,
        }
    }

    /// Views follow one another epoch by epoch, one rebalance at a time,
    /// and every step repeated is done.
    #[test]
    fn views_begin_and_finish_in_order() {
        let mut d = Directory::default();
        let first = spec(1, &[(1, 1)]);
        assert_eq!(
            d.apply(&DirectoryCommand::Begin(spec(2, &[(1, 1)]))),
            DirectoryOutput::Refused(DirectoryRefusal::WrongEpoch)
        );
        assert_eq!(d.apply(&DirectoryCommand::Begin(first.clone())), DirectoryOutput::Done);
        assert_eq!(d.apply(&DirectoryCommand::Begin(first.clone())), DirectoryOutput::Done);
        assert_eq!(
            d.apply(&DirectoryCommand::Begin(spec(1, &[(2, 1)]))),
            DirectoryOutput::Refused(DirectoryRefusal::InProgress)
        );
        assert_eq!(d.apply(&DirectoryCommand::Finish { epoch: 1 }), DirectoryOutput::Done);
        assert_eq!(d.apply(&DirectoryCommand::Finish { epoch: 1 }), DirectoryOutput::Done);
        assert_eq!(
            d.apply(&DirectoryCommand::Begin(spec(2, &[(1, 0)]))),
            DirectoryOutput::Refused(DirectoryRefusal::InvalidView)
        );
        // A view whose moves and rings no process could carry: at 160
        // points per unit, weight 1000 is 160,000 points.
        let huge = ViewSpec {
            epoch: 2,
            groups: vec![(1, 1), (2, 1000)],
            vnodes: 160,
        };
        assert!(matches!(
            huge.build(),
            Err(ViewError::TooManyPoints { points: 160_160, .. })
        ));
        assert_eq!(
            d.apply(&DirectoryCommand::Begin(huge)),
            DirectoryOutput::Refused(DirectoryRefusal::InvalidView)
        );
        let second = spec(2, &[(1, 1), (2, 3)]);
        assert_eq!(d.apply(&DirectoryCommand::Begin(second.clone())), DirectoryOutput::Done);
        assert_eq!(
            d.apply(&DirectoryCommand::Finish { epoch: 3 }),
            DirectoryOutput::Refused(DirectoryRefusal::WrongEpoch)
        );
        let DirectoryOutput::Views(views) = d.query(&DirectoryQuery::Views) else {
            panic!("views")
        };
        assert_eq!(views.epoch(), 2);
        let key = b"some-lock";
        let owners = views.owners(key);
        assert_eq!(owners[0], second.build().unwrap().owner(key));
        assert!(owners.contains(&1), "then its owner in the current view");
        assert_eq!(views.current, Some(first));
        assert_eq!(views.next, Some(second));
        let mut copy = Directory::default();
        copy.restore(&d.snapshot().unwrap()).unwrap();
        assert_eq!(copy, d);
    }

    /// Only an operator changes the views.
    #[test]
    fn only_operators_change_the_views() {
        use rand::SeedableRng;
        let raft = Raft::<Directory>::recover(
            1,
            &[1],
            Boot::Genesis(vec![1]),
            Config::default(),
            rand_chacha::ChaCha8Rng::seed_from_u64(1),
            &[],
            Duration::ZERO,
        )
        .unwrap();
        let mut service = DirectoryService;
        let mut out = Out::new(1, None);
        let begin = || Wire::Command {
            client: 1,
            seq: 1,
            command: DirectoryCommand::Begin(spec(1, &[(1, 1)])),
        };
        let read = Wire::Read {
            client: 1,
            id: 1,
            query: DirectoryQuery::Views,
        };
        let ms = Duration::from_millis;
        assert!(service.on_message(ms(0), 200, begin(), &raft, &mut out).is_none());
        assert!(service.on_message(ms(0), 200, read, &raft, &mut out).is_some());
        let operator = crate::log::membership::OPERATOR_IDS.start;
        assert!(service.on_message(ms(0), operator, begin(), &raft, &mut out).is_some());
    }
}
