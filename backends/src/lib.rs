//! backends

#[cfg(feature = "tpm")]
pub mod tpm;
