//! `keyward client add|list|revoke`: the daemon's client applications and
//! their grants. Through the daemon when one runs, else on the store (a
//! running daemon sees the change at the next request either way).

use std::fmt::Write as _;
use std::io::Write as _;
use std::str::FromStr as _;

use keyward_api::types::{AddClient, ListClients, RevokeAll, RevokeClient};
use keyward_kms::clients::{ClientInfo, Operation};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;
use zeroize::Zeroizing;

use super::Ctx;
use crate::args::ClientCommand;
use crate::client::decode;
use crate::failure::Failure;
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
                let answer = daemon.send(&AddClient {
                    name: name.clone(),
                    allow: decode(&ops)?,
                    keys: keys.clone(),
                })?;
                (decode(&answer.client)?, answer.token.into_secret())
            } else {
                let mut service = ctx.open()?;
                ctx.check(service.client_add(name, &ops, keys))?
            };
            deliver_token(ctx, &info, &token, token_out.as_deref())
        }
        ClientCommand::List => {
            let clients: Vec<ClientInfo> = if let Some(mut daemon) = ctx.daemon()? {
                decode(&daemon.send(&ListClients)?.clients)?
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
                    daemon.send(&RevokeAll {})?.revoked
                } else {
                    daemon.send(&RevokeClient {
                        name: name.as_deref().unwrap_or_default().to_owned(),
                    })?;
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
