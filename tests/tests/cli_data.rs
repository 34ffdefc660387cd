//! End-to-end tests of keys and data through the `keyward` binary: key
//! management, encrypt/decrypt round trips through stdin and files, the
//! failures a user meets (unknown key, retired version, tampered or
//! truncated data, wrong context), sign/verify, export-public and the audit
//! log.

mod common;

use common::{Env, PASSPHRASE, base64_decode};
use keyward_tests::daemon::field_of_each;

/// A keystore with an encrypt key `notes`.
fn with_notes_key() -> Env {
    let env = Env::ready();
    env.unlocked(&["key", "create", "notes"], b"").ok();
    env
}

/// Deterministic test data of `len` bytes.
fn data(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect()
}

const DECRYPTION_FAILED: &str =
    "decryption failed: the data was modified, or the key, version or context does not match";
const DECRYPTION_FAILED_HINT: &str = "check that --context is the one used to encrypt and that \
     the data was encrypted with a key of this keystore; otherwise the data was modified or \
     damaged";

#[test]
fn key_create_list_show() {
    let env = Env::ready();
    let run = env
        .unlocked(
            &[
                "key",
                "create",
                "health",
                "--class",
                "sensitive",
                "--rotation-period",
                "90d",
                "--usage-limit",
                "1000",
            ],
            b"",
        )
        .ok();
    assert!(
        run.out().starts_with("created key health\n"),
        "{}",
        run.out()
    );
    env.unlocked(&["key", "create", "msgs", "--purpose", "sign"], b"")
        .ok();
    let show = env
        .keyward(&["key", "show", "health", "--json"])
        .ok()
        .json();
    assert_eq!(show["name"], "health");
    assert_eq!(show["purpose"], "encrypt");
    assert_eq!(show["class"], "sensitive");
    assert_eq!(show["rotation_period"], 90 * 86_400);
    assert_eq!(show["usage_limit"], 1000);
    assert_eq!(show["primary_version"], 1);
    assert_eq!(show["versions"].as_array().expect("versions").len(), 1);
    let list = env.keyward(&["key", "list", "--json"]).ok().json();
    let names = field_of_each(&list, "name");
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"health") && names.contains(&"msgs"));
    let text = env.keyward(&["key", "list"]).ok().out();
    assert!(text.contains("health") && text.contains("90d"), "{text}");
    // Creating it twice is refused.
    env.unlocked(&["key", "create", "health"], b"")
        .fails_with(6)
        .hint("choose another name, or add a version with `keyward key rotate health`");
}

#[test]
fn secret_class_needs_the_daemon() {
    let env = Env::ready();
    env.unlocked(&["key", "create", "pw", "--class", "secret"], b"")
        .fails_with(6)
        .hint(
            "secret keys live only in the memory of `keyward serve`; use --class sensitive, \
             private or general for a key kept in the keystore",
        );
}

#[test]
fn unknown_key() {
    let env = Env::ready();
    env.unlocked(&["encrypt", "--key", "nope"], b"data")
        .fails_with(4)
        .diagnosis(
            "no key named \"nope\"",
            "list keys with `keyward key list`, or create it with `keyward key create nope`",
        );
    env.keyward(&["key", "show", "nope"]).fails_with(4);
}

#[test]
fn stdin_round_trip() {
    let env = with_notes_key();
    let plaintext = b"dentist on tuesday at 10";
    let ciphertext = env
        .unlocked(&["encrypt", "--key", "notes"], plaintext)
        .ok()
        .stdout;
    assert!(ciphertext.len() > plaintext.len());
    assert!(
        !ciphertext.windows(plaintext.len()).any(|w| w == plaintext),
        "plaintext visible in the ciphertext"
    );
    let run = env.unlocked(&["decrypt", "--json"], &ciphertext).ok();
    assert_eq!(run.stdout, plaintext);
    // The --json summary goes to stderr; stdout is the data.
    let summary: serde_json::Value =
        serde_json::from_str(run.stderr.trim()).expect("JSON summary on stderr");
    assert_eq!(summary["key"], "notes");
    assert_eq!(summary["version"], 1);
    assert_eq!(summary["bytes"], plaintext.len());
}

#[test]
fn empty_input_round_trip() {
    let env = with_notes_key();
    let ciphertext = env
        .unlocked(&["encrypt", "--key", "notes"], b"")
        .ok()
        .stdout;
    assert!(
        !ciphertext.is_empty(),
        "even empty data gets a header and a tag"
    );
    let plain = env.unlocked(&["decrypt"], &ciphertext).ok().stdout;
    assert!(plain.is_empty());

    // Through files too: an empty output file is created.
    std::fs::write(env.path("empty"), b"").expect("write");
    env.unlocked(
        &[
            "encrypt",
            "--key",
            "notes",
            "-i",
            &env.arg("empty"),
            "-o",
            &env.arg("empty.kw"),
        ],
        b"",
    )
    .ok();
    env.unlocked(
        &[
            "decrypt",
            "-i",
            &env.arg("empty.kw"),
            "-o",
            &env.arg("empty.out"),
        ],
        b"",
    )
    .ok();
    assert_eq!(std::fs::read(env.path("empty.out")).expect("read"), b"");
}

#[test]
fn file_round_trip_several_mebibytes() {
    let env = with_notes_key();
    let plaintext = data(3 * 1024 * 1024 + 17);
    std::fs::write(env.path("big"), &plaintext).expect("write");
    env.unlocked(
        &[
            "encrypt",
            "--key",
            "notes",
            "--context",
            "files/big",
            "-i",
            &env.arg("big"),
            "-o",
            &env.arg("big.kw"),
        ],
        b"",
    )
    .ok();
    env.unlocked(
        &[
            "decrypt",
            "--context",
            "files/big",
            "-i",
            &env.arg("big.kw"),
            "-o",
            &env.arg("big.out"),
        ],
        b"",
    )
    .ok();
    assert_eq!(common::mode(&env.path("big.out")), 0o600);
    assert!(std::fs::read(env.path("big.out")).expect("read") == plaintext);
    // `-` means stdin and stdout.
    let ciphertext = std::fs::read(env.path("big.kw")).expect("read");
    let run = env
        .unlocked(
            &["decrypt", "--context", "files/big", "-i", "-", "-o", "-"],
            &ciphertext,
        )
        .ok();
    assert!(run.stdout == plaintext);
}

#[test]
fn wrong_context_fails() {
    let env = with_notes_key();
    let ciphertext = env
        .unlocked(&["encrypt", "--key", "notes", "--context", "a"], b"x")
        .ok()
        .stdout;
    env.unlocked(&["decrypt", "--context", "b"], &ciphertext)
        .fails_with(5)
        .diagnosis(DECRYPTION_FAILED, DECRYPTION_FAILED_HINT);
    env.unlocked(&["decrypt"], &ciphertext).fails_with(5);
}

#[test]
fn tampered_ciphertext_leaves_no_output_file() {
    let env = with_notes_key();
    let plaintext = data(100_000);
    let mut ciphertext = env
        .unlocked(&["encrypt", "--key", "notes"], &plaintext)
        .ok()
        .stdout;
    let last = ciphertext.len() - 1;
    ciphertext[last] ^= 0x01;
    std::fs::write(env.path("bad.kw"), &ciphertext).expect("write");
    env.unlocked(
        &["decrypt", "-i", &env.arg("bad.kw"), "-o", &env.arg("out")],
        b"",
    )
    .fails_with(5)
    .diagnosis(DECRYPTION_FAILED, DECRYPTION_FAILED_HINT);
    assert!(!env.path("out").exists(), "a failed decryption left a file");
    let leftovers: Vec<_> = std::fs::read_dir(env.dir.path())
        .expect("list")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // A flipped byte in the middle is caught as well.
    let mut ciphertext = env
        .unlocked(&["encrypt", "--key", "notes"], &plaintext)
        .ok()
        .stdout;
    let mid = ciphertext.len() / 2;
    ciphertext[mid] ^= 0x80;
    env.unlocked(&["decrypt"], &ciphertext).fails_with(5);
}

#[test]
fn truncated_stream() {
    let env = with_notes_key();
    let ciphertext = env
        .unlocked(&["encrypt", "--key", "notes"], &data(5000))
        .ok()
        .stdout;
    // Cut right after the header: a stream whose final chunk is missing.
    let (_, header) = keyward_kms::crypto::stream::read_header(&mut &ciphertext[..])
        .expect("the CLI writes a valid header");
    let truncated = &ciphertext[..header.len()];
    env.unlocked(&["decrypt", "-o", &env.arg("out")], truncated)
        .fails_with(5)
        .diagnosis(
            "the encrypted stream is truncated: its final chunk is missing",
            "the data was cut short (an interrupted copy or download?); decrypt a complete copy",
        );
    assert!(!env.path("out").exists());
    // Any other cut fails too (as truncated or as failed authentication).
    for cut in [1, 16, ciphertext.len() / 2, ciphertext.len() - 1] {
        env.unlocked(&["decrypt"], &ciphertext[..cut]).fails_with(5);
    }
}

#[test]
fn not_keyward_data() {
    let env = with_notes_key();
    let run = env
        .unlocked(&["decrypt"], b"this is not a keyward ciphertext at all")
        .fails_with(5);
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
}

#[test]
fn rotation_keeps_old_data_readable_and_retire_refuses_it() {
    let env = with_notes_key();
    let old = env
        .unlocked(&["encrypt", "--key", "notes"], b"written under v1")
        .ok()
        .stdout;
    let run = env.unlocked(&["key", "rotate", "notes"], b"").ok();
    assert!(
        run.out()
            .starts_with("key notes: version 2 is now primary; older versions still decrypt\n"),
        "{}",
        run.out()
    );
    let new = env
        .unlocked(&["encrypt", "--key", "notes"], b"written under v2")
        .ok()
        .stdout;
    let run = env.unlocked(&["decrypt", "--json"], &old).ok();
    assert_eq!(run.stdout, b"written under v1");
    assert!(run.stderr.contains("\"version\":1"), "{}", run.stderr);
    let run = env.unlocked(&["decrypt", "--json"], &new).ok();
    assert!(run.stderr.contains("\"version\":2"), "{}", run.stderr);

    let run = env
        .unlocked(&["key", "retire", "notes", "--min-version", "2"], b"")
        .ok();
    assert!(
        run.out()
            .starts_with("key notes: versions below 2 no longer decrypt\n"),
        "{}",
        run.out()
    );
    env.unlocked(&["decrypt"], &old).fails_with(6).diagnosis(
        "version 1 of key \"notes\" is retired (minimum decryption version is 2)",
        "to read it, lower the minimum with `keyward key retire notes --min-version 1`, \
             then re-encrypt the data under the current version",
    );
    assert_eq!(
        env.unlocked(&["decrypt"], &new).ok().stdout,
        b"written under v2"
    );
    // The remedy the hint gives works.
    env.unlocked(&["key", "retire", "notes", "--min-version", "1"], b"")
        .ok();
    assert_eq!(
        env.unlocked(&["decrypt"], &old).ok().stdout,
        b"written under v1"
    );
    // A minimum above the primary version is refused.
    env.unlocked(&["key", "retire", "notes", "--min-version", "3"], b"")
        .fails_with(2);
}

#[test]
fn sign_verify_and_export_public() {
    let env = Env::ready();
    env.unlocked(&["key", "create", "msgs", "--purpose", "sign"], b"")
        .ok();
    let message = b"the assistant says: meeting moved to 3pm";
    std::fs::write(env.path("msg"), message).expect("write");
    env.unlocked(
        &[
            "sign",
            "--key",
            "msgs",
            "--audience",
            "calendar",
            "-i",
            &env.arg("msg"),
            "-o",
            &env.arg("msg.sig"),
        ],
        b"",
    )
    .ok();
    // verify needs no secret.
    let run = env
        .keyward(&[
            "verify",
            "--signature",
            &env.arg("msg.sig"),
            "--audience",
            "calendar",
            "-i",
            &env.arg("msg"),
            "--json",
        ])
        .ok();
    let verified = run.json();
    assert_eq!(verified["key"], "msgs");
    assert_eq!(verified["version"], 1);
    assert_eq!(verified["audience"], "calendar");

    // A modified message does not verify.
    let sig = env.arg("msg.sig");
    let run = env.run(
        &["verify", "--signature", &sig, "--audience", "calendar"],
        b"the assistant says: meeting moved to 4pm",
        &[],
    );
    let run = run.fails_with(5);
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);

    // Export: PEM SubjectPublicKeyInfo for Ed25519 (RFC 8410).
    let pem = env.keyward(&["export-public", "msgs"]).ok().out();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    assert!(
        pem.trim_end().ends_with("-----END PUBLIC KEY-----"),
        "{pem}"
    );
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64_decode(&body);
    assert_eq!(der.len(), 44);
    assert_eq!(hex::encode(&der[..12]), "302a300506032b6570032100");
    let json = env
        .keyward(&["export-public", "msgs", "--version", "1", "--json"])
        .ok()
        .json();
    assert_eq!(
        json["raw_hex"].as_str(),
        Some(hex::encode(&der[12..]).as_str())
    );
    assert!(
        ed25519_dalek::VerifyingKey::from_bytes(der[12..].try_into().expect("32 bytes")).is_ok()
    );
    // openssl reads it, where installed (scripts/test.sh installs it).
    std::fs::write(env.path("msgs.pem"), &pem).expect("write");
    if let Ok(out) = std::process::Command::new("openssl")
        .args(["pkey", "-pubin", "-noout", "-text", "-in"])
        .arg(env.path("msgs.pem"))
        .output()
    {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("ED25519"));
    }
    env.keyward(&["export-public", "msgs", "--version", "9"])
        .fails_with(4)
        .hint("see its versions with `keyward key show msgs`");
}

#[test]
fn verify_refuses_a_replay_unless_archived() {
    let env = Env::ready();
    env.unlocked(&["key", "create", "msgs", "--purpose", "sign"], b"")
        .ok();
    std::fs::write(env.path("m"), b"pay 10 to alice").expect("write");
    let (msg, sig) = (env.arg("m"), env.arg("m.sig"));
    env.unlocked(
        &[
            "sign",
            "--key",
            "msgs",
            "--audience",
            "bank",
            "-i",
            &msg,
            "-o",
            &sig,
        ],
        b"",
    )
    .ok();
    let verify = [
        "verify",
        "--signature",
        &sig,
        "--audience",
        "bank",
        "-i",
        &msg,
    ];

    // The first verification accepts the message and says the freshness
    // window and the replay counter were checked.
    let first = env.keyward(&verify).ok().out();
    assert!(
        first.starts_with("good signature by key msgs version 1 "),
        "{first}"
    );
    assert!(
        first.trim_end().ends_with("; fresh, not seen before"),
        "{first}"
    );

    // The same signature again is a replay: refused, exit 5, every time.
    for _ in 0..2 {
        env.keyward(&verify).fails_with(5).diagnosis(
            "replayed message: counter 1 was already accepted",
            "this signed message was already accepted once; ask for a fresh one",
        );
    }

    // An archived signature is verified on request, and the output says
    // what was not checked.
    let mut archived = verify.to_vec();
    archived.push("--archived");
    let out = env.keyward(&archived).ok().out();
    assert!(
        out.trim_end()
            .ends_with("; freshness and replay not checked (--archived)"),
        "{out}"
    );
    archived.push("--json");
    let json = env.keyward(&archived).ok().json();
    assert_eq!(json["freshness_checked"], false);
    assert_eq!(json["counter"], 1);

    // A forged message is refused with or without --archived.
    std::fs::write(env.path("m"), b"pay 1000 to mallory").expect("write");
    env.keyward(&archived[..archived.len() - 1]).fails_with(5);

    // The refusals and the acceptance are in a log that still verifies.
    env.keyward(&["audit", "verify"]).ok();
}

#[test]
fn rotation_period_beyond_100_years_is_a_usage_error() {
    let env = Env::ready();
    let run = env
        .unlocked(
            &[
                "key",
                "create",
                "k",
                "--rotation-period",
                "18446744073709551615",
            ],
            b"",
        )
        .fails_with(2);
    assert!(
        run.stderr.starts_with(
            "error: invalid argument: rotation period must be at most 100 years (3153600000 s)"
        ),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("disk"), "{}", run.stderr);
    // Nothing was created, and 100 years is accepted.
    env.keyward(&["key", "show", "k"]).fails_with(4);
    env.unlocked(&["key", "create", "k", "--rotation-period", "5200w"], b"")
        .ok();
}

#[test]
fn purposes_do_not_mix() {
    let env = Env::ready();
    env.unlocked(&["key", "create", "msgs", "--purpose", "sign"], b"")
        .ok();
    env.unlocked(&["key", "create", "notes"], b"").ok();
    env.unlocked(&["encrypt", "--key", "msgs"], b"x")
        .fails_with(6);
    env.unlocked(&["sign", "--key", "notes"], b"x")
        .fails_with(6);
    env.keyward(&["export-public", "notes"]).fails_with(6);
}

#[test]
fn audit_log_records_and_verifies() {
    let env = with_notes_key();
    env.unlocked(&["encrypt", "--key", "notes"], b"secret-marker-123")
        .ok();
    env.unlocked(&["key", "rotate", "notes"], b"").ok();
    let run = env.keyward(&["audit", "verify", "--json"]).ok();
    let summary = run.json();
    let records = summary["records"].as_u64().expect("records");
    assert!(records >= 4, "{summary}");
    assert_eq!(summary["head"].as_str().map(str::len), Some(64));
    let text = env.keyward(&["audit", "verify"]).ok().out();
    assert!(text.starts_with("audit log verified: "), "{text}");

    let shown = env.keyward(&["audit", "show", "--json"]).ok();
    let list = shown.json();
    let list = list.as_array().expect("array");
    assert_eq!(list.len() as u64, records);
    let seqs: Vec<u64> = list
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=records).collect::<Vec<_>>());
    for r in list {
        for field in ["ts", "action", "status", "fields", "prev", "hash"] {
            assert!(r.get(field).is_some(), "record lacks {field}: {r}");
        }
    }
    let all = shown.out();
    assert!(!all.contains("secret-marker-123"));
    assert!(!all.contains(PASSPHRASE));
    // --since skips earlier records.
    let tail = env
        .keyward(&["audit", "show", "--json", "--since", "3"])
        .ok()
        .json();
    assert_eq!(tail[0]["seq"], 3);
    assert_eq!(tail.as_array().expect("array").len() as u64, records - 2);
    let text = env.keyward(&["audit", "show"]).ok().out();
    assert_eq!(text.lines().count() as u64, records);
}
