//! The PIV slots: factory-default credentials, choosing a free retired
//! slot, checking the enrolled key before any PIN, and the certificate
//! that marks a slot as keyward's.

use super::*;
use keyward_kms::backend::options::{PivSlot, YubikeyOptions};

/// Which credentials are still the factory defaults.
#[derive(Debug, Default)]
pub(super) struct Defaults {
    pub(super) pin: bool,
    pub(super) puk: bool,
    pub(super) management: bool,
}

impl Defaults {
    pub(super) fn any(&self) -> bool {
        self.pin || self.puk || self.management
    }

    pub(super) fn list(&self) -> String {
        let mut v = Vec::new();
        if self.pin {
            v.push("PIN");
        }
        if self.puk {
            v.push("PUK");
        }
        if self.management {
            v.push("management key");
        }
        v.join(", ")
    }
}

/// Reads the PIN, PUK and management-key metadata (firmware 5.3+). Older
/// firmware: only the management key can be checked without spending a
/// try (by authenticating with the default key).
pub(super) fn default_credentials(s: &mut Session<'_>) -> Result<Defaults> {
    let mut d = Defaults::default();
    for (slot, flag) in [
        (ManagementSlotId::Pin, &mut d.pin),
        (ManagementSlotId::Puk, &mut d.puk),
        (ManagementSlotId::Management, &mut d.management),
    ] {
        match piv::metadata(s.yk()?, SlotId::Management(slot)) {
            Ok(md) => *flag = md.default == Some(true),
            Err(yubikey::Error::NotSupported) => {
                if slot == ManagementSlotId::Management {
                    let yk = s.yk()?;
                    let default = MgmKey::get_default(yk).map_err(|e| map(e, Op::Admin))?;
                    *flag = yk.authenticate(&default).is_ok();
                }
            }
            Err(e) => return Err(s.fail(e, Op::Query)),
        }
    }
    Ok(d)
}

/// Whether `id` holds a key.
pub(super) fn occupied(s: &mut Session<'_>, id: SlotId) -> Result<bool> {
    match piv::metadata(s.yk()?, id) {
        Ok(_) => Ok(true),
        Err(yubikey::Error::NotFound) => Ok(false),
        Err(yubikey::Error::NotSupported) => Ok(Certificate::read(s.yk()?, id).is_ok()),
        Err(e) => Err(s.fail(e, Op::Query)),
    }
}

pub(super) fn choose_slot(s: &mut Session<'_>, opts: &YubikeyOptions) -> Result<u8> {
    if let Some(slot) = opts.slot.map(PivSlot::number) {
        if occupied(s, slot_id(slot)?)? && !opts.overwrite {
            return Err(Error::InvalidArgument {
                what: format!(
                    "slot {slot:02x} already holds a key; choose another slot, or pass \
                     overwrite=true (--overwrite) to destroy it"
                ),
            });
        }
        return Ok(slot);
    }
    for (slot, id) in retired_slots() {
        if !occupied(s, id)? {
            return Ok(slot);
        }
    }
    Err(device(DeviceError::NoFreeSlot))
}

/// Compares the slot's public key with the enrolled one. Never sends a PIN.
pub(super) fn check_slot(s: &mut Session<'_>, params: &Params, enrolled: &[u8]) -> Result<()> {
    let slot = params.slot_number()?;
    let id = slot_id(slot)?;
    let found: Vec<u8> = match piv::metadata(s.yk()?, id) {
        Ok(md) => match md.public {
            Some(spki) => spki.subject_public_key.raw_bytes().to_vec(),
            None => Vec::new(),
        },
        Err(yubikey::Error::NotFound) => {
            return Err(device(DeviceError::Piv {
                sw: errors::SW_FILE_NOT_FOUND,
                detail: format!(
                    "slot {slot:02x} of YubiKey {} is empty: its key was deleted or the PIV \
                     applet was reset. Unlock with another protector, remove this one and \
                     enroll the YubiKey again",
                    params.serial
                ),
            }));
        }
        Err(yubikey::Error::NotSupported) => match Certificate::read(s.yk()?, id) {
            Ok(cert) => cert.subject_pki().subject_public_key.raw_bytes().to_vec(),
            Err(_) => {
                return Err(failed(
                    "no-metadata",
                    format!(
                        "YubiKey {} (firmware before 5.3) has no certificate in slot {slot:02x}, \
                         so the key cannot be checked before the PIN is sent",
                        params.serial
                    ),
                ));
            }
        },
        Err(e) => return Err(s.fail(e, Op::Query)),
    };
    let same = p256::PublicKey::from_sec1_bytes(&found)
        .is_ok_and(|pk| ecies::compress(&pk).as_slice() == enrolled);
    if !same {
        return Err(Error::WrongDevice {
            expected: format!(
                "the keyward key in slot {slot:02x} of YubiKey {}",
                params.serial
            ),
            found: "another key in that slot (it was replaced, or the PIV applet was reset)".into(),
        });
    }
    Ok(())
}

/// A random management key: AES-256 from firmware 5.4, 3DES before.
pub(super) fn random_management_key(version: yubikey::Version) -> Result<MgmKey> {
    let aes = version.major > 5 || (version.major == 5 && version.minor >= 4);
    let (alg, len) = if aes {
        (MgmAlgorithmId::Aes256, 32)
    } else {
        (MgmAlgorithmId::ThreeDes, 24)
    };
    // 3DES refuses weak keys; a random key is weak with negligible
    // probability, but try a few.
    for _ in 0..4 {
        let mut bytes = Zeroizing::new(vec![0u8; len]);
        random_bytes(&mut bytes)?;
        if let Ok(key) = MgmKey::from_bytes(bytes.as_slice(), Some(alg)) {
            return Ok(key);
        }
    }
    Err(Error::Random)
}

/// Writes the self-signed `CN=keyward` certificate into slot `id`.
pub(super) fn write_certificate(
    s: &mut Session<'_>,
    id: SlotId,
    spki: x509_cert::spki::SubjectPublicKeyInfoOwned,
    touch: bool,
) -> Result<()> {
    let mut serial = [0u8; 16];
    random_bytes(&mut serial)?;
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    let serial = x509_cert::serial_number::SerialNumber::new(&serial)
        .map_err(|_| failed("certificate", "cannot encode the certificate serial"))?;
    let validity =
        x509_cert::time::Validity::from_now(Duration::from_secs(20 * 365 * 24 * 60 * 60))
            .map_err(|_| failed("certificate", "cannot encode the certificate validity"))?;
    let subject = x509_cert::name::Name::from_str(CERT_SUBJECT)
        .map_err(|_| failed("certificate", "cannot encode the certificate subject"))?;
    let r = Certificate::generate_self_signed::<_, p256::NistP256>(
        s.yk()?,
        id,
        serial,
        validity,
        subject,
        spki,
        |_| Ok(()),
    );
    r.map(|_| ()).map_err(|e| s.fail(e, Op::KeyUse { touch }))
}
