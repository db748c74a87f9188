//! The OpenAPI document of the whole API, derived from the handlers' annotations and
//! request/response types, at `/openapi.json`.

use axum::Json;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use super::{adapters, ask, documents, embeddings, finetune, ingest, jobs, openai, search, tei};

#[derive(OpenApi)]
#[openapi(
    info(title = "lore", description = "Search, ask, embed, ingest and fine-tune over a knowledge base. \
        With an API key set, send `Authorization: Bearer KEY` (all but /health and the page)."),
    paths(
        search::search, ask::ask,
        openai::chat_completions, embeddings::embeddings, openai::models, openai::model,
        tei::embed, tei::info, tei::tokenize,
        ingest::from_paths, ingest::upload,
        documents::list, documents::delete,
        jobs::list, jobs::get, jobs::cancel,
        finetune::start,
        adapters::list, adapters::load, adapters::unload,
    ),
    components(schemas(
        search::SearchBody, search::SearchResponse, search::HitOut, search::OneOrMany,
        ask::AskBody, ask::AskResponse, ask::Source, ask::Usage,
        openai::ChatCompletionBody, openai::ChatMessageIn, openai::StreamOptions,
        embeddings::EmbeddingsBody, embeddings::EmbeddingOut,
        tei::EmbedBody, tei::TokenizeBody,
        ingest::IngestBody, documents::DocumentList, documents::DocumentOut, documents::Deleted,
        jobs::JobView, jobs::JobResponse, jobs::JobList, jobs::JobKind, jobs::JobState,
        finetune::FinetuneBody,
        adapters::AdapterList, adapters::AdapterOut, adapters::LoadBody,
    )),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document, with the operational endpoints the annotations do not cover.
pub fn document_value() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        for (path, summary) in [
            ("/health", "Liveness (no key needed)."),
            ("/ready", "Readiness: 503 while shutting down."),
            ("/metrics", "Prometheus metrics."),
            ("/openapi.json", "This document."),
        ] {
            paths.insert(
                path.to_string(),
                serde_json::json!({"get": {"summary": summary, "responses": {"200": {"description": "OK"}}}}),
            );
        }
    }
    doc
}

pub async fn document() -> Json<serde_json::Value> {
    Json(document_value())
}
