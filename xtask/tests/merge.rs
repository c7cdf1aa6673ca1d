//! `cargo xtask finetune` then `cargo xtask merge --gguf --ollama`: the run's adapter, merged
//! over the 4-bit base it trained on, written as GGUF with the chat template it trained with and
//! an Ollama Modelfile, and that file evaluated by `eval` with the loss of the adapter.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn xtask(args: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(root)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "xtask {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn eval_loss(args: &[&str]) -> f64 {
    let mut all = vec![
        "eval",
        "--device",
        "flex",
        "--data",
        "fixtures/medical_qa/medical_qa.jsonl",
        "--json",
    ];
    all.extend(args);
    let out = xtask(&all);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["loss"].as_f64().unwrap()
}

#[test]
fn a_fine_tuned_run_merges_into_a_gguf_that_evaluates_like_the_adapter() {
    let tmp = std::env::temp_dir().join(format!("medify-xtask-merge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let run: PathBuf = tmp.join("run");
    let gguf = tmp.join("merged.gguf");
    let (run_s, gguf_s) = (run.to_str().unwrap(), gguf.to_str().unwrap());
    xtask(&[
        "finetune",
        "--model",
        "fixtures/tiny_models/llama",
        "--data",
        "fixtures/medical_qa/medical_qa.jsonl",
        "--template",
        "chatml",
        "--lora-r",
        "4",
        "--batch-size",
        "4",
        "--grad-accum",
        "1",
        "--max-len",
        "64",
        "--max-steps",
        "2",
        "--device",
        "flex",
        "--quiet",
        "--out",
        run_s,
    ]);
    xtask(&[
        "merge",
        "--adapter",
        run_s,
        "--gguf",
        gguf_s,
        "--type",
        "f32",
        "--device",
        "flex",
        "--ollama",
    ]);
    // The Ollama Modelfile beside it: the file, the ChatML turns as Ollama's template, the
    // end-of-turn stop and the disclaimer in the system prompt.
    let modelfile = std::fs::read_to_string(tmp.join("Modelfile")).unwrap();
    assert!(modelfile.starts_with("FROM ./merged.gguf\n"), "{modelfile}");
    assert!(
        modelfile.contains("{{ if eq .Role \"user\" }}<|im_start|>user\n"),
        "{modelfile}"
    );
    assert!(
        modelfile.contains("PARAMETER stop \"<|im_end|>\""),
        "{modelfile}"
    );
    assert!(modelfile.contains(medify_qlora::DISCLAIMER), "{modelfile}");
    let with_adapter = eval_loss(&["--adapter", run_s, "--template", "chatml"]);
    let merged = eval_loss(&["--model", gguf_s]);
    assert!(
        (merged - with_adapter).abs() < 1e-4,
        "merged GGUF {merged} vs adapter {with_adapter}"
    );
    // The file carries the template the run trained with, and is not replaced silently.
    let bytes = std::fs::read(&gguf).unwrap();
    let chatml = "<|im_start|>";
    assert!(bytes.windows(chatml.len()).any(|w| w == chatml.as_bytes()));
    let again = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap())
        .args([
            "merge",
            "--adapter",
            run_s,
            "--gguf",
            gguf_s,
            "--device",
            "flex",
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));
    let _ = std::fs::remove_dir_all(&tmp);
}
