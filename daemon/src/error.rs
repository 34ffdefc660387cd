//! Every failure as the API reports it: an HTTP status and the JSON body
//! `{"error": {"code", "message", "hint", "exit"}}` (docs/API.md, "Errors").
//!
//! Errors of the key service take their `code` from
//! [`keyward_kms::Error::code`] and their message, hint and exit code from
//! the diagnosis `keyward serve` hands in ([`crate::Config::diagnose`]: the
//! CLI's own mapping), so that a script sees the same diagnosis from
//! `keyward decrypt` and from the daemon. Failures of the transport (bad
//! JSON, a body too large, an unknown route) are the daemon's own.

use std::sync::OnceLock;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyward_api::Problem;
use keyward_kms::Error;
use serde_json::{Map, Value, json};

use crate::{Diagnose, Exit};

/// The diagnosis of key-service errors, set once when the daemon starts.
static DIAGNOSE: OnceLock<Diagnose> = OnceLock::new();

/// Sets the diagnosis of key-service errors (the first one set stays).
pub(crate) fn set_diagnose(diagnose: Diagnose) {
    let _ = DIAGNOSE.set(diagnose);
}

/// Without a diagnosis handed in: the error's own text, exit code 1 (and
/// the exit code its API code implies, below).
fn plain(err: &Error) -> Problem {
    Problem::new(err.code(), Exit::Failure, err.to_string())
}

/// The error body the API answers `err` with, given the diagnosis
/// `diagnose`: its code, message, hint and exit code, and for
/// `secret-required` the secret asked for.
pub fn problem(err: &Error, diagnose: Diagnose) -> Problem {
    let code = err.code();
    let diagnosis = diagnose(err);
    // Errors the CLI does not map (yet) get the exit code their API code
    // implies rather than the generic 1.
    let exit = match (diagnosis.exit, code) {
        (Exit::Failure, "unauthorized" | "secret-required" | "locked") => Exit::Auth,
        (Exit::Failure, "forbidden" | "client-exists") => Exit::Refused,
        (Exit::Failure, "client-not-found") => Exit::NotFound,
        (exit, _) => exit,
    };
    let mut problem = Problem::new(code, exit, diagnosis.message);
    problem.hint = diagnosis.hint;
    if let Error::SecretRequired {
        kind,
        description,
        retries_left,
    } = err
    {
        problem.secret = Some((*kind).to_owned());
        problem.description = Some(description.clone());
        problem.tries_left = *retries_left;
        problem.hint = Some(format!(
            "send the {kind} in \"secrets\": {{\"{kind}\": …}} (`keyward unlock` asks for it)"
        ));
    }
    problem
}

/// A failed request.
#[derive(Debug)]
pub(crate) struct ApiError {
    /// HTTP status.
    pub(crate) status: StatusCode,
    /// Stable code (docs/API.md).
    pub(crate) code: &'static str,
    /// What happened, for humans.
    pub(crate) message: String,
    /// What to do, for humans.
    pub(crate) hint: Option<String>,
    /// The exit code the CLI gives the same failure.
    pub(crate) exit: u8,
    /// More members of the error object (`secret`, `description`,
    /// `tries_left` of a `secret-required` answer).
    pub(crate) extra: Map<String, Value>,
    /// Close the connection after this answer (a body we did not read, a
    /// timeout).
    pub(crate) close: bool,
}

impl ApiError {
    /// An error with a code the table of [`status_of`] knows.
    pub(crate) fn new(code: &'static str, exit: Exit, message: impl Into<String>) -> Self {
        Self {
            status: status_of(code, exit),
            code,
            message: message.into(),
            hint: None,
            exit: exit as u8,
            extra: Map::new(),
            close: false,
        }
    }

    /// Adds the hint.
    #[must_use]
    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Asks for the connection to be closed after the answer.
    #[must_use]
    pub(crate) fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// `400 bad-request`: the request could not be read as the endpoint
    /// expects (malformed JSON, wrong type, unknown field, bad base64).
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new("bad-request", Exit::Usage, message)
            .hint("see docs/API.md for the endpoint's request body")
    }

    /// `413 payload-too-large`. The body is left unread, so the
    /// connection is closed after the answer.
    pub(crate) fn too_large(limit: usize) -> Self {
        Self::new(
            "payload-too-large",
            Exit::Usage,
            format!("the request body is larger than {} MiB", limit >> 20),
        )
        .hint("send less per request; the batch endpoints take up to 16 MiB")
        .closing()
    }

    /// `408 request-timeout`: the body did not arrive in time; the
    /// connection is closed after the answer.
    pub(crate) fn body_timeout(seconds: u64) -> Self {
        Self::new(
            "request-timeout",
            Exit::Failure,
            format!("the request body did not arrive within {seconds} s"),
        )
        .closing()
    }

    /// `404 not-found` for a path no endpoint serves.
    pub(crate) fn no_route(method: &str, path: &str) -> Self {
        Self::new(
            "not-found",
            Exit::Usage,
            format!("no endpoint {method} {path}"),
        )
        .hint("see docs/API.md for the endpoints of /v1")
    }

    /// `405 method-not-allowed`.
    pub(crate) fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            "method-not-allowed",
            Exit::Usage,
            format!("{path} does not take {method}"),
        )
        .hint("see docs/API.md for the methods of each endpoint")
    }

    /// `403 peer-rejected`: the connecting process belongs to another user.
    pub(crate) fn peer_rejected(uid: u32) -> Self {
        Self::new(
            "peer-rejected",
            Exit::Auth,
            format!("this daemon serves only its own user; uid {uid} is refused"),
        )
        .hint("run `keyward serve` as your own user to use a keystore of your own")
    }

    /// `403 forbidden` for an owner-only endpoint called with a client
    /// token.
    pub(crate) fn owner_only(client: &str) -> Self {
        Self::new(
            "forbidden",
            Exit::Refused,
            format!("client '{client}' cannot use this endpoint: it is for the owner only"),
        )
        .hint("call it without a token, as the user running the daemon")
    }

    /// `503 shutting-down`.
    pub(crate) fn shutting_down() -> Self {
        Self::new("shutting-down", Exit::Store, "the daemon is shutting down")
            .hint("try again once it is restarted")
    }

    /// `500 internal`: a bug in keyward.
    pub(crate) fn internal(what: impl Into<String>) -> Self {
        Self::new("internal", Exit::Failure, what)
            .hint("this is a bug in keyward; the daemon's log has the details")
    }

    /// The error object (inside `{"error": …}`).
    pub(crate) fn object(&self) -> Value {
        let mut object = Map::new();
        object.insert("code".into(), json!(self.code));
        object.insert("message".into(), json!(self.message));
        object.insert("hint".into(), json!(self.hint));
        object.insert("exit".into(), json!(self.exit));
        for (k, v) in &self.extra {
            object.insert(k.clone(), v.clone());
        }
        Value::Object(object)
    }

    /// The whole body.
    pub(crate) fn body(&self) -> Value {
        json!({ "error": self.object() })
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        Self::from(&err)
    }
}

impl From<&Error> for ApiError {
    fn from(err: &Error) -> Self {
        let problem = problem(err, DIAGNOSE.get().copied().unwrap_or(plain));
        let mut api = Self::new(err.code(), problem.exit, problem.message);
        api.hint = problem.hint;
        if let Some(secret) = problem.secret {
            // `tries_left` is always present in a secret-required answer
            // (null when the device does not tell).
            api.extra.insert("secret".into(), json!(secret));
            api.extra
                .insert("description".into(), json!(problem.description));
            api.extra
                .insert("tries_left".into(), json!(problem.tries_left));
        }
        api
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = super::api::json_response(self.status, &self.body());
        if self.close {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// The HTTP status of an error code ([`keyward_api::problem::status_of`]:
/// the table of docs/API.md, "Errors").
pub(crate) fn status_of(code: &str, exit: Exit) -> StatusCode {
    StatusCode::from_u16(keyward_api::problem::status_of(code, exit))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_required_names_the_secret() {
        let api = ApiError::from(Error::SecretRequired {
            kind: "pin",
            description: "TPM 'laptop'".into(),
            retries_left: Some(2),
        });
        assert_eq!(api.status, StatusCode::PRECONDITION_REQUIRED);
        let body = api.body();
        assert_eq!(body["error"]["code"], "secret-required");
        assert_eq!(body["error"]["secret"], "pin");
        assert_eq!(body["error"]["tries_left"], 2);
        assert_eq!(body["error"]["exit"], 3);
    }

    #[test]
    fn every_transport_error_has_its_status() {
        assert_eq!(ApiError::bad_request("x").status, StatusCode::BAD_REQUEST);
        assert_eq!(
            ApiError::too_large(1 << 20).status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert!(ApiError::too_large(1 << 20).close);
        assert_eq!(
            ApiError::no_route("GET", "/x").status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ApiError::method_not_allowed("PUT", "/v1/status").status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(ApiError::peer_rejected(7).status, StatusCode::FORBIDDEN);
        assert_eq!(
            ApiError::shutting_down().status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
