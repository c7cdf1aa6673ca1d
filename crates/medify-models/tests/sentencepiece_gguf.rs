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

/// Llama 2's tokenizer (tokenizer.json + tokenizer_config.json) in a fresh directory.
fn llama2_tokenizer_dir() -> std::path::PathBuf {
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/chat_templates/llama2-chat");
    let dir = std::env::temp_dir().join(format!("medify-sp-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut json = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(src.join("tokenizer.json.gz")).unwrap())
        .read_to_string(&mut json)
        .unwrap();
    std::fs::write(dir.join("tokenizer.json"), json).unwrap();
    std::fs::copy(
        src.join("tokenizer_config.json"),
        dir.join("tokenizer_config.json"),
    )
    .unwrap();
    dir
}

#[test]
fn a_sentencepiece_model_exports_its_vocabulary_scores_and_merges() {
    use burn::tensor::Device;
    use medify_models::{CausalLm, GgufExport, GgufSource, GgufType, LoadOptions, RandomWeights};
    let dir = llama2_tokenizer_dir();
    let tok = ModelTokenizer::load(&dir).unwrap();
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny_models/llama");
    let mut config = medify_models::LlamaConfig::from_file(tiny.join("config.json")).unwrap();
    config.vocab_size = tok.vocab_size();
    let (model, _) = CausalLm::load(
        &RandomWeights::new(config.clone(), 3),
        &config,
        &Device::flex(),
        &LoadOptions::dense(),
    )
    .unwrap();
    let path = dir.join("llama2-vocab.gguf");
    let options = GgufExport {
        dtype: GgufType::F16,
        overwrite: true,
        ..GgufExport::default()
    };
    model.save_gguf(&path, &tok, &options).unwrap();
    let source = GgufSource::open(&path).unwrap();
    let meta = source.metadata();
    assert_eq!(meta["tokenizer.ggml.model"].as_str(), Some("llama"));
    let back = ModelTokenizer::load(&path).unwrap();
    // Texts without special tokens inside: the GGUF tokenizer prepends `▁` to the first word only,
    // as transformers' GGUF loader does, where Llama 2's legacy tokenizer.json prepends it to
    // every piece between special tokens.
    for text in [
        "What is anemia?",
        " leading space, and  two  spaces",
        "digits 1234567 and 3.14159",
        "unicode: café, naïve, 東京, Ελληνικά",
        "emoji 🙂 and a rare 𝔘 character",
        "line one\nline two\ttab",
    ] {
        assert_eq!(
            back.encode(text, true).unwrap(),
            tok.encode(text, true).unwrap(),
            "{text:?}"
        );
    }
    assert_eq!(back.stop_ids, tok.stop_ids);
    let _ = std::fs::remove_dir_all(&dir);
}
