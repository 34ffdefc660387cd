//! The skeleton every backend with a P-256 key on a device shares (the
//! YubiKey's PIV slot, the TPM's ECDH key, a PKCS#11 token's EC key, the
//! mock): wrapping is software ECIES to the enrolled public key, and
//! unwrapping is written once here, so that its order holds for all of them:
//!
//! 1. the enrollment is of the backend's kind, and its descriptor parses
//!    ([`EcdhDevice::params`]);
//! 2. the wrapped blob is well formed (no device is touched, no PIN asked
//!    for, for a blob that cannot be right);
//! 3. the device is found and checked to be the enrolled one, *then* the
//!    PIN is asked for and sent ([`EcdhDevice::open_session`]);
//! 4. the device computes the ECDH secret ([`EcdhDevice::ecdh`]) and the
//!    blob is opened in software.
//!
//! A backend implements [`EcdhDevice`] and calls [`wrap`] and [`unwrap`]
//! from its [`Backend`](super::Backend) methods.

use p256::PublicKey;

use crate::Result;
use crate::backend::{BackendKind, Callbacks, Enrollment, Wrapped};
use crate::crypto::ecies;
use crate::secret::Secret32;

/// A device that holds an enrolled P-256 key and does ECDH with it.
pub trait EcdhDevice {
    /// The parsed, checked descriptor (`Enrollment::params`).
    type Params;
    /// An authorized session with the enrolled key: the device found and
    /// checked, the PIN verified. It may borrow the enrollment, descriptor
    /// and callbacks (to log in again if the device's session went stale).
    type Session<'a>
    where
        Self: 'a;

    /// The backend kind this device belongs to.
    fn kind(&self) -> BackendKind;

    /// Parses and checks the descriptor. Touches no device.
    ///
    /// # Errors
    /// [`crate::Error::Malformed`], [`crate::Error::UnsupportedFormat`].
    fn params(&self, enrollment: &Enrollment) -> Result<Self::Params>;

    /// Finds the enrolled device, checks that it is the enrolled one (its
    /// serial, its public key) before any PIN is asked for, then asks for
    /// the PIN through `ui` and verifies it.
    ///
    /// # Errors
    /// [`crate::Error::DeviceNotFound`], [`crate::Error::WrongDevice`],
    /// [`crate::Error::WrongPin`] and the other device states.
    fn open_session<'a>(
        &'a self,
        enrollment: &'a Enrollment,
        params: &'a Self::Params,
        ui: &'a dyn Callbacks,
    ) -> Result<Self::Session<'a>>;

    /// The x-coordinate of the enrolled key times `peer`, computed on the
    /// device.
    ///
    /// # Errors
    /// As the device fails ([`crate::Error::Device`], removal, touch).
    fn ecdh(
        &self,
        session: &mut Self::Session<'_>,
        params: &Self::Params,
        peer: &PublicKey,
    ) -> Result<Secret32>;
}

/// [`Backend::wrap`](super::Backend::wrap) of an ECDH device: ECIES to the
/// enrolled public key. Needs only that key, never the device.
///
/// # Errors
/// [`crate::Error::InvalidArgument`] for an enrollment of another kind; an
/// invalid stored public key.
pub fn wrap<D: EcdhDevice + ?Sized>(
    device: &D,
    enrollment: &Enrollment,
    secret: &Secret32,
    aad: &[u8],
) -> Result<Wrapped> {
    enrollment.check_kind(device.kind())?;
    ecies::seal(&enrollment.public_key, secret, aad).map(Wrapped)
}

/// [`Backend::unwrap`](super::Backend::unwrap) of an ECDH device, in the
/// order the module documentation gives: descriptor, blob, device, PIN,
/// device ECDH, then the ECIES open.
///
/// # Errors
/// Those of each step; [`crate::Error::UnwrapFailed`] if the blob does not
/// open.
pub fn unwrap<D: EcdhDevice + ?Sized>(
    device: &D,
    enrollment: &Enrollment,
    wrapped: &Wrapped,
    aad: &[u8],
    ui: &dyn Callbacks,
) -> Result<Secret32> {
    enrollment.check_kind(device.kind())?;
    let params = device.params(enrollment)?;
    // A malformed blob is refused before the device is touched.
    ecies::ephemeral_key(&wrapped.0)?;
    let mut session = device.open_session(enrollment, &params, ui)?;
    ecies::open(&enrollment.public_key, &wrapped.0, aad, |peer| {
        device.ecdh(&mut session, &params, peer)
    })
}
