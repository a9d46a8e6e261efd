//! The HTML timeline of a run: one self-contained file (no network needed to
//! view it) with a space-time diagram — a lane per node and client, message
//! arrows from send to delivery (dropped and duplicated ones marked),
//! partitions, crashes and pauses as shaded spans, clock faults as marks,
//! client operations as bars, and the events named by the violation
//! highlighted. Mouse wheel zooms, dragging scrolls.

use std::collections::BTreeMap;

use ringfence::env::NodeId;
use serde::Serialize;

use crate::runner::RunReport;
use crate::scenario::PROBE_ID;
use crate::trace::{Phase, TraceEvent};

#[derive(Serialize)]
struct Lane {
    id: NodeId,
    name: String,
}

#[derive(Serialize)]
struct Message {
    from: NodeId,
    to: NodeId,
    sent: u64,
    delivered: Vec<u64>,
    dropped: bool,
    len: usize,
}

#[derive(Serialize)]
struct Span {
    /// `None` for faults on the whole network.
    lane: Option<NodeId>,
    kind: &'static str,
    start: u64,
    end: u64,
    label: String,
}

#[derive(Serialize)]
struct Mark {
    lane: NodeId,
    t: u64,
    label: String,
}

#[derive(Serialize)]
struct Op {
    lane: NodeId,
    start: u64,
    end: Option<u64>,
    result: String,
    label: String,
    /// History indices of its invoke and completion.
    events: Vec<usize>,
    highlight: bool,
}

#[derive(Serialize)]
struct Data {
    title: String,
    verdict: String,
    end: u64,
    lanes: Vec<Lane>,
    messages: Vec<Message>,
    spans: Vec<Span>,
    marks: Vec<Mark>,
    ops: Vec<Op>,
}

fn lane_name(id: NodeId) -> String {
    match id {
        PROBE_ID => "probe".into(),
        id if ringfence::log::membership::is_operator(id) => "operator".into(),
        id if id > PROBE_ID => format!("client {}", id - PROBE_ID - 1),
        id => format!("server {id}"),
    }
}

fn span_kind(kind: crate::plan::FaultKind) -> &'static str {
    use crate::plan::FaultKind::*;
    match kind {
        Partition => "partition",
        Crash | DiskTail | BitFlip | DiskError | LostWrite | DiskLost | ClientCrash => "crash",
        Isolate => "partition",
        UnsyncedCrash | MomentCrash => "network",
        Pause => "pause",
        MessageLoss | MessageDuplicate | MessageDelay | Rogue => "network",
        ClockDrift | ClockJump => "clock",
    }
}

/// Identifies an open fault span: kind, plan index (if it ends by index),
/// nodes.
type SpanKey = (&'static str, Option<usize>, Vec<NodeId>);

fn collect(outcome: &RunReport) -> Data {
    let clients = outcome.case.workload.clients;
    let client_lane = |client: u32| {
        if client == clients {
            PROBE_ID
        } else {
            PROBE_ID + 1 + client
        }
    };
    let highlighted: Vec<usize> = outcome
        .violations
        .iter()
        .flat_map(|v| v.events.iter().copied())
        .collect();
    let end = outcome.events.last().map_or(0, |e| e.time_ns);

    let mut lanes: BTreeMap<NodeId, ()> = BTreeMap::new();
    let mut messages: BTreeMap<u64, Message> = BTreeMap::new();
    let mut spans = Vec::new();
    let mut open: BTreeMap<SpanKey, (u64, String)> = BTreeMap::new();
    let mut marks = Vec::new();
    let mut ops: Vec<Op> = Vec::new();
    let mut open_ops: BTreeMap<u32, usize> = BTreeMap::new();

    let close = |key: (&'static str, Option<usize>, Vec<NodeId>),
                 (start, label): (u64, String),
                 t: u64,
                 spans: &mut Vec<Span>| {
        let (kind, _, nodes) = key;
        if nodes.is_empty() {
            spans.push(Span {
                lane: None,
                kind,
                start,
                end: t,
                label: label.clone(),
            });
        }
        for lane in nodes {
            spans.push(Span {
                lane: Some(lane),
                kind,
                start,
                end: t,
                label: label.clone(),
            });
        }
    };

    for e in &outcome.events {
        let t = e.time_ns;
        match &e.event {
            TraceEvent::Boot { node, .. } => {
                lanes.insert(*node, ());
            }
            TraceEvent::Send {
                from,
                to,
                id,
                len,
                dropped,
                ..
            } => {
                messages.insert(
                    *id,
                    Message {
                        from: *from,
                        to: *to,
                        sent: t,
                        delivered: vec![],
                        dropped: *dropped,
                        len: *len,
                    },
                );
            }
            TraceEvent::Deliver { id, .. } => {
                if let Some(m) = messages.get_mut(id) {
                    m.delivered.push(t);
                }
            }
            TraceEvent::Fault {
                phase,
                kind,
                index,
                nodes,
                text,
            } => {
                let kind = span_kind(*kind);
                // Crashes and pauses end by node (restart, resume); the rest by
                // their place in the plan.
                let key_index = if matches!(kind, "crash" | "pause") {
                    None
                } else {
                    *index
                };
                let key = (kind, key_index, nodes.clone());
                match phase {
                    Phase::Start => {
                        open.insert(key, (t, text.clone()));
                    }
                    Phase::End => {
                        if let Some(started) = open.remove(&key) {
                            close(key, started, t, &mut spans);
                        }
                    }
                    Phase::Instant => marks.extend(nodes.iter().map(|&lane| Mark {
                        lane,
                        t,
                        label: text.clone(),
                    })),
                }
            }
            TraceEvent::Heal => {
                for (key, started) in std::mem::take(&mut open) {
                    close(key, started, t, &mut spans);
                }
            }
            TraceEvent::Op {
                client,
                index,
                kind,
                op,
            } => {
                if kind == "invoke" {
                    open_ops.insert(*client, ops.len());
                    ops.push(Op {
                        lane: client_lane(*client),
                        start: t,
                        end: None,
                        result: "pending".into(),
                        label: op.clone(),
                        events: vec![*index],
                        highlight: highlighted.contains(index),
                    });
                } else if let Some(slot) = open_ops.remove(client) {
                    let o = &mut ops[slot];
                    o.end = Some(t);
                    o.result = kind.clone();
                    o.label = format!("{} → {kind}: {op}", o.label);
                    o.events.push(*index);
                    o.highlight |= highlighted.contains(index);
                }
            }
            TraceEvent::Sync { .. } | TraceEvent::Violation { .. } => {}
        }
    }
    for (key, started) in open {
        close(key, started, end, &mut spans);
    }
    for m in messages.values() {
        lanes.insert(m.from, ());
        lanes.insert(m.to, ());
    }
    let verdict = if outcome.violations.is_empty() {
        "pass".to_string()
    } else {
        outcome
            .violations
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let case = &outcome.case;
    Data {
        title: format!(
            "{} seed {}{} — trace hash {:016x}",
            case.scenario,
            case.seed,
            case.bug.as_deref().map(|b| format!(" bug {b}")).unwrap_or_default(),
            outcome.trace_hash
        ),
        verdict,
        end,
        lanes: lanes
            .into_keys()
            .map(|id| Lane {
                id,
                name: lane_name(id),
            })
            .collect(),
        messages: messages.into_values().collect(),
        spans,
        marks,
        ops,
    }
}

/// The timeline of `outcome` (which must have been run with `keep_trace`).
pub fn html(outcome: &RunReport) -> String {
    let data = serde_json::to_string(&collect(outcome)).expect("timeline data serializes");
    // `</` must not appear inside the inline script.
    let data = data.replace("</", "<\\/");
    TEMPLATE.replace("/*DATA*/null", &data)
}

const TEMPLATE: &str = include_str!("timeline.html");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::RunOptions;
    use crate::scenarios;
    use crate::sweep::run_isolated;

    #[test]
    fn the_timeline_names_the_violation_and_highlights_its_events() {
        let scenario = scenarios::find("counter").unwrap();
        let case = scenarios::default_case(scenario, 3, Some("ack-before-sync"));
        let outcome = run_isolated(scenario, &case, RunOptions { keep_trace: true });
        assert!(outcome.failed());
        let data = collect(&outcome);
        assert!(data.verdict.contains("acked-increment-lost"));
        assert!(data.ops.iter().any(|o| o.highlight));
        assert!(data.spans.iter().any(|s| s.kind == "crash"));
        assert!(data.messages.iter().any(|m| !m.delivered.is_empty()));
        let page = html(&outcome);
        assert!(
            page.contains("acked-increment-lost")
                && page.contains("createElementNS(NS, \"svg\")")
                && !page.contains("/*DATA*/")
        );
        assert!(
            !page.contains("src=\"http") && !page.contains("href=\"http"),
            "the page loads nothing from the network"
        );
    }
}
