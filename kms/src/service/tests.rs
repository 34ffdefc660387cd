//! Service tests with a minimal in-module ECIES backend. The full
//! conformance suite (tests/) runs the same flows against every backend.

use std::sync::Mutex;

use p256::SecretKey;
use rusqlite::Connection;

use super::*;
use crate::backend::{
    Capabilities, DeviceInfo, Health, Notice, SecretRequest, Signature, WrapMode,
};
use crate::crypto::ecies;
use crate::secret::{ExposeSecret, SecretString};

/// A software ECIES protector whose private key sits in the struct.
#[derive(Debug)]
struct TestBackend {
    key: Mutex<Option<SecretKey>>,
    sessions_ended: std::sync::atomic::AtomicUsize,
}

impl TestBackend {
    fn new() -> Self {
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

struct NoUi;
impl Callbacks for NoUi {
    fn request_secret(&self, _: &SecretRequest<'_>) -> Result<SecretString> {
        Err(Error::Cancelled)
    }
    fn notify(&self, _: &Notice<'_>) {}
    fn show_secret(&self, _: &str, _: &SecretString) -> Result<()> {
        Ok(())
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    backends: Backends,
}

fn fixture() -> (Fixture, Service) {
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

fn req(label: &str) -> EnrollRequest {
    EnrollRequest {
        label: label.into(),
        ..EnrollRequest::default()
    }
}

fn name(s: &str) -> KeyName {
    KeyName::new(s).expect("valid name")
}

fn spec(purpose: KeyPurpose) -> KeySpec {
    KeySpec {
        purpose,
        class: DataClass::Private,
        rotation_period: None,
        usage_limit: None,
    }
}

/// The unwrapped data key of a version, for comparing across rotations.
fn dek(svc: &Service, key: &str, version: u32) -> [u8; 32] {
    let (k, v) = svc.key_version(&name(key), Some(version)).expect("version");
    *unwrap_version(
        svc.master.as_ref().expect("unlocked"),
        svc.store.store_id(),
        &k,
        &v,
    )
    .expect("unwrap")
    .expose()
}

#[test]
fn init_creates_private_store_and_unlocks_again() {
    use std::os::unix::fs::PermissionsExt;
    let (fx, svc) = fixture();
    let mode = std::fs::metadata(&fx.path)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(fx.path.parent().expect("dir"))
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    assert!(svc.is_unlocked());
    drop(svc);

    let mut svc = Service::open(&fx.path, fx.backends.clone()).expect("open");
    assert!(!svc.is_unlocked());
    assert!(matches!(
        svc.create_key(&name("k"), &spec(KeyPurpose::Encrypt)),
        Err(Error::Locked)
    ));
    let p = svc.unlock(UnlockWith::Any, &NoUi).expect("unlock");
    assert_eq!(p.kind, BackendKind::Mock);
    let st = svc.status().expect("status");
    assert!(st.unlocked);
    assert_eq!((st.mk_epoch, st.protectors, st.keys), (1, 1, 0));
    assert!(st.audit_records >= 3, "init, enroll and unlock are audited");
    assert!(matches!(
        Service::init(
            &fx.path,
            fx.backends.clone(),
            BackendKind::Mock,
            &req("x"),
            &NoUi
        ),
        Err(Error::StoreExists { .. })
    ));
}

#[test]
fn failed_init_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keystore.db");
    // No backend registered for the kind asked for.
    let err = Service::init(&path, Backends::new(), BackendKind::Mock, &req("x"), &NoUi)
        .expect_err("no backend for the kind");
    assert!(matches!(err, Error::NotSupported { .. }), "{err:?}");
    assert!(!path.exists());
}

#[test]
fn key_lifecycle_rotate_and_retire() {
    let (_fx, mut svc) = fixture();
    let k = name("assistant-store");
    let info = svc
        .create_key(&k, &spec(KeyPurpose::Encrypt))
        .expect("create");
    assert_eq!(info.primary_version, 1);
    assert!(matches!(
        svc.create_key(&k, &spec(KeyPurpose::Sign)),
        Err(Error::KeyExists { .. })
    ));
    let v1 = dek(&svc, "assistant-store", 1);
    let info = svc.rotate_key(&k).expect("rotate");
    assert_eq!(info.primary_version, 2);
    assert_eq!(
        info.versions
            .iter()
            .map(|v| v.state.as_str())
            .collect::<Vec<_>>(),
        ["active", "primary"]
    );
    assert_ne!(dek(&svc, "assistant-store", 2), v1);
    assert_eq!(dek(&svc, "assistant-store", 1), v1);

    assert!(matches!(
        svc.retire(&k, 3),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        svc.retire(&k, 0),
        Err(Error::InvalidArgument { .. })
    ));
    let info = svc.retire(&k, 2).expect("retire");
    assert_eq!(info.versions[0].state, "retired");
    assert!(matches!(
        svc.decryption_key(&k, 1),
        Err(Error::VersionRetired {
            version: 1,
            min_decryption_version: 2,
            ..
        })
    ));
    assert!(svc.decryption_key(&k, 2).is_ok());
    assert!(matches!(
        svc.decryption_key(&k, 3),
        Err(Error::VersionNotFound { .. })
    ));
    assert!(matches!(
        svc.decryption_key(&name("nope"), 1),
        Err(Error::KeyNotFound { .. })
    ));
}

#[test]
fn master_rotation_rewraps_everything_and_keeps_data_keys() {
    let (fx, mut svc) = fixture();
    svc.enroll(BackendKind::Mock, &req("second"), &NoUi)
        .expect("enroll");
    for i in 0..5 {
        let k = name(&format!("k{i}"));
        svc.create_key(
            &k,
            &spec(if i % 2 == 0 {
                KeyPurpose::Encrypt
            } else {
                KeyPurpose::Sign
            }),
        )
        .expect("create");
        svc.rotate_key(&k).expect("rotate");
    }
    let before: Vec<_> = (0..5).map(|i| dek(&svc, &format!("k{i}"), 1)).collect();
    let wraps_before = svc.store.db().all_versions().expect("versions");
    assert_eq!(svc.rotate_master().expect("rotate master"), 2);
    assert_eq!(svc.status().expect("status").mk_epoch, 2);
    let after: Vec<_> = (0..5).map(|i| dek(&svc, &format!("k{i}"), 1)).collect();
    assert_eq!(before, after, "data keys survive master rotation");
    let wraps_after = svc.store.db().all_versions().expect("versions");
    for ((_, a), (_, b)) in wraps_before.iter().zip(&wraps_after) {
        assert_ne!(a.wrapped, b.wrapped, "every version re-wrapped");
    }
    for p in svc.protectors().expect("protectors") {
        assert_eq!(p.mk_epoch, 2);
    }
    drop(svc);
    let mut svc = Service::open(&fx.path, fx.backends.clone()).expect("open");
    svc.unlock(UnlockWith::Id(2), &NoUi)
        .expect("unlock with the second protector");
    assert_eq!(dek(&svc, "k0", 1), before[0]);
    svc.audit_verify().expect("audit chain intact");
}

#[test]
fn last_protector_is_never_removed() {
    let (_fx, mut svc) = fixture();
    assert!(matches!(svc.remove_protector(1), Err(Error::LastProtector)));
    assert!(matches!(
        svc.remove_protector(7),
        Err(Error::ProtectorNotFound { id: 7 })
    ));
    let p = svc
        .enroll(BackendKind::Mock, &req("two"), &NoUi)
        .expect("enroll");
    assert_eq!(p.id, 2);
    svc.remove_protector(1).expect("remove one of two");
    assert!(matches!(svc.remove_protector(2), Err(Error::LastProtector)));
    let p = svc
        .enroll(BackendKind::Mock, &req("three"), &NoUi)
        .expect("enroll");
    assert_eq!(p.id, 3, "ids are never reused");
    svc.lock();
    assert!(matches!(svc.remove_protector(2), Err(Error::Locked)));
}

#[test]
fn secret_class_keys_never_reach_the_store() {
    let (fx, mut svc) = fixture();
    let k = name("session");
    let s = KeySpec {
        class: DataClass::Secret,
        ..spec(KeyPurpose::Encrypt)
    };
    assert!(matches!(
        svc.create_key(&k, &s),
        Err(Error::ClassPolicy { .. })
    ));
    svc.enable_memory_keys();
    svc.create_key(&k, &s).expect("create in memory");
    svc.rotate_key(&k).expect("rotate in memory");
    assert_eq!(svc.key(&k).expect("key").primary_version, 2);
    let v1 = dek(&svc, "session", 1);
    svc.rotate_master()
        .expect("master rotation covers memory keys");
    assert_eq!(dek(&svc, "session", 1), v1);
    let conn = Connection::open(&fx.path).expect("open raw");
    let rows: i64 = conn
        .query_row(
            "SELECT count(*) FROM key_versions WHERE key_name = 'session'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(rows, 0);
    svc.lock();
    svc.unlock(UnlockWith::Any, &NoUi).expect("unlock");
    assert!(
        matches!(svc.key(&k), Err(Error::KeyNotFound { .. })),
        "gone on lock"
    );
}

#[test]
fn usage_counter_is_reserved_before_use_and_rotates_at_the_limit() {
    let (_fx, mut svc) = fixture();
    let k = name("limited");
    svc.create_key(
        &k,
        &KeySpec {
            usage_limit: Some(3),
            ..spec(KeyPurpose::Encrypt)
        },
    )
    .expect("create");
    let mut versions = Vec::new();
    for _ in 0..7 {
        let (_, version, _) = svc
            .reserve_encryption(&k, "encrypt", None)
            .expect("reserve");
        versions.push(version);
    }
    assert_eq!(versions, [1, 1, 1, 2, 2, 2, 3]);
    let info = svc.key(&k).expect("key");
    assert_eq!(
        info.versions.iter().map(|v| v.uses).collect::<Vec<_>>(),
        [3, 3, 1]
    );
    assert!(matches!(
        svc.reserve_encryption(&name("nope"), "encrypt", None),
        Err(Error::KeyNotFound { .. })
    ));
    svc.create_key(&name("signer"), &spec(KeyPurpose::Sign))
        .expect("create");
    assert!(matches!(
        svc.reserve_encryption(&name("signer"), "encrypt", None),
        Err(Error::WrongPurpose { .. })
    ));
}

#[test]
fn failing_audit_write_stops_the_operation() {
    let (fx, mut svc) = fixture();
    let k = name("k");
    svc.create_key(&k, &spec(KeyPurpose::Encrypt))
        .expect("create");
    {
        let conn = Connection::open(&fx.path).expect("open raw");
        conn.execute_batch(
            "CREATE TRIGGER no_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(FAIL, 'disk full'); END;",
        )
        .expect("trigger");
    }
    assert!(matches!(svc.rotate_key(&k), Err(Error::AuditWrite(_))));
    assert_eq!(
        svc.key(&k).expect("key").primary_version,
        1,
        "rotation rolled back"
    );
    assert!(matches!(
        svc.reserve_encryption(&k, "encrypt", None),
        Err(Error::AuditWrite(_))
    ));
    assert_eq!(svc.key(&k).expect("key").versions[0].uses, 0);
    assert!(matches!(svc.rotate_master(), Err(Error::AuditWrite(_))));
    assert_eq!(svc.status().expect("status").mk_epoch, 1);
}

fn raw(fx: &Fixture) -> Connection {
    Connection::open(&fx.path).expect("open raw")
}

#[test]
fn audit_detects_edit_delete_reorder_and_truncation() {
    let cases: [(&str, &str); 5] = [
        ("edit", "UPDATE audit SET record = replace(record, '\"ok\"', '\"error\"') WHERE seq = 2"),
        ("delete", "DELETE FROM audit WHERE seq = 3"),
        ("reorder", "UPDATE audit SET seq = seq + 100 WHERE seq IN (2, 3);
                     UPDATE audit SET seq = 3 WHERE seq = 102; UPDATE audit SET seq = 2 WHERE seq = 103"),
        ("truncate", "DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)"),
        ("truncate-and-fix-head", "DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit);
            UPDATE meta SET value = value - 1 WHERE name = 'audit_head_seq';
            UPDATE meta SET value = (SELECT hash FROM audit ORDER BY seq DESC LIMIT 1)
              WHERE name = 'audit_head_hash'"),
    ];
    for (what, sql) in cases {
        let (fx, mut svc) = fixture();
        for i in 0..3 {
            svc.create_key(&name(&format!("k{i}")), &spec(KeyPurpose::Encrypt))
                .expect("create");
        }
        let good = svc.audit_verify().expect("clean log verifies");
        assert!(good.records >= 5);
        assert_eq!(good.checkpoint, Some(good.records));
        raw(&fx).execute_batch(sql).expect(what);
        let err = svc.audit_verify().expect_err(what);
        assert!(
            matches!(err, Error::AuditTampered { .. }),
            "{what}: {err:?}"
        );
    }
}

#[test]
fn store_refuses_foreign_corrupt_newer_and_unsafe_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    let write = |path: &Path, bytes: &[u8]| {
        std::fs::write(path, bytes).expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    };

    assert!(matches!(
        Store::open(&p("missing")),
        Err(Error::StoreNotFound { .. })
    ));
    write(&p("empty"), b"");
    assert!(matches!(
        Store::open(&p("empty")),
        Err(Error::NotAKeystore { .. })
    ));
    write(&p("zeros"), &[0u8; 8192]);
    assert!(matches!(
        Store::open(&p("zeros")),
        Err(Error::NotAKeystore { .. })
    ));
    write(&p("garbage"), &[0x5au8; 8192]);
    assert!(matches!(
        Store::open(&p("garbage")),
        Err(Error::NotAKeystore { .. })
    ));

    let foreign = p("foreign.db");
    Connection::open(&foreign)
        .expect("create")
        .execute_batch("CREATE TABLE t(x)")
        .expect("t");
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(matches!(
        Store::open(&foreign),
        Err(Error::NotAKeystore { .. })
    ));

    let newer = p("newer.db");
    drop(Store::create(&newer).expect("create"));
    raw_pragma(&newer, "user_version", SCHEMA_VERSION_PLUS_ONE);
    assert!(matches!(
        Store::open(&newer),
        Err(Error::StoreTooNew {
            found: SCHEMA_VERSION_PLUS_ONE,
            supported: crate::store::SCHEMA_VERSION
        })
    ));

    let good = p("good.db");
    drop(Store::create(&good).expect("create"));
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert!(matches!(
        Store::open(&good),
        Err(Error::UnsafePermissions { .. })
    ));
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    Store::open(&good).expect("opens again at 0600");
    let link = p("link.db");
    std::os::unix::fs::symlink(&good, &link).expect("symlink");
    assert!(matches!(
        Store::open(&link),
        Err(Error::UnsafePermissions { .. })
    ));
}

const SCHEMA_VERSION_PLUS_ONE: u32 = crate::store::SCHEMA_VERSION + 1;

fn raw_pragma(path: &Path, pragma: &str, value: u32) {
    Connection::open(path)
        .expect("open")
        .pragma_update(None, pragma, value)
        .expect("pragma");
}

#[test]
fn truncated_store_is_reported_not_panicked_on() {
    let (fx, mut svc) = fixture();
    for i in 0..40 {
        svc.create_key(&name(&format!("key-{i}")), &spec(KeyPurpose::Encrypt))
            .expect("create");
    }
    drop(svc);
    // Fold the WAL into the main file so that truncation hits real pages.
    raw(&fx)
        .pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .expect("checkpoint");
    let bytes = std::fs::read(&fx.path).expect("read");
    assert!(bytes.len() > 8192, "store spans several pages");
    for cut in [bytes.len() / 2, bytes.len() - 1, 4096, 100, 1] {
        std::fs::write(&fx.path, &bytes[..cut]).expect("truncate");
        let _ = std::fs::remove_file(fx.path.with_extension("db-wal"));
        match Service::open(&fx.path, fx.backends.clone()) {
            Err(Error::StoreCorrupt { .. } | Error::NotAKeystore { .. }) => {}
            Err(e) => panic!("truncated at {cut}: unexpected error {e:?}"),
            // SQLite reads a missing tail as zeros; if only zero bytes were
            // cut, nothing was lost and the store must be whole.
            Ok(mut svc) => {
                assert!(cut > bytes.len() / 2, "half a store cannot be whole");
                assert_eq!(svc.keys().expect("keys").len(), 40, "cut at {cut}");
                svc.unlock(UnlockWith::Any, &NoUi).expect("unlock");
                svc.audit_verify().expect("audit intact");
            }
        }
    }
}

#[test]
fn migrates_a_version_1_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v1.db");
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("create");
        let conn = Connection::open(&path).expect("open");
        conn.pragma_update(None, "application_id", crate::store::APPLICATION_ID)
            .expect("app id");
        crate::store::migrate_to(&conn, 0, 1).expect("v1 schema");
        conn.execute(
            "INSERT INTO meta (name, value) VALUES ('store_id', ?1), ('mk_epoch', 1),
             ('created_at', 0), ('next_protector_id', 1)",
            [&[9u8; 16][..]],
        )
        .expect("meta");
        conn.execute(
            "INSERT INTO keys VALUES ('old', 'sign', 'general', 1, 1, NULL, 100, 0)",
            [],
        )
        .expect("key");
    }
    let store = Store::open(&path).expect("migrates");
    assert_eq!(store.store_id(), &[9u8; 16]);
    let key = store.db().key(&name("old")).expect("key survives");
    assert_eq!(key.sign_counter, 0, "new column has its default");
    assert_eq!(
        store
            .db()
            .replay_counter(&name("old"), b"x")
            .expect("replay table"),
        None
    );
    let v: u32 = Connection::open(&path)
        .expect("open")
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("version");
    assert_eq!(v, crate::store::SCHEMA_VERSION);
}

#[test]
fn mk_wrap_aad_vector() {
    // docs/FORMAT.md ("Protectors"), computed independently in Python.
    let store_id: [u8; 16] = core::array::from_fn(|i| i as u8);
    assert_eq!(
        hex::encode(mk_wrap_aad(&store_id, 1, 1, BackendKind::Passphrase)),
        "6b6579776172642f76312f6d6b2d77726170000102030405060708090a0b0c0d0e0f000000010000000102"
    );
}

#[test]
fn tampered_or_swapped_wrapped_keys_are_refused() {
    let (fx, mut svc) = fixture();
    let (a, b) = (name("a"), name("b"));
    svc.create_key(&a, &spec(KeyPurpose::Encrypt))
        .expect("create");
    svc.create_key(&b, &spec(KeyPurpose::Encrypt))
        .expect("create");
    svc.rotate_key(&a).expect("rotate");
    let original: Vec<u8> = raw(&fx)
        .query_row(
            "SELECT wrapped FROM key_versions WHERE key_name = 'a' AND version = 1",
            [],
            |r| r.get(0),
        )
        .expect("wrapped");
    let set = |bytes: &[u8], key: &str, version: u32| {
        raw(&fx)
            .execute(
                "UPDATE key_versions SET wrapped = ?1 WHERE key_name = ?2 AND version = ?3",
                rusqlite::params![bytes, key, version],
            )
            .expect("update");
    };
    for i in 0..original.len() {
        let mut t = original.clone();
        t[i] ^= 0x80;
        set(&t, "a", 1);
        assert!(
            matches!(svc.decryption_key(&a, 1), Err(Error::UnwrapFailed)),
            "byte {i}"
        );
    }
    // The same wrap moved to another key or another version does not unwrap.
    set(&original, "b", 1);
    assert!(matches!(
        svc.decryption_key(&b, 1),
        Err(Error::UnwrapFailed)
    ));
    set(&original, "a", 2);
    assert!(matches!(
        svc.decryption_key(&a, 2),
        Err(Error::UnwrapFailed)
    ));
    set(&original, "a", 1);
    assert!(svc.decryption_key(&a, 1).is_ok());
    // A downgraded class changes the KEK: the key no longer unwraps.
    raw(&fx)
        .execute("UPDATE keys SET class = 'general' WHERE name = 'a'", [])
        .expect("downgrade");
    assert!(matches!(
        svc.decryption_key(&a, 1),
        Err(Error::UnwrapFailed)
    ));
}

#[test]
fn tampered_master_key_wrap_is_refused() {
    let (fx, svc) = fixture();
    drop(svc);
    let original: Vec<u8> = raw(&fx)
        .query_row("SELECT wrapped_mk FROM protectors WHERE id = 1", [], |r| {
            r.get(0)
        })
        .expect("wrapped");
    for i in 0..original.len() {
        let mut t = original.clone();
        t[i] ^= 0x01;
        raw(&fx)
            .execute("UPDATE protectors SET wrapped_mk = ?1 WHERE id = 1", [&t])
            .expect("update");
        let mut svc = Service::open(&fx.path, fx.backends.clone()).expect("open");
        let err = svc
            .unlock(UnlockWith::Any, &NoUi)
            .expect_err("tampered wrap");
        assert!(
            matches!(
                err,
                Error::UnwrapFailed
                    | Error::InvalidPublicKey { .. }
                    | Error::UnsupportedFormat { .. }
            ),
            "byte {i}: {err:?}"
        );
        assert!(!svc.is_unlocked());
    }
    // An epoch edit in the store is caught by the wrap's AAD.
    raw(&fx)
        .execute(
            "UPDATE protectors SET wrapped_mk = ?1, mk_epoch = 2 WHERE id = 1",
            [&original],
        )
        .expect("restore");
    let mut svc = Service::open(&fx.path, fx.backends.clone()).expect("open");
    assert!(matches!(
        svc.unlock(UnlockWith::Any, &NoUi),
        Err(Error::UnwrapFailed)
    ));
}

#[test]
fn replace_protector_is_one_change() {
    let (_fx, mut svc) = fixture();
    svc.enroll(BackendKind::Mock, &req("two"), &NoUi)
        .expect("enroll");
    assert!(matches!(
        svc.replace_protector(9, BackendKind::Mock, &req("x"), &NoUi),
        Err(Error::ProtectorNotFound { id: 9 })
    ));
    let new = svc
        .replace_protector(1, BackendKind::Mock, &req("resealed"), &NoUi)
        .expect("replace");
    let ids: Vec<u32> = svc
        .protectors()
        .expect("list")
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, [2, new.id]);
    let audit = svc.audit_records(1, 100).expect("audit");
    assert_eq!(audit.last().expect("record").action, "protector.replace");
}

#[test]
fn random_damage_to_the_store_file_never_panics() {
    let (fx, mut svc) = fixture();
    svc.enroll(BackendKind::Mock, &req("two"), &NoUi)
        .expect("enroll");
    for i in 0..12 {
        let k = name(&format!("k{i}"));
        svc.create_key(&k, &spec(KeyPurpose::Encrypt))
            .expect("create");
        svc.rotate_key(&k).expect("rotate");
    }
    let deks: Vec<[u8; 32]> = (0..12).map(|i| dek(&svc, &format!("k{i}"), 1)).collect();
    drop(svc);
    raw(&fx)
        .pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .expect("checkpoint");
    let pristine = std::fs::read(&fx.path).expect("read");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut refused, mut opened) = (0, 0);
    for _ in 0..300 {
        let mut damaged = pristine.clone();
        for _ in 0..=(next() % 8) {
            let at = (next() % damaged.len() as u64) as usize;
            damaged[at] ^= 1 << (next() % 8);
        }
        std::fs::write(&fx.path, &damaged).expect("write");
        let _ = std::fs::remove_file(fx.path.with_extension("db-wal"));
        // Whatever is damaged, every call returns; none panics.
        match Service::open(&fx.path, fx.backends.clone()) {
            Err(_) => refused += 1,
            Ok(mut svc) => {
                opened += 1;
                let _ = svc.status();
                let _ = svc.keys();
                let _ = svc.protectors();
                let _ = svc.audit_verify();
                if svc.unlock(UnlockWith::Any, &NoUi).is_ok() {
                    // A damaged store may refuse a key, never hand out a wrong one.
                    for (i, want) in deks.iter().enumerate() {
                        if let Ok((_, got)) = svc.decryption_key(&name(&format!("k{i}")), 1) {
                            assert_eq!(got.expose(), want, "k{i} unwrapped to a different key");
                        }
                    }
                    let _ = svc.audit_verify();
                }
            }
        }
    }
    println!("300 damaged stores: {refused} refused at open, {opened} opened");
}

/// The audit actions recorded so far, oldest first.
fn actions(svc: &Service) -> Vec<String> {
    svc.audit_records(0, 10_000)
        .expect("records")
        .into_iter()
        .map(|r| r.action)
        .collect()
}

#[test]
fn daemon_mode_reserves_blocks_and_still_rotates_at_the_limit() {
    let (fx, mut svc) = fixture();
    svc.enable_daemon_mode();
    let k = name("bulk");
    svc.create_key(&k, &spec(KeyPurpose::Encrypt))
        .expect("create");
    let ct = svc.encrypt(&k, b"ctx", b"hello").expect("encrypt");
    // One durable reservation of a whole block, counted before any use.
    assert_eq!(
        svc.key(&k).expect("key").versions[0].uses,
        RESERVATION_BLOCK
    );
    for _ in 0..10 {
        svc.encrypt(&k, b"ctx", b"again").expect("encrypt");
    }
    assert_eq!(
        svc.key(&k).expect("key").versions[0].uses,
        RESERVATION_BLOCK
    );
    // Each use is still in the audit log, and the chain verifies.
    let uses = actions(&svc).iter().filter(|a| *a == "encrypt").count();
    assert_eq!(uses, 11);
    svc.audit_verify().expect("chain verifies");
    // A fresh process (no reservation in memory) sees the over-count and
    // decrypts what the daemon wrote.
    drop(svc);
    let mut other = Service::open(&fx.path, fx.backends.clone()).expect("open");
    other.unlock(UnlockWith::Any, &NoUi).expect("unlock");
    let d = other.decrypt(b"ctx", &ct).expect("decrypt");
    assert_eq!(d.plaintext.expose(), b"hello");

    // A small usage limit: blocks never cross it, so rotation happens at
    // exactly the limit, as without daemon mode.
    other.enable_daemon_mode();
    let small = name("small");
    other
        .create_key(
            &small,
            &KeySpec {
                usage_limit: Some(3),
                ..spec(KeyPurpose::Encrypt)
            },
        )
        .expect("create");
    let mut versions = Vec::new();
    for _ in 0..7 {
        let (_, version, _) = other
            .reserve_encryption(&small, "encrypt", None)
            .expect("reserve");
        versions.push(version);
    }
    assert_eq!(versions, [1, 1, 1, 2, 2, 2, 3]);
}

#[test]
fn daemon_lock_forgets_cached_keys_and_is_audited() {
    let (_fx, mut svc) = fixture();
    svc.enable_daemon_mode();
    let k = name("k");
    svc.create_key(&k, &spec(KeyPurpose::Encrypt))
        .expect("create");
    let ct = svc.encrypt(&k, b"", b"secret").expect("encrypt");
    svc.decrypt(b"", &ct).expect("decrypt warms the cache");
    assert!(!svc.daemon.as_ref().expect("daemon").deks.is_empty());
    svc.lock_because("idle");
    assert!(svc.daemon.as_ref().expect("daemon").deks.is_empty());
    assert!(svc.daemon.as_ref().expect("daemon").reserved.is_empty());
    assert!(matches!(svc.decrypt(b"", &ct), Err(Error::Locked)));
    let last = svc.audit_records(0, 10_000).expect("records");
    let lock = last.last().expect("a record");
    assert_eq!(lock.action, "lock");
    assert_eq!(lock.fields["reason"], "idle");
    // Locking again records nothing more.
    let n = last.len();
    svc.lock_because("request");
    assert_eq!(svc.audit_records(0, 10_000).expect("records").len(), n);
}

#[test]
fn cached_data_key_is_not_used_after_its_wrap_changes() {
    let (_fx, mut svc) = fixture();
    svc.enable_daemon_mode();
    let k = name("k");
    svc.create_key(&k, &spec(KeyPurpose::Encrypt))
        .expect("create");
    let ct = svc.encrypt(&k, b"", b"data").expect("encrypt");
    // Master rotation re-wraps every version; the cache follows.
    svc.rotate_master().expect("rotate master");
    assert_eq!(
        svc.decrypt(b"", &ct).expect("decrypt").plaintext.expose(),
        b"data"
    );
    // A wrap swapped in the store is not papered over by the cache.
    svc.store
        .write(|db| {
            db.conn().execute(
                "UPDATE key_versions SET wrapped = zeroblob(40) WHERE key_name = 'k'",
                [],
            )?;
            Ok(())
        })
        .expect("tamper");
    assert!(matches!(
        svc.decrypt(b"", &ct),
        Err(Error::UnwrapFailed | Error::DecryptionFailed)
    ));
}

#[test]
fn rewrap_moves_to_the_primary_version_with_the_same_plaintext() {
    let (_fx, mut svc) = fixture();
    let k = name("k");
    svc.create_key(&k, &spec(KeyPurpose::Encrypt))
        .expect("create");
    let v1 = svc.encrypt(&k, b"ctx", b"keep me").expect("encrypt");
    svc.rotate_key(&k).expect("rotate");
    let r = svc.rewrap(b"ctx", &v1).expect("rewrap");
    assert_eq!((r.from_version, r.version), (1, 2));
    let d = svc.decrypt(b"ctx", &r.ciphertext).expect("decrypt");
    assert_eq!((d.plaintext.expose(), d.version), (&b"keep me"[..], 2));
    assert!(matches!(
        svc.rewrap(b"other", &v1),
        Err(Error::DecryptionFailed)
    ));
    svc.retire(&k, 2).expect("retire v1");
    assert!(matches!(
        svc.rewrap(b"ctx", &v1),
        Err(Error::VersionRetired { .. })
    ));
}

#[test]
fn datakeys_round_trip_and_are_bound_to_their_context() {
    let (_fx, mut svc) = fixture();
    let k = name("store");
    svc.create_key(&k, &spec(KeyPurpose::Encrypt))
        .expect("create");
    let dk = svc.datakey_generate(&k, b"db:1").expect("generate");
    assert_eq!(dk.plaintext.expose().len(), 32);
    assert_ne!(dk.plaintext.expose(), &[0u8; 32][..]);
    let again = svc.datakey_unwrap(b"db:1", &dk.wrapped).expect("unwrap");
    assert_eq!(again.plaintext.expose(), dk.plaintext.expose());
    assert!(matches!(
        svc.datakey_unwrap(b"db:2", &dk.wrapped),
        Err(Error::DecryptionFailed)
    ));
    let acts = actions(&svc);
    assert!(acts.iter().any(|a| a == "datakey.generate"));
    assert!(acts.iter().any(|a| a == "datakey.unwrap"));
}

#[test]
fn rotate_due_rotates_only_keys_whose_period_elapsed() {
    let (_fx, mut svc) = fixture();
    let due = name("due");
    let fresh = name("fresh");
    let never = name("never");
    for (k, period) in [(&due, Some(60)), (&fresh, Some(3600)), (&never, None)] {
        svc.create_key(
            k,
            &KeySpec {
                rotation_period: period,
                ..spec(KeyPurpose::Encrypt)
            },
        )
        .expect("create");
    }
    assert!(svc.rotate_due().expect("nothing due yet").is_empty());
    let ct = svc.encrypt(&due, b"", b"old data").expect("encrypt");
    // Age every version by two minutes.
    svc.store
        .write(|db| {
            db.conn()
                .execute("UPDATE key_versions SET created_at = created_at - 120", [])?;
            Ok(())
        })
        .expect("age");
    let rotated = svc.rotate_due().expect("rotate due");
    assert_eq!(
        rotated,
        [Rotated {
            key: due.clone(),
            version: 2,
            reason: "period"
        }]
    );
    assert!(
        svc.rotate_due()
            .expect("the new version is fresh")
            .is_empty()
    );
    assert_eq!(
        svc.decrypt(b"", &ct).expect("old data").plaintext.expose(),
        b"old data"
    );
    svc.lock();
    assert!(matches!(svc.rotate_due(), Err(Error::Locked)));
}

#[test]
fn clients_authenticate_until_revoked() {
    let (fx, mut svc) = fixture();
    let (info, token) = svc
        .client_add("assistant", &[Operation::Decrypt], &["store".into()])
        .expect("add");
    assert_eq!(info.allow, [Operation::Decrypt]);
    let got = svc
        .authenticate(token.expose_secret())
        .expect("authenticates");
    assert_eq!(got.name, "assistant");
    assert!(got.last_used_at.is_some());
    assert!(got.permits(Operation::Decrypt, Some(&name("store"))));
    assert!(!got.permits(Operation::Decrypt, Some(&name("health"))));
    assert!(matches!(
        svc.client_add("assistant", &[Operation::Keys], &["*".into()]),
        Err(Error::ClientExists { .. })
    ));
    for bad in ["", "kwt_", "Bearer x", &format!("kwt_{}", "A".repeat(43))] {
        assert!(
            matches!(svc.authenticate(bad), Err(Error::Unauthorized)),
            "{bad:?}"
        );
    }
    // The token is never stored in clear.
    let bytes = std::fs::read(&fx.path).expect("read store");
    let wal = std::fs::read(format!("{}-wal", fx.path.display())).unwrap_or_default();
    let needle = token.expose_secret().as_bytes();
    for haystack in [&bytes, &wal] {
        assert!(!haystack.windows(needle.len()).any(|w| w == needle));
    }
    svc.client_revoke("assistant").expect("revoke");
    assert!(matches!(
        svc.authenticate(token.expose_secret()),
        Err(Error::Unauthorized)
    ));
    assert!(matches!(
        svc.client_revoke("assistant"),
        Err(Error::ClientNotFound { .. })
    ));
    // The name can be reused after revocation, with a new token.
    let (_, t2) = svc
        .client_add("assistant", &[Operation::Keys], &["*".into()])
        .expect("re-add");
    let (_, t3) = svc
        .client_add("backup", &[Operation::Encrypt], &["store".into()])
        .expect("add");
    assert_eq!(svc.client_revoke_all().expect("revoke all"), 2);
    for t in [&t2, &t3] {
        assert!(matches!(
            svc.authenticate(t.expose_secret()),
            Err(Error::Unauthorized)
        ));
    }
    let listed = svc.clients().expect("list");
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|c| c.revoked_at.is_some()));
    let acts = actions(&svc);
    for a in ["client.add", "client.revoke", "client.revoke_all"] {
        assert!(acts.iter().any(|x| x == a), "{a}");
    }
    svc.audit_verify().expect("chain verifies");
}

#[test]
fn lock_ends_every_backend_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keystore.db");
    let backend = Arc::new(TestBackend::new());
    let mut backends = Backends::new();
    backends.add(backend.clone());
    let (mut svc, _) =
        Service::init(&path, backends, BackendKind::Mock, &req("first"), &NoUi).expect("init");
    let ended = || {
        backend
            .sessions_ended
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    assert_eq!(ended(), 0);
    svc.lock();
    assert_eq!(ended(), 1);
    svc.unlock(UnlockWith::Any, &NoUi).expect("unlock");
    svc.lock_because("idle");
    assert_eq!(ended(), 2);
}

#[test]
fn decrypt_takes_a_whole_stream_ciphertext_too() {
    let (_fx, mut svc) = fixture();
    let k = name("k");
    svc.create_key(&k, &spec(KeyPurpose::Encrypt))
        .expect("create");
    let mut ct = Vec::new();
    svc.encrypt_stream(
        &k,
        b"ctx",
        &mut &b"streamed, then sent whole"[..],
        &mut ct,
        &mut |_| {},
    )
    .expect("encrypt stream");
    let d = svc.decrypt(b"ctx", &ct).expect("decrypt");
    assert_eq!(d.plaintext.expose(), b"streamed, then sent whole");
    assert_eq!((d.key, d.version), (k, 1));
    assert!(matches!(
        svc.decrypt(b"other", &ct),
        Err(Error::DecryptionFailed)
    ));
    ct.truncate(ct.len() - 1);
    assert!(svc.decrypt(b"ctx", &ct).is_err());
}

#[test]
fn deferred_uses_are_written_in_one_go_or_not_at_all() {
    let (fx, mut svc) = fixture();
    svc.enable_daemon_mode();
    let k = name("k");
    svc.create_key(&k, &spec(KeyPurpose::Encrypt))
        .expect("create");
    let before = actions(&svc).len();
    svc.defer_uses();
    let cts: Vec<Vec<u8>> = (0..5)
        .map(|i| svc.encrypt(&k, b"", &[i; 8]).expect("encrypt"))
        .collect();
    for ct in &cts {
        svc.decrypt(b"", ct).expect("decrypt");
    }
    assert_eq!(
        actions(&svc).len(),
        before,
        "nothing written while deferring"
    );
    assert_eq!(svc.commit_uses().expect("commit"), 10);
    let acts = actions(&svc);
    assert_eq!(acts.len(), before + 10);
    assert_eq!(acts.iter().filter(|a| *a == "decrypt").count(), 5);
    svc.audit_verify().expect("chain verifies");
    // Not deferring any more: each use is written at once again.
    svc.decrypt(b"", &cts[0]).expect("decrypt");
    assert_eq!(actions(&svc).len(), before + 11);

    // A failing commit writes none of the batch, and says so.
    svc.defer_uses();
    svc.decrypt(b"", &cts[1]).expect("decrypt");
    Connection::open(&fx.path)
        .expect("open raw")
        .execute_batch(
            "CREATE TRIGGER no_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(FAIL, 'disk full'); END;",
        )
        .expect("trigger");
    assert!(matches!(svc.commit_uses(), Err(Error::AuditWrite(_))));
    assert_eq!(actions(&svc).len(), before + 11);
}

#[test]
fn public_key_exports_are_audited() {
    let (_fx, mut svc) = fixture();
    let k = name("signer");
    svc.create_key(&k, &spec(KeyPurpose::Sign)).expect("create");
    let export = svc.export_public(&k, None).expect("export");
    let records = svc.audit_records(0, 10_000).expect("records");
    let last = records.last().expect("a record");
    assert_eq!(last.action, "key.export");
    assert_eq!(last.fields["key"], "signer");
    assert_eq!(last.fields["version"], export.version);
    svc.audit_verify().expect("chain verifies");
}
