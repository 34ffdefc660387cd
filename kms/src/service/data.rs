//! One-shot encryption and decryption, rewrap, and data keys.

use serde::Serialize;
use serde_json::json;

use super::{Service, require_purpose};
use crate::audit::Action;
use crate::crypto::envelope;
use crate::keys::{DataClass, KeyName, KeyPurpose};
use crate::secret::{Secret32, SecretBytes};
use crate::store::KeyRow;
use crate::{Error, Result};

/// Result of a decryption: the plaintext and what it was encrypted under.
#[derive(Debug)]
pub struct Decrypted {
    /// The plaintext.
    pub plaintext: SecretBytes,
    /// Key name.
    pub key: KeyName,
    /// Key version.
    pub version: u32,
}

/// A ciphertext moved to its key's primary version ([`Service::rewrap`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rewrapped {
    /// The new ciphertext (one-shot format).
    #[serde(skip)]
    pub ciphertext: Vec<u8>,
    /// Key name.
    pub key: KeyName,
    /// The version it is now under.
    pub version: u32,
    /// The version it was under.
    pub from_version: u32,
}

/// A fresh data key for envelope encryption ([`Service::datakey_generate`]).
#[derive(Debug)]
pub struct DataKey {
    /// The 256-bit key, for the caller to use and forget.
    pub plaintext: SecretBytes,
    /// The same key encrypted under the named key (one-shot format), to
    /// store beside the data and unwrap later.
    pub wrapped: Vec<u8>,
    /// Key name.
    pub key: KeyName,
    /// Version the key is wrapped under.
    pub version: u32,
}

impl Service {
    /// Encrypts a small message (one-shot format).
    ///
    /// # Errors
    /// `Locked`, `KeyNotFound`, `WrongPurpose`.
    pub fn encrypt(&mut self, name: &KeyName, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let (key, version, dek) =
            self.reserve_encryption(name, Action::Encrypt, Some(plaintext.len() as u64))?;
        envelope::seal(&dek, name, version, key.class, context, plaintext)
    }

    /// Decrypts a one-shot ciphertext.
    ///
    /// # Errors
    /// `DecryptionFailed`, `VersionRetired`, `KeyNotFound`, `Locked`.
    pub fn decrypt(&mut self, context: &[u8], ciphertext: &[u8]) -> Result<Decrypted> {
        self.decrypt_as(Action::Decrypt, context, ciphertext)
    }

    pub(super) fn decrypt_as(
        &mut self,
        action: Action,
        context: &[u8],
        ciphertext: &[u8],
    ) -> Result<Decrypted> {
        let (header, _) = envelope::parse_header(ciphertext)?;
        if header.mode != envelope::Mode::OneShot {
            // A stream ciphertext that is all here (the CLI writes this
            // format, and the daemon gets whole small files): decrypt it as
            // the stream it is, into memory.
            let mut plaintext = zeroize::Zeroizing::new(Vec::with_capacity(ciphertext.len()));
            let summary = self.decrypt_stream(
                context,
                &mut std::io::Cursor::new(ciphertext),
                &mut *plaintext,
                &mut |_| {},
            )?;
            return Ok(Decrypted {
                plaintext: SecretBytes::new(std::mem::take(&mut *plaintext)),
                key: summary.key,
                version: summary.version,
            });
        }
        let (key, dek) = self.decryption_key(&header.key, header.version)?;
        let plaintext = self.open_audited(action, &header, &key, &dek, context, ciphertext)?;
        Ok(Decrypted {
            plaintext,
            key: header.key,
            version: header.version,
        })
    }

    /// Decrypts a one-shot ciphertext and encrypts the same plaintext under
    /// the key's primary version, without returning the plaintext (Vault
    /// transit `rewrap`, AWS KMS `ReEncrypt`). The context stays the same.
    ///
    /// # Errors
    /// As [`Service::decrypt`] and [`Service::encrypt`].
    pub fn rewrap(&mut self, context: &[u8], ciphertext: &[u8]) -> Result<Rewrapped> {
        let old = self.decrypt_as(Action::Rewrap, context, ciphertext)?;
        let (key, version, dek) = self.reserve_encryption(
            &old.key,
            Action::RewrapEncrypt,
            Some(old.plaintext.expose().len() as u64),
        )?;
        let ciphertext = envelope::seal(
            &dek,
            &old.key,
            version,
            key.class,
            context,
            old.plaintext.expose(),
        )?;
        Ok(Rewrapped {
            ciphertext,
            key: old.key,
            version,
            from_version: old.version,
        })
    }

    /// Generates a random 256-bit data key and returns it together with its
    /// encryption under `name` (AWS KMS `GenerateDataKey`): the caller
    /// encrypts its data with the plaintext key, forgets it, and stores the
    /// wrapped copy to unwrap with [`Service::datakey_unwrap`].
    ///
    /// # Errors
    /// As [`Service::encrypt`].
    pub fn datakey_generate(&mut self, name: &KeyName, context: &[u8]) -> Result<DataKey> {
        let mut raw = zeroize::Zeroizing::new(vec![0u8; 32]);
        crate::secret::random_bytes(&mut raw)?;
        let plaintext = SecretBytes::new(std::mem::take(&mut *raw));
        let (key, version, dek) =
            self.reserve_encryption(name, Action::DatakeyGenerate, Some(32))?;
        let wrapped = envelope::seal(&dek, name, version, key.class, context, plaintext.expose())?;
        Ok(DataKey {
            plaintext,
            wrapped,
            key: name.clone(),
            version,
        })
    }

    /// Unwraps a data key made by [`Service::datakey_generate`] (AWS KMS
    /// `Decrypt`).
    ///
    /// # Errors
    /// As [`Service::decrypt`].
    pub fn datakey_unwrap(&mut self, context: &[u8], wrapped: &[u8]) -> Result<Decrypted> {
        self.decrypt_as(Action::DatakeyUnwrap, context, wrapped)
    }

    /// The data key for decrypting data written under `name` v`version`.
    pub(super) fn decryption_key(
        &mut self,
        name: &KeyName,
        version: u32,
    ) -> Result<(KeyRow, Secret32)> {
        if self.master.is_none() {
            return Err(Error::Locked);
        }
        let (key, v) = self.key_version(name, Some(version))?;
        require_purpose(&key, KeyPurpose::Encrypt)?;
        if version < key.min_decryption_version {
            return Err(Error::VersionRetired {
                name: name.to_string(),
                version,
                min_decryption_version: key.min_decryption_version,
            });
        }
        let dek = self.dek(&key, &v)?;
        Ok((key, dek))
    }

    /// Opens the one-shot `ciphertext` (its `header` read already) with
    /// `dek`, the data key of `key`, and records the use as `action`,
    /// failed or not.
    pub(super) fn open_audited(
        &mut self,
        action: Action,
        header: &envelope::Header,
        key: &KeyRow,
        dek: &Secret32,
        context: &[u8],
        ciphertext: &[u8],
    ) -> Result<SecretBytes> {
        let result = envelope::open(dek, key.class, context, ciphertext);
        self.audit_use(
            action,
            &header.key,
            header.version,
            key.class,
            Some(ciphertext.len() as u64),
            result.is_ok(),
        )?;
        result
    }

    pub(super) fn audit_use(
        &mut self,
        action: Action,
        name: &KeyName,
        version: u32,
        class: DataClass,
        size: Option<u64>,
        ok: bool,
    ) -> Result<()> {
        let fields = json!({ "key": name, "version": version, "class": class, "size": size,
                             "actor": self.actor_json() });
        self.record_use(action, ok, fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::test_support::*;

    #[test]
    fn rewrap_moves_to_the_primary_version_with_the_same_plaintext() {
        let (_fx, mut svc, k) = fixture_with_key("k");
        let v1 = svc.encrypt(&k, b"ctx", b"keep me").expect("encrypt");
        svc.rotate_key(&k).expect("rotate");
        let r = svc.rewrap(b"ctx", &v1).expect("rewrap");
        assert_eq!((r.from_version, r.version), (1, 2));
        let d = svc.decrypt(b"ctx", &r.ciphertext).expect("decrypt");
        assert_eq!((d.plaintext.expose(), d.version), (&b"keep me"[..], 2));
        assert!(matches!(
            svc.rewrap(b"other", &v1),
            Err(Error::DecryptionFailed)
        ));
        svc.retire(&k, 2).expect("retire v1");
        assert!(matches!(
            svc.rewrap(b"ctx", &v1),
            Err(Error::VersionRetired { .. })
        ));
    }

    #[test]
    fn datakeys_round_trip_and_are_bound_to_their_context() {
        let (_fx, mut svc, k) = fixture_with_key("store");
        let dk = svc.datakey_generate(&k, b"db:1").expect("generate");
        assert_eq!(dk.plaintext.expose().len(), 32);
        assert_ne!(dk.plaintext.expose(), &[0u8; 32][..]);
        let again = svc.datakey_unwrap(b"db:1", &dk.wrapped).expect("unwrap");
        assert_eq!(again.plaintext.expose(), dk.plaintext.expose());
        assert!(matches!(
            svc.datakey_unwrap(b"db:2", &dk.wrapped),
            Err(Error::DecryptionFailed)
        ));
        let acts = actions(&svc);
        assert!(acts.iter().any(|a| a == "datakey.generate"));
        assert!(acts.iter().any(|a| a == "datakey.unwrap"));
    }

    #[test]
    fn tampered_or_swapped_wrapped_keys_are_refused() {
        let (fx, mut svc) = fixture();
        let (a, b) = (name("a"), name("b"));
        svc.create_key(&a, &spec(KeyPurpose::Encrypt))
            .expect("create");
        svc.create_key(&b, &spec(KeyPurpose::Encrypt))
            .expect("create");
        svc.rotate_key(&a).expect("rotate");
        let original: Vec<u8> = raw(&fx)
            .query_row(
                "SELECT wrapped FROM key_versions WHERE key_name = 'a' AND version = 1",
                [],
                |r| r.get(0),
            )
            .expect("wrapped");
        let set = |bytes: &[u8], key: &str, version: u32| {
            raw(&fx)
                .execute(
                    "UPDATE key_versions SET wrapped = ?1 WHERE key_name = ?2 AND version = ?3",
                    rusqlite::params![bytes, key, version],
                )
                .expect("update");
        };
        for i in 0..original.len() {
            let mut t = original.clone();
            t[i] ^= 0x80;
            set(&t, "a", 1);
            assert!(
                matches!(svc.decryption_key(&a, 1), Err(Error::UnwrapFailed)),
                "byte {i}"
            );
        }
        // The same wrap moved to another key or another version does not unwrap.
        set(&original, "b", 1);
        assert!(matches!(
            svc.decryption_key(&b, 1),
            Err(Error::UnwrapFailed)
        ));
        set(&original, "a", 2);
        assert!(matches!(
            svc.decryption_key(&a, 2),
            Err(Error::UnwrapFailed)
        ));
        set(&original, "a", 1);
        assert!(svc.decryption_key(&a, 1).is_ok());
        // A downgraded class changes the KEK: the key no longer unwraps.
        raw(&fx)
            .execute("UPDATE keys SET class = 'general' WHERE name = 'a'", [])
            .expect("downgrade");
        assert!(matches!(
            svc.decryption_key(&a, 1),
            Err(Error::UnwrapFailed)
        ));
    }
}
