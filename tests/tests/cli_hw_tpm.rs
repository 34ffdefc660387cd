//! End-to-end tests of the `keyward` binary with a TPM protector on swtpm
//! (issue 5): enroll, unlock with the PIN in a new process, wrong PINs and
//! lockout, PCR binding and `enroll tpm --replace`, a TPM that goes away or
//! is another one, and TPM signatures checked by `openssl`.
//!
//! Needs `swtpm`, `tpm2-tools` and `openssl` (scripts/install-deps.sh test).

mod common;

use common::{Env, Run, run_command};
use keyward_hw_mocks::swtpm::Swtpm;

const PIN: &str = "246810";
const WRONG_PIN_HINT: &str = "keyward never retries a PIN: check it and run the command again \
     (--pin-fd N, KEYWARD_PIN or the prompt); after too many wrong PINs the TPM locks out for \
     a while, so if you have forgotten it, unlock with the recovery key";
const NO_TPM_HINT: &str = "is swtpm running, or is /dev/tpmrm0 there and usable by you (group \
     tss)? set KEYWARD_TPM_TCTI or --tcti to the TPM's TCTI, or unlock with another protector \
     (e.g. --recovery-key-file FILE)";
const WRONG_TPM_HINT: &str = "this TPM protector belongs to another TPM, or this TPM was \
     cleared since enrollment: use the machine it was enrolled on, or unlock with the recovery \
     key and enroll this TPM with `keyward enroll tpm --replace`";

/// A keystore (recovery key only) and a swtpm of its own.
struct Hw {
    env: Env,
    tpm: Swtpm,
}

impl Hw {
    fn new() -> Self {
        Self {
            env: Env::with_recovery(),
            tpm: Swtpm::start().expect("swtpm (apt-get install swtpm swtpm-tools)"),
        }
    }

    /// Runs keyward against this TPM, with `vars` added to a clean
    /// environment (no PIN or hardware settings from the caller).
    fn run_with(&self, tcti: &str, args: &[&str], stdin: &[u8], vars: &[(&str, &str)]) -> Run {
        let mut cmd = self.env.command(args);
        for var in ["KEYWARD_PIN", "KEYWARD_PKCS11_MODULE", "KEYWARD_TPM_TCTI"] {
            cmd.env_remove(var);
        }
        cmd.env("KEYWARD_TPM_TCTI", tcti)
            .env("TSS2_LOG", "all+none");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        run_command(cmd, stdin)
    }

    fn run(&self, args: &[&str], stdin: &[u8], vars: &[(&str, &str)]) -> Run {
        self.run_with(&self.tpm.tcti(), args, stdin, vars)
    }

    /// Runs with the TPM PIN in KEYWARD_PIN.
    fn pin(&self, args: &[&str], stdin: &[u8]) -> Run {
        self.run(args, stdin, &[("KEYWARD_PIN", PIN)])
    }

    /// Enrolls the TPM (PIN in KEYWARD_PIN, unlocked by the recovery key).
    fn enroll(&self, extra: &[&str]) -> Run {
        let mut args = vec!["enroll", "tpm"];
        args.extend(extra);
        let rk = self.env.recovery_key_text();
        self.run(
            &args,
            b"",
            &[("KEYWARD_PIN", PIN), ("KEYWARD_RECOVERY_KEY", &rk)],
        )
        .ok()
    }

    /// `protectors list --json` and `key list --json`, to compare.
    fn listing(&self) -> (serde_json::Value, serde_json::Value) {
        (
            self.env
                .keyward(&["protectors", "list", "--json"])
                .ok()
                .json(),
            self.env.keyward(&["key", "list", "--json"]).ok().json(),
        )
    }

    /// The TPM protector's device id (srk:…) from the listing.
    fn device_id(&self, id: u64) -> String {
        let list = self.listing().0;
        list.as_array()
            .expect("array")
            .iter()
            .find(|p| p["id"] == id)
            .and_then(|p| p["device_id"].as_str())
            .expect("a device id")
            .to_owned()
    }

    /// Creates key `notes` (unlocking with the TPM PIN) and encrypts
    /// `text` into `note.kw`.
    fn encrypt_note(&self, text: &str) {
        self.pin(&["key", "create", "notes"], b"").ok();
        let ct = self
            .pin(
                &["encrypt", "--key", "notes", "-o", &self.env.arg("note.kw")],
                text.as_bytes(),
            )
            .ok();
        assert!(ct.stdout.is_empty());
    }
}

fn ids(list: &serde_json::Value) -> Vec<(u64, String)> {
    list.as_array()
        .expect("array")
        .iter()
        .map(|p| {
            (
                p["id"].as_u64().expect("id"),
                p["kind"].as_str().expect("kind").to_owned(),
            )
        })
        .collect()
}

#[test]
fn enroll_encrypt_and_unlock_with_the_pin_in_a_new_process() {
    let hw = Hw::new();
    let run = hw.enroll(&[]);
    let device = hw.device_id(2);
    assert!(device.starts_with("srk:"), "{device}");
    assert_eq!(
        run.out(),
        format!("enrolled protector 2: tpm 'tpm' on {device}\n")
    );
    assert_eq!(
        ids(&hw.listing().0),
        vec![(1, "recovery".into()), (2, "tpm".into())]
    );

    // `key create` and `encrypt` unlock with the TPM: the PIN alone picks
    // the only hardware protector.
    hw.encrypt_note("dentist on tuesday");
    // A new process reads the PIN from a file descriptor (stdin here; the
    // data comes from -i).
    let run = hw
        .run(
            &["decrypt", "--pin-fd", "0", "-i", &hw.env.arg("note.kw")],
            format!("{PIN}\n").as_bytes(),
            &[],
        )
        .ok();
    assert_eq!(run.out(), "dentist on tuesday");
    // And from the environment.
    let run = hw.pin(&["decrypt", "-i", &hw.env.arg("note.kw")], b"").ok();
    assert_eq!(run.out(), "dentist on tuesday");

    // The audit log names the protector that unlocked.
    let audit = hw.env.keyward(&["audit", "show", "--json"]).ok().json();
    let unlocks: Vec<&serde_json::Value> = audit
        .as_array()
        .expect("array")
        .iter()
        .filter(|r| r["action"] == "unlock")
        .collect();
    assert!(unlocks.len() >= 3, "{audit}");
    assert!(unlocks.iter().skip(1).all(|r| r["fields"]["kind"] == "tpm"));
    hw.env.keyward(&["audit", "verify"]).ok();

    // Without any secret and without a terminal: the hint mentions PINs.
    hw.run(&["decrypt", "-i", &hw.env.arg("note.kw")], b"", &[])
        .fails_with(3)
        .diagnosis(
            "the keystore is locked and no secret was supplied to unlock it",
            "unlock with a passphrase (--passphrase-fd N or KEYWARD_PASSPHRASE), the recovery \
             key (--recovery-key-file FILE or KEYWARD_RECOVERY_KEY) or a device PIN (--pin-fd \
             N or KEYWARD_PIN; --with tpm for a TPM without PIN), or run keyward on a terminal \
             to be asked",
        );
    // --with tpm without a PIN source: the TPM asks, and there is nobody.
    hw.run(
        &["--with", "tpm", "decrypt", "-i", &hw.env.arg("note.kw")],
        b"",
        &[],
    )
    .fails_with(3)
    .diagnosis(
        "a PIN is needed and there is no terminal to ask for it",
        "pass it with --pin-fd N or KEYWARD_PIN, or run keyward on a terminal, or unlock \
             with another protector",
    );
}

#[test]
fn wrong_pin_is_one_error_with_tries_left_and_changes_nothing() {
    let hw = Hw::new();
    // 3 tries, one forgiven every 600 s (and the failure counter reset).
    hw.tpm.set_dictionary_lockout(3, 600, 0).expect("DA setup");
    hw.enroll(&[]);
    hw.encrypt_note("the old note");
    let before = hw.listing();
    let note = hw.env.arg("note.kw");
    let wrong = [("KEYWARD_PIN", "135790")];

    for left in [2, 1, 0] {
        hw.run(&["decrypt", "-i", &note], b"", &wrong)
            .fails_with(3)
            .diagnosis(&format!("wrong PIN ({left} tries left)"), WRONG_PIN_HINT);
    }
    assert_eq!(
        hw.listing(),
        before,
        "a wrong PIN changes no protector or key"
    );
    // Now the TPM is in lockout: reported before any PIN is sent, with its
    // duration, even for the right PIN.
    hw.pin(&["decrypt", "-i", &note], b"")
        .fails_with(3)
        .diagnosis(
            "the device is locked out for 600 s",
            "the TPM refuses PINs after too many wrong ones (dictionary-attack protection); it \
             forgives one failure every 600 s, or its owner can reset it with \
             `tpm2_dictionarylockout --clear-lockout`; meanwhile unlock with another protector \
             (e.g. --recovery-key-file FILE)",
        );
    // The recovery key still works meanwhile.
    let rk = hw.env.recovery_key_text();
    let run = hw
        .run(
            &["decrypt", "-i", &note],
            b"",
            &[("KEYWARD_RECOVERY_KEY", &rk)],
        )
        .ok();
    assert_eq!(run.out(), "the old note");

    hw.tpm.clear_lockout().expect("clear lockout");
    let run = hw.pin(&["decrypt", "-i", &note], b"").ok();
    assert_eq!(run.out(), "the old note");
    assert_eq!(hw.listing(), before);
    // Failed unlocks are in the audit log.
    let audit = hw.env.keyward(&["audit", "show", "--json"]).ok().json();
    let failed = audit
        .as_array()
        .expect("array")
        .iter()
        .filter(|r| r["action"] == "unlock.failed" && r["fields"]["kind"] == "tpm")
        .count();
    assert_eq!(failed, 4);
}

#[test]
fn pcr_change_then_recovery_key_and_replace_keeps_the_data() {
    let hw = Hw::new();
    hw.enroll(&["--pcrs", "16"]);
    hw.encrypt_note("survives a firmware update");
    let note = hw.env.arg("note.kw");
    let run = hw.pin(&["decrypt", "-i", &note], b"").ok();
    assert_eq!(run.out(), "survives a firmware update");

    // "Firmware update": PCR 16 changes.
    hw.tpm.pcr_extend(16, &[0x5a; 32]).expect("pcr extend");
    hw.pin(&["decrypt", "-i", &note], b"")
        .fails_with(3)
        .diagnosis(
            "the TPM refuses this key because PCR 16 (sha256 bank) changed since enrollment \
             (firmware, boot loader or Secure Boot settings changed)",
            "unlock with the recovery key and bind a new TPM protector to the current values in \
             one step: `keyward enroll tpm --replace --pcrs 16 --recovery-key-file FILE`; no \
             data is lost",
        );

    // The remedy, as the hint says: one command, one transaction.
    let run = hw.enroll(&["--replace", "--pcrs", "16"]);
    let device = hw.device_id(3);
    assert_eq!(
        run.out(),
        format!(
            "enrolled protector 3: tpm 'tpm' on {device}\nremoved protector 2, which it replaces\n"
        )
    );
    assert_eq!(
        ids(&hw.listing().0),
        vec![(1, "recovery".into()), (3, "tpm".into())]
    );
    let run = hw.pin(&["decrypt", "-i", &note], b"").ok();
    assert_eq!(run.out(), "survives a firmware update");
    let audit = hw.env.keyward(&["audit", "show", "--json"]).ok().json();
    assert!(
        audit
            .as_array()
            .expect("array")
            .iter()
            .any(|r| r["action"] == "protector.replace"
                && r["fields"]["old"] == 2
                && r["fields"]["new"] == 3),
        "{audit}"
    );

    // With two TPM protectors, --replace needs to be told which.
    hw.enroll(&["--label", "second"]);
    let rk = hw.env.recovery_key_text();
    let vars = [("KEYWARD_PIN", PIN), ("KEYWARD_RECOVERY_KEY", rk.as_str())];
    hw.run(&["enroll", "tpm", "--replace"], b"", &vars)
        .fails_with(2)
        .diagnosis(
            "2 tpm protectors are enrolled (ids 3, 4)",
            "choose the one to replace with --protector ID",
        );
    hw.run(
        &["enroll", "tpm", "--replace", "--protector", "1"],
        b"",
        &vars,
    )
    .fails_with(2)
    .diagnosis(
        "protector 1 is a recovery protector, not a tpm one",
        "`keyward enroll tpm --replace` replaces a tpm protector; `keyward protectors list` \
             shows the ids",
    );
    let run = hw
        .run(
            &["enroll", "tpm", "--replace", "--protector", "4", "--no-pin"],
            b"",
            &vars,
        )
        .ok();
    assert!(
        run.out()
            .ends_with("removed protector 4, which it replaces\n"),
        "{}",
        run.out()
    );
    assert_eq!(
        ids(&hw.listing().0),
        vec![(1, "recovery".into()), (3, "tpm".into()), (5, "tpm".into())]
    );
    // The PIN-less protector unlocks with --protector and no secret at all.
    let run = hw
        .run(&["--protector", "5", "decrypt", "-i", &note], b"", &[])
        .ok();
    assert_eq!(run.out(), "survives a firmware update");
}

#[test]
fn tpm_gone_then_back_and_another_tpm() {
    let mut hw = Hw::new();
    hw.enroll(&[]);
    hw.encrypt_note("still here");
    let note = hw.env.arg("note.kw");
    let tcti = hw.tpm.tcti();

    hw.tpm.kill().expect("kill swtpm");
    hw.pin(&["decrypt", "-i", &note], b"")
        .fails_with(7)
        .diagnosis(&format!("cannot reach the TPM at {tcti}"), NO_TPM_HINT);
    // A mistyped TCTI is a usage error, not a missing TPM.
    let run = hw
        .run_with(
            "nonsense:",
            &["decrypt", "-i", &note],
            b"",
            &[("KEYWARD_PIN", PIN)],
        )
        .fails_with(2);
    assert!(
        run.stderr
            .contains("error: invalid argument: unknown TPM TCTI \"nonsense:\""),
        "{}",
        run.stderr
    );

    hw.tpm.restart().expect("restart swtpm");
    let run = hw.pin(&["decrypt", "-i", &note], b"").ok();
    assert_eq!(run.out(), "still here");

    // Another TPM (another owner seed): refused before any PIN is sent.
    let other = Swtpm::start().expect("second swtpm");
    let run = hw
        .run_with(
            &other.tcti(),
            &["decrypt", "-i", &note],
            b"",
            &[("KEYWARD_PIN", PIN)],
        )
        .fails_with(7)
        .hint(WRONG_TPM_HINT);
    let device = hw.device_id(2);
    assert!(
        run.stderr.contains(&format!(
            "error: wrong device: expected the TPM this key was enrolled on ({device}), found \
             another TPM, or this TPM after a clear (srk:"
        )),
        "{}",
        run.stderr
    );
    // `--tcti` on the command line beats KEYWARD_TPM_TCTI.
    let run = hw
        .run_with(
            &other.tcti(),
            &["--tcti", &tcti, "decrypt", "-i", &note],
            b"",
            &[("KEYWARD_PIN", PIN)],
        )
        .ok();
    assert_eq!(run.out(), "still here");
}

#[test]
fn tpm_signature_verifies_with_openssl() {
    let hw = Hw::new();
    hw.enroll(&[]);
    let msg = hw.env.path("message.txt");
    std::fs::write(&msg, b"meeting moved to 3pm\n").expect("write");
    let sig = hw.env.path("message.sig");
    // No unlock: the TPM asks for its own PIN.
    hw.pin(
        &keyward_tests::sign_args(
            "2",
            msg.to_str().expect("utf-8"),
            sig.to_str().expect("utf-8"),
        ),
        b"",
    )
    .ok();
    let pem = hw
        .env
        .keyward(&["export-public", "--protector", "2"])
        .ok()
        .out();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    let pem_path = hw.env.path("tpm.pem");
    std::fs::write(&pem_path, &pem).expect("write");
    assert!(
        keyward_tests::openssl_verifies(&pem_path, &sig, &msg),
        "openssl rejects the TPM signature"
    );
    std::fs::write(&msg, b"meeting moved to 4pm\n").expect("write");
    assert!(
        !keyward_tests::openssl_verifies(&pem_path, &sig, &msg),
        "openssl accepts a forgery"
    );

    let json = hw
        .env
        .keyward(&["export-public", "--protector", "2", "--json"])
        .ok()
        .json();
    assert_eq!(json["kind"], "tpm");
    assert_eq!(json["algorithm"], "ecdsa-p256-sha256");
    assert_eq!(json["pem"], pem.as_str());
    assert_eq!(json["raw_hex"].as_str().map(str::len), Some(66));

    // A wrong PIN: exit 3, and no signature file appears.
    let out = hw.env.path("bad.sig");
    hw.run(
        &keyward_tests::sign_args(
            "2",
            msg.to_str().expect("utf-8"),
            out.to_str().expect("utf-8"),
        ),
        b"",
        &[("KEYWARD_PIN", "000000")],
    )
    .fails_with(3)
    .diagnosis("wrong PIN (2 tries left)", WRONG_PIN_HINT);
    assert!(!out.exists());
    // The recovery key has no device key; a key name and --protector do
    // not mix for export-public; sign needs one of them.
    hw.env
        .keyward(&["export-public", "--protector", "1"])
        .fails_with(2)
        .diagnosis(
            "protector 1 is a recovery protector, which has no device key to sign with",
            "give the id of a tpm, pkcs11 or yubikey protector (`keyward protectors list`), or sign with \
             a keyward signing key: `keyward sign --key NAME`",
        );
    hw.env
        .keyward(&["export-public", "k", "--protector", "2"])
        .fails_with(2);
    hw.env
        .keyward(&["sign", "-i", msg.to_str().expect("utf-8")])
        .fails_with(2)
        .diagnosis(
            "sign needs --key NAME (a keyward signing key) or --protector ID (a device key)",
            "`keyward key list` shows the signing keys, `keyward protectors list` the protectors",
        );
    hw.env
        .keyward(&["export-public", "--protector", "9"])
        .fails_with(4);
}

#[test]
fn enroll_checks_before_touching_anything() {
    let env = Env::with_recovery();
    let rk = env.recovery_key_text();
    let clean = |args: &[&str], vars: &[(&str, &str)]| {
        let mut cmd = env.command(args);
        for var in ["KEYWARD_PIN", "KEYWARD_TPM_TCTI"] {
            cmd.env_remove(var);
        }
        // Nothing listens here: any TPM access would fail differently.
        cmd.env("KEYWARD_TPM_TCTI", "swtpm:host=127.0.0.1,port=1")
            .env("TSS2_LOG", "all+none");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        run_command(cmd, b"")
    };
    let before = env.keyward(&["audit", "show", "--json"]).ok().json();
    // The new PIN has no source and there is no terminal.
    clean(&["enroll", "tpm"], &[("KEYWARD_RECOVERY_KEY", &rk)])
        .fails_with(3)
        .diagnosis(
            "a PIN is needed and there is no terminal to ask for it",
            "pass it with --pin-fd N or KEYWARD_PIN, or run keyward on a terminal, or unlock \
             with another protector",
        );
    // The PIN source is the new TPM's; the unlock needs another secret.
    clean(&["enroll", "tpm"], &[("KEYWARD_PIN", PIN)])
        .fails_with(3)
        .diagnosis(
            "the keystore must be unlocked with another protector to enroll a device without \
             a terminal",
            "pass --recovery-key-file FILE, KEYWARD_RECOVERY_KEY, --passphrase-fd N or \
             KEYWARD_PASSPHRASE; --pin-fd or KEYWARD_PIN gives the PIN of the device being \
             enrolled",
        );
    // ... and never goes to another device.
    clean(
        &["--with", "pkcs11", "enroll", "tpm"],
        &[("KEYWARD_PIN", PIN), ("KEYWARD_RECOVERY_KEY", &rk)],
    )
    .fails_with(2)
    .diagnosis(
        "--pin-fd / KEYWARD_PIN gives the PIN of the device being enrolled, so it cannot also \
         unlock with a device",
        "unlock with the recovery key or a passphrase, or run keyward on a terminal without a \
         PIN source to type both PINs",
    );
    // Nothing to replace.
    clean(
        &["enroll", "tpm", "--replace"],
        &[("KEYWARD_PIN", PIN), ("KEYWARD_RECOVERY_KEY", &rk)],
    )
    .fails_with(4)
    .diagnosis(
        "no tpm protector is enrolled, so there is none to replace",
        "enroll one with `keyward enroll tpm` (without --replace)",
    );
    // Bad PCR lists and contradictory flags are usage errors.
    for args in [
        &["enroll", "tpm", "--pcrs", "24"][..],
        &["enroll", "tpm", "--pcrs", "7;11"],
        &["enroll", "tpm", "--pin", "--no-pin"],
        &["enroll", "tpm", "--pin", "123456"],
        &["enroll", "pkcs11"],
        &[
            "enroll",
            "pkcs11",
            "--uri",
            "pkcs11:token=x",
            "--mode",
            "rsa",
        ],
    ] {
        clean(args, &[("KEYWARD_RECOVERY_KEY", &rk)]).fails_with(2);
    }
    // A PIN but no hardware protector.
    clean(&["key", "create", "k"], &[("KEYWARD_PIN", PIN)])
        .fails_with(4)
        .diagnosis(
            "a PIN was supplied but no hardware protector is enrolled",
            "`keyward protectors list` shows what is enrolled; supply the secret of one of those",
        );
    // No TPM at the TCTI: a clear error, and nothing was written.
    clean(
        &["enroll", "tpm"],
        &[("KEYWARD_PIN", PIN), ("KEYWARD_RECOVERY_KEY", &rk)],
    )
    .fails_with(7)
    .diagnosis(
        "cannot reach the TPM at swtpm:host=127.0.0.1,port=1",
        NO_TPM_HINT,
    );
    let protectors = env.keyward(&["protectors", "list", "--json"]).ok().json();
    assert_eq!(protectors.as_array().map(Vec::len), Some(1));
    let after = env.keyward(&["audit", "show", "--json"]).ok().json();
    // Only the unlocks with the recovery key were recorded.
    let new: Vec<&serde_json::Value> = after
        .as_array()
        .expect("array")
        .iter()
        .skip(before.as_array().map_or(0, Vec::len))
        .collect();
    assert!(new.iter().all(|r| r["action"] == "unlock"), "{after}");
}
