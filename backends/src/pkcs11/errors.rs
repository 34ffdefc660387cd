//! Mapping of cryptoki errors to keyward's [`Error`], keeping the raw
//! `CKR_*` name in [`DeviceError::Pkcs11`].

use cryptoki::error::{Error as CkError, RvError};
use keyward_kms::error::{DeviceError, Instead};
use keyward_kms::{BackendKind, Error};

pub(crate) const KIND: BackendKind = BackendKind::Pkcs11;

/// The `CKR_*` name of a return value: cryptoki spells them in CamelCase
/// (`PinIncorrect`), the specification and every vendor's documentation as
/// `CKR_PIN_INCORRECT`, which is what users search for.
pub(crate) fn ckr_name(rv: RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR_");
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Maps a cryptoki error from `what` (a short description of the step,
/// e.g. "C_Login") to keyward's error.
pub(crate) fn map(err: CkError, what: &str) -> Error {
    match err {
        CkError::Pkcs11(rv, function) => map_rv(rv, &format!("{function} ({what})")),
        CkError::LibraryLoading(e) => device(DeviceError::ModuleNotLoadable {
            path: None,
            reason: e.to_string(),
        }),
        other => device(DeviceError::Failed {
            code: "cryptoki",
            detail: format!("{what}: {other}"),
        }),
    }
}

fn map_rv(rv: RvError, what: &str) -> Error {
    match rv {
        RvError::PinIncorrect => Error::WrongPin { retries_left: None },
        RvError::PinLocked => Error::PinBlocked,
        RvError::TokenNotPresent | RvError::TokenNotRecognized => {
            Error::not_found(KIND, DeviceError::TokenGone { rv: ckr_name(rv) })
        }
        RvError::DeviceRemoved => Error::DeviceRemoved,
        _ => device(DeviceError::Pkcs11 {
            rv: ckr_name(rv),
            function: what.to_owned(),
        }),
    }
}

/// An [`Error::Device`] of this backend.
pub(crate) fn device(error: DeviceError) -> Error {
    Error::device(KIND, error)
}

/// A device misbehaviour of this backend at step `code`.
pub(crate) fn failed(code: &'static str, detail: impl Into<String>) -> Error {
    device(DeviceError::Failed {
        code,
        detail: detail.into(),
    })
}

/// A mechanism the token refuses, and the enrollment that would work.
pub(crate) fn unsupported(mechanism: &'static str, instead: Instead) -> Error {
    device(DeviceError::MechanismMissing { mechanism, instead })
}

/// Is this error a sign that our cached session or slot went stale (token
/// removed or re-created)?
pub(crate) fn is_stale(err: &CkError) -> bool {
    matches!(
        err,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::TokenNotPresent
                | RvError::DeviceRemoved
                | RvError::SlotIdInvalid
                | RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid
                | RvError::UserNotLoggedIn,
            _
        )
    )
}

/// Does the error mean the mechanism is not available on this token?
pub(crate) fn is_mechanism_refused(err: &CkError) -> bool {
    matches!(
        err,
        CkError::Pkcs11(
            RvError::MechanismInvalid
                | RvError::MechanismParamInvalid
                | RvError::FunctionNotSupported
                | RvError::CurveNotSupported
                | RvError::KeyFunctionNotPermitted,
            _
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;

    #[test]
    fn ckr_names() {
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            ckr_name(RvError::UserAlreadyLoggedIn),
            "CKR_USER_ALREADY_LOGGED_IN"
        );
        assert_eq!(ckr_name(RvError::GeneralError), "CKR_GENERAL_ERROR");
        assert_eq!(ckr_name(RvError::DataLenRange), "CKR_DATA_LEN_RANGE");
    }

    #[test]
    fn mapping() {
        let e = |rv| map(CkError::Pkcs11(rv, Function::Login), "login");
        assert!(matches!(
            e(RvError::PinIncorrect),
            Error::WrongPin { retries_left: None }
        ));
        assert!(matches!(e(RvError::PinLocked), Error::PinBlocked));
        assert!(matches!(
            e(RvError::TokenNotPresent),
            Error::DeviceNotFound { .. }
        ));
        assert!(matches!(e(RvError::DeviceRemoved), Error::DeviceRemoved));
        match e(RvError::GeneralError) {
            Error::Device {
                error: error @ DeviceError::Pkcs11 { .. },
                ..
            } => {
                assert_eq!(error.code(), "CKR_GENERAL_ERROR");
                let message = error.to_string();
                assert!(message.contains("login"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
