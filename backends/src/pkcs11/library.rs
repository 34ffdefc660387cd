//! One initialized [`Pkcs11`] per module path per process.
//!
//! A PKCS#11 module has process-wide state: `C_Initialize` may be called
//! once, and SoftHSM reads its configuration only then (docs/HARDWARE.md). So we
//! keep a registry keyed by the canonical module path, initialize each module
//! once with OS locking (`CKF_OS_LOCKING_OK`: without it, two threads gave
//! CKR_GENERAL_ERROR, a segfault and once a hang) and never finalize: the
//! module lives as long as the process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use keyward_kms::error::DeviceError;
use keyward_kms::{Error, Result};

use super::errors::{self, KIND};

/// Environment variable naming the module when no URI or option does.
pub const MODULE_ENV: &str = "KEYWARD_PKCS11_MODULE";

/// Where modules usually live, listed in the error when none is given.
pub const WELL_KNOWN_MODULES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so",
    "/usr/lib/x86_64-linux-gnu/pkcs11/yubihsm_pkcs11.so",
];

static LIBRARIES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();

/// Picks the module path: the first of `candidates` that is set, else
/// `$KEYWARD_PKCS11_MODULE`, else an error that lists where to look.
///
/// # Errors
/// [`Error::DeviceNotFound`] when nothing names a module.
pub fn resolve(candidates: &[Option<&Path>]) -> Result<PathBuf> {
    if let Some(p) = candidates.iter().flatten().next() {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(MODULE_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let present: Vec<&str> = WELL_KNOWN_MODULES
        .iter()
        .copied()
        .filter(|p| Path::new(p).exists())
        .collect();
    Err(Error::not_found(
        KIND,
        DeviceError::ModuleNotGiven {
            usual: usual(),
            present: present.into_iter().map(str::to_owned).collect(),
        },
    ))
}

/// [`WELL_KNOWN_MODULES`], owned, for an error.
fn usual() -> Vec<String> {
    WELL_KNOWN_MODULES.iter().map(|&m| m.to_owned()).collect()
}

/// The module at `path`, loaded and initialized once per process.
///
/// # Errors
/// [`Error::DeviceNotFound`] if the file does not exist; [`Error::Device`]
/// if it cannot be loaded or initialized.
pub fn load(path: &Path) -> Result<Pkcs11> {
    let canonical = path.canonicalize().map_err(|e| {
        Error::not_found(
            KIND,
            DeviceError::ModuleNotFound {
                path: path.to_owned(),
                reason: e.to_string(),
                usual: usual(),
            },
        )
    })?;
    let registry = LIBRARIES.get_or_init(|| Mutex::new(HashMap::new()));
    // The lock is held across C_Initialize so that two threads never
    // initialize the same module; a poisoned lock only means another thread
    // panicked after inserting, the map itself is consistent.
    let mut map = registry.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(lib) = map.get(&canonical) {
        return Ok(lib.clone());
    }
    let lib = Pkcs11::new(&canonical).map_err(|e| {
        errors::device(DeviceError::ModuleNotLoadable {
            path: Some(canonical.clone()),
            reason: e.to_string(),
        })
    })?;
    match lib.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Someone else in this process (another crate) initialized it first:
        // the module is usable, it is theirs to finalize.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(CkError::Pkcs11(RvError::GeneralError, f)) => {
            return Err(errors::device(DeviceError::Pkcs11 {
                rv: "CKR_GENERAL_ERROR".into(),
                function: format!(
                    "{f} of {} failed; for SoftHSM this usually means SOFTHSM2_CONF names a \
                     missing file or its tokendir does not exist",
                    canonical.display()
                ),
            }));
        }
        Err(e) => return Err(errors::map(e, "initializing the PKCS#11 module")),
    }
    tracing::debug!(module = %canonical.display(), "PKCS#11 module initialized");
    map.insert(canonical, lib.clone());
    Ok(lib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_candidate_wins() {
        let p = resolve(&[None, Some(Path::new("/x/y.so"))]).expect("given");
        assert_eq!(p, PathBuf::from("/x/y.so"));
    }

    #[test]
    fn missing_module_is_device_not_found_with_path() {
        let e = load(Path::new("/nonexistent/libnothing.so")).expect_err("absent");
        // The remedy (KEYWARD_PKCS11_MODULE, --module) is the CLI's: see
        // cli/src/failure.rs and tests/tests/cli_hw_pkcs11.rs.
        match e {
            Error::DeviceNotFound {
                hint: Some(DeviceError::ModuleNotFound { path, usual, .. }),
                ..
            } => {
                assert_eq!(path, Path::new("/nonexistent/libnothing.so"));
                assert_eq!(usual, super::usual());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn not_a_module_is_device_error() {
        let dir = std::env::temp_dir().join(format!("keyward-p11-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let f = dir.join("not-a-module.so");
        std::fs::write(&f, b"not an ELF file").expect("write");
        let e = load(&f).expect_err("garbage");
        std::fs::remove_dir_all(&dir).ok();
        match e {
            Error::Device {
                error: error @ DeviceError::ModuleNotLoadable { .. },
                ..
            } => {
                assert_eq!(error.code(), "dlopen");
                let message = error.to_string();
                assert!(message.contains("not-a-module.so"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
