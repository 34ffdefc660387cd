//! Test fixture for `keyward serve`: a keystore made with the CLI, a daemon
//! on a private socket, and a test client over keyward-api's HTTP/1.1
//! client.
//!
//! ```ignore
//! use keyward_tests::daemon::{Daemon, code};
//! use serde_json::json;
//!
//! let daemon = Daemon::start();
//! daemon.unlock();
//! let (status, body) = daemon.request("POST", "/v1/keys", Some(&json!({"name": "notes"})), None);
//! assert_eq!(status, 200, "{body}");
//! let (status, body) = daemon.request("POST", "/v1/encrypt", Some(&json!({"key": "k"})), None);
//! assert_eq!((status, code(&body)), (400, "bad-request"));
//! ```
//!
//! The daemon runs the `keyward` binary next to the test executable
//! (`target/<profile>/keyward`): build it first with `cargo build -p
//! keyward`. A binary older than the sources is refused rather than tested.
//! The fixture kills the daemon (SIGKILL) when dropped; tests that check a
//! clean exit send SIGTERM themselves and wait with [`Daemon::wait`].
//!
//! Everything here panics on unexpected failure, with what it was doing:
//! it is test code.

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use keyward_api::http;
use serde_json::{Value, json};

pub use rustix::process::Signal;

/// The passphrase every fixture keystore gets.
pub const PASSPHRASE: &str = "correct horse battery staple";

/// Small Argon2 parameters so a passphrase unlock takes milliseconds. Never
/// use such values for a real keystore.
pub const FAST_ARGON2: [&str; 6] = [
    "--argon2-m-kib",
    "8192",
    "--argon2-t",
    "1",
    "--argon2-p",
    "1",
];

/// How long we wait for the daemon to say it is ready, or to exit.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Read timeout of the client's socket: a daemon that never answers fails
/// the test instead of hanging it.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The `keyward` binary next to the test executable
/// (`target/<profile>/keyward`; tests run from `target/<profile>/deps/`).
/// `cargo test` does not rebuild another package's binary, so a binary
/// older than the sources it is built from is refused rather than tested.
/// `KEYWARD_TEST_BIN` names another binary instead, unchecked (the
/// benchmark runs a release build this way).
///
/// # Panics
/// If the binary is missing or stale.
pub fn keyward_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("KEYWARD_TEST_BIN").filter(|b| !b.is_empty()) {
            return std::fs::canonicalize(&bin).unwrap_or_else(|e| {
                panic!("KEYWARD_TEST_BIN={}: {e}", PathBuf::from(&bin).display())
            });
        }
        let exe = std::env::current_exe().expect("the test knows its own path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("tests run from target/<profile>/deps");
        let bin = profile_dir.join("keyward");
        let built = std::fs::metadata(&bin)
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| {
                panic!(
                    "{} is missing: build it with `cargo build -p keyward`",
                    bin.display()
                )
            });
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ is inside the workspace");
        for dir in ["cli/src", "kms/src", "backends/src"] {
            if let Some(newer) = newer_source(&workspace.join(dir), built) {
                panic!(
                    "{} is older than {}: rebuild it with `cargo build -p keyward`",
                    bin.display(),
                    newer.display()
                );
            }
        }
        bin
    })
    .clone()
}

/// A `.rs` file under `dir` modified after `than`, if any.
fn newer_source(dir: &Path, than: SystemTime) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = newer_source(&path, than) {
                return Some(found);
            }
        } else if path.extension().is_some_and(|e| e == "rs")
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|m| m > than)
        {
            return Some(path);
        }
    }
    None
}

/// Standard base64 with padding, as the API encodes byte strings.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes an API byte string.
///
/// # Panics
/// If `value` is not a standard base64 string.
pub fn unb64(value: &Value) -> Vec<u8> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"));
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("not base64 ({e}): {text}"))
}

/// The `error.code` of an API error body (`""` when there is none).
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// `answer` (a status and a body, as [`Daemon::request`] gives them),
/// asserting that it is a `200`. Returns the body.
///
/// # Panics
/// If the status is another.
#[track_caller]
pub fn assert_ok(answer: (u16, Value)) -> Value {
    let (status, body) = answer;
    assert_eq!(status, 200, "{body}");
    body
}

/// The string `field` of every object in the JSON array `list`.
///
/// # Panics
/// If `list` is not an array or an object lacks the string.
pub fn field_of_each<'a>(list: &'a Value, field: &str) -> Vec<&'a str> {
    list.as_array()
        .expect("array")
        .iter()
        .map(|item| item[field].as_str().expect(field))
        .collect()
}

/// `answer` (a status and a body, as [`Daemon::request`] gives them),
/// asserting that it refused the request with `want`: the status and the
/// stable error code. Returns the error body.
///
/// # Panics
/// If the answer is another.
#[track_caller]
pub fn assert_refused(answer: (u16, Value), want: (u16, &str)) -> Value {
    let (status, reply) = answer;
    assert_eq!((status, code(&reply)), want, "{reply}");
    reply
}

/// A keystore made with the CLI in a private temporary directory: the
/// recovery key and [`PASSPHRASE`] (fast Argon2) are enrolled.
#[derive(Debug)]
pub struct Store {
    dir: tempfile::TempDir,
    path: PathBuf,
    recovery_key: PathBuf,
}

impl Store {
    /// A new keystore with the recovery key and [`PASSPHRASE`].
    ///
    /// # Panics
    /// If the CLI fails.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keystore.db");
        let recovery_key = dir.path().join("recovery.key");
        let store = Self {
            dir,
            path,
            recovery_key,
        };
        store.keyward_ok(
            &[
                "init",
                "--recovery-key-out",
                store.recovery_key.to_str().expect("utf-8 path"),
            ],
            &[],
        );
        let mut args = vec!["enroll", "passphrase"];
        args.extend(FAST_ARGON2);
        store.keyward_ok(
            &args,
            &[
                ("KEYWARD_RECOVERY_KEY", &store.recovery_key_text()),
                ("KEYWARD_PASSPHRASE", PASSPHRASE),
            ],
        );
        store
    }

    /// The keystore file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The private temporary directory (deleted with the fixture).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The recovery key `init` wrote.
    ///
    /// # Panics
    /// If the file cannot be read.
    pub fn recovery_key_text(&self) -> String {
        std::fs::read_to_string(&self.recovery_key)
            .expect("recovery key file")
            .trim()
            .to_owned()
    }

    /// `keyward ARGS --store PATH` with a clean environment: no KEYWARD_*
    /// variables or RUST_LOG from the caller, HOME, XDG_DATA_HOME and
    /// XDG_RUNTIME_DIR inside the temporary directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = clean_command(keyward_bin());
        cmd.env("HOME", self.dir.path())
            .env("XDG_DATA_HOME", self.dir.path().join("xdg"))
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"))
            .current_dir(self.dir.path())
            .args(args)
            .arg("--store")
            .arg(&self.path);
        cmd
    }

    /// Runs `keyward ARGS` to completion with `env` added and no stdin.
    ///
    /// # Panics
    /// If it cannot be started.
    pub fn keyward(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .output()
            .expect("run the keyward binary")
    }

    /// [`Store::keyward`], asserting success.
    ///
    /// # Panics
    /// If the command fails.
    pub fn keyward_ok(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        assert_success(self.keyward(args, env), &format!("keyward {args:?}"))
    }
}

/// The variables through which a caller's keyward settings would reach a
/// process the tests start: none of them is inherited.
const CALLER_SETTINGS: [&str; 8] = [
    "KEYWARD_STORE",
    "KEYWARD_SOCKET",
    "KEYWARD_PASSPHRASE",
    "KEYWARD_RECOVERY_KEY",
    "KEYWARD_PIN",
    "KEYWARD_CLIENT_TOKEN",
    "KEYWARD_CLIENT_TOKEN_FILE",
    "RUST_LOG",
];

/// `program`, without the caller's keyward settings in its environment.
pub fn clean_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for var in CALLER_SETTINGS {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `cmd` to completion with its output captured, feeding `stdin` from
/// a thread so that large inputs cannot deadlock against a full stdout
/// pipe.
///
/// # Panics
/// If it cannot be started.
pub fn output_with_stdin(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keyward");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // The binary may exit without reading everything (an error before
        // reading): a broken pipe here is expected then.
        let _ = pipe.write_all(&input);
    });
    let output = child.wait_with_output().expect("wait for keyward");
    writer.join().expect("stdin writer thread");
    output
}

/// `out`, asserting that `what`, which made it, succeeded.
///
/// # Panics
/// If it did not: with its status, stdout and stderr.
#[track_caller]
pub fn assert_success(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

/// A running `keyward serve` on `<store dir>/s/keyward.sock`.
#[derive(Debug)]
pub struct Daemon {
    /// `None` only after [`Daemon::into_store`].
    store: Option<Store>,
    socket: PathBuf,
    child: Option<Child>,
    pid: u32,
    stderr: Arc<Mutex<String>>,
    exited: Option<ExitStatus>,
}

impl Daemon {
    /// A daemon with default options on a new [`Store`].
    ///
    /// # Panics
    /// If it does not start.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A daemon on a new [`Store`] with extra `serve` arguments
    /// (`--idle-timeout 2s`, ...).
    ///
    /// # Panics
    /// If it does not start.
    pub fn start_with(args: &[&str]) -> Self {
        Self::spawn(Store::new(), args)
    }

    /// A daemon on an existing store (a restart); panics with its stderr
    /// if it does not become ready.
    ///
    /// # Panics
    /// If it does not start.
    pub fn spawn(store: Store, args: &[&str]) -> Self {
        match Self::try_spawn(store, args) {
            Ok(daemon) => daemon,
            Err((status, stderr)) => panic!("keyward serve exited ({status}):\n{stderr}"),
        }
    }

    /// Starts `keyward serve` on `store` with extra `args` and waits for its
    /// ready line. If it exits first: its exit status and stderr.
    ///
    /// # Panics
    /// If it can neither be started nor waited for.
    pub fn try_spawn(store: Store, args: &[&str]) -> Result<Self, (ExitStatus, String)> {
        let socket = store.dir().join("s").join("keyward.sock");
        let mut cmd = store.command(&["serve"]);
        cmd.arg("--socket")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn keyward serve");
        let pid = child.id();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let pipe = child.stderr.take().expect("stderr is piped");
        let collected = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                {
                    let mut all = collected.lock().unwrap_or_else(PoisonError::into_inner);
                    all.push_str(&line);
                    all.push('\n');
                }
                if line.starts_with("keyward: serving ")
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ready_rx.recv_timeout(Duration::from_millis(20)).is_ok() {
                return Ok(Self {
                    store: Some(store),
                    socket,
                    child: Some(child),
                    pid,
                    stderr,
                    exited: None,
                });
            }
            if let Some(status) = child.try_wait().expect("wait for keyward serve") {
                // Let the reader thread drain what is left of stderr.
                std::thread::sleep(Duration::from_millis(50));
                let text = stderr
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                return Err((status, text));
            }
            assert!(
                Instant::now() < deadline,
                "keyward serve did not become ready in {START_TIMEOUT:?}:\n{}",
                stderr.lock().unwrap_or_else(PoisonError::into_inner)
            );
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The keystore.
    pub fn store(&self) -> &Store {
        self.store.as_ref().expect("the daemon still has its store")
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A new keep-alive connection.
    ///
    /// # Panics
    /// If the socket refuses the connection.
    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.socket.display()))
    }

    /// One request on a new connection: the status and the JSON body
    /// (`Value::Null` for an empty or non-JSON body).
    ///
    /// # Panics
    /// If the exchange fails at the transport level.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        self.client().request(method, path, body, token)
    }

    /// Unlocks with [`PASSPHRASE`], asserting success.
    ///
    /// # Panics
    /// If the unlock fails.
    pub fn unlock(&self) -> Value {
        let (status, body) = self.request(
            "POST",
            "/v1/unlock",
            Some(&json!({"with": "passphrase", "secrets": {"passphrase": PASSPHRASE}})),
            None,
        );
        assert_eq!(status, 200, "unlock failed: {body}");
        body
    }

    /// Creates an encrypt key with default options (owner), asserting
    /// success; returns its KeyInfo.
    ///
    /// # Panics
    /// If the creation fails.
    pub fn create_key(&self, name: &str) -> Value {
        let (status, body) = self.request("POST", "/v1/keys", Some(&json!({"name": name})), None);
        assert_eq!(status, 200, "create key {name}: {body}");
        body
    }

    /// Adds a client (owner) and returns its token.
    ///
    /// # Panics
    /// If the daemon refuses.
    pub fn add_client(&self, name: &str, allow: &[&str], keys: &[&str]) -> String {
        let (status, body) = self.request(
            "POST",
            "/v1/clients",
            Some(&json!({"name": name, "allow": allow, "keys": keys})),
            None,
        );
        assert_eq!(status, 200, "add client {name}: {body}");
        body["token"].as_str().expect("token").to_owned()
    }

    /// `GET /v1/status`, asserting 200.
    ///
    /// # Panics
    /// If the request fails.
    pub fn status(&self) -> Value {
        let (status, body) = self.request("GET", "/v1/status", None, None);
        assert_eq!(status, 200, "status: {body}");
        body
    }

    /// Sends `signal` to the daemon.
    ///
    /// # Panics
    /// If the signal cannot be sent.
    pub fn signal(&self, signal: Signal) {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.pid).expect("pid fits i32"))
            .expect("pid is positive");
        rustix::process::kill_process(pid, signal).expect("send a signal to the daemon");
    }

    /// Waits up to `timeout` for the daemon to exit; its exit status, or
    /// `None` if it is still running.
    ///
    /// # Panics
    /// If waiting fails.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited {
            return Some(status);
        }
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait for keyward serve") {
                self.exited = Some(status);
                // Let the reader thread collect the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the daemon with SIGKILL (as a crash would) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take()
            && self.exited.is_none()
        {
            let _ = child.kill();
            if let Ok(status) = child.wait() {
                self.exited = Some(status);
            }
        }
    }

    /// Kills the daemon (SIGKILL) and keeps its store, to start another
    /// daemon on it.
    pub fn into_store(mut self) -> Store {
        self.kill();
        self.store.take().expect("the daemon still has its store")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON (`Value::Null` when empty or not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl From<http::Response> for Response {
    fn from(r: http::Response) -> Self {
        Self {
            status: r.status,
            headers: r.headers,
            body: r.body.to_vec(),
        }
    }
}

/// A keep-alive connection for tests, over keyward-api's HTTP/1.1 client
/// (the one in the tree); raw bytes may be written (malformed requests),
/// but answers are always read by keyward-api.
#[derive(Debug)]
pub struct Client {
    connection: http::Connection,
}

impl Client {
    /// Connects to `socket`.
    ///
    /// # Errors
    /// The connection is refused.
    pub fn connect(socket: &Path) -> io::Result<Self> {
        let connection = http::Connection::connect(socket)?;
        connection.stream().set_read_timeout(Some(READ_TIMEOUT))?;
        Ok(Self { connection })
    }

    /// The underlying stream (to shut down one direction, change timeouts).
    pub fn stream(&self) -> &UnixStream {
        self.connection.stream()
    }

    /// Sends one request and reads its response: the status and the JSON
    /// body (`Value::Null` when empty or not JSON).
    ///
    /// # Panics
    /// If the exchange fails at the transport level.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let body = body.map(|b| serde_json::to_vec(b).expect("JSON serializes"));
        let response = self
            .connection
            .exchange(method, path, body.as_deref(), token)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let response = Response::from(response);
        (response.status, response.json())
    }

    /// keyward-api's connection underneath: to write a request without
    /// reading its answer, or to see a transport error as a value.
    pub fn connection(&mut self) -> &mut http::Connection {
        &mut self.connection
    }

    /// Writes raw bytes (for malformed requests).
    ///
    /// # Errors
    /// Transport errors.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.connection.send_raw(bytes)
    }

    /// Reads one response.
    ///
    /// # Errors
    /// Transport errors; `UnexpectedEof` if the daemon closed the
    /// connection first; `InvalidData` for a response we cannot parse.
    pub fn read_response(&mut self) -> io::Result<Response> {
        self.connection.read_response().map(Response::from)
    }

    /// Reads the head of a streaming response (`GET /v1/events`) and
    /// returns it with an empty body; read the lines with
    /// [`Client::next_line`].
    ///
    /// # Errors
    /// As [`Client::read_response`].
    pub fn open_stream(&mut self, path: &str, token: Option<&str>) -> io::Result<Response> {
        self.connection.send("GET", path, None, token)?;
        self.connection.read_head().map(Response::from)
    }

    /// The next NDJSON line of a stream opened with [`Client::open_stream`],
    /// waiting up to `timeout`; `None` on timeout or at the end of the
    /// stream.
    ///
    /// # Panics
    /// If a line is not JSON or the chunked framing is broken.
    pub fn next_line(&mut self, timeout: Duration) -> Option<Value> {
        let line = self
            .connection
            .next_line(Some(timeout))
            .unwrap_or_else(|e| panic!("reading the event stream: {e}"))?;
        Some(serde_json::from_slice(&line).unwrap_or_else(|e| {
            panic!("not a JSON line ({e}): {}", String::from_utf8_lossy(&line))
        }))
    }

    /// Waits up to `timeout` for the daemon to close the connection,
    /// discarding anything it sends first (an error response). `true` if
    /// it closed (EOF or reset), `false` if it was still open at the end.
    ///
    /// # Panics
    /// If the socket's timeout cannot be set.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.connection
            .closed_within(timeout)
            .expect("set a read timeout")
    }

    /// Bytes received but not yet consumed by a response (what the daemon
    /// sent before closing, after [`Client::closed_within`]).
    pub fn pending(&self) -> &[u8] {
        self.connection.pending()
    }
}
