//! The composition root of lore: it joins `ingest`, `embed`, `retrieve` and `finetune` into
//! the ingest pipeline and the HTTP server. The `lore` binary (`src/main.rs`) is the command
//! line over the same parts.
//!
//! - [`pipeline`]: one ingest run (walk → chunk → embed → commit), shared by `lore ingest`
//!   and the server's ingest jobs.
//! - [`http`]: the axum application ([`http::app`]) and its runner ([`http::run`]).
//! - [`adapter_base`]: the base model an adapter was trained on, recorded and checked.
//! - [`answer`]: the retrieval-augmented prompt turned into chat messages (CLI and HTTP).
//!
//! ```no_run
//! # async fn demo(state: lore_server::http::AppState) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! lore_server::http::run(state, listener, std::future::pending()).await
//! # }
//! ```

pub mod adapter_base;
pub mod answer;
pub mod http;
pub mod pipeline;
pub mod progress;
