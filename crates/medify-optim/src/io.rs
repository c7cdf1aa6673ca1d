//! Optimizer state files: one safetensors file, moments under the parameter's module path.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::adamw::PagedAdamW;
use crate::blockwise::{BLOCK, padded_len};
use crate::config::AdamWConfig;
use crate::error::{OptimError, Result};
use crate::state::{HostMoments, Place, Slot};

const FORMAT: &str = "medify-paged-adamw";
const VERSION: &str = "1";

#[derive(Serialize, Deserialize)]
struct SlotMeta {
    step: u64,
    numel: usize,
    eight_bit: bool,
}

fn bad(path: &Path, reason: impl Into<String>) -> OptimError {
    OptimError::BadStateFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl PagedAdamW {
    /// Writes every parameter's state (paging nothing out: resident state is copied), the step
    /// counters and the settings to `path`, atomically. Refuses to replace an existing file
    /// unless `overwrite`.
    ///
    /// ```
    /// # use medify_optim::{AdamWConfig, PagedAdamW};
    /// let dir = std::env::temp_dir().join(format!("medify-optim-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let opt = PagedAdamW::new(AdamWConfig::default()).unwrap();
    /// opt.save(&dir.join("optimizer.safetensors"), true).unwrap();
    /// let mut again = PagedAdamW::new(AdamWConfig::default()).unwrap();
    /// again.load_state(&dir.join("optimizer.safetensors")).unwrap();
    /// assert_eq!(again.steps(), 0);
    /// ```
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<()> {
        if path.exists() && !overwrite {
            return Err(OptimError::WouldOverwrite(path.to_path_buf()));
        }
        let mut meta = BTreeMap::new();
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (key, slot) in &self.slots {
            meta.insert(
                key.clone(),
                SlotMeta {
                    step: slot.step,
                    numel: slot.numel,
                    eight_bit: slot.eight_bit,
                },
            );
            match slot.host_moments() {
                HostMoments::F32 { m, v } => {
                    tensors.push((format!("{key}.m"), Dtype::F32, vec![m.len()], f32_bytes(&m)));
                    tensors.push((format!("{key}.v"), Dtype::F32, vec![v.len()], f32_bytes(&v)));
                }
                HostMoments::Q8 {
                    m,
                    m_absmax,
                    v,
                    v_absmax,
                } => {
                    tensors.push((format!("{key}.m"), Dtype::U8, vec![m.len()], m));
                    tensors.push((format!("{key}.v"), Dtype::U8, vec![v.len()], v));
                    for (name, a) in [("m_absmax", m_absmax), ("v_absmax", v_absmax)] {
                        tensors.push((
                            format!("{key}.{name}"),
                            Dtype::F32,
                            vec![a.len()],
                            f32_bytes(&a),
                        ));
                    }
                }
            }
        }
        let mut header = HashMap::new();
        header.insert("format".to_string(), FORMAT.to_string());
        header.insert("version".to_string(), VERSION.to_string());
        header.insert("config".to_string(), json(self.config()));
        header.insert("slots".to_string(), json(&meta));
        header.insert("steps".to_string(), self.steps.to_string());
        header.insert("skipped".to_string(), self.skipped.to_string());
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(name, dtype, shape, data)| {
                TensorView::new(*dtype, shape.clone(), data)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| bad(path, format!("tensor {name}: {e}")))
            })
            .collect::<Result<_>>()?;
        let bytes = safetensors::serialize(views, Some(header))
            .map_err(|e| bad(path, format!("serializing: {e}")))?;
        write_atomic(path, &bytes)
    }

    /// Replaces this optimizer's state with the one saved at `path`. The file must have been
    /// written with the same state precision; learning rates, groups, clipping and the device
    /// budget may differ. State is paged in at each parameter's next step.
    pub fn load_state(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|source| OptimError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(path, format!("not a safetensors file: {e}")))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(path, format!("not a safetensors file: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |name: &str| {
            meta.get(name).ok_or_else(|| {
                bad(
                    path,
                    format!("missing `{name}` in the header: not an optimizer state file"),
                )
            })
        };
        if field("format")? != FORMAT {
            return Err(bad(
                path,
                format!("format is `{}`, expected `{FORMAT}`", field("format")?),
            ));
        }
        if field("version")? != VERSION {
            return Err(bad(
                path,
                format!("unsupported version {}", field("version")?),
            ));
        }
        let saved: AdamWConfig = serde_json::from_str(field("config")?)
            .map_err(|e| bad(path, format!("config: {e}")))?;
        let ours = self.config();
        if saved.state_bits != ours.state_bits || saved.min_8bit_size != ours.min_8bit_size {
            return Err(bad(
                path,
                format!(
                    "state was saved as {} (min_8bit_size {}) but this optimizer is {} (min_8bit_size {})",
                    saved.state_bits, saved.min_8bit_size, ours.state_bits, ours.min_8bit_size
                ),
            ));
        }
        let number = |name: &str| -> Result<u64> {
            field(name)?
                .parse()
                .map_err(|e| bad(path, format!("`{name}`: {e}")))
        };
        let steps = number("steps")?;
        let skipped = number("skipped")?;
        let slots_meta: BTreeMap<String, SlotMeta> =
            serde_json::from_str(field("slots")?).map_err(|e| bad(path, format!("slots: {e}")))?;
        let mut slots = BTreeMap::new();
        for (key, m) in slots_meta {
            let get = |suffix: &str, dtype: Dtype, len: usize| -> Result<Vec<u8>> {
                let name = format!("{key}.{suffix}");
                let t = st
                    .tensor(&name)
                    .map_err(|_| bad(path, format!("missing tensor `{name}`")))?;
                if t.dtype() != dtype || t.shape() != [len] {
                    return Err(bad(
                        path,
                        format!(
                            "tensor `{name}` is {:?} {:?}, expected {dtype:?} [{len}]",
                            t.dtype(),
                            t.shape()
                        ),
                    ));
                }
                Ok(t.data().to_vec())
            };
            let floats = |b: Vec<u8>| -> Vec<f32> {
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            };
            let moments = if m.eight_bit {
                let n_pad = padded_len(m.numel);
                HostMoments::Q8 {
                    m: get("m", Dtype::U8, n_pad)?,
                    m_absmax: floats(get("m_absmax", Dtype::F32, n_pad / BLOCK)?),
                    v: get("v", Dtype::U8, n_pad)?,
                    v_absmax: floats(get("v_absmax", Dtype::F32, n_pad / BLOCK)?),
                }
            } else {
                HostMoments::F32 {
                    m: floats(get("m", Dtype::F32, m.numel)?),
                    v: floats(get("v", Dtype::F32, m.numel)?),
                }
            };
            slots.insert(
                key,
                Slot {
                    step: m.step,
                    numel: m.numel,
                    eight_bit: m.eight_bit,
                    place: Place::Host(moments),
                    last_used: 0,
                },
            );
        }
        self.slots = slots;
        self.steps = steps;
        self.skipped = skipped;
        Ok(())
    }
}

/// Header values are plain data; serializing them cannot fail.
fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Writes `bytes` to a temporary sibling of `path`, then renames it into place.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    medify_quant::atomic::write(path, bytes).map_err(|source| OptimError::Io {
        path: path.to_path_buf(),
        source,
    })
}
