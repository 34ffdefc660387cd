//! `keyward serve`, authentication and grants: a client token works only
//! for its grant (operations × keys, the decrypt key read from the
//! ciphertext), revocation cuts a client at its next request, also on a
//! kept-alive connection, bursts of refusals are audited, owner-only
//! endpoints refuse clients, and a peer of another uid is refused and
//! audited.

use std::process::Command;
use std::time::{Duration, Instant};

use keyward_tests::daemon::{Daemon, assert_ok, assert_refused, b64, code, field_of_each, unb64};
use serde_json::{Value, json};

/// How long we wait for the daemon to do something by itself.
const WAIT: Duration = Duration::from_secs(30);

/// An unlocked daemon with encrypt keys `a` and `b`, and signing key `s`.
fn daemon() -> Daemon {
    let daemon = Daemon::start();
    daemon.unlock();
    daemon.create_key("a");
    daemon.create_key("b");
    assert_ok(daemon.request(
        "POST",
        "/v1/keys",
        Some(&json!({"name": "s", "purpose": "sign"})),
        None,
    ));
    daemon
}

/// Encrypts `plaintext` under `key` as the owner; the ciphertext (base64).
fn encrypt(daemon: &Daemon, key: &str, plaintext: &[u8]) -> String {
    let reply = assert_ok(daemon.request(
        "POST",
        "/v1/encrypt",
        Some(&json!({"key": key, "plaintext": b64(plaintext)})),
        None,
    ));
    reply["ciphertext"].as_str().expect("ciphertext").to_owned()
}

/// Every audit record.
fn audit(daemon: &Daemon) -> Vec<Value> {
    let body = assert_ok(daemon.request("GET", "/v1/audit?since=1&limit=10000", None, None));
    body["records"].as_array().expect("records").clone()
}

/// Waits for an audit record with `action`.
fn wait_for_record(daemon: &Daemon, action: &str) -> Option<Value> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(record) = audit(daemon).into_iter().find(|r| r["action"] == action) {
            return Some(record);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn a_decrypt_only_client_can_do_nothing_else() {
    let daemon = daemon();
    let token = daemon.add_client("reader", &["decrypt"], &["a"]);
    assert!(token.starts_with("kwt_"), "{token}");
    let for_a = encrypt(&daemon, "a", b"for the reader");
    let for_b = encrypt(&daemon, "b", b"not for the reader");
    let mut client = daemon.client();

    // What it may do.
    let reply = assert_ok(client.request(
        "POST",
        "/v1/decrypt",
        Some(&json!({"ciphertext": for_a})),
        Some(&token),
    ));
    assert_eq!(unb64(&reply["plaintext"]), b"for the reader");
    assert_ok(client.request("GET", "/v1/status", None, Some(&token)));

    // Another key, read from the ciphertext's header.
    let reply = assert_refused(
        client.request(
            "POST",
            "/v1/decrypt",
            Some(&json!({"ciphertext": for_b})),
            Some(&token),
        ),
        (403, "forbidden"),
    );
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("'b'")),
        "{reply}"
    );
    // In a batch, the forbidden item fails alone.
    let reply = assert_ok(client.request(
        "POST",
        "/v1/decrypt/batch",
        Some(&json!({"items": [{"ciphertext": for_a}, {"ciphertext": for_b}]})),
        Some(&token),
    ));
    assert_eq!(unb64(&reply["results"][0]["plaintext"]), b"for the reader");
    assert_eq!(code(&reply["results"][1]), "forbidden", "{reply}");

    // Every other operation, on its own key or any other.
    let forbidden: Vec<(&str, String, Option<Value>)> = vec![
        (
            "POST",
            "/v1/encrypt".into(),
            Some(json!({"key": "a", "plaintext": "aGk="})),
        ),
        (
            "POST",
            "/v1/rewrap".into(),
            Some(json!({"ciphertext": for_a})),
        ),
        (
            "POST",
            "/v1/datakey/generate".into(),
            Some(json!({"key": "a"})),
        ),
        (
            "POST",
            "/v1/sign".into(),
            Some(json!({"key": "s", "message": "aGk="})),
        ),
        (
            "POST",
            "/v1/verify".into(),
            Some(json!({"message": "aGk=", "signature": for_a})),
        ),
        ("GET", "/v1/keys".into(), None),
        ("GET", "/v1/keys/a".into(), None),
        ("GET", "/v1/keys/s/public".into(), None),
        ("POST", "/v1/keys".into(), Some(json!({"name": "c"}))),
        ("POST", "/v1/keys/a/rotate".into(), None),
        (
            "POST",
            "/v1/keys/a/retire".into(),
            Some(json!({"min_decryption_version": 1})),
        ),
        ("POST", "/v1/rotate-due".into(), None),
        ("POST", "/v1/master/rotate".into(), None),
        ("POST", "/v1/unlock".into(), Some(json!({}))),
        ("POST", "/v1/lock".into(), None),
        ("GET", "/v1/clients".into(), None),
        (
            "POST",
            "/v1/clients".into(),
            Some(json!({"name": "x", "allow": ["decrypt"], "keys": ["*"]})),
        ),
        ("POST", "/v1/clients/revoke-all".into(), None),
        ("DELETE", "/v1/clients/reader".into(), None),
        ("GET", "/v1/audit".into(), None),
        ("GET", "/v1/audit/verify".into(), None),
        ("GET", "/v1/events".into(), None),
    ];
    for (method, path, body) in &forbidden {
        let (status, reply) = client.request(method, path, body.as_ref(), Some(&token));
        assert_eq!(
            (status, code(&reply)),
            (403, "forbidden"),
            "{method} {path}: {reply}"
        );
    }
    // A batch could be read, so it succeeds; its items are refused.
    let (status, reply) = client.request(
        "POST",
        "/v1/encrypt/batch",
        Some(&json!({"items": [{"key": "a", "plaintext": "aGk="}]})),
        Some(&token),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(code(&reply["results"][0]), "forbidden", "{reply}");
    // Nothing changed.
    assert_eq!(daemon.status()["unlocked"], true);
    assert_eq!(daemon.status()["clients"], 1);
}

#[test]
fn grants_name_keys() {
    let daemon = daemon();
    let token = daemon.add_client("app", &["encrypt", "decrypt", "keys", "datakey"], &["a"]);
    let mut client = daemon.client();
    assert_refused(
        client.request(
            "POST",
            "/v1/encrypt",
            Some(&json!({"key": "b", "plaintext": "aGk="})),
            Some(&token),
        ),
        (403, "forbidden"),
    );
    assert_refused(
        client.request(
            "POST",
            "/v1/datakey/generate",
            Some(&json!({"key": "b"})),
            Some(&token),
        ),
        (403, "forbidden"),
    );
    assert_refused(
        client.request("GET", "/v1/keys/b", None, Some(&token)),
        (403, "forbidden"),
    );
    // It sees only its own key.
    let reply = assert_ok(client.request("GET", "/v1/keys", None, Some(&token)));
    let names = field_of_each(&reply["keys"], "name");
    assert_eq!(names, ["a"]);
    assert_ok(client.request(
        "POST",
        "/v1/encrypt",
        Some(&json!({"key": "a", "plaintext": "aGk="})),
        Some(&token),
    ));
    // Audit records name the client.
    let record = audit(&daemon)
        .into_iter()
        .rev()
        .find(|r| r["action"] == "encrypt")
        .expect("encrypt record");
    assert_eq!(record["fields"]["actor"]["client"], "app", "{record}");
    // A client with every key.
    let all = daemon.add_client("all", &["encrypt"], &["*"]);
    assert_ok(client.request(
        "POST",
        "/v1/encrypt",
        Some(&json!({"key": "b", "plaintext": "aGk="})),
        Some(&all),
    ));
}

#[test]
fn bad_tokens_and_revocation() {
    let daemon = daemon();
    let token = daemon.add_client("app", &["encrypt"], &["a"]);
    let other = daemon.add_client("other", &["encrypt"], &["a"]);
    let body = json!({"key": "a", "plaintext": "aGk="});
    for bad in ["", "kwt_", "kwt_AAAA", "Basic dXNlcjpwdw==", "not-a-token"] {
        let mut client = daemon.client();
        let auth = format!("Authorization: Bearer {bad}\r\n");
        let raw = format!(
            "POST /v1/encrypt HTTP/1.1\r\nHost: k\r\n{}Content-Length: {}\r\n\r\n{body}",
            if bad.starts_with("Basic") {
                format!("Authorization: {bad}\r\n")
            } else {
                auth
            },
            body.to_string().len()
        );
        client.send_raw(raw.as_bytes()).expect("send");
        let response = client.read_response().expect("response");
        assert_eq!(
            (response.status, code(&response.json())),
            (401, "unauthorized"),
            "{bad:?}: {:?}",
            response.json()
        );
    }

    // A kept-alive connection that works...
    let mut kept = daemon.client();
    assert_ok(kept.request("POST", "/v1/encrypt", Some(&body), Some(&token)));
    // ...revoked by name, on its next request.
    let (status, reply) = daemon.request("DELETE", "/v1/clients/app", None, None);
    assert_eq!((status, &reply), (200, &json!({"revoked": "app"})));
    assert_refused(
        kept.request("POST", "/v1/encrypt", Some(&body), Some(&token)),
        (401, "unauthorized"),
    );
    assert_refused(
        daemon.request("DELETE", "/v1/clients/nobody", None, None),
        (404, "client-not-found"),
    );

    // Revoke-all cuts every client at once, including open connections.
    let mut open = daemon.client();
    assert_ok(open.request("POST", "/v1/encrypt", Some(&body), Some(&other)));
    let reply = assert_ok(daemon.request("POST", "/v1/clients/revoke-all", None, None));
    assert!(reply["revoked"].as_u64().is_some(), "{reply}");
    let (status, reply) = open.request("POST", "/v1/encrypt", Some(&body), Some(&other));
    assert_eq!((status, code(&reply)), (401, "unauthorized"), "{reply}");
    // Revoking every client does not lock.
    assert_eq!(daemon.status()["unlocked"], true);
    let (_, clients) = daemon.request("GET", "/v1/clients", None, None);
    assert!(
        clients["clients"]
            .as_array()
            .expect("clients")
            .iter()
            .all(|c| !c["revoked_at"].is_null()),
        "{clients}"
    );
    // A name is not reused while its client is active.
    daemon.add_client("fresh", &["encrypt"], &["a"]);
    assert_refused(
        daemon.request(
            "POST",
            "/v1/clients",
            Some(&json!({"name": "fresh", "allow": ["encrypt"], "keys": ["a"]})),
            None,
        ),
        (409, "client-exists"),
    );
}

#[test]
fn a_burst_of_refusals_is_audited() {
    let daemon = daemon();
    let mut client = daemon.client();
    for _ in 0..12 {
        let (status, _) = client.request("GET", "/v1/status", None, Some("kwt_nope"));
        assert_eq!(status, 401);
    }
    let record = wait_for_record(&daemon, "requests.refused.burst").expect("burst record");
    assert!(
        record["fields"]["refused"]
            .as_u64()
            .is_some_and(|n| n >= 10),
        "{record}"
    );
}

#[test]
fn another_uid_is_refused_and_audited() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to connect as another uid");
        return;
    }
    for tool in ["setpriv", "curl"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("skipped: {tool} is not installed");
            return;
        }
    }
    // A long watchdog interval: it would put the socket back to 0600.
    let daemon = Daemon::start_with(&["--watchdog-interval", "1h"]);
    let chmod = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .expect("chmod");
    };
    chmod(daemon.store().dir(), 0o755);
    chmod(daemon.socket().parent().expect("socket dir"), 0o755);
    chmod(daemon.socket(), 0o666);
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-s",
        ])
        .args(["-w", "\n%{http_code}", "--unix-socket"])
        .arg(daemon.socket())
        .arg("http://keyward/v1/status")
        .output()
        .expect("run curl as nobody");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').expect("body and status");
    assert_eq!(
        status,
        "403",
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(code(&body), "peer-rejected", "{body}");
    let record = wait_for_record(&daemon, "peer.rejected").expect("audit record");
    assert_eq!(record["fields"]["uid"], 65534, "{record}");
    assert_eq!(record["status"], "error", "{record}");
}
