//! `cargo xtask triage`: the report on a labelled set (text and JSON), `--check`, one message,
//! and errors that name the file and line.

use std::process::{Command, Output};

/// A file of this test process under the temporary directory.
fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("medify-triage-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

fn triage(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("triage")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_held_out_report_meets_the_targets_in_text_and_json() {
    let out = triage(&["--check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("emergency recall") && text.contains("targets: all met"),
        "{text}"
    );
    assert!(
        text.contains("self_harm") && text.contains("level confusion"),
        "{text}"
    );

    let out = triage(&["--json"]);
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let held =
        std::fs::read_to_string(root.join("crates/medify-safety/data/heldout.jsonl")).unwrap();
    assert_eq!(report["messages"], held.lines().count());
    assert!(
        report["emergency_recall"].as_f64().unwrap() >= 0.98,
        "{report}"
    );
    assert!(
        report["false_alarm_rate"].as_f64().unwrap() <= 0.03,
        "{report}"
    );
    assert_eq!(
        report["per_flag"].as_array().unwrap().len(),
        medify_qlora::safety::RedFlag::ALL.len()
    );
    assert_eq!(
        report["level_confusion"]["none"]["none"].as_u64().unwrap()
            + report["level_confusion"]["none"]
                .get("urgent")
                .and_then(|v| v.as_u64())
                .unwrap_or(0)
            + report["level_confusion"]["none"]
                .get("emergency")
                .and_then(|v| v.as_u64())
                .unwrap_or(0),
        report["near_misses"].as_u64().unwrap()
    );
}

#[test]
fn misses_are_listed_and_check_fails_on_them() {
    let file = temp_file(
        "set.jsonl",
        "{\"text\": \"my knee is a bit sore\", \"label\": \"stroke\"}\n\
         {\"text\": \"I want to kill myself\", \"label\": \"self_harm\"}\n",
    );
    let out = triage(&["--data", file.to_str().unwrap(), "--check"]);
    assert!(!out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("line    1") && text.contains("my knee is a bit sore"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("emergency recall 50.0 %"));
    std::fs::remove_file(file).unwrap();
}

#[test]
fn one_message_and_bad_files() {
    let out = triage(&["--message", "my 3 week old has a temp of 38.5", "--json"]);
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(t["level"], "emergency");
    assert_eq!(t["flags"], serde_json::json!(["infant_fever"]));
    let out = triage(&["--message", "what is a stroke?", "--json"]);
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "null");

    let file = temp_file(
        "bad.jsonl",
        "{\"text\": \"a\", \"label\": \"none\"}\n{\"text\": \"b\", \"label\": \"flu\"}\n",
    );
    let out = triage(&["--data", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("bad.jsonl:2: field `label`") && err.contains("chest_pain"),
        "{err}"
    );
    std::fs::remove_file(file).unwrap();
    let out = triage(&["--classifier", "1.5"]);
    assert!(!out.status.success());
}
