//! Everything that can make a command fail, rendered as a diagnosis
//! (`error: ...`), a remedy (`hint: ...`) and a documented exit code
//! (docs/CLI.md; the same table is in `keyward --help`).

use std::fmt::Write as _;

use keyward_kms::error::{DeviceError, Instead};
use keyward_kms::{BackendKind, Error};

/// Process exit codes (docs/CLI.md), shared with the daemon API's `exit`.
pub(crate) use keyward_api::Exit;

/// A failed command: what happened, what to do, and the exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The diagnosis, one line.
    pub(crate) message: String,
    /// The remedy, if there is one to give.
    pub(crate) hint: Option<String>,
    /// Exit code.
    pub(crate) code: Exit,
}

impl Failure {
    /// A failure with a message and exit code.
    pub(crate) fn new(code: Exit, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hint: None,
            code,
        }
    }

    /// Adds (or replaces) the hint.
    #[must_use]
    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Writing to stdout failed because the reader went away.
    pub(crate) fn broken_pipe() -> Self {
        Self::new(Exit::BrokenPipe, "")
    }

    /// An I/O failure with what we were doing.
    pub(crate) fn io(context: impl std::fmt::Display, err: &std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            return Self::broken_pipe();
        }
        Self::new(Exit::Failure, format!("{context}: {err}"))
    }

    /// Nothing should be printed (broken pipe).
    pub(crate) fn is_silent(&self) -> bool {
        self.code == Exit::BrokenPipe
    }

    /// The text printed to stderr.
    pub(crate) fn render(&self) -> String {
        let mut out = format!("error: {}\n", self.message);
        if let Some(hint) = &self.hint {
            let _ = writeln!(out, "hint: {hint}");
        }
        out
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        from_kms_for(&err, None)
    }
}

/// [`from_kms`] for an error from a protector of `kind` (when known): PIN,
/// lockout and wrong-device errors carry no kind of their own, and their
/// remedy depends on it.
pub(crate) fn from_kms_for(err: &Error, kind: Option<BackendKind>) -> Failure {
    let generic = from_kms(err);
    match hardware(err, kind) {
        Some((code, message, hint)) => Failure {
            message: message.unwrap_or(generic.message),
            hint: Some(hint),
            code,
        },
        None => generic,
    }
}

/// Exit code, replacement message (if any) and remedy of the errors of the
/// hardware backends (docs/CLI.md, "Hardware protectors"). Device causes
/// are matched by variant ([`DeviceError`]); their text is never parsed.
fn hardware(err: &Error, kind: Option<BackendKind>) -> Option<(Exit, Option<String>, String)> {
    const OTHER: &str = "unlock with another protector (e.g. --recovery-key-file FILE)";
    let tpm = kind == Some(BackendKind::Tpm);
    let pkcs11 = kind == Some(BackendKind::Pkcs11);
    let yubikey = kind == Some(BackendKind::Yubikey);
    Some(match err {
        Error::DeviceNotFound { kind, hint } if kind == BackendKind::Tpm.as_str() => (
            Exit::Device,
            hint.as_ref().map(DeviceError::diagnosis),
            format!(
                "is swtpm running, or is /dev/tpmrm0 there and usable by you (group tss)? \
                 set KEYWARD_TPM_TCTI or --tcti to the TPM's TCTI, or {OTHER}"
            ),
        ),
        Error::DeviceNotFound {
            hint: Some(cause @ DeviceError::ModuleNotGiven { usual, present }),
            ..
        } => (
            Exit::Device,
            Some(cause.diagnosis()),
            format!(
                "pass --module PATH, set KEYWARD_PKCS11_MODULE, or add ?module-path=PATH to the \
                 URI; modules usually live at {}{}",
                usual.join(", "),
                if present.is_empty() {
                    String::new()
                } else {
                    format!(" (present here: {})", present.join(", "))
                }
            ),
        ),
        Error::DeviceNotFound {
            hint: Some(cause @ DeviceError::ModuleNotFound { usual, .. }),
            ..
        } => (
            Exit::Device,
            Some(cause.diagnosis()),
            format!(
                "install it or give the right path with --module / KEYWARD_PKCS11_MODULE (usual \
                 places: {})",
                usual.join(", ")
            ),
        ),
        Error::DeviceNotFound {
            hint: Some(cause @ DeviceError::ModuleNotInstalled { .. }),
            ..
        } => (
            Exit::Device,
            Some(cause.diagnosis()),
            "give module-path= instead".to_owned(),
        ),
        Error::DeviceNotFound { kind, hint } if kind == BackendKind::Pkcs11.as_str() => (
            Exit::Device,
            match hint {
                Some(cause @ DeviceError::TokenAbsent { .. }) => {
                    Some(format!("PKCS#11 {}", cause.diagnosis()))
                }
                _ => None,
            },
            format!(
                "insert the token and try again (SoftHSM: check SOFTHSM2_CONF and its token \
                 directory), or {OTHER}"
            ),
        ),
        Error::Device { error, .. } => return device(error),
        Error::WrongDevice { .. } if tpm => (Exit::Device, None, WRONG_TPM_HINT.to_owned()),
        Error::WrongDevice { .. } if pkcs11 => (
            Exit::Device,
            None,
            format!(
                "connect the token this protector was enrolled with (`keyward protectors \
                 list` shows it), or {OTHER}"
            ),
        ),
        Error::WrongPin { .. } if tpm || pkcs11 => (
            Exit::Auth,
            None,
            format!(
                "keyward never retries a PIN: check it and run the command again (--pin-fd N, \
                 KEYWARD_PIN or the prompt); {}",
                if tpm {
                    "after too many wrong PINs the TPM locks out for a while, so if you have \
                     forgotten it, unlock with the recovery key"
                } else {
                    "after too many wrong PINs the token blocks it, so if you have forgotten \
                     it, unlock with the recovery key"
                }
            ),
        ),
        Error::Lockout { seconds } if tpm => (
            Exit::Auth,
            None,
            format!(
                "the TPM refuses PINs after too many wrong ones (dictionary-attack \
                 protection); {}, or its owner can reset it with `tpm2_dictionarylockout \
                 --clear-lockout`; meanwhile {OTHER}",
                seconds.map_or_else(
                    || "it forgives failures after a while".to_owned(),
                    |s| format!("it forgives one failure every {s} s")
                )
            ),
        ),
        Error::PinBlocked if yubikey => (
            Exit::Auth,
            None,
            format!(
                "unblock the PIN with the PUK (`ykman piv access unblock-pin`); if the PUK is \
                 blocked too, `ykman piv reset` erases the card's keys, after which the \
                 YubiKey must be set up and enrolled again; meanwhile {OTHER}"
            ),
        ),
        Error::WrongPin { .. } if yubikey => (
            Exit::Auth,
            None,
            "keyward never retries a PIN: check it and run the command again (--pin-fd N, \
             KEYWARD_PIN or the prompt); after 3 wrong PINs in a row the YubiKey blocks it"
                .to_owned(),
        ),
        Error::PinBlocked if pkcs11 => (
            Exit::Auth,
            None,
            format!(
                "unblock the user PIN with the token's SO PIN (e.g. `pkcs11-tool --login \
                 --login-type so --init-pin`), or {OTHER}"
            ),
        ),
        // The service's answer for a kind this build lacks (not a device's).
        Error::NotSupported { kind, what } if what.ends_with("in this build of keyward") => (
            Exit::Device,
            None,
            format!(
                "this keyward was built without the {kind} backend (cargo feature {kind}); \
                 use a build with it, or unlock with another protector"
            ),
        ),
        // The one capability gap of the PKCS#11 backend: an aes-gcm
        // enrollment has no key to sign with.
        Error::NotSupported { kind, .. } if kind == BackendKind::Pkcs11.as_str() => (
            Exit::Device,
            None,
            "an aes-gcm protector has no key to sign with: enroll the token with --mode \
             ecdh, or add an Ed25519 key with --sign ed25519"
                .to_owned(),
        ),
        _ => return None,
    })
}

/// Exit code, replacement message (if any) and remedy of an
/// [`Error::Device`], by its typed cause; `None` for the generic remedy.
fn device(error: &DeviceError) -> Option<(Exit, Option<String>, String)> {
    Some(match error {
        DeviceError::ModuleNotLoadable { .. } => (
            Exit::Device,
            None,
            "give the path of a PKCS#11 module for this machine with --module PATH or \
             KEYWARD_PKCS11_MODULE"
                .to_owned(),
        ),
        DeviceError::NotLoggedIn { .. } => (
            Exit::Auth,
            None,
            "an aes-gcm PKCS#11 protector wraps on its token, so the token must be logged in: \
             unlock with that protector (--protector ID and its PIN), then run the command again"
                .to_owned(),
        ),
        DeviceError::PcrMismatch { pcrs } => {
            let list = if pcrs.is_empty() {
                "LIST".to_owned()
            } else {
                let names: Vec<String> = pcrs.iter().map(ToString::to_string).collect();
                names.join(",")
            };
            (
                Exit::Auth,
                Some(error.diagnosis()),
                format!(
                    "unlock with the recovery key and bind a new TPM protector to the current \
                     values in one step: `keyward enroll tpm --replace --pcrs {list} \
                     --recovery-key-file FILE`; no data is lost"
                ),
            )
        }
        DeviceError::ForeignKey { .. } => (Exit::Device, None, WRONG_TPM_HINT.to_owned()),
        DeviceError::DefaultCredentials { .. } => (
            Exit::Device,
            None,
            "run `keyward yubikey setup` (new PIN and PUK from --pin-fd / KEYWARD_PIN and \
             --puk-fd / KEYWARD_PUK, or the prompt), then enroll again"
                .to_owned(),
        ),
        DeviceError::NoFreeSlot => (
            Exit::Device,
            None,
            "choose a slot with --slot SLOT and destroy its key with --overwrite".to_owned(),
        ),
        DeviceError::MechanismMissing { instead, .. } => {
            let hint = match instead {
                Instead::AesGcm => {
                    "the token lacks a mechanism of the ecdh mode: enroll it with `keyward \
                     enroll pkcs11 --uri URI --mode aes-gcm`"
                }
                Instead::Ecdh => {
                    "the token lacks a mechanism of the aes-gcm mode: enroll it with `keyward \
                     enroll pkcs11 --uri URI --mode ecdh`"
                }
                Instead::NoEd25519 => {
                    "the token cannot make Ed25519 keys: enroll it without --sign ed25519 to \
                     sign with ECDSA P-256"
                }
                _ => return None,
            };
            (Exit::Device, None, hint.to_owned())
        }
        _ => return None,
    })
}

/// The remedy when the TPM is not the one a protector was enrolled on.
const WRONG_TPM_HINT: &str = "this TPM protector belongs to another TPM, or this TPM was \
     cleared since enrollment: use the machine it was enrolled on, or unlock with the \
     recovery key and enroll this TPM with `keyward enroll tpm --replace`";

/// The message of `err` with its chain of sources (`Io` and `Database`
/// carry the underlying cause there).
fn message_of(err: &Error) -> String {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Maps every keyward-kms error to an exit code and a remedy.
#[expect(
    clippy::match_same_arms,
    reason = "one arm per variant reads as the documented table"
)]
pub(crate) fn from_kms(err: &Error) -> Failure {
    // An I/O error that is a closed stdout stays silent, wherever it came
    // from.
    if let Error::Io { source, .. } = err {
        if source.kind() == std::io::ErrorKind::BrokenPipe {
            return Failure::broken_pipe();
        }
    }
    let (code, hint): (Exit, Option<String>) = match err {
        // ---- cryptography ------------------------------------------------
        Error::DecryptionFailed => (
            Exit::Integrity,
            Some(
                "check that --context is the one used to encrypt and that the data was \
                 encrypted with a key of this keystore; otherwise the data was modified \
                 or damaged"
                    .into(),
            ),
        ),
        Error::UnwrapFailed => (
            Exit::Integrity,
            Some(
                "a wrapped key in the keystore was modified or copied from another \
                 keystore; restore the keystore from a backup"
                    .into(),
            ),
        ),
        Error::InvalidSignature => (
            Exit::Integrity,
            Some(
                "the message or the signature was modified, or they do not belong \
                 together"
                    .into(),
            ),
        ),
        Error::Malformed { .. } => (
            Exit::Integrity,
            Some(
                "the input is not keyward data or is damaged; check that you passed the \
                 right file"
                    .into(),
            ),
        ),
        Error::UnsupportedFormat { .. } => (
            Exit::Integrity,
            Some("the data was written by another keyward version; upgrade keyward".into()),
        ),
        Error::Truncated => (
            Exit::Integrity,
            Some(
                "the data was cut short (an interrupted copy or download?); decrypt a \
                 complete copy"
                    .into(),
            ),
        ),
        Error::Random => (
            Exit::Failure,
            Some(
                "the operating system refused random numbers; check that the getrandom \
                 system call is allowed (container or seccomp policy)"
                    .into(),
            ),
        ),
        Error::InvalidPublicKey { .. } => (
            Exit::Integrity,
            Some("a stored public key is damaged; restore the keystore from a backup".into()),
        ),

        // ---- keystore ----------------------------------------------------
        Error::StoreNotFound { .. } => (
            Exit::NotFound,
            Some(
                "create one with `keyward init`, or point --store or KEYWARD_STORE at an \
                 existing keystore"
                    .into(),
            ),
        ),
        Error::StoreExists { .. } => (
            Exit::Refused,
            Some(
                "keyward never overwrites a keystore; choose another path with --store, or \
                 move the existing one away first"
                    .into(),
            ),
        ),
        Error::NotAKeystore { .. } => (
            Exit::Store,
            Some("check the path given with --store or KEYWARD_STORE".into()),
        ),
        Error::StoreCorrupt { .. } => (
            Exit::Store,
            Some("restore the keystore from a backup".into()),
        ),
        Error::StoreTooNew { .. } => (
            Exit::Store,
            Some("this keystore was written by a newer keyward; upgrade keyward to use it".into()),
        ),
        Error::UnsafePermissions { .. } => (
            Exit::Store,
            Some(
                "the keystore must be owned by you, mode 0600, in a directory of mode \
                 0700 (chmod 600 FILE; chmod 700 DIR)"
                    .into(),
            ),
        ),
        Error::StoreBusy => (
            Exit::Store,
            Some("wait for the other keyward process to finish, then try again".into()),
        ),
        Error::Database(_) => (
            Exit::Store,
            Some(
                "check free disk space and the keystore's permissions; if the file is \
                 damaged, restore it from a backup"
                    .into(),
            ),
        ),
        Error::Io { .. } => (Exit::Failure, None),

        // ---- keys --------------------------------------------------------
        Error::KeyNotFound { name } => (
            Exit::NotFound,
            Some(format!(
                "list keys with `keyward key list`, or create it with `keyward key create {name}`"
            )),
        ),
        Error::KeyExists { name } => (
            Exit::Refused,
            Some(format!(
                "choose another name, or add a version with `keyward key rotate {name}`"
            )),
        ),
        Error::VersionNotFound { name, .. } => (
            Exit::NotFound,
            Some(format!("see its versions with `keyward key show {name}`")),
        ),
        Error::VersionRetired { name, version, .. } => (
            Exit::Refused,
            Some(format!(
                "to read it, lower the minimum with `keyward key retire {name} \
                 --min-version {version}`, then re-encrypt the data under the current \
                 version"
            )),
        ),
        Error::WrongPurpose { .. } => (
            Exit::Refused,
            Some(
                "encrypt and decrypt need an encrypt key, sign and export-public a sign \
                 key; `keyward key list` shows each key's purpose"
                    .into(),
            ),
        ),
        Error::InvalidKeyName { .. } => (
            Exit::Usage,
            Some(
                "key names are 1 to 64 characters of a-z, 0-9, '.', '_' and '-', starting \
                 with a letter or digit"
                    .into(),
            ),
        ),
        Error::UsageLimit { name, .. } => (
            Exit::Refused,
            Some(format!(
                "add a new version with `keyward key rotate {name}`"
            )),
        ),
        Error::ClassPolicy { .. } => (
            Exit::Refused,
            Some(
                "the key's data class forbids this; `keyward key show NAME` shows the \
                 class"
                    .into(),
            ),
        ),

        // ---- protectors and unlock -----------------------------------------
        Error::Locked => (Exit::Auth, Some(UNLOCK_HINT.into())),
        Error::NoSuchProtectorKind { .. } => (
            Exit::NotFound,
            Some(
                "`keyward protectors list` shows what is enrolled; supply the secret of \
                 one of those"
                    .into(),
            ),
        ),
        Error::ProtectorNotFound { .. } => (
            Exit::NotFound,
            Some("`keyward protectors list` shows the protector ids".into()),
        ),
        Error::LastProtector => (
            Exit::Refused,
            Some(
                "enroll another protector first (`keyward enroll passphrase` or `keyward \
                 enroll recovery`), then remove this one"
                    .into(),
            ),
        ),
        Error::WrongPassphrase => (
            Exit::Auth,
            Some(
                "check the passphrase (--passphrase-fd or KEYWARD_PASSPHRASE), or unlock \
                 with the recovery key (--recovery-key-file or KEYWARD_RECOVERY_KEY)"
                    .into(),
            ),
        ),
        Error::WrongRecoveryKey => (
            Exit::Auth,
            Some(
                "check the recovery key (--recovery-key-file or KEYWARD_RECOVERY_KEY) \
                 against the one written down when it was enrolled"
                    .into(),
            ),
        ),
        Error::RecoveryKeyFormat { .. } => (
            Exit::Auth,
            Some("give the recovery key exactly as it was shown when it was enrolled".into()),
        ),
        Error::WeakPassphrase { .. } => (
            Exit::Refused,
            Some(
                "choose a longer passphrase (several random words work well) and type it \
                 the same way twice"
                    .into(),
            ),
        ),

        // ---- hardware ----------------------------------------------------
        Error::DeviceNotFound { .. } => (
            Exit::Device,
            Some(
                "connect the device and check that its service is running (pcscd for \
                 YubiKeys), or unlock with another protector"
                    .into(),
            ),
        ),
        Error::WrongDevice { .. } => (
            Exit::Device,
            Some(
                "connect the enrolled device (`keyward protectors list` shows which), or \
                 unlock with another protector"
                    .into(),
            ),
        ),
        Error::WrongPin { .. } => (
            Exit::Auth,
            Some("check the PIN; after too many wrong tries the device blocks it".into()),
        ),
        Error::PinBlocked => (
            Exit::Auth,
            Some(
                "unblock the PIN with the device's own tool (PUK), or unlock with another \
                 protector"
                    .into(),
            ),
        ),
        Error::Lockout { .. } => (
            Exit::Auth,
            Some("wait for the lockout to end, or unlock with another protector".into()),
        ),
        Error::TouchTimeout => (
            Exit::Device,
            Some("touch the device when it blinks, then try again".into()),
        ),
        Error::DeviceRemoved => (
            Exit::Device,
            Some("reconnect the device and try again; the keystore was not changed".into()),
        ),
        Error::Cancelled => (Exit::Failure, None),
        Error::NotSupported { .. }
        | Error::Device {
            error: DeviceError::MechanismMissing { .. },
            ..
        } => (Exit::Device, None),
        Error::Device { .. } => (
            Exit::Device,
            Some("run with -v for details and check the device with its own tool".into()),
        ),

        // ---- audit and signed messages ---------------------------------------
        Error::AuditWrite(_) => (
            Exit::Store,
            Some(
                "the operation was not performed; check free disk space and the \
                 keystore's permissions"
                    .into(),
            ),
        ),
        Error::AuditTampered { .. } => (
            Exit::Integrity,
            Some(
                "the audit log was edited, reordered or cut short; keep this keystore \
                 for investigation and compare it with a backup"
                    .into(),
            ),
        ),
        Error::Replay { .. } => (
            Exit::Integrity,
            Some("this signed message was already accepted once; ask for a fresh one".into()),
        ),
        Error::NotFresh { .. } => (
            Exit::Integrity,
            Some("check --audience and both machines' clocks, or ask for a fresh signature".into()),
        ),

        // ---- caller input --------------------------------------------------
        Error::InvalidArgument { .. } => (Exit::Usage, None),

        // Error is non_exhaustive: a variant added later still gets a
        // message and the generic code until it is mapped here.
        _ => (Exit::Failure, None),
    };
    Failure {
        message: message_of(err),
        hint,
        code,
    }
}

/// The remedy whenever the master key is needed and no secret was given.
pub(crate) const UNLOCK_HINT: &str = "unlock with a passphrase (--passphrase-fd N or \
     KEYWARD_PASSPHRASE) or the recovery key (--recovery-key-file FILE or \
     KEYWARD_RECOVERY_KEY), or run keyward on a terminal to be asked";

/// [`UNLOCK_HINT`] when hardware protectors are enrolled.
pub(crate) const UNLOCK_HINT_HARDWARE: &str = "unlock with a passphrase (--passphrase-fd N \
     or KEYWARD_PASSPHRASE), the recovery key (--recovery-key-file FILE or \
     KEYWARD_RECOVERY_KEY) or a device PIN (--pin-fd N or KEYWARD_PIN; --with tpm for a TPM \
     without PIN), or run keyward on a terminal to be asked";

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn all_variants() -> Vec<Error> {
        vec![
            Error::DecryptionFailed,
            Error::UnwrapFailed,
            Error::InvalidSignature,
            Error::Malformed { what: "header" },
            Error::UnsupportedFormat {
                version: 9,
                supported: 1,
            },
            Error::Truncated,
            Error::Random,
            Error::InvalidPublicKey {
                what: "not on curve",
            },
            Error::StoreNotFound {
                path: PathBuf::from("/x/keystore.db"),
            },
            Error::StoreExists {
                path: PathBuf::from("/x/keystore.db"),
            },
            Error::NotAKeystore {
                path: PathBuf::from("/x"),
            },
            Error::StoreCorrupt {
                path: PathBuf::from("/x"),
                detail: "bad".into(),
            },
            Error::StoreTooNew {
                found: 9,
                supported: 1,
            },
            Error::UnsafePermissions {
                path: PathBuf::from("/x"),
                detail: "mode 0644".into(),
            },
            Error::StoreBusy,
            Error::Database(rusqlite_error()),
            Error::io(
                "reading /x",
                std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
            ),
            Error::KeyNotFound { name: "k".into() },
            Error::KeyExists { name: "k".into() },
            Error::VersionNotFound {
                name: "k".into(),
                version: 3,
            },
            Error::VersionRetired {
                name: "k".into(),
                version: 1,
                min_decryption_version: 2,
            },
            Error::WrongPurpose {
                name: "k".into(),
                actual: "sign",
                wanted: "encrypt",
            },
            Error::InvalidKeyName {
                name: "K".into(),
                reason: "upper case",
            },
            Error::UsageLimit {
                name: "k".into(),
                version: 1,
            },
            Error::ClassPolicy { what: "no" },
            Error::Locked,
            Error::NoSuchProtectorKind { kind: "tpm".into() },
            Error::ProtectorNotFound { id: 7 },
            Error::LastProtector,
            Error::WrongPassphrase,
            Error::WrongRecoveryKey,
            Error::RecoveryKeyFormat { reason: "length" },
            Error::WeakPassphrase { reason: "short" },
            Error::DeviceNotFound {
                kind: "yubikey".into(),
                hint: None,
            },
            Error::WrongDevice {
                expected: "1".into(),
                found: "2".into(),
            },
            Error::WrongPin {
                retries_left: Some(2),
            },
            Error::PinBlocked,
            Error::Lockout { seconds: Some(10) },
            Error::TouchTimeout,
            Error::DeviceRemoved,
            Error::Cancelled,
            Error::NotSupported {
                kind: "tpm".into(),
                what: "sign",
            },
            Error::Device {
                kind: BackendKind::Tpm,
                error: DeviceError::Tpm {
                    rc: 0x902,
                    detail: "out of memory".into(),
                },
            },
            Error::AuditWrite(Box::new(Error::StoreBusy)),
            Error::AuditTampered {
                seq: 4,
                detail: "hash".into(),
            },
            Error::Replay { counter: 3 },
            Error::NotFresh { reason: "old" },
            Error::InvalidArgument { what: "x".into() },
        ]
    }

    fn rusqlite_error() -> rusqlite::Error {
        rusqlite::Error::InvalidQuery
    }

    #[test]
    fn every_variant_renders_error_line_and_nonzero_code() {
        for err in all_variants() {
            let f = from_kms(&err);
            let text = f.render();
            assert!(text.starts_with("error: "), "{text}");
            assert!(!f.message.is_empty());
            assert_ne!(f.code as u8, 0);
            assert!(!f.is_silent(), "{err:?}");
            if let Some(hint) = &f.hint {
                assert!(text.contains(&format!("\nhint: {hint}\n")), "{text}");
            }
        }
    }

    #[test]
    fn codes_follow_the_documented_table() {
        let code = |e: Error| from_kms(&e).code;
        assert_eq!(code(Error::WrongPassphrase), Exit::Auth);
        assert_eq!(code(Error::Locked), Exit::Auth);
        assert_eq!(code(Error::WrongPin { retries_left: None }), Exit::Auth);
        assert_eq!(
            code(Error::StoreNotFound {
                path: PathBuf::new()
            }),
            Exit::NotFound
        );
        assert_eq!(
            code(Error::KeyNotFound { name: "k".into() }),
            Exit::NotFound
        );
        assert_eq!(code(Error::DecryptionFailed), Exit::Integrity);
        assert_eq!(code(Error::Truncated), Exit::Integrity);
        assert_eq!(
            code(Error::AuditTampered {
                seq: 1,
                detail: String::new()
            }),
            Exit::Integrity
        );
        assert_eq!(code(Error::LastProtector), Exit::Refused);
        assert_eq!(code(Error::ClassPolicy { what: "x" }), Exit::Refused);
        assert_eq!(code(Error::TouchTimeout), Exit::Device);
        assert_eq!(code(Error::StoreBusy), Exit::Store);
        assert_eq!(
            code(Error::StoreTooNew {
                found: 2,
                supported: 1
            }),
            Exit::Store
        );
        assert_eq!(
            code(Error::InvalidArgument { what: "x".into() }),
            Exit::Usage
        );
    }

    #[test]
    fn hints_name_the_key_and_version() {
        let f = from_kms(&Error::VersionRetired {
            name: "notes".into(),
            version: 1,
            min_decryption_version: 2,
        });
        assert_eq!(
            f.hint.as_deref(),
            Some(
                "to read it, lower the minimum with `keyward key retire notes --min-version 1`, \
                 then re-encrypt the data under the current version"
            )
        );
        let f = from_kms(&Error::KeyNotFound {
            name: "nope".into(),
        });
        assert!(f.render().contains("`keyward key create nope`"));
    }

    #[test]
    fn io_errors_keep_their_cause() {
        let f = from_kms(&Error::io(
            "reading input.bin",
            std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory"),
        ));
        assert_eq!(f.message, "reading input.bin: No such file or directory");
        assert_eq!(f.code, Exit::Failure);
    }

    #[test]
    fn broken_pipe_is_silent() {
        let f = from_kms(&Error::io(
            "writing output",
            std::io::Error::from(std::io::ErrorKind::BrokenPipe),
        ));
        assert!(f.is_silent());
        assert_eq!(f.code as u8, 141);
        let f = Failure::io(
            "writing",
            &std::io::Error::from(std::io::ErrorKind::BrokenPipe),
        );
        assert!(f.is_silent());
    }

    #[test]
    fn hardware_errors_get_a_remedy_by_kind() {
        let tpm = Some(BackendKind::Tpm);
        let pkcs11 = Some(BackendKind::Pkcs11);
        let f = from_kms_for(
            &Error::WrongPin {
                retries_left: Some(2),
            },
            tpm,
        );
        assert_eq!(
            (f.code, f.message.as_str()),
            (Exit::Auth, "wrong PIN (2 tries left)")
        );
        assert!(
            f.hint
                .as_deref()
                .is_some_and(|h| h.contains("TPM locks out"))
        );
        let f = from_kms_for(&Error::WrongPin { retries_left: None }, pkcs11);
        assert!(
            f.hint
                .as_deref()
                .is_some_and(|h| h.contains("token blocks it"))
        );
        // Without a kind, the generic remedy.
        let f = from_kms_for(&Error::WrongPin { retries_left: None }, None);
        assert_eq!(
            f.hint.as_deref(),
            Some("check the PIN; after too many wrong tries the device blocks it")
        );
        let f = from_kms_for(
            &Error::Lockout {
                seconds: Some(1000),
            },
            tpm,
        );
        assert_eq!(f.message, "the device is locked out for 1000 s");
        assert!(
            f.hint
                .as_deref()
                .is_some_and(|h| h.contains("one failure every 1000 s"))
        );
        let f = from_kms_for(&Error::PinBlocked, pkcs11);
        assert!(f.hint.as_deref().is_some_and(|h| h.contains("--init-pin")));
        for kind in [tpm, pkcs11] {
            let f = from_kms_for(
                &Error::WrongDevice {
                    expected: "a".into(),
                    found: "b".into(),
                },
                kind,
            );
            assert_eq!(f.code, Exit::Device);
            assert_ne!(f.hint, from_kms(&Error::WrongPassphrase).hint);
        }
        // Kinds carried by the error itself need no context.
        let f = Failure::from(Error::not_found(
            BackendKind::Tpm,
            DeviceError::Unreachable {
                tcti: "device:/dev/tpmrm0".into(),
            },
        ));
        assert_eq!(f.message, "cannot reach the TPM at device:/dev/tpmrm0");
        assert!(
            f.hint
                .as_deref()
                .is_some_and(|h| h.starts_with("is swtpm running"))
        );
        let f = Failure::from(Error::device(
            BackendKind::Tpm,
            DeviceError::ForeignKey { rc: 0x1df },
        ));
        assert_eq!(f.hint.as_deref(), Some(WRONG_TPM_HINT));
    }

    #[test]
    fn pcr_mismatch_is_split_into_diagnosis_and_command() {
        let f = Failure::from(Error::device(
            BackendKind::Tpm,
            DeviceError::PcrMismatch { pcrs: vec![7, 11] },
        ));
        assert_eq!(f.code, Exit::Auth);
        // The diagnosis without the backend's own advice; its exact text
        // is asserted end to end in tests/tests/cli_hw_tpm.rs.
        assert!(
            f.message
                .ends_with("PCR 7, 11 (sha256 bank) changed since enrollment (firmware, boot loader or Secure Boot settings changed)"),
            "{f:?}"
        );
        assert!(
            f.hint
                .as_deref()
                .is_some_and(|h| h.contains("`keyward enroll tpm --replace --pcrs 7,11 ")),
            "{f:?}"
        );
        // The TPM refused its policy but the values read back match.
        let f = Failure::from(Error::device(
            BackendKind::Tpm,
            DeviceError::PcrMismatch { pcrs: vec![] },
        ));
        assert!(
            f.hint
                .as_deref()
                .is_some_and(|h| h.contains("--pcrs LIST ")),
            "{f:?}"
        );
    }

    #[cfg(feature = "pkcs11")]
    #[test]
    fn pkcs11_module_errors_as_the_backend_words_them() {
        use keyward_backends::pkcs11::library;
        let missing = library::load(std::path::Path::new("/nonexistent/libx.so"))
            .expect_err("no such module");
        let f = Failure::from(missing);
        assert_eq!(
            f.message,
            "PKCS#11 module /nonexistent/libx.so not found (No such file or directory (os error \
             2))"
        );
        assert!(
            f.hint
                .as_deref()
                .is_some_and(|h| h.starts_with("install it or give"))
        );
        let token = Failure::from(Error::not_found(
            BackendKind::Pkcs11,
            DeviceError::TokenAbsent {
                label: "t".into(),
                serial: "1".into(),
                visible: vec!["\"u\"".into()],
            },
        ));
        assert_eq!(
            token.message,
            "PKCS#11 token \"t\" (serial 1) is not present (visible: \"u\")"
        );
        assert!(
            token
                .hint
                .as_deref()
                .is_some_and(|h| h.starts_with("insert the token"))
        );
    }

    #[test]
    fn mechanism_errors_suggest_the_other_mode() {
        let hint = |instead| {
            Failure::from(Error::device(
                BackendKind::Pkcs11,
                DeviceError::MechanismMissing {
                    mechanism: "CKM_X",
                    instead,
                },
            ))
            .hint
            .unwrap_or_default()
        };
        assert!(hint(Instead::AesGcm).ends_with("--mode aes-gcm`"));
        assert!(hint(Instead::Ecdh).ends_with("--mode ecdh`"));
        assert!(hint(Instead::NoEd25519).contains("without --sign ed25519"));
        assert_eq!(hint(Instead::Nothing), "");
        let f = Failure::from(Error::NotSupported {
            kind: "pkcs11".into(),
            what: "signing with an aes-gcm enrollment (enroll with mode=ecdh or sign=ed25519)",
        });
        assert!(
            f.hint
                .as_deref()
                .is_some_and(|h| h.starts_with("an aes-gcm protector has no key to sign with"))
        );
        let f = Failure::from(Error::NotSupported {
            kind: "tpm".into(),
            what: "protectors of this kind in this build of keyward",
        });
        assert!(
            f.hint
                .as_deref()
                .is_some_and(|h| h.contains("cargo feature tpm"))
        );
    }

    #[test]
    fn every_typed_device_cause_gets_its_code_and_remedy() {
        let cases = [
            (
                Error::device(
                    BackendKind::Yubikey,
                    DeviceError::DefaultCredentials {
                        serial: 7,
                        defaults: "PIN".into(),
                    },
                ),
                Exit::Device,
                "run `keyward yubikey setup`",
            ),
            (
                Error::device(BackendKind::Yubikey, DeviceError::NoFreeSlot),
                Exit::Device,
                "--overwrite",
            ),
            (
                Error::device(
                    BackendKind::Pkcs11,
                    DeviceError::NotLoggedIn { token: "t".into() },
                ),
                Exit::Auth,
                "--protector ID",
            ),
            (
                Error::device(
                    BackendKind::Pkcs11,
                    DeviceError::ModuleNotLoadable {
                        path: Some("/etc/hostname".into()),
                        reason: "not ELF".into(),
                    },
                ),
                Exit::Device,
                "--module PATH",
            ),
            (
                Error::not_found(
                    BackendKind::Pkcs11,
                    DeviceError::ModuleNotGiven {
                        usual: vec!["/a.so".into()],
                        present: vec![],
                    },
                ),
                Exit::Device,
                "modules usually live at /a.so",
            ),
            (
                Error::not_found(
                    BackendKind::Pkcs11,
                    DeviceError::ModuleNotInstalled {
                        name: "x".into(),
                        dirs: vec!["/usr/lib".into()],
                    },
                ),
                Exit::Device,
                "module-path=",
            ),
        ];
        for (err, code, remedy) in cases {
            let f = Failure::from(err);
            assert_eq!(f.code, code, "{f:?}");
            assert!(
                f.hint.as_deref().is_some_and(|h| h.contains(remedy)),
                "{f:?}"
            );
        }
        // The diagnosis of a missing module is the backend's, without advice.
        let f = Failure::from(Error::not_found(
            BackendKind::Pkcs11,
            DeviceError::ModuleNotGiven {
                usual: vec![],
                present: vec![],
            },
        ));
        assert_eq!(f.message, "no PKCS#11 module given");
    }

    #[test]
    fn messages_never_repeat_the_cause() {
        let f = from_kms(&Error::AuditWrite(Box::new(Error::StoreBusy)));
        assert_eq!(
            f.message,
            "the audit log could not be written, so the operation was not performed: \
             the keystore is busy: another keyward process is changing it"
        );
    }
}
