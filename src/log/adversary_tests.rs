//! Hostile input: a 3-replica group fed well-formed messages with arbitrary
//! fields (terms and indices anywhere up to `u64::MAX`, random entries,
//! random snapshot bytes) from members and non-members, interleaved with
//! ticks, deliveries, client commands and restarts. No replica may panic,
//! every handler's `check` must hold, what a replica wrote must recover, and
//! where the hostile messages are ones an honest replica refuses, Raft's
//! safety (one leader per term) must hold as well.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::membership::{Boot, Membership, GENESIS};
use super::*;
use crate::env::{codec, NodeId};

type W = WireOf<Kv>;

const MEMBERS: [NodeId; 3] = [1, 2, 3];

fn config(bug: Option<LogBug>) -> Config {
    Config {
        snapshot_every: 8,
        max_entries_per_append: 4,
        paranoid: true,
        bug,
        ..Config::default()
    }
}

/// Three replicas, their disks (everything appended counts as synced) and a
/// FIFO network between them; clients' answers are dropped.
struct Group {
    nodes: BTreeMap<NodeId, Raft<Kv>>,
    disks: BTreeMap<NodeId, Vec<Vec<u8>>>,
    net: VecDeque<(NodeId, NodeId, W)>,
    now: Duration,
    incarnations: u64,
    leaders: BTreeMap<Term, NodeId>,
    /// Set when two replicas led one term.
    split: Option<String>,
    /// Appends refused for contradicting a committed entry.
    contradicted: usize,
    bug: Option<LogBug>,
}

impl Group {
    fn new(bug: Option<LogBug>) -> Self {
        let mut g = Group {
            nodes: BTreeMap::new(),
            disks: MEMBERS.iter().map(|&id| (id, Vec::new())).collect(),
            net: VecDeque::new(),
            now: Duration::ZERO,
            incarnations: 0,
            leaders: BTreeMap::new(),
            split: None,
            contradicted: 0,
            bug,
        };
        for id in MEMBERS {
            g.restart(id);
        }
        g
    }

    /// Rebuilds `id` from its disk: what a replica wrote must recover.
    fn restart(&mut self, id: NodeId) {
        self.incarnations += 1;
        let rng = ChaCha8Rng::seed_from_u64(self.incarnations);
        let raft = Raft::recover(
            id,
            &MEMBERS,
            Boot::Genesis(MEMBERS.to_vec()),
            config(self.bug),
            rng,
            &self.disks[&id],
            self.now,
        )
        .unwrap_or_else(|e| panic!("node {id} cannot recover what it wrote: {e}"));
        self.nodes.insert(id, raft);
    }

    fn execute(&mut self, id: NodeId, out: Output<Kv>) {
        let disk = self.disks.get_mut(&id).expect("member");
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
                Event::Contradicted { .. } => self.contradicted += 1,
                _ => {}
            }
        }
        for (to, msg) in out.messages {
            if MEMBERS.contains(&to) {
                self.net.push_back((id, to, msg));
            }
        }
    }

    fn step(&mut self, action: Action) {
        match action {
            Action::Tick(ms) => {
                self.now += Duration::from_millis(ms);
                for id in MEMBERS {
                    let out = self.nodes.get_mut(&id).expect("member").on_tick(self.now);
                    self.execute(id, out);
                }
            }
            Action::Deliver(n) => {
                for _ in 0..n {
                    let Some((from, to, msg)) = self.net.pop_front() else {
                        break;
                    };
                    self.deliver(from, to, msg);
                }
            }
            Action::Command { to, client, seq } => {
                let command = KvCommand::Add {
                    key: "x".into(),
                    delta: 1,
                };
                self.deliver(1000 + client as NodeId, to, Wire::Command { client, seq, command });
            }
            Action::Restart(id) => self.restart(id),
            Action::Inject { from, to, msg } => self.deliver(from, to, msg),
            Action::Bytes { from, to, bytes } => {
                if let Ok(msg) = codec::decode::<W>(&bytes) {
                    self.deliver(from, to, msg);
                }
            }
        }
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, msg: W) {
        let now = self.now;
        let out = self.nodes.get_mut(&to).expect("member").on_messages(now, [(from, msg)]);
        self.execute(to, out);
    }
}

#[derive(Debug, Clone)]
enum Action {
    Tick(u64),
    Deliver(usize),
    Command { to: NodeId, client: ClientId, seq: u64 },
    Restart(NodeId),
    Inject { from: NodeId, to: NodeId, msg: W },
    Bytes { from: NodeId, to: NodeId, bytes: Vec<u8> },
}

fn term() -> impl Strategy<Value = Term> {
    prop_oneof![0..8u64, any::<u64>(), (0..4u64).prop_map(|d| u64::MAX - d)]
}

fn index() -> impl Strategy<Value = Index> {
    prop_oneof![0..40u64, any::<u64>(), (0..4u64).prop_map(|d| u64::MAX - d)]
}

fn payload() -> impl Strategy<Value = Payload<KvCommand>> {
    prop_oneof![
        Just(Payload::Noop),
        (any::<u64>(), 0..4u64, 0..8u32, any::<u64>()).prop_map(|(client, seq, reply_to, delta)| Payload::Command {
            client,
            seq,
            reply_to,
            command: KvCommand::Add { key: "x".into(), delta },
        }),
    ]
}

/// Entries that are random, or that follow each other as a leader's do (so
/// the hostile appends also reach the code past the consistency checks).
fn entries() -> impl Strategy<Value = Vec<Entry<KvCommand>>> {
    let entry = (term(), index(), payload()).prop_map(|(term, index, payload)| Entry { term, index, payload });
    prop_oneof![
        prop::collection::vec(entry, 0..4),
        (0..30u64, 0..6u64, prop::collection::vec(payload(), 0..5)).prop_map(|(start, term, payloads)| {
            payloads
                .into_iter()
                .enumerate()
                .map(|(i, payload)| Entry {
                    term,
                    index: start + 1 + i as Index,
                    payload,
                })
                .collect()
        }),
    ]
}

/// Random bytes, or a real snapshot of a few applied commands.
fn snapshot() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..24),
        (0..5u64).prop_map(|n| {
            let mut r = Replicated::<Kv>::new(8);
            for i in 0..n {
                let command = KvCommand::Add {
                    key: "x".into(),
                    delta: 1,
                };
                r.apply(i + 1, (0, i), 1, &command);
            }
            r.snapshot().unwrap()
        }),
    ]
}

fn message() -> impl Strategy<Value = Message<KvCommand>> {
    prop_oneof![
        (term(), index(), term()).prop_map(|(term, last_index, last_term)| Message::RequestVote {
            term,
            last_index,
            last_term
        }),
        (term(), any::<bool>()).prop_map(|(term, granted)| Message::Vote {
            term,
            granted,
            incarnation: GENESIS
        }),
        (term(), index(), term()).prop_map(|(term, last_index, last_term)| Message::PreVote {
            term,
            last_index,
            last_term
        }),
        (term(), any::<bool>()).prop_map(|(term, granted)| Message::PreVoteReply {
            term,
            granted,
            incarnation: GENESIS
        }),
        (term(), index(), term(), entries(), index(), any::<u64>()).prop_map(
            |(term, prev_index, prev_term, entries, commit, read_seq)| Message::Append {
                term,
                prev_index,
                prev_term,
                entries,
                commit,
                read_seq
            }
        ),
        (term(), any::<bool>(), index(), prop_oneof![0..4u64, any::<u64>()]).prop_map(
            |(term, success, index, read_seq)| Message::AppendReply {
                term,
                success,
                index,
                read_seq,
                incarnation: GENESIS,
            }
        ),
        (
            term(),
            index(),
            term(),
            snapshot(),
            any::<u64>(),
            0..64u64,
            any::<bool>()
        )
            .prop_map(|(term, last_index, last_term, data, read_seq, offset, whole)| {
                let end = offset + data.len() as u64;
                Message::InstallSnapshot {
                    term,
                    last_index,
                    last_term,
                    membership: Membership::genesis(&MEMBERS),
                    offset: if whole { 0 } else { offset },
                    total: if whole { data.len() as u64 } else { end + offset },
                    data,
                    read_seq,
                }
            }),
        term().prop_map(|term| Message::TimeoutNow { term }),
        (term(), index(), any::<u64>(), any::<u64>()).prop_map(|(term, last_index, read_seq, bytes)| {
            Message::SnapshotReply {
                term,
                last_index,
                received: (last_index, bytes),
                read_seq,
                incarnation: GENESIS,
            }
        }),
    ]
}

fn wire() -> impl Strategy<Value = W> {
    prop_oneof![
        4 => message().prop_map(Wire::Raft),
        1 => (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(client, seq, delta)| Wire::Command {
            client,
            seq,
            command: KvCommand::Add { key: "x".into(), delta },
        }),
        1 => (any::<u64>(), any::<u64>()).prop_map(|(client, id)| Wire::Read {
            client,
            id,
            query: KvQuery::Get { key: "x".into() },
        }),
    ]
}

fn member() -> impl Strategy<Value = NodeId> {
    prop::sample::select(MEMBERS.to_vec())
}

/// Actions an honest group takes, plus the hostile ones `hostile` makes.
fn actions(hostile: BoxedStrategy<Action>) -> impl Strategy<Value = Vec<Action>> {
    let honest = prop_oneof![
        3 => (1..200u64).prop_map(Action::Tick),
        4 => (1..12usize).prop_map(Action::Deliver),
        2 => (member(), 0..4u64, 1..6u64).prop_map(|(to, client, seq)| Action::Command { to, client, seq }),
        1 => member().prop_map(Action::Restart),
    ];
    prop::collection::vec(prop_oneof![6 => honest, 3 => hostile], 1..80)
}

/// Anything, from anyone (members included): a member that lies may break
/// Raft's safety, which no crash-fault protocol survives, but it must not
/// crash an honest replica.
fn anything() -> BoxedStrategy<Action> {
    let from = prop_oneof![member(), 0..8u32, any::<u32>()];
    prop_oneof![
        4 => (from.clone(), member(), wire()).prop_map(|(from, to, msg)| Action::Inject { from, to, msg }),
        1 => (from, member(), prop::collection::vec(any::<u8>(), 0..48))
            .prop_map(|(from, to, bytes)| Action::Bytes { from, to, bytes }),
    ]
    .boxed()
}

/// Hostile messages an honest replica refuses or that cannot lie about the
/// protocol: anything from a non-member, and members' messages carrying a
/// term no honest replica reaches in a test (far beyond `MAX_TERM_STEP`).
fn refusable() -> BoxedStrategy<Action> {
    let outsider = (4..u32::MAX, member(), wire()).prop_map(|(from, to, msg)| Action::Inject { from, to, msg });
    let absurd = (member(), member(), message(), (1u64 << 40)..=u64::MAX).prop_map(|(from, to, mut msg, t)| {
        set_term(&mut msg, t);
        Action::Inject {
            from,
            to,
            msg: Wire::Raft(msg),
        }
    });
    prop_oneof![outsider, absurd].boxed()
}

fn set_term(msg: &mut Message<KvCommand>, t: Term) {
    match msg {
        Message::RequestVote { term, .. }
        | Message::PreVote { term, .. }
        | Message::PreVoteReply { term, .. }
        | Message::Vote { term, .. }
        | Message::Append { term, .. }
        | Message::AppendReply { term, .. }
        | Message::InstallSnapshot { term, .. }
        | Message::TimeoutNow { term }
        | Message::SnapshotReply { term, .. } => *term = t,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    /// Any message from any sender: no panic (each handler runs `check`,
    /// paranoid), and every replica recovers from what it wrote.
    #[test]
    fn hostile_messages_never_crash_a_replica(actions in actions(anything())) {
        let mut g = Group::new(None);
        for action in actions {
            g.step(action);
        }
        for id in MEMBERS {
            g.restart(id);
        }
    }

    /// Messages from outsiders or with absurd terms change nothing that
    /// matters: one leader per term, and the group still elects a leader.
    #[test]
    fn refused_messages_keep_raft_safe(actions in actions(refusable())) {
        let mut g = Group::new(None);
        for action in actions {
            g.step(action);
        }
        prop_assert_eq!(g.split.take(), None);
        prop_assert_eq!(g.contradicted, 0);
        for id in MEMBERS {
            prop_assert!(g.nodes[&id].term() < 1 << 40, "node {} adopted an absurd term", id);
        }
    }
}

/// A settled group, one RequestVote from a member with term `term`, then
/// elections.
fn forged_vote_then_elections(bug: Option<LogBug>, term: Term) -> Group {
    let mut g = settled(bug);
    g.step(Action::Inject {
        from: 2,
        to: 1,
        msg: Wire::Raft(Message::RequestVote {
            term,
            last_index: 0,
            last_term: 0,
        }),
    });
    for _ in 0..40 {
        g.step(Action::Tick(100));
        g.step(Action::Deliver(64));
        g.step(Action::Command {
            to: 1,
            client: 1,
            seq: 1,
        });
    }
    g
}

#[test]
fn a_forged_maximal_term_is_refused_and_the_group_carries_on() {
    for term in [u64::MAX, u64::MAX - 1, 1 << 40] {
        let g = forged_vote_then_elections(None, term);
        assert!(g.nodes.values().all(|r| r.term() < 1 << 32), "term {term} was adopted");
        assert!(g.nodes.values().any(|r| r.role() == Role::Leader));
    }
}

/// The planted bug adopts the forged term. It spreads to every replica,
/// and no pre-vote can ask for a term above it: the group never elects a
/// leader again.
#[test]
fn the_unchecked_term_bug_leaves_the_group_without_a_leader() {
    let g = forged_vote_then_elections(Some(LogBug::UncheckedTerm), u64::MAX);
    assert!(g
        .nodes
        .values()
        .all(|r| r.term() == u64::MAX && r.role() != Role::Leader));
}

/// A group with a leader and a committed command.
fn settled(bug: Option<LogBug>) -> Group {
    let mut g = Group::new(bug);
    for _ in 0..20 {
        g.step(Action::Tick(100));
        g.step(Action::Deliver(64));
    }
    g.step(Action::Command {
        to: leader(&g),
        client: 1,
        seq: 1,
    });
    for _ in 0..3 {
        g.step(Action::Tick(60));
        g.step(Action::Deliver(64));
    }
    g
}

fn leader(g: &Group) -> NodeId {
    *g.nodes
        .iter()
        .find(|(_, r)| r.role() == Role::Leader)
        .expect("a leader")
        .0
}

fn inject(g: &mut Group, from: NodeId, to: NodeId, msg: Message<KvCommand>) {
    g.step(Action::Inject {
        from,
        to,
        msg: Wire::Raft(msg),
    });
}

#[test]
fn a_leader_refuses_a_match_beyond_its_log_and_an_append_of_its_own_term() {
    let mut g = settled(None);
    let l = leader(&g);
    let peer = MEMBERS.into_iter().find(|&m| m != l).expect("a peer");
    let term = g.nodes[&l].term();
    let reply = Message::AppendReply {
        term,
        success: true,
        index: 1_000,
        read_seq: 0,
        incarnation: GENESIS,
    };
    inject(&mut g, peer, l, reply);
    let append = Message::Append {
        term,
        prev_index: 0,
        prev_term: 0,
        entries: vec![],
        commit: 0,
        read_seq: 0,
    };
    inject(&mut g, peer, l, append);
    let data = Replicated::<Kv>::new(8).snapshot().unwrap();
    let snapshot = Message::InstallSnapshot {
        term,
        last_index: 100,
        last_term: term,
        membership: Membership::genesis(&MEMBERS),
        offset: 0,
        total: data.len() as u64,
        data,
        read_seq: 0,
    };
    inject(&mut g, peer, l, snapshot);
    assert_eq!(g.nodes[&l].role(), Role::Leader);
    assert_eq!(g.nodes[&l].term(), term);
}

#[test]
fn a_follower_takes_an_appended_command_of_the_largest_size_and_refuses_one_byte_more() {
    let mut g = settled(None);
    let l = leader(&g);
    let f = MEMBERS.into_iter().find(|&m| m != l).expect("a follower");
    let term = g.nodes[&f].term();
    let put = |len: usize| KvCommand::Put {
        key: "k".repeat(len),
        value: 0,
    };
    let len = (0..MAX_COMMAND_BYTES)
        .find(|&len| codec::encode(&put(len)).unwrap().len() == MAX_COMMAND_BYTES)
        .expect("a key length that hits the limit");
    for (seq, len, taken) in [(7, len, true), (8, len + 1, false)] {
        let last = g.nodes[&f].last_index();
        let append = Message::Append {
            term,
            prev_index: last,
            prev_term: g.nodes[&f].term_at(last).expect("the follower's last entry"),
            entries: vec![Entry {
                term,
                index: last + 1,
                payload: Payload::Command {
                    client: 9,
                    seq,
                    reply_to: 9,
                    command: put(len),
                },
            }],
            commit: 0,
            read_seq: 0,
        };
        inject(&mut g, l, f, append);
        assert_eq!(g.nodes[&f].last_index() == last + 1, taken, "{len} bytes of key");
    }
}

#[test]
fn a_follower_refuses_undecodable_snapshots_and_inconsistent_appends() {
    let mut g = settled(None);
    let l = leader(&g);
    let f = MEMBERS.into_iter().find(|&m| m != l).expect("a follower");
    let (term, applied) = (g.nodes[&f].term(), g.nodes[&f].applied_index());
    assert!(
        g.nodes[&f].commit_index() >= 1,
        "the follower knows entry 1 is committed"
    );
    let first = g.nodes[&f].term_at(1);
    let snapshot = Message::InstallSnapshot {
        term: term + 1,
        last_index: 50,
        last_term: term,
        membership: Membership::genesis(&MEMBERS),
        offset: 0,
        total: 7,
        data: vec![0xff; 7],
        read_seq: 0,
    };
    inject(&mut g, l, f, snapshot);
    assert_eq!(g.nodes[&f].applied_index(), applied, "the bad snapshot was installed");
    assert_eq!(g.nodes[&f].term(), term, "a refused message moved the term");
    // Index 1 has no predecessor with a term.
    let append = Message::Append {
        term,
        prev_index: 0,
        prev_term: 1,
        entries: vec![],
        commit: 0,
        read_seq: 0,
    };
    inject(&mut g, l, f, append);
    // Committed entry 1 rewritten in a later term.
    let rewrite = Message::Append {
        term: term + 1,
        prev_index: 0,
        prev_term: 0,
        entries: vec![Entry {
            term: term + 1,
            index: 1,
            payload: Payload::Noop,
        }],
        commit: 0,
        read_seq: 0,
    };
    inject(&mut g, l, f, rewrite);
    assert_eq!(g.nodes[&f].term_at(1), first);
}

/// Recovers replica 1 of a genesis group from `records` after its identity
/// record.
fn recover_from(records: &[Record<KvCommand>]) -> Result<(), RecoverError> {
    let identity: Record<KvCommand> = Record::Identity {
        incarnation: GENESIS,
        genesis: Membership::genesis(&MEMBERS),
    };
    let records: Vec<Vec<u8>> = std::iter::once(&identity)
        .chain(records)
        .map(|r| codec::encode(r).unwrap())
        .collect();
    let rng = ChaCha8Rng::seed_from_u64(1);
    Raft::<Kv>::recover(
        1,
        &MEMBERS,
        Boot::Genesis(MEMBERS.to_vec()),
        config(None),
        rng,
        &records,
        Duration::ZERO,
    )
    .map(drop)
}

#[test]
fn recovery_refuses_a_snapshot_record_that_does_not_decode() {
    let snapshot = |size: u64| Record::Snapshot {
        last_index: 3,
        last_term: 1,
        membership: Membership::genesis(&MEMBERS),
        size,
    };
    let part = |n: usize| Record::SnapshotPart(vec![0xff; n]);
    let result = recover_from(&[snapshot(5), part(2), part(3)]);
    assert!(
        matches!(result, Err(RecoverError::Snapshot { position: 3, .. })),
        "{result:?}"
    );
    // Parts that stop short, run over, or come without their snapshot.
    let short = recover_from(&[snapshot(5), part(2)]);
    assert!(
        matches!(short, Err(RecoverError::Structure { position: 3, .. })),
        "{short:?}"
    );
    let cut = recover_from(&[
        snapshot(5),
        part(2),
        Record::HardState {
            term: 1,
            voted_for: None,
        },
    ]);
    assert!(
        matches!(cut, Err(RecoverError::Structure { position: 3, .. })),
        "{cut:?}"
    );
    let over = recover_from(&[snapshot(5), part(6)]);
    assert!(
        matches!(over, Err(RecoverError::Structure { position: 2, .. })),
        "{over:?}"
    );
    let stray = recover_from(&[part(1)]);
    assert!(
        matches!(stray, Err(RecoverError::Structure { position: 1, .. })),
        "{stray:?}"
    );
    let too_large = recover_from(&[snapshot(config(None).max_snapshot_bytes as u64 + 1)]);
    assert!(
        matches!(too_large, Err(RecoverError::Structure { position: 1, .. })),
        "{too_large:?}"
    );
    let huge: Record<KvCommand> = Record::Entry(Entry {
        term: 1,
        index: u64::MAX,
        payload: Payload::Noop,
    });
    let result = recover_from(std::slice::from_ref(&huge));
    assert!(matches!(result, Err(RecoverError::Structure { position: 1, .. })));
    // Records without the identity record first are no log of this format.
    let rng = ChaCha8Rng::seed_from_u64(1);
    let records = vec![codec::encode(&huge).unwrap()];
    let result = Raft::<Kv>::recover(
        1,
        &MEMBERS,
        Boot::Genesis(MEMBERS.to_vec()),
        config(None),
        rng,
        &records,
        Duration::ZERO,
    );
    assert!(matches!(result, Err(RecoverError::Structure { position: 0, .. })));
}

/// A hard state at the largest term is no state a replica reaches (it could
/// never start an election again): recovery refuses a log that holds one,
/// as `admit` refuses such a term on the wire, and takes the term below it.
#[test]
fn recovery_refuses_a_term_that_cannot_be_incremented() {
    let hard_state = |term| Record::HardState { term, voted_for: None };
    let result = recover_from(&[hard_state(u64::MAX)]);
    assert!(
        matches!(result, Err(RecoverError::Structure { position: 1, .. })),
        "{result:?}"
    );
    recover_from(&[hard_state(u64::MAX - 1)]).expect("the term below the largest");
}

/// A snapshot acknowledgement that neither advances a follower nor belongs
/// to the leader's snapshot (a late duplicate, a forged one) is answered
/// with nothing: each one would otherwise start another send to that
/// follower.
#[test]
fn a_snapshot_reply_for_no_snapshot_of_the_leaders_sends_nothing() {
    let mut g = settled(None);
    let l = leader(&g);
    let peer = MEMBERS.into_iter().find(|&m| m != l).expect("a peer");
    g.net.clear();
    let reply = Message::SnapshotReply {
        term: g.nodes[&l].term(),
        last_index: 0,
        received: (7, 3),
        read_seq: 0,
        incarnation: GENESIS,
    };
    inject(&mut g, peer, l, reply);
    assert_eq!(g.nodes[&l].role(), Role::Leader);
    let sent: Vec<_> = g.net.iter().filter(|(from, to, _)| (*from, *to) == (l, peer)).collect();
    assert!(sent.is_empty(), "{sent:?}");
}

/// Recovery takes a log that reaches the largest index and refuses an
/// entry one beyond it, even when it follows on from the log.
#[test]
fn recovery_takes_entries_up_to_the_largest_index_and_none_beyond() {
    let data = Replicated::<Kv>::new(8).snapshot().unwrap();
    let entry = |index| {
        Record::Entry(Entry {
            term: 1,
            index,
            payload: Payload::Noop,
        })
    };
    let records = [
        Record::HardState {
            term: 1,
            voted_for: None,
        },
        Record::Snapshot {
            last_index: MAX_INDEX - 1,
            last_term: 1,
            membership: Membership::genesis(&MEMBERS),
            size: data.len() as u64,
        },
        Record::SnapshotPart(data),
        entry(MAX_INDEX),
    ];
    recover_from(&records).expect("a log up to the largest index");
    let beyond = recover_from(&[records.as_slice(), &[entry(MAX_INDEX + 1)]].concat());
    assert!(
        matches!(beyond, Err(RecoverError::Structure { position: 5, .. })),
        "{beyond:?}"
    );
}
