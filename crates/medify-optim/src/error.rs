//! Errors of the optimizer crate.

use std::path::PathBuf;

/// What can go wrong when configuring an optimizer or saving and restoring its state.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// A setting that cannot work; names the field.
    #[error("invalid optimizer setting `{field}`: {reason}")]
    InvalidConfig {
        /// The configuration field.
        field: String,
        /// Why it is rejected.
        reason: String,
    },
    /// Stored state does not fit the parameter it is keyed to.
    #[error("optimizer state for `{param}` has {found} elements but the parameter has {expected}")]
    ShapeMismatch {
        /// Module path of the parameter.
        param: String,
        /// Elements of the parameter.
        expected: usize,
        /// Elements of the stored state.
        found: usize,
    },
    /// A state file that is not ours, is truncated, or was written with other settings.
    #[error("{path}: {reason}")]
    BadStateFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The output exists and overwriting was not asked for.
    #[error("{0} already exists; pass overwrite to replace it")]
    WouldOverwrite(PathBuf),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, OptimError>;

pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> OptimError {
    OptimError::InvalidConfig {
        field: field.to_string(),
        reason: reason.into(),
    }
}
