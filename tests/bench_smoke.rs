//! `mcp-ledger bench --quick`: the harness itself, not the proxy's speed. A very short run must
//! produce every part of the report — each scenario's direct and proxied rows with their costs,
//! the idle sessions, verify and export, a verdict on every target — and leave ledgers that hold
//! every call made and verify. Nothing here looks at how fast anything was; and an interrupted run
//! must clean up its scratch databases and exit non-zero.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sqlx::{ConnectOptions, Connection};

use common::BIN;

/// The bench's scratch databases that exist on the server.
async fn scratch_databases(admin: &str) -> Option<Vec<String>> {
    let options: sqlx::postgres::PgConnectOptions = admin.parse().ok()?;
    let mut conn = options.connect().await.ok()?;
    let names = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datname LIKE 'mcp_ledger_bench_%'",
    )
    .fetch_all(&mut conn)
    .await
    .ok()?;
    let _ = conn.close().await;
    Some(names)
}

/// `--postgres` when this environment requires Postgres, so that an unreachable server fails
/// the run instead of skipping the Postgres modes.
fn postgres_args() -> Vec<String> {
    let required =
        std::env::var("MCP_LEDGER_REQUIRE_POSTGRES").is_ok_and(|v| v == "1" || v == "true");
    if required { vec!["--postgres".into(), common::admin_url()] } else { Vec::new() }
}

/// Runs `bench --quick --json` with `args` and returns its report; the run must succeed, which
/// also says its ledgers hold every call made and verify.
fn quick_report(args: &[String]) -> Value {
    let output = Command::new(BIN)
        .args(["bench", "--quick", "--json"])
        .args(args)
        .args(postgres_args())
        .env("MCP_LEDGER_LOG", "warn")
        .output()
        .expect("run mcp-ledger bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    serde_json::from_slice(&output.stdout).expect("--json prints json")
}

#[tokio::test]
async fn a_quick_run_reports_every_part_and_leaves_complete_verified_ledgers() {
    let report = quick_report(&[]);
    let with_postgres = report["postgres_ledger"].is_string();
    let modes: &[&str] =
        if with_postgres { &["direct", "sqlite", "postgres"] } else { &["direct", "sqlite"] };

    let scenarios = report["scenarios"].as_array().expect("scenarios");
    let found: Vec<(String, u64)> = scenarios
        .iter()
        .map(|s| (s["transport"].as_str().unwrap().to_owned(), s["sessions"].as_u64().unwrap()))
        .collect();
    let expected: Vec<(String, u64)> = [("stdio", 1), ("stdio", 2), ("http", 1), ("http", 4)]
        .map(|(t, n)| (t.to_owned(), n))
        .into();
    assert_eq!(found, expected);
    for scenario in scenarios {
        let rows = scenario["modes"].as_array().expect("modes");
        let names: Vec<&str> = rows.iter().map(|r| r["mode"].as_str().unwrap()).collect();
        assert_eq!(names, modes, "{scenario}");
        for row in rows {
            assert_eq!(row["calls"], 30, "{row}");
            for field in ["calls_per_s", "p50_ms", "p99_ms", "p999_ms"] {
                assert!(row[field].as_f64().is_some_and(|v| v > 0.0), "{field}: {row}");
            }
            if row["mode"] == "direct" {
                assert!(row["vs_direct"].is_null(), "{row}");
                continue;
            }
            for field in ["added_p50_ms", "added_p99_ms", "added_p999_ms", "ratio_calls_per_s"] {
                assert!(row["vs_direct"][field].is_number(), "{field}: {row}");
            }
            assert!(row["batches"]["batches"].as_u64().is_some_and(|b| b > 0), "{row}");
            if scenario["transport"] == "http" {
                let commits = row["serve_stages"]["commits"].as_f64();
                assert!(commits.is_some_and(|c| c > 0.0), "serve's own timings: {row}");
            }
            if cfg!(target_os = "linux") {
                assert!(row["proxy_cpu_us_per_call"].is_number(), "{row}");
                assert!(row["proxy_peak_rss_bytes"].as_u64().is_some_and(|b| b > 0), "{row}");
                // One thread's share of wall time on a CPU cannot pass 1 (beyond rounding).
                let thread = &row["busiest_proxy_thread"];
                let running = thread["running"].as_f64();
                assert!(running.is_some_and(|r| r > 0.0 && r <= 1.05), "{row}");
                assert!(thread["waiting"].as_f64().is_some_and(|w| w >= 0.0), "{row}");
            }
        }
        if with_postgres && scenario["transport"] == "http" {
            let commits = &scenario["postgres_commits"];
            assert!(commits["transactions"].as_i64().is_some_and(|t| t > 0), "{scenario}");
        }
    }

    // What bounds throughput, for every proxied mode of the scenarios with more than one
    // session: stdio 2 and http 4 (CPU is measured on Linux only).
    if cfg!(target_os = "linux") {
        let bounds = report["bounds"].as_array().expect("bounds");
        let found: Vec<(&str, u64, &str)> = bounds
            .iter()
            .map(|b| {
                let field = |name: &str| b[name].as_str().unwrap();
                (field("transport"), b["sessions"].as_u64().unwrap(), field("mode"))
            })
            .collect();
        let mut expected = Vec::new();
        for (transport, sessions) in [("stdio", 2), ("http", 4)] {
            expected.extend(modes[1..].iter().map(|mode| (transport, sessions, *mode)));
        }
        assert_eq!(found, expected);
        for b in bounds {
            let ceiling = b["cpu_ceiling"].as_f64().expect("a ceiling");
            assert!(ceiling > 0.0 && b["cpu_us_per_call"].as_f64().unwrap() > 0.0, "{b}");
            // Only Postgres has a ceiling without the proxy, and it is the higher one.
            match b["ceiling_without_proxy"].as_f64() {
                Some(without) => assert!(b["mode"] == "postgres" && without > ceiling, "{b}"),
                None => assert_eq!(b["mode"], "sqlite", "{b}"),
            }
            // Only serve has one writer whose busy share is known.
            let writer_busy = b["writer_busy"].as_f64();
            assert_eq!(writer_busy.is_some(), b["transport"] == "http", "{b}");
            assert!(writer_busy.is_none_or(|w| w > 0.0), "{b}");
        }
    }

    let idle = report["idle"].as_array().expect("idle");
    assert_eq!(idle.len(), 2, "shared and per-session upstreams: {idle:?}");
    for run in idle {
        assert_eq!(run["sessions"], 10, "{run}");
    }

    let bulk = report["bulk"].as_array().expect("bulk");
    let sizes: Vec<(&str, u64)> = bulk
        .iter()
        .map(|b| (b["ledger"].as_str().unwrap(), b["events"].as_u64().unwrap()))
        .collect();
    let mut expected = vec![("sqlite", 300), ("sqlite", 900)];
    if with_postgres {
        expected.extend([("postgres", 300), ("postgres", 900)]);
    }
    assert_eq!(sizes, expected);
    for row in bulk {
        assert!(row["verify"]["events_per_s"].is_number(), "{row}");
    }

    let ledgers = report["ledgers"].as_array().expect("ledgers");
    assert_eq!(ledgers.len(), modes.len() - 1);
    for ledger in ledgers {
        assert_eq!(ledger["intact"], true, "{ledger}");
        assert_eq!(ledger["tool_calls"], ledger["calls_made"], "{ledger}");
        assert_eq!(ledger["tool_results"], ledger["calls_made"], "{ledger}");
    }

    let targets = report["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 17, "{targets:?}");
    for target in targets {
        let verdict = target["verdict"].as_str().unwrap();
        assert!(["met", "not_met", "not_measured"].contains(&verdict), "{target}");
    }
}

#[cfg(unix)]
#[tokio::test]
async fn an_interrupted_run_drops_its_scratch_databases_and_fails() {
    let admin = common::admin_url();
    if scratch_databases(&admin).await.is_none() {
        eprintln!("skipped: postgres at {admin} is unreachable");
        return;
    }
    let child = Command::new(BIN)
        .args(["bench", "--quick", "--postgres", &admin])
        .env("MCP_LEDGER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mcp-ledger bench");
    // Long enough to be in the middle of the first scenario, with proxies running.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("send SIGINT");
    let output = child.wait_with_output().expect("wait for bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "an interrupted run must not exit 0: {stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    // Only this run's databases: other runs may be going on beside it.
    let created: Vec<&str> = stderr
        .lines()
        .filter_map(|line| line.strip_prefix("mcp-ledger bench: created the scratch database "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(!created.is_empty(), "the run names its scratch databases: {stderr}");
    let after = scratch_databases(&admin).await.expect("postgres still reachable");
    let left: Vec<&&str> = created.iter().filter(|name| after.iter().any(|a| a == *name)).collect();
    assert!(left.is_empty(), "scratch databases left behind: {left:?}");
}

/// `--serve-wrapper` starts every `serve` under the given command (how `serve` is profiled in
/// place, e.g. under callgrind), and the run still measures it and checks its ledgers (the exit
/// code says they hold every call and verify).
#[cfg(unix)]
#[tokio::test]
async fn serve_runs_under_the_wrapper_it_is_given() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().expect("temp dir");
    let wrapper = dir.path().join("wrap.sh");
    let marker = dir.path().join("started");
    // Notes that it ran, then becomes the wrapped command (same pid, as valgrind keeps it).
    std::fs::write(
        &wrapper,
        "#!/bin/sh\nmarker=$1\nshift\necho \"$*\" >> \"$marker\"\nexec \"$@\"\n",
    )
    .expect("write the wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let report = quick_report(&[
        "--skip".into(),
        "stdio,ledger,idle".into(),
        "--http-sessions".into(),
        "1".into(),
        "--serve-wrapper".into(),
        format!("{} {}", wrapper.display(), marker.display()),
    ]);
    let proxied = if report["postgres_ledger"].is_string() { 2 } else { 1 };
    let started = std::fs::read_to_string(&marker).expect("the wrapper ran");
    let lines: Vec<&str> = started.lines().collect();
    assert_eq!(lines.len(), proxied, "one serve per proxied mode: {started}");
    assert!(lines.iter().all(|l| l.contains(" serve --config ")), "{started}");
    let serve = report["serve_threads"].as_str().expect("serve_threads");
    assert!(serve.contains("run under `") && serve.contains("wrap.sh"), "{serve}");
}

/// A wrapper that cannot be started fails the run with a message that names it.
#[test]
fn a_wrapper_that_cannot_start_is_named() {
    let output = Command::new(BIN)
        .args(["bench", "--quick", "--skip", "stdio,ledger,idle", "--http-sessions", "1"])
        .args(["--serve-wrapper", "no-such-profiler-here --flag"])
        .args(postgres_args())
        .env("MCP_LEDGER_LOG", "warn")
        .output()
        .expect("run mcp-ledger bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a run whose serve cannot start must fail: {stderr}");
    assert!(
        stderr.contains(
            "cannot start mcp-ledger serve under `no-such-profiler-here` (--serve-wrapper)"
        ),
        "{stderr}"
    );
}
