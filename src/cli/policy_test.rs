//! `mcp-ledger policy test DIR --since 7d`: replays the calls the ledger recorded against a
//! candidate policy set and shows which decisions would change, so that a policy edit can be
//! reviewed against real traffic before it goes live.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;

use super::{CliError, LedgerArgs, exit};
use crate::policy::{CallContext, Effect, PolicySet, parse_duration};
use crate::record::{Event, format_timestamp};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The candidate policy directory
    dir: PathBuf,
    /// How far back to replay: e.g. 90m, 24h, 7d
    #[arg(long, default_value = "7d")]
    since: String,
    /// The candidate's default effect (allow, hold or deny)
    #[arg(long, default_value = "allow")]
    default: String,
    #[command(flatten)]
    ledger: LedgerArgs,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

/// A recorded call whose decision the candidate policy would change.
#[derive(Debug, Serialize)]
struct Change {
    call_id: String,
    timestamp: String,
    agent: Option<String>,
    server: Option<String>,
    tool: String,
    recorded: String,
    candidate: String,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    since: String,
    candidate_digest: String,
    replayed: usize,
    /// Calls whose arguments were erased or redacted away, which cannot be replayed.
    skipped: usize,
    changes: Vec<Change>,
}

pub async fn run(args: TestArgs) -> Result<u8, CliError> {
    let default = Effect::parse_default(&args.default).ok_or_else(|| {
        CliError::Usage(anyhow!("--default must be allow, hold or deny, not `{}`", args.default))
    })?;
    let candidate = PolicySet::load_dir(&args.dir, default).map_err(|error| {
        let problems: Vec<String> = error.problems().iter().map(|p| p.to_string()).collect();
        CliError::Usage(anyhow!("the candidate policy is invalid:\n{}", problems.join("\n")))
    })?;
    let window = parse_duration(&args.since).ok_or_else(|| {
        CliError::Usage(anyhow!(
            "--since takes a duration like 90m, 24h or 7d, not `{}`",
            args.since
        ))
    })?;
    let cutoff = time::OffsetDateTime::now_utc() - window;
    let store = args.ledger.open_existing(CliError::Failed).await?;

    let mut report = Report {
        since: format_timestamp(cutoff),
        candidate_digest: candidate.digest().to_owned(),
        ..Report::default()
    };
    let mut events = store.events();
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| CliError::Failed(e.into()))?;
        if event.event_type != "tool_call" || event.timestamp < report.since {
            continue;
        }
        let Some(input_ref) = event.data.get("input_ref").and_then(Value::as_str) else { continue };
        let arguments =
            match store.payload(input_ref).await.map_err(|e| CliError::Failed(e.into()))? {
                Some(body) => serde_json::from_str::<Value>(&body).unwrap_or(Value::Null),
                None => {
                    report.skipped += 1;
                    continue;
                }
            };
        report.replayed += 1;
        if let Some(change) = compare(&candidate, &event, &arguments) {
            report.changes.push(change);
        }
    }
    store.close().await;
    print(&args, &report);
    Ok(exit::OK)
}

/// The recorded decision as `effect (rule)`: events from before policies recorded `allow`.
fn recorded_decision(event: &Event) -> String {
    let decision = event.data.get("decision");
    let effect = decision
        .and_then(|d| d.get("effect").or(Some(d)))
        .and_then(Value::as_str)
        .unwrap_or("allow");
    let rule = decision.and_then(|d| d.get("rule")).and_then(Value::as_str);
    describe(effect, rule)
}

fn describe(effect: &str, rule: Option<&str>) -> String {
    match rule {
        Some(rule) => format!("{effect} ({rule})"),
        None => format!("{effect} (default)"),
    }
}

fn compare(candidate: &PolicySet, event: &Event, arguments: &Value) -> Option<Change> {
    let tool = event.data.get("tool").and_then(Value::as_str).unwrap_or_default();
    let input_pii = crate::record::pii_patterns(&event.data, "input");
    // Budgets depend on the day's spending at the time, which a replay cannot reconstruct
    // faithfully: they are left out, and say so in the docs.
    let context = CallContext {
        agent: event.agent.as_deref().unwrap_or_default(),
        server: event.server.as_deref().unwrap_or_default(),
        tool,
        arguments,
        spent_today: Some(0.0),
        input_pii: &input_pii,
    };
    let decision = candidate.evaluate(&context);
    let would = describe(decision.effect().as_str(), decision.rule().map(|r| r.name.as_str()));
    let was = recorded_decision(event);
    (would != was).then(|| Change {
        call_id: event.data.get("call_id").and_then(Value::as_str).unwrap_or_default().to_owned(),
        timestamp: event.timestamp.clone(),
        agent: event.agent.clone(),
        server: event.server.clone(),
        tool: tool.to_owned(),
        recorded: was,
        candidate: would,
    })
}

fn print(args: &TestArgs, report: &Report) {
    if args.json {
        println!("{}", serde_json::to_string(report).expect("a report serialises"));
        return;
    }
    if !report.changes.is_empty() {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED).set_header([
            "timestamp",
            "agent",
            "server",
            "tool",
            "recorded",
            "candidate",
        ]);
        for change in &report.changes {
            table.add_row([
                change.timestamp.clone(),
                change.agent.clone().unwrap_or_default(),
                change.server.clone().unwrap_or_default(),
                change.tool.clone(),
                change.recorded.clone(),
                change.candidate.clone(),
            ]);
        }
        println!("{table}");
    }
    println!(
        "replayed {} calls since {} against {} (digest {}): {} decision(s) would change{}",
        report.replayed,
        report.since,
        args.dir.display(),
        &report.candidate_digest[..12],
        report.changes.len(),
        if report.skipped > 0 {
            format!("; {} call(s) skipped, their arguments are no longer held", report.skipped)
        } else {
            String::new()
        }
    );
}
