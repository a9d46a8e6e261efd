//! Message transport over TCP between the node ids of a static peer map.
//!
//! Each node listens on its own address and keeps one outgoing connection
//! per peer, used only to send; replies travel on the peer's own connection
//! back. That keeps every connection between nodes one-way and simple: a
//! connection is owned by the sender, who alone reconnects it.
//!
//! Clients are different: they are not in the peer map and do not listen
//! (a command-line tool, a service behind a firewall). A client connects with
//! the [`CLIENT_MAGIC`] handshake, and the node answers on that same
//! connection for as long as it stays up. A client's id must be unique among
//! the clients connected at once and must not be a node's id.
//!
//! Wire format: length-delimited frames (4-byte big-endian length, at most
//! [`MAX_MESSAGE_BYTES`]). The first frame of a connection is a handshake,
//! [`HANDSHAKE_MAGIC`] (node) or [`CLIENT_MAGIC`] (client) followed by the
//! sender's id (u32 little-endian); every later frame is one message.
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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use crate::env::{EnvError, NodeId, MAX_MESSAGE_BYTES};

/// First bytes of a connection from a node: protocol name and wire version.
pub const HANDSHAKE_MAGIC: [u8; 4] = *b"RFN1";

/// First bytes of a connection from a client, which is answered on it.
pub const CLIENT_MAGIC: [u8; 4] = *b"RFC1";

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

/// Who opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// A node of the peer map; the connection only carries its messages in.
    Node(NodeId),
    /// A client; the connection carries the node's answers back out too.
    Client(NodeId),
}

/// The handshake frame announcing `hello`.
pub fn handshake(hello: Hello) -> Bytes {
    let (magic, id) = match hello {
        Hello::Node(id) => (HANDSHAKE_MAGIC, id),
        Hello::Client(id) => (CLIENT_MAGIC, id),
    };
    let mut frame = BytesMut::with_capacity(8);
    frame.put_slice(&magic);
    frame.put_u32_le(id);
    frame.freeze()
}

/// Parses a handshake frame.
pub fn parse_handshake(frame: &[u8]) -> Result<Hello, &'static str> {
    let [m0, m1, m2, m3, id @ ..] = frame else {
        return Err("not a ringfence handshake");
    };
    let magic = [*m0, *m1, *m2, *m3];
    if magic != HANDSHAKE_MAGIC && magic != CLIENT_MAGIC {
        return Err("not a ringfence handshake");
    }
    let id: [u8; 4] = id.try_into().map_err(|_| "handshake of the wrong length")?;
    let id = NodeId::from_le_bytes(id);
    Ok(if magic == HANDSHAKE_MAGIC {
        Hello::Node(id)
    } else {
        Hello::Client(id)
    })
}

type Inbox = mpsc::Sender<(NodeId, Vec<u8>)>;

/// Answer queues of the clients connected now, each tagged with its
/// connection so that a closing old connection does not unregister a newer
/// one from the same client.
type Clients = std::sync::Mutex<BTreeMap<NodeId, (u64, mpsc::Sender<Bytes>)>>;

/// The transport of one node (or client).
pub struct Transport {
    id: NodeId,
    /// Outgoing queue per peer (every peer but this node).
    queues: BTreeMap<NodeId, mpsc::Sender<Bytes>>,
    clients: Arc<Clients>,
    /// Messages to self skip the network.
    inbox_tx: Inbox,
    inbox_rx: tokio::sync::Mutex<mpsc::Receiver<(NodeId, Vec<u8>)>>,
}

impl Transport {
    /// Starts accepting on `listener` (nodes and clients) and connecting to
    /// every other peer in `peers`. Without a listener this is a client:
    /// it connects to every peer and reads their answers on those
    /// connections. Every task stops when `shutdown` is cancelled.
    pub fn start(
        id: NodeId,
        peers: &BTreeMap<NodeId, SocketAddr>,
        listener: Option<TcpListener>,
        shutdown: &CancellationToken,
    ) -> Arc<Transport> {
        let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_CAPACITY);
        let hello = if listener.is_some() {
            Hello::Node(id)
        } else {
            Hello::Client(id)
        };
        let mut queues = BTreeMap::new();
        for (&peer, &addr) in peers {
            if peer == id {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE_CAPACITY);
            queues.insert(peer, tx);
            spawn_until(shutdown, connect_loop(hello, peer, addr, rx, inbox_tx.clone()));
        }
        let clients = Arc::new(Clients::default());
        if let Some(listener) = listener {
            let acceptor = Acceptor {
                id,
                known: peers.keys().copied().filter(|&p| p != id).collect(),
                inbox: inbox_tx.clone(),
                clients: clients.clone(),
                shutdown: shutdown.clone(),
            };
            spawn_until(shutdown, acceptor.run(listener));
        }
        Arc::new(Transport {
            id,
            queues,
            clients,
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
        let client_queue;
        let queue = match self.queues.get(&to) {
            Some(queue) => queue,
            None => {
                let clients = self.clients.lock().expect("client table poisoned");
                client_queue = clients
                    .get(&to)
                    .map(|(_, q)| q.clone())
                    .ok_or(EnvError::UnknownPeer(to))?;
                &client_queue
            }
        };
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
async fn connect_loop(hello: Hello, peer: NodeId, addr: SocketAddr, mut queue: mpsc::Receiver<Bytes>, inbox: Inbox) {
    let id = match hello {
        Hello::Node(id) | Hello::Client(id) => id,
    };
    let mut rng = ChaCha8Rng::from_entropy();
    let mut backoff = BACKOFF_MIN;
    loop {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                tracing::debug!(node = id, peer, %addr, "connected");
                backoff = BACKOFF_MIN;
                match feed(hello, peer, stream, &mut queue, &inbox).await {
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
/// (`Err`) or the queue closes (`Ok`). A node never writes on a connection
/// from another node, but reading still notices at once when it closes (a
/// restarted peer) before the next send is lost to it; a client reads its
/// answers here.
async fn feed(
    hello: Hello,
    peer: NodeId,
    stream: TcpStream,
    queue: &mut mpsc::Receiver<Bytes>,
    inbox: &Inbox,
) -> Result<(), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (read_half, write_half) = stream.into_split();
    let mut frames = FramedWrite::new(write_half, frame_codec());
    let mut answers = FramedRead::new(read_half, frame_codec());
    frames.send(handshake(hello)).await.map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            message = queue.recv() => {
                let Some(message) = message else { return Ok(()) };
                frames.send(message).await.map_err(|e| e.to_string())?;
            }
            answer = answers.next() => match answer {
                None => return Err("closed by peer".to_string()),
                Some(Err(e)) => return Err(format!("bad frame from peer {peer}: {e}")),
                Some(Ok(_)) if matches!(hello, Hello::Node(_)) => {
                    return Err("peer wrote on a send-only connection".to_string())
                }
                Some(Ok(frame)) => {
                    if inbox.send((peer, frame.to_vec())).await.is_err() {
                        return Ok(());
                    }
                }
            },
        }
    }
}

/// Accepts connections from nodes and clients.
struct Acceptor {
    id: NodeId,
    known: Vec<NodeId>,
    inbox: Inbox,
    clients: Arc<Clients>,
    shutdown: CancellationToken,
}

impl Acceptor {
    async fn run(self, listener: TcpListener) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(MAX_INBOUND_CONNECTIONS));
        let mut connections = 0u64;
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually out of file descriptors: wait instead of spinning.
                    tracing::warn!(node = this.id, error = %e, "accept failed");
                    tokio::time::sleep(BACKOFF_MIN).await;
                    continue;
                }
            };
            connections += 1;
            let (this2, connection) = (this.clone(), connections);
            spawn_until(&this.shutdown, async move {
                if let Err(reason) = this2.serve(stream, connection).await {
                    tracing::warn!(node = this2.id, %remote, %reason, "disconnected a peer");
                }
                drop(permit);
            });
        }
    }

    /// Reads one incoming connection: handshake, then messages into the
    /// inbox; for a client, also writes the node's answers back.
    async fn serve(&self, stream: TcpStream, connection: u64) -> Result<(), String> {
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (read_half, write_half) = stream.into_split();
        let mut frames = FramedRead::new(read_half, frame_codec());
        let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, frames.next())
            .await
            .map_err(|_| "no handshake in time".to_string())?;
        let hello = match first {
            None => return Ok(()),
            Some(Err(e)) => return Err(format!("bad handshake frame: {e}")),
            Some(Ok(frame)) => parse_handshake(&frame)?,
        };
        let from = match hello {
            Hello::Node(from) if self.known.contains(&from) => from,
            Hello::Node(from) => return Err(format!("unknown peer id {from}")),
            Hello::Client(from) if from == self.id || self.known.contains(&from) => {
                return Err(format!("client claims node id {from}"))
            }
            Hello::Client(from) => {
                let (tx, rx) = mpsc::channel(PEER_QUEUE_CAPACITY);
                self.clients
                    .lock()
                    .expect("client table poisoned")
                    .insert(from, (connection, tx));
                spawn_until(&self.shutdown, answer(write_half, rx));
                from
            }
        };
        tracing::debug!(node = self.id, peer = from, "peer connected");
        let result = self.read_messages(from, &mut frames).await;
        if let Hello::Client(client) = hello {
            let mut clients = self.clients.lock().expect("client table poisoned");
            if clients.get(&client).is_some_and(|(c, _)| *c == connection) {
                clients.remove(&client);
            }
        }
        result
    }

    async fn read_messages(
        &self,
        from: NodeId,
        frames: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, LengthDelimitedCodec>,
    ) -> Result<(), String> {
        while let Some(frame) = frames.next().await {
            let frame = frame.map_err(|e| format!("bad frame from peer {from}: {e}"))?;
            if self.inbox.send((from, frame.to_vec())).await.is_err() {
                return Ok(()); // the node is shutting down
            }
        }
        Ok(())
    }
}

/// Writes a client's answers until its queue closes (the client left and
/// was unregistered) or the connection breaks.
async fn answer(write_half: tokio::net::tcp::OwnedWriteHalf, mut queue: mpsc::Receiver<Bytes>) {
    let mut frames = FramedWrite::new(write_half, frame_codec());
    while let Some(message) = queue.recv().await {
        if frames.send(message).await.is_err() {
            return;
        }
    }
}
