//! One-shot AES-256-GCM ciphertexts and the header shared with [`super::stream`].
//!
//! ```text
//! header   = "KWD" | 0x01 (format version) | mode (0x01 one-shot, 0x02 stream)
//!          | name_len u8 (1..=64) | key name (ASCII) | key version u32 BE (>= 1)
//! one-shot = header | nonce (12, random) | ciphertext | tag (16)
//! AAD      = header | class code (1 byte) | context
//! ```
//!
//! The header is self-delimiting and the class code has a fixed length, so
//! putting the caller's context last keeps the AAD unambiguous. The full
//! specification, with a test vector, is in docs/FORMAT.md.

use super::aead::{self, NONCE_LEN, Nonce, P_MAX, TAG_LEN};
use crate::keys::{DataClass, KeyName};
use crate::secret::{Secret32, SecretBytes};
use crate::{Error, Result};

/// The three bytes every keyward ciphertext starts with.
pub const MAGIC: [u8; 3] = *b"KWD";
/// The ciphertext format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 0x01;
/// Length of the fixed part of a header before the key name: magic,
/// format version, mode, name length.
pub const HEADER_PREFIX_LEN: usize = 6;
/// Longest possible header (a 64-byte key name).
pub const MAX_HEADER_LEN: usize = HEADER_PREFIX_LEN + KeyName::MAX_LEN + 4;
/// Shortest one-shot body: nonce and tag around an empty ciphertext.
pub const MIN_ONE_SHOT_BODY: usize = NONCE_LEN + TAG_LEN;

/// Which body follows a ciphertext header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One AES-256-GCM message ([`seal`]/[`open`]).
    OneShot,
    /// Chunked stream ([`super::stream`]).
    Stream,
}

impl Mode {
    /// The mode byte in the header.
    pub const fn code(self) -> u8 {
        match self {
            Self::OneShot => 0x01,
            Self::Stream => 0x02,
        }
    }

    /// Inverse of [`Mode::code`].
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0x01 => Some(Self::OneShot),
            0x02 => Some(Self::Stream),
            _ => None,
        }
    }
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

impl Header {
    /// The header's encoding.
    pub fn encode(&self) -> Vec<u8> {
        let name = self.key.as_str().as_bytes();
        let mut out = Vec::with_capacity(HEADER_PREFIX_LEN + name.len() + 4);
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.push(self.mode.code());
        // KeyName guarantees 1..=64 bytes.
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.extend_from_slice(&self.version.to_be_bytes());
        out
    }
}

/// Checks the fixed prefix of a header (magic, format version, mode, name
/// length) and returns how many header bytes follow it.
///
/// # Errors
/// `Malformed`, `UnsupportedFormat`.
pub(crate) fn header_rest_len(prefix: [u8; HEADER_PREFIX_LEN]) -> Result<usize> {
    if prefix[..3] != MAGIC {
        return Err(Error::Malformed {
            what: "not a keyward ciphertext (bad magic)",
        });
    }
    if prefix[3] != FORMAT_VERSION {
        return Err(Error::UnsupportedFormat {
            version: prefix[3],
            supported: FORMAT_VERSION,
        });
    }
    if Mode::from_code(prefix[4]).is_none() {
        return Err(Error::Malformed {
            what: "unknown ciphertext mode",
        });
    }
    let name_len = usize::from(prefix[5]);
    if name_len == 0 || name_len > KeyName::MAX_LEN {
        return Err(Error::Malformed {
            what: "key name length out of range in ciphertext header",
        });
    }
    Ok(name_len + 4)
}

/// Parses the header at the start of `ciphertext` without decrypting,
/// returning it and its length in bytes.
///
/// # Errors
/// `Malformed`, `UnsupportedFormat`.
pub fn parse_header(ciphertext: &[u8]) -> Result<(Header, usize)> {
    // Check the magic and version on whatever is there first, so that a
    // short foreign file says "not keyward" and a short future file says
    // "unsupported version" rather than "truncated".
    if ciphertext.len() < MAGIC.len() || ciphertext[..MAGIC.len()] != MAGIC {
        return Err(Error::Malformed {
            what: "not a keyward ciphertext (bad magic)",
        });
    }
    if let Some(&v) = ciphertext.get(3)
        && v != FORMAT_VERSION
    {
        return Err(Error::UnsupportedFormat {
            version: v,
            supported: FORMAT_VERSION,
        });
    }
    let truncated = Error::Malformed {
        what: "ciphertext header is truncated",
    };
    let Some(&prefix) = ciphertext.first_chunk::<HEADER_PREFIX_LEN>() else {
        return Err(truncated);
    };
    let total = HEADER_PREFIX_LEN + header_rest_len(prefix)?;
    let Some(raw) = ciphertext.get(..total) else {
        return Err(truncated);
    };
    let Some(mode) = Mode::from_code(prefix[4]) else {
        return Err(Error::Malformed {
            what: "unknown ciphertext mode",
        });
    };
    let (rest, version) = raw.split_at(total - 4);
    let name_bytes = &rest[HEADER_PREFIX_LEN..];
    let key = std::str::from_utf8(name_bytes)
        .ok()
        .and_then(|name| KeyName::new(name).ok())
        .ok_or(Error::Malformed {
            what: "invalid key name in ciphertext header",
        })?;
    let version = u32::from_be_bytes([version[0], version[1], version[2], version[3]]);
    if version == 0 {
        return Err(Error::Malformed {
            what: "key version 0 in ciphertext header",
        });
    }
    Ok((Header { mode, key, version }, total))
}

/// The associated data of a one-shot ciphertext, and the input of the
/// stream key derivation: `header | class code | context`.
pub(crate) fn aad(header: &[u8], class: DataClass, context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 1 + context.len());
    aad.extend_from_slice(header);
    aad.push(class.code());
    aad.extend_from_slice(context);
    aad
}

/// Encrypts `plaintext` under one data-key version. AAD binds the header,
/// the key's data class and the caller's `context`.
///
/// # Errors
/// `Random`; `InvalidArgument` for a plaintext over the GCM limit or
/// version 0.
pub fn seal(
    key: &Secret32,
    name: &KeyName,
    version: u32,
    class: DataClass,
    context: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    check_plaintext_len(plaintext.len())?;
    let nonce = Nonce::random()?;
    seal_with_nonce(
        key,
        name,
        version,
        class,
        context,
        plaintext,
        *nonce.as_bytes(),
    )
}

/// [`seal`] with a caller-chosen nonce. Test hook for the fixed vectors in
/// docs/FORMAT.md only: reusing a nonce under one key breaks GCM.
///
/// # Errors
/// As [`seal`].
#[doc(hidden)]
pub fn seal_with_nonce(
    key: &Secret32,
    name: &KeyName,
    version: u32,
    class: DataClass,
    context: &[u8],
    plaintext: &[u8],
    nonce: [u8; NONCE_LEN],
) -> Result<Vec<u8>> {
    check_plaintext_len(plaintext.len())?;
    if version == 0 {
        return Err(Error::InvalidArgument {
            what: "key versions start at 1".to_owned(),
        });
    }
    let header = Header {
        mode: Mode::OneShot,
        key: name.clone(),
        version,
    }
    .encode();
    let aad = aad(&header, class, context);
    let mut out = Vec::with_capacity(header.len() + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&header);
    out.extend_from_slice(&nonce);
    let body_start = out.len();
    out.extend_from_slice(plaintext);
    let tag = aead::Key::new(key).seal_in_place(
        Nonce::from_bytes(nonce),
        &aad,
        &mut out[body_start..],
    )?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Decrypts a one-shot ciphertext.
///
/// The caller looks the key up from [`parse_header`] first; a ciphertext
/// under another key or version fails here as `DecryptionFailed`.
///
/// # Errors
/// `DecryptionFailed` for any tampering or a wrong key, class or context;
/// `Malformed`/`UnsupportedFormat` for a bad header or a body too short to
/// hold a nonce and a tag.
pub fn open(
    key: &Secret32,
    class: DataClass,
    context: &[u8],
    ciphertext: &[u8],
) -> Result<SecretBytes> {
    let (header, header_len) = parse_header(ciphertext)?;
    if header.mode != Mode::OneShot {
        return Err(Error::Malformed {
            what: "this is a stream ciphertext, not a one-shot one",
        });
    }
    let body = &ciphertext[header_len..];
    if body.len() < MIN_ONE_SHOT_BODY {
        return Err(Error::Malformed {
            what: "one-shot ciphertext is shorter than its nonce and tag",
        });
    }
    let Some((&nonce, sealed)) = body.split_first_chunk::<NONCE_LEN>() else {
        return Err(Error::Malformed {
            what: "one-shot ciphertext is shorter than its nonce and tag",
        });
    };
    let nonce = Nonce::from_bytes(nonce);
    let aad = aad(&ciphertext[..header_len], class, context);
    // SecretBytes zeroizes the buffer on every path, including a failed
    // open that leaves unauthenticated plaintext in it.
    let mut buf = SecretBytes::new(sealed.to_vec()).into_inner();
    let plain_len = aead::Key::new(key)
        .open_in_place(nonce, &aad, &mut buf)?
        .len();
    buf.truncate(plain_len);
    Ok(SecretBytes::new(std::mem::take(&mut *buf)))
}

fn check_plaintext_len(len: usize) -> Result<()> {
    if u64::try_from(len).map_or(true, |len| len > P_MAX) {
        return Err(Error::InvalidArgument {
            what: format!(
                "message of {len} bytes is over the AES-GCM limit of {P_MAX} bytes; use stream encryption"
            ),
        });
    }
    Ok(())
}

/// Largest one-shot ciphertext accepted from a reader (64 MiB); larger data
/// belongs in the stream format.
pub const MAX_CIPHERTEXT_LEN: u64 = 64 << 20;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key(b: u8) -> Secret32 {
        Secret32::try_from_slice(&[b; 32]).expect("32 bytes")
    }

    fn name() -> KeyName {
        KeyName::new("notes").expect("name")
    }

    fn sample() -> Vec<u8> {
        seal(
            &key(1),
            &name(),
            3,
            DataClass::Private,
            b"record-42",
            b"hello",
        )
        .expect("seal")
    }

    #[test]
    fn round_trip_and_header() {
        let ct = sample();
        let (h, len) = parse_header(&ct).expect("header");
        assert_eq!(
            h,
            Header {
                mode: Mode::OneShot,
                key: name(),
                version: 3
            }
        );
        assert_eq!(len, HEADER_PREFIX_LEN + 5 + 4);
        assert_eq!(&ct[..len], &h.encode()[..]);
        assert_eq!(ct.len(), len + NONCE_LEN + 5 + TAG_LEN);
        let pt = open(&key(1), DataClass::Private, b"record-42", &ct).expect("open");
        assert_eq!(pt.expose(), b"hello");
    }

    #[test]
    fn same_plaintext_twice_differs() {
        assert_ne!(sample(), sample());
    }

    #[test]
    fn empty_plaintext_round_trip() {
        let ct = seal(&key(1), &name(), 1, DataClass::General, b"", b"").expect("seal");
        let pt = open(&key(1), DataClass::General, b"", &ct).expect("open");
        assert!(pt.expose().is_empty());
    }

    #[test]
    fn every_byte_flip_rejected() {
        let ct = sample();
        for i in 0..ct.len() {
            for bit in [0x01u8, 0x80] {
                let mut t = ct.clone();
                t[i] ^= bit;
                assert!(
                    open(&key(1), DataClass::Private, b"record-42", &t).is_err(),
                    "byte {i} bit {bit:#x}"
                );
            }
        }
    }

    #[test]
    fn wrong_key_class_context_rejected() {
        let ct = sample();
        let bad = [
            open(&key(2), DataClass::Private, b"record-42", &ct),
            open(&key(1), DataClass::Sensitive, b"record-42", &ct),
            open(&key(1), DataClass::Private, b"record-43", &ct),
            open(&key(1), DataClass::Private, b"record-42\0", &ct),
            open(&key(1), DataClass::Private, b"", &ct),
        ];
        for r in bad {
            assert!(matches!(r, Err(Error::DecryptionFailed)), "{r:?}");
        }
    }

    #[test]
    fn truncation_and_trailing_garbage_rejected() {
        let ct = sample();
        for len in 0..ct.len() {
            assert!(
                open(&key(1), DataClass::Private, b"record-42", &ct[..len]).is_err(),
                "len {len}"
            );
        }
        let mut long = ct.clone();
        long.push(0);
        assert!(matches!(
            open(&key(1), DataClass::Private, b"record-42", &long),
            Err(Error::DecryptionFailed)
        ));
    }

    #[test]
    fn bad_headers() {
        let ct = sample();
        let with = |i: usize, v: u8| {
            let mut t = ct.clone();
            t[i] = v;
            t
        };
        // Unknown format version.
        for v in [0u8, 2, 0xff] {
            assert!(matches!(
                parse_header(&with(3, v)),
                Err(Error::UnsupportedFormat { version, supported: 1 }) if version == v
            ));
            assert!(matches!(
                open(&key(1), DataClass::Private, b"record-42", &with(3, v)),
                Err(Error::UnsupportedFormat { .. })
            ));
        }
        // A truncated future-version header still says "unsupported".
        assert!(matches!(
            parse_header(b"KWD\x02"),
            Err(Error::UnsupportedFormat { version: 2, .. })
        ));
        let malformed = [
            with(0, b'X'),
            with(4, 0),
            with(4, 3),
            with(5, 0),
            with(5, 65),
            with(5, 200),
            with(6, b'A'),
            with(6, b'-'),
            with(6, 0xc3),
            {
                let mut t = ct.clone();
                let n = HEADER_PREFIX_LEN + 5;
                t[n..n + 4].copy_from_slice(&[0, 0, 0, 0]);
                t
            },
            b"KW".to_vec(),
            Vec::new(),
        ];
        for t in &malformed {
            assert!(
                matches!(parse_header(t), Err(Error::Malformed { .. })),
                "{t:02x?}"
            );
        }
        // Body shorter than nonce + tag.
        let header_len = parse_header(&ct).expect("header").1;
        let short = &ct[..header_len + MIN_ONE_SHOT_BODY - 1];
        assert!(matches!(
            open(&key(1), DataClass::Private, b"record-42", short),
            Err(Error::Malformed { .. })
        ));
        // A stream header is refused by the one-shot opener.
        assert!(matches!(
            open(&key(1), DataClass::Private, b"record-42", &with(4, 2)),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn version_zero_refused_on_seal() {
        assert!(matches!(
            seal(&key(1), &name(), 0, DataClass::General, b"", b"x"),
            Err(Error::InvalidArgument { .. })
        ));
    }

    proptest! {
        #[test]
        fn prop_round_trip(
            pt in proptest::collection::vec(any::<u8>(), 0..2048),
            ctx in proptest::collection::vec(any::<u8>(), 0..64),
            version in 1u32..,
            class in 1u8..=4,
        ) {
            let class = DataClass::from_code(class).expect("1..=4");
            let ct = seal(&key(7), &name(), version, class, &ctx, &pt).expect("seal");
            let (h, _) = parse_header(&ct).expect("header");
            prop_assert_eq!(h.version, version);
            let out = open(&key(7), class, &ctx, &ct).expect("open");
            prop_assert_eq!(out.expose(), &pt[..]);
        }
    }
}
