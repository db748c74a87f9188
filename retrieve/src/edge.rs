//! The embedded default vector store: Qdrant's own engine in process (`qdrant-edge` 0.7.2).
//!
//! Every qdrant-edge type stays inside this file, so moving to a newer release touches only
//! it. 0.7.2 has flaws this module absorbs (see README, "Qdrant engine notes"):
//! - `flush()` panics if another thread is inside `update()`, and panics on I/O errors: every
//!   write and flush goes through one mutex, and flush panics become errors.
//! - The WAL is never replayed: `flush()` is the commit point. The knowledge base's manifest
//!   marks files done only after it.
//! - One process per shard: a second open fails at once on the WAL lock.
//! - The WAL is never truncated: [`EdgeStore::compact`] rebuilds the shard from a scroll of its
//!   points into a fresh folder and swaps it in (public API only; deleting WAL files by hand
//!   makes later writes silently vanish).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lore_embed::Embedding;
use lore_ingest::{Chunk, ChunkId};
use qdrant_edge::external::serde_json::Value;
use qdrant_edge::external::uuid::Uuid;
use qdrant_edge::{
    Condition, CountRequest, CreateIndex, Distance, EdgeConfig, EdgeShard, EdgeVectorParams,
    FieldCondition, FieldIndexOperations, Filter, Match, NamedQuery, PayloadFieldSchema,
    PayloadSchemaType, PointId, PointInsertOperations, PointOperations, PointStruct, QueryEnum,
    QueryRequest, ScoringQuery, ScrollRequest, UpdateOperation, Vector, VectorInternal,
    VectorStructInternal, Vectors, WithPayloadInterface, WithVector,
};

use crate::layout::remove_dir;
use crate::payload::{HEADING_FIELD, KEYWORD_FIELDS, from_payload, to_payload};
use crate::store::{ScoredId, StoreFilter, StoredChunk, VectorStore, check_dim, check_upsert};
use crate::{Error, Result};

const DENSE: &str = "dense";

/// Qdrant's in-process engine holding one shard in a folder.
pub struct EdgeStore {
    shard: EdgeShard,
    dir: PathBuf,
    dim: usize,
    /// Serialises `update()` and `flush()` (see the module docs).
    writer: Mutex<()>,
}

impl std::fmt::Debug for EdgeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeStore")
            .field("dir", &self.dir)
            .field("dim", &self.dim)
            .finish()
    }
}

fn engine(e: impl std::fmt::Display) -> Error {
    Error::Store(format!("qdrant engine: {e}"))
}

fn point_id(id: &ChunkId) -> Result<PointId> {
    Uuid::parse_str(id.as_str())
        .map(PointId::Uuid)
        .map_err(|e| Error::Store(format!("chunk id {id} is not a UUID: {e}")))
}

fn key(field: &str) -> Result<qdrant_edge::JsonPath> {
    field
        .try_into()
        .map_err(|()| engine(format!("bad payload key {field}")))
}

fn any_of(field: &str, values: &[String]) -> Result<Condition> {
    let any = qdrant_edge::MatchAny {
        any: qdrant_edge::AnyVariants::Strings(values.iter().cloned().collect()),
    };
    Ok(Condition::Field(FieldCondition::new_match(
        key(field)?,
        Match::Any(any),
    )))
}

fn path_filter(paths: &[String]) -> Result<Filter> {
    Ok(Filter::new_must(any_of("path", paths)?))
}

/// `None` when the filter allows everything.
fn store_filter(filter: &StoreFilter) -> Result<Option<Filter>> {
    let mut must = Vec::new();
    if let Some(paths) = &filter.paths {
        must.push(any_of("path", paths)?);
    }
    if !filter.kinds.is_empty() {
        must.push(any_of("kind", &filter.kinds)?);
    }
    for tag in &filter.tags {
        must.push(any_of("tags", std::slice::from_ref(tag))?);
    }
    for word in &filter.heading_words {
        must.push(Condition::Field(FieldCondition::new_match(
            key(HEADING_FIELD)?,
            Match::new_text(word),
        )));
    }
    Ok((!must.is_empty()).then(|| Filter {
        must: Some(must),
        ..Filter::new()
    }))
}

fn dense_of(vector: Option<VectorStructInternal>, id: &PointId) -> Result<Embedding> {
    let Some(VectorStructInternal::Named(mut vectors)) = vector else {
        return Err(engine(format!("point {id} has no named vectors")));
    };
    match vectors.remove(DENSE) {
        Some(VectorInternal::Dense(dense)) => Ok(dense),
        _ => Err(engine(format!("point {id} has no dense vector"))),
    }
}

impl EdgeStore {
    /// Opens the shard in `dir`, creating it (with payload indexes) when absent.
    ///
    /// Fails when another process holds the shard, or it was made for another dimension.
    pub fn open(dir: &Path, dim: usize) -> Result<Self> {
        finish_interrupted_compaction(dir)?;
        let existed = dir.join("edge_config.json").exists();
        let shard = if existed {
            EdgeShard::load(dir, None).map_err(|e| {
                if e.to_string().contains("WouldBlock") {
                    Error::Locked(dir.to_path_buf())
                } else {
                    engine(e)
                }
            })?
        } else {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let config = EdgeConfig::builder()
                .vector(
                    DENSE,
                    EdgeVectorParams::builder(dim, Distance::Cosine).build(),
                )
                .build();
            let shard = EdgeShard::new(dir, config).map_err(engine)?;
            let indexes = KEYWORD_FIELDS
                .iter()
                .map(|f| (*f, PayloadSchemaType::Keyword))
                // The default text index: word tokenizer, lowercase (heading filters).
                .chain([(HEADING_FIELD, PayloadSchemaType::Text)]);
            for (field, schema) in indexes {
                let op = CreateIndex {
                    field_name: key(field)?,
                    field_schema: Some(PayloadFieldSchema::FieldType(schema)),
                };
                shard
                    .update(UpdateOperation::FieldIndexOperation(
                        FieldIndexOperations::CreateIndex(op),
                    ))
                    .map_err(engine)?;
            }
            shard
        };
        let store = Self {
            shard,
            dir: dir.to_path_buf(),
            dim,
            writer: Mutex::new(()),
        };
        if !existed {
            // Make the new shard's payload indexes durable before anything relies on them.
            store.commit()?;
        }
        Ok(store)
    }

    /// Bytes of write-ahead log against bytes of segments, both as allocated on disk.
    pub fn wal_and_segment_bytes(dir: &Path) -> (u64, u64) {
        (
            crate::disk_usage(&dir.join("wal")),
            crate::disk_usage(&dir.join("segments")),
        )
    }

    /// Rebuilds the (closed) shard in `dir` into a fresh folder from a scroll of all its points
    /// and swaps it in, which drops the WAL 0.7.2 never truncates. A crash at any step leaves
    /// either the old shard or a complete new one that the next [`EdgeStore::open`] adopts.
    ///
    /// Fails (leaving the old shard in place) when the copy's point count differs.
    pub fn compact(dir: &Path, dim: usize) -> Result<()> {
        let fresh = sibling(dir, "compacting");
        remove_dir(&fresh)?;
        let old = Self::open(dir, dim)?;
        let new = Self::open(&fresh, dim)?;
        let mut offset = None;
        loop {
            let (records, next) = old
                .shard
                .scroll(ScrollRequest {
                    offset,
                    limit: Some(512),
                    filter: None,
                    with_payload: Some(WithPayloadInterface::Bool(true)),
                    with_vector: WithVector::Bool(true),
                    order_by: None,
                })
                .map_err(engine)?;
            let mut points = Vec::with_capacity(records.len());
            for r in records {
                let dense = dense_of(r.vector, &r.id)?;
                let payload = Value::Object(
                    r.payload
                        .map(|p| p.0)
                        .unwrap_or_default()
                        .into_iter()
                        .collect(),
                );
                let vectors = Vectors::new_named([(DENSE.to_string(), Vector::new_dense(dense))]);
                points.push(PointStruct::new(r.id, vectors, payload).into());
            }
            new.write(UpdateOperation::PointOperation(
                PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
            ))?;
            match next {
                Some(n) => offset = Some(n),
                None => break,
            }
        }
        // The copy starts unindexed: rebuild its HNSW index (a no-op below the threshold).
        new.optimize()?;
        new.commit()?;
        let (before, after) = (old.count()?, new.count()?);
        drop((old, new));
        if before != after {
            remove_dir(&fresh)?;
            return Err(engine(format!(
                "compaction copied {after} of {before} points; kept the old shard"
            )));
        }
        // The swap: old → .old, fresh → dir. `open` completes it if a crash comes between.
        let retired = sibling(dir, "old");
        remove_dir(&retired)?;
        std::fs::rename(dir, &retired).map_err(|e| Error::io(dir, e))?;
        std::fs::rename(&fresh, dir).map_err(|e| Error::io(dir, e))?;
        remove_dir(&retired)
    }

    fn write(&self, op: UpdateOperation) -> Result<()> {
        let _guard = self
            .writer
            .lock()
            .map_err(|_| engine("writer lock poisoned"))?;
        self.shard.update(op).map_err(engine)
    }
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

/// Completes or discards a compaction a crash interrupted (see [`EdgeStore::compact`]).
fn finish_interrupted_compaction(dir: &Path) -> Result<()> {
    let fresh = sibling(dir, "compacting");
    if !dir.exists() && fresh.join("edge_config.json").exists() {
        // Crashed between the two renames: the fresh copy is complete.
        std::fs::rename(&fresh, dir).map_err(|e| Error::io(dir, e))?;
    }
    remove_dir(&fresh)?;
    remove_dir(&sibling(dir, "old"))
}

impl VectorStore for EdgeStore {
    fn upsert(&self, chunks: &[Chunk], vectors: &[Embedding]) -> Result<()> {
        check_upsert(chunks, vectors, self.dim)?;
        if chunks.is_empty() {
            return Ok(());
        }
        let mut points = Vec::with_capacity(chunks.len());
        for (chunk, vector) in chunks.iter().zip(vectors) {
            let vectors =
                Vectors::new_named([(DENSE.to_string(), Vector::new_dense(vector.clone()))]);
            points.push(PointStruct::new(point_id(&chunk.id)?, vectors, to_payload(chunk)).into());
        }
        self.write(UpdateOperation::PointOperation(
            PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
        ))
    }

    fn clear(&self) -> Result<()> {
        let ids = self
            .chunk_ids()?
            .iter()
            .map(point_id)
            .collect::<Result<Vec<_>>>()?;
        for ids in ids.chunks(1024) {
            self.write(UpdateOperation::PointOperation(
                PointOperations::DeletePoints { ids: ids.to_vec() },
            ))?;
        }
        self.commit()
    }

    fn delete_paths(&self, paths: &[String]) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        self.write(UpdateOperation::PointOperation(
            PointOperations::DeletePointsByFilter(path_filter(paths)?),
        ))
    }

    fn commit(&self) -> Result<()> {
        let _guard = self
            .writer
            .lock()
            .map_err(|_| engine("writer lock poisoned"))?;
        // 0.7.2's flush() panics instead of returning I/O errors.
        catch_unwind(AssertUnwindSafe(|| self.shard.flush()))
            .map_err(|_| engine("flush failed (see the log above)"))
    }

    fn count(&self) -> Result<usize> {
        self.shard
            .count(CountRequest {
                filter: None,
                exact: true,
            })
            .map_err(engine)
    }

    fn chunk_ids(&self) -> Result<Vec<ChunkId>> {
        let mut ids = Vec::new();
        let mut offset = None;
        loop {
            let (records, next) = self
                .shard
                .scroll(ScrollRequest {
                    offset,
                    limit: Some(1024),
                    filter: None,
                    with_payload: Some(WithPayloadInterface::Bool(false)),
                    with_vector: WithVector::Bool(false),
                    order_by: None,
                })
                .map_err(engine)?;
            ids.extend(records.into_iter().map(|r| ChunkId(r.id.to_string())));
            match next {
                Some(n) => offset = Some(n),
                None => break,
            }
        }
        Ok(ids)
    }

    fn disk_bytes(&self) -> Option<u64> {
        Some(crate::disk_usage(&self.dir))
    }

    fn search(&self, vector: &[f32], limit: usize, filter: &StoreFilter) -> Result<Vec<ScoredId>> {
        check_dim(vector, self.dim)?;
        if limit == 0 || filter.paths.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Vec::new());
        }
        let request = QueryRequest {
            prefetches: vec![],
            query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                query: VectorInternal::Dense(vector.to_vec()),
                using: Some(DENSE.to_string()),
            }))),
            filter: store_filter(filter)?,
            score_threshold: None,
            limit,
            offset: 0,
            params: None,
            with_vector: WithVector::Bool(false),
            with_payload: WithPayloadInterface::Fields(vec![key("path")?]),
        };
        let points = self.shard.query(request).map_err(engine)?;
        points
            .into_iter()
            .map(|p| {
                let path = p
                    .payload
                    .as_ref()
                    .and_then(|payload| payload.0.get("path"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| engine(format!("point {} has no path", p.id)))?;
                Ok(ScoredId {
                    id: ChunkId(p.id.to_string()),
                    path: path.to_string(),
                    score: p.score,
                })
            })
            .collect()
    }

    fn get(&self, ids: &[ChunkId], with_vectors: bool) -> Result<Vec<StoredChunk>> {
        let point_ids = ids.iter().map(point_id).collect::<Result<Vec<_>>>()?;
        let records = self
            .shard
            .retrieve(
                &point_ids,
                Some(WithPayloadInterface::Bool(true)),
                Some(WithVector::Bool(with_vectors)),
            )
            .map_err(engine)?;
        records
            .into_iter()
            .map(|r| {
                let id = r.id.to_string();
                let payload = r.payload.map(|p| p.0).unwrap_or_default();
                let vector = if with_vectors {
                    Some(dense_of(r.vector, &r.id)?)
                } else {
                    None
                };
                Ok(StoredChunk {
                    chunk: from_payload(&id, &payload)?,
                    vector,
                })
            })
            .collect()
    }

    fn optimize(&self) -> Result<bool> {
        let _guard = self
            .writer
            .lock()
            .map_err(|_| engine("writer lock poisoned"))?;
        let built = self.shard.optimize().map_err(engine)?;
        if built {
            // Make the rebuilt segments the durable state (same panic guard as commit).
            catch_unwind(AssertUnwindSafe(|| self.shard.flush()))
                .map_err(|_| engine("flush failed (see the log above)"))?;
        }
        Ok(built)
    }

    fn describe(&self) -> String {
        "qdrant-edge (in process)".to_string()
    }
}
