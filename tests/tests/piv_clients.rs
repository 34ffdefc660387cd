//! The real PIV clients (`yubico-piv-tool` 2.2.0, `ykman` 4.0.9) against
//! the simulator through pcscd + vpcd, asserted on their output.
//!
//! `yubico-piv-tool` only considers readers whose name contains "Yubikey"
//! unless given `-r "Virtual PCD"`; `ykman` likewise needs
//! `--reader "Virtual PCD 00 00"`.

use std::process::Command;

use base64::Engine;
use keyward_hw_mocks::piv::{CardConfig, PivFixture};

fn fixture() -> PivFixture {
    PivFixture::start(CardConfig::default()).expect("pcscd + vpcd + simulator")
}

/// Runs a command; returns (success, stdout + stderr).
fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} not runnable ({e}): apt-get install yubico-piv-tool yubikey-manager")
        });
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn piv_tool(args: &[&str]) -> String {
    let mut all = vec!["-r", "Virtual PCD"];
    all.extend_from_slice(args);
    let (ok, out) = run("yubico-piv-tool", &all);
    assert!(ok, "yubico-piv-tool {args:?} failed:\n{out}");
    out
}

fn ykman(args: &[&str]) -> String {
    let mut all = vec!["--reader", "Virtual PCD 00 00"];
    all.extend_from_slice(args);
    let (ok, out) = run("ykman", &all);
    assert!(ok, "ykman {args:?} failed:\n{out}");
    out
}

/// The EC point at the end of a PEM SubjectPublicKeyInfo.
fn pem_point(pem: &str, point_len: usize) -> Vec<u8> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PUBLIC KEY"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM base64");
    der[der.len() - point_len..].to_vec()
}

fn card_point(f: &PivFixture, slot: u8) -> Vec<u8> {
    f.card
        .card(|c| c.piv_state().slots.get(&slot).map(|k| k.key.public_point()))
        .expect("key in slot")
}

#[test]
fn yubico_piv_tool_status_generate_verify_sign_decipher_attest() {
    let f = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();

    let out = piv_tool(&["-a", "status"]);
    assert!(out.contains("Version:\t5.4.3"), "{out}");
    assert!(out.contains("Serial Number:\t12345678"), "{out}");
    assert!(out.contains("PIN tries left:\t3"), "{out}");

    let out = piv_tool(&["-a", "verify-pin", "-P", "123456"]);
    assert!(out.contains("Successfully verified PIN."), "{out}");
    let (ok, out) = run(
        "yubico-piv-tool",
        &["-r", "Virtual PCD", "-a", "verify-pin", "-P", "000000"],
    );
    assert!(!ok);
    assert!(out.contains("2 tries left"), "{out}");

    // Generate (default management key) and check against the card.
    let out = piv_tool(&["-a", "generate", "-s", "9a", "-A", "ECCP256"]);
    assert!(out.contains("-----BEGIN PUBLIC KEY-----"), "{out}");
    assert_eq!(pem_point(&out, 65), card_point(&f, 0x9A));

    // Attest; the attestation certificate carries the slot key, so it
    // serves as the certificate for test-signature and import.
    let att = path("att9a.pem");
    piv_tool(&["-a", "attest", "-s", "9a", "-o", &att]);
    let pem = std::fs::read_to_string(&att).expect("attestation written");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let out = piv_tool(&[
        "-a",
        "verify-pin",
        "-P",
        "123456",
        "-a",
        "test-signature",
        "-s",
        "9a",
        "-i",
        &att,
    ]);
    assert!(out.contains("Successful ECDSA verification."), "{out}");

    piv_tool(&["-a", "generate", "-s", "9d", "-A", "ECCP256"]);
    let att9d = path("att9d.pem");
    piv_tool(&["-a", "attest", "-s", "9d", "-o", &att9d]);
    let out = piv_tool(&[
        "-a",
        "verify-pin",
        "-P",
        "123456",
        "-a",
        "test-decipher",
        "-s",
        "9d",
        "-i",
        &att9d,
    ]);
    assert!(
        out.contains("Successfully performed ECDH exchange with card."),
        "{out}"
    );

    let out = piv_tool(&["-a", "import-certificate", "-s", "9a", "-i", &att]);
    assert!(
        out.contains("Successfully imported a new certificate."),
        "{out}"
    );
    let out = piv_tool(&["-a", "status"]);
    assert!(out.contains("Slot 9a:"), "{out}");
    assert!(out.contains("Algorithm:\tECCP256"), "{out}");
    assert!(
        out.contains("Subject DN:\tCN=YubiKey PIV Attestation 9a"),
        "{out}"
    );

    // Attesting an empty slot fails.
    let (ok, _) = run(
        "yubico-piv-tool",
        &["-r", "Virtual PCD", "-a", "attest", "-s", "9e"],
    );
    assert!(!ok);
}

#[test]
fn ykman_info_generate_change_pin() {
    let f = fixture();
    let out = ykman(&["info"]);
    assert!(out.contains("Serial number: 12345678"), "{out}");
    assert!(out.contains("Firmware version: 5.4.3"), "{out}");

    let out = ykman(&["piv", "info"]);
    assert!(out.contains("PIV version: 5.4.3"), "{out}");
    assert!(out.contains("WARNING: Using default PIN!"), "{out}");
    assert!(out.contains("PIN tries remaining: 3/3"), "{out}");
    assert!(out.contains("Management key algorithm: TDES"), "{out}");

    let out = ykman(&[
        "piv",
        "keys",
        "generate",
        "-a",
        "ECCP384",
        "-m",
        "010203040506070801020304050607080102030405060708",
        "9c",
        "-",
    ]);
    assert!(out.contains("-----BEGIN PUBLIC KEY-----"), "{out}");
    assert_eq!(pem_point(&out, 97), card_point(&f, 0x9C));

    let out = ykman(&[
        "piv",
        "access",
        "change-pin",
        "-P",
        "123456",
        "-n",
        "87654321",
    ]);
    assert!(out.contains("New PIN set."), "{out}");
    let out = ykman(&["piv", "info"]);
    assert!(!out.contains("default PIN"), "{out}");
    let (ok, out) = run(
        "ykman",
        &[
            "--reader",
            "Virtual PCD 00 00",
            "piv",
            "access",
            "change-pin",
            "-P",
            "123456",
            "-n",
            "11223344",
        ],
    );
    assert!(!ok, "old PIN must be refused:\n{out}");
    assert!(
        out.contains("tries left") || out.contains("retries"),
        "{out}"
    );
    assert_eq!(f.card.card(|c| c.piv_state().pin.left), 2);
}
