//! What the knowledge base holds: `GET /v1/documents`, `DELETE /v1/documents?path=…`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Query, State};
use lore_retrieve::Batch;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiResult};
use super::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentOut {
    /// The stored key: the file's canonical path.
    pub path: String,
    /// markdown, text, html, pdf or code.
    #[schema(value_type = String)]
    pub kind: lore_ingest::DocKind,
    pub chunks: usize,
    pub bytes: u64,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentList {
    pub documents: Vec<DocumentOut>,
}

/// Lists the ingested files.
#[utoipa::path(get, path = "/v1/documents", responses((status = 200, body = DocumentList)))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<DocumentList>> {
    let documents = state
        .read_kb(|kb| {
            kb.map(|kb| {
                kb.manifest()
                    .files
                    .iter()
                    .map(|(path, e)| DocumentOut {
                        path: path.clone(),
                        kind: e.kind,
                        chunks: e.chunk_ids.len(),
                        bytes: e.size,
                        tags: e.tags.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
        })
        .await?;
    Ok(Json(DocumentList { documents }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct DocumentPath {
    /// The document's stored path, as `GET /v1/documents` lists it.
    pub path: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    pub path: String,
    pub chunks_deleted: usize,
}

/// Removes a document's chunks from both stores (and its file, if it was uploaded).
#[utoipa::path(delete, path = "/v1/documents", params(DocumentPath),
    responses((status = 200, body = Deleted), (status = 404, description = "no such document"),
              (status = 409, description = "an ingest is running")))]
pub async fn delete(
    State(state): State<AppState>,
    query: Result<Query<DocumentPath>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Deleted>> {
    let Query(DocumentPath { path }) = query?;
    let state2 = state.clone();
    tokio::task::spawn_blocking(move || {
        // Deleting under a running ingest could race its removal list: refuse instead.
        // (A poisoned turn is free: the job that held it has ended.)
        let _turn = match state2.jobs.ingest_turn.try_lock() {
            Ok(turn) => turn,
            Err(std::sync::TryLockError::Poisoned(turn)) => turn.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(ApiError::new(
                    axum::http::StatusCode::CONFLICT,
                    "an ingest job is running; delete when it has finished",
                ));
            }
        };
        let mut slot = state2.kb.write();
        let kb = slot
            .as_mut()
            .filter(|kb| kb.manifest().files.contains_key(&path))
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no document `{path}` (GET /v1/documents lists them)"
                ))
            })?;
        let stats = kb.apply(Batch {
            updates: Vec::new(),
            removals: vec![path.clone()],
        })?;
        // An uploaded file goes too: nothing else refers to it.
        let uploads = state2.config.uploads_dir().canonicalize().ok();
        if let Some(uploads) = uploads
            && std::path::Path::new(&path).parent() == Some(uploads.as_path())
            && let Err(e) = std::fs::remove_file(&path)
        {
            tracing::warn!("removing the uploaded file {path}: {e}");
        }
        Ok(Json(Deleted {
            path,
            chunks_deleted: stats.chunks_deleted,
        }))
    })
    .await?
}
