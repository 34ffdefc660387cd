//! Key endpoints. Listing, showing and exporting public keys need the
//! `keys` grant (a client sees only its granted keys); creating, rotating,
//! retiring, the scheduler's `rotate-due` and master-key rotation are the
//! owner's.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use keyward_api::Bytes;
use keyward_api::types::{
    self as wire_types, CreateKey, DeviceAlgorithm, DeviceSignRequest, DeviceSigned,
    RetireKey as Retire,
};
use keyward_kms::backend::SignAlgorithm;
use keyward_kms::service::KeySpec;
use keyward_kms::{DataClass, KeyPurpose};
use serde_json::json;

use super::wire::{JsonBody, Query};
use super::{Shared, blocking, key_name, ok, parse_key};
use crate::Exit;
use crate::error::ApiError;
use crate::grants::Access;

/// `GET /v1/keys`.
pub(crate) async fn list(State(daemon): Shared, access: Access) -> Result<Response, ApiError> {
    let mut core = daemon.core.lock().await;
    let caller = core.enter(&access)?;
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
    access: Access,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = key_name(path)?;
    let mut core = daemon.core.lock().await;
    let caller = core.enter(&access)?;
    caller.permit(Some(&name))?;
    let info = core.service.key(&name)?;
    drop(core);
    Ok(ok(&info))
}

/// `GET /v1/keys/{name}/public?version=N`.
pub(crate) async fn public(
    State(daemon): Shared,
    access: Access,
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
    let caller = core.enter(&access)?;
    caller.permit(Some(&name))?;
    let export = core.service.export_public(&name, version)?;
    drop(core);
    Ok(ok(&export))
}

/// `POST /v1/keys`.
pub(crate) async fn create(
    State(daemon): Shared,
    access: Access,
    JsonBody(request): JsonBody<CreateKey>,
) -> Result<Response, ApiError> {
    let name = parse_key(&request.name)?;
    let mut core = daemon.core.lock().await;
    core.enter(&access)?;
    let info = core.service.create_key(
        &name,
        &KeySpec {
            purpose: match request.purpose {
                wire_types::KeyPurpose::Encrypt => KeyPurpose::Encrypt,
                wire_types::KeyPurpose::Sign => KeyPurpose::Sign,
            },
            class: match request.class {
                wire_types::DataClass::Secret => DataClass::Secret,
                wire_types::DataClass::Sensitive => DataClass::Sensitive,
                wire_types::DataClass::Private => DataClass::Private,
                wire_types::DataClass::General => DataClass::General,
            },
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
    access: Access,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = key_name(path)?;
    let mut core = daemon.core.lock().await;
    core.enter(&access)?;
    let info = core.service.rotate_key(&name)?;
    core.used();
    drop(core);
    Ok(ok(&info))
}

/// `POST /v1/keys/{name}/retire`.
pub(crate) async fn retire(
    State(daemon): Shared,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    JsonBody(request): JsonBody<Retire>,
) -> Result<Response, ApiError> {
    let name = key_name(path)?;
    let mut core = daemon.core.lock().await;
    core.enter(&access)?;
    let info = core.service.retire(&name, request.min_decryption_version)?;
    core.used();
    drop(core);
    Ok(ok(&info))
}

/// `POST /v1/rotate-due`: what the scheduler does, now.
pub(crate) async fn rotate_due(
    State(daemon): Shared,
    access: Access,
) -> Result<Response, ApiError> {
    let mut core = daemon.core.lock().await;
    core.enter(&access)?;
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
    access: Access,
) -> Result<Response, ApiError> {
    let epoch = blocking(&daemon, move |core| {
        core.enter(&access)?;
        let epoch = core.service.rotate_master()?;
        core.used();
        Ok(epoch)
    })
    .await?;
    Ok(ok(&wire_types::MasterRotated { epoch }))
}

/// `POST /v1/device/sign` (owner, unlocked): signs with the key of a
/// device protector, through the device session the unlock opened (no PIN
/// per signature; a device that wants one anyway gets `428`).
pub(crate) async fn device_sign(
    State(daemon): Shared,
    access: Access,
    JsonBody(request): JsonBody<DeviceSignRequest>,
) -> Result<Response, ApiError> {
    let protector = request.protector;
    let signature = blocking(&daemon, move |core| {
        core.enter(&access)?;
        if !core.service.is_unlocked() {
            return Err(keyward_kms::Error::Locked.into());
        }
        let ui = crate::session::ApiCallbacks::without_secrets();
        let signature =
            core.service
                .device_sign(request.protector, request.message.bytes(), &ui)?;
        core.used();
        Ok(signature)
    })
    .await?;
    Ok(ok(&DeviceSigned {
        algorithm: match signature.algorithm {
            SignAlgorithm::EcdsaP256Sha256 => DeviceAlgorithm::EcdsaP256Sha256,
            SignAlgorithm::Ed25519 => DeviceAlgorithm::Ed25519,
        },
        signature: Bytes::new(signature.bytes),
        protector,
    }))
}
