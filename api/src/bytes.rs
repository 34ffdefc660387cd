//! The two string encodings of the API that hold secrets: byte strings as
//! standard base64 ([`Bytes`]) and secrets typed by a user ([`SecretText`]).
//!
//! Both may hold plaintext, a data key or a PIN, so both decode into
//! zeroizing buffers, encode through one, and never print their content.

use std::fmt;

use base64::Engine as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use zeroize::Zeroizing;

/// Longest secret accepted (as the CLI's secret sources).
const MAX_SECRET_LEN: usize = 4096;

/// A byte string, sent as standard base64 with padding. Zeroized on drop:
/// it may be plaintext or a key.
#[derive(Default, PartialEq, Eq)]
pub struct Bytes(Zeroizing<Vec<u8>>);

impl Bytes {
    /// Takes `bytes` (moved, not copied).
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A copy of `bytes`.
    pub fn copy_of(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes, in their zeroizing buffer.
    pub fn into_inner(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Base64([REDACTED; {}])", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_secret(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct B64Visitor;
        impl Visitor<'_> for B64Visitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a standard base64 string")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Bytes, E> {
                let engine = &base64::engine::general_purpose::STANDARD;
                let mut out = Zeroizing::new(vec![0u8; base64::decoded_len_estimate(text.len())]);
                let len = engine
                    .decode_slice(text, &mut out)
                    .map_err(|_| E::custom("not standard base64 (with padding)"))?;
                out.truncate(len);
                Ok(Bytes(out))
            }
        }
        deserializer.deserialize_str(B64Visitor)
    }
}

impl utoipa::PartialSchema for Bytes {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_encoding("base64")
            .description(Some("bytes, standard base64 with padding"))
            .into()
    }
}

impl utoipa::ToSchema for Bytes {}

/// Serializes bytes as standard base64 through a zeroizing buffer.
///
/// # Errors
/// The serializer's.
pub fn serialize_secret<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    let engine = &base64::engine::general_purpose::STANDARD;
    let mut text = Zeroizing::new(String::with_capacity(bytes.len().div_ceil(3) * 4));
    engine.encode_string(bytes, &mut text);
    s.serialize_str(&text)
}

/// Standard base64 (with padding) of non-secret bytes.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A secret sent as a JSON string (a PIN, a passphrase, a recovery key, a
/// client token), held as a [`SecretString`] from the moment it is decoded.
pub struct SecretText(SecretString);

impl SecretText {
    /// Wraps a secret.
    pub fn new(secret: SecretString) -> Self {
        Self(secret)
    }

    /// The secret.
    pub fn secret(&self) -> &SecretString {
        &self.0
    }

    /// The secret, unwrapped.
    pub fn into_secret(self) -> SecretString {
        self.0
    }
}

impl From<SecretString> for SecretText {
    fn from(secret: SecretString) -> Self {
        Self(secret)
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretText([REDACTED])")
    }
}

impl Serialize for SecretText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.expose_secret())
    }
}

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = SecretText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<SecretText, E> {
                if text.len() > MAX_SECRET_LEN {
                    return Err(E::custom("secret too long"));
                }
                // An exact-size copy: no reallocation leaves a copy behind.
                let mut exact = String::with_capacity(text.len());
                exact.push_str(text);
                Ok(SecretText(SecretString::from(exact)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

impl utoipa::PartialSchema for SecretText {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .max_length(Some(MAX_SECRET_LEN))
            .description(Some("a secret (never logged, never echoed)"))
            .into()
    }
}

impl utoipa::ToSchema for SecretText {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_never_print() {
        let b: Bytes = serde_json::from_str(r#""aGk=""#).expect("base64");
        assert_eq!(b.bytes(), b"hi");
        assert_eq!(format!("{b:?}"), "Base64([REDACTED; 2])");
        assert_eq!(serde_json::to_string(&b).expect("json"), r#""aGk=""#);
        let err = serde_json::from_str::<Bytes>(r#""%%%""#).expect_err("not base64");
        assert!(err.to_string().contains("base64"), "{err}");
        let s: SecretText = serde_json::from_str(r#""1234""#).expect("secret");
        assert_eq!(format!("{s:?}"), "SecretText([REDACTED])");
        assert_eq!(serde_json::to_string(&s).expect("json"), r#""1234""#);
    }
}
