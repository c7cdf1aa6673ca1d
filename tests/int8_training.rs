//! LoRA over an LLM.int8 base, end to end: a run with `quant: int8` lowers the validation loss,
//! records its base's form so the adapter loads back over the same int8 weights, and merges
//! both ways (into a dense copy, exactly; into the int8 weights, within their rounding).

use std::path::PathBuf;

use burn::tensor::Device;
use medify_qlora::data::ReadOptions;
use medify_qlora::evaluate_loss;
use medify_qlora::loading::{FinetunedModel, FinetunedOptions};
use medify_qlora::lora::{FrozenWeight, LoraExt, LoraModel};
use medify_qlora::models::SaveDtype;
use medify_qlora::{
    BaseQuant, DataSource, Finetune, FinetuneConfig, ModelSource, TrainData, load_base,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medify-int8-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config() -> FinetuneConfig {
    let mut c = FinetuneConfig {
        lora_r: 8,
        lora_alpha: 16.0,
        learning_rate: 1e-2,
        warmup_ratio: 0.0,
        batch_size: 4,
        grad_accum: 1,
        max_len: 64,
        max_steps: Some(12),
        eval_every: 0,
        save_every: 0,
        validation_fraction: 0.15,
        ..FinetuneConfig::default()
    };
    c.quantization.quant = BaseQuant::Int8;
    c
}

#[test]
fn lora_over_an_int8_base_trains_reloads_and_merges() {
    let out = temp("run");
    let data = DataSource::file(
        &root().join("fixtures/medical_qa/medical_qa.jsonl"),
        &ReadOptions::default(),
    )
    .unwrap();
    let model = ModelSource::new(root().join("fixtures/tiny_models/llama"), None).unwrap();
    let started = Finetune::new(config())
        .model(model)
        .data(data)
        .output(&out)
        .device(Device::flex())
        .progress(false)
        .start()
        .unwrap();
    let int8 = started
        .trainer
        .model()
        .linear_layers()
        .iter()
        .filter(|(_, p)| matches!(p.weight(), FrozenWeight::Int8(_)))
        .count();
    assert_eq!(int8, 14, "every decoder projection held in int8");
    let summary = { started }.trainer.train().unwrap();
    let (before, after) = (summary.eval_before.unwrap(), summary.eval_after.unwrap());
    assert!(
        after.loss < before.loss - 0.1,
        "eval loss {} -> {}",
        before.loss,
        after.loss
    );

    // The adapter loads back over the int8 base its run records, with the loss it ended at.
    let tuned = FinetunedModel::load(&out, &Device::flex(), &FinetunedOptions::default()).unwrap();
    assert_eq!(
        tuned.from.quant,
        Some(medify_qlora::models::LinearQuant::Int8)
    );
    let c = config();
    let read = DataSource::file(
        &root().join("fixtures/medical_qa/medical_qa.jsonl"),
        &ReadOptions::default(),
    )
    .unwrap()
    .read()
    .unwrap();
    let prepared =
        medify_qlora::data::prepare(read.records, &tuned.base.encoder, &c.dataset_config())
            .unwrap();
    let data = TrainData::from_prepared(&prepared, &c, tuned.base.encoder.pad_id());
    let mut model = tuned.base.model.clone();
    model.set_adapters_training(false);
    let reloaded = evaluate_loss(&model, &data.validation, data.pad_id, 4).unwrap();
    assert!(
        (reloaded.loss - after.loss).abs() < 1e-5,
        "{} vs {}",
        reloaded.loss,
        after.loss
    );

    // Merged into a dense copy: the decoded int8 weight plus the adapter, the same loss.
    let merged_dir = temp("merged");
    tuned
        .base
        .save_merged(&merged_dir, SaveDtype::F32, false)
        .unwrap();
    let dense = load_base(&merged_dir, &Device::flex(), None, None)
        .unwrap()
        .model;
    let merged = evaluate_loss(&dense, &data.validation, data.pad_id, 4).unwrap();
    assert!(
        (merged.loss - reloaded.loss).abs() < 1e-4,
        "merged {} vs adapter {}",
        merged.loss,
        reloaded.loss
    );

    // Merged into the int8 weights (requantized, as PEFT merges into Linear8bitLt): close,
    // and unmerging restores the original codes.
    let report = model.merge_adapters().unwrap();
    assert_eq!(report.requantized, 14);
    let requantized = evaluate_loss(&model, &data.validation, data.pad_id, 4).unwrap();
    assert!(
        (requantized.loss - reloaded.loss).abs() < 2e-2,
        "requantized {} vs adapter {}",
        requantized.loss,
        reloaded.loss
    );
    model.unmerge_adapters().unwrap();
    let unmerged = evaluate_loss(&model, &data.validation, data.pad_id, 4).unwrap();
    assert!((unmerged.loss - reloaded.loss).abs() < 1e-6);

    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_dir_all(&merged_dir).unwrap();
}
