//! A minimal HTTP/1.1 client: one `POST` with a JSON body per connection,
//! and a response with a `Content-Length` body (what `keyward serve`
//! sends, docs/API.md). Chunked responses are refused, not parsed.
//!
//! Requests carry the client token and responses carry data keys, so
//! both live only in [`Zeroizing`] buffers of a fixed size: we never grow
//! a buffer (a reallocation would leave a copy behind on the heap) and we
//! use no `BufReader` (its buffer is not wiped).

use std::io::{self, Read, Write};

use zeroize::Zeroizing;

/// The largest response we accept, headers included. The datakey answers
/// are a few hundred bytes; error answers a few lines.
const MAX_RESPONSE: usize = 64 * 1024;

/// A response: its status and its body.
pub(crate) struct Response {
    /// The HTTP status code.
    pub(crate) status: u16,
    /// The whole response as read; `body` indexes into it.
    raw: Zeroizing<Vec<u8>>,
    /// Where the body is in `raw`.
    body: std::ops::Range<usize>,
}

impl Response {
    /// The body (JSON from keyward).
    pub(crate) fn body(&self) -> &[u8] {
        &self.raw[self.body.clone()]
    }
}

/// Sends `POST path` with `body` (JSON) and `Authorization: Bearer
/// <token>` on `stream`, and reads the response.
///
/// Returns an `InvalidData` error for an answer that is not HTTP/1.1 with a
/// `Content-Length` body that fits in [`MAX_RESPONSE`].
pub(crate) fn post<S: Read + Write>(
    stream: &mut S,
    path: &str,
    token: &str,
    body: &[u8],
) -> io::Result<Response> {
    let length = body.len().to_string();
    let parts: [&[u8]; 8] = [
        b"POST ",
        path.as_bytes(),
        b" HTTP/1.1\r\nHost: keyward\r\nAuthorization: Bearer ",
        token.as_bytes(),
        b"\r\nContent-Type: application/json\r\nContent-Length: ",
        length.as_bytes(),
        b"\r\nConnection: close\r\n\r\n",
        body,
    ];
    // One exact allocation: the token is copied once and wiped on drop.
    let mut request = Zeroizing::new(Vec::with_capacity(parts.iter().map(|p| p.len()).sum()));
    for part in parts {
        request.extend_from_slice(part);
    }
    stream.write_all(&request)?;
    stream.flush()?;
    read_response(stream)
}

/// Reads one response with a `Content-Length` body.
fn read_response<R: Read>(stream: &mut R) -> io::Result<Response> {
    let mut raw = Zeroizing::new(vec![0_u8; MAX_RESPONSE]);
    let mut filled = 0;
    let (status, body) = loop {
        if filled == raw.len() {
            return Err(invalid("the response is larger than 64 KiB"));
        }
        let n = stream.read(&mut raw[filled..])?;
        if n == 0 {
            return Err(invalid(
                "the connection closed before a complete response arrived",
            ));
        }
        filled += n;
        if let Some((status, body)) = parse_head(&raw[..filled])? {
            break (status, body);
        }
    };
    if body.end > raw.len() {
        return Err(invalid("the response is larger than 64 KiB"));
    }
    while filled < body.end {
        let n = stream.read(&mut raw[filled..body.end])?;
        if n == 0 {
            return Err(invalid("the connection closed in the middle of the body"));
        }
        filled += n;
    }
    Ok(Response { status, raw, body })
}

/// Parses the status line and headers once they are complete: the status
/// and where the body is. `None` while the headers are still incomplete.
fn parse_head(data: &[u8]) -> io::Result<Option<(u16, std::ops::Range<usize>)>> {
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&data[..end])
        .map_err(|_| invalid("the response headers are not text"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| invalid("the answer is not HTTP/1.1"))?;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(invalid("a malformed response header"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let parsed = value
                .parse::<usize>()
                .map_err(|_| invalid("a malformed Content-Length"))?;
            if length.is_some_and(|l| l != parsed) {
                return Err(invalid("conflicting Content-Length headers"));
            }
            length = Some(parsed);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(invalid(
                "a Transfer-Encoding body, which this client does not read",
            ));
        }
    }
    let length = length.ok_or_else(|| invalid("a response without Content-Length"))?;
    let start = end + 4;
    let stop = start
        .checked_add(length)
        .ok_or_else(|| invalid("a malformed Content-Length"))?;
    Ok(Some((status, start..stop)))
}

/// An `InvalidData` error: the peer does not speak the protocol.
fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that records what is written and answers from a script,
    /// `chunk` bytes per read.
    struct Scripted {
        written: Vec<u8>,
        answer: Vec<u8>,
        at: usize,
        chunk: usize,
    }

    impl Scripted {
        fn new(answer: &[u8], chunk: usize) -> Self {
            Self {
                written: Vec::new(),
                answer: answer.to_vec(),
                at: 0,
                chunk,
            }
        }
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.chunk).min(self.answer.len() - self.at);
            buf[..n].copy_from_slice(&self.answer[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn request_and_response_byte_by_byte() {
        let answer = b"HTTP/1.1 423 Locked\r\ncontent-length: 2\r\nX-A: b\r\n\r\n{}";
        let mut stream = Scripted::new(answer, 1);
        let response = post(&mut stream, "/v1/datakey/unwrap", "kwt_abc", b"{\"a\":1}")
            .expect("a valid response");
        assert_eq!(response.status, 423);
        assert_eq!(response.body(), b"{}");
        assert_eq!(
            stream.written,
            b"POST /v1/datakey/unwrap HTTP/1.1\r\nHost: keyward\r\nAuthorization: Bearer \
              kwt_abc\r\nContent-Type: application/json\r\nContent-Length: 7\r\nConnection: \
              close\r\n\r\n{\"a\":1}"
        );
    }

    #[test]
    fn refuses_what_it_does_not_read() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n",
            b"HTTP/1.1 200",
        ] {
            let mut stream = Scripted::new(answer, 7);
            let err = post(&mut stream, "/", "kwt_x", b"{}").err();
            assert_eq!(
                err.map(|e| e.kind()),
                Some(io::ErrorKind::InvalidData),
                "{}",
                String::from_utf8_lossy(answer)
            );
        }
    }
}
