//! GGUF export read back by our own loader: the model's loss within each type's tolerance, the
//! tokenizer encoding the same ids, the special tokens and chat template kept; the real
//! SmolLM2 (tied embeddings, its own BPE and template) round-trips through f16.

use crate::common;

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use medify_lora::LoraExt;
use medify_models::{CausalLm, GgufExport, GgufSource, GgufType, LoadOptions, ModelTokenizer};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn out(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("medify-gguf-{name}-{}.gguf", std::process::id()))
}

/// `model` written as `ty` to a fresh file named after `name`, and that file opened.
fn export(
    model: &CausalLm,
    tok: &ModelTokenizer,
    name: &str,
    ty: GgufType,
) -> (PathBuf, GgufSource) {
    let path = out(name);
    let options = GgufExport {
        dtype: ty,
        overwrite: true,
        ..GgufExport::default()
    };
    model.save_gguf(&path, tok, &options).unwrap();
    let source = GgufSource::open(&path).unwrap();
    (path, source)
}

fn loss(model: &CausalLm) -> f64 {
    let (batch, labels) = common::prompt_masked_batch(model.config().vocab_size, 2, 24, 4);
    let out = model.loss(&batch, &labels).unwrap();
    out.sum.into_scalar::<f64>() / out.tokens as f64
}

fn load(path: &Path) -> (CausalLm, ModelTokenizer) {
    let (model, tok, _) =
        medify_models::load_pretrained(path, &Device::flex(), &LoadOptions::dense()).unwrap();
    (model, tok)
}

const TEXTS: [&str; 6] = [
    "What is anemia?",
    "  two  spaces, digits 12345 and 3.14",
    "unicode: café, naïve, 東京, 🙂",
    "<|im_start|>user\nHello<|im_end|>",
    "line one\nline two\ttab",
    "",
];

#[test]
fn every_type_reads_back_with_the_models_loss_and_tokenizer() {
    let dir = fixtures().join("tiny_models/llama");
    let (model, tok) = load(&dir);
    let reference = loss(&model);
    // Relative loss tolerance of each type on the tiny Llama (measured: docs/models.md).
    for (ty, tol) in [
        (GgufType::F32, 1e-6),
        (GgufType::F16, 1e-3),
        (GgufType::Bf16, 2e-3),
        (GgufType::Q8_0, 3e-3),
        (GgufType::Q4_0, 3e-2),
        // Rows of 64 do not split into K blocks of 256: Q5_0 and Q8_0, as llama.cpp falls back.
        (GgufType::Q4KM, 2e-2),
    ] {
        let path = out(&format!("{ty:?}"));
        let options = GgufExport {
            dtype: ty,
            chat_template: Some("{{ messages }}".into()),
            overwrite: true,
            ..GgufExport::default()
        };
        model.save_gguf(&path, &tok, &options).unwrap();
        let (back, back_tok) = load(&path);
        let l = loss(&back);
        let rel = ((l - reference) / reference).abs();
        println!("{ty:?}: loss {l:.6} vs {reference:.6} (relative {rel:.2e})");
        assert!(
            rel <= tol,
            "{ty:?}: loss {l} vs {reference} ({rel:.2e} > {tol})"
        );
        for text in TEXTS {
            assert_eq!(
                back_tok.encode(text, true).unwrap(),
                tok.encode(text, true).unwrap(),
                "{text:?}"
            );
        }
        assert_eq!(back_tok.stop_ids, tok.stop_ids);
        assert_eq!(
            (&back_tok.bos_token, &back_tok.eos_token),
            (&tok.bos_token, &tok.eos_token)
        );
        assert_eq!(back_tok.chat_template.as_deref(), Some("{{ messages }}"));
        let source = GgufSource::open(&path).unwrap();
        let q = &source.tensor_infos()["blk.0.attn_q.weight"];
        let norm = &source.tensor_infos()["blk.0.attn_norm.weight"];
        let expect = match ty {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::Bf16 => 30,
            GgufType::Q8_0 => 8,
            GgufType::Q4_0 => 2,
            GgufType::Q4KM => 6,
        };
        assert_eq!((q.type_id, norm.type_id), (expect, 0), "{ty:?}");
        // llama.cpp's name for a plain byte-level split (it refuses "gpt2").
        let pre = source.metadata()["tokenizer.ggml.pre"].as_str();
        assert_eq!(pre, Some("gpt-2"));
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn merged_adapters_are_what_the_file_holds() {
    let dir = fixtures().join("tiny_models/llama");
    let (mut model, tok) = load(&dir);
    model
        .load_adapter(&fixtures().join("lora/peft_lora"))
        .unwrap();
    let with_adapter = loss(&model);
    let (path, _) = export(&model, &tok, "merged", GgufType::F32);
    let (back, _) = load(&path);
    assert!((loss(&back) - with_adapter).abs() < 1e-5);
    // An existing file is not replaced without `overwrite`.
    let err = model
        .save_gguf(&path, &tok, &GgufExport::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("overwrite"), "{err}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn gemma_travels_as_llama_cpp_gemma() {
    let (model, tok) = load(&fixtures().join("tiny_models/gemma"));
    let reference = loss(&model);
    let (path, source) = export(&model, &tok, "gemma", GgufType::F32);
    assert_eq!(
        source.metadata()["general.architecture"].as_str(),
        Some("gemma")
    );
    // llama.cpp's Gemma norms hold 1 + w.
    let (_, norm) = source.decode("output_norm.weight").unwrap();
    let hf_norm: Vec<f32> = model
        .norm
        .weight
        .clone()
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap();
    assert!((norm[0] - (hf_norm[0] + 1.0)).abs() < 1e-6);
    let (back, _) = load(&path);
    assert_eq!(back.config().family, model.config().family);
    assert!(
        (loss(&back) - reference).abs() < 1e-5,
        "{} vs {reference}",
        loss(&back)
    );
    assert!("q5_k_m".parse::<GgufType>().is_err());
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn smollm2_round_trips_through_f16() {
    let Some(gguf) = common::smollm2_gguf_or_skip() else {
        return;
    };
    let (model, tok) = load(&gguf);
    let reference = loss(&model);
    let (path, source) = export(&model, &tok, "smollm2", GgufType::F16);
    assert!(!source.tensor_infos().contains_key("output.weight")); // tied, as the original
    let pre = source.metadata()["tokenizer.ggml.pre"].as_str();
    assert_eq!(pre, Some("smollm")); // the name it was read with
    let (back, back_tok) = load(&path);
    let rel = ((loss(&back) - reference) / reference).abs();
    assert!(rel < 1e-3, "relative loss difference {rel:.2e}");
    for text in TEXTS {
        assert_eq!(
            back_tok.encode(text, true).unwrap(),
            tok.encode(text, true).unwrap(),
            "{text:?}"
        );
    }
    assert_eq!(back_tok.chat_template, tok.chat_template);
    assert_eq!(back_tok.stop_ids, tok.stop_ids);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn q4_k_m_writes_k_blocks_where_rows_split_into_256() {
    let dir = fixtures().join("tiny_models/llama");
    let mut config = medify_models::LlamaConfig::from_file(dir.join("config.json")).unwrap();
    (config.hidden_size, config.intermediate_size) = (256, 512);
    (config.head_dim, config.num_hidden_layers) = (64, 8);
    let source = medify_models::RandomWeights::new(config.clone(), 11);
    let (model, _) =
        CausalLm::load(&source, &config, &Device::flex(), &LoadOptions::dense()).unwrap();
    let tok = ModelTokenizer::load(&dir).unwrap();
    let reference = loss(&model);
    let (path, source) = export(&model, &tok, "q4km", GgufType::Q4KM);
    let ty = |name: &str| source.tensor_infos()[name].type_id;
    // Q4_K = 12, Q6_K = 14: llama.cpp's use_more_bits gives layers 0, 3, 6 and 7 of 8 Q6_K.
    assert_eq!(ty("blk.0.attn_q.weight"), 12);
    assert_eq!(ty("token_embd.weight"), 12);
    assert_eq!(ty("output.weight"), 14);
    let v: Vec<u32> = (0..8)
        .map(|i| ty(&format!("blk.{i}.attn_v.weight")))
        .collect();
    assert_eq!(v, [14, 12, 12, 14, 12, 12, 14, 14]);
    assert_eq!(ty("blk.3.ffn_down.weight"), 14);
    assert_eq!(ty("blk.0.attn_norm.weight"), 0);
    let (back, _) = load(&path);
    let rel = ((loss(&back) - reference) / reference).abs();
    println!("Q4_K_M (random 256-wide model): relative loss change {rel:.2e}");
    assert!(rel < 1e-2, "relative loss difference {rel:.2e}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn llama_3_1_rope_scaling_travels_as_rope_freqs() {
    let dir = fixtures().join("tiny_models/llama3");
    let (model, tok) = load(&dir);
    let reference = loss(&model);
    let (path, source) = export(&model, &tok, "llama3", GgufType::F32);
    let factors = source.config().rope_freq_factors.clone().unwrap();
    assert_eq!(factors.len(), model.config().head_dim / 2);
    assert_eq!(factors[0], 1.0); // the highest frequency is not scaled
    assert_eq!(*factors.last().unwrap(), 8.0); // the lowest by `factor`
    let (back, _) = load(&path);
    assert!(
        (loss(&back) - reference).abs() < 1e-5,
        "{} vs {reference}",
        loss(&back)
    );
    // Without the divisors the loss differs: the comparison above sees the scaling.
    let mut plain = back.config().clone();
    plain.rope_freq_factors = None;
    let (unscaled, _) =
        CausalLm::load(&source, &plain, &Device::flex(), &LoadOptions::dense()).unwrap();
    assert!((loss(&unscaled) - reference).abs() > 1e-5);
    // config.json cannot hold them: a Hugging Face save is refused with the reason.
    let err = back
        .save_pretrained(
            std::env::temp_dir().join("medify-never"),
            medify_models::SaveDtype::F32,
            true,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("rope_freqs"), "{err}");
    std::fs::remove_file(&path).unwrap();
}
