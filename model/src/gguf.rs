//! GGUF files: validated opening, a weight source with Hugging Face names, and one-time
//! re-quantization of block types that have no fast CPU kernel.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
pub use candle_core::quantized::GgmlDType;
use candle_core::quantized::{QStorage, QTensor, gguf_file};

use crate::config::{Architecture, Config};
use crate::decoder::{Weight, WeightSource};
use crate::error::{Error, Result};

/// An opened GGUF file whose header and tensor extents have been checked.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: gguf_file::Content,
    reader: BufReader<File>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .finish()
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::NotFound(path.to_path_buf()));
        }
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader).map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("unreadable GGUF header ({e})"),
        })?;
        let mut needed = content.tensor_data_offset;
        for (name, info) in &content.tensor_infos {
            let elems = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            if elems % block != 0 {
                return Err(Error::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!("tensor `{name}` has {elems} elements, not whole blocks"),
                });
            }
            let bytes = (elems / block * info.ggml_dtype.type_size()) as u64;
            let end = content
                .tensor_data_offset
                .checked_add(info.offset)
                .and_then(|start| start.checked_add(bytes))
                .ok_or_else(|| Error::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!("tensor `{name}` has an impossible offset"),
                })?;
            needed = needed.max(end);
        }
        if needed > file_len {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                expected: needed,
                actual: file_len,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    pub fn metadata(&self) -> &HashMap<String, gguf_file::Value> {
        &self.content.metadata
    }

    pub fn architecture(&self) -> Result<Architecture> {
        let name = self
            .content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| Error::Corrupt {
                path: self.path.clone(),
                reason: "no general.architecture in the metadata".into(),
            })?;
        Architecture::parse(name)
    }

    /// The model configuration; `tie_word_embeddings` is true when the file has no
    /// `output.weight`.
    pub fn config(&self) -> Result<Config> {
        let mut config = Config::from_gguf_metadata(&self.content.metadata)?;
        config.tie_word_embeddings = !self.content.tensor_infos.contains_key("output.weight");
        Ok(config)
    }

    /// Reads one tensor by its GGUF name.
    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<Option<QTensor>> {
        if !self.content.tensor_infos.contains_key(name) {
            return Ok(None);
        }
        let tensor = self
            .content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| Error::Corrupt {
                path: self.path.clone(),
                reason: format!("tensor `{name}`: {e}"),
            })?;
        Ok(Some(tensor))
    }

    /// Where the rows of the 2-D tensor `name` (GGUF name) lie: its block type, (rows, cols),
    /// the file offset of row 0 and the bytes of a row; `None` when there is no such matrix.
    fn matrix_rows(&self, name: &str) -> Option<(GgmlDType, usize, usize, u64, u64)> {
        let info = self.content.tensor_infos.get(name)?;
        let dtype = info.ggml_dtype;
        match info.shape.dims() {
            [rows, cols] if cols % dtype.block_size() == 0 => {
                let row_bytes = (cols / dtype.block_size() * dtype.type_size()) as u64;
                let start = self.content.tensor_data_offset + info.offset;
                Some((dtype, *rows, *cols, start, row_bytes))
            }
            _ => None,
        }
    }

    /// Reads `out.len()` bytes at `offset`.
    fn read_at(&mut self, offset: u64, out: &mut [u8]) -> Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        self.reader
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.reader.read_exact(out))
            .map_err(|e| Error::io(&self.path, e))
    }

    /// The Q8_0 matrix `name` (GGUF name) packed for `crate::q8`'s kernels straight from the
    /// file, a tile of rows at a time; `None` when the file has no such tensor or it is not a
    /// Q8_0 matrix.
    pub fn packed_q8(&mut self, name: &str) -> Result<Option<crate::q8::PackedQ8>> {
        match self.matrix_rows(name) {
            Some((GgmlDType::Q8_0, rows, cols, start, row_bytes)) => {
                crate::q8::PackedQ8::pack_with(rows, cols, |first, out| {
                    self.read_at(start + first as u64 * row_bytes, out)
                })
            }
            _ => Ok(None),
        }
    }

    /// Rows `rows` of the matrix `name` (GGUF name), dequantized (rows past its end left
    /// out); `None` when the file has no such matrix.
    pub fn sample_rows(&mut self, name: &str, rows: &[usize]) -> Result<Option<Vec<Vec<f32>>>> {
        let Some((dtype, count, cols, start, row_bytes)) = self.matrix_rows(name) else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(rows.len());
        for &row in rows.iter().filter(|&&r| r < count) {
            let mut bytes = vec![0u8; row_bytes as usize];
            self.read_at(start + row as u64 * row_bytes, &mut bytes)?;
            let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, dtype)?;
            let values = QTensor::new(storage, (1, cols))?.dequantize(&Device::Cpu)?;
            out.push(values.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(Some(out))
    }

    /// The dominant block type of the projection weights.
    pub fn weight_dtype(&self) -> Option<GgmlDType> {
        self.content
            .tensor_infos
            .iter()
            .find(|(name, _)| name.ends_with("ffn_down.weight"))
            .map(|(_, info)| info.ggml_dtype)
    }

    /// Whether any matrix would take candle's slow scalar path on the CPU and can be
    /// re-quantized (rows a whole number of Q8_0 blocks). Every tensor is looked at: files
    /// mix block types (Qwen2.5-Coder's has Q5_0 projections behind a Q6_K `ffn_down`).
    pub fn has_slow_weights(&self) -> bool {
        self.content.tensor_infos.values().any(|info| {
            let dims = info.shape.dims();
            is_slow_on_cpu(info.ggml_dtype)
                && dims.len() == 2
                && dims[1] % GgmlDType::Q8_0.block_size() == 0
        })
    }
}

/// Maps a Hugging Face tensor name of a model of `architecture` to its GGUF name.
pub fn gguf_name(architecture: Architecture, hf_name: &str) -> Option<String> {
    match hf_name {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let gemma = architecture.is_gemma();
    let mapped = match module {
        "input_layernorm.weight" => "attn_norm.weight",
        // Llama's norm before the MLP; gemma's after attention (it has one before the MLP too).
        "post_attention_layernorm.weight" if gemma => "post_attention_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "pre_feedforward_layernorm.weight" if gemma => "ffn_norm.weight",
        "post_feedforward_layernorm.weight" if gemma => "post_ffw_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{mapped}"))
}

/// Whether `hf_name` is a gemma RMS-norm weight, which GGUF stores as `1 + w` and Hugging
/// Face as `w`.
pub fn is_offset_norm(architecture: Architecture, hf_name: &str) -> bool {
    architecture.is_gemma() && hf_name.ends_with("norm.weight")
}

/// Reads GGUF tensors under Hugging Face names, in Hugging Face layout.
///
/// GGUF `llama` files store the rows of the q and k projections interleaved per head (the
/// converter permutes them for llama.cpp's interleaved RoPE). Each row is a whole number of
/// quantization blocks, so the rows are moved back as raw bytes: no dequantization, no loss.
/// Gemma's norm weights come back as Hugging Face's `w` (the file holds `1 + w`).
pub struct GgufSource<'a> {
    file: &'a mut GgufFile,
    config: Config,
    device: Device,
}

impl<'a> GgufSource<'a> {
    pub fn new(file: &'a mut GgufFile, config: Config, device: Device) -> Self {
        Self {
            file,
            config,
            device,
        }
    }
}

impl GgufSource<'_> {
    /// The GGUF name of `name` when its rows are stored as they are served (not the
    /// interleaved q / k projections, not gemma's `1 + w` norms), so they can be read as they
    /// lie in the file.
    fn stored_as_served(&self, name: &str) -> Option<String> {
        let moved = name.ends_with("self_attn.q_proj.weight")
            || name.ends_with("self_attn.k_proj.weight")
            || is_offset_norm(self.config.architecture, name);
        gguf_name(self.config.architecture, name).filter(|_| !moved)
    }
}

impl WeightSource for GgufSource<'_> {
    fn packed_q8(&mut self, name: &str) -> Result<Option<crate::q8::PackedQ8>> {
        match self.stored_as_served(name) {
            Some(gguf) => self.file.packed_q8(&gguf),
            None => Ok(None),
        }
    }

    fn sample_rows(&mut self, name: &str, rows: &[usize]) -> Result<Option<Vec<Vec<f32>>>> {
        match self.stored_as_served(name) {
            Some(gguf) => self.file.sample_rows(&gguf, rows),
            None => Ok(None),
        }
    }

    fn get(&mut self, name: &str) -> Result<Option<Weight>> {
        let architecture = self.config.architecture;
        let Some(gguf) = gguf_name(architecture, name) else {
            return Ok(None);
        };
        let Some(tensor) = self.file.tensor(&gguf, &self.device)? else {
            return Ok(None);
        };
        if is_offset_norm(architecture, name) {
            let w = (tensor.dequantize(&self.device)? - 1.0)?;
            return Ok(Some(Weight::Dense(w)));
        }
        let heads = if name.ends_with("self_attn.q_proj.weight") {
            Some(self.config.num_attention_heads)
        } else if name.ends_with("self_attn.k_proj.weight") {
            Some(self.config.num_key_value_heads)
        } else {
            None
        };
        let tensor = match (self.config.architecture, heads) {
            (Architecture::Llama, Some(heads)) => unpermute_rows(&tensor, heads)?,
            _ => tensor,
        };
        Ok(Some(Weight::Quantized(Arc::new(tensor))))
    }
}

/// Undoes llama.cpp's per-head row interleave: GGUF row `2j + t` of a head becomes Hugging Face
/// row `t·(head_dim/2) + j`.
fn unpermute_rows(tensor: &QTensor, heads: usize) -> Result<QTensor> {
    let (rows, _) = tensor.shape().dims2()?;
    let data = tensor.data()?;
    let row_bytes = data.len() / rows;
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for t in 0..2 {
            for j in 0..half {
                let src = h * head_dim + 2 * j + t;
                let dst = h * head_dim + t * half + j;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    let storage = QStorage::from_data(Cow::Owned(out), &tensor.device(), tensor.dtype())?;
    Ok(QTensor::new(storage, tensor.shape().clone())?)
}

/// Block types whose CPU matmul takes candle's slow scalar path.
pub fn is_slow_on_cpu(dtype: GgmlDType) -> bool {
    matches!(
        dtype,
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q8_1
    )
}

/// Writes a copy of `src` with every slow 2-D weight re-quantized to `target`. Metadata is kept,
/// so the result is an ordinary GGUF file that llama.cpp reads too. The file is written beside
/// `dst` and renamed into place, so an interrupted run never leaves a half-written model.
pub fn requantize(src: &mut GgufFile, dst: &Path, target: GgmlDType) -> Result<()> {
    let device = Device::Cpu;
    rewrite(src, dst, |_, tensor| {
        let convert = is_slow_on_cpu(tensor.dtype())
            && tensor.shape().rank() == 2
            && tensor.shape().dims()[1] % target.block_size() == 0;
        Ok(if convert {
            QTensor::quantize(&tensor.dequantize(&device)?, target)?
        } else {
            tensor
        })
    })
}

/// Whether `dtype` holds 4-bit blocks.
pub fn is_4bit(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q4K)
}

/// Writes a copy of `src` with every projection of the transformer blocks (2-D, rows a whole
/// number of `target` blocks) quantized to `target`; embeddings, norms and the output head
/// stay as they are. The trainer uses it for a 4-bit base (QLoRA).
pub fn quantize_projections(src: &mut GgufFile, dst: &Path, target: GgmlDType) -> Result<()> {
    let device = Device::Cpu;
    rewrite(src, dst, |name, tensor| {
        let dims = tensor.shape().dims();
        let projection = name.starts_with("blk.")
            && name.ends_with(".weight")
            && dims.len() == 2
            && !name.contains("norm")
            && dims[1] % target.block_size() == 0;
        Ok(if projection && tensor.dtype() != target {
            QTensor::quantize(&tensor.dequantize(&device)?, target)?
        } else {
            tensor
        })
    })
}

/// Writes a copy of `src` in which every tensor passes through `edit(gguf_name, tensor)`
/// (tensors in GGUF layout). Metadata is kept, with `general.file_type` set to the type of the
/// `ffn_down` weights written; the file is written beside `dst` and renamed into place.
pub fn rewrite(
    src: &mut GgufFile,
    dst: &Path,
    mut edit: impl FnMut(&str, QTensor) -> Result<QTensor>,
) -> Result<()> {
    let device = Device::Cpu;
    let mut names: Vec<String> = src.content.tensor_infos.keys().cloned().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    let mut weight_dtype = None;
    for name in &names {
        let tensor = src
            .tensor(name, &device)?
            .ok_or_else(|| Error::InvalidConfig(format!("tensor `{name}` vanished")))?;
        let tensor = edit(name, tensor)?;
        if name.ends_with("ffn_down.weight") {
            weight_dtype = Some(tensor.dtype());
        }
        tensors.push(tensor);
    }
    let mut metadata: Vec<(&str, &gguf_file::Value)> = src
        .content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    metadata.sort_by(|a, b| a.0.cmp(b.0));
    let file_type = weight_dtype.map(|t| gguf_file::Value::U32(ggml_file_type(t)));
    if let Some(file_type) = &file_type {
        metadata.retain(|(k, _)| *k != "general.file_type");
        metadata.push(("general.file_type", file_type));
    }
    let tensor_refs: Vec<(&str, &QTensor)> = names
        .iter()
        .map(String::as_str)
        .zip(tensors.iter())
        .collect();
    // A name of this process's own: several processes may fill the same cache at once, and
    // each renames a complete file into place.
    let partial = dst.with_extension(format!(
        "partial.{}.{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    ));
    {
        let file = File::create(&partial).map_err(|e| Error::io(&partial, e))?;
        let mut writer = BufWriter::new(file);
        gguf_file::write(&mut writer, &metadata, &tensor_refs)?;
        std::io::Write::flush(&mut writer).map_err(|e| Error::io(&partial, e))?;
    }
    std::fs::rename(&partial, dst).map_err(|e| Error::io(dst, e))?;
    Ok(())
}

/// llama.cpp's `general.file_type` code for a whole-model block type.
fn ggml_file_type(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q8_0 => 7,
        GgmlDType::Q5_0 => 8,
        GgmlDType::Q5_1 => 9,
        GgmlDType::Q4K => 15,
        GgmlDType::Q5K => 17,
        GgmlDType::Q6K => 18,
        _ => 7,
    }
}
