//! `keyward serve`, data and keys: encrypt/decrypt round trips and batches
//! with a bad item, data keys, rewrap to a new version, sign/verify with
//! replay protection, key administration, and the event stream.

use std::time::Duration;

use keyward_tests::daemon::{Daemon, assert_ok, assert_refused, b64, code, field_of_each, unb64};
use serde_json::{Value, json};

fn unlocked() -> Daemon {
    let daemon = Daemon::start();
    daemon.unlock();
    daemon.create_key("notes");
    daemon
}

fn post(daemon: &Daemon, path: &str, body: &Value) -> Value {
    let (status, reply) = daemon.request("POST", path, Some(body), None);
    assert_eq!(status, 200, "POST {path} {body}: {reply}");
    reply
}

#[test]
fn encrypt_decrypt_round_trip_with_context() {
    let daemon = unlocked();
    let mut client = daemon.client();
    for (plaintext, context) in [
        (&b""[..], &b""[..]),
        (b"hi", b"note/1"),
        (&[0u8; 4096][..], b"x"),
    ] {
        let sealed = assert_ok(client.request(
            "POST",
            "/v1/encrypt",
            Some(&json!({"key": "notes", "plaintext": b64(plaintext), "context": b64(context)})),
            None,
        ));
        assert_eq!(
            (&sealed["key"], &sealed["version"]),
            (&json!("notes"), &json!(1))
        );
        let opened = assert_ok(client.request(
            "POST",
            "/v1/decrypt",
            Some(&json!({"ciphertext": sealed["ciphertext"], "context": b64(context)})),
            None,
        ));
        assert_eq!(unb64(&opened["plaintext"]), plaintext);
        assert_eq!(opened["key"], "notes");
        // Another context fails as the CLI does.
        let reply = assert_refused(
            client.request(
                "POST",
                "/v1/decrypt",
                Some(&json!({"ciphertext": sealed["ciphertext"], "context": b64(b"other")})),
                None,
            ),
            (422, "decryption-failed"),
        );
        assert_eq!(reply["error"]["exit"], 5);
    }
    // The same plaintext twice: two ciphertexts.
    let a = post(
        &daemon,
        "/v1/encrypt",
        &json!({"key": "notes", "plaintext": "aGk="}),
    );
    let b = post(
        &daemon,
        "/v1/encrypt",
        &json!({"key": "notes", "plaintext": "aGk="}),
    );
    assert_ne!(a["ciphertext"], b["ciphertext"]);
    // Unknown key, wrong purpose.
    assert_refused(
        daemon.request(
            "POST",
            "/v1/encrypt",
            Some(&json!({"key": "nope", "plaintext": "aGk="})),
            None,
        ),
        (404, "key-not-found"),
    );
    post(
        &daemon,
        "/v1/keys",
        &json!({"name": "signer", "purpose": "sign"}),
    );
    assert_refused(
        daemon.request(
            "POST",
            "/v1/encrypt",
            Some(&json!({"key": "signer", "plaintext": "aGk="})),
            None,
        ),
        (409, "wrong-purpose"),
    );
}

#[test]
fn batches_fail_item_by_item() {
    let daemon = unlocked();
    let sealed = post(
        &daemon,
        "/v1/encrypt/batch",
        &json!({"items": [
            {"key": "notes", "plaintext": b64(b"one")},
            {"key": "missing", "plaintext": b64(b"two")},
            {"key": "notes", "plaintext": b64(b"three"), "context": b64(b"c")},
        ]}),
    );
    let results = sealed["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    assert_eq!(code(&results[1]), "key-not-found", "{sealed}");
    let opened = post(
        &daemon,
        "/v1/decrypt/batch",
        &json!({"items": [
            {"ciphertext": results[0]["ciphertext"]},
            {"ciphertext": results[2]["ciphertext"]},
            {"ciphertext": results[2]["ciphertext"], "context": b64(b"c")},
            {"ciphertext": b64(b"garbage")},
        ]}),
    );
    let opened = opened["results"].as_array().expect("results");
    assert_eq!(unb64(&opened[0]["plaintext"]), b"one");
    assert_eq!(code(&opened[1]), "decryption-failed");
    assert_eq!(unb64(&opened[2]["plaintext"]), b"three");
    assert_eq!(code(&opened[3]), "malformed");
    // A malformed item fails the whole batch: it could not be read.
    assert_refused(
        daemon.request(
            "POST",
            "/v1/decrypt/batch",
            Some(&json!({"items": [{"ciphertext": 5}]})),
            None,
        ),
        (400, "bad-request"),
    );
    let too_many: Vec<Value> = (0..1001)
        .map(|_| json!({"key": "notes", "plaintext": ""}))
        .collect();
    assert_refused(
        daemon.request(
            "POST",
            "/v1/encrypt/batch",
            Some(&json!({"items": too_many})),
            None,
        ),
        (400, "invalid-argument"),
    );
}

#[test]
fn datakey_generate_then_unwrap() {
    let daemon = unlocked();
    let generated = post(
        &daemon,
        "/v1/datakey/generate",
        &json!({"key": "notes", "context": b64(b"blob/7")}),
    );
    let key = unb64(&generated["plaintext"]);
    assert_eq!(key.len(), 32);
    assert_eq!(
        (&generated["key"], &generated["version"]),
        (&json!("notes"), &json!(1))
    );
    let unwrapped = post(
        &daemon,
        "/v1/datakey/unwrap",
        &json!({"wrapped": generated["wrapped"], "context": b64(b"blob/7")}),
    );
    assert_eq!(unb64(&unwrapped["plaintext"]), key);
    assert_refused(
        daemon.request(
            "POST",
            "/v1/datakey/unwrap",
            Some(&json!({"wrapped": generated["wrapped"]})),
            None,
        ),
        (422, "decryption-failed"),
    );
    let again = post(&daemon, "/v1/datakey/generate", &json!({"key": "notes"}));
    assert_ne!(again["plaintext"], generated["plaintext"]);
}

#[test]
fn rewrap_moves_to_the_primary_version() {
    let daemon = unlocked();
    let v1 = post(
        &daemon,
        "/v1/encrypt",
        &json!({"key": "notes", "plaintext": b64(b"keep me"), "context": b64(b"c")}),
    );
    let rotated = post(&daemon, "/v1/keys/notes/rotate", &json!({}));
    assert_eq!(rotated["primary_version"], 2);
    let rewrapped = post(
        &daemon,
        "/v1/rewrap",
        &json!({"ciphertext": v1["ciphertext"], "context": b64(b"c")}),
    );
    assert_eq!(
        (
            &rewrapped["version"],
            &rewrapped["from_version"],
            &rewrapped["key"]
        ),
        (&json!(2), &json!(1), &json!("notes"))
    );
    assert!(rewrapped.get("plaintext").is_none());
    assert_ne!(rewrapped["ciphertext"], v1["ciphertext"]);
    let opened = post(
        &daemon,
        "/v1/decrypt",
        &json!({"ciphertext": rewrapped["ciphertext"], "context": b64(b"c")}),
    );
    assert_eq!(unb64(&opened["plaintext"]), b"keep me");
    assert_eq!(opened["version"], 2);
    // Retire v1: the old ciphertext is refused by name, the new one reads.
    let retired = post(
        &daemon,
        "/v1/keys/notes/retire",
        &json!({"min_decryption_version": 2}),
    );
    assert_eq!(retired["min_decryption_version"], 2);
    assert_refused(
        daemon.request(
            "POST",
            "/v1/decrypt",
            Some(&json!({"ciphertext": v1["ciphertext"], "context": b64(b"c")})),
            None,
        ),
        (409, "version-retired"),
    );
}

#[test]
fn sign_and_verify() {
    let daemon = unlocked();
    post(
        &daemon,
        "/v1/keys",
        &json!({"name": "msgs", "purpose": "sign", "class": "general"}),
    );
    let signed = post(
        &daemon,
        "/v1/sign",
        &json!({"key": "msgs", "message": b64(b"hello"), "audience": "bob"}),
    );
    assert_eq!(
        (&signed["key"], &signed["version"]),
        (&json!("msgs"), &json!(1))
    );
    assert_eq!(signed["counter"], 1);
    let verified = post(
        &daemon,
        "/v1/verify",
        &json!({"message": b64(b"hello"), "signature": signed["signature"], "audience": "bob",
                "fresh": true}),
    );
    assert_eq!(verified["counter"], 1);
    assert_eq!(verified["audience"], "bob");
    let replay = daemon.request(
        "POST",
        "/v1/verify",
        Some(
            &json!({"message": b64(b"hello"), "signature": signed["signature"],
                     "audience": "bob", "fresh": true}),
        ),
        None,
    );
    assert_eq!((replay.0, code(&replay.1)), (422, "replay"), "{}", replay.1);
    let tampered = daemon.request(
        "POST",
        "/v1/verify",
        Some(
            &json!({"message": b64(b"hellO"), "signature": signed["signature"], "audience": "bob"}),
        ),
        None,
    );
    assert_eq!((tampered.0, code(&tampered.1)), (422, "invalid-signature"));
    let public = daemon.request("GET", "/v1/keys/msgs/public?version=1", None, None);
    assert_eq!(public.0, 200, "{}", public.1);
    assert!(
        public.1["pem"]
            .as_str()
            .is_some_and(|p| p.starts_with("-----BEGIN PUBLIC KEY-----")),
        "{}",
        public.1
    );
    let missing = daemon.request("GET", "/v1/keys/msgs/public?version=9", None, None);
    assert_eq!((missing.0, code(&missing.1)), (404, "version-not-found"));
}

#[test]
fn key_administration() {
    let daemon = unlocked();
    let created = post(
        &daemon,
        "/v1/keys",
        &json!({"name": "health", "class": "sensitive", "rotation_period": 3600,
                "usage_limit": 1000}),
    );
    assert_eq!(
        (
            &created["class"],
            &created["rotation_period"],
            &created["usage_limit"]
        ),
        (&json!("sensitive"), &json!(3600), &json!(1000))
    );
    assert_refused(
        daemon.request("POST", "/v1/keys", Some(&json!({"name": "health"})), None),
        (409, "key-exists"),
    );
    assert_refused(
        daemon.request(
            "POST",
            "/v1/keys",
            Some(&json!({"name": "x", "class": "top-secret"})),
            None,
        ),
        (400, "bad-request"),
    );
    // Secret-class keys live in the daemon's memory.
    post(
        &daemon,
        "/v1/keys",
        &json!({"name": "session", "class": "secret"}),
    );
    let (status, list) = daemon.request("GET", "/v1/keys", None, None);
    assert_eq!(status, 200);
    let names = field_of_each(&list["keys"], "name");
    assert_eq!(names, ["health", "notes", "session"]);
    let (status, shown) = daemon.request("GET", "/v1/keys/notes", None, None);
    assert_eq!((status, &shown["primary_version"]), (200, &json!(1)));
    assert_refused(
        daemon.request("GET", "/v1/keys/nope", None, None),
        (404, "key-not-found"),
    );
    let due = post(&daemon, "/v1/rotate-due", &json!({}));
    assert_eq!(due, json!({"rotated": []}));
    let epoch = post(&daemon, "/v1/master/rotate", &json!({}));
    assert_eq!(epoch["epoch"], 2);
    let summary = assert_ok(daemon.request("GET", "/v1/audit/verify", None, None));
    assert!(
        summary["records"].as_u64().is_some_and(|n| n > 5),
        "{summary}"
    );
}

#[test]
fn events_stream_security_events() {
    let daemon = Daemon::start();
    let mut stream = daemon.client();
    let head = stream
        .open_stream("/v1/events", None)
        .expect("open the stream");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("application/x-ndjson"));
    daemon.unlock();
    daemon.create_key("notes");
    post(
        &daemon,
        "/v1/encrypt",
        &json!({"key": "notes", "plaintext": "aGk="}),
    );
    daemon.add_client("assistant", &["decrypt"], &["notes"]);
    post(&daemon, "/v1/lock", &json!({}));
    let mut seen = Vec::new();
    while let Some(event) = stream.next_line(Duration::from_secs(30)) {
        let action = event["action"].as_str().expect("action").to_owned();
        seen.push(action.clone());
        if action == "lock" {
            break;
        }
    }
    assert_eq!(
        seen,
        ["unlock", "key.create", "client.add", "lock"],
        "{seen:?}"
    );
    // From the start of the log, with since=1.
    let mut history = daemon.client();
    history
        .open_stream("/v1/events?since=1", None)
        .expect("open");
    let first = history
        .next_line(Duration::from_secs(30))
        .expect("an event");
    assert!(first["seq"].as_u64().is_some(), "{first}");
}
