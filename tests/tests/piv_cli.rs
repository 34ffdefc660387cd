//! End-to-end tests of the `keyward` binary with a YubiKey protector on the
//! PIV simulator (issue 4): `keyward yubikey setup`, `enroll yubikey`,
//! unlock with the PIN in a new process, wrong PIN, several cards, a card
//! that is not there, and device signatures checked by `openssl`.
//!
//! Needs `pcscd`, `vsmartcard-vpcd` and `openssl`. Every keyward process
//! opens the card afresh; the simulator keeps its state between them.

mod common;

use common::{Env, Run, run_command};
use keyward_tests::yubikey_fixture::{YK_OTHER_SERIAL, YK_SERIAL, YubikeyFixture};

const PIN: &str = "24681357";
const PUK: &str = "86427531";

/// A keystore (recovery key only) and a factory-fresh simulated YubiKey.
struct Hw {
    env: Env,
    yk: YubikeyFixture,
}

impl Hw {
    fn new() -> Self {
        Self {
            yk: YubikeyFixture::unconfigured(),
            env: Env::with_recovery(),
        }
    }

    /// Runs keyward with `vars` added to a clean environment.
    fn run(&self, args: &[&str], stdin: &[u8], vars: &[(&str, &str)]) -> Run {
        let mut cmd = self.env.command(args);
        for var in ["KEYWARD_PIN", "KEYWARD_PUK"] {
            cmd.env_remove(var);
        }
        for (k, v) in vars {
            cmd.env(k, v);
        }
        run_command(cmd, stdin)
    }

    /// Runs with the YubiKey PIN in KEYWARD_PIN.
    fn pin(&self, args: &[&str], stdin: &[u8]) -> Run {
        self.run(args, stdin, &[("KEYWARD_PIN", PIN)])
    }

    fn setup(&self) -> Run {
        self.run(
            &["yubikey", "setup"],
            b"",
            &[("KEYWARD_PIN", PIN), ("KEYWARD_PUK", PUK)],
        )
    }

    fn enroll(&self, extra: &[&str]) -> Run {
        let mut args = vec!["enroll", "yubikey"];
        args.extend(extra);
        let rk = self.env.recovery_key_text();
        self.run(
            &args,
            b"",
            &[("KEYWARD_PIN", PIN), ("KEYWARD_RECOVERY_KEY", &rk)],
        )
    }
}

#[test]
fn setup_enroll_lock_unlock_decrypt() {
    let hw = Hw::new();
    // A factory-fresh card is refused, with the remedy.
    hw.enroll(&[]).fails_with(7).hint(
        "run `keyward yubikey setup` (new PIN and PUK from --pin-fd / KEYWARD_PIN and \
             --puk-fd / KEYWARD_PUK, or the prompt), then enroll again",
    );
    // Setup without a PUK source and no terminal: refused before any change.
    hw.run(&["yubikey", "setup"], b"", &[("KEYWARD_PIN", PIN)])
        .fails_with(3);
    assert!(hw.yk.piv().card.card(|c| c.piv_state().pin.default));

    let out = hw.setup().ok().out();
    assert!(out.contains("PIN changed"), "{out}");
    assert!(out.contains("PUK changed"), "{out}");
    assert!(out.contains("management key replaced"), "{out}");
    let json = hw
        .run(
            &["yubikey", "setup", "--json", "--serial", "12345678"],
            b"",
            &[("KEYWARD_PIN", PIN)],
        )
        .ok()
        .json();
    assert_eq!(json["serial"], YK_SERIAL);
    assert_eq!(json["pin_changed"], false);
    assert_eq!(json["management_key_changed"], false);

    hw.enroll(&["--serial", "12345678"]).ok();
    let list = hw
        .env
        .keyward(&["protectors", "list", "--json"])
        .ok()
        .json();
    let yk = list
        .as_array()
        .expect("array")
        .iter()
        .find(|p| p["kind"] == "yubikey")
        .expect("a yubikey protector")
        .clone();
    assert_eq!(yk["device_id"], "12345678");
    assert!(
        hw.yk
            .piv()
            .card
            .card(|c| c.piv_state().slots.contains_key(&0x82)),
        "key in retired slot 82"
    );

    // Every command below is a new process that unlocks with the PIN.
    hw.pin(&["key", "create", "notes"], b"").ok();
    let ct = hw
        .pin(&["encrypt", "--key", "notes"], b"dear diary")
        .ok()
        .stdout;
    let pt = hw.pin(&["decrypt"], &ct).ok();
    assert_eq!(pt.stdout, b"dear diary");
    // The touch is announced; the yubikey crate's logs about the empty
    // second reader are not shown.
    assert!(
        pt.stderr.contains("touch YubiKey 12345678"),
        "{}",
        pt.stderr
    );
    assert!(!pt.stderr.contains("ERROR"), "{}", pt.stderr);
    let pt = hw.pin(&["decrypt", "--with", "yubikey"], &ct).ok();
    assert_eq!(pt.stdout, b"dear diary");

    // Wrong PIN: exit 3, tries left shown, nothing changed.
    let run = hw
        .run(&["decrypt"], &ct, &[("KEYWARD_PIN", "11223344")])
        .fails_with(3);
    assert!(run.stderr.contains("2 tries left"), "{}", run.stderr);
    assert!(
        run.stderr.contains("keyward never retries a PIN"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
    assert_eq!(hw.yk.piv().card.card(|c| c.piv_state().pin.left), 2);
    hw.pin(&["decrypt"], &ct).ok();
    assert_eq!(hw.yk.piv().card.card(|c| c.piv_state().pin.left), 3);

    // Master-key rotation needs no card.
    hw.yk.pull();
    let rk = hw.env.recovery_key_text();
    hw.run(&["master", "rotate"], b"", &[("KEYWARD_RECOVERY_KEY", &rk)])
        .ok();
    // Card absent: device error naming pcscd, no PIN spent.
    let run = hw.pin(&["decrypt", "--with", "yubikey"], &ct).fails_with(7);
    assert!(
        run.stderr.contains("no yubikey device found"),
        "{}",
        run.stderr
    );
    hw.yk.insert();
    let pt = hw.pin(&["decrypt", "--with", "yubikey"], &ct).ok();
    assert_eq!(pt.stdout, b"dear diary");
}

#[test]
fn enroll_options_and_second_card() {
    let hw = Hw::new();
    hw.setup().ok();
    hw.yk.insert_other();
    // Two cards and no --serial: usage error naming the way out.
    let run = hw.enroll(&[]).fails_with(2);
    assert!(run.stderr.contains("--serial"), "{}", run.stderr);
    // A standard slot is refused.
    hw.enroll(&["--serial", "12345678", "--slot", "9a"])
        .fails_with(2);
    hw.enroll(&[
        "--serial",
        "12345678",
        "--slot",
        "85",
        "--touch",
        "never",
        "--pin-policy",
        "always",
    ])
    .ok();
    let (pin_policy, touch_policy) = hw.yk.piv().card.card(|c| {
        let s = &c.piv_state().slots[&0x85];
        (s.pin_policy, s.touch_policy)
    });
    assert_eq!((pin_policy, touch_policy), (3, 1));
    // Occupied slot: refused without --overwrite.
    hw.enroll(&["--serial", "12345678", "--slot", "85"])
        .fails_with(2);

    hw.pin(&["key", "create", "notes"], b"").ok();
    let ct = hw
        .pin(&["encrypt", "--key", "notes"], b"two cards")
        .ok()
        .stdout;
    assert_eq!(hw.pin(&["decrypt"], &ct).ok().stdout, b"two cards");
    // Only the other card: wrong device, before any PIN.
    hw.yk.pull();
    let run = hw.pin(&["decrypt", "--with", "yubikey"], &ct).fails_with(7);
    assert!(run.stderr.contains("wrong device"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&YK_OTHER_SERIAL.to_string()),
        "{}",
        run.stderr
    );
    assert_eq!(hw.yk.piv().card.card(|c| c.piv_state().pin.left), 3);
}

#[test]
fn device_signature_verifies_with_openssl() {
    let hw = Hw::new();
    hw.setup().ok();
    hw.enroll(&[]).ok();
    let msg = hw.env.path("message.txt");
    std::fs::write(&msg, b"meeting moved to 3pm\n").expect("write");
    let sig = hw.env.path("message.sig");
    // No unlock: the YubiKey asks for its own PIN.
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
    let pem_path = hw.env.path("yubikey.pem");
    std::fs::write(&pem_path, &pem).expect("write");
    assert!(
        keyward_tests::openssl_verifies(&pem_path, &sig, &msg),
        "openssl rejects the YubiKey signature"
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
    assert_eq!(json["kind"], "yubikey");
    assert_eq!(json["algorithm"], "ecdsa-p256-sha256");
    assert_eq!(json["pem"], pem.as_str());
}
