//! `mcp-ledger stdio`: serve one agent on this process's stdin/stdout and relay to an upstream
//! MCP server started as a child process.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::process::{Child, Command};

use super::relay::{RelayEnd, relay};
use crate::intercept::SessionRecorder;

/// How long the upstream gets to exit on its own once the agent has left.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error(
        "no upstream command given: put it after `--`, e.g. `mcp-ledger stdio -- npx -y @modelcontextprotocol/server-everything`"
    )]
    NoCommand,
    #[error("cannot start the upstream server `{program}`: {source}")]
    Spawn { program: String, source: std::io::Error },
}

/// Starts `command` (program and arguments) as the upstream server with piped stdin/stdout.
/// Its stderr is inherited: MCP clients show a server's stderr as its log, and they keep doing so
/// through the proxy.
pub fn spawn_upstream(command: &[String]) -> Result<Child, StdioError> {
    let (program, args) = command.split_first().ok_or(StdioError::NoCommand)?;
    Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| StdioError::Spawn { program: program.clone(), source })
}

/// Relays this process's stdin/stdout to the upstream `child` until either side closes, then
/// stops the child.
pub async fn serve_stdio(recorder: SessionRecorder, mut child: Child) -> RelayEnd {
    let up_in = child.stdin.take().expect("spawned with piped stdin");
    let up_out = child.stdout.take().expect("spawned with piped stdout");
    let end = relay(
        recorder,
        BufReader::new(tokio::io::stdin()),
        tokio::io::stdout(),
        BufReader::new(up_out),
        up_in,
        SHUTDOWN_GRACE,
    )
    .await;
    match tokio::time::timeout(SHUTDOWN_GRACE, child.wait()).await {
        Ok(Ok(status)) => tracing::debug!(%status, "upstream exited"),
        Ok(Err(error)) => tracing::warn!(%error, "could not wait for the upstream"),
        Err(_) => {
            tracing::warn!("upstream did not exit after its input closed; killing it");
            let _ = child.kill().await;
        }
    }
    end
}

/// A server name from the command, for when `--server` is not given: the package or script a
/// launcher (npx, uvx, node, python, …) runs, or else the program's file name.
pub fn server_name_from_command(command: &[String]) -> String {
    const LAUNCHERS: &[&str] =
        &["npx", "uvx", "uv", "node", "python", "python3", "deno", "bunx", "docker"];
    let base = |s: &str| {
        std::path::Path::new(s).file_name().and_then(|n| n.to_str()).unwrap_or(s).to_owned()
    };
    let Some((program, args)) = command.split_first() else {
        return "upstream".into();
    };
    let program = base(program);
    if LAUNCHERS.contains(&program.as_str())
        && let Some(target) = args.iter().find(|a| !a.starts_with('-') && *a != "run")
    {
        let target = target.rsplit('/').next().unwrap_or(target);
        return target.split('@').next().filter(|s| !s.is_empty()).unwrap_or(target).to_owned();
    }
    program
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn server_names_come_from_what_the_launcher_runs() {
        let name = server_name_from_command(&cmd(&[
            "npx",
            "-y",
            "@modelcontextprotocol/server-everything",
        ]));
        assert_eq!(name, "server-everything");
        assert_eq!(server_name_from_command(&cmd(&["/usr/bin/my-server", "--x"])), "my-server");
        assert_eq!(
            server_name_from_command(&cmd(&["uvx", "mcp-server-git@1.0"])),
            "mcp-server-git"
        );
        assert_eq!(server_name_from_command(&[]), "upstream");
    }
}
