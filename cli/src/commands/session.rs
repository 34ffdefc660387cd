//! `keyward unlock`, `lock` and `events`: the daemon's session, which only
//! exists while `keyward serve` runs.

use keyward_api::SecretText;
use keyward_api::client::Error as ApiError;
use keyward_api::types::{EventsQuery, LockRequest, Secrets, UnlockRequest, UnlockWith as With};
use keyward_kms::service::UnlockWith;
use keyward_kms::{Callbacks as _, SecretKind, SecretRequest};
use serde_json::Value;

use super::Ctx;
use crate::args::{EventsArgs, UnlockArgs};
use crate::client::{Daemon, UNLOCK_TIMEOUT, failure};
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
        UnlockWith::Any => With::Name("any".to_owned()),
        UnlockWith::Kind(kind) => With::Name(kind.as_str().to_owned()),
        UnlockWith::Id(id) => With::Id(id),
    };
    let mut secrets = Secrets::default();
    daemon.set_timeout(Some(UNLOCK_TIMEOUT));
    let answer = (|| {
        for _ in 0..MAX_ROUNDS {
            let request = UnlockRequest {
                with: Some(with.clone()),
                secrets: std::mem::take(&mut secrets),
                idle_timeout: args.idle_timeout,
                absolute_timeout: args.absolute_timeout,
            };
            let result = daemon.try_send(&request);
            secrets = request.secrets;
            let problem = match result {
                Ok(answer) => return Ok(answer),
                Err(ApiError::Api {
                    problem: Some(problem),
                    ..
                }) if problem.code == "secret-required" => problem,
                Err(e) => return Err(failure(&e)),
            };
            let name = problem.secret.as_deref().unwrap_or_default();
            let (kind, slot) = match name {
                "pin" => (SecretKind::Pin, &mut secrets.pin),
                "puk" => (SecretKind::Puk, &mut secrets.puk),
                "passphrase" => (SecretKind::Passphrase, &mut secrets.passphrase),
                "recovery-key" => (SecretKind::RecoveryKey, &mut secrets.recovery_key),
                _ => {
                    return Err(Failure::new(
                        Exit::Failure,
                        format!(
                            "the daemon asks for an unknown kind of secret {:?}",
                            problem.secret
                        ),
                    ));
                }
            };
            if slot.is_some() {
                return Err(Failure::new(
                    Exit::Failure,
                    format!("the daemon asked for the {name} twice"),
                ));
            }
            let secret = ctx
                .ui
                .request_secret(&SecretRequest {
                    kind,
                    description: problem.description.as_deref().unwrap_or("the keystore"),
                    retries_left: problem.tries_left,
                })
                .map_err(|e| ctx.ui.explain(e))?;
            *slot = Some(SecretText::new(secret));
        }
        Err(Failure::new(
            Exit::Failure,
            "the daemon kept asking for secrets; giving up",
        ))
    })()?;
    // The secrets sent are dropped (and zeroized) with `secrets`.
    drop(secrets);
    if ctx.json() {
        return print_json(
            &serde_json::to_value(&answer)
                .map_err(|e| Failure::new(Exit::Failure, format!("cannot encode JSON: {e}")))?,
        );
    }
    let p = &answer.protector;
    let session = &answer.session;
    print(&format!(
        "unlocked with {} '{}' (protector {}); the daemon locks after {} idle, at {} at the latest\n",
        p.kind,
        p.label,
        p.id,
        format_time(session.idle_expires_at),
        format_time(session.absolute_expires_at),
    ))
}

/// `keyward lock`.
pub(super) fn lock(ctx: &Ctx<'_>) -> Result<(), Failure> {
    let mut daemon = require_daemon(ctx, "lock")?;
    let answer = daemon.send(&LockRequest {})?;
    if ctx.json() {
        return print_json(&serde_json::json!({ "locked": answer.locked }));
    }
    print("locked: the daemon forgot the master key and every cached key\n")
}

/// `keyward events`.
pub(super) fn events(ctx: &Ctx<'_>, args: &EventsArgs) -> Result<(), Failure> {
    let mut daemon = require_daemon(ctx, "follow")?;
    let query = EventsQuery { since: args.since };
    let mut seen = 0u64;
    let json = ctx.json();
    daemon
        .client()
        .events(&query, |record| -> Result<bool, Failure> {
            let event = serde_json::to_value(&record)
                .map_err(|e| Failure::new(Exit::Failure, format!("cannot encode JSON: {e}")))?;
            let event = &event;
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
