//! `mcp-ledger serve` as a child of the benchmark, started the way an operator starts it: a
//! configuration file with one `[[servers]]` entry (the in-process HTTP upstream), no
//! `[[agents]]` (so callers are `anonymous`, loopback only), and a session limit high enough for
//! the load. Its process id is what the benchmark measures.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::fleet::Context;
use super::procstat::{self, Memory};
use crate::store::LedgerUrl;

/// The endpoint name in the configuration, and so in the URL and the ledger.
pub const SERVER_NAME: &str = "customer-ops";

/// How long `serve` may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `serve` may take to end its sessions and commit their last events after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// How the proxy reaches the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// One upstream session per agent session (the default).
    PerSession,
    /// `shared = true`: one upstream session for every agent session.
    Shared,
}

impl Upstream {
    pub fn describe(self) -> &'static str {
        match self {
            Upstream::PerSession => "http upstream, one upstream session per agent session",
            Upstream::Shared => "http upstream with shared = true (one upstream session)",
        }
    }
}

/// A running `mcp-ledger serve`. Killed if dropped without [`ServeProcess::stop`].
pub struct ServeProcess {
    child: Child,
    pid: u32,
    /// The MCP endpoint, `http://127.0.0.1:PORT/mcp/customer-ops`.
    pub url: String,
    /// Holds the configuration file for as long as the process runs.
    _dir: tempfile::TempDir,
}

impl ServeProcess {
    /// Starts `mcp-ledger serve` (under the run's wrapper, if any) recording to `ledger`, in
    /// front of the run's upstream.
    pub async fn start(
        ctx: &Context,
        ledger: &LedgerUrl,
        upstream: Upstream,
    ) -> anyhow::Result<ServeProcess> {
        let dir = tempfile::tempdir().context("cannot create a directory for serve's config")?;
        let config = dir.path().join("mcp-ledger.toml");
        std::fs::write(&config, config_text(&ctx.upstream_url, upstream))
            .with_context(|| format!("cannot write {}", config.display()))?;
        // A wrapper such as valgrind execs serve in its own process: the pid stays the one
        // measured.
        let mut command = match ctx.serve_wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&ctx.exe);
                command
            }
            None => Command::new(&ctx.exe),
        };
        let mut child = command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--listen", "127.0.0.1:0", "--ledger"])
            .arg(ledger_arg(ledger))
            // Only what needs a person: the "anonymous on loopback" warning is expected here.
            .env("MCP_LEDGER_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| match ctx.serve_wrapper.first() {
                Some(program) => {
                    format!("cannot start mcp-ledger serve under `{program}` (--serve-wrapper)")
                }
                None => "cannot start mcp-ledger serve".to_owned(),
            })?;
        let pid = child.id().ok_or_else(|| anyhow!("mcp-ledger serve exited at once"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("serve's stdout is not piped"))?;
        let url = tokio::time::timeout(START_TIMEOUT, endpoint_url(stdout))
            .await
            .map_err(|_| anyhow!("mcp-ledger serve did not start within {START_TIMEOUT:?}"))??;
        Ok(ServeProcess { child, pid, url, _dir: dir })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn memory(&self) -> Option<Memory> {
        procstat::memory(self.pid)
    }

    /// Shuts `serve` down as an operator would (SIGTERM): it ends every session, commits their
    /// `session_end` events and exits. Returns its peak memory, read just before.
    pub async fn stop(mut self) -> anyhow::Result<Option<Memory>> {
        let memory = self.memory();
        terminate(self.pid);
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(memory),
            Ok(Ok(status)) => bail!("mcp-ledger serve exited with {status}"),
            Ok(Err(error)) => Err(error).context("cannot wait for mcp-ledger serve"),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("mcp-ledger serve did not shut down within {STOP_TIMEOUT:?}; killed it")
            }
        }
    }
}

/// The configuration an operator would write for this run. The ledger is passed with
/// `--ledger`, so the file holds no URL.
fn config_text(upstream_url: &str, upstream: Upstream) -> String {
    format!(
        "# written by mcp-ledger bench\n\
         [listen]\n\
         max_sessions = 100000\n\
         session_idle_timeout_secs = 86400\n\
         \n\
         [[servers]]\n\
         name = \"{SERVER_NAME}\"\n\
         url = {}\n\
         shared = {}\n",
        toml::Value::String(upstream_url.to_owned()),
        upstream == Upstream::Shared,
    )
}

/// The URL as `--ledger` takes it (unredacted, unlike `LedgerUrl`'s `Display`).
pub fn ledger_arg(ledger: &LedgerUrl) -> String {
    match ledger {
        LedgerUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
        LedgerUrl::Postgres(url) => url.clone(),
    }
}

/// Reads serve's stdout until it prints where it serves the endpoint.
async fn endpoint_url(stdout: tokio::process::ChildStdout) -> anyhow::Result<String> {
    let mut lines = BufReader::new(stdout).lines();
    let prefix = format!("serving {SERVER_NAME} at ");
    while let Some(line) = lines.next_line().await.context("cannot read serve's output")? {
        if let Some(url) = line.strip_prefix(&prefix) {
            let url = url.trim().to_owned();
            // Keep draining stdout so that serve never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(url);
        }
    }
    bail!("mcp-ledger serve exited before it started serving (see its errors above)")
}

#[cfg(unix)]
fn terminate(pid: u32) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if let Ok(pid) = i32::try_from(pid) {
        // It may have exited already; then there is nothing to stop.
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
}

#[cfg(not(unix))]
fn terminate(_pid: u32) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_the_upstream_and_whether_it_is_shared() {
        let text = config_text("http://127.0.0.1:9/mcp", Upstream::Shared);
        let config =
            crate::config::Config::from_toml(&text, std::path::Path::new("mcp-ledger.toml"))
                .expect("a valid config");
        let server = config.server(SERVER_NAME).expect("the endpoint");
        assert!(server.shared);
        assert_eq!(config.listen.max_sessions, 100000);
        assert!(config.agents.is_empty());
    }
}
