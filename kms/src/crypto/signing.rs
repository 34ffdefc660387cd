//! Ed25519 keys and the signed-message format.

use crate::Result;
use crate::keys::KeyName;
use crate::secret::Secret32;

/// Length of an encoded Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// The fields a keyward signature covers besides the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeader {
    /// Signing key name.
    pub key: KeyName,
    /// Key version.
    pub version: u32,
    /// The signing keystore (its store id).
    pub signer: [u8; 16],
    /// Monotonic per-key counter of the signer.
    pub counter: u64,
    /// Unix time of signing, seconds.
    pub timestamp: u64,
    /// Intended audience (may be empty), at most 255 bytes.
    pub audience: String,
}

/// The Ed25519 public key of a 32-byte seed.
pub fn public_key(seed: &Secret32) -> [u8; PUBLIC_KEY_LEN] {
    let _ = seed;
    todo!("helper A")
}

/// Signs `message` with `header`, returning the encoded signature blob.
///
/// # Errors
/// `InvalidArgument` for an audience over 255 bytes.
pub fn sign(
    seed: &Secret32,
    header: &SignedHeader,
    message: &mut dyn std::io::Read,
) -> Result<Vec<u8>> {
    let _ = (seed, header, message);
    todo!("helper A")
}

/// Parses a signature blob without verifying it.
///
/// # Errors
/// `Malformed`, `UnsupportedFormat`.
pub fn parse(blob: &[u8]) -> Result<SignedHeader> {
    let _ = blob;
    todo!("helper A")
}

/// Verifies `blob` over `message` with `verify_strict`, returning the header.
///
/// # Errors
/// `InvalidSignature`, `Malformed`, `InvalidPublicKey`, `Io`.
pub fn verify(
    public_key: &[u8],
    blob: &[u8],
    message: &mut dyn std::io::Read,
) -> Result<SignedHeader> {
    let _ = (public_key, blob, message);
    todo!("helper A")
}
