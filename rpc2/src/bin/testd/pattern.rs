//! The data rpc2-testd serves, shared with the tests that check it.

/// `len` bytes of BLAKE3 output keyed by `seed`: cheap, and any offset checks.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut out = vec![0u8; len];
    blake3::Hasher::new_keyed(&key)
        .finalize_xof()
        .fill(&mut out);
    out
}
