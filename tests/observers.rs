//! A library user's own observer of the training loop, with the default ones removed: the run
//! still checkpoints, is interrupted and resumed, and ends with the adapter of an
//! uninterrupted run with the default observers, bit for bit.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use burn::tensor::Device;
use medify_qlora::data::ReadOptions;
use medify_qlora::training::{MetricsRecord, RunContext, StepMetrics, TrainObserver, read_metrics};
use medify_qlora::{DataSource, Finetune, FinetuneConfig, ModelSource};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medify-observers-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config() -> FinetuneConfig {
    FinetuneConfig {
        lora_r: 4,
        lora_alpha: 8.0,
        learning_rate: 1e-2,
        warmup_ratio: 0.5,
        batch_size: 4,
        grad_accum: 1,
        max_len: 64,
        max_steps: Some(6),
        eval_every: 0,
        save_every: 0,
        validation_fraction: 0.15,
        ..FinetuneConfig::default()
    }
}

fn new_run(out: &Path) -> Finetune {
    let model = ModelSource::new(root().join("fixtures/tiny_models/llama"), None).unwrap();
    let data = DataSource::file(
        &root().join("fixtures/medical_qa/medical_qa.jsonl"),
        &ReadOptions::default(),
    )
    .unwrap();
    Finetune::new(config())
        .model(model)
        .data(data)
        .output(out)
        .device(Device::flex())
}

/// Collects each step's loss, and asks the run to stop after step `stop_after`.
struct Losses {
    seen: Arc<Mutex<Vec<(u64, f64)>>>,
    stop: Arc<AtomicBool>,
    stop_after: u64,
}

impl TrainObserver for Losses {
    fn name(&self) -> &str {
        "losses"
    }

    fn after_step(
        &mut self,
        _run: &RunContext,
        step: &mut StepMetrics,
    ) -> medify_qlora::Result<()> {
        self.seen.lock().unwrap().push((step.step, step.loss));
        if step.step == self.stop_after {
            self.stop.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
}

fn adapter(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("adapter_model.safetensors")).unwrap()
}

#[test]
fn own_observer_without_defaults_checkpoints_and_resumes_exactly() {
    // Reference: uninterrupted, default observers.
    let reference = out_dir("reference");
    let summary = new_run(&reference).run().unwrap();
    assert_eq!(summary.steps, 6);
    let logged: Vec<(u64, f64)> = read_metrics(&reference.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            MetricsRecord::Step(s) => Some((s.step, s.loss)),
            MetricsRecord::Eval(_) => None,
        })
        .collect();
    assert_eq!(logged.len(), 6);
    for file in ["metrics.jsonl", "loss.png", "README.md"] {
        assert!(reference.join(file).is_file(), "{file}");
    }

    // Only the user's observer; it interrupts after step 2, which writes a checkpoint.
    let out = out_dir("own");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let losses = |stop_after| Losses {
        seen: seen.clone(),
        stop: stop.clone(),
        stop_after,
    };
    let first = new_run(&out)
        .without_default_observers()
        .observer(losses(2))
        .interrupt(stop.clone())
        .run()
        .unwrap();
    assert!(first.interrupted);
    assert_eq!(first.steps, 2);
    assert_eq!(
        first.last_checkpoint.as_deref(),
        Some(out.join("checkpoints/step-000002").as_path())
    );
    // Nothing of the removed observers was written.
    for file in ["metrics.jsonl", "loss.png", "README.md"] {
        assert!(!out.join(file).exists(), "{file}");
    }

    // Resumed from the run directory, again with only the user's observer.
    stop.store(false, Ordering::SeqCst);
    let resumed = Finetune::resume(&out)
        .unwrap()
        .device(Device::flex())
        .without_default_observers()
        .observer(losses(0))
        .run()
        .unwrap();
    assert!(!resumed.interrupted);
    assert_eq!(resumed.steps, 6);
    assert_eq!(adapter(&out), adapter(&reference));
    assert_eq!(*seen.lock().unwrap(), logged);
    assert_eq!(resumed.eval_after, summary.eval_after);
    assert!(!out.join("metrics.jsonl").exists());

    let _ = std::fs::remove_dir_all(&reference);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_peak_memory_observer_can_be_left_out_and_the_log_says_so() {
    let out = out_dir("no-peak");
    let mut started = new_run(&out).start().unwrap();
    let names: Vec<String> = started
        .trainer
        .observers_mut()
        .iter()
        .map(|o| o.name().to_string())
        .collect();
    assert_eq!(
        names,
        ["peak-memory", "metrics-log", "loss-plot", "model-card"]
    );
    assert_eq!(started.trainer.remove_observer("peak-memory"), 1);
    started.trainer.train().unwrap();
    for record in read_metrics(&out.join("metrics.jsonl")).unwrap() {
        if let MetricsRecord::Step(s) = record {
            assert_eq!(s.peak_rss_bytes, None);
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}
