//! keyward-daemon: `keyward serve`, the key service behind HTTP/1.1 + JSON
//! on a Unix socket. docs/API.md is the contract and keyward-api its types;
//! this crate implements it. It depends on keyward-kms and keyward-api,
//! never on the CLI: the CLI's diagnosis of key-service errors (message,
//! hint, exit code) comes in through [`Config::diagnose`], so the daemon
//! answers with the same remedy the CLI prints.
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

#![forbid(unsafe_code)]

mod api;
mod auth;
mod error;
mod events;
mod grants;
mod hardening;
mod scheduler;
mod server;
mod session;
mod socket;
mod watchdog;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use keyward_api::Exit;
pub use keyward_api::duration::parse_serve_duration as parse_duration;
use keyward_kms::Service;
use keyward_kms::audit::Action;
use keyward_kms::service::Actor;
use serde_json::Value;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

pub use error::problem;
pub use server::Limits;
pub use session::Timeouts;
pub use socket::DaemonLock;

/// How a key-service error reads in the API's error body: its code,
/// message, hint and CLI exit code (the CLI passes its own diagnosis).
pub type Diagnose = fn(&keyward_kms::Error) -> keyward_api::Problem;

/// Everything `keyward serve` was told.
#[derive(Debug, Clone)]
pub struct Config {
    /// The keystore.
    pub store: PathBuf,
    /// The socket path.
    pub socket: PathBuf,
    /// Session timeouts.
    pub timeouts: Timeouts,
    /// How often the scheduler looks for keys due for rotation.
    pub check_interval: Duration,
    /// How often the watchdog checks the socket.
    pub watchdog_interval: Duration,
    /// Transport limits.
    pub limits: Limits,
    /// The diagnosis of key-service errors.
    pub diagnose: Diagnose,
}

/// A failure to start or run the daemon: what happened, what to do, and
/// the exit code of `keyward serve`.
#[derive(Debug)]
pub struct Failure {
    /// The diagnosis, one line.
    pub message: String,
    /// The remedy, if there is one to give.
    pub hint: Option<String>,
    /// Exit code.
    pub code: Exit,
}

impl Failure {
    /// A failure with a message and exit code.
    pub(crate) fn new(code: Exit, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hint: None,
            code,
        }
    }

    /// Adds (or replaces) the hint.
    #[must_use]
    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// An I/O failure with what we were doing.
    pub(crate) fn io(context: impl std::fmt::Display, err: &std::io::Error) -> Self {
        Self::new(Exit::Failure, format!("{context}: {err}"))
    }
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

/// The default socket path (docs/API.md, "Transport"), the one clients
/// look for.
pub fn default_socket() -> PathBuf {
    keyward_api::socket::default_path()
}

/// Hardens the process and takes the store's daemon lock: what must happen
/// before the keystore is even opened.
///
/// # Errors
/// Core dumps cannot be disabled; another daemon serves the store (exit 8).
pub fn prepare(config: &Config) -> Result<(bool, DaemonLock), Failure> {
    let memory_locked = hardening::harden()?;
    let lock = DaemonLock::acquire(&config.store)?;
    Ok((memory_locked, lock))
}

/// Serves `service` until SIGTERM or SIGINT (or a tampered socket).
///
/// # Errors
/// The socket cannot be set up; the async runtime cannot start.
pub fn run(
    config: Config,
    service: Service,
    memory_locked: bool,
    lock: DaemonLock,
) -> Result<(), Failure> {
    error::set_diagnose(config.diagnose);
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
    to_stderr(format_args!(
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

/// Writes to stderr in one locked write (the ready line that scripts and
/// tests wait for).
fn to_stderr(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args);
    let _ = err.flush();
}
