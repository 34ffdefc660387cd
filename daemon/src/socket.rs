//! Where the daemon listens and how it makes sure it is alone
//! (docs/API.md, "Transport").
//!
//! - The socket is `$XDG_RUNTIME_DIR/keyward/keyward.sock`, else
//!   `/run/user/$UID/keyward/keyward.sock`; `--socket` and
//!   `KEYWARD_SOCKET` override it (the rule is keyward-api's
//!   `socket::default_path`). Its directory is created `0700` and must
//!   be ours and writable by nobody else; the socket is `0600`.
//! - One daemon per store: an exclusive `flock` on `<store>.daemon.lock`,
//!   holding the daemon's pid, for the daemon's lifetime.
//! - A socket file left by a killed daemon is removed, but only after the
//!   lock is taken, only if nothing answers on it, and never if the path is
//!   a symlink or not a socket.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::{Exit, Failure};

/// The path of the lock file of `store`.
pub(crate) fn lock_path(store: &Path) -> PathBuf {
    let mut path = store.as_os_str().to_owned();
    path.push(".daemon.lock");
    PathBuf::from(path)
}

/// The exclusive lock that makes this process the one daemon of a store.
#[derive(Debug)]
pub struct DaemonLock {
    file: File,
    path: PathBuf,
}

impl DaemonLock {
    /// Takes the lock of `store` and writes our pid into it.
    ///
    /// # Errors
    /// Exit 8 naming the pid when another daemon holds it; I/O errors.
    pub(crate) fn acquire(store: &Path) -> Result<Self, Failure> {
        let path = lock_path(store);
        let io = |what: &str, e: std::io::Error| {
            Failure::new(
                Exit::Store,
                format!("cannot {what} {}: {e}", path.display()),
            )
        };
        // A stopping daemon removes the file it locked; whoever opened the
        // old file meanwhile must not count it as the lock, so we check
        // that the locked file is still the one at the path.
        for _ in 0..10 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(
                    // std opens with O_CLOEXEC already.
                    i32::try_from(OFlags::NOFOLLOW.bits()).expect("O_NOFOLLOW fits in an int"),
                )
                .open(&path)
                .map_err(|e| io("open the lock file", e))?;
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) => {
                    let mut text = String::new();
                    let _ = file.read_to_string(&mut text);
                    let holder = text
                        .trim()
                        .parse::<u32>()
                        .map_or_else(|_| "another process".to_owned(), |pid| format!("pid {pid}"));
                    return Err(Failure::new(
                        Exit::Store,
                        format!(
                            "another keyward serve ({holder}) is already serving {}",
                            store.display()
                        ),
                    )
                    .hint(
                        "one daemon serves a keystore: use the running one, or stop it first \
                         (SIGTERM) and start again",
                    ));
                }
                Err(e) => return Err(io("lock", e.into())),
            }
            let locked = rustix::fs::fstat(&file).map_err(|e| io("inspect", e.into()))?;
            match rustix::fs::lstat(&path) {
                Ok(now) if now.st_dev == locked.st_dev && now.st_ino == locked.st_ino => {
                    file.set_len(0).map_err(|e| io("write", e))?;
                    file.rewind().map_err(|e| io("write", e))?;
                    writeln!(file, "{}", std::process::id()).map_err(|e| io("write", e))?;
                    file.sync_all().map_err(|e| io("write", e))?;
                    return Ok(Self { file, path });
                }
                // Replaced or removed under us: try the new file.
                _ => {}
            }
        }
        Err(Failure::new(
            Exit::Store,
            format!("cannot take the lock {}: it keeps changing", path.display()),
        ))
    }

    /// Removes the lock file, then releases the lock (the order matters: a
    /// new daemon must never lock a file we are about to delete).
    pub fn release(self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.file);
    }
}

/// The socket file we bound, as the kernel identifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    dev: u64,
    ino: u64,
}

/// What the socket path holds now, compared with what we bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Our socket, mode 0600.
    Intact,
    /// Our socket, with a wider mode (the value found).
    ModeChanged(u32),
    /// Another file is at the path.
    Replaced,
    /// Nothing is at the path.
    Removed,
}

impl Identity {
    /// The identity of the socket at `path`.
    ///
    /// # Errors
    /// The path cannot be inspected.
    pub(crate) fn of(path: &Path) -> std::io::Result<Self> {
        let stat = rustix::fs::lstat(path)?;
        Ok(Self {
            dev: stat.st_dev,
            ino: stat.st_ino,
        })
    }

    /// Compares the file at `path` with this identity.
    pub(crate) fn check(self, path: &Path) -> Check {
        match rustix::fs::lstat(path) {
            Err(Errno::NOENT) => Check::Removed,
            Err(_) => Check::Replaced,
            Ok(stat)
                if stat.st_dev != self.dev
                    || stat.st_ino != self.ino
                    || FileType::from_raw_mode(stat.st_mode) != FileType::Socket =>
            {
                Check::Replaced
            }
            Ok(stat) if stat.st_mode & 0o7777 != 0o600 => Check::ModeChanged(stat.st_mode & 0o7777),
            Ok(_) => Check::Intact,
        }
    }
}

/// Makes the socket's directory (`0700`) if needed, checks it is ours and
/// writable only by us, and removes a stale socket at `path`.
///
/// # Errors
/// A directory we cannot trust; a live socket, symlink or other file at
/// `path`.
pub(crate) fn prepare(path: &Path) -> Result<(), Failure> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    if path.file_name().is_none() {
        return Err(Failure::new(
            Exit::Usage,
            format!("the socket path {} names no file", path.display()),
        ));
    }
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        return Err(Failure::new(
            Exit::Store,
            format!("cannot create the socket directory {}: {e}", dir.display()),
        ));
    }
    let stat = rustix::fs::lstat(dir).map_err(|e| {
        Failure::new(
            Exit::Store,
            format!("cannot inspect {}: {e}", dir.display()),
        )
    })?;
    let me = rustix::process::geteuid().as_raw();
    let untrusted = |detail: String| {
        Failure::new(
            Exit::Store,
            format!("refusing the socket directory {}: {detail}", dir.display()),
        )
        .hint("give a directory of your own that only you can write to (mode 0700), or let keyward create one")
    };
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return Err(untrusted("it is not a directory (a symbolic link?)".into()));
    }
    if stat.st_uid != me {
        return Err(untrusted(format!("it belongs to uid {}", stat.st_uid)));
    }
    if stat.st_mode & 0o022 != 0 {
        return Err(untrusted(format!(
            "others can write to it (mode {:04o})",
            stat.st_mode & 0o7777
        )));
    }
    remove_stale(path)
}

/// Removes a socket left by a daemon that died, and refuses anything else.
fn remove_stale(path: &Path) -> Result<(), Failure> {
    let stat = match rustix::fs::lstat(path) {
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => {
            return Err(Failure::new(
                Exit::Store,
                format!("cannot inspect {}: {e}", path.display()),
            ));
        }
        Ok(stat) => stat,
    };
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Socket => {}
        FileType::Symlink => {
            return Err(Failure::new(
                Exit::Store,
                format!("refusing to use {}: it is a symbolic link", path.display()),
            )
            .hint("remove it yourself if it is yours, or choose another --socket"));
        }
        _ => {
            return Err(Failure::new(
                Exit::Store,
                format!("refusing to replace {}: it is not a socket", path.display()),
            )
            .hint("remove it yourself if it is yours, or choose another --socket"));
        }
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(Failure::new(
            Exit::Store,
            format!("{} is in use: something answers on it", path.display()),
        )
        .hint("another keyward serve may serve another keystore there; choose another --socket")),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(|e| {
                Failure::new(
                    Exit::Store,
                    format!("cannot remove the stale socket {}: {e}", path.display()),
                )
            })?;
            tracing::info!(socket = %path.display(), "removed the socket of a daemon that is gone");
            Ok(())
        }
        Err(e) => Err(Failure::new(
            Exit::Store,
            format!("cannot check the socket {}: {e}", path.display()),
        )),
    }
}

/// Sets the socket's mode to `0600`.
///
/// # Errors
/// The mode cannot be set.
pub(crate) fn restrict(path: &Path) -> std::io::Result<()> {
    rustix::fs::chmod(path, Mode::from_raw_mode(0o600))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn lock_is_exclusive_and_names_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("keystore.db");
        let lock = DaemonLock::acquire(&store).expect("first lock");
        let text = std::fs::read_to_string(lock_path(&store)).expect("lock file");
        assert_eq!(text.trim(), std::process::id().to_string());
        let err = DaemonLock::acquire(&store).expect_err("second lock");
        assert_eq!(err.code, Exit::Store);
        assert!(
            err.message
                .contains(&format!("(pid {})", std::process::id())),
            "{}",
            err.message
        );
        lock.release();
        assert!(!lock_path(&store).exists());
        DaemonLock::acquire(&store)
            .expect("lock after release")
            .release();
    }

    #[test]
    fn stale_sockets_go_and_other_files_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock_dir = dir.path().join("s");
        let path = sock_dir.join("keyward.sock");
        prepare(&path).expect("fresh directory");
        let mode = std::fs::metadata(&sock_dir)
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        // A bound socket nobody listens on any more.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        assert!(path.exists());
        prepare(&path).expect("stale socket removed");
        assert!(!path.exists());
        // A live one is refused.
        let live = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        assert!(prepare(&path).is_err());
        drop(live);
        std::fs::remove_file(&path).expect("remove");
        // A regular file and a symlink are never removed.
        std::fs::write(&path, b"x").expect("file");
        assert!(prepare(&path).is_err());
        assert!(path.exists());
        std::fs::remove_file(&path).expect("remove");
        std::os::unix::fs::symlink("/nonexistent", &path).expect("symlink");
        assert!(prepare(&path).is_err());
        assert!(std::fs::symlink_metadata(&path).is_ok());
    }

    #[test]
    fn the_watchdog_sees_mode_changes_and_replacements() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        restrict(&path).expect("chmod");
        let id = Identity::of(&path).expect("identity");
        assert_eq!(id.check(&path), Check::Intact);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        assert_eq!(id.check(&path), Check::ModeChanged(0o666));
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(id.check(&path), Check::Removed);
        std::fs::write(&path, b"x").expect("file");
        assert_eq!(id.check(&path), Check::Replaced);
    }
}
