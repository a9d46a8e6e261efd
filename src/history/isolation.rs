//! Transactional isolation, judged the way Elle does: from what committed
//! transactions read and wrote, build the dependency graph and look for
//! cycles.
//!
//! Model: read/write registers whose written values are unique per key, so
//! a read names the one write it saw (`None` is the initial, never-written
//! version). Edges between transactions (Adya):
//! - `ww`: T1 installed a version of a key that T2's version directly follows;
//! - `wr`: T2 read a version T1 installed;
//! - `rw`: T1 read a version that T2's version follows (an anti-dependency);
//! - `rt`: T1 committed, as its client saw, before T2 was invoked (real time,
//!   which covers each process's own order), for strict serializability.
//!
//! The order of a key's versions comes from what the history shows — the
//! initial version precedes every write, and a transaction that read a
//! version and then wrote the key installed the next one — plus, when the
//! caller knows it, the database's own order of installed versions (a
//! simulator watches each shard apply commits). With `realtime` on, a write
//! committed before another was invoked is also an earlier version; edges
//! that rest on that inference count as real-time edges.
//!
//! Cycles are found per strongly connected component (Tarjan, `petgraph`),
//! then a shortest cycle of the most specific class is searched for:
//!
//! | anomaly | cycle |
//! |---|---|
//! | `G0` | `ww` edges only (dirty write) |
//! | `G1c` | `ww` and `wr` edges (circular information flow) |
//! | `G-single` | exactly one `rw` edge (read skew, lost update) |
//! | `G2` | two or more `rw` edges (write skew) |
//!
//! A class needing `rt` edges gets the suffix `-realtime`. Outside the graph:
//! `G1a` (a committed transaction read a write of an aborted one), `G1b`
//! (it read a version its writer later overwrote itself), `internal` (a
//! transaction did not read its own latest write), `garbage-read` (a value
//! nobody wrote).
//!
//! # Example
//!
//! Write skew: two concurrent transactions each read both keys' initial
//! versions and write one of them. Each read is overwritten by the other's
//! write — two `rw` edges in one cycle, so `G2`:
//!
//! ```
//! use std::collections::BTreeMap;
//!
//! use ringfence::history::isolation::{check, Mop, Options, Status, Txn};
//!
//! let txn = |name: &str, write: Mop, event: usize| Txn {
//!     name: name.into(),
//!     invoked_ns: 0,
//!     committed_ns: Some(100),
//!     status: Status::Committed,
//!     mops: vec![Mop::Read("x".into(), None), Mop::Read("y".into(), None), write],
//!     events: vec![event],
//! };
//! let txns = [
//!     txn("T1", Mop::Write("x".into(), 1), 0),
//!     txn("T2", Mop::Write("y".into(), 2), 1),
//! ];
//! let found = check(&txns, &BTreeMap::new(), Options::default());
//! assert_eq!(found.len(), 1);
//! assert_eq!(found[0].name, "G2");
//! assert_eq!(found[0].invariant(), "serializable");
//! assert_eq!(found[0].events, [0, 1]);
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use super::Violation;

/// A register's name; keys are independent of one another.
pub type Key = String;
/// A written value; unique among the writes of one key.
pub type Value = u64;

/// One operation inside a transaction, in the order it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mop {
    /// Read `key`; `None` is the initial, never-written version.
    Read(Key, Option<Value>),
    /// Write `value` to `key`; only a transaction's last write of a key is
    /// an installed version, earlier ones are intermediate (`G1b` if read).
    Write(Key, Value),
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Its client saw the commit: its reads are judged and its writes
    /// installed.
    Committed,
    /// Its client saw the abort: it is left out of the graph, and reading
    /// one of its writes is `G1a`.
    Aborted,
    /// Unknown (a lost reply): its writes may be visible, its reads are not
    /// judged.
    Unknown,
}

/// One transaction as the history shows it.
#[derive(Debug, Clone)]
pub struct Txn {
    /// How reports name it, e.g. `txn 0x100000003`.
    pub name: String,
    /// When its client invoked it; with [`Options::realtime`], a
    /// transaction committed before this precedes it.
    pub invoked_ns: u64,
    /// When its client learned that it committed.
    pub committed_ns: Option<u64>,
    /// How it ended, which decides whether its reads are judged and its
    /// writes count as versions.
    pub status: Status,
    /// What it read and wrote, in the order it ran.
    pub mops: Vec<Mop>,
    /// History events that show it.
    pub events: Vec<usize>,
}

/// What to judge; the default is plain serializability.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Judge strict serializability: real-time order counts.
    pub realtime: bool,
}

/// An isolation anomaly: its name (`G0`, `G1a`, `G-single-realtime`...), what
/// happened (the cycle, for graph anomalies) and the events involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    /// The anomaly class, e.g. `G-single`; stable, so tests and reports
    /// can match on it.
    pub name: String,
    /// For a cycle, its transactions and edges (`T1 -rw y-> T2 -rw x-> T1`);
    /// otherwise the offending read or write.
    pub detail: String,
    /// History events of the transactions involved.
    pub events: Vec<usize>,
}

impl Anomaly {
    /// The invariant it breaks: `strict-serializable` if the cycle needs
    /// real-time order, `serializable` otherwise.
    pub fn invariant(&self) -> &'static str {
        if self.name.ends_with("-realtime") {
            "strict-serializable"
        } else {
            "serializable"
        }
    }

    /// As a history [`Violation`] of [`Anomaly::invariant`], so that
    /// isolation reports share the other checkers' format.
    pub fn violation(&self) -> Violation {
        Violation::new(
            self.invariant(),
            format!("{}: {}", self.name, self.detail),
            self.events.clone(),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Ww,
    Wr,
    Rw,
    Rt,
}

#[derive(Debug, Clone)]
struct Dep {
    kind: Kind,
    key: Option<Key>,
    /// Rests on real-time order (an `rt` edge, or a version order inferred
    /// from it).
    realtime: bool,
}

impl Dep {
    fn label(&self) -> String {
        let kind = match self.kind {
            Kind::Ww => "ww",
            Kind::Wr => "wr",
            Kind::Rw => "rw",
            Kind::Rt => "rt",
        };
        match &self.key {
            Some(key) => format!("{kind} {key}"),
            None => kind.to_string(),
        }
    }
}

/// Checks `txns`; `versions` is the database's own order of installed
/// versions per key, where the caller knows it (oldest first). Returns
/// every kind of anomaly found, one example each, most severe first.
pub fn check(txns: &[Txn], versions: &BTreeMap<Key, Vec<Value>>, options: Options) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let writes = index_writes(txns, &mut anomalies);
    check_reads(txns, &writes, &mut anomalies);
    let graph = Graph::build(txns, &writes, versions, options);
    anomalies.extend(graph.cycles(txns, options));
    anomalies
}

/// The first anomaly per invariant, as violations.
pub fn violations(anomalies: &[Anomaly]) -> Vec<Violation> {
    let mut seen = BTreeSet::new();
    anomalies
        .iter()
        .filter(|a| seen.insert(a.invariant()))
        .map(Anomaly::violation)
        .collect()
}

/// Who wrote `(key, value)`: the transaction, and whether it was that
/// transaction's last write of the key.
type Writes = BTreeMap<(Key, Value), (usize, bool)>;

fn index_writes(txns: &[Txn], anomalies: &mut Vec<Anomaly>) -> Writes {
    let mut writes = Writes::new();
    for (t, txn) in txns.iter().enumerate() {
        let mut last: BTreeMap<&Key, Value> = BTreeMap::new();
        for mop in &txn.mops {
            if let Mop::Write(key, value) = mop {
                last.insert(key, *value);
            }
        }
        for mop in &txn.mops {
            if let Mop::Write(key, value) = mop {
                let last = last.get(key) == Some(value);
                if let Some((other, _)) = writes.insert((key.clone(), *value), (t, last)) {
                    anomalies.push(Anomaly {
                        name: "duplicate-write".into(),
                        detail: format!(
                            "{} and {} both wrote {value} to {key}: values must be unique per key",
                            txns[other].name, txn.name
                        ),
                        events: events(txns, &[other, t]),
                    });
                }
            }
        }
    }
    writes
}

/// The version `txn` read of each key before writing it itself: the reads
/// that depend on other transactions.
fn external_reads(txn: &Txn) -> BTreeMap<&Key, Option<Value>> {
    let mut reads = BTreeMap::new();
    let mut written = BTreeSet::new();
    for mop in &txn.mops {
        match mop {
            Mop::Read(key, value) if !written.contains(key) => {
                reads.entry(key).or_insert(*value);
            }
            Mop::Read(..) => {}
            Mop::Write(key, _) => {
                written.insert(key);
            }
        }
    }
    reads
}

fn check_reads(txns: &[Txn], writes: &Writes, anomalies: &mut Vec<Anomaly>) {
    let (mut g1a, mut g1b, mut garbage, mut internal) = (None, None, None, None);
    for (t, txn) in txns.iter().enumerate() {
        if txn.status != Status::Committed {
            continue;
        }
        let mut own: BTreeMap<&Key, Value> = BTreeMap::new();
        let mut seen: BTreeMap<&Key, Option<Value>> = BTreeMap::new();
        for mop in &txn.mops {
            match mop {
                Mop::Write(key, value) => {
                    own.insert(key, *value);
                }
                Mop::Read(key, value) => {
                    if let Some(&mine) = own.get(key) {
                        if *value != Some(mine) && internal.is_none() {
                            internal = Some(Anomaly {
                                name: "internal".into(),
                                detail: format!("{} wrote {mine} to {key} and then read {}", txn.name, show(*value)),
                                events: txn.events.clone(),
                            });
                        }
                        continue;
                    }
                    if let Some(&before) = seen.get(key) {
                        if before != *value && internal.is_none() {
                            internal = Some(Anomaly {
                                name: "internal".into(),
                                detail: format!(
                                    "{} read {key} twice and saw {} then {}",
                                    txn.name,
                                    show(before),
                                    show(*value)
                                ),
                                events: txn.events.clone(),
                            });
                        }
                    }
                    seen.insert(key, *value);
                    let Some(value) = value else { continue };
                    match writes.get(&(key.clone(), *value)) {
                        None if garbage.is_none() => {
                            garbage = Some(Anomaly {
                                name: "garbage-read".into(),
                                detail: format!("{} read {value} from {key}, which nobody wrote", txn.name),
                                events: txn.events.clone(),
                            })
                        }
                        Some(&(w, _)) if w != t && txns[w].status == Status::Aborted && g1a.is_none() => {
                            g1a = Some(Anomaly {
                                name: "G1a".into(),
                                detail: format!(
                                    "{} read {value} from {key}, written by {}, which aborted",
                                    txn.name, txns[w].name
                                ),
                                events: events(txns, &[w, t]),
                            })
                        }
                        Some(&(w, false)) if w != t && g1b.is_none() => {
                            g1b = Some(Anomaly {
                                name: "G1b".into(),
                                detail: format!(
                                    "{} read {value} from {key}, an intermediate write of {}, which later overwrote it",
                                    txn.name, txns[w].name
                                ),
                                events: events(txns, &[w, t]),
                            })
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    anomalies.extend([g1a, g1b, garbage, internal].into_iter().flatten());
}

fn show(value: Option<Value>) -> String {
    value.map_or_else(|| "nothing".to_string(), |v| v.to_string())
}

fn events(txns: &[Txn], which: &[usize]) -> Vec<usize> {
    let mut events: Vec<usize> = which.iter().flat_map(|&t| txns[t].events.iter().copied()).collect();
    events.sort_unstable();
    events.dedup();
    events
}

/// The dependency graph over the transactions that may have committed.
struct Graph {
    graph: DiGraph<usize, Dep>,
    nodes: BTreeMap<usize, NodeIndex>,
}

impl Graph {
    fn build(txns: &[Txn], writes: &Writes, versions: &BTreeMap<Key, Vec<Value>>, options: Options) -> Self {
        let mut graph = DiGraph::new();
        let mut nodes = BTreeMap::new();
        for (t, txn) in txns.iter().enumerate() {
            if txn.status != Status::Aborted {
                nodes.insert(t, graph.add_node(t));
            }
        }
        let mut g = Graph { graph, nodes };
        // Installed versions: the last write of each transaction that may
        // have committed, per key.
        let mut installed: BTreeMap<&Key, BTreeMap<Value, usize>> = BTreeMap::new();
        for ((key, value), &(t, last)) in writes {
            if last && txns[t].status != Status::Aborted {
                installed.entry(key).or_default().insert(*value, t);
            }
        }
        // Who read each version (committed readers only).
        let mut readers: BTreeMap<(&Key, Option<Value>), Vec<usize>> = BTreeMap::new();
        for (t, txn) in txns.iter().enumerate() {
            if txn.status == Status::Committed {
                for (key, value) in external_reads(txn) {
                    readers.entry((key, value)).or_default().push(t);
                }
            }
        }
        // wr: writer to reader.
        for (&(key, value), rs) in &readers {
            let Some(value) = value else { continue };
            if let Some(&w) = installed.get(key).and_then(|i| i.get(&value)) {
                for &r in rs {
                    g.add(w, r, Kind::Wr, Some(key), false);
                }
            }
        }
        // Version order: pairs (earlier, later) of one key, each with
        // whether it rests on real time. `None` is the initial version.
        let mut order: BTreeMap<&Key, BTreeMap<(Option<Value>, Value), bool>> = BTreeMap::new();
        for (key, by_value) in &installed {
            let pairs = order.entry(key).or_default();
            for &value in by_value.keys() {
                pairs.insert((None, value), false);
            }
        }
        for txn in txns {
            if txn.status == Status::Aborted {
                continue;
            }
            let reads = external_reads(txn);
            let mut last: BTreeMap<&Key, Value> = BTreeMap::new();
            for mop in &txn.mops {
                if let Mop::Write(key, value) = mop {
                    last.insert(key, *value);
                }
            }
            for (key, value) in last {
                if let (Some(Some(before)), Some((key, _))) = (reads.get(key), installed.get_key_value(key)) {
                    order.entry(key).or_default().insert((Some(*before), value), false);
                }
            }
        }
        for (key, chain) in versions {
            let Some((key, _)) = installed.get_key_value(key) else {
                continue;
            };
            for pair in chain.windows(2) {
                order.entry(key).or_default().insert((Some(pair[0]), pair[1]), false);
            }
        }
        if options.realtime {
            // Only where the database's own order is not known (the
            // inference is quadratic in a key's writes).
            for (key, by_value) in installed.iter().filter(|(k, _)| !versions.contains_key(**k)) {
                for (&v1, &w1) in by_value.iter() {
                    let Some(done) = txns[w1].committed_ns else { continue };
                    for (&v2, &w2) in by_value.iter() {
                        if w1 != w2 && done < txns[w2].invoked_ns {
                            order.entry(key).or_default().entry((Some(v1), v2)).or_insert(true);
                        }
                    }
                }
            }
        }
        // ww and rw from the version order.
        for (key, pairs) in &order {
            let by_value = &installed[key];
            for (&(earlier, later), &realtime) in pairs {
                let Some(&w2) = by_value.get(&later) else { continue };
                if let Some(w1) = earlier.and_then(|v| by_value.get(&v)) {
                    g.add(*w1, w2, Kind::Ww, Some(key), realtime);
                }
                for &r in readers.get(&(*key, earlier)).into_iter().flatten() {
                    g.add(r, w2, Kind::Rw, Some(key), realtime);
                }
            }
        }
        if options.realtime {
            g.add_realtime(txns);
        }
        g
    }

    fn add(&mut self, from: usize, to: usize, kind: Kind, key: Option<&Key>, realtime: bool) {
        if from == to {
            return;
        }
        let (Some(&a), Some(&b)) = (self.nodes.get(&from), self.nodes.get(&to)) else {
            return;
        };
        self.graph.add_edge(
            a,
            b,
            Dep {
                kind,
                key: key.cloned(),
                realtime,
            },
        );
    }

    /// `rt` edges, transitively reduced: each transaction gets an edge from
    /// the committed transactions on the frontier when it is invoked (those
    /// not already followed in real time by another that committed before).
    fn add_realtime(&mut self, txns: &[Txn]) {
        // (time, 0 = invoked / 1 = committed, txn): a commit at the same
        // instant as an invocation does not precede it.
        let mut moments: Vec<(u64, u8, usize)> = Vec::new();
        for (t, txn) in txns.iter().enumerate() {
            if txn.status == Status::Aborted {
                continue;
            }
            moments.push((txn.invoked_ns, 0, t));
            if let (Status::Committed, Some(done)) = (txn.status, txn.committed_ns) {
                moments.push((done, 1, t));
            }
        }
        moments.sort_unstable();
        let mut frontier: BTreeSet<usize> = BTreeSet::new();
        let mut preceded_by: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        for (_, what, t) in moments {
            if what == 0 {
                for &f in &frontier {
                    self.add(f, t, Kind::Rt, None, true);
                }
                preceded_by.insert(t, frontier.clone());
            } else {
                for f in preceded_by.remove(&t).unwrap_or_default() {
                    frontier.remove(&f);
                }
                frontier.insert(t);
            }
        }
    }

    /// One shortest cycle per anomaly class, most severe first; the
    /// real-time classes only when no cycle exists without real time.
    fn cycles(&self, txns: &[Txn], options: Options) -> Vec<Anomaly> {
        let mut found = self.classes(txns, false);
        if found.is_empty() && options.realtime {
            found = self.classes(txns, true);
            for anomaly in &mut found {
                anomaly.name.push_str("-realtime");
            }
        }
        found
    }

    fn classes(&self, txns: &[Txn], realtime: bool) -> Vec<Anomaly> {
        let allowed = |dep: &Dep| realtime || !dep.realtime;
        let mut found = Vec::new();
        let only = |kinds: &'static [Kind]| move |dep: &Dep| allowed(dep) && kinds.contains(&dep.kind);
        for (name, kinds) in [
            ("G0", &[Kind::Ww, Kind::Rt][..]),
            ("G1c", &[Kind::Ww, Kind::Wr, Kind::Rt][..]),
        ] {
            if let Some(cycle) = self.any_cycle(&only(kinds)) {
                found.push(self.anomaly(name, txns, &cycle));
            }
        }
        // A cycle with exactly one anti-dependency, then with several.
        let no_rw = only(&[Kind::Ww, Kind::Wr, Kind::Rt]);
        let all = |dep: &Dep| allowed(dep);
        let single = self.through_rw(&all, &no_rw);
        if let Some(cycle) = &single {
            found.push(self.anomaly("G-single", txns, cycle));
        }
        if single.is_none() {
            if let Some(cycle) = self.through_rw(&all, &all) {
                found.push(self.anomaly("G2", txns, &cycle));
            }
        }
        // Without real time, rt edges never count: G0 and G1c above are
        // then over ww and wr alone.
        found
    }

    /// A shortest cycle inside the first strongly connected component of
    /// the edges `keep` allows.
    fn any_cycle(&self, keep: &dyn Fn(&Dep) -> bool) -> Option<Vec<(NodeIndex, Dep)>> {
        let filtered = petgraph::visit::EdgeFiltered::from_fn(&self.graph, |e| keep(e.weight()));
        let mut best: Option<Vec<(NodeIndex, Dep)>> = None;
        for scc in tarjan_scc(&filtered) {
            if scc.len() < 2 {
                continue;
            }
            let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
            for &start in &scc {
                if let Some(path) = self.shortest_path(start, start, &members, keep) {
                    if best.as_ref().is_none_or(|b| path.len() < b.len()) {
                        best = Some(path);
                    }
                }
            }
            break;
        }
        best
    }

    /// A shortest cycle made of one `rw` edge (allowed by `first`) and a
    /// path back over edges `rest` allows, inside one strongly connected
    /// component of the edges `first` allows.
    fn through_rw(&self, first: &dyn Fn(&Dep) -> bool, rest: &dyn Fn(&Dep) -> bool) -> Option<Vec<(NodeIndex, Dep)>> {
        let filtered = petgraph::visit::EdgeFiltered::from_fn(&self.graph, |e| first(e.weight()));
        let mut best: Option<Vec<(NodeIndex, Dep)>> = None;
        for scc in tarjan_scc(&filtered) {
            if scc.len() < 2 {
                continue;
            }
            let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
            for &a in &scc {
                for edge in self.graph.edges(a) {
                    let dep = edge.weight();
                    if dep.kind != Kind::Rw || !first(dep) || !members.contains(&edge.target()) {
                        continue;
                    }
                    if let Some(mut path) = self.shortest_path(edge.target(), a, &members, rest) {
                        path.insert(0, (a, dep.clone()));
                        if best.as_ref().is_none_or(|b| path.len() < b.len()) {
                            best = Some(path);
                        }
                    }
                }
            }
        }
        best
    }

    /// Breadth-first: the edges of a shortest path from `from` to `to`
    /// (at least one edge) within `members`, as (source, edge) pairs.
    fn shortest_path(
        &self,
        from: NodeIndex,
        to: NodeIndex,
        members: &BTreeSet<NodeIndex>,
        keep: &dyn Fn(&Dep) -> bool,
    ) -> Option<Vec<(NodeIndex, Dep)>> {
        let mut came: BTreeMap<NodeIndex, (NodeIndex, petgraph::graph::EdgeIndex)> = BTreeMap::new();
        let mut queue = VecDeque::from([from]);
        while let Some(node) = queue.pop_front() {
            for edge in self.graph.edges(node) {
                let next = edge.target();
                if !keep(edge.weight()) || !members.contains(&next) || came.contains_key(&next) {
                    continue;
                }
                came.insert(next, (node, edge.id()));
                if next == to {
                    let mut path = Vec::new();
                    let mut at = to;
                    loop {
                        let (prev, e) = came[&at];
                        path.push((prev, self.graph[e].clone()));
                        at = prev;
                        if at == from {
                            break;
                        }
                    }
                    path.reverse();
                    return Some(path);
                }
                queue.push_back(next);
            }
        }
        None
    }

    /// The cycle printed from its earliest transaction, so that a report
    /// does not depend on where the search entered it.
    fn anomaly(&self, name: &str, txns: &[Txn], cycle: &[(NodeIndex, Dep)]) -> Anomaly {
        let first = (0..cycle.len()).min_by_key(|&i| self.graph[cycle[i].0]).unwrap_or(0);
        let mut cycle = cycle.to_vec();
        cycle.rotate_left(first);
        let ts: Vec<usize> = cycle.iter().map(|(n, _)| self.graph[*n]).collect();
        let mut detail = String::new();
        for (n, dep) in &cycle {
            let _ = write!(detail, "{} -{}-> ", txns[self.graph[*n]].name, dep.label());
        }
        detail.push_str(&txns[ts[0]].name);
        Anomaly {
            name: name.into(),
            detail,
            events: events(txns, &ts),
        }
    }
}

#[cfg(test)]
mod tests;
