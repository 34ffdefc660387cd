//! The socket watchdog: every few seconds, checks that the socket path
//! still holds the socket we bound, with mode `0600`.
//!
//! - A wider mode (someone ran `chmod`) is put back to `0600` and audited
//!   as `socket.tampered`.
//! - A socket replaced or removed means clients may now talk to someone
//!   else, or cannot find us: we audit it, lock, and shut down, saying so
//!   in the log. (A daemon nobody can reach must not sit unlocked.)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use crate::Daemon;
use crate::socket::{self, Check, Identity};

/// Watches `path` every `interval` until shutdown.
pub(crate) async fn run(
    daemon: Arc<Daemon>,
    path: PathBuf,
    identity: Identity,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = crate::stopped(&mut shutdown) => return,
        }
        match identity.check(&path) {
            Check::Intact => {}
            Check::ModeChanged(mode) => {
                let restored = socket::restrict(&path);
                tracing::warn!(
                    socket = %path.display(),
                    mode = format_args!("{mode:04o}"),
                    restored = restored.is_ok(),
                    "the socket's mode was changed; set back to 0600"
                );
                daemon
                    .record(
                        keyward_kms::audit::Action::SocketTampered,
                        false,
                        json!({ "socket": path, "change": "mode",
                                "mode": format!("{mode:04o}"), "restored": restored.is_ok() }),
                    )
                    .await;
            }
            check @ (Check::Replaced | Check::Removed) => {
                let change = if check == Check::Removed {
                    "removed"
                } else {
                    "replaced"
                };
                tracing::error!(
                    socket = %path.display(),
                    "the socket was {change} by someone else: locking and shutting down"
                );
                daemon
                    .record(
                        keyward_kms::audit::Action::SocketTampered,
                        false,
                        json!({ "socket": path, "change": change }),
                    )
                    .await;
                daemon.core.lock().await.lock_as_daemon("socket");
                daemon.shut_down("the socket was tampered with");
                return;
            }
        }
    }
}
