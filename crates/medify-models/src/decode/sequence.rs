//! One sequence's key/value cache on the host: per layer, token-major `[len][kv_heads · head_dim]`
//! with no padding, so sequences of any length decode together without masks.

use crate::error::{ModelError, Result};
use crate::model::KvCache;

/// Tokens of room added at a time, so appending a token does not reallocate every step.
const GROW_TOKENS: usize = 256;

/// The cached keys and values of one sequence (see [`crate::HostDecoder`]).
#[derive(Debug, Clone)]
pub struct DecodeSequence {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// `kv_heads · head_dim`.
    width: usize,
    len: usize,
}

impl DecodeSequence {
    /// An empty cache for `layers` layers of `width = kv_heads · head_dim` keys per token.
    pub(crate) fn new(layers: usize, width: usize) -> DecodeSequence {
        DecodeSequence {
            keys: vec![Vec::new(); layers],
            values: vec![Vec::new(); layers],
            width,
            len: 0,
        }
    }

    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Layers cached.
    pub(crate) fn layers(&self) -> usize {
        self.keys.len()
    }

    /// Keys per token and layer (`kv_heads · head_dim`).
    pub(crate) fn width(&self) -> usize {
        self.width
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes room for one more token in every layer (zeros the decode step overwrites).
    pub(crate) fn push_slot(&mut self) {
        let need = (self.len + 1) * self.width;
        for buf in self.keys.iter_mut().chain(self.values.iter_mut()) {
            if buf.capacity() < need {
                buf.reserve(GROW_TOKENS * self.width);
            }
            buf.resize(need, 0.0);
        }
        self.len += 1;
    }

    /// Keys and values of `layer`, `len · width` each.
    pub(crate) fn layer_mut(&mut self, layer: usize) -> (&mut [f32], &mut [f32]) {
        (&mut self.keys[layer], &mut self.values[layer])
    }

    /// Every row of a prefilled burn cache (left-padded rows, keys `[rows, kv_heads, t,
    /// head_dim]` per layer) as a host sequence holding that row's valid positions, in order.
    pub(crate) fn from_cache(cache: &KvCache) -> Result<Vec<DecodeSequence>> {
        let rows = cache.sequences();
        let layers = cache.layer_tensors();
        let Some(Some(first)) = layers.first() else {
            return Ok(Vec::new());
        };
        let [b, kvh, t, d] = first.keys.dims();
        if b != rows {
            return Err(ModelError::InvalidRequest(format!(
                "the cache holds {b} rows of keys but {rows} sequences"
            )));
        }
        let width = kvh * d;
        let mut out: Vec<DecodeSequence> = (0..rows)
            .map(|r| {
                let mut s = DecodeSequence::new(layers.len(), width);
                s.len = cache.valid(r).iter().filter(|v| **v).count();
                s
            })
            .collect();
        let read = |x: &burn::tensor::Tensor<4>| -> Result<Vec<f32>> {
            x.to_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| ModelError::InvalidRequest(format!("reading the KV cache: {e:?}")))
        };
        for (l, layer) in layers.iter().enumerate() {
            let Some(layer) = layer else {
                return Err(ModelError::InvalidRequest(format!(
                    "layer {l} of the KV cache is empty"
                )));
            };
            let (keys, values) = (read(&layer.keys)?, read(&layer.values)?);
            for (r, seq) in out.iter_mut().enumerate() {
                let valid = cache.valid(r);
                for (src, dst) in [(&keys, &mut seq.keys[l]), (&values, &mut seq.values[l])] {
                    dst.reserve((seq.len + GROW_TOKENS) * width);
                    for j in (0..t).filter(|&j| valid[j]) {
                        for g in 0..kvh {
                            let at = ((r * kvh + g) * t + j) * d;
                            dst.extend_from_slice(&src[at..at + d]);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}
