//! Protectors: enrolling, listing, replacing and removing the ways to
//! unlock, and replacing the master key they wrap.

use serde::Serialize;
use serde_json::json;

use super::keys::{kek, unwrap_version};
use super::{Service, backend_for};
use crate::audit::{self, Action};
use crate::backend::{Backend, BackendKind, Callbacks, EnrollRequest, Enrollment};
use crate::crypto::kw;
use crate::keys::MasterKey;
use crate::secret::Secret32;
use crate::store::{Db, ProtectorRow, now};
use crate::{Error, Result};

/// A protector as listed (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProtectorInfo {
    /// Id, unique in the store, never reused.
    pub id: u32,
    /// Kind.
    pub kind: BackendKind,
    /// User label.
    pub label: String,
    /// Device identity, if any.
    pub device_id: Option<String>,
    /// Master-key epoch its wrap is for.
    pub mk_epoch: u32,
    /// Unix time of enrollment.
    pub created_at: i64,
}

/// HKDF-free AAD of a master-key wrap (docs/FORMAT.md, "Protectors"):
/// `"keyward/v1/mk-wrap" || store_id || protector_id_be32 || epoch_be32 ||
/// kind`.
pub fn mk_wrap_aad(
    store_id: &[u8; 16],
    protector_id: u32,
    epoch: u32,
    kind: BackendKind,
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64);
    aad.extend_from_slice(b"keyward/v1/mk-wrap");
    aad.extend_from_slice(store_id);
    aad.extend_from_slice(&protector_id.to_be_bytes());
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad.push(kind.code());
    aad
}

impl Service {
    /// Enrolled protectors.
    ///
    /// # Errors
    /// Database errors.
    pub fn protectors(&self) -> Result<Vec<ProtectorInfo>> {
        Ok(self
            .store
            .db()
            .protectors()?
            .iter()
            .map(protector_info)
            .collect())
    }

    /// The stored descriptor of protector `id`: no secret, only what its
    /// backend needs to find the device and the public keys (to sign with a
    /// device key, or to export its public key). Needs no unlock.
    ///
    /// # Errors
    /// `ProtectorNotFound`, database errors.
    pub fn enrollment(&self, id: u32) -> Result<Enrollment> {
        self.store
            .db()
            .protectors()?
            .into_iter()
            .find(|p| p.id == id)
            .map(|p| p.enrollment)
            .ok_or(Error::ProtectorNotFound { id })
    }

    /// Enrolls another protector (needs the store unlocked).
    ///
    /// # Errors
    /// `Locked`, backend errors.
    pub fn enroll(
        &mut self,
        kind: BackendKind,
        request: &EnrollRequest,
        ui: &dyn Callbacks,
    ) -> Result<ProtectorInfo> {
        self.enroll_then(kind, request, ui, |_, _, _, _| Ok(()))
    }

    /// Replaces protector `old` with a fresh enrollment of `kind`, in one
    /// transaction: either both the new protector exists and the old one is
    /// gone, or nothing changed (e.g. re-sealing to a TPM after a firmware
    /// update changed its PCRs, having unlocked with the recovery key).
    ///
    /// # Errors
    /// `Locked`, `ProtectorNotFound`, backend errors.
    pub fn replace_protector(
        &mut self,
        old: u32,
        kind: BackendKind,
        request: &EnrollRequest,
        ui: &dyn Callbacks,
    ) -> Result<ProtectorInfo> {
        if self.master.is_none() {
            return Err(Error::Locked);
        }
        if !self.store.db().protectors()?.iter().any(|p| p.id == old) {
            return Err(Error::ProtectorNotFound { id: old });
        }
        self.enroll_then(kind, request, ui, |db, info, actor, mac| {
            if !db.delete_protector(old)? {
                return Err(Error::ProtectorNotFound { id: old });
            }
            audit::append(
                db,
                Action::ProtectorReplace,
                true,
                &json!({ "old": old, "new": info.id, "kind": kind, "actor": actor }),
                Some(mac),
            )?;
            Ok(())
        })
    }

    /// Enrolls a protector of `kind` (the device first, outside the
    /// transaction) and adds it in one transaction with whatever `then`
    /// does there.
    fn enroll_then(
        &mut self,
        kind: BackendKind,
        request: &EnrollRequest,
        ui: &dyn Callbacks,
        then: impl FnOnce(&Db<'_>, &ProtectorInfo, &serde_json::Value, &Secret32) -> Result<()>,
    ) -> Result<ProtectorInfo> {
        let master = self.master.as_ref().ok_or(Error::Locked)?;
        let backend = backend_for(&self.backends, kind)?.clone();
        let enrollment = backend.enroll(request, ui)?;
        let store_id = *self.store.store_id();
        let mac = audit::mac_key(master.secret(), &store_id);
        let actor = self.actor_json();
        self.store.write(|db| {
            let info = add_protector(
                db,
                &store_id,
                master,
                backend.as_ref(),
                enrollment,
                &request.label,
                &actor,
                &mac,
            )?;
            then(db, &info, &actor, &mac)?;
            Ok(info)
        })
    }

    /// Removes a protector; never the last one. Needs the store unlocked,
    /// so that only someone who can unlock can take a way to unlock away.
    ///
    /// # Errors
    /// `Locked`, `LastProtector`, `ProtectorNotFound`.
    pub fn remove_protector(&mut self, id: u32) -> Result<()> {
        let mac = self.mac()?;
        let actor = self.actor_json();
        self.store.write(|db| {
            let all = db.protectors()?;
            let Some(p) = all.iter().find(|p| p.id == id) else {
                return Err(Error::ProtectorNotFound { id });
            };
            if all.len() <= 1 {
                return Err(Error::LastProtector);
            }
            db.delete_protector(id)?;
            audit::append(
                db,
                Action::ProtectorRemove,
                true,
                &json!({ "protector": id, "kind": p.enrollment.kind, "label": p.label, "actor": actor }),
                Some(&mac),
            )?;
            Ok(())
        })
    }

    /// Replaces the master key: re-wraps every data-key version and the new
    /// master key for every protector, in one transaction. Returns the new
    /// epoch.
    ///
    /// # Errors
    /// `Locked`, backend wrap errors (nothing changes then).
    pub fn rotate_master(&mut self) -> Result<u32> {
        let old = self.master.as_ref().ok_or(Error::Locked)?;
        let epoch = old.epoch().checked_add(1).ok_or(Error::InvalidArgument {
            what: "master-key epoch exhausted".into(),
        })?;
        let new = MasterKey::generate(epoch)?;
        let store_id = *self.store.store_id();
        let new_mac = audit::mac_key(new.secret(), &store_id);
        let actor = self.actor_json();
        let backends = &self.backends;
        // Memory keys are re-wrapped first and swapped in only after commit.
        let mut memory_rewrapped = Vec::new();
        for (name, m) in &self.memory_keys {
            let mut versions = Vec::new();
            for v in &m.versions {
                let dek = unwrap_version(old, &store_id, &m.key, v)?;
                let mut v = v.clone();
                v.wrapped = kw::wrap(&kek(&new, &store_id, &m.key, v.version), &dek).to_vec();
                versions.push(v);
            }
            memory_rewrapped.push((name.clone(), versions));
        }
        let (versions, protectors) = self.store.write(|db| {
            let all = db.all_versions()?;
            for (key, v) in &all {
                let dek = unwrap_version(old, &store_id, key, v)?;
                let wrapped = kw::wrap(&kek(&new, &store_id, key, v.version), &dek);
                db.update_version_wrap(&key.name, v.version, &wrapped)?;
            }
            let protectors = db.protectors()?;
            for p in &protectors {
                let backend = backend_for(backends, p.enrollment.kind)?;
                let aad = mk_wrap_aad(&store_id, p.id, epoch, p.enrollment.kind);
                let wrapped = backend.wrap(&p.enrollment, new.secret(), &aad)?;
                db.update_protector_wrap(p.id, &wrapped.0, epoch)?;
            }
            db.set_meta("mk_epoch", &epoch)?;
            audit::remac(db, &new_mac)?;
            audit::append(
                db,
                Action::MasterRotate,
                true,
                &json!({ "epoch": epoch, "versions": all.len(), "protectors": protectors.len(),
                         "actor": actor }),
                Some(&new_mac),
            )?;
            Ok((all.len(), protectors.len()))
        })?;
        tracing::info!(epoch, versions, protectors, "master key rotated");
        for (name, versions) in memory_rewrapped {
            if let Some(m) = self.memory_keys.get_mut(&name) {
                m.versions = versions;
            }
        }
        self.master = Some(new);
        Ok(epoch)
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site per path, all needed"
)]
pub(super) fn add_protector(
    db: &Db<'_>,
    store_id: &[u8; 16],
    master: &MasterKey,
    backend: &dyn Backend,
    enrollment: Enrollment,
    label: &str,
    actor: &serde_json::Value,
    mac: &Secret32,
) -> Result<ProtectorInfo> {
    let id = db.next_protector_id()?;
    let aad = mk_wrap_aad(store_id, id, master.epoch(), enrollment.kind);
    let wrapped = backend.wrap(&enrollment, master.secret(), &aad)?;
    let row = ProtectorRow {
        id,
        label: label.to_owned(),
        enrollment,
        wrapped_mk: wrapped.0,
        mk_epoch: master.epoch(),
        created_at: now(),
    };
    db.insert_protector(&row)?;
    audit::append(
        db,
        Action::ProtectorEnroll,
        true,
        &json!({ "protector": id, "kind": row.enrollment.kind, "label": label,
                 "device": row.enrollment.device_id, "actor": actor }),
        Some(mac),
    )?;
    Ok(protector_info(&row))
}

pub(super) fn protector_info(p: &ProtectorRow) -> ProtectorInfo {
    ProtectorInfo {
        id: p.id,
        kind: p.enrollment.kind,
        label: p.label.clone(),
        device_id: p.enrollment.device_id.clone(),
        mk_epoch: p.mk_epoch,
        created_at: p.created_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::test_support::*;

    #[test]
    fn master_rotation_rewraps_everything_and_keeps_data_keys() {
        let (fx, mut svc) = fixture();
        svc.enroll(BackendKind::Mock, &req("second"), &NoUi)
            .expect("enroll");
        for i in 0..5 {
            let k = name(&format!("k{i}"));
            svc.create_key(
                &k,
                &spec(if i % 2 == 0 {
                    KeyPurpose::Encrypt
                } else {
                    KeyPurpose::Sign
                }),
            )
            .expect("create");
            svc.rotate_key(&k).expect("rotate");
        }
        let before: Vec<_> = (0..5).map(|i| dek(&svc, &format!("k{i}"), 1)).collect();
        let wraps_before = svc.store.db().all_versions().expect("versions");
        assert_eq!(svc.rotate_master().expect("rotate master"), 2);
        assert_eq!(svc.status().expect("status").mk_epoch, 2);
        let after: Vec<_> = (0..5).map(|i| dek(&svc, &format!("k{i}"), 1)).collect();
        assert_eq!(before, after, "data keys survive master rotation");
        let wraps_after = svc.store.db().all_versions().expect("versions");
        for ((_, a), (_, b)) in wraps_before.iter().zip(&wraps_after) {
            assert_ne!(a.wrapped, b.wrapped, "every version re-wrapped");
        }
        for p in svc.protectors().expect("protectors") {
            assert_eq!(p.mk_epoch, 2);
        }
        drop(svc);
        let mut svc = Service::open(&fx.path, fx.backends.clone()).expect("open");
        svc.unlock(UnlockWith::Id(2), &NoUi)
            .expect("unlock with the second protector");
        assert_eq!(dek(&svc, "k0", 1), before[0]);
        svc.audit_verify().expect("audit chain intact");
    }

    #[test]
    fn last_protector_is_never_removed() {
        let (_fx, mut svc) = fixture();
        assert!(matches!(svc.remove_protector(1), Err(Error::LastProtector)));
        assert!(matches!(
            svc.remove_protector(7),
            Err(Error::ProtectorNotFound { id: 7 })
        ));
        let p = svc
            .enroll(BackendKind::Mock, &req("two"), &NoUi)
            .expect("enroll");
        assert_eq!(p.id, 2);
        svc.remove_protector(1).expect("remove one of two");
        assert!(matches!(svc.remove_protector(2), Err(Error::LastProtector)));
        let p = svc
            .enroll(BackendKind::Mock, &req("three"), &NoUi)
            .expect("enroll");
        assert_eq!(p.id, 3, "ids are never reused");
        svc.lock();
        assert!(matches!(svc.remove_protector(2), Err(Error::Locked)));
    }

    #[test]
    fn mk_wrap_aad_vector() {
        // docs/FORMAT.md ("Protectors"), computed independently in Python.
        let store_id: [u8; 16] = core::array::from_fn(|i| i as u8);
        assert_eq!(
            hex::encode(mk_wrap_aad(&store_id, 1, 1, BackendKind::Passphrase)),
            "6b6579776172642f76312f6d6b2d77726170000102030405060708090a0b0c0d0e0f000000010000000102"
        );
    }

    #[test]
    fn replace_protector_is_one_change() {
        let (_fx, mut svc) = fixture();
        svc.enroll(BackendKind::Mock, &req("two"), &NoUi)
            .expect("enroll");
        assert!(matches!(
            svc.replace_protector(9, BackendKind::Mock, &req("x"), &NoUi),
            Err(Error::ProtectorNotFound { id: 9 })
        ));
        let new = svc
            .replace_protector(1, BackendKind::Mock, &req("resealed"), &NoUi)
            .expect("replace");
        let ids: Vec<u32> = svc
            .protectors()
            .expect("list")
            .iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(ids, [2, new.id]);
        let audit = svc.audit_records(1, 100).expect("audit");
        assert_eq!(audit.last().expect("record").action, "protector.replace");
    }
}
