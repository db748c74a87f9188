//! Ingest jobs: server-side folders under the allowed roots (`POST /v1/ingest`) and
//! uploaded files (`POST /v1/ingest/upload`, kept under `<data-dir>/uploads`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use lore_ingest::{ChunkerConfig, WalkOptions};
use lore_retrieve::KnowledgeBase;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{ApiError, ApiJson, ApiResult};
use super::jobs::{Control, Job, JobKind, JobResponse, JobState};
use super::state::AppState;
use super::upload::{self, safe_name};
use crate::pipeline::{self, IngestReport, IngestRequest, Plan};
use crate::progress::{Counters, Progress};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestBody {
    /// Folders or files on the server, each under an allowed root (`--allow-root`).
    pub paths: Vec<String>,
    /// Tags for every chunk of these files (for `tag:KEY=VALUE` filters).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Only files whose relative path matches one of these globs.
    #[serde(default)]
    pub include: Vec<String>,
    /// Leave out files whose relative path matches one of these globs.
    #[serde(default)]
    pub exclude: Vec<String>,
}

fn check_tags(tags: &BTreeMap<String, String>) -> ApiResult<()> {
    for (k, v) in tags {
        lore_retrieve::search::validate_tag(k, v).map_err(ApiError::bad_request)?;
    }
    Ok(())
}

fn request(
    state: &AppState,
    roots: Vec<PathBuf>,
    tags: BTreeMap<String, String>,
    walk: WalkOptions,
    exclude_data_dir: bool,
) -> IngestRequest {
    let c = &state.config;
    IngestRequest {
        roots,
        walk: WalkOptions {
            max_file_bytes: c.max_file_bytes,
            ..walk
        },
        chunker: ChunkerConfig {
            max_tokens: c.chunk_tokens,
            overlap_tokens: c.overlap_tokens,
        },
        rebuild: false,
        commit_chunks: c.commit_chunks,
        tags,
        store: c.store.clone(),
        exclude_data_dir,
    }
}

/// Starts ingesting server-side folders or files (incremental, as `lore ingest`).
#[utoipa::path(post, path = "/v1/ingest", request_body = IngestBody,
    responses((status = 202, body = JobResponse), (status = 400, description = "bad paths, globs or tags"),
              (status = 403, description = "a path outside the allowed roots")))]
pub async fn from_paths(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<IngestBody>,
) -> ApiResult<(StatusCode, Json<JobResponse>)> {
    refuse_when_draining(&state)?;
    if body.paths.is_empty() {
        return Err(ApiError::bad_request(
            "`paths` is empty: name folders or files to ingest",
        ));
    }
    let roots = body
        .paths
        .iter()
        .map(|p| state.config.allowed_path(p))
        .collect::<ApiResult<Vec<_>>>()?;
    check_tags(&body.tags)?;
    let walk = WalkOptions {
        include: body.include,
        exclude: body.exclude,
        ..WalkOptions::default()
    };
    walk.check()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let request = request(&state, roots, body.tags, walk, true);
    start(&state, request, Origin::Paths)
}

fn refuse_when_draining(state: &AppState) -> ApiResult<()> {
    if state.draining() {
        return Err(ApiError::unavailable("shutting down: no new jobs"));
    }
    Ok(())
}

/// Uploads files (multipart `file` parts; an optional `tags` part holds a JSON object) and
/// starts ingesting them. A file of the same name replaces the earlier upload.
#[utoipa::path(post, path = "/v1/ingest/upload",
    request_body(content_type = "multipart/form-data", description = "`file` parts (repeatable) and an optional `tags` JSON object"),
    responses((status = 202, body = JobResponse), (status = 400, description = "no files, or a bad name"),
              (status = 413, description = "too large")))]
pub async fn upload(
    State(state): State<AppState>,
    mut multipart: Multipart,
) -> ApiResult<(StatusCode, Json<JobResponse>)> {
    // Before the body is read, so that nothing is stored for a job that cannot run.
    refuse_when_draining(&state)?;
    let _receiving = state.upload_limit.admit()?;
    let max_file_bytes = state.config.max_file_bytes;
    let dir = state.config.uploads_dir();
    // Streamed to temporary files in the uploads folder; renamed into place only once the
    // whole form is good, and removed (by drop) when it is not.
    let mut files: Vec<(String, tempfile::NamedTempFile)> = Vec::new();
    let mut tags = BTreeMap::new();
    while let Some(field) = multipart.next_field().await? {
        match field.name() {
            Some("file") => {
                let given = field.file_name().unwrap_or_default().to_string();
                let name = safe_name(&given).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "the file name `{}` is not usable: give a plain name such as notes.md",
                        given.escape_debug()
                    ))
                })?;
                let tmp = upload::receive(field, &dir, &name, max_file_bytes).await?;
                files.push((name, tmp));
            }
            Some("tags") => {
                let text = field.text().await?;
                tags = serde_json::from_str(&text).map_err(|e| {
                    ApiError::bad_request(format!("`tags` must be a JSON object of strings: {e}"))
                })?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unexpected form field `{}`: send `file` parts (and optionally `tags`)",
                    other.unwrap_or("").escape_debug()
                )));
            }
        }
    }
    if files.is_empty() {
        return Err(ApiError::bad_request("no `file` parts in the upload"));
    }
    check_tags(&tags)?;
    let roots = tokio::task::spawn_blocking(move || {
        files
            .into_iter()
            .map(|(name, tmp)| {
                // A crash leaves the old file or the new one under this name, never half.
                let path = dir.join(name);
                tmp.persist(&path).map_err(|e| e.error)?;
                Ok(path)
            })
            .collect::<std::io::Result<Vec<_>>>()
    })
    .await?
    .map_err(|e| ApiError::internal(format!("storing the upload: {e}")))?;
    let request = request(&state, roots, tags, WalkOptions::default(), false);
    start(&state, request, Origin::Upload)
}

/// Where an ingest job's files came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Paths,
    /// Uploaded into `<data-dir>/uploads`: files the run skipped are deleted again, since
    /// nothing would refer to them (and `DELETE /v1/documents` could not reach them).
    Upload,
}

fn start(
    state: &AppState,
    request: IngestRequest,
    origin: Origin,
) -> ApiResult<(StatusCode, Json<JobResponse>)> {
    let counters = Arc::new(Counters::default());
    let job = Job::new(JobKind::Ingest, Control::Ingest(Arc::clone(&counters)));
    state.jobs.add(Arc::clone(&job), state.config.max_jobs)?;
    let (state2, job2) = (state.clone(), Arc::clone(&job));
    std::thread::Builder::new()
        .name("lore-ingest".into())
        .spawn(move || run_job(&state2, &job2, &request, counters, origin))
        .map_err(|e| ApiError::internal(format!("cannot start an ingest thread: {e}")))?;
    Ok((StatusCode::ACCEPTED, Json(JobResponse { job: job.view() })))
}

fn run_job(
    state: &AppState,
    job: &Job,
    request: &IngestRequest,
    counters: Arc<Counters>,
    origin: Origin,
) {
    let Some(_turn) = job.wait_turn(&state.jobs.ingest_turn) else {
        return;
    };
    job.set_running();
    // A panic must still end the job (and release its turn unpoisoned), or the job would
    // show `running` forever and deletions would wait for it.
    let outcome = catch_panic(|| ingest(state, request, counters));
    if origin == Origin::Upload
        && let Ok(report) = &outcome
    {
        remove_skipped_uploads(state, report);
    }
    match outcome {
        Ok(report) => {
            let end = if report.cancelled {
                JobState::Cancelled
            } else {
                JobState::Succeeded
            };
            tracing::info!(job = %job.id, new = report.new, changed = report.changed, removed = report.removed, "ingest finished");
            job.finish(end, serde_json::to_value(&report).ok(), None);
        }
        Err(e) => {
            tracing::warn!(job = %job.id, "ingest failed: {e:#}");
            job.finish(JobState::Failed, None, Some(format!("{e:#}")));
        }
    }
}

/// One ingest run against the shared knowledge base: reopened for writing (which checks
/// the model and recovers an interrupted run), run with locks per commit so searches go
/// on, then closed (compacting the vector log) and reopened for searching.
fn ingest(
    state: &AppState,
    request: &IngestRequest,
    counters: Arc<Counters>,
) -> anyhow::Result<IngestReport> {
    let dir = &state.config.data_dir;
    let embedder = &state.models.embedder;
    let plan = Plan::new(dir, embedder, state.models.tokenizer.clone(), request)?;
    {
        let mut slot = state.kb.write();
        // One process holds the store's lock once: release the searching handle first.
        *slot = None;
        match KnowledgeBase::open(dir, &plan.open_options(embedder, request)) {
            Ok(kb) => *slot = Some(kb),
            Err(e) => {
                *slot = reopen(state);
                return Err(e.into());
            }
        }
    }
    let progress = Progress::reporting(counters);
    // Caught here too, so that the knowledge base is closed and reopened below either way.
    let result = catch_panic(|| pipeline::run(&state.kb, plan, embedder, request, &progress));
    let mut slot = state.kb.write();
    if let Some(kb) = slot.take() {
        match kb.close() {
            Ok(_) => {}
            Err(e) => tracing::warn!("closing the knowledge base after ingest: {e}"),
        }
    }
    *slot = reopen(state);
    result
}

/// Opens the knowledge base for searching again after a job held it for writing.
fn reopen(state: &AppState) -> Option<KnowledgeBase> {
    match KnowledgeBase::open_existing(&state.config.data_dir, &state.config.store) {
        Ok(kb) => {
            state.kb.set_problem(None);
            Some(kb)
        }
        // Nothing ingested yet: searches say so.
        Err(lore_retrieve::Error::NotAKnowledgeBase(_) | lore_retrieve::Error::Empty(_)) => {
            state.kb.set_problem(None);
            None
        }
        Err(e) => {
            // Searches answer 503 with this until an ingest reopens it.
            tracing::error!("reopening the knowledge base after ingest: {e}");
            state.kb.set_problem(Some(format!(
                "the knowledge base could not be reopened after the last ingest ({e}); \
                 `lore status --verify` checks it, and the next ingest retries"
            )));
            None
        }
    }
}

/// Runs `f`, turning a panic into an error (the panic hook has already logged it).
fn catch_panic<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        Err(anyhow::anyhow!(
            "the ingest stopped on an internal error ({what}); the server log has details"
        ))
    })
}

/// Deletes uploaded files the run skipped (unreadable, empty, too large): they are not in
/// the knowledge base, so nothing else would ever remove them.
fn remove_skipped_uploads(state: &AppState, report: &IngestReport) {
    let Ok(uploads) = state.config.uploads_dir().canonicalize() else {
        return;
    };
    let kb = state.kb.read();
    for skipped in &report.skipped_files {
        let path = Path::new(&skipped.path);
        let recorded = kb
            .as_ref()
            .is_some_and(|kb| kb.manifest().files.contains_key(&skipped.path));
        if path.parent() == Some(uploads.as_path())
            && !recorded
            && let Err(e) = std::fs::remove_file(path)
        {
            tracing::warn!("removing the skipped upload {}: {e}", path.display());
        }
    }
}
