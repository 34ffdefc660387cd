//! The SQLite keystore (docs/DESIGN.md, "Keystore"; layout in docs/FORMAT.md).
//!
//! One database file, WAL mode, `synchronous=FULL`, mode 0600 in a 0700
//! directory. It holds only wrapped key material, non-secret descriptors,
//! policy, counters and the audit log. Every logical change runs in one
//! `BEGIN IMMEDIATE` transaction ([`Store::write`]): a crash leaves the old
//! state or the new one, and a second writer waits, then fails with
//! [`Error::StoreBusy`] rather than interleaving.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::backend::Enrollment;
use crate::clients::ClientInfo;
use crate::keys::{DataClass, KeyName, KeyPurpose};
use crate::{Error, Result};

/// `PRAGMA application_id`: "KWKS". Tells a keyward store from any other
/// SQLite file.
pub const APPLICATION_ID: i32 = 0x4B57_4B53;

/// Schema version this build writes. Older stores are migrated on open; a
/// newer one is refused.
pub const SCHEMA_VERSION: u32 = 3;

/// Migration `i` takes a store from schema version `i` to `i + 1`.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    // v1: the key hierarchy and the audit log.
    "CREATE TABLE meta (
         name  TEXT PRIMARY KEY,
         value ANY NOT NULL
     ) STRICT;
     CREATE TABLE protectors (
         id         INTEGER PRIMARY KEY,
         kind       TEXT NOT NULL,
         label      TEXT NOT NULL,
         enrollment TEXT NOT NULL,
         wrapped_mk BLOB NOT NULL,
         mk_epoch   INTEGER NOT NULL,
         created_at INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE keys (
         name                   TEXT PRIMARY KEY,
         purpose                TEXT NOT NULL CHECK (purpose IN ('encrypt', 'sign')),
         class                  TEXT NOT NULL CHECK (class IN ('sensitive', 'private', 'general')),
         primary_version        INTEGER NOT NULL CHECK (primary_version >= 1),
         min_decryption_version INTEGER NOT NULL CHECK (min_decryption_version >= 1),
         rotation_period        INTEGER,
         usage_limit            INTEGER NOT NULL,
         created_at             INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE key_versions (
         key_name      TEXT NOT NULL REFERENCES keys(name) ON DELETE CASCADE,
         version       INTEGER NOT NULL CHECK (version >= 1),
         wrapped       BLOB NOT NULL CHECK (length(wrapped) = 40),
         public_key    BLOB,
         created_at    INTEGER NOT NULL,
         uses_reserved INTEGER NOT NULL DEFAULT 0,
         PRIMARY KEY (key_name, version)
     ) STRICT;
     CREATE TABLE audit (
         seq    INTEGER PRIMARY KEY,
         record TEXT NOT NULL,
         hash   BLOB NOT NULL
     ) STRICT;",
    // v2: signed messages — a per-key signing counter and the highest counter
    // accepted per signer (replay protection).
    "ALTER TABLE keys ADD COLUMN sign_counter INTEGER NOT NULL DEFAULT 0;
     CREATE TABLE replay (
         key_name    TEXT NOT NULL,
         signer      BLOB NOT NULL,
         max_counter INTEGER NOT NULL,
         PRIMARY KEY (key_name, signer)
     ) STRICT;",
    // v3: daemon clients — a name, the SHA-256 of its token and its grant
    // (JSON arrays of operations and key names).
    "CREATE TABLE clients (
         name         TEXT PRIMARY KEY,
         token_hash   BLOB NOT NULL UNIQUE CHECK (length(token_hash) = 32),
         allow        TEXT NOT NULL,
         keys         TEXT NOT NULL,
         created_at   INTEGER NOT NULL,
         last_used_at INTEGER,
         revoked_at   INTEGER
     ) STRICT;",
];

/// How long a writer waits for another before giving up with `StoreBusy`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// An open keystore.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    store_id: [u8; 16],
}

/// A stored protector row.
#[derive(Debug, Clone)]
pub struct ProtectorRow {
    /// Id.
    pub id: u32,
    /// User label.
    pub label: String,
    /// Descriptor.
    pub enrollment: Enrollment,
    /// The master key wrapped by the backend.
    pub wrapped_mk: Vec<u8>,
    /// Epoch of the wrapped master key.
    pub mk_epoch: u32,
    /// Unix time of enrollment.
    pub created_at: i64,
}

/// A stored key row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// Name.
    pub name: KeyName,
    /// Purpose.
    pub purpose: KeyPurpose,
    /// Class (never `secret`: those are never stored).
    pub class: DataClass,
    /// Primary version.
    pub primary_version: u32,
    /// Minimum decryption version.
    pub min_decryption_version: u32,
    /// Rotation period, seconds.
    pub rotation_period: Option<u64>,
    /// Automatic-rotation threshold.
    pub usage_limit: u64,
    /// Unix time of creation.
    pub created_at: i64,
    /// Signatures made so far.
    pub sign_counter: u64,
}

/// A stored key-version row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    /// Version number.
    pub version: u32,
    /// The 40-byte RFC 3394 wrap.
    pub wrapped: Vec<u8>,
    /// Ed25519 public key of signing keys.
    pub public_key: Option<Vec<u8>>,
    /// Unix time of creation.
    pub created_at: i64,
    /// Encryptions reserved (never below the real count).
    pub uses_reserved: u64,
}

impl Store {
    /// Creates a new, empty keystore with a fresh random id.
    ///
    /// # Errors
    /// `StoreExists`, `Io`, `Database`.
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        }
        // Create the file ourselves so that it is 0600 from the first byte;
        // SQLite gives its -wal and -shm files the same mode.
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(Error::StoreExists {
                    path: path.to_owned(),
                });
            }
            Err(e) => return Err(Error::io(format!("cannot create {}", path.display()), e)),
        }
        let result = (|| {
            let mut conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            configure(&conn)?;
            let mut store_id = [0u8; 16];
            crate::secret::random_bytes(&mut store_id)?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.pragma_update(None, "application_id", APPLICATION_ID)?;
            migrate(&tx, 0)?;
            tx.execute(
                "INSERT INTO meta (name, value) VALUES ('store_id', ?1), ('mk_epoch', 0),
                 ('created_at', ?2), ('next_protector_id', 1)",
                params![&store_id[..], now()],
            )?;
            tx.commit()?;
            Ok(Self {
                conn,
                path: path.to_owned(),
                store_id,
            })
        })();
        if result.is_err() {
            remove_store_files(path);
        }
        result
    }

    /// Opens an existing keystore, migrating an older schema.
    ///
    /// # Errors
    /// `StoreNotFound`, `UnsafePermissions`, `NotAKeystore`, `StoreCorrupt`,
    /// `StoreTooNew`.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::StoreNotFound {
                    path: path.to_owned(),
                });
            }
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        check_permissions(path, &meta)?;
        let corrupt = |detail: String| Error::StoreCorrupt {
            path: path.to_owned(),
            detail,
        };
        check_file_shape(path, meta.len())?;
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(path, e))?;
        let app_id: i32 = conn
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .map_err(|e| classify(path, e))?;
        if app_id != APPLICATION_ID {
            return Err(Error::NotAKeystore {
                path: path.to_owned(),
            });
        }
        configure(&conn).map_err(|e| classify(path, e))?;
        let check: String = conn
            .pragma_query_value(None, "quick_check", |r| r.get(0))
            .map_err(|e| classify(path, e))?;
        if check != "ok" {
            return Err(corrupt(format!("integrity check: {check}")));
        }
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| classify(path, e))?;
        if version > SCHEMA_VERSION {
            return Err(Error::StoreTooNew {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version < SCHEMA_VERSION {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            migrate(&tx, version)?;
            tx.commit()?;
            tracing::info!(
                from = version,
                to = SCHEMA_VERSION,
                "migrated keystore schema"
            );
        }
        let store_id: Vec<u8> = conn
            .query_row("SELECT value FROM meta WHERE name = 'store_id'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| classify(path, e))?
            .ok_or_else(|| corrupt("no store id".into()))?;
        let store_id = store_id
            .try_into()
            .map_err(|_| corrupt("store id is not 16 bytes".into()))?;
        Ok(Self {
            conn,
            path: path.to_owned(),
            store_id,
        })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The store's random id, fixed at creation.
    pub fn store_id(&self) -> &[u8; 16] {
        &self.store_id
    }

    /// Read access.
    pub fn db(&self) -> Db<'_> {
        Db(&self.conn)
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committing if it
    /// returns `Ok`. Nothing of a failed `f` reaches the file.
    ///
    /// # Errors
    /// `StoreBusy` if another writer holds the store past the timeout;
    /// whatever `f` returns.
    pub fn write<T>(&mut self, f: impl FnOnce(&Db<'_>) -> Result<T>) -> Result<T> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(busy)?;
        let out = f(&Db(&tx))?;
        tx.commit().map_err(busy)?;
        Ok(out)
    }

    /// As [`Store::write`], but the commit does not wait for `fsync`
    /// (`synchronous=NORMAL` in WAL mode): it survives a crash of this
    /// process, and the next ordinary [`Store::write`] makes it durable
    /// against power loss too. The daemon records uses of keys this way;
    /// every change of key state goes through [`Store::write`].
    ///
    /// # Errors
    /// As [`Store::write`].
    pub fn write_relaxed<T>(&mut self, f: impl FnOnce(&Db<'_>) -> Result<T>) -> Result<T> {
        self.set_synchronous("NORMAL")?;
        let out = self.write(f);
        let restored = self.set_synchronous("FULL");
        let out = out?;
        restored?;
        Ok(out)
    }

    fn set_synchronous(&self, level: &'static str) -> Result<()> {
        let sql = match level {
            "NORMAL" => "PRAGMA synchronous = NORMAL",
            _ => "PRAGMA synchronous = FULL",
        };
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    }

    /// Moves WAL checkpoints (and their `fsync`s) off this connection: a
    /// background thread with its own connection checkpoints every
    /// `interval` without blocking readers or writers (`PASSIVE`), and this
    /// connection checkpoints by itself only if the log grows past 10,000
    /// pages (the thread fell behind). The thread stops when the returned
    /// handle is dropped.
    ///
    /// # Errors
    /// `Database` if the second connection cannot be opened.
    pub fn start_checkpointer(&self, interval: Duration) -> Result<Checkpointer> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        self.conn
            .pragma_update(None, "wal_autocheckpoint", 10_000)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("keyward-checkpoint".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(interval)
                {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "background WAL checkpoint failed");
                    }
                }
            })
            .map_err(|e| Error::io("cannot start the checkpoint thread", e))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// The background checkpoint thread of [`Store::start_checkpointer`];
/// stopped (after one last checkpoint pass at most) when dropped.
#[derive(Debug)]
pub struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Typed queries on a connection or an open transaction.
#[derive(Debug, Clone, Copy)]
pub struct Db<'a>(&'a Connection);

impl Db<'_> {
    /// The raw connection (for the audit module).
    pub(crate) fn conn(&self) -> &Connection {
        self.0
    }

    /// Reads an integer from `meta`.
    ///
    /// # Errors
    /// `Database`; `StoreCorrupt`-like database error if missing.
    pub fn meta_int(&self, name: &str) -> Result<i64> {
        Ok(self
            .0
            .query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
                r.get(0)
            })?)
    }

    /// Reads an optional blob from `meta`.
    ///
    /// # Errors
    /// `Database`.
    pub fn meta_blob(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .0
            .query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Sets a `meta` value.
    ///
    /// # Errors
    /// `Database`.
    pub fn set_meta(&self, name: &str, value: &dyn rusqlite::ToSql) -> Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO meta (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![name, value])?;
        Ok(())
    }

    /// The master-key epoch (0 before the first protector exists).
    ///
    /// # Errors
    /// `Database`.
    pub fn mk_epoch(&self) -> Result<u32> {
        let v = self.meta_int("mk_epoch")?;
        u32::try_from(v).map_err(|_| Error::Malformed {
            what: "master-key epoch out of range",
        })
    }

    /// Allocates a protector id (never reused).
    ///
    /// # Errors
    /// `Database`.
    pub fn next_protector_id(&self) -> Result<u32> {
        let id = self.meta_int("next_protector_id")?;
        self.set_meta("next_protector_id", &(id + 1))?;
        u32::try_from(id).map_err(|_| Error::Malformed {
            what: "protector id out of range",
        })
    }

    /// Inserts a protector.
    ///
    /// # Errors
    /// `Database`.
    pub fn insert_protector(&self, row: &ProtectorRow) -> Result<()> {
        let enrollment = serde_json::to_string(&row.enrollment).map_err(|_| Error::Malformed {
            what: "enrollment does not serialise",
        })?;
        self.0.prepare_cached("INSERT INTO protectors (id, kind, label, enrollment, wrapped_mk, mk_epoch, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?.execute(params![
                row.id,
                row.enrollment.kind.as_str(),
                row.label,
                enrollment,
                row.wrapped_mk,
                row.mk_epoch,
                row.created_at
            ],
        )?;
        Ok(())
    }

    /// Replaces a protector's wrapped master key.
    ///
    /// # Errors
    /// `Database`.
    pub fn update_protector_wrap(&self, id: u32, wrapped_mk: &[u8], mk_epoch: u32) -> Result<()> {
        self.0
            .prepare_cached("UPDATE protectors SET wrapped_mk = ?2, mk_epoch = ?3 WHERE id = ?1")?
            .execute(params![id, wrapped_mk, mk_epoch])?;
        Ok(())
    }

    /// Deletes a protector; returns whether it existed.
    ///
    /// # Errors
    /// `Database`.
    pub fn delete_protector(&self, id: u32) -> Result<bool> {
        Ok(self
            .0
            .execute("DELETE FROM protectors WHERE id = ?1", [id])?
            == 1)
    }

    /// All protectors, by id.
    ///
    /// # Errors
    /// `Database`, `Malformed` for an unreadable descriptor.
    pub fn protectors(&self) -> Result<Vec<ProtectorRow>> {
        let mut stmt = self.0.prepare_cached(
            "SELECT id, label, enrollment, wrapped_mk, mk_epoch, created_at
             FROM protectors ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, label, enrollment, wrapped_mk, mk_epoch, created_at) = row?;
            let enrollment = serde_json::from_str(&enrollment).map_err(|_| Error::Malformed {
                what: "protector descriptor is not valid",
            })?;
            out.push(ProtectorRow {
                id,
                label,
                enrollment,
                wrapped_mk,
                mk_epoch,
                created_at,
            });
        }
        Ok(out)
    }

    /// Inserts a key row.
    ///
    /// # Errors
    /// `KeyExists`, `Database`.
    pub fn insert_key(&self, key: &KeyRow) -> Result<()> {
        let n = self
            .0
            .prepare_cached(
                "INSERT INTO keys (name, purpose, class, primary_version, min_decryption_version,
                               rotation_period, usage_limit, created_at, sign_counter)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (name) DO NOTHING",
            )?
            .execute(params![
                key.name.as_str(),
                key.purpose.as_str(),
                key.class.as_str(),
                key.primary_version,
                key.min_decryption_version,
                key.rotation_period,
                key.usage_limit,
                key.created_at,
                key.sign_counter
            ])?;
        if n == 0 {
            return Err(Error::KeyExists {
                name: key.name.to_string(),
            });
        }
        Ok(())
    }

    /// A key row.
    ///
    /// # Errors
    /// `KeyNotFound`, `Database`.
    pub fn key(&self, name: &KeyName) -> Result<KeyRow> {
        self.0
            .prepare_cached(
                "SELECT name, purpose, class, primary_version, min_decryption_version,
                        rotation_period, usage_limit, created_at, sign_counter
                 FROM keys WHERE name = ?1",
            )?
            .query_row([name.as_str()], key_from_row)
            .optional()?
            .ok_or_else(|| Error::KeyNotFound {
                name: name.to_string(),
            })?
    }

    /// All key rows, by name.
    ///
    /// # Errors
    /// `Database`.
    pub fn keys(&self) -> Result<Vec<KeyRow>> {
        let mut stmt = self.0.prepare_cached(
            "SELECT name, purpose, class, primary_version, min_decryption_version,
                    rotation_period, usage_limit, created_at, sign_counter
             FROM keys ORDER BY name",
        )?;
        let rows = stmt.query_map([], key_from_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row??);
        }
        Ok(out)
    }

    /// Updates the primary and minimum decryption versions.
    ///
    /// # Errors
    /// `Database`.
    pub fn set_versions(&self, name: &KeyName, primary: u32, min_decryption: u32) -> Result<()> {
        self.0
            .prepare_cached(
                "UPDATE keys SET primary_version = ?2, min_decryption_version = ?3 WHERE name = ?1",
            )?
            .execute(params![name.as_str(), primary, min_decryption])?;
        Ok(())
    }

    /// Increments and returns the key's signing counter.
    ///
    /// # Errors
    /// `Database`.
    pub fn next_sign_counter(&self, name: &KeyName) -> Result<u64> {
        Ok(self
            .0
            .prepare_cached(
                "UPDATE keys SET sign_counter = sign_counter + 1 WHERE name = ?1
             RETURNING sign_counter",
            )?
            .query_row([name.as_str()], |r| r.get(0))?)
    }

    /// Inserts a key version.
    ///
    /// # Errors
    /// `Database`.
    pub fn insert_version(&self, name: &KeyName, v: &VersionRow) -> Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO key_versions (key_name, version, wrapped, public_key, created_at,
                                       uses_reserved)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                name.as_str(),
                v.version,
                v.wrapped,
                v.public_key,
                v.created_at,
                v.uses_reserved
            ])?;
        Ok(())
    }

    /// One version of a key.
    ///
    /// # Errors
    /// `VersionNotFound`, `Database`.
    pub fn version(&self, name: &KeyName, version: u32) -> Result<VersionRow> {
        self.0
            .prepare_cached(
                "SELECT version, wrapped, public_key, created_at, uses_reserved
                 FROM key_versions WHERE key_name = ?1 AND version = ?2",
            )?
            .query_row(params![name.as_str(), version], version_from_row)
            .optional()?
            .ok_or_else(|| Error::VersionNotFound {
                name: name.to_string(),
                version,
            })
    }

    /// All versions of a key, oldest first.
    ///
    /// # Errors
    /// `Database`.
    pub fn versions(&self, name: &KeyName) -> Result<Vec<VersionRow>> {
        let mut stmt = self.0.prepare_cached(
            "SELECT version, wrapped, public_key, created_at, uses_reserved
             FROM key_versions WHERE key_name = ?1 ORDER BY version",
        )?;
        let rows = stmt.query_map([name.as_str()], version_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Every version of every key: (name, purpose, class, version row).
    ///
    /// # Errors
    /// `Database`.
    pub fn all_versions(&self) -> Result<Vec<(KeyRow, VersionRow)>> {
        let keys = self.keys()?;
        let mut out = Vec::new();
        for key in keys {
            for v in self.versions(&key.name)? {
                out.push((key.clone(), v));
            }
        }
        Ok(out)
    }

    /// Replaces a version's wrapped key (master-key rotation).
    ///
    /// # Errors
    /// `Database`.
    pub fn update_version_wrap(&self, name: &KeyName, version: u32, wrapped: &[u8]) -> Result<()> {
        self.0
            .prepare_cached(
                "UPDATE key_versions SET wrapped = ?3 WHERE key_name = ?1 AND version = ?2",
            )?
            .execute(params![name.as_str(), version, wrapped])?;
        Ok(())
    }

    /// Raises a version's reserved use count to `reserved`.
    ///
    /// # Errors
    /// `Database`.
    pub fn set_uses_reserved(&self, name: &KeyName, version: u32, reserved: u64) -> Result<()> {
        self.0
            .prepare_cached(
                "UPDATE key_versions SET uses_reserved = max(uses_reserved, ?3)
             WHERE key_name = ?1 AND version = ?2",
            )?
            .execute(params![name.as_str(), version, reserved])?;
        Ok(())
    }

    /// The highest counter accepted from `signer` for `key`.
    ///
    /// # Errors
    /// `Database`.
    pub fn replay_counter(&self, key: &KeyName, signer: &[u8]) -> Result<Option<u64>> {
        Ok(self
            .0
            .query_row(
                "SELECT max_counter FROM replay WHERE key_name = ?1 AND signer = ?2",
                params![key.as_str(), signer],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Records the highest counter accepted from `signer` for `key`.
    ///
    /// # Errors
    /// `Database`.
    pub fn set_replay_counter(&self, key: &KeyName, signer: &[u8], counter: u64) -> Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO replay (key_name, signer, max_counter) VALUES (?1, ?2, ?3)
             ON CONFLICT (key_name, signer) DO UPDATE SET max_counter = excluded.max_counter",
            )?
            .execute(params![key.as_str(), signer, counter])?;
        Ok(())
    }
}

/// Client rows (docs/API.md; the grant is checked in `clients`).
impl Db<'_> {
    /// Inserts a client, replacing a revoked one of the same name.
    ///
    /// # Errors
    /// `ClientExists` if an active client has the name; `Database`.
    pub fn insert_client(&self, info: &ClientInfo, token_hash: &[u8; 32]) -> Result<()> {
        if self
            .client(&info.name)?
            .is_some_and(|c| c.revoked_at.is_none())
        {
            return Err(Error::ClientExists {
                name: info.name.clone(),
            });
        }
        self.0
            .prepare_cached("DELETE FROM clients WHERE name = ?1")?
            .execute(params![info.name])?;
        self.0
            .prepare_cached(
                "INSERT INTO clients (name, token_hash, allow, keys, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                info.name,
                &token_hash[..],
                serde_json::to_string(&info.allow).map_err(|e| json_err(&e))?,
                serde_json::to_string(&info.keys).map_err(|e| json_err(&e))?,
                info.created_at
            ])?;
        Ok(())
    }

    /// One client by name.
    ///
    /// # Errors
    /// `Database`, `StoreCorrupt`-like errors for an unreadable grant.
    pub fn client(&self, name: &str) -> Result<Option<ClientInfo>> {
        self.0
            .prepare_cached(&format!("{CLIENT_COLUMNS} WHERE name = ?1"))?
            .query_row(params![name], client_from_row)
            .optional()?
            .transpose()
    }

    /// The active client whose token hashes to `hash`.
    ///
    /// # Errors
    /// `Database`.
    pub fn client_by_token(&self, hash: &[u8; 32]) -> Result<Option<ClientInfo>> {
        self.0
            .prepare_cached(&format!(
                "{CLIENT_COLUMNS} WHERE token_hash = ?1 AND revoked_at IS NULL"
            ))?
            .query_row(params![&hash[..]], client_from_row)
            .optional()?
            .transpose()
    }

    /// Every client, revoked ones included, by name.
    ///
    /// # Errors
    /// `Database`.
    pub fn clients(&self) -> Result<Vec<ClientInfo>> {
        let mut stmt = self
            .0
            .prepare_cached(&format!("{CLIENT_COLUMNS} ORDER BY name"))?;
        let rows = stmt.query_map([], client_from_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row??);
        }
        Ok(out)
    }

    /// Revokes one active client (`name`) or all of them (`None`); returns
    /// how many were revoked.
    ///
    /// # Errors
    /// `Database`.
    pub fn revoke_clients(&self, name: Option<&str>, at: i64) -> Result<usize> {
        Ok(match name {
            Some(name) => self
                .0
                .prepare_cached(
                    "UPDATE clients SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                )?
                .execute(params![name, at])?,
            None => self
                .0
                .prepare_cached("UPDATE clients SET revoked_at = ?1 WHERE revoked_at IS NULL")?
                .execute(params![at])?,
        })
    }

    /// Records that a client was used at `at`.
    ///
    /// # Errors
    /// `Database`.
    pub fn touch_client(&self, name: &str, at: i64) -> Result<()> {
        self.0
            .prepare_cached("UPDATE clients SET last_used_at = ?2 WHERE name = ?1")?
            .execute(params![name, at])?;
        Ok(())
    }
}

const CLIENT_COLUMNS: &str =
    "SELECT name, allow, keys, created_at, last_used_at, revoked_at FROM clients";

fn json_err(e: &serde_json::Error) -> Error {
    Error::InvalidArgument {
        what: format!("cannot encode a client grant: {e}"),
    }
}

fn client_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ClientInfo>> {
    let name: String = r.get(0)?;
    let allow: String = r.get(1)?;
    let keys: String = r.get(2)?;
    let (created_at, last_used_at, revoked_at) = (r.get(3)?, r.get(4)?, r.get(5)?);
    let parse = || -> std::result::Result<ClientInfo, serde_json::Error> {
        Ok(ClientInfo {
            allow: serde_json::from_str(&allow)?,
            keys: serde_json::from_str(&keys)?,
            name: name.clone(),
            created_at,
            last_used_at,
            revoked_at,
        })
    };
    Ok(parse().map_err(|e| Error::Malformed {
        what: if e.is_data() {
            "a client grant in the store names an unknown operation"
        } else {
            "a client grant in the store is not valid JSON"
        },
    }))
}

fn key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<KeyRow>> {
    let name: String = r.get(0)?;
    let purpose: String = r.get(1)?;
    let class: String = r.get(2)?;
    let row = (|| {
        Ok(KeyRow {
            name: KeyName::new(&name)?,
            purpose: purpose.parse()?,
            class: class.parse()?,
            primary_version: r.get(3)?,
            min_decryption_version: r.get(4)?,
            rotation_period: r.get(5)?,
            usage_limit: r.get(6)?,
            created_at: r.get(7)?,
            sign_counter: r.get(8)?,
        })
    })();
    Ok(row)
}

fn version_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRow> {
    Ok(VersionRow {
        version: r.get(0)?,
        wrapped: r.get(1)?,
        public_key: r.get(2)?,
        created_at: r.get(3)?,
        uses_reserved: r.get(4)?,
    })
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    Ok(())
}

fn migrate(conn: &Connection, from: u32) -> Result<()> {
    migrate_to(conn, from, SCHEMA_VERSION)
}

/// Applies migrations `from..to` (tests build old stores with it).
pub(crate) fn migrate_to(conn: &Connection, from: u32, to: u32) -> Result<()> {
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .take(to as usize)
        .skip(from as usize)
    {
        conn.execute_batch(sql)?;
        conn.pragma_update(None, "user_version", i + 1)?;
    }
    Ok(())
}

/// Refuses a symlink, a file owned by someone else, or one that group or
/// others can read or write: the store holds wrapped keys and the audit log.
fn check_permissions(path: &Path, meta: &fs::Metadata) -> Result<()> {
    let unsafe_perm = |detail: String| Error::UnsafePermissions {
        path: path.to_owned(),
        detail,
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_perm("the keystore path is a symbolic link".into()));
    }
    if !meta.is_file() {
        return Err(unsafe_perm("not a regular file".into()));
    }
    let uid = rustix::process::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(unsafe_perm(format!(
            "owned by uid {}, not by you (uid {uid})",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(unsafe_perm(format!(
            "mode {mode:04o} lets other users in; run chmod 600 {}",
            path.display()
        )));
    }
    Ok(())
}

/// Checks what SQLite does not: the file starts with the SQLite magic and is
/// a whole number of pages long. SQLite reads a missing tail as zeros, so a
/// file cut short by a few bytes would otherwise open with damaged records.
fn check_file_shape(path: &Path, len: u64) -> Result<()> {
    use std::io::Read;
    let mut header = [0u8; 100];
    let read = fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map(|()| true)
        .or_else(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                Ok(false)
            } else {
                Err(e)
            }
        })
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    if !read || &header[..16] != b"SQLite format 3\0" {
        return Err(Error::NotAKeystore {
            path: path.to_owned(),
        });
    }
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        n => u64::from(n),
    };
    if page_size < 512 || !page_size.is_power_of_two() || len % page_size != 0 {
        return Err(Error::StoreCorrupt {
            path: path.to_owned(),
            detail: format!(
                "the file is {len} bytes, not a whole number of {page_size}-byte pages \
                 (truncated or damaged)"
            ),
        });
    }
    Ok(())
}

/// Maps SQLite's view of a bad file to our errors.
fn classify(path: &Path, e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => Error::NotAKeystore {
            path: path.to_owned(),
        },
        Some(ErrorCode::DatabaseCorrupt) => Error::StoreCorrupt {
            path: path.to_owned(),
            detail: "SQLite reports a malformed database image".into(),
        },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::StoreBusy,
        _ => Error::Database(e),
    }
}

fn busy(e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::StoreBusy,
        _ => Error::Database(e),
    }
}

fn remove_store_files(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = fs::remove_file(PathBuf::from(p));
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rusqlite::Connection;

    use super::*;
    use crate::keys::KeyName;

    #[test]
    fn store_refuses_foreign_corrupt_newer_and_unsafe_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| dir.path().join(n);
        let write = |path: &Path, bytes: &[u8]| {
            fs::write(path, bytes).expect("write");
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod");
        };

        assert!(matches!(
            Store::open(&p("missing")),
            Err(Error::StoreNotFound { .. })
        ));
        write(&p("empty"), b"");
        assert!(matches!(
            Store::open(&p("empty")),
            Err(Error::NotAKeystore { .. })
        ));
        write(&p("zeros"), &[0u8; 8192]);
        assert!(matches!(
            Store::open(&p("zeros")),
            Err(Error::NotAKeystore { .. })
        ));
        write(&p("garbage"), &[0x5au8; 8192]);
        assert!(matches!(
            Store::open(&p("garbage")),
            Err(Error::NotAKeystore { .. })
        ));

        let foreign = p("foreign.db");
        Connection::open(&foreign)
            .expect("create")
            .execute_batch("CREATE TABLE t(x)")
            .expect("t");
        fs::set_permissions(&foreign, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(matches!(
            Store::open(&foreign),
            Err(Error::NotAKeystore { .. })
        ));

        let newer = p("newer.db");
        drop(Store::create(&newer).expect("create"));
        raw_pragma(&newer, "user_version", SCHEMA_VERSION_PLUS_ONE);
        assert!(matches!(
            Store::open(&newer),
            Err(Error::StoreTooNew {
                found: SCHEMA_VERSION_PLUS_ONE,
                supported: SCHEMA_VERSION
            })
        ));

        let good = p("good.db");
        drop(Store::create(&good).expect("create"));
        fs::set_permissions(&good, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            Store::open(&good),
            Err(Error::UnsafePermissions { .. })
        ));
        fs::set_permissions(&good, fs::Permissions::from_mode(0o600)).expect("chmod");
        Store::open(&good).expect("opens again at 0600");
        let link = p("link.db");
        std::os::unix::fs::symlink(&good, &link).expect("symlink");
        assert!(matches!(
            Store::open(&link),
            Err(Error::UnsafePermissions { .. })
        ));
    }

    const SCHEMA_VERSION_PLUS_ONE: u32 = SCHEMA_VERSION + 1;

    fn raw_pragma(path: &Path, pragma: &str, value: u32) {
        Connection::open(path)
            .expect("open")
            .pragma_update(None, pragma, value)
            .expect("pragma");
    }

    #[test]
    fn migrates_a_version_1_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v1.db");
        {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .expect("create");
            let conn = Connection::open(&path).expect("open");
            conn.pragma_update(None, "application_id", APPLICATION_ID)
                .expect("app id");
            migrate_to(&conn, 0, 1).expect("v1 schema");
            conn.execute(
                "INSERT INTO meta (name, value) VALUES ('store_id', ?1), ('mk_epoch', 1),
                 ('created_at', 0), ('next_protector_id', 1)",
                [&[9u8; 16][..]],
            )
            .expect("meta");
            conn.execute(
                "INSERT INTO keys VALUES ('old', 'sign', 'general', 1, 1, NULL, 100, 0)",
                [],
            )
            .expect("key");
        }
        let store = Store::open(&path).expect("migrates");
        assert_eq!(store.store_id(), &[9u8; 16]);
        let key = store
            .db()
            .key(&KeyName::new("old").expect("valid name"))
            .expect("key survives");
        assert_eq!(key.sign_counter, 0, "new column has its default");
        assert_eq!(
            store
                .db()
                .replay_counter(&KeyName::new("old").expect("valid name"), b"x")
                .expect("replay table"),
            None
        );
        let v: u32 = Connection::open(&path)
            .expect("open")
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(v, SCHEMA_VERSION);
    }
}
