//! `keyward serve`, transport: bad input gets the JSON error body with the
//! exact status and code (malformed JSON, oversized bodies, unknown fields,
//! wrong types, bad base64, unknown routes and methods), slow and half-open
//! connections are closed, hundreds of idle connections do not starve a
//! real client, one daemon per store, and a stale socket is replaced.

use std::io::Write as _;
use std::net::Shutdown;
use std::time::Duration;

use keyward_tests::daemon::{Client, Daemon, Response, assert_ok, assert_refused, b64, code};
use serde_json::{Value, json};

/// Long enough for any close we wait for; the daemon's timeouts in these
/// tests are a second or two.
const WAIT: Duration = Duration::from_secs(30);

fn unlocked_with_key() -> Daemon {
    let daemon = Daemon::start();
    daemon.unlock();
    daemon.create_key("notes");
    daemon
}

/// A raw request with `body`, on a new connection: status and JSON body.
fn raw(daemon: &Daemon, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let mut client = daemon.client();
    client
        .connection()
        .send(method, path, Some(body), None)
        .expect("send the request");
    let response = client.read_response().expect("a response");
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{response:?}"
    );
    (response.status, response.json())
}

/// Reads `client`'s next response, asserting that it is the error `want`
/// (status and stable code).
#[track_caller]
fn read_refusal(client: &mut Client, want: (u16, &str)) -> Response {
    let response = client.read_response().expect("response");
    assert_eq!((response.status, code(&response.json())), want);
    response
}

#[test]
fn malformed_json_is_bad_request() {
    let daemon = unlocked_with_key();
    for body in [
        &b"{"[..],
        b"not json",
        b"{\"key\": \"notes\",}",
        b"[1, 2]",
        b"\xff\xfe",
    ] {
        let (status, reply) = raw(&daemon, "POST", "/v1/encrypt", body);
        assert_eq!((status, code(&reply)), (400, "bad-request"), "{reply}");
        assert_eq!(reply["error"]["exit"], 2);
        assert!(reply["error"]["message"].is_string());
    }
}

#[test]
fn unknown_fields_wrong_types_and_bad_base64_are_bad_request() {
    let daemon = unlocked_with_key();
    let cases = [
        // No field lets a client choose a nonce.
        (
            json!({"key": "notes", "plaintext": "aGk=", "nonce": "AAAAAAAAAAAAAAAA"}),
            "unknown field `nonce`",
        ),
        (json!({"key": 5, "plaintext": "aGk="}), "expected a string"),
        (
            json!({"key": "notes", "plaintext": 123_456}),
            "expected a standard base64 string",
        ),
        (
            json!({"key": "notes", "plaintext": "not base64!"}),
            "base64",
        ),
        (json!({"key": "notes", "plaintext": "aGk"}), "base64"),
        (json!({"plaintext": "aGk="}), "missing field `key`"),
    ];
    for (body, says) in cases {
        let (status, reply) = daemon.request("POST", "/v1/encrypt", Some(&body), None);
        assert_eq!(
            (status, code(&reply)),
            (400, "bad-request"),
            "{body}: {reply}"
        );
        let message = reply["error"]["message"].as_str().expect("message");
        assert!(message.contains(says), "{body}: {message}");
        // Values are never echoed back (a mistyped PIN must not come back).
        assert!(!message.contains("123456"), "{message}");
    }
    // A bad key name is the service's own error.
    assert_refused(
        daemon.request(
            "POST",
            "/v1/encrypt",
            Some(&json!({"key": "../etc", "plaintext": "aGk="})),
            None,
        ),
        (400, "invalid-key-name"),
    );
    // Data that is not a keyward ciphertext.
    assert_refused(
        daemon.request(
            "POST",
            "/v1/decrypt",
            Some(&json!({"ciphertext": b64(b"hello, world")})),
            None,
        ),
        (400, "malformed"),
    );
}

#[test]
fn unknown_routes_and_methods_are_json() {
    let daemon = Daemon::start();
    for (method, path, want) in [
        ("GET", "/v1/nope", (404, "not-found")),
        ("GET", "/", (404, "not-found")),
        ("PUT", "/v1/status", (405, "method-not-allowed")),
        ("GET", "/v1/encrypt", (405, "method-not-allowed")),
        ("GET", "/v1/audit?since=x", (400, "bad-request")),
        ("GET", "/v1/keys/Bad%2FName", (400, "invalid-key-name")),
    ] {
        assert_refused(daemon.request(method, path, None, None), want);
    }
}

#[test]
fn oversized_bodies_are_refused_and_batches_may_be_larger() {
    let daemon = unlocked_with_key();
    // Declared too large: refused before the body is read.
    let mut client = daemon.client();
    client
        .send_raw(b"POST /v1/encrypt HTTP/1.1\r\nHost: k\r\nContent-Length: 1048577\r\n\r\n")
        .expect("send");
    let response = read_refusal(&mut client, (413, "payload-too-large"));
    assert_eq!(response.header("connection"), Some("close"));
    assert!(client.closed_within(WAIT), "connection left open");

    // Too large as it arrives (chunked, no length announced).
    let mut client = daemon.client();
    let mut writer = client.stream().try_clone().expect("clone the stream");
    let sender = std::thread::spawn(move || {
        let mut request =
            b"POST /v1/encrypt HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..20 {
            request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            request.extend_from_slice(&chunk);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        // The daemon stops reading at the limit: a broken pipe is expected.
        let _ = writer.write_all(&request);
    });
    read_refusal(&mut client, (413, "payload-too-large"));
    sender.join().expect("sender");

    // 2 MiB: too much for one request, fine for a batch.
    let big = b64(&vec![7u8; 1536 * 1024]);
    assert_refused(
        daemon.request(
            "POST",
            "/v1/encrypt",
            Some(&json!({"key": "notes", "plaintext": big})),
            None,
        ),
        (413, "payload-too-large"),
    );
    let reply = assert_ok(daemon.request(
        "POST",
        "/v1/encrypt/batch",
        Some(&json!({"items": [{"key": "notes", "plaintext": big}]})),
        None,
    ));
    assert_eq!(reply["results"][0]["version"], 1, "{reply}");
}

#[test]
fn slow_headers_and_half_open_connections_are_closed() {
    let daemon = Daemon::start_with(&["--header-timeout", "1s", "--body-timeout", "1s"]);
    // Slowloris: a head that never ends.
    let mut slow = daemon.client();
    slow.send_raw(b"POST /v1/encrypt HTTP/1.1\r\nHost: k\r\nX-Slow: ")
        .expect("send");
    for _ in 0..3 {
        // Bytes that keep coming do not extend the deadline.
        std::thread::sleep(Duration::from_millis(300));
        let _ = slow.send_raw(b"a");
    }
    assert!(slow.closed_within(WAIT), "slow head not closed");

    // A body that stops short: 408 and closed.
    let mut short = daemon.client();
    short
        .send_raw(b"POST /v1/unlock HTTP/1.1\r\nHost: k\r\nContent-Length: 100\r\n\r\n{\"with\"")
        .expect("send");
    read_refusal(&mut short, (408, "request-timeout"));
    assert!(short.closed_within(WAIT), "short body not closed");

    // Half-closed: the client stops sending mid-head.
    let mut half = daemon.client();
    half.send_raw(b"GET /v1/status HTTP/1.1\r\nHo")
        .expect("send");
    half.stream().shutdown(Shutdown::Write).expect("shutdown");
    assert!(
        half.closed_within(WAIT),
        "half-closed connection not closed"
    );

    // And the daemon still serves.
    assert_eq!(daemon.status()["unlocked"], false);
}

#[test]
fn idle_keepalive_connections_are_closed() {
    let daemon = Daemon::start_with(&["--keepalive-timeout", "1s"]);
    let mut client = daemon.client();
    let (status, _) = client.request("GET", "/v1/status", None, None);
    assert_eq!(status, 200);
    // Kept alive for a second request...
    let (status, _) = client.request("GET", "/v1/status", None, None);
    assert_eq!(status, 200);
    // ...and closed once idle.
    assert!(client.closed_within(WAIT), "idle connection not closed");
}

#[test]
fn three_hundred_idle_connections_do_not_starve_a_client() {
    let daemon = Daemon::start();
    let mut idle: Vec<Client> = (0..300).map(|_| daemon.client()).collect();
    // Some of them half-way through a request head.
    for client in idle.iter_mut().step_by(3) {
        client
            .send_raw(b"GET /v1/status HTTP/1.1\r\n")
            .expect("send");
    }
    let (status, reply) = daemon.request("GET", "/v1/status", None, None);
    assert_eq!(status, 200, "{reply}");
    let mut keep = daemon.client();
    for _ in 0..20 {
        assert_eq!(keep.request("GET", "/v1/status", None, None).0, 200);
    }
    drop(idle);
}

#[test]
fn one_daemon_per_store_and_stale_sockets_are_replaced() {
    let daemon = Daemon::start();
    // A second daemon on the same store, on another socket: exit 8, naming
    // the pid that holds the store.
    let other = daemon.store().dir().join("other").join("k.sock");
    let out = daemon
        .store()
        .keyward(&["serve", "--socket", other.to_str().expect("utf-8")], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: another keyward serve (pid {}) is already serving {}",
            daemon.pid(),
            daemon.store().path().display()
        )),
        "{stderr}"
    );
    assert!(!other.exists());

    // Killed: the socket and lock file stay behind; a new daemon takes over.
    let socket = daemon.socket().to_path_buf();
    let store = daemon.into_store();
    assert!(socket.exists(), "a SIGKILLed daemon leaves its socket");
    let restarted = Daemon::spawn(store, &[]);
    assert_eq!(restarted.socket(), socket);
    restarted.unlock();
    assert_eq!(restarted.status()["unlocked"], true);
}

#[test]
fn never_replaces_what_is_not_a_stale_socket() {
    let daemon = Daemon::start();
    let store = daemon.into_store();
    let socket = store.dir().join("s").join("keyward.sock");
    // A regular file where the socket goes.
    std::fs::remove_file(&socket).expect("remove the stale socket");
    std::fs::write(&socket, b"precious").expect("write a file");
    let out = store.keyward(&["serve", "--socket", socket.to_str().expect("utf-8")], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{stderr}");
    assert!(stderr.contains("it is not a socket"), "{stderr}");
    assert_eq!(std::fs::read(&socket).expect("still there"), b"precious");
    // A symlink.
    std::fs::remove_file(&socket).expect("remove");
    std::os::unix::fs::symlink(store.dir().join("elsewhere"), &socket).expect("symlink");
    let out = store.keyward(&["serve", "--socket", socket.to_str().expect("utf-8")], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{stderr}");
    assert!(stderr.contains("it is a symbolic link"), "{stderr}");
    assert!(std::fs::symlink_metadata(&socket).is_ok());
    // A directory others can write to.
    let open_dir = store.dir().join("open");
    std::fs::create_dir(&open_dir).expect("mkdir");
    std::fs::set_permissions(
        &open_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let out = store.keyward(
        &[
            "serve",
            "--socket",
            open_dir.join("k.sock").to_str().expect("utf-8"),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{stderr}");
    assert!(stderr.contains("others can write to it"), "{stderr}");
}

#[test]
fn default_socket_is_private_in_the_runtime_dir() {
    let store = keyward_tests::daemon::Store::new();
    let mut cmd = store.command(&["serve"]);
    cmd.stderr(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("spawn");
    let socket = store.dir().join("run").join("keyward").join("keyward.sock");
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .ok()
    };
    // The socket is bound, then restricted: wait for the final mode.
    let mut seen = None;
    for _ in 0..3000 {
        seen = mode(&socket);
        if seen == Some(0o600) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen, Some(0o600), "socket {}", socket.display());
    assert_eq!(mode(socket.parent().expect("dir")), Some(0o700));
}
