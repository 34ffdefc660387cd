//! The TPM backend against real swtpm instances, one per test (issue 5).
//!
//! Needs `swtpm`, `tpm2-tools` and `openssl` on PATH (Debian: swtpm
//! swtpm-tools tpm2-tools openssl).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyward_backends::tpm::Backend as Tpm;
use keyward_hw_mocks::swtpm::Swtpm;
use keyward_kms::backend::options::{Pkcs11Options, TpmOptions, YubikeyOptions};
use keyward_kms::backend::{
    Backend, BackendKind, Callbacks, Capabilities, DeviceInfo, EnrollOptions, EnrollRequest,
    Enrollment, Health, Notice, SecretKind, SecretRequest, SignAlgorithm, Signature, WrapMode,
    Wrapped,
};
use keyward_kms::crypto::ecies;
use keyward_kms::error::DeviceError;
use keyward_kms::keys::{DataClass, KeyName, KeyPurpose};
use keyward_kms::secret::{Secret32, SecretString};
use keyward_kms::service::{Backends, KeySpec, Service, UnlockWith};
use keyward_kms::{Error, Result};
use p256::ecdsa::signature::Verifier as _;

const PIN: &str = "246810";
const AAD: &[u8] = b"keyward test aad";

/// Answers every PIN prompt from a queue (the last answer repeats), and
/// records what was asked.
struct Ui {
    answers: Mutex<VecDeque<String>>,
    asked: Mutex<Vec<(SecretKind, Option<u32>)>>,
    on_request: Option<Box<dyn Fn() + Send + Sync>>,
}

impl Ui {
    fn pin(pin: &str) -> Self {
        Self::answers(&[pin])
    }

    fn answers(answers: &[&str]) -> Self {
        Self {
            answers: Mutex::new(answers.iter().map(|s| (*s).to_owned()).collect()),
            asked: Mutex::new(Vec::new()),
            on_request: None,
        }
    }

    fn count(&self) -> usize {
        self.asked.lock().expect("lock").len()
    }

    fn last_retries(&self) -> Option<u32> {
        self.asked.lock().expect("lock").last().and_then(|a| a.1)
    }
}

impl Callbacks for Ui {
    fn request_secret(&self, request: &SecretRequest<'_>) -> Result<SecretString> {
        self.asked
            .lock()
            .expect("lock")
            .push((request.kind, request.retries_left));
        if let Some(hook) = &self.on_request {
            hook();
        }
        let mut answers = self.answers.lock().expect("lock");
        let answer = if answers.len() > 1 {
            answers.pop_front()
        } else {
            answers.front().cloned()
        };
        answer.map(SecretString::from).ok_or(Error::Cancelled)
    }

    fn notify(&self, _notice: &Notice<'_>) {}

    fn show_secret(&self, _title: &str, _secret: &SecretString) -> Result<()> {
        Ok(())
    }
}

fn request() -> EnrollRequest {
    EnrollRequest {
        label: "laptop TPM".into(),
        device: None,
        options: EnrollOptions::None,
    }
}

/// A request for a TPM key with or without a PIN, bound to `pcrs` ("16,23").
fn tpm_request(pin: bool, pcrs: &str) -> EnrollRequest {
    EnrollRequest {
        options: EnrollOptions::Tpm(TpmOptions {
            pin,
            pcrs: pcrs.parse().expect("PCR list"),
        }),
        ..request()
    }
}

fn start() -> (Swtpm, Tpm) {
    let tpm = Swtpm::start().expect("start swtpm (apt-get install swtpm swtpm-tools)");
    let backend = Tpm::with_tcti(tpm.tcti());
    (tpm, backend)
}

fn secret() -> Secret32 {
    Secret32::random().expect("rng")
}

#[test]
fn round_trip_with_pin() {
    let (_tpm, backend) = start();
    let ui = Ui::pin(PIN);
    let e = backend.enroll(&request(), &ui).expect("enroll");
    assert_eq!(ui.count(), 2, "new PIN asked twice at enrollment");
    assert_eq!(e.kind, BackendKind::Tpm);
    assert_eq!(e.public_key.len(), 33);
    let id = e.device_id.clone().expect("device id");
    assert!(id.starts_with("srk:") && id.len() == 20, "{id}");
    assert_eq!(e.params["pin"], true);
    assert_eq!(e.params["policy"].as_str().map(str::len), Some(64));
    // Marshalled TPM2B blobs with a correct length prefix.
    for key in ["ecdh", "sign"] {
        for part in ["public", "private"] {
            let blob = hex::decode(e.params[key][part].as_str().expect("hex")).expect("hex");
            let len = usize::from(u16::from_be_bytes([blob[0], blob[1]]));
            assert_eq!(len + 2, blob.len(), "{key}.{part}");
        }
    }

    let s = secret();
    let w = backend.wrap(&e, &s, AAD).expect("wrap");
    assert_eq!(w.0.len(), ecies::BLOB_LEN);
    let out = backend.unwrap(&e, &w, AAD, &ui).expect("unwrap");
    assert_eq!(out.expose(), s.expose());
    assert_eq!(ui.count(), 3);
    let asked = ui.asked.lock().expect("lock").last().copied();
    // swtpm's default: 3 tries; the prompt says how many are left.
    assert_eq!(asked, Some((SecretKind::Pin, Some(3))));

    // Wrong AAD and a modified blob fail as a wrap failure, not a PIN error.
    assert!(matches!(
        backend.unwrap(&e, &w, b"other aad", &ui),
        Err(Error::UnwrapFailed)
    ));
    let mut bad = w.0.clone();
    bad[ecies::BLOB_LEN - 1] ^= 1;
    assert!(matches!(
        backend.unwrap(&e, &Wrapped(bad), AAD, &ui),
        Err(Error::UnwrapFailed)
    ));
    // A cut blob is refused before the TPM or the PIN.
    let before = ui.count();
    assert!(matches!(
        backend.unwrap(&e, &Wrapped(w.0[..40].to_vec()), AAD, &ui),
        Err(Error::Malformed { .. })
    ));
    assert_eq!(ui.count(), before);

    // Health and devices see the same TPM.
    let h = backend.health(&e).expect("health");
    assert!(h.present && h.matches, "{h:?}");
    assert_eq!(h.retries_left, Some(3));
    let devices = backend.devices().expect("devices");
    assert_eq!(devices.len(), 1);
    assert_eq!(Some(devices[0].id.clone()), e.device_id);
}

#[test]
fn round_trip_without_pin_asks_nothing() {
    let (_tpm, backend) = start();
    let ui = Ui::answers(&[]);
    let e = backend
        .enroll(&tpm_request(false, ""), &ui)
        .expect("enroll");
    assert_eq!(e.params["pin"], false);
    assert_eq!(e.params["policy"], "");
    let s = secret();
    let w = backend.wrap(&e, &s, AAD).expect("wrap");
    let out = backend.unwrap(&e, &w, AAD, &ui).expect("unwrap");
    assert_eq!(out.expose(), s.expose());
    let sig = backend.sign(&e, b"no pin", &ui).expect("sign");
    verify_on_host(&e, b"no pin", &sig);
    assert_eq!(ui.count(), 0, "no prompt at all");
}

#[test]
fn enroll_refuses_bad_options_and_mismatched_pins() {
    let (_tpm, backend) = start();
    let ui = Ui::pin(PIN);
    // Bad PIN and PCR values cannot be built (kms's `PcrSelection` tests);
    // another backend's options are refused.
    for opts in [
        EnrollOptions::Yubikey(YubikeyOptions::default()),
        EnrollOptions::Pkcs11(Pkcs11Options::default()),
    ] {
        let req = EnrollRequest {
            options: opts.clone(),
            ..request()
        };
        assert!(
            matches!(
                backend.enroll(&req, &ui),
                Err(Error::InvalidArgument { .. })
            ),
            "{opts:?}"
        );
    }
    assert_eq!(ui.count(), 0, "options are checked before any prompt");
    let typo = Ui::answers(&["1111", "1112"]);
    assert!(matches!(
        backend.enroll(&request(), &typo),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn pin_whose_hash_ends_in_zero_works() {
    // The TPM strips trailing zero bytes from auth values; ESAPI must do
    // the same when it computes the HMAC. Find a PIN whose SHA-256 ends in
    // 0x00 and use it.
    use sha2::{Digest as _, Sha256};
    let pin = (0u32..100_000)
        .map(|n| format!("pin{n}"))
        .find(|p| Sha256::digest(p.as_bytes())[31] == 0)
        .expect("about one PIN in 256 qualifies");
    let (_tpm, backend) = start();
    let ui = Ui::pin(&pin);
    let e = backend.enroll(&request(), &ui).expect("enroll");
    let s = secret();
    let w = backend.wrap(&e, &s, AAD).expect("wrap");
    assert_eq!(
        backend.unwrap(&e, &w, AAD, &ui).expect("unwrap").expose(),
        s.expose()
    );
}

#[test]
fn wrong_pin_reports_tries_left_and_changes_nothing() {
    let (tpm, backend) = start();
    tpm.set_dictionary_lockout(5, 600, 0).expect("DA setup");
    let ui = Ui::pin(PIN);
    let e = backend.enroll(&request(), &ui).expect("enroll");
    let s = secret();
    let w = backend.wrap(&e, &s, AAD).expect("wrap");

    let wrong = Ui::pin("135790");
    match backend.unwrap(&e, &w, AAD, &wrong) {
        Err(Error::WrongPin { retries_left }) => assert_eq!(retries_left, Some(4)),
        other => panic!("expected WrongPin, got {other:?}"),
    }
    assert_eq!(wrong.last_retries(), Some(5), "prompt showed 5 tries");
    match backend.unwrap(&e, &w, AAD, &wrong) {
        Err(e) => {
            assert!(
                matches!(
                    e,
                    Error::WrongPin {
                        retries_left: Some(3)
                    }
                ),
                "{e:?}"
            );
            assert_eq!(e.to_string(), "wrong PIN (3 tries left)");
        }
        Ok(_) => panic!("wrong PIN accepted"),
    }
    assert_eq!(wrong.last_retries(), Some(4));
    // Health reports the same count without a PIN.
    assert_eq!(backend.health(&e).expect("health").retries_left, Some(3));

    // Nothing changed: the right PIN still unwraps the same secret.
    let right = Ui::pin(PIN);
    let out = backend.unwrap(&e, &w, AAD, &right).expect("right PIN");
    assert_eq!(out.expose(), s.expose());
    assert_eq!(right.last_retries(), Some(3));
}

#[test]
fn lockout_is_reported_with_its_duration() {
    let (tpm, backend) = start();
    tpm.set_dictionary_lockout(2, 600, 0).expect("DA setup");
    let ui = Ui::pin(PIN);
    let e = backend.enroll(&request(), &ui).expect("enroll");
    let w = backend.wrap(&e, &secret(), AAD).expect("wrap");
    let wrong = Ui::pin("000000");
    assert!(matches!(
        backend.unwrap(&e, &w, AAD, &wrong),
        Err(Error::WrongPin {
            retries_left: Some(1)
        })
    ));
    assert!(matches!(
        backend.unwrap(&e, &w, AAD, &wrong),
        Err(Error::WrongPin {
            retries_left: Some(0)
        })
    ));
    // Now locked out: refused before any prompt, with the duration.
    let before = wrong.count();
    let err = backend.unwrap(&e, &w, AAD, &wrong).expect_err("locked out");
    assert!(
        matches!(err, Error::Lockout { seconds: Some(600) }),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "the device is locked out for 600 s");
    assert_eq!(wrong.count(), before, "no PIN asked during lockout");
    // Even the right PIN is refused, and signing too.
    assert!(matches!(
        backend.unwrap(&e, &w, AAD, &ui),
        Err(Error::Lockout { seconds: Some(600) })
    ));
    assert!(matches!(
        backend.sign(&e, b"m", &ui),
        Err(Error::Lockout { seconds: Some(600) })
    ));
    let h = backend.health(&e).expect("health");
    assert_eq!(h.lockout_seconds, Some(600));
    assert_eq!(h.retries_left, Some(0));
    assert!(h.detail.contains("lockout"), "{}", h.detail);

    // Clearing the lockout (tpm2_dictionarylockout -c) makes it usable.
    tpm.clear_lockout().expect("clear lockout");
    let out = backend.unwrap(&e, &w, AAD, &ui);
    assert!(out.is_ok(), "usable after the lockout is cleared: {out:?}");
}

#[test]
fn lockout_starting_after_the_check_is_mapped_from_the_tpm() {
    let (tpm, backend) = start();
    tpm.set_dictionary_lockout(1, 300, 0).expect("DA setup");
    let ui = Ui::pin(PIN);
    let e = backend.enroll(&request(), &ui).expect("enroll");
    let w = backend.wrap(&e, &secret(), AAD).expect("wrap");
    // While the prompt is open, another client burns the last try.
    let other_tcti = tpm.tcti();
    let e2 = e.clone();
    let w2 = w.clone();
    let mut racing = Ui::pin(PIN);
    racing.on_request = Some(Box::new(move || {
        let intruder = Tpm::with_tcti(other_tcti.clone());
        let bad = Ui::pin("999999");
        let r = intruder.unwrap(&e2, &w2, AAD, &bad);
        assert!(matches!(r, Err(Error::WrongPin { .. })), "{r:?}");
    }));
    let err = backend.unwrap(&e, &w, AAD, &racing).expect_err("lockout");
    assert!(
        matches!(err, Error::Lockout { seconds: Some(300) }),
        "{err:?}"
    );
}

#[test]
fn pcr_bound_enrollment_fails_after_extend_with_the_pcr_message() {
    let (tpm, backend) = start();
    let ui = Ui::pin(PIN);
    let e = backend
        .enroll(&tpm_request(true, "16"), &ui)
        .expect("enroll");
    assert_eq!(e.params["pcrs"], serde_json::json!([16]));
    let s = secret();
    let w = backend.wrap(&e, &s, AAD).expect("wrap");
    assert_eq!(
        backend.unwrap(&e, &w, AAD, &ui).expect("unwrap").expose(),
        s.expose()
    );

    tpm.pcr_extend(16, &[0x42; 32]).expect("extend PCR 16");
    let before = ui.count();
    let err = backend.unwrap(&e, &w, AAD, &ui).expect_err("PCR changed");
    let msg = err.to_string();
    assert!(
        matches!(
            &err,
            Error::Device {
                error: DeviceError::PcrMismatch { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(msg.contains("PCR 16"), "{msg}");
    assert!(msg.contains("recovery key"), "{msg}");
    assert!(msg.contains("keyward enroll tpm --replace"), "{msg}");
    assert_eq!(
        ui.count(),
        before,
        "no PIN asked when the PCRs already differ"
    );
    let h = backend.health(&e).expect("health");
    assert!(
        h.present && h.matches && h.detail.contains("PCR 16"),
        "{h:?}"
    );

    // The TPM enforces the binding, not only our pre-check: pretend the
    // enrolled values were the current ones (descriptor and policy edited
    // consistently). The key's real authPolicy still names the old values,
    // so the TPM answers TPM_RC_POLICY_FAIL (0x99d), mapped to the same
    // advice.
    let mut forged = e.clone();
    let now = pcr16(&tpm);
    forged.params["pcr_values"]["16"] = serde_json::json!(hex::encode(now));
    forged.params["policy"] = serde_json::json!(policy_hex(true, 16, &now));
    let before = ui.count();
    let err = backend
        .unwrap(&forged, &w, AAD, &ui)
        .expect_err("TPM policy");
    assert_eq!(ui.count(), before + 1, "our checks passed; the TPM refused");
    let msg = err.to_string();
    assert!(
        matches!(
            &err,
            Error::Device {
                error: DeviceError::PcrMismatch { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(msg.contains("keyward enroll tpm --replace"), "{msg}");
    // A policy failure is not a PIN failure: the counter did not move.
    assert_eq!(backend.health(&e).expect("health").retries_left, Some(3));
}

#[test]
fn pcr_bound_without_pin_unlocks_unattended() {
    let (tpm, backend) = start();
    let ui = Ui::answers(&[]);
    let e = backend
        .enroll(&tpm_request(false, "16,23"), &ui)
        .expect("enroll");
    let s = secret();
    let w = backend.wrap(&e, &s, AAD).expect("wrap");
    assert_eq!(
        backend.unwrap(&e, &w, AAD, &ui).expect("unwrap").expose(),
        s.expose()
    );
    tpm.pcr_extend(23, &[1; 32]).expect("extend");
    let msg = backend
        .unwrap(&e, &w, AAD, &ui)
        .expect_err("PCR 23 changed")
        .to_string();
    assert!(msg.contains("PCR 23") && !msg.contains("16"), "{msg}");
    assert_eq!(ui.count(), 0);
}

#[test]
fn blob_from_another_tpm_is_refused_before_the_pin() {
    let (_tpm_a, backend_a) = start();
    let (_tpm_b, backend_b) = start();
    let ui = Ui::pin(PIN);
    let e = backend_a.enroll(&request(), &ui).expect("enroll on A");
    let w = backend_a.wrap(&e, &secret(), AAD).expect("wrap");

    let asked = Ui::pin(PIN);
    let err = backend_b
        .unwrap(&e, &w, AAD, &asked)
        .expect_err("other TPM");
    assert!(matches!(err, Error::WrongDevice { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("enrolled on"), "{msg}");
    assert!(msg.contains(e.device_id.as_deref().expect("id")), "{msg}");
    assert_eq!(asked.count(), 0, "WrongDevice before any PIN request");
    assert!(matches!(
        backend_b.sign(&e, b"m", &asked),
        Err(Error::WrongDevice { .. })
    ));
    assert_eq!(asked.count(), 0);
    let h = backend_b.health(&e).expect("health");
    assert!(h.present && !h.matches, "{h:?}");

    // With the identity check fooled (descriptor edited to B's SRK), the
    // TPM itself refuses A's key blob: TPM_RC_INTEGRITY (0x1df).
    let on_b = backend_b.enroll(&request(), &ui).expect("enroll on B");
    let mut forged = e.clone();
    forged.params["srk_id"] = on_b.params["srk_id"].clone();
    let err = backend_b
        .unwrap(&forged, &w, AAD, &ui)
        .expect_err("blob of A on B");
    assert!(
        matches!(&err, Error::Device { error: error @ DeviceError::ForeignKey { .. }, .. }
            if error.code() == "0x1df" && error.to_string().contains("another TPM")),
        "{err:?}"
    );
}

#[test]
fn swtpm_killed_mid_unlock_then_restarted() {
    let (tpm, backend) = start();
    let ui = Ui::pin(PIN);
    let e = backend.enroll(&request(), &ui).expect("enroll");
    let s = secret();
    let w = backend.wrap(&e, &s, AAD).expect("wrap");

    // Killed while the PIN prompt is open (between the checks and the use
    // of the key).
    let tpm = Arc::new(Mutex::new(tpm));
    let killer = Arc::clone(&tpm);
    let mut killing = Ui::pin(PIN);
    killing.on_request = Some(Box::new(move || {
        killer.lock().expect("lock").kill().expect("kill swtpm");
    }));
    let err = backend.unwrap(&e, &w, AAD, &killing).expect_err("TPM gone");
    assert!(matches!(err, Error::DeviceNotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("swtpm running"), "{msg}");
    assert!(msg.contains("KEYWARD_TPM_TCTI"), "{msg}");

    // Still down: the same clear error, and health says absent.
    assert!(matches!(
        backend.unwrap(&e, &w, AAD, &ui),
        Err(Error::DeviceNotFound { .. })
    ));
    let h = backend.health(&e).expect("health of an absent TPM is Ok");
    assert!(!h.present, "{h:?}");

    // After a restart (same state: same TPM) a retry works with the same
    // backend.
    tpm.lock().expect("lock").restart().expect("restart swtpm");
    let out = backend
        .unwrap(&e, &w, AAD, &ui)
        .expect("unwrap after restart");
    assert_eq!(out.expose(), s.expose());
}

#[test]
fn tpm_clear_is_reported_as_another_tpm() {
    let (tpm, backend) = start();
    let ui = Ui::pin("pïn-✓ 2");
    let e = backend
        .enroll(&request(), &ui)
        .expect("enroll, non-ASCII PIN");
    let s = secret();
    let w = backend.wrap(&e, &s, AAD).expect("wrap");
    assert_eq!(
        backend.unwrap(&e, &w, AAD, &ui).expect("unwrap").expose(),
        s.expose()
    );
    // TPM2_Clear (lockout hierarchy, empty auth) replaces the owner seed:
    // every key under the old SRK is gone for good.
    tpm.run_tool("tpm2_clear", &["-c".to_owned(), "l".to_owned()])
        .expect("tpm2_clear");
    let before = ui.count();
    let err = backend.unwrap(&e, &w, AAD, &ui).expect_err("cleared");
    assert!(matches!(err, Error::WrongDevice { .. }), "{err:?}");
    assert!(err.to_string().contains("after a clear"), "{err}");
    assert_eq!(ui.count(), before, "no PIN asked");
}

#[test]
fn one_backend_serves_concurrent_threads() {
    // swtpm has three object slots and no resource manager: interleaved
    // commands from several threads would fail with 0x902 or use each
    // other's handles. The backend's context lock serialises them.
    let (_tpm, backend) = start();
    let backend = Arc::new(backend);
    let ui = Arc::new(Ui::pin(PIN));
    let with_pin = backend.enroll(&request(), ui.as_ref()).expect("enroll");
    let no_pin = backend
        .enroll(&tpm_request(false, ""), ui.as_ref())
        .expect("enroll");
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let backend = Arc::clone(&backend);
            let ui = Arc::clone(&ui);
            let e = if i % 2 == 0 {
                with_pin.clone()
            } else {
                no_pin.clone()
            };
            std::thread::spawn(move || {
                for _ in 0..5 {
                    let s = secret();
                    let w = backend.wrap(&e, &s, AAD).expect("wrap");
                    let out = backend.unwrap(&e, &w, AAD, ui.as_ref()).expect("unwrap");
                    assert_eq!(out.expose(), s.expose());
                    let sig = backend.sign(&e, b"concurrent", ui.as_ref()).expect("sign");
                    verify_on_host(&e, b"concurrent", &sig);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
}

#[test]
fn absent_tpm_is_device_not_found() {
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let backend = Tpm::with_tcti(format!("swtpm:host=127.0.0.1,port={port}"));
    let ui = Ui::pin(PIN);
    let err = backend.enroll(&request(), &ui).expect_err("no TPM");
    assert!(matches!(err, Error::DeviceNotFound { .. }), "{err:?}");
    assert_eq!(ui.count(), 0, "no PIN asked without a TPM");
    assert!(matches!(
        backend.devices(),
        Err(Error::DeviceNotFound { .. })
    ));
    let bad = Tpm::with_tcti("carrier-pigeon:");
    assert!(matches!(bad.devices(), Err(Error::InvalidArgument { .. })));
}

#[test]
fn out_of_object_memory_is_explained_and_recoverable() {
    let (tpm, backend) = start();
    let ui = Ui::pin(PIN);
    let e = backend.enroll(&request(), &ui).expect("enroll");
    let s = secret();
    let w = backend.wrap(&e, &s, AAD).expect("wrap");
    // Another program fills swtpm's three transient slots and leaves.
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 0..3 {
        let ctx = dir.path().join(format!("p{i}.ctx")).display().to_string();
        tpm.run_tool(
            "tpm2_createprimary",
            &["-C", "o", "-G", "ecc", "-c", &ctx].map(str::to_owned),
        )
        .expect("createprimary");
    }
    let err = backend.unwrap(&e, &w, AAD, &ui).expect_err("no slot");
    assert!(
        matches!(&err, Error::Device { error: error @ DeviceError::Tpm { rc: 0x902, .. }, .. }
            if error.code() == "0x902" && error.to_string().contains("tpm2_flushcontext")),
        "{err:?}"
    );
    tpm.run_tool("tpm2_flushcontext", &["-t".to_owned()])
        .expect("flush");
    let out = backend
        .unwrap(&e, &w, AAD, &ui)
        .expect("unwrap after flush");
    assert_eq!(out.expose(), s.expose());
}

#[test]
fn tpm_signature_verifies_on_host_and_with_openssl() {
    let (_tpm, backend) = start();
    let ui = Ui::pin(PIN);
    let e = backend.enroll(&request(), &ui).expect("enroll");
    let msg = b"keyward: message signed inside the TPM";
    let sig = backend.sign(&e, msg, &ui).expect("sign");
    assert_eq!(sig.algorithm, SignAlgorithm::EcdsaP256Sha256);
    verify_on_host(&e, msg, &sig);
    let other = backend.sign(&e, msg, &ui).expect("sign again");
    assert_ne!(sig.bytes, other.bytes, "ECDSA nonces differ");

    let pem = Tpm::signing_public_key_pem(&e).expect("pem");
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    keyward_tests::assert_openssl_verifies(&pem, &sig.bytes, msg);

    // A wrong PIN does not sign.
    tpm_wrong_pin_sign(&backend, &e);
}

fn tpm_wrong_pin_sign(backend: &Tpm, e: &Enrollment) {
    let wrong = Ui::pin("864200");
    assert!(matches!(
        backend.sign(e, b"m", &wrong),
        Err(Error::WrongPin { .. })
    ));
}

fn verify_on_host(e: &Enrollment, msg: &[u8], sig: &Signature) {
    let pk = Tpm::signing_public_key(e).expect("public key");
    let sig = p256::ecdsa::Signature::from_der(&sig.bytes).expect("DER signature");
    p256::ecdsa::VerifyingKey::from(&pk)
        .verify(msg, &sig)
        .expect("TPM signature verifies with p256");
}

fn pcr16(tpm: &Swtpm) -> [u8; 32] {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pcr16");
    tpm.run_tool(
        "tpm2_pcrread",
        &[
            "sha256:16".to_owned(),
            "-o".to_owned(),
            file.display().to_string(),
        ],
    )
    .expect("pcrread");
    std::fs::read(&file)
        .expect("read")
        .try_into()
        .expect("32 bytes")
}

/// PolicyPCR(sha256:pcr = value) then PolicyAuthValue, computed
/// independently of the backend (TPM 2.0 Part 3, 23.7 and 23.18).
fn policy_hex(pin: bool, pcr: u8, value: &[u8; 32]) -> String {
    use sha2::{Digest as _, Sha256};
    let mut select = [0u8; 3];
    select[usize::from(pcr / 8)] |= 1 << (pcr % 8);
    let mut h = Sha256::new();
    h.update([0u8; 32]);
    h.update(0x0000_017fu32.to_be_bytes());
    h.update([0, 0, 0, 1, 0x00, 0x0b, 3]);
    h.update(select);
    h.update(Sha256::digest(value));
    let mut d: [u8; 32] = h.finalize().into();
    if pin {
        let mut h = Sha256::new();
        h.update(d);
        h.update(0x0000_016bu32.to_be_bytes());
        d = h.finalize().into();
    }
    hex::encode(d)
}

// ---- Service level ---------------------------------------------------------

/// A software stand-in for the recovery key: a fixed P-256 key, the same
/// ECIES wrap as the real protectors (which are written elsewhere).
#[derive(Debug)]
struct TestRecovery {
    key: p256::SecretKey,
}

impl TestRecovery {
    fn new() -> Self {
        let seed = Secret32::try_from_slice(&[0x5a; 32]).expect("32 bytes");
        Self {
            key: ecies::scalar_from_seed(&seed, b"test recovery"),
        }
    }
}

impl Backend for TestRecovery {
    fn kind(&self) -> BackendKind {
        BackendKind::Recovery
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            wrap_modes: vec![WrapMode::EciesP256],
            sign: vec![],
            pin: false,
            touch: false,
            pcr: false,
        }
    }
    fn devices(&self) -> Result<Vec<DeviceInfo>> {
        Ok(vec![])
    }
    fn enroll(&self, _req: &EnrollRequest, _ui: &dyn Callbacks) -> Result<Enrollment> {
        Ok(Enrollment {
            kind: BackendKind::Recovery,
            device_id: None,
            public_key: ecies::compress(&self.key.public_key()).to_vec(),
            params: serde_json::json!({}),
        })
    }
    fn wrap(&self, e: &Enrollment, secret: &Secret32, aad: &[u8]) -> Result<Wrapped> {
        ecies::seal(&e.public_key, secret, aad).map(Wrapped)
    }
    fn unwrap(
        &self,
        e: &Enrollment,
        w: &Wrapped,
        aad: &[u8],
        _ui: &dyn Callbacks,
    ) -> Result<Secret32> {
        ecies::open(&e.public_key, &w.0, aad, |epk| {
            Ok(ecies::ecdh(&self.key, epk))
        })
    }
    fn sign(&self, _e: &Enrollment, _msg: &[u8], _ui: &dyn Callbacks) -> Result<Signature> {
        Err(Error::NotSupported {
            kind: "recovery".into(),
            what: "signing",
        })
    }
    fn health(&self, _e: &Enrollment) -> Result<Health> {
        Ok(Health {
            present: true,
            matches: true,
            retries_left: None,
            lockout_seconds: None,
            detail: "software".into(),
        })
    }
}

fn backends(tpm: &Swtpm) -> Backends {
    let mut b = Backends::new();
    b.add(Arc::new(Tpm::with_tcti(tpm.tcti())));
    b.add(Arc::new(TestRecovery::new()));
    b
}

#[test]
fn service_init_enroll_rotate_lock_unlock_with_tpm() {
    let tpm = Swtpm::start().expect("swtpm");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let ui = Ui::pin(PIN);
    let (mut svc, first) = Service::init(&path, backends(&tpm), BackendKind::Tpm, &request(), &ui)
        .expect("init with the TPM as first protector");
    assert_eq!(first.kind, BackendKind::Tpm);
    let notes = KeyName::new("notes").expect("name");
    let spec = KeySpec {
        purpose: KeyPurpose::Encrypt,
        class: DataClass::Private,
        rotation_period: None,
        usage_limit: None,
    };
    svc.create_key(&notes, &spec).expect("create key");
    let second = svc
        .enroll(BackendKind::Recovery, &request(), &ui)
        .expect("second protector");
    assert_eq!(svc.rotate_master().expect("rotate"), 2);
    svc.lock();
    assert!(!svc.is_unlocked());
    drop(svc);

    let mut svc = Service::open(&path, backends(&tpm)).expect("open");
    let used = svc
        .unlock(UnlockWith::Kind(BackendKind::Tpm), &ui)
        .expect("unlock with the TPM");
    assert_eq!(used.id, first.id);
    assert_eq!(used.mk_epoch, 2);
    // The master key is the rotated one: the audit checkpoint MAC verifies
    // and every data key unwraps during a further rotation.
    assert!(svc.audit_verify().expect("audit").checkpoint.is_some());
    assert_eq!(svc.rotate_master().expect("rotate again"), 3);
    svc.lock();
    let used = svc
        .unlock(UnlockWith::Id(second.id), &ui)
        .expect("unlock with the other protector");
    assert_eq!(used.mk_epoch, 3);
    assert_eq!(svc.key(&notes).expect("key").name, notes);
}

#[test]
fn service_replace_tpm_protector_after_pcr_change() {
    // The `keyward enroll tpm --replace` flow, written with enroll +
    // remove_protector until Service::replace_protector exists.
    let tpm = Swtpm::start().expect("swtpm");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let ui = Ui::pin(PIN);
    let (mut svc, old_tpm) = Service::init(
        &path,
        backends(&tpm),
        BackendKind::Tpm,
        &tpm_request(true, "16"),
        &ui,
    )
    .expect("init");
    svc.enroll(BackendKind::Recovery, &request(), &ui)
        .expect("recovery protector");
    let notes = KeyName::new("notes").expect("name");
    svc.create_key(
        &notes,
        &KeySpec {
            purpose: KeyPurpose::Encrypt,
            class: DataClass::Sensitive,
            rotation_period: None,
            usage_limit: None,
        },
    )
    .expect("create key");
    let before = svc.key(&notes).expect("key");
    svc.lock();

    // A firmware update changes PCR 16.
    tpm.pcr_extend(16, &[0x99; 32]).expect("extend");
    let err = svc
        .unlock(UnlockWith::Kind(BackendKind::Tpm), &ui)
        .expect_err("PCR changed");
    assert!(err.to_string().contains("--replace"), "{err}");

    // Recovery, then a fresh TPM protector bound to the new values, then
    // the old one goes.
    svc.unlock(UnlockWith::Kind(BackendKind::Recovery), &ui)
        .expect("recovery unlock");
    let new_tpm = svc
        .enroll(BackendKind::Tpm, &tpm_request(true, "16"), &ui)
        .expect("re-enroll TPM");
    svc.remove_protector(old_tpm.id).expect("remove old TPM");
    let kinds: Vec<_> = svc
        .protectors()
        .expect("list")
        .iter()
        .map(|p| (p.id, p.kind))
        .collect();
    assert_eq!(
        kinds.iter().filter(|(_, k)| *k == BackendKind::Tpm).count(),
        1
    );
    svc.lock();

    let used = svc
        .unlock(UnlockWith::Kind(BackendKind::Tpm), &ui)
        .expect("TPM unlock after replace");
    assert_eq!(used.id, new_tpm.id);
    // No data loss: same key, and the master key is the same one (the audit
    // checkpoint verifies and a rotation unwraps every data key).
    assert_eq!(svc.key(&notes).expect("key"), before);
    assert!(svc.audit_verify().expect("audit").checkpoint.is_some());
    svc.rotate_master().expect("rotate after replace");
}

// ---- timings ---------------------------------------------------------------

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn timings_in_process() {
    const N: usize = 25;
    let (tpm, backend) = start();
    let ui = Ui::pin(PIN);
    let with_pin = backend.enroll(&request(), &ui).expect("enroll");
    let no_pin = backend
        .enroll(&tpm_request(false, ""), &ui)
        .expect("enroll");
    let s = secret();
    let mut report = Vec::new();
    for (name, e) in [("unwrap (PIN)", &with_pin), ("unwrap (no PIN)", &no_pin)] {
        let w = backend.wrap(e, &s, AAD).expect("wrap");
        let mut times = Vec::new();
        for _ in 0..N {
            let t = Instant::now();
            let out = backend.unwrap(e, &w, AAD, &ui).expect("unwrap");
            times.push(t.elapsed());
            assert_eq!(out.expose(), s.expose());
        }
        report.push((name, median(times)));
    }
    for (name, e) in [("sign (PIN)", &with_pin), ("sign (no PIN)", &no_pin)] {
        let mut times = Vec::new();
        for _ in 0..N {
            let t = Instant::now();
            backend.sign(e, b"timing", &ui).expect("sign");
            times.push(t.elapsed());
        }
        report.push((name, median(times)));
    }
    // Baseline: one `tpm2_unseal` process on a persistent sealed object on
    // the same swtpm (docs/HARDWARE.md measured 12.7 ms).
    let baseline = unseal_baseline(&tpm, 10);
    for (name, t) in &report {
        eprintln!("swtpm in-process {name}: median {t:?} over {N}");
    }
    if let Some(b) = baseline {
        eprintln!("tpm2_unseal one process: median {b:?}");
        eprintln!(
            "ratio tpm2_unseal / in-process unwrap (PIN): {:.1}",
            b.as_secs_f64() / report[0].1.as_secs_f64()
        );
    }
}

fn unseal_baseline(tpm: &Swtpm, n: usize) -> Option<Duration> {
    let dir = tempfile::tempdir().ok()?;
    let p = |f: &str| dir.path().join(f).display().to_string();
    std::fs::write(p("secret"), [7u8; 32]).ok()?;
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    // swtpm has no resource manager: flush what each tool leaves loaded.
    tpm.run_tool(
        "tpm2_createprimary",
        &s(&["-C", "o", "-G", "ecc", "-c", &p("prim.ctx")]),
    )
    .ok()?;
    tpm.run_tool("tpm2_flushcontext", &s(&["-t"])).ok()?;
    tpm.run_tool(
        "tpm2_create",
        &s(&[
            "-C",
            &p("prim.ctx"),
            "-i",
            &p("secret"),
            "-u",
            &p("k.pub"),
            "-r",
            &p("k.priv"),
        ]),
    )
    .ok()?;
    tpm.run_tool("tpm2_flushcontext", &s(&["-t"])).ok()?;
    tpm.run_tool(
        "tpm2_load",
        &s(&[
            "-C",
            &p("prim.ctx"),
            "-u",
            &p("k.pub"),
            "-r",
            &p("k.priv"),
            "-c",
            &p("k.ctx"),
        ]),
    )
    .ok()?;
    tpm.run_tool(
        "tpm2_evictcontrol",
        &s(&["-C", "o", "-c", &p("k.ctx"), "0x81000010"]),
    )
    .ok()?;
    tpm.run_tool("tpm2_flushcontext", &s(&["-t"])).ok()?;
    let mut times = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let out = tpm
            .run_tool("tpm2_unseal", &s(&["-c", "0x81000010"]))
            .ok()?;
        times.push(t.elapsed());
        assert_eq!(out, [7u8; 32]);
    }
    Some(median(times))
}
