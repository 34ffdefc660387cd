//! The `Backend` trait over every way to protect the master key, and the
//! `Callbacks` trait through which backends talk to the user.
//!
//! A backend is a *kind* of protector: a YubiKey, a TPM, a PKCS#11 token,
//! or one of the software protectors (recovery key, passphrase). An
//! [`Enrollment`] is one enrolled instance: the non-secret descriptor that
//! lets the backend find its device and check it is the right one.
//!
//! Backends that hold a P-256 key wrap with the shared ECIES construction
//! ([`crate::crypto::ecies`]): wrapping needs only the public key, so master
//! key rotation never needs the device present. The device (or, for software
//! protectors, a key derived from the user's secret) does the private half.

pub mod ecdh_device;
pub mod options;

use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

pub use options::EnrollOptions;

use crate::secret::{Secret32, SecretString};
use crate::{Error, Result};

/// The kinds of protector keyward knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A high-entropy recovery key the user writes down.
    Recovery,
    /// A passphrase stretched with Argon2id.
    Passphrase,
    /// A YubiKey over PIV.
    Yubikey,
    /// A TPM 2.0.
    Tpm,
    /// A PKCS#11 token or HSM.
    Pkcs11,
    /// The in-process mock from keyward-hw-mocks (tests only: the `mock`
    /// feature, which keyward-hw-mocks enables).
    #[cfg(any(test, feature = "mock"))]
    Mock,
}

impl BackendKind {
    /// The name used in the CLI, JSON and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recovery => "recovery",
            Self::Passphrase => "passphrase",
            Self::Yubikey => "yubikey",
            Self::Tpm => "tpm",
            Self::Pkcs11 => "pkcs11",
            #[cfg(any(test, feature = "mock"))]
            Self::Mock => "mock",
        }
    }

    /// Whether this kind is a hardware device (YubiKey, TPM, PKCS#11)
    /// rather than a secret the user types or keeps.
    pub fn is_hardware(self) -> bool {
        matches!(self, Self::Yubikey | Self::Tpm | Self::Pkcs11)
    }

    /// The byte bound into the master-key wrap AAD (docs/FORMAT.md).
    pub fn code(self) -> u8 {
        match self {
            Self::Recovery => 1,
            Self::Passphrase => 2,
            Self::Yubikey => 3,
            Self::Tpm => 4,
            Self::Pkcs11 => 5,
            #[cfg(any(test, feature = "mock"))]
            Self::Mock => 0xff,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "recovery" => Ok(Self::Recovery),
            "passphrase" => Ok(Self::Passphrase),
            "yubikey" => Ok(Self::Yubikey),
            "tpm" => Ok(Self::Tpm),
            "pkcs11" => Ok(Self::Pkcs11),
            #[cfg(any(test, feature = "mock"))]
            "mock" => Ok(Self::Mock),
            _ => Err(Error::InvalidArgument {
                what: format!("unknown protector kind {s:?}"),
            }),
        }
    }
}

/// How a backend wraps a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WrapMode {
    /// Shared P-256 ECIES: wrapping needs only the enrolled public key.
    EciesP256,
    /// A symmetric key on the device (PKCS#11 CKM_AES_GCM): wrapping needs
    /// the device.
    DeviceAesGcm,
}

/// Signature algorithms a backend can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignAlgorithm {
    /// ECDSA over P-256 with SHA-256; signature DER-encoded (as `openssl
    /// dgst -verify` expects).
    EcdsaP256Sha256,
    /// Ed25519 (RFC 8032).
    Ed25519,
}

/// What a backend can do, so callers never learn of a gap at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Wrap modes supported.
    pub wrap_modes: Vec<WrapMode>,
    /// Signature algorithms supported (empty: cannot sign).
    pub sign: Vec<SignAlgorithm>,
    /// Unwrap may ask for a PIN or passphrase.
    pub pin: bool,
    /// Unwrap may need a touch.
    pub touch: bool,
    /// Enrollments can be bound to platform state (TPM PCRs).
    pub pcr: bool,
}

/// One device the backend can see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Stable identity: YubiKey serial, token label + serial, TPM EK hash.
    pub id: String,
    /// Human description (model).
    pub model: String,
    /// Firmware version, if known.
    pub firmware: Option<String>,
    /// PIN tries left, if the device reports it.
    pub retries_left: Option<u32>,
}

/// Parameters for a new enrollment. Backends ignore what does not apply and
/// refuse what they cannot honour.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnrollRequest {
    /// User label for the protector ("laptop TPM").
    pub label: String,
    /// Device to use (serial, PKCS#11 URI, TCTI); `None`: the only one present.
    pub device: Option<String>,
    /// The backend's own options (slot, touch, PCRs, …); each backend takes
    /// its own variant and refuses another's.
    pub options: EnrollOptions,
}

/// The non-secret descriptor of one enrolled protector, stored in the
/// keystore. It must be enough for the backend to find the device again and
/// to check it is the enrolled one before any PIN is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    /// Backend kind.
    pub kind: BackendKind,
    /// Stable identity of the device (serial, token, TPM), if any.
    pub device_id: Option<String>,
    /// The P-256 public key wrapped to (SEC1 compressed, 33 bytes), or empty
    /// for symmetric device keys.
    #[serde(with = "hex_bytes")]
    pub public_key: Vec<u8>,
    /// Backend-specific descriptor (slot, policy, KDF parameters, blobs).
    pub params: serde_json::Value,
}

impl Enrollment {
    /// Checks that this enrollment belongs to the backend of `kind`, before
    /// anything else is read from it.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an enrollment of another kind.
    pub fn check_kind(&self, kind: BackendKind) -> Result<()> {
        if self.kind == kind {
            Ok(())
        } else {
            Err(Error::InvalidArgument {
                what: format!("a {} protector was handed to the {kind} backend", self.kind),
            })
        }
    }

    /// The descriptor's version (its `"v"`), if it has one.
    pub fn version(&self) -> Option<u64> {
        self.params.get("v").and_then(serde_json::Value::as_u64)
    }

    /// The enrolled public key: a compressed P-256 point (33 bytes).
    ///
    /// # Errors
    /// [`Error::InvalidPublicKey`] for anything else.
    pub fn p256_public_key(&self) -> Result<[u8; crate::crypto::ecies::POINT_LEN]> {
        let key: [u8; crate::crypto::ecies::POINT_LEN] = self
            .public_key
            .as_slice()
            .try_into()
            .map_err(|_| Error::InvalidPublicKey {
                what: "enrolled public key is not a 33-byte compressed point",
            })?;
        crate::crypto::ecies::parse_public_key(&key)?;
        Ok(key)
    }
}

/// Locks a backend's device state, tolerating poison: a panic while the
/// lock was held leaves the device's state unknown, so `reset` puts the
/// guarded value back to a known one (drop open handles, forget sessions)
/// and the lock is usable again.
pub fn lock_or_reset<T>(m: &Mutex<T>, reset: impl FnOnce(&mut T)) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(guard) => guard,
        Err(poisoned) => {
            let mut guard = poisoned.into_inner();
            reset(&mut guard);
            m.clear_poison();
            guard
        }
    }
}

/// A wrapped secret as a backend produced it (docs/FORMAT.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapped(pub Vec<u8>);

/// A signature with its algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Algorithm.
    pub algorithm: SignAlgorithm,
    /// Encoded signature (DER for ECDSA, 64 bytes for Ed25519).
    pub bytes: Vec<u8>,
}

/// The health of an enrolled device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The device is reachable.
    pub present: bool,
    /// The reachable device is the enrolled one (serial and public key match).
    pub matches: bool,
    /// PIN tries left, if known.
    pub retries_left: Option<u32>,
    /// Seconds of lockout remaining, if locked out.
    pub lockout_seconds: Option<u64>,
    /// Human summary.
    pub detail: String,
}

/// A backend: one kind of protector.
///
/// Implementations are synchronous (pcsc, cryptoki and tss-esapi all block)
/// and take `&self`; a backend whose device allows one session keeps it
/// behind its own lock and says so in its docs. Private keys never cross
/// this trait.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Which kind this is.
    fn kind(&self) -> BackendKind;

    /// What it can do.
    fn capabilities(&self) -> Capabilities;

    /// Devices currently visible.
    ///
    /// # Errors
    /// Transport failures (pcscd not running, TPM absent).
    fn devices(&self) -> Result<Vec<DeviceInfo>>;

    /// Enrolls a new protector: generates or derives the key and returns the
    /// descriptor to store. Asks the user through `ui` for anything needed.
    ///
    /// # Errors
    /// Device absent, wrong PIN, cancelled prompt, unsupported option.
    fn enroll(&self, req: &EnrollRequest, ui: &dyn Callbacks) -> Result<Enrollment>;

    /// Wraps `secret` to the enrollment, binding `aad`.
    ///
    /// # Errors
    /// For ECIES backends only an invalid stored public key; device-bound
    /// modes fail as the device does.
    fn wrap(&self, enrollment: &Enrollment, secret: &Secret32, aad: &[u8]) -> Result<Wrapped>;

    /// Unwraps a secret. Checks the device is the enrolled one *before* any
    /// PIN is asked for or sent.
    ///
    /// # Errors
    /// [`Error::WrongDevice`], [`Error::WrongPin`], [`Error::UnwrapFailed`]
    /// and the other device states.
    fn unwrap(
        &self,
        enrollment: &Enrollment,
        wrapped: &Wrapped,
        aad: &[u8],
        ui: &dyn Callbacks,
    ) -> Result<Secret32>;

    /// Signs `msg` with the enrolled key (hashing as the algorithm says).
    ///
    /// # Errors
    /// As [`Backend::unwrap`]; [`Error::NotSupported`] only where
    /// `capabilities().sign` is empty.
    fn sign(&self, enrollment: &Enrollment, msg: &[u8], ui: &dyn Callbacks) -> Result<Signature>;

    /// Is the enrolled device present, the right one, usable?
    ///
    /// # Errors
    /// Transport failures; an absent device is `Ok` with `present: false`.
    fn health(&self, enrollment: &Enrollment) -> Result<Health>;

    /// Ends every session with a device this backend keeps open: logs out
    /// of PKCS#11 tokens, releases PIV card handles, closes the TPM
    /// connection. The next unwrap or sign starts afresh (and asks for the
    /// PIN again). The service calls it when it locks. Backends that keep
    /// nothing open need not implement it.
    fn end_session(&self) {}
}

/// What kind of secret a prompt asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// A device PIN.
    Pin,
    /// A device PUK.
    Puk,
    /// An existing passphrase.
    Passphrase,
    /// A new passphrase (the UI should ask twice).
    NewPassphrase,
    /// A recovery key.
    RecoveryKey,
}

/// A request for a secret from the user.
#[derive(Debug, Clone)]
pub struct SecretRequest<'a> {
    /// What is asked for.
    pub kind: SecretKind,
    /// Which protector or device it is for ("passphrase 'laptop'").
    pub description: &'a str,
    /// Tries left before lockout, where known.
    pub retries_left: Option<u32>,
}

/// Something to tell the user while an operation runs.
#[derive(Debug, Clone)]
pub enum Notice<'a> {
    /// Touch the device now.
    TouchRequired {
        /// Which device.
        device: &'a str,
    },
    /// Insert or connect this device.
    InsertDevice {
        /// Which device.
        device: &'a str,
    },
    /// Anything else worth saying.
    Info(&'a str),
}

/// All interaction with the user. Backends never touch the terminal; the
/// CLI implements this with prompts, the daemon and tests with secrets
/// passed in advance.
pub trait Callbacks: Send + Sync {
    /// Asks for a secret.
    ///
    /// # Errors
    /// [`Error::Cancelled`] if the user declines; no secret available in a
    /// non-interactive context.
    fn request_secret(&self, request: &SecretRequest<'_>) -> Result<SecretString>;

    /// Tells the user something (touch, insert device).
    fn notify(&self, notice: &Notice<'_>);

    /// Shows a newly generated secret the user must write down (a recovery
    /// key). It is shown once and never stored in clear.
    ///
    /// # Errors
    /// If it cannot be shown; enrollment is then abandoned.
    fn show_secret(&self, title: &str, secret: &SecretString) -> Result<()>;
}

/// Serde helper: bytes as lowercase hex.
pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}
