//! Errors of the data crate: every one names the file, and the line, record or field.

use std::path::PathBuf;

/// What can go wrong reading, rendering or tokenizing data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A record is malformed.
    #[error("{path}:{line}: {message}")]
    Record {
        /// The file.
        path: PathBuf,
        /// 1-based line (JSONL, CSV) or record number (XML: 0).
        line: usize,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A file as a whole is unusable (unknown format, no records, bad header).
    #[error("{path}: {message}")]
    File {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A chat template failed to parse or raised.
    #[error("chat template {name}: {message}")]
    Template {
        /// Template name or origin.
        name: String,
        /// The template engine's message (including `raise_exception` text).
        message: String,
    },
    /// The tokenizer failed on a rendered record.
    #[error("tokenizer: {0}")]
    Tokenizer(#[source] tokenizers::Error),
    /// A setting that cannot work.
    #[error("invalid option: {0}")]
    Invalid(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DataError {
    let path = path.into();
    move |source| DataError::Io { path, source }
}
