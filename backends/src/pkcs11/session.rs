//! Finding the enrolled token, and the login session keyward keeps with
//! it: one anchor session per token, a pool of operation sessions, and
//! the keys found after login. A stale session (token removed and
//! re-inserted) is recognised and the lookup done once more.

// A part of the pkcs11 module, split by concept: it shares the parent's
// imports and items.
use super::{
    Arc, Backend, Callbacks, CkError, Descriptor, DeviceError, Error, Instead, KIND, KeyRef, Mutex,
    MutexGuard, Notice, ObjectClass, ObjectHandle, Path, PathBuf, Pkcs11, Result, RvError,
    SecretKind, SecretRequest, SecretString, Session, SessionState, Slot, TokenInfo, Uri, UserType,
    Zeroize, descriptor, errors, find_one, library, lock_or_reset,
};

/// A token we have talked to in this process.
pub(super) struct Token {
    pub(super) lib: Pkcs11,
    pub(super) module: PathBuf,
    pub(super) slot: Slot,
    pub(super) label: String,
    pub(super) serial: String,
    /// The session that holds the login (PKCS#11 logs in per token, and
    /// closing the last session logs out). `None`: not logged in by us.
    pub(super) anchor: Mutex<Option<Session>>,
    /// Idle read-only sessions for operations.
    pub(super) pool: Mutex<Vec<Session>>,
    /// Key handles found (and checked against the enrollment) since login.
    /// Handles stay valid while the token is present; a stale one fails with
    /// CKR_OBJECT_HANDLE_INVALID and the whole entry is dropped and rebuilt.
    pub(super) keys: Mutex<Vec<CachedKey>>,
}

pub(super) struct CachedKey {
    pub(super) class: ObjectClass,
    pub(super) id: Vec<u8>,
    pub(super) public_key: Vec<u8>,
    pub(super) handle: ObjectHandle,
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
pub(super) enum Fail {
    Ck(CkError, &'static str),
    Kw(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Self::Kw(e)
    }
}

impl Fail {
    /// The failure of `call` with error `e`: the token lacks `mechanism`
    /// (use `instead`) when it refuses the mechanism, else the raw error.
    pub(super) fn refused(
        e: CkError,
        call: &'static str,
        mechanism: &'static str,
        instead: Instead,
    ) -> Self {
        if errors::is_mechanism_refused(&e) {
            Self::Kw(errors::unsupported(mechanism, instead))
        } else {
            Self::Ck(e, call)
        }
    }

    pub(super) fn is_stale(&self) -> bool {
        matches!(self, Self::Ck(e, _) if errors::is_stale(e))
    }

    pub(super) fn into_error(self) -> Error {
        match self {
            Self::Ck(e, what) => errors::map(e, what),
            Self::Kw(e) => e,
        }
    }
}

pub(super) type Res<T> = std::result::Result<T, Fail>;

pub(super) trait CkExt<T> {
    fn ck(self, what: &'static str) -> Res<T>;
}

impl<T> CkExt<T> for std::result::Result<T, CkError> {
    fn ck(self, what: &'static str) -> Res<T> {
        self.map_err(|e| Fail::Ck(e, what))
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Our mutexes guard plain collections that are consistent after every
    // statement, so a panic elsewhere never leaves them half-updated.
    lock_or_reset(m, |_| {})
}

impl Token {
    pub(super) fn identity(&self) -> String {
        descriptor::token_identity(&self.label, &self.serial)
    }

    /// Runs `f` on an idle operation session (opening one if none is idle).
    pub(super) fn with_session<T>(&self, f: impl FnOnce(&Session) -> Res<T>) -> Res<T> {
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

    pub(super) fn is_logged_in(&self) -> bool {
        logged_in(lock(&self.anchor).as_ref())
    }

    /// Logs in unless already logged in, asking for the PIN through `ui` (or
    /// reading it from `pin_source`). The anchor lock is held throughout, so
    /// threads that need the login at the same time ask for the PIN once.
    pub(super) fn login(&self, ui: &dyn Callbacks, pin_source: Option<&Path>) -> Res<()> {
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
    pub(super) fn key(&self, key: &KeyRef<'_>) -> Res<ObjectHandle> {
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

    pub(super) fn cached_key(&self, key: &KeyRef<'_>) -> Option<ObjectHandle> {
        lock(&self.keys)
            .iter()
            .find(|k| k.class == key.class && k.id == key.id && k.public_key == key.public)
            .map(|k| k.handle)
    }

    pub(super) fn logout(&self) {
        lock(&self.keys).clear();
        if let Some(session) = lock(&self.anchor).take() {
            // Best effort: the token may be gone already.
            let _ = session.logout();
        }
        lock(&self.pool).clear();
    }
}

pub(super) fn logged_in(anchor: Option<&Session>) -> bool {
    anchor.is_some_and(|s| {
        s.get_session_info().is_ok_and(|i| {
            matches!(
                i.session_state(),
                SessionState::RoUser | SessionState::RwUser
            )
        })
    })
}

pub(super) fn login_result(r: std::result::Result<(), CkError>) -> Res<()> {
    match r {
        // Login is per token: another session of ours (or of another
        // library user in this process) logged in first. That is success.
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(Fail::Ck(e, "C_Login")),
    }
}

/// The prompt text: the token label, and the PIN-state flags the token
/// reports (PKCS#11 §5.2 CK_TOKEN_INFO flags).
pub(super) fn pin_description(info: &TokenInfo) -> String {
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

pub(super) fn read_pin_file(path: &Path) -> Res<SecretString> {
    let mut text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading pin-source {}", path.display()), e))?;
    let pin = text.trim_end_matches(['\n', '\r']).to_owned();
    text.zeroize();
    Ok(SecretString::from(pin))
}

impl Backend {
    /// The cached token for (module, slot, label, serial), or a new entry.
    pub(super) fn token(
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

    pub(super) fn logged_in_token(&self, d: &Descriptor) -> Option<Arc<Token>> {
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
    pub(super) fn ready_key(
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

    pub(super) fn forget(&self, token: &Arc<Token>) {
        lock(&self.tokens).retain(|t| !Arc::ptr_eq(t, token));
    }

    /// Finds the enrolled token by label and serial. Never asks for a PIN.
    pub(super) fn find_token(&self, d: &Descriptor) -> Result<Arc<Token>> {
        let module = self.unlock_module(d)?;
        let lib = library::load(&module)?;
        let slot = find_slot(&lib, &d.token_label, &d.token_serial)?;
        Ok(self.token(&lib, &module, slot, &d.token_label, &d.token_serial))
    }

    /// Runs `op` against the enrolled token, once more from a fresh lookup
    /// if the first attempt hit a stale session (token removed, re-inserted).
    pub(super) fn with_token<T>(
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
}

/// Looks up a module by its `module-name` in the usual directories.
pub(super) fn module_by_name(name: &str) -> Result<PathBuf> {
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
pub(super) fn find_slot(lib: &Pkcs11, label: &str, serial: &str) -> Result<Slot> {
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
pub(super) fn select_token(lib: &Pkcs11, uri: &Uri) -> Result<(Slot, TokenInfo)> {
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
