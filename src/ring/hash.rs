//! The three hash functions of the ring, each chosen for a reason.
//!
//! - Keys: [`hash_key`] is xxh3-64. It is fast (a lookup budget is tens of
//!   nanoseconds) and its output is fixed by its specification, unlike std's
//!   `RandomState` (seeded per process) or `DefaultHasher` (unspecified, may
//!   change between releases). Same key ⇒ same hash on every node.
//! - Ring points: [`point`] is sha1 over a versioned, big-endian encoding of
//!   (node id, virtual node index). Points are computed once per view, so
//!   speed matters little; what matters is that the placement of a node's
//!   points never changes across platforms, releases or languages (any
//!   client with a sha1 can reproduce the ring).
//! - Mixing: [`mix64`] (the splitmix64 finalizer) derives independent
//!   per-replica / per-node values from a key hash for jump and rendezvous.

use sha1::{Digest, Sha1};

/// The 64-bit hash of a key. All placements work on this value.
pub type KeyHash = u64;

/// Domain separator for ring points: bump the version if the encoding below
/// ever changes, so old and new rings are never silently mixed.
const POINT_DOMAIN: &[u8] = b"ringfence/ring/v1";

/// Hashes a key's bytes for placement (xxh3-64, seed 0).
#[inline]
pub fn hash_key(key: &[u8]) -> KeyHash {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The ring position of virtual node `vnode` of node `node`: the first 8
/// bytes (big-endian) of sha1(domain ‖ node ‖ vnode).
///
/// A node's points depend only on its own id and index, never on the other
/// members: adding a node only inserts points and removing one only deletes
/// its own, which is what makes the ring's movement minimal.
pub fn point(node: u64, vnode: u32) -> u64 {
    let mut h = Sha1::new();
    h.update(POINT_DOMAIN);
    h.update(node.to_be_bytes());
    h.update(vnode.to_be_bytes());
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_be_bytes(first)
}

/// splitmix64's finalizer: a bijective mix of all 64 bits, used to derive
/// per-node / per-attempt hashes from one key hash.
#[inline]
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A per-node seed for rendezvous hashing, from the node id alone.
pub fn node_seed(node: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&node.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned values: if these change, every deployed ring moves. Changing
    /// them is a breaking change of the on-wire placement. The points were
    /// checked against an independent implementation of the spec (Python's
    /// hashlib: the first 8 bytes, big-endian, of
    /// sha1(b"ringfence/ring/v1" ‖ node as u64 BE ‖ vnode as u32 BE)); a
    /// process-random or platform-dependent hash fails here.
    #[test]
    fn hashes_are_pinned() {
        assert_eq!(hash_key(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(hash_key(b"acct-0"), 0x9a5e_d88a_e910_fa64);
        assert_eq!(hash_key(b"acct-5"), 0x9266_51fc_065e_89a8);
        assert_eq!(hash_key(b"counter"), 0x4adf_3b79_1635_581d);
        assert_eq!(node_seed(1), 0xf36b_4a1a_44f7_8bf3);
        assert_eq!(point(0, 0), 0x3402_912a_c392_d702);
        assert_eq!(point(1, 0), 0xa764_3eb9_0f10_9ae7);
        assert_eq!(point(1, 159), 0x38e9_412c_78f2_e062);
        assert_eq!(point(1001, 7), 0x89bf_861d_456a_2b03);
        assert_eq!(point(u64::MAX, u32::MAX), 0xf9b4_4152_967e_2bc0);
    }
}
