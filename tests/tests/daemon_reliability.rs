//! `keyward serve`, reliability: a daemon SIGKILLed in the middle of a
//! stream of rotations restarts on a store that verifies and decrypts
//! everything written before; the scheduler rotates keys that are due; the
//! socket watchdog restores a widened mode and shuts down when the socket
//! is replaced.

use std::time::{Duration, Instant};

use keyward_tests::daemon::{Daemon, assert_ok, b64, unb64};
use serde_json::{Value, json};

/// How long we wait for the daemon to do something by itself.
const WAIT: Duration = Duration::from_secs(30);

/// Every audit record.
fn audit(daemon: &Daemon) -> Vec<Value> {
    let body = assert_ok(daemon.request("GET", "/v1/audit?since=1&limit=10000", None, None));
    body["records"].as_array().expect("records").clone()
}

#[test]
fn killed_mid_rotation_then_restarted_loses_nothing() {
    let daemon = Daemon::start();
    daemon.unlock();
    daemon.create_key("notes");
    let mut client = daemon.client();
    let mut written: Vec<(Value, Vec<u8>)> = Vec::new();
    for n in 0..40 {
        let plaintext = format!("message {n}").into_bytes();
        let sealed = assert_ok(client.request(
            "POST",
            "/v1/encrypt",
            Some(&json!({"key": "notes", "plaintext": b64(&plaintext)})),
            None,
        ));
        written.push((sealed["ciphertext"].clone(), plaintext));
        assert_ok(client.request("POST", "/v1/keys/notes/rotate", None, None));
    }
    // Rotations on the wire, unanswered, as the daemon dies.
    let mut pipelined = daemon.client();
    for _ in 0..20 {
        pipelined
            .connection()
            .send("POST", "/v1/keys/notes/rotate", None, None)
            .expect("send");
    }
    let _ = pipelined.read_response();
    let store = daemon.into_store();

    let daemon = Daemon::spawn(store, &[]);
    assert_ok(daemon.request("GET", "/v1/audit/verify", None, None));
    daemon.unlock();
    assert_ok(daemon.request("GET", "/v1/audit/verify", None, None));
    let key = assert_ok(daemon.request("GET", "/v1/keys/notes", None, None));
    assert!(
        key["primary_version"].as_u64().is_some_and(|v| v >= 41),
        "{key}"
    );
    let mut client = daemon.client();
    for (ciphertext, plaintext) in &written {
        let opened = assert_ok(client.request(
            "POST",
            "/v1/decrypt",
            Some(&json!({"ciphertext": ciphertext})),
            None,
        ));
        assert_eq!(&unb64(&opened["plaintext"]), plaintext);
    }
    // New data goes under the newest version, and reads back.
    let sealed = assert_ok(client.request(
        "POST",
        "/v1/encrypt",
        Some(&json!({"key": "notes", "plaintext": b64(b"after")})),
        None,
    ));
    assert_eq!(sealed["version"], key["primary_version"]);
    // And the CLI, on the stopped store, agrees.
    let store = daemon.into_store();
    store.keyward_ok(&["audit", "verify"], &[]);
}

#[test]
fn the_scheduler_rotates_keys_that_are_due() {
    let daemon = Daemon::start_with(&["--check-interval", "1s"]);
    daemon.unlock();
    assert_ok(daemon.request(
        "POST",
        "/v1/keys",
        Some(&json!({"name": "short", "rotation_period": 1})),
        None,
    ));
    let sealed = assert_ok(daemon.request(
        "POST",
        "/v1/encrypt",
        Some(&json!({"key": "short", "plaintext": b64(b"old data")})),
        None,
    ));
    assert_eq!(sealed["version"], 1);
    let deadline = Instant::now() + WAIT;
    let mut version = 1;
    while version < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let (_, key) = daemon.request("GET", "/v1/keys/short", None, None);
        version = key["primary_version"].as_u64().unwrap_or(0);
    }
    assert!(version >= 2, "not rotated: {}", daemon.stderr());
    let rotation = audit(&daemon)
        .into_iter()
        .find(|r| r["action"] == "key.rotate")
        .expect("rotation record");
    assert_eq!(rotation["fields"]["key"], "short", "{rotation}");
    let opened = assert_ok(daemon.request(
        "POST",
        "/v1/decrypt",
        Some(&json!({"ciphertext": sealed["ciphertext"]})),
        None,
    ));
    assert_eq!(unb64(&opened["plaintext"]), b"old data");
    assert_eq!(opened["version"], 1);
}

#[test]
fn a_widened_socket_mode_is_restored_and_recorded() {
    let daemon = Daemon::start_with(&["--watchdog-interval", "1s"]);
    let mode = || {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::symlink_metadata(daemon.socket())
                .expect("socket")
                .permissions(),
        ) & 0o7777
    };
    assert_eq!(mode(), 0o600);
    std::fs::set_permissions(
        daemon.socket(),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .expect("chmod");
    let deadline = Instant::now() + WAIT;
    while mode() != 0o600 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(mode(), 0o600, "mode not restored");
    let deadline = Instant::now() + WAIT;
    let record = loop {
        if let Some(r) = audit(&daemon)
            .into_iter()
            .find(|r| r["action"] == "socket.tampered")
        {
            break r;
        }
        assert!(Instant::now() < deadline, "no socket.tampered record");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(record["fields"]["mode"], "0666", "{record}");
    assert_eq!(record["fields"]["restored"], true, "{record}");
    assert_eq!(daemon.status()["unlocked"], false);
}

#[test]
fn a_replaced_socket_locks_and_stops_the_daemon() {
    let mut daemon = Daemon::start_with(&["--watchdog-interval", "1s"]);
    daemon.unlock();
    // Someone puts their own socket in our place.
    std::fs::remove_file(daemon.socket()).expect("remove");
    let impostor = std::os::unix::net::UnixListener::bind(daemon.socket()).expect("bind");
    let status = daemon.wait(WAIT).expect("the daemon stops");
    assert!(status.success(), "{status}: {}", daemon.stderr());
    assert!(
        daemon
            .stderr()
            .contains("the socket was replaced by someone else"),
        "{}",
        daemon.stderr()
    );
    // The impostor's socket is left alone.
    assert!(daemon.socket().exists());
    drop(impostor);
    std::fs::remove_file(daemon.socket()).expect("remove");
    let store = daemon.into_store();
    let restarted = Daemon::spawn(store, &[]);
    let records = audit(&restarted);
    let tampered = records
        .iter()
        .find(|r| r["action"] == "socket.tampered")
        .expect("socket.tampered record");
    assert_eq!(tampered["fields"]["change"], "replaced", "{tampered}");
    let lock = records
        .iter()
        .rev()
        .find(|r| r["action"] == "lock")
        .expect("lock record");
    assert_eq!(lock["fields"]["reason"], "socket", "{lock}");
}
