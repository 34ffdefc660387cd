//! Helpers for the end-to-end tests of the `keyward` binary: locate the
//! built binary, run it in a private temporary directory with a clean
//! environment, and set up a keystore quickly.
#![allow(
    dead_code,
    reason = "each test file uses a different part of this module"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

// The keystore the tests make, the binary they run and how they run it are
// the daemon fixture's: one definition for every end-to-end test.
pub(crate) use keyward_tests::daemon::{
    FAST_ARGON2, PASSPHRASE, clean_command, keyward_bin, output_with_stdin,
};

/// What one run of the binary did.
#[derive(Debug)]
pub(crate) struct Run {
    /// Exit code (`None`: killed by a signal).
    pub(crate) code: Option<i32>,
    /// Raw stdout.
    pub(crate) stdout: Vec<u8>,
    /// Stderr as text.
    pub(crate) stderr: String,
}

impl Run {
    /// Stdout as text.
    pub(crate) fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Asserts success and returns self.
    #[track_caller]
    pub(crate) fn ok(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "command failed:\nstdout: {}\nstderr: {}",
            self.out(),
            self.stderr
        );
        self
    }

    /// Asserts exit `code`, and that the binary did not panic.
    #[track_caller]
    pub(crate) fn fails_with(self, code: i32) -> Self {
        assert_eq!(
            self.code,
            Some(code),
            "wrong exit code:\nstdout: {}\nstderr: {}",
            self.out(),
            self.stderr
        );
        assert!(
            !self.stderr.contains("internal error") && !self.stderr.contains("panicked"),
            "keyward panicked: {}",
            self.stderr
        );
        self
    }

    /// Asserts that stderr has exactly this `error:` line and `hint:` line.
    #[track_caller]
    pub(crate) fn diagnosis(self, error: &str, hint: &str) -> Self {
        let expected = format!("error: {error}\nhint: {hint}\n");
        assert!(
            self.stderr.contains(&expected),
            "stderr does not say\n{expected}\nit says\n{}",
            self.stderr
        );
        self
    }

    /// Asserts that stderr has this `hint:` line.
    #[track_caller]
    pub(crate) fn hint(self, hint: &str) -> Self {
        let expected = format!("\nhint: {hint}\n");
        assert!(
            format!("\n{}", self.stderr).contains(&expected),
            "stderr lacks the hint\n{hint}\nit says\n{}",
            self.stderr
        );
        self
    }

    /// Parses stdout as JSON.
    #[track_caller]
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.out()))
    }
}

/// A private directory to run keyward in, with its keystore path.
pub(crate) struct Env {
    /// The temporary directory (deleted on drop).
    pub(crate) dir: tempfile::TempDir,
    /// `dir/keystore.db`.
    pub(crate) store: PathBuf,
    /// Where `init` writes the recovery key.
    pub(crate) recovery_key: PathBuf,
}

impl Env {
    /// A directory with no keystore yet.
    pub(crate) fn empty() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("keystore.db");
        let recovery_key = dir.path().join("recovery.key");
        Self {
            dir,
            store,
            recovery_key,
        }
    }

    /// A keystore with the recovery key only.
    pub(crate) fn with_recovery() -> Self {
        let env = Self::empty();
        env.keyward(&[
            "init",
            "--recovery-key-out",
            env.recovery_key.to_str().expect("utf-8 path"),
        ])
        .ok();
        env
    }

    /// A keystore with the recovery key and [`PASSPHRASE`] (fast Argon2).
    pub(crate) fn ready() -> Self {
        let env = Self::with_recovery();
        env.enroll_passphrase().ok();
        env
    }

    /// `enroll passphrase` of [`PASSPHRASE`] (fast Argon2), authorized by
    /// the recovery key.
    pub(crate) fn enroll_passphrase(&self) -> Run {
        let mut args = vec!["enroll", "passphrase"];
        args.extend(FAST_ARGON2);
        self.run(
            &args,
            b"",
            &[
                ("KEYWARD_RECOVERY_KEY", &self.recovery_key_text()),
                ("KEYWARD_PASSPHRASE", PASSPHRASE),
            ],
        )
    }

    /// A path inside the directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A path inside the directory, as a string argument.
    pub(crate) fn arg(&self, name: &str) -> String {
        self.path(name).to_str().expect("utf-8 path").to_owned()
    }

    /// The recovery key `init` wrote.
    pub(crate) fn recovery_key_text(&self) -> String {
        std::fs::read_to_string(&self.recovery_key)
            .expect("recovery key file")
            .trim()
            .to_owned()
    }

    /// The command with a clean environment: no KEYWARD_* variables from the
    /// caller, HOME and XDG_DATA_HOME inside the temporary directory, and
    /// `--store` pointing at this keystore.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.bare_command(args);
        cmd.arg("--store").arg(&self.store);
        cmd
    }

    /// As [`Env::command`] without `--store`.
    pub(crate) fn bare_command(&self, args: &[&str]) -> Command {
        let mut cmd = clean_command(keyward_bin());
        cmd.env("HOME", self.dir.path())
            .env("XDG_DATA_HOME", self.dir.path().join("xdg"))
            .current_dir(self.dir.path())
            .args(args);
        cmd
    }

    /// Runs with no stdin and no secret in the environment.
    pub(crate) fn keyward(&self, args: &[&str]) -> Run {
        self.run(args, b"", &[])
    }

    /// Runs with [`PASSPHRASE`] in `KEYWARD_PASSPHRASE` and `stdin`.
    pub(crate) fn unlocked(&self, args: &[&str], stdin: &[u8]) -> Run {
        self.run(args, stdin, &[("KEYWARD_PASSPHRASE", PASSPHRASE)])
    }

    /// Runs with `stdin` and extra environment variables.
    pub(crate) fn run(&self, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_command(cmd, stdin)
    }
}

/// Runs `cmd` with `stdin` ([`output_with_stdin`]).
pub(crate) fn run_command(cmd: Command, stdin: &[u8]) -> Run {
    let output = output_with_stdin(cmd, stdin);
    Run {
        code: output.status.code(),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Decodes standard base64 (PEM bodies), ignoring whitespace.
pub(crate) fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .unwrap_or_else(|| panic!("not base64: {:?}", char::from(c)));
        acc = (acc << 6) | u32::try_from(v).expect("index < 64");
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Mode bits of a file.
pub(crate) fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}
