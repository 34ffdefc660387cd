//! Data endpoints: encrypt, decrypt and their batches, rewrap, data keys,
//! sign and verify. Each checks the client's grant for the key it touches:
//! the key named in the request, or for data already written, the key
//! named in its header (docs/FORMAT.md), read before anything is
//! decrypted.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use keyward_api::Bytes;
use keyward_api::types::{
    Batch, DatakeyRequest, DecryptRequest as DecryptItem, EncryptRequest as EncryptItem,
    RewrapRequest, Rewrapped, SignRequest, Signed, UnwrapRequest, VerifyRequest,
};
use keyward_kms::crypto::{envelope, signing};
use keyward_kms::service::Decrypted;
use serde::Serialize;
use serde_json::Value;

use super::wire::{BATCH_LIMIT, JsonBody, serialize_b64, serialize_secret};
use super::{Shared, json_sized, ok, parse_key};
use crate::Exit;
use crate::error::ApiError;
use crate::grants::{Access, Granted};
use crate::session::Core;

/// Most items in one batch.
const MAX_BATCH_ITEMS: usize = 1000;

/// A ciphertext made.
#[derive(Debug, Serialize)]
struct Encrypted {
    #[serde(serialize_with = "serialize_b64")]
    ciphertext: Vec<u8>,
    key: String,
    version: u32,
}

/// A plaintext recovered.
#[derive(Serialize)]
struct Opened<'a> {
    #[serde(serialize_with = "serialize_secret")]
    plaintext: &'a [u8],
    key: &'a str,
    version: u32,
}

impl<'a> From<&'a Decrypted> for Opened<'a> {
    fn from(d: &'a Decrypted) -> Self {
        Self {
            plaintext: d.plaintext.expose(),
            key: d.key.as_str(),
            version: d.version,
        }
    }
}

/// One result of a batch: the item's answer or its error.
#[derive(Serialize)]
#[serde(untagged)]
enum Item<T> {
    Done(T),
    Failed { error: Value },
}

impl<T> Item<T> {
    fn of(result: Result<T, ApiError>) -> Self {
        match result {
            Ok(value) => Self::Done(value),
            Err(e) => Self::Failed { error: e.object() },
        }
    }
}

/// `POST /v1/encrypt`.
pub(crate) async fn encrypt(
    State(daemon): Shared,
    access: Access,
    JsonBody(item): JsonBody<EncryptItem>,
) -> Result<Response, ApiError> {
    let mut core = daemon.core.lock().await;
    let caller = core.enter(&access)?;
    let done = encrypt_one(&mut core, &caller, &item)?;
    drop(core);
    Ok(ok(&done))
}

/// `POST /v1/encrypt/batch`.
pub(crate) async fn encrypt_batch(
    State(daemon): Shared,
    access: Access,
    JsonBody(batch): JsonBody<Batch<EncryptItem>, BATCH_LIMIT>,
) -> Result<Response, ApiError> {
    check_batch(batch.items.len())?;
    let mut core = daemon.core.lock().await;
    let caller = core.enter(&access)?;
    // One audit transaction for the whole batch; nothing is answered
    // before it committed.
    core.service.defer_uses();
    let mut results: Vec<Result<Encrypted, ApiError>> = batch
        .items
        .iter()
        .map(|item| encrypt_one(&mut core, &caller, item))
        .collect();
    commit_batch(&mut core, &mut results);
    drop(core);
    let results: Vec<Item<Encrypted>> = results.into_iter().map(Item::of).collect();
    let size: usize = batch
        .items
        .iter()
        .map(|i| i.plaintext.bytes().len() * 4 / 3 + 256)
        .sum();
    Ok(json_sized(StatusCode::OK, &Results { results }, size))
}

fn encrypt_one(
    core: &mut Core,
    caller: &Granted,
    item: &EncryptItem,
) -> Result<Encrypted, ApiError> {
    let name = parse_key(&item.key)?;
    caller.permit(Some(&name))?;
    let ciphertext = core
        .service
        .encrypt(&name, item.context.bytes(), item.plaintext.bytes())?;
    core.used();
    let (header, _) = envelope::parse_header(&ciphertext)?;
    Ok(Encrypted {
        ciphertext,
        key: name.as_str().to_owned(),
        version: header.version,
    })
}

/// `POST /v1/decrypt`.
pub(crate) async fn decrypt(
    State(daemon): Shared,
    access: Access,
    JsonBody(item): JsonBody<DecryptItem>,
) -> Result<Response, ApiError> {
    let mut core = daemon.core.lock().await;
    let caller = core.enter(&access)?;
    let decrypted = decrypt_one(&mut core, &caller, &item)?;
    drop(core);
    let size = decrypted.plaintext.expose().len();
    Ok(json_sized(
        StatusCode::OK,
        &Opened::from(&decrypted),
        size * 4 / 3 + 128,
    ))
}

/// `POST /v1/decrypt/batch`.
pub(crate) async fn decrypt_batch(
    State(daemon): Shared,
    access: Access,
    JsonBody(batch): JsonBody<Batch<DecryptItem>, BATCH_LIMIT>,
) -> Result<Response, ApiError> {
    check_batch(batch.items.len())?;
    let mut core = daemon.core.lock().await;
    let caller = core.enter(&access)?;
    core.service.defer_uses();
    let mut results: Vec<Result<Decrypted, ApiError>> = batch
        .items
        .iter()
        .map(|item| decrypt_one(&mut core, &caller, item))
        .collect();
    commit_batch(&mut core, &mut results);
    drop(core);
    let size: usize = results
        .iter()
        .map(|r| {
            r.as_ref()
                .map_or(256, |d| d.plaintext.expose().len() * 4 / 3 + 128)
        })
        .sum();
    let items: Vec<Item<Opened<'_>>> = results
        .iter()
        .map(|r| match r {
            Ok(d) => Item::Done(Opened::from(d)),
            Err(e) => Item::Failed { error: e.object() },
        })
        .collect();
    Ok(json_sized(
        StatusCode::OK,
        &Results { results: items },
        size,
    ))
}

/// Writes the batch's use records in one transaction; if that fails, no
/// item of the batch happened, and each says why.
fn commit_batch<T>(core: &mut Core, results: &mut [Result<T, ApiError>]) {
    if let Err(e) = core.service.commit_uses() {
        tracing::error!(error = %e, "could not record a batch in the audit log");
        let message = e.to_string();
        for r in results.iter_mut().filter(|r| r.is_ok()) {
            *r = Err(keyward_kms::Error::AuditWrite(Box::new(
                keyward_kms::Error::InvalidArgument {
                    what: message.clone(),
                },
            ))
            .into());
        }
    }
}

/// The body of a batch answer.
#[derive(Serialize)]
struct Results<T> {
    results: Vec<T>,
}

/// The key named in a ciphertext, checked against the grant before
/// anything is decrypted.
fn check_header(caller: &Granted, ciphertext: &[u8]) -> Result<(), ApiError> {
    caller.permit(None)?;
    let (header, _) = envelope::parse_header(ciphertext)?;
    caller.permit(Some(&header.key))
}

fn decrypt_one(
    core: &mut Core,
    caller: &Granted,
    item: &DecryptItem,
) -> Result<Decrypted, ApiError> {
    check_header(caller, item.ciphertext.bytes())?;
    let decrypted = core
        .service
        .decrypt(item.context.bytes(), item.ciphertext.bytes())?;
    core.used();
    Ok(decrypted)
}

fn check_batch(items: usize) -> Result<(), ApiError> {
    if items > MAX_BATCH_ITEMS {
        return Err(ApiError::new(
            "invalid-argument",
            Exit::Usage,
            format!("a batch holds at most {MAX_BATCH_ITEMS} items, not {items}"),
        ));
    }
    Ok(())
}

/// `POST /v1/rewrap`.
pub(crate) async fn rewrap(
    State(daemon): Shared,
    access: Access,
    JsonBody(item): JsonBody<RewrapRequest>,
) -> Result<Response, ApiError> {
    let mut core = daemon.core.lock().await;
    let caller = core.enter(&access)?;
    check_header(&caller, item.ciphertext.bytes())?;
    let rewrapped = core
        .service
        .rewrap(item.context.bytes(), item.ciphertext.bytes())?;
    core.used();
    drop(core);
    Ok(ok(&Rewrapped {
        ciphertext: Bytes::new(rewrapped.ciphertext),
        key: rewrapped.key.to_string(),
        version: rewrapped.version,
        from_version: rewrapped.from_version,
    }))
}

/// A fresh data key and its wrapped copy.
#[derive(Serialize)]
struct NewDatakey<'a> {
    #[serde(serialize_with = "serialize_secret")]
    plaintext: &'a [u8],
    #[serde(serialize_with = "serialize_b64")]
    wrapped: &'a [u8],
    key: &'a str,
    version: u32,
}

/// `POST /v1/datakey/generate`.
pub(crate) async fn datakey_generate(
    State(daemon): Shared,
    access: Access,
    JsonBody(request): JsonBody<DatakeyRequest>,
) -> Result<Response, ApiError> {
    let mut core = daemon.core.lock().await;
    let caller = core.enter(&access)?;
    let name = parse_key(&request.key)?;
    caller.permit(Some(&name))?;
    let datakey = core
        .service
        .datakey_generate(&name, request.context.bytes())?;
    core.used();
    drop(core);
    Ok(json_sized(
        StatusCode::OK,
        &NewDatakey {
            plaintext: datakey.plaintext.expose(),
            wrapped: &datakey.wrapped,
            key: datakey.key.as_str(),
            version: datakey.version,
        },
        512,
    ))
}

/// `POST /v1/datakey/unwrap`.
pub(crate) async fn datakey_unwrap(
    State(daemon): Shared,
    access: Access,
    JsonBody(request): JsonBody<UnwrapRequest>,
) -> Result<Response, ApiError> {
    let mut core = daemon.core.lock().await;
    let caller = core.enter(&access)?;
    check_header(&caller, request.wrapped.bytes())?;
    let decrypted = core
        .service
        .datakey_unwrap(request.context.bytes(), request.wrapped.bytes())?;
    core.used();
    drop(core);
    Ok(json_sized(StatusCode::OK, &Opened::from(&decrypted), 256))
}

/// `POST /v1/sign`.
pub(crate) async fn sign(
    State(daemon): Shared,
    access: Access,
    JsonBody(request): JsonBody<SignRequest>,
) -> Result<Response, ApiError> {
    let mut core = daemon.core.lock().await;
    let caller = core.enter(&access)?;
    let name = parse_key(&request.key)?;
    caller.permit(Some(&name))?;
    let signature = core
        .service
        .sign(&name, &request.audience, &mut request.message.bytes())?;
    core.used();
    drop(core);
    let header = signing::parse(&signature)?;
    Ok(ok(&Signed {
        key: header.key.to_string(),
        version: header.version,
        counter: header.counter,
        signature: Bytes::new(signature),
    }))
}

/// `POST /v1/verify`.
pub(crate) async fn verify(
    State(daemon): Shared,
    access: Access,
    JsonBody(request): JsonBody<VerifyRequest>,
) -> Result<Response, ApiError> {
    let mut core = daemon.core.lock().await;
    let caller = core.enter(&access)?;
    caller.permit(None)?;
    let header = signing::parse(request.signature.bytes())?;
    caller.permit(Some(&header.key))?;
    let mut message = request.message.bytes();
    let verified = if request.fresh {
        core.service
            .verify_fresh(&request.audience, request.signature.bytes(), &mut message)?
    } else {
        core.service
            .verify(&request.audience, request.signature.bytes(), &mut message)?
    };
    core.used();
    drop(core);
    Ok(ok(&verified))
}
