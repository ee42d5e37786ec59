//! Test and benchmark data shared by `tests/it` and `benches/import.rs` (included with
//! `#[path]`: neither is a library the other can depend on).

/// Deterministic, non-repeating bytes that differ per seed and do not compress to nothing
/// (file contents, served images).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
