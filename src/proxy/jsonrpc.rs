//! Just enough JSON-RPC 2.0 to route a message: its kind, id and method, borrowed from the
//! original bytes so that what is forwarded is exactly what arrived.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The routing fields of one JSON-RPC message. Every other field is left in the original bytes.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub error: Option<&'a RawValue>,
}

/// What a message is, as far as routing cares.
#[derive(Debug)]
pub enum Kind<'a> {
    Request {
        id: &'a RawValue,
        method: &'a str,
    },
    Notification {
        method: &'a str,
    },
    Response {
        id: &'a RawValue,
    },
    /// Not something routing understands (invalid JSON-RPC): forwarded untouched, so that the
    /// receiver answers it exactly as it would without the proxy.
    Other,
}

impl<'a> Envelope<'a> {
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn kind(&'a self) -> Kind<'a> {
        match (&self.method, self.id) {
            (Some(method), Some(id)) => Kind::Request { id, method },
            (Some(method), None) => Kind::Notification { method },
            (None, Some(id)) if self.result.is_some() || self.error.is_some() => {
                Kind::Response { id }
            }
            _ => Kind::Other,
        }
    }
}

/// A key under which an id is matched with its response: the canonical form of the id, so that
/// `1` and `1.0` (which a JavaScript peer may echo back for each other) are the same request.
pub fn id_key(id: &RawValue) -> String {
    serde_json::from_str::<serde_json::Value>(id.get())
        .ok()
        .map(|v| crate::record::canonical_value_bytes(&v))
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| id.get().to_owned())
}

/// A JSON-RPC error response for `id`, as one line.
pub fn error_response(id: &RawValue, code: i64, message: &str, reason: &str) -> Vec<u8> {
    let mut line = format!(
        r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":{code},"message":{},"data":{{"mcp_ledger":{}}}}}}}"#,
        id.get(),
        serde_json::Value::from(message),
        serde_json::Value::from(reason),
    )
    .into_bytes();
    line.push(b'\n');
    line
}

/// Splits a line that holds a JSON-RPC batch (an array) into its members.
pub fn batch_members(bytes: &[u8]) -> Option<Vec<&RawValue>> {
    let trimmed = bytes.trim_ascii_start();
    if !trimmed.starts_with(b"[") {
        return None;
    }
    serde_json::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_told_apart() {
        let request = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x"}}"#;
        let env = Envelope::parse(request).unwrap();
        assert!(matches!(env.kind(), Kind::Request { method: "tools/call", .. }));
        assert_eq!(env.params.unwrap().get(), r#"{"name":"x"}"#);

        let note = br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#;
        assert!(matches!(Envelope::parse(note).unwrap().kind(), Kind::Notification { .. }));

        let response = br#"{"jsonrpc":"2.0","id":"a","result":{}}"#;
        assert!(matches!(Envelope::parse(response).unwrap().kind(), Kind::Response { .. }));

        let odd = br#"{"jsonrpc":"2.0","id":"a"}"#;
        assert!(matches!(Envelope::parse(odd).unwrap().kind(), Kind::Other));
        assert!(Envelope::parse(b"not json").is_none());
    }

    #[test]
    fn escaped_methods_are_read() {
        let request = br#"{"jsonrpc":"2.0","id":1,"method":"tools\/call"}"#;
        let env = Envelope::parse(request).unwrap();
        assert!(matches!(env.kind(), Kind::Request { method: "tools/call", .. }));
    }

    #[test]
    fn ids_match_across_number_spellings() {
        let a: &RawValue = serde_json::from_str("1").unwrap();
        let b: &RawValue = serde_json::from_str("1.0").unwrap();
        let c: &RawValue = serde_json::from_str("\"1\"").unwrap();
        assert_eq!(id_key(a), id_key(b));
        assert_ne!(id_key(a), id_key(c));
    }

    #[test]
    fn error_responses_are_valid_json_lines() {
        let id: &RawValue = serde_json::from_str("\"x\\\"y\"").unwrap();
        let line = error_response(id, -32000, "it said \"no\"", "ledger_unavailable");
        assert_eq!(line.last(), Some(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["id"], "x\"y");
        assert_eq!(value["error"]["message"], "it said \"no\"");
        assert_eq!(value["error"]["data"]["mcp_ledger"], "ledger_unavailable");
    }

    #[test]
    fn batches_are_split() {
        let members = batch_members(br#" [{"id":1,"method":"a"},{"method":"b"}]"#).unwrap();
        assert_eq!(members.len(), 2);
        assert!(batch_members(br#"{"id":1}"#).is_none());
    }
}
