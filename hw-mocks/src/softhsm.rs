//! SoftHSM2 tokens for tests: a private token directory and one token per
//! test, created in-process through the module
//! (`C_InitToken`, `C_InitPIN`).
//!
//! SoftHSM reads `SOFTHSM2_CONF` once per process, in `C_Initialize`, and
//! keyward loads a module once per process (docs/HARDWARE.md). So the config is
//! per *process*, and tests create their own token (with a label of their
//! own) in the process's token directory. Two ways to get there:
//!
//! - [`isolated`] (what our tests use): when the current process has no
//!   SoftHSM environment of ours, it re-runs the one test in a child process
//!   (`current_exe() NAME --exact`) whose `SOFTHSM2_CONF` points at a fresh
//!   temporary token directory, and reports the child's result. This works
//!   the same under `cargo test` (tests share a process) and
//!   `cargo nextest` (one process per test). We re-execute instead of
//!   setting the variable in-process because `std::env::set_var` is unsafe
//!   with other threads running, and our crates forbid `unsafe`.
//! - Set `SOFTHSM2_CONF` yourself and `KEYWARD_SOFTHSM_SHARED=1`: tests then
//!   run in-process against that config. Token creation is serialized (a
//!   mutex in-process, `flock` on the token directory across processes).
//!
//! A token is removed by deleting its directory under the token directory,
//! which is what [`SoftHsmToken::remove`] does (and `Drop`, best effort).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock, PoisonError};

use cryptoki::session::UserType;
use keyward_backends::pkcs11::uri::percent_encode;
use secrecy::SecretString;

/// The Debian path of the SoftHSM2 module.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// SO PIN of every fixture token.
pub const SO_PIN: &str = "12345678";
/// User PIN of every fixture token.
pub const USER_PIN: &str = "123456";
/// The variable SoftHSM reads its configuration path from.
pub const CONF_ENV: &str = "SOFTHSM2_CONF";
/// Set (to the test name) in the child process [`isolated`] starts.
pub const CHILD_ENV: &str = "KEYWARD_SOFTHSM_CHILD";
/// Set to `1` to run against an externally provided `SOFTHSM2_CONF`.
pub const SHARED_ENV: &str = "KEYWARD_SOFTHSM_SHARED";

/// The SoftHSM environment of this process.
#[derive(Debug)]
pub struct SoftHsm {
    conf: PathBuf,
    tokendir: PathBuf,
}

static PROCESS: OnceLock<Result<SoftHsm, String>> = OnceLock::new();
static CREATE: Mutex<()> = Mutex::new(());

impl SoftHsm {
    /// The environment `SOFTHSM2_CONF` gives this process, if we are in a
    /// child of [`isolated`] or `KEYWARD_SOFTHSM_SHARED=1` is set.
    ///
    /// # Errors
    /// No such environment, or the config names no token directory.
    pub fn process() -> io::Result<&'static SoftHsm> {
        PROCESS
            .get_or_init(|| {
                let ours = std::env::var_os(CHILD_ENV).is_some()
                    || std::env::var(SHARED_ENV).is_ok_and(|v| v == "1");
                if !ours {
                    return Err(format!(
                        "no SoftHSM test environment: run the test through softhsm::isolated, \
                         or set {CONF_ENV} and {SHARED_ENV}=1"
                    ));
                }
                let conf = std::env::var_os(CONF_ENV)
                    .map(PathBuf::from)
                    .ok_or_else(|| format!("{CONF_ENV} is not set"))?;
                let text = fs::read_to_string(&conf)
                    .map_err(|e| format!("reading {}: {e}", conf.display()))?;
                let tokendir = text
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .find(|(k, _)| k.trim() == "directories.tokendir")
                    .map(|(_, v)| PathBuf::from(v.trim()))
                    .ok_or_else(|| format!("{} names no directories.tokendir", conf.display()))?;
                Ok(SoftHsm { conf, tokendir })
            })
            .as_ref()
            .map_err(|e| io::Error::other(e.clone()))
    }

    /// Path of the config file.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The token directory.
    pub fn tokendir(&self) -> &Path {
        &self.tokendir
    }

    /// Initializes a new token labelled `label` (at most 32 bytes; unique
    /// among live tokens of this environment) with [`SO_PIN`] / [`USER_PIN`].
    ///
    /// # Errors
    /// The module cannot be loaded or refuses to initialize the token.
    pub fn create_token(&self, label: &str) -> io::Result<SoftHsmToken> {
        let _guard = CREATE.lock().unwrap_or_else(PoisonError::into_inner);
        let lock = File::open(&self.tokendir)?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)?;
        let before = list_dirs(&self.tokendir)?;
        let serial = init_token(label)?;
        let after = list_dirs(&self.tokendir)?;
        let dir = after
            .into_iter()
            .find(|d| !before.contains(d))
            .ok_or_else(|| io::Error::other("SoftHSM created no token directory"))?;
        drop(lock);
        Ok(SoftHsmToken {
            label: label.to_owned(),
            serial,
            dir,
            conf: self.conf.clone(),
        })
    }
}

/// Initializes the free token in-process through the shared module (the
/// process's one `Pkcs11`, from keyward's registry), and returns its serial.
///
/// In-process, not `softhsm2-util`: SoftHSM assigns slots to token
/// directories at `C_Initialize`, so a token created by another process
/// later stays invisible to this one.
fn init_token(label: &str) -> io::Result<String> {
    let ck = |what: &str| {
        let what = what.to_owned();
        move |e: cryptoki::error::Error| io::Error::other(format!("{what}: {e}"))
    };
    let lib = keyward_backends::pkcs11::library::load(Path::new(MODULE))
        .map_err(|e| io::Error::other(e.to_string()))?;
    let free = lib
        .get_slots_with_token()
        .map_err(ck("C_GetSlotList"))?
        .into_iter()
        .find(|s| lib.get_token_info(*s).is_ok_and(|i| !i.token_initialized()))
        .ok_or_else(|| io::Error::other("SoftHSM offers no free slot"))?;
    let so = SecretString::from(SO_PIN.to_owned());
    let user = SecretString::from(USER_PIN.to_owned());
    lib.init_token(free, &so, label)
        .map_err(ck("C_InitToken"))?;
    let session = lib.open_rw_session(free).map_err(ck("C_OpenSession"))?;
    session
        .login(UserType::So, Some(&so))
        .map_err(ck("C_Login(SO)"))?;
    session.init_pin(&user).map_err(ck("C_InitPIN"))?;
    session.logout().map_err(ck("C_Logout"))?;
    drop(session);
    let info = lib.get_token_info(free).map_err(ck("C_GetTokenInfo"))?;
    if info.label().trim_end() != label {
        return Err(io::Error::other("the initialized token has another label"));
    }
    Ok(info.serial_number().trim_end().to_owned())
}

fn list_dirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            out.push(e.path());
        }
    }
    Ok(out)
}

/// One initialized SoftHSM token. Its directory is deleted on drop.
#[derive(Debug)]
pub struct SoftHsmToken {
    label: String,
    serial: String,
    dir: PathBuf,
    conf: PathBuf,
}

impl SoftHsmToken {
    /// Creates a token labelled `label` in this process's environment
    /// ([`SoftHsm::process`]).
    ///
    /// # Errors
    /// As [`SoftHsm::process`] and [`SoftHsm::create_token`].
    pub fn new(label: &str) -> io::Result<Self> {
        SoftHsm::process()?.create_token(label)
    }

    /// Token label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Token serial, as CK_TOKEN_INFO reports it.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The token's directory under the token directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The user PIN.
    pub fn pin(&self) -> &'static str {
        USER_PIN
    }

    /// A PKCS#11 URI naming this token (label and serial) and the module.
    pub fn uri(&self) -> String {
        format!(
            "pkcs11:token={};serial={}?module-path={MODULE}",
            percent_encode(self.label.as_bytes()),
            percent_encode(self.serial.as_bytes())
        )
    }

    /// Removes the token, as unplugging it would: deletes its directory.
    ///
    /// # Errors
    /// The directory cannot be deleted.
    pub fn remove(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Runs `pkcs11-tool --module MODULE --token-label LABEL --login --pin
    /// PIN ARGS…` in this token's environment.
    ///
    /// # Errors
    /// `pkcs11-tool` could not be started (the exit status is in the output).
    pub fn pkcs11_tool(&self, args: &[&str]) -> io::Result<Output> {
        Command::new("pkcs11-tool")
            .env(CONF_ENV, &self.conf)
            .args(["--module", MODULE, "--token-label", &self.label])
            .args(["--login", "--pin", USER_PIN])
            .args(args)
            .output()
    }
}

impl Drop for SoftHsmToken {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

/// Runs `body` with a SoftHSM environment of its own.
///
/// In a child started by this function (or with `KEYWARD_SOFTHSM_SHARED=1`)
/// it runs `body` right here. Otherwise it creates a temporary token
/// directory and config, re-runs the test `test_name` (its full path as
/// libtest prints it) in a child process with `SOFTHSM2_CONF` pointing at
/// it, prints the child's output and panics if the child failed.
///
/// # Panics
/// If the child fails, or the environment cannot be set up.
pub fn isolated(test_name: &str, body: impl FnOnce(&'static SoftHsm)) {
    let in_child = std::env::var(CHILD_ENV).is_ok_and(|v| v == test_name);
    let shared = std::env::var(SHARED_ENV).is_ok_and(|v| v == "1");
    if in_child || shared {
        let env = SoftHsm::process().expect("the SoftHSM environment of this process");
        body(env);
        return;
    }
    assert!(
        Path::new(MODULE).exists(),
        "SoftHSM2 is not installed ({MODULE} missing): apt-get install softhsm2 opensc"
    );
    let tmp = tempfile::Builder::new()
        .prefix("keyward-softhsm-")
        .tempdir()
        .expect("temporary directory");
    let tokendir = tmp.path().join("tokens");
    fs::create_dir(&tokendir).expect("token directory");
    let conf = tmp.path().join("softhsm2.conf");
    fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n\
             slots.removable = false\n",
            tokendir.display()
        ),
    )
    .expect("softhsm2.conf");
    let exe = std::env::current_exe().expect("path of the test binary");
    let out = Command::new(exe)
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CONF_ENV, &conf)
        .env(CHILD_ENV, test_name)
        .output()
        .expect("re-running the test in a child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("--- child process for {test_name} ---\n{stdout}{stderr}");
    assert!(
        out.status.success(),
        "test {test_name} failed in its SoftHSM child process ({})",
        out.status
    );
    // libtest exits 0 when the filter matched nothing: make sure it ran.
    assert!(
        stdout.contains("1 passed"),
        "the child process did not run test {test_name:?} (wrong name?)"
    );
}
