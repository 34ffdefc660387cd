//! `keyward serve`: the key service behind HTTP/1.1 + JSON on a Unix
//! socket. docs/API.md is the contract; this module implements it.
//!
//! - [`hardening`]: no core dumps, private umask, secrets locked in memory,
//!   before any secret exists.
//! - [`socket`]: where the socket lives, the one-daemon-per-store lock,
//!   stale sockets; [`watchdog`] checks the socket stays ours.
//! - [`server`]: the accept loop: peer credentials, connection cap, header
//!   and keep-alive timeouts, graceful shutdown.
//! - [`api`]: the routes; [`api::wire`] reads bodies (limits, body
//!   timeout, strict JSON, base64) and writes them.
//! - [`auth`]: owner or client, grants, the refusal-burst detector.
//! - [`error`]: the JSON error body and status of every failure.
//! - [`session`]: unlock over the API and the session timeouts.
//! - [`scheduler`]: scheduled key rotation; [`events`]: the event stream.
//!
//! One [`Service`] serves every request, behind one async lock (tokio's
//! `Mutex`, so that a task waiting for it never blocks a worker thread).
//! Requests hold it for microseconds; the few slow operations (unlock,
//! master-key rotation, audit verification, scheduled rotation) take it on
//! a blocking thread.

mod api;
mod auth;
mod error;
mod events;
mod hardening;
mod scheduler;
mod server;
mod session;
pub(crate) mod socket;
mod watchdog;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_kms::Service;
use keyward_kms::audit::Action;
use keyward_kms::service::Actor;
use serde_json::Value;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::failure::{Exit, Failure};

pub(crate) use server::Limits;
pub(crate) use session::Timeouts;

/// Everything `keyward serve` was told.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The keystore.
    pub(crate) store: PathBuf,
    /// The socket path.
    pub(crate) socket: PathBuf,
    /// Session timeouts.
    pub(crate) timeouts: Timeouts,
    /// How often the scheduler looks for keys due for rotation.
    pub(crate) check_interval: Duration,
    /// How often the watchdog checks the socket.
    pub(crate) watchdog_interval: Duration,
    /// Transport limits.
    pub(crate) limits: Limits,
}

/// What every task and handler shares.
#[derive(Debug)]
pub(crate) struct Daemon {
    /// The Service and the session.
    pub(crate) core: tokio::sync::Mutex<session::Core>,
    /// Transport limits.
    pub(crate) limits: Limits,
    /// Session timeouts.
    pub(crate) timeouts: Timeouts,
    /// The uid we serve (our own).
    pub(crate) uid: u32,
    /// Whether secrets are locked in memory.
    pub(crate) memory_locked: bool,
    /// Refused requests, for the burst detector.
    refusals: auth::Refusals,
    /// Set to `true` once to shut down.
    pub(crate) shutdown: watch::Sender<bool>,
}

impl Daemon {
    /// Writes a daemon-level audit record (`peer.rejected`, …); a failure
    /// is logged, as there is nobody else to tell.
    pub(crate) async fn record(&self, action: Action, ok: bool, fields: Value) {
        let mut core = self.core.lock().await;
        core.service.set_actor(Actor::current());
        if let Err(e) = core.service.record_event(action, ok, &fields) {
            tracing::warn!(error = %e, %action, "could not write an audit record");
        }
    }

    /// Notes a refused request (401, 403) and audits a burst of them.
    pub(crate) fn refused(self: &Arc<Self>) {
        if let Some(count) = self.refusals.note(Instant::now()) {
            tracing::warn!(
                count,
                "{count} requests refused within {} s",
                auth::BURST_WINDOW.as_secs()
            );
            let daemon = Arc::clone(self);
            tokio::spawn(async move {
                daemon
                    .record(
                        Action::RequestsRefusedBurst,
                        false,
                        serde_json::json!({ "refused": count,
                                            "window_seconds": auth::BURST_WINDOW.as_secs() }),
                    )
                    .await;
            });
        }
    }

    /// Starts the shutdown (idempotent).
    pub(crate) fn shut_down(&self, why: &str) {
        if !self.shutdown.send_replace(true) {
            tracing::info!("shutting down: {why}");
        }
    }
}

/// The longest duration `keyward serve` takes (100 years): long enough to
/// mean "never", short enough that no deadline computed from it overflows.
const MAX_DURATION_SECS: u64 = 100 * 365 * 86_400;

/// Parses a `serve` duration (`90s`, `15m`, `8h`, …) as
/// [`crate::render::parse_duration`] does, up to 100 years.
///
/// # Errors
/// As `parse_duration`, and for more than 100 years.
pub(crate) fn parse_duration(text: &str) -> Result<u64, String> {
    let secs = crate::render::parse_duration(text)?;
    if secs > MAX_DURATION_SECS {
        return Err("the duration must be at most 100 years".to_owned());
    }
    Ok(secs)
}

/// Resolves once the daemon is shutting down.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: the daemon is going away too.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Unix time now, seconds.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Hardens the process and takes the store's daemon lock: what must happen
/// before the keystore is even opened.
///
/// # Errors
/// Core dumps cannot be disabled; another daemon serves the store (exit 8).
pub(crate) fn prepare(config: &Config) -> Result<(bool, socket::DaemonLock), Failure> {
    let memory_locked = hardening::harden()?;
    let lock = socket::DaemonLock::acquire(&config.store)?;
    Ok((memory_locked, lock))
}

/// Serves `service` until SIGTERM or SIGINT (or a tampered socket).
///
/// # Errors
/// The socket cannot be set up; the async runtime cannot start.
pub(crate) fn run(
    config: Config,
    service: Service,
    memory_locked: bool,
    lock: socket::DaemonLock,
) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("keyward-serve")
        .build()
        .map_err(|e| Failure::io("cannot start the daemon's runtime", &e))?;
    let result = runtime.block_on(serve(config, service, memory_locked));
    // Only now, with every connection closed and the store locked, may
    // another daemon take the store.
    lock.release();
    result
}

async fn serve(config: Config, service: Service, memory_locked: bool) -> Result<(), Failure> {
    socket::prepare(&config.socket)?;
    let listener = tokio::net::UnixListener::bind(&config.socket).map_err(|e| {
        Failure::new(
            Exit::Store,
            format!("cannot listen on {}: {e}", config.socket.display()),
        )
    })?;
    let cannot = |e: std::io::Error| {
        Failure::new(
            Exit::Store,
            format!("cannot secure the socket {}: {e}", config.socket.display()),
        )
    };
    socket::restrict(&config.socket).map_err(cannot)?;
    let identity = socket::Identity::of(&config.socket).map_err(cannot)?;

    let (shutdown, _) = watch::channel(false);
    let daemon = Arc::new(Daemon {
        core: tokio::sync::Mutex::new(session::Core {
            service,
            session: None,
        }),
        limits: config.limits,
        timeouts: config.timeouts,
        uid: rustix::process::geteuid().as_raw(),
        memory_locked,
        refusals: auth::Refusals::default(),
        shutdown,
    });
    // Signal handlers first: a SIGTERM right after the ready line must find
    // them in place.
    let signals = Signals::install().map_err(|e| Failure::io("cannot handle signals", &e))?;
    let accept = tokio::spawn(server::accept(
        listener,
        Arc::clone(&daemon),
        api::router(Arc::clone(&daemon)),
        daemon.shutdown.subscribe(),
    ));
    tokio::spawn(signals.run(Arc::clone(&daemon)));
    tokio::spawn(session::expire(
        Arc::clone(&daemon),
        daemon.shutdown.subscribe(),
    ));
    tokio::spawn(scheduler::run(
        Arc::clone(&daemon),
        config.check_interval,
        daemon.shutdown.subscribe(),
    ));
    tokio::spawn(watchdog::run(
        Arc::clone(&daemon),
        config.socket.clone(),
        identity,
        config.watchdog_interval,
        daemon.shutdown.subscribe(),
    ));
    crate::files::to_stderr(format_args!(
        "keyward: serving {} on {} (locked)\n",
        config.store.display(),
        config.socket.display()
    ));

    stopped(&mut daemon.shutdown.subscribe()).await;
    // The accept loop stops accepting and waits for the open connections.
    if let Err(e) = accept.await {
        tracing::error!(error = %e, "the accept loop failed");
    }
    daemon.core.lock().await.lock_as_daemon("shutdown");
    if matches!(
        identity.check(&config.socket),
        socket::Check::Intact | socket::Check::ModeChanged(_)
    ) {
        let _ = std::fs::remove_file(&config.socket);
    }
    tracing::info!("stopped");
    Ok(())
}

/// The signals the daemon handles.
struct Signals {
    hangup: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// SIGHUP locks; SIGTERM and SIGINT shut down gracefully.
    async fn run(mut self, daemon: Arc<Daemon>) {
        loop {
            tokio::select! {
                _ = self.hangup.recv() => {
                    tracing::info!("SIGHUP: locking");
                    daemon.core.lock().await.lock_as_daemon("signal");
                }
                _ = self.terminate.recv() => {
                    daemon.shut_down("SIGTERM");
                    return;
                }
                _ = self.interrupt.recv() => {
                    daemon.shut_down("SIGINT");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::args::{Cli, Command};

    #[test]
    fn serve_durations_parse_and_are_bounded() {
        assert_eq!(super::parse_duration("90s"), Ok(90));
        assert_eq!(super::parse_duration("15m"), Ok(900));
        assert_eq!(super::parse_duration("8h"), Ok(28_800));
        assert!(super::parse_duration("0s").is_err());
        assert!(super::parse_duration("5300w").is_err());
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
