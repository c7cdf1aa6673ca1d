//! Where a run's base model and data came from. The trainer records them in the run directory,
//! in every checkpoint and beside every adapter, so that a resumed run needs nothing but its
//! checkpoint, and `eval`, `chat` and `merge` find the base an adapter was trained over.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::{FieldMap, FileKind, InputFormat, ReadOptions, ReadReport};
use crate::error::{FinetuneError, Result, io_err};
use crate::quant::QuantConfig;
use crate::training::config::BaseQuantization;

/// The record's file name, beside `adapter_config.json` and `finetune_config.json`.
pub const SOURCES_FILE: &str = "run_sources.json";

/// The embedded default data: general-health Q&A pairs written for the project.
pub const EMBEDDED_MEDICAL_QA: &str = include_str!("../../fixtures/medical_qa/medical_qa.jsonl");

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
        let mut h = Fnv::new();
        let mut bytes = 0;
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
            for f in files {
                h.update(f.file_name().unwrap_or_default().as_encoded_bytes());
                bytes += hash_file(&f, &mut h)?;
            }
        } else {
            bytes = hash_file(path, &mut h)?;
        }
        Ok(Fingerprint {
            bytes,
            fnv1a64: format!("{:016x}", h.0),
        })
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes, fnv1a64 {}", self.bytes, self.fnv1a64)
    }
}

/// The fingerprint of a recorded `path` now, or the error saying it is gone.
fn fingerprint_now(what: &'static str, path: &Path) -> Result<Fingerprint> {
    if !path.exists() {
        return Err(FinetuneError::SourceMissing {
            what,
            path: path.to_path_buf(),
        });
    }
    Fingerprint::of_path(path)
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
    pub quant: Option<QuantConfig>,
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
        quant: Option<Option<QuantConfig>>,
    ) -> Result<AdapterBase> {
        let record = match adapter {
            Some(dir) => RunSources::read(dir)?.map(|r| r.model),
            None => None,
        };
        let recorded_quant = match record.as_ref().and_then(|m| m.quantization.as_ref()) {
            Some(q) => Some(q.quant_config()?),
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
    /// A file or a directory of MedQuAD XML files.
    File {
        /// Its path (absolute when it could be made so).
        path: PathBuf,
    },
}

/// A run's data: where it is, how it is read, and its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSource {
    /// Where it is.
    pub origin: DataOrigin,
    /// Record shape.
    pub format: InputFormat,
    /// Field renames.
    pub fields: FieldMap,
    /// Whether invalid records were skipped.
    pub skip_invalid: bool,
    /// Its content.
    pub fingerprint: Fingerprint,
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
            fingerprint: Fingerprint::of_bytes(EMBEDDED_MEDICAL_QA.as_bytes()),
        }
    }

    /// A data file (or MedQuAD directory) read with `options`.
    pub fn file(path: &Path, options: &ReadOptions) -> Result<DataSource> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Ok(DataSource {
            fingerprint: Fingerprint::of_path(&path)?,
            origin: DataOrigin::File { path },
            format: options.format,
            fields: options.fields.clone(),
            skip_invalid: options.skip_invalid,
        })
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
            DataOrigin::File { path } => crate::data::read_records(path, &options)?,
        })
    }

    /// For messages: the file's path, or "the embedded medical Q&A set".
    pub fn describe(&self) -> String {
        match &self.origin {
            DataOrigin::Embedded => "the embedded medical Q&A set".into(),
            DataOrigin::File { path } => path.display().to_string(),
        }
    }

    /// The same data read the same way, wherever it lies.
    fn same_as(&self, other: &DataSource) -> bool {
        self.fingerprint == other.fingerprint
            && self.format == other.format
            && self.fields == other.fields
            && self.skip_invalid == other.skip_invalid
    }
}

/// What a run trained on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSources {
    /// The base model.
    pub model: ModelSource,
    /// The training data.
    pub data: DataSource,
}

impl RunSources {
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
    /// unless `allow_change`, with a message saying what differs.
    ///
    /// ```
    /// use medify_qlora::{DataSource, ModelSource, RunSources};
    /// let dir = std::env::temp_dir().join(format!("medify-sources-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// std::fs::write(dir.join("model.gguf"), b"weights").unwrap();
    /// let model = ModelSource::new(&dir.join("model.gguf"), None).unwrap();
    /// let run = RunSources { model, data: DataSource::embedded() };
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
        data: Option<DataSource>,
        allow_change: bool,
    ) -> Result<RunSources> {
        let changed =
            |what: &'static str, detail: String| FinetuneError::SourceChanged { what, detail };
        let model = match model {
            Some(m) => m,
            None => ModelSource {
                fingerprint: fingerprint_now("model", &self.model.path)?,
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
            None => match &self.data.origin {
                DataOrigin::Embedded => DataSource {
                    fingerprint: Fingerprint::of_bytes(EMBEDDED_MEDICAL_QA.as_bytes()),
                    ..self.data.clone()
                },
                DataOrigin::File { path } => DataSource {
                    fingerprint: fingerprint_now("data", path)?,
                    ..self.data.clone()
                },
            },
        };
        if !data.same_as(&self.data) && !allow_change {
            let how = if data.fingerprint != self.data.fingerprint {
                format!(
                    "its content differs ({} recorded; {} now)",
                    self.data.fingerprint, data.fingerprint
                )
            } else {
                format!(
                    "it is read differently (format {:?}, fields {:?}, skip_invalid {} recorded; {:?}, {:?}, {} now)",
                    self.data.format,
                    self.data.fields,
                    self.data.skip_invalid,
                    data.format,
                    data.fields,
                    data.skip_invalid
                )
            };
            return Err(changed(
                "data",
                format!(
                    "the run trained on {}, and {}: {how}",
                    self.data.describe(),
                    data.describe()
                ),
            ));
        }
        Ok(RunSources { model, data })
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
            data: DataSource::file(&data_path, &ReadOptions::default()).unwrap(),
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
        let resumed = run.for_resume(None, Some(moved.clone()), false).unwrap();
        assert_eq!(resumed.data, moved);
        // read differently
        let qa = ReadOptions {
            format: InputFormat::QuestionAnswer,
            ..ReadOptions::default()
        };
        let other_format = DataSource::file(&d.join("moved.jsonl"), &qa).unwrap();
        let e = run.for_resume(None, Some(other_format), false).unwrap_err();
        assert!(e.to_string().contains("read differently"), "{e}");
        // changed content
        std::fs::write(d.join("m.gguf"), b"weightz").unwrap();
        let e = run
            .for_resume(None, Some(moved.clone()), false)
            .unwrap_err();
        assert!(
            matches!(e, FinetuneError::SourceChanged { what: "model", .. }),
            "{e}"
        );
        assert!(run.for_resume(None, Some(moved), true).is_ok());
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
        RunSources {
            model,
            data: DataSource::embedded(),
        }
        .write(&d)
        .unwrap();
        let base = AdapterBase::resolve(Some(&d), None, None).unwrap();
        assert_eq!(base.model, std::path::absolute(d.join("m.gguf")).unwrap());
        let q = base.quant.unwrap();
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
        let run = RunSources {
            model,
            data: DataSource::embedded(),
        };
        assert_eq!(RunSources::read(&d).unwrap(), None);
        run.write(&d).unwrap();
        assert_eq!(RunSources::read(&d).unwrap(), Some(run));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
