//! In-process baseline for docs/BENCHMARKS.md (issue #6): ECDSA P-256
//! signatures straight through `cryptoki`, one logged-in session, one
//! thread, SHA-256 on the host and `CKM_ECDSA` on the token, exactly what
//! keyward's PKCS#11 backend does per signature. `keyward serve` signing
//! with the same key (`POST /v1/device/sign`) is compared against it.
//!
//! Run: `KEYWARD_PIN=… cargo run --release -p keyward-backends --example
//! cryptoki_sign -- MODULE TOKEN_LABEL KEY_LABEL [SECONDS]`. Prints one
//! JSON line.

use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use sha2::{Digest as _, Sha256};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(module), Some(token_label), Some(key_label)) =
        (args.next(), args.next(), args.next())
    else {
        return Err("usage: cryptoki_sign MODULE TOKEN_LABEL KEY_LABEL [SECONDS]".into());
    };
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let pin = std::env::var("KEYWARD_PIN").map_err(|_| "set KEYWARD_PIN to the user PIN")?;

    let pkcs11 = Pkcs11::new(&module)?;
    pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
    let slot = pkcs11
        .get_slots_with_token()?
        .into_iter()
        .find(|s| {
            pkcs11
                .get_token_info(*s)
                .is_ok_and(|t| t.label().trim_end() == token_label)
        })
        .ok_or("no token with that label")?;
    let session = pkcs11.open_rw_session(slot)?;
    session.login(UserType::User, Some(&AuthPin::new(pin.into())))?;
    let key = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(key_label.into_bytes()),
        ])?
        .into_iter()
        .next()
        .ok_or("no private key with that label")?;

    let message = [0x5au8; 64];
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    while Instant::now() < deadline {
        let t = Instant::now();
        let digest = Sha256::digest(message);
        let sig = session.sign(&Mechanism::Ecdsa, key, digest.as_slice())?;
        latencies.push(t.elapsed());
        std::hint::black_box(sig);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    // Nearest-rank percentile (per mille).
    let pct = |per_mille: usize| {
        let i = (latencies.len() * per_mille).div_ceil(1000).max(1) - 1;
        latencies[i].as_secs_f64() * 1e6
    };
    println!(
        "{{\"mode\":\"in-process cryptoki\",\"signatures\":{},\"per_s\":{:.0},\
         \"p50_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1}}}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        pct(500),
        pct(990),
        pct(1000),
    );
    session.logout()?;
    Ok(())
}
