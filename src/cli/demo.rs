//! `mcp-ledger demo`: the main job end to end, with nothing but this binary. A scripted agent
//! calls the built-in customer-operations server through `mcp-ledger stdio` into a fresh ledger;
//! then the provenance rows are shown, the chain is verified, and a tampered copy is caught.

use std::path::Path;

use anyhow::Context;
use clap::Args;
use futures::TryStreamExt;
use serde_json::Value;

use super::ledger::{print_report, provenance_table, verify_store};
use super::{CliError, exit};
use crate::demo::agent::run_scripted_agent;
use crate::store::{LedgerUrl, SqliteStore, Store, StoreOptions};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo ledger in this directory instead of a temporary one
    #[arg(long, value_name = "DIR")]
    keep: Option<std::path::PathBuf>,
}

pub async fn run(args: DemoArgs) -> Result<u8, CliError> {
    demo(args).await.map_err(CliError::Failed)
}

async fn demo(args: DemoArgs) -> anyhow::Result<u8> {
    let temp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let dir = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.clone()
        }
        None => temp.path().to_owned(),
    };
    let ledger_path = dir.join("demo-ledger.db");
    if ledger_path.exists() {
        anyhow::bail!(
            "{} already exists; the demo starts from a fresh ledger",
            ledger_path.display()
        );
    }
    let url = LedgerUrl::Sqlite(ledger_path.clone());
    let exe = std::env::current_exe().context("cannot find the mcp-ledger binary")?;

    println!("mcp-ledger demo\n");
    println!("  agent `support-bot` -> mcp-ledger stdio -> `customer-ops` MCP server");
    println!("  ledger: {url}\n");

    // The agent starts the proxy the way an MCP client config would, and the proxy starts the
    // built-in server as its upstream.
    let mut proxy = tokio::process::Command::new(&exe);
    proxy
        .arg("stdio")
        .arg("--ledger")
        .arg(url.to_string())
        .args(["--agent", "support-bot", "--server", "customer-ops", "--"])
        .arg(&exe)
        .arg("demo-server")
        .env("MCP_LEDGER_LOG", "warn");
    let calls = run_scripted_agent(proxy).await.context("the scripted agent failed")?;

    println!("1. The agent made {} calls through the proxy:", calls.len());
    for call in &calls {
        println!("   {} {} -> {}", call.tool, call.arguments, call.outcome);
    }

    let store = SqliteStore::open(&ledger_path, &StoreOptions::default()).await?;
    let rows = store.provenance(100).await?;
    println!("\n2. Each call was committed to the ledger before it was forwarded, and its result");
    println!("   before the agent saw it. The `provenance` view, as an auditor queries it:\n");
    println!("{}", provenance_table(&rows));

    show_pii(&store).await?;

    println!("\n4. `mcp-ledger verify` recomputes every hash and link:\n");
    let report = verify_store(&store).await?;
    print_report(&report);
    if !report.intact() {
        anyhow::bail!("the fresh demo ledger did not verify");
    }

    let tampered_path = dir.join("demo-ledger-tampered.db");
    let _ = std::fs::remove_file(&tampered_path);
    store.snapshot_to(&tampered_path).await?;
    store.close().await;
    let (seq, event_id) = forge_approval(&tampered_path).await?;
    println!("\n5. Someone with access to the database file copies it, drops the append-only");
    println!(
        "   trigger, and rewrites the refund's record (seq {seq}, event {event_id}) to claim an"
    );
    println!("   operator approved it. `mcp-ledger verify` on that copy:\n");
    let tampered =
        SqliteStore::open(&tampered_path, &StoreOptions { migrate: false, ..Default::default() })
            .await?;
    let report = verify_store(&tampered).await?;
    tampered.close().await;
    print_report(&report);
    if report.intact() {
        anyhow::bail!("verify did not catch the tampering");
    }

    if args.keep.is_some() {
        println!("\nThe ledgers are kept in {}. Try:", dir.display());
        println!("  mcp-ledger log --ledger sqlite://{}", ledger_path.display());
        println!("  sqlite3 {} 'SELECT * FROM provenance'", ledger_path.display());
    }
    println!(
        "\nDone: {} calls recorded, the ledger verified, and the tampering was named.",
        calls.len()
    );
    Ok(exit::OK)
}

/// Step 3: where the scanner found personal data, and a body as the ledger keeps it.
async fn show_pii(store: &SqliteStore) -> anyhow::Result<()> {
    let events: Vec<_> = store.events().try_collect().await?;
    let findings: Vec<(String, String, String, String)> = events
        .iter()
        .filter(|e| e.event_type == "pii_detected")
        .flat_map(|e| {
            let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
            let (tool, method, direction) =
                (text(&e.data["tool"]), text(&e.data["method"]), text(&e.data["direction"]));
            let name = if tool == "-" { method } else { tool };
            e.data["findings"].as_array().cloned().unwrap_or_default().into_iter().map(move |f| {
                (name.clone(), direction.clone(), text(&f["pattern"]), text(&f["pointer"]))
            })
        })
        .collect();
    println!(
        "\n3. The scanner found personal data in {} places. The ledger records the pattern and",
        findings.len()
    );
    println!("   where it was (`pii_detected`), never the value, and keeps bodies redacted:\n");
    for (name, direction, pattern, pointer) in &findings {
        println!("   {name:<16} {direction:<7} {pattern:<14} {pointer}");
    }
    let email = events.iter().find(|e| {
        e.event_type == "tool_call" && e.data.get("tool") == Some(&Value::from("send_email"))
    });
    if let Some(reference) = email.and_then(|e| crate::record::stored_body_ref(&e.data, "input"))
        && let Some(body) = store.payload(reference).await?
    {
        println!("\n   send_email's arguments as kept: {body}");
    }
    Ok(())
}

/// Rewrites the recorded refund call in the ledger at `path` as if an operator had approved it.
async fn forge_approval(path: &Path) -> anyhow::Result<(i64, String)> {
    let store =
        SqliteStore::open(path, &StoreOptions { migrate: false, ..Default::default() }).await?;
    let events: Vec<_> = store.events().try_collect().await?;
    let refund = events
        .iter()
        .find(|e| {
            e.event_type == "tool_call" && e.data.get("tool") == Some(&Value::from("issue_refund"))
        })
        .context("the demo ledger has no issue_refund call")?;
    let mut data = refund.data.clone();
    data["authorized_by"] = "approval:operator/alice".into();
    store.tamper_rewrite_data(&refund.event_id, &data).await?;
    store.close().await;
    Ok((refund.seq, refund.event_id.clone()))
}
