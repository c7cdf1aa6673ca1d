//! Host loops that the compiler vectorizes for the CPU it finds at run time.
//!
//! The crates build for baseline x86-64 (SSE2), so a plain loop gets 4-lane code.
//! [`multiversion!`](crate::multiversion) compiles a loop again with AVX-512 or AVX2 + FMA
//! enabled and picks the copy for the CPU it runs on (detected once), which is what lets the
//! dropout hash, the softmax and the loss's exponentials keep up with the matmuls. [`exp_nonpositive`] is an `exp` the compiler can vectorize (libm's `expf` is a
//! call, and takes a slow path for every underflow, e.g. each masked attention score).

/// The widest vector extension this CPU offers the loops here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuLevel {
    /// AVX-512F/BW/DQ/VL with AVX2 + FMA: every feature the AVX-512 copies enable.
    Avx512,
    /// AVX2 + FMA (x86-64-v3).
    Avx2,
    /// Whatever the build targets.
    Baseline,
}

/// The environment variable that caps [`cpu_level`]: `avx2` runs the AVX2 + FMA kernels on an
/// AVX-512 CPU (what an AVX2-only laptop or VM would run, for benchmarks), `baseline` the
/// portable ones. A level above what the CPU has is ignored.
pub const CPU_LEVEL_ENV: &str = "MEDIFY_CPU_LEVEL";

/// The level this process's kernels use: the CPU's, capped by [`CPU_LEVEL_ENV`]. Detected once.
/// The one place the workspace asks which vector extensions it may use.
pub fn cpu_level() -> CpuLevel {
    static LEVEL: std::sync::OnceLock<CpuLevel> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let detected = detected_level();
        match std::env::var(CPU_LEVEL_ENV).as_deref() {
            Ok("avx2") if detected == CpuLevel::Avx512 => CpuLevel::Avx2,
            Ok("baseline") => CpuLevel::Baseline,
            _ => detected,
        }
    })
}

/// What the CPU supports.
fn detected_level() -> CpuLevel {
    {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            if avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512vl")
            {
                return CpuLevel::Avx512;
            }
            if avx2 {
                return CpuLevel::Avx2;
            }
        }
        CpuLevel::Baseline
    }
}

/// Defines a function compiled three times (AVX-512, AVX2 + FMA, baseline) that runs the widest
/// copy this CPU supports. The body is an `#[inline(always)]` function called from each
/// `#[target_feature]` copy, which is the pattern LLVM reliably vectorizes for the wider ISA.
///
/// ```
/// medify_quant::multiversion! {
///     /// Adds `v` to every element.
///     pub fn add_all(xs: &mut [f32], v: f32) {
///         xs.iter_mut().for_each(|x| *x += v);
///     }
/// }
/// let mut xs = vec![1.0f32; 40];
/// add_all(&mut xs, 0.5);
/// assert!(xs.iter().all(|&x| x == 1.5));
/// ```
#[macro_export]
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                match $crate::simd::cpu_level() {
                    // SAFETY: cpu_level detected these features on this CPU.
                    $crate::simd::CpuLevel::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::simd::CpuLevel::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::simd::CpuLevel::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}

/// `exp(x)` for `x <= 0`, within 2 ulp of libm for `x >= -87`; inputs below -87 (masked
/// scores, `-inf`) give 0, as a flush-to-zero unit would: their true values are subnormal or
/// zero, and a subnormal in a matmul operand costs a microcode assist per multiply on Intel
/// cores. Branch-free (the test is a select), so loops over it vectorize.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let underflow = x < -87.0;
    let x = x.clamp(-87.0, 0.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let scale = f32::from_bits((((n as i32) + 127) as u32) << 23);
    if underflow { 0.0 } else { p * scale }
}

/// `x`, or 0 where `x` is subnormal (below `f32::MIN_POSITIVE` in magnitude). Kernels whose
/// outputs feed a matmul (probabilities, their gradients) pass them through this: an Intel core
/// takes a microcode assist, roughly a hundred cycles, for every multiply with a subnormal
/// operand, and scaled softmax rows hold thousands of them. The flushed values are below what
/// any f32 sum with a normal term can register. Branch-free, so loops over it vectorize.
#[inline(always)]
pub fn flush_subnormal(x: f32) -> f32 {
    if x.abs() < f32::MIN_POSITIVE { 0.0 } else { x }
}

/// Lanes of the explicit accumulators below: one AVX-512 vector. Float reductions written as
/// a plain loop stay scalar (LLVM may not reorder float adds), so these keep 16 independent
/// partial results, which it turns into vector registers.
const LANES: usize = 16;

/// Largest element (`-inf` for an empty slice; NaNs are ignored as `f32::max` does).
#[inline(always)]
pub fn max_of(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut it = xs.chunks_exact(LANES);
    for c in &mut it {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = a.max(x);
        }
    }
    let tail = it
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    acc.iter().copied().fold(tail, f32::max)
}

/// Sum, with 16 partial sums.
#[inline(always)]
pub fn sum_of(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut it = xs.chunks_exact(LANES);
    for c in &mut it {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    it.remainder().iter().sum::<f32>() + acc.iter().sum::<f32>()
}

/// Dot product, with 16 partial sums.
#[inline(always)]
pub fn dot(xs: &[f32], ys: &[f32]) -> f32 {
    let n = xs.len().min(ys.len());
    let (xs, ys) = (&xs[..n], &ys[..n]);
    let mut acc = [0f32; LANES];
    let (mut xi, mut yi) = (xs.chunks_exact(LANES), ys.chunks_exact(LANES));
    for (c, d) in (&mut xi).zip(&mut yi) {
        for ((a, &x), &y) in acc.iter_mut().zip(c).zip(d) {
            *a += x * y;
        }
    }
    let tail: f32 = xi
        .remainder()
        .iter()
        .zip(yi.remainder())
        .map(|(x, y)| x * y)
        .sum();
    tail + acc.iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f32;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let (got, want) = (exp_nonpositive(x), x.exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.5e-7, "max relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-87.0) > 0.0 && exp_nonpositive(-87.0) < 2e-38);
        assert_eq!(exp_nonpositive(-87.5), 0.0);
        assert_eq!(exp_nonpositive(-1e30), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
        assert_eq!(flush_subnormal(f32::MIN_POSITIVE / 2.0), 0.0);
        assert_eq!(flush_subnormal(-f32::MIN_POSITIVE / 2.0), 0.0);
        assert_eq!(flush_subnormal(f32::MIN_POSITIVE), f32::MIN_POSITIVE);
        assert_eq!(flush_subnormal(-0.5), -0.5);
        assert!(flush_subnormal(f32::NAN).is_nan());
        let xs: Vec<f32> = (0..37).map(|i| ((i * 7 % 11) as f32) - 5.0).collect();
        assert_eq!(max_of(&xs), 5.0);
        assert_eq!(max_of(&[]), f32::NEG_INFINITY);
        assert_eq!(sum_of(&xs), xs.iter().sum::<f32>());
        assert_eq!(dot(&xs, &xs), xs.iter().map(|x| x * x).sum::<f32>());
    }
}
