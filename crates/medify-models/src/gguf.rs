//! GGUF files (llama.cpp): header, metadata, tensor decoding and the Hugging Face name mapping.
//!
//! Tensors are decoded to f32 on load (F32, F16, BF16, Q8_0, Q4_0, Q4_1 and the K-quants
//! Q2_K … Q6_K, Q8_K); q/k rows are put back from llama.cpp's interleaved RoPE order into
//! Hugging Face's rotate-half order.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

use crate::config::{Activation, Family, LlamaConfig, RopeScaling};
use crate::error::{ModelError, Result};
use crate::kquants::{self, QK_K};
use crate::weights::{HostWeight, WeightSource};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// Any unsigned integer type.
    U64(u64),
    /// Any signed integer type.
    I64(i64),
    /// f32 or f64.
    F64(f64),
    /// bool.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// Array of values.
    Array(Vec<GgufValue>),
}

impl GgufValue {
    fn as_u64(&self) -> Option<u64> {
        match self {
            GgufValue::U64(v) => Some(*v),
            GgufValue::I64(v) if *v >= 0 => Some(*v as u64),
            _ => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            GgufValue::F64(v) => Some(*v),
            GgufValue::U64(v) => Some(*v as f64),
            GgufValue::I64(v) => Some(*v as f64),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// ggml tensor types this reader decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
    /// 32 values: f16 scale + 32 signed bytes.
    Q8_0,
    /// 32 values: f16 scale + 16 bytes of 4-bit codes, value = (q - 8)·d.
    Q4_0,
    /// 32 values: f16 scale, f16 min + 16 bytes of 4-bit codes, value = q·d + m.
    Q4_1,
    /// 32 values: f16 scale, 32 high bits + 16 bytes of low nibbles, value = (q − 16)·d.
    Q5_0,
    /// K-quant: 256 values in 16 groups, 2-bit codes.
    Q2K,
    /// K-quant: 256 values in 16 groups, 3-bit codes.
    Q3K,
    /// K-quant: 256 values in 8 groups, 4-bit codes, 6-bit scales and mins.
    Q4K,
    /// K-quant: 256 values in 8 groups, 5-bit codes.
    Q5K,
    /// K-quant: 256 values in 16 groups, 6-bit codes, 8-bit scales.
    Q6K,
    /// K-quant: 256 values, f32 scale, 8-bit codes.
    Q8K,
}

/// ggml's id of each type this crate reads (the writer uses the same table).
const GGML_IDS: [(u32, GgmlType); 13] = [
    (0, GgmlType::F32),
    (1, GgmlType::F16),
    (2, GgmlType::Q4_0),
    (3, GgmlType::Q4_1),
    (6, GgmlType::Q5_0),
    (8, GgmlType::Q8_0),
    (10, GgmlType::Q2K),
    (11, GgmlType::Q3K),
    (12, GgmlType::Q4K),
    (13, GgmlType::Q5K),
    (14, GgmlType::Q6K),
    (15, GgmlType::Q8K),
    (30, GgmlType::Bf16),
];

impl GgmlType {
    /// ggml's type id.
    pub(crate) fn id(self) -> u32 {
        GGML_IDS
            .iter()
            .find(|(_, t)| *t == self)
            .map_or(u32::MAX, |(id, _)| *id)
    }

    fn from_id(id: u32) -> std::result::Result<GgmlType, String> {
        Ok(match GGML_IDS.iter().find(|(i, _)| *i == id) {
            Some((_, t)) => *t,
            None => {
                let name = match id {
                    7 => "Q5_1",
                    9 => "Q8_1",
                    16..=23 => "an IQ type",
                    _ => "an unknown type",
                };
                return Err(format!(
                    "ggml type {id} ({name}) is not supported; supported are F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K"
                ));
            }
        })
    }

    /// (values per block, bytes per block)
    pub(crate) fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q2K => (QK_K, 84),
            GgmlType::Q3K => (QK_K, 110),
            GgmlType::Q4K => (QK_K, 144),
            GgmlType::Q5K => (QK_K, 176),
            GgmlType::Q6K => (QK_K, 210),
            GgmlType::Q8K => (QK_K, 292),
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    /// PyTorch-order shape (GGUF stores the innermost dimension first).
    pub shape: Vec<usize>,
    /// Storage type id (decoded lazily so that an unsupported type only fails if it is used).
    pub type_id: u32,
    /// Byte offset of the data from the start of the file.
    pub offset: usize,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    origin: &'a str,
}

impl<'a> Reader<'a> {
    fn err(&self, what: impl std::fmt::Display) -> ModelError {
        ModelError::weights(
            self.origin,
            format!("GGUF header at byte {}: {what}", self.pos),
        )
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| self.err("file ends early"))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn len(&mut self) -> Result<usize> {
        let n = self.u64()?;
        if n > self.bytes.len() as u64 {
            return Err(self.err(format!("length {n} exceeds the file size")));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.len()?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<GgufValue> {
        let le = |b: &[u8]| -> [u8; 8] {
            let mut a = [0u8; 8];
            a[..b.len()].copy_from_slice(b);
            a
        };
        Ok(match ty {
            0 => GgufValue::U64(self.take(1)?[0] as u64),
            1 => GgufValue::I64(self.take(1)?[0] as i8 as i64),
            2 => GgufValue::U64(u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as u64),
            3 => GgufValue::I64(i16::from_le_bytes(self.take(2)?.try_into().expect("2")) as i64),
            4 => GgufValue::U64(self.u32()? as u64),
            5 => GgufValue::I64(self.u32()? as i32 as i64),
            6 => GgufValue::F64(f32::from_le_bytes(self.take(4)?.try_into().expect("4")) as f64),
            7 => GgufValue::Bool(self.take(1)?[0] != 0),
            8 => GgufValue::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(self.err("arrays nested too deeply"));
                }
                let elem = self.u32()?;
                let n = self.len()?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(i64::from_le_bytes(le(self.take(8)?))),
            12 => GgufValue::F64(f64::from_le_bytes(le(self.take(8)?))),
            other => return Err(self.err(format!("unknown metadata value type {other}"))),
        })
    }
}

/// A memory-mapped GGUF file with its metadata, tensor table and derived [`LlamaConfig`].
pub struct GgufSource {
    path: PathBuf,
    mmap: Mmap,
    metadata: BTreeMap<String, GgufValue>,
    /// GGUF tensor name → info
    tensors: BTreeMap<String, GgufTensorInfo>,
    /// Hugging Face name → GGUF name
    names: BTreeMap<String, String>,
    config: LlamaConfig,
}

impl GgufSource {
    /// Opens and indexes a GGUF file (version 2 or 3, architecture `llama`).
    pub fn open(path: &Path) -> Result<GgufSource> {
        let origin = path.display().to_string();
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: read-only map; every access below is bounds-checked against its length.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let mut r = Reader {
            bytes: &mmap,
            pos: 0,
            origin: &origin,
        };
        if r.take(4).ok() != Some(b"GGUF".as_slice()) {
            return Err(ModelError::weights(
                &origin,
                "not a GGUF file (magic bytes differ)",
            ));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::weights(
                &origin,
                format!("GGUF version {version} is not supported (2 or 3)"),
            ));
        }
        let n_tensors = r.len()?;
        let n_kv = r.len()?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let value = r.value(ty, 0)?;
            metadata.insert(key, value);
        }
        let mut infos = Vec::with_capacity(n_tensors.min(1 << 16));
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()? as usize;
            if n_dims > 4 {
                return Err(r.err(format!("tensor {name} has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(r.len()?);
            }
            dims.reverse();
            let type_id = r.u32()?;
            let offset = r.u64()?;
            infos.push((name, dims, type_id, offset));
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(GgufValue::as_u64)
            .unwrap_or(32)
            .max(1) as usize;
        let data_start = r.pos.div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, shape, type_id, offset) in infos {
            let offset = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(data_start))
                .ok_or_else(|| {
                    ModelError::weights(&origin, format!("tensor {name}: offset out of range"))
                })?;
            tensors.insert(
                name,
                GgufTensorInfo {
                    shape,
                    type_id,
                    offset,
                },
            );
        }
        let config = config_from_metadata(&metadata, &tensors, &origin)?;
        let names = hf_names(&tensors);
        let mut source = GgufSource {
            path: path.to_path_buf(),
            mmap,
            metadata,
            tensors,
            names,
            config,
        };
        // Llama 3.1's rope scaling, as llama.cpp stores it: a divisor per frequency.
        if source.tensors.contains_key("rope_freqs.weight") {
            let (_, factors) = source.decode("rope_freqs.weight")?;
            source.config.rope_freq_factors = Some(factors);
            source.config.validate(&origin)?;
        }
        Ok(source)
    }

    /// The model configuration read from the metadata.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// All metadata key/value pairs.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// The GGUF tensor table.
    pub fn tensor_infos(&self) -> &BTreeMap<String, GgufTensorInfo> {
        &self.tensors
    }

    /// The chat template stored in the file, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.metadata
            .get("tokenizer.chat_template")
            .and_then(GgufValue::as_str)
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decodes a tensor by its GGUF name to f32, in the file's row order.
    pub fn decode(&self, gguf_name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let origin = self.path.display().to_string();
        let info = self
            .tensors
            .get(gguf_name)
            .ok_or_else(|| ModelError::weights(&origin, format!("no tensor {gguf_name}")))?;
        let ty = GgmlType::from_id(info.type_id)
            .map_err(|m| ModelError::weights(&origin, format!("{gguf_name}: {m}")))?;
        let numel = info
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| {
                ModelError::weights(
                    &origin,
                    format!("{gguf_name}: shape {:?} overflows", info.shape),
                )
            })?;
        let (per_block, block_bytes) = ty.block();
        let row = info.shape.last().copied().unwrap_or(1);
        if row % per_block != 0 {
            return Err(ModelError::weights(
                &origin,
                format!("{gguf_name}: rows of {row} do not split into blocks of {per_block}"),
            ));
        }
        let bytes = (numel / per_block)
            .checked_mul(block_bytes)
            .and_then(|len| info.offset.checked_add(len))
            .and_then(|end| self.mmap.get(info.offset..end))
            .ok_or_else(|| {
                ModelError::weights(
                    &origin,
                    format!("{gguf_name}: data runs past the end of the file"),
                )
            })?;
        let values = decode_blocks(ty, bytes, numel);
        // A block whose scale is NaN or infinite (a damaged or hostile file) would train on
        // NaN: name the tensor and block instead.
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::weights(
                &origin,
                format!(
                    "{gguf_name}: block {} decodes to a non-finite value (its scale is NaN or infinite)",
                    i / per_block
                ),
            ));
        }
        Ok((info.shape.clone(), values))
    }
}

/// The little-endian f16 at byte `i` of a block, as f32.
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Decodes `numel` values of type `ty` (ggml's reference dequantization).
pub fn decode_blocks(ty: GgmlType, bytes: &[u8], numel: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(numel);
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Bf16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for blk in bytes.chunks_exact(34) {
                let d = f16_at(blk, 0);
                out.extend(blk[2..].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let q41 = ty == GgmlType::Q4_1;
            let step = if q41 { 20 } else { 18 };
            for blk in bytes.chunks_exact(step) {
                let d = f16_at(blk, 0);
                let (m, qs) = if q41 {
                    (f16_at(blk, 2), &blk[4..])
                } else {
                    (0.0, &blk[2..])
                };
                let value = |q: u8| {
                    if q41 {
                        q as f32 * d + m
                    } else {
                        (q as f32 - 8.0) * d
                    }
                };
                out.extend(qs.iter().map(|&b| value(b & 0x0F)));
                out.extend(qs.iter().map(|&b| value(b >> 4)));
            }
        }
        GgmlType::Q5_0 => {
            for blk in bytes.chunks_exact(22) {
                let d = f16_at(blk, 0);
                let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                let qs = &blk[6..];
                let value = |low: u8, j: usize| {
                    let high = ((qh >> j) & 1) as u8;
                    ((low | (high << 4)) as i32 - 16) as f32 * d
                };
                out.extend(qs.iter().enumerate().map(|(j, &b)| value(b & 0x0F, j)));
                out.extend(qs.iter().enumerate().map(|(j, &b)| value(b >> 4, j + 16)));
            }
        }
        GgmlType::Q2K
        | GgmlType::Q3K
        | GgmlType::Q4K
        | GgmlType::Q5K
        | GgmlType::Q6K
        | GgmlType::Q8K => {
            let decode: fn(&[u8], &mut Vec<f32>) = match ty {
                GgmlType::Q2K => kquants::q2_k,
                GgmlType::Q3K => kquants::q3_k,
                GgmlType::Q4K => kquants::q4_k,
                GgmlType::Q5K => kquants::q5_k,
                GgmlType::Q6K => kquants::q6_k,
                _ => kquants::q8_k,
            };
            for blk in bytes.chunks_exact(ty.block().1) {
                decode(blk, &mut out);
            }
        }
    }
    out
}

/// Puts rows of a q or k weight back from llama.cpp's interleaved pairs into rotate-half order.
pub fn unpermute_qk(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    reorder_qk(values, rows, cols, heads, false)
}

/// Moves the rows of each head between llama.cpp's interleaved RoPE pairs (row `h·d + 2i + j`)
/// and Hugging Face's rotate-half order (row `h·d + j·d/2 + i`): into the interleaved order when
/// `interleave`, out of it otherwise.
pub(crate) fn reorder_qk(
    values: &[f32],
    rows: usize,
    cols: usize,
    heads: usize,
    interleave: bool,
) -> Vec<f32> {
    let dh = rows / heads;
    let half = dh / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let paired = (h * dh + 2 * i + j) * cols;
                let halves = (h * dh + j * half + i) * cols;
                let (src, dst) = if interleave {
                    (halves, paired)
                } else {
                    (paired, halves)
                };
                out[dst..dst + cols].copy_from_slice(&values[src..src + cols]);
            }
        }
    }
    out
}

fn hf_names(tensors: &BTreeMap<String, GgufTensorInfo>) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for g in tensors.keys() {
        let hf = match g.as_str() {
            "token_embd.weight" => Some("model.embed_tokens.weight".to_string()),
            "output_norm.weight" => Some("model.norm.weight".to_string()),
            "output.weight" => Some("lm_head.weight".to_string()),
            other => other.strip_prefix("blk.").and_then(|rest| {
                let (i, part) = rest.split_once('.')?;
                let (part, kind) = part.rsplit_once('.')?;
                let hf = match part {
                    "attn_q" => "self_attn.q_proj",
                    "attn_k" => "self_attn.k_proj",
                    "attn_v" => "self_attn.v_proj",
                    "attn_output" => "self_attn.o_proj",
                    "ffn_gate" => "mlp.gate_proj",
                    "ffn_up" => "mlp.up_proj",
                    "ffn_down" => "mlp.down_proj",
                    "attn_norm" => "input_layernorm",
                    "ffn_norm" => "post_attention_layernorm",
                    _ => return None,
                };
                Some(format!("model.layers.{i}.{hf}.{kind}"))
            }),
        };
        map.insert(hf.unwrap_or_else(|| format!("gguf:{g}")), g.clone());
    }
    map
}

fn config_from_metadata(
    meta: &BTreeMap<String, GgufValue>,
    tensors: &BTreeMap<String, GgufTensorInfo>,
    origin: &str,
) -> Result<LlamaConfig> {
    let arch = meta
        .get("general.architecture")
        .and_then(GgufValue::as_str)
        .ok_or_else(|| ModelError::config(origin, "GGUF metadata lacks general.architecture"))?;
    let gemma = match arch {
        "llama" => false,
        "gemma" => true,
        other => {
            return Err(ModelError::UnsupportedArchitecture(format!(
                "GGUF architecture {other} (llama and gemma are read)"
            )));
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let get_u = |k: &str| {
        meta.get(&key(k))
            .and_then(GgufValue::as_u64)
            .map(|v| v as usize)
    };
    let need = |k: &str| {
        get_u(k).filter(|&v| v > 0).ok_or_else(|| {
            ModelError::config(origin, format!("GGUF metadata lacks a positive {}", key(k)))
        })
    };
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    let kv_heads = get_u("attention.head_count_kv").unwrap_or(heads);
    let head_dim = get_u("attention.key_length")
        .or_else(|| get_u("rope.dimension_count"))
        .unwrap_or(hidden / heads);
    let tokens_len = match meta.get("tokenizer.ggml.tokens") {
        Some(GgufValue::Array(a)) => Some(a.len()),
        _ => None,
    };
    let vocab = get_u("vocab_size")
        .or(tokens_len)
        .or_else(|| {
            tensors
                .get("token_embd.weight")
                .and_then(|t| t.shape.first().copied())
        })
        .ok_or_else(|| ModelError::config(origin, "GGUF metadata gives no vocabulary size"))?;
    let rope_scaling = match meta
        .get(&key("rope.scaling.type"))
        .and_then(GgufValue::as_str)
    {
        None | Some("none") => RopeScaling::Default,
        Some("linear") => RopeScaling::Linear {
            factor: meta
                .get(&key("rope.scaling.factor"))
                .and_then(GgufValue::as_f64)
                .unwrap_or(1.0),
        },
        Some(other) => {
            return Err(ModelError::config(
                origin,
                format!("GGUF rope scaling {other:?} is not supported"),
            ));
        }
    };
    let id = |k: &str| meta.get(k).and_then(GgufValue::as_u64).map(|v| v as u32);
    let config = LlamaConfig {
        family: if gemma { Family::Gemma } else { Family::Llama },
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: need("feed_forward_length")?,
        num_hidden_layers: need("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: meta
            .get(&key("attention.layer_norm_rms_epsilon"))
            .and_then(GgufValue::as_f64)
            .unwrap_or(1e-5),
        rope_theta: meta
            .get(&key("rope.freq_base"))
            .and_then(GgufValue::as_f64)
            .unwrap_or(10_000.0),
        rope_scaling,
        max_position_embeddings: get_u("context_length").unwrap_or(2048),
        tie_word_embeddings: !tensors.contains_key("output.weight"),
        sliding_window: None,
        hidden_act: if gemma {
            Activation::GeluTanh
        } else {
            Activation::Silu
        },
        attention_bias: tensors.contains_key("blk.0.attn_q.bias"),
        mlp_bias: tensors.contains_key("blk.0.ffn_up.bias"),
        bos_token_id: id("tokenizer.ggml.bos_token_id"),
        eos_token_ids: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
        pad_token_id: id("tokenizer.ggml.padding_token_id"),
        quantization: None,
        rope_freq_factors: None,
    };
    config.validate(origin)?;
    Ok(config)
}

impl WeightSource for GgufSource {
    fn origin(&self) -> String {
        self.path.display().to_string()
    }

    fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    fn load(&self, name: &str) -> Result<HostWeight> {
        let gguf_name = self
            .names
            .get(name)
            .ok_or_else(|| ModelError::weights(self.origin(), format!("no tensor {name}")))?;
        let (shape, mut values) = self.decode(gguf_name)?;
        let gemma = self.config.family == Family::Gemma;
        if gemma && gguf_name.ends_with("norm.weight") {
            // llama.cpp's Gemma norms hold `1 + w`; the model applies Hugging Face's `1 + w`.
            values.iter_mut().for_each(|v| *v -= 1.0);
        }
        let heads = if gemma {
            None // llama.cpp's Gemma keeps Hugging Face's q/k row order
        } else if name.ends_with("q_proj.weight") || name.ends_with("q_proj.bias") {
            Some(self.config.num_attention_heads)
        } else if name.ends_with("k_proj.weight") || name.ends_with("k_proj.bias") {
            Some(self.config.num_key_value_heads)
        } else {
            None
        };
        if let Some(heads) = heads {
            let rows = match shape.as_slice() {
                [rows, ..] if *rows > 0 => *rows,
                _ => {
                    return Err(ModelError::weights(
                        self.origin(),
                        format!("{gguf_name}: shape {shape:?} has no rows to split into heads"),
                    ));
                }
            };
            let cols = values.len() / rows.max(1);
            if rows % (2 * heads) != 0 {
                return Err(ModelError::weights(
                    self.origin(),
                    format!("{gguf_name}: {rows} rows do not split into {heads} heads"),
                ));
            }
            values = unpermute_qk(&values, rows, cols, heads);
        }
        Ok(HostWeight::Dense { shape, values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal GGUF v3 file: u32/u64 metadata and F32 tensors given as (name, GGUF-order
    /// dims, values).
    fn gguf_file(
        meta: &[(&str, u64)],
        tensors: &[(&str, Vec<u64>, Vec<f32>)],
    ) -> tempfile::NamedTempFile {
        let mut b = Vec::new();
        let s = |b: &mut Vec<u8>, t: &str| {
            b.extend((t.len() as u64).to_le_bytes());
            b.extend(t.as_bytes());
        };
        b.extend(b"GGUF");
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((meta.len() as u64 + 1).to_le_bytes());
        s(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "llama");
        for (k, v) in meta {
            s(&mut b, k);
            b.extend(10u32.to_le_bytes());
            b.extend(v.to_le_bytes());
        }
        let mut offset = 0u64;
        for (name, dims, values) in tensors {
            s(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(0u32.to_le_bytes()); // F32
            b.extend(offset.to_le_bytes());
            offset += 4 * values.len() as u64;
        }
        b.resize(b.len().div_ceil(32) * 32, 0);
        for (_, _, values) in tensors {
            for v in values {
                b.extend(v.to_le_bytes());
            }
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, &b).unwrap();
        f
    }

    const META: [(&str, u64); 5] = [
        ("llama.embedding_length", 8),
        ("llama.attention.head_count", 2),
        ("llama.feed_forward_length", 16),
        ("llama.block_count", 1),
        ("llama.vocab_size", 4),
    ];

    #[test]
    fn a_minimal_file_opens_and_its_q_weight_loads() {
        let f = gguf_file(&META, &[("blk.0.attn_q.weight", vec![8, 8], vec![0.5; 64])]);
        let src = GgufSource::open(f.path()).unwrap();
        assert_eq!(src.config().head_dim, 4);
        let w = src.load("model.layers.0.self_attn.q_proj.weight").unwrap();
        assert!(matches!(w, HostWeight::Dense { ref shape, .. } if shape == &[8, 8]));
    }

    #[test]
    fn a_non_finite_value_is_an_error_naming_tensor_and_block() {
        let mut values = vec![0.5; 64];
        values[40] = f32::NAN;
        let f = gguf_file(&META, &[("blk.0.attn_q.weight", vec![8, 8], values)]);
        let src = GgufSource::open(f.path()).unwrap();
        let err = src
            .load("model.layers.0.self_attn.q_proj.weight")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("blk.0.attn_q.weight") && err.contains("block 40"),
            "{err}"
        );
    }

    #[test]
    fn every_type_has_one_id_both_ways() {
        for (id, ty) in GGML_IDS {
            assert_eq!((GgmlType::from_id(id), ty.id()), (Ok(ty), id));
        }
        assert!(GgmlType::from_id(7).unwrap_err().contains("Q5_1"));
    }

    #[test]
    fn q8_k_blocks_scale_signed_bytes_by_an_f32() {
        let mut blk = 0.25f32.to_le_bytes().to_vec();
        blk.extend((0..256).map(|i| (i as i8).wrapping_sub(100) as u8));
        blk.extend([0u8; 32]);
        let v = decode_blocks(GgmlType::Q8K, &blk, 256);
        assert_eq!(
            (v[0], v[100], v[255]),
            (-25.0, 0.0, 0.25 * 155i32.wrapping_sub(256) as f32)
        );
    }

    #[test]
    fn scalar_tensors_where_matrices_belong_are_errors() {
        // No vocabulary size in the metadata, and an embedding table with no dimensions.
        let f = gguf_file(&META[..4], &[("token_embd.weight", vec![], vec![1.0])]);
        let e = GgufSource::open(f.path())
            .err()
            .expect("no vocabulary size");
        assert!(e.to_string().contains("vocabulary"), "{e}");
        let f = gguf_file(&META, &[("blk.0.attn_k.weight", vec![], vec![1.0])]);
        let src = GgufSource::open(f.path()).unwrap();
        let e = src
            .load("model.layers.0.self_attn.k_proj.weight")
            .unwrap_err();
        assert!(e.to_string().contains("no rows"), "{e}");
    }

    #[test]
    fn lying_shapes_and_configs_are_errors() {
        let huge = 1u64 << 40;
        let f = gguf_file(
            &META,
            &[("blk.0.attn_q.weight", vec![huge, huge], vec![0.0])],
        );
        // each dimension is larger than the file: refused when the table is read
        assert!(GgufSource::open(f.path()).is_err());
        let mut meta = META.to_vec();
        meta.push(("llama.attention.key_length", 3));
        let f = gguf_file(&meta, &[]);
        let e = GgufSource::open(f.path()).err().expect("odd head_dim");
        assert!(e.to_string().contains("head_dim"), "{e}");
        let mut meta = META.to_vec();
        meta.push(("llama.attention.head_count_kv", 0));
        let f = gguf_file(&meta, &[]);
        assert!(GgufSource::open(f.path()).is_err());
    }

    #[test]
    fn unpermute_inverts_llama_cpp_interleave() {
        // two heads of four rows, one column: HF rows 0..8
        let hf: Vec<f32> = (0..8).map(|v| v as f32).collect();
        // llama.cpp: per head, rows (0, 2, 1, 3) of the head
        let gguf = vec![0., 2., 1., 3., 4., 6., 5., 7.];
        assert_eq!(unpermute_qk(&gguf, 8, 1, 2), hf);
    }

    #[test]
    fn q4_blocks_decode_low_nibbles_first() {
        let mut blk = vec![0u8; 20];
        blk[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        blk[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        blk[4] = 0x31; // value 0: code 1, value 16: code 3
        let v = decode_blocks(GgmlType::Q4_1, &blk, 32);
        assert_eq!((v[0], v[16], v[1]), (-0.5, 0.5, -1.0));
        let mut blk0 = blk.clone();
        blk0.drain(2..4);
        let v = decode_blocks(GgmlType::Q4_0, &blk0, 32);
        assert_eq!((v[0], v[16]), (-3.5, -2.5));
    }
}
