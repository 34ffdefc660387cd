//! In-process baseline for the daemon benchmark (docs/BENCHMARKS.md): the
//! same small-message decrypt the daemon serves over its socket, called
//! directly on a [`Service`] in daemon mode (cached data keys, relaxed
//! audit commits), so the ratio shows what the socket, HTTP and JSON cost.
//!
//! Run: `cargo run --release -p keyward-kms --example inprocess_decrypt --
//! [SIZE] [SECONDS]` (defaults: 64 bytes, 5 s). Prints one JSON line.

use std::time::{Duration, Instant};

use keyward_kms::backend::SecretRequest;
use keyward_kms::service::{Backends, KeySpec, Options, UnlockWith};
use keyward_kms::{
    BackendKind, Callbacks, DataClass, EnrollRequest, KeyName, KeyPurpose, Notice, Result,
    SecretString, Service,
};

/// Answers the one prompt (the passphrase) with a fixed test value.
struct Fixed;

impl Callbacks for Fixed {
    fn request_secret(&self, _: &SecretRequest<'_>) -> Result<SecretString> {
        Ok(SecretString::from(
            "benchmark passphrase, not a real one".to_owned(),
        ))
    }
    fn notify(&self, _: &Notice<'_>) {}
    fn show_secret(&self, _: &str, _: &SecretString) -> Result<()> {
        Ok(())
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let dir = std::env::temp_dir().join(format!("keyward-inprocess-{}", std::process::id()));
    let path = dir.join("keystore.db");
    let mut backends = Backends::new();
    backends.add(std::sync::Arc::new(
        keyward_kms::protectors::passphrase::Backend::with_defaults(
            keyward_kms::protectors::passphrase::KdfParams::new(8192, 1, 1)?,
        ),
    ));
    let request = EnrollRequest {
        label: "bench".into(),
        ..EnrollRequest::default()
    };
    let (svc, _) = Service::init(
        &path,
        backends.clone(),
        BackendKind::Passphrase,
        &request,
        &Fixed,
    )?;
    drop(svc);
    let mut svc = Service::open_with(&path, backends, Options::daemon())?;
    svc.unlock(UnlockWith::Any, &Fixed)?;
    let name = KeyName::new("bench")?;
    svc.create_key(
        &name,
        &KeySpec {
            purpose: KeyPurpose::Encrypt,
            class: DataClass::Private,
            rotation_period: None,
            usage_limit: None,
        },
    )?;
    let ciphertext = svc.encrypt(&name, b"", &vec![0x5a; size])?;

    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    while Instant::now() < deadline {
        let t = Instant::now();
        let d = svc.decrypt(b"", &ciphertext)?;
        latencies.push(t.elapsed());
        std::hint::black_box(d.plaintext.expose()[0]);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    // Nearest-rank percentile (p in per mille).
    let pct = |per_mille: usize| {
        let i = (latencies.len() * per_mille).div_ceil(1000).max(1) - 1;
        latencies[i].as_secs_f64() * 1e6
    };
    println!(
        "{{\"mode\":\"in-process\",\"size\":{size},\"requests\":{},\"req_per_s\":{:.0},\
         \"p50_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1}}}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        pct(500),
        pct(990),
        pct(1000),
    );
    drop(svc);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
