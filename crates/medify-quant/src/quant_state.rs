//! `QuantState`: everything besides the packed codes that is needed to decode a 4-bit tensor.

use serde::{Deserialize, Serialize};

use crate::codebook::{Grid8, dynamic_signed_map};
use crate::{QuantError, QuantType};

/// Blocksize of the nested (second-level) quantization of absmax values.
pub const NESTED_BLOCKSIZE: usize = 256;

/// Checks a 4-bit blocksize: a power of two in 32..=4096, as bitsandbytes accepts.
///
/// ```
/// assert!(medify_quant::check_blocksize(64).is_ok());
/// assert!(medify_quant::check_blocksize(48).is_err());
/// ```
pub fn check_blocksize(blocksize: usize) -> Result<(), QuantError> {
    if (32..=4096).contains(&blocksize) && blocksize.is_power_of_two() {
        Ok(())
    } else {
        Err(QuantError::InvalidBlocksize(blocksize))
    }
}

/// How the per-block scales (absmax) are stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    /// One f32 per block (4.5 bits per weight at blocksize 64).
    Plain(Vec<f32>),
    /// Double quantization: 8-bit codes of `absmax - offset` (4.127 bits per weight).
    Double(NestedAbsmax),
}

/// The double-quantized form of absmax values (QLoRA's "DQ").
#[derive(Debug, Clone, PartialEq)]
pub struct NestedAbsmax {
    /// One 8-bit code per 4-bit block, into `code`.
    pub codes: Vec<u8>,
    /// One f32 scale per `NESTED_BLOCKSIZE` codes.
    pub nested_absmax: Vec<f32>,
    /// The 256-entry code table (the signed dynamic map).
    pub code: Vec<f32>,
    /// The mean of the original absmax values, subtracted before quantizing.
    pub offset: f32,
}

impl NestedAbsmax {
    /// Double-quantizes absmax values the way bitsandbytes does (`compress_statistics=True`).
    pub fn quantize(absmax: &[f32]) -> NestedAbsmax {
        let offset = if absmax.is_empty() {
            0.0
        } else {
            torch_sum_f32(absmax) / absmax.len() as f32
        };
        let grid = Grid8::dynamic_signed();
        let mut codes = vec![0u8; absmax.len()];
        let mut nested_absmax = Vec::with_capacity(absmax.len().div_ceil(NESTED_BLOCKSIZE));
        for (chunk, out) in absmax
            .chunks(NESTED_BLOCKSIZE)
            .zip(codes.chunks_mut(NESTED_BLOCKSIZE))
        {
            let scale = chunk.iter().fold(0f32, |m, &a| m.max((a - offset).abs()));
            nested_absmax.push(scale);
            for (&a, q) in chunk.iter().zip(out.iter_mut()) {
                // The C library divides; an all-equal chunk (scale 0) maps to the zero code.
                let x = if scale > 0.0 {
                    (a - offset) / scale
                } else {
                    0.0
                };
                *q = grid.code_of(x);
            }
        }
        NestedAbsmax {
            codes,
            nested_absmax,
            code: dynamic_signed_map().to_vec(),
            offset,
        }
    }

    /// Decodes to one f32 per block: `code[q] * nested_absmax[i / 256] + offset`, unfused.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.codes.len()];
        decode_nested(
            &self.codes,
            &self.nested_absmax,
            &self.code,
            self.offset,
            &mut out,
        );
        out
    }
}

/// Sums f32 values in the order PyTorch's CPU kernel does (`absmax.mean()` is `sum / n`).
///
/// The offset of double quantization is a mean, and its last bit decides codes near midpoints,
/// so the summation order matters. PyTorch's AVX2 kernel (`SumKernel.cpp`, `cascade_sum`) reads
/// 8-lane vectors four at a time into four accumulators, folds them through up to four cascade
/// levels of 16 steps, adds leftover vectors, then the scalar tail and the 8 lanes in order.
/// This reproduces it for the single-threaded case (PyTorch splits tensors above 32768 elements
/// across threads, which makes its own result depend on the thread count).
// Index loops mirror `cascade_sum` line by line, which is what makes the order checkable.
#[allow(clippy::needless_range_loop)]
pub fn torch_sum_f32(xs: &[f32]) -> f32 {
    const W: usize = 8;
    const ILP: usize = 4;
    const LEVELS: usize = 4;
    type V = [f32; W];
    let add = |a: &mut V, b: &V| a.iter_mut().zip(b).for_each(|(x, y)| *x += *y);
    let vec_at = |i: usize| -> V { std::array::from_fn(|l| xs[i * W + l]) };
    let vec_size = xs.len() / W;
    let size_ilp = vec_size / ILP;
    let ceil_log2 = if size_ilp <= 1 {
        0
    } else {
        usize::BITS - (size_ilp - 1).leading_zeros()
    } as usize;
    let level_power = 4.max(ceil_log2 / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0f32; W]; ILP]; LEVELS];
    let mut i = 0;
    while i + level_step <= size_ilp {
        for _ in 0..level_step {
            for k in 0..ILP {
                add(&mut acc[0][k], &vec_at(i * ILP + k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            for k in 0..ILP {
                let lower = acc[j - 1][k];
                add(&mut acc[j][k], &lower);
                acc[j - 1][k] = [0.0; W];
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size_ilp {
        for k in 0..ILP {
            add(&mut acc[0][k], &vec_at(i * ILP + k));
        }
        i += 1;
    }
    for j in 1..LEVELS {
        for k in 0..ILP {
            let upper = acc[j][k];
            add(&mut acc[0][k], &upper);
        }
    }
    let mut partial = acc[0];
    for v in size_ilp * ILP..vec_size {
        add(&mut partial[0], &vec_at(v));
    }
    for k in 1..ILP {
        let p = partial[k];
        add(&mut partial[0], &p);
    }
    let mut total = 0f32;
    for &x in &xs[vec_size * W..] {
        total += x;
    }
    for lane in partial[0] {
        total += lane;
    }
    total
}

/// Decodes double-quantized absmax codes into `out` (one f32 per code), in parallel.
///
/// Multiply, then add: bitsandbytes does not fuse the two, and neither may we.
pub fn decode_nested(
    codes: &[u8],
    nested_absmax: &[f32],
    code: &[f32],
    offset: f32,
    out: &mut [f32],
) {
    use rayon::prelude::*;
    const CHUNKS_PER_TASK: usize = 64;
    // A fixed-size table: indexing by a u8 needs no bounds check.
    let mut table = [0f32; 256];
    table[..code.len().min(256)].copy_from_slice(&code[..code.len().min(256)]);
    out.par_chunks_mut(NESTED_BLOCKSIZE * CHUNKS_PER_TASK)
        .zip(codes.par_chunks(NESTED_BLOCKSIZE * CHUNKS_PER_TASK))
        .enumerate()
        .for_each(|(t, (out, codes))| {
            for (c, (out, codes)) in out
                .chunks_mut(NESTED_BLOCKSIZE)
                .zip(codes.chunks(NESTED_BLOCKSIZE))
                .enumerate()
            {
                let scale = nested_absmax[t * CHUNKS_PER_TASK + c];
                for (o, &q) in out.iter_mut().zip(codes) {
                    let scaled = table[q as usize] * scale;
                    *o = scaled + offset;
                }
            }
        });
}

impl Absmax {
    /// Number of blocks described.
    pub fn len(&self) -> usize {
        match self {
            Absmax::Plain(v) => v.len(),
            Absmax::Double(n) => n.codes.len(),
        }
    }

    /// True when no block is described.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One f32 scale per block.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Absmax::Plain(v) => v.clone(),
            Absmax::Double(n) => n.dequantize(),
        }
    }

    /// Bytes the statistics occupy.
    pub fn storage_bytes(&self) -> usize {
        match self {
            Absmax::Plain(v) => 4 * v.len(),
            Absmax::Double(n) => n.codes.len() + 4 * n.nested_absmax.len() + 4 * n.code.len() + 4,
        }
    }
}

/// Metadata and statistics of one 4-bit tensor (bitsandbytes' `QuantState`).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantState {
    /// NF4 or FP4.
    pub quant_type: QuantType,
    /// Elements per absmax block.
    pub blocksize: usize,
    /// Shape of the dense tensor, PyTorch layout (`[out, in]` for a Linear weight).
    pub shape: Vec<usize>,
    /// dtype of the dense tensor as PyTorch names it (`"float32"`, `"bfloat16"`, `"float16"`).
    pub dtype: String,
    /// Per-block scales.
    pub absmax: Absmax,
}

impl QuantState {
    /// Number of dense elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of absmax blocks.
    pub fn num_blocks(&self) -> usize {
        self.numel().div_ceil(self.blocksize)
    }

    /// Checks that the statistics fit the shape and blocksize.
    pub fn validate(&self, name: &str) -> Result<(), QuantError> {
        let bad = |reason: String| QuantError::InvalidQuantState {
            tensor: name.to_string(),
            reason,
        };
        check_blocksize(self.blocksize).map_err(|e| bad(e.to_string()))?;
        if self.absmax.len() != self.num_blocks() {
            return Err(bad(format!(
                "{} absmax values for {} elements at blocksize {} (expected {})",
                self.absmax.len(),
                self.numel(),
                self.blocksize,
                self.num_blocks()
            )));
        }
        if let Absmax::Double(n) = &self.absmax {
            let want = n.codes.len().div_ceil(NESTED_BLOCKSIZE);
            if n.nested_absmax.len() != want {
                return Err(bad(format!(
                    "{} nested_absmax values for {} codes (expected {want})",
                    n.nested_absmax.len(),
                    n.codes.len()
                )));
            }
            if n.code.len() != 256 {
                return Err(bad(format!(
                    "nested_quant_map has {} entries, expected 256",
                    n.code.len()
                )));
            }
        }
        match self.dtype.as_str() {
            "float32" | "float16" | "bfloat16" => Ok(()),
            other => Err(bad(format!("unsupported dtype {other:?}"))),
        }
    }

    /// The quant_state JSON that transformers stores next to the packed weight.
    pub fn to_json(&self) -> String {
        let nested = match &self.absmax {
            Absmax::Double(n) => Some(n),
            Absmax::Plain(_) => None,
        };
        let json = QuantStateJson {
            quant_type: self.quant_type.as_str().to_string(),
            blocksize: self.blocksize,
            dtype: self.dtype.clone(),
            shape: self.shape.clone(),
            nested_blocksize: nested.map(|_| NESTED_BLOCKSIZE),
            nested_dtype: nested.map(|_| "float32".to_string()),
            nested_offset: nested.map(|n| n.offset),
        };
        serde_json::to_string(&json).expect("quant state serialises")
    }
}

/// The JSON document of `P.weight.quant_state.bitsandbytes__nf4`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QuantStateJson {
    /// `"nf4"` or `"fp4"`.
    pub quant_type: String,
    /// 4-bit blocksize.
    pub blocksize: usize,
    /// Dense dtype, e.g. `"float32"` or `"torch.bfloat16"`.
    pub dtype: String,
    /// Dense shape.
    pub shape: Vec<usize>,
    /// Present with double quantization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested_blocksize: Option<usize>,
    /// Present with double quantization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested_dtype: Option<String>,
    /// Present with double quantization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested_offset: Option<f32>,
}

impl QuantStateJson {
    /// Parses and checks the JSON; `tensor` names the weight in errors.
    pub fn parse(bytes: &[u8], tensor: &str) -> Result<QuantStateJson, QuantError> {
        let bad = |reason: String| QuantError::InvalidQuantState {
            tensor: tensor.to_string(),
            reason,
        };
        let json: QuantStateJson =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("corrupt JSON: {e}")))?;
        json.quant_type
            .parse::<QuantType>()
            .map_err(|e| bad(e.to_string()))?;
        check_blocksize(json.blocksize).map_err(|e| bad(e.to_string()))?;
        if let Some(nb) = json.nested_blocksize
            && nb != NESTED_BLOCKSIZE
        {
            return Err(bad(format!(
                "nested_blocksize {nb} is not supported (expected 256)"
            )));
        }
        if json.nested_blocksize.is_some() != json.nested_offset.is_some() {
            return Err(bad(
                "nested_blocksize and nested_offset must come together".into()
            ));
        }
        Ok(json)
    }

    /// The dtype with any `torch.` prefix removed.
    pub fn dtype_name(&self) -> &str {
        self.dtype.strip_prefix("torch.").unwrap_or(&self.dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_blocksizes() {
        for b in [0, 16, 48, 8192] {
            assert!(matches!(check_blocksize(b), Err(QuantError::InvalidBlocksize(x)) if x == b));
        }
    }

    #[test]
    fn json_round_trip_and_errors() {
        let s = br#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [4, 128],
            "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.13}"#;
        let j = QuantStateJson::parse(s, "w").unwrap();
        assert_eq!(j.shape, vec![4, 128]);
        let err = QuantStateJson::parse(b"{not json", "layers.0.q_proj").unwrap_err();
        assert!(err.to_string().contains("layers.0.q_proj"), "{err}");
        let err = QuantStateJson::parse(
            br#"{"quant_type": "int3", "blocksize": 64, "dtype": "float32", "shape": [1]}"#,
            "w",
        )
        .unwrap_err();
        assert!(err.to_string().contains("int3"), "{err}");
        let err = QuantStateJson::parse(
            br#"{"quant_type": "nf4", "blocksize": 63, "dtype": "float32", "shape": [1]}"#,
            "w",
        )
        .unwrap_err();
        assert!(err.to_string().contains("blocksize 63"), "{err}");
    }

    #[test]
    fn torch_sum_order_differs_from_naive_where_it_matters() {
        let xs: Vec<f32> = (0..1000).map(|i| 0.1 + (i as f32) * 1e-4).collect();
        let naive = xs.iter().fold(0f32, |a, &b| a + b);
        let exact: f64 = xs.iter().map(|&x| x as f64).sum();
        let t = torch_sum_f32(&xs);
        assert!((t as f64 - exact).abs() <= (naive as f64 - exact).abs());
        assert_eq!(torch_sum_f32(&[1.0, 2.0, 3.0]), 6.0);
        assert_eq!(torch_sum_f32(&[]), 0.0);
    }

    #[test]
    fn nested_zero_spread_decodes_to_offset() {
        let n = NestedAbsmax::quantize(&[0.5; 10]);
        assert_eq!(n.dequantize(), vec![0.5; 10]);
    }
}
