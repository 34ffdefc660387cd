//! Session, client and audit endpoints: status (any client), and the
//! owner's unlock, lock, clients, audit and events.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use keyward_api::types::{self as wire_types, AddClient};
use keyward_kms::clients::{ClientInfo, Operation};
use keyward_kms::{SecretString, Service};
use secrecy::ExposeSecret;
use serde::{Serialize, Serializer};
use serde_json::json;

use super::wire::{JsonBody, Query};
use super::{Shared, blocking, ok};
use crate::Exit;
use crate::error::ApiError;
use crate::events;
use crate::grants::Access;
use crate::session;
use keyward_api::types::UnlockRequest;

/// Most audit records in one answer.
const MAX_AUDIT_RECORDS: u64 = 10_000;

/// `GET /v1/status`.
pub(crate) async fn status(State(daemon): Shared, access: Access) -> Result<Response, ApiError> {
    let mut core = daemon.core.lock().await;
    core.enter(&access)?;
    let status = core.service.status()?;
    let clients = active_clients(&core.service)?;
    let session = core.session.as_ref().map(session::Session::info);
    drop(core);
    Ok(ok(&wire_types::Status {
        unlocked: status.unlocked,
        store: status.path.to_string_lossy().into_owned(),
        store_id: status.store_id,
        mk_epoch: status.mk_epoch,
        keys: status.keys as u64,
        protectors: status.protectors as u64,
        clients: clients as u64,
        memory_locked: daemon.memory_locked,
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        session,
    }))
}

/// Clients that are not revoked.
fn active_clients(service: &Service) -> Result<usize, ApiError> {
    Ok(service
        .clients()?
        .iter()
        .filter(|c| c.revoked_at.is_none())
        .count())
}

/// `POST /v1/unlock` (on a blocking thread: a protector may wait for a
/// device).
pub(crate) async fn unlock(
    State(daemon): Shared,
    access: Access,
    JsonBody(request): JsonBody<UnlockRequest>,
) -> Result<Response, ApiError> {
    let defaults = daemon.timeouts;
    let body = blocking(&daemon, move |core| {
        core.enter(&access)?;
        session::unlock(core, request, defaults)
    })
    .await?;
    Ok(ok(&body))
}

/// `POST /v1/lock`.
pub(crate) async fn lock(State(daemon): Shared, access: Access) -> Result<Response, ApiError> {
    let mut core = daemon.core.lock().await;
    core.enter(&access)?;
    if core.session.is_some() {
        tracing::info!("locked on request");
    }
    core.lock("request");
    drop(core);
    Ok(ok(&wire_types::LockAnswer { locked: true }))
}

/// A new client with its token, shown only in this answer.
#[derive(Serialize)]
struct Added<'a> {
    client: &'a ClientInfo,
    #[serde(serialize_with = "expose")]
    token: &'a SecretString,
}

fn expose<S: Serializer>(token: &&SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(token.expose_secret())
}

/// `POST /v1/clients`.
pub(crate) async fn client_add(
    State(daemon): Shared,
    access: Access,
    JsonBody(request): JsonBody<AddClient>,
) -> Result<Response, ApiError> {
    let mut core = daemon.core.lock().await;
    core.enter(&access)?;
    let (client, token) =
        core.service
            .client_add(&request.name, &operations(&request.allow), &request.keys)?;
    drop(core);
    tracing::info!(client = %client.name, "client added");
    Ok(ok(&Added {
        client: &client,
        token: &token,
    }))
}

/// The key service's operations of a grant.
fn operations(allow: &[wire_types::Operation]) -> Vec<Operation> {
    allow
        .iter()
        .map(|op| match op {
            wire_types::Operation::Encrypt => Operation::Encrypt,
            wire_types::Operation::Decrypt => Operation::Decrypt,
            wire_types::Operation::Rewrap => Operation::Rewrap,
            wire_types::Operation::Datakey => Operation::Datakey,
            wire_types::Operation::Sign => Operation::Sign,
            wire_types::Operation::Verify => Operation::Verify,
            wire_types::Operation::Keys => Operation::Keys,
        })
        .collect()
}

/// `GET /v1/clients`.
pub(crate) async fn clients(State(daemon): Shared, access: Access) -> Result<Response, ApiError> {
    let mut core = daemon.core.lock().await;
    core.enter(&access)?;
    let clients = core.service.clients()?;
    drop(core);
    Ok(ok(&json!({ "clients": clients })))
}

/// `DELETE /v1/clients/{name}`.
pub(crate) async fn client_revoke(
    State(daemon): Shared,
    access: Access,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mut core = daemon.core.lock().await;
    core.enter(&access)?;
    core.service.client_revoke(&name)?;
    drop(core);
    tracing::info!(client = %name, "client revoked");
    Ok(ok(&wire_types::ClientRevoked { revoked: name }))
}

/// `POST /v1/clients/revoke-all`.
pub(crate) async fn client_revoke_all(
    State(daemon): Shared,
    access: Access,
) -> Result<Response, ApiError> {
    let mut core = daemon.core.lock().await;
    core.enter(&access)?;
    let revoked = core.service.client_revoke_all()?;
    drop(core);
    tracing::info!(revoked, "every client revoked");
    Ok(ok(&wire_types::RevokedCount {
        revoked: revoked as u64,
    }))
}

/// `GET /v1/audit?since=SEQ&limit=N`.
pub(crate) async fn audit(
    State(daemon): Shared,
    access: Access,
    query: Query,
) -> Result<Response, ApiError> {
    let since = query.since.unwrap_or(1);
    let limit = query.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_AUDIT_RECORDS {
        return Err(ApiError::new(
            "invalid-argument",
            Exit::Usage,
            format!("limit must be between 1 and {MAX_AUDIT_RECORDS}"),
        ));
    }
    let mut core = daemon.core.lock().await;
    core.enter(&access)?;
    let records = core
        .service
        .audit_records(since, usize::try_from(limit).unwrap_or(usize::MAX))?;
    drop(core);
    Ok(ok(&json!({ "records": records })))
}

/// `GET /v1/audit/verify` (linear in the log: a blocking thread).
pub(crate) async fn audit_verify(
    State(daemon): Shared,
    access: Access,
) -> Result<Response, ApiError> {
    let summary = blocking(&daemon, move |core| {
        core.enter(&access)?;
        Ok(core.service.audit_verify()?)
    })
    .await?;
    Ok(ok(&summary))
}

/// `GET /v1/events?since=SEQ`.
pub(crate) async fn events(
    State(daemon): Shared,
    access: Access,
    query: Query,
) -> Result<Response, ApiError> {
    let mut core = daemon.core.lock().await;
    core.enter(&access)?;
    let since = match query.since {
        Some(since) => since,
        None => core.service.status()?.audit_records + 1,
    };
    drop(core);
    Ok(events::stream(daemon, since))
}
