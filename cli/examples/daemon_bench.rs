//! `daemon_bench`: a load generator for a running, unlocked `keyward serve`.
//!
//! `--clients N` threads each keep one keep-alive connection and send the
//! same small `POST /v1/decrypt` (or, with `--batch K`, a
//! `POST /v1/decrypt/batch` of K copies) back to back, for `--seconds S` or
//! `--requests N` per client. It prints one line of JSON (throughput in
//! requests and items per second; p50, p99 and max latency per request in
//! microseconds) and then the same as a sentence.
//!
//! Requests carry no `Authorization` header: the bench runs as the daemon's
//! owner (same uid). Every response is checked (status 200, a plaintext of
//! `--size` bytes per item); any failure is counted, and a run with
//! failures exits 1. scripts/bench-daemon.sh prepares the daemon and the
//! ciphertext and runs this.
//!
//! ```sh
//! cargo run --release -p keyward --example daemon_bench -- \
//!     --socket /tmp/kw/keyward.sock --ciphertext-file ct.b64 --size 64 \
//!     --clients 16 --seconds 5 --batch 100
//! ```
//!
//! What it is not: a correctness test (the daemon's tests are), or a
//! measure of anything but this machine right now: read numbers as ratios
//! within one run (docs/DESIGN.md, performance targets).

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keyward_api::client::encode;
use keyward_api::types::{Batch, DecryptRequest, DeviceSignRequest};
use keyward_api::{Bytes, http, routes};
use serde_json::{Value, json};

/// Requests each client sends before the measurement starts (connection
/// set-up, the daemon's caches and the CPU's).
const WARMUP: u32 = 20;
/// Read/write timeout on each connection: a daemon that stops answering
/// ends the run with an error instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The most items `/v1/decrypt/batch` takes (docs/API.md).
const MAX_BATCH: usize = 1000;

const USAGE: &str = "\
usage: daemon_bench --ciphertext-file FILE [--socket PATH] [--clients N]
                    [--seconds S | --requests N] [--batch K] [--size BYTES]
                    [--context BASE64]

  --ciphertext-file FILE  the ciphertext to decrypt, base64 as /v1/encrypt returns it
  --socket PATH           the daemon's socket (default: KEYWARD_SOCKET, else
                          $XDG_RUNTIME_DIR/keyward/keyward.sock)
  --clients N             concurrent clients, one connection each (default 1)
  --seconds S             how long to measure (default 5)
  --requests N            requests per client instead of a duration
  --batch K               send /v1/decrypt/batch with K items (1..1000) instead of /v1/decrypt
  --device-sign ID        sign --size bytes with device protector ID (/v1/device/sign) instead
  --size BYTES            the plaintext size every item must decrypt to (default 64)
  --context BASE64        the context the ciphertext was made with (default empty)
";

/// Why the bench could not run or finish.
#[derive(Debug)]
enum Error {
    /// A bad command line.
    Usage(String),
    /// Reading the ciphertext file or talking to the daemon failed.
    Io {
        /// What we were doing.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The daemon answered, but not what a decrypt should get.
    Answer(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(text) => write!(f, "{text}\n\n{USAGE}"),
            Self::Io { what, source } => write!(f, "cannot {what}: {source}"),
            Self::Answer(text) => f.write_str(text),
        }
    }
}

/// What to measure.
#[derive(Debug)]
struct Options {
    socket: PathBuf,
    clients: usize,
    /// Stop after this long, or
    seconds: f64,
    /// after this many requests per client.
    requests: Option<u64>,
    /// `None`: `/v1/decrypt`; `Some(k)`: `/v1/decrypt/batch` with k items.
    batch: Option<usize>,
    size: usize,
    ciphertext: String,
    context: String,
    /// Sign with this device protector (`/v1/device/sign`) instead of
    /// decrypting.
    device_sign: Option<u32>,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Self>, Error> {
        let mut socket = std::env::var_os("KEYWARD_SOCKET")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let mut clients = 1;
        let mut seconds = 5.0;
        let mut requests = None;
        let mut batch = None;
        let mut size = 64;
        let mut ciphertext_file = None;
        let mut context = String::new();
        let mut device_sign = None;
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                return Ok(None);
            }
            let mut value = || {
                args.next()
                    .ok_or_else(|| Error::Usage(format!("{arg} needs a value")))
            };
            match arg.as_str() {
                "--socket" => socket = Some(PathBuf::from(value()?)),
                "--clients" => clients = number(&arg, &value()?, 1, 512)?,
                "--seconds" => {
                    let text = value()?;
                    seconds = text
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
                        .ok_or_else(|| {
                            Error::Usage(format!("--seconds {text}: give 0 < S <= 3600"))
                        })?;
                }
                "--requests" => requests = Some(number(&arg, &value()?, 1, 100_000_000)? as u64),
                "--batch" => batch = Some(number(&arg, &value()?, 1, MAX_BATCH)?),
                "--size" => size = number(&arg, &value()?, 0, 1 << 20)?,
                "--ciphertext-file" => ciphertext_file = Some(PathBuf::from(value()?)),
                "--context" => context = value()?,
                "--device-sign" => {
                    let id = number(&arg, &value()?, 1, u32::MAX as usize)?;
                    device_sign =
                        Some(u32::try_from(id).map_err(|_| {
                            Error::Usage("--device-sign takes a protector id".into())
                        })?);
                }
                other => return Err(Error::Usage(format!("unknown argument {other}"))),
            }
        }
        let socket = socket.unwrap_or_else(keyward_api::socket::default_path);
        let ciphertext = if device_sign.is_some() {
            if batch.is_some() {
                return Err(Error::Usage("--device-sign has no batch form".into()));
            }
            String::new()
        } else {
            read_ciphertext(ciphertext_file, &context)?
        };
        Ok(Some(Self {
            socket,
            clients,
            seconds,
            requests,
            batch,
            size,
            ciphertext,
            context,
            device_sign,
        }))
    }

    /// `POST /v1/decrypt` or `/v1/decrypt/batch`, ready to send as is.
    fn request(&self) -> Result<Request, Error> {
        let bad = |what: &str| Error::Usage(format!("{what} is not standard base64"));
        let item = || -> Result<DecryptRequest, Error> {
            Ok(DecryptRequest {
                ciphertext: Bytes::new(
                    STANDARD
                        .decode(&self.ciphertext)
                        .map_err(|_| bad("the ciphertext"))?,
                ),
                context: Bytes::new(
                    STANDARD
                        .decode(&self.context)
                        .map_err(|_| bad("--context"))?,
                ),
            })
        };
        let (path, body) = match (self.device_sign, self.batch) {
            (Some(id), _) => (
                routes::DEVICE_SIGN,
                encode(&DeviceSignRequest {
                    protector: id,
                    message: Bytes::new(vec![0x5a; self.size]),
                }),
            ),
            (None, None) => (routes::DECRYPT, encode(&item()?)),
            (None, Some(k)) => (
                routes::DECRYPT_BATCH,
                encode(&Batch {
                    items: (0..k).map(|_| item()).collect::<Result<Vec<_>, _>>()?,
                }),
            ),
        };
        let body = body.map_err(|e| Error::Answer(e.to_string()))?;
        Ok(Request {
            path,
            body: body.to_vec(),
        })
    }

    /// Items per request.
    fn items(&self) -> usize {
        self.batch.unwrap_or(1)
    }
}

/// The base64 ciphertext in `file` (`--ciphertext-file`, required when
/// decrypting), checked along with the base64 `context`.
fn read_ciphertext(file: Option<PathBuf>, context: &str) -> Result<String, Error> {
    let path = file.ok_or_else(|| Error::Usage("--ciphertext-file is required".into()))?;
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        what: format!("read {}", path.display()),
        source,
    })?;
    let ciphertext = text.trim().to_owned();
    if STANDARD.decode(&ciphertext).is_err() {
        return Err(Error::Usage(format!(
            "{} does not hold base64 (the `ciphertext` of a /v1/encrypt answer)",
            path.display()
        )));
    }
    if STANDARD.decode(context).is_err() {
        return Err(Error::Usage("--context is not base64".into()));
    }
    Ok(ciphertext)
}

/// `text` as a number in `min..=max`.
fn number(option: &str, text: &str, min: usize, max: usize) -> Result<usize, Error> {
    text.parse::<usize>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            Error::Usage(format!(
                "{option} {text}: give a number from {min} to {max}"
            ))
        })
}

/// One request, sent again and again.
struct Request {
    path: &'static str,
    body: Vec<u8>,
}

/// One client's connection (keyward-api's HTTP/1.1 client).
struct Connection(http::Connection);

/// One response, and whether the daemon closes the connection after it.
struct Answer {
    response: http::Response,
    close: bool,
}

impl Connection {
    fn open(options: &Options) -> Result<Self, Error> {
        let io_error = |source| Error::Io {
            what: format!("connect to {}", options.socket.display()),
            source,
        };
        let connection = http::Connection::connect(&options.socket).map_err(io_error)?;
        let stream = connection.stream();
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(io_error)?;
        Ok(Self(connection))
    }

    /// Sends `request` and reads the whole response.
    fn exchange(&mut self, request: &Request) -> io::Result<Answer> {
        let response = self
            .0
            .exchange("POST", request.path, Some(&request.body), None)?;
        let close = response
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        Ok(Answer { response, close })
    }
}

/// Checks a whole answer the slow way (JSON): `items` plaintexts of `size`
/// bytes. Run on each client's first answer.
fn check_fully(status: u16, body: &[u8], options: &Options) -> Result<(), Error> {
    let text = String::from_utf8_lossy(body);
    if status != 200 {
        return Err(Error::Answer(format!(
            "the daemon answered {status}: {text}"
        )));
    }
    let answer: Value = serde_json::from_slice(body)
        .map_err(|e| Error::Answer(format!("the answer is not JSON ({e}): {text}")))?;
    let results: Vec<&Value> = match options.batch {
        None => vec![&answer],
        Some(_) => answer["results"]
            .as_array()
            .map(|r| r.iter().collect())
            .unwrap_or_default(),
    };
    if results.len() != options.items() {
        return Err(Error::Answer(format!(
            "expected {} results: {text}",
            options.items()
        )));
    }
    if options.device_sign.is_some() {
        return match answer["signature"].as_str().map(|s| STANDARD.decode(s)) {
            Some(Ok(sig)) if !sig.is_empty() => Ok(()),
            _ => Err(Error::Answer(format!(
                "an answer without a signature: {text}"
            ))),
        };
    }
    for result in results {
        let plaintext = result["plaintext"]
            .as_str()
            .and_then(|p| STANDARD.decode(p).ok())
            .ok_or_else(|| Error::Answer(format!("a result without a plaintext: {result}")))?;
        if plaintext.len() != options.size {
            return Err(Error::Answer(format!(
                "the plaintext is {} bytes, not --size {}",
                plaintext.len(),
                options.size
            )));
        }
    }
    Ok(())
}

/// The cheap check on every answer: status 200, as many plaintexts as
/// items and no per-item error. (Their length was checked on the first
/// answer; the bench sends the same request every time.)
fn check_quickly(status: u16, body: &[u8], items: usize) -> bool {
    let field: &[u8] = if count(body, b"\"signature\":") == 1 {
        b"\"signature\":"
    } else {
        b"\"plaintext\":"
    };
    status == 200 && count(body, field) == items && count(body, b"\"error\"") == 0
}

/// Non-overlapping occurrences of `needle` in `haystack`.
fn count(haystack: &[u8], needle: &[u8]) -> usize {
    let mut n = 0;
    let mut rest = haystack;
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        n += 1;
        rest = &rest[at + needle.len()..];
    }
    n
}

/// What one client measured.
#[derive(Debug, Default)]
struct Sample {
    /// Latency of each measured request, in nanoseconds.
    latencies: Vec<u64>,
    /// Requests whose answer failed the check.
    errors: u64,
    /// Connections re-opened after the daemon closed one.
    reconnects: u64,
}

/// One client: warm up, wait for the others, then measure.
///
/// Every client reaches the barrier, even one whose warm-up failed (it
/// reports its error afterwards): the others and `run` wait there.
fn client(options: &Options, request: &Request, start: &Barrier) -> Result<Sample, Error> {
    let warmed_up =
        Connection::open(options).and_then(|connection| warm_up(connection, options, request));
    start.wait();
    let mut connection = warmed_up?;
    let mut sample = Sample::default();
    let deadline = Instant::now() + Duration::from_secs_f64(options.seconds);
    let mut sent = 0_u64;
    loop {
        match options.requests {
            Some(n) if sent >= n => break,
            None if Instant::now() >= deadline => break,
            _ => {}
        }
        let began = Instant::now();
        let answer = connection.exchange(request).map_err(exchange_error)?;
        let elapsed = began.elapsed();
        if !check_quickly(
            answer.response.status,
            &answer.response.body,
            options.items(),
        ) {
            sample.errors += 1;
        }
        sample
            .latencies
            .push(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
        sent += 1;
        if answer.close {
            connection = Connection::open(options)?;
            sample.reconnects += 1;
        }
    }
    Ok(sample)
}

/// [`WARMUP`] requests, the first one checked in full.
fn warm_up(
    mut connection: Connection,
    options: &Options,
    request: &Request,
) -> Result<Connection, Error> {
    for i in 0..WARMUP {
        let answer = connection.exchange(request).map_err(exchange_error)?;
        if i == 0 {
            check_fully(answer.response.status, &answer.response.body, options)?;
        }
        if answer.close {
            connection = Connection::open(options)?;
        }
    }
    Ok(connection)
}

fn exchange_error(source: io::Error) -> Error {
    Error::Io {
        what: "exchange a request with the daemon".into(),
        source,
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("daemon_bench: {error}");
            ExitCode::from(if matches!(error, Error::Usage(_)) {
                2
            } else {
                1
            })
        }
    }
}

/// Runs the bench; `Ok(false)` when some answers failed their check.
fn run() -> Result<bool, Error> {
    let Some(options) = Options::parse(std::env::args().skip(1))? else {
        print!("{USAGE}");
        return Ok(true);
    };
    let options = Arc::new(options);
    let request = Arc::new(options.request()?);
    let start = Arc::new(Barrier::new(options.clients + 1));
    let workers: Vec<_> = (0..options.clients)
        .map(|_| {
            let (options, request, start) = (
                Arc::clone(&options),
                Arc::clone(&request),
                Arc::clone(&start),
            );
            thread::spawn(move || client(&options, &request, &start))
        })
        .collect();
    start.wait();
    let began = Instant::now();
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut reconnects = 0;
    for worker in workers {
        let sample = worker.join().expect("a client thread does not panic")?;
        latencies.extend(sample.latencies);
        errors += sample.errors;
        reconnects += sample.reconnects;
    }
    let elapsed = began.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let requests = latencies.len() as u64;
    let items = requests * options.items() as u64;
    let micros = |p: usize| percentile(&latencies, p) as f64 / 1000.0;
    let report = json!({
        "clients": options.clients,
        "mode": if options.batch.is_some() { "batch" } else { "single" },
        "batch": options.items(),
        "size": options.size,
        "seconds": round(elapsed, 3),
        "requests": requests,
        "items": items,
        "errors": errors,
        "reconnects": reconnects,
        "req_per_s": per_second(requests, elapsed),
        "items_per_s": per_second(items, elapsed),
        "p50_us": round(micros(50), 1),
        "p99_us": round(micros(99), 1),
        "max_us": round(micros(100), 1),
    });
    println!("{report}");
    println!(
        "{} client{}, {}: {:.0} req/s ({:.0} items/s), latency p50 {:.1} µs, p99 {:.1} µs, \
         max {:.1} µs; {requests} requests in {elapsed:.2} s, {errors} errors",
        options.clients,
        if options.clients == 1 { "" } else { "s" },
        options
            .batch
            .map_or_else(|| "single decrypt".to_owned(), |k| format!("batch of {k}")),
        requests as f64 / elapsed,
        items as f64 / elapsed,
        micros(50),
        micros(99),
        micros(100),
    );
    Ok(errors == 0)
}

/// The nearest-rank `p`th percentile (`p` in 1..=100) of `sorted` (0 when
/// empty).
fn percentile(sorted: &[u64], p: usize) -> u64 {
    let rank = (p * sorted.len()).div_ceil(100);
    rank.checked_sub(1)
        .and_then(|i| sorted.get(i))
        .copied()
        .unwrap_or(0)
}

/// `count` per second over `elapsed` seconds, rounded to a whole number.
#[expect(
    clippy::cast_sign_loss,
    reason = "a count over a duration is never negative"
)]
fn per_second(count: u64, elapsed: f64) -> u64 {
    (count as f64 / elapsed).round() as u64
}

/// `value` rounded to `digits` decimals, for the JSON line.
fn round(value: f64, digits: i32) -> f64 {
    let scale = 10_f64.powi(digits);
    (value * scale).round() / scale
}
