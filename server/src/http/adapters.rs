//! LoRA adapters served per request: `GET /v1/adapters`, `POST /v1/adapters` (load),
//! `DELETE /v1/adapters/{name}` (unload).

use std::path::PathBuf;

use axum::Json;
use axum::extract::{Path, State};
use lore_finetune::LmWorker;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiJson, ApiResult};
use super::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct AdapterOut {
    pub name: String,
    pub path: String,
    /// Whether requests may name it now (`model` or `adapter`).
    pub loaded: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdapterList {
    pub adapters: Vec<AdapterOut>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadBody {
    /// The name requests will use.
    pub name: String,
    /// A PEFT adapter folder under an allowed root; absent: `<data-dir>/adapters/NAME`
    /// (where fine-tune jobs write).
    #[serde(default)]
    pub path: Option<String>,
}

/// Checks an adapter name: it becomes a folder name and a `model` id.
pub fn check_name(state: &AppState, name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(ApiError::bad_request(format!(
            "adapter name `{name}`: use 1–64 letters, digits, `-`, `_` or `.`"
        )));
    }
    if name == "default" || name == state.models.generator.name() {
        return Err(ApiError::bad_request(format!(
            "`{name}` names the base model; choose another adapter name"
        )));
    }
    Ok(())
}

/// `name`, when an adapter of that name is loaded: 404 otherwise (400 on a server whose
/// answers come from a remote endpoint, which serves no adapters of ours).
pub fn loaded(state: &AppState, name: &str) -> ApiResult<String> {
    if worker(state)?.adapters().contains_key(name) {
        Ok(name.to_string())
    } else {
        Err(ApiError::not_found(format!(
            "no adapter named `{name}` is loaded (GET /v1/adapters lists them)"
        )))
    }
}

fn worker(state: &AppState) -> ApiResult<&LmWorker> {
    state.models.local().ok_or_else(|| {
        ApiError::bad_request(
            "adapters apply to the local model; this server answers with a remote endpoint",
        )
    })
}

/// Lists loaded adapters and those fine-tune jobs left in `<data-dir>/adapters`.
#[utoipa::path(get, path = "/v1/adapters", responses((status = 200, body = AdapterList)))]
pub async fn list(State(state): State<AppState>) -> Json<AdapterList> {
    let loaded = state
        .models
        .local()
        .map(LmWorker::adapters)
        .unwrap_or_default();
    let mut adapters: Vec<AdapterOut> = loaded
        .iter()
        .map(|(name, path)| AdapterOut {
            name: name.clone(),
            path: path.display().to_string(),
            loaded: true,
        })
        .collect();
    if let Ok(entries) = std::fs::read_dir(state.config.adapters_dir()) {
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.join("adapter_config.json").is_file() && !loaded.contains_key(&name) {
                adapters.push(AdapterOut {
                    name,
                    path: path.display().to_string(),
                    loaded: false,
                });
            }
        }
    }
    adapters.sort_by(|a, b| a.name.cmp(&b.name));
    Json(AdapterList { adapters })
}

/// Loads (or reloads) a PEFT adapter over the base model.
#[utoipa::path(post, path = "/v1/adapters", request_body = LoadBody,
    responses((status = 200, body = AdapterOut), (status = 400, description = "bad name or not an adapter for this base"),
              (status = 403, description = "a path outside the allowed roots"), (status = 404, description = "no such adapter folder")))]
pub async fn load(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LoadBody>,
) -> ApiResult<Json<AdapterOut>> {
    check_name(&state, &body.name)?;
    let dir: PathBuf = match &body.path {
        Some(p) => state.config.allowed_path(p)?,
        None => {
            let dir = state.config.adapters_dir().join(&body.name);
            if !dir.is_dir() {
                return Err(ApiError::not_found(format!(
                    "no adapter folder {} (give `path`, or fine-tune one with this name)",
                    dir.display()
                )));
            }
            dir
        }
    };
    worker(&state)?;
    let (state2, name, dir2) = (state.clone(), body.name.clone(), dir.clone());
    tokio::task::spawn_blocking(move || {
        let worker = worker(&state2)?;
        // An adapter that records its base is refused over other weights (hashing the base
        // takes about a second per GB).
        let config = &state2.config;
        if let Ok(base) = lore_finetune::resolve_model(&config.base_model, &config.models_dir) {
            crate::adapter_base::check(&dir2, &config.base_model, &base)
                .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
        }
        worker.load_adapter(&name, &dir2).map_err(ApiError::from)
    })
    .await??;
    tracing::info!(name = %body.name, dir = %dir.display(), "adapter loaded");
    Ok(Json(AdapterOut {
        name: body.name,
        path: dir.display().to_string(),
        loaded: true,
    }))
}

/// Unloads an adapter; requests naming it then get 404.
#[utoipa::path(delete, path = "/v1/adapters/{name}", params(("name" = String, Path)),
    responses((status = 200, body = AdapterOut), (status = 404, description = "not loaded")))]
pub async fn unload(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<AdapterOut>> {
    let path = worker(&state)?
        .adapters()
        .get(&name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no adapter named `{name}` is loaded")))?;
    let (state2, name2) = (state.clone(), name.clone());
    tokio::task::spawn_blocking(move || {
        worker(&state2)?
            .unload_adapter(&name2)
            .map_err(ApiError::from)
    })
    .await??;
    Ok(Json(AdapterOut {
        name,
        path: path.display().to_string(),
        loaded: false,
    }))
}
