//! hw-mocks
