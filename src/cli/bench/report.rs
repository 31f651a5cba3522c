//! What a benchmark run found, and how it is printed: tables for people, JSON for scripts. The
//! issue's targets are printed next to what was measured, as a report: the exit code says only
//! whether the run itself worked.

use comfy_table::{CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use super::bounds::Bounds;
use super::bulk::{BulkRow, ChildRun};
use super::fleet::{Mode, Transport};
use super::idle::IdleOutcome;
use super::ledger_check::LedgerCheck;
use super::scenario::{ModeRow, Plan, ScenarioOutcome};

/// The targets, as the issue states them for a 2-core machine with Postgres on it.
pub mod targets {
    pub const ADDED_P50_MS: f64 = 1.0;
    pub const ADDED_P99_MS: f64 = 3.0;
    pub const CALLS_PER_S: f64 = 5000.0;
    pub const SESSIONS_FOR_THROUGHPUT: usize = 64;
    pub const SHARE_OF_DIRECT: f64 = 0.5;
    pub const IDLE_SESSIONS: usize = 1000;
    pub const IDLE_RSS_BYTES: u64 = 150 * 1024 * 1024;
    pub const VERIFY_EVENTS_PER_S: f64 = 100_000.0;
    /// Export counts as streaming when its peak memory on the largest ledger is at most this
    /// many times its peak on the smallest (the ledgers differ by about 10x in size).
    pub const EXPORT_RSS_GROWTH: f64 = 1.5;
}

#[derive(Debug, Serialize)]
pub struct Report {
    /// `release`, or `debug` (whose numbers mean little).
    pub build: &'static str,
    pub machine: Machine,
    pub plan: Plan,
    pub upstream: String,
    /// The threads `serve` ran on, and where that number came from.
    pub serve_threads: String,
    pub stdio_chains: super::StdioChains,
    pub sqlite_ledger: String,
    pub postgres_ledger: Option<String>,
    /// Why Postgres was not measured, when it was not.
    pub postgres_skipped: Option<String>,
    pub scenarios: Vec<ScenarioOutcome>,
    pub idle: Vec<IdleOutcome>,
    pub bulk: Vec<BulkRow>,
    pub ledgers: Vec<LedgerCheck>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: Option<String>,
    pub memory_bytes: Option<u64>,
    /// Server version and durability settings of the Postgres the ledgers used.
    pub postgres: Option<String>,
    pub load_average_at_start: Option<(f32, f32, f32)>,
    pub load_average_at_end: Option<(f32, f32, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Met,
    NotMet,
    NotMeasured,
}

/// [`Bounds`] with the scenario and mode they belong to, for `--json`.
#[derive(Debug, Serialize)]
pub struct BoundsRow {
    pub transport: Transport,
    pub sessions: usize,
    pub mode: Mode,
    #[serde(flatten)]
    pub bounds: Bounds,
}

#[derive(Debug, Serialize)]
pub struct TargetRow {
    pub target: String,
    pub measured: String,
    pub verdict: Verdict,
}

impl Report {
    pub fn ledgers_complete(&self) -> bool {
        self.ledgers.iter().all(LedgerCheck::complete)
    }

    fn rows(&self) -> impl Iterator<Item = (&ScenarioOutcome, &ModeRow)> {
        self.scenarios.iter().flat_map(|s| s.modes.iter().map(move |m| (s, m)))
    }

    fn row(&self, transport: Transport, sessions: usize, mode: Mode) -> Option<&ModeRow> {
        self.rows()
            .find(|(s, m)| {
                s.transport == transport && s.sessions == sessions && m.outcome.mode == mode
            })
            .map(|(_, m)| m)
    }

    /// Each target of the issue next to what this run measured.
    pub fn targets(&self) -> Vec<TargetRow> {
        use targets::*;
        let mut rows = Vec::new();
        let stores = [Mode::Postgres, Mode::Sqlite];
        for transport in [Transport::Http, Transport::Stdio] {
            for mode in stores {
                let added = self.row(transport, 1, mode).and_then(|r| r.vs_direct);
                let where_ = format!("1 {} session, {}", transport.label(), mode.label());
                rows.push(judge(
                    format!("p50 added <= {ADDED_P50_MS} ms ({where_})"),
                    added.map(|a| {
                        (format!("{:+.3} ms", a.added_p50_ms), a.added_p50_ms <= ADDED_P50_MS)
                    }),
                ));
                rows.push(judge(
                    format!("p99 added <= {ADDED_P99_MS} ms ({where_})"),
                    added.map(|a| {
                        (format!("{:+.3} ms", a.added_p99_ms), a.added_p99_ms <= ADDED_P99_MS)
                    }),
                ));
            }
        }
        for mode in stores {
            let row = self.row(Transport::Http, SESSIONS_FOR_THROUGHPUT, mode);
            let where_ = format!("{SESSIONS_FOR_THROUGHPUT} http sessions, {}", mode.label());
            rows.push(judge(
                format!("recorded calls/s >= {CALLS_PER_S} ({where_})"),
                row.map(|r| {
                    let rate = r.outcome.summary.calls_per_s;
                    (format!("{rate:.0} calls/s"), rate >= CALLS_PER_S)
                }),
            ));
            rows.push(judge(
                format!("calls/s >= {SHARE_OF_DIRECT} x direct ({where_})"),
                row.and_then(|r| r.vs_direct).map(|a| {
                    (
                        format!("{:.2} x direct", a.ratio_calls_per_s),
                        a.ratio_calls_per_s >= SHARE_OF_DIRECT,
                    )
                }),
            ));
        }
        let idle = self.idle.iter().find(|i| i.shared_upstream).or(self.idle.first());
        rows.push(judge(
            format!(
                "serve RSS <= {} MiB with {IDLE_SESSIONS} idle http sessions",
                IDLE_RSS_BYTES / (1024 * 1024)
            ),
            idle.and_then(|i| {
                let rss = i.rss_idle_bytes?;
                let note = if i.sessions == IDLE_SESSIONS {
                    String::new()
                } else {
                    format!(" with only {} sessions", i.sessions)
                };
                Some((
                    format!("{} ({}){note}", mib(rss), i.upstream),
                    rss <= IDLE_RSS_BYTES && i.sessions >= IDLE_SESSIONS,
                ))
            }),
        ));
        for ledger in ["postgres", "sqlite"] {
            let sizes: Vec<&BulkRow> = self.bulk.iter().filter(|b| b.ledger == ledger).collect();
            // The rate on the largest ledger verify could check; a size it could not check at
            // all fails the target whatever the rate.
            let checked =
                sizes.iter().filter(|b| b.verify.events_per_s.is_some()).max_by_key(|b| b.events);
            let failed = sizes.iter().filter(|b| b.verify.error.is_some()).min_by_key(|b| b.events);
            rows.push(judge(
                format!("verify >= {VERIFY_EVENTS_PER_S:.0} events/s ({ledger})"),
                match (checked, failed) {
                    (None, None) => None,
                    (checked, failed) => {
                        let rate = checked.and_then(|b| Some((b.verify.events_per_s?, b.events)));
                        let mut measured = rate
                            .map(|(rate, n)| format!("{rate:.0} events/s over {n} events"))
                            .unwrap_or_default();
                        if let Some(b) = failed {
                            measured.push_str(&format!(
                                "{}could not check {} events: {}",
                                if measured.is_empty() { "" } else { "; " },
                                b.events,
                                b.verify.error.as_deref().unwrap_or("")
                            ));
                        }
                        let met = failed.is_none()
                            && rate.is_some_and(|(rate, _)| rate >= VERIFY_EVENTS_PER_S);
                        Some((measured, met))
                    }
                },
            ));
            let smallest = sizes.iter().min_by_key(|b| b.events);
            let largest = sizes.iter().max_by_key(|b| b.events);
            rows.push(judge(
                format!("export memory does not grow with the ledger ({ledger})"),
                match (smallest, largest) {
                    (Some(small), Some(large)) if small.events < large.events => {
                        match (small.export.peak_rss_bytes, large.export.peak_rss_bytes) {
                            (Some(a), Some(b)) => Some((
                                format!(
                                    "peak {} at {} events, {}{} at {} events ({:.1}x)",
                                    mib(a),
                                    small.events,
                                    if large.export.finished { "" } else { "at least " },
                                    mib(b),
                                    large.events,
                                    b as f64 / a as f64
                                ),
                                (b as f64) <= EXPORT_RSS_GROWTH * a as f64,
                            )),
                            _ => None,
                        }
                    }
                    _ => None,
                },
            ));
        }
        rows
    }

    /// The report and the verdicts on the targets.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        #[derive(Serialize)]
        struct WithTargets<'a> {
            #[serde(flatten)]
            report: &'a Report,
            bounds: Vec<BoundsRow>,
            targets: Vec<TargetRow>,
        }
        let bounds = self.bounds();
        serde_json::to_string_pretty(&WithTargets { report: self, bounds, targets: self.targets() })
    }

    /// The bounds of every proxied mode with more than one session whose CPU was measured.
    fn bounds(&self) -> Vec<BoundsRow> {
        let mut rows = Vec::new();
        for s in self.scenarios.iter().filter(|s| s.sessions > 1) {
            let Some(direct) = s.modes.iter().find(|m| m.outcome.mode == Mode::Direct) else {
                continue;
            };
            for row in s.modes.iter().filter(|m| m.outcome.mode != Mode::Direct) {
                if let Some(bounds) = Bounds::of(row, direct, self.machine.cpus) {
                    rows.push(BoundsRow {
                        transport: s.transport,
                        sessions: s.sessions,
                        mode: row.outcome.mode,
                        bounds,
                    });
                }
            }
        }
        rows
    }

    pub fn print_text(&self) {
        if self.build == "debug" {
            println!("WARNING: this is a debug build; its numbers say little about the proxy.");
            println!("         Measure with `cargo run --release -- bench`.\n");
        }
        let m = &self.machine;
        println!("mcp-ledger bench");
        println!(
            "  machine   {} cpus, {}, {} memory",
            m.cpus,
            m.cpu_model.as_deref().unwrap_or("unknown cpu"),
            m.memory_bytes.map(mib).unwrap_or_else(|| "unknown".into())
        );
        println!(
            "  load      {} at start, {} at end (1, 5, 15 min)",
            load(m.load_average_at_start),
            load(m.load_average_at_end)
        );
        println!("  upstream  {}", self.upstream);
        println!("  serve     {}", self.serve_threads);
        println!("  stdio     {}", self.stdio_chains.describe());
        println!("  sqlite    {}", self.sqlite_ledger);
        match (&self.postgres_ledger, &self.postgres_skipped) {
            (Some(ledger), _) => println!("  postgres  {ledger}"),
            (None, Some(reason)) => println!("  postgres  not measured: {reason}"),
            (None, None) => {}
        }
        let p = &self.plan;
        println!(
            "  calls     {} measured per mode and scenario after {} warm-up, modes interleaved in \
             rounds of {}",
            p.calls, p.warmup, p.round
        );
        if !self.scenarios.is_empty() {
            println!(
                "\nLatency and throughput (added = proxied minus direct, same transport and sessions)"
            );
            println!("{}", self.latency_table());
            println!(
                "\nCost per call (CPU time during the measured rounds; RSS = peak of the proxy process)"
            );
            println!("{}", self.cost_table());
            println!(
                "\nGroup commit (serve, one writer per process; events/batch counted in the ledger \
                 over the measured rounds, serve: columns from its /metrics over its whole life)"
            );
            println!("{}", self.group_commit_table());
            println!(
                "\nWhere a recorded call's time goes in serve (means over its life, from its /metrics; \
                 rest = call in proxy - upstream - two append waits)"
            );
            println!("{}", self.stages_table());
            if let Some(bounds) = self.bounds_table() {
                println!(
                    "\nWhat bounds throughput (ceiling = the calls/s at which this CPU per call would \
                     keep all {} CPUs busy; x = against the direct mode's calls/s)",
                    self.machine.cpus
                );
                println!("{bounds}");
                println!(
                    "Near its ceiling, a mode is paced by the CPU. A busy writer alone is no proof \
                     that commits pace it: batches grow until the writer is busy either way. \
                     Without the proxy = the ceiling if the proxy's own CPU were zero (Postgres \
                     and the bench still use theirs). Busiest proxy thread = its share of the \
                     measured time on a CPU + runnable but waiting for one: near 100 %, that \
                     thread can pace the mode (serve runs on one by default) before the machine \
                     is full."
                );
            }
        }
        if !self.idle.is_empty() {
            println!("\nIdle sessions (serve's resident memory)");
            println!("{}", self.idle_table());
        }
        if !self.bulk.is_empty() {
            println!(
                "\nverify and export as child processes (peak RSS sampled every 5 ms; export is \
                 stopped at its time limit)"
            );
            println!("{}", self.bulk_table());
            for b in &self.bulk {
                for (what, run) in [("verify", &b.verify), ("export", &b.export)] {
                    if let Some(error) = &run.error {
                        println!("{} {what} at {} events failed: {error}", b.ledger, b.events);
                    }
                }
            }
        }
        if !self.ledgers.is_empty() {
            println!();
        }
        for ledger in &self.ledgers {
            println!(
                "{} ledger: {} events = {} tool_call + {} tool_result + {} other (session start \
                 and end, pii_detected) for {} calls made; {}{}",
                ledger.ledger,
                ledger.events,
                ledger.tool_calls,
                ledger.tool_results,
                ledger.other_events,
                ledger.calls_made,
                if ledger.intact { "chain verified intact" } else { "CHAIN DOES NOT VERIFY" },
                if ledger.complete() { "" } else { " -- INCOMPLETE" },
            );
        }
        println!("\nTargets");
        println!("{}", self.targets_table());
    }

    fn latency_table(&self) -> Table {
        let mut table = table([
            "transport",
            "sessions",
            "mode",
            "calls",
            "calls/s",
            "p50 ms",
            "p99 ms",
            "p999 ms",
            "added p50",
            "added p99",
            "added p999",
            "x p50",
            "x calls/s",
        ]);
        for (s, row) in self.rows() {
            let o = &row.outcome.summary;
            let mut cells = vec![
                s.transport.label().to_owned(),
                s.sessions.to_string(),
                row.outcome.mode.label().to_owned(),
                o.calls.to_string(),
                format!("{:.0}", o.calls_per_s),
                format!("{:.3}", o.p50_ms),
                format!("{:.3}", o.p99_ms),
                format!("{:.3}", o.p999_ms),
            ];
            match &row.vs_direct {
                Some(a) => cells.extend([
                    format!("{:+.3}", a.added_p50_ms),
                    format!("{:+.3}", a.added_p99_ms),
                    format!("{:+.3}", a.added_p999_ms),
                    format!("{:.2}", a.ratio_p50),
                    format!("{:.2}", a.ratio_calls_per_s),
                ]),
                None => cells.extend(["-", "-", "-", "-", "-"].map(String::from)),
            }
            table.add_row(cells);
        }
        align_right(&mut table, 3..13);
        table
    }

    fn cost_table(&self) -> Table {
        let mut table = table([
            "transport",
            "sessions",
            "mode",
            "proxy cpu us/call",
            "proxy peak rss",
            "postgres cpu us/call",
            "bench cpu us/call",
            "machine busy",
            "events/batch",
        ]);
        for (s, row) in self.rows() {
            let c = &row.outcome.cost;
            let rss = match (c.proxy_peak_rss_bytes, c.proxy_peak_rss_total_bytes) {
                (Some(one), Some(total)) if s.transport == Transport::Stdio && s.sessions > 1 => {
                    format!("{} each, {} total", mib(one), mib(total))
                }
                (Some(one), _) => mib(one),
                _ => "-".into(),
            };
            table.add_row([
                s.transport.label().to_owned(),
                s.sessions.to_string(),
                row.outcome.mode.label().to_owned(),
                opt(c.proxy_cpu_us_per_call, 0),
                rss,
                opt(c.postgres_cpu_us_per_call, 0),
                opt(c.bench_cpu_us_per_call, 0),
                c.machine_busy.map(|b| format!("{:.0}%", b * 100.0)).unwrap_or_else(|| "-".into()),
                row.batches
                    .map(|b| format!("{:.2}", b.events_per_batch))
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        align_right(&mut table, 3..9);
        table
    }

    fn group_commit_table(&self) -> Table {
        let mut table = table([
            "sessions",
            "ledger",
            "calls/s",
            "p50 ms",
            "p99 ms",
            "events",
            "batches",
            "events/batch",
            "events/xact (pg_stat_database)",
            "serve: commit ms",
            "serve: events/commit",
            "serve: append wait ms",
            "serve: call in proxy ms",
        ]);
        for (s, row) in self.rows() {
            if s.transport != Transport::Http || row.outcome.mode == Mode::Direct {
                continue;
            }
            let o = &row.outcome.summary;
            let b = row.batches.unwrap_or_default();
            let xact = match (row.outcome.mode, &s.postgres_commits) {
                (Mode::Postgres, Some(c)) => format!(
                    "{:.2} ({} events / {} xacts)",
                    c.events_per_transaction, c.events, c.transactions
                ),
                _ => "-".into(),
            };
            table.add_row([
                s.sessions.to_string(),
                row.outcome.mode.label().to_owned(),
                format!("{:.0}", o.calls_per_s),
                format!("{:.3}", o.p50_ms),
                format!("{:.3}", o.p99_ms),
                b.events.to_string(),
                b.batches.to_string(),
                format!("{:.2}", b.events_per_batch),
                xact,
                stage(row, |t| format!("{:.3}", t.commit_ms)),
                stage(row, |t| format!("{:.2}", t.commit_batch)),
                stage(row, |t| format!("{:.3}", t.append_wait_ms)),
                stage(row, |t| format!("{:.3}", t.call_in_proxy_ms)),
            ]);
        }
        align_right(&mut table, 2..13);
        table
    }

    fn stages_table(&self) -> Table {
        let mut table = table([
            "sessions",
            "ledger",
            "added p50 ms",
            "call in proxy ms",
            "two append waits ms",
            "upstream ms",
            "rest ms",
        ]);
        for (s, row) in self.rows() {
            if s.transport != Transport::Http || row.outcome.mode == Mode::Direct {
                continue;
            }
            table.add_row([
                s.sessions.to_string(),
                row.outcome.mode.label().to_owned(),
                row.vs_direct
                    .map(|a| format!("{:+.3}", a.added_p50_ms))
                    .unwrap_or_else(|| "-".into()),
                stage(row, |t| format!("{:.3}", t.call_in_proxy_ms)),
                stage(row, |t| format!("{:.3}", 2.0 * t.append_wait_ms)),
                stage(row, |t| format!("{:.3}", t.upstream_ms)),
                stage(row, |t| format!("{:.3}", t.rest_ms)),
            ]);
        }
        align_right(&mut table, 2..7);
        table
    }

    /// The bounds of every proxied mode with more than one session; `None` when there is none.
    fn bounds_table(&self) -> Option<Table> {
        let mut table = table([
            "transport",
            "sessions",
            "mode",
            "calls/s (x)",
            "machine busy",
            "cpu us/call: proxy + postgres + bench",
            "direct: bench",
            "ceiling (x)",
            "without the proxy (x)",
            "writer busy",
            "busiest proxy thread",
        ]);
        let bounds = self.bounds();
        for BoundsRow { transport, sessions, mode, bounds: b } in &bounds {
            let measured = |mode| self.row(*transport, *sessions, mode).expect("a measured row");
            let (row, direct) = (measured(*mode), measured(Mode::Direct));
            let c = &row.outcome.cost;
            let parts = [c.proxy_cpu_us_per_call, c.postgres_cpu_us_per_call]
                .map(|part| opt(part, 0))
                .join(" + ");
            table.add_row([
                transport.label().to_owned(),
                sessions.to_string(),
                mode.label().to_owned(),
                b.against_direct(row.outcome.summary.calls_per_s),
                c.machine_busy.map(|b| format!("{:.0}%", b * 100.0)).unwrap_or("-".into()),
                format!("{parts} + {} = {:.0}", opt(c.bench_cpu_us_per_call, 0), b.cpu_us_per_call),
                opt(direct.outcome.cost.bench_cpu_us_per_call, 0),
                b.against_direct(b.cpu_ceiling),
                b.ceiling_without_proxy.map(|r| b.against_direct(r)).unwrap_or("-".into()),
                b.writer_busy.map(|w| format!("{:.0}%", w * 100.0)).unwrap_or("-".into()),
                c.busiest_proxy_thread
                    .map(|t| {
                        format!("{:.0}% + {:.0}% waiting", t.running * 100.0, t.waiting * 100.0)
                    })
                    .unwrap_or("-".into()),
            ]);
        }
        align_right(&mut table, 3..11);
        (!bounds.is_empty()).then_some(table)
    }

    fn idle_table(&self) -> Table {
        let mut table = table([
            "upstream",
            "ledger",
            "sessions",
            "open s",
            "rss before",
            "rss idle",
            "peak rss",
            "per session",
        ]);
        for i in &self.idle {
            table.add_row([
                i.upstream.to_owned(),
                i.ledger.to_owned(),
                i.sessions.to_string(),
                format!("{:.1}", i.open_secs),
                i.rss_before_bytes.map(mib).unwrap_or_else(|| "-".into()),
                i.rss_idle_bytes.map(mib).unwrap_or_else(|| "-".into()),
                i.peak_rss_bytes.map(mib).unwrap_or_else(|| "-".into()),
                i.bytes_per_session
                    .map(|b| format!("{:.1} KiB", b / 1024.0))
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        align_right(&mut table, 2..8);
        table
    }

    fn bulk_table(&self) -> Table {
        let mut table = table([
            "ledger",
            "events",
            "build events/s",
            "verify s",
            "verify events/s",
            "verify peak rss",
            "export s",
            "export events/s",
            "export peak rss",
        ]);
        for b in &self.bulk {
            table.add_row([
                b.ledger.to_owned(),
                b.events.to_string(),
                format!("{:.0}", b.build_events_per_s),
                secs(&b.verify),
                opt(b.verify.events_per_s, 0),
                b.verify.peak_rss_bytes.map(mib).unwrap_or_else(|| "-".into()),
                secs(&b.export),
                opt(b.export.events_per_s, 0),
                b.export.peak_rss_bytes.map(mib).unwrap_or_else(|| "-".into()),
            ]);
        }
        align_right(&mut table, 1..9);
        table
    }

    fn targets_table(&self) -> Table {
        let mut table = table(["target", "measured", "verdict"]);
        for t in self.targets() {
            table.add_row([
                t.target,
                t.measured,
                match t.verdict {
                    Verdict::Met => "met",
                    Verdict::NotMet => "NOT MET",
                    Verdict::NotMeasured => "not measured",
                }
                .to_owned(),
            ]);
        }
        table
    }
}

fn stage(row: &ModeRow, show: impl Fn(&super::serve_metrics::StageTimings) -> String) -> String {
    row.outcome.serve_stages.as_ref().map(show).unwrap_or_else(|| "-".into())
}

fn secs(run: &ChildRun) -> String {
    match (run.finished, &run.error) {
        (_, Some(_)) => format!("failed at {:.1}", run.secs),
        (true, None) => format!("{:.2}", run.secs),
        (false, None) => format!("stopped at {:.0}", run.secs),
    }
}

fn judge(target: String, measured: Option<(String, bool)>) -> TargetRow {
    match measured {
        Some((measured, met)) => TargetRow {
            target,
            measured,
            verdict: if met { Verdict::Met } else { Verdict::NotMet },
        },
        None => TargetRow { target, measured: "-".into(), verdict: Verdict::NotMeasured },
    }
}

fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    table
}

fn align_right(table: &mut Table, columns: std::ops::Range<usize>) {
    for column in columns {
        if let Some(column) = table.column_mut(column) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map(|v| format!("{v:.decimals$}")).unwrap_or_else(|| "-".into())
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn load(load: Option<(f32, f32, f32)>) -> String {
    load.map(|(a, b, c)| format!("{a:.2} {b:.2} {c:.2}")).unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_without_a_measurement_is_not_judged() {
        let row = judge("t".into(), None);
        assert_eq!(row.verdict, Verdict::NotMeasured);
        assert_eq!(judge("t".into(), Some(("1".into(), true))).verdict, Verdict::Met);
        assert_eq!(judge("t".into(), Some(("1".into(), false))).verdict, Verdict::NotMet);
    }

    #[test]
    fn mebibytes_have_one_decimal() {
        assert_eq!(mib(150 * 1024 * 1024), "150.0 MiB");
        assert_eq!(mib(1536 * 1024), "1.5 MiB");
    }
}
