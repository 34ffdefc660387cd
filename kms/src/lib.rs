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
#![forbid(unsafe_code)]

pub mod audit;
pub mod backend;
pub mod crypto;
pub mod error;
pub mod keys;
pub mod protectors;
pub mod secret;
pub mod service;
pub mod store;

pub use backend::{
    Backend, BackendKind, Callbacks, Capabilities, DeviceInfo, EnrollRequest, Enrollment, Health,
    Notice, SecretKind, SecretRequest, SignAlgorithm, Signature, WrapMode, Wrapped,
};
pub use error::{Error, Result};
pub use keys::{DataClass, KeyName, KeyPurpose, MasterKey};
pub use secret::{Secret32, SecretBytes, SecretString};
pub use service::Service;
