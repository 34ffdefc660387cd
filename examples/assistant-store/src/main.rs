//! `assistant-store`: the assistant's encrypted store, and an example of a
//! client application of the keyward daemon (`keyward serve`, docs/API.md).
//!
//! The store is one SQLCipher database. Its 256-bit key is a keyward *data
//! key*: `init` asks the daemon for a fresh one (`POST
//! /v1/datakey/generate`) and keeps only the wrapped copy, in `PATH.key`
//! beside the database; every later command asks the daemon to unwrap it
//! (`POST /v1/datakey/unwrap`). So the store opens only while the key
//! service is unlocked and only for a client granted `datakey` on the key:
//! `keyward lock` closes it for everyone at once, revoking the client's
//! token closes it for the assistant.
//!
//! What it is not: a database server, or a replacement for the keyward
//! CLI. Entry names are not secret (they are arguments); values are, and
//! come from stdin.
//!
//! ```sh
//! export KEYWARD_CLIENT_TOKEN_FILE=~/.config/assistant/token   # kwt_…, mode 0600
//! assistant-store --db ~/assistant.db init --key assistant-store
//! echo 'dentist on tuesday' | assistant-store --db ~/assistant.db put calendar/next
//! assistant-store --db ~/assistant.db get calendar/next
//! assistant-store --db ~/assistant.db list
//! ```

mod error;
mod keyservice;
mod store;

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use zeroize::Zeroizing;

use crate::error::Error;
use crate::keyservice::KeyService;
use crate::store::{KeyFile, Store};

/// `--help`.
const USAGE: &str = "\
assistant-store: the assistant's encrypted store (SQLCipher, keyed by keyward)

usage:
  assistant-store --db PATH init --key KEY   create PATH and PATH.key with a new data key of KEY
  assistant-store --db PATH put NAME         store the value read from stdin under NAME
  assistant-store --db PATH get NAME         write the value of NAME to stdout
  assistant-store --db PATH list             list the entry names

environment:
  KEYWARD_CLIENT_TOKEN_FILE  file holding the client token (kwt_…), mode 0600
  KEYWARD_CLIENT_TOKEN       the client token itself, if no file is given
  KEYWARD_SOCKET             the daemon's socket (default: $XDG_RUNTIME_DIR/keyward/keyward.sock)

Values are read from stdin, never from the command line. The client needs
the `datakey` grant on KEY. Exit codes: 0 ok, 1 I/O, 2 usage, 3 locked or
token refused, 4 not found, 5 wrong key or damaged key file, 6 forbidden or
would overwrite, 7 key service unreachable, 8 database unusable.
";

/// The largest value `put` accepts.
const MAX_VALUE: usize = 64 << 20;
/// The longest entry name.
const MAX_NAME: usize = 1024;

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    /// `--help`.
    Help,
    /// `--version`.
    Version,
    /// `init --key KEY`.
    Init {
        /// The database.
        db: PathBuf,
        /// The keyward key that wraps the data key.
        key: String,
    },
    /// `put NAME` (value on stdin).
    Put {
        /// The database.
        db: PathBuf,
        /// The entry name.
        name: String,
    },
    /// `get NAME`.
    Get {
        /// The database.
        db: PathBuf,
        /// The entry name.
        name: String,
    },
    /// `list`.
    List {
        /// The database.
        db: PathBuf,
    },
}

fn main() -> ExitCode {
    match parse_args(std::env::args_os().skip(1)).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            if let Some(hint) = error.hint() {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(error.exit_code())
        }
    }
}

/// Parses the arguments (after the program name).
fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Command, Error> {
    let mut args = args.into_iter();
    let mut db = None;
    let mut key = None;
    let mut words = Vec::new();
    let mut options_done = false;
    while let Some(arg) = args.next() {
        let text = arg.to_str();
        match text {
            Some("--") if !options_done => options_done = true,
            Some("-h" | "--help") if !options_done => return Ok(Command::Help),
            Some("-V" | "--version") if !options_done => return Ok(Command::Version),
            Some("--db") if !options_done => {
                let value = args
                    .next()
                    .ok_or_else(|| Error::Usage("--db needs a PATH".into()))?;
                if db.replace(PathBuf::from(value)).is_some() {
                    return Err(Error::Usage("--db given twice".into()));
                }
            }
            Some("--key") if !options_done => {
                let value = args
                    .next()
                    .ok_or_else(|| Error::Usage("--key needs a key name".into()))?;
                let value = utf8(value, "--key")?;
                if key.replace(value).is_some() {
                    return Err(Error::Usage("--key given twice".into()));
                }
            }
            Some(option) if !options_done && option.starts_with('-') && option != "-" => {
                return Err(Error::Usage(format!("unknown option {option}")));
            }
            _ => words.push(arg),
        }
    }
    let mut words = words.into_iter();
    let command = words
        .next()
        .ok_or_else(|| Error::Usage("no command given (init, put, get or list)".into()))?;
    let command = utf8(command, "the command")?;
    let db = db.ok_or_else(|| Error::Usage("--db PATH is required".into()))?;
    let mut name = || -> Result<String, Error> {
        let name = words
            .next()
            .ok_or_else(|| Error::Usage(format!("`{command}` needs an entry NAME")))?;
        let name = utf8(name, "NAME")?;
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(Error::Usage(format!(
                "an entry name is 1 to {MAX_NAME} bytes"
            )));
        }
        Ok(name)
    };
    let parsed = match command.as_str() {
        "init" => Command::Init {
            db,
            key: key
                .take()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| Error::Usage("`init` needs --key KEY".into()))?,
        },
        "put" => Command::Put { name: name()?, db },
        "get" => Command::Get { name: name()?, db },
        "list" => Command::List { db },
        other => {
            return Err(Error::Usage(format!(
                "unknown command `{other}` (init, put, get or list)"
            )));
        }
    };
    if words.next().is_some() {
        // Not echoed: it may be a value someone tried to pass here.
        return Err(Error::Usage(format!(
            "too many arguments for `{command}` (values are read from stdin, never from \
             the command line)"
        )));
    }
    if key.is_some() {
        return Err(Error::Usage("--key is only for `init`".into()));
    }
    Ok(parsed)
}

/// `value` as UTF-8, or a usage error naming `what`.
fn utf8(value: OsString, what: &str) -> Result<String, Error> {
    value
        .into_string()
        .map_err(|_| Error::Usage(format!("{what} is not UTF-8")))
}

/// Carries out `command`.
fn run(command: Command) -> Result<(), Error> {
    match command {
        Command::Help => print!("{USAGE}"),
        Command::Version => println!("assistant-store {}", env!("CARGO_PKG_VERSION")),
        Command::Init { db, key } => init(&db, &key)?,
        Command::Put { db, name } => {
            let value = read_value(io::stdin().lock())?;
            open(&db)?.put(&name, &value)?;
        }
        Command::Get { db, name } => {
            let value = open(&db)?.get(&name)?;
            let mut stdout = io::stdout().lock();
            stdout
                .write_all(&value)
                .and_then(|()| stdout.flush())
                .map_err(|e| Error::io("write the value to stdout", e))?;
        }
        Command::List { db } => {
            let names = open(&db)?.list()?;
            let mut stdout = io::stdout().lock();
            names
                .iter()
                .try_for_each(|name| writeln!(stdout, "{name}"))
                .and_then(|()| stdout.flush())
                .map_err(|e| Error::io("write the list to stdout", e))?;
        }
    }
    Ok(())
}

/// `init`: a new data key from the daemon, its wrapped copy in the key
/// file, then the database keyed with it.
///
/// The key file is written first: a database whose key file is lost can
/// never be opened again, while a key file without a database (if we are
/// interrupted) is harmless, and the next `init` says so.
fn init(db: &Path, key: &str) -> Result<(), Error> {
    let name = store::db_name(db)?;
    let key_path = store::key_file_path(db);
    if db.exists() {
        return Err(Error::Exists {
            path: db.to_owned(),
        });
    }
    if key_path.exists() {
        return Err(Error::OrphanKeyFile { path: key_path });
    }
    let service = KeyService::from_env()?;
    let (data_key, wrapped) = service.generate(key, &store::context(&name))?;
    let key_file = KeyFile {
        db: name,
        key: wrapped.key,
        version: wrapped.version,
        wrapped: wrapped.wrapped,
    };
    key_file.write_new(&key_path)?;
    if let Err(error) = Store::create(db, &data_key) {
        // Undo what this run created; a database someone else created in
        // the meantime (Exists) is not ours to remove.
        if !matches!(error, Error::Exists { .. }) {
            let _ = fs::remove_file(db);
        }
        let _ = fs::remove_file(&key_path);
        return Err(error);
    }
    println!(
        "created {} (data key wrapped by key \"{}\" version {}, in {})",
        db.display(),
        key_file.key,
        key_file.version,
        key_path.display()
    );
    Ok(())
}

/// Opens the store at `db`: its key file, the data key unwrapped by the
/// daemon, the database.
fn open(db: &Path) -> Result<Store, Error> {
    let name = store::db_name(db)?;
    if !db.exists() {
        return Err(Error::NoDatabase { db: db.to_owned() });
    }
    let key_file = KeyFile::read(&store::key_file_path(db))?;
    if key_file.db != name {
        return Err(Error::Renamed {
            db: db.to_owned(),
            was: key_file.db,
        });
    }
    let service = KeyService::from_env()?;
    let data_key = service.unwrap(&key_file.key, &key_file.wrapped, &store::context(&name))?;
    Store::open(db, &data_key)
}

/// Reads the whole value from `input` into a buffer wiped on drop.
///
/// We grow the buffer by hand: a `Vec` reallocation would leave the old
/// copy of the value on the heap, unwiped.
fn read_value(mut input: impl Read) -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut value = Zeroizing::new(Vec::with_capacity(4096));
    loop {
        let len = value.len();
        if len == value.capacity() {
            if len >= MAX_VALUE {
                return Err(Error::Usage(format!(
                    "the value is larger than {} MiB",
                    MAX_VALUE >> 20
                )));
            }
            let mut bigger = Zeroizing::new(Vec::with_capacity(2 * len));
            bigger.extend_from_slice(&value);
            value = bigger;
        }
        let capacity = value.capacity();
        value.resize(capacity, 0);
        match input.read(&mut value[len..]) {
            Ok(0) => {
                value.truncate(len);
                break;
            }
            Ok(n) => value.truncate(len + n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => value.truncate(len),
            Err(e) => return Err(Error::io("read the value from stdin", e)),
        }
    }
    if value.is_empty() {
        return Err(Error::Usage(
            "no value on stdin (put reads the value from stdin, e.g. `printf %s VALUE | \
             assistant-store --db PATH put NAME`)"
                .into(),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, Error> {
        parse_args(args.iter().map(OsString::from))
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            parse(&["--db", "a.db", "init", "--key", "k"]).expect("init"),
            Command::Init {
                db: "a.db".into(),
                key: "k".into()
            }
        );
        assert_eq!(
            parse(&["put", "--db", "a.db", "--", "-n"]).expect("put"),
            Command::Put {
                db: "a.db".into(),
                name: "-n".into()
            }
        );
        assert_eq!(
            parse(&["--db", "a.db", "list"]).expect("list"),
            Command::List { db: "a.db".into() }
        );
        assert_eq!(parse(&["--help"]).expect("help"), Command::Help);
        for bad in [
            &["--db", "a.db", "put", "n", "secret value"][..],
            &["--db", "a.db", "init"],
            &["--db", "a.db", "get", "n", "--key", "k"],
            &["get", "n"],
            &["--db", "a.db"],
            &["--db", "a.db", "drop"],
            &["--db", "a.db", "get", "n", "--value", "v"],
            &["--db", "a.db", "get", ""],
        ] {
            let err = parse(bad).expect_err("refused");
            assert_eq!(err.exit_code(), error::EXIT_USAGE, "{bad:?}");
            // A refused value is never echoed.
            assert!(!err.to_string().contains("secret"), "{err}");
        }
    }

    #[test]
    fn values_grow_past_the_first_buffer() {
        let big: Vec<u8> = (0..10_000_u32).map(|i| i as u8).collect();
        assert_eq!(read_value(&big[..]).expect("read").as_slice(), &big[..]);
        assert!(matches!(read_value(&b""[..]), Err(Error::Usage(_))));
    }
}
