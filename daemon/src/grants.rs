//! Who may call which route (docs/API.md, "Authentication and grants"), in
//! one table, and the extractor that looks a request's route up in it.
//!
//! A handler takes [`Access`] (the requester and what its route needs) and
//! enters the daemon with it ([`crate::session::Core::enter`]), which
//! authenticates and then checks the route's need: owner-only routes refuse
//! clients there, and routes that list keys check the operation there. The
//! keys an operation touches are known only once the request is read (a
//! key named in the body or the path, or the key inside a ciphertext's
//! header), so the handler asks [`Granted::permit`] for each, with the
//! operation the table names: no handler names an operation or an owner
//! check of its own.

use axum::extract::{FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use keyward_api::routes::{self, Method};
use keyward_kms::KeyName;
use keyward_kms::clients::Operation;

use crate::auth::{Caller, Requester};
use crate::error::ApiError;

/// What a route needs of its requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Anyone authenticated: the owner or any client.
    Anyone,
    /// The owner only (no `Authorization` header).
    Owner,
    /// A client needs this operation on every key the request touches.
    Grant(Operation, Keys),
}

/// When a route's keys are checked against a client's grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keys {
    /// One by one, as the handler reads them (named in the body or path,
    /// or inside the data); a batch checks each item on its own.
    Each,
    /// The operation on entry; the answer lists only the keys the client
    /// sees.
    Listed,
}

use Keys::{Each, Listed};
use Need::{Anyone, Grant, Owner};

/// Every route and what it needs.
const TABLE: [(Method, &str, Need); 28] = [
    (Method::Get, routes::STATUS, Anyone),
    (Method::Post, routes::UNLOCK, Owner),
    (Method::Post, routes::LOCK, Owner),
    (
        Method::Post,
        routes::ENCRYPT,
        Grant(Operation::Encrypt, Each),
    ),
    (
        Method::Post,
        routes::DECRYPT,
        Grant(Operation::Decrypt, Each),
    ),
    (
        Method::Post,
        routes::ENCRYPT_BATCH,
        Grant(Operation::Encrypt, Each),
    ),
    (
        Method::Post,
        routes::DECRYPT_BATCH,
        Grant(Operation::Decrypt, Each),
    ),
    (Method::Post, routes::REWRAP, Grant(Operation::Rewrap, Each)),
    (
        Method::Post,
        routes::DATAKEY_GENERATE,
        Grant(Operation::Datakey, Each),
    ),
    (
        Method::Post,
        routes::DATAKEY_UNWRAP,
        Grant(Operation::Datakey, Each),
    ),
    (Method::Post, routes::SIGN, Grant(Operation::Sign, Each)),
    (Method::Post, routes::VERIFY, Grant(Operation::Verify, Each)),
    (Method::Post, routes::DEVICE_SIGN, Owner),
    (Method::Get, routes::KEYS, Grant(Operation::Keys, Listed)),
    (Method::Post, routes::KEYS, Owner),
    (Method::Get, routes::KEY, Grant(Operation::Keys, Each)),
    (
        Method::Get,
        routes::KEY_PUBLIC,
        Grant(Operation::Keys, Each),
    ),
    (Method::Post, routes::KEY_ROTATE, Owner),
    (Method::Post, routes::KEY_RETIRE, Owner),
    (Method::Post, routes::ROTATE_DUE, Owner),
    (Method::Post, routes::MASTER_ROTATE, Owner),
    (Method::Get, routes::CLIENTS, Owner),
    (Method::Post, routes::CLIENTS, Owner),
    (Method::Post, routes::CLIENTS_REVOKE_ALL, Owner),
    (Method::Delete, routes::CLIENT, Owner),
    (Method::Get, routes::AUDIT, Owner),
    (Method::Get, routes::AUDIT_VERIFY, Owner),
    (Method::Get, routes::EVENTS, Owner),
];

/// What the route `path` (a template, as the router matched it) needs
/// with `method`.
fn need(method: &axum::http::Method, path: &str) -> Option<Need> {
    TABLE
        .iter()
        .find(|(m, p, _)| m.as_str() == method.as_str() && *p == path)
        .map(|(_, _, need)| *need)
}

/// The requester of a request and what its route needs.
#[derive(Debug)]
pub(crate) struct Access {
    /// Who sent the request.
    pub(crate) requester: Requester,
    /// What the route needs.
    pub(crate) need: Need,
}

impl<S: Send + Sync> FromRequestParts<S> for Access {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let requester = Requester::from_request_parts(parts, state).await?;
        let need = parts
            .extensions
            .get::<MatchedPath>()
            .and_then(|path| need(&parts.method, path.as_str()))
            .ok_or_else(|| ApiError::internal("a route missing from the grant table"))?;
        Ok(Self { requester, need })
    }
}

/// An authenticated requester whose route's need was checked on entry.
#[derive(Debug)]
pub(crate) struct Granted {
    caller: Caller,
    /// The operation of the route, for the keys it touches.
    op: Option<Operation>,
}

impl Granted {
    /// Checks `need` for `caller`: owner-only routes and listed keys now,
    /// the keys of an operation later ([`Granted::permit`]).
    ///
    /// # Errors
    /// `403 forbidden`.
    pub(crate) fn check(caller: Caller, need: Need) -> Result<Self, ApiError> {
        let op = match need {
            Anyone => None,
            Owner => {
                caller.require_owner()?;
                None
            }
            Grant(op, Listed) => {
                caller.require(op, None)?;
                Some(op)
            }
            Grant(op, Each) => Some(op),
        };
        Ok(Self { caller, op })
    }

    /// Checks that the route's operation is granted on `key` (`None`: on
    /// some key, before the key inside the data is read).
    ///
    /// # Errors
    /// `403 forbidden`.
    pub(crate) fn permit(&self, key: Option<&KeyName>) -> Result<(), ApiError> {
        match self.op {
            Some(op) => self.caller.require(op, key),
            None => Ok(()),
        }
    }

    /// Whether the requester sees `key` in a list.
    pub(crate) fn sees(&self, key: &KeyName) -> bool {
        self.caller.sees(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table and the OpenAPI document (keyward-api's list of routes)
    /// name the same routes.
    #[test]
    fn every_route_of_the_api_has_one_entry() {
        let doc: serde_json::Value =
            serde_json::from_str(&keyward_api::openapi::document()).expect("JSON");
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                documented.push((method.to_ascii_uppercase(), path.clone()));
            }
        }
        documented.sort();
        let mut table: Vec<(String, String)> = TABLE
            .iter()
            .map(|(m, p, _)| (m.as_str().to_owned(), (*p).to_owned()))
            .collect();
        table.sort();
        assert_eq!(table, documented);
        let method = axum::http::Method::POST;
        assert_eq!(need(&method, routes::UNLOCK), Some(Owner));
        assert_eq!(need(&method, "/v1/nowhere"), None);
    }
}
