//! protectors
