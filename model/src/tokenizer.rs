//! Tokenizers: loaded from `tokenizer.json`, or rebuilt from GGUF metadata (byte-level BPE with
//! the pre-tokenizer the model was trained with, or SentencePiece BPE driven by the pieces'
//! scores), plus incremental detokenization for streaming.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};

/// Qwen2's pre-tokenizer pattern, as in its `tokenizer.json`.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama-3 style pattern (digits in runs of up to three).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types that are special: control (3) and user-defined (4).
fn is_special_type(token_type: i64) -> bool {
    matches!(token_type, 3 | 4)
}

fn value_as_i64(value: &Value) -> Option<i64> {
    Some(match value {
        Value::U8(v) => i64::from(*v),
        Value::I8(v) => i64::from(*v),
        Value::U16(v) => i64::from(*v),
        Value::I16(v) => i64::from(*v),
        Value::U32(v) => i64::from(*v),
        Value::I32(v) => i64::from(*v),
        Value::U64(v) => i64::try_from(*v).ok()?,
        Value::I64(v) => *v,
        _ => return None,
    })
}

/// The array GGUF metadata holds under `key`.
fn array<'a>(metadata: &'a HashMap<String, Value>, key: &str) -> Result<&'a [Value]> {
    Ok(metadata
        .get(key)
        .ok_or_else(|| Error::Tokenizer(format!("GGUF metadata has no `{key}`")))?
        .to_vec()
        .map_err(Error::tokenizer)?)
}

fn strings(metadata: &HashMap<String, Value>, key: &str) -> Result<Vec<String>> {
    array(metadata, key)?
        .iter()
        .map(|v| v.to_string().cloned().map_err(Error::tokenizer))
        .collect()
}

/// Builds a `tokenizers::Tokenizer` equal to the model's original `tokenizer.json` from the
/// GGUF metadata (`tokenizer.ggml.*`).
pub fn from_gguf_metadata(metadata: &HashMap<String, Value>) -> Result<Tokenizer> {
    let kind = metadata
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .map(|s| s.as_str())
        .unwrap_or("");
    match kind {
        "gpt2" => {}
        "llama" => return sentencepiece_from_gguf(metadata),
        _ => {
            return Err(Error::Tokenizer(format!(
                "unsupported GGUF tokenizer model `{kind}` (supported: gpt2 byte-level BPE, \
                 llama SentencePiece)"
            )));
        }
    }
    let tokens = strings(metadata, "tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = strings(metadata, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| Error::Tokenizer(format!("malformed merge `{m}`")))
        })
        .collect::<Result<_>>()?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(Error::tokenizer)?;
    let mut tokenizer = Tokenizer::new(bpe);

    let pre = metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map(|s| s.as_str())
        .unwrap_or("default");
    let regex_split = |pattern: &str| -> Result<PreTokenizerWrapper> {
        Ok(Split::new(
            SplitPattern::Regex(pattern.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(Error::tokenizer)?
        .into())
    };
    let byte_level_no_regex: PreTokenizerWrapper = ByteLevel::new(false, false, false).into();
    match pre {
        "qwen2" | "deepseek-llm" => {
            tokenizer
                .with_normalizer(Some(NFC))
                .map_err(Error::tokenizer)?;
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                regex_split(QWEN2_PATTERN)?,
                byte_level_no_regex,
            ])));
        }
        "llama3" | "llama-bpe" | "smaug-bpe" => {
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                regex_split(LLAMA3_PATTERN)?,
                byte_level_no_regex,
            ])));
        }
        "smollm" | "starcoder" | "refact" => {
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])));
        }
        _ => {
            tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
    }
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    let types = metadata
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok());
    let specials: Vec<AddedToken> = match types {
        Some(types) => types
            .iter()
            .zip(&tokens)
            .filter(|(ty, _)| value_as_i64(ty).is_some_and(is_special_type))
            .map(|(_, token)| AddedToken::from(token.clone(), true))
            .collect(),
        None => Vec::new(),
    };
    tokenizer
        .add_special_tokens(specials)
        .map_err(Error::tokenizer)?;
    Ok(tokenizer)
}

/// GGUF token types.
const NORMAL: i64 = 1;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// SentencePiece's word-boundary marker, which stands for a space inside pieces.
const SPACE_MARK: &str = "\u{2581}";

/// A SentencePiece BPE vocabulary (GGUF `tokenizer.ggml.model = llama`: pieces with scores, no
/// merges) as a `tokenizers` BPE. llama.cpp merges the adjacent pair whose joined piece scores
/// highest, left-most first; the same result comes from BPE merges ranked by the joined piece's
/// score — one merge per way of splitting each piece into two pieces of the vocabulary (as
/// transformers converts SentencePiece models). Spaces become `▁`, characters outside the
/// vocabulary fall back to byte pieces `<0xNN>`; control tokens are special (left out of
/// decoded text), user-defined ones (gemma's runs of newlines) are matched in text as whole
/// tokens and decoded as text.
fn sentencepiece_from_gguf(metadata: &HashMap<String, Value>) -> Result<Tokenizer> {
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as Decoders;
    use tokenizers::decoders::strip::Strip;
    use tokenizers::normalizers::{Prepend, Replace, Sequence as Normalizers};

    let tokens = strings(metadata, "tokenizer.ggml.tokens")?;
    let scores: Vec<f32> = array(metadata, "tokenizer.ggml.scores")?
        .iter()
        .map(|v| v.to_f32().map_err(Error::tokenizer))
        .collect::<Result<_>>()?;
    let types: Vec<i64> = match metadata.get("tokenizer.ggml.token_type") {
        Some(_) => array(metadata, "tokenizer.ggml.token_type")?
            .iter()
            .map(|v| value_as_i64(v).unwrap_or(NORMAL))
            .collect(),
        None => vec![NORMAL; tokens.len()],
    };
    if scores.len() != tokens.len() || types.len() != tokens.len() {
        return Err(Error::Tokenizer(format!(
            "{} tokens but {} scores and {} types",
            tokens.len(),
            scores.len(),
            types.len()
        )));
    }
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mergeable = |id: u32| types[id as usize] == NORMAL;
    let mut merges: Vec<(f32, u32, u32)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if types[id] != NORMAL {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right))
                && mergeable(l)
                && mergeable(r)
            {
                merges.push((scores[id], l, r));
            }
        }
    }
    // Highest score first; among equals, by the pieces' ids (a stable, total order).
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges: Vec<(String, String)> = merges
        .into_iter()
        .map(|(_, l, r)| (tokens[l as usize].clone(), tokens[r as usize].clone()))
        .collect();
    let unknown = gguf_token_id(metadata, "tokenizer.ggml.unknown_token_id")
        .and_then(|id| tokens.get(id as usize).cloned())
        .unwrap_or_else(|| "<unk>".into());
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unknown)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(Error::tokenizer)?;
    let mut tokenizer = Tokenizer::new(bpe);
    let space_prefix = matches!(
        metadata.get("tokenizer.ggml.add_space_prefix"),
        Some(Value::Bool(true))
    );
    let replace_spaces = Replace::new(" ", SPACE_MARK).map_err(Error::tokenizer)?;
    let mut decoders = vec![
        Replace::new(SPACE_MARK, " ")
            .map_err(Error::tokenizer)?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if space_prefix {
        tokenizer
            .with_normalizer(Some(Normalizers::new(vec![
                Prepend::new(SPACE_MARK.into()).into(),
                replace_spaces.into(),
            ])))
            .map_err(Error::tokenizer)?;
        decoders.push(Strip::new(' ', 1, 0).into());
    } else {
        tokenizer
            .with_normalizer(Some(replace_spaces))
            .map_err(Error::tokenizer)?;
    }
    tokenizer.with_decoder(Some(Decoders::new(decoders)));
    let added = |kind: i64, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == kind)
            .map(|(token, _)| AddedToken::from(token.clone(), special).normalized(false))
            .collect()
    };
    tokenizer
        .add_special_tokens(added(CONTROL, true))
        .map_err(Error::tokenizer)?;
    tokenizer
        .add_tokens(added(USER_DEFINED, false))
        .map_err(Error::tokenizer)?;
    Ok(tokenizer)
}

/// A token id named in GGUF metadata (`tokenizer.ggml.eos_token_id`, ...).
pub fn gguf_token_id(metadata: &HashMap<String, Value>, key: &str) -> Option<u32> {
    metadata
        .get(key)
        .and_then(value_as_i64)
        .and_then(|v| u32::try_from(v).ok())
}

/// Turns a stream of token ids into text pieces, holding back bytes of characters that are
/// split across tokens (emoji, CJK in byte-level BPE). Each push decodes only a short window
/// (the tokens since the last emitted piece, plus the ones before it for context), so a long
/// reply costs linear, not quadratic, decoding work.
#[derive(Debug)]
pub struct TextStreamer<'a> {
    tokenizer: &'a Tokenizer,
    tokens: Vec<u32>,
    /// Start of the decoding window: the tokens of the previous emitted piece.
    window_start: usize,
    /// Tokens up to here have been emitted.
    emitted_tokens: usize,
    text: String,
}

impl<'a> TextStreamer<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            tokens: Vec::new(),
            window_start: 0,
            emitted_tokens: 0,
            text: String::new(),
        }
    }

    fn decode(&self, tokens: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(tokens, true)
            .map_err(Error::tokenizer)
    }

    /// Adds a token; returns the new text it completes, if any.
    pub fn push(&mut self, token: u32) -> Result<Option<String>> {
        self.tokens.push(token);
        // Decoding starts at a token boundary in both strings, so decoders that treat the
        // first token specially (a leading space) treat both the same way.
        let before = self.decode(&self.tokens[self.window_start..self.emitted_tokens])?;
        let now = self.decode(&self.tokens[self.window_start..])?;
        if now.len() <= before.len() || now.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let Some(piece) = now.get(before.len()..).filter(|_| now.starts_with(&before)) else {
            return Ok(None);
        };
        let piece = piece.to_string();
        self.text.push_str(&piece);
        self.window_start = self.emitted_tokens;
        self.emitted_tokens = self.tokens.len();
        Ok(Some(piece))
    }

    /// All text decoded so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TinySpec, write_tiny_gguf};

    #[test]
    fn streamed_pieces_add_up_to_the_decoded_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_tiny_gguf(dir.path(), &TinySpec::new(crate::Architecture::Qwen2));
        let file = crate::gguf::GgufFile::open(&path).unwrap();
        let tokenizer = from_gguf_metadata(file.metadata()).unwrap();
        let text = "hello 你好 😀 wörld 123";
        let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        let mut streamer = TextStreamer::new(&tokenizer);
        let mut pieces = String::new();
        for &id in &ids {
            if let Some(piece) = streamer.push(id).unwrap() {
                assert!(!piece.contains('\u{FFFD}'), "a cut character was emitted");
                pieces.push_str(&piece);
            }
        }
        assert_eq!(pieces, text);
        assert_eq!(streamer.text(), text);
        assert_eq!(streamer.tokens(), ids.as_slice());
    }
}
