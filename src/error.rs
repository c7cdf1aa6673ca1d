//! Errors of the fine-tuning API.

use std::path::PathBuf;

/// What can go wrong in a fine-tuning run, with the file, field or step it concerns.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    /// A setting that cannot work; names the field.
    #[error("invalid setting `{field}`: {reason}")]
    Config {
        /// The field of [`FinetuneConfig`](crate::FinetuneConfig).
        field: String,
        /// Why it is rejected.
        reason: String,
    },
    /// Loading or running the model.
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    /// Adapters.
    #[error(transparent)]
    Lora(#[from] crate::lora::LoraError),
    /// Data files and templates.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// The optimizer and its state.
    #[error(transparent)]
    Optim(#[from] crate::optim::OptimError),
    /// A device's thread of a data-parallel step panicked.
    #[error("a device's training thread panicked in a data-parallel step")]
    DeviceThread,
    /// The output exists and overwriting was not asked for.
    #[error("{0} exists and is not empty; set `overwrite` to write over it")]
    WouldOverwrite(PathBuf),
    /// An output directory to be replaced holds files the write would not replace.
    #[error(
        "{} holds files a merge does not write ({}); refusing to replace it: choose an empty or \
         new directory",
        dir.display(),
        files.join(", ")
    )]
    ForeignFiles {
        /// The directory.
        dir: PathBuf,
        /// The files that are not the write's own.
        files: Vec<String>,
    },
    /// The loss became NaN or infinite; training stopped without applying that step.
    #[error(
        "the loss is not finite at step {step} ({loss}); training stopped. {}",
        match last_checkpoint {
            Some(p) => format!("The last good checkpoint is {}", p.display()),
            None => "No checkpoint was written yet; try a lower learning rate".to_string(),
        }
    )]
    NonFiniteLoss {
        /// The optimizer step that failed (1-based).
        step: u64,
        /// The loss value.
        loss: f64,
        /// The newest checkpoint on disk.
        last_checkpoint: Option<PathBuf>,
    },
    /// A checkpoint that does not belong to this run or is damaged.
    #[error("{path}: {reason}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A resumed run's model or data is not what the run trained on.
    #[error(
        "the {what} differs from the one this run trained on: {detail}. Give the original \
         {what}, or set `allow_source_change` if the change is intended"
    )]
    SourceChanged {
        /// `model` or `data`.
        what: &'static str,
        /// What differs.
        detail: String,
    },
    /// A resumed run's recorded model or data is no longer where it was.
    #[error("the run's {what} {path} is gone; give the {what} at its new location")]
    SourceMissing {
        /// `model` or `data`.
        what: &'static str,
        /// The recorded path.
        path: PathBuf,
    },
    /// A setting given for a resumed run that cannot change mid-run.
    #[error(
        "`{field}` cannot change when resuming ({saved} in the checkpoint, {requested} asked for); \
         only {changeable} may"
    )]
    ResumeConflict {
        /// The setting.
        field: String,
        /// The checkpoint's value.
        saved: String,
        /// The requested value.
        requested: String,
        /// The settings a resumed run may change.
        changeable: String,
    },
    /// Fetching the default model failed.
    #[error("fetching {what}: {reason}")]
    Fetch {
        /// The URL or file.
        what: String,
        /// What went wrong.
        reason: String,
    },
    /// Nothing to train or evaluate on.
    #[error("{0}")]
    NoData(String),
}

/// A chat's error is a model's or a template's: it keeps that variant.
impl From<crate::chat::ChatError> for FinetuneError {
    fn from(e: crate::chat::ChatError) -> Self {
        match e {
            crate::chat::ChatError::Model(e) => FinetuneError::Model(e),
            crate::chat::ChatError::Data(e) => FinetuneError::Data(e),
        }
    }
}

/// Result alias of the facade.
pub type Result<T> = std::result::Result<T, FinetuneError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> FinetuneError + '_ {
    move |source| FinetuneError::Io {
        path: path.to_path_buf(),
        source,
    }
}
