//! The PKCS#11 protector: a token or HSM reached through its PKCS#11 module
//! with `cryptoki`.
//!
//! Two modes (docs/PKCS11.md):
//! - **ecdh** (default when the token lists CKM_EC_KEY_PAIR_GEN and
//!   CKM_ECDH1_DERIVE): a non-extractable P-256 key pair on the token. Wrap
//!   is the shared ECIES with the enrolled public key, so it never needs the
//!   token; unwrap asks the token for the ECDH x-coordinate through
//!   CKM_ECDH1_DERIVE with the null KDF. The same key signs (CKM_ECDSA over
//!   a host-side SHA-256).
//! - **aes-gcm**: a non-extractable AES-256 key on the token and
//!   CKM_AES_GCM with our AAD, for tokens without ECDH. Wrap needs the token
//!   logged in.
//!
//! Library hygiene (docs/HARDWARE.md): one initialized module per path per
//! process ([`library`]), OS locking, a logged-in session kept for the life
//! of the backend (login is per token: closing the last session logs out),
//! short-lived operation sessions drawn from a small per-token pool so that
//! several threads can work at once, and [`Backend::logout`] to drop the
//! login. We never read CKA_VALUE of a token key; the only CKA_VALUE we read
//! is the ECDH output, a session object we create extractable for exactly
//! that and destroy right after.
//!
//! Before any PIN is asked for, unwrap and sign find the token by label and
//! serial and check that the key's public point is the enrolled one.

pub mod descriptor;
mod enroll;
mod errors;
mod keys;
pub mod library;
mod session;
pub mod uri;
mod wrap;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::{Slot, TokenInfo};
use keyward_kms::backend::ecdh_device::{self, EcdhDevice};
use keyward_kms::backend::lock_or_reset;
use keyward_kms::crypto::ecies;
use keyward_kms::error::{DeviceError, Instead};
use keyward_kms::secret::random_bytes;
use keyward_kms::{
    BackendKind, Callbacks, Capabilities, DeviceInfo, EnrollRequest, Enrollment, Error, Health,
    Notice, Result, Secret32, SecretKind, SecretRequest, SecretString, SignAlgorithm, Signature,
    WrapMode, Wrapped,
};
use p256::elliptic_curve::sec1::ToSec1Point;
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

pub use descriptor::{Descriptor, Mode, SignKey};
pub use uri::Uri;

use errors::{KIND, device, failed, unsupported};
use keys::{
    KeyRef, PublicForm, ambiguous, ed25519_sign, find, find_one, read_ec_point, read_public,
};
pub use keys::{parse_ec_point, parse_ed25519_point};
use session::{CkExt, Fail, Res, Token, find_slot, lock, module_by_name, select_token};
use wrap::{EcdhToken, aes_unwrap, aes_wrap, ecdh_unwrap};

/// DER of the P-256 curve OID 1.2.840.10045.3.1.7 (CKA_EC_PARAMS).
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the Ed25519 OID 1.3.101.112 (RFC 8410), as CKA_EC_PARAMS.
const ED25519_PARAMS: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];
/// Length of the random CKA_ID we give new keys.
const KEY_ID_LEN: usize = 16;

/// Configuration of the backend, fixed for its life.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// The PKCS#11 module (`--module`). For enrollment a URI's
    /// `module-path` wins; for unlock this wins over `KEYWARD_PKCS11_MODULE`
    /// and over the path recorded at enrollment.
    pub module: Option<PathBuf>,
    /// Restrict to one mode (and default enrollments to it). `None`: both,
    /// enrollment picks ecdh when the token supports it.
    pub mode: Option<Mode>,
}

/// The PKCS#11 backend. Cheap to share (`Arc`); all methods take `&self`.
#[derive(Debug, Default)]
pub struct Backend {
    options: Options,
    tokens: Mutex<Vec<Arc<Token>>>,
}

impl Backend {
    /// A backend with `options`. Nothing is loaded until first use.
    pub fn new(options: Options) -> Self {
        Self {
            options,
            tokens: Mutex::new(Vec::new()),
        }
    }

    /// Logs out of every token this backend logged in to and closes its
    /// sessions. The next unwrap or sign asks for the PIN again. Call it when
    /// the keystore locks.
    pub fn logout(&self) {
        let tokens = std::mem::take(&mut *lock(&self.tokens));
        for t in tokens {
            t.logout();
        }
    }

    fn enroll_module(&self, uri: &Uri) -> Result<PathBuf> {
        if let Some(p) = &uri.module_path {
            return Ok(p.clone());
        }
        if let Some(name) = &uri.module_name {
            return module_by_name(name);
        }
        library::resolve(&[self.options.module.as_deref()])
    }

    fn unlock_module(&self, d: &Descriptor) -> Result<PathBuf> {
        if let Some(p) = &self.options.module {
            return Ok(p.clone());
        }
        library::resolve(&[None]).or_else(|e| d.module.clone().ok_or(e))
    }
}

impl keyward_kms::Backend for Backend {
    fn kind(&self) -> BackendKind {
        BackendKind::Pkcs11
    }

    fn capabilities(&self) -> Capabilities {
        // Ed25519 needs sign=ed25519 at enrollment (and CKM_EDDSA on the
        // token); ECDSA P-256 comes with every ecdh enrollment.
        let (wrap_modes, sign) = match self.options.mode {
            Some(Mode::Ecdh) => (
                vec![WrapMode::EciesP256],
                vec![SignAlgorithm::EcdsaP256Sha256, SignAlgorithm::Ed25519],
            ),
            Some(Mode::AesGcm) => (vec![WrapMode::DeviceAesGcm], vec![SignAlgorithm::Ed25519]),
            None => (
                vec![WrapMode::EciesP256, WrapMode::DeviceAesGcm],
                vec![SignAlgorithm::EcdsaP256Sha256, SignAlgorithm::Ed25519],
            ),
        };
        Capabilities {
            wrap_modes,
            sign,
            pin: true,
            touch: false,
            pcr: false,
        }
    }

    fn devices(&self) -> Result<Vec<DeviceInfo>> {
        let module = library::resolve(&[self.options.module.as_deref()])?;
        let lib = library::load(&module)?;
        let slots = lib
            .get_slots_with_token()
            .map_err(|e| errors::map(e, "listing slots"))?;
        let mut out = Vec::new();
        for slot in slots {
            let Ok(info) = lib.get_token_info(slot) else {
                continue;
            };
            if !info.token_initialized() {
                continue;
            }
            let fw = info.firmware_version();
            out.push(DeviceInfo {
                id: descriptor::token_identity(
                    info.label().trim_end(),
                    info.serial_number().trim_end(),
                ),
                model: format!(
                    "{} {}",
                    info.manufacturer_id().trim_end(),
                    info.model().trim_end()
                ),
                firmware: Some(format!("{}.{}", fw.major(), fw.minor())),
                retries_left: None,
            });
        }
        Ok(out)
    }

    fn enroll(&self, req: &EnrollRequest, ui: &dyn Callbacks) -> Result<Enrollment> {
        self.enroll_inner(req, ui)
    }

    fn wrap(&self, enrollment: &Enrollment, secret: &Secret32, aad: &[u8]) -> Result<Wrapped> {
        let d = Descriptor::from_enrollment(enrollment)?;
        match d.mode {
            Mode::Ecdh => ecdh_device::wrap(&EcdhToken(self), enrollment, secret, aad),
            Mode::AesGcm => self
                .with_token(&d, |token| {
                    if !token.is_logged_in() {
                        return Err(device(DeviceError::NotLoggedIn {
                            token: token.identity(),
                        })
                        .into());
                    }
                    let key = token.key(&KeyRef::wrap(&d, &enrollment.public_key))?;
                    aes_wrap(token, key, secret, aad)
                })
                .map(Wrapped),
        }
    }

    fn unwrap(
        &self,
        enrollment: &Enrollment,
        wrapped: &Wrapped,
        aad: &[u8],
        ui: &dyn Callbacks,
    ) -> Result<Secret32> {
        let d = Descriptor::from_enrollment(enrollment)?;
        if d.mode == Mode::Ecdh {
            return ecdh_device::unwrap(&EcdhToken(self), enrollment, wrapped, aad, ui);
        }
        // The blob is checked before we touch the token.
        descriptor::split_aes_gcm_blob(&wrapped.0)?;
        self.with_token(&d, |token| {
            let key = Self::ready_key(token, &d, &KeyRef::wrap(&d, &enrollment.public_key), ui)?;
            aes_unwrap(token, key, &wrapped.0, aad)
        })
    }

    fn sign(&self, enrollment: &Enrollment, msg: &[u8], ui: &dyn Callbacks) -> Result<Signature> {
        let d = Descriptor::from_enrollment(enrollment)?;
        if let Some(key) = KeyRef::ed25519(&d) {
            let sig = self.with_token(&d, |token| {
                let private = Self::ready_key(token, &d, &key, ui)?;
                token.with_session(|s| ed25519_sign(s, private, msg))
            })?;
            return Ok(Signature {
                algorithm: SignAlgorithm::Ed25519,
                bytes: sig.to_vec(),
            });
        }
        if d.mode != Mode::Ecdh {
            return Err(Error::NotSupported {
                kind: KIND.to_string(),
                what: "signing with an aes-gcm enrollment (enroll with mode=ecdh or sign=ed25519)",
            });
        }
        let digest = Sha256::digest(msg);
        let key = KeyRef::wrap(&d, &enrollment.public_key);
        let raw = self.with_token(&d, |token| {
            let private = Self::ready_key(token, &d, &key, ui)?;
            token.with_session(|s| {
                s.sign(&Mechanism::Ecdsa, private, digest.as_slice())
                    .map_err(|e| {
                        Fail::refused(
                            e,
                            "C_Sign",
                            "CKM_ECDSA with this key (it may lack CKA_SIGN)",
                            Instead::Nothing,
                        )
                    })
            })
        })?;
        let sig = p256::ecdsa::Signature::from_slice(&raw).map_err(|_| {
            failed(
                "CKM_ECDSA",
                format!(
                    "the token returned a {}-byte signature, not r||s",
                    raw.len()
                ),
            )
        })?;
        Ok(Signature {
            algorithm: SignAlgorithm::EcdsaP256Sha256,
            // Low-S form: the same signature verifies everywhere, including
            // verifiers that reject high S (BIP 62 style).
            bytes: sig.normalize_s().to_der().as_bytes().to_vec(),
        })
    }

    fn health(&self, enrollment: &Enrollment) -> Result<Health> {
        let d = Descriptor::from_enrollment(enrollment)?;
        let module = self.unlock_module(&d)?;
        let lib = library::load(&module)?;
        let absent = |detail: String| Health {
            present: false,
            matches: false,
            retries_left: None,
            lockout_seconds: None,
            detail,
        };
        let slot = match find_slot(&lib, &d.token_label, &d.token_serial) {
            Ok(slot) => slot,
            Err(Error::DeviceNotFound { hint, .. }) => {
                return Ok(absent(
                    hint.map_or_else(|| "token not present".into(), |h| h.to_string()),
                ));
            }
            Err(Error::WrongDevice { expected, found }) => {
                return Ok(Health {
                    present: true,
                    matches: false,
                    retries_left: None,
                    lockout_seconds: None,
                    detail: format!("wrong token: expected {expected}, found {found}"),
                });
            }
            Err(e) => return Err(e),
        };
        let token = self.token(&lib, &module, slot, &d.token_label, &d.token_serial);
        let info = lib
            .get_token_info(slot)
            .map_err(|e| errors::map(e, "reading token info"))?;
        let key =
            Self::check_key(&token, &d, &KeyRef::wrap(&d, &enrollment.public_key)).and_then(|()| {
                match KeyRef::ed25519(&d) {
                    Some(k) => Self::check_key(&token, &d, &k),
                    None => Ok(()),
                }
            });
        let (matches, mut detail) = match key {
            Ok(()) if d.mode == Mode::Ecdh => {
                (true, format!("{} present, key matches", d.device_id()))
            }
            Ok(()) => (
                true,
                format!(
                    "{} present (the AES key is private: it is checked at unlock)",
                    d.device_id()
                ),
            ),
            Err(Fail::Kw(Error::WrongDevice { expected, found })) => {
                (false, format!("expected {expected}, found {found}"))
            }
            Err(f) => return Err(f.into_error()),
        };
        if info.user_pin_locked() {
            detail.push_str("; the user PIN is locked (CKF_USER_PIN_LOCKED)");
        } else if info.user_pin_final_try() {
            detail.push_str("; one PIN try left (CKF_USER_PIN_FINAL_TRY)");
        } else if info.user_pin_count_low() {
            detail.push_str("; a wrong PIN was entered (CKF_USER_PIN_COUNT_LOW)");
        }
        Ok(Health {
            present: true,
            matches,
            retries_left: None,
            lockout_seconds: None,
            detail,
        })
    }

    fn end_session(&self) {
        self.logout();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_point_forms() {
        let sk = ecies::random_scalar().expect("rng");
        let pk = sk.public_key();
        let bare = pk.to_sec1_point(false);
        let bare = bare.as_bytes();
        let mut der = vec![0x04, 0x41];
        der.extend_from_slice(bare);
        assert_eq!(der.len(), 67);
        assert_eq!(parse_ec_point(&der).expect("der"), pk);
        assert_eq!(parse_ec_point(bare).expect("bare"), pk);
        let c = pk.to_sec1_point(true);
        let mut der_c = vec![0x04, 0x21];
        der_c.extend_from_slice(c.as_bytes());
        assert_eq!(parse_ec_point(&der_c).expect("der compressed"), pk);
        for bad in [
            &[][..],
            &[0x04][..],
            &[0x04, 0x41][..],
            &der[..66],
            &[0u8; 67][..],
        ] {
            assert!(parse_ec_point(bad).is_err());
        }
    }

    #[test]
    fn capabilities_follow_mode() {
        use keyward_kms::Backend as _;
        let aes = Backend::new(Options {
            mode: Some(Mode::AesGcm),
            ..Options::default()
        });
        assert_eq!(aes.capabilities().sign, vec![SignAlgorithm::Ed25519]);
        assert_eq!(aes.capabilities().wrap_modes, vec![WrapMode::DeviceAesGcm]);
        let any = Backend::new(Options::default());
        assert_eq!(
            any.capabilities().sign,
            vec![SignAlgorithm::EcdsaP256Sha256, SignAlgorithm::Ed25519]
        );
        assert!(any.capabilities().pin);
    }
}
