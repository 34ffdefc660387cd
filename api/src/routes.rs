//! Every route of `/v1` (docs/API.md, "Endpoints"): its method and path
//! template, as the daemon's router and the client both name it.

use std::fmt;
use std::fmt::Write as _;

/// An HTTP method the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
    /// `DELETE`.
    Delete,
}

impl Method {
    /// The method as HTTP spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Delete => "DELETE",
        }
    }

    /// Whether requests with this method carry a JSON body.
    pub fn has_body(self) -> bool {
        self == Self::Post
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET`: the daemon's status.
pub const STATUS: &str = "/v1/status";
/// `POST`: unlock.
pub const UNLOCK: &str = "/v1/unlock";
/// `POST`: lock.
pub const LOCK: &str = "/v1/lock";
/// `POST`: encrypt.
pub const ENCRYPT: &str = "/v1/encrypt";
/// `POST`: decrypt.
pub const DECRYPT: &str = "/v1/decrypt";
/// `POST`: encrypt a batch.
pub const ENCRYPT_BATCH: &str = "/v1/encrypt/batch";
/// `POST`: decrypt a batch.
pub const DECRYPT_BATCH: &str = "/v1/decrypt/batch";
/// `POST`: rewrap.
pub const REWRAP: &str = "/v1/rewrap";
/// `POST`: a new data key.
pub const DATAKEY_GENERATE: &str = "/v1/datakey/generate";
/// `POST`: unwrap a data key.
pub const DATAKEY_UNWRAP: &str = "/v1/datakey/unwrap";
/// `POST`: sign.
pub const SIGN: &str = "/v1/sign";
/// `POST`: verify.
pub const VERIFY: &str = "/v1/verify";
/// `POST`: sign with a device protector's key.
pub const DEVICE_SIGN: &str = "/v1/device/sign";
/// `GET`: list keys; `POST`: create one.
pub const KEYS: &str = "/v1/keys";
/// `GET`: one key.
pub const KEY: &str = "/v1/keys/{name}";
/// `GET`: a key's public key.
pub const KEY_PUBLIC: &str = "/v1/keys/{name}/public";
/// `POST`: rotate a key.
pub const KEY_ROTATE: &str = "/v1/keys/{name}/rotate";
/// `POST`: retire a key's old versions.
pub const KEY_RETIRE: &str = "/v1/keys/{name}/retire";
/// `POST`: rotate the keys due.
pub const ROTATE_DUE: &str = "/v1/rotate-due";
/// `POST`: rotate the master key.
pub const MASTER_ROTATE: &str = "/v1/master/rotate";
/// `GET`: list clients; `POST`: add one.
pub const CLIENTS: &str = "/v1/clients";
/// `POST`: revoke every client.
pub const CLIENTS_REVOKE_ALL: &str = "/v1/clients/revoke-all";
/// `DELETE`: revoke a client.
pub const CLIENT: &str = "/v1/clients/{name}";
/// `GET`: audit records.
pub const AUDIT: &str = "/v1/audit";
/// `GET`: verify the audit log.
pub const AUDIT_VERIFY: &str = "/v1/audit/verify";
/// `GET`: the security-event stream.
pub const EVENTS: &str = "/v1/events";

/// Fills the `{name}` of a path template with `name` as one path segment:
/// names are `[A-Za-z0-9._-]`, and anything else is percent-encoded, so the
/// daemon refuses it cleanly rather than routing it elsewhere.
pub fn with_name(template: &str, name: &str) -> String {
    let mut segment = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            segment.push(char::from(b));
        } else {
            let _ = write!(segment, "%{b:02X}");
        }
    }
    template.replace("{name}", &segment)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_one_path_segment() {
        assert_eq!(
            super::with_name(super::CLIENT, "bot-1.a_b"),
            "/v1/clients/bot-1.a_b"
        );
        assert_eq!(
            super::with_name(super::KEY, "../x y"),
            "/v1/keys/..%2Fx%20y"
        );
    }
}
