//! Helpers the cross-crate tests share.

use medify_qlora::models::{Label, TokenBatch};

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
