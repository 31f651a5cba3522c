//! What bounds a proxied scenario's throughput, worked out from what the run measured: the CPU
//! every process spent per call against the machine's CPUs, and how busy the one ledger writer
//! of `serve` was. A scenario near its CPU ceiling is paced by the CPU. A busy writer alone
//! proves less: group commit grows the batches until the writer is busy whatever sets the pace,
//! so only a run with cheaper commits tells whether they do (docs/performance.md).

use serde::Serialize;

use super::fleet::Mode;
use super::scenario::ModeRow;

/// The bounds of one proxied mode of a scenario, next to its direct mode.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bounds {
    /// CPU per call of every process the mode needs (proxy, Postgres, bench), in microseconds.
    pub cpu_us_per_call: f64,
    /// Calls/s at which `cpu_us_per_call` would keep every CPU busy.
    pub cpu_ceiling: f64,
    /// The same ceiling with the proxy's own CPU left out: what the rest of the machine's work
    /// per recorded call allows even to a proxy that cost nothing. Absent for SQLite, whose
    /// ledger work is part of the proxy's CPU.
    pub ceiling_without_proxy: Option<f64>,
    /// The direct mode's measured calls/s, which the ratios are taken against.
    pub direct_calls_per_s: f64,
    /// Share of the measured time the ledger writer spent in commits (batches committed in the
    /// measured rounds times `serve`'s mean commit time); `serve` only.
    pub writer_busy: Option<f64>,
}

impl Bounds {
    /// `None` when the run did not measure the CPU of every process involved.
    pub fn of(row: &ModeRow, direct: &ModeRow, cpus: usize) -> Option<Bounds> {
        let cost = &row.outcome.cost;
        let proxy = cost.proxy_cpu_us_per_call?;
        let bench = cost.bench_cpu_us_per_call?;
        let postgres = match row.outcome.mode {
            Mode::Postgres => Some(cost.postgres_cpu_us_per_call?),
            _ => None,
        };
        let others = bench + postgres.unwrap_or(0.0);
        let cpu_us_per_call = proxy + others;
        let capacity_us_per_s = cpus as f64 * 1e6;
        let summary = &row.outcome.summary;
        let measured_ms = summary.calls as f64 / summary.calls_per_s * 1e3;
        let writer_busy = match (row.outcome.serve_stages, row.batches) {
            (Some(stages), Some(batches)) if measured_ms > 0.0 => {
                Some(batches.batches as f64 * stages.commit_ms / measured_ms)
            }
            _ => None,
        };
        Some(Bounds {
            cpu_us_per_call,
            cpu_ceiling: capacity_us_per_s / cpu_us_per_call,
            ceiling_without_proxy: postgres.map(|_| capacity_us_per_s / others),
            direct_calls_per_s: direct.outcome.summary.calls_per_s,
            writer_busy,
        })
    }

    /// `rate` as calls/s and as a multiple of the direct mode's.
    pub fn against_direct(&self, rate: f64) -> String {
        format!("{rate:.0} ({:.2} x)", rate / self.direct_calls_per_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::bench::fleet::{Cost, FleetOutcome, Transport};
    use crate::cli::bench::scenario::Batches;
    use crate::cli::bench::serve_metrics::StageTimings;
    use crate::cli::bench::stats::Summary;

    fn row(mode: Mode, calls_per_s: f64, cost: Cost) -> ModeRow {
        ModeRow {
            outcome: FleetOutcome {
                transport: Transport::Http,
                mode,
                sessions: 64,
                summary: Summary {
                    calls: 4000,
                    p50_ms: 0.0,
                    p99_ms: 0.0,
                    p999_ms: 0.0,
                    mean_ms: 0.0,
                    calls_per_s,
                },
                cost,
                serve_stages: None,
                windows: Vec::new(),
                calls_made: 4000,
            },
            vs_direct: None,
            batches: None,
        }
    }

    #[test]
    fn ceilings_split_the_machine_by_cpu_per_call() {
        let direct = row(Mode::Direct, 16_000.0, Cost::default());
        let cost = Cost {
            proxy_cpu_us_per_call: Some(160.0),
            postgres_cpu_us_per_call: Some(120.0),
            bench_cpu_us_per_call: Some(120.0),
            ..Cost::default()
        };
        let mut proxied = row(Mode::Postgres, 4_000.0, cost);
        // 4,000 calls at 4,000/s is one second; 400 commits of 2 ms each fill 80 % of it.
        proxied.outcome.serve_stages = Some(StageTimings { commit_ms: 2.0, ..Default::default() });
        proxied.batches = Some(Batches { events: 12_000, batches: 400, events_per_batch: 30.0 });
        let b = Bounds::of(&proxied, &direct, 2).expect("every cpu measured");
        assert_eq!(b.cpu_us_per_call, 400.0);
        assert_eq!(b.cpu_ceiling, 5_000.0);
        assert_eq!(b.ceiling_without_proxy, Some(2e6 / 240.0));
        assert!((b.writer_busy.expect("serve") - 0.8).abs() < 1e-9);
        assert_eq!(b.against_direct(8_000.0), "8000 (0.50 x)");
    }

    #[test]
    fn sqlite_has_no_ceiling_without_the_proxy_and_missing_cpu_gives_none() {
        let direct = row(Mode::Direct, 16_000.0, Cost::default());
        let cost = Cost {
            proxy_cpu_us_per_call: Some(250.0),
            bench_cpu_us_per_call: Some(150.0),
            ..Cost::default()
        };
        let b = Bounds::of(&row(Mode::Sqlite, 4_000.0, cost), &direct, 2).expect("measured");
        assert_eq!(b.cpu_ceiling, 5_000.0);
        assert_eq!(b.ceiling_without_proxy, None);
        assert_eq!(b.writer_busy, None);
        // Postgres without its backends' CPU cannot be bounded.
        assert!(Bounds::of(&row(Mode::Postgres, 4_000.0, cost), &direct, 2).is_none());
    }
}
