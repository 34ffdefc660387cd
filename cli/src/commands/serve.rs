//! `keyward serve`: runs the daemon (keyward-daemon) on this keystore,
//! with the CLI's diagnosis of key-service errors, so that the daemon's
//! error bodies carry the same message, hint and exit code as the CLI.

use std::time::Duration;

use keyward_api::Problem;
use keyward_daemon::{Config, Limits, Timeouts};

use crate::args::ServeArgs;
use crate::commands::Ctx;
use crate::failure::{Failure, from_kms};

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
            .unwrap_or_else(keyward_daemon::default_socket),
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
        diagnose,
    };
    let (memory_locked, lock) = keyward_daemon::prepare(&config).map_err(from_daemon)?;
    let service = ctx.open_with(keyward_kms::service::Options::daemon())?;
    keyward_daemon::run(config, service, memory_locked, lock).map_err(from_daemon)
}

/// The CLI's diagnosis of a key-service error, as the daemon reports it.
fn diagnose(err: &keyward_kms::Error) -> Problem {
    let failure = from_kms(err);
    let problem = Problem::new(err.code(), failure.code, failure.message);
    match failure.hint {
        Some(hint) => problem.hint(hint),
        None => problem,
    }
}

/// A failure of the daemon, as `keyward serve` exits with it.
fn from_daemon(f: keyward_daemon::Failure) -> Failure {
    let failure = Failure::new(f.code, f.message);
    match f.hint {
        Some(hint) => failure.hint(hint),
        None => failure,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use keyward_kms::Error;

    use crate::args::{Cli, Command};

    #[test]
    fn kms_errors_get_the_documented_status_and_exit() {
        let cases = [
            (Error::Locked, 423, "locked", 3),
            (Error::WrongPassphrase, 401, "wrong-passphrase", 3),
            (Error::DecryptionFailed, 422, "decryption-failed", 5),
            (
                Error::KeyNotFound { name: "k".into() },
                404,
                "key-not-found",
                4,
            ),
            (
                Error::VersionRetired {
                    name: "k".into(),
                    version: 1,
                    min_decryption_version: 2,
                },
                409,
                "version-retired",
                6,
            ),
            (Error::Unauthorized, 401, "unauthorized", 3),
            (Error::StoreBusy, 503, "busy", 8),
            (Error::Malformed { what: "header" }, 400, "malformed", 5),
        ];
        for (err, status, code, exit) in cases {
            let problem = keyward_daemon::problem(&err, super::diagnose);
            assert_eq!(
                (problem.status(), problem.code.as_str(), problem.exit as u8),
                (status, code, exit),
                "{err:?}"
            );
        }
    }

    #[test]
    fn serve_durations_parse_and_are_bounded() {
        assert_eq!(keyward_daemon::parse_duration("90s"), Ok(90));
        assert_eq!(keyward_daemon::parse_duration("15m"), Ok(900));
        assert_eq!(keyward_daemon::parse_duration("8h"), Ok(28_800));
        assert!(keyward_daemon::parse_duration("0s").is_err());
        assert!(keyward_daemon::parse_duration("5300w").is_err());
        let cli = Cli::try_parse_from([
            "keyward",
            "serve",
            "--socket",
            "/tmp/k.sock",
            "--idle-timeout",
            "90s",
        ])
        .expect("parse");
        match cli.command {
            Command::Serve(args) => {
                assert_eq!(
                    args.socket.as_deref(),
                    Some(std::path::Path::new("/tmp/k.sock"))
                );
                assert_eq!(
                    (
                        args.idle_timeout,
                        args.absolute_timeout,
                        args.check_interval
                    ),
                    (90, 8 * 3600, 60)
                );
                assert_eq!(
                    (
                        args.header_timeout,
                        args.body_timeout,
                        args.keepalive_timeout
                    ),
                    (10, 30, 60)
                );
                assert_eq!(args.max_connections, 512);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["keyward", "serve", "--idle-timeout", "soon"]).is_err());
    }
}
