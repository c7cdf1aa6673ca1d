//! Code tables of the 4-bit and 8-bit data types, exactly as bitsandbytes defines them.
//!
//! The values are hard-coded bit patterns: recomputing the NF4 quantiles or the dynamic map
//! drifts by a few ULPs, and a single ULP breaks bit-exact interchange with bitsandbytes.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::QuantError;

/// The 4-bit data type of a quantized weight.
///
/// ```
/// use medify_quant::QuantType;
/// assert_eq!("nf4".parse::<QuantType>().unwrap(), QuantType::Nf4);
/// assert_eq!(QuantType::Fp4.code()[3], 1.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QuantType {
    /// 4-bit NormalFloat: quantiles of N(0, 1), the QLoRA default.
    #[default]
    Nf4,
    /// bitsandbytes' 4-bit float (sign bit + 3 bits, no infinities), scaled so max is 1.
    Fp4,
}

impl QuantType {
    /// The 16 code values, indexed by the 4-bit pattern.
    pub fn code(self) -> &'static [f32; 16] {
        match self {
            QuantType::Nf4 => &NF4_CODE,
            QuantType::Fp4 => &FP4_CODE,
        }
    }

    /// The name bitsandbytes uses (`"nf4"` / `"fp4"`).
    pub fn as_str(self) -> &'static str {
        match self {
            QuantType::Nf4 => "nf4",
            QuantType::Fp4 => "fp4",
        }
    }

    /// Thresholds and the code index of each sorted position, as bitsandbytes' bucketize does.
    pub(crate) fn buckets(self) -> &'static Buckets {
        static NF4: OnceLock<Buckets> = OnceLock::new();
        static FP4: OnceLock<Buckets> = OnceLock::new();
        match self {
            QuantType::Nf4 => NF4.get_or_init(|| Buckets::new(&NF4_CODE)),
            QuantType::Fp4 => FP4.get_or_init(|| Buckets::new(&FP4_CODE)),
        }
    }

    /// The code a zero input maps to (the padding nibble of an odd-length tensor).
    pub(crate) fn zero_code(self) -> u8 {
        self.buckets().code_of(0.0)
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for QuantType {
    type Err = QuantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nf4" => Ok(QuantType::Nf4),
            "fp4" => Ok(QuantType::Fp4),
            other => Err(QuantError::UnknownQuantType(other.to_string())),
        }
    }
}

/// NF4 code values (bitsandbytes `get_4bit_type("nf4")`), written with the digits bitsandbytes
/// prints them with (f64) so they can be checked against its source; each rounds to the f32
/// bitsandbytes uses.
#[allow(clippy::excessive_precision)]
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// FP4 code values by bit pattern (bit 3 is the sign), divided by the FP4 maximum 12.
pub const FP4_CODE: [f32; 16] = [
    0.0,
    0.0625 / 12.0,
    8.0 / 12.0,
    1.0, // 12 / 12
    4.0 / 12.0,
    6.0 / 12.0,
    2.0 / 12.0,
    3.0 / 12.0,
    0.0,
    -0.0625 / 12.0,
    -8.0 / 12.0,
    -12.0 / 12.0,
    -4.0 / 12.0,
    -6.0 / 12.0,
    -2.0 / 12.0,
    -3.0 / 12.0,
];

/// Sorted midpoints of a 4-bit code table and the code behind each sorted slot.
///
/// bitsandbytes 0.50 quantizes with `bucketize(x, midpoints)`: the slot is the number of
/// midpoints strictly below `x`, so an exact tie goes to the lower code. Equal codes (FP4's two
/// zeros) keep index order, which decides the sign nibble of tiny values.
#[derive(Debug)]
pub(crate) struct Buckets {
    pub(crate) midpoints: [f32; 15],
    pub(crate) order: [u8; 16],
}

impl Buckets {
    fn new(code: &[f32; 16]) -> Self {
        let mut order: [u8; 16] = std::array::from_fn(|i| i as u8);
        // A stable sort keeps equal codes in index order, like torch.argsort did in the vectors.
        order.sort_by(|&a, &b| {
            code[a as usize]
                .total_cmp(&code[b as usize])
                .then(a.cmp(&b))
        });
        // total_cmp orders -0.0 before 0.0; bitsandbytes stores +0.0 twice, so this is moot.
        let midpoints =
            std::array::from_fn(|i| (code[order[i] as usize] + code[order[i + 1] as usize]) / 2.0);
        Buckets { midpoints, order }
    }

    /// Code of one value already scaled into [-1, 1].
    #[inline(always)]
    pub(crate) fn code_of(&self, x: f32) -> u8 {
        let mut slot = 0u8;
        for m in self.midpoints {
            slot += (x > m) as u8;
        }
        self.order[slot as usize]
    }
}

/// Bit patterns of bitsandbytes' signed dynamic 8-bit map (`create_dynamic_map(signed=True)`),
/// the nested code of double quantization. Index 127 is 0, the maximum 1.0.
const DYNAMIC_SIGNED_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

/// bitsandbytes' signed dynamic 8-bit map as f32 values, ascending.
///
/// ```
/// let map = medify_quant::dynamic_signed_map();
/// assert_eq!(map[127], 0.0);
/// assert_eq!(map[255], 1.0);
/// ```
pub fn dynamic_signed_map() -> &'static [f32; 256] {
    static MAP: OnceLock<[f32; 256]> = OnceLock::new();
    MAP.get_or_init(|| DYNAMIC_SIGNED_BITS.map(f32::from_bits))
}

/// Bit patterns of bitsandbytes' unsigned dynamic 8-bit map (`create_dynamic_map(signed=False)`),
/// the code of the second Adam moment in 8-bit optimizers. Index 0 is 0, the maximum 1.0.
const DYNAMIC_UNSIGNED_BITS: [u32; 256] = [
    0x00000000, 0x34ae7baa, 0x35500998, 0x360e9b38, 0x3692ccf6, 0x36de4c51, 0x3714e5d5, 0x3783126e,
    0x37e171a0, 0x381fe868, 0x384f1800, 0x387e479a, 0x3896bb99, 0x38ae5364, 0x38c5eb31, 0x3906594b,
    0x394154ca, 0x397c5049, 0x399ba5e4, 0x39b923a2, 0x39d6a163, 0x39f41f22, 0x3a08ce71, 0x3a178d50,
    0x3a264c30, 0x3a350b10, 0x3a43c9ef, 0x3a5288d0, 0x3a6147af, 0x3a70068e, 0x3a7ec56e, 0x3a958106,
    0x3aba5e35, 0x3adf3b64, 0x3b020c4a, 0x3b147ae1, 0x3b26e978, 0x3b395810, 0x3b4bc6a7, 0x3b5e3540,
    0x3b70a3d7, 0x3b818937, 0x3b8ac082, 0x3b93f7cf, 0x3b9d2f1a, 0x3ba66666, 0x3baf9db2, 0x3bb8d4fd,
    0x3bc20c4a, 0x3bcb4395, 0x3bd47ae1, 0x3bddb22e, 0x3be6e978, 0x3bf020c5, 0x3bf9580f, 0x3c0147ae,
    0x3c05e354, 0x3c0a7ef9, 0x3c0f1aa0, 0x3c13b645, 0x3c1851eb, 0x3c1ced92, 0x3c218937, 0x3c2f5c2a,
    0x3c466667, 0x3c5d70a3, 0x3c747ae2, 0x3c85c28f, 0x3c9147af, 0x3c9ccccd, 0x3ca851eb, 0x3cb3d70b,
    0x3cbf5c29, 0x3ccae147, 0x3cd66667, 0x3ce1eb87, 0x3ced70a3, 0x3cf8f5c3, 0x3d023d70, 0x3d080000,
    0x3d0dc28f, 0x3d13851f, 0x3d1947af, 0x3d1f0a3d, 0x3d24cccd, 0x3d2a8f5c, 0x3d3051eb, 0x3d36147b,
    0x3d3bd70a, 0x3d41999a, 0x3d475c28, 0x3d4d1eb8, 0x3d52e147, 0x3d58a3d7, 0x3d5e6667, 0x3d6428f7,
    0x3d69eb87, 0x3d6fae15, 0x3d7570a3, 0x3d7b3333, 0x3d807ae2, 0x3d835c2a, 0x3d863d71, 0x3d891eb8,
    0x3d8c0000, 0x3d8ee148, 0x3d91c290, 0x3d94a3d7, 0x3d97851f, 0x3d9a6667, 0x3d9d47af, 0x3da028f6,
    0x3da30a3e, 0x3da5eb85, 0x3da8cccd, 0x3dabae15, 0x3dae8f5c, 0x3db170a4, 0x3db451eb, 0x3db73333,
    0x3dba147b, 0x3dbcf5c3, 0x3dbfd70b, 0x3dc2b852, 0x3dc5999a, 0x3dc87ae2, 0x3dcb5c29, 0x3dd40000,
    0x3de26666, 0x3df0cccd, 0x3dff3333, 0x3e06cccc, 0x3e0e0000, 0x3e153334, 0x3e1c6666, 0x3e23999a,
    0x3e2acccc, 0x3e320000, 0x3e393334, 0x3e406666, 0x3e47999a, 0x3e4ecccc, 0x3e560000, 0x3e5d3334,
    0x3e646666, 0x3e6b999a, 0x3e72cccc, 0x3e7a0000, 0x3e809999, 0x3e843333, 0x3e87cccd, 0x3e8b6666,
    0x3e8f0000, 0x3e92999a, 0x3e963333, 0x3e99cccc, 0x3e9d6666, 0x3ea10000, 0x3ea4999a, 0x3ea83333,
    0x3eabcccc, 0x3eaf6666, 0x3eb30000, 0x3eb6999a, 0x3eba3333, 0x3ebdcccc, 0x3ec16666, 0x3ec50000,
    0x3ec8999a, 0x3ecc3333, 0x3ecfcccc, 0x3ed36666, 0x3ed70000, 0x3eda999a, 0x3ede3333, 0x3ee1cccc,
    0x3ee56666, 0x3ee90000, 0x3eec999a, 0x3ef03333, 0x3ef3cccc, 0x3ef76666, 0x3efb0000, 0x3efe9999,
    0x3f01199a, 0x3f02e666, 0x3f04b333, 0x3f068000, 0x3f084ccc, 0x3f0a199a, 0x3f0be666, 0x3f0db334,
    0x3f0f8000, 0x3f114ccd, 0x3f13199a, 0x3f14e666, 0x3f16b334, 0x3f188000, 0x3f1a4ccd, 0x3f1c199a,
    0x3f1de666, 0x3f1fb334, 0x3f218000, 0x3f234ccd, 0x3f25199a, 0x3f26e666, 0x3f28b334, 0x3f2a8000,
    0x3f2c4ccd, 0x3f2e199a, 0x3f2fe666, 0x3f31b334, 0x3f338000, 0x3f354ccd, 0x3f37199a, 0x3f38e666,
    0x3f3ab334, 0x3f3c8000, 0x3f3e4ccd, 0x3f40199a, 0x3f41e666, 0x3f43b334, 0x3f458000, 0x3f474ccc,
    0x3f49199a, 0x3f4ae666, 0x3f4cb334, 0x3f4e8000, 0x3f504ccc, 0x3f52199a, 0x3f53e666, 0x3f55b334,
    0x3f578000, 0x3f594ccc, 0x3f5b199a, 0x3f5ce666, 0x3f5eb334, 0x3f608000, 0x3f624ccc, 0x3f64199a,
    0x3f65e666, 0x3f67b334, 0x3f698000, 0x3f6b4ccc, 0x3f6d199a, 0x3f6ee666, 0x3f70b334, 0x3f728000,
    0x3f744ccc, 0x3f76199a, 0x3f77e666, 0x3f79b334, 0x3f7b8000, 0x3f7d4ccc, 0x3f7f199a, 0x3f800000,
];

/// bitsandbytes' unsigned dynamic 8-bit map as f32 values, ascending.
///
/// ```
/// let map = medify_quant::dynamic_unsigned_map();
/// assert_eq!(map[0], 0.0);
/// assert_eq!(map[255], 1.0);
/// ```
pub fn dynamic_unsigned_map() -> &'static [f32; 256] {
    static MAP: OnceLock<[f32; 256]> = OnceLock::new();
    MAP.get_or_init(|| DYNAMIC_UNSIGNED_BITS.map(f32::from_bits))
}

/// Resolution of the lookup grid bitsandbytes' CPU 8-bit quantizer uses: 2^16 points on [-1, 1].
const GRID_POINTS: usize = 1 << 16;
const GRID_HALF_SPAN: f32 = 32767.5;

/// The 8-bit blockwise quantizer of bitsandbytes' CPU library, reproduced bit for bit.
///
/// `libbitsandbytes_cpu` does not search the code table for each value: it rounds the
/// normalised value onto a grid of 65,536 points over [-1, 1] and reads a precomputed table of
/// the code nearest to each grid point. Near a midpoint this can pick the second-nearest code,
/// and interchange with bitsandbytes requires picking the same one (see
/// `fixtures/scripts/probe_bnb_blockwise8.py`, which checked this against the library).
#[derive(Debug)]
pub(crate) struct Grid8 {
    table: Box<[u8; GRID_POINTS]>,
}

impl Grid8 {
    pub(crate) fn new(code: &[f32; 256]) -> Self {
        let mut table = Box::new([0u8; GRID_POINTS]);
        for (j, slot) in table.iter_mut().enumerate() {
            let g = j as f32 / GRID_HALF_SPAN - 1.0;
            *slot = nearest_code(code, g);
        }
        Grid8 { table }
    }

    /// The grid for the signed dynamic map.
    pub(crate) fn dynamic_signed() -> &'static Grid8 {
        static GRID: OnceLock<Grid8> = OnceLock::new();
        GRID.get_or_init(|| Grid8::new(dynamic_signed_map()))
    }

    /// Code of one value already scaled into [-1, 1].
    #[inline(always)]
    pub(crate) fn code_of(&self, x: f32) -> u8 {
        let t = (x + 1.0) * GRID_HALF_SPAN;
        // Round half up, as the C library's `(int)(t + 0.5f)` does; NaN saturates to 0.
        let j = (t + 0.5) as usize;
        self.table[j.min(GRID_POINTS - 1)]
    }
}

/// Index of the code nearest to `g`; the lower index wins a tie. `code` is ascending.
fn nearest_code(code: &[f32; 256], g: f32) -> u8 {
    let upper = code.partition_point(|&c| c < g);
    let candidates = [upper.saturating_sub(1), upper.min(255)];
    let mut best = candidates[0];
    let mut best_dist = (g - code[best]).abs();
    for &c in &candidates[1..] {
        let d = (g - code[c]).abs();
        if d < best_dist {
            best = c;
            best_dist = d;
        }
    }
    best as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nf4_thresholds_match_bitsandbytes_decision_tree() {
        // Literal pivots of bitsandbytes' dQuantizeNF4, rounded to f32.
        let tree = [
            -0.848_096_4_f32,
            -0.610_632_9,
            -0.459_995_27,
            -0.339_679_42,
            -0.234_607_4,
            -0.137_911_74,
            -0.045_525_018,
            0.039_790_15,
            0.120_255_25,
            0.203_521_25,
            0.292_013_76,
            0.389_312_54,
            0.501_663_45,
            0.642_786_9,
            0.861_478_45,
        ];
        assert_eq!(QuantType::Nf4.buckets().midpoints, tree);
    }

    #[test]
    fn packing_example_from_reference() {
        let b = QuantType::Nf4.buckets();
        assert_eq!(b.code_of(1.0), 15);
        assert_eq!(b.code_of(-1.0), 0);
        assert_eq!(b.code_of(0.0), 7);
        assert_eq!(b.code_of(0.5), 12);
    }

    #[test]
    fn fp4_zero_slots_follow_index_order() {
        let b = QuantType::Fp4.buckets();
        assert_eq!(b.code_of(0.0), 0);
        assert_eq!(b.code_of(-0.002), 0);
        assert_eq!(b.code_of(0.0009), 8);
        assert_eq!(b.code_of(1.0), 3);
        assert_eq!(b.code_of(-1.0), 11);
    }

    #[test]
    fn dynamic_map_shape() {
        let m = dynamic_signed_map();
        assert!(m.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(m[0], -0.992_968_75);
        let g = Grid8::dynamic_signed();
        // The grid point nearest 0 is 1/32767.5 - 0, so bitsandbytes' CPU library (checked with
        // fixtures/scripts/probe_bnb_blockwise8.py) returns code 131, not the exact zero at 127.
        assert_eq!(g.code_of(0.0), 131);
        assert!(m[131].abs() < 1.0 / 32767.5);
        assert_eq!(g.code_of(1.0), 255);
        assert_eq!(g.code_of(f32::NAN), g.code_of(-1.0));
    }
}
