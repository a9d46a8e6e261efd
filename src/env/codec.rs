//! The wire and storage codec: serde with postcard's compact binary format,
//! with a size limit checked before anything is allocated for the peer.

use serde::{de::DeserializeOwned, Serialize};

use super::MAX_MESSAGE_BYTES;

/// A message or record that could not be encoded or decoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    #[error("{size} bytes exceed the {max}-byte limit")]
    /// The encoding would exceed the limit.
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes do not decode as the expected type.
    #[error("malformed: {0}")]
    Malformed(String),
}

/// Largest encoded state (a snapshot): 4 GiB. A state travels and is
/// stored in chunks, so it may be far larger than a message or a record;
/// what a replica accepts is its configuration's `max_snapshot_bytes`.
pub const MAX_STATE_BYTES: usize = 1 << 32;

/// Serializes `value`, refusing results larger than [`MAX_MESSAGE_BYTES`].
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_within(value, MAX_MESSAGE_BYTES)
}

/// Deserializes bytes from a peer or a disk. Never panics; trailing bytes are
/// an error, since a well-formed sender never produces them.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_within(bytes, MAX_MESSAGE_BYTES)
}

/// [`encode`] for a state, up to [`MAX_STATE_BYTES`].
pub fn encode_state<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_within(value, MAX_STATE_BYTES)
}

/// [`decode`] for a state or a log record, up to [`MAX_STATE_BYTES`].
pub fn decode_state<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_within(bytes, MAX_STATE_BYTES)
}

fn encode_within<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>, CodecError> {
    let bytes = postcard::to_stdvec(value).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if bytes.len() > max {
        return Err(CodecError::TooLarge { size: bytes.len(), max });
    }
    Ok(bytes)
}

fn decode_within<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, CodecError> {
    if bytes.len() > max {
        return Err(CodecError::TooLarge { size: bytes.len(), max });
    }
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    enum Msg {
        Ping(u64),
        Data { key: String, value: Vec<u8> },
    }

    #[test]
    fn round_trips() {
        let msg = Msg::Data {
            key: "k".into(),
            value: vec![1, 2, 3],
        };
        assert_eq!(decode::<Msg>(&encode(&msg).unwrap()).unwrap(), msg);
    }

    #[test]
    fn rejects_trailing_and_truncated_bytes() {
        let mut bytes = encode(&Msg::Ping(7)).unwrap();
        bytes.push(0);
        assert!(matches!(decode::<Msg>(&bytes), Err(CodecError::Malformed(_))));
        assert!(decode::<Msg>(&[]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode::<Msg>(&bytes);
        }
    }
}
