//! Client credentials of the daemon (docs/API.md, "Authentication and
//! grants").
//!
//! A client is a named application (the assistant) holding a bearer token
//! and a grant: which operations it may perform on which keys. The token is
//! 32 random bytes shown once at creation (`kwt_` + base64url); the store
//! keeps only its SHA-256, so a copy of the store yields no usable token.
//! Tokens carry 256 bits of entropy, so a plain hash (no salt, no stretching)
//! is enough: there is nothing to guess.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::KeyName;
use crate::secret::{ExposeSecret, SecretString, random_bytes};
use crate::{Error, Result};

/// The prefix of every client token.
pub const TOKEN_PREFIX: &str = "kwt_";

/// The grant entry that stands for every key.
pub const ALL_KEYS: &str = "*";

/// An operation a client can be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Encrypt under a key.
    Encrypt,
    /// Decrypt data written under a key.
    Decrypt,
    /// Re-encrypt to a key's newest version without seeing the plaintext.
    Rewrap,
    /// Generate and unwrap data keys (envelope encryption).
    Datakey,
    /// Sign with a signing key.
    Sign,
    /// Verify signatures.
    Verify,
    /// List and show keys, export public keys.
    Keys,
}

impl Operation {
    /// Every grantable operation.
    pub const ALL: [Self; 7] = [
        Self::Encrypt,
        Self::Decrypt,
        Self::Rewrap,
        Self::Datakey,
        Self::Sign,
        Self::Verify,
        Self::Keys,
    ];

    /// The name used in grants and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::Rewrap => "rewrap",
            Self::Datakey => "datakey",
            Self::Sign => "sign",
            Self::Verify => "verify",
            Self::Keys => "keys",
        }
    }
}

crate::keys::by_name!(
    Operation,
    "unknown operation '{s}' (expected one of: encrypt, decrypt, rewrap, datakey, sign, verify, \
     keys)"
);

/// A client as listed (never its token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Its name.
    pub name: String,
    /// Granted operations.
    pub allow: Vec<Operation>,
    /// Granted keys (`*`: all).
    pub keys: Vec<String>,
    /// Unix time of creation.
    pub created_at: i64,
    /// Unix time of the last authenticated request (updated at most once a
    /// minute).
    pub last_used_at: Option<i64>,
    /// Unix time of revocation; a revoked client cannot authenticate.
    pub revoked_at: Option<i64>,
}

impl ClientInfo {
    /// Whether the grant allows `op`, on `key` when the operation names one
    /// (`None`: an operation on no particular key, such as listing keys).
    pub fn permits(&self, op: Operation, key: Option<&KeyName>) -> bool {
        self.revoked_at.is_none()
            && self.allow.contains(&op)
            && key.is_none_or(|k| self.permits_key(k))
    }

    /// Whether the grant names `key` (or every key).
    pub fn permits_key(&self, key: &KeyName) -> bool {
        self.keys
            .iter()
            .any(|k| k == ALL_KEYS || k.as_str() == key.as_str())
    }

    /// The error for a refused request.
    pub fn forbidden(&self, op: Operation, key: Option<&KeyName>) -> Error {
        Error::Forbidden {
            client: self.name.clone(),
            operation: op.as_str().to_owned(),
            key: key.map(ToString::to_string),
        }
    }
}

/// Checks a client name: 1 to 64 characters of `[A-Za-z0-9._-]`, not
/// starting with a dot or dash.
///
/// # Errors
/// `InvalidArgument`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            what: format!(
                "client name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-', \
                 not starting with '.' or '-'"
            ),
        })
    }
}

/// Checks and normalizes a grant: at least one operation, at least one key,
/// each key a valid name or `*`. Returns sorted, de-duplicated lists.
///
/// # Errors
/// `InvalidArgument`, `InvalidKeyName`.
pub fn check_grant(allow: &[Operation], keys: &[String]) -> Result<(Vec<Operation>, Vec<String>)> {
    if allow.is_empty() {
        return Err(Error::InvalidArgument {
            what: "a client needs at least one allowed operation".into(),
        });
    }
    if keys.is_empty() {
        return Err(Error::InvalidArgument {
            what: "a client needs at least one key (or '*' for every key)".into(),
        });
    }
    for k in keys {
        if k != ALL_KEYS {
            KeyName::new(k)?;
        }
    }
    let mut allow = allow.to_vec();
    allow.sort_unstable();
    allow.dedup();
    let mut keys = keys.to_vec();
    keys.sort();
    keys.dedup();
    Ok((allow, keys))
}

/// A fresh token: `kwt_` and 32 random bytes in base64url.
///
/// # Errors
/// `Random`.
pub fn new_token() -> Result<SecretString> {
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    random_bytes(&mut raw[..])?;
    let mut token = String::with_capacity(TOKEN_PREFIX.len() + 43);
    token.push_str(TOKEN_PREFIX);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(&raw[..], &mut token);
    Ok(SecretString::from(token))
}

/// The stored form of a token.
pub fn token_hash(token: &SecretString) -> [u8; 32] {
    Sha256::digest(token.expose_secret().as_bytes()).into()
}

/// Whether `token` looks like a keyward token (prefix and length), so a
/// stray value is refused before any lookup.
pub fn looks_like_token(token: &str) -> bool {
    token.len() == TOKEN_PREFIX.len() + 43
        && token.starts_with(TOKEN_PREFIX)
        && token[TOKEN_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(allow: &[Operation], keys: &[&str]) -> ClientInfo {
        ClientInfo {
            name: "assistant".into(),
            allow: allow.to_vec(),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            created_at: 0,
            last_used_at: None,
            revoked_at: None,
        }
    }

    #[test]
    fn grants_are_checked_per_operation_and_key() {
        let store = KeyName::new("assistant-store").expect("valid");
        let other = KeyName::new("health").expect("valid");
        let c = client(&[Operation::Decrypt], &["assistant-store"]);
        assert!(c.permits(Operation::Decrypt, Some(&store)));
        assert!(!c.permits(Operation::Decrypt, Some(&other)));
        assert!(!c.permits(Operation::Encrypt, Some(&store)));
        assert!(!c.permits(Operation::Keys, None));
        let all = client(&[Operation::Keys], &["*"]);
        assert!(all.permits(Operation::Keys, Some(&other)));
        let mut revoked = all.clone();
        revoked.revoked_at = Some(1);
        assert!(!revoked.permits(Operation::Keys, Some(&other)));
    }

    #[test]
    fn tokens_have_the_documented_shape() {
        let t = new_token().expect("os rng");
        assert!(
            looks_like_token(t.expose_secret()),
            "{}",
            t.expose_secret().len()
        );
        assert_ne!(token_hash(&t), token_hash(&new_token().expect("os rng")));
        assert!(!looks_like_token("kwt_short"));
        assert!(!looks_like_token(&format!("xyz_{}", "A".repeat(43))));
    }

    #[test]
    fn names_and_grants_are_validated() {
        assert!(check_name("assistant").is_ok());
        for bad in ["", ".hidden", "-x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_grant(&[], &["*".into()]).is_err());
        assert!(check_grant(&[Operation::Decrypt], &[]).is_err());
        assert!(check_grant(&[Operation::Decrypt], &["../x".into()]).is_err());
        let (ops, keys) = check_grant(
            &[Operation::Sign, Operation::Decrypt, Operation::Sign],
            &["b".into(), "a".into(), "a".into()],
        )
        .expect("valid");
        assert_eq!(ops, [Operation::Decrypt, Operation::Sign]);
        assert_eq!(keys, ["a", "b"]);
    }

    #[test]
    fn operations_parse_from_their_names() {
        for op in Operation::ALL {
            assert_eq!(op.as_str().parse::<Operation>().expect("known"), op);
        }
        assert!("admin".parse::<Operation>().is_err());
    }
}
