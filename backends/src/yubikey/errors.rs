//! Mapping `yubikey` crate and PC/SC errors to keyward errors with a remedy.

use keyward_kms::error::DeviceError;
use keyward_kms::{BackendKind, Error};

pub(crate) const KIND: BackendKind = BackendKind::Yubikey;

/// What was being done when the error happened: decides what an ambiguous
/// status word means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Opening, listing, metadata, PIN retries.
    Query,
    /// VERIFY with a PIN.
    Verify,
    /// A private-key operation after a successful VERIFY; `touch` says
    /// whether the key's policy may wait for a touch.
    KeyUse { touch: bool },
    /// Management operations (authenticate, generate, write objects).
    Admin,
}

/// Whether a PC/SC error means the card (or reader) went away.
pub(crate) fn is_removal(e: &pcsc::Error) -> bool {
    matches!(
        e,
        pcsc::Error::RemovedCard
            | pcsc::Error::NoSmartcard
            | pcsc::Error::ResetCard
            | pcsc::Error::UnpoweredCard
            | pcsc::Error::UnresponsiveCard
            | pcsc::Error::ReaderUnavailable
            | pcsc::Error::UnknownReader
            | pcsc::Error::CommError
    )
}

/// Whether a PC/SC error means pcscd itself is unreachable.
pub(crate) fn is_no_service(e: &pcsc::Error) -> bool {
    matches!(
        e,
        pcsc::Error::NoService | pcsc::Error::ServiceStopped | pcsc::Error::NoReadersAvailable
    )
}

/// Whether the card handle must be dropped after this error.
pub(crate) fn drops_handle(e: &yubikey::Error) -> bool {
    match e {
        yubikey::Error::PcscError { inner: Some(p) } => is_removal(p) || is_no_service(p),
        yubikey::Error::PcscError { inner: None } => true,
        _ => false,
    }
}

/// The keyward error for a `yubikey` crate error during `op`.
pub(crate) fn map(e: yubikey::Error, op: Op) -> Error {
    match e {
        yubikey::Error::WrongPin { tries: 0 } | yubikey::Error::PinLocked => Error::PinBlocked,
        yubikey::Error::WrongPin { tries } if op == Op::Verify => Error::WrongPin {
            retries_left: Some(u32::from(tries)),
        },
        yubikey::Error::PcscError { inner: Some(p) } if is_no_service(&p) => pcsc_unavailable(&p),
        yubikey::Error::PcscError { inner: Some(p) } if is_removal(&p) => Error::DeviceRemoved,
        yubikey::Error::AuthenticationError if op == (Op::KeyUse { touch: true }) => {
            Error::TouchTimeout
        }
        yubikey::Error::AuthenticationError if matches!(op, Op::KeyUse { .. }) => {
            device(DeviceError::Piv {
                sw: SW_SECURITY_STATUS,
                detail: "the YubiKey refused the key operation: security status not satisfied \
                         (the PIN was not accepted for this slot)"
                    .into(),
            })
        }
        yubikey::Error::AuthenticationError if op == Op::Admin => device(DeviceError::Piv {
            sw: SW_SECURITY_STATUS,
            detail: "the YubiKey refused the management key: run `keyward yubikey setup`".into(),
        }),
        other => failed(other.name().unwrap_or("YKPIV_ERROR"), format!("{other}")),
    }
}

/// `SW_SECURITY_STATUS_NOT_SATISFIED`.
pub(crate) const SW_SECURITY_STATUS: u16 = 0x6982;
/// `SW_FILE_NOT_FOUND`: the slot is empty.
pub(crate) const SW_FILE_NOT_FOUND: u16 = 0x6A82;

/// The error when PC/SC itself is unreachable.
pub(crate) fn pcsc_unavailable(p: &pcsc::Error) -> Error {
    Error::not_found(
        KIND,
        DeviceError::PcscUnavailable {
            detail: p.to_string(),
        },
    )
}

/// An [`Error::Device`] of this backend.
pub(crate) fn device(error: DeviceError) -> Error {
    Error::device(KIND, error)
}

/// A YubiKey misbehaviour at step `code`.
pub(crate) fn failed(code: &'static str, detail: impl Into<String>) -> Error {
    device(DeviceError::Failed {
        code,
        detail: detail.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_errors() {
        assert!(matches!(
            map(yubikey::Error::WrongPin { tries: 2 }, Op::Verify),
            Error::WrongPin {
                retries_left: Some(2)
            }
        ));
        assert!(matches!(
            map(yubikey::Error::WrongPin { tries: 0 }, Op::Verify),
            Error::PinBlocked
        ));
        assert!(matches!(
            map(yubikey::Error::PinLocked, Op::Verify),
            Error::PinBlocked
        ));
    }

    #[test]
    fn transport_errors() {
        let removed = yubikey::Error::PcscError {
            inner: Some(pcsc::Error::RemovedCard),
        };
        assert!(drops_handle(&removed));
        assert!(matches!(map(removed, Op::Query), Error::DeviceRemoved));
        let e = map(
            yubikey::Error::PcscError {
                inner: Some(pcsc::Error::NoService),
            },
            Op::Query,
        );
        assert!(e.to_string().contains("is pcscd running?"), "{e}");
        assert!(matches!(e, Error::DeviceNotFound { .. }));
    }

    #[test]
    fn security_status_depends_on_touch_policy() {
        assert!(matches!(
            map(
                yubikey::Error::AuthenticationError,
                Op::KeyUse { touch: true }
            ),
            Error::TouchTimeout
        ));
        assert!(matches!(
            map(
                yubikey::Error::AuthenticationError,
                Op::KeyUse { touch: false }
            ),
            Error::Device { .. }
        ));
        assert!(!drops_handle(&yubikey::Error::AuthenticationError));
    }
}
