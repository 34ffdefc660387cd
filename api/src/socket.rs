//! Where the daemon's socket is, and when a client may trust it
//! (docs/API.md, "Transport"). One rule for both sides: the daemon listens
//! where [`default_path`] says unless told otherwise, and clients look
//! there (or at `KEYWARD_SOCKET`).

use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Environment variable naming the daemon's socket (also `serve --socket`).
pub const SOCKET_ENV: &str = "KEYWARD_SOCKET";

/// The socket's file name in its directory.
const SOCKET_FILE: &str = "keyward.sock";

/// The default socket path: `$XDG_RUNTIME_DIR/keyward/keyward.sock` when
/// that variable is absolute, else `/run/user/$EUID/keyward/keyward.sock`.
pub fn default_path() -> PathBuf {
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        // The XDG base-directory spec: relative values are invalid.
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| {
            PathBuf::from(format!("/run/user/{}", rustix::process::geteuid().as_raw()))
        });
    runtime.join("keyward").join(SOCKET_FILE)
}

/// The socket a client talks to: `KEYWARD_SOCKET` when set and not empty,
/// else [`default_path`].
pub fn client_path() -> PathBuf {
    match std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => default_path(),
    }
}

/// Why a socket is not to be trusted: someone else could have put it
/// there or could replace it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untrusted {
    /// The path is not a socket.
    NotASocket,
    /// The socket belongs to another user.
    Owner {
        /// Its owner.
        uid: u32,
        /// Our effective uid.
        ours: u32,
    },
    /// Others may write to the socket.
    Writable {
        /// Its permission bits.
        mode: u32,
    },
    /// Its directory belongs to another user or others may write to it.
    Directory {
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        uid: u32,
        /// Its permission bits.
        mode: u32,
    },
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotASocket => f.write_str("it is not a socket"),
            Self::Owner { uid, ours } => {
                write!(f, "it belongs to uid {uid}, not to you (uid {ours})")
            }
            Self::Writable { mode } => write!(f, "others may write to it (mode {mode:o})"),
            Self::Directory { dir, uid, mode } => write!(
                f,
                "its directory {} belongs to uid {uid} with mode {mode:o}",
                dir.display()
            ),
        }
    }
}

/// Checks that `socket` (whose `symlink_metadata` is `meta`) and its
/// directory belong to our effective uid and that nobody else may write
/// to them. Checked before anything is sent: an unlock carries a PIN.
///
/// # Errors
/// [`Untrusted`] with the reason; an I/O error reading the directory's
/// metadata.
pub fn check_trusted(
    socket: &Path,
    meta: &std::fs::Metadata,
) -> std::io::Result<Result<(), Untrusted>> {
    let ours = rustix::process::geteuid().as_raw();
    if !meta.file_type().is_socket() {
        return Ok(Err(Untrusted::NotASocket));
    }
    if meta.uid() != ours {
        return Ok(Err(Untrusted::Owner {
            uid: meta.uid(),
            ours,
        }));
    }
    if meta.mode() & 0o022 != 0 {
        return Ok(Err(Untrusted::Writable {
            mode: meta.mode() & 0o777,
        }));
    }
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        let d = std::fs::metadata(dir)?;
        if d.uid() != ours || d.mode() & 0o022 != 0 {
            return Ok(Err(Untrusted::Directory {
                dir: dir.to_owned(),
                uid: d.uid(),
                mode: d.mode() & 0o777,
            }));
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn check(path: &Path) -> Result<(), Untrusted> {
        let meta = std::fs::symlink_metadata(path).expect("meta");
        check_trusted(path, &meta).expect("directory metadata")
    }

    #[test]
    fn untrusted_sockets_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"").expect("write");
        assert_eq!(check(&file), Err(Untrusted::NotASocket));
        let sock = dir.path().join("s");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let err = check(&sock).expect_err("world-writable");
        assert!(err.to_string().contains("others may write"), "{err}");
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod dir");
        let err = check(&sock).expect_err("world-writable directory");
        assert!(err.to_string().contains("directory"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod dir");
        check(&sock).expect("private socket");
    }

    #[test]
    fn the_default_path_ends_in_keyward_sock() {
        assert!(default_path().ends_with("keyward/keyward.sock"));
    }
}
