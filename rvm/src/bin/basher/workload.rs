//! The basher's workload, a pure function of (seed, transaction index), so that a
//! checker can recompute exactly what any prefix of it leaves in the segment.
//!
//! Layout: offset 0 holds the number of transactions applied; slot `s` holds 64 bytes
//! at `8 + 64 * s`. Transaction `i` rewrites 1 to 8 slots and the counter.

pub const SLOT_BYTES: u64 = 64;
pub const COUNTER_BYTES: u64 = 8;

pub fn data_len(slots: u64) -> u64 {
    COUNTER_BYTES + slots * SLOT_BYTES
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One transaction of the workload.
pub struct Plan {
    pub slots: Vec<u64>,
    /// Flush commit (acknowledged as durable) or no-flush.
    pub flush: bool,
    /// Truncate explicitly after committing.
    pub truncate: bool,
}

pub fn plan(seed: u64, i: u64, slots: u64) -> Plan {
    let mut r = splitmix(seed ^ splitmix(i));
    let mut next = || {
        r = splitmix(r);
        r
    };
    let n = 1 + next() % 8;
    Plan {
        slots: (0..n).map(|_| next() % slots).collect(),
        flush: next() % 4 == 0,
        truncate: next() % 64 == 0,
    }
}

/// The 64 bytes transaction `i` writes into `slot`.
pub fn slot_bytes(i: u64, slot: u64) -> [u8; SLOT_BYTES as usize] {
    let mut b = [0u8; SLOT_BYTES as usize];
    for (k, chunk) in b.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&splitmix(i ^ (slot << 20) ^ k as u64).to_le_bytes());
    }
    b
}

/// Applies transaction `i` to an image of the data area.
pub fn apply(image: &mut [u8], seed: u64, i: u64, slots: u64) {
    for s in plan(seed, i, slots).slots {
        let at = (COUNTER_BYTES + s * SLOT_BYTES) as usize;
        image[at..at + SLOT_BYTES as usize].copy_from_slice(&slot_bytes(i, s));
    }
    image[..8].copy_from_slice(&(i + 1).to_le_bytes());
}
