//! Fine-tune jobs (`POST /v1/finetune`): `lore finetune` in a child process, so training
//! gets its own allocator settings and every core without slowing the server's threads,
//! and a crash in it cannot take the server down. Its `--events` lines are the job's
//! progress; SIGINT (cancel, shutdown) makes it checkpoint, and `resume` continues.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use lore_finetune::Progress;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::adapters::check_name;
use super::error::{ApiError, ApiResult};
use super::jobs::{Control, Job, JobKind, JobResponse, JobState, lock};
use super::state::AppState;

/// A fine-tune request. As JSON, `data_path` names a dataset under an allowed root; as
/// multipart, a `data` file part carries it and the other fields come as text parts.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FinetuneBody {
    /// The adapter's name: it is written to `<data-dir>/adapters/NAME`.
    pub name: String,
    /// JSONL, JSON or CSV (any of `lore finetune`'s row shapes).
    #[serde(default)]
    pub data_path: Option<String>,
    #[serde(default)]
    pub epochs: Option<usize>,
    #[serde(default)]
    pub lr: Option<f64>,
    #[serde(default)]
    pub lora_r: Option<usize>,
    #[serde(default)]
    pub lora_alpha: Option<f64>,
    #[serde(default)]
    pub batch_size: Option<usize>,
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// A system message for rows without one.
    #[serde(default)]
    pub system: Option<String>,
    /// Continue the checkpoint a cancelled run left (same settings and data).
    #[serde(default)]
    pub resume: bool,
    /// Load the adapter when training succeeds (default true).
    #[serde(default)]
    pub load: Option<bool>,
}

/// Starts training a LoRA adapter on the base model.
#[utoipa::path(post, path = "/v1/finetune", request_body = FinetuneBody,
    responses((status = 202, body = JobResponse), (status = 400, description = "bad settings or dataset"),
              (status = 403, description = "a dataset outside the allowed roots"),
              (status = 409, description = "the adapter exists (pass resume, or another name)")))]
pub async fn start(
    State(state): State<AppState>,
    request: Request,
) -> ApiResult<(StatusCode, Json<JobResponse>)> {
    if state.draining() {
        return Err(ApiError::unavailable("shutting down: no new jobs"));
    }
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    // Held while the dataset streams in; a JSON request carries none.
    let mut _receiving = None;
    let (body, upload) = if multipart {
        _receiving = Some(state.upload_limit.admit()?);
        let form = Multipart::from_request(request, &state).await?;
        read_form(
            form,
            &state.config.finetune_dir(),
            state.config.max_file_bytes,
        )
        .await?
    } else {
        let super::error::ApiJson(body) =
            super::error::ApiJson::<FinetuneBody>::from_request(request, &state).await?;
        (body, None)
    };
    check_name(&state, &body.name)?;
    check_text("system", body.system.as_deref())?;
    let output = state.config.adapters_dir().join(&body.name);
    if output.exists() && !body.resume {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "an adapter named `{}` exists: pass `resume: true` to continue its run, or choose another name",
                body.name
            ),
        ));
    }
    let job = Job::named(
        JobKind::Finetune,
        Control::Finetune {
            pid: Mutex::new(None),
            cancel: AtomicBool::new(false),
            progress: Mutex::new(json!({})),
        },
        body.name.clone(),
    );
    let work = state.config.finetune_dir().join(&job.id);
    let data: PathBuf = match (upload, &body.data_path) {
        (Some((ext, tmp)), None) => {
            let path = work.join(format!("data.{ext}"));
            let (w, p) = (work.clone(), path.clone());
            tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&w)?;
                tmp.persist(&p).map(drop).map_err(|e| e.error)
            })
            .await?
            .map_err(|e| ApiError::internal(format!("storing the dataset: {e}")))?;
            path
        }
        (None, Some(p)) => state.config.allowed_path(p)?,
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "send a `data` file or `data_path`, not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "no dataset: upload a `data` file (multipart) or give `data_path`",
            ));
        }
    };
    if !data.is_file() {
        return Err(ApiError::bad_request(format!(
            "{} is not a file",
            data.display()
        )));
    }
    std::fs::create_dir_all(&work)
        .and_then(|()| std::fs::create_dir_all(state.config.adapters_dir()))
        .map_err(|e| ApiError::internal(format!("creating {}: {e}", work.display())))?;
    let args = child_args(&state.config, &body, &data, &output);
    if let Err(e) = state.jobs.add(Arc::clone(&job), state.config.max_jobs) {
        // Shutdown began during the upload, or the server has its fill of jobs: nothing
        // will run in the job's folder.
        let _ = std::fs::remove_dir_all(&work);
        return Err(e);
    }
    let (state2, job2) = (state.clone(), Arc::clone(&job));
    let load = body
        .load
        .unwrap_or(true)
        .then(|| (body.name.clone(), output.clone()));
    std::thread::Builder::new()
        .name("lore-finetune-job".into())
        .spawn(move || supervise(&state2, &job2, args, work, load))
        .map_err(|e| ApiError::internal(format!("cannot start a job thread: {e}")))?;
    Ok((StatusCode::ACCEPTED, Json(JobResponse { job: job.view() })))
}

/// Reads the multipart form: the `data` file (its extension kept: it picks the parser),
/// streamed to a temporary file in `dir`, and the settings as text parts.
async fn read_form(
    mut form: Multipart,
    dir: &std::path::Path,
    max_bytes: u64,
) -> ApiResult<(FinetuneBody, Option<(String, tempfile::NamedTempFile)>)> {
    let mut fields = serde_json::Map::new();
    let mut upload = None;
    while let Some(field) = form.next_field().await? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "data" {
            let file = field.file_name().unwrap_or_default().to_lowercase();
            let ext = ["jsonl", "json", "csv"]
                .into_iter()
                .find(|e| file.ends_with(&format!(".{e}")))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "the dataset `{}` must be a .jsonl, .json or .csv file",
                        file.escape_debug()
                    ))
                })?;
            let tmp = super::upload::receive(field, dir, &file, max_bytes).await?;
            upload = Some((ext.to_string(), tmp));
            continue;
        }
        let text = field.text().await?;
        // Numbers and booleans arrive as text; JSON-parse them, keep the rest as strings.
        let value = match name.as_str() {
            "name" | "system" | "data_path" => Value::String(text),
            _ => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        };
        fields.insert(name, value);
    }
    let body = serde_json::from_value(Value::Object(fields)).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid form: {e}"),
        )
    })?;
    Ok((body, upload))
}

/// A free-text setting passed to the training child: any text but NUL (which no argument
/// can carry) and at most 64 KiB.
fn check_text(field: &str, value: Option<&str>) -> ApiResult<()> {
    match value {
        Some(v) if v.contains('\0') => Err(ApiError::bad_request(format!(
            "`{field}` contains a NUL character"
        ))),
        Some(v) if v.len() > 64 * 1024 => Err(ApiError::bad_request(format!(
            "`{field}` is {} bytes; at most 65536",
            v.len()
        ))),
        _ => Ok(()),
    }
}

/// The training child's command line.
fn child_args(
    config: &super::state::ServerConfig,
    body: &FinetuneBody,
    data: &std::path::Path,
    output: &std::path::Path,
) -> Vec<String> {
    let mut args = vec![
        format!("--models-dir={}", config.models_dir.display()),
        "finetune".into(),
        format!("--data={}", data.display()),
        format!("--output={}", output.display()),
        format!("--base={}", config.base_model),
        "--json".into(),
        "--events".into(),
    ];
    // `--flag=value`, one argument: a value that starts with `-` (a system message of
    // "--resume") is then a value, never a flag of its own.
    let mut opt = |flag: &str, value: Option<String>| {
        if let Some(v) = value {
            args.push(format!("{flag}={v}"));
        }
    };
    opt("--epochs", body.epochs.map(|v| v.to_string()));
    opt("--lr", body.lr.map(|v| v.to_string()));
    opt("--lora-r", body.lora_r.map(|v| v.to_string()));
    opt("--lora-alpha", body.lora_alpha.map(|v| v.to_string()));
    opt("--batch-size", body.batch_size.map(|v| v.to_string()));
    opt("--max-steps", body.max_steps.map(|v| v.to_string()));
    opt("--system", body.system.clone());
    if body.resume {
        args.push("--resume".into());
    }
    args
}

/// Runs the child to its end, turning its event lines into progress, then records the
/// outcome (and loads the adapter if asked).
fn supervise(
    state: &AppState,
    job: &Job,
    args: Vec<String>,
    work: PathBuf,
    load: Option<(String, PathBuf)>,
) {
    let Some(_turn) = job.wait_turn(&state.jobs.finetune_turn) else {
        return;
    };
    let Control::Finetune { pid, progress, .. } = &job.control else {
        return;
    };
    let log_path = work.join("train.log");
    let spawned = std::fs::File::create(&log_path).and_then(|log| {
        Command::new(&state.config.lore_exe)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
    });
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            job.finish(
                JobState::Failed,
                None,
                Some(format!("cannot start training: {e}")),
            );
            return;
        }
    };
    *lock(pid) = Some(child.id());
    job.set_running();
    // A cancel that came between the check above and the pid being known.
    if job.cancel_requested() {
        job.cancel();
    }
    let mut result = None;
    if let Some(stdout) = child.stdout.take() {
        let mut first_step: Option<(usize, f64)> = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // Progress events, then the run's one result object.
            if let Ok(event) = serde_json::from_str::<Progress>(&line) {
                update(&mut lock(progress), &event, &mut first_step);
            } else if let Ok(value) = serde_json::from_str::<Value>(&line)
                && value.get("event").is_none()
            {
                result = Some(value);
            }
        }
    }
    // Not signalled from here on: once reaped, the pid may name another process.
    *lock(pid) = None;
    let status = child.wait();
    match status.as_ref().map(|s| s.code()) {
        Ok(Some(0)) => match load_trained(state, load) {
            Ok(loaded) => {
                // Whether `model: NAME` now reaches it.
                if let Some(Value::Object(r)) = &mut result {
                    r.insert("loaded".into(), Value::Bool(loaded));
                }
                job.finish(JobState::Succeeded, result, None);
            }
            Err(why) => job.finish(JobState::Failed, result, Some(why)),
        },
        Ok(Some(130)) => job.finish(
            JobState::Cancelled,
            result,
            Some(
                "stopped; a checkpoint was saved: start again with `resume: true` to continue"
                    .into(),
            ),
        ),
        other => {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last: Vec<&str> = tail.lines().rev().take(5).collect();
            let why = last.into_iter().rev().collect::<Vec<_>>().join("\n");
            job.finish(
                JobState::Failed,
                result,
                Some(format!("training failed ({other:?}): {why}")),
            );
        }
    }
}

/// Loads a trained adapter when the request asked for it; `Ok(true)` when it is loaded.
fn load_trained(state: &AppState, load: Option<(String, PathBuf)>) -> Result<bool, String> {
    let Some((name, dir)) = load else {
        return Ok(false);
    };
    let Some(worker) = state.models.local() else {
        tracing::warn!(
            "adapter `{name}` trained but not loaded: this server answers with a remote endpoint"
        );
        return Ok(false);
    };
    worker
        .load_adapter(&name, &dir)
        .map(|()| true)
        .map_err(|e| format!("trained, but loading the adapter failed: {e}"))
}

/// Folds one training event into the job's progress, with an ETA from the steps so far.
fn update(progress: &mut Value, event: &Progress, first_step: &mut Option<(usize, f64)>) {
    let Some(p) = progress.as_object_mut() else {
        return;
    };
    match *event {
        Progress::Started {
            total_steps,
            resumed_from,
        } => {
            p.insert("total_steps".into(), json!(total_steps));
            p.insert("step".into(), json!(resumed_from));
        }
        Progress::Step {
            step,
            total_steps,
            epoch,
            loss,
            lr,
            elapsed_s,
            ..
        } => {
            p.insert("step".into(), json!(step));
            p.insert("total_steps".into(), json!(total_steps));
            p.insert("loss".into(), json!(loss));
            p.insert("lr".into(), json!(lr));
            p.insert("epoch".into(), json!(epoch));
            let (s0, t0) = *first_step.get_or_insert((step, elapsed_s));
            if step > s0 {
                let per_step = (elapsed_s - t0) / (step - s0) as f64;
                p.insert(
                    "eta_s".into(),
                    json!(per_step * total_steps.saturating_sub(step) as f64),
                );
            }
        }
        Progress::Eval { loss, .. } => {
            p.insert("val_loss".into(), json!(loss));
        }
        Progress::Saved { step, .. } => {
            p.insert("checkpoint_step".into(), json!(step));
        }
    }
}
