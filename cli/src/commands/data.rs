//! `encrypt`, `decrypt`, `sign`, `verify`, `export-public`.

use std::io::{Read, Write};

use keyward_kms::service::StreamSummary;

use super::Ctx;
use crate::args::{DecryptArgs, EncryptArgs, ExportPublicArgs, SignArgs, VerifyArgs};
use crate::failure::{Exit, Failure};
use crate::files::{Content, Input, Output, Progress, print, print_json};
use crate::render::format_time;
use crate::ui::Reserve;

/// Signatures are a few hundred bytes; anything much larger is not one.
const MAX_SIGNATURE_LEN: u64 = 64 * 1024;

/// With `--json`, the summary of a streaming operation goes to stderr
/// (stdout carries the data).
fn report_summary(ctx: &Ctx<'_>, summary: &StreamSummary) -> Result<(), Failure> {
    if ctx.json() {
        let text = serde_json::to_string(summary)
            .map_err(|e| Failure::new(Exit::Failure, format!("cannot encode JSON: {e}")))?;
        crate::files::to_stderr(format_args!("{text}\n"));
    }
    tracing::info!(key = %summary.key, version = summary.version, bytes = summary.bytes, "done");
    Ok(())
}

/// `keyward encrypt`.
pub(super) fn encrypt(ctx: &Ctx<'_>, args: &EncryptArgs) -> Result<(), Failure> {
    let mut input = Input::open(args.input.as_deref())?;
    let mut output = Output::create(args.output.as_deref(), Content::Binary, args.force)?;
    let mut service = ctx.open()?;
    ctx.unlock(&mut service, Reserve::Nothing)?;
    let mut progress = Progress::new("encrypted", input.len());
    let summary = ctx.check(service.encrypt_stream(
        &args.key,
        args.context.as_bytes(),
        &mut input,
        &mut output,
        &mut |done| progress.update(done),
    ))?;
    progress.finish();
    output.commit()?;
    report_summary(ctx, &summary)
}

/// `keyward decrypt`.
pub(super) fn decrypt(ctx: &Ctx<'_>, args: &DecryptArgs) -> Result<(), Failure> {
    let mut input = Input::open(args.input.as_deref())?;
    let mut output = Output::create(args.output.as_deref(), Content::Plaintext, args.force)?;
    let mut service = ctx.open()?;
    ctx.unlock(&mut service, Reserve::Nothing)?;
    let mut progress = Progress::new("decrypted", input.len());
    let summary = ctx.check(service.decrypt_stream(
        args.context.as_bytes(),
        &mut input,
        &mut output,
        &mut |done| progress.update(done),
    ))?;
    progress.finish();
    // Only now, with every chunk authenticated and the final one seen, does
    // an output file appear.
    output.commit()?;
    report_summary(ctx, &summary)
}

/// `keyward sign`.
pub(super) fn sign(ctx: &Ctx<'_>, args: &SignArgs) -> Result<(), Failure> {
    let Some(key) = &args.key else {
        return super::device::sign(ctx, args);
    };
    let mut input = Input::open(args.input.as_deref())?;
    let mut output = Output::create(args.output.as_deref(), Content::Binary, args.force)?;
    let mut service = ctx.open()?;
    ctx.unlock(&mut service, Reserve::Nothing)?;
    let audience = args.audience.as_deref().unwrap_or_default();
    let signature = ctx.check(service.sign(key, audience, &mut input))?;
    output
        .write_all(&signature)
        .map_err(|e| Failure::io("cannot write the signature", &e))?;
    output.commit()
}

/// `keyward verify`.
pub(super) fn verify(ctx: &Ctx<'_>, args: &VerifyArgs) -> Result<(), Failure> {
    let signature = read_signature(&args.signature)?;
    let mut input = Input::open(args.input.as_deref())?;
    let mut service = ctx.open()?;
    let verified = ctx.check(service.verify(&args.audience, &signature, &mut input))?;
    if ctx.json() {
        return print_json(&verified);
    }
    #[expect(
        clippy::cast_possible_wrap,
        reason = "a u64 Unix time past 2^63 is not a date; it only renders oddly"
    )]
    let when = format_time(verified.timestamp as i64);
    print(&format!(
        "good signature by key {} version {} (signed {when}, counter {}, audience {:?})\n",
        verified.key, verified.version, verified.counter, verified.audience
    ))
}

/// Reads a signature file, refusing anything too large to be one.
fn read_signature(path: &std::path::Path) -> Result<Vec<u8>, Failure> {
    let file = std::fs::File::open(path)
        .map_err(|e| Failure::io(format_args!("cannot open {}", path.display()), &e))?;
    let mut signature = Vec::new();
    file.take(MAX_SIGNATURE_LEN + 1)
        .read_to_end(&mut signature)
        .map_err(|e| Failure::io(format_args!("cannot read {}", path.display()), &e))?;
    if signature.len() as u64 > MAX_SIGNATURE_LEN {
        return Err(Failure::new(
            Exit::Integrity,
            format!("{} is too large to be a keyward signature", path.display()),
        )
        .hint("pass the file written by `keyward sign` with --signature"));
    }
    Ok(signature)
}

/// `keyward export-public`.
pub(super) fn export_public(ctx: &Ctx<'_>, args: &ExportPublicArgs) -> Result<(), Failure> {
    let Some(name) = &args.name else {
        return super::device::export_public(ctx, args);
    };
    if ctx.cli.protector.is_some() {
        return Err(Failure::new(
            Exit::Usage,
            "export-public takes a key NAME or --protector ID, not both",
        ));
    }
    let service = ctx.open()?;
    let export = ctx.check(service.export_public(name, args.version))?;
    if ctx.json() {
        return print_json(&export);
    }
    let mut pem = export.pem;
    if !pem.ends_with('\n') {
        pem.push('\n');
    }
    print(&pem)
}
