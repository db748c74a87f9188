//! The web page: plain HTML, CSS and JavaScript compiled into the binary (no build step).

use axum::extract::Path;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

use super::error::ApiError;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

pub async fn index() -> Html<&'static str> {
    Html(INDEX)
}

/// No icon: 204 rather than a 401 or 404 in the browser's console.
pub async fn favicon() -> axum::http::StatusCode {
    axum::http::StatusCode::NO_CONTENT
}

pub async fn file(Path(name): Path<String>) -> Result<Response, ApiError> {
    let (body, kind) = match name.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        _ => return Err(ApiError::not_found(format!("no asset named {name}"))),
    };
    Ok(([(header::CONTENT_TYPE, kind)], body).into_response())
}
