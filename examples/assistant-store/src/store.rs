//! The store on disk: the SQLCipher database and, beside it, the key
//! file holding its data key wrapped by the key service.
//!
//! `PATH` is the database, `PATH.key` the key file:
//!
//! ```json
//! {"format": "assistant-store-key", "v": 1, "db": "notes.db",
//!  "key": "assistant-store", "version": 1, "wrapped": "<base64>"}
//! ```
//!
//! `wrapped` is what `POST /v1/datakey/generate` returned, made with the
//! context [`context`] of `db` (the database's file name): a key file
//! copied beside another database does not unwrap for it, and a renamed
//! database is recognised before the key service is asked.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::keyservice::{DATA_KEY_LEN, DataKey};

/// The key file's `format` field.
const KEY_FILE_FORMAT: &str = "assistant-store-key";
/// The key file version we write and read.
const KEY_FILE_VERSION: u64 = 1;
/// Key files are a few hundred bytes; refuse to read anything huge.
const KEY_FILE_MAX: u64 = 64 * 1024;
/// The schema version (`PRAGMA user_version`) we create and read.
const SCHEMA_VERSION: i64 = 1;

/// The data-key context for a database named `db_name`: the key service
/// binds the wrapped key to it (AES-GCM associated data).
pub(crate) fn context(db_name: &str) -> Vec<u8> {
    format!("assistant-store:v1:{db_name}").into_bytes()
}

/// The file name of `db`, which must be UTF-8 (it is part of the context).
pub(crate) fn db_name(db: &Path) -> Result<String, Error> {
    db.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            Error::Usage(format!(
                "--db {} must end in a UTF-8 file name",
                db.display()
            ))
        })
}

/// The key file of `db`: `db` with `.key` appended.
pub(crate) fn key_file_path(db: &Path) -> PathBuf {
    let mut path = db.as_os_str().to_owned();
    path.push(".key");
    PathBuf::from(path)
}

/// The contents of a key file. Nothing in it is secret.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct KeyFile {
    /// The database file name the data key is bound to.
    pub(crate) db: String,
    /// The keyward key that wraps the data key.
    pub(crate) key: String,
    /// Its version at `init`.
    pub(crate) version: u64,
    /// The wrapped data key (base64).
    pub(crate) wrapped: String,
}

impl KeyFile {
    /// Reads and checks the key file at `path`.
    pub(crate) fn read(path: &Path) -> Result<Self, Error> {
        let bad = |problem: &str| Error::BadKeyFile {
            path: path.to_owned(),
            problem: problem.to_owned(),
        };
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NoKeyFile {
                    path: path.to_owned(),
                });
            }
            Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
        };
        let len = file
            .metadata()
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?
            .len();
        if len > KEY_FILE_MAX {
            return Err(bad("it is far too large"));
        }
        let value: Value =
            serde_json::from_reader(io::BufReader::new(file)).map_err(|_| bad("it is not JSON"))?;
        if value.get("format").and_then(Value::as_str) != Some(KEY_FILE_FORMAT) {
            return Err(bad("it is not an assistant-store key file"));
        }
        if value.get("v").and_then(Value::as_u64) != Some(KEY_FILE_VERSION) {
            return Err(bad("its version is not 1"));
        }
        let text = |field: &str| {
            value
                .get(field)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| bad(&format!("\"{field}\" is missing")))
        };
        Ok(Self {
            db: text("db")?,
            key: text("key")?,
            version: value
                .get("version")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("\"version\" is missing"))?,
            wrapped: text("wrapped")?,
        })
    }

    /// Writes the key file at `path`, mode 0600, atomically and never over
    /// an existing file: written to a temporary file, flushed to disk, then
    /// hard-linked into place (`link` fails if the name exists, where
    /// `rename` would replace it).
    pub(crate) fn write_new(&self, path: &Path) -> Result<(), Error> {
        let json = json!({
            "format": KEY_FILE_FORMAT,
            "v": KEY_FILE_VERSION,
            "db": self.db,
            "key": self.key,
            "version": self.version,
            "wrapped": self.wrapped,
        });
        let mut text = serde_json::to_vec_pretty(&json).expect("a JSON value serialises");
        text.push(b'\n');
        let dir = parent_dir(path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let what = || format!("write the key file {}", path.display());
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut file| {
                file.write_all(&text)?;
                file.sync_all()
            });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(what(), e));
        }
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::Exists {
                    path: path.to_owned(),
                });
            }
            Err(e) => return Err(Error::io(what(), e)),
        }
        // The new name is durable only once the directory is.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(what(), e))
    }
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// An open, keyed database.
#[derive(Debug)]
pub(crate) struct Store {
    conn: Connection,
    db: PathBuf,
}

impl Store {
    /// Creates the database at `db` (mode 0600; refused if the file
    /// exists) encrypted under `key`, with an empty `entries` table.
    pub(crate) fn create(db: &Path, key: &DataKey) -> Result<Self, Error> {
        // We create the file ourselves: SQLite would make it 0644 less the
        // umask, and its journal takes the database's mode.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(db)
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::Exists {
                    path: db.to_owned(),
                });
            }
            Err(e) => return Err(Error::io(format!("create {}", db.display()), e)),
        }
        let store = Self::connect(db, key)?;
        store
            .conn
            .execute_batch(
                "BEGIN;
                 CREATE TABLE entries (
                     name  TEXT PRIMARY KEY NOT NULL,
                     value BLOB NOT NULL
                 ) STRICT;
                 PRAGMA user_version = 1;
                 COMMIT;",
            )
            .map_err(|e| store.error(e))?;
        Ok(store)
    }

    /// Opens the existing database at `db` with `key`.
    ///
    /// A key that is not the database's gives [`Error::WrongKey`]:
    /// SQLCipher only notices at the first read ("file is not a database").
    pub(crate) fn open(db: &Path, key: &DataKey) -> Result<Self, Error> {
        if !db.exists() {
            return Err(Error::NoDatabase { db: db.to_owned() });
        }
        let store = Self::connect(db, key)?;
        let version: i64 = store
            .conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
            .and_then(|()| {
                store
                    .conn
                    .query_row("PRAGMA user_version", [], |r| r.get(0))
            })
            .map_err(|e| store.error(e))?;
        if version != SCHEMA_VERSION {
            return Err(Error::Schema {
                db: db.to_owned(),
                found: version,
            });
        }
        Ok(store)
    }

    /// Opens `db` (never creating it) and gives SQLCipher the raw key.
    fn connect(db: &Path, key: &DataKey) -> Result<Self, Error> {
        let conn = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| Error::Database {
            db: db.to_owned(),
            source,
        })?;
        let store = Self {
            conn,
            db: db.to_owned(),
        };
        // Memory security: from here on SQLCipher wipes (and locks) the
        // allocations SQLite frees. Then the key. Then logging off:
        // SQLCipher logs a wrong key to stderr ("hmac check failed") and we
        // report it ourselves, as Error::WrongKey; the setting must come
        // after the key, whose codec set-up installs the default logger.
        store
            .conn
            .execute_batch("PRAGMA cipher_memory_security = ON;")
            .and_then(|()| store.conn.execute_batch(&key_pragma(key)))
            .and_then(|()| store.conn.execute_batch("PRAGMA cipher_log = off;"))
            .map_err(|e| store.error(e))?;
        let cipher: Option<String> = store
            .conn
            .query_row("PRAGMA cipher_version", [], |r| r.get(0))
            .optional()
            .map_err(|e| store.error(e))?;
        if cipher.is_none_or(|v| v.is_empty()) {
            return Err(Error::NoEncryption);
        }
        // Freed pages are overwritten: a deleted value leaves no
        // ciphertext behind for a key that leaks later.
        store
            .conn
            .execute_batch("PRAGMA secure_delete = ON;")
            .map_err(|e| store.error(e))?;
        Ok(store)
    }

    /// Stores `value` under `name`, replacing any previous value.
    pub(crate) fn put(&self, name: &str, value: &[u8]) -> Result<(), Error> {
        self.conn
            .execute(
                "INSERT INTO entries (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )
            .map(drop)
            .map_err(|e| self.error(e))
    }

    /// The value stored under `name`.
    pub(crate) fn get(&self, name: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
        self.conn
            .query_row("SELECT value FROM entries WHERE name = ?1", [name], |row| {
                // One exact copy out of SQLite's buffer, wiped on drop.
                Ok(Zeroizing::new(row.get_ref(0)?.as_blob()?.to_vec()))
            })
            .optional()
            .map_err(|e| self.error(e))?
            .ok_or_else(|| Error::NoEntry {
                name: name.to_owned(),
            })
    }

    /// The entry names, sorted.
    pub(crate) fn list(&self) -> Result<Vec<String>, Error> {
        let mut statement = self
            .conn
            .prepare("SELECT name FROM entries ORDER BY name")
            .map_err(|e| self.error(e))?;
        statement
            .query_map([], |row| row.get(0))
            .and_then(Iterator::collect)
            .map_err(|e| self.error(e))
    }

    /// Our error for a SQLite error: "file is not a database" after keying
    /// means the wrong key.
    fn error(&self, source: rusqlite::Error) -> Error {
        if source.sqlite_error_code() == Some(ErrorCode::NotADatabase) {
            return Error::WrongKey {
                db: self.db.clone(),
            };
        }
        Error::Database {
            db: self.db.clone(),
            source,
        }
    }
}

/// `PRAGMA key = "x'<64 hex digits>'";`: SQLCipher's raw-key form (no
/// passphrase derivation), built in one exact allocation wiped on drop.
fn key_pragma(key: &DataKey) -> Zeroizing<String> {
    const PREFIX: &str = "PRAGMA key = \"x'";
    const SUFFIX: &str = "'\";";
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = key.expose();
    debug_assert_eq!(bytes.len(), DATA_KEY_LEN);
    let mut sql = Zeroizing::new(String::with_capacity(
        PREFIX.len() + 2 * bytes.len() + SUFFIX.len(),
    ));
    sql.push_str(PREFIX);
    for byte in bytes {
        sql.push(char::from(HEX[usize::from(byte >> 4)]));
        sql.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    sql.push_str(SUFFIX);
    sql
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyservice::tests_support::data_key;

    #[test]
    fn key_file_round_trip_and_no_clobber() {
        let dir = tempdir();
        let path = dir.join("notes.db.key");
        let file = KeyFile {
            db: "notes.db".into(),
            key: "assistant-store".into(),
            version: 3,
            wrapped: "AAAA".into(),
        };
        file.write_new(&path).expect("write");
        assert_eq!(KeyFile::read(&path).expect("read"), file);
        assert!(matches!(file.write_new(&path), Err(Error::Exists { .. })));
        let mode = fs::metadata(&path).expect("metadata");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        // Only the key file is left: no temporary file.
        assert_eq!(fs::read_dir(&dir).expect("read dir").count(), 1);
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn encrypted_round_trip_and_wrong_key() {
        let dir = tempdir();
        let db = dir.join("notes.db");
        let store = Store::create(&db, &data_key(1)).expect("create");
        store.put("dentist", b"tuesday 10:00").expect("put");
        store.put("dentist", b"wednesday 9:00").expect("replace");
        drop(store);

        let store = Store::open(&db, &data_key(1)).expect("open");
        assert_eq!(
            store.get("dentist").expect("get").as_slice(),
            b"wednesday 9:00"
        );
        assert_eq!(store.list().expect("list"), vec!["dentist".to_owned()]);
        assert!(matches!(store.get("nope"), Err(Error::NoEntry { .. })));
        drop(store);

        let raw = fs::read(&db).expect("read db");
        assert!(!raw.windows(9).any(|w| w == b"wednesday"));
        assert!(!raw.windows(7).any(|w| w == b"dentist"));
        assert!(!raw.starts_with(b"SQLite format 3"));

        assert!(matches!(
            Store::open(&db, &data_key(2)),
            Err(Error::WrongKey { .. })
        ));
        assert!(matches!(
            Store::create(&db, &data_key(1)),
            Err(Error::Exists { .. })
        ));
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn key_pragma_is_raw_hex() {
        assert_eq!(
            key_pragma(&data_key(0xab)).as_str(),
            format!("PRAGMA key = \"x'{}'\";", "ab".repeat(32))
        );
    }

    /// A fresh directory under the system temporary directory.
    fn tempdir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "assistant-store-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&dir).expect("create a temporary directory");
        dir
    }
}
