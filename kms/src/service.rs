//! service
/// Service
#[derive(Debug)]
pub struct Service;
