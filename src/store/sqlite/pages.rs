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
use serde_json::value::RawValue;
use sqlx::SqlitePool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::record::Event;
use crate::store::StoreError;

/// Events per page: enough that the per-row hand-off disappears, few enough that a page (about
/// a kilobyte an event) stays small next to the verifier's own state.
const EVENTS_PER_PAGE: usize = 1_000;

/// One page as two JSON arrays in step: the events, each an array of the columns of `events` in
/// [`Event`]'s field order with `data` left null, and the text of each event's `data`. `data`
/// travels as text so that it is parsed exactly as a row's would be, and so that a `data` that is
/// not JSON fails its own event rather than SQLite's whole query. The aggregates are not asked to
/// order their input (that made SQLite sort every page again); the decoder checks the order.
macro_rules! page_of {
    ($after:literal) => {
        concat!(
            "SELECT json_group_array(json_array(chain_id, seq, event_id, event_type, timestamp, \
             session_id, agent, server, NULL, prev_hash, hash)), json_group_array(data) \
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

/// A page as SQLite returns it: the events without their `data`, and the `data` texts.
type Page = (String, String);

/// Every event, ordered by chain, seq and event id. Events before an unreadable one are still
/// yielded; the stream ends with its error.
pub fn all_events(pool: &SqlitePool) -> BoxStream<'static, Result<Event, StoreError>> {
    let (fetched, fetched_out) = mpsc::channel(1);
    let (decoded, decoded_out) = mpsc::channel(1);
    tokio::spawn(fetch_pages(pool.clone(), fetched));
    tokio::spawn(decode_pages(fetched_out, decoded));
    ReceiverStream::new(decoded_out).flat_map(stream::iter).boxed()
}

/// Sends the text of each page in turn, until a page is short, the reader is gone, or an error
/// (which is sent too).
async fn fetch_pages(pool: SqlitePool, fetched: mpsc::Sender<Result<Page, StoreError>>) {
    let mut after: Option<Key> = None;
    loop {
        let query = match &after {
            None => sqlx::query_as(FIRST_PAGE),
            Some((chain_id, seq, event_id)) => {
                sqlx::query_as(NEXT_PAGE).bind(chain_id).bind(seq).bind(event_id)
            }
        };
        let page: Page = match query.bind(EVENTS_PER_PAGE as i64).fetch_one(&pool).await {
            Ok(page) => page,
            Err(error) => {
                let _ = fetched.send(Err(error.into())).await;
                return;
            }
        };
        // The next page starts after this one's last event. If that cannot be read, the decoder
        // reports why, and there is no next page.
        after = last_key(&page.0);
        if fetched.send(Ok(page)).await.is_err() || after.is_none() {
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
    let last: Event = serde_json::from_str(rows.last()?.get()).ok()?;
    Some((last.chain_id, last.seq, last.event_id))
}

async fn decode_pages(
    mut fetched: mpsc::Receiver<Result<Page, StoreError>>,
    decoded: mpsc::Sender<Vec<Result<Event, StoreError>>>,
) {
    while let Some(page) = fetched.recv().await {
        let events = match page {
            Ok((events, data)) => decode_page(&events, &data),
            Err(error) => vec![Err(error)],
        };
        let failed = events.last().is_some_and(|event| event.is_err());
        if decoded.send(events).await.is_err() || failed {
            return;
        }
    }
}

/// A page's events in key order, stopping at the first that cannot be read (its error last).
fn decode_page(events: &str, data: &str) -> Vec<Result<Event, StoreError>> {
    let unreadable = |e: serde_json::Error| {
        vec![Err(StoreError::Corrupt {
            event_id: "(a page of events)".to_owned(),
            reason: format!("SQLite returned a page that does not read back: {e}"),
        })]
    };
    let rows: Vec<&RawValue> = match serde_json::from_str(events) {
        Ok(rows) => rows,
        Err(e) => return unreadable(e),
    };
    let data = match serde_json::from_str::<Vec<String>>(data) {
        Ok(data) if data.len() == rows.len() => data,
        Ok(_) => return unreadable(serde::de::Error::custom("its two arrays differ in length")),
        Err(e) => return unreadable(e),
    };
    let mut decoded = Vec::with_capacity(rows.len());
    let mut error = None;
    for (row, data) in rows.into_iter().zip(data) {
        match decode(row, &data) {
            Ok(event) => decoded.push(event),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    fn key(e: &Event) -> (&str, i64, &str) {
        (&e.chain_id, e.seq, &e.event_id)
    }
    if !decoded.is_sorted_by(|a, b| key(a) <= key(b)) {
        decoded.sort_by(|a, b| key(a).cmp(&key(b)));
    }
    decoded.into_iter().map(Ok).chain(error.map(Err)).collect()
}

fn decode(row: &RawValue, data: &str) -> Result<Event, StoreError> {
    let mut event: Event = serde_json::from_str(row.get()).map_err(|e| {
        // Name the event if at least its id is readable.
        let columns: Vec<serde_json::Value> = serde_json::from_str(row.get()).unwrap_or_default();
        StoreError::Corrupt {
            event_id: columns.get(2).and_then(|id| id.as_str()).unwrap_or("(unknown)").to_owned(),
            reason: format!("a column is missing or of the wrong type: {e}"),
        }
    })?;
    event.data = serde_json::from_str(data).map_err(|e| StoreError::Corrupt {
        event_id: event.event_id.clone(),
        reason: e.to_string(),
    })?;
    Ok(event)
}
