//! Ingest progress: a bar on a terminal (stderr, never mixed into `--json` output), and
//! counters a server job reports, with the flag that cancels the run.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Files done, chunks written, chunks/s and ETA.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    started: Instant,
    counters: Arc<Counters>,
}

/// What a run has done so far, readable from another thread.
#[derive(Debug, Default)]
pub struct Counters {
    pub files_total: AtomicU64,
    pub files_done: AtomicU64,
    pub chunks: AtomicU64,
    /// Set by whoever wants the run to stop at the next file.
    pub cancel: AtomicBool,
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
            counters: Arc::default(),
        }
    }

    /// No bar: the run reports to `counters` and stops when their `cancel` is set.
    pub fn reporting(counters: Arc<Counters>) -> Self {
        Self {
            counters,
            ..Self::new(false)
        }
    }

    pub fn start(&self, files: u64) {
        self.bar.set_length(files);
        self.counters.files_total.store(files, Ordering::Relaxed);
    }

    pub fn advance(&self, files: u64) {
        self.bar.inc(files);
        self.counters.files_done.fetch_add(files, Ordering::Relaxed);
    }

    pub fn cancelled(&self) -> bool {
        self.counters.cancel.load(Ordering::Relaxed)
    }

    pub fn set_chunks(&self, chunks: usize) {
        self.counters.chunks.store(chunks as u64, Ordering::Relaxed);
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
