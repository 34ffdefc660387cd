//! Baseline for docs/BENCHMARKS.md: raw in-process AES-256-GCM with `ring`
//! on one core, sealing 64 KiB buffers until 1 GiB is done. This is the
//! ceiling a bulk-encryption format built on it can approach.
//!
//! Run: `cargo run --release -p keyward-kms --example gcm_baseline`

use std::time::Instant;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

fn main() {
    const CHUNK: usize = 64 << 10;
    const TOTAL: usize = 1 << 30;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).expect("AES-256 key"));
    let mut buf = vec![0x5au8; CHUNK];
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        for i in 0..TOTAL / CHUNK {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&(i as u64).to_be_bytes());
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    &mut buf,
                )
                .expect("seal");
            std::hint::black_box(tag.as_ref()[0]);
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "raw ring AES-256-GCM, one core, 64 KiB buffers: {:.2} GB/s ({:.3} s per GiB, best of 3)",
        TOTAL as f64 / best / 1e9,
        best
    );
}
