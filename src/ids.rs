//! Maps and sets keyed by request ids, hashed cheaply: each side keeps its pending
//! requests by id, and looks one up on every request, often twice.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A map from request ids.
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// A set of request ids.
pub(crate) type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

/// Hashes request ids. Each is a distinct `u64` one side gave out, so one
/// multiplication (by 2⁶⁴/φ) spreads them over the buckets; the default
/// SipHash costs many times that. (SipHash resists keys chosen to collide;
/// the ids a worker keys by are its host's, which spawned it and which it
/// trusts.)
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(byte));
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
