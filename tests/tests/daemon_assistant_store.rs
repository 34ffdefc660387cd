//! End to end: the assistant's encrypted store (`examples/assistant-store`)
//! on `keyward serve`, unlocked over the API with a TPM protector on swtpm.
//!
//! The keystore gets a TPM protector through the CLI (`keyward enroll
//! tpm`); the daemon is unlocked with its PIN (`POST /v1/unlock`); the
//! assistant is a client granted only `datakey` on key `assistant-store`.
//! We check the whole life of the store: `init`, `put`, `get` and `list`
//! round-trip; a lock closes the store (exit 3 and the locked message) and
//! an unlock opens it again; another client's token, a revoked token, a
//! stopped daemon and a key file from another store are each refused with
//! their diagnosis; and neither the database nor the key file holds the
//! value in clear.
//!
//! Needs `swtpm` and `tpm2-tools`, and two binaries next to the test
//! executable: `target/debug/keyward` (`cargo build -p keyward`) and
//! `target/debug/assistant-store` (`cargo build --manifest-path
//! examples/assistant-store/Cargo.toml --target-dir target`);
//! scripts/test.sh builds both before the tests.

mod common;

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{Run, clean_command, mode, run_command};
use keyward_hw_mocks::swtpm::Swtpm;
use keyward_tests::daemon::{Daemon, Store, assert_ok};
use serde_json::{Value, json};

/// The TPM PIN the protector is enrolled with.
const PIN: &str = "246810";
/// The keyward key whose data key opens the store.
const KEY: &str = "assistant-store";
/// A value the store must never show in clear.
const VALUE: &[u8] = b"blood pressure 118/76, measured 2026-11-23 07:30";
/// Its entry name.
const NAME: &str = "health/blood-pressure";

const LOCKED: &str = "error: the key service is locked: run `keyward unlock`\n";

/// `target/<profile>/assistant-store`, beside `keyward`: the example is its
/// own workspace built into the shared target directory. Refused if it is
/// missing or older than its sources, as `keyward` is (common/mod.rs).
fn assistant_store_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        const BUILD: &str = "cargo build --manifest-path examples/assistant-store/Cargo.toml \
                             --target-dir target";
        let exe = std::env::current_exe().expect("the test knows its own path");
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .expect("tests run from target/<profile>/deps")
            .join("assistant-store");
        let built = fs::metadata(&bin)
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| panic!("{} is missing: build it with `{BUILD}`", bin.display()));
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ is inside the workspace")
            .join("examples/assistant-store");
        let sources = fs::read_dir(crate_dir.join("src"))
            .expect("examples/assistant-store/src")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .chain([crate_dir.join("Cargo.toml")]);
        for source in sources {
            let modified = fs::metadata(&source)
                .and_then(|m| m.modified())
                .expect("source mtime");
            assert!(
                modified <= built,
                "{} is older than {}: rebuild it with `{BUILD}`",
                bin.display(),
                source.display()
            );
        }
        bin
    })
    .clone()
}

/// The daemon, unlockable with the TPM, and the assistant's files.
struct Setup {
    /// Kept alive for the daemon.
    _tpm: Swtpm,
    daemon: Daemon,
    /// The store's database.
    db: PathBuf,
}

impl Setup {
    /// A keystore (recovery key and passphrase) with a TPM protector
    /// enrolled through the CLI, and `keyward serve` on it, locked.
    fn new() -> Self {
        let tpm = Swtpm::start().expect("swtpm (apt-get install swtpm swtpm-tools)");
        let tcti = tpm.tcti();
        let store = Store::new();
        let out = store.keyward_ok(
            &["enroll", "tpm", "--tcti", &tcti],
            &[
                ("KEYWARD_PIN", PIN),
                ("KEYWARD_RECOVERY_KEY", &store.recovery_key_text()),
            ],
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(": tpm "),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // `--tcti` is a global option: the daemon reaches this swtpm.
        let daemon = Daemon::spawn(store, &["--tcti", &tcti]);
        let db = daemon.store().dir().join("assistant").join("assistant.db");
        fs::create_dir(db.parent().expect("db dir")).expect("create the assistant's directory");
        Self {
            _tpm: tpm,
            daemon,
            db,
        }
    }

    /// `POST /v1/unlock` with the TPM and its PIN, as the owner.
    fn unlock_with_tpm(&self) {
        let (status, body) = self.daemon.request(
            "POST",
            "/v1/unlock",
            Some(&json!({"with": "tpm", "secrets": {"pin": PIN}})),
            None,
        );
        assert_eq!(status, 200, "unlock with the TPM: {body}");
        assert_eq!(body["protector"]["kind"], "tpm", "{body}");
    }

    /// Writes `token` to a new file of mode 0600 and returns its path.
    fn token_file(&self, name: &str, token: &str) -> PathBuf {
        let path = self.daemon.store().dir().join(name);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("create a token file");
        writeln!(file, "{token}").expect("write the token");
        path
    }

    /// `assistant-store --db DB ARGS` with `stdin`, a clean environment,
    /// the daemon's socket and the token in `token_file`.
    fn assistant(&self, db: &Path, token_file: &Path, args: &[&str], stdin: &[u8]) -> Run {
        self.assistant_on(self.daemon.socket(), db, token_file, args, stdin)
    }

    /// As [`Setup::assistant`] with another socket.
    fn assistant_on(
        &self,
        socket: &Path,
        db: &Path,
        token_file: &Path,
        args: &[&str],
        stdin: &[u8],
    ) -> Run {
        let mut cmd = clean_command(assistant_store_bin());
        cmd.env_remove("XDG_RUNTIME_DIR")
            .env("KEYWARD_SOCKET", socket)
            .env("KEYWARD_CLIENT_TOKEN_FILE", token_file)
            .current_dir(self.daemon.store().dir())
            .arg("--db")
            .arg(db)
            .args(args);
        run_command(cmd, stdin)
    }
}

/// Asserts that the assistant said the key service refused its token.
#[track_caller]
fn assert_token_refused(run: &Run) {
    assert!(
        run.stderr
            .starts_with("error: the key service does not accept the client token in "),
        "{}",
        run.stderr
    );
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn store_opens_only_while_unlocked_and_only_for_its_client() {
    let setup = Setup::new();
    let daemon = &setup.daemon;
    setup.unlock_with_tpm();
    daemon.create_key(KEY);
    daemon.create_key("notes");
    let token = setup.token_file(
        "assistant.token",
        &daemon.add_client("assistant", &["datakey"], &[KEY]),
    );
    let other = setup.token_file(
        "other.token",
        &daemon.add_client("other", &["datakey"], &["notes"]),
    );
    let db = setup.db.as_path();

    // init, put, get, list.
    let run = setup
        .assistant(db, &token, &["init", "--key", KEY], b"")
        .ok();
    assert!(run.out().starts_with("created "), "{}", run.out());
    let key_file = db.with_extension("db.key");
    assert_eq!(mode(db), 0o600);
    assert_eq!(mode(&key_file), 0o600);
    setup.assistant(db, &token, &["put", NAME], VALUE).ok();
    let run = setup.assistant(db, &token, &["get", NAME], b"").ok();
    assert_eq!(run.stdout, VALUE);
    let run = setup.assistant(db, &token, &["list"], b"").ok();
    assert_eq!(run.out(), format!("{NAME}\n"));
    // The value is never an argument: one given there is refused.
    setup
        .assistant(db, &token, &["put", NAME, "secret"], b"")
        .fails_with(2);

    // Neither file holds the value (nor its name) in clear, and the
    // database is no plain SQLite file.
    let raw = fs::read(db).expect("read the database");
    assert!(!raw.starts_with(b"SQLite format 3"));
    assert!(!contains(&raw, VALUE) && !contains(&raw, b"blood pressure"));
    assert!(!contains(&raw, NAME.as_bytes()));
    let key_text = fs::read(&key_file).expect("read the key file");
    assert!(!contains(&key_text, VALUE));
    let key_json: Value = serde_json::from_slice(&key_text).expect("the key file is JSON");
    assert_eq!(key_json["key"], KEY);

    // Locked: the store does not open, and says why.
    let (status, body) = daemon.request("POST", "/v1/lock", None, None);
    assert_eq!((status, &body), (200, &json!({"locked": true})));
    let run = setup
        .assistant(db, &token, &["get", NAME], b"")
        .fails_with(3);
    assert!(run.stderr.starts_with(LOCKED), "{}", run.stderr);
    assert!(run.stdout.is_empty());
    setup
        .assistant(db, &token, &["put", NAME], b"overwritten while locked")
        .fails_with(3);

    // Unlocked again with the TPM: it opens, the value unchanged.
    setup.unlock_with_tpm();
    let run = setup.assistant(db, &token, &["get", NAME], b"").ok();
    assert_eq!(run.stdout, VALUE);

    // A client granted another key is refused the data key.
    let run = setup
        .assistant(db, &other, &["get", NAME], b"")
        .fails_with(6);
    assert!(
        run.stderr.starts_with(&format!(
            "error: the key service refused this client the data key of key \"{KEY}\""
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("\nhint: use the token of a client granted `datakey`")
    );
    // So is a client whose token is not a keyward token at all...
    let bogus = setup.token_file(
        "bogus.token",
        "kwt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    );
    let run = setup
        .assistant(db, &bogus, &["get", NAME], b"")
        .fails_with(3);
    assert_token_refused(&run);
    // ... and a token file others can read is not even sent.
    let loose = setup.token_file("loose.token", "kwt_x");
    fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    setup
        .assistant(db, &loose, &["get", NAME], b"")
        .fails_with(3)
        .hint(&format!("make it private: `chmod 600 {}`", loose.display()));

    // A key file from another store (same file name, same key, another
    // data key): SQLCipher's "file is not a database", explained.
    let elsewhere = daemon.store().dir().join("elsewhere");
    fs::create_dir(&elsewhere).expect("mkdir");
    let second = elsewhere.join("assistant.db");
    setup
        .assistant(&second, &token, &["init", "--key", KEY], b"")
        .ok();
    let copy = daemon.store().dir().join("copy");
    fs::create_dir(&copy).expect("mkdir");
    let copied = copy.join("assistant.db");
    fs::copy(db, &copied).expect("copy the database");
    fs::copy(
        second.with_extension("db.key"),
        copied.with_extension("db.key"),
    )
    .expect("copy the other key file");
    let run = setup
        .assistant(&copied, &token, &["get", NAME], b"")
        .fails_with(5);
    assert!(
        run.stderr.starts_with(&format!(
            "error: {} cannot be opened with its key file: SQLCipher says \"file is not a \
             database\"\nhint: ",
            copied.display()
        )),
        "{}",
        run.stderr
    );
    // A renamed store is recognised before the key service is asked.
    let renamed = copy.join("renamed.db");
    fs::copy(db, &renamed).expect("copy the database");
    fs::copy(&key_file, renamed.with_extension("db.key")).expect("copy the key file");
    let run = setup
        .assistant(&renamed, &token, &["get", NAME], b"")
        .fails_with(5);
    assert!(
        run.stderr.contains("was created as assistant.db"),
        "{}",
        run.stderr
    );

    // A revoked client is refused from its next request on.
    assert_ok(daemon.request("DELETE", "/v1/clients/assistant", None, None));
    let run = setup
        .assistant(db, &token, &["get", NAME], b"")
        .fails_with(3);
    assert_token_refused(&run);

    // No daemon on the socket: said so, with how to start one.
    let nowhere = daemon.store().dir().join("s").join("nobody.sock");
    let run = setup
        .assistant_on(&nowhere, db, &token, &["get", NAME], b"")
        .fails_with(7);
    assert!(
        run.stderr.starts_with(&format!(
            "error: the key service is not running (nothing listens on {})\nhint: start it \
             with `keyward serve`",
            nowhere.display()
        )),
        "{}",
        run.stderr
    );
}
