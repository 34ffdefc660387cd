//! The one error type of keyward-kms.
//!
//! Cryptographic failures are deliberately opaque ("decryption failed"): the
//! caller learns that authentication failed, never which byte was wrong.
//! Device and storage failures keep their source and native code. States a
//! user can act on (wrong PIN, retired version, last protector) get their own
//! variant so that the CLI can give a remedy.

mod device;

use std::path::PathBuf;

pub use device::{DeviceError, Instead};

use crate::backend::BackendKind;

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in keyward-kms.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- cryptography (opaque on purpose) -------------------------------
    /// AEAD authentication failed: the data was modified, or the key,
    /// version, data class or context does not match.
    #[error(
        "decryption failed: the data was modified, or the key, version or context does not match"
    )]
    DecryptionFailed,
    /// A wrapped key failed its integrity check.
    #[error("key unwrap failed: the wrapped key was modified or belongs to another key")]
    UnwrapFailed,
    /// A signature did not verify.
    #[error("signature verification failed")]
    InvalidSignature,
    /// Input bytes do not follow the expected format.
    #[error("malformed input: {what}")]
    Malformed {
        /// What was malformed.
        what: &'static str,
    },
    /// The input was written by a format version we do not know.
    #[error("unsupported format version {version} (this keyward reads version {supported})")]
    UnsupportedFormat {
        /// Version byte found.
        version: u8,
        /// Version this build reads.
        supported: u8,
    },
    /// A stream ended before its final chunk: the file was cut short.
    #[error("the encrypted stream is truncated: its final chunk is missing")]
    Truncated,
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed")]
    Random,
    /// A public key is not a valid point on the expected curve.
    #[error("invalid public key: {what}")]
    InvalidPublicKey {
        /// What is wrong with it.
        what: &'static str,
    },

    // ---- keystore --------------------------------------------------------
    /// No keystore at this path.
    #[error("no keystore at {path}")]
    StoreNotFound {
        /// Path looked at.
        path: PathBuf,
    },
    /// A keystore already exists at this path.
    #[error("a keystore already exists at {path}")]
    StoreExists {
        /// Path of the existing store.
        path: PathBuf,
    },
    /// The file is not a keyward keystore (foreign SQLite file, or not SQLite).
    #[error("{path} is not a keyward keystore")]
    NotAKeystore {
        /// Path of the file.
        path: PathBuf,
    },
    /// The keystore file is damaged.
    #[error("the keystore at {path} is damaged: {detail}")]
    StoreCorrupt {
        /// Path of the file.
        path: PathBuf,
        /// What was found wrong.
        detail: String,
    },
    /// The keystore was written by a newer keyward.
    #[error("the keystore has schema version {found}; this keyward supports up to {supported}")]
    StoreTooNew {
        /// Schema version in the file.
        found: u32,
        /// Highest version this build knows.
        supported: u32,
    },
    /// The keystore file or its directory has unsafe permissions or owner.
    #[error("unsafe permissions on {path}: {detail}")]
    UnsafePermissions {
        /// Path checked.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Another process holds the keystore for writing.
    #[error("the keystore is busy: another keyward process is changing it")]
    StoreBusy,
    /// SQLite reported an error.
    #[error("keystore database error")]
    Database(#[from] rusqlite::Error),
    /// An I/O error, with what we were doing.
    #[error("{context}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    // ---- keys ------------------------------------------------------------
    /// No key of this name.
    #[error("no key named {name:?}")]
    KeyNotFound {
        /// Key name.
        name: String,
    },
    /// A key of this name exists already.
    #[error("a key named {name:?} already exists")]
    KeyExists {
        /// Key name.
        name: String,
    },
    /// The key has no such version.
    #[error("key {name:?} has no version {version}")]
    VersionNotFound {
        /// Key name.
        name: String,
        /// Version asked for.
        version: u32,
    },
    /// The version is older than the key's minimum decryption version.
    #[error(
        "version {version} of key {name:?} is retired (minimum decryption version is {min_decryption_version})"
    )]
    VersionRetired {
        /// Key name.
        name: String,
        /// Version of the data.
        version: u32,
        /// The key's current minimum.
        min_decryption_version: u32,
    },
    /// The key exists but is for another purpose (encrypt vs sign).
    #[error("key {name:?} is a {actual} key and cannot be used to {wanted}")]
    WrongPurpose {
        /// Key name.
        name: String,
        /// The key's purpose.
        actual: &'static str,
        /// What was attempted.
        wanted: &'static str,
    },
    /// Invalid key name.
    #[error("invalid key name {name:?}: {reason}")]
    InvalidKeyName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A data-key version reached its hard usage limit.
    #[error("version {version} of key {name:?} reached its usage limit; rotate the key")]
    UsageLimit {
        /// Key name.
        name: String,
        /// Version.
        version: u32,
    },
    /// Key material of this class may not be written to the store.
    #[error("{what}")]
    ClassPolicy {
        /// What the policy forbids.
        what: &'static str,
    },

    // ---- protectors and unlock ------------------------------------------
    /// The operation needs the master key and the keystore is locked.
    #[error("the keystore is locked")]
    Locked,
    /// No enrolled protector of the requested kind.
    #[error("no protector of kind {kind} is enrolled")]
    NoSuchProtectorKind {
        /// Kind asked for.
        kind: String,
    },
    /// No protector with this id.
    #[error("no protector with id {id}")]
    ProtectorNotFound {
        /// Id asked for.
        id: u32,
    },
    /// Refused: removing it would leave no way to unlock.
    #[error("refusing to remove the last protector: the keystore could never be unlocked again")]
    LastProtector,
    /// A PIN was supplied to choose the protector, but it fits no single
    /// one: no hardware protector is enrolled (`devices` is empty), or
    /// several are and the caller must name the one it is for.
    #[error("{}", crate::service::pin_target_message(devices))]
    PinTarget {
        /// The hardware protectors enrolled: kind and id.
        devices: Vec<(BackendKind, u32)>,
    },
    /// The passphrase did not unlock the protector.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// The recovery key did not unlock the protector.
    #[error("wrong recovery key")]
    WrongRecoveryKey,
    /// A recovery key was typed in a form that cannot be right.
    #[error("not a recovery key: {reason}")]
    RecoveryKeyFormat {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The passphrase was refused (too short, mismatch).
    #[error("passphrase refused: {reason}")]
    WeakPassphrase {
        /// Why.
        reason: &'static str,
    },

    // ---- hardware ---------------------------------------------------------
    /// No device of the enrolled kind is present.
    #[error("no {kind} device found{}", hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    DeviceNotFound {
        /// Backend kind.
        kind: String,
        /// Why none was found, or what we looked for.
        hint: Option<DeviceError>,
    },
    /// A device is present but it is not the enrolled one.
    #[error("wrong device: expected {expected}, found {found}")]
    WrongDevice {
        /// Enrolled identity.
        expected: String,
        /// Identity found.
        found: String,
    },
    /// Wrong PIN.
    #[error("wrong PIN{}", retries_left.map(|n| format!(" ({n} tries left)")).unwrap_or_default())]
    WrongPin {
        /// Tries left, where the device reports it.
        retries_left: Option<u32>,
    },
    /// The PIN is blocked.
    #[error("the PIN is blocked")]
    PinBlocked,
    /// The device refuses authorisation for a while (TPM dictionary-attack lockout).
    #[error("the device is locked out{}", seconds.map(|s| format!(" for {s} s")).unwrap_or_default())]
    Lockout {
        /// Seconds until it recovers, if known.
        seconds: Option<u64>,
    },
    /// Touch was required and did not happen in time.
    #[error("touch was not confirmed in time")]
    TouchTimeout,
    /// The device went away during the operation.
    #[error("the device was removed during the operation")]
    DeviceRemoved,
    /// The user cancelled a prompt.
    #[error("cancelled")]
    Cancelled,
    /// The backend cannot do this.
    #[error("{kind} backend does not support {what}")]
    NotSupported {
        /// Backend kind.
        kind: String,
        /// The unsupported operation.
        what: &'static str,
    },
    /// Any other device failure, with its native code.
    #[error("{}", device_message(*kind, error))]
    Device {
        /// Backend kind.
        kind: BackendKind,
        /// What went wrong, typed.
        error: DeviceError,
    },

    // ---- audit and signed messages ----------------------------------------
    /// An audit record could not be written; the operation did not happen.
    #[error("the audit log could not be written, so the operation was not performed")]
    AuditWrite(#[source] Box<Error>),
    /// The audit log does not verify.
    #[error("the audit log fails verification at record {seq}: {detail}")]
    AuditTampered {
        /// First record found wrong.
        seq: u64,
        /// What is wrong.
        detail: String,
    },
    /// A signed message was seen before.
    #[error("replayed message: counter {counter} was already accepted")]
    Replay {
        /// The message's counter.
        counter: u64,
    },
    /// A signed message is outside its freshness window or for another audience.
    #[error("signed message rejected: {reason}")]
    NotFresh {
        /// Why.
        reason: &'static str,
    },

    // ---- caller input -------------------------------------------------------
    /// A caller-supplied argument is out of range.
    #[error("invalid argument: {what}")]
    InvalidArgument {
        /// What is wrong.
        what: String,
    },

    // ---- daemon clients -------------------------------------------------------
    /// A client token is missing, unknown or revoked.
    #[error("the client token is missing, unknown or revoked")]
    Unauthorized,
    /// A client's grants do not allow this operation on this key.
    #[error("client '{client}' is not allowed to {operation}{}", key_suffix(key.as_deref()))]
    Forbidden {
        /// The client's name.
        client: String,
        /// The operation asked for.
        operation: String,
        /// The key it was asked on, if any.
        key: Option<String>,
    },
    /// A client with this name already exists.
    #[error("a client named '{name}' already exists")]
    ClientExists {
        /// The name.
        name: String,
    },
    /// No client with this name.
    #[error("no client named '{name}'")]
    ClientNotFound {
        /// The name.
        name: String,
    },
    /// An operation needs a secret the caller did not provide (the daemon
    /// answers an unlock request this way; nothing was sent to a device).
    #[error("{description} needs a {kind}{}", retries_suffix(*retries_left))]
    SecretRequired {
        /// What kind of secret: `pin`, `puk`, `passphrase`, `recovery-key`.
        kind: &'static str,
        /// Which protector or device asks ("passphrase 'laptop'").
        description: String,
        /// Tries left before lockout, where known.
        retries_left: Option<u32>,
    },
}

/// A missing mechanism reads as the capability gap it is; any other
/// device error names its native code.
fn device_message(kind: BackendKind, error: &DeviceError) -> String {
    match error {
        DeviceError::MechanismMissing { mechanism, .. } => {
            format!("{kind} backend does not support {mechanism}")
        }
        _ => format!("{kind} device error {}: {error}", error.code()),
    }
}

fn key_suffix(key: Option<&str>) -> String {
    key.map(|k| format!(" with key '{k}'")).unwrap_or_default()
}

fn retries_suffix(retries: Option<u32>) -> String {
    retries
        .map(|n| format!(" ({n} tries left)"))
        .unwrap_or_default()
}

impl Error {
    /// A stable, machine-readable code for this error (the daemon API's
    /// `error.code`, docs/API.md). Codes never change meaning once
    /// published; new variants get new codes.
    pub fn code(&self) -> &'static str {
        match self {
            Self::DecryptionFailed | Self::UnwrapFailed => "decryption-failed",
            Self::InvalidSignature => "invalid-signature",
            Self::Malformed { .. }
            | Self::UnsupportedFormat { .. }
            | Self::InvalidPublicKey { .. } => "malformed",
            Self::Truncated => "truncated",
            Self::Random => "internal",
            Self::StoreNotFound { .. }
            | Self::StoreExists { .. }
            | Self::NotAKeystore { .. }
            | Self::StoreCorrupt { .. }
            | Self::StoreTooNew { .. }
            | Self::UnsafePermissions { .. }
            | Self::Database(_)
            | Self::Io { .. } => "store",
            Self::StoreBusy => "busy",
            Self::KeyNotFound { .. } => "key-not-found",
            Self::KeyExists { .. } => "key-exists",
            Self::VersionNotFound { .. } => "version-not-found",
            Self::VersionRetired { .. } => "version-retired",
            Self::WrongPurpose { .. } => "wrong-purpose",
            Self::InvalidKeyName { .. } => "invalid-key-name",
            Self::UsageLimit { .. } => "usage-limit",
            Self::ClassPolicy { .. } => "class-policy",
            Self::Locked => "locked",
            Self::NoSuchProtectorKind { .. } | Self::ProtectorNotFound { .. } => {
                "protector-not-found"
            }
            // No device for the PIN is "not found"; several is a choice
            // the caller must make.
            Self::PinTarget { devices } => match devices.as_slice() {
                [] => "protector-not-found",
                _ => "invalid-argument",
            },
            Self::LastProtector => "last-protector",
            Self::WrongPassphrase => "wrong-passphrase",
            Self::WrongRecoveryKey | Self::RecoveryKeyFormat { .. } => "wrong-recovery-key",
            Self::DeviceNotFound { .. } => "device-not-found",
            Self::WrongDevice { .. } => "wrong-device",
            Self::WrongPin { .. } => "wrong-pin",
            Self::PinBlocked => "pin-blocked",
            Self::Lockout { .. } => "lockout",
            Self::TouchTimeout => "touch-timeout",
            Self::DeviceRemoved => "device-removed",
            Self::Cancelled => "cancelled",
            Self::NotSupported { .. }
            | Self::Device {
                error: DeviceError::MechanismMissing { .. },
                ..
            } => "not-supported",
            Self::Device { .. } => "device",
            Self::AuditWrite(_) => "audit-write",
            Self::AuditTampered { .. } => "audit-tampered",
            Self::Replay { .. } => "replay",
            Self::NotFresh { .. } => "not-fresh",
            Self::InvalidArgument { .. } | Self::WeakPassphrase { .. } => "invalid-argument",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden { .. } => "forbidden",
            Self::ClientExists { .. } => "client-exists",
            Self::ClientNotFound { .. } => "client-not-found",
            Self::SecretRequired { .. } => "secret-required",
        }
    }

    /// Builds an [`Error::Device`] of `kind`.
    pub fn device(kind: BackendKind, error: DeviceError) -> Self {
        Self::Device { kind, error }
    }

    /// Builds an [`Error::DeviceNotFound`] of `kind` with its cause.
    pub fn not_found(kind: BackendKind, why: DeviceError) -> Self {
        Self::DeviceNotFound {
            kind: kind.to_string(),
            hint: Some(why),
        }
    }

    /// Builds an [`Error::Io`] with the operation that failed.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_errors_keep_their_wire_codes_and_text() {
        let e = Error::device(
            BackendKind::Tpm,
            DeviceError::Tpm {
                rc: 0x902,
                detail: "no free slot".into(),
            },
        );
        assert_eq!(e.code(), "device");
        assert_eq!(e.to_string(), "tpm device error 0x902: no free slot");
        let e = Error::device(
            BackendKind::Pkcs11,
            DeviceError::Pkcs11 {
                rv: "CKR_GENERAL_ERROR".into(),
                function: "Login (login)".into(),
            },
        );
        assert_eq!(
            e.to_string(),
            "pkcs11 device error CKR_GENERAL_ERROR: Login (login)"
        );
        let e = Error::device(
            BackendKind::Yubikey,
            DeviceError::Piv {
                sw: 0x6A82,
                detail: "slot 82 is empty".into(),
            },
        );
        assert_eq!(e.to_string(), "yubikey device error 6A82: slot 82 is empty");
        // A missing mechanism reads, and is coded, as the gap it is.
        let e = Error::device(
            BackendKind::Pkcs11,
            DeviceError::MechanismMissing {
                mechanism: "CKM_AES_GCM",
                instead: Instead::Ecdh,
            },
        );
        assert_eq!(e.code(), "not-supported");
        assert_eq!(e.to_string(), "pkcs11 backend does not support CKM_AES_GCM");
        let e = Error::not_found(
            BackendKind::Tpm,
            DeviceError::Unreachable {
                tcti: "device:/dev/tpmrm0".into(),
            },
        );
        assert_eq!(e.code(), "device-not-found");
        assert_eq!(
            e.to_string(),
            "no tpm device found (cannot reach the TPM at device:/dev/tpmrm0: is the TPM \
             present / swtpm running? set KEYWARD_TPM_TCTI or --tcti to another TCTI)"
        );
    }

    #[test]
    fn pcr_mismatch_diagnosis_is_its_text_without_the_advice() {
        let e = DeviceError::PcrMismatch { pcrs: vec![7, 11] };
        let text = e.to_string();
        assert!(text.starts_with(&e.diagnosis()), "{text}");
        assert!(text.ends_with("to bind the TPM protector to the current values"));
        assert!(
            DeviceError::PcrMismatch { pcrs: vec![] }
                .diagnosis()
                .contains("because PCR values changed")
        );
    }
}
