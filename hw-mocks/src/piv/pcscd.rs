//! A private pcscd with the vpcd driver, for tests.
//!
//! pcscd 1.9.9 runs as root without polkit:
//! `pcscd --foreground --config DIR`, where `DIR` is a private
//! `reader.conf.d` holding one vpcd entry. vpcd then listens for virtual
//! cards on TCP 35963 and 35964 (two readers, `Virtual PCD 00 00` and
//! `Virtual PCD 00 01`, on all interfaces). Clients reach pcscd through its
//! fixed socket `/run/pcscd/pcscd.comm`.
//!
//! Both the ports and the socket are machine-wide, so **only one such
//! pcscd may run at a time**: [`Pcscd::start`] takes an exclusive `flock`
//! on `/tmp/keyward-pcscd.lock` (held until drop) that serializes tests in
//! one process and across test binaries, and nextest puts the `piv_*`
//! binaries in a single-threaded test group. At most two cards can be
//! inserted (one per port); a second vpcd entry in the same pcscd breaks
//! things (docs/HARDWARE.md).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The lock file that serializes users of the machine-wide pcscd.
pub const LOCK_FILE: &str = "/tmp/keyward-pcscd.lock";
/// pcscd's client socket.
pub const SOCKET: &str = "/run/pcscd/pcscd.comm";
/// The vpcd driver of Debian 12's vsmartcard-vpcd package.
pub const VPCD_DRIVER: &str = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so";

/// A running pcscd (foreground child) with a private vpcd configuration.
/// Dropping it stops pcscd (SIGTERM, then SIGKILL) and releases the lock.
#[derive(Debug)]
pub struct Pcscd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    _lock: File,
}

impl Pcscd {
    /// Takes the machine-wide lock (waiting for other users), starts pcscd
    /// and waits until its socket accepts PC/SC contexts.
    ///
    /// # Errors
    /// pcscd or the vpcd driver is missing, another pcscd already runs, or
    /// pcscd did not come up within 10 s.
    pub fn start() -> io::Result<Self> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)?;
        if !Path::new(VPCD_DRIVER).exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{VPCD_DRIVER} missing: apt-get install pcscd vsmartcard-vpcd"),
            ));
        }
        if pcsc_ready() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another pcscd is already running (its vpcd ports are machine-wide)",
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("keyward-pcscd-")
            .tempdir()?;
        let conf = dir.path().join("reader.conf.d");
        std::fs::create_dir(&conf)?;
        std::fs::write(
            conf.join("vpcd"),
            format!(
                "FRIENDLYNAME \"Virtual PCD\"\nDEVICENAME /dev/null:0x8C7B\nLIBPATH {VPCD_DRIVER}\nCHANNELID 0x8C7B\n"
            ),
        )?;
        let log = File::create(dir.path().join("pcscd.log"))?;
        let child = spawn_pcscd(&conf, log)?;
        let mut me = Self {
            child: Some(child),
            dir,
            _lock: lock,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pcsc_ready() {
            if let Some(status) = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(io::Error::other(format!(
                    "pcscd exited ({status}): {}",
                    me.log()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("pcscd did not come up within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(me)
    }

    /// pcscd's log (stdout and stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pcscd.log")).unwrap_or_default()
    }

    /// Waits until a card in `reader` can be connected to (pcscd polls
    /// readers every ~400 ms: a new card is usable after 0.3-0.6 s).
    ///
    /// # Errors
    /// Timeout, or PC/SC failed.
    pub fn wait_card(&self, reader: &str, timeout: Duration) -> io::Result<()> {
        wait_card(reader, timeout)
    }

    /// Stops pcscd (SIGTERM, SIGKILL after 3 s) and reaps it.
    ///
    /// # Errors
    /// The signal or the wait failed.
    pub fn stop(&mut self) -> io::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = i32::try_from(child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Stops pcscd and starts it again with the same configuration (cards
    /// reconnect by themselves).
    ///
    /// # Errors
    /// As for [`Pcscd::start`].
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop()?;
        let conf = self.dir.path().join("reader.conf.d");
        let log = OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("pcscd.log"))?;
        self.child = Some(spawn_pcscd(&conf, log)?);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pcsc_ready() {
            if Instant::now() > deadline {
                return Err(io::Error::other("pcscd did not come back within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Pcscd {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Whether a PC/SC context can be established (pcscd is up).
fn pcsc_ready() -> bool {
    Path::new(SOCKET).exists() && pcsc::Context::establish(pcsc::Scope::System).is_ok()
}

/// Waits until a card in `reader` can be connected to.
///
/// # Errors
/// Timeout, or PC/SC failed.
pub fn wait_card(reader: &str, timeout: Duration) -> io::Result<()> {
    let name = std::ffi::CString::new(reader).map_err(io::Error::other)?;
    let deadline = Instant::now() + timeout;
    let mut last: String;
    loop {
        match pcsc::Context::establish(pcsc::Scope::System) {
            Ok(ctx) => match ctx.connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::T1) {
                Ok(card) => {
                    let _ = card.disconnect(pcsc::Disposition::LeaveCard);
                    return Ok(());
                }
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no usable card in {reader:?} after {timeout:?}: {last}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `pcscd` in the foreground with the readers configured in `conf`, its
/// output going to `log`.
fn spawn_pcscd(conf: &Path, log: File) -> io::Result<Child> {
    Command::new("pcscd")
        .arg("--foreground")
        .arg("--config")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}
