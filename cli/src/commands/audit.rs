//! `keyward audit ...`.

use keyward_kms::audit::{AuditRecord, AuditSummary};

use super::Ctx;
use crate::args::AuditCommand;
use keyward_api::types::{AuditQuery, VerifyAudit};

use crate::client::decode;
use crate::failure::{Exit, Failure};
use crate::files::{print, print_json};
use crate::render::format_time;

/// Records fetched per query: the log can hold millions, and we print as
/// we go.
const PAGE: usize = 1000;

/// Runs an `audit` subcommand.
pub(super) fn run(ctx: &Ctx<'_>, cmd: &AuditCommand) -> Result<(), Failure> {
    // Through the daemon when one runs (it verifies the checkpoint with the
    // master key it holds); else on the store.
    let mut daemon = ctx.daemon()?;
    let service = match daemon {
        Some(_) => None,
        None => Some(ctx.open()?),
    };
    let mut records = |from: u64| -> Result<Vec<AuditRecord>, Failure> {
        match (&mut daemon, &service) {
            (Some(d), _) => {
                let answer = d.send(&AuditQuery {
                    since: Some(from),
                    limit: Some(PAGE as u64),
                })?;
                decode(&answer.records)
            }
            (None, Some(s)) => ctx.check(s.audit_records(from, PAGE)),
            (None, None) => unreachable!("a service when there is no daemon"),
        }
    };
    match cmd {
        AuditCommand::Show { since } => {
            let json = ctx.json();
            let mut printed_any = false;
            let mut next = *since;
            if json {
                print("[")?;
            }
            loop {
                // We ask from the last record printed and drop what we have
                // already shown, so paging is right whether the Service's
                // `since` counts inclusively or not.
                let from = next.saturating_sub(1);
                let page = records(from)?;
                let fresh: Vec<&AuditRecord> = page.iter().filter(|r| r.seq >= next).collect();
                if fresh.is_empty() {
                    break;
                }
                let mut text = String::new();
                for record in fresh {
                    if json {
                        let one = serde_json::to_string(record).map_err(|e| {
                            Failure::new(Exit::Failure, format!("cannot encode JSON: {e}"))
                        })?;
                        text.push_str(if printed_any { ",\n  " } else { "\n  " });
                        text.push_str(&one);
                    } else {
                        text.push_str(&record_line(record));
                    }
                    printed_any = true;
                    next = record.seq.saturating_add(1);
                }
                print(&text)?;
            }
            if json {
                print(if printed_any { "\n]\n" } else { "]\n" })?;
            }
            Ok(())
        }
        AuditCommand::Verify => {
            let summary: AuditSummary = match (&mut daemon, &service) {
                (Some(d), _) => decode(&d.send(&VerifyAudit)?)?,
                (None, Some(s)) => ctx.check(s.audit_verify())?,
                (None, None) => unreachable!("a service when there is no daemon"),
            };
            if ctx.json() {
                return print_json(&summary);
            }
            print(&format!(
                "audit log verified: {} records, head {}\n",
                summary.records, summary.head
            ))
        }
    }
}

/// One record as a line of text.
fn record_line(r: &AuditRecord) -> String {
    let fields = match &r.fields {
        serde_json::Value::Null => String::new(),
        serde_json::Value::Object(map) if map.is_empty() => String::new(),
        other => other.to_string(),
    };
    let mut line = format!(
        "{:>6}  {}  {:<20}  {:<5}  {}",
        r.seq,
        format_time(r.ts),
        r.action,
        r.status,
        fields
    );
    line.truncate(line.trim_end().len());
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lines() {
        let r = AuditRecord {
            seq: 7,
            ts: 0,
            action: "key.create".into(),
            status: "ok".into(),
            fields: serde_json::json!({"key": "notes"}),
            prev: "00".into(),
            hash: "11".into(),
        };
        assert_eq!(
            record_line(&r),
            "     7  1970-01-01 00:00:00Z  key.create            ok     {\"key\":\"notes\"}\n"
        );
    }
}
