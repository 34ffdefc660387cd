//! Key use: counting encryptions before they happen (and rotating at the
//! usage limit), the data-key cache, and the audit records of each use.
//! [`Usage`] holds the state of all of it; the service's `Options`, chosen
//! when it was opened, say how it works.
//! Everything in it is forgotten on lock.

use std::collections::HashMap;

use serde_json::json;

use super::keys::{rotate_in_tx, unwrap_version};
use super::{HARD_USAGE_LIMIT, Options, Service, require_purpose};
use crate::audit::{self, Action};
use crate::keys::{KeyName, KeyPurpose};
use crate::secret::Secret32;
use crate::store::{Db, KeyRow, Store, VersionRow};
use crate::{Error, Result};

/// Encryptions reserved in the store per block with
/// [`Options::reservations`]: one durable commit per this many encryptions
/// (docs/DESIGN.md: "reserve blocks, never under-count"). A crash loses at most
/// the unused rest of a block, which only over-counts.
pub const RESERVATION_BLOCK: u64 = 4096;

impl Options {
    /// Encryptions reserved per durable commit.
    fn reservation_block(self) -> u64 {
        if self.reservations {
            RESERVATION_BLOCK
        } else {
            1
        }
    }
}

/// The state of key use between operations.
#[derive(Debug, Default)]
pub(super) struct Usage {
    /// Unwrapped data keys by (name, version), with the 40-byte wrap they
    /// came from: an entry is used only while the stored wrap is the same.
    deks: HashMap<(KeyName, u32), (Vec<u8>, Secret32)>,
    /// Reserved, unused encryptions of a key's primary version.
    reserved: HashMap<KeyName, Reserved>,
    /// Use records collected by [`Service::defer_uses`], not yet written.
    pending: Option<Vec<PendingUse>>,
}

/// Encryptions `next..end` of `version`, counted in the store already.
#[derive(Debug, Clone, Copy)]
struct Reserved {
    version: u32,
    next: u64,
    end: u64,
}

/// The audit record of one key use, waiting for [`Service::commit_uses`].
#[derive(Debug)]
struct PendingUse {
    action: Action,
    ok: bool,
    fields: serde_json::Value,
}

impl Usage {
    /// Forgets every cached data key and reservation (on lock).
    pub(super) fn forget(&mut self) {
        self.deks.clear();
        self.reserved.clear();
    }

    /// Takes one encryption of `version` from the reserved block, if one is
    /// left.
    fn take(&mut self, name: &KeyName, version: u32) -> bool {
        match self.reserved.get_mut(name) {
            Some(r) if r.version == version && r.next < r.end => {
                r.next += 1;
                true
            }
            _ => false,
        }
    }
}

/// The usage rule: a version that reached its key's usage limit gets a
/// successor before the next encryption.
fn at_usage_limit(key: &KeyRow, v: &VersionRow) -> bool {
    v.uses_reserved >= key.usage_limit
}

/// The hard limit, checked after any rotation: a version is never used for
/// more than [`HARD_USAGE_LIMIT`] encryptions.
fn check_hard_limit(name: &KeyName, v: &VersionRow) -> Result<()> {
    if v.uses_reserved >= HARD_USAGE_LIMIT {
        return Err(Error::UsageLimit {
            name: name.to_string(),
            version: v.version,
        });
    }
    Ok(())
}

impl Service {
    /// From now until [`Service::commit_uses`], collects the audit records
    /// of key uses (encrypt, decrypt, data keys, rewrap) in memory instead
    /// of committing each on its own, so that a batch of operations costs
    /// one transaction. **The results of the operations made meanwhile
    /// must not be released before `commit_uses` returns `Ok`**: an
    /// operation whose record was not written did not happen.
    pub fn defer_uses(&mut self) {
        self.usage.pending.get_or_insert_with(Vec::new);
    }

    /// Writes every use record collected since [`Service::defer_uses`] in
    /// one transaction (relaxed with [`Options::relaxed_uses`]) and stops
    /// collecting. Returns how many were written.
    ///
    /// # Errors
    /// `AuditWrite`: none was written, and none of the operations may be
    /// reported as done.
    pub fn commit_uses(&mut self) -> Result<usize> {
        let Some(pending) = self.usage.pending.take() else {
            return Ok(0);
        };
        if pending.is_empty() {
            return Ok(0);
        }
        let mac = self.mac().ok();
        write_use(&mut self.store, self.options.relaxed_uses, |db| {
            audit::append_many(
                db,
                pending.iter().map(|p| (p.action, p.ok, &p.fields)),
                mac.as_ref(),
            )?;
            Ok(pending.len())
        })
    }

    /// Records one use of a key: collected when deferring, else committed
    /// now (relaxed with [`Options::relaxed_uses`]).
    pub(super) fn record_use(
        &mut self,
        action: Action,
        ok: bool,
        fields: serde_json::Value,
    ) -> Result<()> {
        if let Some(pending) = self.usage.pending.as_mut() {
            pending.push(PendingUse { action, ok, fields });
            return Ok(());
        }
        let mac = self.mac()?;
        write_use(&mut self.store, self.options.relaxed_uses, |db| {
            audit::append(db, action, ok, &fields, Some(&mac))
        })?;
        Ok(())
    }

    /// Counts one encryption against the primary version before it happens
    /// (so a crash can only over-count), rotating first if the version
    /// reached its usage limit, records the use, and returns the key to
    /// use.
    pub(super) fn reserve_encryption(
        &mut self,
        name: &KeyName,
        action: Action,
        size: Option<u64>,
    ) -> Result<(KeyRow, u32, Secret32)> {
        if self.master.is_none() {
            return Err(Error::Locked);
        }
        let (key, v) = if self.memory_keys.contains_key(name) {
            self.reserve_in_memory(name)?
        } else if let Some(taken) = self.take_reserved(name)? {
            taken
        } else {
            // A new block: one durable commit, which also carries this
            // use's record unless the caller defers it.
            return self.reserve_block(name, action, size);
        };
        let fields = json!({ "key": name, "version": v.version, "class": key.class,
                             "size": size, "actor": self.actor_json() });
        self.record_use(action, true, fields)?;
        let dek = self.dek(&key, &v)?;
        Ok((key, v.version, dek))
    }

    /// One encryption of a `secret`-class key, whose count lives in memory
    /// with it.
    fn reserve_in_memory(&mut self, name: &KeyName) -> Result<(KeyRow, VersionRow)> {
        let (key, v) = self.key_version(name, None)?;
        require_purpose(&key, KeyPurpose::Encrypt)?;
        if at_usage_limit(&key, &v) {
            self.rotate_key_because(name, "usage-limit")?;
        }
        let m = self
            .memory_keys
            .get_mut(name)
            .ok_or_else(|| Error::KeyNotFound {
                name: name.to_string(),
            })?;
        let v = m.versions.last_mut().ok_or(Error::VersionNotFound {
            name: name.to_string(),
            version: m.key.primary_version,
        })?;
        check_hard_limit(name, v)?;
        v.uses_reserved += 1;
        Ok((m.key.clone(), v.clone()))
    }

    /// One encryption from the block of the primary version reserved
    /// earlier, if one is left.
    fn take_reserved(&mut self, name: &KeyName) -> Result<Option<(KeyRow, VersionRow)>> {
        if !self.usage.reserved.contains_key(name) {
            return Ok(None);
        }
        let db = self.store.db();
        let key = db.key(name)?;
        require_purpose(&key, KeyPurpose::Encrypt)?;
        if !self.usage.take(name, key.primary_version) {
            return Ok(None);
        }
        let v = db.version(name, key.primary_version)?;
        Ok(Some((key, v)))
    }

    /// Reserves a new block of encryptions (one, without
    /// [`Options::reservations`]) of the primary version in one durable
    /// commit, rotating first at the usage limit, and takes the first.
    fn reserve_block(
        &mut self,
        name: &KeyName,
        action: Action,
        size: Option<u64>,
    ) -> Result<(KeyRow, u32, Secret32)> {
        let master = self.master.as_ref().ok_or(Error::Locked)?;
        let store_id = *self.store.store_id();
        let mac = audit::mac_key(master.secret(), &store_id);
        let actor = self.actor_json();
        let block = self.options.reservation_block();
        let deferred = self.usage.pending.is_some();
        let fields = |key: &KeyRow, v: &VersionRow| {
            json!({ "key": name, "version": v.version, "class": key.class, "size": size,
                    "actor": actor })
        };
        let (key, v, end) = self.store.write(|db| {
            let mut key = db.key(name)?;
            require_purpose(&key, KeyPurpose::Encrypt)?;
            let mut v = db.version(name, key.primary_version)?;
            if at_usage_limit(&key, &v) {
                let version =
                    rotate_in_tx(db, master, &store_id, name, "usage-limit", &actor, &mac)?;
                key = db.key(name)?;
                v = db.version(name, version)?;
            }
            check_hard_limit(name, &v)?;
            let end = (v.uses_reserved + block)
                .min(key.usage_limit.max(v.uses_reserved + 1))
                .min(HARD_USAGE_LIMIT);
            db.set_uses_reserved(name, v.version, end)?;
            if !deferred {
                audit::append(db, action, true, &fields(&key, &v), Some(&mac))?;
            }
            Ok((key, v, end))
        })?;
        let next = v.uses_reserved + 1;
        if next < end {
            self.usage.reserved.insert(
                name.clone(),
                Reserved {
                    version: v.version,
                    next,
                    end,
                },
            );
        }
        if deferred {
            self.record_use(action, true, fields(&key, &v))?;
        }
        let dek = self.dek(&key, &v)?;
        Ok((key, v.version, dek))
    }

    /// A version's data key: from the cache when the stored wrap is the
    /// one it was unwrapped from, else unwrapped (and cached with
    /// [`Options::dek_cache`]).
    pub(super) fn dek(&mut self, key: &KeyRow, v: &VersionRow) -> Result<Secret32> {
        let master = self.master.as_ref().ok_or(Error::Locked)?;
        let store_id = *self.store.store_id();
        if !self.options.dek_cache {
            return unwrap_version(master, &store_id, key, v);
        }
        let slot = (key.name.clone(), v.version);
        if let Some((wrapped, dek)) = self.usage.deks.get(&slot) {
            if *wrapped == v.wrapped {
                return Secret32::try_from_slice(dek.expose());
            }
        }
        let dek = unwrap_version(master, &store_id, key, v)?;
        self.usage.deks.insert(
            slot,
            (v.wrapped.clone(), Secret32::try_from_slice(dek.expose())?),
        );
        Ok(dek)
    }
}

/// Commits `f` relaxed ([`Store::write_relaxed`]) or fully.
pub(super) fn write_use<T>(
    store: &mut Store,
    relaxed: bool,
    f: impl FnOnce(&Db<'_>) -> Result<T>,
) -> Result<T> {
    if relaxed {
        store.write_relaxed(f)
    } else {
        store.write(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::test_support::*;

    /// The versions seven encryptions in a row are reserved from.
    fn versions_of_seven(svc: &mut Service, k: &KeyName) -> Vec<u32> {
        (0..7)
            .map(|_| {
                svc.reserve_encryption(k, Action::Encrypt, None)
                    .expect("reserve")
                    .1
            })
            .collect()
    }

    #[test]
    fn usage_counter_is_reserved_before_use_and_rotates_at_the_limit() {
        let (_fx, mut svc) = fixture();
        let k = limited_key(&mut svc, "limited", 3);
        assert_eq!(versions_of_seven(&mut svc, &k), [1, 1, 1, 2, 2, 2, 3]);
        let info = svc.key(&k).expect("key");
        assert_eq!(
            info.versions.iter().map(|v| v.uses).collect::<Vec<_>>(),
            [3, 3, 1]
        );
        assert!(matches!(
            svc.reserve_encryption(&name("nope"), Action::Encrypt, None),
            Err(Error::KeyNotFound { .. })
        ));
        svc.create_key(&name("signer"), &spec(KeyPurpose::Sign))
            .expect("create");
        assert!(matches!(
            svc.reserve_encryption(&name("signer"), Action::Encrypt, None),
            Err(Error::WrongPurpose { .. })
        ));
    }

    #[test]
    fn daemon_mode_reserves_blocks_and_still_rotates_at_the_limit() {
        let (fx, mut svc) = daemon_fixture();
        let k = encryption_key(&mut svc, "bulk");
        let ct = svc.encrypt(&k, b"ctx", b"hello").expect("encrypt");
        // One durable reservation of a whole block, counted before any use.
        assert_eq!(
            svc.key(&k).expect("key").versions[0].uses,
            RESERVATION_BLOCK
        );
        for _ in 0..10 {
            svc.encrypt(&k, b"ctx", b"again").expect("encrypt");
        }
        assert_eq!(
            svc.key(&k).expect("key").versions[0].uses,
            RESERVATION_BLOCK
        );
        // Each use is still in the audit log, and the chain verifies.
        let uses = actions(&svc).iter().filter(|a| *a == "encrypt").count();
        assert_eq!(uses, 11);
        svc.audit_verify().expect("chain verifies");
        // A fresh process (no reservation in memory) sees the over-count and
        // decrypts what the daemon wrote.
        drop(svc);
        let mut other = Service::open(&fx.path, fx.backends.clone()).expect("open");
        other.unlock(UnlockWith::Any, &NoUi).expect("unlock");
        let d = other.decrypt(b"ctx", &ct).expect("decrypt");
        assert_eq!(d.plaintext.expose(), b"hello");

        // A small usage limit: blocks never cross it, so rotation happens at
        // exactly the limit, as without daemon mode.
        drop(other);
        let mut other =
            Service::open_with(&fx.path, fx.backends.clone(), Options::daemon()).expect("open");
        other.unlock(UnlockWith::Any, &NoUi).expect("unlock");
        let small = limited_key(&mut other, "small", 3);
        assert_eq!(versions_of_seven(&mut other, &small), [1, 1, 1, 2, 2, 2, 3]);
    }

    #[test]
    fn daemon_lock_forgets_cached_keys_and_is_audited() {
        let (_fx, mut svc) = daemon_fixture();
        let k = encryption_key(&mut svc, "k");
        let ct = svc.encrypt(&k, b"", b"secret").expect("encrypt");
        svc.decrypt(b"", &ct).expect("decrypt warms the cache");
        assert!(!svc.usage.deks.is_empty());
        svc.lock_because("idle");
        assert!(svc.usage.deks.is_empty());
        assert!(svc.usage.reserved.is_empty());
        assert!(matches!(svc.decrypt(b"", &ct), Err(Error::Locked)));
        let last = svc.audit_records(0, 10_000).expect("records");
        let lock = last.last().expect("a record");
        assert_eq!(lock.action, "lock");
        assert_eq!(lock.fields["reason"], "idle");
        // Locking again records nothing more.
        let n = last.len();
        svc.lock_because("request");
        assert_eq!(svc.audit_records(0, 10_000).expect("records").len(), n);
    }

    #[test]
    fn cached_data_key_is_not_used_after_its_wrap_changes() {
        let (_fx, mut svc) = daemon_fixture();
        let k = encryption_key(&mut svc, "k");
        let ct = svc.encrypt(&k, b"", b"data").expect("encrypt");
        // Master rotation re-wraps every version; the cache follows.
        svc.rotate_master().expect("rotate master");
        assert_eq!(
            svc.decrypt(b"", &ct).expect("decrypt").plaintext.expose(),
            b"data"
        );
        // A wrap swapped in the store is not papered over by the cache.
        svc.store
            .write(|db| {
                db.conn().execute(
                    "UPDATE key_versions SET wrapped = zeroblob(40) WHERE key_name = 'k'",
                    [],
                )?;
                Ok(())
            })
            .expect("tamper");
        assert!(matches!(
            svc.decrypt(b"", &ct),
            Err(Error::UnwrapFailed | Error::DecryptionFailed)
        ));
    }

    #[test]
    fn deferred_uses_are_written_in_one_go_or_not_at_all() {
        let (fx, mut svc) = daemon_fixture();
        let k = encryption_key(&mut svc, "k");
        let before = actions(&svc).len();
        svc.defer_uses();
        let cts: Vec<Vec<u8>> = (0..5)
            .map(|i| svc.encrypt(&k, b"", &[i; 8]).expect("encrypt"))
            .collect();
        for ct in &cts {
            svc.decrypt(b"", ct).expect("decrypt");
        }
        assert_eq!(
            actions(&svc).len(),
            before,
            "nothing written while deferring"
        );
        assert_eq!(svc.commit_uses().expect("commit"), 10);
        let acts = actions(&svc);
        assert_eq!(acts.len(), before + 10);
        assert_eq!(acts.iter().filter(|a| *a == "decrypt").count(), 5);
        svc.audit_verify().expect("chain verifies");
        // Not deferring any more: each use is written at once again.
        svc.decrypt(b"", &cts[0]).expect("decrypt");
        assert_eq!(actions(&svc).len(), before + 11);

        // A failing commit writes none of the batch, and says so.
        svc.defer_uses();
        svc.decrypt(b"", &cts[1]).expect("decrypt");
        Connection::open(&fx.path)
            .expect("open raw")
            .execute_batch(
                "CREATE TRIGGER no_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(FAIL, 'disk full'); END;",
            )
            .expect("trigger");
        assert!(matches!(svc.commit_uses(), Err(Error::AuditWrite(_))));
        assert_eq!(actions(&svc).len(), before + 11);
    }

    #[test]
    fn memory_keys_follow_the_same_usage_rule() {
        let (_fx, mut svc) = daemon_fixture();
        let k = name("session");
        svc.create_key(
            &k,
            &KeySpec {
                class: DataClass::Secret,
                usage_limit: Some(3),
                ..spec(KeyPurpose::Encrypt)
            },
        )
        .expect("create in memory");
        assert_eq!(versions_of_seven(&mut svc, &k), [1, 1, 1, 2, 2, 2, 3]);
        // Each automatic rotation is audited, as a stored key's is.
        let rotations: Vec<_> = svc
            .audit_records(0, 10_000)
            .expect("records")
            .into_iter()
            .filter(|r| r.action == "key.rotate")
            .map(|r| r.fields["reason"].clone())
            .collect();
        assert_eq!(rotations, ["usage-limit", "usage-limit"]);
    }
}
