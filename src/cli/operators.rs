//! `mcp-ledger operators`: the people who approve or deny held calls through `serve`'s HTTP API
//! and web console, each with a bearer token. As for agents, only the token's SHA-256 goes into
//! the configuration and the token itself is shown once.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::CliError;
use super::agents::{Holder, issue};

#[derive(Debug, Args)]
pub struct OperatorsArgs {
    #[command(subcommand)]
    command: OperatorsCommand,
}

#[derive(Debug, Subcommand)]
enum OperatorsCommand {
    /// Create a token for a new operator and print the [[operators]] entry to add to the configuration
    Add(AddArgs),
}

#[derive(Debug, Args)]
struct AddArgs {
    /// The operator's name, recorded as `operator/NAME` with every decision (letters, digits,
    /// `.`, `_` and `-`)
    name: String,
    /// Check that this configuration file has no operator of that name yet (the file is not changed)
    #[arg(long, value_name = "F")]
    config: Option<PathBuf>,
    /// Print {"name", "token", "token_sha256"} as JSON
    #[arg(long)]
    json: bool,
}

pub async fn run(args: OperatorsArgs) -> Result<u8, CliError> {
    match args.command {
        OperatorsCommand::Add(args) => add(args),
    }
}

fn add(args: AddArgs) -> Result<u8, CliError> {
    let operator = Holder {
        noun: "operator",
        table: "operators",
        taken: |config, name| config.operators.iter().any(|operator| operator.name == name),
        next_steps: &[
            "Then open http://<listen addr>/console, or use /api/approvals with",
            "`Authorization: Bearer <token>`.",
        ],
    };
    issue(&operator, &args.name, args.config.as_deref(), args.json)
}

#[cfg(test)]
fn operator_entry(name: &str, token_sha256: &str) -> String {
    super::agents::entry("operators", name, token_sha256)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::cli::agents::generate_token;
    use crate::cli::exit;
    use crate::config::{Config, token_sha256};

    fn add_args(name: &str, config: Option<&Path>) -> OperatorsArgs {
        OperatorsArgs {
            command: OperatorsCommand::Add(AddArgs {
                name: name.to_owned(),
                config: config.map(Path::to_owned),
                json: true,
            }),
        }
    }

    async fn failure(args: OperatorsArgs) -> (u8, String) {
        let error = run(args).await.expect_err("the command should fail");
        (error.exit_code(), format!("{error}"))
    }

    #[test]
    fn the_printed_entry_loads_and_authenticates_the_token() {
        let token = generate_token().unwrap();
        let entry = operator_entry("alice", &token_sha256(&token));
        let config = Config::from_toml(&entry, Path::new("mcp-ledger.toml")).unwrap();
        assert_eq!(config.operators.len(), 1);
        assert_eq!(config.operator_by_token(&token).unwrap().name, "alice");
        assert!(config.agent_by_token(&token).is_none(), "an operator is not an agent");
        assert!(config.operator_by_token(&generate_token().unwrap()).is_none());
    }

    #[tokio::test]
    async fn an_invalid_name_is_a_usage_error() {
        assert_eq!(
            failure(add_args("alice smith", None)).await,
            (
                exit::USAGE,
                "operator name `alice smith` is not url-path-safe; use letters, digits, `.`, `_` and `-`"
                    .to_owned()
            )
        );
    }

    #[tokio::test]
    async fn a_name_the_config_already_has_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mcp-ledger.toml");
        // An agent of the same name does not count: agents and operators are separate.
        let text = format!(
            "{}[[agents]]\nname = \"bob\"\ntoken_sha256 = \"{}\"\n",
            operator_entry("alice", &token_sha256("t")),
            token_sha256("u")
        );
        std::fs::write(&path, &text).unwrap();

        let (code, message) = failure(add_args("alice", Some(&path))).await;
        assert_eq!(code, exit::USAGE);
        assert_eq!(
            message,
            format!(
                "{} already has an operator named `alice`; choose another name, or remove that entry to replace its token",
                path.display()
            )
        );
        assert_eq!(run(add_args("bob", Some(&path))).await.unwrap(), exit::OK);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "the file is never changed");
    }
}
