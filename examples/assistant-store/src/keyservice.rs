//! The key service (`keyward serve`, docs/API.md) as the assistant uses
//! it: where its socket is, the client token, and the two data-key calls.
//!
//! The token and the data keys are secrets: they live in [`Zeroizing`]
//! buffers, have redacting `Debug`s and never reach an error message.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::error::{EXIT_OTHER, Error, TokenSource};
use crate::http;

/// Length of a data key: AES-256, the raw key SQLCipher takes.
pub(crate) const DATA_KEY_LEN: usize = 32;

/// How long we wait for the daemon to read our request or answer it. A
/// data-key call takes microseconds when the daemon is unlocked; this is
/// only there so a wedged daemon cannot hang the assistant for ever.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A 256-bit data key, in a buffer wiped on drop. No `Clone`, no
/// `PartialEq`, a redacting `Debug`.
pub(crate) struct DataKey(Zeroizing<Vec<u8>>);

impl DataKey {
    /// The key bytes ([`DATA_KEY_LEN`] of them).
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

/// What `datakey/generate` returns besides the key: the same key
/// encrypted under `key` (not secret; it is what the key file keeps).
#[derive(Debug)]
pub(crate) struct Wrapped {
    /// The keyward key that wrapped it.
    pub(crate) key: String,
    /// That key's version.
    pub(crate) version: u64,
    /// The wrapped data key, base64 as the daemon sent it.
    pub(crate) wrapped: String,
}

/// A client token (`kwt_…`) and where it came from.
struct Token {
    secret: Zeroizing<String>,
    source: TokenSource,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("secret", &"[redacted]")
            .field("source", &self.source)
            .finish()
    }
}

/// The daemon at a socket, called with one client token.
#[derive(Debug)]
pub(crate) struct KeyService {
    socket: PathBuf,
    token: Token,
    uid: u32,
}

impl KeyService {
    /// The socket from `KEYWARD_SOCKET` (else the default of docs/API.md)
    /// and the token from `KEYWARD_CLIENT_TOKEN_FILE` (else
    /// `KEYWARD_CLIENT_TOKEN`). Nothing is sent yet.
    pub(crate) fn from_env() -> Result<Self, Error> {
        let uid = own_uid()?;
        Ok(Self {
            socket: socket_path(uid),
            token: token_from_env()?,
            uid,
        })
    }

    /// `POST /v1/datakey/generate`: a fresh data key and its wrapped copy
    /// under `key`, bound to `context`.
    pub(crate) fn generate(&self, key: &str, context: &[u8]) -> Result<(DataKey, Wrapped), Error> {
        let request = json!({ "key": key, "context": STANDARD.encode(context) });
        let response = self.call("/v1/datakey/generate", &request, key)?;
        let mut answer = parse(response.body())?;
        let data_key = take_data_key(&mut answer)?;
        let wrapped = Wrapped {
            key: string_field(&answer, "key")?,
            version: answer
                .get("version")
                .and_then(Value::as_u64)
                .ok_or_else(|| Error::Protocol("no key version in the datakey answer".into()))?,
            wrapped: string_field(&answer, "wrapped")?,
        };
        Ok((data_key, wrapped))
    }

    /// `POST /v1/datakey/unwrap`: the data key inside `wrapped` (made by
    /// [`KeyService::generate`] under `key` with the same `context`).
    pub(crate) fn unwrap(
        &self,
        key: &str,
        wrapped: &str,
        context: &[u8],
    ) -> Result<DataKey, Error> {
        let request = json!({ "wrapped": wrapped, "context": STANDARD.encode(context) });
        let response = self.call("/v1/datakey/unwrap", &request, key)?;
        take_data_key(&mut parse(response.body())?)
    }

    /// Sends one request on a new connection; a non-200 answer becomes
    /// the matching [`Error`]. `key` names the key in a `forbidden` error.
    fn call(&self, path: &str, request: &Value, key: &str) -> Result<http::Response, Error> {
        let body = serde_json::to_vec(request).expect("a JSON value serialises");
        let mut stream = self.connect()?;
        let response = http::post(&mut stream, path, &self.token.secret, &body).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                Error::Protocol(e.to_string())
            } else {
                self.connection_error(e)
            }
        })?;
        if response.status == 200 {
            return Ok(response);
        }
        Err(self.api_error(response.status, response.body(), key))
    }

    /// Connects, after checking that the socket is ours: the token must
    /// not go to a socket another user could have put there.
    fn connect(&self) -> Result<UnixStream, Error> {
        check_socket(&self.socket, self.uid)?;
        let stream = UnixStream::connect(&self.socket).map_err(|e| match e.kind() {
            // A socket file with nobody behind it: a daemon that was killed.
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => Error::NotRunning {
                socket: self.socket.clone(),
            },
            _ => self.connection_error(e),
        })?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(|e| self.connection_error(e))?;
        Ok(stream)
    }

    fn connection_error(&self, source: io::Error) -> Error {
        let source = if matches!(
            source.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {} s", IO_TIMEOUT.as_secs()),
            )
        } else {
            source
        };
        Error::Connection {
            socket: self.socket.clone(),
            source,
        }
    }

    /// The error a non-200 answer stands for (docs/API.md, Errors).
    fn api_error(&self, status: u16, body: &[u8], key: &str) -> Error {
        let Some(error) = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|mut v| v.get_mut("error").map(Value::take))
        else {
            return Error::Protocol(format!("HTTP status {status} without an error object"));
        };
        let text = |field: &str| error.get(field).and_then(Value::as_str).map(str::to_owned);
        let code = text("code").unwrap_or_else(|| format!("http-{status}"));
        let message = text("message").unwrap_or_else(|| format!("HTTP status {status}"));
        match code.as_str() {
            "locked" => Error::Locked,
            "unauthorized" => Error::Unauthorized(self.token.source.clone()),
            "forbidden" => Error::Forbidden {
                key: key.to_owned(),
                message,
            },
            _ => Error::Daemon {
                code,
                message,
                hint: text("hint"),
                exit: error
                    .get("exit")
                    .and_then(Value::as_u64)
                    .and_then(|e| u8::try_from(e).ok())
                    .filter(|e| (1..=125).contains(e))
                    .unwrap_or(EXIT_OTHER),
            },
        }
    }
}

/// Parses an answer body as JSON.
fn parse(body: &[u8]) -> Result<Value, Error> {
    serde_json::from_slice(body)
        .map_err(|e| Error::Protocol(format!("the answer is not JSON ({e})")))
}

/// A string field of an answer.
fn string_field(answer: &Value, field: &str) -> Result<String, Error> {
    answer
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| Error::Protocol(format!("no \"{field}\" in the datakey answer")))
}

/// Moves the `plaintext` field out of a datakey answer (leaving `null`)
/// and decodes it. The base64 text and the bytes are wiped on drop; the
/// `Value` never keeps a copy.
fn take_data_key(answer: &mut Value) -> Result<DataKey, Error> {
    let Some(Value::String(text)) = answer.get_mut("plaintext").map(Value::take) else {
        return Err(Error::Protocol(
            "no \"plaintext\" in the datakey answer".into(),
        ));
    };
    let text = Zeroizing::new(text);
    // Room for the decoder's estimate, so that nothing reallocates.
    let mut bytes = Zeroizing::new(vec![0_u8; DATA_KEY_LEN + 16]);
    let len = STANDARD
        .decode_slice(text.as_bytes(), &mut bytes)
        .map_err(|_| Error::Protocol("the data key is not base64".into()))?;
    if len != DATA_KEY_LEN {
        return Err(Error::Protocol(format!(
            "the data key is {len} bytes, not {DATA_KEY_LEN}"
        )));
    }
    bytes.truncate(DATA_KEY_LEN);
    Ok(DataKey(bytes))
}

/// Our effective uid, as the owner of `/proc/self` (we forbid `unsafe`,
/// so no `geteuid`; the daemon is Linux-only anyway, SO_PEERCRED).
fn own_uid() -> Result<u32, Error> {
    fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(|e| Error::io("find our uid from /proc/self", e))
}

/// `KEYWARD_SOCKET`, else `$XDG_RUNTIME_DIR/keyward/keyward.sock`, else
/// `/run/user/$UID/keyward/keyward.sock` (docs/API.md, Transport).
fn socket_path(uid: u32) -> PathBuf {
    if let Some(socket) = std::env::var_os("KEYWARD_SOCKET").filter(|s| !s.is_empty()) {
        return PathBuf::from(socket);
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|s| !s.is_empty())
        .map_or_else(|| PathBuf::from(format!("/run/user/{uid}")), PathBuf::from);
    runtime.join("keyward").join("keyward.sock")
}

/// Refuses a socket that is not a socket, is not ours, or sits in a
/// directory another user owns or can write to (where they could swap
/// it), as the keyward CLI does before it sends a PIN.
fn check_socket(socket: &Path, uid: u32) -> Result<(), Error> {
    let untrusted = |reason: String| Error::SocketUntrusted {
        socket: socket.to_owned(),
        reason,
    };
    let meta = match fs::symlink_metadata(socket) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::NotRunning {
                socket: socket.to_owned(),
            });
        }
        Err(source) => {
            return Err(Error::Connection {
                socket: socket.to_owned(),
                source,
            });
        }
    };
    if meta.file_type().is_symlink() {
        return Err(untrusted("it is a symbolic link".into()));
    }
    if !meta.file_type().is_socket() {
        return Err(untrusted("it is not a socket".into()));
    }
    if meta.uid() != uid {
        return Err(untrusted(format!(
            "it belongs to uid {}, not to you (uid {uid})",
            meta.uid()
        )));
    }
    let dir = match socket.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir_meta = fs::metadata(dir).map_err(|source| Error::Connection {
        socket: socket.to_owned(),
        source,
    })?;
    if dir_meta.uid() != uid {
        return Err(untrusted(format!(
            "its directory {} belongs to uid {}, not to you (uid {uid})",
            dir.display(),
            dir_meta.uid()
        )));
    }
    if dir_meta.mode() & 0o022 != 0 {
        return Err(untrusted(format!(
            "its directory {} is writable by other users (mode {:03o})",
            dir.display(),
            dir_meta.mode() & 0o777
        )));
    }
    Ok(())
}

/// The client token: the file `KEYWARD_CLIENT_TOKEN_FILE` names, else
/// `KEYWARD_CLIENT_TOKEN`. Never a command-line argument.
fn token_from_env() -> Result<Token, Error> {
    if let Some(path) = std::env::var_os("KEYWARD_CLIENT_TOKEN_FILE").filter(|s| !s.is_empty()) {
        let path = PathBuf::from(path);
        let source = TokenSource::File(path.clone());
        let meta = fs::metadata(&path).map_err(|source| Error::TokenFile {
            path: path.clone(),
            source,
        })?;
        if meta.mode() & 0o077 != 0 {
            return Err(Error::TokenFileMode {
                path,
                mode: meta.mode() & 0o777,
            });
        }
        let text = fs::read(&path).map_err(|source| Error::TokenFile {
            path: path.clone(),
            source,
        })?;
        return token_from_bytes(&Zeroizing::new(text), source);
    }
    match std::env::var_os("KEYWARD_CLIENT_TOKEN").filter(|s| !s.is_empty()) {
        Some(value) => token_from_bytes(
            &Zeroizing::new(value.into_encoded_bytes()),
            TokenSource::Env,
        ),
        None => Err(Error::NoToken),
    }
}

/// Checks the form `kwt_` + base64url (docs/API.md) after trimming
/// surrounding whitespace, so that nothing else is ever sent as a header.
fn token_from_bytes(bytes: &[u8], source: TokenSource) -> Result<Token, Error> {
    let trimmed = bytes.trim_ascii();
    let well_formed = trimmed.strip_prefix(b"kwt_").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    });
    if !well_formed {
        return Err(Error::MalformedToken(source));
    }
    let mut secret = Zeroizing::new(String::with_capacity(trimmed.len()));
    // Checked above: ASCII only.
    secret.extend(trimmed.iter().map(|&b| char::from(b)));
    Ok(Token { secret, source })
}

/// Helpers for other modules' tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::{DATA_KEY_LEN, DataKey, Zeroizing};

    /// A data key of `byte` repeated.
    pub(crate) fn data_key(byte: u8) -> DataKey {
        DataKey(Zeroizing::new(vec![byte; DATA_KEY_LEN]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> Result<Token, Error> {
        token_from_bytes(text.as_bytes(), TokenSource::Env)
    }

    #[test]
    fn tokens_are_checked_and_trimmed() {
        let good = token("kwt_AbC-_09\n").expect("well formed");
        assert_eq!(good.secret.as_str(), "kwt_AbC-_09");
        assert!(!format!("{good:?}").contains("AbC"));
        for bad in [
            "",
            "kwt_",
            "AbC",
            "kwt_a b",
            "kwt_a\r\nX-Evil: 1",
            "Bearer kwt_a",
        ] {
            assert!(
                matches!(token(bad), Err(Error::MalformedToken(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn data_key_is_taken_out_of_the_answer() {
        let key = STANDARD.encode([7_u8; DATA_KEY_LEN]);
        let mut answer = json!({ "plaintext": key, "key": "k", "version": 1 });
        let data_key = take_data_key(&mut answer).expect("a 32-byte key");
        assert_eq!(data_key.expose(), [7_u8; DATA_KEY_LEN]);
        assert_eq!(answer["plaintext"], Value::Null);
        assert_eq!(format!("{data_key:?}"), "DataKey([redacted])");

        for bad in [
            json!({}),
            json!({ "plaintext": "AAAA" }),
            json!({ "plaintext": "!" }),
        ] {
            let mut bad = bad;
            assert!(matches!(take_data_key(&mut bad), Err(Error::Protocol(_))));
        }
    }

    #[test]
    fn error_answers_map_to_diagnoses() {
        let service = KeyService {
            socket: PathBuf::from("/nonexistent"),
            token: token("kwt_x").expect("well formed"),
            uid: 0,
        };
        let locked = br#"{"error":{"code":"locked","message":"the keystore is locked","hint":"unlock it: keyward unlock","exit":3}}"#;
        let err = service.api_error(423, locked, "k");
        assert_eq!(
            err.to_string(),
            "the key service is locked: run `keyward unlock`"
        );
        assert_eq!(err.exit_code(), 3);

        let forbidden = br#"{"error":{"code":"forbidden","message":"not granted","exit":6}}"#;
        let err = service.api_error(403, forbidden, "notes");
        assert!(matches!(err, Error::Forbidden { ref key, .. } if key == "notes"));

        let other =
            br#"{"error":{"code":"decryption-failed","message":"decryption failed","exit":5}}"#;
        let err = service.api_error(422, other, "k");
        assert_eq!(err.exit_code(), 5);
        assert_eq!(err.hint(), None);

        let err = service.api_error(502, b"<html>", "k");
        assert!(matches!(err, Error::Protocol(_)));
    }
}
