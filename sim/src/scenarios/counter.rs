//! Tutorial scenario: a durable counter service.
//!
//! This is the smallest complete example of testing your own protocol with
//! ringfence-sim; copy its shape. It has four parts:
//!
//! 1. **The protocol**, as a sans-IO core ([`ringfence::effects::Core`]):
//!    one server keeps the set of increment ids it has applied in its record
//!    log. Its handler returns [`Effects`] — the record to append, whether
//!    to sync it, the acknowledgement to send — and the shared shell
//!    ([`ringfence::effects::serve`], the one every 2PC role runs on)
//!    persists before it sends. An increment is acknowledged only after its
//!    record is synced, and a retried increment (same id) is applied once.
//! 2. **The client workload**: each client increments with fresh ids,
//!    retries on timeout, and sometimes reads; every operation is recorded as
//!    invoke → ok / fail / info in the history.
//! 3. **The probe**: after the faults heal, one read must succeed within
//!    [`Spec::liveness_bound`](crate::scenario::Spec::liveness_bound).
//! 4. **The checker**: every increment acknowledged before a read began must
//!    appear in that read (no acknowledged write lost, across crashes), no
//!    read shows an id nobody sent, and reads are monotonic: what a read
//!    returned is in every read that began after it ended, acknowledged or
//!    not (a read of state that was never durable shows up here).
//!
//! Planted bug `ack-before-sync` sends the acknowledgement before syncing:
//! a crash that loses the unsynced tail then loses an acknowledged increment,
//! which the default sweep must catch.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ringfence::effects::{self, Core, Effects};
use ringfence::env::codec::{self, CodecError};
use ringfence::env::retry::Retry;
use ringfence::env::{Env, NodeId};
use ringfence::history::{counter, History, Violation};
use ringfence::observe::Ignore;
use serde::{Deserialize, Serialize};

use crate::env::SimEnv;
use crate::scenario::{Bug, Client, Params, Planted, Scenario, Spec, Workload};

/// Wire messages of the counter protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Msg {
    Increment { id: u64 },
    Read { request: u64 },
    Acked { id: u64 },
    Value { request: u64, ids: Vec<u64> },
}

pub use ringfence::history::counter::CounterOp;

pub const ACK_BEFORE_SYNC: Bug = Bug {
    name: "ack-before-sync",
    about: "the server acknowledges increments as soon as they are appended and syncs every 100 ms",
    caught_by: &["acked-increment-lost"],
    planted: Planted::Scenario,
};

/// The counter scenario; `ack_before_sync` is the planted bug switch.
pub struct Counter {
    ack_before_sync: bool,
}

/// The server's protocol: no I/O, no clock; each handler says what to
/// persist and send.
struct CounterServer {
    /// Every increment applied, as its log rebuilds it.
    applied: BTreeSet<u64>,
    /// The planted bug: acknowledge before the record is synced.
    ack_before_sync: bool,
}

impl CounterServer {
    /// Rebuilds the server from the records its log holds.
    fn recover(records: &[Vec<u8>], ack_before_sync: bool) -> Result<Self, CodecError> {
        let applied = records
            .iter()
            .map(|r| codec::decode::<u64>(r))
            .collect::<Result<_, _>>()?;
        Ok(CounterServer {
            applied,
            ack_before_sync,
        })
    }
}

impl Core for CounterServer {
    type In = Msg;
    type Out = Msg;
    type Event = ();

    fn on_message(&mut self, _: Duration, from: NodeId, msg: Msg) -> Effects<Msg, ()> {
        let mut out = Effects::default();
        match msg {
            Msg::Increment { id } => {
                if self.applied.insert(id) {
                    out.record(&id);
                    if !self.ack_before_sync {
                        out.sync();
                    }
                }
                out.send(from, Msg::Acked { id });
            }
            Msg::Read { request } => out.send(
                from,
                Msg::Value {
                    request,
                    ids: self.applied.iter().copied().collect(),
                },
            ),
            Msg::Acked { .. } | Msg::Value { .. } => {}
        }
        out
    }

    fn on_tick(&mut self, _: Duration) -> Effects<Msg, ()> {
        Effects::default()
    }

    fn next_deadline(&self) -> Duration {
        Duration::MAX
    }
}

/// The server: recover from the log, then serve on the shared shell until
/// storage fails.
async fn serve<E: Env>(env: E, ack_before_sync: bool) {
    if ack_before_sync {
        // The bug as it usually ships: an "fsync interval" instead of a sync
        // per acknowledged write.
        let syncer = env.clone();
        env.spawn(async move {
            loop {
                syncer.sleep(Duration::from_millis(100)).await;
                if syncer.sync().await.is_err() {
                    return;
                }
            }
        });
    }
    let records = env.load().expect("the counter log is readable");
    let server = CounterServer::recover(&records, ack_before_sync).expect("counter records are ids");
    if let Err(error) = effects::serve(env, server, &Ignore).await {
        // Stopped to protect what it acknowledged; down until restarted.
        tracing::warn!(%error, "the counter server stopped");
    }
    std::future::pending::<()>().await
}

/// How often a client sends an operation, and how long it waits for each
/// reply, before the operation's outcome is recorded as unknown.
const RETRY: Retry = Retry {
    attempts: 5,
    wait: Duration::from_millis(200),
};

/// Sends `request` until a reply matching `accept` arrives, or gives up.
async fn call<E: Env, T>(env: &E, server: u32, request: &Msg, accept: impl Fn(Msg) -> Option<T>) -> Option<T> {
    let bytes = codec::encode(request).expect("requests encode");
    RETRY
        .call(env, server, &bytes, |_, frame| {
            codec::decode::<Msg>(frame).ok().and_then(&accept)
        })
        .await
}

async fn read<E: Env>(env: &E, client: &Client<CounterOp>, request: u64) -> Option<Vec<u64>> {
    client.invoke(CounterOp::Read { ids: None });
    let server = client.servers[0];
    let got = call(env, server, &Msg::Read { request }, |m| match m {
        Msg::Value { request: r, ids } if r == request => Some(ids),
        _ => None,
    })
    .await;
    match &got {
        Some(ids) => client.ok(CounterOp::Read { ids: Some(ids.clone()) }),
        // A read changes nothing, so a read without an answer simply failed.
        None => client.fail(CounterOp::Read { ids: None }),
    };
    got
}

impl Scenario for Counter {
    type Op = CounterOp;

    const SPEC: Spec = Spec {
        name: "counter",
        about: "tutorial: a durable counter; acknowledged increments must survive crashes",
        bugs: &[ACK_BEFORE_SYNC],
        servers: 1,
        min_servers: 1,
        workload: Workload { clients: 3, ops: 40 },
        fault_window: Duration::from_secs(5),
        liveness_bound: Duration::from_secs(5),
        default_seeds: 200,
        aiming: None,
        situations: &[],
    };

    fn new(params: &Params) -> Self {
        Counter {
            ack_before_sync: params.planted() == Some(Planted::Scenario),
        }
    }

    async fn server(self: Arc<Self>, env: SimEnv) {
        serve(env, self.ack_before_sync).await
    }

    async fn client(self: Arc<Self>, env: SimEnv, mut client: Client<CounterOp>) {
        while client.next_op() {
            // Ids are unique across clients (the client index in the high
            // bits) and across a client's restarts (its claimed operations).
            let seq = u64::from(client.claimed());
            let id = (u64::from(client.id) << 32) | seq;
            if seq % 5 == 0 {
                read(&env, &client, id).await;
                continue;
            }
            client.invoke(CounterOp::Increment { id });
            let acked = call(&env, client.servers[0], &Msg::Increment { id }, |m| match m {
                Msg::Acked { id: got } if got == id => Some(()),
                _ => None,
            })
            .await;
            match acked {
                Some(()) => client.ok(CounterOp::Increment { id }),
                None => client.info(CounterOp::Increment { id }),
            };
        }
    }

    async fn probe(self: Arc<Self>, env: SimEnv, client: Client<CounterOp>) {
        // Keep trying: the liveness bound, not the attempt count, decides.
        while read(&env, &client, u64::MAX).await.is_none() {}
    }

    fn check(&self, history: &History<CounterOp>) -> Vec<Violation> {
        counter::check(history)
    }
}
