//! The shared P-256 ECIES wrap used by every protector that holds a P-256
//! key (YubiKey, TPM, PKCS#11 EC, and the software protectors, whose key is
//! derived from the user's secret).
//!
//! `blob = 0x01 || epk (33, SEC1 compressed) || AES-256-GCM(k, 0^96, secret, aad)`
//! with `k = HKDF-SHA256(ikm = x(ECDH(e, R)), salt = epk || R, info =
//! "keyward/v1/ecies-p256")`, where `R` is the recipient's compressed public
//! key. The key `k` is fresh for every wrap (new ephemeral key), so the fixed
//! zero nonce is never reused under one key. Layout in docs/FORMAT.md.
//!
//! Only the recipient's public key is needed to wrap; the private half (the
//! ECDH with `epk`) is done by the device through the closure given to
//! [`open`].

use hkdf::Hkdf;
use p256::elliptic_curve::sec1::ToSec1Point;
use p256::{PublicKey, SecretKey};
use sha2::Sha256;
use zeroize::Zeroize;

use super::aead::{self, Nonce};
use crate::secret::{Secret32, random_bytes};
use crate::{Error, Result};

/// Format version byte.
pub const VERSION: u8 = 0x01;
/// Length of a compressed P-256 point.
pub const POINT_LEN: usize = 33;
/// Length of a wrapped 32-byte secret.
pub const BLOB_LEN: usize = 1 + POINT_LEN + 32 + 16;
const INFO: &[u8] = b"keyward/v1/ecies-p256";
/// The all-zero GCM nonce: safe because every wrap uses a fresh key.
const ZERO_NONCE: Nonce = Nonce::from_bytes([0u8; aead::NONCE_LEN]);

/// Parses and validates a SEC1 P-256 public key (compressed or not). Rejects
/// the identity, points off the curve and coordinates out of range.
///
/// # Errors
/// [`Error::InvalidPublicKey`].
pub fn parse_public_key(sec1: &[u8]) -> Result<PublicKey> {
    PublicKey::from_sec1_bytes(sec1).map_err(|_| Error::InvalidPublicKey {
        what: "not a valid P-256 point",
    })
}

/// The 33-byte compressed encoding of `pk`.
///
/// # Panics
/// Never: a compressed P-256 point is always 33 bytes.
pub fn compress(pk: &PublicKey) -> [u8; POINT_LEN] {
    let point = pk.to_sec1_point(true);
    point
        .as_bytes()
        .try_into()
        .expect("a compressed P-256 point is 33 bytes")
}

/// Wraps `secret` to `recipient` (SEC1 bytes), binding `aad`.
///
/// # Errors
/// [`Error::InvalidPublicKey`] for a bad recipient; [`Error::Random`].
pub fn seal(recipient: &[u8], secret: &Secret32, aad: &[u8]) -> Result<Vec<u8>> {
    let ephemeral = random_scalar()?;
    seal_with_ephemeral(recipient, secret, aad, &ephemeral)
}

/// [`seal`] with a caller-chosen ephemeral key. Test hook for the fixed
/// vector in docs/FORMAT.md only: an ephemeral key must never be reused.
///
/// # Errors
/// [`Error::InvalidPublicKey`] for a bad recipient.
#[doc(hidden)]
pub fn seal_with_ephemeral(
    recipient: &[u8],
    secret: &Secret32,
    aad: &[u8],
    ephemeral: &SecretKey,
) -> Result<Vec<u8>> {
    let recipient = parse_public_key(recipient)?;
    let epk = compress(&ephemeral.public_key());
    let z = ecdh(ephemeral, &recipient);
    let key = derive(&z, &epk, &compress(&recipient));

    let mut blob = Vec::with_capacity(BLOB_LEN);
    blob.push(VERSION);
    blob.extend_from_slice(&epk);
    let mut body = *secret.expose();
    let tag = aead::Key::new(&key).seal_in_place(ZERO_NONCE, aad, &mut body)?;
    blob.extend_from_slice(&body);
    blob.extend_from_slice(&tag);
    body.zeroize();
    Ok(blob)
}

/// The ephemeral public key inside `blob`, validated. A device is asked to
/// do ECDH with this point.
///
/// # Errors
/// [`Error::Malformed`], [`Error::UnsupportedFormat`],
/// [`Error::InvalidPublicKey`].
pub fn ephemeral_key(blob: &[u8]) -> Result<PublicKey> {
    if blob.len() != BLOB_LEN {
        return Err(Error::Malformed {
            what: "wrapped key has the wrong length",
        });
    }
    if blob[0] != VERSION {
        return Err(Error::UnsupportedFormat {
            version: blob[0],
            supported: VERSION,
        });
    }
    parse_public_key(&blob[1..=POINT_LEN])
}

/// Unwraps `blob`, which was sealed to `recipient`. `ecdh` computes the
/// x-coordinate of `d * epk` with the recipient's private key `d` (on the
/// device or in software).
///
/// # Errors
/// As [`ephemeral_key`]; errors from `ecdh`; [`Error::UnwrapFailed`] if the
/// blob or `aad` was altered or it was sealed to another key.
pub fn open(
    recipient: &[u8],
    blob: &[u8],
    aad: &[u8],
    ecdh: impl FnOnce(&PublicKey) -> Result<Secret32>,
) -> Result<Secret32> {
    let epk = ephemeral_key(blob)?;
    let recipient = parse_public_key(recipient)?;
    let z = ecdh(&epk)?;
    let key = derive(&z, &compress(&epk), &compress(&recipient));
    let mut body = [0u8; 32 + aead::TAG_LEN];
    body.copy_from_slice(&blob[1 + POINT_LEN..]);
    let result = aead::Key::new(&key)
        .open_in_place(ZERO_NONCE, aad, &mut body)
        .map_err(|_| Error::UnwrapFailed)
        .and_then(|plain| Secret32::try_from_slice(plain));
    body.zeroize();
    result
}

/// ECDH in software: the x-coordinate of `secret * peer`.
///
/// # Panics
/// Never: a P-256 x-coordinate is always 32 bytes.
pub fn ecdh(secret: &SecretKey, peer: &PublicKey) -> Secret32 {
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), peer.as_affine());
    Secret32::try_from_slice(shared.raw_secret_bytes().as_slice())
        .expect("a P-256 x-coordinate is 32 bytes")
}

/// A uniformly random P-256 private key from the OS RNG.
///
/// # Errors
/// [`Error::Random`].
pub fn random_scalar() -> Result<SecretKey> {
    loop {
        let mut bytes = [0u8; 32];
        random_bytes(&mut bytes)?;
        let key = SecretKey::from_slice(&bytes);
        bytes.zeroize();
        // Rejection sampling: fails only for 0 or >= n (probability ~2^-32).
        if let Ok(key) = key {
            return Ok(key);
        }
    }
}

/// A P-256 private key derived deterministically from a 32-byte secret
/// (the software protectors): `HKDF-SHA256(ikm = seed, salt = "",
/// info = label || counter)` with the first counter giving a valid scalar.
///
/// # Panics
/// Only if 256 consecutive HKDF outputs are all outside `[1, n)`, which has
/// probability about 2^-8192.
pub fn scalar_from_seed(seed: &Secret32, label: &[u8]) -> SecretKey {
    let hk = Hkdf::<Sha256>::new(None, seed.expose());
    for counter in 0u8..=255 {
        let mut info = label.to_vec();
        info.push(counter);
        let mut bytes = [0u8; 32];
        hk.expand(&info, &mut bytes)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let key = SecretKey::from_slice(&bytes);
        bytes.zeroize();
        if let Ok(key) = key {
            return key;
        }
    }
    unreachable!("256 consecutive HKDF outputs outside [1, n) has probability 2^-8192")
}

fn derive(z: &Secret32, epk: &[u8; POINT_LEN], recipient: &[u8; POINT_LEN]) -> Secret32 {
    let mut salt = [0u8; 2 * POINT_LEN];
    salt[..POINT_LEN].copy_from_slice(epk);
    salt[POINT_LEN..].copy_from_slice(recipient);
    let hk = Hkdf::<Sha256>::new(Some(&salt), z.expose());
    let mut okm = [0u8; 32];
    hk.expand(INFO, &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    Secret32::from_bytes(&mut okm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair() -> (SecretKey, [u8; POINT_LEN]) {
        let sk = random_scalar().expect("rng");
        let pk = compress(&sk.public_key());
        (sk, pk)
    }

    #[test]
    fn round_trip() {
        let (sk, pk) = keypair();
        let secret = Secret32::random().expect("rng");
        let blob = seal(&pk, &secret, b"aad").expect("seal");
        assert_eq!(blob.len(), BLOB_LEN);
        let out = open(&pk, &blob, b"aad", |epk| Ok(ecdh(&sk, epk))).expect("open");
        assert_eq!(out.expose(), secret.expose());
    }

    #[test]
    fn tamper_and_wrong_aad_rejected() {
        let (sk, pk) = keypair();
        let secret = Secret32::random().expect("rng");
        let blob = seal(&pk, &secret, b"aad").expect("seal");
        assert!(open(&pk, &blob, b"aaD", |e| Ok(ecdh(&sk, e))).is_err());
        for i in 0..blob.len() {
            let mut t = blob.clone();
            t[i] ^= 0x01;
            assert!(
                open(&pk, &t, b"aad", |e| Ok(ecdh(&sk, e))).is_err(),
                "byte {i}"
            );
        }
        let (other, other_pk) = keypair();
        assert!(open(&other_pk, &blob, b"aad", |e| Ok(ecdh(&other, e))).is_err());
        assert!(open(&pk, &blob[..BLOB_LEN - 1], b"aad", |e| Ok(ecdh(&sk, e))).is_err());
    }

    #[test]
    fn bad_recipients_rejected() {
        let secret = Secret32::random().expect("rng");
        // x = 2^256 - 1 is not below the field prime.
        let mut x_too_big = [0xffu8; 33];
        x_too_big[0] = 0x02;
        let mut bad_prefix = [0x11u8; 33];
        bad_prefix[0] = 0x05;
        for bad in [
            &[][..],
            &[0u8][..],
            &x_too_big[..],
            &bad_prefix[..],
            &[4u8; 65][..],
        ] {
            assert!(seal(bad, &secret, b"").is_err(), "{bad:02x?}");
        }
    }

    #[test]
    fn seed_derivation_is_deterministic() {
        let seed = Secret32::try_from_slice(&[5u8; 32]).expect("32");
        let a = scalar_from_seed(&seed, b"x");
        let b = scalar_from_seed(&seed, b"x");
        let c = scalar_from_seed(&seed, b"y");
        assert_eq!(a.to_bytes(), b.to_bytes());
        assert_ne!(a.to_bytes(), c.to_bytes());
    }
}
