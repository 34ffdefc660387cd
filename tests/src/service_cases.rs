//! Service-level conformance cases: the backend as the protector of a
//! real keystore, through [`Service`]. Each function is one test of
//! [`crate::conformance_suite!`].
#![expect(
    clippy::missing_panics_doc,
    reason = "every case panics when the backend fails it: that is how a test fails"
)]

use std::path::PathBuf;
use std::sync::Arc;

use keyward_kms::service::{Backends, KeySpec, UnlockWith};
use keyward_kms::{Backend, DataClass, Error, KeyName, KeyPurpose, Service};
use tempfile::TempDir;

use crate::cases::{device_wrap_only, instead};
use crate::{Fixture, TestCallbacks, WrongSecret};

/// A temporary directory with a keystore path inside, and the registry
/// holding the fixture's backend next to the software protectors.
struct Setup {
    _dir: TempDir,
    path: PathBuf,
    backend: Arc<dyn Backend>,
    backends: Backends,
}

fn setup(f: &dyn Fixture) -> Setup {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("keystore.db");
    let backend = f.backend();
    let mut backends = Backends::software();
    backends.add(backend.clone());
    Setup {
        _dir: dir,
        path,
        backend,
        backends,
    }
}

fn init(f: &dyn Fixture, s: &Setup) -> Service {
    let (service, info) = Service::init(
        &s.path,
        s.backends.clone(),
        s.backend.kind(),
        &f.enroll_request(),
        &*f.callbacks(),
    )
    .expect("init with the fixture's backend as first protector");
    assert_eq!(info.kind, s.backend.kind());
    assert_eq!(info.mk_epoch, 1);
    assert_eq!(info.device_id.is_some(), f.has_device());
    assert!(service.is_unlocked(), "a new keystore starts unlocked");
    service
}

fn key_name() -> KeyName {
    KeyName::new("assistant-store").expect("valid key name")
}

fn encrypt_spec() -> KeySpec {
    KeySpec {
        purpose: KeyPurpose::Encrypt,
        class: DataClass::Private,
        rotation_period: None,
        usage_limit: None,
    }
}

const CONTEXT: &[u8] = b"conformance/records";

fn assert_decrypts(service: &mut Service, ciphertext: &[u8], plaintext: &[u8], version: u32) {
    let out = service
        .decrypt(CONTEXT, ciphertext)
        .expect("old data decrypts");
    assert_eq!(out.plaintext.expose(), plaintext);
    assert_eq!(out.version, version);
    assert_eq!(out.key, key_name());
}

/// Init, create a key, encrypt, rotate the key, rotate the master key,
/// lock, unlock, reopen, and decrypt everything written on the way.
pub fn lifecycle(f: &dyn Fixture) {
    let s = setup(f);
    let ui = f.callbacks();
    let mut service = init(f, &s);
    let name = key_name();

    let info = service
        .create_key(&name, &encrypt_spec())
        .expect("create key");
    assert_eq!(info.primary_version, 1);
    let v1 = service
        .encrypt(&name, CONTEXT, b"written under version 1")
        .expect("encrypt");

    let info = service.rotate_key(&name).expect("rotate key");
    assert_eq!(info.primary_version, 2);
    let v2 = service
        .encrypt(&name, CONTEXT, b"written under version 2")
        .expect("encrypt");
    assert_decrypts(&mut service, &v1, b"written under version 1", 1);
    assert_decrypts(&mut service, &v2, b"written under version 2", 2);

    let epoch = service.rotate_master().expect("rotate master key");
    assert_eq!(epoch, 2);
    assert_decrypts(&mut service, &v1, b"written under version 1", 1);

    service.lock();
    f.end_session();
    assert!(!service.is_unlocked());
    assert!(matches!(service.decrypt(CONTEXT, &v1), Err(Error::Locked)));
    let unlocked = service
        .unlock(UnlockWith::Kind(s.backend.kind()), &*ui)
        .expect("unlock after master rotation");
    assert_eq!(
        unlocked.mk_epoch, 2,
        "protector re-wrapped for the new epoch"
    );
    assert_decrypts(&mut service, &v1, b"written under version 1", 1);
    assert_decrypts(&mut service, &v2, b"written under version 2", 2);
    assert!(matches!(
        service.decrypt(b"another context", &v1),
        Err(Error::DecryptionFailed)
    ));

    drop(service);
    f.end_session();
    let mut service = Service::open(&s.path, s.backends.clone()).expect("reopen");
    assert!(!service.is_unlocked(), "a reopened keystore is locked");
    service
        .unlock(UnlockWith::Any, &*ui)
        .expect("unlock after reopen");
    assert_eq!(service.status().expect("status").mk_epoch, 2);
    assert_decrypts(&mut service, &v1, b"written under version 1", 1);
    assert_decrypts(&mut service, &v2, b"written under version 2", 2);
}

/// A wrong secret leaves the keystore locked with the backend's typed
/// error; the right one unlocks afterwards.
pub fn wrong_secret_keeps_store_locked(f: &dyn Fixture) {
    let s = setup(f);
    let mut service = init(f, &s);
    service.lock();
    f.end_session();
    let err = service
        .unlock(UnlockWith::Kind(s.backend.kind()), &*f.wrong_callbacks())
        .expect_err("wrong secret");
    match f.wrong_secret() {
        WrongSecret::Passphrase => assert!(matches!(err, Error::WrongPassphrase), "{err:?}"),
        WrongSecret::RecoveryKey => assert!(matches!(err, Error::WrongRecoveryKey), "{err:?}"),
        WrongSecret::Pin { retries: n } | WrongSecret::TpmPin { max_tries: n, .. } => assert!(
            matches!(err, Error::WrongPin { retries_left: Some(left) } if left == n - 1),
            "{err:?}"
        ),
        WrongSecret::PinNeverLocks => assert!(
            matches!(err, Error::WrongPin { retries_left: None }),
            "{err:?}"
        ),
    }
    assert!(!service.is_unlocked());
    service
        .unlock(UnlockWith::Kind(s.backend.kind()), &*f.callbacks())
        .expect("right secret unlocks");
    assert!(service.is_unlocked());
}

/// Master-key rotation re-wraps to the protector from its public key
/// alone: no prompt, and a device may be absent meanwhile. A backend that
/// wraps on the device cannot do that; for it this checks that rotation
/// needs the device's session but no prompt, and that a rotation that
/// cannot wrap changes nothing.
pub fn master_rotation_needs_no_secret(f: &dyn Fixture) {
    let s = setup(f);
    let mut service = init(f, &s);
    let name = key_name();
    service
        .create_key(&name, &encrypt_spec())
        .expect("create key");
    let before = service
        .encrypt(&name, CONTEXT, b"before rotation")
        .expect("encrypt");
    if device_wrap_only(&*s.backend) {
        rotation_on_the_device(f, &s, &mut service, &before);
    } else {
        rotation_from_the_public_key(f, &s, &mut service, &before);
    }
}

/// After a master-key rotation to `epoch`: a new session unlocks with the
/// re-wrapped master key, and `before` (written at epoch 1) still decrypts.
fn assert_unlocks_at(
    f: &dyn Fixture,
    s: &Setup,
    service: &mut Service,
    ui: &TestCallbacks,
    epoch: u32,
    before: &[u8],
) {
    service.lock();
    f.end_session();
    let unlocked = service
        .unlock(UnlockWith::Kind(s.backend.kind()), ui)
        .expect("unlock with the re-wrapped master key");
    assert_eq!(unlocked.mk_epoch, epoch);
    assert_decrypts(service, before, b"before rotation", 1);
}

fn rotation_from_the_public_key(f: &dyn Fixture, s: &Setup, service: &mut Service, before: &[u8]) {
    let ui = f.callbacks();
    // No session for the rotation to lean on.
    f.end_session();
    let prompts = ui.prompt_count();
    let unplugged = f.can_replug() && f.unplug();
    let epoch = service
        .rotate_master()
        .expect("rotation needs no device and no secret");
    assert_eq!(epoch, 2);
    assert_eq!(ui.prompt_count(), prompts, "rotation prompts for nothing");
    if unplugged {
        assert!(f.replug());
    }

    assert_unlocks_at(f, s, service, &ui, 2, before);

    if !unplugged && f.has_device() {
        // The fixture cannot bring a device back: rotate once more with the
        // device gone, last, without an unlock after it.
        if f.unplug() {
            let prompts = ui.prompt_count();
            let epoch = service
                .rotate_master()
                .expect("rotation with the device absent");
            assert_eq!(epoch, 3);
            assert_eq!(ui.prompt_count(), prompts, "rotation prompts for nothing");
            assert_decrypts(service, before, b"before rotation", 1);
            instead(
                "master_rotation_needs_no_secret",
                "the fixture cannot plug a device back in: checked an unlock after a \
                 rotation with the device present but no session, then a rotation with the \
                 device absent (no unlock after that one)",
            );
        }
    }
}

fn rotation_on_the_device(f: &dyn Fixture, s: &Setup, service: &mut Service, before: &[u8]) {
    instead(
        "master_rotation_needs_no_secret",
        "the only wrap mode is DeviceAesGcm: rotation wraps on the device, so it cannot work \
         from a public key with the device absent. Checked instead: rotation within the \
         device session opened by init or unlock asks for nothing; with the session ended \
         or the device absent it fails and leaves the store unlocked at its epoch",
    );
    let ui = f.callbacks();
    let unchanged = |service: &mut Service, epoch: u32, ui: &TestCallbacks, prompts: usize| {
        assert_eq!(
            ui.prompt_count(),
            prompts,
            "a failed rotation prompts for nothing"
        );
        assert!(service.is_unlocked());
        assert_eq!(service.status().expect("status").mk_epoch, epoch);
        assert_decrypts(service, before, b"before rotation", 1);
    };

    // Init logged in: rotation uses that session.
    let prompts = ui.prompt_count();
    assert_eq!(service.rotate_master().expect("rotate in session"), 2);
    assert_eq!(ui.prompt_count(), prompts, "rotation prompts for nothing");

    // Session ended (as locking does): no wrap, and nothing changed.
    f.end_session();
    let err = service
        .rotate_master()
        .expect_err("no device session, no device-bound wrap");
    assert!(matches!(err, Error::Device { .. }), "{err:?}");
    unchanged(service, 2, &ui, prompts);

    // Unlocking opens a session (one prompt); rotation then asks nothing.
    service.lock();
    let unlocked = service
        .unlock(UnlockWith::Kind(s.backend.kind()), &*ui)
        .expect("unlock at epoch 2");
    assert_eq!(unlocked.mk_epoch, 2);
    assert_eq!(ui.prompt_count(), prompts + 1, "unlock asked for the PIN");
    assert_eq!(service.rotate_master().expect("rotate in session"), 3);
    assert_eq!(
        ui.prompt_count(),
        prompts + 1,
        "rotation prompts for nothing"
    );
    assert_unlocks_at(f, s, service, &ui, 3, before);

    // Device absent: no wrap, and nothing changed.
    if f.unplug() {
        let prompts = ui.prompt_count();
        let err = service
            .rotate_master()
            .expect_err("no device, no device-bound wrap");
        assert!(matches!(err, Error::DeviceNotFound { .. }), "{err:?}");
        unchanged(service, 3, &ui, prompts);
        if f.can_replug() {
            assert!(f.replug());
        }
    }
}
