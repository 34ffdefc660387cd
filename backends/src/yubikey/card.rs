//! The card handles keyward keeps open, and finding, verifying and
//! releasing a YubiKey over PC/SC.

use super::*;

/// The lock on the card handles, with the serial in use.
pub(super) struct Session<'a> {
    pub(super) guard: MutexGuard<'a, BTreeMap<u32, YubiKey>>,
    pub(super) serial: u32,
}

impl Session<'_> {
    pub(super) fn yk(&mut self) -> Result<&mut YubiKey> {
        self.guard.get_mut(&self.serial).ok_or(Error::DeviceRemoved)
    }

    /// Maps `e`, dropping the handle if the card went away.
    ///
    /// The crate reports a reply cut short by a removal as a generic or
    /// parse error; those are checked with a harmless probe (SELECT and a
    /// retries query, no PIN) and reported as [`Error::DeviceRemoved`]
    /// when the card no longer answers.
    pub(super) fn fail(&mut self, e: yubikey::Error, op: Op) -> Error {
        let gone = drops_handle(&e)
            || (matches!(
                e,
                yubikey::Error::GenericError
                    | yubikey::Error::ParseError
                    | yubikey::Error::SizeError
                    | yubikey::Error::AppletNotFound { .. }
            ) && self
                .guard
                .get_mut(&self.serial)
                .is_some_and(|yk| yk.get_pin_retries().is_err()));
        if gone {
            if let Some(yk) = self.guard.remove(&self.serial) {
                release(yk);
            }
            if !drops_handle(&e) {
                tracing::debug!("YubiKey stopped answering after: {e}");
                return Error::DeviceRemoved;
            }
        }
        map(e, op)
    }
}

pub(super) fn description(params: &Params) -> String {
    format!("YubiKey {} slot {}", params.serial, params.slot)
}

pub(super) fn parse_serial(text: &str) -> Result<u32> {
    let t = text.trim();
    let t = t.strip_prefix("yubikey:").unwrap_or(t);
    u32::from_str(t).map_err(|_| Error::InvalidArgument {
        what: format!("a YubiKey serial is a decimal number, not {text:?}"),
    })
}

pub(super) fn join(serials: &[u32]) -> String {
    serials
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn not_found(serial: Option<u32>) -> Error {
    Error::not_found(KIND, DeviceError::NoYubikey { serial })
}

pub(super) fn missing_new(what: &str) -> Error {
    Error::InvalidArgument {
        what: format!("the card still has the factory {what}: give a new {what} to set"),
    }
}

pub(super) fn not_protected(serial: u32) -> Error {
    device(DeviceError::ManagementKeyNotProtected { serial })
}

/// PINs and PUKs are 6 to 8 characters; anything else is refused here,
/// without spending a try on the card.
pub(super) fn check_pin_format(pin: &str, what: &str) -> Result<()> {
    if (6..=8).contains(&pin.len()) && pin.is_ascii() {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            what: format!("a YubiKey {what} has 6 to 8 ASCII characters"),
        })
    }
}

/// Drops a handle without resetting the card for others.
pub(super) fn release(yk: YubiKey) {
    if let Err((yk, e)) = yk.disconnect(pcsc::Disposition::LeaveCard) {
        tracing::debug!("YubiKey disconnect failed: {e}");
        drop(yk);
    }
}

/// Every YubiKey in every reader, opened.
pub(super) fn scan() -> Result<Vec<YubiKey>> {
    let mut ctx = match Context::open() {
        Ok(c) => c,
        Err(yubikey::Error::PcscError {
            inner: Some(pcsc::Error::NoReadersAvailable),
        }) => return Ok(Vec::new()),
        Err(yubikey::Error::PcscError { inner: Some(p) }) => {
            return Err(errors::pcsc_unavailable(&p));
        }
        Err(e) => return Err(map(e, Op::Query)),
    };
    let readers = match ctx.iter() {
        Ok(r) => r,
        Err(yubikey::Error::PcscError {
            inner: Some(pcsc::Error::NoReadersAvailable),
        }) => return Ok(Vec::new()),
        Err(e) => return Err(map(e, Op::Query)),
    };
    Ok(readers.filter_map(|r| r.open().ok()).collect())
}

/// The card with `serial`, among all readers.
pub(super) fn find(serial: u32) -> Result<YubiKey> {
    let mut hit = None;
    let mut others = Vec::new();
    for yk in scan()? {
        let s = u32::from(yk.serial());
        if s == serial && hit.is_none() {
            hit = Some(yk);
        } else {
            others.push(s);
            release(yk);
        }
    }
    match hit {
        Some(yk) => Ok(yk),
        None if others.is_empty() => Err(not_found(Some(serial))),
        None => Err(Error::WrongDevice {
            expected: format!("YubiKey serial {serial}"),
            found: format!("YubiKey serial {} (insert {serial})", join(&others)),
        }),
    }
}

/// Sends VERIFY once; never retried.
pub(super) fn verify(s: &mut Session<'_>, pin: &SecretString) -> Result<()> {
    let r = s.yk()?.verify_pin(pin.expose_secret().as_bytes());
    r.map_err(|e| s.fail(e, Op::Verify))
}
