//! Evidence bundles: `export --bundle` from a real ledger with signed checkpoints, `verify
//! --bundle` with no database, the stdlib Python checker and the OpenSSL signature steps of
//! docs/verification.md — and the verdicts when a bundle is tampered with.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{TestLedger, run_cli};
use mcp_ledger::record::checkpoint::{self, SigningKey};
use mcp_ledger::record::{Draft, Event, EventType};
use mcp_ledger::store::{DEFAULT_CHAIN, Store};
use serde_json::json;

macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() { super::$name(super::TestLedger::sqlite()).await })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                if let Some(ledger) = super::TestLedger::postgres().await {
                    super::$name(ledger).await
                }
            })*
        }
    };
}

both_stores!(a_bundle_verifies_offline_and_tampering_is_caught);

const KEY_NAME: &str = "test.example/ledger";

/// The signature steps of docs/verification.md, run in the bundle directory.
const OPENSSL_STEPS: &str = r#"
set -e
{ printf 'MCowBQYDK2VwAyEA' | base64 -d; cut -d+ -f3- key.vkey | base64 -d | tail -c 32; } > key.der
openssl pkey -pubin -inform DER -in key.der -out key.pem
sed '/^$/,$d' checkpoint.note > body
tail -n 1 checkpoint.note | awk '{print $3}' | base64 -d | tail -c 64 > sig
openssl pkeyutl -verify -pubin -inkey key.pem -rawin -in body -sigfile sig
[ "$(head -n 1 checkpoint.note)" = "$(cut -d+ -f1 key.vkey)" ] && echo "origin matches"
"#;

fn s(path: &Path) -> String {
    path.display().to_string()
}

/// Appends `n` events one at a time, so that each has a timestamp of its own (for `--since`).
async fn append(store: &Arc<dyn Store>, n: usize) -> Vec<Event> {
    let mut events = Vec::new();
    for i in 0..n {
        let draft =
            Draft::new(EventType::ToolCall, json!({"call_id": format!("c{i}"), "amount": i}));
        events.extend(store.append(DEFAULT_CHAIN, &[draft]).await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    events
}

fn verify_bundle(dir: &Path, extra: &[&str]) -> (i32, String) {
    let dir = s(dir);
    let mut args = vec!["verify", "--bundle", &dir];
    args.extend(extra);
    let (code, stdout, stderr) = run_cli(&args);
    (code, format!("{stdout}{stderr}"))
}

fn python(dir: &Path) -> (i32, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/verify_bundle.py");
    let output = std::process::Command::new("python3").arg(script).arg(dir).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

fn copy_bundle(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn edit(path: &Path, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, f(text)).unwrap();
}

async fn a_bundle_verifies_offline_and_tampering_is_caught(ledger: TestLedger) {
    let keydir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_seed(KEY_NAME, [42; 32]).unwrap();
    let other = SigningKey::from_seed(KEY_NAME, [43; 32]).unwrap();
    let private = keydir.path().join("ledger.key");
    let public = keydir.path().join("ledger.key.pub");
    let other_public = keydir.path().join("other.key.pub");
    std::fs::write(&private, key.to_private_key()).unwrap();
    std::fs::write(&public, key.verifying_key().to_string()).unwrap();
    std::fs::write(&other_public, other.verifying_key().to_string()).unwrap();
    let (private, public, other_public) = (s(&private), s(&public), s(&other_public));
    let url = ledger.url_string();

    let store = ledger.open().await;
    let mut events = append(&store, 5).await;
    let (code, out, err) = run_cli(&["checkpoint", "--ledger", &url, "--key", &private]);
    assert_eq!(code, 0, "{out}{err}");
    events.extend(append(&store, 6).await);
    let (code, out, err) = run_cli(&["checkpoint", "--ledger", &url, "--key", &private]);
    assert_eq!(code, 0, "{out}{err}");

    let work = tempfile::tempdir().unwrap();
    let export = |dir: &PathBuf, extra: &[&str]| {
        let d = s(dir);
        let mut args = vec!["export", "--ledger", &url, "--bundle", &d, "--key", &public];
        args.extend(extra);
        let (code, out, err) = run_cli(&args);
        (code, format!("{out}{err}"))
    };

    // The whole chain.
    let full = work.path().join("full");
    let (code, out) = export(&full, &[]);
    assert_eq!(code, 0, "{out}");
    for name in ["events.jsonl", "proofs.jsonl", "checkpoint.note", "key.vkey", "manifest.json"] {
        assert!(full.join(name).exists(), "{name} missing");
    }
    assert!(!full.join("anchor_event.json").exists());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["events"], 11);
    assert_eq!(manifest["tree_size"], 11);
    let (code, out) = verify_bundle(&full, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact: 11 events"), "{out}");
    assert!(out.contains("the bundle's key.vkey"), "{out}");
    let (code, out) = verify_bundle(&full, &["--key", &public, "--json"]);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["status"], "intact");
    assert_eq!(report["key_source"], "--key");
    let (code, out) = python(&full);
    assert_eq!(code, 0, "{out}");

    // The OpenSSL steps of docs/verification.md verify the note's signature.
    let openssl = std::process::Command::new("openssl").arg("version").output().is_ok();
    if openssl {
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(OPENSSL_STEPS)
            .current_dir(&full)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{text}");
        assert!(text.contains("Signature Verified Successfully"), "{text}");
        assert!(text.contains("origin matches"), "{text}");
    } else {
        eprintln!("note: openssl is not installed; the signature steps were not run");
    }

    // A range that starts mid-chain carries the event before it.
    let since = events[3].timestamp.clone();
    let until = events[7].timestamp.clone();
    let range = work.path().join("range");
    let (code, out) = export(&range, &["--since", &since, "--until", &until]);
    assert_eq!(code, 0, "{out}");
    assert!(range.join("anchor_event.json").exists());
    assert_eq!(std::fs::read_to_string(range.join("events.jsonl")).unwrap().lines().count(), 5);
    let (code, out) = verify_bundle(&range, &["--key", &public]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(seqs 4..=8)"), "{out}");
    assert_eq!(python(&range).0, 0);

    // An edited event line.
    let edited = work.path().join("edited");
    copy_bundle(&full, &edited);
    edit(&edited.join("events.jsonl"), |t| t.replacen(r#""amount":2"#, r#""amount":200"#, 1));
    let (code, out) = verify_bundle(&edited, &["--key", &public]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("modified: event {} (seq 3)", events[2].event_id)), "{out}");
    let (code, out) = python(&edited);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&events[2].event_id), "{out}");

    // A proof hash swapped for another.
    let swapped = work.path().join("swapped");
    copy_bundle(&full, &swapped);
    edit(&swapped.join("proofs.jsonl"), |t| {
        let mut lines: Vec<String> = t.lines().map(str::to_owned).collect();
        let mut proof: serde_json::Value = serde_json::from_str(&lines[4]).unwrap();
        proof["proof"][0] = json!(hex_of(&[7; 32]));
        lines[4] = proof.to_string();
        lines.join("\n") + "\n"
    });
    let (code, out) = verify_bundle(&swapped, &["--key", &public]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("bad proof: event {} (seq 5)", events[4].event_id)), "{out}");
    assert_eq!(python(&swapped).0, 1);

    // A note signed by another key (and that key put in the bundle): --key is trusted instead.
    let forged = work.path().join("forged");
    copy_bundle(&full, &forged);
    edit(&forged.join("checkpoint.note"), |note| {
        let body = &note[..=note.rfind("\n\n").unwrap()];
        checkpoint::sign_note(body, &other).unwrap()
    });
    std::fs::write(forged.join("key.vkey"), other.verifying_key().to_string()).unwrap();
    let (code, out) = verify_bundle(&forged, &["--key", &public]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("bad checkpoint"), "{out}");
    assert!(out.contains(&format!("trusted key: {KEY_NAME}+{}", key.fingerprint())), "{out}");
    assert_eq!(verify_bundle(&forged, &["--key", &other_public]).0, 0);
    if openssl {
        // The OpenSSL steps with the real key's vkey reject the forged note.
        std::fs::write(forged.join("key.vkey"), key.verifying_key().to_string()).unwrap();
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(OPENSSL_STEPS)
            .current_dir(&forged)
            .output()
            .unwrap();
        assert!(!output.status.success());
    }

    // A missing file: could not check.
    let broken = work.path().join("broken");
    copy_bundle(&full, &broken);
    std::fs::remove_file(broken.join("proofs.jsonl")).unwrap();
    assert_eq!(verify_bundle(&broken, &[]).0, 2);
    assert_eq!(python(&broken).0, 2);

    // Events newer than the latest checkpoint: the export says how to make one.
    append(&store, 2).await;
    store.close().await;
    let (code, out) = export(&work.path().join("uncovered"), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("mcp-ledger checkpoint --key"), "{out}");
    assert_eq!(std::fs::read_dir(work.path().join("uncovered")).unwrap().count(), 0);
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
