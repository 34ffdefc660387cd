//! What a TPM failure means for the user: the response code mapped to a
//! typed error, refined with fresh state (dictionary-attack counter, PCR
//! values) where the TPM's answer is ambiguous.

use super::*;

pub(super) fn not_found(tcti: &str) -> Error {
    Error::not_found(
        KIND,
        DeviceError::Unreachable {
            tcti: tcti.to_owned(),
        },
    )
}

/// A TPM misbehaviour at step `code`.
pub(super) fn failed(code: &'static str, detail: impl Into<String>) -> Error {
    Error::device(
        KIND,
        DeviceError::Failed {
            code,
            detail: detail.into(),
        },
    )
}

/// Errors after which the context is not reused.
pub(super) fn drops_context(e: &Error) -> bool {
    match e {
        Error::DeviceNotFound { .. } | Error::DeviceRemoved => true,
        Error::Device {
            error: DeviceError::Tpm { rc, .. },
            ..
        } => matches!(rc, 0x902 | 0x903),
        _ => false,
    }
}

pub(super) fn lockout(da: &DaState) -> Error {
    Error::Lockout {
        seconds: (da.interval > 0).then_some(u64::from(da.interval)),
    }
}

/// Compares the key's PCRs with their enrolled values.
pub(super) fn check_pcrs(scope: &mut Scope<'_>, params: &Params, tcti: &str) -> Result<()> {
    if params.pcrs.is_empty() {
        return Ok(());
    }
    let now = scope
        .pcr_values(&params.pcrs)
        .map_err(|f| map_fail(&f, tcti))?;
    let then = params.pcr_value_bytes()?;
    let changed: Vec<u8> = params
        .pcrs
        .iter()
        .zip(now.iter().zip(&then))
        .filter(|(_, (a, b))| a != b)
        .map(|(&pcr, _)| pcr)
        .collect();
    if changed.is_empty() {
        Ok(())
    } else {
        tracing::warn!(?changed, "PCR values differ from enrollment");
        Err(pcr_mismatch(&changed))
    }
}

/// The PCR-mismatch error, naming the PCRs that changed.
pub(super) fn pcr_mismatch(changed: &[u8]) -> Error {
    Error::device(
        KIND,
        DeviceError::PcrMismatch {
            pcrs: changed.to_vec(),
        },
    )
}

/// Maps a failure while using an enrolled key, refining PIN, lockout and
/// policy failures with fresh state from the TPM.
pub(super) fn key_use_error(
    scope: &mut Scope<'_>,
    fail: &Fail,
    params: &Params,
    tcti: &str,
) -> Error {
    let meaning = rc::raw(&fail.err).map_or(Meaning::Other, rc::meaning);
    match meaning {
        Meaning::AuthFail => {
            tracing::warn!(op = fail.op, rc = %rc::show(&fail.err), "wrong TPM PIN");
            let retries_left = scope.da_state().ok().map(|da| da.retries_left());
            Error::WrongPin { retries_left }
        }
        Meaning::Lockout => {
            tracing::warn!(op = fail.op, rc = %rc::show(&fail.err), "TPM lockout");
            match scope.da_state() {
                Ok(da) => lockout(&da),
                Err(_) => Error::Lockout { seconds: None },
            }
        }
        Meaning::PolicyFail | Meaning::Value if !params.pcrs.is_empty() => {
            tracing::warn!(op = fail.op, rc = %rc::show(&fail.err), "TPM policy check failed");
            match check_pcrs(scope, params, tcti) {
                Err(e) => e,
                Ok(()) => pcr_mismatch(&[]),
            }
        }
        _ => map_fail(fail, tcti),
    }
}

/// Maps a TPM failure to the error the user sees, logging the raw code.
pub(super) fn map_fail(fail: &Fail, tcti: &str) -> Error {
    let code = rc::show(&fail.err);
    let Some(raw) = rc::raw(&fail.err) else {
        tracing::warn!(op = fail.op, error = %fail.err, "TPM wrapper error");
        return Error::device(
            KIND,
            DeviceError::Tss {
                op: fail.op.to_owned(),
                error: fail.err.to_string(),
            },
        );
    };
    tracing::warn!(op = fail.op, rc = %code, "TPM command failed");
    let detail = match rc::meaning(raw) {
        Meaning::Transport => return not_found(tcti),
        Meaning::AuthFail => return Error::WrongPin { retries_left: None },
        Meaning::Lockout => return Error::Lockout { seconds: None },
        Meaning::PolicyFail => "the TPM policy check failed (TPM_RC_POLICY_FAIL): the \
             key's PCR values or PIN policy do not match"
            .to_owned(),
        Meaning::Integrity => return Error::device(KIND, DeviceError::ForeignKey { rc: raw }),
        Meaning::BadAuth => format!(
            "{} was refused (TPM_RC_BAD_AUTH); if the TPM's owner hierarchy has a password, \
             keyward cannot derive its storage root key",
            fail.op
        ),
        Meaning::OutOfMemory => "the TPM has no free object or session slot: another program \
             holds transient objects (no resource manager on this TCTI?). Use \
             device:/dev/tpmrm0, or free them with `tpm2_flushcontext -t -s`"
            .to_owned(),
        Meaning::Busy => format!("the TPM is busy ({}); try again", fail.op),
        Meaning::EccPoint => {
            "the TPM rejected an elliptic-curve point (TPM_RC_ECC_POINT)".to_owned()
        }
        Meaning::Value | Meaning::Other => format!("{} failed: {}", fail.op, fail.err),
    };
    Error::device(KIND, DeviceError::Tpm { rc: raw, detail })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr_message_names_pcrs_and_remedy() {
        let msg = pcr_mismatch(&[7, 11]).to_string();
        assert!(msg.contains("PCR 7, 11"), "{msg}");
        assert!(msg.contains("recovery key"), "{msg}");
        assert!(msg.contains("keyward enroll tpm --replace"), "{msg}");
    }
}
