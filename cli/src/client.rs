//! The CLI's side of the daemon API (docs/API.md), through keyward-api's
//! one client.
//!
//! Every command asks [`Daemon::for_store`] first: when a daemon serves the
//! command's keystore, the command goes through it (the owner's uid is
//! trusted, so no token is sent); otherwise the command works on the store
//! directly. Before anything is sent — an unlock request carries a PIN — the
//! socket and its directory must belong to the user and be writable by
//! nobody else (keyward-api checks): a socket planted by someone else is
//! never spoken to. This module turns the client's errors into the CLI's
//! diagnoses and remedies.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward_api::client::{Error as ApiError, REQUEST_TIMEOUT};
use keyward_api::types::Status;
use keyward_api::{Client, Endpoint};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::failure::{Exit, Failure};

pub(crate) use keyward_api::client::UNLOCK_TIMEOUT;

/// A connection to a running daemon.
#[derive(Debug)]
pub(crate) struct Daemon {
    client: Client,
    /// The daemon's `GET /v1/status` answer at connection time.
    pub(crate) status: Status,
}

impl Daemon {
    /// The daemon serving `store`, if one runs; `None` when no daemon
    /// listens on the socket or it serves another keystore.
    ///
    /// # Errors
    /// The socket exists but is not trustworthy (`socket-untrusted`), or
    /// the daemon does not answer sensibly.
    pub(crate) fn for_store(store: &Path) -> Result<Option<Self>, Failure> {
        let socket = keyward_api::socket::client_path();
        let Some(daemon) = Self::connect(&socket)? else {
            return Ok(None);
        };
        let served = PathBuf::from(&daemon.status.store);
        if !same_file(&served, store) {
            tracing::debug!(
                socket = %socket.display(),
                served = %served.display(),
                "the daemon serves another keystore; working on the store directly"
            );
            return Ok(None);
        }
        daemon.set_timeout(Some(REQUEST_TIMEOUT));
        Ok(Some(daemon))
    }

    /// Connects to the daemon at `socket` and reads its status; `None` if
    /// nothing listens there.
    ///
    /// # Errors
    /// An untrusted socket; a daemon that fails its status request.
    pub(crate) fn connect(socket: &Path) -> Result<Option<Self>, Failure> {
        let Some(mut client) = Client::connect(socket).map_err(Failure::from)? else {
            tracing::debug!(socket = %socket.display(), "no daemon listens");
            return Ok(None);
        };
        let status = client.status().map_err(Failure::from)?;
        Ok(Some(Self { client, status }))
    }

    /// Sets how long to wait for an answer.
    pub(crate) fn set_timeout(&self, timeout: Option<Duration>) {
        self.client.set_timeout(timeout);
    }

    /// Sends a request and returns the answer of a success.
    ///
    /// # Errors
    /// The daemon's error, rendered as the CLI renders the same failure
    /// (message, hint and exit code come from the daemon); transport
    /// failures.
    pub(crate) fn send<E: Endpoint>(&mut self, request: &E) -> Result<E::Response, Failure> {
        self.client.send(request).map_err(Failure::from)
    }

    /// As [`Daemon::send`], with the client's error (to look at a daemon
    /// error's code before it becomes a failure).
    ///
    /// # Errors
    /// As [`Daemon::send`].
    pub(crate) fn try_send<E: Endpoint>(&mut self, request: &E) -> Result<E::Response, ApiError> {
        self.client.send(request)
    }

    /// The client underneath (the event stream).
    pub(crate) fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// The failure a client error stands for: a daemon error keeps its
/// message, hint and exit code (docs/API.md, "Errors").
pub(crate) fn failure(err: &ApiError) -> Failure {
    let message = err.to_string();
    match err {
        ApiError::Api { status, problem } => {
            tracing::debug!(code = ?err.code(), status, "daemon error");
            let hint = problem.as_ref().and_then(|p| p.hint.clone());
            let failure = Failure::new(err.exit(), message);
            match hint {
                Some(hint) => failure.hint(hint),
                None => failure,
            }
        }
        ApiError::Untrusted { .. } => Failure::new(Exit::Refused, message).hint(
            "a socket another user controls could collect your PIN; remove it, check who \
             created it, and start `keyward serve` again (or point KEYWARD_SOCKET elsewhere)",
        ),
        ApiError::Transport { .. } if err.is_timeout() => Failure::new(Exit::Failure, message)
            .hint("the daemon did not answer in time; see its log (journalctl --user -u keyward)"),
        ApiError::Transport { .. } => Failure::new(Exit::Failure, message).hint(
            "the daemon may have stopped; run the command again (it works without a daemon too)",
        ),
        ApiError::Closed { .. } => Failure::new(Exit::Failure, message)
            .hint("it may have stopped or crashed; see its log, or run the command again"),
        _ => Failure::new(Exit::Failure, message),
    }
}

impl From<ApiError> for Failure {
    fn from(err: ApiError) -> Self {
        failure(&err)
    }
}

/// Reads a daemon answer into the key service's type of the same shape
/// (the CLI renders those).
///
/// # Errors
/// The answer does not have the expected shape.
pub(crate) fn decode<T: DeserializeOwned>(answer: &impl Serialize) -> Result<T, Failure> {
    serde_json::to_value(answer)
        .and_then(serde_json::from_value)
        .map_err(|e| {
            Failure::new(
                Exit::Failure,
                format!("the daemon sent an unexpected answer ({e})"),
            )
        })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use keyward_api::Problem;

    use super::*;

    #[test]
    fn daemon_errors_keep_their_message_hint_and_exit_code() {
        let err = ApiError::Api {
            status: 423,
            problem: Some(Box::new(
                Problem::new("locked", Exit::Auth, "the keystore is locked").hint("keyward unlock"),
            )),
        };
        assert_eq!(err.code(), Some("locked"));
        let f = failure(&err);
        assert_eq!(f.code, Exit::Auth);
        assert_eq!(f.message, "the keystore is locked");
        assert_eq!(f.hint.as_deref(), Some("keyward unlock"));
        let garbage = ApiError::Api {
            status: 500,
            problem: None,
        };
        assert_eq!(failure(&garbage).code, Exit::Failure);
    }
}
