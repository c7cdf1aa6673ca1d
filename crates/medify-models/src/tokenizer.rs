//! The tokenizer of a model with its special tokens and chat template, from a Hugging Face
//! directory (`tokenizer.json`, `tokenizer_config.json`, `generation_config.json`) or from GGUF
//! metadata.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::error::{ModelError, Result};
use crate::gguf::{GgufSource, GgufValue};

/// Tokens that close a turn in the chat formats of the supported families.
const END_OF_TURN: [&str; 5] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<end_of_turn>",
    "<|end|>",
    "</s>",
];

/// Llama 3's pre-tokenizer split (llama.cpp's `llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer plus what a model needs to know about its special tokens.
#[derive(Clone)]
pub struct ModelTokenizer {
    tokenizer: Tokenizer,
    /// Beginning-of-sequence token.
    pub bos_token: Option<String>,
    /// End-of-sequence token.
    pub eos_token: Option<String>,
    /// Padding token (None when the tokenizer defines none).
    pub pad_token: Option<String>,
    /// Unknown-token (None when the tokenizer defines none).
    pub unk_token: Option<String>,
    /// The Jinja chat template, if the model ships one.
    pub chat_template: Option<String>,
    /// Tokens that end generation: eos, generation_config's eos list, and end-of-turn markers.
    pub stop_ids: Vec<u32>,
    origin: String,
    template_origin: String,
    /// The GGUF pre-tokenizer name (`tokenizer.ggml.pre`) this tokenizer was read with, kept so
    /// a GGUF export names it again.
    pub(crate) gguf_pre: Option<String>,
}

impl std::fmt::Debug for ModelTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("stop_ids", &self.stop_ids)
            .finish()
    }
}

fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => m.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| ModelError::Json {
            path: path.into(),
            source,
        })
}

/// The `chat_template` of a `tokenizer_config.json`: a string, or a list of named templates of
/// which transformers takes the one called `default` (else the first).
fn config_chat_template(cfg: &Value, path: &Path) -> Result<Option<String>> {
    let bad = |message: String| ModelError::Tokenizer {
        origin: path.display().to_string(),
        message,
    };
    match cfg.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(|t| Some(t.to_string()))
            .ok_or_else(|| bad("field chat_template: a list without a usable template".into())),
        Some(v) => Err(bad(format!(
            "field chat_template must be a string or a list of named templates, got {v}"
        ))),
    }
}

/// transformers 5 does not use a Llama/Mistral SentencePiece tokenizer's `tokenizer.json` as is:
/// `LlamaTokenizer` drops the normalizer (prepend "▁", spaces to "▁") and pre-tokenizes with
/// Metaspace instead (prepend scheme "always", or "first" with `legacy: false`; no split), so
/// text after a special token gets no extra "▁" (e.g. `</s> [INST]` in Mistral's template).
/// The same here, so ids match what the Python stack trains on.
fn transformers_pre_tokenization(mut tokenizer: Tokenizer, config: &Value) -> Tokenizer {
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as DecoderSequence;
    use tokenizers::decoders::strip::Strip;
    use tokenizers::normalizers::replace::Replace;
    use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
    use tokenizers::{DecoderWrapper, NormalizerWrapper};

    let class = config
        .get("tokenizer_class")
        .and_then(Value::as_str)
        .unwrap_or("");
    if class != "LlamaTokenizer" && class != "LlamaTokenizerFast" {
        return tokenizer;
    }
    let flag = |key: &str| config.get(key).and_then(Value::as_bool).unwrap_or(true);
    let add_prefix_space = flag("add_prefix_space");
    let scheme = match (add_prefix_space, flag("legacy")) {
        (false, _) => PrependScheme::Never,
        (true, true) => PrependScheme::Always,
        (true, false) => PrependScheme::First,
    };
    let mut decoders: Vec<DecoderWrapper> = Vec::new();
    if let Ok(r) = Replace::new("▁", " ") {
        decoders.push(r.into());
    }
    decoders.push(ByteFallback::default().into());
    decoders.push(Fuse::default().into());
    if add_prefix_space {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer
        .with_normalizer(None::<NormalizerWrapper>)
        .with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)))
        .with_decoder(Some(DecoderSequence::new(decoders)));
    tokenizer
}

/// Parses a `tokenizer.json`. The tokenizers crate panics on some malformed files (its decoder
/// deserializer calls `expect` on a failed parse), so a panic there is caught and reported as the
/// file's error instead of taking the process down.
fn parse_tokenizer_json(text: &str) -> std::result::Result<Tokenizer, String> {
    use std::str::FromStr;
    match std::panic::catch_unwind(|| Tokenizer::from_str(text)) {
        Ok(Ok(tokenizer)) => Ok(tokenizer),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(format!(
            "malformed tokenizer.json ({})",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("the tokenizers crate gave up on it")
        )),
    }
}

fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|n| n as u32)
            .collect(),
        Some(v) => v.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        None => Vec::new(),
    }
}

impl ModelTokenizer {
    /// Reads `tokenizer.json` and, when present, `tokenizer_config.json`,
    /// `generation_config.json` and `config.json` from a model directory.
    ///
    /// ```
    /// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama");
    /// let tok = medify_models::ModelTokenizer::from_dir(dir).unwrap();
    /// let ids = tok.encode("What is diabetes?", true).unwrap();
    /// assert_eq!(ids[0], 1); // <s>, added by the tokenizer's post-processor
    /// assert_eq!(tok.decode(&ids, true).unwrap(), "What is diabetes?");
    /// ```
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<ModelTokenizer> {
        let dir = dir.as_ref();
        let path = dir.join("tokenizer.json");
        let origin = path.display().to_string();
        if !path.is_file() {
            return Err(ModelError::Tokenizer {
                origin,
                message: "file not found".into(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let tokenizer = parse_tokenizer_json(&text).map_err(|message| ModelError::Tokenizer {
            origin: origin.clone(),
            message,
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = read_json(&cfg_path)?.unwrap_or(Value::Null);
        // As transformers 5 tokenizes, so prompts and training records get the ids the Python
        // stack gives them.
        let tokenizer = transformers_pre_tokenization(tokenizer, &cfg);
        // A separate chat_template.jinja (what transformers 5 saves) takes priority over the
        // template in tokenizer_config.json, as transformers loads them.
        let jinja_path = dir.join("chat_template.jinja");
        let (chat_template, template_origin) = if jinja_path.is_file() {
            let text =
                std::fs::read_to_string(&jinja_path).map_err(|e| ModelError::io(&jinja_path, e))?;
            (Some(text), jinja_path.display().to_string())
        } else {
            (
                config_chat_template(&cfg, &cfg_path)?,
                cfg_path.display().to_string(),
            )
        };
        let mut tok = ModelTokenizer {
            tokenizer,
            bos_token: token_text(cfg.get("bos_token")),
            eos_token: token_text(cfg.get("eos_token")),
            pad_token: token_text(cfg.get("pad_token")),
            unk_token: token_text(cfg.get("unk_token")),
            chat_template,
            stop_ids: Vec::new(),
            origin,
            template_origin,
            gguf_pre: None,
        };
        let mut stops: BTreeSet<u32> = BTreeSet::new();
        if let Some(gen_cfg) = read_json(&dir.join("generation_config.json"))? {
            stops.extend(ids_of(gen_cfg.get("eos_token_id")));
        }
        if stops.is_empty()
            && let Some(model_cfg) = read_json(&dir.join("config.json"))?
        {
            stops.extend(ids_of(model_cfg.get("eos_token_id")));
        }
        tok.finish_stops(stops);
        Ok(tok)
    }

    /// The tokenizer of a Hugging Face model or tokenizer directory, or of a `.gguf` file.
    ///
    /// ```
    /// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama.gguf");
    /// let tok = medify_models::ModelTokenizer::load(path).unwrap();
    /// assert!(tok.vocab_size() > 0);
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<ModelTokenizer> {
        let path = path.as_ref();
        if path.is_dir() {
            ModelTokenizer::from_dir(path)
        } else {
            ModelTokenizer::from_gguf(&GgufSource::open(path)?)
        }
    }

    /// Builds the tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.*`): byte-level BPE
    /// (`gpt2` model, with the `llama-bpe` split for Llama 3), special tokens and chat template.
    pub fn from_gguf(source: &GgufSource) -> Result<ModelTokenizer> {
        let origin = format!("{} (GGUF metadata)", source.path().display());
        let err = |m: String| ModelError::Tokenizer {
            origin: origin.clone(),
            message: m,
        };
        let meta = source.metadata();
        let strings = |key: &str| -> Result<Vec<String>> {
            match meta.get(key) {
                Some(GgufValue::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| err(format!("{key} holds a non-string")))
                    })
                    .collect(),
                _ => Err(err(format!("missing {key}"))),
            }
        };
        let model = meta
            .get("tokenizer.ggml.model")
            .and_then(GgufValue::as_str)
            .unwrap_or("");
        if model != "gpt2" && model != "llama" {
            return Err(err(format!(
                "tokenizer.ggml.model {model:?} is not supported (byte-level BPE \"gpt2\" or SentencePiece \"llama\"); use the model's tokenizer.json"
            )));
        }
        let sentencepiece = model == "llama";
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types: Vec<u64> = match meta.get("tokenizer.ggml.token_type") {
            Some(GgufValue::Array(a)) => a
                .iter()
                .map(|v| {
                    if let GgufValue::I64(x) = v {
                        *x as u64
                    } else if let GgufValue::U64(x) = v {
                        *x
                    } else {
                        1
                    }
                })
                .collect(),
            _ => vec![1; tokens.len()],
        };
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut tokenizer = if sentencepiece {
            let scores: Vec<f32> = match meta.get("tokenizer.ggml.scores") {
                Some(GgufValue::Array(a)) => a
                    .iter()
                    .map(|v| match v {
                        GgufValue::F64(x) => Ok(*x as f32),
                        GgufValue::I64(x) => Ok(*x as f32),
                        GgufValue::U64(x) => Ok(*x as f32),
                        _ => Err(err("tokenizer.ggml.scores holds a non-number".into())),
                    })
                    .collect::<Result<_>>()?,
                _ => return Err(err("missing tokenizer.ggml.scores".into())),
            };
            if scores.len() != tokens.len() {
                return Err(err(format!(
                    "{} scores for {} tokens",
                    scores.len(),
                    tokens.len()
                )));
            }
            let merges = match meta.get("tokenizer.ggml.merges") {
                Some(_) => split_merges(&strings("tokenizer.ggml.merges")?, &err)?,
                None => merges_from_scores(&tokens, &scores),
            };
            sentencepiece_tokenizer(vocab.clone(), merges).map_err(|e| err(e.to_string()))?
        } else {
            let merges = split_merges(&strings("tokenizer.ggml.merges")?, &err)?;
            byte_level_tokenizer(vocab.clone(), merges, meta, &err)?
        };
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == 3 || **t == 4)
            .map(|(s, t)| AddedToken::from(s.clone(), *t == 3))
            .collect();
        tokenizer.add_special_tokens(&specials);
        let id = |k: &str| {
            meta.get(k).and_then(|v| {
                if let GgufValue::U64(x) = v {
                    Some(*x as usize)
                } else {
                    None
                }
            })
        };
        let name = |i: Option<usize>| i.and_then(|i| tokens.get(i).cloned());
        let bos = name(id("tokenizer.ggml.bos_token_id"));
        // llama.cpp adds BOS to a SentencePiece vocabulary whose file does not say otherwise.
        let add_bos = match meta.get("tokenizer.ggml.add_bos_token") {
            Some(GgufValue::Bool(b)) => *b,
            _ => sentencepiece,
        };
        if add_bos && let Some(b) = &bos {
            let bos_id = vocab_id(&tokens, b);
            let post = TemplateProcessing::builder()
                .try_single(format!("{b} $A"))
                .and_then(|t| t.try_pair(format!("{b} $A {b} $B")))
                .map_err(|e| err(e.to_string()))?
                .special_tokens(vec![(b.clone(), bos_id)])
                .build()
                .map_err(|e| err(e.to_string()))?;
            tokenizer.with_post_processor(Some(post));
        }
        let mut tok = ModelTokenizer {
            tokenizer,
            bos_token: bos,
            eos_token: name(id("tokenizer.ggml.eos_token_id")),
            pad_token: name(id("tokenizer.ggml.padding_token_id")),
            unk_token: name(id("tokenizer.ggml.unknown_token_id")),
            chat_template: source.chat_template().map(str::to_string),
            stop_ids: Vec::new(),
            template_origin: origin.clone(),
            origin,
            gguf_pre: meta
                .get("tokenizer.ggml.pre")
                .and_then(GgufValue::as_str)
                .map(str::to_string),
        };
        let mut stops = BTreeSet::new();
        stops.extend(id("tokenizer.ggml.eos_token_id").map(|i| i as u32));
        stops.extend(id("tokenizer.ggml.eot_token_id").map(|i| i as u32));
        tok.finish_stops(stops);
        Ok(tok)
    }

    fn finish_stops(&mut self, mut stops: BTreeSet<u32>) {
        if let Some(id) = self.eos_token.as_deref().and_then(|e| self.token_id(e)) {
            stops.insert(id);
        }
        self.stop_ids = stops.into_iter().collect();
    }

    /// Token ids that close an assistant turn in this model's chat format (plus eos).
    pub fn end_of_turn_ids(&self) -> Vec<u32> {
        let mut ids: BTreeSet<u32> = self.stop_ids.iter().copied().collect();
        ids.extend(END_OF_TURN.iter().filter_map(|t| self.token_id(t)));
        ids.into_iter().collect()
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor (bos).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer {
                origin: self.origin.clone(),
                message: e.to_string(),
            })
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| ModelError::Tokenizer {
                origin: self.origin.clone(),
                message: e.to_string(),
            })
    }

    /// The id of a token, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Id of the padding token to use for batches: the pad token when it exists and is not eos
    /// (so eos stays learnable), else unk, else eos. Padding is masked either way.
    pub fn pad_id(&self) -> u32 {
        let id = |t: &Option<String>| t.as_deref().and_then(|s| self.token_id(s));
        let eos = id(&self.eos_token);
        match id(&self.pad_token) {
            Some(p) if Some(p) != eos => p,
            _ => id(&self.unk_token).or(eos).unwrap_or(0),
        }
    }

    /// Where the tokenizer came from (its `tokenizer.json`, or the GGUF file).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The file the chat template came from (for messages and template names).
    pub fn chat_template_origin(&self) -> &str {
        &self.template_origin
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

fn vocab_id(tokens: &[String], t: &str) -> u32 {
    tokens.iter().position(|x| x == t).unwrap_or(0) as u32
}

/// `"a b"` merges as pairs.
fn split_merges(
    merges: &[String],
    err: &dyn Fn(String) -> ModelError,
) -> Result<Vec<(String, String)>> {
    merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| err(format!("merge {m:?} is not two tokens")))
        })
        .collect()
}

/// The merges a SentencePiece vocabulary implies, as transformers' `generate_merges` derives
/// them for a GGUF that lists none: every split of a token into two tokens, grouped by the
/// token in file order and by the halves' ids within it, then ordered by the token's score,
/// best first, and by the halves' lengths (a stable sort, so ties keep that order).
fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let ids: std::collections::HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    // Python's dict keeps the last score of a repeated token, in the first one's place.
    let mut score_of: std::collections::HashMap<&str, f32> = std::collections::HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (t, &s) in tokens.iter().zip(scores) {
        if score_of.insert(t.as_str(), s).is_none() {
            order.push(t.as_str());
        }
    }
    let mut merges: Vec<(&str, &str, f32, usize, usize)> = Vec::new();
    for token in order {
        let score = score_of[token];
        let mut local = Vec::new();
        for (cut, _) in token.char_indices().skip(1) {
            let (l, r) = token.split_at(cut);
            if let (Some(&li), Some(&ri)) = (ids.get(l), ids.get(r)) {
                local.push((li, ri, l, r));
            }
        }
        local.sort_by_key(|&(li, ri, _, _)| (li, ri));
        merges.extend(
            local
                .into_iter()
                .map(|(_, _, l, r)| (l, r, score, l.chars().count(), r.chars().count())),
        );
    }
    merges.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.3.cmp(&a.3)).then(b.4.cmp(&a.4)));
    merges
        .into_iter()
        .map(|(l, r, ..)| (l.to_string(), r.to_string()))
        .collect()
}

/// A SentencePiece BPE tokenizer as transformers' `LlamaTokenizer` builds it: byte fallback,
/// `▁` for spaces prepended to the first word, and the decoder that undoes both.
fn sentencepiece_tokenizer(
    vocab: Vocab,
    merges: Vec<(String, String)>,
) -> tokenizers::Result<Tokenizer> {
    use tokenizers::DecoderWrapper;
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as DecoderSequence;
    use tokenizers::decoders::strip::Strip;
    use tokenizers::normalizers::replace::Replace;
    use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::First, false)));
    tokenizer.with_decoder(Some(DecoderSequence::new(vec![
        DecoderWrapper::Replace(Replace::new("▁", " ")?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
        DecoderWrapper::Strip(Strip::new(' ', 1, 0)),
    ])));
    Ok(tokenizer)
}

/// A byte-level BPE tokenizer with the split `tokenizer.ggml.pre` names.
fn byte_level_tokenizer(
    vocab: Vocab,
    merges: Vec<(String, String)>,
    meta: &std::collections::BTreeMap<String, GgufValue>,
    err: &dyn Fn(String) -> ModelError,
) -> Result<Tokenizer> {
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| err(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre = meta
        .get("tokenizer.ggml.pre")
        .and_then(GgufValue::as_str)
        .unwrap_or("default");
    let byte_level = ByteLevel::new(false, true, true);
    match pre {
        "llama-bpe" | "llama3" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| err(e.to_string()))?;
            let seq = Sequence::new(vec![
                PreTokenizerWrapper::Split(split),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
            ]);
            tokenizer.with_pre_tokenizer(Some(seq));
        }
        "default" | "gpt2" | "smollm" | "gpt-2" => {
            tokenizer.with_pre_tokenizer(Some(byte_level));
        }
        other => {
            return Err(err(format!(
                "tokenizer.ggml.pre {other:?} is not supported (gpt2, smollm, llama-bpe)"
            )));
        }
    }
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer_dir(config: &Value) -> tempfile::TempDir {
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny_models/llama");
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            fixture.join("tokenizer.json"),
            dir.path().join("tokenizer.json"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            serde_json::to_vec(config).unwrap(),
        )
        .unwrap();
        dir
    }

    #[test]
    fn chat_template_comes_from_the_config_or_the_jinja_file_which_wins() {
        let named = serde_json::json!({"chat_template": [
            {"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]});
        let dir = tokenizer_dir(&named);
        let tok = ModelTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(tok.chat_template.as_deref(), Some("D"));
        assert!(
            tok.chat_template_origin()
                .ends_with("tokenizer_config.json")
        );

        let unnamed = serde_json::json!({"chat_template": [{"name": "x", "template": "X"}]});
        let dir = tokenizer_dir(&unnamed);
        std::fs::write(dir.path().join("chat_template.jinja"), "J").unwrap();
        let tok = ModelTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(tok.chat_template.as_deref(), Some("J"));
        assert!(tok.chat_template_origin().ends_with("chat_template.jinja"));
        std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();
        let tok = ModelTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(tok.chat_template.as_deref(), Some("X"));
    }

    #[test]
    fn a_chat_template_of_the_wrong_type_names_the_file() {
        for bad in [
            serde_json::json!({"chat_template": 7}),
            serde_json::json!({"chat_template": [{"name": "default"}]}),
        ] {
            let dir = tokenizer_dir(&bad);
            let err = ModelTokenizer::from_dir(dir.path())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("tokenizer_config.json") && err.contains("chat_template"),
                "{err}"
            );
        }
    }

    #[test]
    fn pad_prefers_a_pad_token_other_than_eos() {
        let dir = tokenizer_dir(&serde_json::json!({
            "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}));
        let tok = ModelTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(Some(tok.pad_id()), tok.token_id("<unk>"));
        assert_ne!(tok.token_id("<unk>"), tok.token_id("</s>"));
    }
}
