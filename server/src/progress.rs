//! The ingest progress bar: on a terminal only, on stderr, never mixed into `--json` output.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Files done, chunks written, chunks/s and ETA.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    started: Instant,
}

impl Progress {
    /// A bar drawn on stderr when it is a terminal and `visible`; otherwise nothing is drawn.
    pub fn new(visible: bool) -> Self {
        let bar = ProgressBar::with_draw_target(
            None,
            if visible && std::io::stderr().is_terminal() {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{bar:30}] {pos}/{len} files  {msg}  ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Self {
            bar,
            started: Instant::now(),
        }
    }

    pub fn start(&self, files: u64) {
        self.bar.set_length(files);
    }

    pub fn advance(&self, files: u64) {
        self.bar.inc(files);
    }

    pub fn set_chunks(&self, chunks: usize) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        self.bar.set_message(format!(
            "{chunks} chunks  {:.1} chunks/s",
            chunks as f64 / secs
        ));
    }

    /// Replaces the counters with a note on a long final step.
    pub fn message(&self, text: &str) {
        self.bar.set_message(text.to_string());
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
