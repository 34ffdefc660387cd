//! The YubiKey backend against the PIV card simulator on a private pcscd
//! (issue 4): hygiene, slot choice, PIN handling, several cards, removal,
//! touch, signatures checked by p256 and openssl, and the Service.
//!
//! Needs `pcscd`, `vsmartcard-vpcd` and `openssl` (Debian packages of the
//! same names). Tests run one at a time (nextest group `piv`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use keyward_backends::yubikey::{self, Backend as YubikeyBackend};
use keyward_hw_mocks::piv::{CardConfig, PivFixture, Touch, VirtualCard};
use keyward_kms::backend::options::{PivSlot, YubikeyOptions};
use keyward_kms::backend::{
    Backend, EnrollOptions, EnrollRequest, Enrollment, Notice, SecretRequest,
};
use keyward_kms::crypto::ecies;
use keyward_kms::error::DeviceError;
use keyward_kms::secret::{Secret32, SecretString};
use keyward_kms::service::{Backends, KeySpec, UnlockWith};
use keyward_kms::{Callbacks, DataClass, Error, KeyName, KeyPurpose, Result, SecretKind, Service};
use keyward_tests::TestCallbacks;
use keyward_tests::yubikey_fixture::{
    YK_OTHER_SERIAL, YK_PIN, YK_PUK, YK_SERIAL, YK_WRONG_PIN, YubikeyFixture,
};
use p256::ecdsa::signature::Verifier as _;

const AAD: &[u8] = b"keyward piv backend test";

fn request() -> EnrollRequest {
    EnrollRequest {
        label: "simulated YubiKey".into(),
        device: Some(YK_SERIAL.to_string()),
        options: EnrollOptions::None,
    }
}

fn request_with(options: YubikeyOptions) -> EnrollRequest {
    EnrollRequest {
        options: EnrollOptions::Yubikey(options),
        ..request()
    }
}

fn slot(hex: &str) -> PivSlot {
    hex.parse().expect("retired slot")
}

fn right() -> TestCallbacks {
    TestCallbacks::new().answer(SecretKind::Pin, YK_PIN)
}

fn wrong() -> TestCallbacks {
    TestCallbacks::new().answer(SecretKind::Pin, YK_WRONG_PIN)
}

fn secret() -> Secret32 {
    Secret32::try_from_slice(&[0x5a; 32]).expect("32 bytes")
}

fn params(e: &Enrollment) -> yubikey::Params {
    serde_json::from_value(e.params.clone()).expect("YubiKey descriptor")
}

fn touch_notices(ui: &TestCallbacks) -> usize {
    ui.notices()
        .iter()
        .filter(|n| n.contains("TouchRequired"))
        .count()
}

#[test]
fn enroll_wrap_unwrap_with_defaults() {
    let f = YubikeyFixture::new();
    let yk = f.yubikey();
    let ui = right();
    let e = yk.enroll(&request(), &ui).expect("enroll");
    assert_eq!(e.device_id.as_deref(), Some("12345678"));
    assert_eq!(e.public_key.len(), 33);
    let p = params(&e);
    assert_eq!((p.serial, p.slot.as_str()), (YK_SERIAL, "82"));
    assert_eq!(p.pin_policy, yubikey::Pin::Once);
    assert_eq!(p.touch_policy, yubikey::Touch::Always);
    // On the card: a generated P-256 key with PIN once (2), touch always
    // (2), and the keyward certificate in the slot's object (5FC10D).
    let (pin_policy, touch_policy, origin, point) = f.piv().card.card(|c| {
        let slot = &c.piv_state().slots[&0x82];
        (
            slot.pin_policy,
            slot.touch_policy,
            slot.origin,
            slot.key.public_point(),
        )
    });
    assert_eq!((pin_policy, touch_policy, origin), (2, 2, 1));
    let card_pk = ecies::parse_public_key(&point).expect("P-256");
    assert_eq!(
        ecies::compress(&card_pk).as_slice(),
        e.public_key.as_slice()
    );
    let cert = f
        .piv()
        .card
        .card(|c| c.piv_state().objects.get(&[0x5f, 0xc1, 0x0d][..]).cloned())
        .expect("certificate object written");
    assert!(
        cert.windows(7).any(|w| w == b"keyward"),
        "certificate names keyward"
    );
    assert_eq!(touch_notices(&ui), 1, "touch announced for the certificate");

    let w = yk.wrap(&e, &secret(), AAD).expect("wrap");
    let ui = right();
    let out = yk.unwrap(&e, &w, AAD, &ui).expect("unwrap");
    assert_eq!(out.expose(), secret().expose());
    let prompts = ui.prompts();
    assert_eq!(prompts.len(), 1);
    assert_eq!(
        prompts[0].retries_left,
        Some(3),
        "retries shown in the prompt"
    );
    assert_eq!(touch_notices(&ui), 1, "touch announced before ECDH");
    assert!(f.piv().card.card(|c| c.touches()) >= 2);

    // A second enrollment takes the next free retired slot.
    let e2 = yk.enroll(&request(), &right()).expect("enroll again");
    assert_eq!(params(&e2).slot, "83");
    assert_ne!(e2.public_key, e.public_key);
}

#[test]
fn factory_defaults_are_refused_until_setup() {
    let f = YubikeyFixture::unconfigured();
    let yk = f.yubikey();
    let ui = TestCallbacks::new().answer(SecretKind::Pin, "123456");
    let err = yk.enroll(&request(), &ui).expect_err("defaults");
    match &err {
        Error::Device {
            error: error @ DeviceError::DefaultCredentials { .. },
            ..
        } => {
            assert_eq!(error.code(), "default-credentials");
            let message = error.to_string();
            assert!(message.contains("PIN, PUK, management key"), "{message}");
            assert!(message.contains("keyward yubikey setup"), "{message}");
        }
        other => panic!("expected a Device error, got {other:?}"),
    }
    assert_eq!(ui.prompt_count(), 0, "no PIN asked for or sent");
    assert!(
        !f.piv().card.card(|c| c
            .piv_state()
            .slots
            .keys()
            .any(|s| (0x82..=0x95).contains(s))),
        "nothing generated"
    );

    let d = yk.factory_defaults(None).expect("defaults");
    assert_eq!(d.serial, YK_SERIAL);
    assert!(d.pin && d.puk && d.management_key, "{d:?}");
    let r = yk.setup(
        None,
        None,
        Some(&SecretString::from(YK_PUK)),
        &TestCallbacks::new(),
    );
    assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");

    // Refused new secrets.
    for (pin, puk) in [("12345", YK_PUK), (YK_PIN, "123456789"), ("123456", YK_PUK)] {
        let r = yk.setup(
            None,
            Some(&SecretString::from(pin)),
            Some(&SecretString::from(puk)),
            &TestCallbacks::new(),
        );
        assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
    }

    let report = yk
        .setup(
            None,
            Some(&SecretString::from(YK_PIN)),
            Some(&SecretString::from(YK_PUK)),
            &TestCallbacks::new(),
        )
        .expect("setup");
    assert_eq!(report.serial, YK_SERIAL);
    assert!(report.pin_changed && report.puk_changed && report.management_key_changed);
    let (mgmt_alg, mgmt_default, protected) = f.piv().card.card(|c| {
        let s = c.piv_state();
        (
            s.mgmt_alg,
            s.mgmt_default,
            s.objects.contains_key(&[0x5f, 0xc1, 0x09][..]),
        )
    });
    assert_eq!(mgmt_alg, 0x0c, "AES-256 on firmware 5.4.3");
    assert!(!mgmt_default);
    assert!(
        protected,
        "management key stored in the PIN-protected object"
    );

    let d = yk.factory_defaults(Some("12345678")).expect("defaults");
    assert!(!d.pin && !d.puk && !d.management_key, "{d:?}");

    // Running setup again asks for the current PIN and changes nothing.
    let ui = right();
    let again = yk
        .setup(Some("12345678"), None, None, &ui)
        .expect("setup is idempotent");
    assert!(!again.pin_changed && !again.puk_changed && !again.management_key_changed);
    assert_eq!(ui.prompt_count(), 1);

    yk.enroll(&request(), &right()).expect("enroll after setup");
}

#[test]
fn firmware_before_5_4_gets_a_3des_management_key() {
    let piv = PivFixture::start(CardConfig {
        serial: YK_SERIAL,
        version: [5, 3, 1],
        ..CardConfig::default()
    })
    .expect("pcscd + vpcd + simulator");
    let yk = YubikeyBackend::new();
    let report = yk
        .setup(
            None,
            Some(&SecretString::from(YK_PIN)),
            Some(&SecretString::from(YK_PUK)),
            &TestCallbacks::new(),
        )
        .expect("setup");
    assert!(report.management_key_changed);
    assert_eq!(piv.card.card(|c| c.piv_state().mgmt_alg), 0x03);
    let e = yk.enroll(&request(), &right()).expect("enroll");
    let w = yk.wrap(&e, &secret(), AAD).expect("wrap");
    let out = yk.unwrap(&e, &w, AAD, &right()).expect("unwrap");
    assert_eq!(out.expose(), secret().expose());
}

#[test]
fn wrong_pin_shows_retries_and_changes_nothing() {
    let f = YubikeyFixture::new();
    let yk = f.yubikey();
    let e = yk.enroll(&request(), &right()).expect("enroll");
    let w = yk.wrap(&e, &secret(), AAD).expect("wrap");
    let slots_before = f.piv().card.card(|c| c.piv_state().slots.len());

    let bad = wrong();
    let err = yk.unwrap(&e, &w, AAD, &bad).expect_err("wrong PIN");
    assert!(
        matches!(
            err,
            Error::WrongPin {
                retries_left: Some(2)
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "wrong PIN (2 tries left)");
    assert_eq!(bad.prompt_count(), 1, "one prompt, never retried");
    assert_eq!(
        touch_notices(&bad),
        0,
        "no touch asked for after a wrong PIN"
    );
    assert_eq!(f.piv().card.card(|c| c.piv_state().pin.left), 2);
    assert_eq!(
        f.piv().card.card(|c| c.piv_state().slots.len()),
        slots_before
    );
    let health = yk.health(&e).expect("health");
    assert!(health.present && health.matches, "{health:?}");
    assert_eq!(health.retries_left, Some(2));

    let ui = right();
    let out = yk.unwrap(&e, &w, AAD, &ui).expect("right PIN");
    assert_eq!(out.expose(), secret().expose());
    assert_eq!(ui.prompts()[0].retries_left, Some(2), "prompt shows 2 left");
    assert_eq!(f.piv().card.card(|c| c.piv_state().pin.left), 3);
}

#[test]
fn blocked_pin_is_reported_without_prompt() {
    let f = YubikeyFixture::new();
    let yk = f.yubikey();
    let e = yk.enroll(&request(), &right()).expect("enroll");
    let w = yk.wrap(&e, &secret(), AAD).expect("wrap");
    for expected in [Some(2), Some(1)] {
        match yk.unwrap(&e, &w, AAD, &wrong()) {
            Err(Error::WrongPin { retries_left }) => assert_eq!(retries_left, expected),
            other => panic!("expected WrongPin, got {other:?}"),
        }
    }
    let err = yk.unwrap(&e, &w, AAD, &wrong()).expect_err("last try");
    assert!(matches!(err, Error::PinBlocked), "{err:?}");
    let ui = right();
    let err = yk.unwrap(&e, &w, AAD, &ui).expect_err("blocked");
    assert!(matches!(err, Error::PinBlocked), "{err:?}");
    assert_eq!(ui.prompt_count(), 0, "no prompt when blocked");
    let err = yk.sign(&e, b"m", &ui).expect_err("blocked");
    assert!(matches!(err, Error::PinBlocked), "{err:?}");
    assert_eq!(ui.prompt_count(), 0);
}

#[test]
fn short_or_long_pin_is_refused_without_spending_a_try() {
    let f = YubikeyFixture::new();
    let yk = f.yubikey();
    let e = yk.enroll(&request(), &right()).expect("enroll");
    let w = yk.wrap(&e, &secret(), AAD).expect("wrap");
    for pin in ["12345", "123456789"] {
        let ui = TestCallbacks::new().answer(SecretKind::Pin, pin);
        let err = yk.unwrap(&e, &w, AAD, &ui).expect_err("bad format");
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    }
    assert_eq!(f.piv().card.card(|c| c.piv_state().pin.left), 3);
}

#[test]
fn second_card_is_not_mistaken_for_the_enrolled_one() {
    let f = YubikeyFixture::new();
    f.insert_other();
    let yk = f.yubikey();

    // Two cards: devices() lists both, enrolling without a serial is refused.
    let mut ids: Vec<String> = yk
        .devices()
        .expect("devices")
        .into_iter()
        .map(|d| d.id)
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![YK_SERIAL.to_string(), YK_OTHER_SERIAL.to_string()]
    );
    let err = yk
        .enroll(
            &EnrollRequest {
                device: None,
                ..request()
            },
            &right(),
        )
        .expect_err("ambiguous");
    assert!(err.to_string().contains("--serial"), "{err}");

    // By serial it works with both present, and unwrap picks the right one.
    let e = yk.enroll(&request(), &right()).expect("enroll by serial");
    assert!(
        f.piv()
            .card
            .card(|c| c.piv_state().slots.contains_key(&0x82)),
        "key generated on the named card"
    );
    let w = yk.wrap(&e, &secret(), AAD).expect("wrap");
    let out = yk.unwrap(&e, &w, AAD, &right()).expect("unwrap, two cards");
    assert_eq!(out.expose(), secret().expose());

    // Only the other card: WrongDevice before any PIN, naming both serials.
    f.pull();
    let ui = right();
    let err = yk.unwrap(&e, &w, AAD, &ui).expect_err("wrong device");
    match &err {
        Error::WrongDevice { expected, found } => {
            assert!(expected.contains("12345678"), "{expected}");
            assert!(found.contains("87654321"), "{found}");
        }
        other => panic!("expected WrongDevice, got {other:?}"),
    }
    assert_eq!(ui.prompt_count(), 0, "no PIN for the wrong card");
    let health = yk.health(&e).expect("health");
    assert!(!health.matches, "{health:?}");

    f.insert();
    let out = yk
        .unwrap(&e, &w, AAD, &right())
        .expect("enrolled card back");
    assert_eq!(out.expose(), secret().expose());
}

/// Pulls the card when the PIN is asked for: the removal happens in the
/// middle of the unlock, between the checks and VERIFY.
struct PullOnPrompt<'a> {
    card: &'a VirtualCard,
    pulled: AtomicBool,
    inner: TestCallbacks,
}

impl Callbacks for PullOnPrompt<'_> {
    fn request_secret(&self, request: &SecretRequest<'_>) -> Result<SecretString> {
        if !self.pulled.swap(true, Ordering::SeqCst) {
            self.card.pull_on_next_apdu();
        }
        self.inner.request_secret(request)
    }

    fn notify(&self, notice: &Notice<'_>) {
        self.inner.notify(notice);
    }

    fn show_secret(&self, title: &str, secret: &SecretString) -> Result<()> {
        self.inner.show_secret(title, secret)
    }
}

#[test]
fn card_pulled_mid_unlock_then_next_attempt_works() {
    let f = YubikeyFixture::new();
    let yk = f.yubikey();
    let e = yk.enroll(&request(), &right()).expect("enroll");
    let w = yk.wrap(&e, &secret(), AAD).expect("wrap");
    let ui = PullOnPrompt {
        card: &f.piv().card,
        pulled: AtomicBool::new(false),
        inner: right(),
    };
    let err = yk.unwrap(&e, &w, AAD, &ui).expect_err("card pulled");
    assert!(matches!(err, Error::DeviceRemoved), "{err:?}");
    assert_eq!(
        err.to_string(),
        "the device was removed during the operation"
    );
    assert_eq!(
        f.piv().card.card(|c| c.piv_state().pin.left),
        3,
        "no PIN try lost"
    );

    // While it is out: not found, no prompt.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let ui2 = right();
    let err = yk.unwrap(&e, &w, AAD, &ui2).expect_err("absent");
    assert!(matches!(err, Error::DeviceNotFound { .. }), "{err:?}");
    assert_eq!(ui2.prompt_count(), 0);

    f.insert();
    let out = yk
        .unwrap(&e, &w, AAD, &right())
        .expect("next attempt works");
    assert_eq!(out.expose(), secret().expose());
}

#[test]
fn card_pulled_and_reinserted_between_operations_is_reopened() {
    let f = YubikeyFixture::new();
    let yk = f.yubikey();
    let e = yk.enroll(&request(), &right()).expect("enroll");
    let w = yk.wrap(&e, &secret(), AAD).expect("wrap");
    f.pull();
    f.insert();
    let out = yk
        .unwrap(&e, &w, AAD, &right())
        .expect("stale handle reopened silently");
    assert_eq!(out.expose(), secret().expose());
}

#[test]
fn touch_timeout_and_touch_policies() {
    let f = YubikeyFixture::new();
    let yk = f.yubikey();
    let e = yk.enroll(&request(), &right()).expect("enroll");
    let w = yk.wrap(&e, &secret(), AAD).expect("wrap");
    f.piv().card.card(|c| c.set_touch(Touch::Deny));
    let ui = right();
    let err = yk.unwrap(&e, &w, AAD, &ui).expect_err("no touch");
    assert!(matches!(err, Error::TouchTimeout), "{err:?}");
    assert_eq!(touch_notices(&ui), 1);
    f.piv().card.card(|c| c.set_touch(Touch::Approve));
    yk.unwrap(&e, &w, AAD, &right()).expect("touched this time");

    // touch=never, pin-policy=always: no touch notice; PIN every time.
    let e2 = yk
        .enroll(
            &request_with(YubikeyOptions {
                touch: yubikey::Touch::Never,
                pin_policy: yubikey::Pin::Always,
                ..YubikeyOptions::default()
            }),
            &right(),
        )
        .expect("enroll never/always");
    let (pin_policy, touch_policy) = f.piv().card.card(|c| {
        let s = &c.piv_state().slots[&0x83];
        (s.pin_policy, s.touch_policy)
    });
    assert_eq!((pin_policy, touch_policy), (3, 1));
    let w2 = yk.wrap(&e2, &secret(), AAD).expect("wrap");
    for _ in 0..2 {
        let ui = right();
        yk.unwrap(&e2, &w2, AAD, &ui).expect("unwrap");
        assert_eq!(touch_notices(&ui), 0);
        assert_eq!(ui.prompt_count(), 1);
    }
    let e3 = yk
        .enroll(
            &request_with(YubikeyOptions {
                touch: yubikey::Touch::Cached,
                slot: Some(slot("90")),
                ..YubikeyOptions::default()
            }),
            &right(),
        )
        .expect("enroll cached in 90");
    assert_eq!(params(&e3).slot, "90");
    assert_eq!(
        f.piv()
            .card
            .card(|c| c.piv_state().slots[&0x90].touch_policy),
        3
    );
}

#[test]
fn occupied_slots_are_never_overwritten_unless_asked() {
    let f = YubikeyFixture::new();
    let yk = f.yubikey();
    let e = yk.enroll(&request(), &right()).expect("enroll");
    let w = yk.wrap(&e, &secret(), AAD).expect("wrap");
    let ui = right();
    let err = yk
        .enroll(
            &request_with(YubikeyOptions {
                slot: Some(slot("82")),
                ..YubikeyOptions::default()
            }),
            &ui,
        )
        .expect_err("occupied");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    assert!(err.to_string().contains("overwrite"), "{err}");
    // Standard slots cannot be named: the option is refused as it is made.
    for standard in ["9a", "9c", "9d", "9e"] {
        let err = standard.parse::<PivSlot>().expect_err("standard slot");
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    }
    assert!(
        !f.piv()
            .card
            .card(|c| c.piv_state().slots.contains_key(&0x9a)),
        "standard slots untouched"
    );

    // With overwrite the old key is replaced: the old enrollment now finds
    // a foreign key and says so before any PIN.
    let e2 = yk
        .enroll(
            &request_with(YubikeyOptions {
                slot: Some(slot("82")),
                overwrite: true,
                ..YubikeyOptions::default()
            }),
            &right(),
        )
        .expect("overwrite");
    assert_ne!(e2.public_key, e.public_key);
    let ui = right();
    let err = yk.unwrap(&e, &w, AAD, &ui).expect_err("foreign key");
    assert!(matches!(err, Error::WrongDevice { .. }), "{err:?}");
    assert!(
        err.to_string().contains("another key in that slot"),
        "{err}"
    );
    assert_eq!(ui.prompt_count(), 0);

    // An emptied slot is reported as such, before any PIN.
    f.piv().card.card(|c| {
        let mut s = c.piv_state().clone();
        s.slots.remove(&0x82);
        c.set_piv_state(s);
    });
    let err = yk.unwrap(&e2, &w, AAD, &ui).expect_err("empty slot");
    match &err {
        Error::Device {
            error: error @ DeviceError::Piv { sw: 0x6A82, .. },
            ..
        } => {
            assert_eq!(error.code(), "6A82");
            let message = error.to_string();
            assert!(message.contains("is empty"), "{message}");
        }
        other => panic!("expected Device 6A82, got {other:?}"),
    }
    assert_eq!(ui.prompt_count(), 0);
}

#[test]
fn signature_verifies_with_p256_and_openssl() {
    let f = YubikeyFixture::new();
    let yk = f.yubikey();
    let e = yk.enroll(&request(), &right()).expect("enroll");
    let msg = b"keyward: signed by a simulated YubiKey";
    let ui = right();
    let sig = yk.sign(&e, msg, &ui).expect("sign");
    assert_eq!(touch_notices(&ui), 1);
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&e.public_key).expect("key");
    let parsed = p256::ecdsa::Signature::from_der(&sig.bytes).expect("DER");
    vk.verify(msg, &parsed).expect("p256 verifies");

    let pem = YubikeyBackend::public_key_pem(&e).expect("PEM");
    keyward_tests::assert_openssl_verifies(&pem, &sig.bytes, msg);
}

#[test]
fn pcscd_not_running_gives_a_hint() {
    let mut piv = PivFixture::start(CardConfig::default()).expect("pcscd + vpcd + simulator");
    piv.pcscd.stop().expect("stop pcscd");
    let yk = YubikeyBackend::new();
    let err = yk.devices().expect_err("no pcscd");
    assert!(matches!(err, Error::DeviceNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("is pcscd running?"), "{err}");
    let err = yk.enroll(&request(), &right()).expect_err("no pcscd");
    assert!(err.to_string().contains("is pcscd running?"), "{err}");
}

#[test]
fn service_init_rotate_lock_unlock() {
    let f = YubikeyFixture::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keystore.db");
    let mut backends = Backends::software();
    backends.add(f.yubikey() as Arc<dyn Backend>);
    let ui = right();
    let (mut service, info) = Service::init(
        &path,
        backends.clone(),
        keyward_kms::backend::BackendKind::Yubikey,
        &request(),
        &ui,
    )
    .expect("init with the YubiKey");
    assert_eq!(info.device_id.as_deref(), Some("12345678"));
    let name = KeyName::new("assistant-notes").expect("name");
    service
        .create_key(
            &name,
            &KeySpec {
                purpose: KeyPurpose::Encrypt,
                class: DataClass::Private,
                rotation_period: None,
                usage_limit: None,
            },
        )
        .expect("create key");
    let ct = service
        .encrypt(&name, b"notes", b"dear diary")
        .expect("encrypt");
    let prompts = ui.prompt_count();
    f.pull();
    assert_eq!(
        service.rotate_master().expect("rotation without the card"),
        2
    );
    assert_eq!(ui.prompt_count(), prompts);
    f.insert();
    service.lock();
    assert!(matches!(service.decrypt(b"notes", &ct), Err(Error::Locked)));
    let err = service
        .unlock(UnlockWith::Any, &wrong())
        .expect_err("wrong PIN");
    assert!(matches!(err, Error::WrongPin { .. }), "{err:?}");
    let ui = right();
    service.unlock(UnlockWith::Any, &ui).expect("unlock");
    assert_eq!(touch_notices(&ui), 1);
    let out = service.decrypt(b"notes", &ct).expect("decrypt");
    assert_eq!(out.plaintext.expose(), b"dear diary");
    drop(service);
    let mut service = Service::open(&path, backends).expect("reopen");
    service.unlock(UnlockWith::Any, &right()).expect("unlock");
    assert_eq!(service.status().expect("status").mk_epoch, 2);
}

/// Against a real YubiKey (already set up with `keyward yubikey setup`,
/// or ykman with a PIN-protected management key). Uses a free retired
/// slot and leaves the key there. `YUBIKEY_PIN` gives the PIN.
#[test]
#[ignore = "needs a real YubiKey: set YUBIKEY_SERIAL"]
fn real_yubikey_round_trip() {
    let Ok(serial) = std::env::var("YUBIKEY_SERIAL") else {
        return;
    };
    let pin = std::env::var("YUBIKEY_PIN").expect("set YUBIKEY_PIN too");
    let yk = YubikeyBackend::new();
    let ui = TestCallbacks::new().answer(SecretKind::Pin, &pin);
    let e = yk
        .enroll(
            &EnrollRequest {
                label: "real YubiKey".into(),
                device: Some(serial),
                options: EnrollOptions::Yubikey(YubikeyOptions {
                    touch: yubikey::Touch::Cached,
                    ..YubikeyOptions::default()
                }),
            },
            &ui,
        )
        .expect("enroll (touch the key)");
    let w = yk.wrap(&e, &secret(), AAD).expect("wrap");
    let out = yk.unwrap(&e, &w, AAD, &ui).expect("unwrap (touch)");
    assert_eq!(out.expose(), secret().expose());
    let sig = yk.sign(&e, b"real", &ui).expect("sign (touch)");
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&e.public_key).expect("key");
    vk.verify(
        b"real",
        &p256::ecdsa::Signature::from_der(&sig.bytes).expect("DER"),
    )
    .expect("verifies");
}
