//! A swtpm (software TPM 2.0) per test, on free 127.0.0.1 ports.
//!
//! `swtpm socket --tpm2` serves the TPM command protocol on a TCP port `P`
//! and its control protocol on `P + 1` (tpm2-tss's swtpm TCTI assumes
//! exactly that). Each [`Swtpm`] has its own state directory, so each one
//! is a fresh TPM with its own owner seed (and so its own SRK). The
//! `not-need-init,startup-clear` flags make swtpm run `TPM2_Startup(CLEAR)`
//! itself, as a firmware would.
//!
//! swtpm has **no resource manager**: three transient object slots shared
//! by every client. Code under test must flush what it loads.
//!
//! The helpers run tpm2-tools (`tpm2_dictionarylockout`, `tpm2_pcrextend`)
//! against the instance with `TSS2_LOG=all+none` so that tpm2-tss stays
//! quiet.
//!
//! ```no_run
//! use keyward_hw_mocks::swtpm::Swtpm;
//! let tpm = Swtpm::start().expect("swtpm installed");
//! tpm.set_dictionary_lockout(5, 600, 0).expect("tpm2-tools installed");
//! println!("TCTI: {}", tpm.tcti());
//! ```

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long to wait for swtpm to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many port pairs to try before giving up.
const PORT_ATTEMPTS: usize = 20;

/// A running swtpm process with a private state directory. Dropping it
/// stops the process (SIGTERM) and deletes the state.
#[derive(Debug)]
pub struct Swtpm {
    child: Option<Child>,
    port: u16,
    state: tempfile::TempDir,
}

impl Swtpm {
    /// Starts a fresh TPM (new state directory) on free ports.
    ///
    /// # Errors
    /// swtpm not installed, no free port pair found, or swtpm did not start
    /// listening within 10 s.
    pub fn start() -> io::Result<Self> {
        let state = tempfile::Builder::new()
            .prefix("keyward-swtpm-")
            .tempdir()?;
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port_pair()?;
            match spawn(port, state.path()) {
                Ok(child) => {
                    return Ok(Self {
                        child: Some(child),
                        port,
                        state,
                    });
                }
                // Someone else took the port between our probe and swtpm's
                // bind: try another pair.
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("no free port pair")))
    }

    /// The TCTI string for tpm2-tss and tpm2-tools:
    /// `swtpm:host=127.0.0.1,port=P`.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The TPM command port (`P`); the control port is `P + 1`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The state directory (the TPM's NVRAM, including its seeds).
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the process with SIGKILL (a crash or power loss, from the
    /// client's point of view) and reaps it. The state directory stays.
    ///
    /// # Errors
    /// The kill or wait failed.
    pub fn kill(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Stops the process if it runs and starts it again on the same port
    /// with the same state directory: the same TPM after a reboot
    /// (`TPM2_Startup(CLEAR)`: PCRs reset, transient objects gone).
    ///
    /// # Errors
    /// swtpm did not come back within 10 s (e.g. the port was taken).
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop()?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match spawn(self.port, self.state.path()) {
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => return Err(e),
                // The old socket may linger for a moment after the kill.
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Stops the process gracefully (SIGTERM) and reaps it.
    ///
    /// # Errors
    /// The signal or wait failed.
    pub fn stop(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child)?;
        }
        Ok(())
    }

    /// Sets the dictionary-attack parameters (owner auth is empty on a
    /// fresh swtpm): `max_tries` authorisation failures before lockout,
    /// `recovery_time` seconds per forgiven failure, `lockout_recovery_time`
    /// seconds before the lockout hierarchy can be used again after a
    /// failed lockout auth. Also resets the failure counter.
    ///
    /// swtpm's defaults are 3 tries and 1000 s; tests that fail PINs on
    /// purpose set their own.
    ///
    /// # Errors
    /// tpm2-tools missing or the command failed.
    pub fn set_dictionary_lockout(
        &self,
        max_tries: u32,
        recovery_time: u32,
        lockout_recovery_time: u32,
    ) -> io::Result<()> {
        self.tool(
            "tpm2_dictionarylockout",
            &[
                "--clear-lockout".to_owned(),
                "--setup-parameters".to_owned(),
                format!("--max-tries={max_tries}"),
                format!("--recovery-time={recovery_time}"),
                format!("--lockout-recovery-time={lockout_recovery_time}"),
            ],
        )
    }

    /// Resets the dictionary-attack failure counter (leaves lockout).
    ///
    /// # Errors
    /// tpm2-tools missing or the command failed.
    pub fn clear_lockout(&self) -> io::Result<()> {
        self.tool("tpm2_dictionarylockout", &["--clear-lockout".to_owned()])
    }

    /// Extends SHA-256 PCR `pcr` with `digest` (`tpm2_pcrextend`).
    ///
    /// # Errors
    /// tpm2-tools missing or the command failed (PCRs 0-15 and 17-22 may
    /// be extended from locality 0; 16 and 23 are the resettable debug PCRs).
    pub fn pcr_extend(&self, pcr: u8, digest: &[u8; 32]) -> io::Result<()> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let hex: String = digest
            .iter()
            .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])
            .map(char::from)
            .collect();
        self.tool("tpm2_pcrextend", &[format!("{pcr}:sha256={hex}")])
    }

    /// Runs a tpm2-tools program against this TPM (`-T <tcti>` is appended)
    /// and returns its standard output.
    ///
    /// # Errors
    /// The program is missing or exited non-zero (its stderr is in the error).
    pub fn run_tool(&self, program: &str, args: &[String]) -> io::Result<Vec<u8>> {
        let out = clean_command(program)
            .args(args)
            .arg("-T")
            .arg(self.tcti())
            .env("TSS2_LOG", "all+none")
            .stdin(Stdio::null())
            .output()?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(io::Error::other(format!(
                "{program} {args:?} failed with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    fn tool(&self, program: &str, args: &[String]) -> io::Result<()> {
        self.run_tool(program, args).map(drop)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = terminate(&mut child);
        }
    }
}

/// Closes every inherited descriptor above 2, then execs `$0 "$@"`.
const CLOSE_FDS_AND_EXEC: &str = r#"for f in /proc/$$/fd/*; do n=${f##*/}; if [ "$n" -gt 2 ]; then eval "exec $n>&-"; fi; done; exec "$0" "$@""#;

/// A `Command` for `program` that inherits no file descriptor but
/// stdin, stdout and stderr. Add arguments as usual.
///
/// Needed because tpm2-tss opens its TCTI sockets without `SOCK_CLOEXEC`:
/// a child spawned while another thread of the test process talks to a
/// swtpm inherits that connection, and swtpm (one client at a time) then
/// waits on it for as long as the child lives. A long-lived child (another
/// swtpm) or a child that talks to the same swtpm (a tpm2-tools program)
/// deadlocks the tests. Rust's own descriptors are close-on-exec already.
pub fn clean_command(program: &str) -> Command {
    let mut command = Command::new("bash");
    command.arg("-c").arg(CLOSE_FDS_AND_EXEC).arg(program);
    command
}

/// SIGTERM, wait up to 2 s, then SIGKILL.
fn terminate(child: &mut Child) -> io::Result<()> {
    let pid = rustix::process::Pid::from_child(child);
    if rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_err() {
        // Already gone; reap below.
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill()?;
    child.wait().map(drop)
}

/// Lowest port we pick from.
const PORT_MIN: u16 = 10_000;

/// A port `P` such that `P` and `P + 1` were both free a moment ago.
///
/// We pick at random below the kernel's ephemeral range instead of binding
/// port 0: tpm2-tss opens one TCP connection per TPM command, so a test run
/// leaves tens of thousands of sockets in TIME_WAIT on ephemeral ports, and
/// those block a listener's bind.
fn free_port_pair() -> io::Result<u16> {
    let ceiling = ephemeral_floor().saturating_sub(2).max(PORT_MIN + 2);
    for _ in 0..200 {
        let mut r = [0u8; 2];
        getrandom::fill(&mut r).map_err(|e| io::Error::other(e.to_string()))?;
        let port = PORT_MIN + u16::from_le_bytes(r) % (ceiling - PORT_MIN);
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
        let second = TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1));
        if first.is_ok() && second.is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::other(
        "no free pair of adjacent ports on 127.0.0.1",
    ))
}

/// The first port of the kernel's ephemeral range (32768 if unknown).
fn ephemeral_floor() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Starts swtpm on `port`/`port + 1` with state in `dir` and waits until
/// both ports accept connections. Fails if swtpm exits (port taken) or does
/// not listen in time.
fn spawn(port: u16, dir: &Path) -> io::Result<Child> {
    let ctrl = port
        .checked_add(1)
        .ok_or_else(|| io::Error::other("port out of range"))?;
    let log: PathBuf = dir.join("swtpm.log");
    let mut child = clean_command("swtpm")
        .arg("socket")
        .arg("--tpm2")
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
        .arg("--tpmstate")
        .arg(format!("dir={}", dir.display()))
        .arg("--flags")
        .arg("not-need-init,startup-clear")
        .arg("--log")
        .arg(format!("file={},level=1", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run swtpm: {e}")))?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "swtpm exited with {status} (port {port} taken?)"
            )));
        }
        if accepts(ctrl) && accepts(port) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("swtpm did not listen on {port} within {START_TIMEOUT:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`. swtpm
/// serves one client at a time and simply waits for the next after we hang
/// up, so a throwaway connection is harmless.
fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_millis(200),
    )
    .is_ok()
}
