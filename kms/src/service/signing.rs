//! Signing keys: sign, verify, export the public key; and signing with
//! the key of a device protector.

use std::io::Read;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::keys::unwrap_version;
use super::usage::write_use;
use super::{Service, backend_for, require_purpose};
use crate::audit::{self, Action};
use crate::backend::Callbacks;
use crate::crypto::signing;
use crate::keys::{KeyName, KeyPurpose};
use crate::store::{KeyRow, VersionRow, now};
use crate::{Error, Result};

/// A verified signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// Key name.
    pub key: KeyName,
    /// Key version.
    pub version: u32,
    /// Signer's counter.
    pub counter: u64,
    /// Signing time (Unix seconds).
    pub timestamp: u64,
    /// Audience.
    pub audience: String,
}

/// An exported public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyExport {
    /// Key name.
    pub key: KeyName,
    /// Version.
    pub version: u32,
    /// PEM (SubjectPublicKeyInfo), as `openssl` reads it.
    pub pem: String,
    /// Raw key bytes, hex.
    pub raw_hex: String,
}

/// Accepted clock difference for [`Service::verify_fresh`], seconds.
pub const FRESHNESS_WINDOW: u64 = 300;

impl Service {
    /// Signs `message` with the primary version of a signing key.
    ///
    /// # Errors
    /// `Locked`, `KeyNotFound`, `WrongPurpose`.
    pub fn sign(
        &mut self,
        name: &KeyName,
        audience: &str,
        message: &mut dyn Read,
    ) -> Result<Vec<u8>> {
        let master = self.master.as_ref().ok_or(Error::Locked)?;
        let store_id = *self.store.store_id();
        let mac = audit::mac_key(master.secret(), &store_id);
        let actor = self.actor_json();
        let (key, version, counter) = if let Some(m) = self.memory_keys.get_mut(name) {
            require_purpose(&m.key, KeyPurpose::Sign)?;
            m.key.sign_counter += 1;
            let v = m.versions.last().cloned().ok_or(Error::VersionNotFound {
                name: name.to_string(),
                version: m.key.primary_version,
            })?;
            let fields = json!({ "key": name, "version": v.version, "counter": m.key.sign_counter,
                                 "audience": audience, "actor": actor });
            self.store
                .write(|db| audit::append(db, Action::Sign, true, &fields, Some(&mac)))?;
            (m.key.clone(), v, m.key.sign_counter)
        } else {
            write_use(&mut self.store, self.options.relaxed_uses, |db| {
                let key = db.key(name)?;
                require_purpose(&key, KeyPurpose::Sign)?;
                let v = db.version(name, key.primary_version)?;
                let counter = db.next_sign_counter(name)?;
                audit::append(
                    db,
                    Action::Sign,
                    true,
                    &json!({ "key": name, "version": v.version, "counter": counter,
                             "audience": audience, "actor": actor }),
                    Some(&mac),
                )?;
                Ok((key, v, counter))
            })?
        };
        let seed = unwrap_version(master, &store_id, &key, &version)?;
        let header = signing::SignedHeader {
            key: name.clone(),
            version: version.version,
            signer: store_id,
            counter,
            timestamp: u64::try_from(now()).unwrap_or(0),
            audience: audience.to_owned(),
        };
        signing::sign(&seed, &header, message)
    }

    /// Verifies a signature blob over `message`: strict Ed25519 and the
    /// audience. (See [`Service::verify_fresh`] for messages, which also
    /// checks freshness and replays.)
    ///
    /// # Errors
    /// `InvalidSignature`, `NotFresh` (audience), `KeyNotFound`,
    /// `VersionRetired`.
    pub fn verify(
        &mut self,
        audience: &str,
        signature: &[u8],
        message: &mut dyn Read,
    ) -> Result<Verified> {
        let header = self.verify_signature(signature, message)?;
        if header.audience != audience {
            return Err(Error::NotFresh {
                reason: "the message is addressed to another audience",
            });
        }
        Ok(verified(header))
    }

    /// Verifies a signed message as [`Service::verify`] does, and also
    /// refuses one signed more than [`FRESHNESS_WINDOW`] seconds from now or
    /// whose counter is not above the last one accepted from that signer
    /// (which it then records).
    ///
    /// # Errors
    /// As [`Service::verify`], plus `Replay` and `NotFresh`.
    pub fn verify_fresh(
        &mut self,
        audience: &str,
        signature: &[u8],
        message: &mut dyn Read,
    ) -> Result<Verified> {
        let v = self.verify(audience, signature, message)?;
        let now = u64::try_from(now()).unwrap_or(0);
        if v.timestamp.abs_diff(now) > FRESHNESS_WINDOW {
            return Err(Error::NotFresh {
                reason: "signed outside the freshness window",
            });
        }
        let header = signing::parse(signature)?;
        let actor = self.actor_json();
        self.store.write(|db| {
            let seen = db.replay_counter(&header.key, &header.signer)?;
            if seen.is_some_and(|max| header.counter <= max) {
                return Err(Error::Replay {
                    counter: header.counter,
                });
            }
            db.set_replay_counter(&header.key, &header.signer, header.counter)?;
            audit::append(
                db,
                Action::VerifyAccept,
                true,
                &json!({ "key": header.key, "version": header.version, "counter": header.counter,
                         "signer": hex::encode(header.signer), "actor": actor }),
                None,
            )?;
            Ok(())
        })?;
        Ok(v)
    }

    /// The public key of a signing key version (primary if `None`). Every
    /// export is audited (`key.export`, a security event of the daemon).
    ///
    /// # Errors
    /// `KeyNotFound`, `VersionNotFound`, `WrongPurpose`; `AuditWrite`.
    pub fn export_public(
        &mut self,
        name: &KeyName,
        version: Option<u32>,
    ) -> Result<PublicKeyExport> {
        let (key, v) = self.key_version(name, version)?;
        require_purpose(&key, KeyPurpose::Sign)?;
        let public = self.public_key_of(&key, &v)?;
        // SubjectPublicKeyInfo for Ed25519 (RFC 8410 §4): a fixed 12-byte
        // prefix and the 32-byte key.
        let mut der = hex::decode("302a300506032b6570032100").expect("constant hex");
        der.extend_from_slice(&public);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let fields = json!({ "key": name, "version": v.version, "format": "spki-pem",
                             "actor": self.actor_json() });
        let mac = self.mac().ok();
        self.store
            .write(|db| audit::append(db, Action::KeyExport, true, &fields, mac.as_ref()))?;
        Ok(PublicKeyExport {
            key: name.clone(),
            version: v.version,
            pem: format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"),
            raw_hex: hex::encode(public),
        })
    }

    /// Signs `message` with the key of a device protector (the TPM's or
    /// token's signing key, not a keyward signing key): ECDSA P-256 (DER)
    /// or Ed25519, as the enrollment has. The daemon keeps the device
    /// session of the unlock open, so no PIN is asked again while unlocked.
    ///
    /// # Errors
    /// `ProtectorNotFound`, `NotSupported` (a protector that cannot sign),
    /// the device's errors; `AuditWrite`.
    pub fn device_sign(
        &mut self,
        id: u32,
        message: &[u8],
        ui: &dyn Callbacks,
    ) -> Result<crate::backend::Signature> {
        let enrollment = self.enrollment(id)?;
        let backend = backend_for(&self.backends, enrollment.kind)?.clone();
        let signature = backend.sign(&enrollment, message, ui)?;
        let fields = json!({ "protector": id, "kind": enrollment.kind,
                             "algorithm": format!("{:?}", signature.algorithm),
                             "size": message.len(), "actor": self.actor_json() });
        let mac = self.mac().ok();
        write_use(&mut self.store, self.options.relaxed_uses, |db| {
            audit::append(db, Action::DeviceSign, true, &fields, mac.as_ref())
        })?;
        Ok(signature)
    }

    /// A signing version's public key: derived from the seed when unlocked
    /// (and checked against the stored copy), else the stored copy.
    pub(super) fn public_key_of(&self, key: &KeyRow, v: &VersionRow) -> Result<[u8; 32]> {
        let stored: Option<[u8; 32]> = v.public_key.as_deref().and_then(|p| p.try_into().ok());
        match &self.master {
            Some(master) => {
                let seed = unwrap_version(master, self.store.store_id(), key, v)?;
                let derived = signing::public_key(&seed);
                if stored.is_some_and(|s| s != derived) {
                    return Err(Error::StoreCorrupt {
                        path: self.store.path().to_owned(),
                        detail: format!(
                            "the stored public key of {} v{} does not match its private key",
                            key.name, v.version
                        ),
                    });
                }
                Ok(derived)
            }
            None => stored.ok_or(Error::Locked),
        }
    }

    pub(super) fn verify_signature(
        &mut self,
        signature: &[u8],
        message: &mut dyn Read,
    ) -> Result<signing::SignedHeader> {
        let header = signing::parse(signature)?;
        let (key, v) = self.key_version(&header.key, Some(header.version))?;
        require_purpose(&key, KeyPurpose::Sign)?;
        if header.version < key.min_decryption_version {
            return Err(Error::VersionRetired {
                name: key.name.to_string(),
                version: header.version,
                min_decryption_version: key.min_decryption_version,
            });
        }
        let public = self.public_key_of(&key, &v)?;
        signing::verify(&public, signature, message)
    }
}

pub(super) fn verified(h: signing::SignedHeader) -> Verified {
    Verified {
        key: h.key,
        version: h.version,
        counter: h.counter,
        timestamp: h.timestamp,
        audience: h.audience,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::test_support::*;

    #[test]
    fn public_key_exports_are_audited() {
        let (_fx, mut svc) = fixture();
        let k = new_key(&mut svc, "signer", &spec(KeyPurpose::Sign));
        let export = svc.export_public(&k, None).expect("export");
        let records = svc.audit_records(0, 10_000).expect("records");
        let last = records.last().expect("a record");
        assert_eq!(last.action, "key.export");
        assert_eq!(last.fields["key"], "signer");
        assert_eq!(last.fields["version"], export.version);
        svc.audit_verify().expect("chain verifies");
    }
}
