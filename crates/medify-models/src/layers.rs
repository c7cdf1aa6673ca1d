//! The blocks of a Llama-family decoder: RMSNorm, gated MLP, grouped-query attention.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::{silu, softmax, tanh};
use medify_lora::Projection;
use medify_quant::dtype::{cast_to, to_f32};

use crate::config::Activation;
use crate::fused::KernelPath;
use crate::rope::apply_rope;

/// Root-mean-square layer norm; Gemma scales by `1 + w` instead of `w`.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// The learned scale `[hidden]`, as stored in the checkpoint.
    pub weight: Tensor<1>,
    #[module(skip)]
    eps: f64,
    #[module(skip)]
    plus_one: bool,
}

impl RmsNorm {
    /// A norm with the checkpoint's weight; `plus_one` selects Gemma's `(1 + w)` form.
    pub fn new(weight: Tensor<1>, eps: f64, plus_one: bool) -> RmsNorm {
        RmsNorm {
            weight,
            eps,
            plus_one,
        }
    }

    /// Normalizes over the last dimension, in f32 for a 16-bit input (then cast back before the
    /// scale, as transformers' Llama does).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let x = to_f32(x);
        let rms = x
            .clone()
            .square()
            .mean_dim(D - 1)
            .add_scalar(self.eps)
            .sqrt()
            .recip();
        let w = if self.plus_one {
            self.weight.clone().add_scalar(1.0)
        } else {
            self.weight.clone()
        };
        cast_to(x * rms, dtype) * w.unsqueeze::<D>()
    }
}

/// GELU with the tanh approximation, as `gelu_pytorch_tanh`.
fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let c = (2.0f64 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715)).mul_scalar(c);
    x.clone().mul_scalar(0.5) * tanh(inner).add_scalar(1.0)
}

/// [`gelu_tanh`] of one value, with the same operations in the same order.
pub(crate) fn gelu_tanh_scalar(x: f32) -> f32 {
    let c = (2.0f64 / std::f64::consts::PI).sqrt() as f32;
    let inner = (x + x.powi(3) * 0.044715) * c;
    x * 0.5 * (inner.tanh() + 1.0)
}

/// Exact GELU.
fn gelu_erf<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    burn::tensor::activation::gelu(x)
}

/// `down(act(gate(x)) * up(x))`: SwiGLU for Llama/Mistral, GeGLU for Gemma.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Gate projection `[intermediate, hidden]`.
    pub gate_proj: Projection,
    /// Up projection `[intermediate, hidden]`.
    pub up_proj: Projection,
    /// Down projection `[hidden, intermediate]`.
    pub down_proj: Projection,
    #[module(skip)]
    act: Activation,
}

impl Mlp {
    /// Builds the MLP from its three projections.
    pub fn new(
        gate_proj: Projection,
        up_proj: Projection,
        down_proj: Projection,
        act: Activation,
    ) -> Mlp {
        Mlp {
            gate_proj,
            up_proj,
            down_proj,
            act,
        }
    }

    /// Applies the MLP to `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with(x, KernelPath::Fast)
    }

    /// [`Mlp::forward`] through the given kernels.
    pub fn forward_with(&self, x: Tensor<3>, kernels: KernelPath) -> Tensor<3> {
        self.down_proj.forward(self.activations(x, kernels))
    }

    /// `act(gate(x)) * up(x)`, the down projection's input `[batch, seq, intermediate]`.
    pub(crate) fn activations(&self, x: Tensor<3>, kernels: KernelPath) -> Tensor<3> {
        let gate = self.gate_proj.forward(x.clone());
        let up = self.up_proj.forward(x);
        match self.act {
            Activation::Silu if kernels.fused_on(&gate.device()) => crate::fused::swiglu(gate, up),
            Activation::Silu => silu(gate) * up,
            Activation::GeluTanh => gelu_tanh(gate) * up,
            Activation::Gelu => gelu_erf(gate) * up,
        }
    }
}

/// Keys and values of one layer for the tokens seen so far, `[batch, kv_heads, len, head_dim]`.
#[derive(Debug, Clone)]
pub struct LayerCache {
    /// Cached keys (after RoPE).
    pub keys: Tensor<4>,
    /// Cached values.
    pub values: Tensor<4>,
}

/// What every layer's attention needs about the tokens of one forward pass.
#[derive(Debug, Clone)]
pub struct AttentionContext {
    /// RoPE cosines of the new tokens, `[batch, 1, seq, head_dim]`.
    pub cos: Tensor<4>,
    /// RoPE sines with rotate-half's sign, `[batch, 1, seq, head_dim]`.
    pub sin: Tensor<4>,
    /// Additive mask `[batch, 1, 1, seq, cached + seq]`: 0 where allowed, a large negative elsewhere.
    pub mask: Tensor<5>,
    /// Fused kernels or burn's ops.
    pub kernels: KernelPath,
    /// Bytes one tile of attention scores (and of the checkpointed backward's row tiles) may
    /// take: longer inputs are processed in query (row) tiles so no `[seq × seq]` score matrix
    /// of the whole input exists at once.
    pub tile_bytes: usize,
}

impl AttentionContext {
    /// Queries per attention tile for `rows` query rows (batch × heads) over `keys` keys: the
    /// f32 scores of one tile stay within `tile_bytes`.
    pub(crate) fn query_tile(&self, rows: usize, keys: usize) -> usize {
        (self.tile_bytes / (rows * keys * 4).max(1)).max(1)
    }
}

/// Causal attention of `q` `[batch, heads, n, head_dim]`, the queries at positions
/// `first .. first + n` of this pass, over `k`, `v` `[batch, kv_heads, t, head_dim]`, in query
/// tiles of `tile`: a query sees only keys up to its own position (every mask here is causal),
/// so each tile stops at its last query's key. Returns `[batch, heads, n, head_dim]`.
pub(crate) fn attend(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    ctx: &AttentionContext,
    first: usize,
    tile: usize,
) -> Tensor<4> {
    let [_, _, n, _] = q.dims();
    let [.., s, t] = ctx.mask.dims();
    let past = t - s;
    if n == 0 {
        return q;
    }
    let mut outs: Vec<Tensor<4>> = crate::tiled::tiles(n, tile)
        .map(|(start, len)| {
            let keys = past + first + start + len;
            attend_tile(
                q.clone().narrow(2, start, len),
                k.clone().narrow(2, 0, keys),
                v.clone().narrow(2, 0, keys),
                ctx.mask
                    .clone()
                    .narrow(3, first + start, len)
                    .narrow(4, 0, keys),
                ctx.kernels,
            )
        })
        .collect();
    match outs.len() {
        1 => outs.remove(0),
        _ => Tensor::cat(outs, 2),
    }
}

/// One tile: softmax(q kᵀ / √d + mask) v, the mask `[batch, 1, 1, n, keys]`.
fn attend_tile(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Tensor<5>,
    kernels: KernelPath,
) -> Tensor<4> {
    let [b, h, s, d] = q.dims();
    let [_, kvh, t, _] = k.dims();
    let g = h / kvh;
    // Query heads kv·g .. kv·g+g-1 share key/value head kv (transformers' repeat_kv order),
    // so grouping the queries avoids materialising repeated keys and values.
    let q = q.reshape([b, kvh, g * s, d]);
    let scale = (d as f64).powf(-0.5);
    let scores = q.matmul(k.swap_dims(2, 3)).reshape([b, kvh, g, s, t]);
    let probs = if kernels.fused_on(&scores.device()) {
        crate::fused::masked_softmax(scores, mask, scale as f32)
    } else {
        // In f32 whatever the compute dtype, as transformers does (the mask is f32 too).
        let dtype = scores.dtype();
        let p = softmax(to_f32(scores).mul_scalar(scale) + mask, 4);
        cast_to(p, dtype)
    };
    probs
        .reshape([b, kvh, g * s, t])
        .matmul(v)
        .reshape([b, h, s, d])
}

/// Grouped-query self-attention (multi-head when kv heads = heads, multi-query when 1).
#[derive(Module, Debug)]
pub struct Attention {
    /// Query projection `[heads·head_dim, hidden]`.
    pub q_proj: Projection,
    /// Key projection `[kv_heads·head_dim, hidden]`.
    pub k_proj: Projection,
    /// Value projection `[kv_heads·head_dim, hidden]`.
    pub v_proj: Projection,
    /// Output projection `[hidden, heads·head_dim]`.
    pub o_proj: Projection,
    #[module(skip)]
    heads: usize,
    #[module(skip)]
    kv_heads: usize,
    #[module(skip)]
    head_dim: usize,
}

impl Attention {
    /// Builds attention from its projections and head layout.
    pub fn new(
        [q_proj, k_proj, v_proj, o_proj]: [Projection; 4],
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Attention {
        Attention {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            heads,
            kv_heads,
            head_dim,
        }
    }

    /// Query heads.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.kv_heads
    }

    /// Features per head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Attends `x` `[batch, seq, hidden]` over the cached keys plus its own.
    ///
    pub fn forward(
        &self,
        x: Tensor<3>,
        ctx: &AttentionContext,
        cache: Option<&mut Option<LayerCache>>,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let (h, kvh, d) = (self.heads, self.kv_heads, self.head_dim);
        let q = self
            .q_proj
            .forward(x.clone())
            .reshape([b, s, h, d])
            .swap_dims(1, 2);
        let k = self
            .k_proj
            .forward(x.clone())
            .reshape([b, s, kvh, d])
            .swap_dims(1, 2);
        let v = self
            .v_proj
            .forward(x)
            .reshape([b, s, kvh, d])
            .swap_dims(1, 2);
        let q = apply_rope(q, &ctx.cos, &ctx.sin);
        let mut k = apply_rope(k, &ctx.cos, &ctx.sin);
        let mut v = v;
        if let Some(slot) = cache {
            if let Some(prev) = slot.take() {
                k = Tensor::cat(vec![prev.keys, k], 2);
                v = Tensor::cat(vec![prev.values, v], 2);
            }
            *slot = Some(LayerCache {
                keys: k.clone(),
                values: v.clone(),
            });
        }
        let tile = ctx.query_tile(b * h, k.dims()[2]);
        let out = attend(q, k, v, ctx, 0, tile)
            .swap_dims(1, 2)
            .reshape([b, s, h * d]);
        self.o_proj.forward(out)
    }
}

/// One decoder block: pre-norm attention and pre-norm MLP, each with a residual.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Self-attention.
    pub self_attn: Attention,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// Gated MLP.
    pub mlp: Mlp,
}

impl DecoderLayer {
    /// The seven projections with their paths inside the layer, as in HF checkpoints.
    pub fn projections(&self) -> [(&'static str, &Projection); 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            ("self_attn.q_proj", &a.q_proj),
            ("self_attn.k_proj", &a.k_proj),
            ("self_attn.v_proj", &a.v_proj),
            ("self_attn.o_proj", &a.o_proj),
            ("mlp.gate_proj", &m.gate_proj),
            ("mlp.up_proj", &m.up_proj),
            ("mlp.down_proj", &m.down_proj),
        ]
    }

    /// [`DecoderLayer::projections`], mutably.
    pub fn projections_mut(&mut self) -> [(&'static str, &mut Projection); 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            ("self_attn.q_proj", &mut a.q_proj),
            ("self_attn.k_proj", &mut a.k_proj),
            ("self_attn.v_proj", &mut a.v_proj),
            ("self_attn.o_proj", &mut a.o_proj),
            ("mlp.gate_proj", &mut m.gate_proj),
            ("mlp.up_proj", &mut m.up_proj),
            ("mlp.down_proj", &mut m.down_proj),
        ]
    }

    /// Applies the block.
    pub fn forward(
        &self,
        x: Tensor<3>,
        ctx: &AttentionContext,
        cache: Option<&mut Option<LayerCache>>,
    ) -> Tensor<3> {
        let h = self.attention_residual(x, ctx, cache);
        h.clone()
            + self
                .mlp
                .forward_with(self.post_attention_layernorm.forward(h), ctx.kernels)
    }

    /// `x + attention(norm(x))`: the first half of the block, the MLP's residual input.
    fn attention_residual(
        &self,
        x: Tensor<3>,
        ctx: &AttentionContext,
        cache: Option<&mut Option<LayerCache>>,
    ) -> Tensor<3> {
        x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), ctx, cache)
    }

    /// A scalar whose gradients equal those of `Σ forward(x) ⊙ g` (see
    /// [`Projection::backprop_surrogate`]): the layer's output itself is never formed, so the
    /// down projection's base matmul is skipped in a checkpointed recompute.
    pub(crate) fn backprop_surrogate(
        &self,
        x: Tensor<3>,
        ctx: &AttentionContext,
        g: Tensor<3>,
    ) -> Tensor<1> {
        let h = self.attention_residual(x, ctx, None);
        let hidden = self.mlp.activations(
            self.post_attention_layernorm.forward(h.clone()),
            ctx.kernels,
        );
        (h * g.clone()).sum() + self.mlp.down_proj.backprop_surrogate(hidden, g)
    }
}
