//! `score_multiple_choice` against lm-evaluation-harness on fixtures/multiple_choice: the
//! tiny Llama, lm-eval's medqa_4options / medmcqa / pubmedqa prompts and an ARC-style
//! text-choice task, zero-shot and 2-shot. The prompts must be the same text, every option's
//! log-likelihood the same within f32 noise, and acc / acc_norm the same per question and in
//! total. The model's 256-token context cuts the 2-shot PubMedQA prompts, so left truncation is
//! compared too. References: fixtures/scripts/make_multiple_choice_references.py.

use crate::common;

use std::path::Path;

use burn::tensor::Device;
use medify_qlora::{
    FewshotSampler, McConfig, McTask, load_base, read_mc_questions, score_multiple_choice,
};
use serde_json::Value;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/multiple_choice")
        .join(name)
}

/// Scores every run of a reference file with `model` and checks it against lm-eval's; returns
/// the largest log-likelihood difference and the number of truncated questions.
fn compare_with(reference: &str, base: &medify_qlora::BaseModel, max_len: usize) -> (f64, usize) {
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(reference)).unwrap()).unwrap();
    let mut worst = 0f64;
    let mut truncated = 0;
    for run in reference["runs"].as_array().unwrap() {
        let task: McTask = run["task"].as_str().unwrap().parse().unwrap();
        let shots = run["shots"].as_u64().unwrap() as usize;
        let (detected, questions) =
            read_mc_questions(&fixture(run["file"].as_str().unwrap()), None).unwrap();
        assert_eq!(detected, task, "{} is detected as {task}", run["file"]);
        let sampler = match run["sampler"].as_str().unwrap() {
            "default" => FewshotSampler::Random {
                seed: run["fewshot_seed"].as_u64().unwrap(),
            },
            "first_n" => FewshotSampler::FirstN,
            other => panic!("sampler {other}"),
        };
        let config = McConfig {
            task,
            shots,
            fewshot: None,
            sampler,
            max_len,
            batch_size: 3,
        };
        let report = score_multiple_choice(
            &base.model,
            &base.tokenizer,
            &questions,
            &config,
            &mut |_, _| {},
        )
        .unwrap();
        let want = run["questions"].as_array().unwrap();
        assert_eq!(report.scores.len(), want.len());
        for (got, want) in report.scores.iter().zip(want) {
            let at = format!(
                "{task} {shots}-shot ({}), line {}",
                run["sampler"], got.line
            );
            assert_eq!(got.prompt, want["prompt"].as_str().unwrap(), "{at}: prompt");
            let conts: Vec<String> = got.choices.iter().map(|c| format!(" {c}")).collect();
            let want_conts: Vec<&str> = want["continuations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            assert_eq!(conts, want_conts, "{at}: continuations");
            let want_ll: Vec<f64> = want["loglikelihoods"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(got.loglikelihoods.len(), want_ll.len(), "{at}: options");
            for (g, w) in got.loglikelihoods.iter().zip(&want_ll) {
                let d = (g - w).abs();
                worst = worst.max(d);
                assert!(d < 1e-4, "{at}: log-likelihood {g} vs {w}");
            }
            let hit = |p: usize| f64::from(u8::from(p == got.answer));
            assert_eq!(
                hit(got.predicted),
                want["acc"].as_f64().unwrap(),
                "{at}: acc"
            );
            assert_eq!(
                hit(got.predicted_norm),
                want["acc_norm"].as_f64().unwrap(),
                "{at}: acc_norm"
            );
            truncated += usize::from(got.truncated);
        }
        assert!(
            (report.acc - run["acc"].as_f64().unwrap()).abs() < 1e-12,
            "{task} {shots}-shot acc"
        );
        assert!((report.acc_norm - run["acc_norm"].as_f64().unwrap()).abs() < 1e-12);
        if let Some(se) = run["acc_stderr"].as_f64() {
            assert!(
                (report.acc_stderr - se).abs() < 1e-9,
                "{task} {shots}-shot acc_stderr"
            );
        }
    }
    (worst, truncated)
}

#[test]
fn loglikelihoods_and_accuracies_equal_lm_evals() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny_models/llama");
    let base = load_base(&dir, &Device::flex(), None, None).unwrap();
    let max_len = base.model.config().max_position_embeddings;
    assert_eq!(max_len, 256, "lm-eval's max_length for this model");
    let (worst, truncated) = compare_with("reference.json", &base, max_len);
    assert!(truncated > 0, "the fixtures exercise left truncation");
    eprintln!("largest log-likelihood difference from lm-eval: {worst:.2e}");
}

/// The real SmolLM2-135M-Instruct GGUF with its real BPE tokenizer, against lm-eval over
/// transformers' GGUF loader (the same dequantized f32 weights).
#[test]
fn smollm2_loglikelihoods_equal_lm_evals() {
    let Some(path) = common::smollm2_gguf_or_skip() else {
        return;
    };
    let base = load_base(&path, &Device::flex(), None, None).unwrap();
    let (worst, _) = compare_with("reference_smollm2.json", &base, 2048);
    eprintln!("SmolLM2: largest log-likelihood difference from lm-eval: {worst:.2e}");
}

#[test]
fn bad_records_name_their_line_and_field() {
    let dir = std::env::temp_dir().join(format!("medify-mc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            r#"{"question": "q", "options": {"A": "x", "B": "y"}, "answer": "C"}"#,
            "`answer` \"C\"",
        ),
        (
            r#"{"question": "q", "options": {"A": "x", "B": "y"}}"#,
            "missing `answer`",
        ),
        (
            r#"{"options": {"A": "x", "B": "y"}, "answer": "A"}"#,
            "missing `question`",
        ),
        (
            r#"{"question": "q", "options": ["x"], "answer": 0}"#,
            "at least two",
        ),
        (
            r#"{"question": "q", "options": ["x", "y"], "answer": 5}"#,
            "`answer` 5",
        ),
        (
            r#"{"question": "q", "opa": "x", "opb": "y", "cop": 0}"#,
            "missing `opc`",
        ),
        ("not json", "not JSON"),
    ];
    for (i, (line, want)) in cases.iter().enumerate() {
        let path = dir.join(format!("{i}.jsonl"));
        let good = r#"{"question": "q", "options": {"A": "x", "B": "y"}, "answer": "A"}"#;
        std::fs::write(&path, format!("{good}\n\n{line}\n")).unwrap();
        let err = read_mc_questions(&path, None).unwrap_err().to_string();
        assert!(err.contains(&format!("{}:3:", path.display())), "{err}");
        assert!(err.contains(want), "{err} should say {want}");
    }
    let path = dir.join("pubmed.jsonl");
    std::fs::write(&path, r#"{"question": "q", "answer": "yes"}"#).unwrap();
    let err = read_mc_questions(&path, Some(McTask::PubMedQa))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing `context`"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn more_shots_than_examples_is_refused() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny_models/llama");
    let base = load_base(&dir, &Device::flex(), None, None).unwrap();
    let (task, questions) = read_mc_questions(&fixture("medmcqa.jsonl"), None).unwrap();
    let config = McConfig {
        task,
        shots: questions.len(),
        fewshot: None,
        sampler: FewshotSampler::FirstN,
        max_len: 256,
        batch_size: 8,
    };
    let err = score_multiple_choice(
        &base.model,
        &base.tokenizer,
        &questions,
        &config,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("shots") && err.contains("5 available"),
        "{err}"
    );
}
