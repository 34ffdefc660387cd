//! What the tests of every part of the service share: a software ECIES
//! backend, a fixture, and small helpers.

use std::sync::Mutex;

use p256::SecretKey;

use crate::backend::{
    Capabilities, DeviceInfo, Health, Notice, SecretRequest, Signature, WrapMode,
};
use crate::crypto::ecies;

pub(super) use std::path::PathBuf;
pub(super) use std::sync::Arc;

pub(super) use rusqlite::Connection;

pub(super) use super::{Backends, KeySpec, Options, Service, UnlockWith};
pub(super) use crate::backend::{
    Backend, BackendKind, Callbacks, EnrollRequest, Enrollment, Wrapped,
};
pub(super) use crate::keys::{DataClass, KeyName, KeyPurpose};
pub(super) use crate::secret::{ExposeSecret, Secret32, SecretString};
pub(super) use crate::{Error, Result};

/// A software ECIES protector whose private key sits in the struct.
#[derive(Debug)]
pub(super) struct TestBackend {
    key: Mutex<Option<SecretKey>>,
    pub(super) sessions_ended: std::sync::atomic::AtomicUsize,
}

impl TestBackend {
    pub(super) fn new() -> Self {
        Self {
            key: Mutex::new(None),
            sessions_ended: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

impl Backend for TestBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Mock
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
    fn enroll(&self, _: &EnrollRequest, _: &dyn Callbacks) -> Result<Enrollment> {
        let sk = ecies::random_scalar()?;
        let pk = ecies::compress(&sk.public_key()).to_vec();
        *self.key.lock().expect("lock") = Some(sk);
        Ok(Enrollment {
            kind: BackendKind::Mock,
            device_id: Some("test".into()),
            public_key: pk,
            params: serde_json::json!({}),
        })
    }
    fn wrap(&self, e: &Enrollment, secret: &Secret32, aad: &[u8]) -> Result<Wrapped> {
        Ok(Wrapped(ecies::seal(&e.public_key, secret, aad)?))
    }
    fn unwrap(
        &self,
        e: &Enrollment,
        w: &Wrapped,
        aad: &[u8],
        _: &dyn Callbacks,
    ) -> Result<Secret32> {
        let guard = self.key.lock().expect("lock");
        let sk = guard.as_ref().ok_or(Error::DeviceNotFound {
            kind: "mock".into(),
            hint: None,
        })?;
        ecies::open(&e.public_key, &w.0, aad, |epk| Ok(ecies::ecdh(sk, epk)))
    }
    fn sign(&self, _: &Enrollment, _: &[u8], _: &dyn Callbacks) -> Result<Signature> {
        Err(Error::NotSupported {
            kind: "mock".into(),
            what: "signing",
        })
    }
    fn end_session(&self) {
        self.sessions_ended
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn health(&self, _: &Enrollment) -> Result<Health> {
        Ok(Health {
            present: true,
            matches: true,
            retries_left: None,
            lockout_seconds: None,
            detail: String::new(),
        })
    }
}

pub(super) struct NoUi;
impl Callbacks for NoUi {
    fn request_secret(&self, _: &SecretRequest<'_>) -> Result<SecretString> {
        Err(Error::Cancelled)
    }
    fn notify(&self, _: &Notice<'_>) {}
    fn show_secret(&self, _: &str, _: &SecretString) -> Result<()> {
        Ok(())
    }
}

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) path: PathBuf,
    pub(super) backends: Backends,
}

pub(super) fn fixture() -> (Fixture, Service) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub/keystore.db");
    let mut backends = Backends::new();
    backends.add(Arc::new(TestBackend::new()));
    let (svc, info) = Service::init(
        &path,
        backends.clone(),
        BackendKind::Mock,
        &req("first"),
        &NoUi,
    )
    .expect("init");
    assert_eq!(info.id, 1);
    assert_eq!(info.mk_epoch, 1);
    (
        Fixture {
            _dir: dir,
            path,
            backends,
        },
        svc,
    )
}

/// [`fixture`] working as the daemon does ([`Options::daemon`]), unlocked.
pub(super) fn daemon_fixture() -> (Fixture, Service) {
    let (fx, svc) = fixture();
    drop(svc);
    let mut svc =
        Service::open_with(&fx.path, fx.backends.clone(), Options::daemon()).expect("open");
    svc.unlock(UnlockWith::Any, &NoUi).expect("unlock");
    (fx, svc)
}

pub(super) fn req(label: &str) -> EnrollRequest {
    EnrollRequest {
        label: label.into(),
        ..EnrollRequest::default()
    }
}

pub(super) fn name(s: &str) -> KeyName {
    KeyName::new(s).expect("valid name")
}

pub(super) fn spec(purpose: KeyPurpose) -> KeySpec {
    KeySpec {
        purpose,
        class: DataClass::Private,
        rotation_period: None,
        usage_limit: None,
    }
}

/// Creates a key named `key` as `spec` says.
pub(super) fn new_key(svc: &mut Service, key: &str, spec: &KeySpec) -> KeyName {
    let k = name(key);
    svc.create_key(&k, spec).expect("create");
    k
}

/// Creates an encryption key named `key`.
pub(super) fn encryption_key(svc: &mut Service, key: &str) -> KeyName {
    new_key(svc, key, &spec(KeyPurpose::Encrypt))
}

/// [`fixture`] with an encryption key named `key`.
pub(super) fn fixture_with_key(key: &str) -> (Fixture, Service, KeyName) {
    let (fx, mut svc) = fixture();
    let k = encryption_key(&mut svc, key);
    (fx, svc, k)
}

/// Creates an encryption key named `key` that rotates after `limit`
/// encryptions by one version.
pub(super) fn limited_key(svc: &mut Service, key: &str, limit: u64) -> KeyName {
    let s = KeySpec {
        usage_limit: Some(limit),
        ..spec(KeyPurpose::Encrypt)
    };
    new_key(svc, key, &s)
}

/// The unwrapped data key of a version, for comparing across rotations.
pub(super) fn dek(svc: &Service, key: &str, version: u32) -> [u8; 32] {
    let (k, v) = svc.key_version(&name(key), Some(version)).expect("version");
    *super::keys::unwrap_version(
        svc.master.as_ref().expect("unlocked"),
        svc.store.store_id(),
        &k,
        &v,
    )
    .expect("unwrap")
    .expose()
}

pub(super) fn raw(fx: &Fixture) -> Connection {
    Connection::open(&fx.path).expect("open raw")
}

/// The audit actions recorded so far, oldest first.
pub(super) fn actions(svc: &Service) -> Vec<String> {
    svc.audit_records(0, 10_000)
        .expect("records")
        .into_iter()
        .map(|r| r.action)
        .collect()
}
