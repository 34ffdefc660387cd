//! RFC 7512 PKCS#11 URIs: `pkcs11:token=…;object=…;id=%01%02?module-path=…`.
//!
//! We parse the whole grammar leniently (any byte that is not a separator
//! may appear unescaped) but strictly where it matters:
//! - percent escapes must be complete hex pairs (`%4` and `%zz` are errors);
//! - string attributes must decode to UTF-8, `id` may be any bytes;
//! - an attribute may appear at most once (RFC 7512 §2.3: "an attribute …
//!   MUST NOT appear more than once");
//! - an unknown *path* attribute (including vendor `x-` ones) makes the URI
//!   refused: the path selects objects, and a selector we do not understand
//!   would make us pick a different object than the user meant (§2.3: a
//!   consumer that does not understand an attribute cannot tell whether it
//!   matches); unknown *query* attributes are ignored and listed in
//!   [`Uri::ignored`];
//! - `pin-value` is refused: keyward never takes a secret on a command line.
//!
//! Nothing here panics on any input (property-tested below).

use std::fmt::{self, Write as _};
use std::path::PathBuf;

use keyward_kms::{Error, Result};

/// The object class an URI's `type=` attribute names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectType {
    /// `type=public`.
    Public,
    /// `type=private`.
    Private,
    /// `type=secret-key`.
    SecretKey,
    /// `type=cert`.
    Cert,
    /// `type=data`.
    Data,
}

impl ObjectType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "public" => Self::Public,
            "private" => Self::Private,
            "secret-key" => Self::SecretKey,
            "cert" => Self::Cert,
            "data" => Self::Data,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Private => "private",
            Self::SecretKey => "secret-key",
            Self::Cert => "cert",
            Self::Data => "data",
        }
    }
}

/// A parsed PKCS#11 URI. Every field is optional; an absent field matches
/// anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uri {
    /// `token=`: CKA token label (CK_TOKEN_INFO.label).
    pub token: Option<String>,
    /// `manufacturer=`: token manufacturer.
    pub manufacturer: Option<String>,
    /// `model=`: token model.
    pub model: Option<String>,
    /// `serial=`: token serial number.
    pub serial: Option<String>,
    /// `object=`: CKA_LABEL of the key.
    pub object: Option<String>,
    /// `id=`: CKA_ID of the key (raw bytes).
    pub id: Option<Vec<u8>>,
    /// `type=`: object class.
    pub object_type: Option<ObjectType>,
    /// `slot-id=`: a slot number (only used to select a token at enrollment;
    /// never stored, slot ids change between processes).
    pub slot_id: Option<u64>,
    /// `slot-description=`.
    pub slot_description: Option<String>,
    /// `slot-manufacturer=`.
    pub slot_manufacturer: Option<String>,
    /// `library-manufacturer=`.
    pub library_manufacturer: Option<String>,
    /// `library-description=`.
    pub library_description: Option<String>,
    /// `library-version=` as (major, minor).
    pub library_version: Option<(u8, u8)>,
    /// `?module-path=`: the PKCS#11 module to load.
    pub module_path: Option<PathBuf>,
    /// `?module-name=`: a module name (`softhsm2`); resolved against the
    /// usual library directories.
    pub module_name: Option<String>,
    /// `?pin-source=`: a file holding the PIN (a path or a `file:` URI).
    pub pin_source: Option<PathBuf>,
    /// Query attributes we did not recognise (ignored, RFC 7512 §2.3).
    pub ignored: Vec<String>,
}

impl Uri {
    /// Parses a PKCS#11 URI.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming what is wrong: not a `pkcs11:` URI,
    /// a bad percent escape, a duplicate or unknown path attribute,
    /// `pin-value`, or a value of the wrong form.
    pub fn parse(input: &str) -> Result<Self> {
        let bad = |what: String| Error::InvalidArgument {
            what: format!("PKCS#11 URI: {what}"),
        };
        let trimmed = input.trim();
        let rest = match trimmed.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("pkcs11:") => &trimmed[7..],
            _ => {
                return Err(bad(
                    "it must start with \"pkcs11:\" (RFC 7512), e.g. pkcs11:token=MyToken".into(),
                ));
            }
        };
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut uri = Self::default();
        let mut seen: Vec<String> = Vec::new();
        for part in path.split(';').filter(|p| !p.is_empty()) {
            let (name, raw) = split_attr(part).map_err(&bad)?;
            if seen.iter().any(|s| *s == name) {
                return Err(bad(format!("attribute {name:?} appears twice")));
            }
            seen.push(name.to_owned());
            let value = percent_decode(raw).map_err(&bad)?;
            uri.set_path_attr(name, value).map_err(&bad)?;
        }
        if let Some(query) = query {
            for part in query.split('&').filter(|p| !p.is_empty()) {
                let (name, raw) = split_attr(part).map_err(&bad)?;
                let known = matches!(
                    name,
                    "module-path" | "module-name" | "pin-source" | "pin-value"
                );
                if known && seen.iter().any(|s| *s == name) {
                    return Err(bad(format!("attribute {name:?} appears twice")));
                }
                seen.push(name.to_owned());
                let value = percent_decode(raw).map_err(&bad)?;
                uri.set_query_attr(name, value).map_err(&bad)?;
            }
        }
        Ok(uri)
    }

    fn set_path_attr(&mut self, name: &str, value: Vec<u8>) -> Result<(), String> {
        let text = |v: Vec<u8>| {
            String::from_utf8(v).map_err(|_| format!("{name:?} is not valid UTF-8 once decoded"))
        };
        match name {
            "token" => self.token = Some(text(value)?),
            "manufacturer" => self.manufacturer = Some(text(value)?),
            "model" => self.model = Some(text(value)?),
            "serial" => self.serial = Some(text(value)?),
            "object" => self.object = Some(text(value)?),
            "id" => self.id = Some(value),
            "type" => {
                let t = text(value)?;
                self.object_type = Some(ObjectType::parse(&t).ok_or_else(|| {
                    format!("type={t:?} is not one of public, private, secret-key, cert, data")
                })?);
            }
            "slot-id" => {
                let t = text(value)?;
                self.slot_id = Some(
                    t.parse()
                        .map_err(|_| format!("slot-id={t:?} is not a decimal number"))?,
                );
            }
            "slot-description" => self.slot_description = Some(text(value)?),
            "slot-manufacturer" => self.slot_manufacturer = Some(text(value)?),
            "library-manufacturer" => self.library_manufacturer = Some(text(value)?),
            "library-description" => self.library_description = Some(text(value)?),
            "library-version" => {
                let t = text(value)?;
                self.library_version =
                    Some(parse_version(&t).ok_or_else(|| {
                        format!("library-version={t:?} is not of the form M or M.N")
                    })?);
            }
            other => {
                return Err(format!(
                    "unknown path attribute {other:?}: keyward does not know how to match it, \
                     so it refuses the URI rather than pick another object"
                ));
            }
        }
        Ok(())
    }

    fn set_query_attr(&mut self, name: &str, value: Vec<u8>) -> Result<(), String> {
        let text = |v: Vec<u8>| {
            String::from_utf8(v).map_err(|_| format!("{name:?} is not valid UTF-8 once decoded"))
        };
        match name {
            "module-path" => self.module_path = Some(PathBuf::from(text(value)?)),
            "module-name" => self.module_name = Some(text(value)?),
            "pin-source" => {
                let t = text(value)?;
                let path = t.strip_prefix("file:").unwrap_or(&t);
                // `file:///x` and `file:/x` both name /x.
                let path = path.strip_prefix("//").unwrap_or(path);
                if path.is_empty() {
                    return Err("pin-source is empty".into());
                }
                self.pin_source = Some(PathBuf::from(path));
            }
            "pin-value" => {
                return Err(
                    "pin-value is refused: a PIN never belongs in a URI or on a command line; \
                     use pin-source=FILE or let keyward prompt"
                        .into(),
                );
            }
            other => self.ignored.push(other.to_owned()),
        }
        Ok(())
    }

    /// Does this URI name a particular key object (`object=` or `id=`)?
    pub fn names_object(&self) -> bool {
        self.object.is_some() || self.id.is_some()
    }
}

/// Writes the URI back in canonical form (attributes in RFC order, every
/// byte outside the unreserved set percent-encoded).
impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn text(v: Option<&String>) -> Option<&[u8]> {
            v.map(String::as_bytes)
        }
        let mut path: Vec<(&str, String)> = Vec::new();
        let mut push = |name, v: Option<&[u8]>| {
            if let Some(v) = v {
                path.push((name, percent_encode(v)));
            }
        };
        push(
            "library-description",
            text(self.library_description.as_ref()),
        );
        push(
            "library-manufacturer",
            text(self.library_manufacturer.as_ref()),
        );
        let version = self.library_version.map(|(a, b)| format!("{a}.{b}"));
        push("library-version", text(version.as_ref()));
        push("manufacturer", text(self.manufacturer.as_ref()));
        push("model", text(self.model.as_ref()));
        push("serial", text(self.serial.as_ref()));
        push("token", text(self.token.as_ref()));
        push("slot-description", text(self.slot_description.as_ref()));
        push("slot-manufacturer", text(self.slot_manufacturer.as_ref()));
        let slot = self.slot_id.map(|s| s.to_string());
        push("slot-id", text(slot.as_ref()));
        push("object", text(self.object.as_ref()));
        push("id", self.id.as_deref());
        push("type", self.object_type.map(|t| t.as_str().as_bytes()));
        f.write_str("pkcs11:")?;
        for (i, (name, value)) in path.iter().enumerate() {
            if i > 0 {
                f.write_char(';')?;
            }
            write!(f, "{name}={value}")?;
        }
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(p) = &self.module_name {
            query.push(("module-name", percent_encode(p.as_bytes())));
        }
        if let Some(p) = &self.module_path {
            query.push((
                "module-path",
                percent_encode(p.to_string_lossy().as_bytes()),
            ));
        }
        if let Some(p) = &self.pin_source {
            query.push(("pin-source", percent_encode(p.to_string_lossy().as_bytes())));
        }
        for (i, (name, value)) in query.iter().enumerate() {
            f.write_char(if i == 0 { '?' } else { '&' })?;
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

fn split_attr(part: &str) -> Result<(&str, &str), String> {
    let (name, value) = part
        .split_once('=')
        .ok_or_else(|| format!("{part:?} is not of the form name=value"))?;
    if name.is_empty() {
        return Err(format!("{part:?} has an empty attribute name"));
    }
    Ok((name, value))
}

/// Decodes `%XX` escapes. Every other byte stands for itself.
///
/// # Errors
/// A `%` not followed by two hex digits.
pub fn percent_decode(s: &str) -> Result<Vec<u8>, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .filter(|_| bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit());
            match hex {
                Some(b) => out.push(b),
                None => return Err(format!("bad percent escape at byte {i} of {s:?}")),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Encodes every byte outside RFC 3986 "unreserved" as `%XX` (upper case).
pub fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn parse_version(s: &str) -> Option<(u8, u8)> {
    match s.split_once('.') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => Some((s.parse().ok()?, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn full_example() {
        let u = Uri::parse(
            "pkcs11:token=My%20Token;manufacturer=SoftHSM%20project;model=SoftHSM%20v2;\
             serial=8a0c2c6e1f6d3b4a;object=keyward%20laptop;id=%01%02%ff;type=private\
             ?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin&x-foo=bar",
        )
        .expect("valid");
        assert_eq!(u.token.as_deref(), Some("My Token"));
        assert_eq!(u.manufacturer.as_deref(), Some("SoftHSM project"));
        assert_eq!(u.model.as_deref(), Some("SoftHSM v2"));
        assert_eq!(u.serial.as_deref(), Some("8a0c2c6e1f6d3b4a"));
        assert_eq!(u.object.as_deref(), Some("keyward laptop"));
        assert_eq!(u.id.as_deref(), Some(&[1u8, 2, 0xff][..]));
        assert_eq!(u.object_type, Some(ObjectType::Private));
        assert_eq!(
            u.module_path.as_deref(),
            Some(std::path::Path::new("/usr/lib/softhsm/libsofthsm2.so"))
        );
        assert_eq!(
            u.pin_source.as_deref(),
            Some(std::path::Path::new("/run/pin"))
        );
        assert_eq!(u.ignored, vec!["x-foo".to_owned()]);
        assert!(u.names_object());
    }

    #[test]
    fn canonical_form_vector() {
        // The vector in docs/PKCS11.md.
        let u = Uri::parse("PKCS11:object=keyward laptop;token=My%20Token;id=%01%02%FF?module-path=/usr/lib/softhsm/libsofthsm2.so")
            .expect("valid");
        assert_eq!(
            u.to_string(),
            "pkcs11:token=My%20Token;object=keyward%20laptop;id=%01%02%FF\
             ?module-path=%2Fusr%2Flib%2Fsofthsm%2Flibsofthsm2.so"
        );
        assert_eq!(Uri::parse(&u.to_string()).expect("reparse"), u);
    }

    #[test]
    fn minimal_and_empty() {
        assert_eq!(
            Uri::parse("pkcs11:").expect("empty is valid"),
            Uri::default()
        );
        assert_eq!(
            Uri::parse("pkcs11:token=a;;")
                .expect("empty parts")
                .token
                .as_deref(),
            Some("a")
        );
        // `=` may appear inside a value.
        assert_eq!(
            Uri::parse("pkcs11:object=a=b")
                .expect("valid")
                .object
                .as_deref(),
            Some("a=b")
        );
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "pkcs11",
            "pkcs12:token=a",
            "token=a",
            "pkcs11:token",
            "pkcs11:=x",
            "pkcs11:token=a;token=b",
            "pkcs11:token=%4",
            "pkcs11:token=%zz",
            "pkcs11:token=%",
            "pkcs11:token=%ff%fe",
            "pkcs11:x-vendor=1",
            "pkcs11:colour=blue",
            "pkcs11:type=key",
            "pkcs11:slot-id=-1",
            "pkcs11:slot-id=abc",
            "pkcs11:library-version=1.x",
            "pkcs11:token=a?pin-value=1234",
            "pkcs11:token=a?module-path=/a&module-path=/b",
            "pkcs11:token=a?pin-source=",
            "pkcs11:token=é%",
        ] {
            let e = Uri::parse(bad).expect_err(bad);
            assert!(matches!(e, Error::InvalidArgument { .. }), "{bad}: {e}");
        }
        let e = Uri::parse("pkcs11:token=a?pin-value=1234").expect_err("pin-value");
        assert!(e.to_string().contains("pin-source"), "{e}");
        assert!(
            !e.to_string().contains("1234"),
            "the PIN must not echo: {e}"
        );
    }

    #[test]
    fn versions_and_slots() {
        let u = Uri::parse("pkcs11:library-version=2;slot-id=7").expect("valid");
        assert_eq!(u.library_version, Some((2, 0)));
        assert_eq!(u.slot_id, Some(7));
        let u = Uri::parse("pkcs11:library-version=2.6").expect("valid");
        assert_eq!(u.library_version, Some((2, 6)));
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = Uri::parse(&s);
            let _ = Uri::parse(&format!("pkcs11:{s}"));
        }

        #[test]
        fn never_panics_on_escapes(s in "(%[0-9a-fA-FzZ]{0,2}|[;?&=a-z])*") {
            let _ = Uri::parse(&format!("pkcs11:id={s}"));
        }

        #[test]
        fn encode_decode_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let enc = percent_encode(&bytes);
            prop_assert_eq!(percent_decode(&enc).expect("own encoding decodes"), bytes.clone());
            let u = Uri { id: Some(bytes), ..Uri::default() };
            prop_assert_eq!(Uri::parse(&u.to_string()).expect("own output parses"), u);
        }

        #[test]
        fn display_round_trip(token in "\\PC{0,32}", object in "\\PC{0,32}", serial in "[0-9a-f]{0,16}") {
            let u = Uri {
                token: Some(token),
                object: Some(object),
                serial: Some(serial),
                ..Uri::default()
            };
            prop_assert_eq!(Uri::parse(&u.to_string()).expect("own output parses"), u);
        }
    }
}
