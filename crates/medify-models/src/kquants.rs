//! ggml's K-quant blocks of 256 values (llama.cpp's Q2_K … Q6_K, the types most downloaded
//! GGUF files use: Q4_K_M, Q5_K_M, Q6_K), dequantized exactly as ggml's
//! `dequantize_row_q*_K` does: the same f32 operations in the same order, so the values equal
//! the `gguf` package's (and transformers' GGUF loader's) bit for bit
//! (`fixtures/scripts/make_kquant_references.py`).

use half::f16;

use crate::gguf::f16_at;

/// Values per K-quant block.
pub const QK_K: usize = 256;

/// The signed value of largest magnitude in `x` (the first, on ties; 0 when empty): the value
/// ggml's symmetric quantizers map to the most negative code.
pub(crate) fn signed_max(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block (`get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q2_K (84 bytes: scales[16], qs[64], d, dmin): 16 groups of 16, 2-bit codes,
/// `d·(sc & 15)·q − dmin·(sc >> 4)`.
pub fn q2_k(blk: &[u8], out: &mut Vec<f32>) {
    let (scales, qs) = (&blk[..16], &blk[16..80]);
    let (d, dmin) = (f16_at(blk, 80), f16_at(blk, 82));
    for i in 0..QK_K {
        let (h, s, l) = (i / 128, (i % 128) / 32, i % 32);
        let q = ((qs[h * 32 + l] >> (2 * s)) & 3) as f32;
        let sc = scales[i / 16];
        let dl = d * (sc & 0x0F) as f32;
        let ml = dmin * (sc >> 4) as f32;
        out.push(dl * q - ml);
    }
}

/// Q3_K (110 bytes: hmask[32], qs[64], scales[12], d): 16 groups of 16, 3-bit codes (two low
/// bits in `qs`, the high bit in `hmask`, set meaning no −4 offset), signed 6-bit scales.
pub fn q3_k(blk: &[u8], out: &mut Vec<f32>) {
    let (hmask, qs, sc) = (&blk[..32], &blk[32..96], &blk[96..108]);
    let d = f16_at(blk, 108);
    let scale = |k: usize| {
        let low = (sc[k % 8] >> (4 * (k / 8))) & 0x0F;
        let high = (sc[8 + k % 4] >> (2 * (k / 4))) & 0x03;
        ((low | (high << 4)) as i8 - 32) as f32
    };
    for i in 0..QK_K {
        let (h, s, l) = (i / 128, (i % 128) / 32, i % 32);
        let low = ((qs[h * 32 + l] >> (2 * s)) & 3) as i8;
        let high = ((hmask[l] >> (i / 32)) & 1) ^ 1;
        let q = (low - ((high << 2) as i8)) as f32;
        out.push(d * scale(i / 16) * q);
    }
}

/// Q4_K (144 bytes: d, dmin, scales[12], qs[128]): 8 sub-blocks of 32, 4-bit codes,
/// `d·sc·q − dmin·m` with 6-bit scales and mins.
pub fn q4_k(blk: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
    let (scales, qs) = (&blk[4..16], &blk[16..144]);
    for i in 0..QK_K {
        let (sb, l) = (i / 32, i % 32);
        let q = ((qs[(sb / 2) * 32 + l] >> (4 * (sb % 2))) & 0x0F) as f32;
        let (sc, m) = scale_min_k4(sb, scales);
        out.push(d * sc as f32 * q - dmin * m as f32);
    }
}

/// Q5_K (176 bytes: d, dmin, scales[12], qh[32], qs[128]): Q4_K with a fifth bit per value in
/// `qh`.
pub fn q5_k(blk: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
    let (scales, qh, qs) = (&blk[4..16], &blk[16..48], &blk[48..176]);
    for i in 0..QK_K {
        let (sb, l) = (i / 32, i % 32);
        let low = (qs[(sb / 2) * 32 + l] >> (4 * (sb % 2))) & 0x0F;
        let high = (qh[l] >> sb) & 1;
        let q = (low | (high << 4)) as f32;
        let (sc, m) = scale_min_k4(sb, scales);
        out.push(d * sc as f32 * q - dmin * m as f32);
    }
}

/// Q6_K (210 bytes: ql[128], qh[64], scales[16], d): 16 groups of 16, 6-bit codes offset by
/// −32, signed 8-bit scales.
pub fn q6_k(blk: &[u8], out: &mut Vec<f32>) {
    let (ql, qh, scales) = (&blk[..128], &blk[128..192], &blk[192..208]);
    let d = f16_at(blk, 208);
    for i in 0..QK_K {
        let (g, l) = (i / 32, i % 32);
        let (h, r) = (g / 4, g % 4);
        let low = (ql[h * 64 + (r % 2) * 32 + l] >> (4 * (r / 2))) & 0x0F;
        let high = (qh[h * 32 + l] >> (2 * r)) & 0x03;
        let q = ((low | (high << 4)) as i8 - 32) as f32;
        out.push(d * scales[i / 16] as i8 as f32 * q);
    }
}

/// Q8_K (292 bytes: d as f32, qs[256], bsums[16]): `d·q`.
pub fn q8_k(blk: &[u8], out: &mut Vec<f32>) {
    let d = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
    out.extend(blk[4..260].iter().map(|&q| d * q as i8 as f32));
}

/// The codes `0..=nmax` and the (scale, min) of one group of `x` (value ≈ scale·q − min, with
/// min ≥ 0 so that zero stays representable), chosen by trying scales around the min–max one
/// and refitting scale and min by least squares on each candidate's codes, keeping the one of
/// least squared error.
fn fit_scale_min(x: &[f32], nmax: u8, codes: &mut [u8]) -> (f32, f32) {
    let lo = x.iter().fold(0f32, |m, &v| m.min(v));
    let hi = x.iter().fold(f32::MIN, |m, &v| m.max(v));
    if hi <= lo {
        codes.iter_mut().for_each(|c| *c = 0);
        return (0.0, -lo);
    }
    let n = nmax as f32;
    let code = |v: f32, scale: f32, min: f32| ((v + min) / scale).round().clamp(0.0, n) as u8;
    let error = |scale: f32, min: f32| -> f32 {
        x.iter()
            .map(|&v| {
                let e = scale * code(v, scale, min) as f32 - min - v;
                e * e
            })
            .sum()
    };
    let (mut best_scale, mut best_min) = ((hi - lo) / n, -lo);
    let mut best_err = error(best_scale, best_min);
    for step in -8..=8 {
        let scale = (hi - lo) / (n + step as f32 * 0.125);
        let min = -lo;
        // Refit on these codes: least squares for v ≈ s·q − m over the group.
        let qs: Vec<f32> = x.iter().map(|&v| code(v, scale, min) as f32).collect();
        let count = x.len() as f32;
        let (sq, sx, sqq, sqx) = qs
            .iter()
            .zip(x)
            .fold((0f32, 0f32, 0f32, 0f32), |a, (&q, &v)| {
                (a.0 + q, a.1 + v, a.2 + q * q, a.3 + q * v)
            });
        let det = count * sqq - sq * sq;
        let (mut s, mut m) = (scale, min);
        if det > 0.0 {
            s = (count * sqx - sq * sx) / det;
            m = (s * sq - sx) / count;
        }
        if s <= 0.0 || m < 0.0 {
            (s, m) = (scale, min);
        }
        for (s, m) in [(scale, min), (s, m)] {
            let e = error(s, m);
            if e < best_err {
                (best_err, best_scale, best_min) = (e, s, m);
            }
        }
    }
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = code(v, best_scale, best_min);
    }
    (best_scale, best_min)
}

/// One Q4_K block of 256 values (the inverse of [`q4_k`]): per sub-block of 32 a scale and
/// min, both quantized to 6 bits against the block's f16 `d` and `dmin`, and 4-bit codes.
pub fn encode_q4_k(x: &[f32], out: &mut Vec<u8>) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut codes = [0u8; QK_K];
    for j in 0..8 {
        (scales[j], mins[j]) = fit_scale_min(&x[j * 32..(j + 1) * 32], 15, &mut codes[j * 32..]);
    }
    let max_scale = scales.iter().fold(0f32, |m, &s| m.max(s));
    let max_min = mins.iter().fold(0f32, |m, &s| m.max(s));
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    let six = |v: f32, unit: f32| {
        if unit > 0.0 {
            (v / unit).round().clamp(0.0, 63.0) as u8
        } else {
            0
        }
    };
    let (df, dminf) = (d.to_f32(), dmin.to_f32());
    let ls: Vec<u8> = scales.iter().map(|&s| six(s, df)).collect();
    let lm: Vec<u8> = mins.iter().map(|&m| six(m, dminf)).collect();
    let mut packed = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            packed[j] = ls[j];
            packed[j + 4] = lm[j];
        } else {
            packed[j + 4] = (ls[j] & 0x0F) | ((lm[j] & 0x0F) << 4);
            packed[j - 4] |= (ls[j] >> 4) << 6;
            packed[j] |= (lm[j] >> 4) << 6;
        }
    }
    // Codes again against the scales as stored.
    for j in 0..8 {
        let (s, m) = (df * ls[j] as f32, dminf * lm[j] as f32);
        for l in 0..32 {
            let v = x[j * 32 + l];
            codes[j * 32 + l] = if s > 0.0 {
                ((v + m) / s).round().clamp(0.0, 15.0) as u8
            } else {
                0
            };
        }
    }
    out.extend(d.to_le_bytes());
    out.extend(dmin.to_le_bytes());
    out.extend(packed);
    for c in 0..4 {
        for l in 0..32 {
            out.push(codes[2 * c * 32 + l] | (codes[(2 * c + 1) * 32 + l] << 4));
        }
    }
}

/// One Q6_K block of 256 values (the inverse of [`q6_k`]): per group of 16 a signed 8-bit
/// scale against the block's f16 `d`, and 6-bit codes offset by 32; the group's value of
/// largest magnitude maps to −32.
pub fn encode_q6_k(x: &[f32], out: &mut Vec<u8>) {
    let mut group_scales = [0f32; 16];
    for (g, s) in group_scales.iter_mut().enumerate() {
        *s = signed_max(&x[g * 16..(g + 1) * 16]) / -32.0;
    }
    let max_scale = signed_max(&group_scales);
    let d = f16::from_f32(max_scale / -128.0);
    let df = d.to_f32();
    let sc: Vec<i8> = group_scales
        .iter()
        .map(|&s| {
            if df != 0.0 {
                (s / df).round().clamp(-128.0, 127.0) as i8
            } else {
                0
            }
        })
        .collect();
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for i in 0..QK_K {
        let step = df * sc[i / 16] as f32;
        let q = if step != 0.0 {
            (x[i] / step).round().clamp(-32.0, 31.0) as i32
        } else {
            0
        };
        let q6 = (q + 32) as u8;
        let (g, l) = (i / 32, i % 32);
        let (h, r) = (g / 4, g % 4);
        ql[h * 64 + (r % 2) * 32 + l] |= (q6 & 0x0F) << (4 * (r / 2));
        qh[h * 32 + l] |= (q6 >> 4) << (2 * r);
    }
    out.extend(ql);
    out.extend(qh);
    out.extend(sc.iter().map(|&s| s as u8));
    out.extend(d.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(seed: u32) -> Vec<f32> {
        (0..QK_K as u32)
            .map(|i| {
                let h = (i.wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)) % 10_000;
                (h as f32 / 10_000.0 - 0.45) * if i % 97 == 0 { 6.0 } else { 1.0 }
            })
            .collect()
    }

    fn rms(a: &[f32], b: &[f32]) -> f32 {
        (a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>() / a.len() as f32).sqrt()
    }

    /// Plain min–max quantization of each group of `group` values to `levels` steps with exact
    /// f32 scales: the baseline a K-quant's fitted and 6/8-bit-quantized scales must match.
    fn min_max_baseline(x: &[f32], group: usize, levels: f32) -> Vec<f32> {
        x.chunks(group)
            .flat_map(|g| {
                let lo = g.iter().fold(0f32, |m, &v| m.min(v));
                let hi = g.iter().fold(0f32, |m, &v| m.max(v));
                let step = (hi - lo) / levels;
                g.iter()
                    .map(move |&v| {
                        if step > 0.0 {
                            ((v - lo) / step).round() * step + lo
                        } else {
                            lo
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Symmetric quantization of each group to codes −levels..levels−1 with the value of largest
    /// magnitude at −levels, exact f32 scales: Q6_K's scheme without its 8-bit scales.
    fn absmax_baseline(x: &[f32], group: usize, levels: f32) -> Vec<f32> {
        x.chunks(group)
            .flat_map(|g| {
                let step = signed_max(g) / -levels;
                g.iter()
                    .map(move |&v| {
                        if step != 0.0 {
                            (v / step).round().clamp(-levels, levels - 1.0) * step
                        } else {
                            0.0
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn encoded_blocks_decode_as_close_as_exact_scale_min_max() {
        for seed in 0..4 {
            let x = signal(seed);
            let mut bytes = Vec::new();
            encode_q4_k(&x, &mut bytes);
            assert_eq!(bytes.len(), 144);
            let mut back = Vec::new();
            q4_k(&bytes, &mut back);
            let (ours, base) = (rms(&x, &back), rms(&x, &min_max_baseline(&x, 32, 15.0)));
            assert!(ours <= 1.05 * base, "q4_k {ours} vs min-max {base}");
            bytes.clear();
            encode_q6_k(&x, &mut bytes);
            assert_eq!(bytes.len(), 210);
            back.clear();
            q6_k(&bytes, &mut back);
            let (ours, base) = (rms(&x, &back), rms(&x, &absmax_baseline(&x, 16, 32.0)));
            assert!(ours <= 1.1 * base, "q6_k {ours} vs absmax {base}");
        }
        // Zeros stay zeros.
        let mut bytes = Vec::new();
        encode_q4_k(&[0.0; QK_K], &mut bytes);
        let mut back = Vec::new();
        q4_k(&bytes, &mut back);
        assert!(back.iter().all(|v| *v == 0.0));
    }
}
