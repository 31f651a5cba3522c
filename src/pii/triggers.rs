//! The one pass over each string: a multi-pattern regex of short *triggers* — something every
//! match of a detector must contain (a run of digits, an `@`, `AKIA`, `eyJ`, the word `key`, …) —
//! and the *windows* around them, which are the only places the detectors then look.
//!
//! Why not one `RegexSet` of the detectors themselves: a set says which detectors match but not
//! where, so each one that does must scan the whole string again; and a set of 20 rich regexes
//! searched for overlapping matches runs at about half the speed of these short triggers.
//!
//! Correctness rests on three properties, which `tests.rs` checks against a full scan:
//! * every match of a rule contains a trigger of one of the rule's families, and triggers do not
//!   hide each other (they are disjoint in shape: digits and separators, `@`, `:`, and literal
//!   prefixes that start with a letter and are too short to contain another trigger's start);
//! * a family's margins cover how far a rule's match can reach from its trigger (the regexes bound
//!   their repetitions where that matters);
//! * window edges are moved outward to a character no match contains (whitespace, quotes,
//!   brackets, `,` `;` `|`), or to the string's ends, so a window never cuts a match in two and
//!   a match never starts or ends at a window edge where it would not in the whole string.

use std::borrow::Cow;
use std::ops::Range;

use regex_automata::meta::Regex;

/// Detector families, as bits: a rule runs in the windows of the families it belongs to.
pub(crate) mod family {
    pub const NUMERIC: u16 = 1 << 0;
    pub const AT: u16 = 1 << 1;
    pub const COLON: u16 = 1 << 2;
    pub const PEM: u16 = 1 << 3;
    pub const AWS_ID: u16 = 1 << 4;
    pub const GITHUB: u16 = 1 << 5;
    pub const JWT: u16 = 1 << 6;
    pub const SLACK: u16 = 1 << 7;
    pub const VENDOR: u16 = 1 << 8;
    pub const KEYWORD: u16 = 1 << 9;
    pub const AWS_CONTEXT: u16 = 1 << 10;
    pub const COUNT: usize = 11;
}

/// One trigger pattern: the families it marks and how far around it their matches can reach.
struct Trigger {
    regex: &'static str,
    family: u16,
    left: usize,
    right: usize,
}

const TRIGGERS: &[Trigger] = &[
    // Digits: a dotted quad, nine digits in a row, 4-4 or 4-6 groups, a 3-3-4 or 3-2-4 group.
    // Every phone number, SSN, card number, IPv4 address and IBAN contains one of these; the
    // margins reach the parts around it that contain spaces (`+1 (`, `GB82 WEST `, the last
    // groups of a card or an IBAN).
    Trigger {
        regex: r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]|[0-9]{9}|[0-9]{4}[ \-][0-9]{4}|[0-9]{4}[ \-][0-9]{6}|[0-9]{3}[ .\-)/]{0,2}[0-9]{2,3}[ .\-]?[0-9]{4}",
        family: family::NUMERIC,
        left: 24,
        right: 32,
    },
    // An address is one unbroken token, which the windows' snapping covers whole.
    Trigger { regex: r"@|%40", family: family::AT, left: 0, right: 0 },
    // `::` next to a hex digit, or four hex groups in a row (a full-form IPv6 address).
    Trigger {
        regex: r"[0-9A-Fa-f]::|::[0-9A-Fa-f]|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:",
        family: family::COLON,
        left: 0,
        right: 0,
    },
    Trigger { regex: r"BEGIN", family: family::PEM, left: 16, right: 96 },
    // An access key id gives an AWS secret up to 300 bytes either side its context.
    Trigger { regex: r"A[KS]IA|ABIA|ACCA|A3T", family: family::AWS_ID, left: 340, right: 380 },
    Trigger { regex: r"gh[pousr]_|github_pat_", family: family::GITHUB, left: 0, right: 0 },
    Trigger { regex: r"eyJ", family: family::JWT, left: 0, right: 0 },
    // A webhook URL's `https://` comes before its trigger.
    Trigger {
        regex: r"xox[abposre]|xapp-|hooks\.slack\.com",
        family: family::SLACK,
        left: 16,
        right: 0,
    },
    Trigger {
        regex: r"[sr]k_live_|[sr]k_test_|sk-|AIza|glpat-|npm_|hf_|SG\.|pypi-|shp(?:at|ca|pa|ss)_|dop_v1_|xkeysib-|key-|SK[0-9a-f]{8}",
        family: family::VENDOR,
        left: 0,
        right: 0,
    },
    // Labels (`api_key=`, `X-Auth-Token:`, `API key is`), `Bearer`, `Authorization`: the margins
    // cover a label's first word and the separator (the regexes bound both); the value is one
    // token.
    Trigger {
        regex: r"(?i-u:key|token|bearer|authorization)",
        family: family::KEYWORD,
        left: 16,
        right: 40,
    },
    // `secret` is a label too; with `aws` it is also the context an AWS secret key needs within
    // the 80 bytes before it.
    Trigger {
        regex: r"(?i-u:secret|aws)",
        family: family::KEYWORD | family::AWS_CONTEXT,
        left: 16,
        right: 80,
    },
];

/// Windows closer than this are merged: one regex call over a few more bytes is cheaper than
/// two calls.
const COALESCE: usize = 16;

/// How far a window edge may move to reach a boundary before it goes to the string's end.
const SNAP_LIMIT: usize = 4096;

/// Characters where window edges may stop. Only whitespace, quotes and backticks occur inside
/// matches — `(415) 555-0132`, `Bearer abc`, `"apiKey": "…"` — and only within the margins of
/// their own trigger, whose window covers them. (`'` is not one: `o'brien@…` is an address.)
fn is_boundary(b: u8) -> bool {
    b.is_ascii_whitespace()
        || matches!(b, b'"' | b'`' | b'<' | b'>' | b'[' | b']' | b'{' | b'}' | b',' | b';' | b'|')
}

pub(crate) struct Triggers {
    regex: Regex,
}

/// The windows of one string, per family, sorted and disjoint.
pub(crate) struct Windows {
    per_family: [Vec<Range<usize>>; family::COUNT],
    /// The families that have at least one window.
    present: u16,
}

impl Windows {
    /// Whether any of `families` has a window.
    pub fn any(&self, families: u16) -> bool {
        self.present & families != 0
    }

    /// The windows of the families in `families`, merged.
    pub fn of(&self, families: u16) -> Cow<'_, [Range<usize>]> {
        let mut lists = (0..family::COUNT)
            .filter(|f| families & self.present & (1 << f) != 0)
            .map(|f| &self.per_family[f]);
        match (lists.next(), lists.next()) {
            (None, _) => Cow::Borrowed(&[]),
            (Some(only), None) => Cow::Borrowed(only),
            (Some(a), Some(b)) => {
                let mut all: Vec<Range<usize>> =
                    a.iter().chain(b).chain(lists.flatten()).cloned().collect();
                all.sort_by_key(|r| r.start);
                let mut out = Vec::with_capacity(all.len());
                for w in all {
                    push_merged(&mut out, w);
                }
                Cow::Owned(out)
            }
        }
    }
}

fn push_merged(list: &mut Vec<Range<usize>>, w: Range<usize>) {
    match list.last_mut() {
        Some(last) if w.start <= last.end + COALESCE => last.end = last.end.max(w.end),
        _ => list.push(w),
    }
}

impl Triggers {
    pub fn new() -> Triggers {
        let regex = Regex::new_many(&TRIGGERS.iter().map(|t| t.regex).collect::<Vec<_>>())
            .expect("trigger regexes compile");
        Triggers { regex }
    }

    /// The windows of `text`.
    pub fn windows(&self, text: &str) -> Windows {
        let mut w = Windows { per_family: Default::default(), present: 0 };
        let mut snap = Snapper { bytes: text.as_bytes(), left: None, right: None };
        for m in self.regex.find_iter(text) {
            let t = &TRIGGERS[m.pattern().as_usize()];
            let start = snap.left(m.start().saturating_sub(t.left));
            let end = snap.right((m.end() + t.right).min(text.len()));
            for f in 0..family::COUNT {
                if t.family & (1 << f) != 0 {
                    push_merged(&mut w.per_family[f], start..end);
                }
            }
            w.present |= t.family;
        }
        w
    }
}

/// Moves window edges outward to boundaries. Remembers the last stretch it scanned in each
/// direction: triggers come in order, and in a long text without boundaries (a minified query
/// string) every edge would otherwise rescan the same few kilobytes.
struct Snapper<'a> {
    bytes: &'a [u8],
    /// `(edge, from)`: no boundary in `edge..from`; `edge` is 0 or follows a boundary.
    left: Option<(usize, usize)>,
    /// `(from, edge)`: no boundary in `from..edge`; `edge` is a boundary or the end.
    right: Option<(usize, usize)>,
}

impl Snapper<'_> {
    /// The nearest position at or before `pos` that follows a boundary character (or 0, when
    /// there is none within `SNAP_LIMIT`).
    fn left(&mut self, pos: usize) -> usize {
        if let Some((edge, from)) = self.left
            && edge <= pos
            && pos <= from
        {
            return edge;
        }
        let floor = pos.saturating_sub(SNAP_LIMIT);
        let edge = (floor..pos).rev().find(|&i| is_boundary(self.bytes[i])).map_or(0, |i| i + 1);
        self.left = Some((edge, pos));
        edge
    }

    /// The nearest boundary character at or after `pos` (or the end, when there is none within
    /// `SNAP_LIMIT`).
    fn right(&mut self, pos: usize) -> usize {
        if let Some((from, edge)) = self.right
            && from <= pos
            && pos <= edge
        {
            return edge;
        }
        let ceil = (pos + SNAP_LIMIT).min(self.bytes.len());
        let edge = (pos..ceil).find(|&i| is_boundary(self.bytes[i])).unwrap_or(self.bytes.len());
        self.right = Some((pos, edge));
        edge
    }
}
