//! Helpers the cross-crate tests share (each test binary uses some of them).
#![allow(dead_code)]

use std::path::PathBuf;

use medify_models::{Label, TokenBatch};

/// `rows` rows of `len` pseudo-random ids below `vocab`, the first `prompt` labels of each
/// masked like a prompt's.
pub fn prompt_masked_batch(
    vocab: usize,
    rows: usize,
    len: usize,
    prompt: usize,
) -> (TokenBatch, Vec<Vec<Label>>) {
    let ids: Vec<Vec<u32>> = (0..rows)
        .map(|b| {
            (0..len)
                .map(|i| ((i * 131 + b * 977 + 7) % vocab) as u32)
                .collect()
        })
        .collect();
    let labels = ids
        .iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, &t)| (i >= prompt).then_some(t))
                .collect()
        })
        .collect();
    (TokenBatch::new(ids), labels)
}

/// Where `.ci/run` (and later `cargo xtask fetch-model`) puts SmolLM2-135M-Instruct.Q4_1.gguf.
pub fn smollm2_gguf() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MEDIFY_SMOLLM2_GGUF") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("MEDIFY_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("medify-qlora"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/medify-qlora"))
        })?;
    let p = cache.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    p.is_file().then_some(p)
}

/// [`smollm2_gguf`], or `None` after saying the test is skipped; panics instead where
/// `MEDIFY_REQUIRE_SMOLLM2` is set (CI), so a missing model cannot pass as a skip there.
pub fn smollm2_gguf_or_skip() -> Option<PathBuf> {
    let path = smollm2_gguf();
    if path.is_none() {
        assert!(
            std::env::var_os("MEDIFY_REQUIRE_SMOLLM2").is_none(),
            "MEDIFY_REQUIRE_SMOLLM2 is set but SmolLM2-135M-Instruct.Q4_1.gguf was not found"
        );
        eprintln!("skipped: SmolLM2 GGUF not cached (set MEDIFY_SMOLLM2_GGUF)");
    }
    path
}

/// The f32 tensor `key` of a safetensors file (a reference's gradients, say).
pub fn f32_tensor(st: &safetensors::SafeTensors<'_>, key: &str) -> Vec<f32> {
    st.tensor(key)
        .unwrap_or_else(|e| panic!("{key}: {e}"))
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Asserts `got` equals the reference gradient `key` to `1e-4` of its largest value (or of
/// `floor`, when that is larger), naming the tensor and the worst difference.
pub fn assert_gradient(st: &safetensors::SafeTensors<'_>, key: &str, got: &[f32], floor: f32) {
    let want = f32_tensor(st, key);
    assert_eq!(got.len(), want.len(), "{key}: length");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    assert!(
        diff <= 1e-4 * scale.max(floor),
        "{key}: max diff {diff} (largest {scale})"
    );
}
