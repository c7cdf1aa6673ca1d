//! Python's `random.Random(seed).sample`, bit for bit: lm-evaluation-harness draws its few-shot
//! examples with it (seed 1234), so the same draw is what makes k-shot scores comparable.
//!
//! CPython seeds its Mersenne Twister (MT19937) with `init_by_array` over the seed's 32-bit
//! words, draws below `n` by rejection from `n.bit_length()` bits, and `sample` either pops
//! from a copy of the population or, for large populations, retries drawn indices.

const N: usize = 624;
const M: usize = 397;

/// CPython's `random.Random`, as far as `sample` needs it.
pub(crate) struct PyRandom {
    mt: [u32; N],
    index: usize,
}

impl PyRandom {
    /// `random.Random(seed)` for a non-negative integer seed.
    pub(crate) fn new(seed: u64) -> PyRandom {
        let mut key = vec![seed as u32];
        if seed >> 32 != 0 {
            key.push((seed >> 32) as u32);
        }
        let mut r = PyRandom {
            mt: [0; N],
            index: N,
        };
        r.init_genrand(19_650_218);
        let mt = &mut r.mt;
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            let prev = self.mt[i - 1] ^ (self.mt[i - 1] >> 30);
            self.mt[i] = 1_812_433_253u32.wrapping_mul(prev).wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            for k in 0..N {
                let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % N] & 0x7fff_ffff);
                let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
                self.mt[k] = self.mt[(k + M) % N] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `getrandbits(k)` for `k <= 32`.
    fn bits(&mut self, k: u32) -> u32 {
        if k == 0 {
            0
        } else {
            self.next_u32() >> (32 - k)
        }
    }

    /// `_randbelow(n)`: uniform in `0..n` by rejection (`n >= 1`).
    fn below(&mut self, n: usize) -> usize {
        let k = usize::BITS - n.leading_zeros();
        loop {
            let r = self.bits(k) as usize;
            if r < n {
                return r;
            }
        }
    }

    /// The indices `random.sample(range(n), k)` picks, in its order; `None` when `k > n`.
    pub(crate) fn sample(&mut self, n: usize, k: usize) -> Option<Vec<usize>> {
        if k > n {
            return None;
        }
        let mut setsize = 21usize;
        if k > 5 {
            let e = ((k * 3) as f64).ln() / 4f64.ln();
            setsize += 4usize.pow(e.ceil() as u32);
        }
        let mut out = Vec::with_capacity(k);
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.below(n - i);
                out.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            let mut selected = std::collections::HashSet::new();
            for _ in 0..k {
                let mut j = self.below(n);
                while selected.contains(&j) {
                    j = self.below(n);
                }
                selected.insert(j);
                out.push(j);
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::PyRandom;

    // From CPython 3.11: `r = random.Random(1234); [r.getrandbits(32) for _ in range(3)]`.
    #[test]
    fn words_equal_cpythons() {
        let mut r = PyRandom::new(1234);
        let w: Vec<u32> = (0..3).map(|_| r.next_u32()).collect();
        assert_eq!(w, [PY_1234[0], PY_1234[1], PY_1234[2]]);
    }

    // `random.Random(1234).sample(range(10), 3)`, `…sample(range(100), 7)` (the set branch),
    // `…sample(range(50), 6)` (the pool branch with a larger set size) and
    // `random.Random(2**40 + 5).sample(range(30), 4)` (a two-word seed).
    #[test]
    fn samples_equal_cpythons() {
        assert_eq!(PyRandom::new(1234).sample(10, 3).unwrap(), PY_SAMPLE_10_3);
        assert_eq!(PyRandom::new(1234).sample(100, 7).unwrap(), PY_SAMPLE_100_7);
        assert_eq!(
            PyRandom::new(1234).sample(50, 6).unwrap(),
            [49, 28, 7, 0, 5, 37]
        );
        assert_eq!(
            PyRandom::new((1 << 40) + 5).sample(30, 4).unwrap(),
            PY_SAMPLE_BIG_SEED
        );
        assert!(PyRandom::new(1).sample(2, 3).is_none());
    }

    const PY_1234: [u32; 3] = [4_150_886_329, 3_342_196_574, 1_892_932_127];
    const PY_SAMPLE_10_3: [usize; 3] = [7, 1, 0];
    const PY_SAMPLE_100_7: [usize; 7] = [99, 56, 14, 0, 11, 74, 4];
    const PY_SAMPLE_BIG_SEED: [usize; 4] = [16, 8, 21, 29];
}
