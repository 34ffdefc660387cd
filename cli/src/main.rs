//! `keyward`: the command-line interface to keyward, a hardware-backed key
//! manager for a local-first assistant.
//!
//! The binary is a thin layer over [`keyward_kms::Service`]: it parses
//! arguments, finds the keystore, gets secrets from the user (terminal
//! prompt, file descriptor, file or environment; never from the command
//! line), runs one Service operation and renders the result or the error
//! (a diagnosis, a remedy and a documented exit code; docs/CLI.md).
#![forbid(unsafe_code)]

mod args;
mod client;
mod commands;
mod failure;
mod files;
mod paths;
mod render;
mod ui;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::args::Cli;
use crate::failure::Failure;

fn main() -> ExitCode {
    install_panic_hook();
    // Usage errors, --help and --version: clap prints and picks the exit
    // code (2 for usage, 0 for help), as documented.
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    match commands::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => report(&failure),
    }
}

/// Prints a failure to stderr and turns it into the process exit code.
fn report(failure: &Failure) -> ExitCode {
    if failure.is_silent() {
        return ExitCode::from(failure.code as u8);
    }
    let mut stderr = std::io::stderr().lock();
    // If stderr itself is gone there is nobody to tell; the exit code still
    // says what happened.
    let _ = stderr.write_all(failure.render().as_bytes());
    let _ = stderr.flush();
    ExitCode::from(failure.code as u8)
}

/// `-v` raises keyward's own log level; `RUST_LOG` replaces the filter
/// entirely. Logs go to stderr and never contain secrets: no code in
/// keyward logs a secret type (they have redacting `Debug`).
///
/// Without `-v` the hardware backends' warnings (raw TPM response codes,
/// `CKR_*` names) and the error logs of tss-esapi, cryptoki and the yubikey
/// crate (one per empty PC/SC reader) stay quiet: the error
/// line and its hint say the same for the user. (tpm2-tss, a C library,
/// prints to stderr unless `TSS2_LOG=all+none`; docs/CLI.md says so.)
fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn,keyward_backends=error,tss_esapi=off,cryptoki=off,yubikey=off",
        1 => "warn,keyward=info,keyward_kms=info,keyward_backends=info",
        2 => "warn,keyward=debug,keyward_kms=debug,keyward_backends=debug",
        _ => "info,keyward=trace,keyward_kms=trace,keyward_backends=trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => {
            EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new(default))
        }
        _ => EnvFilter::new(default),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(verbose >= 2)
        .try_init();
}

/// A panic is always a bug in keyward, never the user's fault: say so in
/// plain words instead of asking for `RUST_BACKTRACE`. The exit code stays
/// Rust's 101 (documented as "internal error").
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".to_owned());
        let _ = writeln!(
            std::io::stderr(),
            "error: internal error in keyward{location}: {payload}\n\
             hint: this is a bug in keyward, not something you did; please report it \
             with the command you ran (never include a secret)"
        );
    }));
}
