//! Deterministic benchmark payloads for `mcp-ledger pii bench`: JSON-RPC responses to `tools/call`
//! shaped like what MCP servers return, in a fixed mix by bytes.
//!
//! | kind | share | what it is |
//! |---|---|---|
//! | `prose` | 25% | text content: paragraphs of a support conversation or a document |
//! | `logs` | 20% | text content: application logs (some with client IPs on every line) |
//! | `table` | 15% | text content: a markdown or CSV table of customers and orders |
//! | `records` | 20% | `structuredContent`: nested issue-tracker objects, many short strings |
//! | `code` | 10% | text content: source files and configs |
//! | `media` | 10% | image content (base64 `data`) and a blob resource |
//!
//! Sensitive values (from [`super::samples`]) are sprinkled at a low density: about one per
//! paragraph in ten, in some log lines and table rows, in one config in twenty. The
//! benchmark reports how many findings that gives, so the density is visible.

use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};

use super::samples;

/// One kind of payload; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Prose,
    Logs,
    Table,
    Records,
    Code,
    Media,
}

impl Kind {
    pub const ALL: [Kind; 6] =
        [Kind::Prose, Kind::Logs, Kind::Table, Kind::Records, Kind::Code, Kind::Media];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Prose => "prose",
            Kind::Logs => "logs",
            Kind::Table => "table",
            Kind::Records => "records",
            Kind::Code => "code",
            Kind::Media => "media",
        }
    }

    /// Target share of the workload's bytes.
    pub fn share(self) -> f64 {
        match self {
            Kind::Prose => 0.25,
            Kind::Logs | Kind::Records => 0.20,
            Kind::Table => 0.15,
            Kind::Code | Kind::Media => 0.10,
        }
    }
}

/// One JSON-RPC response, parsed and serialized.
pub struct Payload {
    pub kind: Kind,
    pub value: Value,
    pub bytes: Vec<u8>,
}

/// Payloads of about `target_bytes` in total, the same for the same `seed`.
pub fn build(target_bytes: usize, seed: u64) -> Vec<Payload> {
    let mut rng = samples::rng(seed);
    let mut payloads = Vec::new();
    let mut bytes_by_kind = [0usize; 6];
    let mut total = 0;
    let mut id = 1u64;
    while total < target_bytes {
        // The kind furthest below its share, so the mix holds at any size.
        let (i, kind) = Kind::ALL
            .iter()
            .enumerate()
            .min_by(|(a, ka), (b, kb)| {
                let deficit = |i: usize, k: &Kind| bytes_by_kind[i] as f64 / k.share();
                deficit(*a, ka).total_cmp(&deficit(*b, kb))
            })
            .expect("kinds");
        let result = match kind {
            Kind::Prose => text_result(prose(&mut rng)),
            Kind::Logs => text_result(logs(&mut rng)),
            Kind::Table => text_result(table(&mut rng)),
            Kind::Records => records(&mut rng),
            Kind::Code => text_result(code(&mut rng)),
            Kind::Media => media(&mut rng),
        };
        let value = json!({"jsonrpc": "2.0", "id": id, "result": result});
        id += 1;
        let bytes = serde_json::to_vec(&value).expect("a Value serializes");
        bytes_by_kind[i] += bytes.len();
        total += bytes.len();
        payloads.push(Payload { kind: *kind, value, bytes });
    }
    payloads
}

fn text_result(text: String) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": false})
}

#[rustfmt::skip]
const WORDS: &[&str] = &[
    "the", "customer", "asked", "about", "their", "order", "and", "we", "confirmed", "that", "it",
    "shipped", "yesterday", "from", "warehouse", "in", "a", "new", "package", "with", "tracking",
    "please", "let", "me", "know", "if", "you", "need", "anything", "else", "thanks", "for",
    "waiting", "account", "was", "updated", "invoice", "attached", "payment", "received", "on",
    "schedule", "meeting", "next", "week", "team", "review", "release", "notes", "version",
    "deployment", "failed", "because", "of", "timeout", "retry", "later", "service", "is",
    "healthy", "again", "café", "naïve", "Zürich", "São", "Paulo", "東京", "résumé", "déjà", "vu",
    "total", "amount", "due", "by", "end", "month", "support", "ticket", "escalated", "to",
    "engineering", "priority", "high", "low", "refund", "approved", "pending", "manager",
];

fn sentence(rng: &mut impl Rng) -> String {
    let n = rng.random_range(6..18);
    let mut s: Vec<String> =
        (0..n).map(|_| WORDS.choose(rng).expect("words").to_string()).collect();
    match rng.random_range(0..8) {
        0 => {
            s.push(format!("on 2024-{:02}-{:02}", rng.random_range(1..13), rng.random_range(1..29)))
        }
        1 => s.push(format!("for ${}.{:02}", rng.random_range(5..5000), rng.random_range(0..100))),
        2 => s.push(format!("(order #{})", rng.random_range(100_000..999_999))),
        3 => s.push(format!(
            "in v{}.{}.{}",
            rng.random_range(1..5),
            rng.random_range(0..20),
            rng.random_range(0..10)
        )),
        _ => {}
    }
    let mut out = s.join(" ");
    if let Some(first) = out.get(..1) {
        out = first.to_uppercase() + &out[1..];
    }
    out.push('.');
    out
}

/// A sensitive value as it would be mentioned in prose.
fn mention(rng: &mut impl Rng) -> String {
    match rng.random_range(0..6) {
        0 | 1 => format!("You can reach me at {}.", samples::email(rng)),
        2 => format!("My direct line is {}.", samples::phone_us(rng)),
        3 => format!("The card on file ends differently than {}.", samples::card(rng)),
        4 => format!("Connection came from {}.", samples::ipv4(rng)),
        _ => format!("Wire it to {}.", samples::iban(rng)),
    }
}

fn prose(rng: &mut impl Rng) -> String {
    let mut paragraphs = Vec::new();
    for _ in 0..rng.random_range(3..30) {
        let mut p: Vec<String> = (0..rng.random_range(3..9)).map(|_| sentence(rng)).collect();
        if rng.random_bool(0.1) {
            let at = rng.random_range(0..=p.len());
            p.insert(at, mention(rng));
        }
        paragraphs.push(p.join(" "));
    }
    paragraphs.join("\n\n")
}

fn logs(rng: &mut impl Rng) -> String {
    let access = rng.random_bool(0.3);
    let mut lines = Vec::new();
    for i in 0..rng.random_range(20..300) {
        let ts = format!(
            "2024-05-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            rng.random_range(1..29),
            rng.random_range(0..24),
            rng.random_range(0..60),
            rng.random_range(0..60),
            rng.random_range(0..1000)
        );
        let req = samples::chars(rng, b"0123456789abcdef", 32);
        let path =
            ["/api/v1/orders", "/api/v1/users/me", "/healthz", "/api/v2/search?q=shoes&page=2"]
                .choose(rng)
                .expect("paths");
        let line = if access {
            format!(
                "{} - - [{ts}] \"GET {path} HTTP/1.1\" {} {} \"-\" \"Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0.6367.91\"",
                samples::ipv4(rng),
                [200, 200, 200, 304, 404, 500].choose(rng).expect("codes"),
                rng.random_range(100..90_000)
            )
        } else if rng.random_bool(0.02) {
            format!("{ts} WARN [auth] login failed for user={} attempt={i}", samples::email(rng))
        } else {
            let level =
                ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"].choose(rng).expect("levels");
            format!(
                "{ts} {level} [orders] request_id={req} method=GET path={path} status=200 duration_ms={} build=3.{}.{}",
                rng.random_range(1..900),
                rng.random_range(0..30),
                rng.random_range(0..200)
            )
        };
        lines.push(line);
    }
    lines.join("\n")
}

fn table(rng: &mut impl Rng) -> String {
    let csv = rng.random_bool(0.5);
    let mut rows = vec![if csv {
        "order_id,customer,contact,city,amount,status,date".to_string()
    } else {
        "| order | customer | contact | city | amount | status | date |\n|---|---|---|---|---|---|---|".to_string()
    }];
    for _ in 0..rng.random_range(10..120) {
        let name = format!(
            "{} {}",
            samples::FIRST_NAMES.choose(rng).expect("names"),
            samples::LAST_NAMES.choose(rng).expect("names")
        );
        let contact = match rng.random_range(0..10) {
            0 => samples::email(rng),
            1 => samples::phone_us(rng),
            _ => "—".to_string(),
        };
        let cells = [
            format!("ORD-{}", rng.random_range(100_000..999_999)),
            name,
            contact,
            ["Berlin", "São Paulo", "Austin", "Zürich", "Lagos", "Osaka"]
                .choose(rng)
                .expect("cities")
                .to_string(),
            format!("{}.{:02}", rng.random_range(5..9000), rng.random_range(0..100)),
            ["paid", "refunded", "pending", "shipped"].choose(rng).expect("states").to_string(),
            format!("2024-{:02}-{:02}", rng.random_range(1..13), rng.random_range(1..29)),
        ];
        rows.push(if csv { cells.join(",") } else { format!("| {} |", cells.join(" | ")) });
    }
    rows.join("\n")
}

fn records(rng: &mut impl Rng) -> Value {
    let items: Vec<Value> = (0..rng.random_range(5..60))
        .map(|i| {
            let login = format!("{}{}", samples::FIRST_NAMES.choose(rng).expect("names"), rng.random_range(1..999));
            let mut user = json!({"login": login, "id": rng.random_range(1000..9_999_999), "type": "User", "site_admin": false});
            if rng.random_bool(0.1) {
                user["email"] = Value::String(samples::email(rng));
            }
            let state = *["open", "closed"].choose(rng).expect("states");
            json!({
                "id": rng.random_range(1_000_000..9_999_999),
                "number": i + 1,
                "title": sentence(rng),
                "state": state,
                "labels": [{"name": "bug", "color": "d73a4a"}, {"name": "p2", "color": "0e8a16"}],
                "user": user,
                "body": (0..rng.random_range(1..4)).map(|_| sentence(rng)).collect::<Vec<_>>().join(" "),
                "created_at": format!("2024-0{}-1{}T10:2{}:00Z", rng.random_range(1..10), rng.random_range(0..10), rng.random_range(0..10)),
                "comments": rng.random_range(0..40),
                "sha": samples::chars(rng, b"0123456789abcdef", 40),
                "url": format!("https://tracker.example.com/acme/shop/issues/{}", i + 1),
            })
        })
        .collect();
    let summary = format!("Found {} issues.", items.len());
    json!({
        "content": [{"type": "text", "text": summary}],
        "structuredContent": {"total_count": items.len(), "incomplete_results": false, "items": items},
        "isError": false
    })
}

fn code(rng: &mut impl Rng) -> String {
    let mut lines = vec![
        "use std::collections::HashMap;".to_string(),
        String::new(),
        "/// Loads the settings and connects to the database.".to_string(),
        "pub fn connect(config: &Config) -> Result<Pool, Error> {".to_string(),
    ];
    for i in 0..rng.random_range(20..200) {
        lines.push(match rng.random_range(0..6) {
            0 => format!(
                "    let value_{i} = map.get(\"key_{i}\").copied().unwrap_or({});",
                rng.random_range(0..100)
            ),
            1 => format!(
                "    // retry up to {} times before giving up (see issue #{})",
                rng.random_range(1..9),
                rng.random_range(100..999)
            ),
            2 => format!("    tracing::info!(attempt = {i}, \"connecting to {{}}\", config.url);"),
            3 => format!(
                "    if elapsed > Duration::from_millis({}) {{ return Err(Error::Timeout); }}",
                rng.random_range(10..5000)
            ),
            4 => "    }".to_string(),
            _ => format!(
                "    const VERSION_{i}: &str = \"{}.{}.{}\";",
                rng.random_range(0..9),
                rng.random_range(0..30),
                rng.random_range(0..99)
            ),
        });
    }
    lines.push("}".to_string());
    if rng.random_bool(0.05) {
        lines.push(format!("# .env\nSTRIPE_API_KEY={}", samples::vendor_key(rng)));
    }
    lines.join("\n")
}

fn media(rng: &mut impl Rng) -> Value {
    let (image_len, blob_len) = (rng.random_range(4_000..60_000), rng.random_range(1_000..8_000));
    let image = samples::chars(rng, samples::BASE64, image_len);
    let blob = samples::chars(rng, samples::BASE64, blob_len);
    json!({
        "content": [
            {"type": "text", "text": "Here is the chart you asked for."},
            {"type": "image", "data": image, "mimeType": "image/png"},
            {"type": "resource", "resource": {"uri": "file:///reports/q2.pdf", "mimeType": "application/pdf", "blob": blob}}
        ],
        "isError": false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_mixed() {
        let a = build(300_000, 7);
        let b = build(300_000, 7);
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(&b).all(|(x, y)| x.bytes == y.bytes));
        let total: usize = a.iter().map(|p| p.bytes.len()).sum();
        for kind in Kind::ALL {
            let share = a.iter().filter(|p| p.kind == kind).map(|p| p.bytes.len()).sum::<usize>()
                as f64
                / total as f64;
            assert!((share - kind.share()).abs() < 0.1, "{kind:?} {share}");
        }
    }
}
