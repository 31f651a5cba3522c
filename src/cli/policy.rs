//! `mcp-ledger policy check [DIR]`: validates a directory of policy files the way the proxy
//! loads it, and names the file, line and problem of everything wrong.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::{CliError, exit};
use crate::policy::{DIGEST_PREFIX_LEN, Effect, PolicyError, PolicySet};

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate every *.toml in DIR; exit 0 when valid, 64 when not (each problem names its file and line)
    Check(CheckArgs),
    /// Replay recorded calls against the policy in DIR and show which decisions would change
    Test(super::policy_test::TestArgs),
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The policy directory (its *.toml files; subdirectories are not loaded)
    #[arg(default_value = "policies")]
    dir: PathBuf,
    /// The effect when no rule matches, as `[policy] default` in mcp-ledger.toml; it is part of the digest
    #[arg(long, value_enum, default_value_t = DefaultEffect::Allow)]
    default: DefaultEffect,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    /// The configuration whose `[audit]` says which PII patterns exist (custom ones, disabled
    /// ones, or none when scanning is off) [default: the built-in patterns]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DefaultEffect {
    Allow,
    Hold,
    Deny,
}

impl From<DefaultEffect> for Effect {
    fn from(effect: DefaultEffect) -> Effect {
        match effect {
            DefaultEffect::Allow => Effect::Allow,
            DefaultEffect::Hold => Effect::Hold,
            DefaultEffect::Deny => Effect::Deny,
        }
    }
}

pub async fn run(args: PolicyArgs) -> Result<u8, CliError> {
    match args.command {
        PolicyCommand::Check(args) => check(&args),
        PolicyCommand::Test(args) => super::policy_test::run(args).await,
    }
}

fn check(args: &CheckArgs) -> Result<u8, CliError> {
    let audit = match &args.config {
        // Only `[audit]` is needed: the file's secrets are not resolved.
        Some(path) => {
            crate::config::Config::load(path).map_err(|e| CliError::Usage(e.into()))?.audit
        }
        None => crate::config::AuditConfig::default(),
    };
    let patterns: Vec<String> = super::configured::scanner(&audit)?
        .iter()
        .flat_map(|s| s.pattern_names().map(str::to_owned))
        .collect();
    let loaded = PolicySet::load_dir(&args.dir, args.default.into())
        .and_then(|set| set.check_pii_patterns(&patterns).map(|()| set));
    match loaded {
        Ok(set) => {
            if args.json {
                println!("{}", ok_json(args, &set));
            } else {
                println!("{}", ok_line(&set));
            }
            Ok(exit::OK)
        }
        Err(error) if args.json => {
            println!("{}", errors_json(args, &error));
            Ok(exit::USAGE)
        }
        Err(error) => {
            let problems = error.problems();
            for problem in &problems {
                eprintln!("{problem}");
            }
            Err(CliError::Usage(anyhow!(
                "{} in the policies at {}",
                count(problems.len(), "problem"),
                args.dir.display()
            )))
        }
    }
}

fn count(n: usize, thing: &str) -> String {
    if n == 1 { format!("1 {thing}") } else { format!("{n} {thing}s") }
}

fn ok_line(set: &PolicySet) -> String {
    format!(
        "ok: {} in {}, digest {}",
        count(set.rule_count(), "rule"),
        count(set.file_count(), "file"),
        &set.digest()[..DIGEST_PREFIX_LEN]
    )
}

fn ok_json(args: &CheckArgs, set: &PolicySet) -> serde_json::Value {
    json!({
        "ok": true,
        "dir": args.dir,
        "files": set.file_count(),
        "rules": set.rule_count(),
        "default": set.default_effect().as_str(),
        "digest": set.digest(),
    })
}

fn errors_json(args: &CheckArgs, error: &PolicyError) -> serde_json::Value {
    let problems: Vec<_> = error
        .problems()
        .into_iter()
        .map(|problem| {
            let (line, column, message) = match problem {
                PolicyError::Invalid { line, column, message, .. } => {
                    (Some(*line), Some(*column), message.clone())
                }
                PolicyError::Unplaced { message, .. } | PolicyError::Read { message, .. } => {
                    (None, None, message.clone())
                }
                PolicyError::Several(_) => unreachable!("problems() flattens"),
            };
            json!({
                "file": problem.path(),
                "line": line,
                "column": column,
                "message": message,
                "error": problem.to_string(),
            })
        })
        .collect();
    json!({ "ok": false, "dir": args.dir, "errors": problems })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &std::path::Path, json: bool) -> CheckArgs {
        CheckArgs { dir: dir.to_owned(), default: DefaultEffect::Allow, json, config: None }
    }

    #[test]
    fn shipped_policies_check() {
        for dir in ["policies", "policies/examples"] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
            let set = PolicySet::load_dir(&dir, Effect::Allow)
                .unwrap_or_else(|e| panic!("{} does not check:\n{e}", dir.display()));
            assert!(ok_line(&set).starts_with("ok: "), "{}", ok_line(&set));
            assert_eq!(check(&args(&dir, false)).expect("valid"), exit::OK);
        }
    }

    #[test]
    fn ok_line_counts_and_prefix() {
        let set = PolicySet::allow_all();
        assert_eq!(
            ok_line(&set),
            format!("ok: 0 rules in 0 files, digest {}", set.digest_prefix())
        );
    }

    #[test]
    fn invalid_directory_is_a_usage_error_with_every_problem_in_json() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("a.toml"), "[[rule]]\nname = \"x\"\neffect = \"maybe\"\n")
            .expect("write");
        std::fs::write(dir.path().join("b.toml"), "[[rule]]\nname = \"y\"\nefect = \"deny\"\n")
            .expect("write");
        let error = check(&args(dir.path(), false)).expect_err("invalid");
        assert!(matches!(error, CliError::Usage(_)));
        assert_eq!(
            error.to_string(),
            format!("2 problems in the policies at {}", dir.path().display())
        );

        assert_eq!(check(&args(dir.path(), true)).expect("json reports"), exit::USAGE);
        let error = PolicySet::load_dir(dir.path(), Effect::Allow).expect_err("invalid");
        let report = errors_json(&args(dir.path(), true), &error);
        assert_eq!(report["ok"], false);
        let errors = report["errors"].as_array().expect("errors");
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0]["line"], 3);
        assert_eq!(errors[0]["column"], 10);
        assert!(errors[0]["file"].as_str().expect("file").ends_with("a.toml"));
        assert!(errors[1]["message"].as_str().expect("message").contains("unknown field `efect`"));
    }

    #[test]
    fn missing_directory_is_a_usage_error() {
        let error = check(&args(std::path::Path::new("/nonexistent/policies"), false))
            .expect_err("no such directory");
        assert!(matches!(error, CliError::Usage(_)));
    }
}
