//! [`FencedResource`]: the storage side of fencing. A lock alone cannot stop
//! a holder that was paused, partitioned or slowed after checking its lease;
//! the resource can, by refusing any access whose token is lower than the
//! highest it has accepted. Reads are fenced too: a read-modify-write whose
//! read is not fenced can still lose an increment (the old holder reads,
//! the new one reads and writes, the old one's write carries a token that
//! is no longer the highest only if the new holder's *read* raised it).
//!
//! [`serve`] runs one as a network node (its state synced before every
//! answer, so the fence survives crashes) and [`call`] is its client.
//! [`serve_recorded`] also reports every access it made durable: the ground
//! truth a checker judges, whatever the callers heard.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::machine::Token;
use crate::env::retry::Retry;
use crate::env::{codec, Env, NodeId};

/// Why an access was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("stale token: {token} < highest accepted {highest}")]
pub struct Stale {
    /// The token the access carried.
    pub token: Token,
    /// The highest token the resource had accepted.
    pub highest: Token,
}

/// A single fenced register (here: a counter value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FencedResource {
    highest: Token,
    value: u64,
    /// Accesses accepted so far: their order, for checkers.
    accepted: u64,
    /// Planted bug `NoFencing`: accept every token.
    no_fencing: bool,
}

impl FencedResource {
    /// A resource that has accepted no token yet (value 0).
    ///
    /// ```
    /// use ringfence::lock::FencedResource;
    /// let mut r = FencedResource::new();
    /// r.write(7, 1).unwrap(); // the holder with token 7 writes
    /// assert!(r.write(5, 2).is_err()); // an older holder is refused
    /// assert_eq!(r.value(), 1);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The planted bug: a resource that trusts every caller.
    #[cfg(feature = "planted-bugs")]
    #[doc(hidden)]
    pub fn without_fencing() -> Self {
        FencedResource {
            no_fencing: true,
            ..Self::default()
        }
    }

    fn admit(&mut self, token: Token) -> Result<u64, Stale> {
        if token < self.highest && !self.no_fencing {
            return Err(Stale {
                token,
                highest: self.highest,
            });
        }
        self.highest = self.highest.max(token);
        self.accepted += 1;
        Ok(self.accepted)
    }

    /// Reads the value; returns it with the access's position.
    pub fn read(&mut self, token: Token) -> Result<(u64, u64), Stale> {
        let seq = self.admit(token)?;
        Ok((self.value, seq))
    }

    /// Writes the value; returns the access's position.
    pub fn write(&mut self, token: Token, value: u64) -> Result<u64, Stale> {
        let seq = self.admit(token)?;
        self.value = value;
        Ok(seq)
    }

    /// The highest token accepted so far.
    pub fn highest(&self) -> Token {
        self.highest
    }

    /// The value last written.
    pub fn value(&self) -> u64 {
        self.value
    }
}

/// A request to a resource node. `req` numbers a client's requests under
/// one token, so that retries and network duplicates are answered, not
/// applied, again; a request under an older token than the client's last
/// is a late copy of a finished series and is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResourceRequest {
    /// Read the value under `token`.
    Read {
        /// The client's request number.
        req: u64,
        /// The caller's fencing token.
        token: Token,
    },
    /// Write `value` under `token`.
    Write {
        /// The client's request number.
        req: u64,
        /// The caller's fencing token.
        token: Token,
        /// The value to write.
        value: u64,
    },
}

/// The answer: `(value, position)` for reads, `(written, position)` for writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceReply {
    /// The request answered.
    pub req: u64,
    /// Its result.
    pub result: Result<(u64, u64), Stale>,
}

/// Resource traffic is tagged, so it never decodes as another protocol's
/// message on a node that speaks both (a lock client's inbox).
const TAG: u8 = 0xFE;

#[derive(Serialize, Deserialize)]
struct Tagged<T> {
    tag: u8,
    body: T,
}

fn encode<T: Serialize>(body: T) -> Vec<u8> {
    codec::encode(&Tagged { tag: TAG, body }).expect("resource messages are small")
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    if bytes.first() != Some(&TAG) {
        return None;
    }
    codec::decode::<Tagged<T>>(bytes).ok().map(|t| t.body)
}

/// An access's answer: `(value, position)` or the refusal.
pub type AccessResult = Result<(u64, u64), Stale>;

/// One access a resource node applied and synced, as it saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The node that sent the request.
    pub from: NodeId,
    /// The fencing token the access carried.
    pub token: Token,
    /// The access's position in the resource's acceptance order.
    pub seq: u64,
    /// The value read, or the value written.
    pub value: u64,
    /// A write (else a read).
    pub write: bool,
}

#[derive(Default, Serialize, Deserialize)]
struct Durable {
    resource: FencedResource,
    /// Per client: the token its last request carried, the request's
    /// number and the answer. Requests are numbered per token, not per
    /// node: a client that restarts (and lost its count) holds a new
    /// token, so its new requests are never taken for old ones.
    last: BTreeMap<NodeId, (Token, u64, AccessResult)>,
}

/// Rewrite the disk after this many records.
const COMPACT_EVERY: usize = 256;

/// Runs a resource node until storage fails. Every answer is sent only
/// after the state it reports is synced.
pub async fn serve<E: Env>(env: E) -> Result<(), crate::env::EnvError> {
    serve_recorded(env, |_| {}).await
}

/// Planted bugs of a resource node, for the simulator's checkers to find.
#[cfg(feature = "planted-bugs")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceBug {
    /// Accept every token (no fencing at all).
    NoFencing,
    /// Apply a retried or duplicated request again instead of answering it
    /// from the table: a write delayed in the network lands twice.
    ReapplyRetries,
}

/// [`serve`], calling `record` with every access once it is durable (before
/// its answer is sent): a crash before the sync loses the access and it is
/// never recorded.
pub async fn serve_recorded<E: Env>(env: E, record: impl FnMut(Applied)) -> Result<(), crate::env::EnvError> {
    run(env, Bugs::default(), record).await
}

/// [`serve_recorded`] with a planted bug switched on.
#[cfg(feature = "planted-bugs")]
pub async fn serve_with_bug<E: Env>(
    env: E,
    bug: ResourceBug,
    record: impl FnMut(Applied),
) -> Result<(), crate::env::EnvError> {
    let bugs = Bugs {
        no_fencing: bug == ResourceBug::NoFencing,
        reapply: bug == ResourceBug::ReapplyRetries,
    };
    run(env, bugs, record).await
}

/// The planted bugs in force, all off unless the feature switches one on.
#[derive(Default)]
struct Bugs {
    no_fencing: bool,
    reapply: bool,
}

async fn run<E: Env>(env: E, bugs: Bugs, mut record: impl FnMut(Applied)) -> Result<(), crate::env::EnvError> {
    let reapply = bugs.reapply;
    let mut records = env.load()?.len();
    let mut state: Durable = env
        .load()?
        .last()
        .map(|r| codec::decode(r).expect("resource records decode"))
        .unwrap_or_default();
    state.resource.no_fencing = bugs.no_fencing;
    loop {
        let (from, bytes) = env.recv().await;
        let Some(request) = decode::<ResourceRequest>(&bytes) else {
            continue;
        };
        let (req, token, write) = match request {
            ResourceRequest::Read { req, token } => (req, token, false),
            ResourceRequest::Write { req, token, .. } => (req, token, true),
        };
        let result = match state.last.get(&from).filter(|_| !reapply) {
            // A copy from a series this client has moved on from.
            Some((t, _, _)) if token < *t => continue,
            Some((t, last, _)) if token == *t && req < *last => continue, // stale duplicate
            Some((t, last, result)) if token == *t && req == *last => *result,
            _ => {
                let result = match request {
                    ResourceRequest::Read { token, .. } => state.resource.read(token),
                    ResourceRequest::Write { token, value, .. } => {
                        state.resource.write(token, value).map(|seq| (value, seq))
                    }
                };
                state.last.insert(from, (token, req, result));
                let bytes = codec::encode(&state).expect("resource state encodes");
                if records >= COMPACT_EVERY {
                    env.rewrite(&[bytes]).await?;
                    records = 1;
                } else {
                    env.append(&bytes)?;
                    env.sync().await?;
                    records += 1;
                }
                if let Ok((value, seq)) = result {
                    record(Applied {
                        from,
                        token,
                        seq,
                        value,
                        write,
                    });
                }
                result
            }
        };
        let _ = env.send(from, encode(ResourceReply { req, result })).await;
    }
}

/// Sends `request` to the resource node until an answer comes (see
/// [`Retry::call`]); `None` if the outcome is unknown.
pub async fn call<E: Env>(
    env: &E,
    resource: NodeId,
    request: &ResourceRequest,
    retry: Retry,
) -> Option<Result<(u64, u64), Stale>> {
    let req = match request {
        ResourceRequest::Read { req, .. } | ResourceRequest::Write { req, .. } => *req,
    };
    retry
        .call(env, resource, &encode(request.clone()), |from, frame| {
            let reply = decode::<ResourceReply>(frame).filter(|r| from == resource && r.req == req)?;
            Some(reply.result)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_lower_tokens_after_a_higher_one() {
        let mut r = FencedResource::new();
        assert_eq!(r.read(5), Ok((0, 1)));
        assert_eq!(r.write(5, 1), Ok(2));
        assert_eq!(r.read(7), Ok((1, 3)));
        assert_eq!(r.write(5, 2), Err(Stale { token: 5, highest: 7 }));
        assert_eq!(r.write(7, 2), Ok(4));
        assert_eq!(r.value(), 2);
    }

    #[test]
    #[cfg(feature = "planted-bugs")]
    fn without_fencing_accepts_stale_writes() {
        let mut r = FencedResource::without_fencing();
        r.read(7).unwrap();
        assert!(r.write(5, 9).is_ok());
        assert_eq!(r.value(), 9);
    }

    #[test]
    fn tagged_messages_do_not_decode_as_log_traffic() {
        let bytes = encode(ResourceReply {
            req: 1,
            result: Ok((1, 1)),
        });
        type W = crate::log::WireOf<super::super::LockMachine>;
        assert!(codec::decode::<W>(&bytes).is_err());
    }
}
