//! Who a request acts as (docs/API.md, "Authentication and grants").
//!
//! - A request without an `Authorization` header comes from the daemon's
//!   own uid (the accept loop refused every other uid) and acts as the
//!   owner, who may do everything: uid trust, as `ssh-agent` does.
//! - A request with `Authorization: Bearer kwt_…` acts as that client,
//!   whatever its uid, and may do only what its grant allows. The token is
//!   checked against the store on every request, so a revocation takes
//!   effect on the next request, on open connections too.
//!
//! Refused requests (401, 403) are counted; ten within ten seconds raise a
//! `requests.refused.burst` audit event.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};
use keyward_kms::clients::{ClientInfo, Operation};
use keyward_kms::service::Actor;
use keyward_kms::{Error, KeyName, SecretString, Service};
use secrecy::ExposeSecret;

use crate::error::ApiError;

/// The process at the other end of a connection (`SO_PEERCRED`).
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// Its uid (always the daemon's: others are refused at accept).
    pub(crate) uid: u32,
    /// Its pid, when the kernel reports one.
    pub(crate) pid: Option<u32>,
    /// Its executable, when `/proc` tells.
    pub(crate) exe: Option<String>,
}

impl Peer {
    /// The audit actor of a request from this peer, acting as `client`.
    pub(crate) fn actor(&self, client: Option<&str>) -> Actor {
        Actor {
            uid: self.uid,
            pid: self.pid.unwrap_or(0),
            exe: self.exe.clone(),
            client: client.map(ToOwned::to_owned),
        }
    }
}

/// What a request presents, before the store checks it.
pub(crate) enum Credentials {
    /// No `Authorization` header.
    Owner,
    /// A bearer token.
    Token(SecretString),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Owner => "Owner",
            Self::Token(_) => "Token([REDACTED])",
        })
    }
}

/// Everything a handler needs to know about the requester.
#[derive(Debug)]
pub(crate) struct Requester {
    /// The connection's peer.
    pub(crate) peer: Arc<Peer>,
    /// The presented credentials.
    pub(crate) credentials: Credentials,
}

impl<S: Send + Sync> FromRequestParts<S> for Requester {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<Arc<Peer>>()
            .cloned()
            .ok_or_else(|| ApiError::internal("request without peer credentials"))?;
        let credentials = match parts.headers.get(header::AUTHORIZATION) {
            None => Credentials::Owner,
            Some(value) => {
                let token = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| ApiError::from(Error::Unauthorized))?;
                Credentials::Token(SecretString::from(token.to_owned()))
            }
        };
        Ok(Self { peer, credentials })
    }
}

/// Who a request acts as, once authenticated.
#[derive(Debug)]
pub(crate) enum Caller {
    /// The daemon's user, without a token.
    Owner,
    /// A client and its grant.
    Client(ClientInfo),
}

impl Caller {
    /// Checks the credentials against the store.
    ///
    /// # Errors
    /// `401 unauthorized` for a missing, unknown or revoked token.
    pub(crate) fn authenticate(
        credentials: &Credentials,
        service: &mut Service,
    ) -> Result<Self, ApiError> {
        match credentials {
            Credentials::Owner => Ok(Self::Owner),
            Credentials::Token(token) => service
                .authenticate(token.expose_secret())
                .map(Self::Client)
                .map_err(|e| match e {
                    // Whatever went wrong, a client learns only that its
                    // token does not work; the log has the rest.
                    Error::Unauthorized => ApiError::from(e),
                    other => {
                        tracing::warn!(error = %other, "could not check a client token");
                        ApiError::from(other)
                    }
                }),
        }
    }

    /// The client's name (`None` for the owner).
    pub(crate) fn client(&self) -> Option<&str> {
        match self {
            Self::Owner => None,
            Self::Client(info) => Some(&info.name),
        }
    }

    /// Refuses clients: the endpoint is the owner's.
    ///
    /// # Errors
    /// `403 forbidden` for a client.
    pub(crate) fn require_owner(&self) -> Result<(), ApiError> {
        match self {
            Self::Owner => Ok(()),
            Self::Client(info) => Err(ApiError::owner_only(&info.name)),
        }
    }

    /// Checks that the grant allows `op` (on `key`, when the operation is
    /// on one key).
    ///
    /// # Errors
    /// `403 forbidden`.
    pub(crate) fn require(&self, op: Operation, key: Option<&KeyName>) -> Result<(), ApiError> {
        match self {
            Self::Owner => Ok(()),
            Self::Client(info) if info.permits(op, key) => Ok(()),
            Self::Client(info) => Err(ApiError::from(info.forbidden(op, key))),
        }
    }

    /// Whether a client may see `key` with the `keys` grant (the owner
    /// sees every key).
    pub(crate) fn sees(&self, key: &KeyName) -> bool {
        match self {
            Self::Owner => true,
            Self::Client(info) => info.permits(Operation::Keys, Some(key)),
        }
    }
}

/// How many refusals within [`BURST_WINDOW`] make a burst.
pub(crate) const BURST_THRESHOLD: usize = 10;
/// The window of the burst detector.
pub(crate) const BURST_WINDOW: Duration = Duration::from_secs(10);

/// Counts refused requests and tells when they make a burst (at most one
/// burst event per window).
#[derive(Debug, Default)]
pub(crate) struct Refusals(Mutex<RefusalState>);

#[derive(Debug, Default)]
struct RefusalState {
    recent: VecDeque<Instant>,
    raised: Option<Instant>,
}

impl Refusals {
    /// Notes one refused request at `now`; the number of refusals in the
    /// window when this one makes a burst to report.
    pub(crate) fn note(&self, now: Instant) -> Option<usize> {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        state.recent.push_back(now);
        while state
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= BURST_WINDOW)
        {
            state.recent.pop_front();
        }
        let quiet = state
            .raised
            .is_none_or(|t| now.duration_since(t) >= BURST_WINDOW);
        if state.recent.len() >= BURST_THRESHOLD && quiet {
            state.raised = Some(now);
            return Some(state.recent.len());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_refusals_in_ten_seconds_make_one_burst() {
        let refusals = Refusals::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        for i in 0..9 {
            assert_eq!(refusals.note(at(i * 100)), None);
        }
        assert_eq!(refusals.note(at(900)), Some(10));
        // The burst goes on: no second event within the window.
        for i in 10..30 {
            assert_eq!(refusals.note(at(i * 100)), None);
        }
        // A window later, a new burst is reported.
        assert!(refusals.note(at(11_000)).is_some());
    }

    #[test]
    fn slow_refusals_never_burst() {
        let refusals = Refusals::default();
        let start = Instant::now();
        for i in 0..50 {
            assert_eq!(refusals.note(start + Duration::from_secs(2 * i)), None);
        }
    }
}
