//! The client of the daemon API: typed requests ([`crate::types`]) over
//! one [`Connection`], with the socket trust check first.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::Exit;
use crate::http::{Connection, Response};
use crate::problem::{ErrorBody, Problem};
use crate::socket::{self, Untrusted};
use crate::types::{AuditRecord, Endpoint, EventsQuery, Status, StatusRequest};

/// What went wrong talking to the daemon.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The socket's metadata cannot be read.
    Inspect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The socket is not to be trusted; nothing was sent.
    Untrusted {
        /// The socket.
        socket: PathBuf,
        /// Why.
        reason: Untrusted,
    },
    /// The connection failed.
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Writing or reading failed.
    Transport {
        /// `write to` or `read from`.
        action: &'static str,
        /// The socket.
        socket: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The daemon closed the connection without answering.
    Closed {
        /// The socket.
        socket: PathBuf,
    },
    /// The answer is not HTTP we can read (`part` names what was wrong).
    BadAnswer {
        /// What was wrong.
        part: String,
    },
    /// A body that is not the JSON expected.
    Unreadable {
        /// `answer` or `event`.
        what: &'static str,
        /// The JSON error.
        detail: String,
    },
    /// A request that cannot be encoded.
    Encode(String),
    /// The daemon answered with an error.
    Api {
        /// The HTTP status.
        status: u16,
        /// The error body; `None` when the answer had none we could read.
        problem: Option<Box<Problem>>,
    },
}

impl Error {
    /// The exit code the CLI gives this failure: the daemon's for its own
    /// errors, 6 for an untrusted socket, else 1.
    pub fn exit(&self) -> Exit {
        match self {
            Self::Untrusted { .. } => Exit::Refused,
            Self::Api {
                problem: Some(problem),
                ..
            } => problem.exit,
            _ => Exit::Failure,
        }
    }

    /// The stable code of a daemon error answer.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api {
                problem: Some(problem),
                ..
            } => Some(&problem.code),
            _ => None,
        }
    }

    /// Whether the transport timed out waiting for the daemon.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Transport { source, .. }
            if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inspect { socket, source } => write!(
                f,
                "cannot inspect the daemon socket {}: {source}",
                socket.display()
            ),
            Self::Untrusted { socket, reason } => write!(
                f,
                "refusing to talk to the daemon socket {}: {reason}",
                socket.display()
            ),
            Self::Connect { socket, source } => write!(
                f,
                "cannot connect to the daemon at {}: {source}",
                socket.display()
            ),
            Self::Transport {
                action,
                socket,
                source,
            } => write!(
                f,
                "cannot {action} the daemon at {}: {source}",
                socket.display()
            ),
            Self::Closed { socket } => write!(
                f,
                "the daemon at {} closed the connection without answering",
                socket.display()
            ),
            Self::BadAnswer { part } => {
                write!(f, "the daemon sent an unreadable answer (bad {part})")
            }
            Self::Unreadable { what, detail } => {
                write!(f, "the daemon sent an unreadable {what} ({detail})")
            }
            Self::Encode(e) => write!(f, "cannot encode the request: {e}"),
            Self::Api {
                problem: Some(problem),
                ..
            } => f.write_str(&problem.message),
            Self::Api {
                status,
                problem: None,
            } => write!(f, "the daemon refused the request (HTTP {status})"),
        }
    }
}

impl std::error::Error for Error {}

/// How long an ordinary request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An unlock may wait for a touch or a slow device.
pub const UNLOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection to a running daemon, acting as the owner or, with a token,
/// as a client.
#[derive(Debug)]
pub struct Client {
    socket: PathBuf,
    connection: Connection,
    token: Option<SecretString>,
}

impl Client {
    /// Connects to the daemon at `socket` after checking that the socket
    /// and its directory are ours and writable by nobody else; `None` when
    /// nothing listens there (no socket, or a stale one).
    ///
    /// # Errors
    /// An untrusted socket; a socket that cannot be inspected or reached.
    pub fn connect(socket: &Path) -> Result<Option<Self>, Error> {
        match std::fs::symlink_metadata(socket) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Inspect {
                    socket: socket.to_owned(),
                    source,
                });
            }
            Ok(meta) => match socket::check_trusted(socket, &meta) {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    return Err(Error::Untrusted {
                        socket: socket.to_owned(),
                        reason,
                    });
                }
                Err(source) => {
                    let dir = socket.parent().unwrap_or(socket).to_owned();
                    return Err(Error::Inspect {
                        socket: dir,
                        source,
                    });
                }
            },
        }
        let connection = match Connection::connect(socket) {
            Ok(c) => c,
            // A socket file left by a daemon that was killed.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                ) =>
            {
                return Ok(None);
            }
            Err(source) => {
                return Err(Error::Connect {
                    socket: socket.to_owned(),
                    source,
                });
            }
        };
        let client = Self {
            socket: socket.to_owned(),
            connection,
            token: None,
        };
        client.set_timeout(Some(REQUEST_TIMEOUT));
        client
            .connection
            .stream()
            .set_write_timeout(Some(REQUEST_TIMEOUT))
            .ok();
        Ok(Some(client))
    }

    /// Connects to the daemon at [`socket::client_path`].
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub fn connect_default() -> Result<Option<Self>, Error> {
        Self::connect(&socket::client_path())
    }

    /// Acts as the client whose token this is (`Authorization: Bearer`).
    #[must_use]
    pub fn with_token(mut self, token: SecretString) -> Self {
        self.token = Some(token);
        self
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sets how long to wait for an answer (`None`: forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) {
        self.connection.stream().set_read_timeout(timeout).ok();
    }

    /// `GET /v1/status`.
    ///
    /// # Errors
    /// As [`Client::send`].
    pub fn status(&mut self) -> Result<Status, Error> {
        self.send(&StatusRequest)
    }

    /// Sends `request` and reads its answer.
    ///
    /// # Errors
    /// [`Error::Api`] for an error answer; transport failures; an answer
    /// that is not the JSON expected.
    pub fn send<E: Endpoint>(&mut self, request: &E) -> Result<E::Response, Error> {
        let response = self.exchange(request)?;
        decode(&response.body)
    }

    /// Sends `request` and returns the answer, whatever its status, with
    /// its body not yet decoded.
    ///
    /// # Errors
    /// Transport failures.
    pub fn exchange<E: Endpoint>(&mut self, request: &E) -> Result<Response, Error> {
        let body = if E::METHOD.has_body() {
            Some(encode(request)?)
        } else {
            None
        };
        let response = self.raw(
            E::METHOD.as_str(),
            &request.path(),
            body.as_ref().map(|b| b.as_slice()),
        )?;
        if response.is_success() {
            Ok(response)
        } else {
            Err(problem_of(&response))
        }
    }

    /// Sends any request and returns the answer, whatever its status.
    ///
    /// # Errors
    /// Transport failures.
    pub fn raw(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, Error> {
        let token = self.token.as_ref().map(|t| t.expose_secret().to_owned());
        let token = token.map(Zeroizing::new);
        self.connection
            .exchange(method, path, body, token.as_ref().map(|t| t.as_str()))
            .map_err(|e| self.io_error(e))
    }

    /// Streams security events (`GET /v1/events`), calling `each` for
    /// every record until the daemon closes the stream or `each` returns
    /// `false`. No read timeout applies.
    ///
    /// # Errors
    /// Transport failures; an error answer; an unreadable event; `each`'s
    /// own error (`E` must take this module's errors).
    pub fn events<F, E>(&mut self, query: &EventsQuery, mut each: F) -> Result<(), E>
    where
        F: FnMut(AuditRecord) -> Result<bool, E>,
        E: From<Error>,
    {
        self.set_timeout(None);
        let token = self
            .token
            .as_ref()
            .map(|t| Zeroizing::new(t.expose_secret().to_owned()));
        self.connection
            .send(
                "GET",
                &query.path(),
                None,
                token.as_ref().map(|t| t.as_str()),
            )
            .map_err(|e| self.io_error(e))?;
        let head = self.connection.read_head().map_err(|e| self.io_error(e))?;
        if !head.is_success() {
            let answer = self
                .connection
                .read_body(head)
                .map_err(|e| self.io_error(e))?;
            return Err(problem_of(&answer).into());
        }
        while let Some(line) = self
            .connection
            .next_line(None)
            .map_err(|e| self.io_error(e))?
        {
            let record: AuditRecord =
                serde_json::from_slice(&line).map_err(|e| Error::Unreadable {
                    what: "event",
                    detail: e.to_string(),
                })?;
            if !each(record)? {
                break;
            }
        }
        Ok(())
    }

    fn io_error(&self, e: io::Error) -> Error {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => Error::Closed {
                socket: self.socket.clone(),
            },
            io::ErrorKind::InvalidData => Error::BadAnswer {
                part: e.to_string(),
            },
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => Error::Transport {
                action: "write to",
                socket: self.socket.clone(),
                source: e,
            },
            _ => Error::Transport {
                action: "read from",
                socket: self.socket.clone(),
                source: e,
            },
        }
    }
}

/// A request body, in a zeroizing buffer sized so that it never
/// reallocates for ordinary requests (it may carry a PIN or plaintext).
///
/// # Errors
/// [`Error::Encode`].
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut size = SizeOf(0);
    serde_json::to_writer(&mut size, value).map_err(|e| Error::Encode(e.to_string()))?;
    let mut body = Zeroizing::new(Vec::with_capacity(size.0));
    serde_json::to_writer(&mut *body, value).map_err(|e| Error::Encode(e.to_string()))?;
    Ok(body)
}

/// Counts the bytes written to it.
struct SizeOf(usize);

impl io::Write for SizeOf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a JSON answer.
///
/// # Errors
/// [`Error::Unreadable`].
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let body: &[u8] = if body.is_empty() { b"null" } else { body };
    serde_json::from_slice(body).map_err(|e| Error::Unreadable {
        what: "answer",
        detail: e.to_string(),
    })
}

/// The error an error answer stands for.
pub fn problem_of(response: &Response) -> Error {
    let problem = serde_json::from_slice::<ErrorBody>(&response.body)
        .ok()
        .map(|b| Box::new(b.error));
    Error::Api {
        status: response.status,
        problem,
    }
}
