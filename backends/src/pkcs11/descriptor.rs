//! The PKCS#11 enrollment descriptor (the `params` of an [`Enrollment`]) and
//! the device-side wrap format of the `aes-gcm` mode. Both are specified in
//! docs/PKCS11.md, with vectors checked below.
//!
//! We store how to *find* the key again, never handles or slot ids, which
//! change between processes (docs/HARDWARE.md): the token's label and serial,
//! the key's CKA_ID and CKA_LABEL, and the module path used at enrollment
//! as a last-resort hint.

use std::path::PathBuf;

use keyward_kms::{BackendKind, Enrollment, Error, Result};
use serde_json::{Value, json};

use super::uri::{Uri, percent_encode};

/// Descriptor format version.
pub const DESCRIPTOR_VERSION: u64 = 1;

/// How the master key is wrapped to the token (kms's type, under the
/// name this module has always used).
pub use keyward_kms::backend::options::Pkcs11Mode as Mode;

/// An Ed25519 signing key pair enrolled beside the wrapping key
/// (`sign=ed25519`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignKey {
    /// CKA_ID of the key pair (distinct from the wrapping key's).
    pub id: Vec<u8>,
    /// CKA_LABEL.
    pub label: String,
    /// The 32-byte Ed25519 public key.
    pub public: Vec<u8>,
}

/// Everything stored to find the enrolled key again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Wrap mode.
    pub mode: Mode,
    /// CK_TOKEN_INFO.label (trailing blanks removed).
    pub token_label: String,
    /// CK_TOKEN_INFO.serialNumber (trailing blanks removed).
    pub token_serial: String,
    /// Token manufacturer, informational.
    pub manufacturer: String,
    /// Token model, informational.
    pub model: String,
    /// CKA_ID of the key (pair).
    pub key_id: Vec<u8>,
    /// CKA_LABEL of the key (pair).
    pub key_label: String,
    /// Module path used at enrollment (a hint; `--module` and
    /// `KEYWARD_PKCS11_MODULE` take precedence).
    pub module: Option<PathBuf>,
    /// The Ed25519 signing key, if enrolled; without it the ecdh key signs
    /// with ECDSA.
    pub sign: Option<SignKey>,
}

impl Descriptor {
    /// The `params` JSON.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "v": DESCRIPTOR_VERSION,
            "mode": self.mode.as_str(),
            "token": {
                "label": self.token_label,
                "serial": self.token_serial,
                "manufacturer": self.manufacturer,
                "model": self.model,
            },
            "key": {
                "id": hex::encode(&self.key_id),
                "label": self.key_label,
            },
            "module": self.module.as_ref().map(|m| m.to_string_lossy().into_owned()),
        });
        if let (Some(k), Some(map)) = (&self.sign, v.as_object_mut()) {
            map.insert(
                "sign".into(),
                json!({
                    "alg": "ed25519",
                    "id": hex::encode(&k.id),
                    "label": k.label,
                    "public": hex::encode(&k.public),
                }),
            );
        }
        v
    }

    /// Reads the `params` of `enrollment`, which must be a PKCS#11 one.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an enrollment of another kind;
    /// [`Error::Malformed`] if a field is missing or of the wrong type;
    /// [`Error::UnsupportedFormat`] for another descriptor version.
    pub fn from_enrollment(enrollment: &Enrollment) -> Result<Self> {
        enrollment.check_kind(BackendKind::Pkcs11)?;
        Self::from_json(&enrollment.params)
    }

    /// Parses the `params` JSON.
    ///
    /// # Errors
    /// As [`Descriptor::from_enrollment`].
    pub fn from_json(params: &Value) -> Result<Self> {
        let malformed = |what| Error::Malformed { what };
        let version = params
            .get("v")
            .and_then(Value::as_u64)
            .ok_or(malformed("pkcs11 descriptor has no version"))?;
        if version != DESCRIPTOR_VERSION {
            return Err(Error::UnsupportedFormat {
                version: u8::try_from(version).unwrap_or(u8::MAX),
                supported: 1,
            });
        }
        let text = |v: Option<&Value>, what| {
            v.and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or(malformed(what))
        };
        let mode = text(params.get("mode"), "pkcs11 descriptor: mode")?
            .parse::<Mode>()
            .map_err(|_| malformed("pkcs11 descriptor: unknown mode"))?;
        let token = params
            .get("token")
            .ok_or(malformed("pkcs11 descriptor: token"))?;
        let key = params
            .get("key")
            .ok_or(malformed("pkcs11 descriptor: key"))?;
        let key_id = hex::decode(text(key.get("id"), "pkcs11 descriptor: key id")?)
            .map_err(|_| malformed("pkcs11 descriptor: key id is not hex"))?;
        if key_id.is_empty() {
            return Err(malformed("pkcs11 descriptor: empty key id"));
        }
        let sign = match params.get("sign") {
            None | Some(Value::Null) => None,
            Some(k) => {
                if k.get("alg").and_then(Value::as_str) != Some("ed25519") {
                    return Err(malformed("pkcs11 descriptor: unknown signing algorithm"));
                }
                let id = hex::decode(text(k.get("id"), "pkcs11 descriptor: sign id")?)
                    .map_err(|_| malformed("pkcs11 descriptor: sign id is not hex"))?;
                let public = hex::decode(text(k.get("public"), "pkcs11 descriptor: sign key")?)
                    .map_err(|_| malformed("pkcs11 descriptor: sign key is not hex"))?;
                if id.is_empty() || public.len() != 32 {
                    return Err(malformed("pkcs11 descriptor: bad Ed25519 key reference"));
                }
                Some(SignKey {
                    id,
                    label: text(k.get("label"), "pkcs11 descriptor: sign label")?,
                    public,
                })
            }
        };
        Ok(Self {
            sign,
            mode,
            token_label: text(token.get("label"), "pkcs11 descriptor: token label")?,
            token_serial: text(token.get("serial"), "pkcs11 descriptor: token serial")?,
            manufacturer: text(token.get("manufacturer"), "pkcs11 descriptor: manufacturer")
                .unwrap_or_default(),
            model: text(token.get("model"), "pkcs11 descriptor: model").unwrap_or_default(),
            key_id,
            key_label: text(key.get("label"), "pkcs11 descriptor: key label")?,
            module: params
                .get("module")
                .and_then(Value::as_str)
                .map(PathBuf::from),
        })
    }

    /// The device identity shown to users and stored as
    /// `Enrollment::device_id`: `pkcs11:token=…;serial=…`.
    pub fn device_id(&self) -> String {
        token_identity(&self.token_label, &self.token_serial)
    }

    /// A URI naming exactly this key, for `pkcs11-tool`, p11tool, openssl.
    pub fn key_uri(&self) -> String {
        Uri {
            token: Some(self.token_label.clone()),
            serial: Some(self.token_serial.clone()),
            object: Some(self.key_label.clone()),
            id: Some(self.key_id.clone()),
            ..Uri::default()
        }
        .to_string()
    }
}

/// `pkcs11:token=LABEL;serial=SERIAL`, percent-encoded.
pub fn token_identity(label: &str, serial: &str) -> String {
    format!(
        "pkcs11:token={};serial={}",
        percent_encode(label.as_bytes()),
        percent_encode(serial.as_bytes())
    )
}

/// Version byte of an `aes-gcm` wrapped blob.
pub const AES_GCM_BLOB_VERSION: u8 = 0x02;
/// GCM IV length.
pub const GCM_IV_LEN: usize = 12;
/// GCM tag length.
pub const GCM_TAG_LEN: usize = 16;
/// Length of an `aes-gcm` blob wrapping a 32-byte secret:
/// `0x02 || iv (12) || ciphertext (32) || tag (16)`.
pub const AES_GCM_BLOB_LEN: usize = 1 + GCM_IV_LEN + 32 + GCM_TAG_LEN;

/// Splits an `aes-gcm` blob into IV and ciphertext‖tag.
///
/// # Errors
/// [`Error::Malformed`], [`Error::UnsupportedFormat`].
pub fn split_aes_gcm_blob(blob: &[u8]) -> Result<([u8; GCM_IV_LEN], &[u8])> {
    if blob.len() != AES_GCM_BLOB_LEN {
        return Err(Error::Malformed {
            what: "pkcs11 aes-gcm wrapped key has the wrong length",
        });
    }
    if blob[0] != AES_GCM_BLOB_VERSION {
        return Err(Error::UnsupportedFormat {
            version: blob[0],
            supported: AES_GCM_BLOB_VERSION,
        });
    }
    let mut iv = [0u8; GCM_IV_LEN];
    iv.copy_from_slice(&blob[1..=GCM_IV_LEN]);
    Ok((iv, &blob[1 + GCM_IV_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Descriptor {
        Descriptor {
            mode: Mode::Ecdh,
            token_label: "My Token".into(),
            token_serial: "8a0c2c6e1f6d3b4a".into(),
            manufacturer: "SoftHSM project".into(),
            model: "SoftHSM v2".into(),
            key_id: vec![0x01, 0x02, 0xff],
            key_label: "keyward laptop".into(),
            module: Some(PathBuf::from("/usr/lib/softhsm/libsofthsm2.so")),
            sign: None,
        }
    }

    #[test]
    fn json_vector() {
        // The vector in docs/PKCS11.md, byte for byte.
        let expected = r#"{"key":{"id":"0102ff","label":"keyward laptop"},"mode":"ecdh","module":"/usr/lib/softhsm/libsofthsm2.so","token":{"label":"My Token","manufacturer":"SoftHSM project","model":"SoftHSM v2","serial":"8a0c2c6e1f6d3b4a"},"v":1}"#;
        let d = sample();
        assert_eq!(d.to_json().to_string(), expected);
        let back =
            Descriptor::from_json(&serde_json::from_str(expected).expect("json")).expect("parses");
        assert_eq!(back, d);
        assert_eq!(
            d.device_id(),
            "pkcs11:token=My%20Token;serial=8a0c2c6e1f6d3b4a"
        );
        assert_eq!(
            d.key_uri(),
            "pkcs11:serial=8a0c2c6e1f6d3b4a;token=My%20Token;object=keyward%20laptop;id=%01%02%FF"
        );
        let e = Enrollment {
            kind: BackendKind::Pkcs11,
            device_id: Some(d.device_id()),
            public_key: vec![],
            params: d.to_json(),
        };
        assert_eq!(Descriptor::from_enrollment(&e).expect("parses"), d);
        // The same params under another kind are refused.
        let foreign = Enrollment {
            kind: BackendKind::Recovery,
            ..e
        };
        assert!(matches!(
            Descriptor::from_enrollment(&foreign),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn sign_key_vector() {
        let mut d = sample();
        d.sign = Some(SignKey {
            id: vec![0xaa, 0xbb],
            label: "keyward laptop ed25519".into(),
            public: vec![0x11; 32],
        });
        let text = d.to_json().to_string();
        assert!(
            text.contains(&format!(
                r#""sign":{{"alg":"ed25519","id":"aabb","label":"keyward laptop ed25519","public":"{}"}}"#,
                "11".repeat(32)
            )),
            "{text}"
        );
        let back = Descriptor::from_json(&serde_json::from_str(&text).expect("json")).expect("ok");
        assert_eq!(back, d);
        for (path, value) in [
            ("/sign/alg", json!("rsa")),
            ("/sign/public", json!("11")),
            ("/sign/id", json!("")),
        ] {
            let mut v = d.to_json();
            *v.pointer_mut(path).expect("path") = value;
            assert!(Descriptor::from_json(&v).is_err(), "{v}");
        }
    }

    #[test]
    fn bad_descriptors_refused() {
        let good = sample().to_json();
        let mut cases = Vec::new();
        for (path, value) in [
            ("/v", json!(2)),
            ("/v", json!("1")),
            ("/mode", json!("rsa")),
            ("/key/id", json!("zz")),
            ("/key/id", json!("")),
            ("/key/label", json!(5)),
            ("/token/serial", Value::Null),
        ] {
            let mut v = good.clone();
            *v.pointer_mut(path).expect("path exists") = value;
            cases.push(v);
        }
        cases.push(json!({}));
        cases.push(json!([]));
        cases.push(Value::Null);
        for c in cases {
            assert!(Descriptor::from_json(&c).is_err(), "{c}");
        }
    }

    #[test]
    fn aes_blob_split() {
        let mut blob = vec![AES_GCM_BLOB_VERSION];
        blob.extend_from_slice(&[7u8; 12]);
        blob.extend_from_slice(&[9u8; 48]);
        let (iv, ct) = split_aes_gcm_blob(&blob).expect("valid");
        assert_eq!(iv, [7u8; 12]);
        assert_eq!(ct, &[9u8; 48][..]);
        assert!(split_aes_gcm_blob(&blob[..60]).is_err());
        blob[0] = 1;
        assert!(matches!(
            split_aes_gcm_blob(&blob),
            Err(Error::UnsupportedFormat { version: 1, .. })
        ));
    }
}
