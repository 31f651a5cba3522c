//! `mcp-ledger approvals`: the operator's side of the hold queue. Works from any machine that
//! reaches the ledger; the waiting proxy notices a decision within a second.

use std::sync::Arc;

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::Value;
use time::OffsetDateTime;

use super::{CliError, LedgerArgs, exit};
use crate::approval::{self, DecideError, Entry, HoldRequest, State, Verdict};
use crate::record::format_timestamp;
use crate::store::{self, LedgerUrl, Store, StoreOptions};

#[derive(Debug, Args)]
pub struct ApprovalsArgs {
    #[command(subcommand)]
    command: ApprovalsCommand,
}

#[derive(Debug, Subcommand)]
enum ApprovalsCommand {
    /// List held calls waiting for a decision, oldest first
    List {
        #[command(flatten)]
        ledger: LedgerArgs,
        /// Print one JSON object per line instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show one request: the call's arguments, rule, reason, approvers, expiry and decision
    Show {
        /// The approval id (from `approvals list`)
        id: String,
        #[command(flatten)]
        ledger: LedgerArgs,
        /// Print a JSON object
        #[arg(long)]
        json: bool,
    },
    /// Approve a held call: the proxy forwards it, authorized by approval:operator/NAME
    Approve {
        /// The approval id (from `approvals list`)
        id: String,
        #[command(flatten)]
        operator: OperatorArgs,
        /// Why it is approved (recorded)
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        ledger: LedgerArgs,
    },
    /// Deny a held call: the agent gets an error and the call is never forwarded
    Deny {
        /// The approval id (from `approvals list`)
        id: String,
        /// Why it is denied (recorded, and shown to the agent)
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        operator: OperatorArgs,
        #[command(flatten)]
        ledger: LedgerArgs,
    },
}

#[derive(Debug, Args)]
struct OperatorArgs {
    /// Who decides, recorded as operator/NAME [default: $USER]
    #[arg(long, env = "MCP_LEDGER_OPERATOR")]
    operator: Option<String>,
}

impl OperatorArgs {
    fn name(self) -> Result<String, CliError> {
        self.operator
            .or_else(|| std::env::var("USER").ok())
            .filter(|name| !name.is_empty())
            .ok_or_else(|| usage(anyhow!("who is deciding? pass --operator NAME (or set $USER)")))
    }
}

pub async fn run(args: ApprovalsArgs) -> Result<u8, CliError> {
    match args.command {
        ApprovalsCommand::List { ledger, json } => list(&ledger, json).await,
        ApprovalsCommand::Show { id, ledger, json } => show(&ledger, &id, json).await,
        ApprovalsCommand::Approve { id, operator, reason, ledger } => {
            let verdict = Verdict::Approved { operator: operator.name()?, reason };
            decide(&ledger, &id, verdict).await
        }
        ApprovalsCommand::Deny { id, reason, operator, ledger } => {
            let verdict = Verdict::Denied { operator: operator.name()?, reason };
            decide(&ledger, &id, verdict).await
        }
    }
}

fn usage(error: anyhow::Error) -> CliError {
    CliError::Usage(error)
}

fn failed(error: impl Into<anyhow::Error>) -> CliError {
    CliError::Failed(error.into())
}

/// Opens an existing ledger without migrating it: operators may hold a role that cannot.
async fn open(args: &LedgerArgs) -> Result<Arc<dyn Store>, CliError> {
    let url = args.url()?;
    if let LedgerUrl::Sqlite(path) = &url
        && !path.exists()
    {
        return Err(failed(anyhow!("no ledger at {}", path.display())));
    }
    let options = StoreOptions { migrate: false, ..StoreOptions::default() };
    store::open(&url, &options)
        .await
        .with_context(|| format!("cannot open the ledger {url}"))
        .map_err(CliError::Failed)
}

async fn list(args: &LedgerArgs, as_json: bool) -> Result<u8, CliError> {
    let store = open(args).await?;
    let entries = approval::pending_entries(store.as_ref()).await.map_err(failed);
    store.close().await;
    let entries = entries?;
    if as_json {
        for entry in &entries {
            println!("{}", entry_json(entry));
        }
        return Ok(exit::OK);
    }
    if entries.is_empty() {
        println!("no held calls are waiting for a decision");
        return Ok(exit::OK);
    }
    let now = OffsetDateTime::now_utc();
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "approval_id",
        "requested",
        "agent",
        "server",
        "tool",
        "holds",
        "rule",
        "approvers",
        "expires in",
    ]);
    for Entry { request, requested, .. } in &entries {
        table.add_row([
            request.approval_id.clone(),
            requested.timestamp.clone(),
            request.agent.clone(),
            request.server.clone(),
            request.tool.clone(),
            if request.holds_result() { "result" } else { "call" }.to_owned(),
            request.rule.clone().unwrap_or_default(),
            approvers(request),
            until(now, request.expires_at),
        ]);
    }
    println!("{table}");
    Ok(exit::OK)
}

async fn show(args: &LedgerArgs, id: &str, as_json: bool) -> Result<u8, CliError> {
    let store = open(args).await?;
    let shown = async {
        let entry = approval::find(store.as_ref(), id)
            .await
            .map_err(failed)?
            .ok_or_else(|| usage(anyhow!("there is no approval request {id}")))?;
        let bodies = approval::held_bodies(store.as_ref(), &entry).await.map_err(failed)?;
        Ok::<_, CliError>((entry, bodies))
    }
    .await;
    store.close().await;
    let (entry, bodies) = shown?;
    if as_json {
        let mut value = entry_json(&entry);
        value["arguments"] = bodies.arguments.clone().unwrap_or(Value::Null);
        value["arguments_redacted"] = bodies.arguments_redacted.into();
        if entry.request.holds_result() {
            value["result"] = bodies.result.clone().unwrap_or(Value::Null);
            value["result_redacted"] = bodies.result_redacted.into();
        }
        println!("{value}");
        return Ok(exit::OK);
    }
    let request = &entry.request;
    let now = OffsetDateTime::now_utc();
    let line = |label: &str, value: &str| println!("{label:<11}{value}");
    line("approval", &request.approval_id);
    line("status", &status(&entry, now));
    line("call", &request.call_id);
    line("agent", &request.agent);
    line("server", &request.server);
    line("tool", &request.tool);
    line("rule", request.rule.as_deref().unwrap_or("(none: the default held it)"));
    line("reason", request.reason.as_deref().unwrap_or(""));
    line("approvers", &approvers(request));
    line("requested", &entry.requested.timestamp);
    line("expires", &format_timestamp(request.expires_at));
    line("policy", &request.policy_digest);
    line("holds", if request.holds_result() { "the call's result" } else { "the call" });
    line("arguments", &request.arguments_ref);
    print_body(bodies.arguments.as_ref(), bodies.arguments_redacted, "arguments");
    if let Some(output_ref) = &request.output_ref {
        line("result", output_ref);
        print_body(bodies.result.as_ref(), bodies.result_redacted, "result");
    }
    Ok(exit::OK)
}

/// A kept body, pretty-printed, saying whether PII was redacted from it.
fn print_body(body: Option<&Value>, redacted: bool, what: &str) {
    match body {
        Some(body) => {
            if redacted {
                println!("(kept redacted: PII replaced by [REDACTED:<pattern>])");
            }
            println!("{}", serde_json::to_string_pretty(body).expect("a JSON value serialises"));
        }
        None => println!("(no copy of the {what} is kept: never stored, or erased)"),
    }
}

async fn decide(args: &LedgerArgs, id: &str, verdict: Verdict) -> Result<u8, CliError> {
    let store = open(args).await?;
    let decided = approval::decide(store.as_ref(), id, verdict).await;
    store.close().await;
    let record = decided.map_err(|error| match error {
        DecideError::Store(error) => failed(error),
        refused => usage(refused.into()),
    })?;
    println!("{} {id} as {} (call {})", record.verdict.as_str(), record.decided_by, record.call_id);
    Ok(exit::OK)
}

/// A request as JSON: its event data, when it was requested, and where it stands.
fn entry_json(entry: &Entry) -> Value {
    let mut value = entry.request.to_data();
    value["requested_at"] = entry.requested.timestamp.clone().into();
    value["status"] = entry.state.label().into();
    value["decision"] = match &entry.state {
        State::Decided(decided) => {
            let mut decision = decided.record.to_data();
            decision["decided_at"] = format_timestamp(decided.decided_at).into();
            decision
        }
        _ => Value::Null,
    };
    value
}

fn status(entry: &Entry, now: OffsetDateTime) -> String {
    match &entry.state {
        State::Pending => format!("pending (expires in {})", until(now, entry.request.expires_at)),
        State::Decided(decided) => {
            let record = &decided.record;
            let reason = record.verdict.reason().map(|r| format!(": {r}")).unwrap_or_default();
            format!(
                "{} by {} at {}{reason}",
                record.verdict.as_str(),
                record.decided_by,
                format_timestamp(decided.decided_at)
            )
        }
        State::Expired => "expired: nobody decided in time".to_owned(),
        State::Ended { outcome } => format!("ended without a decision ({outcome})"),
    }
}

fn approvers(request: &HoldRequest) -> String {
    if request.approvers.is_empty() {
        "any operator".to_owned()
    } else {
        request.approvers.join(", ")
    }
}

/// `4m 05s`, `1h 02m`, `12s`; `expired` when `at` has passed.
fn until(now: OffsetDateTime, at: OffsetDateTime) -> String {
    let secs = (at - now).whole_seconds();
    if secs <= 0 {
        return "expired".to_owned();
    }
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s:02}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}
