//! End-to-end transparency and recording over Streamable HTTP, against the npm reference server
//! `@modelcontextprotocol/server-everything` (pinned in `tests/npm/package.json`), with the script
//! and checks of `tests/everything.rs` (in `tests/common/everything.rs`):
//!
//! 1. client → `mcp-ledger serve` (HTTP) → the server as a stdio child; compared against the
//!    client talking to the server directly over stdio;
//! 2. client → `mcp-ledger serve` (HTTP) → the server in its own Streamable HTTP mode; compared
//!    against the client talking to that server directly over HTTP;
//! 3. client → `mcp-ledger stdio --config F --server NAME` (the stdio-to-HTTP bridge) → the server
//!    over HTTP; compared against the client talking to it directly over HTTP.
//!
//! Each proves that the agent reads the same JSON either way (every message the client reads is
//! kept as the text that crossed the wire: the `data` of each server-sent event, or each line of
//! stdio), and that the ledger holds one session, started and ended, for agent `anonymous` (no
//! `[[agents]]`, loopback), whose chain verifies, with a `tool_call`/`tool_result` pair per call
//! and `request`/`response` pairs for sampling, elicitation, `resources/read` and `prompts/get`.
//!
//! The scenarios run one at a time (see [`SERIAL`]). Needs `node` and
//! `npm ci --prefix tests/npm`; without them the tests fail and say so.

#[path = "common/everything.rs"]
mod e2e;

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use e2e::{
    Checks, Connect, ENV_MARKER, EXIT_TIMEOUT, Recorded, Run, check_ledger, compare_runs,
    run_script, server_command, server_entry,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const BIN: &str = env!("CARGO_BIN_EXE_mcp-ledger");

/// How long a background server gets to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The tests of this file run one after the other, never side by side: two servers and two
/// proxies competing for the machine's two cores would make the time-dependent behaviour (roots
/// sync after 350 ms, progress pacing) differ between the direct and the proxied run.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The agent a loopback `serve` without `[[agents]]`, and `stdio` without `--agent`, record.
const ANONYMOUS: &str = "anonymous";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_http_with_a_stdio_upstream_is_transparent_and_recorded() {
    let _serial = SERIAL.lock().await;
    let entry = server_entry();
    let upstream = server_command(&entry);
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = dir.path().join("ledger.db");
    let config = write_config(dir.path(), &ledger, "everything", &ServerEntry::Command(&upstream));

    let mut direct = Command::new(&upstream[0]);
    direct.args(&upstream[1..]);
    hermetic(&mut direct);
    let direct = run_script("direct over stdio", Connect::Stdio(direct)).await;

    // The server is the proxy's child and inherits its environment, which must therefore be the
    // one the direct run gave the server (`get-env` compares it).
    let serve = Serve::start(&config).await;
    let url = serve.url("everything");
    let mut proxied = run_script("serve (HTTP) → stdio upstream", Connect::Http(url)).await;
    let mut checks = Checks::default();
    serve.stop(&mut proxied, &mut checks).await;

    compare_runs(&direct, &proxied, &mut checks);
    let recorded =
        Recorded { agent: ANONYMOUS, server: "everything", transport: "http", upstream: "stdio" };
    check_ledger(&ledger, &proxied, &recorded, &mut checks).await;
    checks.finish(&[&direct, &proxied]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_http_with_an_http_upstream_is_transparent_and_recorded() {
    let _serial = SERIAL.lock().await;
    let entry = server_entry();
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = dir.path().join("ledger.db");
    let server = HttpEverything::start(&entry).await;
    let config =
        write_config(dir.path(), &ledger, "everything-http", &ServerEntry::Url(&server.url));

    let mut direct = run_script("direct over HTTP", Connect::Http(server.url.clone())).await;
    let serve = Serve::start(&config).await;
    let url = serve.url("everything-http");
    let mut proxied = run_script("serve (HTTP) → HTTP upstream", Connect::Http(url)).await;
    let mut checks = Checks::default();
    serve.stop(&mut proxied, &mut checks).await;
    server.stop(&mut direct).await;

    compare_runs(&direct, &proxied, &mut checks);
    let recorded = Recorded {
        agent: ANONYMOUS,
        server: "everything-http",
        transport: "http",
        upstream: "http",
    };
    check_ledger(&ledger, &proxied, &recorded, &mut checks).await;
    checks.finish(&[&direct, &proxied]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_bridge_to_an_http_upstream_is_transparent_and_recorded() {
    let _serial = SERIAL.lock().await;
    let entry = server_entry();
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = dir.path().join("ledger.db");
    let server = HttpEverything::start(&entry).await;
    let config =
        write_config(dir.path(), &ledger, "everything-http", &ServerEntry::Url(&server.url));

    let mut direct = run_script("direct over HTTP", Connect::Http(server.url.clone())).await;
    let mut bridge = Command::new(BIN);
    bridge.arg("stdio").arg("--config").arg(&config).args(["--server", "everything-http"]);
    hermetic(&mut bridge);
    let proxied = run_script("stdio → HTTP upstream", Connect::Stdio(bridge)).await;
    server.stop(&mut direct).await;

    let mut checks = Checks::default();
    compare_runs(&direct, &proxied, &mut checks);
    let recorded = Recorded {
        agent: ANONYMOUS,
        server: "everything-http",
        transport: "stdio",
        upstream: "http",
    };
    check_ledger(&ledger, &proxied, &recorded, &mut checks).await;
    checks.finish(&[&direct, &proxied]);
}

// ------------------------------------------------------------------------------------------
// The configuration file
// ------------------------------------------------------------------------------------------

enum ServerEntry<'a> {
    Command(&'a [String]),
    Url(&'a str),
}

/// `mcp-ledger.toml` with the ledger and one `[[servers]]` entry, and no `[[agents]]`.
fn write_config(dir: &Path, ledger: &Path, name: &str, server: &ServerEntry) -> std::path::PathBuf {
    let quote = |text: &str| toml::Value::String(text.to_owned()).to_string();
    let upstream = match server {
        ServerEntry::Command(command) => {
            let words: Vec<String> = command.iter().map(|word| quote(word)).collect();
            format!("command = [{}]", words.join(", "))
        }
        ServerEntry::Url(url) => format!("url = {}", quote(url)),
    };
    let text = format!(
        "[ledger]\nurl = {}\n\n[[servers]]\nname = {}\n{upstream}\n",
        quote(&format!("sqlite://{}", ledger.display())),
        quote(name),
    );
    let path = dir.join("mcp-ledger.toml");
    std::fs::write(&path, text).expect("write the configuration file");
    path
}

/// Without the variables that would override the file's ledger or name the agent, whatever the
/// environment the tests run in.
fn hermetic(command: &mut Command) {
    command.env_remove("MCP_LEDGER_URL").env_remove("MCP_LEDGER_AGENT");
}

// ------------------------------------------------------------------------------------------
// Servers in the background
// ------------------------------------------------------------------------------------------

/// `mcp-ledger serve --config F --listen 127.0.0.1:0`.
struct Serve {
    process: Background,
    /// `(server name, URL)` as `serve` printed them.
    urls: Vec<(String, String)>,
}

impl Serve {
    async fn start(config: &Path) -> Serve {
        let mut command = Command::new(BIN);
        command.arg("serve").arg("--config").arg(config).args(["--listen", "127.0.0.1:0"]);
        hermetic(&mut command);
        // Its stdio upstreams inherit its environment; the direct run's server gets the marker
        // from the client's session.
        command.env(ENV_MARKER.0, ENV_MARKER.1);
        let mut process = Background::spawn("mcp-ledger serve", command);
        // One line per server; the test configurations have one.
        let served = process
            .wait_for_line(|line| {
                let rest = line.strip_prefix("serving ")?;
                let (name, url) = rest.split_once(" at ")?;
                Some((name.to_owned(), url.to_owned()))
            })
            .await
            .unwrap_or_else(|output| panic!("mcp-ledger serve did not start: {output}"));
        Serve { process, urls: vec![served] }
    }

    fn url(&self, name: &str) -> String {
        let found = self.urls.iter().find(|(served, _)| served == name);
        found
            .map(|(_, url)| url.clone())
            .unwrap_or_else(|| panic!("serve did not print a URL for {name}: {:?}", self.urls))
    }

    /// SIGTERM: `serve` ends its sessions, records their ends and exits 0. Its output goes to
    /// `run`'s, for the failure report.
    async fn stop(self, run: &mut Run, checks: &mut Checks) {
        let (status, output) = self.process.stop("TERM").await;
        run.stderr.push_str(&format!("[mcp-ledger serve, {status:?}]\n{output}"));
        checks.that(status.is_some_and(|s| s.success()), || {
            format!("mcp-ledger serve did not exit 0 on SIGTERM: {status:?}")
        });
    }
}

/// The everything server in its Streamable HTTP mode (`streamableHttp`), on a free port (it
/// takes the port from `PORT`), serving `/mcp`.
struct HttpEverything {
    process: Background,
    url: String,
}

impl HttpEverything {
    async fn start(entry: &Path) -> HttpEverything {
        const ATTEMPTS: usize = 3;
        let mut failures = Vec::new();
        for _ in 0..ATTEMPTS {
            // Ask the system for a free port, then hand it to the server, which cannot be told to
            // pick one itself and say which (with PORT=0 it prints 0). Someone else may take the
            // port in between; then the server exits, and another port is tried.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free local port")
                .port();
            let mut command = Command::new("node");
            command.arg(entry).arg("streamableHttp").env("PORT", port.to_string());
            hermetic(&mut command);
            // Both runs talk to this one process, so `get-env` shows the same environment to
            // both; the marker shows it is the one given here.
            command.env(ENV_MARKER.0, ENV_MARKER.1);
            let mut process = Background::spawn("everything server (streamableHttp)", command);
            let ready = |line: &str| line.contains("listening on port").then_some(());
            match process.wait_for_line(ready).await {
                Ok(()) => {
                    let url = format!("http://127.0.0.1:{port}/mcp");
                    return HttpEverything { process, url };
                }
                Err(output) => failures.push(format!("on port {port}: {output}")),
            }
        }
        panic!(
            "the everything server did not start in streamableHttp mode:\n{}",
            failures.join("\n")
        )
    }

    /// SIGINT, on which the server closes its sessions and exits. Its output goes to `run`'s.
    async fn stop(self, run: &mut Run) {
        let (status, output) = self.process.stop("INT").await;
        run.stderr.push_str(&format!("[everything server (streamableHttp), {status:?}]\n{output}"));
    }
}

/// A child whose stdout and stderr are read line by line: kept for the failure report, and
/// passed to whoever waits for a line.
struct Background {
    label: &'static str,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    readers: Vec<JoinHandle<String>>,
}

impl Background {
    fn spawn(label: &'static str, mut command: Command) -> Background {
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.kill_on_drop(true);
        let mut child =
            command.spawn().unwrap_or_else(|e| panic!("{label}: cannot start {command:?}: {e}"));
        let (sender, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let readers = vec![read_lines(stdout, sender.clone()), read_lines(stderr, sender)];
        Background { label, child, lines, readers }
    }

    /// The first line (of stdout or stderr) that `wanted` accepts, or what went wrong, with the
    /// output up to then.
    async fn wait_for_line<T>(&mut self, wanted: impl Fn(&str) -> Option<T>) -> Result<T, String> {
        let label = self.label;
        let mut seen = Vec::new();
        let found = tokio::time::timeout(READY_TIMEOUT, async {
            while let Some(line) = self.lines.recv().await {
                if let Some(found) = wanted(&line) {
                    return Some(found);
                }
                seen.push(line);
            }
            None
        })
        .await;
        let output = seen.join("\n");
        match found {
            Ok(Some(found)) => Ok(found),
            Ok(None) => Err(format!("{label} exited before it was ready; output:\n{output}")),
            Err(_) => Err(format!("{label} was not ready in {READY_TIMEOUT:?}; output:\n{output}")),
        }
    }

    /// Sends `signal`, waits for the exit (killing the child if it does not come), and returns
    /// the exit status (`None`: killed) and everything the child wrote.
    async fn stop(mut self, signal: &str) -> (Option<ExitStatus>, String) {
        let pid = self.child.id().expect("the child is running").to_string();
        let sent = std::process::Command::new("kill").arg(format!("-{signal}")).arg(&pid).status();
        assert!(sent.is_ok_and(|s| s.success()), "{}: cannot send SIG{signal}", self.label);
        let status = match tokio::time::timeout(EXIT_TIMEOUT, self.child.wait()).await {
            Ok(status) => Some(status.expect("wait for the child")),
            Err(_) => {
                let _ = self.child.kill().await;
                None
            }
        };
        let mut output = String::new();
        for reader in self.readers {
            output.push_str(&reader.await.unwrap_or_default());
        }
        (status, output)
    }
}

/// Reads `pipe` to its end, sending each line on and returning them all.
fn read_lines(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    sender: mpsc::UnboundedSender<String>,
) -> JoinHandle<String> {
    tokio::spawn(async move {
        let mut all = String::new();
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            all.push_str(&line);
            all.push('\n');
            let _ = sender.send(line);
        }
        all
    })
}
