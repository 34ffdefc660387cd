//! End-to-end tests of the `keyward` binary that need no keystore: help,
//! argument parsing, secrets refused on the command line, where the store
//! is looked for, and the checks `init` makes before creating anything.

mod common;

use std::process::Command;

use common::{Env, base64_decode};

const NO_STORE_HINT: &str = "create one with `keyward init`, or point --store or \
     KEYWARD_STORE at an existing keystore";

#[test]
fn help_lists_commands_secret_sources_and_exit_codes() {
    let env = Env::empty();
    let run = env.keyward(&["--help"]).ok();
    let out = run.out();
    for cmd in [
        "init",
        "status",
        "enroll",
        "protectors",
        "key",
        "encrypt",
        "decrypt",
        "sign",
        "verify",
        "export-public",
        "master",
        "audit",
    ] {
        assert!(
            out.contains(&format!("\n  {cmd} ")),
            "--help lacks {cmd}:\n{out}"
        );
    }
    assert!(out.contains("Secrets are never command-line arguments"));
    assert!(out.contains("KEYWARD_PASSPHRASE"));
    assert!(out.contains("  3    authentication failed or needed"));
    assert!(out.contains("  5    data integrity"));
    assert!(out.contains("docs/CLI.md"));
}

#[test]
fn version_prints() {
    let run = Env::empty().keyward(&["--version"]).ok();
    assert!(run.out().starts_with("keyward "), "{}", run.out());
}

#[test]
fn secrets_are_never_accepted_from_argv() {
    let env = Env::empty();
    for args in [
        &["--passphrase", "hunter2", "status"][..],
        &["status", "--passphrase=hunter2"],
        &["decrypt", "--recovery-key", "ABCD-EFGH"],
        &["enroll", "passphrase", "--passphrase", "hunter2"],
        &["encrypt", "--key", "k", "--pin", "123456"],
        &["init", "--passphrase", "hunter2"],
    ] {
        let run = env.keyward(args).fails_with(2);
        assert!(
            run.stderr.contains("unexpected argument"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(!env.store.exists(), "{args:?} created a keystore");
    }
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::empty();
    env.keyward(&[]).fails_with(2);
    env.keyward(&["frobnicate"]).fails_with(2);
    env.keyward(&["key", "create"]).fails_with(2);
    let run = env.keyward(&["key", "create", "Bad/Name"]).fails_with(2);
    assert!(run.stderr.contains("only a-z, 0-9"), "{}", run.stderr);
    env.keyward(&["key", "create", "k", "--class", "topsecret"])
        .fails_with(2);
    env.keyward(&["key", "create", "k", "--rotation-period", "soon"])
        .fails_with(2);
    env.keyward(&["key", "retire", "k", "--min-version", "0"])
        .fails_with(2);
    env.keyward(&["status", "--passphrase-fd", "-3"])
        .fails_with(2);
    env.keyward(&["init", "--argon2-t", "1", "--recovery-key-out", "rk"])
        .fails_with(2);
    assert!(!env.store.exists());
}

#[test]
fn missing_store_says_run_init() {
    let env = Env::empty();
    let store = env.store.display().to_string();
    for args in [
        &["status"][..],
        &["key", "list"],
        &["protectors", "list"],
        &["audit", "verify"],
        &["export-public", "k"],
    ] {
        env.keyward(args)
            .fails_with(4)
            .diagnosis(&format!("no keystore at {store}"), NO_STORE_HINT);
    }
    // Data commands check the store before reading or writing any data.
    let out = env.path("out.bin");
    env.unlocked(
        &["encrypt", "--key", "k", "-o", out.to_str().expect("utf-8")],
        b"data",
    )
    .fails_with(4)
    .hint(NO_STORE_HINT);
    assert!(!out.exists());
    assert!(!env.store.exists(), "looking for a keystore created one");
}

#[test]
fn default_store_is_under_xdg_data_home_then_home() {
    let env = Env::empty();
    // `cmd` (a `keyward status`) fails, naming `store` as the keystore it
    // looked for.
    let looked_for = |cmd: Command, store: &str| {
        let run = common::run_command(cmd, b"").fails_with(4);
        let store = env.dir.path().join(store);
        assert!(
            run.stderr
                .contains(&format!("no keystore at {}\n", store.display())),
            "{}",
            run.stderr
        );
    };
    looked_for(env.bare_command(&["status"]), "xdg/keyward/keystore.db");

    let mut cmd = env.bare_command(&["status"]);
    cmd.env_remove("XDG_DATA_HOME");
    looked_for(cmd, ".local/share/keyward/keystore.db");

    let mut cmd = env.bare_command(&["status"]);
    cmd.env("KEYWARD_STORE", env.path("elsewhere.db"));
    let run = common::run_command(cmd, b"").fails_with(4);
    assert!(run.stderr.contains("elsewhere.db"), "{}", run.stderr);
}

#[test]
fn init_without_terminal_needs_recovery_key_out() {
    let env = Env::empty();
    env.keyward(&["init"]).fails_with(2).diagnosis(
        "there is no terminal to show the new recovery key on",
        "pass --recovery-key-out FILE to have it written to a new file (mode 0600), then keep \
         that file offline",
    );
    assert!(!env.store.exists());
}

#[test]
fn init_never_overwrites_a_recovery_key_file() {
    let env = Env::empty();
    std::fs::write(&env.recovery_key, "precious\n").expect("write");
    let path = env.recovery_key.to_str().expect("utf-8");
    env.keyward(&["init", "--recovery-key-out", path])
        .fails_with(6)
        .diagnosis(
            &format!("{path} already exists"),
            "keyward never overwrites a recovery key file; choose a new file name",
        );
    assert_eq!(
        std::fs::read_to_string(&env.recovery_key).expect("read"),
        "precious\n"
    );
    assert!(!env.store.exists());
}

#[test]
fn init_with_passphrase_needs_a_passphrase_source() {
    let env = Env::empty();
    env.keyward(&["init", "--passphrase", "--recovery-key-out", &env.arg("rk")])
        .fails_with(3)
        .diagnosis(
            "a passphrase is needed and there is no terminal to ask for it",
            "pass it with --passphrase-fd N or KEYWARD_PASSPHRASE, or run keyward on a terminal",
        );
    assert!(!env.store.exists());
    assert!(!env.path("rk").exists());
}

#[test]
fn test_helper_decodes_base64() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGVs\nbG8gd29y bGQ="), b"hello world");
}
