//! The `keyward` CLI with a daemon running: every command goes through
//! `keyward serve` when it serves the command's keystore, works on the store
//! when no daemon (or a daemon for another store) runs, and never talks to a
//! socket someone else could control.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use keyward_tests::daemon::{Daemon, PASSPHRASE, Store, assert_success as ok, output_with_stdin};
use serde_json::Value;

/// `keyward ARGS` on the daemon's store, talking to `socket`, with `stdin`
/// piped in and `env` added.
fn run(store: &Store, socket: &Path, args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut cmd: Command = store.command(args);
    cmd.env("KEYWARD_SOCKET", socket);
    for (k, v) in env {
        cmd.env(k, v);
    }
    output_with_stdin(cmd, stdin)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that `out`'s stderr holds `text`.
#[track_caller]
fn assert_stderr_has(out: &Output, text: &str) {
    assert!(stderr(out).contains(text), "{}", stderr(out));
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn commands_go_through_the_daemon_session() {
    let daemon = Daemon::start();
    let store = daemon.store();
    let sock = daemon.socket();
    let pass = [("KEYWARD_PASSPHRASE", PASSPHRASE)];

    // Locked daemon: a data command says so, with the daemon's remedy, and
    // does not fall back to unlocking the store itself.
    let out = run(store, sock, &["key", "list"], &[], b"");
    ok(out, "key list while locked (no secret needed)");
    let out = run(store, sock, &["key", "create", "notes"], &[], b"");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_stderr_has(&out, "locked");

    // `keyward unlock` asks the daemon what it needs and sends it.
    let out = ok(
        run(store, sock, &["unlock", "--with", "passphrase"], &pass, b""),
        "unlock",
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("unlocked with passphrase"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(daemon.status()["unlocked"], true);

    // From here on no secret is supplied: only the daemon can do the work.
    ok(
        run(store, sock, &["key", "create", "notes"], &[], b""),
        "create",
    );
    let ct = ok(
        run(
            store,
            sock,
            &["encrypt", "--key", "notes", "--context", "c1"],
            &[],
            b"dear diary",
        ),
        "encrypt",
    )
    .stdout;
    let out = ok(
        run(store, sock, &["decrypt", "--context", "c1"], &[], &ct),
        "decrypt",
    );
    assert_eq!(out.stdout, b"dear diary");
    let out = run(store, sock, &["decrypt", "--context", "other"], &[], &ct);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));

    // Rotation through the daemon; the old ciphertext still decrypts and
    // rewrap moves it to v2 without showing it.
    let out = ok(
        run(store, sock, &["key", "rotate", "notes", "--json"], &[], b""),
        "rotate",
    );
    assert_eq!(json_of(&out)["primary_version"], 2);
    let rewrapped = ok(
        run(store, sock, &["rewrap", "--context", "c1"], &[], &ct),
        "rewrap",
    )
    .stdout;
    assert_ne!(rewrapped, ct);
    let out = ok(
        run(
            store,
            sock,
            &["decrypt", "--context", "c1", "--json"],
            &[],
            &rewrapped,
        ),
        "decrypt rewrapped",
    );
    assert_eq!(out.stdout, b"dear diary");
    let summary: Value = serde_json::from_str(stderr(&out).trim()).expect("summary on stderr");
    assert_eq!(summary["version"], 2);

    // Data keys: generate writes the wrapped key; unwrap gets the same key.
    let wrapped = store.dir().join("dk.wrapped");
    let key = ok(
        run(
            store,
            sock,
            &["datakey", "generate", "--key", "notes", "--wrapped-out"]
                .into_iter()
                .chain([wrapped.to_str().expect("utf-8 path"), "--force"])
                .collect::<Vec<_>>(),
            &[],
            b"",
        ),
        "datakey generate",
    )
    .stdout;
    assert_eq!(key.len(), 32);
    let again = ok(
        run(
            store,
            sock,
            &[
                "datakey",
                "unwrap",
                "-i",
                wrapped.to_str().expect("utf-8"),
                "--force",
            ],
            &[],
            b"",
        ),
        "datakey unwrap",
    )
    .stdout;
    assert_eq!(again, key);

    // `keyward verify` through the daemon refuses a replay by default (the
    // daemon keeps the counters), and verifies it again only as archived.
    ok(
        run(
            store,
            sock,
            &["key", "create", "msgs", "--purpose", "sign"],
            &[],
            b"",
        ),
        "create signing key",
    );
    let message = store.dir().join("m");
    let signature = store.dir().join("m.sig");
    std::fs::write(&message, b"pay 10 to alice").expect("write");
    let (m, s) = (
        message.to_str().expect("utf-8"),
        signature.to_str().expect("utf-8"),
    );
    ok(
        run(
            store,
            sock,
            &[
                "sign",
                "--key",
                "msgs",
                "--audience",
                "bank",
                "-i",
                m,
                "-o",
                s,
            ],
            &[],
            b"",
        ),
        "sign",
    );
    let verify = ["verify", "--signature", s, "--audience", "bank", "-i", m];
    let out = ok(run(store, sock, &verify, &[], b""), "first verify");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("; fresh, not seen before"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(store, sock, &verify, &[], b"");
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_stderr_has(
        &out,
        "error: replayed message: counter 1 was already accepted",
    );
    let archived = [&verify[..], &["--archived"]].concat();
    ok(run(store, sock, &archived, &[], b""), "archived verify");

    // The audit log seen through the daemon verifies, with the checkpoint
    // (the daemon holds the master key).
    let out = ok(
        run(store, sock, &["audit", "verify", "--json"], &[], b""),
        "audit verify",
    );
    assert!(
        json_of(&out)["checkpoint"].is_u64(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // `status` shows the daemon's session.
    let out = ok(run(store, sock, &["status", "--json"], &[], b""), "status");
    assert_eq!(json_of(&out)["daemon"]["unlocked"], true);

    // `keyward lock`: the next data command is refused by the daemon.
    ok(run(store, sock, &["lock"], &[], b""), "lock");
    let out = run(store, sock, &["decrypt", "--context", "c1"], &[], &ct);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "no plaintext after lock");
}

#[test]
fn clients_are_managed_from_the_cli() {
    let daemon = Daemon::start();
    daemon.unlock();
    daemon.create_key("assistant-store");
    let store = daemon.store();
    let sock = daemon.socket();
    let token_file = store.dir().join("assistant.token");
    let out = ok(
        run(
            store,
            sock,
            &[
                "client",
                "add",
                "assistant",
                "--allow",
                "datakey,decrypt",
                "--keys",
                "assistant-store",
                "--token-out",
                token_file.to_str().expect("utf-8"),
            ],
            &[],
            b"",
        ),
        "client add",
    );
    assert!(
        out.stdout.is_empty(),
        "the token is not printed when written to a file"
    );
    let token = std::fs::read_to_string(&token_file).expect("token file");
    let token = token.trim();
    assert!(token.starts_with("kwt_"), "{token}");
    let mode = std::fs::metadata(&token_file)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The token works as that client, and only for its grant.
    let (status, body) = daemon.request("GET", "/v1/keys", None, Some(token));
    assert_eq!(status, 403, "{body}");
    let (status, _) = daemon.request(
        "POST",
        "/v1/datakey/generate",
        Some(&serde_json::json!({"key": "assistant-store"})),
        Some(token),
    );
    assert_eq!(status, 200);

    let out = ok(
        run(store, sock, &["client", "list", "--json"], &[], b""),
        "list",
    );
    let list = json_of(&out);
    assert_eq!(list[0]["name"], "assistant");
    assert_eq!(list[0]["allow"], serde_json::json!(["decrypt", "datakey"]));
    assert!(list[0]["revoked_at"].is_null());

    let out = ok(
        run(store, sock, &["client", "revoke", "--all"], &[], b""),
        "revoke --all",
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked 1 client"));
    let (status, body) = daemon.request(
        "POST",
        "/v1/datakey/generate",
        Some(&serde_json::json!({"key": "assistant-store"})),
        Some(token),
    );
    assert_eq!(status, 401, "{body}");

    // Bad grants are usage errors, named.
    let out = run(
        store,
        sock,
        &["client", "add", "x", "--allow", "everything", "--keys", "*"],
        &[],
        b"",
    );
    assert_ne!(out.status.code(), Some(0));
    assert_stderr_has(&out, "unknown operation 'everything'");
}

#[test]
fn without_a_daemon_the_cli_works_on_the_store() {
    let store = Store::new();
    let pass = [("KEYWARD_PASSPHRASE", PASSPHRASE)];
    // A socket path with nothing behind it: no daemon.
    let missing = store.dir().join("nowhere.sock");
    ok(
        run(&store, &missing, &["key", "create", "k"], &pass, b""),
        "create",
    );
    let out = ok(
        run(&store, &missing, &["client", "list", "--json"], &[], b""),
        "client list on the store",
    );
    assert_eq!(json_of(&out), serde_json::json!([]));
    let out = run(&store, &missing, &["unlock"], &pass, b"");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_stderr_has(&out, "no daemon is serving");

    // A stale socket file left by a killed daemon: no daemon either.
    let stale_dir = store.dir().join("stale");
    std::fs::create_dir(&stale_dir).expect("mkdir");
    std::fs::set_permissions(&stale_dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let stale = stale_dir.join("keyward.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    assert!(stale.exists());
    ok(
        run(&store, &stale, &["key", "rotate", "k"], &pass, b""),
        "rotate",
    );
    let out = ok(
        run(&store, &stale, &["key", "show", "k", "--json"], &[], b""),
        "show",
    );
    assert_eq!(json_of(&out)["primary_version"], 2);
    let out = run(&store, &stale, &["lock"], &[], b"");
    assert_stderr_has(&out, "no daemon is serving");
}

#[test]
fn a_daemon_for_another_store_is_not_used() {
    let daemon = Daemon::start();
    daemon.unlock();
    daemon.create_key("theirs");
    let mine = Store::new();
    let pass = [("KEYWARD_PASSPHRASE", PASSPHRASE)];
    let out = ok(
        run(
            &mine,
            daemon.socket(),
            &["key", "list", "--json"],
            &pass,
            b"",
        ),
        "list my store",
    );
    assert_eq!(json_of(&out), serde_json::json!([]), "my store has no keys");
    let out = run(&mine, daemon.socket(), &["lock"], &[], b"");
    assert_stderr_has(&out, "no daemon is serving");
    assert_eq!(
        daemon.status()["unlocked"],
        true,
        "their daemon stays unlocked"
    );
}

#[test]
fn an_untrusted_socket_is_never_sent_a_secret() {
    let store = Store::new();
    let dir = store.dir().join("evil");
    std::fs::create_dir(&dir).expect("mkdir");
    let sock = dir.join("keyward.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    // Others may write to the socket: someone else could have put it there.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let pass = [("KEYWARD_PASSPHRASE", PASSPHRASE)];
    let out = run(&store, &sock, &["unlock"], &pass, b"");
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert_stderr_has(&out, "refusing to talk");
    assert_stderr_has(&out, "others may write");
    // A world-writable directory is refused the same way.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = run(&store, &sock, &["key", "list"], &pass, b"");
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert_stderr_has(&out, "directory");
    // Nothing ever connected.
    assert_eq!(
        listener.accept().map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock)
    );
}
