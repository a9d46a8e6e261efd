//! Runtime-free tests of the lock machine and the leader's lease timer.

use std::time::Duration;

use super::machine::{LockCommand as C, LockMachine, LockOutput as O, LockQuery, LockView};
use super::server::LeaseTimer;
use crate::log::StateMachine;

fn acquire(session: u64, request: u64, wait: bool) -> C {
    C::Acquire {
        session,
        lock: "l".into(),
        request,
        wait,
        token_hint: None,
    }
}

fn opened(sessions: &[u64]) -> LockMachine {
    let mut m = LockMachine::default();
    for &s in sessions {
        assert_eq!(m.apply(&C::Open { session: s }), O::Opened);
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
    let release = |s, token| C::Release {
        session: s,
        lock: "l".into(),
        token,
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
    m.apply(&C::Release {
        session: 1,
        lock: "l".into(),
        token,
    });
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
        let O::Granted { token } = m.apply(&C::Acquire {
            session: 1,
            lock: lock.into(),
            request,
            wait: false,
            token_hint: None,
        }) else {
            panic!("lock {lock} request {request}")
        };
        assert_eq!(
            m.apply(&C::Release {
                session: 1,
                lock: lock.into(),
                token
            }),
            O::Released
        );
    };
    let late = |m: &mut LockMachine, lock: &str, request: u64| {
        m.apply(&C::Acquire {
            session: 1,
            lock: lock.into(),
            request,
            wait: false,
            token_hint: None,
        })
    };
    for request in 1..=100 {
        take_and_release(&mut m, &format!("user-{request}"), request);
    }
    let small = m.snapshot().len();
    for request in 101..=10_000 {
        take_and_release(&mut m, &format!("user-{request}"), request);
    }
    // Longer names and numbers only; one entry per lock would add ~150 KB.
    assert!(m.snapshot().len() <= 2 * small, "{small} then {}", m.snapshot().len());
    let stale = O::Refused(super::Refusal::StaleRequest);
    assert_eq!(late(&mut m, "user-1", 1), stale, "evicted long ago");
    assert_eq!(late(&mut m, "user-10000", 10_000), stale, "remembered exactly");
    let O::Granted { .. } = late(&mut m, "user-1", 10_001) else {
        panic!("a new request is granted")
    };
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
    assert_eq!(m.apply(&C::KeepAlive { session: 2 }), O::SessionExpired);
    // Session 1 renews after the leader decided: the expiry is stale.
    let r1 = renewed(&m, 1);
    m.apply(&C::KeepAlive { session: 1 });
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
        m.apply(&C::Open { session: 2 }),
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
    let cancel = |s| C::Cancel {
        session: s,
        lock: "l".into(),
        request: 1,
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

#[test]
fn snapshot_round_trips_and_tokens_continue_above() {
    let mut m = opened(&[1]);
    let O::Granted { token } = m.apply(&acquire(1, 1, true)) else {
        panic!()
    };
    let mut r = LockMachine::default();
    r.restore(&m.snapshot()).unwrap();
    assert_eq!(r, m);
    r.apply(&C::Release {
        session: 1,
        lock: "l".into(),
        token,
    });
    let O::Granted { token: next } = r.apply(&acquire(1, 2, true)) else {
        panic!()
    };
    assert!(next > token);
}

#[test]
fn lease_timer_starts_at_leadership_and_restarts_on_renewal() {
    use crate::log::{Config, Raft, Wire};
    use rand::SeedableRng;
    let ms = Duration::from_millis;
    let mut raft = Raft::<LockMachine>::recover(
        1,
        &[1],
        Config::default(),
        rand_chacha::ChaCha8Rng::seed_from_u64(1),
        &[],
        ms(0),
    )
    .unwrap();
    let _ = raft.on_tick(ms(1_000)); // single member: elected at once
    let command = |seq, command| Wire::Command {
        client: 9,
        seq,
        command,
    };
    let _ = raft.on_message(ms(1_000), 5, command(1, C::Open { session: 1 }));
    let mut timer = LeaseTimer::new(ms(500), ms(100));
    assert!(timer.poll(1, &raft, ms(1_100)).is_empty());
    assert!(timer.poll(1, &raft, ms(1_500)).is_empty());
    let _ = raft.on_message(ms(1_550), 5, command(2, C::KeepAlive { session: 1 }));
    assert!(timer.poll(1, &raft, ms(1_590)).is_empty(), "renewal restarts the timer");
    assert_eq!(timer.next_due(), ms(2_090));
    let out = timer.poll(1, &raft, ms(2_090));
    assert!(matches!(out.as_slice(), [(_, 1, C::Expire { session: 1, .. })]));
    assert!(timer.poll(1, &raft, ms(2_100)).is_empty(), "one proposal in flight");
}
