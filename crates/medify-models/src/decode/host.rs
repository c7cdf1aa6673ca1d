//! [`HostDecoder`]: the step itself.

use medify_lora::{FrozenWeight, Projection};
use medify_quant::{DecodeWeight, gemv_rows};

use super::DecodeOptions;
use super::sequence::DecodeSequence;
use super::team::{Member, Shared, run_team};
use crate::config::{Activation, Family};
use crate::error::{ModelError, Result};
use crate::model::{CausalLm, KvCache};
use crate::rope::Rope;

/// A frozen projection with its adapter, for the host kernels.
struct HostLinear {
    weight: DecodeWeight,
    bias: Option<Vec<f32>>,
    lora: Option<HostLora>,
}

/// `s · (x Aᵀ) Bᵀ`, unmerged.
struct HostLora {
    /// `[rank, in]`.
    a: Vec<f32>,
    /// `[out, rank]`.
    b: Vec<f32>,
    rank: usize,
    scale: f32,
}

fn host_f32<const D: usize>(t: &burn::tensor::Tensor<D>) -> Option<Vec<f32>> {
    t.to_data().convert::<f32>().try_into_vec::<f32>().ok()
}

impl HostLinear {
    /// `None` when the host path cannot reproduce the projection (DoRA, dropout while
    /// training, a weight off Flex).
    fn new(p: &Projection, device: &burn::tensor::Device) -> Option<HostLinear> {
        let weight = match p.weight() {
            FrozenWeight::Dense(w) => DecodeWeight::dense(w)?,
            FrozenWeight::Quant4(q) => DecodeWeight::quant4(q)?,
            FrozenWeight::Int8(q) => DecodeWeight::int8(q)?,
        };
        let lora = match p.lora() {
            Some(a) if !p.is_merged() => {
                if a.is_dora() || a.drops_out_on(device) {
                    return None;
                }
                Some(HostLora {
                    a: host_f32(&a.lora_a.val())?,
                    b: host_f32(&a.lora_b.val())?,
                    rank: a.rank(),
                    scale: a.scaling() as f32,
                })
            }
            _ => None,
        };
        Some(HostLinear {
            weight,
            bias: match p.bias() {
                Some(b) => Some(host_f32(b)?),
                None => None,
            },
            lora,
        })
    }

    fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    fn bytes(&self) -> usize {
        self.weight.bytes()
    }

    /// This thread's share of `y = x Wᵀ + s (x Aᵀ) Bᵀ + b` for the `m` rows of `x`: features
    /// `rows` of each row of `dst` (`[m, n]`, `n` the layer's outputs), set or added.
    fn share(
        &self,
        x: &[f32],
        m: usize,
        rows: std::ops::Range<usize>,
        dst: &mut [f32],
        combine: Combine,
    ) {
        with_scratch(&TMP, rows.len() * m, |tmp| {
            self.share_into(x, m, rows.clone(), tmp);
            let n = self.weight.dims()[0];
            for i in 0..m {
                let out = &mut dst[i * n + rows.start..i * n + rows.end];
                match (combine, m) {
                    (Combine::Set, 1) => out.copy_from_slice(tmp),
                    (Combine::Add, 1) => out.iter_mut().zip(tmp.iter()).for_each(|(o, y)| *o += y),
                    (Combine::Set, _) => out
                        .iter_mut()
                        .enumerate()
                        .for_each(|(j, o)| *o = tmp[j * m + i]),
                    (Combine::Add, _) => out
                        .iter_mut()
                        .enumerate()
                        .for_each(|(j, o)| *o += tmp[j * m + i]),
                }
            }
        });
    }

    /// The share itself, feature-major: `tmp[(r − rows.start) · m + i] = y[i, r]`.
    fn share_into(&self, x: &[f32], m: usize, rows: std::ops::Range<usize>, tmp: &mut [f32]) {
        let k = self.in_features();
        gemv_rows(&self.weight.view(), x, m, rows.clone(), tmp);
        if let Some(l) = &self.lora {
            with_scratch(&LORA, m * l.rank, |u| {
                for i in 0..m {
                    for q in 0..l.rank {
                        u[i * l.rank + q] = medify_quant::simd::dot(
                            &x[i * k..(i + 1) * k],
                            &l.a[q * k..(q + 1) * k],
                        );
                    }
                }
                for (j, r) in rows.clone().enumerate() {
                    let b = &l.b[r * l.rank..(r + 1) * l.rank];
                    for i in 0..m {
                        let d: f32 = b.iter().zip(&u[i * l.rank..]).map(|(b, u)| b * u).sum();
                        tmp[j * m + i] += d * l.scale;
                    }
                }
            });
        }
        if let Some(bias) = &self.bias {
            for (j, r) in rows.enumerate() {
                tmp[j * m..(j + 1) * m]
                    .iter_mut()
                    .for_each(|y| *y += bias[r]);
            }
        }
    }
}

/// Whether a projection's output replaces or adds to (a residual) what its destination holds.
#[derive(Clone, Copy)]
enum Combine {
    Set,
    Add,
}

thread_local! {
    static TMP: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    static LORA: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    static NORMED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    static GATE: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    static ATTN: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` on `len` values of this thread's reusable buffer, which only grows: its contents
/// are whatever the last use left (callers write before they read). A nested use of the same
/// buffer gets a fresh one.
fn with_scratch<R>(
    key: &'static std::thread::LocalKey<std::cell::Cell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut buf = key.with(std::cell::Cell::take);
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let out = f(&mut buf[..len]);
    key.with(|cell| cell.set(buf));
    out
}

struct HostLayer {
    input_norm: Vec<f32>,
    post_norm: Vec<f32>,
    q: HostLinear,
    k: HostLinear,
    v: HostLinear,
    o: HostLinear,
    gate: HostLinear,
    up: HostLinear,
    down: HostLinear,
}

/// A model's decoder step as host kernels (see the module docs).
///
/// ```
/// use burn::tensor::Device;
/// use medify_models::{CausalLm, DecodeOptions, HostDecoder, LoadOptions};
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama");
/// let (model, _) = CausalLm::from_pretrained(dir, &Device::flex(), &LoadOptions::dense()).unwrap();
/// let decoder = HostDecoder::new(&model, &DecodeOptions::default()).unwrap().expect("f32 on Flex");
/// let mut seq = decoder.sequence();
/// let mut logits = Vec::new();
/// for id in [1, 59, 76] {
///     decoder.step(&mut [&mut seq], &[id], &mut logits).unwrap();
/// }
/// assert_eq!((seq.len(), logits.len()), (3, model.config().vocab_size));
/// ```
pub struct HostDecoder {
    embed: DecodeWeight,
    layers: Vec<HostLayer>,
    norm: Vec<f32>,
    head: HostLinear,
    rope: Rope,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    intermediate: usize,
    vocab: usize,
    eps: f32,
    act: Activation,
    embed_scale: Option<f32>,
    window: Option<usize>,
    workspace: std::sync::Mutex<Workspace>,
}

/// A step's buffers, kept between steps so decoding allocates nothing per token.
#[derive(Default)]
struct Workspace {
    /// Hidden states, q, k, v, attention outputs and MLP activations of every sequence.
    values: Vec<f32>,
    /// Per (sequence, layer): keys, values.
    caches: Vec<[Shared; 2]>,
    /// Each sequence's position this step.
    positions: Vec<usize>,
}

impl HostDecoder {
    /// The host decoder of `model`, sharing its weights; `Ok(None)` when the host path does not
    /// apply: a device other than Flex, a 16-bit compute dtype, the exact-erf GELU, DoRA
    /// adapters, or adapters in training mode with dropout (burn's path handles those).
    pub fn new(model: &CausalLm, options: &DecodeOptions) -> Result<Option<HostDecoder>> {
        let cfg = model.config();
        let device = model.device();
        if !medify_quant::is_flex(&device)
            || model.embed_tokens.dtype() != burn::tensor::DType::F32
            || cfg.hidden_act == Activation::Gelu
        {
            return Ok(None);
        }
        let Some(embed) = DecodeWeight::dense(&model.embed_tokens) else {
            return Ok(None);
        };
        let plus_one = cfg.family == Family::Gemma;
        let norm_weight = |n: &crate::layers::RmsNorm| -> Option<Vec<f32>> {
            let w = host_f32(&n.weight)?;
            Some(if plus_one {
                w.iter().map(|v| v + 1.0).collect()
            } else {
                w
            })
        };
        let mut layers = Vec::with_capacity(model.layers.len());
        for layer in &model.layers {
            let (a, m) = (&layer.self_attn, &layer.mlp);
            let linear = |p: &Projection| HostLinear::new(p, &device);
            let (Some(q), Some(k), Some(v), Some(o), Some(gate), Some(up), Some(down)) = (
                linear(&a.q_proj),
                linear(&a.k_proj),
                linear(&a.v_proj),
                linear(&a.o_proj),
                linear(&m.gate_proj),
                linear(&m.up_proj),
                linear(&m.down_proj),
            ) else {
                return Ok(None);
            };
            let (Some(input_norm), Some(post_norm)) = (
                norm_weight(&layer.input_layernorm),
                norm_weight(&layer.post_attention_layernorm),
            ) else {
                return Ok(None);
            };
            layers.push(HostLayer {
                input_norm,
                post_norm,
                q,
                k,
                v,
                o,
                gate,
                up,
                down,
            });
        }
        let head = match &model.lm_head {
            Some(p) => match HostLinear::new(p, &device) {
                Some(mut h) => {
                    h.weight = model.compact_head().get(&h.weight, options.head)?;
                    h
                }
                None => return Ok(None),
            },
            None => HostLinear {
                weight: model.compact_head().get(&embed, options.head)?,
                bias: None,
                lora: None,
            },
        };
        let Some(norm) = norm_weight(&model.norm) else {
            return Ok(None);
        };
        Ok(Some(HostDecoder {
            embed,
            layers,
            norm,
            head,
            rope: Rope::new(cfg),
            hidden: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            intermediate: cfg.intermediate_size,
            vocab: cfg.vocab_size,
            eps: cfg.rms_norm_eps as f32,
            act: cfg.hidden_act,
            embed_scale: plus_one.then(|| (cfg.hidden_size as f32).sqrt()),
            window: cfg.sliding_window,
            workspace: Default::default(),
        }))
    }

    /// An empty sequence for [`HostDecoder::step`].
    pub fn sequence(&self) -> DecodeSequence {
        DecodeSequence::new(self.layers.len(), self.kv_heads * self.head_dim)
    }

    /// The rows of a cache that burn's forward pass filled (a prefill), as host sequences.
    pub fn sequences_from(&self, cache: &KvCache) -> Result<Vec<DecodeSequence>> {
        let seqs = DecodeSequence::from_cache(cache)?;
        if seqs.first().is_some_and(|s| !self.fits(s)) {
            return Err(ModelError::InvalidRequest(
                "the cache was filled by a model of another shape".into(),
            ));
        }
        Ok(seqs)
    }

    /// Whether `seq` caches keys of this model's shape (layers, kv heads × head dim).
    fn fits(&self, seq: &DecodeSequence) -> bool {
        seq.layers() == self.layers.len() && seq.width() == self.kv_heads * self.head_dim
    }

    /// Weight bytes one step reads (every layer and the head), whatever the batch size.
    pub fn weight_bytes_per_step(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
                    .iter()
                    .map(|p| p.bytes())
                    .sum::<usize>()
            })
            .sum();
        layers + self.head.bytes()
    }

    /// Feeds `tokens[i]` to `seqs[i]` (at the position after its cached tokens), appends its
    /// keys and values, and writes the next-token logits `[seqs, vocab]` into `logits`.
    pub fn step(
        &self,
        seqs: &mut [&mut DecodeSequence],
        tokens: &[u32],
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let m = seqs.len();
        if tokens.len() != m {
            return Err(ModelError::InvalidRequest(format!(
                "{} tokens for {m} sequences",
                tokens.len()
            )));
        }
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(ModelError::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.vocab
            )));
        }
        if let Some(s) = seqs.iter().find(|s| !self.fits(s)) {
            return Err(ModelError::InvalidRequest(format!(
                "a sequence cache of {} layers × {} does not fit this model",
                s.layers(),
                s.width()
            )));
        }
        logits.clear();
        logits.resize(m * self.vocab, 0.0);
        if m == 0 {
            return Ok(());
        }
        // The step's buffers are reused from step to step (every value is written before it
        // is read, so they need no clearing).
        let mut workspace = self
            .workspace
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Workspace {
            values: work,
            caches,
            positions,
        } = &mut *workspace;
        positions.clear();
        positions.extend(seqs.iter().map(|s| s.len()));
        for s in seqs.iter_mut() {
            s.push_slot();
        }
        let (hd, qd, kvd) = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
        );
        let len = m * (hd + 2 * qd + 2 * kvd + self.intermediate);
        if work.len() < len {
            work.resize(len, 0.0);
        }
        let (hidden, rest) = work[..len].split_at_mut(m * hd);
        let (q, rest) = rest.split_at_mut(m * qd);
        let (k, rest) = rest.split_at_mut(m * kvd);
        let (v, rest) = rest.split_at_mut(m * kvd);
        let (attn, act) = rest.split_at_mut(m * qd);
        for (i, &t) in tokens.iter().enumerate() {
            let row = &mut hidden[i * hd..(i + 1) * hd];
            self.embed
                .row(t as usize, row)
                .ok_or_else(|| ModelError::InvalidRequest(format!("token id {t}")))?;
            if let Some(s) = self.embed_scale {
                row.iter_mut().for_each(|x| *x *= s);
            }
        }
        caches.clear();
        for s in seqs.iter_mut() {
            for l in 0..self.layers.len() {
                let (keys, values) = s.layer_mut(l);
                caches.push([Shared::new(keys), Shared::new(values)]);
            }
        }
        let buffers = Buffers {
            m,
            hidden: Shared::new(hidden),
            q: Shared::new(q),
            k: Shared::new(k),
            v: Shared::new(v),
            attn: Shared::new(attn),
            act: Shared::new(act),
            logits: Shared::new(logits),
            caches,
            positions,
        };
        run_team(usize::MAX, |me| self.run(me, &buffers));
        // The pointers are into this step's sequences: drop them with the step.
        caches.clear();
        Ok(())
    }

    /// One thread's part of a step.
    fn run(&self, me: Member<'_>, b: &Buffers<'_>) {
        let m = b.m;
        let (hd, d) = (self.hidden, self.head_dim);
        let (qd, kvd) = (self.heads * d, self.kv_heads * d);
        // SAFETY (every `part`/`all` below): a phase writes only this thread's share of a
        // buffer (rows `me.share(n)` of an output, or the heads of its own attention units)
        // and reads buffers no thread writes in that phase; `me.sync()` separates phases.
        with_scratch(&NORMED, m * hd, |xn| {
            for (l, layer) in self.layers.iter().enumerate() {
                self.norm_rows(unsafe { b.hidden.all() }, &layer.input_norm, xn);
                for (p, out, n) in [
                    (&layer.q, &b.q, qd),
                    (&layer.k, &b.k, kvd),
                    (&layer.v, &b.v, kvd),
                ] {
                    let dst = unsafe { out.part(0..m * n) };
                    p.share(xn, m, me.share(n), dst, Combine::Set);
                }
                me.sync();
                self.attend(me, b, l);
                me.sync();
                let attn = unsafe { b.attn.all() };
                let hidden = unsafe { b.hidden.part(0..m * hd) };
                layer.o.share(attn, m, me.share(hd), hidden, Combine::Add);
                me.sync();
                self.norm_rows(unsafe { b.hidden.all() }, &layer.post_norm, xn);
                self.gated(me, b, layer, xn);
                me.sync();
                let act = unsafe { b.act.all() };
                let hidden = unsafe { b.hidden.part(0..m * hd) };
                layer.down.share(act, m, me.share(hd), hidden, Combine::Add);
                me.sync();
            }
            self.norm_rows(unsafe { b.hidden.all() }, &self.norm, xn);
            let logits = unsafe { b.logits.part(0..m * self.vocab) };
            self.head
                .share(xn, m, me.share(self.vocab), logits, Combine::Set);
        });
    }

    /// `rms_norm(x) · w` for each row, as [`crate::RmsNorm`] computes it in f32.
    fn norm_rows(&self, x: &[f32], w: &[f32], out: &mut [f32]) {
        let hd = self.hidden;
        for (row, o) in x.chunks_exact(hd).zip(out.chunks_exact_mut(hd)) {
            let mean = medify_quant::simd::dot(row, row) / hd as f32;
            let rms = 1.0 / (mean + self.eps).sqrt();
            for ((o, x), w) in o.iter_mut().zip(row).zip(w) {
                *o = (x * rms) * w;
            }
        }
    }

    /// `act(gate) · up` for this thread's share of the MLP features.
    fn gated(&self, me: Member<'_>, b: &Buffers<'_>, layer: &HostLayer, xn: &[f32]) {
        let (m, n) = (b.m, self.intermediate);
        let rows = me.share(n);
        let w = rows.len();
        // SAFETY: this thread's features of `act` only (see `run`).
        let act = unsafe { b.act.part(0..m * n) };
        with_scratch(&GATE, 2 * m * w, |buf| {
            let (gate, up) = buf.split_at_mut(m * w);
            layer.gate.share_into(xn, m, rows.clone(), gate);
            layer.up.share_into(xn, m, rows.clone(), up);
            for i in 0..m {
                let out = &mut act[i * n + rows.start..i * n + rows.end];
                for (j, o) in out.iter_mut().enumerate() {
                    let (g, u) = (gate[j * m + i], up[j * m + i]);
                    *o = match self.act {
                        Activation::GeluTanh => crate::layers::gelu_tanh_scalar(g) * u,
                        _ => crate::fused::silu_times(g, u),
                    };
                }
            }
        });
    }

    /// RoPE, the cache append and attention for this thread's (sequence, kv head) units.
    fn attend(&self, me: Member<'_>, b: &Buffers<'_>, layer: usize) {
        let (m, d) = (b.m, self.head_dim);
        let (qd, kvd) = (self.heads * d, self.kv_heads * d);
        let group = self.heads / self.kv_heads;
        let scale = (d as f64).powf(-0.5) as f32;
        let units = me.share(m * self.kv_heads);
        if units.is_empty() {
            return;
        }
        with_scratch(&ATTN, 3 * d, |rot| {
            let (cos, rest) = rot.split_at_mut(d);
            let (sin, qh) = rest.split_at_mut(d);
            for u in units {
                let (i, g) = (u / self.kv_heads, u % self.kv_heads);
                let pos = b.positions[i];
                self.rope.cos_sin(pos as u32, cos, sin);
                let [keys, values] = &b.caches[i * self.layers.len() + layer];
                // SAFETY: head g of sequence i belongs to this unit alone: its new key/value
                // slot, its q heads and its attention outputs (see `run`).
                let (k_new, v_new) = unsafe {
                    (
                        b.k.part(i * kvd + g * d..i * kvd + (g + 1) * d),
                        b.v.part(i * kvd + g * d..i * kvd + (g + 1) * d),
                    )
                };
                rope(k_new, cos, sin, qh);
                let slot = pos * kvd + g * d;
                unsafe {
                    keys.part(slot..slot + d).copy_from_slice(qh);
                    values.part(slot..slot + d).copy_from_slice(v_new);
                }
                let first = self.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let t = pos + 1 - first;
                // SAFETY: positions ≤ pos of head g are written only by this unit (now or in
                // earlier steps); other units read and write other heads' columns.
                let (keys, values) = unsafe { (keys.all(), values.all()) };
                with_scratch(&TMP, t, |scores| {
                    for h in g * group..(g + 1) * group {
                        let q = unsafe { b.q.part(i * qd + h * d..i * qd + (h + 1) * d) };
                        rope(q, cos, sin, qh);
                        for (j, s) in scores.iter_mut().enumerate() {
                            let at = (first + j) * kvd + g * d;
                            *s = medify_quant::simd::dot(qh, &keys[at..at + d]);
                        }
                        crate::fused::softmax_scaled(scores, scale);
                        let out = unsafe { b.attn.part(i * qd + h * d..i * qd + (h + 1) * d) };
                        out.iter_mut().for_each(|o| *o = 0.0);
                        for (j, p) in scores.iter().enumerate() {
                            let at = (first + j) * kvd + g * d;
                            for (o, v) in out.iter_mut().zip(&values[at..at + d]) {
                                *o += p * v;
                            }
                        }
                    }
                });
            }
        });
    }
}

/// `out = x · cos + swap_halves(x) · sin_signed`, as [`crate::rope::apply_rope`].
fn rope(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = x.len() / 2;
    for j in 0..x.len() {
        let swapped = if j < half { x[j + half] } else { x[j - half] };
        out[j] = x[j] * cos[j] + swapped * sin[j];
    }
}

/// The step's shared buffers.
struct Buffers<'a> {
    m: usize,
    hidden: Shared,
    q: Shared,
    k: Shared,
    v: Shared,
    attn: Shared,
    act: Shared,
    logits: Shared,
    /// Per (sequence, layer): keys, values.
    caches: &'a [[Shared; 2]],
    positions: &'a [usize],
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DecodeBatch, GenerationConfig, KernelPath, LoadOptions, TokenBatch};
    use burn::tensor::{Device, Tensor, TensorData};
    use medify_lora::LoraAdapter;
    use medify_quant::{HeadPrecision, QuantConfig, QuantType};

    fn fixture(name: &str, options: &LoadOptions) -> CausalLm {
        let dir = format!(
            "{}/../../fixtures/tiny_models/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        CausalLm::from_pretrained(&dir, &Device::flex(), options)
            .unwrap()
            .0
    }

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    /// Largest |a − b| over the largest |b|.
    fn relative_gap(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// Random, non-zero adapters on every projection (B is zero after `init`, which would test
    /// nothing).
    fn with_adapters(mut model: CausalLm) -> CausalLm {
        use medify_lora::LoraModel;
        let device = Device::flex();
        for (i, (_, p)) in model.linear_layers_mut().into_iter().enumerate() {
            let [out, inp] = p.dims();
            let r = 4;
            let fill = |n: usize, seed: usize| -> Vec<f32> {
                (0..n)
                    .map(|j| (((j * 7919 + seed * 104729) % 1000) as f32 / 1000.0 - 0.5) * 0.2)
                    .collect()
            };
            let a = Tensor::from_data(TensorData::new(fill(r * inp, i), [r, inp]), &device);
            let b = Tensor::from_data(TensorData::new(fill(out * r, i + 50), [out, r]), &device);
            p.set_lora(Some(LoraAdapter::new(a, b, None, 2.0, 0.1).unwrap()))
                .unwrap();
        }
        model
    }

    /// The host step's logits equal burn's forward pass with a KV cache, token by token, for
    /// every architecture fixture, dense and 4-bit (NF4 with double quantization, FP4), with
    /// unmerged adapters, and for several sequences of different lengths stepping together.
    #[test]
    fn steps_match_burns_forward_pass() {
        let nf4 = LoadOptions::quantized(QuantConfig::default());
        let fp4 = LoadOptions::quantized(QuantConfig::default().with_quant_type(QuantType::Fp4));
        let cases: Vec<(&str, CausalLm)> = vec![
            ("llama", fixture("llama", &LoadOptions::dense())),
            ("llama nf4", fixture("llama", &nf4)),
            ("llama fp4", fixture("llama", &fp4)),
            ("llama3", fixture("llama3", &nf4)),
            ("gemma", fixture("gemma", &nf4)),
            (
                "mistral (window 8)",
                fixture("mistral", &LoadOptions::dense()),
            ),
            ("llama nf4 + lora", with_adapters(fixture("llama", &nf4))),
        ];
        let prompts: Vec<Vec<u32>> = vec![
            vec![1, 59, 76, 12, 40],
            vec![1, 80],
            vec![1, 5, 6, 7, 8, 9, 10, 11, 12, 13],
        ];
        for (name, model) in &cases {
            let decoder = HostDecoder::new(model, &DecodeOptions::default())
                .unwrap()
                .unwrap_or_else(|| panic!("{name}: no host decoder"));
            let vocab = model.config().vocab_size;
            // burn: each prompt alone, prefilled then fed token by token
            let mut want = Vec::new();
            for p in &prompts {
                let mut cache = KvCache::new();
                model
                    .next_token_logits(&TokenBatch::new(vec![p.clone()]), Some(&mut cache))
                    .unwrap();
                let mut steps = Vec::new();
                for s in 0..12u32 {
                    let id = (s * 13 + p.len() as u32) % vocab as u32;
                    let l = model
                        .next_token_logits(&TokenBatch::new(vec![vec![id]]), Some(&mut cache))
                        .unwrap();
                    steps.push(values(l));
                }
                want.push(steps);
            }
            // host: the prompts prefilled together (left-padded), then stepped together
            let pad = 0;
            let mut cache = KvCache::new();
            model
                .next_token_logits(&TokenBatch::left_padded(&prompts, pad), Some(&mut cache))
                .unwrap();
            let mut seqs = decoder.sequences_from(&cache).unwrap();
            let lens: Vec<usize> = seqs.iter().map(DecodeSequence::len).collect();
            assert_eq!(
                lens,
                prompts.iter().map(Vec::len).collect::<Vec<_>>(),
                "{name}"
            );
            let mut logits = Vec::new();
            for s in 0..12u32 {
                let ids: Vec<u32> = prompts
                    .iter()
                    .map(|p| (s * 13 + p.len() as u32) % vocab as u32)
                    .collect();
                let mut refs: Vec<&mut DecodeSequence> = seqs.iter_mut().collect();
                decoder.step(&mut refs, &ids, &mut logits).unwrap();
                for (i, w) in want.iter().enumerate() {
                    let got = &logits[i * vocab..(i + 1) * vocab];
                    let gap = relative_gap(got, &w[s as usize]);
                    assert!(
                        gap < 2e-5,
                        "{name}, sequence {i}, step {s}: relative gap {gap}"
                    );
                }
            }
        }
    }

    /// A compact head stays within its quantization error: each logit moves by at most
    /// `Σ_j |x_j| · |w_rj − ŵ_rj|`, which for row-wise int8 is `‖x‖₁ · absmax_r / 254`.
    #[test]
    fn compact_heads_stay_within_their_rounding() {
        let mut model = fixture("llama", &LoadOptions::quantized(QuantConfig::default()));
        let exact = HostDecoder::new(&model, &DecodeOptions::default())
            .unwrap()
            .unwrap();
        let prompt = [1u32, 59, 76, 12];
        let run = |d: &HostDecoder| {
            let mut seq = d.sequence();
            let mut logits = Vec::new();
            for &t in &prompt {
                d.step(&mut [&mut seq], &[t], &mut logits).unwrap();
            }
            logits
        };
        let want = run(&exact);
        for (head, bound) in [
            (HeadPrecision::Int8, 1.0 / 254.0),
            (HeadPrecision::Bf16, 1.0 / 256.0),
        ] {
            model.set_decode_options(DecodeOptions { head });
            let d = HostDecoder::new(&model, &model.decode_options())
                .unwrap()
                .unwrap();
            assert!(d.weight_bytes_per_step() < exact.weight_bytes_per_step());
            let got = run(&d);
            // ‖x‖₁ · max|w| · bound bounds every logit's error
            let w = values(model.lm_head.as_ref().unwrap().weight().to_dense());
            let wmax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
            let hidden = model.config().hidden_size as f32;
            // the final norm's output is O(1) per element here; use a generous ‖x‖₁ ≤ 4·hidden
            let limit = 4.0 * hidden * wmax * bound;
            let gap = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                gap > 0.0 && gap < limit,
                "{head:?}: gap {gap}, limit {limit}"
            );
        }
        // the compact copy is made once and shared while the head is the same weight
        let a = model.compact_head().get(
            &DecodeWeight::dense(&model.lm_head.as_ref().unwrap().weight().to_dense()).unwrap(),
            HeadPrecision::Int8,
        );
        assert!(a.is_ok());
    }

    /// Greedy generation through the host decoder gives exactly the tokens of burn's path.
    #[test]
    fn greedy_tokens_are_those_of_burns_path() {
        for name in ["llama", "llama3", "gemma", "mistral"] {
            let mut model = fixture(name, &LoadOptions::quantized(QuantConfig::default()));
            let cfg = GenerationConfig {
                max_new_tokens: 16,
                ..Default::default()
            };
            let prompts = vec![vec![1, 59, 76], vec![1, 33, 34, 35, 36, 37]];
            assert!(DecodeBatch::new(&model).uses_host_decoder());
            let fast = model.generate(&prompts, &cfg, &mut |_, _| true).unwrap();
            model.set_kernel_path(KernelPath::Reference);
            assert!(!DecodeBatch::new(&model).uses_host_decoder());
            let reference = model.generate(&prompts, &cfg, &mut |_, _| true).unwrap();
            for (f, r) in fast.iter().zip(&reference) {
                assert_eq!(f.ids, r.ids, "{name}");
            }
        }
    }

    /// Decoding on several threads at once, beside burn's own parallel ops on the rayon pool
    /// (prefills on other threads), finishes with the tokens each thread gets alone: the decode
    /// threads never wait on rayon's workers or the other way round.
    #[test]
    fn decoding_beside_other_pool_work_finishes() {
        let model = fixture("llama", &LoadOptions::quantized(QuantConfig::default()));
        let cfg = GenerationConfig {
            max_new_tokens: 12,
            ..Default::default()
        };
        let alone = model
            .generate(&[vec![1, 59, 76]], &cfg, &mut |_, _| true)
            .unwrap();
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..5 {
                        let out = model
                            .generate(&[vec![1, 59, 76]], &cfg, &mut |_, _| true)
                            .unwrap();
                        assert_eq!(out[0].ids, alone[0].ids);
                    }
                });
            }
            s.spawn(|| {
                use rayon::prelude::*;
                (0..16).into_par_iter().for_each(|i| {
                    let batch = TokenBatch::new(vec![vec![1, 2 + i as u32, 3, 4, 5, 6, 7, 8]]);
                    model.next_token_logits(&batch, None).unwrap();
                });
            });
        });
    }

    /// What the host path cannot reproduce falls back to burn's: DoRA, dropout in training mode
    /// on an autodiff device, a 16-bit compute dtype. Bad inputs are errors, not panics.
    #[test]
    fn unsupported_models_and_bad_inputs() {
        let model = fixture("llama", &LoadOptions::dense());
        let d = HostDecoder::new(&model, &DecodeOptions::default())
            .unwrap()
            .unwrap();
        let mut seq = d.sequence();
        let mut logits = Vec::new();
        let vocab = model.config().vocab_size as u32;
        assert!(d.step(&mut [&mut seq], &[vocab], &mut logits).is_err());
        assert!(d.step(&mut [&mut seq], &[1, 2], &mut logits).is_err());
        let mut other = DecodeSequence::new(1, 3);
        assert!(d.step(&mut [&mut other], &[1], &mut logits).is_err());
        assert!(seq.is_empty(), "a refused step caches nothing");

        let mut dora = fixture("llama", &LoadOptions::dense());
        {
            use medify_lora::LoraModel;
            let device = Device::flex();
            let (_, p) = dora.linear_layers_mut().into_iter().next().unwrap();
            let [out, inp] = p.dims();
            let a = Tensor::<2>::ones([2, inp], &device);
            let b = Tensor::<2>::ones([out, 2], &device);
            let m = Tensor::<1>::ones([out], &device);
            p.set_lora(Some(LoraAdapter::new(a, b, Some(m), 1.0, 0.0).unwrap()))
                .unwrap();
        }
        assert!(
            HostDecoder::new(&dora, &DecodeOptions::default())
                .unwrap()
                .is_none()
        );
    }
}
