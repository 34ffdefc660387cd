//! The YubiKey protector descriptor (`Enrollment::params`) and the enroll
//! options.

use serde::{Deserialize, Serialize};
use yubikey::piv::SlotId;
use yubikey::{PinPolicy, TouchPolicy};

use keyward_kms::backend::EnrollRequest;
use keyward_kms::{Error, Result};

/// Option: the retired slot to generate in (`82`..`95`, hex).
pub const OPTION_SLOT: &str = "slot";
/// Option: the PIN policy (`once` or `always`).
pub const OPTION_PIN_POLICY: &str = "pin-policy";
/// Option: the touch policy (`always`, `cached` or `never`).
pub const OPTION_TOUCH: &str = "touch";
/// Option: `true` allows replacing a key already in the slot.
pub const OPTION_OVERWRITE: &str = "overwrite";

const KNOWN_OPTIONS: [&str; 4] = [
    OPTION_SLOT,
    OPTION_PIN_POLICY,
    OPTION_TOUCH,
    OPTION_OVERWRITE,
];

/// The first and last retired key-management slots.
pub(crate) const FIRST_RETIRED: u8 = 0x82;
pub(crate) const LAST_RETIRED: u8 = 0x95;

/// PIN policy of the keyward key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pin {
    /// The PIN is verified once per card session.
    Once,
    /// The PIN is verified before every private-key operation.
    Always,
}

impl Pin {
    pub(crate) fn policy(self) -> PinPolicy {
        match self {
            Self::Once => PinPolicy::Once,
            Self::Always => PinPolicy::Always,
        }
    }
}

/// Touch policy of the keyward key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Touch {
    /// A touch for every operation.
    Always,
    /// A touch is valid for 15 seconds.
    Cached,
    /// No touch.
    Never,
}

impl Touch {
    pub(crate) fn policy(self) -> TouchPolicy {
        match self {
            Self::Always => TouchPolicy::Always,
            Self::Cached => TouchPolicy::Cached,
            Self::Never => TouchPolicy::Never,
        }
    }

    /// Whether an operation may wait for a touch.
    pub(crate) fn needs_touch(self) -> bool {
        self != Self::Never
    }
}

/// What [`super::Backend::enroll`] was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Options {
    pub slot: Option<u8>,
    pub pin: Pin,
    pub touch: Touch,
    pub overwrite: bool,
}

impl Options {
    /// Parses and validates the request's options; refuses unknown ones.
    pub(crate) fn from_request(req: &EnrollRequest) -> Result<Self> {
        if let Some((k, _)) = req
            .options
            .iter()
            .find(|(k, _)| !KNOWN_OPTIONS.contains(&k.as_str()))
        {
            return Err(invalid(format!(
                "unknown YubiKey option {k:?} (known: slot, pin-policy, touch, overwrite)"
            )));
        }
        let slot = req.option(OPTION_SLOT).map(parse_slot).transpose()?;
        let pin = match req.option(OPTION_PIN_POLICY) {
            None | Some("once") => Pin::Once,
            Some("always") => Pin::Always,
            Some(other) => {
                return Err(invalid(format!(
                    "pin-policy must be once or always, not {other:?}"
                )));
            }
        };
        let touch = match req.option(OPTION_TOUCH) {
            None | Some("always") => Touch::Always,
            Some("cached") => Touch::Cached,
            Some("never") => Touch::Never,
            Some(other) => {
                return Err(invalid(format!(
                    "touch must be always, cached or never, not {other:?}"
                )));
            }
        };
        let overwrite = match req.option(OPTION_OVERWRITE) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(invalid(format!(
                    "overwrite must be true or false, not {other:?}"
                )));
            }
        };
        Ok(Self {
            slot,
            pin,
            touch,
            overwrite,
        })
    }
}

/// Parses a retired slot number given in hex (`82`, `0x82`, `9F` refused).
pub(crate) fn parse_slot(text: &str) -> Result<u8> {
    let t = text.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let slot = u8::from_str_radix(t, 16)
        .ok()
        .filter(|s| (FIRST_RETIRED..=LAST_RETIRED).contains(s))
        .ok_or_else(|| {
            invalid(format!(
                "slot must be a retired key-management slot 82..95 (hex), not {text:?}; \
                 keyward never uses 9a/9c/9d/9e"
            ))
        })?;
    Ok(slot)
}

/// The `yubikey` crate's id for a retired slot number.
pub(crate) fn slot_id(slot: u8) -> Result<SlotId> {
    if !(FIRST_RETIRED..=LAST_RETIRED).contains(&slot) {
        return Err(Error::Malformed {
            what: "YubiKey slot is not a retired key-management slot",
        });
    }
    SlotId::try_from(slot)
        .ok()
        .filter(|s| matches!(s, SlotId::Retired(_)))
        .ok_or(Error::Malformed {
            what: "YubiKey slot is not a retired key-management slot",
        })
}

/// All retired slots, in order.
pub(crate) fn retired_slots() -> impl Iterator<Item = (u8, SlotId)> {
    (FIRST_RETIRED..=LAST_RETIRED).filter_map(|s| match SlotId::try_from(s) {
        Ok(id @ SlotId::Retired(_)) => Some((s, id)),
        _ => None,
    })
}

/// The descriptor stored in `Enrollment::params`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Descriptor version (1).
    pub v: u32,
    /// The YubiKey's serial number.
    pub serial: u32,
    /// The slot, as two hex digits (`82`).
    pub slot: String,
    /// PIN policy of the key.
    pub pin_policy: Pin,
    /// Touch policy of the key.
    pub touch_policy: Touch,
    /// Firmware version at enrollment.
    pub firmware: String,
}

impl Params {
    /// Parses a stored descriptor.
    pub(crate) fn from_json(value: &serde_json::Value) -> Result<Self> {
        let p: Self = serde_json::from_value(value.clone()).map_err(|_| Error::Malformed {
            what: "YubiKey protector descriptor",
        })?;
        if p.v != 1 {
            return Err(Error::Malformed {
                what: "YubiKey protector descriptor version",
            });
        }
        p.slot_number()?;
        Ok(p)
    }

    /// The slot number.
    pub(crate) fn slot_number(&self) -> Result<u8> {
        u8::from_str_radix(&self.slot, 16)
            .ok()
            .filter(|s| (FIRST_RETIRED..=LAST_RETIRED).contains(s))
            .ok_or(Error::Malformed {
                what: "YubiKey slot in the protector descriptor",
            })
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain struct serializes")
    }
}

fn invalid(what: String) -> Error {
    Error::InvalidArgument { what }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(options: &[(&str, &str)]) -> EnrollRequest {
        EnrollRequest {
            label: "yk".into(),
            device: None,
            options: options
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn defaults_are_pin_once_touch_always_first_free_slot() {
        let o = Options::from_request(&req(&[])).expect("defaults");
        assert_eq!(
            o,
            Options {
                slot: None,
                pin: Pin::Once,
                touch: Touch::Always,
                overwrite: false
            }
        );
    }

    #[test]
    fn options_parse_and_refuse() {
        let o = Options::from_request(&req(&[
            ("slot", "0x95"),
            ("pin-policy", "always"),
            ("touch", "cached"),
            ("overwrite", "true"),
        ]))
        .expect("valid");
        assert_eq!(o.slot, Some(0x95));
        assert_eq!(
            (o.pin, o.touch, o.overwrite),
            (Pin::Always, Touch::Cached, true)
        );
        for bad in [
            ("slot", "9a"),
            ("slot", "9c"),
            ("slot", "81"),
            ("slot", "96"),
            ("slot", "zz"),
            ("pin-policy", "never"),
            ("touch", "sometimes"),
            ("overwrite", "yes"),
            ("colour", "blue"),
        ] {
            assert!(
                matches!(
                    Options::from_request(&req(&[bad])),
                    Err(Error::InvalidArgument { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn twenty_retired_slots() {
        let slots: Vec<u8> = retired_slots().map(|(s, _)| s).collect();
        assert_eq!(slots.len(), 20);
        assert_eq!(slots.first(), Some(&0x82));
        assert_eq!(slots.last(), Some(&0x95));
        assert!(slot_id(0x9a).is_err());
    }

    #[test]
    fn params_round_trip_and_reject_garbage() {
        let p = Params {
            v: 1,
            serial: 12_345_678,
            slot: "82".into(),
            pin_policy: Pin::Once,
            touch_policy: Touch::Always,
            firmware: "5.4.3".into(),
        };
        assert_eq!(Params::from_json(&p.to_json()).expect("round trip"), p);
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"v": 2, "serial": 1, "slot": "82", "pin_policy": "once",
                "touch_policy": "always", "firmware": "5"}),
            serde_json::json!({"v": 1, "serial": 1, "slot": "9a", "pin_policy": "once",
                "touch_policy": "always", "firmware": "5"}),
            serde_json::json!({"v": 1, "serial": -1, "slot": "82", "pin_policy": "once",
                "touch_policy": "always", "firmware": "5"}),
        ] {
            assert!(Params::from_json(&bad).is_err(), "{bad}");
        }
    }
}
