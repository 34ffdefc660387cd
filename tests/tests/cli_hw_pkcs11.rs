//! End-to-end tests of the `keyward` binary with PKCS#11 protectors on
//! SoftHSM2 (issue 6): both modes enroll, encrypt, unlock with the token
//! PIN in a new process and decrypt; wrong PINs change nothing; the key is
//! visible to `pkcs11-tool`; a removed token and a missing module are
//! reported clearly; token signatures verify with `openssl`.
//!
//! Each test runs in a child process with a SoftHSM configuration of its
//! own (`softhsm::isolated`); keyward gets the same `SOFTHSM2_CONF`.
//! Needs `softhsm2`, `opensc` and `openssl`.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Env, Run, run_command};
use keyward_hw_mocks::softhsm::{self, MODULE, SoftHsm, SoftHsmToken};

const WRONG_PIN_HINT: &str = "keyward never retries a PIN: check it and run the command again \
     (--pin-fd N, KEYWARD_PIN or the prompt); after too many wrong PINs the token blocks it, \
     so if you have forgotten it, unlock with the recovery key";

/// A keystore (recovery key only) and a SoftHSM token.
struct Hw {
    env: Env,
    conf: &'static Path,
    token: SoftHsmToken,
}

impl Hw {
    fn new(hsm: &'static SoftHsm, label: &str) -> Self {
        Self {
            env: Env::with_recovery(),
            conf: hsm.conf(),
            token: SoftHsmToken::new(label).expect("SoftHSM token"),
        }
    }

    /// Runs keyward with this SoftHSM configuration and the module in
    /// KEYWARD_PKCS11_MODULE, with `vars` added to a clean environment.
    fn run(&self, args: &[&str], stdin: &[u8], vars: &[(&str, &str)]) -> Run {
        let mut cmd = self.env.command(args);
        for var in ["KEYWARD_PIN", "KEYWARD_TPM_TCTI", "KEYWARD_PKCS11_MODULE"] {
            cmd.env_remove(var);
        }
        cmd.env(softhsm::CONF_ENV, self.conf)
            .env("KEYWARD_PKCS11_MODULE", MODULE);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        run_command(cmd, stdin)
    }

    /// Runs with the token's user PIN in KEYWARD_PIN.
    fn pin(&self, args: &[&str], stdin: &[u8]) -> Run {
        self.run(args, stdin, &[("KEYWARD_PIN", self.token.pin())])
    }

    /// Enrolls the token (PIN in KEYWARD_PIN, unlocked by the recovery key).
    fn enroll(&self, extra: &[&str]) -> Run {
        let uri = self.token.uri();
        let mut args = vec!["enroll", "pkcs11", "--uri", uri.as_str()];
        args.extend(extra);
        let rk = self.env.recovery_key_text();
        self.run(
            &args,
            b"",
            &[
                ("KEYWARD_PIN", self.token.pin()),
                ("KEYWARD_RECOVERY_KEY", &rk),
            ],
        )
        .ok()
    }

    fn listing(&self) -> (serde_json::Value, serde_json::Value) {
        (
            self.env
                .keyward(&["protectors", "list", "--json"])
                .ok()
                .json(),
            self.env.keyward(&["key", "list", "--json"]).ok().json(),
        )
    }

    /// Creates `notes`, unlocking with `--protector id` and the PIN, and
    /// encrypts `text` into `note.kw`.
    fn encrypt_note(&self, id: &str, text: &str) {
        self.pin(&["--protector", id, "key", "create", "notes"], b"")
            .ok();
        self.pin(
            &[
                "--protector",
                id,
                "encrypt",
                "--key",
                "notes",
                "-o",
                &self.env.arg("note.kw"),
            ],
            text.as_bytes(),
        )
        .ok();
    }

    /// The token identity as keyward shows it.
    fn identity(&self) -> String {
        format!(
            "pkcs11:token={};serial={}",
            self.token.label(),
            self.token.serial()
        )
    }
}

fn round_trip(mode: &str) {
    softhsm::isolated(&format!("{}_round_trip", mode.replace('-', "_")), |hsm| {
        let hw = Hw::new(hsm, &format!("cli-{mode}"));
        let run = hw.enroll(&["--mode", mode, "--label", "desk"]);
        assert_eq!(
            run.out(),
            format!("enrolled protector 2: pkcs11 'desk' on {}\n", hw.identity())
        );
        // The key keyward created, as the token's own tools list it.
        let out = hw
            .token
            .pkcs11_tool(&["--list-objects"])
            .expect("pkcs11-tool");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("label:      keyward desk"), "{text}");
        let class = if mode == "ecdh" {
            "Private Key Object; EC"
        } else {
            "Secret Key Object; AES length 32"
        };
        assert!(text.contains(class), "{text}");

        // The PIN alone picks the only hardware protector.
        hw.pin(&["key", "create", "notes"], b"").ok();
        hw.pin(
            &["encrypt", "--key", "notes", "-o", &hw.env.arg("note.kw")],
            b"tax return 2025",
        )
        .ok();
        // A new process: the PIN from a file descriptor, the data from -i.
        let pin_line = format!("{}\n", hw.token.pin());
        let run = hw
            .run(
                &["decrypt", "--pin-fd", "0", "-i", &hw.env.arg("note.kw")],
                pin_line.as_bytes(),
                &[],
            )
            .ok();
        assert_eq!(run.out(), "tax return 2025");
        if mode == "aes-gcm" {
            // Wrapping under an AES key needs the token: a master-key
            // rotation unlocked by the recovery key cannot re-wrap for it,
            // and nothing changes.
            let rk = hw.env.recovery_key_text();
            let run = hw
                .run(&["master", "rotate"], b"", &[("KEYWARD_RECOVERY_KEY", &rk)])
                .fails_with(3)
                .hint(
                    "an aes-gcm PKCS#11 protector wraps on its token, so the token must be \
                     logged in: unlock with that protector (--protector ID and its PIN), then \
                     run the command again",
                );
            assert!(
                run.stderr.contains("CKR_USER_NOT_LOGGED_IN"),
                "{}",
                run.stderr
            );
            let run = hw.pin(&["master", "rotate"], b"").ok();
            assert_eq!(
                run.out(),
                "master key rotated: epoch 2; every key and protector was re-wrapped\n"
            );
        }

        // --replace swaps it for a new key on the token in one step.
        let run = hw.enroll(&["--mode", mode, "--label", "desk2", "--replace"]);
        assert_eq!(
            run.out(),
            format!(
                "enrolled protector 3: pkcs11 'desk2' on {}\nremoved protector 2, which it \
                 replaces\n",
                hw.identity()
            )
        );
        let run = hw.pin(&["decrypt", "-i", &hw.env.arg("note.kw")], b"").ok();
        assert_eq!(run.out(), "tax return 2025");
        let json = hw
            .env
            .keyward(&["protectors", "list", "--json"])
            .ok()
            .json();
        let kinds: Vec<(u64, &str)> = json
            .as_array()
            .expect("array")
            .iter()
            .map(|p| {
                (
                    p["id"].as_u64().expect("id"),
                    p["kind"].as_str().expect("kind"),
                )
            })
            .collect();
        assert_eq!(kinds, vec![(1, "recovery"), (3, "pkcs11")]);
    });
}

#[test]
fn ecdh_round_trip() {
    round_trip("ecdh");
}

#[test]
fn aes_gcm_round_trip() {
    round_trip("aes-gcm");
}

#[test]
fn wrong_pin_changes_nothing() {
    softhsm::isolated("wrong_pin_changes_nothing", |hsm| {
        let hw = Hw::new(hsm, "cli-wrong-pin");
        hw.enroll(&[]);
        hw.encrypt_note("2", "the old note");
        let before = hw.listing();
        let note = hw.env.arg("note.kw");
        for _ in 0..2 {
            let run = hw
                .run(&["decrypt", "-i", &note], b"", &[("KEYWARD_PIN", "000000")])
                .fails_with(3)
                .diagnosis("wrong PIN", WRONG_PIN_HINT);
            assert!(run.stdout.is_empty());
        }
        assert_eq!(hw.listing(), before);
        let run = hw.pin(&["decrypt", "-i", &note], b"").ok();
        assert_eq!(run.out(), "the old note");
        // Signing spends no PIN try on the keystore: same error, same remedy.
        hw.run(
            &keyward_tests::sign_args("2", &note, &hw.env.arg("x.sig")),
            b"",
            &[("KEYWARD_PIN", "000000")],
        )
        .fails_with(3)
        .diagnosis("wrong PIN", WRONG_PIN_HINT);
        assert!(!hw.env.path("x.sig").exists());
        assert_eq!(hw.listing(), before);
    });
}

#[test]
fn removed_token_and_missing_module_are_reported() {
    softhsm::isolated("removed_token_and_missing_module_are_reported", |hsm| {
        let hw = Hw::new(hsm, "cli-removable");
        hw.enroll(&[]);
        hw.encrypt_note("2", "kept safe");
        let note = hw.env.arg("note.kw");

        // The module is looked for where --module says, before the token.
        hw.pin(
            &[
                "--module",
                "/nonexistent/libpkcs11.so",
                "decrypt",
                "-i",
                &note,
            ],
            b"",
        )
        .fails_with(7)
        .diagnosis(
            "PKCS#11 module /nonexistent/libpkcs11.so not found (No such file or directory (os \
             error 2))",
            "install it or give the right path with --module / KEYWARD_PKCS11_MODULE (usual \
             places: /usr/lib/softhsm/libsofthsm2.so, /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so, \
             /usr/lib/x86_64-linux-gnu/pkcs11/yubihsm_pkcs11.so)",
        );
        // A file that is not a module.
        hw.pin(&["--module", "/etc/hostname", "decrypt", "-i", &note], b"")
            .fails_with(7)
            .hint(
                "give the path of a PKCS#11 module for this machine with --module PATH or \
                 KEYWARD_PKCS11_MODULE",
            );

        // "Unplug" the token: delete its directory.
        hw.token.remove().expect("remove token");
        hw.pin(&["decrypt", "-i", &note], b"")
            .fails_with(7)
            .diagnosis(
                &format!(
                    "PKCS#11 token \"{}\" (serial {}) is not present (no initialized token is \
                     visible)",
                    hw.token.label(),
                    hw.token.serial()
                ),
                "insert the token and try again (SoftHSM: check SOFTHSM2_CONF and its token \
                 directory), or unlock with another protector (e.g. --recovery-key-file FILE)",
            );
        // The recovery key still opens the keystore.
        let rk = hw.env.recovery_key_text();
        let run = hw
            .run(
                &["decrypt", "-i", &note],
                b"",
                &[("KEYWARD_RECOVERY_KEY", &rk)],
            )
            .ok();
        assert_eq!(run.out(), "kept safe");

        // Another token with the same label is the wrong device.
        let twin = SoftHsmToken::new(hw.token.label()).expect("second token");
        let run = hw.pin(&["decrypt", "-i", &note], b"").fails_with(7).hint(
            "connect the token this protector was enrolled with (`keyward protectors list` \
                 shows it), or unlock with another protector (e.g. --recovery-key-file FILE)",
        );
        assert!(
            run.stderr.contains(&format!(
                "error: wrong device: expected {}, found pkcs11:token={};serial={}\n",
                hw.identity(),
                twin.label(),
                twin.serial()
            )),
            "{}",
            run.stderr
        );
    });
}

#[test]
fn token_signatures_verify_with_openssl() {
    softhsm::isolated("token_signatures_verify_with_openssl", |hsm| {
        let hw = Hw::new(hsm, "cli-signer");
        hw.enroll(&["--mode", "ecdh", "--label", "ecdsa"]);
        hw.enroll(&["--mode", "aes-gcm", "--sign", "ed25519", "--label", "eddsa"]);
        hw.enroll(&["--mode", "aes-gcm", "--label", "nosign"]);
        let msg = hw.env.path("message.txt");
        std::fs::write(&msg, b"transfer approved\n").expect("write");
        let msg_arg = msg.to_str().expect("utf-8");

        for (id, algorithm) in [("2", "ecdsa-p256-sha256"), ("3", "ed25519")] {
            let sig = hw.env.path(&format!("{id}.sig"));
            hw.pin(
                &keyward_tests::sign_args(id, msg_arg, sig.to_str().expect("utf-8")),
                b"",
            )
            .ok();
            let json = hw
                .env
                .keyward(&["export-public", "--protector", id, "--json"])
                .ok()
                .json();
            assert_eq!(json["kind"], "pkcs11");
            assert_eq!(json["algorithm"], algorithm);
            let pem = hw.env.path(&format!("{id}.pem"));
            let text = hw
                .env
                .keyward(&["export-public", "--protector", id])
                .ok()
                .out();
            assert_eq!(json["pem"], text.as_str());
            std::fs::write(&pem, text).expect("write");
            assert!(
                openssl_verify(algorithm, &pem, &sig, &msg),
                "openssl rejects the {algorithm} signature"
            );
            let forged = hw.env.path("forged.txt");
            std::fs::write(&forged, b"transfer approved!\n").expect("write");
            assert!(!openssl_verify(algorithm, &pem, &sig, &forged));
        }
        // An aes-gcm protector without --sign ed25519 has no key to sign
        // with: said before any PIN is asked for.
        hw.env
            .keyward(&["export-public", "--protector", "4"])
            .fails_with(2)
            .diagnosis(
                "protector 4 (pkcs11, aes-gcm mode) has no key to sign with",
                "enroll the token with --mode ecdh, or add an Ed25519 key with --sign ed25519",
            );
        hw.run(
            &keyward_tests::sign_args("4", msg_arg, &hw.env.arg("4.sig")),
            b"",
            &[],
        )
        .fails_with(7)
        .diagnosis(
            "pkcs11 backend does not support signing with an aes-gcm enrollment (enroll \
                 with mode=ecdh or sign=ed25519)",
            "an aes-gcm protector has no key to sign with: enroll the token with --mode ecdh, \
                 or add an Ed25519 key with --sign ed25519",
        );

        // Three token protectors: a PIN alone does not say which.
        hw.pin(&["key", "create", "k"], b"")
            .fails_with(2)
            .diagnosis(
                "a PIN was supplied and 3 hardware protectors are enrolled (pkcs11 2, pkcs11 3, \
                 pkcs11 4)",
                "choose the one the PIN is for with --protector ID or --with KIND",
            );
        hw.pin(&["--with", "pkcs11", "key", "create", "k"], b"")
            .ok();
    });
}

/// Verifies with openssl: `dgst -sha256 -verify` for ECDSA, `pkeyutl
/// -verify -rawin` for Ed25519.
fn openssl_verify(algorithm: &str, pem: &Path, sig: &Path, msg: &Path) -> bool {
    let mut cmd = Command::new("openssl");
    if algorithm == "ed25519" {
        cmd.args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
            .arg(pem)
            .arg("-sigfile")
            .arg(sig)
            .arg("-in")
            .arg(msg);
    } else {
        cmd.args(["dgst", "-sha256", "-verify"])
            .arg(pem)
            .arg("-signature")
            .arg(sig)
            .arg(msg);
    }
    cmd.output().expect("openssl installed").status.success()
}
