//! A `keyward decrypt -o FILE` or `encrypt -o FILE` killed with SIGKILL
//! mid-way leaves nothing in the output directory: the output is an unnamed
//! file (`O_TMPFILE`) until the command succeeds, so the kernel frees the
//! partial plaintext with the process (issue #12, item 8; cli/src/files.rs).
//!
//! Each run checks, before the kill, that the process really has its output
//! open in that directory and has written to it, so a kill that lands too
//! early cannot make the test pass.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Env, PASSPHRASE};

/// Repeated through the plaintext, so any leftover copy is found.
const MARKER: &[u8] = b"PLAINTEXT-MARKER-a-secret-diary-entry-";

/// How many kills per direction.
const KILLS: usize = 4;

fn plaintext(len: usize) -> Vec<u8> {
    MARKER.iter().copied().cycle().take(len).collect()
}

/// The bytes written so far to the file `pid` has open in `dir`, once it
/// has some (`None` after the deadline).
fn output_written(pid: u32, dir: &Path, deadline: Instant) -> Option<u64> {
    while Instant::now() < deadline {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if target.parent() != Some(dir) {
                continue;
            }
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            let pos = info
                .lines()
                .find_map(|l| l.strip_prefix("pos:"))
                .and_then(|p| p.trim().parse::<u64>().ok())
                .unwrap_or(0);
            if pos > 0 {
                return Some(pos);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Starts `keyward ARGS` with its stdin piped and writes `head` into it,
/// keeping stdin open so the command waits for the rest.
fn start(env: &Env, args: &[&str], head: &[u8]) -> Child {
    let mut child = env
        .command(args)
        .env("KEYWARD_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn keyward");
    child
        .stdin
        .as_mut()
        .expect("piped stdin")
        .write_all(head)
        .expect("write the first part");
    child
}

/// Kills `child` with SIGKILL once it has written output into `dir`, then
/// asserts that `dir` is empty.
fn kill_and_check(mut child: Child, dir: &Path, what: &str) {
    let written = output_written(child.id(), dir, Instant::now() + Duration::from_secs(30));
    let written = written.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("{what}: no output written into {} in 30 s", dir.display())
    });
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "{what}: finished before the kill");
    let left: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    for path in &left {
        let bytes = std::fs::read(path).unwrap_or_default();
        assert!(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER),
            "{what}: plaintext left on disk in {}",
            path.display()
        );
    }
    assert!(
        left.is_empty(),
        "{what}: killed after writing {written} bytes, it left {left:?}"
    );
}

#[test]
fn killed_decrypt_and_encrypt_leave_no_file() {
    let env = Env::ready();
    env.unlocked(&["key", "create", "notes"], b"").ok();
    let out_dir = env.path("out");
    std::fs::create_dir(&out_dir).expect("mkdir");

    // 16 MiB: the stream's first chunks are written long before the end.
    let plain = plaintext(16 << 20);
    let input = env.path("plain");
    std::fs::write(&input, &plain).expect("write plaintext");
    let ciphertext = env.path("notes.kw");
    env.unlocked(
        &[
            "encrypt",
            "--key",
            "notes",
            "-i",
            input.to_str().expect("utf-8"),
            "-o",
            ciphertext.to_str().expect("utf-8"),
        ],
        b"",
    )
    .ok();
    let sealed = std::fs::read(&ciphertext).expect("read ciphertext");

    let out = out_dir.join("diary.txt");
    let out = out.to_str().expect("utf-8");
    for n in 0..KILLS {
        let child = start(&env, &["decrypt", "-o", out], &sealed[..sealed.len() / 2]);
        kill_and_check(child, &out_dir, &format!("decrypt, kill {n}"));
        let child = start(
            &env,
            &["encrypt", "--key", "notes", "-o", out],
            &plain[..plain.len() / 2],
        );
        kill_and_check(child, &out_dir, &format!("encrypt, kill {n}"));
    }

    // The same commands left to finish still write their output.
    let run = env.unlocked(&["decrypt", "-o", out], &sealed).ok();
    assert!(run.stdout.is_empty());
    assert!(
        std::fs::read(out).expect("read output") == plain,
        "decrypted output differs"
    );
}
