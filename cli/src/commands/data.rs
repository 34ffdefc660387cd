//! `encrypt`, `decrypt`, `sign`, `verify`, `export-public`.

use std::io::{Cursor, Read, Write};

use keyward_api::Bytes;
use keyward_api::types::{
    DatakeyRequest, DecryptRequest, EncryptRequest, ExportPublic, RewrapRequest, SignRequest,
    UnwrapRequest, VerifyRequest,
};
use keyward_kms::service::{PublicKeyExport, StreamSummary, Verified};
use keyward_kms::{KeyName, Service};
use serde_json::json;
use zeroize::Zeroizing;

use super::Ctx;
use crate::args::{
    DatakeyCommand, DecryptArgs, EncryptArgs, ExportPublicArgs, RewrapArgs, SignArgs, VerifyArgs,
};
use crate::client::decode;
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
    let (head, small) = read_head(&mut input)?;
    if small {
        if let Some(mut daemon) = ctx.daemon()? {
            let answer = daemon.send(&EncryptRequest {
                key: args.key.as_str().to_owned(),
                plaintext: Bytes::copy_of(&head),
                context: Bytes::copy_of(args.context.as_bytes()),
            })?;
            output
                .write_all(answer.ciphertext.bytes())
                .map_err(|e| Failure::io("cannot write the ciphertext", &e))?;
            output.commit()?;
            return report_summary(ctx, &summary_of(&answer.key, answer.version, head.len())?);
        }
    }
    stream_here(
        ctx,
        "encrypted",
        head,
        input,
        output,
        |service, input, output, progress| {
            service.encrypt_stream(&args.key, args.context.as_bytes(), input, output, progress)
        },
    )
}

/// `keyward decrypt`.
pub(super) fn decrypt(ctx: &Ctx<'_>, args: &DecryptArgs) -> Result<(), Failure> {
    let mut input = Input::open(args.input.as_deref())?;
    let mut output = Output::create(args.output.as_deref(), Content::Plaintext, args.force)?;
    let (head, small) = read_head(&mut input)?;
    if small {
        if let Some(mut daemon) = ctx.daemon()? {
            let answer = daemon.send(&DecryptRequest {
                ciphertext: Bytes::copy_of(&head),
                context: Bytes::copy_of(args.context.as_bytes()),
            })?;
            let plaintext = answer.plaintext.bytes();
            output
                .write_all(plaintext)
                .map_err(|e| Failure::io("cannot write the plaintext", &e))?;
            output.commit()?;
            return report_summary(
                ctx,
                &summary_of(&answer.key, answer.version, plaintext.len())?,
            );
        }
    }
    stream_here(
        ctx,
        "decrypted",
        head,
        input,
        output,
        |service, input, output, progress| {
            service.decrypt_stream(args.context.as_bytes(), input, output, progress)
        },
    )
}

/// A stream through this process's key service, unlocked here: `run`
/// streams `head` then the rest of `input` into `output`, its progress
/// shown as `done` ("encrypted", "decrypted"). Only once the stream is
/// complete (when decrypting: every chunk authenticated and the final one
/// seen) does an output file appear.
fn stream_here(
    ctx: &Ctx<'_>,
    done: &'static str,
    head: Zeroizing<Vec<u8>>,
    input: Input,
    mut output: Output,
    run: impl FnOnce(
        &mut Service,
        &mut dyn Read,
        &mut (dyn Write + Send),
        &mut dyn FnMut(u64),
    ) -> keyward_kms::Result<StreamSummary>,
) -> Result<(), Failure> {
    let mut service = ctx.open()?;
    ctx.unlock(&mut service, Reserve::Nothing)?;
    let mut progress = Progress::new(done, input.len());
    let mut input = Cursor::new(head).chain(input);
    let summary = ctx.check(run(&mut service, &mut input, &mut output, &mut |n| {
        progress.update(n);
    }))?;
    progress.finish();
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
    let audience = args.audience.as_deref().unwrap_or_default();
    let (head, small) = read_head(&mut input)?;
    let signature = match ctx.daemon()? {
        Some(mut daemon) if small => {
            let answer = daemon.send(&SignRequest {
                key: key.as_str().to_owned(),
                message: Bytes::copy_of(&head),
                audience: audience.to_owned(),
            })?;
            answer.signature.bytes().to_vec()
        }
        _ => {
            let mut service = ctx.open()?;
            ctx.unlock(&mut service, Reserve::Nothing)?;
            let mut input = Cursor::new(head).chain(input);
            ctx.check(service.sign(key, audience, &mut input))?
        }
    };
    output
        .write_all(&signature)
        .map_err(|e| Failure::io("cannot write the signature", &e))?;
    output.commit()
}

/// `keyward verify`.
pub(super) fn verify(ctx: &Ctx<'_>, args: &VerifyArgs) -> Result<(), Failure> {
    let signature = read_signature(&args.signature)?;
    let mut input = Input::open(args.input.as_deref())?;
    let (head, small) = read_head(&mut input)?;
    let verified: Verified = match ctx.daemon()? {
        Some(mut daemon) if small => decode(&daemon.send(&VerifyRequest {
            message: Bytes::copy_of(&head),
            signature: Bytes::copy_of(&signature),
            audience: args.audience.clone(),
            fresh: !args.archived,
        })?)?,
        _ => {
            let mut service = ctx.open()?;
            let mut input = Cursor::new(head).chain(input);
            let verified = if args.archived {
                service.verify(&args.audience, &signature, &mut input)
            } else {
                service.verify_fresh(&args.audience, &signature, &mut input)
            };
            ctx.check(verified)?
        }
    };
    // Say which checks ran: an archived verification proves who signed,
    // not that the message is new.
    let freshness = if args.archived {
        "freshness and replay not checked (--archived)"
    } else {
        "fresh, not seen before"
    };
    if ctx.json() {
        return print_json(&VerifyOutput {
            verified: &verified,
            freshness_checked: !args.archived,
        });
    }
    #[expect(
        clippy::cast_possible_wrap,
        reason = "a u64 Unix time past 2^63 is not a date; it only renders oddly"
    )]
    let when = format_time(verified.timestamp as i64);
    print(&format!(
        "good signature by key {} version {} (signed {when}, counter {}, audience {:?}); {freshness}\n",
        verified.key, verified.version, verified.counter, verified.audience
    ))
}

/// What `keyward verify --json` prints: the verified header, and whether
/// the freshness window and the replay counter were checked.
#[derive(serde::Serialize)]
struct VerifyOutput<'a> {
    #[serde(flatten)]
    verified: &'a Verified,
    freshness_checked: bool,
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
    let export: PublicKeyExport = match ctx.daemon()? {
        Some(mut daemon) => decode(&daemon.send(&ExportPublic {
            name: name.as_str().to_owned(),
            version: args.version,
        })?)?,
        None => ctx.check(ctx.open()?.export_public(name, args.version))?,
    };
    if ctx.json() {
        return print_json(&export);
    }
    let mut pem = export.pem;
    if !pem.ends_with('\n') {
        pem.push('\n');
    }
    print(&pem)
}

/// The most the CLI sends the daemon in one request: larger data is
/// streamed on the store directly (the API's one-shot bodies are at most
/// 1 MiB, and base64 adds a third).
const DAEMON_MAX_INPUT: usize = 700 * 1024;

/// Reads up to [`DAEMON_MAX_INPUT`] bytes; `true` if that was all of the
/// input. The bytes are zeroized when dropped (they may be plaintext).
fn read_head(input: &mut Input) -> Result<(Zeroizing<Vec<u8>>, bool), Failure> {
    // The whole limit at once: a Vec that grew would free its earlier
    // buffers, holding plaintext, without zeroizing them.
    let mut head = Zeroizing::new(Vec::with_capacity(DAEMON_MAX_INPUT + 1));
    input
        .take(DAEMON_MAX_INPUT as u64 + 1)
        .read_to_end(&mut head)
        .map_err(|e| Failure::io("cannot read the input", &e))?;
    let small = head.len() <= DAEMON_MAX_INPUT;
    Ok((head, small))
}

/// The summary of a one-shot operation through the daemon.
fn summary_of(key: &str, version: u32, bytes: usize) -> Result<StreamSummary, Failure> {
    let key = KeyName::new(key)
        .map_err(|_| Failure::new(Exit::Failure, "the daemon's answer names no key"))?;
    Ok(StreamSummary {
        key,
        version,
        bytes: bytes as u64,
    })
}

/// `keyward rewrap`.
pub(super) fn rewrap(ctx: &Ctx<'_>, args: &RewrapArgs) -> Result<(), Failure> {
    let mut input = Input::open(args.input.as_deref())?;
    let mut output = Output::create(args.output.as_deref(), Content::Binary, args.force)?;
    let (ciphertext, small) = read_head(&mut input)?;
    if !small {
        return Err(Failure::new(
            Exit::Usage,
            "rewrap takes one-shot ciphertexts (up to 700 KiB); this input is larger",
        )
        .hint("re-encrypt large data with `keyward decrypt | keyward encrypt`"));
    }
    let (ciphertext, key, version, from) = if let Some(mut daemon) = ctx.daemon()? {
        let answer = daemon.send(&RewrapRequest {
            ciphertext: Bytes::copy_of(&ciphertext),
            context: Bytes::copy_of(args.context.as_bytes()),
        })?;
        (
            answer.ciphertext.bytes().to_vec(),
            answer.key,
            u64::from(answer.version),
            u64::from(answer.from_version),
        )
    } else {
        let mut service = ctx.open()?;
        ctx.unlock(&mut service, Reserve::Nothing)?;
        let r = ctx.check(service.rewrap(args.context.as_bytes(), &ciphertext))?;
        (
            r.ciphertext,
            r.key.to_string(),
            u64::from(r.version),
            u64::from(r.from_version),
        )
    };
    output
        .write_all(&ciphertext)
        .map_err(|e| Failure::io("cannot write the ciphertext", &e))?;
    output.commit()?;
    if ctx.json() {
        let text = json!({ "key": key, "version": version, "from_version": from }).to_string();
        crate::files::to_stderr(format_args!("{text}\n"));
    }
    tracing::info!(key, from, version, "rewrapped");
    Ok(())
}

/// `keyward datakey generate|unwrap`.
pub(super) fn datakey(ctx: &Ctx<'_>, cmd: &DatakeyCommand) -> Result<(), Failure> {
    match cmd {
        DatakeyCommand::Generate {
            key,
            context,
            wrapped_out,
            output,
            force,
        } => {
            let mut out = Output::create(output.as_deref(), Content::Plaintext, *force)?;
            let (plaintext, wrapped) = if let Some(mut daemon) = ctx.daemon()? {
                let answer = daemon.send(&DatakeyRequest {
                    key: key.as_str().to_owned(),
                    context: Bytes::copy_of(context.as_bytes()),
                })?;
                (
                    answer.plaintext.into_inner(),
                    answer.wrapped.bytes().to_vec(),
                )
            } else {
                let mut service = ctx.open()?;
                ctx.unlock(&mut service, Reserve::Nothing)?;
                let dk = ctx.check(service.datakey_generate(key, context.as_bytes()))?;
                (dk.plaintext.into_inner(), dk.wrapped)
            };
            // The wrapped key first: a plaintext key whose wrapped form was
            // lost would encrypt data nobody can decrypt later.
            crate::files::write_new_private(wrapped_out, &wrapped)?;
            out.write_all(&plaintext)
                .map_err(|e| Failure::io("cannot write the data key", &e))?;
            out.commit()
        }
        DatakeyCommand::Unwrap {
            context,
            input,
            output,
            force,
        } => {
            let mut inp = Input::open(input.as_deref())?;
            let mut out = Output::create(output.as_deref(), Content::Plaintext, *force)?;
            let (wrapped, small) = read_head(&mut inp)?;
            if !small {
                return Err(Failure::new(
                    Exit::Integrity,
                    "the input is far too large to be a wrapped data key",
                ));
            }
            let plaintext = if let Some(mut daemon) = ctx.daemon()? {
                daemon
                    .send(&UnwrapRequest {
                        wrapped: Bytes::copy_of(&wrapped),
                        context: Bytes::copy_of(context.as_bytes()),
                    })?
                    .plaintext
                    .into_inner()
            } else {
                let mut service = ctx.open()?;
                ctx.unlock(&mut service, Reserve::Nothing)?;
                ctx.check(service.datakey_unwrap(context.as_bytes(), &wrapped))?
                    .plaintext
                    .into_inner()
            };
            out.write_all(&plaintext)
                .map_err(|e| Failure::io("cannot write the data key", &e))?;
            out.commit()
        }
    }
}
