//! The 8-bit AdamW update on the CPU: the same arithmetic as the tensor path, fused into one
//! pass per 256-value block over host slices, because on a CPU device eight rounds of gathers
//! per moment cost far more than the update itself.

use medify_quant::{dynamic_signed_map, dynamic_unsigned_map};
use rayon::prelude::*;

use crate::blockwise::{BLOCK, padded_len};
use crate::state::HostMoments;

/// Scalars of one update, already in the f32 form the tensor path uses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hyper {
    pub(crate) b1: f32,
    pub(crate) one_minus_b1: f32,
    pub(crate) b2: f32,
    pub(crate) one_minus_b2: f32,
    /// `eps · √(1-β2ᵗ)`.
    pub(crate) eps: f32,
    /// `lr · √(1-β2ᵗ) / (1-β1ᵗ)`.
    pub(crate) step_size: f32,
    /// `1 - lr · wd`, or 1 without decay.
    pub(crate) decay: Option<f32>,
    /// Gradient scale from clipping (1 = none).
    pub(crate) clip: Option<f32>,
}

/// Thresholds between neighbouring codes: code k when `x >= th[k-1]` and `x < th[k]`.
fn thresholds(map: &[f32; 256]) -> [f32; 255] {
    std::array::from_fn(|k| (map[k] + map[k + 1]) / 2.0)
}

#[inline]
fn nearest(th: &[f32; 255], x: f32) -> u8 {
    th.partition_point(|&t| t <= x) as u8
}

impl HostMoments {
    /// Zero moments in 8-bit form for `n` values (the codes of 0.0 in each map).
    pub(crate) fn q8_zeros(n: usize) -> HostMoments {
        let n_pad = padded_len(n);
        let zero_m = nearest(&thresholds(dynamic_signed_map()), 0.0);
        let zero_v = nearest(&thresholds(dynamic_unsigned_map()), 0.0);
        HostMoments::Q8 {
            m: vec![zero_m; n_pad],
            m_absmax: vec![0.0; n_pad / BLOCK],
            v: vec![zero_v; n_pad],
            v_absmax: vec![0.0; n_pad / BLOCK],
        }
    }
}

fn requantize(values: &[f32; BLOCK], th: &[f32; 255], codes: &mut [u8]) -> f32 {
    let absmax = values.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let safe = if absmax == 0.0 { 1.0 } else { absmax };
    for (c, v) in codes.iter_mut().zip(values) {
        *c = nearest(th, v / safe);
    }
    absmax
}

/// Updates `p` in place from gradient `g` and 8-bit moments, block by block in parallel.
pub(crate) fn update_q8(
    p: &mut [f32],
    g: &[f32],
    m: &mut [u8],
    m_absmax: &mut [f32],
    v: &mut [u8],
    v_absmax: &mut [f32],
    h: Hyper,
) {
    let (ms, mu) = (dynamic_signed_map(), dynamic_unsigned_map());
    let (ths, thu) = (thresholds(ms), thresholds(mu));
    p.par_chunks_mut(BLOCK)
        .zip(g.par_chunks(BLOCK))
        .zip(m.par_chunks_mut(BLOCK).zip(m_absmax.par_iter_mut()))
        .zip(v.par_chunks_mut(BLOCK).zip(v_absmax.par_iter_mut()))
        .for_each(|(((p, g), (mc, ma)), (vc, va))| {
            let mut mf = [0f32; BLOCK];
            let mut vf = [0f32; BLOCK];
            for i in 0..p.len() {
                let gi = match h.clip {
                    Some(c) => g[i] * c,
                    None => g[i],
                };
                let mi = (ms[mc[i] as usize] * *ma) * h.b1 + gi * h.one_minus_b1;
                let vi = (mu[vc[i] as usize] * *va) * h.b2 + (gi * gi) * h.one_minus_b2;
                let mut pi = p[i] - (mi / (vi.sqrt() + h.eps)) * h.step_size;
                if let Some(d) = h.decay {
                    pi *= d;
                }
                p[i] = pi;
                mf[i] = mi;
                vf[i] = vi;
            }
            *ma = requantize(&mf, &ths, mc);
            *va = requantize(&vf, &thu, vc);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_on_the_host_picks_the_closest_code() {
        let map = dynamic_signed_map();
        let th = thresholds(map);
        for (k, &v) in map.iter().enumerate() {
            assert_eq!(nearest(&th, v) as usize, k);
        }
        assert_eq!(nearest(&th, 0.0), 127);
        assert_eq!(nearest(&th, -2.0), 0);
        assert_eq!(nearest(&th, 2.0), 255);
        assert_eq!(nearest(&thresholds(dynamic_unsigned_map()), 0.0), 0);
    }
}
