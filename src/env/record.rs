//! On-disk framing of storage records, shared by the simulated disk and the
//! real files so that the simulator exercises the same recovery code.
//!
//! A record is `len: u32 LE | crc32(payload): u32 LE | payload`. Recovery
//! reads records until the bytes run out. A record cut short at the very end
//! of the log, or whose checksum fails as the last record, is a torn write:
//! the crash interrupted it, it was never synced, and it is dropped. Any other
//! damage (a bad record followed by more data) is corruption and an error,
//! because silently dropping synced records would lose acknowledged writes.

/// Bytes of framing before each payload.
pub const HEADER_BYTES: usize = 8;

/// Largest record accepted; a larger length field means corruption.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// Damage that is not a torn tail.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("corrupt record at byte offset {offset}: {reason}")]
pub struct CorruptRecord {
    /// Offset of the damaged record's header from the start of the log.
    pub offset: usize,
    /// What was wrong with it.
    pub reason: &'static str,
}

/// The records recovered from a log, and how many bytes of it are valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub records: Vec<Vec<u8>>,
    /// Length of the valid prefix; bytes after it are a torn tail to truncate.
    pub valid_len: usize,
}

/// Appends one framed record to `out`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    assert!(
        payload.len() <= MAX_RECORD_BYTES,
        "record of {} bytes exceeds the limit",
        payload.len()
    );
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Parses a whole log. Never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Recovered, CorruptRecord> {
    let mut records = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        if rest.len() < HEADER_BYTES {
            break; // torn header at the tail
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len > MAX_RECORD_BYTES {
            return Err(CorruptRecord {
                offset,
                reason: "length field exceeds the record limit",
            });
        }
        let end = HEADER_BYTES + len;
        if rest.len() < end {
            break; // torn payload at the tail
        }
        let payload = &rest[HEADER_BYTES..end];
        if crc32fast::hash(payload) != crc {
            if rest.len() == end {
                break; // the last record is torn
            }
            return Err(CorruptRecord {
                offset,
                reason: "checksum mismatch",
            });
        }
        records.push(payload.to_vec());
        offset += end;
    }
    Ok(Recovered {
        records,
        valid_len: offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode(p, &mut out);
        }
        out
    }

    #[test]
    fn round_trips_records() {
        let bytes = log_of(&[b"a", b"", b"hello"]);
        let got = decode(&bytes).unwrap();
        assert_eq!(got.records, vec![b"a".to_vec(), vec![], b"hello".to_vec()]);
        assert_eq!(got.valid_len, bytes.len());
    }

    #[test]
    fn drops_a_torn_tail_at_every_cut() {
        let bytes = log_of(&[b"first", b"second"]);
        let first_len = HEADER_BYTES + 5;
        for cut in first_len..bytes.len() {
            let got = decode(&bytes[..cut]).unwrap();
            assert_eq!(got.records, vec![b"first".to_vec()], "cut at {cut}");
            assert_eq!(got.valid_len, first_len);
        }
    }

    #[test]
    fn drops_a_garbled_last_record() {
        let mut bytes = log_of(&[b"first", b"second"]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert_eq!(decode(&bytes).unwrap().records.len(), 1);
    }

    #[test]
    fn reports_damage_in_the_middle_with_its_offset() {
        let mut bytes = log_of(&[b"first", b"second", b"third"]);
        bytes[HEADER_BYTES + 1] ^= 0xff;
        assert_eq!(
            decode(&bytes),
            Err(CorruptRecord {
                offset: 0,
                reason: "checksum mismatch"
            })
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(&bytes);
        }
    }
}
