//! keyward-tests: the conformance suite every backend passes, written once
//! and instantiated per backend.
//!
//! A backend joins the suite by implementing [`Fixture`] (how to build the
//! backend, how to enroll, which secret is right, which hooks it supports)
//! and adding one file under `tests/tests/`:
//!
//! ```ignore
//! //! Conformance suite against the mock token.
//! keyward_tests::conformance_suite!(keyward_tests::fixtures::MockFixture::new());
//! ```
//!
//! The macro expands to one `#[test]` per case, so every case is a separate
//! nextest test and a failure names the case and the backend. The fixture
//! expression is evaluated afresh in every test. Cases come in two groups:
//!
//! - `backend::*` ([`cases`]): the [`keyward_kms::Backend`] trait alone —
//!   capabilities, enrollment, wrap/unwrap, tampering, wrong secrets, wrong
//!   or absent devices, signatures, public-key-only wraps.
//! - `service::*` ([`service_cases`]): the same backend as a protector of a
//!   real keystore through [`keyward_kms::Service`] — init, keys, encrypt,
//!   rotation of data keys and of the master key, lock and unlock.
//!
//! Hooks a fixture does not support (unplugging a recovery key, say) make
//! the corresponding case check only what applies and say so on stderr.

pub mod callbacks;
pub mod cases;
pub mod fixtures;
pub mod service_cases;
pub mod yubikey_fixture;

use std::sync::Arc;

use keyward_kms::{Backend, EnrollRequest};

pub use callbacks::TestCallbacks;

/// What a wrong secret is for this backend, and so which error it gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrongSecret {
    /// A passphrase: [`keyward_kms::Error::WrongPassphrase`], no retry counter.
    Passphrase,
    /// A recovery key: [`keyward_kms::Error::WrongRecoveryKey`], no retry
    /// counter.
    RecoveryKey,
    /// A device PIN with `retries` tries: [`keyward_kms::Error::WrongPin`]
    /// with the tries left, then [`keyward_kms::Error::PinBlocked`].
    Pin {
        /// Tries the device allows from its initial state.
        retries: u32,
    },
}

/// One backend under test, in a fresh state.
///
/// A fixture is built once per test; its callbacks keep their state (a
/// recovery key shown at enrollment is answered at unwrap) for that test.
pub trait Fixture {
    /// The backend, as the service would hold it.
    fn backend(&self) -> Arc<dyn Backend>;

    /// A request that enrolls successfully.
    fn enroll_request(&self) -> EnrollRequest;

    /// Callbacks that answer every prompt with the right secret.
    fn callbacks(&self) -> Arc<TestCallbacks>;

    /// Callbacks that answer with a well-formed but wrong secret.
    fn wrong_callbacks(&self) -> Arc<TestCallbacks>;

    /// What a wrong secret is for this backend.
    fn wrong_secret(&self) -> WrongSecret;

    /// Whether enrollments name a device (`device_id` is `Some`).
    fn has_device(&self) -> bool {
        false
    }

    /// Replaces the enrolled device with another one (another serial).
    /// Returns `false` if the fixture cannot.
    fn swap_device(&self) -> bool {
        false
    }

    /// Unplugs the enrolled device. Returns `false` if the fixture cannot.
    fn unplug(&self) -> bool {
        false
    }

    /// Plugs the enrolled device back in (after [`Fixture::unplug`] or
    /// [`Fixture::swap_device`]). Returns `false` if the fixture cannot.
    fn replug(&self) -> bool {
        false
    }

    /// PINs sent to the device so far, if the fixture can count them.
    fn pin_requests(&self) -> Option<u64> {
        None
    }

    /// Makes the next operation fail with
    /// [`keyward_kms::Error::DeviceRemoved`] after the PIN was accepted.
    /// Returns `false` if the fixture cannot.
    fn fail_next_after_pin(&self) -> bool {
        false
    }
}

/// Expands to the whole conformance suite for one fixture: a module
/// `backend` with one `#[test]` per [`cases`] function and a module
/// `service` with one per [`service_cases`] function.
///
/// `$fixture` is an expression evaluated in each test; it may name items
/// of the calling file.
#[macro_export]
macro_rules! conformance_suite {
    ($fixture:expr) => {
        /// The Backend-level cases.
        mod backend {
            #[allow(unused_imports)]
            use super::*;
            $crate::__conformance_tests!(cases; $fixture;
                capabilities_are_consistent,
                enroll_returns_compressed_p256_key,
                enrollment_survives_json,
                wrap_unwrap_round_trip,
                wrap_is_randomised,
                wrong_aad_rejected,
                every_byte_flip_rejected,
                truncated_or_extended_blob_rejected,
                blob_for_another_enrollment_rejected,
                enrollment_of_another_kind_refused,
                wrong_secret_gives_typed_error,
                retry_limit,
                wrong_device_detected_before_pin,
                absent_device_is_device_not_found,
                failure_mid_operation_then_recovers,
                sign_verifies_with_enrolled_public_key,
                public_key_only_wrap_unwraps,
                health_reports_enrolled_device,
            );
        }

        /// The Service-level cases.
        mod service {
            #[allow(unused_imports)]
            use super::*;
            $crate::__conformance_tests!(service_cases; $fixture;
                lifecycle,
                wrong_secret_keeps_store_locked,
                master_rotation_needs_no_secret,
            );
        }
    };
}

/// Implementation detail of [`conformance_suite!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($group:ident; $fixture:expr; $($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                let fixture = $fixture;
                $crate::$group::$case(&fixture);
            }
        )+
    };
}
