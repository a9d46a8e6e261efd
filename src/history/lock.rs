//! The lock service's invariants, judged on a history of client
//! operations: the simulator's lock scenario and the real-process chaos
//! test record the same [`LockOp`]s and call the same [`check_lock`], and a
//! service built on [`crate::lock`] can record its own and do the same.
//!
//! - `fencing`: in the resource's acceptance order, tokens never decrease;
//! - `lost-increment`: accepted writes strictly increase and every accepted
//!   read sees every earlier accepted write.
//!
//!   Both are judged on the resource's own record of what it applied
//!   ([`ResourceTruth::Applied`]) where the caller has it — the simulator
//!   owns the resource, so an access whose answer was lost still counts —
//!   or on what clients heard acknowledged;
//! - `token-order`: an acquire that began after another was granted gets a
//!   higher token;
//! - `release-owner`: a release succeeds only while its token still owns
//!   the lock, and once;
//! - `lease-overlap`: no two clients' believed lease intervals — from the
//!   acquire's success to the last lease check that passed, a read's
//!   invocation — overlap in real time. Judged per pair, only where the
//!   caller says the clocks kept the assumption over that pair's window
//!   (the holder's clock within the drift bound of every lock server's, no
//!   lock server's clock jumping).
//!
//! Two checks judge the log instead of a history: they replay the entries
//! the replicas applied through a shadow machine — ground truth, not what
//! any client heard:
//! - [`check_grants`] (`client-token`): every lock's successive grants have
//!   increasing tokens;
//! - [`check_expiries`] (`expiry-early`): no session is expired sooner than
//!   a TTL of the servers' time after its last renewal;
//! - [`check_lease_ends`] (`lease-outlived`): no holder passes a lease
//!   check after the servers expired the session that held its token,
//!   whether or not anyone was granted the lock meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{EventKind, History, Violation};
use crate::env::codec;
use crate::lock::resource::Applied;
use crate::lock::{LockCommand, LockMachine, Request, SessionId, ShardCommand, Token};
use crate::log::{Index, Payload, Replicated};

/// A client operation as the history records it: lock requests, and
/// accesses to a fenced resource holding a counter that holders increment
/// (read, then write back one more).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LockOp {
    /// `token` is `None` on invocation.
    Acquire {
        /// The fencing token granted: the result, filled in on `Ok`.
        token: Option<Token>,
    },
    /// Giving the lock back; only its current owner may succeed, once.
    Release {
        /// The token the client believes it holds.
        token: Token,
    },
    /// A fenced read of the counter; `value` and the resource's acceptance
    /// position `seq` on success.
    Read {
        /// The token presented to the resource.
        token: Token,
        /// The counter read; a result, `None` until it succeeds.
        value: Option<u64>,
        /// Where the resource placed the access in its acceptance order.
        seq: Option<u64>,
    },
    /// A fenced write of `value`; `seq` on success.
    Write {
        /// The token presented to the resource.
        token: Token,
        /// The counter written back (one more than the holder read).
        value: u64,
        /// Where the resource placed the access in its acceptance order.
        seq: Option<u64>,
    },
}

/// Where the resource's accesses are judged from.
#[derive(Debug, Clone, Copy)]
pub enum ResourceTruth<'a> {
    /// The accesses recorded in the history as `Ok` events with their
    /// positions: what clients heard acknowledged (an access whose answer
    /// was lost is invisible), or the resource's record merged in as the
    /// real-process chaos test does.
    InHistory,
    /// The resource's own record of every access it applied: the ground
    /// truth, whatever the callers heard.
    Applied(&'a [Applied]),
}

/// Two believed leases of different clients that overlap in real time:
/// `holder` believed it held the lock from `from_ns` (its grant) until
/// `until_ns` (its last passed lease check), and `granted_ns` is when the
/// other client was granted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasePair {
    /// The client granted first, whose belief outlasted the other's grant.
    pub holder: u32,
    /// When `holder`'s acquire succeeded.
    pub from_ns: u64,
    /// When `holder` last passed a lease check (invoked a read).
    pub until_ns: u64,
    /// When the other client's acquire succeeded, inside
    /// `from_ns..until_ns`.
    pub granted_ns: u64,
}

/// The lock invariants on a history. `leases_judged` says, for a pair of
/// overlapping believed leases, whether the clocks kept the lease
/// arithmetic's assumption over that pair's window (then the overlap is a
/// violation); a jump elsewhere in the run does not blind the check.
pub fn check_lock(
    history: &History<LockOp>,
    resource: ResourceTruth<'_>,
    leases_judged: &dyn Fn(&LeasePair) -> bool,
) -> Vec<Violation> {
    let mut v = Vec::new();
    match resource {
        ResourceTruth::InHistory => check_resource(heard_accesses(history), &mut v),
        ResourceTruth::Applied(applied) => check_resource(applied_accesses(applied), &mut v),
    }
    check_tokens(history, &mut v);
    check_leases(history, leases_judged, &mut v);
    v
}

/// One access the resource accepted, as a checker sees it.
struct Access {
    seq: u64,
    token: Token,
    value: u64,
    write: bool,
    /// Who made it, for the report.
    by: String,
    /// The history event that heard it, if one did.
    event: Option<usize>,
}

fn heard_accesses(history: &History<LockOp>) -> Vec<Access> {
    history
        .events()
        .iter()
        .filter(|e| e.kind == EventKind::Ok)
        .filter_map(|e| {
            let (token, value, seq, write) = match e.op {
                LockOp::Read {
                    token,
                    value: Some(value),
                    seq: Some(seq),
                } => (token, value, seq, false),
                LockOp::Write {
                    token,
                    value,
                    seq: Some(seq),
                } => (token, value, seq, true),
                _ => return None,
            };
            Some(Access {
                seq,
                token,
                value,
                write,
                by: format!("client {}", e.client),
                event: Some(e.index),
            })
        })
        .collect()
}

fn applied_accesses(applied: &[Applied]) -> Vec<Access> {
    applied
        .iter()
        .map(|a| Access {
            seq: a.seq,
            token: a.token,
            value: a.value,
            write: a.write,
            by: format!("node {}", a.from),
            event: None,
        })
        .collect()
}

fn check_resource(mut accepted: Vec<Access>, v: &mut Vec<Violation>) {
    accepted.sort_unstable_by_key(|a| a.seq);
    let events = |a: &Access, b: &Access| a.event.into_iter().chain(b.event).collect::<Vec<_>>();
    let mut highest: Option<&Access> = None;
    let mut written: Option<&Access> = None;
    for a in &accepted {
        if let Some(h) = highest {
            if a.token < h.token {
                v.push(Violation::new(
                    "fencing",
                    format!(
                        "the resource accepted token {} from {} (access #{}) after it had accepted token {} from {}",
                        a.token, a.by, a.seq, h.token, h.by
                    ),
                    events(h, a),
                ));
                break;
            }
        }
        if highest.is_none_or(|h| a.token > h.token) {
            highest = Some(a);
        }
        if let Some(w) = written {
            if (a.write && a.value <= w.value) || (!a.write && a.value < w.value) {
                v.push(Violation::new(
                    "lost-increment",
                    format!(
                        "counter {} {} by {} at access #{}, after an accepted write of {} by {}",
                        if a.write { "written back as" } else { "read as" },
                        a.value,
                        a.by,
                        a.seq,
                        w.value,
                        w.by
                    ),
                    events(w, a),
                ));
                break;
            }
        }
        if a.write {
            written = Some(a);
        }
    }
}

fn check_tokens(history: &History<LockOp>, v: &mut Vec<Violation>) {
    // Highest token granted (ok) so far, and where.
    let mut granted: Option<(Token, usize)> = None;
    // Per client: the floor its open acquire/release must beat.
    let mut floor: BTreeMap<u32, Option<(Token, usize)>> = BTreeMap::new();
    let mut released: BTreeMap<Token, usize> = BTreeMap::new();
    // Token → client it was granted to. A session that still holds a lock
    // (say, its release timed out) is granted the same claim again: that
    // is its ownership continuing, not a new grant.
    let mut owner: BTreeMap<Token, u32> = BTreeMap::new();
    for e in history.events() {
        match (&e.kind, &e.op) {
            (EventKind::Invoke, LockOp::Acquire { .. } | LockOp::Release { .. }) => {
                floor.insert(e.client, granted);
            }
            (EventKind::Ok, LockOp::Acquire { token: Some(t) }) => {
                let same_claim = owner.get(t) == Some(&e.client);
                owner.insert(*t, e.client);
                if let Some(Some((f, at))) = floor.get(&e.client).filter(|_| !same_claim) {
                    if t <= f {
                        v.push(Violation::new(
                            "token-order",
                            format!("acquire granted token {t}, but token {f} had been granted before it began"),
                            vec![*at, e.index],
                        ));
                        return;
                    }
                }
                if granted.is_none_or(|(g, _)| *t > g) {
                    granted = Some((*t, e.index));
                }
            }
            (EventKind::Ok, LockOp::Release { token }) => {
                if let Some(Some((f, at))) = floor.get(&e.client) {
                    if f > token {
                        v.push(Violation::new(
                            "release-owner",
                            format!("release of token {token} succeeded after token {f} had been granted"),
                            vec![*at, e.index],
                        ));
                        return;
                    }
                }
                if let Some(first) = released.insert(*token, e.index) {
                    v.push(Violation::new(
                        "release-owner",
                        format!("token {token} was released twice"),
                        vec![first, e.index],
                    ));
                    return;
                }
            }
            _ => {}
        }
    }
}

/// Each client's believed lease per token: (client, token) → (start ns,
/// start event, end ns, end event), from the acquire's success to the last
/// lease check that passed (a read's invocation).
fn believed_leases(history: &History<LockOp>) -> BTreeMap<(u32, Token), (u64, usize, u64, usize)> {
    let mut leases: BTreeMap<(u32, Token), (u64, usize, u64, usize)> = BTreeMap::new();
    for e in history.events() {
        match (&e.kind, &e.op) {
            (EventKind::Ok, LockOp::Acquire { token: Some(t) }) => {
                // A repeated grant of the same claim continues the lease.
                leases
                    .entry((e.client, *t))
                    .or_insert((e.time_ns, e.index, e.time_ns, e.index));
            }
            (EventKind::Invoke, LockOp::Read { token, .. }) => {
                if let Some(l) = leases.get_mut(&(e.client, *token)) {
                    l.2 = e.time_ns;
                    l.3 = e.index;
                }
            }
            _ => {}
        }
    }
    leases
}

fn check_leases(history: &History<LockOp>, judged: &dyn Fn(&LeasePair) -> bool, v: &mut Vec<Violation>) {
    let list: Vec<_> = believed_leases(history).into_iter().collect();
    for (i, ((ca, ta), a)) in list.iter().enumerate() {
        for ((cb, tb), b) in &list[i + 1..] {
            if ca != cb && a.0 < b.2 && b.0 < a.2 {
                let (first, second) = if a.0 <= b.0 {
                    ((ca, ta, a), (cb, tb, b))
                } else {
                    ((cb, tb, b), (ca, ta, a))
                };
                let pair = LeasePair {
                    holder: *first.0,
                    from_ns: first.2 .0,
                    until_ns: first.2 .2,
                    granted_ns: second.2 .0,
                };
                if !judged(&pair) {
                    continue;
                }
                v.push(Violation::new(
                    "lease-overlap",
                    format!(
                        "client {} believed it held token {} until {:.3}s, but client {} was granted token {} at {:.3}s",
                        first.0,
                        first.1,
                        first.2 .2 as f64 / 1e9,
                        second.0,
                        second.1,
                        second.2 .0 as f64 / 1e9
                    ),
                    vec![first.2 .1, second.2 .1, first.2 .3],
                ));
                return;
            }
        }
    }
}

/// An entry of the lock service's log as the replicas applied it: its
/// payload, and the real time the first replica applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedEntry {
    /// The entry's encoded `Payload<LockCommand>`.
    pub payload: Vec<u8>,
    /// Real time since the run began (not any node's clock).
    pub at: Duration,
}

/// Replays `applied` (by log index, from 1 up to the first index no
/// replica reported) through a shadow machine, calling `visit` after each
/// command with its index, its entry, the command and the machine.
pub fn replay(
    applied: &BTreeMap<Index, AppliedEntry>,
    max_sessions: usize,
    mut visit: impl FnMut(Index, &AppliedEntry, &LockCommand, &LockMachine),
) {
    let mut shadow = Replicated::<LockMachine>::new(max_sessions);
    for (next, (&index, entry)) in (1..).zip(applied) {
        if index != next {
            break;
        }
        let Ok(Payload::Command {
            client,
            seq,
            reply_to,
            command,
        }) = codec::decode::<Payload<LockCommand>>(&entry.payload)
        else {
            continue;
        };
        shadow.apply(index, (reply_to, client), seq, &command);
        visit(index, entry, &command, shadow.machine());
    }
}

/// `client-token`: successive grants of each lock, as the replicas applied
/// them (from the replicas' `Applied` events), have strictly increasing
/// tokens.
pub fn check_grants(applied: &BTreeMap<Index, AppliedEntry>, max_sessions: usize) -> Vec<Violation> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    let mut holder: BTreeMap<String, (SessionId, Token)> = BTreeMap::new();
    let mut highest: BTreeMap<String, Token> = BTreeMap::new();
    let mut violations = Vec::new();
    replay(applied, max_sessions, |index, _, command, machine| {
        if let LockCommand::Client {
            request: Request::Acquire { lock, .. },
            ..
        }
        | LockCommand::Hinted {
            request: Request::Acquire { lock, .. },
            ..
        } = command
        {
            names.insert(lock.clone());
        }
        for name in &names {
            let Some(now) = machine.holder(name) else {
                holder.remove(name);
                continue;
            };
            if holder.get(name) == Some(&now) {
                continue;
            }
            holder.insert(name.clone(), now);
            let top = highest.entry(name.clone()).or_insert(0);
            // A lock moved in from another group keeps the token it was
            // granted there (held by a ghost): a move, not a grant.
            let moved_in = matches!(command, LockCommand::Shard(ShardCommand::Install { .. }));
            if !moved_in && now.1 <= *top && violations.len() < 5 {
                violations.push(Violation::new(
                    "client-token",
                    format!(
                        "lock {name:?} granted to session {} with token {} at log index {index}, not above the {} granted before",
                        now.0, now.1, *top
                    ),
                    vec![],
                ));
            }
            *top = (*top).max(now.1);
        }
    });
    violations
}

/// `expiry-early`: an `Expire` ends a session only once it has not renewed
/// for a TTL of the servers' time. Judged on the log, whatever any client
/// heard: the real time from the first apply of the session's last renewal
/// to the first apply of the `Expire` that ended it must be at least
/// `ttl / rate`. `fastest(from, to)` is the highest rate any lock server's
/// clock ran at over that window, or `None` if one jumped (a leader whose
/// clock jumps may expire early, and the window is not judged).
///
/// Sound because a leader counts the TTL on its own clock from no earlier
/// than it applied the renewal, which is no earlier than the first replica
/// did. A leader that decided on a renewal it had seen, and proposed the
/// expiry while a newer renewal committed, ends a session a client holds:
/// with a waiter granted meanwhile that is a lease overlap, but this check
/// needs neither the waiter nor the holder's later lease check.
pub fn check_expiries(
    applied: &BTreeMap<Index, AppliedEntry>,
    max_sessions: usize,
    ttl: Duration,
    fastest: &dyn Fn(Duration, Duration) -> Option<f64>,
) -> Vec<Violation> {
    // Each live session's last renewal: (revision, first applied at).
    let mut renewals: BTreeMap<SessionId, (u64, Duration)> = BTreeMap::new();
    let mut violations = Vec::new();
    replay(applied, max_sessions, |index, entry, command, machine| {
        let live: BTreeMap<SessionId, u64> = machine.sessions().collect();
        if let LockCommand::Expire { session, .. } = command {
            if let (Some(&(_, renewed_at)), false) = (renewals.get(session), live.contains_key(session)) {
                let quiet = entry.at.saturating_sub(renewed_at);
                let judged = fastest(renewed_at, entry.at);
                if let Some(rate) = judged.filter(|&rate| quiet < ttl.div_f64(rate)) {
                    if violations.len() < 5 {
                        violations.push(Violation::new(
                            "expiry-early",
                            format!(
                                "session {session} expired at log index {index}, {:.3} s after its last renewal (the TTL is {:.3} s, server clocks ran at most {rate:.3}x)",
                                quiet.as_secs_f64(),
                                ttl.as_secs_f64()
                            ),
                            vec![],
                        ));
                    }
                }
            }
        }
        renewals.retain(|id, _| live.contains_key(id));
        for (id, revision) in live {
            let last = renewals.entry(id).or_insert((revision, entry.at));
            if last.0 != revision {
                *last = (revision, entry.at);
            }
        }
    });
    violations
}

/// `lease-outlived`: no holder of `lock` passes a lease check after the
/// `Expire` that ended the session holding its token was first applied.
/// Judged on the log, as [`check_expiries`] is: a client that stretches its
/// lease (timing it from a renewal's answer instead of its sending, say)
/// is caught whenever it checks the lease too late, whether or not another
/// client was granted the lock in between, as [`check_lock`]'s
/// `lease-overlap` needs. `judged` is the same clock test: the holder's
/// belief from `from_ns` to `until_ns` is judged against the expiry at
/// `granted_ns`.
///
/// Sound for the same reason as the overlap check: the leader times a TTL
/// on its clock from no earlier than the renewal's sending, the client
/// trusts `ttl·(1 − ρ)` on its own from that sending, and within the
/// drift bound the client's trust ends first; the expiry commits and is
/// applied later still.
pub fn check_lease_ends(
    history: &History<LockOp>,
    applied: &BTreeMap<Index, AppliedEntry>,
    lock: &str,
    max_sessions: usize,
    judged: &dyn Fn(&LeasePair) -> bool,
) -> Vec<Violation> {
    // Token → when the expiry of its holding session was first applied.
    let mut expired: BTreeMap<Token, Duration> = BTreeMap::new();
    let mut holder: Option<(SessionId, Token)> = None;
    replay(applied, max_sessions, |_, entry, command, machine| {
        let now = machine.holder(lock);
        if let (LockCommand::Expire { session, .. }, Some((held_by, token))) = (command, holder) {
            if *session == held_by && now != holder {
                expired.insert(token, entry.at);
            }
        }
        holder = now;
    });
    let mut violations = Vec::new();
    for ((client, token), (from_ns, _, until_ns, until_event)) in believed_leases(history) {
        let Some(&at) = expired.get(&token) else { continue };
        let at_ns = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
        let pair = LeasePair {
            holder: client,
            from_ns,
            until_ns,
            granted_ns: at_ns,
        };
        if until_ns > at_ns && judged(&pair) && violations.len() < 5 {
            violations.push(Violation::new(
                "lease-outlived",
                format!(
                    "client {client} passed a lease check for token {token} at {:.3}s, after the servers expired its session at {:.3}s",
                    until_ns as f64 / 1e9,
                    at.as_secs_f64()
                ),
                vec![until_event],
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use EventKind::{Invoke, Ok};

    fn history(events: &[(u32, EventKind, LockOp)]) -> History<LockOp> {
        let mut h = History::default();
        for (t, (client, kind, op)) in events.iter().enumerate() {
            h.push(*client, t as u64 * 1000, *kind, op.clone());
        }
        h
    }

    fn acq(token: Option<u64>) -> LockOp {
        LockOp::Acquire { token }
    }
    fn read(token: u64, value: Option<u64>, seq: Option<u64>) -> LockOp {
        LockOp::Read { token, value, seq }
    }
    fn write(token: u64, value: u64, seq: Option<u64>) -> LockOp {
        LockOp::Write { token, value, seq }
    }

    fn invariants(h: &History<LockOp>, judged: bool) -> Vec<String> {
        check_lock(h, ResourceTruth::InHistory, &|_| judged)
            .into_iter()
            .map(|v| v.invariant)
            .collect()
    }

    #[test]
    fn a_clean_handover_passes() {
        let h = history(&[
            (0, Invoke, acq(None)),
            (0, Ok, acq(Some(3))),
            (0, Invoke, read(3, None, None)),
            (0, Ok, read(3, Some(0), Some(1))),
            (0, Invoke, write(3, 1, None)),
            (0, Ok, write(3, 1, Some(2))),
            (0, Invoke, LockOp::Release { token: 3 }),
            (0, Ok, LockOp::Release { token: 3 }),
            (1, Invoke, acq(None)),
            (1, Ok, acq(Some(5))),
            (1, Invoke, read(5, None, None)),
            (1, Ok, read(5, Some(1), Some(3))),
        ]);
        assert!(invariants(&h, true).is_empty());
    }

    #[test]
    fn a_stale_write_after_the_next_holder_is_a_fencing_violation() {
        let h = history(&[
            (0, Invoke, write(3, 1, None)),
            (1, Invoke, read(5, None, None)),
            (1, Ok, read(5, Some(0), Some(1))),
            (0, Ok, write(3, 1, Some(2))),
        ]);
        assert_eq!(invariants(&h, false), vec!["fencing"]);
    }

    #[test]
    fn two_writes_of_the_same_value_lose_an_increment() {
        let h = history(&[
            (0, Invoke, write(5, 1, None)),
            (0, Ok, write(5, 1, Some(1))),
            (0, Invoke, write(5, 1, None)),
            (0, Ok, write(5, 1, Some(2))),
        ]);
        assert_eq!(invariants(&h, false), vec!["lost-increment"]);
    }

    #[test]
    fn a_token_not_above_an_earlier_grant_breaks_token_order() {
        let h = history(&[
            (0, Invoke, acq(None)),
            (0, Ok, acq(Some(7))),
            (1, Invoke, acq(None)),
            (1, Ok, acq(Some(7))),
        ]);
        assert_eq!(invariants(&h, false), vec!["token-order"]);
    }

    #[test]
    fn release_after_a_later_grant_is_not_by_the_owner() {
        let h = history(&[
            (1, Invoke, acq(None)),
            (1, Ok, acq(Some(9))),
            (0, Invoke, LockOp::Release { token: 4 }),
            (0, Ok, LockOp::Release { token: 4 }),
        ]);
        assert_eq!(invariants(&h, false), vec!["release-owner"]);
    }

    /// Client 0 believes token 3 over [1 µs, 4 µs]; client 1 is granted
    /// token 5 at 3 µs.
    fn overlapping_leases() -> History<LockOp> {
        history(&[
            (0, Invoke, acq(None)),
            (0, Ok, acq(Some(3))),
            (1, Invoke, acq(None)),
            (1, Ok, acq(Some(5))),
            (0, Invoke, read(3, None, None)),
        ])
    }

    #[test]
    fn overlapping_beliefs_are_judged_only_within_the_drift_bound() {
        let h = overlapping_leases();
        assert_eq!(invariants(&h, true), vec!["lease-overlap"]);
        assert!(invariants(&h, false).is_empty());
    }

    #[test]
    fn each_overlapping_pair_is_judged_over_its_own_window() {
        // A judge that refuses other windows (a clock jump elsewhere in the
        // run) does not blind this one.
        let h = overlapping_leases();
        let seen = std::cell::RefCell::new(Vec::new());
        let judge = |p: &LeasePair| {
            seen.borrow_mut().push(*p);
            p.holder == 0 && p.granted_ns == 3000
        };
        let found = check_lock(&h, ResourceTruth::InHistory, &judge);
        assert_eq!(found.len(), 1);
        assert_eq!(
            seen.into_inner(),
            vec![LeasePair {
                holder: 0,
                from_ns: 1000,
                until_ns: 4000,
                granted_ns: 3000
            }]
        );
    }

    fn applied(from: u32, token: u64, seq: u64, value: u64, write: bool) -> Applied {
        Applied {
            from,
            token,
            seq,
            value,
            write,
        }
    }

    #[test]
    fn the_resource_record_shows_what_clients_never_heard() {
        // Client 0's write timed out (info), yet the resource applied it
        // after client 1's write: invisible in what clients heard.
        let h = history(&[
            (1, Invoke, write(5, 1, None)),
            (1, Ok, write(5, 1, Some(1))),
            (0, Invoke, write(3, 1, None)),
            (0, EventKind::Info, write(3, 1, None)),
        ]);
        assert!(invariants(&h, false).is_empty());
        let truth = [applied(102, 5, 1, 1, true), applied(101, 3, 2, 1, true)];
        let judged = |truth: &[Applied]| -> Vec<String> {
            check_lock(&h, ResourceTruth::Applied(truth), &|_| false)
                .into_iter()
                .map(|v| v.invariant)
                .collect()
        };
        assert_eq!(judged(&truth), vec!["fencing"]);
        // Same token, applied twice (a retried write landing again): a
        // lost increment the callers never saw.
        let twice = [applied(101, 3, 1, 1, true), applied(101, 3, 2, 1, true)];
        assert_eq!(judged(&twice), vec!["lost-increment"]);
    }

    /// Session 7, opened at 0 s (revision 1), then expired at `at` by an
    /// `Expire` that names that opening.
    fn opened_then_expired(at: Duration) -> BTreeMap<Index, AppliedEntry> {
        let entry = |seq, command, at| {
            let payload = Payload::Command {
                client: 1,
                seq,
                reply_to: 100,
                command,
            };
            AppliedEntry {
                payload: codec::encode(&payload).unwrap(),
                at,
            }
        };
        let open = LockCommand::Client {
            owner: 100,
            request: Request::Open { session: 7 },
        };
        let expire = LockCommand::Expire { session: 7, renewed: 1 };
        BTreeMap::from([(1, entry(1, open, Duration::ZERO)), (2, entry(2, expire, at))])
    }

    /// Session 7 opens and takes lock "x" at 0 s, and is expired at 1.5 s.
    fn granted_then_expired() -> BTreeMap<Index, AppliedEntry> {
        let mut applied = opened_then_expired(Duration::from_millis(1500));
        let expire = applied.remove(&2).expect("the expiry");
        let acquire = LockCommand::Client {
            owner: 100,
            request: Request::Acquire {
                session: 7,
                lock: "x".to_string(),
                request: 1,
                wait: false,
            },
        };
        let payload = Payload::Command {
            client: 1,
            seq: 2,
            reply_to: 100,
            command: acquire,
        };
        let acquired = AppliedEntry {
            payload: codec::encode(&payload).unwrap(),
            at: Duration::ZERO,
        };
        applied.insert(2, acquired);
        // The acquire renewed the session: the expiry names that renewal.
        let mut renewed = 0;
        replay(&applied, 16, |_, _, _, machine| {
            renewed = machine.sessions().find(|&(s, _)| s == 7).map_or(0, |(_, r)| r);
        });
        let command = LockCommand::Expire { session: 7, renewed };
        let payload = Payload::Command {
            client: 1,
            seq: 3,
            reply_to: 100,
            command,
        };
        applied.insert(
            3,
            AppliedEntry {
                payload: codec::encode(&payload).unwrap(),
                at: expire.at,
            },
        );
        applied
    }

    #[test]
    fn a_lease_check_passed_after_the_servers_expired_the_session_is_caught_where_clocks_are_judged() {
        let applied = granted_then_expired();
        let token = {
            let mut held = None;
            replay(&applied, 16, |_, _, _, machine| held = held.or(machine.holder("x")));
            held.expect("granted").1
        };
        let lease_checked_at = |ms: u64| {
            let mut h = History::default();
            h.push(0, 0, Invoke, acq(None));
            h.push(0, 1_000_000, Ok, acq(Some(token)));
            h.push(0, ms * 1_000_000, Invoke, read(token, None, None));
            h
        };
        let outlived = |h: &History<LockOp>, judged: bool| {
            check_lease_ends(h, &applied, "x", 16, &|_| judged)
                .into_iter()
                .map(|v| v.invariant)
                .collect::<Vec<_>>()
        };
        assert_eq!(outlived(&lease_checked_at(1_600), true), vec!["lease-outlived"]);
        assert!(
            outlived(&lease_checked_at(1_600), false).is_empty(),
            "clocks out of bound"
        );
        assert!(
            outlived(&lease_checked_at(1_400), true).is_empty(),
            "checked before the expiry"
        );
    }

    fn expiries(applied: &BTreeMap<Index, AppliedEntry>, fastest: Option<f64>) -> usize {
        check_expiries(applied, 16, Duration::from_millis(1500), &|_, _| fastest).len()
    }

    #[test]
    fn a_session_expired_sooner_than_a_ttl_after_its_renewal_is_caught_where_clocks_are_judged() {
        let early = opened_then_expired(Duration::from_millis(800));
        assert_eq!(expiries(&early, Some(1.0)), 1);
        // A server clock twice as fast may expire it after 750 ms.
        assert_eq!(expiries(&early, Some(2.0)), 0);
        // A clock that jumped leaves the window unjudged.
        assert_eq!(expiries(&early, None), 0);
        let on_time = opened_then_expired(Duration::from_millis(1500));
        assert_eq!(expiries(&on_time, Some(1.0)), 0);
    }
}
