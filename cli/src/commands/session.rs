//! `keyward unlock`, `lock` and `events`: the daemon's session, which only
//! exists while `keyward serve` runs.

use keyward_kms::service::UnlockWith;
use keyward_kms::{Callbacks as _, SecretKind, SecretRequest};
use secrecy::ExposeSecret as _;
use serde_json::{Map, Value, json};

use super::Ctx;
use crate::args::{EventsArgs, UnlockArgs};
use crate::client::{Daemon, UNLOCK_TIMEOUT, error_code, zeroize_json};
use crate::failure::{Exit, Failure};
use crate::files::{print, print_json};
use crate::render::format_time;
use crate::ui::Reserve;

/// Secrets asked for one unlock: each kind at most this many times (a wrong
/// PIN is the daemon's answer, never retried by us).
const MAX_ROUNDS: usize = 4;

/// The daemon serving this keystore, or the failure that says to start one.
fn require_daemon(ctx: &Ctx<'_>, what: &str) -> Result<Daemon, Failure> {
    ctx.daemon()?.ok_or_else(|| {
        Failure::new(
            Exit::Failure,
            format!(
                "no daemon is serving {}, so there is no session to {what}",
                ctx.path.display()
            ),
        )
        .hint(
            "start one with `keyward serve` (or `systemctl --user start keyward`); commands \
             without a daemon unlock for themselves and forget the key when they exit",
        )
    })
}

/// `keyward unlock`.
pub(super) fn unlock(ctx: &Ctx<'_>, args: &UnlockArgs) -> Result<(), Failure> {
    let mut daemon = require_daemon(ctx, "unlock")?;
    // Which protector: the same choice as a direct unlock (flags, supplied
    // secret, or a question on the terminal), made from the store's list.
    let with = {
        let service = ctx.open()?;
        let protectors = ctx.check(service.protectors())?;
        ctx.unlock_choice(&service, &protectors, Reserve::Nothing, ctx.cli.protector)?
    };
    let with = match with {
        UnlockWith::Any => json!("any"),
        UnlockWith::Kind(kind) => json!(kind.as_str()),
        UnlockWith::Id(id) => json!(id),
    };
    let mut secrets = Map::new();
    daemon.set_timeout(Some(UNLOCK_TIMEOUT));
    let result = (|| {
        for _ in 0..MAX_ROUNDS {
            let mut body = json!({ "with": with, "secrets": Value::Object(secrets.clone()) });
            if let Some(t) = args.idle_timeout {
                body["idle_timeout"] = json!(t);
            }
            if let Some(t) = args.absolute_timeout {
                body["absolute_timeout"] = json!(t);
            }
            let response = daemon.request("POST", "/v1/unlock", Some(&body));
            zeroize_json(&mut body);
            let response = response?;
            if (200..300).contains(&response.status) {
                return Ok(response.body);
            }
            if error_code(&response) != Some("secret-required") {
                return Err(crate::client::api_failure(&response));
            }
            let error = &response.body["error"];
            let kind = match error["secret"].as_str() {
                Some("pin") => SecretKind::Pin,
                Some("puk") => SecretKind::Puk,
                Some("passphrase") => SecretKind::Passphrase,
                Some("recovery-key") => SecretKind::RecoveryKey,
                other => {
                    return Err(Failure::new(
                        Exit::Failure,
                        format!("the daemon asks for an unknown kind of secret {other:?}"),
                    ));
                }
            };
            let name = error["secret"].as_str().unwrap_or_default().to_owned();
            if secrets.contains_key(&name) {
                return Err(Failure::new(
                    Exit::Failure,
                    format!("the daemon asked for the {name} twice"),
                ));
            }
            let description = error["description"].as_str().unwrap_or("the keystore");
            let retries_left = error["tries_left"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok());
            let secret = ctx
                .ui
                .request_secret(&SecretRequest {
                    kind,
                    description,
                    retries_left,
                })
                .map_err(|e| ctx.ui.explain(e))?;
            secrets.insert(name, Value::String(secret.expose_secret().to_owned()));
        }
        Err(Failure::new(
            Exit::Failure,
            "the daemon kept asking for secrets; giving up",
        ))
    })();
    for (_, v) in &mut secrets {
        zeroize_json(v);
    }
    let answer = result?;
    if ctx.json() {
        return print_json(&answer);
    }
    let p = &answer["protector"];
    let session = &answer["session"];
    let until = |k: &str| {
        session[k]
            .as_i64()
            .map_or_else(|| "-".to_owned(), format_time)
    };
    print(&format!(
        "unlocked with {} '{}' (protector {}); the daemon locks after {} idle, at {} at the latest\n",
        p["kind"].as_str().unwrap_or("?"),
        p["label"].as_str().unwrap_or("?"),
        p["id"],
        until("idle_expires_at"),
        until("absolute_expires_at"),
    ))
}

/// `keyward lock`.
pub(super) fn lock(ctx: &Ctx<'_>) -> Result<(), Failure> {
    let mut daemon = require_daemon(ctx, "lock")?;
    let answer = daemon.call("POST", "/v1/lock", Some(&json!({})))?;
    if ctx.json() {
        return print_json(&answer);
    }
    print("locked: the daemon forgot the master key and every cached key\n")
}

/// `keyward events`.
pub(super) fn events(ctx: &Ctx<'_>, args: &EventsArgs) -> Result<(), Failure> {
    let mut daemon = require_daemon(ctx, "follow")?;
    let path = match args.since {
        Some(seq) => format!("/v1/events?since={seq}"),
        None => "/v1/events".to_owned(),
    };
    let mut seen = 0u64;
    let json = ctx.json();
    daemon.stream_lines(&path, |event| {
        if json {
            print(&format!("{event}\n"))?;
        } else {
            print(&(event_line(event) + "\n"))?;
        }
        seen += 1;
        Ok(args.count.is_none_or(|n| seen < n))
    })
}

/// One event as a line of text.
fn event_line(e: &Value) -> String {
    let ts = e["ts"].as_i64().map_or_else(String::new, format_time);
    let mut details: Vec<String> = e["fields"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.as_str() != "actor")
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(client) = e["fields"]["actor"]["client"].as_str() {
        details.push(format!("client={client}"));
    }
    format!(
        "{ts}  #{:<6} {:<24} {:<5} {}",
        e["seq"],
        e["action"].as_str().unwrap_or("?"),
        e["status"].as_str().unwrap_or("?"),
        details.join(" ")
    )
}
