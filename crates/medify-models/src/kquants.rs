//! ggml's K-quant blocks of 256 values (llama.cpp's Q2_K … Q6_K, the types most downloaded
//! GGUF files use: Q4_K_M, Q5_K_M, Q6_K), dequantized exactly as ggml's
//! `dequantize_row_q*_K` does: the same f32 operations in the same order, so the values equal
//! the `gguf` package's (and transformers' GGUF loader's) bit for bit
//! (`fixtures/scripts/make_kquant_references.py`).

use half::f16;

/// Values per K-quant block.
pub const QK_K: usize = 256;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
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
