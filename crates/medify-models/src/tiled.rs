//! The checkpointed backward of one decoder layer in tiles, for inputs whose whole-layer
//! recompute would not fit: at 2 × 2048 tokens a Llama-3-8B layer's attention scores are
//! `[2, 32, 2048, 2048]` (1 GiB apiece in f32, several of them on the graph) and its MLP
//! activations `[4096, 14336]`. Instead of one graph over the layer, the layer is
//! back-propagated stage by stage, each stage in tiles on its own small graph:
//!
//! 1. off the graph: `q`, `k`, `v`, the attention output `a` and the residual `h` (attention in
//!    query tiles);
//! 2. MLP half, in row tiles of `h`: `∂/∂h` of `Σ (h + mlp(norm(h))) · g`;
//! 3. `o_proj`, in row tiles of `a`: `∂/∂a`;
//! 4. the attention core, in query tiles (keys up to the tile's last query): `∂/∂q`, `∂/∂k`,
//!    `∂/∂v` (flash attention's backward, at tile rather than register granularity);
//! 5. norm, `q/k/v` projections and RoPE, in row tiles of `x`: `∂/∂x` plus the residual's `∂/∂h`.
//!
//! Every projection is token-wise, so a row tile is a contiguous slice of the flattened
//! `[batch·seq, features]` input, and its dropout mask is that slice of the whole input's mask
//! ([`LoraAdapter::seek_dropout_within`](medify_lora::LoraAdapter::seek_dropout_within)): the
//! gradients equal the whole-layer recompute's within float rounding (tested). The cost is one
//! more forward pass of the attention core and of the q/k projections per layer, so it is used
//! only when the whole layer's working set exceeds the tile budget.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use medify_lora::Projection;

use crate::error::Result;
use crate::gradient_checkpointing::{collect, no_gradient};
use crate::layers::{AttentionContext, DecoderLayer, attend};
use crate::rope::apply_rope;

/// Ranges `(start, len)` covering `0..n` in tiles of at most `tile`.
pub(crate) fn tiles(n: usize, tile: usize) -> impl Iterator<Item = (usize, usize)> {
    let tile = tile.max(1);
    (0..n.div_ceil(tile)).map(move |i| (i * tile, tile.min(n - i * tile)))
}

/// Rows `start .. start + len` of a `[1, rows, features]` tensor, as a fresh leaf.
fn rows(x: &Tensor<3>, start: usize, len: usize) -> Tensor<3> {
    x.clone().narrow(1, start, len).detach()
}

/// Points a projection's dropout stream at the slice of its input starting at row `start`.
fn seek_rows(p: &Projection, mark: Option<(u64, u64)>, start: usize) {
    if let (Some(a), Some((seed, position))) = (p.lora(), mark) {
        a.seek_dropout_within(seed, position, (start * p.dims()[1]) as u64);
    }
}

impl DecoderLayer {
    /// Whether a recompute of this layer over `[b, s]` tokens needs tiles to stay within the
    /// budget: its MLP activations or attention scores are larger than one tile.
    pub(crate) fn needs_tiles(&self, b: usize, s: usize, ctx: &AttentionContext) -> bool {
        let mlp = b * s * self.widest_features() * 4;
        let scores = b * self.self_attn.heads() * s * s * 4;
        mlp.max(scores) > ctx.tile_bytes
    }

    /// Rows per MLP / projection tile: the widest activation of a tile within the budget.
    fn row_tile(&self, ctx: &AttentionContext) -> usize {
        (ctx.tile_bytes / (self.widest_features() * 4)).max(1)
    }

    /// Features of the widest per-token activation (the MLP's intermediate, or the hidden size).
    fn widest_features(&self) -> usize {
        self.mlp.gate_proj.dims()[0].max(self.mlp.down_proj.dims()[0])
    }

    /// Back-propagates `g` (`∂loss/∂output`, `[b, s, hidden]`) through this layer at input `x`,
    /// in tiles; adds the adapters' gradients to `out` and returns `∂loss/∂x` when
    /// `input_grad`. `marks` are the adapters' dropout positions before the layer's first pass,
    /// in [`DecoderLayer::projections`] order.
    pub(crate) fn tiled_backward(
        &self,
        x: Tensor<3>,
        ctx: &AttentionContext,
        g: Tensor<3>,
        marks: &[Option<(u64, u64)>],
        input_grad: bool,
        out: &mut GradientsParams,
    ) -> Result<Option<Tensor<3>>> {
        let [b, s, hidden] = x.dims();
        let n = b * s;
        let attn = &self.self_attn;
        let (h, kvh, d) = (attn.heads(), attn.kv_heads(), attn.head_dim());
        let mark = |i: usize| marks.get(i).copied().flatten();
        let projections = self.projections();
        let rewind = |i: usize, start: usize| seek_rows(projections[i].1, mark(i), start);
        let row_tile = self.row_tile(ctx);
        let x = x.detach();
        let x_rows = x.clone().reshape([1, n, hidden]);

        // 1. Off the graph: the attention inputs and output and the MLP's input, drawing each
        // adapter's dropout mask for the whole input, as the first pass did.
        let off = self.clone().no_grad();
        (0..4).for_each(|i| rewind(i, 0));
        let normed = off.input_layernorm.forward(x.clone());
        let heads = |p: &Projection, heads: usize| {
            p.forward(normed.clone())
                .reshape([b, s, heads, d])
                .swap_dims(1, 2)
        };
        let q = apply_rope(heads(&off.self_attn.q_proj, h), &ctx.cos, &ctx.sin).detach();
        let k = apply_rope(heads(&off.self_attn.k_proj, kvh), &ctx.cos, &ctx.sin).detach();
        let v = heads(&off.self_attn.v_proj, kvh).detach();
        drop(normed);
        let query_tile = ctx.query_tile(b * h, s);
        let a = attend(q.clone(), k.clone(), v.clone(), ctx, 0, query_tile)
            .swap_dims(1, 2)
            .reshape([1, n, h * d])
            .detach();
        let mid = (x_rows.clone() + off.self_attn.o_proj.forward(a.clone())).detach();
        let g = g.reshape([1, n, hidden]);

        // 2. The MLP half: ∂/∂h of Σ (h + mlp(norm(h))) · g.
        let mut dh = Vec::new();
        for (start, len) in tiles(n, row_tile) {
            (4..7).for_each(|i| rewind(i, start));
            let h_t = rows(&mid, start, len).require_grad();
            let g_t = g.clone().narrow(1, start, len);
            let act = self.mlp.activations(
                self.post_attention_layernorm.forward(h_t.clone()),
                ctx.kernels,
            );
            let surrogate =
                (h_t.clone() * g_t.clone()).sum() + self.mlp.down_proj.backprop_surrogate(act, g_t);
            let mut grads = surrogate.backward();
            collect(&self.mlp, &mut grads, out);
            dh.push(h_t.grad(&grads).ok_or_else(no_gradient)?);
        }
        let dh = Tensor::cat(dh, 1);
        drop(mid);

        // 3. o_proj: ∂/∂a.
        let mut da = Vec::new();
        for (start, len) in tiles(n, row_tile) {
            rewind(3, start);
            let a_t = rows(&a, start, len).require_grad();
            let surrogate = attn
                .o_proj
                .backprop_surrogate(a_t.clone(), dh.clone().narrow(1, start, len));
            let mut grads = surrogate.backward();
            collect(&attn.o_proj, &mut grads, out);
            da.push(a_t.grad(&grads).ok_or_else(no_gradient)?);
        }
        drop(a);
        let da = Tensor::cat(da, 1).reshape([b, s, h, d]).swap_dims(1, 2);

        // 4. The attention core in query tiles: ∂/∂q, ∂/∂k, ∂/∂v.
        let mut dq = Vec::new();
        let mut dk = k.zeros_like();
        let mut dv = v.zeros_like();
        for (start, len) in tiles(s, query_tile) {
            let keys = start + len;
            let q_t = q.clone().narrow(2, start, len).detach().require_grad();
            let k_t = k.clone().narrow(2, 0, keys).detach().require_grad();
            let v_t = v.clone().narrow(2, 0, keys).detach().require_grad();
            let o = attend(q_t.clone(), k_t.clone(), v_t.clone(), ctx, start, len);
            let grads = (o * da.clone().narrow(2, start, len)).sum().backward();
            dq.push(q_t.grad(&grads).ok_or_else(no_gradient)?);
            let span = [0..b, 0..kvh, 0..keys, 0..d];
            dk = dk.clone().slice_assign(
                span.clone(),
                dk.slice(span.clone()) + k_t.grad(&grads).ok_or_else(no_gradient)?,
            );
            dv = dv.clone().slice_assign(
                span.clone(),
                dv.slice(span) + v_t.grad(&grads).ok_or_else(no_gradient)?,
            );
        }
        drop((q, k, v, da));
        // As [1, rows, heads, d], so a row tile of x meets its rows of each gradient.
        let by_rows = |t: Tensor<4>, heads: usize| t.swap_dims(1, 2).reshape([1, n, heads, d]);
        let dq = by_rows(Tensor::cat(dq, 2), h);
        let (dk, dv) = (by_rows(dk, kvh), by_rows(dv, kvh));

        // 5. Norm, projections and RoPE: ∂/∂x, plus the residual's ∂/∂h.
        let cos = ctx.cos.clone().reshape([1, 1, n, d]);
        let sin = ctx.sin.clone().reshape([1, 1, n, d]);
        let mut dx = Vec::new();
        let adapted = projections[..3].iter().any(|(_, p)| p.lora().is_some());
        for (start, len) in tiles(n, row_tile).filter(|_| input_grad || adapted) {
            (0..3).for_each(|i| rewind(i, start));
            let x_t = rows(&x_rows, start, len);
            let x_t = if input_grad { x_t.require_grad() } else { x_t };
            let normed = self.input_layernorm.forward(x_t.clone());
            let (cos_t, sin_t) = (
                cos.clone().narrow(2, start, len),
                sin.clone().narrow(2, start, len),
            );
            let rotated = |p: &Projection, heads: usize| {
                let y = p
                    .forward(normed.clone())
                    .reshape([1, len, heads, d])
                    .swap_dims(1, 2);
                apply_rope(y, &cos_t, &sin_t).swap_dims(1, 2)
            };
            let grad_rows = |t: &Tensor<4>| t.clone().narrow(1, start, len);
            let surrogate = (rotated(&attn.q_proj, h) * grad_rows(&dq)).sum()
                + (rotated(&attn.k_proj, kvh) * grad_rows(&dk)).sum()
                + attn
                    .v_proj
                    .backprop_surrogate(normed.clone(), grad_rows(&dv).reshape([1, len, kvh * d]));
            let mut grads = surrogate.backward();
            for (_, p) in &projections[..3] {
                collect(*p, &mut grads, out);
            }
            if input_grad {
                dx.push(
                    x_t.grad(&grads).ok_or_else(no_gradient)? + dh.clone().narrow(1, start, len),
                );
            }
        }
        Ok(input_grad.then(|| Tensor::cat(dx, 1).reshape([b, s, hidden])))
    }
}
