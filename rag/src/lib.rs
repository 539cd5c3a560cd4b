//! Kefu's knowledge base: documents become sections (parse), sections become bounded chunks
//! (chunk), chunks are found by keywords (BM25) and by meaning (embeddings, coming), ranked
//! lists are fused (RRF), and retrieval is measured against question files (eval).

pub mod chunk;
pub mod e5;
pub mod embed;
pub mod eval;
pub mod fusion;
pub mod keyword;
pub mod onnx;
pub mod parse;
pub mod text;
pub mod vector;

pub use chunk::{Chunk, ChunkConfig, TokenCounter};
pub use parse::{Language, ParseError, ParsedDocument, Section};
