//! `init`, `status`, `enroll`, `protectors`, `master`.

use std::fmt::Write as _;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use keyward_kms::service::ProtectorInfo;
use keyward_kms::{BackendKind, EnrollRequest, Error, Service};
use serde_json::json;

use super::{Ctx, backends};
use crate::args::{EnrollCommand, InitArgs, MasterCommand, ProtectorsCommand};
use crate::failure::{Exit, Failure};
use crate::files::{print, print_json};
use crate::render::format_time;

/// Checks, before any work, that a new recovery key will have somewhere to
/// go: a file that does not exist yet, or a terminal.
fn check_recovery_destination(ctx: &Ctx<'_>, out: Option<&Path>) -> Result<(), Failure> {
    match out {
        Some(path) => {
            if std::fs::symlink_metadata(path).is_ok() {
                return Err(Failure::new(
                    Exit::Refused,
                    format!("{} already exists", path.display()),
                )
                .hint("keyward never overwrites a recovery key file; choose a new file name"));
            }
            Ok(())
        }
        None if ctx.ui.interactive() => Ok(()),
        None => Err(Failure::new(
            Exit::Usage,
            "there is no terminal to show the new recovery key on",
        )
        .hint(
            "pass --recovery-key-out FILE to have it written to a new file (mode 0600), then \
             keep that file offline",
        )),
    }
}

/// Checks that a new passphrase can be had: from a source or a terminal.
fn check_new_passphrase_source(ctx: &Ctx<'_>) -> Result<(), Failure> {
    if ctx.ui.has_passphrase_source() || ctx.ui.interactive() {
        Ok(())
    } else {
        Err(crate::ui::missing_secret(
            keyward_kms::SecretKind::NewPassphrase,
        ))
    }
}

/// Creates the keystore's directory (mode 0700) if it is missing.
fn create_store_dir(path: &Path) -> Result<(), Failure> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Failure::io(format_args!("cannot create {}", dir.display()), &e))
}

fn describe(p: &ProtectorInfo) -> String {
    format!("protector {}: {} '{}'", p.id, p.kind, p.label)
}

/// `keyward init`.
pub(super) fn init(ctx: &mut Ctx<'_>, args: &InitArgs) -> Result<(), Failure> {
    if !args.passphrase && !args.argon2.options().is_empty() {
        return Err(Failure::new(
            Exit::Usage,
            "the --argon2-* options apply only with --passphrase",
        ));
    }
    if ctx.path.try_exists().unwrap_or(false) {
        return Err(Error::StoreExists {
            path: ctx.path.clone(),
        }
        .into());
    }
    check_recovery_destination(ctx, args.recovery_key_out.as_deref())?;
    if args.passphrase {
        check_new_passphrase_source(ctx)?;
    }
    create_store_dir(&ctx.path)?;
    ctx.ui.set_recovery_out(args.recovery_key_out.clone());

    let request = EnrollRequest {
        label: "recovery".to_owned(),
        ..EnrollRequest::default()
    };
    let (mut service, recovery) = match Service::init(
        &ctx.path,
        backends(),
        BackendKind::Recovery,
        &request,
        &ctx.ui,
    ) {
        Ok(done) => done,
        Err(e) => {
            // No keystore was created, so the key in the file unlocks
            // nothing; do not leave it lying around.
            ctx.ui.discard_written_recovery_key();
            return Err(ctx.ui.explain(e));
        }
    };
    // From here on the keystore exists and the recovery key file is the way
    // into it: keep it whatever happens next.
    ctx.ui.keep_written_recovery_key();
    let mut enrolled = vec![recovery];
    if args.passphrase {
        let request = EnrollRequest {
            label: "passphrase".to_owned(),
            options: args.argon2.options(),
            ..EnrollRequest::default()
        };
        match service.enroll(BackendKind::Passphrase, &request, &ctx.ui) {
            Ok(p) => enrolled.push(p),
            Err(e) => {
                return Err(ctx.ui.explain(e).hint(
                    "the keystore was created with the recovery key only; add a passphrase \
                     with `keyward enroll passphrase`",
                ));
            }
        }
    }
    let status = ctx.check(service.status())?;
    if ctx.json() {
        return print_json(&json!({ "status": status, "protectors": enrolled }));
    }
    let mut text = format!("created keystore {}\n", ctx.path.display());
    for p in &enrolled {
        let _ = writeln!(text, "enrolled {}", describe(p));
    }
    print(&text)
}

/// `keyward status`.
pub(super) fn status(ctx: &Ctx<'_>) -> Result<(), Failure> {
    let service = ctx.open()?;
    let status = ctx.check(service.status())?;
    if ctx.json() {
        return print_json(&status);
    }
    print(&format!(
        "keystore          {}\n\
         store id          {}\n\
         schema version    {}\n\
         master key epoch  {}\n\
         protectors        {}\n\
         keys              {}\n\
         audit records     {}\n",
        status.path.display(),
        status.store_id,
        status.schema_version,
        status.mk_epoch,
        status.protectors,
        status.keys,
        status.audit_records,
    ))
}

/// `keyward enroll ...`.
pub(super) fn enroll(ctx: &mut Ctx<'_>, cmd: &EnrollCommand) -> Result<(), Failure> {
    let (kind, request) = match cmd {
        EnrollCommand::Recovery {
            label,
            recovery_key_out,
        } => {
            check_recovery_destination(ctx, recovery_key_out.as_deref())?;
            ctx.ui.set_recovery_out(recovery_key_out.clone());
            (
                BackendKind::Recovery,
                EnrollRequest {
                    label: label.clone(),
                    ..EnrollRequest::default()
                },
            )
        }
        EnrollCommand::Passphrase { label, argon2 } => {
            check_new_passphrase_source(ctx)?;
            (
                BackendKind::Passphrase,
                EnrollRequest {
                    label: label.clone(),
                    options: argon2.options(),
                    ..EnrollRequest::default()
                },
            )
        }
    };
    let mut service = ctx.open()?;
    ctx.unlock(&mut service, kind == BackendKind::Passphrase)?;
    let info = match service.enroll(kind, &request, &ctx.ui) {
        Ok(info) => {
            ctx.ui.keep_written_recovery_key();
            info
        }
        Err(e) => {
            ctx.ui.discard_written_recovery_key();
            return Err(ctx.ui.explain(e));
        }
    };
    if ctx.json() {
        return print_json(&info);
    }
    print(&format!("enrolled {}\n", describe(&info)))
}

/// `keyward protectors ...`.
pub(super) fn protectors(ctx: &Ctx<'_>, cmd: &ProtectorsCommand) -> Result<(), Failure> {
    let mut service = ctx.open()?;
    match cmd {
        ProtectorsCommand::List => {
            let list = ctx.check(service.protectors())?;
            if ctx.json() {
                return print_json(&list);
            }
            let mut text = format!(
                "{:>4}  {:<10}  {:<20}  {:>5}  {:<20}  {}\n",
                "ID", "KIND", "LABEL", "EPOCH", "ENROLLED", "DEVICE"
            );
            for p in &list {
                let _ = writeln!(
                    text,
                    "{:>4}  {:<10}  {:<20}  {:>5}  {:<20}  {}",
                    p.id,
                    p.kind.as_str(),
                    p.label,
                    p.mk_epoch,
                    format_time(p.created_at),
                    p.device_id.as_deref().unwrap_or("-")
                );
            }
            print(&text)
        }
        ProtectorsCommand::Remove { id } => {
            let id = *id;
            ctx.with_unlock(&mut service, |s| s.remove_protector(id))?;
            if ctx.json() {
                return print_json(&json!({ "removed": id }));
            }
            print(&format!("removed protector {id}\n"))
        }
    }
}

/// `keyward master ...`.
pub(super) fn master(ctx: &Ctx<'_>, cmd: &MasterCommand) -> Result<(), Failure> {
    match cmd {
        MasterCommand::Rotate => {
            let mut service = ctx.open()?;
            ctx.unlock(&mut service, false)?;
            let epoch = ctx.check(service.rotate_master())?;
            if ctx.json() {
                return print_json(&json!({ "mk_epoch": epoch }));
            }
            print(&format!(
                "master key rotated: epoch {epoch}; every key and protector was re-wrapped\n"
            ))
        }
    }
}
