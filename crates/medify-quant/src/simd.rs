//! Host loops that the compiler vectorizes for the CPU it finds at run time.
//!
//! The crates build for baseline x86-64 (SSE2), so a plain loop gets 4-lane code. [`vectorized`]
//! runs a loop body compiled again with AVX-512 or AVX2 + FMA enabled when the CPU has them
//! (detected once), which is what lets the dropout hash and the loss's exponentials keep up with
//! the matmuls. [`exp_nonpositive`] is an `exp` the compiler can vectorize (libm's `expf` is a
//! call, and takes a slow path for every underflow, e.g. each masked attention score).

/// The widest vector extension this CPU offers the loops here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuLevel {
    /// AVX-512F (x86-64-v4).
    Avx512,
    /// AVX2 + FMA (x86-64-v3).
    Avx2,
    /// Whatever the build targets.
    Baseline,
}

/// The CPU's level, detected once.
pub fn cpu_level() -> CpuLevel {
    static LEVEL: std::sync::OnceLock<CpuLevel> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return CpuLevel::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return CpuLevel::Avx2;
            }
        }
        CpuLevel::Baseline
    })
}

/// Runs `f` compiled for the widest vector extension this CPU has. `f` should be a small,
/// `#[inline(always)]`-friendly loop (closures are inlined into each compiled copy).
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match cpu_level() {
            // SAFETY: the CPU supports the enabled features (detected by cpu_level).
            CpuLevel::Avx512 => return unsafe { avx512(f) },
            CpuLevel::Avx2 => return unsafe { avx2(f) },
            CpuLevel::Baseline => {}
        }
    }
    f()
}

/// `exp(x)` for `x <= 0`, within 2 ulp of libm for `x >= -87`; inputs below -87 give
/// `exp(-87)` (1.6e-38), which no sum of probabilities can tell from 0. Branch-free, so loops
/// over it vectorize.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
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
    p * scale
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
        assert!(exp_nonpositive(-1e30) > 0.0 && exp_nonpositive(-1e30) < 2e-38);
        assert_eq!(vectorized(|| (0..4).map(|i| i * 2).sum::<i32>()), 12);
    }
}
