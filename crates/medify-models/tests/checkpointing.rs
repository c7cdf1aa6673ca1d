//! Training memory without changing the numbers: layer-level gradient checkpointing must give
//! the plain backward's loss and adapter gradients (within 1e-5 relative), with dropout on (the
//! recomputation has to draw the masks the first pass drew), and the chunked cross-entropy must
//! give the materialised one's loss and gradients on a backend without the CPU host kernel (wgpu).

use std::path::{Path, PathBuf};

use burn::optim::GradientsParams;
use burn::tensor::Device;
use medify_lora::{LoraConfig, LoraExt, LoraInit, LoraModel, TargetModules};
use medify_models::{CausalLm, Checkpointing, KernelPath, Label, LoadOptions, TokenBatch};
use medify_quant::QuantConfig;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// Two left-padded rows of pseudo-random ids, the first labels masked like a prompt.
fn batch(vocab: usize) -> (TokenBatch, Vec<Vec<Label>>) {
    let seqs: Vec<Vec<u32>> = [20usize, 16]
        .iter()
        .enumerate()
        .map(|(b, &n)| {
            (0..n)
                .map(|i| ((i * 131 + b * 977 + 7) % vocab) as u32)
                .collect()
        })
        .collect();
    let batch = TokenBatch::left_padded(&seqs, 0);
    let mask = batch.attention_mask.clone().unwrap();
    let labels = batch
        .ids
        .iter()
        .zip(&mask)
        .map(|(r, m)| {
            r.iter()
                .zip(m)
                .enumerate()
                .map(|(i, (&t, &real))| (real && i >= 8).then_some(t))
                .collect()
        })
        .collect();
    (batch, labels)
}

fn load(variant: &str, options: &LoadOptions, device: &Device, dora: bool) -> CausalLm {
    let dir = fixtures().join("tiny_models").join(variant);
    let (mut model, _) = CausalLm::from_pretrained(&dir, device, options).unwrap();
    model
        .add_adapters(
            &LoraConfig::new(4, 8.0)
                .with_target_modules(TargetModules::AllLinear)
                .with_init(LoraInit::Random)
                .with_dropout(0.1)
                .with_use_dora(dora)
                .with_seed(11),
        )
        .unwrap();
    model
}

/// Every adapter gradient, by path, from one micro-batch.
fn step(model: &CausalLm, mode: Checkpointing) -> (f64, Vec<(String, Vec<f32>)>) {
    let (batch, labels) = batch(model.config().vocab_size);
    model.seek_dropout(3, 1 << 24);
    let out = model.loss_gradients(&batch, &labels, 0.05, mode).unwrap();
    (out.loss_sum, named(model, &out.grads))
}

fn named(model: &CausalLm, grads: &GradientsParams) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for (path, proj) in model.linear_layers() {
        let Some(a) = proj.lora() else { continue };
        for (name, id) in [("A", a.lora_a.id), ("B", a.lora_b.id)] {
            let g = grads
                .get::<2>(id)
                .unwrap_or_else(|| panic!("{path}.{name} has no gradient"));
            out.push((
                format!("{path}.{name}"),
                g.into_data().try_into_vec().unwrap(),
            ));
        }
        if let Some(m) = &a.magnitude {
            let g = grads.get::<1>(m.id).expect("DoRA magnitude gradient");
            out.push((format!("{path}.m"), g.into_data().try_into_vec().unwrap()));
        }
    }
    out
}

fn assert_close(
    what: &str,
    got: &(f64, Vec<(String, Vec<f32>)>),
    want: &(f64, Vec<(String, Vec<f32>)>),
    loss_tol: f64,
) {
    assert!(
        (got.0 - want.0).abs() <= loss_tol * want.0.abs().max(1.0),
        "{what}: loss sum {} vs {}",
        got.0,
        want.0
    );
    assert_eq!(got.1.len(), want.1.len());
    assert!(!got.1.is_empty());
    for ((name, g), (_, w)) in got.1.iter().zip(&want.1) {
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{what} {name}: zero reference gradient");
        let diff = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= 1e-5 * scale,
            "{what} {name}: max diff {diff} against max |grad| {scale}"
        );
    }
}

#[test]
fn layer_checkpointing_gives_the_plain_gradients_with_dropout() {
    let device = Device::flex().autodiff();
    let nf4 = LoadOptions::quantized(QuantConfig::default());
    for (variant, options, dora) in [
        ("llama", &nf4, false),                 // NF4 base, untied head
        ("llama", &LoadOptions::dense(), true), // DoRA: dropout enters twice
        ("gemma", &nf4, false),                 // tied head, GeGLU, scaled embeddings
        ("mistral", &nf4, false),               // sliding window
    ] {
        let model = load(variant, options, &device, dora);
        let plain = step(&model, Checkpointing::Off);
        let again = step(&model, Checkpointing::Off);
        assert_eq!(
            plain.1, again.1,
            "{variant}: seeking makes a step repeatable"
        );
        let layers = step(&model, Checkpointing::Layers);
        assert_close(&format!("{variant} checkpointed"), &layers, &plain, 1e-6);
        // A tile budget of a few rows makes every layer take the tiled backward: MLP and
        // projections in row tiles (each drawing its slice of the dropout mask), attention in
        // query tiles.
        let mut tiled = load(variant, options, &device, dora);
        tiled.set_tile_bytes(4 * 4 * tiled.config().intermediate_size);
        let tiles = step(&tiled, Checkpointing::Layers);
        assert_close(&format!("{variant} tiled"), &tiles, &plain, 1e-6);
        // Offloading is a no-op on the CPU, but the mode is accepted.
        let offloaded = step(&model, Checkpointing::LayersOffloaded);
        assert_close(&format!("{variant} offloaded"), &offloaded, &plain, 1e-6);
        // Without the rewind the recomputation would draw new masks: the check can fail.
        model.seek_dropout(4, 0);
        let (batch, labels) = batch(model.config().vocab_size);
        let other = model
            .loss_gradients(&batch, &labels, 0.05, Checkpointing::Off)
            .unwrap();
        assert_ne!(
            named(&model, &other.grads),
            plain.1,
            "{variant}: masks matter"
        );
    }
}

#[test]
fn training_needs_an_autodiff_device() {
    let model = load("llama", &LoadOptions::dense(), &Device::flex(), false);
    let (batch, labels) = batch(model.config().vocab_size);
    let err = model
        .loss_gradients(&batch, &labels, 1.0, Checkpointing::Layers)
        .unwrap_err();
    assert!(err.to_string().contains("autodiff"), "{err}");
}

#[cfg(feature = "wgpu")]
#[test]
fn chunked_loss_and_checkpointing_on_wgpu() {
    let device = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice).autodiff();
    let nf4 = LoadOptions::quantized(QuantConfig::default());
    let mut model = load("llama", &nf4, &device, false);
    assert_eq!(model.kernel_path(), KernelPath::Fast);
    let chunked = step(&model, Checkpointing::Off);
    let layers = step(&model, Checkpointing::Layers);
    let offloaded = step(&model, Checkpointing::LayersOffloaded);
    model.set_kernel_path(KernelPath::Reference);
    let full = step(&model, Checkpointing::Off);
    assert_close("wgpu chunked vs full cross-entropy", &chunked, &full, 1e-6);
    assert_close("wgpu checkpointed", &layers, &chunked, 1e-6);
    assert_close("wgpu offloaded checkpoints", &offloaded, &chunked, 1e-6);
    model.set_tile_bytes(4 * 4 * model.config().intermediate_size);
    let tiled = step(&model, Checkpointing::Layers);
    assert_close("wgpu tiled checkpoints", &tiled, &chunked, 1e-6);
    model.set_tile_bytes(medify_models::DEFAULT_TILE_BYTES);
    // Evaluation (no autodiff) takes the chunked path too and agrees with the full logits.
    let plain = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
    let mut eval = load("llama", &nf4, &plain, false);
    let (batch, labels) = batch(eval.config().vocab_size);
    let a = eval.loss(&batch, &labels).unwrap().sum.into_scalar::<f64>();
    eval.set_kernel_path(KernelPath::Reference);
    let b = eval.loss(&batch, &labels).unwrap().sum.into_scalar::<f64>();
    assert!((a - b).abs() <= 1e-6 * b.abs(), "eval loss {a} vs {b}");
}
