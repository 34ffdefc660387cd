//! The SQLite keystore.

/// An open keystore.
#[derive(Debug)]
pub struct Store;
