//! Message transport over TCP between the node ids of a static peer map.
//!
//! Each node listens on its own address and keeps one outgoing connection
//! per peer, used only to send; replies travel on the peer's own connection
//! back. That keeps every connection between nodes one-way and simple: a
//! connection is owned by the sender, who alone reconnects it.
//!
//! Clients are different: they are not in the peer map and do not listen
//! (a command-line tool, a service behind a firewall). A client connects and
//! the node answers on that same connection for as long as it stays up. A
//! client that loses its connection reconnects when it next has something
//! to send, so an idle client holds no connection.
//!
//! Every connection starts with the mutual handshake of [`super::auth`]:
//! a member proves it holds the cluster secret and a client proves it holds
//! its principal's key, and may only use that principal's node ids. After
//! it every frame carries an authentication tag. Wire format:
//! length-delimited frames (4-byte big-endian length, at most
//! [`MAX_MESSAGE_BYTES`] plus the tag).
//!
//! Delivery is unreliable, as the [`Env`](crate::env::Env) contract says:
//! each peer has a bounded queue, a full queue drops the message (the
//! protocol never waits for a slow peer), and messages in flight when a
//! connection breaks are lost. A peer that fails the handshake, claims an
//! identity it cannot prove, sends a frame whose tag fails or an oversized
//! frame, exceeds its principal's connection quota or stays silent too long
//! is disconnected and logged; the node keeps serving everyone else.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use super::auth::{self, Credentials, FrameKeys, Hello, Opener, Role, Sealer, TAG_BYTES};
use super::throttle::WarnThrottle;
use crate::env::{EnvError, NodeId, MAX_MESSAGE_BYTES};

/// Messages queued per peer before new ones are dropped.
pub const PEER_QUEUE_CAPACITY: usize = 1024;

/// Received messages buffered for [`Transport::recv`]; when full, readers
/// stop reading and TCP flow control pushes back on the senders, whose own
/// queues then drop.
pub const INBOX_CAPACITY: usize = 4096;

/// Authenticated client connections served at once; a client beyond them
/// is disconnected once it has proven itself. Members are not counted: they
/// are few, known, and never locked out by clients.
pub const MAX_INBOUND_CONNECTIONS: usize = 1024;

/// Connections still in their handshake at once. Every connection is
/// accepted; past this many, the one waiting longest is dropped, so that
/// strangers holding idle sockets cannot keep members and clients out (an
/// honest peer finishes its handshake in a round trip).
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// The largest handshake frame (a hello or a proof, each under 100
/// bytes): a stranger's frame is refused from its length prefix, before
/// the node buffers anything.
pub const MAX_HANDSHAKE_FRAME_BYTES: usize = 1024;

/// Authenticated connections one client principal may hold to one node at
/// once, so that no single client can take every slot.
pub const MAX_CONNECTIONS_PER_PRINCIPAL: usize = 128;

/// A peer has this long to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// A client connection that carries nothing for this long is closed; the
/// client reconnects when it next sends.
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Reconnect delays: doubling from the first to the last, with jitter so
/// that restarted nodes do not reconnect in lockstep.
pub const BACKOFF_MIN: Duration = Duration::from_millis(20);
/// The longest pause between reconnection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What a node's listener allows; [`Limits::default`] is the constants
/// above. Tests and small deployments may tighten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Authenticated client connections served at once.
    pub max_connections: usize,
    /// Connections in their handshake at once (the oldest is dropped).
    pub max_pending_handshakes: usize,
    /// Authenticated connections one client principal may hold at once.
    pub max_connections_per_principal: usize,
    /// Time a peer has to complete its handshake.
    pub handshake_timeout: Duration,
    /// A client connection carrying nothing for this long is closed.
    pub client_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_INBOUND_CONNECTIONS,
            max_pending_handshakes: MAX_PENDING_HANDSHAKES,
            max_connections_per_principal: MAX_CONNECTIONS_PER_PRINCIPAL,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            client_idle_timeout: CLIENT_IDLE_TIMEOUT,
        }
    }
}

/// Descriptors a node keeps for its logs, peer links and compaction,
/// beside what its listeners take ([`Limits::within_open_files`]).
pub const RESERVED_OPEN_FILES: usize = 256;

impl Limits {
    /// Descriptors one listener may hold under these limits.
    pub fn open_files(&self) -> usize {
        self.max_connections + self.max_pending_handshakes
    }

    /// Limits for `listeners` listeners that together may hold at most
    /// `open_files` descriptors, keeping [`RESERVED_OPEN_FILES`] for the
    /// rest of the node: the defaults where they fit, otherwise each
    /// listener's share split one part handshakes to four parts client
    /// connections. A flood then meets a refused connection, not a node
    /// that cannot open its own log.
    pub fn within_open_files(open_files: usize, listeners: usize) -> Limits {
        let defaults = Limits::default();
        let share = open_files.saturating_sub(RESERVED_OPEN_FILES) / listeners.max(1);
        if share >= defaults.open_files() {
            return defaults;
        }
        let max_pending_handshakes = (share / 5).clamp(1, MAX_PENDING_HANDSHAKES);
        let max_connections = share
            .saturating_sub(max_pending_handshakes)
            .clamp(1, MAX_INBOUND_CONNECTIONS);
        Limits {
            max_connections,
            max_pending_handshakes,
            max_connections_per_principal: max_connections.min(MAX_CONNECTIONS_PER_PRINCIPAL),
            ..defaults
        }
    }
}

/// The frame codec both ends use.
pub fn frame_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .max_frame_length(MAX_MESSAGE_BYTES + TAG_BYTES)
        .new_codec()
}

type Inbox = mpsc::Sender<(NodeId, Vec<u8>)>;

/// Answer queues of the clients connected now, each tagged with its
/// connection so that a closing old connection does not unregister a newer
/// one from the same client.
type Clients = Mutex<BTreeMap<NodeId, (u64, mpsc::Sender<Vec<u8>>)>>;

type FrameReader = FramedRead<OwnedReadHalf, LengthDelimitedCodec>;
type FrameWriter = FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>;

/// The transport of one node (or client).
pub struct Transport {
    id: NodeId,
    role: Role,
    credentials: Arc<Credentials>,
    /// Outgoing queue per peer (every peer but this node); members added
    /// while the node runs ([`Transport::add_peer`]) join it.
    queues: RwLock<BTreeMap<NodeId, Outbox>>,
    /// The member ids whose connections the listener takes, shared with it.
    known: Known,
    clients: Arc<Clients>,
    /// Messages to self skip the network.
    inbox_tx: Inbox,
    inbox_rx: tokio::sync::Mutex<mpsc::Receiver<(NodeId, Vec<u8>)>>,
    shutdown: CancellationToken,
}

/// Member ids a listener accepts as members.
type Known = Arc<RwLock<BTreeSet<NodeId>>>;

impl Transport {
    /// Starts accepting on `listener` (nodes and clients, within `limits`)
    /// and connecting to every other peer in `peers`. With a listener this
    /// is a member and `credentials` must be [`Credentials::Member`];
    /// without one it is a client: it connects to every peer and reads
    /// their answers on those connections. Every task stops when `shutdown`
    /// is cancelled.
    pub fn start(
        id: NodeId,
        peers: &BTreeMap<NodeId, SocketAddr>,
        listener: Option<(TcpListener, Limits)>,
        credentials: Credentials,
        shutdown: &CancellationToken,
    ) -> Arc<Transport> {
        let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_CAPACITY);
        let role = if listener.is_some() { Role::Member } else { Role::Client };
        let transport = Arc::new(Transport {
            id,
            role,
            credentials: Arc::new(credentials),
            queues: RwLock::default(),
            known: Known::default(),
            clients: Arc::default(),
            inbox_tx,
            inbox_rx: tokio::sync::Mutex::new(inbox_rx),
            shutdown: shutdown.clone(),
        });
        for (&peer, &addr) in peers {
            transport.add_peer(peer, addr);
        }
        if let Some((listener, limits)) = listener {
            let acceptor = Acceptor {
                id,
                limits,
                known: transport.known.clone(),
                credentials: transport.credentials.clone(),
                inbox: transport.inbox_tx.clone(),
                clients: transport.clients.clone(),
                per_principal: Mutex::default(),
                client_slots: Arc::new(Semaphore::new(limits.max_connections)),
                handshakes: Mutex::default(),
                warnings: WarnThrottle::new(WARN_WINDOW, WARN_BURST),
                shutdown: shutdown.clone(),
            };
            spawn_until(shutdown, acceptor.run(listener));
        }
        transport
    }

    /// Connects to `peer` at `addr` from now on (a member added to the
    /// cluster while this node runs), and accepts its connections as a
    /// member's. A peer already known keeps its address; this node is not
    /// its own peer.
    pub fn add_peer(&self, peer: NodeId, addr: SocketAddr) {
        if peer == self.id {
            return;
        }
        let mut queues = self.queues.write().expect("peer table poisoned");
        if queues.contains_key(&peer) {
            return;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE_CAPACITY);
        let unsent = Arc::new(AtomicUsize::new(0));
        queues.insert(
            peer,
            Outbox {
                queue: tx,
                unsent: unsent.clone(),
            },
        );
        self.known.write().expect("member table poisoned").insert(peer);
        let link = Link {
            role: self.role,
            id: self.id,
            peer,
            addr,
            credentials: self.credentials.clone(),
            inbox: self.inbox_tx.clone(),
            unsent,
        };
        spawn_until(&self.shutdown, link.run(rx));
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
        // Sent under the table's read lock: `try_send` never waits.
        let queues = self.queues.read().expect("peer table poisoned");
        let queued = match queues.get(&to) {
            Some(outbox) => {
                // Counted before it is queued, so the link never uncounts first.
                outbox.unsent.fetch_add(1, Ordering::AcqRel);
                let queued = outbox.queue.try_send(msg).is_ok();
                if !queued {
                    outbox.unsent.fetch_sub(1, Ordering::AcqRel);
                }
                queued
            }
            None => {
                let clients = self.clients.lock().expect("client table poisoned");
                let (_, queue) = clients.get(&to).ok_or(EnvError::UnknownPeer(to))?;
                queue.try_send(msg).is_ok()
            }
        };
        if !queued {
            tracing::debug!(node = self.id, peer = to, "queue full: dropped a message");
        }
        Ok(())
    }

    /// Waits until every message sent to a peer so far has been written
    /// to its connection, or given up on (a connection lost under it).
    /// A process about to exit calls it so that its last messages (a
    /// transaction's abort) are not lost with the process.
    pub async fn flush(&self) {
        let busy = || {
            let queues = self.queues.read().expect("peer table poisoned");
            queues.values().any(|o| o.unsent.load(Ordering::Acquire) > 0)
        };
        while busy() {
            tokio::time::sleep(FLUSH_POLL).await;
        }
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

/// Runs `task` until it ends or `shutdown` is cancelled. Outside a tokio
/// runtime (a lock guard dropped after its runtime ended) the task is
/// dropped instead of panicking: nothing could run it.
pub(crate) fn spawn_until(shutdown: &CancellationToken, task: impl std::future::Future<Output = ()> + Send + 'static) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let shutdown = shutdown.clone();
    runtime.spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = task => {}
        }
    });
}

/// Splits a connected stream into framed halves.
fn framed(stream: TcpStream) -> Result<(FrameReader, FrameWriter), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (read_half, write_half) = stream.into_split();
    Ok((
        FramedRead::new(read_half, frame_codec()),
        FramedWrite::new(write_half, frame_codec()),
    ))
}

/// The next frame within `limit`, or why there is none.
async fn next_frame(frames: &mut FrameReader, limit: Duration, what: &str) -> Result<bytes::BytesMut, String> {
    match tokio::time::timeout(limit, frames.next()).await {
        Err(_) => Err(format!("no {what} in time")),
        Ok(None) => Err(format!("closed before the {what}")),
        Ok(Some(Err(e))) => Err(format!("bad {what} frame: {e}")),
        Ok(Some(Ok(frame))) => Ok(frame),
    }
}

/// One peer's outgoing queue, and how many of its messages are not yet
/// written ([`Transport::flush`]).
struct Outbox {
    queue: mpsc::Sender<Vec<u8>>,
    unsent: Arc<AtomicUsize>,
}

/// How often [`Transport::flush`] looks again.
const FLUSH_POLL: Duration = Duration::from_millis(2);

/// Held while a message the link took from its queue is not yet written:
/// uncounts it from the unsent messages when dropped, whether it was
/// written or lost.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// This end's connection to one peer: it owns the peer's queue.
struct Link {
    role: Role,
    id: NodeId,
    peer: NodeId,
    addr: SocketAddr,
    credentials: Arc<Credentials>,
    inbox: Inbox,
    unsent: Arc<AtomicUsize>,
}

impl Link {
    /// Keeps one connection to the peer up (a client's only while it has
    /// something to send) and feeds it from the queue.
    async fn run(self, mut queue: mpsc::Receiver<Vec<u8>>) {
        let (id, peer, addr) = (self.id, self.peer, self.addr);
        let mut rng = ChaCha8Rng::from_entropy();
        let mut backoff = BACKOFF_MIN;
        let mut first = None;
        loop {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    tracing::debug!(node = id, peer, %addr, "connected");
                    match self.feed(stream, &mut queue, first.take()).await {
                        Ok(()) => return, // the transport is gone
                        Err(reason) => tracing::debug!(node = id, peer, %reason, "connection lost"),
                    }
                    backoff = BACKOFF_MIN;
                    if self.role == Role::Client {
                        // Reconnect only when there is something to send.
                        match queue.recv().await {
                            Some(message) => first = Some((message, InFlight(self.unsent.clone()))),
                            None => return,
                        }
                        continue;
                    }
                }
                Err(e) => tracing::trace!(node = id, peer, %addr, error = %e, "connect failed"),
            }
            let jitter = rng.gen_range(0.5..1.5);
            tokio::time::sleep(backoff.mul_f64(jitter)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Authenticates, then sends `first` and queued messages until the
    /// connection breaks (`Err`) or the queue closes (`Ok`). A member never
    /// writes on a connection from another member after the handshake, but
    /// reading still notices at once when it closes (a restarted peer)
    /// before the next send is lost to it; a client reads its answers here.
    async fn feed(
        &self,
        stream: TcpStream,
        queue: &mut mpsc::Receiver<Vec<u8>>,
        first: Option<(Vec<u8>, InFlight)>,
    ) -> Result<(), String> {
        let (mut answers, mut frames) = framed(stream)?;
        let hello = Hello::new(self.role, self.id);
        frames
            .send(Bytes::from(hello.encode()))
            .await
            .map_err(|e| e.to_string())?;
        let answer = next_frame(&mut answers, HANDSHAKE_TIMEOUT, "handshake answer").await?;
        let (proof, FrameKeys { mut sealer, mut opener }) =
            auth::initiate(&self.credentials, &hello, &answer).map_err(|e| format!("peer {}: {e}", self.peer))?;
        frames.send(Bytes::from(proof)).await.map_err(|e| e.to_string())?;
        if let Some((message, _in_flight)) = first {
            frames
                .send(Bytes::from(sealer.seal(message)))
                .await
                .map_err(|e| e.to_string())?;
        }
        loop {
            tokio::select! {
                message = queue.recv() => {
                    let Some(message) = message else { return Ok(()) };
                    let _in_flight = InFlight(self.unsent.clone());
                    frames.send(Bytes::from(sealer.seal(message))).await.map_err(|e| e.to_string())?;
                }
                answer = answers.next() => match answer {
                    None => return Err("closed by peer".to_string()),
                    Some(Err(e)) => return Err(format!("bad frame from peer {}: {e}", self.peer)),
                    Some(Ok(_)) if self.role == Role::Member => {
                        return Err("peer wrote on a send-only connection".to_string())
                    }
                    Some(Ok(frame)) => {
                        let payload = opener.open(&frame).map_err(|e| format!("peer {}: {e}", self.peer))?;
                        if self.inbox.send((self.peer, payload.to_vec())).await.is_err() {
                            return Ok(());
                        }
                    }
                },
            }
        }
    }
}

/// Accepts connections from members and clients.
struct Acceptor {
    id: NodeId,
    limits: Limits,
    known: Known,
    credentials: Arc<Credentials>,
    inbox: Inbox,
    clients: Arc<Clients>,
    /// Authenticated client connections per principal.
    per_principal: Mutex<BTreeMap<u32, usize>>,
    /// Authenticated client connections, all principals together.
    client_slots: Arc<Semaphore>,
    /// Connections in their handshake, oldest first, each with the token
    /// that drops it.
    handshakes: Mutex<VecDeque<(u64, CancellationToken)>>,
    /// Warnings about refused connections and failed accepts, which a
    /// stranger can trigger at will.
    warnings: WarnThrottle,
    shutdown: CancellationToken,
}

/// Warnings a listener writes about strangers: at most this many per
/// [`WARN_WINDOW`], then one line saying how many were held back.
const WARN_BURST: u32 = 10;
const WARN_WINDOW: Duration = Duration::from_secs(10);

/// Holds one of a principal's connection slots; frees it when dropped.
struct PrincipalSlot<'a> {
    acceptor: &'a Acceptor,
    principal: u32,
}

impl Drop for PrincipalSlot<'_> {
    fn drop(&mut self) {
        let mut counts = self.acceptor.per_principal.lock().expect("quota table poisoned");
        if let Some(count) = counts.get_mut(&self.principal) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.principal);
            }
        }
    }
}

impl Acceptor {
    async fn run(self, listener: TcpListener) {
        let this = Arc::new(self);
        let mut connections = 0u64;
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually out of file descriptors: wait instead of spinning.
                    if let Some(held_back) = this.warnings.admit(Instant::now()) {
                        tracing::warn!(node = this.id, error = %e, held_back, "accept failed");
                    }
                    tokio::time::sleep(BACKOFF_MIN).await;
                    continue;
                }
            };
            connections += 1;
            let (this2, connection) = (this.clone(), connections);
            let evicted = this.start_handshake(connection);
            spawn_until(&this.shutdown, async move {
                if let Err(reason) = this2.serve(stream, connection, evicted).await {
                    if let Some(held_back) = this2.warnings.admit(Instant::now()) {
                        tracing::warn!(node = this2.id, %remote, %reason, held_back, "disconnected a peer");
                    }
                }
            });
        }
    }

    /// Registers connection `connection`'s handshake; returns the token
    /// that drops it if it is still pending when newer ones crowd it out.
    fn start_handshake(&self, connection: u64) -> CancellationToken {
        let token = CancellationToken::new();
        let mut pending = self.handshakes.lock().expect("handshake table poisoned");
        pending.push_back((connection, token.clone()));
        while pending.len() > self.limits.max_pending_handshakes {
            if let Some((_, oldest)) = pending.pop_front() {
                oldest.cancel();
            }
        }
        token
    }

    /// Connection `connection` finished (or abandoned) its handshake.
    fn end_handshake(&self, connection: u64) {
        let mut pending = self.handshakes.lock().expect("handshake table poisoned");
        pending.retain(|(c, _)| *c != connection);
    }

    /// Takes a connection slot of `principal`, if it has one left.
    fn take_slot(&self, principal: u32) -> Option<PrincipalSlot<'_>> {
        let mut counts = self.per_principal.lock().expect("quota table poisoned");
        let count = counts.entry(principal).or_default();
        if *count >= self.limits.max_connections_per_principal {
            return None;
        }
        *count += 1;
        Some(PrincipalSlot {
            acceptor: self,
            principal,
        })
    }

    /// The handshake of one incoming connection: who it is, proven. Its
    /// frames are held to [`MAX_HANDSHAKE_FRAME_BYTES`] until then.
    async fn handshake(&self, stream: TcpStream) -> Result<(Hello, FrameReader, FrameWriter, FrameKeys), String> {
        let (mut frames, mut writer) = framed(stream)?;
        frames.decoder_mut().set_max_frame_length(MAX_HANDSHAKE_FRAME_BYTES);
        let first = next_frame(&mut frames, self.limits.handshake_timeout, "hello").await?;
        let hello = Hello::decode(&first).map_err(|e| e.to_string())?;
        let from = hello.id;
        let known = self.known.read().expect("member table poisoned").contains(&from);
        match hello.role {
            Role::Member if known => {}
            Role::Member => return Err(format!("unknown member id {from}")),
            Role::Client if from == self.id || known => return Err(format!("client claims member id {from}")),
            Role::Client => {}
        }
        let (answer, pending) = auth::accept(&self.credentials, &hello).map_err(|e| e.to_string())?;
        writer.send(Bytes::from(answer)).await.map_err(|e| e.to_string())?;
        let proof = next_frame(&mut frames, self.limits.handshake_timeout, "handshake proof").await?;
        let keys = pending.finish(&proof).map_err(|e| format!("peer {from}: {e}"))?;
        frames.decoder_mut().set_max_frame_length(MAX_MESSAGE_BYTES + TAG_BYTES);
        Ok((hello, frames, writer, keys))
    }

    /// Serves one incoming connection: handshake, then messages into the
    /// inbox; for a client, also writes the node's answers back.
    async fn serve(&self, stream: TcpStream, connection: u64, evicted: CancellationToken) -> Result<(), String> {
        let handshake = async {
            tokio::select! {
                result = self.handshake(stream) => result,
                () = evicted.cancelled() => Err("dropped in its handshake: newer connections were waiting".to_string()),
            }
        };
        let result = handshake.await;
        self.end_handshake(connection);
        let (hello, mut frames, writer, FrameKeys { sealer, opener }) = result?;
        let from = hello.id;
        // The quotas count proven connections only: hellos that claim a
        // principal without its key cannot use up its slots.
        let (_slot, _permit) = match hello.role {
            Role::Member => (None, None),
            Role::Client => {
                let principal = auth::principal_of(from);
                let Some(slot) = self.take_slot(principal) else {
                    return Err(format!(
                        "principal {principal} already holds {} connections",
                        self.limits.max_connections_per_principal
                    ));
                };
                let Ok(permit) = self.client_slots.clone().try_acquire_owned() else {
                    return Err(format!("{} client connections are open", self.limits.max_connections));
                };
                (Some(slot), Some(permit))
            }
        };
        let idle = match hello.role {
            Role::Member => None,
            Role::Client => {
                let (tx, rx) = mpsc::channel(PEER_QUEUE_CAPACITY);
                self.clients
                    .lock()
                    .expect("client table poisoned")
                    .insert(from, (connection, tx));
                spawn_until(&self.shutdown, answer_client(writer, sealer, rx));
                Some(self.limits.client_idle_timeout)
            }
        };
        tracing::debug!(node = self.id, peer = from, "peer authenticated");
        let result = self.read_messages(from, &mut frames, opener, idle).await;
        if hello.role == Role::Client {
            let mut clients = self.clients.lock().expect("client table poisoned");
            if clients.get(&from).is_some_and(|(c, _)| *c == connection) {
                clients.remove(&from);
            }
        }
        result
    }

    async fn read_messages(
        &self,
        from: NodeId,
        frames: &mut FrameReader,
        mut opener: Opener,
        idle: Option<Duration>,
    ) -> Result<(), String> {
        loop {
            let next = match idle {
                Some(limit) => match tokio::time::timeout(limit, frames.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        tracing::debug!(node = self.id, peer = from, "closing an idle client connection");
                        return Ok(());
                    }
                },
                None => frames.next().await,
            };
            let Some(frame) = next else { return Ok(()) };
            let frame = frame.map_err(|e| format!("bad frame from peer {from}: {e}"))?;
            let payload = opener.open(&frame).map_err(|e| format!("peer {from}: {e}"))?;
            if self.inbox.send((from, payload.to_vec())).await.is_err() {
                return Ok(()); // the node is shutting down
            }
        }
    }
}

/// Writes a client's answers until its queue closes (the client left and
/// was unregistered) or the connection breaks.
async fn answer_client(mut frames: FrameWriter, mut sealer: Sealer, mut queue: mpsc::Receiver<Vec<u8>>) {
    while let Some(message) = queue.recv().await {
        if frames.send(Bytes::from(sealer.seal(message))).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under a hard open-file limit below what the defaults take, every
    /// listener's connections and handshakes together fit beside the
    /// node's reserve: a flood is refused before the node runs out of
    /// descriptors for its own logs.
    #[test]
    fn limits_shrink_to_fit_the_open_file_limit() {
        assert_eq!(Limits::within_open_files(4_096, 3), Limits::default());
        assert_eq!(Limits::within_open_files(1 << 20, 3), Limits::default());
        for open_files in [300, 512, 1_024, 2_048, 4_095] {
            let limits = Limits::within_open_files(open_files, 3);
            assert!(
                3 * limits.open_files() + RESERVED_OPEN_FILES <= open_files,
                "{open_files}: {limits:?}"
            );
            assert!(limits.max_pending_handshakes >= 1 && limits.max_connections >= 1);
            assert!(limits.max_connections_per_principal <= limits.max_connections);
        }
    }
}
