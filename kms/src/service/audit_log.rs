//! The audit log as the service shows it, and events from outside.

use crate::Result;
use crate::audit::{self, Action, AuditRecord, AuditSummary};

use super::Service;

impl Service {
    /// Records an event that happened outside the service (the daemon's
    /// refused peers, bursts of refused requests, a tampered socket) in the
    /// audit log, authenticated with the master key when unlocked.
    ///
    /// # Errors
    /// `AuditWrite`.
    pub fn record_event(
        &mut self,
        action: Action,
        ok: bool,
        fields: &serde_json::Value,
    ) -> Result<u64> {
        let mac = self.mac().ok();
        self.store
            .write(|db| audit::append(db, action, ok, fields, mac.as_ref()))
    }

    /// Audit records, oldest first, from `since` (sequence number).
    ///
    /// # Errors
    /// Database errors.
    pub fn audit_records(&self, since: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        audit::records(&self.store.db(), since, limit)
    }

    /// Verifies the whole audit chain (and, when unlocked, the newest
    /// checkpoint authenticated with the master key).
    ///
    /// # Errors
    /// `AuditTampered` with the first bad record.
    pub fn audit_verify(&self) -> Result<AuditSummary> {
        let mac = self
            .master
            .as_ref()
            .map(|m| audit::mac_key(m.secret(), self.store.store_id()));
        audit::verify(&self.store.db(), mac.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::test_support::*;

    #[test]
    fn failing_audit_write_stops_the_operation() {
        let (fx, mut svc, k) = fixture_with_key("k");
        {
            let conn = Connection::open(&fx.path).expect("open raw");
            conn.execute_batch(
                "CREATE TRIGGER no_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(FAIL, 'disk full'); END;",
            )
            .expect("trigger");
        }
        assert!(matches!(svc.rotate_key(&k), Err(Error::AuditWrite(_))));
        assert_eq!(
            svc.key(&k).expect("key").primary_version,
            1,
            "rotation rolled back"
        );
        assert!(matches!(
            svc.reserve_encryption(&k, Action::Encrypt, None),
            Err(Error::AuditWrite(_))
        ));
        assert_eq!(svc.key(&k).expect("key").versions[0].uses, 0);
        assert!(matches!(svc.rotate_master(), Err(Error::AuditWrite(_))));
        assert_eq!(svc.status().expect("status").mk_epoch, 1);
    }

    #[test]
    fn audit_detects_edit_delete_reorder_and_truncation() {
        let cases: [(&str, &str); 5] = [
            ("edit", "UPDATE audit SET record = replace(record, '\"ok\"', '\"error\"') WHERE seq = 2"),
            ("delete", "DELETE FROM audit WHERE seq = 3"),
            ("reorder", "UPDATE audit SET seq = seq + 100 WHERE seq IN (2, 3);
                         UPDATE audit SET seq = 3 WHERE seq = 102; UPDATE audit SET seq = 2 WHERE seq = 103"),
            ("truncate", "DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)"),
            ("truncate-and-fix-head", "DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit);
                UPDATE meta SET value = value - 1 WHERE name = 'audit_head_seq';
                UPDATE meta SET value = (SELECT hash FROM audit ORDER BY seq DESC LIMIT 1)
                  WHERE name = 'audit_head_hash'"),
        ];
        for (what, sql) in cases {
            let (fx, mut svc) = fixture();
            for i in 0..3 {
                svc.create_key(&name(&format!("k{i}")), &spec(KeyPurpose::Encrypt))
                    .expect("create");
            }
            let good = svc.audit_verify().expect("clean log verifies");
            assert!(good.records >= 5);
            assert_eq!(good.checkpoint, Some(good.records));
            raw(&fx).execute_batch(sql).expect(what);
            let err = svc.audit_verify().expect_err(what);
            assert!(
                matches!(err, Error::AuditTampered { .. }),
                "{what}: {err:?}"
            );
        }
    }
}
