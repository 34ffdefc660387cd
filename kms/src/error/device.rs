//! What went wrong on a device, typed: the native code a backend got
//! (PKCS#11 `CKR_*`, TPM response code, PIV status word) and the states a
//! user can act on (PCRs changed, module or token missing, factory
//! defaults). Backends build these; the CLI matches them to a diagnosis and
//! a remedy (`cli/src/failure.rs`) and never parses their text.
//!
//! The text of each variant is the diagnosis only: which command, option
//! or environment variable fixes it is for the caller to say.

use std::fmt;
use std::path::PathBuf;

/// A device failure with its cause. Carried by [`crate::Error::Device`]
/// (the operation failed on the device) and [`crate::Error::DeviceNotFound`]
/// (why no usable device was found).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceError {
    // ---- native codes ----------------------------------------------------
    /// A PKCS#11 function failed.
    Pkcs11 {
        /// The return value's `CKR_*` name (`CKR_GENERAL_ERROR`).
        rv: String,
        /// The function and the step it was part of (`C_Login (login)`).
        function: String,
    },
    /// A TPM command failed with a response code.
    Tpm {
        /// The raw `TSS2_RC`.
        rc: u32,
        /// What it means here.
        detail: String,
    },
    /// The TSS stack failed before or without a TPM response code.
    Tss {
        /// The operation.
        op: String,
        /// What tss-esapi said.
        error: String,
    },
    /// A PIV command answered a status word other than 9000.
    Piv {
        /// The status word, as the card sent it (`0x6A82`).
        sw: u16,
        /// What it means here.
        detail: String,
    },

    // ---- TPM ---------------------------------------------------------------
    /// The TPM refuses the key because PCRs bound at enrollment changed.
    PcrMismatch {
        /// The PCRs that changed (sha256 bank); empty when the TPM refused
        /// the policy but the values read back match.
        pcrs: Vec<u8>,
    },
    /// The TPM cannot load the key: another TPM made it, this TPM was
    /// cleared, or the stored key was modified (`TPM_RC_INTEGRITY`).
    ForeignKey {
        /// The raw response code.
        rc: u32,
    },
    /// The TPM cannot be reached over its TCTI.
    Unreachable {
        /// The TCTI tried.
        tcti: String,
    },

    // ---- PKCS#11 module and token -------------------------------------------
    /// Nothing names a PKCS#11 module.
    ModuleNotGiven {
        /// Where modules usually live.
        usual: Vec<String>,
        /// Which of those exist here.
        present: Vec<String>,
    },
    /// The PKCS#11 module file does not exist.
    ModuleNotFound {
        /// The path given.
        path: PathBuf,
        /// Why it cannot be opened.
        reason: String,
        /// Where modules usually live.
        usual: Vec<String>,
    },
    /// No module of the name a URI gives is installed.
    ModuleNotInstalled {
        /// The module name from the URI.
        name: String,
        /// Directories searched.
        dirs: Vec<String>,
    },
    /// The file exists but cannot be loaded as a PKCS#11 module.
    ModuleNotLoadable {
        /// The path, where known.
        path: Option<PathBuf>,
        /// What the loader said.
        reason: String,
    },
    /// The module is not the library the URI names.
    LibraryMismatch {
        /// The module's manufacturer, description and version.
        found: String,
    },
    /// The token's mechanism list lacks what this operation needs.
    MechanismMissing {
        /// The mechanism (and the mode it belongs to).
        mechanism: &'static str,
        /// Which enrollment would work instead.
        instead: Instead,
    },
    /// The enrolled token is not present.
    TokenAbsent {
        /// Its label.
        label: String,
        /// Its serial number.
        serial: String,
        /// The initialized tokens that are visible, quoted.
        visible: Vec<String>,
    },
    /// No token matches the URI.
    NoMatchingToken {
        /// The initialized tokens that are visible.
        visible: Vec<String>,
    },
    /// The token went away during the operation.
    TokenGone {
        /// The `CKR_*` name reported.
        rv: String,
    },
    /// The operation needs the token logged in (an aes-gcm protector wraps
    /// on the token).
    NotLoggedIn {
        /// The token's identity.
        token: String,
    },

    // ---- PIV / YubiKey ----------------------------------------------------------
    /// PC/SC is unreachable.
    PcscUnavailable {
        /// What PC/SC said.
        detail: String,
    },
    /// No YubiKey (with this serial) is connected.
    NoYubikey {
        /// The serial looked for, if any.
        serial: Option<u32>,
    },
    /// The YubiKey still has its factory PIN, PUK or management key.
    DefaultCredentials {
        /// Its serial.
        serial: u32,
        /// Which defaults remain ("PIN, PUK, management key").
        defaults: String,
    },
    /// Every retired PIV slot already holds a key.
    NoFreeSlot,
    /// The YubiKey's management key is not stored PIN-protected.
    ManagementKeyNotProtected {
        /// Its serial.
        serial: u32,
    },

    // ---- anything else ------------------------------------------------------------
    /// A device absent for a reason told in words (no typed cause).
    NotPresent {
        /// What is missing.
        detail: String,
    },
    /// The device misbehaved (a failed self-test, an output of the wrong
    /// size) or refused in a way no variant above names.
    Failed {
        /// A short code for the step (`self-test`, `CKM_ECDSA`).
        code: &'static str,
        /// What happened.
        detail: String,
    },
}

/// The enrollment that would work where a mechanism is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Instead {
    /// Enroll in the aes-gcm mode.
    AesGcm,
    /// Enroll in the ecdh mode.
    Ecdh,
    /// Enroll without an Ed25519 signing key.
    NoEd25519,
    /// Nothing to suggest.
    Nothing,
}

impl DeviceError {
    /// The native code, or a short name of the state, as shown in
    /// `... device error CODE: ...`.
    pub fn code(&self) -> String {
        match self {
            Self::Pkcs11 { rv, .. } | Self::TokenGone { rv } => rv.clone(),
            Self::Tpm { rc, .. } | Self::ForeignKey { rc } => format!("{rc:#x}"),
            Self::Tss { error, .. } => format!("tss-esapi: {error}"),
            Self::Piv { sw, .. } => format!("{sw:04X}"),
            Self::PcrMismatch { .. } => "pcr-mismatch".into(),
            Self::Unreachable { .. } => "unreachable".into(),
            Self::ModuleNotGiven { .. }
            | Self::ModuleNotFound { .. }
            | Self::ModuleNotInstalled { .. } => "no-module".into(),
            Self::ModuleNotLoadable { .. } => "dlopen".into(),
            Self::LibraryMismatch { .. } => "wrong-library".into(),
            Self::MechanismMissing { .. } => "mechanism".into(),
            Self::TokenAbsent { .. } | Self::NoMatchingToken { .. } => "no-token".into(),
            Self::NotLoggedIn { .. } => "CKR_USER_NOT_LOGGED_IN".into(),
            Self::PcscUnavailable { .. } => "pcsc".into(),
            Self::NoYubikey { .. } | Self::NotPresent { .. } => "absent".into(),
            Self::DefaultCredentials { .. } => "default-credentials".into(),
            Self::ManagementKeyNotProtected { .. } => "management-key".into(),
            Self::NoFreeSlot => "no-free-slot".into(),
            Self::Failed { code, .. } => (*code).into(),
        }
    }
}

impl DeviceError {
    /// What happened, without the advice some variants add to their text
    /// (for a caller that gives its own remedy). The advice stays in the
    /// `Display` text, where callers without remedies of their own (the
    /// daemon's API, logs) show it.
    pub fn diagnosis(&self) -> String {
        match self {
            Self::PcrMismatch { pcrs } => format!(
                "the TPM refuses this key because {} changed since enrollment (firmware, boot \
                 loader or Secure Boot settings changed)",
                pcr_names(pcrs)
            ),
            Self::TokenAbsent {
                label,
                serial,
                visible,
            } => format!(
                "token \"{label}\" (serial {serial}) is not present{}",
                visible_suffix(visible)
            ),
            Self::Unreachable { tcti } => format!("cannot reach the TPM at {tcti}"),
            other => other.to_string(),
        }
    }
}

/// "PCR 7, 11 (sha256 bank)", or "PCR values" when none is named.
fn pcr_names(pcrs: &[u8]) -> String {
    if pcrs.is_empty() {
        "PCR values".to_owned()
    } else {
        let names: Vec<String> = pcrs.iter().map(ToString::to_string).collect();
        format!("PCR {} (sha256 bank)", names.join(", "))
    }
}

/// " (visible: ...)" or " (no initialized token is visible)".
fn visible_suffix(visible: &[String]) -> String {
    if visible.is_empty() {
        " (no initialized token is visible)".to_owned()
    } else {
        format!(" (visible: {})", list(visible))
    }
}

/// `"a", "b"` from already quoted names.
fn list(items: &[String]) -> String {
    items.join(", ")
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pkcs11 { function, .. } => f.write_str(function),
            Self::Tpm { detail, .. } | Self::Piv { detail, .. } | Self::Failed { detail, .. } => {
                f.write_str(detail)
            }
            Self::Tss { op, error } => write!(f, "{op} failed: {error}"),
            Self::PcrMismatch { .. } => write!(
                f,
                "{}. Unlock with your recovery key or another protector, then run `keyward \
                 enroll tpm --replace` to bind the TPM protector to the current values",
                self.diagnosis()
            ),
            Self::ForeignKey { .. } => f.write_str(
                "the TPM cannot load the key: it was made by another TPM, the TPM was cleared \
                 since enrollment, or the stored key was modified (TPM_RC_INTEGRITY). Unlock \
                 with another protector and enroll the TPM again",
            ),
            Self::Unreachable { .. } => write!(
                f,
                "{}: is the TPM present / swtpm running? set KEYWARD_TPM_TCTI or --tcti to \
                 another TCTI",
                self.diagnosis()
            ),
            Self::ModuleNotGiven { .. } => f.write_str("no PKCS#11 module given"),
            Self::ModuleNotFound { path, reason, .. } => {
                write!(f, "PKCS#11 module {} not found ({reason})", path.display())
            }
            Self::ModuleNotInstalled { name, dirs } => {
                write!(f, "no PKCS#11 module named {name:?} in {}", list(dirs))
            }
            Self::ModuleNotLoadable {
                path: Some(path),
                reason,
            } => write!(
                f,
                "cannot load PKCS#11 module {}: {reason}; is it a PKCS#11 module for this \
                 architecture?",
                path.display()
            ),
            Self::ModuleNotLoadable { path: None, reason } => {
                write!(f, "the PKCS#11 module could not be loaded ({reason})")
            }
            Self::LibraryMismatch { found } => {
                write!(f, "the module is {found}, not the library the URI names")
            }
            Self::MechanismMissing { mechanism, .. } => {
                write!(f, "the token does not support {mechanism}")
            }
            Self::TokenAbsent {
                label,
                serial,
                visible,
            } => write!(
                f,
                "token \"{label}\" (serial {serial}) is not present; insert it{}",
                visible_suffix(visible)
            ),
            Self::NoMatchingToken { visible } if visible.is_empty() => f.write_str(
                "no initialized token is visible through this module; initialize one \
                     (e.g. softhsm2-util --init-token --free --label NAME)",
            ),
            Self::NoMatchingToken { visible } => {
                write!(f, "no token matches the URI; visible: {}", list(visible))
            }
            Self::TokenGone { rv } => {
                write!(f, "the token went away ({rv}); insert it and try again")
            }
            Self::NotLoggedIn { token } => write!(
                f,
                "the aes-gcm protector on {token} wraps on the token, which needs its PIN: \
                 unlock with this protector first"
            ),
            Self::PcscUnavailable { detail } => write!(
                f,
                "PC/SC is unavailable: is pcscd running? (`systemctl start pcscd.socket`); \
                 {detail}"
            ),
            Self::NoYubikey { serial: Some(s) } => write!(f, "insert the YubiKey with serial {s}"),
            Self::NoYubikey { serial: None } => f.write_str("insert a YubiKey"),
            Self::DefaultCredentials { serial, defaults } => write!(
                f,
                "YubiKey {serial} still uses the factory default {defaults}: run `keyward \
                 yubikey setup --serial {serial}` to set a new PIN and PUK and a random \
                 PIN-protected management key, then enroll again"
            ),
            Self::ManagementKeyNotProtected { serial } => write!(
                f,
                "the management key of YubiKey {serial} is not stored PIN-protected on the \
                 device, so keyward cannot use it: run `keyward yubikey setup --serial \
                 {serial}` (or `ykman piv access change-management-key --generate --protect`)"
            ),
            Self::NoFreeSlot => f.write_str("all 20 retired slots (82..95) hold keys"),
            Self::NotPresent { detail } => f.write_str(detail),
        }
    }
}
