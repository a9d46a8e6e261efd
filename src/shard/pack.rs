//! Cutting a move into pieces that each fit one command.
//!
//! A service's log (or a shard's message) takes nothing larger than a
//! limit, while a moving part may cover hundreds of ranges and hold
//! thousands of items (held locks, accounts). [`pack`] cuts it by hash so
//! that each piece, put into an empty command, stays under the limit; the
//! lock service and the bank's shards both fence and ship through it.

use serde::Serialize;

use super::RangeSet;
use crate::env::codec;
use crate::ring::{HashRange, KeyHash};

/// Cuts `ranges`, with the `items` that lie in them (`hash` gives an
/// item's key hash), into pieces, each of which makes a command that
/// encodes to `empty_bytes` with no ranges and no items at most `limit`
/// bytes long, unless a single range or item alone is larger (then it
/// makes a piece of its own). The pieces ascend by hash and cover `ranges`
/// exactly; a range is cut just below an item's hash where its items
/// overflow a piece, never between items of one hash. The same input
/// always gives the same pieces.
pub fn pack<T: Serialize + Clone>(
    ranges: &RangeSet,
    items: &[T],
    hash: impl Fn(&T) -> KeyHash,
    empty_bytes: usize,
    limit: usize,
) -> Vec<(RangeSet, Vec<T>)> {
    let encoded_len = |bytes: Result<Vec<u8>, _>| bytes.map_or(usize::MAX, |b: Vec<u8>| b.len());
    // Each of the two lists' length prefix grows from the one byte the
    // empty command has to at most three bytes below two million entries;
    // every range is counted as its widest encoding.
    let base = empty_bytes.saturating_add(4);
    let range_bytes = encoded_len(codec::encode(&HashRange {
        start: u64::MAX,
        end: u64::MAX,
    }));
    let mut by_hash: Vec<(KeyHash, &T)> = items.iter().map(|item| (hash(item), item)).collect();
    by_hash.sort_by_key(|&(h, _)| h);
    let mut pieces = Vec::new();
    let mut piece = Piece::new(base);
    let mut next = 0;
    for range in ranges.ranges() {
        if !piece.ranges.is_empty() && piece.bytes + range_bytes > limit {
            pieces.push(piece.take(base));
        }
        piece.open(*range, range_bytes);
        while let Some(&(h, item)) = by_hash.get(next).filter(|&&(h, _)| h <= range.end) {
            next += 1;
            let item_bytes = encoded_len(codec::encode(item));
            if piece.bytes + item_bytes > limit && piece.leaves_some_below(h) {
                let (rest, same_hash) = piece.cut_below(h, range_bytes);
                pieces.push(piece.take(base));
                piece.open(rest, range_bytes);
                for entry in same_hash {
                    piece.push(entry);
                }
            }
            piece.push((item.clone(), h, item_bytes));
        }
    }
    pieces.push(piece.take(base));
    pieces.into_iter().filter(|(ranges, _)| !ranges.is_empty()).collect()
}

/// A piece [`pack`] is filling: its ranges, the last still open, and its
/// items with their hashes and encoded lengths.
struct Piece<T> {
    ranges: Vec<HashRange>,
    items: Vec<(T, KeyHash, usize)>,
    bytes: usize,
}

impl<T> Piece<T> {
    fn new(base: usize) -> Self {
        Piece {
            ranges: Vec::new(),
            items: Vec::new(),
            bytes: base,
        }
    }

    /// The piece as filled, leaving an empty one in its place.
    fn take(&mut self, base: usize) -> (RangeSet, Vec<T>) {
        let piece = std::mem::replace(self, Piece::new(base));
        let items = piece.items.into_iter().map(|(item, _, _)| item).collect();
        (RangeSet::from_ranges(piece.ranges), items)
    }

    fn open(&mut self, range: HashRange, range_bytes: usize) {
        self.ranges.push(range);
        self.bytes += range_bytes;
    }

    fn push(&mut self, entry: (T, KeyHash, usize)) {
        self.bytes += entry.2;
        self.items.push(entry);
    }

    /// Whether cutting the open range below hash `h` leaves the piece
    /// some hashes (else the item at `h` joins it, however large).
    fn leaves_some_below(&self, h: KeyHash) -> bool {
        self.ranges.len() > 1 || self.ranges.last().is_some_and(|open| open.start < h)
    }

    /// Ends the open range just below hash `h` (leaving it out if it
    /// starts at `h`); returns the range's rest, from `h` on, and the
    /// piece's items of hash `h` (keys whose hashes collide), which go
    /// with the rest.
    fn cut_below(&mut self, h: KeyHash, range_bytes: usize) -> (HashRange, Vec<(T, KeyHash, usize)>) {
        let mut same_hash = Vec::new();
        while self.items.last().is_some_and(|&(_, hash, _)| hash == h) {
            let entry = self.items.pop().expect("checked above");
            self.bytes -= entry.2;
            same_hash.push(entry);
        }
        same_hash.reverse();
        let open = self.ranges.last_mut().expect("an item is cut inside an open range");
        let rest = HashRange {
            start: h,
            end: open.end,
        };
        if h <= open.start {
            self.ranges.pop();
            self.bytes -= range_bytes;
        } else {
            open.end = h - 1;
        }
        (rest, same_hash)
    }
}
