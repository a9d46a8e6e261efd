//! Who is on the other end of a connection: a cluster secret, keys derived
//! from it per identity, a mutual HMAC challenge before anything else, and a
//! tag on every later frame.
//!
//! Identities and their keys (HMAC-SHA256 throughout, from the `hmac` and
//! `sha2` crates):
//! - **members** (the node ids of a peer map) hold the 32-byte cluster
//!   secret and derive every other key from it: member `i`'s key is
//!   `HMAC(secret, "ringfence member" ‖ i)`;
//! - **clients** hold only the key of their *principal* `p`,
//!   `HMAC(secret, "ringfence client" ‖ p)`, and may use only the node ids
//!   `p << 16 | instance` ([`principal_of`]). A client can therefore be no
//!   member and no other principal; a member could be any identity, so all
//!   members are equally trusted (see `docs/security.md`).
//!
//! The handshake, on a fresh TCP connection, as three frames:
//! 1. initiator → acceptor: `magic ‖ id ‖ nonce_i` ([`Hello`]);
//! 2. acceptor → initiator: `nonce_a ‖ HMAC(k, "accept" ‖ hello ‖ nonce_a)`,
//!    where `k` is the key of the identity the initiator claims — only a
//!    member can compute it, so the initiator knows it reached the cluster;
//! 3. initiator → acceptor: `HMAC(k, "initiate" ‖ hello ‖ nonce_a)`, which
//!    proves the initiator holds `k`.
//!
//! Both nonces are fresh, so a recorded handshake cannot be replayed. After
//! it, every frame in either direction carries a 16-byte tag,
//! `HMAC(session, direction ‖ counter ‖ payload)` with
//! `session = HMAC(k, "session" ‖ nonce_i ‖ nonce_a)`: a frame injected,
//! altered, replayed or reordered on the connection fails its tag and the
//! connection is dropped. Frames are authenticated, not encrypted.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};
use rand::RngCore;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::env::NodeId;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the tag on every frame after the handshake.
pub const TAG_BYTES: usize = 16;
/// Bytes of each side's handshake nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes of a key or the cluster secret.
pub const KEY_BYTES: usize = 32;

/// First bytes of a connection from a member: protocol name and version.
pub const MEMBER_MAGIC: [u8; 4] = *b"RFN2";
/// First bytes of a connection from a client, which is answered on it.
pub const CLIENT_MAGIC: [u8; 4] = *b"RFC2";

/// The lowest principal; principals below would name member ids.
pub const FIRST_PRINCIPAL: u32 = 16;

/// The principal of operators: its node ids are
/// [`crate::log::membership::OPERATOR_IDS`], the only ones whose
/// configuration requests the services pass on. Its key is derived from
/// the secret apart from every client's, and never written to a file: an
/// operator command reads the secret (it runs where a node's files are).
pub const OPERATOR_PRINCIPAL: u32 = 1;

/// The principal a client node id belongs to (its upper 16 bits).
pub fn principal_of(id: NodeId) -> u32 {
    id >> 16
}

/// A key: the cluster secret or one derived from it. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_BYTES]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Why credentials could not be read or used.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's message says what it means
pub enum CredentialError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("cannot write {path}: {error}")]
    Write { path: String, error: std::io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl Key {
    /// A fresh random key from the OS-seeded ChaCha20 generator.
    pub fn generate() -> Key {
        let mut bytes = [0; KEY_BYTES];
        ChaCha20Rng::from_entropy().fill_bytes(&mut bytes);
        Key(bytes)
    }

    /// The key with these bytes.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Key {
        Key(bytes)
    }

    fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn from_hex(text: &str) -> Result<Key, String> {
        let bytes = hex::decode(text.trim()).map_err(|e| format!("not a hex key: {e}"))?;
        let bytes: [u8; KEY_BYTES] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("a key has {KEY_BYTES} bytes, this one {}", b.len()))?;
        Ok(Key(bytes))
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length")
    }

    fn derive(&self, parts: &[&[u8]]) -> Key {
        let mut mac = self.mac();
        for part in parts {
            mac.update(part);
        }
        Key(mac.finalize().into_bytes().into())
    }
}

/// The cluster secret, held by members only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSecret(pub Key);

impl ClusterSecret {
    /// A fresh random cluster secret.
    pub fn generate() -> ClusterSecret {
        ClusterSecret(Key::generate())
    }

    /// The key of member `id`.
    pub fn member_key(&self, id: NodeId) -> Key {
        self.0.derive(&[b"ringfence member", &id.to_le_bytes()])
    }

    /// The key of client principal `principal`.
    pub fn client_key(&self, principal: u32) -> Key {
        self.0.derive(&[b"ringfence client", &principal.to_le_bytes()])
    }

    /// The key of the operators' principal ([`OPERATOR_PRINCIPAL`]).
    fn operator_key(&self) -> Key {
        self.0.derive(&[b"ringfence operator"])
    }

    /// Credentials of an operator: a client that may reconfigure groups.
    pub fn operator_credentials(&self) -> ClientCredentials {
        ClientCredentials {
            principal: OPERATOR_PRINCIPAL,
            key: self.operator_key(),
        }
    }

    /// Credentials for client principal `principal` (must be at least
    /// [`FIRST_PRINCIPAL`] and below 2^16).
    pub fn client_credentials(&self, principal: u32) -> Result<ClientCredentials, String> {
        check_principal(principal)?;
        Ok(ClientCredentials {
            principal,
            key: self.client_key(principal),
        })
    }

    /// Reads a secret file (64 hex digits).
    pub fn load(path: &Path) -> Result<ClusterSecret, CredentialError> {
        let text = read(path)?;
        Key::from_hex(&text)
            .map(ClusterSecret)
            .map_err(|reason| invalid(path, reason))
    }

    /// Writes the secret, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), CredentialError> {
        write_private(path, &format!("{}\n", self.0.to_hex()))
    }
}

fn check_principal(principal: u32) -> Result<(), String> {
    if (FIRST_PRINCIPAL..1 << 16).contains(&principal) {
        Ok(())
    } else {
        Err(format!(
            "principal {principal} is outside {FIRST_PRINCIPAL}..{}",
            1u32 << 16
        ))
    }
}

/// What a client needs to connect: its principal and that principal's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    /// The principal (`client id >> 16`) these credentials speak for.
    pub principal: u32,
    key: Key,
}

/// The client key file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientKeyFile {
    principal: u32,
    key: String,
}

impl ClientCredentials {
    /// A node id of this principal with a random instance number, so that
    /// processes sharing the credentials do not collide.
    pub fn random_id(&self) -> NodeId {
        let instance = ChaCha20Rng::from_entropy().next_u32() & 0xffff;
        self.principal << 16 | instance
    }

    /// Whether `id` belongs to this principal.
    pub fn owns(&self, id: NodeId) -> bool {
        principal_of(id) == self.principal
    }

    /// Reads a client key file (principal and key).
    pub fn load(path: &Path) -> Result<ClientCredentials, CredentialError> {
        let text = read(path)?;
        let file: ClientKeyFile = toml::from_str(&text).map_err(|e| invalid(path, e.to_string()))?;
        check_principal(file.principal).map_err(|reason| invalid(path, reason))?;
        let key = Key::from_hex(&file.key).map_err(|reason| invalid(path, reason))?;
        Ok(ClientCredentials {
            principal: file.principal,
            key,
        })
    }

    /// Writes a client key file, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), CredentialError> {
        let file = ClientKeyFile {
            principal: self.principal,
            key: self.key.to_hex(),
        };
        write_private(path, &toml::to_string(&file).expect("plain fields serialize"))
    }
}

fn read(path: &Path) -> Result<String, CredentialError> {
    std::fs::read_to_string(path).map_err(|error| CredentialError::Read {
        path: path.display().to_string(),
        error,
    })
}

fn invalid(path: &Path, reason: String) -> CredentialError {
    CredentialError::Invalid {
        path: path.display().to_string(),
        reason,
    }
}

/// Creates `path` with owner-only permissions (on unix) and writes `text`.
fn write_private(path: &Path, text: &str) -> Result<(), CredentialError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .map_err(|error| CredentialError::Write {
            path: path.display().to_string(),
            error,
        })
}

/// What one end of a connection can prove.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A member: knows the secret, so it can check anyone.
    Member(ClusterSecret),
    /// A client: knows its own principal's key only.
    Client(ClientCredentials),
}

impl Credentials {
    /// The key for the identity `hello` claims, if these credentials can
    /// know it (a client knows only its own).
    fn key_for(&self, hello: &Hello) -> Option<Key> {
        match (self, hello.role) {
            (Credentials::Member(secret), Role::Member) => Some(secret.member_key(hello.id)),
            (Credentials::Member(secret), Role::Client) if principal_of(hello.id) == OPERATOR_PRINCIPAL => {
                Some(secret.operator_key())
            }
            (Credentials::Member(secret), Role::Client) => {
                check_principal(principal_of(hello.id)).ok()?;
                Some(secret.client_key(principal_of(hello.id)))
            }
            (Credentials::Client(own), Role::Client) if own.owns(hello.id) => Some(own.key.clone()),
            (Credentials::Client(_), _) => None,
        }
    }
}

/// Which side of the cluster a connection's initiator is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A member of the peer map; its connection only carries messages in.
    Member,
    /// A client; its connection carries the node's answers back out too.
    Client,
}

/// The first frame of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Member or client.
    pub role: Role,
    /// The id the initiator claims.
    pub id: NodeId,
    /// The initiator's fresh nonce.
    pub nonce: [u8; NONCE_BYTES],
}

impl Hello {
    /// A hello with a fresh nonce.
    pub fn new(role: Role, id: NodeId) -> Hello {
        let mut nonce = [0; NONCE_BYTES];
        ChaCha20Rng::from_entropy().fill_bytes(&mut nonce);
        Hello { role, id, nonce }
    }

    /// The hello as a frame.
    pub fn encode(&self) -> Vec<u8> {
        let magic = match self.role {
            Role::Member => MEMBER_MAGIC,
            Role::Client => CLIENT_MAGIC,
        };
        let mut frame = Vec::with_capacity(8 + NONCE_BYTES);
        frame.extend_from_slice(&magic);
        frame.extend_from_slice(&self.id.to_le_bytes());
        frame.extend_from_slice(&self.nonce);
        frame
    }

    /// Reads a hello frame.
    pub fn decode(frame: &[u8]) -> Result<Hello, HandshakeError> {
        if frame.len() != 8 + NONCE_BYTES {
            return Err(HandshakeError::Malformed("hello of the wrong length"));
        }
        let role = match frame[..4] {
            [m0, m1, m2, m3] if [m0, m1, m2, m3] == MEMBER_MAGIC => Role::Member,
            [m0, m1, m2, m3] if [m0, m1, m2, m3] == CLIENT_MAGIC => Role::Client,
            _ => return Err(HandshakeError::Malformed("not a ringfence hello")),
        };
        let id = NodeId::from_le_bytes(frame[4..8].try_into().expect("4 bytes"));
        let nonce = frame[8..].try_into().expect("nonce length checked");
        Ok(Hello { role, id, nonce })
    }
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // each variant's message says what it means
pub enum HandshakeError {
    #[error("malformed handshake: {0}")]
    Malformed(&'static str),
    #[error("identity {0} is not one these credentials can check")]
    UnknownIdentity(NodeId),
    #[error("the peer failed to prove its identity (wrong key or secret)")]
    BadProof,
}

/// The acceptor's answer to a hello: its nonce and its proof.
pub fn accept(credentials: &Credentials, hello: &Hello) -> Result<(Vec<u8>, Pending), HandshakeError> {
    let key = credentials
        .key_for(hello)
        .ok_or(HandshakeError::UnknownIdentity(hello.id))?;
    let mut nonce = [0; NONCE_BYTES];
    ChaCha20Rng::from_entropy().fill_bytes(&mut nonce);
    let mut frame = nonce.to_vec();
    frame.extend_from_slice(&proof(&key, b"accept", hello, &nonce));
    let pending = Pending {
        key,
        hello: hello.clone(),
        nonce,
    };
    Ok((frame, pending))
}

/// An accepted hello waiting for the initiator's proof.
pub struct Pending {
    key: Key,
    hello: Hello,
    nonce: [u8; NONCE_BYTES],
}

impl Pending {
    /// Checks the initiator's proof; the keys for the rest of the connection.
    pub fn finish(self, frame: &[u8]) -> Result<FrameKeys, HandshakeError> {
        verify(&self.key, b"initiate", &self.hello, &self.nonce, frame)?;
        Ok(FrameKeys::new(
            &self.key,
            &self.hello,
            &self.nonce,
            Direction::FromAcceptor,
        ))
    }
}

/// The initiator's side: checks the acceptor's answer to `hello`, returns
/// its own proof and the keys for the rest of the connection.
pub fn initiate(
    credentials: &Credentials,
    hello: &Hello,
    answer: &[u8],
) -> Result<(Vec<u8>, FrameKeys), HandshakeError> {
    let key = credentials
        .key_for(hello)
        .ok_or(HandshakeError::UnknownIdentity(hello.id))?;
    if answer.len() != NONCE_BYTES + 32 {
        return Err(HandshakeError::Malformed("answer of the wrong length"));
    }
    let nonce: [u8; NONCE_BYTES] = answer[..NONCE_BYTES].try_into().expect("length checked");
    verify(&key, b"accept", hello, &nonce, &answer[NONCE_BYTES..])?;
    let own = proof(&key, b"initiate", hello, &nonce).to_vec();
    Ok((own, FrameKeys::new(&key, hello, &nonce, Direction::FromInitiator)))
}

fn proof_mac(key: &Key, label: &[u8], hello: &Hello, nonce: &[u8; NONCE_BYTES]) -> HmacSha256 {
    let mut mac = key.mac();
    mac.update(label);
    mac.update(&hello.encode());
    mac.update(nonce);
    mac
}

fn proof(key: &Key, label: &[u8], hello: &Hello, nonce: &[u8; NONCE_BYTES]) -> [u8; 32] {
    proof_mac(key, label, hello, nonce).finalize().into_bytes().into()
}

fn verify(key: &Key, label: &[u8], hello: &Hello, nonce: &[u8; NONCE_BYTES], tag: &[u8]) -> Result<(), HandshakeError> {
    proof_mac(key, label, hello, nonce)
        .verify_slice(tag)
        .map_err(|_| HandshakeError::BadProof)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    FromInitiator,
    FromAcceptor,
}

/// The per-connection keys: one [`Sealer`] for what this end sends, one
/// [`Opener`] for what it receives.
pub struct FrameKeys {
    /// Tags what this end sends.
    pub sealer: Sealer,
    /// Checks what this end receives.
    pub opener: Opener,
}

impl FrameKeys {
    fn new(key: &Key, hello: &Hello, acceptor_nonce: &[u8; NONCE_BYTES], own: Direction) -> FrameKeys {
        let session = key.derive(&[b"session", &hello.nonce, acceptor_nonce]);
        let (out_label, in_label): (&[u8], &[u8]) = match own {
            Direction::FromInitiator => (b"initiator", b"acceptor"),
            Direction::FromAcceptor => (b"acceptor", b"initiator"),
        };
        let keyed = |label: &[u8]| {
            let mut mac = session.mac();
            mac.update(label);
            mac
        };
        FrameKeys {
            sealer: Sealer {
                mac: keyed(out_label),
                counter: 0,
            },
            opener: Opener {
                mac: keyed(in_label),
                counter: 0,
            },
        }
    }
}

fn tag(mac: &HmacSha256, counter: u64, payload: &[u8]) -> [u8; TAG_BYTES] {
    let mut mac = mac.clone();
    mac.update(&counter.to_le_bytes());
    mac.update(payload);
    let full = mac.finalize().into_bytes();
    full[..TAG_BYTES].try_into().expect("a SHA-256 tag is longer")
}

/// Tags outgoing frames, numbering them.
pub struct Sealer {
    mac: HmacSha256,
    counter: u64,
}

impl Sealer {
    /// `payload ‖ tag`, appending the tag in place (no copy of the payload
    /// on the send path).
    pub fn seal(&mut self, mut payload: Vec<u8>) -> Vec<u8> {
        let tag = tag(&self.mac, self.counter, &payload);
        self.counter += 1;
        payload.extend_from_slice(&tag);
        payload
    }
}

/// Checks incoming frames' tags, in order.
pub struct Opener {
    mac: HmacSha256,
    counter: u64,
}

/// A frame whose tag does not verify: injected, altered, replayed or
/// reordered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("frame {0} failed its authentication tag")]
pub struct BadTag(pub u64);

impl Opener {
    /// The payload of `frame` if its tag verifies (constant-time compare).
    pub fn open<'a>(&mut self, frame: &'a [u8]) -> Result<&'a [u8], BadTag> {
        let Some(split) = frame.len().checked_sub(TAG_BYTES) else {
            return Err(BadTag(self.counter));
        };
        let (payload, got) = frame.split_at(split);
        let mut mac = self.mac.clone();
        mac.update(&self.counter.to_le_bytes());
        mac.update(payload);
        mac.verify_truncated_left(got).map_err(|_| BadTag(self.counter))?;
        self.counter += 1;
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(
        initiator: &Credentials,
        acceptor: &Credentials,
        hello: Hello,
    ) -> Result<(FrameKeys, FrameKeys), HandshakeError> {
        let (answer, pending) = accept(acceptor, &hello)?;
        let (proof, initiator_keys) = initiate(initiator, &hello, &answer)?;
        let acceptor_keys = pending.finish(&proof)?;
        Ok((initiator_keys, acceptor_keys))
    }

    #[test]
    fn members_and_clients_authenticate_and_exchange_tagged_frames() {
        let secret = ClusterSecret::generate();
        let member = Credentials::Member(secret.clone());
        let (mut a, mut b) = handshake(&member, &member, Hello::new(Role::Member, 2)).unwrap();
        let frame = a.sealer.seal(b"hello".to_vec());
        assert_eq!(b.opener.open(&frame).unwrap(), b"hello");
        let back = b.sealer.seal(b"back".to_vec());
        assert_eq!(a.opener.open(&back).unwrap(), b"back");

        let creds = secret.client_credentials(40).unwrap();
        let id = creds.random_id();
        assert_eq!(principal_of(id), 40);
        assert!(handshake(&Credentials::Client(creds), &member, Hello::new(Role::Client, id)).is_ok());
    }

    #[test]
    fn a_client_cannot_claim_a_member_or_another_principal() {
        let secret = ClusterSecret::generate();
        let member = Credentials::Member(secret.clone());
        let client = Credentials::Client(secret.client_credentials(40).unwrap());
        // It does not hold those keys, so it cannot even start.
        assert!(handshake(&client, &member, Hello::new(Role::Member, 2)).is_err());
        assert!(handshake(&client, &member, Hello::new(Role::Client, 41 << 16)).is_err());
        // Forging the proof with its own key fails at the acceptor.
        let hello = Hello::new(Role::Client, 41 << 16);
        let (answer, pending) = accept(&member, &hello).unwrap();
        let own_key = secret.client_key(40);
        let forged = proof(
            &own_key,
            b"initiate",
            &hello,
            &answer[..NONCE_BYTES].try_into().unwrap(),
        );
        assert_eq!(pending.finish(&forged).err(), Some(HandshakeError::BadProof));
    }

    #[test]
    fn only_the_secret_makes_an_operator() {
        let secret = ClusterSecret::generate();
        let member = Credentials::Member(secret.clone());
        let operator = secret.operator_credentials();
        let id = operator.random_id();
        assert!(crate::log::membership::is_operator(id));
        assert!(handshake(&Credentials::Client(operator), &member, Hello::new(Role::Client, id)).is_ok());
        // A client cannot claim an operator's id, with its own key or any
        // other principal's, and no key file holds an operator's.
        let client = secret.client_credentials(16).unwrap();
        assert!(handshake(&Credentials::Client(client), &member, Hello::new(Role::Client, id)).is_err());
        let hello = Hello::new(Role::Client, id);
        let (answer, pending) = accept(&member, &hello).unwrap();
        let nonce = answer[..NONCE_BYTES].try_into().unwrap();
        let forged = proof(&secret.client_key(OPERATOR_PRINCIPAL), b"initiate", &hello, &nonce);
        assert_eq!(pending.finish(&forged).err(), Some(HandshakeError::BadProof));
        assert!(secret.client_credentials(OPERATOR_PRINCIPAL).is_err());
    }

    #[test]
    fn another_clusters_secret_is_refused_both_ways() {
        let ours = Credentials::Member(ClusterSecret::generate());
        let theirs = Credentials::Member(ClusterSecret::generate());
        assert_eq!(
            handshake(&theirs, &ours, Hello::new(Role::Member, 2)).err(),
            Some(HandshakeError::BadProof)
        );
    }

    #[test]
    fn altered_replayed_or_reordered_frames_fail_their_tag() {
        let member = Credentials::Member(ClusterSecret::generate());
        let (mut a, mut b) = handshake(&member, &member, Hello::new(Role::Member, 2)).unwrap();
        let first = a.sealer.seal(b"first".to_vec());
        let second = a.sealer.seal(b"second".to_vec());
        let mut altered = first.clone();
        altered[0] ^= 1;
        assert!(b.opener.open(&altered).is_err());
        assert!(b.opener.open(&second).is_err(), "out of order");
        assert!(b.opener.open(&first).is_ok());
        assert!(b.opener.open(&first).is_err(), "replayed");
        assert!(b.opener.open(&[0; 3]).is_err(), "shorter than a tag");
    }

    #[test]
    fn credentials_round_trip_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = ClusterSecret::generate();
        secret.save(&dir.path().join("s")).unwrap();
        assert_eq!(ClusterSecret::load(&dir.path().join("s")).unwrap(), secret);
        let creds = secret.client_credentials(16).unwrap();
        creds.save(&dir.path().join("c")).unwrap();
        assert_eq!(ClientCredentials::load(&dir.path().join("c")).unwrap(), creds);
        std::fs::write(dir.path().join("bad"), "zz").unwrap();
        assert!(ClusterSecret::load(&dir.path().join("bad")).is_err());
        assert!(secret.client_credentials(3).is_err());
    }

    proptest::proptest! {
        #[test]
        fn hello_decoding_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = Hello::decode(&bytes);
        }
    }
}
