//! Adapting whole models: apply, count, merge, and PEFT adapter files.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::adapter::LoraAdapter;
use crate::config::{LoraConfig, TargetModules};
use crate::error::{LoraError, Result, io_err};
use crate::projection::Projection;

/// PEFT prefixes every key of a causal-LM adapter with this.
const PEFT_PREFIX: &str = "base_model.model.";
/// File names PEFT reads and writes.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// File names PEFT reads and writes.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// A model whose linear layers can carry adapters: it lists them under the module paths of its
/// Hugging Face checkpoint (`model.layers.0.self_attn.q_proj`), which PEFT files use as keys.
pub trait LoraModel {
    /// Every linear layer with its module path, in a fixed order.
    fn linear_layers(&self) -> Vec<(String, &Projection)>;
    /// Every linear layer, mutably, in the same order.
    fn linear_layers_mut(&mut self) -> Vec<(String, &mut Projection)>;
    /// The output layer, which `"all-linear"` leaves out (PEFT and QLoRA do the same).
    fn output_layer(&self) -> Option<&str> {
        None
    }
    /// Parameters of the frozen base, counted as dense elements (4-bit weights count as their
    /// logical size).
    fn base_parameters(&self) -> usize;
}

/// Trainable versus total parameters after adaptation: the figure PEFT's
/// `print_trainable_parameters` shows.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSummary {
    /// Module paths that carry an adapter.
    pub adapted: Vec<String>,
    /// Adapter parameters (the only trainable ones).
    pub trainable: usize,
    /// Base plus adapter parameters.
    pub total: usize,
}

impl LoraSummary {
    /// Trainable share of all parameters, in percent.
    pub fn trainable_percent(&self) -> f64 {
        100.0 * self.trainable as f64 / self.total.max(1) as f64
    }
}

impl fmt::Display for LoraSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {:.4} ({} layers adapted)",
            grouped(self.trainable),
            grouped(self.total),
            self.trainable_percent(),
            self.adapted.len()
        )
    }
}

fn grouped(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What merging all adapters did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MergeReport {
    /// Layers whose adapter was folded into the base.
    pub merged: usize,
    /// Of those, layers with a 4-bit base that was requantized (lossy).
    pub requantized: usize,
    /// Largest rounding error of a requantized weight.
    pub max_rounding_error: f32,
}

/// Adapter operations on any [`LoraModel`].
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use medify_lora::{LoraConfig, LoraExt, LoraModel, Projection, TargetModules};
///
/// struct Tiny { q_proj: Projection }
/// impl LoraModel for Tiny {
///     fn linear_layers(&self) -> Vec<(String, &Projection)> { vec![("q_proj".into(), &self.q_proj)] }
///     fn linear_layers_mut(&mut self) -> Vec<(String, &mut Projection)> {
///         vec![("q_proj".into(), &mut self.q_proj)]
///     }
///     fn base_parameters(&self) -> usize { 16 * 16 }
/// }
///
/// let device = Device::flex();
/// let mut model = Tiny { q_proj: Projection::dense(Tensor::<2>::ones([16, 16], &device), None) };
/// let config = LoraConfig::new(2, 4.0).with_target_modules(TargetModules::names(&["q_proj"]));
/// let summary = model.add_adapters(&config).unwrap();
/// assert_eq!(summary.trainable, 2 * (16 + 16));
/// assert!(model.add_adapters(&config).is_err()); // already adapted
/// // A name the model does not have is an error, not a silent no-op.
/// let typo = LoraConfig::new(2, 4.0).with_target_modules(TargetModules::names(&["qproj"]));
/// assert!(model.add_adapters(&typo).unwrap_err().to_string().contains("qproj"));
/// ```
pub trait LoraExt: LoraModel {
    /// Puts a fresh adapter on every layer `config` targets. Errors: nothing matched, a listed
    /// name matches no layer, a rank larger than a layer, adapters already present.
    fn add_adapters(&mut self, config: &LoraConfig) -> Result<LoraSummary> {
        let plan = plan(self, config)?;
        let mut layers = self.linear_layers_mut();
        let mut built = Vec::with_capacity(plan.len());
        for p in &plan {
            let proj = &layers[p.index].1;
            let adapter = LoraAdapter::init(
                proj.weight(),
                p.r,
                config.scaling_for(p.r, p.alpha),
                config.dropout,
                &config.init,
                config.use_dora,
                config.seed,
                p.index as u64,
            )?;
            built.push(adapter);
        }
        for (p, adapter) in plan.iter().zip(built) {
            layers[p.index].1.set_lora(Some(adapter))?;
        }
        drop(layers);
        Ok(self.adapter_summary())
    }

    /// Gives this model (the same architecture, e.g. loaded on another device) copies of
    /// `source`'s adapters ([`LoraAdapter::replica`], on this model's devices), replacing any it
    /// has: the replicas of data-parallel training, refreshed after every optimizer step.
    /// Returns how many adapters were copied. Errors when the two models' layers differ.
    fn replicate_adapters(&mut self, source: &Self) -> Result<usize>
    where
        Self: Sized,
    {
        let from = source.linear_layers();
        let mut to = self.linear_layers_mut();
        if from.len() != to.len() {
            return Err(LoraError::InvalidConfig(format!(
                "replica has {} linear layers, the model {}",
                to.len(),
                from.len()
            )));
        }
        for ((a, p), (b, q)) in from.iter().zip(to.iter()) {
            if a != b || p.dims() != q.dims() {
                return Err(LoraError::InvalidConfig(format!(
                    "replica layer {b} {:?} does not match {a} {:?}",
                    q.dims(),
                    p.dims()
                )));
            }
        }
        let mut copied = 0;
        for ((_, src), (_, dst)) in from.iter().zip(to.iter_mut()) {
            let device = dst.weight().device();
            let copy = src.lora().map(|a| a.replica(&device));
            copied += usize::from(copy.is_some());
            dst.set_lora(copy)?;
        }
        Ok(copied)
    }

    /// Seeks every adapter's dropout stream (see [`LoraAdapter::seek_dropout`]).
    fn seek_dropout(&self, seed: u64, position: u64) {
        for (_, proj) in self.linear_layers() {
            if let Some(adapter) = proj.lora() {
                adapter.seek_dropout(seed, position);
            }
        }
    }

    /// Counts adapted layers and trainable parameters.
    fn adapter_summary(&self) -> LoraSummary {
        let mut adapted = Vec::new();
        let mut trainable = 0;
        for (path, proj) in self.linear_layers() {
            if let Some(a) = proj.lora() {
                adapted.push(path);
                trainable += a.num_params();
            }
        }
        LoraSummary {
            adapted,
            trainable,
            total: self.base_parameters() + trainable,
        }
    }

    /// Removes every adapter (unmerging first where merged), returning the plain base.
    fn remove_adapters(&mut self) -> Result<()> {
        for (_, proj) in self.linear_layers_mut() {
            if proj.is_merged() {
                proj.unmerge()?;
            }
            proj.set_lora(None)?;
        }
        Ok(())
    }

    /// Switches adapter dropout on (training) or off (evaluation).
    fn set_adapters_training(&mut self, training: bool) {
        for (_, proj) in self.linear_layers_mut() {
            if let Some(a) = proj.lora.as_mut() {
                a.set_training(training);
            }
        }
    }

    /// Folds every adapter into its base. 4-bit bases are requantized, which rounds: a warning
    /// is printed, and the report says by how much. Merge into a dense base for exact results.
    fn merge_adapters(&mut self) -> Result<MergeReport> {
        let mut report = MergeReport::default();
        for (path, proj) in self.linear_layers_mut() {
            if proj.lora().is_none() || proj.is_merged() {
                continue;
            }
            let outcome = proj.merge().map_err(|e| LoraError::Layer {
                action: "merging",
                module: path.clone(),
                source: Box::new(e),
            })?;
            report.merged += 1;
            if outcome.requantized {
                report.requantized += 1;
                report.max_rounding_error =
                    report.max_rounding_error.max(outcome.max_rounding_error);
            }
        }
        if report.merged == 0 {
            return Err(LoraError::State(
                "the model has no unmerged adapter to merge".into(),
            ));
        }
        if report.requantized > 0 {
            eprintln!(
                "warning: merged {} adapters into 4-bit weights by dequantizing, adding and \
                 requantizing: the merged weights are rounded (max error {:.3e}) and outputs \
                 will differ slightly; merge into a dense (f32/f16/bf16) base for an exact result",
                report.requantized, report.max_rounding_error
            );
        }
        Ok(report)
    }

    /// Undoes [`LoraExt::merge_adapters`].
    fn unmerge_adapters(&mut self) -> Result<usize> {
        let mut n = 0;
        for (path, proj) in self.linear_layers_mut() {
            if proj.is_merged() {
                proj.unmerge().map_err(|e| LoraError::Layer {
                    action: "unmerging",
                    module: path.clone(),
                    source: Box::new(e),
                })?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` (f32) into `dir` exactly as
    /// PEFT does, so `PeftModel.from_pretrained(base, dir)` loads them. Each file is written to a
    /// temporary name and renamed. An existing adapter in `dir` is kept unless `overwrite`.
    fn save_adapter(&self, dir: &Path, config: &LoraConfig, overwrite: bool) -> Result<()> {
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut adapted = Vec::new();
        for (path, proj) in self.linear_layers() {
            let Some(a) = proj.lora() else { continue };
            adapted.push(path.clone());
            let key = format!("{PEFT_PREFIX}{path}");
            tensors.push(host(
                format!("{key}.lora_A.weight"),
                a.lora_a.val().dims().to_vec(),
                a.lora_a.val().into_data(),
            )?);
            tensors.push(host(
                format!("{key}.lora_B.weight"),
                a.lora_b.val().dims().to_vec(),
                a.lora_b.val().into_data(),
            )?);
            if let Some(m) = &a.magnitude {
                tensors.push(host(
                    format!("{key}.lora_magnitude_vector"),
                    m.val().dims().to_vec(),
                    m.val().into_data(),
                )?);
            }
        }
        if adapted.is_empty() {
            return Err(LoraError::State("the model has no adapter to save".into()));
        }
        let cfg_path = dir.join(ADAPTER_CONFIG);
        let weights_path = dir.join(ADAPTER_WEIGHTS);
        if !overwrite && (cfg_path.exists() || weights_path.exists()) {
            return Err(LoraError::AlreadyExists(dir.to_path_buf()));
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let views = tensors
            .iter()
            .map(|(k, shape, bytes)| {
                TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| LoraError::Format {
                        path: weights_path.clone(),
                        message: format!("tensor {k}: {e}"),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = Some(std::collections::HashMap::from([(
            "format".to_string(),
            "pt".to_string(),
        )]));
        let bytes = safetensors::serialize(views, metadata).map_err(|e| LoraError::Format {
            path: weights_path.clone(),
            message: e.to_string(),
        })?;
        let json = serde_json::to_string_pretty(&config.to_peft_json(&adapted)).map_err(|e| {
            LoraError::Format {
                path: cfg_path.clone(),
                message: e.to_string(),
            }
        })?;
        write_atomic(&weights_path, &bytes)?;
        write_atomic(&cfg_path, json.as_bytes())?;
        Ok(())
    }

    /// Reads a PEFT adapter directory (or this crate's) and installs it. Every tensor must
    /// belong to a layer the config targets and have that layer's shape; nothing is installed
    /// unless everything fits.
    fn load_adapter(&mut self, dir: &Path) -> Result<(LoraConfig, LoraSummary)> {
        let config = LoraConfig::from_file(dir.join(ADAPTER_CONFIG))?;
        let weights_path = dir.join(ADAPTER_WEIGHTS);
        let mut tensors = read_tensors(&weights_path)?;
        let plan = plan(self, &config).map_err(|e| match e {
            LoraError::NoTargetMatched { .. } | LoraError::RankTooLarge { .. } => {
                LoraError::Mismatch {
                    path: dir.to_path_buf(),
                    message: e.to_string(),
                }
            }
            e => e,
        })?;
        let mismatch = |message: String| LoraError::Mismatch {
            path: weights_path.clone(),
            message,
        };
        let mut layers = self.linear_layers_mut();
        let mut built = Vec::with_capacity(plan.len());
        for p in &plan {
            let proj = &layers[p.index].1;
            let [out, inp] = proj.dims();
            let device = proj.weight().device();
            let key = format!("{PEFT_PREFIX}{}", p.path);
            let mut take = |suffix: &str, shape: Vec<usize>| -> Result<Vec<f32>> {
                let name = format!("{key}.{suffix}");
                let (found, values) = tensors.remove(&name).ok_or_else(|| {
                    mismatch(format!(
                        "tensor {name} is missing (an adapter for another architecture or target list?)"
                    ))
                })?;
                if found != shape {
                    return Err(mismatch(format!(
                        "tensor {name} has shape {found:?}, this model needs {shape:?} (rank {} on a [{out}, {inp}] layer)",
                        p.r
                    )));
                }
                Ok(values)
            };
            let a = take("lora_A.weight", vec![p.r, inp])?;
            let b = take("lora_B.weight", vec![out, p.r])?;
            let m = if config.use_dora {
                Some(take("lora_magnitude_vector", vec![out])?)
            } else {
                None
            };
            built.push(
                LoraAdapter::new(
                    tensor2(a, [p.r, inp], &device),
                    tensor2(b, [out, p.r], &device),
                    m.map(|m| Tensor::<1>::from_data(TensorData::new(m, [out]), &device)),
                    config.scaling_for(p.r, p.alpha),
                    config.dropout,
                )?
                .with_dropout_stream(config.seed, p.index as u64),
            );
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(mismatch(format!(
                "tensor {extra} belongs to no layer of this model that the config targets ({} more unmatched)",
                tensors.len() - 1
            )));
        }
        for (p, adapter) in plan.iter().zip(built) {
            layers[p.index].1.set_lora(Some(adapter))?;
        }
        drop(layers);
        Ok((config, self.adapter_summary()))
    }
}

impl<M: LoraModel + ?Sized> LoraExt for M {}

struct Planned {
    index: usize,
    path: String,
    r: usize,
    alpha: f64,
}

fn plan<M: LoraModel + ?Sized>(model: &M, config: &LoraConfig) -> Result<Vec<Planned>> {
    config.validate()?;
    let layers = model.linear_layers();
    let output = model.output_layer();
    let mut planned = Vec::new();
    for (index, (path, proj)) in layers.iter().enumerate() {
        if !config.targets(path, output)? {
            continue;
        }
        if proj.lora().is_some() {
            return Err(LoraError::State(format!(
                "layer `{path}` already carries an adapter; remove it first"
            )));
        }
        let (r, alpha) = config.rank_and_alpha(path)?;
        let dims = proj.dims();
        let max = dims[0].min(dims[1]);
        if r > max {
            return Err(LoraError::RankTooLarge {
                module: path.clone(),
                r,
                dims,
                max,
            });
        }
        planned.push(Planned {
            index,
            path: path.clone(),
            r,
            alpha,
        });
    }
    let available = || {
        let mut names: Vec<&str> = layers
            .iter()
            .map(|(p, _)| p.rsplit('.').next().unwrap_or(p))
            .collect();
        names.sort_unstable();
        names.dedup();
        names.join(", ")
    };
    if let TargetModules::Names(names) = &config.target_modules {
        for n in names {
            let known = layers
                .iter()
                .any(|(p, _)| p == n || p.ends_with(&format!(".{n}")));
            if !known {
                return Err(LoraError::NoTargetMatched {
                    targets: format!("{n:?}"),
                    available: available(),
                });
            }
        }
    }
    if planned.is_empty() {
        return Err(LoraError::NoTargetMatched {
            targets: config.target_modules.describe(),
            available: available(),
        });
    }
    Ok(planned)
}

fn tensor2(values: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn host(key: String, shape: Vec<usize>, data: TensorData) -> Result<(String, Vec<usize>, Vec<u8>)> {
    let values: Vec<f32> = data
        .convert::<f32>()
        .try_into_vec()
        .map_err(|e| LoraError::State(format!("reading {key} back from the device: {e:?}")))?;
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok((key, shape, bytes))
}

/// Tensors by name: shape and f32 values.
type NamedTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Every tensor of an adapter file as f32, by name.
fn read_tensors(path: &Path) -> Result<NamedTensors> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let bad = |message: String| LoraError::Format {
        path: path.to_path_buf(),
        message,
    };
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(bad(format!(
                    "tensor {name} has dtype {other:?}; adapters must be F32, F16 or BF16"
                )));
            }
        };
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}

/// Writes `bytes` to a temporary file beside `path` and renames it into place, so a crash never
/// leaves a half-written file under the real name.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    medify_quant::atomic::write(path, bytes).map_err(io_err(path))
}
