//! `cargo xtask eval --multiple-choice`: the report the CLI prints, in text and JSON, and its
//! errors.

use std::path::Path;
use std::process::{Command, Output};

/// `xtask eval --model <tiny llama> --device flex ARGS…`, run from the repository root.
fn eval(args: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(root)
        .args([
            "eval",
            "--model",
            "fixtures/tiny_models/llama",
            "--device",
            "flex",
        ])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn multiple_choice_prints_accuracy_and_per_question_loglikelihoods() {
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--multiple-choice",
            "fixtures/multiple_choice/medmcqa.jsonl",
        ];
        args.extend(extra);
        let out = eval(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run(&["--shots", "1", "--limit", "4"]);
    assert!(text.starts_with("medmcqa 1-shot: acc "), "{text}");
    assert!(text.contains("over 4 questions"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&run(&["--json"])).unwrap();
    assert_eq!(json["task"], "medmcqa");
    assert_eq!(json["questions"], 6);
    let scores = json["scores"].as_array().unwrap();
    assert_eq!(scores.len(), 6);
    assert_eq!(scores[0]["loglikelihoods"].as_array().unwrap().len(), 4);
    assert_eq!(
        scores[0]["choices"],
        serde_json::json!(["A", "B", "C", "D"])
    );
    let hits = scores
        .iter()
        .filter(|s| s["predicted"] == s["answer"])
        .count();
    assert_eq!(json["acc"].as_f64().unwrap(), hits as f64 / 6.0);
}

/// A failing run's stderr.
fn refused(args: &[&str]) -> String {
    let out = eval(args);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn multiple_choice_errors_name_the_file_and_line() {
    let dir = std::env::temp_dir().join(format!("medify-xtask-mc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"question\": \"q\", \"options\": [\"x\", \"y\"], \"answer\": \"z\"}\n",
    )
    .unwrap();
    let err = refused(&["--multiple-choice", bad.to_str().unwrap()]);
    assert!(
        err.contains(&format!("{}:1:", bad.display())) && err.contains("`answer`"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn multiple_choice_flags_are_refused_with_data() {
    let err = refused(&["--data", "fixtures/tiny_models/eval.jsonl", "--shots", "2"]);
    assert!(err.contains("--shots goes with --multiple-choice"), "{err}");
}
