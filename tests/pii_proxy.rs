//! PII and secrets crossing the proxy, end to end through `mcp-ledger stdio`: findings are
//! recorded (pattern and pointer, never the value), bodies are kept redacted by default so the
//! ledger never becomes a second copy of what it saw, erasure deletes a body while `verify`
//! stays green, and output rules hold, withhold or redact results that carry a pattern.
//! Both stores; the database is searched byte for byte for every sensitive value sent.

mod common;

use std::path::PathBuf;

use common::stdio_client::LineClient;
use common::{BIN, TestLedger, contains_bytes, run_cli};
use futures::StreamExt;
use mcp_ledger::record::Event;
use serde_json::{Value, json};

const EMAIL: &str = "jane.roe@contoso-mail.com";
const EMAIL_OUT: &str = "helpdesk.team@northwind-support.net";
const CARD: &str = "4242 4242 4242 4242";
const AWS_KEY: &str = "AKIAQ3XWZ5MPLR7TNBVY";
const PRIVATE_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAq7BFUAlYDGhLrXJ1v0QmT3kS\n-----END RSA PRIVATE KEY-----";

fn fixture() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pii_upstream.js")
        .display()
        .to_string()
}

/// `mcp-ledger stdio` in front of the PII upstream, with `extra` flags, initialized.
async fn proxy(ledger: &TestLedger, extra: &[&str]) -> LineClient {
    let mut args: Vec<String> =
        ["stdio", "--ledger", &ledger.url_string(), "--agent", "support-bot", "--server", "crm"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["--".to_owned(), "node".to_owned(), fixture()]);
    let env = [
        ("PII_CARD", CARD.to_owned()),
        ("PII_AWS_KEY", AWS_KEY.to_owned()),
        ("PII_PRIVATE_KEY", PRIVATE_KEY.to_owned()),
        ("PII_EMAIL_OUT", EMAIL_OUT.to_owned()),
    ];
    let mut client = LineClient::spawn_with_env(BIN, &args, &env);
    client.initialize().await;
    client
}

async fn events(ledger: &TestLedger) -> Vec<Event> {
    let store = ledger.open().await;
    let events = store.events().map(|e| e.expect("readable")).collect::<Vec<_>>().await;
    store.close().await;
    events
}

fn of_type<'a>(events: &'a [Event], event_type: &str) -> Vec<&'a Event> {
    events.iter().filter(|e| e.event_type == event_type).collect()
}

fn verify(ledger: &TestLedger) -> (i32, String) {
    let (code, out, err) = run_cli(&["verify", "--ledger", &ledger.url_string()]);
    (code, format!("{out}{err}"))
}

async fn three_findings_at_the_right_pointers_and_no_value_in_the_database(ledger: TestLedger) {
    let mut client = proxy(&ledger, &[]).await;
    let arguments = json!({"customer": {"email": EMAIL, "segment": "gold"}, "limit": 1});
    let reply = client.call_tool("lookup", arguments).await;
    // Transparent: the agent gets exactly what the upstream sent, values included.
    let result = &reply["result"];
    assert_eq!(result["structuredContent"]["customer"]["card"], CARD, "{reply}");
    assert!(result["content"][1]["resource"]["text"].as_str().unwrap().ends_with(AWS_KEY));
    assert_eq!(client.close().await.code(), Some(0));

    let events = events(&ledger).await;
    let mut findings: Vec<(String, String, String)> = of_type(&events, "pii_detected")
        .iter()
        .flat_map(|e| {
            let direction = e.data["direction"].as_str().unwrap().to_owned();
            e.data["findings"].as_array().unwrap().iter().map(move |f| {
                (
                    direction.clone(),
                    f["pattern"].as_str().unwrap().to_owned(),
                    f["pointer"].as_str().unwrap().to_owned(),
                )
            })
        })
        .collect();
    findings.sort();
    let expected = [
        ("input", "email", "/customer/email"),
        ("output", "aws_access_key", "/content/1/resource/text"),
        ("output", "credit_card", "/structuredContent/customer/card"),
    ];
    let expected: Vec<(String, String, String)> =
        expected.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
    assert_eq!(findings, expected);

    // Each finding names its call; the call and result say what was found and how the body is kept.
    let call = of_type(&events, "tool_call")[0];
    let result = of_type(&events, "tool_result")[0];
    for pii in of_type(&events, "pii_detected") {
        assert_eq!(pii.data["call_id"], call.data["call_id"]);
        assert_eq!(pii.data["tool"], "lookup");
    }
    assert_eq!(call.data["input_pii"], json!(["email"]));
    assert_eq!(call.data["input_stored"], "redacted");
    assert_eq!(result.data["output_pii"], json!(["aws_access_key", "credit_card"]));
    assert_eq!(result.data["output_stored"], "redacted");
    let start = of_type(&events, "session_start")[0];
    assert_eq!(start.data["pii"]["scan_pii"], true);
    assert_eq!(start.data["pii"]["payloads"], "redacted");

    // The kept bodies are the redacted ones, and they say what was there.
    let store = ledger.open().await;
    let input = store.payload(call.data["input_stored_ref"].as_str().unwrap()).await.unwrap();
    let input: Value = serde_json::from_str(&input.expect("kept")).unwrap();
    assert_eq!(input["customer"]["email"], "[REDACTED:email]");
    assert_eq!(input["customer"]["segment"], "gold");
    assert!(store.payload(call.data["input_ref"].as_str().unwrap()).await.unwrap().is_none());
    let output = store.payload(result.data["output_stored_ref"].as_str().unwrap()).await.unwrap();
    let output: Value = serde_json::from_str(&output.expect("kept")).unwrap();
    assert_eq!(output["structuredContent"]["customer"]["card"], "[REDACTED:credit_card]");
    assert_eq!(
        output["content"][1]["resource"]["text"],
        "aws_access_key_id = [REDACTED:aws_access_key]"
    );
    store.close().await;

    // The auditors' views: one row per finding; provenance knows where the bodies are.
    let table = |name: &str| {
        if ledger.is_postgres() { format!("mcp_ledger.{name}") } else { name.to_owned() }
    };
    let rows = sql_rows(
        &ledger,
        &format!(
            "SELECT pattern, pointer, direction FROM {} ORDER BY pattern",
            table("pii_findings")
        ),
    )
    .await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let provenance = sql_rows(
        &ledger,
        &format!(
            "SELECT input_body_ref, output_body_ref, input_pii, output_pii FROM {}",
            table("provenance")
        ),
    )
    .await;
    assert_eq!(provenance[0][0], call.data["input_stored_ref"].as_str().unwrap());
    assert_eq!(provenance[0][1], result.data["output_stored_ref"].as_str().unwrap());
    assert!(provenance[0][2].contains("email"), "{provenance:?}");

    // Not one sensitive value anywhere in the database, nor a way to verify it was there.
    let bytes = ledger.stored_bytes();
    for value in [EMAIL, CARD, AWS_KEY, "4242424242424242"] {
        assert!(!contains_bytes(&bytes, value), "the database holds `{value}`");
    }
    let (code, report) = verify(&ledger);
    assert_eq!(code, 0, "{report}");
}

/// Rows of `sql` as text, through the store's own connection type.
async fn sql_rows(ledger: &TestLedger, sql: &str) -> Vec<Vec<String>> {
    use sqlx::{ConnectOptions, Row};
    let text = |value: Option<String>| value.unwrap_or_default();
    match &ledger.url {
        mcp_ledger::store::LedgerUrl::Sqlite(path) => {
            let mut conn =
                sqlx::sqlite::SqliteConnectOptions::new().filename(path).connect().await.unwrap();
            let rows = sqlx::query(sql).fetch_all(&mut conn).await.unwrap();
            rows.iter()
                .map(|row| (0..row.len()).map(|i| text(row.try_get(i).ok().flatten())).collect())
                .collect()
        }
        mcp_ledger::store::LedgerUrl::Postgres(url) => {
            let mut conn: sqlx::PgConnection =
                url.parse::<sqlx::postgres::PgConnectOptions>().unwrap().connect().await.unwrap();
            let rows = sqlx::query(sql).fetch_all(&mut conn).await.unwrap();
            rows.iter()
                .map(|row| (0..row.len()).map(|i| text(row.try_get(i).ok().flatten())).collect())
                .collect()
        }
    }
}

#[tokio::test]
async fn sqlite_three_findings_at_the_right_pointers_and_no_value_in_the_database() {
    three_findings_at_the_right_pointers_and_no_value_in_the_database(TestLedger::sqlite()).await;
}

#[tokio::test]
async fn postgres_three_findings_at_the_right_pointers_and_no_value_in_the_database() {
    let Some(ledger) = TestLedger::postgres().await else { return };
    three_findings_at_the_right_pointers_and_no_value_in_the_database(ledger).await;
}

async fn erasure_deletes_a_body_and_verify_stays_green(ledger: TestLedger) {
    let mut client = proxy(&ledger, &["--payloads", "full"]).await;
    client.call_tool("lookup", json!({"customer": {"email": EMAIL}})).await;
    assert_eq!(client.close().await.code(), Some(0));
    let events = events(&ledger).await;
    let call = of_type(&events, "tool_call")[0];
    assert_eq!(call.data["input_stored"], "full");
    let reference = call.data["input_ref"].as_str().unwrap().to_owned();
    assert!(contains_bytes(&ledger.stored_bytes(), EMAIL), "kept in full before the erasure");

    if ledger.is_postgres() {
        // Deleting a body without recording an erasure is refused, even for the owner.
        let refused = ledger
            .exec_as_owner(&format!(
                "DELETE FROM mcp_ledger.payloads WHERE reference = '{reference}'"
            ))
            .await
            .expect_err("refused");
        assert!(refused.to_string().contains("record an erasure first"), "{refused}");
    }

    let url = ledger.url_string();
    let (code, out, err) = run_cli(&[
        "erase",
        &reference,
        "--reason",
        "GDPR art. 17 request #812",
        "--ledger",
        &url,
        "--operator",
        "dpo",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("erased the body of"), "{out}");
    let store = ledger.open().await;
    assert!(store.payload(&reference).await.unwrap().is_none());
    store.close().await;
    let events = self::events(&ledger).await;
    let erasure = of_type(&events, "erasure");
    assert_eq!(erasure.len(), 1);
    assert_eq!(erasure[0].data["reference"], reference.as_str());
    assert_eq!(erasure[0].data["reason"], "GDPR art. 17 request #812");
    assert_eq!(erasure[0].data["by"], "dpo");
    let (code, report) = verify(&ledger);
    assert_eq!(code, 0, "events hash references, not bodies: {report}");
    assert!(
        !contains_bytes(&ledger.stored_bytes(), EMAIL),
        "the erased body is gone from the files too"
    );

    // Again: nothing to do, said so; an unknown reference is an error naming it.
    let (code, out, _) = run_cli(&["erase", &reference, "--reason", "again", "--ledger", &url]);
    assert_eq!(code, 0);
    assert!(out.contains("already erased"), "{out}");
    let unknown = format!("sha256:{}", "0".repeat(64));
    let (code, _, err) = run_cli(&["erase", &unknown, "--reason", "r", "--ledger", &url]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("no body is stored under {unknown}")), "{err}");
    let (code, _, err) = run_cli(&["erase", "sha256:xyz", "--reason", "r", "--ledger", &url]);
    assert_eq!(code, 64);
    assert!(err.contains("`sha256:xyz` is not a payload reference"), "{err}");
}

#[tokio::test]
async fn sqlite_erasure_deletes_a_body_and_verify_stays_green() {
    erasure_deletes_a_body_and_verify_stays_green(TestLedger::sqlite()).await;
}

#[tokio::test]
async fn postgres_erasure_deletes_a_body_and_verify_stays_green() {
    let Some(ledger) = TestLedger::postgres().await else { return };
    erasure_deletes_a_body_and_verify_stays_green(ledger).await;
}

const OUTPUT_RULES: &str = r#"
[[rule]]
name = "hold-private-keys"
effect = "hold"
output_contains = ["private_key_header"]
reason = "a result carries a private key"
approvers = ["alice"]
expires_after = "5m"

[[rule]]
name = "redact-contacts"
effect = "redact"
tool = "contact"
output_contains = "email"

[[rule]]
name = "no-cards-out"
effect = "deny"
input_contains = "credit_card"
reason = "card numbers are not sent to tools"
"#;

fn policy_dir(dir: &tempfile::TempDir) -> String {
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("pii.toml"), OUTPUT_RULES).unwrap();
    policies.display().to_string()
}

/// The pending approval ids, from `approvals list --json`.
fn pending(url: &str) -> Vec<Value> {
    let (code, out, err) = run_cli(&["approvals", "list", "--json", "--ledger", url]);
    assert_eq!(code, 0, "{err}");
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn wait_for_pending(url: &str) -> Value {
    for _ in 0..100 {
        if let Some(first) = pending(url).into_iter().next() {
            return first;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("nothing was held");
}

#[tokio::test]
async fn a_result_carrying_a_private_key_is_held_until_an_operator_releases_it() {
    let ledger = TestLedger::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let policies = policy_dir(&dir);
    let url = ledger.url_string();
    let mut client = proxy(&ledger, &["--policy", &policies]).await;

    // Held: the call ran, but its result waits; the operator sees it redacted.
    let (id, request) =
        client.request_message("tools/call", json!({"name": "read_key", "arguments": {}}));
    client.send(&request).await;
    let held = wait_for_pending(&url).await;
    let approval_id = held["approval_id"].as_str().unwrap().to_owned();
    assert_eq!(held["rule"], "hold-private-keys");
    let (code, shown, _) = run_cli(&["approvals", "show", &approval_id, "--ledger", &url]);
    assert_eq!(code, 0);
    assert!(
        shown.contains("the call's result") && shown.contains("[REDACTED:private_key_header]"),
        "{shown}"
    );
    assert!(!shown.contains("MIIEowIBAAKCAQEA"), "the key material is not shown: {shown}");
    let (code, out, err) =
        run_cli(&["approvals", "approve", &approval_id, "--operator", "alice", "--ledger", &url]);
    assert_eq!(code, 0, "{out}{err}");
    let reply = client.recv().await;
    assert_eq!(reply["id"], id);
    assert_eq!(
        reply["result"]["content"][0]["text"], PRIVATE_KEY,
        "released as the upstream sent it"
    );

    // Withheld: the operator denies, the agent gets a tool error instead.
    let (id, request) =
        client.request_message("tools/call", json!({"name": "read_key", "arguments": {}}));
    client.send(&request).await;
    let held = wait_for_pending(&url).await;
    let approval_id = held["approval_id"].as_str().unwrap().to_owned();
    let (code, _, err) = run_cli(&[
        "approvals",
        "deny",
        &approval_id,
        "--operator",
        "alice",
        "--reason",
        "keys stay put",
        "--ledger",
        &url,
    ]);
    assert_eq!(code, 0, "{err}");
    let reply = client.recv().await;
    assert_eq!(reply["id"], id);
    assert_eq!(reply["result"]["isError"], true);
    let text = reply["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("withheld by operator alice: keys stay put"), "{text}");
    assert!(!reply.to_string().contains("MIIEowIBAAKCAQEA"));

    // Redacted toward the agent by a `redact` rule.
    let reply = client.call_tool("contact", json!({})).await;
    assert_eq!(reply["result"]["content"][0]["text"], "write to [REDACTED:email] for help");

    // Denied before running: the arguments carry a card number.
    let reply = client.call_tool("ping", json!({"card": CARD})).await;
    assert_eq!(reply["result"]["isError"], true);
    assert!(reply["result"]["content"][0]["text"].as_str().unwrap().contains("no-cards-out"));
    assert_eq!(client.close().await.code(), Some(0));

    let events = events(&ledger).await;
    let results = of_type(&events, "tool_result");
    let outcomes: Vec<(&str, &str)> = results
        .iter()
        .map(|r| (r.data["tool"].as_str().unwrap(), r.data["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcomes,
        [("read_key", "ok"), ("read_key", "withheld"), ("contact", "ok"), ("ping", "denied")]
    );
    assert_eq!(results[0].data["released_by"], "operator/alice");
    assert_eq!(results[0].data["output_decision"]["rule"], "hold-private-keys");
    assert_eq!(results[2].data["delivered"], "redacted");
    assert_eq!(results[2].data["output_decision"]["effect"], "redact");
    let requests = of_type(&events, "approval_requested");
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|r| r.data["output_ref"].is_string()));
    let (code, report) = verify(&ledger);
    assert_eq!(code, 0, "{report}");
}

#[tokio::test]
async fn storage_modes_keep_nothing_or_everything() {
    let ledger = TestLedger::sqlite();
    let mut client = proxy(&ledger, &["--payloads", "none"]).await;
    client.call_tool("lookup", json!({"customer": {"email": EMAIL}})).await;
    client.close().await;
    let events = events(&ledger).await;
    let call = of_type(&events, "tool_call")[0];
    assert_eq!(call.data["input_stored"], "none");
    assert!(call.data["input_size"].as_u64().unwrap() > 0);
    assert_eq!(of_type(&events, "pii_detected").len(), 2, "findings are recorded whatever is kept");
    let count: i64 = {
        use sqlx::ConnectOptions;
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(ledger.sqlite_path().unwrap())
            .connect()
            .await
            .unwrap();
        sqlx::query_scalar("SELECT count(*) FROM payloads").fetch_one(&mut conn).await.unwrap()
    };
    assert_eq!(count, 0);

    let plain = TestLedger::sqlite();
    let mut client = proxy(&plain, &["--no-pii-scan"]).await;
    client.call_tool("lookup", json!({"customer": {"email": EMAIL}})).await;
    client.close().await;
    let events = self::events(&plain).await;
    assert!(of_type(&events, "pii_detected").is_empty());
    assert_eq!(of_type(&events, "tool_call")[0].data["input_stored"], "full");
    assert!(
        contains_bytes(&plain.stored_bytes(), EMAIL),
        "without scanning, bodies are kept as sent"
    );

    let (code, _, err) = run_cli(&[
        "stdio",
        "--no-pii-scan",
        "--payloads",
        "redacted",
        "--ledger",
        &plain.url_string(),
        "--",
        "true",
    ]);
    assert_eq!(code, 64);
    assert!(err.contains("--payloads redacted needs the PII scanner"), "{err}");
}
