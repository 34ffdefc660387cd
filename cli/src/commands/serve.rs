//! `keyward serve`: runs the daemon ([`crate::daemon`]) on this keystore.

use std::time::Duration;

use crate::args::ServeArgs;
use crate::commands::Ctx;
use crate::daemon::{self, Config, Limits, Timeouts};
use crate::failure::Failure;

/// Hardens the process and takes the store's daemon lock before opening
/// the keystore, then serves until SIGTERM or SIGINT.
///
/// # Errors
/// Another daemon serves the store (exit 8), the keystore cannot be
/// opened, the socket cannot be set up.
pub(crate) fn run(ctx: &Ctx<'_>, args: &ServeArgs) -> Result<(), Failure> {
    let config = Config {
        store: ctx.path.clone(),
        socket: args
            .socket
            .clone()
            .filter(|s| !s.as_os_str().is_empty())
            .unwrap_or_else(daemon::socket::default_path),
        timeouts: Timeouts {
            idle: Duration::from_secs(args.idle_timeout),
            absolute: Duration::from_secs(args.absolute_timeout),
        },
        check_interval: Duration::from_secs(args.check_interval),
        watchdog_interval: Duration::from_secs(args.watchdog_interval),
        limits: Limits {
            header_timeout: Duration::from_secs(args.header_timeout),
            body_timeout: Duration::from_secs(args.body_timeout),
            keepalive_timeout: Duration::from_secs(args.keepalive_timeout),
            max_connections: args.max_connections as usize,
        },
    };
    let (memory_locked, lock) = daemon::prepare(&config)?;
    let service = ctx.open_with(keyward_kms::service::Options::daemon())?;
    daemon::run(config, service, memory_locked, lock)
}
