//! The real TCP transport on loopback: delivery between nodes, reconnects,
//! and a node that stays up while peers misbehave.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ringfence::env::{Env, EnvError, NodeId, MAX_MESSAGE_BYTES};
use ringfence::real::auth::{self, ClientCredentials, ClusterSecret, Credentials, Hello, Role, FIRST_PRINCIPAL};
use ringfence::real::transport::{frame_codec, Limits, MAX_CONNECTIONS_PER_PRINCIPAL, MAX_HANDSHAKE_FRAME_BYTES};
use ringfence::real::{NodeConfig, RealEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Decoder;

/// Every wait in these tests is bounded by this.
const LIMIT: Duration = Duration::from_secs(10);

struct Cluster {
    secret: ClusterSecret,
    peers: BTreeMap<NodeId, SocketAddr>,
    nodes: BTreeMap<NodeId, RealEnv>,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(ids: &[NodeId]) -> Cluster {
        Self::start_with(ids, Limits::default()).await
    }

    async fn start_with(ids: &[NodeId], limits: Limits) -> Cluster {
        let mut listeners = BTreeMap::new();
        for &id in ids {
            listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let peers: BTreeMap<NodeId, SocketAddr> =
            listeners.iter().map(|(&id, l)| (id, l.local_addr().unwrap())).collect();
        let dir = tempfile::tempdir().unwrap();
        let secret = ClusterSecret::generate();
        let mut nodes = BTreeMap::new();
        for (id, listener) in listeners {
            let config = NodeConfig {
                id,
                peers: peers.clone(),
                data_dir: dir.path().join(format!("n{id}")),
                secret: secret.clone(),
                cluster_id: "example".to_string(),
                init: true,
                limits,
            };
            nodes.insert(id, RealEnv::start_on(config, listener).unwrap());
        }
        Cluster {
            secret,
            peers,
            nodes,
            dir,
        }
    }

    fn client_credentials(&self, principal: u32) -> ClientCredentials {
        self.secret.client_credentials(principal).unwrap()
    }

    fn node(&self, id: NodeId) -> &RealEnv {
        &self.nodes[&id]
    }

    /// Stops `id` and starts it again on the same address and data.
    async fn restart(&mut self, id: NodeId) {
        self.nodes.remove(&id).unwrap().shutdown();
        let config = NodeConfig {
            id,
            peers: self.peers.clone(),
            data_dir: self.dir.path().join(format!("n{id}")),
            secret: self.secret.clone(),
            cluster_id: "example".to_string(),
            init: true,
            limits: Default::default(),
        };
        // The old listener closes once its task sees the shutdown.
        let listener = tokio::time::timeout(LIMIT, async {
            loop {
                match TcpListener::bind(self.peers[&id]).await {
                    Ok(listener) => break listener,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await
        .expect("port freed after shutdown");
        self.nodes.insert(id, RealEnv::start_on(config, listener).unwrap());
    }
}

async fn recv(env: &RealEnv) -> (NodeId, Vec<u8>) {
    tokio::time::timeout(LIMIT, env.recv())
        .await
        .expect("a message within the limit")
}

/// Sends `msg` every 50 ms until `to` receives it: a connection that is
/// down or coming up may lose messages, and that is the contract.
async fn send_until_received(from: &RealEnv, to: &RealEnv, msg: &[u8]) {
    tokio::time::timeout(LIMIT, async {
        loop {
            from.send(to.id(), msg.to_vec()).await.unwrap();
            if let Ok((sender, got)) = tokio::time::timeout(Duration::from_millis(50), to.recv()).await {
                if sender == from.id() && got == msg {
                    return;
                }
            }
        }
    })
    .await
    .expect("delivered within the limit");
}

/// Asserts the node closes `stream` (EOF or reset) within the limit.
async fn assert_disconnected(mut stream: TcpStream) {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(LIMIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the node did not close the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_exchange_messages_both_ways() {
    let cluster = Cluster::start(&[1, 2, 3]).await;
    for from in [1, 2, 3] {
        for to in [1, 2, 3] {
            if from != to {
                let msg = format!("{from}->{to}").into_bytes();
                cluster.node(from).send(to, msg).await.unwrap();
            }
        }
    }
    for to in [1, 2, 3] {
        let mut got = vec![recv(cluster.node(to)).await, recv(cluster.node(to)).await];
        got.sort();
        let expected: Vec<(NodeId, Vec<u8>)> = [1, 2, 3]
            .into_iter()
            .filter(|&from| from != to)
            .map(|from| (from, format!("{from}->{to}").into_bytes()))
            .collect();
        assert_eq!(got, expected, "node {to}");
    }
    // Messages to self skip the network; order per connection is kept.
    let one = cluster.node(1);
    one.send(1, b"self".to_vec()).await.unwrap();
    assert_eq!(recv(one).await, (1, b"self".to_vec()));
    for i in 0..100u32 {
        cluster.node(2).send(1, i.to_le_bytes().to_vec()).await.unwrap();
    }
    for i in 0..100u32 {
        assert_eq!(recv(one).await, (2, i.to_le_bytes().to_vec()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_errors_are_reported_to_the_sender() {
    let cluster = Cluster::start(&[1, 2]).await;
    let one = cluster.node(1);
    assert_eq!(
        one.send(2, vec![0; MAX_MESSAGE_BYTES + 1]).await,
        Err(EnvError::MessageTooLarge {
            size: MAX_MESSAGE_BYTES + 1,
            max: MAX_MESSAGE_BYTES
        })
    );
    assert_eq!(one.send(9, vec![1]).await, Err(EnvError::UnknownPeer(9)));
    // The largest message allowed goes through whole.
    let big = vec![7u8; MAX_MESSAGE_BYTES];
    one.send(2, big.clone()).await.unwrap();
    assert_eq!(recv(cluster.node(2)).await, (1, big));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_a_peer_restarts() {
    let mut cluster = Cluster::start(&[1, 2]).await;
    send_until_received(cluster.node(1), cluster.node(2), b"before").await;
    cluster.restart(2).await;
    send_until_received(cluster.node(1), cluster.node(2), b"after").await;
    send_until_received(cluster.node(2), cluster.node(1), b"back").await;
}

/// Writes one length-delimited frame. Errors are ignored: the node may
/// already have closed the connection, which is what the tests look for.
async fn write_frame(stream: &mut TcpStream, frame: &[u8]) {
    let _ = stream.write_all(&(frame.len() as u32).to_be_bytes()).await;
    let _ = stream.write_all(frame).await;
}

/// Reads one length-delimited frame (within the limit).
async fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    tokio::time::timeout(LIMIT, async {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await.unwrap();
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut frame).await.unwrap();
        frame
    })
    .await
    .expect("a frame within the limit")
}

/// Runs the handshake of `credentials` claiming `hello` on a raw socket;
/// the socket and this end's frame keys if the node accepted the answer.
async fn raw_handshake(addr: SocketAddr, credentials: &Credentials, hello: Hello) -> (TcpStream, auth::FrameKeys) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    write_frame(&mut stream, &hello.encode()).await;
    let answer = read_frame(&mut stream).await;
    let (proof, keys) = auth::initiate(credentials, &hello, &answer).expect("the node proves membership");
    write_frame(&mut stream, &proof).await;
    (stream, keys)
}

/// Asserts node `to` receives nothing from `from` for a while.
async fn assert_nothing_from(to: &RealEnv, from: NodeId) {
    let quiet = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            let (sender, _) = to.recv().await;
            if sender == from {
                return;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "a message from {from} got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_connections_are_dropped_while_the_node_serves_others() {
    let cluster = Cluster::start(&[1, 2]).await;
    let addr = cluster.node(1).local_addr().unwrap();

    // Not our protocol at all: "GET " read as a length exceeds the limit.
    let mut http = TcpStream::connect(addr).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_disconnected(http).await;

    // A well-framed hello with the wrong magic.
    let mut wrong = TcpStream::connect(addr).await.unwrap();
    write_frame(&mut wrong, b"HTTP1234").await;
    assert_disconnected(wrong).await;

    // A correct hello from an id outside the peer map.
    let mut stranger = TcpStream::connect(addr).await.unwrap();
    write_frame(&mut stranger, &Hello::new(Role::Member, 99).encode()).await;
    assert_disconnected(stranger).await;

    // A client pretending to be a member of the cluster.
    let mut impostor = TcpStream::connect(addr).await.unwrap();
    write_frame(&mut impostor, &Hello::new(Role::Client, 2).encode()).await;
    assert_disconnected(impostor).await;

    // A member that then announces a frame over the limit.
    let member = Credentials::Member(cluster.secret.clone());
    let (mut oversized, _) = raw_handshake(addr, &member, Hello::new(Role::Member, 2)).await;
    oversized
        .write_all(&((MAX_MESSAGE_BYTES + 1000) as u32).to_be_bytes())
        .await
        .unwrap();
    assert_disconnected(oversized).await;

    // A member whose frame fails its tag.
    let (mut tampered, mut keys) = raw_handshake(addr, &member, Hello::new(Role::Member, 2)).await;
    let mut frame = keys.sealer.seal(b"tampered".to_vec());
    frame[0] ^= 1;
    write_frame(&mut tampered, &frame).await;
    assert_disconnected(tampered).await;
    assert_nothing_from(cluster.node(1), 2).await;

    // Meanwhile the real peer is served as before, both ways.
    send_until_received(cluster.node(2), cluster.node(1), b"still here").await;
    send_until_received(cluster.node(1), cluster.node(2), b"and back").await;
}

/// A stranger announcing a hello of a megabyte is cut off from its length
/// prefix alone: before authentication the node buffers no more than a
/// handshake frame (a flood of such hellos once grew a node by 650 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_longer_than_a_handshake_frame_is_refused_from_its_length() {
    let limits = Limits {
        handshake_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let cluster = Cluster::start_with(&[1], limits).await;
    let mut stream = TcpStream::connect(cluster.node(1).local_addr().unwrap()).await.unwrap();
    stream
        .write_all(&((MAX_HANDSHAKE_FRAME_BYTES + 1) as u32).to_be_bytes())
        .await
        .unwrap();
    assert_disconnected(stream).await;
}

/// Strangers holding silent sockets, more than the node's handshake and
/// connection budgets, cannot keep out a member that reconnects or a new
/// client: the oldest pending handshakes make way. (Before, a semaphore
/// taken before `accept` let 1,500 idle sockets lock clients out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_cannot_keep_members_or_clients_out() {
    let limits = Limits {
        max_connections: 32,
        max_pending_handshakes: 16,
        handshake_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let mut cluster = Cluster::start_with(&[1, 2], limits).await;
    let addr = cluster.node(1).local_addr().unwrap();
    let mut squatters = Vec::new();
    for _ in 0..200 {
        squatters.push(TcpStream::connect(addr).await.unwrap());
    }
    cluster.restart(2).await;
    send_until_received(cluster.node(2), cluster.node(1), b"member back").await;
    send_until_received(cluster.node(1), cluster.node(2), b"and heard").await;
    let servers: BTreeMap<NodeId, SocketAddr> = [(1, addr)].into_iter().collect();
    let client = RealEnv::client(&cluster.client_credentials(FIRST_PRINCIPAL), &servers);
    send_until_received(&client, cluster.node(1), b"client in").await;
    drop(squatters);
}

/// The forged-frame attack: anyone could claim to be member 2 with a bare
/// hello and send it a vote request. Without the secret the node never
/// reads past the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_secret_cannot_speak_as_a_member() {
    let cluster = Cluster::start(&[1, 2]).await;
    let addr = cluster.node(1).local_addr().unwrap();

    // The old handshake: magic and a declared id, then a message.
    let mut forged = TcpStream::connect(addr).await.unwrap();
    let mut old_hello = b"RFN1".to_vec();
    old_hello.extend_from_slice(&2u32.to_le_bytes());
    write_frame(&mut forged, &old_hello).await;
    write_frame(&mut forged, b"forged vote request").await;
    assert_disconnected(forged).await;

    // The new hello, then a proof made with another cluster's secret.
    let other = Credentials::Member(ClusterSecret::generate());
    let hello = Hello::new(Role::Member, 2);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    write_frame(&mut stream, &hello.encode()).await;
    let answer = read_frame(&mut stream).await;
    assert!(
        auth::initiate(&other, &hello, &answer).is_err(),
        "the node's answer cannot verify under another secret"
    );
    write_frame(&mut stream, &[0u8; 32]).await;
    write_frame(&mut stream, b"forged vote request").await;
    assert_disconnected(stream).await;
    assert_nothing_from(cluster.node(1), 2).await;

    // A client holding a real key of principal 40 cannot claim principal
    // 41's ids, nor a member's.
    let client = Credentials::Client(cluster.client_credentials(40));
    for hello in [Hello::new(Role::Client, 41 << 16), Hello::new(Role::Member, 2)] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        write_frame(&mut stream, &hello.encode()).await;
        let answer = read_frame(&mut stream).await;
        assert!(auth::initiate(&client, &hello, &answer).is_err());
        assert_disconnected(stream).await;
    }
    let stolen_id = RealEnv::client_as(41 << 16, &cluster.client_credentials(40), &cluster.peers);
    assert!(
        stolen_id.is_err(),
        "a client id outside the principal is refused locally"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_principal_cannot_take_every_connection_slot() {
    let cluster = Cluster::start(&[1]).await;
    let addr = cluster.node(1).local_addr().unwrap();
    let greedy = cluster.client_credentials(40);
    let credentials = Credentials::Client(greedy.clone());
    // Hellos that claim principal 40 but never prove it, held open: they
    // must not use up its slots.
    let mut squatters = Vec::new();
    for instance in 0..MAX_CONNECTIONS_PER_PRINCIPAL as u32 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        write_frame(
            &mut stream,
            &Hello::new(Role::Client, (40 << 16) | (2000 + instance)).encode(),
        )
        .await;
        read_frame(&mut stream).await;
        squatters.push(stream);
    }
    let mut held = Vec::new();
    for instance in 0..MAX_CONNECTIONS_PER_PRINCIPAL as u32 {
        let hello = Hello::new(Role::Client, 40 << 16 | instance);
        held.push(raw_handshake(addr, &credentials, hello).await);
    }
    // The node takes a slot once it has checked a proof: let it finish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // One more of the same principal is refused once it has proven itself...
    let (extra, _) = raw_handshake(addr, &credentials, Hello::new(Role::Client, 40 << 16 | 999)).await;
    assert_disconnected(extra).await;
    // ...while another principal is served.
    let servers: BTreeMap<NodeId, SocketAddr> = [(1, addr)].into_iter().collect();
    let polite = RealEnv::client(&cluster.client_credentials(FIRST_PRINCIPAL), &servers);
    send_until_received(&polite, cluster.node(1), b"ping").await;
    send_until_received(cluster.node(1), &polite, b"pong").await;
}

/// Idle connections cannot pile up at a node: a silent client is
/// disconnected (the node can no longer reach it), and it reconnects by
/// itself the next time it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_are_closed_and_reopened_on_demand() {
    let limits = Limits {
        client_idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let cluster = Cluster::start_with(&[1], limits).await;
    let servers: BTreeMap<NodeId, SocketAddr> = [(1, cluster.node(1).local_addr().unwrap())].into();
    let client = RealEnv::client(&cluster.client_credentials(FIRST_PRINCIPAL), &servers);
    send_until_received(&client, cluster.node(1), b"ping").await;
    send_until_received(cluster.node(1), &client, b"pong").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        cluster.node(1).send(client.id(), b"anyone?".to_vec()).await,
        Err(EnvError::UnknownPeer(client.id())),
        "the idle client's connection was closed"
    );
    send_until_received(&client, cluster.node(1), b"back").await;
    send_until_received(cluster.node(1), &client, b"welcome back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_answered_on_their_own_connection() {
    let cluster = Cluster::start(&[1, 2]).await;
    let servers: BTreeMap<NodeId, _> = [1, 2]
        .into_iter()
        .map(|id| (id, cluster.node(id).local_addr().unwrap()))
        .collect();
    let credentials = cluster.client_credentials(FIRST_PRINCIPAL);
    let client = RealEnv::client(&credentials, &servers);
    for server in [1, 2] {
        send_until_received(&client, cluster.node(server), b"ping").await;
        send_until_received(cluster.node(server), &client, b"pong").await;
    }
    // A second client with the same id takes over the answers.
    let again = RealEnv::client_as(client.id(), &credentials, &servers).unwrap();
    send_until_received(&again, cluster.node(1), b"ping").await;
    send_until_received(cluster.node(1), &again, b"pong").await;
    // Clients keep nothing on disk.
    assert!(client.append(b"x").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_spawned_tasks() {
    let cluster = Cluster::start(&[1]).await;
    let env = cluster.node(1).clone();
    let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = ticks.clone();
    let sleeper = env.clone();
    env.spawn(async move {
        loop {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            sleeper.sleep(Duration::from_millis(5)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    env.shutdown();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stopped = ticks.load(std::sync::atomic::Ordering::SeqCst);
    assert!(stopped > 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ticks.load(std::sync::atomic::Ordering::SeqCst), stopped);
}

proptest::proptest! {
    /// Whatever a peer sends, in whatever pieces, decoding never panics and
    /// never yields a frame over the limit.
    #[test]
    fn frame_decoder_never_panics(
        chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..64), 0..16)
    ) {
        let mut codec = frame_codec();
        let mut buf = bytes::BytesMut::new();
        'feed: for chunk in chunks {
            buf.extend_from_slice(&chunk);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        proptest::prop_assert!(frame.len() <= MAX_MESSAGE_BYTES + auth::TAG_BYTES);
                        let _ = Hello::decode(&frame);
                    }
                    Ok(None) => break,
                    Err(_) => break 'feed, // the connection would be dropped here
                }
            }
        }
    }

    #[test]
    fn hellos_round_trip(id in proptest::num::u32::ANY, client in proptest::bool::ANY) {
        let hello = Hello::new(if client { Role::Client } else { Role::Member }, id);
        proptest::prop_assert_eq!(Hello::decode(&hello.encode()), Ok(hello));
    }
}
