//! The request and answer of every endpoint (docs/API.md, "Endpoints").
//!
//! Each request type is an [`Endpoint`]: it knows its method, its path and
//! the type of its answer, so a client sends it with
//! [`crate::Client::send`]. Requests refuse unknown fields (as the daemon
//! does); answers accept them, so that an older client reads a newer
//! daemon's answers.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::bytes::{Bytes, SecretText};
use crate::problem::Problem;
use crate::routes::{self, Method};

/// A request of the API: its route and the type of its answer.
pub trait Endpoint: Serialize {
    /// The HTTP method.
    const METHOD: Method;
    /// The path template ([`crate::routes`]).
    const ROUTE: &'static str;
    /// The answer of a success.
    type Response: DeserializeOwned;

    /// The path of this request (path parameters and query filled in).
    fn path(&self) -> String {
        Self::ROUTE.to_owned()
    }
}

macro_rules! endpoint {
    ($request:ty, $method:ident, $route:expr, $response:ty) => {
        impl Endpoint for $request {
            const METHOD: Method = Method::$method;
            const ROUTE: &'static str = $route;
            type Response = $response;
        }
    };
    ($request:ty, $method:ident, $route:expr, $response:ty, |$s:ident| $path:block) => {
        impl Endpoint for $request {
            const METHOD: Method = Method::$method;
            const ROUTE: &'static str = $route;
            type Response = $response;
            fn path(&$s) -> String $path
        }
    };
}

// ---------------------------------------------------------------- session

/// `GET /v1/status`.
#[derive(Debug, Default, Serialize)]
pub struct StatusRequest;
endpoint!(StatusRequest, Get, routes::STATUS, Status);

/// The daemon's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// Whether the master key is in memory.
    pub unlocked: bool,
    /// The keystore's path.
    pub store: String,
    /// The keystore's id (hex).
    pub store_id: String,
    /// Master-key epoch.
    pub mk_epoch: u32,
    /// Named keys.
    pub keys: u64,
    /// Enrolled protectors.
    pub protectors: u64,
    /// Clients not revoked.
    pub clients: u64,
    /// Whether the daemon's secrets are locked in memory.
    pub memory_locked: bool,
    /// The daemon's pid.
    pub pid: u32,
    /// keyward's version.
    pub version: String,
    /// The session; `null` when locked.
    pub session: Option<SessionInfo>,
}

/// An unlocked session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionInfo {
    /// The protector that unlocked.
    pub protector: u32,
    /// Unix time of the unlock.
    pub unlocked_at: i64,
    /// Unix time the idle timeout ends the session (if no key is used).
    pub idle_expires_at: i64,
    /// Unix time the absolute timeout ends the session.
    pub absolute_expires_at: i64,
}

/// `POST /v1/unlock`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnlockRequest {
    /// `"any"`, a protector kind, or a protector id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with: Option<UnlockWith>,
    /// The secrets the protector may ask for.
    #[serde(default)]
    pub secrets: Secrets,
    /// A shorter idle timeout, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<u64>,
    /// A shorter absolute timeout, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute_timeout: Option<u64>,
}
endpoint!(UnlockRequest, Post, routes::UNLOCK, Unlocked);

/// The `with` of an unlock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum UnlockWith {
    /// A protector id.
    Id(u32),
    /// `"any"` or a protector kind (`recovery`, `passphrase`, `tpm`,
    /// `pkcs11`, `yubikey`).
    Name(String),
}

/// The `secrets` of an unlock.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// A device PIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<SecretText>,
    /// A device PUK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub puk: Option<SecretText>,
    /// The passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<SecretText>,
    /// The recovery key.
    #[serde(
        rename = "recovery-key",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub recovery_key: Option<SecretText>,
}

impl Secrets {
    /// Whether no secret is given.
    pub fn is_empty(&self) -> bool {
        self.pin.is_none()
            && self.puk.is_none()
            && self.passphrase.is_none()
            && self.recovery_key.is_none()
    }
}

/// The answer of an unlock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Unlocked {
    /// The protector that unlocked.
    pub protector: ProtectorInfo,
    /// The session.
    pub session: SessionInfo,
}

/// A protector as listed (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProtectorInfo {
    /// Id, unique in the store, never reused.
    pub id: u32,
    /// Kind (`recovery`, `passphrase`, `yubikey`, `tpm`, `pkcs11`).
    pub kind: String,
    /// User label.
    pub label: String,
    /// Device identity, if any.
    pub device_id: Option<String>,
    /// Master-key epoch its wrap is for.
    pub mk_epoch: u32,
    /// Unix time of enrollment.
    pub created_at: i64,
}

/// `POST /v1/lock`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LockRequest {}
endpoint!(LockRequest, Post, routes::LOCK, LockAnswer);

/// The answer of a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LockAnswer {
    /// Always `true`.
    pub locked: bool,
}

// ------------------------------------------------------------------- data

/// `POST /v1/encrypt` (and one item of a batch).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EncryptRequest {
    /// The key to encrypt under.
    pub key: String,
    /// The plaintext.
    pub plaintext: Bytes,
    /// Context bound to the ciphertext; give it again to decrypt.
    #[serde(default)]
    pub context: Bytes,
}
endpoint!(EncryptRequest, Post, routes::ENCRYPT, Encrypted);

/// A ciphertext made.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Encrypted {
    /// The ciphertext (one-shot format).
    pub ciphertext: Bytes,
    /// The key.
    pub key: String,
    /// The key version.
    pub version: u32,
}

/// `POST /v1/decrypt` (and one item of a batch).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecryptRequest {
    /// The ciphertext.
    pub ciphertext: Bytes,
    /// The context it was encrypted with.
    #[serde(default)]
    pub context: Bytes,
}
endpoint!(DecryptRequest, Post, routes::DECRYPT, Decrypted);

/// A plaintext recovered.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Decrypted {
    /// The plaintext.
    pub plaintext: Bytes,
    /// The key.
    pub key: String,
    /// The key version.
    pub version: u32,
}

/// `POST /v1/encrypt/batch` and `/v1/decrypt/batch`: at most 1000 items.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Batch<T> {
    /// The items.
    pub items: Vec<T>,
}
endpoint!(
    Batch<EncryptRequest>,
    Post,
    routes::ENCRYPT_BATCH,
    BatchResults<Encrypted>
);
endpoint!(
    Batch<DecryptRequest>,
    Post,
    routes::DECRYPT_BATCH,
    BatchResults<Decrypted>
);

/// The answer of a batch: one result per item, in order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchResults<T> {
    /// The results.
    pub results: Vec<BatchItem<T>>,
}

/// One result of a batch: the item's answer or its error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum BatchItem<T> {
    /// The item failed.
    Failed {
        /// Why.
        error: Problem,
    },
    /// The item's answer.
    Done(T),
}

/// `POST /v1/rewrap`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RewrapRequest {
    /// The ciphertext.
    pub ciphertext: Bytes,
    /// The context it was encrypted with.
    #[serde(default)]
    pub context: Bytes,
}
endpoint!(RewrapRequest, Post, routes::REWRAP, Rewrapped);

/// A ciphertext moved to its key's primary version.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Rewrapped {
    /// The new ciphertext.
    pub ciphertext: Bytes,
    /// The key.
    pub key: String,
    /// The version it is now under.
    pub version: u32,
    /// The version it was under.
    pub from_version: u32,
}

/// `POST /v1/datakey/generate`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatakeyRequest {
    /// The key to wrap the data key under.
    pub key: String,
    /// Context bound to the wrapped key.
    #[serde(default)]
    pub context: Bytes,
}
endpoint!(DatakeyRequest, Post, routes::DATAKEY_GENERATE, NewDatakey);

/// A fresh 256-bit data key, in the clear and wrapped.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NewDatakey {
    /// The key, to use and forget.
    pub plaintext: Bytes,
    /// The same key encrypted under `key` (one-shot format).
    pub wrapped: Bytes,
    /// The key it is wrapped under.
    pub key: String,
    /// The key version.
    pub version: u32,
}

/// `POST /v1/datakey/unwrap`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnwrapRequest {
    /// The wrapped data key.
    pub wrapped: Bytes,
    /// The context it was wrapped with.
    #[serde(default)]
    pub context: Bytes,
}
endpoint!(UnwrapRequest, Post, routes::DATAKEY_UNWRAP, Decrypted);

/// `POST /v1/sign`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// The signing key.
    pub key: String,
    /// The message.
    pub message: Bytes,
    /// Who the signature is for.
    #[serde(default)]
    pub audience: String,
}
endpoint!(SignRequest, Post, routes::SIGN, Signed);

/// A signature made.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Signed {
    /// The signature (keyward's signature format).
    pub signature: Bytes,
    /// The key.
    pub key: String,
    /// The key version.
    pub version: u32,
    /// The signer's counter.
    pub counter: u64,
}

/// `POST /v1/verify`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The message.
    pub message: Bytes,
    /// The signature.
    pub signature: Bytes,
    /// The audience it must be for.
    #[serde(default)]
    pub audience: String,
    /// Also check freshness and replays (and record the counter).
    #[serde(default)]
    pub fresh: bool,
}
endpoint!(VerifyRequest, Post, routes::VERIFY, Verified);

/// A verified signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Verified {
    /// The key.
    pub key: String,
    /// The key version.
    pub version: u32,
    /// The signer's counter.
    pub counter: u64,
    /// Signing time (Unix seconds).
    pub timestamp: u64,
    /// The audience.
    pub audience: String,
}

/// `POST /v1/device/sign`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceSignRequest {
    /// The hardware protector whose device signs.
    pub protector: u32,
    /// The message.
    pub message: Bytes,
}
endpoint!(DeviceSignRequest, Post, routes::DEVICE_SIGN, DeviceSigned);

/// A device signature.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceSigned {
    /// DER ECDSA, or raw Ed25519.
    pub signature: Bytes,
    /// The algorithm.
    pub algorithm: DeviceAlgorithm,
    /// The protector.
    pub protector: u32,
}

/// The algorithm of a device signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum DeviceAlgorithm {
    /// ECDSA over P-256 with SHA-256, DER-encoded.
    #[serde(rename = "ecdsa-p256-sha256")]
    EcdsaP256Sha256,
    /// Ed25519 (RFC 8032).
    #[serde(rename = "ed25519")]
    Ed25519,
}

impl DeviceAlgorithm {
    /// The name on the wire and in the CLI's output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            Self::Ed25519 => "ed25519",
        }
    }
}

// ------------------------------------------------------------------- keys

/// `GET /v1/keys`.
#[derive(Debug, Default, Serialize)]
pub struct ListKeys;
endpoint!(ListKeys, Get, routes::KEYS, KeyList);

/// The answer of `GET /v1/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    /// The keys (a client sees only its granted keys).
    pub keys: Vec<KeyInfo>,
}

/// A named key as listed (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyInfo {
    /// Name.
    pub name: String,
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

/// One version of a named key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VersionInfo {
    /// Version number (1-based).
    pub version: u32,
    /// Unix time it was created.
    pub created_at: i64,
    /// Encryptions reserved so far.
    pub uses: u64,
    /// `primary`, `active` (decrypts) or `retired`.
    pub state: String,
}

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyPurpose {
    /// Encryption.
    Encrypt,
    /// Signatures.
    Sign,
}

/// The class of the data a key protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataClass {
    /// Secrets.
    Secret,
    /// Sensitive data.
    Sensitive,
    /// Private data.
    Private,
    /// Everything else.
    General,
}

/// `GET /v1/keys/{name}`.
#[derive(Debug, Serialize)]
pub struct ShowKey {
    /// The key.
    #[serde(skip)]
    pub name: String,
}
endpoint!(ShowKey, Get, routes::KEY, KeyInfo, |self| {
    routes::with_name(routes::KEY, &self.name)
});

/// `GET /v1/keys/{name}/public?version=N`.
#[derive(Debug, Serialize)]
pub struct ExportPublic {
    /// The key.
    #[serde(skip)]
    pub name: String,
    /// The version (default: the primary one).
    #[serde(skip)]
    pub version: Option<u32>,
}
endpoint!(
    ExportPublic,
    Get,
    routes::KEY_PUBLIC,
    PublicKeyExport,
    |self| {
        let path = routes::with_name(routes::KEY_PUBLIC, &self.name);
        match self.version {
            Some(v) => format!("{path}?version={v}"),
            None => path,
        }
    }
);

/// The query of `GET /v1/keys/{name}/public`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PublicQuery {
    /// The key version (default: the primary one).
    pub version: Option<u32>,
}

/// An exported public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PublicKeyExport {
    /// Key name.
    pub key: String,
    /// Version.
    pub version: u32,
    /// PEM (SubjectPublicKeyInfo), as `openssl` reads it.
    pub pem: String,
    /// Raw key bytes, hex.
    pub raw_hex: String,
}

/// `POST /v1/keys`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// The new key's name.
    pub name: String,
    /// Its purpose (default `encrypt`).
    #[serde(default = "default_purpose")]
    pub purpose: KeyPurpose,
    /// Its data class (default `private`).
    #[serde(default = "default_class")]
    pub class: DataClass,
    /// Rotation period, seconds.
    #[serde(default)]
    pub rotation_period: Option<u64>,
    /// Encryptions before an automatic rotation.
    #[serde(default)]
    pub usage_limit: Option<u64>,
}
endpoint!(CreateKey, Post, routes::KEYS, KeyInfo);

/// As `keyward key create`.
fn default_purpose() -> KeyPurpose {
    KeyPurpose::Encrypt
}

/// As `keyward key create`.
fn default_class() -> DataClass {
    DataClass::Private
}

/// `POST /v1/keys/{name}/rotate` (an empty body).
#[derive(Debug, Serialize)]
pub struct RotateKey {
    /// The key.
    #[serde(skip)]
    pub name: String,
}
endpoint!(RotateKey, Post, routes::KEY_ROTATE, KeyInfo, |self| {
    routes::with_name(routes::KEY_ROTATE, &self.name)
});

/// `POST /v1/keys/{name}/retire`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetireKey {
    /// The key.
    #[serde(skip)]
    pub name: String,
    /// Versions below this one no longer decrypt.
    pub min_decryption_version: u32,
}
endpoint!(RetireKey, Post, routes::KEY_RETIRE, KeyInfo, |self| {
    routes::with_name(routes::KEY_RETIRE, &self.name)
});

/// `POST /v1/rotate-due`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateDue {}
endpoint!(RotateDue, Post, routes::ROTATE_DUE, RotatedList);

/// The answer of `POST /v1/rotate-due`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RotatedList {
    /// The keys rotated.
    pub rotated: Vec<Rotated>,
}

/// A key rotated by the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Rotated {
    /// Key name.
    pub key: String,
    /// The new primary version.
    pub version: u32,
    /// Why: `period` (its rotation period elapsed).
    pub reason: String,
}

/// `POST /v1/master/rotate`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateMaster {}
endpoint!(RotateMaster, Post, routes::MASTER_ROTATE, MasterRotated);

/// The answer of `POST /v1/master/rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MasterRotated {
    /// The new master-key epoch.
    pub epoch: u32,
}

// ---------------------------------------------------------------- clients

/// A grantable operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Encrypt under a key.
    Encrypt,
    /// Decrypt data written under a key.
    Decrypt,
    /// Re-encrypt to a key's newest version.
    Rewrap,
    /// Generate and unwrap data keys.
    Datakey,
    /// Sign with a signing key.
    Sign,
    /// Verify signatures.
    Verify,
    /// List and show keys, export public keys.
    Keys,
}

/// `POST /v1/clients`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddClient {
    /// The client's name.
    pub name: String,
    /// Granted operations.
    pub allow: Vec<Operation>,
    /// Granted keys (`*`: all).
    pub keys: Vec<String>,
}
endpoint!(AddClient, Post, routes::CLIENTS, ClientAdded);

/// A new client and its token (the only time the token is shown).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClientAdded {
    /// The client.
    pub client: ClientInfo,
    /// Its token (`kwt_…`).
    pub token: SecretText,
}

/// A client as listed (never its token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClientInfo {
    /// Its name.
    pub name: String,
    /// Granted operations.
    pub allow: Vec<Operation>,
    /// Granted keys (`*`: all).
    pub keys: Vec<String>,
    /// Unix time of creation.
    pub created_at: i64,
    /// Unix time of the last authenticated request.
    pub last_used_at: Option<i64>,
    /// Unix time of revocation.
    pub revoked_at: Option<i64>,
}

/// `GET /v1/clients`.
#[derive(Debug, Default, Serialize)]
pub struct ListClients;
endpoint!(ListClients, Get, routes::CLIENTS, ClientList);

/// The answer of `GET /v1/clients`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClientList {
    /// Every client, revoked ones too.
    pub clients: Vec<ClientInfo>,
}

/// `DELETE /v1/clients/{name}`.
#[derive(Debug, Serialize)]
pub struct RevokeClient {
    /// The client.
    #[serde(skip)]
    pub name: String,
}
endpoint!(
    RevokeClient,
    Delete,
    routes::CLIENT,
    ClientRevoked,
    |self| { routes::with_name(routes::CLIENT, &self.name) }
);

/// The answer of `DELETE /v1/clients/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClientRevoked {
    /// The client revoked.
    pub revoked: String,
}

/// `POST /v1/clients/revoke-all`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeAll {}
endpoint!(RevokeAll, Post, routes::CLIENTS_REVOKE_ALL, RevokedCount);

/// The answer of `POST /v1/clients/revoke-all`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RevokedCount {
    /// How many clients were revoked.
    pub revoked: u64,
}

// ------------------------------------------------------------------ audit

/// `GET /v1/audit?since=SEQ&limit=N`.
#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// The first sequence number (default 1).
    #[serde(skip_serializing)]
    pub since: Option<u64>,
    /// Most records (1 to 10000; default 1000).
    #[serde(skip_serializing)]
    pub limit: Option<u64>,
}
endpoint!(AuditQuery, Get, routes::AUDIT, AuditRecords, |self| {
    let mut query = Vec::new();
    if let Some(since) = self.since {
        query.push(format!("since={since}"));
    }
    if let Some(limit) = self.limit {
        query.push(format!("limit={limit}"));
    }
    if query.is_empty() {
        routes::AUDIT.to_owned()
    } else {
        format!("{}?{}", routes::AUDIT, query.join("&"))
    }
});

/// The answer of `GET /v1/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditRecords {
    /// The records, oldest first.
    pub records: Vec<AuditRecord>,
}

/// One audit record (and one event of the stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditRecord {
    /// Sequence number, from 1, no gaps.
    pub seq: u64,
    /// Unix time, seconds.
    pub ts: i64,
    /// What happened (`key.create`, `encrypt`, `unlock.failed`, …).
    pub action: String,
    /// `ok` or `error`.
    pub status: String,
    /// Details (key, version, class, actor, …); never secrets.
    #[schema(value_type = Object)]
    pub fields: serde_json::Value,
    /// Hex SHA-256 of the previous record.
    pub prev: String,
    /// Hex SHA-256 of this record.
    pub hash: String,
}

/// `GET /v1/audit/verify`.
#[derive(Debug, Default, Serialize)]
pub struct VerifyAudit;
endpoint!(VerifyAudit, Get, routes::AUDIT_VERIFY, AuditSummary);

/// The result of verifying the audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditSummary {
    /// Records checked.
    pub records: u64,
    /// Hash of the last record.
    pub head: String,
    /// Sequence number of the newest checkpoint authenticated with the
    /// master key, if the store was unlocked for the check and one exists.
    pub checkpoint: Option<u64>,
}

/// `GET /v1/events?since=SEQ`: newline-delimited [`AuditRecord`]s.
#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// The first sequence number (default: after the newest record).
    #[serde(skip_serializing)]
    pub since: Option<u64>,
}

impl EventsQuery {
    /// The path of this request.
    pub fn path(&self) -> String {
        match self.since {
            Some(since) => format!("{}?since={since}", routes::EVENTS),
            None => routes::EVENTS.to_owned(),
        }
    }
}
