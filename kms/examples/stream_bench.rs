//! Throughput of the stream format against a raw single-core AES-256-GCM
//! loop. Run with `cargo run --release -p keyward-kms --example stream_bench`.
//!
//! - `stream_bench` (no arguments): in memory, 1 GiB. Encryption reads from
//!   a 1 GiB buffer and writes through a copying sink (so the output copy
//!   is paid, as a page-cache write would be); decryption reads the
//!   ciphertext from memory and writes through the same sink.
//! - `stream_bench encrypt IN OUT` / `stream_bench decrypt IN OUT`: files,
//!   for comparison with `age` on the same files; prints the time and the
//!   peak RSS of the process.
#![allow(
    clippy::cast_precision_loss,
    clippy::print_stdout,
    missing_docs,
    reason = "benchmark output"
)]

use std::fs::File;
use std::io::{self, Write};
use std::time::Instant;

use keyward_kms::crypto::aead::{Key, Nonce};
use keyward_kms::crypto::stream;
use keyward_kms::{DataClass, KeyName, Secret32};

const GIB: usize = 1 << 30;

/// A writer that copies everything into a small scratch buffer and
/// forgets it: the cost of a memcpy, without the memory.
struct CopySink(Vec<u8>);

impl Write for CopySink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for piece in buf.chunks(self.0.len()) {
            self.0[..piece.len()].copy_from_slice(piece);
        }
        std::hint::black_box(&self.0);
        Ok(buf.len())
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut n = 0;
        for b in bufs {
            n += self.write(b)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// User + system CPU seconds of this process so far (all threads).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 12th and 13th of them, in clock ticks (100 per second on Linux).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn gbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = Secret32::try_from_slice(&[0x42; 32])?;
    let name = KeyName::new("bench")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, input, output] = &args[..] {
        let mut reader = File::open(input)?;
        let mut writer = File::create(output)?;
        // `KW_LOCAL_WRITER=1` keeps all writes on the calling thread (the
        // non-`Send` API); by default the second thread writes.
        let local = std::env::var_os("KW_LOCAL_WRITER").is_some();
        let start = Instant::now();
        let n = match (mode.as_str(), local) {
            ("encrypt", false) => stream::encrypt_send(
                &key,
                &name,
                1,
                DataClass::General,
                b"",
                &mut reader,
                &mut writer,
                &mut |_| {},
            )?,
            ("encrypt", true) => stream::encrypt(
                &key,
                &name,
                1,
                DataClass::General,
                b"",
                &mut reader,
                &mut writer,
                &mut |_| {},
            )?,
            (_, false) => {
                let (_, raw) = stream::read_header(&mut reader)?;
                stream::decrypt_send(
                    &key,
                    DataClass::General,
                    b"",
                    &raw,
                    &mut reader,
                    &mut writer,
                    &mut |_| {},
                )?
            }
            (_, true) => {
                let (_, raw) = stream::read_header(&mut reader)?;
                stream::decrypt(
                    &key,
                    DataClass::General,
                    b"",
                    &raw,
                    &mut reader,
                    &mut writer,
                    &mut |_| {},
                )?
            }
        };
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{mode} {n} bytes file->file ({} writer): {secs:.3} s, {:.2} GB/s, peak RSS {:.1} MiB",
            if local { "local" } else { "Send" },
            gbps(usize::try_from(n)?, secs),
            peak_rss_mib()
        );
        return Ok(());
    }

    let plaintext: Vec<u8> = (0..GIB).map(|i| (i % 251) as u8).collect();
    println!(
        "peak RSS after allocating the 1 GiB input: {:.1} MiB",
        peak_rss_mib()
    );

    // Raw single-core ring AES-256-GCM, 64 KiB chunks, in place.
    let mut buf = plaintext.clone();
    let raw_key = Key::new(&key);
    let cpu0 = cpu_secs();
    let start = Instant::now();
    for (i, chunk) in buf.chunks_mut(64 << 10).enumerate() {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
        std::hint::black_box(raw_key.seal_in_place(Nonce::from_bytes(nonce), &[], chunk)?);
    }
    let raw_secs = start.elapsed().as_secs_f64();
    let raw_cpu = cpu_secs() - cpu0;
    drop(buf);
    println!(
        "raw ring seal, 1 core, 64 KiB chunks: {raw_secs:.3} s wall, {raw_cpu:.2} s CPU, {:.2} GB/s",
        gbps(GIB, raw_secs)
    );

    let mut sink = CopySink(vec![0u8; 1 << 20]);
    let mut ciphertext = Vec::with_capacity(GIB + GIB / 1000 + 4096);
    let (mut best_enc, mut best_dec) = (f64::MAX, f64::MAX);
    for round in 0..5 {
        let base_rss = peak_rss_mib();
        let cpu0 = cpu_secs();
        let start = Instant::now();
        stream::encrypt(
            &key,
            &name,
            1,
            DataClass::General,
            b"",
            &mut &plaintext[..],
            &mut sink,
            &mut |_| {},
        )?;
        let enc_secs = start.elapsed().as_secs_f64();
        let enc_cpu = cpu_secs() - cpu0;
        if round == 0 {
            println!(
                "peak RSS growth during encrypt: {:.1} MiB",
                peak_rss_mib() - base_rss
            );
        }

        ciphertext.clear();
        stream::encrypt(
            &key,
            &name,
            1,
            DataClass::General,
            b"",
            &mut &plaintext[..],
            &mut ciphertext,
            &mut |_| {},
        )?;
        let mut input = &ciphertext[..];
        let cpu0 = cpu_secs();
        let start = Instant::now();
        let (_, raw) = stream::read_header(&mut input)?;
        let n = stream::decrypt(
            &key,
            DataClass::General,
            b"",
            &raw,
            &mut input,
            &mut sink,
            &mut |_| {},
        )?;
        let dec_secs = start.elapsed().as_secs_f64();
        let dec_cpu = cpu_secs() - cpu0;
        best_enc = best_enc.min(enc_secs);
        best_dec = best_dec.min(dec_secs);
        assert_eq!(n, GIB as u64);
        println!(
            "round {round}: stream encrypt {:.2} GB/s ({:.2}x raw 1-core; {enc_secs:.3} s wall, {enc_cpu:.2} s CPU), \
             decrypt {:.2} GB/s ({:.2}x; {dec_secs:.3} s wall, {dec_cpu:.2} s CPU)",
            gbps(GIB, enc_secs),
            raw_secs / enc_secs,
            gbps(GIB, dec_secs),
            raw_secs / dec_secs,
        );
    }
    println!(
        "best of 5: stream encrypt {:.2} GB/s ({:.2}x raw 1-core), decrypt {:.2} GB/s ({:.2}x)",
        gbps(GIB, best_enc),
        raw_secs / best_enc,
        gbps(GIB, best_dec),
        raw_secs / best_dec
    );
    Ok(())
}
