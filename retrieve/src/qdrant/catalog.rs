//! The knowledge base's own records on a Qdrant server: a sidecar collection
//! `<collection>_lore` without vectors, holding
//! - one `meta` point: format, knowledge base id, model, chunking settings, BM25 parameters, and
//!   a generation counter bumped by every commit (replicas compare it to know when to reload);
//! - one `file` point per ingested file (the manifest): its entry and whether it is pending;
//! - the writer's `lease` point (`lease.rs`).
//!
//! The manifest's commit protocol (see `kb.rs`) maps onto points: a batch's files are first
//! written with `pending: true`, then, after the chunks are stored, rewritten with their new
//! entries and `pending: false` (or deleted). Writes to several points are not atomic together,
//! but each file's own point is, and a file still pending after a crash is purged and redone by
//! the next writer, as with the local manifest.

use std::collections::HashMap;
use std::sync::Arc;

use lore_embed::ModelInfo;
use lore_ingest::{FileEntry, Manifest, ManifestSettings};
use qdrant_client::Payload;
use qdrant_client::qdrant::{
    Condition, CreateCollectionBuilder, DeletePointsBuilder, Filter, GetPointsBuilder, PointId,
    PointStruct, PointsIdsList, RetrievedPoint, ScrollPointsBuilder, UpsertPointsBuilder,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::Connection;
use super::bm25::Bm25Params;
use super::store::CollectionShape;
use crate::{Error, Result};

/// Bumped when the records' shape changes incompatibly.
pub const CATALOG_FORMAT: u32 = 1;
const META_ID: &str = "00000000-0000-4000-8000-000000000001";
pub(super) const LEASE_ID: &str = "00000000-0000-4000-8000-000000000002";
/// Points per write request.
const BATCH: usize = 256;
const SCROLL_PAGE: u32 = 512;

/// What a replica needs to open the knowledge base: everything `kb.json` and the manifest's
/// header hold for a local one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteMeta {
    pub format_version: u32,
    /// Also the chunk collection's owner mark.
    pub id: String,
    pub model: ModelInfo,
    pub settings: ManifestSettings,
    pub bm25: Bm25Params,
    /// Bumped by every commit.
    pub generation: u64,
    /// False while a reset is under way (emptying the collection for a new knowledge base).
    pub ready: bool,
}

/// The sidecar collection of one knowledge base.
#[derive(Debug, Clone)]
pub struct Catalog {
    conn: Arc<Connection>,
    name: String,
}

/// The sidecar collection's name for the chunk collection `collection`.
pub fn catalog_name(collection: &str) -> String {
    format!("{collection}_lore")
}

/// The file point's id: a UUID-shaped blake3 of the path, stable across replicas.
fn file_id(path: &str) -> PointId {
    PointId::from(lore_ingest::hash_uuid(&[b"lore-file\0", path.as_bytes()]))
}

fn record(kind: &str) -> Condition {
    Condition::matches(
        "record",
        qdrant_client::qdrant::r#match::MatchValue::Keyword(kind.to_string()),
    )
}

impl Catalog {
    /// Opens the catalog of the chunk collection `collection`, creating it (replicated as
    /// `shape` asks, one shard: it is small) when absent.
    pub fn open(conn: Arc<Connection>, collection: &str, shape: CollectionShape) -> Result<Self> {
        let catalog = Self {
            conn,
            name: catalog_name(collection),
        };
        catalog.conn.block_on(async {
            let client = &catalog.conn.client;
            let exists = client
                .collection_exists(&catalog.name)
                .await
                .map_err(|e| catalog.err("checking that it exists", e))?;
            if !exists {
                let mut create = CreateCollectionBuilder::new(&catalog.name).shard_number(1);
                if let Some(n) = shape.replication {
                    create = create.replication_factor(n);
                }
                if let Some(n) = shape.write_consistency {
                    create = create.write_consistency_factor(n);
                }
                if let Err(e) = client.create_collection(create).await {
                    // Another replica may have created it meanwhile.
                    if !client
                        .collection_exists(&catalog.name)
                        .await
                        .unwrap_or(false)
                    {
                        return Err(catalog.err("creating it", e));
                    }
                }
            }
            Ok(())
        })?;
        Ok(catalog)
    }

    /// The catalog of `collection` if there is one (replicas never create it).
    pub fn existing(conn: Arc<Connection>, collection: &str) -> Result<Option<Self>> {
        let catalog = Self {
            conn,
            name: catalog_name(collection),
        };
        let exists = catalog.conn.block_on(async {
            catalog
                .conn
                .client
                .collection_exists(&catalog.name)
                .await
                .map_err(|e| catalog.err("checking that it exists", e))
        })?;
        Ok(exists.then_some(catalog))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn conn(&self) -> &Arc<Connection> {
        &self.conn
    }

    pub(super) fn err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        self.conn.err(&self.name, what, e)
    }

    /// Writes `points` (payloads as JSON objects) with `wait=true`.
    pub(super) fn put(&self, points: Vec<(PointId, Value)>, filter: Option<Filter>) -> Result<()> {
        let mut structs = Vec::with_capacity(points.len());
        for (id, payload) in points {
            let payload = Payload::try_from(payload).map_err(|e| self.err("a record", e))?;
            structs.push(PointStruct::new(
                id,
                HashMap::<String, Vec<f32>>::new(),
                payload,
            ));
        }
        self.conn.block_on(async {
            for batch in structs.chunks(BATCH) {
                let mut request = UpsertPointsBuilder::new(&self.name, batch.to_vec()).wait(true);
                if let Some(filter) = filter.clone() {
                    request = request.update_filter(filter);
                }
                self.conn
                    .client
                    .upsert_points(request)
                    .await
                    .map_err(|e| self.err("writing records", e))?;
            }
            Ok(())
        })
    }

    /// The payload of the point `id`, if it exists.
    pub(super) fn get(&self, id: &str) -> Result<Option<Map<String, Value>>> {
        let points: Vec<RetrievedPoint> = self.conn.block_on(async {
            let request = GetPointsBuilder::new(&self.name, vec![PointId::from(id)])
                .with_payload(true)
                .with_vectors(false);
            let response = self
                .conn
                .client
                .get_points(request)
                .await
                .map_err(|e| self.err("reading a record", e))?;
            Ok(response.result)
        })?;
        Ok(points
            .into_iter()
            .next()
            .map(|p| Payload::from(p.payload).into()))
    }

    /// The knowledge base's settings, or `None` when no knowledge base was made here yet.
    pub fn read_meta(&self) -> Result<Option<RemoteMeta>> {
        let Some(mut payload) = self.get(META_ID)? else {
            return Ok(None);
        };
        payload.remove("record");
        let meta: RemoteMeta = serde_json::from_value(Value::Object(payload))
            .map_err(|e| self.err("reading the knowledge base's settings", e))?;
        Ok(Some(meta))
    }

    pub fn write_meta(&self, meta: &RemoteMeta) -> Result<()> {
        let mut payload = serde_json::to_value(meta).map_err(|e| self.err("settings", e))?;
        payload["record"] = json!("meta");
        self.put(vec![(PointId::from(META_ID), payload)], None)
    }

    /// The manifest: every file point, pending ones in `pending` (with their previous entry
    /// in `files` when they had one).
    pub fn load_manifest(&self, settings: ManifestSettings) -> Result<Manifest> {
        let mut manifest = Manifest::new(settings);
        let points = self.conn.block_on(async {
            let mut points = Vec::new();
            let mut offset: Option<PointId> = None;
            loop {
                let mut request = ScrollPointsBuilder::new(&self.name)
                    .filter(Filter::must([record("file")]))
                    .limit(SCROLL_PAGE)
                    .with_payload(true)
                    .with_vectors(false);
                if let Some(offset) = offset.take() {
                    request = request.offset(offset);
                }
                let page = self
                    .conn
                    .client
                    .scroll(request)
                    .await
                    .map_err(|e| self.err("reading the manifest", e))?;
                points.extend(page.result);
                match page.next_page_offset {
                    Some(next) => offset = Some(next),
                    None => return Ok(points),
                }
            }
        })?;
        for point in points {
            let payload: Map<String, Value> = Payload::from(point.payload).into();
            let path = payload
                .get("path")
                .and_then(Value::as_str)
                .ok_or_else(|| self.err("reading the manifest", "a file record without a path"))?
                .to_string();
            if let Some(entry) = payload.get("entry").filter(|e| !e.is_null()) {
                let entry: FileEntry = serde_json::from_value(entry.clone())
                    .map_err(|e| self.err(&format!("the record of {path}"), e))?;
                manifest.files.insert(path.clone(), entry);
            }
            if payload.get("pending").and_then(Value::as_bool) == Some(true) {
                manifest.pending.insert(path);
            }
        }
        Ok(manifest)
    }

    fn file_point(path: &str, entry: Option<&FileEntry>, pending: bool) -> (PointId, Value) {
        (
            file_id(path),
            json!({"record": "file", "path": path, "entry": entry, "pending": pending}),
        )
    }

    /// Marks `paths` pending, keeping the entries `manifest` has for them.
    pub fn mark_pending(&self, manifest: &Manifest, paths: &[String]) -> Result<()> {
        let points = paths
            .iter()
            .map(|p| Self::file_point(p, manifest.files.get(p), true))
            .collect();
        self.put(points, None)
    }

    /// Records `paths` as `manifest` now has them (an entry, or gone), not pending.
    pub fn commit(&self, manifest: &Manifest, paths: &[String]) -> Result<()> {
        let (kept, gone): (Vec<&String>, Vec<&String>) =
            paths.iter().partition(|p| manifest.files.contains_key(*p));
        let points = kept
            .iter()
            .map(|p| Self::file_point(p, manifest.files.get(*p), false))
            .collect();
        self.put(points, None)?;
        self.delete(gone.iter().map(|p| file_id(p)).collect())
    }

    /// Deletes the file points of `paths` (recovery forgets pending files).
    pub fn forget(&self, paths: &[String]) -> Result<()> {
        self.delete(paths.iter().map(|p| file_id(p)).collect())
    }

    /// Deletes every file record (a knowledge base starting afresh).
    pub fn clear_files(&self) -> Result<()> {
        self.conn.block_on(async {
            let request = DeletePointsBuilder::new(&self.name)
                .points(Filter::must([record("file")]))
                .wait(true);
            self.conn
                .client
                .delete_points(request)
                .await
                .map_err(|e| self.err("deleting the manifest", e))?;
            Ok(())
        })
    }

    fn delete(&self, ids: Vec<PointId>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.conn.block_on(async {
            for batch in ids.chunks(BATCH) {
                let request = DeletePointsBuilder::new(&self.name)
                    .points(PointsIdsList {
                        ids: batch.to_vec(),
                    })
                    .wait(true);
                self.conn
                    .client
                    .delete_points(request)
                    .await
                    .map_err(|e| self.err("deleting file records", e))?;
            }
            Ok(())
        })
    }

    /// The generation the last commit wrote (a cheap read: replicas call it per search).
    pub fn generation(&self) -> Result<Option<u64>> {
        Ok(self
            .get(META_ID)?
            .and_then(|p| p.get("generation").and_then(Value::as_u64)))
    }
}

#[cfg(test)]
mod tests {
    use qdrant_client::qdrant::point_id::PointIdOptions;

    use super::*;

    fn id_text(id: &PointId) -> String {
        match &id.point_id_options {
            Some(PointIdOptions::Uuid(s)) => s.clone(),
            Some(PointIdOptions::Num(n)) => n.to_string(),
            None => String::new(),
        }
    }

    #[test]
    fn file_ids_are_uuids_stable_per_path() {
        let a = id_text(&file_id("/docs/a.md"));
        assert_eq!(a, id_text(&file_id("/docs/a.md")));
        assert_ne!(a, id_text(&file_id("/docs/b.md")));
        assert!(uuid::Uuid::parse_str(&a).is_ok(), "{a}");
        assert_ne!(a, META_ID);
    }
}
