//! Verification of ECDSA P-256 / SHA-256 signatures, the algorithm the
//! hardware backends sign with (PIV, TPM and PKCS#11 all offer it).
//!
//! Two encodings exist and devices differ: PIV and most X.509 tooling give
//! ASN.1 DER `SEQUENCE { r INTEGER, s INTEGER }`; PKCS#11 `CKM_ECDSA` and
//! the TPM give the fixed-size IEEE P1363 form `r (32, BE) || s (32, BE)`.
//! We verify both strictly (DER must be minimal; `0 < r, s < n`) and can
//! convert between them. Both s and n - s verify, as ECDSA defines; we do
//! not use ECDSA signatures where malleability would matter.

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};

use crate::{Error, Result};

/// Length of a P1363 (`r || s`) P-256 signature.
pub const P1363_LEN: usize = 64;

/// Verifies a DER-encoded ECDSA P-256 signature over SHA-256(`msg`) with a
/// SEC1 public key (compressed or uncompressed).
///
/// # Errors
/// [`Error::InvalidPublicKey`] for a bad key; [`Error::InvalidSignature`]
/// for a signature that is not strict DER or does not verify.
pub fn verify_p256_sha256_der(public_key: &[u8], msg: &[u8], sig_der: &[u8]) -> Result<()> {
    let key = parse_key(public_key)?;
    let sig = Signature::from_der(sig_der).map_err(|_| Error::InvalidSignature)?;
    key.verify(msg, &sig).map_err(|_| Error::InvalidSignature)
}

/// Verifies a P1363 (`r || s`, 64 bytes) ECDSA P-256 signature over
/// SHA-256(`msg`) with a SEC1 public key.
///
/// # Errors
/// As [`verify_p256_sha256_der`]; a signature of any other length is
/// [`Error::InvalidSignature`].
pub fn verify_p256_sha256_p1363(public_key: &[u8], msg: &[u8], sig: &[u8]) -> Result<()> {
    let key = parse_key(public_key)?;
    let sig = parse_p1363(sig)?;
    key.verify(msg, &sig).map_err(|_| Error::InvalidSignature)
}

/// Converts a strict-DER signature to P1363 form.
///
/// # Errors
/// [`Error::InvalidSignature`] if it is not strict DER with `0 < r, s < n`.
pub fn der_to_p1363(sig_der: &[u8]) -> Result<[u8; P1363_LEN]> {
    let sig = Signature::from_der(sig_der).map_err(|_| Error::InvalidSignature)?;
    let mut out = [0u8; P1363_LEN];
    out.copy_from_slice(&sig.to_bytes());
    Ok(out)
}

/// Converts a P1363 signature to DER form.
///
/// # Errors
/// [`Error::InvalidSignature`] for a wrong length or `r`, `s` out of range.
pub fn p1363_to_der(sig: &[u8]) -> Result<Vec<u8>> {
    Ok(parse_p1363(sig)?.to_der().as_bytes().to_vec())
}

fn parse_key(public_key: &[u8]) -> Result<VerifyingKey> {
    VerifyingKey::from_sec1_bytes(public_key).map_err(|_| Error::InvalidPublicKey {
        what: "not a valid P-256 point",
    })
}

fn parse_p1363(sig: &[u8]) -> Result<Signature> {
    if sig.len() != P1363_LEN {
        return Err(Error::InvalidSignature);
    }
    Signature::from_slice(sig).map_err(|_| Error::InvalidSignature)
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer;

    use super::*;

    #[test]
    fn both_encodings_verify_and_convert() {
        let sk = SigningKey::from_slice(&[0x11; 32]).expect("scalar");
        let pk = sk.verifying_key().to_sec1_point(false);
        let sig: Signature = sk.sign(b"msg");
        let der = sig.to_der();
        let p1363 = sig.to_bytes();
        verify_p256_sha256_der(pk.as_bytes(), b"msg", der.as_bytes()).expect("der");
        verify_p256_sha256_p1363(pk.as_bytes(), b"msg", &p1363).expect("p1363");
        assert_eq!(der_to_p1363(der.as_bytes()).expect("conv")[..], p1363[..]);
        assert_eq!(p1363_to_der(&p1363).expect("conv"), der.as_bytes());
        assert!(matches!(
            verify_p256_sha256_der(pk.as_bytes(), b"msG", der.as_bytes()),
            Err(Error::InvalidSignature)
        ));
        assert!(matches!(
            verify_p256_sha256_p1363(pk.as_bytes(), b"msg", &p1363[..63]),
            Err(Error::InvalidSignature)
        ));
        assert!(matches!(
            verify_p256_sha256_p1363(pk.as_bytes(), b"msg", der.as_bytes()),
            Err(Error::InvalidSignature)
        ));
        assert!(matches!(
            verify_p256_sha256_der(&[0u8], b"msg", der.as_bytes()),
            Err(Error::InvalidPublicKey { .. })
        ));
        assert!(p1363_to_der(&[0u8; 64]).is_err());
    }
}
