//! # medify-data
//!
//! Medical Q&A data in, masked token batches out.
mod dataset;
mod encode;
mod error;
mod preference;
mod preference_dataset;
mod record;
mod sources;
mod template;

pub use dataset::{
    Batch, DatasetConfig, EncodedExample, PrepareReport, PreparedData, Sequence, SourceCounts,
    Truncation, pack, prepare, unpacked,
};
pub use encode::{ChatEncoder, Encoded, IGNORE, Rendered, TokenizerSpecials};
pub use error::{DataError, Result};
pub use preference::{
    EncodedPair, PairTruncation, PreferencePair, PreferenceReport, SourcedPair, Turns, pair_batch,
    read_preferences, read_preferences_from,
};
pub use preference_dataset::{PreparedPairs, prepare_pairs};
pub use record::{Example, Message, Role, SourcedExample};
pub use sources::{
    DATA_FILE_EXTENSIONS, FieldMap, FileKind, InputFormat, ReadOptions, ReadReport, data_files,
    read_records, read_records_from,
};
pub use template::{BUILTIN_TEMPLATES, ChatTemplate, SpecialTokens};
