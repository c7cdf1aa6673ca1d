//! Blockwise 8-bit storage of optimizer moments, on any burn device.
//!
//! Each block of 256 values keeps one f32 absmax; each value keeps the index of the nearest
//! entry of a bitsandbytes dynamic map (signed for m, unsigned for v) after dividing by the
//! absmax. On the device three 8-bit codes share one integer word (c0 + 256·c1 + 65536·c2), so
//! the packing needs neither u8 tensors nor bitwise ops, which not every backend has.

use burn::tensor::Device;
use burn::tensor::{Int, Tensor, TensorData};

/// Values per absmax block.
pub const BLOCK: usize = 256;

/// Codes per device word.
const PER_WORD: usize = 3;

/// A code table and its decision thresholds, uploaded to one device.
#[derive(Debug, Clone)]
pub(crate) struct DeviceMap {
    values: Tensor<1>,
    /// `thresholds[k]` is the midpoint between codes k-1 and k; `thresholds[0]` is -f32::MAX.
    thresholds: Tensor<1>,
}

impl DeviceMap {
    pub(crate) fn new(map: &[f32; 256], device: &Device) -> Self {
        let mut th = [0f32; 256];
        th[0] = -f32::MAX;
        for k in 1..256 {
            th[k] = (map[k - 1] + map[k]) / 2.0;
        }
        DeviceMap {
            values: Tensor::from_data(TensorData::new(map.to_vec(), [256]), device),
            thresholds: Tensor::from_data(TensorData::new(th.to_vec(), [256]), device),
        }
    }

    /// Index of the nearest code of each value (ties go up), by an 8-round binary search.
    pub(crate) fn nearest(&self, x: Tensor<1>) -> Tensor<1, Int> {
        let mut idx = Tensor::<1, Int>::zeros(x.shape(), &x.device());
        for step in [128, 64, 32, 16, 8, 4, 2, 1] {
            let cand = idx.clone().add_scalar(step);
            let threshold = self.thresholds.clone().select(0, cand.clone());
            idx = idx.mask_where(x.clone().greater_equal(threshold), cand);
        }
        idx
    }
}

/// Padded length: a whole number of blocks.
pub(crate) fn padded_len(n: usize) -> usize {
    n.div_ceil(BLOCK) * BLOCK
}

/// Device words holding `n_pad` codes.
pub(crate) fn word_count(n_pad: usize) -> usize {
    n_pad.div_ceil(PER_WORD)
}

/// Decodes `n` values from packed codes and per-block absmax.
pub(crate) fn dequantize(
    words: &Tensor<1, Int>,
    absmax: &Tensor<1>,
    map: &DeviceMap,
    n: usize,
) -> Tensor<1> {
    let n_pad = padded_len(n);
    let codes = unpack(words.clone(), n_pad);
    let values = map.values.clone().select(0, codes);
    let blocks = n_pad / BLOCK;
    let scaled = values.reshape([blocks, BLOCK]) * absmax.clone().reshape([blocks, 1]);
    scaled.reshape([n_pad]).slice(0..n)
}

/// Encodes `x` (n values) as packed codes and per-block absmax.
pub(crate) fn quantize(x: Tensor<1>, map: &DeviceMap) -> (Tensor<1, Int>, Tensor<1>) {
    let n = x.dims()[0];
    let n_pad = padded_len(n);
    let device = x.device();
    let x = if n_pad > n {
        Tensor::cat(vec![x, Tensor::zeros([n_pad - n], &device)], 0)
    } else {
        x
    };
    let blocks = n_pad / BLOCK;
    let x = x.reshape([blocks, BLOCK]);
    let absmax = x.clone().abs().max_dim(1);
    let safe = absmax
        .clone()
        .mask_fill(absmax.clone().equal_elem(0.0), 1.0);
    let normalized = (x / safe).reshape([n_pad]);
    let codes = map.nearest(normalized);
    (pack(codes), absmax.reshape([blocks]))
}

fn pack(codes: Tensor<1, Int>) -> Tensor<1, Int> {
    let n = codes.dims()[0];
    let words = word_count(n);
    let device = codes.device();
    let codes = if words * PER_WORD > n {
        Tensor::cat(
            vec![codes, Tensor::zeros([words * PER_WORD - n], &device)],
            0,
        )
    } else {
        codes
    };
    let weights =
        Tensor::<1, Int>::from_data(TensorData::new(vec![1i32, 256, 65536], [3]), &device);
    (codes.reshape([words, PER_WORD]) * weights.reshape([1, PER_WORD]))
        .sum_dim(1)
        .reshape([words])
}

fn unpack(words: Tensor<1, Int>, n: usize) -> Tensor<1, Int> {
    let w = words.dims()[0];
    let col = words.reshape([w, 1]);
    let c0 = col.clone().remainder_scalar(256);
    let c1 = col.clone().div_scalar(256).remainder_scalar(256);
    let c2 = col.div_scalar(65536);
    Tensor::cat(vec![c0, c1, c2], 1)
        .reshape([w * PER_WORD])
        .slice(0..n)
}

/// Host form of packed codes (for paging and files): one byte per value.
pub(crate) fn words_to_bytes(words: &[i64], n_pad: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(words.len() * PER_WORD);
    for &w in words {
        let w = w as u32;
        out.extend_from_slice(&[
            (w & 255) as u8,
            ((w >> 8) & 255) as u8,
            ((w >> 16) & 255) as u8,
        ]);
    }
    out.truncate(n_pad);
    out
}

/// Device form of one-byte codes.
pub(crate) fn bytes_to_words(codes: &[u8]) -> Vec<i32> {
    codes
        .chunks(PER_WORD)
        .map(|c| {
            let mut w = 0i32;
            for (i, &b) in c.iter().enumerate() {
                w += (b as i32) << (8 * i);
            }
            w
        })
        .collect()
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use medify_quant::{dynamic_signed_map, dynamic_unsigned_map};

    fn host_nearest(map: &[f32; 256], x: f32) -> usize {
        let mut best = 0;
        for k in 0..256 {
            if (map[k] - x).abs() < (map[best] - x).abs() {
                best = k;
            }
        }
        best
    }

    #[test]
    fn device_codes_are_the_nearest_map_entries() {
        let device = Device::flex();
        for (map, signed) in [
            (dynamic_signed_map(), true),
            (dynamic_unsigned_map(), false),
        ] {
            let dm = DeviceMap::new(map, &device);
            // Every code value, every midpoint neighbourhood and a spread of values.
            let mut xs: Vec<f32> = map.to_vec();
            for k in 1..256 {
                let mid = (map[k - 1] + map[k]) / 2.0;
                xs.push(mid - 1e-9);
                xs.push(mid + (map[k] - map[k - 1]) * 1e-3);
            }
            for i in 0..1000 {
                let t = i as f32 / 999.0;
                xs.push(if signed { 2.0 * t - 1.0 } else { t });
                xs.push(t.powi(6) * if signed && i % 2 == 0 { -1.0 } else { 1.0 });
            }
            let n = xs.len();
            let got = dm
                .nearest(Tensor::from_data(TensorData::new(xs.clone(), [n]), &device))
                .into_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .unwrap();
            for (x, g) in xs.iter().zip(got) {
                let want = host_nearest(map, *x);
                let (dg, dw) = ((map[g as usize] - x).abs(), (map[want] - x).abs());
                // Exactly between two codes either is nearest, up to the rounding of the midpoint.
                let tie = 2.0 * f32::EPSILON * x.abs();
                assert!(
                    dg <= dw + tie,
                    "x = {x}: code {g} ({dg}) vs nearest {want} ({dw})"
                );
            }
        }
    }

    #[test]
    fn quantize_round_trips_through_packed_words_and_host_bytes() {
        let device = Device::flex();
        let dm = DeviceMap::new(dynamic_signed_map(), &device);
        let n = 1000; // not a multiple of the block or of the word size
        let xs: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let x = Tensor::<1>::from_data(TensorData::new(xs.clone(), [n]), &device);
        let (words, absmax) = quantize(x, &dm);
        assert_eq!(words.dims(), [word_count(1024)]);
        assert_eq!(absmax.dims(), [4]);
        let back = dequantize(&words, &absmax, &dm, n)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let am = absmax.clone().into_data().try_into_vec::<f32>().unwrap();
        for (i, (x, y)) in xs.iter().zip(&back).enumerate() {
            // Worst gap of the signed dynamic map near 1 is 1/128 of the absmax.
            assert!(
                (x - y).abs() <= am[i / BLOCK] / 128.0 + 1e-7,
                "{i}: {x} vs {y}"
            );
        }
        let host: Vec<i64> = words
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap();
        let bytes = words_to_bytes(&host, 1024);
        assert_eq!(bytes.len(), 1024);
        let words2: Vec<i64> = bytes_to_words(&bytes).into_iter().map(i64::from).collect();
        assert_eq!(words2, host);
        // Zero blocks keep absmax 0 and decode to exact zeros.
        let (w, a) = quantize(Tensor::zeros([300], &device), &dm);
        let z = dequantize(&w, &a, &dm, 300)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert!(z.iter().all(|v| *v == 0.0));
    }
}
