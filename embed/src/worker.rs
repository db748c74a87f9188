//! The model on a thread of its own.
//!
//! A forward pass is long, CPU-bound work: it must not run on an async executor or hold a
//! caller's lock. [`EmbedWorker`] moves the model onto a dedicated thread fed by a bounded
//! channel; callers block on a per-request reply channel. Cloning the worker clones the
//! handle, not the model.

use std::sync::mpsc::{SyncSender, sync_channel};

use crate::{Embedder, Embedding, Error, ModelInfo, Result};

/// Requests waiting for the model beyond this many make senders block (back-pressure).
const QUEUE: usize = 16;

struct Job {
    texts: Vec<String>,
    reply: SyncSender<Result<Vec<Embedding>>>,
}

/// A handle to an embedding model running on its own thread. The thread ends when the last
/// handle is dropped.
#[derive(Clone)]
pub struct EmbedWorker {
    jobs: SyncSender<Job>,
    info: ModelInfo,
}

impl std::fmt::Debug for EmbedWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedWorker")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl EmbedWorker {
    /// Moves `embedder` onto a new thread named `lore-embed`.
    pub fn spawn<E: Embedder + 'static>(embedder: E) -> Self {
        let info = embedder.info().clone();
        let (jobs, queue) = sync_channel::<Job>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("lore-embed".into())
            .spawn(move || {
                for job in queue {
                    // A caller that gave up has dropped its receiver; nothing to do then.
                    let _ = job.reply.send(embedder.embed(&job.texts));
                }
            });
        if let Err(e) = spawned {
            // Without a thread every request fails with WorkerGone; say why once.
            tracing::error!("cannot start the embedding thread: {e}");
        }
        Self { jobs, info }
    }
}

impl Embedder for EmbedWorker {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&self, texts: &[String]) -> Result<Vec<Embedding>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = sync_channel(1);
        self.jobs
            .send(Job {
                texts: texts.to_vec(),
                reply,
            })
            .map_err(|_| Error::WorkerGone)?;
        answer.recv().map_err(|_| Error::WorkerGone)?
    }
}
