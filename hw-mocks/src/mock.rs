//! An in-process simulated hardware token (backend kind `mock`) with fault
//! injection.
//!
//! A [`MockBackend`] holds simulated devices ([`MockDevice`]): a serial, a
//! PIN with a retry counter, a blocked flag, and one P-256 key per enrolled
//! slot with an optional touch requirement. It behaves like a PIV token
//! used through ECDH: wrapping needs only the public key, unwrapping and
//! signing need the device, its PIN and possibly a touch.
//!
//! The backend is a cheap handle (`Clone`) over shared state, so a test
//! keeps one handle for fault injection while the service holds another as
//! `Arc<dyn Backend>`:
//!
//! ```
//! use std::sync::Arc;
//! use keyward_hw_mocks::mock::{MockBackend, MockDevice};
//! use keyward_kms::service::Backends;
//!
//! let mock = MockBackend::with_device(MockDevice::new("MOCK-0001"));
//! let mut backends = Backends::software();
//! backends.add(Arc::new(mock.clone()));
//! // ... later, in the test:
//! mock.unplug("MOCK-0001");
//! mock.fail_next_after_pin();
//! ```
//!
//! # Unwrap and sign order
//!
//! 1. find the enrolled serial among the present devices
//!    ([`Error::DeviceNotFound`] if none is present, [`Error::WrongDevice`]
//!    if only others are);
//! 2. check the key in the enrolled slot is the enrolled public key
//!    ([`Error::WrongDevice`] otherwise: the token was reset or re-keyed);
//! 3. refuse a blocked PIN ([`Error::PinBlocked`]) without prompting;
//! 4. only then ask for the PIN through the [`Callbacks`], with the tries
//!    left in the request;
//! 5. send the PIN to the device (counted by [`MockBackend::pin_requests`]):
//!    a wrong one costs a try ([`Error::WrongPin`] with the tries left, and
//!    [`Error::PinBlocked`] when the last one is spent); a right one resets
//!    the counter, as PIV does;
//! 6. touch, if the slot requires it ([`Notice::TouchRequired`]);
//! 7. ECDH on the device, then [`ecies::open`] (or ECDSA for `sign`).
//!
//! The lock over the devices is not held while the UI is asked, so a test
//! can unplug the device from inside a prompt: the operation then fails
//! with [`Error::DeviceRemoved`].
//!
//! # What the mock does not enforce (compared with real hardware)
//!
//! - No transport: no APDUs, no PC/SC, no sessions, no exclusive card
//!   access. All devices sit behind one mutex; real tokens serialise
//!   operations themselves and can be held by another process.
//! - Keys are `p256` values in this process's memory, not non-extractable
//!   objects; ECDH and ECDSA are done in software.
//! - Enrollment needs no management key and no PIN; key generation simply
//!   replaces the slot's key. There is no PUK, no PIN change, no PIN policy
//!   (length, default-PIN refusal) and no applet reset that wipes slots.
//!   A blocked PIN stays blocked until a test calls [`MockBackend::unblock`].
//! - The PIN is checked on every operation (PIV "PIN policy always"); no
//!   PIN or touch is cached between operations.
//! - Touch is confirmed at once unless the touch-timeout fault is set;
//!   there is no real timer.
//! - Serials are plain strings and there is no attestation: a "wrong
//!   device" is only as distinguishable as its serial and key.
//! - Faults happen only at the points listed above; a real token can fail
//!   anywhere, including in the middle of a PIN verification.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use keyward_kms::backend::ecdh_device::{self, EcdhDevice};
use keyward_kms::backend::lock_or_reset;
use keyward_kms::crypto::ecies;
use keyward_kms::error::DeviceError;
use keyward_kms::{
    Backend, BackendKind, Callbacks, Capabilities, DeviceInfo, EnrollRequest, Enrollment, Error,
    Health, Notice, Result, Secret32, SecretKind, SecretRequest, SecretString, SignAlgorithm,
    Signature, WrapMode, Wrapped,
};
use p256::SecretKey;
use p256::ecdsa::signature::Signer;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

/// The PIN a new [`MockDevice`] has (the PIV factory default).
pub const DEFAULT_PIN: &str = "123456";
/// PIN tries a new [`MockDevice`] allows (the PIV factory default).
pub const DEFAULT_RETRIES: u32 = 3;
/// The slot used when the enrollment request names none (PIV key
/// management, the slot meant for decryption and key agreement).
pub const DEFAULT_SLOT: &str = "9d";
/// Model string reported by [`Backend::devices`].
pub const MODEL: &str = "keyward mock token";
/// Firmware string reported by [`Backend::devices`].
pub const FIRMWARE: &str = "0.1.0-mock";

const KIND: BackendKind = BackendKind::Mock;
const OPTION_SLOT: &str = "slot";
const OPTION_TOUCH: &str = "touch";

/// One key slot.
struct Slot {
    key: SecretKey,
    touch: bool,
}

/// A simulated token. Built with [`MockDevice::new`] and the `with_*`
/// methods, then handed to [`MockBackend::insert`].
pub struct MockDevice {
    serial: String,
    pin: SecretString,
    max_retries: u32,
    retries_left: u32,
    blocked: bool,
    touch_default: bool,
    present: bool,
    slots: BTreeMap<String, Slot>,
}

impl MockDevice {
    /// A device with `serial`, PIN [`DEFAULT_PIN`], [`DEFAULT_RETRIES`]
    /// tries, no touch requirement and empty slots.
    pub fn new(serial: &str) -> Self {
        Self {
            serial: serial.to_owned(),
            pin: SecretString::from(DEFAULT_PIN),
            max_retries: DEFAULT_RETRIES,
            retries_left: DEFAULT_RETRIES,
            blocked: false,
            touch_default: false,
            present: true,
            slots: BTreeMap::new(),
        }
    }

    /// Sets the PIN.
    #[must_use]
    pub fn with_pin(mut self, pin: &str) -> Self {
        self.pin = SecretString::from(pin);
        self
    }

    /// Sets the number of PIN tries (at least 1).
    #[must_use]
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries.max(1);
        self.retries_left = self.max_retries;
        self
    }

    /// Makes keys generated on this device require touch unless the
    /// enrollment says `touch=never`.
    #[must_use]
    pub fn with_touch(mut self, touch: bool) -> Self {
        self.touch_default = touch;
        self
    }

    /// The serial.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            id: self.serial.clone(),
            model: MODEL.to_owned(),
            firmware: Some(FIRMWARE.to_owned()),
            retries_left: Some(self.retries_left),
        }
    }

    /// Sends a PIN to the device: the device's own retry logic.
    fn verify_pin(&mut self, pin: &SecretString) -> Result<()> {
        if self.blocked {
            return Err(Error::PinBlocked);
        }
        let right: bool = pin
            .expose_secret()
            .as_bytes()
            .ct_eq(self.pin.expose_secret().as_bytes())
            .into();
        if right {
            self.retries_left = self.max_retries;
            return Ok(());
        }
        self.retries_left = self.retries_left.saturating_sub(1);
        if self.retries_left == 0 {
            self.blocked = true;
            Err(Error::PinBlocked)
        } else {
            Err(Error::WrongPin {
                retries_left: Some(self.retries_left),
            })
        }
    }
}

/// No mock token is there, for the reason `detail` gives.
fn absent(detail: String) -> Error {
    Error::not_found(KIND, DeviceError::NotPresent { detail })
}

impl fmt::Debug for MockDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockDevice")
            .field("serial", &self.serial)
            .field("retries_left", &self.retries_left)
            .field("blocked", &self.blocked)
            .field("present", &self.present)
            .field("slots", &self.slots.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Everything behind the lock.
#[derive(Debug, Default)]
struct State {
    devices: Vec<MockDevice>,
    delay: Duration,
    fail_after_pin: bool,
    touch_timeout: bool,
}

impl State {
    fn present(&self) -> impl Iterator<Item = &MockDevice> {
        self.devices.iter().filter(|d| d.present)
    }

    fn present_serials(&self) -> String {
        self.present()
            .map(|d| d.serial.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The device an enrollment goes to: the one named, or the only one
    /// present.
    fn choose_device(&self, wanted: Option<&str>) -> Result<String> {
        if let Some(serial) = wanted {
            if self.present().any(|d| d.serial == serial) {
                return Ok(serial.to_owned());
            }
            let present = self.present_serials();
            return Err(absent(if present.is_empty() {
                format!("insert the mock token with serial {serial}")
            } else {
                format!("no mock token {serial}; present: {present}")
            }));
        }
        let mut present = self.present();
        match (present.next(), present.next()) {
            (None, _) => Err(absent("insert a mock token".to_owned())),
            (Some(only), None) => Ok(only.serial.clone()),
            (Some(_), Some(_)) => Err(Error::InvalidArgument {
                what: format!(
                    "several mock tokens are present ({}): name one in the request's device",
                    self.present_serials()
                ),
            }),
        }
    }

    fn device_mut(&mut self, serial: &str) -> Option<&mut MockDevice> {
        self.devices.iter_mut().find(|d| d.serial == serial)
    }

    /// The enrolled device, present and holding the enrolled key; the
    /// checks done before any PIN is asked for.
    fn enrolled_device(&mut self, target: &Target) -> Result<&mut MockDevice> {
        if !self.present().any(|d| d.serial == target.serial) {
            let others = self.present_serials();
            return Err(if others.is_empty() {
                absent(format!(
                    "insert the mock token with serial {}",
                    target.serial
                ))
            } else {
                Error::WrongDevice {
                    expected: format!("mock token {}", target.serial),
                    found: format!("mock token {others}"),
                }
            });
        }
        let device = self
            .device_mut(&target.serial)
            .expect("a present device with this serial was just found");
        let holds_key = device.slots.get(&target.slot).is_some_and(|slot| {
            let public = ecies::compress(&slot.key.public_key());
            bool::from(public.ct_eq(&target.public_key))
        });
        if !holds_key {
            return Err(Error::WrongDevice {
                expected: format!(
                    "mock token {} with the enrolled key in slot {}",
                    target.serial, target.slot
                ),
                found: format!(
                    "mock token {} with another key in slot {} (reset or re-keyed)",
                    target.serial, target.slot
                ),
            });
        }
        Ok(device)
    }
}

/// What an enrollment points at.
struct Target {
    serial: String,
    slot: String,
    public_key: [u8; ecies::POINT_LEN],
}

impl Target {
    fn from_enrollment(enrollment: &Enrollment) -> Result<Self> {
        enrollment.check_kind(KIND)?;
        if enrollment.version() != Some(1) {
            return Err(Error::Malformed {
                what: "mock protector descriptor has no supported version",
            });
        }
        let serial = enrollment.device_id.clone().ok_or(Error::Malformed {
            what: "mock protector descriptor has no device serial",
        })?;
        let slot = enrollment
            .params
            .get(OPTION_SLOT)
            .and_then(serde_json::Value::as_str)
            .filter(|s| valid_slot(s))
            .ok_or(Error::Malformed {
                what: "mock protector descriptor has no valid slot",
            })?
            .to_owned();
        let public_key = enrollment.p256_public_key()?;
        Ok(Self {
            serial,
            slot,
            public_key,
        })
    }
}

/// PIV slots: authentication, signature, key management, card
/// authentication, and the retired key-management slots 82..95.
fn valid_slot(slot: &str) -> bool {
    matches!(slot, "9a" | "9c" | "9d" | "9e")
        || u8::from_str_radix(slot, 16).is_ok_and(|n| slot.len() == 2 && (0x82..=0x95).contains(&n))
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    pin_requests: AtomicU64,
    pin_prompts: AtomicU64,
}

/// The mock backend: a handle over shared simulated devices and faults.
/// Every method takes `&self` and is safe to call from any thread while
/// the backend is in use.
#[derive(Debug, Clone, Default)]
pub struct MockBackend {
    shared: Arc<Shared>,
}

impl MockBackend {
    /// A backend with no device plugged in.
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend with `device` plugged in.
    pub fn with_device(device: MockDevice) -> Self {
        let backend = Self::new();
        backend.insert(device);
        backend
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic in a test thread must not wedge every other test using
        // the same mock; the state stays consistent between statements.
        lock_or_reset(&self.shared.state, |_| {})
    }

    /// Plugs in `device`, replacing any device with the same serial.
    pub fn insert(&self, mut device: MockDevice) {
        device.present = true;
        let mut state = self.state();
        state.devices.retain(|d| d.serial != device.serial);
        state.devices.push(device);
    }

    /// Unplugs the device with `serial` (it keeps its keys and counters).
    /// Returns whether such a device exists.
    pub fn unplug(&self, serial: &str) -> bool {
        self.set_present(serial, false)
    }

    /// Plugs an unplugged device back in. Returns whether it exists.
    pub fn plug(&self, serial: &str) -> bool {
        self.set_present(serial, true)
    }

    fn set_present(&self, serial: &str, present: bool) -> bool {
        match self.state().device_mut(serial) {
            Some(d) => {
                d.present = present;
                true
            }
            None => false,
        }
    }

    /// Wrong device: unplugs every present device and plugs in a fresh one
    /// with `serial` (default PIN, empty slots).
    pub fn swap_device(&self, serial: &str) {
        {
            let mut state = self.state();
            for d in &mut state.devices {
                d.present = false;
            }
        }
        self.insert(MockDevice::new(serial));
    }

    /// Makes every device operation sleep `delay` first (slow token).
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    /// The next unwrap or sign fails with [`Error::DeviceRemoved`] right
    /// after its PIN was accepted (the device stays plugged in, as after a
    /// glitch or a reset). One-shot.
    pub fn fail_next_after_pin(&self) {
        self.state().fail_after_pin = true;
    }

    /// While set, operations on slots that require touch fail with
    /// [`Error::TouchTimeout`] after the PIN was accepted.
    pub fn set_touch_timeout(&self, timeout: bool) {
        self.state().touch_timeout = timeout;
    }

    /// PINs sent to any device so far (each costs a try when wrong).
    pub fn pin_requests(&self) -> u64 {
        self.shared.pin_requests.load(Ordering::SeqCst)
    }

    /// PIN prompts sent to the UI so far.
    pub fn pin_prompts(&self) -> u64 {
        self.shared.pin_prompts.load(Ordering::SeqCst)
    }

    /// PIN tries left on the device with `serial`.
    pub fn retries_left(&self, serial: &str) -> Option<u32> {
        self.state().device_mut(serial).map(|d| d.retries_left)
    }

    /// Whether the PIN of the device with `serial` is blocked.
    pub fn is_blocked(&self, serial: &str) -> Option<bool> {
        self.state().device_mut(serial).map(|d| d.blocked)
    }

    /// Unblocks the PIN (what a PUK would do; the mock has no PUK). Never
    /// called by the backend itself. Returns whether the device exists.
    pub fn unblock(&self, serial: &str) -> bool {
        match self.state().device_mut(serial) {
            Some(d) => {
                d.blocked = false;
                d.retries_left = d.max_retries;
                true
            }
            None => false,
        }
    }

    fn delay(&self) {
        let delay = self.state().delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }

    /// Steps 1 to 6 of the module docs; returns the slot key (a copy: the
    /// mock's stand-in for "the device does the private-key operation").
    fn authorize(&self, target: &Target, ui: &dyn Callbacks) -> Result<SecretKey> {
        self.delay();
        let retries_left = {
            let mut state = self.state();
            let device = state.enrolled_device(target)?;
            if device.blocked {
                return Err(Error::PinBlocked);
            }
            device.retries_left
        };

        // The lock is released while the user is asked.
        let description = format!("PIN of mock token {}", target.serial);
        self.shared.pin_prompts.fetch_add(1, Ordering::SeqCst);
        let pin = ui.request_secret(&SecretRequest {
            kind: SecretKind::Pin,
            description: &description,
            retries_left: Some(retries_left),
        })?;

        let (key, touch, touch_timeout) = {
            let mut state = self.state();
            let touch_timeout = state.touch_timeout;
            let fail_after_pin = std::mem::take(&mut state.fail_after_pin);
            let device = match state.enrolled_device(target) {
                Ok(device) => device,
                // Unplugged or replaced while the prompt was open.
                Err(Error::DeviceNotFound { .. } | Error::WrongDevice { .. }) => {
                    state.fail_after_pin = fail_after_pin;
                    return Err(Error::DeviceRemoved);
                }
                Err(e) => return Err(e),
            };
            self.shared.pin_requests.fetch_add(1, Ordering::SeqCst);
            if let Err(e) = device.verify_pin(&pin) {
                state.fail_after_pin = fail_after_pin;
                return Err(e);
            }
            if fail_after_pin {
                return Err(Error::DeviceRemoved);
            }
            let slot = device
                .slots
                .get(&target.slot)
                .expect("enrolled_device checked the slot holds the key");
            (slot.key.clone(), slot.touch, touch_timeout)
        };

        if touch {
            ui.notify(&Notice::TouchRequired {
                device: &target.serial,
            });
            if touch_timeout {
                return Err(Error::TouchTimeout);
            }
        }
        Ok(key)
    }
}

/// The mock as the shared unwrap sees it ([`ecdh_device`]): the session is
/// the slot's key, released by [`MockBackend::authorize`] once the device
/// checks and the PIN passed.
struct Device<'b>(&'b MockBackend);

impl EcdhDevice for Device<'_> {
    type Params = Target;
    type Session<'a>
        = SecretKey
    where
        Self: 'a;

    fn kind(&self) -> BackendKind {
        KIND
    }

    fn params(&self, enrollment: &Enrollment) -> Result<Target> {
        Target::from_enrollment(enrollment)
    }

    fn open_session<'a>(
        &'a self,
        _enrollment: &'a Enrollment,
        target: &'a Target,
        ui: &'a dyn Callbacks,
    ) -> Result<SecretKey> {
        self.0.authorize(target, ui)
    }

    fn ecdh(&self, key: &mut SecretKey, _: &Target, peer: &p256::PublicKey) -> Result<Secret32> {
        Ok(ecies::ecdh(key, peer))
    }
}

impl Backend for MockBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Mock
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            wrap_modes: vec![WrapMode::EciesP256],
            sign: vec![SignAlgorithm::EcdsaP256Sha256],
            pin: true,
            touch: true,
            pcr: false,
        }
    }

    fn devices(&self) -> Result<Vec<DeviceInfo>> {
        self.delay();
        Ok(self.state().present().map(MockDevice::info).collect())
    }

    /// Generates a key in a slot of the chosen device (replacing what the
    /// slot held). Options ([`keyward_kms::backend::options::MockOptions`]): the slot (default `9d`) and
    /// whether it wants a touch (default: the device's setting).
    fn enroll(&self, req: &EnrollRequest, _ui: &dyn Callbacks) -> Result<Enrollment> {
        let options = req.options.mock()?;
        let slot = options.slot.unwrap_or_else(|| DEFAULT_SLOT.to_owned());
        if !valid_slot(&slot) {
            return Err(Error::InvalidArgument {
                what: format!("slot must be 9a, 9c, 9d, 9e or 82..95 (got {slot:?})"),
            });
        }
        let touch = options.touch;
        self.delay();
        let key = ecies::random_scalar()?;
        let public_key = ecies::compress(&key.public_key());

        let mut state = self.state();
        let serial = state.choose_device(req.device.as_deref())?;
        let device = state
            .device_mut(&serial)
            .expect("the serial was just found among the present devices");
        let touch = touch.unwrap_or(device.touch_default);
        device.slots.insert(slot.clone(), Slot { key, touch });
        Ok(Enrollment {
            kind: BackendKind::Mock,
            device_id: Some(serial),
            public_key: public_key.to_vec(),
            params: serde_json::json!({ "v": 1, OPTION_SLOT: slot, OPTION_TOUCH: touch }),
        })
    }

    fn wrap(&self, enrollment: &Enrollment, secret: &Secret32, aad: &[u8]) -> Result<Wrapped> {
        ecdh_device::wrap(&Device(self), enrollment, secret, aad)
    }

    fn unwrap(
        &self,
        enrollment: &Enrollment,
        wrapped: &Wrapped,
        aad: &[u8],
        ui: &dyn Callbacks,
    ) -> Result<Secret32> {
        ecdh_device::unwrap(&Device(self), enrollment, wrapped, aad, ui)
    }

    fn sign(&self, enrollment: &Enrollment, msg: &[u8], ui: &dyn Callbacks) -> Result<Signature> {
        let target = Target::from_enrollment(enrollment)?;
        let key = self.authorize(&target, ui)?;
        let signer = p256::ecdsa::SigningKey::from(&key);
        let sig: p256::ecdsa::Signature = signer.try_sign(msg).map_err(|_| {
            Error::device(
                KIND,
                DeviceError::Failed {
                    code: "sign",
                    detail: "ECDSA signing failed".to_owned(),
                },
            )
        })?;
        Ok(Signature {
            algorithm: SignAlgorithm::EcdsaP256Sha256,
            bytes: sig.to_der().as_bytes().to_vec(),
        })
    }

    fn health(&self, enrollment: &Enrollment) -> Result<Health> {
        let target = Target::from_enrollment(enrollment)?;
        self.delay();
        let mut state = self.state();
        let others = state.present_serials();
        let serial_present = state.present().any(|d| d.serial == target.serial);
        let health = match state.enrolled_device(&target) {
            Ok(device) => Health {
                present: true,
                matches: true,
                retries_left: Some(device.retries_left),
                lockout_seconds: None,
                detail: if device.blocked {
                    format!(
                        "mock token {} is present; its PIN is blocked",
                        target.serial
                    )
                } else {
                    format!(
                        "mock token {} is present ({} PIN tries left)",
                        target.serial, device.retries_left
                    )
                },
            },
            Err(Error::WrongDevice { found, .. }) if serial_present => Health {
                present: true,
                matches: false,
                retries_left: None,
                lockout_seconds: None,
                detail: found,
            },
            Err(_) => Health {
                present: false,
                matches: false,
                retries_left: None,
                lockout_seconds: None,
                detail: if others.is_empty() {
                    format!("mock token {} is not plugged in", target.serial)
                } else {
                    format!(
                        "mock token {} is not plugged in; present: {others}",
                        target.serial
                    )
                },
            },
        };
        Ok(health)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;
    use keyward_kms::EnrollOptions;
    use keyward_kms::backend::options::{MockOptions, TpmOptions};

    /// Answers PIN prompts with `pin`, records requests and notices, and
    /// can run an action while the prompt is open.
    struct Ui {
        pin: String,
        asked: Mutex<Vec<Option<u32>>>,
        touched: Mutex<u32>,
        during_prompt: Option<Box<dyn Fn() + Send + Sync>>,
    }

    impl Ui {
        fn new(pin: &str) -> Self {
            Self {
                pin: pin.to_owned(),
                asked: Mutex::new(Vec::new()),
                touched: Mutex::new(0),
                during_prompt: None,
            }
        }
    }

    impl Callbacks for Ui {
        fn request_secret(&self, request: &SecretRequest<'_>) -> Result<SecretString> {
            assert_eq!(request.kind, SecretKind::Pin);
            self.asked.lock().expect("lock").push(request.retries_left);
            if let Some(action) = &self.during_prompt {
                action();
            }
            Ok(SecretString::from(self.pin.clone()))
        }
        fn notify(&self, notice: &Notice<'_>) {
            if matches!(notice, Notice::TouchRequired { .. }) {
                *self.touched.lock().expect("lock") += 1;
            }
        }
        fn show_secret(&self, _: &str, _: &SecretString) -> Result<()> {
            Ok(())
        }
    }

    const SERIAL: &str = "MOCK-0001";

    fn setup() -> (MockBackend, Enrollment, Wrapped, Secret32) {
        let mock = MockBackend::with_device(MockDevice::new(SERIAL));
        let e = mock
            .enroll(&EnrollRequest::default(), &Ui::new(DEFAULT_PIN))
            .expect("enroll");
        let secret = Secret32::random().expect("rng");
        let w = mock.wrap(&e, &secret, b"aad").expect("wrap");
        (mock, e, w, secret)
    }

    #[test]
    fn round_trip_and_descriptor() {
        let (mock, e, w, secret) = setup();
        assert_eq!(e.device_id.as_deref(), Some(SERIAL));
        assert_eq!(e.params["slot"], DEFAULT_SLOT);
        assert_eq!(e.params["touch"], false);
        let ui = Ui::new(DEFAULT_PIN);
        let out = mock.unwrap(&e, &w, b"aad", &ui).expect("unwrap");
        assert_eq!(out.expose(), secret.expose());
        assert_eq!(*ui.asked.lock().expect("lock"), [Some(DEFAULT_RETRIES)]);
        assert_eq!(mock.pin_requests(), 1);
        assert_eq!(mock.pin_prompts(), 1);
    }

    #[test]
    fn wrong_pin_counts_down_blocks_and_never_resets() {
        let (mock, e, w, _) = setup();
        let wrong = Ui::new("654321");
        assert!(matches!(
            mock.unwrap(&e, &w, b"aad", &wrong),
            Err(Error::WrongPin {
                retries_left: Some(2)
            })
        ));
        // A right PIN resets the counter, as PIV does.
        mock.unwrap(&e, &w, b"aad", &Ui::new(DEFAULT_PIN))
            .expect("right PIN");
        assert_eq!(mock.retries_left(SERIAL), Some(3));
        for left in [2, 1] {
            assert!(matches!(
                mock.unwrap(&e, &w, b"aad", &wrong),
                Err(Error::WrongPin { retries_left: Some(n) }) if n == left
            ));
        }
        assert!(matches!(
            mock.unwrap(&e, &w, b"aad", &wrong),
            Err(Error::PinBlocked)
        ));
        assert_eq!(
            *wrong.asked.lock().expect("lock"),
            [Some(3), Some(3), Some(2), Some(1)]
        );
        // Blocked: no prompt, no PIN sent, even with the right PIN.
        let sent = mock.pin_requests();
        let right = Ui::new(DEFAULT_PIN);
        for _ in 0..3 {
            assert!(matches!(
                mock.unwrap(&e, &w, b"aad", &right),
                Err(Error::PinBlocked)
            ));
        }
        assert!(right.asked.lock().expect("lock").is_empty());
        assert_eq!(mock.pin_requests(), sent);
        assert_eq!(mock.is_blocked(SERIAL), Some(true));
        let health = mock.health(&e).expect("health");
        assert!(health.present && health.matches);
        assert_eq!(health.retries_left, Some(0));
        // Only an explicit unblock helps.
        assert!(mock.unblock(SERIAL));
        mock.unwrap(&e, &w, b"aad", &right).expect("unblocked");
    }

    #[test]
    fn wrong_device_and_absent_device_before_any_pin() {
        let (mock, e, w, _) = setup();
        let ui = Ui::new(DEFAULT_PIN);
        mock.swap_device("MOCK-0002");
        match mock.unwrap(&e, &w, b"aad", &ui) {
            Err(Error::WrongDevice { expected, found }) => {
                assert!(expected.contains(SERIAL), "{expected}");
                assert!(found.contains("MOCK-0002"), "{found}");
            }
            other => panic!("expected WrongDevice, got {other:?}"),
        }
        assert!(!mock.health(&e).expect("health").present);
        mock.unplug("MOCK-0002");
        assert!(matches!(
            mock.unwrap(&e, &w, b"aad", &ui),
            Err(Error::DeviceNotFound { .. })
        ));
        assert!(matches!(
            mock.sign(&e, b"m", &ui),
            Err(Error::DeviceNotFound { .. })
        ));
        assert_eq!(mock.pin_requests(), 0);
        assert_eq!(mock.pin_prompts(), 0);
        assert!(ui.asked.lock().expect("lock").is_empty());
        assert!(mock.plug(SERIAL));
        mock.unwrap(&e, &w, b"aad", &ui).expect("back");
    }

    #[test]
    fn rekeyed_device_is_a_wrong_device() {
        let (mock, e, w, _) = setup();
        // Same serial, slot regenerated (as after a PIV reset).
        mock.enroll(&EnrollRequest::default(), &Ui::new(DEFAULT_PIN))
            .expect("re-enroll");
        let ui = Ui::new(DEFAULT_PIN);
        assert!(matches!(
            mock.unwrap(&e, &w, b"aad", &ui),
            Err(Error::WrongDevice { .. })
        ));
        let health = mock.health(&e).expect("health");
        assert!(health.present && !health.matches);
        assert_eq!(mock.pin_requests(), 0);
    }

    #[test]
    fn failure_after_pin_is_one_shot() {
        let (mock, e, w, secret) = setup();
        mock.fail_next_after_pin();
        let ui = Ui::new(DEFAULT_PIN);
        assert!(matches!(
            mock.unwrap(&e, &w, b"aad", &ui),
            Err(Error::DeviceRemoved)
        ));
        assert_eq!(mock.pin_requests(), 1);
        let out = mock.unwrap(&e, &w, b"aad", &ui).expect("next op");
        assert_eq!(out.expose(), secret.expose());
    }

    #[test]
    fn failure_fault_survives_a_wrong_pin() {
        let (mock, e, w, _) = setup();
        mock.fail_next_after_pin();
        assert!(matches!(
            mock.unwrap(&e, &w, b"aad", &Ui::new("000000")),
            Err(Error::WrongPin { .. })
        ));
        assert!(matches!(
            mock.unwrap(&e, &w, b"aad", &Ui::new(DEFAULT_PIN)),
            Err(Error::DeviceRemoved)
        ));
    }

    #[test]
    fn unplugged_during_prompt_is_device_removed() {
        let (mock, e, w, _) = setup();
        let handle = mock.clone();
        let mut ui = Ui::new(DEFAULT_PIN);
        ui.during_prompt = Some(Box::new(move || {
            handle.unplug(SERIAL);
        }));
        assert!(matches!(
            mock.unwrap(&e, &w, b"aad", &ui),
            Err(Error::DeviceRemoved)
        ));
        // The PIN never reached the device.
        assert_eq!(mock.pin_requests(), 0);
        assert_eq!(mock.retries_left(SERIAL), Some(DEFAULT_RETRIES));
    }

    #[test]
    fn touch_required_and_timeout() {
        let mock = MockBackend::with_device(MockDevice::new(SERIAL).with_touch(true));
        let ui = Ui::new(DEFAULT_PIN);
        let e = mock.enroll(&EnrollRequest::default(), &ui).expect("enroll");
        assert_eq!(e.params["touch"], true);
        let secret = Secret32::random().expect("rng");
        let w = mock.wrap(&e, &secret, b"").expect("wrap");
        mock.unwrap(&e, &w, b"", &ui).expect("touched");
        assert_eq!(*ui.touched.lock().expect("lock"), 1);
        mock.set_touch_timeout(true);
        assert!(matches!(
            mock.unwrap(&e, &w, b"", &ui),
            Err(Error::TouchTimeout)
        ));
        assert!(matches!(mock.sign(&e, b"m", &ui), Err(Error::TouchTimeout)));
        // touch=never overrides the device default.
        let req = EnrollRequest {
            options: EnrollOptions::Mock(MockOptions {
                slot: Some("82".into()),
                touch: Some(false),
            }),
            ..EnrollRequest::default()
        };
        let e2 = mock.enroll(&req, &ui).expect("enroll");
        let w2 = mock.wrap(&e2, &secret, b"").expect("wrap");
        mock.unwrap(&e2, &w2, b"", &ui).expect("no touch needed");
    }

    #[test]
    fn slow_device() {
        let (mock, e, w, _) = setup();
        mock.set_delay(Duration::from_millis(30));
        let start = Instant::now();
        mock.unwrap(&e, &w, b"aad", &Ui::new(DEFAULT_PIN))
            .expect("slow but fine");
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn enroll_device_selection_and_options() {
        let mock = MockBackend::new();
        let ui = Ui::new(DEFAULT_PIN);
        assert!(matches!(
            mock.enroll(&EnrollRequest::default(), &ui),
            Err(Error::DeviceNotFound { .. })
        ));
        mock.insert(MockDevice::new("A"));
        mock.insert(MockDevice::new("B"));
        assert!(matches!(
            mock.enroll(&EnrollRequest::default(), &ui),
            Err(Error::InvalidArgument { .. })
        ));
        let req = EnrollRequest {
            device: Some("B".into()),
            ..EnrollRequest::default()
        };
        assert_eq!(
            mock.enroll(&req, &ui)
                .expect("enroll B")
                .device_id
                .as_deref(),
            Some("B")
        );
        let req = EnrollRequest {
            device: Some("C".into()),
            ..EnrollRequest::default()
        };
        assert!(matches!(
            mock.enroll(&req, &ui),
            Err(Error::DeviceNotFound { .. })
        ));
        for options in [
            EnrollOptions::Mock(MockOptions {
                slot: Some("9b".into()),
                touch: None,
            }),
            EnrollOptions::Mock(MockOptions {
                slot: Some("96".into()),
                touch: None,
            }),
            EnrollOptions::Tpm(TpmOptions::default()),
        ] {
            let req = EnrollRequest {
                device: Some("A".into()),
                options: options.clone(),
                ..EnrollRequest::default()
            };
            assert!(
                matches!(mock.enroll(&req, &ui), Err(Error::InvalidArgument { .. })),
                "{options:?}"
            );
        }
        assert_eq!(mock.devices().expect("devices").len(), 2);
    }

    #[test]
    fn descriptor_checks() {
        let (mock, e, w, _) = setup();
        let ui = Ui::new(DEFAULT_PIN);
        let mut other_kind = e.clone();
        other_kind.kind = BackendKind::Tpm;
        assert!(matches!(
            mock.unwrap(&other_kind, &w, b"aad", &ui),
            Err(Error::InvalidArgument { .. })
        ));
        let mut no_serial = e.clone();
        no_serial.device_id = None;
        assert!(mock.unwrap(&no_serial, &w, b"aad", &ui).is_err());
        let mut bad_slot = e.clone();
        bad_slot.params["slot"] = serde_json::json!("zz");
        assert!(mock.unwrap(&bad_slot, &w, b"aad", &ui).is_err());
        assert_eq!(mock.pin_prompts(), 0);
    }
}
