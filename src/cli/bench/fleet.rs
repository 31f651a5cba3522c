//! One mode of one scenario: N agent sessions that reach the upstream directly or through the
//! proxy, the proxy processes whose cost is measured, and what its measured rounds found.
//!
//! A round is a fixed number of calls shared by one caller task per session, each calling as
//! fast as its answers come back. Around every measured round the fleet reads the CPU time of
//! its proxy processes, of the Postgres backends serving the ledger, of the bench process (the
//! clients and the HTTP upstream), how long each proxy thread ran or waited for a CPU, and how
//! busy the whole machine was; warm-up rounds are not counted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::task::JoinSet;

use super::http_client::HttpSession;
use super::procstat::{self, MachineCpu, ThreadTime};
use super::scratch::PgProbe;
use super::serve_child::{ServeProcess, Upstream};
use super::serve_metrics::{self, StageTimings};
use super::session::{Caller, StdioSession};
use super::stats::Summary;
use crate::record::format_timestamp;
use crate::store::LedgerUrl;

/// Sessions started at once: enough to be quick, few enough not to stampede a 2-core machine.
const START_PARALLELISM: usize = 8;

/// How the agent sessions reach the proxy or the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Stdio,
    Http,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Stdio => "stdio",
            Transport::Http => "http",
        }
    }
}

/// Where the calls go: straight to the upstream, or through the proxy into one of the ledgers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Direct,
    Sqlite,
    Postgres,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Sqlite => "proxied sqlite",
            Mode::Postgres => "proxied postgres",
        }
    }
}

/// What every fleet of a run shares.
pub struct Context {
    pub exe: PathBuf,
    /// What every `serve` is started under (`--serve-wrapper`), usually nothing.
    pub serve_wrapper: Vec<String>,
    pub sqlite: LedgerUrl,
    pub postgres: Option<PgLedger>,
    /// The in-process upstream's MCP endpoint.
    pub upstream_url: String,
    pub http: reqwest::Client,
    /// Which chains the stdio proxies append to.
    pub stdio_chains: super::StdioChains,
    /// Every chain the proxies of the run may append to.
    pub chains: Vec<String>,
}

/// The Postgres ledger and the reader of its server-side counters.
pub struct PgLedger {
    pub url: LedgerUrl,
    pub probe: PgProbe,
}

impl Context {
    pub fn ledger(&self, mode: Mode) -> Option<LedgerUrl> {
        match mode {
            Mode::Direct => None,
            Mode::Sqlite => Some(self.sqlite.clone()),
            Mode::Postgres => self.postgres.as_ref().map(|pg| pg.url.clone()),
        }
    }

    fn probe(&self, mode: Mode) -> Option<&PgProbe> {
        match mode {
            Mode::Postgres => self.postgres.as_ref().map(|pg| &pg.probe),
            _ => None,
        }
    }
}

/// A measured round's wall-clock span, in the ledger's timestamp format, so that the events the
/// proxies sealed during it can be picked out of the ledger afterwards.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Window {
    pub start: String,
    pub end: String,
}

pub struct Fleet {
    pub transport: Transport,
    pub mode: Mode,
    sessions: usize,
    callers: Vec<Caller>,
    stdio: Vec<StdioSession>,
    http: Vec<HttpSession>,
    serve: Option<ServeProcess>,
    proxy_pids: Vec<u32>,
    /// Every call made, warm-up included, to check the ledger against.
    calls_made: usize,
    measured: Measured,
}

#[derive(Default)]
struct Measured {
    latencies: Vec<Duration>,
    busy: Duration,
    proxy_cpu: Option<Duration>,
    pg_cpu: Option<Duration>,
    bench_cpu: Option<Duration>,
    /// Each proxy thread's time in the measured rounds, by (process id, thread id).
    proxy_threads: HashMap<(u32, u32), ThreadTime>,
    /// Busy share of the machine times the round's duration, summed: a time-weighted mean.
    machine_busy: Option<f64>,
    windows: Vec<Window>,
}

/// CPU and memory readings at the start or end of a round.
struct Reading {
    proxy: Option<Duration>,
    /// Every thread of the proxy processes, by (process id, thread id).
    proxy_threads: HashMap<(u32, u32), ThreadTime>,
    bench: Option<Duration>,
    pg: Option<HashMap<u32, Duration>>,
    machine: Option<MachineCpu>,
}

/// What a fleet found, once its sessions have ended.
#[derive(Debug, Clone, Serialize)]
pub struct FleetOutcome {
    pub transport: Transport,
    pub mode: Mode,
    pub sessions: usize,
    #[serde(flatten)]
    pub summary: Summary,
    #[serde(flatten)]
    pub cost: Cost,
    /// What `serve` measured of its own stages (HTTP proxied modes).
    pub serve_stages: Option<StageTimings>,
    #[serde(skip)]
    pub windows: Vec<Window>,
    #[serde(skip)]
    pub calls_made: usize,
}

/// What the calls cost, per measured call, and the proxy's memory.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Cost {
    /// CPU time (user + system) of the proxy process(es) per call, in microseconds.
    pub proxy_cpu_us_per_call: Option<f64>,
    /// The largest peak RSS (VmHWM) of one proxy process, in bytes.
    pub proxy_peak_rss_bytes: Option<u64>,
    /// The peak RSS of every proxy process added up (stdio: one process per session).
    pub proxy_peak_rss_total_bytes: Option<u64>,
    /// CPU time of the Postgres backends serving the ledger, per call, in microseconds.
    pub postgres_cpu_us_per_call: Option<f64>,
    /// CPU time of the bench process (clients; HTTP upstream) per call, in microseconds.
    pub bench_cpu_us_per_call: Option<f64>,
    /// The share of the machine's CPU capacity (every core) in use during the measured rounds.
    pub machine_busy: Option<f64>,
    /// The proxy thread that ran or waited to run the most in the measured rounds. `serve` runs
    /// on one thread by default: when that thread is near 100 % on a CPU or waiting for one, it
    /// can pace the mode, however idle the machine's other CPU looks.
    pub busiest_proxy_thread: Option<ThreadShare>,
}

/// What share of some wall time a thread spent on a CPU, and runnable but waiting for one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ThreadShare {
    pub running: f64,
    pub waiting: f64,
}

impl ThreadShare {
    /// The busiest of `threads` (running plus waiting) over `wall`; `None` without threads.
    fn busiest<'a>(
        threads: impl IntoIterator<Item = &'a ThreadTime>,
        wall: Duration,
    ) -> Option<Self> {
        let busiest = threads.into_iter().max_by_key(|t| t.running + t.waiting)?;
        let wall = wall.as_secs_f64();
        (wall > 0.0).then(|| ThreadShare {
            running: busiest.running.as_secs_f64() / wall,
            waiting: busiest.waiting.as_secs_f64() / wall,
        })
    }
}

impl Fleet {
    /// Opens `sessions` agent sessions for `mode` over `transport`.
    pub async fn start(
        ctx: &Context,
        transport: Transport,
        mode: Mode,
        sessions: usize,
    ) -> anyhow::Result<Fleet> {
        let ledger = ctx.ledger(mode);
        let label = format!("{} {}", transport.label(), mode.label());
        let mut fleet = Fleet {
            transport,
            mode,
            sessions,
            callers: Vec::new(),
            stdio: Vec::new(),
            http: Vec::new(),
            serve: None,
            proxy_pids: Vec::new(),
            calls_made: 0,
            measured: Measured::default(),
        };
        match transport {
            Transport::Stdio => {
                let exe = &ctx.exe;
                let ledger = ledger.as_ref();
                let chains = ctx.stdio_chains;
                fleet.stdio = futures::stream::iter(0..sessions)
                    .map(|i| StdioSession::start(exe, ledger, chains.of_session(i)))
                    .buffer_unordered(START_PARALLELISM)
                    .try_collect()
                    .await
                    .with_context(|| format!("cannot open the {label} sessions"))?;
                fleet.proxy_pids = fleet.stdio.iter().filter_map(|s| s.proxy_pid).collect();
                fleet.callers =
                    fleet.stdio.iter().map(|s| Caller::Stdio(s.client.peer().clone())).collect();
            }
            Transport::Http => {
                let url = match &ledger {
                    Some(ledger) => {
                        let serve = ServeProcess::start(ctx, ledger, Upstream::PerSession).await?;
                        let url = serve.url.clone();
                        fleet.proxy_pids.push(serve.pid());
                        fleet.serve = Some(serve);
                        url
                    }
                    None => ctx.upstream_url.clone(),
                };
                let client = &ctx.http;
                let url = url.as_str();
                fleet.http = futures::stream::iter(0..sessions)
                    .map(|_| HttpSession::open(client, url))
                    .buffer_unordered(START_PARALLELISM)
                    .try_collect()
                    .await
                    .with_context(|| format!("cannot open the {label} sessions"))?;
                fleet.callers = fleet.http.iter().cloned().map(Caller::Http).collect();
            }
        }
        Ok(fleet)
    }

    /// Calls that are not measured: they warm processes, caches, pools and connections.
    pub async fn warm_up(&mut self, calls: usize) -> anyhow::Result<()> {
        self.round(calls, false).await
    }

    /// A measured round of `calls` calls.
    pub async fn measure(&mut self, calls: usize, ctx: &Context) -> anyhow::Result<()> {
        let probe = ctx.probe(self.mode);
        let before = self.reading(probe).await;
        let start = format_timestamp(OffsetDateTime::now_utc());
        let started = Instant::now();
        self.round(calls, true).await?;
        let elapsed = started.elapsed();
        let end = format_timestamp(OffsetDateTime::now_utc());
        let after = self.reading(probe).await;
        let m = &mut self.measured;
        m.busy += elapsed;
        m.windows.push(Window { start, end });
        add(&mut m.proxy_cpu, diff(before.proxy, after.proxy));
        add(&mut m.bench_cpu, diff(before.bench, after.bench));
        for (thread, time) in &after.proxy_threads {
            // A thread that started during the round counts from zero.
            let start = before.proxy_threads.get(thread).copied().unwrap_or_default();
            let total = m.proxy_threads.entry(*thread).or_default();
            total.running += time.running.saturating_sub(start.running);
            total.waiting += time.waiting.saturating_sub(start.waiting);
        }
        if let (Some(before), Some(after)) = (&before.pg, &after.pg) {
            // A backend that connected during the round counts from zero.
            let used = after
                .iter()
                .map(|(pid, cpu)| cpu.saturating_sub(before.get(pid).copied().unwrap_or_default()))
                .sum();
            add(&mut m.pg_cpu, Some(used));
        }
        if let (Some(before), Some(after)) = (before.machine, after.machine) {
            let weighted = before.busy_share_until(&after) * elapsed.as_secs_f64();
            *m.machine_busy.get_or_insert(0.0) += weighted;
        }
        Ok(())
    }

    /// Makes `calls` calls, one caller task per session; keeps their latencies if `keep`.
    async fn round(&mut self, calls: usize, keep: bool) -> anyhow::Result<()> {
        let remaining = Arc::new(AtomicUsize::new(calls));
        let first = self.calls_made;
        let mut tasks = JoinSet::new();
        for caller in &self.callers {
            let (caller, remaining) = (caller.clone(), remaining.clone());
            tasks.spawn(async move {
                let mut times = Vec::new();
                while let Ok(left) =
                    remaining
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                {
                    times.push(caller.call(first + left).await?);
                }
                anyhow::Ok(times)
            });
        }
        let label = format!("{} {}", self.transport.label(), self.mode.label());
        let mut times = Vec::with_capacity(calls);
        while let Some(joined) = tasks.join_next().await {
            // Returning early drops the JoinSet, which aborts the other callers.
            let caller_times = joined
                .context("a caller task panicked")?
                .with_context(|| format!("a call failed in the {label} sessions"))?;
            times.extend(caller_times);
        }
        self.calls_made += calls;
        if keep {
            self.measured.latencies.extend(times);
        }
        Ok(())
    }

    async fn reading(&self, probe: Option<&PgProbe>) -> Reading {
        let proxy = self
            .proxy_pids
            .iter()
            .map(|pid| procstat::cpu_time(*pid))
            .try_fold(Duration::ZERO, |sum, cpu| cpu.map(|cpu| sum + cpu))
            .filter(|_| !self.proxy_pids.is_empty());
        let pg = match probe {
            Some(probe) => probe.backend_pids().await.ok().map(|pids| {
                pids.into_iter()
                    .filter_map(|pid| procstat::cpu_time(pid).map(|cpu| (pid, cpu)))
                    .collect()
            }),
            None => None,
        };
        let proxy_threads = self
            .proxy_pids
            .iter()
            .filter_map(|&pid| Some((pid, procstat::thread_times(pid)?)))
            .flat_map(|(pid, threads)| threads.into_iter().map(move |(tid, t)| ((pid, tid), t)))
            .collect();
        Reading {
            proxy,
            proxy_threads,
            bench: procstat::cpu_time(procstat::own_pid()),
            pg,
            machine: MachineCpu::now(),
        }
    }

    /// Ends every session as a client would (stdin closed; HTTP `DELETE`), then stops `serve`,
    /// which commits the last events; returns what was measured.
    pub async fn finish(self, ctx: &Context) -> anyhow::Result<FleetOutcome> {
        let label = format!("{} {}", self.transport.label(), self.mode.label());
        let serve_stages = match &self.serve {
            Some(serve) => Some(serve_metrics::read(&ctx.http, &serve.url).await?),
            None => None,
        };
        let peaks: Vec<u64> = self
            .proxy_pids
            .iter()
            .filter_map(|pid| procstat::memory(*pid).map(|m| m.peak))
            .collect();
        drop(self.callers);
        futures::stream::iter(self.stdio)
            .map(StdioSession::close)
            .buffer_unordered(START_PARALLELISM)
            .try_collect::<Vec<()>>()
            .await
            .with_context(|| format!("cannot close the {label} sessions"))?;
        futures::stream::iter(&self.http)
            .map(HttpSession::close)
            .buffer_unordered(START_PARALLELISM)
            .try_collect::<Vec<()>>()
            .await
            .with_context(|| format!("cannot close the {label} sessions"))?;
        if let Some(serve) = self.serve {
            serve.stop().await?;
        }
        let m = self.measured;
        let summary = Summary::of(&m.latencies, m.busy);
        let per_call = |cpu: Option<Duration>| {
            cpu.filter(|_| summary.calls > 0).map(|c| c.as_secs_f64() * 1e6 / summary.calls as f64)
        };
        let cost = Cost {
            proxy_cpu_us_per_call: per_call(m.proxy_cpu),
            proxy_peak_rss_bytes: peaks.iter().copied().max(),
            proxy_peak_rss_total_bytes: (!peaks.is_empty()).then(|| peaks.iter().sum()),
            postgres_cpu_us_per_call: per_call(m.pg_cpu),
            bench_cpu_us_per_call: per_call(m.bench_cpu),
            machine_busy: m
                .machine_busy
                .filter(|_| !m.busy.is_zero())
                .map(|weighted| weighted / m.busy.as_secs_f64()),
            busiest_proxy_thread: ThreadShare::busiest(m.proxy_threads.values(), m.busy),
        };
        Ok(FleetOutcome {
            transport: self.transport,
            mode: self.mode,
            sessions: self.sessions,
            summary,
            cost,
            serve_stages,
            windows: m.windows,
            calls_made: self.calls_made,
        })
    }
}

fn diff(before: Option<Duration>, after: Option<Duration>) -> Option<Duration> {
    Some(after?.saturating_sub(before?))
}

fn add(total: &mut Option<Duration>, more: Option<Duration>) {
    if let Some(more) = more {
        *total = Some(total.unwrap_or_default() + more);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_thread_is_the_one_that_ran_or_waited_longest() {
        let ms = Duration::from_millis;
        let threads = [
            ThreadTime { running: ms(600), waiting: ms(50) },
            ThreadTime { running: ms(500), waiting: ms(400) },
            ThreadTime { running: ms(10), waiting: ms(0) },
        ];
        let busiest = ThreadShare::busiest(&threads, ms(1000)).expect("threads over a wall time");
        assert_eq!(busiest, ThreadShare { running: 0.5, waiting: 0.4 });
        assert_eq!(ThreadShare::busiest(&[], ms(1000)), None);
        assert_eq!(ThreadShare::busiest(&threads, Duration::ZERO), None);
    }
}
