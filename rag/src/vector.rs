//! The vector store behind one trait. `EdgeStore` is the default: Qdrant's engine in-process
//! (`qdrant-edge`), on disk in the data directory, surviving restarts, with a payload index on
//! the knowledge base so each search is filtered to one knowledge base.

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
        if vector.len() != self.dimension {
            return Err(VectorError::Dimension {
                expected: self.dimension,
                actual: vector.len(),
            });
        }
        Ok(())
    }
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

    fn optimize(&self) -> Result<()> {
        self.shard.optimize().map(|_| ()).map_err(store_error)
    }

    fn flush(&self) -> Result<()> {
        self.shard.flush();
        Ok(())
    }
}
