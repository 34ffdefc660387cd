//! Typed enrollment options: what each backend can be asked for when a
//! protector is enrolled, checked when the value is made (the CLI builds
//! them straight from its arguments), so a backend never parses a string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::BackendKind;
use crate::{Error, Result};

/// The options of one enrollment, one variant per backend that takes any.
/// A backend handed another backend's variant refuses it
/// ([`Error::InvalidArgument`]), as it refuses an enrollment of another kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnrollOptions {
    /// No options: every backend's defaults.
    #[default]
    None,
    /// Argon2id costs of a passphrase protector.
    Passphrase(Argon2Options),
    /// Slot and policies of a YubiKey key.
    Yubikey(YubikeyOptions),
    /// PIN and PCR binding of a TPM key.
    Tpm(TpmOptions),
    /// Wrap mode and signing key of a PKCS#11 token.
    Pkcs11(Pkcs11Options),
    /// Slot and touch of a device of the in-process mock.
    #[cfg(any(test, feature = "mock"))]
    Mock(MockOptions),
}

impl EnrollOptions {
    /// The backend these options are for (`None` for no options).
    fn kind(&self) -> Option<BackendKind> {
        match self {
            Self::None => None,
            Self::Passphrase(_) => Some(BackendKind::Passphrase),
            Self::Yubikey(_) => Some(BackendKind::Yubikey),
            Self::Tpm(_) => Some(BackendKind::Tpm),
            Self::Pkcs11(_) => Some(BackendKind::Pkcs11),
            #[cfg(any(test, feature = "mock"))]
            Self::Mock(_) => Some(BackendKind::Mock),
        }
    }

    /// The options of the backend of `kind`: its own variant, or its
    /// defaults for [`EnrollOptions::None`].
    fn of<T: Clone + Default>(&self, kind: BackendKind, own: Option<&T>) -> Result<T> {
        match (own, self.kind()) {
            (Some(options), _) => Ok(options.clone()),
            (None, None) => Ok(T::default()),
            (None, Some(other)) => Err(Error::InvalidArgument {
                what: format!("{other} options were handed to the {kind} protector"),
            }),
        }
    }

    /// Checks that a backend without options (the recovery key) got none.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for any other variant.
    pub fn none_for(&self, kind: BackendKind) -> Result<()> {
        match self.kind() {
            None => Ok(()),
            Some(other) => Err(Error::InvalidArgument {
                what: format!("the {kind} protector takes no option (got {other} options)"),
            }),
        }
    }
}

/// Writes, for each backend that takes options, the accessor that returns
/// its own variant (or its defaults for [`EnrollOptions::None`]).
macro_rules! accessors {
    ($($(#[$cfg:meta])* $name:ident: $variant:ident($options:ty),)*) => {
        impl EnrollOptions {$(
            #[doc = concat!("The options of the ", stringify!($variant), " backend.")]
            ///
            /// # Errors
            /// [`Error::InvalidArgument`] for another backend's options.
            $(#[$cfg])*
            pub fn $name(&self) -> Result<$options> {
                let own = match self {
                    Self::$variant(options) => Some(options),
                    _ => None,
                };
                self.of(BackendKind::$variant, own)
            }
        )*}
    };
}

accessors! {
    passphrase: Passphrase(Argon2Options),
    yubikey: Yubikey(YubikeyOptions),
    tpm: Tpm(TpmOptions),
    pkcs11: Pkcs11(Pkcs11Options),
    #[cfg(any(test, feature = "mock"))]
    mock: Mock(MockOptions),
}

/// Argon2id costs of a new passphrase protector; `None` keeps the
/// backend's default. The bounds are checked with the defaults filled in
/// (`KdfParams::new`), since they hold for the three together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Argon2Options {
    /// Memory in KiB.
    pub m_kib: Option<u32>,
    /// Passes.
    pub t: Option<u32>,
    /// Lanes.
    pub p: Option<u32>,
}

/// The options of a new YubiKey key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct YubikeyOptions {
    /// The retired slot to generate in; `None`: the first empty one.
    pub slot: Option<PivSlot>,
    /// When the PIN is verified.
    pub pin_policy: PivPinPolicy,
    /// When a touch is wanted.
    pub touch: PivTouchPolicy,
    /// Replace a key already in `slot`.
    pub overwrite: bool,
}

/// A retired PIV key-management slot, `82`..`95`: keyward never uses the
/// standard slots 9a/9c/9d/9e.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PivSlot(u8);

impl PivSlot {
    /// The first retired slot.
    pub const FIRST: u8 = 0x82;
    /// The last retired slot.
    pub const LAST: u8 = 0x95;

    /// The slot numbered `slot`, if it is a retired one.
    pub fn new(slot: u8) -> Option<Self> {
        (Self::FIRST..=Self::LAST)
            .contains(&slot)
            .then_some(Self(slot))
    }

    /// The slot number.
    pub fn number(self) -> u8 {
        self.0
    }
}

impl FromStr for PivSlot {
    type Err = Error;

    /// Parses a slot number given in hex (`82`, `0x82`; `9F` refused).
    fn from_str(text: &str) -> Result<Self> {
        let t = text.trim();
        let t = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        u8::from_str_radix(t, 16)
            .ok()
            .and_then(Self::new)
            .ok_or_else(|| Error::InvalidArgument {
                what: format!(
                    "slot must be a retired key-management slot 82..95 (hex), not {text:?}; \
                     keyward never uses 9a/9c/9d/9e"
                ),
            })
    }
}

impl fmt::Display for PivSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}", self.0)
    }
}

/// PIN policy of a YubiKey key (stored in its descriptor as `once` or
/// `always`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PivPinPolicy {
    /// The PIN is verified once per card session.
    #[default]
    Once,
    /// The PIN is verified before every private-key operation.
    Always,
}

/// Touch policy of a YubiKey key (stored in its descriptor as `always`,
/// `cached` or `never`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PivTouchPolicy {
    /// A touch for every operation.
    #[default]
    Always,
    /// A touch is valid for 15 seconds.
    Cached,
    /// No touch.
    Never,
}

impl PivTouchPolicy {
    /// Whether an operation may wait for a touch.
    pub fn needs_touch(self) -> bool {
        self != Self::Never
    }
}

/// The options of a new TPM key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmOptions {
    /// Protect the key with a PIN.
    pub pin: bool,
    /// SHA-256 PCRs the key is bound to (none: not bound).
    pub pcrs: PcrSelection,
}

impl Default for TpmOptions {
    /// A PIN, no PCRs.
    fn default() -> Self {
        Self {
            pin: true,
            pcrs: PcrSelection::default(),
        }
    }
}

/// One PCR index, 0-23.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pcr(u8);

impl FromStr for Pcr {
    type Err = Error;

    /// Parses a decimal index (`7`).
    fn from_str(text: &str) -> Result<Self> {
        let index: u8 = text.trim().parse().map_err(|_| Error::InvalidArgument {
            what: format!("PCR {:?} is not a number (expected e.g. 7,11)", text.trim()),
        })?;
        Self::new(index).ok_or_else(|| Error::InvalidArgument {
            what: format!("PCR {index} does not exist (0-{})", Self::MAX),
        })
    }
}

impl Pcr {
    /// The highest PCR index.
    pub const MAX: u8 = 23;

    /// PCR `index`, if it exists.
    pub fn new(index: u8) -> Option<Self> {
        (index <= Self::MAX).then_some(Self(index))
    }

    /// The index.
    pub fn index(self) -> u8 {
        self.0
    }
}

/// A set of PCRs, sorted and without repeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PcrSelection(Vec<u8>);

impl PcrSelection {
    /// The indices, ascending.
    pub fn indices(&self) -> &[u8] {
        &self.0
    }
}

impl FromIterator<Pcr> for PcrSelection {
    fn from_iter<I: IntoIterator<Item = Pcr>>(pcrs: I) -> Self {
        let mut indices: Vec<u8> = pcrs.into_iter().map(Pcr::index).collect();
        indices.sort_unstable();
        indices.dedup();
        Self(indices)
    }
}

impl FromStr for PcrSelection {
    type Err = Error;

    /// Parses comma-separated decimal indices (`"7,11"`); empty: none.
    fn from_str(text: &str) -> Result<Self> {
        text.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Pcr::from_str)
            .collect()
    }
}

/// The options of a new PKCS#11 enrollment; `None` lets the backend choose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pkcs11Options {
    /// How the master key is wrapped to the token.
    pub mode: Option<Pkcs11Mode>,
    /// Which key signs.
    pub sign: Option<Pkcs11Sign>,
}

/// How the master key is wrapped to a PKCS#11 token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pkcs11Mode {
    /// P-256 key pair on the token; wrap is the shared ECIES with the public
    /// key (no token needed), unwrap uses CKM_ECDH1_DERIVE.
    Ecdh,
    /// AES-256 key on the token; wrap and unwrap use CKM_AES_GCM on the token.
    AesGcm,
}

impl Pkcs11Mode {
    /// The option / descriptor spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ecdh => "ecdh",
            Self::AesGcm => "aes-gcm",
        }
    }
}

impl FromStr for Pkcs11Mode {
    type Err = Error;

    /// Parses the spelling [`Pkcs11Mode::as_str`] gives.
    fn from_str(s: &str) -> Result<Self> {
        [Self::Ecdh, Self::AesGcm]
            .into_iter()
            .find(|mode| mode.as_str() == s)
            .ok_or_else(|| Error::InvalidArgument {
                what: format!("pkcs11 mode {s:?}: use ecdh or aes-gcm"),
            })
    }
}

/// Which key of a PKCS#11 enrollment signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pkcs11Sign {
    /// ECDSA P-256 with the key pair of the ecdh mode.
    Ecdsa,
    /// Ed25519 with a key pair of its own (CKM_EDDSA).
    Ed25519,
}

/// The options of a mock enrollment.
#[cfg(any(test, feature = "mock"))]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MockOptions {
    /// The slot (`9a`, `9c`, `9d`, `9e` or `82`..`95`); `None`: `9d`.
    pub slot: Option<String>,
    /// Whether the key wants a touch; `None`: the device's setting.
    pub touch: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piv_slots_are_the_retired_ones() {
        assert_eq!("0x95".parse::<PivSlot>().expect("hex").number(), 0x95);
        assert_eq!("82".parse::<PivSlot>().expect("hex").to_string(), "82");
        for bad in ["9a", "9c", "81", "96", "zz", ""] {
            assert!(
                matches!(bad.parse::<PivSlot>(), Err(Error::InvalidArgument { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            (PivSlot::FIRST..=PivSlot::LAST)
                .filter_map(PivSlot::new)
                .count(),
            20
        );
    }

    #[test]
    fn yubikey_defaults_are_pin_once_touch_always_first_free_slot() {
        assert_eq!(
            YubikeyOptions::default(),
            YubikeyOptions {
                slot: None,
                pin_policy: PivPinPolicy::Once,
                touch: PivTouchPolicy::Always,
                overwrite: false,
            }
        );
        assert!(PivTouchPolicy::Cached.needs_touch() && !PivTouchPolicy::Never.needs_touch());
    }

    #[test]
    fn pcr_lists_parse_sorted_and_bounded() {
        assert_eq!(
            "".parse::<PcrSelection>().expect("empty").indices(),
            &[] as &[u8]
        );
        assert_eq!(
            "11, 7,7".parse::<PcrSelection>().expect("list").indices(),
            &[7, 11]
        );
        for bad in ["24", "x", "-1", "7;11"] {
            assert!(bad.parse::<PcrSelection>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pkcs11_modes_round_trip() {
        for mode in [Pkcs11Mode::Ecdh, Pkcs11Mode::AesGcm] {
            assert_eq!(mode.as_str().parse::<Pkcs11Mode>().expect("mode"), mode);
        }
        assert!("rsa".parse::<Pkcs11Mode>().is_err());
    }

    #[test]
    fn each_backend_takes_its_own_options() {
        let tpm = EnrollOptions::Tpm(TpmOptions::default());
        assert!(tpm.tpm().expect("own").pin);
        assert_eq!(
            EnrollOptions::None.yubikey().expect("defaults"),
            YubikeyOptions::default()
        );
        let Err(Error::InvalidArgument { what }) = tpm.yubikey() else {
            panic!("another backend's options must be refused");
        };
        assert_eq!(what, "tpm options were handed to the yubikey protector");
        assert!(EnrollOptions::None.none_for(BackendKind::Recovery).is_ok());
        assert!(tpm.none_for(BackendKind::Recovery).is_err());
    }
}
