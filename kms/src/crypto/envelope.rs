//! One-shot AES-256-GCM ciphertexts and the header shared with [`super::stream`].

use crate::Result;
use crate::keys::{DataClass, KeyName};
use crate::secret::{Secret32, SecretBytes};

/// Which body follows a ciphertext header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One AES-256-GCM message ([`seal`]/[`open`]).
    OneShot,
    /// Chunked stream ([`super::stream`]).
    Stream,
}

/// The parsed, self-describing header of a keyward ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Body kind.
    pub mode: Mode,
    /// Key the data is encrypted under.
    pub key: KeyName,
    /// Version of that key.
    pub version: u32,
}

/// Parses the header at the start of `ciphertext` without decrypting,
/// returning it and its length in bytes.
///
/// # Errors
/// `Malformed`, `UnsupportedFormat`.
pub fn parse_header(ciphertext: &[u8]) -> Result<(Header, usize)> {
    let _ = ciphertext;
    todo!("helper A")
}

/// Encrypts `plaintext` under one data-key version. AAD binds the header,
/// the key's data class and the caller's `context`.
///
/// # Errors
/// `Random`; `InvalidArgument` for a plaintext over the GCM limit.
pub fn seal(
    key: &Secret32,
    name: &KeyName,
    version: u32,
    class: DataClass,
    context: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let _ = (key, name, version, class, context, plaintext);
    todo!("helper A")
}

/// Decrypts a one-shot ciphertext.
///
/// # Errors
/// `DecryptionFailed` for any tampering or a wrong key, class or context;
/// `Malformed`/`UnsupportedFormat` for a bad header.
pub fn open(
    key: &Secret32,
    class: DataClass,
    context: &[u8],
    ciphertext: &[u8],
) -> Result<SecretBytes> {
    let _ = (key, class, context, ciphertext);
    todo!("helper A")
}

/// Largest one-shot ciphertext accepted from a reader (64 MiB); larger data
/// belongs in the stream format.
pub const MAX_CIPHERTEXT_LEN: u64 = 64 << 20;
