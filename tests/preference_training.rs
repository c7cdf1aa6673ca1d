//! Preference runs through the public API, as a user runs them: DPO on the embedded
//! medical-safety pairs over the tiny Llama's NF4 base, resumed bit-exactly (with the reference
//! model rebuilt, and with the precomputed table read back), the precomputed reference giving
//! the on-the-fly run's losses, SFT then DPO from the SFT adapter (the reference is the SFT
//! model), SimPO and ORPO runs, and the errors a user meets.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use medify_qlora::training::Method;

use crate::runs::step_metrics;
use medify_qlora::{
    AdapterSource, DataSource, Finetune, FinetuneConfig, ModelSource, REFERENCE_LOGPS_FILE,
    TrainSummary,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medify-pref-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config(method: Method) -> FinetuneConfig {
    FinetuneConfig {
        method,
        lora_r: 8,
        lora_alpha: 16.0,
        lora_dropout: 0.1,
        learning_rate: 5e-3,
        warmup_ratio: 0.0,
        max_grad_norm: 1.0,
        batch_size: 2,
        grad_accum: 2,
        max_len: 160,
        max_steps: Some(6),
        eval_every: 3,
        save_every: 3,
        validation_fraction: 0.05,
        // Exercise the shuffle across an epoch boundary inside the run.
        max_eval_records: 4,
        ..FinetuneConfig::default()
    }
}

fn run(config: FinetuneConfig, out: &Path, adapter: Option<&Path>) -> TrainSummary {
    let model = ModelSource::new(root().join("fixtures/tiny_models/llama"), None).unwrap();
    let data = if config.method.is_preference() {
        DataSource::embedded_preferences()
    } else {
        DataSource::embedded()
    };
    let mut f = Finetune::new(config)
        .model(model)
        .data(data)
        .output(out)
        .device(Device::flex());
    if let Some(dir) = adapter {
        f = f.adapter(AdapterSource::new(dir).unwrap());
    }
    f.run().unwrap()
}

fn adapter_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("adapter_model.safetensors")).unwrap()
}

/// Runs 3 steps, resumes to 6 from the checkpoint, and checks the adapter and the last steps'
/// metrics equal the uninterrupted run's, bit for bit.
fn assert_resume_is_exact(config: FinetuneConfig, adapter: Option<&Path>, name: &str) {
    let whole = out_dir(&format!("{name}-whole"));
    run(config.clone(), &whole, adapter);
    let part = out_dir(&format!("{name}-part"));
    run(
        FinetuneConfig {
            max_steps: Some(3),
            ..config.clone()
        },
        &part,
        adapter,
    );
    let resumed = Finetune::resume(part.join("checkpoints/step-000003"))
        .unwrap()
        .settings(|c| c.max_steps = Some(6))
        .device(Device::flex())
        .run()
        .unwrap();
    assert_eq!(resumed.steps, 6);
    assert_eq!(adapter_bytes(&whole), adapter_bytes(&part), "{name}");
    let (a, b) = (step_metrics(&whole), step_metrics(&part));
    assert_eq!(a.len(), 6);
    for (x, y) in a.iter().zip(&b).skip(3) {
        assert_eq!((x.step, x.loss, x.grad_norm), (y.step, y.loss, y.grad_norm));
        assert_eq!(x.preference, y.preference, "{name} step {}", x.step);
    }
    std::fs::remove_dir_all(&whole).unwrap();
    std::fs::remove_dir_all(&part).unwrap();
}

#[test]
fn dpo_trains_logs_trl_metrics_and_resumes_bit_exactly() {
    let config = config(Method::Dpo);
    let out = out_dir("dpo");
    let summary = run(config.clone(), &out, None);
    let before = summary.preference_before.unwrap();
    let after = summary.preference_after.unwrap();
    // The policy starts as the reference (LoRA's B is zero): every reward 0, loss ln 2.
    assert_eq!(
        (before.rewards_margins, before.rewards_accuracies),
        (0.0, 0.0)
    );
    assert!((summary.eval_before.unwrap().loss - 2f64.ln()).abs() < 1e-6);
    assert!(after.rewards_margins > 0.0, "{after:?}");
    assert!(summary.eval_after.unwrap().loss < 2f64.ln());
    let s = step_metrics(&out);
    assert!((s[0].loss - 2f64.ln()).abs() < 1e-6);
    let p = s.last().unwrap().preference.unwrap();
    assert!(p.logps_chosen < 0.0 && p.rewards_accuracies >= 0.0);
    let line = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(line.contains("\"rewards/margins\"") && line.contains("\"eval_rewards/accuracies\""));
    std::fs::remove_dir_all(&out).unwrap();
    assert_resume_is_exact(config, None, "dpo");
}

#[test]
fn precomputed_reference_gives_the_on_the_fly_losses_and_resumes_from_the_stored_table() {
    let fly = out_dir("fly");
    let table = out_dir("table");
    let config = config(Method::Dpo);
    run(config.clone(), &fly, None);
    let pre = FinetuneConfig {
        precompute_ref_logps: true,
        ..config
    };
    run(pre.clone(), &table, None);
    assert!(table.join(REFERENCE_LOGPS_FILE).is_file());
    assert!(
        table
            .join("checkpoints/step-000006")
            .join(REFERENCE_LOGPS_FILE)
            .is_file()
    );
    // The same steps; the reference's values differ only by the batching they were computed in.
    for (a, b) in step_metrics(&fly).iter().zip(&step_metrics(&table)) {
        assert!(
            (a.loss - b.loss).abs() < 1e-5,
            "step {}: {} vs {}",
            a.step,
            a.loss,
            b.loss
        );
        let (pa, pb) = (a.preference.unwrap(), b.preference.unwrap());
        assert!((pa.rewards_margins - pb.rewards_margins).abs() < 1e-5);
    }
    std::fs::remove_dir_all(&fly).unwrap();
    std::fs::remove_dir_all(&table).unwrap();
    assert_resume_is_exact(pre, None, "dpo-table");
}

#[test]
fn dpo_from_an_sft_adapter_uses_the_sft_model_as_reference_and_resumes_exactly() {
    let sft = out_dir("sft");
    let sft_config = FinetuneConfig {
        lora_r: 4,
        // Without dropout the policy's first pass equals the reference's (the DPO run takes
        // the adapter's dropout); with it, TRL's first loss is not ln 2 either.
        lora_dropout: 0.0,
        target_modules: medify_qlora::lora::TargetModules::Names(vec![
            "q_proj".into(),
            "v_proj".into(),
        ]),
        max_steps: Some(4),
        ..config(Method::Sft)
    };
    run(sft_config, &sft, None);
    let dpo = out_dir("dpo-from-sft");
    run(config(Method::Dpo), &dpo, Some(&sft));
    // The policy starts as the SFT adapter and the reference is the SFT model: rewards 0.
    let s = step_metrics(&dpo);
    assert!((s[0].loss - 2f64.ln()).abs() < 1e-6, "{}", s[0].loss);
    assert_eq!(s[0].preference.unwrap().rewards_chosen, 0.0);
    // The adapter's settings replace the run's.
    let saved: FinetuneConfig =
        serde_json::from_str(&std::fs::read_to_string(dpo.join("finetune_config.json")).unwrap())
            .unwrap();
    assert_eq!(saved.lora_r, 4);
    let sources = medify_qlora::RunSources::read(&dpo).unwrap().unwrap();
    assert_eq!(
        sources.adapter.unwrap().path,
        std::path::absolute(&sft).unwrap()
    );
    std::fs::remove_dir_all(&dpo).unwrap();
    assert_resume_is_exact(config(Method::Dpo), Some(&sft), "dpo-from-sft");
    std::fs::remove_dir_all(&sft).unwrap();
}

#[test]
fn simpo_and_orpo_train_without_a_reference() {
    for method in [Method::Simpo, Method::Orpo] {
        let out = out_dir(method.as_str());
        let config = FinetuneConfig {
            max_steps: Some(4),
            ..config(method)
        };
        let summary = run(config, &out, None);
        assert!(!out.join(REFERENCE_LOGPS_FILE).exists());
        let s = step_metrics(&out);
        assert_eq!(s.len(), 4);
        let p = s[0].preference.unwrap();
        assert_eq!(p.nll_loss.is_some(), method == Method::Orpo, "{method}");
        assert!(summary.preference_after.is_some());
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn wrong_data_and_settings_are_named() {
    let model = ModelSource::new(root().join("fixtures/tiny_models/llama"), None).unwrap();
    let out = out_dir("errors");
    // Supervised records are not pairs.
    let e = Finetune::new(config(Method::Dpo))
        .model(model.clone())
        .data(DataSource::embedded())
        .output(&out)
        .device(Device::flex())
        .run()
        .unwrap_err()
        .to_string();
    assert!(e.contains("no preference pairs"), "{e}");
    // A pairs file read by a supervised run.
    let e = Finetune::new(config(Method::Sft))
        .model(model.clone())
        .data(DataSource::embedded_preferences())
        .output(&out)
        .device(Device::flex())
        .run()
        .unwrap_err()
        .to_string();
    assert!(e.contains("preference method"), "{e}");
    let packed = FinetuneConfig {
        packing: true,
        ..config(Method::Dpo)
    };
    let e = packed.validate().unwrap_err().to_string();
    assert!(e.contains("packing"), "{e}");
    let stray = FinetuneConfig {
        beta: Some(0.2),
        ..config(Method::Sft)
    };
    assert!(stray.validate().unwrap_err().to_string().contains("beta"));
    let _ = std::fs::remove_dir_all(&out);
}
