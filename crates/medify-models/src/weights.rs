//! Where model weights come from: memory-mapped safetensors (single or sharded, dense or
//! bitsandbytes 4-bit) and GGUF files, all seen through Hugging Face tensor names.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use medify_quant::{Int8Weight, Packed4Bit, SCB_SUFFIX, WEIGHT_FORMAT_SUFFIX, bnb};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{ModelError, Result};

/// One weight as read from a checkpoint, still on the host.
#[derive(Debug, Clone)]
pub enum HostWeight {
    /// Dense values, converted to f32.
    Dense {
        /// PyTorch-order shape.
        shape: Vec<usize>,
        /// Row-major values.
        values: Vec<f32>,
    },
    /// A bitsandbytes 4-bit weight, kept packed.
    Quant4(Packed4Bit),
    /// A bitsandbytes 8-bit (LLM.int8) weight, kept as int8 codes and `SCB`.
    Int8(Int8Weight),
}

impl HostWeight {
    /// The logical (PyTorch) shape.
    pub fn shape(&self) -> Vec<usize> {
        match self {
            HostWeight::Dense { shape, .. } => shape.clone(),
            HostWeight::Quant4(p) => p.state.shape.clone(),
            HostWeight::Int8(w) => w.shape().to_vec(),
        }
    }
}

/// A checkpoint that hands out tensors by Hugging Face name.
pub trait WeightSource {
    /// Names the file(s) in messages.
    fn origin(&self) -> String;
    /// Every logical tensor name the checkpoint holds (4-bit companions folded into their weight).
    fn names(&self) -> Vec<String>;
    /// Whether the checkpoint holds `name`.
    fn contains(&self, name: &str) -> bool;
    /// Reads one tensor.
    fn load(&self, name: &str) -> Result<HostWeight>;
}

/// Tracks which tensors the model consumed, for the missing/unused report.
pub(crate) struct Tracker<'a> {
    pub source: &'a dyn WeightSource,
    used: RefCell<BTreeSet<String>>,
    missing: RefCell<Vec<String>>,
}

impl<'a> Tracker<'a> {
    pub fn new(source: &'a dyn WeightSource) -> Tracker<'a> {
        Tracker {
            source,
            used: RefCell::default(),
            missing: RefCell::default(),
        }
    }

    /// Loads a required tensor, recording it as missing when absent.
    pub fn take(&self, name: &str) -> Result<Option<HostWeight>> {
        if !self.source.contains(name) {
            self.missing.borrow_mut().push(name.to_string());
            return Ok(None);
        }
        self.used.borrow_mut().insert(name.to_string());
        self.source.load(name).map(Some)
    }

    pub fn missing(&self) -> Vec<String> {
        self.missing.borrow().clone()
    }

    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        self.source
            .names()
            .into_iter()
            .filter(|n| !used.contains(n))
            .collect()
    }
}

/// The 4-bit companion suffixes transformers writes next to `P.weight`.
const BNB_SUFFIXES: [&str; 6] = [
    ".absmax",
    ".nested_absmax",
    ".nested_quant_map",
    ".quant_map",
    ".quant_state.bitsandbytes__nf4",
    ".quant_state.bitsandbytes__fp4",
];

/// Memory-mapped safetensors: `model.safetensors` or the shards of `model.safetensors.index.json`.
pub struct SafetensorsSource {
    files: Vec<(PathBuf, Mmap)>,
    /// tensor name → index in `files`
    index: BTreeMap<String, usize>,
    /// names of packed 4-bit weights (those with a quant_state companion)
    quantized: BTreeSet<String>,
    /// names of 8-bit weights (those with an `SCB` companion)
    int8: BTreeSet<String>,
    origin: String,
}

impl SafetensorsSource {
    /// Opens the weights of a model directory.
    pub fn open_dir(dir: &Path) -> Result<SafetensorsSource> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.is_file() {
            return SafetensorsSource::open_files(&[single], dir.display().to_string());
        }
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| ModelError::Json {
                    path: index.clone(),
                    source,
                })?;
            let map = value
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    ModelError::weights(
                        index.display().to_string(),
                        "missing object field weight_map",
                    )
                })?;
            let mut shards = BTreeSet::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    ModelError::weights(
                        index.display().to_string(),
                        format!("weight_map[{name:?}] must be a file name"),
                    )
                })?;
                if file.contains('/') || file.contains('\\') || file.contains("..") {
                    return Err(ModelError::weights(
                        index.display().to_string(),
                        format!(
                            "weight_map[{name:?}] names {file:?}, which is not a file in the model directory"
                        ),
                    ));
                }
                shards.insert(dir.join(file));
            }
            let shards: Vec<PathBuf> = shards.into_iter().collect();
            return SafetensorsSource::open_files(&shards, dir.display().to_string());
        }
        Err(ModelError::weights(
            dir.display().to_string(),
            "no model.safetensors or model.safetensors.index.json in the model directory",
        ))
    }

    /// Opens a list of safetensors files as one checkpoint.
    pub fn open_files(paths: &[PathBuf], origin: String) -> Result<SafetensorsSource> {
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
            // SAFETY: the map is read-only; a checkpoint changed under a running process is the
            // user's doing, and every read below is bounds-checked by safetensors.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| {
                ModelError::weights(
                    path.display().to_string(),
                    format!("not a safetensors file: {e}"),
                )
            })?;
            for name in st.names() {
                if index.insert(name.to_string(), i).is_some() {
                    return Err(ModelError::weights(
                        origin.clone(),
                        format!("tensor {name} appears in two shards"),
                    ));
                }
            }
            files.push((path.clone(), mmap));
        }
        let quantized = index
            .keys()
            .filter_map(|k| {
                k.strip_suffix(".quant_state.bitsandbytes__nf4")
                    .or_else(|| k.strip_suffix(".quant_state.bitsandbytes__fp4"))
                    .map(str::to_string)
            })
            .collect();
        let int8 = index
            .keys()
            .filter_map(|k| k.strip_suffix(SCB_SUFFIX).map(|p| format!("{p}.weight")))
            .filter(|w| index.contains_key(w))
            .collect();
        Ok(SafetensorsSource {
            files,
            index,
            quantized,
            int8,
            origin,
        })
    }

    fn file_of(&self, name: &str) -> Result<(&Path, SafeTensors<'_>)> {
        let i = *self
            .index
            .get(name)
            .ok_or_else(|| ModelError::weights(self.origin.clone(), format!("no tensor {name}")))?;
        let (path, mmap) = &self.files[i];
        let st = SafeTensors::deserialize(mmap)
            .map_err(|e| ModelError::weights(path.display().to_string(), e.to_string()))?;
        Ok((path, st))
    }
}

impl WeightSource for SafetensorsSource {
    fn origin(&self) -> String {
        self.origin.clone()
    }

    fn names(&self) -> Vec<String> {
        self.index
            .keys()
            .filter(|k| {
                !BNB_SUFFIXES.iter().any(|s| {
                    k.strip_suffix(s)
                        .is_some_and(|base| self.quantized.contains(base))
                }) && ![SCB_SUFFIX, WEIGHT_FORMAT_SUFFIX].iter().any(|s| {
                    k.strip_suffix(s)
                        .is_some_and(|p| self.int8.contains(&format!("{p}.weight")))
                })
            })
            .cloned()
            .collect()
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn load(&self, name: &str) -> Result<HostWeight> {
        let (path, st) = self.file_of(name)?;
        let file = path.display().to_string();
        if self.quantized.contains(name) {
            // bitsandbytes companions may sit in another shard only in theory; transformers
            // writes them next to their weight, which is what read_weight expects.
            let packed = bnb::read_weight(&st, name).map_err(|source| ModelError::Quant {
                name: name.to_string(),
                source,
            })?;
            return Ok(HostWeight::Quant4(packed));
        }
        if self.int8.contains(name) {
            let w = Int8Weight::read(&st, name).map_err(|source| ModelError::Quant {
                name: name.to_string(),
                source,
            })?;
            return Ok(HostWeight::Int8(w));
        }
        let view = st
            .tensor(name)
            .map_err(|e| ModelError::weights(&file, format!("{name}: {e}")))?;
        let shape = view.shape().to_vec();
        let bytes = view.data();
        let values = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::weights(
                    file,
                    format!(
                        "{name}: dtype {other:?} is not supported for dense weights (F32, F16, BF16)"
                    ),
                ));
            }
        };
        Ok(HostWeight::Dense { shape, values })
    }
}
