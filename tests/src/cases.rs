//! Backend-level conformance cases: the [`Backend`] trait alone. Each
//! function is one test of [`crate::conformance_suite!`].
#![expect(
    clippy::missing_panics_doc,
    reason = "every case panics when the backend fails it: that is how a test fails"
)]

use std::sync::Arc;

use keyward_kms::crypto::ecies;
use keyward_kms::{
    Backend, BackendKind, Callbacks, Enrollment, Error, Secret32, SecretKind, WrapMode, Wrapped,
};

use crate::callbacks::Prompt;
use crate::{Fixture, MidOperationFault, WrongSecret};

const AAD: &[u8] = b"keyward conformance: store id, protector id, epoch";

/// An enrolled backend with a secret wrapped to it.
struct Enrolled {
    backend: Arc<dyn Backend>,
    enrollment: Enrollment,
    secret: Secret32,
    wrapped: Wrapped,
}

fn enroll(f: &dyn Fixture) -> Enrolled {
    let backend = f.backend();
    let enrollment = backend
        .enroll(&f.enroll_request(), &*f.callbacks())
        .expect("enrollment with the fixture's request succeeds");
    let secret = Secret32::random().expect("OS RNG");
    let wrapped = backend
        .wrap(&enrollment, &secret, AAD)
        .expect("wrap to a fresh enrollment succeeds");
    Enrolled {
        backend,
        enrollment,
        secret,
        wrapped,
    }
}

fn unwrap_with(
    e: &Enrolled,
    wrapped: &Wrapped,
    aad: &[u8],
    ui: &dyn Callbacks,
) -> keyward_kms::Result<Secret32> {
    e.backend.unwrap(&e.enrollment, wrapped, aad, ui)
}

fn skipped(case: &str, why: &str) {
    eprintln!("{case}: not applicable to this fixture ({why})");
}

/// A case that checks something else than its name says for this fixture,
/// or only part of it: says what and why.
pub(crate) fn instead(case: &str, what: &str) {
    eprintln!("{case}: {what}");
}

/// Whether the backend wraps on the device only (no public key to wrap
/// to): PKCS#11 in aes-gcm mode.
pub(crate) fn device_wrap_only(backend: &dyn Backend) -> bool {
    !backend
        .capabilities()
        .wrap_modes
        .contains(&WrapMode::EciesP256)
}

/// How many wrong PINs the retry case tries on a device that never locks.
const NEVER_LOCKS_ATTEMPTS: u32 = 12;

/// Errors a damaged blob may give; never a wrong-secret or device error.
fn is_tamper_error(err: &Error) -> bool {
    matches!(
        err,
        Error::UnwrapFailed
            | Error::Malformed { .. }
            | Error::UnsupportedFormat { .. }
            | Error::InvalidPublicKey { .. }
    )
}

/// The capabilities are stable and agree with what the backend does.
pub fn capabilities_are_consistent(f: &dyn Fixture) {
    let backend = f.backend();
    let caps = backend.capabilities();
    assert_eq!(caps, backend.capabilities(), "capabilities are stable");
    assert!(!caps.wrap_modes.is_empty(), "at least one wrap mode");
    // Every kind of WrongSecret is a secret the unwrap asks for.
    assert!(
        caps.pin,
        "unwrap asks for a secret, so capabilities.pin is true"
    );
    let devices = backend.devices().expect("devices() works");
    if f.has_device() {
        assert!(!devices.is_empty(), "a device fixture shows its device");
        for d in &devices {
            assert!(!d.id.is_empty(), "devices have an identity");
        }
    } else {
        assert!(devices.is_empty(), "software protectors have no devices");
    }
    let e = enroll(f);
    if caps.wrap_modes.contains(&WrapMode::EciesP256) {
        assert_eq!(e.enrollment.public_key.len(), ecies::POINT_LEN);
    }
    let ui = f.callbacks();
    let sig = e.backend.sign(&e.enrollment, b"message", &*ui);
    if caps.sign.is_empty() {
        assert!(
            matches!(sig, Err(Error::NotSupported { .. })),
            "sign without capability gives NotSupported: {sig:?}"
        );
    } else {
        let sig = sig.expect("sign works when capabilities.sign is non-empty");
        assert!(caps.sign.contains(&sig.algorithm));
        assert_eq!(
            sig.algorithm,
            f.signing_public_key(&e.enrollment).algorithm(),
            "the enrollment signs with the algorithm of its signing key"
        );
    }
    if !caps.touch {
        assert!(
            !ui.notices().iter().any(|n| n.contains("TouchRequired")),
            "no touch asked when capabilities.touch is false"
        );
    }
}

/// Enrollment returns a valid compressed P-256 public key (none for a
/// backend that only wraps on the device) and a descriptor of the
/// backend's kind.
pub fn enroll_returns_compressed_p256_key(f: &dyn Fixture) {
    let e = enroll(f);
    let pk = &e.enrollment.public_key;
    assert_eq!(e.enrollment.kind, e.backend.kind());
    assert_eq!(e.enrollment.device_id.is_some(), f.has_device());
    assert!(e.enrollment.params.is_object(), "params is a JSON object");
    // Every descriptor carries its format version under "v" (docs/FORMAT.md).
    assert_eq!(e.enrollment.params["v"], 1, "descriptor version 1");
    let other = e
        .backend
        .enroll(&f.enroll_request(), &*f.callbacks())
        .expect("second enrollment");
    if device_wrap_only(&*e.backend) {
        instead(
            "enroll_returns_compressed_p256_key",
            "the only wrap mode is DeviceAesGcm: the key is symmetric and stays on the \
             device, so checked that the enrollment carries no public key and that two \
             enrollments name different keys",
        );
        assert!(pk.is_empty(), "no public key to publish: {pk:02x?}");
        assert!(other.public_key.is_empty());
        // Two enrollments never share a key.
        assert_ne!(other.params, e.enrollment.params);
        return;
    }
    assert_eq!(pk.len(), 33, "SEC1 compressed");
    assert!(matches!(pk[0], 0x02 | 0x03), "compressed prefix");
    p256::PublicKey::from_sec1_bytes(pk).expect("a point on P-256");
    // Two enrollments never share a key.
    assert_ne!(other.public_key, e.enrollment.public_key);
}

/// The descriptor survives the JSON round trip the keystore puts it
/// through, and the decoded copy still unwraps.
pub fn enrollment_survives_json(f: &dyn Fixture) {
    let e = enroll(f);
    let json = serde_json::to_string(&e.enrollment).expect("serialize");
    let back: Enrollment = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, e.enrollment);
    let out = e
        .backend
        .unwrap(&back, &e.wrapped, AAD, &*f.callbacks())
        .expect("unwrap with the decoded descriptor");
    assert_eq!(out.expose(), e.secret.expose());
}

/// Wrap then unwrap gives the secret back.
pub fn wrap_unwrap_round_trip(f: &dyn Fixture) {
    let e = enroll(f);
    let out = unwrap_with(&e, &e.wrapped, AAD, &*f.callbacks()).expect("unwrap");
    assert_eq!(out.expose(), e.secret.expose());
    if e.backend.capabilities().wrap_modes == [WrapMode::EciesP256] {
        assert_eq!(e.wrapped.0.len(), ecies::BLOB_LEN);
    }
}

/// Two wraps of one secret differ and both unwrap.
pub fn wrap_is_randomised(f: &dyn Fixture) {
    let e = enroll(f);
    let again = e.backend.wrap(&e.enrollment, &e.secret, AAD).expect("wrap");
    assert_ne!(again.0, e.wrapped.0, "a fresh ephemeral key every wrap");
    let out = unwrap_with(&e, &again, AAD, &*f.callbacks()).expect("unwrap");
    assert_eq!(out.expose(), e.secret.expose());
}

/// Another AAD (another store, protector or epoch) is refused.
pub fn wrong_aad_rejected(f: &dyn Fixture) {
    let e = enroll(f);
    for aad in [
        &b""[..],
        b"keyward conformance: store id, protector id, epocH",
    ] {
        let err = unwrap_with(&e, &e.wrapped, aad, &*f.callbacks()).expect_err("wrong AAD");
        assert!(matches!(err, Error::UnwrapFailed), "{err:?}");
    }
}

/// Flipping any byte of the wrapped blob is detected, and never reported
/// as a wrong secret or a device problem.
pub fn every_byte_flip_rejected(f: &dyn Fixture) {
    let e = enroll(f);
    let ui = f.callbacks();
    for i in 0..e.wrapped.0.len() {
        let mut t = e.wrapped.clone();
        t.0[i] ^= 0x01;
        match unwrap_with(&e, &t, AAD, &*ui) {
            Ok(_) => panic!("byte {i} flipped and still unwrapped"),
            Err(err) => assert!(is_tamper_error(&err), "byte {i}: {err:?}"),
        }
    }
    // Still fine afterwards: no retry counter was spent on tampering.
    let out = unwrap_with(&e, &e.wrapped, AAD, &*ui).expect("unwrap");
    assert_eq!(out.expose(), e.secret.expose());
}

/// A blob cut short or with bytes appended is refused.
pub fn truncated_or_extended_blob_rejected(f: &dyn Fixture) {
    let e = enroll(f);
    let ui = f.callbacks();
    let n = e.wrapped.0.len();
    let mut variants = vec![
        Vec::new(),
        e.wrapped.0[..1].to_vec(),
        e.wrapped.0[..n / 2].to_vec(),
        e.wrapped.0[..n - 1].to_vec(),
    ];
    let mut longer = e.wrapped.0.clone();
    longer.push(0);
    variants.push(longer);
    let mut doubled = e.wrapped.0.clone();
    doubled.extend_from_slice(&e.wrapped.0);
    variants.push(doubled);
    for v in variants {
        let len = v.len();
        let err = unwrap_with(&e, &Wrapped(v), AAD, &*ui).expect_err("bad length");
        assert!(is_tamper_error(&err), "length {len}: {err:?}");
    }
}

/// A blob wrapped to one enrollment does not open with another.
pub fn blob_for_another_enrollment_rejected(f: &dyn Fixture) {
    let e = enroll(f);
    let other = e
        .backend
        .enroll(&f.enroll_request(), &*f.callbacks())
        .expect("second enrollment");
    let err = e
        .backend
        .unwrap(&other, &e.wrapped, AAD, &*f.callbacks())
        .expect_err("blob of another enrollment");
    // A device that re-keyed its slot for the second enrollment may report
    // the first as a wrong device; either way nothing opens.
    assert!(
        matches!(err, Error::UnwrapFailed | Error::WrongDevice { .. }),
        "{err:?}"
    );
}

/// A descriptor of another kind is refused before anything else happens.
pub fn enrollment_of_another_kind_refused(f: &dyn Fixture) {
    let e = enroll(f);
    let mut foreign = e.enrollment.clone();
    foreign.kind = if e.enrollment.kind == BackendKind::Recovery {
        BackendKind::Passphrase
    } else {
        BackendKind::Recovery
    };
    let ui = f.callbacks();
    let before = ui.prompt_count();
    assert!(e.backend.unwrap(&foreign, &e.wrapped, AAD, &*ui).is_err());
    assert!(e.backend.wrap(&foreign, &e.secret, AAD).is_err());
    assert_eq!(
        ui.prompt_count(),
        before,
        "no prompt for a foreign descriptor"
    );
}

/// A wrong secret gives the backend's typed error, reports tries left
/// where there is a counter, and the right secret still works afterwards.
pub fn wrong_secret_gives_typed_error(f: &dyn Fixture) {
    let e = enroll(f);
    f.end_session();
    let wrong = f.wrong_callbacks();
    let err = unwrap_with(&e, &e.wrapped, AAD, &*wrong).expect_err("wrong secret");
    match f.wrong_secret() {
        WrongSecret::Passphrase => {
            assert!(matches!(err, Error::WrongPassphrase), "{err:?}");
            assert_eq!(wrong.prompts()[0].kind, SecretKind::Passphrase);
        }
        WrongSecret::RecoveryKey => {
            assert!(matches!(err, Error::WrongRecoveryKey), "{err:?}");
            assert_eq!(wrong.prompts()[0].kind, SecretKind::RecoveryKey);
        }
        WrongSecret::Pin { retries }
        | WrongSecret::TpmPin {
            max_tries: retries, ..
        } => {
            assert!(retries >= 2, "the suite needs at least 2 tries");
            assert!(
                matches!(err, Error::WrongPin { retries_left: Some(n) } if n == retries - 1),
                "{err:?}"
            );
            let err = unwrap_with(&e, &e.wrapped, AAD, &*wrong).expect_err("wrong again");
            assert!(
                matches!(err, Error::WrongPin { retries_left: Some(n) } if n == retries - 2),
                "{err:?}"
            );
            // The prompt told the user how many tries were left.
            assert_eq!(
                wrong.prompts(),
                [
                    Prompt {
                        kind: SecretKind::Pin,
                        retries_left: Some(retries)
                    },
                    Prompt {
                        kind: SecretKind::Pin,
                        retries_left: Some(retries - 1)
                    },
                ]
            );
        }
        WrongSecret::PinNeverLocks => {
            // No counter to report, before or after.
            assert!(
                matches!(err, Error::WrongPin { retries_left: None }),
                "{err:?}"
            );
            let err = unwrap_with(&e, &e.wrapped, AAD, &*wrong).expect_err("wrong again");
            assert!(
                matches!(err, Error::WrongPin { retries_left: None }),
                "{err:?}"
            );
            let asked = Prompt {
                kind: SecretKind::Pin,
                retries_left: None,
            };
            assert_eq!(wrong.prompts(), [asked.clone(), asked]);
        }
    }
    let out = unwrap_with(&e, &e.wrapped, AAD, &*f.callbacks()).expect("right secret");
    assert_eq!(out.expose(), e.secret.expose());
}

/// What wrong secrets add up to: PIV-style PINs block for good after their
/// retries; a TPM locks out for a while (no prompt, no PIN sent, and never
/// "blocked"); devices that never lock and software protectors still take
/// the right secret after many wrong ones.
pub fn retry_limit(f: &dyn Fixture) {
    let e = enroll(f);
    f.end_session();
    let wrong = f.wrong_callbacks();
    let right = f.callbacks();
    match f.wrong_secret() {
        WrongSecret::Pin { retries } => {
            for attempt in 1..=retries {
                let err = unwrap_with(&e, &e.wrapped, AAD, &*wrong).expect_err("wrong PIN");
                if attempt < retries {
                    assert!(matches!(err, Error::WrongPin { .. }), "{err:?}");
                } else {
                    assert!(matches!(err, Error::PinBlocked), "last try: {err:?}");
                }
            }
            let sent = f.pin_requests();
            let prompts = right.prompt_count();
            for _ in 0..3 {
                let err = unwrap_with(&e, &e.wrapped, AAD, &*right).expect_err("blocked");
                assert!(matches!(err, Error::PinBlocked), "{err:?}");
            }
            assert_eq!(right.prompt_count(), prompts, "no prompt when blocked");
            assert_eq!(f.pin_requests(), sent, "no PIN sent when blocked");
        }
        WrongSecret::TpmPin {
            max_tries,
            recovery_seconds,
        } => {
            // Every wrong PIN counts, down to zero tries left; the attempt
            // that exhausts the counter is still reported as a wrong PIN.
            for attempt in 1..=max_tries {
                let err = unwrap_with(&e, &e.wrapped, AAD, &*wrong).expect_err("wrong PIN");
                assert!(
                    matches!(err, Error::WrongPin { retries_left: Some(n) } if n == max_tries - attempt),
                    "attempt {attempt}: {err:?}"
                );
            }
            let sent = f.pin_requests();
            let prompts = right.prompt_count() + wrong.prompt_count();
            // Then lockout, with its duration, before any prompt: even the
            // right PIN is not asked for, and signing is refused too.
            let lockout = |err: &Error| matches!(err, Error::Lockout { seconds: Some(s) } if *s == recovery_seconds);
            for ui in [&right, &wrong, &right] {
                let err = unwrap_with(&e, &e.wrapped, AAD, &**ui).expect_err("locked out");
                assert!(lockout(&err), "{err:?}");
            }
            let err = e
                .backend
                .sign(&e.enrollment, b"m", &*right)
                .expect_err("locked out");
            assert!(lockout(&err), "{err:?}");
            assert_eq!(
                right.prompt_count() + wrong.prompt_count(),
                prompts,
                "no prompt during lockout"
            );
            assert_eq!(f.pin_requests(), sent, "no PIN sent during lockout");
            let health = e.backend.health(&e.enrollment).expect("health");
            assert!(health.present && health.matches, "{health:?}");
            assert_eq!(health.retries_left, Some(0), "{health:?}");
            assert_eq!(health.lockout_seconds, Some(recovery_seconds), "{health:?}");
        }
        WrongSecret::PinNeverLocks => {
            instead(
                "retry_limit",
                &format!(
                    "this device never locks its PIN (SoftHSM2, docs/HARDWARE.md), so there is no \
                     limit to reach: checked that {NEVER_LOCKS_ATTEMPTS} wrong PINs are each \
                     refused without a counter and leave the right PIN working"
                ),
            );
            for attempt in 1..=NEVER_LOCKS_ATTEMPTS {
                let err = unwrap_with(&e, &e.wrapped, AAD, &*wrong).expect_err("wrong PIN");
                assert!(
                    matches!(err, Error::WrongPin { retries_left: None }),
                    "attempt {attempt}: {err:?}"
                );
            }
            assert_eq!(wrong.prompt_count(), NEVER_LOCKS_ATTEMPTS as usize);
            let health = e.backend.health(&e.enrollment).expect("health");
            assert!(health.present && health.matches, "{health:?}");
            assert_eq!(health.retries_left, None, "{health:?}");
            assert_eq!(health.lockout_seconds, None, "{health:?}");
            let out = unwrap_with(&e, &e.wrapped, AAD, &*right).expect("never locked");
            assert_eq!(out.expose(), e.secret.expose());
        }
        WrongSecret::Passphrase | WrongSecret::RecoveryKey => {
            for _ in 0..5 {
                assert!(unwrap_with(&e, &e.wrapped, AAD, &*wrong).is_err());
            }
            let out = unwrap_with(&e, &e.wrapped, AAD, &*right).expect("no lockout");
            assert_eq!(out.expose(), e.secret.expose());
        }
    }
}

/// Another device in place of the enrolled one is reported as
/// `WrongDevice` before any PIN is asked for or sent.
pub fn wrong_device_detected_before_pin(f: &dyn Fixture) {
    let e = enroll(f);
    f.end_session();
    if !f.swap_device() {
        skipped("wrong_device_detected_before_pin", "cannot swap devices");
        return;
    }
    let ui = f.callbacks();
    let prompts = ui.prompt_count();
    let sent = f.pin_requests();
    let err = unwrap_with(&e, &e.wrapped, AAD, &*ui).expect_err("wrong device");
    assert!(matches!(err, Error::WrongDevice { .. }), "{err:?}");
    let err = e
        .backend
        .sign(&e.enrollment, b"m", &*ui)
        .expect_err("wrong device");
    assert!(matches!(err, Error::WrongDevice { .. }), "{err:?}");
    assert_eq!(ui.prompt_count(), prompts, "no prompt for a wrong device");
    assert_eq!(f.pin_requests(), sent, "no PIN sent to a wrong device");
    let health = e.backend.health(&e.enrollment).expect("health");
    assert!(!health.matches, "{health:?}");
    if !f.can_replug() {
        instead(
            "wrong_device_detected_before_pin",
            "not checked that the enrolled device works again once back: the fixture \
             cannot bring it back",
        );
        return;
    }
    assert!(f.replug(), "fixture can put the enrolled device back");
    let out = unwrap_with(&e, &e.wrapped, AAD, &*ui).expect("right device again");
    assert_eq!(out.expose(), e.secret.expose());
}

/// An absent device gives `DeviceNotFound`, no prompt, and the device
/// works again once plugged back in. Wrapping needs no device, except for
/// a backend that wraps on the device.
pub fn absent_device_is_device_not_found(f: &dyn Fixture) {
    let e = enroll(f);
    f.end_session();
    if !f.unplug() {
        skipped("absent_device_is_device_not_found", "nothing to unplug");
        return;
    }
    let ui = f.callbacks();
    let prompts = ui.prompt_count();
    let err = unwrap_with(&e, &e.wrapped, AAD, &*ui).expect_err("absent");
    assert!(matches!(err, Error::DeviceNotFound { .. }), "{err:?}");
    if !e.backend.capabilities().sign.is_empty() {
        let err = e
            .backend
            .sign(&e.enrollment, b"m", &*ui)
            .expect_err("absent");
        assert!(matches!(err, Error::DeviceNotFound { .. }), "{err:?}");
    }
    assert_eq!(ui.prompt_count(), prompts, "no prompt for an absent device");
    let health = e
        .backend
        .health(&e.enrollment)
        .expect("health of an absent device is Ok");
    assert!(!health.present, "{health:?}");
    let wrapped = if device_wrap_only(&*e.backend) {
        // The device holds the wrapping key: no device, no wrap.
        let err = e
            .backend
            .wrap(&e.enrollment, &e.secret, AAD)
            .expect_err("a device-bound wrap without the device");
        assert!(matches!(err, Error::DeviceNotFound { .. }), "{err:?}");
        e.wrapped.clone()
    } else {
        // Wrapping needs no device.
        e.backend.wrap(&e.enrollment, &e.secret, AAD).expect("wrap")
    };
    if !f.can_replug() {
        instead(
            "absent_device_is_device_not_found",
            "not checked that the device works again once plugged back in: the fixture \
             cannot bring it back",
        );
        return;
    }
    assert!(f.replug());
    let out = unwrap_with(&e, &wrapped, AAD, &*ui).expect("plugged back in");
    assert_eq!(out.expose(), e.secret.expose());
}

/// A device failing after the PIN prompt gives a device error (never a
/// wrong PIN); the device works again afterwards: at once after a one-shot
/// fault, after being plugged back in when it went away.
pub fn failure_mid_operation_then_recovers(f: &dyn Fixture) {
    let e = enroll(f);
    f.end_session();
    let Some(fault) = f.fail_next_after_pin() else {
        skipped("failure_mid_operation_then_recovers", "no fault injection");
        return;
    };
    let ui = f.callbacks();
    let prompts = ui.prompt_count();
    let err = unwrap_with(&e, &e.wrapped, AAD, &*ui).expect_err("fault");
    match fault {
        MidOperationFault::Transient => {
            assert!(matches!(err, Error::DeviceRemoved), "{err:?}");
        }
        MidOperationFault::VanishesAsNotFound | MidOperationFault::VanishesAsDeviceError => {
            if fault == MidOperationFault::VanishesAsNotFound {
                assert!(matches!(err, Error::DeviceNotFound { .. }), "{err:?}");
            } else {
                assert!(matches!(err, Error::Device { .. }), "{err:?}");
            }
            assert_eq!(
                ui.prompt_count(),
                prompts + 1,
                "the device went away while its PIN prompt was open, and nothing asked again"
            );
            let health = e.backend.health(&e.enrollment).expect("health");
            assert!(!health.present, "{health:?}");
            // The backend dropped whatever it held of the device: the next
            // operation looks again, finds nothing, and asks for nothing.
            let err = unwrap_with(&e, &e.wrapped, AAD, &*ui).expect_err("still gone");
            assert!(matches!(err, Error::DeviceNotFound { .. }), "{err:?}");
            assert_eq!(ui.prompt_count(), prompts + 1, "no prompt while gone");
            if !f.can_replug() {
                instead(
                    "failure_mid_operation_then_recovers",
                    "the device went away during the PIN prompt and was reported as absent; \
                     recovery not checked: the fixture cannot bring it back",
                );
                return;
            }
            assert!(f.replug(), "fixture can put the device back");
        }
    }
    let out = unwrap_with(&e, &e.wrapped, AAD, &*f.callbacks()).expect("recovers");
    assert_eq!(out.expose(), e.secret.expose());
}

/// Signatures verify on the host (p256, ed25519-dalek) under the
/// enrollment's signing public key, and not for another message; a wrong
/// secret cannot sign.
pub fn sign_verifies_with_enrolled_public_key(f: &dyn Fixture) {
    let e = enroll(f);
    let caps = e.backend.capabilities();
    let msg = b"keyward conformance: a message to sign";
    let result = e.backend.sign(&e.enrollment, msg, &*f.callbacks());
    if caps.sign.is_empty() {
        assert!(
            matches!(result, Err(Error::NotSupported { .. })),
            "{result:?}"
        );
        return;
    }
    let sig = result.expect("sign");
    let key = f.signing_public_key(&e.enrollment);
    assert_eq!(sig.algorithm, key.algorithm());
    assert!(caps.sign.contains(&sig.algorithm));
    assert!(
        key.verifies(msg, &sig),
        "verifies with the enrollment's key"
    );
    assert!(!key.verifies(b"another message", &sig));
    f.end_session();
    let err = e
        .backend
        .sign(&e.enrollment, msg, &*f.wrong_callbacks())
        .expect_err("wrong secret cannot sign");
    let ws = f.wrong_secret();
    assert!(
        match ws {
            WrongSecret::Passphrase => matches!(err, Error::WrongPassphrase),
            WrongSecret::RecoveryKey => matches!(err, Error::WrongRecoveryKey),
            WrongSecret::PinNeverLocks => matches!(err, Error::WrongPin { retries_left: None }),
            WrongSecret::Pin { .. } | WrongSecret::TpmPin { .. } => {
                matches!(
                    err,
                    Error::WrongPin {
                        retries_left: Some(_)
                    }
                )
            }
        },
        "{ws:?}: {err:?}"
    );
}

/// A wrap made with only the enrolled public key (no backend, no device,
/// no secret) unwraps: what master-key rotation relies on. A backend that
/// wraps on the device has no such key; for it this checks what rotation
/// relies on instead: wrapping needs the device's session and no prompt.
pub fn public_key_only_wrap_unwraps(f: &dyn Fixture) {
    let e = enroll(f);
    if device_wrap_only(&*e.backend) {
        instead(
            "public_key_only_wrap_unwraps",
            "the only wrap mode is DeviceAesGcm: no public key to wrap to. Checked instead \
             that the enrollment has none, that a wrap fails once the device's session is \
             ended (wrap has no callbacks to ask for a PIN), and that it works again, without \
             a prompt of its own, after an unwrap opened a session",
        );
        assert!(e.enrollment.public_key.is_empty());
        f.end_session();
        let err = e
            .backend
            .wrap(&e.enrollment, &e.secret, b"epoch 2")
            .expect_err("a device-bound wrap without a session");
        assert!(matches!(err, Error::Device { .. }), "{err:?}");
        let ui = f.callbacks();
        let out = unwrap_with(&e, &e.wrapped, AAD, &*ui).expect("unwrap opens a session");
        assert_eq!(out.expose(), e.secret.expose());
        let prompts = ui.prompt_count();
        let new_master = Secret32::random().expect("OS RNG");
        let blob = e
            .backend
            .wrap(&e.enrollment, &new_master, b"epoch 2")
            .expect("wrap within the session");
        let out = unwrap_with(&e, &blob, b"epoch 2", &*ui).expect("unwrap");
        assert_eq!(out.expose(), new_master.expose());
        assert_eq!(ui.prompt_count(), prompts, "the session serves both");
        return;
    }
    let new_master = Secret32::random().expect("OS RNG");
    let blob = ecies::seal(&e.enrollment.public_key, &new_master, b"epoch 2")
        .expect("seal to the enrolled key");
    let out = unwrap_with(&e, &Wrapped(blob), b"epoch 2", &*f.callbacks()).expect("unwrap");
    assert_eq!(out.expose(), new_master.expose());
}

/// Health of a fresh enrollment: present and matching, with the full
/// count of tries where the device counts them, and no lockout.
pub fn health_reports_enrolled_device(f: &dyn Fixture) {
    let e = enroll(f);
    let health = e.backend.health(&e.enrollment).expect("health");
    assert!(health.present && health.matches, "{health:?}");
    assert!(!health.detail.is_empty());
    let ws = f.wrong_secret();
    if ws.is_pin() {
        assert_eq!(health.retries_left, ws.counted_tries(), "{health:?}");
        assert_eq!(health.lockout_seconds, None, "{health:?}");
    }
}
