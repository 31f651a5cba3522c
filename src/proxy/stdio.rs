//! `mcp-ledger stdio`: serve one agent on this process's stdin/stdout and relay to an upstream
//! MCP server (a child process, or an HTTP endpoint through the adapter in `http_upstream`).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufReader};

use super::lines::LineSink;
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
    let (agent_in, agent_out) = agent_streams();
    let end = relay_with(
        options,
        recorder,
        BufReader::new(agent_in),
        LineSink::stream(agent_out),
        upstream.reader,
        upstream.writer,
    )
    .await;
    reap(upstream.child, SHUTDOWN_GRACE).await;
    end
}

type AgentIn = Box<dyn AsyncRead + Send + Unpin>;
type AgentOut = Box<dyn AsyncWrite + Send + Unpin>;

/// This process's stdin and stdout. Pipes and Unix sockets (what MCP clients start servers with)
/// are read and written on the runtime's own reactor; anything else (a terminal, a file) goes
/// through tokio's stdin/stdout, which do every read and write on the blocking thread pool: a
/// hand-off to another thread and back for each message, on a runtime that is otherwise one
/// thread.
fn agent_streams() -> (AgentIn, AgentOut) {
    #[cfg(unix)]
    {
        let stdin = reactor::input().unwrap_or_else(|| Box::new(tokio::io::stdin()));
        let stdout = reactor::output().unwrap_or_else(|| Box::new(tokio::io::stdout()));
        (stdin, stdout)
    }
    #[cfg(not(unix))]
    {
        (Box::new(tokio::io::stdin()), Box::new(tokio::io::stdout()))
    }
}

/// Registering a copy of fd 0 or 1 with the reactor sets `O_NONBLOCK` on the open file, which is
/// this end of the client's pipe or socket and shared with no one who reads or writes it.
#[cfg(unix)]
mod reactor {
    use std::fs::File;
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::fs::FileTypeExt;

    use super::{AgentIn, AgentOut};

    enum Kind {
        Pipe(File),
        UnixSocket(std::os::unix::net::UnixStream),
    }

    fn classify(fd: std::os::fd::BorrowedFd<'_>) -> Option<Kind> {
        let copy: OwnedFd = fd.try_clone_to_owned().ok()?;
        let file = File::from(copy);
        let kind = file.metadata().ok()?.file_type();
        if kind.is_fifo() {
            return Some(Kind::Pipe(file));
        }
        let unix_socket = kind.is_socket()
            && socket2::SockRef::from(&file).domain().ok() == Some(socket2::Domain::UNIX);
        if unix_socket {
            let stream = std::os::unix::net::UnixStream::from(OwnedFd::from(file));
            stream.set_nonblocking(true).ok()?;
            return Some(Kind::UnixSocket(stream));
        }
        None
    }

    pub(super) fn input() -> Option<AgentIn> {
        match classify(std::io::stdin().as_fd())? {
            Kind::Pipe(file) => {
                Some(Box::new(tokio::net::unix::pipe::Receiver::from_file(file).ok()?))
            }
            Kind::UnixSocket(stream) => {
                Some(Box::new(tokio::net::UnixStream::from_std(stream).ok()?))
            }
        }
    }

    pub(super) fn output() -> Option<AgentOut> {
        match classify(std::io::stdout().as_fd())? {
            Kind::Pipe(file) => {
                Some(Box::new(tokio::net::unix::pipe::Sender::from_file(file).ok()?))
            }
            Kind::UnixSocket(stream) => {
                Some(Box::new(tokio::net::UnixStream::from_std(stream).ok()?))
            }
        }
    }
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
