//! Sentence embeddings with fastembed on ONNX Runtime (loaded at run time from the library
//! `kefu models fetch onnxruntime` installs), computed on a dedicated thread fed by a bounded
//! queue, in batches. Also the embedder's tokenizer as the chunker's token counter.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use fastembed::{
    InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel,
};

use crate::chunk::TokenCounter;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    #[error(
        "ONNX Runtime is not installed at {0}: run `kefu models fetch onnxruntime` (or point \
         KEFU_ONNXRUNTIME at libonnxruntime.so ≥ 1.24)"
    )]
    RuntimeMissing(PathBuf),
    #[error("ONNX Runtime could not be loaded: {0}")]
    Runtime(String),
    #[error("the embedding model at {path} is incomplete: {message}")]
    ModelFiles { path: PathBuf, message: String },
    #[error("the embedding model failed: {0}")]
    Model(String),
    #[error("the embedding thread has stopped")]
    Stopped,
}

pub type Result<T> = std::result::Result<T, EmbedError>;

/// How a model wants its input: prefixes (e5 needs `query: ` / `passage: `), pooling, length.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedderSpec {
    pub query_prefix: String,
    pub passage_prefix: String,
    pub mean_pooling: bool,
    pub max_length: usize,
    /// Length of the vectors the model produces.
    pub dimension: usize,
    /// The cosine similarity below which the best passage is taken as unrelated to an
    /// English question (the answer pipeline then abstains instead of generating), and the
    /// same for a Chinese one (same-language similarities run higher). Calibrated per model
    /// on the shared data: docs/BENCHMARKS.md, "Abstention".
    pub min_relevance: f32,
    pub min_relevance_zh: f32,
}

impl EmbedderSpec {
    /// The relevance floor for a question in `language`.
    pub fn min_relevance(&self, language: crate::Language) -> f32 {
        match language {
            crate::Language::En => self.min_relevance,
            crate::Language::Zh => self.min_relevance_zh,
        }
    }

    /// The settings of a model Kefu knows by name.
    pub fn for_model(name: &str) -> Option<Self> {
        match name {
            "all-minilm-l6-v2" => Some(Self {
                query_prefix: String::new(),
                passage_prefix: String::new(),
                mean_pooling: true,
                max_length: 256,
                dimension: 384,
                // English only: Chinese text embeds as unknown tokens.
                min_relevance: 0.42,
                min_relevance_zh: 0.42,
            }),
            "multilingual-e5-small" => Some(Self {
                query_prefix: "query: ".into(),
                passage_prefix: "passage: ".into(),
                mean_pooling: true,
                max_length: 512,
                dimension: 384,
                min_relevance: 0.86,
                min_relevance_zh: 0.88,
            }),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbedderOptions {
    /// ONNX Runtime intra-op threads.
    pub threads: usize,
    /// Texts per forward pass.
    pub batch_size: usize,
    /// Requests waiting for the embedding thread before callers block.
    pub queue_capacity: usize,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            batch_size: 32,
            queue_capacity: 64,
        }
    }
}

static RUNTIME: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();

/// Loads ONNX Runtime from `library` once per process; a missing or incompatible library is an
/// error here instead of a panic at first use.
pub fn init_runtime(library: &Path) -> Result<()> {
    if !library.exists() {
        return Err(EmbedError::RuntimeMissing(library.to_path_buf()));
    }
    let loaded = RUNTIME.get_or_init(|| {
        ort::init_from(library)
            .map(|_| library.to_path_buf())
            .map_err(|e| e.to_string())
    });
    match loaded {
        Ok(_) => Ok(()),
        Err(message) => Err(EmbedError::Runtime(message.clone())),
    }
}

struct Job {
    texts: Vec<String>,
    reply: mpsc::Sender<Result<Vec<Vec<f32>>>>,
}

/// A running embedder: the model lives on its own thread.
pub struct Embedder {
    sender: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
    spec: EmbedderSpec,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("spec", &self.spec)
            .finish()
    }
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>> {
    std::fs::read(dir.join(name)).map_err(|e| EmbedError::ModelFiles {
        path: dir.to_path_buf(),
        message: format!("{name}: {e}"),
    })
}

impl Embedder {
    /// Loads the model in `model_dir` (`model.onnx`, `tokenizer.json`, `config.json`,
    /// `special_tokens_map.json`, `tokenizer_config.json`) on ONNX Runtime from `runtime`.
    pub fn start(
        model_dir: &Path,
        runtime: &Path,
        spec: EmbedderSpec,
        options: EmbedderOptions,
    ) -> Result<Self> {
        init_runtime(runtime)?;
        let files = TokenizerFiles {
            tokenizer_file: read(model_dir, "tokenizer.json")?,
            config_file: read(model_dir, "config.json")?,
            special_tokens_map_file: read(model_dir, "special_tokens_map.json")?,
            tokenizer_config_file: read(model_dir, "tokenizer_config.json")?,
        };
        let pooling = if spec.mean_pooling {
            Pooling::Mean
        } else {
            Pooling::Cls
        };
        let model = UserDefinedEmbeddingModel::new(read(model_dir, "model.onnx")?, files)
            .with_pooling(pooling);
        let init = InitOptionsUserDefined::new()
            .with_max_length(spec.max_length)
            .with_intra_threads(options.threads.max(1));
        let mut embedding = TextEmbedding::try_new_from_user_defined(model, init)
            .map_err(|e| EmbedError::Model(e.to_string()))?;
        let (sender, receiver): (SyncSender<Job>, Receiver<Job>) =
            mpsc::sync_channel(options.queue_capacity.max(1));
        let batch_size = options.batch_size.max(1);
        let thread = std::thread::Builder::new()
            .name("kefu-embedder".into())
            .spawn(move || {
                for job in receiver {
                    let result = embedding
                        .embed(&job.texts, Some(batch_size))
                        .map_err(|e| EmbedError::Model(e.to_string()));
                    let _ = job.reply.send(result);
                }
            })
            .map_err(|e| EmbedError::Model(format!("cannot start the embedding thread: {e}")))?;
        Ok(Self {
            sender: Some(sender),
            thread: Some(thread),
            spec,
        })
    }

    pub fn spec(&self) -> &EmbedderSpec {
        &self.spec
    }

    /// Embeds `texts` in order. They are sent shortest first, so each batch pads its texts
    /// to a similar length (a batch is padded to its longest text), and put back in order.
    fn run(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut texts: Vec<Option<String>> = texts.into_iter().map(Some).collect();
        let sorted: Vec<String> = order.iter().filter_map(|&i| texts[i].take()).collect();
        let vectors = self.run_in_order(sorted)?;
        let mut out = vec![Vec::new(); vectors.len()];
        for (vector, &i) in vectors.into_iter().zip(&order) {
            out[i] = vector;
        }
        Ok(out)
    }

    fn run_in_order(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        let (reply, answer) = mpsc::channel();
        self.sender
            .as_ref()
            .ok_or(EmbedError::Stopped)?
            .send(Job { texts, reply })
            .map_err(|_| EmbedError::Stopped)?;
        answer.recv().map_err(|_| EmbedError::Stopped)?
    }

    /// Embeddings of documents (with the model's passage prefix), L2-normalized.
    pub fn embed_passages(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let prefixed = texts
            .iter()
            .map(|t| format!("{}{t}", self.spec.passage_prefix))
            .collect();
        self.run(prefixed)
    }

    /// The embedding of a question (with the model's query prefix), L2-normalized.
    pub fn embed_query(&self, text: &str) -> Result<Vec<f32>> {
        let mut vectors = self.run(vec![format!("{}{text}", self.spec.query_prefix)])?;
        vectors.pop().ok_or(EmbedError::Stopped)
    }
}

impl Drop for Embedder {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop once the work already queued is done.
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Counts tokens with the embedder's own tokenizer, so chunks fit what the model sees.
pub struct EmbedderTokens(tokenizers::Tokenizer);

impl EmbedderTokens {
    pub fn load(model_dir: &Path) -> Result<Self> {
        let path = model_dir.join("tokenizer.json");
        tokenizers::Tokenizer::from_file(&path)
            .map(Self)
            .map_err(|e| EmbedError::ModelFiles {
                path: model_dir.to_path_buf(),
                message: format!("tokenizer.json: {e}"),
            })
    }
}

impl TokenCounter for EmbedderTokens {
    fn count(&self, text: &str) -> usize {
        self.0
            .encode(text, false)
            .map(|e| e.len())
            .unwrap_or_else(|_| text.chars().count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_runtime_or_model_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = init_runtime(&dir.path().join("libonnxruntime.so")).unwrap_err();
        assert!(matches!(err, EmbedError::RuntimeMissing(_)));
        assert!(err.to_string().contains("kefu models fetch onnxruntime"));
        let not_a_library = dir.path().join("libonnxruntime.so");
        std::fs::write(&not_a_library, b"not a shared library").unwrap();
        let err = Embedder::start(
            dir.path(),
            &not_a_library,
            EmbedderSpec::for_model("all-minilm-l6-v2").unwrap(),
            EmbedderOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, EmbedError::Runtime(_)), "{err}");
        assert!(EmbedderTokens::load(dir.path()).is_err());
    }
}
