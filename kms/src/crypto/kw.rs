//! RFC 3394 AES-256 key wrap of 32-byte keys, and the per-version key-
//! encryption key that binds a wrapped data key to its name and version.
//!
//! `aes-kw` 0.3.1 accepts forgeries for inputs of the wrong length: it
//! unwraps `a6a6a6a6a6a6a6a6` to an empty key under any KEK (Wycheproof
//! aes_wrap tc 108) and accepts an 8-byte wrap done with the 6-round W
//! function (tc 110). We therefore accept exactly one shape: a 32-byte key
//! in, a 40-byte blob out, and check both lengths before and after the crate
//! call (docs/HARDWARE.md, docs/RELIABILITY.md §0.1).

use aes_kw::KeyInit;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroize;

use crate::keys::{DataClass, KeyName, KeyPurpose};
use crate::secret::Secret32;
use crate::{Error, Result};

/// Length of a wrapped 32-byte key: 8-byte integrity block + 32 bytes.
pub const WRAPPED_LEN: usize = 40;

/// HKDF info prefix for the data-key KEK (docs/FORMAT.md §Data-key wrap).
const DEK_KEK_INFO: &[u8] = b"keyward/v1/dek-kek";

/// Wraps a 32-byte `key` under `kek` (RFC 3394, AES-256).
pub fn wrap(kek: &Secret32, key: &Secret32) -> [u8; WRAPPED_LEN] {
    let kw = aes_kw::KwAes256::new(kek.expose().into());
    let mut out = [0u8; WRAPPED_LEN];
    let written = kw
        .wrap_key(key.expose(), &mut out)
        .expect("a 32-byte key always wraps into a 40-byte buffer")
        .len();
    assert_eq!(
        written, WRAPPED_LEN,
        "RFC 3394 wrap of 32 bytes is 40 bytes"
    );
    out
}

/// Unwraps a 40-byte RFC 3394 blob under `kek`.
///
/// # Errors
/// [`Error::UnwrapFailed`] for any blob that is not exactly 40 bytes or does
/// not pass the integrity check.
pub fn unwrap(kek: &Secret32, wrapped: &[u8]) -> Result<Secret32> {
    if wrapped.len() != WRAPPED_LEN {
        return Err(Error::UnwrapFailed);
    }
    let kw = aes_kw::KwAes256::new(kek.expose().into());
    let mut buf = [0u8; 32];
    let result = match kw.unwrap_key(wrapped, &mut buf) {
        Ok(key) if key.len() == 32 => Ok(()),
        _ => Err(Error::UnwrapFailed),
    };
    let out = result.map(|()| Secret32::from_bytes(&mut buf));
    buf.zeroize();
    out
}

/// Identifies one data-key version for [`dek_kek`].
#[derive(Debug, Clone, Copy)]
pub struct DekLabel<'a> {
    /// Keystore id (16 random bytes fixed at `init`).
    pub store_id: &'a [u8; 16],
    /// Key name.
    pub name: &'a KeyName,
    /// Version number.
    pub version: u32,
    /// Purpose.
    pub purpose: KeyPurpose,
    /// Data class.
    pub class: DataClass,
}

/// Derives the key-encryption key for one data-key version:
/// `HKDF-SHA256(ikm = MK, salt = store_id, info = "keyward/v1/dek-kek" ||
/// len(name) || name || version_be32 || purpose || class)`.
///
/// AES-KW carries no associated data; deriving a KEK per version makes a
/// wrapped key copied to another key, version, class or store fail its
/// integrity check instead of unwrapping.
pub fn dek_kek(master: &Secret32, label: &DekLabel<'_>) -> Secret32 {
    let name = label.name.as_str().as_bytes();
    let mut info = Vec::with_capacity(DEK_KEK_INFO.len() + 1 + name.len() + 6);
    info.extend_from_slice(DEK_KEK_INFO);
    info.push(u8::try_from(name.len()).expect("key names are at most 64 bytes"));
    info.extend_from_slice(name);
    info.extend_from_slice(&label.version.to_be_bytes());
    info.push(label.purpose.code());
    info.push(label.class.code());
    let hk = Hkdf::<Sha256>::new(Some(label.store_id), master.expose());
    let mut okm = [0u8; 32];
    hk.expand(&info, &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    Secret32::from_bytes(&mut okm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(b: u8) -> Secret32 {
        Secret32::try_from_slice(&[b; 32]).expect("32 bytes")
    }

    #[test]
    fn round_trip_and_every_bit_flip_rejected() {
        let kek = s(1);
        let key = s(2);
        let w = wrap(&kek, &key);
        assert_eq!(unwrap(&kek, &w).expect("unwrap").expose(), key.expose());
        for i in 0..WRAPPED_LEN * 8 {
            let mut t = w;
            t[i / 8] ^= 1 << (i % 8);
            assert!(
                matches!(unwrap(&kek, &t), Err(Error::UnwrapFailed)),
                "bit {i}"
            );
        }
        assert!(unwrap(&s(3), &w).is_err());
    }

    #[test]
    fn wrong_lengths_rejected() {
        let kek = s(1);
        // Wycheproof aes_wrap tc 108: the empty-key forgery.
        let forgery = hex::decode("a6a6a6a6a6a6a6a6").expect("hex");
        assert!(unwrap(&kek, &forgery).is_err());
        for len in [0usize, 8, 16, 24, 32, 39, 41, 48] {
            assert!(unwrap(&kek, &vec![0xa6; len]).is_err(), "len {len}");
        }
    }

    #[test]
    fn kek_binds_every_field() {
        let mk = s(9);
        let store = [7u8; 16];
        let name = KeyName::new("a").expect("name");
        let other = KeyName::new("b").expect("name");
        let base = DekLabel {
            store_id: &store,
            name: &name,
            version: 1,
            purpose: KeyPurpose::Encrypt,
            class: DataClass::Private,
        };
        let k0 = dek_kek(&mk, &base);
        let store2 = [8u8; 16];
        let variants = [
            DekLabel {
                store_id: &store2,
                ..base
            },
            DekLabel {
                name: &other,
                ..base
            },
            DekLabel { version: 2, ..base },
            DekLabel {
                purpose: KeyPurpose::Sign,
                ..base
            },
            DekLabel {
                class: DataClass::General,
                ..base
            },
        ];
        for v in &variants {
            assert_ne!(dek_kek(&mk, v).expose(), k0.expose());
        }
    }
}
