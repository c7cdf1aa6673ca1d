//! A tokenizer that came from GGUF metadata, saved as Hugging Face files (what `export --hub`
//! and `merge` write for a GGUF base), loads in transformers' `AutoTokenizer` and encodes as
//! transformers' own GGUF reader does.
//!
//! fixtures/tokenizer_export/reference.json holds, for the files this test writes, their
//! SHA-256 and the ids `AutoTokenizer.from_pretrained(<written dir>)` and
//! `AutoTokenizer.from_pretrained(<dir>, gguf_file=…)` give for a set of texts
//! (fixtures/scripts/make_tokenizer_export_references.py, which reads the directories this
//! test leaves under target/tmp/tokenizer-export/). Equal hashes mean transformers checked
//! exactly what we write today; a change to the writer fails here until the script is rerun.

use crate::common;

use std::path::{Path, PathBuf};

use medify_models::ModelTokenizer;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn check(name: &str, gguf: &Path) {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../fixtures/tokenizer_export/reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let want = &reference["exports"][name];
    let tok = ModelTokenizer::load(gguf).unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("tokenizer-export")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    tok.save_pretrained(&dir).unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let hash: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hash, want["sha256"][file],
            "{name}/{file} is not what transformers checked: rerun \
             fixtures/scripts/make_tokenizer_export_references.py"
        );
    }
    let back = ModelTokenizer::from_dir(&dir).unwrap();
    let texts = reference["texts"].as_array().unwrap();
    for (i, text) in texts.iter().enumerate() {
        let text = text.as_str().unwrap();
        let ids = |v: &Value| -> Vec<u32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        };
        let from_export = ids(&want["auto_tokenizer_ids"][i]);
        assert_eq!(
            from_export,
            ids(&want["gguf_ids"][i]),
            "{name}: transformers' two readers"
        );
        assert_eq!(
            tok.encode(text, true).unwrap(),
            from_export,
            "{name}: GGUF tokenizer on {text:?}"
        );
        assert_eq!(
            back.encode(text, true).unwrap(),
            from_export,
            "{name}: saved tokenizer on {text:?}"
        );
    }
    for (field, ours) in [
        ("bos_token", &back.bos_token),
        ("eos_token", &back.eos_token),
        ("pad_token", &back.pad_token),
    ] {
        assert_eq!(
            want["special"][field].as_str(),
            ours.as_deref(),
            "{name}: {field}"
        );
    }
    assert_eq!(
        want["chat_template"].as_str(),
        back.chat_template.as_deref(),
        "{name}: template"
    );
}

#[test]
fn tiny_gguf_tokenizer_export_loads_in_transformers() {
    check(
        "tiny_llama",
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny_models/llama.gguf"),
    );
}

#[test]
fn smollm2_gguf_tokenizer_export_loads_in_transformers() {
    if let Some(path) = common::smollm2_gguf_or_skip() {
        check("smollm2", &path);
    }
}
