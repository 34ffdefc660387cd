//! The key hierarchy's types: master key, key names, purposes, data classes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::secret::Secret32;
use crate::{Error, Result};

/// The keystore's master key and its epoch.
///
/// The epoch starts at 1 and grows by one at every master-key rotation; it is
/// bound into every wrap of the master key so that an old wrapped copy cannot
/// be presented as the current one.
#[derive(Debug)]
pub struct MasterKey {
    key: Secret32,
    epoch: u32,
}

impl MasterKey {
    /// A fresh random master key at `epoch`.
    ///
    /// # Errors
    /// [`Error::Random`] if the OS RNG fails.
    pub fn generate(epoch: u32) -> Result<Self> {
        Ok(Self {
            key: Secret32::random()?,
            epoch,
        })
    }

    /// Wraps existing key material (after an unwrap).
    pub fn from_secret(key: Secret32, epoch: u32) -> Self {
        Self { key, epoch }
    }

    /// The key material.
    pub fn secret(&self) -> &Secret32 {
        &self.key
    }

    /// The epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }
}

/// What a named key is for. A key never serves both purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyPurpose {
    /// AES-256-GCM encryption.
    Encrypt,
    /// Ed25519 signatures.
    Sign,
}

impl KeyPurpose {
    /// Every purpose.
    pub const ALL: [Self; 2] = [Self::Encrypt, Self::Sign];

    /// The name used in the CLI, JSON and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Encrypt => "encrypt",
            Self::Sign => "sign",
        }
    }

    /// The byte bound into key-wrap derivations (docs/FORMAT.md).
    pub fn code(self) -> u8 {
        match self {
            Self::Encrypt => 1,
            Self::Sign => 2,
        }
    }
}

/// `Display` and `FromStr` for a fieldless enum by the names its `as_str`
/// gives, so that each name is written once. Every variant is in the
/// enum's `ALL`; `$unknown` (a format string that may name `s`) is the
/// `InvalidArgument` for any other name.
macro_rules! by_name {
    ($t:ty, $unknown:literal) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $t {
            type Err = $crate::Error;
            fn from_str(s: &str) -> $crate::Result<Self> {
                Self::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| $crate::Error::InvalidArgument {
                        what: format!($unknown, s = s),
                    })
            }
        }
    };
}
pub(crate) use by_name;

by_name!(
    KeyPurpose,
    "unknown key purpose {s:?} (expected encrypt or sign)"
);

/// The data class of a key (docs/DESIGN.md, "Data classes"). Bound into the AAD
/// of everything encrypted under the key, so editing the store cannot
/// downgrade it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataClass {
    /// Memory only: key material is never written to the store.
    Secret,
    /// Health, financial: never leaves this device.
    Sensitive,
    /// Schedules, contacts: local, plus encrypted backup or sync.
    Private,
    /// No restriction beyond encryption.
    General,
}

impl DataClass {
    /// Every class.
    pub const ALL: [Self; 4] = [Self::Secret, Self::Sensitive, Self::Private, Self::General];

    /// The name used in the CLI, JSON and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Secret => "secret",
            Self::Sensitive => "sensitive",
            Self::Private => "private",
            Self::General => "general",
        }
    }

    /// The byte bound into AAD and key-wrap derivations (docs/FORMAT.md).
    pub fn code(self) -> u8 {
        match self {
            Self::Secret => 1,
            Self::Sensitive => 2,
            Self::Private => 3,
            Self::General => 4,
        }
    }

    /// Inverse of [`DataClass::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Secret),
            2 => Some(Self::Sensitive),
            3 => Some(Self::Private),
            4 => Some(Self::General),
            _ => None,
        }
    }
}

by_name!(
    DataClass,
    "unknown data class {s:?} (expected secret, sensitive, private or general)"
);

/// A validated key name: 1 to 64 bytes of `[a-z0-9._-]`, starting with a
/// letter or digit. Names appear in ciphertext headers, so they are kept
/// short, ASCII and free of path-like characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyName(String);

impl KeyName {
    /// Longest accepted name, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Validates `name`.
    ///
    /// # Errors
    /// [`Error::InvalidKeyName`] with the reason.
    pub fn new(name: &str) -> Result<Self> {
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.len() > Self::MAX_LEN {
            Some("longer than 64 bytes")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            Some("only a-z, 0-9, '.', '_' and '-' are allowed")
        } else if !name.as_bytes()[0].is_ascii_alphanumeric() {
            Some("must start with a letter or digit")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidKeyName {
                name: name.chars().take(80).collect(),
                reason,
            }),
            None => Ok(Self(name.to_owned())),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for KeyName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(&s)
    }
}

impl From<KeyName> for String {
    fn from(n: KeyName) -> Self {
        n.0
    }
}

impl FromStr for KeyName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names() {
        for ok in ["a", "assistant-store", "k.v1_x", "0abc"] {
            assert!(KeyName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "-x",
            ".x",
            "a/b",
            "../x",
            "a\0b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(KeyName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn class_codes_round_trip() {
        for c in [
            DataClass::Secret,
            DataClass::Sensitive,
            DataClass::Private,
            DataClass::General,
        ] {
            assert_eq!(DataClass::from_code(c.code()), Some(c));
            assert_eq!(c.as_str().parse::<DataClass>().expect("name"), c);
        }
        assert_eq!(DataClass::from_code(0), None);
    }
}
