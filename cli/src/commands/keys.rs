//! `keyward key ...`.

use std::fmt::Write as _;

use keyward_kms::service::{KeyInfo, KeySpec};
use keyward_kms::{DataClass, Error};

use super::Ctx;
use crate::args::KeyCommand;
use crate::failure::Failure;
use crate::files::{print, print_json};
use crate::render::{format_duration, format_time};
use crate::ui::Reserve;

/// The remedy when a `secret` key is asked of the keystore.
pub(crate) const SECRET_CLASS_HINT: &str = "secret keys live only in the memory of `keyward \
     serve`; use --class sensitive, private or general for a key kept in the keystore";

/// Runs a `key` subcommand.
pub(super) fn run(ctx: &Ctx<'_>, cmd: &KeyCommand) -> Result<(), Failure> {
    let mut service = ctx.open()?;
    let info = match cmd {
        KeyCommand::Create {
            name,
            purpose,
            class,
            rotation_period,
            usage_limit,
        } => {
            let spec = KeySpec {
                purpose: (*purpose).into(),
                class: (*class).into(),
                rotation_period: *rotation_period,
                usage_limit: *usage_limit,
            };
            ctx.unlock(&mut service, Reserve::Nothing)?;
            match service.create_key(name, &spec) {
                Ok(info) => info,
                Err(e @ Error::ClassPolicy { .. }) if spec.class == DataClass::Secret => {
                    return Err(Failure::from(e).hint(SECRET_CLASS_HINT));
                }
                Err(e) => return Err(ctx.ui.explain(e)),
            }
        }
        KeyCommand::List => {
            let keys = ctx.check(service.keys())?;
            if ctx.json() {
                return print_json(&keys);
            }
            return print(&key_table(&keys));
        }
        KeyCommand::Show { name } => ctx.check(service.key(name))?,
        KeyCommand::Rotate { name } => {
            ctx.unlock(&mut service, Reserve::Nothing)?;
            ctx.check(service.rotate_key(name))?
        }
        KeyCommand::Retire { name, min_version } => {
            ctx.with_unlock(&mut service, |s| s.retire(name, *min_version))?
        }
    };
    if ctx.json() {
        return print_json(&info);
    }
    let headline = match cmd {
        KeyCommand::Create { .. } => format!("created key {}\n", info.name),
        KeyCommand::Rotate { .. } => format!(
            "key {}: version {} is now primary; older versions still decrypt\n",
            info.name, info.primary_version
        ),
        KeyCommand::Retire { .. } if info.min_decryption_version <= 1 => {
            format!("key {}: every version decrypts\n", info.name)
        }
        KeyCommand::Retire { .. } => format!(
            "key {}: versions below {} no longer decrypt\n",
            info.name, info.min_decryption_version
        ),
        KeyCommand::Show { .. } | KeyCommand::List => String::new(),
    };
    print(&(headline + &key_details(&info)))
}

/// One line per key.
fn key_table(keys: &[KeyInfo]) -> String {
    let mut text = format!(
        "{:<24}  {:<7}  {:<9}  {:>7}  {:>7}  {:>8}  {}\n",
        "NAME", "PURPOSE", "CLASS", "PRIMARY", "MIN", "VERSIONS", "ROTATION"
    );
    for k in keys {
        let _ = writeln!(
            text,
            "{:<24}  {:<7}  {:<9}  {:>7}  {:>7}  {:>8}  {}",
            k.name.as_str(),
            k.purpose.as_str(),
            k.class.as_str(),
            k.primary_version,
            k.min_decryption_version,
            k.versions.len(),
            k.rotation_period
                .map_or_else(|| "-".to_owned(), format_duration)
        );
    }
    text
}

/// A key with all its versions.
fn key_details(k: &KeyInfo) -> String {
    let mut text = format!(
        "name                    {}\n\
         purpose                 {}\n\
         class                   {}\n\
         created                 {}\n\
         primary version         {}\n\
         min decryption version  {}\n\
         rotation period         {}\n\
         usage limit             {}\n\
         versions:\n",
        k.name,
        k.purpose,
        k.class,
        format_time(k.created_at),
        k.primary_version,
        k.min_decryption_version,
        k.rotation_period
            .map_or_else(|| "none".to_owned(), format_duration),
        k.usage_limit,
    );
    let _ = writeln!(
        text,
        "  {:>7}  {:<8}  {:<20}  {:>12}",
        "VERSION", "STATE", "CREATED", "USES"
    );
    for v in &k.versions {
        let _ = writeln!(
            text,
            "  {:>7}  {:<8}  {:<20}  {:>12}",
            v.version,
            v.state,
            format_time(v.created_at),
            v.uses
        );
    }
    text
}
