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
//! Library hygiene (HARDWARE.md): one initialized module per path per
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
mod errors;
pub mod library;
pub mod uri;

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

/// A token we have talked to in this process.
struct Token {
    lib: Pkcs11,
    module: PathBuf,
    slot: Slot,
    label: String,
    serial: String,
    /// The session that holds the login (PKCS#11 logs in per token, and
    /// closing the last session logs out). `None`: not logged in by us.
    anchor: Mutex<Option<Session>>,
    /// Idle read-only sessions for operations.
    pool: Mutex<Vec<Session>>,
    /// Key handles found (and checked against the enrollment) since login.
    /// Handles stay valid while the token is present; a stale one fails with
    /// CKR_OBJECT_HANDLE_INVALID and the whole entry is dropped and rebuilt.
    keys: Mutex<Vec<CachedKey>>,
}

struct CachedKey {
    class: ObjectClass,
    id: Vec<u8>,
    public_key: Vec<u8>,
    handle: ObjectHandle,
}

/// How a key's public half is stored in the enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PublicForm {
    /// No public half (AES): nothing to check before login.
    None,
    /// 33-byte compressed P-256 point.
    P256,
    /// 32-byte Ed25519 key.
    Ed25519,
}

/// One key of an enrollment: where it is and what its public half must be.
struct KeyRef<'a> {
    /// Class of the key used (private or secret key).
    class: ObjectClass,
    id: &'a [u8],
    label: &'a str,
    public: &'a [u8],
    form: PublicForm,
    what: &'static str,
}

impl<'a> KeyRef<'a> {
    /// The wrapping key of `d` (`public`: the enrollment's public key).
    fn wrap(d: &'a Descriptor, public: &'a [u8]) -> Self {
        match d.mode {
            Mode::Ecdh => Self {
                class: ObjectClass::PRIVATE_KEY,
                id: &d.key_id,
                label: &d.key_label,
                public,
                form: PublicForm::P256,
                what: "P-256 private key",
            },
            Mode::AesGcm => Self {
                class: ObjectClass::SECRET_KEY,
                id: &d.key_id,
                label: &d.key_label,
                public: &[],
                form: PublicForm::None,
                what: "AES key",
            },
        }
    }

    /// The Ed25519 signing key of `d`, if one was enrolled.
    fn ed25519(d: &'a Descriptor) -> Option<Self> {
        d.sign.as_ref().map(|k| Self {
            class: ObjectClass::PRIVATE_KEY,
            id: &k.id,
            label: &k.label,
            public: &k.public,
            form: PublicForm::Ed25519,
            what: "Ed25519 private key",
        })
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("module", &self.module)
            .field("slot", &self.slot.id())
            .field("label", &self.label)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// Internal failure: a cryptoki error with the step it happened in (so that
/// stale sessions can be told apart and retried), or a finished error.
enum Fail {
    Ck(CkError, &'static str),
    Kw(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Self::Kw(e)
    }
}

impl Fail {
    fn is_stale(&self) -> bool {
        matches!(self, Self::Ck(e, _) if errors::is_stale(e))
    }

    fn into_error(self) -> Error {
        match self {
            Self::Ck(e, what) => errors::map(e, what),
            Self::Kw(e) => e,
        }
    }
}

type Res<T> = std::result::Result<T, Fail>;

trait CkExt<T> {
    fn ck(self, what: &'static str) -> Res<T>;
}

impl<T> CkExt<T> for std::result::Result<T, CkError> {
    fn ck(self, what: &'static str) -> Res<T> {
        self.map_err(|e| Fail::Ck(e, what))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Our mutexes guard plain collections that are consistent after every
    // statement, so a panic elsewhere never leaves them half-updated.
    lock_or_reset(m, |_| {})
}

impl Token {
    fn identity(&self) -> String {
        descriptor::token_identity(&self.label, &self.serial)
    }

    /// Runs `f` on an idle operation session (opening one if none is idle).
    fn with_session<T>(&self, f: impl FnOnce(&Session) -> Res<T>) -> Res<T> {
        let session = lock(&self.pool).pop();
        let session = match session {
            Some(s) => s,
            None => self.lib.open_ro_session(self.slot).ck("C_OpenSession")?,
        };
        let result = f(&session);
        if !matches!(&result, Err(f) if f.is_stale()) {
            lock(&self.pool).push(session);
        }
        result
    }

    fn is_logged_in(&self) -> bool {
        logged_in(lock(&self.anchor).as_ref())
    }

    /// Logs in unless already logged in, asking for the PIN through `ui` (or
    /// reading it from `pin_source`). The anchor lock is held throughout, so
    /// threads that need the login at the same time ask for the PIN once.
    fn login(&self, ui: &dyn Callbacks, pin_source: Option<&Path>) -> Res<()> {
        let mut anchor = lock(&self.anchor);
        if logged_in(anchor.as_ref()) {
            return Ok(());
        }
        let info = self.lib.get_token_info(self.slot).ck("C_GetTokenInfo")?;
        if info.user_pin_locked() {
            return Err(Error::PinBlocked.into());
        }
        let session = self.lib.open_rw_session(self.slot).ck("C_OpenSession")?;
        if info.protected_authentication_path() && pin_source.is_none() {
            ui.notify(&Notice::Info(&format!(
                "enter the PIN on the reader of {}",
                self.identity()
            )));
            login_result(session.login(UserType::User, None))?;
        } else {
            let pin = match pin_source {
                Some(path) => read_pin_file(path)?,
                None => ui.request_secret(&SecretRequest {
                    kind: SecretKind::Pin,
                    description: &pin_description(&info),
                    retries_left: None,
                })?,
            };
            login_result(session.login(UserType::User, Some(&pin)))?;
        }
        *anchor = Some(session);
        Ok(())
    }

    /// The handle of `key`, from the cache or found on the token. Needs the
    /// token logged in (the key is a private object).
    fn key(&self, key: &KeyRef<'_>) -> Res<ObjectHandle> {
        if let Some(h) = self.cached_key(key) {
            return Ok(h);
        }
        let handle = self.with_session(|s| find_one(s, key.class, key.id, key.what))?;
        lock(&self.keys).push(CachedKey {
            class: key.class,
            id: key.id.to_vec(),
            public_key: key.public.to_vec(),
            handle,
        });
        Ok(handle)
    }

    fn cached_key(&self, key: &KeyRef<'_>) -> Option<ObjectHandle> {
        lock(&self.keys)
            .iter()
            .find(|k| k.class == key.class && k.id == key.id && k.public_key == key.public)
            .map(|k| k.handle)
    }

    fn logout(&self) {
        lock(&self.keys).clear();
        if let Some(session) = lock(&self.anchor).take() {
            // Best effort: the token may be gone already.
            let _ = session.logout();
        }
        lock(&self.pool).clear();
    }
}

fn logged_in(anchor: Option<&Session>) -> bool {
    anchor.is_some_and(|s| {
        s.get_session_info().is_ok_and(|i| {
            matches!(
                i.session_state(),
                SessionState::RoUser | SessionState::RwUser
            )
        })
    })
}

fn login_result(r: std::result::Result<(), CkError>) -> Res<()> {
    match r {
        // Login is per token: another session of ours (or of another
        // library user in this process) logged in first. That is success.
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(Fail::Ck(e, "C_Login")),
    }
}

/// The prompt text: the token label, and the PIN-state flags the token
/// reports (PKCS#11 §5.2 CK_TOKEN_INFO flags).
fn pin_description(info: &TokenInfo) -> String {
    let mut s = format!(
        "PKCS#11 token \"{}\" (serial {})",
        info.label().trim_end(),
        info.serial_number().trim_end()
    );
    if info.user_pin_final_try() {
        s.push_str(" — CKF_USER_PIN_FINAL_TRY: this is the last try, a wrong PIN locks the token");
    } else if info.user_pin_count_low() {
        s.push_str(" — CKF_USER_PIN_COUNT_LOW: a wrong PIN was entered since the last success");
    }
    s
}

fn read_pin_file(path: &Path) -> Res<SecretString> {
    let mut text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading pin-source {}", path.display()), e))?;
    let pin = text.trim_end_matches(['\n', '\r']).to_owned();
    text.zeroize();
    Ok(SecretString::from(pin))
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

    /// The cached token for (module, slot, label, serial), or a new entry.
    fn token(
        &self,
        lib: &Pkcs11,
        module: &Path,
        slot: Slot,
        label: &str,
        serial: &str,
    ) -> Arc<Token> {
        let mut tokens = lock(&self.tokens);
        if let Some(t) = tokens
            .iter()
            .find(|t| t.module == module && t.label == label && t.serial == serial)
        {
            if t.slot == slot {
                return t.clone();
            }
        }
        // Same token in another slot (re-inserted): the old sessions are dead.
        tokens.retain(|t| !(t.module == module && t.label == label && t.serial == serial));
        let t = Arc::new(Token {
            lib: lib.clone(),
            module: module.to_path_buf(),
            slot,
            label: label.to_owned(),
            serial: serial.to_owned(),
            anchor: Mutex::new(None),
            pool: Mutex::new(Vec::new()),
            keys: Mutex::new(Vec::new()),
        });
        tokens.push(t.clone());
        t
    }

    fn logged_in_token(&self, d: &Descriptor) -> Option<Arc<Token>> {
        let module = self.unlock_module(d).ok()?;
        lock(&self.tokens)
            .iter()
            .find(|t| {
                t.module == module
                    && t.label == d.token_label
                    && t.serial == d.token_serial
                    && lock(&t.anchor).is_some()
            })
            .cloned()
    }

    /// The enrolled key, ready to use: checked against the enrollment
    /// before the PIN is asked for, then found after login (cached).
    fn ready_key(
        token: &Token,
        d: &Descriptor,
        key: &KeyRef<'_>,
        ui: &dyn Callbacks,
    ) -> Res<ObjectHandle> {
        if token.is_logged_in() {
            if let Some(h) = token.cached_key(key) {
                return Ok(h);
            }
        }
        Self::check_key(token, d, key)?;
        token.login(ui, None)?;
        token.key(key)
    }

    fn forget(&self, token: &Arc<Token>) {
        lock(&self.tokens).retain(|t| !Arc::ptr_eq(t, token));
    }

    /// Finds the enrolled token by label and serial. Never asks for a PIN.
    fn find_token(&self, d: &Descriptor) -> Result<Arc<Token>> {
        let module = self.unlock_module(d)?;
        let lib = library::load(&module)?;
        let slot = find_slot(&lib, &d.token_label, &d.token_serial)?;
        Ok(self.token(&lib, &module, slot, &d.token_label, &d.token_serial))
    }

    /// Runs `op` against the enrolled token, once more from a fresh lookup
    /// if the first attempt hit a stale session (token removed, re-inserted).
    fn with_token<T>(
        &self,
        d: &Descriptor,
        mut op: impl FnMut(&Arc<Token>) -> Res<T>,
    ) -> Result<T> {
        // Fast path: a token we are logged in to needs no lookup; if it went
        // away, the operation fails as stale and we look it up once more.
        let token = match self.logged_in_token(d) {
            Some(t) => t,
            None => self.find_token(d)?,
        };
        match op(&token) {
            Ok(v) => return Ok(v),
            Err(f) if !f.is_stale() => return Err(f.into_error()),
            Err(_) => {}
        }
        tracing::debug!(
            token = %token.identity(),
            "stale PKCS#11 session, looking the token up again"
        );
        token.logout();
        self.forget(&token);
        let token = self.find_token(d)?;
        op(&token).map_err(|f| {
            if f.is_stale() {
                token.logout();
                self.forget(&token);
            }
            f.into_error()
        })
    }

    fn enroll_inner(&self, req: &EnrollRequest, ui: &dyn Callbacks) -> Result<Enrollment> {
        for (key, _) in &req.options {
            if key != "mode" && key != "sign" {
                return Err(Error::InvalidArgument {
                    what: format!(
                        "unknown pkcs11 option {key:?} (known: mode=ecdh|aes-gcm, \
                         sign=ecdsa|ed25519)"
                    ),
                });
            }
        }
        let ed25519 = match req.option("sign") {
            None | Some("ecdsa") => false,
            Some("ed25519") => true,
            Some(other) => {
                return Err(Error::InvalidArgument {
                    what: format!("pkcs11 sign={other:?}: use ecdsa or ed25519"),
                });
            }
        };
        let uri = match req.device.as_deref() {
            Some(s) => Uri::parse(s)?,
            None => Uri::default(),
        };
        let module = self.enroll_module(&uri)?;
        let lib = library::load(&module)?;
        let (slot, info) = select_token(&lib, &uri)?;
        let label = info.label().trim_end().to_owned();
        let serial = info.serial_number().trim_end().to_owned();
        if serial.is_empty() {
            return Err(failed(
                "no serial",
                format!(
                    "token \"{label}\" reports no serial number; keyward needs one to tell tokens apart"
                ),
            ));
        }
        let mechanisms = lib
            .get_mechanism_list(slot)
            .map_err(|e| errors::map(e, "listing mechanisms"))?;
        let has = |m: MechanismType| mechanisms.contains(&m);
        let ecdh_ok = has(MechanismType::ECDH1_DERIVE) && has(MechanismType::ECC_KEY_PAIR_GEN);
        let gcm_ok = has(MechanismType::AES_GCM) && has(MechanismType::AES_KEY_GEN);
        let mode = match req.option("mode") {
            Some(m) => Mode::parse(m)?,
            None => match (self.options.mode, uri.object_type) {
                (Some(m), _) => m,
                (None, Some(uri::ObjectType::SecretKey)) => Mode::AesGcm,
                (None, Some(uri::ObjectType::Private | uri::ObjectType::Public)) => Mode::Ecdh,
                (None, _) if ecdh_ok => Mode::Ecdh,
                (None, _) => Mode::AesGcm,
            },
        };
        if let Some(forced) = self.options.mode {
            if forced != mode {
                return Err(Error::InvalidArgument {
                    what: format!(
                        "this pkcs11 backend is configured for mode {}",
                        forced.as_str()
                    ),
                });
            }
        }
        match mode {
            Mode::Ecdh if !ecdh_ok => {
                return Err(unsupported(
                    "CKM_EC_KEY_PAIR_GEN + CKM_ECDH1_DERIVE (the ecdh mode)",
                    Instead::AesGcm,
                ));
            }
            Mode::AesGcm if !gcm_ok => {
                return Err(unsupported(
                    "CKM_AES_KEY_GEN + CKM_AES_GCM (the aes-gcm mode)",
                    Instead::Ecdh,
                ));
            }
            _ => {}
        }
        if ed25519 && !(has(MechanismType::ECC_EDWARDS_KEY_PAIR_GEN) && has(MechanismType::EDDSA)) {
            return Err(unsupported(
                "CKM_EC_EDWARDS_KEY_PAIR_GEN + CKM_EDDSA",
                Instead::NoEd25519,
            ));
        }
        if mode == Mode::AesGcm && req.option("sign") == Some("ecdsa") {
            return Err(Error::InvalidArgument {
                what: "sign=ecdsa needs mode=ecdh (its P-256 key signs); use sign=ed25519 \
                       with aes-gcm"
                    .into(),
            });
        }
        match (mode, uri.object_type) {
            (
                Mode::Ecdh,
                Some(uri::ObjectType::SecretKey | uri::ObjectType::Cert | uri::ObjectType::Data),
            )
            | (
                Mode::AesGcm,
                Some(
                    uri::ObjectType::Private
                    | uri::ObjectType::Public
                    | uri::ObjectType::Cert
                    | uri::ObjectType::Data,
                ),
            ) => {
                return Err(Error::InvalidArgument {
                    what: format!("the URI's type= does not fit mode {}", mode.as_str()),
                });
            }
            _ => {}
        }

        let token = self.token(&lib, &module, slot, &label, &serial);
        // Objects this enrollment created, destroyed again if it fails.
        let mut created: Vec<ObjectHandle> = Vec::new();
        let result = (|| -> Res<(Descriptor, Vec<u8>)> {
            token.login(ui, uri.pin_source.as_deref())?;
            let session = lib.open_rw_session(slot).ck("C_OpenSession")?;
            let (key, fresh) = match mode {
                Mode::Ecdh => ec_key(&session, &uri, &req.label)?,
                Mode::AesGcm => aes_key(&session, &uri, &req.label, ui)?,
            };
            if fresh {
                created.extend(&key.handles);
            }
            let sign = if ed25519 {
                let (sign, handles) = ed25519_key(&session, &req.label)?;
                created.extend(handles);
                Some(sign)
            } else {
                None
            };
            let descriptor = Descriptor {
                sign,
                mode,
                token_label: label.clone(),
                token_serial: serial.clone(),
                manufacturer: info.manufacturer_id().trim_end().to_owned(),
                model: info.model().trim_end().to_owned(),
                key_id: key.id.clone(),
                key_label: key.label.clone(),
                module: Some(module.clone()),
            };
            // Self-test before anything is stored: a token that lists a
            // mechanism but cannot do it with this key (or with the null
            // KDF) must fail now, not at the next unlock.
            Self::self_test(&token, &descriptor, &key.public)?;
            Ok((descriptor, key.public))
        })();
        let (descriptor, public_key) = match result {
            Ok(v) => v,
            Err(f) => {
                if !created.is_empty() {
                    if let Ok(session) = lib.open_rw_session(slot) {
                        for h in created {
                            let _ = session.destroy_object(h);
                        }
                    }
                }
                return Err(f.into_error());
            }
        };
        tracing::info!(token = %descriptor.device_id(), mode = mode.as_str(), "pkcs11 enrolled");
        Ok(Enrollment {
            kind: BackendKind::Pkcs11,
            device_id: Some(descriptor.device_id()),
            public_key,
            params: descriptor.to_json(),
        })
    }

    fn self_test(token: &Token, d: &Descriptor, public: &[u8]) -> Res<()> {
        let secret = Secret32::random()?;
        let aad = b"keyward/v1/pkcs11-self-test";
        let key = token.key(&KeyRef::wrap(d, public))?;
        let back = match d.mode {
            Mode::Ecdh => {
                let blob = ecies::seal(public, &secret, aad)?;
                ecdh_unwrap(token, key, public, &blob, aad)?
            }
            Mode::AesGcm => {
                let blob = aes_wrap(token, key, &secret, aad)?;
                aes_unwrap(token, key, &blob, aad)?
            }
        };
        if back.expose() != secret.expose() {
            return Err(failed(
                "self-test",
                format!(
                    "{} returned a different secret than it was given in the enrollment \
                     self-test; the token is not usable in {} mode",
                    token.identity(),
                    d.mode.as_str()
                ),
            )
            .into());
        }
        if let Some(sign_key) = KeyRef::ed25519(d) {
            let handle = token.key(&sign_key)?;
            let msg = b"keyward/v1/pkcs11-self-test ed25519";
            let sig = token.with_session(|s| ed25519_sign(s, handle, msg))?;
            let public: [u8; 32] = sign_key.public.try_into().map_err(|_| {
                Fail::Kw(Error::InvalidPublicKey {
                    what: "an Ed25519 public key is 32 bytes",
                })
            })?;
            let ok = ed25519_dalek::VerifyingKey::from_bytes(&public).is_ok_and(|vk| {
                vk.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig))
                    .is_ok()
            });
            if !ok {
                return Err(failed(
                    "self-test",
                    format!(
                        "the Ed25519 signature of {} does not verify with its public key",
                        token.identity()
                    ),
                )
                .into());
            }
        }
        Ok(())
    }

    /// Checks, without a PIN, that the key's public half is on the token and
    /// is the enrolled one (keys without a public half are checked after
    /// login, by being found).
    fn check_key(token: &Token, d: &Descriptor, key: &KeyRef<'_>) -> Res<()> {
        if key.form == PublicForm::None {
            return Ok(());
        }
        let found = token.with_session(|s| {
            let handles = find(s, ObjectClass::PUBLIC_KEY, key.id)?;
            match handles.as_slice() {
                [] => Ok(None),
                [h] => read_public(s, *h, key.form).map(Some),
                _ => Err(ambiguous(key.id)),
            }
        })?;
        let Some(public) = found else {
            return Err(Error::WrongDevice {
                expected: format!("{} with key \"{}\"", d.device_id(), key.label),
                found: format!(
                    "{} without a public key of CKA_ID {}",
                    token.identity(),
                    hex::encode(key.id)
                ),
            }
            .into());
        };
        if public != key.public {
            return Err(Error::WrongDevice {
                expected: format!(
                    "{} with public key {}",
                    d.device_id(),
                    hex::encode(key.public)
                ),
                found: format!("public key {}", hex::encode(public)),
            }
            .into());
        }
        Ok(())
    }
}

/// Looks up a module by its `module-name` in the usual directories.
fn module_by_name(name: &str) -> Result<PathBuf> {
    if name.contains('/') {
        return Err(Error::InvalidArgument {
            what: format!("module-name {name:?} must be a bare name; use module-path for paths"),
        });
    }
    let dirs = [
        "/usr/lib/x86_64-linux-gnu/pkcs11",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/softhsm",
        "/usr/lib/pkcs11",
        "/usr/lib",
        "/usr/local/lib",
    ];
    let files = [
        format!("{name}.so"),
        format!("lib{name}.so"),
        format!("{name}-pkcs11.so"),
    ];
    for dir in dirs {
        for file in &files {
            let p = Path::new(dir).join(file);
            if p.exists() {
                return Ok(p);
            }
        }
    }
    Err(Error::not_found(
        KIND,
        DeviceError::ModuleNotInstalled {
            name: name.to_owned(),
            dirs: dirs.iter().map(|&d| d.to_owned()).collect(),
        },
    ))
}

/// The slot holding the token `label` with `serial`. A token with the label
/// but another serial is the wrong device; no token with the label is an
/// absent device.
fn find_slot(lib: &Pkcs11, label: &str, serial: &str) -> Result<Slot> {
    let slots = lib
        .get_slots_with_token()
        .map_err(|e| errors::map(e, "listing slots"))?;
    let mut others = Vec::new();
    let mut present = Vec::new();
    for slot in slots {
        // A slot whose token vanished between the two calls is skipped.
        let Ok(info) = lib.get_token_info(slot) else {
            continue;
        };
        if !info.token_initialized() {
            continue;
        }
        let l = info.label().trim_end();
        let s = info.serial_number().trim_end();
        if l == label {
            if s == serial {
                return Ok(slot);
            }
            others.push(s.to_owned());
        }
        present.push(format!("\"{l}\""));
    }
    if let Some(found) = others.first() {
        return Err(Error::WrongDevice {
            expected: descriptor::token_identity(label, serial),
            found: descriptor::token_identity(label, found),
        });
    }
    Err(Error::not_found(
        KIND,
        DeviceError::TokenAbsent {
            label: label.to_owned(),
            serial: serial.to_owned(),
            visible: present,
        },
    ))
}

/// Picks the one token matching the URI's token attributes.
fn select_token(lib: &Pkcs11, uri: &Uri) -> Result<(Slot, TokenInfo)> {
    let map = |e| errors::map(e, "listing slots");
    if uri.library_manufacturer.is_some()
        || uri.library_description.is_some()
        || uri.library_version.is_some()
    {
        let info = lib.get_library_info().map_err(map)?;
        let v = info.library_version();
        let ok = uri
            .library_manufacturer
            .as_deref()
            .is_none_or(|m| m == info.manufacturer_id().trim_end())
            && uri
                .library_description
                .as_deref()
                .is_none_or(|m| m == info.library_description().trim_end())
            && uri
                .library_version
                .is_none_or(|(a, b)| a == v.major() && b == v.minor());
        if !ok {
            return Err(Error::not_found(
                KIND,
                DeviceError::LibraryMismatch {
                    found: format!(
                        "\"{}\" \"{}\" {}.{}",
                        info.manufacturer_id().trim_end(),
                        info.library_description().trim_end(),
                        v.major(),
                        v.minor()
                    ),
                },
            ));
        }
    }
    let mut matches = Vec::new();
    let mut seen = Vec::new();
    for slot in lib.get_slots_with_token().map_err(map)? {
        let Ok(info) = lib.get_token_info(slot) else {
            continue;
        };
        if !info.token_initialized() {
            continue;
        }
        seen.push(format!(
            "\"{}\" (serial {})",
            info.label().trim_end(),
            info.serial_number().trim_end()
        ));
        let eq = |want: &Option<String>, have: &str| {
            want.as_deref().is_none_or(|w| w == have.trim_end())
        };
        let slot_ok = uri.slot_id.is_none_or(|id| id == slot.id())
            && (uri.slot_description.is_none() && uri.slot_manufacturer.is_none()
                || lib.get_slot_info(slot).is_ok_and(|si| {
                    eq(&uri.slot_description, si.slot_description())
                        && eq(&uri.slot_manufacturer, si.manufacturer_id())
                }));
        if slot_ok
            && eq(&uri.token, info.label())
            && eq(&uri.serial, info.serial_number())
            && eq(&uri.manufacturer, info.manufacturer_id())
            && eq(&uri.model, info.model())
        {
            matches.push((slot, info));
        }
    }
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => Err(Error::not_found(
            KIND,
            DeviceError::NoMatchingToken { visible: seen },
        )),
        n => Err(Error::InvalidArgument {
            what: format!(
                "{n} tokens match the PKCS#11 URI ({}); add token= and serial= to choose one",
                seen.join(", ")
            ),
        }),
    }
}

/// A key chosen or created at enrollment.
struct EnrolledKey {
    id: Vec<u8>,
    label: String,
    /// SEC1 public key (ecdh) or empty.
    public: Vec<u8>,
    /// Objects to destroy if enrollment fails after creating them.
    handles: Vec<ObjectHandle>,
}

fn new_key_id_and_label(uri: &Uri, label: &str) -> Res<(Vec<u8>, String)> {
    let id = match &uri.id {
        Some(id) if !id.is_empty() => id.clone(),
        _ => {
            let mut id = vec![0u8; KEY_ID_LEN];
            random_bytes(&mut id)?;
            id
        }
    };
    let label = uri.object.clone().unwrap_or_else(|| {
        if label.is_empty() {
            "keyward".to_owned()
        } else {
            format!("keyward {label}")
        }
    });
    Ok((id, label))
}

/// Selector template for a key named by the URI.
fn uri_template(class: ObjectClass, uri: &Uri) -> Vec<Attribute> {
    let mut t = vec![Attribute::Class(class)];
    if let Some(id) = &uri.id {
        t.push(Attribute::Id(id.clone()));
    }
    if let Some(label) = &uri.object {
        t.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    t
}

/// The EC key pair named by the URI, or a new one.
fn ec_key(session: &Session, uri: &Uri, label: &str) -> Res<(EnrolledKey, bool)> {
    if uri.names_object() {
        let found = session
            .find_objects(&uri_template(ObjectClass::PRIVATE_KEY, uri))
            .ck("C_FindObjects")?;
        match found.as_slice() {
            [] => {}
            [private] => return existing_ec_key(session, *private).map(|k| (k, false)),
            _ => {
                return Err(Error::InvalidArgument {
                    what: format!(
                        "{} private keys match the URI; add id= to choose one",
                        found.len()
                    ),
                }
                .into());
            }
        }
    }
    let (id, label) = new_key_id_and_label(uri, label)?;
    let public_template = [
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::EcParams(P256_PARAMS.to_vec()),
        Attribute::Id(id.clone()),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    let private_template = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Derive(true),
        Attribute::Sign(true),
        Attribute::Id(id.clone()),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    let (public, private) = session
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &public_template,
            &private_template,
        )
        .map_err(|e| {
            if errors::is_mechanism_refused(&e) {
                Fail::Kw(unsupported(
                    "P-256 key generation (CKM_EC_KEY_PAIR_GEN)",
                    Instead::AesGcm,
                ))
            } else {
                Fail::Ck(e, "C_GenerateKeyPair")
            }
        })?;
    let point = read_ec_point(session, public)?;
    Ok((
        EnrolledKey {
            id,
            label,
            public: ecies::compress(&point).to_vec(),
            handles: vec![public, private],
        },
        true,
    ))
}

fn existing_ec_key(session: &Session, private: ObjectHandle) -> Res<EnrolledKey> {
    let attrs = session
        .get_attributes(
            private,
            &[
                AttributeType::KeyType,
                AttributeType::Id,
                AttributeType::Label,
                AttributeType::EcParams,
                AttributeType::Derive,
            ],
        )
        .ck("C_GetAttributeValue")?;
    let mut id = Vec::new();
    let mut label = String::new();
    let mut params = Vec::new();
    let mut key_type = None;
    let mut derive = false;
    for a in attrs {
        match a {
            Attribute::KeyType(k) => key_type = Some(k),
            Attribute::Id(v) => id = v,
            Attribute::Label(v) => label = String::from_utf8_lossy(&v).into_owned(),
            Attribute::EcParams(v) => params = v,
            Attribute::Derive(b) => derive = b,
            _ => {}
        }
    }
    let wrong = |why: &str| {
        Fail::Kw(failed(
            "wrong key",
            format!("the key the URI names cannot be used in ecdh mode: {why}"),
        ))
    };
    if key_type != Some(KeyType::EC) {
        return Err(wrong("it is not an EC key"));
    }
    if params != P256_PARAMS {
        return Err(wrong("it is not on the P-256 curve"));
    }
    if !derive {
        return Err(wrong("it does not allow derivation (CKA_DERIVE is false)"));
    }
    if id.is_empty() {
        return Err(wrong(
            "it has no CKA_ID, which keyward needs to find it again",
        ));
    }
    let public = find_one(session, ObjectClass::PUBLIC_KEY, &id, "public key")?;
    let point = read_ec_point(session, public)?;
    Ok(EnrolledKey {
        id,
        label,
        public: ecies::compress(&point).to_vec(),
        handles: Vec::new(),
    })
}

/// The AES key named by the URI, or a new AES-256 key.
fn aes_key(
    session: &Session,
    uri: &Uri,
    label: &str,
    ui: &dyn Callbacks,
) -> Res<(EnrolledKey, bool)> {
    if uri.names_object() {
        let found = session
            .find_objects(&uri_template(ObjectClass::SECRET_KEY, uri))
            .ck("C_FindObjects")?;
        match found.as_slice() {
            [] => {}
            [key] => return existing_aes_key(session, *key, ui).map(|k| (k, false)),
            _ => {
                return Err(Error::InvalidArgument {
                    what: format!(
                        "{} secret keys match the URI; add id= to choose one",
                        found.len()
                    ),
                }
                .into());
            }
        }
    }
    let (id, label) = new_key_id_and_label(uri, label)?;
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Id(id.clone()),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    let handle = session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(|e| {
            if errors::is_mechanism_refused(&e) {
                Fail::Kw(unsupported(
                    "AES-256 key generation (CKM_AES_KEY_GEN)",
                    Instead::Ecdh,
                ))
            } else {
                Fail::Ck(e, "C_GenerateKey")
            }
        })?;
    Ok((
        EnrolledKey {
            id,
            label,
            public: Vec::new(),
            handles: vec![handle],
        },
        true,
    ))
}

fn existing_aes_key(session: &Session, key: ObjectHandle, ui: &dyn Callbacks) -> Res<EnrolledKey> {
    // Attributes only; never CKA_VALUE.
    let attrs = session
        .get_attributes(
            key,
            &[
                AttributeType::KeyType,
                AttributeType::Id,
                AttributeType::Label,
                AttributeType::ValueLen,
                AttributeType::Encrypt,
                AttributeType::Decrypt,
                AttributeType::Extractable,
            ],
        )
        .ck("C_GetAttributeValue")?;
    let mut id = Vec::new();
    let mut label = String::new();
    let mut key_type = None;
    let mut len = 0u64;
    let (mut encrypt, mut decrypt, mut extractable) = (false, false, false);
    for a in attrs {
        match a {
            Attribute::KeyType(k) => key_type = Some(k),
            Attribute::Id(v) => id = v,
            Attribute::Label(v) => label = String::from_utf8_lossy(&v).into_owned(),
            Attribute::ValueLen(n) => len = n.into(),
            Attribute::Encrypt(b) => encrypt = b,
            Attribute::Decrypt(b) => decrypt = b,
            Attribute::Extractable(b) => extractable = b,
            _ => {}
        }
    }
    let wrong = |why: &str| {
        Fail::Kw(failed(
            "wrong key",
            format!("the key the URI names cannot be used in aes-gcm mode: {why}"),
        ))
    };
    if key_type != Some(KeyType::AES) || len != 32 {
        return Err(wrong("it is not an AES-256 key"));
    }
    if !encrypt || !decrypt {
        return Err(wrong("it does not allow both encryption and decryption"));
    }
    if id.is_empty() {
        return Err(wrong(
            "it has no CKA_ID, which keyward needs to find it again",
        ));
    }
    if extractable {
        ui.notify(&Notice::Info(
            "warning: the AES key is extractable (CKA_EXTRACTABLE): it can leave the token",
        ));
    }
    Ok(EnrolledKey {
        id,
        label,
        public: Vec::new(),
        handles: Vec::new(),
    })
}

/// A new Ed25519 key pair for signing, with its own random CKA_ID.
fn ed25519_key(session: &Session, label: &str) -> Res<(SignKey, Vec<ObjectHandle>)> {
    let mut id = vec![0u8; KEY_ID_LEN];
    random_bytes(&mut id)?;
    let label = if label.is_empty() {
        "keyward ed25519".to_owned()
    } else {
        format!("keyward {label} ed25519")
    };
    let public_template = [
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::EcParams(ED25519_PARAMS.to_vec()),
        Attribute::Id(id.clone()),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    let private_template = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Id(id.clone()),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    let (public, private) = session
        .generate_key_pair(
            &Mechanism::EccEdwardsKeyPairGen,
            &public_template,
            &private_template,
        )
        .map_err(|e| {
            if errors::is_mechanism_refused(&e) {
                Fail::Kw(unsupported(
                    "Ed25519 key generation (CKM_EC_EDWARDS_KEY_PAIR_GEN)",
                    Instead::NoEd25519,
                ))
            } else {
                Fail::Ck(e, "C_GenerateKeyPair")
            }
        })?;
    let point = read_public(session, public, PublicForm::Ed25519)?;
    Ok((
        SignKey {
            id,
            label,
            public: point,
        },
        vec![public, private],
    ))
}

/// Pure Ed25519 (RFC 8032) on the token.
fn ed25519_sign(session: &Session, private: ObjectHandle, msg: &[u8]) -> Res<[u8; 64]> {
    let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
    let sig = session.sign(&mechanism, private, msg).map_err(|e| {
        if errors::is_mechanism_refused(&e) {
            Fail::Kw(unsupported("CKM_EDDSA with this key", Instead::Nothing))
        } else {
            Fail::Ck(e, "C_Sign")
        }
    })?;
    sig.as_slice().try_into().map_err(|_| {
        Fail::Kw(failed(
            "CKM_EDDSA",
            format!("the token returned a {}-byte Ed25519 signature", sig.len()),
        ))
    })
}

fn find(session: &Session, class: ObjectClass, id: &[u8]) -> Res<Vec<ObjectHandle>> {
    session
        .find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())])
        .ck("C_FindObjects")
}

fn ambiguous(id: &[u8]) -> Fail {
    Fail::Kw(failed(
        "ambiguous key",
        format!(
            "several objects of one class share CKA_ID {}; remove the duplicates",
            hex::encode(id)
        ),
    ))
}

fn find_one(session: &Session, class: ObjectClass, id: &[u8], what: &str) -> Res<ObjectHandle> {
    match find(session, class, id)?.as_slice() {
        [h] => Ok(*h),
        [] => Err(Error::WrongDevice {
            expected: format!("a {what} with CKA_ID {}", hex::encode(id)),
            found: "no such object on the token (deleted, or another token)".into(),
        }
        .into()),
        _ => Err(ambiguous(id)),
    }
}

/// Reads CKA_EC_POINT. PKCS#11 says it is a DER OCTET STRING around the
/// point (SoftHSM: 67 bytes for P-256, 34 for Ed25519); some modules return
/// the bare point, so we accept both.
fn read_ec_point_raw(session: &Session, public: ObjectHandle) -> Res<Vec<u8>> {
    let attrs = session
        .get_attributes(public, &[AttributeType::EcPoint])
        .ck("C_GetAttributeValue")?;
    attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(v) => Some(v),
            _ => None,
        })
        .ok_or_else(|| {
            Fail::Kw(failed(
                "no CKA_EC_POINT",
                "the public key object has no EC point",
            ))
        })
}

fn read_ec_point(session: &Session, public: ObjectHandle) -> Res<p256::PublicKey> {
    parse_ec_point(&read_ec_point_raw(session, public)?).map_err(Fail::Kw)
}

/// The public key in the form the enrollment stores it.
fn read_public(session: &Session, public: ObjectHandle, form: PublicForm) -> Res<Vec<u8>> {
    let raw = read_ec_point_raw(session, public)?;
    match form {
        PublicForm::None => Ok(Vec::new()),
        PublicForm::P256 => Ok(ecies::compress(&parse_ec_point(&raw)?).to_vec()),
        PublicForm::Ed25519 => Ok(parse_ed25519_point(&raw)?.to_vec()),
    }
}

/// The content of a DER OCTET STRING of one of `lens`, or `raw` itself.
fn strip_octet_string<'r>(raw: &'r [u8], lens: &[usize]) -> &'r [u8] {
    match raw {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() && lens.contains(&rest.len()) => {
            rest
        }
        _ => raw,
    }
}

/// Parses a P-256 CKA_EC_POINT value (DER OCTET STRING or bare SEC1).
///
/// # Errors
/// [`Error::InvalidPublicKey`].
pub fn parse_ec_point(raw: &[u8]) -> Result<p256::PublicKey> {
    ecies::parse_public_key(strip_octet_string(raw, &[65, 33]))
}

/// Parses an Ed25519 CKA_EC_POINT value (DER OCTET STRING or the bare 32
/// bytes) and checks it is a valid, not small-order, point.
///
/// # Errors
/// [`Error::InvalidPublicKey`].
pub fn parse_ed25519_point(raw: &[u8]) -> Result<[u8; 32]> {
    let bytes: [u8; 32] =
        strip_octet_string(raw, &[32])
            .try_into()
            .map_err(|_| Error::InvalidPublicKey {
                what: "an Ed25519 public key is 32 bytes",
            })?;
    let key =
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| Error::InvalidPublicKey {
            what: "not a valid Ed25519 point",
        })?;
    if key.is_weak() {
        return Err(Error::InvalidPublicKey {
            what: "a small-order Ed25519 point",
        });
    }
    Ok(bytes)
}

/// ECDH on the token: the x-coordinate of d·epk via CKM_ECDH1_DERIVE with
/// the null KDF, into a session object created extractable and destroyed
/// right after its value is read.
fn token_ecdh(session: &Session, private: ObjectHandle, epk: &p256::PublicKey) -> Res<Secret32> {
    let point = epk.to_sec1_point(false);
    let params = Ecdh1DeriveParams::new(EcKdf::null(), point.as_bytes());
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::ValueLen(32.into()),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ];
    let derived = session
        .derive_key(&Mechanism::Ecdh1Derive(params), private, &template)
        .map_err(|e| {
            if errors::is_mechanism_refused(&e) {
                Fail::Kw(unsupported(
                    "CKM_ECDH1_DERIVE with the null KDF",
                    Instead::AesGcm,
                ))
            } else {
                Fail::Ck(e, "C_DeriveKey")
            }
        })?;
    let value = session.get_attributes(derived, &[AttributeType::Value]);
    // Destroyed whatever the read gave; a failure here leaves only a
    // session object, gone when the session closes.
    let _ = session.destroy_object(derived);
    let mut value = value
        .ck("C_GetAttributeValue")?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Value(v) => Some(v),
            _ => None,
        })
        .unwrap_or_default();
    let z = Secret32::try_from_slice(&value).map_err(|_| {
        Fail::Kw(failed(
            "ecdh output",
            format!(
                "the token returned {} bytes for the ECDH secret instead of 32",
                value.len()
            ),
        ))
    });
    value.zeroize();
    z
}

fn ecdh_unwrap(
    token: &Token,
    private: ObjectHandle,
    public: &[u8],
    blob: &[u8],
    aad: &[u8],
) -> Res<Secret32> {
    // We run the token's ECDH inside ecies::open's closure; a cryptoki
    // failure is carried out through this slot so that stale sessions can
    // still be recognised and retried.
    let mut ck_failure = None;
    let result = ecies::open(public, blob, aad, |epk| {
        token
            .with_session(|s| token_ecdh(s, private, epk))
            .map_err(|f| match f {
                Fail::Kw(e) => e,
                Fail::Ck(CkError::Pkcs11(rv, function), what) => {
                    ck_failure = Some(Fail::Ck(CkError::Pkcs11(rv, function), what));
                    errors::map(CkError::Pkcs11(rv, function), what)
                }
                Fail::Ck(e, what) => errors::map(e, what),
            })
    });
    match (result, ck_failure) {
        (Ok(s), _) => Ok(s),
        (Err(_), Some(f)) => Err(f),
        (Err(e), None) => Err(Fail::Kw(e)),
    }
}

fn aes_wrap(token: &Token, key: ObjectHandle, secret: &Secret32, aad: &[u8]) -> Res<Vec<u8>> {
    let mut iv = [0u8; descriptor::GCM_IV_LEN];
    random_bytes(&mut iv)?;
    let sent_iv = iv;
    let ct = token.with_session(|s| {
        let params = GcmParams::new(&mut iv, aad, (8 * descriptor::GCM_TAG_LEN as u64).into())
            .ck("CK_GCM_PARAMS")?;
        s.encrypt(&Mechanism::AesGcm(params), key, secret.expose())
            .map_err(|e| {
                if errors::is_mechanism_refused(&e) {
                    Fail::Kw(unsupported("CKM_AES_GCM", Instead::Ecdh))
                } else {
                    Fail::Ck(e, "C_Encrypt")
                }
            })
    })?;
    if iv != sent_iv || ct.len() != 32 + descriptor::GCM_TAG_LEN {
        // A module that picks its own IV or tag length would make blobs we
        // could not describe; refuse rather than store them.
        return Err(failed(
            "CKM_AES_GCM",
            "the token changed the IV or returned an unexpected length",
        )
        .into());
    }
    let mut blob = Vec::with_capacity(descriptor::AES_GCM_BLOB_LEN);
    blob.push(descriptor::AES_GCM_BLOB_VERSION);
    blob.extend_from_slice(&iv);
    blob.extend_from_slice(&ct);
    Ok(blob)
}

fn aes_unwrap(token: &Token, key: ObjectHandle, blob: &[u8], aad: &[u8]) -> Res<Secret32> {
    let (mut iv, ct) = descriptor::split_aes_gcm_blob(blob)?;
    token.with_session(|s| {
        let params = GcmParams::new(&mut iv, aad, (8 * descriptor::GCM_TAG_LEN as u64).into())
            .ck("CK_GCM_PARAMS")?;
        match s.decrypt(&Mechanism::AesGcm(params), key, ct) {
            Ok(mut plain) => {
                let secret = Secret32::try_from_slice(&plain).map_err(|_| Error::UnwrapFailed);
                plain.zeroize();
                Ok(secret?)
            }
            // Authentication failures are opaque, as everywhere in keyward.
            // SoftHSM 2.6 reports a GCM tag mismatch as CKR_GENERAL_ERROR
            // (OpenSSL's EVP_DecryptFinal failing); the key and session were
            // just found usable, so we read it as a failed authentication.
            Err(CkError::Pkcs11(
                RvError::GeneralError
                | RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataInvalid
                | RvError::DataLenRange
                | RvError::FunctionFailed,
                _,
            )) => Err(Error::UnwrapFailed.into()),
            Err(e) if errors::is_mechanism_refused(&e) => {
                Err(unsupported("CKM_AES_GCM", Instead::Ecdh).into())
            }
            Err(e) => Err(Fail::Ck(e, "C_Decrypt")),
        }
    })
}

/// The backend as the shared unwrap sees it ([`ecdh_device`]), for
/// enrollments in the ecdh mode (the aes-gcm mode unwraps on the token).
struct EcdhToken<'b>(&'b Backend);

/// The enrolled key checked and logged in to; what is needed to find it
/// again if the token's session goes stale before the derive.
struct TokenSession<'a> {
    public: &'a [u8],
    ui: &'a dyn Callbacks,
}

impl EcdhDevice for EcdhToken<'_> {
    type Params = Descriptor;
    type Session<'a>
        = TokenSession<'a>
    where
        Self: 'a;

    fn kind(&self) -> BackendKind {
        KIND
    }

    fn params(&self, enrollment: &Enrollment) -> Result<Descriptor> {
        Descriptor::from_enrollment(enrollment)
    }

    fn open_session<'a>(
        &'a self,
        enrollment: &'a Enrollment,
        d: &'a Descriptor,
        ui: &'a dyn Callbacks,
    ) -> Result<TokenSession<'a>> {
        let public = enrollment.public_key.as_slice();
        self.0.with_token(d, |token| {
            Backend::ready_key(token, d, &KeyRef::wrap(d, public), ui).map(|_| ())
        })?;
        Ok(TokenSession { public, ui })
    }

    fn ecdh(
        &self,
        session: &mut TokenSession<'_>,
        d: &Descriptor,
        peer: &p256::PublicKey,
    ) -> Result<Secret32> {
        // The key is cached from open_session; a stale session (token
        // removed and re-inserted) is looked up, and logged in to, again.
        self.0.with_token(d, |token| {
            let key = Backend::ready_key(token, d, &KeyRef::wrap(d, session.public), session.ui)?;
            token.with_session(|s| token_ecdh(s, key, peer))
        })
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
                        if errors::is_mechanism_refused(&e) {
                            Fail::Kw(unsupported(
                                "CKM_ECDSA with this key (it may lack CKA_SIGN)",
                                Instead::Nothing,
                            ))
                        } else {
                            Fail::Ck(e, "C_Sign")
                        }
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
