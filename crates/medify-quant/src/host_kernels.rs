//! Fused 4-bit matmul on the host: `y = x @ W^T` straight from packed codes.
//!
//! Small batches (decode) stream the packed weight once and decode 8 codes per `u32` word in
//! registers (AVX2 + FMA where the CPU has them); they never hold a dense row. Larger batches
//! (prefill, training) run gemm's microkernels on weight panels decoded straight into cache
//! (`q4_gemm`), at dense gemm's speed. Where gemm has no microkernel for the CPU, the weight is
//! decoded into a per-thread scratch buffer reused across calls and handed to one `gemm`.

use rayon::prelude::*;

/// Batches up to this many rows use the streaming kernel; above it, decode + gemm.
pub const STREAMING_MAX_ROWS: usize = 8;
/// Output features decoded per parallel task.
const TILE_ROWS: usize = 64;
/// Output features handled by one parallel task in the streaming path.
const STREAM_ROWS_PER_TASK: usize = 32;

/// A packed 4-bit weight `[out_features, in_features]` as the kernels read it. Built only by
/// [`PackedView::new`], which checks every buffer against the shape once, so the SIMD kernels'
/// unchecked loads stay inside the buffers whatever safe code passes in.
///
/// ```
/// use medify_quant::{PackedView, Scales, QuantType, matmul_4bit};
/// let words = [0x7777_7777u32; 2]; // 16 codes of 7 (NF4's zero) for a [2, 8] weight
/// let view = PackedView::new(&words, Scales::F32(&[1.0]), QuantType::Nf4.code(), 2, 8, 64).unwrap();
/// let mut out = [1.0f32; 2];
/// matmul_4bit(&[1.0; 8], 1, &view, &mut out);
/// assert_eq!(out, [0.0, 0.0]);
/// // a shape the buffers cannot hold is refused
/// assert!(PackedView::new(&words, Scales::F32(&[1.0]), QuantType::Nf4.code(), 4, 8, 64).is_err());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct PackedView<'a> {
    /// bitsandbytes bytes as little-endian `u32` words.
    words: &'a [u32],
    /// One scale per block.
    absmax: Scales<'a>,
    /// The 16 code values.
    code: &'a [f32; 16],
    /// Rows of the weight.
    out_features: usize,
    /// Columns of the weight.
    in_features: usize,
    /// Elements per block.
    blocksize: usize,
}

impl<'a> PackedView<'a> {
    /// Checks that `words` hold `out_features * in_features` codes and `absmax` one scale per
    /// block of `blocksize` (for nested scales: one code per block and one nested scale per
    /// 256 blocks). Longer buffers are fine (devices pad them).
    pub fn new(
        words: &'a [u32],
        absmax: Scales<'a>,
        code: &'a [f32; 16],
        out_features: usize,
        in_features: usize,
        blocksize: usize,
    ) -> Result<PackedView<'a>, crate::QuantError> {
        let short = |what: &str, expected: usize, actual: usize| {
            Err(crate::QuantError::LengthMismatch {
                what: format!("4-bit weight [{out_features}, {in_features}]: {what}"),
                expected,
                actual,
            })
        };
        if blocksize == 0 {
            return Err(crate::QuantError::InvalidBlocksize(0));
        }
        let Some(numel) = out_features.checked_mul(in_features) else {
            return short("element count", usize::MAX, 0);
        };
        if words.len() < numel.div_ceil(8) {
            return short("packed words", numel.div_ceil(8), words.len());
        }
        let blocks = numel.div_ceil(blocksize);
        match absmax {
            Scales::F32(a) if a.len() < blocks => return short("absmax", blocks, a.len()),
            Scales::Nested {
                codes,
                nested_absmax,
                ..
            } => {
                if codes.len() < blocks {
                    return short("absmax codes", blocks, codes.len());
                }
                let nested = blocks.div_ceil(crate::NESTED_BLOCKSIZE);
                if nested_absmax.len() < nested {
                    return short("nested absmax", nested, nested_absmax.len());
                }
            }
            Scales::F32(_) => {}
        }
        Ok(PackedView {
            words,
            absmax,
            code,
            out_features,
            in_features,
            blocksize,
        })
    }

    /// Rows of the weight.
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Columns of the weight.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Elements per block.
    pub fn blocksize(&self) -> usize {
        self.blocksize
    }

    /// The packed codes as bytes (bitsandbytes order: high nibble first).
    pub(crate) fn bytes(&self) -> &'a [u8] {
        bytemuck::cast_slice(self.words)
    }

    /// The per-block scales.
    pub(crate) fn scales(&self) -> Scales<'a> {
        self.absmax
    }

    /// The 16 code values.
    pub(crate) fn code(&self) -> &'a [f32; 16] {
        self.code
    }

    /// The same weight with other scales (e.g. nested instead of decoded), checked again.
    pub fn with_scales(&self, absmax: Scales<'a>) -> Result<PackedView<'a>, crate::QuantError> {
        PackedView::new(
            self.words,
            absmax,
            self.code,
            self.out_features,
            self.in_features,
            self.blocksize,
        )
    }
}

/// Per-block scales as the kernels read them: plain f32, or double-quantized and decoded on
/// the fly (one lookup, multiply and add per block of 64+ weights, so no decoded copy exists).
#[derive(Debug, Clone, Copy)]
pub enum Scales<'a> {
    /// One f32 per block.
    F32(&'a [f32]),
    /// `code[codes[b]] * nested_absmax[b / 256] + offset`, multiply then add.
    Nested {
        /// One 8-bit code per block.
        codes: &'a [u8],
        /// One scale per 256 codes.
        nested_absmax: &'a [f32],
        /// The 256-entry nested code table.
        code: &'a [f32; 256],
        /// The mean subtracted before quantizing.
        offset: f32,
    },
}

impl Scales<'_> {
    /// Scale of block `b`.
    #[inline(always)]
    pub fn get(&self, b: usize) -> f32 {
        match *self {
            Scales::F32(a) => a[b],
            Scales::Nested {
                codes,
                nested_absmax,
                code,
                offset,
            } => {
                let scaled = code[codes[b] as usize] * nested_absmax[b / crate::NESTED_BLOCKSIZE];
                scaled + offset
            }
        }
    }
}

/// Packed bytes as the little-endian `u32` words kernels read (the last word zero-padded).
pub(crate) fn words_from_bytes(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect()
}

/// Code of flat element `e`.
#[inline(always)]
fn nibble(words: &[u32], e: usize) -> usize {
    ((words[e / 8] >> (4 * ((e % 8) ^ 1))) & 15) as usize
}

impl PackedView<'_> {
    /// Decodes rows `[r0, r0 + rows)` into `out` (`rows * in_features` values).
    ///
    /// # Panics
    /// If the rows lie outside the weight or `out` is shorter than they are.
    pub fn decode_rows(&self, r0: usize, rows: usize, out: &mut [f32]) {
        assert!(
            r0.checked_add(rows)
                .is_some_and(|end| end <= self.out_features),
            "decode_rows: rows {r0}..{r0}+{rows} of a weight with {} rows",
            self.out_features
        );
        let k = self.in_features;
        self.decode_span(r0 * k, &mut out[..rows * k]);
    }

    /// Decodes the `out.len()` values from flat element `start` on (row-major order), whatever
    /// rows and blocks the span crosses: the one decoder behind [`PackedView::decode_rows`] and
    /// the panels the 4-bit gemm decodes straight into cache.
    ///
    /// # Panics
    /// If the span reaches past the weight.
    pub(crate) fn decode_span(&self, start: usize, out: &mut [f32]) {
        let end = start + out.len();
        assert!(
            end <= self.out_features * self.in_features,
            "decode_span: elements {start}..{end} of a weight with {}",
            self.out_features * self.in_features
        );
        if !start.is_multiple_of(2) || !end.is_multiple_of(2) {
            // The span starts or ends mid-byte: decode element by element.
            for (i, v) in out.iter_mut().enumerate() {
                let e = start + i;
                *v = self.code[nibble(self.words, e)] * self.absmax.get(e / self.blocksize);
            }
            return;
        }
        // Byte by byte, with the 16 codes pre-scaled once per block segment (the same single
        // f32 multiply as decoding each value, so results are bit-identical).
        let bytes: &[u8] = bytemuck::cast_slice(self.words);
        let mut e = start;
        while e < end {
            let block = e / self.blocksize;
            let seg_end = ((block + 1) * self.blocksize).min(end);
            let scale = self.absmax.get(block);
            let lut = self.code.map(|c| c * scale);
            decode_pairs(
                &mut out[e - start..seg_end - start],
                &bytes[e / 2..seg_end / 2],
                &lut,
            );
            e = seg_end;
        }
    }

    /// Decodes the whole weight into `out` (`out_features * in_features` values), in parallel.
    pub fn decode_all(&self, out: &mut [f32]) {
        let k = self.in_features.max(1);
        out.par_chunks_mut(TILE_ROWS * k)
            .enumerate()
            .for_each(|(t, chunk)| self.decode_rows(t * TILE_ROWS, chunk.len() / k, chunk));
    }
}

/// `out[2i] = lut[bytes[i] >> 4]`, `out[2i + 1] = lut[bytes[i] & 15]` (high nibble first, as
/// bitsandbytes packs). With AVX-512 the 16-entry table sits in one register and 32 values are
/// looked up per step with two `vpermps`.
fn decode_pairs(out: &mut [f32], bytes: &[u8], lut: &[f32; 16]) {
    let n = bytes.len().min(out.len() / 2);
    let (out, bytes) = (&mut out[..2 * n], &bytes[..n]);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    match crate::simd::cpu_level() {
        // SAFETY (both): the level's features are present; the kernels read
        // `bytes[..16 * (n / 16)]` and write `out[..32 * (n / 16)]`, both within the slices
        // (lengths fixed just above).
        crate::simd::CpuLevel::Avx512 => done = unsafe { avx512_decode::pairs(out, bytes, lut) },
        crate::simd::CpuLevel::Avx2 => done = unsafe { avx512_decode::pairs_avx2(out, bytes, lut) },
        crate::simd::CpuLevel::Baseline => {}
    }
    for (pair, &b) in out[2 * done..].chunks_exact_mut(2).zip(&bytes[done..]) {
        pair[0] = lut[(b >> 4) as usize];
        pair[1] = lut[(b & 15) as usize];
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512_decode {
    use std::arch::x86_64::*;

    /// Decodes whole groups of 16 bytes; returns how many bytes it decoded. The caller
    /// guarantees AVX-512F and `out.len() >= 2 * bytes.len()`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pairs(out: &mut [f32], bytes: &[u8], lut: &[f32; 16]) -> usize {
        let groups = bytes.len() / 16;
        assert!(out.len() >= 32 * groups);
        // SAFETY: every load reads bytes[16g..16g + 16] and every store writes
        // out[32g..32g + 32] for g < groups, in bounds by the assertion above.
        unsafe {
            let table = _mm512_loadu_ps(lut.as_ptr());
            let low4 = _mm_set1_epi8(0x0F);
            for g in 0..groups {
                let x = _mm_loadu_si128(bytes.as_ptr().add(16 * g) as *const __m128i);
                let hi = _mm_and_si128(_mm_srli_epi16(x, 4), low4);
                let lo = _mm_and_si128(x, low4);
                // [hi0, lo0, hi1, lo1, ...]: the order of the values.
                let first = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(hi, lo));
                let second = _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(hi, lo));
                let dst = out.as_mut_ptr().add(32 * g);
                _mm512_storeu_ps(dst, _mm512_permutexvar_ps(first, table));
                _mm512_storeu_ps(dst.add(16), _mm512_permutexvar_ps(second, table));
            }
        }
        16 * groups
    }

    /// [`pairs`] with AVX2: no 16-entry float lookup there, so each 8 codes are looked up in
    /// both halves of the table (`vpermps` reads their low 3 bits) and blended on bit 3. The
    /// caller guarantees AVX2 and `out.len() >= 2 * bytes.len()`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn pairs_avx2(out: &mut [f32], bytes: &[u8], lut: &[f32; 16]) -> usize {
        let groups = bytes.len() / 16;
        assert!(out.len() >= 32 * groups);
        // SAFETY: as in `pairs`.
        unsafe {
            let low = _mm256_loadu_ps(lut.as_ptr());
            let high = _mm256_loadu_ps(lut.as_ptr().add(8));
            let low4 = _mm_set1_epi8(0x0F);
            for g in 0..groups {
                let x = _mm_loadu_si128(bytes.as_ptr().add(16 * g) as *const __m128i);
                let hi = _mm_and_si128(_mm_srli_epi16(x, 4), low4);
                let lo = _mm_and_si128(x, low4);
                let first = _mm_unpacklo_epi8(hi, lo);
                let second = _mm_unpackhi_epi8(hi, lo);
                let dst = out.as_mut_ptr().add(32 * g);
                for (q, codes) in [
                    first,
                    _mm_srli_si128::<8>(first),
                    second,
                    _mm_srli_si128::<8>(second),
                ]
                .into_iter()
                .enumerate()
                {
                    let idx = _mm256_cvtepu8_epi32(codes);
                    let top = _mm256_castsi256_ps(_mm256_slli_epi32::<28>(idx));
                    let v = _mm256_blendv_ps(
                        _mm256_permutevar8x32_ps(low, idx),
                        _mm256_permutevar8x32_ps(high, idx),
                        top,
                    );
                    _mm256_storeu_ps(dst.add(8 * q), v);
                }
            }
        }
        16 * groups
    }
}

/// `out[m, n] = x[m, k] @ W^T` for a packed `W [n, k]`; `out` is overwritten.
///
/// # Panics
/// If `x` is not `[m, in_features]` or `out` not `[m, out_features]`.
pub fn matmul_4bit(x: &[f32], m: usize, w: &PackedView<'_>, out: &mut [f32]) {
    let (n, k) = (w.out_features, w.in_features);
    assert!(
        m.checked_mul(k) == Some(x.len()),
        "x must be [m, in_features]"
    );
    assert!(
        m.checked_mul(n) == Some(out.len()),
        "out must be [m, out_features]"
    );
    if m == 0 || n == 0 {
        return;
    }
    if m <= STREAMING_MAX_ROWS {
        decode_rows_matmul(x, m, w, out);
    } else if !crate::q4_gemm::forward(x, m, w, out) {
        decoded_gemm(x, m, w, out);
    }
}

/// Decode-phase kernel: the decoder's row kernels ([`crate::gemv_rows`]: the AVX-512 lookup,
/// AVX2 blend or streaming kernels, each weight byte read once for all `m` rows), each rayon
/// task taking a range of output features.
fn decode_rows_matmul(x: &[f32], m: usize, w: &PackedView<'_>, out: &mut [f32]) {
    let n = w.out_features;
    let weight = crate::GemvWeight::quant4(*w);
    // A few tasks per thread: enough to balance, few enough that each one's per-call setup
    // (permuting x for its kernel) stays small beside its rows.
    let per_task = n
        .div_ceil(4 * rayon::current_num_threads().max(1))
        .max(STREAM_ROWS_PER_TASK);
    let run = |by_feature: &mut [f32]| {
        by_feature
            .par_chunks_mut(per_task * m)
            .enumerate()
            .for_each(|(task, chunk)| {
                let r0 = task * per_task;
                crate::gemv_rows(&weight, x, m, r0..r0 + chunk.len() / m, chunk);
            });
    };
    if m == 1 {
        // Feature-major and row-major are the same layout.
        run(out);
        return;
    }
    let mut by_feature = vec![0f32; n * m];
    run(&mut by_feature);
    for r in 0..n {
        for mi in 0..m {
            out[mi * n + r] = by_feature[r * m + mi];
        }
    }
}

/// Rows `rows` of `w` against `m` activation rows, single-threaded, into a feature-major `out`
/// (`out[(r - rows.start) · m + i]`): the streaming kernels below for callers that split the
/// rows between threads themselves ([`crate::gemv_rows`]).
pub(crate) fn stream_rows(
    x: &[f32],
    m: usize,
    w: &PackedView<'_>,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let k = w.in_features;
    #[cfg(target_arch = "x86_64")]
    if m == 1 && k.is_multiple_of(64) && w.blocksize.is_multiple_of(64) && avx2_available() {
        thread_local! {
            static PERMUTED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
        }
        let mut xp = PERMUTED.with(std::cell::Cell::take);
        permute_for_chunks(x, &mut xp);
        for (o, r) in out.iter_mut().zip(rows) {
            // SAFETY: as in gemv_chunked: AVX2/FMA present, k and blocksize multiples of 64,
            // r inside the weight (the caller asserted the range).
            *o = unsafe { avx2::row_dot_chunked(&xp, w, r) };
        }
        PERMUTED.with(|cell| cell.set(xp));
        return;
    }
    let mut acc = [0f32; STREAMING_MAX_ROWS];
    for (j, r) in rows.enumerate() {
        let mut i = 0;
        while i < m {
            let g = (m - i).min(STREAMING_MAX_ROWS);
            let xs = &x[i * k..(i + g) * k];
            if k.is_multiple_of(8) {
                row_dots(xs, g, w, r, &mut acc[..g]);
            } else {
                for (a, xr) in acc[..g].iter_mut().zip(xs.chunks_exact(k)) {
                    *a = (0..k)
                        .map(|c| {
                            xr[c]
                                * w.code[nibble(w.words, r * k + c)]
                                * w.absmax.get((r * k + c) / w.blocksize)
                        })
                        .sum();
                }
            }
            out[j * m + i..j * m + i + g].copy_from_slice(&acc[..g]);
            i += g;
        }
    }
}

/// `x` (a multiple of 64 long) in the element order of [`avx2::row_dot_chunked`]'s lanes.
#[cfg(target_arch = "x86_64")]
fn permute_for_chunks(x: &[f32], xp: &mut Vec<f32>) {
    xp.clear();
    xp.resize(x.len(), 0.0);
    for (src, dst) in x.chunks_exact(64).zip(xp.chunks_exact_mut(64)) {
        for (v, lanes) in dst.chunks_exact_mut(8).enumerate() {
            let (odd, f) = (v / 4, v % 4);
            for (t, slot) in lanes.iter_mut().enumerate() {
                // Byte position of lane t after the in-lane unpacks (see row_dot_chunked).
                let p = if t < 4 { 4 * f + t } else { 16 + 4 * f + t - 4 };
                *slot = src[2 * p + odd];
            }
        }
    }
}

/// Dot products of weight row `row` with each of the `m` rows of `x`.
fn row_dots(x: &[f32], m: usize, w: &PackedView<'_>, row: usize, acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2_available() {
            // SAFETY: the CPU supports AVX2 and FMA (checked above); slices are bounds-checked
            // by the caller's shape assertions and the kernel only reads within them.
            unsafe { avx2::row_dots(x, m, w, row, acc) };
            return;
        }
    }
    row_dots_scalar(x, m, w, row, acc);
}

/// Block segments of one weight row: `(first word, words, scale)`.
#[inline(always)]
fn segments<'a>(
    w: &'a PackedView<'a>,
    row: usize,
) -> impl Iterator<Item = (usize, usize, f32)> + 'a {
    let k = w.in_features;
    let start = row * k;
    let end = start + k;
    let mut pos = start;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let block = pos / w.blocksize;
        let seg_end = ((block + 1) * w.blocksize).min(end);
        let item = (pos / 8, (seg_end - pos) / 8, w.absmax.get(block));
        pos = seg_end;
        Some(item)
    })
}

fn row_dots_scalar(x: &[f32], m: usize, w: &PackedView<'_>, row: usize, acc: &mut [f32]) {
    let k = w.in_features;
    acc.iter_mut().for_each(|a| *a = 0.0);
    let row_word0 = row * k / 8;
    let mut block_acc = [0f32; STREAMING_MAX_ROWS];
    for (word0, nwords, scale) in segments(w, row) {
        block_acc[..m].iter_mut().for_each(|a| *a = 0.0);
        for wi in word0..word0 + nwords {
            let word = w.words[wi];
            let mut vals = [0f32; 8];
            for (j, v) in vals.iter_mut().enumerate() {
                *v = w.code[((word >> (4 * (j ^ 1))) & 15) as usize];
            }
            let col = (wi - row_word0) * 8;
            for (mi, a) in block_acc[..m].iter_mut().enumerate() {
                let xs = &x[mi * k + col..mi * k + col + 8];
                *a += vals.iter().zip(xs).map(|(v, x)| v * x).sum::<f32>();
            }
        }
        for (a, b) in acc.iter_mut().zip(&block_acc[..m]) {
            *a += b * scale;
        }
    }
}

/// Prefill / training kernel where `q4_gemm` has no microkernel (CPUs without AVX2): decode the
/// weight (in parallel, into a buffer this thread keeps across calls, so no fresh pages are
/// faulted in), then one multi-threaded gemm. Decoding is
/// O(n·k) against the gemm's O(m·n·k). Weights above [`PANEL_VALUES`] go in panels of rows,
/// each multiplied into its columns of `out`.
fn decoded_gemm(x: &[f32], m: usize, w: &PackedView<'_>, out: &mut [f32]) {
    decoded_gemm_in_panels(x, m, w, out, panel_rows(w.out_features, w.in_features));
}

/// [`decoded_gemm`] with `rows` weight rows per panel (tests use small panels).
fn decoded_gemm_in_panels(x: &[f32], m: usize, w: &PackedView<'_>, out: &mut [f32], rows: usize) {
    let (n, k) = (w.out_features, w.in_features);
    for_each_decoded_panel(w, rows, |r0, p, panel| {
        gemm_f32_columns(out, n, r0, x, panel, m, p, k)
    });
}

/// Decodes `w` a panel of at most `rows` rows at a time (each panel in parallel, into this
/// thread's kept [`DECODED`] buffer) and hands each to `f(first_row, rows, values)`.
fn for_each_decoded_panel(
    w: &PackedView<'_>,
    rows: usize,
    mut f: impl FnMut(usize, usize, &[f32]),
) {
    let (n, k) = (w.out_features, w.in_features);
    let rows = rows.clamp(1, n.max(1));
    // Taken out of the cell, so a reentrant call (rayon work stealing) just allocates its own.
    let mut buf = DECODED.with(std::cell::Cell::take);
    if buf.len() < rows * k {
        buf.resize(rows * k, 0.0);
    }
    let mut r0 = 0;
    while r0 < n {
        let p = rows.min(n - r0);
        let panel = &mut buf[..p * k];
        panel
            .par_chunks_mut(TILE_ROWS * k.max(1))
            .enumerate()
            .for_each(|(t, chunk)| {
                w.decode_rows(r0 + t * TILE_ROWS, chunk.len() / k.max(1), chunk)
            });
        f(r0, p, panel);
        r0 += p;
    }
    DECODED.with(|cell| cell.set(buf));
}

/// `dx[m, k] = dy[m, n] @ W` for a packed `W [n, k]`: the input gradient of a frozen 4-bit
/// matmul, `dx` overwritten. The weight is decoded into the same kept buffer as
/// [`matmul_4bit`]'s gemm path (in panels above [`PANEL_VALUES`], each adding its share
/// `dy[:, panel] @ W[panel]`), where backward used to allocate a fresh f32 copy every step
/// (180 MB for an 11008 x 4096 MLP, zero-filled and faulted in).
///
/// # Panics
/// If `dy` is not `[m, out_features]` or `dx` not `[m, in_features]`.
pub fn matmul_4bit_input_grad(dy: &[f32], m: usize, w: &PackedView<'_>, dx: &mut [f32]) {
    input_grad_in_panels(dy, m, w, dx, panel_rows(w.out_features, w.in_features));
}

/// [`matmul_4bit_input_grad`] with `rows` weight rows per panel (tests use small panels).
fn input_grad_in_panels(dy: &[f32], m: usize, w: &PackedView<'_>, dx: &mut [f32], rows: usize) {
    let (n, k) = (w.out_features, w.in_features);
    assert!(
        m.checked_mul(n) == Some(dy.len()),
        "dy must be [m, out_features]"
    );
    assert!(
        m.checked_mul(k) == Some(dx.len()),
        "dx must be [m, in_features]"
    );
    if m == 0 || k == 0 {
        return;
    }
    if n == 0 {
        dx.fill(0.0);
        return;
    }
    if crate::q4_gemm::input_grad(dy, m, w, dx) {
        return;
    }
    for_each_decoded_panel(w, rows, |r0, p, panel| {
        // SAFETY: dst (i, c) at i·k + c < m·k = dx.len(); lhs (i, j) = dy[i, r0 + j] at
        // i·n + r0 + j < m·n (j < p ≤ n - r0); rhs (j, c) at j·k + c < p·k = panel.len().
        unsafe {
            gemm::gemm(
                m,
                k,
                p,
                dx.as_mut_ptr(),
                1,
                k as isize,
                r0 > 0,
                dy.as_ptr().add(r0),
                1,
                n as isize,
                panel.as_ptr(),
                1,
                k as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism(m * p * k),
            );
        }
    });
}

thread_local! {
    /// Decoded weight rows for [`decoded_gemm`] and [`matmul_4bit_input_grad`], kept across
    /// calls so no fresh pages are faulted in per matmul.
    static DECODED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Decoded weight values per panel (256 MB of f32): every Llama-family linear up to 8B decodes
/// whole, which measured fastest. Smaller panels cost more than they save, since each panel's
/// gemm packs `x` again and splits its threads over fewer columns: at 256 tokens on 2 Xeon
/// cores, 4096 x 4096 ran at 0.80x dense whole, 0.64x in 16 MB panels, 0.50x in 4 MB ones.
/// Panels bound the scratch for larger weights (a 128k-vocabulary head).
const PANEL_VALUES: usize = 64 << 20;

/// Rows per panel: whole tiles of [`TILE_ROWS`], at least one, at most the weight.
fn panel_rows(n: usize, k: usize) -> usize {
    let tiles = (PANEL_VALUES / (k.max(1) * TILE_ROWS)).max(1);
    (tiles * TILE_ROWS).min(n)
}

/// `out[i, j0 + j] = Σ_p x[i, p] · w[j, p]` for `j < cols`, `out` being `[m, n]` row-major and
/// `w` `cols` weight rows `[cols, k]`: one panel's columns of the output, multi-threaded.
#[allow(clippy::too_many_arguments)]
fn gemm_f32_columns(
    out: &mut [f32],
    n: usize,
    j0: usize,
    x: &[f32],
    w: &[f32],
    m: usize,
    cols: usize,
    k: usize,
) {
    assert!(
        j0.checked_add(cols).is_some_and(|end| end <= n)
            && m.checked_mul(n).is_some_and(|len| out.len() >= len)
            && m.checked_mul(k).is_some_and(|len| x.len() >= len)
            && cols.checked_mul(k).is_some_and(|len| w.len() >= len),
        "gemm_f32_columns: columns {j0}+{cols} of [{m}, {n}] from [{m}, {k}] x [{cols}, {k}]ᵀ"
    );
    if m == 0 || cols == 0 {
        return;
    }
    // SAFETY: the assertion keeps every addressed element inside the slices: out (i, j) at
    // i·n + j0 + j < m·n, x (i, p) at i·k + p, w's transpose (p, j) at j·k + p.
    unsafe {
        gemm::gemm(
            m,
            cols,
            k,
            out.as_mut_ptr().add(j0),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism(m * cols * k),
        );
    }
}

/// `out[j · m + i] = Σ_p x[i, p] · w[j, p]` for `x [m, k]` and `w [n, k]` (a weight's rows), on
/// this thread only, into a feature-major `out`: the tile product of the decode kernels when
/// enough sequences step together for a gemm to beat dot products.
pub(crate) fn gemm_rows_serial(
    out: &mut [f32],
    x: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
) {
    let fits = |len: usize, a: usize, b: usize| a.checked_mul(b).is_some_and(|need| len >= need);
    assert!(
        fits(out.len(), m, n) && fits(x.len(), m, k) && fits(w.len(), n, k),
        "gemm_rows_serial: slices too short for [{m}, {k}] x [{n}, {k}]ᵀ"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the assertion keeps every addressed element inside the slices: out (i, j) at
    // j·m + i, x (i, p) at i·k + p, w's transpose (p, j) at j·k + p.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            m as isize,
            1,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Multi-threaded gemm from `m·n·k` = 2^18 multiply-adds on; below that threads cost more.
fn parallelism(work: usize) -> gemm::Parallelism {
    if work >= 1 << 18 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// How [`gemm_f32`] reads its right-hand side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rhs {
    /// `[k, n]` row-major: `out = lhs · rhs`.
    Plain,
    /// `[n, k]` row-major, read as its transpose: `out = lhs · rhsᵀ` (a PyTorch-layout weight).
    Transposed,
}

/// `out [m, n] = lhs [m, k] · rhs` for row-major f32 slices, overwriting `out`, through the
/// `gemm` crate (AVX-512 / AVX2 kernels picked at run time), multi-threaded when it is worth it.
///
/// # Panics
/// If a slice is shorter than its shape says.
///
/// ```
/// use medify_quant::{Rhs, gemm_f32};
/// let (a, w) = ([1.0f32, 2.0, 3.0, 4.0], [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0]); // a [2,2], w [3,2]
/// let mut out = [0f32; 6];
/// gemm_f32(&mut out, &a, &w, 2, 3, 2, Rhs::Transposed); // a · wᵀ
/// assert_eq!(out, [1.0, 2.0, 3.0, 3.0, 4.0, 7.0]);
/// ```
pub fn gemm_f32(
    out: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    m: usize,
    n: usize,
    k: usize,
    layout: Rhs,
) {
    let fits = |len: usize, a: usize, b: usize| a.checked_mul(b).is_some_and(|need| len >= need);
    assert!(
        fits(out.len(), m, n) && fits(lhs.len(), m, k) && fits(rhs.len(), k, n),
        "gemm_f32: slices too short for [{m}, {k}] x [{k}, {n}]"
    );
    if m == 0 || n == 0 {
        return;
    }
    let (rhs_cs, rhs_rs) = match layout {
        Rhs::Plain => (1, n as isize),
        Rhs::Transposed => (k as isize, 1),
    };
    // SAFETY: the assertion above keeps every element the strides address inside the slices:
    // out (i, j) at i·n + j, lhs (i, p) at i·k + p, rhs (p, j) at p·n + j (Plain) or j·k + p.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism(m * n * k),
        );
    }
}

/// AVX2 + FMA (or more): what the `avx2` kernels below need.
#[cfg(target_arch = "x86_64")]
fn avx2_available() -> bool {
    crate::simd::cpu_level() != crate::simd::CpuLevel::Baseline
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{PackedView, STREAMING_MAX_ROWS, segments};
    use std::arch::x86_64::*;

    /// One row against the chunk-permuted `xp` (see `gemv_chunked`).
    ///
    /// Each f32 code is split into four byte planes; `pshufb` looks all four up for 32 nibbles
    /// at once, and two rounds of unpacks reassemble the floats. Lane `t` of output vector
    /// `v = 4 * odd + f` holds byte position `p = 4f + t` (t < 4) or `16 + 4f + t - 4`, i.e.
    /// element `2p + odd` of the chunk.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn row_dot_chunked(xp: &[f32], w: &PackedView<'_>, row: usize) -> f32 {
        // SAFETY: see the caller.
        unsafe {
            let k = w.in_features;
            let mut planes = [[0u8; 16]; 4];
            for (c, v) in w.code.iter().enumerate() {
                for (b, plane) in planes.iter_mut().enumerate() {
                    plane[c] = v.to_bits().to_le_bytes()[b];
                }
            }
            let plane = |b: usize| {
                _mm256_broadcastsi128_si256(_mm_loadu_si128(planes[b].as_ptr() as *const __m128i))
            };
            let (p0, p1, p2, p3) = (plane(0), plane(1), plane(2), plane(3));
            let low4 = _mm256_set1_epi8(0x0F);
            let bytes = w.words.as_ptr() as *const u8;
            let row_byte0 = row * k / 2;
            let chunks = k / 64;
            let mut total = _mm256_setzero_ps();
            let mut c = 0;
            while c < chunks {
                // Rows need not start on a block boundary: end the run where the block ends.
                let block = (row * k + c * 64) / w.blocksize;
                let end = (((block + 1) * w.blocksize - row * k) / 64).min(chunks);
                let mut a = [_mm256_setzero_ps(); 4];
                for ci in c..end {
                    let raw = _mm256_loadu_si256(bytes.add(row_byte0 + ci * 32) as *const __m256i);
                    let even = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
                    let odd = _mm256_and_si256(raw, low4);
                    let xc = xp.as_ptr().add(ci * 64);
                    for (half, nib) in [even, odd].into_iter().enumerate() {
                        let b0 = _mm256_shuffle_epi8(p0, nib);
                        let b1 = _mm256_shuffle_epi8(p1, nib);
                        let b2 = _mm256_shuffle_epi8(p2, nib);
                        let b3 = _mm256_shuffle_epi8(p3, nib);
                        let u01lo = _mm256_unpacklo_epi8(b0, b1);
                        let u01hi = _mm256_unpackhi_epi8(b0, b1);
                        let u23lo = _mm256_unpacklo_epi8(b2, b3);
                        let u23hi = _mm256_unpackhi_epi8(b2, b3);
                        let f = [
                            _mm256_unpacklo_epi16(u01lo, u23lo),
                            _mm256_unpackhi_epi16(u01lo, u23lo),
                            _mm256_unpacklo_epi16(u01hi, u23hi),
                            _mm256_unpackhi_epi16(u01hi, u23hi),
                        ];
                        for (j, fv) in f.into_iter().enumerate() {
                            let xv = _mm256_loadu_ps(xc.add((half * 4 + j) * 8));
                            a[j] = _mm256_fmadd_ps(_mm256_castsi256_ps(fv), xv, a[j]);
                        }
                    }
                }
                let sum = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
                total = _mm256_fmadd_ps(sum, _mm256_set1_ps(w.absmax.get(block)), total);
                c = end;
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), total);
            lanes.iter().sum()
        }
    }

    /// AVX2 decode: broadcast a word, shift each lane to its nibble, look the 16-entry code
    /// table up with two 8-lane permutes and a blend on bit 3, FMA with x.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn row_dots(
        x: &[f32],
        m: usize,
        w: &PackedView<'_>,
        row: usize,
        acc: &mut [f32],
    ) {
        // SAFETY: see the caller; every pointer offset stays inside `x`, `w.words`, `w.code`.
        unsafe {
            let k = w.in_features;
            let row_word0 = row * k / 8;
            let code_lo = _mm256_loadu_ps(w.code.as_ptr());
            let code_hi = _mm256_loadu_ps(w.code.as_ptr().add(8));
            // Lane j holds element j of the word, stored at bits 4 * (j ^ 1).
            let shifts = _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24);
            let fifteen = _mm256_set1_epi32(15);
            let decode = |wi: usize| {
                let word = *w.words.get_unchecked(wi) as i32;
                let idx =
                    _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(word), shifts), fifteen);
                let lo = _mm256_permutevar8x32_ps(code_lo, idx);
                let hi = _mm256_permutevar8x32_ps(code_hi, idx);
                _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)))
            };
            if m == 1 {
                // One token: four independent FMA chains, or the FMA latency is the limit.
                let mut total = _mm256_setzero_ps();
                for (word0, nwords, scale) in segments(w, row) {
                    let mut a = [_mm256_setzero_ps(); 4];
                    let xw = x.as_ptr().add((word0 - row_word0) * 8);
                    let quads = nwords / 4;
                    for q in 0..quads {
                        for (u, acc) in a.iter_mut().enumerate() {
                            let wi = word0 + 4 * q + u;
                            let xv = _mm256_loadu_ps(xw.add((4 * q + u) * 8));
                            *acc = _mm256_fmadd_ps(decode(wi), xv, *acc);
                        }
                    }
                    for u in 4 * quads..nwords {
                        let xv = _mm256_loadu_ps(xw.add(u * 8));
                        a[0] = _mm256_fmadd_ps(decode(word0 + u), xv, a[0]);
                    }
                    let sum = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
                    total = _mm256_fmadd_ps(sum, _mm256_set1_ps(scale), total);
                }
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), total);
                acc[0] = lanes.iter().sum();
                return;
            }
            let mut total = [_mm256_setzero_ps(); STREAMING_MAX_ROWS];
            for (word0, nwords, scale) in segments(w, row) {
                let mut blk = [_mm256_setzero_ps(); STREAMING_MAX_ROWS];
                for wi in word0..word0 + nwords {
                    let vals = decode(wi);
                    let col = (wi - row_word0) * 8;
                    for (mi, b) in blk[..m].iter_mut().enumerate() {
                        let xv = _mm256_loadu_ps(x.as_ptr().add(mi * k + col));
                        *b = _mm256_fmadd_ps(vals, xv, *b);
                    }
                }
                let s = _mm256_set1_ps(scale);
                for (t, b) in total[..m].iter_mut().zip(&blk[..m]) {
                    *t = _mm256_fmadd_ps(*b, s, *t);
                }
            }
            for (a, t) in acc.iter_mut().zip(&total[..m]) {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), *t);
                *a = lanes.iter().sum();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Packed4Bit, QuantConfig};

    fn reference(x: &[f32], m: usize, dense: &[f32], n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for mi in 0..m {
            for r in 0..n {
                out[mi * n + r] = (0..k)
                    .map(|c| x[mi * k + c] as f64 * dense[r * k + c] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    fn check(m: usize, n: usize, k: usize, blocksize: usize) {
        let vals: Vec<f32> = (0..n * k)
            .map(|i| ((i * 2654435761usize) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let cfg = QuantConfig::default().with_blocksize(blocksize);
        let p = Packed4Bit::quantize(&vals, &[n, k], &cfg).unwrap();
        let dense = p.dequantize();
        let (words, absmax) = kernel_inputs(&p);
        let view = PackedView::new(
            &words,
            Scales::F32(&absmax),
            p.state.quant_type.code(),
            n,
            k,
            blocksize,
        )
        .unwrap();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 40503) % 97) as f32 / 48.0 - 1.0)
            .collect();
        let mut out = vec![0f32; m * n];
        matmul_4bit(&x, m, &view, &mut out);
        if let crate::Absmax::Double(nq) = &p.state.absmax {
            let table: [f32; 256] = std::array::from_fn(|i| nq.code[i]);
            let nested = view
                .with_scales(Scales::Nested {
                    codes: &nq.codes,
                    nested_absmax: &nq.nested_absmax,
                    code: &table,
                    offset: nq.offset,
                })
                .unwrap();
            let mut out2 = vec![0f32; m * n];
            matmul_4bit(&x, m, &nested, &mut out2);
            assert_eq!(out, out2, "nested scales decode to the same values");
        }
        let want = reference(&x, m, &dense, n, k);
        for (a, b) in out.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
                "m={m} n={n} k={k}: {a} vs {b}"
            );
        }
        // The input gradient dy @ W, whole and in panels of 64 rows and of 1.
        let dy: Vec<f32> = (0..m * n)
            .map(|i| ((i * 7907) % 89) as f32 / 44.0 - 1.0)
            .collect();
        let mut want_dx = vec![0f32; m * k];
        for mi in 0..m {
            for c in 0..k {
                want_dx[mi * k + c] = (0..n)
                    .map(|r| dy[mi * n + r] as f64 * dense[r * k + c] as f64)
                    .sum::<f64>() as f32;
            }
        }
        for rows in [usize::MAX, TILE_ROWS, 1] {
            let mut dx = vec![f32::NAN; m * k];
            input_grad_in_panels(&dy, m, &view, &mut dx, rows);
            for (a, b) in dx.iter().zip(&want_dx) {
                assert!(
                    (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
                    "dx, m={m} n={n} k={k}, panels of {rows}: {a} vs {b}"
                );
            }
        }
        if m > STREAMING_MAX_ROWS {
            // Panels of 64 rows and of 1: a partial last panel, and every column offset.
            for rows in [TILE_ROWS, 1] {
                let mut panels = vec![f32::NAN; m * n];
                decoded_gemm_in_panels(&x, m, &view, &mut panels, rows);
                // The gemm's edge kernels for narrow panels may round differently.
                for (a, b) in panels.iter().zip(&out) {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "m={m} n={n} k={k}: panels of {rows} rows: {a} vs {b}"
                    );
                }
            }
        }
        if m <= STREAMING_MAX_ROWS && k.is_multiple_of(8) {
            let mut scalar = vec![0f32; m];
            for r in 0..n {
                row_dots_scalar(&x, m, &view, r, &mut scalar);
                for mi in 0..m {
                    assert!(
                        (scalar[mi] - want[mi * n + r]).abs()
                            <= 1e-3 * (1.0 + want[mi * n + r].abs())
                    );
                }
            }
        }
    }

    /// The packed bytes as `u32` words (as a device holds them) and the decoded scales.
    fn kernel_inputs(p: &Packed4Bit) -> (Vec<u32>, Vec<f32>) {
        (words_from_bytes(&p.data), p.state.absmax.to_f32())
    }

    #[test]
    fn views_the_buffers_cannot_hold_are_refused() {
        let code = crate::QuantType::Nf4.code();
        let words = [0u32; 8]; // 64 codes
        let ok = |n, k, bs, scales| PackedView::new(&words, scales, code, n, k, bs).is_ok();
        assert!(ok(4, 16, 64, Scales::F32(&[1.0])));
        assert!(!ok(4, 17, 64, Scales::F32(&[1.0, 1.0])), "65 codes in 64");
        assert!(!ok(8, 8, 32, Scales::F32(&[1.0])), "two blocks, one scale");
        assert!(!ok(4, 16, 0, Scales::F32(&[1.0])));
        assert!(
            !ok(usize::MAX, 2, 64, Scales::F32(&[1.0])),
            "overflowing shape"
        );
        let table = [0f32; 256];
        let nested = |codes: &'static [u8], nested_absmax: &'static [f32]| Scales::Nested {
            codes,
            nested_absmax,
            code: Box::leak(Box::new(table)),
            offset: 0.0,
        };
        assert!(ok(4, 16, 32, nested(&[0, 0], &[1.0])));
        assert!(!ok(4, 16, 32, nested(&[0], &[1.0])));
        assert!(!ok(4, 16, 32, nested(&[0, 0], &[])));
    }

    #[test]
    fn decode_matches_host_codec_bit_for_bit() {
        for (n, k, bs) in [(5, 64, 64), (3, 100, 32), (4, 13, 64), (7, 192, 128)] {
            let vals: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919) % 211) as f32 - 105.0)
                .collect();
            let cfg = QuantConfig::default().with_blocksize(bs);
            let p = Packed4Bit::quantize(&vals, &[n, k], &cfg).unwrap();
            let (words, absmax) = kernel_inputs(&p);
            let view = PackedView::new(
                &words,
                Scales::F32(&absmax),
                p.state.quant_type.code(),
                n,
                k,
                bs,
            )
            .unwrap();
            let mut out = vec![0f32; n * k];
            view.decode_all(&mut out);
            let want = p.dequantize();
            assert!(
                out.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "n={n} k={k} bs={bs}"
            );
        }
    }

    /// Every SIMD decode of byte pairs the CPU can run gives the scalar loop's bits.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn simd_pair_decodes_match_the_scalar_one() {
        let lut: [f32; 16] = std::array::from_fn(|i| (i as f32 - 7.5) * 0.37);
        let bytes: Vec<u8> = (0..203u32).map(|i| (i * 97 % 256) as u8).collect();
        let want: Vec<f32> = bytes
            .iter()
            .flat_map(|b| [lut[(b >> 4) as usize], lut[(b & 15) as usize]])
            .collect();
        let level = crate::simd::cpu_level();
        type Kernel = unsafe fn(&mut [f32], &[u8], &[f32; 16]) -> usize;
        let mut kernels: Vec<(&str, Kernel)> = Vec::new();
        if level != crate::simd::CpuLevel::Baseline {
            kernels.push(("avx2", avx512_decode::pairs_avx2));
        }
        if level == crate::simd::CpuLevel::Avx512 {
            kernels.push(("avx512", avx512_decode::pairs));
        }
        for (name, kernel) in kernels {
            let mut out = vec![f32::NAN; 2 * bytes.len()];
            // SAFETY: the CPU has the kernel's features (cpu_level), `out` holds 2 per byte.
            let done = unsafe { kernel(&mut out, &bytes, &lut) };
            assert_eq!(done, 16 * (bytes.len() / 16), "{name}");
            for (i, (a, b)) in out[..2 * done].iter().zip(&want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{name}: value {i}");
            }
        }
    }

    #[test]
    fn fused_matches_dense_reference() {
        check(1, 70, 128, 64);
        check(1, 37, 200, 64); // odd number of words per block segment
        check(1, 9, 256, 128);
        check(1, 7, 192, 128); // rows straddle blocks in the chunked kernel
        check(1, 12, 64, 32);
        check(3, 33, 96, 32);
        check(8, 16, 200, 128);
        check(17, 130, 64, 64);
        check(2, 5, 13, 64); // in_features not a multiple of 8: decode + gemm path
    }
}
