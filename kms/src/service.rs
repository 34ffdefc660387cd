//! The in-process key service: everything the CLI and the daemon do goes
//! through [`Service`].
//!
//! A `Service` owns one open keystore and, once unlocked, the master key.
//! Every state change is one SQLite transaction that also appends its audit
//! record: a crash leaves the old state or the new one, and an operation
//! whose audit record cannot be written does not happen.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{self, AuditRecord, AuditSummary};
use crate::backend::{Backend, BackendKind, Callbacks, EnrollRequest, Enrollment, Wrapped};
use crate::clients::{self, ClientInfo, Operation};
use crate::crypto::kw::{self, DekLabel};
use crate::crypto::{envelope, signing, stream};
use crate::keys::{DataClass, KeyName, KeyPurpose, MasterKey};
use crate::secret::{Secret32, SecretBytes, SecretString};
use crate::store::{Db, KeyRow, ProtectorRow, Store, VersionRow, now};
use crate::{Error, Result};

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

/// Which protector(s) to try when unlocking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnlockWith {
    /// Any enrolled protector, in enrollment order.
    Any,
    /// Protectors of this kind.
    Kind(BackendKind),
    /// This protector.
    Id(u32),
}

/// Options for a new named key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// Encrypt or sign.
    pub purpose: KeyPurpose,
    /// Data class (bound into AAD).
    pub class: DataClass,
    /// Rotate automatically after this many seconds (scheduler; `None`: never).
    pub rotation_period: Option<u64>,
    /// Rotate automatically after this many encryptions by one version.
    /// `None`: the default, [`DEFAULT_USAGE_LIMIT`].
    pub usage_limit: Option<u64>,
}

/// Default automatic-rotation threshold per version: 2^31 encryptions, half
/// of the 2^32 NIST SP 800-38D §8.3 allows for random 96-bit nonces.
pub const DEFAULT_USAGE_LIMIT: u64 = 1 << 31;

/// Hard limit: a version is never used for more encryptions than this.
pub const HARD_USAGE_LIMIT: u64 = 1 << 32;

/// A protector as listed (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProtectorInfo {
    /// Id, unique in the store, never reused.
    pub id: u32,
    /// Kind.
    pub kind: BackendKind,
    /// User label.
    pub label: String,
    /// Device identity, if any.
    pub device_id: Option<String>,
    /// Master-key epoch its wrap is for.
    pub mk_epoch: u32,
    /// Unix time of enrollment.
    pub created_at: i64,
}

/// One version of a named key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Version number (1-based).
    pub version: u32,
    /// Unix time it was created.
    pub created_at: i64,
    /// Encryptions reserved so far (never below the real count).
    pub uses: u64,
    /// `primary`, `active` (decrypts) or `retired`.
    pub state: String,
}

/// A named key as listed (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Name.
    pub name: KeyName,
    /// Purpose.
    pub purpose: KeyPurpose,
    /// Data class.
    pub class: DataClass,
    /// Version new data is written with.
    pub primary_version: u32,
    /// Versions below this are retired.
    pub min_decryption_version: u32,
    /// Rotation period in seconds, if any.
    pub rotation_period: Option<u64>,
    /// Automatic-rotation threshold.
    pub usage_limit: u64,
    /// Unix time of creation.
    pub created_at: i64,
    /// All versions, oldest first.
    pub versions: Vec<VersionInfo>,
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

/// Result of a decryption: the plaintext and what it was encrypted under.
#[derive(Debug)]
pub struct Decrypted {
    /// The plaintext.
    pub plaintext: SecretBytes,
    /// Key name.
    pub key: KeyName,
    /// Key version.
    pub version: u32,
}

/// Result of a streaming operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamSummary {
    /// Key name.
    pub key: KeyName,
    /// Key version.
    pub version: u32,
    /// Plaintext bytes processed.
    pub bytes: u64,
}

/// A verified signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// Key name.
    pub key: KeyName,
    /// Key version.
    pub version: u32,
    /// Signer's counter.
    pub counter: u64,
    /// Signing time (Unix seconds).
    pub timestamp: u64,
    /// Audience.
    pub audience: String,
}

/// An exported public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyExport {
    /// Key name.
    pub key: KeyName,
    /// Version.
    pub version: u32,
    /// PEM (SubjectPublicKeyInfo), as `openssl` reads it.
    pub pem: String,
    /// Raw key bytes, hex.
    pub raw_hex: String,
}

/// Accepted clock difference for [`Service::verify_fresh`], seconds.
pub const FRESHNESS_WINDOW: u64 = 300;

/// HKDF-free AAD of a master-key wrap (docs/FORMAT.md, "Protectors"):
/// `"keyward/v1/mk-wrap" || store_id || protector_id_be32 || epoch_be32 ||
/// kind`.
pub fn mk_wrap_aad(
    store_id: &[u8; 16],
    protector_id: u32,
    epoch: u32,
    kind: BackendKind,
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64);
    aad.extend_from_slice(b"keyward/v1/mk-wrap");
    aad.extend_from_slice(store_id);
    aad.extend_from_slice(&protector_id.to_be_bytes());
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad.push(kind.code());
    aad
}

/// A ciphertext moved to its key's primary version ([`Service::rewrap`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rewrapped {
    /// The new ciphertext (one-shot format).
    #[serde(skip)]
    pub ciphertext: Vec<u8>,
    /// Key name.
    pub key: KeyName,
    /// The version it is now under.
    pub version: u32,
    /// The version it was under.
    pub from_version: u32,
}

/// A fresh data key for envelope encryption ([`Service::datakey_generate`]).
#[derive(Debug)]
pub struct DataKey {
    /// The 256-bit key, for the caller to use and forget.
    pub plaintext: SecretBytes,
    /// The same key encrypted under the named key (one-shot format), to
    /// store beside the data and unwrap later.
    pub wrapped: Vec<u8>,
    /// Key name.
    pub key: KeyName,
    /// Version the key is wrapped under.
    pub version: u32,
}

/// A key rotated by the scheduler ([`Service::rotate_due`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rotated {
    /// Key name.
    pub key: KeyName,
    /// The new primary version.
    pub version: u32,
    /// Why: `period` (its rotation period elapsed).
    pub reason: &'static str,
}

/// Encryptions reserved in the store per block in daemon mode: one durable
/// commit per this many encryptions (DESIGN.md: "reserve blocks, never
/// under-count"). A crash loses at most the unused rest of a block, which
/// only over-counts.
pub const RESERVATION_BLOCK: u64 = 4096;

/// What a long-running daemon keeps between requests (all of it forgotten
/// on lock).
#[derive(Debug, Default)]
struct DaemonCache {
    /// Unwrapped data keys by (name, version), with the 40-byte wrap they
    /// came from: an entry is used only while the stored wrap is the same.
    deks: HashMap<(KeyName, u32), (Vec<u8>, Secret32)>,
    /// Reserved, unused encryptions per (name, version): `next..end`.
    reserved: HashMap<(KeyName, u32), (u64, u64)>,
    /// WAL checkpoints off the request path.
    _checkpointer: Option<crate::store::Checkpointer>,
}

/// A `secret`-class key: same shape as a stored key, but only in memory.
#[derive(Debug)]
struct MemoryKey {
    key: KeyRow,
    versions: Vec<VersionRow>,
}

/// The key service over one keystore.
#[derive(Debug)]
pub struct Service {
    store: Store,
    backends: Backends,
    master: Option<MasterKey>,
    actor: Actor,
    memory_keys: Option<BTreeMap<KeyName, MemoryKey>>,
    daemon: Option<DaemonCache>,
    /// Use records collected by [`Service::defer_uses`], not yet written.
    pending_uses: Option<Vec<PendingUse>>,
}

/// The audit record of one key use, waiting for [`Service::commit_uses`].
#[derive(Debug)]
struct PendingUse {
    action: String,
    ok: bool,
    fields: serde_json::Value,
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
        let mut service = Self {
            store,
            backends,
            master: None,
            actor: Actor::current(),
            memory_keys: None,
            daemon: None,
            pending_uses: None,
        };
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
                    "store.init",
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

    /// Opens an existing keystore, locked.
    ///
    /// # Errors
    /// `StoreNotFound`, `NotAKeystore`, `StoreCorrupt`, `StoreTooNew`,
    /// `UnsafePermissions`.
    pub fn open(path: &Path, backends: Backends) -> Result<Self> {
        let store = Store::open(path)?;
        Ok(Self {
            store,
            backends,
            master: None,
            actor: Actor::current(),
            memory_keys: None,
            daemon: None,
            pending_uses: None,
        })
    }

    /// Allows `secret`-class keys, which live only in this process's memory
    /// and are gone when it exits or locks. Only a long-running daemon
    /// should enable this.
    pub fn enable_memory_keys(&mut self) {
        self.memory_keys.get_or_insert_with(BTreeMap::new);
    }

    /// Switches to the daemon's way of working: `secret`-class keys in
    /// memory ([`Service::enable_memory_keys`]), unwrapped data keys cached
    /// until lock, encryptions reserved in blocks of [`RESERVATION_BLOCK`],
    /// WAL checkpoints on a background thread,
    /// and the audit record of each use of a key committed without `fsync`
    /// (it survives a crash of the daemon; the next change of state makes
    /// it durable against power loss). Changes of key state stay fully
    /// durable.
    pub fn enable_daemon_mode(&mut self) {
        self.enable_memory_keys();
        if self.daemon.is_none() {
            let checkpointer = self
                .store
                .start_checkpointer(std::time::Duration::from_millis(500))
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "WAL checkpoints stay on the request path");
                })
                .ok();
            self.daemon = Some(DaemonCache {
                _checkpointer: checkpointer,
                ..DaemonCache::default()
            });
        }
    }

    /// From now until [`Service::commit_uses`], collects the audit records
    /// of key uses (encrypt and decrypt in daemon mode, data keys, rewrap)
    /// in memory instead of committing each on its own, so that a batch of
    /// operations costs one transaction. **The results of the operations
    /// made meanwhile must not be released before `commit_uses` returns
    /// `Ok`**: an operation whose record was not written did not happen.
    pub fn defer_uses(&mut self) {
        self.pending_uses.get_or_insert_with(Vec::new);
    }

    /// Writes every use record collected since [`Service::defer_uses`] in
    /// one transaction (relaxed in daemon mode) and stops collecting.
    /// Returns how many were written.
    ///
    /// # Errors
    /// `AuditWrite`: none was written, and none of the operations may be
    /// reported as done.
    pub fn commit_uses(&mut self) -> Result<usize> {
        let Some(pending) = self.pending_uses.take() else {
            return Ok(0);
        };
        if pending.is_empty() {
            return Ok(0);
        }
        let mac = self.mac().ok();
        write_use(&mut self.store, self.daemon.is_some(), |db| {
            audit::append_many(
                db,
                pending.iter().map(|p| (p.action.as_str(), p.ok, &p.fields)),
                mac.as_ref(),
            )?;
            Ok(pending.len())
        })
    }

    /// Records one use of a key: collected when deferring, else committed
    /// now (relaxed in daemon mode).
    fn record_use(&mut self, action: &str, ok: bool, fields: serde_json::Value) -> Result<()> {
        if let Some(pending) = self.pending_uses.as_mut() {
            pending.push(PendingUse {
                action: action.to_owned(),
                ok,
                fields,
            });
            return Ok(());
        }
        let mac = self.mac()?;
        write_use(&mut self.store, self.daemon.is_some(), |db| {
            audit::append(db, action, ok, &fields, Some(&mac))
        })?;
        Ok(())
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
            keys: db.keys()?.len() + self.memory_keys.as_ref().map_or(0, BTreeMap::len),
            audit_records: audit::count(&db)?,
        })
    }

    /// Whether the master key is in memory.
    pub fn is_unlocked(&self) -> bool {
        self.master.is_some()
    }

    /// Recovers the master key with an enrolled protector.
    ///
    /// # Errors
    /// `WrongPassphrase`, `WrongRecoveryKey`, device errors from the
    /// backend; `NoSuchProtectorKind`, `ProtectorNotFound`.
    pub fn unlock(&mut self, with: UnlockWith, ui: &dyn Callbacks) -> Result<ProtectorInfo> {
        let store_id = *self.store.store_id();
        let (epoch, protectors) = {
            let db = self.store.db();
            (db.mk_epoch()?, db.protectors()?)
        };
        let candidates: Vec<ProtectorRow> = protectors
            .into_iter()
            .filter(|p| match with {
                UnlockWith::Any => true,
                UnlockWith::Kind(kind) => p.enrollment.kind == kind,
                UnlockWith::Id(id) => p.id == id,
            })
            .collect();
        if candidates.is_empty() {
            return Err(match with {
                UnlockWith::Id(id) => Error::ProtectorNotFound { id },
                UnlockWith::Kind(kind) => Error::NoSuchProtectorKind {
                    kind: kind.to_string(),
                },
                UnlockWith::Any => Error::NoSuchProtectorKind { kind: "any".into() },
            });
        }
        let mut last_err = None;
        let n = candidates.len();
        for (i, p) in candidates.into_iter().enumerate() {
            let Some(backend) = self.backends.get(p.enrollment.kind).cloned() else {
                last_err = Some(no_backend(p.enrollment.kind));
                continue;
            };
            let aad = mk_wrap_aad(&store_id, p.id, p.mk_epoch, p.enrollment.kind);
            match backend.unwrap(&p.enrollment, &Wrapped(p.wrapped_mk.clone()), &aad, ui) {
                Ok(secret) => {
                    if p.mk_epoch != epoch {
                        return Err(Error::StoreCorrupt {
                            path: self.store.path().to_owned(),
                            detail: format!(
                                "protector {} holds master-key epoch {} but the store is at {epoch}",
                                p.id, p.mk_epoch
                            ),
                        });
                    }
                    let master = MasterKey::from_secret(secret, epoch);
                    let mac = audit::mac_key(master.secret(), &store_id);
                    let actor = self.actor_json();
                    self.store.write(|db| {
                        audit::append(
                            db,
                            "unlock",
                            true,
                            &json!({ "protector": p.id, "kind": p.enrollment.kind, "actor": actor }),
                            Some(&mac),
                        )
                    })?;
                    self.master = Some(master);
                    return Ok(protector_info(&p));
                }
                // Nothing was tried: the caller has yet to supply the
                // secret (the daemon's 428), so there is no attempt to record.
                Err(e @ Error::SecretRequired { .. }) => return Err(e),
                Err(e) => {
                    let actor = self.actor_json();
                    // Best effort: a failed attempt is recorded if it can be;
                    // the caller sees the original error either way.
                    let _ = self.store.write(|db| {
                        audit::append(
                            db,
                            "unlock.failed",
                            false,
                            &json!({ "protector": p.id, "kind": p.enrollment.kind,
                                     "error": e.to_string(), "actor": actor }),
                            None,
                        )
                    });
                    let wrong_secret =
                        matches!(e, Error::WrongPassphrase | Error::WrongRecoveryKey);
                    if !wrong_secret || i + 1 == n {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or(Error::Locked))
    }

    /// Forgets the master key, every `secret`-class key and every cached
    /// data key, and ends the backends' device sessions (PKCS#11 logout,
    /// PIV card released, TPM connection closed). Writes no audit record:
    /// a short-lived process that exits calls this; the daemon calls
    /// [`Service::lock_because`].
    pub fn lock(&mut self) {
        self.master = None;
        if let Some(keys) = self.memory_keys.as_mut() {
            keys.clear();
        }
        if let Some(cache) = self.daemon.as_mut() {
            cache.deks.clear();
            cache.reserved.clear();
        }
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
                .write(|db| audit::append(db, "lock", true, &fields, mac.as_ref()))
            {
                tracing::warn!(error = %e, "could not record the lock in the audit log");
            }
        }
        self.lock();
    }

    /// Enrolled protectors.
    ///
    /// # Errors
    /// Database errors.
    pub fn protectors(&self) -> Result<Vec<ProtectorInfo>> {
        Ok(self
            .store
            .db()
            .protectors()?
            .iter()
            .map(protector_info)
            .collect())
    }

    /// The stored descriptor of protector `id`: no secret, only what its
    /// backend needs to find the device and the public keys (to sign with a
    /// device key, or to export its public key). Needs no unlock.
    ///
    /// # Errors
    /// `ProtectorNotFound`, database errors.
    pub fn enrollment(&self, id: u32) -> Result<Enrollment> {
        self.store
            .db()
            .protectors()?
            .into_iter()
            .find(|p| p.id == id)
            .map(|p| p.enrollment)
            .ok_or(Error::ProtectorNotFound { id })
    }

    /// Enrolls another protector (needs the store unlocked).
    ///
    /// # Errors
    /// `Locked`, backend errors.
    pub fn enroll(
        &mut self,
        kind: BackendKind,
        request: &EnrollRequest,
        ui: &dyn Callbacks,
    ) -> Result<ProtectorInfo> {
        let master = self.master.as_ref().ok_or(Error::Locked)?;
        let backend = backend_for(&self.backends, kind)?.clone();
        let enrollment = backend.enroll(request, ui)?;
        let store_id = *self.store.store_id();
        let mac = audit::mac_key(master.secret(), &store_id);
        let actor = self.actor_json();
        self.store.write(|db| {
            add_protector(
                db,
                &store_id,
                master,
                backend.as_ref(),
                enrollment,
                &request.label,
                &actor,
                &mac,
            )
        })
    }

    /// Replaces protector `old` with a fresh enrollment of `kind`, in one
    /// transaction: either both the new protector exists and the old one is
    /// gone, or nothing changed (e.g. re-sealing to a TPM after a firmware
    /// update changed its PCRs, having unlocked with the recovery key).
    ///
    /// # Errors
    /// `Locked`, `ProtectorNotFound`, backend errors.
    pub fn replace_protector(
        &mut self,
        old: u32,
        kind: BackendKind,
        request: &EnrollRequest,
        ui: &dyn Callbacks,
    ) -> Result<ProtectorInfo> {
        let master = self.master.as_ref().ok_or(Error::Locked)?;
        if !self.store.db().protectors()?.iter().any(|p| p.id == old) {
            return Err(Error::ProtectorNotFound { id: old });
        }
        let backend = backend_for(&self.backends, kind)?.clone();
        let enrollment = backend.enroll(request, ui)?;
        let store_id = *self.store.store_id();
        let mac = audit::mac_key(master.secret(), &store_id);
        let actor = self.actor_json();
        self.store.write(|db| {
            let info = add_protector(
                db,
                &store_id,
                master,
                backend.as_ref(),
                enrollment,
                &request.label,
                &actor,
                &mac,
            )?;
            if !db.delete_protector(old)? {
                return Err(Error::ProtectorNotFound { id: old });
            }
            audit::append(
                db,
                "protector.replace",
                true,
                &json!({ "old": old, "new": info.id, "kind": kind, "actor": actor }),
                Some(&mac),
            )?;
            Ok(info)
        })
    }

    /// Removes a protector; never the last one. Needs the store unlocked,
    /// so that only someone who can unlock can take a way to unlock away.
    ///
    /// # Errors
    /// `Locked`, `LastProtector`, `ProtectorNotFound`.
    pub fn remove_protector(&mut self, id: u32) -> Result<()> {
        let mac = self.mac()?;
        let actor = self.actor_json();
        self.store.write(|db| {
            let all = db.protectors()?;
            let Some(p) = all.iter().find(|p| p.id == id) else {
                return Err(Error::ProtectorNotFound { id });
            };
            if all.len() <= 1 {
                return Err(Error::LastProtector);
            }
            db.delete_protector(id)?;
            audit::append(
                db,
                "protector.remove",
                true,
                &json!({ "protector": id, "kind": p.enrollment.kind, "label": p.label, "actor": actor }),
                Some(&mac),
            )?;
            Ok(())
        })
    }

    /// Creates a named key with version 1.
    ///
    /// # Errors
    /// `Locked`, `KeyExists`, `ClassPolicy` for a `secret` key without
    /// [`Service::enable_memory_keys`].
    pub fn create_key(&mut self, name: &KeyName, spec: &KeySpec) -> Result<KeyInfo> {
        let master = self.master.as_ref().ok_or(Error::Locked)?;
        let usage_limit = spec.usage_limit.unwrap_or(DEFAULT_USAGE_LIMIT);
        if usage_limit == 0 || usage_limit > HARD_USAGE_LIMIT {
            return Err(Error::InvalidArgument {
                what: format!("usage limit must be between 1 and 2^32, not {usage_limit}"),
            });
        }
        if spec.rotation_period == Some(0) {
            return Err(Error::InvalidArgument {
                what: "rotation period must be at least one second".into(),
            });
        }
        let store_id = *self.store.store_id();
        let key = KeyRow {
            name: name.clone(),
            purpose: spec.purpose,
            class: spec.class,
            primary_version: 1,
            min_decryption_version: 1,
            rotation_period: spec.rotation_period,
            usage_limit,
            created_at: now(),
            sign_counter: 0,
        };
        let v1 = new_version(master, &store_id, &key, 1)?;
        let mac = audit::mac_key(master.secret(), &store_id);
        let actor = self.actor_json();
        let fields = json!({ "key": name, "purpose": spec.purpose, "class": spec.class,
                             "version": 1, "actor": actor });
        if spec.class == DataClass::Secret {
            let Some(memory) = self.memory_keys.as_mut() else {
                return Err(Error::ClassPolicy {
                    what: "secret-class keys live only in the memory of a running daemon \
                           (keyward serve); they are never written to the store",
                });
            };
            if memory.contains_key(name) || self.store.db().key(name).is_ok() {
                return Err(Error::KeyExists {
                    name: name.to_string(),
                });
            }
            self.store
                .write(|db| audit::append(db, "key.create", true, &fields, Some(&mac)))?;
            memory.insert(
                name.clone(),
                MemoryKey {
                    key,
                    versions: vec![v1],
                },
            );
        } else {
            if self
                .memory_keys
                .as_ref()
                .is_some_and(|m| m.contains_key(name))
            {
                return Err(Error::KeyExists {
                    name: name.to_string(),
                });
            }
            self.store.write(|db| {
                db.insert_key(&key)?;
                db.insert_version(name, &v1)?;
                audit::append(db, "key.create", true, &fields, Some(&mac))?;
                Ok(())
            })?;
        }
        self.key(name)
    }

    /// All named keys.
    ///
    /// # Errors
    /// Database errors.
    pub fn keys(&self) -> Result<Vec<KeyInfo>> {
        let db = self.store.db();
        let mut out = Vec::new();
        for key in db.keys()? {
            let versions = db.versions(&key.name)?;
            out.push(key_info(&key, &versions));
        }
        if let Some(memory) = &self.memory_keys {
            out.extend(memory.values().map(|m| key_info(&m.key, &m.versions)));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One named key.
    ///
    /// # Errors
    /// `KeyNotFound`.
    pub fn key(&self, name: &KeyName) -> Result<KeyInfo> {
        if let Some(m) = self.memory_keys.as_ref().and_then(|m| m.get(name)) {
            return Ok(key_info(&m.key, &m.versions));
        }
        let db = self.store.db();
        let key = db.key(name)?;
        Ok(key_info(&key, &db.versions(name)?))
    }

    /// Adds a new primary version.
    ///
    /// # Errors
    /// `Locked`, `KeyNotFound`.
    pub fn rotate_key(&mut self, name: &KeyName) -> Result<KeyInfo> {
        self.rotate_key_because(name, "requested")?;
        self.key(name)
    }

    fn rotate_key_because(&mut self, name: &KeyName, reason: &str) -> Result<u32> {
        let master = self.master.as_ref().ok_or(Error::Locked)?;
        let store_id = *self.store.store_id();
        let mac = audit::mac_key(master.secret(), &store_id);
        let actor = self.actor_json();
        if let Some(m) = self.memory_keys.as_mut().and_then(|m| m.get_mut(name)) {
            let version = m.key.primary_version + 1;
            let v = new_version(master, &store_id, &m.key, version)?;
            let fields =
                json!({ "key": name, "version": version, "reason": reason, "actor": actor });
            self.store
                .write(|db| audit::append(db, "key.rotate", true, &fields, Some(&mac)))?;
            m.versions.push(v);
            m.key.primary_version = version;
            return Ok(version);
        }
        self.store
            .write(|db| rotate_in_tx(db, master, &store_id, name, reason, &actor, &mac))
    }

    /// Retires every version below `min_decryption_version` (or, with a
    /// lower value, brings retired versions back: their material is kept).
    ///
    /// # Errors
    /// `KeyNotFound`, `InvalidArgument` (0 or above the primary version).
    pub fn retire(&mut self, name: &KeyName, min_decryption_version: u32) -> Result<KeyInfo> {
        let mac = self.mac()?;
        let actor = self.actor_json();
        let check = |key: &KeyRow| {
            if min_decryption_version == 0 || min_decryption_version > key.primary_version {
                return Err(Error::InvalidArgument {
                    what: format!(
                        "minimum decryption version must be between 1 and the primary version {}",
                        key.primary_version
                    ),
                });
            }
            Ok(())
        };
        let fields = json!({ "key": name, "min_decryption_version": min_decryption_version,
                             "actor": actor });
        if let Some(m) = self.memory_keys.as_mut().and_then(|m| m.get_mut(name)) {
            check(&m.key)?;
            self.store
                .write(|db| audit::append(db, "key.retire", true, &fields, Some(&mac)))?;
            m.key.min_decryption_version = min_decryption_version;
        } else {
            self.store.write(|db| {
                let key = db.key(name)?;
                check(&key)?;
                db.set_versions(name, key.primary_version, min_decryption_version)?;
                audit::append(db, "key.retire", true, &fields, Some(&mac))?;
                Ok(())
            })?;
        }
        self.key(name)
    }

    /// Encrypts a small message (one-shot format).
    ///
    /// # Errors
    /// `Locked`, `KeyNotFound`, `WrongPurpose`.
    pub fn encrypt(&mut self, name: &KeyName, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let (key, version, dek) =
            self.reserve_encryption(name, "encrypt", Some(plaintext.len() as u64))?;
        envelope::seal(&dek, name, version, key.class, context, plaintext)
    }

    /// Decrypts a one-shot ciphertext.
    ///
    /// # Errors
    /// `DecryptionFailed`, `VersionRetired`, `KeyNotFound`, `Locked`.
    pub fn decrypt(&mut self, context: &[u8], ciphertext: &[u8]) -> Result<Decrypted> {
        self.decrypt_as("decrypt", context, ciphertext)
    }

    fn decrypt_as(&mut self, action: &str, context: &[u8], ciphertext: &[u8]) -> Result<Decrypted> {
        let (header, _) = envelope::parse_header(ciphertext)?;
        if header.mode != envelope::Mode::OneShot {
            // A stream ciphertext that is all here (the CLI writes this
            // format, and the daemon gets whole small files): decrypt it as
            // the stream it is, into memory.
            let mut plaintext = zeroize::Zeroizing::new(Vec::with_capacity(ciphertext.len()));
            let summary = self.decrypt_stream(
                context,
                &mut std::io::Cursor::new(ciphertext),
                &mut *plaintext,
                &mut |_| {},
            )?;
            return Ok(Decrypted {
                plaintext: SecretBytes::new(std::mem::take(&mut *plaintext)),
                key: summary.key,
                version: summary.version,
            });
        }
        let (key, dek) = self.decryption_key(&header.key, header.version)?;
        let result = envelope::open(&dek, key.class, context, ciphertext);
        self.audit_use(
            action,
            &header.key,
            header.version,
            key.class,
            Some(ciphertext.len() as u64),
            result.is_ok(),
        )?;
        Ok(Decrypted {
            plaintext: result?,
            key: header.key,
            version: header.version,
        })
    }

    /// Decrypts a one-shot ciphertext and encrypts the same plaintext under
    /// the key's primary version, without returning the plaintext (Vault
    /// transit `rewrap`, AWS KMS `ReEncrypt`). The context stays the same.
    ///
    /// # Errors
    /// As [`Service::decrypt`] and [`Service::encrypt`].
    pub fn rewrap(&mut self, context: &[u8], ciphertext: &[u8]) -> Result<Rewrapped> {
        let old = self.decrypt_as("rewrap", context, ciphertext)?;
        let (key, version, dek) = self.reserve_encryption(
            &old.key,
            "rewrap.encrypt",
            Some(old.plaintext.expose().len() as u64),
        )?;
        let ciphertext = envelope::seal(
            &dek,
            &old.key,
            version,
            key.class,
            context,
            old.plaintext.expose(),
        )?;
        Ok(Rewrapped {
            ciphertext,
            key: old.key,
            version,
            from_version: old.version,
        })
    }

    /// Generates a random 256-bit data key and returns it together with its
    /// encryption under `name` (AWS KMS `GenerateDataKey`): the caller
    /// encrypts its data with the plaintext key, forgets it, and stores the
    /// wrapped copy to unwrap with [`Service::datakey_unwrap`].
    ///
    /// # Errors
    /// As [`Service::encrypt`].
    pub fn datakey_generate(&mut self, name: &KeyName, context: &[u8]) -> Result<DataKey> {
        let mut raw = zeroize::Zeroizing::new(vec![0u8; 32]);
        crate::secret::random_bytes(&mut raw)?;
        let plaintext = SecretBytes::new(std::mem::take(&mut *raw));
        let (key, version, dek) = self.reserve_encryption(name, "datakey.generate", Some(32))?;
        let wrapped = envelope::seal(&dek, name, version, key.class, context, plaintext.expose())?;
        Ok(DataKey {
            plaintext,
            wrapped,
            key: name.clone(),
            version,
        })
    }

    /// Unwraps a data key made by [`Service::datakey_generate`] (AWS KMS
    /// `Decrypt`).
    ///
    /// # Errors
    /// As [`Service::decrypt`].
    pub fn datakey_unwrap(&mut self, context: &[u8], wrapped: &[u8]) -> Result<Decrypted> {
        self.decrypt_as("datakey.unwrap", context, wrapped)
    }

    /// Rotates every key whose rotation period has elapsed since its primary
    /// version was created (the scheduler; `keyward rotate --due`).
    ///
    /// # Errors
    /// `Locked`; the first rotation that fails (earlier ones stay done).
    pub fn rotate_due(&mut self) -> Result<Vec<Rotated>> {
        if self.master.is_none() {
            return Err(Error::Locked);
        }
        let now = now();
        let mut due = Vec::new();
        for key in self.keys()? {
            let Some(period) = key.rotation_period else {
                continue;
            };
            let primary_created = key
                .versions
                .iter()
                .find(|v| v.version == key.primary_version)
                .map_or(key.created_at, |v| v.created_at);
            let period = i64::try_from(period).unwrap_or(i64::MAX);
            if primary_created.saturating_add(period) <= now {
                due.push(key.name);
            }
        }
        let mut rotated = Vec::new();
        for name in due {
            let version = self.rotate_key_because(&name, "period")?;
            tracing::info!(key = %name, version, "rotated: its rotation period elapsed");
            rotated.push(Rotated {
                key: name,
                version,
                reason: "period",
            });
        }
        Ok(rotated)
    }

    /// Signs `message` with the key of a device protector (the TPM's or
    /// token's signing key, not a keyward signing key): ECDSA P-256 (DER)
    /// or Ed25519, as the enrollment has. The daemon keeps the device
    /// session of the unlock open, so no PIN is asked again while unlocked.
    ///
    /// # Errors
    /// `ProtectorNotFound`, `NotSupported` (a protector that cannot sign),
    /// the device's errors; `AuditWrite`.
    pub fn device_sign(
        &mut self,
        id: u32,
        message: &[u8],
        ui: &dyn Callbacks,
    ) -> Result<crate::backend::Signature> {
        let enrollment = self.enrollment(id)?;
        let backend = backend_for(&self.backends, enrollment.kind)?.clone();
        let signature = backend.sign(&enrollment, message, ui)?;
        let fields = json!({ "protector": id, "kind": enrollment.kind,
                             "algorithm": format!("{:?}", signature.algorithm),
                             "size": message.len(), "actor": self.actor_json() });
        let mac = self.mac().ok();
        write_use(&mut self.store, self.daemon.is_some(), |db| {
            audit::append(db, "device.sign", true, &fields, mac.as_ref())
        })?;
        Ok(signature)
    }

    /// Records an event that happened outside the service (the daemon's
    /// refused peers, bursts of refused requests, a tampered socket) in the
    /// audit log, authenticated with the master key when unlocked.
    ///
    /// # Errors
    /// `AuditWrite`.
    pub fn record_event(
        &mut self,
        action: &str,
        ok: bool,
        fields: &serde_json::Value,
    ) -> Result<u64> {
        let mac = self.mac().ok();
        self.store
            .write(|db| audit::append(db, action, ok, fields, mac.as_ref()))
    }

    /// Adds a daemon client with a grant and returns it with its token,
    /// which is shown only now (the store keeps its SHA-256).
    ///
    /// # Errors
    /// `InvalidArgument` (name, empty grant), `InvalidKeyName`,
    /// `ClientExists`.
    pub fn client_add(
        &mut self,
        name: &str,
        allow: &[Operation],
        keys: &[String],
    ) -> Result<(ClientInfo, SecretString)> {
        clients::check_name(name)?;
        let (allow, keys) = clients::check_grant(allow, keys)?;
        let token = clients::new_token()?;
        let info = ClientInfo {
            name: name.to_owned(),
            allow,
            keys,
            created_at: now(),
            last_used_at: None,
            revoked_at: None,
        };
        let fields = json!({ "client": name, "allow": info.allow, "keys": info.keys,
                             "actor": self.actor_json() });
        let mac = self.mac().ok();
        let hash = clients::token_hash(&token);
        self.store.write(|db| {
            db.insert_client(&info, &hash)?;
            audit::append(db, "client.add", true, &fields, mac.as_ref())?;
            Ok(())
        })?;
        Ok((info, token))
    }

    /// Every client, revoked ones included.
    ///
    /// # Errors
    /// Database errors.
    pub fn clients(&self) -> Result<Vec<ClientInfo>> {
        self.store.db().clients()
    }

    /// Revokes one client: its token stops working at once.
    ///
    /// # Errors
    /// `ClientNotFound` (no such active client).
    pub fn client_revoke(&mut self, name: &str) -> Result<()> {
        let fields = json!({ "client": name, "actor": self.actor_json() });
        let mac = self.mac().ok();
        self.store.write(|db| {
            if db.revoke_clients(Some(name), now())? == 0 {
                return Err(Error::ClientNotFound {
                    name: name.to_owned(),
                });
            }
            audit::append(db, "client.revoke", true, &fields, mac.as_ref())?;
            Ok(())
        })
    }

    /// Revokes every client ("revoke all sessions"); returns how many.
    ///
    /// # Errors
    /// `AuditWrite`.
    pub fn client_revoke_all(&mut self) -> Result<usize> {
        let actor = self.actor_json();
        let mac = self.mac().ok();
        self.store.write(|db| {
            let n = db.revoke_clients(None, now())?;
            audit::append(
                db,
                "client.revoke_all",
                true,
                &json!({ "revoked": n, "actor": actor }),
                mac.as_ref(),
            )?;
            Ok(n)
        })
    }

    /// The active client holding `token`. Records the use at most once a
    /// minute (without `fsync`).
    ///
    /// # Errors
    /// `Unauthorized` for a malformed, unknown or revoked token.
    pub fn authenticate(&mut self, token: &str) -> Result<ClientInfo> {
        if !clients::looks_like_token(token) {
            return Err(Error::Unauthorized);
        }
        let hash = clients::token_hash(&SecretString::from(token.to_owned()));
        let mut info = self
            .store
            .db()
            .client_by_token(&hash)?
            .ok_or(Error::Unauthorized)?;
        let now = now();
        if info.last_used_at.is_none_or(|t| now - t >= 60) {
            self.store
                .write_relaxed(|db| db.touch_client(&info.name, now))?;
            info.last_used_at = Some(now);
        }
        Ok(info)
    }

    /// Encrypts a stream of any length in constant memory.
    ///
    /// # Errors
    /// As [`Service::encrypt`], plus `Io`.
    pub fn encrypt_stream(
        &mut self,
        name: &KeyName,
        context: &[u8],
        reader: &mut dyn Read,
        writer: &mut (dyn Write + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<StreamSummary> {
        // A stream uses its own key derived from a fresh salt, so it counts
        // as one use of the data-key version.
        let (key, version, dek) = self.reserve_encryption(name, "encrypt.stream", None)?;
        // The writer is `Send` so that writes run on the stream's second
        // thread, overlapping the kernel's copy with encryption.
        let result = stream::encrypt_send(
            &dek, name, version, key.class, context, reader, writer, progress,
        );
        self.audit_stream_end("encrypt.stream.end", name, version, &result);
        Ok(StreamSummary {
            key: name.clone(),
            version,
            bytes: result?,
        })
    }

    /// Decrypts either format read from `reader`. Stream plaintext is
    /// written chunk by chunk, each only after its tag verified; the audit
    /// record is written before the first byte.
    ///
    /// # Errors
    /// As [`Service::decrypt`], plus `Truncated` and `Io`.
    pub fn decrypt_stream(
        &mut self,
        context: &[u8],
        reader: &mut dyn Read,
        writer: &mut (dyn Write + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<StreamSummary> {
        let (header, raw) = stream::read_header(reader)?;
        let (key, dek) = self.decryption_key(&header.key, header.version)?;
        match header.mode {
            envelope::Mode::OneShot => {
                let mut ciphertext = raw;
                reader
                    .take(envelope::MAX_CIPHERTEXT_LEN)
                    .read_to_end(&mut ciphertext)
                    .map_err(|e| Error::io("cannot read the ciphertext", e))?;
                let result = envelope::open(&dek, key.class, context, &ciphertext);
                self.audit_use(
                    "decrypt",
                    &header.key,
                    header.version,
                    key.class,
                    Some(ciphertext.len() as u64),
                    result.is_ok(),
                )?;
                let plain = result?;
                writer
                    .write_all(plain.expose())
                    .map_err(|e| Error::io("cannot write the plaintext", e))?;
                progress(plain.expose().len() as u64);
                Ok(StreamSummary {
                    key: header.key,
                    version: header.version,
                    bytes: plain.expose().len() as u64,
                })
            }
            envelope::Mode::Stream => {
                self.audit_use(
                    "decrypt.stream",
                    &header.key,
                    header.version,
                    key.class,
                    None,
                    true,
                )?;
                let result =
                    stream::decrypt_send(&dek, key.class, context, &raw, reader, writer, progress);
                self.audit_stream_end("decrypt.stream.end", &header.key, header.version, &result);
                Ok(StreamSummary {
                    key: header.key,
                    version: header.version,
                    bytes: result?,
                })
            }
        }
    }

    /// Signs `message` with the primary version of a signing key.
    ///
    /// # Errors
    /// `Locked`, `KeyNotFound`, `WrongPurpose`.
    pub fn sign(
        &mut self,
        name: &KeyName,
        audience: &str,
        message: &mut dyn Read,
    ) -> Result<Vec<u8>> {
        let master = self.master.as_ref().ok_or(Error::Locked)?;
        let store_id = *self.store.store_id();
        let mac = audit::mac_key(master.secret(), &store_id);
        let actor = self.actor_json();
        let (key, version, counter) = if let Some(m) =
            self.memory_keys.as_mut().and_then(|m| m.get_mut(name))
        {
            require_purpose(&m.key, KeyPurpose::Sign)?;
            m.key.sign_counter += 1;
            let v = m.versions.last().cloned().ok_or(Error::VersionNotFound {
                name: name.to_string(),
                version: m.key.primary_version,
            })?;
            let fields = json!({ "key": name, "version": v.version, "counter": m.key.sign_counter,
                                 "audience": audience, "actor": actor });
            self.store
                .write(|db| audit::append(db, "sign", true, &fields, Some(&mac)))?;
            (m.key.clone(), v, m.key.sign_counter)
        } else {
            write_use(&mut self.store, self.daemon.is_some(), |db| {
                let key = db.key(name)?;
                require_purpose(&key, KeyPurpose::Sign)?;
                let v = db.version(name, key.primary_version)?;
                let counter = db.next_sign_counter(name)?;
                audit::append(
                    db,
                    "sign",
                    true,
                    &json!({ "key": name, "version": v.version, "counter": counter,
                             "audience": audience, "actor": actor }),
                    Some(&mac),
                )?;
                Ok((key, v, counter))
            })?
        };
        let seed = unwrap_version(master, &store_id, &key, &version)?;
        let header = signing::SignedHeader {
            key: name.clone(),
            version: version.version,
            signer: store_id,
            counter,
            timestamp: u64::try_from(now()).unwrap_or(0),
            audience: audience.to_owned(),
        };
        signing::sign(&seed, &header, message)
    }

    /// Verifies a signature blob over `message`: strict Ed25519 and the
    /// audience. (See [`Service::verify_fresh`] for messages, which also
    /// checks freshness and replays.)
    ///
    /// # Errors
    /// `InvalidSignature`, `NotFresh` (audience), `KeyNotFound`,
    /// `VersionRetired`.
    pub fn verify(
        &mut self,
        audience: &str,
        signature: &[u8],
        message: &mut dyn Read,
    ) -> Result<Verified> {
        let header = self.verify_signature(signature, message)?;
        if header.audience != audience {
            return Err(Error::NotFresh {
                reason: "the message is addressed to another audience",
            });
        }
        Ok(verified(header))
    }

    /// Verifies a signed message as [`Service::verify`] does, and also
    /// refuses one signed more than [`FRESHNESS_WINDOW`] seconds from now or
    /// whose counter is not above the last one accepted from that signer
    /// (which it then records).
    ///
    /// # Errors
    /// As [`Service::verify`], plus `Replay` and `NotFresh`.
    pub fn verify_fresh(
        &mut self,
        audience: &str,
        signature: &[u8],
        message: &mut dyn Read,
    ) -> Result<Verified> {
        let v = self.verify(audience, signature, message)?;
        let now = u64::try_from(now()).unwrap_or(0);
        if v.timestamp.abs_diff(now) > FRESHNESS_WINDOW {
            return Err(Error::NotFresh {
                reason: "signed outside the freshness window",
            });
        }
        let header = signing::parse(signature)?;
        let actor = self.actor_json();
        self.store.write(|db| {
            let seen = db.replay_counter(&header.key, &header.signer)?;
            if seen.is_some_and(|max| header.counter <= max) {
                return Err(Error::Replay {
                    counter: header.counter,
                });
            }
            db.set_replay_counter(&header.key, &header.signer, header.counter)?;
            audit::append(
                db,
                "verify.accept",
                true,
                &json!({ "key": header.key, "version": header.version, "counter": header.counter,
                         "signer": hex::encode(header.signer), "actor": actor }),
                None,
            )?;
            Ok(())
        })?;
        Ok(v)
    }

    /// The public key of a signing key version (primary if `None`). Every
    /// export is audited (`key.export`, a security event of the daemon).
    ///
    /// # Errors
    /// `KeyNotFound`, `VersionNotFound`, `WrongPurpose`; `AuditWrite`.
    pub fn export_public(
        &mut self,
        name: &KeyName,
        version: Option<u32>,
    ) -> Result<PublicKeyExport> {
        let (key, v) = self.key_version(name, version)?;
        require_purpose(&key, KeyPurpose::Sign)?;
        let public = self.public_key_of(&key, &v)?;
        // SubjectPublicKeyInfo for Ed25519 (RFC 8410 §4): a fixed 12-byte
        // prefix and the 32-byte key.
        let mut der = hex::decode("302a300506032b6570032100").expect("constant hex");
        der.extend_from_slice(&public);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let fields = json!({ "key": name, "version": v.version, "format": "spki-pem",
                             "actor": self.actor_json() });
        let mac = self.mac().ok();
        self.store
            .write(|db| audit::append(db, "key.export", true, &fields, mac.as_ref()))?;
        Ok(PublicKeyExport {
            key: name.clone(),
            version: v.version,
            pem: format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"),
            raw_hex: hex::encode(public),
        })
    }

    /// Replaces the master key: re-wraps every data-key version and the new
    /// master key for every protector, in one transaction. Returns the new
    /// epoch.
    ///
    /// # Errors
    /// `Locked`, backend wrap errors (nothing changes then).
    pub fn rotate_master(&mut self) -> Result<u32> {
        let old = self.master.as_ref().ok_or(Error::Locked)?;
        let epoch = old.epoch().checked_add(1).ok_or(Error::InvalidArgument {
            what: "master-key epoch exhausted".into(),
        })?;
        let new = MasterKey::generate(epoch)?;
        let store_id = *self.store.store_id();
        let new_mac = audit::mac_key(new.secret(), &store_id);
        let actor = self.actor_json();
        let backends = &self.backends;
        // Memory keys are re-wrapped first and swapped in only after commit.
        let mut memory_rewrapped = Vec::new();
        if let Some(memory) = &self.memory_keys {
            for (name, m) in memory {
                let mut versions = Vec::new();
                for v in &m.versions {
                    let dek = unwrap_version(old, &store_id, &m.key, v)?;
                    let mut v = v.clone();
                    v.wrapped = kw::wrap(&kek(&new, &store_id, &m.key, v.version), &dek).to_vec();
                    versions.push(v);
                }
                memory_rewrapped.push((name.clone(), versions));
            }
        }
        let (versions, protectors) = self.store.write(|db| {
            let all = db.all_versions()?;
            for (key, v) in &all {
                let dek = unwrap_version(old, &store_id, key, v)?;
                let wrapped = kw::wrap(&kek(&new, &store_id, key, v.version), &dek);
                db.update_version_wrap(&key.name, v.version, &wrapped)?;
            }
            let protectors = db.protectors()?;
            for p in &protectors {
                let backend = backend_for(backends, p.enrollment.kind)?;
                let aad = mk_wrap_aad(&store_id, p.id, epoch, p.enrollment.kind);
                let wrapped = backend.wrap(&p.enrollment, new.secret(), &aad)?;
                db.update_protector_wrap(p.id, &wrapped.0, epoch)?;
            }
            db.set_meta("mk_epoch", &epoch)?;
            audit::remac(db, &new_mac)?;
            audit::append(
                db,
                "master.rotate",
                true,
                &json!({ "epoch": epoch, "versions": all.len(), "protectors": protectors.len(),
                         "actor": actor }),
                Some(&new_mac),
            )?;
            Ok((all.len(), protectors.len()))
        })?;
        tracing::info!(epoch, versions, protectors, "master key rotated");
        if let Some(memory) = self.memory_keys.as_mut() {
            for (name, versions) in memory_rewrapped {
                if let Some(m) = memory.get_mut(&name) {
                    m.versions = versions;
                }
            }
        }
        self.master = Some(new);
        Ok(epoch)
    }

    /// Audit records, oldest first, from `since` (sequence number).
    ///
    /// # Errors
    /// Database errors.
    pub fn audit_records(&self, since: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        audit::records(&self.store.db(), since, limit)
    }

    /// Verifies the whole audit chain (and, when unlocked, the newest
    /// checkpoint authenticated with the master key).
    ///
    /// # Errors
    /// `AuditTampered` with the first bad record.
    pub fn audit_verify(&self) -> Result<AuditSummary> {
        let mac = self
            .master
            .as_ref()
            .map(|m| audit::mac_key(m.secret(), self.store.store_id()));
        audit::verify(&self.store.db(), mac.as_ref())
    }

    // ---- internals ---------------------------------------------------------

    fn actor_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.actor).unwrap_or(serde_json::Value::Null)
    }

    fn mac(&self) -> Result<Secret32> {
        let master = self.master.as_ref().ok_or(Error::Locked)?;
        Ok(audit::mac_key(master.secret(), self.store.store_id()))
    }

    /// Counts one encryption against the primary version before it happens
    /// (so a crash can only over-count), rotating first if the version
    /// reached its usage limit, and returns the key to use.
    fn reserve_encryption(
        &mut self,
        name: &KeyName,
        action: &str,
        size: Option<u64>,
    ) -> Result<(KeyRow, u32, Secret32)> {
        let master = self.master.as_ref().ok_or(Error::Locked)?;
        let store_id = *self.store.store_id();
        let mac = audit::mac_key(master.secret(), &store_id);
        let actor = self.actor_json();
        if let Some(m) = self.memory_keys.as_mut().and_then(|m| m.get_mut(name)) {
            require_purpose(&m.key, KeyPurpose::Encrypt)?;
            if m.versions
                .last()
                .is_some_and(|v| v.uses_reserved >= m.key.usage_limit)
            {
                let version = m.key.primary_version + 1;
                m.versions
                    .push(new_version(master, &store_id, &m.key, version)?);
                m.key.primary_version = version;
            }
            let v = m.versions.last_mut().ok_or(Error::VersionNotFound {
                name: name.to_string(),
                version: m.key.primary_version,
            })?;
            v.uses_reserved += 1;
            let fields = json!({ "key": name, "version": v.version, "class": m.key.class,
                                 "size": size, "actor": actor });
            self.store
                .write(|db| audit::append(db, action, true, &fields, Some(&mac)))?;
            let dek = unwrap_version(master, &store_id, &m.key, v)?;
            return Ok((m.key.clone(), v.version, dek));
        }
        if self.daemon.is_some() {
            let (key, v) = self.take_reserved(name)?;
            let fields = json!({ "key": name, "version": v.version, "class": key.class,
                                 "size": size, "actor": actor });
            self.record_use(action, true, fields)?;
            let dek = self.dek(&key, &v)?;
            return Ok((key, v.version, dek));
        }
        let (key, v) = self.store.write(|db| {
            let mut key = db.key(name)?;
            require_purpose(&key, KeyPurpose::Encrypt)?;
            let mut v = db.version(name, key.primary_version)?;
            if v.uses_reserved >= key.usage_limit {
                let version =
                    rotate_in_tx(db, master, &store_id, name, "usage-limit", &actor, &mac)?;
                key = db.key(name)?;
                v = db.version(name, version)?;
            }
            if v.uses_reserved >= HARD_USAGE_LIMIT {
                return Err(Error::UsageLimit {
                    name: name.to_string(),
                    version: v.version,
                });
            }
            v.uses_reserved += 1;
            db.set_uses_reserved(name, v.version, v.uses_reserved)?;
            audit::append(
                db,
                action,
                true,
                &json!({ "key": name, "version": v.version, "class": key.class, "size": size,
                         "actor": actor }),
                Some(&mac),
            )?;
            Ok((key, v))
        })?;
        let dek = unwrap_version(master, &store_id, &key, &v)?;
        Ok((key, v.version, dek))
    }

    /// Daemon mode: takes one encryption from the current block of the
    /// primary version, reserving a new block (one durable commit, rotating
    /// first at the usage limit) when the block is used up.
    fn take_reserved(&mut self, name: &KeyName) -> Result<(KeyRow, VersionRow)> {
        let master = self.master.as_ref().ok_or(Error::Locked)?;
        let key = self.store.db().key(name)?;
        require_purpose(&key, KeyPurpose::Encrypt)?;
        let cache = self.daemon.as_mut().ok_or(Error::Locked)?;
        if let Some((next, end)) = cache.reserved.get_mut(&(name.clone(), key.primary_version)) {
            if *next < *end {
                *next += 1;
                let v = self.store.db().version(name, key.primary_version)?;
                return Ok((key, v));
            }
        }
        let store_id = *self.store.store_id();
        let mac = audit::mac_key(master.secret(), &store_id);
        let actor = self.actor_json();
        let (key, v, start, end) = self.store.write(|db| {
            let mut key = db.key(name)?;
            require_purpose(&key, KeyPurpose::Encrypt)?;
            let mut v = db.version(name, key.primary_version)?;
            if v.uses_reserved >= key.usage_limit {
                let version =
                    rotate_in_tx(db, master, &store_id, name, "usage-limit", &actor, &mac)?;
                key = db.key(name)?;
                v = db.version(name, version)?;
            }
            if v.uses_reserved >= HARD_USAGE_LIMIT {
                return Err(Error::UsageLimit {
                    name: name.to_string(),
                    version: v.version,
                });
            }
            let start = v.uses_reserved;
            let end = (start + RESERVATION_BLOCK)
                .min(key.usage_limit.max(start + 1))
                .min(HARD_USAGE_LIMIT);
            db.set_uses_reserved(name, v.version, end)?;
            Ok((key, v, start, end))
        })?;
        if let Some(cache) = self.daemon.as_mut() {
            cache
                .reserved
                .insert((name.clone(), v.version), (start + 1, end));
        }
        Ok((key, v))
    }

    /// A version's data key: from the daemon's cache when the stored wrap
    /// is the one it was unwrapped from, else unwrapped (and cached in
    /// daemon mode).
    fn dek(&mut self, key: &KeyRow, v: &VersionRow) -> Result<Secret32> {
        let master = self.master.as_ref().ok_or(Error::Locked)?;
        let store_id = *self.store.store_id();
        let Some(cache) = self.daemon.as_mut() else {
            return unwrap_version(master, &store_id, key, v);
        };
        let slot = (key.name.clone(), v.version);
        if let Some((wrapped, dek)) = cache.deks.get(&slot) {
            if *wrapped == v.wrapped {
                return Secret32::try_from_slice(dek.expose());
            }
        }
        let dek = unwrap_version(master, &store_id, key, v)?;
        cache.deks.insert(
            slot,
            (v.wrapped.clone(), Secret32::try_from_slice(dek.expose())?),
        );
        Ok(dek)
    }

    /// The data key for decrypting data written under `name` v`version`.
    fn decryption_key(&mut self, name: &KeyName, version: u32) -> Result<(KeyRow, Secret32)> {
        if self.master.is_none() {
            return Err(Error::Locked);
        }
        let (key, v) = self.key_version(name, Some(version))?;
        require_purpose(&key, KeyPurpose::Encrypt)?;
        if version < key.min_decryption_version {
            return Err(Error::VersionRetired {
                name: name.to_string(),
                version,
                min_decryption_version: key.min_decryption_version,
            });
        }
        let dek = self.dek(&key, &v)?;
        Ok((key, dek))
    }

    fn key_version(&self, name: &KeyName, version: Option<u32>) -> Result<(KeyRow, VersionRow)> {
        if let Some(m) = self.memory_keys.as_ref().and_then(|m| m.get(name)) {
            let version = version.unwrap_or(m.key.primary_version);
            let v = m
                .versions
                .iter()
                .find(|v| v.version == version)
                .cloned()
                .ok_or_else(|| Error::VersionNotFound {
                    name: name.to_string(),
                    version,
                })?;
            return Ok((m.key.clone(), v));
        }
        let db = self.store.db();
        let key = db.key(name)?;
        let v = db.version(name, version.unwrap_or(key.primary_version))?;
        Ok((key, v))
    }

    /// A signing version's public key: derived from the seed when unlocked
    /// (and checked against the stored copy), else the stored copy.
    fn public_key_of(&self, key: &KeyRow, v: &VersionRow) -> Result<[u8; 32]> {
        let stored: Option<[u8; 32]> = v.public_key.as_deref().and_then(|p| p.try_into().ok());
        match &self.master {
            Some(master) => {
                let seed = unwrap_version(master, self.store.store_id(), key, v)?;
                let derived = signing::public_key(&seed);
                if stored.is_some_and(|s| s != derived) {
                    return Err(Error::StoreCorrupt {
                        path: self.store.path().to_owned(),
                        detail: format!(
                            "the stored public key of {} v{} does not match its private key",
                            key.name, v.version
                        ),
                    });
                }
                Ok(derived)
            }
            None => stored.ok_or(Error::Locked),
        }
    }

    fn verify_signature(
        &mut self,
        signature: &[u8],
        message: &mut dyn Read,
    ) -> Result<signing::SignedHeader> {
        let header = signing::parse(signature)?;
        let (key, v) = self.key_version(&header.key, Some(header.version))?;
        require_purpose(&key, KeyPurpose::Sign)?;
        if header.version < key.min_decryption_version {
            return Err(Error::VersionRetired {
                name: key.name.to_string(),
                version: header.version,
                min_decryption_version: key.min_decryption_version,
            });
        }
        let public = self.public_key_of(&key, &v)?;
        signing::verify(&public, signature, message)
    }

    /// Records how a stream ended. The stream was audited before its first
    /// byte; this closing record is best effort (the work is done), and a
    /// failure to write it is logged.
    fn audit_stream_end(
        &mut self,
        action: &str,
        name: &KeyName,
        version: u32,
        result: &Result<u64>,
    ) {
        let fields = match result {
            Ok(bytes) => json!({ "key": name, "version": version, "size": bytes,
                                 "actor": self.actor_json() }),
            Err(e) => json!({ "key": name, "version": version, "error": e.to_string(),
                              "actor": self.actor_json() }),
        };
        if let Err(e) = self.record_use(action, result.is_ok(), fields) {
            tracing::warn!(error = %e, action, "could not record the end of a stream");
        }
    }

    fn audit_use(
        &mut self,
        action: &str,
        name: &KeyName,
        version: u32,
        class: DataClass,
        size: Option<u64>,
        ok: bool,
    ) -> Result<()> {
        let fields = json!({ "key": name, "version": version, "class": class, "size": size,
                             "actor": self.actor_json() });
        self.record_use(action, ok, fields)
    }
}

/// Commits `f` relaxed (daemon mode, [`Store::write_relaxed`]) or fully.
fn write_use<T>(
    store: &mut Store,
    relaxed: bool,
    f: impl FnOnce(&Db<'_>) -> Result<T>,
) -> Result<T> {
    if relaxed {
        store.write_relaxed(f)
    } else {
        store.write(f)
    }
}

fn verified(h: signing::SignedHeader) -> Verified {
    Verified {
        key: h.key,
        version: h.version,
        counter: h.counter,
        timestamp: h.timestamp,
        audience: h.audience,
    }
}

fn backend_for(backends: &Backends, kind: BackendKind) -> Result<&Arc<dyn Backend>> {
    backends.get(kind).ok_or_else(|| no_backend(kind))
}

fn no_backend(kind: BackendKind) -> Error {
    Error::NotSupported {
        kind: kind.to_string(),
        what: "protectors of this kind in this build of keyward",
    }
}

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

fn kek(master: &MasterKey, store_id: &[u8; 16], key: &KeyRow, version: u32) -> Secret32 {
    kw::dek_kek(
        master.secret(),
        &DekLabel {
            store_id,
            name: &key.name,
            version,
            purpose: key.purpose,
            class: key.class,
        },
    )
}

fn unwrap_version(
    master: &MasterKey,
    store_id: &[u8; 16],
    key: &KeyRow,
    v: &VersionRow,
) -> Result<Secret32> {
    kw::unwrap(&kek(master, store_id, key, v.version), &v.wrapped)
}

/// Draws a new data-key version and wraps it under the master key.
fn new_version(
    master: &MasterKey,
    store_id: &[u8; 16],
    key: &KeyRow,
    version: u32,
) -> Result<VersionRow> {
    let dek = Secret32::random()?;
    let public_key = match key.purpose {
        KeyPurpose::Encrypt => None,
        KeyPurpose::Sign => Some(signing::public_key(&dek).to_vec()),
    };
    Ok(VersionRow {
        version,
        wrapped: kw::wrap(&kek(master, store_id, key, version), &dek).to_vec(),
        public_key,
        created_at: now(),
        uses_reserved: 0,
    })
}

fn rotate_in_tx(
    db: &Db<'_>,
    master: &MasterKey,
    store_id: &[u8; 16],
    name: &KeyName,
    reason: &str,
    actor: &serde_json::Value,
    mac: &Secret32,
) -> Result<u32> {
    let key = db.key(name)?;
    let newest = db.versions(name)?.last().map_or(0, |v| v.version);
    let version = newest.max(key.primary_version) + 1;
    let v = new_version(master, store_id, &key, version)?;
    db.insert_version(name, &v)?;
    db.set_versions(name, version, key.min_decryption_version)?;
    audit::append(
        db,
        "key.rotate",
        true,
        &json!({ "key": name, "version": version, "reason": reason, "actor": actor }),
        Some(mac),
    )?;
    Ok(version)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site per path, all needed"
)]
fn add_protector(
    db: &Db<'_>,
    store_id: &[u8; 16],
    master: &MasterKey,
    backend: &dyn Backend,
    enrollment: Enrollment,
    label: &str,
    actor: &serde_json::Value,
    mac: &Secret32,
) -> Result<ProtectorInfo> {
    let id = db.next_protector_id()?;
    let aad = mk_wrap_aad(store_id, id, master.epoch(), enrollment.kind);
    let wrapped = backend.wrap(&enrollment, master.secret(), &aad)?;
    let row = ProtectorRow {
        id,
        label: label.to_owned(),
        enrollment,
        wrapped_mk: wrapped.0,
        mk_epoch: master.epoch(),
        created_at: now(),
    };
    db.insert_protector(&row)?;
    audit::append(
        db,
        "protector.enroll",
        true,
        &json!({ "protector": id, "kind": row.enrollment.kind, "label": label,
                 "device": row.enrollment.device_id, "actor": actor }),
        Some(mac),
    )?;
    Ok(protector_info(&row))
}

fn protector_info(p: &ProtectorRow) -> ProtectorInfo {
    ProtectorInfo {
        id: p.id,
        kind: p.enrollment.kind,
        label: p.label.clone(),
        device_id: p.enrollment.device_id.clone(),
        mk_epoch: p.mk_epoch,
        created_at: p.created_at,
    }
}

fn key_info(key: &KeyRow, versions: &[VersionRow]) -> KeyInfo {
    KeyInfo {
        name: key.name.clone(),
        purpose: key.purpose,
        class: key.class,
        primary_version: key.primary_version,
        min_decryption_version: key.min_decryption_version,
        rotation_period: key.rotation_period,
        usage_limit: key.usage_limit,
        created_at: key.created_at,
        versions: versions
            .iter()
            .map(|v| VersionInfo {
                version: v.version,
                created_at: v.created_at,
                uses: v.uses_reserved,
                state: if v.version == key.primary_version {
                    "primary"
                } else if v.version < key.min_decryption_version {
                    "retired"
                } else {
                    "active"
                }
                .to_owned(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
