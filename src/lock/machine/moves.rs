//! Moving lock names between groups: the lock table's side of the steps
//! in [`crate::shard`] (fence, install, drop).

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Claim, LockCommand, LockMachine, LockOutput, LockPart, LockState, MovedLock, PartPage, Session, ShardCommand,
    MAX_FLOOR,
};
use crate::env::codec;
use crate::ring::{hash_key, HashRange, KeyHash};
use crate::shard::{GroupId, RangeSet, ShardRefusal};

impl LockMachine {
    pub(super) fn shard(&mut self, command: &ShardCommand) -> LockOutput {
        match command {
            ShardCommand::Assign { epoch, ranges } => {
                if self.ownership.is_unsharded() && !self.locks.is_empty() {
                    // Whatever it holds would fall outside what it serves.
                    return LockOutput::ShardRefused(ShardRefusal::NotEmpty);
                }
                match self.ownership.assign(*epoch, ranges.clone()) {
                    Ok(()) => LockOutput::Moved { locks: 0 },
                    Err(refusal) => LockOutput::ShardRefused(refusal),
                }
            }
            ShardCommand::Fence { epoch, to, ranges } => self.fence(*epoch, *to, ranges),
            ShardCommand::Install { epoch, from, part } => self.install(*epoch, *from, part),
            ShardCommand::Drop { epoch, to } => LockOutput::Moved {
                locks: self.outbox.remove(&(*epoch, *to)).map_or(0, |part| part.locks.len()),
            },
        }
    }

    /// Cuts the locks of `ranges` out of the table into the part for `to`.
    ///
    /// Waiters lose their place (their next request hears `NotServed`).
    /// A holder's session becomes a ghost: from now on every request on it
    /// is answered `SessionExpired`, so its client stops trusting every
    /// lock it held, and none renews it; its other locks stay held until
    /// the leader expires it a TTL after its last renewal, when the
    /// client's lease (timed from a request sent before this fence) has
    /// already ended. Ending it at once would grant those locks while the
    /// client still trusts them. A ghost left holding nothing ends.
    fn fence(&mut self, epoch: u64, to: GroupId, ranges: &RangeSet) -> LockOutput {
        let leaving = self.ownership.fence(epoch, ranges);
        let names: Vec<String> = self
            .locks
            .keys()
            .filter(|name| leaving.contains(hash_key(name.as_bytes())))
            .cloned()
            .collect();
        let mut moved = Vec::with_capacity(names.len());
        for name in names {
            let lock = self.locks.remove(&name).expect("listed above");
            for claim in lock.holder.iter().chain(&lock.waiters) {
                let session = self.sessions.get_mut(&claim.session).expect("claims have sessions");
                session.locks.remove(&name);
            }
            let holder = lock.holder.expect("a lock in the table has a holder");
            moved.push(MovedLock {
                owner: self.sessions[&holder.session].owner,
                name,
                session: holder.session,
                token: holder.token,
                last_granted: lock.last_granted,
            });
        }
        for holder in &moved {
            self.ghost(holder.session);
        }
        let empty_ghosts: Vec<_> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.ghost && s.locks.is_empty())
            .map(|(&id, _)| id)
            .collect();
        for id in empty_ghosts {
            self.end_session(id);
        }
        let count = moved.len();
        if leaving.is_empty() && !self.outbox.contains_key(&(epoch, to)) {
            // Nothing served here moves (a fence repeated after its part
            // was dropped): no part to keep.
            return LockOutput::Moved { locks: 0 };
        }
        let part = self.outbox.entry((epoch, to)).or_default();
        for r in leaving.ranges() {
            part.ranges.insert(*r);
        }
        part.floor = part.floor.max(self.revision + self.token_offset);
        part.locks.extend(moved);
        LockOutput::Moved { locks: count }
    }

    /// Starts serving `part`'s ranges with its locks, held by ghosts, and
    /// tokens from above its floor on. A move may come in several parts
    /// (pieces that each fit a log command, cut differently by different
    /// runs of the rebalancer): what an earlier part of the same move
    /// installed is skipped, so a repeat changes nothing. Each part's
    /// ghosts are its own, timed from its install.
    fn install(&mut self, epoch: u64, from: GroupId, part: &LockPart) -> LockOutput {
        if let Err(refusal) = validate(part) {
            return LockOutput::ShardRefused(refusal);
        }
        let fresh = self.ownership.not_installed(epoch, from, &part.ranges);
        if fresh.is_empty() {
            return LockOutput::Moved { locks: 0 };
        }
        if let Err(refusal) = self.ownership.install(epoch, from, &fresh) {
            return LockOutput::ShardRefused(refusal);
        }
        // The next token is revision + offset, and the next acquire comes
        // at a later revision: at least floor + 1.
        self.token_offset = self.token_offset.max(part.floor.saturating_sub(self.revision));
        let mut ghosts: BTreeMap<u64, u64> = BTreeMap::new();
        let arriving: Vec<&MovedLock> = part
            .locks
            .iter()
            .filter(|m| fresh.contains(hash_key(m.name.as_bytes())))
            .collect();
        for moved in &arriving {
            let ghost = *ghosts.entry(moved.session).or_insert_with(|| {
                let id = self.free_session_id(moved.session);
                self.sessions.insert(
                    id,
                    Session {
                        owner: moved.owner,
                        renewed: self.revision,
                        ghost: true,
                        ..Session::default()
                    },
                );
                id
            });
            self.sessions
                .get_mut(&ghost)
                .expect("inserted above")
                .locks
                .insert(moved.name.clone());
            let holder = Claim {
                session: ghost,
                request: 0,
                token: moved.token,
                hinted: false,
            };
            self.locks.insert(
                moved.name.clone(),
                LockState {
                    holder: Some(holder),
                    waiters: Default::default(),
                    last_granted: moved.last_granted,
                },
            );
        }
        LockOutput::Moved { locks: arriving.len() }
    }

    /// Turns a holder's session into a ghost: it leaves every line it
    /// waits in (a ghost is never granted anything) and keeps what it holds.
    fn ghost(&mut self, id: u64) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        session.ghost = true;
        let names: Vec<String> = session.locks.iter().cloned().collect();
        for name in names {
            let lock = self.locks.get_mut(&name).expect("tracked lock exists");
            if lock.holder.as_ref().is_some_and(|h| h.session == id) {
                continue;
            }
            lock.waiters.retain(|c| c.session != id);
            self.sessions.get_mut(&id).expect("looked up above").locks.remove(&name);
        }
    }

    /// The first id from `wanted` on that no session here has or had: a
    /// ghost never merges into a session someone else opened (a rogue may
    /// have opened the source holder's id here on purpose).
    fn free_session_id(&self, wanted: u64) -> u64 {
        let mut id = wanted;
        while self.sessions.contains_key(&id) || self.ended.contains(&id) {
            id = id.wrapping_add(1);
        }
        id
    }
}

/// Cuts `ranges`, with the `locks` that lie in them, into pieces that
/// each fit `empty` (a shard command with no ranges and no locks) in at
/// most `limit` bytes ([`crate::shard::pack`], by each lock's name hash).
pub fn pack(
    ranges: &RangeSet,
    locks: &[MovedLock],
    empty: ShardCommand,
    limit: usize,
) -> Vec<(RangeSet, Vec<MovedLock>)> {
    let empty_bytes = codec::encode(&LockCommand::Shard(empty)).map_or(usize::MAX, |b| b.len());
    crate::shard::pack(ranges, locks, |m| hash_key(m.name.as_bytes()), empty_bytes, limit)
}

impl LockPart {
    /// The page of this part from hash `from` on that an install at
    /// `epoch` of at most `limit` bytes carries ([`pack`]'s first piece of
    /// what is left), and where the next page starts.
    pub(super) fn page(&self, epoch: u64, from: KeyHash, limit: u32) -> PartPage {
        let mut rest = self.ranges.clone();
        if let Some(below) = from.checked_sub(1) {
            rest.subtract(&RangeSet::from_ranges([HashRange { start: 0, end: below }]));
        }
        let locks: Vec<MovedLock> = self
            .locks
            .iter()
            .filter(|m| rest.contains(hash_key(m.name.as_bytes())))
            .cloned()
            .collect();
        let empty = ShardCommand::Install {
            epoch,
            from: GroupId::MAX,
            part: LockPart {
                floor: self.floor,
                ..LockPart::default()
            },
        };
        let mut pieces = pack(&rest, &locks, empty, limit as usize).into_iter();
        let (ranges, locks) = pieces.next().unwrap_or_default();
        PartPage {
            part: LockPart {
                ranges,
                floor: self.floor,
                locks,
            },
            next: pieces.next().and_then(|(ranges, _)| ranges.first()),
        }
    }
}

/// A part must be what a source could have fenced: names inside its
/// ranges, each once, tokens (never 0: the first command is revision 1)
/// at or below its floor, a floor tokens can grow from.
fn validate(part: &LockPart) -> Result<(), ShardRefusal> {
    let mut names = BTreeSet::new();
    let ok = part.floor <= MAX_FLOOR
        && part.locks.iter().all(|m| {
            names.insert(m.name.as_str())
                && part.ranges.contains(hash_key(m.name.as_bytes()))
                && 0 < m.token
                && m.token <= m.last_granted
                && m.last_granted <= part.floor
                && m.name.len() <= super::MAX_LOCK_NAME_BYTES
        });
    if ok {
        Ok(())
    } else {
        Err(ShardRefusal::InvalidPart)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{LockCommand as C, LockQuery, Refusal, Request as R, Token, MAX_PAGE_BYTES};
    use super::*;
    use crate::log::StateMachine;
    use crate::ring::HashRange;

    fn client(owner: u32, request: R) -> C {
        C::Client { owner, request }
    }

    fn acquire(session: u64, lock: &str, request: u64) -> R {
        R::Acquire {
            session,
            lock: lock.into(),
            request,
            wait: true,
        }
    }

    /// The ranges holding exactly the hash of `name`.
    fn only(name: &str) -> RangeSet {
        let h = hash_key(name.as_bytes());
        RangeSet::from_ranges([HashRange { start: h, end: h }])
    }

    /// A group where one session holds every lock of `names`, all of
    /// them fenced for group 9 at epoch 2.
    fn fenced_holding(names: &[String]) -> LockMachine {
        let mut source = LockMachine::default();
        source.apply(&client(1, R::Open { session: 1 }));
        for (i, name) in names.iter().enumerate() {
            source.apply(&client(1, acquire(1, name, i as u64 + 1)));
        }
        source.apply(&C::Shard(ShardCommand::Fence {
            epoch: 2,
            to: 9,
            ranges: RangeSet::full(),
        }));
        source
    }

    /// The whole part, read page by page.
    fn part(m: &LockMachine, epoch: u64, to: GroupId) -> LockPart {
        let mut whole = LockPart::default();
        let mut from = 0;
        loop {
            let page = match m.query(&LockQuery::Part {
                epoch,
                to,
                from,
                limit: 8 << 10,
            }) {
                LockOutput::Part(Some(page)) => page,
                other => panic!("no part: {other:?}"),
            };
            for r in page.part.ranges.ranges() {
                whole.ranges.insert(*r);
            }
            whole.floor = page.part.floor;
            whole.locks.extend(page.part.locks);
            match page.next {
                Some(next) => from = next,
                None => return whole,
            }
        }
    }

    /// A held lock moves to a group whose revision is far behind: the
    /// holder's session becomes a ghost at the source (its client hears
    /// it expired; its other lock stays held until it expires), a waiter
    /// hears the lock is served elsewhere, the target keeps the lock held
    /// by a ghost until it expires, and the next holder's token is above
    /// every token the source granted; moving it back keeps tokens
    /// increasing.
    #[test]
    fn a_held_lock_moves_and_its_tokens_keep_increasing() {
        let (mut source, mut target) = (LockMachine::default(), LockMachine::default());
        assert_eq!(
            target.apply(&C::Shard(ShardCommand::Assign {
                epoch: 1,
                ranges: RangeSet::default()
            })),
            LockOutput::Moved { locks: 0 }
        );
        source.apply(&client(1, R::Open { session: 1 }));
        source.apply(&client(5, R::Open { session: 5 }));
        for _ in 0..50 {
            source.apply(&client(1, R::KeepAlive { session: 1 }));
        }
        let LockOutput::Granted { token: held } = source.apply(&client(1, acquire(1, "x", 1))) else {
            panic!("granted")
        };
        source.apply(&client(1, acquire(1, "y", 2)));
        assert!(matches!(
            source.apply(&client(5, acquire(5, "x", 1))),
            LockOutput::Queued { .. }
        ));
        let fence = C::Shard(ShardCommand::Fence {
            epoch: 2,
            to: 9,
            ranges: only("x"),
        });
        assert_eq!(source.apply(&fence), LockOutput::Moved { locks: 1 });
        assert_eq!(source.apply(&fence), LockOutput::Moved { locks: 0 }, "a repeated fence");
        assert_eq!(
            source.apply(&client(1, R::KeepAlive { session: 1 })),
            LockOutput::SessionExpired,
            "the holder hears that its session, and every lock of it, is lost"
        );
        assert_eq!(source.holder("y"), Some((1, held + 1)), "until the leader expires it");
        assert_eq!(
            source.apply(&client(5, acquire(5, "x", 2))),
            LockOutput::NotServed { epoch: 2 },
            "the waiter is sent on"
        );
        for query in [
            LockQuery::Lock { lock: "x".into() },
            LockQuery::Watch {
                lock: "x".into(),
                seen: None,
            },
        ] {
            assert_eq!(
                source.query(&query),
                LockOutput::NotServed { epoch: 2 },
                "a waiter watching the name, and a status read, are sent on too"
            );
        }
        let moved = part(&source, 2, 9);
        assert_eq!(moved.locks.len(), 1);
        assert!(moved.floor > held);
        let install = C::Shard(ShardCommand::Install {
            epoch: 2,
            from: 1,
            part: moved.clone(),
        });
        target.apply(&client(2, R::Open { session: 2 }));
        assert_eq!(
            target.apply(&client(2, acquire(2, "x", 1))),
            LockOutput::NotServed { epoch: 1 },
            "not before the install"
        );
        assert_eq!(target.apply(&install), LockOutput::Moved { locks: 1 });
        assert_eq!(
            target.apply(&install),
            LockOutput::Moved { locks: 0 },
            "a repeated install"
        );
        let (ghost, token) = target.holder("x").expect("held by a ghost");
        assert_eq!(token, held);
        assert_eq!(
            target.apply(&client(1, R::KeepAlive { session: ghost })),
            LockOutput::SessionExpired,
            "nobody renews a ghost, not even the holder's node"
        );
        assert_eq!(
            target.apply(&client(1, R::Open { session: ghost })),
            LockOutput::Refused(Refusal::SessionReused)
        );
        let LockOutput::Queued { token: next, .. } = target.apply(&client(2, acquire(2, "x", 2))) else {
            panic!("queued behind the ghost")
        };
        assert!(next > moved.floor, "{next} above the source's floor {}", moved.floor);
        let renewed = target.sessions().find(|(s, _)| *s == ghost).unwrap().1;
        assert_eq!(
            target.apply(&C::Expire {
                session: ghost,
                renewed
            }),
            LockOutput::Expired
        );
        assert_eq!(target.holder("x"), Some((2, next)));
        source.apply(&C::Shard(ShardCommand::Drop { epoch: 2, to: 9 }));
        let first_page = LockQuery::Part {
            epoch: 2,
            to: 9,
            from: 0,
            limit: 8 << 10,
        };
        assert_eq!(source.query(&first_page), LockOutput::Part(None));
        assert_eq!(source.apply(&fence), LockOutput::Moved { locks: 0 });
        assert_eq!(
            source.query(&first_page),
            LockOutput::Part(None),
            "a fence repeated after the drop keeps no part"
        );
        // And back: the source's revision is now behind the target's floor.
        target.apply(&C::Shard(ShardCommand::Fence {
            epoch: 3,
            to: 1,
            ranges: only("x"),
        }));
        let back = part(&target, 3, 1);
        source.apply(&C::Shard(ShardCommand::Install {
            epoch: 3,
            from: 9,
            part: back,
        }));
        let (ghost, _) = source.holder("x").expect("held by a ghost again");
        let renewed = source.sessions().find(|(s, _)| *s == ghost).unwrap().1;
        source.apply(&C::Expire {
            session: ghost,
            renewed,
        });
        source.apply(&client(3, R::Open { session: 3 }));
        let LockOutput::Granted { token: last } = source.apply(&client(3, acquire(3, "x", 1))) else {
            panic!("granted once the ghost expired")
        };
        assert!(last > next);
    }

    /// A part installed in pieces (as the rebalancer ships one that does
    /// not fit a log command) ends as the whole part installed at once
    /// does: the same names served, the same holders and tokens. A
    /// repeated piece is answered and changes nothing, a name of a piece
    /// not yet installed is not served, and a rebalancer that stopped
    /// halfway and is succeeded by one that cuts the part differently
    /// installs only the rest.
    #[test]
    fn a_part_installed_in_pieces_is_the_part_installed_whole() {
        let names: Vec<String> = (0..40).map(|i| format!("lock-{i}")).collect();
        let source = fenced_holding(&names);
        let whole = part(&source, 2, 9);
        assert_eq!(whole.locks.len(), names.len());
        let install = |part| {
            C::Shard(ShardCommand::Install {
                epoch: 2,
                from: 1,
                part,
            })
        };
        let cut = |limit| {
            let empty = ShardCommand::Install {
                epoch: 2,
                from: 1,
                part: LockPart::default(),
            };
            let pieces = pack(&whole.ranges, &whole.locks, empty, limit);
            let floor = whole.floor;
            let pieces: Vec<C> = pieces
                .into_iter()
                .map(|(ranges, locks)| install(LockPart { ranges, floor, locks }))
                .collect();
            pieces
        };
        let (fine, coarse) = (cut(150), cut(320));
        assert!(fine.len() > 3 && coarse.len() > 1 && fine.len() != coarse.len());

        let joined = || {
            let mut m = LockMachine::default();
            m.apply(&C::Shard(ShardCommand::Assign {
                epoch: 1,
                ranges: RangeSet::default(),
            }));
            m
        };
        let (mut at_once, mut in_pieces) = (joined(), joined());
        at_once.apply(&install(whole.clone()));
        let mut shipped = 0;
        let first_of = |piece: &C| match piece {
            C::Shard(ShardCommand::Install { part, .. }) => part.ranges.first().unwrap(),
            _ => unreachable!(),
        };
        // The first run stops halfway; the next cuts the part coarser.
        let halfway = fine.len() / 2;
        for (i, piece) in fine[..halfway].iter().chain(&coarse).enumerate() {
            let LockOutput::Moved { locks: moved } = in_pieces.apply(piece) else {
                panic!("piece {i} refused")
            };
            shipped += moved;
            assert_eq!(
                in_pieces.apply(piece),
                LockOutput::Moved { locks: 0 },
                "a repeated piece"
            );
            if i + 1 < halfway {
                assert!(
                    !in_pieces.ownership().serves(first_of(&fine[i + 1])),
                    "piece {} not yet installed",
                    i + 1
                );
            }
        }
        assert_eq!(shipped, names.len());
        assert_eq!(in_pieces.ownership().serving(), at_once.ownership().serving());
        for name in &names {
            let token = |m: &LockMachine| m.holder(name).map(|(_, token)| token);
            assert_eq!(token(&in_pieces), token(&at_once), "{name}");
            assert!(token(&in_pieces).is_some(), "{name} held by a ghost");
        }
        in_pieces.apply(&client(2, R::Open { session: 1000 }));
        let LockOutput::Queued { token, .. } = in_pieces.apply(&client(2, acquire(1000, &names[0], 1))) else {
            panic!("queued behind the ghost")
        };
        assert!(token > whole.floor);
    }

    /// A part far larger than a log command is read in pages: each page,
    /// whatever limit is asked (up to `MAX_PAGE_BYTES`), installs as one
    /// command of at most that limit, the pages follow one another
    /// without gap or overlap, and together they are the part.
    #[test]
    fn a_large_part_is_read_in_pages_that_each_install_as_one_command() {
        let names: Vec<String> = (0..200).map(|i| format!("{i:03}-{}", "n".repeat(120))).collect();
        let source = fenced_holding(&names);
        for limit in [u32::MAX, 8 << 10, 1000] {
            let (mut from, mut pages, mut locks) = (0, 0, 0);
            let mut covered = RangeSet::default();
            loop {
                let LockOutput::Part(Some(page)) = source.query(&LockQuery::Part {
                    epoch: 2,
                    to: 9,
                    from,
                    limit,
                }) else {
                    panic!("the part is kept")
                };
                let install = C::Shard(ShardCommand::Install {
                    epoch: 2,
                    from: 1,
                    part: page.part.clone(),
                });
                let bytes = codec::encode(&install).unwrap().len();
                assert!(bytes <= limit.min(MAX_PAGE_BYTES) as usize, "a page of {bytes} bytes");
                assert!(page.part.ranges.first() >= Some(from), "a page starts where asked");
                assert!(covered.intersection(&page.part.ranges).is_empty(), "pages overlap");
                for r in page.part.ranges.ranges() {
                    covered.insert(*r);
                }
                pages += 1;
                locks += page.part.locks.len();
                match page.next {
                    Some(next) => from = next,
                    None => break,
                }
            }
            assert_eq!(covered, RangeSet::full(), "limit {limit}");
            assert_eq!(locks, names.len());
            assert!(pages > 3, "{pages} pages of at most {limit} bytes");
        }
    }

    /// A group that already holds locks of its own cannot join as an
    /// empty one; a group that joined is told it is assigned already.
    #[test]
    fn only_an_empty_unsharded_group_is_assigned() {
        let assign = C::Shard(ShardCommand::Assign {
            epoch: 1,
            ranges: RangeSet::default(),
        });
        let mut busy = LockMachine::default();
        busy.apply(&client(1, R::Open { session: 1 }));
        busy.apply(&client(1, acquire(1, "x", 1)));
        assert_eq!(busy.apply(&assign), LockOutput::ShardRefused(ShardRefusal::NotEmpty));
        assert!(busy.ownership().is_unsharded());
        let mut fresh = LockMachine::default();
        assert_eq!(fresh.apply(&assign), LockOutput::Moved { locks: 0 });
        assert_eq!(fresh.apply(&assign), LockOutput::Moved { locks: 0 }, "a repeat");
        let other = C::Shard(ShardCommand::Assign {
            epoch: 1,
            ranges: only("x"),
        });
        assert_eq!(
            fresh.apply(&other),
            LockOutput::ShardRefused(ShardRefusal::AlreadyAssigned)
        );
    }

    /// A part no source could have fenced is refused whole, and a part
    /// that overlaps what the target serves too.
    #[test]
    fn forged_and_overlapping_parts_are_refused() {
        let mut target = LockMachine::default();
        let good = LockPart {
            ranges: only("x"),
            floor: 10,
            locks: vec![MovedLock {
                name: "x".into(),
                session: 1,
                owner: 1,
                token: 5,
                last_granted: 7,
            }],
        };
        let install = |part: LockPart| {
            C::Shard(ShardCommand::Install {
                epoch: 1,
                from: 2,
                part,
            })
        };
        assert_eq!(
            target.apply(&install(good.clone())),
            LockOutput::ShardRefused(ShardRefusal::Overlaps),
            "an unsharded group serves everything"
        );
        target.apply(&C::Shard(ShardCommand::Assign {
            epoch: 1,
            ranges: RangeSet::default(),
        }));
        let mut forged = vec![];
        let mut outside = good.clone();
        outside.ranges = only("z");
        forged.push(outside);
        let mut twice = good.clone();
        twice.locks.push(twice.locks[0].clone());
        forged.push(twice);
        let mut above = good.clone();
        above.locks[0].last_granted = 11;
        forged.push(above);
        let mut zero = good.clone();
        zero.locks[0].token = 0;
        forged.push(zero);
        let mut huge = good.clone();
        huge.floor = u64::MAX;
        forged.push(huge);
        for part in forged {
            let before = target.clone();
            assert_eq!(
                target.apply(&install(part)),
                LockOutput::ShardRefused(ShardRefusal::InvalidPart)
            );
            assert_eq!(target.locks, before.locks);
            assert_eq!(target.ownership, before.ownership);
        }
        assert_eq!(target.apply(&install(good)), LockOutput::Moved { locks: 1 });
    }

    const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
    const GROUPS: usize = 3;

    /// One step of a sharded deployment's life.
    #[derive(Debug, Clone)]
    enum Step {
        /// Client `c` opens a new session in group `g` (its last one there
        /// may have become a ghost).
        Open {
            g: usize,
            c: u64,
        },
        /// Client `c` (its latest session in each group) asks group `g`.
        Acquire {
            g: usize,
            c: u64,
            name: usize,
        },
        Release {
            g: usize,
            c: u64,
            name: usize,
        },
        KeepAlive {
            g: usize,
            c: u64,
        },
        /// Group `g` expires the session at position `nth` of its table.
        Expire {
            g: usize,
            nth: usize,
        },
        /// Group `from` fences the names in `names` (a bit set) for `to`.
        Fence {
            from: usize,
            to: usize,
            names: u8,
        },
        /// The oldest fenced part not yet installed is installed.
        Install,
        /// The oldest installed part is dropped at its source.
        Drop,
    }

    fn step() -> impl Strategy<Value = Step> {
        let g = 0..GROUPS;
        prop_oneof![
            1 => (g.clone(), 0..4u64).prop_map(|(g, c)| Step::Open { g, c }),
            4 => (g.clone(), 0..4u64, 0..NAMES.len()).prop_map(|(g, c, name)| Step::Acquire { g, c, name }),
            2 => (g.clone(), 0..4u64, 0..NAMES.len()).prop_map(|(g, c, name)| Step::Release { g, c, name }),
            1 => (g.clone(), 0..4u64).prop_map(|(g, c)| Step::KeepAlive { g, c }),
            2 => (g.clone(), 0..8usize).prop_map(|(g, nth)| Step::Expire { g, nth }),
            1 => (g.clone(), g, any::<u8>()).prop_map(|(from, to, names)| Step::Fence { from, to, names }),
            1 => Just(Step::Install),
            1 => Just(Step::Drop),
        ]
    }

    /// Tokens held in the groups' tables, per name, as they were last seen.
    fn holders(groups: &[LockMachine]) -> Vec<Vec<(usize, Token)>> {
        NAMES
            .iter()
            .map(|name| {
                let held = groups
                    .iter()
                    .enumerate()
                    .filter_map(|(g, m)| Some((g, m.holder(name)?.1)));
                held.collect()
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// Three groups, clients asking any of them, names moving between
        /// them in any interleaving of fences, installs and drops: no name
        /// is ever served or held by two groups, only the group serving a
        /// name grants it, and each name's holders' tokens only increase.
        #[test]
        fn moves_never_serve_a_name_twice_and_tokens_only_increase(steps in prop::collection::vec(step(), 0..150)) {
            let mut groups: Vec<LockMachine> = (0..GROUPS).map(|_| LockMachine::default()).collect();
            for m in groups.iter_mut().skip(1) {
                m.apply(&C::Shard(ShardCommand::Assign { epoch: 1, ranges: RangeSet::default() }));
            }
            // Client `c`'s session in group `g`, numbered per group.
            let mut sessions = [[0u64; 4]; GROUPS];
            let mut opened = 0;
            let session = |sessions: &[[u64; 4]; GROUPS], g: usize, c: u64| sessions[g][c as usize];
            let (mut fenced, mut installed) = (Vec::new(), Vec::new());
            let mut epoch = 1;
            let mut last_token: Vec<Token> = vec![0; NAMES.len()];
            let mut request = 0;
            for step in steps {
                request += 1;
                match step {
                    Step::Open { g, c } => {
                        opened += 1;
                        sessions[g][c as usize] = opened;
                        groups[g].apply(&client(c as u32, R::Open { session: opened }));
                    }
                    Step::Acquire { g, c, name } => {
                        let out = groups[g].apply(&client(c as u32, acquire(session(&sessions, g, c), NAMES[name], request)));
                        let served = groups[g].ownership().serves(hash_key(NAMES[name].as_bytes()));
                        if let LockOutput::Granted { .. } | LockOutput::Queued { .. } = out {
                            prop_assert!(served, "{out:?} for a name group {g} does not serve");
                        }
                        if let LockOutput::NotServed { .. } = out {
                            prop_assert!(!served);
                        }
                    }
                    Step::Release { g, c, name } => {
                        if let Some((s, token)) = groups[g].holder(NAMES[name]) {
                            if s == session(&sessions, g, c) {
                                groups[g].apply(&client(c as u32, R::Release { session: s, lock: NAMES[name].into(), token }));
                            }
                        }
                    }
                    Step::KeepAlive { g, c } => {
                        groups[g].apply(&client(c as u32, R::KeepAlive { session: session(&sessions, g, c) }));
                    }
                    Step::Expire { g, nth } => {
                        let nth = groups[g].sessions().nth(nth);
                        if let Some((s, renewed)) = nth {
                            groups[g].apply(&C::Expire { session: s, renewed });
                        }
                    }
                    Step::Fence { from, to, names } => {
                        if from != to {
                            epoch += 1;
                            let ranges = RangeSet::from_ranges(
                                NAMES.iter().enumerate().filter(|(i, _)| names >> i & 1 == 1).flat_map(|(_, n)| only(n).ranges().to_vec()),
                            );
                            groups[from].apply(&C::Shard(ShardCommand::Fence { epoch, to: to as GroupId, ranges }));
                            // A fence of nothing the group serves keeps no part.
                            let kept = groups[from].query(&LockQuery::Part { epoch, to: to as GroupId, from: 0, limit: 8 << 10 });
                            if kept != LockOutput::Part(None) {
                                fenced.push((epoch, from, to));
                            }
                        }
                    }
                    Step::Install => {
                        if !fenced.is_empty() {
                            let (epoch, from, to) = fenced.remove(0);
                            let part = part(&groups[from], epoch, to as GroupId);
                            let out = groups[to].apply(&C::Shard(ShardCommand::Install { epoch, from: from as GroupId, part }));
                            prop_assert!(matches!(out, LockOutput::Moved { .. }), "{out:?}");
                            installed.push((epoch, from, to));
                        }
                    }
                    Step::Drop => {
                        if !installed.is_empty() {
                            let (epoch, from, to) = installed.remove(0);
                            groups[from].apply(&C::Shard(ShardCommand::Drop { epoch, to: to as GroupId }));
                        }
                    }
                }
                for (i, name) in NAMES.iter().enumerate() {
                    let h = hash_key(name.as_bytes());
                    let serving = groups.iter().filter(|m| m.ownership().serves(h)).count();
                    let in_flight = fenced.iter().any(|&(e, from, to)| part(&groups[from], e, to as GroupId).ranges.contains(h));
                    prop_assert_eq!(serving + usize::from(in_flight), 1, "{} served by {} groups", name, serving);
                    let held = &holders(&groups)[i];
                    prop_assert!(held.len() <= 1, "{} held in {:?}", name, held);
                    if let Some(&(_, token)) = held.first() {
                        prop_assert!(token >= last_token[i], "{} held with {} after {}", name, token, last_token[i]);
                        last_token[i] = token;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod pack_tests {
    use proptest::prelude::*;

    use super::*;

    fn moved(name: String) -> MovedLock {
        MovedLock {
            name,
            session: 7,
            owner: 3,
            token: 5,
            last_granted: 9,
        }
    }

    /// Names (long and short), and ranges some of which start or end at
    /// a name's hash, so pieces are cut at every kind of boundary.
    fn part() -> impl Strategy<Value = (RangeSet, Vec<MovedLock>)> {
        let names = prop::collection::btree_set((0u32..10_000, 1usize..128), 0..80);
        let cuts = prop::collection::vec((any::<u64>(), 0u64..1 << 62, any::<bool>()), 0..40);
        (names, cuts).prop_map(|(names, cuts)| {
            let names: Vec<String> = names
                .into_iter()
                .map(|(i, len)| format!("{i}{}", "x".repeat(len)))
                .collect();
            let hashes: Vec<u64> = names.iter().map(|n| hash_key(n.as_bytes())).collect();
            let ranges = RangeSet::from_ranges(cuts.into_iter().enumerate().map(|(i, (start, len, at_name))| {
                let start = match (at_name, hashes.get(i)) {
                    (true, Some(&h)) => h,
                    _ => start,
                };
                HashRange {
                    start,
                    end: start.saturating_add(len),
                }
            }));
            let locks = names
                .into_iter()
                .filter(|n| ranges.contains(hash_key(n.as_bytes())))
                .map(moved)
                .collect();
            (ranges, locks)
        })
    }

    proptest! {
        /// The pieces cover the part's ranges exactly, in ascending,
        /// disjoint ranges with distinct first hashes; each lock is in
        /// exactly one piece, inside its ranges; every piece's command fits
        /// the limit; and the same part is always cut the same way.
        #[test]
        fn pieces_cover_the_part_and_each_fits_one_command(
            (ranges, locks) in part(),
            limit in 400usize..3000,
        ) {
            let piece = |ranges, locks| ShardCommand::Install {
                epoch: 4,
                from: 2,
                part: LockPart { ranges, floor: 1 << 40, locks },
            };
            let pieces = pack(&ranges, &locks, piece(RangeSet::default(), Vec::new()), limit);
            prop_assert_eq!(&pieces, &pack(&ranges, &locks, piece(RangeSet::default(), Vec::new()), limit));
            let mut covered = RangeSet::default();
            let mut shipped = Vec::new();
            for (i, (piece_ranges, piece_locks)) in pieces.iter().enumerate() {
                prop_assert!(!piece_ranges.is_empty());
                prop_assert!(covered.intersection(piece_ranges).is_empty(), "pieces overlap");
                if i > 0 {
                    prop_assert!(pieces[i - 1].0.first() < piece_ranges.first(), "pieces ascend");
                }
                for lock in piece_locks {
                    prop_assert!(piece_ranges.contains(hash_key(lock.name.as_bytes())));
                }
                for r in piece_ranges.ranges() {
                    covered.insert(*r);
                }
                shipped.extend(piece_locks.iter().cloned());
                let command = LockCommand::Shard(piece(piece_ranges.clone(), piece_locks.clone()));
                prop_assert!(codec::encode(&command).unwrap().len() <= limit);
            }
            prop_assert_eq!(covered, ranges);
            let name = |m: &MovedLock| m.name.clone();
            let mut want: Vec<String> = locks.iter().map(name).collect();
            let mut got: Vec<String> = shipped.iter().map(name).collect();
            want.sort();
            got.sort();
            prop_assert_eq!(got, want);
        }
    }

    /// A lock larger than the limit goes alone in a piece, with the
    /// hashes around it in pieces of their own.
    #[test]
    fn a_lock_larger_than_the_limit_goes_alone() {
        let name = "n".repeat(100);
        let h = hash_key(name.as_bytes());
        let ranges = RangeSet::from_ranges([HashRange {
            start: h - 5,
            end: h + 5,
        }]);
        let empty = ShardCommand::Install {
            epoch: 1,
            from: 1,
            part: LockPart::default(),
        };
        let pieces = pack(&ranges, &[moved(name.clone())], empty, 60);
        let alone: Vec<_> = pieces.iter().filter(|(_, locks)| !locks.is_empty()).collect();
        assert_eq!(alone.len(), 1);
        assert_eq!(alone[0].1[0].name, name);
        assert!(alone[0].0.contains(h));
        let mut covered = RangeSet::default();
        for (r, _) in &pieces {
            for x in r.ranges() {
                covered.insert(*x);
            }
        }
        assert_eq!(covered, ranges);
    }
}
