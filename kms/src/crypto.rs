//! Cryptographic building blocks and byte formats. Every format here is
//! specified in docs/FORMAT.md with fixed test vectors.
//!
//! - [`kw`]: RFC 3394 wrap of data-key versions under the master key.
//! - [`ecies`]: the shared P-256 ECIES wrap of the master key to protectors.
//! - [`envelope`]: one-shot AES-256-GCM ciphertexts (self-describing).
//! - [`stream`]: chunked AES-256-GCM for large inputs, in constant memory.
//! - [`signing`]: Ed25519 signed-message format with replay protection fields.
//! - [`ecdsa`]: verification of the ECDSA P-256 signatures hardware produces.
//!
//! The AES-GCM and HKDF primitives under all of these live in a hidden
//! `aead` module: it takes nonces from its caller, so it is internal.

#[doc(hidden)]
pub mod aead;
pub mod ecdsa;
pub mod ecies;
pub mod envelope;
pub mod kw;
pub mod signing;
pub mod stream;
