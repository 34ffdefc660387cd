//! TPM and TSS response codes: the raw value, and what each means for the
//! user.
//!
//! tss-esapi 7.7 hides the raw `TSS2_RC` (its fields are private and its
//! `Display` mislabels ESAPI-layer codes), but its format-zero and
//! format-one codes print as `Response code value: 0x...`; we read the
//! value back from there and log it raw, as the TCG tools do.

use tss_esapi::constants::response_code::Tss2ResponseCode;

/// The layer byte of a `TSS2_RC` (bits 16-23).
const LAYER_SHIFT: u32 = 16;
/// `TSS2_TPM_RC_LAYER`: the TPM itself answered.
const LAYER_TPM: u32 = 0;
/// `TSS2_TCTI_RC_LAYER`: the transport failed.
const LAYER_TCTI: u32 = 10;
/// `TSS2_RESMGR_RC_LAYER` / `TSS2_RESMGR_TPM_RC_LAYER`: a resource manager.
const LAYER_RESMGR: u32 = 11;
const LAYER_RESMGR_TPM: u32 = 12;

/// `RC_FMT1`: bit 7 set means a format-one (parameter/handle/session) code.
const RC_FMT1: u32 = 0x080;
/// `RC_WARN`: format-zero warning.
const RC_WARN: u32 = 0x900;

/// What a TPM response means to us. Codes are TPM 2.0 Part 2, 6.6.3 with
/// the handle/parameter/session number masked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Meaning {
    /// `TPM_RC_AUTH_FAIL` (0x08E, seen as 0x98e): wrong PIN, counted by
    /// the dictionary-attack logic.
    AuthFail,
    /// `TPM_RC_BAD_AUTH` (0x0A2, seen as 0x9a2): wrong auth on a noDA
    /// object or hierarchy (e.g. an owner password is set).
    BadAuth,
    /// `TPM_RC_LOCKOUT` (0x921): dictionary-attack lockout.
    Lockout,
    /// `TPM_RC_POLICY_FAIL` (0x09D, seen as 0x99d): the policy session does
    /// not match the key's authPolicy; for us, PCR values changed.
    PolicyFail,
    /// `TPM_RC_VALUE` (0x084): a parameter is out of range.
    Value,
    /// `TPM_RC_INTEGRITY` (0x09F, seen as 0x1df): the private blob was not
    /// made by this TPM's SRK (another TPM, or modified).
    Integrity,
    /// `TPM_RC_ECC_POINT` (0x0A7, seen as 0x1e7): invalid ECC point.
    EccPoint,
    /// `TPM_RC_OBJECT_MEMORY` (0x902) / `SESSION_MEMORY` (0x903): no free
    /// slot (swtpm has 3 and no resource manager).
    OutOfMemory,
    /// `TPM_RC_RETRY`, `TPM_RC_YIELDED`, `TPM_RC_TESTING`,
    /// `TPM_RC_NV_RATE` and the like: the TPM is busy, try again.
    Busy,
    /// The transport (TCTI) or resource manager failed: TPM absent, swtpm
    /// not running, or the connection dropped.
    Transport,
    /// Anything else.
    Other,
}

/// The raw `TSS2_RC`, if the error came from the TSS stack.
pub(crate) fn raw(err: &tss_esapi::Error) -> Option<u32> {
    let tss_esapi::Error::Tss2Error(code) = err else {
        return None;
    };
    let text = match code {
        Tss2ResponseCode::Success => return Some(0),
        Tss2ResponseCode::FormatZero(c) => c.to_string(),
        Tss2ResponseCode::FormatOne(c) => c.to_string(),
    };
    let hex = text.rsplit("0x").next()?;
    u32::from_str_radix(hex.trim(), 16).ok()
}

/// Classifies a raw `TSS2_RC`.
pub(crate) fn meaning(rc: u32) -> Meaning {
    let layer = rc >> LAYER_SHIFT;
    match layer {
        LAYER_TCTI | LAYER_RESMGR => return Meaning::Transport,
        LAYER_TPM | LAYER_RESMGR_TPM => {}
        _ => return Meaning::Other,
    }
    let code = rc & 0xFFFF;
    if code & RC_FMT1 != 0 {
        // Format one: error number in bits 0-5, parameter flag in bit 6,
        // handle/session/parameter number in bits 8-11.
        return match code & 0x3F {
            0x0E => Meaning::AuthFail,
            0x22 => Meaning::BadAuth,
            0x1D => Meaning::PolicyFail,
            0x1F => Meaning::Integrity,
            0x27 => Meaning::EccPoint,
            0x04 => Meaning::Value,
            _ => Meaning::Other,
        };
    }
    if code & RC_WARN == RC_WARN {
        return match code & 0x7F {
            0x21 => Meaning::Lockout,
            0x02..=0x04 => Meaning::OutOfMemory,
            // YIELDED, CANCELED, TESTING, NV_RATE, RETRY, NV_UNAVAILABLE.
            0x08 | 0x09 | 0x0A | 0x20 | 0x22 | 0x23 => Meaning::Busy,
            _ => Meaning::Other,
        };
    }
    Meaning::Other
}

/// `0x` and the code, for messages and `Error::Device.code`.
pub(crate) fn show(err: &tss_esapi::Error) -> String {
    match raw(err) {
        Some(rc) => format!("{rc:#x}"),
        None => format!("tss-esapi: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_seen_on_swtpm_classify() {
        assert_eq!(meaning(0x98e), Meaning::AuthFail);
        assert_eq!(meaning(0x9a2), Meaning::BadAuth);
        assert_eq!(meaning(0x921), Meaning::Lockout);
        assert_eq!(meaning(0x99d), Meaning::PolicyFail);
        assert_eq!(meaning(0x1df), Meaning::Integrity);
        assert_eq!(meaning(0x1e7), Meaning::EccPoint);
        assert_eq!(meaning(0x902), Meaning::OutOfMemory);
        assert_eq!(meaning(0x922), Meaning::Busy);
        assert_eq!(meaning(0x000a_000a), Meaning::Transport);
        assert_eq!(meaning(0x0007_000b), Meaning::Other);
        assert_eq!(meaning(0x0101), Meaning::Other);
    }
}
