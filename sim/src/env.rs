//! [`SimEnv`]: the runtime boundary on madsim, with our fault layer.
//!
//! This layer decides each message's fate from the world's current network
//! faults: refused on a link a partition cuts, lost, duplicated, delayed.
//! Copies that go at once travel through `madsim::net` (which adds latency
//! on a timer of its own, so they survive their sender). Delayed copies are
//! owned by the network, not the sender: they wait as tasks on the network's
//! own node and are delivered to whichever incarnation of the receiver runs
//! then, so a stale message from a dead incarnation can arrive late and a
//! paused sender's copies keep moving (see [`crate::world`]). Every send and
//! delivery feeds the trace. Clocks are per node and drift or jump as the
//! world says. Storage lives in the world, so it outlives the process.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use madsim::net::Endpoint;
use rand_chacha::ChaCha8Rng;
use ringfence::env::record::RecordBug;
use ringfence::env::{Env, EnvError, NodeId, MAX_MESSAGE_BYTES};
use ringfence::history::Violation;
use tokio::sync::{mpsc, Mutex};

use crate::plan::FaultKind;
use crate::scenario::abort_run;
use crate::trace::TraceEvent;
use crate::world::{addr_of, elapsed, node_of, DiskError, InFlight, World, INJECTED_FAILURE};

/// The tag our messages use on madsim endpoints.
const TAG: u64 = 0x7269_6e67;

/// Simulated fsync latency: syncs cost time, so batching them matters here
/// as it does on a real disk.
const SYNC_LATENCY: Duration = Duration::from_micros(200);

/// What travels through madsim: the message id and copy (for the trace and
/// the fault counts) and the bytes.
struct Envelope {
    id: u64,
    copy: u8,
    bytes: Vec<u8>,
}

/// One node incarnation's view of the simulated world.
#[derive(Clone)]
pub struct SimEnv {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    world: World,
    endpoint: Endpoint,
    inbox: Mutex<mpsc::UnboundedReceiver<(NodeId, Vec<u8>)>>,
}

impl SimEnv {
    /// Starts an incarnation of node `id`: binds its address and starts
    /// delivering its messages; its disk is recovered when the node first
    /// reads it ([`Env::load`]). Must run inside the node's madsim task.
    pub async fn boot(world: World, id: NodeId) -> SimEnv {
        let endpoint = Endpoint::bind(addr_of(id))
            .await
            .expect("node address is free after a restart");
        let incarnation = {
            let mut w = world.lock();
            let node = w.node(id);
            node.incarnation += 1;
            let incarnation = node.incarnation;
            // A crash's effect: the node is running again as a new incarnation.
            if let Some(kind) = node.killed_by.take() {
                w.count(kind);
            }
            w.event(TraceEvent::Boot { node: id, incarnation });
            incarnation
        };
        tracing::debug!(incarnation, "boot");
        let (tx, rx) = mpsc::unbounded_channel();
        world.lock().inboxes.insert(id, tx.clone());
        let env = SimEnv {
            inner: Arc::new(Inner {
                id,
                world,
                endpoint,
                inbox: Mutex::new(rx),
            }),
        };
        let receiver = env.clone();
        madsim::task::spawn(async move { receiver.deliver_forever(tx).await });
        env
    }

    /// Moves messages from madsim's socket into the inbox, so that `recv`
    /// is cancel-safe.
    async fn deliver_forever(self, tx: mpsc::UnboundedSender<(NodeId, Vec<u8>)>) {
        loop {
            let Ok((payload, from)) = self.inner.endpoint.recv_from_raw(TAG).await else {
                return;
            };
            let Ok(envelope) = payload.downcast::<Envelope>() else {
                continue;
            };
            let Some(from) = node_of(from) else { continue };
            let now = elapsed();
            self.inner.world.lock().delivered_copy(
                self.inner.id,
                from,
                envelope.id,
                envelope.copy,
                now,
                Duration::ZERO,
            );
            if tx.send((from, envelope.bytes)).is_err() {
                return;
            }
        }
    }

    pub fn world(&self) -> &World {
        &self.inner.world
    }

    /// Switches on a planted recovery bug for this node's disk; call it
    /// before the node first reads its disk.
    pub fn set_record_bug(&self, bug: Option<RecordBug>) {
        self.inner.world.lock().node(self.inner.id).disk.bug = bug;
    }

    /// Whether this node runs on its first disk and nothing on it was ever
    /// made durable ([`crate::world::Disk::original_and_unused`]): a
    /// founding member whose initialization never completed may run it
    /// again; one whose disk was lost may not.
    pub fn original_disk_unused(&self) -> bool {
        self.inner.world.lock().node(self.inner.id).disk.original_and_unused()
    }

    /// Reports that this node reached a protocol moment, named by the
    /// scenario, for the faults that aim at moments
    /// ([`crate::plan::Fault::MomentCrash`], [`crate::plan::Fault::Isolate`]).
    /// Call it before sending the messages the moment leads to.
    pub fn moment(&self, moment: &str) {
        self.inner.world.lock().moment(self.inner.id, moment);
    }

    async fn transmit(&self, to: NodeId, id: u64, copy: u8, bytes: Vec<u8>) {
        // madsim only fails a send when the local socket is gone, which
        // happens when this node is being killed; the message is lost then.
        let _ = self
            .inner
            .endpoint
            .send_to_raw(addr_of(to), TAG, Box::new(Envelope { id, copy, bytes }))
            .await;
    }
}

impl Env for SimEnv {
    fn id(&self) -> NodeId {
        self.inner.id
    }

    fn now(&self) -> Duration {
        let real = elapsed();
        self.inner.world.lock().node(self.inner.id).clock.now(real)
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        let real = self.inner.world.lock().node(self.inner.id).clock.real_for(duration);
        madsim::time::sleep(real)
    }

    async fn send(&self, to: NodeId, msg: Vec<u8>) -> Result<(), EnvError> {
        if msg.len() > MAX_MESSAGE_BYTES {
            return Err(EnvError::MessageTooLarge {
                size: msg.len(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        let delivery = {
            let mut w = self.inner.world.lock();
            if !w.nodes.contains_key(&to) {
                return Err(EnvError::UnknownPeer(to));
            }
            if !w.may_send(self.inner.id, to) {
                return Ok(());
            }
            w.route(self.inner.id, to, &msg)
        };
        if delivery.drop {
            self.inner.world.lock().sent(self.inner.id, to);
            return Ok(());
        }
        let from = self.inner.id;
        let [first, second] = delivery.delays;
        let mut copies = vec![(0, first.expect("first copy always exists"))];
        if let Some(second) = second {
            if !self.inner.world.lock().effect_off(FaultKind::MessageDuplicate) {
                copies.push((1, second));
            }
        }
        let mut bytes = Some(msg);
        for (i, &(copy, late)) in copies.iter().enumerate() {
            let bytes = if i + 1 == copies.len() {
                bytes.take().expect("taken once, by the last copy")
            } else {
                bytes.clone().expect("not yet taken")
            };
            if late.is_zero() {
                self.transmit(to, delivery.id, copy, bytes).await;
                self.inner.world.lock().after_send(from);
            } else {
                let world = self.inner.world.clone();
                let in_flight = InFlight {
                    from,
                    to,
                    id: delivery.id,
                    copy,
                    sent_at: elapsed(),
                    late,
                    bytes,
                };
                world.lock().send_late(world.clone(), in_flight);
            }
        }
        self.inner.world.lock().sent(from, to);
        Ok(())
    }

    async fn recv(&self) -> (NodeId, Vec<u8>) {
        let mut inbox = self.inner.inbox.lock().await;
        match inbox.recv().await {
            Some(msg) => msg,
            // The delivery task only ends when the node dies; so does this.
            None => std::future::pending().await,
        }
    }

    fn rng(&self) -> ChaCha8Rng {
        self.inner.world.lock().node_rng(self.inner.id)
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        madsim::task::spawn(task);
    }

    /// Recovers the disk first if the node has not read it since it
    /// crashed: corruption is an error (the node must refuse to start), and
    /// a recovery that loses synced records stops the run as the
    /// `synced-record-lost` violation.
    fn load(&self) -> Result<Vec<Vec<u8>>, EnvError> {
        let id = self.inner.id;
        let mut w = self.inner.world.lock();
        let disk = &mut w.node(id).disk;
        match disk.open() {
            Ok(()) => disk.load().map_err(|e| EnvError::Storage(e.to_string())),
            Err(DiskError::Corrupt(e)) => {
                tracing::warn!(%e, "corrupt disk: the node refuses to start");
                Err(EnvError::Storage(e.to_string()))
            }
            Err(lost @ DiskError::SyncedRecordLost { .. }) => {
                drop(w);
                abort_run(Violation::new(
                    "synced-record-lost",
                    format!("node {id}: {lost}"),
                    vec![],
                ))
            }
        }
    }

    fn append(&self, record: &[u8]) -> Result<(), EnvError> {
        let mut w = self.inner.world.lock();
        let disk = &mut w.node(self.inner.id).disk;
        if disk.failed() {
            return Err(EnvError::Storage(INJECTED_FAILURE.to_string()));
        }
        disk.append(record).map_err(|e| EnvError::Storage(e.to_string()))?;
        w.after_append(self.inner.id);
        Ok(())
    }

    async fn sync(&self) -> Result<(), EnvError> {
        let point = {
            let mut w = self.inner.world.lock();
            if w.sync_fails(self.inner.id) {
                return Err(EnvError::Storage(INJECTED_FAILURE.to_string()));
            }
            w.node(self.inner.id).disk.start_sync()
        };
        madsim::time::sleep(SYNC_LATENCY).await;
        // If the node crashed meanwhile, this task is gone and nothing below
        // runs: the crash already decided what survived.
        let mut w = self.inner.world.lock();
        w.node(self.inner.id).disk.finish_sync(point);
        w.event(TraceEvent::Sync {
            node: self.inner.id,
            bytes: point.end(),
        });
        Ok(())
    }

    async fn rewrite(&self, records: &[Vec<u8>]) -> Result<(), EnvError> {
        if self.inner.world.lock().node(self.inner.id).disk.failed() {
            return Err(EnvError::Storage(INJECTED_FAILURE.to_string()));
        }
        madsim::time::sleep(SYNC_LATENCY).await;
        let mut w = self.inner.world.lock();
        w.node(self.inner.id)
            .disk
            .rewrite(records)
            .map_err(|e| EnvError::Storage(e.to_string()))
    }
}
