//! Protectors that need no hardware: a recovery key and a passphrase. Both
//! derive a P-256 key from the user's secret and use the shared ECIES wrap,
//! so the master key can be re-wrapped to them without their secret.

pub mod passphrase;
pub mod recovery;
