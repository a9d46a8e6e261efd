//! Judging lock grants that real clients were acknowledged, whatever ran
//! under them (membership changes, names moving between groups, killed
//! nodes).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ringfence::lock::Token;

/// One acknowledged grant.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The client it was granted to. A client whose release failed while
    /// its session kept the lock is answered the same grant again.
    pub client: usize,
    /// The lock (clients name it `lock-<n>`).
    pub lock: usize,
    pub token: Token,
    /// When the acquire was sent and answered.
    pub asked: Instant,
    pub granted: Instant,
    /// When its release was sent and acknowledged, if it was: the session
    /// held the lock with this token from `granted` until `releasing`.
    pub released: Option<(Instant, Instant)>,
}

/// Fails unless: no token of a lock was granted to two clients; every grant asked
/// for after a release was acknowledged is fenced above it (an
/// acknowledged grant lost would be granted again); no two grants held
/// until an acknowledged release were held at once; and the service never
/// granted nothing for `unavailable_bound`.
pub fn judge(grants: &[Grant], unavailable_bound: Duration) {
    assert!(grants.len() > 50, "too few grants to judge: {}", grants.len());
    let mut by_lock: BTreeMap<usize, Vec<&Grant>> = BTreeMap::new();
    for grant in grants {
        by_lock.entry(grant.lock).or_default().push(grant);
    }
    for (lock, grants) in &by_lock {
        let mut holders: BTreeMap<Token, Vec<&Grant>> = BTreeMap::new();
        for grant in grants {
            holders.entry(grant.token).or_default().push(grant);
        }
        for (token, grants) in &holders {
            assert!(
                grants.iter().all(|g| g.client == grants[0].client),
                "lock-{lock}: token {token} was granted to two clients: {grants:?}"
            );
        }
        for a in grants {
            let Some((releasing, released)) = a.released else {
                continue;
            };
            for b in grants.iter().filter(|&&b| !std::ptr::eq(b, *a)) {
                assert!(
                    b.asked <= released || b.token > a.token,
                    "lock-{lock}: token {} granted after token {} was released: an acknowledged grant was lost",
                    b.token,
                    a.token
                );
                if b.token == a.token {
                    continue;
                }
                if let Some((b_releasing, _)) = b.released {
                    assert!(
                        b_releasing <= a.granted || releasing <= b.granted,
                        "lock-{lock}: tokens {} and {} were held at once",
                        a.token,
                        b.token
                    );
                }
            }
        }
    }
    let mut granted: Vec<Instant> = grants.iter().map(|g| g.granted).collect();
    granted.sort_unstable();
    let longest = granted.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    println!("{} grants; longest time without one: {longest:?}", grants.len());
    assert!(
        longest < unavailable_bound,
        "the lock service granted nothing for {longest:?}"
    );
}

/// The judge fails a token granted twice, a grant fenced below one
/// released before it was asked for, and two grants held at once.
#[test]
fn the_judge_catches_a_reused_token_a_lost_grant_and_two_holders() {
    let start = Instant::now();
    let at = |ms| start + Duration::from_millis(ms);
    let grant = |token, asked, released| Grant {
        client: token as usize % 2,
        lock: 0,
        token,
        asked: at(asked),
        granted: at(asked + 1),
        released: Some((at(released - 1), at(released))),
    };
    let honest: Vec<Grant> = (0..60).map(|i| grant(i + 1, 10 * i, 10 * i + 5)).collect();
    let bound = Duration::from_secs(1);
    judge(&honest, bound);
    for broken in [
        // Token 7 again, much later, to the other client.
        Grant {
            client: 0,
            ..grant(7, 1_000, 1_005)
        },
        // A token below one released before it was asked for.
        grant(61, 5, 8),
        // Held while token 3 was (20..25).
        grant(100, 18, 30),
    ] {
        let mut grants = honest.clone();
        grants.push(broken.clone());
        let caught = std::panic::catch_unwind(|| judge(&grants, bound));
        assert!(caught.is_err(), "not caught: {broken:?}");
    }
}
