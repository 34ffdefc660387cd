//! The hash-chained audit log (docs/DESIGN.md, "Audit log").
//!
//! Each record is one JSON object stored as text in the `audit` table:
//! `{"seq", "ts", "action", "status", "fields", "prev"}`, where `prev` is the
//! hash of the record before (64 zeros for the first). Its hash is
//! `SHA-256("keyward/v1/audit\0" || record text)`. The newest sequence number
//! and hash are also kept in `meta`, so deleting the newest records is seen.
//!
//! Whenever the master key is in memory, the head is also authenticated:
//! `meta.audit_mac = HMAC-SHA256(K, seq_be64 || hash)` with `K =
//! HKDF-SHA256(MK, salt = store_id, info = "keyward/v1/audit-mac")`. Someone
//! who can write the file but does not know the master key can then not
//! truncate the log below that checkpoint, or rewrite it, unseen.
//!
//! Records are appended inside the transaction of the change they describe:
//! if the record cannot be written, the change does not happen.

use hmac::{Hmac, KeyInit, Mac};
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secret::Secret32;
use crate::store::Db;
use crate::{Error, Result};

const HASH_DOMAIN: &[u8] = b"keyward/v1/audit\0";
const MAC_INFO: &[u8] = b"keyward/v1/audit-mac";

/// What an audit record says happened: its `action` text, which is part
/// of the hashed record, so [`Action::as_str`] never changes for an
/// existing variant (docs/FORMAT.md vectors hash these strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// A keystore was created.
    StoreInit,
    /// The master key was recovered with a protector.
    Unlock,
    /// A protector failed to unlock.
    UnlockFailed,
    /// The master key was forgotten (daemon).
    Lock,
    /// A protector was enrolled.
    ProtectorEnroll,
    /// A protector was replaced by a new enrollment.
    ProtectorReplace,
    /// A protector was removed.
    ProtectorRemove,
    /// A named key was created.
    KeyCreate,
    /// A named key got a new primary version.
    KeyRotate,
    /// Old versions of a named key were retired.
    KeyRetire,
    /// A public key was exported.
    KeyExport,
    /// The master key was replaced.
    MasterRotate,
    /// A one-shot encryption.
    Encrypt,
    /// A one-shot decryption.
    Decrypt,
    /// A stream encryption began.
    EncryptStream,
    /// A stream encryption ended.
    EncryptStreamEnd,
    /// A stream decryption began.
    DecryptStream,
    /// A stream decryption ended.
    DecryptStreamEnd,
    /// The decryption half of a rewrap.
    Rewrap,
    /// The encryption half of a rewrap.
    RewrapEncrypt,
    /// A data key was generated.
    DatakeyGenerate,
    /// A data key was unwrapped.
    DatakeyUnwrap,
    /// A message was signed with a keyward signing key.
    Sign,
    /// A fresh signed message was accepted (its counter recorded).
    VerifyAccept,
    /// A message was signed with a device protector's key.
    DeviceSign,
    /// A daemon client was added.
    ClientAdd,
    /// A daemon client was revoked.
    ClientRevoke,
    /// Every daemon client was revoked.
    ClientRevokeAll,
    /// The daemon refused a peer on its socket.
    PeerRejected,
    /// The daemon saw a burst of refused requests.
    RequestsRefusedBurst,
    /// The daemon's socket was replaced or changed under it.
    SocketTampered,
}

impl Action {
    /// Every action, in the order above.
    pub const ALL: [Self; 31] = [
        Self::StoreInit,
        Self::Unlock,
        Self::UnlockFailed,
        Self::Lock,
        Self::ProtectorEnroll,
        Self::ProtectorReplace,
        Self::ProtectorRemove,
        Self::KeyCreate,
        Self::KeyRotate,
        Self::KeyRetire,
        Self::KeyExport,
        Self::MasterRotate,
        Self::Encrypt,
        Self::Decrypt,
        Self::EncryptStream,
        Self::EncryptStreamEnd,
        Self::DecryptStream,
        Self::DecryptStreamEnd,
        Self::Rewrap,
        Self::RewrapEncrypt,
        Self::DatakeyGenerate,
        Self::DatakeyUnwrap,
        Self::Sign,
        Self::VerifyAccept,
        Self::DeviceSign,
        Self::ClientAdd,
        Self::ClientRevoke,
        Self::ClientRevokeAll,
        Self::PeerRejected,
        Self::RequestsRefusedBurst,
        Self::SocketTampered,
    ];

    /// The `action` text of the record.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StoreInit => "store.init",
            Self::Unlock => "unlock",
            Self::UnlockFailed => "unlock.failed",
            Self::Lock => "lock",
            Self::ProtectorEnroll => "protector.enroll",
            Self::ProtectorReplace => "protector.replace",
            Self::ProtectorRemove => "protector.remove",
            Self::KeyCreate => "key.create",
            Self::KeyRotate => "key.rotate",
            Self::KeyRetire => "key.retire",
            Self::KeyExport => "key.export",
            Self::MasterRotate => "master.rotate",
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::EncryptStream => "encrypt.stream",
            Self::EncryptStreamEnd => "encrypt.stream.end",
            Self::DecryptStream => "decrypt.stream",
            Self::DecryptStreamEnd => "decrypt.stream.end",
            Self::Rewrap => "rewrap",
            Self::RewrapEncrypt => "rewrap.encrypt",
            Self::DatakeyGenerate => "datakey.generate",
            Self::DatakeyUnwrap => "datakey.unwrap",
            Self::Sign => "sign",
            Self::VerifyAccept => "verify.accept",
            Self::DeviceSign => "device.sign",
            Self::ClientAdd => "client.add",
            Self::ClientRevoke => "client.revoke",
            Self::ClientRevokeAll => "client.revoke_all",
            Self::PeerRejected => "peer.rejected",
            Self::RequestsRefusedBurst => "requests.refused.burst",
            Self::SocketTampered => "socket.tampered",
        }
    }

    /// The action whose text is `text`, if this build knows it (a newer
    /// keyward may have written others).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == text)
    }

    /// Whether the daemon streams records of this action as security
    /// events (`GET /v1/events`): changes of who can unlock or use keys,
    /// and what the daemon refused. Uses of keys are not events.
    pub fn is_security_event(self) -> bool {
        matches!(
            self,
            Self::Unlock
                | Self::UnlockFailed
                | Self::Lock
                | Self::ProtectorEnroll
                | Self::ProtectorReplace
                | Self::ProtectorRemove
                | Self::KeyCreate
                | Self::KeyRotate
                | Self::KeyRetire
                | Self::KeyExport
                | Self::MasterRotate
                | Self::ClientAdd
                | Self::ClientRevoke
                | Self::ClientRevokeAll
                | Self::PeerRejected
                | Self::RequestsRefusedBurst
                | Self::SocketTampered
        )
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One audit record as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Sequence number, from 1, no gaps.
    pub seq: u64,
    /// Unix time, seconds.
    pub ts: i64,
    /// What happened (`key.create`, `encrypt`, `unlock.failed`, …).
    pub action: String,
    /// `ok` or `error`.
    pub status: String,
    /// Details (key, version, class, actor, size, …); never secrets.
    pub fields: serde_json::Value,
    /// Hex SHA-256 of the previous record (zeros for the first).
    pub prev: String,
    /// Hex SHA-256 of this record.
    #[serde(skip_deserializing)]
    pub hash: String,
}

/// The stored part of a record (everything but its own hash), in the field
/// order that is hashed.
#[derive(Serialize)]
struct Stored<'a> {
    seq: u64,
    ts: i64,
    action: &'a str,
    status: &'a str,
    fields: &'a serde_json::Value,
    prev: &'a str,
}

/// Result of verifying the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditSummary {
    /// Records checked.
    pub records: u64,
    /// Hash of the last record.
    pub head: String,
    /// Sequence number of the newest checkpoint authenticated with the
    /// master key, if the store was unlocked for the check and one exists.
    pub checkpoint: Option<u64>,
}

/// The key that authenticates checkpoints.
pub(crate) fn mac_key(master: &Secret32, store_id: &[u8; 16]) -> Secret32 {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(store_id), master.expose());
    let mut okm = [0u8; 32];
    hk.expand(MAC_INFO, &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    Secret32::from_bytes(&mut okm)
}

fn record_text(
    seq: u64,
    ts: i64,
    action: &str,
    ok: bool,
    fields: &serde_json::Value,
    prev: &str,
) -> Result<String> {
    serde_json::to_string(&Stored {
        seq,
        ts,
        action,
        status: if ok { "ok" } else { "error" },
        fields,
        prev,
    })
    .map_err(|_| Error::Malformed {
        what: "audit record does not serialise",
    })
}

fn record_hash(text: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(text.as_bytes());
    h.finalize().into()
}

fn checkpoint_mac(key: &Secret32, seq: u64, hash: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose()).expect("HMAC takes any key size");
    mac.update(&seq.to_be_bytes());
    mac.update(hash);
    mac.finalize().into_bytes().into()
}

/// Appends one record inside the caller's transaction and returns its
/// sequence number. With `mac` (the master key is in memory) the new head is
/// also authenticated.
///
/// # Errors
/// `AuditWrite` wrapping whatever failed: the caller's transaction must then
/// be abandoned, and the operation with it.
pub(crate) fn append(
    db: &Db<'_>,
    action: Action,
    ok: bool,
    fields: &serde_json::Value,
    mac: Option<&Secret32>,
) -> Result<u64> {
    append_many(db, [(action, ok, fields)], mac)
}

/// Appends several records in order inside the caller's transaction, as
/// the same number of [`append`] calls would (same records, same chain), but
/// reading the head once and recording the new head (and its checkpoint)
/// once. Returns the last sequence number.
///
/// # Errors
/// As [`append`].
pub(crate) fn append_many<'r>(
    db: &Db<'_>,
    records: impl IntoIterator<Item = (Action, bool, &'r serde_json::Value)>,
    mac: Option<&Secret32>,
) -> Result<u64> {
    append_many_inner(db, records, mac).map_err(|e| Error::AuditWrite(Box::new(e)))
}

fn append_many_inner<'r>(
    db: &Db<'_>,
    records: impl IntoIterator<Item = (Action, bool, &'r serde_json::Value)>,
    mac: Option<&Secret32>,
) -> Result<u64> {
    let (mut seq, mut hash) = head(db)?;
    let start = seq;
    let now = crate::store::now();
    let mut insert = db
        .conn()
        .prepare_cached("INSERT INTO audit (seq, record, hash) VALUES (?1, ?2, ?3)")?;
    for (action, ok, fields) in records {
        seq += 1;
        let text = record_text(seq, now, action.as_str(), ok, fields, &hex::encode(hash))?;
        hash = record_hash(&text);
        insert.execute(rusqlite::params![seq, text, &hash[..]])?;
    }
    drop(insert);
    if seq > start {
        db.set_meta("audit_head_seq", &seq)?;
        db.set_meta("audit_head_hash", &&hash[..])?;
        if let Some(key) = mac {
            db.set_meta("audit_mac_seq", &seq)?;
            db.set_meta("audit_mac", &&checkpoint_mac(key, seq, &hash)[..])?;
        }
    }
    Ok(seq)
}

/// Re-authenticates the current head under a new key (master-key rotation).
///
/// # Errors
/// `Database`.
pub(crate) fn remac(db: &Db<'_>, key: &Secret32) -> Result<()> {
    let (seq, hash) = head(db)?;
    if seq > 0 {
        db.set_meta("audit_mac_seq", &seq)?;
        db.set_meta("audit_mac", &&checkpoint_mac(key, seq, &hash)[..])?;
    }
    Ok(())
}

/// The newest (seq, hash) as recorded in `meta`; (0, zeros) when empty.
fn head(db: &Db<'_>) -> Result<(u64, [u8; 32])> {
    let seq: Option<u64> = db
        .conn()
        .prepare_cached("SELECT value FROM meta WHERE name = 'audit_head_seq'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    let Some(seq) = seq else {
        return Ok((0, [0u8; 32]));
    };
    let hash = db
        .meta_blob("audit_head_hash")?
        .and_then(|h| <[u8; 32]>::try_from(h).ok())
        .ok_or_else(|| Error::AuditTampered {
            seq,
            detail: "the recorded head hash is missing".into(),
        })?;
    Ok((seq, hash))
}

/// Records from `since` (inclusive), at most `limit`.
///
/// # Errors
/// `Database`, `AuditTampered` for a record that is not valid JSON.
pub(crate) fn records(db: &Db<'_>, since: u64, limit: usize) -> Result<Vec<AuditRecord>> {
    let mut stmt = db
        .conn()
        .prepare("SELECT seq, record, hash FROM audit WHERE seq >= ?1 ORDER BY seq LIMIT ?2")?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(rusqlite::params![since, limit], |r| {
        Ok((
            r.get::<_, u64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Vec<u8>>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, text, hash) = row?;
        let mut rec: AuditRecord =
            serde_json::from_str(&text).map_err(|_| Error::AuditTampered {
                seq,
                detail: "record is not valid JSON".into(),
            })?;
        rec.hash = hex::encode(hash);
        out.push(rec);
    }
    Ok(out)
}

/// Number of records.
///
/// # Errors
/// `Database`.
pub(crate) fn count(db: &Db<'_>) -> Result<u64> {
    Ok(db
        .conn()
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))?)
}

/// Verifies the whole chain; with `mac` also the newest checkpoint.
///
/// # Errors
/// `AuditTampered` naming the first record found wrong.
pub(crate) fn verify(db: &Db<'_>, mac: Option<&Secret32>) -> Result<AuditSummary> {
    let tampered = |seq: u64, detail: &str| Error::AuditTampered {
        seq,
        detail: detail.to_owned(),
    };
    let mut stmt = db
        .conn()
        .prepare("SELECT seq, record, hash FROM audit ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    let mut expected_seq = 1u64;
    let mut prev = [0u8; 32];
    let mut mac_target: Option<(u64, Vec<u8>)> = None;
    let mac_seq: Option<u64> = db
        .conn()
        .query_row(
            "SELECT value FROM meta WHERE name = 'audit_mac_seq'",
            [],
            |r| r.get(0),
        )
        .ok();
    while let Some(row) = rows.next()? {
        let seq: u64 = row.get(0)?;
        let text: String = row.get(1)?;
        let stored_hash: Vec<u8> = row.get(2)?;
        if seq != expected_seq {
            return Err(tampered(
                expected_seq,
                &format!("record {expected_seq} is missing (next is {seq})"),
            ));
        }
        let rec: serde_json::Value =
            serde_json::from_str(&text).map_err(|_| tampered(seq, "record is not valid JSON"))?;
        if rec.get("seq").and_then(serde_json::Value::as_u64) != Some(seq) {
            return Err(tampered(seq, "record's own sequence number differs"));
        }
        if rec.get("prev").and_then(serde_json::Value::as_str) != Some(&hex::encode(prev)) {
            return Err(tampered(seq, "does not chain to the previous record"));
        }
        let hash = record_hash(&text);
        if !bool::from(hash.ct_eq(&stored_hash[..])) {
            return Err(tampered(seq, "record was modified (hash mismatch)"));
        }
        if Some(seq) == mac_seq {
            mac_target = Some((seq, hash.to_vec()));
        }
        prev = hash;
        expected_seq += 1;
    }
    let records = expected_seq - 1;
    let (head_seq, head_hash) = head(db)?;
    if head_seq != records || head_hash != prev {
        return Err(tampered(
            records + 1,
            &format!("log ends at record {records} but {head_seq} were written (truncated?)"),
        ));
    }
    let mut checkpoint = None;
    if let Some(key) = mac {
        if let Some(mac_seq) = mac_seq {
            let (seq, hash) =
                mac_target.ok_or_else(|| tampered(mac_seq, "checkpointed record is missing"))?;
            let stored = db
                .meta_blob("audit_mac")?
                .ok_or_else(|| tampered(seq, "checkpoint MAC is missing"))?;
            let expect = checkpoint_mac(key, seq, &hash);
            if !bool::from(expect.ct_eq(&stored[..])) {
                return Err(tampered(seq, "checkpoint does not authenticate"));
            }
            checkpoint = Some(seq);
        }
    }
    Ok(AuditSummary {
        records,
        head: hex::encode(prev),
        checkpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors of docs/FORMAT.md ("Audit log"), computed independently with
    // Python's hashlib and hmac.
    #[test]
    fn record_hash_and_checkpoint_vectors() {
        let text = record_text(
            1,
            1_700_000_000,
            Action::StoreInit.as_str(),
            true,
            &serde_json::json!({ "store_id": "000102030405060708090a0b0c0d0e0f" }),
            &"0".repeat(64),
        )
        .expect("serialises");
        assert_eq!(
            text,
            concat!(
                r#"{"seq":1,"ts":1700000000,"action":"store.init","status":"ok","#,
                r#""fields":{"store_id":"000102030405060708090a0b0c0d0e0f"},"#,
                r#""prev":"0000000000000000000000000000000000000000000000000000000000000000"}"#
            )
        );
        let hash = record_hash(&text);
        assert_eq!(
            hex::encode(hash),
            "385a3df87db7efe72727d54351048a101d5f9a88cb2967fe25550cefef39e7ad"
        );
        let store_id: [u8; 16] = core::array::from_fn(|i| i as u8);
        let key = mac_key(
            &Secret32::try_from_slice(&[0x42; 32]).expect("32"),
            &store_id,
        );
        assert_eq!(
            hex::encode(key.expose()),
            "f6ddd117041dbf5c1b63a7ddc872161f618489a9bc1fed1d736002ebdd41caf4"
        );
        assert_eq!(
            hex::encode(checkpoint_mac(&key, 1, &hash)),
            "6979893032f14076e332beb4f073f6a03430690398e5dcb64f49155c9c86f223"
        );
    }

    #[test]
    fn action_texts_are_unique_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for action in Action::ALL {
            assert!(seen.insert(action.as_str()), "{action} twice");
            assert_eq!(Action::parse(action.as_str()), Some(action));
        }
        assert_eq!(Action::parse("no.such.action"), None);
        for action in [
            "unlock",
            "protector.enroll",
            "client.revoke_all",
            "peer.rejected",
        ] {
            assert!(Action::parse(action).is_some_and(Action::is_security_event));
        }
        for action in ["encrypt", "decrypt", "sign", "verify.accept", "store.init"] {
            assert!(!Action::parse(action).is_some_and(Action::is_security_event));
        }
    }
}
