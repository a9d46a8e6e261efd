//! Membership changes on replicas driven by hand: growing and shrinking a
//! group, learners, a leader removing itself, a node back with an empty
//! disk, and the planted bugs of each rule, without a runtime.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::membership::{Boot, Change, ConfigStatus, Refusal};
use super::*;
use crate::env::NodeId;

type W = WireOf<Kv>;

/// Every node id a test may use; replicas take traffic from all of them.
const NODES: [NodeId; 6] = [1, 2, 3, 4, 5, 6];
const OPERATOR: NodeId = 900;
const CLIENT: NodeId = 1000;

fn config(bug: Option<LogBug>) -> Config {
    Config {
        snapshot_every: 16,
        max_entries_per_append: 4,
        paranoid: true,
        bug,
        ..Config::default()
    }
}

/// Replicas with disks (everything appended counts as synced), a FIFO
/// network, and links that can be cut.
struct Net {
    nodes: BTreeMap<NodeId, Raft<Kv>>,
    disks: BTreeMap<NodeId, Vec<Vec<u8>>>,
    queue: VecDeque<(NodeId, NodeId, W)>,
    /// Nodes cut off from every other node (answers to the operator and
    /// the client still arrive, as from a separate network).
    cut: BTreeSet<NodeId>,
    now: Duration,
    seeds: u64,
    bug: Option<LogBug>,
    leaders: BTreeMap<Term, NodeId>,
    /// Set when two replicas led one term.
    split: Option<String>,
    answers: Vec<(RequestId, Outcome<KvOutput>)>,
    seq: u64,
}

impl Net {
    fn founded_by(founders: &[NodeId], bug: Option<LogBug>) -> Self {
        let mut net = Net {
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            now: Duration::from_secs(1),
            seeds: 0,
            bug,
            leaders: BTreeMap::new(),
            split: None,
            answers: Vec::new(),
            seq: 0,
        };
        for &id in founders {
            net.start(id, &NODES, Boot::Genesis(founders.to_vec()));
        }
        net
    }

    fn start(&mut self, id: NodeId, members: &[NodeId], boot: Boot) {
        self.seeds += 1;
        let rng = ChaCha8Rng::seed_from_u64(self.seeds);
        let disk = self.disks.entry(id).or_default();
        let raft = Raft::recover(id, members, boot, config(self.bug), rng, disk, self.now)
            .unwrap_or_else(|e| panic!("node {id} cannot recover what it wrote: {e}"));
        self.nodes.insert(id, raft);
    }

    /// A new node, or one whose disk was lost, joins (empty disk).
    fn join(&mut self, id: NodeId) {
        self.disks.remove(&id);
        self.start(id, &NODES, Boot::Join);
    }

    fn restart(&mut self, id: NodeId) {
        self.start(id, &NODES, Boot::Join);
    }

    fn execute(&mut self, id: NodeId, out: Output<Kv>) {
        let disk = self.disks.get_mut(&id).expect("a disk");
        match out.rewrite {
            Some(records) => *disk = records,
            None => disk.extend(out.append),
        }
        for event in out.events {
            match event {
                Event::Leader { term } => {
                    if let Some(&other) = self.leaders.get(&term).filter(|&&o| o != id) {
                        self.split
                            .get_or_insert(format!("{other} and {id} both lead term {term}"));
                    }
                    self.leaders.insert(term, id);
                }
                Event::Contradicted { from, index } => {
                    self.split
                        .get_or_insert(format!("{from} contradicts {id}'s committed entry {index}"));
                }
                _ => {}
            }
        }
        for (to, msg) in out.messages {
            match msg {
                Wire::Response(r) if to == OPERATOR || to == CLIENT => self.answers.push((r.id, r.outcome)),
                msg if self.nodes.contains_key(&to) => self.queue.push_back((id, to, msg)),
                _ => {}
            }
        }
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, msg: W) {
        let out = self.nodes.get_mut(&to).expect("a node").on_message(self.now, from, msg);
        self.execute(to, out);
    }

    /// Runs, a message at a time, until a node other than `old` leads; the
    /// messages still in flight then are dropped.
    fn until_elected(&mut self, old: NodeId) -> NodeId {
        for _ in 0..20_000 {
            self.now += Duration::from_millis(1);
            for id in self.nodes.keys().copied().collect::<Vec<_>>() {
                let out = self.nodes.get_mut(&id).expect("a node").on_tick(self.now);
                self.execute(id, out);
            }
            while let Some((from, to, msg)) = self.queue.pop_front() {
                if self.cut.contains(&from) || self.cut.contains(&to) {
                    continue;
                }
                self.deliver(from, to, msg);
                if let Some(leader) = self.leader().filter(|&l| l != old) {
                    self.queue.clear();
                    return leader;
                }
            }
        }
        panic!("no new leader elected");
    }

    /// Runs `ms` milliseconds: every node's timers each millisecond, and
    /// every message delivered at once unless its link is cut.
    fn run(&mut self, ms: u64) {
        for _ in 0..ms {
            self.now += Duration::from_millis(1);
            for id in self.nodes.keys().copied().collect::<Vec<_>>() {
                let out = self.nodes.get_mut(&id).expect("a node").on_tick(self.now);
                self.execute(id, out);
            }
            while let Some((from, to, msg)) = self.queue.pop_front() {
                if !self.cut.contains(&from) && !self.cut.contains(&to) {
                    self.deliver(from, to, msg);
                }
            }
        }
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, r)| r.role() == Role::Leader && !self.cut.contains(&r.id()))
            .max_by_key(|(_, r)| r.term())
            .map(|(&id, _)| id)
    }

    fn settle(&mut self) -> NodeId {
        assert_eq!(self.split, None);
        for _ in 0..100 {
            self.run(20);
            if let Some(leader) = self.leader() {
                return leader;
            }
        }
        panic!("no leader elected");
    }

    /// Sends a request to the leader and runs until it is answered (or
    /// two seconds pass): the last answer.
    fn ask(&mut self, from: NodeId, msg: W, id: RequestId) -> Option<Outcome<KvOutput>> {
        let leader = self.settle();
        self.answers.clear();
        self.deliver(from, leader, msg);
        for _ in 0..200 {
            if let Some((_, outcome)) = self.answers.iter().rev().find(|(i, _)| *i == id) {
                return Some(outcome.clone());
            }
            self.run(10);
        }
        None
    }

    fn reconfigure(&mut self, change: Change) -> Result<ConfigStatus, Outcome<KvOutput>> {
        self.seq += 1;
        let id = self.seq;
        let base = self.leader().map_or(0, |l| self.nodes[&l].config_index());
        let msg = Wire::Reconfigure {
            client: 7,
            id,
            change: Some(change),
            base,
        };
        match self.ask(OPERATOR, msg, RequestId::Reconfigure(id)) {
            Some(Outcome::Configured(status)) => Ok(status),
            other => Err(other.unwrap_or(Outcome::NotLeader(None))),
        }
    }

    /// Adds 1 to `x` through the leader; true once applied.
    fn add(&mut self) -> bool {
        self.seq += 1;
        let seq = self.seq;
        let command = KvCommand::Add {
            key: "x".into(),
            delta: 1,
        };
        let msg = Wire::Command {
            client: 8,
            seq,
            command,
        };
        matches!(self.ask(CLIENT, msg, RequestId::Command(seq)), Some(Outcome::Done(_)))
    }

    fn voters(&self, id: NodeId) -> Vec<NodeId> {
        self.nodes[&id].membership().voters.keys().copied().collect()
    }
}

fn refused(refusal: Refusal) -> Outcome<KvOutput> {
    Outcome::Rejected(Reject::Reconfiguration(refusal))
}

#[test]
fn a_group_grows_from_three_to_five_and_shrinks_back_without_its_leader() {
    let mut net = Net::founded_by(&[1, 2, 3], None);
    assert!(net.add());
    for id in [4, 5] {
        net.join(id);
        net.reconfigure(Change::AddLearner(id)).expect("learner added");
        net.run(100);
        let status = net.reconfigure(Change::Promote(id)).expect("promoted");
        assert!(status.committed && status.membership.voters.contains_key(&id));
    }
    net.run(100);
    for id in 1..=5 {
        assert_eq!(net.voters(id), vec![1, 2, 3, 4, 5], "node {id}");
    }
    assert!(net.add());
    // The leader removes itself: it leads until the change commits, then
    // steps down and the others elect a leader among themselves.
    let old = net.settle();
    net.reconfigure(Change::Remove(old)).expect("leader removed");
    net.run(50);
    assert_ne!(net.nodes[&old].role(), Role::Leader, "a removed leader steps down");
    let new = net.settle();
    assert_ne!(new, old);
    let other = (1..=5).find(|&id| id != old && id != new).expect("a third voter");
    net.reconfigure(Change::Remove(other)).expect("voter removed");
    assert_eq!(net.nodes[&new].membership().voters.len(), 3);
    assert!(net.add());
    net.run(100);
    // The removed ones neither campaign nor disturb the rest.
    let term = net.nodes[&new].term();
    net.run(3_000);
    assert_eq!((net.leader(), net.nodes[&new].term()), (Some(new), term));
    let applied = net.nodes[&new].applied_index();
    for id in net.nodes[&new].membership().voters.keys() {
        assert_eq!(net.nodes[id].applied_index(), applied, "node {id} caught up");
    }
}

#[test]
fn a_learner_is_promoted_only_once_it_has_caught_up() {
    let mut net = Net::founded_by(&[1, 2, 3], None);
    for _ in 0..5 {
        assert!(net.add());
    }
    net.join(4);
    net.cut.insert(4);
    // A learner counts in no quorum: adding one that is cut off commits.
    net.reconfigure(Change::AddLearner(4)).expect("learner added");
    assert_eq!(
        net.reconfigure(Change::Promote(4)).unwrap_err(),
        refused(Refusal::LearnerBehind)
    );
    net.cut.clear();
    net.run(200);
    let status = net.reconfigure(Change::Promote(4)).expect("promoted");
    assert_eq!(status.membership.voters.get(&4), Some(&net.nodes[&4].incarnation()));
    // A retry of a change already made is answered with the configuration.
    assert!(net.reconfigure(Change::Promote(4)).is_ok());
}

/// Cuts the group at the moment a new leader is elected, before its
/// term's first entry commits.
fn fresh_leader_cut_off(bug: Option<LogBug>) -> (Net, NodeId) {
    let mut net = Net::founded_by(&[1, 2, 3], bug);
    for _ in 0..20_000 {
        net.now += Duration::from_millis(1);
        for id in [1, 2, 3] {
            let out = net.nodes.get_mut(&id).unwrap().on_tick(net.now);
            net.execute(id, out);
        }
        while let Some((from, to, msg)) = net.queue.pop_front() {
            net.deliver(from, to, msg);
            if let Some(leader) = net.leader() {
                net.queue.clear();
                net.cut.extend([1, 2, 3].into_iter().filter(|&id| id != leader));
                return (net, leader);
            }
        }
    }
    panic!("no leader elected");
}

#[test]
fn a_leader_changes_the_configuration_only_once_its_term_has_committed() {
    let (mut net, leader) = fresh_leader_cut_off(None);
    net.join(4);
    let ask = Wire::Reconfigure {
        client: 7,
        id: 1,
        change: Some(Change::AddLearner(4)),
        base: net.nodes[&leader].config_index(),
    };
    net.deliver(OPERATOR, leader, ask.clone());
    assert_eq!(
        net.answers.last().map(|a| &a.1),
        Some(&refused(Refusal::LeaderNotReady))
    );
    assert!(!net.nodes[&leader].membership().contains(4));
    // The planted bug (the thesis' first version) appends it at once.
    let (mut net, leader) = fresh_leader_cut_off(Some(LogBug::ChangeBeforeTermCommits));
    net.join(4);
    net.deliver(OPERATOR, leader, ask);
    assert!(net.nodes[&leader].membership().contains(4));
}

/// A copy of an operator's old request that arrives late (a duplicate in
/// the network, a retry outliving its operator) must not undo what was
/// decided after it. Found by the simulator: in `lock-members` (seed 1254
/// of 10,000) an operator's removal, duplicated and delayed, removed again
/// a node the operator had just added back, and the node never caught up.
#[test]
fn a_late_copy_of_an_old_change_does_not_undo_a_later_one() {
    let mut net = Net::founded_by(&[1, 2, 3], None);
    net.settle();
    net.join(4);
    net.reconfigure(Change::AddLearner(4)).expect("learner added");
    net.run(200);
    net.reconfigure(Change::Promote(4)).expect("promoted");
    let leader = net.settle();
    let remove = Wire::Reconfigure {
        client: 7,
        id: 90,
        change: Some(Change::Remove(4)),
        base: net.nodes[&leader].config_index(),
    };
    net.deliver(OPERATOR, leader, remove.clone());
    net.run(200);
    assert!(!net.nodes[&leader].membership().contains(4), "removed");
    net.reconfigure(Change::AddLearner(4)).expect("added back");
    net.run(200);
    net.reconfigure(Change::Promote(4)).expect("promoted again");
    let leader = net.settle();
    net.answers.clear();
    net.deliver(OPERATOR, leader, remove);
    net.run(200);
    assert!(
        net.nodes[&leader].membership().voters.contains_key(&4),
        "the late copy removed node 4 again"
    );
    assert_eq!(net.answers.last().map(|a| &a.1), Some(&refused(Refusal::Stale)));
}

/// Planned maintenance: the leader hands its leadership to a caught-up
/// voter, which wins the next term at once; commands go on with it.
#[test]
fn a_leader_hands_its_leadership_to_a_voter() {
    let mut net = Net::founded_by(&[1, 2, 3], None);
    let leader = net.settle();
    assert!(net.add());
    let to = [1, 2, 3].into_iter().find(|&id| id != leader).expect("a follower");
    let term = net.nodes[&leader].term();
    net.reconfigure(Change::TransferLeadership(to)).expect("handed over");
    net.run(50);
    assert_eq!(net.leader(), Some(to));
    assert_eq!(net.nodes[&to].term(), term + 1, "won the very next term");
    assert!(net.add());
    assert_eq!(
        net.reconfigure(Change::TransferLeadership(9)).unwrap_err(),
        refused(Refusal::NotApplicable),
        "only a voter"
    );
}

/// A voter that cannot catch up (cut off) is not handed leadership: the
/// leader gives up after an election timeout and takes commands again.
#[test]
fn a_handover_to_a_voter_that_cannot_catch_up_is_given_up() {
    let mut net = Net::founded_by(&[1, 2, 3], None);
    let leader = net.settle();
    let to = [1, 2, 3].into_iter().find(|&id| id != leader).expect("a follower");
    net.cut.insert(to);
    assert!(net.add());
    assert_eq!(
        net.reconfigure(Change::TransferLeadership(to)).unwrap_err(),
        refused(Refusal::TargetBehind)
    );
    assert_eq!(net.leader(), Some(leader));
    assert!(net.add(), "commands are taken again");
}

/// While it hands over, a leader sends clients to the next leader but
/// still takes its own service's proposals: the leader logic of a service
/// on the log counts on them within its term (found by the simulator: a
/// replicated coordinator's decision proposed during a handover was lost,
/// and the transaction's locks stayed held for good).
#[test]
fn a_leader_handing_over_still_takes_its_own_proposals() {
    let mut net = Net::founded_by(&[1, 2, 3], None);
    let leader = net.settle();
    let to = [1, 2, 3].into_iter().find(|&id| id != leader).expect("a follower");
    net.cut.insert(to);
    assert!(net.add());
    net.seq += 1;
    let base = net.nodes[&leader].config_index();
    let transfer: W = Wire::Reconfigure {
        client: 7,
        id: net.seq,
        change: Some(Change::TransferLeadership(to)),
        base,
    };
    net.deliver(OPERATOR, leader, transfer);
    let put = |seq| -> W {
        Wire::Command {
            client: 8,
            seq,
            command: KvCommand::Put {
                key: "y".into(),
                value: seq,
            },
        }
    };
    net.answers.clear();
    net.deliver(CLIENT, leader, put(100));
    assert_eq!(
        net.answers.last().map(|a| &a.1),
        Some(&Outcome::NotLeader(Some(to))),
        "a client goes to the next leader"
    );
    let last = net.nodes[&leader].last_index();
    net.deliver(leader, leader, put(101));
    assert_eq!(
        net.nodes[&leader].last_index(),
        last + 1,
        "its own proposal is appended"
    );
}

/// Only a replica's own leader of its term can tell it to campaign: a
/// forged handover from another member changes nothing.
#[test]
fn a_handover_from_no_leader_is_ignored() {
    let mut net = Net::founded_by(&[1, 2, 3], None);
    let leader = net.settle();
    let mut followers = [1, 2, 3].into_iter().filter(|&id| id != leader);
    let (a, b) = (followers.next().unwrap(), followers.next().unwrap());
    let term = net.nodes[&a].term();
    let handover: W = Wire::Raft(Message::TimeoutNow { term });
    net.deliver(b, a, handover.clone());
    assert_eq!((net.nodes[&a].term(), net.nodes[&a].role()), (term, Role::Follower));
    net.deliver(leader, a, handover);
    assert_eq!(net.nodes[&a].term(), term + 1, "its leader's handover is taken");
}

#[test]
fn one_change_at_a_time() {
    let mut net = Net::founded_by(&[1, 2, 3], None);
    let leader = net.settle();
    assert!(net.add());
    net.cut.extend([1, 2, 3].into_iter().filter(|&id| id != leader));
    net.answers.clear();
    let base = net.nodes[&leader].config_index();
    let first = |id, node| Wire::Reconfigure {
        client: 7,
        id,
        change: Some(Change::AddLearner(node)),
        base,
    };
    net.deliver(OPERATOR, leader, first(1, 4));
    assert!(net.answers.is_empty(), "the change waits to commit");
    net.deliver(OPERATOR, leader, first(2, 5));
    assert_eq!(
        net.answers.last().map(|a| &a.1),
        Some(&refused(Refusal::ChangeInProgress))
    );
}

/// Voters 1–3 and learner 4; the leader is cut off with the learner.
fn leader_alone_with_a_learner(bug: Option<LogBug>) -> (Net, NodeId) {
    let mut net = Net::founded_by(&[1, 2, 3], bug);
    net.join(4);
    net.reconfigure(Change::AddLearner(4)).expect("learner added");
    net.run(100);
    let leader = net.settle();
    net.cut.extend([1, 2, 3].into_iter().filter(|&id| id != leader));
    (net, leader)
}

#[test]
fn a_learner_counts_in_no_quorum() {
    let (mut net, leader) = leader_alone_with_a_learner(None);
    let commit = net.nodes[&leader].commit_index();
    net.deliver(
        CLIENT,
        leader,
        Wire::Command {
            client: 8,
            seq: 1,
            command: KvCommand::Add {
                key: "x".into(),
                delta: 1,
            },
        },
    );
    net.run(100);
    assert_eq!(
        net.nodes[&leader].commit_index(),
        commit,
        "committed by a leader and a learner"
    );
    let (mut net, leader) = leader_alone_with_a_learner(Some(LogBug::LearnerCounted));
    let commit = net.nodes[&leader].commit_index();
    net.deliver(
        CLIENT,
        leader,
        Wire::Command {
            client: 8,
            seq: 1,
            command: KvCommand::Add {
                key: "x".into(),
                delta: 1,
            },
        },
    );
    net.run(100);
    assert!(
        net.nodes[&leader].commit_index() > commit,
        "the planted bug counts the learner"
    );
}

/// Five voters; 5 is removed while cut off, so it never hears of it. Then
/// {1, 4} and {2, 3, 5} are split: among the four voters left, neither
/// side is a majority.
fn removed_member_beside_a_minority(bug: Option<LogBug>) -> Net {
    let mut net = Net::founded_by(&[1, 2, 3, 4, 5], bug);
    while net.settle() == 5 {
        net.cut.insert(5);
        net.run(1_000);
        net.cut.clear();
    }
    net.cut.insert(5);
    net.reconfigure(Change::Remove(5)).expect("removed");
    net.run(100);
    net.cut = BTreeSet::from([1, 4]);
    net.run(3_000);
    net
}

#[test]
fn a_removed_member_elects_no_one() {
    let net = removed_member_beside_a_minority(None);
    let leading = |net: &Net| [2, 3].into_iter().any(|id| net.nodes[&id].role() == Role::Leader);
    assert!(
        !leading(&net),
        "two voters of four and a removed member elected a leader"
    );
    let net = removed_member_beside_a_minority(Some(LogBug::RemovedStillVotes));
    assert!(leading(&net), "the planted bug counts the removed member's vote");
}

/// Three voters; 3 loses its disk and comes back empty under its old id,
/// then 2 is cut off: the leader and the new 3 alone.
fn wiped_voter_beside_the_leader() -> (Net, NodeId) {
    let mut net = Net::founded_by(&[1, 2, 3], None);
    let mut leader = net.settle();
    while leader == 3 {
        net.cut.insert(3);
        net.run(1_000);
        net.cut.clear();
        leader = net.settle();
    }
    assert!(net.add());
    net.join(3);
    net.run(200);
    let other = if leader == 1 { 2 } else { 1 };
    net.cut.insert(other);
    (net, leader)
}

#[test]
fn a_node_back_with_an_empty_disk_counts_in_no_quorum_until_replaced() {
    let (mut net, leader) = wiped_voter_beside_the_leader();
    let commit = net.nodes[&leader].commit_index();
    assert!(!net.add(), "committed with a voter that forgot what it stored");
    assert_eq!(net.nodes[&leader].commit_index(), commit);
    // The operator sees the stale incarnation and replaces it.
    net.cut.clear();
    let status = net.reconfigure(Change::Remove(3)).expect("removed");
    assert!(!status.membership.contains(3));
    net.reconfigure(Change::AddLearner(3)).expect("added back");
    net.run(200);
    let status = net.reconfigure(Change::Promote(3)).expect("promoted");
    let incarnation = net.nodes[&3].incarnation();
    assert_ne!(incarnation, super::membership::GENESIS);
    assert_eq!(status.membership.voters.get(&3), Some(&incarnation));
    assert!(net.add());
}

/// 1 and 3 elect a leader while 2 is cut off (so 2 stays in term 0); the
/// leader's voter loses its disk and comes back empty; then the leader is
/// cut off and 2 returns: 2 campaigns in the term the leader holds, and
/// the only vote it can get is the one the wiped voter already gave.
fn wiped_voter_asked_again(bug: Option<LogBug>) -> Net {
    let mut net = Net::founded_by(&[1, 2, 3], bug);
    net.cut.insert(2);
    let leader = net.settle();
    let voter = if leader == 1 { 3 } else { 1 };
    net.join(voter);
    net.cut = BTreeSet::from([leader]);
    net.run(3_000);
    net
}

#[test]
fn a_node_back_with_an_empty_disk_votes_no_second_time() {
    let net = wiped_voter_asked_again(None);
    assert_eq!(net.split, None);
    let net = wiped_voter_asked_again(Some(LogBug::RejoinKeepsIdentity));
    assert!(net.split.is_some(), "the planted bug lets the wiped voter vote again");
}

#[test]
fn a_new_member_gets_the_configuration_with_a_snapshot_and_keeps_it_across_a_restart() {
    let mut net = Net::founded_by(&[1, 2, 3], None);
    for _ in 0..40 {
        assert!(net.add());
    }
    let leader = net.settle();
    assert!(net.nodes[&leader].snapshot_index() > 0, "the log was compacted");
    net.join(4);
    net.reconfigure(Change::AddLearner(4)).expect("learner added");
    net.run(300);
    assert!(net.nodes[&4].snapshot_index() > 0, "the learner installed a snapshot");
    assert_eq!(net.nodes[&4].membership(), net.nodes[&leader].membership());
    net.reconfigure(Change::Promote(4)).expect("promoted");
    for _ in 0..20 {
        assert!(net.add());
    }
    net.run(100);
    let before = (net.nodes[&4].membership().clone(), net.nodes[&4].incarnation());
    net.restart(4);
    assert_eq!(
        (net.nodes[&4].membership().clone(), net.nodes[&4].incarnation()),
        before
    );
}

#[test]
fn a_change_that_would_leave_no_majority_of_live_voters_is_refused() {
    let (mut net, leader) = wiped_voter_beside_the_leader();
    net.cut.clear();
    net.run(100);
    // Voters: the leader, `other` and 3, which is back with an empty disk
    // (counted nowhere). Removing `other` would leave a group of two whose
    // majority needs the forgetful 3.
    let other = if leader == 1 { 2 } else { 1 };
    assert_eq!(
        net.reconfigure(Change::Remove(other)).unwrap_err(),
        refused(Refusal::WouldLoseQuorum)
    );
    assert!(net.add(), "the group still decides");
    // Removing 3 itself is fine: two live voters of two.
    net.reconfigure(Change::Remove(3)).expect("removed");
}

/// Ongaro's counterexample to the first version of single-server changes.
/// Voters 1–4 (say L1 leads) and learner 5. L1 promotes 5 (C1, five
/// voters), which reaches 5 alone. Cut off, L1 is replaced by L2, elected
/// by the other three; the moment it is elected, L2 removes one of them, x
/// (C2, three voters), and commits it with the third, y. Then L1, 5 and x
/// — a majority of C1 that shares nobody with C2's majority {L2, y} —
/// elect L1 again, and L1 overwrites C2, which was committed.
fn changes_decided_by_disjoint_majorities(bug: Option<LogBug>) -> Net {
    let mut net = Net::founded_by(&[1, 2, 3, 4], bug);
    net.join(5);
    net.reconfigure(Change::AddLearner(5)).expect("learner added");
    net.run(200);
    let l1 = net.settle();
    let voters: Vec<NodeId> = [1, 2, 3, 4].into_iter().filter(|&id| id != l1).collect();
    net.cut.extend(&voters);
    let promote = Wire::Reconfigure {
        client: 7,
        id: 1,
        change: Some(Change::Promote(5)),
        base: net.nodes[&l1].config_index(),
    };
    net.deliver(OPERATOR, l1, promote);
    net.run(20);
    assert_eq!(net.nodes[&5].membership().voters.len(), 5, "C1 reached 5");
    net.cut = BTreeSet::from([l1, 5]);
    let l2 = net.until_elected(l1);
    let x = *voters.iter().find(|&&id| id != l2).expect("x");
    net.cut.insert(x);
    let remove = Wire::Reconfigure {
        client: 7,
        id: 2,
        change: Some(Change::Remove(x)),
        base: net.nodes[&l2].config_index(),
    };
    net.deliver(OPERATOR, l2, remove);
    net.run(300);
    net.cut = BTreeSet::from([l2]);
    net.cut.extend(voters.iter().filter(|&&id| id != l2 && id != x));
    net.run(3_000);
    net.cut.clear();
    net.run(1_000);
    net
}

#[test]
fn changes_wait_for_the_term_so_majorities_of_two_changes_overlap() {
    let net = changes_decided_by_disjoint_majorities(None);
    assert_eq!(net.split, None);
    let net = changes_decided_by_disjoint_majorities(Some(LogBug::ChangeBeforeTermCommits));
    assert!(net.split.is_some(), "the planted bug lets disjoint majorities decide");
}

/// Voters 1–4 with 1 back on an empty disk (counted nowhere): 2, 3 and 4
/// are the majority. Leader 4 appends its own removal, is cut off before
/// anyone stores it, and restarts (forgetting what it knew committed).
/// Its log is now the longest: 2 and 3 need its vote, and it must be able
/// to campaign, under the configuration without itself, to finish the
/// change.
#[test]
fn a_leader_that_appended_its_own_removal_can_still_finish_it() {
    let mut net = Net::founded_by(&[1, 2, 3], None);
    net.join(4);
    net.reconfigure(Change::AddLearner(4)).expect("learner added");
    net.run(100);
    net.reconfigure(Change::Promote(4)).expect("promoted");
    net.join(1);
    net.run(100);
    while net.settle() != 4 {
        let leader = net.settle();
        net.cut.insert(leader);
        net.run(1_000);
        net.cut.clear();
    }
    net.run(100);
    net.cut.extend([1, 2, 3]);
    let remove = Wire::Reconfigure {
        client: 7,
        id: 1,
        change: Some(Change::Remove(4)),
        base: net.nodes[&4].config_index(),
    };
    net.deliver(OPERATOR, 4, remove);
    assert!(!net.nodes[&4].membership().contains(4), "the removal is in 4's log");
    net.run(20);
    net.restart(4);
    net.cut.clear();
    net.run(5_000);
    let leader = net.leader().expect("a leader after the removal");
    assert_ne!(leader, 4);
    assert!(!net.nodes[&leader].membership().contains(4));
    assert!(net.add());
}

/// Random membership changes, cuts, restarts and lost disks on the hand
/// driven group: no two leaders in a term, no committed entry contradicted.
fn random_history(seed: u64, bug: Option<LogBug>) -> Option<String> {
    use rand::seq::IteratorRandom;
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut net = Net::founded_by(&[1, 2, 3], bug);
    for id in [4, 5] {
        net.join(id);
    }
    let mut lost_disk = false;
    for _ in 0..40 {
        let node = *NODES[..5].iter().choose(&mut rng).expect("nodes");
        match rng.gen_range(0..8) {
            0 => net.cut = (1..=5).filter(|_| rng.gen_bool(0.3)).collect(),
            1 => net.cut.clear(),
            2 => net.restart(node),
            3 if !lost_disk => {
                lost_disk = true;
                net.join(node);
            }
            _ => {
                let change = match rng.gen_range(0..3) {
                    0 => Change::AddLearner(node),
                    1 => Change::Promote(node),
                    _ => Change::Remove(node),
                };
                if let Some(leader) = net.leader() {
                    net.seq += 1;
                    let ask = Wire::Reconfigure {
                        client: 7,
                        id: net.seq,
                        change: Some(change),
                        base: net.nodes[&leader].config_index(),
                    };
                    net.deliver(OPERATOR, leader, ask);
                }
            }
        }
        net.run(rng.gen_range(1..300));
        if net.split.is_some() {
            break;
        }
    }
    net.split
}

#[test]
fn random_membership_histories_keep_one_leader_per_term_and_committed_entries() {
    for seed in 0..300 {
        assert_eq!(random_history(seed, None), None, "seed {seed}");
    }
    // The same histories catch three of the planted bugs (the thesis bug
    // needs the exact sequence of its own test). Seen: 200, 3 and 15 of
    // the 300 seeds.
    for bug in [
        LogBug::RemovedStillVotes,
        LogBug::LearnerCounted,
        LogBug::RejoinKeepsIdentity,
    ] {
        let caught = (0..300)
            .filter(|&seed| random_history(seed, Some(bug)).is_some())
            .count();
        assert!(caught > 0, "{bug:?} never caught");
    }
}
