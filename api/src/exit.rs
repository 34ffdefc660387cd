//! The exit codes of `keyward` (docs/CLI.md), which the API's error body
//! carries as `exit`: a failure has the same code whether the CLI met it
//! on the store or through the daemon.

use serde::{Deserialize, Serialize};

/// Process exit codes. Stable: scripts depend on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u8", from = "u8")]
#[repr(u8)]
pub enum Exit {
    /// A failure not covered below (I/O, cancelled prompt).
    Failure = 1,
    /// Bad arguments (clap uses 2 too).
    Usage = 2,
    /// Authentication failed or is needed.
    Auth = 3,
    /// Keystore, key, version or protector not found.
    NotFound = 4,
    /// Decryption failed, truncated data, bad signature, tampered audit log.
    Integrity = 5,
    /// Refused by policy or to protect data.
    Refused = 6,
    /// Device or hardware error.
    Device = 7,
    /// The keystore cannot be used (busy, damaged, too new, permissions).
    Store = 8,
    /// Standard output was closed by the reader (e.g. `| head`); silent.
    BrokenPipe = 141,
}

impl From<Exit> for u8 {
    fn from(exit: Exit) -> Self {
        exit as u8
    }
}

impl From<u8> for Exit {
    /// The exit code a number on the wire stands for; numbers this
    /// version does not know read as [`Exit::Failure`].
    fn from(code: u8) -> Self {
        match code {
            2 => Self::Usage,
            3 => Self::Auth,
            4 => Self::NotFound,
            5 => Self::Integrity,
            6 => Self::Refused,
            7 => Self::Device,
            8 => Self::Store,
            141 => Self::BrokenPipe,
            _ => Self::Failure,
        }
    }
}

impl utoipa::PartialSchema for Exit {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Integer)
            .minimum(Some(0))
            .maximum(Some(255))
            .description(Some(
                "The CLI exit code of the same failure (docs/CLI.md): 1 failure, 2 usage, \
                 3 authentication, 4 not found, 5 integrity, 6 refused, 7 device, 8 store",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Exit {}

#[cfg(test)]
mod tests {
    use super::Exit;

    #[test]
    fn exit_codes_round_trip_and_unknown_ones_are_failures() {
        for exit in [
            Exit::Failure,
            Exit::Usage,
            Exit::Auth,
            Exit::NotFound,
            Exit::Integrity,
            Exit::Refused,
            Exit::Device,
            Exit::Store,
            Exit::BrokenPipe,
        ] {
            assert_eq!(Exit::from(u8::from(exit)), exit);
        }
        assert_eq!(Exit::from(99), Exit::Failure);
        assert_eq!(serde_json::to_string(&Exit::Auth).expect("json"), "3");
    }
}
