//! The ledger-wide commands at scale: a large ledger is built quickly through the library (big
//! batches straight into the store, no proxy), then `mcp-ledger verify` and `mcp-ledger export
//! --bundle` run on it as child processes, as an auditor runs them, timed and with their peak
//! memory read while they run. The ledger is grown through each size in turn, so the same chain
//! is measured small and large: memory that does not grow with the size shows streaming.
//!
//! `export` gets a time limit: it builds one inclusion proof per event, each from the chain's
//! leaves, which grows with the square of the ledger. A run past the limit is stopped and
//! reported as such, with the memory it had reached by then (its per-event structures are built
//! before the proofs, so that is already the memory it would hold).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::Serialize;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::procstat;
use super::serve_child::ledger_arg;
use crate::record::{Draft, EventType};
use crate::store::{self, DEFAULT_CHAIN, LedgerUrl, Store, StoreOptions};

/// Drafts per append: one transaction each, within both stores' per-statement row limit.
const BUILD_BATCH: usize = 2000;
/// How often a child's memory high-water mark is read while it runs.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);

#[derive(Debug, Serialize)]
pub struct BulkRow {
    /// `sqlite` or `postgres`.
    pub ledger: &'static str,
    pub events: u64,
    /// Appending the events that took the ledger to this size, through `Store::append`.
    pub build_events_per_s: f64,
    pub verify: ChildRun,
    pub export: ChildRun,
}

/// One run of a child command.
#[derive(Debug, Serialize)]
pub struct ChildRun {
    /// Whether it finished within its time limit (else it was stopped there).
    pub finished: bool,
    pub secs: f64,
    /// Events over wall time, process start-up and connecting included; absent if stopped.
    pub events_per_s: Option<f64>,
    /// The child's VmHWM, read every few milliseconds while it ran.
    pub peak_rss_bytes: Option<u64>,
    /// Why it failed, when it exited unsuccessfully: its last line of error output.
    pub error: Option<String>,
}

/// Grows a fresh ledger at `url` through `sizes` (ascending) and measures verify and export at
/// each size. `dir` holds the signing key and the bundles.
pub async fn run(
    exe: &Path,
    dir: &Path,
    url: &LedgerUrl,
    sizes: &[u64],
    export_limit: Duration,
) -> anyhow::Result<Vec<BulkRow>> {
    let key = dir.join("bench.key");
    if !key.exists() {
        let out = child(exe, None, |c| c.arg("keygen").arg("--out").arg(&key)).await?;
        out.check("keygen")?;
    }
    let public_key = PathBuf::from(format!("{}.pub", key.display()));
    let store = store::open(url, &StoreOptions::default())
        .await
        .with_context(|| format!("cannot open the ledger {url}"))?;
    let mut rows = Vec::new();
    let outcome = async {
        let mut size = store.chain_size(DEFAULT_CHAIN).await? as u64;
        for &target in sizes {
            let started = Instant::now();
            let added = grow(store.as_ref(), size, target).await?;
            let build_events_per_s = added as f64 / started.elapsed().as_secs_f64().max(1e-9);
            size = target.max(size);
            let ledger = ledger_arg(url);
            child(exe, None, |c| c.args(["checkpoint", "--ledger", &ledger, "--key"]).arg(&key))
                .await?
                .check("checkpoint")?;
            let verify =
                child(exe, None, |c| c.args(["verify", "--json", "--ledger", &ledger])).await?;
            // A verify that cannot check the ledger is a finding to report; one that checks it
            // and finds it broken means this ledger was not built right, and the run is void.
            if verify.failure().is_none() {
                let report: serde_json::Value = serde_json::from_str(&verify.stdout)
                    .context("verify --json printed no json")?;
                if report["status"] != "intact" || report["events"] != json!(size) {
                    bail!("verify did not find {size} intact events: {}", verify.stdout.trim());
                }
            }
            let bundle = dir.join(format!("bundle-{}", size));
            let export = child(exe, Some(export_limit), |c| {
                c.args(["export", "--ledger", &ledger, "--key"])
                    .arg(&public_key)
                    .arg("--bundle")
                    .arg(&bundle)
            })
            .await?;
            // The bundle is not needed after it was written; bundles of large ledgers are big.
            let _ = std::fs::remove_dir_all(&bundle);
            rows.push(BulkRow {
                ledger: match url {
                    LedgerUrl::Sqlite(_) => "sqlite",
                    LedgerUrl::Postgres(_) => "postgres",
                },
                events: size,
                build_events_per_s,
                verify: verify.run(size),
                export: export.run(size),
            });
        }
        anyhow::Ok(())
    }
    .await;
    store.close().await;
    outcome.map(|()| rows)
}

/// Appends events until the chain holds `target`; returns how many were added.
async fn grow(store: &dyn Store, mut size: u64, target: u64) -> anyhow::Result<u64> {
    let start = size;
    let session = uuid::Uuid::new_v4().to_string();
    while size < target {
        let n = (target - size).min(BUILD_BATCH as u64);
        let drafts: Vec<Draft> = (0..n).map(|i| draft(&session, size + i)).collect();
        store
            .seal_and_commit(DEFAULT_CHAIN, &drafts)
            .await
            .context("cannot append to the ledger")?;
        size += n;
    }
    Ok(size - start)
}

/// A `tool_call` or `tool_result` shaped like the proxy's, so rows have a realistic size.
fn draft(session: &str, n: u64) -> Draft {
    let call = n / 2;
    let call_id = format!("bench-{session}-{call}");
    let (event_type, data) = if n.is_multiple_of(2) {
        (
            EventType::ToolCall,
            json!({
                "call_id": call_id,
                "method": "tools/call",
                "tool": "lookup_customer",
                "request_id": call.to_string(),
                "input_ref": format!("sha256:{:064x}", call),
                "decision": {"effect": "allow", "authorized_by": "default:allow"},
            }),
        )
    } else {
        (
            EventType::ToolResult,
            json!({
                "call_id": call_id,
                "outcome": "ok",
                "duration_ms": 1,
                "output_ref": format!("sha256:{:064x}", call + 1),
            }),
        )
    };
    let mut draft = Draft::new(event_type, data);
    draft.session_id = Some(session.to_owned());
    draft.agent = Some("bench".to_owned());
    draft.server = Some("customer-ops".to_owned());
    draft
}

/// What a child printed, how long it ran and its peak memory.
struct Finished {
    /// `None` when it was stopped at its time limit.
    status: Option<std::process::ExitStatus>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
    peak: Option<u64>,
}

impl Finished {
    /// Why the child failed (its exit status and last line of error output), if it did; being
    /// stopped at the time limit is not a failure.
    fn failure(&self) -> Option<String> {
        let status = self.status.filter(|status| !status.success())?;
        let last = self.stderr.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("");
        Some(format!("{status}: {}", last.trim()))
    }

    /// Fails the run when the child failed.
    fn check(&self, what: &str) -> anyhow::Result<()> {
        match self.failure() {
            Some(failure) => Err(anyhow!("mcp-ledger {what} exited with {failure}")),
            None => Ok(()),
        }
    }

    fn run(&self, events: u64) -> ChildRun {
        let secs = self.elapsed.as_secs_f64();
        let error = self.failure();
        let finished = self.status.is_some();
        ChildRun {
            finished,
            secs,
            events_per_s: (finished && error.is_none()).then(|| events as f64 / secs.max(1e-9)),
            peak_rss_bytes: self.peak,
            error,
        }
    }
}

/// Runs `exe` with the arguments `args` adds, reading its peak memory while it runs; stops it
/// at `limit`.
async fn child(
    exe: &Path,
    limit: Option<Duration>,
    args: impl FnOnce(&mut Command) -> &mut Command,
) -> anyhow::Result<Finished> {
    let mut command = Command::new(exe);
    args(&mut command)
        .env("MCP_LEDGER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = command.spawn().context("cannot start mcp-ledger")?;
    let pid = child.id();
    let mut stdout = child.stdout.take().ok_or_else(|| anyhow!("stdout is not piped"))?;
    let mut stderr = child.stderr.take().ok_or_else(|| anyhow!("stderr is not piped"))?;
    let read_out = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text).await;
        text
    });
    let read_err = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut peak = None;
    let status = loop {
        if let Some(memory) = pid.and_then(procstat::memory) {
            peak = Some(peak.unwrap_or(0).max(memory.peak));
        }
        if limit.is_some_and(|limit| started.elapsed() > limit) {
            child.kill().await.context("cannot stop mcp-ledger at its time limit")?;
            break None;
        }
        tokio::select! {
            status = child.wait() => break Some(status.context("cannot wait for mcp-ledger")?),
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    };
    let elapsed = started.elapsed();
    Ok(Finished {
        status,
        stdout: read_out.await.unwrap_or_default(),
        stderr: read_err.await.unwrap_or_default(),
        elapsed,
        peak,
    })
}
