//! Progress of long CLI operations (`verify`, `export`): events processed and their rate, on
//! stderr, redrawn in place.
//!
//! Shown only to a person: when stderr is a terminal and the command was not asked for
//! machine-readable output. Piped or redirected, nothing is written, so scripts and tests read
//! exactly what they read before.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress line, or nothing when it must not be shown. Cleared when dropped.
#[derive(Debug)]
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// Progress over events, starting with `phase` (`verifying`, …); `total` when it is known up
    /// front. Shown only when stderr is a terminal and `machine_readable` (`--json`) is false.
    pub fn events(phase: &'static str, total: Option<u64>, machine_readable: bool) -> Progress {
        Progress::shown_if(phase, total, !machine_readable && std::io::stderr().is_terminal())
    }

    /// [`Progress::events`] with the decision made by the caller.
    pub fn shown_if(phase: &'static str, total: Option<u64>, shown: bool) -> Progress {
        if !shown {
            return Progress(None);
        }
        let (bar, template) = match total {
            Some(total) => (
                ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()),
                "{msg} [{bar:30}] {human_pos}/{human_len} events ({per_sec}, {eta} left)",
            ),
            None => (
                ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
                "{msg} {spinner} {human_pos} events ({per_sec}, {elapsed})",
            ),
        };
        let style = ProgressStyle::with_template(template)
            .expect("a valid progress template")
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(phase);
        // Keeps the rate and spinner moving while the database is slow to answer.
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress(Some(bar))
    }

    /// Whether anything is drawn.
    pub fn is_shown(&self) -> bool {
        self.0.is_some()
    }

    /// What is being done now (`verifying`, `writing proofs`, …).
    pub fn set_phase(&self, phase: &'static str) {
        if let Some(bar) = &self.0 {
            bar.set_message(phase);
        }
    }

    /// Starts counting again (a new phase over the same events).
    pub fn restart(&self, total: Option<u64>) {
        if let Some(bar) = &self.0 {
            bar.set_length(total.unwrap_or(0));
            bar.reset();
        }
    }

    /// `n` more events done.
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
