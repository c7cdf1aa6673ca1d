use std::path::PathBuf;

use medify_quant::QuantError;
use thiserror::Error;

/// Everything that can go wrong while reading, building or running a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A JSON file is malformed.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// `config.json` lacks a field, holds a wrong value or contradicts itself.
    #[error("{path}: {message}")]
    Config {
        /// The file (or source) the configuration came from.
        path: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The checkpoint's architecture is not one this crate builds.
    #[error(
        "unsupported architecture {0:?}: supported are LlamaForCausalLM (Llama 2/3, TinyLlama, SmolLM2), MistralForCausalLM and GemmaForCausalLM"
    )]
    UnsupportedArchitecture(String),
    /// A weight file is malformed or holds a tensor we cannot use.
    #[error("{file}: {message}")]
    Weights {
        /// The weight file.
        file: String,
        /// What is wrong, naming the tensor.
        message: String,
    },
    /// Tensors the model needs are absent from the checkpoint.
    #[error("{file}: missing tensors: {names}")]
    MissingTensors {
        /// The checkpoint.
        file: String,
        /// Comma-separated names (the first few).
        names: String,
    },
    /// A tensor has another shape than the configuration implies.
    #[error("{file}: tensor {name} has shape {actual:?}, expected {expected:?}")]
    Shape {
        /// The checkpoint.
        file: String,
        /// Tensor name.
        name: String,
        /// Shape the config implies.
        expected: Vec<usize>,
        /// Shape in the file.
        actual: Vec<usize>,
    },
    /// A 4-bit tensor could not be decoded or quantized.
    #[error("{name}: {source}")]
    Quant {
        /// Tensor name.
        name: String,
        /// The codec error.
        source: QuantError,
    },
    /// The tokenizer could not be built or used.
    #[error("tokenizer ({origin}): {message}")]
    Tokenizer {
        /// Where the tokenizer came from.
        origin: String,
        /// What went wrong.
        message: String,
    },
    /// A request the model cannot serve (empty prompt, bad sampling parameter, ...).
    #[error("{0}")]
    InvalidRequest(String),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> ModelError {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(path: impl Into<String>, message: impl Into<String>) -> ModelError {
        ModelError::Config {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn weights(file: impl Into<String>, message: impl Into<String>) -> ModelError {
        ModelError::Weights {
            file: file.into(),
            message: message.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
