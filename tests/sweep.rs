//! A sweep over the tiny model on flex through the public API: every variant runs in its own
//! directory, the results are tabulated and plotted, a rerun skips what finished, and an
//! interrupted variant resumes from its checkpoint on the next invocation.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::Device;
use medify_qlora::data::ReadOptions;
use medify_qlora::{
    ANSWERS_FILE, DataSource, FinetuneConfig, ModelSource, RunSources, SweepOptions, SweepSpec,
    run_sweep, score_answers,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sources() -> RunSources {
    RunSources {
        model: ModelSource::new(
            root().join("fixtures/tiny_models/llama"),
            Some("medify/tiny-llama"),
        )
        .unwrap(),
        data: vec![
            DataSource::file(
                &root().join("fixtures/medical_qa/medical_qa.jsonl"),
                &ReadOptions::default(),
            )
            .unwrap(),
        ],
        adapter: None,
    }
}

fn start() -> FinetuneConfig {
    FinetuneConfig {
        lora_r: 4,
        lora_alpha: 8.0,
        warmup_ratio: 0.0,
        batch_size: 4,
        max_len: 64,
        validation_fraction: 0.15,
        max_eval_records: 8,
        ..FinetuneConfig::default()
    }
}

fn out(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medify-sweep-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn sweep_runs_tabulates_skips_and_resumes() {
    let spec: SweepSpec = serde_json::from_str(
        r#"{"base": {"max_steps": 4, "eval_every": 2, "save_every": 2},
            "grid": {"learning_rate": [0.01, 0.0001]}}"#,
    )
    .unwrap();
    let variants = spec.variants(&start()).unwrap();
    let dir = out("grid");
    let options = SweepOptions {
        out_dir: dir.clone(),
        device: Device::flex().autodiff(),
        progress: false,
        interrupt: None,
        generate: None,
    };
    let mut seen = Vec::new();
    let report = run_sweep(&variants, &sources(), &options, &mut |p| {
        seen.push((p.index, p.total, p.skipped, p.eta_s.is_some()))
    })
    .unwrap();
    assert!(!report.interrupted);
    assert_eq!(seen, [(0, 2, false, false), (1, 2, false, true)]);
    assert_eq!(report.results.len(), 2);
    for r in &report.results {
        assert_eq!(r.steps, 4);
        assert!(!r.skipped);
        assert!(
            r.best_eval.is_some() && r.eval_perplexity.is_some() && r.final_train_loss.is_some()
        );
        assert!(r.tokens_per_s.unwrap() > 0.0);
        assert!(
            dir.join(&r.name)
                .join("adapter_model.safetensors")
                .is_file()
        );
        assert!(
            dir.join(&r.name).join("README.md").is_file(),
            "each run has its card"
        );
    }
    // The larger learning rate learns more in 4 steps: it is first in the table.
    let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "curve,variant,learning_rate,steps,final_train_loss,best_eval_loss,best_eval_step,eval_perplexity,tokens_per_s,wall_s,peak_rss_mib"
    );
    assert_eq!(lines.len(), 3);
    assert!(
        lines[1].starts_with("1,01-learning_rate=0.01,0.01,4,"),
        "{csv}"
    );
    let md = std::fs::read_to_string(dir.join("results.md")).unwrap();
    assert!(
        md.contains("| 1 | 01-learning_rate=0.01 | 0.01 | 4 |"),
        "{md}"
    );
    let png = std::fs::read(dir.join("eval_loss.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    // Rerun: nothing trains again.
    let weights = dir
        .join(&report.results[0].name)
        .join("adapter_model.safetensors");
    let modified = std::fs::metadata(&weights).unwrap().modified().unwrap();
    let again = run_sweep(&variants, &sources(), &options, &mut |_| {}).unwrap();
    assert!(again.results.iter().all(|r| r.skipped));
    assert_eq!(
        std::fs::metadata(&weights).unwrap().modified().unwrap(),
        modified
    );
    assert_eq!(
        again
            .results
            .iter()
            .map(|r| r.best_eval)
            .collect::<Vec<_>>(),
        report
            .results
            .iter()
            .map(|r| r.best_eval)
            .collect::<Vec<_>>()
    );
    // A changed sweep file does not pass off the old runs as its own.
    let changed: SweepSpec = serde_json::from_str(
        r#"{"base": {"max_steps": 5, "eval_every": 2, "save_every": 2},
            "grid": {"learning_rate": [0.01, 0.0001]}}"#,
    )
    .unwrap();
    let err = run_sweep(
        &changed.variants(&start()).unwrap(),
        &sources(),
        &options,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("other settings"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);

    // Interrupted after its first step, the variant resumes on the next invocation.
    let dir = out("resume");
    let flag = Arc::new(AtomicBool::new(true));
    let options = SweepOptions {
        out_dir: dir.clone(),
        device: Device::flex().autodiff(),
        progress: false,
        interrupt: Some(flag.clone()),
        generate: None,
    };
    let one = &variants[..1];
    let stopped = run_sweep(one, &sources(), &options, &mut |_| {}).unwrap();
    assert!(stopped.interrupted);
    assert_eq!(stopped.results[0].steps, 1);
    flag.store(false, Ordering::SeqCst);
    let mut resumed = None;
    let done = run_sweep(one, &sources(), &options, &mut |p| {
        resumed = p.resumed_from.clone()
    })
    .unwrap();
    assert!(!done.interrupted);
    assert_eq!(done.results[0].steps, 4);
    assert!(
        resumed.is_some_and(|c| c.ends_with("checkpoints/step-000001")),
        "resumed from the interrupt's checkpoint"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn asked_for_answers_the_table_gains_bleu_and_rouge() {
    let spec: SweepSpec = serde_json::from_str(
        r#"{"base": {"max_steps": 2, "eval_every": 2, "save_every": 2},
            "variants": [{"name": "a", "lora_r": 4}],
            "generate": {"max_records": 3, "max_new_tokens": 6}}"#,
    )
    .unwrap();
    let variants = spec.variants(&start()).unwrap();
    let dir = out("answers");
    let mut options = SweepOptions {
        out_dir: dir.clone(),
        device: Device::flex().autodiff(),
        progress: false,
        interrupt: None,
        generate: spec.generate.clone(),
    };
    let report = run_sweep(&variants, &sources(), &options, &mut |_| {}).unwrap();
    let scores = report.results[0].answers.expect("answers were asked for");
    assert_eq!(scores.records, 3);
    let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    let (head, row) = (csv.lines().next().unwrap(), csv.lines().nth(1).unwrap());
    assert!(
        head.ends_with(",peak_rss_mib,bleu,rouge1,rouge2,rougeL"),
        "{head}"
    );
    let cells: Vec<f64> = row
        .rsplit(',')
        .take(4)
        .map(|c| c.parse().unwrap())
        .collect();
    assert_eq!(cells[3], (scores.bleu * 1e4).round() / 1e4, "{row}");
    assert!(cells.iter().all(|c| (0.0..=1.0).contains(c)), "{row}");
    // The saved answers are the held-out records' questions, scored as eval --generate does.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("a").join(ANSWERS_FILE)).unwrap())
            .unwrap();
    let answers = saved["report"]["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 3);
    let field = |k: &str| -> Vec<String> {
        answers
            .iter()
            .map(|a| a[k].as_str().unwrap().to_string())
            .collect()
    };
    let recomputed = score_answers(&field("answer"), &field("reference"));
    assert_eq!(recomputed, scores);
    let data =
        std::fs::read_to_string(root().join("fixtures/medical_qa/medical_qa.jsonl")).unwrap();
    for q in field("question") {
        assert!(
            data.contains(&serde_json::to_string(&q).unwrap()),
            "{q} is not a record"
        );
    }
    // A rerun reads them back; other settings make new ones.
    let file = dir.join("a").join(ANSWERS_FILE);
    let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
    let again = run_sweep(&variants, &sources(), &options, &mut |_| {}).unwrap();
    assert_eq!(again.results[0].answers, Some(scores));
    assert_eq!(
        std::fs::metadata(&file).unwrap().modified().unwrap(),
        modified
    );
    options.generate.as_mut().unwrap().max_records = 2;
    let fewer = run_sweep(&variants, &sources(), &options, &mut |_| {}).unwrap();
    assert_eq!(fewer.results[0].answers.as_ref().unwrap().records, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn preference_sweeps_vary_beta_and_method_and_report_rewards() {
    let spec: SweepSpec = serde_json::from_str(
        r#"{"base": {"method": "dpo", "max_steps": 3, "learning_rate": 0.005, "batch_size": 2,
                     "max_len": 160, "validation_fraction": 0.05},
            "grid": {"beta": [0.1, 0.5], "method": ["dpo", "ipo"]}}"#,
    )
    .unwrap();
    let variants = spec.variants(&start()).unwrap();
    assert_eq!(variants.len(), 4);
    let dir = out("preference");
    let options = SweepOptions {
        out_dir: dir.clone(),
        device: Device::flex().autodiff(),
        progress: false,
        interrupt: None,
        generate: Some(medify_qlora::GenerateSpec {
            max_records: 1,
            max_new_tokens: 4,
            ..medify_qlora::GenerateSpec::default()
        }),
    };
    let sources = RunSources::new(
        ModelSource::new(root().join("fixtures/tiny_models/llama"), None).unwrap(),
        vec![DataSource::embedded_preferences()],
    );
    let report = run_sweep(&variants, &sources, &options, &mut |_| {}).unwrap();
    for r in &report.results {
        let rewards = r.eval_rewards.expect("held-out rewards");
        assert_eq!(rewards.pairs, 5);
        assert_eq!(r.answers.as_ref().unwrap().records, 1, "{}", r.name);
    }
    let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(
        header.starts_with("curve,variant,beta,method,")
            && header.contains(",eval_reward_accuracy,eval_reward_margin,"),
        "{header}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
