//! Every failure as the API reports it: an HTTP status and the JSON body
//! `{"error": {"code", "message", "hint", "exit"}}` (docs/API.md, "Errors").
//!
//! Errors of the key service take their `code` from
//! [`keyward_kms::Error::code`] and their message, hint and exit code from
//! the CLI's own mapping ([`crate::failure`]), so that a script sees the
//! same diagnosis from `keyward decrypt` and from the daemon. Failures of
//! the transport (bad JSON, a body too large, an unknown route) are the
//! daemon's own.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyward_kms::Error;
use serde_json::{Map, Value, json};

use crate::failure::{Exit, from_kms};

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
        let code = err.code();
        let failure = from_kms(err);
        // Errors the CLI does not map (yet) get the exit code their API code
        // implies rather than the generic 1.
        let exit = match (failure.code, code) {
            (Exit::Failure, "unauthorized" | "secret-required" | "locked") => Exit::Auth,
            (Exit::Failure, "forbidden" | "client-exists") => Exit::Refused,
            (Exit::Failure, "client-not-found") => Exit::NotFound,
            (exit, _) => exit,
        };
        let mut api = Self::new(code, exit, failure.message);
        api.hint = failure.hint;
        if let Error::SecretRequired {
            kind,
            description,
            retries_left,
        } = err
        {
            api.extra.insert("secret".into(), json!(kind));
            api.extra.insert("description".into(), json!(description));
            api.extra.insert("tries_left".into(), json!(retries_left));
            api.hint = Some(format!(
                "send the {kind} in \"secrets\": {{\"{kind}\": …}} (`keyward unlock` asks for it)"
            ));
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

/// The HTTP status of an error code (docs/API.md, "Errors"). Codes outside
/// the table take the status their exit code suggests.
pub(crate) fn status_of(code: &str, exit: Exit) -> StatusCode {
    match code {
        "bad-request" | "invalid-argument" | "invalid-key-name" | "malformed" => {
            StatusCode::BAD_REQUEST
        }
        "unauthorized" | "wrong-pin" | "wrong-passphrase" | "wrong-recovery-key"
        | "pin-blocked" | "lockout" => StatusCode::UNAUTHORIZED,
        "forbidden" | "peer-rejected" => StatusCode::FORBIDDEN,
        "not-found"
        | "key-not-found"
        | "version-not-found"
        | "protector-not-found"
        | "client-not-found" => StatusCode::NOT_FOUND,
        "method-not-allowed" => StatusCode::METHOD_NOT_ALLOWED,
        "request-timeout" => StatusCode::REQUEST_TIMEOUT,
        "key-exists" | "client-exists" | "usage-limit" | "wrong-purpose" | "version-retired"
        | "class-policy" | "last-protector" => StatusCode::CONFLICT,
        "payload-too-large" => StatusCode::PAYLOAD_TOO_LARGE,
        "decryption-failed" | "invalid-signature" | "replay" | "not-fresh" | "truncated" => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        "locked" => StatusCode::LOCKED,
        "secret-required" => StatusCode::PRECONDITION_REQUIRED,
        "device-not-found" | "device-removed" | "wrong-device" | "device" | "busy"
        | "shutting-down" | "touch-timeout" | "not-supported" => StatusCode::SERVICE_UNAVAILABLE,
        "internal" | "store" | "audit-write" | "audit-tampered" => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => match exit {
            Exit::Usage => StatusCode::BAD_REQUEST,
            Exit::Auth => StatusCode::UNAUTHORIZED,
            Exit::NotFound => StatusCode::NOT_FOUND,
            Exit::Integrity => StatusCode::UNPROCESSABLE_ENTITY,
            Exit::Refused => StatusCode::CONFLICT,
            Exit::Device | Exit::Store => StatusCode::SERVICE_UNAVAILABLE,
            Exit::Failure | Exit::BrokenPipe => StatusCode::INTERNAL_SERVER_ERROR,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kms_errors_get_the_documented_status_and_exit() {
        let cases = [
            (Error::Locked, 423, "locked", 3),
            (Error::WrongPassphrase, 401, "wrong-passphrase", 3),
            (Error::DecryptionFailed, 422, "decryption-failed", 5),
            (
                Error::KeyNotFound { name: "k".into() },
                404,
                "key-not-found",
                4,
            ),
            (
                Error::VersionRetired {
                    name: "k".into(),
                    version: 1,
                    min_decryption_version: 2,
                },
                409,
                "version-retired",
                6,
            ),
            (Error::Unauthorized, 401, "unauthorized", 3),
            (Error::StoreBusy, 503, "busy", 8),
            (Error::Malformed { what: "header" }, 400, "malformed", 5),
        ];
        for (err, status, code, exit) in cases {
            let api = ApiError::from(&err);
            assert_eq!(
                (api.status.as_u16(), api.code, api.exit),
                (status, code, exit),
                "{err:?}"
            );
        }
    }

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
