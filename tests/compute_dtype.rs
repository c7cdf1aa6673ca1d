//! 16-bit compute (QLoRA's `bnb_4bit_compute_dtype`): activations and dense weights in f16/bf16,
//! adapters, their gradients and the optimizer state in f32. A QLoRA run in 16 bits must lower
//! the loss and stay near the f32 run: its loss within 1 % and every adapter gradient within
//! 5 % (f16, 11 significant bits) or 10 % (bf16, 8 bits) of the largest f32 gradient of its
//! tensor. A dtype the device lacks is refused by name.

use crate::common;

use std::path::{Path, PathBuf};

use burn::optim::GradientsParams;
use burn::tensor::{DType, Device};
use medify_qlora::lora::{LoraConfig, LoraExt, LoraInit, LoraModel, TargetModules};
use medify_qlora::models::{CausalLm, Checkpointing, ComputeDtype, Label, LoadOptions, TokenBatch};
use medify_qlora::optim::{AdamWConfig, PagedAdamW};
use medify_qlora::quant::QuantConfig;

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny_models/llama")
}

fn load(device: &Device, dtype: ComputeDtype) -> CausalLm {
    let options = LoadOptions::quantized(QuantConfig::default()).with_compute_dtype(dtype);
    let (mut model, _) = CausalLm::from_pretrained(tiny(), device, &options).unwrap();
    model
        .add_adapters(
            &LoraConfig::new(4, 8.0)
                .with_target_modules(TargetModules::AllLinear)
                .with_init(LoraInit::Random)
                .with_dropout(0.1)
                .with_seed(5),
        )
        .unwrap();
    model
}

fn batch(vocab: usize) -> (TokenBatch, Vec<Vec<Label>>) {
    common::prompt_masked_batch(vocab, 2, 20, 4)
}

fn grads(model: &CausalLm, g: &GradientsParams) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for (path, proj) in model.linear_layers() {
        let Some(a) = proj.lora() else { continue };
        for id in [a.lora_a.id, a.lora_b.id] {
            let t = g
                .get::<2>(id)
                .unwrap_or_else(|| panic!("{path}: no gradient"));
            assert_eq!(t.dtype(), DType::F32, "{path}: adapter gradients stay f32");
            out.push(t.into_data().try_into_vec().unwrap());
        }
    }
    out
}

/// Loss and gradients of one micro-batch, then a few optimizer steps' losses.
fn run(
    device: &Device,
    dtype: ComputeDtype,
    mode: Checkpointing,
) -> (f64, Vec<Vec<f32>>, Vec<f64>) {
    let mut model = load(device, dtype);
    assert_eq!(model.compute_dtype(), dtype);
    assert_eq!(model.embed_tokens.dtype(), dtype.dtype());
    let (batch, labels) = batch(model.config().vocab_size);
    // The same dropout masks in every run: they are a hash of (seed, layer, call).
    model.seek_dropout(9, 0);
    let first = model
        .loss_gradients(&batch, &labels, 1.0 / 32.0, mode)
        .unwrap();
    let loss = first.loss_sum / first.tokens as f64;
    let g = grads(&model, &first.grads);
    let mut optim =
        PagedAdamW::new(AdamWConfig::paged_adamw_32bit().with_weight_decay(0.0)).unwrap();
    let mut losses = Vec::new();
    for _ in 0..6 {
        let out = model
            .loss_gradients(&batch, &labels, 1.0 / 32.0, mode)
            .unwrap();
        losses.push(out.loss_sum / out.tokens as f64);
        model = optim.step(1e-2, model, out.grads).unwrap().0;
    }
    for (path, proj) in model.linear_layers() {
        if let Some(a) = proj.lora() {
            assert_eq!(
                a.lora_a.val().dtype(),
                DType::F32,
                "{path}: adapter weights stay f32"
            );
        }
    }
    (loss, g, losses)
}

fn compare(
    what: &str,
    got: &(f64, Vec<Vec<f32>>, Vec<f64>),
    want: &(f64, Vec<Vec<f32>>, Vec<f64>),
    grad_tol: f32,
) {
    assert!(
        (got.0 - want.0).abs() <= 1e-2 * want.0,
        "{what}: loss {} vs f32 {}",
        got.0,
        want.0
    );
    for (g, w) in got.1.iter().zip(&want.1) {
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= grad_tol * scale,
            "{what}: gradient diff {diff} against {scale}"
        );
    }
    let l = &got.2;
    assert!(
        l[l.len() - 1] < l[0] - 0.1,
        "{what}: training lowers the loss: {l:?}"
    );
}

#[test]
fn bf16_compute_on_flex_tracks_f32() {
    let device = Device::flex().autodiff();
    let f32_run = run(&device, ComputeDtype::F32, Checkpointing::Layers);
    let bf16 = run(&device, ComputeDtype::Bf16, Checkpointing::Layers);
    compare("flex bf16", &bf16, &f32_run, 0.1);
}

#[cfg(feature = "wgpu")]
#[test]
fn f16_compute_on_wgpu_tracks_f32_and_bf16_is_refused() {
    let device = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice).autodiff();
    assert_eq!(
        ComputeDtype::default_for(&device),
        ComputeDtype::F16,
        "lavapipe has no bf16"
    );
    let f32_run = run(&device, ComputeDtype::F32, Checkpointing::Off);
    let f16 = run(&device, ComputeDtype::F16, Checkpointing::Off);
    compare("wgpu f16", &f16, &f32_run, 0.05);
    let f16_ckpt = run(&device, ComputeDtype::F16, Checkpointing::LayersOffloaded);
    compare("wgpu f16 checkpointed", &f16_ckpt, &f32_run, 0.05);
    let options =
        LoadOptions::quantized(QuantConfig::default()).with_compute_dtype(ComputeDtype::Bf16);
    let err = CausalLm::from_pretrained(tiny(), &device, &options)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bf16") && err.contains("f16"), "{err}");
}
