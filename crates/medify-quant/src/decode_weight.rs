//! Frozen weights held for the host decode kernels: handles on the Flex tensors a model already
//! holds (no copy), or compact copies made for inference (an int8 or bf16 output head).

use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::FlexTensor;

use crate::gemv::GemvWeight;
use crate::host_kernels::{PackedView, Scales};
use crate::host_tensor::flex_float;
use crate::{HeadPrecision, Int8Tensor, Int8Weight, Nf4Tensor, QuantError};

/// A frozen `[out, in]` weight on the host, readable as a [`GemvWeight`] without copying: it
/// holds the Flex buffers themselves (reference-counted), so it stays valid as long as it lives,
/// whatever happens to the model it came from.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use medify_quant::{DecodeWeight, gemv_rows};
/// let w = Tensor::<2>::from_floats([[1.0f32, 2.0], [3.0, 4.0]], &Device::flex());
/// let host = DecodeWeight::dense(&w).unwrap();
/// let mut out = [0.0f32; 2];
/// gemv_rows(&host.view(), &[1.0, 1.0], 1, 0..2, &mut out);
/// assert_eq!(out, [3.0, 7.0]);
/// ```
#[derive(Debug, Clone)]
pub struct DecodeWeight {
    kind: Kind,
    out_features: usize,
    in_features: usize,
}

// One per weight; boxing the 4-bit variant would add an indirection to every decode call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Kind {
    F32(FlexTensor),
    Bf16(FlexTensor),
    Int8 {
        codes: FlexTensor,
        scales: FlexTensor,
    },
    Quant4 {
        words: FlexTensor,
        scales: HostScales,
        code: [f32; 16],
        blocksize: usize,
    },
}

#[derive(Debug, Clone)]
enum HostScales {
    Plain(FlexTensor),
    Nested {
        codes: FlexTensor,
        nested_absmax: FlexTensor,
        table: Box<[f32; 256]>,
        offset: f32,
    },
}

/// `t` if its values can be borrowed as `E` (contiguous, of that type), else a contiguous copy.
fn borrowable<E: burn::tensor::Element + bytemuck::Pod>(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<E>().is_some() {
        t
    } else {
        FlexTensor::from_data(t.into_data().convert::<E>())
    }
}

fn slice<E: burn::tensor::Element + bytemuck::Pod>(t: &FlexTensor) -> &[E] {
    t.as_slice::<E>()
        .expect("made borrowable when the weight was built")
}

impl DecodeWeight {
    /// A dense `[out, in]` weight on Flex, held as f32 (or bf16, as stored); `None` on another
    /// device or for another dtype.
    pub fn dense(w: &Tensor<2>) -> Option<DecodeWeight> {
        let [out_features, in_features] = w.dims();
        let t = flex_float(w)?;
        let kind = match t.dtype() {
            DType::F32 => Kind::F32(borrowable::<f32>(t)),
            DType::BF16 => {
                let bits: Vec<u16> = slice_or_convert_bf16(t);
                Kind::Bf16(FlexTensor::from_data(TensorData::new(
                    bits,
                    [out_features * in_features],
                )))
            }
            _ => return None,
        };
        let host = DecodeWeight {
            kind,
            out_features,
            in_features,
        };
        host.checked_view().ok()?;
        Some(host)
    }

    /// A 4-bit weight on Flex; `None` on another device.
    pub fn quant4(w: &Nf4Tensor) -> Option<DecodeWeight> {
        let [out_features, in_features] = w.dims();
        let parts = w.host_parts()?;
        let scales = match parts.scales {
            crate::device::HostParts4Scales::Plain(a) => HostScales::Plain(borrowable::<f32>(a)),
            crate::device::HostParts4Scales::Nested {
                codes,
                nested_absmax,
                nested_code,
                offset,
            } => {
                let nested_code = borrowable::<f32>(nested_code);
                let code = slice::<f32>(&nested_code);
                HostScales::Nested {
                    codes: borrowable::<u32>(codes),
                    nested_absmax: borrowable::<f32>(nested_absmax),
                    table: Box::new(std::array::from_fn(|i| code.get(i).copied().unwrap_or(0.0))),
                    offset,
                }
            }
        };
        let code = *w.quant_type().code();
        let host = DecodeWeight {
            kind: Kind::Quant4 {
                words: borrowable::<u32>(parts.words),
                scales,
                code,
                blocksize: w.blocksize(),
            },
            out_features,
            in_features,
        };
        host.checked_view().ok()?;
        Some(host)
    }

    /// An int8 weight on Flex; `None` on another device.
    pub fn int8(w: &Int8Tensor) -> Option<DecodeWeight> {
        let [out_features, in_features] = w.dims();
        let (codes, scales) = w.host_parts()?;
        let host = DecodeWeight {
            kind: Kind::Int8 {
                codes: borrowable::<u32>(codes),
                scales: borrowable::<f32>(scales),
            },
            out_features,
            in_features,
        };
        host.checked_view().ok()?;
        Some(host)
    }

    /// A compact copy of a dense f32 `[out, in]` weight for decoding (an output head read every
    /// token): bf16, or int8 with row-wise absmax. `Exact` keeps a handle on `w` itself.
    pub fn compact(w: &DecodeWeight, precision: HeadPrecision) -> Result<DecodeWeight, QuantError> {
        let (n, k) = (w.out_features, w.in_features);
        let values = match (&w.kind, precision) {
            (_, HeadPrecision::Exact) => return Ok(w.clone()),
            (Kind::F32(t), _) => slice::<f32>(t),
            _ => {
                return Err(QuantError::Unsupported(
                    "only an f32 head can be made compact".into(),
                ));
            }
        };
        let kind = match precision {
            HeadPrecision::Exact => unreachable!("returned above"),
            HeadPrecision::Bf16 => {
                let bits: Vec<u16> = values
                    .iter()
                    .map(|v| half::bf16::from_f32(*v).to_bits())
                    .collect();
                Kind::Bf16(FlexTensor::from_data(TensorData::new(bits, [n * k])))
            }
            HeadPrecision::Int8 => {
                let q = Int8Weight::quantize(&values[..n * k], [n, k])?;
                let codes: &[u8] = bytemuck::cast_slice(q.codes());
                Kind::Int8 {
                    codes: FlexTensor::from_data(TensorData::new(
                        crate::host_kernels::words_from_bytes(codes),
                        [codes.len().div_ceil(4)],
                    )),
                    scales: FlexTensor::from_data(TensorData::new(q.row_scales(), [n])),
                }
            }
        };
        Ok(DecodeWeight {
            kind,
            out_features: n,
            in_features: k,
        })
    }

    /// Whether `other` reads the same buffers (the same weight, not merely equal values).
    pub fn shares_storage(&self, other: &DecodeWeight) -> bool {
        let first = |w: &DecodeWeight| -> *const u8 {
            match &w.kind {
                Kind::F32(t) => slice::<f32>(t).as_ptr().cast(),
                Kind::Bf16(t) => slice::<u16>(t).as_ptr().cast(),
                Kind::Int8 { codes, .. } => slice::<u32>(codes).as_ptr().cast(),
                Kind::Quant4 { words, .. } => slice::<u32>(words).as_ptr().cast(),
            }
        };
        self.dims() == other.dims()
            && std::mem::discriminant(&self.kind) == std::mem::discriminant(&other.kind)
            && first(self) == first(other)
    }

    /// `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.out_features, self.in_features]
    }

    /// Bytes a decode step reads from this weight.
    pub fn bytes(&self) -> usize {
        let numel = self.out_features * self.in_features;
        match &self.kind {
            Kind::F32(_) => 4 * numel,
            Kind::Bf16(_) => 2 * numel,
            Kind::Int8 { .. } => numel + 4 * self.out_features,
            Kind::Quant4 {
                blocksize, scales, ..
            } => {
                let blocks = numel.div_ceil(*blocksize);
                numel.div_ceil(2)
                    + match scales {
                        HostScales::Plain(_) => 4 * blocks,
                        HostScales::Nested { .. } => blocks + 4 * blocks.div_ceil(256),
                    }
            }
        }
    }

    /// Row `r` of this weight as f32 values (an embedding lookup from a tied head). `None` for
    /// a 4-bit weight, a row outside the weight or an `out` of another length.
    pub fn row(&self, r: usize, out: &mut [f32]) -> Option<()> {
        let k = self.in_features;
        if r >= self.out_features || out.len() != k {
            return None;
        }
        match &self.kind {
            Kind::F32(t) => out.copy_from_slice(&slice::<f32>(t)[r * k..][..k]),
            Kind::Bf16(t) => {
                for (o, b) in out.iter_mut().zip(&slice::<u16>(t)[r * k..][..k]) {
                    *o = f32::from_bits((*b as u32) << 16);
                }
            }
            Kind::Int8 { codes, scales } => {
                let codes: &[i8] = bytemuck::cast_slice(slice::<u32>(codes));
                let s = slice::<f32>(scales)[r];
                for (o, c) in out.iter_mut().zip(&codes[r * k..][..k]) {
                    *o = *c as f32 * s;
                }
            }
            Kind::Quant4 { .. } => return None,
        }
        Some(())
    }

    /// The kernels' view of the buffers.
    pub fn view(&self) -> GemvWeight<'_> {
        self.checked_view()
            .expect("buffers checked against the shape when the weight was built")
    }

    fn checked_view(&self) -> Result<GemvWeight<'_>, QuantError> {
        let (n, k) = (self.out_features, self.in_features);
        match &self.kind {
            Kind::F32(t) => GemvWeight::f32(slice(t), n, k),
            Kind::Bf16(t) => GemvWeight::bf16(slice(t), n, k),
            Kind::Int8 { codes, scales } => GemvWeight::int8(
                bytemuck::cast_slice(slice::<u32>(codes)),
                slice(scales),
                n,
                k,
            ),
            Kind::Quant4 {
                words,
                scales,
                code,
                blocksize,
            } => {
                let scales = match scales {
                    HostScales::Plain(a) => Scales::F32(slice(a)),
                    HostScales::Nested {
                        codes,
                        nested_absmax,
                        table,
                        offset,
                    } => Scales::Nested {
                        codes: bytemuck::cast_slice(slice::<u32>(codes)),
                        nested_absmax: slice(nested_absmax),
                        code: table,
                        offset: *offset,
                    },
                };
                Ok(GemvWeight::quant4(PackedView::new(
                    slice(words),
                    scales,
                    code,
                    n,
                    k,
                    *blocksize,
                )?))
            }
        }
    }
}

fn slice_or_convert_bf16(t: FlexTensor) -> Vec<u16> {
    match t.as_slice::<half::bf16>() {
        Some(s) => s.iter().map(|v| v.to_bits()).collect(),
        None => t
            .into_data()
            .convert::<half::bf16>()
            .try_to_vec::<half::bf16>()
            .map(|v| v.iter().map(|b| b.to_bits()).collect())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{QuantConfig, gemv_rows};
    use burn::tensor::Device;

    fn weight(n: usize, k: usize) -> Tensor<2> {
        let v: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        Tensor::from_data(TensorData::new(v, [n, k]), &Device::flex())
    }

    fn host_matmul(w: &DecodeWeight, x: &[f32]) -> Vec<f32> {
        let [n, _] = w.dims();
        let mut out = vec![0f32; n];
        gemv_rows(&w.view(), x, 1, 0..n, &mut out);
        out
    }

    fn device_matmul(y: Tensor<2>) -> Vec<f32> {
        y.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    /// Handles on NF4 (plain and double-quantized), int8 and dense tensors compute what the
    /// tensors' own matmuls compute.
    #[test]
    fn handles_match_the_device_matmuls() {
        let (n, k) = (24, 128);
        let w = weight(n, k);
        let xv: Vec<f32> = (0..k).map(|i| (i as f32 * 0.1).sin()).collect();
        let x = Tensor::<2>::from_data(TensorData::new(xv.clone(), [1, k]), &Device::flex());
        let close = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .all(|(p, q)| (p - q).abs() < 1e-4 * (1.0 + q.abs()))
        };
        let dense = DecodeWeight::dense(&w).unwrap();
        assert!(close(
            &host_matmul(&dense, &xv),
            &device_matmul(x.clone().matmul(w.clone().transpose()))
        ));
        for double in [false, true] {
            let q =
                Nf4Tensor::quantize(w.clone(), &QuantConfig::default().with_double_quant(double))
                    .unwrap();
            let host = DecodeWeight::quant4(&q).unwrap();
            assert!(close(
                &host_matmul(&host, &xv),
                &device_matmul(q.matmul(x.clone()))
            ));
            assert!(host.bytes() < dense.bytes() / 6);
        }
        let q8 = Int8Tensor::quantize(w.clone()).unwrap();
        let host = DecodeWeight::int8(&q8).unwrap();
        assert!(close(
            &host_matmul(&host, &xv),
            &device_matmul(q8.matmul(x.clone()))
        ));
        // the compact int8 head is the same codec
        let compact = DecodeWeight::compact(&dense, HeadPrecision::Int8).unwrap();
        assert!(close(&host_matmul(&compact, &xv), &host_matmul(&host, &xv)));
        let mut row = vec![0f32; k];
        compact.row(3, &mut row).unwrap();
        let want = Int8Weight::quantize(&device_matmul(w.clone()), [n, k])
            .unwrap()
            .dequantize();
        assert_eq!(row, want[3 * k..4 * k]);
        let bf = DecodeWeight::compact(&dense, HeadPrecision::Bf16).unwrap();
        assert_eq!(bf.bytes(), dense.bytes() / 2);
        assert!(dense.row(n, &mut row).is_none());
    }

    #[test]
    fn head_precisions_parse() {
        for p in [
            HeadPrecision::Exact,
            HeadPrecision::Bf16,
            HeadPrecision::Int8,
        ] {
            assert_eq!(p.as_str().parse::<HeadPrecision>().unwrap(), p);
        }
        assert!("int4".parse::<HeadPrecision>().is_err());
    }
}
