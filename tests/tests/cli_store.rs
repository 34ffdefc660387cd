//! End-to-end tests of the keystore life cycle through the `keyward`
//! binary: init, status, protectors, unlocking with each kind of secret,
//! and master-key rotation.

mod common;

use common::{Env, FAST_ARGON2, PASSPHRASE, mode};
use keyward_tests::daemon::field_of_each;

const UNLOCK_HINT: &str = "unlock with a passphrase (--passphrase-fd N or KEYWARD_PASSPHRASE) \
     or the recovery key (--recovery-key-file FILE or KEYWARD_RECOVERY_KEY), or run keyward on \
     a terminal to be asked";

#[test]
fn init_creates_store_and_private_recovery_key() {
    let env = Env::empty();
    let run = env
        .keyward(&[
            "init",
            "--recovery-key-out",
            env.recovery_key.to_str().expect("utf-8"),
        ])
        .ok();
    assert!(
        run.out()
            .starts_with(&format!("created keystore {}\n", env.store.display())),
        "{}",
        run.out()
    );
    assert!(env.store.is_file());
    assert_eq!(mode(&env.recovery_key), 0o600);
    let key = env.recovery_key_text();
    assert!(key.len() >= 20, "recovery key looks short: {key:?}");
    // The recovery key is not printed anywhere when it goes to a file.
    assert!(!run.out().contains(&key));
    assert!(!run.stderr.contains(&key));

    let status = env.keyward(&["status", "--json"]).ok().json();
    assert_eq!(status["protectors"], 1);
    assert_eq!(status["keys"], 0);
    assert_eq!(status["mk_epoch"], 1);
    assert_eq!(status["unlocked"], false);
    assert_eq!(
        status["path"].as_str(),
        Some(env.store.to_str().expect("utf-8"))
    );
    let text = env.keyward(&["status"]).ok().out();
    assert!(text.contains("protectors        1\n"), "{text}");
}

#[test]
fn init_refuses_an_existing_store() {
    let env = Env::with_recovery();
    let before = std::fs::read(&env.store).expect("read store");
    let out = env.path("second.key");
    env.keyward(&["init", "--recovery-key-out", out.to_str().expect("utf-8")])
        .fails_with(6)
        .diagnosis(
            &format!("a keystore already exists at {}", env.store.display()),
            "keyward never overwrites a keystore; choose another path with --store, or move the \
             existing one away first",
        );
    assert!(!out.exists(), "a recovery key for nothing was written");
    assert_eq!(std::fs::read(&env.store).expect("read store"), before);
}

#[test]
fn init_with_passphrase_enrolls_both() {
    let env = Env::empty();
    let mut args = vec![
        "init",
        "--passphrase",
        "--recovery-key-out",
        env.recovery_key.to_str().expect("utf-8"),
    ];
    args.extend(FAST_ARGON2);
    env.unlocked(&args, b"").ok();
    let list = env.keyward(&["protectors", "list", "--json"]).ok().json();
    let kinds = field_of_each(&list, "kind");
    assert_eq!(kinds, ["recovery", "passphrase"]);
    // The passphrase unlocks.
    env.unlocked(&["key", "create", "notes"], b"").ok();
}

#[test]
fn unlock_with_each_secret_source() {
    let env = Env::ready();
    // Environment passphrase.
    env.unlocked(&["key", "create", "a"], b"").ok();
    // Passphrase from a file descriptor: stdin is fd 0.
    env.run(
        &["key", "create", "b", "--passphrase-fd", "0"],
        format!("{PASSPHRASE}\n").as_bytes(),
        &[],
    )
    .ok();
    // Recovery key from a file and from the environment.
    let rk = env.recovery_key.to_str().expect("utf-8").to_owned();
    env.keyward(&["key", "create", "c", "--recovery-key-file", &rk])
        .ok();
    env.run(
        &["key", "create", "d"],
        b"",
        &[("KEYWARD_RECOVERY_KEY", &env.recovery_key_text())],
    )
    .ok();
    let keys = env.keyward(&["key", "list", "--json"]).ok().json();
    assert_eq!(keys.as_array().expect("array").len(), 4);
}

#[test]
fn locked_without_a_secret() {
    let env = Env::ready();
    env.keyward(&["key", "create", "notes"])
        .fails_with(3)
        .diagnosis(
            "the keystore is locked and no secret was supplied to unlock it",
            UNLOCK_HINT,
        );
}

#[test]
fn wrong_passphrase() {
    let env = Env::ready();
    env.run(
        &["key", "create", "notes"],
        b"",
        &[("KEYWARD_PASSPHRASE", "not the passphrase")],
    )
    .fails_with(3)
    .diagnosis(
        "wrong passphrase",
        "check the passphrase (--passphrase-fd or KEYWARD_PASSPHRASE), or unlock with the \
         recovery key (--recovery-key-file or KEYWARD_RECOVERY_KEY)",
    );
    // Nothing was created.
    let keys = env.keyward(&["key", "list", "--json"]).ok().json();
    assert_eq!(keys.as_array().expect("array").len(), 0);
}

#[test]
fn wrong_recovery_key() {
    let env = Env::with_recovery();
    let key = env.recovery_key_text();
    // Same shape, one character changed.
    let mut forged: Vec<char> = key.chars().collect();
    let i = forged
        .iter()
        .rposition(char::is_ascii_alphanumeric)
        .expect("an alphanumeric character");
    forged[i] = if forged[i] == 'A' || forged[i] == 'a' {
        'B'
    } else if forged[i].is_ascii_lowercase() {
        'a'
    } else {
        'A'
    };
    let forged: String = forged.into_iter().collect();
    let run = env
        .run(
            &["key", "create", "notes"],
            b"",
            &[("KEYWARD_RECOVERY_KEY", &forged)],
        )
        .fails_with(3);
    assert!(
        run.stderr.starts_with("error: wrong recovery key")
            || run.stderr.starts_with("error: not a recovery key"),
        "{}",
        run.stderr
    );
    env.run(
        &["key", "create", "notes"],
        b"",
        &[("KEYWARD_RECOVERY_KEY", "garbage")],
    )
    .fails_with(3);
}

#[test]
fn removing_the_last_protector_is_refused() {
    let env = Env::with_recovery();
    let list = env.keyward(&["protectors", "list", "--json"]).ok().json();
    let id = list[0]["id"].as_u64().expect("id").to_string();
    let rk = env.recovery_key.to_str().expect("utf-8").to_owned();
    env.keyward(&["protectors", "remove", &id, "--recovery-key-file", &rk])
        .fails_with(6)
        .diagnosis(
            "refusing to remove the last protector: the keystore could never be unlocked again",
            "enroll another protector first (`keyward enroll passphrase` or `keyward enroll \
             recovery`), then remove this one",
        );

    // With a passphrase enrolled, the recovery key can go; the passphrase
    // still unlocks.
    env.enroll_passphrase().ok();
    env.unlocked(&["protectors", "remove", &id], b"").ok();
    let list = env.keyward(&["protectors", "list", "--json"]).ok().json();
    assert_eq!(list.as_array().expect("array").len(), 1);
    assert_eq!(list[0]["kind"], "passphrase");
    env.unlocked(&["key", "create", "notes"], b"").ok();
    env.unlocked(&["protectors", "remove", "999"], b"")
        .fails_with(4);
}

#[test]
fn enroll_passphrase_without_terminal_needs_the_recovery_key() {
    let env = Env::with_recovery();
    let mut args = vec!["enroll", "passphrase"];
    args.extend(FAST_ARGON2);
    env.unlocked(&args, b"").fails_with(3).diagnosis(
        "the keystore must be unlocked with the recovery key to enroll a passphrase without a \
         terminal",
        "pass --recovery-key-file FILE or KEYWARD_RECOVERY_KEY; --passphrase-fd or \
         KEYWARD_PASSPHRASE gives the new passphrase",
    );
    env.run(
        &args,
        b"",
        &[("KEYWARD_RECOVERY_KEY", &env.recovery_key_text())],
    )
    .fails_with(3)
    .diagnosis(
        "a passphrase is needed and there is no terminal to ask for it",
        "pass it with --passphrase-fd N or KEYWARD_PASSPHRASE, or run keyward on a terminal",
    );
}

#[test]
fn enroll_a_second_recovery_key() {
    let env = Env::ready();
    let out = env.path("second.key");
    env.unlocked(
        &[
            "enroll",
            "recovery",
            "--label",
            "safe",
            "--recovery-key-out",
            out.to_str().expect("utf-8"),
        ],
        b"",
    )
    .ok();
    assert_eq!(mode(&out), 0o600);
    let second = std::fs::read_to_string(&out).expect("read");
    assert_ne!(second.trim(), env.recovery_key_text());
    env.keyward(&[
        "key",
        "create",
        "notes",
        "--recovery-key-file",
        out.to_str().expect("utf-8"),
    ])
    .ok();
    let list = env.keyward(&["protectors", "list"]).ok().out();
    assert!(list.contains("safe"), "{list}");
}

#[test]
fn master_rotation_keeps_every_key_and_protector() {
    let env = Env::ready();
    env.unlocked(&["key", "create", "notes"], b"").ok();
    let ciphertext = env
        .unlocked(&["encrypt", "--key", "notes"], b"before rotation")
        .ok()
        .stdout;
    let run = env.unlocked(&["master", "rotate", "--json"], b"").ok();
    assert_eq!(run.json()["mk_epoch"], 2);
    let status = env.keyward(&["status", "--json"]).ok().json();
    assert_eq!(status["mk_epoch"], 2);
    // Both protectors still unlock, and old data still decrypts.
    let plain = env.unlocked(&["decrypt"], &ciphertext).ok().stdout;
    assert_eq!(plain, b"before rotation");
    let rk = env.recovery_key.to_str().expect("utf-8").to_owned();
    let plain = env
        .run(&["decrypt", "--recovery-key-file", &rk], &ciphertext, &[])
        .ok()
        .stdout;
    assert_eq!(plain, b"before rotation");
}

#[test]
fn store_file_holds_no_secret() {
    let env = Env::ready();
    env.unlocked(&["key", "create", "notes"], b"").ok();
    let plaintext = b"my bank PIN is 4711-unique-marker";
    env.unlocked(&["encrypt", "--key", "notes"], plaintext).ok();
    let mut bytes = std::fs::read(&env.store).expect("read store");
    // WAL mode: recent writes may still be in the -wal file.
    if let Ok(wal) = std::fs::read(env.path("keystore.db-wal")) {
        bytes.extend(wal);
    }
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(PASSPHRASE.as_bytes()));
    assert!(!contains(env.recovery_key_text().as_bytes()));
    assert!(!contains(b"4711-unique-marker"));
    assert_eq!(mode(&env.store), 0o600);
}
