//! TPM 2.0 protector: a P-256 key inside the machine's TPM, used with a PIN
//! (PolicyAuthValue) and optionally bound to PCR values (PolicyPCR).
//!
//! What it is: [`Backend`], an implementation of
//! [`keyward_kms::backend::Backend`] over tss-esapi 7.7 (tpm2-tss 3.2). It
//! works with any TCTI tpm2-tss knows; we test it against swtpm and it is
//! meant to be used unchanged with the kernel resource manager,
//! `device:/dev/tpmrm0`. What it is not: a TPM provisioning tool. It
//! persists nothing in the TPM and needs an empty owner-hierarchy password.
//!
//! How it works (details and byte formats in docs/TPM.md):
//!
//! - **Enroll** re-derives the storage root key (SRK: TPM2_CreatePrimary
//!   with the TCG ECC P-256 SRK template, deterministic for a given owner
//!   seed) and creates under it a P-256 ECDH key and a P-256 ECDSA key,
//!   both with the authPolicy `[PolicyPCR(sha256: pcrs)] [PolicyAuthValue]`
//!   and the SHA-256 of the PIN as auth value. The descriptor stores both
//!   keys as marshalled `TPM2B_PUBLIC` / `TPM2B_PRIVATE` (never saved
//!   contexts, which die on TPM reset), the policy settings, and the SRK's
//!   identity.
//! - **Wrap** is the shared ECIES ([`keyward_kms::crypto::ecies`]) to the
//!   ECDH key's public point: no TPM needed, so master-key rotation works
//!   with the TPM absent.
//! - **Unwrap** re-derives the SRK and compares its identity with the
//!   enrolled one *before* asking for the PIN (a blob from another TPM is
//!   refused as [`Error::WrongDevice`]), reads the dictionary-attack state
//!   and PCRs (lockout and PCR changes are reported without spending a PIN
//!   try), then loads the key, starts a policy session salted with the SRK
//!   with AES-128-CFB parameter encryption both ways, satisfies the policy
//!   and runs TPM2_ECDH_ZGen on the blob's ephemeral point.
//! - **Sign** is TPM2_Sign (ECDSA P-256, SHA-256 hashed on the host) with
//!   the signing key, returned DER-encoded and checked on the host against
//!   the enrolled public key before it is returned.
//!
//! One owner of the TPM context: the `Backend` keeps one tss-esapi
//! `Context` behind a `Mutex`, so TPM commands from several threads never
//! interleave (swtpm and `/dev/tpm0` have no resource manager). The lock
//! is *not* held while the PIN prompt is open: unwrap and sign run in two
//! short phases (checks, then the use of the key), each flushing every
//! transient object and session it created before it returns. A transport
//! failure drops the context; the next call reconnects.
//!
//! ```no_run
//! use keyward_backends::tpm::Backend;
//! use keyward_kms::backend::Backend as _;
//! let tpm = Backend::with_tcti("swtpm:host=127.0.0.1,port=2321");
//! let devices = tpm.devices().expect("TPM reachable");
//! println!("{devices:?}");
//! ```

mod descriptor;
mod device;
mod errors;
mod keys;
mod rc;
mod unwrap;

use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};

use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::EncodePublicKey as _;
use secrecy::ExposeSecret as _;
use sha2::{Digest as _, Sha256};
use tss_esapi::{Context, TctiNameConf};
use zeroize::Zeroizing;

use keyward_kms::backend::ecdh_device::{self, EcdhDevice};
use keyward_kms::backend::{
    self, BackendKind, Callbacks, Capabilities, DeviceInfo, EnrollRequest, Enrollment, Health,
    SecretKind, SecretRequest, SignAlgorithm, Signature, WrapMode, Wrapped,
};
use keyward_kms::crypto::ecies;
use keyward_kms::error::DeviceError;
use keyward_kms::secret::Secret32;
use keyward_kms::{Error, Result};

use descriptor::Params;
use device::{Blob, DaState, Fail, KeyRole, Scope, SessionKind};
use errors::{check_pcrs, drops_context, failed, key_use_error, lockout, map_fail, not_found};
use rc::Meaning;
use unwrap::Device;

/// The TCTI used when neither the caller, `KEYWARD_TPM_TCTI` nor the
/// enrollment names one: the kernel's resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// Environment variable naming the TCTI (`swtpm:host=127.0.0.1,port=2321`,
/// `device:/dev/tpmrm0`, `tabrmd:`).
pub const TCTI_ENV: &str = "KEYWARD_TPM_TCTI";

const KIND: BackendKind = BackendKind::Tpm;

/// The TPM 2.0 backend. See the module documentation.
pub struct Backend {
    /// A TCTI fixed by the caller (`--tcti`); wins over everything but an
    /// enrollment request's own `device`.
    tcti: Option<String>,
    /// The one TPM context, with the TCTI it was opened for.
    conn: Mutex<Option<Conn>>,
}

struct Conn {
    tcti: String,
    ctx: Context,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("tpm::Backend")
            .field("tcti", &self.tcti)
            .finish_non_exhaustive()
    }
}

impl Default for Backend {
    fn default() -> Self {
        Self::new()
    }
}

/// What the checks before a key use found.
struct Precheck {
    retries_left: Option<u32>,
}

impl Backend {
    /// A backend that finds the TPM through, in order: the enroll request's
    /// `device`, `KEYWARD_TPM_TCTI`, the TCTI recorded in the enrollment,
    /// and [`DEFAULT_TCTI`]. Nothing is opened until first use.
    pub fn new() -> Self {
        Self {
            tcti: None,
            conn: Mutex::new(None),
        }
    }

    /// A backend that always talks to `tcti` (except where an enroll
    /// request names its own `device`), e.g. from `--tcti` or in tests.
    pub fn with_tcti(tcti: impl Into<String>) -> Self {
        Self {
            tcti: Some(tcti.into()),
            conn: Mutex::new(None),
        }
    }

    /// The public key of the enrollment's TPM signing key (ECDSA P-256).
    ///
    /// # Errors
    /// [`Error::Malformed`] for a descriptor that is not a TPM one.
    pub fn signing_public_key(enrollment: &Enrollment) -> Result<p256::PublicKey> {
        let params = Params::from_json(&enrollment.params)?;
        let bytes = hex::decode(&params.sign_public_key).map_err(|_| Error::Malformed {
            what: "TPM signing public key",
        })?;
        ecies::parse_public_key(&bytes)
    }

    /// The signing public key as a PEM SubjectPublicKeyInfo, as `openssl
    /// dgst -sha256 -verify key.pem -signature sig.der` reads it.
    ///
    /// # Errors
    /// As [`Backend::signing_public_key`].
    pub fn signing_public_key_pem(enrollment: &Enrollment) -> Result<String> {
        Self::signing_public_key(enrollment)?
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .map_err(|_| Error::InvalidPublicKey {
                what: "cannot encode as SubjectPublicKeyInfo",
            })
    }

    /// The TCTI to use: a request's `device`, then ours, then the
    /// environment, then the enrollment's, then the default.
    fn tcti_for(&self, requested: Option<&str>, enrolled: Option<&str>) -> String {
        requested
            .map(str::to_owned)
            .or_else(|| self.tcti.clone())
            .or_else(|| std::env::var(TCTI_ENV).ok().filter(|t| !t.is_empty()))
            .or_else(|| enrolled.map(str::to_owned))
            .unwrap_or_else(|| DEFAULT_TCTI.to_owned())
    }

    fn lock(&self) -> MutexGuard<'_, Option<Conn>> {
        // A panic inside a TPM call: the ESAPI state is unknown, so we
        // start over with a fresh context.
        backend::lock_or_reset(&self.conn, |conn| *conn = None)
    }

    /// Runs `f` on the TPM at `tcti` with the context lock held. Every
    /// handle `f` creates is flushed before this returns. On a transport
    /// failure or an out-of-memory answer the context is dropped, so the
    /// next call starts from a clean ESAPI state.
    fn with_tpm<T>(&self, tcti: &str, f: impl FnOnce(&mut Scope<'_>) -> Result<T>) -> Result<T> {
        let mut guard = self.lock();
        if guard.as_ref().is_some_and(|c| c.tcti != tcti) {
            *guard = None;
        }
        if guard.is_none() {
            *guard = Some(Conn {
                tcti: tcti.to_owned(),
                ctx: connect(tcti)?,
            });
        }
        let conn = guard.as_mut().expect("connected just above");
        let result = {
            let mut scope = Scope::new(&mut conn.ctx);
            f(&mut scope)
        };
        if let Err(e) = &result {
            if drops_context(e) {
                *guard = None;
            }
        }
        result
    }

    /// Re-derives the SRK, checks it is the enrolled TPM's and returns its
    /// handle (still loaded).
    fn enrolled_srk(
        scope: &mut Scope<'_>,
        params: &Params,
        tcti: &str,
    ) -> Result<tss_esapi::handles::KeyHandle> {
        let (srk, point) = scope.srk().map_err(|f| map_fail(&f, tcti))?;
        let found = descriptor::srk_id(point.to_sec1_bytes().as_ref());
        if found != params.srk_id {
            tracing::warn!(
                expected = %params.srk_id,
                %found,
                "the TPM's storage root key differs from the enrolled one"
            );
            return Err(Error::WrongDevice {
                expected: format!("the TPM this key was enrolled on ({})", params.device_id()),
                found: format!(
                    "another TPM, or this TPM after a clear ({}) at {tcti}",
                    descriptor::device_id(&found)
                ),
            });
        }
        Ok(srk)
    }

    /// Identity, lockout and PCR checks: everything we can learn before a
    /// PIN is asked for. Leaves nothing loaded.
    fn precheck(scope: &mut Scope<'_>, params: &Params, tcti: &str) -> Result<Precheck> {
        let srk = Self::enrolled_srk(scope, params, tcti)?;
        scope.flush(srk.into()).map_err(|f| map_fail(&f, tcti))?;
        let retries_left = if params.pin {
            let da = scope.da_state().map_err(|f| map_fail(&f, tcti))?;
            if da.in_lockout {
                tracing::warn!(
                    failures = da.failures,
                    max = da.max_tries,
                    "TPM in dictionary-attack lockout"
                );
                return Err(lockout(&da));
            }
            Some(da.retries_left())
        } else {
            None
        };
        check_pcrs(scope, params, tcti)?;
        Ok(Precheck { retries_left })
    }

    /// Loads `blob` under the enrolled SRK, starts a salted policy (or
    /// HMAC) session and satisfies the key's policy. Returns the session
    /// and the key; the SRK is already flushed.
    fn prepare_key(
        scope: &mut Scope<'_>,
        params: &Params,
        blob: &Blob,
        auth: &[u8],
        encrypt_response: bool,
        tcti: &str,
    ) -> Result<(
        tss_esapi::interface_types::session_handles::AuthSession,
        tss_esapi::handles::KeyHandle,
    )> {
        let srk = Self::enrolled_srk(scope, params, tcti)?;
        // Again here: without a PIN this is the only phase, and with one the
        // PCRs may have changed while the prompt was open.
        check_pcrs(scope, params, tcti)?;
        let kind = if params.policy.is_empty() {
            SessionKind::Hmac
        } else {
            SessionKind::Policy
        };
        let map = |f: Fail| map_fail(&f, tcti);
        let session = scope
            .salted_session(srk, kind, false, encrypt_response)
            .map_err(map)?;
        let key = scope.load(srk, blob).map_err(map)?;
        // The SRK has done its two jobs (salt, parent): free its slot.
        scope.flush(srk.into()).map_err(map)?;
        if kind == SessionKind::Policy {
            scope
                .run_policy(session, params.pin, &params.pcrs)
                .map_err(|f| key_use_error(scope, &f, params, tcti))?;
        }
        scope.set_auth(key, auth).map_err(map)?;
        Ok((session, key))
    }

    /// Phase 1 of unwrap and sign for a PIN-protected key: the checks,
    /// then the prompt (with the tries left), outside the context lock.
    /// Returns the auth value. A key without a PIN needs no phase 1: its
    /// checks run in phase 2 ([`Backend::prepare_key`]).
    fn checks_and_pin(
        &self,
        params: &Params,
        tcti: &str,
        ui: &dyn Callbacks,
    ) -> Result<Zeroizing<Vec<u8>>> {
        if !params.pin {
            return Ok(Zeroizing::new(Vec::new()));
        }
        let pre = self.with_tpm(tcti, |scope| Self::precheck(scope, params, tcti))?;
        Self::ask_pin(ui, params, pre.retries_left)
    }

    /// Asks for the PIN of an enrolled key (with the tries left), hashed.
    fn ask_pin(
        ui: &dyn Callbacks,
        params: &Params,
        retries_left: Option<u32>,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let description = format!("TPM ({})", params.device_id());
        let pin = ui.request_secret(&SecretRequest {
            kind: SecretKind::Pin,
            description: &description,
            retries_left,
        })?;
        if pin.expose_secret().is_empty() {
            // An empty PIN can never be right; do not spend a try on it.
            return Err(Error::InvalidArgument {
                what: "the TPM PIN is empty".into(),
            });
        }
        Ok(Zeroizing::new(
            descriptor::pin_auth(pin.expose_secret()).to_vec(),
        ))
    }

    /// Asks for a new PIN twice and returns its hash.
    fn ask_new_pin(ui: &dyn Callbacks, label: &str) -> Result<Zeroizing<Vec<u8>>> {
        let ask = |description: &str| {
            ui.request_secret(&SecretRequest {
                kind: SecretKind::Pin,
                description,
                retries_left: None,
            })
        };
        let first = ask(&format!("new TPM PIN for {label:?}"))?;
        if first.expose_secret().is_empty() {
            return Err(Error::InvalidArgument {
                what: "the TPM PIN must not be empty (use pin=false for no PIN)".into(),
            });
        }
        let second = ask(&format!("new TPM PIN for {label:?} (again)"))?;
        if first.expose_secret() != second.expose_secret() {
            return Err(Error::InvalidArgument {
                what: "the two TPM PINs differ".into(),
            });
        }
        Ok(Zeroizing::new(
            descriptor::pin_auth(first.expose_secret()).to_vec(),
        ))
    }
}

impl backend::Backend for Backend {
    fn kind(&self) -> BackendKind {
        BackendKind::Tpm
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            wrap_modes: vec![WrapMode::EciesP256],
            sign: vec![SignAlgorithm::EcdsaP256Sha256],
            pin: true,
            touch: false,
            pcr: true,
        }
    }

    fn devices(&self) -> Result<Vec<DeviceInfo>> {
        let tcti = self.tcti_for(None, None);
        self.with_tpm(&tcti, |scope| {
            let map = |f: Fail| map_fail(&f, &tcti);
            let (srk, point) = scope.srk().map_err(map)?;
            scope.flush(srk.into()).map_err(map)?;
            let (maker, firmware) = scope.vendor().map_err(map)?;
            let da = scope.da_state().map_err(map)?;
            let id = descriptor::srk_id(point.to_sec1_bytes().as_ref());
            Ok(vec![DeviceInfo {
                id: descriptor::device_id(&id),
                model: format!("TPM 2.0 ({maker}) at {tcti}"),
                firmware: Some(firmware),
                retries_left: Some(da.retries_left()),
            }])
        })
    }

    fn enroll(&self, req: &EnrollRequest, ui: &dyn Callbacks) -> Result<Enrollment> {
        let options = req.options.tpm()?;
        let (pin, pcrs) = (options.pin, options.pcrs.indices());
        let tcti = self.tcti_for(req.device.as_deref(), None);

        // Phase 1: is there a TPM, and which one? (Before any prompt.)
        let srk_id = self.with_tpm(&tcti, |scope| {
            let map = |f: Fail| map_fail(&f, &tcti);
            let (srk, point) = scope.srk().map_err(map)?;
            scope.flush(srk.into()).map_err(map)?;
            Ok(descriptor::srk_id(point.to_sec1_bytes().as_ref()))
        })?;

        let auth = if pin {
            Self::ask_new_pin(ui, &req.label)?
        } else {
            Zeroizing::new(Vec::new())
        };

        // Phase 2: create both keys, then prove they work.
        let params = self.with_tpm(&tcti, |scope| {
            let map = |f: Fail| map_fail(&f, &tcti);
            let (srk, point) = scope.srk().map_err(map)?;
            if descriptor::srk_id(point.to_sec1_bytes().as_ref()) != srk_id {
                return Err(failed(
                    "srk-changed",
                    "the TPM changed during enrollment; try again",
                ));
            }
            let values = scope.pcr_values(pcrs).map_err(map)?;
            let policy = descriptor::policy_digest(pin, pcrs, &values);
            // Salted HMAC session on the SRK: TPM2_Create's first parameter
            // (the new key's auth value) travels encrypted.
            let session = scope
                .salted_session(srk, SessionKind::Hmac, true, false)
                .map_err(map)?;
            let template = |role| {
                device::key_template(role, policy.as_ref(), pin).map_err(|err| {
                    map_fail(
                        &Fail {
                            op: "key template",
                            err,
                        },
                        &tcti,
                    )
                })
            };
            let ecdh = scope
                .create(srk, session, template(KeyRole::Ecdh)?, &auth)
                .map_err(map)?;
            let sign = scope
                .create(srk, session, template(KeyRole::Sign)?, &auth)
                .map_err(map)?;
            let sign_point = Blob::parse(&sign)?
                .public_key()
                .ok_or(Error::InvalidPublicKey {
                    what: "the TPM returned an invalid signing key",
                })?;
            Ok(Params {
                version: descriptor::VERSION,
                tcti: tcti.clone(),
                srk_template: descriptor::SRK_TEMPLATE.to_owned(),
                srk_id: srk_id.clone(),
                pin,
                pcrs: pcrs.to_vec(),
                pcr_values: pcrs
                    .iter()
                    .copied()
                    .zip(values.iter().map(hex::encode))
                    .collect(),
                policy: policy.map(hex::encode).unwrap_or_default(),
                ecdh,
                sign,
                sign_public_key: hex::encode(ecies::compress(&sign_point)),
            })
        })?;
        let ecdh_point =
            Blob::parse(&params.ecdh)?
                .public_key()
                .ok_or(Error::InvalidPublicKey {
                    what: "the TPM returned an invalid ECDH key",
                })?;
        let enrollment = Enrollment {
            kind: BackendKind::Tpm,
            device_id: Some(params.device_id()),
            public_key: ecies::compress(&ecdh_point).to_vec(),
            params: params.to_json(),
        };

        // Self-test with the PIN we were just given: an enrollment that
        // cannot unlock must never be stored.
        let probe = Secret32::random()?;
        let wrapped = ecies::seal(
            &enrollment.public_key,
            &probe,
            b"keyward/v1/tpm-enroll-test",
        )?;
        let opened = self.use_key(
            &params,
            KeyRole::Ecdh,
            &tcti,
            &auth,
            |scope, session, key| {
                ecies::open(
                    &enrollment.public_key,
                    &wrapped,
                    b"keyward/v1/tpm-enroll-test",
                    |epk| {
                        scope
                            .ecdh_zgen(session, key, epk)
                            .map_err(|f| key_use_error(scope, &f, &params, &tcti))
                    },
                )
            },
        )?;
        if opened.expose() != probe.expose() {
            return Err(failed("self-test", "the new TPM key failed its self-test"));
        }
        self.sign_with(&params, &tcti, &auth, b"keyward/v1/tpm-enroll-test")?;
        tracing::info!(
            device = %params.device_id(),
            pin,
            pcrs = ?params.pcrs,
            "TPM protector enrolled"
        );
        Ok(enrollment)
    }

    fn wrap(&self, enrollment: &Enrollment, secret: &Secret32, aad: &[u8]) -> Result<Wrapped> {
        ecdh_device::wrap(&Device(self), enrollment, secret, aad)
    }

    fn unwrap(
        &self,
        enrollment: &Enrollment,
        wrapped: &Wrapped,
        aad: &[u8],
        ui: &dyn Callbacks,
    ) -> Result<Secret32> {
        ecdh_device::unwrap(&Device(self), enrollment, wrapped, aad, ui)
    }

    fn sign(&self, enrollment: &Enrollment, msg: &[u8], ui: &dyn Callbacks) -> Result<Signature> {
        enrollment.check_kind(KIND)?;
        let params = Params::from_json(&enrollment.params)?;
        let tcti = self.tcti_for(None, Some(&params.tcti));
        let auth = self.checks_and_pin(&params, &tcti, ui)?;
        let der = self.sign_with(&params, &tcti, &auth, msg)?;
        Ok(Signature {
            algorithm: SignAlgorithm::EcdsaP256Sha256,
            bytes: der,
        })
    }

    fn health(&self, enrollment: &Enrollment) -> Result<Health> {
        enrollment.check_kind(KIND)?;
        let params = Params::from_json(&enrollment.params)?;
        let tcti = self.tcti_for(None, Some(&params.tcti));
        let result = self.with_tpm(&tcti, |scope| {
            let map = |f: Fail| map_fail(&f, &tcti);
            let (srk, point) = scope.srk().map_err(map)?;
            scope.flush(srk.into()).map_err(map)?;
            let matches = descriptor::srk_id(point.to_sec1_bytes().as_ref()) == params.srk_id;
            let da = scope.da_state().map_err(map)?;
            let pcrs = if matches {
                check_pcrs(scope, &params, &tcti).err()
            } else {
                None
            };
            Ok((matches, da, pcrs))
        });
        match result {
            Ok((matches, da, pcr_error)) => {
                let lockout_seconds =
                    (params.pin && da.in_lockout).then_some(u64::from(da.interval));
                let detail = if !matches {
                    format!(
                        "the TPM at {tcti} is not the one this protector was enrolled on ({})",
                        params.device_id()
                    )
                } else if let Some(e) = pcr_error {
                    e.to_string()
                } else if let Some(s) = lockout_seconds {
                    format!(
                        "TPM {} is in dictionary-attack lockout ({s} s per try)",
                        params.device_id()
                    )
                } else {
                    format!("TPM {} ready", params.device_id())
                };
                Ok(Health {
                    present: true,
                    matches,
                    retries_left: params.pin.then(|| da.retries_left()),
                    lockout_seconds,
                    detail,
                })
            }
            Err(Error::DeviceNotFound { hint, .. }) => Ok(Health {
                present: false,
                matches: false,
                retries_left: None,
                lockout_seconds: None,
                detail: hint.map_or_else(|| format!("no TPM at {tcti}"), |h| h.to_string()),
            }),
            Err(e) => Err(e),
        }
    }

    /// Closes the TPM connection (the TCTI socket or device file); handles
    /// were already flushed after each operation.
    fn end_session(&self) {
        *self.lock() = None;
    }
}

/// Opens a context on `tcti`.
fn connect(tcti: &str) -> Result<Context> {
    let conf = TctiNameConf::from_str(tcti).map_err(|_| Error::InvalidArgument {
        what: format!(
            "unknown TPM TCTI {tcti:?}: expected device:/dev/tpmrm0, \
             swtpm:host=127.0.0.1,port=2321, mssim:... or tabrmd:"
        ),
    })?;
    Context::new(conf).map_err(|err| {
        tracing::warn!(%tcti, rc = %rc::show(&err), "cannot open the TPM");
        not_found(tcti)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcti_precedence() {
        let b = Backend::with_tcti("swtpm:host=127.0.0.1,port=1");
        assert_eq!(
            b.tcti_for(Some("device:/dev/tpm0"), Some("x")),
            "device:/dev/tpm0"
        );
        assert_eq!(b.tcti_for(None, Some("x")), "swtpm:host=127.0.0.1,port=1");
    }

    #[test]
    fn unknown_tcti_is_an_argument_error() {
        assert!(matches!(
            connect("nonsense:"),
            Err(Error::InvalidArgument { .. })
        ));
    }
}
