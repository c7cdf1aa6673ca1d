//! Helpers the cross-crate tests share.

use medify_qlora::models::{IGNORE_INDEX, TokenBatch};

/// `rows` rows of `len` pseudo-random ids below `vocab`, the first `prompt` labels of each
/// masked like a prompt's.
pub fn prompt_masked_batch(
    vocab: usize,
    rows: usize,
    len: usize,
    prompt: usize,
) -> (TokenBatch, Vec<Vec<i64>>) {
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
                .map(|(i, &t)| if i < prompt { IGNORE_INDEX } else { t as i64 })
                .collect()
        })
        .collect();
    (TokenBatch::new(ids), labels)
}
