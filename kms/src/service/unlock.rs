//! Unlocking: which protector to try ([`Service::choose_unlock`], the one
//! place that decides, for the CLI and the daemon alike), and recovering
//! the master key with it ([`Service::unlock`]).

use serde_json::json;

use super::protectors::{ProtectorInfo, mk_wrap_aad, protector_info};
use super::{Service, no_backend};
use crate::audit::{self, Action};
use crate::backend::{BackendKind, Callbacks, Wrapped};
use crate::keys::MasterKey;
use crate::store::ProtectorRow;
use crate::{Error, Result};

/// Which protector(s) to try when unlocking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnlockWith {
    /// Any enrolled protector, in enrollment order.
    Any,
    /// Protectors of this kind.
    Kind(BackendKind),
    /// This protector.
    Id(u32),
}

/// A secret supplied with an unlock: it points at the kind of protector it
/// opens. Ordered by rank: at equal rank a recovery key beats a passphrase
/// (it is cheap to check and is what `enroll passphrase` needs), which
/// beats a PIN (a wrong guess at a PIN costs a device try).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Supplied {
    /// A recovery key.
    RecoveryKey,
    /// A passphrase.
    Passphrase,
    /// A PIN: a hardware protector.
    Pin,
}

impl Supplied {
    /// The one of `supplied` that chooses, by the rank above.
    pub fn strongest(supplied: impl IntoIterator<Item = Self>) -> Option<Self> {
        supplied.into_iter().min()
    }
}

/// What the caller was told about how to unlock: the question the CLI
/// (`--protector`, `--with`, the secret sources) and the daemon (`with`,
/// `secrets`) both ask [`Service::choose_unlock`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnlockRequest {
    /// A protector named by id.
    pub protector: Option<u32>,
    /// A protector kind named.
    pub kind: Option<BackendKind>,
    /// The secret supplied that chooses (see [`Supplied::strongest`]).
    pub supplied: Option<Supplied>,
}

/// The message of [`Error::PinTarget`].
pub(crate) fn pin_target_message(devices: &[(BackendKind, u32)]) -> String {
    if devices.is_empty() {
        return "a PIN was supplied but no hardware protector is enrolled".to_owned();
    }
    let list: Vec<String> = devices.iter().map(|(k, id)| format!("{k} {id}")).collect();
    format!(
        "a PIN was supplied and {} hardware protectors are enrolled ({})",
        devices.len(),
        list.join(", ")
    )
}

impl Service {
    /// Which protector(s) to unlock with: the protector named, else the
    /// kind named, else the kind whose secret was supplied (a PIN fits one
    /// device, so it chooses the only hardware protector), else
    /// [`UnlockWith::Any`], which leaves the choice to the caller's user
    /// (the CLI asks on a terminal) or to the first protector, which then
    /// says what secret it needs (the daemon's 428).
    ///
    /// # Errors
    /// `PinTarget` when a PIN was supplied and no hardware protector, or
    /// more than one, is enrolled (sending it to the wrong device would
    /// spend one of its tries); database errors.
    pub fn choose_unlock(&self, request: &UnlockRequest) -> Result<UnlockWith> {
        if let Some(id) = request.protector {
            return Ok(UnlockWith::Id(id));
        }
        if let Some(kind) = request.kind {
            return Ok(UnlockWith::Kind(kind));
        }
        match request.supplied {
            None => Ok(UnlockWith::Any),
            Some(Supplied::RecoveryKey) => Ok(UnlockWith::Kind(BackendKind::Recovery)),
            Some(Supplied::Passphrase) => Ok(UnlockWith::Kind(BackendKind::Passphrase)),
            Some(Supplied::Pin) => {
                let devices: Vec<(BackendKind, u32)> = self
                    .store
                    .db()
                    .protectors()?
                    .iter()
                    .filter(|p| p.enrollment.kind.is_hardware())
                    .map(|p| (p.enrollment.kind, p.id))
                    .collect();
                match devices.as_slice() {
                    [(_, id)] => Ok(UnlockWith::Id(*id)),
                    _ => Err(Error::PinTarget { devices }),
                }
            }
        }
    }

    /// Recovers the master key with an enrolled protector.
    ///
    /// # Errors
    /// `WrongPassphrase`, `WrongRecoveryKey`, device errors from the
    /// backend; `NoSuchProtectorKind`, `ProtectorNotFound`.
    pub fn unlock(&mut self, with: UnlockWith, ui: &dyn Callbacks) -> Result<ProtectorInfo> {
        let store_id = *self.store.store_id();
        let (epoch, protectors) = {
            let db = self.store.db();
            (db.mk_epoch()?, db.protectors()?)
        };
        let candidates: Vec<ProtectorRow> = protectors
            .into_iter()
            .filter(|p| match with {
                UnlockWith::Any => true,
                UnlockWith::Kind(kind) => p.enrollment.kind == kind,
                UnlockWith::Id(id) => p.id == id,
            })
            .collect();
        if candidates.is_empty() {
            return Err(match with {
                UnlockWith::Id(id) => Error::ProtectorNotFound { id },
                UnlockWith::Kind(kind) => Error::NoSuchProtectorKind {
                    kind: kind.to_string(),
                },
                UnlockWith::Any => Error::NoSuchProtectorKind { kind: "any".into() },
            });
        }
        let mut last_err = None;
        let n = candidates.len();
        for (i, p) in candidates.into_iter().enumerate() {
            let Some(backend) = self.backends.get(p.enrollment.kind).cloned() else {
                last_err = Some(no_backend(p.enrollment.kind));
                continue;
            };
            let aad = mk_wrap_aad(&store_id, p.id, p.mk_epoch, p.enrollment.kind);
            match backend.unwrap(&p.enrollment, &Wrapped(p.wrapped_mk.clone()), &aad, ui) {
                Ok(secret) => {
                    if p.mk_epoch != epoch {
                        return Err(Error::StoreCorrupt {
                            path: self.store.path().to_owned(),
                            detail: format!(
                                "protector {} holds master-key epoch {} but the store is at {epoch}",
                                p.id, p.mk_epoch
                            ),
                        });
                    }
                    let master = MasterKey::from_secret(secret, epoch);
                    let mac = audit::mac_key(master.secret(), &store_id);
                    let actor = self.actor_json();
                    self.store.write(|db| {
                        audit::append(
                            db,
                            Action::Unlock,
                            true,
                            &json!({ "protector": p.id, "kind": p.enrollment.kind, "actor": actor }),
                            Some(&mac),
                        )
                    })?;
                    self.master = Some(master);
                    return Ok(protector_info(&p));
                }
                // Nothing was tried: the caller has yet to supply the
                // secret (the daemon's 428), so there is no attempt to record.
                Err(e @ Error::SecretRequired { .. }) => return Err(e),
                Err(e) => {
                    let actor = self.actor_json();
                    // Best effort: a failed attempt is recorded if it can be;
                    // the caller sees the original error either way.
                    let _ = self.store.write(|db| {
                        audit::append(
                            db,
                            Action::UnlockFailed,
                            false,
                            &json!({ "protector": p.id, "kind": p.enrollment.kind,
                                     "error": e.to_string(), "actor": actor }),
                            None,
                        )
                    });
                    let wrong_secret =
                        matches!(e, Error::WrongPassphrase | Error::WrongRecoveryKey);
                    if !wrong_secret || i + 1 == n {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or(Error::Locked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::test_support::*;

    #[test]
    fn tampered_master_key_wrap_is_refused() {
        let (fx, svc) = fixture();
        drop(svc);
        let original: Vec<u8> = raw(&fx)
            .query_row("SELECT wrapped_mk FROM protectors WHERE id = 1", [], |r| {
                r.get(0)
            })
            .expect("wrapped");
        for i in 0..original.len() {
            let mut t = original.clone();
            t[i] ^= 0x01;
            raw(&fx)
                .execute("UPDATE protectors SET wrapped_mk = ?1 WHERE id = 1", [&t])
                .expect("update");
            let mut svc = Service::open(&fx.path, fx.backends.clone()).expect("open");
            let err = svc
                .unlock(UnlockWith::Any, &NoUi)
                .expect_err("tampered wrap");
            assert!(
                matches!(
                    err,
                    Error::UnwrapFailed
                        | Error::InvalidPublicKey { .. }
                        | Error::UnsupportedFormat { .. }
                ),
                "byte {i}: {err:?}"
            );
            assert!(!svc.is_unlocked());
        }
        // An epoch edit in the store is caught by the wrap's AAD.
        raw(&fx)
            .execute(
                "UPDATE protectors SET wrapped_mk = ?1, mk_epoch = 2 WHERE id = 1",
                [&original],
            )
            .expect("restore");
        let mut svc = Service::open(&fx.path, fx.backends.clone()).expect("open");
        assert!(matches!(
            svc.unlock(UnlockWith::Any, &NoUi),
            Err(Error::UnwrapFailed)
        ));
    }

    #[test]
    fn the_choice_follows_names_then_the_secret_supplied() {
        let (_fx, svc) = fixture();
        let choose = |request: UnlockRequest| svc.choose_unlock(&request);
        let ask = |protector, kind, supplied| UnlockRequest {
            protector,
            kind,
            supplied,
        };
        assert_eq!(
            choose(ask(Some(7), Some(BackendKind::Tpm), Some(Supplied::Pin))).expect("id"),
            UnlockWith::Id(7)
        );
        assert_eq!(
            choose(ask(None, Some(BackendKind::Tpm), Some(Supplied::Pin))).expect("kind"),
            UnlockWith::Kind(BackendKind::Tpm)
        );
        assert_eq!(
            choose(ask(None, None, Some(Supplied::RecoveryKey))).expect("recovery"),
            UnlockWith::Kind(BackendKind::Recovery)
        );
        assert_eq!(
            choose(ask(None, None, Some(Supplied::Passphrase))).expect("passphrase"),
            UnlockWith::Kind(BackendKind::Passphrase)
        );
        assert_eq!(
            choose(UnlockRequest::default()).expect("nothing"),
            UnlockWith::Any
        );
        // The fixture's protector is no device: a PIN fits none.
        let err = choose(ask(None, None, Some(Supplied::Pin))).expect_err("no device");
        assert!(matches!(&err, Error::PinTarget { devices } if devices.is_empty()));
        assert_eq!(err.code(), "protector-not-found");
        assert_eq!(
            Supplied::strongest([Supplied::Pin, Supplied::RecoveryKey, Supplied::Passphrase]),
            Some(Supplied::RecoveryKey)
        );
        assert_eq!(Supplied::strongest([]), None);
    }

    #[test]
    fn a_pin_for_several_devices_names_them() {
        let err = Error::PinTarget {
            devices: vec![(BackendKind::Tpm, 2), (BackendKind::Pkcs11, 3)],
        };
        assert_eq!(
            err.to_string(),
            "a PIN was supplied and 2 hardware protectors are enrolled (tpm 2, pkcs11 3)"
        );
        assert_eq!(err.code(), "invalid-argument");
    }
}
