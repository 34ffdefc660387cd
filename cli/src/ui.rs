//! The CLI's [`Callbacks`]: where secrets come from and how the user is
//! told things.
//!
//! Secrets come from, in this order of preference:
//! - an explicit flag: `--passphrase-fd N` or `--pin-fd N` (read up to the
//!   first newline) or `--recovery-key-file FILE`;
//! - the environment, for automation: `KEYWARD_PASSPHRASE`,
//!   `KEYWARD_RECOVERY_KEY`, `KEYWARD_PIN`;
//! - a prompt on the controlling terminal (`/dev/tty`, echo off), only when
//!   stderr is a terminal, so that stdin and stdout stay free for data.
//!
//! Never from argv. Secrets are read into zeroizing buffers and handed on as
//! [`SecretString`]; they are never logged or printed, except a newly
//! generated recovery key, shown once by [`Callbacks::show_secret`].

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use keyward_kms::backend::{Notice, SecretKind, SecretRequest};
use keyward_kms::{BackendKind, Callbacks, Error, SecretString};
use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::failure::{Exit, Failure};
use crate::files::to_stderr;

/// Environment variable holding the passphrase (automation only).
pub(crate) const ENV_PASSPHRASE: &str = "KEYWARD_PASSPHRASE";
/// Environment variable holding the recovery key (automation only).
pub(crate) const ENV_RECOVERY_KEY: &str = "KEYWARD_RECOVERY_KEY";
/// Environment variable holding a device PIN (automation only).
pub(crate) const ENV_PIN: &str = "KEYWARD_PIN";
/// Environment variable giving a new device PUK (`keyward yubikey setup`).
pub(crate) const ENV_PUK: &str = "KEYWARD_PUK";

/// Longest secret accepted from any source. Bounds the allocation when a
/// file descriptor or file delivers garbage.
const MAX_SECRET_LEN: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where one secret comes from, read at most once and then cached.
#[derive(Debug)]
pub(crate) struct Source {
    origin: Origin,
    cache: Mutex<Option<SecretString>>,
}

#[derive(Debug, Clone)]
enum Origin {
    /// `--passphrase-fd N`, `--pin-fd N`.
    Fd(i32),
    /// A variable of the environment.
    Env(&'static str),
    /// `--recovery-key-file FILE`.
    File(PathBuf),
}

impl Source {
    fn new(origin: Origin) -> Self {
        Self {
            origin,
            cache: Mutex::new(None),
        }
    }

    /// Whether the user named this source on the command line.
    fn explicit(&self) -> bool {
        !matches!(self.origin, Origin::Env(_))
    }

    /// Where it comes from, for messages.
    fn describe(&self) -> String {
        match &self.origin {
            Origin::Fd(fd) => format!("file descriptor {fd}"),
            Origin::Env(name) => format!("${name}"),
            Origin::File(path) => path.display().to_string(),
        }
    }

    /// Reads the secret (once). Passphrases are taken as given up to the
    /// first newline; recovery keys (`trim`) lose surrounding whitespace.
    fn read(&self, what: &str, trim: bool) -> keyward_kms::Result<SecretString> {
        let mut cache = lock(&self.cache);
        if let Some(secret) = cache.as_ref() {
            return Ok(secret.clone());
        }
        let io_err = |e: io::Error| {
            Error::io(
                format!("cannot read the {what} from {}", self.describe()),
                e,
            )
        };
        let raw: Zeroizing<Vec<u8>> = match &self.origin {
            Origin::Fd(fd) => {
                // Reopening /dev/fd/N needs no unsafe code and, for a pipe,
                // reads the same pipe.
                let mut file = File::open(format!("/dev/fd/{fd}")).map_err(io_err)?;
                read_line(&mut file).map_err(io_err)?
            }
            Origin::Env(name) => {
                let value = std::env::var_os(name).unwrap_or_default();
                Zeroizing::new(value.into_encoded_bytes())
            }
            Origin::File(path) => {
                let file = File::open(path).map_err(io_err)?;
                let mut buf = Zeroizing::new(Vec::with_capacity(256));
                file.take(MAX_SECRET_LEN as u64 + 1)
                    .read_to_end(&mut buf)
                    .map_err(io_err)?;
                buf
            }
        };
        if raw.len() > MAX_SECRET_LEN {
            return Err(Error::InvalidArgument {
                what: format!("the {what} from {} is too long", self.describe()),
            });
        }
        let mut bytes: &[u8] = &raw;
        if trim {
            bytes = bytes.trim_ascii();
        } else {
            // A line from a file descriptor has lost its "\n" already; a
            // CRLF file or variable still ends in "\r".
            bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
            bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        }
        if bytes.is_empty() {
            return Err(Error::InvalidArgument {
                what: format!("the {what} from {} is empty", self.describe()),
            });
        }
        let secret = secret_from_bytes(bytes).ok_or_else(|| Error::InvalidArgument {
            what: format!("the {what} from {} is not UTF-8 text", self.describe()),
        })?;
        *cache = Some(secret.clone());
        Ok(secret)
    }
}

/// Copies `bytes` into a [`SecretString`] of exactly their length, so that
/// no reallocation leaves an unzeroized copy behind.
fn secret_from_bytes(bytes: &[u8]) -> Option<SecretString> {
    std::str::from_utf8(bytes).ok()?;
    let mut exact = Vec::with_capacity(bytes.len());
    exact.extend_from_slice(bytes);
    match String::from_utf8(exact) {
        Ok(s) => Some(SecretString::from(s)),
        Err(e) => {
            // Unreachable (validated above); still zeroize what we copied.
            let _ = Zeroizing::new(e.into_bytes());
            None
        }
    }
}

/// Reads up to the first newline, one byte at a time so that nothing past
/// the line is consumed from a shared descriptor.
fn read_line(reader: &mut dyn Read) -> io::Result<Zeroizing<Vec<u8>>> {
    // Room for the longest line we accept, so the Vec never reallocates
    // (which would free a copy of the secret without zeroizing it).
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_SECRET_LEN + 1));
    let mut byte = [0u8; 1];
    loop {
        match reader.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => {
                if byte[0] == b'\n' {
                    break;
                }
                line.push(byte[0]);
                if line.len() > MAX_SECRET_LEN {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    zeroize::Zeroize::zeroize(&mut byte);
    Ok(line)
}

/// The controlling terminal.
#[derive(Debug)]
struct Tty {
    file: File,
}

/// Restores the terminal's echo setting when dropped, also on error paths.
struct EchoGuard<'a> {
    file: &'a File,
    saved: rustix::termios::Termios,
}

impl Drop for EchoGuard<'_> {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            self.file,
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

impl Tty {
    /// Opens `/dev/tty` when stderr is a terminal (we are interactive).
    fn open() -> Option<Self> {
        if !io::stderr().is_terminal() {
            return None;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .ok()?;
        Some(Self { file })
    }

    fn say(&mut self, text: &str) -> io::Result<()> {
        self.file.write_all(text.as_bytes())?;
        self.file.flush()
    }

    /// Prints `prompt` and reads one line, with echo off for secrets.
    fn ask(&mut self, prompt: &str, secret: bool) -> io::Result<Zeroizing<Vec<u8>>> {
        self.say(prompt)?;
        let guard = if secret {
            let saved = rustix::termios::tcgetattr(&self.file)?;
            let mut quiet = saved.clone();
            quiet.local_modes -= rustix::termios::LocalModes::ECHO;
            rustix::termios::tcsetattr(&self.file, rustix::termios::OptionalActions::Now, &quiet)?;
            Some(EchoGuard {
                file: &self.file,
                saved,
            })
        } else {
            None
        };
        let line = read_line(&mut (&self.file));
        drop(guard);
        if secret {
            // The user's Enter was not echoed.
            self.say("\n")?;
        }
        let mut line = line?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(line)
    }

    fn ask_secret(&mut self, prompt: &str) -> keyward_kms::Result<SecretString> {
        let line = self
            .ask(prompt, true)
            .map_err(|e| Error::io("cannot read from the terminal", e))?;
        if line.is_empty() {
            return Err(Error::Cancelled);
        }
        secret_from_bytes(&line).ok_or(Error::InvalidArgument {
            what: "the text typed is not valid UTF-8".to_owned(),
        })
    }
}

/// A secret the user supplied ahead of time (flag or environment), which
/// picks the protector to unlock with (kms ranks them; we say which came
/// by flag).
pub(crate) use keyward_kms::service::Supplied;

/// A secret source kept for the protector being enrolled, so that the
/// unlock before the enrollment must use another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reserve {
    /// Every source may unlock.
    Nothing,
    /// The passphrase source gives a new passphrase.
    Passphrase,
    /// The PIN source gives the PIN of the device being enrolled.
    Pin,
}

/// The CLI's user interface: secret sources, the terminal, and where a new
/// recovery key goes.
#[derive(Debug)]
pub(crate) struct Ui {
    tty: Option<Mutex<Tty>>,
    passphrase: Option<Source>,
    recovery: Option<Source>,
    pin: Option<Source>,
    recovery_out: Option<PathBuf>,
    written: Mutex<Option<PathBuf>>,
    missing: Mutex<Option<SecretKind>>,
}

impl Ui {
    /// Builds the UI from the global flags and the environment.
    pub(crate) fn new(
        passphrase_fd: Option<i32>,
        recovery_key_file: Option<&Path>,
        pin_fd: Option<i32>,
    ) -> Self {
        let from_env =
            |name: &'static str| std::env::var_os(name).map(|_| Source::new(Origin::Env(name)));
        let passphrase = passphrase_fd
            .map(|fd| Source::new(Origin::Fd(fd)))
            .or_else(|| from_env(ENV_PASSPHRASE));
        let recovery = recovery_key_file
            .map(|p| Source::new(Origin::File(p.to_path_buf())))
            .or_else(|| from_env(ENV_RECOVERY_KEY));
        let pin = pin_fd
            .map(|fd| Source::new(Origin::Fd(fd)))
            .or_else(|| from_env(ENV_PIN));
        Self {
            tty: Tty::open().map(Mutex::new),
            passphrase,
            recovery,
            pin,
            recovery_out: None,
            written: Mutex::new(None),
            missing: Mutex::new(None),
        }
    }

    /// Sends a newly generated recovery key to `path` instead of the terminal.
    pub(crate) fn set_recovery_out(&mut self, path: Option<PathBuf>) {
        self.recovery_out = path;
    }

    /// Whether we can prompt.
    pub(crate) fn interactive(&self) -> bool {
        self.tty.is_some()
    }

    /// Whether a passphrase comes from a flag or the environment.
    pub(crate) fn has_passphrase_source(&self) -> bool {
        self.passphrase.is_some()
    }

    /// Whether a PIN comes from a flag or the environment.
    pub(crate) fn has_pin_source(&self) -> bool {
        self.pin.is_some()
    }

    /// Which secret to unlock with, judging by the ones supplied: an
    /// explicit flag beats the environment, and at equal rank kms's order
    /// decides ([`Supplied::strongest`]: the recovery key, then a
    /// passphrase, then a PIN). A `reserve`d source is left for the
    /// enrollment.
    pub(crate) fn supplied(&self, reserve: Reserve) -> Option<Supplied> {
        let candidates = [
            (Supplied::RecoveryKey, self.recovery.as_ref()),
            (
                Supplied::Passphrase,
                self.passphrase
                    .as_ref()
                    .filter(|_| reserve != Reserve::Passphrase),
            ),
            (
                Supplied::Pin,
                self.pin.as_ref().filter(|_| reserve != Reserve::Pin),
            ),
        ];
        let pick = |explicit: bool| {
            Supplied::strongest(
                candidates
                    .iter()
                    .filter(|(_, source)| source.is_some_and(|s| s.explicit() == explicit))
                    .map(|(which, _)| *which),
            )
        };
        pick(true).or_else(|| pick(false))
    }

    /// Asks on the terminal which of `choices` (id, description) to use.
    ///
    /// # Errors
    /// No terminal, or the user gave no valid answer.
    pub(crate) fn choose(&self, question: &str, choices: &[(u32, String)]) -> Result<u32, Failure> {
        let Some(tty) = &self.tty else {
            return Err(
                Failure::new(Exit::Auth, "no secret was supplied to unlock the keystore")
                    .hint(crate::failure::UNLOCK_HINT),
            );
        };
        let mut tty = lock(tty);
        let mut text = format!("{question}\n");
        for (n, (_, label)) in choices.iter().enumerate() {
            let _ = writeln!(text, "  [{}] {label}", n + 1);
        }
        let cannot = |e: io::Error| Failure::io("cannot use the terminal", &e);
        tty.say(&text).map_err(cannot)?;
        for _ in 0..3 {
            let answer = tty.ask("Choice: ", false).map_err(cannot)?;
            let picked = std::str::from_utf8(&answer)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .and_then(|n| n.checked_sub(1))
                .and_then(|i| choices.get(i));
            if let Some((id, _)) = picked {
                return Ok(*id);
            }
            tty.say("Please type one of the numbers shown.\n")
                .map_err(cannot)?;
        }
        Err(Failure::new(Exit::Failure, "cancelled"))
    }

    /// Turns a Service error into a failure, explaining a secret that could
    /// not be asked for (the Callbacks can only return `Cancelled`).
    pub(crate) fn explain(&self, err: Error) -> Failure {
        self.missing_failure(&err)
            .unwrap_or_else(|| Failure::from(err))
    }

    /// [`Ui::explain`] for an error of a protector of `kind`, when known
    /// (its PIN, lockout and wrong-device remedies depend on it).
    pub(crate) fn explain_for(&self, err: &Error, kind: Option<BackendKind>) -> Failure {
        self.missing_failure(err)
            .unwrap_or_else(|| crate::failure::from_kms_for(err, kind))
    }

    /// The failure for a `Cancelled` that was really a secret we had no way
    /// to ask for.
    fn missing_failure(&self, err: &Error) -> Option<Failure> {
        if matches!(err, Error::Cancelled) {
            lock(&self.missing).take().map(missing_secret)
        } else {
            None
        }
    }

    /// Deletes the recovery-key file written by this run (when the command
    /// it belonged to failed, the key in it unlocks nothing).
    pub(crate) fn discard_written_recovery_key(&self) {
        if let Some(path) = lock(&self.written).take() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Forgets the written file: it now belongs to the user.
    pub(crate) fn keep_written_recovery_key(&self) -> Option<PathBuf> {
        lock(&self.written).take()
    }

    #[cfg_attr(
        not(feature = "yubikey"),
        allow(dead_code, reason = "only `keyward yubikey setup` sets device PINs")
    )]
    /// A new PIN or PUK to set on a device: a PIN from the PIN source
    /// (`--pin-fd`, `KEYWARD_PIN`), a PUK from `puk_fd` or `KEYWARD_PUK`;
    /// without a source, asked twice on the terminal.
    ///
    /// # Errors
    /// No source and no terminal; the source cannot be read; the two
    /// entries differ three times; an empty entry (cancelled).
    pub(crate) fn new_device_code(
        &self,
        kind: SecretKind,
        description: &str,
        puk_fd: Option<i32>,
    ) -> Result<SecretString, Failure> {
        let what = if kind == SecretKind::Puk {
            "PUK"
        } else {
            "PIN"
        };
        let puk_source = if kind == SecretKind::Puk {
            puk_fd
                .map(|fd| Source::new(Origin::Fd(fd)))
                .or_else(|| std::env::var_os(ENV_PUK).map(|_| Source::new(Origin::Env(ENV_PUK))))
        } else {
            None
        };
        let source = if kind == SecretKind::Puk {
            puk_source.as_ref()
        } else {
            self.pin.as_ref()
        };
        if let Some(source) = source {
            return source
                .read(&format!("new {what}"), false)
                .map_err(Failure::from);
        }
        let Some(tty) = &self.tty else {
            let hint = if kind == SecretKind::Puk {
                "pass it with --puk-fd N or KEYWARD_PUK, or run keyward on a terminal"
            } else {
                "pass it with --pin-fd N or KEYWARD_PIN, or run keyward on a terminal"
            };
            return Err(Failure::new(
                Exit::Auth,
                format!("a new {what} is needed and there is no terminal to ask for it"),
            )
            .hint(hint));
        };
        let mut tty = lock(tty);
        for _ in 0..3 {
            let first =
                tty.ask_secret(&format!("New {what} for {description} (6-8 characters): "))?;
            let second = tty.ask_secret("Type it again: ")?;
            if first.expose_secret() == second.expose_secret() {
                return Ok(first);
            }
            tty.say("The two entries differ; please try again.\n")
                .map_err(|e| Failure::io("cannot write to the terminal", &e))?;
        }
        Err(Failure::new(
            Exit::Usage,
            format!("the two entries of the new {what} differed three times"),
        ))
    }

    fn no_source(&self, kind: SecretKind) -> Error {
        *lock(&self.missing) = Some(kind);
        Error::Cancelled
    }

    fn write_recovery_file(&self, path: &Path, secret: &SecretString) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        *lock(&self.written) = Some(path.to_path_buf());
        let mut text = Zeroizing::new(String::with_capacity(secret.expose_secret().len() + 1));
        text.push_str(secret.expose_secret());
        text.push('\n');
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        crate::files::sync_parent(path);
        to_stderr(format_args!(
            "keyward: the new recovery key was written to {} (mode 0600); keep a copy \
             offline, away from this computer: it unlocks the keystore\n",
            path.display()
        ));
        Ok(())
    }
}

/// `text` with its first letter in upper case, for a prompt.
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// The prompt for a PIN (or PUK) the backend described: "PIN for TPM
/// (srk:…) (3 tries left): ", or the description itself when it names what
/// is asked (`New TPM PIN for "laptop": `).
fn pin_prompt(what: &str, description: &str, tries: &str) -> String {
    if description.contains(&format!("{what} for ")) {
        format!("{}{tries}: ", capitalized(description))
    } else {
        format!("{what} for {description}{tries}: ")
    }
}

/// The failure for a secret we had no way to get.
pub(crate) fn missing_secret(kind: SecretKind) -> Failure {
    let (what, hint) = match kind {
        SecretKind::Passphrase | SecretKind::NewPassphrase => (
            "a passphrase",
            "pass it with --passphrase-fd N or KEYWARD_PASSPHRASE, or run keyward on a terminal",
        ),
        SecretKind::RecoveryKey => (
            "a recovery key",
            "pass it with --recovery-key-file FILE or KEYWARD_RECOVERY_KEY, or run keyward on \
             a terminal",
        ),
        SecretKind::Pin => (
            "a PIN",
            "pass it with --pin-fd N or KEYWARD_PIN, or run keyward on a terminal, or unlock \
             with another protector",
        ),
        SecretKind::Puk => (
            "a PUK",
            "run keyward on a terminal to enter the PUK, or unlock with another protector",
        ),
    };
    Failure::new(
        Exit::Auth,
        format!("{what} is needed and there is no terminal to ask for it"),
    )
    .hint(hint)
}

impl Callbacks for Ui {
    fn request_secret(&self, request: &SecretRequest<'_>) -> keyward_kms::Result<SecretString> {
        let tries = request
            .retries_left
            .map(|n| format!(" ({n} tries left)"))
            .unwrap_or_default();
        let description = request.description;
        match request.kind {
            SecretKind::Passphrase => {
                if let Some(source) = &self.passphrase {
                    return source.read("passphrase", false);
                }
                let Some(tty) = &self.tty else {
                    return Err(self.no_source(request.kind));
                };
                lock(tty).ask_secret(&format!("{}{tries}: ", capitalized(description)))
            }
            SecretKind::NewPassphrase => {
                if let Some(source) = &self.passphrase {
                    return source.read("passphrase", false);
                }
                let Some(tty) = &self.tty else {
                    return Err(self.no_source(request.kind));
                };
                let mut tty = lock(tty);
                for _ in 0..3 {
                    let first = tty.ask_secret(&format!("{}: ", capitalized(description)))?;
                    let second = tty.ask_secret("Type it again: ")?;
                    // No timing to protect here: the user typed both and
                    // learns the outcome anyway.
                    if first.expose_secret() == second.expose_secret() {
                        return Ok(first);
                    }
                    tty.say("The two entries differ; please try again.\n")
                        .map_err(|e| Error::io("cannot write to the terminal", e))?;
                }
                Err(Error::WeakPassphrase {
                    reason: "the two entries differed three times",
                })
            }
            SecretKind::RecoveryKey => {
                if let Some(source) = &self.recovery {
                    return source.read("recovery key", true);
                }
                let Some(tty) = &self.tty else {
                    return Err(self.no_source(request.kind));
                };
                lock(tty).ask_secret(&format!("{}: ", capitalized(description)))
            }
            SecretKind::Pin | SecretKind::Puk => {
                // One read per run: a PIN is never retried by itself, and a
                // device that asks twice (a new PIN, typed again) gets the
                // same answer.
                if request.kind == SecretKind::Pin {
                    if let Some(source) = &self.pin {
                        tracing::info!(device = description, "PIN from {}", source.describe());
                        return source.read("PIN", false);
                    }
                }
                let Some(tty) = &self.tty else {
                    return Err(self.no_source(request.kind));
                };
                let what = if request.kind == SecretKind::Pin {
                    "PIN"
                } else {
                    "PUK"
                };
                lock(tty).ask_secret(&pin_prompt(what, description, &tries))
            }
        }
    }

    fn notify(&self, notice: &Notice<'_>) {
        match notice {
            Notice::TouchRequired { device } => {
                to_stderr(format_args!("keyward: touch {device} now\n"));
            }
            Notice::InsertDevice { device } => {
                to_stderr(format_args!("keyward: insert {device}\n"));
            }
            Notice::Info(text) => to_stderr(format_args!("keyward: {text}\n")),
        }
    }

    fn show_secret(&self, title: &str, secret: &SecretString) -> keyward_kms::Result<()> {
        if let Some(path) = &self.recovery_out {
            return self.write_recovery_file(path, secret).map_err(|e| {
                Error::io(format!("cannot write the {title} to {}", path.display()), e)
            });
        }
        let Some(tty) = &self.tty else {
            return Err(Error::io(
                format!(
                    "cannot show the {title}: there is no terminal (use --recovery-key-out FILE)"
                ),
                io::Error::from(io::ErrorKind::Unsupported),
            ));
        };
        let mut tty = lock(tty);
        let mut text = Zeroizing::new(String::new());
        text.push_str("\n  ");
        text.push_str(title);
        text.push_str("\n\n      ");
        text.push_str(secret.expose_secret());
        text.push_str(
            "\n\n  Anyone who has it can unlock this keystore; without it, losing your\n  \
             other protectors means losing every key. Keep it away from this computer.\n\n",
        );
        let cannot = |e| Error::io(format!("cannot show the {title} on the terminal"), e);
        tty.say(&text).map_err(cannot)?;
        tty.ask("Press Enter when you have written it down. ", false)
            .map_err(cannot)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    fn request(kind: SecretKind) -> SecretRequest<'static> {
        SecretRequest {
            kind,
            description: "test",
            retries_left: None,
        }
    }

    #[test]
    fn fd_source_reads_one_line_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pass");
        std::fs::write(&path, b"correct horse\r\nsecond line\n").expect("write");
        let file = File::open(&path).expect("open");
        let ui = Ui {
            passphrase: Some(Source::new(Origin::Fd(file.as_raw_fd()))),
            ..Ui::new(None, None, None)
        };
        let s = ui
            .request_secret(&request(SecretKind::Passphrase))
            .expect("secret");
        assert_eq!(s.expose_secret(), "correct horse");
        // Cached: a second request (unlock, then enroll) gets the same one.
        let s = ui
            .request_secret(&request(SecretKind::NewPassphrase))
            .expect("secret");
        assert_eq!(s.expose_secret(), "correct horse");
    }

    #[test]
    fn fd_source_errors_are_typed() {
        let ui = Ui {
            passphrase: Some(Source::new(Origin::Fd(987_654))),
            ..Ui::new(None, None, None)
        };
        let err = ui
            .request_secret(&request(SecretKind::Passphrase))
            .expect_err("closed fd");
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("cannot read the passphrase from file descriptor 987654"),
            "{err}"
        );
    }

    #[test]
    fn recovery_file_is_trimmed_and_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rk");
        // The recovery key read from a file holding `content`.
        let read = |content: &[u8]| {
            std::fs::write(&path, content).expect("write");
            Ui::new(None, Some(&path), None).request_secret(&request(SecretKind::RecoveryKey))
        };
        let s = read(b"  ABCD-EFGH-1234\n\n").expect("secret");
        assert_eq!(s.expose_secret(), "ABCD-EFGH-1234");

        let too_long = vec![b'A'; MAX_SECRET_LEN + 10];
        for (content, ending) in [
            (&too_long[..], "is too long"),
            (b" \n", "is empty"),
            (b"\xff\xfe", "is not UTF-8 text"),
        ] {
            let err = read(content).expect_err(ending);
            assert!(err.to_string().ends_with(ending), "{err}");
        }
    }

    #[test]
    fn no_source_without_terminal_is_explained() {
        let ui = Ui {
            tty: None,
            passphrase: None,
            recovery: None,
            ..Ui::new(None, None, None)
        };
        let err = ui
            .request_secret(&request(SecretKind::RecoveryKey))
            .expect_err("no source");
        let f = ui.explain(err);
        assert_eq!(f.code, Exit::Auth);
        assert_eq!(
            f.message,
            "a recovery key is needed and there is no terminal to ask for it"
        );
        // A plain Cancelled (user pressed Enter on an empty prompt) stays one.
        let f = ui.explain(Error::Cancelled);
        assert_eq!(f.code, Exit::Failure);
    }

    #[test]
    fn supplied_secrets_are_ranked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rk = dir.path().join("rk");
        let base = || Ui {
            tty: None,
            passphrase: None,
            recovery: None,
            pin: None,
            ..Ui::new(None, None, None)
        };
        assert_eq!(base().supplied(Reserve::Nothing), None);
        let ui = Ui {
            passphrase: Some(Source::new(Origin::Env(ENV_PASSPHRASE))),
            ..base()
        };
        assert_eq!(ui.supplied(Reserve::Nothing), Some(Supplied::Passphrase));
        assert_eq!(ui.supplied(Reserve::Passphrase), None);
        let ui = Ui {
            passphrase: Some(Source::new(Origin::Fd(3))),
            recovery: Some(Source::new(Origin::Env(ENV_RECOVERY_KEY))),
            ..base()
        };
        assert_eq!(ui.supplied(Reserve::Nothing), Some(Supplied::Passphrase));
        assert_eq!(
            ui.supplied(Reserve::Passphrase),
            Some(Supplied::RecoveryKey)
        );
        let ui = Ui {
            passphrase: Some(Source::new(Origin::Env(ENV_PASSPHRASE))),
            recovery: Some(Source::new(Origin::File(rk))),
            ..base()
        };
        assert_eq!(ui.supplied(Reserve::Nothing), Some(Supplied::RecoveryKey));
        // A PIN ranks last at equal rank, first when it alone is explicit,
        // and is skipped when reserved for the device being enrolled.
        let ui = Ui {
            pin: Some(Source::new(Origin::Env(ENV_PIN))),
            recovery: Some(Source::new(Origin::Env(ENV_RECOVERY_KEY))),
            ..base()
        };
        assert_eq!(ui.supplied(Reserve::Nothing), Some(Supplied::RecoveryKey));
        let ui = Ui {
            pin: Some(Source::new(Origin::Fd(4))),
            recovery: Some(Source::new(Origin::Env(ENV_RECOVERY_KEY))),
            ..base()
        };
        assert_eq!(ui.supplied(Reserve::Nothing), Some(Supplied::Pin));
        assert_eq!(ui.supplied(Reserve::Pin), Some(Supplied::RecoveryKey));
        let ui = Ui {
            pin: Some(Source::new(Origin::Env(ENV_PIN))),
            ..base()
        };
        assert_eq!(ui.supplied(Reserve::Nothing), Some(Supplied::Pin));
        assert_eq!(ui.supplied(Reserve::Pin), None);
    }

    #[test]
    fn pin_prompts_show_the_device_and_tries() {
        assert_eq!(
            pin_prompt("PIN", "TPM (srk:0123456789abcdef)", " (3 tries left)"),
            "PIN for TPM (srk:0123456789abcdef) (3 tries left): "
        );
        assert_eq!(
            pin_prompt("PIN", "new TPM PIN for \"laptop\" (again)", ""),
            "New TPM PIN for \"laptop\" (again): "
        );
        // A token's PIN-state flags mention "PIN" too; the prompt still
        // says what is asked.
        assert_eq!(
            pin_prompt(
                "PIN",
                "PKCS#11 token \"desk\" (serial 1) — CKF_USER_PIN_COUNT_LOW: a wrong PIN was \
                 entered since the last success",
                ""
            ),
            "PIN for PKCS#11 token \"desk\" (serial 1) — CKF_USER_PIN_COUNT_LOW: a wrong PIN \
             was entered since the last success: "
        );
    }

    #[test]
    fn pin_source_is_read_once_for_every_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pin");
        std::fs::write(&path, b"246810\nrest\n").expect("write");
        let file = File::open(&path).expect("open");
        let ui = Ui {
            tty: None,
            pin: Some(Source::new(Origin::Fd(file.as_raw_fd()))),
            ..Ui::new(None, None, None)
        };
        for _ in 0..2 {
            let s = ui.request_secret(&request(SecretKind::Pin)).expect("pin");
            assert_eq!(s.expose_secret(), "246810");
        }
        // A PUK never comes from the PIN source.
        let err = ui
            .request_secret(&request(SecretKind::Puk))
            .expect_err("no PUK source");
        assert_eq!(
            ui.explain(err).message,
            "a PUK is needed and there is no terminal to ask for it"
        );
    }

    #[test]
    fn prompts_start_with_a_capital() {
        assert_eq!(capitalized("recovery key"), "Recovery key");
        assert_eq!(
            capitalized("new passphrase for \"x\""),
            "New passphrase for \"x\""
        );
        assert_eq!(capitalized(""), "");
    }

    #[test]
    fn recovery_key_file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("recovery.txt");
        let mut ui = Ui::new(None, None, None);
        ui.set_recovery_out(Some(out.clone()));
        let secret = SecretString::from("ABCD-EFGH");
        ui.show_secret("recovery key", &secret).expect("written");
        assert_eq!(std::fs::read_to_string(&out).expect("read"), "ABCD-EFGH\n");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&out).expect("meta").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let err = ui
            .show_secret("recovery key", &SecretString::from("OTHER"))
            .expect_err("exists");
        assert!(matches!(err, Error::Io { .. }));
        assert_eq!(std::fs::read_to_string(&out).expect("read"), "ABCD-EFGH\n");
        // A failed command deletes the key it wrote.
        ui.discard_written_recovery_key();
        assert!(!out.exists());
    }
}
