//! The 4-bit matmul and its input gradient for many rows (prefill, training): gemm's own
//! microkernels fed with weight panels decoded straight into cache.
//!
//! A dense gemm copies each cache-sized block of its weight operand into a packed panel before
//! its microkernel reads it. Here that packing step decodes the 4-bit codes instead of copying
//! f32 values, so no f32 weight is ever written to memory: the multiply runs in gemm's
//! microkernels with gemm's block sizes (its cache model), and the decode takes the place of
//! the copy. Decoding the whole weight first and calling gemm cost 20–25% over dense at 256
//! tokens (writing the f32 weight, then gemm reading it back); see `docs/benchmarks.md`.
//!
//! Both directions run gemm's column-major form, the one its microkernel vectorizes:
//! - forward `out[m, n] = x · Wᵀ`: the microkernel's rows are weight rows (output features,
//!   contiguous in `out`), so a panel holds, for each input feature, `MR` consecutive weight rows:
//!   the decoded weight transposed (in-register 16×16 / 8×8 transposes). `x` is read in place.
//! - input gradient `dx[m, k] = dy · W`: its rows are input features (contiguous in `dx`), so a
//!   panel holds, for each weight row, `MR` consecutive values of that row: decoded in order.

use crate::PackedView;
use crate::simd::CpuLevel;
use gemm_common::microkernel::MicroKernelFn;
use rayon::prelude::*;

/// Columns of every microkernel (tokens per call).
const NR: usize = 6;

/// One CPU level's microkernels.
#[derive(Clone, Copy)]
struct Kernels {
    /// `ukr[vectors - 1][columns - 1]`, for `vectors` SIMD registers of rows.
    ukr: &'static [[MicroKernelFn<f32>; NR]],
    /// `f32` lanes per register.
    lanes: usize,
    level: CpuLevel,
}

impl Kernels {
    /// Rows per microkernel call (and per packed panel).
    fn mr(&self) -> usize {
        self.lanes * self.ukr.len()
    }
}

/// The kernels for this CPU ([`crate::simd::cpu_level`]), or `None` where gemm has none (the
/// caller then decodes the whole weight and calls gemm).
fn kernels() -> Option<Kernels> {
    #[cfg(target_arch = "x86_64")]
    {
        let fma = Kernels {
            ukr: &gemm_f32::microkernel::fma::f32::UKR,
            lanes: 8,
            level: CpuLevel::Avx2,
        };
        match crate::simd::cpu_level() {
            #[cfg(not(medify_gemm_avx2))]
            CpuLevel::Avx512 => Some(Kernels {
                ukr: &gemm_f32::microkernel::avx512f::f32::UKR,
                lanes: 16,
                level: CpuLevel::Avx512,
            }),
            #[cfg(medify_gemm_avx2)]
            CpuLevel::Avx512 => Some(fma),
            CpuLevel::Avx2 => Some(fma),
            CpuLevel::Baseline => None,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// One cache line of `f32`s: packed panels start on a line, as gemm's do.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

thread_local! {
    /// Packed panels, kept across calls so no pages are faulted in per matmul.
    static PANELS: std::cell::Cell<Vec<Line>> = const { std::cell::Cell::new(Vec::new()) };
    /// One group of decoded rows before they are transposed into a panel.
    static ROWS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` with this thread's kept panel buffer, at least `len` values, 64-byte aligned.
fn with_panels<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    // Taken out of the cell, so a reentrant call (rayon work stealing) allocates its own.
    let mut buf = PANELS.with(std::cell::Cell::take);
    let lines = len.div_ceil(16);
    if buf.len() < lines {
        buf.resize(lines, Line([0.0; 16]));
    }
    // SAFETY: `Line` is 16 plain `f32`s with no padding, so `lines` of them are `16·lines`
    // initialized `f32`s, borrowed mutably for this call only.
    let values = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<f32>(), len) };
    let r = f(values);
    PANELS.with(|cell| cell.set(buf));
    r
}

/// How a product is split into parallel tasks: ranges of the microkernel's rows (whole panels)
/// and, when they alone cannot keep every thread busy, ranges of tokens.
struct Split {
    rows_per_task: usize,
    tokens_per_task: usize,
}

impl Split {
    fn new(rows: usize, tokens: usize, mr: usize, mc: usize) -> Split {
        let threads = rayon::current_num_threads().max(1);
        let panels = rows.div_ceil(mr);
        // Each thread's share of panels, cut into equal tasks of at most gemm's L2 block: the
        // largest divisor of the share that fits, so every thread gets the same work.
        let share = panels.div_ceil(threads);
        let max_task = (mc / mr).clamp(1, share.max(1));
        let per_task = (1..=max_task)
            .rev()
            .find(|d| share.is_multiple_of(*d))
            .unwrap_or(1);
        // Where the panels themselves do not divide evenly between the threads (9 panels on 2
        // threads: 5 and 4), token ranges even the load out; each range decodes its rows
        // again, so they stay at least 128 tokens long.
        let imbalance = (share * threads) as f64 / panels.max(1) as f64;
        let token_tasks = if imbalance > 1.1 {
            threads.clamp(1, (tokens / 128).max(1))
        } else {
            1
        };
        Split {
            rows_per_task: per_task * mr,
            tokens_per_task: tokens.div_ceil(token_tasks).next_multiple_of(NR),
        }
    }

    /// `(first row, rows, first token, tokens)` of every task.
    fn tasks(&self, rows: usize, tokens: usize) -> Vec<(usize, usize, usize, usize)> {
        let mut tasks = Vec::new();
        for r0 in (0..rows).step_by(self.rows_per_task) {
            for t0 in (0..tokens).step_by(self.tokens_per_task) {
                tasks.push((
                    r0,
                    self.rows_per_task.min(rows - r0),
                    t0,
                    self.tokens_per_task.min(tokens - t0),
                ));
            }
        }
        tasks
    }
}

/// Runs the microkernel over one packed block: `panels` holds `rows.div_ceil(mr)` panels of
/// `depth` steps × `mr` values; `rhs(token)` points at that token's first reduction value (the
/// following ones contiguous), `dst(row, token)` at its output. Accumulates into `dst` unless
/// `first`, which overwrites.
///
/// # Safety
/// `panels` must hold the panels; every `rhs(t) + s` for `s < depth` and every `dst(r, t)` for
/// the rows and tokens given must be valid, and the CPU must have `k`'s level.
#[allow(clippy::too_many_arguments)]
unsafe fn run_block(
    k: Kernels,
    panels: &[f32],
    rows: usize,
    depth: usize,
    tokens: std::ops::Range<usize>,
    rhs: impl Fn(usize) -> *const f32,
    rhs_token_stride: isize,
    dst: impl Fn(usize, usize) -> *mut f32,
    dst_token_stride: isize,
    first: bool,
) {
    let mr = k.mr();
    let mut t = tokens.start;
    while t < tokens.end {
        let cols = NR.min(tokens.end - t);
        for (p, panel) in panels
            .chunks_exact(mr * depth)
            .take(rows.div_ceil(mr))
            .enumerate()
        {
            let r = p * mr;
            let m = mr.min(rows - r);
            let ukr = k.ukr[m.div_ceil(k.lanes) - 1][cols - 1];
            // SAFETY: the caller's contract; the kernel reads `depth` steps of `mr` values
            // from the panel and writes `m` × `cols` outputs.
            unsafe {
                ukr(
                    m,
                    cols,
                    depth,
                    dst(r, t),
                    panel.as_ptr(),
                    rhs(t),
                    dst_token_stride,
                    1,
                    mr as isize,
                    1,
                    rhs_token_stride,
                    1.0,
                    1.0,
                    if first { 0 } else { 1 },
                    false,
                    false,
                    false,
                    panel.as_ptr(),
                )
            };
        }
        t += cols;
    }
}

/// One product in gemm's column-major form, shared by both directions: `rows` microkernel rows
/// (weight rows forward, input features for the input gradient) times `tokens`, reduced over
/// `depth` in gemm's `kc` blocks. The rows (and, where they cannot balance, the tokens) are
/// split into parallel tasks; each task packs its panels with `pack(first_row, rows,
/// first_step, steps, panels)` into this thread's kept buffer and runs the microkernel on them.
/// `rhs(t, s)` points at token `t`'s reduction value `s` (the following ones contiguous), and
/// `dst(r, t)` at the output of row `r`, token `t`; the next token's are `rhs_stride` and
/// `dst_stride` further. `dst` is overwritten.
///
/// # Safety
/// Every `rhs(t, s)` for `t < tokens`, `s < depth` and every `dst(r, t)` for `r < rows`,
/// `t < tokens` must be valid, with no two `dst` the same; `kern` must be the detected level's.
#[allow(clippy::too_many_arguments)]
unsafe fn blocked_product(
    kern: Kernels,
    rows: usize,
    tokens: usize,
    depth: usize,
    pack: impl Fn(usize, usize, usize, usize, &mut [f32]) + Sync,
    rhs: impl Fn(usize, usize) -> usize + Sync,
    rhs_stride: isize,
    dst: impl Fn(usize, usize) -> usize + Sync,
    dst_stride: isize,
) {
    let mr = kern.mr();
    let params = gemm_common::cache::kernel_params(rows, tokens, depth, mr, NR, 4);
    let kc = params.kc.max(1);
    let split = Split::new(rows, tokens, mr, params.mc);
    split
        .tasks(rows, tokens)
        .into_par_iter()
        .for_each(|(r0, task_rows, t0, task_tokens)| {
            with_panels(task_rows.div_ceil(mr) * mr * kc, |panels| {
                let mut s0 = 0;
                while s0 < depth {
                    let steps = kc.min(depth - s0);
                    pack(r0, task_rows, s0, steps, panels);
                    // SAFETY: the caller's contract, for this task's rows and tokens and the
                    // reduction steps s0..s0 + steps; tasks write disjoint (row, token) ranges.
                    unsafe {
                        run_block(
                            kern,
                            panels,
                            task_rows,
                            steps,
                            t0..t0 + task_tokens,
                            |t| rhs(t, s0) as *const f32,
                            rhs_stride,
                            |r, t| dst(r0 + r, t) as *mut f32,
                            dst_stride,
                            s0 == 0,
                        )
                    };
                    s0 += steps;
                }
            })
        });
}

/// `out[m, n] = x[m, k] · Wᵀ`, `out` overwritten. Returns `false` (and touches nothing) when
/// this CPU has no microkernel for it.
pub(crate) fn forward(x: &[f32], m: usize, w: &PackedView<'_>, out: &mut [f32]) -> bool {
    let Some(kern) = kernels() else {
        return false;
    };
    let (n, k) = (w.out_features(), w.in_features());
    assert!(
        x.len() >= m * k && out.len() >= m * n,
        "forward: short buffers"
    );
    if m == 0 || n == 0 {
        return true;
    }
    if k == 0 {
        out[..m * n].fill(0.0);
        return true;
    }
    let (x_addr, out_addr) = (x.as_ptr() as usize, out.as_mut_ptr() as usize);
    // Rows are weight rows (output features, contiguous in `out`), reduced over `k`.
    // SAFETY: token t's `x` row holds k values from t·k (t < m); out (r, t) at t·n + r lies in
    // [m, n] for r < n. The level was detected.
    unsafe {
        blocked_product(
            kern,
            n,
            m,
            k,
            |r0, rows, k0, depth, panels| pack_transposed(kern, w, r0, rows, k0, depth, panels),
            |t, k0| x_addr + 4 * (t * k + k0),
            k as isize,
            |r, t| out_addr + 4 * (t * n + r),
            n as isize,
        )
    };
    true
}

/// `dx[m, k] = dy[m, n] · W`, `dx` overwritten. Returns `false` (and touches nothing) when
/// this CPU has no microkernel for it.
pub(crate) fn input_grad(dy: &[f32], m: usize, w: &PackedView<'_>, dx: &mut [f32]) -> bool {
    let Some(kern) = kernels() else {
        return false;
    };
    let (n, k) = (w.out_features(), w.in_features());
    assert!(
        dy.len() >= m * n && dx.len() >= m * k,
        "input_grad: short buffers"
    );
    if m == 0 || k == 0 {
        return true;
    }
    if n == 0 {
        dx[..m * k].fill(0.0);
        return true;
    }
    let (dy_addr, dx_addr) = (dy.as_ptr() as usize, dx.as_mut_ptr() as usize);
    // Rows are input features (contiguous in `dx`), reduced over the weight's rows.
    // SAFETY: token t's `dy` row holds n values from t·n (t < m); dx (c, t) at t·k + c lies in
    // [m, k] for c < k. The level was detected.
    unsafe {
        blocked_product(
            kern,
            k,
            m,
            n,
            |c0, cols, p0, depth, panels| pack_rows(kern, w, c0, cols, p0, depth, panels),
            |t, p0| dy_addr + 4 * (t * n + p0),
            n as isize,
            |c, t| dx_addr + 4 * (t * k + c),
            k as isize,
        )
    };
    true
}

/// Forward panels: for weight rows `r0..r0 + rows` and input features `k0..k0 + depth`, panel
/// `p` holds at `p·mr·depth + s·mr + i` the weight at row `r0 + p·mr + i`, column `k0 + s`
/// (rows past the weight read as zero).
fn pack_transposed(
    kern: Kernels,
    w: &PackedView<'_>,
    r0: usize,
    rows: usize,
    k0: usize,
    depth: usize,
    panels: &mut [f32],
) {
    let (mr, lanes, k) = (kern.mr(), kern.lanes, w.in_features());
    let mut group = ROWS.with(std::cell::Cell::take);
    group.resize(lanes * depth, 0.0);
    for g in 0..rows.div_ceil(lanes) {
        // `lanes` rows, one after another, then transposed into the panel's columns.
        let (first, count) = (g * lanes, lanes.min(rows - g * lanes));
        for i in 0..lanes {
            let row = &mut group[i * depth..(i + 1) * depth];
            if i < count {
                w.decode_span((r0 + first + i) * k + k0, row);
            } else {
                row.fill(0.0);
            }
        }
        let (p, lane0) = (first / mr, first % mr);
        let panel = &mut panels[p * mr * depth..(p + 1) * mr * depth];
        transpose_into(kern.level, &group, depth, lanes, panel, mr, lane0);
    }
    ROWS.with(|cell| cell.set(group));
}

/// `dst[s·stride + lane0 + i] = src[i·depth + s]` for `i < lanes`, `s < depth`.
fn transpose_into(
    level: CpuLevel,
    src: &[f32],
    depth: usize,
    lanes: usize,
    dst: &mut [f32],
    stride: usize,
    lane0: usize,
) {
    assert!(src.len() >= lanes * depth && lane0 + lanes <= stride);
    assert!(depth == 0 || dst.len() >= (depth - 1) * stride + lane0 + lanes);
    let mut s0 = 0;
    #[cfg(target_arch = "x86_64")]
    {
        match (level, lanes) {
            (CpuLevel::Avx512, 16) => {
                while s0 + 16 <= depth {
                    // SAFETY: AVX-512 was detected; reads src[i·depth + s0 + 0..16] for i < 16
                    // and writes dst[(s0 + j)·stride + lane0 + 0..16] for j < 16, in bounds
                    // by the assertions above.
                    unsafe {
                        x86::transpose16(
                            src.as_ptr().add(s0),
                            depth,
                            dst.as_mut_ptr().add(s0 * stride + lane0),
                            stride,
                        )
                    };
                    s0 += 16;
                }
            }
            (CpuLevel::Avx512 | CpuLevel::Avx2, 8) => {
                while s0 + 8 <= depth {
                    // SAFETY: as above with 8 × 8; AVX2 is implied by both levels.
                    unsafe {
                        x86::transpose8(
                            src.as_ptr().add(s0),
                            depth,
                            dst.as_mut_ptr().add(s0 * stride + lane0),
                            stride,
                        )
                    };
                    s0 += 8;
                }
            }
            _ => {}
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = level;
    for s in s0..depth {
        for i in 0..lanes {
            dst[s * stride + lane0 + i] = src[i * depth + s];
        }
    }
}

/// Input-gradient panels: for input features `c0..c0 + cols` and weight rows `p0..p0 + depth`,
/// panel `p` holds at `p·mr·depth + s·mr + i` the weight at row `p0 + s`, column
/// `c0 + p·mr + i` (columns past the weight read as zero).
fn pack_rows(
    kern: Kernels,
    w: &PackedView<'_>,
    c0: usize,
    cols: usize,
    p0: usize,
    depth: usize,
    panels: &mut [f32],
) {
    let (mr, k) = (kern.mr(), w.in_features());
    let mut row = ROWS.with(std::cell::Cell::take);
    row.resize(cols, 0.0);
    let panel_count = cols.div_ceil(mr);
    for s in 0..depth {
        // One weight row's span, decoded in one go, then cut into the panels' steps.
        w.decode_span((p0 + s) * k + c0, &mut row[..cols]);
        for p in 0..panel_count {
            let step = &mut panels[p * mr * depth + s * mr..p * mr * depth + (s + 1) * mr];
            let part = &row[p * mr..cols.min((p + 1) * mr)];
            step[..part.len()].copy_from_slice(part);
            step[part.len()..].fill(0.0);
        }
    }
    ROWS.with(|cell| cell.set(row));
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Writes the transpose of the 16 × 16 block at `src` (row stride `src_stride`) to `dst`
    /// (row stride `dst_stride`).
    ///
    /// # Safety
    /// AVX-512F; 16 rows of 16 values readable at `src`, writable at `dst`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose16(
        src: *const f32,
        src_stride: usize,
        dst: *mut f32,
        dst_stride: usize,
    ) {
        // SAFETY: the caller's contract.
        unsafe {
            let r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(src.add(i * src_stride)));
            // Pairs of rows interleaved by element, then by 64-bit pairs: after these two steps
            // each 128-bit lane holds a 4 × 4 block's column.
            let mut t = [_mm512_setzero_ps(); 16];
            for i in 0..8 {
                t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            let mut u = [_mm512_setzero_ps(); 16];
            for i in 0..4 {
                let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
                u[4 * i] = pd_lo(a, c);
                u[4 * i + 1] = pd_hi(a, c);
                u[4 * i + 2] = pd_lo(b, d);
                u[4 * i + 3] = pd_hi(b, d);
            }
            // u[4i + j] lane q holds column 4q + j of rows 4i..4i + 4. Gather lanes across
            // registers: first pairs of lanes, then single lanes.
            let mut v = [_mm512_setzero_ps(); 16];
            for j in 0..4 {
                // rows 0..8 and 8..16, lanes (0, 2) and (1, 3) of two row-quads each
                v[j] = _mm512_shuffle_f32x4::<0x88>(u[j], u[4 + j]);
                v[4 + j] = _mm512_shuffle_f32x4::<0xdd>(u[j], u[4 + j]);
                v[8 + j] = _mm512_shuffle_f32x4::<0x88>(u[8 + j], u[12 + j]);
                v[12 + j] = _mm512_shuffle_f32x4::<0xdd>(u[8 + j], u[12 + j]);
            }
            for j in 0..4 {
                // column 4q + j for q = 0, 2 from v[j], v[8 + j]; q = 1, 3 from v[4 + j], v[12 + j]
                let c0 = _mm512_shuffle_f32x4::<0x88>(v[j], v[8 + j]);
                let c2 = _mm512_shuffle_f32x4::<0xdd>(v[j], v[8 + j]);
                let c1 = _mm512_shuffle_f32x4::<0x88>(v[4 + j], v[12 + j]);
                let c3 = _mm512_shuffle_f32x4::<0xdd>(v[4 + j], v[12 + j]);
                _mm512_storeu_ps(dst.add(j * dst_stride), c0);
                _mm512_storeu_ps(dst.add((4 + j) * dst_stride), c1);
                _mm512_storeu_ps(dst.add((8 + j) * dst_stride), c2);
                _mm512_storeu_ps(dst.add((12 + j) * dst_stride), c3);
            }
        }
    }

    #[inline(always)]
    unsafe fn pd_lo(a: __m512, b: __m512) -> __m512 {
        // SAFETY: register-only; AVX-512F is enabled by the caller.
        unsafe { _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b))) }
    }

    #[inline(always)]
    unsafe fn pd_hi(a: __m512, b: __m512) -> __m512 {
        // SAFETY: as in `pd_lo`.
        unsafe { _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b))) }
    }

    /// [`transpose16`] for an 8 × 8 block with AVX.
    ///
    /// # Safety
    /// AVX; 8 rows of 8 values readable at `src`, writable at `dst`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transpose8(
        src: *const f32,
        src_stride: usize,
        dst: *mut f32,
        dst_stride: usize,
    ) {
        // SAFETY: the caller's contract.
        unsafe {
            let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * src_stride)));
            let mut t = [_mm256_setzero_ps(); 8];
            for i in 0..4 {
                t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            let mut u = [_mm256_setzero_ps(); 8];
            for i in 0..2 {
                let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
                u[4 * i] = _mm256_shuffle_ps::<0x44>(a, c);
                u[4 * i + 1] = _mm256_shuffle_ps::<0xee>(a, c);
                u[4 * i + 2] = _mm256_shuffle_ps::<0x44>(b, d);
                u[4 * i + 3] = _mm256_shuffle_ps::<0xee>(b, d);
            }
            for j in 0..4 {
                let lo = _mm256_permute2f128_ps::<0x20>(u[j], u[4 + j]);
                let hi = _mm256_permute2f128_ps::<0x31>(u[j], u[4 + j]);
                _mm256_storeu_ps(dst.add(j * dst_stride), lo);
                _mm256_storeu_ps(dst.add((4 + j) * dst_stride), hi);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{QuantType, Scales};

    /// A random packed weight `[n, k]`: its words, scales and decoded values.
    fn weight(n: usize, k: usize, seed: u32) -> (Vec<u32>, Vec<f32>, Vec<f32>) {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        let words: Vec<u32> = (0..(n * k).div_ceil(8))
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                s
            })
            .collect();
        let scales: Vec<f32> = (0..(n * k).div_ceil(64))
            .map(|b| 0.5 + (b % 7) as f32 * 0.1)
            .collect();
        let view = PackedView::new(
            &words,
            Scales::F32(&scales),
            QuantType::Nf4.code(),
            n,
            k,
            64,
        )
        .unwrap();
        let mut dense = vec![0f32; n * k];
        view.decode_all(&mut dense);
        (words, scales, dense)
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7 + seed * 13) % 23) as f32 / 11.0 - 1.0)
            .collect()
    }

    fn check(m: usize, n: usize, k: usize) {
        let (words, scales, dense) = weight(n, k, (m * 31 + n * 7 + k) as u32);
        let view = PackedView::new(
            &words,
            Scales::F32(&scales),
            QuantType::Nf4.code(),
            n,
            k,
            64,
        )
        .unwrap();
        let x = values(m * k, 1);
        let mut out = vec![f32::NAN; m * n];
        if !forward(&x, m, &view, &mut out) {
            return; // no microkernel on this CPU
        }
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|p| x[i * k + p] as f64 * dense[j * k + p] as f64)
                    .sum();
                let got = out[i * n + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "forward [{m}, {n}, {k}] at ({i}, {j}): {got} vs {want}"
                );
            }
        }
        let dy = values(m * n, 2);
        let mut dx = vec![f32::NAN; m * k];
        assert!(input_grad(&dy, m, &view, &mut dx));
        for i in 0..m {
            for c in 0..k {
                let want: f64 = (0..n)
                    .map(|j| dy[i * n + j] as f64 * dense[j * k + c] as f64)
                    .sum();
                let got = dx[i * k + c] as f64;
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "input_grad [{m}, {n}, {k}] at ({i}, {c}): {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn matches_the_decoded_product_on_every_edge() {
        // Whole panels and tokens, partial ones, several k blocks (k > 512), odd spans.
        for &(m, n, k) in &[
            (12, 64, 64),
            (9, 17, 30),
            (13, 100, 72),
            (37, 130, 1100),
            (256, 192, 576),
            (7, 1, 2),
            (20, 3, 1),
        ] {
            check(m, n, k);
        }
    }

    #[test]
    fn transposes_match_the_scalar_loop() {
        for level in [CpuLevel::Avx512, CpuLevel::Avx2] {
            if crate::simd::cpu_level() == CpuLevel::Baseline
                || (level == CpuLevel::Avx512 && crate::simd::cpu_level() != CpuLevel::Avx512)
            {
                continue;
            }
            for lanes in [8, 16] {
                if lanes == 16 && level != CpuLevel::Avx512 {
                    continue;
                }
                let depth = 37;
                let src = values(lanes * depth, 3);
                let stride = 64;
                let mut fast = vec![0f32; depth * stride];
                let mut slow = vec![0f32; depth * stride];
                transpose_into(level, &src, depth, lanes, &mut fast, stride, 16);
                transpose_into(
                    CpuLevel::Baseline,
                    &src,
                    depth,
                    lanes,
                    &mut slow,
                    stride,
                    16,
                );
                assert_eq!(fast, slow, "{level:?} x {lanes}");
            }
        }
    }
}
