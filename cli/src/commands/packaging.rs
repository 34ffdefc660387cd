//! `keyward completions` and `keyward man`: the files a package installs
//! beside the binary. Both are generated from the clap definitions that
//! parse the command line (clap_complete, clap_mangen), so they say what
//! `--help` says and cannot drift from it. Neither needs a keystore, HOME or
//! a device: packagers run them in a build root.

use std::io;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

use crate::args::{Cli, CompletionsArgs, ManArgs, ShellArg};
use crate::failure::Failure;
use crate::files::print;

/// The name completions and man pages are generated for.
const BIN: &str = "keyward";

/// Prints the completion script for one shell.
///
/// # Errors
/// Standard output cannot be written.
pub(super) fn completions(args: &CompletionsArgs) -> Result<(), Failure> {
    let shell = match args.shell {
        ShellArg::Bash => Shell::Bash,
        ShellArg::Zsh => Shell::Zsh,
        ShellArg::Fish => Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), BIN, &mut script);
    print(&String::from_utf8_lossy(&script))
}

/// Prints keyward.1, or writes keyward.1 and one page per command (git's
/// layout: `keyward-enroll-tpm.1`, so `man keyward-enroll-tpm` works) into
/// `--out-dir` and prints their paths.
///
/// # Errors
/// The directory or a page cannot be written, or standard output cannot.
pub(super) fn man(args: &ManArgs) -> Result<(), Failure> {
    // `keyward help` is clap's, not a command with a page of its own.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // The NAME line is "keyward - what it is": drop the name `--help` repeats.
    if let Some(about) = cmd.get_about().map(ToString::to_string) {
        if let Some(rest) = about.strip_prefix("keyward: ") {
            cmd = cmd.about(rest.to_owned());
        }
    }
    // Sets every subcommand's display name (`keyward-enroll-tpm`), which
    // names its page.
    cmd.build();
    let Some(dir) = &args.out_dir else {
        let (_, page) = render(&cmd).map_err(|e| Failure::io("cannot render the man page", &e))?;
        return print(&String::from_utf8_lossy(&page));
    };
    let mut written = Vec::new();
    std::fs::create_dir_all(dir)
        .and_then(|()| write_pages(&cmd, dir, &mut written))
        .map_err(|e| Failure::io(format!("cannot write man pages to {}", dir.display()), &e))?;
    let mut list = String::new();
    for path in &written {
        list.push_str(&path.display().to_string());
        list.push('\n');
    }
    print(&list)
}

/// Writes the page of `cmd` and of each visible subcommand, depth first.
fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
    let (name, page) = render(cmd)?;
    let path = dir.join(name);
    std::fs::write(&path, page)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}

/// The file name and roff text of `cmd`'s page: clap_mangen's sections,
/// then the text `--help` shows after the options (the exit-code table,
/// install hints) in a NOTES section, line for line rather than refilled
/// into a paragraph.
fn render(cmd: &clap::Command) -> io::Result<(String, Vec<u8>)> {
    use clap_mangen::roff::{Roff, roman};

    let notes = cmd.get_after_help().map(ToString::to_string);
    let man = clap_mangen::Man::new(cmd.clone().after_help(None::<&'static str>))
        .source(concat!("keyward ", env!("CARGO_PKG_VERSION")))
        .manual("keyward manual");
    let mut page = Vec::new();
    man.render(&mut page)?;
    if let Some(notes) = notes {
        let mut roff = Roff::new();
        roff.control("SH", ["NOTES"]).control("nf", []);
        for line in notes.lines() {
            roff.text([roman(line)]);
        }
        roff.control("fi", []);
        roff.to_writer(&mut page)?;
    }
    Ok((man.get_filename(), page))
}
