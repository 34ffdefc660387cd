//! A software YubiKey 5 (PIV, plus minimal Management and OTP applets) on
//! the real PC/SC stack: pcscd with vsmartcard's vpcd driver exposes it as
//! the reader `Virtual PCD 00 00`, and the unmodified `yubikey` crate,
//! `yubico-piv-tool` and `ykman` talk to it as to a device.
//!
//! - [`apdu`]: ISO 7816-4 APDU parsing (short/extended, chaining) and
//!   status words.
//! - [`card`]: the card state machine ([`card::Card::process`] never
//!   panics) and the applets.
//! - [`keys`]: management-key ciphers, EC slot keys, attestation
//!   certificates.
//! - [`vpcd`]: the vpcd transport ([`VirtualCard`]) with fault injection.
//! - [`pcscd`]: a private pcscd fixture ([`Pcscd`]), serialized by a
//!   machine-wide lock.
//! - [`persist`]: saving and restoring the card state to a file.
//!
//! docs/PIV-SIM.md is the operator guide.
//!
//! ```no_run
//! use std::time::Duration;
//! use keyward_hw_mocks::piv::{CardConfig, Pcscd, VirtualCard, VPCD_PORT};
//!
//! let pcscd = Pcscd::start().expect("pcscd and vsmartcard-vpcd installed");
//! let card = VirtualCard::start(VPCD_PORT, CardConfig::default());
//! pcscd.wait_card(&card.reader_name(), Duration::from_secs(5)).expect("card usable");
//! // yubikey::YubiKey::open() now finds it.
//! ```

pub mod apdu;
pub mod card;
pub mod keys;
pub mod pcscd;
pub mod persist;
pub mod vpcd;

pub use card::{Card, CardConfig, Touch};
pub use pcscd::Pcscd;
pub use vpcd::{VPCD_PORT, VirtualCard};

/// A private pcscd with one simulated card inserted in `Virtual PCD 00 00`
/// and usable. Holds the machine-wide pcscd lock until dropped (the card
/// is pulled first, then pcscd stops).
#[derive(Debug)]
pub struct PivFixture {
    /// The card (fault injection, state inspection).
    pub card: VirtualCard,
    /// The pcscd.
    pub pcscd: Pcscd,
}

impl PivFixture {
    /// Starts pcscd, inserts a card with `cfg` and waits until PC/SC clients
    /// can connect to it (typically 0.3-0.6 s).
    ///
    /// # Errors
    /// As for [`Pcscd::start`], or the card did not become usable in 10 s.
    pub fn start(cfg: CardConfig) -> std::io::Result<Self> {
        let pcscd = Pcscd::start()?;
        let card = VirtualCard::start(VPCD_PORT, cfg);
        pcscd.wait_card(&card.reader_name(), std::time::Duration::from_secs(10))?;
        Ok(Self { card, pcscd })
    }
}
