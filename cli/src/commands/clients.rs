//! `keyward client add|list|revoke`: the daemon's client applications and
//! their grants. Through the daemon when one runs, else on the store (a
//! running daemon sees the change at the next request either way).

use std::fmt::Write as _;
use std::io::Write as _;
use std::str::FromStr as _;

use keyward_kms::clients::{ClientInfo, Operation};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::Ctx;
use crate::args::ClientCommand;
use crate::failure::{Exit, Failure};
use crate::files::{print, print_json};
use crate::render::format_time;

/// Runs a `client` subcommand.
pub(super) fn run(ctx: &Ctx<'_>, cmd: &ClientCommand) -> Result<(), Failure> {
    match cmd {
        ClientCommand::Add {
            name,
            allow,
            keys,
            token_out,
        } => {
            let ops = allow
                .iter()
                .map(|op| Operation::from_str(op.trim()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Failure::from(e).hint("see `keyward client add --help`"))?;
            let (info, token) = if let Some(mut daemon) = ctx.daemon()? {
                let mut answer = daemon.call(
                    "POST",
                    "/v1/clients",
                    Some(&json!({ "name": name, "allow": ops, "keys": keys })),
                )?;
                let info: ClientInfo =
                    serde_json::from_value(answer["client"].take()).map_err(|e| bad_answer(&e))?;
                let token = match answer.get_mut("token") {
                    Some(Value::String(t)) => SecretString::from(std::mem::take(t)),
                    _ => {
                        return Err(Failure::new(
                            Exit::Failure,
                            "the daemon's answer has no token",
                        ));
                    }
                };
                (info, token)
            } else {
                let mut service = ctx.open()?;
                ctx.check(service.client_add(name, &ops, keys))?
            };
            deliver_token(ctx, &info, &token, token_out.as_deref())
        }
        ClientCommand::List => {
            let clients: Vec<ClientInfo> = if let Some(mut daemon) = ctx.daemon()? {
                let mut answer = daemon.call("GET", "/v1/clients", None)?;
                serde_json::from_value(answer["clients"].take()).map_err(|e| bad_answer(&e))?
            } else {
                ctx.check(ctx.open()?.clients())?
            };
            if ctx.json() {
                return print_json(&clients);
            }
            print(&client_table(&clients))
        }
        ClientCommand::Revoke { name, all } => {
            let revoked = if let Some(mut daemon) = ctx.daemon()? {
                if *all {
                    let answer = daemon.call("POST", "/v1/clients/revoke-all", Some(&json!({})))?;
                    answer["revoked"].as_u64().unwrap_or(0)
                } else {
                    let name = name.as_deref().unwrap_or_default();
                    daemon.call(
                        "DELETE",
                        &format!("/v1/clients/{}", path_segment(name)),
                        None,
                    )?;
                    1
                }
            } else {
                let mut service = ctx.open()?;
                if *all {
                    ctx.check(service.client_revoke_all())? as u64
                } else {
                    ctx.check(service.client_revoke(name.as_deref().unwrap_or_default()))?;
                    1
                }
            };
            if ctx.json() {
                return print_json(&json!({ "revoked": revoked }));
            }
            match (all, name) {
                (true, _) => print(&format!(
                    "revoked {revoked} client(s): their tokens no longer work\n"
                )),
                (false, Some(name)) => print(&format!(
                    "revoked client {name}: its token no longer works\n"
                )),
                (false, None) => Ok(()),
            }
        }
    }
}

/// Prints the token once (or writes it to a private file).
fn deliver_token(
    ctx: &Ctx<'_>,
    info: &ClientInfo,
    token: &SecretString,
    out: Option<&std::path::Path>,
) -> Result<(), Failure> {
    let grant = format!(
        "{} on {}",
        info.allow
            .iter()
            .map(|o| o.as_str())
            .collect::<Vec<_>>()
            .join(","),
        info.keys.join(",")
    );
    // The token and a newline, in a buffer that is zeroized.
    let mut text = Zeroizing::new(String::with_capacity(token.expose_secret().len() + 1));
    text.push_str(token.expose_secret());
    text.push('\n');
    if let Some(path) = out {
        crate::files::write_new_private(path, text.as_bytes())?;
        crate::files::to_stderr(format_args!(
            "keyward: added client {} ({grant}); its token is in {} (mode 0600)\n",
            info.name,
            path.display()
        ));
        return Ok(());
    }
    if ctx.json() {
        return print_json(&json!({ "client": info, "token": token.expose_secret() }));
    }
    crate::files::to_stderr(format_args!(
        "keyward: added client {} ({grant}). Its token follows; it is shown only now. Give it \
         to the application through a file or its environment, never its command line.\n",
        info.name
    ));
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Failure::io("cannot write the token", &e))
}

fn client_table(clients: &[ClientInfo]) -> String {
    let mut text = format!(
        "{:<20}  {:<28}  {:<24}  {:<20}  {}\n",
        "NAME", "ALLOW", "KEYS", "CREATED", "STATE"
    );
    for c in clients {
        let state = match (c.revoked_at, c.last_used_at) {
            (Some(t), _) => format!("revoked {}", format_time(t)),
            (None, Some(t)) => format!("active, used {}", format_time(t)),
            (None, None) => "active, never used".to_owned(),
        };
        let _ = writeln!(
            text,
            "{:<20}  {:<28}  {:<24}  {:<20}  {state}",
            c.name,
            c.allow
                .iter()
                .map(|o| o.as_str())
                .collect::<Vec<_>>()
                .join(","),
            c.keys.join(","),
            format_time(c.created_at),
        );
    }
    text
}

/// A client name as one URL path segment (names are `[A-Za-z0-9._-]`;
/// anything else is percent-encoded so the daemon refuses it cleanly).
fn path_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn bad_answer(e: &serde_json::Error) -> Failure {
    Failure::new(
        Exit::Failure,
        format!("the daemon sent an unreadable client list ({e})"),
    )
}
