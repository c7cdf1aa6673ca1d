//! The causal language model: embeddings, decoder stack, final norm and LM head.

use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use medify_lora::Projection;

use crate::config::{Family, LlamaConfig};
use crate::error::{ModelError, Result};
use crate::fused::KernelPath;
use crate::layers::{AttentionContext, DecoderLayer, LayerCache};
use crate::rope::Rope;

/// Additive mask value for disallowed attention: far below any score, yet finite so that a row
/// with nothing to attend (a left-padding query) stays finite.
const MASKED: f32 = -1.0e30;

/// What a position is trained to predict: a token id, or `None` where the loss skips it (prompt,
/// padding; the label transformers writes as `-100`, PyTorch's `ignore_index`).
pub type Label = Option<u32>;

/// A rectangular batch of token ids plus what attention needs to know about them.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    /// Token ids `[batch][seq]`.
    pub ids: Vec<Vec<u32>>,
    /// Position of each token for RoPE; defaults to `cache_len + index`.
    pub positions: Option<Vec<Vec<u32>>>,
    /// `false` marks padding, which no query attends to; defaults to all `true`.
    pub attention_mask: Option<Vec<Vec<bool>>>,
    /// Packed examples: a query attends only to keys of the same segment id.
    pub segments: Option<Vec<Vec<u32>>>,
}

impl TokenBatch {
    /// A batch of equally long sequences.
    pub fn new(ids: Vec<Vec<u32>>) -> TokenBatch {
        TokenBatch {
            ids,
            positions: None,
            attention_mask: None,
            segments: None,
        }
    }

    /// Left-pads sequences of different lengths with `pad_id`, masking the padding and
    /// numbering positions from each sequence's first real token (what `generate` needs).
    pub fn left_padded(seqs: &[Vec<u32>], pad_id: u32) -> TokenBatch {
        let width = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        let mut positions = Vec::new();
        for s in seqs {
            let pad = width - s.len();
            ids.push(
                std::iter::repeat_n(pad_id, pad)
                    .chain(s.iter().copied())
                    .collect(),
            );
            mask.push((0..width).map(|i| i >= pad).collect());
            positions.push((0..width).map(|i| i.saturating_sub(pad) as u32).collect());
        }
        TokenBatch {
            ids,
            positions: Some(positions),
            attention_mask: Some(mask),
            segments: None,
        }
    }

    /// `[batch, seq]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.ids.len(), self.ids.first().map_or(0, Vec::len)]
    }

    fn check(&self, vocab: usize) -> Result<()> {
        let [b, s] = self.dims();
        if b == 0 || s == 0 {
            return Err(ModelError::InvalidRequest("empty token batch".into()));
        }
        if !self.ids.iter().all(|r| r.len() == s) {
            return Err(ModelError::InvalidRequest(
                "token batch rows differ in length; pad them".into(),
            ));
        }
        if self.positions.as_ref().is_some_and(|p| !rect(p, b, s))
            || self.attention_mask.as_ref().is_some_and(|m| !rect(m, b, s))
            || self.segments.as_ref().is_some_and(|g| !rect(g, b, s))
        {
            return Err(ModelError::InvalidRequest(
                "positions / attention mask / segments must match the ids' shape".into(),
            ));
        }
        if let Some(bad) = self.ids.iter().flatten().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        Ok(())
    }
}

fn rect<T>(rows: &[Vec<T>], b: usize, s: usize) -> bool {
    rows.len() == b && rows.iter().all(|r| r.len() == s)
}

/// Keys and values of every layer for the tokens processed so far.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    key_valid: Vec<Vec<bool>>,
    key_segments: Vec<Vec<u32>>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> KvCache {
        KvCache::default()
    }

    /// Tokens cached per sequence.
    pub fn len(&self) -> usize {
        self.key_valid.first().map_or(0, Vec::len)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sequences (rows) in the cache.
    pub fn sequences(&self) -> usize {
        self.key_valid.len()
    }

    /// Adds the sequences of `other` as new rows after this cache's. The shorter side is padded
    /// at the front with masked keys, so every row keeps its tokens contiguous and
    /// right-aligned (what continuous batching needs to decode them in one step).
    pub fn append_rows(&mut self, mut other: KvCache) {
        if self.sequences() == 0 {
            *self = other;
            return;
        }
        if other.sequences() == 0 {
            return;
        }
        let width = self.len().max(other.len());
        self.pad_front(width - self.len());
        other.pad_front(width - other.len());
        if self.layers.len() < other.layers.len() {
            self.layers.resize(other.layers.len(), None);
        }
        for (mine, theirs) in self.layers.iter_mut().zip(other.layers) {
            *mine = match (mine.take(), theirs) {
                (Some(a), Some(b)) => Some(LayerCache {
                    keys: Tensor::cat(vec![a.keys, b.keys], 0),
                    values: Tensor::cat(vec![a.values, b.values], 0),
                }),
                (a, b) => a.or(b),
            };
        }
        self.key_valid.extend(other.key_valid);
        self.key_segments.extend(other.key_segments);
    }

    /// Each layer's keys and values (`None` before the first pass).
    pub(crate) fn layer_tensors(&self) -> &[Option<LayerCache>] {
        &self.layers
    }

    /// Which cached positions of row `r` hold a real token (the rest are padding).
    pub(crate) fn valid(&self, r: usize) -> &[bool] {
        &self.key_valid[r]
    }

    /// Keeps only the rows at `keep` (in that order), then drops the leading key columns that
    /// no remaining row uses. Callers pass row indices they got from this cache.
    pub(crate) fn retain_rows(&mut self, keep: &[usize]) {
        let b = self.sequences();
        debug_assert!(keep.iter().all(|&r| r < b), "row index out of range");
        if keep.len() == b && keep.iter().enumerate().all(|(i, &r)| i == r) {
            return;
        }
        if keep.is_empty() {
            *self = KvCache::default();
            return;
        }
        for layer in self.layers.iter_mut().flatten() {
            let device = layer.keys.device();
            let rows: Vec<i64> = keep.iter().map(|&r| r as i64).collect();
            let index = Tensor::<1, Int>::from_data(TensorData::new(rows, [keep.len()]), &device);
            layer.keys = layer.keys.clone().select(0, index.clone());
            layer.values = layer.values.clone().select(0, index);
        }
        self.key_valid = keep.iter().map(|&r| self.key_valid[r].clone()).collect();
        if self.key_segments.len() == b {
            self.key_segments = keep.iter().map(|&r| self.key_segments[r].clone()).collect();
        }
        let unused = self
            .key_valid
            .iter()
            .map(|row| row.iter().take_while(|v| !**v).count())
            .min()
            .unwrap_or(0);
        if unused > 0 {
            let t = self.len();
            for layer in self.layers.iter_mut().flatten() {
                layer.keys = layer.keys.clone().narrow(2, unused, t - unused);
                layer.values = layer.values.clone().narrow(2, unused, t - unused);
            }
            for row in &mut self.key_valid {
                row.drain(..unused);
            }
            for row in &mut self.key_segments {
                row.drain(..unused.min(row.len()));
            }
        }
    }

    /// `n` masked key columns before every row's keys.
    fn pad_front(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        for layer in self.layers.iter_mut().flatten() {
            let [b, h, _, d] = layer.keys.dims();
            let device = layer.keys.device();
            let zeros = |like: &Tensor<4>| {
                medify_quant::dtype::cast_to(
                    Tensor::<4>::zeros([b, h, n, d], &device),
                    like.dtype(),
                )
            };
            layer.keys = Tensor::cat(vec![zeros(&layer.keys), layer.keys.clone()], 2);
            layer.values = Tensor::cat(vec![zeros(&layer.values), layer.values.clone()], 2);
        }
        for row in &mut self.key_valid {
            row.splice(0..0, std::iter::repeat_n(false, n));
        }
        for row in &mut self.key_segments {
            if !row.is_empty() {
                row.splice(0..0, std::iter::repeat_n(u32::MAX, n));
            }
        }
    }
}

/// Mean next-token cross-entropy of a batch, with the token count it averages over.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// Mean over predicted tokens (a scalar tensor, differentiable).
    pub loss: Tensor<1>,
    /// Sum over predicted tokens.
    pub sum: Tensor<1>,
    /// Number of predicted tokens (labels that are `Some` after the shift).
    pub tokens: usize,
}

/// Shifted target ids, their weights (0 where a label is `None`) and the count of weighted ones.
pub(crate) type LossTargets = (Vec<i64>, Vec<f32>, usize);

/// Per-row log-probabilities of the labelled tokens: what preference objectives compare.
#[derive(Debug, Clone)]
pub struct SequenceLogps {
    /// `[rows]`: the sum of `log p(label | prefix)` over each row's labelled tokens
    /// (differentiable, as [`LossOutput::loss`]).
    pub logps: Tensor<1>,
    /// Labelled tokens per row.
    pub tokens: Vec<usize>,
}

/// A Llama-family causal LM: Llama 2/3, TinyLlama, SmolLM2, Mistral, Gemma.
#[derive(Module, Debug)]
pub struct CausalLm {
    /// Token embeddings `[vocab, hidden]` (frozen).
    pub embed_tokens: Tensor<2>,
    /// Decoder blocks.
    pub layers: Vec<DecoderLayer>,
    /// Final norm.
    pub norm: crate::layers::RmsNorm,
    /// Untied output projection; `None` when tied to the embeddings.
    pub lm_head: Option<Projection>,
    #[module(skip)]
    config: LlamaConfig,
    #[module(skip)]
    rope: Rope,
    #[module(skip)]
    kernels: KernelPath,
    #[module(skip)]
    tile_bytes: usize,
    #[module(skip)]
    decode: crate::decode::DecodeOptions,
    /// The output head made compact for decoding, kept across decode batches.
    #[module(skip)]
    compact_head: crate::decode::CompactHeadCache,
}

/// The default working-set budget of one tile (see [`CausalLm::set_tile_bytes`]).
pub const DEFAULT_TILE_BYTES: usize = 64 << 20;

impl CausalLm {
    /// Assembles a model from its parts (the loaders do this from checkpoints).
    pub fn from_parts(
        config: LlamaConfig,
        embed_tokens: Tensor<2>,
        layers: Vec<DecoderLayer>,
        norm: crate::layers::RmsNorm,
        lm_head: Option<Projection>,
    ) -> CausalLm {
        let rope = Rope::new(&config);
        CausalLm {
            embed_tokens,
            layers,
            norm,
            lm_head,
            config,
            rope,
            kernels: KernelPath::Fast,
            tile_bytes: DEFAULT_TILE_BYTES,
            decode: Default::default(),
            compact_head: Default::default(),
        }
    }

    /// How [`crate::DecodeBatch`] (and so `generate`) decodes on the CPU: see
    /// [`crate::DecodeOptions`]. The default keeps logits exact.
    pub fn set_decode_options(&mut self, options: crate::decode::DecodeOptions) {
        self.decode = options;
    }

    /// The decode settings in use.
    pub fn decode_options(&self) -> crate::decode::DecodeOptions {
        self.decode
    }

    /// The output head's compact copy, shared by this model's decode batches.
    pub(crate) fn compact_head(&self) -> &crate::decode::CompactHeadCache {
        &self.compact_head
    }

    /// Bounds the working set of long inputs: attention runs in query tiles whose f32 scores
    /// take at most `bytes`, and a checkpointed backward recomputes a layer in row tiles whose
    /// widest activation takes about that much (when the whole layer would not fit in it), so no
    /// `[seq × seq]` scores or `[tokens × intermediate]` activations of a whole batch exist at
    /// once. Results do not depend on it beyond float rounding; smaller tiles cost some speed.
    /// Default [`DEFAULT_TILE_BYTES`] (64 MiB).
    pub fn set_tile_bytes(&mut self, bytes: usize) {
        self.tile_bytes = bytes.max(1);
    }

    /// The tile budget in use (see [`CausalLm::set_tile_bytes`]).
    pub fn tile_bytes(&self) -> usize {
        self.tile_bytes
    }

    /// Chooses fused CPU kernels (the default) or burn's own ops for the softmax, SwiGLU and the
    /// loss. The reference path exists to test the fast one against; both give the same results
    /// within float rounding.
    pub fn set_kernel_path(&mut self, kernels: KernelPath) {
        self.kernels = kernels;
    }

    /// The kernels forward passes use.
    pub fn kernel_path(&self) -> KernelPath {
        self.kernels
    }

    /// The dtype activations and dense weights are in (see [`crate::ComputeDtype`]).
    pub fn compute_dtype(&self) -> crate::ComputeDtype {
        crate::ComputeDtype::from_dtype(self.embed_tokens.dtype()).unwrap_or_default()
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.embed_tokens.device()
    }

    fn mask(&self, batch: &TokenBatch, cache: Option<&KvCache>) -> Tensor<5> {
        let [b, s] = batch.dims();
        let past = cache.map_or(0, KvCache::len);
        let t = past + s;
        let window = self.config.sliding_window;
        let mut data = Vec::with_capacity(b * s * t);
        for r in 0..b {
            let valid = |j: usize| -> bool {
                if j < past {
                    cache.is_some_and(|c| c.key_valid[r][j])
                } else {
                    batch.attention_mask.as_ref().is_none_or(|m| m[r][j - past])
                }
            };
            let segment = |j: usize| -> Option<u32> {
                if j < past {
                    cache.and_then(|c| c.key_segments.get(r).and_then(|g| g.get(j).copied()))
                } else {
                    batch.segments.as_ref().map(|g| g[r][j - past])
                }
            };
            for i in 0..s {
                let q = past + i;
                let q_seg = segment(q);
                for j in 0..t {
                    let mut ok = j <= q && valid(j);
                    if let Some(w) = window {
                        ok &= q - j.min(q) < w;
                    }
                    if q_seg.is_some() {
                        ok &= segment(j) == q_seg;
                    }
                    data.push(if ok { 0.0 } else { MASKED });
                }
            }
        }
        Tensor::from_data(TensorData::new(data, [b, 1, 1, s, t]), &self.device())
    }

    /// The embedded tokens `[batch, seq, hidden]` and what every layer's attention needs for them
    /// (RoPE tables, mask, kernels); checks the batch against the model and the cache.
    pub(crate) fn embed(
        &self,
        batch: &TokenBatch,
        cache: Option<&KvCache>,
    ) -> Result<(AttentionContext, Tensor<3>)> {
        batch.check(self.config.vocab_size)?;
        let [b, s] = batch.dims();
        let device = self.device();
        let past = cache.map_or(0, KvCache::len);
        if let Some(c) = cache
            && past > 0
            && c.key_valid.len() != b
        {
            return Err(ModelError::InvalidRequest(format!(
                "the cache holds {} sequences but the batch has {b}",
                c.key_valid.len()
            )));
        }
        let positions = batch
            .positions
            .clone()
            .unwrap_or_else(|| vec![(past as u32..(past + s) as u32).collect(); b]);
        let (cos, sin) = self.rope.tables(&positions, &device);
        let dtype = self.embed_tokens.dtype();
        let ctx = AttentionContext {
            cos: medify_quant::dtype::cast_to(cos, dtype),
            sin: medify_quant::dtype::cast_to(sin, dtype),
            mask: self.mask(batch, cache),
            kernels: self.kernels,
            tile_bytes: self.tile_bytes,
        };
        let flat: Vec<i64> = batch.ids.iter().flatten().map(|&t| t as i64).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(flat, [b * s]), &device);
        let mut x =
            self.embed_tokens
                .clone()
                .select(0, ids)
                .reshape([b, s, self.config.hidden_size]);
        if self.config.family == Family::Gemma {
            // transformers rounds the normalizer to the activation dtype first.
            x = x.mul_scalar((self.config.hidden_size as f32).sqrt());
        }
        Ok((ctx, x))
    }

    /// Final hidden states `[batch, seq, hidden]`; appends to `cache` when given.
    pub fn forward_hidden(
        &self,
        batch: &TokenBatch,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>> {
        let (ctx, mut x) = self.embed(batch, cache.as_deref())?;
        let [b, s] = batch.dims();
        if let Some(c) = cache.as_deref_mut()
            && c.layers.len() != self.layers.len()
        {
            c.layers = vec![None; self.layers.len()];
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, &ctx, slot);
        }
        if let Some(c) = cache {
            if c.key_valid.is_empty() {
                c.key_valid = vec![Vec::new(); b];
                c.key_segments = vec![Vec::new(); b];
            }
            for r in 0..b {
                let valid = batch
                    .attention_mask
                    .as_ref()
                    .map_or_else(|| vec![true; s], |m| m[r].clone());
                c.key_valid[r].extend(valid);
                if let Some(g) = &batch.segments {
                    c.key_segments[r].extend(g[r].iter().copied());
                }
            }
        }
        Ok(self.norm.forward(x))
    }

    /// Logits `[batch, seq, vocab]` from final hidden states.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => medify_lora::dense_matmul(hidden, &self.embed_tokens),
        }
    }

    /// Logits for every position.
    pub fn forward(&self, batch: &TokenBatch, cache: Option<&mut KvCache>) -> Result<Tensor<3>> {
        let hidden = self.forward_hidden(batch, cache)?;
        Ok(self.logits(hidden))
    }

    /// Logits of the last position only, `[batch, vocab]` (what decoding needs).
    pub fn next_token_logits(
        &self,
        batch: &TokenBatch,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<2>> {
        let hidden = self.forward_hidden(batch, cache)?;
        let [b, s, _] = hidden.dims();
        Ok(self
            .logits(hidden.narrow(1, s - 1, 1))
            .reshape([b, self.config.vocab_size]))
    }

    /// `log p(token | ids[row][..=position])` for each `(row, position, token)` in `picks`, from
    /// f32 log-softmax over the vocabulary: what scoring a continuation needs (lm-eval's
    /// log-likelihoods) without materializing logits for every position of the batch.
    pub fn log_probs_at(
        &self,
        batch: &TokenBatch,
        picks: &[(usize, usize, u32)],
    ) -> Result<Vec<f64>> {
        let [b, s] = batch.dims();
        let vocab = self.config.vocab_size;
        if let Some(&(r, p, t)) = picks
            .iter()
            .find(|&&(r, p, t)| r >= b || p >= s || t as usize >= vocab)
        {
            return Err(ModelError::InvalidRequest(format!(
                "log-probability of token {t} at row {r}, position {p} is outside the batch \
                 [{b}, {s}] or the vocabulary ({vocab})"
            )));
        }
        if picks.is_empty() {
            return Ok(Vec::new());
        }
        let hidden = self.forward_hidden(batch, None)?;
        let d = hidden.dims()[2];
        // One logits row per distinct position asked for.
        let mut rows: Vec<usize> = picks.iter().map(|&(r, p, _)| r * s + p).collect();
        rows.sort_unstable();
        rows.dedup();
        let device = self.device();
        let index = Tensor::<1, Int>::from_data(
            TensorData::new(rows.iter().map(|&i| i as i64).collect(), [rows.len()]),
            &device,
        );
        let hidden = hidden.reshape([b * s, d]).select(0, index);
        let logits = self.logits(hidden.reshape([1, rows.len(), d]));
        let logp = log_softmax(medify_quant::dtype::to_f32(logits), 2)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| ModelError::InvalidRequest(format!("log-probabilities: {e:?}")))?;
        Ok(picks
            .iter()
            .map(|&(r, p, t)| {
                let row = rows.binary_search(&(r * s + p)).unwrap_or_else(|i| i);
                f64::from(logp[row * vocab + t as usize])
            })
            .collect())
    }

    /// Next-token cross-entropy: position `i` predicts `labels[i + 1]`, as transformers shifts;
    /// `None` labels are skipped.
    pub fn loss(&self, batch: &TokenBatch, labels: &[Vec<Label>]) -> Result<LossOutput> {
        // Targets first, so bad labels are refused before the forward pass.
        let targets = self.loss_targets(batch, labels)?;
        let hidden = self.forward_hidden(batch, None)?;
        Ok(self.loss_of(hidden, targets))
    }

    /// [`loss`](Self::loss) from final hidden states `hidden` (`[rows, seq, hidden]`, as
    /// [`forward_hidden`](Self::forward_hidden) gives them, or as a head closure of
    /// [`gradients_of`](Self::gradients_of) receives them); `batch` and `labels` describe its
    /// rows.
    pub fn hidden_loss(
        &self,
        hidden: Tensor<3>,
        batch: &TokenBatch,
        labels: &[Vec<Label>],
    ) -> Result<LossOutput> {
        Ok(self.loss_of(hidden, self.loss_targets(batch, labels)?))
    }

    /// The loss of `hidden` against targets from [`loss_targets`](Self::loss_targets).
    fn loss_of(&self, hidden: Tensor<3>, (targets, weights, tokens): LossTargets) -> LossOutput {
        let sum = self.loss_sum(hidden, targets, weights);
        let loss = sum.clone().div_scalar(tokens.max(1) as f32);
        LossOutput { loss, sum, tokens }
    }

    /// Each row's summed log-probability of its labelled next tokens (`labels` as for
    /// [`loss`](Self::loss)), from one forward pass over the whole batch: what TRL's preference
    /// trainers call the sequence log-probability. Each row's sum goes through the same chunked
    /// loss as training, on that row's hidden states only, so backward keeps `[tokens, hidden]`
    /// in all, never the logits.
    ///
    /// ```
    /// use burn::tensor::Device;
    /// use medify_models::{CausalLm, LoadOptions, TokenBatch};
    /// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama");
    /// let (model, _) = CausalLm::from_pretrained(dir, &Device::flex(), &LoadOptions::dense()).unwrap();
    /// let ids = vec![vec![1u32, 5, 9, 17], vec![1, 7, 3, 0]];
    /// let labels = vec![vec![None, None, Some(9), Some(17)], vec![None, Some(7), Some(3), None]];
    /// let out = model.sequence_logps(&TokenBatch::new(ids.clone()), &labels).unwrap();
    /// assert_eq!(out.tokens, vec![2, 2]);
    /// let sums: Vec<f32> = out.logps.into_data().try_into_vec().unwrap();
    /// let loss = model.loss(&TokenBatch::new(ids), &labels).unwrap().sum.into_scalar::<f32>();
    /// assert!((sums[0] + sums[1] + loss).abs() < 1e-4);
    /// ```
    pub fn sequence_logps(
        &self,
        batch: &TokenBatch,
        labels: &[Vec<Label>],
    ) -> Result<SequenceLogps> {
        let targets = self.loss_targets(batch, labels)?;
        let hidden = self.forward_hidden(batch, None)?;
        Ok(self.sequence_logps_of(hidden, targets))
    }

    /// [`sequence_logps`](Self::sequence_logps) from final hidden states (see
    /// [`hidden_loss`](Self::hidden_loss)).
    pub fn hidden_sequence_logps(
        &self,
        hidden: Tensor<3>,
        batch: &TokenBatch,
        labels: &[Vec<Label>],
    ) -> Result<SequenceLogps> {
        Ok(self.sequence_logps_of(hidden, self.loss_targets(batch, labels)?))
    }

    /// Per-row log-probabilities of `hidden` against targets from
    /// [`loss_targets`](Self::loss_targets).
    fn sequence_logps_of(
        &self,
        hidden: Tensor<3>,
        (targets, weights, _): LossTargets,
    ) -> SequenceLogps {
        let [b, s, _] = hidden.dims();
        let n = s - 1;
        let mut tokens = Vec::with_capacity(b);
        let rows: Vec<Tensor<1>> = (0..b)
            .map(|r| {
                let w = weights[r * n..(r + 1) * n].to_vec();
                tokens.push(w.iter().filter(|&&x| x > 0.0).count());
                let t = targets[r * n..(r + 1) * n].to_vec();
                self.loss_sum(hidden.clone().narrow(0, r, 1), t, w).neg()
            })
            .collect();
        SequenceLogps {
            logps: Tensor::cat(rows, 0),
            tokens,
        }
    }

    /// The weighted cross-entropy sum from final (normed) hidden states `[batch, seq, hidden]`
    /// and shifted targets: in row chunks on the fast path, from full logits on the reference one.
    pub(crate) fn loss_sum(
        &self,
        hidden: Tensor<3>,
        targets: Vec<i64>,
        weights: Vec<f32>,
    ) -> Tensor<1> {
        let [b, s, d] = hidden.dims();
        let hidden = hidden.narrow(1, 0, s - 1);
        match self.fused_head_weight() {
            Some(head) => {
                let hidden = hidden.reshape([b * (s - 1), d]);
                crate::loss::chunked_lm_loss(hidden, head, &targets, &weights)
            }
            None => self.materialized_loss_sum(hidden, targets, weights),
        }
    }

    /// The output embedding when the chunked loss can use it: the fast kernel path and a frozen,
    /// bias-free head (tied embeddings, or an lm_head without an adapter).
    fn fused_head_weight(&self) -> Option<Tensor<2>> {
        if self.kernels != KernelPath::Fast {
            return None;
        }
        match &self.lm_head {
            None => Some(self.embed_tokens.clone()),
            Some(head) if head.lora().is_none() && head.bias().is_none() => {
                Some(head.weight().to_dense())
            }
            Some(_) => None,
        }
    }

    fn materialized_loss_sum(
        &self,
        hidden: Tensor<3>,
        targets: Vec<i64>,
        weights: Vec<f32>,
    ) -> Tensor<1> {
        let [b, s1, _] = hidden.dims();
        let device = self.device();
        let logp = log_softmax(medify_quant::dtype::to_f32(self.logits(hidden)), 2);
        let idx = Tensor::<3, Int>::from_data(TensorData::new(targets, [b, s1, 1]), &device);
        let w = Tensor::<3>::from_data(TensorData::new(weights, [b, s1, 1]), &device);
        (logp.gather(2, idx) * w).sum().neg()
    }

    /// Shifted targets and their weights (0 where the label is `None`), with the count of predicted
    /// tokens; checks the labels' shape and range.
    pub(crate) fn loss_targets(
        &self,
        batch: &TokenBatch,
        labels: &[Vec<Label>],
    ) -> Result<LossTargets> {
        let [b, s] = batch.dims();
        if labels.len() != b || labels.iter().any(|l| l.len() != s) {
            return Err(ModelError::InvalidRequest(
                "labels must have the ids' shape".into(),
            ));
        }
        if s < 2 {
            return Err(ModelError::InvalidRequest(
                "a sequence needs at least two tokens to predict one".into(),
            ));
        }
        let vocab = self.config.vocab_size;
        let mut targets = Vec::with_capacity(b * (s - 1));
        let mut weights = Vec::with_capacity(b * (s - 1));
        for row in labels {
            for &l in &row[1..] {
                match l {
                    None => {
                        targets.push(0i64);
                        weights.push(0f32);
                    }
                    Some(t) if t as usize >= vocab => {
                        return Err(ModelError::InvalidRequest(format!(
                            "label {t} is outside the vocabulary (size {vocab})"
                        )));
                    }
                    Some(t) => {
                        targets.push(i64::from(t));
                        weights.push(1.0);
                    }
                }
            }
        }
        let tokens = weights.iter().filter(|&&w| w > 0.0).count();
        Ok((targets, weights, tokens))
    }

    /// Parameters of the dense model this checkpoint represents.
    pub fn num_parameters(&self) -> usize {
        self.config.num_parameters()
    }
}
