//! `cargo xtask serve` as a user runs it: it prints where it listens, answers, and on SIGTERM
//! stops and exits 0; a model path that does not exist is an error naming it, not a panic.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/tiny_models/llama");

#[test]
fn serve_answers_then_exits_0_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["serve", "--model", TINY, "--device", "flex", "--port", "0"])
        .args(["--system", "Be brief.", "--max-tokens", "8"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("serving") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "serve exited early"
        );
    }
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://") && w.ends_with('/'))
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "binds to this machine: {line}"
    );
    let mut resp = ureq::post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        // The tiny random model samples at temperature 1 and may end its answer early;
        // ignore_eos makes the answer's length exactly the default --max-tokens.
        .send(
            r#"{"messages": [{"role": "user", "content": "What is anemia?"}], "ignore_eos": true}"#,
        )
        .unwrap();
    let body: serde_json::Value =
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(
        body["usage"]["completion_tokens"], 8,
        "--max-tokens is the default: {body}"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status}: {rest}");
    assert!(rest.contains("stopped"), "{rest}");
}

#[test]
fn a_missing_model_is_an_error_naming_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "serve",
            "--model",
            "/nonexistent/model.gguf",
            "--device",
            "flex",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
