//! bitsandbytes' 4-bit checkpoint layout in safetensors, as transformers' `save_pretrained`
//! writes it for a model loaded with `load_in_4bit=True`.
//!
//! For a quantized Linear `P` the file holds `P.weight` (packed u8 codes), `P.weight.absmax`,
//! `P.weight.quant_map`, `P.weight.quant_state.bitsandbytes__nf4` (UTF-8 JSON) and, with double
//! quantization, `P.weight.nested_absmax` and `P.weight.nested_quant_map`.
//!
//! ```
//! use medify_quant::{Packed4Bit, QuantConfig, bnb};
//! let w = Packed4Bit::quantize(&[0.25; 128], &[2, 64], &QuantConfig::default()).unwrap();
//! let tensors = bnb::to_tensors("model.layers.0.mlp.up_proj.weight", &w);
//! let bytes = bnb::serialize(&tensors).unwrap();
//! let back = bnb::read_all(&bytes, "in-memory").unwrap();
//! assert_eq!(back["model.layers.0.mlp.up_proj.weight"], w);
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView, View};

use crate::quant_state::{Absmax, NestedAbsmax, QuantState, QuantStateJson};
use crate::{Packed4Bit, QuantConfig, QuantError, QuantType};

const STATE_SUFFIX_NF4: &str = ".quant_state.bitsandbytes__nf4";
const STATE_SUFFIX_FP4: &str = ".quant_state.bitsandbytes__fp4";

/// One tensor to be written: dtype, shape and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedTensor {
    /// safetensors dtype.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Raw bytes.
    pub data: Vec<u8>,
}

impl OwnedTensor {
    /// An f32 tensor.
    pub fn f32(shape: Vec<usize>, values: &[f32]) -> Self {
        OwnedTensor {
            dtype: Dtype::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// A u8 tensor.
    pub fn u8(shape: Vec<usize>, values: Vec<u8>) -> Self {
        OwnedTensor {
            dtype: Dtype::U8,
            shape,
            data: values,
        }
    }
}

impl View for &OwnedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// The tensors bitsandbytes stores for one 4-bit weight named `weight_key` (`"P.weight"`).
pub fn to_tensors(weight_key: &str, w: &Packed4Bit) -> BTreeMap<String, OwnedTensor> {
    let mut out = BTreeMap::new();
    let st = &w.state;
    out.insert(
        weight_key.to_string(),
        OwnedTensor::u8(vec![w.data.len(), 1], w.data.clone()),
    );
    match &st.absmax {
        Absmax::Plain(a) => {
            out.insert(
                format!("{weight_key}.absmax"),
                OwnedTensor::f32(vec![a.len()], a),
            );
        }
        Absmax::Double(n) => {
            out.insert(
                format!("{weight_key}.absmax"),
                OwnedTensor::u8(vec![n.codes.len()], n.codes.clone()),
            );
            out.insert(
                format!("{weight_key}.nested_absmax"),
                OwnedTensor::f32(vec![n.nested_absmax.len()], &n.nested_absmax),
            );
            out.insert(
                format!("{weight_key}.nested_quant_map"),
                OwnedTensor::f32(vec![n.code.len()], &n.code),
            );
        }
    }
    out.insert(
        format!("{weight_key}.quant_map"),
        OwnedTensor::f32(vec![16], st.quant_type.code()),
    );
    let json = st.to_json().into_bytes();
    out.insert(
        format!("{weight_key}.quant_state.bitsandbytes__{}", st.quant_type),
        OwnedTensor::u8(vec![json.len()], json),
    );
    out
}

/// Serialises tensors to safetensors bytes.
pub fn serialize(tensors: &BTreeMap<String, OwnedTensor>) -> Result<Vec<u8>, QuantError> {
    safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), None).map_err(|e| {
        QuantError::Io {
            path: "<memory>".into(),
            reason: e.to_string(),
        }
    })
}

/// Writes tensors to `path` through a temporary file and a rename, so a crash never leaves a
/// half-written checkpoint. An existing file is kept unless `overwrite` is set.
pub fn save_file(
    path: &Path,
    tensors: &BTreeMap<String, OwnedTensor>,
    overwrite: bool,
) -> Result<(), QuantError> {
    let io = |reason: String| QuantError::Io {
        path: path.display().to_string(),
        reason,
    };
    if path.exists() && !overwrite {
        return Err(io("already exists; pass overwrite to replace it".into()));
    }
    let bytes = serialize(tensors)?;
    crate::atomic::write(path, &bytes).map_err(|e| io(e.to_string()))
}

/// Reads every 4-bit weight in a safetensors file, keyed by weight name (`"P.weight"`).
pub fn load_file(path: &Path) -> Result<BTreeMap<String, Packed4Bit>, QuantError> {
    let bytes = std::fs::read(path).map_err(|e| QuantError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    read_all(&bytes, &path.display().to_string())
}

/// Reads every 4-bit weight in safetensors bytes; `origin` names the source in errors.
pub fn read_all(bytes: &[u8], origin: &str) -> Result<BTreeMap<String, Packed4Bit>, QuantError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| QuantError::Io {
        path: origin.to_string(),
        reason: format!("not a safetensors file: {e}"),
    })?;
    let mut out = BTreeMap::new();
    for name in st.names() {
        let key = name
            .strip_suffix(STATE_SUFFIX_NF4)
            .or_else(|| name.strip_suffix(STATE_SUFFIX_FP4));
        if let Some(key) = key {
            out.insert(key.to_string(), read_weight(&st, key)?);
        }
    }
    Ok(out)
}

fn tensor<'a>(st: &SafeTensors<'a>, name: &str) -> Result<TensorView<'a>, QuantError> {
    st.tensor(name).map_err(|_| QuantError::InvalidQuantState {
        tensor: name.to_string(),
        reason: "tensor is missing from the file".into(),
    })
}

fn f32s(view: &TensorView<'_>, name: &str) -> Result<Vec<f32>, QuantError> {
    if view.dtype() != Dtype::F32 {
        return Err(QuantError::InvalidQuantState {
            tensor: name.to_string(),
            reason: format!("expected F32, found {:?}", view.dtype()),
        });
    }
    Ok(view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Reads the 4-bit weight `weight_key` (`"P.weight"`) and its quant state.
pub fn read_weight(st: &SafeTensors<'_>, weight_key: &str) -> Result<Packed4Bit, QuantError> {
    let (state_name, state_view) = [STATE_SUFFIX_NF4, STATE_SUFFIX_FP4]
        .iter()
        .find_map(|s| {
            let n = format!("{weight_key}{s}");
            st.tensor(&n).ok().map(|v| (n, v))
        })
        .ok_or_else(|| QuantError::InvalidQuantState {
            tensor: weight_key.to_string(),
            reason: "no quant_state.bitsandbytes__nf4/fp4 entry".into(),
        })?;
    let json = QuantStateJson::parse(state_view.data(), &state_name)?;
    let quant_type: QuantType = json.quant_type.parse()?;
    let bad = |reason: String| QuantError::InvalidQuantState {
        tensor: weight_key.to_string(),
        reason,
    };

    let absmax_name = format!("{weight_key}.absmax");
    let absmax_view = tensor(st, &absmax_name)?;
    let absmax = match json.nested_offset {
        Some(offset) => {
            if absmax_view.dtype() != Dtype::U8 {
                return Err(bad(format!(
                    "double-quantized absmax must be U8, found {:?}",
                    absmax_view.dtype()
                )));
            }
            let nested_name = format!("{weight_key}.nested_absmax");
            let map_name = format!("{weight_key}.nested_quant_map");
            Absmax::Double(NestedAbsmax {
                codes: absmax_view.data().to_vec(),
                nested_absmax: f32s(&tensor(st, &nested_name)?, &nested_name)?,
                code: f32s(&tensor(st, &map_name)?, &map_name)?,
                offset,
            })
        }
        None => Absmax::Plain(f32s(&absmax_view, &absmax_name)?),
    };

    let map_name = format!("{weight_key}.quant_map");
    if let Ok(view) = st.tensor(&map_name) {
        let map = f32s(&view, &map_name)?;
        if map.as_slice() != quant_type.code() {
            return Err(bad(format!(
                "quant_map differs from the standard {quant_type} table"
            )));
        }
    }

    // With a non-uint8 quant_storage the same bytes are stored viewed as another dtype.
    let packed = tensor(st, weight_key)?;
    let state = QuantState {
        quant_type,
        blocksize: json.blocksize,
        shape: json.shape.clone(),
        dtype: json.dtype_name().to_string(),
        absmax,
    };
    let mut data = packed.data().to_vec();
    let want = state.numel().div_ceil(2);
    if data.len() > want && data[want..].iter().all(|&b| b == 0) && packed.dtype() != Dtype::U8 {
        data.truncate(want);
    }
    Packed4Bit::from_parts(data, state, weight_key)
}

/// The `quantization_config` block of `config.json` for a model saved with this config.
///
/// ```
/// let q = medify_quant::bnb::quantization_config(&medify_quant::QuantConfig::default(), "float32");
/// assert_eq!(q["bnb_4bit_use_double_quant"], true);
/// ```
pub fn quantization_config(config: &QuantConfig, compute_dtype: &str) -> serde_json::Value {
    // The same fields transformers 5 writes for a 4-bit model.
    serde_json::json!({
        "_load_in_4bit": true,
        "_load_in_8bit": false,
        "bnb_4bit_compute_dtype": compute_dtype,
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": config.quant_type.as_str(),
        "bnb_4bit_use_double_quant": config.double_quant,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": null,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": true,
        "load_in_8bit": false,
        "quant_method": "bitsandbytes",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_plain_and_double() {
        for dq in [false, true] {
            let cfg = QuantConfig::default().with_double_quant(dq);
            let vals: Vec<f32> = (0..640).map(|i| ((i * 7919) % 113) as f32 - 56.0).collect();
            let w = Packed4Bit::quantize(&vals, &[10, 64], &cfg).unwrap();
            let bytes = serialize(&to_tensors("a.weight", &w)).unwrap();
            assert_eq!(read_all(&bytes, "mem").unwrap()["a.weight"], w);
        }
    }

    #[test]
    fn corrupt_inputs_name_the_tensor() {
        let w = Packed4Bit::quantize(&[1.0; 128], &[2, 64], &QuantConfig::default()).unwrap();
        let mut t = to_tensors("x.weight", &w);
        t.remove("x.weight.nested_absmax");
        let e = read_all(&serialize(&t).unwrap(), "m").unwrap_err();
        assert!(e.to_string().contains("x.weight.nested_absmax"), "{e}");

        let mut t = to_tensors("x.weight", &w);
        t.insert(
            "x.weight.quant_state.bitsandbytes__nf4".into(),
            OwnedTensor::u8(vec![3], b"{{{".to_vec()),
        );
        let e = read_all(&serialize(&t).unwrap(), "m").unwrap_err();
        assert!(e.to_string().contains("corrupt JSON"), "{e}");

        let mut t = to_tensors("x.weight", &w);
        t.insert("x.weight".into(), OwnedTensor::u8(vec![5, 1], vec![0; 5]));
        let e = read_all(&serialize(&t).unwrap(), "m").unwrap_err();
        assert!(
            matches!(
                e,
                QuantError::LengthMismatch {
                    expected: 64,
                    actual: 5,
                    ..
                }
            ),
            "{e}"
        );

        let e = read_all(b"garbage", "bad.safetensors").unwrap_err();
        assert!(e.to_string().starts_with("bad.safetensors"), "{e}");
    }

    #[test]
    fn save_refuses_to_overwrite() {
        let dir = std::env::temp_dir().join(format!("medify-quant-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        let w = Packed4Bit::quantize(&[1.0; 64], &[1, 64], &QuantConfig::default()).unwrap();
        let t = to_tensors("w", &w);
        save_file(&path, &t, true).unwrap();
        assert!(save_file(&path, &t, false).is_err());
        assert_eq!(load_file(&path).unwrap()["w"], w);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
