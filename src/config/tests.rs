use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::*;

/// The example from the design brief, with a real hash in place of its placeholder.
const DESIGN_EXAMPLE: &str = r#"
[ledger]
url = "postgres://ledger_writer@db.internal/ledger"   # or "sqlite:///var/lib/mcp-ledger/ledger.db"
signing_key = "/etc/mcp-ledger/ledger.key"             # Ed25519, from `mcp-ledger keygen`

[listen]
addr = "127.0.0.1:8931"

[[servers]]
name = "github"                                        # served at /mcp/github
command = ["npx", "-y", "@modelcontextprotocol/server-github"]
env = { GITHUB_TOKEN = "${GITHUB_TOKEN}" }

[[servers]]
name = "crm"
url = "https://crm.internal/mcp"
headers = { Authorization = "Bearer ${CRM_TOKEN}" }

[[agents]]
name = "customer-success-ops"
token_sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

[audit]                                                # the Harness seed's block, same meaning
scan_pii = true
retention_days = 365
retention_max_size_mb = 2048
log_tool_args = true

[policy]
dir = "policies"
default = "allow"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("mcp-ledger.toml"))
}

/// The message of a configuration that must not load.
fn error(text: &str) -> String {
    parse(text).expect_err("the configuration should be rejected").to_string()
}

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> =
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |name| vars.get(name).cloned()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn the_design_example_parses_into_the_documented_shape() {
    let config = parse(DESIGN_EXAMPLE).unwrap();
    assert_eq!(config.ledger.url.as_deref(), Some("postgres://ledger_writer@db.internal/ledger"));
    assert_eq!(config.ledger.signing_key, Some(PathBuf::from("/etc/mcp-ledger/ledger.key")));
    assert_eq!(config.ledger.lock_timeout_ms, 5000);
    assert_eq!(config.ledger.chain, "default");
    assert_eq!(config.listen.addr, "127.0.0.1:8931".parse().unwrap());
    assert_eq!(
        config.servers,
        vec![
            ServerConfig {
                name: "github".into(),
                transport: UpstreamTransport::Stdio {
                    command: vec![
                        "npx".into(),
                        "-y".into(),
                        "@modelcontextprotocol/server-github".into()
                    ],
                    env: map(&[("GITHUB_TOKEN", "${GITHUB_TOKEN}")]),
                    cwd: None,
                },
                shared: false,
                record_methods: None,
                call_timeout_secs: DEFAULT_CALL_TIMEOUT_SECS,
                payloads: None,
                tool_payloads: BTreeMap::new(),
            },
            ServerConfig {
                name: "crm".into(),
                transport: UpstreamTransport::Http {
                    url: "https://crm.internal/mcp".into(),
                    headers: map(&[("Authorization", "Bearer ${CRM_TOKEN}")]),
                },
                shared: false,
                record_methods: None,
                call_timeout_secs: DEFAULT_CALL_TIMEOUT_SECS,
                payloads: None,
                tool_payloads: BTreeMap::new(),
            },
        ]
    );
    assert_eq!(
        config.agents,
        vec![AgentConfig {
            name: "customer-success-ops".into(),
            token_sha256: token_sha256("abc"),
        }]
    );
    assert_eq!(
        config.audit,
        AuditConfig {
            retention_days: Some(365),
            retention_max_size_mb: Some(2048),
            ..AuditConfig::default()
        }
    );
    assert_eq!(
        config.policy,
        PolicyConfig { dir: Some("policies".into()), default: "allow".into() }
    );
    assert_eq!(config.path, Some(PathBuf::from("mcp-ledger.toml")));
    config.validate_for_serve().unwrap();
    assert_eq!(config.warnings(), vec![], "the example takes every secret from ${{VAR}}");
}

#[test]
fn an_empty_file_is_every_default() {
    let config = parse("").unwrap();
    assert_eq!(config, Config { path: Some("mcp-ledger.toml".into()), ..Config::default() });
    assert_eq!(config.listen.addr, "127.0.0.1:8931".parse().unwrap());
    assert_eq!(config.listen.max_body_bytes, 4 * 1024 * 1024);
    assert_eq!(config.listen.max_sessions, 1000);
    assert_eq!(config.listen.session_idle_timeout_secs, 1800);
    assert!(config.listen.allowed_origins.is_empty() && config.listen.allowed_hosts.is_empty());
    assert!(config.audit.scan_pii && config.audit.log_tool_args);
    assert_eq!(config.policy.default, "allow");
    assert_eq!(
        config.validate_for_serve().unwrap_err().to_string(),
        "mcp-ledger.toml: no [[servers]] table; `serve` needs at least one upstream server"
    );
}

#[test]
fn optional_keys_are_read() {
    let config = parse(
        r#"
[ledger]
lock_timeout_ms = 250
chain = "team-a.prod"
[listen]
addr = "0.0.0.0:9000"
allowed_origins = ["https://console.example"]
allowed_hosts = ["proxy.example"]
max_body_bytes = 1024
max_sessions = 5
session_idle_timeout_secs = 60
[[servers]]
name = "fs"
command = ["mcp-fs"]
cwd = "/srv"
shared = true
record_methods = ["resources/read"]
[policy]
default = "hold"
"#,
    )
    .unwrap();
    assert_eq!(config.ledger.lock_timeout_ms, 250);
    assert_eq!(config.ledger.chain, "team-a.prod");
    assert_eq!(
        config.listen,
        ListenConfig {
            addr: "0.0.0.0:9000".parse().unwrap(),
            allowed_origins: vec!["https://console.example".into()],
            allowed_hosts: vec!["proxy.example".into()],
            max_body_bytes: 1024,
            max_sessions: 5,
            session_idle_timeout_secs: 60,
        }
    );
    let server = config.server("fs").unwrap();
    assert!(server.shared);
    assert_eq!(server.record_methods, Some(vec!["resources/read".to_owned()]));
    assert!(
        matches!(&server.transport, UpstreamTransport::Stdio { cwd: Some(cwd), .. } if cwd == Path::new("/srv"))
    );
    assert_eq!(config.policy.default, "hold");
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    assert_eq!(
        error("[ledger]\nurl = \"sqlite://x.db\"\nsigning_keys = \"k\"\n"),
        "mcp-ledger.toml:3:1: unknown field `signing_keys`, expected one of `url`, `signing_key`, `lock_timeout_ms`, `chain`, `checkpoint_every_events`, `checkpoint_every_secs`, `anchor`"
    );
    assert_eq!(
        error("[[servers]]\nname = \"a\"\ncommand = [\"x\"]\n  enviroment = {}\n"),
        "mcp-ledger.toml:4:3: unknown field `enviroment`, expected one of `name`, `command`, `env`, `cwd`, `url`, `headers`, `shared`, `record_methods`, `call_timeout_secs`, `payloads`, `tool_payloads`"
    );
    assert_eq!(
        error("[listen]\n\n[server]\nname = \"a\"\n"),
        "mcp-ledger.toml:3:2: unknown field `server`, expected one of `ledger`, `listen`, `servers`, `agents`, `operators`, `audit`, `policy`, `approvals`, `telemetry`"
    );
    assert!(
        error("[audit]\nscan = true\n").starts_with("mcp-ledger.toml:2:1: unknown field `scan`")
    );
    assert!(
        error("[policy]\ndirectory = \"p\"\n")
            .starts_with("mcp-ledger.toml:2:1: unknown field `directory`")
    );
    assert!(
        error("[[agents]]\nname = \"a\"\ntoken = \"x\"\n")
            .starts_with("mcp-ledger.toml:3:1: unknown field `token`")
    );
}

#[test]
fn type_errors_are_placed_and_never_repeat_the_value() {
    assert_eq!(
        error("[ledger]\nlock_timeout_ms = \"5s\"\n"),
        "mcp-ledger.toml:2:19: invalid type: string, expected u64"
    );
    assert_eq!(
        error("[listen]\naddr = \"localhost\"\n"),
        "mcp-ledger.toml:2:8: invalid socket address syntax"
    );
    assert_eq!(
        error("[listen]\nmax_sessions = -1\n"),
        "mcp-ledger.toml:2:16: invalid value: integer `-1`, expected usize"
    );
    // A token typed where a table belongs must not end up in the message.
    let message = error(
        "[[servers]]\nname = \"crm\"\nurl = \"https://crm\"\nheaders = \"Bearer sk-live-123\"\n",
    );
    assert_eq!(message, "mcp-ledger.toml:4:11: invalid type: string, expected a map");
    assert!(!message.contains("sk-live-123"));
}

#[test]
fn syntax_errors_are_placed() {
    assert_eq!(
        error("[ledger]\nurl = \"sqlite://x.db\n"),
        "mcp-ledger.toml:2:21: invalid basic string, expected `\"`"
    );
    assert!(error("[[servers]\n").starts_with("mcp-ledger.toml:1:"));
}

#[test]
fn a_server_needs_exactly_one_of_command_and_url() {
    let both = "[[servers]]\nname = \"a\"\ncommand = [\"x\"]\n\n[[servers]]\nname = \"crm\"\ncommand = [\"x\"]\nurl = \"https://crm\"\n";
    assert_eq!(
        error(both),
        "mcp-ledger.toml:5:1: server `crm` has both `command` and `url`; give exactly one"
    );
    assert_eq!(
        error("\n[[servers]]\nname = \"crm\"\n"),
        "mcp-ledger.toml:2:1: server `crm` has neither `command` nor `url`; give exactly one"
    );
    assert_eq!(
        error("servers = [\n  { name = \"crm\" },\n]\n"),
        "mcp-ledger.toml:2:3: server `crm` has neither `command` nor `url`; give exactly one"
    );
    assert_eq!(
        error("[[servers]]\ncommand = [\"x\"]\n"),
        "mcp-ledger.toml:1:1: missing field `name`"
    );
}

#[test]
fn settings_of_the_other_transport_are_rejected() {
    assert_eq!(
        error("[[servers]]\nname = \"crm\"\nurl = \"https://crm\"\nenv = { A = \"b\" }\n"),
        "mcp-ledger.toml:4:7: server `crm`: `env` applies only to a `command` server"
    );
    assert_eq!(
        error("[[servers]]\nname = \"crm\"\nurl = \"https://crm\"\ncwd = \"/tmp\"\n"),
        "mcp-ledger.toml:4:7: server `crm`: `cwd` applies only to a `command` server"
    );
    assert_eq!(
        error("[[servers]]\nname = \"gh\"\ncommand = [\"x\"]\nheaders = { A = \"b\" }\n"),
        "mcp-ledger.toml:4:11: server `gh`: `headers` apply only to a `url` server"
    );
}

#[test]
fn commands_urls_and_map_keys_are_checked() {
    assert_eq!(
        error("[[servers]]\nname = \"gh\"\ncommand = []\n"),
        "mcp-ledger.toml:3:11: server `gh`: `command` must start with the program to run"
    );
    let message = error("[[servers]]\nname = \"crm\"\nurl = \"ftp://user:hunter2@crm\"\n");
    assert_eq!(
        message,
        "mcp-ledger.toml:3:7: server `crm`: `url` must be an absolute http:// or https:// url"
    );
    assert!(!message.contains("hunter2"));
    assert_eq!(
        error(
            "[[servers]]\nname = \"crm\"\nurl = \"https://crm\"\nheaders = { \"Bad Header\" = \"x\" }\n"
        ),
        "mcp-ledger.toml:4:13: server `crm`: `Bad Header` is not an http header name"
    );
    assert_eq!(
        error(
            "[[servers]]\nname = \"crm\"\nurl = \"https://crm\"\nheaders = { Authorization = \"${A}\", authorization = \"${B}\" }\n"
        ),
        "mcp-ledger.toml:4:37: server `crm`: header `authorization` repeats `Authorization` (header names ignore case)"
    );
    assert_eq!(
        error("[[servers]]\nname = \"gh\"\ncommand = [\"x\"]\nenv = { \"A=B\" = \"x\" }\n"),
        "mcp-ledger.toml:4:9: server `gh`: `A=B` is not an environment variable name"
    );
}

#[test]
fn server_names_are_path_safe_and_unique() {
    assert_eq!(
        error("[[servers]]\nname = \"my server\"\ncommand = [\"x\"]\n"),
        "mcp-ledger.toml:2:8: server name `my server` is not url-path-safe; use letters, digits, `.`, `_` and `-`"
    );
    assert!(
        error("[[servers]]\nname = \"..\"\ncommand = [\"x\"]\n")
            .contains("server name `..` is not url-path-safe")
    );
    assert!(
        error("[[servers]]\nname = \"a/b\"\ncommand = [\"x\"]\n")
            .contains("server name `a/b` is not url-path-safe")
    );
    assert!(
        error("[[servers]]\nname = \"\"\ncommand = [\"x\"]\n")
            .contains("server name `` is not url-path-safe")
    );
    let duplicate = "[[servers]]\nname = \"github\"\ncommand = [\"x\"]\n\n[[servers]]\nname = \"crm\"\nurl = \"https://crm\"\n\n[[servers]]\nname = \"github\"\nurl = \"https://gh\"\n";
    assert_eq!(
        error(duplicate),
        "mcp-ledger.toml:10:8: duplicate server name `github` (first defined at line 2)"
    );
}

#[test]
fn agents_need_a_hex_hash_and_unique_names_and_tokens() {
    let hash = token_sha256("t1");
    assert_eq!(
        error("[[agents]]\nname = \"ops\"\ntoken_sha256 = \"mcpl_0123\"\n"),
        "mcp-ledger.toml:3:16: agent `ops`: `token_sha256` must be 64 lower-case hex digits, the sha-256 of the token (see `mcp-ledger agents add`)"
    );
    let upper = format!("[[agents]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\n", hash.to_uppercase());
    assert!(error(&upper).contains("`token_sha256` must be 64 lower-case hex digits"));
    let duplicate = format!(
        "[[agents]]\nname = \"ops\"\ntoken_sha256 = \"{hash}\"\n[[agents]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\n",
        token_sha256("t2")
    );
    assert_eq!(
        error(&duplicate),
        "mcp-ledger.toml:5:8: duplicate agent name `ops` (first defined at line 2)"
    );
    let same_token = format!(
        "[[agents]]\nname = \"a\"\ntoken_sha256 = \"{hash}\"\n[[agents]]\nname = \"b\"\ntoken_sha256 = \"{hash}\"\n"
    );
    assert_eq!(
        error(&same_token),
        "mcp-ledger.toml:6:16: agent `b` has the same `token_sha256` as agent `a`"
    );
    assert!(
        error("[[agents]]\nname = \"a b\"\ntoken_sha256 = \"x\"\n")
            .contains("agent name `a b` is not url-path-safe")
    );
}

#[test]
fn counts_policy_and_retention_are_checked() {
    assert_eq!(
        error("[listen]\nmax_sessions = 0\n"),
        "mcp-ledger.toml:2:16: `listen.max_sessions` must be at least 1"
    );
    assert_eq!(
        error("[listen]\nmax_body_bytes = 0\n"),
        "mcp-ledger.toml:2:18: `listen.max_body_bytes` must be at least 1"
    );
    assert_eq!(
        error("[listen]\nsession_idle_timeout_secs = 0\n"),
        "mcp-ledger.toml:2:29: `listen.session_idle_timeout_secs` must be at least 1"
    );
    assert_eq!(
        error("[audit]\nretention_days = 0\n"),
        "mcp-ledger.toml:2:18: `audit.retention_days` must be at least 1"
    );
    assert_eq!(
        error("[audit]\nretention_max_size_mb = 0\n"),
        "mcp-ledger.toml:2:25: `audit.retention_max_size_mb` must be at least 1"
    );
    assert_eq!(
        error("[policy]\ndefault = \"permit\"\n"),
        "mcp-ledger.toml:2:11: `policy.default` must be \"allow\", \"deny\" or \"hold\", not \"permit\""
    );
}

#[test]
fn malformed_variable_references_are_placed() {
    assert_eq!(
        error(
            "[[servers]]\nname = \"crm\"\nurl = \"https://crm\"\nheaders = { Authorization = \"Bearer ${CRM_TOKEN\" }\n"
        ),
        "mcp-ledger.toml:4:29: header Authorization of server crm has an unterminated `${`; write `$${` for a literal `${`"
    );
    assert_eq!(
        error("[ledger]\nchain = \"team/a\"\n"),
        "mcp-ledger.toml:2:9: ledger.chain: a chain name may hold only ASCII letters, digits, `.`, `_` and `-`"
    );
    assert_eq!(
        error("[ledger]\nchain = \"\"\n"),
        "mcp-ledger.toml:2:9: ledger.chain: a chain name has 1 to 64 characters"
    );
    assert_eq!(
        error("[ledger]\nurl = \"postgres://u:${not a name}@db/l\"\n"),
        "mcp-ledger.toml:2:7: ledger.url has a `${…}` that does not hold an environment variable name (letters, digits and `_`)"
    );
    assert!(
        error("[[servers]]\nname = \"gh\"\ncommand = [\"x\"]\nenv = { T = \"${}\" }\n")
            .starts_with("mcp-ledger.toml:4:13: env T of server gh has a `${…}`")
    );
}

#[test]
fn resolve_secrets_substitutes_every_reference() {
    let config = parse(
        r#"
[ledger]
url = "postgres://writer:${PGPASS}@db/ledger"
[[servers]]
name = "github"
command = ["gh-mcp", "${NOT_SUBSTITUTED_IN_COMMANDS}"]
env = { GITHUB_TOKEN = "${GITHUB_TOKEN}", MODE = "$${literal} costs $5" }
[[servers]]
name = "crm"
url = "https://crm.internal/mcp"
headers = { Authorization = "Bearer ${CRM_TOKEN}", X-Team = "${TEAM}-${REGION}" }
"#,
    )
    .unwrap();
    let lookup = env(&[
        ("PGPASS", "pw"),
        ("GITHUB_TOKEN", "ghp_1"),
        ("CRM_TOKEN", "crm-2"),
        ("TEAM", "ops"),
        ("REGION", "eu"),
    ]);
    let resolved = config.resolve_secrets(lookup).unwrap();
    assert_eq!(resolved.ledger.url.as_deref(), Some("postgres://writer:pw@db/ledger"));
    let UpstreamTransport::Stdio { command, env, .. } =
        &resolved.server("github").unwrap().transport
    else {
        panic!("github is a command server");
    };
    assert_eq!(command[1], "${NOT_SUBSTITUTED_IN_COMMANDS}");
    assert_eq!(env, &map(&[("GITHUB_TOKEN", "ghp_1"), ("MODE", "${literal} costs $5")]));
    let UpstreamTransport::Http { headers, .. } = &resolved.server("crm").unwrap().transport else {
        panic!("crm is a url server");
    };
    assert_eq!(headers, &map(&[("Authorization", "Bearer crm-2"), ("X-Team", "ops-eu")]));
    // The original keeps its references.
    assert_eq!(config.ledger.url.as_deref(), Some("postgres://writer:${PGPASS}@db/ledger"));
}

#[test]
fn a_missing_variable_names_the_variable_and_the_server_but_no_value() {
    let config = parse(DESIGN_EXAMPLE).unwrap();
    let error = config.resolve_secrets(env(&[("GITHUB_TOKEN", "ghp_secret")])).unwrap_err();
    let message = error.to_string();
    assert_eq!(
        message,
        "mcp-ledger.toml: environment variable CRM_TOKEN is not set; header Authorization of server crm needs it"
    );
    assert!(!message.contains("ghp_secret"));
    let error = config.resolve_secrets(env(&[])).unwrap_err();
    assert_eq!(
        error.to_string(),
        "mcp-ledger.toml: environment variable GITHUB_TOKEN is not set; env GITHUB_TOKEN of server github needs it"
    );
    let ledger = parse("[ledger]\nurl = \"postgres://w:${PGPASS}@db/l\"\n").unwrap();
    assert_eq!(
        ledger.resolve_secrets(env(&[])).unwrap_err().to_string(),
        "mcp-ledger.toml: environment variable PGPASS is not set; ledger.url needs it"
    );
}

#[test]
fn a_header_that_resolves_to_an_invalid_value_is_an_error_without_the_value() {
    let config = parse(DESIGN_EXAMPLE).unwrap();
    let lookup = env(&[("GITHUB_TOKEN", "g"), ("CRM_TOKEN", "line\nbreak-secret")]);
    let message = config.resolve_secrets(lookup).unwrap_err().to_string();
    assert_eq!(
        message,
        "mcp-ledger.toml: header Authorization of server crm is not a valid http header value once its ${VAR} are substituted"
    );
    assert!(!message.contains("break-secret"));
}

#[test]
fn literal_secrets_are_warned_about() {
    let config = parse(
        r#"
[ledger]
url = "postgres://writer:hunter2@db/ledger"
[[servers]]
name = "github"
command = ["gh-mcp"]
env = { GITHUB_TOKEN = "ghp_abc", NODE_ENV = "production", API_KEY = "${API_KEY}" }
[[servers]]
name = "crm"
url = "https://crm.internal/mcp"
headers = { Authorization = "Bearer abc123", X-Api-Key = "k-1", Accept = "application/json", X-Custom = "Basic dXNlcjpwYXNz", X-Trace = "${TRACE}" }
[[servers]]
name = "legacy"
url = "https://user:pw@legacy.internal/mcp"
"#,
    )
    .unwrap();
    let warnings: Vec<String> = config.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        vec![
            "ledger.url holds a literal secret; use ${VAR}",
            "env GITHUB_TOKEN of server github holds a literal secret; use ${VAR}",
            "header Authorization of server crm holds a literal secret; use ${VAR}",
            "header X-Api-Key of server crm holds a literal secret; use ${VAR}",
            "header X-Custom of server crm holds a literal secret; use ${VAR}",
            "url of server legacy holds a password; move it to a header such as Authorization = \"Basic ${VAR}\"",
        ]
    );
    assert!(warnings.iter().all(|w| !w.contains("abc") && !w.contains("hunter2")));
    let clean = parse("[ledger]\nurl = \"postgres://writer:${PGPASS}@db/l\"\n").unwrap();
    assert_eq!(clean.warnings(), vec![]);
}

#[test]
fn debug_never_prints_env_or_header_values_or_url_passwords() {
    let config = parse(
        r#"
[ledger]
url = "postgres://writer:hunter2@db/ledger"
[[servers]]
name = "github"
command = ["gh-mcp"]
env = { GITHUB_TOKEN = "${GITHUB_TOKEN}" }
[[servers]]
name = "crm"
url = "https://svc:pw-in-url@crm.internal/mcp"
headers = { Authorization = "Bearer ${CRM_TOKEN}" }
"#,
    )
    .unwrap();
    let resolved = config
        .resolve_secrets(env(&[("GITHUB_TOKEN", "ghp_s3cret"), ("CRM_TOKEN", "crm_s3cret")]))
        .unwrap();
    for debug in [format!("{resolved:?}"), format!("{resolved:#?}"), format!("{config:?}")] {
        for secret in ["ghp_s3cret", "crm_s3cret", "hunter2", "pw-in-url", "${CRM_TOKEN}"] {
            assert!(!debug.contains(secret), "{secret} leaked into {debug}");
        }
        assert!(debug.contains("GITHUB_TOKEN") && debug.contains("Authorization"), "{debug}");
        assert!(debug.contains("postgres://writer:<redacted>@db/ledger"), "{debug}");
        assert!(debug.contains("https://svc:<redacted>@crm.internal/mcp"), "{debug}");
        assert!(debug.contains("gh-mcp"), "commands stay visible: {debug}");
    }
}

#[test]
fn load_names_a_missing_file_and_rebases_relative_paths() {
    let missing = Path::new("/nonexistent/mcp-ledger.toml");
    assert_eq!(
        Config::load(missing).unwrap_err().to_string(),
        "no configuration file at /nonexistent/mcp-ledger.toml"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mcp-ledger.toml");
    std::fs::write(
        &path,
        "[ledger]\nsigning_key = \"keys/ledger.key\"\n[policy]\ndir = \"policies\"\n[[servers]]\nname = \"a\"\ncommand = [\"x\"]\ncwd = \"work\"\n[[servers]]\nname = \"b\"\ncommand = [\"x\"]\ncwd = \"/abs\"\n",
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.ledger.signing_key, Some(dir.path().join("keys/ledger.key")));
    assert_eq!(config.policy.dir, Some(dir.path().join("policies")));
    let cwds: Vec<_> = config
        .servers
        .iter()
        .map(|s| match &s.transport {
            UpstreamTransport::Stdio { cwd, .. } => cwd.clone().unwrap(),
            UpstreamTransport::Http { .. } => unreachable!(),
        })
        .collect();
    assert_eq!(cwds, vec![dir.path().join("work"), PathBuf::from("/abs")]);

    std::fs::write(&path, "[listen]\nport = 1\n").unwrap();
    assert_eq!(
        Config::load(&path).unwrap_err().to_string(),
        format!(
            "{}:2:1: unknown field `port`, expected one of `addr`, `allowed_origins`, `allowed_hosts`, `max_body_bytes`, `max_sessions`, `session_idle_timeout_secs`",
            path.display()
        )
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    assert_eq!(
        error("[policy] # é\ndir = \"p\"\n  \"é\" = 1\n"),
        "mcp-ledger.toml:3:3: unknown field `é`, expected `dir` or `default`"
    );
}

#[test]
fn names_and_tokens() {
    for good in ["github", "crm-2", "a.b_c", "A9", "..."] {
        assert!(is_valid_name(good), "{good}");
    }
    for bad in ["", ".", "..", "a b", "a/b", "é", "a%20"] {
        assert!(!is_valid_name(bad), "{bad}");
    }
    assert_eq!(
        token_sha256("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let config = parse(DESIGN_EXAMPLE).unwrap();
    assert_eq!(config.agent_by_token("abc").map(|a| a.name.as_str()), Some("customer-success-ops"));
    assert_eq!(config.agent_by_token("abd"), None);
    assert_eq!(config.agent_by_token(""), None);
}

#[test]
fn substitution_rules() {
    use super::secrets::{TemplateError, substitute};
    let mut lookup = |name: &str| (name == "X").then(|| "1".to_owned());
    assert_eq!(substitute("a${X}b${X}", &mut lookup), Ok("a1b1".into()));
    assert_eq!(substitute("$X $ $$ $${X}", &mut lookup), Ok("$X $ $$ ${X}".into()));
    assert_eq!(substitute("${Y}", &mut lookup), Err(TemplateError::Missing("Y".into())));
    assert_eq!(substitute("${X", &mut lookup), Err(TemplateError::Unterminated));
    assert_eq!(substitute("${1X}", &mut lookup), Err(TemplateError::BadName));
    // A substituted value is not substituted again.
    let mut nested = |_: &str| Some("${X}".to_owned());
    assert_eq!(substitute("${A}", &mut nested), Ok("${X}".into()));
}

#[test]
fn operators_follow_the_agent_rules_and_never_share_an_agents_token() {
    let agent = token_sha256("agent-token");
    let alice = token_sha256("alice-token");
    let config = parse(&format!(
        "[[agents]]\nname = \"bot\"\ntoken_sha256 = \"{agent}\"\n[[operators]]\nname = \"alice\"\ntoken_sha256 = \"{alice}\"\n"
    ))
    .unwrap();
    assert_eq!(
        config.operators,
        vec![OperatorConfig { name: "alice".into(), token_sha256: alice.clone() }]
    );
    assert_eq!(config.operator_by_token("alice-token").unwrap().name, "alice");
    assert!(config.operator_by_token("agent-token").is_none());
    assert!(config.agent_by_token("alice-token").is_none());

    // Operators may come first in the file: the check still sees every agent.
    let shared = format!(
        "[[operators]]\nname = \"alice\"\ntoken_sha256 = \"{agent}\"\n[[agents]]\nname = \"bot\"\ntoken_sha256 = \"{agent}\"\n"
    );
    assert_eq!(
        error(&shared),
        "mcp-ledger.toml:3:16: operator `alice` has the same `token_sha256` as agent `bot`; an agent's token must never decide approvals, so give the operator its own (`mcp-ledger operators add alice`)"
    );
    assert_eq!(
        error("[[operators]]\nname = \"alice\"\ntoken_sha256 = \"nope\"\n"),
        "mcp-ledger.toml:3:16: operator `alice`: `token_sha256` must be 64 lower-case hex digits, the sha-256 of the token (see `mcp-ledger operators add`)"
    );
    let duplicate = format!(
        "[[operators]]\nname = \"a\"\ntoken_sha256 = \"{alice}\"\n[[operators]]\nname = \"a\"\ntoken_sha256 = \"{agent}\"\n"
    );
    assert_eq!(
        error(&duplicate),
        "mcp-ledger.toml:5:8: duplicate operator name `a` (first defined at line 2)"
    );
    let same = format!(
        "[[operators]]\nname = \"a\"\ntoken_sha256 = \"{alice}\"\n[[operators]]\nname = \"b\"\ntoken_sha256 = \"{alice}\"\n"
    );
    assert_eq!(
        error(&same),
        "mcp-ledger.toml:6:16: operator `b` has the same `token_sha256` as operator `a`"
    );
    assert!(
        error("[[operators]]\nname = \"a b\"\ntoken_sha256 = \"x\"\n")
            .contains("operator name `a b` is not url-path-safe")
    );
    assert!(
        error("[[operators]]\nname = \"a\"\ntoken = \"x\"\n").contains("unknown field `token`")
    );
}

#[test]
fn approvals_webhook_settings_are_read_checked_and_resolved() {
    let config = parse("").unwrap();
    assert_eq!(config.approvals, ApprovalsConfig::default());
    assert_eq!(config.approvals.webhook_timeout_ms, 3000);
    assert_eq!(config.approvals.webhook_url, None);

    let config = parse(
        "[approvals]\nwebhook_url = \"https://hooks.example/services/${HOOK_PATH}\"\nwebhook_timeout_ms = 500\nconsole_url = \"https://ledger.internal/console\"\n",
    )
    .unwrap();
    assert_eq!(config.approvals.webhook_timeout_ms, 500);
    assert_eq!(config.approvals.console_url.as_deref(), Some("https://ledger.internal/console"));
    assert_eq!(config.warnings(), vec![]);
    let resolved = config.resolve_secrets(env(&[("HOOK_PATH", "T0/B0/s3cret")])).unwrap();
    assert_eq!(
        resolved.approvals.webhook_url.as_deref(),
        Some("https://hooks.example/services/T0/B0/s3cret")
    );
    assert_eq!(
        config.resolve_secrets(env(&[])).unwrap_err().to_string(),
        "mcp-ledger.toml: environment variable HOOK_PATH is not set; approvals.webhook_url needs it"
    );
    let whole = parse("[approvals]\nwebhook_url = \"${HOOK}\"\n").unwrap();
    assert_eq!(
        whole.resolve_secrets(env(&[("HOOK", "ftp://x")])).unwrap_err().to_string(),
        "mcp-ledger.toml: approvals.webhook_url is not an absolute http:// or https:// url once its ${VAR} are substituted"
    );

    assert_eq!(
        error("[approvals]\nwebhook_url = \"hooks.example/x\"\n"),
        "mcp-ledger.toml:2:15: `approvals.webhook_url` must be an absolute http:// or https:// url"
    );
    assert_eq!(
        error("[approvals]\nconsole_url = \"/console\"\n"),
        "mcp-ledger.toml:2:15: `approvals.console_url` must be an absolute http:// or https:// url"
    );
    assert_eq!(
        error("[approvals]\nwebhook_timeout_ms = 0\n"),
        "mcp-ledger.toml:2:22: `approvals.webhook_timeout_ms` must be at least 1"
    );
    assert!(error("[approvals]\nwebhook_url = \"https://x/${\"\n").contains("unterminated"));
    assert!(error("[approvals]\nurl = \"https://x\"\n").contains("unknown field `url`"));
}

#[test]
fn a_literal_secret_in_the_webhook_url_is_warned_about_and_never_printed() {
    let warning = "approvals.webhook_url holds a literal secret in its query or password; write the url as ${VAR}";
    for url in [
        "https://hooks.example/notify?token=abc",
        "https://hooks.example/notify?channel=ops&sig=xyz",
        "https://hooks.example/notify?k=a1b2c3d4e5f6g7h8i9",
        "https://user:pw@hooks.example/notify",
    ] {
        let config = parse(&format!("[approvals]\nwebhook_url = \"{url}\"\n")).unwrap();
        let warnings: Vec<String> = config.warnings().iter().map(ToString::to_string).collect();
        assert_eq!(warnings, vec![warning.to_owned()], "{url}");
        let debug = format!("{config:?}");
        assert!(debug.contains("https://hooks.example/<redacted>"), "{debug}");
        for secret in ["abc", "xyz", "a1b2c3", ":pw@", "notify"] {
            assert!(!debug.contains(secret), "{secret} leaked into {debug}");
        }
    }
    for url in [
        "https://hooks.example/notify?channel=ops",
        "https://hooks.example/notify?token=${HOOK_TOKEN}",
        "${HOOK_URL}",
    ] {
        let config = parse(&format!("[approvals]\nwebhook_url = \"{url}\"\n")).unwrap();
        assert_eq!(config.warnings(), vec![], "{url}");
    }
}

#[test]
fn pii_scanning_and_storage_modes_are_read() {
    let config = parse(
        r#"
[audit]
payloads = "none"
pii_disabled = ["ip_address"]
payload_retention_days = 30

[[audit.pii_patterns]]
name = "employee_id"
regex = '\bEMP-[0-9]{6}\b'

[[servers]]
name = "crm"
command = ["crm-server"]
payloads = "full"
tool_payloads = { export_customers = "none", send_email = "redacted" }
"#,
    )
    .unwrap();
    assert_eq!(config.audit.payloads, Storage::None);
    assert_eq!(config.audit.pii_disabled, ["ip_address"]);
    assert_eq!(
        config.audit.pii_patterns,
        [("employee_id".to_owned(), r"\bEMP-[0-9]{6}\b".to_owned())]
    );
    assert_eq!(config.audit.payload_retention(), Some(30));
    let scanner = config.audit.scanner_config().expect("scanning is on by default");
    assert_eq!(scanner.disabled, ["ip_address"]);
    let crm = config.server("crm").unwrap();
    assert_eq!(crm.payloads, Some(Storage::Full));
    assert_eq!(crm.tool_payloads["export_customers"], Storage::None);
    assert_eq!(crm.tool_payloads["send_email"], Storage::Redacted);

    let defaults = parse("").unwrap().audit;
    assert_eq!(defaults.payloads, Storage::Redacted, "scanning keeps bodies redacted by default");
    assert_eq!(defaults.payload_retention(), None);
    let off = parse("[audit]\nscan_pii = false\nretention_days = 9\n").unwrap().audit;
    assert_eq!(off.payloads, Storage::Full, "without the scanner nothing can be redacted");
    assert!(off.scanner_config().is_none());
    assert_eq!(off.payload_retention(), Some(9), "bodies follow retention_days by default");
}

#[test]
fn pii_settings_are_checked_and_placed() {
    assert_eq!(
        error("[audit]\npayloads = \"some\"\n"),
        "mcp-ledger.toml:2:12: `audit.payloads` must be \"full\", \"redacted\" or \"none\", not \"some\""
    );
    assert_eq!(
        error("[audit]\nscan_pii = false\npayloads = \"redacted\"\n"),
        "mcp-ledger.toml:3:12: `audit.payloads` is \"redacted\", but `audit.scan_pii` is false: redaction needs the scanner"
    );
    assert!(
        error("[audit]\npii_disabled = [\"emails\"]\n").starts_with(
            "mcp-ledger.toml:2:17: `audit.pii_disabled` names `emails`, which is not a built-in PII pattern (email,"
        )
    );
    assert!(error("[[audit.pii_patterns]]\nname = \"bad\"\nregex = \"(unclosed\"\n").starts_with(
        "mcp-ledger.toml:3:9: `audit.pii_patterns`: custom PII pattern `bad` is not a valid regex"
    ));
    assert!(error("[[audit.pii_patterns]]\nname = \"email\"\nregex = \"x\"\n").starts_with(
        "mcp-ledger.toml:2:8: `audit.pii_patterns`: PII pattern name `email` is defined twice"
    ));
    assert_eq!(
        error("[audit]\nscan_pii = false\n[[audit.pii_patterns]]\nname = \"x\"\nregex = \"x\"\n"),
        "mcp-ledger.toml:2:12: `audit.pii_patterns` are defined but `audit.scan_pii` is false, so they would never run"
    );
    assert_eq!(
        error("[[servers]]\nname = \"s\"\ncommand = [\"x\"]\ntool_payloads = { t = \"all\" }\n"),
        "mcp-ledger.toml:4:23: `servers.s.tool_payloads.t` must be \"full\", \"redacted\" or \"none\", not \"all\""
    );
    assert_eq!(
        error("[audit]\npayload_retention_days = 0\n"),
        "mcp-ledger.toml:2:26: `audit.payload_retention_days` must be at least 1"
    );
}

#[test]
fn telemetry_settings_are_read_with_their_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config.telemetry, TelemetryConfig::default());
    assert!(config.telemetry.metrics, "metrics are served unless turned off");
    assert_eq!(config.telemetry.otlp_endpoint, None);

    let config = parse(
        "[telemetry]\nmetrics = false\notlp_endpoint = \"http://127.0.0.1:4318\"\nprotocol = \"http/json\"\nservice_name = \"proxy-eu\"\n",
    )
    .unwrap();
    assert_eq!(
        config.telemetry,
        TelemetryConfig {
            metrics: false,
            otlp_endpoint: Some("http://127.0.0.1:4318".into()),
            protocol: Some(OtlpProtocol::HttpJson),
            service_name: Some("proxy-eu".into()),
        }
    );
    let config = parse("[telemetry]\nprotocol = \"http/protobuf\"\n").unwrap();
    assert_eq!(config.telemetry.protocol, Some(OtlpProtocol::HttpProtobuf));
}

#[test]
fn telemetry_settings_are_checked_and_placed() {
    assert_eq!(
        error("[telemetry]\notlp_endpoint = \"127.0.0.1:4318\"\n"),
        "mcp-ledger.toml:2:17: `telemetry.otlp_endpoint` must be an absolute http:// or https:// url (the collector's OTLP/HTTP base, e.g. http://127.0.0.1:4318)"
    );
    assert_eq!(
        error("[telemetry]\nprotocol = \"grpc\"\n"),
        "mcp-ledger.toml:2:12: `telemetry.protocol` must be \"http/protobuf\" or \"http/json\", not \"grpc\" (grpc is not built in)"
    );
    assert_eq!(
        error("[telemetry]\nservice_name = \" \"\n"),
        "mcp-ledger.toml:2:16: `telemetry.service_name` must be a non-empty name without control characters"
    );
    assert!(
        error("[telemetry]\nendpoint = \"http://x\"\n")
            .starts_with("mcp-ledger.toml:2:1: unknown field `endpoint`"),
        "unknown keys are errors"
    );
    assert!(error("[telemetry]\nmetrics = \"yes\"\n").starts_with("mcp-ledger.toml:2:11: "));
}

#[test]
fn a_password_in_the_otlp_endpoint_is_not_debug_printed() {
    let config =
        parse("[telemetry]\notlp_endpoint = \"https://user:hunter2@collector.internal\"\n")
            .unwrap();
    assert!(!format!("{config:?}").contains("hunter2"));
}

#[test]
fn the_shipped_example_configuration_loads() {
    let config = parse(include_str!("../../examples/mcp-ledger.toml")).unwrap();
    let names: Vec<&str> = config.servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["filesystem", "github", "crm"]);
    assert_eq!(config.listen.max_sessions, 1000);
}
