//! `mcp-ledger agents`: the agents allowed to connect to `serve`, each with its own bearer token.
//! Only the token's SHA-256 goes into the configuration; the token itself is shown once.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use rand::TryRngCore;
use rand::rngs::OsRng;

use super::{CliError, exit};
use crate::config::{self, Config};

pub use crate::config::token_sha256;

/// What every token starts with, so that a leaked one is easy to recognise and scan for.
pub const TOKEN_PREFIX: &str = "mcpl_";

#[derive(Debug, Args)]
pub struct AgentsArgs {
    #[command(subcommand)]
    command: AgentsCommand,
}

#[derive(Debug, Subcommand)]
enum AgentsCommand {
    /// Create a token for a new agent and print the [[agents]] entry to add to the configuration
    Add(AddArgs),
}

#[derive(Debug, Args)]
struct AddArgs {
    /// The agent's name, as the ledger records it (letters, digits, `.`, `_` and `-`)
    name: String,
    /// Check that this configuration file has no agent of that name yet (the file is not changed)
    #[arg(long, value_name = "F")]
    config: Option<PathBuf>,
    /// Print {"name", "token", "token_sha256"} as JSON
    #[arg(long)]
    json: bool,
}

pub async fn run(args: AgentsArgs) -> Result<u8, CliError> {
    match args.command {
        AgentsCommand::Add(args) => add(args),
    }
}

fn add(args: AddArgs) -> Result<u8, CliError> {
    let agent = Holder {
        noun: "agent",
        table: "agents",
        taken: |config, name| config.agents.iter().any(|agent| agent.name == name),
        next_steps: &[],
    };
    issue(&agent, &args.name, args.config.as_deref(), args.json)
}

/// Who a bearer token is for: an `[[agents]]` or an `[[operators]]` entry.
pub(super) struct Holder {
    pub noun: &'static str,
    pub table: &'static str,
    /// Whether the configuration already has an entry of that name.
    pub taken: fn(&Config, &str) -> bool,
    /// Lines printed after the entry, telling what to do with the token.
    pub next_steps: &'static [&'static str],
}

/// Creates a token for `name` and prints it once, with the configuration entry that holds only
/// its SHA-256. With `config`, refuses a name the file already has (the file is not changed).
pub(super) fn issue(
    holder: &Holder,
    name: &str,
    config: Option<&std::path::Path>,
    json: bool,
) -> Result<u8, CliError> {
    let noun = holder.noun;
    if !config::is_valid_name(name) {
        return Err(CliError::Usage(anyhow!(
            "{noun} name `{name}` is not url-path-safe; use letters, digits, `.`, `_` and `-`"
        )));
    }
    if let Some(path) = config {
        let config = Config::load(path).map_err(|e| CliError::Usage(e.into()))?;
        if (holder.taken)(&config, name) {
            return Err(CliError::Usage(anyhow!(
                "{} already has an {noun} named `{name}`; choose another name, or remove that entry to replace its token",
                path.display()
            )));
        }
    }
    let token = generate_token()
        .map_err(|e| CliError::Failed(anyhow!(e).context("cannot read the os random generator")))?;
    let hash = token_sha256(&token);
    if json {
        let value = serde_json::json!({ "name": name, "token": token, "token_sha256": hash });
        println!("{value}");
    } else {
        println!("Token for {noun} `{name}`. Store this now, it is not saved anywhere:");
        println!();
        println!("    {token}");
        println!();
        println!("Add this to mcp-ledger.toml, then restart `mcp-ledger serve`:");
        println!();
        print!("{}", entry(holder.table, name, &hash));
        if !holder.next_steps.is_empty() {
            println!();
            for line in holder.next_steps {
                println!("{line}");
            }
        }
    }
    Ok(exit::OK)
}

/// A `[[table]]` entry for the configuration. `name` is a valid name, so it needs no escaping.
pub(super) fn entry(table: &str, name: &str, token_sha256: &str) -> String {
    format!("[[{table}]]\nname = \"{name}\"\ntoken_sha256 = \"{token_sha256}\"\n")
}

/// A fresh token: [`TOKEN_PREFIX`] and 32 bytes from the operating system's generator, in hex.
pub fn generate_token() -> Result<String, rand::rand_core::OsError> {
    let mut bytes = [0u8; 32];
    OsRng.try_fill_bytes(&mut bytes)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

#[cfg(test)]
fn agent_entry(name: &str, token_sha256: &str) -> String {
    entry("agents", name, token_sha256)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn add_args(name: &str, config: Option<&Path>) -> AgentsArgs {
        AgentsArgs {
            command: AgentsCommand::Add(AddArgs {
                name: name.to_owned(),
                config: config.map(Path::to_owned),
                json: true,
            }),
        }
    }

    /// The exit code and message of a failed run.
    async fn failure(args: AgentsArgs) -> (u8, String) {
        let error = run(args).await.expect_err("the command should fail");
        (error.exit_code(), format!("{error}"))
    }

    #[test]
    fn tokens_are_prefixed_random_hex() {
        let token = generate_token().unwrap();
        let hex_part = token.strip_prefix("mcpl_").expect("prefixed");
        assert_eq!(hex_part.len(), 64);
        assert!(hex_part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert_ne!(token, generate_token().unwrap());
    }

    #[test]
    fn the_printed_entry_loads_and_authenticates_the_token() {
        let token = generate_token().unwrap();
        let entry = agent_entry("support-bot", &token_sha256(&token));
        let config = Config::from_toml(&entry, Path::new("mcp-ledger.toml")).unwrap();
        assert_eq!(config.agents.len(), 1);
        assert_eq!(config.agent_by_token(&token).unwrap().name, "support-bot");
        assert!(config.agent_by_token(&generate_token().unwrap()).is_none());
    }

    #[tokio::test]
    async fn an_invalid_name_is_a_usage_error() {
        assert_eq!(
            failure(add_args("support bot", None)).await,
            (
                exit::USAGE,
                "agent name `support bot` is not url-path-safe; use letters, digits, `.`, `_` and `-`"
                    .to_owned()
            )
        );
    }

    #[tokio::test]
    async fn a_name_the_config_already_has_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mcp-ledger.toml");
        std::fs::write(&path, agent_entry("ops", &token_sha256("t"))).unwrap();
        let before = std::fs::read_to_string(&path).unwrap();

        let (code, message) = failure(add_args("ops", Some(&path))).await;
        assert_eq!(code, exit::USAGE);
        assert_eq!(
            message,
            format!(
                "{} already has an agent named `ops`; choose another name, or remove that entry to replace its token",
                path.display()
            )
        );
        assert_eq!(run(add_args("ops-2", Some(&path))).await.unwrap(), exit::OK);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before, "the file is never changed");
    }

    #[tokio::test]
    async fn a_missing_or_invalid_config_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        assert_eq!(
            failure(add_args("ops", Some(&path))).await,
            (exit::USAGE, format!("no configuration file at {}", path.display()))
        );
        std::fs::write(&path, "[[agent]]\n").unwrap();
        let (code, message) = failure(add_args("ops", Some(&path))).await;
        assert_eq!(code, exit::USAGE);
        assert!(
            message.starts_with(&format!("{}:1:3: unknown field `agent`", path.display())),
            "{message}"
        );
    }
}
