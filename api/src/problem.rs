//! The error body of every failed request (docs/API.md, "Errors"):
//! `{"error": {"code", "message", "hint", "exit"}}`, and the HTTP status
//! each stable code takes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Exit;

/// What went wrong, as the API reports it (the object inside `"error"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// Stable code; scripts may match on it (the table of [`status_of`]).
    pub code: String,
    /// What happened, for humans.
    pub message: String,
    /// What to do, for humans.
    pub hint: Option<String>,
    /// The CLI exit code of the same failure.
    #[schema(value_type = u8)]
    pub exit: Exit,
    /// `secret-required` only: the secret the protector needs (`pin`,
    /// `puk`, `passphrase`, `recovery-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// `secret-required` only: which protector asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `secret-required` only: tries left before the device blocks, when
    /// it tells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tries_left: Option<u32>,
}

impl Problem {
    /// A problem with a code, an exit code and a message.
    pub fn new(code: impl Into<String>, exit: Exit, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            hint: None,
            exit,
            secret: None,
            description: None,
            tries_left: None,
        }
    }

    /// Adds (or replaces) the hint.
    #[must_use]
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The HTTP status this problem is answered with.
    pub fn status(&self) -> u16 {
        status_of(&self.code, self.exit)
    }
}

/// The body of an error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: Problem,
}

/// The HTTP status of an error code (docs/API.md, "Errors"). Codes outside
/// the table take the status their exit code suggests.
pub fn status_of(code: &str, exit: Exit) -> u16 {
    match code {
        "bad-request" | "invalid-argument" | "invalid-key-name" | "malformed" => 400,
        "unauthorized" | "wrong-pin" | "wrong-passphrase" | "wrong-recovery-key"
        | "pin-blocked" | "lockout" => 401,
        "forbidden" | "peer-rejected" => 403,
        "not-found"
        | "key-not-found"
        | "version-not-found"
        | "protector-not-found"
        | "client-not-found" => 404,
        "method-not-allowed" => 405,
        "request-timeout" => 408,
        "key-exists" | "client-exists" | "usage-limit" | "wrong-purpose" | "version-retired"
        | "class-policy" | "last-protector" => 409,
        "payload-too-large" => 413,
        "decryption-failed" | "invalid-signature" | "replay" | "not-fresh" | "truncated" => 422,
        "locked" => 423,
        "secret-required" => 428,
        "device-not-found" | "device-removed" | "wrong-device" | "device" | "busy"
        | "shutting-down" | "touch-timeout" | "not-supported" => 503,
        "internal" | "store" | "audit-write" | "audit-tampered" => 500,
        _ => match exit {
            Exit::Usage => 400,
            Exit::Auth => 401,
            Exit::NotFound => 404,
            Exit::Integrity => 422,
            Exit::Refused => 409,
            Exit::Device | Exit::Store => 503,
            Exit::Failure | Exit::BrokenPipe => 500,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_codes_and_unknown_codes_get_their_status() {
        assert_eq!(status_of("locked", Exit::Auth), 423);
        assert_eq!(status_of("secret-required", Exit::Auth), 428);
        assert_eq!(status_of("decryption-failed", Exit::Integrity), 422);
        assert_eq!(status_of("something-new", Exit::Refused), 409);
        assert_eq!(status_of("something-new", Exit::Device), 503);
    }

    #[test]
    fn the_error_body_reads_as_documented() {
        let body: ErrorBody = serde_json::from_str(
            r#"{"error": {"code": "locked", "message": "the keystore is locked",
                "hint": "unlock it: keyward unlock", "exit": 3}}"#,
        )
        .expect("error body");
        assert_eq!(body.error.exit, Exit::Auth);
        assert_eq!(body.error.status(), 423);
        let required: ErrorBody = serde_json::from_str(
            r#"{"error": {"code": "secret-required", "message": "m", "hint": null, "exit": 3,
                "secret": "pin", "description": "TPM", "tries_left": null}}"#,
        )
        .expect("secret-required");
        assert_eq!(required.error.secret.as_deref(), Some("pin"));
        assert_eq!(required.error.tries_left, None);
    }
}
