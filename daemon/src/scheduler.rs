//! The rotation scheduler: while the daemon is unlocked, every
//! `--check-interval` it rotates the keys whose rotation period has passed
//! ([`keyward_kms::Service::rotate_due`]), and logs what it rotated. It
//! never unlocks, and its work does not count as use for the idle timeout.

use std::sync::Arc;
use std::time::Duration;

use keyward_kms::service::Actor;
use tokio::sync::watch;

use crate::Daemon;

/// Checks every `interval` until shutdown.
pub(crate) async fn run(
    daemon: Arc<Daemon>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => check(&daemon).await,
            () = crate::stopped(&mut shutdown) => return,
        }
    }
}

/// One check, on a blocking thread (a rotation writes the store).
async fn check(daemon: &Arc<Daemon>) {
    let shared = Arc::clone(daemon);
    let result = tokio::task::spawn_blocking(move || {
        let mut core = shared.core.blocking_lock();
        if core.session.is_none() {
            return Ok(Vec::new());
        }
        core.service.set_actor(Actor::current());
        core.service.rotate_due()
    })
    .await;
    match result {
        Ok(Ok(rotated)) => {
            for r in rotated {
                tracing::info!(key = %r.key, version = r.version, reason = r.reason, "scheduler rotated a key");
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "scheduled rotation failed"),
        Err(e) => tracing::error!(error = %e, "scheduled rotation failed unexpectedly"),
    }
}
