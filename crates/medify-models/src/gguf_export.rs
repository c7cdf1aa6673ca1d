//! Writing a model as GGUF v3, the file llama.cpp, Ollama and LM Studio run: llama.cpp's
//! architecture keys and tensor names, q/k rows in its interleaved RoPE order, the tokenizer
//! (byte-level BPE), its special-token ids and `add_bos`, and the chat template the model was
//! trained with, so generation stops at the end-of-turn token.
//!
//! Block types are laid out as ggml lays them out (Q8_0, Q4_0 and Q5_0 as its reference
//! quantizers make them; Q4_K and Q6_K blocks with scales and mins fitted per sub-block), and
//! Q4_K_M picks each tensor's type as llama.cpp does. Norms stay F32, and a matrix whose rows do
//! not split into blocks falls back as llama.cpp's tools do.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use half::{bf16, f16};

use crate::config::{Family, RopeScaling};
use crate::error::{ModelError, Result};
use crate::gguf::GgmlType;
use crate::kquants;
use crate::model::CausalLm;
use crate::tokenizer::ModelTokenizer;

/// The tensor types of an export: one type for every matrix, or llama.cpp's Q4_K_M mixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GgufType {
    /// 32-bit floats: exact.
    F32,
    /// IEEE half precision (llama.cpp's usual unquantized export).
    #[default]
    F16,
    /// bfloat16.
    Bf16,
    /// 8-bit blocks of 32 with an f16 scale (8.5 bits per weight).
    Q8_0,
    /// 4-bit blocks of 32 with an f16 scale (4.5 bits per weight).
    Q4_0,
    /// llama.cpp's `Q4_K_M`: Q4_K matrices, with Q6_K for the output (or tied embedding) and
    /// for `attn_v` and `ffn_down` in the layers `use_more_bits` picks; a matrix whose rows do
    /// not split into blocks of 256 falls back as llama.cpp does (Q4_K to Q5_0, Q6_K to Q8_0).
    Q4KM,
}

impl FromStr for GgufType {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<GgufType> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => GgufType::F32,
            "f16" => GgufType::F16,
            "bf16" => GgufType::Bf16,
            "q8_0" => GgufType::Q8_0,
            "q4_0" => GgufType::Q4_0,
            "q4_k_m" => GgufType::Q4KM,
            other => {
                return Err(ModelError::InvalidRequest(format!(
                    "unknown GGUF type {other:?} (f32, f16, bf16, q8_0, q4_0, q4_k_m)"
                )));
            }
        })
    }
}

impl GgufType {
    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_*`).
    fn file_type(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::Q4_0 => 2,
            GgufType::Q8_0 => 7,
            GgufType::Q4KM => 15,
            GgufType::Bf16 => 32,
        }
    }

    fn quantized(self) -> bool {
        matches!(self, GgufType::Q8_0 | GgufType::Q4_0 | GgufType::Q4KM)
    }

    /// The type a matrix named `gguf` (layer `layer` of `layers`) is stored in, with rows of
    /// `row` values; `tied` when the embedding is also the output.
    fn storage(
        self,
        gguf: &str,
        layer: Option<usize>,
        layers: usize,
        row: usize,
        tied: bool,
    ) -> Storage {
        let simple = match self {
            GgufType::F32 => Storage::F32,
            GgufType::F16 => Storage::F16,
            GgufType::Bf16 => Storage::Bf16,
            GgufType::Q8_0 => Storage::Q8_0,
            GgufType::Q4_0 => Storage::Q4_0,
            GgufType::Q4KM => {
                // llama.cpp's use_more_bits: the first and last eighth of the layers, and
                // every third one between.
                let more_bits =
                    |i: usize| i < layers / 8 || i >= 7 * layers / 8 || (i - layers / 8) % 3 == 2;
                let six = gguf == "output.weight"
                    || (tied && gguf == "token_embd.weight")
                    || ((gguf.ends_with(".attn_v.weight") || gguf.ends_with(".ffn_down.weight"))
                        && layer.is_some_and(more_bits));
                let k = if six { Storage::Q6K } else { Storage::Q4K };
                return if row.is_multiple_of(kquants::QK_K) {
                    k
                } else if k == Storage::Q6K {
                    Storage::Q8_0
                } else {
                    Storage::Q5_0
                };
            }
        };
        if simple.block().0 > 1 && !row.is_multiple_of(simple.block().0) {
            Storage::F16
        } else {
            simple
        }
    }
}

/// How one tensor is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Storage {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q5_0,
    Q4K,
    Q6K,
}

impl Storage {
    /// The ggml type: its id and block layout come from the reader's table.
    fn ggml(self) -> GgmlType {
        match self {
            Storage::F32 => GgmlType::F32,
            Storage::F16 => GgmlType::F16,
            Storage::Bf16 => GgmlType::Bf16,
            Storage::Q8_0 => GgmlType::Q8_0,
            Storage::Q4_0 => GgmlType::Q4_0,
            Storage::Q5_0 => GgmlType::Q5_0,
            Storage::Q4K => GgmlType::Q4K,
            Storage::Q6K => GgmlType::Q6K,
        }
    }

    /// (values per block, bytes per block)
    fn block(self) -> (usize, usize) {
        self.ggml().block()
    }

    /// `values` (whole rows of a tensor) in this type's bytes.
    fn encode(self, values: &[f32], out: &mut Vec<u8>) {
        out.clear();
        let per_block = self.block().0;
        match self {
            Storage::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
            Storage::F16 => values
                .iter()
                .for_each(|v| out.extend(f16::from_f32(*v).to_le_bytes())),
            Storage::Bf16 => values
                .iter()
                .for_each(|v| out.extend(bf16::from_f32(*v).to_le_bytes())),
            Storage::Q8_0 => values
                .chunks_exact(per_block)
                .for_each(|b| q8_0_block(b, out)),
            Storage::Q4_0 => values
                .chunks_exact(per_block)
                .for_each(|b| q4_0_block(b, out)),
            Storage::Q5_0 => values
                .chunks_exact(per_block)
                .for_each(|b| q5_0_block(b, out)),
            Storage::Q4K => values
                .chunks_exact(per_block)
                .for_each(|b| kquants::encode_q4_k(b, out)),
            Storage::Q6K => values
                .chunks_exact(per_block)
                .for_each(|b| kquants::encode_q6_k(b, out)),
        }
    }
}

/// ggml's `quantize_row_q8_0_ref` for one block of 32.
fn q8_0_block(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend(f16::from_f32(d).to_le_bytes());
    out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
}

/// ggml's `quantize_row_q4_0_ref` for one block of 32: the signed value of largest magnitude
/// maps to -8; element `j` goes to the low nibble of byte `j`, element `j + 16` to its high one.
fn q4_0_block(x: &[f32], out: &mut Vec<u8>) {
    let d = kquants::signed_max(x) / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend(f16::from_f32(d).to_le_bytes());
    let code = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    out.extend((0..16).map(|j| code(x[j]) | (code(x[j + 16]) << 4)));
}

/// ggml's `quantize_row_q5_0_ref` for one block of 32: as Q4_0 with 5-bit codes, the fifth bit
/// of element `j` in bit `j` of a little-endian u32.
fn q5_0_block(x: &[f32], out: &mut Vec<u8>) {
    let d = kquants::signed_max(x) / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend(f16::from_f32(d).to_le_bytes());
    let code = |v: f32| ((v * id + 16.5) as i8).min(31) as u8;
    let mut qh = 0u32;
    let mut qs = [0u8; 16];
    for j in 0..16 {
        let (a, b) = (code(x[j]), code(x[j + 16]));
        qs[j] = (a & 0x0F) | ((b & 0x0F) << 4);
        qh |= (((a & 0x10) >> 4) as u32) << j;
        qh |= (((b & 0x10) >> 4) as u32) << (j + 16);
    }
    out.extend(qh.to_le_bytes());
    out.extend(qs);
}

/// What to write besides the weights.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufExport {
    /// The matrices' type (norms are always F32).
    pub dtype: GgufType,
    /// `general.name`.
    pub name: Option<String>,
    /// The chat template to store (default: the tokenizer's own). Pass the one the model was
    /// trained with, so llama.cpp renders prompts the same way and stops at its end-of-turn.
    pub chat_template: Option<String>,
    /// Replace an existing file.
    pub overwrite: bool,
}

/// A metadata value as GGUF types it.
enum Meta {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strings(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
}

impl Meta {
    fn write(&self, out: &mut Vec<u8>) {
        let string = |s: &str, out: &mut Vec<u8>| {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        };
        match self {
            Meta::U32(v) => {
                out.extend(4u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::F32(v) => {
                out.extend(6u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::Bool(v) => {
                out.extend(7u32.to_le_bytes());
                out.push(*v as u8);
            }
            Meta::Str(s) => {
                out.extend(8u32.to_le_bytes());
                string(s, out);
            }
            Meta::Strings(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|s| string(s, out));
            }
            Meta::I32s(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|v| out.extend(v.to_le_bytes()));
            }
            Meta::F32s(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(6u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|v| out.extend(v.to_le_bytes()));
            }
        }
    }
}

const ALIGNMENT: usize = 32;

/// llama.cpp's name of a Hugging Face tensor.
fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let short = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{kind}"))
}

/// Rows of a q or k weight (or bias) from Hugging Face's rotate-half order into llama.cpp's
/// interleaved pairs (the inverse of [`crate::gguf::unpermute_qk`]).
pub fn permute_qk(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    crate::gguf::reorder_qk(values, rows, cols, heads, true)
}

/// The tokenizer as `tokenizer.ggml.*` metadata: byte-level BPE (`gpt2`) or SentencePiece BPE
/// with byte fallback (`llama`).
fn tokenizer_meta(tok: &ModelTokenizer, origin: &str) -> Result<Vec<(String, Meta)>> {
    let bad = |m: String| ModelError::Tokenizer {
        origin: origin.to_string(),
        message: m,
    };
    let json: serde_json::Value = serde_json::from_str(
        &tok.inner()
            .to_string(false)
            .map_err(|e| bad(e.to_string()))?,
    )
    .map_err(|e| bad(e.to_string()))?;
    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(bad(format!(
            "only BPE tokenizers (byte-level, or SentencePiece with byte fallback) export to GGUF; this one is {}",
            model["type"]
        )));
    }
    // SentencePiece BPE (Llama 2, TinyLlama, Mistral): `▁` for spaces, bytes as <0xXX> tokens.
    let sentencepiece = model["byte_fallback"] == true;
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("the BPE model has no vocabulary".into()))?;
    let mut tokens: Vec<Option<String>> = Vec::new();
    let mut put = |id: usize, token: &str| -> Result<()> {
        if id > 1 << 24 {
            return Err(bad(format!("token id {id} is out of range")));
        }
        if tokens.len() <= id {
            tokens.resize(id + 1, None);
        }
        tokens[id] = Some(token.to_string());
        Ok(())
    };
    for (token, id) in vocab {
        put(id.as_u64().unwrap_or(u64::MAX) as usize, token)?;
    }
    let mut types = BTreeMap::new();
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) else {
            continue;
        };
        put(id as usize, content)?;
        types.insert(id as usize, if added["special"] == true { 3 } else { 4 });
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.ok_or_else(|| bad(format!("no token has id {i}"))))
        .collect::<Result<_>>()?;
    let is_byte = |t: &str| t.len() == 6 && t.starts_with("<0x") && t.ends_with('>');
    let token_types: Vec<i32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| match types.get(&i) {
            Some(&ty) => ty,
            None if sentencepiece && is_byte(t) => 6, // BYTE
            None => 1,
        })
        .collect();
    let merges: Vec<String> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Array(pair) => match (pair.first(), pair.get(1)) {
                (Some(a), Some(b)) => Ok(format!(
                    "{} {}",
                    a.as_str().unwrap_or(""),
                    b.as_str().unwrap_or("")
                )),
                _ => Err(bad(format!("merge {m} is not a pair"))),
            },
            other => Err(bad(format!("merge {other} is not a pair"))),
        })
        .collect::<Result<_>>()?;
    // The name the tokenizer was read with, else llama.cpp's name for its split: the Llama 3
    // regex, or GPT-2's (plain byte-level).
    let pre = match &tok.gguf_pre {
        Some(pre) => pre.as_str(),
        None if json["pre_tokenizer"].to_string().contains("Split") => "llama-bpe",
        None => "gpt-2",
    };
    let id_of = |t: &Option<String>| t.as_deref().and_then(|t| tok.token_id(t));
    let probe = tok.encode("a", true).map_err(|e| bad(e.to_string()))?;
    let bos = id_of(&tok.bos_token);
    let eos = id_of(&tok.eos_token);
    let mut meta = if sentencepiece {
        // llama.cpp's SentencePiece tokenizer merges by score, not by the merge list: a token
        // made by the merge of rank k scores -k, so merges apply in the list's order; tokens no
        // merge makes score 0. transformers reads the merge list itself.
        let rank: std::collections::HashMap<String, usize> = merges
            .iter()
            .enumerate()
            .rev()
            .map(|(k, m)| (m.replacen(' ', "", 1), k))
            .collect();
        let scores: Vec<f32> = tokens
            .iter()
            .map(|t| rank.get(t).map_or(0.0, |&k| -(k as f32)))
            .collect();
        vec![
            (
                "tokenizer.ggml.model".to_string(),
                Meta::Str("llama".into()),
            ),
            ("tokenizer.ggml.tokens".to_string(), Meta::Strings(tokens)),
            ("tokenizer.ggml.scores".to_string(), Meta::F32s(scores)),
            (
                "tokenizer.ggml.token_type".to_string(),
                Meta::I32s(token_types),
            ),
            ("tokenizer.ggml.merges".to_string(), Meta::Strings(merges)),
            (
                "tokenizer.ggml.add_space_prefix".to_string(),
                Meta::Bool(true),
            ),
        ]
    } else {
        vec![
            ("tokenizer.ggml.model".to_string(), Meta::Str("gpt2".into())),
            ("tokenizer.ggml.pre".to_string(), Meta::Str(pre.into())),
            ("tokenizer.ggml.tokens".to_string(), Meta::Strings(tokens)),
            (
                "tokenizer.ggml.token_type".to_string(),
                Meta::I32s(token_types),
            ),
            ("tokenizer.ggml.merges".to_string(), Meta::Strings(merges)),
        ]
    };
    for (key, id) in [
        ("bos_token_id", bos),
        ("eos_token_id", eos),
        ("padding_token_id", id_of(&tok.pad_token)),
        ("unknown_token_id", id_of(&tok.unk_token)),
    ] {
        if let Some(id) = id {
            meta.push((format!("tokenizer.ggml.{key}"), Meta::U32(id)));
        }
    }
    let add_bos = bos.is_some() && probe.first().copied() == bos;
    let add_eos = eos.is_some() && probe.len() > 1 && probe.last().copied() == eos;
    meta.push((
        "tokenizer.ggml.add_bos_token".to_string(),
        Meta::Bool(add_bos),
    ));
    meta.push((
        "tokenizer.ggml.add_eos_token".to_string(),
        Meta::Bool(add_eos),
    ));
    Ok(meta)
}

/// Llama 3.1's rope scaling as llama.cpp's per-frequency divisors (`rope_freqs.weight`, what
/// its converter writes): 1 for high frequencies, `factor` for low ones, and between them the
/// inverse of transformers' smooth interpolation, so `inv_freq / divisor` is transformers'
/// scaled frequency.
pub fn llama3_rope_factors(c: &crate::config::LlamaConfig) -> Option<Vec<f32>> {
    let RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings,
    } = c.rope_scaling
    else {
        return None;
    };
    let (factor, low, high) = (
        factor as f32,
        low_freq_factor as f32,
        high_freq_factor as f32,
    );
    let old = original_max_position_embeddings as f32;
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    let base = c.rope_theta as f32;
    let dim = c.head_dim;
    Some(
        (0..dim)
            .step_by(2)
            .map(|i| {
                let freq = 1.0 / base.powf(i as f32 / dim as f32);
                let wavelen = 2.0 * std::f32::consts::PI / freq;
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor
                } else {
                    let smooth = (old / wavelen - low) / (high - low);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                }
            })
            .collect(),
    )
}

impl CausalLm {
    /// Writes the model, adapters merged and 4-bit weights decoded, as one GGUF v3 file that
    /// llama.cpp and Ollama load, with `tokenizer`'s vocabulary, special tokens and chat
    /// template. The file is written under a temporary name, synced and renamed; an existing
    /// `path` is refused unless `options.overwrite`.
    ///
    /// ```
    /// use burn::tensor::Device;
    /// use medify_models::{CausalLm, GgufExport, GgufType, LoadOptions, ModelTokenizer};
    /// let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama");
    /// let (model, _) = CausalLm::from_pretrained(src, &Device::flex(), &LoadOptions::dense()).unwrap();
    /// let tok = ModelTokenizer::load(src).unwrap();
    /// let out = std::env::temp_dir().join(format!("medify-doc-{}.gguf", std::process::id()));
    /// let options = GgufExport { dtype: GgufType::Q8_0, overwrite: true, ..GgufExport::default() };
    /// model.save_gguf(&out, &tok, &options).unwrap();
    /// let (back, _) = CausalLm::from_pretrained(&out, &Device::flex(), &LoadOptions::dense()).unwrap();
    /// assert_eq!(back.config().vocab_size, model.config().vocab_size);
    /// std::fs::remove_file(&out).unwrap();
    /// ```
    pub fn save_gguf(
        &self,
        path: impl AsRef<Path>,
        tokenizer: &ModelTokenizer,
        options: &GgufExport,
    ) -> Result<()> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let c = self.config();
        // llama.cpp's Gemma: the same tensor names, norms holding `1 + w`, q/k rows as they are.
        let gemma = c.family == Family::Gemma;
        let rope_scaling = match c.rope_scaling {
            RopeScaling::Linear { factor } => Some(factor),
            RopeScaling::Default | RopeScaling::Llama3 { .. } => None,
        };
        let rope_freqs = c
            .rope_freq_factors
            .clone()
            .or_else(|| llama3_rope_factors(c));
        if path.exists() && !options.overwrite {
            return Err(ModelError::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists; set `overwrite` to replace it",
                ),
            ));
        }
        let arch = if gemma { "gemma" } else { "llama" };
        let key = |k: &str| format!("{arch}.{k}");
        let mut meta: Vec<(String, Meta)> = vec![
            ("general.architecture".into(), Meta::Str(arch.into())),
            (
                "general.name".into(),
                Meta::Str(
                    options
                        .name
                        .clone()
                        .unwrap_or_else(|| "medify-qlora".into()),
                ),
            ),
            (
                "general.file_type".into(),
                Meta::U32(options.dtype.file_type()),
            ),
            ("general.alignment".into(), Meta::U32(ALIGNMENT as u32)),
            (
                key("context_length"),
                Meta::U32(c.max_position_embeddings as u32),
            ),
            (key("embedding_length"), Meta::U32(c.hidden_size as u32)),
            (key("block_count"), Meta::U32(c.num_hidden_layers as u32)),
            (
                key("feed_forward_length"),
                Meta::U32(c.intermediate_size as u32),
            ),
            (
                key("attention.head_count"),
                Meta::U32(c.num_attention_heads as u32),
            ),
            (
                key("attention.head_count_kv"),
                Meta::U32(c.num_key_value_heads as u32),
            ),
            (key("attention.key_length"), Meta::U32(c.head_dim as u32)),
            (key("attention.value_length"), Meta::U32(c.head_dim as u32)),
            (key("rope.dimension_count"), Meta::U32(c.head_dim as u32)),
            (key("rope.freq_base"), Meta::F32(c.rope_theta as f32)),
            (
                key("attention.layer_norm_rms_epsilon"),
                Meta::F32(c.rms_norm_eps as f32),
            ),
            (key("vocab_size"), Meta::U32(c.vocab_size as u32)),
        ];
        if options.dtype.quantized() {
            meta.push(("general.quantization_version".into(), Meta::U32(2)));
        }
        if let Some(factor) = rope_scaling {
            meta.push((key("rope.scaling.type"), Meta::Str("linear".into())));
            meta.push((key("rope.scaling.factor"), Meta::F32(factor as f32)));
        }
        meta.extend(tokenizer_meta(tokenizer, &origin)?);
        let template = options
            .chat_template
            .clone()
            .or_else(|| tokenizer.chat_template.clone());
        if let Some(t) = template {
            meta.push(("tokenizer.chat_template".into(), Meta::Str(t)));
        }

        // The tensor table: names, shapes, types and offsets, before any data is read.
        struct Entry<'a> {
            gguf: String,
            hf: String,
            shape: Vec<usize>,
            ty: Storage,
            offset: usize,
            heads: Option<usize>,
            source: crate::save::Source<'a>,
        }
        let mut entries = Vec::new();
        let mut offset = 0usize;
        for (hf, source) in self.save_entries() {
            let gguf = gguf_name(&hf).ok_or_else(|| {
                ModelError::weights(
                    origin.as_str(),
                    format!("{hf} has no llama.cpp tensor name"),
                )
            })?;
            let shape = source.shape();
            let row = shape.last().copied().unwrap_or(1);
            let layer = gguf
                .strip_prefix("blk.")
                .and_then(|r| r.split('.').next())
                .and_then(|n| n.parse().ok());
            let ty = if shape.len() < 2 {
                Storage::F32
            } else {
                options.dtype.storage(
                    &gguf,
                    layer,
                    c.num_hidden_layers,
                    row,
                    c.tie_word_embeddings,
                )
            };
            let heads = if gemma {
                None
            } else if hf.contains("q_proj.") {
                Some(c.num_attention_heads)
            } else if hf.contains("k_proj.") {
                Some(c.num_key_value_heads)
            } else {
                None
            };
            let numel: usize = shape.iter().product();
            let (per_block, block_bytes) = ty.block();
            entries.push(Entry {
                gguf,
                hf,
                shape,
                ty,
                offset,
                heads,
                source,
            });
            offset += (numel / per_block * block_bytes).div_ceil(ALIGNMENT) * ALIGNMENT;
        }
        if let Some(factors) = rope_freqs {
            // The last tensor: nothing is placed after it.
            let len = factors.len();
            entries.push(Entry {
                gguf: "rope_freqs.weight".into(),
                hf: "rope_freqs".into(),
                shape: vec![len],
                ty: Storage::F32,
                offset,
                heads: None,
                source: crate::save::Source::Values(factors),
            });
        }
        // llama.cpp's converter orders tensors by block; any order loads.
        let mut head = Vec::new();
        head.extend(b"GGUF");
        head.extend(3u32.to_le_bytes());
        head.extend((entries.len() as u64).to_le_bytes());
        head.extend((meta.len() as u64).to_le_bytes());
        for (k, v) in &meta {
            head.extend((k.len() as u64).to_le_bytes());
            head.extend(k.as_bytes());
            v.write(&mut head);
        }
        for e in &entries {
            head.extend((e.gguf.len() as u64).to_le_bytes());
            head.extend(e.gguf.as_bytes());
            head.extend((e.shape.len() as u32).to_le_bytes());
            for d in e.shape.iter().rev() {
                head.extend((*d as u64).to_le_bytes());
            }
            head.extend(e.ty.ggml().id().to_le_bytes());
            head.extend((e.offset as u64).to_le_bytes());
        }
        head.resize(head.len().div_ceil(ALIGNMENT) * ALIGNMENT, 0);

        let mut unreadable = None;
        let written = medify_quant::atomic::write_with(path, |out| {
            out.write_all(&head)?;
            let mut buf = Vec::new();
            for e in &entries {
                let mut values = e.source.values().map_err(|m| {
                    unreadable = Some(format!("reading {} from the device: {m}", e.hf));
                    std::io::Error::other("unreadable tensor")
                })?;
                if gemma && e.gguf.ends_with("norm.weight") {
                    values.iter_mut().for_each(|v| *v += 1.0);
                }
                if let Some(heads) = e.heads {
                    let rows = e.shape[0];
                    values = permute_qk(&values, rows, values.len() / rows.max(1), heads);
                }
                e.ty.encode(&values, &mut buf);
                buf.resize(buf.len().div_ceil(ALIGNMENT) * ALIGNMENT, 0);
                out.write_all(&buf)?;
            }
            Ok(())
        });
        if let Some(message) = unreadable {
            return Err(ModelError::weights(origin, message));
        }
        written.map_err(|e| ModelError::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgmlType, decode_blocks, unpermute_qk};

    #[test]
    fn permute_is_the_inverse_of_the_readers_unpermute() {
        let (rows, cols, heads) = (8, 3, 2);
        let v: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let there = permute_qk(&v, rows, cols, heads);
        assert_ne!(there, v);
        assert_eq!(unpermute_qk(&there, rows, cols, heads), v);
    }

    #[test]
    fn blocks_decode_back_within_their_step() {
        let x: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        for (ty, gg, tol) in [
            (Storage::Q8_0, GgmlType::Q8_0, 1.58 / 127.0),
            (Storage::Q4_0, GgmlType::Q4_0, 1.58 / 8.0),
            (Storage::Q5_0, GgmlType::Q5_0, 1.58 / 16.0),
            (Storage::Q4K, GgmlType::Q4K, 2.0 * 3.15 / 15.0),
            (Storage::Q6K, GgmlType::Q6K, 2.0 * 1.58 / 32.0),
        ] {
            let mut bytes = Vec::new();
            ty.encode(&x, &mut bytes);
            assert_eq!(bytes.len(), 256 / ty.block().0 * ty.block().1);
            let back = decode_blocks(gg, &bytes, x.len());
            for (a, b) in x.iter().zip(&back) {
                assert!((a - b).abs() <= tol, "{ty:?}: {a} vs {b}");
            }
        }
        // The signed extreme of a q4_0 block is exact (it is the scale's -8 code).
        let mut bytes = Vec::new();
        Storage::Q4_0.encode(&x[..32], &mut bytes);
        let back = decode_blocks(GgmlType::Q4_0, &bytes, 32);
        let i = (0..32)
            .max_by(|&a, &b| x[a].abs().total_cmp(&x[b].abs()))
            .unwrap();
        assert!((back[i] - x[i]).abs() < 1e-3);
        // All-zero blocks stay zero.
        Storage::Q8_0.encode(&[0.0; 32], &mut bytes);
        assert!(
            decode_blocks(GgmlType::Q8_0, &bytes, 32)
                .iter()
                .all(|v| *v == 0.0)
        );
    }

    #[test]
    fn q4_k_m_picks_tensor_types_as_llama_cpp() {
        let t = |name: &str, layer: Option<usize>, row: usize, tied: bool| {
            GgufType::Q4KM.storage(name, layer, 8, row, tied)
        };
        assert_eq!(t("blk.3.attn_q.weight", Some(3), 512, false), Storage::Q4K);
        assert_eq!(t("blk.0.attn_v.weight", Some(0), 512, false), Storage::Q6K);
        assert_eq!(t("blk.2.attn_v.weight", Some(2), 512, false), Storage::Q4K);
        assert_eq!(
            t("blk.3.ffn_down.weight", Some(3), 512, false),
            Storage::Q6K
        );
        assert_eq!(
            t("blk.7.ffn_down.weight", Some(7), 512, false),
            Storage::Q6K
        );
        assert_eq!(t("output.weight", None, 512, false), Storage::Q6K);
        assert_eq!(t("token_embd.weight", None, 512, false), Storage::Q4K);
        assert_eq!(t("token_embd.weight", None, 512, true), Storage::Q6K);
        assert_eq!(t("blk.1.attn_q.weight", Some(1), 576, false), Storage::Q5_0);
        assert_eq!(t("output.weight", None, 576, false), Storage::Q8_0);
        assert_eq!(
            GgufType::Q8_0.storage("x", None, 8, 48, false),
            Storage::F16
        );
    }

    #[test]
    fn every_hf_tensor_has_its_llama_cpp_name() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.k_proj.bias").as_deref(),
            Some("blk.3.attn_k.bias")
        );
        assert_eq!(
            gguf_name("model.layers.0.post_attention_layernorm.weight").as_deref(),
            Some("blk.0.ffn_norm.weight")
        );
        assert_eq!(
            gguf_name("lm_head.weight").as_deref(),
            Some("output.weight")
        );
        assert_eq!(gguf_name("model.layers.0.mlp.experts.weight"), None);
    }
}
