//! Fixtures: here the backends that need no external software (the mock
//! token, the recovery key and the passphrase); in [`tpm`] the TPM backend
//! on a swtpm per test, in [`pkcs11`] the PKCS#11 backend on a SoftHSM2
//! token per test.

pub mod pkcs11;
pub mod tpm;

use std::sync::Arc;

use keyward_hw_mocks::mock::{DEFAULT_PIN, DEFAULT_RETRIES, MockBackend, MockDevice};
use keyward_kms::backend::options::{Argon2Options, MockOptions};
use keyward_kms::protectors::{passphrase, recovery};
use keyward_kms::secret::ExposeSecret;
use keyward_kms::{Backend, EnrollOptions, EnrollRequest, SecretKind};

use crate::{Answers, Fixture, MidOperationFault, TestCallbacks, WrongSecret};

/// The in-process mock token, with every hook.
#[derive(Debug)]
pub struct MockFixture {
    mock: MockBackend,
    answers: Answers,
}

/// Serial of the device the mock fixture enrolls.
pub const MOCK_SERIAL: &str = "MOCK-0001";
/// Serial of the device [`Fixture::swap_device`] plugs in instead.
pub const MOCK_OTHER_SERIAL: &str = "MOCK-0002";

impl MockFixture {
    /// One mock token with the default PIN and retries.
    pub fn new() -> Self {
        Self {
            mock: MockBackend::with_device(MockDevice::new(MOCK_SERIAL)),
            answers: Answers::pins(DEFAULT_PIN, "999999"),
        }
    }

    /// The fault-injection handle.
    pub fn mock(&self) -> &MockBackend {
        &self.mock
    }
}

impl Default for MockFixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture for MockFixture {
    fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(self.mock.clone())
    }

    fn enroll_request(&self) -> EnrollRequest {
        EnrollRequest {
            label: "mock token".into(),
            device: Some(MOCK_SERIAL.into()),
            options: EnrollOptions::Mock(MockOptions {
                slot: Some("9d".into()),
                touch: None,
            }),
        }
    }

    fn answers(&self) -> &Answers {
        &self.answers
    }

    fn wrong_secret(&self) -> WrongSecret {
        WrongSecret::Pin {
            retries: DEFAULT_RETRIES,
        }
    }

    fn has_device(&self) -> bool {
        true
    }

    fn swap_device(&self) -> bool {
        self.mock.swap_device(MOCK_OTHER_SERIAL);
        true
    }

    fn unplug(&self) -> bool {
        self.mock.unplug(MOCK_SERIAL)
    }

    fn can_replug(&self) -> bool {
        true
    }

    fn replug(&self) -> bool {
        self.mock.unplug(MOCK_OTHER_SERIAL);
        self.mock.plug(MOCK_SERIAL)
    }

    fn pin_requests(&self) -> Option<u64> {
        Some(self.mock.pin_requests())
    }

    fn fail_next_after_pin(&self) -> Option<MidOperationFault> {
        self.mock.fail_next_after_pin();
        Some(MidOperationFault::Transient)
    }
}

/// The recovery-key protector. The right callbacks answer with the key
/// shown at enrollment.
#[derive(Debug)]
pub struct RecoveryFixture {
    answers: Answers,
}

impl RecoveryFixture {
    /// A fresh fixture; the wrong key is a valid, random recovery key.
    ///
    /// # Panics
    /// If the OS RNG fails.
    pub fn new() -> Self {
        let other = recovery::RecoveryKey::generate().expect("OS RNG");
        Self {
            answers: Answers::new(
                TestCallbacks::new().answer_with_shown_secret(),
                TestCallbacks::new()
                    .answer(SecretKind::RecoveryKey, other.to_text().expose_secret()),
            ),
        }
    }
}

impl Default for RecoveryFixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture for RecoveryFixture {
    fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(recovery::Backend::new())
    }

    fn enroll_request(&self) -> EnrollRequest {
        EnrollRequest {
            label: "paper backup".into(),
            ..EnrollRequest::default()
        }
    }

    fn answers(&self) -> &Answers {
        &self.answers
    }

    fn wrong_secret(&self) -> WrongSecret {
        WrongSecret::RecoveryKey
    }
}

/// The passphrase a [`PassphraseFixture`] enrolls.
pub const PASSPHRASE: &str = "correct horse battery staple";

/// The passphrase protector with the smallest Argon2 cost allowed
/// (8 MiB, one pass) so that the suite stays fast.
#[derive(Debug)]
pub struct PassphraseFixture {
    answers: Answers,
}

impl PassphraseFixture {
    /// A fresh fixture.
    pub fn new() -> Self {
        Self {
            answers: Answers::new(
                TestCallbacks::new()
                    .answer(SecretKind::NewPassphrase, PASSPHRASE)
                    .answer(SecretKind::Passphrase, PASSPHRASE),
                TestCallbacks::new()
                    .answer(SecretKind::Passphrase, "correct horse battery stapler"),
            ),
        }
    }
}

impl Default for PassphraseFixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture for PassphraseFixture {
    fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(passphrase::Backend::new())
    }

    fn enroll_request(&self) -> EnrollRequest {
        EnrollRequest {
            label: "laptop passphrase".into(),
            device: None,
            options: EnrollOptions::Passphrase(Argon2Options {
                m_kib: Some(passphrase::MIN_M_KIB),
                t: Some(1),
                p: Some(1),
            }),
        }
    }

    fn answers(&self) -> &Answers {
        &self.answers
    }

    fn wrong_secret(&self) -> WrongSecret {
        WrongSecret::Passphrase
    }
}
