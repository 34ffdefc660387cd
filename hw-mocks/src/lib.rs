//! hw-mocks

/// A swtpm per test (TPM 2.0 simulator) with DA-lockout and PCR helpers.
pub mod swtpm;
