//! `keyward serve`, sessions: locked until unlocked, unlock failures that
//! change nothing, a missing secret asked for with 428, the idle and
//! absolute timeouts, SIGHUP, a clean stop on SIGTERM with requests in
//! flight, and the process hardening.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keyward_tests::daemon::{
    Daemon, PASSPHRASE, Response, Signal, assert_ok, assert_refused, b64, code, unb64,
};
use serde_json::{Value, json};

/// How long we wait for the daemon to do something by itself.
const WAIT: Duration = Duration::from_secs(30);

/// Polls `status` until `unlocked` is `want`; whether it got there.
fn wait_unlocked(daemon: &Daemon, want: bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if daemon.status()["unlocked"] == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Every audit record.
fn audit(daemon: &Daemon) -> Vec<Value> {
    let body = assert_ok(daemon.request("GET", "/v1/audit?since=1&limit=10000", None, None));
    body["records"].as_array().expect("records").clone()
}

/// The reason of the newest `lock` record.
fn last_lock_reason(daemon: &Daemon) -> Option<String> {
    audit(daemon)
        .iter()
        .rev()
        .find(|r| r["action"] == "lock")
        .and_then(|r| r["fields"]["reason"].as_str().map(ToOwned::to_owned))
}

#[test]
fn locked_until_unlocked() {
    let daemon = Daemon::start();
    let status = daemon.status();
    assert_eq!(status["unlocked"], false);
    assert_eq!(status["session"], Value::Null);
    assert_eq!(status["pid"], daemon.pid());
    assert_eq!(status["store"], daemon.store().path().display().to_string());
    let (status, reply) = daemon.request("POST", "/v1/keys", Some(&json!({"name": "k"})), None);
    assert_eq!((status, code(&reply)), (423, "locked"), "{reply}");
    assert_eq!(reply["error"]["exit"], 3);

    let body = daemon.unlock();
    assert_eq!(body["protector"]["kind"], "passphrase");
    let session = &body["session"];
    let unlocked_at = session["unlocked_at"].as_i64().expect("unlocked_at");
    // The defaults: 15 min idle, 8 h absolute.
    let idle = session["idle_expires_at"].as_i64().expect("idle") - unlocked_at;
    let absolute = session["absolute_expires_at"].as_i64().expect("absolute") - unlocked_at;
    assert!((899..=900).contains(&idle), "{session}");
    assert!((28_799..=28_800).contains(&absolute), "{session}");
    let status = daemon.status();
    assert_eq!(status["unlocked"], true);
    assert_eq!(status["session"]["protector"], body["protector"]["id"]);

    // Unlocking again answers with the session; lock is idempotent.
    let again = daemon.unlock();
    assert_eq!(again["session"]["unlocked_at"], unlocked_at);
    daemon.create_key("notes");
    let reply = assert_ok(daemon.request(
        "POST",
        "/v1/encrypt",
        Some(&json!({"key": "notes", "plaintext": b64(b"hi")})),
        None,
    ));
    let ciphertext = reply["ciphertext"].clone();
    for _ in 0..2 {
        let (status, reply) = daemon.request("POST", "/v1/lock", None, None);
        assert_eq!((status, &reply), (200, &json!({"locked": true})));
    }
    assert_eq!(daemon.status()["unlocked"], false);
    assert_eq!(last_lock_reason(&daemon).as_deref(), Some("request"));
    assert_refused(
        daemon.request(
            "POST",
            "/v1/decrypt",
            Some(&json!({"ciphertext": ciphertext})),
            None,
        ),
        (423, "locked"),
    );
}

#[test]
fn wrong_passphrase_changes_nothing() {
    let daemon = Daemon::start();
    let before = audit(&daemon).len();
    let (status, reply) = daemon.request(
        "POST",
        "/v1/unlock",
        Some(&json!({"with": "passphrase", "secrets": {"passphrase": "wrong horse"}})),
        None,
    );
    assert_eq!((status, code(&reply)), (401, "wrong-passphrase"), "{reply}");
    assert_eq!(reply["error"]["exit"], 3);
    assert!(!reply.to_string().contains("wrong horse"));
    assert_eq!(daemon.status()["unlocked"], false);
    let records = audit(&daemon);
    assert_eq!(records.len(), before + 1, "one unlock.failed record");
    assert_eq!(records.last().expect("record")["action"], "unlock.failed");
    assert!(
        !records
            .iter()
            .any(|r| r.to_string().contains("wrong horse"))
    );
    // The right one still works.
    daemon.unlock();
    // A recovery key of the wrong form.
    daemon.request("POST", "/v1/lock", None, None);
    assert_refused(
        daemon.request(
            "POST",
            "/v1/unlock",
            Some(&json!({"secrets": {"recovery-key": "nope"}})),
            None,
        ),
        (401, "wrong-recovery-key"),
    );
    // The real recovery key.
    let reply = assert_ok(daemon.request(
        "POST",
        "/v1/unlock",
        Some(&json!({"secrets": {"recovery-key": daemon.store().recovery_key_text()}})),
        None,
    ));
    assert_eq!(reply["protector"]["kind"], "recovery");
}

#[test]
fn missing_secret_is_asked_for() {
    let daemon = Daemon::start();
    let audit_len = || {
        let body = assert_ok(daemon.request("GET", "/v1/audit?since=0&limit=10000", None, None));
        body["records"].as_array().expect("records").len()
    };
    let before = audit_len();
    let reply = assert_refused(
        daemon.request(
            "POST",
            "/v1/unlock",
            Some(&json!({"with": "passphrase"})),
            None,
        ),
        (428, "secret-required"),
    );
    assert_eq!(
        audit_len(),
        before,
        "asking for a secret is not a failed unlock"
    );
    assert_eq!(reply["error"]["secret"], "passphrase");
    assert!(reply["error"]["description"].is_string(), "{reply}");
    assert!(reply["error"].get("tries_left").is_some(), "{reply}");
    assert_eq!(reply["error"]["exit"], 3);
    // A secret the request cannot carry is refused by name.
    assert_refused(
        daemon.request(
            "POST",
            "/v1/unlock",
            Some(&json!({"with": "passphrase", "secrets": {"password": PASSPHRASE}})),
            None,
        ),
        (400, "bad-request"),
    );
    assert_refused(
        daemon.request(
            "POST",
            "/v1/unlock",
            Some(&json!({"with": "fingerprint"})),
            None,
        ),
        (400, "bad-request"),
    );
    let (status, reply) = daemon.request("POST", "/v1/unlock", Some(&json!({"with": 99})), None);
    assert_eq!(
        (status, code(&reply)),
        (404, "protector-not-found"),
        "{reply}"
    );
    assert_eq!(daemon.status()["unlocked"], false);
}

#[test]
fn idle_timeout_locks() {
    let daemon = Daemon::start_with(&["--idle-timeout", "2s"]);
    daemon.unlock();
    assert!(wait_unlocked(&daemon, false), "still unlocked");
    assert_eq!(last_lock_reason(&daemon).as_deref(), Some("idle"));
    assert_refused(
        daemon.request("POST", "/v1/keys", Some(&json!({"name": "k"})), None),
        (423, "locked"),
    );
}

#[test]
fn an_unlock_may_shorten_the_session_but_never_lengthen_it() {
    let daemon = Daemon::start();
    let reply = assert_ok(daemon.request(
        "POST",
        "/v1/unlock",
        Some(&json!({"secrets": {"passphrase": PASSPHRASE},
                     "idle_timeout": 1_000_000, "absolute_timeout": 2})),
        None,
    ));
    let session = &reply["session"];
    let at = session["unlocked_at"].as_i64().expect("unlocked_at");
    assert!(
        session["idle_expires_at"].as_i64().expect("idle") - at <= 900,
        "{session}"
    );
    assert!(
        session["absolute_expires_at"].as_i64().expect("absolute") - at <= 2,
        "{session}"
    );
    assert!(wait_unlocked(&daemon, false), "still unlocked");
    assert_eq!(last_lock_reason(&daemon).as_deref(), Some("absolute"));
    assert_refused(
        daemon.request(
            "POST",
            "/v1/unlock",
            Some(&json!({"secrets": {"passphrase": PASSPHRASE}, "idle_timeout": 0})),
            None,
        ),
        (400, "invalid-argument"),
    );
}

#[test]
fn sighup_locks() {
    let daemon = Daemon::start();
    daemon.unlock();
    daemon.signal(Signal::HUP);
    assert!(wait_unlocked(&daemon, false), "SIGHUP did not lock");
    assert_eq!(last_lock_reason(&daemon).as_deref(), Some("signal"));
    // Still serving, and unlockable again.
    daemon.unlock();
}

#[test]
fn sigterm_with_requests_in_flight_stops_cleanly() {
    let mut daemon = Daemon::start_with(&["-v"]);
    daemon.unlock();
    daemon.create_key("notes");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let socket = daemon.socket().to_path_buf();
            let stop = Arc::clone(&stop);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                let Ok(mut client) = keyward_tests::daemon::Client::connect(&socket) else {
                    return answers;
                };
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let plaintext = format!("worker {i} message {n}");
                    let body = json!({"key": "notes", "plaintext": b64(plaintext.as_bytes())});
                    let body = serde_json::to_vec(&body).expect("JSON serializes");
                    let answer =
                        client
                            .connection()
                            .exchange("POST", "/v1/encrypt", Some(&body), None);
                    match answer.map(Response::from) {
                        Ok(response) => {
                            answers.push((response.status, response.json(), plaintext));
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        // Closed by the shutdown: the request was not taken.
                        Err(_) => break,
                    }
                }
                answers
            })
        })
        .collect();
    // Let the workers get going, then stop the daemon under them.
    let deadline = Instant::now() + WAIT;
    while done.load(Ordering::Relaxed) < 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    daemon.signal(Signal::TERM);
    let status = daemon.wait(WAIT).expect("the daemon exits");
    stop.store(true, Ordering::Relaxed);
    assert!(status.success(), "exit {status}: {}", daemon.stderr());
    let mut ciphertexts = Vec::new();
    for worker in workers {
        for (status, reply, plaintext) in worker.join().expect("worker") {
            match status {
                200 => ciphertexts.push((unb64(&reply["ciphertext"]), plaintext)),
                503 => assert_eq!(code(&reply), "shutting-down", "{reply}"),
                other => panic!("unexpected {other}: {reply}"),
            }
        }
    }
    assert!(ciphertexts.len() >= 200);
    assert!(!daemon.socket().exists(), "socket left behind");
    let lock_file = format!("{}.daemon.lock", daemon.store().path().display());
    assert!(
        !std::path::Path::new(&lock_file).exists(),
        "lock file left behind"
    );
    assert!(
        daemon.stderr().contains("shutting down: SIGTERM"),
        "{}",
        daemon.stderr()
    );

    // The store is consistent: the audit log verifies, the session was
    // locked for the shutdown, and everything acknowledged decrypts.
    let store = daemon.into_store();
    let verify = store.keyward_ok(&["audit", "verify"], &[]);
    assert!(verify.status.success());
    let restarted = Daemon::spawn(store, &[]);
    assert_eq!(last_lock_reason(&restarted).as_deref(), Some("shutdown"));
    restarted.unlock();
    let mut client = restarted.client();
    for (ciphertext, plaintext) in ciphertexts.iter().step_by(7) {
        let reply = assert_ok(client.request(
            "POST",
            "/v1/decrypt",
            Some(&json!({"ciphertext": b64(ciphertext)})),
            None,
        ));
        assert_eq!(unb64(&reply["plaintext"]), plaintext.as_bytes());
    }
}

#[test]
fn the_process_is_hardened() {
    let daemon = Daemon::start();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.pid()))
        .expect("/proc/PID/limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit line");
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
    // Whether mlock worked depends on RLIMIT_MEMLOCK; status says which.
    assert!(daemon.status()["memory_locked"].is_boolean());
}
