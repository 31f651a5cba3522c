//! `mcp-ledger pii`: the PII detectors on their own, outside the proxy.
//!
//! * `scan [FILE|-]` prints what the detectors find in a JSON, JSON Lines or text file — pattern
//!   and pointer or byte range, never the value — so that a custom pattern can be tried before it
//!   goes into the config file (`--pattern NAME=REGEX`, `--disable NAME`).
//! * `eval [--corpus DIR]` scores them on a labelled corpus (format in `docs/pii.md`): TP, FP, FN,
//!   precision and recall per pattern; `--min 0.95` makes a pattern below it an error (exit 1).
//! * `bench [--mb N]` measures their throughput on deterministic MCP-shaped payloads.
//! * `patterns` lists the built-in detectors.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use serde_json::{Value, json};

use super::{CliError, exit};
use crate::pii::{self, Scanner, ScannerConfig, eval, workload};

#[derive(Debug, Args)]
pub struct PiiArgs {
    #[command(subcommand)]
    command: PiiCommand,
}

#[derive(Debug, Subcommand)]
enum PiiCommand {
    /// Print the findings in a JSON, JSON Lines or text file (pattern and location, never values)
    Scan(ScanArgs),
    /// Score the detectors on a labelled corpus: TP, FP, FN, precision and recall per pattern
    Eval(EvalArgs),
    /// Measure the detectors' throughput on deterministic MCP-shaped payloads
    Bench(BenchArgs),
    /// List the built-in detectors
    Patterns(PatternsArgs),
}

/// Detector configuration to try before writing it into `[audit]` of mcp-ledger.toml.
#[derive(Debug, Args)]
struct ConfigArgs {
    /// Disable a built-in pattern (as `pii_disabled`); repeatable
    #[arg(long = "disable", value_name = "NAME")]
    disable: Vec<String>,
    /// Add a custom pattern (as `[[audit.pii_patterns]]`); a group named `v` is the reported span;
    /// repeatable
    #[arg(long = "pattern", value_name = "NAME=REGEX")]
    pattern: Vec<String>,
}

impl ConfigArgs {
    fn scanner(&self) -> Result<Scanner, CliError> {
        let mut custom = Vec::new();
        for p in &self.pattern {
            let (name, regex) = p
                .split_once('=')
                .ok_or_else(|| CliError::Usage(anyhow!("--pattern `{p}` is not NAME=REGEX")))?;
            custom.push((name.to_string(), regex.to_string()));
        }
        let config = ScannerConfig { disabled: self.disable.clone(), custom };
        Scanner::new(&config).map_err(|e| CliError::Usage(e.into()))
    }
}

#[derive(Debug, Args)]
struct ScanArgs {
    /// The file to scan; `-` or nothing reads standard input
    file: Option<PathBuf>,
    /// Treat the input as text even if it parses as JSON
    #[arg(long)]
    text: bool,
    /// Print the findings as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Debug, Args)]
struct EvalArgs {
    /// A corpus file, or a directory whose *.jsonl, *.ndjson and *.json files (at any depth) are
    /// read in name order
    #[arg(long, value_name = "PATH", default_value = "tests/pii_corpus")]
    corpus: PathBuf,
    /// Exit 1 when any pattern's precision or recall is below this
    #[arg(long, value_name = "FRACTION")]
    min: Option<f64>,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    /// How many misses (false positives and negatives) to list, by corpus line; 0 for none
    #[arg(long, value_name = "N", default_value_t = 20)]
    misses: usize,
    /// For the corpus author: print the text of each listed miss. Off by default, since a
    /// corpus may hold real secrets
    #[arg(long)]
    show_values: bool,
    /// Fail on a corpus line that cannot be read, instead of skipping it with a warning
    #[arg(long)]
    strict: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Megabytes of payloads to build and scan per round
    #[arg(long, default_value_t = 32)]
    mb: usize,
    /// Measured rounds; the report gives the median
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seed of the payload generator
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the results as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct PatternsArgs {
    /// Print the list as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

pub async fn run(args: PiiArgs) -> Result<u8, CliError> {
    match args.command {
        PiiCommand::Scan(args) => scan(&args),
        PiiCommand::Eval(args) => evaluate(&args),
        PiiCommand::Bench(args) => bench(&args),
        PiiCommand::Patterns(args) => patterns(&args),
    }
}

fn patterns(args: &PatternsArgs) -> Result<u8, CliError> {
    let scanner = args.config.scanner()?;
    let rows: Vec<(String, &str)> = scanner
        .pattern_names()
        .map(|n| (n.to_string(), pii::builtin_summary(n).unwrap_or("custom pattern")))
        .collect();
    if args.json {
        let list: Vec<Value> = rows.iter().map(|(n, s)| json!({"name": n, "summary": s})).collect();
        println!("{}", Value::Array(list));
    } else {
        for (name, summary) in rows {
            println!("{name:<20} {summary}");
        }
    }
    Ok(exit::OK)
}

// ---------------------------------------------------------------------------------------------
// scan

fn read_input(file: Option<&Path>) -> Result<(String, String), CliError> {
    let contents = match file {
        Some(p) if p != Path::new("-") => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read {} as UTF-8 text", p.display())),
        _ => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map(|_| s)
                .context("cannot read standard input as UTF-8 text")
        }
    }
    .map_err(CliError::Failed)?;
    let name = file.map_or("-".to_string(), |p| p.display().to_string());
    Ok((name, contents))
}

fn scan(args: &ScanArgs) -> Result<u8, CliError> {
    let scanner = args.config.scanner()?;
    let (name, contents) = read_input(args.file.as_deref())?;
    let mut found: Vec<Value> = Vec::new();
    let whole = if args.text { None } else { serde_json::from_str::<Value>(&contents).ok() };
    let lines: Option<Vec<(usize, Value)>> =
        if args.text || whole.is_some() { None } else { json_lines(&contents) };
    let format = if let Some(value) = &whole {
        for f in scanner.scan_json(value) {
            found.push(json!({"pattern": f.pattern, "pointer": f.pointer}));
        }
        "json"
    } else if let Some(lines) = &lines {
        for (line, value) in lines {
            for f in scanner.scan_json(value) {
                found.push(json!({"pattern": f.pattern, "line": line, "pointer": f.pointer}));
            }
        }
        "jsonl"
    } else {
        for m in scanner.scan_text(&contents) {
            let (line, column) = line_column(&contents, m.range.start);
            found.push(json!({
                "pattern": m.pattern, "line": line, "column": column,
                "start": m.range.start, "end": m.range.end,
            }));
        }
        "text"
    };
    if args.json {
        println!("{}", json!({"file": name, "format": format, "findings": found}));
        return Ok(exit::OK);
    }
    for f in &found {
        let pattern = f["pattern"].as_str().unwrap_or_default();
        let place = match format {
            "json" => f["pointer"].as_str().unwrap_or_default().to_string(),
            "jsonl" => format!("line {} {}", f["line"], f["pointer"].as_str().unwrap_or_default()),
            _ => format!(
                "line {} column {} (bytes {}..{})",
                f["line"], f["column"], f["start"], f["end"]
            ),
        };
        println!("{pattern:<20} {place}");
    }
    eprintln!("{}: {} finding(s), read as {format}", name, found.len());
    Ok(exit::OK)
}

/// Every non-empty line as JSON, or `None` if one is not (then the file is text).
fn json_lines(contents: &str) -> Option<Vec<(usize, Value)>> {
    let mut out = Vec::new();
    for (i, line) in contents.lines().enumerate() {
        if !line.trim().is_empty() {
            out.push((i + 1, serde_json::from_str(line).ok()?));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// 1-based line and column (in characters) of byte `pos`.
fn line_column(text: &str, pos: usize) -> (usize, usize) {
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
    (line, column)
}

// ---------------------------------------------------------------------------------------------
// eval

/// Corpus files under `path` (itself, if it is a file), sorted by path.
fn corpus_files(path: &Path) -> Result<Vec<PathBuf>, CliError> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read corpus {}", path.display()))
        .map_err(CliError::CouldNotCheck)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot list corpus directory {}", dir.display()))
            .map_err(CliError::CouldNotCheck)?;
        for entry in entries {
            let p = entry.map_err(|e| CliError::CouldNotCheck(e.into()))?.path();
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
            if p.is_dir() {
                dirs.push(p);
            } else if matches!(ext, "jsonl" | "ndjson" | "json") {
                files.push(p);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(CliError::CouldNotCheck(anyhow!(
            "no *.jsonl, *.ndjson or *.json files in corpus {}",
            path.display()
        )));
    }
    Ok(files)
}

fn evaluate(args: &EvalArgs) -> Result<u8, CliError> {
    let scanner = args.config.scanner()?;
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    for file in corpus_files(&args.corpus)? {
        let contents = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read corpus file {}", file.display()))
            .map_err(CliError::CouldNotCheck)?;
        let parsed = eval::parse(&contents, &file.display().to_string());
        items.extend(parsed.items);
        skipped.extend(parsed.errors);
    }
    if args.strict && !skipped.is_empty() {
        let lines: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        return Err(CliError::CouldNotCheck(anyhow!(
            "unreadable corpus lines:\n{}",
            lines.join("\n")
        )));
    }
    for e in &skipped {
        eprintln!("mcp-ledger: skipped {e}");
    }
    let report = eval::evaluate(&scanner, &items, args.show_values);
    let below = args.min.map(|m| report.below(m)).unwrap_or_default();
    if args.json {
        let patterns: serde_json::Map<String, Value> =
            report.patterns.iter().map(|(p, c)| (p.clone(), counts_json(c))).collect();
        println!(
            "{}",
            json!({
                "corpus": args.corpus.display().to_string(),
                "items": report.items,
                "negatives": report.negatives,
                "skipped_lines": skipped.len(),
                "patterns": patterns,
                "overall": counts_json(&report.overall()),
                "min": args.min,
                "below_min": below,
                "misses": report.misses.iter().take(args.misses).collect::<Vec<_>>(),
                "misses_total": report.misses.len(),
            })
        );
    } else {
        print_report(args, &report, skipped.len());
        if let Some(min) = args.min {
            if below.is_empty() {
                println!("every pattern has precision and recall of at least {min}");
            } else {
                println!("below {min}: {}", below.join(", "));
            }
        }
    }
    Ok(if below.is_empty() { exit::OK } else { exit::FAILURE })
}

fn counts_json(c: &eval::Counts) -> Value {
    json!({
        "tp": c.tp, "fp": c.fp, "fn": c.fn_,
        "precision": c.precision(), "recall": c.recall(), "f1": c.f1(),
    })
}

fn print_report(args: &EvalArgs, report: &eval::Report, skipped: usize) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["pattern", "TP", "FP", "FN", "precision", "recall", "F1"]);
    let row = |name: &str, c: &eval::Counts| {
        let ratio = |x: f64| if c.is_empty() { "-".to_string() } else { format!("{x:.3}") };
        vec![
            Cell::new(name),
            Cell::new(c.tp).set_alignment(CellAlignment::Right),
            Cell::new(c.fp).set_alignment(CellAlignment::Right),
            Cell::new(c.fn_).set_alignment(CellAlignment::Right),
            Cell::new(ratio(c.precision())).set_alignment(CellAlignment::Right),
            Cell::new(ratio(c.recall())).set_alignment(CellAlignment::Right),
            Cell::new(ratio(c.f1())).set_alignment(CellAlignment::Right),
        ]
    };
    for (name, c) in &report.patterns {
        table.add_row(row(name, c));
    }
    table.add_row(row("(overall)", &report.overall()));
    println!("{table}");
    println!(
        "{} items ({} expecting nothing) from {}{}",
        report.items,
        report.negatives,
        args.corpus.display(),
        if skipped > 0 { format!("; {skipped} unreadable line(s) skipped") } else { String::new() }
    );
    if args.misses > 0 && !report.misses.is_empty() {
        println!("misses ({} of {}):", report.misses.len().min(args.misses), report.misses.len());
        for m in report.misses.iter().take(args.misses) {
            let kind = match m.kind {
                eval::MissKind::Fp => "false positive",
                eval::MissKind::Fn => "false negative",
            };
            let value = m.value.as_ref().map(|v| format!("  {v:?}")).unwrap_or_default();
            println!("  {}  {:<18} {kind}, {}{value}", m.location, m.pattern, m.place);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bench

/// CPU time this thread has run, where the system tells (Linux); the machine is shared, so CPU
/// time says more about the scanner than wall time does.
fn thread_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

/// Wall and CPU seconds of one run of `f`.
fn timed(mut f: impl FnMut()) -> (f64, Option<f64>) {
    let cpu = thread_cpu_seconds();
    let wall = Instant::now();
    f();
    let wall = wall.elapsed().as_secs_f64();
    (wall, cpu.zip(thread_cpu_seconds()).map(|(a, b)| b - a))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Median MB/s (by wall time and by CPU time) of `rounds` runs over `bytes` bytes.
fn measure(rounds: usize, bytes: usize, mut f: impl FnMut()) -> (f64, Option<f64>) {
    let mut wall = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..rounds {
        let (w, c) = timed(&mut f);
        wall.push(bytes as f64 / w / 1e6);
        cpu.extend(c.map(|c| bytes as f64 / c / 1e6));
    }
    (median(wall), (cpu.len() == rounds).then(|| median(cpu)))
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|info| {
        info.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
    });
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "load_average": load,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}

fn bench(args: &BenchArgs) -> Result<u8, CliError> {
    if args.mb == 0 || args.rounds == 0 {
        return Err(CliError::Usage(anyhow!("--mb and --rounds must be at least 1")));
    }
    let scanner = Scanner::builtin();
    let machine_before = machine();
    let payloads = workload::build(args.mb << 20, args.seed);
    let total: usize = payloads.iter().map(|p| p.bytes.len()).sum();
    // Warm the detectors' lazy DFAs, as a running proxy's are.
    let mut findings = std::collections::BTreeMap::<String, usize>::new();
    for p in &payloads {
        for f in scanner.scan_json(&p.value) {
            *findings.entry(f.pattern).or_default() += 1;
        }
    }
    let rounds = args.rounds;
    let scan = measure(rounds, total, || {
        for p in &payloads {
            std::hint::black_box(scanner.scan_json(&p.value));
        }
    });
    let parse = measure(rounds, total, || {
        for p in &payloads {
            std::hint::black_box(serde_json::from_slice::<Value>(&p.bytes).ok());
        }
    });
    let parse_scan = measure(rounds, total, || {
        for p in &payloads {
            std::hint::black_box(scanner.scan_json_bytes(&p.bytes).ok());
        }
    });
    let redact = measure(rounds, total, || {
        for p in &payloads {
            std::hint::black_box(scanner.redact_json(&p.value));
        }
    });
    let kinds: Vec<Value> = workload::Kind::ALL
        .iter()
        .map(|&kind| {
            let of_kind: Vec<&workload::Payload> =
                payloads.iter().filter(|p| p.kind == kind).collect();
            let bytes: usize = of_kind.iter().map(|p| p.bytes.len()).sum();
            let (wall, cpu) = measure(rounds, bytes, || {
                for p in &of_kind {
                    std::hint::black_box(scanner.scan_json(&p.value));
                }
            });
            json!({
                "kind": kind.name(), "share": bytes as f64 / total as f64,
                "payloads": of_kind.len(), "scan_mb_s": wall, "scan_mb_s_cpu": cpu,
            })
        })
        .collect();
    let mb = total as f64 / 1e6;
    let finding_count: usize = findings.values().sum();
    let result = json!({
        "payload_bytes": total,
        "payloads": payloads.len(),
        "seed": args.seed,
        "rounds": rounds,
        "findings": finding_count,
        "findings_per_mb": finding_count as f64 / mb,
        "findings_by_pattern": findings,
        "scan_json": {"mb_s": scan.0, "mb_s_cpu": scan.1},
        "parse": {"mb_s": parse.0, "mb_s_cpu": parse.1},
        "parse_and_scan_json": {"mb_s": parse_scan.0, "mb_s_cpu": parse_scan.1},
        "redact_json": {"mb_s": redact.0, "mb_s_cpu": redact.1},
        "scan_time_per_parse_time": parse.0 / scan.0,
        "kinds": kinds,
        "machine_before": machine_before,
        "machine_after": machine(),
    });
    if args.json {
        println!("{result}");
        return Ok(exit::OK);
    }
    let speed = |(wall, cpu): (f64, Option<f64>)| match cpu {
        Some(cpu) => format!("{wall:8.1} MB/s wall {cpu:8.1} MB/s CPU"),
        None => format!("{wall:8.1} MB/s wall"),
    };
    println!(
        "{} payloads, {mb:.1} MB (seed {}), {finding_count} findings ({:.0}/MB), median of {rounds} rounds, one thread",
        payloads.len(),
        args.seed,
        finding_count as f64 / mb
    );
    println!("  scan_json (parsed)        {}", speed(scan));
    println!("  serde_json parse alone    {}", speed(parse));
    println!("  parse + scan_json         {}", speed(parse_scan));
    println!("  redact_json               {}", speed(redact));
    println!("  a scan costs {:.2}x a parse of the same bytes", parse.0 / scan.0);
    println!("  by payload kind (scan_json):");
    for k in &kinds {
        let cpu =
            k["scan_mb_s_cpu"].as_f64().map(|c| format!(" {c:8.1} MB/s CPU")).unwrap_or_default();
        println!(
            "    {:<8} {:>4.0}% of bytes {:8.1} MB/s wall{cpu}",
            k["kind"].as_str().unwrap_or_default(),
            k["share"].as_f64().unwrap_or_default() * 100.0,
            k["scan_mb_s"].as_f64().unwrap_or_default(),
        );
    }
    println!(
        "  machine: {} ({} cores), load average {} before, {} after",
        machine_before["cpu"].as_str().unwrap_or("unknown cpu"),
        machine_before["cores"],
        machine_before["load_average"].as_str().unwrap_or("?"),
        result["machine_after"]["load_average"].as_str().unwrap_or("?"),
    );
    Ok(exit::OK)
}
