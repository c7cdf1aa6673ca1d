//! End to end through the public API only, as a downstream crate would use it: QLoRA
//! fine-tuning of a tiny Llama on the embedded medical Q&A set → adapter → evaluation with the
//! adapter is lower than without → merged model evaluates like the adapter → resuming from a
//! checkpoint equals the uninterrupted run.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use medify_qlora::data::{ReadOptions, prepare, read_records};
use medify_qlora::lora::LoraExt;
use medify_qlora::models::SaveDtype;
use medify_qlora::{
    AdapterBase, CardOptions, DISCLAIMER, DataSource, FinetuneConfig, FinetuneError, ModelSource,
    RunSources, TrainData, Trainer, TrainerOptions, evaluate_loss, export_hub, load_base,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tiny() -> PathBuf {
    root().join("fixtures/tiny_models/llama")
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medify-finetune-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config() -> FinetuneConfig {
    FinetuneConfig {
        lora_r: 8,
        lora_alpha: 16.0,
        learning_rate: 1e-2,
        warmup_ratio: 0.0,
        max_grad_norm: 1.0,
        batch_size: 4,
        grad_accum: 2,
        max_len: 96,
        max_steps: Some(8),
        eval_every: 4,
        save_every: 4,
        keep_last: 2,
        validation_fraction: 0.15,
        // The default, spelled out: the resume below must stay bit-exact with it on.
        gradient_checkpointing: true,
        ..FinetuneConfig::default()
    }
}

fn data(config: &FinetuneConfig) -> TrainData {
    let base = load_base(&tiny(), &Device::flex(), None, None).unwrap();
    let file = root().join("fixtures/medical_qa/medical_qa.jsonl");
    let records = read_records(&file, &ReadOptions::default())
        .unwrap()
        .records;
    let prepared = prepare(records, &base.encoder, &config.dataset_config()).unwrap();
    TrainData::from_prepared(&prepared, config, base.encoder.pad_id())
}

fn device() -> Device {
    Device::flex().autodiff()
}

fn quantized_base() -> medify_qlora::BaseModel {
    let config = config();
    load_base(
        &tiny(),
        &device(),
        config.quantization.linear_quant().unwrap(),
        None,
    )
    .unwrap()
}

fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect();
    out.sort();
    out
}

#[test]
fn finetune_evaluate_merge_and_resume() {
    let config = config();
    let data = data(&config);
    assert!(
        data.train.len() > 50 && data.validation.len() >= 8,
        "{} / {}",
        data.train.len(),
        data.validation.len()
    );

    // Train, recording where model and data came from.
    let out = out_dir("run");
    let sources = RunSources {
        model: ModelSource::new(tiny(), Some("medify/tiny-llama")).unwrap(),
        data: vec![
            DataSource::file(
                &root().join("fixtures/medical_qa/medical_qa.jsonl"),
                &ReadOptions::default(),
            )
            .unwrap(),
        ],
        adapter: None,
    };
    let options = |dir: &Path| TrainerOptions {
        sources: Some(sources.clone()),
        ..TrainerOptions::new(dir)
    };
    let mut trainer = Trainer::new(
        config.clone(),
        quantized_base().model,
        data.clone(),
        options(&out),
    )
    .unwrap();
    assert!(trainer.adapter_summary().unwrap().trainable > 0);
    let summary = trainer.train().unwrap();
    let before = summary.eval_before.unwrap();
    let after = summary.eval_after.unwrap();
    assert_eq!(summary.steps, 8);
    assert!(
        after.loss < before.loss,
        "eval loss {} -> {}",
        before.loss,
        after.loss
    );
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "metrics.jsonl",
        "loss.png",
        "train_summary.json",
        "finetune_config.json",
        "best/adapter_model.safetensors",
        "run_sources.json",
        "best/run_sources.json",
        "checkpoints/step-000004/run_sources.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // PEFT's AutoPeftModel finds the base by this name.
    let adapter_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        adapter_config["base_model_name_or_path"],
        "medify/tiny-llama"
    );
    // The run's model card: the header the Hub and PEFT read, the settings, the results and the
    // disclaimer; no local path.
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        card.starts_with("---\n"),
        "the YAML header opens the file: {card}"
    );
    let header: Vec<&str> = card.lines().skip(1).take_while(|l| *l != "---").collect();
    for line in [
        "base_model: \"medify/tiny-llama\"",
        "library_name: peft",
        "pipeline_tag: text-generation",
        "- \"base_model:adapter:medify/tiny-llama\"",
        "- \"medical\"",
    ] {
        assert!(
            header.contains(&line),
            "{line} not in the header: {header:?}"
        );
    }
    for text in [
        format!(
            "| with this adapter | {:.4} | {:.2} |",
            after.loss, after.perplexity
        ),
        format!(
            "| base model | {:.4} | {:.2} |",
            before.loss, before.perplexity
        ),
        format!(
            "| LoRA rank / alpha / dropout | {} / {} / {} |",
            config.lora_r, config.lora_alpha, config.lora_dropout
        ),
        DISCLAIMER.to_string(),
        "![training and validation loss](loss.png)".to_string(),
        "`medical_qa.jsonl`".to_string(),
    ] {
        assert!(card.contains(&text), "{text} not in the card:\n{card}");
    }
    let root_text = root().display().to_string();
    assert!(!card.contains(&root_text), "a local path in the card");

    // Hub layout: adapter, tokenizer, card; refuses to mix into another directory.
    let hub = out_dir("hub");
    let card_options = CardOptions {
        license: Some("apache-2.0".into()),
        datasets: vec!["lavita/MedQuAD".into()],
        ..CardOptions::default()
    };
    let export = export_hub(&out, &hub, &card_options, false).unwrap();
    assert_eq!(export.base_model, "medify/tiny-llama");
    assert_eq!(
        export.files,
        [
            "README.md",
            "adapter_config.json",
            "adapter_model.safetensors",
            "loss.png",
            "tokenizer.json",
            "tokenizer_config.json",
            "train_summary.json"
        ]
    );
    for (from, to) in [
        (
            out.join("adapter_model.safetensors"),
            hub.join("adapter_model.safetensors"),
        ),
        (tiny().join("tokenizer.json"), hub.join("tokenizer.json")),
        (
            tiny().join("tokenizer_config.json"),
            hub.join("tokenizer_config.json"),
        ),
    ] {
        assert_eq!(
            std::fs::read(&from).unwrap(),
            std::fs::read(&to).unwrap(),
            "{}",
            to.display()
        );
    }
    let hub_card = std::fs::read_to_string(hub.join("README.md")).unwrap();
    assert!(
        hub_card.contains("license: \"apache-2.0\"") && hub_card.contains("- \"lavita/MedQuAD\"")
    );
    let out_text = out.display().to_string();
    for f in &export.files {
        let text = String::from_utf8_lossy(&std::fs::read(hub.join(f)).unwrap()).into_owned();
        assert!(
            !text.contains(&root_text) && !text.contains(&out_text),
            "a local path in {f}"
        );
    }
    assert!(matches!(
        export_hub(&out, &hub, &card_options, false),
        Err(FinetuneError::WouldOverwrite(_))
    ));
    export_hub(&out, &hub, &card_options, true).unwrap();
    std::fs::write(hub.join("notes.txt"), "mine").unwrap();
    assert!(matches!(
        export_hub(&out, &hub, &card_options, true),
        Err(FinetuneError::ForeignFiles { .. })
    ));
    assert_eq!(
        std::fs::read_to_string(hub.join("notes.txt")).unwrap(),
        "mine"
    );
    let _ = std::fs::remove_dir_all(&hub);
    // eval, chat and merge load the adapter over the base it trained on, held the same way.
    let recorded_base = AdapterBase::resolve(Some(&out), None, None).unwrap();
    assert_eq!(recorded_base.model, std::path::absolute(tiny()).unwrap());
    assert_eq!(
        recorded_base.quant,
        config.quantization.linear_quant().unwrap()
    );
    let checkpoints = medify_qlora::training::checkpoints::list_checkpoints(&out);
    let names: Vec<_> = checkpoints
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["step-000004", "step-000008"]);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"loss\"")).count(),
        8
    );
    assert_eq!(
        metrics.lines().filter(|l| l.contains("eval_loss")).count(),
        3,
        "before, step 4, after"
    );
    let step_line = metrics.lines().find(|l| l.contains("\"loss\"")).unwrap();
    let step: serde_json::Value = serde_json::from_str(step_line).unwrap();
    if cfg!(target_os = "linux") {
        let peak = step["peak_rss_bytes"]
            .as_u64()
            .expect("the step's peak memory");
        assert!(peak > 10 << 20, "{peak}");
    }

    // The adapter loads onto a fresh 4-bit base and gives the trainer's evaluation.
    let mut fresh = quantized_base();
    let eval_without = evaluate_loss(&fresh.model, &data.validation, data.pad_id, 4).unwrap();
    assert!((eval_without.loss - before.loss).abs() < 1e-6);
    fresh.model.load_adapter(&out).unwrap();
    let eval_with = evaluate_loss(&fresh.model, &data.validation, data.pad_id, 4).unwrap();
    assert!(
        (eval_with.loss - after.loss).abs() < 1e-6,
        "{} vs {}",
        eval_with.loss,
        after.loss
    );
    assert!(eval_with.loss < eval_without.loss);

    // Merged into a dense model (4-bit base decoded, adapter added): same evaluation.
    let merged = out_dir("merged");
    fresh.save_merged(&merged, SaveDtype::F32, false).unwrap();
    let dense = load_base(&merged, &Device::flex(), None, None)
        .unwrap()
        .model;
    let eval_merged = evaluate_loss(&dense, &data.validation, data.pad_id, 4).unwrap();
    assert!(
        (eval_merged.loss - eval_with.loss).abs() < 1e-4,
        "merged {} vs adapter {}",
        eval_merged.loss,
        eval_with.loss
    );

    // Resuming from the step-4 checkpoint, with the model and data it records (content
    // checked), reproduces the final adapter bit for bit.
    let recorded = RunSources::read(&checkpoints[0]).unwrap().unwrap();
    let resumed_sources = recorded.for_resume(None, None, false).unwrap();
    assert_eq!(resumed_sources.model.path, sources.model.path);
    assert_eq!(resumed_sources.data, sources.data);
    let out2 = out_dir("resumed");
    let mut resumed = Trainer::resume(
        &checkpoints[0],
        quantized_base().model,
        data.clone(),
        options(&out2),
    )
    .unwrap();
    assert_eq!(resumed.state().step, 4);
    let summary2 = resumed.train().unwrap();
    assert_eq!(summary2.steps, 8);
    assert_eq!(
        tensors(&out2.join("adapter_model.safetensors")),
        tensors(&out.join("adapter_model.safetensors"))
    );
    assert_eq!(summary2.eval_after.unwrap().loss, after.loss);

    // Settings given with a resume apply or are refused: a larger max_steps extends the run;
    // a smaller one than the step reached, or a different learning rate, is an error.
    let last = checkpoints[1].clone();
    let resume_with = |c: &FinetuneConfig| {
        Trainer::resume_with(
            &last,
            c,
            quantized_base().model,
            data.clone(),
            options(&out2),
        )
    };
    let e = resume_with(&FinetuneConfig {
        learning_rate: 0.5,
        ..config.clone()
    })
    .err()
    .unwrap();
    assert!(
        matches!(&e, FinetuneError::ResumeConflict { field, .. } if field == "learning_rate"),
        "{e}"
    );
    let e = resume_with(&FinetuneConfig {
        max_steps: Some(6),
        ..config.clone()
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("max_steps"), "{e}");
    let mut extended = resume_with(&FinetuneConfig {
        max_steps: Some(10),
        ..config.clone()
    })
    .unwrap();
    assert_eq!((extended.state().step, extended.total_steps()), (8, 10));
    assert_eq!(extended.train().unwrap().steps, 10);

    // A second run into the same directory is refused; nothing there is touched.
    let e = Trainer::new(
        config,
        quantized_base().model,
        data,
        TrainerOptions::new(&out),
    )
    .err()
    .unwrap();
    assert!(matches!(e, FinetuneError::WouldOverwrite(_)), "{e}");
    assert!(out.join("adapter_model.safetensors").is_file());
}

#[test]
fn bad_checkpoints_and_settings_get_named_errors() {
    let dir = out_dir("badckpt");
    std::fs::create_dir_all(&dir).unwrap();
    let e = Trainer::resume(
        &dir,
        quantized_base().model,
        TrainData::default(),
        TrainerOptions::new(out_dir("x")),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("not a checkpoint") && e.contains("badckpt"),
        "{e}"
    );
    let e = FinetuneConfig::from_json(r#"{"learning_rate": -1}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("learning_rate"), "{e}");
    let e = Trainer::new(
        config(),
        quantized_base().model,
        TrainData::default(),
        TrainerOptions::new(out_dir("empty")),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("no training sequences"), "{e}");
}

#[test]
fn quantized_directories_load_back_as_the_same_4bit_model() {
    use medify_qlora::models::{CausalLm, LoadOptions};
    use medify_qlora::quant::QuantConfig;
    let device = Device::flex();
    let (dense, _) = CausalLm::from_pretrained(tiny(), &device, &LoadOptions::dense()).unwrap();
    let (in_memory, _) = CausalLm::from_pretrained(
        tiny(),
        &device,
        &LoadOptions::quantized(QuantConfig::default()),
    )
    .unwrap();
    let out = out_dir("bnb4");
    dense
        .save_pretrained_4bit(&out, &QuantConfig::default(), false)
        .unwrap();
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(written["quantization_config"]["bnb_4bit_quant_type"], "nf4");
    let (reloaded, report) =
        CausalLm::from_pretrained(&out, &device, &LoadOptions::dense()).unwrap();
    assert_eq!(report.quantized_linears, 14);
    let data = data(&config());
    let la = evaluate_loss(&in_memory, &data.validation, data.pad_id, 4)
        .unwrap()
        .loss;
    let lb = evaluate_loss(&reloaded, &data.validation, data.pad_id, 4)
        .unwrap()
        .loss;
    assert_eq!(
        la, lb,
        "the written 4-bit checkpoint is the model quantized in memory"
    );
}

/// Every adapter gradient, in module order.
fn adapter_grads(
    model: &medify_qlora::models::CausalLm,
    grads: &burn::optim::GradientsParams,
) -> Vec<Vec<f32>> {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::Tensor;
    struct Grads<'a> {
        grads: &'a burn::optim::GradientsParams,
        out: Vec<Vec<f32>>,
    }
    impl ModuleVisitor for Grads<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                self.out.push(g.into_data().try_to_vec::<f32>().unwrap());
            }
        }
    }
    let mut visitor = Grads {
        grads,
        out: Vec::new(),
    };
    model.visit(&mut visitor);
    visitor.out
}

#[test]
fn packed_rows_train_like_separate_examples() {
    use medify_qlora::data::{Batch, pack};
    use medify_qlora::lora::LoraInit;
    use medify_qlora::token_batch;

    // Three examples packed into one row give the loss and adapter gradients of the same three
    // as a padded batch: segments isolate attention and positions restart per example.
    let config = FinetuneConfig {
        lora_dropout: 0.0,
        ..config()
    };
    let base = load_base(&tiny(), &Device::flex(), None, None).unwrap();
    let records = read_records(
        &root().join("fixtures/medical_qa/medical_qa.jsonl"),
        &ReadOptions::default(),
    )
    .unwrap()
    .records;
    let prepared = prepare(records, &base.encoder, &config.dataset_config()).unwrap();
    let examples: Vec<_> = prepared.train[..3]
        .iter()
        .map(|e| e.encoded.clone())
        .collect();
    let total: usize = examples.iter().map(|e| e.input_ids.len()).sum();
    let packed = pack(&examples, total);
    assert_eq!(packed.len(), 1, "one row holds all three");
    assert_eq!(packed[0].segments.iter().max(), Some(&2));
    let separate = medify_qlora::data::unpacked(&examples);

    let mut model = quantized_base().model;
    let mut lora = config.lora_config().unwrap();
    lora.init = LoraInit::Random; // B != 0, so every adapter tensor gets a gradient
    model.add_adapters(&lora).unwrap();
    let run = |rows: &[medify_qlora::data::Sequence]| {
        let batch = Batch::collate(rows, base.encoder.pad_id());
        let out = model
            .loss(&token_batch(&batch), &medify_qlora::batch_labels(&batch))
            .unwrap();
        let sum = out.sum.clone().into_scalar::<f64>();
        let grads = burn::optim::GradientsParams::from_grads(out.sum.backward(), &model);
        (sum, out.tokens, adapter_grads(&model, &grads))
    };
    let (packed_sum, packed_tokens, packed_grads) = run(&packed);
    let (separate_sum, separate_tokens, separate_grads) = run(&separate);
    assert_eq!(packed_tokens, separate_tokens);
    assert!(
        (packed_sum - separate_sum).abs() < 1e-3 * separate_sum.abs(),
        "packed {packed_sum} vs separate {separate_sum}"
    );
    assert_eq!(packed_grads.len(), separate_grads.len());
    assert!(!packed_grads.is_empty());
    for (p, s) in packed_grads.iter().zip(&separate_grads) {
        let scale = s.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let diff = p.iter().zip(s).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= 1e-3 * scale,
            "gradient differs by {diff} (scale {scale})"
        );
    }

    // And the trainer learns from packed rows.
    let config = FinetuneConfig {
        packing: true,
        max_len: 512, // positions restart per example, so rows may exceed the model's 256
        max_steps: Some(4),
        eval_every: 0,
        save_every: 0,
        ..config
    };
    let data = data(&config);
    let unpacked_rows = data.validation.len();
    assert!(
        data.train.len() < prepared.train.len()
            && data
                .train
                .iter()
                .any(|row| row.segments.iter().any(|&s| s > 0)),
        "{} rows for {} examples: nothing was packed",
        data.train.len(),
        prepared.train.len()
    );
    let mut trainer = Trainer::new(
        config,
        quantized_base().model,
        data,
        TrainerOptions::new(out_dir("packed")),
    )
    .unwrap();
    let summary = trainer.train().unwrap();
    let (before, after) = (summary.eval_before.unwrap(), summary.eval_after.unwrap());
    assert!(unpacked_rows > 0);
    assert!(
        after.loss < before.loss,
        "eval loss {} -> {}",
        before.loss,
        after.loss
    );
}
