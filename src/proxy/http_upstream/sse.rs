//! A Server-Sent Events parser that follows the WHATWG event-stream interpretation rules and
//! keeps each event's data as the bytes the server sent.
//!
//! Written here rather than taken from `sse-stream` because that parser rejects lines the
//! standard says to ignore (unknown fields, lines without a colon), which would end a stream
//! that any browser would keep reading, and because the proxy needs the `id`/`retry` state
//! between connections to resume a stream.

use std::time::Duration;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SseEvent {
    /// The `event` field; `None` for the default type, `message`.
    pub event: Option<String>,
    /// The `data` fields joined with `\n`, as sent.
    pub data: Vec<u8>,
}

impl SseEvent {
    /// Whether this event carries a JSON-RPC message: a `message` event with data.
    pub fn is_message(&self) -> bool {
        matches!(self.event.as_deref(), None | Some("message")) && !self.data.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("an SSE event exceeded {0} bytes")]
pub(super) struct SseTooLarge(pub usize);

/// The parser state of one connection, plus the cursor (`id`, `retry`) that outlives it.
#[derive(Debug)]
pub(super) struct SseParser {
    max_event: usize,
    line: Vec<u8>,
    after_cr: bool,
    at_start: bool,
    data: Vec<u8>,
    has_data: bool,
    event: Option<String>,
    id_buffer: String,
    /// The id of the last dispatched event (empty: none), for `Last-Event-ID`.
    last_event_id: String,
    /// The reconnection time the server asked for.
    retry: Option<Duration>,
}

impl SseParser {
    pub fn new(max_event: usize) -> Self {
        SseParser {
            max_event,
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            data: Vec::new(),
            has_data: false,
            event: None,
            id_buffer: String::new(),
            last_event_id: String::new(),
            retry: None,
        }
    }

    /// Starts a new connection of the same stream: keeps the last event id and retry time,
    /// drops a half-received event (the standard discards it at end of stream).
    pub fn reconnected(&mut self) {
        self.line.clear();
        self.after_cr = false;
        self.at_start = true;
        self.data.clear();
        self.has_data = false;
        self.event = None;
        self.id_buffer.clone_from(&self.last_event_id);
    }

    pub fn last_event_id(&self) -> Option<&str> {
        Some(self.last_event_id.as_str()).filter(|id| !id.is_empty())
    }

    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }

    /// Feeds one chunk of the body, appending the events it completes to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseTooLarge> {
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while let Some(end) = chunk.iter().position(|b| *b == b'\n' || *b == b'\r') {
            let (head, rest) = chunk.split_at(end);
            if self.line.is_empty() {
                self.line_done(head, out)?;
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(head);
                let result = self.line_done(&line, out);
                line.clear();
                self.line = line;
                result?;
            }
            chunk = &rest[1..];
            if rest[0] == b'\r' {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    None => self.after_cr = true,
                    Some(_) => {}
                }
            }
        }
        self.line.extend_from_slice(chunk);
        if self.line.len() + self.data.len() > self.max_event {
            return Err(SseTooLarge(self.max_event));
        }
        Ok(())
    }

    fn line_done(&mut self, mut line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseTooLarge> {
        if std::mem::take(&mut self.at_start) {
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(0) => return Ok(()), // a comment
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max_event {
                    return Err(SseTooLarge(self.max_event));
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"id" if !value.contains(&0) => {
                self.id_buffer = String::from_utf8_lossy(value).into_owned();
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                if let Ok(ms) = std::str::from_utf8(value).unwrap_or_default().parse::<u64>() {
                    self.retry = Some(Duration::from_millis(ms));
                }
            }
            _ => {} // unknown fields are ignored
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        self.last_event_id.clone_from(&self.id_buffer);
        let event = self.event.take();
        if !std::mem::take(&mut self.has_data) {
            return;
        }
        let data = std::mem::take(&mut self.data);
        out.push(SseEvent { event: event.filter(|e| !e.is_empty()), data });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> (Vec<SseEvent>, SseParser) {
        let mut parser = SseParser::new(1 << 20);
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out).unwrap();
        }
        (out, parser)
    }

    fn data(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| std::str::from_utf8(&e.data).unwrap()).collect()
    }

    #[test]
    fn events_split_across_chunks_and_line_endings() {
        let (events, parser) =
            parse(&[b"\xEF\xBB\xBFid: 1\r", b"\ndata: {\"a\":", b"1}\r\r", b"data:x\n\nid:2\n"]);
        assert_eq!(data(&events), [r#"{"a":1}"#, "x"]);
        // `id: 2` belongs to an event that never completed.
        assert_eq!(parser.last_event_id(), Some("1"));
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        let (events, _) = parse(&[b"data: {\ndata:  \"a\": 1\ndata: }\n\n"]);
        assert_eq!(data(&events), ["{\n \"a\": 1\n}"]);
    }

    #[test]
    fn priming_events_move_the_cursor_but_carry_no_message() {
        let (events, parser) = parse(&[b"id: 0\nretry: 3000\ndata:\n\n"]);
        assert_eq!(events.len(), 1);
        assert!(!events[0].is_message());
        assert_eq!(parser.last_event_id(), Some("0"));
        assert_eq!(parser.retry(), Some(Duration::from_millis(3000)));
        let (events, parser) = parse(&[b"id: 7\n\n"]);
        assert!(events.is_empty());
        assert_eq!(parser.last_event_id(), Some("7"));
    }

    #[test]
    fn odd_lines_are_ignored_not_fatal() {
        let (events, parser) =
            parse(&[b": keep-alive\nfoo: bar\nnocolon\nretry: soon\nevent: ping\ndata: 1\n\n"]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event.as_deref(), Some("ping"));
        assert!(!events[0].is_message());
        assert_eq!(parser.retry(), None);
        let (events, _) = parse(&[b"event: message\ndata: 2\n\n"]);
        assert!(events[0].is_message());
    }

    #[test]
    fn ids_with_nul_are_ignored_and_empty_ids_reset() {
        let (_, parser) = parse(&[b"id: a\ndata: 1\n\nid: b\0\ndata: 2\n\n"]);
        assert_eq!(parser.last_event_id(), Some("a"));
        let (_, parser) = parse(&[b"id: a\ndata: 1\n\nid\ndata: 2\n\n"]);
        assert_eq!(parser.last_event_id(), None);
    }

    #[test]
    fn oversized_events_are_refused() {
        let mut parser = SseParser::new(8);
        let mut out = Vec::new();
        assert!(parser.feed(b"data: 0123456789\n\n", &mut out).is_err());
        let mut parser = SseParser::new(8);
        assert!(parser.feed(b"data: 0123456789", &mut out).is_err());
    }

    #[test]
    fn reconnecting_keeps_the_cursor_and_drops_the_partial_event() {
        let mut parser = SseParser::new(1 << 20);
        let mut out = Vec::new();
        parser.feed(b"id: 5\ndata: 1\n\ndata: partial", &mut out).unwrap();
        parser.reconnected();
        parser.feed(b"data: 2\n\n", &mut out).unwrap();
        assert_eq!(data(&out), ["1", "2"]);
        assert_eq!(parser.last_event_id(), Some("5"));
    }
}
