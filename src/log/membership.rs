//! Who is in the group: voters, learners, and the changes between them.
//!
//! # Single-server changes, not joint consensus
//!
//! A configuration changes by one member at a time (Ongaro's thesis, §4.2):
//! any majority of the old voters and any majority of the new ones then
//! overlap, so no two leaders can be elected by disjoint majorities, and the
//! protocol needs no joint state. Joint consensus (§4.3) changes several
//! members at once, at the price of a second configuration in every quorum
//! rule; an operator replacing a machine or growing 3 → 5 needs nothing a
//! sequence of single changes cannot do, so the simpler rule was chosen.
//!
//! The rules that make single changes safe, each enforced by the leader
//! before it appends a change ([`Membership::change`] and the leader's own
//! checks in `raft.rs`):
//!
//! - A configuration takes effect as soon as it is in a replica's log,
//!   committed or not (and reverts if the entry is truncated).
//! - At most one change is uncommitted at a time.
//! - A leader appends a change only once an entry of its own term has
//!   committed. Without this (the bug in the thesis' first version, found
//!   by Ongaro in 2015) a change committed by a leader of an earlier term
//!   and a change of the current one can be decided by majorities that do
//!   not overlap.
//! - A new member joins as a learner (it receives the log, is counted in no
//!   quorum) and becomes a voter only once it has caught up.
//!
//! # Incarnations: a voter is a node *and* its disk
//!
//! A replica whose disk was lost and that restarts empty under its old id
//! remembers neither its votes nor the entries it acknowledged. If it voted
//! again as that id, one term could have two leaders, and an entry a
//! majority stored could be stored by no majority any more. So every
//! replica draws an [`Incarnation`] when its disk is initialized, and a
//! configuration names each voter's incarnation: a vote or an
//! acknowledgement counts only from the incarnation the configuration
//! names. A replica that lost its disk rejoins as a new learner (the
//! operator removes the old incarnation and adds the node again) or is not
//! counted at all. The founding members of a group share incarnation
//! [`GENESIS`]: they start together from empty disks.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::types::Index;
use crate::env::NodeId;

/// Which life of a node's disk a replica is: drawn when its disk is
/// initialized, kept in its log.
pub type Incarnation = u64;

/// The incarnation of a group's founding members.
pub const GENESIS: Incarnation = 0;

/// Node ids of operators (`1 << 16` up to `2 << 16`, principal 1 of the
/// real transport's id space): the only senders whose configuration
/// requests a service on the log passes to its replica. Anyone else who
/// could reconfigure a group could remove its members.
pub const OPERATOR_IDS: std::ops::Range<NodeId> = (1 << 16)..(2 << 16);

/// Whether `id` is an operator's ([`OPERATOR_IDS`]).
pub fn is_operator(id: NodeId) -> bool {
    OPERATOR_IDS.contains(&id)
}

/// How a replica whose disk holds nothing yet starts (a replica with a log
/// ignores it: its identity record says who it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// A founding member of a group founded by these members: its first
    /// configuration, all voters of incarnation [`GENESIS`].
    Genesis(Vec<NodeId>),
    /// A node joining a running group, or coming back after its disk was
    /// lost: it draws a new incarnation, knows no configuration, votes in
    /// no quorum, and waits for a leader to send it the log. The operator
    /// adds it as a learner, then promotes it.
    Join,
}

/// The group of `members` as its founders start it: each knows the others
/// and founds the group with all of them as voters.
pub fn founding(members: Vec<NodeId>) -> (Vec<NodeId>, Boot) {
    (members.clone(), Boot::Genesis(members))
}

/// A configuration of the group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The members counted in elections and commits, each with the
    /// incarnation whose votes and acknowledgements count.
    pub voters: BTreeMap<NodeId, Incarnation>,
    /// Members that receive the log but are counted in no quorum.
    pub learners: BTreeSet<NodeId>,
}

/// One change to a configuration, as an operator asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A node starts receiving the log, counted in no quorum.
    AddLearner(NodeId),
    /// A learner that has caught up becomes a voter, in the incarnation
    /// the leader last heard from.
    Promote(NodeId),
    /// A voter or learner leaves the group. A leader that removes itself
    /// leads until the change commits, then steps down.
    Remove(NodeId),
    /// Not a change of the configuration: the leader hands its leadership
    /// to this voter (planned maintenance). It stops taking commands,
    /// brings the voter up to date and tells it to campaign at once; it is
    /// answered when it did, and the voter wins the next term unless a
    /// fault intervenes (then an election picks a leader as usual).
    TransferLeadership(NodeId),
}

/// Why a leader refused a configuration change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// An earlier change has not committed yet; retry once it has.
    #[error("an earlier configuration change has not committed yet")]
    ChangeInProgress,
    /// The leader has not yet committed an entry of its own term; retry
    /// shortly.
    #[error("the leader has not committed an entry of its term yet")]
    LeaderNotReady,
    /// The node is already a member (add) or is not a learner (promote) or
    /// not a member (remove).
    #[error("the change does not apply to this configuration")]
    NotApplicable,
    /// The learner has not caught up with the leader's commit index, or has
    /// not answered the leader yet.
    #[error("the learner has not caught up yet")]
    LearnerBehind,
    /// The change would leave no voter.
    #[error("the group would have no voter left")]
    LastVoter,
    /// The group would exceed [`super::MAX_MEMBERS`].
    #[error("the group would exceed its largest size")]
    TooMany,
    /// Too few of the new configuration's voters have answered the leader
    /// lately (in the incarnation it names) to make a majority of it: the
    /// group would stop deciding anything, this change included.
    #[error("the voters the leader hears from would be no majority of the new configuration")]
    WouldLoseQuorum,
    /// The configuration changed since the one the request was made
    /// against: ask for the status and decide again.
    #[error("the configuration changed since the request was made")]
    Stale,
    /// The voter leadership was to go to did not catch up with the leader
    /// within an election timeout; the leader leads on.
    #[error("the new leader did not catch up in time")]
    TargetBehind,
}

impl Membership {
    /// The founding configuration: every node a voter of [`GENESIS`].
    pub fn genesis(members: &[NodeId]) -> Self {
        Membership {
            voters: members.iter().map(|&m| (m, GENESIS)).collect(),
            learners: BTreeSet::new(),
        }
    }

    /// Whether `node` in `incarnation` is counted in quorums.
    pub fn is_voter(&self, node: NodeId, incarnation: Incarnation) -> bool {
        self.voters.get(&node) == Some(&incarnation)
    }

    /// Whether `node` (voter or learner) receives the log.
    pub fn contains(&self, node: NodeId) -> bool {
        self.voters.contains_key(&node) || self.learners.contains(&node)
    }

    /// Every member, voters and learners, sorted.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        let all: BTreeSet<NodeId> = self.voters.keys().chain(&self.learners).copied().collect();
        all.into_iter()
    }

    /// How many voters make a majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// The configuration after `change`, where `incarnation` is the one the
    /// leader last heard a promoted learner in. The leader's own rules
    /// (one change at a time, caught up, its term committed) come first.
    pub fn change(&self, change: Change, incarnation: Option<Incarnation>) -> Result<Membership, Refusal> {
        let mut next = self.clone();
        match change {
            Change::AddLearner(node) => {
                if self.contains(node) {
                    return Err(Refusal::NotApplicable);
                }
                if self.members().count() >= super::MAX_MEMBERS {
                    return Err(Refusal::TooMany);
                }
                next.learners.insert(node);
            }
            Change::Promote(node) => {
                if !self.learners.contains(&node) {
                    return Err(Refusal::NotApplicable);
                }
                let incarnation = incarnation.ok_or(Refusal::LearnerBehind)?;
                next.learners.remove(&node);
                next.voters.insert(node, incarnation);
            }
            Change::TransferLeadership(_) => return Err(Refusal::NotApplicable),
            Change::Remove(node) => {
                if !self.contains(node) {
                    return Err(Refusal::NotApplicable);
                }
                if self.voters.len() == 1 && self.voters.contains_key(&node) {
                    return Err(Refusal::LastVoter);
                }
                next.voters.remove(&node);
                next.learners.remove(&node);
            }
        }
        Ok(next)
    }
}

/// A leader's answer to a configuration request: the configuration it
/// holds now and what it knows of each member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// The leader's latest configuration (committed when the answer is to
    /// a change; possibly still uncommitted when it is to a status query).
    pub membership: Membership,
    /// The log index of the entry that set it (0: the founding one).
    pub index: Index,
    /// Whether that entry has committed.
    pub committed: bool,
    /// Each member other than the leader as the leader last heard it.
    pub peers: Vec<PeerStatus>,
}

/// A member as its leader last heard it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The member.
    pub node: NodeId,
    /// The incarnation its last answer came from, if it answered.
    pub incarnation: Option<Incarnation>,
    /// Index up to which its log matches the leader's.
    pub matched: Index,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_learner_is_promoted_only_in_an_incarnation_heard_from() {
        let m = Membership::genesis(&[1, 2, 3]);
        let m = m.change(Change::AddLearner(4), None).unwrap();
        assert_eq!(m.quorum(), 2, "a learner is in no quorum");
        assert_eq!(m.change(Change::Promote(4), None), Err(Refusal::LearnerBehind));
        let m = m.change(Change::Promote(4), Some(77)).unwrap();
        assert!(m.is_voter(4, 77) && !m.is_voter(4, GENESIS));
        assert_eq!(m.quorum(), 3);
    }

    #[test]
    fn changes_that_do_not_apply_are_refused() {
        let m = Membership::genesis(&[1]);
        assert_eq!(m.change(Change::AddLearner(1), None), Err(Refusal::NotApplicable));
        assert_eq!(m.change(Change::Promote(1), Some(1)), Err(Refusal::NotApplicable));
        assert_eq!(m.change(Change::Remove(2), None), Err(Refusal::NotApplicable));
        assert_eq!(m.change(Change::Remove(1), None), Err(Refusal::LastVoter));
        let full = Membership::genesis(&(1..=super::super::MAX_MEMBERS as NodeId).collect::<Vec<_>>());
        assert_eq!(full.change(Change::AddLearner(99), None), Err(Refusal::TooMany));
    }
}
