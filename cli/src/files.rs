//! Data in and out: stdin or a file, stdout or an atomically written file,
//! and progress on a terminal.
//!
//! An output file is written to an unnamed file in the same directory
//! (`O_TMPFILE`), fsynced and given its name only when the command
//! succeeded: a failed decryption never leaves a partial plaintext file, and
//! neither does a process killed mid-way (SIGKILL, power loss), since the
//! kernel frees an unnamed file when its last descriptor closes. Where the
//! filesystem has no `O_TMPFILE`, a named temporary file (0600) is used and
//! removed on every exit but SIGKILL. On
//! stdout that guarantee is impossible (bytes already written cannot be
//! taken back), which docs/CLI.md says; stdout only ever receives
//! authenticated plaintext chunks.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::failure::{Exit, Failure};

/// `-` as a path means stdin/stdout, as in most Unix tools.
fn is_dash(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Whether `path` exists and is not a regular file (following symlinks).
fn is_special(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// Where data comes from.
pub(crate) enum Input {
    /// Standard input.
    Stdin(io::Stdin),
    /// A file.
    File(File),
}

impl Input {
    /// Opens `path`, or stdin for `None` or `-`.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub(crate) fn open(path: Option<&Path>) -> Result<Self, Failure> {
        match path {
            None => Ok(Self::Stdin(io::stdin())),
            Some(p) if is_dash(p) => Ok(Self::Stdin(io::stdin())),
            Some(p) => File::open(p)
                .map(Self::File)
                .map_err(|e| Failure::io(format_args!("cannot open {}", p.display()), &e)),
        }
    }

    /// The input's size when it is a regular file.
    pub(crate) fn len(&self) -> Option<u64> {
        match self {
            Self::Stdin(_) => None,
            Self::File(f) => f
                .metadata()
                .ok()
                .filter(std::fs::Metadata::is_file)
                .map(|m| m.len()),
        }
    }
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Stdin(s) => s.read(buf),
            Self::File(f) => f.read(buf),
        }
    }
}

/// Where data goes.
pub(crate) enum Output {
    /// Standard output.
    Stdout(BufWriter<io::Stdout>),
    /// Something that is not a regular file (`/dev/null`, a FIFO, a
    /// terminal device): written in place, as there is nothing to rename.
    Device(BufWriter<File>),
    /// A pending file given the name `path` on [`Output::commit`].
    File {
        /// The pending file, gone on drop unless committed.
        writer: BufWriter<Pending>,
        /// Final path.
        path: PathBuf,
    },
}

/// The file an output is written to until it is committed.
pub(crate) enum Pending {
    /// An unnamed file (`O_TMPFILE`) in the target's directory: nothing is
    /// left on disk if the process dies before the commit.
    Unnamed(File),
    /// A named temporary file, for filesystems without `O_TMPFILE`: removed
    /// on drop, but left behind by SIGKILL.
    Named(tempfile::NamedTempFile),
}

impl Pending {
    /// Creates the pending file in `dir`, mode 0600.
    fn create(dir: &Path) -> io::Result<Self> {
        use rustix::fs::{CWD, Mode, OFlags};
        // The commit names the file through /proc/self/fd; without /proc we
        // could write it but never link it.
        if Path::new("/proc/self/fd").is_dir() {
            match rustix::fs::openat(
                CWD,
                dir,
                OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::RUSR | Mode::WUSR,
            ) {
                Ok(fd) => return Ok(Self::Unnamed(File::from(fd))),
                // open(2): EOPNOTSUPP (and EISDIR or EINVAL on older
                // kernels) when the filesystem has no O_TMPFILE.
                Err(e)
                    if e == rustix::io::Errno::OPNOTSUPP
                        || e == rustix::io::Errno::ISDIR
                        || e == rustix::io::Errno::INVAL => {}
                Err(e) => return Err(e.into()),
            }
        }
        tempfile::Builder::new()
            .prefix(".keyward-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map(Self::Named)
    }

    fn file(&self) -> &File {
        match self {
            Self::Unnamed(file) => file,
            Self::Named(tmp) => tmp.as_file(),
        }
    }

    /// Fsyncs the file and gives it the name `path`, replacing what is
    /// there atomically.
    fn commit(self, path: &Path) -> io::Result<()> {
        self.file().sync_all()?;
        match self {
            Self::Named(tmp) => tmp.persist(path).map(drop).map_err(|e| e.error),
            Self::Unnamed(file) => link_unnamed(&file, path),
        }
    }
}

/// Names an unnamed file `path`: linked straight to it when nothing is
/// there, else linked to a fresh name beside it and renamed over it (link
/// never replaces). Only a complete, fsynced output ever has a name.
fn link_unnamed(file: &File, path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;

    use rustix::fs::{AtFlags, CWD};
    let source = format!("/proc/self/fd/{}", file.as_raw_fd());
    let link =
        |to: &Path| rustix::fs::linkat(CWD, source.as_str(), CWD, to, AtFlags::SYMLINK_FOLLOW);
    match link(path) {
        Ok(()) => return Ok(()),
        Err(e) if e == rustix::io::Errno::EXIST => {}
        Err(e) => return Err(e.into()),
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for attempt in 0..16_u32 {
        let temporary = dir.join(format!(
            ".keyward-{}-{nanos:08x}-{attempt}.tmp",
            std::process::id()
        ));
        match link(&temporary) {
            Ok(()) => {
                return std::fs::rename(&temporary, path).inspect_err(|_| {
                    let _ = std::fs::remove_file(&temporary);
                });
            }
            Err(e) if e == rustix::io::Errno::EXIST => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temporary name beside the output",
    ))
}

impl Write for Pending {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Unnamed(file) => file.write(buf),
            Self::Named(tmp) => tmp.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Unnamed(file) => file.flush(),
            Self::Named(tmp) => tmp.flush(),
        }
    }
}

/// What an output holds, for the terminal check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Content {
    /// Binary ciphertext or signature: useless on a terminal and may upset it.
    Binary,
    /// Decrypted plaintext: would land in the scrollback and in view.
    Plaintext,
}

impl Output {
    /// Opens `path` for atomic writing, or stdout for `None` or `-`.
    /// Refuses a terminal stdout unless `force`.
    ///
    /// # Errors
    /// Stdout is a terminal (usage error), or the temporary file cannot be
    /// created.
    pub(crate) fn create(
        path: Option<&Path>,
        content: Content,
        force: bool,
    ) -> Result<Self, Failure> {
        match path {
            Some(p) if !is_dash(p) && is_special(p) => {
                let file = OpenOptions::new()
                    .write(true)
                    .open(p)
                    .map_err(|e| Failure::io(format_args!("cannot open {}", p.display()), &e))?;
                Ok(Self::Device(BufWriter::with_capacity(1 << 16, file)))
            }
            Some(p) if !is_dash(p) => {
                let dir = match p.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d,
                    _ => Path::new("."),
                };
                let tmp = Pending::create(dir).map_err(|e| {
                    Failure::io(
                        format_args!("cannot create a file in {}", dir.display()),
                        &e,
                    )
                })?;
                Ok(Self::File {
                    writer: BufWriter::with_capacity(1 << 16, tmp),
                    path: p.to_path_buf(),
                })
            }
            _ => {
                let stdout = io::stdout();
                if !force && stdout.is_terminal() {
                    let what = match content {
                        Content::Binary => "binary output",
                        Content::Plaintext => "decrypted plaintext",
                    };
                    return Err(Failure::new(
                        Exit::Usage,
                        format!("refusing to write {what} to the terminal"),
                    )
                    .hint("write to a file with -o FILE or redirect stdout, or pass --force"));
                }
                Ok(Self::Stdout(BufWriter::with_capacity(1 << 16, stdout)))
            }
        }
    }

    /// Makes the output final: flushes stdout, or flushes, fsyncs and
    /// renames the temporary file over the target and fsyncs its directory.
    ///
    /// # Errors
    /// Any write, sync or rename failure (the target is then untouched).
    pub(crate) fn commit(self) -> Result<(), Failure> {
        match self {
            Self::Stdout(mut w) => w
                .flush()
                .map_err(|e| Failure::io("cannot write to standard output", &e)),
            Self::Device(mut w) => w
                .flush()
                .map_err(|e| Failure::io("cannot write the output", &e)),
            Self::File { writer, path } => {
                let tmp = writer.into_inner().map_err(|e| {
                    Failure::io(format_args!("cannot write {}", path.display()), e.error())
                })?;
                tmp.commit(&path).map_err(|e| {
                    Failure::io(
                        format_args!("cannot write the output to {}", path.display()),
                        &e,
                    )
                })?;
                sync_parent(&path);
                Ok(())
            }
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Stdout(w) => w.write(buf),
            Self::Device(w) => w.write(buf),
            Self::File { writer, .. } => writer.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stdout(w) => w.flush(),
            Self::Device(w) => w.flush(),
            Self::File { writer, .. } => writer.flush(),
        }
    }
}

/// Makes a rename durable. Best effort: some filesystems refuse to fsync a
/// directory, and the data itself is already synced.
pub(crate) fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes to stderr, ignoring failure: `eprint!` would panic when stderr
/// is closed, and a message nobody can read must not fail the command.
/// Writes `bytes` to a new file at `path`, created with mode 0600 (never
/// overwriting anything), synced to disk.
///
/// # Errors
/// The file exists or cannot be written.
pub(crate) fn write_new_private(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            let f = Failure::io(format_args!("cannot create {}", path.display()), &e);
            if e.kind() == io::ErrorKind::AlreadyExists {
                f.hint("keyward never overwrites this file; choose a new name")
            } else {
                f
            }
        })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Failure::io(format_args!("cannot write {}", path.display()), &e))?;
    sync_parent(path);
    Ok(())
}

pub(crate) fn to_stderr(args: std::fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args);
    let _ = err.flush();
}

/// Writes `text` to stdout.
///
/// # Errors
/// A write failure; a closed pipe becomes the silent exit 141.
pub(crate) fn print(text: &str) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Failure::io("cannot write to standard output", &e))
}

/// Writes `value` as pretty JSON plus a newline to stdout.
///
/// # Errors
/// As [`print`].
pub(crate) fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<(), Failure> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::new(Exit::Failure, format!("cannot encode JSON: {e}")))?;
    text.push('\n');
    print(&text)
}

/// Inputs below this size show no progress.
const PROGRESS_THRESHOLD: u64 = 64 << 20;
/// How often the progress line is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// A progress line on stderr, shown only when stderr is a terminal and the
/// input is large (or of unknown size and already large).
pub(crate) struct Progress {
    enabled: bool,
    verb: &'static str,
    total: Option<u64>,
    start: Instant,
    last: Option<Instant>,
}

impl Progress {
    /// A progress reporter for `total` bytes (if known).
    pub(crate) fn new(verb: &'static str, total: Option<u64>) -> Self {
        let enabled = io::stderr().is_terminal() && total.is_none_or(|t| t >= PROGRESS_THRESHOLD);
        Self {
            enabled,
            verb,
            total,
            start: Instant::now(),
            last: None,
        }
    }

    /// Called with the number of bytes done so far.
    pub(crate) fn update(&mut self, done: u64) {
        if !self.enabled || done < PROGRESS_THRESHOLD {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < PROGRESS_INTERVAL)
        {
            return;
        }
        self.last = Some(now);
        let secs = now.duration_since(self.start).as_secs_f64().max(1e-3);
        // `allow`: the workspace may allow cast_precision_loss globally.
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_sign_loss,
            reason = "display only"
        )]
        let rate = (done as f64 / secs) as u64;
        let line = match self.total {
            Some(total) if total > 0 => format!(
                "{} {} of {} ({}%), {}/s",
                self.verb,
                crate::render::format_bytes(done),
                crate::render::format_bytes(total),
                done.saturating_mul(100) / total,
                crate::render::format_bytes(rate)
            ),
            _ => format!(
                "{} {}, {}/s",
                self.verb,
                crate::render::format_bytes(done),
                crate::render::format_bytes(rate)
            ),
        };
        to_stderr(format_args!("\r\x1b[K{line}"));
    }

    /// Clears the progress line, if one was drawn.
    pub(crate) fn finish(&mut self) {
        if self.last.take().is_some() {
            to_stderr(format_args!("\r\x1b[K"));
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_file_appears_only_on_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("out.bin");
        let mut out = Output::create(Some(&target), Content::Plaintext, false).expect("create");
        out.write_all(b"partial").expect("write");
        out.flush().expect("flush");
        // On a filesystem with O_TMPFILE (ext4, tmpfs, xfs, btrfs) the
        // pending output has no name at all, even while it is written.
        if matches!(&out, Output::File { writer, .. } if matches!(writer.get_ref(), Pending::Unnamed(_)))
        {
            assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
        }
        drop(out);
        assert!(!target.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("list").count(),
            0,
            "temporary file left behind"
        );

        let mut out = Output::create(Some(&target), Content::Plaintext, false).expect("create");
        out.write_all(b"whole").expect("write");
        out.commit().expect("commit");
        assert_eq!(std::fs::read(&target).expect("read"), b"whole");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&target).expect("meta").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn commit_replaces_an_existing_file_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("same.bin");
        std::fs::write(&target, b"old").expect("write");
        // Reading and writing the same path works: the input stays intact
        // until the rename.
        let mut input = Input::open(Some(&target)).expect("open");
        assert_eq!(input.len(), Some(3));
        let mut out = Output::create(Some(&target), Content::Binary, false).expect("create");
        io::copy(&mut input, &mut out).expect("copy");
        out.write_all(b"+new").expect("write");
        out.commit().expect("commit");
        assert_eq!(std::fs::read(&target).expect("read"), b"old+new");
    }

    #[test]
    fn devices_are_written_in_place() {
        let mut out =
            Output::create(Some(Path::new("/dev/null")), Content::Binary, false).expect("create");
        assert!(matches!(out, Output::Device(_)));
        out.write_all(b"discarded").expect("write");
        out.commit().expect("commit");
    }

    #[test]
    fn missing_input_and_directory_fail_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Err(f) = Input::open(Some(&dir.path().join("absent"))) else {
            panic!("opened a missing file");
        };
        assert_eq!(f.code, Exit::Failure);
        assert!(f.message.starts_with("cannot open "), "{}", f.message);
        let Err(f) = Output::create(
            Some(&dir.path().join("no/such/dir/out")),
            Content::Binary,
            false,
        ) else {
            panic!("created in a missing directory");
        };
        assert!(
            f.message.starts_with("cannot create a file in "),
            "{}",
            f.message
        );
    }
}
