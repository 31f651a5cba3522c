//! The labelled PII corpus in `tests/pii_corpus/`: every pattern must reach 0.95 precision and
//! 0.95 recall on it, and the generated part must be what its generator writes today.
//!
//! * `generated.jsonl` comes from `pii_corpus/generate.rs` (seeded). After changing the
//!   generator or the samples it uses, rewrite it with
//!   `PII_CORPUS_WRITE=1 cargo test --test pii_corpus`.
//! * `handwritten.jsonl` and `payloads.jsonl` are written by hand: tricky texts, and JSON
//!   payloads whose findings are checked by pointer.

#[path = "pii_corpus/generate.rs"]
mod generate;

use std::collections::BTreeMap;
use std::path::Path;

use mcp_ledger::pii::Scanner;
use mcp_ledger::pii::eval::{self, Item};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pii_corpus");

fn load_all() -> Vec<Item> {
    let mut files: Vec<_> = std::fs::read_dir(DIR)
        .expect("corpus directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    let mut items = Vec::new();
    for file in files {
        let name = file.file_name().expect("a file name").to_string_lossy().into_owned();
        let parsed = eval::parse(&std::fs::read_to_string(&file).expect("readable corpus"), &name);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        items.extend(parsed.items);
    }
    items
}

#[test]
fn generated_corpus_is_up_to_date() {
    let path = Path::new(DIR).join("generated.jsonl");
    let fresh = generate::corpus();
    if std::env::var_os("PII_CORPUS_WRITE").is_some() {
        std::fs::write(&path, &fresh).expect("write the generated corpus");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "tests/pii_corpus/generated.jsonl differs from its generator; rewrite it with \
         PII_CORPUS_WRITE=1 cargo test --test pii_corpus"
    );
}

#[test]
fn every_pattern_has_positives_and_near_misses() {
    let items = load_all();
    let mut positives: BTreeMap<String, usize> = BTreeMap::new();
    let mut near_misses = 0;
    for item in &items {
        for e in &item.expect {
            *positives.entry(e.pattern.clone()).or_default() += 1;
        }
        near_misses += usize::from(item.expect.is_empty());
    }
    for pattern in generate::PATTERNS {
        let n = positives.get(*pattern).copied().unwrap_or(0);
        assert!(n >= 100, "{pattern}: only {n} positives");
    }
    assert!(near_misses >= generate::PATTERNS.len() * 80, "{near_misses} items expect nothing");
}

#[test]
fn every_pattern_reaches_precision_and_recall_of_0_95() {
    let items = load_all();
    let report = eval::evaluate(&Scanner::builtin(), &items, true);
    let mut table = String::new();
    for (pattern, c) in &report.patterns {
        table.push_str(&format!(
            "{pattern:<20} tp {:>4} fp {:>3} fn {:>3}  precision {:.3} recall {:.3}\n",
            c.tp,
            c.fp,
            c.fn_,
            c.precision(),
            c.recall()
        ));
    }
    // The misses, with the corpus's own (synthetic) values, to fix the detector or the label.
    let misses: Vec<String> = report
        .misses
        .iter()
        .map(|m| format!("{} {} {:?} {} {:?}", m.location, m.pattern, m.kind, m.place, m.value))
        .collect();
    eprintln!("{table}");
    let below = report.below(0.95);
    assert!(below.is_empty(), "below 0.95: {below:?}\n{table}\n{}", misses.join("\n"));
    for pattern in generate::PATTERNS {
        assert!(!report.patterns[*pattern].is_empty(), "{pattern} was never exercised");
    }
}
