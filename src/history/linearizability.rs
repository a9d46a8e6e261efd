//! Linearizability checking for histories of operations on shared objects.
//!
//! A history is linearizable when every operation can be given a single
//! instant between its invocation and its completion such that, taken in that
//! order, the operations are a legal sequential execution of the object's
//! [`Model`]. This is the correctness condition a replicated key-value store
//! (or lock, or queue) promises its clients, and it is judged from the client
//! history alone, so the same check serves simulated and real runs.
//!
//! How the search stays fast enough for thousands of operations:
//! - **Per-key decomposition** (P-compositionality): a history is linearizable
//!   iff its restriction to every key is, so each key is searched on its own
//!   and the search space is the product's sum, not its product.
//! - **Wing–Gong–Lowe search** (as in Porcupine and Knossos): operations sit in
//!   a time-ordered list of call and return entries; the search linearizes any
//!   call that comes before the first pending return, and backtracks when a
//!   return is reached whose operation could not be placed.
//! - **Memoization** of `(set of decided operations, model state)`: two
//!   search paths that reach the same set and state have the same future, so
//!   the second is cut. The set is kept as an incremental 128-bit Zobrist
//!   fingerprint, so a lookup costs O(1) and an entry 16 bytes plus the state,
//!   regardless of history length.
//!
//! Outcomes: an `Ok` operation happened within its interval with the recorded
//! result; a `Fail` operation certainly did not happen and is ignored; an
//! `Info` operation (or one never completed) may have taken effect at any
//! instant after its invocation, or never, with an unknown result.
//!
//! When a key is not linearizable, the checker shrinks the evidence to a small
//! set of operations whose recorded results cannot all be true, whatever the
//! remaining operations on that key did within their intervals (see [`check`]).
//!
//! # Example
//!
//! A register: client 0 writes 1 and is acknowledged, client 1 reads the
//! key. A read that overlaps the write may return the old value; one
//! invoked after the acknowledgement must see the write:
//!
//! ```
//! use ringfence::history::linearizability::{check_kv, KvOp};
//! use ringfence::history::{EventKind, History};
//!
//! let write = KvOp::Write { key: 7, value: 1 };
//! let read = |value| KvOp::Read { key: 7, value };
//!
//! // The read is invoked at 5, during the write: seeing nothing is fine.
//! let mut h = History::default();
//! h.push(0, 0, EventKind::Invoke, write.clone());
//! h.push(1, 5, EventKind::Invoke, read(None));
//! h.push(0, 10, EventKind::Ok, write.clone());
//! h.push(1, 30, EventKind::Ok, read(None));
//! assert!(check_kv(&h).is_ok());
//!
//! // Invoked at 20, after the write was acknowledged: a stale read.
//! let mut h = History::default();
//! h.push(0, 0, EventKind::Invoke, write.clone());
//! h.push(0, 10, EventKind::Ok, write);
//! h.push(1, 20, EventKind::Invoke, read(None));
//! h.push(1, 30, EventKind::Ok, read(None));
//! let violation = check_kv(&h).unwrap_err();
//! assert_eq!(violation.invariant, "linearizable");
//! assert_eq!(violation.events, [0, 1, 2, 3]);
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use super::{Event, EventKind, History, Violation};

/// An operation as the history recorded it: its invocation and, when the
/// outcome is known, its completion.
pub type Recorded<'a, Op> = (&'a Event<Op>, Option<&'a Event<Op>>);

/// A sequential specification of an object, used to judge a history.
///
/// The model must be deterministic: given a state and an invocation, at most
/// one next state is possible (the result is a function of the state). This
/// holds for registers, compare-and-set, counters, queues and locks, and it is
/// what lets unknown-outcome operations be checked without guessing results.
pub trait Model {
    /// The operation type recorded in the [`History`]: on `Invoke` it carries
    /// the arguments, on completion the arguments and the result.
    type Op: fmt::Debug;
    /// Independent partition of the object (a key); models without keys use `()`.
    type Key: Ord + Clone + fmt::Debug;
    /// The object's state between operations.
    type State: Clone + Eq + Hash + fmt::Debug;

    /// Which independent part of the object `op` touches.
    fn key(&self, op: &Self::Op) -> Self::Key;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies `invoke` to `state`. With `completion = Some(op)`, returns the
    /// next state if the recorded result in `op` is what the object would
    /// return in `state`, and `None` otherwise. With `completion = None` (the
    /// outcome is unknown), returns the state after the operation.
    fn step(&self, state: &Self::State, invoke: &Self::Op, completion: Option<&Self::Op>) -> Option<Self::State>;

    /// True when `invoke` never changes the state. Unknown-outcome read-only
    /// operations constrain nothing, so the checker drops them.
    fn is_read_only(&self, _invoke: &Self::Op) -> bool {
        false
    }

    /// For one key's operations (`(invocation, completion)`, completion
    /// `None` when the outcome is unknown), returns per operation an optional
    /// history position after which an unknown-outcome operation taking
    /// effect would be indistinguishable from it never taking effect.
    ///
    /// Unknown-outcome writes otherwise stay candidates until the end of the
    /// history, and a history that is *not* linearizable then costs a search
    /// exponential in their number; a bound confines each to a window. The
    /// default knows no bounds. Entries for operations with a known outcome
    /// are ignored.
    fn unknown_deadlines(&self, ops: &[Recorded<'_, Self::Op>]) -> Vec<Option<usize>> {
        vec![None; ops.len()]
    }
}

/// An operation on a key-value register store.
///
/// The same value is recorded on invocation and completion, as in Jepsen:
/// fields that are results (`Read::value`, `Cas::swapped`) are ignored on
/// `Invoke` and filled in on `Ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp<K = u64, V = u64> {
    /// Reads `key`; `value` is the result, `None` if the key was never written.
    Read {
        /// The register read.
        key: K,
        /// What the read returned: a result, ignored on `Invoke`.
        value: Option<V>,
    },
    /// Overwrites `key` with `value`.
    Write {
        /// The register written.
        key: K,
        /// The new value; the same on invocation and completion.
        value: V,
    },
    /// Sets `key` to `to` if it currently holds `from` (`None`: never written);
    /// `swapped` is the result.
    Cas {
        /// The register compared and perhaps set.
        key: K,
        /// The value expected; `None` expects a never-written register.
        from: Option<V>,
        /// The value installed when `from` matched.
        to: V,
        /// Whether it matched and swapped: a result, ignored on `Invoke`.
        swapped: bool,
    },
}

impl<K, V> KvOp<K, V> {
    /// The register touched, whatever the operation: what the per-key
    /// decomposition splits the history by.
    pub fn key(&self) -> &K {
        match self {
            KvOp::Read { key, .. } | KvOp::Write { key, .. } | KvOp::Cas { key, .. } => key,
        }
    }
}

/// The sequential specification of a key-value store of independent
/// registers: reads return the last value written, compare-and-set swaps
/// only on a match.
pub struct KvModel<K = u64, V = u64>(PhantomData<fn() -> (K, V)>);

impl<K, V> Default for KvModel<K, V> {
    fn default() -> Self {
        KvModel(PhantomData)
    }
}

impl<K, V> Model for KvModel<K, V>
where
    K: Ord + Clone + fmt::Debug,
    V: Clone + Eq + Hash + fmt::Debug,
{
    type Op = KvOp<K, V>;
    type Key = K;
    type State = Option<V>;

    fn key(&self, op: &KvOp<K, V>) -> K {
        op.key().clone()
    }

    fn init(&self) -> Option<V> {
        None
    }

    fn step(&self, state: &Option<V>, invoke: &KvOp<K, V>, completion: Option<&KvOp<K, V>>) -> Option<Option<V>> {
        match (invoke, completion) {
            (KvOp::Read { .. }, None) => Some(state.clone()),
            (KvOp::Read { .. }, Some(KvOp::Read { value, .. })) => (value == state).then(|| state.clone()),
            (KvOp::Write { value, .. }, None | Some(KvOp::Write { .. })) => Some(Some(value.clone())),
            (KvOp::Cas { from, to, .. }, completion) => {
                let would_swap = from == state;
                match completion {
                    None => Some(if would_swap { Some(to.clone()) } else { state.clone() }),
                    Some(KvOp::Cas { swapped, .. }) if *swapped == would_swap => {
                        Some(if would_swap { Some(to.clone()) } else { state.clone() })
                    }
                    Some(KvOp::Cas { .. }) => None,
                    Some(other) => {
                        panic!("completion {other:?} does not match invocation {invoke:?}")
                    }
                }
            }
            (_, Some(other)) => panic!("completion {other:?} does not match invocation {invoke:?}"),
        }
    }

    fn is_read_only(&self, invoke: &KvOp<K, V>) -> bool {
        matches!(invoke, KvOp::Read { .. })
    }

    /// An unknown-outcome write of `v` placed after every operation that
    /// mentions `v` has returned can be removed from any linearization: until
    /// the next write, no completed read returns `v` (it would mention it)
    /// and no successful compare-and-set expects `v`, so nothing after it
    /// depends on the state. That fails when some operation depends on the
    /// state *not* being a value — a compare-and-set that failed or whose
    /// outcome is unknown — so such keys get no bounds.
    fn unknown_deadlines(&self, ops: &[Recorded<'_, KvOp<K, V>>]) -> Vec<Option<usize>> {
        let state_negative = ops.iter().any(|(invoke, done)| {
            matches!(invoke.op, KvOp::Cas { .. })
                && !matches!(done, Some(d) if matches!(d.op, KvOp::Cas { swapped: true, .. }))
        });
        if state_negative {
            return vec![None; ops.len()];
        }
        let mut last_mention: std::collections::HashMap<&V, usize, BuildHasherDefault<MixHasher>> = Default::default(); // determinism: ok — fixed hasher, never iterated
        let mut mention = |v, at: usize| {
            let last = last_mention.entry(v).or_insert(at);
            *last = (*last).max(at);
        };
        for (_, done) in ops {
            let Some(done) = done else { continue };
            match &done.op {
                KvOp::Read { value: Some(v), .. } | KvOp::Write { value: v, .. } => mention(v, done.index),
                KvOp::Cas { from, to, .. } => {
                    if let Some(from) = from {
                        mention(from, done.index);
                    }
                    mention(to, done.index);
                }
                KvOp::Read { value: None, .. } => {}
            }
        }
        ops.iter()
            .map(|(invoke, done)| match (&invoke.op, done) {
                (KvOp::Write { value, .. }, None) => Some(last_mention.get(value).copied().unwrap_or(0)),
                _ => None,
            })
            .collect()
    }
}

/// Checks a key-value history with [`KvModel`].
pub fn check_kv<K, V>(history: &History<KvOp<K, V>>) -> Result<(), Violation>
where
    K: Ord + Clone + fmt::Debug,
    V: Clone + Eq + Hash + fmt::Debug,
{
    check(&KvModel::default(), history)
}

/// Checks that `history` is linearizable with respect to `model`.
///
/// Keys are checked in order; the first key that is not linearizable is
/// reported as a `linearizable` violation naming the key, with the history
/// indices (invocations and completions) of a minimal set of operations whose
/// recorded results contradict each other, whatever every other operation on
/// the key did within its interval (took effect with any result, or not at
/// all). Relaxing operations that way can only make a history easier to
/// linearize, so the smaller set is sound evidence. Shrinking is bounded, and
/// the detail says when it stopped early.
///
/// The search is exact. Its cost grows with concurrency per key and, for
/// histories that are not linearizable, exponentially with the number of
/// unknown-outcome writes on one key (each may have taken effect at any later
/// point): spread workloads over many keys, as Jepsen does. It spends at most
/// [`DEFAULT_STEP_BUDGET`] steps per key; see [`check_with_budget`].
pub fn check<M: Model>(model: &M, history: &History<M::Op>) -> Result<(), Violation> {
    check_with_budget(model, history, DEFAULT_STEP_BUDGET)
}

/// Steps the search may take per key before [`check`] gives up: about a
/// second of search, far beyond what the simulator's histories need.
pub const DEFAULT_STEP_BUDGET: u64 = 50_000_000;

/// Name of the verdict when the search ran out of steps: neither a pass nor
/// a proven violation, and reported as a failure so that a sweep cannot hang
/// on a hard history or pass without an answer.
pub const UNDECIDED: &str = "linearizability-undecided";

/// [`check`] with at most `steps` search steps per key. A key whose search
/// runs out is reported as an [`UNDECIDED`] violation naming the key.
pub fn check_with_budget<M: Model>(model: &M, history: &History<M::Op>, steps: u64) -> Result<(), Violation> {
    let mut by_key: BTreeMap<M::Key, Vec<Call<'_, M::Op>>> = BTreeMap::new();
    for (invoke, completion) in history.operations() {
        let call = match completion {
            Some(done) if done.kind == EventKind::Fail => continue, // did not happen
            Some(done) if done.kind == EventKind::Ok => {
                assert_eq!(
                    model.key(&done.op),
                    model.key(&invoke.op),
                    "completion {} names another key than its invocation {}",
                    done.index,
                    invoke.index
                );
                Call {
                    invoke,
                    completion: Some(done),
                    deadline: Some(done.index),
                }
            }
            // Info, or never completed: may take effect any time after invoke.
            _ => Call {
                invoke,
                completion: None,
                deadline: None,
            },
        };
        by_key.entry(model.key(&invoke.op)).or_default().push(call);
    }
    for (key, calls) in by_key {
        let calls = bound_unknowns(model, drop_unknown_reads(model, calls));
        let mut budget = steps;
        match search(model, &calls, &mut budget) {
            Outcome::Linearizable => {}
            Outcome::Illegal { frontier } => return Err(explain(model, &key, &calls, frontier)),
            Outcome::GaveUp => {
                let events = calls.iter().map(|c| c.invoke.index).collect();
                return Err(Violation::new(
                    UNDECIDED,
                    format!(
                        "key {key:?}: the search for a linearization of {} operations ran out of its {steps} steps; \
                         the history is neither accepted nor refuted (spread the workload over more keys)",
                        calls.len()
                    ),
                    events,
                ));
            }
        }
    }
    Ok(())
}

/// One operation of a key's sub-history, as the search sees it.
///
/// - `completion: Some` — a required operation: it took effect by its
///   completion, with the recorded result.
/// - `completion: None, deadline: None` — unknown outcome: it may take effect
///   at any instant after its invocation, or never.
/// - `completion: None, deadline: Some(t)` — optional: if it took effect, it
///   did so before position `t`. Explanations relax required operations to
///   this, which keeps their real-time window and so keeps the search small.
struct Call<'a, Op> {
    invoke: &'a Event<Op>,
    completion: Option<&'a Event<Op>>,
    deadline: Option<usize>,
}

impl<Op> Clone for Call<'_, Op> {
    fn clone(&self) -> Self {
        Call {
            invoke: self.invoke,
            completion: self.completion,
            deadline: self.deadline,
        }
    }
}

fn drop_unknown_reads<'a, M: Model>(model: &M, calls: Vec<Call<'a, M::Op>>) -> Vec<Call<'a, M::Op>> {
    calls
        .into_iter()
        .filter(|c| c.completion.is_some() || !model.is_read_only(&c.invoke.op))
        .collect()
}

/// Applies [`Model::unknown_deadlines`], dropping unknown-outcome operations
/// whose window closes before they were even invoked.
fn bound_unknowns<'a, M: Model>(model: &M, mut calls: Vec<Call<'a, M::Op>>) -> Vec<Call<'a, M::Op>> {
    let ops: Vec<_> = calls.iter().map(|c| (c.invoke, c.completion)).collect();
    let deadlines = model.unknown_deadlines(&ops);
    assert_eq!(deadlines.len(), calls.len(), "one deadline per operation");
    for (call, deadline) in calls.iter_mut().zip(deadlines) {
        if call.completion.is_none() && call.deadline.is_none() {
            call.deadline = deadline;
        }
    }
    calls.retain(|c| c.deadline.is_none_or(|d| d > c.invoke.index));
    calls
}

enum Outcome {
    Linearizable,
    /// `frontier` is the latest history position of a required operation's
    /// completion at which some search path got stuck. Every path reaching
    /// it placed only operations invoked before it, so the history up to just
    /// before it is linearizable: the shortest failing prefix ends no earlier.
    /// (It may end later: in a prefix, operations running at its end have
    /// unknown outcome, freer than their recorded one.)
    Illegal {
        frontier: usize,
    },
    /// The step budget ran out before an answer.
    GaveUp,
}

const NONE: usize = usize::MAX;
const HEAD: usize = 0;

/// The time-ordered doubly linked list of call and return entries, with
/// O(1) removal and reinsertion (dancing links) as the search lifts and
/// restores operations.
struct Entries {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The operation of each entry (unused for the head).
    op: Vec<usize>,
    /// The history position of each entry.
    pos: Vec<usize>,
    is_call: Vec<bool>,
    /// A call's return entry (`NONE` without a deadline), a return's call.
    partner: Vec<usize>,
}

impl Entries {
    /// Operations without a deadline get no return entry: nothing forces
    /// them to be placed.
    fn new<Op>(calls: &[Call<'_, Op>]) -> Self {
        // (history position, is_return, op); a call sorts before a return
        // at the same position, which only an optional op can produce.
        let mut order: Vec<(usize, bool, usize)> = Vec::with_capacity(2 * calls.len());
        for (i, c) in calls.iter().enumerate() {
            order.push((c.invoke.index, false, i));
            if let Some(deadline) = c.deadline {
                order.push((deadline, true, i));
            }
        }
        order.sort_unstable();
        let n = order.len() + 1;
        let mut e = Entries {
            next: (1..=n).map(|i| if i == n { NONE } else { i }).collect(),
            prev: (0..n).map(|i| i.wrapping_sub(1)).collect(),
            op: vec![NONE; n],
            pos: vec![0; n],
            is_call: vec![false; n],
            partner: vec![NONE; n],
        };
        let mut call_entry = vec![NONE; calls.len()];
        for (slot, &(pos, is_return, op)) in order.iter().enumerate() {
            let entry = slot + 1;
            e.op[entry] = op;
            e.pos[entry] = pos;
            e.is_call[entry] = !is_return;
            if is_return {
                e.partner[call_entry[op]] = entry;
                e.partner[entry] = call_entry[op];
            } else {
                call_entry[op] = entry;
            }
        }
        e
    }

    fn unlink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        if n != NONE {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        if n != NONE {
            self.prev[n] = x;
        }
    }

    fn lift(&mut self, call: usize) {
        self.unlink(call);
        if self.partner[call] != NONE {
            self.unlink(self.partner[call]);
        }
    }

    /// Undoes `lift`; valid because lifts are undone in reverse order.
    fn unlift(&mut self, call: usize) {
        if self.partner[call] != NONE {
            self.relink(self.partner[call]);
        }
        self.relink(call);
    }
}

/// The set of decided operations (placed, or past their deadline without
/// being placed), kept as a 128-bit Zobrist fingerprint: each operation
/// toggles a fixed pseudo-random value in, so placing and undoing cost O(1)
/// and a memo entry costs 16 bytes however long the history. Storing the set
/// itself (n bits per entry) is what exhausts memory on long single-key
/// histories that are not linearizable. Model checkers rely on the same trade
/// (TLC keeps 64-bit fingerprints): two different sets collide with odds
/// around 2^-128 per pair, and a collision could only cut a search path.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
struct Decided(u64, u64);

impl Decided {
    fn toggle(&mut self, op: usize) {
        let op = op as u64;
        self.0 ^= splitmix64(op.wrapping_mul(2));
        self.1 ^= splitmix64(op.wrapping_mul(2) + 1);
    }
}

/// A well-mixed value per input (the splitmix64 finalizer).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A memo entry: two search paths that decided the same operations and
/// reached the same state have the same future.
#[derive(PartialEq, Eq, Hash)]
struct Seen<S> {
    decided: Decided,
    state: S,
}

/// A fast, unseeded hasher (FxHash's mixing step). Unseeded on purpose: the
/// checker must not draw randomness from the process (or the simulator).
#[derive(Default)]
struct MixHasher(u64);

impl Hasher for MixHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A choice on the search stack, undone on backtracking.
struct Frame<S> {
    /// The call entry of the decided operation.
    call: usize,
    /// The state before the choice.
    state: S,
    /// The operation was dropped at its deadline rather than placed.
    skipped: bool,
}

/// The WGL search over one key's operations. Each step spends one unit of
/// `budget` (`u64::MAX`: in effect unbounded; the memo guarantees
/// termination); `GaveUp` when it runs out.
fn search<M: Model>(model: &M, calls: &[Call<'_, M::Op>], budget: &mut u64) -> Outcome {
    let mut remaining = calls.iter().filter(|c| c.completion.is_some()).count();
    if remaining == 0 {
        return Outcome::Linearizable;
    }
    let mut entries = Entries::new(calls);
    let mut decided = Decided::default();
    let mut seen: HashSet<Seen<M::State>, BuildHasherDefault<MixHasher>> = HashSet::default(); // determinism: ok — membership only
    let mut stack: Vec<Frame<M::State>> = Vec::new();
    let mut state = model.init();
    let mut entry = entries.next[HEAD];
    let mut frontier = 0;
    loop {
        if *budget == 0 {
            return Outcome::GaveUp;
        }
        *budget -= 1;
        // A required operation's return entry is always ahead while
        // `remaining` is positive, so the walk never falls off the list.
        debug_assert_ne!(entry, NONE);
        let op = entries.op[entry];
        let call = &calls[op];
        let is_call = entries.is_call[entry];
        // At a call: try to place the operation here. At the deadline of an
        // optional operation that was not placed: decide it never happened.
        // At the return of a required one that was not placed: backtrack.
        if is_call || call.completion.is_none() {
            let next = if is_call {
                model.step(&state, &call.invoke.op, call.completion.map(|e| &e.op))
            } else {
                Some(state.clone())
            };
            if let Some(next) = next {
                decided.toggle(op);
                let memo = Seen { decided, state: next };
                if !seen.contains(&memo) {
                    let next = memo.state.clone();
                    seen.insert(memo);
                    let call_entry = if is_call { entry } else { entries.partner[entry] };
                    stack.push(Frame {
                        call: call_entry,
                        state: std::mem::replace(&mut state, next),
                        skipped: !is_call,
                    });
                    entries.lift(call_entry);
                    if call.completion.is_some() {
                        remaining -= 1;
                        if remaining == 0 {
                            return Outcome::Linearizable;
                        }
                    }
                    entry = entries.next[HEAD];
                    continue;
                }
                decided.toggle(op);
            }
            if is_call {
                entry = entries.next[entry];
                continue;
            }
        } else {
            frontier = frontier.max(entries.pos[entry]);
        }
        // Undo choices until one leaves a later candidate to try. Undoing a
        // drop at a deadline leaves none: the walk had reached that deadline.
        loop {
            let Some(frame) = stack.pop() else {
                return Outcome::Illegal { frontier };
            };
            let op = entries.op[frame.call];
            decided.toggle(op);
            state = frame.state;
            entries.unlift(frame.call);
            if calls[op].completion.is_some() {
                remaining += 1;
            }
            if !frame.skipped {
                entry = entries.next[frame.call];
                break;
            }
        }
    }
}

/// Search steps allowed in total while explaining one key (a few seconds).
/// A check that runs out keeps what it tried to relax, which stays sound;
/// the violation then says the evidence may not be minimal.
const EXPLAIN_STEP_BUDGET: u64 = 20_000_000;
/// Operations spelled out in a violation's detail; its `events` list all.
const DESCRIBED_OPS: usize = 12;

/// Builds the violation for a key known not to be linearizable.
///
/// First the history is cut to its shortest non-linearizable prefix (in a
/// prefix, operations still running at the cut have unknown outcome; every
/// prefix of a linearizable history is linearizable, so this is sound and
/// monotone: a binary search, from the failed search's `frontier` on). Then
/// operations are relaxed, in
/// shrinking chunks (delta debugging), from required to optional (may or may
/// not have taken effect within their interval, result unknown) while the
/// rest stays non-linearizable. Any behaviour of the original is one of the
/// relaxed history, so what stays required is sound evidence.
fn explain<M: Model>(model: &M, key: &M::Key, calls: &[Call<'_, M::Op>], frontier: usize) -> Violation {
    let mut budget = EXPLAIN_STEP_BUDGET;
    let mut exhausted = false;
    let mut fails = |required: &[bool], cut: usize| -> bool {
        if budget == 0 {
            exhausted = true;
            return false;
        }
        let sub: Vec<Call<'_, M::Op>> = calls
            .iter()
            .zip(required)
            .filter(|(c, _)| c.invoke.index <= cut)
            .map(|(c, &req)| {
                let deadline = c.deadline.filter(|&d| d <= cut);
                Call {
                    invoke: c.invoke,
                    completion: c.completion.filter(|_| req && deadline.is_some()),
                    deadline,
                }
            })
            .collect();
        let sub = drop_unknown_reads(model, sub);
        match search(model, &sub, &mut budget) {
            Outcome::Illegal { .. } => true,
            Outcome::Linearizable => false,
            Outcome::GaveUp => {
                exhausted = true;
                false
            }
        }
    };

    let mut required: Vec<bool> = calls.iter().map(|c| c.completion.is_some()).collect();
    let mut returns: Vec<usize> = calls
        .iter()
        .filter_map(|c| c.completion.map(|e| e.index))
        .filter(|&at| at >= frontier)
        .collect();
    returns.sort_unstable();
    // The whole history fails; find the first return whose prefix does.
    let (mut lo, mut hi) = (0, returns.len() - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(&required, returns[mid]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let cut = returns[hi];
    for (req, c) in required.iter_mut().zip(calls) {
        *req = *req && c.completion.is_some_and(|e| e.index <= cut);
    }

    let mut core: Vec<usize> = (0..calls.len()).filter(|&i| required[i]).collect();
    // The operation completing at the cut is the one that cannot be placed;
    // first try it alone, which settles invented values at once.
    let last = *core
        .iter()
        .find(|&&i| calls[i].completion.is_some_and(|e| e.index == cut))
        .expect("the cut is a required operation's return");
    if core.len() > 1 {
        for &i in &core {
            required[i] = i == last;
        }
        if fails(&required, cut) {
            core = vec![last];
        } else {
            for &i in &core {
                required[i] = true;
            }
        }
    }
    let mut chunk = core.len().div_ceil(2).max(1);
    loop {
        let mut start = 0;
        while start < core.len() && core.len() > 1 {
            let end = (start + chunk).min(core.len());
            for &i in &core[start..end] {
                required[i] = false;
            }
            if fails(&required, cut) {
                core.drain(start..end);
            } else {
                for &i in &core[start..end] {
                    required[i] = true;
                }
                start = end;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk = chunk.div_ceil(2);
    }

    let mut events = Vec::with_capacity(2 * core.len());
    let mut described = Vec::with_capacity(core.len());
    for &i in &core {
        let c = &calls[i];
        let done = c.completion.expect("evidence operations are required");
        events.extend([c.invoke.index, done.index]);
        if described.len() == DESCRIBED_OPS {
            described.push(format!("and {} more", core.len() - DESCRIBED_OPS));
            continue;
        } else if described.len() > DESCRIBED_OPS {
            continue;
        }
        described.push(format!(
            "client {} invoked {:?} at event {} and got {:?} at event {}",
            c.invoke.client, c.invoke.op, c.invoke.index, done.op, done.index
        ));
    }
    events.sort_unstable();
    let note = if exhausted {
        " (shrinking hit its budget: the set may not be minimal)"
    } else {
        ""
    };
    Violation::new(
        "linearizable",
        format!(
            "key {key:?}: no order of these {} operations explains their results, \
             whatever the other operations on the key did within their intervals{note}: {}",
            core.len(),
            described.join("; ")
        ),
        events,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use EventKind::{Fail, Info, Invoke, Ok as Done};

    fn w(key: u64, value: u64) -> KvOp {
        KvOp::Write { key, value }
    }
    fn r(key: u64, value: Option<u64>) -> KvOp {
        KvOp::Read { key, value }
    }
    fn cas(key: u64, from: Option<u64>, to: u64, swapped: bool) -> KvOp {
        KvOp::Cas { key, from, to, swapped }
    }

    fn history(events: &[(u32, EventKind, KvOp)]) -> History<KvOp> {
        History::in_order(events)
    }

    #[test]
    fn a_search_that_runs_out_of_steps_is_undecided_not_accepted() {
        // Many overlapping writes then a read: finding the linearization
        // takes more than a handful of steps.
        let mut events = Vec::new();
        for client in 1..=6 {
            events.push((client, Invoke, w(0, u64::from(client))));
        }
        for client in 1..=6 {
            events.push((client, Done, w(0, u64::from(client))));
        }
        events.push((9, Invoke, r(0, None)));
        events.push((9, Done, r(0, Some(3))));
        let h = history(&events);
        assert_eq!(check_kv(&h), Ok(()));
        let v = check_with_budget(&KvModel::default(), &h, 3).unwrap_err();
        assert_eq!(v.invariant, UNDECIDED);
    }

    #[test]
    fn sequential_reads_see_the_last_write() {
        let h = history(&[
            (1, Invoke, r(0, None)),
            (1, Done, r(0, None)),
            (1, Invoke, w(0, 1)),
            (1, Done, w(0, 1)),
            (2, Invoke, r(0, None)),
            (2, Done, r(0, Some(1))),
        ]);
        assert_eq!(check_kv(&h), Ok(()));
    }

    #[test]
    fn stale_read_after_a_completed_write_is_caught() {
        let h = history(&[
            (1, Invoke, w(7, 1)), // 0
            (1, Done, w(7, 1)),   // 1
            (1, Invoke, w(7, 2)), // 2
            (1, Done, w(7, 2)),   // 3
            (3, Invoke, w(8, 5)), // 4: another key, irrelevant
            (3, Done, w(8, 5)),   // 5
            (2, Invoke, r(7, None)),
            (2, Done, r(7, Some(1))), // 7
        ]);
        let v = check_kv(&h).unwrap_err();
        assert_eq!(v.invariant, "linearizable");
        assert!(v.detail.starts_with("key 7:"), "{}", v.detail);
        // w(1) is not needed: whether or not it happened, it happened before
        // w(2) completed, so nothing can explain reading 1 after that.
        assert_eq!(v.events, vec![2, 3, 6, 7]);
    }

    #[test]
    fn lost_write_is_caught_with_a_minimal_witness() {
        let h = history(&[
            (1, Invoke, w(0, 1)),    // 0
            (1, Done, w(0, 1)),      // 1
            (1, Invoke, w(0, 2)),    // 2
            (1, Done, w(0, 2)),      // 3
            (2, Invoke, r(0, None)), // 4
            (2, Done, r(0, None)),   // 5: both writes lost
            (2, Invoke, r(0, None)), // 6
            (2, Done, r(0, Some(2))),
        ]);
        let v = check_kv(&h).unwrap_err();
        // w(2) relaxed to unknown still cannot explain reading nothing after w(1).
        assert_eq!(v.events.len(), 4, "{v}");
        assert!(v.events.ends_with(&[4, 5]), "{v}");
    }

    #[test]
    fn concurrent_overlapping_operations_may_go_either_way() {
        // Two writes overlap a read pair; each read may see either order,
        // but both reads are after both writes complete? No: they overlap.
        let h = history(&[
            (1, Invoke, w(0, 1)),
            (2, Invoke, w(0, 2)),
            (3, Invoke, r(0, None)),
            (3, Done, r(0, Some(2))),
            (4, Invoke, r(0, None)),
            (4, Done, r(0, Some(1))),
            (1, Done, w(0, 1)),
            (2, Done, w(0, 2)),
        ]);
        assert_eq!(check_kv(&h), Ok(()));
    }

    #[test]
    fn reads_that_disagree_on_the_order_of_completed_writes_are_caught() {
        // Both writes finished before both reads began: the reads must agree.
        let h = history(&[
            (1, Invoke, w(0, 1)),
            (2, Invoke, w(0, 2)),
            (1, Done, w(0, 1)),
            (2, Done, w(0, 2)),
            (3, Invoke, r(0, None)),
            (3, Done, r(0, Some(2))),
            (4, Invoke, r(0, None)),
            (4, Done, r(0, Some(1))),
        ]);
        assert!(check_kv(&h).is_err());
    }

    #[test]
    fn unknown_outcome_writes_may_or_may_not_apply() {
        let applied = history(&[
            (1, Invoke, w(0, 1)),
            (1, Info, w(0, 1)),
            (2, Invoke, r(0, None)),
            (2, Done, r(0, Some(1))),
        ]);
        assert_eq!(check_kv(&applied), Ok(()));
        let not_applied = history(&[
            (1, Invoke, w(0, 1)),
            (1, Info, w(0, 1)),
            (2, Invoke, r(0, None)),
            (2, Done, r(0, None)),
        ]);
        assert_eq!(check_kv(&not_applied), Ok(()));
        // Applied late: after a later write, long after the client gave up.
        let late = history(&[
            (1, Invoke, w(0, 1)),
            (1, Info, w(0, 1)),
            (2, Invoke, w(0, 2)),
            (2, Done, w(0, 2)),
            (2, Invoke, r(0, None)),
            (2, Done, r(0, Some(1))),
        ]);
        assert_eq!(check_kv(&late), Ok(()));
        // A value no one wrote is still impossible.
        let invented = history(&[
            (1, Invoke, w(0, 1)),
            (1, Info, w(0, 1)),
            (2, Invoke, r(0, None)),
            (2, Done, r(0, Some(3))),
        ]);
        assert_eq!(check_kv(&invented).unwrap_err().events, vec![2, 3]);
        // It cannot take effect before it was invoked.
        let early = history(&[(2, Invoke, r(0, None)), (2, Done, r(0, Some(1))), (1, Invoke, w(0, 1))]);
        assert!(check_kv(&early).is_err());
    }

    #[test]
    fn failed_operations_did_not_happen() {
        let h = history(&[
            (1, Invoke, w(0, 1)),
            (1, Fail, w(0, 1)),
            (2, Invoke, r(0, None)),
            (2, Done, r(0, Some(1))),
        ]);
        assert_eq!(check_kv(&h).unwrap_err().events, vec![2, 3]);
    }

    #[test]
    fn compare_and_set_results_are_judged() {
        let ok = history(&[
            (1, Invoke, cas(0, None, 1, false)),
            (1, Done, cas(0, None, 1, true)),
            (2, Invoke, cas(0, None, 2, false)),
            (2, Done, cas(0, None, 2, false)),
            (2, Invoke, cas(0, Some(1), 3, false)),
            (2, Done, cas(0, Some(1), 3, true)),
            (1, Invoke, r(0, None)),
            (1, Done, r(0, Some(3))),
        ]);
        assert_eq!(check_kv(&ok), Ok(()));
        // Two clients both win the same compare-and-set: a split brain.
        let both_won = history(&[
            (1, Invoke, cas(0, None, 1, false)),
            (2, Invoke, cas(0, None, 2, false)),
            (1, Done, cas(0, None, 1, true)),
            (2, Done, cas(0, None, 2, true)),
        ]);
        assert_eq!(check_kv(&both_won).unwrap_err().events, vec![0, 1, 2, 3]);
        // An unknown-outcome CAS swaps exactly when it matches.
        let unknown = history(&[
            (1, Invoke, cas(0, None, 1, false)),
            (1, Info, cas(0, None, 1, false)),
            (2, Invoke, cas(0, Some(1), 2, false)),
            (2, Done, cas(0, Some(1), 2, true)),
        ]);
        assert_eq!(check_kv(&unknown), Ok(()));
    }

    #[test]
    fn keys_are_independent() {
        // Per key each is fine; a single global register would reject it.
        let h = history(&[
            (1, Invoke, w(0, 1)),
            (1, Done, w(0, 1)),
            (1, Invoke, w(1, 2)),
            (1, Done, w(1, 2)),
            (2, Invoke, r(0, None)),
            (2, Done, r(0, Some(1))),
        ]);
        assert_eq!(check_kv(&h), Ok(()));
    }

    /// A history of `ops` operations by `clients` concurrent clients on
    /// `keys` keys, linearizable by construction: each operation takes effect
    /// on a real register at a random instant between its invocation and its
    /// completion. Some operations fail before taking effect, and some end
    /// with unknown outcome whether or not they took effect.
    fn generate(seed: u64, ops: usize, clients: u32, keys: u64, with_cas: bool) -> History<KvOp> {
        #[derive(Clone)]
        enum Phase {
            Idle,
            Invoked(KvOp),
            Applied(KvOp),
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut store: BTreeMap<u64, u64> = BTreeMap::new();
        let mut phases = vec![Phase::Idle; clients as usize];
        let mut h = History::default();
        let (mut started, mut next_value, mut t) = (0, 0, 0);
        while started < ops || phases.iter().any(|p| !matches!(p, Phase::Idle)) {
            let client = rng.gen_range(0..clients);
            t += 1;
            let phase = &mut phases[client as usize];
            *phase = match phase.clone() {
                Phase::Idle if started < ops => {
                    started += 1;
                    let key = rng.gen_range(0..keys);
                    next_value += 1;
                    let op = match rng.gen_range(0..if with_cas { 10 } else { 8 }) {
                        0..=4 => r(key, None),
                        5..=7 => w(key, next_value),
                        _ => cas(
                            key,
                            store.get(&key).copied().filter(|_| rng.gen_bool(0.7)),
                            next_value,
                            false,
                        ),
                    };
                    h.push(client, t, Invoke, op.clone());
                    Phase::Invoked(op)
                }
                Phase::Idle => Phase::Idle,
                Phase::Invoked(op) if rng.gen_bool(0.02) => {
                    h.push(client, t, if rng.gen_bool(0.5) { Fail } else { Info }, op);
                    Phase::Idle
                }
                Phase::Invoked(op) => {
                    let current = store.get(op.key()).copied();
                    let done = match op {
                        KvOp::Read { key, .. } => r(key, current),
                        KvOp::Write { key, value } => {
                            store.insert(key, value);
                            w(key, value)
                        }
                        KvOp::Cas { key, from, to, .. } => {
                            let swapped = from == current;
                            if swapped {
                                store.insert(key, to);
                            }
                            cas(key, from, to, swapped)
                        }
                    };
                    Phase::Applied(done)
                }
                Phase::Applied(op) => {
                    h.push(client, t, if rng.gen_bool(0.02) { Info } else { Done }, op);
                    Phase::Idle
                }
            };
        }
        h
    }

    #[test]
    fn generated_linearizable_histories_pass() {
        for seed in 0..50 {
            let h = generate(seed, 300, 6, 3, seed % 2 == 0);
            assert_eq!(check_kv(&h), Ok(()), "seed {seed}");
        }
    }

    #[test]
    fn corrupted_reads_in_generated_histories_are_caught() {
        let mut caught = 0;
        for seed in 0..50 {
            let mut h = generate(seed, 200, 5, 2, seed % 2 == 0);
            // Make one completed read return a value that was never written.
            let Some(pos) = h
                .events()
                .iter()
                .rposition(|e| e.kind == Done && matches!(e.op, KvOp::Read { .. }))
            else {
                continue;
            };
            let mut events = h.events().to_vec();
            let key = *events[pos].op.key();
            events[pos].op = r(key, Some(u64::MAX));
            h = History::default();
            for e in events {
                h.push(e.client, e.time_ns, e.kind, e.op);
            }
            let v = check_kv(&h).expect_err("an invented value is never linearizable");
            // The invented value alone is the evidence.
            assert_eq!(v.events.len(), 2, "seed {seed}: {v}");
            assert!(v.events.contains(&pos), "seed {seed}: {v}");
            caught += 1;
        }
        assert!(caught > 40);
    }

    /// Decides linearizability by trying every order of every subset of the
    /// optional operations: `(invoke, deadline, completion)` where
    /// `completion: Some` means required with that result.
    fn brute_force(ops: &[(usize, Option<usize>, Option<KvOp>, KvOp)]) -> bool {
        let model = KvModel::<u64, u64>::default();
        let optional: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].2.is_none()).collect();
        (0u32..1 << optional.len()).any(|mask| {
            let chosen: Vec<usize> = (0..ops.len())
                .filter(|&i| match optional.iter().position(|&o| o == i) {
                    Some(bit) => mask & (1 << bit) != 0,
                    None => true,
                })
                .collect();
            permutations(&chosen).into_iter().any(|order| {
                let respects_time = order.iter().enumerate().all(|(a, &x)| {
                    order[a + 1..]
                        .iter()
                        .all(|&y| ops[y].1.is_none_or(|deadline| deadline > ops[x].0))
                });
                respects_time
                    && order
                        .iter()
                        .try_fold(model.init(), |state, &i| {
                            model.step(&state, &ops[i].3, ops[i].2.as_ref())
                        })
                        .is_some()
            })
        })
    }

    fn permutations(items: &[usize]) -> Vec<Vec<usize>> {
        if items.is_empty() {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for i in 0..items.len() {
            let mut rest = items.to_vec();
            let first = rest.remove(i);
            for mut tail in permutations(&rest) {
                tail.insert(0, first);
                out.push(tail);
            }
        }
        out
    }

    /// A small random history on one key, linearizable or not.
    fn random_history(rng: &mut ChaCha8Rng) -> History<KvOp> {
        let mut h = History::default();
        let mut open: Vec<Option<KvOp>> = vec![None; 3];
        let (mut invoked, mut t) = (0, 0);
        let with_cas = rng.gen_bool(0.5);
        let value = |rng: &mut ChaCha8Rng| rng.gen_range(1..3u64);
        while invoked < 6 || open.iter().any(Option::is_some) {
            let client = rng.gen_range(0..3usize);
            t += 1;
            match open[client].take() {
                None if invoked < 6 => {
                    invoked += 1;
                    let op = match rng.gen_range(0..if with_cas { 3 } else { 2 }) {
                        0 => r(0, None),
                        1 => w(0, value(rng)),
                        _ => cas(0, Some(value(rng)).filter(|_| rng.gen_bool(0.7)), value(rng), false),
                    };
                    h.push(client as u32, t, Invoke, op.clone());
                    open[client] = Some(op);
                }
                None => {}
                Some(op) => {
                    let kind = match rng.gen_range(0..10) {
                        0 => Info,
                        1 => Fail,
                        _ => Done,
                    };
                    let result = match op {
                        KvOp::Read { key, .. } => r(key, Some(value(rng)).filter(|_| rng.gen_bool(0.7))),
                        KvOp::Cas { key, from, to, .. } => cas(key, from, to, rng.gen_bool(0.5)),
                        write => write,
                    };
                    h.push(client as u32, t, kind, result);
                }
            }
        }
        h
    }

    #[test]
    fn agrees_with_brute_force_and_its_evidence_holds() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (mut linearizable, mut not) = (0, 0);
        for _ in 0..2_000 {
            let h = random_history(&mut rng);
            let ops: Vec<_> = h
                .operations()
                .into_iter()
                .filter(|(_, done)| done.is_none_or(|d| d.kind != Fail))
                .map(|(inv, done)| match done.filter(|d| d.kind == Done) {
                    Some(d) => (inv.index, Some(d.index), Some(d.op.clone()), inv.op.clone()),
                    None => (inv.index, None, None, inv.op.clone()),
                })
                .collect();
            let expected = brute_force(&ops);
            match check_kv(&h) {
                Ok(()) => {
                    assert!(expected, "accepted a non-linearizable history: {h:?}");
                    linearizable += 1;
                }
                Err(v) => {
                    assert!(!expected, "rejected a linearizable history: {v} {h:?}");
                    // Keep the evidence required; relax every other
                    // operation to optional within its interval.
                    let relaxed: Vec<_> = ops
                        .iter()
                        .map(|(inv, deadline, done, op)| {
                            if v.events.contains(inv) {
                                (*inv, *deadline, done.clone(), op.clone())
                            } else {
                                (*inv, *deadline, None, op.clone())
                            }
                        })
                        .collect();
                    assert!(!brute_force(&relaxed), "evidence does not hold: {v} {h:?}");
                    not += 1;
                }
            }
        }
        assert!(linearizable > 200 && not > 200, "{linearizable} / {not}");
    }

    /// Prints how long 5,000-operation histories take to accept and, made
    /// stale, to reject and explain; run with
    /// `cargo test --release -p ringfence --lib five_thousand -- --ignored --nocapture`.
    /// A measurement, not an assertion on time, so not part of the default run.
    #[test]
    #[ignore]
    fn five_thousand_operation_history() {
        for (clients, keys, with_cas) in [
            (10, 10, false),
            (10, 1, false),
            (32, 4, false),
            (10, 10, true),
            (10, 1, true),
            (32, 4, true),
        ] {
            let h = generate(42, 5_000, clients, keys, with_cas);
            let start = std::time::Instant::now(); // determinism: ok — timing print in an ignored benchmark test
            assert_eq!(check_kv(&h), Ok(()));
            println!(
                "5000 ops, {clients} clients, {keys} keys, cas {with_cas}: linearizable in {:?}",
                start.elapsed()
            );
            if with_cas {
                continue; // failed CAS + unknown writes: exponential when not linearizable
            }
            // The same history with one late read made stale.
            let mut events = h.events().to_vec();
            let pos = events
                .iter()
                .rposition(|e| e.kind == Done && matches!(e.op, KvOp::Read { value: Some(_), .. }))
                .expect("some read saw a value");
            let key = *events[pos].op.key();
            events[pos].op = r(key, Some(1));
            let mut stale = History::default();
            for e in events {
                stale.push(e.client, e.time_ns, e.kind, e.op);
            }
            let start = std::time::Instant::now(); // determinism: ok — timing print in an ignored benchmark test
            let v = check_kv(&stale).expect_err("reading the first value late is stale");
            println!(
                "  with a stale read: rejected with {} evidence events in {:?}",
                v.events.len(),
                start.elapsed()
            );
        }
    }
}
