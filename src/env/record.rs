//! On-disk framing of storage records, shared by the simulated disk and the
//! real files so that the simulator exercises the same recovery code.
//!
//! # Format
//!
//! A log is a sequence of *batches*, one per sync: the records appended
//! since the previous sync, written together and then fsynced. A batch is a
//! 32-byte header followed by its body:
//!
//! ```text
//! header: magic "RFB1" | header_crc u32 | seq u64 | prev u32 | count u32 | body_len u32 | body_crc u32
//! body:   count × (len u32 | payload)
//! ```
//!
//! - `header_crc` covers every other header field, so a flipped length (or
//!   any other header bit) is caught before the length is trusted.
//! - `seq` numbers the batches of a file from 0 and `prev` is the previous
//!   batch's `header_crc` (0 for the first): the checksums are chained, as in
//!   etcd's WAL, so a batch from another file or another place in this one
//!   does not fit.
//! - `body_crc` covers the body (TigerBeetle's checksummed header and body,
//!   one level up: the header also vouches for the body it describes).
//! - All fields are little-endian; a header of zeros fails on the magic.
//!
//! # What recovery can tell apart
//!
//! The writer writes batch `n + 1` only after the fsync of batch `n`
//! returned (the real storage holds one lock across write and fsync). So a
//! valid batch proves that every batch before it was synced: its bytes can
//! only be damaged by the disk after the fact, never by a crash.
//!
//! [`decode`] reads batches until the bytes end or one fails to check. At a
//! damaged batch it looks for any valid batch header later in the file:
//! - one exists: the damage lies before a proven sync point. That is
//!   corruption, reported as [`CorruptRecord`] with the byte offset and the
//!   reason, and nothing is dropped;
//! - none exists: the damage is a torn write past the last sync (a crash
//!   mid-write: a short file, a zero-filled or garbage tail). It is dropped
//!   and [`Recovered::valid_len`] says where the valid prefix ends.
//!
//! What the file alone cannot tell apart: damage inside the *last* batch
//! (from [`Recovered::unproven_from`] on), or whole synced batches missing
//! from its end (a lost write, a file cut at a batch boundary, a zeroed
//! tail). A batch that a crash tore and a synced batch the disk damaged
//! afterwards look the same, since no later batch vouches for it; a log
//! cut between batches looks like a shorter log. So the writer keeps a
//! [`Watermark`] beside the log: how many batches were ever synced. It is
//! written after each sync returns (never ahead of the log), and
//! [`recover`] refuses a log that ends before it. `seq` never restarts:
//! [`encode_log`] (compaction) continues the numbering of the log it
//! replaces, so the watermark only grows.
//!
//! The watermark is not fsynced on the commit path, only at compaction:
//! a disk that loses synced batches in the same power loss that loses the
//! watermark's write-back is not detected (two faults at once).
//!
//! A record inside a batch that passed both checksums yet does not parse
//! is corruption wherever it is (a checksum collision or a writer bug).

/// Bytes of a batch header.
pub const HEADER_BYTES: usize = 32;

/// Bytes of framing before each record inside a batch body.
pub const RECORD_HEADER_BYTES: usize = 4;

/// Largest record accepted.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// Largest batch body the header can describe.
pub const MAX_BATCH_BYTES: usize = u32::MAX as usize;

const MAGIC: [u8; 4] = *b"RFB1";

/// Damage that is not a torn tail.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("corrupt record at byte offset {offset}: {reason}")]
pub struct CorruptRecord {
    /// Offset of the damaged batch's header from the start of the log.
    pub offset: usize,
    /// What was wrong with it, and what proves it is not a torn write.
    pub reason: String,
}

/// A record or batch larger than the format allows.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("record of {size} bytes exceeds the {max}-byte limit")]
pub struct TooLarge {
    /// The record's size.
    pub size: usize,
    /// The limit.
    pub max: usize,
}

/// Where the next batch of a file goes in the chain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Chain {
    /// Its `seq`.
    pub seq: u64,
    /// The previous batch's header checksum (0 before the first batch).
    pub prev: u32,
}

/// Records appended since the last sync, framed, with room for the batch
/// header in front so that sealing writes it in place (one buffer, one
/// write call).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    bytes: Vec<u8>,
    count: u32,
}

impl Batch {
    /// Appends one record.
    pub fn push(&mut self, payload: &[u8]) -> Result<(), TooLarge> {
        if payload.len() > MAX_RECORD_BYTES {
            return Err(TooLarge {
                size: payload.len(),
                max: MAX_RECORD_BYTES,
            });
        }
        let body = self.body_len() + RECORD_HEADER_BYTES + payload.len();
        if body > MAX_BATCH_BYTES || self.count == u32::MAX {
            return Err(TooLarge {
                size: body,
                max: MAX_BATCH_BYTES,
            });
        }
        if self.bytes.is_empty() {
            self.bytes.resize(HEADER_BYTES, 0);
        }
        self.bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(payload);
        self.count += 1;
        Ok(())
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Records pushed and not yet sealed.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    fn body_len(&self) -> usize {
        self.bytes.len().saturating_sub(HEADER_BYTES)
    }

    /// The records pushed so far, oldest first.
    pub fn records(&self) -> Vec<Vec<u8>> {
        match self.bytes.get(HEADER_BYTES..) {
            Some(body) => parse_body(body, self.count).expect("a batch this process framed parses"),
            None => Vec::new(),
        }
    }

    /// Completes the header and returns the framed batch, leaving this one
    /// empty and `chain` pointing after it. An empty batch seals to a
    /// header alone.
    pub fn seal(&mut self, chain: &mut Chain) -> Vec<u8> {
        let mut bytes = std::mem::take(&mut self.bytes);
        let count = std::mem::take(&mut self.count);
        if bytes.is_empty() {
            bytes.resize(HEADER_BYTES, 0);
        }
        let body_crc = crc32fast::hash(&bytes[HEADER_BYTES..]);
        let header = Header {
            seq: chain.seq,
            prev: chain.prev,
            count,
            body_len: (bytes.len() - HEADER_BYTES) as u32,
            body_crc,
        };
        let crc = header.write(&mut bytes[..HEADER_BYTES]);
        *chain = Chain {
            seq: chain.seq + 1,
            prev: crc,
        };
        bytes
    }
}

/// A whole log holding `records`, as compaction writes it in place of a
/// log whose chain is at `replaced`: one batch with the records, then an
/// empty batch that proves the first one complete (see the module docs).
/// Its batches continue `replaced`'s numbering, so a [`Watermark`] taken
/// of the old log stays below the new one. Returns the bytes and the chain
/// to continue from.
pub fn encode_log(records: &[Vec<u8>], replaced: Chain) -> Result<(Vec<u8>, Chain), TooLarge> {
    let mut batch = Batch::default();
    for r in records {
        batch.push(r)?;
    }
    let mut chain = Chain {
        seq: replaced.seq,
        prev: 0,
    };
    let mut bytes = batch.seal(&mut chain);
    bytes.extend(Batch::default().seal(&mut chain));
    Ok((bytes, chain))
}

struct Header {
    seq: u64,
    prev: u32,
    count: u32,
    body_len: u32,
    body_crc: u32,
}

impl Header {
    /// Writes the header into `out` (32 bytes); returns its checksum.
    fn write(&self, out: &mut [u8]) -> u32 {
        out[0..4].copy_from_slice(&MAGIC);
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..20].copy_from_slice(&self.prev.to_le_bytes());
        out[20..24].copy_from_slice(&self.count.to_le_bytes());
        out[24..28].copy_from_slice(&self.body_len.to_le_bytes());
        out[28..32].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = header_crc(out);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        crc
    }

    /// The header at the start of `bytes` if its magic and checksum hold,
    /// with its checksum.
    fn read(bytes: &[u8]) -> Result<(Header, u32), &'static str> {
        let Some(h) = bytes.get(..HEADER_BYTES) else {
            return Err("batch header cut short by the end of the file");
        };
        if h[0..4] != MAGIC {
            return Err("bad magic in batch header");
        }
        let crc = u32_at(h, 4);
        if header_crc(h) != crc {
            return Err("batch header checksum mismatch");
        }
        let header = Header {
            seq: u64::from_le_bytes(h[8..16].try_into().expect("8 bytes")),
            prev: u32_at(h, 16),
            count: u32_at(h, 20),
            body_len: u32_at(h, 24),
            body_crc: u32_at(h, 28),
        };
        Ok((header, crc))
    }
}

fn header_crc(header: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[0..4]);
    hasher.update(&header[8..HEADER_BYTES]);
    hasher.finalize()
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// The records of a checksummed body, or `None` if they do not add up.
fn parse_body(mut body: &[u8], count: u32) -> Option<Vec<Vec<u8>>> {
    let mut records = Vec::new();
    for _ in 0..count {
        let len = u32::from_le_bytes(body.get(..RECORD_HEADER_BYTES)?.try_into().ok()?) as usize;
        let payload = body.get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES.checked_add(len)?)?;
        records.push(payload.to_vec());
        body = &body[RECORD_HEADER_BYTES + len..];
    }
    body.is_empty().then_some(records)
}

/// The records recovered from a log, and what the writer needs to go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The records, oldest first.
    pub records: Vec<Vec<u8>>,
    /// Length of the valid prefix; bytes after it are a torn tail to truncate.
    pub valid_len: usize,
    /// Where the next batch continues the chain.
    pub chain: Chain,
    /// Start of the last valid batch: damage from here on cannot be told
    /// from a torn write (see the module docs). Everything before it is
    /// proven synced.
    pub unproven_from: usize,
}

/// A deliberately broken recovery rule, for the simulator's planted bugs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordBug {
    /// The old rule: any damage is a torn tail, wherever it is and whatever
    /// follows it, so a flipped bit mid-log silently drops everything
    /// after it (synced, acknowledged records included).
    AnyDamageIsTornTail,
    /// Recovery trusts the file alone and never reads the watermark, so a
    /// log that lost synced batches from its end starts as a shorter log.
    IgnoresWatermark,
}

/// How many batches of a log were ever synced: the `seq` the next batch
/// after the last synced one takes. Kept in a small file beside the log
/// (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watermark {
    /// Batches synced, counted across compactions.
    pub synced_batches: u64,
}

const WATERMARK_MAGIC: [u8; 4] = *b"RFW1";

impl Watermark {
    /// Bytes of an encoded watermark: magic | crc u32 | synced_batches u64.
    /// Small enough to be rewritten in place within one sector.
    pub const BYTES: usize = 16;

    /// The watermark of a log whose chain is at `chain`.
    pub fn of(chain: Chain) -> Watermark {
        Watermark {
            synced_batches: chain.seq,
        }
    }

    /// The watermark's bytes, checksummed.
    pub fn encode(&self) -> [u8; Watermark::BYTES] {
        let mut out = [0; Watermark::BYTES];
        out[0..4].copy_from_slice(&WATERMARK_MAGIC);
        out[8..16].copy_from_slice(&self.synced_batches.to_le_bytes());
        let crc = crc32fast::hash(&out[8..16]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// The watermark in `bytes`, or why it cannot be trusted.
    pub fn decode(bytes: &[u8]) -> Result<Watermark, &'static str> {
        if bytes.len() != Watermark::BYTES || bytes[0..4] != WATERMARK_MAGIC {
            return Err("not a sync watermark (wrong size or magic)");
        }
        if crc32fast::hash(&bytes[8..16]) != u32_at(bytes, 4) {
            return Err("sync watermark checksum mismatch");
        }
        Ok(Watermark {
            synced_batches: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
        })
    }
}

/// Recovers a log that `watermark` says was synced this far: [`decode`],
/// then refuses a log that ends before the watermark (synced batches lost
/// from its end, or damage in the last one). The one recovery rule of the
/// simulated and the real disks.
pub fn recover(bytes: &[u8], watermark: Watermark, bug: Option<RecordBug>) -> Result<Recovered, CorruptRecord> {
    let recovered = decode_with(bytes, bug)?;
    if recovered.chain.seq < watermark.synced_batches && bug != Some(RecordBug::IgnoresWatermark) {
        return Err(CorruptRecord {
            offset: recovered.valid_len,
            reason: format!(
                "the log's valid batches end at number {} but its watermark says {} were synced: \
                 synced records are missing from its end (a lost write, a cut or zeroed file, \
                 or damage to its last batch)",
                recovered.chain.seq, watermark.synced_batches
            ),
        });
    }
    Ok(recovered)
}

/// Parses a whole log (see the module docs). Never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Recovered, CorruptRecord> {
    decode_with(bytes, None)
}

/// [`decode`], optionally with a planted bug.
pub fn decode_with(bytes: &[u8], bug: Option<RecordBug>) -> Result<Recovered, CorruptRecord> {
    // The first batch may continue the numbering of a log that compaction
    // replaced (see [`encode_log`]); it starts a chain (`prev` 0).
    let first_seq = Header::read(bytes).map_or(0, |(header, _)| header.seq);
    let mut recovered = Recovered {
        records: Vec::new(),
        valid_len: 0,
        chain: Chain {
            seq: first_seq,
            prev: 0,
        },
        unproven_from: 0,
    };
    let mut offset = 0;
    while offset < bytes.len() {
        let damage = match batch_at(bytes, offset, recovered.chain) {
            Ok(Some((records, end, chain))) => {
                recovered.records.extend(records);
                recovered.unproven_from = offset;
                recovered.chain = chain;
                offset = end;
                recovered.valid_len = end;
                continue;
            }
            Ok(None) => {
                return Err(CorruptRecord {
                    offset,
                    reason: "batch passed its checksums but its records do not add up".to_string(),
                })
            }
            Err(damage) => damage,
        };
        if bug == Some(RecordBug::AnyDamageIsTornTail) {
            break;
        }
        if let Some(later) = next_valid_header(bytes, offset + 1, recovered.chain.seq) {
            return Err(CorruptRecord {
                offset,
                reason: format!("{damage}, yet a valid batch follows at byte offset {later}, so it was synced"),
            });
        }
        break; // a torn write past the last sync
    }
    Ok(recovered)
}

/// The batch at `offset` if it checks: `Ok(Some((records, end, next chain)))`;
/// `Ok(None)` if it checks but its body does not parse; `Err(why)` if damaged.
#[allow(clippy::type_complexity)]
fn batch_at(bytes: &[u8], offset: usize, chain: Chain) -> Result<Option<(Vec<Vec<u8>>, usize, Chain)>, &'static str> {
    let (header, crc) = Header::read(&bytes[offset..])?;
    if header.seq != chain.seq || header.prev != chain.prev {
        return Err("batch header does not continue the chain");
    }
    let start = offset + HEADER_BYTES;
    let end = start.checked_add(header.body_len as usize);
    let Some(body) = end.and_then(|end| bytes.get(start..end)) else {
        return Err("batch body cut short by the end of the file");
    };
    if crc32fast::hash(body) != header.body_crc {
        return Err("batch body checksum mismatch");
    }
    let next = Chain {
        seq: chain.seq + 1,
        prev: crc,
    };
    Ok(parse_body(body, header.count).map(|records| (records, start + body.len(), next)))
}

/// Offset of the first header at or after `from` whose magic and checksum
/// hold and whose `seq` is at least `seq`: proof that the writer got past
/// the damage.
fn next_valid_header(bytes: &[u8], from: usize, seq: u64) -> Option<usize> {
    let last = bytes.len().checked_sub(HEADER_BYTES)?;
    (from..=last).find(|&at| bytes[at..at + 4] == MAGIC && Header::read(&bytes[at..]).is_ok_and(|(h, _)| h.seq >= seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A log of one batch per group of payloads, and each batch's offset.
    fn log_of(batches: &[&[&[u8]]]) -> (Vec<u8>, Vec<usize>) {
        let mut chain = Chain::default();
        let mut out = Vec::new();
        let mut starts = Vec::new();
        for records in batches {
            let mut batch = Batch::default();
            for r in *records {
                batch.push(r).unwrap();
            }
            starts.push(out.len());
            out.extend(batch.seal(&mut chain));
        }
        (out, starts)
    }

    fn owned(records: &[&[u8]]) -> Vec<Vec<u8>> {
        records.iter().map(|r| r.to_vec()).collect()
    }

    #[test]
    fn round_trips_batches() {
        let (bytes, starts) = log_of(&[&[b"a", b""], &[b"hello"], &[]]);
        let got = decode(&bytes).unwrap();
        assert_eq!(got.records, owned(&[b"a", b"", b"hello"]));
        assert_eq!(got.valid_len, bytes.len());
        assert_eq!(got.unproven_from, starts[2]);
        assert_eq!(got.chain.seq, 3);
    }

    #[test]
    fn a_zeroed_header_is_not_a_record() {
        let got = decode(&[0; 200]).unwrap();
        assert!(got.records.is_empty());
        assert_eq!(got.valid_len, 0);
    }

    #[test]
    fn drops_a_torn_last_batch_at_every_cut() {
        let (bytes, starts) = log_of(&[&[b"first"], &[b"second", b"third"]]);
        for cut in starts[1]..bytes.len() {
            let got = decode(&bytes[..cut]).unwrap();
            assert_eq!(got.records, owned(&[b"first"]), "cut at {cut}");
            assert_eq!(got.valid_len, starts[1]);
        }
    }

    #[test]
    fn a_flipped_length_mid_log_is_corruption_not_a_torn_tail() {
        let (mut bytes, starts) = log_of(&[&[b"first"], &[b"second"], &[b"third"]]);
        // body_len of the middle batch: now it runs past the end of the file.
        bytes[starts[1] + 27] ^= 0x80;
        let err = decode(&bytes).unwrap_err();
        assert_eq!(err.offset, starts[1]);
        assert!(err.reason.contains("header checksum"), "{}", err.reason);
        assert!(err.reason.contains(&format!("offset {}", starts[2])), "{}", err.reason);
        // The old rule drops the synced "second" and "third" instead.
        let old = decode_with(&bytes, Some(RecordBug::AnyDamageIsTornTail)).unwrap();
        assert_eq!(old.records, owned(&[b"first"]));
    }

    #[test]
    fn a_compacted_log_proves_all_its_records() {
        let (bytes, chain) = encode_log(&owned(&[b"snapshot", b"e1"]), Chain { seq: 7, prev: 99 }).unwrap();
        let got = decode(&bytes).unwrap();
        assert_eq!(got.records, owned(&[b"snapshot", b"e1"]));
        assert_eq!(got.chain, chain);
        // Only the empty sealing batch is in the region a flip could hide in.
        assert_eq!(got.unproven_from, bytes.len() - HEADER_BYTES);
        // It continues the replaced log's numbering, so the old log's
        // watermark still holds.
        assert_eq!(chain.seq, 9);
        assert!(recover(&bytes, Watermark { synced_batches: 7 }, None).is_ok());
    }

    #[test]
    fn a_log_that_lost_synced_batches_from_its_end_is_refused() {
        let (bytes, starts) = log_of(&[&[b"first"], &[b"second"], &[b"third", b"fourth"]]);
        let synced = Watermark { synced_batches: 3 };
        assert_eq!(recover(&bytes, synced, None).unwrap().records.len(), 4);
        // Cut at every batch boundary, or zeroed from one on: a shorter log
        // to the file alone, refused by the watermark.
        for &cut in &starts {
            for tail in [0, 100] {
                let mut damaged = bytes[..cut].to_vec();
                damaged.resize(cut + tail, 0);
                assert_eq!(decode(&damaged).unwrap().valid_len, cut);
                let err = recover(&damaged, synced, None).unwrap_err();
                assert!(err.reason.contains("watermark says 3"), "{}", err.reason);
                let old = recover(&damaged, synced, Some(RecordBug::IgnoresWatermark)).unwrap();
                assert_eq!(old.valid_len, cut);
            }
        }
        // A flip in the last synced batch, which no later batch vouches for.
        for bit in starts[2] * 8..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(recover(&flipped, synced, None).is_err(), "bit {bit}");
        }
        // A torn tail past the watermark is still just dropped.
        let torn = &bytes[..bytes.len() - 1];
        let got = recover(torn, Watermark { synced_batches: 2 }, None).unwrap();
        assert_eq!(got.records, owned(&[b"first", b"second"]));
    }

    #[test]
    fn a_watermark_round_trips_and_a_flipped_bit_is_refused() {
        let mark = Watermark {
            synced_batches: 0x0102_0304_0506,
        };
        let bytes = mark.encode();
        assert_eq!(Watermark::decode(&bytes), Ok(mark));
        for bit in 0..Watermark::BYTES * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(Watermark::decode(&flipped).is_err(), "bit {bit}");
        }
        assert!(Watermark::decode(&bytes[..8]).is_err());
    }

    fn batches() -> impl Strategy<Value = Vec<Vec<Vec<u8>>>> {
        prop::collection::vec(
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), 0..4),
            1..6,
        )
    }

    fn framed(batches: &[Vec<Vec<u8>>]) -> (Vec<u8>, Vec<usize>) {
        let groups: Vec<Vec<&[u8]>> = batches.iter().map(|b| b.iter().map(Vec::as_slice).collect()).collect();
        let refs: Vec<&[&[u8]]> = groups.iter().map(Vec::as_slice).collect();
        log_of(&refs)
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn never_panics_on_damaged_logs(batches in batches(), at in any::<prop::sample::Index>(), junk in prop::collection::vec(any::<u8>(), 1..40)) {
            let (mut bytes, _) = framed(&batches);
            let at = at.index(bytes.len());
            let end = (at + junk.len()).min(bytes.len());
            bytes[at..end].copy_from_slice(&junk[..end - at]);
            let _ = decode(&bytes);
        }

        /// One flipped bit anywhere before the last batch is reported, at
        /// the damaged batch; nothing is silently dropped.
        #[test]
        fn a_flipped_bit_in_a_synced_batch_is_reported(batches in batches(), bit in any::<prop::sample::Index>()) {
            let (mut bytes, starts) = framed(&batches);
            let proven = *starts.last().unwrap();
            prop_assume!(proven > 0);
            let bit = bit.index(proven * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            let err = decode(&bytes).unwrap_err();
            let damaged = *starts.iter().rfind(|&&s| s <= bit / 8).unwrap();
            prop_assert_eq!(err.offset, damaged);
        }

        /// A torn, zero-filled or garbage tail after the last synced batch
        /// recovers exactly the synced records.
        #[test]
        fn any_tail_past_the_last_sync_is_dropped(
            synced in batches(),
            unsynced in batches(),
            cut in any::<prop::sample::Index>(),
            fill in 0..3u8,
            junk in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let all: Vec<Vec<Vec<u8>>> = synced.iter().chain(&unsynced).cloned().collect();
            let (full, starts) = framed(&all);
            let synced_len = starts.get(synced.len()).copied().unwrap_or(full.len());
            // The crash keeps a prefix of the next batch, then the tail is
            // torn off, zero-filled or garbage.
            let next_end = starts.get(synced.len() + 1).copied().unwrap_or(full.len());
            let keep = synced_len + cut.index(next_end - synced_len + 1).min(next_end - synced_len);
            let mut bytes = full[..keep].to_vec();
            match fill {
                0 => {}
                1 => bytes.extend(std::iter::repeat_n(0u8, junk.len())),
                _ => bytes.extend_from_slice(&junk),
            }
            let got = decode(&bytes).unwrap();
            let expected: Vec<Vec<u8>> = synced.concat();
            if got.valid_len == synced_len {
                prop_assert_eq!(got.records, expected);
            } else {
                // The next batch survived whole (or the fill rebuilt it
                // byte for byte): it is kept as written, never invented.
                prop_assert_eq!(got.valid_len, next_end);
                prop_assert_eq!(&bytes[..next_end], &full[..next_end]);
                let mut with_next = expected;
                with_next.extend(unsynced.first().cloned().unwrap_or_default());
                prop_assert_eq!(got.records, with_next);
            }
        }
    }
}
