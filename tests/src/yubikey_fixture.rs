//! The YubiKey backend against the PIV card simulator on a private pcscd
//! (keyward-hw-mocks): a card set up with `keyward yubikey setup`'s
//! library call, and a second card with another serial for
//! [`Fixture::swap_device`].

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use keyward_backends::yubikey;
use keyward_hw_mocks::piv::{CardConfig, PivFixture, VPCD_PORT, VirtualCard};
use keyward_kms::{Backend, EnrollOptions, EnrollRequest, SecretString};

use crate::{Answers, Fixture, TestCallbacks, WrongSecret};

/// Serial of the enrolled simulated card (reader `Virtual PCD 00 00`).
pub const YK_SERIAL: u32 = 12_345_678;
/// Serial of the other card (reader `Virtual PCD 00 01`).
pub const YK_OTHER_SERIAL: u32 = 87_654_321;
/// The PIN [`YubikeyFixture::new`] sets.
pub const YK_PIN: &str = "24681357";
/// The PUK [`YubikeyFixture::new`] sets.
pub const YK_PUK: &str = "86427531";
/// A well-formed wrong PIN.
pub const YK_WRONG_PIN: &str = "11223344";
/// PIN tries of a fresh simulated card.
pub const YK_PIN_RETRIES: u32 = 3;

/// How long pcscd needs to notice a pulled card (it polls every ~400 ms).
const SETTLE: Duration = Duration::from_millis(1200);

/// One simulated YubiKey behind pcscd, set up (PIN, PUK, PIN-protected
/// management key), and the backend that keeps its handle.
#[derive(Debug)]
pub struct YubikeyFixture {
    piv: PivFixture,
    other: Mutex<Option<VirtualCard>>,
    backend: Arc<yubikey::Backend>,
    answers: Answers,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl YubikeyFixture {
    /// Starts pcscd and a card with serial [`YK_SERIAL`], and sets it up.
    ///
    /// # Panics
    /// If pcscd or vpcd is not installed, or setup fails.
    pub fn new() -> Self {
        let fixture = Self::unconfigured();
        fixture
            .backend
            .setup(
                Some(&YK_SERIAL.to_string()),
                Some(&SecretString::from(YK_PIN)),
                Some(&SecretString::from(YK_PUK)),
                &TestCallbacks::new(),
            )
            .expect("setup of a factory-fresh simulated card");
        fixture
    }

    /// Starts pcscd and a factory-fresh card (default PIN, PUK and
    /// management key), not set up.
    ///
    /// # Panics
    /// If pcscd or vpcd is not installed.
    pub fn unconfigured() -> Self {
        let piv = PivFixture::start(CardConfig {
            serial: YK_SERIAL,
            ..CardConfig::default()
        })
        .expect("pcscd + vpcd + PIV simulator (apt-get install pcscd vsmartcard-vpcd)");
        Self {
            piv,
            other: Mutex::new(None),
            backend: Arc::new(yubikey::Backend::new()),
            answers: Answers::pins(YK_PIN, YK_WRONG_PIN),
        }
    }

    /// The simulated card and pcscd (fault injection).
    pub fn piv(&self) -> &PivFixture {
        &self.piv
    }

    /// The backend with its concrete type.
    pub fn yubikey(&self) -> Arc<yubikey::Backend> {
        self.backend.clone()
    }

    /// Inserts a second card with serial [`YK_OTHER_SERIAL`] in
    /// `Virtual PCD 00 01` and waits until it is usable.
    ///
    /// # Panics
    /// If it does not become usable in 10 s.
    pub fn insert_other(&self) {
        let mut other = lock(&self.other);
        if other.is_none() {
            let card = VirtualCard::start(
                VPCD_PORT + 1,
                CardConfig {
                    serial: YK_OTHER_SERIAL,
                    ..CardConfig::default()
                },
            );
            self.piv
                .pcscd
                .wait_card(&card.reader_name(), Duration::from_secs(10))
                .expect("second card usable");
            *other = Some(card);
        }
    }

    /// Pulls the enrolled card and waits until pcscd noticed.
    pub fn pull(&self) {
        self.piv.card.pull();
        std::thread::sleep(SETTLE);
    }

    /// Re-inserts the enrolled card and waits until it is usable.
    ///
    /// # Panics
    /// If it does not become usable in 10 s.
    pub fn insert(&self) {
        self.piv.card.insert();
        self.piv
            .pcscd
            .wait_card(&self.piv.card.reader_name(), Duration::from_secs(10))
            .expect("card usable again");
    }
}

impl Default for YubikeyFixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture for YubikeyFixture {
    fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    fn enroll_request(&self) -> EnrollRequest {
        EnrollRequest {
            label: "simulated YubiKey".into(),
            device: Some(YK_SERIAL.to_string()),
            options: EnrollOptions::None,
        }
    }

    fn answers(&self) -> &Answers {
        &self.answers
    }

    fn wrong_secret(&self) -> WrongSecret {
        WrongSecret::Pin {
            retries: YK_PIN_RETRIES,
        }
    }

    fn has_device(&self) -> bool {
        true
    }

    fn swap_device(&self) -> bool {
        self.piv.card.pull();
        self.insert_other();
        std::thread::sleep(SETTLE);
        true
    }

    fn unplug(&self) -> bool {
        self.pull();
        true
    }

    fn replug(&self) -> bool {
        if let Some(other) = lock(&self.other).take() {
            drop(other);
        }
        self.insert();
        true
    }
}
