//! Key material of the simulated card: management-key block ciphers, the
//! EC slot keys (P-256, P-384) and a minimal DER writer for the attestation
//! certificates.

use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::elliptic_curve::sec1::ToSec1Point;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// PIV algorithm identifiers (SP 800-78-4 and Yubico).
pub mod alg {
    /// 3DES (management key).
    pub const TDES: u8 = 0x03;
    /// AES-128 (management key).
    pub const AES128: u8 = 0x08;
    /// AES-192 (management key; the firmware 5.7 default).
    pub const AES192: u8 = 0x0A;
    /// AES-256 (management key).
    pub const AES256: u8 = 0x0C;
    /// ECC P-256.
    pub const P256: u8 = 0x11;
    /// ECC P-384.
    pub const P384: u8 = 0x14;
    /// PIN / PUK (metadata only).
    pub const PIN: u8 = 0xFF;
}

/// Fills `buf` from the OS RNG.
pub(crate) fn random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("OS random number generator available");
}

/// Key length in bytes of a management-key algorithm, `None` if unknown.
pub fn mgmt_key_len(alg: u8) -> Option<usize> {
    match alg {
        alg::TDES | alg::AES192 => Some(24),
        alg::AES128 => Some(16),
        alg::AES256 => Some(32),
        _ => None,
    }
}

/// Block length of a management-key algorithm (8 for 3DES, 16 for AES).
pub fn mgmt_block_len(alg: u8) -> usize {
    if alg == alg::TDES { 8 } else { 16 }
}

/// Encrypts (or decrypts) one block in place with a management key.
/// `key` and `block` lengths must match `alg` (checked by the caller).
pub fn mgmt_crypt(alg: u8, key: &[u8], block: &mut [u8], encrypt: bool) -> Option<()> {
    fn run<C: KeyInit + BlockCipherEncrypt + BlockCipherDecrypt>(
        key: &[u8],
        block: &mut [u8],
        encrypt: bool,
    ) -> Option<()> {
        let c = C::new_from_slice(key).ok()?;
        let b = block.try_into().ok()?;
        if encrypt {
            c.encrypt_block(b);
        } else {
            c.decrypt_block(b);
        }
        Some(())
    }
    match alg {
        alg::TDES => run::<des::TdesEde3>(key, block, encrypt),
        alg::AES128 => run::<aes::Aes128>(key, block, encrypt),
        alg::AES192 => run::<aes::Aes192>(key, block, encrypt),
        alg::AES256 => run::<aes::Aes256>(key, block, encrypt),
        _ => None,
    }
}

/// A private key in a slot.
#[derive(Clone)]
pub enum SlotKey {
    /// ECC P-256.
    P256(p256::SecretKey),
    /// ECC P-384.
    P384(p384::SecretKey),
}

impl std::fmt::Debug for SlotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlotKey(alg {:#04x}, <redacted>)", self.alg())
    }
}

impl SlotKey {
    /// Generates a fresh key for `alg` (`None` if unsupported).
    pub fn generate(alg: u8) -> Option<Self> {
        loop {
            let mut bytes = Zeroizing::new(vec![0u8; Self::scalar_len(alg)?]);
            random(&mut bytes);
            if let Some(k) = Self::from_scalar(alg, &bytes) {
                return Some(k);
            }
        }
    }

    /// Scalar length for `alg`.
    pub fn scalar_len(alg: u8) -> Option<usize> {
        match alg {
            alg::P256 => Some(32),
            alg::P384 => Some(48),
            _ => None,
        }
    }

    /// Imports a big-endian scalar (`None` if out of range or wrong size).
    pub fn from_scalar(alg: u8, scalar: &[u8]) -> Option<Self> {
        match alg {
            alg::P256 => p256::SecretKey::from_slice(scalar).ok().map(Self::P256),
            alg::P384 => p384::SecretKey::from_slice(scalar).ok().map(Self::P384),
            _ => None,
        }
    }

    /// The scalar, big-endian.
    pub fn scalar(&self) -> Zeroizing<Vec<u8>> {
        match self {
            Self::P256(k) => Zeroizing::new(k.to_bytes().to_vec()),
            Self::P384(k) => Zeroizing::new(k.to_bytes().to_vec()),
        }
    }

    /// The PIV algorithm id.
    pub fn alg(&self) -> u8 {
        match self {
            Self::P256(_) => alg::P256,
            Self::P384(_) => alg::P384,
        }
    }

    /// The uncompressed SEC1 public point.
    pub fn public_point(&self) -> Vec<u8> {
        match self {
            Self::P256(k) => k.public_key().to_sec1_point(false).as_bytes().to_vec(),
            Self::P384(k) => k.public_key().to_sec1_point(false).as_bytes().to_vec(),
        }
    }

    /// ECDSA over a (pre-hashed) digest: the digest is left-padded or
    /// truncated to the field size as the card does. Returns DER.
    pub fn sign(&self, digest: &[u8]) -> Option<Vec<u8>> {
        match self {
            Self::P256(k) => {
                let d = fit(digest, 32);
                let sig: p256::ecdsa::Signature =
                    p256::ecdsa::SigningKey::from(k).sign_prehash(&d).ok()?;
                Some(sig.to_der().as_bytes().to_vec())
            }
            Self::P384(k) => {
                let d = fit(digest, 48);
                let sig: p384::ecdsa::Signature =
                    p384::ecdsa::SigningKey::from(k).sign_prehash(&d).ok()?;
                Some(sig.to_der().as_bytes().to_vec())
            }
        }
    }

    /// ECDH with an uncompressed peer point: the shared x-coordinate, or
    /// `None` if the point is not on the curve.
    pub fn ecdh(&self, peer: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        match self {
            Self::P256(k) => {
                if peer.len() != 65 {
                    return None;
                }
                let pk = p256::PublicKey::from_sec1_bytes(peer).ok()?;
                let s = p256::ecdh::diffie_hellman(k.to_nonzero_scalar(), pk.as_affine());
                Some(Zeroizing::new(s.raw_secret_bytes().to_vec()))
            }
            Self::P384(k) => {
                if peer.len() != 97 {
                    return None;
                }
                let pk = p384::PublicKey::from_sec1_bytes(peer).ok()?;
                let s = p384::ecdh::diffie_hellman(k.to_nonzero_scalar(), pk.as_affine());
                Some(Zeroizing::new(s.raw_secret_bytes().to_vec()))
            }
        }
    }
}

/// Left-pads with zeros or truncates (keeps the leftmost bytes) to `n`.
fn fit(digest: &[u8], n: usize) -> Vec<u8> {
    if digest.len() >= n {
        digest[..n].to_vec()
    } else {
        let mut v = vec![0u8; n - digest.len()];
        v.extend_from_slice(digest);
        v
    }
}

// ---------------------------------------------------------------------------
// DER writer (just what the attestation certificates need).

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.push(0x82);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    der(0x30, &parts.concat())
}

/// A positive DER INTEGER from big-endian magnitude bytes.
fn integer(bytes: &[u8]) -> Vec<u8> {
    let mut b: &[u8] = bytes;
    while b.len() > 1 && b[0] == 0 {
        b = &b[1..];
    }
    let mut v = Vec::with_capacity(b.len() + 1);
    if b.first().is_some_and(|x| x & 0x80 != 0) {
        v.push(0);
    }
    v.extend_from_slice(b);
    der(0x02, &v)
}

const OID_ECDSA_SHA256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];
const OID_CN: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
/// 1.3.6.1.4.1.41482.3 (Yubico PIV attestation extensions) without the last arc.
const OID_YUBICO_PIV: &[u8] = &[0x2B, 0x06, 0x01, 0x04, 0x01, 0x82, 0xC4, 0x0A, 0x03];

fn name(cn: &str) -> Vec<u8> {
    let atv = seq(&[OID_CN, &der(0x0C, cn.as_bytes())]);
    seq(&[&der(0x31, &atv)])
}

fn yubico_ext(arc: u8, value: &[u8]) -> Vec<u8> {
    let mut oid = OID_YUBICO_PIV.to_vec();
    oid.push(arc);
    seq(&[&der(0x06, &oid), &der(0x04, value)])
}

/// SubjectPublicKeyInfo of a slot key.
pub fn spki(key: &SlotKey) -> Vec<u8> {
    let curve = match key {
        SlotKey::P256(_) => OID_P256,
        SlotKey::P384(_) => OID_P384,
    };
    let mut bits = vec![0u8];
    bits.extend_from_slice(&key.public_point());
    seq(&[&seq(&[OID_EC_PUBLIC_KEY, curve]), &der(0x03, &bits)])
}

/// What goes into an attestation or attestation-root certificate.
pub struct CertFields<'a> {
    /// Issuer common name.
    pub issuer_cn: &'a str,
    /// Subject common name.
    pub subject_cn: &'a str,
    /// The certified key.
    pub subject_key: &'a SlotKey,
    /// Yubico extensions: firmware version, serial, (PIN, touch) policy.
    pub yubico: Option<([u8; 3], u32, [u8; 2])>,
}

/// Builds an X.509 v3 certificate signed (ECDSA-SHA256) by `signer`.
pub fn certificate(fields: &CertFields<'_>, signer: &p256::SecretKey) -> Vec<u8> {
    let mut serial = [0u8; 16];
    random(&mut serial);
    serial[0] = (serial[0] & 0x7F) | 0x01;
    let validity = seq(&[&der(0x17, b"160314000000Z"), &der(0x18, b"99991231235959Z")]);
    let mut tbs_parts: Vec<Vec<u8>> = vec![
        der(0xA0, &integer(&[2])),
        integer(&serial),
        seq(&[OID_ECDSA_SHA256]),
        name(fields.issuer_cn),
        validity,
        name(fields.subject_cn),
        spki(fields.subject_key),
    ];
    if let Some((fw, sn, policy)) = fields.yubico {
        let exts = seq(&[
            &yubico_ext(3, &fw),
            &yubico_ext(7, &integer(&sn.to_be_bytes())),
            &yubico_ext(8, &policy),
            &yubico_ext(9, &[0x01]),
        ]);
        tbs_parts.push(der(0xA3, &exts));
    }
    let refs: Vec<&[u8]> = tbs_parts.iter().map(Vec::as_slice).collect();
    let tbs = seq(&refs);
    let digest = Sha256::digest(&tbs);
    let sig: p256::ecdsa::Signature = p256::ecdsa::SigningKey::from(signer)
        .sign_prehash(&digest)
        .expect("signing a 32-byte digest with a valid key");
    let mut bits = vec![0u8];
    bits.extend_from_slice(sig.to_der().as_bytes());
    seq(&[&tbs, &seq(&[OID_ECDSA_SHA256]), &der(0x03, &bits)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mgmt_ciphers_round_trip() {
        for (a, bl) in [
            (alg::TDES, 8),
            (alg::AES128, 16),
            (alg::AES192, 16),
            (alg::AES256, 16),
        ] {
            let key = vec![7u8; mgmt_key_len(a).expect("known")];
            let mut b = vec![1u8; bl];
            mgmt_crypt(a, &key, &mut b, true).expect("encrypt");
            assert_ne!(b, vec![1u8; bl]);
            mgmt_crypt(a, &key, &mut b, false).expect("decrypt");
            assert_eq!(b, vec![1u8; bl]);
        }
        assert!(mgmt_crypt(alg::TDES, &[0u8; 24], &mut [0u8; 16], true).is_none());
    }

    #[test]
    fn ecdh_and_sign_p384() {
        let k = SlotKey::generate(alg::P384).expect("p384");
        let peer = SlotKey::generate(alg::P384).expect("p384");
        let a = k.ecdh(&peer.public_point()).expect("ecdh");
        let b = peer.ecdh(&k.public_point()).expect("ecdh");
        assert_eq!(*a, *b);
        assert!(k.ecdh(&[4u8; 97]).is_none());
        let sig = k.sign(&[9u8; 48]).expect("sign");
        assert_eq!(sig[0], 0x30);
    }
}
