//! What a benchmark run found, and how it is printed: a table for people, JSON for scripts.

use comfy_table::{CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use super::stats::{Added, Summary};

/// The target: with durable Postgres commits, the proxy adds at most this much at p50.
pub const TARGET_P50_ADDED_MS: f64 = 1.5;

#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub calls: usize,
    pub warmup: usize,
    pub concurrency: usize,
    pub round: usize,
    /// The upstream every mode called.
    pub upstream: String,
    /// Where the SQLite mode recorded.
    pub sqlite_ledger: String,
    /// Where the Postgres mode recorded, and the server's durability settings.
    pub postgres_ledger: Option<String>,
    pub modes: Vec<ModeRow>,
    pub ledgers: Vec<LedgerCheck>,
    /// Why Postgres was not measured, when it was not.
    pub postgres_skipped: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ModeRow {
    pub mode: &'static str,
    #[serde(flatten)]
    pub summary: Summary,
    /// Against the direct mode; absent for the direct mode itself.
    #[serde(flatten)]
    pub added: Option<Added>,
}

/// What one proxied mode's ledger holds after the run.
#[derive(Debug, Serialize)]
pub struct LedgerCheck {
    /// `sqlite` or `postgres`.
    pub ledger: &'static str,
    pub events: u64,
    pub tool_calls: u64,
    pub tool_results: u64,
    /// Session start and end, and anything else that is not a tool call or result.
    pub other_events: u64,
    /// Calls the session made, warm-up included: each must have a call and a result event.
    pub calls_made: u64,
    pub intact: bool,
}

impl LedgerCheck {
    pub fn complete(&self) -> bool {
        self.intact && self.tool_calls == self.calls_made && self.tool_results == self.calls_made
    }
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub p50_added_ms_max: f64,
    pub postgres_p50_added_ms: Option<f64>,
    pub met: Option<bool>,
}

impl Report {
    pub fn target(&self) -> Target {
        let added = self
            .modes
            .iter()
            .find(|m| m.mode == super::session::Mode::Postgres.label())
            .and_then(|m| m.added)
            .map(|a| a.added_p50_ms);
        Target {
            p50_added_ms_max: TARGET_P50_ADDED_MS,
            postgres_p50_added_ms: added,
            met: added.map(|a| a <= TARGET_P50_ADDED_MS),
        }
    }

    pub fn ledgers_complete(&self) -> bool {
        self.ledgers.iter().all(LedgerCheck::complete)
    }

    /// The report and its verdict on the target, fields in the order the table shows them.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        #[derive(Serialize)]
        struct WithTarget<'a> {
            #[serde(flatten)]
            report: &'a Report,
            target: Target,
        }
        serde_json::to_string_pretty(&WithTarget { report: self, target: self.target() })
    }

    pub fn print_text(&self) {
        println!(
            "mcp-ledger bench: {} measured `{}` calls per mode after {} warm-up, concurrency {}, \
             modes interleaved in rounds of {}",
            self.calls, self.tool, self.warmup, self.concurrency, self.round
        );
        println!("  upstream  {}", self.upstream);
        println!("  sqlite    {}", self.sqlite_ledger);
        match (&self.postgres_ledger, &self.postgres_skipped) {
            (Some(ledger), _) => println!("  postgres  {ledger}"),
            (None, Some(reason)) => println!("  postgres  not measured: {reason}"),
            (None, None) => {}
        }
        println!("\n{}\n", self.table());
        for ledger in &self.ledgers {
            println!(
                "{} ledger: {} events = 2 x {} calls ({} measured + {} warm-up) + {} session \
                 events; {}{}",
                ledger.ledger,
                ledger.events,
                ledger.tool_calls.min(ledger.tool_results),
                self.calls,
                self.warmup,
                ledger.other_events,
                if ledger.intact { "chain verified intact" } else { "CHAIN DOES NOT VERIFY" },
                if ledger.complete() {
                    String::new()
                } else {
                    format!(
                        " -- INCOMPLETE: expected {0} tool_call and {0} tool_result events, \
                         found {1} and {2}",
                        ledger.calls_made, ledger.tool_calls, ledger.tool_results
                    )
                }
            );
        }
        let target = self.target();
        match target.postgres_p50_added_ms {
            Some(added) => println!(
                "\npostgres p50 added {added:.3} ms: {} the {TARGET_P50_ADDED_MS} ms target",
                if added <= TARGET_P50_ADDED_MS { "within" } else { "OVER" }
            ),
            None => println!(
                "\npostgres was not measured, so the {TARGET_P50_ADDED_MS} ms p50 target was not \
                 checked"
            ),
        }
    }

    fn table(&self) -> Table {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED).set_header([
            "mode",
            "calls",
            "p50 ms",
            "p99 ms",
            "mean ms",
            "calls/s",
            "added p50 ms",
            "added p99 ms",
            "ratio p50",
        ]);
        for row in &self.modes {
            let s = &row.summary;
            let (added_p50, added_p99, ratio) = match &row.added {
                Some(a) => (
                    format!("{:+.3}", a.added_p50_ms),
                    format!("{:+.3}", a.added_p99_ms),
                    format!("{:.2}x", a.ratio_p50),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            table.add_row([
                row.mode.to_owned(),
                s.calls.to_string(),
                format!("{:.3}", s.p50_ms),
                format!("{:.3}", s.p99_ms),
                format!("{:.3}", s.mean_ms),
                format!("{:.0}", s.calls_per_s),
                added_p50,
                added_p99,
                ratio,
            ]);
        }
        for column in 1..9 {
            if let Some(column) = table.column_mut(column) {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
        table
    }
}
