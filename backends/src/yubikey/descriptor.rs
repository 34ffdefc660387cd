//! The YubiKey protector descriptor (`Enrollment::params`) and the enroll
//! options.

use serde::{Deserialize, Serialize};
use yubikey::piv::SlotId;
use yubikey::{PinPolicy, TouchPolicy};

use keyward_kms::backend::options::PivSlot;
use keyward_kms::{Error, Result};

/// PIN policy of the keyward key (kms's type, under the name the
/// descriptor has always used).
pub use keyward_kms::backend::options::PivPinPolicy as Pin;
/// Touch policy of the keyward key.
pub use keyward_kms::backend::options::PivTouchPolicy as Touch;

/// The first and last retired key-management slots.
pub(crate) const FIRST_RETIRED: u8 = PivSlot::FIRST;
pub(crate) const LAST_RETIRED: u8 = PivSlot::LAST;

/// The `yubikey` crate's PIN policy for `pin`.
pub(crate) fn pin_policy(pin: Pin) -> PinPolicy {
    match pin {
        Pin::Once => PinPolicy::Once,
        Pin::Always => PinPolicy::Always,
    }
}

/// The `yubikey` crate's touch policy for `touch`.
pub(crate) fn touch_policy(touch: Touch) -> TouchPolicy {
    match touch {
        Touch::Always => TouchPolicy::Always,
        Touch::Cached => TouchPolicy::Cached,
        Touch::Never => TouchPolicy::Never,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
