//! Matrix-vector kernels for decoding: a few activation rows against a range of a frozen
//! weight's rows, reading each weight byte once for all of them.
//!
//! Decoding one token is bound by the bytes of weight read per token, so these kernels stream
//! each weight row once (4-bit codes, int8, bf16 or f32) and multiply it into every activation
//! row at once: continuous batching then pays for the weights once per step, not once per
//! sequence. They take a row range so a caller's threads can split one weight between them
//! without a dispatch per op (see `medify_models::decode`). AVX-512 and AVX2 + FMA copies are
//! picked at run time ([`crate::simd::cpu_level`]); others run portable code.

use std::ops::Range;

use crate::host_kernels::PackedView;

/// How an output head is held for decoding (see `DecodeWeight::compact`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadPrecision {
    /// As the model holds it (f32 for an f32 model): logits exactly as the model computes them.
    #[default]
    Exact,
    /// bf16 values: half the bytes of f32, 8 significant bits per weight.
    Bf16,
    /// int8 with one absmax scale per row (bitsandbytes' row-wise form): a quarter of the bytes
    /// of f32, each weight within `absmax / 254` of its value.
    Int8,
}

impl HeadPrecision {
    /// The name used on command lines and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            HeadPrecision::Exact => "exact",
            HeadPrecision::Bf16 => "bf16",
            HeadPrecision::Int8 => "int8",
        }
    }
}

impl std::str::FromStr for HeadPrecision {
    type Err = crate::QuantError;
    fn from_str(s: &str) -> Result<Self, crate::QuantError> {
        match s {
            "exact" | "f32" => Ok(HeadPrecision::Exact),
            "bf16" => Ok(HeadPrecision::Bf16),
            "int8" => Ok(HeadPrecision::Int8),
            other => Err(crate::QuantError::Unsupported(format!(
                "unknown head precision {other:?} (expected exact, bf16 or int8)"
            ))),
        }
    }
}

/// A frozen `[out, in]` weight as the decode kernels read it. Built by the checked constructors,
/// so the kernels' unchecked loads stay inside the buffers.
///
/// ```
/// use medify_quant::{GemvWeight, gemv_rows};
/// let w = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]; // [3, 2]
/// let view = GemvWeight::f32(&w, 3, 2).unwrap();
/// let mut out = [0.0f32; 2];
/// gemv_rows(&view, &[1.0, 1.0], 1, 1..3, &mut out); // rows 1 and 2
/// assert_eq!(out, [7.0, 11.0]);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct GemvWeight<'a> {
    kind: Kind<'a>,
    out_features: usize,
    in_features: usize,
}

#[derive(Debug, Clone, Copy)]
enum Kind<'a> {
    F32(&'a [f32]),
    /// bf16 bit patterns.
    Bf16(&'a [u16]),
    /// `code · scale[row]`.
    Int8 {
        codes: &'a [i8],
        scales: &'a [f32],
    },
    Quant4(PackedView<'a>),
}

fn too_short(what: &str, expected: usize, actual: usize) -> crate::QuantError {
    crate::QuantError::LengthMismatch {
        what: what.into(),
        expected,
        actual,
    }
}

impl<'a> GemvWeight<'a> {
    fn numel(out_features: usize, in_features: usize) -> Result<usize, crate::QuantError> {
        out_features
            .checked_mul(in_features)
            .ok_or_else(|| too_short("element count", usize::MAX, 0))
    }

    /// A row-major f32 weight.
    pub fn f32(
        values: &'a [f32],
        out_features: usize,
        in_features: usize,
    ) -> Result<Self, crate::QuantError> {
        let n = Self::numel(out_features, in_features)?;
        if values.len() < n {
            return Err(too_short("f32 weight", n, values.len()));
        }
        Ok(GemvWeight {
            kind: Kind::F32(values),
            out_features,
            in_features,
        })
    }

    /// A row-major bf16 weight, as bit patterns.
    pub fn bf16(
        bits: &'a [u16],
        out_features: usize,
        in_features: usize,
    ) -> Result<Self, crate::QuantError> {
        let n = Self::numel(out_features, in_features)?;
        if bits.len() < n {
            return Err(too_short("bf16 weight", n, bits.len()));
        }
        Ok(GemvWeight {
            kind: Kind::Bf16(bits),
            out_features,
            in_features,
        })
    }

    /// A row-major int8 weight with one scale per row (`w = code · scale`).
    pub fn int8(
        codes: &'a [i8],
        scales: &'a [f32],
        out_features: usize,
        in_features: usize,
    ) -> Result<Self, crate::QuantError> {
        let n = Self::numel(out_features, in_features)?;
        if codes.len() < n {
            return Err(too_short("int8 codes", n, codes.len()));
        }
        if scales.len() < out_features {
            return Err(too_short("int8 row scales", out_features, scales.len()));
        }
        Ok(GemvWeight {
            kind: Kind::Int8 { codes, scales },
            out_features,
            in_features,
        })
    }

    /// A packed 4-bit weight.
    pub fn quant4(view: PackedView<'a>) -> Self {
        GemvWeight {
            kind: Kind::Quant4(view),
            out_features: view.out_features(),
            in_features: view.in_features(),
        }
    }

    /// Rows of the weight.
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Columns of the weight.
    pub fn in_features(&self) -> usize {
        self.in_features
    }
}

/// `out[(r - rows.start) · m + i] = x[i] · W[r]` for every weight row `r` in `rows` and
/// activation row `i < m` (`x` is `[m, in]` row-major; `out` is feature-major, each weight row's
/// `m` results together). Single-threaded: callers split `rows` between their threads.
///
/// # Panics
/// If `x` is not `[m, in]`, `rows` reaches past the weight or `out` is not `rows.len() · m` long.
pub fn gemv_rows(w: &GemvWeight<'_>, x: &[f32], m: usize, rows: Range<usize>, out: &mut [f32]) {
    let k = w.in_features;
    assert!(
        m.checked_mul(k) == Some(x.len()),
        "x must be [m, in_features]"
    );
    assert!(
        rows.start <= rows.end && rows.end <= w.out_features,
        "rows {rows:?} of a weight with {} rows",
        w.out_features
    );
    assert!(
        rows.len().checked_mul(m) == Some(out.len()),
        "out must hold rows × m values"
    );
    if m == 0 || rows.is_empty() {
        return;
    }
    if m >= GEMM_MIN_ROWS
        && let Kind::F32(values) = w.kind
    {
        let rows_values = &values[rows.start * k..rows.end * k];
        crate::host_kernels::gemm_rows_serial(out, x, rows_values, m, rows.len(), k);
        return;
    }
    match w.kind {
        Kind::F32(values) => dense_rows(x, m, k, rows, out, |r| Row::F32(&values[r * k..][..k])),
        Kind::Bf16(bits) => dense_rows(x, m, k, rows, out, |r| Row::Bf16(&bits[r * k..][..k])),
        Kind::Int8 { codes, scales } => dense_rows(x, m, k, rows, out, |r| Row::Int8 {
            codes: &codes[r * k..][..k],
            scale: scales[r],
        }),
        Kind::Quant4(view) => quant4_rows(&view, x, m, rows, out),
    }
}

/// From this many activation rows on, f32 weights are multiplied by a gemm, whose microkernel
/// keeps a block of both operands in registers where dot products re-read `x` for every weight
/// row. (Decoding other forms into f32 tiles for a gemm measured slower than their dot products
/// at 16 rows.)
const GEMM_MIN_ROWS: usize = 8;
/// One weight row, in its stored form.
#[derive(Clone, Copy)]
enum Row<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
    Int8 { codes: &'a [i8], scale: f32 },
}

/// Activation rows the portable kernel handles together per pass over a weight row: their
/// accumulators stay in registers. (The x86 kernels take groups of up to 8 or 16.)
const GROUP: usize = 4;
/// Accumulator lanes: one AVX-512 vector (LLVM keeps `[f32; 16]` partial sums in registers and
/// does not reorder float adds itself).
const LANES: usize = 16;

fn dense_rows<'w>(
    x: &[f32],
    m: usize,
    k: usize,
    rows: Range<usize>,
    out: &mut [f32],
    row: impl Fn(usize) -> Row<'w>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let level = crate::simd::cpu_level();
        if level != crate::simd::CpuLevel::Baseline {
            let wide = level == crate::simd::CpuLevel::Avx512;
            let mut i = 0;
            while i < m {
                // The widest group that fits (AVX2 has 16 registers, AVX-512 32): each
                // converted weight vector serves g activation rows.
                let g = [16, 8, 4, 3, 2, 1]
                    .into_iter()
                    .find(|&g| g <= m - i && (wide || g <= 8))
                    .unwrap_or(1);
                let xs = &x[i * k..(i + g) * k];
                for (j, r) in rows.clone().enumerate() {
                    let dst = &mut out[j * m + i..j * m + i + g];
                    let w = row(r);
                    use dense_x86::{row_avx2 as v3, row_avx512 as v4};
                    // SAFETY: the level's features are present; `row(r)` holds k values,
                    // `xs` g rows of k (the caller asserted the shapes) and `dst` g slots.
                    unsafe {
                        match (wide, g) {
                            (true, 16) => v4::<16, 1>(w, xs, dst),
                            (true, 8) => v4::<8, 2>(w, xs, dst),
                            (true, 4) => v4::<4, 4>(w, xs, dst),
                            (true, 3) => v4::<3, 4>(w, xs, dst),
                            (true, 2) => v4::<2, 4>(w, xs, dst),
                            (true, _) => v4::<1, 4>(w, xs, dst),
                            (false, 8) => v3::<8, 1>(w, xs, dst),
                            (false, 4) => v3::<4, 2>(w, xs, dst),
                            (false, 3) => v3::<3, 2>(w, xs, dst),
                            (false, 2) => v3::<2, 4>(w, xs, dst),
                            (false, _) => v3::<1, 4>(w, xs, dst),
                        }
                    }
                }
                i += g;
            }
            return;
        }
    }
    for (j, r) in rows.enumerate() {
        let w = row(r);
        let mut i = 0;
        while i < m {
            let g = (m - i).min(GROUP);
            let mut acc = [0f32; GROUP];
            dots(w, &x[i * k..(i + g) * k], g, &mut acc);
            out[j * m + i..j * m + i + g].copy_from_slice(&acc[..g]);
            i += g;
        }
    }
}

/// `acc[i] = x[i] · w` for the `g ≤ GROUP` rows of `x`: the portable path, for CPUs without
/// AVX2 (the x86 SIMD copies are `dense_x86`'s).
fn dots(w: Row<'_>, x: &[f32], g: usize, acc: &mut [f32; GROUP]) {
    match w {
        Row::F32(w) => dots_with(w.len(), x, g, acc, 1.0, |j| w[j]),
        Row::Bf16(w) => dots_with(w.len(), x, g, acc, 1.0, |j| {
            f32::from_bits((w[j] as u32) << 16)
        }),
        Row::Int8 { codes, scale } => dots_with(codes.len(), x, g, acc, scale, |j| codes[j] as f32),
    }
}

#[inline(always)]
fn dots_with(
    k: usize,
    x: &[f32],
    g: usize,
    acc: &mut [f32; GROUP],
    scale: f32,
    w: impl Fn(usize) -> f32,
) {
    let mut lanes = [[0f32; LANES]; GROUP];
    let whole = k / LANES * LANES;
    let mut c = 0;
    while c < whole {
        let wv: [f32; LANES] = std::array::from_fn(|l| w(c + l));
        for (i, lane) in lanes.iter_mut().enumerate().take(g) {
            let xs = &x[i * k + c..i * k + c + LANES];
            for l in 0..LANES {
                lane[l] += wv[l] * xs[l];
            }
        }
        c += LANES;
    }
    for (i, (a, lane)) in acc.iter_mut().zip(&lanes).enumerate().take(g) {
        let tail: f32 = (whole..k).map(|j| w(j) * x[i * k + j]).sum();
        *a = (lane.iter().sum::<f32>() + tail) * scale;
    }
}

/// Explicit SIMD dot products of one stored row with up to 16 activation rows: loops
/// over closures (the portable `dots`) do not vectorize reliably.
#[cfg(target_arch = "x86_64")]
mod dense_x86 {
    use super::Row;
    use std::arch::x86_64::*;

    macro_rules! row_kernel {
        ($name:ident, $features:literal, $vec:ty, $lanes:literal, $zero:ident, $fma:ident,
         $loadx:ident, $add:ident, $store:ident, |$c:ident| [$($load:tt)*]) => {
            /// `out[i] = x[i] · w` for the `G` rows of `x` (`G · k` values), with `A ≤ 4`
            /// accumulators per row (fewer for wide groups, so that all stay in registers).
            ///
            /// # Safety
            /// The CPU has the named features; `x.len() == G · k` with `k` the row's length and
            /// `out.len() >= G`.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name<const G: usize, const A: usize>(
                w: Row<'_>,
                x: &[f32],
                out: &mut [f32],
            ) {
                let g = G;
                let (k, scale) = match w {
                    Row::F32(v) => (v.len(), 1.0),
                    Row::Bf16(v) => (v.len(), 1.0),
                    Row::Int8 { codes, scale } => (codes.len(), scale),
                };
                let mut acc = [[$zero(); A]; G];
                // A macro, not a closure, so the loads inline into this function's features.
                macro_rules! load {
                    ($at:expr) => {{
                        let $c: usize = $at;
                        match w {
                            $($load)*
                        }
                    }};
                }
                // SAFETY: every x load reads x[i·k + c .. + LANES] with c + LANES <= k.
                unsafe {
                    let xp = x.as_ptr();
                    let mut c = 0;
                    while c + 4 * $lanes <= k {
                        for u in 0..4 {
                            let wv: $vec = load!(c + $lanes * u);
                            for i in 0..g {
                                let xv = $loadx(xp.add(i * k + c + $lanes * u));
                                acc[i][u % A] = $fma(wv, xv, acc[i][u % A]);
                            }
                        }
                        c += 4 * $lanes;
                    }
                    while c + $lanes <= k {
                        let wv: $vec = load!(c);
                        for i in 0..g {
                            acc[i][0] = $fma(wv, $loadx(xp.add(i * k + c)), acc[i][0]);
                        }
                        c += $lanes;
                    }
                    for i in 0..g {
                        let mut v = acc[i][0];
                        for a in &acc[i][1..] {
                            v = $add(v, *a);
                        }
                        let mut lanes = [0f32; $lanes];
                        $store(lanes.as_mut_ptr(), v);
                        let mut total: f32 = lanes.iter().sum();
                        for cc in c..k {
                            let wv = match w {
                                Row::F32(v) => v[cc],
                                Row::Bf16(v) => f32::from_bits((v[cc] as u32) << 16),
                                Row::Int8 { codes, .. } => codes[cc] as f32,
                            };
                            total += wv * x[i * k + cc];
                        }
                        out[i] = total * scale;
                    }
                }
            }
        };
    }

    row_kernel!(row_avx512, "avx512f,avx512bw,avx512vl,avx2,fma", __m512, 16, _mm512_setzero_ps,
        _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_add_ps, _mm512_storeu_ps, |c| [
        Row::F32(v) => _mm512_loadu_ps(v.as_ptr().add(c)),
        Row::Bf16(v) => _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256(v.as_ptr().add(c) as *const __m256i)),
            16,
        )),
        Row::Int8 { codes, .. } => _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
            codes.as_ptr().add(c) as *const __m128i,
        ))),
    ]);

    row_kernel!(row_avx2, "avx2,fma", __m256, 8, _mm256_setzero_ps, _mm256_fmadd_ps,
        _mm256_loadu_ps, _mm256_add_ps, _mm256_storeu_ps, |c| [
        Row::F32(v) => _mm256_loadu_ps(v.as_ptr().add(c)),
        Row::Bf16(v) => _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128(v.as_ptr().add(c) as *const __m128i)),
            16,
        )),
        Row::Int8 { codes, .. } => _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
            codes.as_ptr().add(c) as *const __m128i,
        ))),
    ]);
}

/// 4-bit rows: the AVX-512 or AVX2 kernel where the shapes allow it (64-element chunks that
/// never straddle a block), else the streaming kernels of the 4-bit matmul.
fn quant4_rows(w: &PackedView<'_>, x: &[f32], m: usize, rows: Range<usize>, out: &mut [f32]) {
    quant4_rows_at(crate::simd::cpu_level(), w, x, m, rows, out)
}

/// [`quant4_rows`] with the kernel chosen for `level` (tests run every level the CPU has).
fn quant4_rows_at(
    level: crate::simd::CpuLevel,
    w: &PackedView<'_>,
    x: &[f32],
    m: usize,
    rows: Range<usize>,
    out: &mut [f32],
) {
    let k = w.in_features();
    #[cfg(target_arch = "x86_64")]
    // At one activation row the AVX2 kernel loses to the streaming kernel's `pshufb` decode
    // (its blend costs 3 uops on Intel cores: 4.3 against 4.7 GB/s on one Sapphire Rapids core);
    // from two rows on it wins (1.4–1.5x at 4), since each decoded weight serves them all.
    let simd = match level {
        crate::simd::CpuLevel::Avx512 => true,
        crate::simd::CpuLevel::Avx2 => m > 1,
        crate::simd::CpuLevel::Baseline => false,
    };
    if simd && k.is_multiple_of(64) && w.blocksize().is_multiple_of(64) {
        let wide = level == crate::simd::CpuLevel::Avx512;
        PERMUTED.with(|cell| {
            let mut xp = cell.take();
            xp.clear();
            xp.resize(x.len(), 0.0);
            for (src, dst) in x.chunks_exact(64).zip(xp.chunks_exact_mut(64)) {
                if wide {
                    avx512::permute_chunk(src, dst);
                } else {
                    avx2::permute_chunk(src, dst);
                }
            }
            let mut i = 0;
            while i < m {
                // The widest group that fits: each decoded weight vector serves g rows.
                let g = [16, 8, 4, 3, 2, 1]
                    .into_iter()
                    .find(|&g| g <= m - i && (wide || g <= 8))
                    .unwrap_or(1);
                let xs = &xp[i * k..(i + g) * k];
                // SAFETY: the level's features are present (cpu_level never reports more than
                // the CPU has); k and the blocksize are multiples of 64, `xs` holds g rows of k,
                // rows lie inside the weight (asserted by the caller) and the view's buffers
                // were checked against its shape when it was built.
                unsafe {
                    let r = rows.clone();
                    match (wide, g) {
                        (true, 16) => avx512::rows::<16, 1>(w, xs, r, out, m, i),
                        (true, 8) => avx512::rows::<8, 2>(w, xs, r, out, m, i),
                        (true, 4) => avx512::rows::<4, 4>(w, xs, r, out, m, i),
                        (true, 3) => avx512::rows::<3, 4>(w, xs, r, out, m, i),
                        (true, 2) => avx512::rows::<2, 4>(w, xs, r, out, m, i),
                        (true, _) => avx512::rows::<1, 4>(w, xs, r, out, m, i),
                        (false, 8) => avx2::rows::<8, 1>(w, xs, r, out, m, i),
                        (false, 4) => avx2::rows::<4, 2>(w, xs, r, out, m, i),
                        (false, 3) => avx2::rows::<3, 2>(w, xs, r, out, m, i),
                        (false, 2) => avx2::rows::<2, 2>(w, xs, r, out, m, i),
                        (false, _) => avx2::rows::<1, 2>(w, xs, r, out, m, i),
                    }
                }
                i += g;
            }
            cell.set(xp);
        });
        return;
    }
    let _ = level;
    crate::host_kernels::stream_rows(x, m, w, rows, out);
}

thread_local! {
    /// The activations in the SIMD kernel's element order, reused across calls.
    static PERMUTED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The AVX2 4-bit kernel. AVX2 has no 16-entry float lookup, so each 8-wide code vector is
/// looked up twice with `vpermps` (codes 0–7 and 8–15, scaled per block) and blended on the
/// code's top bit. The 32 bytes of a 64-element chunk are read as 8 dwords; nibble `j` of every
/// dword is one vector, so indices come from shifts alone (`vpermps` reads the low 3 bits, the
/// blend the sign bit), with no byte-to-dword widening.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use crate::host_kernels::PackedView;

    /// Vector `j` holds nibble `j` of dwords 0–7, that is byte `4l + j / 2` of the chunk: its
    /// low nibble (odd element) for even `j`, its high nibble (even element) for odd `j`.
    pub(super) fn permute_chunk(src: &[f32], dst: &mut [f32]) {
        for j in 0..8 {
            for l in 0..8 {
                dst[8 * j + l] = src[2 * (4 * l + j / 2) + 1 - j % 2];
            }
        }
    }

    /// Rows `rows` of `w` against the `G` permuted activation rows `xp` (`[G, k]`); results go
    /// to `out[(r - rows.start) · m + i0 + i]`.
    ///
    /// `A ≤ 2` accumulators per activation row, as in the AVX-512 kernel.
    ///
    /// # Safety
    /// AVX2 and FMA present; `k % 64 == 0`, `blocksize % 64 == 0`; `rows` inside `w`;
    /// `xp.len() == G · k`; `out.len() >= rows.len() · m` with `i0 + G <= m`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows<const G: usize, const A: usize>(
        w: &PackedView<'_>,
        xp: &[f32],
        rows: Range<usize>,
        out: &mut [f32],
        m: usize,
        i0: usize,
    ) {
        let k = w.in_features();
        let bs = w.blocksize();
        let bytes = w.bytes().as_ptr();
        let absmax = w.scales();
        // SAFETY: the caller's contract; every load below reads bytes[e/2 .. e/2 + 32] for a
        // chunk start e inside the weight, or xp[i·k + 64c ..][..64] for i < G, c < k / 64.
        unsafe {
            let code = w.code().as_ptr();
            let (low, high) = (_mm256_loadu_ps(code), _mm256_loadu_ps(code.add(8)));
            let chunks = k / 64;
            for (j, r) in rows.enumerate() {
                let mut acc = [[_mm256_setzero_ps(); A]; G];
                let (mut lo_t, mut hi_t) = (low, high);
                for c in 0..chunks {
                    let e = r * k + 64 * c;
                    if c == 0 || e.is_multiple_of(bs) {
                        let s = _mm256_set1_ps(absmax.get(e / bs));
                        (lo_t, hi_t) = (_mm256_mul_ps(low, s), _mm256_mul_ps(high, s));
                    }
                    let raw = _mm256_loadu_si256(bytes.add(e / 2) as *const __m256i);
                    macro_rules! nibble {
                        ($j:literal) => {{
                            let idx = _mm256_srli_epi32::<{ 4 * $j }>(raw);
                            let top =
                                _mm256_castsi256_ps(_mm256_slli_epi32::<{ 28 - 4 * $j }>(raw));
                            let wv = _mm256_blendv_ps(
                                _mm256_permutevar8x32_ps(lo_t, idx),
                                _mm256_permutevar8x32_ps(hi_t, idx),
                                top,
                            );
                            for (i, a) in acc.iter_mut().enumerate() {
                                let xv = _mm256_loadu_ps(xp.as_ptr().add(i * k + 64 * c + 8 * $j));
                                a[$j % A] = _mm256_fmadd_ps(wv, xv, a[$j % A]);
                            }
                        }};
                    }
                    nibble!(0);
                    nibble!(1);
                    nibble!(2);
                    nibble!(3);
                    nibble!(4);
                    nibble!(5);
                    nibble!(6);
                    nibble!(7);
                }
                for (i, a) in acc.iter().enumerate() {
                    let mut s = a[0];
                    for v in &a[1..] {
                        s = _mm256_add_ps(s, *v);
                    }
                    let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
                    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
                    let h = _mm_add_ss(h, _mm_movehdup_ps(h));
                    *out.get_unchecked_mut(j * m + i0 + i) = _mm_cvtss_f32(h);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use crate::host_kernels::PackedView;

    /// The kernel reads a 64-element chunk's 32 bytes as high nibbles (even elements) and low
    /// nibbles (odd elements), 16 at a time: the activations are reordered once to match.
    pub(super) fn permute_chunk(src: &[f32], dst: &mut [f32]) {
        for v in 0..4 {
            let (odd, half) = (v / 2, v % 2);
            for l in 0..16 {
                dst[16 * v + l] = src[32 * half + 2 * l + odd];
            }
        }
    }

    /// Rows `rows` of `w` against the `G` permuted activation rows `xp` (`[G, k]`); results go
    /// to `out[(r - rows.start) · m + i0 + i]`. `A ≤ 4` accumulators per activation row: fewer
    /// for wide groups, whose rows' independent sums already hide the FMA latency, so that all
    /// stay in registers.
    ///
    /// # Safety
    /// AVX-512F/BW/VL and FMA present; `k % 64 == 0`, `blocksize % 64 == 0`; `rows` inside `w`;
    /// `xp.len() == G · k`; `out.len() >= rows.len() · m` with `i0 + G <= m`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub(super) unsafe fn rows<const G: usize, const A: usize>(
        w: &PackedView<'_>,
        xp: &[f32],
        rows: Range<usize>,
        out: &mut [f32],
        m: usize,
        i0: usize,
    ) {
        let k = w.in_features();
        let bs = w.blocksize();
        let bytes = w.bytes().as_ptr();
        let absmax = w.scales();
        // SAFETY: the caller's contract; every load below reads bytes[e/2 .. e/2 + 32] for a
        // chunk start e inside the weight, or xp[i·k + 64c ..][..64] for i < G, c < k / 64.
        unsafe {
            let table = _mm512_loadu_ps(w.code().as_ptr());
            let low4 = _mm256_set1_epi8(0x0F);
            let chunks = k / 64;
            for (j, r) in rows.enumerate() {
                let mut acc = [[_mm512_setzero_ps(); A]; G];
                let mut lut = table;
                for c in 0..chunks {
                    let e = r * k + 64 * c;
                    if c == 0 || e.is_multiple_of(bs) {
                        lut = _mm512_mul_ps(table, _mm512_set1_ps(absmax.get(e / bs)));
                    }
                    let raw = _mm256_loadu_si256(bytes.add(e / 2) as *const __m256i);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
                    let lo = _mm256_and_si256(raw, low4);
                    let idx = [
                        _mm512_cvtepu8_epi32(_mm256_castsi256_si128(hi)),
                        _mm512_cvtepu8_epi32(_mm256_extracti128_si256(hi, 1)),
                        _mm512_cvtepu8_epi32(_mm256_castsi256_si128(lo)),
                        _mm512_cvtepu8_epi32(_mm256_extracti128_si256(lo, 1)),
                    ];
                    // (no array `map`: a closure would not inherit the target features)
                    let wv = [
                        _mm512_permutexvar_ps(idx[0], lut),
                        _mm512_permutexvar_ps(idx[1], lut),
                        _mm512_permutexvar_ps(idx[2], lut),
                        _mm512_permutexvar_ps(idx[3], lut),
                    ];
                    for (i, a) in acc.iter_mut().enumerate() {
                        let xc = xp.as_ptr().add(i * k + 64 * c);
                        for (v, wv) in wv.iter().enumerate() {
                            let av = &mut a[v % A];
                            *av = _mm512_fmadd_ps(*wv, _mm512_loadu_ps(xc.add(16 * v)), *av);
                        }
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    let mut s = a[0];
                    for v in &a[1..] {
                        s = _mm512_add_ps(s, *v);
                    }
                    *out.get_unchecked_mut(j * m + i0 + i) = _mm512_reduce_add_ps(s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Int8Weight, Packed4Bit, QuantConfig, Scales};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn reference(x: &[f32], m: usize, dense: &[f32], k: usize, rows: Range<usize>) -> Vec<f32> {
        let mut out = Vec::new();
        for r in rows {
            for i in 0..m {
                let d: f64 = (0..k)
                    .map(|c| x[i * k + c] as f64 * dense[r * k + c] as f64)
                    .sum();
                out.push(d as f32);
            }
        }
        out
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    /// Every storage form, every group size up to 6 rows (two groups), row ranges that start
    /// mid-weight, shapes with and without 64-element chunks, plain and nested scales.
    #[test]
    fn every_form_matches_a_f64_reference() {
        for (n, k) in [(40, 128), (17, 200), (9, 64), (33, 576)] {
            let dense = values(n * k, (n * k) as u32);
            let rows = 3..n;
            for m in [1, 2, 3, 4, 5, 6, 8, 11, 16, 29] {
                let x = values(m * k, m as u32 + 7);
                let mut out = vec![0f32; rows.len() * m];
                let want = reference(&x, m, &dense, k, rows.clone());
                gemv_rows(
                    &GemvWeight::f32(&dense, n, k).unwrap(),
                    &x,
                    m,
                    rows.clone(),
                    &mut out,
                );
                close(&out, &want, "f32");

                let bf: Vec<u16> = dense.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
                let bf_dense: Vec<f32> = bf
                    .iter()
                    .map(|b| f32::from_bits((*b as u32) << 16))
                    .collect();
                gemv_rows(
                    &GemvWeight::bf16(&bf, n, k).unwrap(),
                    &x,
                    m,
                    rows.clone(),
                    &mut out,
                );
                close(&out, &reference(&x, m, &bf_dense, k, rows.clone()), "bf16");

                let q8 = Int8Weight::quantize(&dense, [n, k]).unwrap();
                let scales = q8.row_scales();
                let view = GemvWeight::int8(q8.codes(), &scales, n, k).unwrap();
                gemv_rows(&view, &x, m, rows.clone(), &mut out);
                close(
                    &out,
                    &reference(&x, m, &q8.dequantize(), k, rows.clone()),
                    "int8",
                );

                for double in [false, true] {
                    let cfg = QuantConfig::default().with_double_quant(double);
                    let p = Packed4Bit::quantize(&dense, &[n, k], &cfg).unwrap();
                    let words = crate::host_kernels::words_from_bytes(&p.data);
                    let decoded = p.dequantize();
                    let plain = p.state.absmax.to_f32();
                    let (codes, nested, table);
                    let scales = match &p.state.absmax {
                        crate::Absmax::Double(d) => {
                            (codes, nested) = (&d.codes, &d.nested_absmax);
                            table = std::array::from_fn::<f32, 256, _>(|i| d.code[i]);
                            Scales::Nested {
                                codes,
                                nested_absmax: nested,
                                code: &table,
                                offset: d.offset,
                            }
                        }
                        crate::Absmax::Plain(_) => Scales::F32(&plain),
                    };
                    assert_eq!(double, matches!(scales, Scales::Nested { .. }));
                    let view = crate::PackedView::new(
                        &words,
                        scales,
                        p.state.quant_type.code(),
                        n,
                        k,
                        p.state.blocksize,
                    )
                    .unwrap();
                    gemv_rows(&GemvWeight::quant4(view), &x, m, rows.clone(), &mut out);
                    let want = reference(&x, m, &decoded, k, rows.clone());
                    close(&out, &want, "4-bit");
                    for level in levels() {
                        out.fill(f32::NAN);
                        quant4_rows_at(level, &view, &x, m, rows.clone(), &mut out);
                        close(&out, &want, &format!("4-bit at {level:?}"));
                    }
                }
            }
        }
    }

    /// Every kernel level this CPU can run, from the best down.
    fn levels() -> Vec<crate::simd::CpuLevel> {
        use crate::simd::CpuLevel::*;
        match crate::simd::cpu_level() {
            Avx512 => vec![Avx512, Avx2, Baseline],
            Avx2 => vec![Avx2, Baseline],
            Baseline => vec![Baseline],
        }
    }

    #[test]
    fn short_buffers_are_refused() {
        assert!(GemvWeight::f32(&[0.0; 5], 2, 3).is_err());
        assert!(GemvWeight::bf16(&[0; 5], 2, 3).is_err());
        assert!(GemvWeight::int8(&[0; 6], &[1.0], 2, 3).is_err());
        assert!(GemvWeight::f32(&[0.0; 4], usize::MAX, 2).is_err());
    }
}
