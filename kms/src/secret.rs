//! Secret values as types: zeroized on drop, redacted in `Debug`, never
//! `Clone`, `Copy`, `PartialEq` or `Serialize`.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use zeroize::{Zeroize, Zeroizing};

use crate::{Error, Result};

pub use secrecy::{ExposeSecret, SecretString};

/// A 256-bit secret: the master key, a data-key version, a derived KEK.
///
/// The bytes live on the heap so that moving the value does not leave copies
/// on the stack; they are overwritten with zeros when the value is dropped.
pub struct Secret32(Box<[u8; 32]>);

impl Secret32 {
    /// Draws a fresh secret from the operating system's CSPRNG.
    ///
    /// # Errors
    /// [`Error::Random`] if the OS refuses to provide randomness.
    pub fn random() -> Result<Self> {
        let mut bytes = Box::new([0u8; 32]);
        lock_pages(bytes.as_ptr(), 32);
        getrandom::fill(&mut bytes[..]).map_err(|_| Error::Random)?;
        Ok(Self(bytes))
    }

    /// Takes ownership of `bytes` and zeroizes the caller's copy.
    pub fn from_bytes(bytes: &mut [u8; 32]) -> Self {
        let out = Self::boxed(bytes);
        bytes.zeroize();
        out
    }

    /// Copies `bytes` (which must be exactly 32 long) into a new secret.
    ///
    /// # Errors
    /// [`Error::Malformed`] if `bytes` is not 32 bytes long.
    pub fn try_from_slice(bytes: &[u8]) -> Result<Self> {
        let arr: &[u8; 32] = bytes.try_into().map_err(|_| Error::Malformed {
            what: "secret of wrong length",
        })?;
        Ok(Self::boxed(arr))
    }

    fn boxed(bytes: &[u8; 32]) -> Self {
        let mut b = Box::new([0u8; 32]);
        lock_pages(b.as_ptr(), 32);
        b.copy_from_slice(bytes);
        Self(b)
    }

    /// The secret bytes. Every call site is a place a reviewer should read.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for Secret32 {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret32([REDACTED])")
    }
}

/// A variable-length secret buffer (decrypted plaintext, a derived seed).
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Wraps `bytes`; they are zeroized when the value is dropped.
    pub fn new(bytes: Vec<u8>) -> Self {
        // The bytes are already there: locking now keeps them from being
        // swapped out from here on (the daemon's cached keys and plaintext).
        lock_pages(bytes.as_ptr(), bytes.capacity());
        Self(Zeroizing::new(bytes))
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Gives up the zeroizing wrapper; the caller now owns the plaintext.
    pub fn into_inner(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([REDACTED; {}])", self.0.len())
    }
}

static LOCK_PAGES: AtomicBool = AtomicBool::new(false);
static LOCK_FAILURES: AtomicU64 = AtomicU64::new(0);

/// From now on, keeps the memory page of every new secret out of swap with
/// `mlock(2)`; returns whether locking works here. A long-running daemon
/// calls this once at start-up, before it reads any secret.
///
/// Pages stay locked until the process exits: `munlock` is never called,
/// because a page can hold several secrets and locks do not nest. Locking
/// is best effort beyond the first check (the `RLIMIT_MEMLOCK` budget may
/// run out); [`memory_lock_failures`] counts the pages that could not be
/// locked.
pub fn lock_secrets_in_memory() -> bool {
    let probe = Box::new([0u8; 32]);
    match region::lock(probe.as_ptr(), probe.len()) {
        Ok(guard) => {
            std::mem::forget(guard);
            LOCK_PAGES.store(true, Ordering::SeqCst);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot lock memory (mlock); secrets may be swapped out");
            false
        }
    }
}

/// How many secret allocations could not be locked in memory since
/// [`lock_secrets_in_memory`] was called.
pub fn memory_lock_failures() -> u64 {
    LOCK_FAILURES.load(Ordering::Relaxed)
}

fn lock_pages(ptr: *const u8, len: usize) {
    if len == 0 || !LOCK_PAGES.load(Ordering::Relaxed) {
        return;
    }
    match region::lock(ptr, len) {
        // Never unlocked (see `lock_secrets_in_memory`).
        Ok(guard) => std::mem::forget(guard),
        Err(_) => {
            LOCK_FAILURES.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Fills `buf` from the operating system's CSPRNG.
///
/// # Errors
/// [`Error::Random`] if the OS refuses to provide randomness.
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|_| Error::Random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret32::try_from_slice(&[0x41; 32]).expect("32 bytes");
        let shown = format!("{s:?}");
        assert_eq!(shown, "Secret32([REDACTED])");
        let b = SecretBytes::new(b"hunter2".to_vec());
        assert_eq!(format!("{b:?}"), "SecretBytes([REDACTED; 7])");
    }

    #[test]
    fn from_bytes_zeroizes_source() {
        let mut raw = [7u8; 32];
        let s = Secret32::from_bytes(&mut raw);
        assert_eq!(raw, [0u8; 32]);
        assert_eq!(s.expose(), &[7u8; 32]);
    }

    #[test]
    fn random_differs() {
        let a = Secret32::random().expect("os rng");
        let b = Secret32::random().expect("os rng");
        assert_ne!(a.expose(), b.expose());
    }
}
