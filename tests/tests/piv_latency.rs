//! Per-APDU latency of the PIV simulator through pcscd + vpcd (the numbers
//! in docs/BENCHMARKS.md). A measurement, not a timed assertion: it checks
//! the answers and prints the timings, including those with `TCP_QUICKACK`
//! off, to show the 48 ms delayed-ACK stall it avoids.

use std::ffi::CString;
use std::time::{Duration, Instant};

use keyward_hw_mocks::piv::{CardConfig, PivFixture};
use p256::elliptic_curve::sec1::ToSec1Point;
use yubikey::piv::{self, AlgorithmId, SlotId};
use yubikey::{MgmKey, PinPolicy, TouchPolicy, YubiKey};

struct Stats {
    mean: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let n = v.len();
    let total: Duration = v.iter().sum();
    Stats {
        mean: total / u32::try_from(n).expect("small"),
        p50: v[n / 2],
        p99: v[(n * 99) / 100],
        max: v[n - 1],
    }
}

fn report(name: &str, n: usize, s: &Stats) {
    println!(
        "{name:<34} n={n:<5} mean {:>8.3} ms  p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms",
        s.mean.as_secs_f64() * 1e3,
        s.p50.as_secs_f64() * 1e3,
        s.p99.as_secs_f64() * 1e3,
        s.max.as_secs_f64() * 1e3
    );
}

fn raw_get_version(reader: &str, n: usize) -> Vec<Duration> {
    let ctx = pcsc::Context::establish(pcsc::Scope::System).expect("pcsc");
    let name = CString::new(reader).expect("name");
    let card = ctx
        .connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::T1)
        .expect("connect");
    let mut buf = [0u8; 264];
    let r = card
        .transmit(&[0, 0xA4, 4, 0, 5, 0xA0, 0, 0, 3, 8], &mut buf)
        .expect("select");
    assert_eq!(&r[r.len() - 2..], &[0x90, 0]);
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let r = card
                .transmit(&[0, 0xFD, 0, 0, 0], &mut buf)
                .expect("GET VERSION");
            let d = t.elapsed();
            assert_eq!(r, &[5, 4, 3, 0x90, 0]);
            d
        })
        .collect()
}

#[test]
fn apdu_latency_through_pcscd() {
    let f = PivFixture::start(CardConfig::default()).expect("fixture");
    let reader = f.card.reader_name();

    let raw = stats(raw_get_version(&reader, 1000));
    report("raw GET VERSION (pcsc transmit)", 1000, &raw);

    let opens: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let yk = YubiKey::open().expect("open");
            let d = t.elapsed();
            drop(yk);
            d
        })
        .collect();
    let open = stats(opens);
    report("YubiKey::open()", 20, &open);

    let mut yk = YubiKey::open().expect("open");
    let t = Instant::now();
    for _ in 0..200 {
        yk.get_pin_retries().expect("retries");
    }
    println!(
        "{:<34} n=200   mean {:>8.3} ms",
        "get_pin_retries (SELECT + VERIFY)",
        (t.elapsed() / 200).as_secs_f64() * 1e3
    );
    let key = MgmKey::get_default(&yk).expect("key");
    yk.authenticate(&key).expect("auth");
    piv::generate(
        &mut yk,
        SlotId::KeyManagement,
        AlgorithmId::EccP256,
        PinPolicy::Never,
        TouchPolicy::Never,
    )
    .expect("generate");
    let host = p256::SecretKey::from_slice(&[0x11; 32]).expect("scalar");
    let point = host.public_key().to_sec1_point(false);
    let ecdh: Vec<Duration> = (0..200)
        .map(|_| {
            let t = Instant::now();
            piv::decrypt_data(
                &mut yk,
                point.as_bytes(),
                AlgorithmId::EccP256,
                SlotId::KeyManagement,
            )
            .expect("ecdh");
            t.elapsed()
        })
        .collect();
    report("P-256 ECDH (decrypt_data)", 200, &stats(ecdh));
    let sign: Vec<Duration> = (0..200)
        .map(|_| {
            let t = Instant::now();
            piv::sign_data(
                &mut yk,
                &[7u8; 32],
                AlgorithmId::EccP256,
                SlotId::KeyManagement,
            )
            .expect("sign");
            t.elapsed()
        })
        .collect();
    let sign = stats(sign);
    report("P-256 ECDSA (sign_data)", 200, &sign);
    drop(yk);

    // The trap this avoids: without TCP_QUICKACK every APDU waits for the
    // delayed ACK of vpcd's two-part write.
    f.card.set_quickack(false);
    let slow = stats(raw_get_version(&reader, 50));
    report("raw GET VERSION without QUICKACK", 50, &slow);
    f.card.set_quickack(true);
}
