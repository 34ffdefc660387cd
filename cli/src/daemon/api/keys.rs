//! Key endpoints. Listing, showing and exporting public keys need the
//! `keys` grant (a client sees only its granted keys); creating, rotating,
//! retiring, the scheduler's `rotate-due` and master-key rotation are the
//! owner's.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use keyward_kms::clients::Operation;
use keyward_kms::service::KeySpec;
use keyward_kms::{DataClass, KeyPurpose};
use serde::Deserialize;
use serde_json::json;

use super::wire::{Base64, JsonBody, Query};
use super::{Shared, blocking, key_name, ok, parse_key};
use crate::daemon::auth::Requester;
use crate::daemon::error::ApiError;
use crate::failure::Exit;

/// `GET /v1/keys`.
pub(crate) async fn list(
    State(daemon): Shared,
    requester: Requester,
) -> Result<Response, ApiError> {
    let mut core = daemon.core.lock().await;
    let caller = core.enter(&requester)?;
    caller.require(Operation::Keys, None)?;
    let keys: Vec<_> = core
        .service
        .keys()?
        .into_iter()
        .filter(|k| caller.sees(&k.name))
        .collect();
    drop(core);
    Ok(ok(&json!({ "keys": keys })))
}

/// `GET /v1/keys/{name}`.
pub(crate) async fn show(
    State(daemon): Shared,
    requester: Requester,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = key_name(path)?;
    let mut core = daemon.core.lock().await;
    let caller = core.enter(&requester)?;
    caller.require(Operation::Keys, Some(&name))?;
    let info = core.service.key(&name)?;
    drop(core);
    Ok(ok(&info))
}

/// `GET /v1/keys/{name}/public?version=N`.
pub(crate) async fn public(
    State(daemon): Shared,
    requester: Requester,
    path: Result<Path<String>, PathRejection>,
    query: Query,
) -> Result<Response, ApiError> {
    let name = key_name(path)?;
    let version = query
        .version
        .map(|v| {
            u32::try_from(v).map_err(|_| {
                ApiError::new("invalid-argument", Exit::Usage, "version is out of range")
            })
        })
        .transpose()?;
    let mut core = daemon.core.lock().await;
    let caller = core.enter(&requester)?;
    caller.require(Operation::Keys, Some(&name))?;
    let export = core.service.export_public(&name, version)?;
    drop(core);
    Ok(ok(&export))
}

/// `POST /v1/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateKey {
    name: String,
    #[serde(default = "default_purpose")]
    purpose: KeyPurpose,
    #[serde(default = "default_class")]
    class: DataClass,
    #[serde(default)]
    rotation_period: Option<u64>,
    #[serde(default)]
    usage_limit: Option<u64>,
}

/// As `keyward key create`.
fn default_purpose() -> KeyPurpose {
    KeyPurpose::Encrypt
}

/// As `keyward key create`.
fn default_class() -> DataClass {
    DataClass::Private
}

/// `POST /v1/keys`.
pub(crate) async fn create(
    State(daemon): Shared,
    requester: Requester,
    JsonBody(request): JsonBody<CreateKey>,
) -> Result<Response, ApiError> {
    let name = parse_key(&request.name)?;
    let mut core = daemon.core.lock().await;
    core.enter(&requester)?.require_owner()?;
    let info = core.service.create_key(
        &name,
        &KeySpec {
            purpose: request.purpose,
            class: request.class,
            rotation_period: request.rotation_period,
            usage_limit: request.usage_limit,
        },
    )?;
    core.used();
    drop(core);
    Ok(ok(&info))
}

/// `POST /v1/keys/{name}/rotate`.
pub(crate) async fn rotate(
    State(daemon): Shared,
    requester: Requester,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = key_name(path)?;
    let mut core = daemon.core.lock().await;
    core.enter(&requester)?.require_owner()?;
    let info = core.service.rotate_key(&name)?;
    core.used();
    drop(core);
    Ok(ok(&info))
}

/// `POST /v1/keys/{name}/retire`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Retire {
    min_decryption_version: u32,
}

/// `POST /v1/keys/{name}/retire`.
pub(crate) async fn retire(
    State(daemon): Shared,
    requester: Requester,
    path: Result<Path<String>, PathRejection>,
    JsonBody(request): JsonBody<Retire>,
) -> Result<Response, ApiError> {
    let name = key_name(path)?;
    let mut core = daemon.core.lock().await;
    core.enter(&requester)?.require_owner()?;
    let info = core.service.retire(&name, request.min_decryption_version)?;
    core.used();
    drop(core);
    Ok(ok(&info))
}

/// `POST /v1/rotate-due`: what the scheduler does, now.
pub(crate) async fn rotate_due(
    State(daemon): Shared,
    requester: Requester,
) -> Result<Response, ApiError> {
    let mut core = daemon.core.lock().await;
    core.enter(&requester)?.require_owner()?;
    let rotated = core.service.rotate_due()?;
    drop(core);
    for r in &rotated {
        tracing::info!(key = %r.key, version = r.version, reason = r.reason, "rotated");
    }
    Ok(ok(&json!({ "rotated": rotated })))
}

/// `POST /v1/master/rotate` (re-wraps every data-key version: may take a
/// second for a large store, so it runs on a blocking thread).
pub(crate) async fn master_rotate(
    State(daemon): Shared,
    requester: Requester,
) -> Result<Response, ApiError> {
    let epoch = blocking(&daemon, move |core| {
        core.enter(&requester)?.require_owner()?;
        let epoch = core.service.rotate_master()?;
        core.used();
        Ok(epoch)
    })
    .await?;
    Ok(ok(&json!({ "epoch": epoch })))
}

/// `POST /v1/device/sign`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceSignRequest {
    protector: u32,
    message: Base64,
}

/// `POST /v1/device/sign` (owner, unlocked): signs with the key of a
/// device protector, through the device session the unlock opened (no PIN
/// per signature; a device that wants one anyway gets `428`).
pub(crate) async fn device_sign(
    State(daemon): Shared,
    requester: Requester,
    JsonBody(request): JsonBody<DeviceSignRequest>,
) -> Result<Response, ApiError> {
    let protector = request.protector;
    let signature = blocking(&daemon, move |core| {
        core.enter(&requester)?.require_owner()?;
        if !core.service.is_unlocked() {
            return Err(keyward_kms::Error::Locked.into());
        }
        let ui = crate::daemon::session::ApiCallbacks::without_secrets();
        let signature =
            core.service
                .device_sign(request.protector, request.message.bytes(), &ui)?;
        core.used();
        Ok(signature)
    })
    .await?;
    Ok(ok(&json!({
        "signature": super::wire::b64(&signature.bytes),
        "algorithm": format!("{:?}", signature.algorithm).to_lowercase(),
        "protector": protector,
    })))
}
