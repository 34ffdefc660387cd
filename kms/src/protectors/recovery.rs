//! recovery protector.

/// The recovery backend.
#[derive(Debug, Default)]
pub struct Backend;

impl Backend {
    /// With default parameters.
    pub fn new() -> Self {
        Self
    }
}

impl crate::Backend for Backend {
    fn kind(&self) -> crate::BackendKind {
        todo!()
    }
    fn capabilities(&self) -> crate::Capabilities {
        todo!()
    }
    fn devices(&self) -> crate::Result<Vec<crate::DeviceInfo>> {
        todo!()
    }
    fn enroll(
        &self,
        _: &crate::EnrollRequest,
        _: &dyn crate::Callbacks,
    ) -> crate::Result<crate::Enrollment> {
        todo!()
    }
    fn wrap(
        &self,
        _: &crate::Enrollment,
        _: &crate::Secret32,
        _: &[u8],
    ) -> crate::Result<crate::Wrapped> {
        todo!()
    }
    fn unwrap(
        &self,
        _: &crate::Enrollment,
        _: &crate::Wrapped,
        _: &[u8],
        _: &dyn crate::Callbacks,
    ) -> crate::Result<crate::Secret32> {
        todo!()
    }
    fn sign(
        &self,
        _: &crate::Enrollment,
        _: &[u8],
        _: &dyn crate::Callbacks,
    ) -> crate::Result<crate::Signature> {
        todo!()
    }
    fn health(&self, _: &crate::Enrollment) -> crate::Result<crate::Health> {
        todo!()
    }
}
