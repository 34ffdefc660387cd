//! [`Error`]: every way a command fails, each with a diagnosis, a remedy
//! and an exit code.
//!
//! The exit codes follow `keyward`'s (docs/CLI.md) so that one script can
//! handle both, plus 7 for "the key service cannot be reached": for the
//! assistant the daemon is the device.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Exit code: failure not covered below (I/O).
pub(crate) const EXIT_OTHER: u8 = 1;
/// Exit code: bad command line.
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit code: authentication failed or needed (locked, unknown token).
pub(crate) const EXIT_AUTH: u8 = 3;
/// Exit code: something named does not exist.
pub(crate) const EXIT_NOT_FOUND: u8 = 4;
/// Exit code: data integrity (wrong key, damaged key file).
pub(crate) const EXIT_INTEGRITY: u8 = 5;
/// Exit code: refused by policy (forbidden, would overwrite).
pub(crate) const EXIT_POLICY: u8 = 6;
/// Exit code: the key service cannot be reached.
pub(crate) const EXIT_UNREACHABLE: u8 = 7;
/// Exit code: the database is unusable (SQLite error, schema).
pub(crate) const EXIT_STORE: u8 = 8;

/// Where the client token came from, to name it in messages (never the
/// token itself).
#[derive(Debug, Clone)]
pub(crate) enum TokenSource {
    /// `KEYWARD_CLIENT_TOKEN_FILE`.
    File(PathBuf),
    /// `KEYWARD_CLIENT_TOKEN`.
    Env,
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{} (KEYWARD_CLIENT_TOKEN_FILE)", path.display()),
            Self::Env => f.write_str("KEYWARD_CLIENT_TOKEN"),
        }
    }
}

/// Why a command failed. No variant holds secret material: values, data
/// keys and tokens never reach an error.
#[derive(Debug)]
#[non_exhaustive]
pub(crate) enum Error {
    /// The command line is wrong; the text says how.
    Usage(String),
    /// Neither `KEYWARD_CLIENT_TOKEN_FILE` nor `KEYWARD_CLIENT_TOKEN` is set.
    NoToken,
    /// The token file cannot be read.
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The token file is readable or writable by other users.
    TokenFileMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The token is not of the form `kwt_…`.
    MalformedToken(TokenSource),
    /// No daemon listens on the socket.
    NotRunning {
        /// The socket path.
        socket: PathBuf,
    },
    /// The socket or its directory could be someone else's: we refuse to
    /// send a token there.
    SocketUntrusted {
        /// The socket path.
        socket: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Talking to the daemon failed mid-way.
    Connection {
        /// The socket path.
        socket: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The daemon answered something that is not the documented API.
    Protocol(String),
    /// `423 locked`.
    Locked,
    /// `401 unauthorized`: the token is unknown or revoked.
    Unauthorized(TokenSource),
    /// `403 forbidden`: this client may not use `datakey` on `key`.
    Forbidden {
        /// The key the store uses.
        key: String,
        /// The daemon's own message.
        message: String,
    },
    /// Any other error answer of the daemon, passed on.
    Daemon {
        /// Its stable code (docs/API.md).
        code: String,
        /// Its message.
        message: String,
        /// Its hint, if it gave one.
        hint: Option<String>,
        /// The exit code the daemon says this failure has.
        exit: u8,
    },
    /// `init` would overwrite a database or key file.
    Exists {
        /// The file that exists.
        path: PathBuf,
    },
    /// The database file is not there.
    NoDatabase {
        /// The database path.
        db: PathBuf,
    },
    /// The key file beside the database is not there.
    NoKeyFile {
        /// The key file path.
        path: PathBuf,
    },
    /// A key file without its database (left by an interrupted `init`).
    OrphanKeyFile {
        /// The key file path.
        path: PathBuf,
    },
    /// The key file is not an assistant-store key file.
    BadKeyFile {
        /// The key file path.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The database was renamed since `init`: the data key is bound to
    /// the name it had.
    Renamed {
        /// The database path now.
        db: PathBuf,
        /// The file name it was created with.
        was: String,
    },
    /// SQLCipher says "file is not a database": the key is not this
    /// database's key, or the file is not an encrypted store.
    WrongKey {
        /// The database path.
        db: PathBuf,
    },
    /// The linked SQLite does not encrypt (no SQLCipher).
    NoEncryption,
    /// The database has a schema this version does not know.
    Schema {
        /// The database path.
        db: PathBuf,
        /// Its `user_version`.
        found: i64,
    },
    /// No entry with this name.
    NoEntry {
        /// The entry name.
        name: String,
    },
    /// SQLite failed.
    Database {
        /// The database path.
        db: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// An I/O error on a named file or stream.
    Io {
        /// What we were doing ("write the key file …").
        what: String,
        /// Why it failed.
        source: io::Error,
    },
}

impl Error {
    /// An I/O error while doing `what`.
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// The exit code for this failure.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => EXIT_USAGE,
            Self::NoToken
            | Self::TokenFile { .. }
            | Self::TokenFileMode { .. }
            | Self::MalformedToken(_)
            | Self::Locked
            | Self::Unauthorized(_) => EXIT_AUTH,
            Self::NotRunning { .. }
            | Self::SocketUntrusted { .. }
            | Self::Connection { .. }
            | Self::Protocol(_) => EXIT_UNREACHABLE,
            Self::Forbidden { .. } | Self::Exists { .. } | Self::OrphanKeyFile { .. } => {
                EXIT_POLICY
            }
            Self::Daemon { exit, .. } => *exit,
            Self::NoDatabase { .. } | Self::NoKeyFile { .. } | Self::NoEntry { .. } => {
                EXIT_NOT_FOUND
            }
            Self::BadKeyFile { .. } | Self::Renamed { .. } | Self::WrongKey { .. } => {
                EXIT_INTEGRITY
            }
            Self::NoEncryption | Self::Schema { .. } | Self::Database { .. } => EXIT_STORE,
            Self::Io { .. } => EXIT_OTHER,
        }
    }

    /// What to do about it, when there is something to do.
    pub(crate) fn hint(&self) -> Option<String> {
        let hint = match self {
            Self::Usage(_) => "run `assistant-store --help` for usage".to_owned(),
            Self::NoToken => "point KEYWARD_CLIENT_TOKEN_FILE at a file holding the client \
                token (kwt_…) the key service owner created for the assistant (`keyward \
                client add NAME --allow datakey --keys KEY --token-out FILE`)"
                .to_owned(),
            Self::TokenFile { .. } => {
                "check KEYWARD_CLIENT_TOKEN_FILE: it must name a readable file holding \
                 the client token"
                    .to_owned()
            }
            Self::TokenFileMode { path, .. } => {
                format!("make it private: `chmod 600 {}`", path.display())
            }
            Self::MalformedToken(_) => "a client token is `kwt_` followed by 43 base64url \
                characters, as the key service showed it when the client was added"
                .to_owned(),
            Self::NotRunning { .. } => "start it with `keyward serve` (or `systemctl --user \
                start keyward`), or point KEYWARD_SOCKET at the socket it listens on"
                .to_owned(),
            Self::SocketUntrusted { .. } => "the socket and its directory must belong to you \
                and be writable by nobody else; check KEYWARD_SOCKET, or restart \
                `keyward serve`, which creates them so"
                .to_owned(),
            Self::Connection { .. } | Self::Protocol(_) => {
                "check that KEYWARD_SOCKET names a `keyward serve` socket, and the \
                 daemon's log (`journalctl --user -u keyward`)"
                    .to_owned()
            }
            Self::Locked => "the session ended (`keyward lock`, the idle or the absolute \
                timeout): unlock it, then run this command again"
                .to_owned(),
            Self::Unauthorized(_) => "the token is unknown or was revoked: ask the key \
                service owner for a new client token (`keyward client add`) and store it \
                in KEYWARD_CLIENT_TOKEN_FILE"
                .to_owned(),
            Self::Forbidden { key, .. } => format!(
                "use the token of a client granted `datakey` on key \"{key}\", or have the \
                 key service owner add one (`keyward client add NAME --allow datakey --keys \
                 {key}`)"
            ),
            Self::Daemon { hint, .. } => return hint.clone(),
            Self::Exists { .. } => {
                "choose another --db path, or remove the old database and its .key file \
                 if you no longer need its data"
                    .to_owned()
            }
            Self::NoDatabase { .. } => {
                "create it with `assistant-store --db PATH init --key KEY`".to_owned()
            }
            Self::NoKeyFile { .. } => "the key file written by `init` must stay beside the \
                database (PATH.key): restore it from where it was moved or backed up"
                .to_owned(),
            Self::OrphanKeyFile { path } => format!(
                "an earlier `init` stopped before it created the database; no data uses \
                 this key: remove {} and run `init` again",
                path.display()
            ),
            Self::BadKeyFile { .. } => {
                "restore the key file from a backup; without it the database cannot be \
                 opened"
                    .to_owned()
            }
            Self::Renamed { was, .. } => format!(
                "its data key is bound to the name it was created with: rename the \
                 database (and its .key file) back to {was}"
            ),
            Self::WrongKey { .. } => "the .key file beside it belongs to another database, or \
                the file is not an assistant-store database: put the right key file back \
                (PATH.key, from the same `init`)"
                .to_owned(),
            Self::NoEncryption => "this build links an SQLite without SQLCipher: rebuild \
                assistant-store with the `bundled-sqlcipher` rusqlite feature"
                .to_owned(),
            Self::Schema { .. } => {
                "use the assistant-store version that created this database".to_owned()
            }
            Self::NoEntry { .. } => "list the entries with `assistant-store list`".to_owned(),
            Self::Database { .. } | Self::Io { .. } => return None,
        };
        Some(hint)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(text) => f.write_str(text),
            Self::NoToken => f.write_str("no client token for the key service"),
            Self::TokenFile { path, source } => {
                write!(f, "cannot read the token file {}: {source}", path.display())
            }
            Self::TokenFileMode { path, mode } => write!(
                f,
                "the token file {} is accessible to other users (mode {mode:03o})",
                path.display()
            ),
            Self::MalformedToken(from) => {
                write!(f, "{from} does not hold a keyward client token")
            }
            Self::NotRunning { socket } => write!(
                f,
                "the key service is not running (nothing listens on {})",
                socket.display()
            ),
            Self::SocketUntrusted { socket, reason } => write!(
                f,
                "refusing to send the client token to {}: {reason}",
                socket.display()
            ),
            Self::Connection { socket, source } => write!(
                f,
                "talking to the key service on {} failed: {source}",
                socket.display()
            ),
            Self::Protocol(what) => write!(f, "unexpected answer from the key service: {what}"),
            Self::Locked => f.write_str("the key service is locked: run `keyward unlock`"),
            Self::Unauthorized(from) => {
                write!(
                    f,
                    "the key service does not accept the client token in {from}"
                )
            }
            Self::Forbidden { key, message } => write!(
                f,
                "the key service refused this client the data key of key \"{key}\" ({message})"
            ),
            Self::Daemon { code, message, .. } => {
                write!(f, "the key service refused: {message} ({code})")
            }
            Self::Exists { path } => write!(f, "{} exists already", path.display()),
            Self::NoDatabase { db } => write!(f, "no database at {}", db.display()),
            Self::NoKeyFile { path } => write!(f, "no key file at {}", path.display()),
            Self::OrphanKeyFile { path } => {
                write!(f, "{} exists but its database does not", path.display())
            }
            Self::BadKeyFile { path, problem } => {
                write!(f, "{} is not a usable key file: {problem}", path.display())
            }
            Self::Renamed { db, was } => write!(
                f,
                "{} was created as {was} and has been renamed",
                db.display()
            ),
            Self::WrongKey { db } => write!(
                f,
                "{} cannot be opened with its key file: SQLCipher says \"file is not a \
                 database\"",
                db.display()
            ),
            Self::NoEncryption => f.write_str("SQLCipher is not available"),
            Self::Schema { db, found } => write!(
                f,
                "{} has schema version {found}, this assistant-store knows version 1",
                db.display()
            ),
            Self::NoEntry { name } => write!(f, "no entry named \"{name}\""),
            Self::Database { db, source } => write!(f, "database {}: {source}", db.display()),
            Self::Io { what, source } => write!(f, "cannot {what}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::TokenFile { source, .. }
            | Self::Connection { source, .. }
            | Self::Io { source, .. } => Some(source),
            Self::Database { source, .. } => Some(source),
            _ => None,
        }
    }
}
