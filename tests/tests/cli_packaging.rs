//! End-to-end tests of what a package installs beside the `keyward`
//! binary: shell completions (`keyward completions`) and man pages
//! (`keyward man`). Both must name every command `keyward --help` lists,
//! and both must work with no keystore, no HOME and no device (packagers
//! run them in a build root).
//!
//! Needs `bash` (the completion script is sourced and asked to complete)
//! and `man` (every page is formatted with `man -l`).

mod common;

use std::path::Path;
use std::process::Command;

use common::{Env, Run, keyward_bin, run_command};
use keyward_tests::daemon::assert_success;

/// Runs keyward with an empty environment: no HOME, no KEYWARD_*.
fn bare(args: &[&str]) -> Run {
    let mut cmd = Command::new(keyward_bin());
    cmd.env_clear().args(args);
    run_command(cmd, b"")
}

/// The top-level commands `keyward --help` lists (without clap's `help`).
fn commands_in_help() -> Vec<String> {
    let help = Env::empty().keyward(&["--help"]).ok().out();
    let list = help
        .split("\nCommands:\n")
        .nth(1)
        .expect("a Commands: section in --help");
    let commands: Vec<String> = list
        .lines()
        .take_while(|line| !line.trim().is_empty())
        // A command's line starts with two spaces and its name; wrapped
        // descriptions are indented further.
        .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    assert!(commands.len() >= 20, "{commands:?}");
    for expected in ["init", "enroll", "decrypt", "serve", "completions", "man"] {
        assert!(commands.iter().any(|c| c == expected), "{commands:?}");
    }
    commands
}

/// Formats a page with `man -l` and returns the text; groff's warnings
/// (bad requests, unknown macros) fail the test.
fn man_format(page: &Path) -> String {
    let out = Command::new("man")
        .args(["--warnings", "-E", "UTF-8", "-l"])
        .arg(page)
        .env("MANWIDTH", "100")
        .env("MAN_KEEP_FORMATTING", "0")
        .env_remove("MANPAGER")
        .env("PAGER", "cat")
        .output()
        .expect("man installed (apt-get install man-db)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "man -l {}: {stderr}", page.display());
    assert!(
        stderr.trim().is_empty(),
        "man -l {} warns: {stderr}",
        page.display()
    );
    // Without a terminal man prints plain text, but strip any overstrike
    // (bold as "c\bc") all the same.
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut plain = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{8}' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    plain
}

#[test]
fn bash_completion_completes_every_command() {
    let commands = commands_in_help();
    let script = bare(&["completions", "bash"]).ok().out();
    assert!(script.contains("complete -F _keyward"), "{script}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keyward.bash");
    std::fs::write(&path, &script).expect("write the script");
    // Source it and ask it, as bash-completion would, to complete
    // `keyward <TAB>`, `keyward en<TAB>` and `keyward enroll <TAB>`.
    let ask = |words: &str, cword: usize| -> Vec<String> {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {path}; COMP_WORDS=({words}); COMP_CWORD={cword}; \
                 COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
                 _keyward keyward \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; \
                 printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                path = path.display()
            ))
            .output()
            .expect("bash installed");
        let out = assert_success(out, "the bash completion");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let top = ask("keyward ''", 1);
    for command in &commands {
        assert!(
            top.contains(command),
            "`keyward <TAB>` lacks {command}: {top:?}"
        );
    }
    let mut en = ask("keyward en", 1);
    en.sort();
    assert_eq!(en, ["encrypt", "enroll"]);
    let enroll = ask("keyward enroll ''", 2);
    for kind in ["passphrase", "recovery", "tpm", "pkcs11", "yubikey"] {
        assert!(enroll.iter().any(|w| w == kind), "{enroll:?}");
    }
    let shells = ask("keyward completions ''", 2);
    for shell in ["bash", "zsh", "fish"] {
        assert!(shells.iter().any(|w| w == shell), "{shells:?}");
    }
}

#[test]
fn zsh_and_fish_completions_name_every_command() {
    let commands = commands_in_help();
    let zsh = bare(&["completions", "zsh"]).ok().out();
    assert!(zsh.starts_with("#compdef keyward"), "{zsh}");
    let fish = bare(&["completions", "fish"]).ok().out();
    assert!(fish.contains("complete -c keyward"), "{fish}");
    for command in &commands {
        assert!(zsh.contains(&format!("'{command}:")), "zsh lacks {command}");
        assert!(
            fish.contains(&format!("-a \"{command}\"")),
            "fish lacks {command}"
        );
    }
    // Only the shells the help names.
    bare(&["completions", "powershell"]).fails_with(2);
    bare(&["completions"]).fails_with(2);
}

#[test]
fn man_prints_the_top_page() {
    let commands = commands_in_help();
    let run = bare(&["man"]).ok();
    let roff = run.out();
    assert!(roff.contains("\n.TH keyward 1 "), "{roff}");
    assert!(roff.contains(".SH SUBCOMMANDS"), "{roff}");
    let dir = tempfile::tempdir().expect("tempdir");
    let page = dir.path().join("keyward.1");
    std::fs::write(&page, &roff).expect("write the page");
    let text = man_format(&page);
    assert!(
        text.contains("keyward - hardware-backed key management for a local-first assistant"),
        "{text}"
    );
    for command in &commands {
        assert!(
            text.contains(&format!("keyward-{command}(1)")),
            "the page lacks keyward-{command}(1):\n{text}"
        );
    }
    // The exit-code table of `--help`, line for line.
    assert!(text.contains("Exit codes:"), "{text}");
    assert!(
        text.contains("7    device or hardware error"),
        "the table was refilled:\n{text}"
    );
    assert!(text.contains("--pin-fd"), "{text}");
}

#[test]
fn man_out_dir_writes_one_page_per_command() {
    let commands = commands_in_help();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("man1");
    let run = bare(&["man", "--out-dir", out.to_str().expect("utf-8 path")]).ok();
    let mut listed: Vec<String> = run.out().lines().map(str::to_owned).collect();
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .expect("the directory exists")
        .map(|e| {
            e.expect("dir entry")
                .path()
                .to_str()
                .expect("utf-8")
                .to_owned()
        })
        .collect();
    listed.sort();
    files.sort();
    assert_eq!(listed, files, "stdout lists exactly the pages written");

    let mut expected = vec!["keyward.1".to_owned()];
    expected.extend(commands.iter().map(|c| format!("keyward-{c}.1")));
    // Nested commands get pages of their own, as git's do.
    expected.extend(
        [
            "keyward-enroll-tpm.1",
            "keyward-enroll-yubikey.1",
            "keyward-key-create.1",
            "keyward-yubikey-setup.1",
            "keyward-client-add.1",
        ]
        .map(str::to_owned),
    );
    for name in &expected {
        let page = out.join(name);
        assert!(page.exists(), "{name} missing; written: {files:?}");
    }
    assert!(
        !out.join("keyward-help.1").exists(),
        "clap's help has no page"
    );

    for file in &files {
        let page = Path::new(file);
        let title = page
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("page name");
        let roff = std::fs::read_to_string(page).expect("read page");
        assert!(
            roff.contains(&format!("\n.TH {title} 1 ")),
            "{file} lacks .TH {title}"
        );
        let text = man_format(page);
        assert!(text.contains("NAME"), "{file}:\n{text}");
        assert!(text.contains("SYNOPSIS"), "{file}:\n{text}");
    }
    // A subcommand's page says what --help says about it.
    let tpm = man_format(&out.join("keyward-enroll-tpm.1"));
    let help = Env::empty()
        .keyward(&["enroll", "tpm", "--help"])
        .ok()
        .out();
    for flag in ["--pcrs", "--replace", "--no-pin", "--tcti", "--pin-fd"] {
        assert!(help.contains(flag), "--help lacks {flag}");
        assert!(tpm.contains(flag), "keyward-enroll-tpm(1) lacks {flag}");
    }

    // A directory that cannot be made: exit 1, saying which.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"").expect("write");
    let run = bare(&[
        "man",
        "--out-dir",
        blocker.join("man1").to_str().expect("utf-8"),
    ])
    .fails_with(1);
    assert!(
        run.stderr.contains("cannot write man pages to"),
        "{}",
        run.stderr
    );
}
