//! The vector store behind one trait. `EdgeStore` is the default: Qdrant's engine in-process
//! (`qdrant-edge`), on disk in the data directory, surviving restarts, with a payload index on
//! the knowledge base so each search is filtered to one knowledge base. `QdrantServerStore`
//! is the same over gRPC to a Qdrant server, for deployments that outgrow one process.

use std::path::Path;

use qdrant_edge::{
    Condition, Distance, EdgeConfigBuilder, EdgeShard, EdgeVectorParamsBuilder, FieldCondition,
    Filter, JsonPath, Match, NamedQuery, PayloadFieldSchema, PayloadSchemaType, PointId,
    PointInsertOperations, PointOperations, PointStruct, QueryEnum, QueryRequest, ScoringQuery,
    SearchParams, UpdateOperation, ValueVariants, WithPayloadInterface, WithVector,
};

#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    #[error("vector store: {0}")]
    Store(String),
    #[error("vector of dimension {actual} given to a store of dimension {expected}")]
    Dimension { expected: usize, actual: usize },
}

pub type Result<T> = std::result::Result<T, VectorError>;

fn store_error(e: impl std::fmt::Display) -> VectorError {
    VectorError::Store(e.to_string())
}

/// One chunk's vector with the payload searches filter on.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorPoint {
    /// The chunk id (from the database).
    pub id: u64,
    pub vector: Vec<f32>,
    pub knowledge_base_id: i64,
    pub document_id: i64,
    pub language: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VectorHit {
    pub id: u64,
    pub score: f32,
}

/// What retrieval needs from a vector store.
pub trait VectorStore: Send + Sync {
    fn upsert(&self, points: &[VectorPoint]) -> Result<()>;
    /// The `limit` nearest chunks of one knowledge base, best first (cosine similarity).
    fn search(
        &self,
        vector: &[f32],
        knowledge_base_id: i64,
        limit: usize,
    ) -> Result<Vec<VectorHit>>;
    fn delete_document(&self, document_id: i64) -> Result<()>;
    /// How many points a document has (0 when it was never indexed).
    fn count_document(&self, document_id: i64) -> Result<usize>;
    /// Builds the search index after a batch of writes (until then searches are exact).
    fn optimize(&self) -> Result<()>;
    /// Makes every write durable.
    fn flush(&self) -> Result<()>;
}

const KNOWLEDGE_BASE: &str = "knowledge_base_id";
const DOCUMENT: &str = "document_id";

fn key(name: &str) -> Result<JsonPath> {
    name.parse()
        .map_err(|_| store_error(format!("bad payload key {name}")))
}

fn equals(field: &str, value: i64) -> Result<Filter> {
    Ok(Filter::new_must(Condition::Field(
        FieldCondition::new_match(key(field)?, Match::new_value(ValueVariants::Integer(value))),
    )))
}

/// Qdrant's engine in-process, one shard in one folder.
pub struct EdgeStore {
    shard: EdgeShard,
    dimension: usize,
}

impl std::fmt::Debug for EdgeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeStore")
            .field("path", &self.shard.path())
            .field("dimension", &self.dimension)
            .finish()
    }
}

impl EdgeStore {
    /// Opens the store in `path`, creating it (with its payload indexes) when missing.
    pub fn open(path: &Path, dimension: usize) -> Result<Self> {
        let exists = path.join("edge_config.json").exists() || path.join("segments").exists();
        let shard = if exists {
            EdgeShard::load(path, None).map_err(store_error)?
        } else {
            std::fs::create_dir_all(path).map_err(store_error)?;
            let config = EdgeConfigBuilder::new()
                .vector(
                    "",
                    EdgeVectorParamsBuilder::new(dimension, Distance::Cosine).build(),
                )
                .build();
            let shard = EdgeShard::new(path, config).map_err(store_error)?;
            for field in [KNOWLEDGE_BASE, DOCUMENT] {
                shard
                    .update(UpdateOperation::FieldIndexOperation(
                        qdrant_edge::FieldIndexOperations::CreateIndex(qdrant_edge::CreateIndex {
                            field_name: key(field)?,
                            field_schema: Some(PayloadFieldSchema::FieldType(
                                PayloadSchemaType::Integer,
                            )),
                        }),
                    ))
                    .map_err(store_error)?;
            }
            shard
        };
        Ok(Self { shard, dimension })
    }

    fn check(&self, vector: &[f32]) -> Result<()> {
        check_dimension(self.dimension, vector)
    }
}

fn check_dimension(dimension: usize, vector: &[f32]) -> Result<()> {
    if vector.len() != dimension {
        return Err(VectorError::Dimension {
            expected: dimension,
            actual: vector.len(),
        });
    }
    Ok(())
}

impl VectorStore for EdgeStore {
    fn upsert(&self, points: &[VectorPoint]) -> Result<()> {
        let mut structs = Vec::with_capacity(points.len());
        for point in points {
            self.check(&point.vector)?;
            let payload = serde_json::json!({
                KNOWLEDGE_BASE: point.knowledge_base_id,
                DOCUMENT: point.document_id,
                "language": point.language,
            });
            structs.push(PointStruct::new(point.id, point.vector.clone(), payload).into());
        }
        self.shard
            .update(UpdateOperation::PointOperation(
                PointOperations::UpsertPoints(PointInsertOperations::PointsList(structs)),
            ))
            .map_err(store_error)
    }

    fn search(
        &self,
        vector: &[f32],
        knowledge_base_id: i64,
        limit: usize,
    ) -> Result<Vec<VectorHit>> {
        self.check(vector)?;
        let request = QueryRequest {
            prefetches: Vec::new(),
            query: Some(ScoringQuery::Vector(QueryEnum::Nearest(
                NamedQuery::default_dense(vector.to_vec()),
            ))),
            filter: Some(equals(KNOWLEDGE_BASE, knowledge_base_id)?),
            score_threshold: None,
            limit,
            offset: 0,
            params: Some(SearchParams {
                hnsw_ef: Some(128),
                ..SearchParams::default()
            }),
            with_vector: WithVector::Bool(false),
            with_payload: WithPayloadInterface::Bool(false),
        };
        let points = self.shard.query(request).map_err(store_error)?;
        points
            .into_iter()
            .map(|p| match p.id {
                PointId::NumId(id) => Ok(VectorHit { id, score: p.score }),
                other => Err(store_error(format!("unexpected point id {other:?}"))),
            })
            .collect()
    }

    fn delete_document(&self, document_id: i64) -> Result<()> {
        self.shard
            .update(UpdateOperation::PointOperation(
                PointOperations::DeletePointsByFilter(equals(DOCUMENT, document_id)?),
            ))
            .map_err(store_error)
    }

    fn count_document(&self, document_id: i64) -> Result<usize> {
        self.shard
            .count(qdrant_edge::CountRequest {
                filter: Some(equals(DOCUMENT, document_id)?),
                exact: true,
            })
            .map_err(store_error)
    }

    fn optimize(&self) -> Result<()> {
        self.shard.optimize().map(|_| ()).map_err(store_error)
    }

    fn flush(&self) -> Result<()> {
        self.shard.flush();
        Ok(())
    }
}

/// A Qdrant server reached over gRPC (`qdrant-client`): the scale-out backend. One collection
/// holds every knowledge base (a payload index on the knowledge base filters each search).
/// The trait is synchronous, so calls run on the store's own small Tokio runtime.
pub struct QdrantServerStore {
    client: std::sync::Arc<qdrant_client::Qdrant>,
    /// Always `Some` until dropped (taken out to shut it down without blocking).
    runtime: Option<tokio::runtime::Runtime>,
    collection: String,
    dimension: usize,
}

impl std::fmt::Debug for QdrantServerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantServerStore")
            .field("collection", &self.collection)
            .field("dimension", &self.dimension)
            .finish()
    }
}

impl QdrantServerStore {
    /// Connects to the server at `url` (gRPC, e.g. `http://localhost:6334`) and creates the
    /// collection with its payload indexes when it does not exist.
    pub fn connect(url: &str, collection: &str, dimension: usize) -> Result<Self> {
        let client = qdrant_client::Qdrant::from_url(url)
            .timeout(std::time::Duration::from_secs(30))
            .skip_compatibility_check()
            .build()
            .map_err(|e| store_error(format!("Qdrant server at {url}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kefu-qdrant")
            .enable_all()
            .build()
            .map_err(store_error)?;
        let store = Self {
            client: std::sync::Arc::new(client),
            runtime: Some(runtime),
            collection: collection.to_string(),
            dimension,
        };
        store.ensure_collection(url)?;
        Ok(store)
    }

    fn check(&self, vector: &[f32]) -> Result<()> {
        check_dimension(self.dimension, vector)
    }

    /// Runs `call` on the store's runtime and waits for it (callable from inside another
    /// runtime, unlike `block_on`).
    fn call<T, F, Fut>(&self, call: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(std::sync::Arc<qdrant_client::Qdrant>, String) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, qdrant_client::QdrantError>>
            + Send
            + 'static,
    {
        let (sender, receiver) = std::sync::mpsc::channel();
        let future = call(self.client.clone(), self.collection.clone());
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| store_error("the Qdrant client stopped"))?;
        runtime.spawn(async move {
            let _ = sender.send(future.await);
        });
        receiver
            .recv()
            .map_err(|_| store_error("the Qdrant client stopped"))?
            .map_err(|e| store_error(format!("Qdrant server: {e}")))
    }

    fn ensure_collection(&self, url: &str) -> Result<()> {
        use qdrant_client::qdrant::{
            CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, Distance as QDistance,
            FieldType, VectorParamsBuilder,
        };
        let exists = self
            .call(|c, name| async move { c.collection_exists(name).await })
            .map_err(|e| store_error(format!("cannot reach the Qdrant server at {url}: {e}")))?;
        if exists {
            return Ok(());
        }
        let dimension = self.dimension as u64;
        self.call(move |c, name| async move {
            c.create_collection(
                CreateCollectionBuilder::new(name)
                    .vectors_config(VectorParamsBuilder::new(dimension, QDistance::Cosine)),
            )
            .await
        })?;
        for field in [KNOWLEDGE_BASE, DOCUMENT] {
            self.call(move |c, name| async move {
                c.create_field_index(
                    CreateFieldIndexCollectionBuilder::new(name, field, FieldType::Integer)
                        .wait(true),
                )
                .await
            })?;
        }
        Ok(())
    }
}

impl Drop for QdrantServerStore {
    /// A runtime dropped inside another runtime's async context panics when it waits for its
    /// threads, so it is shut down without waiting.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn server_equals(field: &str, value: i64) -> qdrant_client::qdrant::Filter {
    qdrant_client::qdrant::Filter::must([qdrant_client::qdrant::Condition::matches(
        field.to_string(),
        value,
    )])
}

impl VectorStore for QdrantServerStore {
    fn upsert(&self, points: &[VectorPoint]) -> Result<()> {
        use qdrant_client::Payload;
        use qdrant_client::qdrant::{PointStruct as QPoint, UpsertPointsBuilder};
        let mut structs = Vec::with_capacity(points.len());
        for point in points {
            self.check(&point.vector)?;
            let mut payload = Payload::new();
            payload.insert(KNOWLEDGE_BASE, point.knowledge_base_id);
            payload.insert(DOCUMENT, point.document_id);
            payload.insert("language", point.language.clone());
            structs.push(QPoint::new(point.id, point.vector.clone(), payload));
        }
        self.call(move |c, name| async move {
            c.upsert_points(UpsertPointsBuilder::new(name, structs).wait(true))
                .await
        })
        .map(|_| ())
    }

    fn search(
        &self,
        vector: &[f32],
        knowledge_base_id: i64,
        limit: usize,
    ) -> Result<Vec<VectorHit>> {
        use qdrant_client::qdrant::{QueryPointsBuilder, point_id::PointIdOptions};
        self.check(vector)?;
        let query = vector.to_vec();
        let response = self.call(move |c, name| async move {
            c.query(
                QueryPointsBuilder::new(name)
                    .query(query)
                    .filter(server_equals(KNOWLEDGE_BASE, knowledge_base_id))
                    .limit(limit as u64),
            )
            .await
        })?;
        response
            .result
            .into_iter()
            .map(|p| match p.id.and_then(|id| id.point_id_options) {
                Some(PointIdOptions::Num(id)) => Ok(VectorHit { id, score: p.score }),
                other => Err(store_error(format!("unexpected point id {other:?}"))),
            })
            .collect()
    }

    fn delete_document(&self, document_id: i64) -> Result<()> {
        use qdrant_client::qdrant::DeletePointsBuilder;
        self.call(move |c, name| async move {
            c.delete_points(
                DeletePointsBuilder::new(name)
                    .points(server_equals(DOCUMENT, document_id))
                    .wait(true),
            )
            .await
        })
        .map(|_| ())
    }

    fn count_document(&self, document_id: i64) -> Result<usize> {
        use qdrant_client::qdrant::CountPointsBuilder;
        let response = self.call(move |c, name| async move {
            c.count(
                CountPointsBuilder::new(name)
                    .filter(server_equals(DOCUMENT, document_id))
                    .exact(true),
            )
            .await
        })?;
        Ok(response.result.map_or(0, |r| r.count as usize))
    }

    /// The server builds its index by itself.
    fn optimize(&self) -> Result<()> {
        Ok(())
    }

    /// Writes are acknowledged after they are applied (`wait`).
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
