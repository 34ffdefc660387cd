//! The PKCS#11 backend against real SoftHSM2 (/usr/lib/softhsm/libsofthsm2.so).
//!
//! Every test runs in a SoftHSM environment of its own through
//! `softhsm::isolated` (a child process with its own `SOFTHSM2_CONF`), so
//! the file works the same under `cargo test` and `cargo nextest`.
//! `pkcs11-tool` (OpenSC) and `openssl` check what we create from the
//! outside.
#![expect(
    clippy::many_single_char_names,
    reason = "b(ackend), e(nrollment), w(rapped), s(ecret), d(escriptor) read best short in these tests"
)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use keyward_backends::pkcs11::{self, Descriptor, Mode};
use keyward_hw_mocks::softhsm::{self, MODULE, SoftHsmToken};
use keyward_kms::backend::options::{Pkcs11Options, Pkcs11Sign, YubikeyOptions};
use keyward_kms::error::DeviceError;
use keyward_kms::service::{Backends, UnlockWith};
use keyward_kms::{
    Backend as _, BackendKind, Callbacks, EnrollOptions, EnrollRequest, Enrollment, Error, Notice,
    Result, Secret32, SecretKind, SecretRequest, SecretString, Service, SignAlgorithm, Wrapped,
};
use p256::ecdsa::signature::Verifier as _;

/// Test callbacks: answers PIN prompts with a settable PIN and records them.
struct Ui {
    pin: Mutex<String>,
    requests: AtomicUsize,
    descriptions: Mutex<Vec<String>>,
}

impl Ui {
    fn new(pin: &str) -> Self {
        Self {
            pin: Mutex::new(pin.to_owned()),
            requests: AtomicUsize::new(0),
            descriptions: Mutex::new(Vec::new()),
        }
    }

    fn set_pin(&self, pin: &str) {
        pin.clone_into(&mut self.pin.lock().expect("pin lock"));
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn last_description(&self) -> String {
        self.descriptions
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

impl Callbacks for Ui {
    fn request_secret(&self, request: &SecretRequest<'_>) -> Result<SecretString> {
        assert_eq!(request.kind, SecretKind::Pin);
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.descriptions
            .lock()
            .expect("lock")
            .push(request.description.to_owned());
        Ok(SecretString::from(
            self.pin.lock().expect("pin lock").clone(),
        ))
    }

    fn notify(&self, _notice: &Notice<'_>) {}

    fn show_secret(&self, _title: &str, _secret: &SecretString) -> Result<()> {
        Ok(())
    }
}

fn backend() -> pkcs11::Backend {
    pkcs11::Backend::new(pkcs11::Options {
        module: Some(MODULE.into()),
        mode: None,
    })
}

fn request(token: &SoftHsmToken, label: &str, mode: Option<&str>) -> EnrollRequest {
    EnrollRequest {
        label: label.into(),
        device: Some(token.uri()),
        options: mode.map_or(EnrollOptions::None, mode_options),
    }
}

/// The options choosing wrap mode `mode` ("ecdh", "aes-gcm").
fn mode_options(mode: &str) -> EnrollOptions {
    EnrollOptions::Pkcs11(Pkcs11Options {
        mode: Some(mode.parse().expect("mode")),
        sign: None,
    })
}

/// `req`, also asking for the signing key `sign`.
fn signing(mut req: EnrollRequest, sign: Pkcs11Sign) -> EnrollRequest {
    let mut options = req.options.pkcs11().expect("pkcs11 options");
    options.sign = Some(sign);
    req.options = EnrollOptions::Pkcs11(options);
    req
}

fn secret() -> Secret32 {
    Secret32::random().expect("rng")
}

fn round_trip(mode: &str) {
    let token = SoftHsmToken::new(&format!("rt-{mode}")).expect("token");
    let b = backend();
    let ui = Ui::new(token.pin());
    let e = b
        .enroll(&request(&token, "laptop", Some(mode)), &ui)
        .expect("enroll");
    assert_eq!(ui.requests(), 1, "one PIN for enrollment");
    assert!(
        ui.last_description()
            .contains(&format!("\"{}\"", token.label()))
    );
    let d = Descriptor::from_enrollment(&e).expect("descriptor");
    assert_eq!(d.token_label, token.label());
    assert_eq!(d.token_serial, token.serial());
    assert_eq!(d.key_label, "keyward laptop");
    assert_eq!(d.key_id.len(), 16);
    assert_eq!(e.kind, BackendKind::Pkcs11);
    assert_eq!(e.device_id.as_deref(), Some(d.device_id().as_str()));
    let params = e.params.to_string();
    assert!(!params.contains("slot"), "no slot ids stored: {params}");
    if mode == "ecdh" {
        assert_eq!(d.mode, Mode::Ecdh);
        assert_eq!(e.public_key.len(), 33);
    } else {
        assert_eq!(d.mode, Mode::AesGcm);
        assert!(e.public_key.is_empty());
    }

    let s = secret();
    let w = b.wrap(&e, &s, b"aad").expect("wrap");
    if mode == "ecdh" {
        assert_eq!(w.0.len(), 82);
    } else {
        assert_eq!(w.0.len(), 61);
        assert_eq!(w.0[0], 0x02);
    }
    let out = b.unwrap(&e, &w, b"aad", &ui).expect("unwrap");
    assert_eq!(out.expose(), s.expose());
    assert_eq!(ui.requests(), 1, "the login of the enrollment is kept");

    // Wrong AAD, every tampered byte, truncation: refused, never accepted.
    let r = b.unwrap(&e, &w, b"aaD", &ui);
    assert!(matches!(r, Err(Error::UnwrapFailed)), "{r:?}");
    for i in 0..w.0.len() {
        let mut t = w.0.clone();
        t[i] ^= 0x01;
        match b.unwrap(&e, &Wrapped(t), b"aad", &ui) {
            Err(
                Error::UnwrapFailed
                | Error::UnsupportedFormat { .. }
                | Error::InvalidPublicKey { .. }
                | Error::Malformed { .. },
            ) => {}
            other => panic!("byte {i}: {other:?}"),
        }
    }
    let short = Wrapped(w.0[..w.0.len() - 1].to_vec());
    assert!(matches!(
        b.unwrap(&e, &short, b"aad", &ui),
        Err(Error::Malformed { .. })
    ));

    // After logout the PIN is asked again.
    b.logout();
    let out = b.unwrap(&e, &w, b"aad", &ui).expect("unwrap after logout");
    assert_eq!(out.expose(), s.expose());
    assert_eq!(ui.requests(), 2);

    // A second backend instance in the same process (login is per token).
    let b2 = backend();
    let out = b2.unwrap(&e, &w, b"aad", &ui).expect("second instance");
    assert_eq!(out.expose(), s.expose());

    let h = b.health(&e).expect("health");
    assert!(h.present && h.matches, "{h:?}");
}

#[test]
fn ecdh_round_trip() {
    softhsm::isolated("ecdh_round_trip", |_| round_trip("ecdh"));
}

#[test]
fn aes_gcm_round_trip() {
    softhsm::isolated("aes_gcm_round_trip", |_| {
        round_trip("aes-gcm");
    });
}

#[test]
fn aes_gcm_wrap_needs_login() {
    softhsm::isolated("aes_gcm_wrap_needs_login", |_| {
        let token = SoftHsmToken::new("aes-login").expect("token");
        let b = backend();
        let ui = Ui::new(token.pin());
        let e = b
            .enroll(&request(&token, "x", Some("aes-gcm")), &ui)
            .expect("enroll");
        b.logout();
        match b.wrap(&e, &secret(), b"aad") {
            Err(Error::Device {
                error: error @ DeviceError::NotLoggedIn { .. },
                ..
            }) => {
                assert_eq!(error.code(), "CKR_USER_NOT_LOGGED_IN");
                let message = error.to_string();
                assert!(
                    message.contains("unlock with this protector first"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ui.requests(), 1);
        let sig = b.sign(&e, b"m", &ui);
        assert!(matches!(sig, Err(Error::NotSupported { .. })), "{sig:?}");
    });
}

#[test]
fn default_mode_is_ecdh_on_softhsm() {
    softhsm::isolated("default_mode_is_ecdh_on_softhsm", |_| {
        let token = SoftHsmToken::new("default-mode").expect("token");
        let b = backend();
        let ui = Ui::new(token.pin());
        let e = b.enroll(&request(&token, "d", None), &ui).expect("enroll");
        assert_eq!(Descriptor::from_enrollment(&e).expect("d").mode, Mode::Ecdh);
        // Another backend's options are refused, not ignored.
        let mut bad = request(&token, "d", None);
        bad.options = EnrollOptions::Yubikey(YubikeyOptions::default());
        assert!(matches!(
            b.enroll(&bad, &ui),
            Err(Error::InvalidArgument { .. })
        ));
    });
}

#[test]
fn wrong_pin() {
    softhsm::isolated("wrong_pin", |_| {
        let token = SoftHsmToken::new("wrong-pin").expect("token");
        let b = backend();
        let ui = Ui::new(token.pin());
        let e = b.enroll(&request(&token, "w", None), &ui).expect("enroll");
        let s = secret();
        let w = b.wrap(&e, &s, b"aad").expect("wrap");
        b.logout();
        ui.set_pin("000000");
        let r = b.unwrap(&e, &w, b"aad", &ui);
        assert!(
            matches!(r, Err(Error::WrongPin { retries_left: None })),
            "{r:?}"
        );
        // The next prompt shows the token's count-low flag.
        let r = b.unwrap(&e, &w, b"aad", &ui);
        assert!(matches!(r, Err(Error::WrongPin { .. })), "{r:?}");
        let shown = ui.last_description();
        assert!(shown.contains("CKF_USER_PIN_COUNT_LOW"), "{shown}");
        assert!(shown.contains("wrong-pin"), "{shown}");
        ui.set_pin(token.pin());
        let out = b.unwrap(&e, &w, b"aad", &ui).expect("right PIN");
        assert_eq!(out.expose(), s.expose());
        // Empty PIN: wrong too, not a crash.
        b.logout();
        ui.set_pin("");
        assert!(b.unwrap(&e, &w, b"aad", &ui).is_err());
    });
}

#[test]
fn same_label_other_serial_refused_before_pin() {
    softhsm::isolated("same_label_other_serial_refused_before_pin", |_| {
        let first = SoftHsmToken::new("twin").expect("token");
        let b = backend();
        let ui = Ui::new(first.pin());
        let e = b.enroll(&request(&first, "t", None), &ui).expect("enroll");
        let w = b.wrap(&e, &secret(), b"aad").expect("wrap");
        b.logout();
        let first_serial = first.serial().to_owned();
        first.remove().expect("remove");
        drop(first);
        let second = SoftHsmToken::new("twin").expect("second token, same label");
        assert_ne!(second.serial(), first_serial);
        let before = ui.requests();
        match b.unwrap(&e, &w, b"aad", &ui) {
            Err(Error::WrongDevice { expected, found }) => {
                assert!(expected.contains(&first_serial), "{expected}");
                assert!(found.contains(second.serial()), "{found}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            b.sign(&e, b"m", &ui),
            Err(Error::WrongDevice { .. })
        ));
        assert_eq!(ui.requests(), before, "no PIN asked for the wrong token");
        let h = b.health(&e).expect("health");
        assert!(h.present && !h.matches, "{h:?}");
    });
}

#[test]
fn other_key_on_right_token_refused_before_pin() {
    softhsm::isolated("other_key_on_right_token_refused_before_pin", |_| {
        let token = SoftHsmToken::new("swapped-key").expect("token");
        let b = backend();
        let ui = Ui::new(token.pin());
        let e = b.enroll(&request(&token, "k", None), &ui).expect("enroll");
        let w = b.wrap(&e, &secret(), b"aad").expect("wrap");
        b.logout();
        // The descriptor names the token but the stored public key is another.
        let mut forged = e.clone();
        let other = keyward_kms::crypto::ecies::random_scalar().expect("rng");
        forged.public_key = keyward_kms::crypto::ecies::compress(&other.public_key()).to_vec();
        let r = b.unwrap(&forged, &w, b"aad", &ui);
        assert!(matches!(r, Err(Error::WrongDevice { .. })), "{r:?}");
        // A key id that is not on the token.
        let mut d = Descriptor::from_enrollment(&e).expect("d");
        d.key_id = vec![0xee; 16];
        let missing = Enrollment {
            params: d.to_json(),
            ..e.clone()
        };
        let r = b.unwrap(&missing, &w, b"aad", &ui);
        assert!(matches!(r, Err(Error::WrongDevice { .. })), "{r:?}");
        assert_eq!(ui.requests(), 1, "only the enrollment asked for the PIN");
    });
}

#[test]
fn removed_token_reported() {
    softhsm::isolated("removed_token_reported", |_| {
        let token = SoftHsmToken::new("removable").expect("token");
        let b = backend();
        let ui = Ui::new(token.pin());
        let e = b.enroll(&request(&token, "r", None), &ui).expect("enroll");
        let w = b.wrap(&e, &secret(), b"aad").expect("wrap");
        b.logout();
        token.remove().expect("remove");
        match b.unwrap(&e, &w, b"aad", &ui) {
            Err(Error::DeviceNotFound {
                kind,
                hint: Some(hint @ DeviceError::TokenAbsent { .. }),
            }) => {
                assert_eq!(kind, "pkcs11");
                let hint = hint.to_string();
                assert!(hint.contains("\"removable\""), "{hint}");
                assert!(hint.contains(token.serial()), "{hint}");
                assert!(hint.contains("insert it"), "{hint}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ui.requests(), 1);
        let h = b.health(&e).expect("health");
        assert!(!h.present, "{h:?}");
        // ECDH wrap needs no token at all.
        b.wrap(&e, &secret(), b"aad")
            .expect("wrap without the token");
    });
}

#[test]
fn removed_while_logged_in_reported() {
    softhsm::isolated("removed_while_logged_in_reported", |_| {
        let token = SoftHsmToken::new("yanked").expect("token");
        let b = backend();
        let ui = Ui::new(token.pin());
        let e = b.enroll(&request(&token, "y", None), &ui).expect("enroll");
        let w = b.wrap(&e, &secret(), b"aad").expect("wrap");
        b.unwrap(&e, &w, b"aad", &ui).expect("logged in");
        token.remove().expect("remove");
        let r = b.unwrap(&e, &w, b"aad", &ui);
        assert!(
            matches!(r, Err(Error::DeviceNotFound { .. } | Error::DeviceRemoved)),
            "{r:?}"
        );
    });
}

#[test]
fn pkcs11_tool_lists_the_key() {
    softhsm::isolated("pkcs11_tool_lists_the_key", |_| {
        let token = SoftHsmToken::new("listed").expect("token");
        let b = backend();
        let ui = Ui::new(token.pin());
        let e = b
            .enroll(&request(&token, "desk", Some("ecdh")), &ui)
            .expect("enroll");
        let aes = b
            .enroll(&request(&token, "vault", Some("aes-gcm")), &ui)
            .expect("enroll aes");
        let out = token.pkcs11_tool(&["--list-objects"]).expect("pkcs11-tool");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = hex::encode(Descriptor::from_enrollment(&e).expect("d").key_id);
        let aes_id = hex::encode(Descriptor::from_enrollment(&aes).expect("d").key_id);
        assert!(text.contains("label:      keyward desk"), "{text}");
        assert!(text.contains("label:      keyward vault"), "{text}");
        assert!(text.contains("Private Key Object; EC"), "{text}");
        assert!(text.contains("Public Key Object; EC"), "{text}");
        assert!(text.contains("Secret Key Object; AES length 32"), "{text}");
        assert!(text.contains(&format!("ID:         {id}")), "{text}");
        assert!(text.contains(&format!("ID:         {aes_id}")), "{text}");
        // Non-extractable and sensitive as pkcs11-tool reports it.
        assert!(text.contains("sensitive"), "{text}");
        assert!(text.contains("never extractable"), "{text}");
    });
}

#[test]
fn ecdsa_signature_verifies_with_p256_and_openssl() {
    softhsm::isolated("ecdsa_signature_verifies_with_p256_and_openssl", |_| {
        use p256::pkcs8::EncodePublicKey as _;

        let token = SoftHsmToken::new("signer").expect("token");
        let b = backend();
        let ui = Ui::new(token.pin());
        let e = b.enroll(&request(&token, "s", None), &ui).expect("enroll");
        let msg = b"audit checkpoint 42";
        let sig = b.sign(&e, msg, &ui).expect("sign");
        assert_eq!(sig.algorithm, SignAlgorithm::EcdsaP256Sha256);
        assert_eq!(ui.requests(), 1);

        let pk = p256::PublicKey::from_sec1_bytes(&e.public_key).expect("public key");
        let vk = p256::ecdsa::VerifyingKey::from(&pk);
        let der = p256::ecdsa::DerSignature::from_bytes(&sig.bytes).expect("DER");
        vk.verify(msg, &der).expect("p256 verifies");
        assert!(vk.verify(b"another message", &der).is_err());

        let pem = pk
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .expect("pem");
        keyward_tests::assert_openssl_verifies(&pem, &sig.bytes, msg);
    });
}

fn openssl_verify_ed25519(public: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    // SubjectPublicKeyInfo for Ed25519 (RFC 8410 §4): fixed prefix + key.
    let mut der = hex::decode("302a300506032b6570032100").expect("hex");
    der.extend_from_slice(public);
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("pub.der"), der).expect("write");
    std::fs::write(dir.path().join("sig"), sig).expect("write");
    std::fs::write(dir.path().join("msg"), msg).expect("write");
    let out = std::process::Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey", "pub.der",
        ])
        .args(["-rawin", "-in", "msg", "-sigfile", "sig"])
        .output()
        .expect("openssl");
    out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains("Signature Verified Successfully")
}

#[test]
fn ed25519_signing_key() {
    softhsm::isolated("ed25519_signing_key", |_| {
        let token = SoftHsmToken::new("ed25519").expect("token");
        let b = backend();
        let ui = Ui::new(token.pin());
        for mode in ["ecdh", "aes-gcm"] {
            let req = signing(request(&token, mode, Some(mode)), Pkcs11Sign::Ed25519);
            let e = b.enroll(&req, &ui).expect("enroll with an Ed25519 key");
            let d = Descriptor::from_enrollment(&e).expect("d");
            let key = d.sign.clone().expect("sign key recorded");
            assert_eq!(key.public.len(), 32);
            assert_ne!(key.id, d.key_id);
            let msg = b"signed by the token";
            let sig = b.sign(&e, msg, &ui).expect("sign");
            assert_eq!(sig.algorithm, SignAlgorithm::Ed25519);
            assert_eq!(sig.bytes.len(), 64);
            let vk = ed25519_dalek::VerifyingKey::from_bytes(
                &key.public.clone().try_into().expect("32"),
            )
            .expect("key");
            let s = ed25519_dalek::Signature::from_slice(&sig.bytes).expect("64");
            vk.verify_strict(msg, &s).expect("dalek verifies");
            assert!(openssl_verify_ed25519(&key.public, msg, &sig.bytes));
            assert!(!openssl_verify_ed25519(&key.public, b"other", &sig.bytes));
            // Wrapping still works alongside.
            let secret = secret();
            let w = b.wrap(&e, &secret, b"aad").expect("wrap");
            assert_eq!(
                b.unwrap(&e, &w, b"aad", &ui).expect("unwrap").expose(),
                secret.expose()
            );

            // Another Ed25519 public key in the descriptor: refused before the PIN.
            b.logout();
            let before = ui.requests();
            let mut forged = d.clone();
            forged.sign = Some(pkcs11::SignKey {
                public: ed25519_dalek::SigningKey::from_bytes(&[9u8; 32])
                    .verifying_key()
                    .to_bytes()
                    .to_vec(),
                ..key
            });
            let forged = Enrollment {
                params: forged.to_json(),
                ..e.clone()
            };
            let r = b.sign(&forged, msg, &ui);
            assert!(matches!(r, Err(Error::WrongDevice { .. })), "{r:?}");
            assert_eq!(ui.requests(), before);
        }
        // ECDSA signing needs the ecdh key.
        let req = signing(request(&token, "x", Some("aes-gcm")), Pkcs11Sign::Ecdsa);
        assert!(matches!(
            b.enroll(&req, &ui),
            Err(Error::InvalidArgument { .. })
        ));
        let out = token.pkcs11_tool(&["--list-objects"]).expect("pkcs11-tool");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("keyward ecdh ed25519"), "{text}");
    });
}

#[test]
fn existing_objects_named_by_uri() {
    softhsm::isolated("existing_objects_named_by_uri", |_| {
        let token = SoftHsmToken::new("existing").expect("token");
        let out = token
            .pkcs11_tool(&[
                "--keypairgen",
                "--key-type",
                "EC:prime256v1",
                "--id",
                "0a0b0c",
                "--label",
                "made-by-tool",
                "--usage-derive",
            ])
            .expect("pkcs11-tool");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let b = backend();
        let ui = Ui::new(token.pin());
        let req = EnrollRequest {
            label: "ignored".into(),
            device: Some(format!(
                "pkcs11:token=existing;object=made-by-tool?module-path={MODULE}"
            )),
            options: EnrollOptions::None,
        };
        let e = b.enroll(&req, &ui).expect("enroll existing");
        let d = Descriptor::from_enrollment(&e).expect("d");
        assert_eq!(d.key_id, vec![0x0a, 0x0b, 0x0c]);
        assert_eq!(d.key_label, "made-by-tool");
        let s = secret();
        let w = b.wrap(&e, &s, b"x").expect("wrap");
        assert_eq!(
            b.unwrap(&e, &w, b"x", &ui).expect("unwrap").expose(),
            s.expose()
        );

        // The same object asked for in aes-gcm mode: the wrong type.
        let req = EnrollRequest {
            label: "x".into(),
            device: Some(format!(
                "pkcs11:token=existing;id=%0a%0b%0c;type=private?module-path={MODULE}"
            )),
            options: mode_options("aes-gcm"),
        };
        let r = b.enroll(&req, &ui);
        assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");

        // An AES-128 key is refused for aes-gcm mode.
        let out = token
            .pkcs11_tool(&[
                "--keygen",
                "--key-type",
                "AES:16",
                "--id",
                "0d",
                "--label",
                "aes128",
            ])
            .expect("pkcs11-tool");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let req = EnrollRequest {
            label: "x".into(),
            device: Some(format!(
                "pkcs11:token=existing;object=aes128?module-path={MODULE}"
            )),
            options: mode_options("aes-gcm"),
        };
        match b.enroll(&req, &ui) {
            Err(Error::Device { error, .. }) => {
                let message = error.to_string();
                assert!(message.contains("not an AES-256 key"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn token_selection_errors() {
    softhsm::isolated("token_selection_errors", |_| {
        let _a = SoftHsmToken::new("sel-a").expect("token");
        let _b = SoftHsmToken::new("sel-b").expect("token");
        let b = backend();
        let ui = Ui::new(softhsm::USER_PIN);
        // Two tokens, no selector: ambiguous, listing both.
        let req = EnrollRequest {
            label: "x".into(),
            device: None,
            options: EnrollOptions::None,
        };
        match b.enroll(&req, &ui) {
            Err(Error::InvalidArgument { what }) => {
                assert!(what.contains("sel-a") && what.contains("sel-b"), "{what}");
            }
            other => panic!("{other:?}"),
        }
        // No such token.
        let req = EnrollRequest {
            device: Some("pkcs11:token=nope".into()),
            ..req
        };
        match b.enroll(&req, &ui) {
            Err(Error::DeviceNotFound { hint: Some(h), .. }) => {
                let h = h.to_string();
                assert!(h.contains("sel-a"), "{h}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ui.requests(), 0);
        // Bad URIs never reach the token.
        for bad in ["pkcs11:token=a?pin-value=1", "pkcs11:x-y=1", "file:/x"] {
            let req = EnrollRequest {
                label: "x".into(),
                device: Some(bad.into()),
                options: EnrollOptions::None,
            };
            assert!(matches!(
                b.enroll(&req, &ui),
                Err(Error::InvalidArgument { .. })
            ));
        }
        // Devices lists both.
        let devices = b.devices().expect("devices");
        assert!(
            devices.iter().any(|d| d.id.contains("token=sel-a")),
            "{devices:?}"
        );
        assert!(
            devices.iter().any(|d| d.id.contains("token=sel-b")),
            "{devices:?}"
        );
    });
}

#[test]
fn module_errors_are_clear() {
    // No SoftHSM environment needed: the module is never loaded.
    let b = pkcs11::Backend::new(pkcs11::Options {
        module: Some("/nonexistent/libpkcs11.so".into()),
        mode: None,
    });
    let ui = Ui::new("1");
    let req = EnrollRequest {
        label: "x".into(),
        device: Some("pkcs11:token=a".into()),
        options: EnrollOptions::None,
    };
    match b.enroll(&req, &ui) {
        Err(Error::DeviceNotFound {
            hint: Some(DeviceError::ModuleNotFound { path, usual, .. }),
            ..
        }) => {
            assert!(path.to_string_lossy().contains("/nonexistent/libpkcs11.so"));
            assert!(
                usual.iter().any(|u| u == "/usr/lib/softhsm/libsofthsm2.so"),
                "{usual:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let req = EnrollRequest {
        device: Some("pkcs11:token=a?module-path=/etc/hostname".into()),
        ..req
    };
    match b.enroll(&req, &ui) {
        Err(Error::Device { error, .. }) => {
            assert!(matches!(error, DeviceError::ModuleNotLoadable { .. }));
            assert_eq!(error.code(), "dlopen");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn concurrent_unwraps_and_signs() {
    softhsm::isolated("concurrent_unwraps_and_signs", |_| {
        let token = SoftHsmToken::new("threads").expect("token");
        let b = Arc::new(backend());
        let ui = Arc::new(Ui::new(token.pin()));
        let e = b.enroll(&request(&token, "t", None), &*ui).expect("enroll");
        let s = secret();
        let w = b.wrap(&e, &s, b"aad").expect("wrap");
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (b, ui, e, w) = (b.clone(), ui.clone(), e.clone(), w.clone());
                std::thread::spawn(move || {
                    let mut first = None;
                    for _ in 0..50 {
                        let out = b.unwrap(&e, &w, b"aad", &*ui).expect("unwrap");
                        first.get_or_insert(*out.expose());
                        assert_eq!(Some(*out.expose()), first);
                        b.sign(&e, b"m", &*ui).expect("sign");
                    }
                    first.expect("ran")
                })
            })
            .collect();
        for h in handles {
            assert_eq!(&h.join().expect("thread"), s.expose());
        }
        assert_eq!(ui.requests(), 1, "one login for all threads");
    });
}

fn service_flow(mode: &str) {
    let token = SoftHsmToken::new(&format!("svc-{mode}")).expect("token");
    let b = Arc::new(backend());
    let mut backends = Backends::new();
    backends.add(b.clone());
    let ui = Ui::new(token.pin());
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("store.db");
    let (mut svc, info) = Service::init(
        &path,
        backends.clone(),
        BackendKind::Pkcs11,
        &request(&token, "hsm", Some(mode)),
        &ui,
    )
    .expect("init");
    assert_eq!(info.kind, BackendKind::Pkcs11);
    assert_eq!(info.mk_epoch, 1);
    assert!(
        info.device_id
            .as_deref()
            .is_some_and(|d| d.contains(token.serial()))
    );
    let epoch = svc.rotate_master().expect("rotate master");
    assert_eq!(epoch, 2);
    svc.lock();
    b.logout();
    drop(svc);

    // Wrong PIN: a clear error, and nothing about the protectors changes.
    let mut svc = Service::open(&path, backends.clone()).expect("open");
    let protectors_before = svc.protectors().expect("protectors");
    ui.set_pin("999999");
    let r = svc.unlock(UnlockWith::Kind(BackendKind::Pkcs11), &ui);
    assert!(matches!(r, Err(Error::WrongPin { .. })), "{r:?}");
    assert!(!svc.is_unlocked());
    assert_eq!(svc.protectors().expect("protectors"), protectors_before);
    assert_eq!(svc.status().expect("status").mk_epoch, 2);

    ui.set_pin(token.pin());
    let p = svc
        .unlock(UnlockWith::Kind(BackendKind::Pkcs11), &ui)
        .expect("unlock with the token");
    assert_eq!(p.mk_epoch, 2);
    assert!(svc.is_unlocked());
    // Rotate again while unlocked (aes-gcm wraps on the logged-in token).
    assert_eq!(svc.rotate_master().expect("rotate"), 3);
    svc.lock();
    b.logout();
    svc.unlock(UnlockWith::Any, &ui).expect("unlock at epoch 3");
    assert_eq!(svc.status().expect("status").mk_epoch, 3);
}

#[test]
fn service_ecdh() {
    softhsm::isolated("service_ecdh", |_| service_flow("ecdh"));
}

#[test]
fn service_aes_gcm() {
    softhsm::isolated("service_aes_gcm", |_| service_flow("aes-gcm"));
}

/// The vectors of docs/PKCS11.md ("Vectors"), computed independently with
/// Python `cryptography`: the keys are imported into the token and both
/// blobs are unwrapped through the backend.
#[test]
fn documented_vectors_unwrap_on_the_token() {
    softhsm::isolated("documented_vectors_unwrap_on_the_token", |_| {
        use p256::elliptic_curve::sec1::ToSec1Point as _;

        let token = SoftHsmToken::new("vectors").expect("token");
        let lib = pkcs11::library::load(std::path::Path::new(MODULE)).expect("module");
        let slot = lib
            .get_slots_with_token()
            .expect("slots")
            .into_iter()
            .find(|s| {
                lib.get_token_info(*s)
                    .is_ok_and(|i| i.label() == token.label())
            })
            .expect("slot");
        let session = lib.open_rw_session(slot).expect("session");
        session
            .login(
                cryptoki::session::UserType::User,
                Some(&SecretString::from(token.pin().to_owned())),
            )
            .expect("login");
        let aes_key: Vec<u8> = (0x40..0x60).collect();
        session
            .create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Value(aes_key),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Id(vec![0x0a]),
                Attribute::Label(b"vector-aes".to_vec()),
            ])
            .expect("import AES key");
        let p256_params = hex::decode("06082a8648ce3d030107").expect("hex");
        let d: Vec<u8> = (0x01..=0x20).collect();
        let public =
            hex::decode("02515c3d6eb9e396b904d3feca7f54fdcd0cc1e997bf375dca515ad0a6c3b4035f")
                .expect("hex");
        let point = p256::PublicKey::from_sec1_bytes(&public).expect("point");
        let mut ec_point = vec![0x04, 0x41];
        ec_point.extend_from_slice(point.to_sec1_point(false).as_bytes());
        session
            .create_object(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(p256_params.clone()),
                Attribute::Value(d),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Derive(true),
                Attribute::Sign(true),
                Attribute::Id(vec![0x0b]),
                Attribute::Label(b"vector-ec".to_vec()),
            ])
            .expect("import EC private key");
        session
            .create_object(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(p256_params),
                Attribute::EcPoint(ec_point),
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Id(vec![0x0b]),
                Attribute::Label(b"vector-ec".to_vec()),
            ])
            .expect("import EC public key");

        let b = backend();
        let ui = Ui::new(token.pin());
        let enroll = |id: &str, mode: &str| {
            b.enroll(
                &EnrollRequest {
                    label: "vector".into(),
                    device: Some(format!("pkcs11:token=vectors;id={id}?module-path={MODULE}")),
                    options: mode_options(mode),
                },
                &ui,
            )
            .expect("enroll the imported key")
        };
        // Our own session is logged in already: the backend's login meets
        // CKR_USER_ALREADY_LOGGED_IN and carries on.
        let aes = enroll("%0a", "aes-gcm");
        let ecdh = enroll("%0b", "ecdh");
        drop(session);
        assert_eq!(ecdh.public_key, public);

        let aad = hex::decode(
            "6b6579776172642f76312f6d6b2d7772617011111111111111111111111111111111000000010000000105",
        )
        .expect("hex");
        let expected: Vec<u8> = (0x00..0x20).collect();
        let aes_blob = hex::decode(
            "02a0a1a2a3a4a5a6a7a8a9aaabd78e043ce6ee9a2a71664bf585b13ef9ff06e7d4f87a933afac5\
             f481f5df60e786718ce08586084e266b3d4648d97bb2",
        )
        .expect("hex");
        let ecdh_blob = hex::decode(
            "01031f140146bfb1b251f84f4ddbe0d4cdcfd77afd984a9520e35794021f8312bb9ec1a3bc91d4\
             7ae0de075f1806e8b53128433b750c828b20c366b2db48f0b6a456826598da9f77410fb1828a90\
             5a43a4c0",
        )
        .expect("hex");
        let out = b
            .unwrap(&aes, &Wrapped(aes_blob), &aad, &ui)
            .expect("aes vector");
        assert_eq!(out.expose().as_slice(), expected.as_slice());
        let out = b
            .unwrap(&ecdh, &Wrapped(ecdh_blob), &aad, &ui)
            .expect("ecdh vector");
        assert_eq!(out.expose().as_slice(), expected.as_slice());
    });
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn timings() {
    softhsm::isolated("timings", |_| {
        let token = SoftHsmToken::new("timings").expect("token");
        let b = backend();
        let ui = Ui::new(token.pin());
        let ecdh = b
            .enroll(&request(&token, "e", Some("ecdh")), &ui)
            .expect("enroll");
        let aes = b
            .enroll(&request(&token, "a", Some("aes-gcm")), &ui)
            .expect("enroll");
        let req = signing(request(&token, "ed", Some("ecdh")), Pkcs11Sign::Ed25519);
        let ed = b.enroll(&req, &ui).expect("enroll");
        let s = secret();
        let we = b.wrap(&ecdh, &s, b"aad").expect("wrap");
        let wa = b.wrap(&aes, &s, b"aad").expect("wrap");
        let n = 200;
        let mut unwrap_ecdh = Vec::new();
        let mut unwrap_aes = Vec::new();
        let mut sign = Vec::new();
        let mut wrap_aes = Vec::new();
        let mut sign_ed = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            b.sign(&ed, b"message", &ui).expect("sign");
            sign_ed.push(t.elapsed());
            let t = Instant::now();
            b.unwrap(&ecdh, &we, b"aad", &ui).expect("unwrap");
            unwrap_ecdh.push(t.elapsed());
            let t = Instant::now();
            b.unwrap(&aes, &wa, b"aad", &ui).expect("unwrap");
            unwrap_aes.push(t.elapsed());
            let t = Instant::now();
            b.sign(&ecdh, b"message", &ui).expect("sign");
            sign.push(t.elapsed());
            let t = Instant::now();
            b.wrap(&aes, &s, b"aad").expect("wrap");
            wrap_aes.push(t.elapsed());
        }
        // Baseline: the same token operations through cryptoki directly, in
        // this process, on one session (what a program that skips keyward's
        // checks would pay).
        let lib = pkcs11::library::load(std::path::Path::new(MODULE)).expect("module");
        let slot = lib
            .get_slots_with_token()
            .expect("slots")
            .into_iter()
            .find(|s| {
                lib.get_token_info(*s)
                    .is_ok_and(|i| i.label() == token.label())
            })
            .expect("slot");
        let session = lib.open_ro_session(slot).expect("session");
        let id = Descriptor::from_enrollment(&ecdh).expect("d").key_id;
        let private = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(id),
            ])
            .expect("find")[0];
        let digest = [7u8; 32];
        let epk = keyward_kms::crypto::ecies::random_scalar()
            .expect("rng")
            .public_key();
        let epk = p256::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&epk, false);
        let mut raw_sign = Vec::new();
        let mut raw_derive = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            session
                .sign(&Mechanism::Ecdsa, private, &digest)
                .expect("raw sign");
            raw_sign.push(t.elapsed());
            let t = Instant::now();
            let params = Ecdh1DeriveParams::new(EcKdf::null(), epk.as_bytes());
            let h = session
                .derive_key(
                    &Mechanism::Ecdh1Derive(params),
                    private,
                    &[
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::KeyType(KeyType::GENERIC_SECRET),
                        Attribute::ValueLen(32.into()),
                        Attribute::Token(false),
                        Attribute::Sensitive(false),
                        Attribute::Extractable(true),
                    ],
                )
                .expect("raw derive");
            session
                .get_attributes(h, &[AttributeType::Value])
                .expect("value");
            session.destroy_object(h).expect("destroy");
            raw_derive.push(t.elapsed());
        }
        drop(session);
        let t = Instant::now();
        b.logout();
        b.unwrap(&ecdh, &we, b"aad", &ui).expect("cold unwrap");
        let cold = t.elapsed();
        println!(
            "pkcs11 timings (SoftHSM, median of {n}): unwrap ecdh {:?}, unwrap aes-gcm {:?}, \
             sign ecdsa {:?}, sign ed25519 {:?}, wrap aes-gcm {:?}; unwrap after logout (login+unwrap) {cold:?}; \
             raw cryptoki on one session: C_Sign {:?}, C_DeriveKey+read+destroy {:?}",
            median(unwrap_ecdh),
            median(unwrap_aes),
            median(sign),
            median(sign_ed),
            median(wrap_aes),
            median(raw_sign),
            median(raw_derive),
        );
    });
}
