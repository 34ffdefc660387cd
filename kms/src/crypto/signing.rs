//! Ed25519 keys and the signed-message format.
//!
//! ```text
//! blob   = header | signature (64)
//! header = "KWS" | 0x01 (format version) | name_len u8 (1..=64) | key name
//!        | key version u32 BE (>= 1) | signer store id (16)
//!        | counter u64 BE | timestamp u64 BE | audience_len u8 | audience (UTF-8)
//! signature = Ed25519(seed, "keyward/v1/signed-message" | header | SHA-512(message))
//! ```
//!
//! The message is hashed as it is read, so any size can be signed without
//! holding it in memory, and the Ed25519 input stays small. Verification is
//! `verify_strict` only: it refuses non-canonical and low-order `R`, `S >= L`
//! and low-order public keys, which plain `verify` accepts (docs/HARDWARE.md,
//! docs/RELIABILITY.md §0.2). Layout and a test vector: docs/FORMAT.md.

use std::io::Read;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha512};

use crate::keys::KeyName;
use crate::secret::Secret32;
use crate::{Error, Result};

/// Length of an encoded Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// The three bytes every signature blob starts with.
pub const MAGIC: [u8; 3] = *b"KWS";
/// The signature blob format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 0x01;
/// Longest audience, in bytes.
pub const MAX_AUDIENCE_LEN: usize = 255;
/// Domain separation prefix of the signed bytes.
const DOMAIN: &[u8] = b"keyward/v1/signed-message";

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

impl SignedHeader {
    /// The header's encoding.
    ///
    /// # Errors
    /// `InvalidArgument` for an audience over 255 bytes or version 0.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let audience_len =
            u8::try_from(self.audience.len()).map_err(|_| Error::InvalidArgument {
                what: format!(
                    "audience is {} bytes; at most {MAX_AUDIENCE_LEN} are allowed",
                    self.audience.len()
                ),
            })?;
        if self.version == 0 {
            return Err(Error::InvalidArgument {
                what: "key versions start at 1".to_owned(),
            });
        }
        let name = self.key.as_str().as_bytes();
        let mut out = Vec::with_capacity(4 + 1 + name.len() + 4 + 16 + 16 + 1 + 255);
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        // KeyName guarantees 1..=64 bytes.
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.signer);
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.push(audience_len);
        out.extend_from_slice(self.audience.as_bytes());
        Ok(out)
    }
}

/// The Ed25519 public key of a 32-byte seed.
pub fn public_key(seed: &Secret32) -> [u8; PUBLIC_KEY_LEN] {
    SigningKey::from_bytes(seed.expose())
        .verifying_key()
        .to_bytes()
}

/// Signs `message` with `header`, returning the encoded signature blob.
///
/// # Errors
/// `InvalidArgument` for an audience over 255 bytes or version 0; `Io` if
/// reading `message` fails.
pub fn sign(seed: &Secret32, header: &SignedHeader, message: &mut dyn Read) -> Result<Vec<u8>> {
    let mut blob = header.encode()?;
    let digest = hash_message(message)?;
    let signing_key = SigningKey::from_bytes(seed.expose());
    let signature = signing_key.sign(&signed_bytes(&blob, &digest));
    blob.extend_from_slice(&signature.to_bytes());
    Ok(blob)
}

/// Parses a signature blob without verifying it.
///
/// # Errors
/// `Malformed`, `UnsupportedFormat`.
pub fn parse(blob: &[u8]) -> Result<SignedHeader> {
    parse_parts(blob).map(|(header, _)| header)
}

/// Verifies `blob` over `message` with `verify_strict`, returning the header.
///
/// # Errors
/// `InvalidSignature`, `Malformed`, `UnsupportedFormat`,
/// `InvalidPublicKey`, `Io`.
pub fn verify(public_key: &[u8], blob: &[u8], message: &mut dyn Read) -> Result<SignedHeader> {
    let (header, header_len) = parse_parts(blob)?;
    let key = parse_public_key(public_key)?;
    let digest = hash_message(message)?;
    let Some(signature) = blob[header_len..].first_chunk::<SIGNATURE_LEN>() else {
        return Err(Error::Malformed {
            what: "signature blob has the wrong length",
        });
    };
    let signature = Signature::from_bytes(signature);
    key.verify_strict(&signed_bytes(&blob[..header_len], &digest), &signature)
        .map_err(|_| Error::InvalidSignature)?;
    Ok(header)
}

/// Plain Ed25519 (RFC 8032) verification of `sig` over `msg`, with
/// `verify_strict` and weak (low-order) keys refused. For the Wycheproof
/// harness and for signatures keyward does not frame itself.
///
/// # Errors
/// [`Error::InvalidPublicKey`] for a key that is not 32 bytes, not a point,
/// or of low order; [`Error::InvalidSignature`] otherwise.
pub fn verify_strict_raw(public_key: &[u8], msg: &[u8], sig: &[u8]) -> Result<()> {
    let key = parse_public_key(public_key)?;
    let sig: &[u8; SIGNATURE_LEN] = sig.try_into().map_err(|_| Error::InvalidSignature)?;
    key.verify_strict(msg, &Signature::from_bytes(sig))
        .map_err(|_| Error::InvalidSignature)
}

fn parse_public_key(public_key: &[u8]) -> Result<VerifyingKey> {
    let bytes: &[u8; PUBLIC_KEY_LEN] =
        public_key.try_into().map_err(|_| Error::InvalidPublicKey {
            what: "an Ed25519 public key is 32 bytes",
        })?;
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| Error::InvalidPublicKey {
        what: "not a valid Ed25519 point",
    })?;
    if key.is_weak() {
        return Err(Error::InvalidPublicKey {
            what: "Ed25519 public key of low order",
        });
    }
    Ok(key)
}

/// `DOMAIN | header | SHA-512(message)`.
fn signed_bytes(header: &[u8], digest: &[u8; 64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + header.len() + digest.len());
    out.extend_from_slice(DOMAIN);
    out.extend_from_slice(header);
    out.extend_from_slice(digest);
    out
}

fn hash_message(message: &mut dyn Read) -> Result<[u8; 64]> {
    let mut hash = Sha512::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match message.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hash.update(buf.get(..n).ok_or_else(|| {
                Error::io(
                    "reading the message",
                    std::io::Error::other("reader returned more bytes than asked for"),
                )
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading the message", e)),
        }
    }
    let mut out = [0u8; 64];
    out.copy_from_slice(&hash.finalize());
    Ok(out)
}

/// Parses the header; returns it and its length. Checks that exactly one
/// signature follows.
fn parse_parts(blob: &[u8]) -> Result<(SignedHeader, usize)> {
    let mut r = Cursor { buf: blob, pos: 0 };
    if r.take(3)? != MAGIC {
        return Err(Error::Malformed {
            what: "not a keyward signature (bad magic)",
        });
    }
    let version = r.byte()?;
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedFormat {
            version,
            supported: FORMAT_VERSION,
        });
    }
    let name_len = usize::from(r.byte()?);
    let key = std::str::from_utf8(r.take(name_len)?)
        .ok()
        .and_then(|name| KeyName::new(name).ok())
        .ok_or(Error::Malformed {
            what: "invalid key name in signature",
        })?;
    let key_version = u32::from_be_bytes(r.array()?);
    if key_version == 0 {
        return Err(Error::Malformed {
            what: "key version 0 in signature",
        });
    }
    let signer: [u8; 16] = r.array()?;
    let counter = u64::from_be_bytes(r.array()?);
    let timestamp = u64::from_be_bytes(r.array()?);
    let audience_len = usize::from(r.byte()?);
    let audience = std::str::from_utf8(r.take(audience_len)?)
        .map_err(|_| Error::Malformed {
            what: "signature audience is not UTF-8",
        })?
        .to_owned();
    let header_len = r.pos;
    if blob.len() - header_len != SIGNATURE_LEN {
        return Err(Error::Malformed {
            what: "signature blob has the wrong length",
        });
    }
    Ok((
        SignedHeader {
            key,
            version: key_version,
            signer,
            counter,
            timestamp,
            audience,
        },
        header_len,
    ))
}

/// A bounds-checked reader over a byte slice.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let out = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or(Error::Malformed {
                what: "signature blob is truncated",
            })?;
        self.pos += n;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn seed(b: u8) -> Secret32 {
        Secret32::try_from_slice(&[b; 32]).expect("32 bytes")
    }

    fn header() -> SignedHeader {
        SignedHeader {
            key: KeyName::new("outbox").expect("name"),
            version: 2,
            signer: [0xab; 16],
            counter: 7,
            timestamp: 1_700_000_000,
            audience: "bank.example".to_owned(),
        }
    }

    #[test]
    fn round_trip_and_parse() {
        let blob = sign(&seed(1), &header(), &mut &b"pay 10"[..]).expect("sign");
        assert_eq!(parse(&blob).expect("parse"), header());
        let pk = public_key(&seed(1));
        assert_eq!(
            verify(&pk, &blob, &mut &b"pay 10"[..]).expect("verify"),
            header()
        );
        assert!(matches!(
            verify(&pk, &blob, &mut &b"pay 11"[..]),
            Err(Error::InvalidSignature)
        ));
        assert!(matches!(
            verify(&public_key(&seed(2)), &blob, &mut &b"pay 10"[..]),
            Err(Error::InvalidSignature)
        ));
    }

    #[test]
    fn every_byte_flip_rejected() {
        let blob = sign(&seed(1), &header(), &mut &b"m"[..]).expect("sign");
        let pk = public_key(&seed(1));
        for i in 0..blob.len() {
            let mut t = blob.clone();
            t[i] ^= 0x01;
            assert!(verify(&pk, &t, &mut &b"m"[..]).is_err(), "byte {i}");
        }
        for len in 0..blob.len() {
            assert!(
                verify(&pk, &blob[..len], &mut &b"m"[..]).is_err(),
                "len {len}"
            );
        }
        let mut long = blob.clone();
        long.push(0);
        assert!(matches!(
            verify(&pk, &long, &mut &b"m"[..]),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn bad_inputs() {
        let blob = sign(&seed(1), &header(), &mut &b"m"[..]).expect("sign");
        let mut t = blob.clone();
        t[3] = 9;
        assert!(matches!(
            parse(&t),
            Err(Error::UnsupportedFormat { version: 9, .. })
        ));
        let long = SignedHeader {
            audience: "a".repeat(256),
            ..header()
        };
        assert!(matches!(
            sign(&seed(1), &long, &mut &b""[..]),
            Err(Error::InvalidArgument { .. })
        ));
        let max = SignedHeader {
            audience: "a".repeat(255),
            ..header()
        };
        let b = sign(&seed(1), &max, &mut &b""[..]).expect("255 ok");
        assert_eq!(parse(&b).expect("parse"), max);
        // Public keys: wrong length, not a point, low order (identity).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        for pk in [&[0u8; 31][..], &[0u8; 33][..], &identity[..]] {
            assert!(matches!(
                verify(pk, &blob, &mut &b"m"[..]),
                Err(Error::InvalidPublicKey { .. })
            ));
        }
        // Signatures of the wrong length.
        let pk = public_key(&seed(1));
        assert!(matches!(
            verify_strict_raw(&pk, b"", &[0u8; 63]),
            Err(Error::InvalidSignature)
        ));
        assert!(matches!(
            verify_strict_raw(&pk, b"", &[0u8; 65]),
            Err(Error::InvalidSignature)
        ));
    }

    #[test]
    fn rfc8032_vectors() {
        let json: serde_json::Value = serde_json::from_str(include_str!(
            "../../../tests/vectors/rfc/rfc8032_ed25519.json"
        ))
        .expect("json");
        let tests = json["tests"].as_array().expect("tests");
        assert_eq!(tests.len(), 5);
        for t in tests {
            let hx = |k: &str| hex::decode(t[k].as_str().expect("hex field")).expect("hex");
            let seed = Secret32::try_from_slice(&hx("secret_key")).expect("32");
            assert_eq!(public_key(&seed)[..], hx("public_key")[..]);
            let sig = SigningKey::from_bytes(seed.expose()).sign(&hx("message"));
            assert_eq!(sig.to_bytes()[..], hx("signature")[..]);
            verify_strict_raw(&hx("public_key"), &hx("message"), &hx("signature")).expect("verify");
        }
    }

    proptest! {
        #[test]
        fn prop_round_trip(
            msg in proptest::collection::vec(any::<u8>(), 0..4096),
            counter: u64,
            timestamp: u64,
            audience in "[ -~]{0,40}",
            version in 1u32..,
        ) {
            let h = SignedHeader { version, counter, timestamp, audience, ..header() };
            let blob = sign(&seed(4), &h, &mut &msg[..]).expect("sign");
            prop_assert_eq!(&parse(&blob).expect("parse"), &h);
            let v = verify(&public_key(&seed(4)), &blob, &mut &msg[..]).expect("verify");
            prop_assert_eq!(v, h);
        }
    }
}
