//! A model whose matrices are K-quant blocks of every type (Q2_K … Q6_K, one per matrix) gives
//! the loss and logits transformers' own GGUF loader computes for it:
//! `fixtures/kquant_model/`, made by `fixtures/scripts/make_kquant_model_reference.py`.

use std::io::Read;
use std::path::Path;

use burn::tensor::Device;
use medify_models::{LoadOptions, TokenBatch, load_pretrained};

#[test]
fn k_quant_gguf_gives_transformers_loss_and_logits() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/kquant_model");
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(dir.join("model.gguf.gz")).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    let path = std::env::temp_dir().join(format!("medify-kquant-{}.gguf", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let (model, _, _) = load_pretrained(&path, &Device::flex(), &LoadOptions::dense()).unwrap();
    let ids: Vec<u32> = reference["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let n = ids.len();
    let batch = TokenBatch::new(vec![ids.clone()]);
    let labels = vec![ids.iter().map(|&t| Some(t)).collect::<Vec<_>>()];
    let out = model.loss(&batch, &labels).unwrap();
    let loss = out.sum.into_scalar::<f64>() / out.tokens as f64;
    let want = reference["loss"].as_f64().unwrap();
    assert!(
        ((loss - want) / want).abs() < 1e-4,
        "loss {loss} vs transformers {want}"
    );
    let logits: Vec<f32> = model
        .forward(&batch, None)
        .unwrap()
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap();
    let vocab = logits.len() / n;
    for (row, key) in [(0, "logits_first_row"), (n - 1, "logits_last_row")] {
        let want: Vec<f64> = reference[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let got = &logits[row * vocab..(row + 1) * vocab];
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0f64, f64::max);
        assert!(worst < 1e-3, "{key}: largest difference {worst}");
    }
    std::fs::remove_file(&path).unwrap();
}
