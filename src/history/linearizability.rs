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
//! - **Memoization** of `(set of linearized operations, model state)`: two
//!   search paths that reach the same set and state have the same future, so
//!   the second is cut. The set's hash is kept incrementally (Zobrist), so a
//!   lookup costs O(1) hashing regardless of history length.
//!
//! Outcomes: an `Ok` operation happened within its interval with the recorded
//! result; a `Fail` operation certainly did not happen and is ignored; an
//! `Info` operation (or one never completed) may have taken effect at any
//! instant after its invocation, or never, with an unknown result.
//!
//! When a key is not linearizable, the checker shrinks the evidence to a small
//! set of operations whose recorded results cannot all be true, whatever the
//! remaining operations on that key did (see [`check`]).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use super::{Event, EventKind, History, Violation};

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
    fn step(
        &self,
        state: &Self::State,
        invoke: &Self::Op,
        completion: Option<&Self::Op>,
    ) -> Option<Self::State>;

    /// True when `invoke` never changes the state. Unknown-outcome read-only
    /// operations constrain nothing, so the checker drops them.
    fn is_read_only(&self, _invoke: &Self::Op) -> bool {
        false
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
    Read { key: K, value: Option<V> },
    /// Overwrites `key` with `value`.
    Write { key: K, value: V },
    /// Sets `key` to `to` if it currently holds `from` (`None`: never written);
    /// `swapped` is the result.
    Cas {
        key: K,
        from: Option<V>,
        to: V,
        swapped: bool,
    },
}

impl<K, V> KvOp<K, V> {
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

    fn step(
        &self,
        state: &Option<V>,
        invoke: &KvOp<K, V>,
        completion: Option<&KvOp<K, V>>,
    ) -> Option<Option<V>> {
        match (invoke, completion) {
            (KvOp::Read { .. }, None) => Some(state.clone()),
            (KvOp::Read { .. }, Some(KvOp::Read { value, .. })) => {
                (value == state).then(|| state.clone())
            }
            (KvOp::Write { value, .. }, None | Some(KvOp::Write { .. })) => Some(Some(value.clone())),
            (KvOp::Cas { from, to, .. }, completion) => {
                let would_swap = from == state;
                match completion {
                    None => Some(if would_swap { Some(to.clone()) } else { state.clone() }),
                    Some(KvOp::Cas { swapped, .. }) if *swapped == would_swap => {
                        Some(if would_swap { Some(to.clone()) } else { state.clone() })
                    }
                    Some(KvOp::Cas { .. }) => None,
                    Some(other) => panic!("completion {other:?} does not match invocation {invoke:?}"),
                }
            }
            (_, Some(other)) => panic!("completion {other:?} does not match invocation {invoke:?}"),
        }
    }

    fn is_read_only(&self, invoke: &KvOp<K, V>) -> bool {
        matches!(invoke, KvOp::Read { .. })
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
/// recorded results contradict each other even if every other operation on
/// the key is treated as unknown-outcome. Relaxing an operation that way can
/// only make a history easier to linearize, so the smaller set is sound
/// evidence; shrinking is bounded, and the detail says when it stopped early.
pub fn check<M: Model>(model: &M, history: &History<M::Op>) -> Result<(), Violation> {
    let mut by_key: BTreeMap<M::Key, Vec<Call<'_, M::Op>>> = BTreeMap::new();
    for (invoke, completion) in history.operations() {
        let completion = match completion.map(|e| e.kind) {
            Some(EventKind::Fail) => continue, // certainly did not happen
            Some(EventKind::Ok) => completion,
            _ => None, // Info or never completed: unknown outcome
        };
        let key = model.key(&invoke.op);
        if let Some(c) = completion {
            assert_eq!(
                model.key(&c.op),
                key,
                "completion {} names another key than its invocation {}",
                c.index,
                invoke.index
            );
        }
        by_key.entry(key).or_default().push(Call { invoke, completion });
    }
    for (key, calls) in by_key {
        let calls = drop_unknown_reads(model, calls);
        if let Outcome::Illegal = search(model, &calls, None) {
            return Err(explain(model, &key, &calls));
        }
    }
    Ok(())
}

/// One operation of a key's sub-history. `completion` is `None` when the
/// outcome is unknown.
struct Call<'a, Op> {
    invoke: &'a Event<Op>,
    completion: Option<&'a Event<Op>>,
}

impl<Op> Clone for Call<'_, Op> {
    fn clone(&self) -> Self {
        Call {
            invoke: self.invoke,
            completion: self.completion,
        }
    }
}

fn drop_unknown_reads<'a, M: Model>(model: &M, calls: Vec<Call<'a, M::Op>>) -> Vec<Call<'a, M::Op>> {
    calls
        .into_iter()
        .filter(|c| c.completion.is_some() || !model.is_read_only(&c.invoke.op))
        .collect()
}

enum Outcome {
    Linearizable,
    Illegal,
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
    is_call: Vec<bool>,
    /// For a call entry, its return entry (`NONE` for unknown outcome).
    ret: Vec<usize>,
}

impl Entries {
    /// Unknown-outcome operations get no return entry: nothing forces them to
    /// be placed, and the search succeeds once every known operation is.
    fn new<Op>(calls: &[Call<'_, Op>]) -> Self {
        // (history position, is_return, op)
        let mut order: Vec<(usize, bool, usize)> = Vec::with_capacity(2 * calls.len());
        for (i, c) in calls.iter().enumerate() {
            order.push((c.invoke.index, false, i));
            if let Some(done) = c.completion {
                order.push((done.index, true, i));
            }
        }
        order.sort_unstable();
        let n = order.len() + 1;
        let mut e = Entries {
            next: (1..=n).map(|i| if i == n { NONE } else { i }).collect(),
            prev: (0..n).map(|i| i.wrapping_sub(1)).collect(),
            op: vec![NONE; n],
            is_call: vec![false; n],
            ret: vec![NONE; n],
        };
        let mut call_entry = vec![NONE; calls.len()];
        for (slot, &(_, is_return, op)) in order.iter().enumerate() {
            let entry = slot + 1;
            e.op[entry] = op;
            e.is_call[entry] = !is_return;
            if is_return {
                e.ret[call_entry[op]] = entry;
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
        if self.ret[call] != NONE {
            self.unlink(self.ret[call]);
        }
    }

    /// Undoes `lift`; valid because lifts are undone in reverse order.
    fn unlift(&mut self, call: usize) {
        if self.ret[call] != NONE {
            self.relink(self.ret[call]);
        }
        self.relink(call);
    }
}

/// The set of linearized operations, with an incrementally kept hash.
#[derive(Clone, PartialEq, Eq)]
struct Linearized {
    words: Box<[u64]>,
    hash: u64,
}

impl Linearized {
    fn new(n: usize) -> Self {
        Linearized {
            words: vec![0; n.div_ceil(64)].into_boxed_slice(),
            hash: 0,
        }
    }

    fn toggle(&mut self, op: usize) {
        self.words[op / 64] ^= 1 << (op % 64);
        self.hash ^= zobrist(op);
    }
}

/// A well-mixed constant per operation (splitmix64 of its position).
fn zobrist(op: usize) -> u64 {
    let mut z = (op as u64).wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A memo entry. Hashing uses the Zobrist hash instead of the words.
#[derive(PartialEq, Eq)]
struct Seen<S> {
    linearized: Linearized,
    state: S,
}

impl<S: Hash> Hash for Seen<S> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.linearized.hash);
        self.state.hash(h);
    }
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

/// The WGL search over one key's operations. `budget` bounds the number of
/// search steps (`None`: unbounded; the memo guarantees termination).
fn search<M: Model>(model: &M, calls: &[Call<'_, M::Op>], budget: Option<u64>) -> Outcome {
    let mut remaining = calls.iter().filter(|c| c.completion.is_some()).count();
    if remaining == 0 {
        return Outcome::Linearizable;
    }
    let mut entries = Entries::new(calls);
    let mut linearized = Linearized::new(calls.len());
    let mut seen: HashSet<Seen<M::State>, BuildHasherDefault<MixHasher>> = HashSet::default();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut steps = 0u64;
    let mut entry = entries.next[HEAD];
    loop {
        steps += 1;
        if budget.is_some_and(|b| steps > b) {
            return Outcome::GaveUp;
        }
        // A known operation's return entry is always ahead while `remaining`
        // is positive, so the walk never falls off the list.
        debug_assert_ne!(entry, NONE);
        let op = entries.op[entry];
        if entries.is_call[entry] {
            let call = &calls[op];
            if let Some(next) = model.step(&state, &call.invoke.op, call.completion.map(|e| &e.op)) {
                linearized.toggle(op);
                let memo = Seen {
                    linearized: linearized.clone(),
                    state: next,
                };
                if !seen.contains(&memo) {
                    let next = memo.state.clone();
                    seen.insert(memo);
                    stack.push((entry, std::mem::replace(&mut state, next)));
                    entries.lift(entry);
                    if call.completion.is_some() {
                        remaining -= 1;
                        if remaining == 0 {
                            return Outcome::Linearizable;
                        }
                    }
                    entry = entries.next[HEAD];
                    continue;
                }
                linearized.toggle(op);
            }
            entry = entries.next[entry];
        } else {
            // The operation returning here was never placed: undo the last
            // placement and try the next candidate after it.
            let Some((call_entry, previous)) = stack.pop() else {
                return Outcome::Illegal;
            };
            let op = entries.op[call_entry];
            linearized.toggle(op);
            state = previous;
            entries.unlift(call_entry);
            if calls[op].completion.is_some() {
                remaining += 1;
            }
            entry = entries.next[call_entry];
        }
    }
}

/// Search steps allowed per check while shrinking; a check that runs out
/// keeps the operation in the evidence, which stays sound.
const SHRINK_STEP_BUDGET: u64 = 1_000_000;
/// Checks allowed in total while shrinking one key.
const SHRINK_CHECK_BUDGET: usize = 4_000;

/// Builds the violation for a key known not to be linearizable.
///
/// First the history is cut to its shortest non-linearizable prefix (in a
/// prefix, operations still running at the cut have unknown outcome; prefixes
/// of a linearizable history are linearizable, so this is sound and
/// monotone, hence a binary search). Then operations are relaxed to
/// unknown-outcome in shrinking chunks (delta debugging) while the rest stays
/// non-linearizable. What remains known is the evidence.
fn explain<M: Model>(model: &M, key: &M::Key, calls: &[Call<'_, M::Op>]) -> Violation {
    let mut checks = 0usize;
    let mut exhausted = false;
    let mut fails = |known: &[bool], cut: usize| -> bool {
        if checks >= SHRINK_CHECK_BUDGET {
            exhausted = true;
            return false;
        }
        checks += 1;
        let sub: Vec<Call<'_, M::Op>> = calls
            .iter()
            .zip(known)
            .filter(|(c, _)| c.invoke.index <= cut)
            .map(|(c, &k)| Call {
                invoke: c.invoke,
                completion: c.completion.filter(|done| k && done.index <= cut),
            })
            .collect();
        let sub = drop_unknown_reads(model, sub);
        match search(model, &sub, Some(SHRINK_STEP_BUDGET)) {
            Outcome::Illegal => true,
            Outcome::Linearizable => false,
            Outcome::GaveUp => {
                exhausted = true;
                false
            }
        }
    };

    let mut known: Vec<bool> = calls.iter().map(|c| c.completion.is_some()).collect();
    let mut returns: Vec<usize> = calls.iter().filter_map(|c| c.completion.map(|e| e.index)).collect();
    returns.sort_unstable();
    // The full history fails; find the first return position whose prefix does.
    let (mut lo, mut hi) = (0, returns.len() - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(&known, returns[mid]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let cut = returns[hi];
    for (k, c) in known.iter_mut().zip(calls) {
        *k = *k && c.completion.is_some_and(|e| e.index <= cut);
    }

    let mut core: Vec<usize> = (0..calls.len()).filter(|&i| known[i]).collect();
    let mut chunk = core.len().div_ceil(2).max(1);
    loop {
        let mut start = 0;
        while start < core.len() && core.len() > 1 {
            let end = (start + chunk).min(core.len());
            for &i in &core[start..end] {
                known[i] = false;
            }
            if fails(&known, cut) {
                core.drain(start..end);
            } else {
                for &i in &core[start..end] {
                    known[i] = true;
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
        let done = c.completion.expect("evidence operations have known outcomes");
        events.extend([c.invoke.index, done.index]);
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
             whatever the other operations on the key did{note}: {}",
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
        KvOp::Cas {
            key,
            from,
            to,
            swapped,
        }
    }

    /// Builds a history from `(client, kind, op)`; time is the position.
    fn history(events: &[(u32, EventKind, KvOp)]) -> History<KvOp> {
        let mut h = History::default();
        for (t, (client, kind, op)) in events.iter().enumerate() {
            h.push(*client, t as u64, *kind, op.clone());
        }
        h
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
        // Both writes and the read are needed: without w(2) reading 1 is fine,
        // and with w(1) unknown it could have landed after w(2).
        assert_eq!(v.events, vec![0, 1, 2, 3, 6, 7]);
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
        assert_eq!(v.events, vec![0, 1, 4, 5]);
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
        let early = history(&[
            (2, Invoke, r(0, None)),
            (2, Done, r(0, Some(1))),
            (1, Invoke, w(0, 1)),
        ]);
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
    fn generate(seed: u64, ops: usize, clients: u32, keys: u64) -> History<KvOp> {
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
                    let op = match rng.gen_range(0..10) {
                        0..=4 => r(key, None),
                        5..=7 => w(key, next_value),
                        _ => cas(key, store.get(&key).copied().filter(|_| rng.gen_bool(0.7)), next_value, false),
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
            let h = generate(seed, 300, 6, 3);
            assert_eq!(check_kv(&h), Ok(()), "seed {seed}");
        }
    }

    #[test]
    fn corrupted_reads_in_generated_histories_are_caught() {
        let mut caught = 0;
        for seed in 0..50 {
            let mut h = generate(seed, 200, 5, 2);
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
            assert!(v.events.contains(&pos), "seed {seed}: {v}");
            caught += 1;
        }
        assert!(caught > 40);
    }

    /// Prints how long a 5,000-operation history takes; run with
    /// `cargo test --release -p ringfence --lib five_thousand -- --nocapture`.
    /// A measurement, not an assertion on time.
    #[test]
    fn five_thousand_operation_history() {
        for (clients, keys) in [(10, 10), (10, 1), (32, 4)] {
            let h = generate(42, 5_000, clients, keys);
            let start = std::time::Instant::now();
            assert_eq!(check_kv(&h), Ok(()));
            println!(
                "5000 ops, {clients} clients, {keys} keys: linearizable in {:?}",
                start.elapsed()
            );
        }
    }
}
