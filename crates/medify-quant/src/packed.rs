//! The host codec: blockwise 4-bit quantization, bit-exact with bitsandbytes 0.50.

use rayon::prelude::*;

use crate::codebook::Buckets;
use crate::quant_state::{Absmax, NestedAbsmax, QuantState, check_blocksize};
use crate::{QuantError, QuantType};

/// How to quantize: data type, blocksize and whether to double-quantize absmax.
///
/// The default is the QLoRA recipe: NF4, blocksize 64, double quantization.
///
/// ```
/// use medify_quant::{QuantConfig, QuantType};
/// let cfg = QuantConfig::default();
/// assert_eq!((cfg.quant_type, cfg.blocksize, cfg.double_quant), (QuantType::Nf4, 64, true));
/// let fp4 = QuantConfig::default().with_quant_type(QuantType::Fp4).with_blocksize(128);
/// assert_eq!(fp4.blocksize, 128);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantConfig {
    /// NF4 or FP4.
    pub quant_type: QuantType,
    /// Elements per absmax block (power of two, 32..=4096).
    pub blocksize: usize,
    /// Quantize the absmax values again with 8-bit codes (QLoRA's double quantization).
    pub double_quant: bool,
}

impl Default for QuantConfig {
    fn default() -> Self {
        QuantConfig {
            quant_type: QuantType::Nf4,
            blocksize: 64,
            double_quant: true,
        }
    }
}

impl QuantConfig {
    /// Same config, other data type.
    pub fn with_quant_type(mut self, quant_type: QuantType) -> Self {
        self.quant_type = quant_type;
        self
    }
    /// Same config, other blocksize.
    pub fn with_blocksize(mut self, blocksize: usize) -> Self {
        self.blocksize = blocksize;
        self
    }
    /// Same config, double quantization on or off.
    pub fn with_double_quant(mut self, double_quant: bool) -> Self {
        self.double_quant = double_quant;
        self
    }
}

/// A 4-bit tensor in host memory: packed codes (two per byte, first element in the high
/// nibble) plus the [`QuantState`] that decodes them. The byte layout is bitsandbytes' own.
///
/// ```
/// use medify_quant::{Packed4Bit, QuantConfig};
/// let w = Packed4Bit::quantize(&[1.0, -1.0, 0.0, 0.5], &[1, 4], &QuantConfig::default()
///     .with_double_quant(false)).unwrap();
/// assert_eq!(w.data, vec![0xF0, 0x7C]);
/// assert_eq!(w.dequantize()[..2], [1.0, -1.0]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Packed4Bit {
    /// `(numel + 1) / 2` bytes of packed codes.
    pub data: Vec<u8>,
    /// Shape, data type, blocksize and scales.
    pub state: QuantState,
}

/// Blocks handled by one parallel task, sized so a task covers ~16k values.
fn blocks_per_task(blocksize: usize) -> usize {
    (16_384 / blocksize).max(1)
}

impl Packed4Bit {
    /// Quantizes `values` (row-major, PyTorch layout) of the given shape.
    pub fn quantize(
        values: &[f32],
        shape: &[usize],
        config: &QuantConfig,
    ) -> Result<Packed4Bit, QuantError> {
        check_blocksize(config.blocksize)?;
        let expected: usize = shape.iter().product();
        if expected != values.len() {
            return Err(QuantError::ShapeMismatch {
                shape: shape.to_vec(),
                expected,
                actual: values.len(),
            });
        }
        let (data, absmax) = quantize_blocks(values, config.blocksize, config.quant_type);
        // A NaN or infinity makes its block's absmax non-finite (see `abs_max`); only then pay
        // for a scan to report where it is.
        if absmax.iter().any(|a| !a.is_finite())
            && let Some(index) = values.iter().position(|v| !v.is_finite())
        {
            return Err(QuantError::NonFinite {
                index,
                value: values[index],
            });
        }
        let absmax = if config.double_quant {
            Absmax::Double(NestedAbsmax::quantize(&absmax))
        } else {
            Absmax::Plain(absmax)
        };
        Ok(Packed4Bit {
            data,
            state: QuantState {
                quant_type: config.quant_type,
                blocksize: config.blocksize,
                shape: shape.to_vec(),
                dtype: "float32".to_string(),
                absmax,
            },
        })
    }

    /// Builds a tensor from parts read elsewhere, checking that they fit together.
    pub fn from_parts(
        data: Vec<u8>,
        state: QuantState,
        name: &str,
    ) -> Result<Packed4Bit, QuantError> {
        state.validate(name)?;
        let expected = state.numel().div_ceil(2);
        if data.len() != expected {
            return Err(QuantError::LengthMismatch {
                what: format!("packed weight {name:?}"),
                expected,
                actual: data.len(),
            });
        }
        Ok(Packed4Bit { data, state })
    }

    /// Number of dense elements.
    pub fn numel(&self) -> usize {
        self.state.numel()
    }

    /// Decodes to dense f32 values.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.numel()];
        self.dequantize_into(&mut out);
        out
    }

    /// Decodes into a caller-provided buffer of `numel()` values.
    pub fn dequantize_into(&self, out: &mut [f32]) {
        let absmax = self.state.absmax.to_f32();
        dequantize_blocks(
            &self.data,
            &absmax,
            self.state.blocksize,
            self.state.quant_type,
            out,
        );
    }

    /// Bytes of packed codes plus statistics.
    pub fn storage_bytes(&self) -> usize {
        self.data.len() + self.state.absmax.storage_bytes()
    }

    /// Storage cost in bits per dense element, statistics included.
    pub fn bits_per_weight(&self) -> f64 {
        8.0 * self.storage_bytes() as f64 / self.numel().max(1) as f64
    }
}

/// The asymptotic storage cost of a configuration in bits per weight.
///
/// ```
/// use medify_quant::{QuantConfig, bits_per_weight};
/// assert!((bits_per_weight(&QuantConfig::default()) - 4.127).abs() < 1e-3);
/// assert_eq!(bits_per_weight(&QuantConfig::default().with_double_quant(false)), 4.5);
/// ```
pub fn bits_per_weight(config: &QuantConfig) -> f64 {
    let b = config.blocksize as f64;
    if config.double_quant {
        4.0 + 8.0 / b + 32.0 / (b * crate::NESTED_BLOCKSIZE as f64)
    } else {
        4.0 + 32.0 / b
    }
}

/// Quantizes flat values block by block; returns packed bytes and raw absmax per block.
///
/// Full blocks scale by `x * (1 / absmax)` and store the raw absmax; the partial last block
/// divides by `max(absmax, 1e-38)` and stores that, as bitsandbytes' default kernel does.
pub fn quantize_blocks(
    values: &[f32],
    blocksize: usize,
    quant_type: QuantType,
) -> (Vec<u8>, Vec<f32>) {
    let n = values.len();
    let mut data = vec![0u8; n.div_ceil(2)];
    let mut absmax = vec![0f32; n.div_ceil(blocksize)];
    let per_task = blocks_per_task(blocksize);
    let buckets = quant_type.buckets();
    let pad = quant_type.zero_code();
    values
        .par_chunks(blocksize * per_task)
        .zip(data.par_chunks_mut(blocksize * per_task / 2))
        .zip(absmax.par_chunks_mut(per_task))
        .for_each(|((vals, out), scales)| {
            let mut scratch = vec![0u8; blocksize];
            for ((block, bytes), scale) in vals
                .chunks(blocksize)
                .zip(out.chunks_mut(blocksize / 2))
                .zip(scales.iter_mut())
            {
                *scale = quantize_block(
                    block,
                    blocksize,
                    buckets,
                    quant_type,
                    pad,
                    &mut scratch,
                    bytes,
                );
            }
        });
    (data, absmax)
}

fn quantize_block(
    block: &[f32],
    blocksize: usize,
    buckets: &Buckets,
    quant_type: QuantType,
    pad: u8,
    scratch: &mut [u8],
    out: &mut [u8],
) -> f32 {
    let amax = abs_max(block);
    let codes = &mut scratch[..block.len()];
    if block.len() == blocksize {
        let inv = 1.0 / amax.max(1e-38);
        slots(block, |v| v * inv, &buckets.midpoints, codes);
    } else {
        let am = amax.max(1e-38);
        slots(block, |v| v / am, &buckets.midpoints, codes);
    }
    if quant_type != QuantType::Nf4 {
        for c in codes.iter_mut() {
            *c = buckets.order[*c as usize];
        }
    }
    for (byte, pair) in out.iter_mut().zip(codes.chunks(2)) {
        let lo = if pair.len() == 2 { pair[1] } else { pad };
        *byte = (pair[0] << 4) | lo;
    }
    if block.len() == blocksize || amax.is_nan() {
        amax
    } else {
        amax.max(1e-38)
    }
}

/// `max |x|` with eight independent lanes (a single running max is a serial dependency
/// chain). Returns NaN if the block holds a NaN, so callers can tell bad input cheaply.
#[inline(always)]
fn abs_max(block: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut nan = [false; 8];
    let mut chunks = block.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            lanes[l] = lanes[l].max(c[l].abs());
            nan[l] |= c[l].is_nan();
        }
    }
    let tail = chunks.remainder();
    if nan.iter().any(|&n| n) || tail.iter().any(|v| v.is_nan()) {
        return f32::NAN;
    }
    let tail = tail.iter().fold(0f32, |m, &v| m.max(v.abs()));
    lanes.iter().fold(tail, |m, &v| m.max(v))
}

/// Sorted-slot index of each scaled value: the number of midpoints below it. Written over
/// fixed 8-lane chunks so the compiler turns the 15 compares into vector compares.
#[inline(always)]
fn slots(block: &[f32], scale: impl Fn(f32) -> f32, midpoints: &[f32; 15], out: &mut [u8]) {
    let mut chunks = block.chunks_exact(8);
    let mut outs = out.chunks_exact_mut(8);
    for (v8, o8) in (&mut chunks).zip(&mut outs) {
        let s: [f32; 8] = std::array::from_fn(|l| scale(v8[l]));
        let mut k = [0u32; 8];
        for &m in midpoints {
            for l in 0..8 {
                k[l] += (s[l] > m) as u32;
            }
        }
        for l in 0..8 {
            o8[l] = k[l] as u8;
        }
    }
    for (&v, o) in chunks.remainder().iter().zip(outs.into_remainder()) {
        let s = scale(v);
        *o = midpoints.iter().map(|&m| (s > m) as u8).sum();
    }
}

/// Decodes packed bytes with one f32 scale per block into `out` (`out.len()` values).
pub fn dequantize_blocks(
    data: &[u8],
    absmax: &[f32],
    blocksize: usize,
    quant_type: QuantType,
    out: &mut [f32],
) {
    let code = quant_type.code();
    let per_task = blocks_per_task(blocksize);
    out.par_chunks_mut(blocksize * per_task)
        .zip(data.par_chunks(blocksize * per_task / 2))
        .zip(absmax.par_chunks(per_task))
        .for_each(|((out, bytes), scales)| {
            for ((block, bytes), &scale) in out
                .chunks_mut(blocksize)
                .zip(bytes.chunks(blocksize / 2))
                .zip(scales)
            {
                for (pair, &b) in block.chunks_mut(2).zip(bytes) {
                    pair[0] = code[(b >> 4) as usize] * scale;
                    if let Some(lo) = pair.get_mut(1) {
                        *lo = code[(b & 15) as usize] * scale;
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_zero_block_decodes_to_zero() {
        let w = Packed4Bit::quantize(&[0.0; 128], &[2, 64], &QuantConfig::default()).unwrap();
        assert!(w.data.iter().all(|&b| b == 0x77));
        assert!(w.dequantize().iter().all(|&v| v == 0.0));
        let f = QuantConfig::default().with_quant_type(QuantType::Fp4);
        let w = Packed4Bit::quantize(&[0.0; 70], &[70], &f).unwrap();
        assert!(w.dequantize().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn errors_name_the_problem() {
        let cfg = QuantConfig::default();
        let e = Packed4Bit::quantize(&[1.0; 5], &[2, 3], &cfg).unwrap_err();
        assert!(matches!(
            e,
            QuantError::ShapeMismatch {
                expected: 6,
                actual: 5,
                ..
            }
        ));
        let e = Packed4Bit::quantize(&[1.0, f32::NAN], &[2], &cfg).unwrap_err();
        assert!(matches!(e, QuantError::NonFinite { index: 1, .. }));
        let mut big = vec![0.5f32; 200];
        big[130] = f32::NEG_INFINITY;
        let e = Packed4Bit::quantize(&big, &[200], &cfg).unwrap_err();
        assert!(matches!(e, QuantError::NonFinite { index: 130, .. }), "{e}");
        big[130] = 0.5;
        big[7] = f32::NAN;
        let e = Packed4Bit::quantize(&big, &[200], &cfg).unwrap_err();
        assert!(matches!(e, QuantError::NonFinite { index: 7, .. }), "{e}");
        let e = Packed4Bit::quantize(&[1.0; 4], &[4], &cfg.with_blocksize(100)).unwrap_err();
        assert!(matches!(e, QuantError::InvalidBlocksize(100)));
    }

    #[test]
    fn cost_accounting_matches_the_paper() {
        let numel = 1024 * 1024;
        let w = Packed4Bit::quantize(&vec![0.5; numel], &[1024, 1024], &QuantConfig::default())
            .unwrap();
        // 4 + 8/64 + 32/(64*256) per weight, plus the 256-entry map and the offset once.
        let fixed = (256.0 * 32.0 + 32.0) / numel as f64;
        assert!((w.bits_per_weight() - (4.0 + 0.125 + 32.0 / 16384.0 + fixed)).abs() < 1e-12);
        assert!((bits_per_weight(&QuantConfig::default()) - 4.127).abs() < 1e-3);
        let plain = QuantConfig::default().with_double_quant(false);
        let w = Packed4Bit::quantize(&vec![0.5; 4096], &[64, 64], &plain).unwrap();
        assert_eq!(w.bits_per_weight(), 4.5);
    }

    #[test]
    fn odd_length_pads_with_the_zero_code() {
        let cfg = QuantConfig::default().with_double_quant(false);
        let w = Packed4Bit::quantize(&[1.0, -1.0, 1.0], &[3], &cfg).unwrap();
        assert_eq!(w.data, vec![0xF0, 0xF7]);
    }
}
