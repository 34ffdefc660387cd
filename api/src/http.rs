//! HTTP/1.1 on one Unix-socket connection, as the daemon speaks it: a
//! request written in one zeroizing buffer; a response head read with
//! `httparse` (hyper's parser); a body framed by `Content-Length`, chunked
//! transfer coding, or the end of the connection; and the lines of a
//! streamed body (`GET /v1/events`).
//!
//! The one implementation of the transport in keyward: the CLI, the tests,
//! the benchmark and the assistant's store all read answers through it.
//! Bytes read may be plaintext, a data key or a token, so every buffer here
//! is zeroized, and grows only by moving into a new zeroizing allocation
//! (a `Vec` reallocation would leave the old bytes behind).

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

/// Longest response body we accept (a batch of 1000 one-shot ciphertexts).
pub const MAX_BODY: usize = 64 << 20;

/// Most header lines in a response.
const MAX_HEADERS: usize = 64;

/// Longest response head.
const MAX_HEAD: usize = 64 << 10;

/// A response: status, headers, and the whole (de-chunked) body.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body (zeroized when dropped: it may hold plaintext).
    pub body: Zeroizing<Vec<u8>>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// How the body of the response being read ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body is being read.
    Idle,
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes.
    UntilClose,
}

/// One keep-alive HTTP/1.1 connection to the daemon.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    /// Bytes read but not yet consumed.
    buffer: Zeroizing<Vec<u8>>,
    /// Body bytes of a stream not yet returned as lines.
    lines: Zeroizing<Vec<u8>>,
    /// The framing of the streamed body being read.
    framing: Framing,
}

impl Connection {
    /// Connects to `socket` (no trust check: see [`crate::Client`]).
    ///
    /// # Errors
    /// The connection is refused.
    pub fn connect(socket: &Path) -> io::Result<Self> {
        Ok(Self::from_stream(UnixStream::connect(socket)?))
    }

    /// Speaks HTTP on a connected stream.
    pub fn from_stream(stream: UnixStream) -> Self {
        Self {
            stream,
            buffer: Zeroizing::new(Vec::new()),
            lines: Zeroizing::new(Vec::new()),
            framing: Framing::Idle,
        }
    }

    /// The underlying stream (to set timeouts, shut down one direction).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Writes one request: `method path`, an `Authorization: Bearer` header
    /// when `token` is given, and a JSON `body` with its `Content-Length`
    /// when one is given.
    ///
    /// # Errors
    /// Transport errors.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        token: Option<&str>,
    ) -> io::Result<()> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: keyward\r\n");
        if let Some(body) = body {
            let _ = write!(
                head,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        let token_len = token.map_or(0, |t| t.len() + 24);
        let body = body.unwrap_or_default();
        // One exact allocation: the token and the body are copied once and
        // wiped on drop.
        let mut request =
            Zeroizing::new(Vec::with_capacity(head.len() + token_len + 2 + body.len()));
        request.extend_from_slice(head.as_bytes());
        if let Some(token) = token {
            request.extend_from_slice(b"Authorization: Bearer ");
            request.extend_from_slice(token.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(body);
        self.send_raw(&request)
    }

    /// Writes raw bytes (tests send malformed requests this way).
    ///
    /// # Errors
    /// Transport errors.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Sends a request and reads its response. A daemon may answer before
    /// reading the whole body (`413`) and close: its answer is still read.
    ///
    /// # Errors
    /// As [`Connection::send`] and [`Connection::read_response`].
    pub fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        token: Option<&str>,
    ) -> io::Result<Response> {
        match self.send(method, path, body, token) {
            Ok(()) => self.read_response(),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                self.read_response().map_err(|_| e)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads one whole response.
    ///
    /// # Errors
    /// Transport errors; `UnexpectedEof` if the connection closed first;
    /// `InvalidData` for an answer that is not HTTP/1.1 or is too large.
    pub fn read_response(&mut self) -> io::Result<Response> {
        let head = self.read_head()?;
        self.read_body(head)
    }

    /// Reads the whole body of the response whose head `response` is.
    ///
    /// # Errors
    /// As [`Connection::read_response`].
    pub fn read_body(&mut self, mut response: Response) -> io::Result<Response> {
        match self.framing {
            Framing::Chunked => {
                let mut body = Zeroizing::new(Vec::new());
                while let Some(chunk) = self.read_chunk()? {
                    if body.len() + chunk.len() > MAX_BODY {
                        return Err(invalid("the response body is too large"));
                    }
                    extend(&mut body, &chunk);
                }
                response.body = body;
            }
            Framing::UntilClose => {
                while self.fill()? > 0 {
                    if self.buffer.len() > MAX_BODY {
                        return Err(invalid("the response body is too large"));
                    }
                }
                response.body = std::mem::take(&mut self.buffer);
            }
            Framing::Idle => {
                let len = match response.header("content-length") {
                    Some(len) => len
                        .parse::<usize>()
                        .map_err(|_| invalid("bad Content-Length in the response"))?,
                    None => 0,
                };
                if len > MAX_BODY {
                    return Err(invalid("the response body is too large"));
                }
                while self.buffer.len() < len {
                    if self.fill()? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed in the response body",
                        ));
                    }
                }
                let mut body = Zeroizing::new(Vec::with_capacity(len));
                body.extend_from_slice(&self.buffer[..len]);
                self.consume(len);
                response.body = body;
            }
        }
        self.framing = Framing::Idle;
        Ok(response)
    }

    /// Reads a response head, leaving its body to read: whole, with
    /// [`Connection::read_response`], or line by line, with
    /// [`Connection::next_line`]. The response's `body` is empty.
    ///
    /// # Errors
    /// As [`Connection::read_response`].
    pub fn read_head(&mut self) -> io::Result<Response> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&self.buffer) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = parsed.code.ok_or_else(|| invalid("bad status line"))?;
                    let headers: Vec<(String, String)> = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).trim().to_owned(),
                            )
                        })
                        .collect();
                    self.consume(len);
                    self.lines = Zeroizing::new(Vec::new());
                    let chunked = header(&headers, "transfer-encoding")
                        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
                    self.framing = if chunked {
                        Framing::Chunked
                    } else if header(&headers, "content-length").is_none()
                        && !matches!(status, 204 | 304)
                        && header(&headers, "content-type")
                            .is_some_and(|t| t.starts_with("application/x-ndjson"))
                    {
                        Framing::UntilClose
                    } else {
                        Framing::Idle
                    };
                    return Ok(Response {
                        status,
                        headers,
                        body: Zeroizing::new(Vec::new()),
                    });
                }
                Ok(httparse::Status::Partial) => {
                    if self.buffer.len() > MAX_HEAD {
                        return Err(invalid("the response head is too large"));
                    }
                }
                Err(e) => return Err(invalid(&format!("bad response head ({e})"))),
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a response",
                ));
            }
        }
    }

    /// The next line of a streamed body (after [`Connection::read_head`]),
    /// without its newline; blank lines are skipped. `Ok(None)` at the end
    /// of the stream; `Ok(None)` too when `timeout` passes first (`None`:
    /// wait for as long as the stream's read timeout allows).
    ///
    /// # Errors
    /// Transport errors, broken chunked framing.
    pub fn next_line(
        &mut self,
        timeout: Option<Duration>,
    ) -> io::Result<Option<Zeroizing<Vec<u8>>>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            while let Some(pos) = self.lines.iter().position(|&b| b == b'\n') {
                let mut line = Zeroizing::new(Vec::with_capacity(pos));
                line.extend_from_slice(self.lines[..pos].trim_ascii());
                self.lines.drain(..=pos);
                if !line.is_empty() {
                    return Ok(Some(line));
                }
            }
            let previous = self.stream.read_timeout()?;
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                self.stream.set_read_timeout(Some(left))?;
            }
            let more = match self.framing {
                Framing::Chunked => self.read_chunk(),
                Framing::UntilClose | Framing::Idle => self.read_available(),
            };
            if deadline.is_some() {
                self.stream.set_read_timeout(previous)?;
            }
            match more {
                Ok(Some(bytes)) => extend(&mut self.lines, &bytes),
                Ok(None) => return Ok(None),
                Err(e)
                    if deadline.is_some()
                        && matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits up to `timeout` for the peer to close the connection, keeping
    /// anything it sends first (see [`Connection::pending`]). `true` if it
    /// closed (EOF or reset), `false` if it was still open at the end.
    ///
    /// # Errors
    /// The socket's timeout cannot be set.
    pub fn closed_within(&mut self, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.fill() {
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(false);
                }
                Err(_) => return Ok(true),
            }
        }
    }

    /// Bytes received but not yet consumed by a response.
    pub fn pending(&self) -> &[u8] {
        &self.buffer
    }

    /// Removes the first `n` buffered bytes.
    fn consume(&mut self, n: usize) {
        let mut rest = Zeroizing::new(Vec::with_capacity(self.buffer.len() - n));
        rest.extend_from_slice(&self.buffer[n..]);
        self.buffer = rest;
    }

    /// Reads more bytes into the buffer; 0 at EOF.
    fn fill(&mut self) -> io::Result<usize> {
        let mut scratch = Zeroizing::new([0u8; 16 * 1024]);
        loop {
            match self.stream.read(&mut scratch[..]) {
                Ok(n) => {
                    extend(&mut self.buffer, &scratch[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The buffered bytes, or what one read brings; `None` at EOF.
    fn read_available(&mut self) -> io::Result<Option<Zeroizing<Vec<u8>>>> {
        if self.buffer.is_empty() && self.fill()? == 0 {
            return Ok(None);
        }
        Ok(Some(std::mem::take(&mut self.buffer)))
    }

    /// One chunk of a chunked body; `None` for the last (empty) chunk.
    fn read_chunk(&mut self) -> io::Result<Option<Zeroizing<Vec<u8>>>> {
        let line_end = loop {
            if let Some(pos) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                break pos;
            }
            if self.buffer.len() > 1024 {
                return Err(invalid("bad chunk size"));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in a chunked body",
                ));
            }
        };
        let size_text = String::from_utf8_lossy(&self.buffer[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| invalid("bad chunk size"))?;
        if size > MAX_BODY {
            return Err(invalid("bad chunk size"));
        }
        while self.buffer.len() < line_end + 2 + size + 2 {
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in a chunk",
                ));
            }
        }
        let mut chunk = Zeroizing::new(Vec::with_capacity(size));
        chunk.extend_from_slice(&self.buffer[line_end + 2..line_end + 2 + size]);
        self.consume(line_end + 2 + size + 2);
        if size == 0 {
            self.framing = Framing::Idle;
            return Ok(None);
        }
        Ok(Some(chunk))
    }
}

/// The first value of header `name` in `headers` (names in lower case).
fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Appends `data`, growing into a new zeroizing allocation.
fn extend(buffer: &mut Zeroizing<Vec<u8>>, data: &[u8]) {
    let needed = buffer.len() + data.len();
    if needed > buffer.capacity() {
        let mut grown = Zeroizing::new(Vec::with_capacity(needed.max(buffer.capacity() * 2)));
        grown.extend_from_slice(buffer);
        *buffer = grown;
    }
    buffer.extend_from_slice(data);
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::os::unix::net::UnixStream;

    use super::*;

    fn answering(bytes: &'static [u8]) -> Connection {
        let (ours, mut theirs) = UnixStream::pair().expect("pair");
        std::thread::spawn(move || {
            let _ = theirs.write_all(bytes);
        });
        Connection::from_stream(ours)
    }

    #[test]
    fn content_length_and_chunked_bodies_are_read() {
        let mut c = answering(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi\
              HTTP/1.1 423 Locked\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n",
        );
        let r = c.read_response().expect("first");
        assert_eq!((r.status, &r.body[..]), (200, &b"hi"[..]));
        let r = c.read_response().expect("second");
        assert_eq!((r.status, &r.body[..]), (423, &b"abcde"[..]));
        assert!(c.read_response().is_err(), "nothing more");
    }

    #[test]
    fn stream_lines_come_one_by_one() {
        let mut c = answering(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
              transfer-encoding: chunked\r\n\r\n6\r\n{\"a\":1\r\n5\r\n}\n\n{}\r\n2\r\n\n\n\r\n0\r\n\r\n",
        );
        let head = c.read_head().expect("head");
        assert_eq!(head.status, 200);
        let line = c.next_line(None).expect("line").expect("first");
        assert_eq!(&line[..], b"{\"a\":1}");
        let line = c.next_line(None).expect("line").expect("second");
        assert_eq!(&line[..], b"{}");
        assert!(c.next_line(None).expect("end").is_none());
    }

    #[test]
    fn garbage_is_refused() {
        let mut c = answering(b"SSH-2.0-OpenSSH\r\n\r\n");
        assert_eq!(
            c.read_response().expect_err("not http").kind(),
            io::ErrorKind::InvalidData
        );
    }
}
