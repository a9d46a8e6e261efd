//! Message transport over TCP between the node ids of a static peer map.
//!
//! Each node listens on its own address and keeps one outgoing connection
//! per peer, used only to send; replies travel on the peer's own connection
//! back. That keeps every connection one-way and simple: a connection is
//! owned by the sender, who alone reconnects it.
//!
//! Wire format: length-delimited frames (4-byte big-endian length, at most
//! [`MAX_MESSAGE_BYTES`]). The first frame of a connection is a handshake,
//! [`HANDSHAKE_MAGIC`] followed by the sender's node id (u32 little-endian);
//! every later frame is one message.
//!
//! Delivery is unreliable, as the [`Env`](crate::env::Env) contract says:
//! each peer has a bounded queue, a full queue drops the message (the
//! protocol never waits for a slow peer), and messages in flight when a
//! connection breaks are lost. A peer that sends a bad handshake, an unknown
//! id, or an oversized frame is disconnected and logged; the node keeps
//! serving everyone else.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use crate::env::{EnvError, NodeId, MAX_MESSAGE_BYTES};

/// First bytes of every connection: protocol name and wire version.
pub const HANDSHAKE_MAGIC: [u8; 4] = *b"RFN1";

/// Messages queued per peer before new ones are dropped.
pub const PEER_QUEUE_CAPACITY: usize = 1024;

/// Received messages buffered for [`Transport::recv`]; when full, readers
/// stop reading and TCP flow control pushes back on the senders, whose own
/// queues then drop.
pub const INBOX_CAPACITY: usize = 4096;

/// Incoming connections served at once; more wait in the accept backlog.
pub const MAX_INBOUND_CONNECTIONS: usize = 256;

/// A peer has this long to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Reconnect delays: doubling from the first to the last, with jitter so
/// that restarted nodes do not reconnect in lockstep.
pub const BACKOFF_MIN: Duration = Duration::from_millis(20);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The frame codec both ends use.
pub fn frame_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .max_frame_length(MAX_MESSAGE_BYTES)
        .new_codec()
}

/// The handshake frame announcing `id`.
pub fn handshake(id: NodeId) -> Bytes {
    let mut frame = BytesMut::with_capacity(8);
    frame.put_slice(&HANDSHAKE_MAGIC);
    frame.put_u32_le(id);
    frame.freeze()
}

/// Parses a handshake frame into the sender's id.
pub fn parse_handshake(frame: &[u8]) -> Result<NodeId, &'static str> {
    match frame {
        [m0, m1, m2, m3, id @ ..] if [*m0, *m1, *m2, *m3] == HANDSHAKE_MAGIC => {
            let id: [u8; 4] = id.try_into().map_err(|_| "handshake of the wrong length")?;
            Ok(NodeId::from_le_bytes(id))
        }
        _ => Err("not a ringfence handshake"),
    }
}

/// The transport of one node.
pub struct Transport {
    id: NodeId,
    /// Outgoing queue per peer (every peer but this node).
    queues: BTreeMap<NodeId, mpsc::Sender<Bytes>>,
    /// Messages to self skip the network.
    inbox_tx: mpsc::Sender<(NodeId, Vec<u8>)>,
    inbox_rx: tokio::sync::Mutex<mpsc::Receiver<(NodeId, Vec<u8>)>>,
}

impl Transport {
    /// Starts accepting on `listener` and connecting to every other peer in
    /// `peers`. Every task stops when `shutdown` is cancelled.
    pub fn start(
        id: NodeId,
        peers: &BTreeMap<NodeId, SocketAddr>,
        listener: TcpListener,
        shutdown: &CancellationToken,
    ) -> Arc<Transport> {
        let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_CAPACITY);
        let mut queues = BTreeMap::new();
        for (&peer, &addr) in peers {
            if peer == id {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE_CAPACITY);
            queues.insert(peer, tx);
            spawn_until(shutdown, connect_loop(id, peer, addr, rx));
        }
        let known: Arc<Vec<NodeId>> = Arc::new(peers.keys().copied().filter(|&p| p != id).collect());
        spawn_until(
            shutdown,
            accept_loop(id, listener, known, inbox_tx.clone(), shutdown.clone()),
        );
        Arc::new(Transport {
            id,
            queues,
            inbox_tx,
            inbox_rx: tokio::sync::Mutex::new(inbox_rx),
        })
    }

    /// Queues `msg` for `to`; see the module docs for what may happen to it.
    pub fn send(&self, to: NodeId, msg: Vec<u8>) -> Result<(), EnvError> {
        if msg.len() > MAX_MESSAGE_BYTES {
            return Err(EnvError::MessageTooLarge {
                size: msg.len(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        if to == self.id {
            if self.inbox_tx.try_send((self.id, msg)).is_err() {
                tracing::debug!(node = self.id, "inbox full: dropped a message to self");
            }
            return Ok(());
        }
        let queue = self.queues.get(&to).ok_or(EnvError::UnknownPeer(to))?;
        if queue.try_send(Bytes::from(msg)).is_err() {
            tracing::debug!(node = self.id, peer = to, "queue full: dropped a message");
        }
        Ok(())
    }

    /// The next message for this node. Cancel-safe: both the lock and the
    /// channel receive lose nothing when dropped.
    pub async fn recv(&self) -> (NodeId, Vec<u8>) {
        let mut inbox = self.inbox_rx.lock().await;
        match inbox.recv().await {
            Some(message) => message,
            // This struct holds a sender, so the channel never closes.
            None => unreachable!("inbox closed while the transport lives"),
        }
    }
}

/// Runs `task` until it ends or `shutdown` is cancelled.
pub(crate) fn spawn_until(shutdown: &CancellationToken, task: impl std::future::Future<Output = ()> + Send + 'static) {
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = task => {}
        }
    });
}

/// Keeps one connection to `peer` up and feeds it from the queue.
async fn connect_loop(id: NodeId, peer: NodeId, addr: SocketAddr, mut queue: mpsc::Receiver<Bytes>) {
    let mut rng = ChaCha8Rng::from_entropy();
    let mut backoff = BACKOFF_MIN;
    loop {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                tracing::debug!(node = id, peer, %addr, "connected");
                backoff = BACKOFF_MIN;
                match feed(id, stream, &mut queue).await {
                    Ok(()) => return, // the transport is gone
                    Err(reason) => tracing::debug!(node = id, peer, %reason, "connection lost"),
                }
            }
            Err(e) => tracing::trace!(node = id, peer, %addr, error = %e, "connect failed"),
        }
        let jitter = rng.gen_range(0.5..1.5);
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Sends the handshake, then queued messages, until the connection breaks
/// (`Err`) or the queue closes (`Ok`). The peer never writes on this
/// connection, so any read result means it closed or misbehaved: that is how
/// a restarted peer is noticed before the next send is lost to it.
async fn feed(id: NodeId, stream: TcpStream, queue: &mut mpsc::Receiver<Bytes>) -> Result<(), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut read_half, write_half) = stream.into_split();
    let mut frames = FramedWrite::new(write_half, frame_codec());
    frames.send(handshake(id)).await.map_err(|e| e.to_string())?;
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            message = queue.recv() => {
                let Some(message) = message else { return Ok(()) };
                frames.send(message).await.map_err(|e| e.to_string())?;
            }
            read = read_half.read(&mut probe) => {
                return Err(match read {
                    Ok(0) => "closed by peer".to_string(),
                    Ok(_) => "peer wrote on a send-only connection".to_string(),
                    Err(e) => e.to_string(),
                });
            }
        }
    }
}

async fn accept_loop(
    id: NodeId,
    listener: TcpListener,
    known: Arc<Vec<NodeId>>,
    inbox: mpsc::Sender<(NodeId, Vec<u8>)>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_INBOUND_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors: wait instead of spinning.
                tracing::warn!(node = id, error = %e, "accept failed");
                tokio::time::sleep(BACKOFF_MIN).await;
                continue;
            }
        };
        let (known, inbox) = (known.clone(), inbox.clone());
        spawn_until(&shutdown, async move {
            if let Err(reason) = serve(id, stream, &known, &inbox).await {
                tracing::warn!(node = id, %remote, %reason, "disconnected a peer");
            }
            drop(permit);
        });
    }
}

/// Reads one incoming connection: handshake, then messages into the inbox.
async fn serve(
    id: NodeId,
    stream: TcpStream,
    known: &[NodeId],
    inbox: &mpsc::Sender<(NodeId, Vec<u8>)>,
) -> Result<(), String> {
    let mut frames = FramedRead::new(stream, frame_codec());
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, frames.next())
        .await
        .map_err(|_| "no handshake in time".to_string())?;
    let from = match first {
        None => return Ok(()),
        Some(Err(e)) => return Err(format!("bad handshake frame: {e}")),
        Some(Ok(frame)) => parse_handshake(&frame)?,
    };
    if !known.contains(&from) {
        return Err(format!("unknown peer id {from}"));
    }
    tracing::debug!(node = id, peer = from, "peer connected");
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(|e| format!("bad frame from peer {from}: {e}"))?;
        if inbox.send((from, frame.to_vec())).await.is_err() {
            return Ok(()); // the node is shutting down
        }
    }
    Ok(())
}
