//! `keyward yubikey setup`: replaces a YubiKey's factory PIN, PUK and
//! management key so that it can be enrolled (docs/YUBIKEY.md).

use super::Ctx;
use crate::args::{YubikeyCommand, YubikeySetupArgs};
use crate::failure::Failure;

/// `keyward yubikey ...`.
pub(super) fn run(ctx: &Ctx<'_>, cmd: &YubikeyCommand) -> Result<(), Failure> {
    match cmd {
        YubikeyCommand::Setup(args) => setup(ctx, args),
    }
}

#[cfg(feature = "yubikey")]
fn setup(ctx: &Ctx<'_>, args: &YubikeySetupArgs) -> Result<(), Failure> {
    use std::fmt::Write as _;

    use keyward_kms::{BackendKind, SecretKind};
    use serde_json::json;

    use crate::files::{print, print_json};

    let yk = ctx.hardware.yubikey();
    let device = args.serial.map(|s| s.to_string());
    let explain = |e: &keyward_kms::Error| ctx.ui.explain_for(e, Some(BackendKind::Yubikey));
    let defaults = yk
        .factory_defaults(device.as_deref())
        .map_err(|e| explain(&e))?;
    let description = format!("YubiKey {}", defaults.serial);
    let new_pin = if defaults.pin {
        Some(
            ctx.ui
                .new_device_code(SecretKind::Pin, &description, None)?,
        )
    } else {
        None
    };
    let new_puk = if defaults.puk {
        Some(
            ctx.ui
                .new_device_code(SecretKind::Puk, &description, args.puk_fd)?,
        )
    } else {
        None
    };
    let serial = defaults.serial.to_string();
    let report = yk
        .setup(Some(&serial), new_pin.as_ref(), new_puk.as_ref(), &ctx.ui)
        .map_err(|e| explain(&e))?;
    if ctx.json() {
        return print_json(&json!({
            "serial": report.serial,
            "pin_changed": report.pin_changed,
            "puk_changed": report.puk_changed,
            "management_key_changed": report.management_key_changed,
        }));
    }
    let mut text = format!("YubiKey {}:\n", report.serial);
    for (changed, what) in [
        (report.pin_changed, "PIN changed"),
        (report.puk_changed, "PUK changed"),
        (
            report.management_key_changed,
            "management key replaced by a random one stored PIN-protected on the card",
        ),
    ] {
        if changed {
            text.push_str("  ");
            text.push_str(what);
            text.push('\n');
        }
    }
    if !(report.pin_changed || report.puk_changed || report.management_key_changed) {
        text.push_str("  nothing to do: PIN, PUK and management key are already set\n");
    }
    let _ = writeln!(
        text,
        "enroll it with `keyward enroll yubikey --serial {}`",
        report.serial
    );
    print(&text)
}

#[cfg(not(feature = "yubikey"))]
fn setup(_ctx: &Ctx<'_>, _args: &YubikeySetupArgs) -> Result<(), Failure> {
    Err(Failure::new(
        crate::failure::Exit::Device,
        "this keyward was built without YubiKey support (cargo feature `yubikey`)",
    ))
}
