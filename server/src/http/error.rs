//! Every failure an endpoint returns, mapped once to a status and OpenAI's error body
//! `{"error": {"message", "type", "param", "code"}}`. Internal details are logged, not
//! returned.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error as the client sees it.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault, as OpenAI names it (`tools`, `n`, `model`).
    pub param: Option<&'static str>,
    /// A machine-readable reason, as OpenAI gives (`unsupported_parameter`,
    /// `model_not_found`).
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// Names the request field at fault.
    pub fn param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    /// Gives a machine-readable reason.
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// 400 for a field whose value asks for something lore does not do: refused rather than
    /// ignored, so a client never mistakes an answer for what it asked.
    pub fn unsupported(param: &'static str, message: impl Into<String>) -> Self {
        Self::bad_request(message)
            .param(param)
            .code("unsupported_parameter")
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 403: a path outside the allowed roots, or an operation the configuration forbids.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 429: a model's concurrency limit is reached; the client should retry later.
    pub fn overloaded(what: &str) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("the {what} is busy with as many requests as it may queue; retry shortly"),
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 500: our fault. The details go to the log; the client gets a reference to them.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        tracing::error!(error_id = %id, "internal error: {err:#}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error (logged as {id})"),
        )
    }

    /// The OpenAI error type for this status.
    pub fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable_error",
            s if s.is_client_error() => "invalid_request_error",
            _ => "server_error",
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let message = match &rejection {
            JsonRejection::JsonDataError(e) => format!("invalid request body: {}", e.body_text()),
            JsonRejection::JsonSyntaxError(e) => format!("malformed JSON: {}", e.body_text()),
            JsonRejection::MissingJsonContentType(_) => {
                "expected a JSON body with `Content-Type: application/json`".to_string()
            }
            other if status == StatusCode::PAYLOAD_TOO_LARGE => {
                format!("the request body is too large ({})", other.body_text())
            }
            other => other.body_text(),
        };
        Self::new(status, message)
    }
}

impl From<axum::extract::multipart::MultipartError> for ApiError {
    fn from(err: axum::extract::multipart::MultipartError) -> Self {
        Self::new(
            err.status(),
            format!("reading the upload: {}", err.body_text()),
        )
    }
}

impl From<axum::extract::multipart::MultipartRejection> for ApiError {
    fn from(rejection: axum::extract::multipart::MultipartRejection) -> Self {
        Self::new(
            rejection.status(),
            format!("expected a multipart form: {}", rejection.body_text()),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(rejection.status(), rejection.body_text())
    }
}

impl From<lore_retrieve::Error> for ApiError {
    fn from(err: lore_retrieve::Error) -> Self {
        if let lore_retrieve::Error::Embed(e) = err {
            return e.into();
        }
        match &err {
            lore_retrieve::Error::Locked(_) | lore_retrieve::Error::LeaseHeld { .. } => {
                Self::new(StatusCode::CONFLICT, err.to_string())
            }
            e if e.is_user_error() => Self::bad_request(err.to_string()),
            _ => Self::internal(err),
        }
    }
}

impl From<lore_embed::Error> for ApiError {
    fn from(err: lore_embed::Error) -> Self {
        match &err {
            lore_embed::Error::WorkerGone => Self::unavailable("the embedding model has stopped"),
            e if e.is_user_error() => Self::bad_request(err.to_string()),
            _ => Self::internal(err),
        }
    }
}

impl From<lore_finetune::Error> for ApiError {
    fn from(err: lore_finetune::Error) -> Self {
        match err {
            lore_finetune::Error::Request(m) => Self::bad_request(m),
            lore_finetune::Error::Remote(m) => Self::new(
                StatusCode::BAD_GATEWAY,
                format!("the remote language model failed: {m}"),
            ),
            e if e.is_user_error() => Self::bad_request(e.to_string()),
            // A disk failure is the server's, not the client's (500, logged).
            other => Self::internal(other),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(err: tokio::task::JoinError) -> Self {
        Self::internal(format!("a worker task failed: {err}"))
    }
}

/// JSON bodies whose rejections (syntax, types, size) come back as [`ApiError`]s.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

pub type ApiResult<T> = Result<T, ApiError>;
