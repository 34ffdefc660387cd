//! The CLI's side of the daemon API (docs/API.md): a small blocking
//! HTTP/1.1 client over the daemon's Unix socket.
//!
//! Every command asks [`Daemon::for_store`] first: when a daemon serves the
//! command's keystore, the command goes through it (the owner's uid is
//! trusted, so no token is sent); otherwise the command works on the store
//! directly. Before anything is sent — an unlock request carries a PIN — the
//! socket and its directory must belong to the user and be writable by
//! nobody else: a socket planted by someone else is never spoken to.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use zeroize::Zeroizing;

use crate::failure::{Exit, Failure};

/// Environment variable naming the daemon's socket (also `serve --socket`).
pub(crate) const SOCKET_ENV: &str = "KEYWARD_SOCKET";

/// Longest response body we accept (a batch of 1000 one-shot ciphertexts).
const MAX_RESPONSE: u64 = 64 << 20;

/// How long an ordinary request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An unlock may wait for a touch or a slow device.
pub(crate) const UNLOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// The daemon's socket: `KEYWARD_SOCKET`, else the daemon's default
/// (`$XDG_RUNTIME_DIR/keyward/keyward.sock` when that is absolute, else
/// `/run/user/$EUID/keyward/keyward.sock`): one rule for both sides.
pub(crate) fn socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    crate::daemon::socket::default_path()
}

/// A connection to a running daemon.
#[derive(Debug)]
pub(crate) struct Daemon {
    socket: PathBuf,
    stream: BufReader<UnixStream>,
    /// The daemon's `GET /v1/status` answer at connection time.
    pub(crate) status: Value,
}

/// A response: HTTP status and JSON body.
#[derive(Debug)]
pub(crate) struct Response {
    /// HTTP status code.
    pub(crate) status: u16,
    /// The body (zeroized when dropped: it may hold plaintext).
    pub(crate) body: Value,
}

impl Daemon {
    /// The daemon serving `store`, if one runs; `None` when no daemon
    /// listens on the socket or it serves another keystore.
    ///
    /// # Errors
    /// The socket exists but is not trustworthy (`socket-untrusted`), or
    /// the daemon does not answer sensibly.
    pub(crate) fn for_store(store: &Path) -> Result<Option<Self>, Failure> {
        let socket = socket_path();
        let Some(daemon) = Self::connect(&socket)? else {
            return Ok(None);
        };
        let served = daemon
            .status
            .get("store")
            .and_then(Value::as_str)
            .map(PathBuf::from);
        let same = served
            .as_deref()
            .is_some_and(|served| same_file(served, store));
        if !same {
            tracing::debug!(
                socket = %socket.display(),
                served = ?served,
                "the daemon serves another keystore; working on the store directly"
            );
            return Ok(None);
        }
        daemon
            .stream
            .get_ref()
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .ok();
        Ok(Some(daemon))
    }

    /// Connects to the daemon at `socket` and reads its status; `None` if
    /// nothing listens there.
    ///
    /// # Errors
    /// An untrusted socket; a daemon that fails its status request.
    pub(crate) fn connect(socket: &Path) -> Result<Option<Self>, Failure> {
        match std::fs::symlink_metadata(socket) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Failure::io(
                    format_args!("cannot inspect the daemon socket {}", socket.display()),
                    &e,
                ));
            }
            Ok(meta) => check_trusted(socket, &meta)?,
        }
        let stream = match UnixStream::connect(socket) {
            Ok(s) => s,
            // A socket file left by a daemon that was killed.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                ) =>
            {
                tracing::debug!(socket = %socket.display(), "stale daemon socket; no daemon");
                return Ok(None);
            }
            Err(e) => {
                return Err(Failure::io(
                    format_args!("cannot connect to the daemon at {}", socket.display()),
                    &e,
                ));
            }
        };
        stream.set_read_timeout(Some(REQUEST_TIMEOUT)).ok();
        stream.set_write_timeout(Some(REQUEST_TIMEOUT)).ok();
        let mut daemon = Self {
            socket: socket.to_owned(),
            stream: BufReader::new(stream),
            status: Value::Null,
        };
        daemon.status = daemon.call("GET", "/v1/status", None)?;
        Ok(Some(daemon))
    }

    /// Sets how long to wait for an answer.
    pub(crate) fn set_timeout(&self, timeout: Option<Duration>) {
        self.stream.get_ref().set_read_timeout(timeout).ok();
    }

    /// Sends a request and returns the body of a 2xx answer.
    ///
    /// # Errors
    /// The daemon's error, rendered as the CLI renders the same failure
    /// (message, hint and exit code come from the daemon); transport
    /// failures.
    pub(crate) fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let response = self.request(method, path, body)?;
        if (200..300).contains(&response.status) {
            Ok(response.body)
        } else {
            Err(api_failure(&response))
        }
    }

    /// Sends a request and returns the answer, whatever its status.
    ///
    /// # Errors
    /// Transport failures and unreadable answers.
    pub(crate) fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, Failure> {
        self.send(method, path, body)?;
        let (status, headers) = self.read_head()?;
        let raw = self.read_body(&headers)?;
        let body = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw).map_err(|e| {
                Failure::new(
                    Exit::Failure,
                    format!("the daemon sent an unreadable answer ({e})"),
                )
            })?
        };
        Ok(Response { status, body })
    }

    /// Sends a request whose answer is a stream of JSON lines (events) and
    /// calls `each` for every line until the daemon closes the stream or
    /// `each` returns `false`.
    ///
    /// # Errors
    /// Transport failures; an error answer from the daemon.
    pub(crate) fn stream_lines(
        &mut self,
        path: &str,
        mut each: impl FnMut(&Value) -> Result<bool, Failure>,
    ) -> Result<(), Failure> {
        self.set_timeout(None);
        self.send("GET", path, None)?;
        let (status, headers) = self.read_head()?;
        if !(200..300).contains(&status) {
            let raw = self.read_body(&headers)?;
            let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
            return Err(api_failure(&Response { status, body }));
        }
        let chunked = header(&headers, "transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let mut pending = Vec::new();
        loop {
            let chunk = if chunked {
                match self.read_chunk()? {
                    Some(c) => c,
                    None => return Ok(()),
                }
            } else {
                let mut buf = vec![0u8; 8192];
                let n = self
                    .stream
                    .read(&mut buf)
                    .map_err(|e| transport("read from", &self.socket, &e))?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                Zeroizing::new(buf)
            };
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                let value: Value = serde_json::from_slice(line).map_err(|e| {
                    Failure::new(
                        Exit::Failure,
                        format!("the daemon sent an unreadable event ({e})"),
                    )
                })?;
                if !each(&value)? {
                    return Ok(());
                }
            }
        }
    }

    fn send(&mut self, method: &str, path: &str, body: Option<&Value>) -> Result<(), Failure> {
        // The body may carry a PIN or plaintext: build it in a buffer that
        // is zeroized, sized so that it never reallocates.
        let mut payload =
            Zeroizing::new(Vec::with_capacity(body.map_or(0, |b| estimate_len(b) + 64)));
        if let Some(b) = body {
            serde_json::to_writer(&mut *payload, b).map_err(|e| {
                Failure::new(Exit::Failure, format!("cannot encode the request: {e}"))
            })?;
        }
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: keyward\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            payload.len()
        );
        let stream = self.stream.get_mut();
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(&payload))
            .and_then(|()| stream.flush())
            .map_err(|e| transport("write to", &self.socket, &e))
    }

    fn read_head(&mut self) -> Result<(u16, Vec<(String, String)>), Failure> {
        let mut line = String::new();
        let n = self
            .stream
            .read_line(&mut line)
            .map_err(|e| transport("read from", &self.socket, &e))?;
        if n == 0 {
            return Err(Failure::new(
                Exit::Failure,
                format!(
                    "the daemon at {} closed the connection without answering",
                    self.socket.display()
                ),
            )
            .hint("it may have stopped or crashed; see its log, or run the command again"));
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| bad_answer("status line"))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.stream
                .read_line(&mut line)
                .map_err(|e| transport("read from", &self.socket, &e))?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if headers.len() > 100 {
                return Err(bad_answer("headers"));
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        Ok((status, headers))
    }

    fn read_body(&mut self, headers: &[(String, String)]) -> Result<Zeroizing<Vec<u8>>, Failure> {
        if header(headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            let mut body = Zeroizing::new(Vec::new());
            while let Some(chunk) = self.read_chunk()? {
                if (body.len() + chunk.len()) as u64 > MAX_RESPONSE {
                    return Err(bad_answer("body size"));
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(body);
        }
        let len: u64 = header(headers, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if len > MAX_RESPONSE {
            return Err(bad_answer("body size"));
        }
        let len = usize::try_from(len).map_err(|_| bad_answer("body size"))?;
        let mut body = Zeroizing::new(vec![0u8; len]);
        self.stream
            .read_exact(&mut body)
            .map_err(|e| transport("read from", &self.socket, &e))?;
        Ok(body)
    }

    /// One chunk of a chunked body; `None` at the last (empty) chunk.
    fn read_chunk(&mut self) -> Result<Option<Zeroizing<Vec<u8>>>, Failure> {
        let mut line = String::new();
        self.stream
            .read_line(&mut line)
            .map_err(|e| transport("read from", &self.socket, &e))?;
        if line.is_empty() {
            return Ok(None);
        }
        let size_text = line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad_answer("chunk size"))?;
        if size as u64 > MAX_RESPONSE {
            return Err(bad_answer("chunk size"));
        }
        let mut chunk = Zeroizing::new(vec![0u8; size]);
        self.stream
            .read_exact(&mut chunk)
            .map_err(|e| transport("read from", &self.socket, &e))?;
        let mut crlf = [0u8; 2];
        self.stream
            .read_exact(&mut crlf)
            .map_err(|e| transport("read from", &self.socket, &e))?;
        if size == 0 {
            return Ok(None);
        }
        Ok(Some(chunk))
    }
}

/// The failure a daemon error answer stands for: its message, hint and
/// exit code (docs/API.md, "Errors").
pub(crate) fn api_failure(response: &Response) -> Failure {
    let error = response.body.get("error");
    let text = |k: &str| error.and_then(|e| e.get(k)).and_then(Value::as_str);
    let code = text("code").unwrap_or("unknown");
    let message = text("message").map_or_else(
        || format!("the daemon refused the request (HTTP {})", response.status),
        str::to_owned,
    );
    let exit = error
        .and_then(|e| e.get("exit"))
        .and_then(Value::as_u64)
        .map_or(Exit::Failure, exit_from_code);
    tracing::debug!(code, status = response.status, "daemon error");
    let failure = Failure::new(exit, message);
    match text("hint") {
        Some(hint) => failure.hint(hint),
        None => failure,
    }
}

/// Reads a daemon answer into a kms type.
///
/// # Errors
/// The answer does not have the expected shape.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Failure> {
    serde_json::from_value(v).map_err(|e| {
        Failure::new(
            Exit::Failure,
            format!("the daemon sent an unexpected answer ({e})"),
        )
    })
}

/// Overwrites every string in a request or answer that held a secret (a
/// PIN, plaintext, a data key).
pub(crate) fn zeroize_json(v: &mut Value) {
    use zeroize::Zeroize as _;
    match v {
        Value::String(s) => s.zeroize(),
        Value::Array(a) => a.iter_mut().for_each(zeroize_json),
        Value::Object(o) => o.iter_mut().for_each(|(_, v)| zeroize_json(v)),
        _ => {}
    }
}

/// The `error.code` of an answer, if it is an error.
pub(crate) fn error_code(response: &Response) -> Option<&str> {
    response
        .body
        .get("error")
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
}

fn exit_from_code(code: u64) -> Exit {
    match code {
        2 => Exit::Usage,
        3 => Exit::Auth,
        4 => Exit::NotFound,
        5 => Exit::Integrity,
        6 => Exit::Refused,
        7 => Exit::Device,
        8 => Exit::Store,
        _ => Exit::Failure,
    }
}

/// Refuses a socket (or socket directory) that someone else could have
/// put there or could replace.
fn check_trusted(socket: &Path, meta: &std::fs::Metadata) -> Result<(), Failure> {
    let uid = rustix::process::geteuid().as_raw();
    let untrusted = |what: String| {
        Failure::new(
            Exit::Refused,
            format!(
                "refusing to talk to the daemon socket {}: {what}",
                socket.display()
            ),
        )
        .hint(
            "a socket another user controls could collect your PIN; remove it, check who \
             created it, and start `keyward serve` again (or point KEYWARD_SOCKET elsewhere)",
        )
    };
    if !meta.file_type().is_socket() {
        return Err(untrusted("it is not a socket".into()));
    }
    if meta.uid() != uid {
        return Err(untrusted(format!(
            "it belongs to uid {}, not to you (uid {uid})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(untrusted(format!(
            "others may write to it (mode {:o})",
            meta.mode() & 0o777
        )));
    }
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        let d = std::fs::metadata(dir)
            .map_err(|e| Failure::io(format_args!("cannot inspect {}", dir.display()), &e))?;
        if d.uid() != uid || d.mode() & 0o022 != 0 {
            return Err(untrusted(format!(
                "its directory {} belongs to uid {} with mode {:o}",
                dir.display(),
                d.uid(),
                d.mode() & 0o777
            )));
        }
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn transport(what: &str, socket: &Path, e: &std::io::Error) -> Failure {
    let hint =
        if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut {
            "the daemon did not answer in time; see its log (journalctl --user -u keyward)"
        } else {
            "the daemon may have stopped; run the command again (it works without a daemon too)"
        };
    Failure::new(
        Exit::Failure,
        format!("cannot {what} the daemon at {}: {e}", socket.display()),
    )
    .hint(hint)
}

fn bad_answer(part: &str) -> Failure {
    Failure::new(
        Exit::Failure,
        format!("the daemon sent an unreadable answer (bad {part})"),
    )
}

/// A generous guess of a JSON value's encoded length.
fn estimate_len(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len() * 2 + 2,
        Value::Array(a) => a.iter().map(estimate_len).sum::<usize>() + a.len() + 2,
        Value::Object(o) => {
            o.iter()
                .map(|(k, v)| k.len() * 2 + 4 + estimate_len(v))
                .sum::<usize>()
                + 2
        }
        _ => 24,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn daemon_errors_keep_their_message_hint_and_exit_code() {
        let r = Response {
            status: 423,
            body: serde_json::json!({"error": {"code": "locked",
                "message": "the keystore is locked", "hint": "keyward unlock", "exit": 3}}),
        };
        let f = api_failure(&r);
        assert_eq!(f.code, Exit::Auth);
        assert_eq!(f.message, "the keystore is locked");
        assert_eq!(f.hint.as_deref(), Some("keyward unlock"));
        assert_eq!(error_code(&r), Some("locked"));
        let garbage = Response {
            status: 500,
            body: Value::Null,
        };
        assert_eq!(api_failure(&garbage).code, Exit::Failure);
    }

    #[test]
    fn untrusted_sockets_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"").expect("write");
        let meta = std::fs::symlink_metadata(&file).expect("meta");
        let f = check_trusted(&file, &meta).expect_err("a regular file");
        assert!(f.message.contains("not a socket"), "{}", f.message);
        let sock = dir.path().join("s");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let meta = std::fs::symlink_metadata(&sock).expect("meta");
        let f = check_trusted(&sock, &meta).expect_err("world-writable");
        assert!(f.message.contains("others may write"), "{}", f.message);
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod dir");
        let meta = std::fs::symlink_metadata(&sock).expect("meta");
        let f = check_trusted(&sock, &meta).expect_err("world-writable directory");
        assert!(f.message.contains("directory"), "{}", f.message);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod dir");
        let meta = std::fs::symlink_metadata(&sock).expect("meta");
        check_trusted(&sock, &meta).expect("private socket");
    }
}
