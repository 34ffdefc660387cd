//! keyward-kms: the core of keyward, a hardware-backed key management
//! service for a local-first assistant.
//!
//! It holds the key hierarchy (hardware key → master key → versioned data
//! keys), the byte formats, the SQLite keystore, the hash-chained audit log,
//! the [`Backend`] trait every protector implements, and the in-process
//! [`Service`] that both the CLI and the daemon call. It has no hardware
//! dependencies: hardware backends live in keyward-backends.
//!
//! It is not a general-purpose crypto library: nonces, key sizes and
//! algorithms are fixed, and callers never choose them.
//!
//! The ciphertext format binds the key name, version, data class and the
//! caller's context; changing any of them makes decryption fail:
//!
//! ```
//! use keyward_kms::crypto::envelope;
//! use keyward_kms::{DataClass, KeyName, Secret32};
//!
//! # fn main() -> keyward_kms::Result<()> {
//! let key = Secret32::random()?;
//! let name = KeyName::new("notes")?;
//! let sealed = envelope::seal(&key, &name, 1, DataClass::Private, b"calendar", b"dentist")?;
//! let (header, _) = envelope::parse_header(&sealed)?;
//! assert_eq!((header.key.as_str(), header.version), ("notes", 1));
//! let plain = envelope::open(&key, DataClass::Private, b"calendar", &sealed)?;
//! assert_eq!(plain.expose(), b"dentist");
//! assert!(envelope::open(&key, DataClass::General, b"calendar", &sealed).is_err());
//! assert!(envelope::open(&key, DataClass::Private, b"mail", &sealed).is_err());
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod audit;
pub mod backend;
pub mod clients;
pub mod crypto;
pub mod error;
pub mod keys;
pub mod protectors;
pub mod secret;
pub mod service;
pub mod store;

pub use backend::{
    Backend, BackendKind, Callbacks, Capabilities, DeviceInfo, EnrollOptions, EnrollRequest,
    Enrollment, Health, Notice, SecretKind, SecretRequest, SignAlgorithm, Signature, WrapMode,
    Wrapped,
};
pub use error::{Error, Result};
pub use keys::{DataClass, KeyName, KeyPurpose, MasterKey};
pub use secret::{Secret32, SecretBytes, SecretString};
pub use service::Service;
