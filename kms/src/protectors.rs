//! Protectors that need no hardware: a recovery key and a passphrase. Both
//! derive a P-256 key from the user's secret and use the shared ECIES wrap,
//! so the master key can be re-wrapped to them without their secret.
//!
//! Both follow the same unwrap order: check the stored descriptor and the
//! wrapped blob (no prompt for a blob that cannot be right), ask for the
//! secret, derive the private key, compare its public key with the enrolled
//! one in constant time (a mismatch is a *wrong secret*, told apart from a
//! *tampered blob*), and only then open the ECIES blob. Formats and test
//! vectors: docs/FORMAT.md, "Software protectors and the mock token".

pub mod passphrase;
pub mod recovery;

use p256::SecretKey;
use p256::ecdsa::signature::Signer;
use subtle::ConstantTimeEq;

use crate::backend::{
    BackendKind, Capabilities, Enrollment, Health, SignAlgorithm, Signature, WrapMode, Wrapped,
};
use crate::crypto::ecies;
use crate::secret::Secret32;
use crate::{Error, Result};

/// The capabilities of a software protector: ECIES wrap, ECDSA P-256
/// signatures with the derived key, a secret asked for on every unwrap.
fn capabilities() -> Capabilities {
    Capabilities {
        wrap_modes: vec![WrapMode::EciesP256],
        sign: vec![SignAlgorithm::EcdsaP256Sha256],
        pin: true,
        touch: false,
        pcr: false,
    }
}

/// Checks that `enrollment` is a version-1 descriptor of `kind` with a valid
/// compressed P-256 public key, and returns that key.
fn enrolled_key(enrollment: &Enrollment, kind: BackendKind) -> Result<[u8; ecies::POINT_LEN]> {
    enrollment.check_kind(kind)?;
    if enrollment.version() != Some(1) {
        return Err(Error::Malformed {
            what: "protector descriptor has no supported version (\"v\": 1)",
        });
    }
    enrollment.p256_public_key()
}

/// The wrap of every ECIES protector: only the public key is needed.
fn wrap(
    enrollment: &Enrollment,
    kind: BackendKind,
    secret: &Secret32,
    aad: &[u8],
) -> Result<Wrapped> {
    let recipient = enrolled_key(enrollment, kind)?;
    ecies::seal(&recipient, secret, aad).map(Wrapped)
}

/// `Ok` if `derived` is the private half of `enrolled`, compared in
/// constant time; `wrong` otherwise.
fn check_derived(
    derived: &SecretKey,
    enrolled: &[u8; ecies::POINT_LEN],
    wrong: Error,
) -> Result<()> {
    let public = ecies::compress(&derived.public_key());
    if bool::from(public.ct_eq(enrolled)) {
        Ok(())
    } else {
        Err(wrong)
    }
}

/// Opens an ECIES blob with a key derived in software.
fn open(
    derived: &SecretKey,
    enrolled: &[u8; ecies::POINT_LEN],
    wrapped: &Wrapped,
    aad: &[u8],
) -> Result<Secret32> {
    ecies::open(enrolled, &wrapped.0, aad, |epk| {
        Ok(ecies::ecdh(derived, epk))
    })
}

/// ECDSA P-256 with SHA-256 (RFC 6979 deterministic nonce), DER-encoded.
fn sign(derived: &SecretKey, msg: &[u8]) -> Result<Signature> {
    let signer = p256::ecdsa::SigningKey::from(derived);
    let sig: p256::ecdsa::Signature = signer.try_sign(msg).map_err(|_| Error::Malformed {
        what: "ECDSA signing failed",
    })?;
    Ok(Signature {
        algorithm: SignAlgorithm::EcdsaP256Sha256,
        bytes: sig.to_der().as_bytes().to_vec(),
    })
}

/// A software protector is always present; it "matches" when its
/// descriptor is well formed.
fn health(enrollment: &Enrollment, kind: BackendKind, what: &str) -> Health {
    let (matches, detail) = match enrolled_key(enrollment, kind) {
        Ok(_) => (
            true,
            format!("software protector; unlocking needs the {what}"),
        ),
        Err(e) => (false, format!("the stored descriptor is unusable: {e}")),
    };
    Health {
        present: true,
        matches,
        retries_left: None,
        lockout_seconds: None,
        detail,
    }
}
