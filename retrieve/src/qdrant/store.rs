//! The chunk collection on a Qdrant server: dense vectors and payloads ([`QdrantServerStore`])
//! and the BM25 sparse vectors on the same points ([`ServerLexical`]).
//!
//! What this module absorbs:
//! - Writes are sent with `wait=true`: the server answers once the operation is applied and in
//!   its write-ahead log, so an acknowledged write is durable and `commit` has nothing left
//!   to do.
//! - The server builds its HNSW index in the background: [`VectorStore::optimize`] does nothing.
//! - Chunk ids are canonical UUID strings and become UUID point ids as they are, which the server
//!   echoes back in the same form.
//! - `From<String> for MatchValue` turns a string containing whitespace into a full-text match:
//!   keyword conditions are built from `MatchValue::Keyword` explicitly.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::Arc;

use lore_embed::Embedding;
use lore_ingest::{Chunk, ChunkId};
use qdrant_client::Payload;
use qdrant_client::qdrant::r#match::MatchValue;
use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::value::Kind;
use qdrant_client::qdrant::vectors_config::Config;
use qdrant_client::qdrant::with_payload_selector::SelectorOptions;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, Filter, GetPointsBuilder, Modifier,
    PayloadIncludeSelector, PointId, PointStruct, PointVectors, Query, QueryPointsBuilder,
    RetrievedPoint, ScrollPointsBuilder, SparseVectorParamsBuilder, SparseVectorsConfigBuilder,
    TextIndexParamsBuilder, TokenizerType, UpdateCollectionBuilder, UpdatePointVectorsBuilder,
    UpsertPointsBuilder, Vector, VectorInput, VectorOutput, VectorParams, VectorParamsBuilder,
    VectorsConfigBuilder, vector_output,
};
use serde_json::{Map, Value};

use super::Connection;
use super::bm25::{self, Bm25Params};
use crate::lexical::LexicalStore;
use crate::payload::{HEADING_FIELD, KEYWORD_FIELDS, from_payload, to_payload};
use crate::store::{ScoredId, StoreFilter, StoredChunk, VectorStore, check_dim, check_upsert};
use crate::{Error, Result};

const DENSE: &str = "dense";
/// The BM25 sparse vector (see `bm25.rs`).
const BM25: &str = "bm25";
/// Points per upsert request: keeps each gRPC message well under the server's size limit.
const UPSERT_BATCH: usize = 256;
/// Paths per delete request: keeps the filter small.
const DELETE_BATCH: usize = 512;
/// Ids per get request.
const GET_BATCH: usize = 1024;
/// Points per scroll page when listing ids.
const SCROLL_PAGE: u32 = 1024;

/// The collection metadata key that names the knowledge base a collection belongs to.
pub const OWNER_KEY: &str = "lore_knowledge_base";

/// Which knowledge base opens a collection, and whether it may take over one that is not
/// its own. A server collection outlives any data folder: without this, a new knowledge base
/// pointed at a filled collection emptied it, whoever had filled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The knowledge base's id (`kb.json`).
    pub id: String,
    /// Make a collection this knowledge base's even though it holds another's points, or
    /// points lore did not write (it is emptied when the knowledge base starts afresh).
    pub take_over: bool,
}

/// How a new collection is spread over a cluster; each setting given is also checked when an
/// existing collection is opened. `None` leaves it to the server (its defaults, or what the
/// operator chose when creating the collection).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CollectionShape {
    pub shards: Option<u32>,
    pub replication: Option<u32>,
    /// Replicas that must acknowledge a write before it counts (Qdrant's write consistency
    /// factor).
    pub write_consistency: Option<u32>,
    /// Keep vectors and payloads on disk (memory-mapped) rather than in memory.
    pub on_disk: Option<bool>,
}

/// One collection on a Qdrant server or cluster.
///
/// Every method blocks on the connection's runtime: call it from a plain thread or through
/// `spawn_blocking`, never from inside an async task.
pub struct QdrantServerStore {
    conn: Arc<Connection>,
    collection: String,
    dim: usize,
}

impl std::fmt::Debug for QdrantServerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantServerStore")
            .field("url", &self.conn.url)
            .field("collection", &self.collection)
            .field("dim", &self.dim)
            .finish()
    }
}

/// Whether `s` is a UUID in the lowercase hyphenated form the server returns.
fn is_canonical_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

fn point_id(id: &ChunkId) -> Result<PointId> {
    if is_canonical_uuid(id.as_str()) {
        Ok(PointId::from(id.as_str()))
    } else {
        Err(Error::Store(format!(
            "chunk id {id} is not a lowercase hyphenated UUID, so it cannot be a Qdrant point id"
        )))
    }
}

/// The point id as lore writes it (a numeric id can only come from another writer).
fn id_string(id: Option<PointId>) -> Option<String> {
    match id?.point_id_options? {
        PointIdOptions::Uuid(s) => Some(s),
        PointIdOptions::Num(n) => Some(n.to_string()),
    }
}

fn keyword(field: &str, value: &str) -> Condition {
    Condition::matches(field, MatchValue::Keyword(value.to_string()))
}

fn owner_metadata(owner: &Owner) -> HashMap<String, Value> {
    HashMap::from([(OWNER_KEY.to_string(), Value::String(owner.id.clone()))])
}

/// `filter` in Qdrant's terms, or `None` when it matches nothing (`paths: Some([])`).
/// An empty `StoreFilter` gives a filter without clauses.
fn qdrant_filter(filter: &StoreFilter) -> Option<Filter> {
    let mut must = Vec::new();
    if let Some(paths) = &filter.paths {
        if paths.is_empty() {
            return None;
        }
        must.push(Condition::matches("path", paths.clone()));
    }
    if !filter.kinds.is_empty() {
        must.push(Condition::matches("kind", filter.kinds.clone()));
    }
    must.extend(filter.tags.iter().map(|tag| keyword("tags", tag)));
    // One full-text condition per word: the heading's word index must hold every one.
    must.extend(
        filter
            .heading_words
            .iter()
            .filter(|w| !w.trim().is_empty())
            .map(|w| Condition::matches_text(HEADING_FIELD, w.as_str())),
    );
    Some(Filter::must(must))
}

/// The dense vector of a retrieved point, without the client's `into_vector` (which divides by
/// a server-sent count and can panic on a malformed reply).
#[allow(deprecated)] // `data`, `indices`, `vectors_count`: how servers before 1.16 answer.
fn dense_data(output: VectorOutput) -> Option<Vec<f32>> {
    match output.vector {
        Some(vector_output::Vector::Dense(dense)) => Some(dense.data),
        Some(_) => None,
        None if output.indices.is_none() && output.vectors_count.is_none() => Some(output.data),
        None => None,
    }
}

impl QdrantServerStore {
    /// Connects to the server at `url` (gRPC, e.g. `http://localhost:6334`) and opens
    /// `collection`, creating it (one cosine vector `dense` of `dim`, the `bm25` sparse vector,
    /// payload indexes) when absent and adding any payload index it lacks.
    ///
    /// Fails when the server cannot be reached or refuses the API key, or when the collection
    /// exists without a cosine vector `dense` of dimension `dim`.
    pub fn open(url: &str, api_key: Option<&str>, collection: &str, dim: usize) -> Result<Self> {
        let conn = Connection::new(url, api_key)?;
        Self::open_as(conn, collection, dim, None, CollectionShape::default())
    }

    /// [`QdrantServerStore::open`] on a shared connection, checking that the collection is
    /// `owner`'s: one it creates, or finds empty and unclaimed, is marked as the owner's (in
    /// the collection's metadata, so its shards, replicas and other settings stay as the
    /// operator made them); one that another knowledge base marked, or that holds points and no
    /// mark, is refused with [`Error::ForeignCollection`] unless `owner.take_over`. A new
    /// collection gets `shape`; an existing one whose shards or replication differ from a
    /// setting `shape` gives is refused.
    pub fn open_as(
        conn: Arc<Connection>,
        collection: &str,
        dim: usize,
        owner: Option<&Owner>,
        shape: CollectionShape,
    ) -> Result<Self> {
        let store = Self {
            conn,
            collection: collection.to_string(),
            dim,
        };
        store.conn.block_on(async {
            let exists = store
                .conn
                .client
                .collection_exists(collection)
                .await
                .map_err(|e| store.err("checking that the collection exists", e))?;
            store.prepare(exists, owner, shape).await
        })?;
        Ok(store)
    }

    /// The BM25 side of this collection's points, scored with `params`.
    pub fn lexical(&self, params: Bm25Params) -> ServerLexical {
        ServerLexical {
            conn: self.conn.clone(),
            collection: self.collection.clone(),
            params,
        }
    }

    fn err(&self, what: &str, e: impl Display) -> Error {
        self.conn.err(&self.collection, what, e)
    }

    fn block_on<T>(&self, future: impl Future<Output = Result<T>>) -> Result<T> {
        self.conn.block_on(future)
    }

    /// Creates the collection if absent, checks its vector and owner, adds missing payload
    /// indexes.
    async fn prepare(
        &self,
        exists: bool,
        owner: Option<&Owner>,
        shape: CollectionShape,
    ) -> Result<()> {
        let name = self.collection.as_str();
        if !exists {
            let mut vectors = VectorsConfigBuilder::default();
            let mut dense = VectorParamsBuilder::new(self.dim as u64, Distance::Cosine);
            if let Some(on_disk) = shape.on_disk {
                dense = dense.on_disk(on_disk);
            }
            vectors.add_named_vector_params(DENSE, dense);
            let mut sparse = SparseVectorsConfigBuilder::default();
            sparse.add_named_vector_params(
                BM25,
                SparseVectorParamsBuilder::default().modifier(Modifier::Idf),
            );
            let mut create = CreateCollectionBuilder::new(name)
                .vectors_config(vectors)
                .sparse_vectors_config(sparse);
            if let Some(owner) = owner {
                create = create.metadata(owner_metadata(owner));
            }
            if let Some(n) = shape.shards {
                create = create.shard_number(n);
            }
            if let Some(n) = shape.replication {
                create = create.replication_factor(n);
            }
            if let Some(n) = shape.write_consistency {
                create = create.write_consistency_factor(n);
            }
            if let Some(on_disk) = shape.on_disk {
                create = create.on_disk_payload(on_disk);
            }
            let created = self.conn.client.create_collection(create).await;
            // Another process may have created it meanwhile: then its vector is checked below.
            if let Err(e) = created {
                let now = self
                    .conn
                    .client
                    .collection_exists(name)
                    .await
                    .unwrap_or(false);
                if !now {
                    return Err(self.err("creating the collection", e));
                }
            }
        }
        let info = self
            .conn
            .client
            .collection_info(name)
            .await
            .map_err(|e| self.err("reading the collection info", e))?
            .result
            .ok_or_else(|| self.err("reading the collection info", "the server sent none"))?;
        let points = info.points_count.unwrap_or(0);
        let marked = info
            .config
            .as_ref()
            .and_then(|c| c.metadata.get(OWNER_KEY))
            .and_then(|v| match &v.kind {
                Some(Kind::StringValue(id)) => Some(id.clone()),
                _ => None,
            });
        let params = info.config.and_then(|c| c.params);
        if let Some(params) = &params {
            // Whether the dense vectors live on disk: how lore reads back `--qdrant-on-disk`.
            // The client deprecates `on_disk` for 1.19's `memory`, which the 1.18 servers lore
            // is tested against do not know.
            #[allow(deprecated)]
            let on_disk = match params
                .vectors_config
                .as_ref()
                .and_then(|v| v.config.as_ref())
            {
                Some(Config::ParamsMap(map)) => map.map.get(DENSE).and_then(|p| p.on_disk),
                _ => None,
            };
            self.check_shape(
                shape,
                [
                    params.shard_number,
                    params.replication_factor.unwrap_or(1),
                    params.write_consistency_factor.unwrap_or(1),
                    u32::from(on_disk.unwrap_or(false)),
                ],
            )?;
        }
        let sparse_ok = params
            .as_ref()
            .and_then(|p| p.sparse_vectors_config.as_ref())
            .and_then(|c| c.map.get(BM25))
            .is_some_and(|p| p.modifier == Some(Modifier::Idf as i32));
        let vectors = params.and_then(|p| p.vectors_config).and_then(|v| v.config);
        self.check_vector(vectors)?;
        if !sparse_ok {
            return Err(Error::Store(format!(
                "qdrant server {}: collection {name} has no sparse vector `{BM25}` with the IDF \
                 modifier, which holds lore's BM25 terms: it was made by another program or \
                 an older lore; use another collection (`lore migrate` moves a knowledge base)",
                self.conn.url
            )));
        }
        if let Some(owner) = owner {
            self.claim(owner, marked, points).await?;
        }
        for field in KEYWORD_FIELDS {
            if !info.payload_schema.contains_key(field) {
                let index = CreateFieldIndexCollectionBuilder::new(name, field, FieldType::Keyword)
                    .wait(true);
                self.conn
                    .client
                    .create_field_index(index)
                    .await
                    .map_err(|e| self.err(&format!("indexing `{field}`"), e))?;
            }
        }
        if !info.payload_schema.contains_key(HEADING_FIELD) {
            let words = TextIndexParamsBuilder::new(TokenizerType::Word).lowercase(true);
            let index =
                CreateFieldIndexCollectionBuilder::new(name, HEADING_FIELD, FieldType::Text)
                    .field_index_params(words)
                    .wait(true);
            self.conn
                .client
                .create_field_index(index)
                .await
                .map_err(|e| self.err(&format!("indexing `{HEADING_FIELD}`"), e))?;
        }
        Ok(())
    }

    /// Refuses a collection that is not `owner`'s (see [`QdrantServerStore::open_as`]), or
    /// marks it as `owner`'s.
    async fn claim(&self, owner: &Owner, marked: Option<String>, points: u64) -> Result<()> {
        if marked.as_deref() == Some(owner.id.as_str()) {
            return Ok(());
        }
        if !owner.take_over {
            let whose = match &marked {
                Some(other) => format!("belongs to another lore knowledge base (id {other})"),
                None if points > 0 => {
                    format!("holds {points} points that no lore knowledge base claims")
                }
                None => String::new(),
            };
            if !whose.is_empty() {
                return Err(Error::ForeignCollection {
                    url: self.conn.url.clone(),
                    collection: self.collection.clone(),
                    whose,
                });
            }
        }
        let update = UpdateCollectionBuilder::new(&self.collection).metadata(owner_metadata(owner));
        self.conn
            .client
            .update_collection(update)
            .await
            .map_err(|e| self.err("marking the collection as this knowledge base's", e))?;
        Ok(())
    }

    /// Refuses a collection whose shards, replication, write consistency or on-disk storage
    /// (`actual`, in that order; on-disk as 0/1) differ from what was asked for.
    fn check_shape(&self, shape: CollectionShape, actual: [u32; 4]) -> Result<()> {
        let [shards, replication, consistency, on_disk] = actual;
        for (flag, asked, actual) in [
            ("--qdrant-shards", shape.shards, shards),
            ("--qdrant-replication", shape.replication, replication),
            (
                "--qdrant-write-consistency",
                shape.write_consistency,
                consistency,
            ),
            ("--qdrant-on-disk", shape.on_disk.map(u32::from), on_disk),
        ] {
            if let Some(asked) = asked
                && asked != actual
            {
                return Err(Error::Store(format!(
                    "qdrant server {}: collection {} has {actual} where {flag} asks for \
                     {asked}; lore does not reshape a collection: leave out {flag}, give \
                     {actual}, or use another collection",
                    self.conn.url, self.collection
                )));
            }
        }
        Ok(())
    }

    fn check_vector(&self, config: Option<Config>) -> Result<()> {
        let name = &self.collection;
        let params: Option<VectorParams> = match config {
            Some(Config::ParamsMap(mut map)) => map.map.remove(DENSE),
            Some(Config::Params(_)) | None => None,
        };
        let Some(params) = params else {
            return Err(Error::Store(format!(
                "qdrant server {}: collection {name} has no named vector `{DENSE}` (expected \
                 dimension {}, Cosine); it was not made by lore: use another collection",
                self.conn.url, self.dim
            )));
        };
        let cosine = params.distance == Distance::Cosine as i32;
        if params.size != self.dim as u64 || !cosine {
            let distance =
                Distance::try_from(params.distance).map_or("unknown", |d| d.as_str_name());
            return Err(Error::Store(format!(
                "qdrant server {}: collection {name} holds vectors of dimension {} ({distance}) \
                 but this model needs dimension {} (Cosine); use the same model or another \
                 collection",
                self.conn.url, params.size, self.dim
            )));
        }
        Ok(())
    }

    async fn get_batch(
        &self,
        ids: Vec<PointId>,
        with_vectors: bool,
    ) -> Result<Vec<RetrievedPoint>> {
        let request = GetPointsBuilder::new(&self.collection, ids)
            .with_payload(true)
            .with_vectors(with_vectors);
        let response = self
            .conn
            .client
            .get_points(request)
            .await
            .map_err(|e| self.err("get", e))?;
        Ok(response.result)
    }

    fn stored_chunk(&self, point: RetrievedPoint, with_vectors: bool) -> Result<StoredChunk> {
        let id = id_string(point.id).ok_or_else(|| self.err("get", "a point without an id"))?;
        let payload: Map<String, Value> = Payload::from(point.payload).into();
        let chunk = from_payload(&id, &payload)?;
        let vector = if with_vectors {
            let output = point
                .vectors
                .and_then(|v| match v.vectors_options {
                    Some(qdrant_client::qdrant::vectors_output::VectorsOptions::Vectors(mut n)) => {
                        n.vectors.remove(DENSE)
                    }
                    _ => None,
                })
                .and_then(dense_data)
                .ok_or_else(|| self.err("get", format!("point {id} has no `{DENSE}` vector")))?;
            Some(output)
        } else {
            None
        };
        Ok(StoredChunk { chunk, vector })
    }
}

/// The `limit` best points for `query` on the vector `using` that pass `filter`, as ids and
/// paths (shared by dense and BM25 search).
fn query_ids(
    conn: &Connection,
    collection: &str,
    query: Query,
    using: &str,
    limit: usize,
    filter: &StoreFilter,
) -> Result<Vec<ScoredId>> {
    let Some(filter) = qdrant_filter(filter) else {
        return Ok(Vec::new());
    };
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut request = QueryPointsBuilder::new(collection)
        .query(query)
        .using(using)
        .limit(limit as u64)
        .with_payload(SelectorOptions::Include(PayloadIncludeSelector {
            fields: vec!["path".to_string()],
        }))
        .with_vectors(false);
    if !filter.must.is_empty() {
        request = request.filter(filter);
    }
    let err = |e: &dyn Display| conn.err(collection, &format!("{using} search"), e);
    let response =
        conn.block_on(async { conn.client.query(request).await.map_err(|e| err(&e)) })?;
    response
        .result
        .into_iter()
        .map(|point| {
            let id = id_string(point.id).ok_or_else(|| err(&"a hit without an id"))?;
            let path = match point.payload.get("path").and_then(|v| v.kind.as_ref()) {
                Some(Kind::StringValue(path)) => path.clone(),
                _ => return Err(err(&format!("point {id} has no path"))),
            };
            Ok(ScoredId {
                id: ChunkId(id),
                path,
                score: point.score,
            })
        })
        .collect()
}

/// Every id of a point in `collection` that passes `filter`, page by page.
fn scroll_ids(conn: &Connection, collection: &str, filter: Option<Filter>) -> Result<Vec<ChunkId>> {
    conn.block_on(async {
        let mut ids = Vec::new();
        let mut offset: Option<PointId> = None;
        loop {
            let mut request = ScrollPointsBuilder::new(collection)
                .limit(SCROLL_PAGE)
                .with_payload(false)
                .with_vectors(false);
            if let Some(filter) = filter.clone() {
                request = request.filter(filter);
            }
            if let Some(offset) = offset.take() {
                request = request.offset(offset);
            }
            let page = conn
                .client
                .scroll(request)
                .await
                .map_err(|e| conn.err(collection, "scroll", e))?;
            for point in page.result {
                let id = id_string(point.id)
                    .ok_or_else(|| conn.err(collection, "scroll", "a point without an id"))?;
                ids.push(ChunkId(id));
            }
            match page.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(ids),
            }
        }
    })
}

/// BM25 over the sparse vectors of a server collection's points (see `bm25.rs`).
#[derive(Debug)]
///
/// The sparse vector belongs to the chunk's point, so deleting a file's points (the vector
/// store's `delete_paths`) deletes its terms too, and every write is durable when acknowledged.
pub struct ServerLexical {
    conn: Arc<Connection>,
    collection: String,
    params: Bm25Params,
}

impl LexicalStore for ServerLexical {
    /// Sets the chunks' `bm25` vectors on their points (written just before by the vector
    /// store; a point that is missing is an error, not a silent insert).
    fn add(&self, chunks: &[Chunk]) -> Result<()> {
        let mut points = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let terms = bm25::document(chunk, &self.params);
            let vectors = HashMap::from([(
                BM25.to_string(),
                Vector::new_sparse(terms.indices, terms.values),
            )]);
            points.push(PointVectors {
                id: Some(point_id(&chunk.id)?),
                vectors: Some(vectors.into()),
            });
        }
        self.conn.block_on(async {
            for batch in points.chunks(UPSERT_BATCH) {
                let request =
                    UpdatePointVectorsBuilder::new(&self.collection, batch.to_vec()).wait(true);
                self.conn
                    .client
                    .update_vectors(request)
                    .await
                    .map_err(|e| self.conn.err(&self.collection, "writing BM25 terms", e))?;
            }
            Ok(())
        })
    }

    /// Nothing to do: the vector store's delete removed the points with their terms.
    fn delete_paths(&self, _paths: &[String]) -> Result<()> {
        Ok(())
    }

    /// Nothing to do: writes are acknowledged once applied and logged.
    fn commit(&self) -> Result<()> {
        Ok(())
    }

    fn chunk_ids(&self) -> Result<Vec<ChunkId>> {
        let filter = Filter::must([Condition::has_vector(BM25)]);
        scroll_ids(&self.conn, &self.collection, Some(filter))
    }

    fn disk_bytes(&self) -> u64 {
        0
    }

    fn search(&self, query: &str, limit: usize, filter: &StoreFilter) -> Result<Vec<ScoredId>> {
        let Some(terms) = bm25::query(query) else {
            return Ok(Vec::new());
        };
        let query = Query::new_nearest(VectorInput::new_sparse(terms.indices, terms.values));
        query_ids(&self.conn, &self.collection, query, BM25, limit, filter)
    }
}

impl VectorStore for QdrantServerStore {
    fn upsert(&self, chunks: &[Chunk], vectors: &[Embedding]) -> Result<()> {
        // Everything is checked before the first request, so bad input writes nothing.
        check_upsert(chunks, vectors, self.dim)?;
        let mut points = Vec::with_capacity(chunks.len());
        for (chunk, vector) in chunks.iter().zip(vectors) {
            let payload = Payload::try_from(to_payload(chunk))
                .map_err(|e| self.err(&format!("payload of chunk {}", chunk.id), e))?;
            let named = HashMap::from([(DENSE.to_string(), vector.clone())]);
            points.push(PointStruct::new(point_id(&chunk.id)?, named, payload));
        }
        self.block_on(async {
            let mut points = points.into_iter().peekable();
            while points.peek().is_some() {
                let batch: Vec<PointStruct> = points.by_ref().take(UPSERT_BATCH).collect();
                let request = UpsertPointsBuilder::new(&self.collection, batch).wait(true);
                self.conn
                    .client
                    .upsert_points(request)
                    .await
                    .map_err(|e| self.err("upsert", e))?;
            }
            Ok(())
        })
    }

    /// Deletes every point. The collection itself stays, with the shards, replicas and
    /// other settings its operator gave it (dropping and recreating it lost them).
    fn clear(&self) -> Result<()> {
        self.block_on(async {
            let request = DeletePointsBuilder::new(&self.collection)
                .points(Filter::default())
                .wait(true);
            self.conn
                .client
                .delete_points(request)
                .await
                .map_err(|e| self.err("deleting every point", e))?;
            Ok(())
        })
    }

    fn delete_paths(&self, paths: &[String]) -> Result<()> {
        self.block_on(async {
            for batch in paths.chunks(DELETE_BATCH) {
                let filter = Filter::must([Condition::matches("path", batch.to_vec())]);
                let request = DeletePointsBuilder::new(&self.collection)
                    .points(filter)
                    .wait(true);
                self.conn
                    .client
                    .delete_points(request)
                    .await
                    .map_err(|e| self.err("delete", e))?;
            }
            Ok(())
        })
    }

    /// A no-op: every write was acknowledged with `wait=true`, after the server had applied it
    /// and logged it in its write-ahead log.
    fn commit(&self) -> Result<()> {
        Ok(())
    }

    fn count(&self) -> Result<usize> {
        let response = self.block_on(async {
            let request = CountPointsBuilder::new(&self.collection).exact(true);
            self.conn
                .client
                .count(request)
                .await
                .map_err(|e| self.err("count", e))
        })?;
        let count = response
            .result
            .ok_or_else(|| self.err("count", "no result"))?
            .count;
        usize::try_from(count).map_err(|e| self.err("count", e))
    }

    fn chunk_ids(&self) -> Result<Vec<ChunkId>> {
        scroll_ids(&self.conn, &self.collection, None)
    }

    /// Unknown: the data lives on the server.
    fn disk_bytes(&self) -> Option<u64> {
        None
    }

    fn search(&self, vector: &[f32], limit: usize, filter: &StoreFilter) -> Result<Vec<ScoredId>> {
        check_dim(vector, self.dim)?;
        let query = Query::new_nearest(vector.to_vec());
        query_ids(&self.conn, &self.collection, query, DENSE, limit, filter)
    }

    fn get(&self, ids: &[ChunkId], with_vectors: bool) -> Result<Vec<StoredChunk>> {
        // An id that is not a UUID cannot be stored, so it is unknown, not an error.
        let mut wanted: Vec<&str> = ids
            .iter()
            .map(ChunkId::as_str)
            .filter(|id| is_canonical_uuid(id))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let points = self.block_on(async {
            let mut points = Vec::with_capacity(wanted.len());
            for batch in wanted.chunks(GET_BATCH) {
                let batch = batch.iter().map(|id| PointId::from(*id)).collect();
                points.extend(self.get_batch(batch, with_vectors).await?);
            }
            Ok(points)
        })?;
        let mut found = HashMap::with_capacity(points.len());
        for point in points {
            let Some(id) = id_string(point.id.clone()) else {
                return Err(self.err("get", "a point without an id"));
            };
            found.insert(id, self.stored_chunk(point, with_vectors)?);
        }
        Ok(ids
            .iter()
            .filter_map(|id| found.get(id.as_str()).cloned())
            .collect())
    }

    /// Does nothing: the server builds its index in the background.
    fn optimize(&self) -> Result<bool> {
        Ok(false)
    }

    fn describe(&self) -> String {
        format!(
            "qdrant server {}, collection {}",
            self.conn.url, self.collection
        )
    }
}

#[cfg(test)]
mod tests {
    use qdrant_client::qdrant::condition::ConditionOneOf;

    use super::*;

    /// The field and match of a field condition.
    fn field_match(c: &Condition) -> (&str, &MatchValue) {
        let Some(ConditionOneOf::Field(field)) = &c.condition_one_of else {
            panic!("not a field condition: {c:?}")
        };
        let value = field.r#match.as_ref().and_then(|m| m.match_value.as_ref());
        (field.key.as_str(), value.expect("a match"))
    }

    #[test]
    fn an_empty_filter_has_no_clauses() {
        let filter = qdrant_filter(&StoreFilter::default()).expect("matches something");
        assert!(filter.must.is_empty() && filter.should.is_empty() && filter.must_not.is_empty());
    }

    #[test]
    fn no_paths_matches_nothing() {
        let filter = StoreFilter {
            paths: Some(vec![]),
            kinds: vec!["markdown".into()],
            ..StoreFilter::default()
        };
        assert_eq!(qdrant_filter(&filter), None);
    }

    #[test]
    fn every_condition_becomes_a_must_clause() {
        let filter = StoreFilter {
            paths: Some(vec!["/a.md".into(), "/b.md".into()]),
            kinds: vec!["markdown".into(), "pdf".into()],
            tags: vec!["team=docs core".into(), "lang=en".into()],
            heading_words: vec!["install".into(), " ".into(), "source".into()],
        };
        let must = qdrant_filter(&filter).expect("matches something").must;
        let clauses: Vec<_> = must.iter().map(field_match).collect();
        let keywords = |v: &[&str]| {
            MatchValue::Keywords(qdrant_client::qdrant::RepeatedStrings {
                strings: v.iter().map(|s| s.to_string()).collect(),
            })
        };
        assert_eq!(
            clauses,
            vec![
                ("path", &keywords(&["/a.md", "/b.md"])),
                ("kind", &keywords(&["markdown", "pdf"])),
                // A tag with a space stays a keyword match, not a full-text one.
                ("tags", &MatchValue::Keyword("team=docs core".into())),
                ("tags", &MatchValue::Keyword("lang=en".into())),
                ("heading", &MatchValue::Text("install".into())),
                ("heading", &MatchValue::Text("source".into())),
            ]
        );
    }

    #[test]
    fn only_canonical_uuids_become_point_ids() {
        let id = ChunkId::derive("docs/a.md", &(0..5), "hello");
        assert!(point_id(&id).is_ok());
        assert_eq!(
            id_string(Some(point_id(&id).expect("a UUID"))).as_deref(),
            Some(id.as_str())
        );
        for bad in ["not-a-uuid", "0123456789ABCDEF0123456789abcdef0123", ""] {
            assert!(point_id(&ChunkId(bad.into())).is_err(), "{bad}");
        }
        let upper = id.as_str().to_uppercase();
        assert!(point_id(&ChunkId(upper)).is_err());
    }

    #[test]
    fn a_dense_vector_is_read_from_both_reply_forms() {
        let new = VectorOutput {
            vector: Some(vector_output::Vector::Dense(
                qdrant_client::qdrant::DenseVector {
                    data: vec![1.0, 2.0],
                },
            )),
            ..VectorOutput::default()
        };
        assert_eq!(dense_data(new), Some(vec![1.0, 2.0]));
        #[allow(deprecated)]
        let old = VectorOutput {
            data: vec![3.0],
            ..VectorOutput::default()
        };
        assert_eq!(dense_data(old), Some(vec![3.0]));
        #[allow(deprecated)]
        let multi = VectorOutput {
            data: vec![3.0],
            vectors_count: Some(0),
            ..VectorOutput::default()
        };
        assert_eq!(dense_data(multi), None);
    }
}
