//! A GiB through `keyward encrypt | keyward decrypt` over pipes: the round
//! trip is exact and each process stays in constant memory (peak RSS under
//! 64 MiB, measured by GNU time).

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

const TOTAL: u64 = 1 << 30;
const BLOCK: usize = 1 << 20;
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// Deterministic, incompressible-looking data: block `i` is a fixed
/// pseudo-random MiB with `i` written into its first 8 bytes, so a
/// reordered or repeated block is caught.
fn block(base: &[u8], i: u64, out: &mut [u8]) {
    out.copy_from_slice(base);
    out[..8].copy_from_slice(&i.to_le_bytes());
}

fn base_block() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..BLOCK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn peak_rss_kib(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path).expect("GNU time output");
    text.lines()
        .filter_map(|l| l.trim().parse().ok())
        .next_back()
        .expect("peak RSS in KiB")
}

#[test]
fn gib_round_trip_over_pipes_in_constant_memory() {
    let time = Path::new("/usr/bin/time");
    assert!(time.exists(), "GNU time is needed (apt-get install time)");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("keystore.db");
    let rk = dir.path().join("recovery.txt");
    let keyward = common::keyward_bin();
    let ok = Command::new(&keyward)
        .args([
            "--store".as_ref(),
            store.as_os_str(),
            "init".as_ref(),
            "--recovery-key-out".as_ref(),
            rk.as_os_str(),
        ])
        .stdin(Stdio::null())
        .status()
        .expect("init");
    assert!(ok.success());
    let recovery = std::fs::read_to_string(&rk).expect("recovery key");
    let run = |args: &[&str], rss: &Path| {
        let mut c = Command::new(time);
        c.arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(rss)
            .arg(&keyward)
            .arg("--store")
            .arg(&store);
        c.args(args).env("KEYWARD_RECOVERY_KEY", recovery.trim());
        c
    };
    let ok = run(&["key", "create", "bulk"], &dir.path().join("rss0"))
        .status()
        .expect("create");
    assert!(ok.success());

    let (rss_enc, rss_dec) = (dir.path().join("rss-enc"), dir.path().join("rss-dec"));
    let mut enc = run(&["encrypt", "--key", "bulk"], &rss_enc)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn encrypt");
    let mut dec = run(&["decrypt"], &rss_dec)
        .stdin(enc.stdout.take().expect("encrypt stdout"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn decrypt");

    let base = base_block();
    let mut stdin = enc.stdin.take().expect("encrypt stdin");
    let feeder = {
        let base = base.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; BLOCK];
            for i in 0..TOTAL / BLOCK as u64 {
                block(&base, i, &mut buf);
                stdin.write_all(&buf).expect("feed encrypt");
            }
        })
    };
    let mut out = dec.stdout.take().expect("decrypt stdout");
    let (mut got, mut want) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    for i in 0..TOTAL / BLOCK as u64 {
        out.read_exact(&mut got).expect("decrypted block");
        block(&base, i, &mut want);
        assert!(got == want, "block {i} differs after the round trip");
    }
    assert_eq!(
        out.read(&mut got).expect("eof"),
        0,
        "no bytes beyond the input"
    );
    feeder.join().expect("feeder");
    assert!(enc.wait().expect("encrypt").success());
    assert!(dec.wait().expect("decrypt").success());
    let (e, d) = (peak_rss_kib(&rss_enc), peak_rss_kib(&rss_dec));
    println!("1 GiB round trip over pipes: peak RSS encrypt {e} KiB, decrypt {d} KiB");
    assert!(
        e < RSS_LIMIT_KIB && d < RSS_LIMIT_KIB,
        "peak RSS {e}/{d} KiB over 64 MiB"
    );
}
