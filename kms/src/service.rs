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

use serde::Serialize;

use crate::Result;
use crate::audit::{AuditRecord, AuditSummary};
use crate::backend::{Backend, BackendKind, Callbacks, EnrollRequest};
use crate::keys::{DataClass, KeyName, KeyPurpose, MasterKey};
use crate::secret::SecretBytes;
use crate::store::Store;

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    /// Version number (1-based).
    pub version: u32,
    /// Unix time it was created.
    pub created_at: i64,
    /// Encryptions reserved so far (never below the real count).
    pub uses: u64,
    /// `primary`, `active` (decrypts) or `retired`.
    pub state: &'static str,
}

/// A named key as listed (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// The key service over one keystore.
#[derive(Debug)]
pub struct Service {
    store: Store,
    backends: Backends,
    master: Option<MasterKey>,
    actor: Actor,
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
        let _ = (path, backends, kind, request, ui);
        todo!("me")
    }

    /// Opens an existing keystore, locked.
    ///
    /// # Errors
    /// `StoreNotFound`, `NotAKeystore`, `StoreCorrupt`, `StoreTooNew`,
    /// `UnsafePermissions`.
    pub fn open(path: &Path, backends: Backends) -> Result<Self> {
        let _ = (path, backends);
        todo!("me")
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
        todo!("me")
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
        let _ = (with, ui);
        todo!("me")
    }

    /// Forgets the master key.
    pub fn lock(&mut self) {
        self.master = None;
    }

    /// Enrolled protectors.
    ///
    /// # Errors
    /// Database errors.
    pub fn protectors(&self) -> Result<Vec<ProtectorInfo>> {
        todo!("me")
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
        let _ = (kind, request, ui);
        todo!("me")
    }

    /// Removes a protector; never the last one.
    ///
    /// # Errors
    /// `LastProtector`, `ProtectorNotFound`.
    pub fn remove_protector(&mut self, id: u32) -> Result<()> {
        let _ = id;
        todo!("me")
    }

    /// Creates a named key with version 1.
    ///
    /// # Errors
    /// `Locked`, `KeyExists`.
    pub fn create_key(&mut self, name: &KeyName, spec: &KeySpec) -> Result<KeyInfo> {
        let _ = (name, spec);
        todo!("me")
    }

    /// All named keys.
    ///
    /// # Errors
    /// Database errors.
    pub fn keys(&self) -> Result<Vec<KeyInfo>> {
        todo!("me")
    }

    /// One named key.
    ///
    /// # Errors
    /// `KeyNotFound`.
    pub fn key(&self, name: &KeyName) -> Result<KeyInfo> {
        let _ = name;
        todo!("me")
    }

    /// Adds a new primary version.
    ///
    /// # Errors
    /// `Locked`, `KeyNotFound`.
    pub fn rotate_key(&mut self, name: &KeyName) -> Result<KeyInfo> {
        let _ = name;
        todo!("me")
    }

    /// Retires every version below `min_decryption_version`.
    ///
    /// # Errors
    /// `KeyNotFound`, `InvalidArgument` (above the primary version).
    pub fn retire(&mut self, name: &KeyName, min_decryption_version: u32) -> Result<KeyInfo> {
        let _ = (name, min_decryption_version);
        todo!("me")
    }

    /// Encrypts a small message (one-shot format).
    ///
    /// # Errors
    /// `Locked`, `KeyNotFound`, `WrongPurpose`.
    pub fn encrypt(&mut self, name: &KeyName, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let _ = (name, context, plaintext);
        todo!("me")
    }

    /// Decrypts a one-shot ciphertext.
    ///
    /// # Errors
    /// `DecryptionFailed`, `VersionRetired`, `KeyNotFound`, `Locked`.
    pub fn decrypt(&mut self, context: &[u8], ciphertext: &[u8]) -> Result<Decrypted> {
        let _ = (context, ciphertext);
        todo!("me")
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
        writer: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<StreamSummary> {
        let _ = (name, context, reader, writer, progress);
        todo!("me")
    }

    /// Decrypts either format read from `reader`.
    ///
    /// # Errors
    /// As [`Service::decrypt`], plus `Truncated` and `Io`.
    pub fn decrypt_stream(
        &mut self,
        context: &[u8],
        reader: &mut dyn Read,
        writer: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<StreamSummary> {
        let _ = (context, reader, writer, progress);
        todo!("me")
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
        let _ = (name, audience, message);
        todo!("me")
    }

    /// Verifies a signature blob over `message`: strict Ed25519, audience,
    /// freshness window and replay (a counter already seen is refused).
    ///
    /// # Errors
    /// `InvalidSignature`, `Replay`, `NotFresh`, `KeyNotFound`.
    pub fn verify(
        &mut self,
        audience: &str,
        signature: &[u8],
        message: &mut dyn Read,
    ) -> Result<Verified> {
        let _ = (audience, signature, message);
        todo!("me")
    }

    /// The public key of a signing key version (primary if `None`).
    ///
    /// # Errors
    /// `KeyNotFound`, `VersionNotFound`, `WrongPurpose`.
    pub fn export_public(&self, name: &KeyName, version: Option<u32>) -> Result<PublicKeyExport> {
        let _ = (name, version);
        todo!("me")
    }

    /// Replaces the master key: re-wraps every data-key version and the new
    /// master key for every protector, in one transaction. Returns the new
    /// epoch.
    ///
    /// # Errors
    /// `Locked`, backend wrap errors.
    pub fn rotate_master(&mut self) -> Result<u32> {
        todo!("me")
    }

    /// Audit records, oldest first, from `since` (sequence number).
    ///
    /// # Errors
    /// Database errors.
    pub fn audit_records(&self, since: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        let _ = (since, limit);
        todo!("me")
    }

    /// Verifies the whole audit chain.
    ///
    /// # Errors
    /// `AuditTampered` with the first bad record.
    pub fn audit_verify(&self) -> Result<AuditSummary> {
        todo!("me")
    }
}
