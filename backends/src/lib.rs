//! keyward-backends: the hardware protectors of keyward, one module per
//! hardware family, each behind a cargo feature (all on by default).
//!
//! Each module's `Backend` implements [`keyward_kms::Backend`]; the CLI
//! registers the ones compiled in. This crate holds no key hierarchy or
//! formats of its own beyond each device's wrap blob: those live in
//! keyward-kms.
//!
//! - `pkcs11` (feature `pkcs11`): PKCS#11 tokens and HSMs through
//!   `cryptoki` (SoftHSM2, YubiHSM 2, Nitrokey HSM via OpenSC, cloud HSMs).
//! - `yubikey` (feature `yubikey`): a YubiKey over PIV through PC/SC
//!   (pcscd) with the `yubikey` crate: a P-256 key in a retired slot, PIN
//!   and touch.
//! - `tpm` (feature `tpm`): TPM 2.0 through `tss-esapi` (swtpm, or the
//!   kernel resource manager `/dev/tpmrm0`).
//!
//! ```no_run
//! # #[cfg(feature = "pkcs11")] {
//! use keyward_backends::pkcs11;
//! let backend = pkcs11::Backend::new(pkcs11::Options {
//!     module: Some("/usr/lib/softhsm/libsofthsm2.so".into()),
//!     ..pkcs11::Options::default()
//! });
//! # let _ = backend; }
//! ```
#![forbid(unsafe_code)]

#[cfg(feature = "pkcs11")]
pub mod pkcs11;
#[cfg(feature = "tpm")]
pub mod tpm;
#[cfg(feature = "yubikey")]
pub mod yubikey;
