//! What the daemon does to its own process before it holds any secret
//! (docs/API.md, "Sessions"; docs/DESIGN.md, "Secure by default").
//!
//! - No core dumps: `RLIMIT_CORE` 0, and `PR_SET_DUMPABLE` 0, which also
//!   keeps other processes of the same user from attaching with ptrace or
//!   reading `/proc/PID/mem`.
//! - A umask of 077: every file the daemon creates (socket, lock file) is
//!   private from the start.
//! - Secret pages locked in memory (`mlock`, best effort: it fails under a
//!   small `RLIMIT_MEMLOCK`), so that the master key and data keys never
//!   reach swap.

use rustix::process::{DumpableBehavior, Resource, Rlimit};

use crate::{Exit, Failure};

/// Hardens the process; returns whether secrets are locked in memory.
///
/// # Errors
/// Core dumps cannot be disabled (we refuse to run without that).
pub(crate) fn harden() -> Result<bool, Failure> {
    rustix::process::setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(|e| {
        Failure::new(
            Exit::Failure,
            format!("cannot disable core dumps (RLIMIT_CORE): {e}"),
        )
    })?;
    rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable).map_err(|e| {
        Failure::new(
            Exit::Failure,
            format!("cannot disable core dumps (PR_SET_DUMPABLE): {e}"),
        )
    })?;
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let locked = keyward_kms::secret::lock_secrets_in_memory();
    if !locked {
        tracing::warn!(
            "cannot lock memory (mlock): secrets may be swapped out; raise RLIMIT_MEMLOCK \
             (ulimit -l) to fix this"
        );
    }
    Ok(locked)
}
