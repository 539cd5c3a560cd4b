//! Kefu's knowledge base: documents become sections (parse), sections become bounded chunks
//! (chunk), chunks are found by keywords (BM25) and by meaning (embeddings in a vector store),
//! the rankings are fused (RRF) into one hybrid ranking (retrieve), the best passages become a
//! grounded, numbered prompt (prompt), retrieval is measured against question files (eval) and
//! answers against reference answers and their passages (score).

pub mod chunk;
pub mod e5;
pub mod embed;
mod entities;
pub mod eval;
pub mod fusion;
pub mod keyword;
pub mod onnx;
pub mod parse;
pub mod prompt;
pub mod retrieve;
pub mod score;
pub mod testing;
pub mod text;
pub mod vector;

pub use chunk::{Chunk, ChunkConfig, TokenCounter};
pub use parse::{Language, ParseError, ParsedDocument, Section};
pub use retrieve::{Passage, Ranked, RetrievalConfig, Retriever, Scored};
