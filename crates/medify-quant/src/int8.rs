//! LLM.int8 weights as bitsandbytes' `Linear8bitLt` holds and transformers saves them
//! (`load_in_8bit=True`): int8 codes `[out, in]` (`weight`) and one f32 absmax per row (`SCB`).
//!
//! Quantizing is bit for bit bitsandbytes' `int8_vectorwise_quant` as `Int8Params` calls it on
//! the CPU: the weight cast to fp16, each row's fp16 absmax, then
//! `round_half_even(x * ((1 / absmax) * 127))` in f32 (PyTorch's `127.0 / t` is a reciprocal
//! and a multiply). Decoding is its training path
//! (`MatMul8bitFp`): `code * (SCB * (1 / 127))` in f32, so a matmul over the decoded weight is the
//! float matmul bitsandbytes runs on the CPU.

use std::collections::BTreeMap;

use half::f16;
use safetensors::{Dtype, SafeTensors};

use crate::bnb::OwnedTensor;
use crate::error::QuantError;

/// The `SCB` companion's suffix in a transformers 8-bit checkpoint (`P.SCB` beside `P.weight`).
pub const SCB_SUFFIX: &str = ".SCB";

/// The `weight_format` companion's suffix: a scalar u8, 0 for bitsandbytes' row-major layout
/// (the only one it writes since 0.45; the GPU tile layouts of older versions are refused).
pub const WEIGHT_FORMAT_SUFFIX: &str = ".weight_format";

/// A frozen int8 weight on the host: codes and per-row absmax.
///
/// ```
/// use medify_quant::Int8Weight;
/// let w = [0.5f32, -1.0, 0.25, 0.0, 2.0, 1.0];
/// let q = Int8Weight::quantize(&w, [2, 3]).unwrap();
/// assert_eq!(q.codes(), &[64, -127, 32, 0, 127, 64]);
/// assert_eq!(q.scb(), &[1.0, 2.0]);
/// assert_eq!(q.dequantize()[1], -1.0);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Weight {
    codes: Vec<i8>,
    scb: Vec<f32>,
    shape: [usize; 2],
}

impl Int8Weight {
    /// Row-wise absmax int8 quantization of a row-major `[rows, cols]` weight, exactly as
    /// bitsandbytes (see the module docs). Values beyond fp16's range and NaN are refused; a row
    /// of zeros gets zero codes and `SCB` 0, as bitsandbytes writes it.
    pub fn quantize(values: &[f32], shape: [usize; 2]) -> Result<Int8Weight, QuantError> {
        let [rows, cols] = shape;
        if values.len() != rows * cols {
            return Err(QuantError::ShapeMismatch {
                shape: shape.to_vec(),
                expected: rows * cols,
                actual: values.len(),
            });
        }
        let mut codes = vec![0i8; values.len()];
        let mut scb = vec![0f32; rows];
        for r in 0..rows {
            let row = &values[r * cols..(r + 1) * cols];
            let mut half = Vec::with_capacity(cols);
            for (j, &v) in row.iter().enumerate() {
                let h = f16::from_f32(v).to_f32();
                if !h.is_finite() {
                    return Err(QuantError::NonFinite {
                        index: r * cols + j,
                        value: v,
                    });
                }
                half.push(h);
            }
            let absmax = half.iter().fold(0f32, |m, v| m.max(v.abs()));
            scb[r] = absmax;
            if absmax == 0.0 {
                continue;
            }
            // PyTorch evaluates `127.0 / row_stats` as `reciprocal(row_stats) * 127`: two
            // roundings, which decide ties such as x * scale = -63.499996 (→ -63).
            let scale = (1.0f32 / absmax) * 127.0f32;
            for (c, h) in codes[r * cols..(r + 1) * cols].iter_mut().zip(&half) {
                *c = (h * scale).round_ties_even() as i8;
            }
        }
        Ok(Int8Weight { codes, scb, shape })
    }

    /// A weight from its parts (e.g. read from a checkpoint), checked for consistent lengths and
    /// finite, non-negative row absmax.
    pub fn from_parts(
        codes: Vec<i8>,
        scb: Vec<f32>,
        shape: [usize; 2],
    ) -> Result<Int8Weight, QuantError> {
        let [rows, cols] = shape;
        if codes.len() != rows * cols {
            return Err(QuantError::LengthMismatch {
                what: "int8 weight".into(),
                expected: rows * cols,
                actual: codes.len(),
            });
        }
        if scb.len() != rows {
            return Err(QuantError::LengthMismatch {
                what: "SCB".into(),
                expected: rows,
                actual: scb.len(),
            });
        }
        if let Some((i, &v)) = scb
            .iter()
            .enumerate()
            .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
        {
            return Err(QuantError::NonFinite { index: i, value: v });
        }
        Ok(Int8Weight { codes, scb, shape })
    }

    /// `[rows, cols]` (PyTorch's `[out, in]`).
    pub fn shape(&self) -> [usize; 2] {
        self.shape
    }

    /// The codes, row-major.
    pub fn codes(&self) -> &[i8] {
        &self.codes
    }

    /// Each row's absmax (bitsandbytes' `SCB`).
    pub fn scb(&self) -> &[f32] {
        &self.scb
    }

    /// Each row's decoding scale, `SCB * (1 / 127)` in f32, as bitsandbytes computes it.
    pub fn row_scales(&self) -> Vec<f32> {
        self.scb.iter().map(|s| s * (1.0f32 / 127.0)).collect()
    }

    /// The dense weight: `code * row_scale`.
    pub fn dequantize(&self) -> Vec<f32> {
        let cols = self.shape[1];
        let scales = self.row_scales();
        self.codes
            .iter()
            .enumerate()
            .map(|(i, &c)| c as f32 * scales[i / cols.max(1)])
            .collect()
    }

    /// Bytes the weight takes: one per code plus four per row.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.scb.len()
    }

    /// The tensors transformers saves for the weight `weight_key` (`"P.weight"`): the int8
    /// codes under `weight_key`, `SCB` under `"P.SCB"` and the row layout's `weight_format` 0.
    pub fn to_tensors(&self, weight_key: &str) -> BTreeMap<String, OwnedTensor> {
        let prefix = weight_key.strip_suffix(".weight").unwrap_or(weight_key);
        let mut out = BTreeMap::new();
        out.insert(
            weight_key.to_string(),
            OwnedTensor {
                dtype: Dtype::I8,
                shape: self.shape.to_vec(),
                data: bytemuck::cast_slice(&self.codes).to_vec(),
            },
        );
        out.insert(
            format!("{prefix}{SCB_SUFFIX}"),
            OwnedTensor::f32(vec![self.shape[0]], &self.scb),
        );
        out.insert(
            format!("{prefix}{WEIGHT_FORMAT_SUFFIX}"),
            OwnedTensor::u8(vec![], vec![0]),
        );
        out
    }

    /// Reads the 8-bit weight `weight_key` and its `SCB` from a transformers checkpoint.
    pub fn read(st: &SafeTensors<'_>, weight_key: &str) -> Result<Int8Weight, QuantError> {
        let bad = |msg: String| QuantError::Format(format!("{weight_key}: {msg}"));
        let w = st.tensor(weight_key).map_err(|e| bad(e.to_string()))?;
        if w.dtype() != Dtype::I8 {
            return Err(bad(format!("8-bit weight must be I8, is {:?}", w.dtype())));
        }
        let shape: [usize; 2] = w
            .shape()
            .try_into()
            .map_err(|_| bad(format!("8-bit weight must be 2-D, is {:?}", w.shape())))?;
        let prefix = weight_key.strip_suffix(".weight").unwrap_or(weight_key);
        let scb_key = format!("{prefix}{SCB_SUFFIX}");
        let s = st
            .tensor(&scb_key)
            .map_err(|e| bad(format!("{scb_key}: {e}")))?;
        if s.dtype() != Dtype::F32 {
            return Err(bad(format!("{scb_key} must be F32, is {:?}", s.dtype())));
        }
        let scb: Vec<f32> = s
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let format_key = format!("{prefix}{WEIGHT_FORMAT_SUFFIX}");
        if let Ok(f) = st.tensor(&format_key)
            && f.data() != [0]
        {
            return Err(bad(format!(
                "{format_key} is {:?}: only bitsandbytes' row-major layout (0) is read; \
                 re-save the model with bitsandbytes 0.45 or newer",
                f.data()
            )));
        }
        let codes: Vec<i8> = bytemuck::cast_slice(w.data()).to_vec();
        Int8Weight::from_parts(codes, scb, shape).map_err(|e| bad(e.to_string()))
    }
}

/// The `quantization_config` transformers writes into `config.json` for `load_in_8bit`.
pub fn int8_quantization_config() -> serde_json::Value {
    serde_json::json!({
        "_load_in_4bit": false,
        "_load_in_8bit": true,
        "bnb_4bit_compute_dtype": "float32",
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": "fp4",
        "bnb_4bit_use_double_quant": false,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": null,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": false,
        "load_in_8bit": true,
        "quant_method": "bitsandbytes"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_bitsandbytes_on_its_edge_cases() {
        // bitsandbytes 0.50.2, int8_vectorwise_quant on these fp16 rows (probe in
        // fixtures/scripts/make_transformers_int8.py's docstring conditions).
        let rows = [
            [0.0f32, 0.0, 0.0, 0.0],
            [1.0, -2.0, 0.5, 0.25],
            [1e-8, 2e-8, -3e-8, 0.0],
            [0.5 / 127.0, 1.5 / 127.0, 2.5 / 127.0, 1.0],
        ];
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let q = Int8Weight::quantize(&flat, [4, 4]).unwrap();
        assert_eq!(
            q.codes(),
            &[0, 0, 0, 0, 64, -127, 32, 16, 0, 0, -127, 0, 0, 1, 2, 127]
        );
        assert_eq!(q.scb()[..2], [0.0, 2.0]);
        assert_eq!(q.scb()[2], f16::from_f32(3e-8).to_f32());
        assert_eq!(q.scb()[3], 1.0);
        assert!(q.dequantize()[..4].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(matches!(
            Int8Weight::quantize(&[1.0, 7e4], [1, 2]),
            Err(QuantError::NonFinite { index: 1, .. })
        ));
        assert!(Int8Weight::quantize(&[1.0], [1, 2]).is_err());
        assert!(Int8Weight::from_parts(vec![1, 2], vec![1.0], [1, 3]).is_err());
        assert!(Int8Weight::from_parts(vec![1, 2], vec![f32::NAN], [1, 2]).is_err());
        assert!(Int8Weight::from_parts(vec![1, 2], vec![1.0, 1.0], [1, 2]).is_err());
    }

    #[test]
    fn tensors_round_trip() {
        let q = Int8Weight::quantize(&[0.5, -1.0, 0.25, 3.0], [2, 2]).unwrap();
        let tensors = q.to_tensors("model.layers.0.mlp.up_proj.weight");
        let bytes = crate::bnb::serialize(&tensors).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert!(st.tensor("model.layers.0.mlp.up_proj.SCB").is_ok());
        let back = Int8Weight::read(&st, "model.layers.0.mlp.up_proj.weight").unwrap();
        assert_eq!(back, q);
    }
}
