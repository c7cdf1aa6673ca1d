//! Per-parameter Adam moments and where they live (device or host).

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::blockwise::{self, BLOCK};

/// The moments of one parameter in host memory: the form that is paged out and saved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HostMoments {
    F32 {
        m: Vec<f32>,
        v: Vec<f32>,
    },
    Q8 {
        m: Vec<u8>,
        m_absmax: Vec<f32>,
        v: Vec<u8>,
        v_absmax: Vec<f32>,
    },
}

/// The moments of one parameter on its device, ready for the update.
#[allow(clippy::large_enum_variant)] // one per parameter, moved, never copied in bulk
#[derive(Debug, Clone)]
pub(crate) enum DeviceMoments {
    F32 {
        m: Tensor<1>,
        v: Tensor<1>,
    },
    Q8 {
        m: Tensor<1, Int>,
        m_absmax: Tensor<1>,
        v: Tensor<1, Int>,
        v_absmax: Tensor<1>,
    },
}

/// Bytes of 8-bit state for `n` values in host form: a code per value, an absmax per block.
pub(crate) fn q8_host_bytes(n: usize) -> u64 {
    let n_pad = blockwise::padded_len(n);
    2 * (n_pad as u64 + 4 * (n_pad / BLOCK) as u64)
}

impl HostMoments {
    pub(crate) fn upload(&self, device: &Device) -> DeviceMoments {
        fn floats(x: &[f32], device: &Device) -> Tensor<1> {
            Tensor::from_data(TensorData::new(x.to_vec(), [x.len()]), device)
        }
        fn codes(x: &[u8], device: &Device) -> Tensor<1, Int> {
            let words = blockwise::bytes_to_words(x);
            let n = words.len();
            Tensor::from_data(TensorData::new(words, [n]), device)
        }
        match self {
            HostMoments::F32 { m, v } => DeviceMoments::F32 {
                m: floats(m, device),
                v: floats(v, device),
            },
            HostMoments::Q8 {
                m,
                m_absmax,
                v,
                v_absmax,
            } => DeviceMoments::Q8 {
                m: codes(m, device),
                m_absmax: floats(m_absmax, device),
                v: codes(v, device),
                v_absmax: floats(v_absmax, device),
            },
        }
    }
}

impl DeviceMoments {
    /// Device bytes: f32 moments, or 4-byte words of three codes plus the absmax.
    pub(crate) fn bytes(&self) -> u64 {
        match self {
            DeviceMoments::F32 { m, v } => 4 * (m.dims()[0] + v.dims()[0]) as u64,
            DeviceMoments::Q8 {
                m,
                m_absmax,
                v,
                v_absmax,
            } => 4 * (m.dims()[0] + v.dims()[0] + m_absmax.dims()[0] + v_absmax.dims()[0]) as u64,
        }
    }

    pub(crate) fn download(&self) -> HostMoments {
        fn floats(t: &Tensor<1>) -> Vec<f32> {
            t.to_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap_or_default()
        }
        fn codes(t: &Tensor<1, Int>, n_pad: usize) -> Vec<u8> {
            let words = t
                .to_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .unwrap_or_default();
            blockwise::words_to_bytes(&words, n_pad)
        }
        match self {
            DeviceMoments::F32 { m, v } => HostMoments::F32 {
                m: floats(m),
                v: floats(v),
            },
            DeviceMoments::Q8 {
                m,
                m_absmax,
                v,
                v_absmax,
            } => {
                let n_pad = m_absmax.dims()[0] * BLOCK;
                HostMoments::Q8 {
                    m: codes(m, n_pad),
                    m_absmax: floats(m_absmax),
                    v: codes(v, n_pad),
                    v_absmax: floats(v_absmax),
                }
            }
        }
    }
}

/// Where a parameter's moments are between steps.
#[allow(clippy::large_enum_variant)] // one per parameter
#[derive(Debug, Clone)]
pub(crate) enum Place {
    /// Paged out to host memory, away from the parameter's accelerator.
    Host(HostMoments),
    /// On the parameter's device.
    Device(DeviceMoments),
    /// In host memory because the parameter's device is the CPU (resident, nothing to page).
    Local(HostMoments),
}

/// One parameter's optimizer state.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    /// Adam steps taken by this parameter (bias correction uses it).
    pub(crate) step: u64,
    /// Elements of the parameter.
    pub(crate) numel: usize,
    /// Moments stored in 8 bits.
    pub(crate) eight_bit: bool,
    pub(crate) place: Place,
    /// Logical time of the last update, for least-recently-used paging.
    pub(crate) last_used: u64,
}

impl Slot {
    /// Bytes in host (storage) form, whatever the slot's place.
    pub(crate) fn storage_bytes(&self) -> u64 {
        if self.eight_bit {
            q8_host_bytes(self.numel)
        } else {
            8 * self.numel as u64
        }
    }

    pub(crate) fn device_bytes(&self) -> u64 {
        match &self.place {
            Place::Device(d) => d.bytes(),
            Place::Host(_) | Place::Local(_) => 0,
        }
    }

    pub(crate) fn host_moments(&self) -> HostMoments {
        match &self.place {
            Place::Host(h) | Place::Local(h) => h.clone(),
            Place::Device(d) => d.download(),
        }
    }
}
