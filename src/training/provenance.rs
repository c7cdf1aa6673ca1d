//! Where a run's base model and data came from. The trainer records them in the run directory,
//! in every checkpoint and beside every adapter, so that a resumed run needs nothing but its
//! checkpoint, and `eval`, `chat` and `merge` find the base an adapter was trained over.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::{
    FieldMap, FileKind, InputFormat, PreferenceReport, PrepareReport, ReadOptions, ReadReport,
};
use crate::error::{FinetuneError, Result, io_err};
use crate::models::LinearQuant;
use crate::training::config::BaseQuantization;

/// The record's file name, beside `adapter_config.json` and `finetune_config.json`.
pub const SOURCES_FILE: &str = "run_sources.json";

/// The embedded default data: general-health Q&A pairs written for the project.
pub const EMBEDDED_MEDICAL_QA: &str = include_str!("../../fixtures/medical_qa/medical_qa.jsonl");

/// The embedded default preference data: the training split of the medical-safety preference
/// set written for the project (`fixtures/medical_preferences/`, see `docs/preference-data.md`).
pub const EMBEDDED_MEDICAL_PREFERENCES: &str =
    include_str!("../../fixtures/medical_preferences/train.jsonl");

/// Files up to this size are hashed whole; larger ones (weights) by their size and their first
/// and last MiB, which tells a different checkpoint apart without reading gigabytes.
const WHOLE_HASH_LIMIT: u64 = 64 << 20;
const SAMPLE: u64 = 1 << 20;

/// Identifies a file's or directory's content without keeping it: the byte count and a
/// 64-bit FNV-1a hash (see [`WHOLE_HASH_LIMIT`]). The path is not part of it, so a model or data
/// file copied elsewhere keeps its fingerprint; modification times are not either, for the
/// same reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Total bytes.
    pub bytes: u64,
    /// FNV-1a 64 of the hashed content (and, for a directory, the file names), in hex.
    pub fnv1a64: String,
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

impl Fingerprint {
    /// The fingerprint of bytes held in memory (the embedded data set); equal to that of a
    /// file holding them.
    pub fn of_bytes(bytes: &[u8]) -> Fingerprint {
        let mut h = Fnv::new();
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
        Fingerprint {
            bytes: bytes.len() as u64,
            fnv1a64: format!("{:016x}", h.0),
        }
    }

    /// The fingerprint of a file, or of a directory's model or data files (`.json`,
    /// `.safetensors`, `.gguf`, `.model`, `.xml`, `.jsonl`, `.csv`, `.tsv`, by name order).
    pub fn of_path(path: &Path) -> Result<Fingerprint> {
        if path.is_dir() {
            const KINDS: [&str; 8] = [
                "json",
                "safetensors",
                "gguf",
                "model",
                "xml",
                "jsonl",
                "csv",
                "tsv",
            ];
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io_err(path))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| KINDS.iter().any(|k| e.eq_ignore_ascii_case(k)))
                })
                .collect();
            files.sort();
            return Fingerprint::of_files(path, &files);
        }
        let mut h = Fnv::new();
        let bytes = hash_file(path, &mut h)?;
        Ok(Fingerprint {
            bytes,
            fnv1a64: format!("{:016x}", h.0),
        })
    }

    /// The fingerprint of `files` under `root`, in order: each one's path below `root`, then
    /// its content.
    fn of_files(root: &Path, files: &[PathBuf]) -> Result<Fingerprint> {
        let mut h = Fnv::new();
        let mut bytes = 0;
        for f in files {
            let rel = f.strip_prefix(root).unwrap_or(f);
            h.update(rel.as_os_str().as_encoded_bytes());
            bytes += hash_file(f, &mut h)?;
        }
        Ok(Fingerprint {
            bytes,
            fnv1a64: format!("{:016x}", h.0),
        })
    }
}

impl Fingerprint {
    /// A data file's fingerprint, or a data directory's: the files
    /// [`data_files`](crate::data::data_files) lists (the ones a run reads), each with its path
    /// below the directory.
    pub fn of_data(path: &Path) -> Result<Fingerprint> {
        if !path.is_dir() {
            return Fingerprint::of_path(path);
        }
        Fingerprint::of_files(path, &crate::data::data_files(path)?)
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes, fnv1a64 {}", self.bytes, self.fnv1a64)
    }
}

/// The fingerprint of a recorded `path` now, or the error saying it is gone.
fn fingerprint_now(
    what: &'static str,
    path: &Path,
    of: fn(&Path) -> Result<Fingerprint>,
) -> Result<Fingerprint> {
    if !path.exists() {
        return Err(FinetuneError::SourceMissing {
            what,
            path: path.to_path_buf(),
        });
    }
    of(path)
}

fn hash_file(path: &Path, h: &mut Fnv) -> Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    h.update(&len.to_le_bytes());
    let mut buf = Vec::new();
    if len <= WHOLE_HASH_LIMIT {
        f.read_to_end(&mut buf).map_err(io_err(path))?;
        h.update(&buf);
    } else {
        buf.resize(SAMPLE as usize, 0);
        f.read_exact(&mut buf).map_err(io_err(path))?;
        h.update(&buf);
        f.seek(SeekFrom::Start(len - SAMPLE))
            .map_err(io_err(path))?;
        f.read_exact(&mut buf).map_err(io_err(path))?;
        h.update(&buf);
    }
    Ok(len)
}

/// The base to load an adapter over, for `eval`, `chat` and `merge`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterBase {
    /// The base model's file or directory.
    pub model: PathBuf,
    /// How to hold its linear layers (`None`: as stored).
    pub quant: Option<LinearQuant>,
    /// Whether the adapter's [`SOURCES_FILE`] supplied what was not given.
    pub from_record: bool,
}

impl AdapterBase {
    /// `model` and `quant` as given; what was not given comes from the adapter's record of its
    /// run (the base it trained over and that base's quantization), so a QLoRA adapter is
    /// evaluated, chatted with and merged over the 4-bit base it learned against. Without a
    /// record the base loads as stored.
    ///
    /// ```
    /// use medify_qlora::AdapterBase;
    /// let dir = std::env::temp_dir();
    /// let base = AdapterBase::resolve(None, Some(&dir), None).unwrap();
    /// assert_eq!((base.model, base.quant, base.from_record), (dir, None, false));
    /// assert!(AdapterBase::resolve(None, None, None).is_err());
    /// ```
    pub fn resolve(
        adapter: Option<&Path>,
        model: Option<&Path>,
        quant: Option<Option<LinearQuant>>,
    ) -> Result<AdapterBase> {
        let record = match adapter {
            Some(dir) => RunSources::read(dir)?.map(|r| r.model),
            None => None,
        };
        let recorded_quant = match record.as_ref().and_then(|m| m.quantization.as_ref()) {
            Some(q) => Some(q.linear_quant()?),
            None => None,
        };
        let from_record =
            (model.is_none() && record.is_some()) || (quant.is_none() && recorded_quant.is_some());
        let model = match (model, &record) {
            (Some(m), _) => m.to_path_buf(),
            (None, Some(r)) => r.path.clone(),
            (None, None) => {
                return Err(FinetuneError::Config {
                    field: "model".into(),
                    reason: match adapter {
                        Some(dir) => format!(
                            "not given, and {} has no {SOURCES_FILE} naming its base",
                            dir.display()
                        ),
                        None => "a base model is required".into(),
                    },
                });
            }
        };
        Ok(AdapterBase {
            model,
            quant: quant.or(recorded_quant).flatten(),
            from_record,
        })
    }
}

/// The base model of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSource {
    /// Where it was loaded from (absolute when it could be made so).
    pub path: PathBuf,
    /// What `adapter_config.json` names as `base_model_name_or_path`: a hub id for a model
    /// whose id is known (the embedded default), the path otherwise.
    pub name_or_path: String,
    /// Its content.
    pub fingerprint: Fingerprint,
    /// Filled in by the trainer from the run's settings.
    #[serde(default)]
    pub quantization: Option<BaseQuantization>,
}

impl ModelSource {
    /// Records a model file or directory; `hub_id` names it when it is a known hub model.
    pub fn new(path: impl AsRef<Path>, hub_id: Option<&str>) -> Result<ModelSource> {
        let path = path.as_ref();
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Ok(ModelSource {
            fingerprint: Fingerprint::of_path(&path)?,
            name_or_path: hub_id.map_or_else(|| path.display().to_string(), str::to_string),
            path,
            quantization: None,
        })
    }
}

/// Where training records come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataOrigin {
    /// [`EMBEDDED_MEDICAL_QA`].
    Embedded,
    /// [`EMBEDDED_MEDICAL_PREFERENCES`].
    EmbeddedPreferences,
    /// A file or a directory of MedQuAD XML files.
    File {
        /// Its path (absolute when it could be made so).
        path: PathBuf,
    },
}

/// One source of a run's data: where it is, how it is read, its sampling weight and its content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSource {
    /// Where it is.
    pub origin: DataOrigin,
    /// Record shape.
    pub format: InputFormat,
    /// Field renames.
    pub fields: FieldMap,
    /// Whether invalid records were skipped.
    pub skip_invalid: bool,
    /// Sampling weight among several sources (see
    /// [`DatasetConfig::source_weights`](crate::data::DatasetConfig::source_weights)): 2 trains
    /// on each of its examples twice an epoch, 0.5 on a seeded half.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: f64,
    /// Its content.
    pub fingerprint: Fingerprint,
}

fn one() -> f64 {
    1.0
}

fn is_one(w: &f64) -> bool {
    *w == 1.0
}

impl DataSource {
    /// The embedded medical Q&A set.
    ///
    /// ```
    /// let data = medify_qlora::DataSource::embedded();
    /// assert_eq!(data.read().unwrap().records.len(), 71);
    /// ```
    pub fn embedded() -> DataSource {
        DataSource {
            origin: DataOrigin::Embedded,
            format: InputFormat::Auto,
            fields: FieldMap::default(),
            skip_invalid: false,
            weight: 1.0,
            fingerprint: Fingerprint::of_bytes(EMBEDDED_MEDICAL_QA.as_bytes()),
        }
    }

    /// The embedded medical-safety preference pairs (98), the default data of a preference run.
    ///
    /// ```
    /// let data = medify_qlora::DataSource::embedded_preferences();
    /// assert_eq!(data.read_pairs().unwrap().pairs.len(), 98);
    /// ```
    pub fn embedded_preferences() -> DataSource {
        DataSource {
            origin: DataOrigin::EmbeddedPreferences,
            fingerprint: Fingerprint::of_bytes(EMBEDDED_MEDICAL_PREFERENCES.as_bytes()),
            ..DataSource::embedded()
        }
    }

    /// A data file, or a directory of data files, read with `options`.
    pub fn file(path: &Path, options: &ReadOptions) -> Result<DataSource> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Ok(DataSource {
            fingerprint: Fingerprint::of_data(&path)?,
            origin: DataOrigin::File { path },
            format: options.format,
            fields: options.fields.clone(),
            skip_invalid: options.skip_invalid,
            weight: 1.0,
        })
    }

    /// The same source with sampling weight `weight` (a positive number).
    pub fn with_weight(mut self, weight: f64) -> DataSource {
        self.weight = weight;
        self
    }

    /// A source from a command-line spec: `PATH`, or `PATH?key=value&key=value` with the keys
    /// `format` (auto, messages, sharegpt, alpaca, qa, text), `fields` (renames such as
    /// `question=Patient,answer=Doctor`), `weight` and `skip_invalid` (true or false). Keys not
    /// given come from `defaults`.
    ///
    /// ```
    /// use medify_qlora::DataSource;
    /// use medify_qlora::data::{InputFormat, ReadOptions};
    /// let dir = std::env::temp_dir().join(format!("medify-spec-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// std::fs::write(dir.join("d.csv"), "Patient,Doctor\nQ?,A.\n").unwrap();
    /// let spec = format!("{}?format=qa&fields=question=Patient,answer=Doctor&weight=0.5",
    ///     dir.join("d.csv").display());
    /// let source = DataSource::parse(&spec, &ReadOptions::default()).unwrap();
    /// assert_eq!((source.format, source.weight), (InputFormat::QuestionAnswer, 0.5));
    /// assert_eq!(source.fields.get("question"), "Patient");
    /// let bad = format!("{}?wieght=2", dir.join("d.csv").display());
    /// assert!(DataSource::parse(&bad, &ReadOptions::default()).unwrap_err().to_string().contains("wieght"));
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn parse(spec: &str, defaults: &ReadOptions) -> Result<DataSource> {
        let invalid = |reason: String| FinetuneError::Config {
            field: "data".into(),
            reason: format!("{spec:?}: {reason}"),
        };
        let (path, query) = match spec.split_once('?') {
            Some((p, q)) => (p, q),
            None => (spec, ""),
        };
        if path.is_empty() {
            return Err(invalid("no path before '?'".into()));
        }
        let mut options = defaults.clone();
        let mut weight = 1.0;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| invalid(format!("{pair:?} must look like key=value")))?;
            match key {
                "format" => {
                    options.format = InputFormat::parse(value).ok_or_else(|| {
                        invalid(format!(
                            "unknown format {value:?}; known: auto, messages, sharegpt, alpaca, qa, text"
                        ))
                    })?
                }
                "fields" => options.fields = FieldMap::parse(value)?,
                "weight" => {
                    weight = value
                        .parse::<f64>()
                        .ok()
                        .filter(|w| w.is_finite() && *w > 0.0)
                        .ok_or_else(|| {
                            invalid(format!("weight {value:?} must be a positive number"))
                        })?
                }
                "skip_invalid" => {
                    options.skip_invalid = value.parse().map_err(|_| {
                        invalid(format!("skip_invalid {value:?} must be true or false"))
                    })?
                }
                other => {
                    return Err(invalid(format!(
                        "unknown key {other:?}; known: format, fields, weight, skip_invalid"
                    )));
                }
            }
        }
        Ok(DataSource::file(Path::new(path), &options)?.with_weight(weight))
    }

    /// How the records are read.
    pub fn read_options(&self) -> ReadOptions {
        ReadOptions {
            format: self.format,
            fields: self.fields.clone(),
            skip_invalid: self.skip_invalid,
        }
    }

    /// Reads the records.
    pub fn read(&self) -> Result<ReadReport> {
        let options = self.read_options();
        Ok(match &self.origin {
            DataOrigin::Embedded => crate::data::read_records_from(
                EMBEDDED_MEDICAL_QA.as_bytes(),
                Path::new("embedded medical_qa.jsonl"),
                FileKind::Jsonl,
                &options,
            )?,
            DataOrigin::EmbeddedPreferences => {
                return Err(FinetuneError::Config {
                    field: "data".into(),
                    reason: "the embedded preference set holds preference pairs; train on it \
                             with a preference method (dpo, ipo, orpo, simpo)"
                        .into(),
                });
            }
            DataOrigin::File { path } => crate::data::read_records(path, &options)?,
        })
    }

    /// Reads the source as preference pairs (see [`read_preferences`](crate::data::read_preferences));
    /// a directory's data files are read in order.
    pub fn read_pairs(&self) -> Result<PreferenceReport> {
        let options = self.read_options();
        Ok(match &self.origin {
            DataOrigin::Embedded => {
                return Err(FinetuneError::Config {
                    field: "data".into(),
                    reason: "the embedded medical Q&A set has no preference pairs; give pairs \
                             with --data, or use the embedded preference set"
                        .into(),
                });
            }
            DataOrigin::EmbeddedPreferences => crate::data::read_preferences_from(
                EMBEDDED_MEDICAL_PREFERENCES.as_bytes(),
                Path::new("embedded medical_preferences.jsonl"),
                FileKind::Jsonl,
                &options,
            )?,
            DataOrigin::File { path } => crate::data::read_preferences(path, &options)?,
        })
    }

    /// Reads every source as preference pairs, each pair marked with its source's index.
    pub fn read_all_pairs(sources: &[DataSource]) -> Result<Vec<PreferenceReport>> {
        read_each(
            sources,
            DataSource::read_pairs,
            PreferenceReport::set_source,
        )
    }

    /// Reads every source in order, each record marked with its source's index.
    pub fn read_all(sources: &[DataSource]) -> Result<Vec<ReadReport>> {
        read_each(sources, DataSource::read, ReadReport::set_source)
    }

    /// The weights of `sources`, in order, for
    /// [`DatasetConfig::source_weights`](crate::data::DatasetConfig::source_weights).
    pub fn weights(sources: &[DataSource]) -> Vec<f64> {
        sources.iter().map(|s| s.weight).collect()
    }

    /// For messages: the file's path, or "the embedded medical Q&A set".
    pub fn describe(&self) -> String {
        match &self.origin {
            DataOrigin::Embedded => "the embedded medical Q&A set".into(),
            DataOrigin::EmbeddedPreferences => "the embedded medical-safety preference set".into(),
            DataOrigin::File { path } => path.display().to_string(),
        }
    }

    /// Every source named, with its weight where it is not 1.
    pub fn describe_all(sources: &[DataSource]) -> String {
        sources
            .iter()
            .map(|s| {
                if s.weight == 1.0 {
                    s.describe()
                } else {
                    format!("{} (weight {})", s.describe(), s.weight)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The same data read the same way, wherever it lies.
    fn same_as(&self, other: &DataSource) -> bool {
        self.fingerprint == other.fingerprint
            && self.format == other.format
            && self.fields == other.fields
            && self.skip_invalid == other.skip_invalid
            && self.weight == other.weight
    }

    /// The recorded source as it is now: its fingerprint taken again (or the error saying
    /// it is gone).
    fn now(&self) -> Result<DataSource> {
        Ok(DataSource {
            fingerprint: match &self.origin {
                DataOrigin::Embedded => Fingerprint::of_bytes(EMBEDDED_MEDICAL_QA.as_bytes()),
                DataOrigin::EmbeddedPreferences => {
                    Fingerprint::of_bytes(EMBEDDED_MEDICAL_PREFERENCES.as_bytes())
                }
                DataOrigin::File { path } => fingerprint_now("data", path, Fingerprint::of_data)?,
            },
            ..self.clone()
        })
    }

    /// Why `self` (recorded) and `now` differ, for the message refusing the change.
    fn difference(&self, now: &DataSource) -> String {
        if now.fingerprint != self.fingerprint {
            format!(
                "its content differs ({} recorded; {} now)",
                self.fingerprint, now.fingerprint
            )
        } else if now.weight != self.weight {
            format!(
                "its weight differs ({} recorded; {} now)",
                self.weight, now.weight
            )
        } else {
            format!(
                "it is read differently (format {:?}, fields {:?}, skip_invalid {} recorded; {:?}, {:?}, {} now)",
                self.format,
                self.fields,
                self.skip_invalid,
                now.format,
                now.fields,
                now.skip_invalid
            )
        }
    }
}

/// `read` of every source in order, each result marked with its source's index by `mark`.
fn read_each<R>(
    sources: &[DataSource],
    read: impl Fn(&DataSource) -> Result<R>,
    mark: impl Fn(&mut R, usize),
) -> Result<Vec<R>> {
    sources
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut one = read(s)?;
            mark(&mut one, i);
            Ok(one)
        })
        .collect()
}

/// What the data of a run came to, per source: written to the run directory as
/// [`DATA_REPORT_FILE`], printed by `cargo xtask finetune`, and summed up in the model card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataReport {
    /// One entry per source, in the run's order.
    pub sources: Vec<SourceReport>,
}

/// One source's share of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    /// The file or directory (or "the embedded medical Q&A set").
    pub source: String,
    /// Its sampling weight.
    pub weight: f64,
    /// Records per shape, e.g. `qa: 120, messages: 30`.
    pub formats: Vec<(String, usize)>,
    /// Records skipped while reading (`skip_invalid`, or MedQuAD answers removed upstream).
    pub skipped: usize,
    /// Records, drops, examples and trained tokens.
    #[serde(flatten)]
    pub counts: crate::data::SourceCounts,
}

/// The data report's file name in a run directory.
pub const DATA_REPORT_FILE: &str = "data_report.json";

impl DataReport {
    /// The report of `sources` from what reading found (`reads`, in the same order) and what
    /// preparation kept.
    pub fn new(
        sources: &[DataSource],
        reads: &[ReadReport],
        prepared: &PrepareReport,
    ) -> DataReport {
        DataReport::of(sources, prepared, |i| {
            reads.get(i).map_or_else(Default::default, |r| {
                let formats = r
                    .formats
                    .iter()
                    .map(|(f, n)| (f.name().to_string(), *n))
                    .collect();
                (formats, r.skipped.len())
            })
        })
    }

    /// The report of preference `sources` from what reading skipped and what preparation
    /// counted (records are pairs; their shape is `pairs`; `reads` may have handed their pairs
    /// over already).
    pub fn of_pairs(
        sources: &[DataSource],
        reads: &[PreferenceReport],
        prepared: &PrepareReport,
    ) -> DataReport {
        DataReport::of(sources, prepared, |i| {
            let pairs = prepared.sources.get(i).map_or(0, |c| c.records);
            let skipped = reads.get(i).map_or(0, |r| r.skipped.len());
            (vec![("pairs".to_string(), pairs)], skipped)
        })
    }

    /// One entry per source: its name and weight, what `read(i)` says of source `i` (records
    /// per shape, records skipped) and what preparation counted.
    fn of(
        sources: &[DataSource],
        prepared: &PrepareReport,
        read: impl Fn(usize) -> (Vec<(String, usize)>, usize),
    ) -> DataReport {
        DataReport {
            sources: sources
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let (formats, skipped) = read(i);
                    SourceReport {
                        source: s.describe(),
                        weight: s.weight,
                        formats,
                        skipped,
                        counts: prepared.sources.get(i).cloned().unwrap_or_default(),
                    }
                })
                .collect(),
        }
    }

    /// The report in a run directory, if it has one.
    pub fn read(dir: &Path) -> Result<Option<DataReport>> {
        let path = dir.join(DATA_REPORT_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        crate::training::checkpoints::read_json(&path).map(Some)
    }

    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        crate::training::checkpoints::write_json(&dir.join(DATA_REPORT_FILE), self)
    }

    /// One line per source: records, examples and trained tokens.
    pub fn lines(&self) -> Vec<String> {
        self.sources
            .iter()
            .map(|s| {
                let c = &s.counts;
                let shapes: Vec<String> =
                    s.formats.iter().map(|(f, n)| format!("{f} {n}")).collect();
                format!(
                    "{}{}: {} records ({}), {} skipped reading, {} dropped → {} training examples ({} trained tokens per epoch), {} validation",
                    s.source,
                    if s.weight == 1.0 {
                        String::new()
                    } else {
                        format!(" ×{}", s.weight)
                    },
                    c.records,
                    shapes.join(", "),
                    s.skipped,
                    c.dropped,
                    c.train_examples,
                    c.trained_tokens,
                    c.validation_examples
                )
            })
            .collect()
    }
}

/// What a run trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSources {
    /// The base model.
    pub model: ModelSource,
    /// The training data: one source or several, in order (a record written before runs
    /// could mix sources holds one object, and reads as one source).
    #[serde(deserialize_with = "one_or_many")]
    pub data: Vec<DataSource>,
    /// The adapter the run started from (e.g. an SFT adapter a DPO run continues), if any:
    /// the policy starts from it and, for DPO and IPO, it is the reference model's adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterSource>,
}

/// An adapter directory a run started from, and its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterSource {
    /// The directory (absolute when it could be made so).
    pub path: PathBuf,
    /// Its content (`adapter_config.json` and the weights).
    pub fingerprint: Fingerprint,
}

impl AdapterSource {
    /// Records an adapter directory (a PEFT adapter, or a run or checkpoint directory holding
    /// one).
    pub fn new(dir: impl AsRef<Path>) -> Result<AdapterSource> {
        let dir = dir.as_ref();
        let path = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        for file in [crate::lora::ADAPTER_CONFIG, crate::lora::ADAPTER_WEIGHTS] {
            if !path.join(file).is_file() {
                return Err(FinetuneError::SourceMissing {
                    what: "adapter",
                    path: path.join(file),
                });
            }
        }
        let files =
            [crate::lora::ADAPTER_CONFIG, crate::lora::ADAPTER_WEIGHTS].map(|f| path.join(f));
        Ok(AdapterSource {
            fingerprint: Fingerprint::of_files(&path, &files)?,
            path,
        })
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<DataSource>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<DataSource>),
        One(Box<DataSource>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::Many(v) => v,
        OneOrMany::One(one) => vec![*one],
    })
}

impl RunSources {
    /// A run on `model` and `data`, started from no adapter.
    pub fn new(model: ModelSource, data: Vec<DataSource>) -> RunSources {
        RunSources {
            model,
            data,
            adapter: None,
        }
    }

    /// The same run, started from `adapter`.
    pub fn with_adapter(mut self, adapter: Option<AdapterSource>) -> RunSources {
        self.adapter = adapter;
        self
    }

    /// The record in `dir` (a run, checkpoint or adapter directory), if it has one.
    pub fn read(dir: &Path) -> Result<Option<RunSources>> {
        let path = dir.join(SOURCES_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        crate::training::checkpoints::read_json(&path).map(Some)
    }

    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        crate::training::checkpoints::write_json(&dir.join(SOURCES_FILE), self)
    }

    /// What a resumed run trains on. `model` and `data` are what the caller asked for; `None`
    /// means "the recorded one". Content is compared, not paths: a recorded file that moved is
    /// accepted at its new path, one that changed (or a different one asked for) is refused
    /// unless `allow_change`, with a message saying what differs. Every data source is
    /// checked, in order, weight and reading options included.
    ///
    /// ```
    /// use medify_qlora::{DataSource, ModelSource, RunSources};
    /// let dir = std::env::temp_dir().join(format!("medify-sources-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// std::fs::write(dir.join("model.gguf"), b"weights").unwrap();
    /// let model = ModelSource::new(&dir.join("model.gguf"), None).unwrap();
    /// let run = RunSources::new(model, vec![DataSource::embedded()]);
    /// assert_eq!(run.for_resume(None, None, false).unwrap(), run);
    /// std::fs::write(dir.join("other.gguf"), b"other weights").unwrap();
    /// let other = ModelSource::new(&dir.join("other.gguf"), None).unwrap();
    /// let err = run.for_resume(Some(other.clone()), None, false).unwrap_err();
    /// assert!(err.to_string().contains("model"));
    /// assert_eq!(run.for_resume(Some(other.clone()), None, true).unwrap().model, other);
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn for_resume(
        &self,
        model: Option<ModelSource>,
        data: Option<Vec<DataSource>>,
        allow_change: bool,
    ) -> Result<RunSources> {
        let changed =
            |what: &'static str, detail: String| FinetuneError::SourceChanged { what, detail };
        let model = match model {
            Some(m) => m,
            None => ModelSource {
                fingerprint: fingerprint_now("model", &self.model.path, Fingerprint::of_path)?,
                ..self.model.clone()
            },
        };
        if model.fingerprint != self.model.fingerprint && !allow_change {
            return Err(changed(
                "model",
                format!(
                    "the run trained on {} ({}); {} is {}",
                    self.model.path.display(),
                    self.model.fingerprint,
                    model.path.display(),
                    model.fingerprint
                ),
            ));
        }
        let data = match data {
            Some(d) => d,
            None => self
                .data
                .iter()
                .map(DataSource::now)
                .collect::<Result<Vec<_>>>()?,
        };
        if !allow_change {
            if data.len() != self.data.len() {
                return Err(changed(
                    "data",
                    format!(
                        "the run trained on {} source(s) ({}); {} given ({})",
                        self.data.len(),
                        DataSource::describe_all(&self.data),
                        data.len(),
                        DataSource::describe_all(&data)
                    ),
                ));
            }
            for (i, (recorded, now)) in self.data.iter().zip(&data).enumerate() {
                if !now.same_as(recorded) {
                    let which = if data.len() > 1 {
                        format!("source {} of {}: ", i + 1, data.len())
                    } else {
                        String::new()
                    };
                    return Err(changed(
                        "data",
                        format!(
                            "{which}the run trained on {}, and {}: {}",
                            recorded.describe(),
                            now.describe(),
                            recorded.difference(now)
                        ),
                    ));
                }
            }
        }
        let adapter = match &self.adapter {
            Some(a) if a.path.exists() => {
                let now = AdapterSource::new(&a.path)?;
                if now.fingerprint != a.fingerprint && !allow_change {
                    return Err(changed(
                        "adapter",
                        format!(
                            "the run started from {} ({}); it is {} now",
                            a.path.display(),
                            a.fingerprint,
                            now.fingerprint
                        ),
                    ));
                }
                Some(a.clone())
            }
            // Needed again only to rebuild a DPO reference; the trainer says so if it is.
            other => other.clone(),
        };
        Ok(RunSources {
            model,
            data,
            adapter,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("medify-sources-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn fingerprints_follow_content_not_paths() {
        let d = temp_dir("fp");
        std::fs::write(d.join("a.jsonl"), b"{}\n").unwrap();
        std::fs::write(d.join("b.jsonl"), b"{}\n").unwrap();
        std::fs::write(d.join("c.jsonl"), b"{} \n").unwrap();
        let fp = |n: &str| Fingerprint::of_path(&d.join(n)).unwrap();
        assert_eq!(fp("a.jsonl"), fp("b.jsonl"));
        assert_ne!(fp("a.jsonl"), fp("c.jsonl"));
        assert_eq!(fp("a.jsonl"), Fingerprint::of_bytes(b"{}\n"));
        // a large file: a change in its middle is not seen, one at either end is
        let big = vec![7u8; (WHOLE_HASH_LIMIT + 10) as usize];
        std::fs::write(d.join("w.safetensors"), &big).unwrap();
        let before = fp("w.safetensors");
        let mut edited = big.clone();
        *edited.last_mut().unwrap() = 8;
        std::fs::write(d.join("w.safetensors"), &edited).unwrap();
        assert_ne!(fp("w.safetensors"), before);
        // a directory: its model files by name, other files ignored
        let dir_fp = Fingerprint::of_path(&d).unwrap();
        std::fs::write(d.join("notes.md"), b"mine").unwrap();
        assert_eq!(Fingerprint::of_path(&d).unwrap(), dir_fp);
        std::fs::write(d.join("config.json"), b"{}").unwrap();
        assert_ne!(Fingerprint::of_path(&d).unwrap(), dir_fp);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn resume_accepts_moved_files_and_refuses_changed_ones() {
        let d = temp_dir("resume");
        let data_path = d.join("qa.jsonl");
        std::fs::write(&data_path, "{\"question\": \"q\", \"answer\": \"a\"}\n").unwrap();
        std::fs::write(d.join("m.gguf"), b"weights").unwrap();
        let run = RunSources {
            model: ModelSource::new(d.join("m.gguf"), Some("org/model")).unwrap(),
            data: vec![DataSource::file(&data_path, &ReadOptions::default()).unwrap()],
            adapter: None,
        };
        assert_eq!(run.model.name_or_path, "org/model");
        assert_eq!(run.for_resume(None, None, false).unwrap(), run);
        // moved: same content at a new path
        std::fs::rename(&data_path, d.join("moved.jsonl")).unwrap();
        let e = run.for_resume(None, None, false).unwrap_err();
        assert!(
            matches!(e, FinetuneError::SourceMissing { what: "data", .. }),
            "{e}"
        );
        let moved = DataSource::file(&d.join("moved.jsonl"), &ReadOptions::default()).unwrap();
        let resumed = run
            .for_resume(None, Some(vec![moved.clone()]), false)
            .unwrap();
        assert_eq!(resumed.data, std::slice::from_ref(&moved));
        // read differently
        let qa = ReadOptions {
            format: InputFormat::QuestionAnswer,
            ..ReadOptions::default()
        };
        let other_format = DataSource::file(&d.join("moved.jsonl"), &qa).unwrap();
        let e = run
            .for_resume(None, Some(vec![other_format]), false)
            .unwrap_err();
        assert!(e.to_string().contains("read differently"), "{e}");
        // changed content
        std::fs::write(d.join("m.gguf"), b"weightz").unwrap();
        let e = run
            .for_resume(None, Some(vec![moved.clone()]), false)
            .unwrap_err();
        assert!(
            matches!(e, FinetuneError::SourceChanged { what: "model", .. }),
            "{e}"
        );
        assert!(run.for_resume(None, Some(vec![moved]), true).is_ok());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_adapter_finds_its_base_and_quantization() {
        let d = temp_dir("adapter-base");
        std::fs::write(d.join("m.gguf"), b"weights").unwrap();
        let mut model = ModelSource::new(d.join("m.gguf"), None).unwrap();
        model.quantization = Some(BaseQuantization {
            quant: crate::BaseQuant::Fp4,
            blocksize: 128,
            double_quant: false,
        });
        RunSources::new(model, vec![DataSource::embedded()])
            .write(&d)
            .unwrap();
        let base = AdapterBase::resolve(Some(&d), None, None).unwrap();
        assert_eq!(base.model, std::path::absolute(d.join("m.gguf")).unwrap());
        let Some(LinearQuant::Bits4(q)) = base.quant else {
            panic!("{:?}", base.quant)
        };
        assert_eq!(
            (q.quant_type, q.blocksize, q.double_quant),
            (crate::quant::QuantType::Fp4, 128, false)
        );
        assert!(base.from_record);
        // given settings win
        let dense = AdapterBase::resolve(Some(&d), Some(Path::new("x")), Some(None)).unwrap();
        assert_eq!(
            (dense.model, dense.quant, dense.from_record),
            (PathBuf::from("x"), None, false)
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_record_round_trips() {
        let d = temp_dir("roundtrip");
        std::fs::write(d.join("m.gguf"), b"weights").unwrap();
        let mut model = ModelSource::new(d.join("m.gguf"), None).unwrap();
        model.quantization = Some(BaseQuantization {
            quant: crate::BaseQuant::Nf4,
            blocksize: 64,
            double_quant: true,
        });
        let run = RunSources::new(model, vec![DataSource::embedded()]);
        assert_eq!(RunSources::read(&d).unwrap(), None);
        run.write(&d).unwrap();
        assert_eq!(RunSources::read(&d).unwrap(), Some(run.clone()));
        // a record from before runs could mix sources holds one data object
        let mut old: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join(SOURCES_FILE)).unwrap()).unwrap();
        old["data"] = old["data"][0].clone();
        std::fs::write(d.join(SOURCES_FILE), old.to_string()).unwrap();
        assert_eq!(RunSources::read(&d).unwrap(), Some(run));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
