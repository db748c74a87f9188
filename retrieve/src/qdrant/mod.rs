//! A Qdrant server or cluster as the whole knowledge base, through `qdrant-client` 1.20 (gRPC,
//! usually port 6334).
//!
//! With a server, everything a `lore serve` replica needs lives in Qdrant, so any number of
//! replicas with empty data folders answer the same searches:
//! - `store.rs`: the chunk collection's dense vectors and payloads ([`QdrantServerStore`]);
//! - `bm25.rs`: BM25 as a sparse vector on the same points, IDF computed by the server;
//! - `catalog.rs`: a small sidecar collection (`<collection>_lore`) with the knowledge base's
//!   settings, one point per ingested file (the manifest) and a generation counter;
//! - `lease.rs`: the one-writer-at-a-time lease, a point in the sidecar collection.
//!
//! Every qdrant-client type stays inside this folder, so moving to a newer client touches only
//! it. The client is async and lore's stores are not: a [`Connection`] owns a current-thread
//! tokio runtime and blocks on it. Calling it from inside an async task panics in tokio
//! ("Cannot start a runtime from within a runtime"): async callers go through `spawn_blocking`.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use qdrant_client::Qdrant;
use tokio::runtime::Runtime;

use crate::{Error, Result};

mod bm25;
mod catalog;
mod lease;
mod store;

pub use bm25::Bm25Params;
pub use catalog::{CATALOG_FORMAT, Catalog, RemoteMeta, catalog_name};
pub use lease::{LEASE_TTL, Lease};
pub use store::{CollectionShape, OWNER_KEY, Owner, QdrantServerStore, ServerLexical};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Per request; a `wait=true` write counts until the server has applied it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One client and the runtime that drives it, shared by the stores, the catalog and the lease
/// of one knowledge base.
pub struct Connection {
    pub(crate) client: Qdrant,
    pub(crate) url: String,
    /// Always `Some` until drop, which shuts it down without blocking (see `Drop`).
    runtime: Option<Runtime>,
}

impl std::fmt::Debug for Connection {
    // Not derived: the client's config holds the API key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.url)
            .finish()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // A plain drop of a runtime blocks until its blocking pool stops, which panics when the
        // last owner is dropped inside an async task (e.g. at server shutdown).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn key_note(api_key: Option<&str>) -> &'static str {
    if api_key.is_some() {
        "with an API key"
    } else {
        "without an API key"
    }
}

impl Connection {
    /// Connects to the server at `url` (gRPC, e.g. `http://localhost:6334`). The client
    /// connects lazily; [`Connection::check`] makes a first request.
    pub fn new(url: &str, api_key: Option<&str>) -> Result<Arc<Self>> {
        let context = || format!("qdrant server {url} (connecting {})", key_note(api_key));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Store(format!("{}: cannot start a runtime: {e}", context())))?;
        let client = Qdrant::from_url(url)
            .api_key(api_key)
            .skip_compatibility_check()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| Error::Store(format!("{}: {e}", context())))?;
        let connection = Arc::new(Self {
            client,
            url: url.to_string(),
            runtime: Some(runtime),
        });
        // Connection and API key failures surface here, named, rather than at first use.
        connection.block_on(async {
            connection.client.list_collections().await.map_err(|e| {
                Error::Store(format!(
                    "{}: {e} (qdrant-client speaks gRPC, usually on port 6334)",
                    context()
                ))
            })
        })?;
        Ok(connection)
    }

    /// Runs `future` to completion on the connection's runtime. Safe from several threads at
    /// once (searches run concurrently with the lease's renewal).
    pub(crate) fn block_on<T>(&self, future: impl Future<Output = Result<T>>) -> Result<T> {
        match &self.runtime {
            Some(runtime) => runtime.block_on(future),
            None => Err(Error::Store(format!(
                "qdrant server {}: already shut down",
                self.url
            ))),
        }
    }

    /// An error about `what` on `collection`.
    pub(crate) fn err(&self, collection: &str, what: &str, e: impl Display) -> Error {
        Error::Store(format!(
            "qdrant server {}, collection {collection}: {what}: {e}",
            self.url
        ))
    }
}
