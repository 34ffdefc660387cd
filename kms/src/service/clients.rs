//! Daemon clients: their tokens and grants.

use serde_json::json;

use super::Service;
use crate::audit::{self, Action};
use crate::clients::{self, ClientInfo, Operation};
use crate::secret::SecretString;
use crate::store::now;
use crate::{Error, Result};

impl Service {
    /// Adds a daemon client with a grant and returns it with its token,
    /// which is shown only now (the store keeps its SHA-256).
    ///
    /// # Errors
    /// `InvalidArgument` (name, empty grant), `InvalidKeyName`,
    /// `ClientExists`.
    pub fn client_add(
        &mut self,
        name: &str,
        allow: &[Operation],
        keys: &[String],
    ) -> Result<(ClientInfo, SecretString)> {
        clients::check_name(name)?;
        let (allow, keys) = clients::check_grant(allow, keys)?;
        let token = clients::new_token()?;
        let info = ClientInfo {
            name: name.to_owned(),
            allow,
            keys,
            created_at: now(),
            last_used_at: None,
            revoked_at: None,
        };
        let fields = json!({ "client": name, "allow": info.allow, "keys": info.keys,
                             "actor": self.actor_json() });
        let mac = self.mac().ok();
        let hash = clients::token_hash(&token);
        self.store.write(|db| {
            db.insert_client(&info, &hash)?;
            audit::append(db, Action::ClientAdd, true, &fields, mac.as_ref())?;
            Ok(())
        })?;
        Ok((info, token))
    }

    /// Every client, revoked ones included.
    ///
    /// # Errors
    /// Database errors.
    pub fn clients(&self) -> Result<Vec<ClientInfo>> {
        self.store.db().clients()
    }

    /// Revokes one client: its token stops working at once.
    ///
    /// # Errors
    /// `ClientNotFound` (no such active client).
    pub fn client_revoke(&mut self, name: &str) -> Result<()> {
        let fields = json!({ "client": name, "actor": self.actor_json() });
        let mac = self.mac().ok();
        self.store.write(|db| {
            if db.revoke_clients(Some(name), now())? == 0 {
                return Err(Error::ClientNotFound {
                    name: name.to_owned(),
                });
            }
            audit::append(db, Action::ClientRevoke, true, &fields, mac.as_ref())?;
            Ok(())
        })
    }

    /// Revokes every client ("revoke all sessions"); returns how many.
    ///
    /// # Errors
    /// `AuditWrite`.
    pub fn client_revoke_all(&mut self) -> Result<usize> {
        let actor = self.actor_json();
        let mac = self.mac().ok();
        self.store.write(|db| {
            let n = db.revoke_clients(None, now())?;
            audit::append(
                db,
                Action::ClientRevokeAll,
                true,
                &json!({ "revoked": n, "actor": actor }),
                mac.as_ref(),
            )?;
            Ok(n)
        })
    }

    /// The active client holding `token`. Records the use at most once a
    /// minute (without `fsync`).
    ///
    /// # Errors
    /// `Unauthorized` for a malformed, unknown or revoked token.
    pub fn authenticate(&mut self, token: &str) -> Result<ClientInfo> {
        if !clients::looks_like_token(token) {
            return Err(Error::Unauthorized);
        }
        let hash = clients::token_hash(&SecretString::from(token.to_owned()));
        let mut info = self
            .store
            .db()
            .client_by_token(&hash)?
            .ok_or(Error::Unauthorized)?;
        let now = now();
        if info.last_used_at.is_none_or(|t| now - t >= 60) {
            self.store
                .write_relaxed(|db| db.touch_client(&info.name, now))?;
            info.last_used_at = Some(now);
        }
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::test_support::*;

    #[test]
    fn clients_authenticate_until_revoked() {
        let (fx, mut svc) = fixture();
        let (info, token) = svc
            .client_add("assistant", &[Operation::Decrypt], &["store".into()])
            .expect("add");
        assert_eq!(info.allow, [Operation::Decrypt]);
        let got = svc
            .authenticate(token.expose_secret())
            .expect("authenticates");
        assert_eq!(got.name, "assistant");
        assert!(got.last_used_at.is_some());
        assert!(got.permits(Operation::Decrypt, Some(&name("store"))));
        assert!(!got.permits(Operation::Decrypt, Some(&name("health"))));
        assert!(matches!(
            svc.client_add("assistant", &[Operation::Keys], &["*".into()]),
            Err(Error::ClientExists { .. })
        ));
        for bad in ["", "kwt_", "Bearer x", &format!("kwt_{}", "A".repeat(43))] {
            assert!(
                matches!(svc.authenticate(bad), Err(Error::Unauthorized)),
                "{bad:?}"
            );
        }
        // The token is never stored in clear.
        let bytes = std::fs::read(&fx.path).expect("read store");
        let wal = std::fs::read(format!("{}-wal", fx.path.display())).unwrap_or_default();
        let needle = token.expose_secret().as_bytes();
        for haystack in [&bytes, &wal] {
            assert!(!haystack.windows(needle.len()).any(|w| w == needle));
        }
        svc.client_revoke("assistant").expect("revoke");
        assert!(matches!(
            svc.authenticate(token.expose_secret()),
            Err(Error::Unauthorized)
        ));
        assert!(matches!(
            svc.client_revoke("assistant"),
            Err(Error::ClientNotFound { .. })
        ));
        // The name can be reused after revocation, with a new token.
        let (_, t2) = svc
            .client_add("assistant", &[Operation::Keys], &["*".into()])
            .expect("re-add");
        let (_, t3) = svc
            .client_add("backup", &[Operation::Encrypt], &["store".into()])
            .expect("add");
        assert_eq!(svc.client_revoke_all().expect("revoke all"), 2);
        for t in [&t2, &t3] {
            assert!(matches!(
                svc.authenticate(t.expose_secret()),
                Err(Error::Unauthorized)
            ));
        }
        let listed = svc.clients().expect("list");
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|c| c.revoked_at.is_some()));
        let acts = actions(&svc);
        for a in ["client.add", "client.revoke", "client.revoke_all"] {
            assert!(acts.iter().any(|x| x == a), "{a}");
        }
        svc.audit_verify().expect("chain verifies");
    }
}
