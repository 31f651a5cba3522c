//! `mcp-ledger stdio`: serve one agent on this process's stdin/stdout and relay to an upstream
//! MCP server (a child process, or an HTTP endpoint through the adapter in `http_upstream`).

use std::time::Duration;

use tokio::io::BufReader;

use super::relay::{RelayEnd, RelayOptions, relay_with};
use super::upstream::{UpstreamPipe, reap};
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

/// Relays this process's stdin/stdout to the upstream until either side closes, then stops
/// the upstream.
pub async fn serve_stdio(
    recorder: SessionRecorder,
    upstream: UpstreamPipe,
    call_timeout: Option<Duration>,
) -> RelayEnd {
    let options = RelayOptions { grace: SHUTDOWN_GRACE, call_timeout };
    let end = relay_with(
        options,
        recorder,
        BufReader::new(tokio::io::stdin()),
        tokio::io::stdout(),
        upstream.reader,
        upstream.writer,
    )
    .await;
    reap(upstream.child, SHUTDOWN_GRACE).await;
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
