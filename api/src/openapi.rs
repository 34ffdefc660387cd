//! The OpenAPI 3.1 document of the API, generated from [`crate::types`]
//! with utoipa, and committed as docs/openapi.json (a test fails when the
//! two differ: `KEYWARD_BLESS=1 cargo test -p keyward-api --test openapi`
//! rewrites it). It is how a client in another language gets its types.
//!
//! The functions below are not code that runs: each declares one route for
//! the document (method, path, body, answers, grant).

#![allow(
    clippy::unused_async,
    dead_code,
    reason = "route declarations for the OpenAPI document, never called"
)]

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::problem::{ErrorBody, Problem};
use crate::types::{
    AddClient, AuditQuery, AuditRecord, AuditRecords, AuditSummary, Batch, BatchResults,
    ClientAdded, ClientInfo, ClientList, ClientRevoked, CreateKey, DataClass, DatakeyRequest,
    DecryptRequest, Decrypted, DeviceAlgorithm, DeviceSignRequest, DeviceSigned, EncryptRequest,
    Encrypted, EventsQuery, KeyInfo, KeyList, KeyPurpose, LockAnswer, LockRequest, MasterRotated,
    NewDatakey, Operation, ProtectorInfo, PublicKeyExport, PublicQuery, RetireKey, RevokeAll,
    RevokedCount, RewrapRequest, Rewrapped, RotateDue, RotateMaster, Rotated, RotatedList, Secrets,
    SessionInfo, SignRequest, Signed, Status, UnlockRequest, UnlockWith, Unlocked, UnwrapRequest,
    Verified, VerifyRequest, VersionInfo,
};

/// The document's description of the API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "keyward daemon API",
        version = "1",
        description = "`keyward serve`: the key service behind HTTP/1.1 + JSON on a Unix \
                       socket. docs/API.md is the prose contract: transport, limits, \
                       sessions, grants, error codes. Requests without a token act as the \
                       owner (the daemon's own uid); requests with `Authorization: Bearer \
                       kwt_…` act as a client within its grants."
    ),
    paths(
        status, unlock, lock, encrypt, decrypt, encrypt_batch, decrypt_batch, rewrap,
        datakey_generate, datakey_unwrap, sign, verify, device_sign, list_keys, create_key,
        show_key, export_public, rotate_key, retire_key, rotate_due, rotate_master,
        list_clients, add_client, revoke_client, revoke_all, audit, audit_verify, events
    ),
    components(schemas(
        Problem, ErrorBody, Status, SessionInfo, UnlockRequest, UnlockWith, Secrets, Unlocked,
        ProtectorInfo, LockRequest, LockAnswer, EncryptRequest, Encrypted, DecryptRequest,
        Decrypted, RewrapRequest, Rewrapped, DatakeyRequest, NewDatakey, UnwrapRequest,
        SignRequest, Signed, VerifyRequest, Verified, DeviceSignRequest, DeviceSigned,
        DeviceAlgorithm, KeyList, KeyInfo, VersionInfo, KeyPurpose, DataClass,
        PublicKeyExport, CreateKey, RetireKey, RotateDue, RotatedList, Rotated, RotateMaster,
        MasterRotated, Operation, AddClient, ClientAdded, ClientInfo, ClientList,
        ClientRevoked, RevokeAll, RevokedCount, AuditRecords, AuditRecord, AuditSummary
    )),
    modifiers(&BearerToken),
    tags(
        (name = "session", description = "status, unlock, lock"),
        (name = "data", description = "encryption, data keys, signatures"),
        (name = "keys", description = "named keys and the master key"),
        (name = "clients", description = "client tokens and grants (owner)"),
        (name = "audit", description = "the audit log and security events (owner)")
    )
)]
struct ApiDoc;

/// The `Authorization: Bearer kwt_…` scheme of clients.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "client_token",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("kwt_ + base64url")
                        .build(),
                ),
            );
        }
    }
}

/// The document as pretty JSON, with a final newline (docs/openapi.json).
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

#[utoipa::path(get, path = "/v1/status", tag = "session",
    description = "Any client. `session` is null when locked.",
    responses((status = 200, body = Status), (status = "default", body = ErrorBody)))]
fn status() {}

#[utoipa::path(post, path = "/v1/unlock", tag = "session", request_body = UnlockRequest,
    description = "Owner. `428 secret-required` names the secret a protector needs.",
    responses((status = 200, body = Unlocked), (status = "default", body = ErrorBody)))]
fn unlock() {}

#[utoipa::path(post, path = "/v1/lock", tag = "session", request_body = LockRequest,
    description = "Owner. Idempotent.",
    responses((status = 200, body = LockAnswer), (status = "default", body = ErrorBody)))]
fn lock() {}

#[utoipa::path(post, path = "/v1/encrypt", tag = "data", request_body = EncryptRequest,
    description = "Grant: `encrypt` on `key`.",
    responses((status = 200, body = Encrypted), (status = "default", body = ErrorBody)))]
fn encrypt() {}

#[utoipa::path(post, path = "/v1/decrypt", tag = "data", request_body = DecryptRequest,
    description = "Grant: `decrypt` on the key named inside the ciphertext.",
    responses((status = 200, body = Decrypted), (status = "default", body = ErrorBody)))]
fn decrypt() {}

#[utoipa::path(post, path = "/v1/encrypt/batch", tag = "data",
    request_body = Batch<EncryptRequest>,
    description = "At most 1000 items; each item succeeds or fails on its own.",
    responses((status = 200, body = BatchResults<Encrypted>),
              (status = "default", body = ErrorBody)))]
fn encrypt_batch() {}

#[utoipa::path(post, path = "/v1/decrypt/batch", tag = "data",
    request_body = Batch<DecryptRequest>,
    description = "At most 1000 items; each item succeeds or fails on its own.",
    responses((status = 200, body = BatchResults<Decrypted>),
              (status = "default", body = ErrorBody)))]
fn decrypt_batch() {}

#[utoipa::path(post, path = "/v1/rewrap", tag = "data", request_body = RewrapRequest,
    description = "Grant: `rewrap`. The plaintext is never returned.",
    responses((status = 200, body = Rewrapped), (status = "default", body = ErrorBody)))]
fn rewrap() {}

#[utoipa::path(post, path = "/v1/datakey/generate", tag = "data",
    request_body = DatakeyRequest, description = "Grant: `datakey`.",
    responses((status = 200, body = NewDatakey), (status = "default", body = ErrorBody)))]
fn datakey_generate() {}

#[utoipa::path(post, path = "/v1/datakey/unwrap", tag = "data",
    request_body = UnwrapRequest, description = "Grant: `datakey`.",
    responses((status = 200, body = Decrypted), (status = "default", body = ErrorBody)))]
fn datakey_unwrap() {}

#[utoipa::path(post, path = "/v1/sign", tag = "data", request_body = SignRequest,
    description = "Grant: `sign`.",
    responses((status = 200, body = Signed), (status = "default", body = ErrorBody)))]
fn sign() {}

#[utoipa::path(post, path = "/v1/verify", tag = "data", request_body = VerifyRequest,
    description = "Grant: `verify`. `422 invalid-signature`, `replay`, `not-fresh`.",
    responses((status = 200, body = Verified), (status = "default", body = ErrorBody)))]
fn verify() {}

#[utoipa::path(post, path = "/v1/device/sign", tag = "keys",
    request_body = DeviceSignRequest,
    description = "Owner, unlocked: a signature by the key inside a hardware protector.",
    responses((status = 200, body = DeviceSigned), (status = "default", body = ErrorBody)))]
fn device_sign() {}

#[utoipa::path(get, path = "/v1/keys", tag = "keys",
    description = "Grant: `keys` (a client sees only its granted keys).",
    responses((status = 200, body = KeyList), (status = "default", body = ErrorBody)))]
fn list_keys() {}

#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = CreateKey,
    description = "Owner.",
    responses((status = 200, body = KeyInfo), (status = "default", body = ErrorBody)))]
fn create_key() {}

#[utoipa::path(get, path = "/v1/keys/{name}", tag = "keys",
    params(("name" = String, Path, description = "the key")),
    description = "Grant: `keys` on the key.",
    responses((status = 200, body = KeyInfo), (status = "default", body = ErrorBody)))]
fn show_key() {}

#[utoipa::path(get, path = "/v1/keys/{name}/public", tag = "keys",
    params(("name" = String, Path, description = "the key"), PublicQuery),
    description = "Grant: `keys` on the key.",
    responses((status = 200, body = PublicKeyExport), (status = "default", body = ErrorBody)))]
fn export_public() {}

#[utoipa::path(post, path = "/v1/keys/{name}/rotate", tag = "keys",
    params(("name" = String, Path, description = "the key")),
    description = "Owner. The body is empty (or `{}`).",
    responses((status = 200, body = KeyInfo), (status = "default", body = ErrorBody)))]
fn rotate_key() {}

#[utoipa::path(post, path = "/v1/keys/{name}/retire", tag = "keys",
    params(("name" = String, Path, description = "the key")), request_body = RetireKey,
    description = "Owner.",
    responses((status = 200, body = KeyInfo), (status = "default", body = ErrorBody)))]
fn retire_key() {}

#[utoipa::path(post, path = "/v1/rotate-due", tag = "keys", request_body = RotateDue,
    description = "Owner.",
    responses((status = 200, body = RotatedList), (status = "default", body = ErrorBody)))]
fn rotate_due() {}

#[utoipa::path(post, path = "/v1/master/rotate", tag = "keys", request_body = RotateMaster,
    description = "Owner.",
    responses((status = 200, body = MasterRotated), (status = "default", body = ErrorBody)))]
fn rotate_master() {}

#[utoipa::path(get, path = "/v1/clients", tag = "clients", description = "Owner.",
    responses((status = 200, body = ClientList), (status = "default", body = ErrorBody)))]
fn list_clients() {}

#[utoipa::path(post, path = "/v1/clients", tag = "clients", request_body = AddClient,
    description = "Owner. The token is shown only in this answer.",
    responses((status = 200, body = ClientAdded), (status = "default", body = ErrorBody)))]
fn add_client() {}

#[utoipa::path(delete, path = "/v1/clients/{name}", tag = "clients",
    params(("name" = String, Path, description = "the client")), description = "Owner.",
    responses((status = 200, body = ClientRevoked), (status = "default", body = ErrorBody)))]
fn revoke_client() {}

#[utoipa::path(post, path = "/v1/clients/revoke-all", tag = "clients",
    request_body = RevokeAll, description = "Owner.",
    responses((status = 200, body = RevokedCount), (status = "default", body = ErrorBody)))]
fn revoke_all() {}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    description = "Owner.",
    responses((status = 200, body = AuditRecords), (status = "default", body = ErrorBody)))]
fn audit() {}

#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", description = "Owner.",
    responses((status = 200, body = AuditSummary), (status = "default", body = ErrorBody)))]
fn audit_verify() {}

#[utoipa::path(get, path = "/v1/events", tag = "audit", params(EventsQuery),
    description = "Owner. Newline-delimited audit records (security events only) until \
                   the client disconnects.",
    responses((status = 200, content_type = "application/x-ndjson", body = AuditRecord),
              (status = "default", body = ErrorBody)))]
fn events() {}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_in_the_document() {
        let doc = super::document();
        for route in [
            crate::routes::STATUS,
            crate::routes::UNLOCK,
            crate::routes::LOCK,
            crate::routes::ENCRYPT,
            crate::routes::DECRYPT,
            crate::routes::ENCRYPT_BATCH,
            crate::routes::DECRYPT_BATCH,
            crate::routes::REWRAP,
            crate::routes::DATAKEY_GENERATE,
            crate::routes::DATAKEY_UNWRAP,
            crate::routes::SIGN,
            crate::routes::VERIFY,
            crate::routes::DEVICE_SIGN,
            crate::routes::KEYS,
            crate::routes::KEY,
            crate::routes::KEY_PUBLIC,
            crate::routes::KEY_ROTATE,
            crate::routes::KEY_RETIRE,
            crate::routes::ROTATE_DUE,
            crate::routes::MASTER_ROTATE,
            crate::routes::CLIENTS,
            crate::routes::CLIENTS_REVOKE_ALL,
            crate::routes::CLIENT,
            crate::routes::AUDIT,
            crate::routes::AUDIT_VERIFY,
            crate::routes::EVENTS,
        ] {
            assert!(doc.contains(&format!("\"{route}\"")), "{route} is missing");
        }
    }
}
