//! The in-process key service: everything the CLI and the daemon do goes
//! through [`Service`].
//!
//! A `Service` owns one open keystore and, once unlocked, the master key.
//! Every state change is one SQLite transaction that also appends its audit
//! record: a crash leaves the old state or the new one, and an operation
//! whose audit record cannot be written does not happen.
//!
//! This file holds the service itself (open, init, status, lock) and the
//! [`Options`] it is opened with; each concept has its own file in
//! `service/`, with its tests beside it: `unlock` (which protector, and
//! unlocking), `protectors` (and the master key they wrap), `keys`, `usage`
//! (counting encryptions, the data-key cache, use records), `data`,
//! `stream`, `signing`, `clients` and `audit_log`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_json::json;

use crate::audit::{self, Action};
use crate::backend::{Backend, BackendKind, Callbacks, EnrollRequest};
use crate::keys::{KeyName, KeyPurpose, MasterKey};
use crate::secret::Secret32;
use crate::store::{KeyRow, Store};
use crate::{Error, Result};

mod audit_log;
mod clients;
mod data;
mod keys;
mod protectors;
mod signing;
mod stream;
mod unlock;
mod usage;

#[cfg(test)]
mod test_support;

pub use data::{DataKey, Decrypted, Rewrapped};
pub use keys::{
    DEFAULT_USAGE_LIMIT, HARD_USAGE_LIMIT, KeyInfo, KeySpec, MAX_ROTATION_PERIOD, Rotated,
    VersionInfo,
};
pub use protectors::{ProtectorInfo, mk_wrap_aad};
pub use signing::{FRESHNESS_WINDOW, PublicKeyExport, Verified};
pub use stream::StreamSummary;
pub use unlock::{Supplied, UnlockRequest, UnlockWith};
pub use usage::RESERVATION_BLOCK;

pub(crate) use unlock::pin_target_message;

use keys::MemoryKey;
use protectors::add_protector;
use usage::Usage;

/// How a [`Service`] works, chosen once when it is opened. The default is
/// a short-lived process's (the CLI): every encryption counted by its own
/// durable commit, nothing kept between operations. [`Options::daemon`] is
/// a long-running daemon's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent switches, each named for what it does"
)]
pub struct Options {
    /// Allow `secret`-class keys, which live only in this process's memory
    /// and are gone when it exits or locks.
    pub memory_keys: bool,
    /// Keep unwrapped data keys until lock (an entry is used only while
    /// the stored wrap is the one it came from).
    pub dek_cache: bool,
    /// Reserve encryptions in the store in blocks of [`RESERVATION_BLOCK`]
    /// (one durable commit per block) rather than one by one.
    pub reservations: bool,
    /// Commit the audit record of each use of a key without `fsync` (it
    /// survives a crash of the process; the next change of state makes it
    /// durable against power loss), and checkpoint the WAL on a background
    /// thread. Changes of key state stay fully durable.
    pub relaxed_uses: bool,
}

impl Options {
    /// The daemon's way of working: everything above on.
    pub const fn daemon() -> Self {
        Self {
            memory_keys: true,
            dek_cache: true,
            reservations: true,
            relaxed_uses: true,
        }
    }
}

/// The backends a service can use, one per kind.
#[derive(Debug, Clone, Default)]
pub struct Backends(Vec<Arc<dyn Backend>>);

impl Backends {
    /// An empty registry.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// The software protectors (recovery key, passphrase) with default
    /// parameters.
    pub fn software() -> Self {
        let mut b = Self::new();
        b.add(Arc::new(crate::protectors::recovery::Backend::new()));
        b.add(Arc::new(crate::protectors::passphrase::Backend::new()));
        b
    }

    /// Adds (or replaces) the backend for its kind.
    pub fn add(&mut self, backend: Arc<dyn Backend>) {
        self.0.retain(|b| b.kind() != backend.kind());
        self.0.push(backend);
    }

    /// The backend for `kind`.
    pub fn get(&self, kind: BackendKind) -> Option<&Arc<dyn Backend>> {
        self.0.iter().find(|b| b.kind() == kind)
    }
}

/// Who asked: recorded in every audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    /// Unix uid.
    pub uid: u32,
    /// Process id.
    pub pid: u32,
    /// Executable path, if known.
    pub exe: Option<String>,
    /// Client name when a daemon client acts.
    pub client: Option<String>,
}

impl Actor {
    /// The current process.
    pub fn current() -> Self {
        Self {
            uid: rustix::process::getuid().as_raw(),
            pid: std::process::id(),
            exe: std::env::current_exe()
                .ok()
                .map(|p| p.display().to_string()),
            client: None,
        }
    }
}

/// Keystore status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// Keystore path.
    pub path: PathBuf,
    /// Keystore id (hex).
    pub store_id: String,
    /// Schema version.
    pub schema_version: u32,
    /// Master-key epoch.
    pub mk_epoch: u32,
    /// Is the master key in memory?
    pub unlocked: bool,
    /// Enrolled protectors.
    pub protectors: usize,
    /// Named keys.
    pub keys: usize,
    /// Audit records.
    pub audit_records: u64,
}

/// The key service over one keystore.
#[derive(Debug)]
pub struct Service {
    store: Store,
    backends: Backends,
    master: Option<MasterKey>,
    actor: Actor,
    options: Options,
    /// `secret`-class keys (only with [`Options::memory_keys`]).
    memory_keys: BTreeMap<KeyName, MemoryKey>,
    /// Reserved encryptions, cached data keys, deferred use records.
    usage: Usage,
    /// WAL checkpoints off the request path ([`Options::relaxed_uses`]).
    _checkpointer: Option<crate::store::Checkpointer>,
}

impl Service {
    /// Creates a keystore at `path` with a fresh master key and enrolls the
    /// first protector of `kind`. Nothing is left behind on failure.
    ///
    /// # Errors
    /// `StoreExists`, enrollment errors, `Io`.
    pub fn init(
        path: &Path,
        backends: Backends,
        kind: BackendKind,
        request: &EnrollRequest,
        ui: &dyn Callbacks,
    ) -> Result<(Self, ProtectorInfo)> {
        let backend = backend_for(&backends, kind)?.clone();
        let store = Store::create(path)?;
        let mut service = Self::new(store, backends, Options::default());
        let result = (|| {
            let master = MasterKey::generate(1)?;
            let enrollment = backend.enroll(request, ui)?;
            let store_id = *service.store.store_id();
            let mac = audit::mac_key(master.secret(), &store_id);
            let actor = service.actor_json();
            let info = service.store.write(|db| {
                db.set_meta("mk_epoch", &1)?;
                audit::append(
                    db,
                    Action::StoreInit,
                    true,
                    &json!({ "store_id": hex::encode(store_id), "actor": actor }),
                    Some(&mac),
                )?;
                add_protector(
                    db,
                    &store_id,
                    &master,
                    backend.as_ref(),
                    enrollment,
                    &request.label,
                    &actor,
                    &mac,
                )
            })?;
            service.master = Some(master);
            Ok(info)
        })();
        match result {
            Ok(info) => Ok((service, info)),
            Err(e) => {
                drop(service);
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = path.as_os_str().to_owned();
                    p.push(suffix);
                    let _ = std::fs::remove_file(PathBuf::from(p));
                }
                Err(e)
            }
        }
    }

    /// Opens an existing keystore, locked, as a short-lived process uses
    /// it ([`Options::default`]).
    ///
    /// # Errors
    /// `StoreNotFound`, `NotAKeystore`, `StoreCorrupt`, `StoreTooNew`,
    /// `UnsafePermissions`.
    pub fn open(path: &Path, backends: Backends) -> Result<Self> {
        Self::open_with(path, backends, Options::default())
    }

    /// Opens an existing keystore, locked, working as `options` say.
    ///
    /// # Errors
    /// As [`Service::open`].
    pub fn open_with(path: &Path, backends: Backends, options: Options) -> Result<Self> {
        Ok(Self::new(Store::open(path)?, backends, options))
    }

    fn new(store: Store, backends: Backends, options: Options) -> Self {
        let checkpointer = options.relaxed_uses.then(|| {
            store
                .start_checkpointer(std::time::Duration::from_millis(500))
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "WAL checkpoints stay on the request path");
                })
                .ok()
        });
        Self {
            store,
            backends,
            master: None,
            actor: Actor::current(),
            options,
            memory_keys: BTreeMap::new(),
            usage: Usage::default(),
            _checkpointer: checkpointer.flatten(),
        }
    }

    /// Sets who is acting (the daemon sets the client per request).
    pub fn set_actor(&mut self, actor: Actor) {
        self.actor = actor;
    }

    /// Keystore status.
    ///
    /// # Errors
    /// Database errors.
    pub fn status(&self) -> Result<Status> {
        let db = self.store.db();
        Ok(Status {
            path: self.store.path().to_owned(),
            store_id: hex::encode(self.store.store_id()),
            schema_version: crate::store::SCHEMA_VERSION,
            mk_epoch: db.mk_epoch()?,
            unlocked: self.master.is_some(),
            protectors: db.protectors()?.len(),
            keys: db.keys()?.len() + self.memory_keys.len(),
            audit_records: audit::count(&db)?,
        })
    }

    /// Whether the master key is in memory.
    pub fn is_unlocked(&self) -> bool {
        self.master.is_some()
    }

    /// Forgets the master key, every `secret`-class key and every cached
    /// data key, and ends the backends' device sessions (PKCS#11 logout,
    /// PIV card released, TPM connection closed). Writes no audit record:
    /// a short-lived process that exits calls this; the daemon calls
    /// [`Service::lock_because`].
    pub fn lock(&mut self) {
        self.master = None;
        self.memory_keys.clear();
        self.usage.forget();
        for backend in &self.backends.0 {
            backend.end_session();
        }
    }

    /// Locks as [`Service::lock`] does and, if the service was unlocked,
    /// records a `lock` audit record with `reason` first (best effort: the
    /// lock happens even if the record cannot be written).
    pub fn lock_because(&mut self, reason: &str) {
        if self.master.is_some() {
            let fields = json!({ "reason": reason, "actor": self.actor_json() });
            let mac = self.mac().ok();
            if let Err(e) = self
                .store
                .write(|db| audit::append(db, Action::Lock, true, &fields, mac.as_ref()))
            {
                tracing::warn!(error = %e, "could not record the lock in the audit log");
            }
        }
        self.lock();
    }

    /// Who is acting, as audit records name it.
    fn actor_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.actor).unwrap_or(serde_json::Value::Null)
    }

    /// The key that authenticates audit checkpoints; needs the master key.
    fn mac(&self) -> Result<Secret32> {
        let master = self.master.as_ref().ok_or(Error::Locked)?;
        Ok(audit::mac_key(master.secret(), self.store.store_id()))
    }
}

/// The backend for protectors of `kind`.
fn backend_for(backends: &Backends, kind: BackendKind) -> Result<&Arc<dyn Backend>> {
    backends.get(kind).ok_or_else(|| no_backend(kind))
}

/// A kind this build has no backend for.
fn no_backend(kind: BackendKind) -> Error {
    Error::NotSupported {
        kind: kind.to_string(),
        what: "protectors of this kind in this build of keyward",
    }
}

/// Refuses a key of the other purpose (encrypt vs sign).
fn require_purpose(key: &KeyRow, wanted: KeyPurpose) -> Result<()> {
    if key.purpose == wanted {
        return Ok(());
    }
    Err(Error::WrongPurpose {
        name: key.name.to_string(),
        actual: key.purpose.as_str(),
        wanted: match wanted {
            KeyPurpose::Encrypt => "encrypt",
            KeyPurpose::Sign => "sign",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::test_support::*;

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
}
