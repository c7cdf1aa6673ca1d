//! LoRA, rsLoRA and DoRA against PEFT: adapters saved by PEFT (`fixtures/lora`, made by
//! `fixtures/scripts/make_lora_references.py`) must give PEFT's losses, logits and gradients on
//! the tiny Llama, dense and NF4; an adapter saved here must be what PEFT loaded to produce the
//! recorded `rust_saved` losses; QLoRA training must lower the loss and leave the 4-bit base
//! untouched, on flex and on wgpu.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use medify_lora::{
    FrozenWeight, LoraConfig, LoraError, LoraExt, LoraInit, LoraModel, TargetModules,
};
use medify_models::{CausalLm, LoadOptions, SaveDtype, TokenBatch};
use medify_quant::Packed4Bit;
use safetensors::SafeTensors;
use serde_json::Value;

/// With `MEDIFY_WRITE_FIXTURES` set, rewrites a committed fixture and stops the test: comparing
/// a fixture with what was just written into it would prove nothing, so a rewrite never passes.
/// Run the Python script that records the reference again, then the tests without the variable.
fn rewrite_fixture(path: &std::path::Path, write: impl FnOnce()) {
    if std::env::var_os("MEDIFY_WRITE_FIXTURES").is_some() {
        write();
        panic!(
            "rewrote {} (MEDIFY_WRITE_FIXTURES); rerun without it to check against the fixture",
            path.display()
        );
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(fixtures().join("lora/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn sequences() -> Vec<Vec<u32>> {
    let text = std::fs::read_to_string(fixtures().join("tiny_models/reference.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["llama"]["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

fn load(variant: &str, device: &Device) -> CausalLm {
    let dir = fixtures().join("tiny_models").join(variant);
    CausalLm::from_pretrained(&dir, device, &LoadOptions::dense())
        .unwrap()
        .0
}

fn loss_tensor(model: &CausalLm, ids: &[u32]) -> Tensor<1> {
    let labels = vec![ids.iter().map(|&t| Some(t)).collect::<Vec<_>>()];
    model
        .loss(&TokenBatch::new(vec![ids.to_vec()]), &labels)
        .unwrap()
        .loss
}

fn losses(model: &CausalLm) -> Vec<f64> {
    sequences()
        .iter()
        .map(|s| loss_tensor(model, s).into_scalar::<f32>() as f64)
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn assert_all_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: {got:?} vs {want:?}"
        );
    }
}

fn last_logits(model: &CausalLm) -> Vec<f64> {
    let first = &sequences()[0];
    let logits = model
        .forward(&TokenBatch::new(vec![first.clone()]), None)
        .unwrap();
    logits
        .narrow(1, first.len() - 1, 1)
        .narrow(2, 0, 32)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

fn check_peft_adapter(name: &str, expected_trainable: usize) {
    let device = Device::flex();
    let r = &reference()[name];
    let dir = fixtures().join("lora").join(name);

    let mut model = load("llama", &device);
    assert_all_close(&losses(&model), &floats(&r["base_losses"]), 1e-4, "base");
    let (config, summary) = model.load_adapter(&dir).unwrap();
    assert_eq!(summary.trainable, expected_trainable, "{name}: {summary}");
    assert!(summary.total > summary.trainable);
    let adapted = losses(&model);
    assert_all_close(
        &adapted,
        &floats(&r["losses"]),
        1e-4,
        &format!("{name}: losses"),
    );
    assert_all_close(
        &last_logits(&model),
        &floats(&r["last_logits"]),
        1e-4,
        &format!("{name}: logits"),
    );

    // Merged equals unmerged (and PEFT's merge_and_unload); unmerging restores the base.
    let report = model.merge_adapters().unwrap();
    assert_eq!(
        (report.merged, report.requantized),
        (summary.adapted.len(), 0)
    );
    assert_all_close(&losses(&model), &adapted, 1e-5, &format!("{name}: merged"));
    assert_all_close(
        &losses(&model),
        &floats(&r["merged_losses"]),
        1e-4,
        &format!("{name}: PEFT merged"),
    );
    model.unmerge_adapters().unwrap();
    assert_all_close(
        &losses(&model),
        &adapted,
        1e-5,
        &format!("{name}: unmerged"),
    );
    model.remove_adapters().unwrap();
    assert_all_close(
        &losses(&model),
        &floats(&r["base_losses"]),
        1e-5,
        &format!("{name}: removed"),
    );

    // QLoRA: the same adapter over bitsandbytes' NF4 + DQ checkpoint.
    let mut q = load("llama_nf4", &device);
    assert!(q.linear_layers()[0].1.weight().is_quantized());
    q.load_adapter(&dir).unwrap();
    assert_all_close(
        &losses(&q),
        &floats(&r["nf4_losses"]),
        1e-4,
        &format!("{name}: nf4"),
    );
    let before = losses(&q);
    let report = q.merge_adapters().unwrap();
    assert!(report.requantized > 0 && report.max_rounding_error > 0.0);
    q.unmerge_adapters().unwrap();
    assert_eq!(
        losses(&q),
        before,
        "{name}: a 4-bit unmerge restores the exact codes"
    );
    let _ = config;
}

/// r·(in + out) per layer: q,o 64x64; k,v 32x64; gate, up 128x64; down 64x128.
const LORA_R4_PER_LAYER: usize = 4 * (128 + 96 + 96 + 128 + 192 + 192 + 192);

#[test]
fn peft_lora_adapter_gives_peft_outputs() {
    check_peft_adapter("peft_lora", 2 * LORA_R4_PER_LAYER);
}

#[test]
fn peft_rslora_adapter_with_patterns_gives_peft_outputs() {
    // layer 1 only: q r=8 (64+64), v r=2 (64+32), down r=8 (128+64)
    check_peft_adapter("peft_rslora", 8 * 128 + 2 * 96 + 8 * 192);
}

#[test]
fn peft_dora_adapter_gives_peft_outputs() {
    // plus one magnitude per output row: 64+32+32+64+128+128+64 per layer
    check_peft_adapter("peft_dora", 2 * (LORA_R4_PER_LAYER + 512));
}

#[test]
fn gradients_of_a_and_b_match_peft() {
    let device = Device::flex().autodiff();
    let mut model = load("llama", &device);
    model
        .load_adapter(&fixtures().join("lora/peft_lora"))
        .unwrap();
    let loss = loss_tensor(&model, &sequences()[0]);
    let want_loss = reference()["peft_lora"]["grad_loss"].as_f64().unwrap();
    assert!((loss.clone().into_scalar::<f32>() as f64 - want_loss).abs() < 1e-4);
    let grads = loss.backward();

    let bytes = std::fs::read(fixtures().join("lora/peft_lora_grads.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut checked = 0;
    for (path, proj) in model.linear_layers() {
        let Some(adapter) = proj.lora() else {
            assert_eq!(
                path, "lm_head",
                "all-linear adapts every layer but the output"
            );
            continue;
        };
        for (suffix, tensor) in [
            ("lora_A", adapter.lora_a.val()),
            ("lora_B", adapter.lora_b.val()),
        ] {
            let key = format!("base_model.model.{path}.{suffix}.weight");
            let got: Vec<f32> = tensor
                .grad(&grads)
                .unwrap_or_else(|| panic!("no gradient for {key}"))
                .into_data()
                .try_into_vec()
                .unwrap();
            common::assert_gradient(&st, &key, &got, 1.0);
            checked += 1;
        }
    }
    assert_eq!(checked, st.len());
}

fn rust_adapter_config() -> LoraConfig {
    LoraConfig::new(4, 8.0)
        .with_target_modules(TargetModules::AllLinear)
        .with_use_rslora(true)
        .with_use_dora(true)
        .with_init(LoraInit::Random)
        .with_seed(7)
}

/// Tensors by name: shape and raw bytes.
type RawTensors = BTreeMap<String, (Vec<usize>, Vec<u8>)>;

fn read_all(dir: &Path) -> (Value, RawTensors) {
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.shape().to_vec(), v.data().to_vec())))
        .collect();
    (cfg, tensors)
}

#[test]
fn adapter_saved_here_loads_in_peft() {
    let device = Device::flex();
    let mut model = load("llama", &device);
    let config = rust_adapter_config();
    let summary = model.add_adapters(&config).unwrap();
    assert_eq!(summary.adapted.len(), 14, "all-linear leaves lm_head out");
    let tmp = std::env::temp_dir().join(format!("medify-lora-save-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    model.save_adapter(&tmp, &config, false).unwrap();
    assert!(matches!(
        model.save_adapter(&tmp, &config, false),
        Err(LoraError::AlreadyExists(_))
    ));
    model.save_adapter(&tmp, &config, true).unwrap();

    let committed = fixtures().join("lora/rust_saved");
    rewrite_fixture(&committed, || {
        model.save_adapter(&committed, &config, true).unwrap();
    });
    // The same seed gives the same adapter, written the same way, as the one PEFT loaded.
    let (cfg, tensors) = read_all(&tmp);
    let (want_cfg, want_tensors) = read_all(&committed);
    assert_eq!(cfg, want_cfg);
    assert_eq!(
        tensors.keys().collect::<Vec<_>>(),
        want_tensors.keys().collect::<Vec<_>>()
    );
    // A and B come from the seeded generator: bit for bit. DoRA's magnitude is the row norm
    // of W + s·B A, a matmul whose last bits depend on the CPU's kernel (AVX2 or AVX-512).
    for (name, (shape, bytes)) in &tensors {
        let (want_shape, want_bytes) = &want_tensors[name];
        assert_eq!(shape, want_shape, "{name}");
        if name.ends_with("lora_magnitude_vector") {
            let f = |b: &[u8]| -> Vec<f32> {
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            };
            for (a, b) in f(bytes).iter().zip(f(want_bytes)) {
                assert!((a - b).abs() <= 1e-6 * b.abs(), "{name}: {a} vs {b}");
            }
        } else {
            assert!(
                bytes == want_bytes,
                "{name}: values differ from the committed adapter"
            );
        }
    }

    // PEFT's losses with that adapter are ours.
    let r = &reference()["rust_saved"];
    let ours = losses(&model);
    assert_all_close(&ours, &floats(&r["losses"]), 1e-4, "rust_saved in PEFT");
    assert_all_close(
        &last_logits(&model),
        &floats(&r["last_logits"]),
        1e-4,
        "rust_saved logits",
    );

    // And it loads back here.
    let mut again = load("llama", &device);
    again.load_adapter(&tmp).unwrap();
    assert_all_close(&losses(&again), &ours, 1e-6, "reloaded");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn bad_configs_and_foreign_adapters_get_clear_errors() {
    let device = Device::flex();
    let mut model = load("llama", &device);
    fn err<T>(r: Result<T, LoraError>) -> String {
        r.map(|_| ()).unwrap_err().to_string()
    }

    let e = err(model.add_adapters(&LoraConfig::new(0, 8.0)));
    assert!(e.contains("r must be at least 1"), "{e}");
    let e = err(model.add_adapters(
        &LoraConfig::new(4, 8.0).with_target_modules(TargetModules::names(&["q_proj", "qkv_proj"])),
    ));
    assert!(
        e.contains("qkv_proj") && e.contains("q_proj, up_proj"),
        "{e}"
    );
    let e = err(model.add_adapters(&LoraConfig::new(40, 8.0)));
    assert!(
        e.contains("k_proj") && e.contains("r = 40") && e.contains("at most 32"),
        "{e}"
    );
    assert!(
        model.adapter_summary().adapted.is_empty(),
        "failed calls adapt nothing"
    );

    model.add_adapters(&LoraConfig::default()).unwrap();
    let e = err(model.add_adapters(&LoraConfig::default()));
    assert!(e.contains("already carries an adapter"), "{e}");

    // An adapter made for the Llama fixture does not fit Gemma (other shapes) nor a
    // different rank at the same paths.
    let mut gemma = load("gemma", &device);
    let e = err(gemma.load_adapter(&fixtures().join("lora/peft_lora")));
    assert!(e.contains("peft_lora") && e.contains("shape"), "{e}");
    assert!(gemma.adapter_summary().adapted.is_empty());

    let e = err(load("llama", &device).load_adapter(Path::new("/nonexistent/adapter")));
    assert!(
        e.contains("/nonexistent/adapter/adapter_config.json"),
        "{e}"
    );

    // A tampered adapter: config says r = 8 but the tensors are r = 4.
    let tmp = std::env::temp_dir().join(format!("medify-lora-bad-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let src = fixtures().join("lora/peft_lora");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        tmp.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    cfg["r"] = 8.into();
    std::fs::write(tmp.join("adapter_config.json"), cfg.to_string()).unwrap();
    let e = err(load("llama", &device).load_adapter(&tmp));
    assert!(
        e.contains("lora_A.weight has shape [4, 64]") && e.contains("[8, 64]"),
        "{e}"
    );
    std::fs::write(tmp.join("adapter_config.json"), "{\"r\": 4,").unwrap();
    let e = err(load("llama", &device).load_adapter(&tmp));
    assert!(
        e.contains("adapter_config.json") && e.contains("JSON"),
        "{e}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn merged_models_save_as_dense_hugging_face_directories() {
    let device = Device::flex();
    let tmp = std::env::temp_dir().join(format!("medify-lora-merged-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);

    // Every architecture round-trips through save_pretrained (names, config, Gemma's norms).
    for variant in ["llama", "llama3", "mistral", "gemma"] {
        let model = load(variant, &device);
        let out = tmp.join(variant);
        model.save_pretrained(&out, SaveDtype::F32, false).unwrap();
        let again = CausalLm::from_pretrained(&out, &device, &LoadOptions::dense())
            .unwrap()
            .0;
        assert_eq!(again.config(), model.config(), "{variant}: config.json");
        assert_all_close(&losses(&again), &losses(&model), 1e-6, variant);
    }

    // A DoRA adapter folded into a dense f32 checkpoint gives PEFT's adapted losses.
    let mut model = load("llama", &device);
    model
        .load_adapter(&fixtures().join("lora/peft_dora"))
        .unwrap();
    model
        .save_pretrained(tmp.join("dora"), SaveDtype::F32, false)
        .unwrap();
    let merged = CausalLm::from_pretrained(tmp.join("dora"), &device, &LoadOptions::dense())
        .unwrap()
        .0;
    assert!(merged.adapter_summary().adapted.is_empty());
    assert_all_close(
        &losses(&merged),
        &floats(&reference()["peft_dora"]["losses"]),
        1e-4,
        "merged DoRA",
    );

    // QLoRA: an adapter over the NF4 base, decoded and merged into bf16. transformers loaded
    // the committed copy of this directory (rust_merged) and recorded its losses.
    let mut q = load("llama_nf4", &device);
    q.load_adapter(&fixtures().join("lora/peft_lora")).unwrap();
    let out = tmp.join("qlora_bf16");
    q.save_pretrained(&out, SaveDtype::BF16, false).unwrap();
    let committed = fixtures().join("lora/rust_merged");
    rewrite_fixture(&committed, || {
        q.save_pretrained(&committed, SaveDtype::BF16, true)
            .unwrap();
    });
    for file in ["model.safetensors", "config.json"] {
        assert!(
            std::fs::read(out.join(file)).unwrap() == std::fs::read(committed.join(file)).unwrap(),
            "{file} differs from the committed rust_merged"
        );
    }
    let bf16 = CausalLm::from_pretrained(&out, &device, &LoadOptions::dense())
        .unwrap()
        .0;
    let want = floats(&reference()["rust_merged"]["losses"]);
    assert_all_close(&losses(&bf16), &want, 1e-4, "bf16 merged vs transformers");
    assert_all_close(
        &losses(&bf16),
        &floats(&reference()["peft_lora"]["nf4_losses"]),
        2e-2,
        "bf16 rounding",
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

fn packed_bases(model: &CausalLm) -> Vec<Packed4Bit> {
    model
        .linear_layers()
        .iter()
        .filter_map(|(_, p)| match p.weight() {
            FrozenWeight::Quant4(q) => Some(q.to_packed()),
            FrozenWeight::Dense(_) | FrozenWeight::Int8(_) => None,
        })
        .collect()
}

fn qlora_training_lowers_loss(device: &Device) {
    let device = device.clone().autodiff();
    let mut model = load("llama_nf4", &device);
    let before = packed_bases(&model);
    assert_eq!(before.len(), 14);
    let summary = model
        .add_adapters(
            &LoraConfig::new(8, 16.0)
                .with_target_modules(TargetModules::AllLinear)
                .with_dropout(0.05)
                .with_seed(3),
        )
        .unwrap();
    assert!(summary.trainable_percent() < 25.0, "{summary}");
    let seqs = sequences();
    let batch_loss =
        |m: &CausalLm| -> Tensor<1> { loss_tensor(m, &seqs[0]) + loss_tensor(m, &seqs[1]) };
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let initial = batch_loss(&model).into_scalar::<f32>();
    for _ in 0..6 {
        let loss = batch_loss(&model);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        // Only the adapter factors have gradients: two per adapted layer, nothing for the base.
        assert_eq!(grads.len(), 2 * summary.adapted.len());
        model = optim.step(1e-2, model, grads);
    }
    model.set_adapters_training(false);
    let last = batch_loss(&model).into_scalar::<f32>();
    assert!(last < initial - 0.5, "loss {initial} -> {last}");
    assert!(packed_bases(&model) == before, "the 4-bit base changed");
}

#[test]
fn qlora_training_on_flex_lowers_loss_and_keeps_the_base() {
    qlora_training_lowers_loss(&Device::flex());
}

#[cfg(feature = "wgpu")]
#[test]
fn qlora_training_on_wgpu_lowers_loss_and_keeps_the_base() {
    qlora_training_lowers_loss(&Device::wgpu(burn::tensor::DeviceKind::DefaultDevice));
}
