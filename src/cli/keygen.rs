//! `mcp-ledger keygen`: creates the Ed25519 key pair that signs the ledger's checkpoints. The
//! private key goes to a file only its owner can read; the public key (a C2SP vkey, which is what
//! auditors pass to `verify --key`) goes next to it as `PATH.pub` and is printed with its
//! fingerprint. Existing files are never overwritten.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use clap::Args;
use rand::TryRngCore;
use rand::rngs::OsRng;

use super::{CliError, exit};
use crate::record::checkpoint::SigningKey;

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The key's name, which is also the origin line of the checkpoints it signs; a schema-less
    /// URL such as `ledger.example.com/prod` keeps it unique (no spaces or `+`)
    #[arg(long, value_name = "ORIGIN", default_value = "mcp-ledger")]
    name: String,
    /// Where to write the private key; the public key goes to PATH.pub
    #[arg(long, value_name = "PATH", default_value = "mcp-ledger.key")]
    out: PathBuf,
    /// Print {"name", "fingerprint", "public_key", "private_key_file", "public_key_file"} as JSON
    #[arg(long)]
    json: bool,
}

pub async fn run(args: KeygenArgs) -> Result<u8, CliError> {
    let mut seed = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| CliError::Failed(anyhow!(e).context("cannot read the os random generator")))?;
    let key = SigningKey::from_seed(&args.name, seed).map_err(|e| CliError::Usage(e.into()))?;
    seed.fill(0);

    let private_path = args.out;
    let public_path = pub_path(&private_path);
    for path in [&private_path, &public_path] {
        if path.symlink_metadata().is_ok() {
            return Err(CliError::Failed(anyhow!(
                "{} already exists; refusing to overwrite a key (choose another --out)",
                path.display()
            )));
        }
    }
    let public_key = key.verifying_key().to_string();
    write_new(&private_path, &key.to_private_key(), true).map_err(CliError::Failed)?;
    if let Err(error) = write_new(&public_path, &public_key, false) {
        // Leave no private key behind whose public half nobody has.
        let _ = fs::remove_file(&private_path);
        return Err(CliError::Failed(error));
    }

    if args.json {
        let value = serde_json::json!({
            "name": key.name(),
            "fingerprint": key.fingerprint(),
            "public_key": public_key,
            "private_key_file": private_path.display().to_string(),
            "public_key_file": public_path.display().to_string(),
        });
        println!("{value}");
    } else {
        println!(
            "Wrote the private key to {} (mode 0600) and the public key to {}.",
            private_path.display(),
            public_path.display()
        );
        println!();
        println!("public key:  {public_key}");
        println!("fingerprint: {}", key.fingerprint());
        println!();
        println!(
            "Point `signing_key` in [ledger] at the private key; give auditors the public key."
        );
    }
    Ok(exit::OK)
}

/// `PATH.pub`, keeping the whole file name (`ledger.key` → `ledger.key.pub`).
fn pub_path(private: &Path) -> PathBuf {
    let mut name = private.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Creates `path` (never replacing a file, even one that appeared since the check) and writes
/// `line` and a newline; a private file is created with mode 0600 from the start.
fn write_new(path: &Path, line: &str, private: bool) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file: File = options.open(path).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => anyhow!(
            "{} already exists; refusing to overwrite a key (choose another --out)",
            path.display()
        ),
        _ => anyhow!(e).context(format!("cannot create {}", path.display())),
    })?;
    let written = file
        .write_all(format!("{line}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()));
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}
