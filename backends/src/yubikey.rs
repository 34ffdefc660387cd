//! YubiKey protector: a P-256 key generated on a YubiKey (PIV applet) in a
//! retired key-management slot, used with the PIN and a touch.
//!
//! What it is: [`Backend`], an implementation of
//! [`keyward_kms::backend::Backend`] over PC/SC (pcscd) with the `yubikey`
//! crate, pinned to `=0.9.0-rc.0` (docs/YUBIKEY.md, docs/HARDWARE.md).
//! It behaves like age-plugin-yubikey and yubikey-agent: the key never
//! leaves the device, the management key is a random key stored
//! PIN-protected on the device, and a PIN is never retried automatically.
//!
//! How it works:
//!
//! - **Setup** ([`Backend::setup`]) replaces the factory PIN and PUK and the
//!   default management key with a random one (AES-256 from firmware 5.4,
//!   3DES before) stored in the PIN-protected data object, as
//!   `ykman piv access change-management-key --protect` does.
//! - **Enroll** finds the card by serial (several YubiKeys may be plugged
//!   in), refuses a card still on a default PIN, PUK or management key,
//!   verifies the PIN, authenticates with the PIN-protected management key,
//!   generates a P-256 key in the first empty retired slot (82..95; never
//!   9a/9c/9d/9e, never a slot holding a key unless `overwrite=true`) with
//!   PIN policy `once` and touch policy `always` by default, and writes a
//!   self-signed certificate `CN=keyward` into the slot so that `ykman piv
//!   info` shows whose key it is. The descriptor records serial, slot,
//!   policies and the public key.
//! - **Wrap** is the shared ECIES ([`keyward_kms::crypto::ecies`]) to the
//!   slot's public key: no device needed.
//! - **Unwrap** finds the card by serial, compares the slot's public key
//!   (GET METADATA; the certificate on firmware older than 5.3) with the
//!   enrolled one *before* asking for the PIN, reads the PIN retries for the
//!   prompt, and after the prompt checks the slot again, sends VERIFY once,
//!   announces the touch and runs ECDH (GENERAL AUTHENTICATE) on the blob's
//!   ephemeral point.
//! - **Sign** is ECDSA P-256 over SHA-256 (hashed on the host) with the
//!   same key, DER-encoded and checked against the enrolled key before it
//!   is returned.
//!
//! One card handle per serial lives inside the `Backend` for its whole
//! life: dropping a `yubikey::YubiKey` resets the card for every program
//! using it. Handles are kept behind a `Mutex`; the lock is not held while
//! a PIN prompt is open. A handle that fails with a PC/SC removal or reset
//! is dropped: at the start of an operation it is silently reopened, after
//! the PIN prompt the operation fails with [`Error::DeviceRemoved`] and the
//! next one starts afresh.
//!
//! Known limitation (the crate's): after a successful VERIFY the `yubikey`
//! crate keeps a copy of the PIN in the handle, in memory that is not
//! zeroized, until the handle is dropped.
//!
//! ```no_run
//! use keyward_backends::yubikey::Backend;
//! use keyward_kms::backend::Backend as _;
//! let yk = Backend::new();
//! for d in yk.devices().expect("pcscd reachable") {
//!     println!("YubiKey {} firmware {:?}", d.id, d.firmware);
//! }
//! ```

mod card;
mod descriptor;
mod errors;
mod slots;
mod unwrap;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use p256::elliptic_curve::sec1::ToSec1Point as _;
use p256::pkcs8::EncodePublicKey as _;
use secrecy::ExposeSecret as _;
use sha2::{Digest as _, Sha256};
use yubikey::certificate::Certificate;
use yubikey::piv::{self, AlgorithmId, ManagementSlotId, SlotId};
use yubikey::reader::Context;
use yubikey::{MgmAlgorithmId, MgmKey, YubiKey};
use zeroize::Zeroizing;

use keyward_kms::backend::ecdh_device::{self, EcdhDevice};
use keyward_kms::backend::{
    self, BackendKind, Callbacks, Capabilities, DeviceInfo, EnrollRequest, Enrollment, Health,
    Notice, SecretKind, SecretRequest, SignAlgorithm, Signature, WrapMode, Wrapped,
};
use keyward_kms::crypto::ecies;
use keyward_kms::error::DeviceError;
use keyward_kms::secret::{Secret32, SecretString, random_bytes};
use keyward_kms::{Error, Result};

use card::{
    Session, check_pin_format, description, find, join, missing_new, not_found, not_protected,
    parse_serial, release, scan, verify,
};
pub use descriptor::{Params, Pin, Touch};
use descriptor::{pin_policy, retired_slots, slot_id, touch_policy};
use errors::{KIND, Op, device, drops_handle, failed, map};
use slots::{
    check_slot, choose_slot, default_credentials, random_management_key, write_certificate,
};
use unwrap::Device;

/// The factory PIN of a YubiKey.
pub const DEFAULT_PIN: &str = "123456";
/// The factory PUK of a YubiKey.
pub const DEFAULT_PUK: &str = "12345678";

/// Subject of the certificate that marks a slot as keyward's.
pub const CERT_SUBJECT: &str = "CN=keyward,O=keyward";

/// The YubiKey backend. See the module documentation.
#[derive(Default)]
pub struct Backend {
    /// One long-lived handle per card serial.
    cards: Mutex<BTreeMap<u32, YubiKey>>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let serials: Vec<u32> = self.lock().keys().copied().collect();
        f.debug_struct("yubikey::Backend")
            .field("open_cards", &serials)
            .finish()
    }
}

/// What [`Backend::setup`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetupReport {
    /// The serial of the card.
    pub serial: u32,
    /// The factory PIN was replaced.
    pub pin_changed: bool,
    /// The factory PUK was replaced.
    pub puk_changed: bool,
    /// A random PIN-protected management key was set.
    pub management_key_changed: bool,
}

/// Which credentials of a card are still the factory defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FactoryDefaults {
    /// The card's serial.
    pub serial: u32,
    /// The PIN is `123456`.
    pub pin: bool,
    /// The PUK is `12345678`.
    pub puk: bool,
    /// The management key is the default one.
    pub management_key: bool,
}

impl Backend {
    /// A backend with no card open yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, YubiKey>> {
        match self.cards.lock() {
            Ok(g) => g,
            Err(poisoned) => {
                // A panic during a card operation: the handles' state is
                // unknown, start over.
                let mut g = poisoned.into_inner();
                g.clear();
                self.cards.clear_poison();
                g
            }
        }
    }

    /// Starts an operation on card `serial`: reuses the handle if it still
    /// answers, else finds the card among all readers. Returns the session
    /// and the PIN retries left.
    fn start(&self, serial: u32) -> Result<(Session<'_>, u8)> {
        let mut guard = self.lock();
        if let Some(yk) = guard.get_mut(&serial) {
            match yk.get_pin_retries() {
                Ok(r) => return Ok((Session { guard, serial }, r)),
                Err(e) if drops_handle(&e) => {
                    tracing::debug!(serial, "stale YubiKey handle dropped: {e}");
                    if let Some(yk) = guard.remove(&serial) {
                        release(yk);
                    }
                }
                Err(e) => return Err(map(e, Op::Query)),
            }
        }
        let yk = find(serial)?;
        guard.insert(serial, yk);
        let mut session = Session { guard, serial };
        let retries = match session.yk()?.get_pin_retries() {
            Ok(r) => r,
            Err(e) => return Err(session.fail(e, Op::Query)),
        };
        Ok((session, retries))
    }

    /// Continues an operation after a prompt: the handle must still be
    /// there; a card that went away meanwhile is [`Error::DeviceRemoved`].
    fn resume(&self, serial: u32) -> Result<Session<'_>> {
        let guard = self.lock();
        if !guard.contains_key(&serial) {
            return Err(Error::DeviceRemoved);
        }
        Ok(Session { guard, serial })
    }

    /// Serial of the only YubiKey present.
    fn only_serial() -> Result<u32> {
        let cards = scan()?;
        let serials: Vec<u32> = cards.iter().map(|yk| u32::from(yk.serial())).collect();
        cards.into_iter().for_each(release);
        match serials.as_slice() {
            [] => Err(not_found(None)),
            [one] => Ok(*one),
            many => Err(Error::InvalidArgument {
                what: format!(
                    "several YubiKeys are connected (serials {}): choose one with --serial",
                    join(many)
                ),
            }),
        }
    }

    /// Which credentials of the card are still the factory defaults, and
    /// its serial. `device` is the serial; `None`: the only YubiKey
    /// present. Sends no PIN.
    ///
    /// # Errors
    /// Device errors ([`Error::DeviceNotFound`], ...).
    pub fn factory_defaults(&self, device: Option<&str>) -> Result<FactoryDefaults> {
        let serial = match device {
            Some(d) => parse_serial(d)?,
            None => Self::only_serial()?,
        };
        let (mut s, _) = self.start(serial)?;
        let d = default_credentials(&mut s)?;
        Ok(FactoryDefaults {
            serial,
            pin: d.pin,
            puk: d.puk,
            management_key: d.management,
        })
    }

    /// Changes what is still factory-default on the card: the PIN (to
    /// `new_pin`), the PUK (to `new_puk`) and the management key (to a
    /// random one stored PIN-protected on the card). A PIN that is no
    /// longer the default is asked for through `ui` (to store the
    /// management key); a PUK that is no longer the default is left alone.
    /// `device` is the serial; `None`: the only YubiKey present. See
    /// [`Backend::factory_defaults`] for which new secrets are needed.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a new PIN or PUK that is missing
    /// while needed, not 6 to 8 characters, or the default; device errors;
    /// [`Error::WrongPin`].
    pub fn setup(
        &self,
        device: Option<&str>,
        new_pin: Option<&SecretString>,
        new_puk: Option<&SecretString>,
        ui: &dyn Callbacks,
    ) -> Result<SetupReport> {
        for (secret, what, default) in
            [(new_pin, "PIN", DEFAULT_PIN), (new_puk, "PUK", DEFAULT_PUK)]
        {
            if let Some(secret) = secret {
                check_pin_format(secret.expose_secret(), what)?;
                if secret.expose_secret() == default {
                    return Err(Error::InvalidArgument {
                        what: format!("the new {what} must not be the factory default"),
                    });
                }
            }
        }
        let serial = match device {
            Some(d) => parse_serial(d)?,
            None => Self::only_serial()?,
        };
        let mut report = SetupReport {
            serial,
            ..SetupReport::default()
        };
        let (mut s, retries) = self.start(serial)?;
        let defaults = default_credentials(&mut s)?;
        let new_pin = match (defaults.pin, new_pin) {
            (true, None) => return Err(missing_new("PIN")),
            (_, p) => p,
        };
        let new_puk = match (defaults.puk, new_puk) {
            (true, None) => return Err(missing_new("PUK")),
            (_, p) => p,
        };
        let pin: SecretString = if defaults.pin {
            drop(s);
            SecretString::from(DEFAULT_PIN)
        } else {
            if retries == 0 {
                return Err(Error::PinBlocked);
            }
            drop(s);
            let desc = format!("YubiKey {serial}");
            ui.request_secret(&SecretRequest {
                kind: SecretKind::Pin,
                description: &desc,
                retries_left: Some(u32::from(retries)),
            })?
        };
        check_pin_format(pin.expose_secret(), "PIN")?;
        let mut s = self.resume(serial)?;
        if let (true, Some(new_pin)) = (defaults.pin, new_pin) {
            let r = s
                .yk()?
                .change_pin(DEFAULT_PIN.as_bytes(), new_pin.expose_secret().as_bytes());
            r.map_err(|e| s.fail(e, Op::Verify))?;
            report.pin_changed = true;
        }
        if let (true, Some(new_puk)) = (defaults.puk, new_puk) {
            let r = s
                .yk()?
                .change_puk(DEFAULT_PUK.as_bytes(), new_puk.expose_secret().as_bytes());
            r.map_err(|e| s.fail(e, Op::Admin))?;
            report.puk_changed = true;
        }
        let current_pin = match (defaults.pin, new_pin) {
            (true, Some(p)) => p,
            _ => &pin,
        };
        verify(&mut s, current_pin)?;
        if defaults.management {
            let yk = s.yk()?;
            let default = MgmKey::get_default(yk).map_err(|e| map(e, Op::Admin))?;
            let r = yk.authenticate(&default);
            r.map_err(|e| s.fail(e, Op::Admin))?;
            let key = random_management_key(s.yk()?.version())?;
            let r = key.set_protected(s.yk()?);
            r.map_err(|e| s.fail(e, Op::Admin))?;
            report.management_key_changed = true;
        } else if MgmKey::get_protected(s.yk()?).is_err() {
            return Err(not_protected(serial));
        }
        tracing::info!(
            serial,
            pin = report.pin_changed,
            puk = report.puk_changed,
            management_key = report.management_key_changed,
            "YubiKey set up"
        );
        Ok(report)
    }

    /// The enrolled public key as a PEM SubjectPublicKeyInfo, as `openssl
    /// dgst -sha256 -verify key.pem -signature sig.der` reads it.
    ///
    /// # Errors
    /// [`Error::InvalidPublicKey`] for a descriptor with a bad key.
    pub fn public_key_pem(enrollment: &Enrollment) -> Result<String> {
        ecies::parse_public_key(&enrollment.public_key)?
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .map_err(|_| Error::InvalidPublicKey {
                what: "cannot encode as SubjectPublicKeyInfo",
            })
    }

    /// Phase one of unwrap and sign: find the card, check the slot, read
    /// the retries. Returns the retries left; the lock is released.
    fn precheck(&self, enrollment: &Enrollment, params: &Params) -> Result<u8> {
        let (mut s, retries) = self.start(params.serial)?;
        check_slot(&mut s, params, &enrollment.public_key)?;
        if retries == 0 {
            return Err(Error::PinBlocked);
        }
        Ok(retries)
    }

    /// Asks for the PIN, then (lock held) re-checks the slot and verifies
    /// the PIN once. Returns the session, ready for the key operation.
    fn unlock_slot(
        &self,
        enrollment: &Enrollment,
        params: &Params,
        ui: &dyn Callbacks,
    ) -> Result<Session<'_>> {
        let retries = self.precheck(enrollment, params)?;
        let desc = description(params);
        let pin = ui.request_secret(&SecretRequest {
            kind: SecretKind::Pin,
            description: &desc,
            retries_left: Some(u32::from(retries)),
        })?;
        check_pin_format(pin.expose_secret(), "PIN")?;
        let mut s = self.resume(params.serial)?;
        check_slot(&mut s, params, &enrollment.public_key)?;
        verify(&mut s, &pin)?;
        if params.touch_policy.needs_touch() {
            ui.notify(&Notice::TouchRequired { device: &desc });
        }
        Ok(s)
    }
}

impl backend::Backend for Backend {
    fn kind(&self) -> BackendKind {
        BackendKind::Yubikey
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
        let mut out = Vec::new();
        for mut yk in scan()? {
            let retries = yk.get_pin_retries().ok().map(u32::from);
            out.push(DeviceInfo {
                id: u32::from(yk.serial()).to_string(),
                model: format!("YubiKey (PIV) in reader {:?}", yk.name()),
                firmware: Some(yk.version().to_string()),
                retries_left: retries,
            });
            release(yk);
        }
        Ok(out)
    }

    fn enroll(&self, req: &EnrollRequest, ui: &dyn Callbacks) -> Result<Enrollment> {
        let opts = req.options.yubikey()?;
        let serial = match &req.device {
            Some(d) => parse_serial(d)?,
            None => Self::only_serial()?,
        };
        let desc = format!("YubiKey {serial}");
        let (mut s, retries) = self.start(serial)?;
        let defaults = default_credentials(&mut s)?;
        if defaults.any() {
            return Err(device(DeviceError::DefaultCredentials {
                serial,
                defaults: defaults.list(),
            }));
        }
        if retries == 0 {
            return Err(Error::PinBlocked);
        }
        drop(s);
        let pin = ui.request_secret(&SecretRequest {
            kind: SecretKind::Pin,
            description: &desc,
            retries_left: Some(u32::from(retries)),
        })?;
        check_pin_format(pin.expose_secret(), "PIN")?;
        let mut s = self.resume(serial)?;
        verify(&mut s, &pin)?;
        let mgm = MgmKey::get_protected(s.yk()?).map_err(|_| not_protected(serial))?;
        let r = s.yk()?.authenticate(&mgm);
        r.map_err(|e| s.fail(e, Op::Admin))?;
        let slot = choose_slot(&mut s, &opts)?;
        let id = slot_id(slot)?;
        let yk = s.yk()?;
        let firmware = yk.version().to_string();
        let generated = piv::generate(
            yk,
            id,
            AlgorithmId::EccP256,
            pin_policy(opts.pin_policy),
            touch_policy(opts.touch),
        );
        let spki = generated.map_err(|e| s.fail(e, Op::Admin))?;
        let public = p256::PublicKey::from_sec1_bytes(spki.subject_public_key.raw_bytes())
            .map_err(|_| failed("generate", "the YubiKey returned an invalid P-256 key"))?;
        // Mark the slot: a self-signed certificate, signed by the new key
        // (needs the PIN again under policy `always`, and a touch).
        if opts.pin_policy == Pin::Always {
            verify(&mut s, &pin)?;
        }
        if opts.touch.needs_touch() {
            ui.notify(&Notice::TouchRequired { device: &desc });
        }
        write_certificate(&mut s, id, spki, opts.touch.needs_touch())?;
        let params = Params {
            v: 1,
            serial,
            slot: format!("{slot:02x}"),
            pin_policy: opts.pin_policy,
            touch_policy: opts.touch,
            firmware,
        };
        tracing::info!(serial, slot = %params.slot, "YubiKey protector enrolled");
        Ok(Enrollment {
            kind: BackendKind::Yubikey,
            device_id: Some(serial.to_string()),
            public_key: ecies::compress(&public).to_vec(),
            params: params.to_json(),
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
        enrollment.check_kind(KIND)?;
        let params = Params::from_json(&enrollment.params)?;
        let vk =
            p256::ecdsa::VerifyingKey::from_sec1_bytes(&enrollment.public_key).map_err(|_| {
                Error::InvalidPublicKey {
                    what: "not a valid P-256 point",
                }
            })?;
        let id = slot_id(params.slot_number()?)?;
        let digest = Sha256::digest(msg);
        let mut s = self.unlock_slot(enrollment, &params, ui)?;
        let touch = params.touch_policy.needs_touch();
        let r = piv::sign_data(s.yk()?, &digest, AlgorithmId::EccP256, id);
        let der = r.map_err(|e| s.fail(e, Op::KeyUse { touch }))?;
        let sig = p256::ecdsa::Signature::from_der(&der)
            .map_err(|_| failed("sign", "the YubiKey returned a malformed signature"))?;
        vk.verify_prehash(&digest, &sig).map_err(|_| {
            failed(
                "sign",
                "the YubiKey's signature does not verify with the enrolled key",
            )
        })?;
        Ok(Signature {
            algorithm: SignAlgorithm::EcdsaP256Sha256,
            bytes: der.to_vec(),
        })
    }

    fn health(&self, enrollment: &Enrollment) -> Result<Health> {
        enrollment.check_kind(KIND)?;
        let params = Params::from_json(&enrollment.params)?;
        let (mut s, retries) = match self.start(params.serial) {
            Ok(x) => x,
            Err(Error::DeviceNotFound { hint, .. }) => {
                return Ok(Health {
                    present: false,
                    matches: false,
                    retries_left: None,
                    lockout_seconds: None,
                    detail: format!(
                        "YubiKey {} not found{}",
                        params.serial,
                        hint.map(|h| format!(" ({h})")).unwrap_or_default()
                    ),
                });
            }
            Err(Error::WrongDevice { found, .. }) => {
                return Ok(Health {
                    present: false,
                    matches: false,
                    retries_left: None,
                    lockout_seconds: None,
                    detail: format!("YubiKey {} not found; found {found} instead", params.serial),
                });
            }
            Err(e) => return Err(e),
        };
        let (matches, detail) = match check_slot(&mut s, &params, &enrollment.public_key) {
            Ok(()) => (
                true,
                format!(
                    "{} present, key matches, {retries} PIN tries left",
                    description(&params)
                ),
            ),
            Err(e @ (Error::WrongDevice { .. } | Error::Device { .. })) => (false, e.to_string()),
            Err(e) => return Err(e),
        };
        Ok(Health {
            present: true,
            matches,
            retries_left: Some(u32::from(retries)),
            lockout_seconds: None,
            detail,
        })
    }

    /// Drops every card handle: the PC/SC connection closes and the card
    /// forgets the verified PIN.
    fn end_session(&self) {
        self.lock().clear();
    }
}

// ---- helpers ------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_parsing() {
        assert_eq!(parse_serial("12345678").expect("serial"), 12_345_678);
        assert_eq!(parse_serial(" yubikey:7 ").expect("serial"), 7);
        for bad in ["", "-1", "0x10", "4294967296", "abc"] {
            assert!(parse_serial(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pin_format() {
        for ok in ["123456", "1234567", "abcdefgh"] {
            check_pin_format(ok, "PIN").expect(ok);
        }
        for bad in ["", "12345", "123456789", "12345é"] {
            assert!(check_pin_format(bad, "PIN").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn management_key_algorithm_by_firmware() {
        let k = random_management_key(yubikey::Version::new([5, 4, 3])).expect("key");
        assert_eq!(k.algorithm_id(), MgmAlgorithmId::Aes256);
        let k = random_management_key(yubikey::Version::new([5, 2, 7])).expect("key");
        assert_eq!(k.algorithm_id(), MgmAlgorithmId::ThreeDes);
        let k = random_management_key(yubikey::Version::new([4, 3, 5])).expect("key");
        assert_eq!(k.algorithm_id(), MgmAlgorithmId::ThreeDes);
    }

    #[test]
    fn wrap_needs_only_the_public_key() {
        use keyward_kms::backend::Backend as _;
        let sk = ecies::random_scalar().expect("rng");
        let e = Enrollment {
            kind: BackendKind::Yubikey,
            device_id: Some("1".into()),
            public_key: ecies::compress(&sk.public_key()).to_vec(),
            params: serde_json::json!({}),
        };
        let secret = Secret32::try_from_slice(&[7; 32]).expect("32");
        let w = Backend::new().wrap(&e, &secret, b"aad").expect("wrap");
        let out = ecies::open(&e.public_key, &w.0, b"aad", |epk| Ok(ecies::ecdh(&sk, epk)))
            .expect("open");
        assert_eq!(out.expose(), secret.expose());
        let mut other = e.clone();
        other.kind = BackendKind::Tpm;
        assert!(Backend::new().wrap(&other, &secret, b"aad").is_err());
    }
}
