//! Queues of whole lines between the relay and what it talks to.
//!
//! A peer that is a byte stream (a child's stdin, this process's stdout) gets the relay's lines
//! through a task that writes them out. A peer that takes whole messages anyway (an HTTP
//! session's dispatcher, an HTTP upstream that POSTs each line) reads them straight from the
//! queue: no task, no pipe and no copy in between, and one wake-up fewer per message.

use std::pin::Pin;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Lines waiting for one peer.
const QUEUE_DEPTH: usize = 1024;

/// The sending end: where the relay puts lines for a peer, and how it says that no more will
/// come once the queue is empty (a child's stdin is closed then, an HTTP session deleted).
pub struct LineQueue {
    pub lines: mpsc::Sender<Vec<u8>>,
    close: CancellationToken,
}

impl LineQueue {
    /// Ends the queue for its reader once what was queued before is read, even while senders
    /// are still alive.
    pub fn close(&self) {
        self.close.cancel();
    }
}

/// The receiving end. Lines come out as they were queued, each with or without its line ending.
pub struct LineOutbox {
    lines: mpsc::Receiver<Vec<u8>>,
    close: CancellationToken,
}

impl LineOutbox {
    /// The next line; `None` once every sender is gone, or the queue was closed and what was
    /// queued before is read.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        tokio::select! {
            biased;
            line = self.lines.recv() => line,
            _ = self.close.cancelled() => self.lines.try_recv().ok(),
        }
    }

    /// The next line without its line ending, for a reader that takes it as one message.
    pub async fn next_message(&mut self) -> Option<Vec<u8>> {
        let mut line = self.next().await?;
        line.truncate(without_line_end(&line).len());
        Some(line)
    }

    /// Whether a line is waiting (so a writer can leave its flush to the last of a burst).
    fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// A new, empty queue.
pub fn line_queue() -> (LineQueue, LineOutbox) {
    let (lines, outbox) = mpsc::channel(QUEUE_DEPTH);
    let close = CancellationToken::new();
    (LineQueue { lines, close: close.clone() }, LineOutbox { lines: outbox, close })
}

/// Where the relay's lines for one peer go.
pub enum LineSink {
    /// A byte stream: each line is written to it, newline-terminated, by a task of the relay's.
    Stream(Pin<Box<dyn AsyncWrite + Send>>),
    /// A queue whose reader takes whole lines.
    Queue(LineQueue),
}

impl LineSink {
    pub fn stream(out: impl AsyncWrite + Send + 'static) -> Self {
        LineSink::Stream(Box::pin(out))
    }

    /// The queue to put this peer's lines in; for a byte stream, with the task that writes them
    /// out (it ends when the queue does).
    pub fn into_queue(self) -> (LineQueue, Option<JoinHandle<()>>) {
        match self {
            LineSink::Queue(queue) => (queue, None),
            LineSink::Stream(out) => {
                let (queue, outbox) = line_queue();
                (queue, Some(tokio::spawn(write_lines(outbox, out))))
            }
        }
    }
}

/// Writes queued lines to `out`, each ending in `\n`, until the queue ends; then shuts `out`
/// down.
async fn write_lines<W: AsyncWrite + Unpin>(mut outbox: LineOutbox, mut out: W) {
    while let Some(mut line) = outbox.next().await {
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        if out.write_all(&line).await.is_err() {
            break;
        }
        // Flush only when nothing else is queued, so bursts go out in one write.
        if outbox.is_empty() && out.flush().await.is_err() {
            break;
        }
    }
    let _ = out.shutdown().await;
}

/// `line` without its line ending (`\n` or `\r\n`).
pub fn without_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_queue_hands_out_what_it_held_then_ends() {
        let (queue, mut outbox) = line_queue();
        queue.lines.send(b"one".to_vec()).await.unwrap();
        queue.lines.send(b"two".to_vec()).await.unwrap();
        queue.close();
        assert_eq!(outbox.next().await.as_deref(), Some(&b"one"[..]));
        assert_eq!(outbox.next().await.as_deref(), Some(&b"two"[..]));
        assert_eq!(outbox.next().await, None);
        assert_eq!(outbox.next().await, None, "ended stays ended");
        assert!(!queue.lines.is_closed(), "the sender alone does not end it");
    }

    #[tokio::test]
    async fn a_queue_ends_when_its_senders_are_gone() {
        let (queue, mut outbox) = line_queue();
        let sender = queue.lines.clone();
        drop(queue);
        sender.send(b"last".to_vec()).await.unwrap();
        drop(sender);
        assert_eq!(outbox.next().await.as_deref(), Some(&b"last"[..]));
        assert_eq!(outbox.next().await, None);
    }

    #[tokio::test]
    async fn a_stream_gets_each_line_once_newline_terminated() {
        let (queue, outbox) = line_queue();
        let (writer, mut reader) = tokio::io::duplex(1024);
        let writing = tokio::spawn(write_lines(outbox, writer));
        queue.lines.send(b"a".to_vec()).await.unwrap();
        queue.lines.send(b"b\n".to_vec()).await.unwrap();
        queue.close();
        writing.await.unwrap();
        let mut written = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut written).await.unwrap();
        assert_eq!(written, b"a\nb\n");
    }

    #[test]
    fn line_ends_are_taken_off() {
        assert_eq!(without_line_end(b"x\r\n"), b"x");
        assert_eq!(without_line_end(b"x\n"), b"x");
        assert_eq!(without_line_end(b"x"), b"x");
    }
}
