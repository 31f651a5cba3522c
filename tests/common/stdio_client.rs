//! A raw line-level MCP client for tests: it writes JSON-RPC lines to a child's stdin and reads
//! them from its stdout, so tests see exactly the bytes the proxy produces.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

pub struct LineClient {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    next_id: i64,
}

impl LineClient {
    pub fn spawn(program: &str, args: &[String]) -> Self {
        Self::spawn_with_env(program, args, &[])
    }

    pub fn spawn_with_env(program: &str, args: &[String], env: &[(&str, String)]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .env("MCP_LEDGER_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the process under test");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        LineClient { child, stdin, stdout, next_id: 1 }
    }

    pub async fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).await.expect("write");
        stdin.write_all(b"\n").await.expect("write");
        stdin.flush().await.expect("flush");
    }

    pub async fn send(&mut self, message: &Value) {
        self.send_line(&message.to_string()).await;
    }

    /// The next line the peer writes, parsed; panics after 30 s of silence.
    pub async fn recv(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(30), self.stdout.next_line())
            .await
            .expect("a message within 30 s")
            .expect("read")
            .expect("the peer closed its output");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// The next line the peer writes, exactly as written.
    pub async fn recv_raw(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(30), self.stdout.next_line())
            .await
            .expect("a message within 30 s")
            .expect("read")
            .expect("the peer closed its output")
    }

    /// `None` once the peer has closed its output.
    pub async fn recv_or_eof(&mut self) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(30), self.stdout.next_line())
            .await
            .expect("a message or EOF within 30 s")
            .expect("read")
    }

    pub fn request_message(&mut self, method: &str, params: Value) -> (i64, Value) {
        let id = self.next_id;
        self.next_id += 1;
        (id, json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
    }

    /// Sends a request and returns its response, skipping notifications in between.
    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        let (id, message) = self.request_message(method, params);
        self.send(&message).await;
        loop {
            let reply = self.recv().await;
            if reply.get("id") == Some(&json!(id)) && reply.get("method").is_none() {
                return reply;
            }
        }
    }

    /// The `initialize` handshake, with the `initialized` notification.
    pub async fn initialize(&mut self) -> Value {
        let reply = self
            .request(
                "initialize",
                json!({
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "line-client", "version": "1.0.0"}
                }),
            )
            .await;
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
        reply
    }

    pub async fn call_tool(&mut self, name: &str, arguments: Value) -> Value {
        self.request("tools/call", json!({"name": name, "arguments": arguments})).await
    }

    /// Closes stdin and waits for the process to exit.
    pub async fn close(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exit within 30 s after stdin closed")
            .expect("wait")
    }
}

/// Arguments for `mcp-ledger stdio` in front of the demo server.
pub fn proxy_args(
    ledger_url: &str,
    agent: &str,
    call_log: Option<&std::path::Path>,
) -> Vec<String> {
    let mut args: Vec<String> =
        ["stdio", "--ledger", ledger_url, "--agent", agent, "--server", "customer-ops", "--"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.push(super::BIN.to_owned());
    args.push("demo-server".to_owned());
    if let Some(log) = call_log {
        args.push("--call-log".to_owned());
        args.push(log.display().to_string());
    }
    args
}
