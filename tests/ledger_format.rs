//! `docs/ledger-format.md` checked against the code, so that the auditor's specification cannot
//! drift from what the proxy writes:
//!
//! - the worked example's preimages and hashes are what `Event::canonical_preimage` and
//!   `Event::compute_hash` produce, its payload references are what `Payload::of` produces, and
//!   the second event links to the first;
//! - the documented JCS examples are what mcp-ledger's canonicalizer writes;
//! - the complete Python checker printed in the document is byte for byte `docs/verify_ledger.py`,
//!   and that independent re-implementation agrees with the code: on the ledger `mcp-ledger demo`
//!   writes (intact, and its tampered copy, naming the altered seq), and on events full of awkward
//!   values stored in SQLite and in Postgres (read back with `psql` and `row_to_json`, as the
//!   document tells auditors);
//! - the document's twenty-line Python check gives the same verdicts on the demo ledger.
//!
//! Code blocks are found by the marker in their info string (```` ```json ledger-example:… ````).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{BIN, TestLedger};
use futures::TryStreamExt;
use mcp_ledger::record::verify::verify_all;
use mcp_ledger::record::{Draft, Event, EventType, Payload, canonical_bytes};
use mcp_ledger::store::{DEFAULT_CHAIN, LedgerUrl, SqliteStore, Store, StoreOptions};
use serde_json::{Value, json};

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn spec() -> String {
    std::fs::read_to_string(repo_path("docs/ledger-format.md")).expect("read docs/ledger-format.md")
}

/// The contents of the one fenced code block whose info string contains the word `marker`,
/// without the fences, with the fence's indentation removed, and without a final newline.
fn block(doc: &str, marker: &str) -> String {
    let mut found = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let unindented = line.trim_start_matches(' ');
        let Some(info) = unindented.strip_prefix("```") else {
            continue;
        };
        let indent = line.len() - unindented.len();
        let mut body = Vec::new();
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            let strip = line.len() - line.trim_start_matches(' ').len();
            body.push(&line[strip.min(indent)..]);
        }
        if info.split_whitespace().any(|word| word == marker) {
            found.push(body.join("\n"));
        }
    }
    assert_eq!(
        found.len(),
        1,
        "docs/ledger-format.md must have exactly one code block marked `{marker}`"
    );
    found.pop().expect("one block")
}

fn example_event(doc: &str, name: &str) -> Event {
    let text = block(doc, &format!("ledger-example:{name}-event"));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the `{name}` example is not an events row: {e}\n{text}"))
}

/// Asserts that the documented preimage and hash of example `name` are what the code computes.
fn assert_example_hashes(doc: &str, name: &str) -> Event {
    let event = example_event(doc, name);
    let preimage = block(doc, &format!("ledger-example:{name}-preimage"));
    let hash = block(doc, &format!("ledger-example:{name}-hash"));
    let computed = String::from_utf8(event.canonical_preimage()).expect("canonical JSON is UTF-8");
    assert_eq!(computed, preimage, "documented preimage of the `{name}` example");
    assert_eq!(event.compute_hash(), hash, "documented hash of the `{name}` example");
    assert_eq!(event.hash, hash, "`hash` column of the `{name}` example row");
    event
}

/// Asserts that the documented payload body is canonical and that `event.data[key]` references it.
fn assert_example_payload(doc: &str, marker: &str, event: &Event, key: &str) {
    let text = block(doc, marker);
    let value: Value = serde_json::from_str(&text).expect("payload body is JSON");
    let payload = Payload::of(&value);
    assert_eq!(payload.body, text, "`{marker}` is not canonical JSON");
    assert_eq!(event.data[key], json!(payload.reference), "`{key}` of the example");
    let size_key = key.replace("_ref", "_size");
    assert_eq!(event.data[size_key.as_str()], json!(payload.size()), "`{size_key}`");
}

#[test]
fn the_worked_example_is_what_the_code_computes() {
    let doc = spec();
    let call = assert_example_hashes(&doc, "tool-call");
    let result = assert_example_hashes(&doc, "tool-result");

    assert_eq!(call.event_type, EventType::ToolCall.as_str());
    assert_eq!(result.event_type, EventType::ToolResult.as_str());
    assert_eq!(result.prev_hash, call.hash, "the result must link to the call");
    assert_eq!(result.chain_id, call.chain_id);
    assert_eq!(result.seq, call.seq + 1);
    assert_eq!(result.data["call_id"], call.data["call_id"]);

    assert_example_payload(&doc, "ledger-example:tool-call-input", &call, "input_ref");
    assert_example_payload(&doc, "ledger-example:tool-result-output", &result, "output_ref");
}

/// The documented `input => canonical` pairs.
fn jcs_examples(doc: &str) -> Vec<(String, String)> {
    block(doc, "ledger-example:jcs-values")
        .lines()
        .map(|line| {
            let (input, canonical) = line
                .split_once(" => ")
                .unwrap_or_else(|| panic!("`{line}` is not `input => canonical`"));
            (input.trim().to_owned(), canonical.trim().to_owned())
        })
        .collect()
}

#[test]
fn the_jcs_examples_are_what_the_canonicalizer_writes() {
    let examples = jcs_examples(&spec());
    assert!(examples.len() >= 10, "the JCS examples went missing");
    for (input, canonical) in examples {
        let value: Value = serde_json::from_str(&input).expect("example input is JSON");
        let written =
            String::from_utf8(canonical_bytes(&value).expect("canonical")).expect("UTF-8");
        assert_eq!(written, canonical, "canonical form of {input}");
    }
}

#[test]
fn the_script_in_the_document_is_the_shipped_script() {
    let shipped =
        std::fs::read_to_string(repo_path("docs/verify_ledger.py")).expect("read verify_ledger.py");
    let printed = block(&spec(), "ledger-verify-script");
    assert_eq!(
        format!("{printed}\n"),
        shipped,
        "docs/ledger-format.md and docs/verify_ledger.py must show the same script"
    );
}

/// Runs the Python `script` on `target`, an SQLite file or a `.jsonl` export.
fn run_python(script: &Path, target: &Path) -> Output {
    Command::new("python3")
        .arg(script)
        .arg(target)
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed to run {}: {e}", script.display()))
}

/// Runs the complete checker, `docs/verify_ledger.py`, on `target`.
fn run_checker(target: &Path) -> Output {
    run_python(&repo_path("docs/verify_ledger.py"), target)
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_intact(target: &Path) {
    let output = run_checker(target);
    assert_eq!(
        output.status.code(),
        Some(0),
        "the Python checker rejected {}:\n{}",
        target.display(),
        describe(&output)
    );
}

/// Asserts that the checker calls `target` tampered and names exactly the events `bad`.
fn assert_tampered(target: &Path, bad: &[&Event]) {
    let output = run_checker(target);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "the Python checker missed tampering in {}:\n{}",
        target.display(),
        describe(&output)
    );
    for event in bad {
        let line = format!("chain {} seq {} (event {})", event.chain_id, event.seq, event.event_id);
        assert!(stdout.contains(&line), "the checker did not name {line}:\n{}", describe(&output));
    }
    let named: Vec<String> = bad.iter().map(|e| format!("{}/{}", e.chain_id, e.seq)).collect();
    assert!(
        stdout.contains(&format!("bad seqs (chain/seq): {}", named.join(", "))),
        "the checker named other events than {named:?}:\n{}",
        describe(&output)
    );
}

async fn sqlite_events(path: &Path) -> Vec<Event> {
    let options = StoreOptions { migrate: false, ..Default::default() };
    let store = SqliteStore::open(path, &options).await.expect("open ledger");
    let events: Vec<Event> = store.events().try_collect().await.expect("read events");
    store.close().await;
    events
}

/// Writes `events` as JSON Lines, one row object per line, as `row_to_json` would.
fn write_jsonl(path: &Path, events: &[Event]) {
    let lines: Vec<String> =
        events.iter().map(|e| serde_json::to_string(e).expect("serialise")).collect();
    std::fs::write(path, lines.join("\n") + "\n").expect("write JSON lines");
}

#[tokio::test]
async fn the_python_checker_agrees_on_the_demo_ledger() {
    let dir = tempfile::tempdir().expect("temp dir");
    let demo = Command::new(BIN)
        .arg("demo")
        .arg("--keep")
        .arg(dir.path())
        .env("MCP_LEDGER_LOG", "warn")
        .output()
        .expect("run mcp-ledger demo");
    assert!(demo.status.success(), "mcp-ledger demo failed:\n{}", describe(&demo));

    let real = dir.path().join("demo-ledger.db");
    let tampered = dir.path().join("demo-ledger-tampered.db");
    assert_intact(&real);

    // Which rows the demo altered, found by comparing the two files rather than from its output.
    let original = sqlite_events(&real).await;
    let copy = sqlite_events(&tampered).await;
    assert!(original.len() >= 4, "the demo wrote too few events");
    assert!(verify_all(&original).intact());
    assert_eq!(original.len(), copy.len());
    let altered: Vec<&Event> =
        copy.iter().zip(&original).filter(|(c, o)| c != o).map(|(c, _)| c).collect();
    assert_eq!(altered.len(), 1, "the demo should alter exactly one event");
    assert_tampered(&tampered, &altered);

    // The document's twenty-line version agrees too.
    let short = dir.path().join("short_check.py");
    std::fs::write(&short, block(&spec(), "ledger-verify-short") + "\n").expect("write script");
    let output = run_python(&short, &real);
    assert_eq!(
        output.status.code(),
        Some(0),
        "short check on the real ledger:\n{}",
        describe(&output)
    );
    let output = run_python(&short, &tampered);
    assert_eq!(
        output.status.code(),
        Some(1),
        "short check on the tampered copy:\n{}",
        describe(&output)
    );
    let expected = format!("chain {} seq {}: bad\n", altered[0].chain_id, altered[0].seq);
    assert_eq!(String::from_utf8_lossy(&output.stdout), expected, "short check names the seq");

    // The same events as JSON Lines, the shape the document exports from Postgres.
    let jsonl = dir.path().join("events.jsonl");
    write_jsonl(&jsonl, &original);
    assert_intact(&jsonl);
    write_jsonl(&jsonl, &copy);
    assert_tampered(&jsonl, &altered);
}

/// Events whose `data` holds every documented JCS example, in two chains, some with no session,
/// agent or server (null in the preimage).
fn awkward_drafts() -> Vec<Draft> {
    let mut drafts: Vec<Draft> = jcs_examples(&spec())
        .into_iter()
        .enumerate()
        .map(|(i, (input, _))| {
            let value: Value = serde_json::from_str(&input).expect("example input is JSON");
            let mut draft = Draft::new(EventType::Request, json!({ "case": i, "value": value }));
            if i % 2 == 0 {
                draft.session_id = Some(uuid::Uuid::now_v7().to_string());
                draft.agent = Some("agent-ü".into());
                draft.server = Some("srv/😀".into());
            }
            draft
        })
        .collect();
    drafts.push(Draft::new(
        EventType::SessionEnd,
        json!({ "reason": "tab\there, quote \" and backslash \\ \u{7f}\u{2028}" }),
    ));
    drafts
}

const SECOND_CHAIN: &str = "tenant-b";

/// Appends the awkward events to `ledger` (in two chains) and returns them as stored.
async fn append_awkward(ledger: &TestLedger) -> Vec<Event> {
    let store = ledger.open().await;
    let drafts = awkward_drafts();
    let (first, second) = drafts.split_at(drafts.len() / 2);
    store.append(DEFAULT_CHAIN, first).await.expect("append");
    store.append(SECOND_CHAIN, second).await.expect("append");
    let events: Vec<Event> = store.events().try_collect().await.expect("read events");
    store.close().await;
    assert!(verify_all(&events).intact(), "mcp-ledger's own verifier rejects the fixture");
    events
}

fn tampered_target(events: &[Event]) -> &Event {
    events
        .iter()
        .find(|e| e.chain_id == SECOND_CHAIN && e.seq == 2)
        .expect("the second chain has a second event")
}

#[tokio::test]
async fn the_python_checker_agrees_on_awkward_values_in_sqlite() {
    let ledger = TestLedger::sqlite();
    let events = append_awkward(&ledger).await;
    let path = ledger.sqlite_path().expect("an SQLite ledger");
    assert_intact(&path);

    let target = tampered_target(&events);
    ledger
        .exec_as_owner(&format!(
            "DROP TRIGGER events_refuse_update; \
             UPDATE events SET data = json_set(data, '$.case', 1000) WHERE event_id = '{}'",
            target.event_id
        ))
        .await
        .expect("tamper");
    assert_tampered(&path, &[target]);
}

#[tokio::test]
async fn the_python_checker_agrees_on_awkward_values_read_from_postgres() {
    let Some(ledger) = TestLedger::postgres().await else {
        return;
    };
    let LedgerUrl::Postgres(url) = &ledger.url else {
        unreachable!("a Postgres ledger");
    };
    if Command::new("psql").arg("--version").output().is_err() {
        eprintln!("note: skipping the psql export check: psql is not installed");
        return;
    }
    let events = append_awkward(&ledger).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let jsonl = dir.path().join("events.jsonl");
    // Exactly the export the document gives auditors.
    let export = |jsonl: &Path| {
        let output = Command::new("psql")
            .arg(url)
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg("SELECT row_to_json(e) FROM mcp_ledger.events e ORDER BY chain_id, seq, event_id")
            .env("PGCLIENTENCODING", "UTF8")
            .output()
            .expect("run psql");
        assert!(output.status.success(), "psql failed:\n{}", describe(&output));
        std::fs::write(jsonl, &output.stdout).expect("write export");
    };
    export(&jsonl);
    assert_intact(&jsonl);

    let target = tampered_target(&events);
    ledger
        .exec_as_owner(&format!(
            "ALTER TABLE mcp_ledger.events DISABLE TRIGGER events_refuse_change; \
             UPDATE mcp_ledger.events SET data = jsonb_set(data, '{{case}}', '1000') \
             WHERE event_id = '{}'",
            target.event_id
        ))
        .await
        .expect("tamper");
    export(&jsonl);
    assert_tampered(&jsonl, &[target]);
}
