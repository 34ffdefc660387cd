//! keyward-api: the contract between `keyward serve` and its clients
//! (docs/API.md), as Rust types.
//!
//! - [`types`]: the request and answer of every endpoint; each request is
//!   an [`Endpoint`] that knows its route and answer type.
//! - [`routes`]: the method and path of every route.
//! - [`problem`]: the error body, its stable codes and their HTTP status;
//!   [`Exit`]: the CLI exit code every error carries.
//! - [`socket`]: where the socket is and when a client trusts it.
//! - [`http`] and [`client`]: the one HTTP/1.1 client of the tree (the
//!   CLI, the tests, the benchmark and the assistant's store use it).
//! - [`openapi`]: the OpenAPI 3.1 document generated from these types
//!   (committed as docs/openapi.json).
//!
//! It is not the daemon (keyward-daemon) and does not depend on the key
//! service (keyward-kms): a client links only this crate.
//!
//! ```no_run
//! use keyward_api::{Client, types::EncryptRequest, Bytes};
//!
//! let mut client = Client::connect_default()?.expect("a daemon runs");
//! let encrypted = client.send(&EncryptRequest {
//!     key: "notes".into(),
//!     plaintext: Bytes::copy_of(b"hi"),
//!     context: Bytes::default(),
//! })?;
//! println!("version {}", encrypted.version);
//! # Ok::<(), keyward_api::client::Error>(())
//! ```

#![forbid(unsafe_code)]

pub mod bytes;
pub mod client;
pub mod duration;
pub mod exit;
pub mod http;
pub mod openapi;
pub mod problem;
pub mod routes;
pub mod socket;
pub mod types;

pub use bytes::{Bytes, SecretText};
pub use client::Client;
pub use exit::Exit;
pub use problem::{ErrorBody, Problem};
pub use types::Endpoint;
