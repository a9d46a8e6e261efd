//! Runtime-free tests of the lock machine and the leader's lease timer.

use std::time::Duration;

use super::machine::{LockCommand as C, LockMachine, LockOutput as O, LockQuery, LockView, Request as R};
use super::server::LeaseTimer;
use crate::log::StateMachine;

/// A client request from the node that owns `session` in these tests
/// (node id = session id, all in principal 0).
fn cmd(request: R) -> C {
    let owner = request.session() as u32;
    C::Client { owner, request }
}

fn acquire(session: u64, request: u64, wait: bool) -> C {
    cmd(R::Acquire {
        session,
        lock: "l".into(),
        request,
        wait,
    })
}

fn opened(sessions: &[u64]) -> LockMachine {
    let mut m = LockMachine::default();
    for &s in sessions {
        assert_eq!(m.apply(&cmd(R::Open { session: s })), O::Opened);
    }
    m
}

fn renewed(m: &LockMachine, session: u64) -> u64 {
    m.sessions().find(|(s, _)| *s == session).unwrap().1
}

#[test]
fn fifo_grants_with_increasing_tokens() {
    let mut m = opened(&[1, 2, 3]);
    let O::Granted { token: t1 } = m.apply(&acquire(1, 1, true)) else {
        panic!()
    };
    let O::Queued { token: t2, ahead } = m.apply(&acquire(2, 1, true)) else {
        panic!()
    };
    assert_eq!(ahead, t1);
    let O::Queued { token: t3, ahead } = m.apply(&acquire(3, 1, true)) else {
        panic!()
    };
    assert_eq!(ahead, t2);
    assert!(t1 < t2 && t2 < t3);
    assert_eq!(m.apply(&acquire(3, 2, false)), O::Queued { token: t3, ahead: t2 });
    let release = |s, token| {
        cmd(R::Release {
            session: s,
            lock: "l".into(),
            token,
        })
    };
    assert_eq!(m.apply(&release(2, t2)), O::NotOwner, "only the owner releases");
    assert_eq!(m.apply(&release(1, t1)), O::Released);
    assert_eq!(m.holder("l"), Some((2, t2)));
    assert_eq!(m.apply(&release(1, t1)), O::NotOwner, "no double release");
    assert_eq!(m.apply(&release(2, t2)), O::Released);
    assert_eq!(m.holder("l"), Some((3, t3)));
}

#[test]
fn try_acquire_reports_busy_and_retries_are_idempotent() {
    let mut m = opened(&[1, 2]);
    let O::Granted { token } = m.apply(&acquire(1, 7, false)) else {
        panic!()
    };
    assert_eq!(
        m.apply(&acquire(1, 7, false)),
        O::Granted { token },
        "retry gets the same grant"
    );
    assert_eq!(m.apply(&acquire(2, 1, false)), O::Busy);
    m.apply(&cmd(R::Release {
        session: 1,
        lock: "l".into(),
        token,
    }));
    assert_eq!(
        m.apply(&acquire(1, 7, false)),
        O::Refused(super::Refusal::StaleRequest),
        "a finished request is not granted again"
    );
}

/// A long-lived session that takes many differently named locks: late
/// duplicates of its finished requests are still refused, new requests are
/// granted, and its memory of them (which every snapshot carries) stays
/// bounded.
#[test]
fn a_session_remembers_finished_requests_in_bounded_space() {
    let mut m = opened(&[1]);
    let take_and_release = |m: &mut LockMachine, lock: &str, request: u64| {
        let O::Granted { token } = m.apply(&cmd(R::Acquire {
            session: 1,
            lock: lock.into(),
            request,
            wait: false,
        })) else {
            panic!("lock {lock} request {request}")
        };
        assert_eq!(
            m.apply(&cmd(R::Release {
                session: 1,
                lock: lock.into(),
                token
            })),
            O::Released
        );
    };
    let late = |m: &mut LockMachine, lock: &str, request: u64| {
        m.apply(&cmd(R::Acquire {
            session: 1,
            lock: lock.into(),
            request,
            wait: false,
        }))
    };
    for request in 1..=100 {
        take_and_release(&mut m, &format!("user-{request}"), request);
    }
    let small = m.snapshot().unwrap().len();
    for request in 101..=10_000 {
        take_and_release(&mut m, &format!("user-{request}"), request);
    }
    // Longer names and numbers only; one entry per lock would add ~150 KB.
    assert!(
        m.snapshot().unwrap().len() <= 2 * small,
        "{small} then {}",
        m.snapshot().unwrap().len()
    );
    let stale = O::Refused(super::Refusal::StaleRequest);
    assert_eq!(late(&mut m, "user-1", 1), stale, "evicted long ago");
    assert_eq!(late(&mut m, "user-10000", 10_000), stale, "remembered exactly");
    let O::Granted { .. } = late(&mut m, "user-1", 10_001) else {
        panic!("a new request is granted")
    };
}

#[test]
fn finished_requests_are_remembered_exactly_for_the_latest_locks_up_to_the_limit() {
    use super::machine::FINISHED_MEMORY;
    let mut m = opened(&[1]);
    let acquire_lock = |m: &mut LockMachine, lock: String, request: u64| {
        m.apply(&cmd(R::Acquire {
            session: 1,
            lock,
            request,
            wait: false,
        }))
    };
    // Exactly the limit of locks, each taken and released with ever
    // higher request ids: every one still remembered on its own.
    for i in 1..=FINISHED_MEMORY as u64 {
        let O::Granted { token } = acquire_lock(&mut m, format!("l{i}"), 10 * i) else {
            panic!()
        };
        let release = R::Release {
            session: 1,
            lock: format!("l{i}"),
            token,
        };
        assert_eq!(m.apply(&cmd(release)), O::Released);
    }
    // So nothing was folded into the one bound yet: a request out of order
    // on a new lock, below every finished one, is no duplicate.
    let O::Granted { .. } = acquire_lock(&mut m, "new".into(), 5) else {
        panic!("a request below no bound is granted")
    };
}

#[test]
fn the_latest_ended_sessions_up_to_the_limit_cannot_be_reopened() {
    use super::machine::ENDED_MEMORY;
    let mut m = LockMachine::default();
    let sessions = 1..=ENDED_MEMORY as u64;
    for s in sessions.clone() {
        assert_eq!(m.apply(&cmd(R::Open { session: s })), O::Opened);
        m.apply(&cmd(R::Close { session: s }));
    }
    let reused = O::Refused(super::Refusal::SessionReused);
    for s in sessions {
        assert_eq!(m.apply(&cmd(R::Open { session: s })), reused, "session {s}");
    }
    // One more ended session pushes the oldest out.
    let next = ENDED_MEMORY as u64 + 1;
    m.apply(&cmd(R::Open { session: next }));
    m.apply(&cmd(R::Close { session: next }));
    assert_eq!(m.apply(&cmd(R::Open { session: 1 })), O::Opened);
}

#[test]
fn expiry_releases_and_dequeues_and_stale_expiry_is_ignored() {
    let mut m = opened(&[1, 2, 3]);
    let O::Granted { .. } = m.apply(&acquire(1, 1, true)) else {
        panic!()
    };
    let O::Queued { .. } = m.apply(&acquire(2, 1, true)) else {
        panic!()
    };
    let O::Queued { token: t3, .. } = m.apply(&acquire(3, 1, true)) else {
        panic!()
    };
    // Session 2 expires while queued: it leaves the line.
    let r2 = renewed(&m, 2);
    assert_eq!(
        m.apply(&C::Expire {
            session: 2,
            renewed: r2
        }),
        O::Expired
    );
    assert_eq!(m.apply(&cmd(R::KeepAlive { session: 2 })), O::SessionExpired);
    // Session 1 renews after the leader decided: the expiry is stale.
    let r1 = renewed(&m, 1);
    m.apply(&cmd(R::KeepAlive { session: 1 }));
    assert_eq!(
        m.apply(&C::Expire {
            session: 1,
            renewed: r1
        }),
        O::Ignored
    );
    let r1 = renewed(&m, 1);
    assert_eq!(
        m.apply(&C::Expire {
            session: 1,
            renewed: r1
        }),
        O::Expired
    );
    assert_eq!(m.holder("l"), Some((3, t3)));
    assert_eq!(
        m.apply(&cmd(R::Open { session: 2 })),
        O::Refused(super::Refusal::SessionReused)
    );
}

#[test]
fn cancel_leaves_the_line_or_reports_the_grant() {
    let mut m = opened(&[1, 2]);
    let O::Granted { token } = m.apply(&acquire(1, 1, true)) else {
        panic!()
    };
    m.apply(&acquire(2, 1, true));
    let cancel = |s| {
        cmd(R::Cancel {
            session: s,
            lock: "l".into(),
            request: 1,
        })
    };
    assert_eq!(m.apply(&cancel(2)), O::Cancelled);
    assert_eq!(m.apply(&cancel(1)), O::Granted { token });
    assert_eq!(
        m.query(&LockQuery::Lock { lock: "l".into() }),
        O::Lock(LockView {
            holder: Some((1, token)),
            waiters: vec![]
        })
    );
}

/// Withdrawing an acquire that was given up (its claim is cancelled in
/// the background) must not take the claim from a newer acquire of the
/// same session, which took it over. Found by the simulator
/// (`lock-members` seed 5051 of 10,000): a client whose acquire timed out
/// behind a one-way partition acquired again; the old acquire's withdrawal
/// was answered with the new grant, released it, and the client went on
/// writing under a lock another client was then granted.
#[test]
fn cancelling_an_older_request_leaves_a_newer_claim_of_the_session() {
    let cancel = |request| {
        cmd(R::Cancel {
            session: 2,
            lock: "l".into(),
            request,
        })
    };
    let view = |m: &LockMachine| m.query(&LockQuery::Lock { lock: "l".into() });
    // Queued: request 4 took the claim over; cancelling 3 leaves it in line.
    let mut m = opened(&[1, 2]);
    let O::Granted { token: first } = m.apply(&acquire(1, 1, true)) else {
        panic!()
    };
    let O::Queued { token, .. } = m.apply(&acquire(2, 3, true)) else {
        panic!()
    };
    assert!(matches!(m.apply(&acquire(2, 4, true)), O::Queued { .. }));
    assert_eq!(m.apply(&cancel(3)), O::Cancelled);
    let queued = O::Lock(LockView {
        holder: Some((1, first)),
        waiters: vec![(2, token)],
    });
    assert_eq!(view(&m), queued, "the newer claim is still in line");
    // Granted: cancelling 3 reports no grant and keeps the lock.
    let release = cmd(R::Release {
        session: 1,
        lock: "l".into(),
        token: first,
    });
    assert_eq!(m.apply(&release), O::Released);
    assert_eq!(m.apply(&cancel(3)), O::Cancelled);
    let held = O::Lock(LockView {
        holder: Some((2, token)),
        waiters: vec![],
    });
    assert_eq!(view(&m), held, "the newer claim still holds the lock");
    // Cancelling the newer request itself still reports the grant.
    assert_eq!(m.apply(&cancel(4)), O::Granted { token });
}

#[test]
fn no_request_may_name_a_lock_longer_than_the_limit() {
    let mut m = opened(&[1]);
    let before = m.snapshot().unwrap().len();
    let long = "x".repeat(crate::lock::MAX_LOCK_NAME_BYTES + 1);
    let requests = [
        R::Acquire {
            session: 1,
            lock: long.clone(),
            request: 1,
            wait: true,
        },
        R::Release {
            session: 1,
            lock: long.clone(),
            token: 1,
        },
        R::Cancel {
            session: 1,
            lock: long,
            request: 2,
        },
    ];
    for request in requests {
        assert_eq!(m.apply(&cmd(request)), O::Refused(super::machine::Refusal::NameTooLong));
    }
    assert_eq!(m.snapshot().unwrap().len(), before, "nothing of the names was kept");
}

#[test]
fn snapshot_round_trips_and_tokens_continue_above() {
    let mut m = opened(&[1]);
    let O::Granted { token } = m.apply(&acquire(1, 1, true)) else {
        panic!()
    };
    let mut r = LockMachine::default();
    r.restore(&m.snapshot().unwrap()).unwrap();
    assert_eq!(r, m);
    r.apply(&cmd(R::Release {
        session: 1,
        lock: "l".into(),
        token,
    }));
    let O::Granted { token: next } = r.apply(&acquire(1, 2, true)) else {
        panic!()
    };
    assert!(next > token);
}

/// A one-member lock group, elected at once at 1 s.
fn single_replica() -> crate::log::Raft<LockMachine> {
    use rand::SeedableRng;
    let mut raft = crate::log::Raft::<LockMachine>::recover(
        1,
        &[1],
        crate::log::membership::Boot::Genesis(vec![1]),
        crate::log::Config::default(),
        rand_chacha::ChaCha8Rng::seed_from_u64(1),
        &[],
        Duration::ZERO,
    )
    .unwrap();
    let _ = raft.on_tick(Duration::from_secs(1));
    raft
}

#[test]
fn lease_timer_starts_at_leadership_and_restarts_on_renewal() {
    use crate::log::Wire;
    let ms = Duration::from_millis;
    let mut raft = single_replica();
    let command = |seq, command| Wire::Command {
        client: 9,
        seq,
        command,
    };
    let _ = raft.on_message(ms(1_000), 5, command(1, cmd(R::Open { session: 1 })));
    let mut timer = LeaseTimer::new(ms(500), ms(100));
    assert!(
        timer.poll(raft.state_machine(), ms(1_100)).is_empty(),
        "not leading yet"
    );
    timer.lead(true);
    assert!(timer.poll(raft.state_machine(), ms(1_100)).is_empty());
    assert!(timer.poll(raft.state_machine(), ms(1_500)).is_empty());
    let _ = raft.on_message(ms(1_550), 5, command(2, cmd(R::KeepAlive { session: 1 })));
    assert!(
        timer.poll(raft.state_machine(), ms(1_590)).is_empty(),
        "renewal restarts the timer"
    );
    assert_eq!(timer.next_due(), ms(2_090));
    let out = timer.poll(raft.state_machine(), ms(2_090));
    assert!(matches!(out.as_slice(), [C::Expire { session: 1, .. }]));
    assert!(
        timer.poll(raft.state_machine(), ms(2_100)).is_empty(),
        "one proposal in flight"
    );
    timer.lead(false);
    assert_eq!(timer.next_due(), Duration::MAX, "only a leader measures leases");
}

#[test]
fn sessions_belong_to_the_node_that_opened_them() {
    use super::Refusal::ForeignSession;
    let mut m = opened(&[1]);
    let O::Granted { token } = m.apply(&acquire(1, 1, true)) else {
        panic!()
    };
    let foreign = |request| C::Client { owner: 99, request };
    let refused = O::Refused(ForeignSession);
    assert_eq!(m.apply(&foreign(R::Open { session: 1 })), refused);
    assert_eq!(m.apply(&foreign(R::KeepAlive { session: 1 })), refused);
    let release = R::Release {
        session: 1,
        lock: "l".into(),
        token,
    };
    assert_eq!(m.apply(&foreign(release)), refused);
    let cancel = R::Cancel {
        session: 1,
        lock: "l".into(),
        request: 1,
    };
    assert_eq!(m.apply(&foreign(cancel)), refused);
    assert_eq!(m.apply(&foreign(R::Close { session: 1 })), refused);
    let take = R::Acquire {
        session: 1,
        lock: "other".into(),
        request: 2,
        wait: true,
    };
    assert_eq!(m.apply(&foreign(take)), refused);
    assert_eq!(m.holder("l"), Some((1, token)), "the owner still holds it");
    // A foreign command renews nothing: the owner's lease still expires.
    let r1 = renewed(&m, 1);
    assert_eq!(
        m.apply(&C::Expire {
            session: 1,
            renewed: r1
        }),
        O::Expired
    );
}

/// One principal cannot fill another's lock queue: its sessions may take
/// three quarters of the line (an attack queued 64 sessions of one principal
/// behind its own holder, and every other principal was refused).
#[test]
fn one_principal_cannot_fill_a_locks_queue() {
    let mut m = LockMachine::default();
    let as_owner = |owner: u32, request: R| C::Client { owner, request };
    let open_and_acquire = |m: &mut LockMachine, owner: u32, session: u64| {
        assert_eq!(m.apply(&as_owner(owner, R::Open { session })), O::Opened);
        m.apply(&as_owner(
            owner,
            R::Acquire {
                session,
                lock: "victim".into(),
                request: 1,
                wait: true,
            },
        ))
    };
    assert!(matches!(open_and_acquire(&mut m, 7 << 16, 1), O::Granted { .. }));
    for i in 0..super::MAX_WAITERS_PER_PRINCIPAL as u32 {
        let out = open_and_acquire(&mut m, 7 << 16 | (i + 1), 100 + u64::from(i));
        assert!(matches!(out, O::Queued { .. }), "{out:?}");
    }
    let greedy = open_and_acquire(&mut m, 7 << 16 | 999, 999);
    assert_eq!(
        greedy,
        O::Refused(super::Refusal::PrincipalWaiterQuota),
        "past its share"
    );
    let other = open_and_acquire(&mut m, 8 << 16, 2_000);
    assert!(matches!(other, O::Queued { .. }), "{other:?}");
}

/// The 32 clients of the contended benchmark share one principal: they
/// all find a place in the lock's line.
#[test]
fn thirty_two_sessions_of_one_principal_wait_for_one_lock() {
    let mut m = LockMachine::default();
    let as_owner = |owner: u32, request: R| C::Client { owner, request };
    for i in 0..33u32 {
        let owner = 7 << 16 | i;
        let session = u64::from(i) + 1;
        assert_eq!(m.apply(&as_owner(owner, R::Open { session })), O::Opened);
        let out = m.apply(&as_owner(
            owner,
            R::Acquire {
                session,
                lock: "contended".into(),
                request: 1,
                wait: true,
            },
        ));
        assert!(matches!(out, O::Granted { .. } | O::Queued { .. }), "{i}: {out:?}");
    }
}

#[test]
fn one_principal_cannot_fill_the_session_table() {
    use super::{MAX_SESSIONS, MAX_SESSIONS_PER_PRINCIPAL};
    let mut m = LockMachine::default();
    let open = |m: &mut LockMachine, owner: u32, session| {
        m.apply(&C::Client {
            owner,
            request: R::Open { session },
        })
    };
    // Many instances of principal 7 (node ids 7 << 16 | i) share its quota.
    for i in 0..MAX_SESSIONS_PER_PRINCIPAL as u64 {
        assert_eq!(open(&mut m, 7 << 16 | i as u32, i), O::Opened);
    }
    assert_eq!(
        open(&mut m, 7 << 16 | 999, 10_000),
        O::Refused(super::Refusal::PrincipalQuota)
    );
    // Other principals still get sessions, up to the table's size.
    let mut session = 20_000;
    for principal in 8.. {
        for _ in 0..MAX_SESSIONS_PER_PRINCIPAL {
            session += 1;
            let out = open(&mut m, principal << 16, session);
            if m.sessions().count() == MAX_SESSIONS && out != O::Opened {
                assert_eq!(out, O::Refused(super::Refusal::TooManySessions));
                return;
            }
            assert_eq!(out, O::Opened);
        }
    }
}

#[test]
fn one_principal_cannot_take_every_lock() {
    use super::MAX_LOCKS_PER_PRINCIPAL;
    let mut m = LockMachine::default();
    let as_node = |owner: u32, request| C::Client { owner, request };
    // Principal 7 spreads its claims over two sessions of two instances.
    let (a, b) = (7 << 16, 7 << 16 | 1);
    assert_eq!(m.apply(&as_node(a, R::Open { session: 1 })), O::Opened);
    assert_eq!(m.apply(&as_node(b, R::Open { session: 2 })), O::Opened);
    let acquire = |owner, session, lock: String| {
        as_node(
            owner,
            R::Acquire {
                session,
                lock,
                request: 1,
                wait: true,
            },
        )
    };
    for i in 0..MAX_LOCKS_PER_PRINCIPAL {
        let (owner, session) = if i % 2 == 0 { (a, 1) } else { (b, 2) };
        assert!(matches!(
            m.apply(&acquire(owner, session, format!("l{i}"))),
            O::Granted { .. }
        ));
    }
    let refused = O::Refused(super::Refusal::PrincipalLockQuota);
    assert_eq!(m.apply(&acquire(a, 1, "one-more".into())), refused);
    // A retry of a claim it has is answered, and other principals are
    // served, queued behind it included.
    assert!(matches!(m.apply(&acquire(a, 1, "l0".into())), O::Granted { .. }));
    let other = 8 << 16;
    assert_eq!(m.apply(&as_node(other, R::Open { session: 3 })), O::Opened);
    assert!(matches!(m.apply(&acquire(other, 3, "free".into())), O::Granted { .. }));
    assert!(matches!(m.apply(&acquire(other, 3, "l0".into())), O::Queued { .. }));
}

/// A leader-hinted token (planted bug `UnsyncedToken`) far above or below
/// the revision, with a line behind it: once a poison pill that failed the
/// machine's assertion on every replica and every replay.
#[test]
fn hinted_tokens_never_trip_an_assertion() {
    let mut m = opened(&[1, 2, 3]);
    let hinted = |session, token| C::Hinted {
        owner: session as u32,
        request: R::Acquire {
            session,
            lock: "l".into(),
            request: 1,
            wait: true,
        },
        token,
    };
    assert_eq!(
        m.apply(&hinted(1, 1_000_000_000_000)),
        O::Granted {
            token: 1_000_000_000_000
        }
    );
    let O::Queued { token: t2, .. } = m.apply(&acquire(2, 1, true)) else {
        panic!()
    };
    assert!(matches!(m.apply(&hinted(3, 1)), O::Queued { token: 1, .. }));
    m.apply(&cmd(R::Close { session: 1 }));
    assert_eq!(m.holder("l"), Some((2, t2)));
    m.apply(&cmd(R::Close { session: 2 }));
    assert_eq!(m.holder("l"), Some((3, 1)));
}

mod props {
    use proptest::prelude::*;

    use super::{C, R};
    use crate::lock::machine::{LockMachine, LockPart, MovedLock, ShardCommand};
    use crate::log::StateMachine;
    use crate::ring::{hash_key, HashRange};
    use crate::shard::RangeSet;

    fn session() -> impl Strategy<Value = u64> {
        prop_oneof![4 => 0..6u64, 1 => any::<u64>()]
    }

    fn owner() -> impl Strategy<Value = u32> {
        prop_oneof![4 => 0..6u32, 2 => (0..3u32, 0..3u32).prop_map(|(p, i)| p << 16 | i), 1 => any::<u32>()]
    }

    fn lock() -> impl Strategy<Value = String> {
        prop_oneof![4 => prop::sample::select(vec!["a", "b", ""]).prop_map(String::from), 1 => ".{0,140}"]
    }

    fn small() -> impl Strategy<Value = u64> {
        prop_oneof![4 => 0..40u64, 1 => any::<u64>()]
    }

    fn request() -> impl Strategy<Value = R> {
        prop_oneof![
            session().prop_map(|session| R::Open { session }),
            session().prop_map(|session| R::KeepAlive { session }),
            (session(), lock(), small(), any::<bool>()).prop_map(|(session, lock, request, wait)| R::Acquire {
                session,
                lock,
                request,
                wait
            }),
            (session(), lock(), small()).prop_map(|(session, lock, token)| R::Release { session, lock, token }),
            (session(), lock(), small()).prop_map(|(session, lock, request)| R::Cancel { session, lock, request }),
            session().prop_map(|session| R::Close { session }),
        ]
    }

    /// Mostly the session's usual owner (node id = session id), so that
    /// sequences get past the ownership check; sometimes anyone.
    fn owned() -> impl Strategy<Value = (u32, R)> {
        (request(), prop::bool::weighted(0.8), owner())
            .prop_map(|(request, usual, other)| (if usual { request.session() as u32 } else { other }, request))
    }

    fn command() -> impl Strategy<Value = C> {
        prop_oneof![
            6 => owned().prop_map(|(owner, request)| C::Client { owner, request }),
            1 => (owned(), small()).prop_map(|((owner, request), token)| C::Hinted { owner, request, token }),
            2 => (session(), small()).prop_map(|(session, renewed)| C::Expire { session, renewed }),
            1 => shard().prop_map(C::Shard),
        ]
    }

    fn ranges() -> impl Strategy<Value = RangeSet> {
        let range = prop_oneof![
            (any::<u64>(), any::<u64>()).prop_map(|(a, b)| HashRange {
                start: a.min(b),
                end: a.max(b)
            }),
            lock().prop_map(|name| {
                let h = hash_key(name.as_bytes());
                HashRange { start: h, end: h }
            }),
        ];
        prop::collection::vec(range, 0..3).prop_map(RangeSet::from_ranges)
    }

    /// Shard commands as an operator might send them, and parts as a
    /// forger might: names outside the ranges, tokens above the floor.
    fn shard() -> impl Strategy<Value = ShardCommand> {
        let moved =
            (lock(), session(), owner(), small(), small()).prop_map(|(name, session, owner, token, last)| MovedLock {
                name,
                session,
                owner,
                token,
                last_granted: last,
            });
        let part = (ranges(), small(), prop::collection::vec(moved, 0..4))
            .prop_map(|(ranges, floor, locks)| LockPart { ranges, floor, locks });
        prop_oneof![
            (small(), ranges()).prop_map(|(epoch, ranges)| ShardCommand::Assign { epoch, ranges }),
            (small(), 0..3u32, ranges()).prop_map(|(epoch, to, ranges)| ShardCommand::Fence { epoch, to, ranges }),
            (small(), 0..3u32, part).prop_map(|(epoch, from, part)| ShardCommand::Install { epoch, from, part }),
            (small(), 0..3u32).prop_map(|(epoch, to)| ShardCommand::Drop { epoch, to }),
        ]
    }

    proptest! {
        /// `apply` runs the machine's invariant check after every command,
        /// so a sequence that broke one would panic here.
        #[test]
        fn arbitrary_commands_never_panic_and_keep_the_invariants(commands in prop::collection::vec(command(), 0..120)) {
            let mut m = LockMachine::default();
            for c in &commands {
                m.apply(c);
                m.check();
            }
        }

        #[test]
        fn snapshot_restore_round_trips(commands in prop::collection::vec(command(), 0..80)) {
            let mut m = LockMachine::default();
            for c in &commands {
                m.apply(c);
            }
            let mut r = LockMachine::default();
            r.restore(&m.snapshot().unwrap()).unwrap();
            prop_assert_eq!(&r, &m);
            // And the copy goes on exactly as the original.
            for c in &commands {
                prop_assert_eq!(r.apply(c), m.apply(c));
            }
        }
    }
}

#[test]
fn admission_stamps_the_owner_and_drops_internal_commands() {
    use super::server::{admit, ServerConfig};
    use crate::log::{Wire, WireOf};
    let wire = |command| -> WireOf<LockMachine> {
        Wire::Command {
            client: 1,
            seq: 1,
            command,
        }
    };
    const CLIENT: u32 = 16 << 16 | 5;
    let config = ServerConfig::default();
    let mut claimed = wire(C::Client {
        owner: 5,
        request: R::KeepAlive { session: 1 },
    });
    assert!(admit(1, CLIENT, &mut claimed, &config));
    assert_eq!(
        claimed,
        wire(C::Client {
            owner: CLIENT,
            request: R::KeepAlive { session: 1 }
        }),
        "the owner is the sender, whatever the client wrote"
    );
    let expire = C::Expire { session: 1, renewed: 3 };
    assert!(!admit(1, CLIENT, &mut wire(expire.clone()), &config));
    let hinted = C::Hinted {
        owner: CLIENT,
        request: R::Acquire {
            session: 1,
            lock: "l".into(),
            request: 1,
            wait: true,
        },
        token: 1_000_000_000_000,
    };
    assert!(!admit(1, CLIENT, &mut wire(hinted.clone()), &config));
    // Only an operator reconfigures the lock group through the network.
    let mut remove: WireOf<LockMachine> = Wire::Reconfigure {
        client: 1,
        id: 1,
        change: Some(crate::log::membership::Change::Remove(2)),
        base: 0,
    };
    assert!(!admit(1, CLIENT, &mut remove, &config));
    assert!(!admit(1, 7, &mut remove, &config), "nor a member's id");
    let operator = crate::log::membership::OPERATOR_IDS.start;
    assert!(admit(1, operator, &mut remove, &config));
    // And only an operator moves lock names between groups.
    let fence = C::Shard(super::ShardCommand::Fence {
        epoch: 2,
        to: 1,
        ranges: crate::shard::RangeSet::full(),
    });
    assert!(!admit(1, CLIENT, &mut wire(fence.clone()), &config));
    assert!(admit(1, operator, &mut wire(fence), &config));
    // Planted bug `ClientToken`: the hint goes in.
    #[cfg(feature = "planted-bugs")]
    {
        let buggy = ServerConfig {
            bug: Some(super::LockBug::ClientToken),
            ..ServerConfig::default()
        };
        assert!(admit(1, CLIENT, &mut wire(hinted), &buggy));
        assert!(!admit(1, CLIENT, &mut wire(expire), &buggy));
        let anyone = ServerConfig {
            bug: Some(super::LockBug::AnyoneReconfigures),
            ..ServerConfig::default()
        };
        assert!(admit(1, CLIENT, &mut remove, &anyone));
    }
}

/// Only the leader admits: a follower answers a client command `NotLeader`
/// and neither logs nor forwards it.
#[test]
fn followers_answer_not_leader_and_forward_nothing() {
    use crate::log::{Config, Outcome, Raft, Response, Wire};
    use rand::SeedableRng;
    let mut raft = Raft::<LockMachine>::recover(
        2,
        &[1, 2, 3],
        crate::log::membership::Boot::Genesis(vec![1, 2, 3]),
        Config::default(),
        rand_chacha::ChaCha8Rng::seed_from_u64(1),
        &[],
        Duration::ZERO,
    )
    .unwrap();
    let identity = raft.on_messages(Duration::ZERO, std::iter::empty());
    assert_eq!(identity.append.len(), 1);
    let out = raft.on_message(
        Duration::from_millis(1),
        70_000,
        Wire::Command {
            client: 9,
            seq: 1,
            command: cmd(R::Open { session: 1 }),
        },
    );
    assert!(out.append.is_empty() && out.rewrite.is_none());
    assert_eq!(out.messages.len(), 1, "{:?}", out.messages);
    let (to, msg) = &out.messages[0];
    assert_eq!(*to, 70_000);
    assert!(matches!(
        msg,
        Wire::Response(Response {
            outcome: Outcome::NotLeader(_),
            ..
        })
    ));
}

/// The log's session table is shared with clients: a client that names the
/// session a leader proposes its expiries under, with a huge sequence
/// number, must not turn them into ignored "stale duplicates". The engine
/// proposes under `(replica, term)`, and a client that names the term from
/// its own node names another session.
#[test]
fn a_client_cannot_shadow_the_leaders_expiries() {
    use super::server::{LockService, ServerConfig};
    use crate::log::service::{Companion, Out};
    use crate::log::Wire;
    let ms = Duration::from_millis;
    let mut raft = single_replica();
    let open = Wire::Command {
        client: 9,
        seq: 1,
        command: cmd(R::Open { session: 5 }),
    };
    let _ = raft.on_message(ms(1_000), 5, open);
    let shadow = Wire::Command {
        client: raft.term(),
        seq: u64::MAX,
        command: cmd(R::KeepAlive { session: 70 }),
    };
    let _ = raft.on_message(ms(1_000), 70, shadow);
    let config = ServerConfig {
        ttl: ms(500),
        ..ServerConfig::default()
    };
    let mut lock = LockService::new(1, config);
    let mut out = Out::new(1, Some(raft.term()));
    lock.on_leadership(ms(1_000), &raft, &mut out);
    lock.on_tick(ms(1_000), &raft, &mut out);
    lock.on_tick(ms(1_500), &raft, &mut out);
    assert_eq!(out.proposals().count(), 1, "one expiry due");
    let _ = raft.on_messages(ms(1_500), std::mem::take(&mut out.to_log));
    assert_eq!(raft.state_machine().sessions().count(), 0, "the session expired");
}

/// The lock service's companion without a runtime: `Settings` is answered
/// from its configuration without the log, and a watch on a lock that has
/// not changed is parked at the leader, then handed to the log when its
/// wait is over.
#[test]
fn the_lock_companion_answers_settings_and_parks_unchanged_watches() {
    use super::server::{LockService, ServerConfig, WATCH_PARK};
    use crate::log::service::{Companion, Out};
    use crate::log::{Outcome, RequestId, Response, Wire};
    let ms = Duration::from_millis;
    let raft = single_replica();
    let mut lock = LockService::new(1, ServerConfig::default());
    let mut out = Out::new(1, Some(raft.term()));
    lock.on_leadership(ms(1_000), &raft, &mut out);
    let settings = Wire::Read {
        client: 3,
        id: 1,
        query: LockQuery::Settings,
    };
    assert!(lock.on_message(ms(1_000), 7, settings, &raft, &mut out).is_none());
    let ttl_ms = 2_000;
    let answer = Wire::Response(Response {
        client: 3,
        id: RequestId::Read(1),
        outcome: Outcome::Done(O::Settings { ttl_ms }),
    });
    assert_eq!(out.messages, vec![(7, answer)]);
    let seen = raft.state_machine().view("l");
    let watch = Wire::Read {
        client: 3,
        id: 2,
        query: LockQuery::Watch {
            lock: "l".into(),
            seen: Some(seen),
        },
    };
    assert!(
        lock.on_message(ms(1_000), 7, watch, &raft, &mut out).is_none(),
        "parked"
    );
    assert_eq!(lock.next_deadline(), ms(1_000) + WATCH_PARK);
    lock.on_tick(ms(1_000) + WATCH_PARK, &raft, &mut out);
    assert!(matches!(
        &out.to_log[..],
        [(
            7,
            Wire::Read {
                query: LockQuery::Watch { seen: None, .. },
                ..
            }
        )]
    ));
}

/// A group that joins a sharded deployment serves nothing before an
/// operator assigns it: it ignores every client command (an unsharded
/// table would serve every name) but passes the operator's `Assign`, and
/// after it applied, client commands again.
#[test]
fn a_joining_group_takes_no_client_command_until_it_is_assigned() {
    use super::server::{LockService, ServerConfig};
    use super::ShardCommand;
    use crate::log::service::{Companion, Out};
    use crate::log::Wire;
    let ms = Duration::from_millis;
    let mut raft = single_replica();
    let config = ServerConfig {
        joining: true,
        ..ServerConfig::default()
    };
    let mut lock = LockService::new(1, config);
    let mut out = Out::new(1, Some(raft.term()));
    lock.on_leadership(ms(1_000), &raft, &mut out);
    let open = |seq| Wire::Command {
        client: 9,
        seq,
        command: cmd(R::Open { session: 5 }),
    };
    assert!(lock.on_message(ms(1_000), 5, open(1), &raft, &mut out).is_none());
    let assign = Wire::Command {
        client: 10,
        seq: 1,
        command: C::Shard(ShardCommand::Assign {
            epoch: 1,
            ranges: crate::shard::RangeSet::default(),
        }),
    };
    let operator = crate::log::membership::OPERATOR_IDS.start;
    let passed = lock.on_message(ms(1_000), operator, assign, &raft, &mut out);
    let passed = passed.expect("the operator's assignment passes");
    let _ = raft.on_messages(ms(1_000), vec![(operator, passed)]);
    assert!(!raft.state_machine().ownership().is_unsharded());
    assert!(lock.on_message(ms(1_001), 5, open(2), &raft, &mut out).is_some());
}

/// A keep-alive tells the session which locks it holds and by which
/// tokens, leaving out those it only waits for: the client's check that
/// a lease still stands reads it.
#[test]
fn a_keep_alive_lists_the_locks_held_not_those_waited_for() {
    let mut m = opened(&[1, 2]);
    let acquire_named = |session, lock: &str, wait| {
        cmd(R::Acquire {
            session,
            lock: lock.into(),
            request: 1,
            wait,
        })
    };
    let O::Granted { token: a } = m.apply(&acquire_named(1, "a", false)) else {
        panic!()
    };
    let O::Granted { token: b } = m.apply(&acquire_named(2, "b", false)) else {
        panic!()
    };
    assert!(matches!(m.apply(&acquire_named(1, "b", true)), O::Queued { .. }));
    assert_eq!(
        m.apply(&cmd(R::KeepAlive { session: 1 })),
        O::Alive {
            held: vec![("a".into(), a)]
        }
    );
    assert_eq!(
        m.apply(&cmd(R::KeepAlive { session: 2 })),
        O::Alive {
            held: vec![("b".into(), b)]
        }
    );
}
