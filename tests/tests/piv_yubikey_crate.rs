//! The unmodified `yubikey` crate (=0.9.0-rc.0) against the PIV simulator
//! on the real pcscd + vpcd stack. Each test starts its own pcscd and card;
//! the fixture's machine-wide lock (and the nextest `piv` test group)
//! serializes them.

use std::time::{Duration, Instant};

use der::Encode;
use keyward_hw_mocks::piv::{CardConfig, PivFixture, card::attestation_key};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::elliptic_curve::sec1::ToSec1Point;
use sha2::{Digest, Sha256};
use yubikey::certificate::CertInfo;
use yubikey::piv::{
    self, AlgorithmId, ManagementSlotId, Origin, RetiredSlotId, SlotAlgorithmId, SlotId,
};
use yubikey::{Certificate, Error, MgmAlgorithmId, MgmKey, PinPolicy, TouchPolicy, YubiKey};

fn fixture() -> PivFixture {
    fixture_with(CardConfig::default())
}

fn fixture_with(cfg: CardConfig) -> PivFixture {
    PivFixture::start(cfg)
        .expect("pcscd + vpcd + simulator (apt-get install pcscd vsmartcard-vpcd)")
}

fn admin(yk: &mut YubiKey) {
    let key = MgmKey::get_default(yk).expect("default key");
    yk.authenticate(&key).expect("default management key");
}

fn point(spki: &x509_cert::spki::SubjectPublicKeyInfoOwned) -> Vec<u8> {
    spki.subject_public_key.raw_bytes().to_vec()
}

#[test]
fn opens_and_reads_version_and_serial() {
    let _f = fixture();
    let yk = YubiKey::open().expect("open");
    assert_eq!(yk.version().to_string(), "5.4.3");
    assert_eq!(u32::from(yk.serial()), 12_345_678);
    drop(yk);
    let yk = YubiKey::open_by_serial(12_345_678.into()).expect("open by serial");
    assert_eq!(yk.name(), "Virtual PCD 00 00");
}

#[test]
fn pin_retries_blocking_and_unblock() {
    let _f = fixture();
    let mut yk = YubiKey::open().expect("open");
    assert_eq!(yk.get_pin_retries().expect("retries"), 3);
    match yk.verify_pin(b"654321") {
        Err(Error::WrongPin { tries }) => assert_eq!(tries, 2),
        other => panic!("expected WrongPin, got {other:?}"),
    }
    assert_eq!(yk.get_pin_retries().expect("retries"), 2);
    yk.verify_pin(b"123456").expect("right PIN");
    assert_eq!(
        yk.get_pin_retries().expect("retries"),
        3,
        "reset by success"
    );
    for expected in [2, 1, 0] {
        match yk.verify_pin(b"000000") {
            Err(Error::WrongPin { tries }) => assert_eq!(tries, expected),
            other => panic!("expected WrongPin, got {other:?}"),
        }
    }
    // Blocked: even the right PIN is refused.
    assert!(matches!(
        yk.verify_pin(b"123456"),
        Err(Error::WrongPin { tries: 0 })
    ));
    assert_eq!(yk.get_pin_retries().expect("retries"), 0);
    let meta = piv::metadata(&mut yk, SlotId::Management(ManagementSlotId::Pin)).expect("pin md");
    assert_eq!(meta.retries.map(|r| r.remaining_count), Some(0));
    // The PUK unblocks it with a new PIN.
    yk.unblock_pin(b"12345678", b"24681357").expect("unblock");
    yk.verify_pin(b"24681357").expect("new PIN");
    yk.change_pin(b"24681357", b"11112222").expect("change PIN");
    yk.verify_pin(b"11112222").expect("changed PIN");
}

#[test]
fn management_keys_3des_and_aes() {
    let _f = fixture();
    let mut yk = YubiKey::open().expect("open");
    let wrong = MgmKey::from_bytes([9u8; 24], Some(MgmAlgorithmId::ThreeDes)).expect("key");
    assert!(matches!(
        yk.authenticate(&wrong),
        Err(Error::AuthenticationError)
    ));
    admin(&mut yk);
    let md = piv::metadata(&mut yk, SlotId::Management(ManagementSlotId::Management))
        .expect("mgmt metadata");
    assert_eq!(
        md.algorithm,
        SlotAlgorithmId::Management(MgmAlgorithmId::ThreeDes)
    );
    assert_eq!(md.default, Some(true));
    for (alg, len) in [
        (MgmAlgorithmId::Aes128, 16u8),
        (MgmAlgorithmId::Aes192, 24),
        (MgmAlgorithmId::Aes256, 32),
        (MgmAlgorithmId::ThreeDes, 24),
    ] {
        let bytes: Vec<u8> = (0..len).map(|i| 0x30 + i).collect();
        let key = MgmKey::from_bytes(&bytes, Some(alg)).expect("key");
        key.set_manual(&mut yk, false).expect("set management key");
        yk.authenticate(&key)
            .expect("authenticate with the new key");
        let md = piv::metadata(&mut yk, SlotId::Management(ManagementSlotId::Management))
            .expect("mgmt metadata");
        assert_eq!(md.algorithm, SlotAlgorithmId::Management(alg));
        assert_eq!(md.default, Some(false));
        // The old default no longer works.
        let default = MgmKey::get_default(&yk).expect("default");
        assert!(yk.authenticate(&default).is_err());
        yk.authenticate(&key).expect("re-authenticate");
    }
}

#[test]
fn firmware_5_7_defaults_to_aes192() {
    let _f = fixture_with(CardConfig {
        version: [5, 7, 1],
        ..CardConfig::default()
    });
    let mut yk = YubiKey::open().expect("open");
    assert_eq!(yk.version().to_string(), "5.7.1");
    let key = MgmKey::get_default(&yk).expect("default");
    assert_eq!(key.algorithm_id(), MgmAlgorithmId::Aes192);
    yk.authenticate(&key)
        .expect("AES-192 default management key");
}

#[test]
fn generate_ecdh_and_sign_p256() {
    let _f = fixture();
    let mut yk = YubiKey::open().expect("open");
    // Without the management key, GENERATE is refused.
    assert!(matches!(
        piv::generate(
            &mut yk,
            SlotId::KeyManagement,
            AlgorithmId::EccP256,
            PinPolicy::Default,
            TouchPolicy::Default
        ),
        Err(Error::AuthenticationError)
    ));
    admin(&mut yk);
    let spki = piv::generate(
        &mut yk,
        SlotId::KeyManagement,
        AlgorithmId::EccP256,
        PinPolicy::Default,
        TouchPolicy::Default,
    )
    .expect("generate 9d");
    let card_pub = p256::PublicKey::from_sec1_bytes(&point(&spki)).expect("P-256 point");

    // ECDH needs the PIN (policy once).
    let host = p256::SecretKey::from_slice(&[0x11; 32]).expect("scalar");
    let host_point = host.public_key().to_sec1_point(false);
    assert!(
        piv::decrypt_data(
            &mut yk,
            host_point.as_bytes(),
            AlgorithmId::EccP256,
            SlotId::KeyManagement
        )
        .is_err()
    );
    yk.verify_pin(b"123456").expect("PIN");
    let shared = piv::decrypt_data(
        &mut yk,
        host_point.as_bytes(),
        AlgorithmId::EccP256,
        SlotId::KeyManagement,
    )
    .expect("ECDH");
    let expected = p256::ecdh::diffie_hellman(host.to_nonzero_scalar(), card_pub.as_affine());
    assert_eq!(shared.as_slice(), expected.raw_secret_bytes().as_slice());

    // ECDSA in 9a.
    let spki = piv::generate(
        &mut yk,
        SlotId::Authentication,
        AlgorithmId::EccP256,
        PinPolicy::Default,
        TouchPolicy::Default,
    )
    .expect("generate 9a");
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point(&spki)).expect("vk");
    let digest = Sha256::digest(b"keyward piv simulator");
    let der_sig = piv::sign_data(
        &mut yk,
        &digest,
        AlgorithmId::EccP256,
        SlotId::Authentication,
    )
    .expect("sign");
    let sig = p256::ecdsa::Signature::from_der(&der_sig).expect("DER signature");
    vk.verify_prehash(&digest, &sig)
        .expect("signature verifies");
    let other = Sha256::digest(b"something else");
    assert!(vk.verify_prehash(&other, &sig).is_err());
}

#[test]
fn signature_slot_needs_pin_every_time_and_p384() {
    let _f = fixture();
    let mut yk = YubiKey::open().expect("open");
    admin(&mut yk);
    let spki = piv::generate(
        &mut yk,
        SlotId::Signature,
        AlgorithmId::EccP384,
        PinPolicy::Default,
        TouchPolicy::Default,
    )
    .expect("generate P-384 in 9c");
    let vk = p384::ecdsa::VerifyingKey::from_sec1_bytes(&point(&spki)).expect("vk");
    let digest = [0x5Au8; 48];
    yk.verify_pin(b"123456").expect("PIN");
    let der_sig =
        piv::sign_data(&mut yk, &digest, AlgorithmId::EccP384, SlotId::Signature).expect("sign");
    let sig = p384::ecdsa::Signature::from_der(&der_sig).expect("DER");
    vk.verify_prehash(&digest, &sig)
        .expect("P-384 signature verifies");
    // PIN policy "always" (9c default): a second signature needs a new VERIFY.
    assert!(matches!(
        piv::sign_data(&mut yk, &digest, AlgorithmId::EccP384, SlotId::Signature),
        Err(Error::AuthenticationError)
    ));
    yk.verify_pin(b"123456").expect("PIN");
    piv::sign_data(&mut yk, &digest, AlgorithmId::EccP384, SlotId::Signature).expect("sign again");

    // P-384 ECDH in a retired slot with PIN policy never.
    piv::generate(
        &mut yk,
        SlotId::Retired(RetiredSlotId::R1),
        AlgorithmId::EccP384,
        PinPolicy::Never,
        TouchPolicy::Never,
    )
    .expect("generate 82");
    let host = p384::SecretKey::from_slice(&[0x22; 48]).expect("scalar");
    let md = piv::metadata(&mut yk, SlotId::Retired(RetiredSlotId::R1)).expect("metadata");
    let card_pub =
        p384::PublicKey::from_sec1_bytes(&point(&md.public.expect("public key"))).expect("pub");
    let shared = piv::decrypt_data(
        &mut yk,
        host.public_key().to_sec1_point(false).as_bytes(),
        AlgorithmId::EccP384,
        SlotId::Retired(RetiredSlotId::R1),
    )
    .expect("ECDH P-384");
    let expected = p384::ecdh::diffie_hellman(host.to_nonzero_scalar(), card_pub.as_affine());
    assert_eq!(shared.as_slice(), expected.raw_secret_bytes().as_slice());
}

#[test]
fn metadata_certificates_and_attestation() {
    let f = fixture();
    let mut yk = YubiKey::open().expect("open");
    assert!(matches!(
        piv::metadata(&mut yk, SlotId::Authentication),
        Err(Error::NotFound)
    ));
    admin(&mut yk);
    let spki = piv::generate(
        &mut yk,
        SlotId::Authentication,
        AlgorithmId::EccP256,
        PinPolicy::Once,
        TouchPolicy::Never,
    )
    .expect("generate");
    let md = piv::metadata(&mut yk, SlotId::Authentication).expect("metadata");
    assert_eq!(
        md.algorithm,
        SlotAlgorithmId::Asymmetric(AlgorithmId::EccP256)
    );
    assert_eq!(md.policy, Some((PinPolicy::Once, TouchPolicy::Never)));
    assert_eq!(md.origin, Some(Origin::Generated));
    assert_eq!(md.public.as_ref().map(point), Some(point(&spki)));
    let md = piv::metadata(&mut yk, SlotId::Management(ManagementSlotId::Puk)).expect("puk md");
    assert_eq!(md.retries.map(|r| r.remaining_count), Some(3));

    // ATTEST: an X.509 certificate (> 256 bytes: response chaining) for the
    // generated key, signed by the simulated attestation key.
    let att = piv::attest(&mut yk, SlotId::Authentication).expect("attest");
    assert!(att.len() > 256, "attestation is {} bytes", att.len());
    let cert = Certificate::from_bytes(att.to_vec()).expect("X.509");
    let tbs = cert.cert.tbs_certificate();
    assert_eq!(
        tbs.subject_public_key_info().subject_public_key.raw_bytes(),
        point(&spki).as_slice()
    );
    assert!(cert.subject().contains("YubiKey PIV Attestation 9a"));
    let ext = |oid: &str| {
        tbs.extensions()
            .expect("extensions")
            .iter()
            .find(|e| e.extn_id.to_string() == oid)
            .map(|e| e.extn_value.as_bytes().to_vec())
    };
    assert_eq!(ext("1.3.6.1.4.1.41482.3.3"), Some(vec![5, 4, 3]));
    assert_eq!(
        ext("1.3.6.1.4.1.41482.3.7"),
        Some(vec![0x02, 0x04, 0x00, 0xBC, 0x61, 0x4E])
    );
    assert_eq!(ext("1.3.6.1.4.1.41482.3.8"), Some(vec![2, 1]));
    let att_key = attestation_key(&f.card.card(|c| c.config().clone()));
    let vk = p256::ecdsa::VerifyingKey::from(att_key.public_key());
    let sig = p256::ecdsa::Signature::from_der(cert.cert.signature().raw_bytes()).expect("sig");
    vk.verify_prehash(&Sha256::digest(tbs.to_der().expect("tbs DER")), &sig)
        .expect("attestation signature verifies");
    // The attestation root (object 5FFF01) carries the same key.
    let root = Certificate::read(&mut yk, SlotId::Attestation).expect("attestation cert");
    assert_eq!(
        root.subject_pki().subject_public_key.raw_bytes(),
        att_key.public_key().to_sec1_point(false).as_bytes()
    );

    // Imported keys cannot be attested.
    piv::import_ecc_key(
        &mut yk,
        SlotId::CardAuthentication,
        AlgorithmId::EccP256,
        &[0x33; 32],
        TouchPolicy::Default,
        PinPolicy::Default,
    )
    .expect("import");
    let md = piv::metadata(&mut yk, SlotId::CardAuthentication).expect("metadata");
    assert_eq!(md.origin, Some(Origin::Imported));
    assert_eq!(md.policy, Some((PinPolicy::Never, TouchPolicy::Never)));
    assert!(piv::attest(&mut yk, SlotId::CardAuthentication).is_err());

    // Certificates: write (chained PUT DATA) and read back.
    cert.write(&mut yk, SlotId::Authentication, CertInfo::Uncompressed)
        .expect("write certificate");
    let back = Certificate::read(&mut yk, SlotId::Authentication).expect("read certificate");
    assert_eq!(
        back.cert.to_der().expect("der"),
        cert.cert.to_der().expect("der")
    );
    Certificate::delete(&mut yk, SlotId::Authentication).expect("delete");
    assert!(Certificate::read(&mut yk, SlotId::Authentication).is_err());
}

#[test]
fn reset_only_when_pin_and_puk_blocked() {
    let _f = fixture();
    let mut yk = YubiKey::open().expect("open");
    admin(&mut yk);
    piv::generate(
        &mut yk,
        SlotId::Authentication,
        AlgorithmId::EccP256,
        PinPolicy::Default,
        TouchPolicy::Default,
    )
    .expect("generate");
    assert!(yk.reset_device().is_err(), "PIN and PUK not blocked");
    for _ in 0..3 {
        let _ = yk.verify_pin(b"000000");
    }
    yk.block_puk().expect("block PUK");
    yk.reset_device().expect("reset");
    yk.verify_pin(b"123456").expect("default PIN again");
    assert!(matches!(
        piv::metadata(&mut yk, SlotId::Authentication),
        Err(Error::NotFound)
    ));
}

#[test]
fn faults_fail_next_slow_and_pull() {
    let f = fixture();
    let mut yk = YubiKey::open().expect("open");
    f.card.fail_next(0x6F00);
    assert!(yk.verify_pin(b"123456").is_err(), "injected 6F00");
    yk.verify_pin(b"123456").expect("next command works again");

    f.card.set_delay(Duration::from_millis(60));
    let t = Instant::now();
    yk.verify_pin(b"123456").expect("slow");
    assert!(t.elapsed() >= Duration::from_millis(60));
    f.card.set_delay(Duration::ZERO);

    // Pull the card in the middle of an operation.
    f.card.pull_on_next_apdu();
    assert!(yk.verify_pin(b"123456").is_err(), "card pulled mid-command");
    assert!(!f.card.is_connected());
    drop(yk);
    f.card.insert();
    f.pcscd
        .wait_card(&f.card.reader_name(), Duration::from_secs(10))
        .expect("card back");
    let mut yk = YubiKey::open().expect("reopen after re-insert");
    // Volatile state was lost, persistent state kept.
    yk.verify_pin(b"123456").expect("PIN");
}

#[test]
fn survives_pcscd_restart() {
    let mut f = fixture();
    let yk = YubiKey::open().expect("open");
    drop(yk);
    f.pcscd.restart().expect("restart pcscd");
    f.pcscd
        .wait_card(&f.card.reader_name(), Duration::from_secs(10))
        .expect("card reconnected");
    let yk = YubiKey::open().expect("open after pcscd restart");
    assert_eq!(u32::from(yk.serial()), 12_345_678);
}
