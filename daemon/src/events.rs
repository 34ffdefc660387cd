//! `GET /v1/events`: security events as newline-delimited JSON
//! (docs/API.md, "Audit and events").
//!
//! Every event is an audit record first; the stream is the audit log
//! filtered to the actions below, read every [`POLL`] from the sequence
//! number the subscriber asked for. It runs until the subscriber goes away
//! (hyper drops the body, and with it this stream) or the daemon shuts
//! down.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use keyward_kms::audit::{Action, AuditRecord};
use tokio::sync::watch;

use crate::Daemon;

/// How often the log is read.
const POLL: Duration = Duration::from_millis(200);

/// Records read per poll.
const BATCH: usize = 1000;

/// Whether an audit action is a security event
/// ([`Action::is_security_event`]; an action this build does not know is
/// not).
pub(crate) fn is_event(action: &str) -> bool {
    Action::parse(action).is_some_and(Action::is_security_event)
}

/// The streaming response, from audit sequence number `since` on.
pub(crate) fn stream(daemon: Arc<Daemon>, since: u64) -> Response {
    let shutdown = daemon.shutdown.subscribe();
    let state = Poller {
        daemon,
        next: since,
        shutdown,
        first: true,
    };
    let lines = futures_util::stream::unfold(state, |mut state| async move {
        let chunk = state.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), state))
    });
    let mut response = Response::new(Body::from_stream(lines));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// The stream's position in the log.
struct Poller {
    daemon: Arc<Daemon>,
    next: u64,
    shutdown: watch::Receiver<bool>,
    first: bool,
}

impl Poller {
    /// The next lines to send; `None` ends the stream.
    async fn next_chunk(&mut self) -> Option<bytes::Bytes> {
        loop {
            if !self.first || *self.shutdown.borrow() {
                tokio::select! {
                    () = tokio::time::sleep(POLL) => {}
                    () = crate::stopped(&mut self.shutdown) => return None,
                }
            }
            self.first = false;
            let records = {
                let core = self.daemon.core.lock().await;
                core.service.audit_records(self.next, BATCH)
            };
            let records = match records {
                Ok(records) => records,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the audit log for an event stream");
                    return None;
                }
            };
            if let Some(last) = records.last() {
                self.next = last.seq + 1;
            }
            let lines = ndjson(records.iter().filter(|r| is_event(&r.action)));
            if !lines.is_empty() {
                return Some(bytes::Bytes::from(lines));
            }
        }
    }
}

/// Records as newline-delimited JSON.
fn ndjson<'a>(records: impl Iterator<Item = &'a AuditRecord>) -> Vec<u8> {
    let mut out = Vec::new();
    for record in records {
        if serde_json::to_writer(&mut out, record).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_events_are_selected() {
        for action in [
            "unlock",
            "unlock.failed",
            "lock",
            "protector.enroll",
            "client.add",
            "client.revoke_all",
            "key.rotate",
            "master.rotate",
            "peer.rejected",
            "requests.refused.burst",
        ] {
            assert!(is_event(action), "{action}");
        }
        for action in ["encrypt", "decrypt", "sign", "verify.accept", "store.init"] {
            assert!(!is_event(action), "{action}");
        }
    }
}
