//! The fixed 64-bit hash spoke uses wherever separate processes must agree: the
//! ip-hash mapping of client addresses and the backend ids in sticky cookies.
//!
//! It is FNV-1a followed by SplitMix64's finalizer, never seeded, so it gives the same
//! value in every process on every machine. That is what lets several spoke instances
//! behind one L4 balancer send a client to the same backend, and a cookie set by one
//! instance be understood by another.

/// The fixed hash of `bytes` (see the module docs).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    mix(fnv1a(FNV_OFFSET, bytes))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// SplitMix64's finalizer: FNV alone leaves the high bits poorly mixed. Also used on
/// its own to spread a counter or a pair of keys over 64 bits.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_pinned() {
        // Changing these values changes every ip-hash mapping and sticky cookie id in
        // the field: do it only on purpose.
        // Computed apart from this code, from the algorithm in the module docs.
        assert_eq!(stable_hash(b""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(stable_hash(b"http://127.0.0.1:8080"), 0xdeb0_eaf7_2f32_054b);
    }
}
