//! The unlocked session (docs/API.md, "Sessions"): unlock over the API,
//! and the idle and absolute timeouts.
//!
//! The daemon starts locked. `POST /v1/unlock` recovers the master key with
//! a protector; the secrets it needs come in the request and are answered
//! from it by [`ApiCallbacks`], which never asks anyone: a secret that is
//! missing makes the unlock fail with `428 secret-required` before anything
//! is sent to a device. The session ends at the first of `POST /v1/lock`,
//! SIGHUP, the idle timeout (no successful key operation for that long) and
//! the absolute timeout. Both timeouts are the daemon's
//! (`--idle-timeout`, `--absolute-timeout`) unless an unlock asks for
//! shorter ones; never longer.
//!
//! Expiry is checked on every request (a late timer never lets an expired
//! session serve one more operation) and once a second by [`expire`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use keyward_api::types::{Secrets, SessionInfo, UnlockRequest, UnlockWith as With, Unlocked};
use keyward_kms::backend::{Notice, SecretKind, SecretRequest};
use keyward_kms::service::{ProtectorInfo, Supplied, UnlockWith};
use keyward_kms::{Callbacks, Error, SecretString, Service};
use tokio::sync::watch;

use crate::Exit;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::grants::{Access, Granted};
use crate::{Daemon, unix_now};

/// The daemon's session timeouts (the longest an unlock may ask for).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Lock after this long without a successful key operation.
    pub idle: Duration,
    /// Lock this long after unlock, whatever happens.
    pub absolute: Duration,
}

/// The Service and the session, behind the daemon's one lock.
#[derive(Debug)]
pub(crate) struct Core {
    /// The key service.
    pub(crate) service: Service,
    /// The session; `Some` exactly when the service is unlocked.
    pub(crate) session: Option<Session>,
}

impl Core {
    /// What every request does first: ends an expired session,
    /// authenticates, names the actor of the audit records to come, and
    /// checks what the route needs ([`crate::grants`]).
    ///
    /// # Errors
    /// `401 unauthorized`; `403 forbidden`.
    pub(crate) fn enter(&mut self, access: &Access) -> Result<Granted, ApiError> {
        self.expire_if_due(Instant::now());
        let requester = &access.requester;
        let caller = Caller::authenticate(&requester.credentials, &mut self.service)?;
        self.service
            .set_actor(requester.peer.actor(caller.client()));
        Granted::check(caller, access.need)
    }

    /// Locks if a timeout passed; the reason if it did.
    pub(crate) fn expire_if_due(&mut self, now: Instant) -> Option<&'static str> {
        let reason = self.session.as_ref()?.expired(now)?;
        tracing::info!(reason, "session timed out: locked");
        self.lock_as_daemon(reason);
        Some(reason)
    }

    /// Ends the session on a request: audits a `lock` with `reason` (and
    /// the requester as actor), ends backend sessions and zeroizes every
    /// key. Idempotent.
    pub(crate) fn lock(&mut self, reason: &str) {
        self.service.lock_because(reason);
        self.session = None;
    }

    /// [`Core::lock`] on the daemon's own account (a timeout, a signal,
    /// shutdown): the daemon is the actor of the audit record.
    pub(crate) fn lock_as_daemon(&mut self, reason: &str) {
        self.service
            .set_actor(keyward_kms::service::Actor::current());
        self.lock(reason);
    }

    /// Notes a successful key operation (restarts the idle timeout).
    pub(crate) fn used(&mut self) {
        if let Some(session) = self.session.as_mut() {
            session.last_use = Instant::now();
        }
    }
}

/// An unlocked session.
#[derive(Debug)]
pub(crate) struct Session {
    /// The protector that unlocked.
    protector: ProtectorInfo,
    /// Unix time of the unlock.
    unlocked_at: i64,
    /// When it happened, on the monotonic clock.
    started: Instant,
    /// Last successful key operation.
    last_use: Instant,
    /// Idle timeout of this session.
    idle: Duration,
    /// Absolute timeout of this session.
    absolute: Duration,
}

impl Session {
    fn new(protector: ProtectorInfo, timeouts: Timeouts) -> Self {
        let now = Instant::now();
        Self {
            protector,
            unlocked_at: unix_now(),
            started: now,
            last_use: now,
            idle: timeouts.idle,
            absolute: timeouts.absolute,
        }
    }

    /// Which timeout has passed at `now`, if any.
    fn expired(&self, now: Instant) -> Option<&'static str> {
        if now >= self.started + self.absolute {
            Some("absolute")
        } else if now >= self.last_use + self.idle {
            Some("idle")
        } else {
            None
        }
    }

    /// The session object of `status` and `unlock`.
    pub(crate) fn info(&self) -> SessionInfo {
        let now = Instant::now();
        let unix = unix_now();
        let at = |deadline: Instant| {
            let left = deadline.saturating_duration_since(now).as_secs();
            unix.saturating_add(i64::try_from(left).unwrap_or(i64::MAX))
        };
        SessionInfo {
            protector: self.protector.id,
            unlocked_at: self.unlocked_at,
            idle_expires_at: at(self.last_use + self.idle),
            absolute_expires_at: at(self.started + self.absolute),
        }
    }
}

/// The answer of an unlock: the protector that unlocked and the session.
fn unlocked(session: &Session) -> Unlocked {
    let p = &session.protector;
    Unlocked {
        protector: keyward_api::types::ProtectorInfo {
            id: p.id,
            kind: p.kind.as_str().to_owned(),
            label: p.label.clone(),
            device_id: p.device_id.clone(),
            mk_epoch: p.mk_epoch,
            created_at: p.created_at,
        },
        session: session.info(),
    }
}

/// Unlocks (or, already unlocked, returns the session, shortened if
/// asked). Runs on a blocking thread: the protector may talk to hardware.
///
/// # Errors
/// The Service's unlock errors; `428 secret-required`; `400` for a bad
/// `with` or timeout.
pub(crate) fn unlock(
    core: &mut Core,
    request: UnlockRequest,
    defaults: Timeouts,
) -> Result<Unlocked, ApiError> {
    let timeouts = Timeouts {
        idle: shorter(defaults.idle, request.idle_timeout, "idle_timeout")?,
        absolute: shorter(
            defaults.absolute,
            request.absolute_timeout,
            "absolute_timeout",
        )?,
    };
    if let Some(session) = core.session.as_mut() {
        session.idle = session.idle.min(timeouts.idle);
        session.absolute = session.absolute.min(timeouts.absolute);
        return Ok(unlocked(session));
    }
    let with = choose(&core.service, request.with.as_ref(), &request.secrets)?;
    let callbacks = ApiCallbacks::new(request.secrets);
    let protector = core.service.unlock(with, &callbacks)?;
    tracing::info!(protector = protector.id, kind = %protector.kind, "unlocked");
    let session = Session::new(protector, timeouts);
    let body = unlocked(&session);
    core.session = Some(session);
    Ok(body)
}

/// `requested` seconds if given (and not above `default`), else `default`.
fn shorter(default: Duration, requested: Option<u64>, name: &str) -> Result<Duration, ApiError> {
    match requested {
        None => Ok(default),
        Some(0) => Err(ApiError::new(
            "invalid-argument",
            Exit::Usage,
            format!("{name} must be at least one second"),
        )),
        Some(secs) => Ok(default.min(Duration::from_secs(secs))),
    }
}

/// Which protector to unlock with: kms decides from `with` and the
/// secrets sent ([`Service::choose_unlock`], the same choice as the CLI's),
/// else any (whose first protector then names the secret it needs).
fn choose(
    service: &Service,
    with: Option<&With>,
    secrets: &Secrets,
) -> Result<UnlockWith, ApiError> {
    let mut request = keyward_kms::service::UnlockRequest::default();
    match with {
        Some(With::Id(id)) => request.protector = Some(*id),
        Some(With::Name(name)) if name != "any" => {
            request.kind = Some(name.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "\"with\" must be \"any\", a protector kind (recovery, passphrase, tpm, \
                     pkcs11, yubikey) or a protector id, not {name:?}"
                ))
            })?);
        }
        _ => {}
    }
    request.supplied = Supplied::strongest(
        [
            secrets.recovery_key.as_ref().map(|_| Supplied::RecoveryKey),
            secrets.passphrase.as_ref().map(|_| Supplied::Passphrase),
            secrets.pin.as_ref().map(|_| Supplied::Pin),
        ]
        .into_iter()
        .flatten(),
    );
    service.choose_unlock(&request).map_err(|e| match e {
        Error::PinTarget { devices } if devices.is_empty() => ApiError::new(
            "protector-not-found",
            Exit::NotFound,
            "a PIN was sent but no hardware protector is enrolled",
        ),
        Error::PinTarget { devices } => ApiError::new(
            "invalid-argument",
            Exit::Usage,
            format!(
                "a PIN was sent and {} hardware protectors are enrolled",
                devices.len()
            ),
        )
        .hint("name the one the PIN is for with \"with\": ID or KIND"),
        e => e.into(),
    })
}

/// The daemon's [`Callbacks`]: answers from the secrets of one unlock
/// request. A PIN or PUK is given out once (a second device asking for it
/// would spend one of its tries on a PIN that is not its own); a missing
/// secret is [`Error::SecretRequired`]. Dropped, with its secrets, at the
/// end of the request: the daemon never keeps a secret it was sent.
pub(crate) struct ApiCallbacks {
    pin: Mutex<Option<SecretString>>,
    puk: Mutex<Option<SecretString>>,
    passphrase: Option<SecretString>,
    recovery_key: Option<SecretString>,
}

impl ApiCallbacks {
    /// Callbacks with no secret at all: a device that asks for one gets
    /// `428 secret-required` (device signing while unlocked).
    pub(crate) fn without_secrets() -> Self {
        Self::new(Secrets::default())
    }

    fn new(secrets: Secrets) -> Self {
        Self {
            pin: Mutex::new(secrets.pin.map(keyward_api::SecretText::into_secret)),
            puk: Mutex::new(secrets.puk.map(keyward_api::SecretText::into_secret)),
            passphrase: secrets.passphrase.map(keyward_api::SecretText::into_secret),
            recovery_key: secrets
                .recovery_key
                .map(keyward_api::SecretText::into_secret),
        }
    }
}

impl Callbacks for ApiCallbacks {
    fn request_secret(&self, request: &SecretRequest<'_>) -> keyward_kms::Result<SecretString> {
        let once = |slot: &Mutex<Option<SecretString>>| {
            slot.lock().unwrap_or_else(PoisonError::into_inner).take()
        };
        let (secret, kind) = match request.kind {
            SecretKind::Pin => (once(&self.pin), "pin"),
            SecretKind::Puk => (once(&self.puk), "puk"),
            SecretKind::Passphrase => (self.passphrase.clone(), "passphrase"),
            SecretKind::RecoveryKey => (self.recovery_key.clone(), "recovery-key"),
            SecretKind::NewPassphrase => {
                return Err(Error::InvalidArgument {
                    what: "a new passphrase cannot be set through the daemon".into(),
                });
            }
        };
        secret.ok_or_else(|| Error::SecretRequired {
            kind,
            description: request.description.to_owned(),
            retries_left: request.retries_left,
        })
    }

    fn notify(&self, notice: &Notice<'_>) {
        match notice {
            Notice::TouchRequired { device } => tracing::info!(device, "touch the device now"),
            Notice::InsertDevice { device } => tracing::info!(device, "insert the device"),
            Notice::Info(text) => tracing::info!("{text}"),
        }
    }

    fn show_secret(&self, _title: &str, _secret: &SecretString) -> keyward_kms::Result<()> {
        Err(Error::InvalidArgument {
            what: "the daemon never shows a new secret; enroll with the keyward CLI".into(),
        })
    }
}

/// Locks the session when a timeout passes, checking once a second, until
/// shutdown.
pub(crate) async fn expire(daemon: Arc<Daemon>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let mut core = daemon.core.lock().await;
                if core.session.is_some() {
                    core.expire_if_due(Instant::now());
                }
            }
            () = crate::stopped(&mut shutdown) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(json: &str) -> Secrets {
        serde_json::from_str(json).expect("valid secrets")
    }

    #[test]
    fn callbacks_give_a_pin_once_and_name_what_is_missing() {
        let callbacks = ApiCallbacks::new(secrets(r#"{"pin": "123456"}"#));
        let ask = |kind| SecretRequest {
            kind,
            description: "TPM 'laptop'",
            retries_left: Some(3),
        };
        assert!(callbacks.request_secret(&ask(SecretKind::Pin)).is_ok());
        match callbacks.request_secret(&ask(SecretKind::Pin)) {
            Err(Error::SecretRequired {
                kind,
                description,
                retries_left,
            }) => {
                assert_eq!((kind, description.as_str()), ("pin", "TPM 'laptop'"));
                assert_eq!(retries_left, Some(3));
            }
            other => panic!("{other:?}"),
        }
        match callbacks.request_secret(&ask(SecretKind::RecoveryKey)) {
            Err(Error::SecretRequired { kind, .. }) => assert_eq!(kind, "recovery-key"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timeouts_only_shorten() {
        let default = Duration::from_secs(900);
        assert_eq!(shorter(default, None, "x").expect("ok"), default);
        assert_eq!(
            shorter(default, Some(60), "x").expect("ok"),
            Duration::from_secs(60)
        );
        assert_eq!(shorter(default, Some(99_999), "x").expect("ok"), default);
        assert_eq!(
            shorter(default, Some(0), "x").expect_err("zero").code,
            "invalid-argument"
        );
    }

    #[test]
    fn sessions_expire_at_the_first_timeout() {
        let protector = ProtectorInfo {
            id: 1,
            kind: keyward_kms::BackendKind::Passphrase,
            label: "p".into(),
            device_id: None,
            mk_epoch: 1,
            created_at: 0,
        };
        let session = Session::new(
            protector,
            Timeouts {
                idle: Duration::from_secs(10),
                absolute: Duration::from_secs(100),
            },
        );
        let start = session.started;
        assert_eq!(session.expired(start + Duration::from_secs(9)), None);
        assert_eq!(
            session.expired(start + Duration::from_secs(10)),
            Some("idle")
        );
        assert_eq!(
            session.expired(start + Duration::from_secs(100)),
            Some("absolute")
        );
    }
}
