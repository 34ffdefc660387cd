//! The routes of `/v1` (docs/API.md, "Endpoints") and what they share.
//!
//! Every handler takes the daemon's one lock, authenticates the requester
//! under it and checks what its route needs ([`Core::enter`], with the
//! table of [`crate::grants`]), checks the grant for each key it touches,
//! and calls the Service. Routes are keyward-api's ([`routes`]).
//! Operations that may take long (unlock, which may wait for a touch;
//! master-key rotation; verifying the whole audit log) run on a blocking
//! thread, so that they never stall the async workers; everything else is
//! microseconds to a few milliseconds and runs in place. Unknown routes and
//! methods answer with the JSON error body too.
//!
//! - [`data`]: encrypt, decrypt (and batches), rewrap, data keys, sign,
//!   verify.
//! - [`keys`]: list, show, export, create, rotate, retire, rotate-due,
//!   master rotation.
//! - [`admin`]: status, unlock, lock, clients, audit, events.

mod admin;
mod data;
mod keys;
pub(crate) mod wire;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::{delete, get, post};
use keyward_api::routes;
use keyward_kms::KeyName;
use serde::Serialize;

use crate::Daemon;
use crate::error::ApiError;
use crate::session::Core;

/// The daemon as handlers see it.
pub(crate) type Shared = State<Arc<Daemon>>;

/// Every route of the API.
pub(crate) fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route(routes::STATUS, get(admin::status))
        .route(routes::UNLOCK, post(admin::unlock))
        .route(routes::LOCK, post(admin::lock))
        .route(routes::ENCRYPT, post(data::encrypt))
        .route(routes::DECRYPT, post(data::decrypt))
        .route(routes::ENCRYPT_BATCH, post(data::encrypt_batch))
        .route(routes::DECRYPT_BATCH, post(data::decrypt_batch))
        .route(routes::REWRAP, post(data::rewrap))
        .route(routes::DATAKEY_GENERATE, post(data::datakey_generate))
        .route(routes::DATAKEY_UNWRAP, post(data::datakey_unwrap))
        .route(routes::SIGN, post(data::sign))
        .route(routes::VERIFY, post(data::verify))
        .route(routes::DEVICE_SIGN, post(keys::device_sign))
        .route(routes::KEYS, get(keys::list).post(keys::create))
        .route(routes::KEY, get(keys::show))
        .route(routes::KEY_PUBLIC, get(keys::public))
        .route(routes::KEY_ROTATE, post(keys::rotate))
        .route(routes::KEY_RETIRE, post(keys::retire))
        .route(routes::ROTATE_DUE, post(keys::rotate_due))
        .route(routes::MASTER_ROTATE, post(keys::master_rotate))
        .route(routes::CLIENTS, get(admin::clients).post(admin::client_add))
        .route(routes::CLIENTS_REVOKE_ALL, post(admin::client_revoke_all))
        .route(routes::CLIENT, delete(admin::client_revoke))
        .route(routes::AUDIT, get(admin::audit))
        .route(routes::AUDIT_VERIFY, get(admin::audit_verify))
        .route(routes::EVENTS, get(admin::events))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(daemon)
}

/// 404 for every path no route serves.
async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::no_route(method.as_str(), uri.path())
}

/// 405 for a known path with another method.
async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

/// A JSON response.
pub(crate) fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    json_sized(status, value, 0)
}

/// A `200` JSON response.
pub(crate) fn ok<T: Serialize>(value: &T) -> Response {
    json_sized(StatusCode::OK, value, 0)
}

/// A JSON response whose body is about `hint` bytes (sized up front so
/// that a body holding plaintext is never copied by a reallocation).
pub(crate) fn json_sized<T: Serialize>(status: StatusCode, value: &T, hint: usize) -> Response {
    let mut response = Response::new(Body::from(wire::to_json_bytes(value, hint)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The key name of a `/v1/keys/{name}` route.
///
/// # Errors
/// `400 invalid-key-name`.
fn key_name(path: Result<Path<String>, PathRejection>) -> Result<KeyName, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(KeyName::new(&name)?)
}

/// A key name given in a body.
///
/// # Errors
/// `400 invalid-key-name`.
fn parse_key(name: &str) -> Result<KeyName, ApiError> {
    Ok(KeyName::new(name)?)
}

/// Runs `work` with the daemon's lock held on a blocking thread (for
/// operations that may take long).
///
/// # Errors
/// Whatever `work` returns; `500 internal` if it panicked.
async fn blocking<T, F>(daemon: &Arc<Daemon>, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut Core) -> Result<T, ApiError> + Send + 'static,
{
    let daemon = Arc::clone(daemon);
    tokio::task::spawn_blocking(move || {
        let mut core = daemon.core.blocking_lock();
        work(&mut core)
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "a blocking operation failed");
        ApiError::internal("the operation failed unexpectedly")
    })?
}

#[cfg(test)]
mod tests {
    use keyward_api::types as wire;
    use keyward_kms::audit::{AuditRecord, AuditSummary};
    use keyward_kms::clients::{ClientInfo, Operation};
    use keyward_kms::service::{
        KeyInfo, ProtectorInfo, PublicKeyExport, Rotated, Verified, VersionInfo,
    };
    use keyward_kms::{BackendKind, DataClass, KeyName, KeyPurpose};
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    /// `value` as the daemon sends it reads as keyward-api's type `T` and
    /// writes back the same JSON: the API crate (and so docs/openapi.json)
    /// has every field the daemon sends, with the same name and shape.
    fn mirrors<T: DeserializeOwned + Serialize>(value: &impl Serialize) {
        let sent = serde_json::to_value(value).expect("JSON");
        let read: T = serde_json::from_value(sent.clone()).expect("keyward-api reads it");
        assert_eq!(serde_json::to_value(&read).expect("JSON"), sent);
    }

    #[test]
    fn the_api_types_mirror_what_the_daemon_sends() {
        let name = KeyName::new("notes").expect("key name");
        let info = KeyInfo {
            name: name.clone(),
            purpose: KeyPurpose::Sign,
            class: DataClass::Sensitive,
            primary_version: 2,
            min_decryption_version: 1,
            rotation_period: Some(86_400),
            usage_limit: 1 << 20,
            created_at: 1_764_000_000,
            versions: vec![VersionInfo {
                version: 1,
                created_at: 1_764_000_000,
                uses: 3,
                state: "active".into(),
            }],
        };
        mirrors::<wire::KeyInfo>(&info);
        mirrors::<wire::ClientInfo>(&ClientInfo {
            name: "assistant".into(),
            allow: vec![Operation::Decrypt, Operation::Keys],
            keys: vec!["*".into()],
            created_at: 1,
            last_used_at: Some(2),
            revoked_at: None,
        });
        mirrors::<wire::AuditRecord>(&AuditRecord {
            seq: 7,
            ts: 1_764_000_000,
            action: "key.create".into(),
            status: "ok".into(),
            fields: serde_json::json!({"key": "notes"}),
            prev: "00".into(),
            hash: "ff".into(),
        });
        mirrors::<wire::AuditSummary>(&AuditSummary {
            records: 7,
            head: "ff".into(),
            checkpoint: Some(5),
        });
        mirrors::<wire::PublicKeyExport>(&PublicKeyExport {
            key: name.clone(),
            version: 1,
            pem: "-----BEGIN PUBLIC KEY-----".into(),
            raw_hex: "04ab".into(),
        });
        mirrors::<wire::Verified>(&Verified {
            key: name.clone(),
            version: 1,
            counter: 9,
            timestamp: 1_764_000_000,
            audience: "a".into(),
        });
        mirrors::<wire::ProtectorInfo>(&ProtectorInfo {
            id: 2,
            kind: BackendKind::Tpm,
            label: "laptop".into(),
            device_id: None,
            mk_epoch: 1,
            created_at: 1,
        });
        mirrors::<wire::Rotated>(&Rotated {
            key: name,
            version: 3,
            reason: "period",
        });
    }
}
