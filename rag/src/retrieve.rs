//! Hybrid retrieval over one knowledge base: its passages, their BM25 index, the dense
//! ranking from the vector store, fused by reciprocal rank. The server's answer pipeline and the
//! trainer's gate both search through [`Retriever`].

use std::collections::HashMap;

use crate::embed::{EmbedError, Embedder};
use crate::fusion::{FusionConfig, reciprocal_rank_fusion};
use crate::keyword::{Bm25Config, KeywordIndex};
use crate::vector::{VectorError, VectorStore};

/// One stored chunk of a document, as retrieval and citations see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Passage {
    /// The chunk's database id (also its vector's id).
    pub id: i64,
    pub document_id: i64,
    /// The document's path (an upload's name or an ingested file).
    pub path: String,
    pub title: String,
    pub language: String,
    pub heading_path: Vec<String>,
    pub text: String,
}

/// One passage's place in a ranking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Index into [`Retriever::chunks`].
    pub chunk: usize,
    pub score: f32,
}

/// The three rankings of one question, best first.
#[derive(Debug, Clone, Default)]
pub struct Ranked {
    pub dense: Vec<Scored>,
    pub keyword: Vec<Scored>,
    pub fused: Vec<Scored>,
}

/// Weights and depth of hybrid retrieval.
#[derive(Debug, Clone, Copy)]
pub struct RetrievalConfig {
    /// Candidates each retriever contributes before fusion.
    pub depth: usize,
    pub fusion: FusionConfig,
    pub dense_weight: f64,
    pub keyword_weight: f64,
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        Self {
            depth: 50,
            fusion: FusionConfig::default(),
            dense_weight: 1.0,
            keyword_weight: 1.0,
        }
    }
}

/// Why a dense search failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Vector(#[from] VectorError),
}

/// The text a chunk is indexed under: where it sits (title, headings), then its words.
pub fn indexed_text(title: &str, heading_path: &[String], text: &str) -> String {
    let mut place = vec![title];
    place.extend(
        heading_path
            .iter()
            .map(String::as_str)
            .filter(|h| *h != title),
    );
    format!("{}\n{text}", place.join(" > "))
}

/// One knowledge base, ready to search: its passages and their keyword index.
#[derive(Debug)]
pub struct Retriever {
    pub knowledge_base_id: i64,
    pub chunks: Vec<Passage>,
    position: HashMap<i64, usize>,
    keyword: KeywordIndex,
}

impl Retriever {
    /// Indexes the passages of one knowledge base.
    pub fn new(knowledge_base_id: i64, chunks: Vec<Passage>) -> Self {
        let mut keyword = KeywordIndex::new(Bm25Config::default());
        let mut position = HashMap::with_capacity(chunks.len());
        for (i, chunk) in chunks.iter().enumerate() {
            keyword.add(&indexed_text(
                &chunk.title,
                &chunk.heading_path,
                &chunk.text,
            ));
            position.insert(chunk.id, i);
        }
        Self {
            knowledge_base_id,
            chunks,
            position,
            keyword,
        }
    }

    /// The passage with this database id, if it belongs to this knowledge base.
    pub fn chunk_by_id(&self, id: i64) -> Option<&Passage> {
        self.position.get(&id).map(|&i| &self.chunks[i])
    }

    /// The keyword ranking of `query` alone, also as the fused one: retrieval without the
    /// embedder (the training worker's gate has none).
    pub fn search_keywords(&self, query: &str, depth: usize) -> Ranked {
        let keyword: Vec<Scored> = self
            .keyword
            .search(query, depth)
            .into_iter()
            .map(|(i, score)| Scored {
                chunk: i as usize,
                score,
            })
            .collect();
        Ranked {
            dense: Vec::new(),
            fused: keyword.clone(),
            keyword,
        }
    }

    /// Dense, keyword and fused rankings of `query`.
    pub fn search(
        &self,
        embedder: &Embedder,
        store: &dyn VectorStore,
        query: &str,
        config: &RetrievalConfig,
    ) -> Result<Ranked, SearchError> {
        if self.chunks.is_empty() {
            return Ok(Ranked::default());
        }
        let vector = embedder.embed_query(query)?;
        let dense: Vec<Scored> = store
            .search(&vector, self.knowledge_base_id, config.depth)?
            .into_iter()
            // A vector whose chunk is gone (an interrupted re-ingest) is skipped.
            .filter_map(|hit| {
                let chunk = *self.position.get(&(hit.id as i64))?;
                Some(Scored {
                    chunk,
                    score: hit.score,
                })
            })
            .collect();
        let keyword = self.search_keywords(query, config.depth).keyword;
        let dense_ids: Vec<usize> = dense.iter().map(|s| s.chunk).collect();
        let keyword_ids: Vec<usize> = keyword.iter().map(|s| s.chunk).collect();
        let fused = reciprocal_rank_fusion(
            &[
                (&dense_ids[..], config.dense_weight),
                (&keyword_ids[..], config.keyword_weight),
            ],
            config.fusion,
        )
        .into_iter()
        .map(|(chunk, score)| Scored {
            chunk,
            score: score as f32,
        })
        .collect();
        Ok(Ranked {
            dense,
            keyword,
            fused,
        })
    }
}
