//! Crash safety of rotations: kill the `keyward` CLI with SIGKILL at random
//! moments during key rotations, master-key rotations and encryptions (at
//! least 50 kills that land while the process runs), then check that the
//! store opens, every ciphertext written before decrypts, and the audit log
//! verifies (docs/RELIABILITY.md §4 row 1).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keyward_tests::daemon::assert_success;

struct Env {
    _dir: tempfile::TempDir,
    store: PathBuf,
    recovery: String,
    work: PathBuf,
}

impl Env {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(common::keyward_bin());
        c.arg("--store")
            .arg(&self.store)
            .args(args)
            .env("KEYWARD_RECOVERY_KEY", &self.recovery)
            .env_remove("KEYWARD_PASSPHRASE")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let out = self.cmd(args).output().expect("spawn keyward");
        assert!(
            out.status.success(),
            "keyward {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn encrypt(&self, key: &str, plaintext: &[u8], n: usize) -> Option<PathBuf> {
        let input = self.work.join(format!("p{n}"));
        let output = self.work.join(format!("c{n}"));
        std::fs::write(&input, plaintext).expect("write plaintext");
        let status = self
            .cmd(&["encrypt", "--key", key, "-i"])
            .arg(&input)
            .arg("-o")
            .arg(&output)
            .status()
            .expect("spawn");
        status.success().then_some(output)
    }
}

fn setup() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("keystore.db");
    let recovery_file = dir.path().join("recovery.txt");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");
    let out = Command::new(common::keyward_bin())
        .arg("--store")
        .arg(&store)
        .arg("init")
        .arg("--recovery-key-out")
        .arg(&recovery_file)
        .stdin(Stdio::null())
        .output()
        .expect("spawn init");
    assert_success(out, "init");
    let recovery = std::fs::read_to_string(&recovery_file).expect("recovery key written");
    let env = Env {
        _dir: dir,
        store,
        recovery: recovery.trim().to_owned(),
        work,
    };
    env.run(&["key", "create", "docs"]);
    env.run(&["key", "create", "mail"]);
    // Versions make master-key rotation do real work inside its transaction.
    for _ in 0..20 {
        env.run(&["key", "rotate", "mail"]);
    }
    env
}

/// xorshift64*: enough randomness for kill timing, reproducible from the
/// printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn sigkill_during_rotations_loses_nothing() {
    let env = setup();
    let seed = std::env::var("KEYWARD_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 | 1)
        });
    println!("kill seed: {seed} (set KEYWARD_KILL_SEED to replay)");
    let mut rng = Rng(seed);

    // Ciphertexts written before and during the storm, with their plaintexts.
    let mut written: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for n in 0..4 {
        let plain = format!("record {n} before any crash").into_bytes();
        let key = if n % 2 == 0 { "docs" } else { "mail" };
        written.push((env.encrypt(key, &plain, n).expect("encrypt"), plain));
    }

    // How long does one master rotation take? Kills land uniformly within
    // 1.5 times that, so they hit start-up, unlock, the transaction and exit.
    let t = Instant::now();
    env.run(&["master", "rotate"]);
    let span = t.elapsed().as_micros().max(2_000) as u64 * 3 / 2;
    println!(
        "one master rotation: {:?}; kill window 0..{span} µs",
        t.elapsed()
    );

    let ops: [&[&str]; 3] = [
        &["master", "rotate"],
        &["key", "rotate", "docs"],
        &["key", "rotate", "mail"],
    ];
    let (mut kills, mut completed, mut n) = (0u32, 0u32, 100usize);
    let deadline = Instant::now() + Duration::from_secs(240);
    while kills < 60 && Instant::now() < deadline {
        n += 1;
        if n % 7 == 0 {
            // An encryption between crashes: must stay decryptable too.
            let plain = format!("record {n} between crashes").into_bytes();
            if let Some(path) = env.encrypt("docs", &plain, n) {
                written.push((path, plain));
            }
            continue;
        }
        let op = ops[(rng.next() % 3) as usize];
        let mut child = env
            .cmd(op)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_micros(rng.next() % span));
        if child.try_wait().expect("try_wait").is_none() {
            child.kill().expect("SIGKILL");
            kills += 1;
        } else {
            completed += 1;
        }
        child.wait().expect("reap");
        if n % 10 == 0 {
            env.run(&["status"]);
        }
    }
    println!("{kills} kills mid-command, {completed} commands finished before their kill");
    assert!(kills >= 50, "only {kills} kills landed while keyward ran");

    // The store opens, every ciphertext decrypts to its plaintext, the
    // audit log verifies, and the store still works.
    env.run(&["status"]);
    for (path, plain) in &written {
        let out = env.run(&["decrypt", "-i", path.to_str().expect("utf-8 path")]);
        assert_eq!(&out.stdout, plain, "{}", path.display());
    }
    env.run(&["audit", "verify"]);
    env.run(&["master", "rotate"]);
    env.run(&["key", "rotate", "docs"]);
    let (path, plain) = &written[0];
    let out = env.run(&["decrypt", "-i", path.to_str().expect("utf-8 path")]);
    assert_eq!(&out.stdout, plain);
    println!("{} ciphertexts decrypted after the crashes", written.len());
}
