//! The adversary of scenarios whose servers run the replicated log: hostile
//! Raft messages for [`FaultKind::Rogue`](crate::plan::FaultKind::Rogue).
//!
//! A member that lies plausibly (a forged vote in the current term, a false
//! acknowledgement) breaks Raft's safety, which no crash-fault protocol
//! survives, so the adversary forges only what an honest replica can tell
//! is absurd and must refuse without a trace: terms no election reaches
//! (near `u64::MAX`, or far beyond `MAX_TERM_STEP`), indices beyond
//! `MAX_INDEX`, snapshots that do not decode. A correct replica is then
//! exactly as if the message never came, and any violation is a bug.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;

use ringfence::env::NodeId;
use ringfence::log::membership::Membership;
use ringfence::log::{Entry, Index, Message, Payload, Term, MAX_INDEX, MAX_MEMBERS, MAX_SNAPSHOT_BYTES, MAX_TERM_STEP};

/// One hostile message. `known` is a term the group has reached (the latest
/// leader's, say): messages near it carry some other absurd field instead.
pub fn raft_message<C>(rng: &mut ChaCha8Rng, known: Term) -> Message<C> {
    match rng.gen_range(0..4) {
        // The terms that break an unchecked increment, in messages whose
        // other fields are sane, so that only the term can be refused.
        0 | 1 => {
            let term = u64::MAX - rng.gen_range(0..2);
            sane_fields(rng, term)
        }
        2 => {
            let term = rng.gen_range(known.saturating_add(MAX_TERM_STEP).saturating_add(1)..=u64::MAX);
            if rng.gen_bool(0.5) {
                sane_fields(rng, term)
            } else {
                random_fields(rng, term)
            }
        }
        _ => {
            let term = known.saturating_add(rng.gen_range(0..3));
            absurd_fields(rng, term)
        }
    }
}

/// A message at `term` that an honest member of a young group could send.
fn sane_fields<C>(rng: &mut ChaCha8Rng, term: Term) -> Message<C> {
    let small = |rng: &mut ChaCha8Rng| rng.gen_range(0..64);
    match rng.gen_range(0..7) {
        0 => Message::RequestVote {
            term,
            last_index: small(rng),
            last_term: small(rng),
        },
        5 => Message::PreVote {
            term,
            last_index: small(rng),
            last_term: small(rng),
        },
        6 => Message::PreVoteReply {
            term,
            granted: rng.gen(),
            incarnation: rng.gen(),
        },
        1 => Message::Vote {
            term,
            granted: rng.gen(),
            incarnation: rng.gen(),
        },
        2 => {
            let prev_index = small(rng);
            let prev_term = if prev_index == 0 { 0 } else { small(rng) };
            Message::Append {
                term,
                prev_index,
                prev_term,
                entries: noops(rng, prev_index, prev_term),
                commit: small(rng),
                read_seq: small(rng),
            }
        }
        3 => Message::AppendReply {
            term,
            success: rng.gen(),
            index: small(rng),
            read_seq: small(rng),
            incarnation: rng.gen(),
        },
        _ => Message::SnapshotReply {
            term,
            last_index: small(rng),
            received: (small(rng), small(rng)),
            read_seq: small(rng),
            incarnation: rng.gen(),
        },
    }
}

/// A message at `term` with every field drawn from anywhere.
fn random_fields<C>(rng: &mut ChaCha8Rng, term: Term) -> Message<C> {
    match rng.gen_range(0..4) {
        // A handover in the name of a member that is no leader.
        3 => Message::TimeoutNow { term },
        0 => Message::RequestVote {
            term,
            last_index: rng.gen(),
            last_term: rng.gen(),
        },
        1 => Message::Append {
            term,
            prev_index: rng.gen(),
            prev_term: rng.gen(),
            entries: (0..rng.gen_range(0..4))
                .map(|_| Entry {
                    term: rng.gen(),
                    index: rng.gen(),
                    payload: Payload::Noop,
                })
                .collect(),
            commit: rng.gen(),
            read_seq: rng.gen(),
        },
        _ => {
            let data: Vec<u8> = (0..rng.gen_range(0..32)).map(|_| rng.gen()).collect();
            let offset = if rng.gen() { 0 } else { rng.gen_range(0..64) };
            Message::InstallSnapshot {
                term,
                last_index: rng.gen(),
                last_term: rng.gen_range(0..=term),
                membership: Membership::default(),
                offset,
                total: offset + data.len() as u64 + if rng.gen() { 0 } else { rng.gen_range(0..64) },
                data,
                read_seq: rng.gen(),
            }
        }
    }
}

/// A message at a plausible `term` whose other fields no honest member
/// sends: an index beyond the largest, or a snapshot that does not decode.
fn absurd_fields<C>(rng: &mut ChaCha8Rng, term: Term) -> Message<C> {
    let huge = |rng: &mut ChaCha8Rng| rng.gen_range(MAX_INDEX + 1..=u64::MAX);
    match rng.gen_range(0..8) {
        0 => Message::RequestVote {
            term,
            last_index: huge(rng),
            last_term: rng.gen_range(0..=term),
        },
        1 => {
            let prev_index = huge(rng);
            Message::Append {
                term,
                prev_index,
                prev_term: rng.gen_range(0..=term),
                entries: Vec::new(),
                commit: huge(rng),
                read_seq: rng.gen(),
            }
        }
        2 => Message::AppendReply {
            term,
            success: true,
            index: huge(rng),
            read_seq: rng.gen(),
            incarnation: rng.gen(),
        },
        3 => Message::InstallSnapshot {
            term,
            last_index: rng.gen_range(1 << 20..=MAX_INDEX),
            last_term: rng.gen_range(0..=term),
            membership: Membership::default(),
            // A run of continuation bytes: an overlong length that no
            // decoder accepts, whole in one chunk.
            offset: 0,
            total: 24,
            data: vec![0xff; 24],
            read_seq: rng.gen(),
        },
        4 => Message::SnapshotReply {
            term,
            last_index: huge(rng),
            received: (huge(rng), rng.gen()),
            read_seq: rng.gen(),
            incarnation: rng.gen(),
        },
        // A chunk that runs past the snapshot's end.
        5 => Message::InstallSnapshot {
            term,
            last_index: rng.gen_range(1..=MAX_INDEX),
            last_term: rng.gen_range(0..=term),
            membership: Membership::default(),
            offset: rng.gen_range(u64::MAX - 16..=u64::MAX),
            total: rng.gen_range(0..64),
            data: vec![0; rng.gen_range(1..24)],
            read_seq: rng.gen(),
        },
        // A snapshot larger than any replica takes, announced in its
        // first chunk (a replica that believed it would hold it all).
        6 => Message::InstallSnapshot {
            term,
            last_index: rng.gen_range(1..=MAX_INDEX),
            last_term: rng.gen_range(0..=term),
            membership: Membership::default(),
            offset: 0,
            total: rng.gen_range(MAX_SNAPSHOT_BYTES as u64 + 1..=u64::MAX),
            data: vec![0; rng.gen_range(0..24)],
            read_seq: rng.gen(),
        },
        // A configuration larger than any group.
        _ => Message::InstallSnapshot {
            term,
            last_index: rng.gen_range(1..=MAX_INDEX),
            last_term: rng.gen_range(0..=term),
            membership: Membership {
                voters: (0..=MAX_MEMBERS as NodeId).map(|n| (n, rng.gen())).collect(),
                learners: BTreeSet::new(),
            },
            offset: 0,
            total: 0,
            data: Vec::new(),
            read_seq: rng.gen(),
        },
    }
}

/// A few no-op entries that follow `prev_index` in one term.
fn noops<C>(rng: &mut ChaCha8Rng, prev_index: Index, prev_term: Term) -> Vec<Entry<C>> {
    (0..rng.gen_range(0..3))
        .map(|i| Entry {
            term: prev_term,
            index: prev_index + 1 + i,
            payload: Payload::Noop,
        })
        .collect()
}
