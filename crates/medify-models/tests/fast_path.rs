//! The CPU fast path against the reference path it replaces, on the tiny models of
//! `fixtures/tiny_models`: with the fused kernels (chunked cross-entropy, fused attention
//! softmax and SwiGLU; `KernelPath::Fast`, the default on flex) a training step must give the
//! loss of burn's own ops (`KernelPath::Reference`: materialised logits and log-softmax) within
//! 1e-6 and every adapter gradient within 1e-5 relative, over dense and NF4 bases, tied and
//! untied heads, SwiGLU and GeGLU, with masked (prompt) labels and left padding; the
//! counter-based dropout must draw the same masks on every backend.

use crate::common;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use medify_lora::{LoraConfig, LoraExt, LoraInit, LoraModel, TargetModules};
use medify_models::{CausalLm, KernelPath, Label, LoadOptions, TokenBatch};
use medify_quant::{DropoutKey, QuantConfig, dropout};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn batch(vocab: usize) -> (TokenBatch, Vec<Vec<Label>>) {
    common::prompt_masked_batch(vocab, 2, 24, 5)
}

fn adapter_grads(model: &CausalLm, loss: Tensor<1>) -> Vec<(String, Vec<f32>)> {
    let grads = loss.backward();
    let mut out = Vec::new();
    for (path, proj) in model.linear_layers() {
        let Some(adapter) = proj.lora() else { continue };
        for (name, t) in [("A", adapter.lora_a.val()), ("B", adapter.lora_b.val())] {
            let g = t
                .grad(&grads)
                .unwrap_or_else(|| panic!("{path}.{name} has no gradient"));
            out.push((
                format!("{path}.{name}"),
                g.into_data().try_into_vec().unwrap(),
            ));
        }
    }
    out
}

fn check(variant: &str, options: &LoadOptions) {
    let device = Device::flex().autodiff();
    let dir = fixtures().join("tiny_models").join(variant);
    let (mut model, _) = CausalLm::from_pretrained(&dir, &device, options).unwrap();
    // Random B so that A's gradients are not zero; no dropout, so both paths see the same net.
    model
        .add_adapters(
            &LoraConfig::new(4, 8.0)
                .with_target_modules(TargetModules::AllLinear)
                .with_init(LoraInit::Random)
                .with_seed(11),
        )
        .unwrap();
    let (batch, labels) = batch(model.config().vocab_size);
    assert_eq!(model.kernel_path(), KernelPath::Fast);
    let fast = model.loss(&batch, &labels).unwrap();
    let fast_grads = adapter_grads(&model, fast.loss.clone());
    model.set_kernel_path(KernelPath::Reference);
    let reference = model.loss(&batch, &labels).unwrap();
    assert_eq!(fast.tokens, reference.tokens);
    assert_eq!(fast.tokens, 2 * 19, "masked labels are not predicted");
    let (f, r) = (
        fast.loss.clone().into_scalar::<f32>() as f64,
        reference.loss.clone().into_scalar::<f32>() as f64,
    );
    assert!(
        (f - r).abs() <= 1e-6 * r.abs().max(1.0),
        "{variant}: loss {f} vs {r}"
    );
    let got = fast_grads;
    let want = adapter_grads(&model, reference.loss);
    assert_eq!(got.len(), want.len());
    assert!(!got.is_empty());
    for ((name, g), (_, w)) in got.iter().zip(&want) {
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{variant} {name}: zero reference gradient");
        let diff = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= 1e-5 * scale,
            "{variant} {name}: max diff {diff} against max |grad| {scale}"
        );
    }
}

#[test]
fn fused_kernels_give_the_reference_loss_and_gradients() {
    let nf4 = LoadOptions::quantized(QuantConfig::default());
    check("llama", &LoadOptions::dense()); // untied head, dense base
    check("llama", &nf4); // untied head, NF4 + DQ base
    check("llama_nf4", &LoadOptions::dense()); // bitsandbytes 4-bit checkpoint
    check("gemma", &nf4); // tied embeddings, GeGLU (not fused), (1 + w) norms
    check("llama3", &LoadOptions::dense()); // tied embeddings
    check("mistral", &nf4); // sliding window
}

#[test]
fn dropout_masks_depend_only_on_the_key() {
    let key = DropoutKey {
        seed: 5,
        stream: 2,
        counter: 9,
    };
    let values: Vec<f32> = (0..3 * 1000).map(|i| (i % 13) as f32 - 6.0).collect();
    let run = |device: &Device| -> Vec<f32> {
        let x = Tensor::<2>::from_data(TensorData::new(values.clone(), [3, 1000]), device);
        dropout(x, 0.1, key)
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .unwrap()
    };
    let flex = run(&Device::flex());
    assert_eq!(flex, run(&Device::flex().autodiff()));
    let other = dropout(
        Tensor::<2>::from_data(TensorData::new(values.clone(), [3, 1000]), &Device::flex()),
        0.1,
        DropoutKey { counter: 10, ..key },
    );
    assert_ne!(flex, other.into_data().try_into_vec::<f32>().unwrap());
    #[cfg(feature = "wgpu")]
    {
        let wgpu = run(&Device::wgpu(burn::tensor::DeviceKind::DefaultDevice));
        for (a, b) in flex.iter().zip(&wgpu) {
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{a} vs {b}");
        }
        assert_eq!(
            flex.iter().map(|v| *v == 0.0).collect::<Vec<_>>(),
            wgpu.iter().map(|v| *v == 0.0).collect::<Vec<_>>(),
            "the same elements are dropped on flex and wgpu"
        );
    }
}
