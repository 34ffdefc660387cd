//! Reading requests and writing responses: body limits and the body
//! timeout, strict JSON (unknown fields refused), base64 byte strings, and
//! the few query parameters the API has. Every failure here is a JSON
//! `400 bad-request` (or `413`, `408`), never axum's plain-text rejections.
//!
//! Byte strings may be plaintext, so they are decoded into zeroizing
//! buffers, and response bodies are built in zeroizing buffers whose memory
//! is wiped when hyper has written them. What hyper itself buffers while
//! reading a request is outside our reach (docs/API.md says so).

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, header, request::Parts};
use base64::Engine as _;
use http_body_util::BodyExt as _;
use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};
use zeroize::Zeroizing;

use crate::Daemon;
use crate::error::ApiError;

/// Largest request body, except batches.
pub(crate) const BODY_LIMIT: usize = 1 << 20;
/// Largest batch request body.
pub(crate) const BATCH_LIMIT: usize = 16 << 20;

/// A JSON request body of at most `LIMIT` bytes, read within the body
/// timeout and decoded strictly into `T`.
#[derive(Debug)]
pub(crate) struct JsonBody<T, const LIMIT: usize = BODY_LIMIT>(pub(crate) T);

impl<T, const LIMIT: usize> FromRequest<Arc<Daemon>> for JsonBody<T, LIMIT>
where
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, daemon: &Arc<Daemon>) -> Result<Self, ApiError> {
        let body = read_body(req, LIMIT, daemon).await?;
        parse(&body).map(Self)
    }
}

/// Reads the whole body into a zeroizing buffer.
async fn read_body(
    req: Request,
    limit: usize,
    daemon: &Daemon,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let declared = content_length(req.headers())?;
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::too_large(limit));
    }
    let mut buffer = Zeroizing::new(Vec::with_capacity(declared.unwrap_or(0)));
    let mut body = req.into_body();
    let timeout = daemon.limits.body_timeout;
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::bad_request(format!("cannot read the request body: {e}")).closing()
            })?;
            if let Ok(data) = frame.into_data() {
                if buffer.len() + data.len() > limit {
                    return Err(ApiError::too_large(limit));
                }
                extend_zeroizing(&mut buffer, &data);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(result) => result?,
        Err(_) => return Err(ApiError::body_timeout(timeout.as_secs())),
    }
    Ok(buffer)
}

/// The declared Content-Length, if any.
fn content_length(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or_else(|| ApiError::bad_request("bad Content-Length").closing())
        })
        .transpose()
}

/// Appends `data`, growing into a new zeroizing allocation (never
/// `Vec`'s reallocation, which would leave the old bytes behind).
fn extend_zeroizing(buffer: &mut Zeroizing<Vec<u8>>, data: &[u8]) {
    let needed = buffer.len() + data.len();
    if needed > buffer.capacity() {
        let mut grown = Zeroizing::new(Vec::with_capacity(needed.max(buffer.capacity() * 2)));
        grown.extend_from_slice(buffer);
        *buffer = grown;
    }
    buffer.extend_from_slice(data);
}

/// Decodes a JSON body. An empty body reads as `{}`, so endpoints whose
/// fields are all optional take none.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(text).map_err(|e| ApiError::bad_request(describe(&e)))
}

/// What was wrong with a body, without echoing the values in it (a
/// mistyped PIN must not come back in an error message, or reach a log).
fn describe(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let at = format!("line {} column {}", err.line(), err.column());
    match err.classify() {
        Category::Io | Category::Syntax => format!("malformed JSON at {at}"),
        Category::Eof => "the JSON body ends early".to_owned(),
        Category::Data => {
            let text = err.to_string();
            // serde's data errors read "invalid type: string \"…\", expected
            // …": keep only what was expected.
            let text = text
                .rsplit_once(" at line ")
                .map_or(text.as_str(), |(t, _)| t);
            if text.starts_with("invalid type") || text.starts_with("invalid value") {
                match text.split_once(", expected ") {
                    Some((_, expected)) => format!("wrong type at {at}: expected {expected}"),
                    None => format!("wrong type at {at}"),
                }
            } else if text.starts_with("invalid length") {
                format!("wrong length at {at}")
            } else {
                // Unknown or missing fields, unknown variants: names only.
                format!("{text} (at {at})")
            }
        }
    }
}

/// Serializes bytes as standard base64 through a zeroizing buffer.
pub(crate) use keyward_api::bytes::serialize_secret;

/// Serializes non-secret bytes as standard base64.
pub(crate) fn serialize_b64<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// A response body in a zeroizing buffer, sized so that serde never has to
/// reallocate it for a body of about `hint` bytes.
pub(crate) fn to_json_bytes<T: Serialize>(value: &T, hint: usize) -> bytes::Bytes {
    let mut buffer = Zeroizing::new(Vec::with_capacity(hint + 256));
    if serde_json::to_writer(&mut *buffer, value).is_err() {
        // Our response types always serialize; say so rather than panic.
        buffer.clear();
        buffer.extend_from_slice(
            br#"{"error":{"code":"internal","message":"response encoding failed","hint":null,"exit":1}}"#,
        );
    }
    bytes::Bytes::from_owner(ZeroizingBytes(buffer))
}

/// Owner of a response body's memory: wiped when hyper drops the bytes.
struct ZeroizingBytes(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for ZeroizingBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Query parameters: `since`, `limit`, `version` (all unsigned integers).
#[derive(Debug, Default)]
pub(crate) struct Query {
    /// `since=SEQ`.
    pub(crate) since: Option<u64>,
    /// `limit=N`.
    pub(crate) limit: Option<u64>,
    /// `version=N`.
    pub(crate) version: Option<u64>,
}

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut query = Self::default();
        let Some(text) = parts.uri.query() else {
            return Ok(query);
        };
        for pair in text.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "since" => &mut query.since,
                "limit" => &mut query.limit,
                "version" => &mut query.version,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter {name:?}"
                    )));
                }
            };
            *slot = Some(value.parse().map_err(|_| {
                ApiError::bad_request(format!("query parameter {name} must be a whole number"))
            })?);
        }
        Ok(query)
    }
}

#[cfg(test)]
mod tests {
    use keyward_api::Bytes as Base64;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        #[allow(dead_code)]
        key: String,
        data: Base64,
    }

    #[test]
    fn strict_json_errors_do_not_echo_values() {
        let err = parse::<Req>(br#"{"key": 123456, "data": "aGk="}"#).expect_err("wrong type");
        assert_eq!(err.code, "bad-request");
        assert!(!err.message.contains("123456"), "{}", err.message);
        assert!(err.message.contains("expected a string"), "{}", err.message);
        let err = parse::<Req>(br#"{"key": "k", "data": "aGk=", "x": 1}"#).expect_err("unknown");
        assert!(err.message.contains("unknown field `x`"), "{}", err.message);
        let err = parse::<Req>(br#"{"key": "k", "data": "%%%"}"#).expect_err("base64");
        assert!(err.message.contains("base64"), "{}", err.message);
        let err = parse::<Req>(b"{\"key\": ").expect_err("eof");
        assert_eq!(err.status.as_u16(), 400);
        let ok = parse::<Req>(br#"{"key": "k", "data": "aGk="}"#).expect("valid");
        assert_eq!(ok.data.bytes(), b"hi");
        assert_eq!(format!("{:?}", ok.data), "Base64([REDACTED; 2])");
    }

    #[test]
    fn zeroizing_growth_keeps_the_bytes() {
        let mut buffer = Zeroizing::new(Vec::with_capacity(2));
        for chunk in [&b"ab"[..], b"cdef", b"g"] {
            extend_zeroizing(&mut buffer, chunk);
        }
        assert_eq!(&buffer[..], b"abcdefg");
    }
}
