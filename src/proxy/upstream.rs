//! Upstream MCP servers as line pipes for the relay: a child process speaking stdio, or a remote
//! Streamable HTTP endpoint behind an adapter that turns it into lines.

use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;

use tokio::io::{AsyncBufRead, BufReader};
use tokio::process::{Child, Command};

use super::lines::LineSink;
use super::stdio::StdioError;

/// How to reach one upstream server.
#[derive(Clone)]
pub enum UpstreamSpec {
    Stdio { command: Vec<String>, env: Vec<(String, String)>, cwd: Option<PathBuf> },
    Http(super::http_upstream::HttpUpstreamConfig),
}

impl UpstreamSpec {
    /// A description for the session record: the program, or the URL's scheme and host. Never
    /// arguments, environment, headers, paths or queries, which may hold secrets.
    pub fn describe(&self) -> String {
        match self {
            UpstreamSpec::Stdio { command, .. } => {
                format!("stdio:{}", command.first().map(String::as_str).unwrap_or(""))
            }
            UpstreamSpec::Http(config) => format!("http:{}", config.redacted_origin()),
        }
    }
}

impl std::fmt::Debug for UpstreamSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

pub type UpstreamReader = Pin<Box<dyn AsyncBufRead + Send>>;

/// A connected upstream: lines from it, lines to it (a child's stdin, or a queue an HTTP
/// upstream POSTs from), and the child process if there is one.
pub struct UpstreamPipe {
    pub reader: UpstreamReader,
    pub writer: LineSink,
    pub child: Option<Child>,
}

/// Starts or connects to the upstream.
pub fn connect(spec: &UpstreamSpec) -> Result<UpstreamPipe, StdioError> {
    match spec {
        UpstreamSpec::Stdio { command, env, cwd } => {
            let (program, args) = command.split_first().ok_or(StdioError::NoCommand)?;
            let mut process = Command::new(program);
            process
                .args(args)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                // MCP clients show a server's stderr as its log; through the proxy it goes to ours.
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            if let Some(dir) = cwd {
                process.current_dir(dir);
            }
            let mut child = process
                .spawn()
                .map_err(|source| StdioError::Spawn { program: program.clone(), source })?;
            let stdin = child.stdin.take().expect("spawned with piped stdin");
            let stdout = child.stdout.take().expect("spawned with piped stdout");
            Ok(UpstreamPipe {
                reader: Box::pin(BufReader::new(stdout)),
                writer: LineSink::stream(stdin),
                child: Some(child),
            })
        }
        UpstreamSpec::Http(config) => {
            let (reader, writer) = super::http_upstream::http_upstream(config.clone());
            Ok(UpstreamPipe {
                reader: Box::pin(reader),
                writer: LineSink::Queue(writer),
                child: None,
            })
        }
    }
}

/// Waits up to `grace` for a child upstream to exit after its input closed, then kills it.
pub async fn reap(child: Option<Child>, grace: std::time::Duration) {
    let Some(mut child) = child else { return };
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => tracing::debug!(%status, "upstream exited"),
        Ok(Err(error)) => tracing::warn!(%error, "could not wait for the upstream"),
        Err(_) => {
            tracing::warn!("upstream did not exit after its input closed; killing it");
            let _ = child.kill().await;
        }
    }
}
