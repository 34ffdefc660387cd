//! Internal AES-256-GCM and HKDF-SHA256 primitives used by the keyward
//! formats ([`super::envelope`], [`super::stream`], [`super::ecies`]).
//!
//! This module is low level on purpose: its callers choose nonces. It is
//! public only so that the Wycheproof harness in `keyward-tests` can run
//! vectors through exactly the code the formats use; nothing outside this
//! crate's formats should build ciphertexts with it. Users of keyward never
//! supply nonces (docs/DESIGN.md, "AES-GCM limits").
//!
//! AES-256-GCM comes from `ring`, about four times faster here than the
//! RustCrypto implementation (docs/HARDWARE.md). Nonces are a type with exactly
//! 12 bytes, so the IV-length edge cases of GCM cannot be expressed.

use std::fmt;

use hkdf::Hkdf;
use ring::aead;
use sha2::Sha256;
use zeroize::Zeroize;

use crate::secret::{Secret32, SecretBytes, random_bytes};
use crate::{Error, Result};

/// AES-256 key length in bytes.
pub const KEY_LEN: usize = 32;
/// GCM nonce length in bytes (96-bit IV, NIST SP 800-38D §8.2).
pub const NONCE_LEN: usize = 12;
/// GCM tag length in bytes (full 128-bit tags only).
pub const TAG_LEN: usize = 16;
/// Largest plaintext of one GCM message: 2^39 - 256 bits, that is
/// 2^36 - 32 bytes (NIST SP 800-38D §5.2.1.1).
pub const P_MAX: u64 = (1 << 36) - 32;
/// Largest HKDF-SHA256 output: 255 blocks of 32 bytes (RFC 5869 §2.3).
pub const HKDF_SHA256_MAX: usize = 255 * 32;

/// A 96-bit GCM nonce.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce([u8; NONCE_LEN]);

impl Nonce {
    /// A nonce from its 12 bytes.
    pub const fn from_bytes(bytes: [u8; NONCE_LEN]) -> Self {
        Self(bytes)
    }

    /// A uniformly random nonce from the OS CSPRNG.
    ///
    /// # Errors
    /// [`Error::Random`].
    pub fn random() -> Result<Self> {
        let mut bytes = [0u8; NONCE_LEN];
        random_bytes(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// The nonce's bytes.
    pub const fn as_bytes(&self) -> &[u8; NONCE_LEN] {
        &self.0
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({})", hex::encode(self.0))
    }
}

/// An expanded AES-256-GCM key. `Send + Sync`: one key can seal chunks on
/// several threads at once.
pub struct Key(aead::LessSafeKey);

impl Key {
    /// Expands `key` for AES-256-GCM.
    pub fn new(key: &Secret32) -> Self {
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, key.expose())
            .expect("a 32-byte key is a valid AES-256-GCM key");
        Self(aead::LessSafeKey::new(unbound))
    }

    /// Encrypts `in_out` in place and returns the tag.
    ///
    /// The caller must never use one `nonce` twice with this key.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `in_out` is longer than [`P_MAX`].
    pub fn seal_in_place(
        &self,
        nonce: Nonce,
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN]> {
        check_len(in_out.len())?;
        let tag = self
            .0
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce.0),
                aead::Aad::from(aad),
                in_out,
            )
            .map_err(|_| too_long())?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts `in_out` (ciphertext followed by the 16-byte tag) in place
    /// and returns the plaintext part of it.
    ///
    /// # Errors
    /// [`Error::DecryptionFailed`] if `in_out` is shorter than a tag or does
    /// not authenticate. The contents of `in_out` are then unspecified.
    pub fn open_in_place<'a>(
        &self,
        nonce: Nonce,
        aad: &[u8],
        in_out: &'a mut [u8],
    ) -> Result<&'a mut [u8]> {
        self.0
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce.0),
                aead::Aad::from(aad),
                in_out,
            )
            .map_err(|_| Error::DecryptionFailed)
    }

    /// Like [`Key::open_in_place`] with the tag given separately;
    /// `ciphertext` is decrypted in place.
    ///
    /// # Errors
    /// [`Error::DecryptionFailed`].
    pub fn open_in_place_separate_tag(
        &self,
        nonce: Nonce,
        aad: &[u8],
        ciphertext: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()> {
        self.0
            .open_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce.0),
                aead::Aad::from(aad),
                aead::Tag::from(*tag),
                ciphertext,
                0..,
            )
            .map(|_| ())
            .map_err(|_| Error::DecryptionFailed)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("aead::Key(AES-256-GCM, [REDACTED])")
    }
}

fn check_len(len: usize) -> Result<()> {
    if u64::try_from(len).map_or(true, |len| len > P_MAX) {
        return Err(too_long());
    }
    Ok(())
}

fn too_long() -> Error {
    Error::InvalidArgument {
        what: format!("plaintext is longer than the AES-GCM limit of {P_MAX} bytes"),
    }
}

/// HKDF-SHA256 (RFC 5869): `out_len` bytes from `ikm`, `salt` (empty means
/// the all-zero salt, as the RFC says) and `info`.
///
/// # Errors
/// [`Error::InvalidArgument`] if `out_len` exceeds [`HKDF_SHA256_MAX`]
/// (8160) bytes.
pub fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[u8], out_len: usize) -> Result<SecretBytes> {
    if out_len > HKDF_SHA256_MAX {
        return Err(Error::InvalidArgument {
            what: format!("HKDF-SHA256 output of {out_len} bytes exceeds {HKDF_SHA256_MAX}"),
        });
    }
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut out = vec![0u8; out_len];
    if hk.expand(info, &mut out).is_err() {
        out.zeroize();
        return Err(Error::InvalidArgument {
            what: format!("HKDF-SHA256 output of {out_len} bytes refused"),
        });
    }
    Ok(SecretBytes::new(out))
}

/// HKDF-SHA256 with a 32-byte output, as a [`Secret32`].
pub fn hkdf_sha256_32(ikm: &[u8], salt: &[u8], info: &[u8]) -> Secret32 {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut okm = [0u8; 32];
    hk.expand(info, &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    Secret32::from_bytes(&mut okm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key::new(&Secret32::try_from_slice(&[b; 32]).expect("32 bytes"))
    }

    #[test]
    fn round_trip_and_tamper() {
        let k = key(1);
        let nonce = Nonce::from_bytes([7; 12]);
        let mut buf = b"hello world".to_vec();
        let tag = k.seal_in_place(nonce, b"aad", &mut buf).expect("seal");
        let mut sealed = buf.clone();
        sealed.extend_from_slice(&tag);
        let mut copy = sealed.clone();
        assert_eq!(
            k.open_in_place(nonce, b"aad", &mut copy).expect("open"),
            b"hello world"
        );
        let mut ct = buf.clone();
        k.open_in_place_separate_tag(nonce, b"aad", &mut ct, &tag)
            .expect("open separate");
        assert_eq!(ct, b"hello world");
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x80;
            assert!(matches!(
                k.open_in_place(nonce, b"aad", &mut t),
                Err(Error::DecryptionFailed)
            ));
        }
        let mut t = sealed.clone();
        assert!(k.open_in_place(nonce, b"aaD", &mut t).is_err());
        let mut t = sealed.clone();
        assert!(key(2).open_in_place(nonce, b"aad", &mut t).is_err());
        let mut short = vec![0u8; 15];
        assert!(k.open_in_place(nonce, b"", &mut short).is_err());
    }

    #[test]
    fn hkdf_limits() {
        assert_eq!(
            hkdf_sha256(b"k", b"s", b"i", HKDF_SHA256_MAX)
                .expect("max")
                .expose()
                .len(),
            HKDF_SHA256_MAX
        );
        assert!(matches!(
            hkdf_sha256(b"k", b"s", b"i", HKDF_SHA256_MAX + 1),
            Err(Error::InvalidArgument { .. })
        ));
        assert_eq!(
            hkdf_sha256(b"k", b"s", b"i", 32).expect("32").expose(),
            hkdf_sha256_32(b"k", b"s", b"i").expose()
        );
        assert!(check_len(usize::try_from(P_MAX).expect("64-bit")).is_ok());
        assert!(check_len(usize::try_from(P_MAX + 1).expect("64-bit")).is_err());
    }
}
