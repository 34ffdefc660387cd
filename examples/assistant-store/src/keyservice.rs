//! The key service (`keyward serve`, docs/API.md) as the assistant uses
//! it: where its socket is, the client token, and the two data-key calls.
//!
//! The token and the data keys are secrets: they live in [`Zeroizing`]
//! buffers, have redacting `Debug`s and never reach an error message.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keyward_api::client::Error as ClientError;
use keyward_api::types::{DatakeyRequest, UnwrapRequest};
use keyward_api::{Bytes, Client, Endpoint, Problem};
use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::error::{EXIT_OTHER, Error, TokenSource};

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
}

impl KeyService {
    /// The socket from `KEYWARD_SOCKET` (else the default of docs/API.md)
    /// and the token from `KEYWARD_CLIENT_TOKEN_FILE` (else
    /// `KEYWARD_CLIENT_TOKEN`). Nothing is sent yet.
    pub(crate) fn from_env() -> Result<Self, Error> {
        Ok(Self {
            socket: keyward_api::socket::client_path(),
            token: token_from_env()?,
        })
    }

    /// `POST /v1/datakey/generate`: a fresh data key and its wrapped copy
    /// under `key`, bound to `context`.
    pub(crate) fn generate(&self, key: &str, context: &[u8]) -> Result<(DataKey, Wrapped), Error> {
        let request = DatakeyRequest {
            key: key.to_owned(),
            context: Bytes::copy_of(context),
        };
        let answer = self.call(&request, key)?;
        let data_key = data_key(answer.plaintext)?;
        let wrapped = Wrapped {
            key: answer.key,
            version: u64::from(answer.version),
            wrapped: keyward_api::bytes::b64(answer.wrapped.bytes()),
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
        let wrapped = STANDARD
            .decode(wrapped)
            .map_err(|_| Error::Protocol("the wrapped data key is not base64".into()))?;
        let request = UnwrapRequest {
            wrapped: Bytes::new(wrapped),
            context: Bytes::copy_of(context),
        };
        data_key(self.call(&request, key)?.plaintext)
    }

    /// Sends one request on a new connection (keyward-api's client, which
    /// first checks that the socket is ours: the token must not go to a
    /// socket another user could have put there); an error answer becomes
    /// the matching [`Error`]. `key` names the key in a `forbidden` error.
    fn call<E: Endpoint>(&self, request: &E, key: &str) -> Result<E::Response, Error> {
        let client = Client::connect(&self.socket)
            .map_err(|e| self.client_error(e, key))?
            .ok_or_else(|| Error::NotRunning {
                socket: self.socket.clone(),
            })?;
        client.set_timeout(Some(IO_TIMEOUT));
        let secret = SecretString::from(self.token.secret.as_str().to_owned());
        client
            .with_token(secret)
            .send(request)
            .map_err(|e| self.client_error(e, key))
    }

    /// The error a failure of the client stands for.
    fn client_error(&self, err: ClientError, key: &str) -> Error {
        match err {
            ClientError::Untrusted { socket, reason } => Error::SocketUntrusted {
                socket,
                reason: reason.to_string(),
            },
            ClientError::Inspect { source, .. } | ClientError::Connect { source, .. } => {
                self.connection_error(source)
            }
            ClientError::Transport { source, .. } => self.connection_error(source),
            ClientError::Api { status, problem } => self.api_error(status, problem.as_deref(), key),
            other => Error::Protocol(other.to_string()),
        }
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
    fn api_error(&self, status: u16, problem: Option<&Problem>, key: &str) -> Error {
        let Some(problem) = problem else {
            return Error::Protocol(format!("HTTP status {status} without an error object"));
        };
        match problem.code.as_str() {
            "locked" => Error::Locked,
            "unauthorized" => Error::Unauthorized(self.token.source.clone()),
            "forbidden" => Error::Forbidden {
                key: key.to_owned(),
                message: problem.message.clone(),
            },
            _ => Error::Daemon {
                code: problem.code.clone(),
                message: problem.message.clone(),
                hint: problem.hint.clone(),
                exit: Some(u8::from(problem.exit))
                    .filter(|e| (1..=125).contains(e))
                    .unwrap_or(EXIT_OTHER),
            },
        }
    }
}

/// Checks that a data key from the daemon is [`DATA_KEY_LEN`] bytes; its
/// buffer is wiped on drop.
fn data_key(plaintext: Bytes) -> Result<DataKey, Error> {
    let bytes = plaintext.into_inner();
    if bytes.len() != DATA_KEY_LEN {
        return Err(Error::Protocol(format!(
            "the data key is {} bytes, not {DATA_KEY_LEN}",
            bytes.len()
        )));
    }
    Ok(DataKey(bytes))
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
    fn data_keys_have_their_length() {
        let data_key = data_key(Bytes::new(vec![7_u8; DATA_KEY_LEN])).expect("a 32-byte key");
        assert_eq!(data_key.expose(), [7_u8; DATA_KEY_LEN]);
        assert_eq!(format!("{data_key:?}"), "DataKey([redacted])");
        assert!(matches!(
            super::data_key(Bytes::new(vec![0; 3])),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn error_answers_map_to_diagnoses() {
        let service = KeyService {
            socket: PathBuf::from("/nonexistent"),
            token: token("kwt_x").expect("well formed"),
        };
        let problem = |body: &[u8]| {
            serde_json::from_slice::<keyward_api::ErrorBody>(body)
                .ok()
                .map(|b| b.error)
        };
        let locked = br#"{"error":{"code":"locked","message":"the keystore is locked","hint":"unlock it: keyward unlock","exit":3}}"#;
        let err = service.api_error(423, problem(locked).as_ref(), "k");
        assert_eq!(
            err.to_string(),
            "the key service is locked: run `keyward unlock`"
        );
        assert_eq!(err.exit_code(), 3);

        let forbidden = br#"{"error":{"code":"forbidden","message":"not granted","exit":6}}"#;
        let err = service.api_error(403, problem(forbidden).as_ref(), "notes");
        assert!(matches!(err, Error::Forbidden { ref key, .. } if key == "notes"));

        let other =
            br#"{"error":{"code":"decryption-failed","message":"decryption failed","exit":5}}"#;
        let err = service.api_error(422, problem(other).as_ref(), "k");
        assert_eq!(err.exit_code(), 5);
        assert_eq!(err.hint(), None);

        let err = service.api_error(502, problem(b"<html>").as_ref(), "k");
        assert!(matches!(err, Error::Protocol(_)));
    }
}
