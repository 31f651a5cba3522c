//! Streaming the whole ledger out of SQLite a page of events at a time.
//!
//! sqlx's SQLite driver hands each result row from its worker thread to the reading task over a
//! bounded channel, and one side or the other is woken for nearly every row: reading 500,000
//! events one row each made about as many futex calls, and `verify` spent seconds of system time
//! on them. Here SQLite folds a page of events into one row of JSON, so a page costs one
//! hand-off. The columns arrive as the same values, and `data` as the text it is stored as,
//! parsed exactly as a row's would be.
//!
//! Reading is a pipeline, so that the reader's consumer (the verifier, say) is not idle while
//! SQLite builds a page, nor SQLite while a page is decoded: one task fetches pages, one step
//! ahead of another that decodes them, one step ahead of the consumer.

use futures::stream::{self, BoxStream, StreamExt};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use sqlx::SqlitePool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::record::Event;
use crate::store::StoreError;

/// Events per page: enough that the per-row hand-off disappears, few enough that a page (about
/// a kilobyte an event) stays small next to the verifier's own state.
const EVENTS_PER_PAGE: usize = 1_000;

/// One page as a JSON array of events, each an array of the columns in [`Columns`]' order. The
/// aggregate is not asked to order its input (that made SQLite sort every page again); the
/// decoder checks the order instead.
macro_rules! page_of {
    ($after:literal) => {
        concat!(
            "SELECT json_group_array(json_array(chain_id, seq, event_id, event_type, timestamp, \
             session_id, agent, server, data, prev_hash, hash)) \
             FROM (SELECT * FROM events ",
            $after,
            " ORDER BY chain_id, seq, event_id LIMIT ?)"
        )
    };
}

/// The first page. A separate statement rather than an `OR` in the next one's condition, which
/// would stop SQLite from seeking the index and make each page rescan what came before.
const FIRST_PAGE: &str = page_of!("");
/// The page after the event whose key is bound as `(chain_id, seq, event_id)`.
const NEXT_PAGE: &str = page_of!("WHERE (chain_id, seq, event_id) > (?, ?, ?)");

/// Where the next page starts: after the event with this `(chain_id, seq, event_id)`.
type Key = (String, i64, String);

/// An event as one element of a page: the columns of `events` in order, `data` still text.
#[derive(Deserialize)]
struct Columns(
    String,
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
);

/// Only the key of an element of a page.
#[derive(Deserialize)]
struct KeyColumns(
    String,
    i64,
    String,
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
);

/// Every event, ordered by chain, seq and event id. Events before an unreadable one are still
/// yielded; the stream ends with its error.
pub fn all_events(pool: &SqlitePool) -> BoxStream<'static, Result<Event, StoreError>> {
    let (texts, texts_out) = mpsc::channel(1);
    let (pages, pages_out) = mpsc::channel(1);
    tokio::spawn(fetch_pages(pool.clone(), texts));
    tokio::spawn(decode_pages(texts_out, pages));
    ReceiverStream::new(pages_out).flat_map(stream::iter).boxed()
}

/// Sends the text of each page in turn, until a page is short, the reader is gone, or an error
/// (which is sent too).
async fn fetch_pages(pool: SqlitePool, texts: mpsc::Sender<Result<String, StoreError>>) {
    let mut after: Option<Key> = None;
    loop {
        let query = match &after {
            None => sqlx::query_scalar(FIRST_PAGE),
            Some((chain_id, seq, event_id)) => {
                sqlx::query_scalar(NEXT_PAGE).bind(chain_id).bind(seq).bind(event_id)
            }
        };
        let text: String = match query.bind(EVENTS_PER_PAGE as i64).fetch_one(&pool).await {
            Ok(text) => text,
            Err(error) => {
                let _ = texts.send(Err(error.into())).await;
                return;
            }
        };
        // The next page starts after this one's last event. If that cannot be read, the decoder
        // reports why, and there is no next page.
        after = last_key(&text);
        if texts.send(Ok(text)).await.is_err() || after.is_none() {
            return;
        }
    }
}

/// The key of a full page's last event; `None` for a short (final) or unreadable page.
fn last_key(text: &str) -> Option<Key> {
    let rows: Vec<&RawValue> = serde_json::from_str(text).ok()?;
    if rows.len() < EVENTS_PER_PAGE {
        return None;
    }
    let KeyColumns(chain_id, seq, event_id, ..) = serde_json::from_str(rows.last()?.get()).ok()?;
    Some((chain_id, seq, event_id))
}

async fn decode_pages(
    mut texts: mpsc::Receiver<Result<String, StoreError>>,
    pages: mpsc::Sender<Vec<Result<Event, StoreError>>>,
) {
    while let Some(text) = texts.recv().await {
        let page = match text {
            Ok(text) => decode_page(&text),
            Err(error) => vec![Err(error)],
        };
        let failed = page.last().is_some_and(|event| event.is_err());
        if pages.send(page).await.is_err() || failed {
            return;
        }
    }
}

/// A page's events in key order, stopping at the first that cannot be read (its error last).
fn decode_page(text: &str) -> Vec<Result<Event, StoreError>> {
    let rows: Vec<&RawValue> = match serde_json::from_str(text) {
        Ok(rows) => rows,
        Err(e) => {
            return vec![Err(StoreError::Corrupt {
                event_id: "(a page of events)".to_owned(),
                reason: format!("SQLite returned a page that is not a JSON array: {e}"),
            })];
        }
    };
    let mut events = Vec::with_capacity(rows.len());
    let mut error = None;
    for row in rows {
        match decode(row) {
            Ok(event) => events.push(event),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    fn key(e: &Event) -> (&str, i64, &str) {
        (&e.chain_id, e.seq, &e.event_id)
    }
    if !events.is_sorted_by(|a, b| key(a) <= key(b)) {
        events.sort_by(|a, b| key(a).cmp(&key(b)));
    }
    events.into_iter().map(Ok).chain(error.map(Err)).collect()
}

fn decode(row: &RawValue) -> Result<Event, StoreError> {
    let Columns(
        chain_id,
        seq,
        event_id,
        event_type,
        timestamp,
        session_id,
        agent,
        server,
        data,
        prev_hash,
        hash,
    ) = serde_json::from_str(row.get()).map_err(|e| {
        // Name the event if at least its id is readable.
        let columns: Vec<serde_json::Value> = serde_json::from_str(row.get()).unwrap_or_default();
        StoreError::Corrupt {
            event_id: columns.get(2).and_then(|id| id.as_str()).unwrap_or("(unknown)").to_owned(),
            reason: format!("a column is missing or of the wrong type: {e}"),
        }
    })?;
    let data = serde_json::from_str(&data)
        .map_err(|e| StoreError::Corrupt { event_id: event_id.clone(), reason: e.to_string() })?;
    Ok(Event {
        chain_id,
        seq,
        event_id,
        event_type,
        timestamp,
        session_id,
        agent,
        server,
        data,
        prev_hash,
        hash,
    })
}
