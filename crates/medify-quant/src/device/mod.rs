//! 4-bit tensors resident on a burn device, and the ops that use them.
//!
//! Every op goes through one backend extension ([`Quant4Ops`]), implemented with CubeCL kernels
//! for the Cube backends (wgpu, CUDA), with the host kernels of this crate for Flex, and with a
//! hand-written backward for autodiff. The backend is picked at run time from the device.

mod autodiff;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube;
#[cfg(feature = "flex")]
mod flex;
pub mod int8;
mod ops;

pub use int8::{Int8Ops, Int8Tensor};
pub use ops::Quant4Ops;

use burn::backend::Dispatch;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::host_kernels::words_from_bytes;
use crate::quant_state::{Absmax, NestedAbsmax, QuantState};
use crate::{Packed4Bit, QuantConfig, QuantError, QuantType};

/// Whether `device` is the Flex CPU backend (with or without autodiff): its memory is host
/// memory and the workspace's host kernels (4-bit matmul, dropout, fused softmax / SwiGLU / loss,
/// the optimizer's fused 8-bit update) run on it.
pub fn is_flex(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    if device.clone().inner() == Device::flex() {
        return true;
    }
    let _ = device;
    false
}

/// Per-block scales as they live on the device. One per weight, built once: the size of the
/// double-quantized variant (three tensor handles) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum DeviceScales {
    Plain(Tensor<1>),
    Double {
        codes: Tensor<1, Int>,
        nested_absmax: Tensor<1>,
        nested_code: Tensor<1>,
        offset: f32,
    },
}

/// A frozen 4-bit weight (NF4 or FP4, optionally double-quantized) on a burn device.
///
/// Codes stay packed (`u32` words, 8 codes each) and the statistics stay in their 4.127-bit
/// form; dense values exist only transiently inside an op.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use medify_quant::{Nf4Tensor, QuantConfig};
/// let device = Device::flex();
/// let w = Tensor::<2>::from_floats([[0.5f32; 64], [-1.0; 64]], &device);
/// let q = Nf4Tensor::quantize(w, &QuantConfig::default()).unwrap();
/// let x = Tensor::<2>::ones([1, 64], &device);
/// let y = q.matmul(x); // x @ W^T, never materialising W
/// assert_eq!(y.dims(), [1, 2]);
/// ```
#[derive(Debug, Clone)]
pub struct Nf4Tensor {
    packed: Tensor<1, Int>,
    scales: DeviceScales,
    code: Tensor<1>,
    quant_type: QuantType,
    blocksize: usize,
    shape: [usize; 2],
    dtype: String,
}

fn words_tensor(bytes: &[u8], device: &Device) -> Tensor<1, Int> {
    let words = words_from_bytes(bytes);
    let len = words.len();
    Tensor::from_data(TensorData::new(words, [len]), (device, DType::U32))
}

fn f32_tensor(values: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), [values.len()]),
        (device, DType::F32),
    )
}

fn download_bytes(t: &Tensor<1, Int>, len: usize) -> Vec<u8> {
    let words = t
        .to_data()
        .convert::<u32>()
        .try_into_vec::<u32>()
        .expect("u32 words");
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes.truncate(len);
    bytes
}

/// A dense weight's values on the host, as f32 (what the host quantizers read).
fn host_values(weight: Tensor<2>) -> Result<Vec<f32>, QuantError> {
    weight
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| QuantError::Unsupported(format!("reading weight: {e:?}")))
}

fn download_f32(t: &Tensor<1>) -> Vec<f32> {
    t.to_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 values")
}

impl Nf4Tensor {
    /// Uploads a host-side 4-bit tensor. A 1-D tensor becomes one row.
    pub fn from_packed(p: &Packed4Bit, device: &Device) -> Result<Nf4Tensor, QuantError> {
        let shape = match p.state.shape.as_slice() {
            [n] => [1, *n],
            [r, c] => [*r, *c],
            other => {
                return Err(QuantError::Unsupported(format!(
                    "Nf4Tensor holds 1-D or 2-D weights, got shape {other:?}"
                )));
            }
        };
        let scales = match &p.state.absmax {
            Absmax::Plain(a) => DeviceScales::Plain(f32_tensor(a, device)),
            Absmax::Double(n) => DeviceScales::Double {
                codes: words_tensor(&n.codes, device),
                nested_absmax: f32_tensor(&n.nested_absmax, device),
                nested_code: f32_tensor(&n.code, device),
                offset: n.offset,
            },
        };
        Ok(Nf4Tensor {
            packed: words_tensor(&p.data, device),
            scales,
            code: f32_tensor(p.state.quant_type.code(), device),
            quant_type: p.state.quant_type,
            blocksize: p.state.blocksize,
            shape,
            dtype: p.state.dtype.clone(),
        })
    }

    /// Quantizes a dense weight `[out, in]` with the host codec and uploads the result to the
    /// weight's device. Quantizing happens once per model load, so the host codec (rayon,
    /// bit-exact with bitsandbytes) serves every backend.
    pub fn quantize(weight: Tensor<2>, config: &QuantConfig) -> Result<Nf4Tensor, QuantError> {
        let device = weight.device();
        let dims = weight.dims();
        let packed = Packed4Bit::quantize(&host_values(weight)?, &dims, config)?;
        Nf4Tensor::from_packed(&packed, &device)
    }

    /// Downloads back to the host form (for saving in bitsandbytes layout).
    pub fn to_packed(&self) -> Packed4Bit {
        let numel = self.shape[0] * self.shape[1];
        let absmax = match &self.scales {
            DeviceScales::Plain(a) => Absmax::Plain(download_f32(a)),
            DeviceScales::Double {
                codes,
                nested_absmax,
                nested_code,
                offset,
            } => Absmax::Double(NestedAbsmax {
                codes: download_bytes(codes, numel.div_ceil(self.blocksize)),
                nested_absmax: download_f32(nested_absmax),
                code: download_f32(nested_code),
                offset: *offset,
            }),
        };
        Packed4Bit {
            data: download_bytes(&self.packed, numel.div_ceil(2)),
            state: QuantState {
                quant_type: self.quant_type,
                blocksize: self.blocksize,
                shape: self.shape.to_vec(),
                dtype: self.dtype.clone(),
                absmax,
            },
        }
    }

    /// `[out_features, in_features]`.
    pub fn dims(&self) -> [usize; 2] {
        self.shape
    }

    /// NF4 or FP4.
    pub fn quant_type(&self) -> QuantType {
        self.quant_type
    }

    /// Elements per absmax block.
    pub fn blocksize(&self) -> usize {
        self.blocksize
    }

    /// Whether the scales are double-quantized.
    pub fn is_double_quant(&self) -> bool {
        matches!(self.scales, DeviceScales::Double { .. })
    }

    /// The device holding the codes.
    pub fn device(&self) -> Device {
        self.packed.device()
    }

    /// Bytes held on the device: packed codes plus statistics.
    pub fn device_bytes(&self) -> usize {
        let numel = self.shape[0] * self.shape[1];
        let stats = match &self.scales {
            DeviceScales::Plain(_) => 4 * numel.div_ceil(self.blocksize),
            DeviceScales::Double { nested_absmax, .. } => {
                numel.div_ceil(self.blocksize).next_multiple_of(4)
                    + 4 * nested_absmax.dims()[0]
                    + 4 * 256
            }
        };
        4 * numel.div_ceil(8) + stats + 4 * 16
    }

    /// One f32 scale per block, decoding double quantization on the device.
    pub fn absmax(&self) -> Tensor<1> {
        match &self.scales {
            DeviceScales::Plain(a) => a.clone(),
            DeviceScales::Double {
                codes,
                nested_absmax,
                nested_code,
                offset,
            } => {
                let num_blocks = (self.shape[0] * self.shape[1]).div_ceil(self.blocksize);
                Tensor::from_dispatch(<Dispatch as Quant4Ops>::q4_decode_absmax(
                    codes.clone().into_dispatch(),
                    nested_absmax.clone().into_dispatch(),
                    nested_code.clone().into_dispatch(),
                    *offset,
                    num_blocks,
                ))
            }
        }
    }

    /// Handles on the Flex buffers (no copy); `None` on another device.
    #[cfg(feature = "flex")]
    pub(crate) fn host_parts(&self) -> Option<HostParts4> {
        use crate::host_tensor::{flex_float, flex_int};
        let scales = match &self.scales {
            DeviceScales::Plain(a) => HostParts4Scales::Plain(flex_float(a)?),
            DeviceScales::Double {
                codes,
                nested_absmax,
                nested_code,
                offset,
            } => HostParts4Scales::Nested {
                codes: flex_int(codes)?,
                nested_absmax: flex_float(nested_absmax)?,
                nested_code: flex_float(nested_code)?,
                offset: *offset,
            },
        };
        Some(HostParts4 {
            words: flex_int(&self.packed)?,
            scales,
        })
    }

    /// The dense f32 weight `[out, in]`, decoded on the device.
    pub fn dequantize(&self) -> Tensor<2> {
        Tensor::from_dispatch(<Dispatch as Quant4Ops>::q4_dequantize(
            self.packed.clone().into_dispatch(),
            self.absmax().into_dispatch(),
            self.code.clone().into_dispatch(),
            self.shape[0],
            self.shape[1],
            self.blocksize,
        ))
    }

    /// `x @ W^T` over the last dim of `x` (`[..., in]` → `[..., out]`).
    ///
    /// Fused: small batches stream the packed codes; larger ones decode tiles (Flex) or
    /// dequantize transiently before the backend's matmul (Cube). On an autodiff device the
    /// result is differentiable in `x`; backward re-dequantizes instead of keeping `W`.
    ///
    /// # Panics
    /// If the last dim of `x` is not `in_features`; [`Nf4Tensor::try_matmul`] returns an error.
    pub fn matmul<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self.try_matmul(x) {
            Ok(y) => y,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Nf4Tensor::matmul`], with a shape mismatch reported as an error.
    pub fn try_matmul<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>, QuantError> {
        frozen_matmul(x, self.shape, "a 4-bit", |x2| self.matmul_rows(x2))
    }

    /// `x2 [m, in] @ W^T` through the backend extension.
    fn matmul_rows(&self, x2: Tensor<2>) -> Tensor<2> {
        let y = match &self.scales {
            DeviceScales::Plain(absmax) => <Dispatch as Quant4Ops>::q4_matmul(
                x2.into_dispatch(),
                self.packed.clone().into_dispatch(),
                absmax.clone().into_dispatch(),
                self.code.clone().into_dispatch(),
                self.shape[0],
                self.blocksize,
            ),
            DeviceScales::Double {
                codes,
                nested_absmax,
                nested_code,
                offset,
            } => <Dispatch as Quant4Ops>::q4_matmul_dq(
                x2.into_dispatch(),
                self.packed.clone().into_dispatch(),
                codes.clone().into_dispatch(),
                nested_absmax.clone().into_dispatch(),
                nested_code.clone().into_dispatch(),
                self.code.clone().into_dispatch(),
                *offset,
                self.shape[0],
                self.blocksize,
            ),
        };
        Tensor::<2>::from_dispatch(y)
    }
}

/// A 4-bit weight's Flex buffers (see `HostWeight`).
#[cfg(feature = "flex")]
pub(crate) struct HostParts4 {
    pub(crate) words: burn_flex::FlexTensor,
    pub(crate) scales: HostParts4Scales,
}

/// Its scales, as stored.
#[cfg(feature = "flex")]
#[allow(clippy::large_enum_variant)] // built once per weight and taken apart at once
pub(crate) enum HostParts4Scales {
    Plain(burn_flex::FlexTensor),
    Nested {
        codes: burn_flex::FlexTensor,
        nested_absmax: burn_flex::FlexTensor,
        nested_code: burn_flex::FlexTensor,
        offset: f32,
    },
}

/// `x [.., in] @ W^T` for a frozen weight of `shape` `[out, in]`: `x` flattened to rows,
/// multiplied by `rows`, and given its leading dims back. A last dim other than `in` is an
/// error naming `what` weight it met.
pub(crate) fn frozen_matmul<const D: usize>(
    x: Tensor<D>,
    shape: [usize; 2],
    what: &str,
    rows: impl FnOnce(Tensor<2>) -> Tensor<2>,
) -> Result<Tensor<D>, QuantError> {
    let dims = x.dims();
    if D == 0 || dims[D - 1] != shape[1] {
        return Err(QuantError::Unsupported(format!(
            "input of shape {dims:?} cannot multiply {what} weight of shape {shape:?}: its last dim must be {}",
            shape[1]
        )));
    }
    let m: usize = dims[..D - 1].iter().product();
    let y = rows(x.reshape([m, shape[1]]));
    let mut out = dims;
    out[D - 1] = shape[0];
    Ok(y.reshape(out))
}

/// A frozen 4-bit linear layer: `x @ W^T + bias`, differentiable in `x` only.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use medify_quant::{Nf4Tensor, QuantConfig, linear_4bit};
/// let device = Device::flex().autodiff();
/// let w = Nf4Tensor::quantize(Tensor::<2>::ones([3, 64], &device), &QuantConfig::default()).unwrap();
/// let x = Tensor::<2>::ones([2, 64], &device).require_grad();
/// let y = linear_4bit(x.clone(), &w, None);
/// let grads = y.sum().backward();
/// assert_eq!(x.grad(&grads).unwrap().dims(), [2, 64]);
/// ```
pub fn linear_4bit<const D: usize>(
    x: Tensor<D>,
    weight: &Nf4Tensor,
    bias: Option<&Tensor<1>>,
) -> Tensor<D> {
    let y = weight.matmul(x);
    match bias {
        Some(b) => y + b.clone().unsqueeze(),
        None => y,
    }
}
