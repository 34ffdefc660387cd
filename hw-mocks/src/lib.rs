//! hw-mocks
pub mod softhsm;
