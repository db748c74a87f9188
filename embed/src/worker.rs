//! The model on a thread of its own.
//!
//! A forward pass is long, CPU-bound work: it must not run on an async executor or hold a
//! caller's lock. [`EmbedWorker`] moves the model onto a dedicated thread fed by a bounded
//! channel; callers block on a per-request reply channel. Cloning the worker clones the
//! handle, not the model.
//!
//! Requests that queue while the model is busy are embedded together in one call (up to
//! [`COALESCE_TEXTS`] texts): many concurrent one-query requests (a server under load) then
//! share forward passes instead of running one short batch each.

use std::sync::mpsc::{SyncSender, sync_channel};

use crate::{Embedder, Embedding, Error, ModelInfo, Result};

/// Requests waiting for the model beyond this many make senders block (back-pressure).
const QUEUE: usize = 16;
/// Texts from waiting requests joined into one embedder call at most.
pub const COALESCE_TEXTS: usize = 64;

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
                while let Ok(first) = queue.recv() {
                    let mut jobs = vec![first];
                    let mut texts = jobs[0].texts.len();
                    while texts < COALESCE_TEXTS {
                        match queue.try_recv() {
                            Ok(job) => {
                                texts += job.texts.len();
                                jobs.push(job);
                            }
                            Err(_) => break,
                        }
                    }
                    run(&embedder, jobs);
                }
            });
        if let Err(e) = spawned {
            // Without a thread every request fails with WorkerGone; say why once.
            tracing::error!("cannot start the embedding thread: {e}");
        }
        Self { jobs, info }
    }
}

/// Embeds the jobs' texts in one call and hands each job its share. If the joint call fails,
/// each job is retried alone, so one request's bad input cannot fail the others.
fn run<E: Embedder>(embedder: &E, jobs: Vec<Job>) {
    if let [job] = jobs.as_slice() {
        // A caller that gave up has dropped its receiver; nothing to do then.
        let _ = job.reply.send(embedder.embed(&job.texts));
        return;
    }
    let all: Vec<String> = jobs.iter().flat_map(|j| j.texts.iter().cloned()).collect();
    match embedder.embed(&all) {
        Ok(vectors) if vectors.len() == all.len() => {
            let mut vectors = vectors.into_iter();
            for job in jobs {
                let share = vectors.by_ref().take(job.texts.len()).collect();
                let _ = job.reply.send(Ok(share));
            }
        }
        _ => {
            for job in jobs {
                let _ = job.reply.send(embedder.embed(&job.texts));
            }
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::Pooling;

    /// Embeds a text as `[its length, its first byte]`, fails on "bad", and records the size
    /// of every call.
    struct Recorder {
        info: ModelInfo,
        calls: Mutex<Vec<usize>>,
    }

    impl Recorder {
        fn new() -> Self {
            Self {
                info: ModelInfo {
                    name: "recorder".into(),
                    dim: 2,
                    pooling: Pooling::Mean,
                    normalize: false,
                    max_seq_len: 16,
                    special_tokens: 0,
                    fingerprint: String::new(),
                },
                calls: Mutex::default(),
            }
        }
    }

    impl Embedder for Recorder {
        fn info(&self) -> &ModelInfo {
            &self.info
        }
        fn embed(&self, texts: &[String]) -> Result<Vec<Embedding>> {
            self.calls.lock().expect("lock").push(texts.len());
            if texts.iter().any(|t| t == "bad") {
                return Err(Error::Runtime("bad text".into()));
            }
            Ok(texts
                .iter()
                .map(|t| vec![t.len() as f32, f32::from(t.as_bytes()[0])])
                .collect())
        }
    }

    fn job(texts: &[&str]) -> (Job, std::sync::mpsc::Receiver<Result<Vec<Embedding>>>) {
        let (reply, answer) = sync_channel(1);
        let texts = texts.iter().map(|t| t.to_string()).collect();
        (Job { texts, reply }, answer)
    }

    #[test]
    fn queued_requests_share_one_call_and_each_gets_its_own_vectors() {
        let recorder = Recorder::new();
        let (a, ra) = job(&["a", "bb"]);
        let (b, rb) = job(&["ccc"]);
        let (c, rc) = job(&["dddd", "e", "ff"]);
        run(&recorder, vec![a, b, c]);
        assert_eq!(*recorder.calls.lock().expect("lock"), vec![6]);
        let got = |r: std::sync::mpsc::Receiver<Result<Vec<Embedding>>>| {
            r.recv().expect("a reply").expect("vectors")
        };
        assert_eq!(got(ra), vec![vec![1.0, 97.0], vec![2.0, 98.0]]);
        assert_eq!(got(rb), vec![vec![3.0, 99.0]]);
        assert_eq!(
            got(rc),
            vec![vec![4.0, 100.0], vec![1.0, 101.0], vec![2.0, 102.0]]
        );
    }

    #[test]
    fn one_failing_request_does_not_fail_the_others() {
        let recorder = Recorder::new();
        let (a, ra) = job(&["a"]);
        let (b, rb) = job(&["bad"]);
        run(&recorder, vec![a, b]);
        // The joint call failed, then each ran alone.
        assert_eq!(*recorder.calls.lock().expect("lock"), vec![2, 1, 1]);
        assert_eq!(
            ra.recv().expect("reply").expect("vectors"),
            vec![vec![1.0, 97.0]]
        );
        assert!(rb.recv().expect("reply").is_err());
    }

    #[test]
    fn the_worker_answers_concurrent_callers() {
        let worker = EmbedWorker::spawn(Recorder::new());
        let answers: Vec<Vec<Embedding>> = std::thread::scope(|s| {
            let handles: Vec<_> = (1..=40)
                .map(|n| {
                    let w = worker.clone();
                    s.spawn(move || w.embed(&["x".repeat(n)]).expect("vectors"))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        for (i, v) in answers.iter().enumerate() {
            assert_eq!(v, &vec![vec![(i + 1) as f32, 120.0]]);
        }
    }
}
