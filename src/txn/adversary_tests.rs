//! Hostile input for the transaction cores: arbitrary messages with
//! arbitrary fields from any sender never panic a participant or a
//! coordinator, and prepares and decisions count only from coordinators.

use std::time::Duration;

use proptest::prelude::*;

use super::coordinator::{Coordinator, CoordinatorConfig};
use super::participant::{Participant, ParticipantConfig};
use super::{CoordMsg, Decision, Knowledge, Msg, Output, ReplyMsg, ShardMsg, TxnEvent, TxnId};
use crate::env::NodeId;

/// The coordinator the shards under test know.
const C: NodeId = 1;
const CLIENT: NodeId = 1 << 20;

fn txn_id() -> impl Strategy<Value = TxnId> {
    prop_oneof![1..9u64, (1..3u64, 1..4u64).prop_map(|(e, s)| e << 32 | s), any::<u64>()]
}

fn node() -> impl Strategy<Value = NodeId> {
    prop_oneof![Just(C), 1000..1004u32, Just(CLIENT), any::<u32>()]
}

fn decision() -> impl Strategy<Value = Decision> {
    prop_oneof![Just(Decision::Commit), Just(Decision::Abort)]
}

/// Any message a shard handles, from anyone.
fn shard_msg() -> impl Strategy<Value = ShardMsg> {
    let key = prop::sample::select(vec!["a".to_string(), "b".to_string()]);
    prop_oneof![
        (txn_id(), any::<u64>(), key.clone(), prop::option::of(any::<u64>())).prop_map(|(txn, request, key, epoch)| {
            ShardMsg::Get {
                txn,
                request,
                key,
                epoch,
            }
        }),
        (txn_id(), any::<u64>(), key, any::<u8>(), prop::option::of(0..4u64)).prop_map(
            |(txn, request, key, v, epoch)| ShardMsg::Put {
                txn,
                request,
                key,
                value: vec![v],
                epoch
            }
        ),
        txn_id().prop_map(|txn| ShardMsg::Abort { txn }),
        (
            txn_id(),
            node(),
            any::<u64>(),
            prop::collection::vec(node(), 0..4),
            prop::collection::vec(node(), 0..3)
        )
            .prop_map(|(txn, client, epoch, participants, coordinators)| ShardMsg::Prepare {
                txn,
                client,
                epoch,
                participants,
                coordinators
            }),
        (txn_id(), decision()).prop_map(|(txn, decision)| ShardMsg::Decide { txn, decision }),
        txn_id().prop_map(|txn| ShardMsg::Query { txn }),
        (txn_id(), prop::option::of(decision())).prop_map(|(txn, d)| ShardMsg::Known {
            txn,
            knowledge: d.map_or(Knowledge::Uncertain, Knowledge::Decided),
        }),
    ]
}

/// Any message a coordinator handles, from anyone.
fn coord_msg() -> impl Strategy<Value = CoordMsg> {
    prop_oneof![
        any::<u64>().prop_map(|request| CoordMsg::Begin { request }),
        (txn_id(), prop::collection::vec((node(), any::<u64>()), 0..4))
            .prop_map(|(txn, participants)| CoordMsg::Commit { txn, participants }),
        txn_id().prop_map(|txn| CoordMsg::Status { txn }),
        (txn_id(), any::<bool>()).prop_map(|(txn, yes)| CoordMsg::Vote { txn, yes }),
        txn_id().prop_map(|txn| CoordMsg::Ack { txn }),
        txn_id().prop_map(|txn| CoordMsg::Query { txn }),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(CoordMsg::Log),
    ]
}

fn shard() -> Participant {
    let config = ParticipantConfig {
        coordinators: vec![C],
        ..ParticipantConfig::default()
    };
    Participant::recover(1000, &[], Duration::ZERO, config)
        .expect("empty log")
        .0
}

/// Prepares transaction 7 (writing `a`) at `p` through coordinator `C`.
fn prepare_seven(p: &mut Participant) {
    let epoch = p.epoch();
    let put = ShardMsg::Put {
        txn: 7,
        request: 1,
        key: "a".into(),
        value: vec![1],
        epoch: None,
    };
    p.on_message(Duration::ZERO, CLIENT, put);
    let prepare = ShardMsg::Prepare {
        txn: 7,
        client: CLIENT,
        epoch,
        participants: vec![1000],
        coordinators: vec![C],
    };
    p.on_message(Duration::ZERO, C, prepare);
    assert_eq!(p.prepared(), vec![7]);
}

/// Whether `out` decides transaction 7 at the shard.
fn decides_seven(out: &Output) -> bool {
    out.events.iter().any(|e| {
        matches!(
            e,
            TxnEvent::Applied { txn: 7, .. } | TxnEvent::CommitUnprepared { txn: 7 }
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_participant_survives_any_message(msgs in prop::collection::vec((node(), shard_msg(), 0..300u64), 1..60)) {
        let mut p = shard();
        let mut now = Duration::ZERO;
        for (from, msg, ms) in msgs {
            now += Duration::from_millis(ms);
            p.on_message(now, from, msg);
            p.tick(now);
        }
    }

    /// Only the coordinator (or a peer the shard asked) decides a prepared
    /// transaction.
    #[test]
    fn outsiders_never_decide_a_prepared_transaction(
        msgs in prop::collection::vec((node().prop_filter("not a coordinator or peer", |&n| n != C && n != 1000), shard_msg()), 1..60)
    ) {
        let mut p = shard();
        prepare_seven(&mut p);
        for (from, msg) in msgs {
            let steps = p.on_message(Duration::ZERO, from, msg);
            prop_assert!(!decides_seven(&steps), "an outsider decided transaction 7");
        }
        prop_assert_eq!(p.prepared(), vec![7]);
    }

    #[test]
    fn a_coordinator_survives_any_message(msgs in prop::collection::vec((node(), coord_msg(), 0..300u64), 1..60)) {
        let (mut c, _) = Coordinator::recover(C, &[], Duration::ZERO, CoordinatorConfig::default()).expect("empty log");
        let mut now = Duration::ZERO;
        for (from, msg, ms) in msgs {
            now += Duration::from_millis(ms);
            c.on_message(now, from, msg);
            c.tick(now);
        }
    }
}

#[test]
fn a_decision_from_a_client_is_refused() {
    let mut p = shard();
    prepare_seven(&mut p);
    for decision in [Decision::Commit, Decision::Abort] {
        let steps = p.on_message(Duration::ZERO, CLIENT, ShardMsg::Decide { txn: 7, decision });
        assert!(!decides_seven(&steps));
        let known = ShardMsg::Known {
            txn: 7,
            knowledge: Knowledge::Decided(decision),
        };
        assert!(!decides_seven(&p.on_message(Duration::ZERO, CLIENT, known)));
    }
    assert_eq!(p.prepared(), vec![7]);
    let commit = ShardMsg::Decide {
        txn: 7,
        decision: Decision::Commit,
    };
    assert!(decides_seven(&p.on_message(Duration::ZERO, C, commit)));
}

#[test]
fn recovery_refuses_undecodable_records() {
    let bad = vec![vec![0xff; 12]];
    assert!(Participant::recover(1000, &bad, Duration::ZERO, ParticipantConfig::default()).is_err());
    assert!(Coordinator::recover(C, &bad, Duration::ZERO, CoordinatorConfig::default()).is_err());
}

/// A replicated coordinator's leader logic in any role, at any term (a faulty
/// member can push the log's term far up): no message panics it, and it
/// issues no transaction id whose epoch half cannot hold the term.
mod leader_logic {
    use super::*;
    use crate::txn::replicated::{CoordLeader, CoordMachine, ReplicatedConfig, View};

    proptest! {
        #[test]
        fn a_driver_survives_any_message_at_any_term(
            term in prop_oneof![0..8u64, (1u64 << 31)..(1u64 << 33), any::<u64>()],
            msgs in prop::collection::vec((node(), coord_msg(), any::<bool>()), 1..40),
        ) {
            let machine = CoordMachine::default();
            let mut d = CoordLeader::new(C, vec![C, 2, 3], ReplicatedConfig::default());
            let mut now = Duration::ZERO;
            for (from, msg, leads) in msgs {
                now += Duration::from_millis(20);
                let view = View { leading: leads.then_some(term), leader: Some(C), machine: &machine };
                let fx = d.on_message(now, from, msg, &view);
                for (_, msg) in &fx.out.messages {
                    if let Msg::Reply(ReplyMsg::Began { txn, .. }) = msg {
                        prop_assert_eq!(txn >> 32, term, "ids carry the term");
                    }
                }
                d.tick(now, &view);
            }
        }
    }
}
