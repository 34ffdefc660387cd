//! keyward-hw-mocks: simulated hardware for keyward's tests. Never
//! published, never linked into the `keyward` binary.
//!
//! - [`mock`]: an in-process simulated hardware token implementing
//!   [`keyward_kms::Backend`] (kind `mock`), with fault injection: unplug,
//!   wrong device, wrong PIN and blocking, failure after the PIN, slow
//!   operations, touch timeout. Used for fault-injection tests and as the
//!   fastest instance of the conformance suite (keyward-tests).
//!
//! - [`softhsm`]: isolated SoftHSM2 tokens for the PKCS#11 backend's tests.
//! - [`swtpm`]: one swtpm (TPM 2.0 simulator) per test, with DA-lockout and
//!   PCR helpers.
//! - [`piv`]: a software YubiKey 5 (PIV applet) on the real pcscd + vpcd
//!   stack, with a private pcscd fixture and fault injection.
//!
//! It is not a substitute for the real software devices (SoftHSM2, swtpm, a
//! PIV simulator): [`mock`] lists what it does not enforce.
//!
//! ```
//! use std::sync::Arc;
//! use keyward_hw_mocks::mock::{MockBackend, MockDevice};
//! use keyward_kms::Backend;
//!
//! let mock = MockBackend::with_device(MockDevice::new("MOCK-0001"));
//! let shared: Arc<dyn Backend> = Arc::new(mock.clone());
//! assert_eq!(shared.devices().expect("mock devices").len(), 1);
//! mock.unplug("MOCK-0001");
//! assert!(shared.devices().expect("mock devices").is_empty());
//! ```
#![forbid(unsafe_code)]

pub mod mock;
pub mod piv;
pub mod softhsm;
pub mod swtpm;
