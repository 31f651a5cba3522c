//! `mcp-ledger keygen`, run as a user runs it: the private key file is the owner's alone, nothing
//! is ever overwritten, and the public key it writes verifies checkpoints signed with the private
//! key.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use mcp_ledger::record::checkpoint::{self, Checkpoint, CheckpointError, SigningKey, VerifyingKey};
use mcp_ledger::record::merkle::{CompactTree, leaf_hash};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mcp-ledger");

fn keygen(args: &[&str]) -> Output {
    Command::new(BIN).arg("keygen").args(args).output().expect("run mcp-ledger keygen")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn writes_an_owner_only_private_key_and_a_public_key_that_verifies_its_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ledger.key");
    let output =
        keygen(&["--name", "ledger.example.com/prod", "--out", out.to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed: Value = serde_json::from_str(&stdout(&output)).unwrap();

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "private key mode {mode:o}");
    }

    let signer = SigningKey::from_private_key(&fs::read_to_string(&out).unwrap()).unwrap();
    let public_file = dir.path().join("ledger.key.pub");
    let public_text = fs::read_to_string(&public_file).unwrap();
    let verifier = VerifyingKey::from_vkey(&public_text).unwrap();
    assert_eq!(public_text, format!("{verifier}\n"));
    assert_eq!(verifier, signer.verifying_key());
    assert_eq!(signer.name(), "ledger.example.com/prod");

    assert_eq!(printed["name"], "ledger.example.com/prod");
    assert_eq!(printed["public_key"], verifier.to_string());
    assert_eq!(printed["fingerprint"], verifier.fingerprint());
    assert_eq!(printed["private_key_file"], out.to_str().unwrap());
    assert_eq!(printed["public_key_file"], public_file.to_str().unwrap());
    assert!(!stdout(&output).contains("PRIVATE"), "the private key is never printed");

    let tree = CompactTree::from_leaves(&[leaf_hash(b"one"), leaf_hash(b"two")]);
    let checkpoint = Checkpoint::of_tree(signer.name(), &tree).unwrap();
    let note = checkpoint::sign(&checkpoint, &signer);
    assert_eq!(checkpoint::verify(&note, std::slice::from_ref(&verifier)), Ok(checkpoint));
    let forged = note.replacen("\n2\n", "\n3\n", 1);
    assert!(matches!(
        checkpoint::verify(&forged, &[verifier]),
        Err(CheckpointError::BadSignature { .. })
    ));
}

#[test]
fn refuses_to_overwrite_either_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mcp-ledger.key");
    let out_arg = out.to_str().unwrap();
    let first = keygen(&["--out", out_arg]);
    assert!(first.status.success(), "{}", stderr(&first));
    let private = fs::read(&out).unwrap();
    let public = fs::read(dir.path().join("mcp-ledger.key.pub")).unwrap();

    let second = keygen(&["--out", out_arg]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("already exists; refusing to overwrite"),
        "{}",
        stderr(&second)
    );
    assert_eq!(fs::read(&out).unwrap(), private);
    assert_eq!(fs::read(dir.path().join("mcp-ledger.key.pub")).unwrap(), public);

    // Only the .pub is in the way: nothing is written at all.
    let lone = dir.path().join("lone.key");
    fs::write(dir.path().join("lone.key.pub"), "someone else's key\n").unwrap();
    let third = keygen(&["--out", lone.to_str().unwrap()]);
    assert_eq!(third.status.code(), Some(1));
    assert!(!Path::new(&lone).exists());
    assert_eq!(
        fs::read_to_string(dir.path().join("lone.key.pub")).unwrap(),
        "someone else's key\n"
    );
}

#[test]
fn prints_the_public_key_and_fingerprint_and_defaults_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k");
    let output = keygen(&["--out", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let verifier =
        VerifyingKey::from_vkey(&fs::read_to_string(dir.path().join("k.pub")).unwrap()).unwrap();
    assert_eq!(verifier.name(), "mcp-ledger");
    let text = stdout(&output);
    assert!(text.contains(&format!("public key:  {verifier}")), "{text}");
    assert!(text.contains(&format!("fingerprint: {}", verifier.fingerprint())), "{text}");
    assert!(!text.contains("PRIVATE"), "{text}");
}

#[test]
fn rejects_a_name_that_cannot_be_a_key_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k");
    for name in ["has space", "has+plus", ""] {
        let output = keygen(&["--name", name, "--out", out.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(64), "{name:?}");
        assert!(stderr(&output).contains("invalid key name"), "{}", stderr(&output));
        assert!(!out.exists());
    }
}
