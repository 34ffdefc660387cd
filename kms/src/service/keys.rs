//! Named keys: create, list, rotate, retire; their versions and data keys.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Service;
use crate::audit::{self, Action};
use crate::crypto::kw::{self, DekLabel};
use crate::crypto::signing;
use crate::keys::{DataClass, KeyName, KeyPurpose, MasterKey};
use crate::secret::Secret32;
use crate::store::{Db, KeyRow, VersionRow, now};
use crate::{Error, Result};

/// Options for a new named key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// Encrypt or sign.
    pub purpose: KeyPurpose,
    /// Data class (bound into AAD).
    pub class: DataClass,
    /// Rotate automatically after this many seconds (scheduler; `None`: never).
    pub rotation_period: Option<u64>,
    /// Rotate automatically after this many encryptions by one version.
    /// `None`: the default, [`DEFAULT_USAGE_LIMIT`].
    pub usage_limit: Option<u64>,
}

/// Default automatic-rotation threshold per version: 2^31 encryptions, half
/// of the 2^32 NIST SP 800-38D §8.3 allows for random 96-bit nonces.
pub const DEFAULT_USAGE_LIMIT: u64 = 1 << 31;

/// Hard limit: a version is never used for more encryptions than this.
pub const HARD_USAGE_LIMIT: u64 = 1 << 32;

/// One version of a named key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Version number (1-based).
    pub version: u32,
    /// Unix time it was created.
    pub created_at: i64,
    /// Encryptions reserved so far (never below the real count).
    pub uses: u64,
    /// `primary`, `active` (decrypts) or `retired`.
    pub state: String,
}

/// A named key as listed (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Name.
    pub name: KeyName,
    /// Purpose.
    pub purpose: KeyPurpose,
    /// Data class.
    pub class: DataClass,
    /// Version new data is written with.
    pub primary_version: u32,
    /// Versions below this are retired.
    pub min_decryption_version: u32,
    /// Rotation period in seconds, if any.
    pub rotation_period: Option<u64>,
    /// Automatic-rotation threshold.
    pub usage_limit: u64,
    /// Unix time of creation.
    pub created_at: i64,
    /// All versions, oldest first.
    pub versions: Vec<VersionInfo>,
}

/// A key rotated by the scheduler ([`Service::rotate_due`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rotated {
    /// Key name.
    pub key: KeyName,
    /// The new primary version.
    pub version: u32,
    /// Why: `period` (its rotation period elapsed).
    pub reason: &'static str,
}

/// A `secret`-class key: same shape as a stored key, but only in memory.
#[derive(Debug)]
pub(super) struct MemoryKey {
    pub(super) key: KeyRow,
    pub(super) versions: Vec<VersionRow>,
}

/// The longest rotation period a key may have: 100 years, in seconds.
pub const MAX_ROTATION_PERIOD: u64 = 100 * 365 * 86_400;

impl Service {
    /// Creates a named key with version 1.
    ///
    /// # Errors
    /// `Locked`, `KeyExists`, `ClassPolicy` for a `secret` key without
    /// [`Options::memory_keys`](super::Options::memory_keys).
    pub fn create_key(&mut self, name: &KeyName, spec: &KeySpec) -> Result<KeyInfo> {
        let master = self.master.as_ref().ok_or(Error::Locked)?;
        let usage_limit = spec.usage_limit.unwrap_or(DEFAULT_USAGE_LIMIT);
        if usage_limit == 0 || usage_limit > HARD_USAGE_LIMIT {
            return Err(Error::InvalidArgument {
                what: format!("usage limit must be between 1 and 2^32, not {usage_limit}"),
            });
        }
        match spec.rotation_period {
            Some(0) => {
                return Err(Error::InvalidArgument {
                    what: "rotation period must be at least one second".into(),
                });
            }
            // SQLite keeps integers as i64: a larger period would reach the
            // store as a database error, with a misleading remedy.
            Some(period) if period > MAX_ROTATION_PERIOD => {
                return Err(Error::InvalidArgument {
                    what: format!(
                        "rotation period must be at most 100 years ({MAX_ROTATION_PERIOD} s), not {period} s"
                    ),
                });
            }
            _ => {}
        }
        let store_id = *self.store.store_id();
        let key = KeyRow {
            name: name.clone(),
            purpose: spec.purpose,
            class: spec.class,
            primary_version: 1,
            min_decryption_version: 1,
            rotation_period: spec.rotation_period,
            usage_limit,
            created_at: now(),
            sign_counter: 0,
        };
        let v1 = new_version(master, &store_id, &key, 1)?;
        let mac = audit::mac_key(master.secret(), &store_id);
        let actor = self.actor_json();
        let fields = json!({ "key": name, "purpose": spec.purpose, "class": spec.class,
                             "version": 1, "actor": actor });
        if spec.class == DataClass::Secret {
            if !self.options.memory_keys {
                return Err(Error::ClassPolicy {
                    what: "secret-class keys live only in the memory of a running daemon \
                           (keyward serve); they are never written to the store",
                });
            }
            if self.memory_keys.contains_key(name) || self.store.db().key(name).is_ok() {
                return Err(Error::KeyExists {
                    name: name.to_string(),
                });
            }
            self.store
                .write(|db| audit::append(db, Action::KeyCreate, true, &fields, Some(&mac)))?;
            self.memory_keys.insert(
                name.clone(),
                MemoryKey {
                    key,
                    versions: vec![v1],
                },
            );
        } else {
            if self.memory_keys.contains_key(name) {
                return Err(Error::KeyExists {
                    name: name.to_string(),
                });
            }
            self.store.write(|db| {
                db.insert_key(&key)?;
                db.insert_version(name, &v1)?;
                audit::append(db, Action::KeyCreate, true, &fields, Some(&mac))?;
                Ok(())
            })?;
        }
        self.key(name)
    }

    /// All named keys.
    ///
    /// # Errors
    /// Database errors.
    pub fn keys(&self) -> Result<Vec<KeyInfo>> {
        let db = self.store.db();
        let mut out = Vec::new();
        for key in db.keys()? {
            let versions = db.versions(&key.name)?;
            out.push(key_info(&key, &versions));
        }
        out.extend(
            self.memory_keys
                .values()
                .map(|m| key_info(&m.key, &m.versions)),
        );
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One named key.
    ///
    /// # Errors
    /// `KeyNotFound`.
    pub fn key(&self, name: &KeyName) -> Result<KeyInfo> {
        if let Some(m) = self.memory_keys.get(name) {
            return Ok(key_info(&m.key, &m.versions));
        }
        let db = self.store.db();
        let key = db.key(name)?;
        Ok(key_info(&key, &db.versions(name)?))
    }

    /// Adds a new primary version.
    ///
    /// # Errors
    /// `Locked`, `KeyNotFound`.
    pub fn rotate_key(&mut self, name: &KeyName) -> Result<KeyInfo> {
        self.rotate_key_because(name, "requested")?;
        self.key(name)
    }

    pub(super) fn rotate_key_because(&mut self, name: &KeyName, reason: &str) -> Result<u32> {
        let master = self.master.as_ref().ok_or(Error::Locked)?;
        let store_id = *self.store.store_id();
        let mac = audit::mac_key(master.secret(), &store_id);
        let actor = self.actor_json();
        if let Some(m) = self.memory_keys.get_mut(name) {
            let version = m.key.primary_version + 1;
            let v = new_version(master, &store_id, &m.key, version)?;
            let fields =
                json!({ "key": name, "version": version, "reason": reason, "actor": actor });
            self.store
                .write(|db| audit::append(db, Action::KeyRotate, true, &fields, Some(&mac)))?;
            m.versions.push(v);
            m.key.primary_version = version;
            return Ok(version);
        }
        self.store
            .write(|db| rotate_in_tx(db, master, &store_id, name, reason, &actor, &mac))
    }

    /// Retires every version below `min_decryption_version` (or, with a
    /// lower value, brings retired versions back: their material is kept).
    ///
    /// # Errors
    /// `KeyNotFound`, `InvalidArgument` (0 or above the primary version).
    pub fn retire(&mut self, name: &KeyName, min_decryption_version: u32) -> Result<KeyInfo> {
        let mac = self.mac()?;
        let actor = self.actor_json();
        let check = |key: &KeyRow| {
            if min_decryption_version == 0 || min_decryption_version > key.primary_version {
                return Err(Error::InvalidArgument {
                    what: format!(
                        "minimum decryption version must be between 1 and the primary version {}",
                        key.primary_version
                    ),
                });
            }
            Ok(())
        };
        let fields = json!({ "key": name, "min_decryption_version": min_decryption_version,
                             "actor": actor });
        if let Some(m) = self.memory_keys.get_mut(name) {
            check(&m.key)?;
            self.store
                .write(|db| audit::append(db, Action::KeyRetire, true, &fields, Some(&mac)))?;
            m.key.min_decryption_version = min_decryption_version;
        } else {
            self.store.write(|db| {
                let key = db.key(name)?;
                check(&key)?;
                db.set_versions(name, key.primary_version, min_decryption_version)?;
                audit::append(db, Action::KeyRetire, true, &fields, Some(&mac))?;
                Ok(())
            })?;
        }
        self.key(name)
    }

    /// Rotates every key whose rotation period has elapsed since its primary
    /// version was created (the scheduler; `keyward rotate --due`).
    ///
    /// # Errors
    /// `Locked`; the first rotation that fails (earlier ones stay done).
    pub fn rotate_due(&mut self) -> Result<Vec<Rotated>> {
        if self.master.is_none() {
            return Err(Error::Locked);
        }
        let now = now();
        let mut due = Vec::new();
        for key in self.keys()? {
            let Some(period) = key.rotation_period else {
                continue;
            };
            let primary_created = key
                .versions
                .iter()
                .find(|v| v.version == key.primary_version)
                .map_or(key.created_at, |v| v.created_at);
            let period = i64::try_from(period).unwrap_or(i64::MAX);
            if primary_created.saturating_add(period) <= now {
                due.push(key.name);
            }
        }
        let mut rotated = Vec::new();
        for name in due {
            let version = self.rotate_key_because(&name, "period")?;
            tracing::info!(key = %name, version, "rotated: its rotation period elapsed");
            rotated.push(Rotated {
                key: name,
                version,
                reason: "period",
            });
        }
        Ok(rotated)
    }

    pub(super) fn key_version(
        &self,
        name: &KeyName,
        version: Option<u32>,
    ) -> Result<(KeyRow, VersionRow)> {
        if let Some(m) = self.memory_keys.get(name) {
            let version = version.unwrap_or(m.key.primary_version);
            let v = m
                .versions
                .iter()
                .find(|v| v.version == version)
                .cloned()
                .ok_or_else(|| Error::VersionNotFound {
                    name: name.to_string(),
                    version,
                })?;
            return Ok((m.key.clone(), v));
        }
        let db = self.store.db();
        let key = db.key(name)?;
        let v = db.version(name, version.unwrap_or(key.primary_version))?;
        Ok((key, v))
    }
}

pub(super) fn kek(master: &MasterKey, store_id: &[u8; 16], key: &KeyRow, version: u32) -> Secret32 {
    kw::dek_kek(
        master.secret(),
        &DekLabel {
            store_id,
            name: &key.name,
            version,
            purpose: key.purpose,
            class: key.class,
        },
    )
}

pub(super) fn unwrap_version(
    master: &MasterKey,
    store_id: &[u8; 16],
    key: &KeyRow,
    v: &VersionRow,
) -> Result<Secret32> {
    kw::unwrap(&kek(master, store_id, key, v.version), &v.wrapped)
}

/// Draws a new data-key version and wraps it under the master key.
pub(super) fn new_version(
    master: &MasterKey,
    store_id: &[u8; 16],
    key: &KeyRow,
    version: u32,
) -> Result<VersionRow> {
    let dek = Secret32::random()?;
    let public_key = match key.purpose {
        KeyPurpose::Encrypt => None,
        KeyPurpose::Sign => Some(signing::public_key(&dek).to_vec()),
    };
    Ok(VersionRow {
        version,
        wrapped: kw::wrap(&kek(master, store_id, key, version), &dek).to_vec(),
        public_key,
        created_at: now(),
        uses_reserved: 0,
    })
}

pub(super) fn rotate_in_tx(
    db: &Db<'_>,
    master: &MasterKey,
    store_id: &[u8; 16],
    name: &KeyName,
    reason: &str,
    actor: &serde_json::Value,
    mac: &Secret32,
) -> Result<u32> {
    let key = db.key(name)?;
    let newest = db.versions(name)?.last().map_or(0, |v| v.version);
    let version = newest.max(key.primary_version) + 1;
    let v = new_version(master, store_id, &key, version)?;
    db.insert_version(name, &v)?;
    db.set_versions(name, version, key.min_decryption_version)?;
    audit::append(
        db,
        Action::KeyRotate,
        true,
        &json!({ "key": name, "version": version, "reason": reason, "actor": actor }),
        Some(mac),
    )?;
    Ok(version)
}

pub(super) fn key_info(key: &KeyRow, versions: &[VersionRow]) -> KeyInfo {
    KeyInfo {
        name: key.name.clone(),
        purpose: key.purpose,
        class: key.class,
        primary_version: key.primary_version,
        min_decryption_version: key.min_decryption_version,
        rotation_period: key.rotation_period,
        usage_limit: key.usage_limit,
        created_at: key.created_at,
        versions: versions
            .iter()
            .map(|v| VersionInfo {
                version: v.version,
                created_at: v.created_at,
                uses: v.uses_reserved,
                state: if v.version == key.primary_version {
                    "primary"
                } else if v.version < key.min_decryption_version {
                    "retired"
                } else {
                    "active"
                }
                .to_owned(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::test_support::*;

    #[test]
    fn rotation_period_is_bounded() {
        let (_fx, mut svc) = fixture();
        for (period, ok) in [
            (0, false),
            (1, true),
            (MAX_ROTATION_PERIOD, true),
            (MAX_ROTATION_PERIOD + 1, false),
            (u64::MAX, false),
        ] {
            let mut s = spec(KeyPurpose::Encrypt);
            s.rotation_period = Some(period);
            let result = svc.create_key(&name(&format!("k{period}")), &s);
            if ok {
                assert_eq!(result.expect("create").rotation_period, Some(period));
            } else {
                assert!(
                    matches!(result, Err(Error::InvalidArgument { .. })),
                    "{period}: {result:?}"
                );
            }
        }
    }

    #[test]
    fn key_lifecycle_rotate_and_retire() {
        let (_fx, mut svc) = fixture();
        let k = name("assistant-store");
        let info = svc
            .create_key(&k, &spec(KeyPurpose::Encrypt))
            .expect("create");
        assert_eq!(info.primary_version, 1);
        assert!(matches!(
            svc.create_key(&k, &spec(KeyPurpose::Sign)),
            Err(Error::KeyExists { .. })
        ));
        let v1 = dek(&svc, "assistant-store", 1);
        let info = svc.rotate_key(&k).expect("rotate");
        assert_eq!(info.primary_version, 2);
        assert_eq!(
            info.versions
                .iter()
                .map(|v| v.state.as_str())
                .collect::<Vec<_>>(),
            ["active", "primary"]
        );
        assert_ne!(dek(&svc, "assistant-store", 2), v1);
        assert_eq!(dek(&svc, "assistant-store", 1), v1);

        assert!(matches!(
            svc.retire(&k, 3),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            svc.retire(&k, 0),
            Err(Error::InvalidArgument { .. })
        ));
        let info = svc.retire(&k, 2).expect("retire");
        assert_eq!(info.versions[0].state, "retired");
        assert!(matches!(
            svc.decryption_key(&k, 1),
            Err(Error::VersionRetired {
                version: 1,
                min_decryption_version: 2,
                ..
            })
        ));
        assert!(svc.decryption_key(&k, 2).is_ok());
        assert!(matches!(
            svc.decryption_key(&k, 3),
            Err(Error::VersionNotFound { .. })
        ));
        assert!(matches!(
            svc.decryption_key(&name("nope"), 1),
            Err(Error::KeyNotFound { .. })
        ));
    }

    #[test]
    fn secret_class_keys_never_reach_the_store() {
        let (fx, mut svc) = fixture();
        let k = name("session");
        let s = KeySpec {
            class: DataClass::Secret,
            ..spec(KeyPurpose::Encrypt)
        };
        assert!(matches!(
            svc.create_key(&k, &s),
            Err(Error::ClassPolicy { .. })
        ));
        drop(svc);
        let memory = Options {
            memory_keys: true,
            ..Options::default()
        };
        let mut svc = Service::open_with(&fx.path, fx.backends.clone(), memory).expect("open");
        svc.unlock(UnlockWith::Any, &NoUi).expect("unlock");
        svc.create_key(&k, &s).expect("create in memory");
        svc.rotate_key(&k).expect("rotate in memory");
        assert_eq!(svc.key(&k).expect("key").primary_version, 2);
        let v1 = dek(&svc, "session", 1);
        svc.rotate_master()
            .expect("master rotation covers memory keys");
        assert_eq!(dek(&svc, "session", 1), v1);
        let conn = Connection::open(&fx.path).expect("open raw");
        let rows: i64 = conn
            .query_row(
                "SELECT count(*) FROM key_versions WHERE key_name = 'session'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(rows, 0);
        svc.lock();
        svc.unlock(UnlockWith::Any, &NoUi).expect("unlock");
        assert!(
            matches!(svc.key(&k), Err(Error::KeyNotFound { .. })),
            "gone on lock"
        );
    }

    #[test]
    fn rotate_due_rotates_only_keys_whose_period_elapsed() {
        let (_fx, mut svc) = fixture();
        let due = name("due");
        let fresh = name("fresh");
        let never = name("never");
        for (k, period) in [(&due, Some(60)), (&fresh, Some(3600)), (&never, None)] {
            svc.create_key(
                k,
                &KeySpec {
                    rotation_period: period,
                    ..spec(KeyPurpose::Encrypt)
                },
            )
            .expect("create");
        }
        assert!(svc.rotate_due().expect("nothing due yet").is_empty());
        let ct = svc.encrypt(&due, b"", b"old data").expect("encrypt");
        // Age every version by two minutes.
        svc.store
            .write(|db| {
                db.conn()
                    .execute("UPDATE key_versions SET created_at = created_at - 120", [])?;
                Ok(())
            })
            .expect("age");
        let rotated = svc.rotate_due().expect("rotate due");
        assert_eq!(
            rotated,
            [Rotated {
                key: due.clone(),
                version: 2,
                reason: "period"
            }]
        );
        assert!(
            svc.rotate_due()
                .expect("the new version is fresh")
                .is_empty()
        );
        assert_eq!(
            svc.decrypt(b"", &ct).expect("old data").plaintext.expose(),
            b"old data"
        );
        svc.lock();
        assert!(matches!(svc.rotate_due(), Err(Error::Locked)));
    }
}
