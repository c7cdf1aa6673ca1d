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
    /// The Jinja chat template, if the model ships one.
    pub chat_template: Option<String>,
    /// Tokens that end generation: eos, generation_config's eos list, and end-of-turn markers.
    pub stop_ids: Vec<u32>,
    origin: String,
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
        let tokenizer = Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
            origin: origin.clone(),
            message: e.to_string(),
        })?;
        let cfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        // As transformers 5 (and the chat encoder of `medify-data`) tokenizes, so prompts here
        // get the ids the model was trained on.
        let tokenizer = medify_data::transformers_pre_tokenization(tokenizer, &cfg);
        let chat_template = match cfg.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // Several named templates: transformers uses the one called "default".
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        };
        let chat_template = match chat_template {
            Some(t) => Some(t),
            None => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
        };
        let mut tok = ModelTokenizer {
            tokenizer,
            bos_token: token_text(cfg.get("bos_token")),
            eos_token: token_text(cfg.get("eos_token")),
            pad_token: token_text(cfg.get("pad_token")),
            chat_template,
            stop_ids: Vec::new(),
            origin,
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
        if model != "gpt2" {
            return Err(err(format!(
                "tokenizer.ggml.model {model:?} is not supported (byte-level BPE \"gpt2\"); use the model's tokenizer.json"
            )));
        }
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
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
        let merges: Vec<(String, String)> = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| err(format!("merge {m:?} is not two tokens")))
            })
            .collect::<Result<_>>()?;
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
        let add_bos = matches!(
            meta.get("tokenizer.ggml.add_bos_token"),
            Some(GgufValue::Bool(true))
        );
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
            chat_template: source.chat_template().map(str::to_string),
            stop_ids: Vec::new(),
            origin,
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

    /// Id of the padding token to use for batches: the pad token, else unk, else eos.
    pub fn pad_id(&self) -> u32 {
        [
            self.pad_token.as_deref(),
            Some("<unk>"),
            self.eos_token.as_deref(),
        ]
        .into_iter()
        .flatten()
        .find_map(|t| self.token_id(t))
        .unwrap_or(0)
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
