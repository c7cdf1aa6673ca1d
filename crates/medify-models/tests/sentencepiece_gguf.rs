//! A SentencePiece GGUF (`tokenizer.ggml.model = llama`, Llama 2's vocabulary with scores and no
//! merges, as llama.cpp writes Llama 2 / TinyLlama / Mistral files) encodes every text to the ids
//! transformers' GGUF loader gives: `fixtures/sentencepiece_gguf/`, made by
//! `fixtures/scripts/make_sentencepiece_gguf.py`.

use std::io::Read;
use std::path::Path;

use medify_models::ModelTokenizer;

#[test]
fn sentencepiece_gguf_encodes_like_transformers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/sentencepiece_gguf");
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(dir.join("llama2-vocab.gguf.gz")).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    let path = std::env::temp_dir().join(format!("medify-sp-{}.gguf", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let tok = ModelTokenizer::load(&path).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text, true).unwrap(), want, "{text:?}");
    }
    // Decoding gives the text back (byte fallback, the prefix space removed).
    let text = "emoji 🙂 and a rare 𝔘 character";
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), text);
    assert_eq!(
        (tok.bos_token.as_deref(), tok.eos_token.as_deref()),
        (Some("<s>"), Some("</s>"))
    );
    std::fs::remove_file(&path).unwrap();
}
