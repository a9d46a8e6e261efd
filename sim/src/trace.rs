//! The run's trace: every message, fault and operation event, folded into a
//! hash that must be identical whenever the same case runs again, and kept
//! in full when a replay asks for it.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::time::Duration;

use ringfence::env::NodeId;
use serde::Serialize;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// A short digest of message contents, for the trace.
pub fn digest(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// One thing that happened, as the trace records it.
#[derive(Debug, Clone, Hash, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum TraceEvent {
    Send {
        from: NodeId,
        to: NodeId,
        id: u64,
        len: usize,
        digest: u64,
        dropped: bool,
    },
    Deliver {
        to: NodeId,
        from: NodeId,
        id: u64,
    },
    Fault {
        fault: String,
    },
    Boot {
        node: NodeId,
        incarnation: u64,
    },
    Sync {
        node: NodeId,
        bytes: usize,
    },
    Op {
        client: u32,
        index: usize,
        kind: String,
        op: String,
    },
    Note {
        text: String,
    },
}

/// A trace event with the simulated time it happened at.
#[derive(Debug, Clone, Serialize)]
pub struct Stamped {
    pub time_ns: u64,
    #[serde(flatten)]
    pub event: TraceEvent,
}

/// Hash of all events, plus the events themselves when `keep` is on.
pub struct Trace {
    hasher: Xxh3,
    events: Option<Vec<Stamped>>,
    count: u64,
}

impl Trace {
    pub fn new(keep_events: bool) -> Self {
        Trace {
            hasher: Xxh3::new(),
            events: keep_events.then(Vec::new),
            count: 0,
        }
    }

    pub fn record(&mut self, time: Duration, event: TraceEvent) {
        let time_ns = time.as_nanos() as u64;
        self.count += 1;
        time_ns.hash(&mut self.hasher);
        event.hash(&mut self.hasher);
        if let Some(events) = &mut self.events {
            events.push(Stamped { time_ns, event });
        }
    }

    pub fn hash(&self) -> u64 {
        self.hasher.finish()
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn take_events(&mut self) -> Vec<Stamped> {
        self.events.take().unwrap_or_default()
    }
}

/// Writes events as JSON lines.
pub fn write_jsonl(events: &[Stamped], out: &mut impl Write) -> std::io::Result<()> {
    for e in events {
        serde_json::to_writer(&mut *out, e)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
