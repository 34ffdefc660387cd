//! The accept loop and each connection's life (docs/API.md, "Transport").
//!
//! - At most `max_connections` connections are served at once; further
//!   ones wait in the kernel's listen backlog (we stop accepting).
//! - Every accepted connection's peer credentials are read
//!   (`SO_PEERCRED`): another uid gets `403 peer-rejected`, audited, and
//!   the connection is closed. Root gets no exception.
//! - hyper serves HTTP/1.1 on the connection; we keep the timeouts hyper
//!   cannot tell apart ourselves, by watching the connection's bytes: a
//!   request head must be complete within the header timeout of its first
//!   byte (slowloris), and a connection with no request in flight is closed
//!   after the keep-alive timeout. (hyper's own header timeout also runs
//!   while a kept-alive connection waits, which would make the two one.)
//!   The body timeout is the body reader's ([`super::api::wire`]).
//! - On shutdown, connections finish the request in flight and close.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt as _;

use crate::Daemon;
use crate::auth::Peer;
use crate::error::ApiError;

/// Transport limits (docs/API.md, "Limits").
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request head must arrive within this of its first byte.
    pub header_timeout: Duration,
    /// A request body must arrive within this.
    pub body_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub keepalive_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

/// hyper's read buffer, which bounds a request head (bodies stream
/// through it).
const MAX_BUF: usize = 64 * 1024;

/// How long we give in-flight requests to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Accepts connections until shutdown, then waits (up to a grace period)
/// for the open ones to finish.
pub(crate) async fn accept(
    listener: UnixListener,
    daemon: Arc<Daemon>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let max = daemon.limits.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = crate::stopped(&mut shutdown) => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, usually: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = crate::stopped(&mut shutdown) => break,
        };
        tokio::spawn(connection(
            stream,
            Arc::clone(&daemon),
            router.clone(),
            shutdown.clone(),
            slot,
        ));
    }
    drop(listener);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
    }
}

/// Serves one connection. `_slot` is its place under the connection cap,
/// given back when the connection ends.
async fn connection(
    stream: UnixStream,
    daemon: Arc<Daemon>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let cred = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(e) => {
            tracing::debug!(error = %e, "no peer credentials; closing");
            return;
        }
    };
    let pid = cred.pid().and_then(|p| u32::try_from(p).ok());
    if cred.uid() != daemon.uid {
        reject(stream, &daemon, cred.uid(), pid).await;
        return;
    }
    let peer = Arc::new(Peer {
        uid: cred.uid(),
        pid,
        exe: pid
            .and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok())
            .map(|p| p.display().to_string()),
    });
    let watch = Arc::new(ConnWatch::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        watch: Arc::clone(&watch),
    });
    let service = {
        let watch = Arc::clone(&watch);
        let daemon = Arc::clone(&daemon);
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let guard = InFlight::begin(Arc::clone(&watch));
            request.extensions_mut().insert(Arc::clone(&peer));
            let router = router.clone();
            let daemon = Arc::clone(&daemon);
            async move {
                // A request whose head arrived as the shutdown began: the
                // keystore is about to lock, so it is not started.
                let response = if *daemon.shutdown.borrow() {
                    ApiError::shutting_down().closing().into_response()
                } else {
                    let Ok(response) = router.oneshot(request.map(Body::new)).await;
                    response
                };
                let status = response.status();
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    daemon.refused();
                }
                // The request stays in flight until hyper drops the body it
                // has written (a stream ends when its client goes away).
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _in_flight = &guard;
                        frame
                    }))
                }))
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(MAX_BUF);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let limits = daemon.limits;
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            reason = watch.expired(limits) => {
                tracing::debug!(reason, "closing a connection");
                return;
            }
            () = crate::stopped(&mut shutdown), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// Answers a peer of another uid with `403 peer-rejected`, audits it, and
/// closes.
async fn reject(mut stream: UnixStream, daemon: &Arc<Daemon>, uid: u32, pid: Option<u32>) {
    tracing::warn!(uid, pid, "refused a connection from another user");
    let body = ApiError::peer_rejected(uid).body().to_string();
    let response = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the peer sent, so that closing does not reset its
        // connection before it has read our answer.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
    drop(stream);
    daemon.refused();
    daemon
        .record(
            keyward_kms::audit::Action::PeerRejected,
            false,
            json!({ "uid": uid, "pid": pid }),
        )
        .await;
}

/// What a connection is doing, for its timeouts.
#[derive(Debug)]
struct ConnWatch {
    /// The time origin of the millisecond fields.
    epoch: Instant,
    /// Requests in flight.
    busy: AtomicU32,
    /// When the last request ended (or the connection was accepted), ms.
    idle_since: AtomicU64,
    /// When the first byte of the next request head came, ms + 1; 0: none.
    head_since: AtomicU64,
    /// Wakes [`ConnWatch::expired`] when any of the above changes.
    changed: Notify,
}

impl ConnWatch {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Bytes arrived.
    fn on_read(&self) {
        if self.busy.load(Ordering::Acquire) == 0 && self.head_since.load(Ordering::Acquire) == 0 {
            self.head_since.store(self.now_ms() + 1, Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// Resolves when a timeout closes the connection, with its name.
    async fn expired(&self, limits: Limits) -> &'static str {
        loop {
            let deadline = if self.busy.load(Ordering::Acquire) > 0 {
                None
            } else {
                match self.head_since.load(Ordering::Acquire) {
                    0 => Some((
                        self.idle_since.load(Ordering::Acquire),
                        limits.keepalive_timeout,
                        "idle keep-alive timeout",
                    )),
                    since => Some((since - 1, limits.header_timeout, "header timeout")),
                }
            };
            match deadline {
                None => self.changed.notified().await,
                Some((since, timeout, reason)) => {
                    let at = self.epoch + Duration::from_millis(since) + timeout;
                    if Instant::now() >= at {
                        return reason;
                    }
                    tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => {}
                        () = self.changed.notified() => {}
                    }
                }
            }
        }
    }
}

/// A request in flight on a connection, from its head to the end of its
/// response.
struct InFlight(Arc<ConnWatch>);

impl InFlight {
    fn begin(watch: Arc<ConnWatch>) -> Self {
        watch.busy.fetch_add(1, Ordering::AcqRel);
        watch.head_since.store(0, Ordering::Release);
        watch.changed.notify_one();
        Self(watch)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now_ms(), Ordering::Release);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

/// The connection's stream, telling its [`ConnWatch`] when bytes arrive.
struct Watched {
    inner: UnixStream,
    watch: Arc<ConnWatch>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.watch.on_read();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
