//! Long-running work started over HTTP: ingest runs (one at a time, on a thread) and
//! fine-tuning runs (child processes). Each is a [`Job`] clients poll at `/v1/jobs/{id}`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult};
use super::state::AppState;
use crate::progress::Counters;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Ingest,
    Finetune,
}

impl JobKind {
    fn name(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Finetune => "finetune",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    /// Stopped on request (or by shutdown). Ingest keeps what it committed; fine-tuning
    /// keeps a checkpoint that `resume` continues.
    Cancelled,
}

impl JobState {
    pub fn finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
    fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// How a running job reports and is stopped.
#[derive(Debug)]
pub enum Control {
    /// An ingest run's counters; their `cancel` flag stops it after the current file.
    Ingest(Arc<Counters>),
    /// A training child: its pid while it may be signalled (SIGINT makes it checkpoint and
    /// stop), and the progress it printed.
    Finetune {
        /// Cleared, under this lock, before the child is reaped: a pid is only signalled
        /// while it still names our child, never a process that reused it.
        pid: Mutex<Option<u32>>,
        cancel: AtomicBool,
        progress: Mutex<Value>,
    },
}

#[derive(Debug)]
struct Status {
    state: JobState,
    result: Option<Value>,
    error: Option<String>,
    finished_s: Option<f64>,
}

#[derive(Debug)]
pub struct Job {
    pub id: String,
    pub kind: JobKind,
    /// What the job makes, when it has a name (a fine-tune job's adapter).
    pub name: Option<String>,
    pub control: Control,
    created_s: f64,
    started: Instant,
    status: Mutex<Status>,
}

/// A job as clients see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    pub id: String,
    pub kind: JobKind,
    pub state: JobState,
    /// Ingest: files_total, files_done, chunks. Fine-tune: step, total_steps, loss, lr,
    /// eta_s, val_loss.
    #[schema(value_type = Object)]
    pub progress: Value,
    /// The run's report once it succeeded (or stopped).
    #[schema(value_type = Object)]
    pub result: Option<Value>,
    pub error: Option<String>,
    /// Seconds since the Unix epoch.
    pub created_s: f64,
    pub finished_s: Option<f64>,
    pub elapsed_s: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobResponse {
    pub job: JobView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A poisoned lock still guards consistent data here (plain values, replaced whole).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Job {
    pub fn new(kind: JobKind, control: Control) -> Arc<Self> {
        Self::build(kind, control, None)
    }

    pub fn named(kind: JobKind, control: Control, name: String) -> Arc<Self> {
        Self::build(kind, control, Some(name))
    }

    fn build(kind: JobKind, control: Control, name: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            id: format!("{}-{}", kind.name(), uuid::Uuid::new_v4().simple()),
            kind,
            name,
            control,
            created_s: unix_now(),
            started: Instant::now(),
            status: Mutex::new(Status {
                state: JobState::Queued,
                result: None,
                error: None,
                finished_s: None,
            }),
        })
    }

    pub fn state(&self) -> JobState {
        lock(&self.status).state
    }

    /// Queued → running; a job cancelled meanwhile stays cancelled.
    pub fn set_running(&self) {
        let mut s = lock(&self.status);
        if s.state == JobState::Queued {
            s.state = JobState::Running;
        }
    }

    /// Records the end; the first call wins.
    pub fn finish(&self, state: JobState, result: Option<Value>, error: Option<String>) {
        let mut s = lock(&self.status);
        if s.state.finished() {
            return;
        }
        s.state = state;
        s.result = result;
        s.error = error;
        s.finished_s = Some(unix_now());
    }

    /// Waits for this job's turn (jobs of a kind run one at a time); `None`, with the job
    /// recorded as cancelled, when it was cancelled while it waited.
    ///
    /// It polls rather than blocks on the lock, so that a job cancelled while queued ends
    /// (and its thread exits) at once instead of when its turn would have come.
    pub fn wait_turn<'a>(&self, turn: &'a Mutex<()>) -> Option<std::sync::MutexGuard<'a, ()>> {
        loop {
            if self.cancel_requested() {
                self.finish(
                    JobState::Cancelled,
                    None,
                    Some("cancelled before it started".into()),
                );
                return None;
            }
            match turn.try_lock() {
                Ok(guard) => return Some(guard),
                Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    pub fn cancel_requested(&self) -> bool {
        match &self.control {
            Control::Ingest(c) => c.cancel.load(Ordering::Relaxed),
            Control::Finetune { cancel, .. } => cancel.load(Ordering::Relaxed),
        }
    }

    /// Asks the job to stop: a queued one ends now, a running one at its next safe point.
    pub fn cancel(&self) {
        match &self.control {
            Control::Ingest(c) => c.cancel.store(true, Ordering::Relaxed),
            Control::Finetune { pid, cancel, .. } => {
                cancel.store(true, Ordering::Relaxed);
                if let Some(pid) = *lock(pid) {
                    interrupt(pid);
                }
            }
        }
        if self.state() == JobState::Queued {
            self.finish(
                JobState::Cancelled,
                None,
                Some("cancelled before it started".into()),
            );
        }
    }

    pub fn view(&self) -> JobView {
        let s = lock(&self.status);
        let progress = match &self.control {
            Control::Ingest(c) => serde_json::json!({
                "files_total": c.files_total.load(Ordering::Relaxed),
                "files_done": c.files_done.load(Ordering::Relaxed),
                "chunks": c.chunks.load(Ordering::Relaxed),
            }),
            Control::Finetune { progress, .. } => lock(progress).clone(),
        };
        JobView {
            id: self.id.clone(),
            kind: self.kind,
            state: s.state,
            progress,
            result: s.result.clone(),
            error: s.error.clone(),
            created_s: self.created_s,
            finished_s: s.finished_s,
            elapsed_s: self.started.elapsed().as_secs_f64(),
        }
    }
}

/// Sends SIGINT to a training child: it finishes its step, writes a checkpoint and exits.
fn interrupt(pid: u32) {
    use rustix::process::{Pid, Signal, kill_process};
    let sent = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| std::io::Error::other("not a process id"))
        .and_then(|p| kill_process(p, Signal::INT).map_err(std::io::Error::from));
    if let Err(e) = sent {
        tracing::warn!("cannot signal the training process {pid}: {e}");
    }
}

/// Finished jobs remembered for `/v1/jobs`; older ones are forgotten so that a long-lived
/// server's list (and memory) stays bounded. Running and queued jobs are always kept.
const KEEP_FINISHED: usize = 256;

fn forget_oldest_finished(jobs: &mut BTreeMap<String, Arc<Job>>, keep: usize) {
    let mut finished: Vec<(f64, String)> = jobs
        .values()
        .filter(|j| j.state().finished())
        .map(|j| (j.created_s, j.id.clone()))
        .collect();
    if finished.len() <= keep {
        return;
    }
    finished.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (_, id) in &finished[..finished.len() - keep] {
        jobs.remove(id);
    }
}

/// Every job this server started, by id.
#[derive(Debug, Default)]
pub struct Jobs {
    jobs: Mutex<BTreeMap<String, Arc<Job>>>,
    /// Ingest runs take turns: they write the same knowledge base.
    pub ingest_turn: Arc<Mutex<()>>,
    /// Training runs take turns: each uses every core.
    pub finetune_turn: Arc<Mutex<()>>,
    /// Set (under the `jobs` lock) when shutdown begins.
    closed: AtomicBool,
}

impl Jobs {
    /// Registers a job; refused once shutdown began, since [`Jobs::stop_all`] would never
    /// reach it.
    ///
    /// Refused with 429 when `max_unfinished` jobs are already queued or running: each holds
    /// a thread, and a queue no one will live to see run only costs memory.
    pub fn add(&self, job: Arc<Job>, max_unfinished: usize) -> ApiResult<()> {
        let mut jobs = lock(&self.jobs);
        if self.closed.load(Ordering::Relaxed) {
            return Err(ApiError::unavailable("shutting down: no new jobs"));
        }
        // Checked under the lock: two requests for the same adapter cannot both pass.
        if let Some(other) = job.name.as_ref().and_then(|name| {
            jobs.values().find(|j| {
                j.kind == job.kind && j.name.as_ref() == Some(name) && !j.state().finished()
            })
        }) {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                format!(
                    "the job {} is already making `{}`: wait for it, cancel it, or choose \
                     another name",
                    other.id,
                    job.name.as_deref().unwrap_or_default()
                ),
            ));
        }
        let unfinished = jobs.values().filter(|j| !j.state().finished()).count();
        if unfinished >= max_unfinished {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{unfinished} jobs are queued or running, as many as this server takes \
                     (--max-jobs): wait for one to finish, or cancel one"
                ),
            ));
        }
        jobs.insert(job.id.clone(), job);
        forget_oldest_finished(&mut jobs, KEEP_FINISHED);
        Ok(())
    }

    pub fn get(&self, id: &str) -> ApiResult<Arc<Job>> {
        lock(&self.jobs)
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no job with id `{id}`")))
    }

    pub fn all(&self) -> Vec<Arc<Job>> {
        lock(&self.jobs).values().cloned().collect()
    }

    pub fn counts(&self) -> BTreeMap<(&'static str, &'static str), usize> {
        let mut counts = BTreeMap::new();
        for job in lock(&self.jobs).values() {
            *counts
                .entry((job.kind.name(), job.state().name()))
                .or_default() += 1;
        }
        counts
    }

    /// Shutdown: no new jobs, and every unfinished one is asked to stop (ingest commits,
    /// training checkpoints).
    pub fn stop_all(&self) {
        let jobs: Vec<Arc<Job>> = {
            let jobs = lock(&self.jobs);
            self.closed.store(true, Ordering::Relaxed);
            jobs.values().cloned().collect()
        };
        for job in jobs {
            if !job.state().finished() {
                job.cancel();
            }
        }
    }

    /// Waits until no job runs; `false` if some still do after `grace`.
    pub async fn wait_idle(&self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        loop {
            if self.all().iter().all(|j| j.state().finished()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Lists every job, newest last.
#[utoipa::path(get, path = "/v1/jobs", responses((status = 200, body = JobList)))]
pub async fn list(State(state): State<AppState>) -> Json<JobList> {
    let mut jobs: Vec<JobView> = state.jobs.all().iter().map(|j| j.view()).collect();
    jobs.sort_by(|a, b| a.created_s.total_cmp(&b.created_s));
    Json(JobList { jobs })
}

/// One job's state and progress.
#[utoipa::path(get, path = "/v1/jobs/{id}", params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, description = "unknown job")))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    Ok(Json(state.jobs.get(&id)?.view()))
}

/// Cancels a job: ingest stops after the current file (what it committed stays);
/// fine-tuning checkpoints after the current step.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, description = "unknown job")))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    let job = state.jobs.get(&id)?;
    if !job.state().finished() {
        job.cancel();
    }
    Ok(Json(job.view()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingest_job() -> Arc<Job> {
        Job::new(JobKind::Ingest, Control::Ingest(Arc::default()))
    }

    #[test]
    fn the_list_keeps_running_jobs_and_the_newest_finished_ones() {
        let mut jobs = BTreeMap::new();
        let running = ingest_job();
        running.set_running();
        jobs.insert(running.id.clone(), Arc::clone(&running));
        let mut finished = Vec::new();
        for _ in 0..5 {
            let job = ingest_job();
            job.finish(JobState::Succeeded, None, None);
            jobs.insert(job.id.clone(), Arc::clone(&job));
            finished.push(job);
            std::thread::sleep(Duration::from_millis(2));
        }
        forget_oldest_finished(&mut jobs, 3);
        assert_eq!(jobs.len(), 4);
        assert!(jobs.contains_key(&running.id));
        for (i, job) in finished.iter().enumerate() {
            assert_eq!(jobs.contains_key(&job.id), i >= 2, "job {i}");
        }
    }

    #[test]
    fn no_job_is_added_after_shutdown_began() {
        let jobs = Jobs::default();
        jobs.add(ingest_job(), 8).expect("before shutdown");
        jobs.stop_all();
        let refused = jobs.add(ingest_job(), 8);
        assert!(refused.is_err_and(|e| e.status == axum::http::StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(jobs.all().len(), 1);
        assert!(jobs.all()[0].cancel_requested());
    }

    /// Hardening finding 7: 200 queued jobs were all accepted, each holding a thread that
    /// cancelling did not free.
    #[test]
    fn queued_jobs_are_capped_and_cancelling_frees_their_threads() {
        let jobs = Jobs::default();
        let held = lock(&jobs.ingest_turn);
        let mut waiting = Vec::new();
        for _ in 0..3 {
            let job = ingest_job();
            jobs.add(Arc::clone(&job), 3).expect("under the cap");
            let (turn, j) = (Arc::clone(&jobs.ingest_turn), Arc::clone(&job));
            waiting.push((
                job,
                std::thread::spawn(move || j.wait_turn(&turn).is_some()),
            ));
        }
        let refused = jobs.add(ingest_job(), 3);
        assert!(refused.is_err_and(|e| e.status == axum::http::StatusCode::TOO_MANY_REQUESTS));
        for (job, thread) in waiting {
            job.cancel();
            // Joins while the turn is still held: the thread ended because of the cancel.
            assert!(
                !thread.join().expect("thread"),
                "a cancelled job got its turn"
            );
            assert_eq!(job.state(), JobState::Cancelled);
        }
        drop(held);
        jobs.add(ingest_job(), 3)
            .expect("cancelled jobs no longer count");
    }

    /// Hardening finding 8: two fine-tune jobs for one adapter were both accepted.
    #[test]
    fn one_unfinished_job_per_name() {
        let jobs = Jobs::default();
        let named = || Job::named(JobKind::Ingest, Control::Ingest(Arc::default()), "a".into());
        let first = named();
        jobs.add(Arc::clone(&first), 8).expect("first");
        let second = jobs.add(named(), 8);
        assert!(second.is_err_and(|e| e.status == axum::http::StatusCode::CONFLICT));
        first.finish(JobState::Failed, None, None);
        jobs.add(named(), 8).expect("the first one ended");
    }

    #[test]
    fn a_job_cancelled_while_queued_does_not_turn_running() {
        let job = ingest_job();
        job.cancel();
        job.set_running();
        assert_eq!(job.state(), JobState::Cancelled);
    }
}
