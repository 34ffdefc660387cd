//! `init`, `status`, `enroll`, `protectors`, `master`.

use std::fmt::Write as _;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use keyward_kms::service::ProtectorInfo;
use keyward_kms::{BackendKind, EnrollOptions, EnrollRequest, Error, Service};
use serde_json::json;

use super::Ctx;
use crate::args::{EnrollCommand, InitArgs, MasterCommand, ProtectorsCommand};
use crate::failure::{Exit, Failure};
use crate::files::{print, print_json};
use crate::render::format_time;
use crate::ui::Reserve;

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
    let device = match &p.device_id {
        Some(d) if p.kind.is_hardware() => format!(" on {d}"),
        _ => String::new(),
    };
    format!("protector {}: {} '{}'{device}", p.id, p.kind, p.label)
}

/// `keyward init`.
pub(super) fn init(ctx: &mut Ctx<'_>, args: &InitArgs) -> Result<(), Failure> {
    if !args.passphrase && args.argon2.any() {
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
        ctx.hardware.backends(),
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
            options: EnrollOptions::Passphrase(args.argon2.options()),
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
    let daemon = ctx
        .daemon()?
        .map(|d| serde_json::to_value(&d.status).unwrap_or_default());
    if ctx.json() {
        let mut value = serde_json::to_value(&status).unwrap_or_default();
        value["daemon"] = daemon.unwrap_or(serde_json::Value::Null);
        return print_json(&value);
    }
    let daemon_line = match &daemon {
        None => "daemon            not running (commands work on the store directly)\n".to_owned(),
        Some(d) if d["unlocked"].as_bool() == Some(true) => format!(
            "daemon            pid {}, unlocked until {} (idle) / {} (at the latest)\n",
            d["pid"],
            d["session"]["idle_expires_at"]
                .as_i64()
                .map_or_else(|| "-".to_owned(), format_time),
            d["session"]["absolute_expires_at"]
                .as_i64()
                .map_or_else(|| "-".to_owned(), format_time),
        ),
        Some(d) => format!(
            "daemon            pid {}, locked (keyward unlock)\n",
            d["pid"]
        ),
    };
    print(
        &(format!(
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
        ) + &daemon_line),
    )
}

/// Checks that the PIN of a device being enrolled can be had: from a
/// source or a terminal.
fn check_pin_source(ctx: &Ctx<'_>) -> Result<(), Failure> {
    if ctx.ui.has_pin_source() || ctx.ui.interactive() {
        Ok(())
    } else {
        Err(crate::ui::missing_secret(keyward_kms::SecretKind::Pin))
    }
}

/// The protector `enroll ... --replace` replaces: `--protector ID` (which
/// must be of `kind`), else the only one of `kind`.
fn protector_to_replace(
    ctx: &Ctx<'_>,
    service: &Service,
    kind: BackendKind,
) -> Result<u32, Failure> {
    let list = ctx.check(service.protectors())?;
    if let Some(id) = ctx.cli.protector {
        let Some(p) = list.iter().find(|p| p.id == id) else {
            return Err(Error::ProtectorNotFound { id }.into());
        };
        if p.kind != kind {
            return Err(Failure::new(
                Exit::Usage,
                format!("protector {id} is a {} protector, not a {kind} one", p.kind),
            )
            .hint(format!(
                "`keyward enroll {kind} --replace` replaces a {kind} protector; \
                 `keyward protectors list` shows the ids"
            )));
        }
        return Ok(id);
    }
    let same: Vec<&ProtectorInfo> = list.iter().filter(|p| p.kind == kind).collect();
    match same.as_slice() {
        [only] => Ok(only.id),
        [] => Err(Failure::new(
            Exit::NotFound,
            format!("no {kind} protector is enrolled, so there is none to replace"),
        )
        .hint(format!(
            "enroll one with `keyward enroll {kind}` (without --replace)"
        ))),
        many => Err(Failure::new(
            Exit::Usage,
            format!(
                "{} {kind} protectors are enrolled (ids {})",
                many.len(),
                many.iter()
                    .map(|p| p.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .hint("choose the one to replace with --protector ID")),
    }
}

/// `keyward enroll ...`.
pub(super) fn enroll(ctx: &mut Ctx<'_>, cmd: &EnrollCommand) -> Result<(), Failure> {
    let (kind, request, reserve, replace) = match cmd {
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
                Reserve::Nothing,
                false,
            )
        }
        EnrollCommand::Passphrase { label, argon2 } => {
            check_new_passphrase_source(ctx)?;
            (
                BackendKind::Passphrase,
                EnrollRequest {
                    label: label.clone(),
                    options: EnrollOptions::Passphrase(argon2.options()),
                    ..EnrollRequest::default()
                },
                Reserve::Passphrase,
                false,
            )
        }
        EnrollCommand::Tpm(args) => {
            // A PIN-less TPM key needs nothing from the PIN source, which
            // may then unlock (another device).
            let reserve = if args.with_pin() {
                check_pin_source(ctx)?;
                Reserve::Pin
            } else {
                Reserve::Nothing
            };
            (
                BackendKind::Tpm,
                EnrollRequest {
                    label: args.label.clone(),
                    // The TCTI (--tcti, KEYWARD_TPM_TCTI) is the backend's.
                    device: None,
                    options: args.options(),
                },
                reserve,
                args.replace,
            )
        }
        EnrollCommand::Pkcs11(args) => {
            // The token's user PIN logs in; a URI's pin-source= is the
            // backend's to read.
            if !args.uri.contains("pin-source=") {
                check_pin_source(ctx)?;
            }
            (
                BackendKind::Pkcs11,
                EnrollRequest {
                    label: args.label.clone(),
                    device: Some(args.uri.clone()),
                    options: args.options(),
                },
                Reserve::Pin,
                args.replace,
            )
        }
        EnrollCommand::Yubikey(args) => {
            check_pin_source(ctx)?;
            (
                BackendKind::Yubikey,
                EnrollRequest {
                    label: args.label.clone(),
                    device: args.serial.map(|s| s.to_string()),
                    options: args.options(),
                },
                Reserve::Pin,
                args.replace,
            )
        }
    };
    let mut service = ctx.open()?;
    let replaced = if replace {
        Some(protector_to_replace(ctx, &service, kind)?)
    } else {
        None
    };
    // With --replace, --protector names the protector to replace, not the
    // one to unlock with.
    let unlock_protector = if replace { None } else { ctx.cli.protector };
    ctx.unlock_with(&mut service, reserve, unlock_protector)?;
    let result = match replaced {
        Some(old) => service.replace_protector(old, kind, &request, &ctx.ui),
        None => service.enroll(kind, &request, &ctx.ui),
    };
    let info = match result {
        Ok(info) => {
            ctx.ui.keep_written_recovery_key();
            info
        }
        Err(e) => {
            ctx.ui.discard_written_recovery_key();
            return Err(ctx.ui.explain_for(&e, Some(kind)));
        }
    };
    if ctx.json() {
        let mut value = serde_json::to_value(&info)
            .map_err(|e| Failure::new(Exit::Failure, format!("cannot encode JSON: {e}")))?;
        if let (Some(old), Some(map)) = (replaced, value.as_object_mut()) {
            map.insert("replaced".to_owned(), json!(old));
        }
        return print_json(&value);
    }
    match replaced {
        Some(old) => print(&format!(
            "enrolled {}\nremoved protector {old}, which it replaces\n",
            describe(&info)
        )),
        None => print(&format!("enrolled {}\n", describe(&info))),
    }
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
            let epoch = if let Some(mut daemon) = ctx.daemon()? {
                // The daemon holds the master key: it must be the one to
                // replace it, or it would keep using the old one.
                u64::from(daemon.send(&keyward_api::types::RotateMaster {})?.epoch)
            } else {
                let mut service = ctx.open()?;
                ctx.unlock(&mut service, Reserve::Nothing)?;
                u64::from(ctx.check(service.rotate_master())?)
            };
            if ctx.json() {
                return print_json(&json!({ "mk_epoch": epoch }));
            }
            print(&format!(
                "master key rotated: epoch {epoch}; every key and protector was re-wrapped\n"
            ))
        }
    }
}
