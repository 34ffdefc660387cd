//! The hash-chained audit log.

use serde::{Deserialize, Serialize};

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
    pub hash: String,
}

/// Result of verifying the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditSummary {
    /// Records checked.
    pub records: u64,
    /// Hash of the last record.
    pub head: String,
}
