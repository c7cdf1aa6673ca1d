//! Errors of the LoRA crate.

use std::path::PathBuf;

use medify_quant::QuantError;

/// What can go wrong when configuring, applying, saving, loading or merging adapters.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// A setting that cannot work (`r = 0`, dropout outside `[0, 1)`, a bad regex…).
    #[error("invalid LoRA configuration: {0}")]
    InvalidConfig(String),
    /// A requested target names no layer of the model.
    #[error(
        "target modules {targets} match no linear layer of the model; its layers are: {available}"
    )]
    NoTargetMatched {
        /// The targets as configured.
        targets: String,
        /// The layer names the model has.
        available: String,
    },
    /// The rank exceeds what the layer can carry.
    #[error(
        "rank r = {r} is larger than layer `{module}` of shape {dims:?} allows (at most {max})"
    )]
    RankTooLarge {
        /// Module path.
        module: String,
        /// Requested rank.
        r: usize,
        /// `[out, in]`.
        dims: [usize; 2],
        /// `min(out, in)`.
        max: usize,
    },
    /// The model already carries adapters, or carries none where some are needed.
    #[error("{0}")]
    State(String),
    /// Merging or unmerging one layer failed; the cause is kept.
    #[error("{action} `{module}`: {source}")]
    Layer {
        /// `merging` or `unmerging`.
        action: &'static str,
        /// Module path of the layer.
        module: String,
        /// What went wrong there.
        #[source]
        source: Box<LoraError>,
    },
    /// An adapter file does not fit this model (other architecture, other shapes, missing keys).
    #[error("adapter {path} does not fit this model: {message}")]
    Mismatch {
        /// The adapter file or directory.
        path: PathBuf,
        /// What does not fit.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file's content is malformed; the message names the field.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field or tensor.
        message: String,
    },
    /// Refusing to replace what a user made.
    #[error("{0} already holds an adapter; pass overwrite to replace it")]
    AlreadyExists(PathBuf),
    /// A feature of PEFT's format this crate does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Quantizing a merged 4-bit weight failed.
    #[error(transparent)]
    Quant(#[from] QuantError),
}

/// Shorthand for results of this crate.
pub type Result<T, E = LoraError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LoraError {
    let path = path.into();
    move |source| LoraError::Io { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_error_keeps_its_cause() {
        let e = LoraError::Layer {
            action: "merging",
            module: "model.layers.0.self_attn.q_proj".into(),
            source: Box::new(LoraError::State("the adapter is already merged".into())),
        };
        assert_eq!(
            e.to_string(),
            "merging `model.layers.0.self_attn.q_proj`: the adapter is already merged"
        );
        let cause = std::error::Error::source(&e).expect("kept");
        assert_eq!(cause.to_string(), "the adapter is already merged");
    }
}
