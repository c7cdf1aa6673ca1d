//! BLEU and ROUGE for generated answers against reference answers.
//!
//! BLEU is corpus BLEU-4 (uniform weights, brevity penalty, no smoothing) over 13a-style tokens,
//! as Hugging Face `evaluate`'s `bleu` computes it. ROUGE-1/2/L are F1 scores per record over
//! lower-cased alphanumeric tokens (as `rouge_score` tokenizes without stemming), averaged over
//! records. All scores are in [0, 1].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Scores of a set of generated answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TextScores {
    /// Corpus BLEU-4.
    pub bleu: f64,
    /// Mean ROUGE-1 F1.
    pub rouge1: f64,
    /// Mean ROUGE-2 F1.
    pub rouge2: f64,
    /// Mean ROUGE-L F1 (longest common subsequence).
    pub rouge_l: f64,
    /// Pairs scored.
    pub records: usize,
}

/// 13a-style tokens: punctuation split from words, case kept.
fn bleu_tokens(text: &str) -> Vec<String> {
    let mut spaced = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_ascii_punctuation() {
            spaced.push(' ');
            spaced.push(c);
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    spaced.split_whitespace().map(str::to_string).collect()
}

/// rouge_score tokens: lower case, runs of ASCII letters and digits.
fn rouge_tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    if tokens.len() >= n {
        for w in tokens.windows(n) {
            *counts.entry(w).or_insert(0) += 1;
        }
    }
    counts
}

fn overlap(cand: &HashMap<&[String], usize>, refs: &HashMap<&[String], usize>) -> usize {
    cand.iter()
        .map(|(g, &c)| c.min(refs.get(g).copied().unwrap_or(0)))
        .sum()
}

fn f1(matches: usize, cand: usize, reference: usize) -> f64 {
    if matches == 0 || cand == 0 || reference == 0 {
        return 0.0;
    }
    let p = matches as f64 / cand as f64;
    let r = matches as f64 / reference as f64;
    2.0 * p * r / (p + r)
}

fn lcs(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    for x in a {
        let mut cur = vec![0usize; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Corpus BLEU-4 of `candidates` against one reference each.
pub fn bleu(candidates: &[String], references: &[String]) -> f64 {
    let mut matches = [0usize; 4];
    let mut totals = [0usize; 4];
    let (mut cand_len, mut ref_len) = (0, 0);
    for (c, r) in candidates.iter().zip(references) {
        let (c, r) = (bleu_tokens(c), bleu_tokens(r));
        cand_len += c.len();
        ref_len += r.len();
        for n in 1..=4 {
            let cg = ngrams(&c, n);
            matches[n - 1] += overlap(&cg, &ngrams(&r, n));
            totals[n - 1] += c.len().saturating_sub(n - 1);
        }
    }
    if matches.contains(&0) || cand_len == 0 {
        return 0.0;
    }
    let log_p: f64 = (0..4)
        .map(|i| (matches[i] as f64 / totals[i] as f64).ln())
        .sum::<f64>()
        / 4.0;
    let bp = if cand_len >= ref_len {
        1.0
    } else {
        (1.0 - ref_len as f64 / cand_len as f64).exp()
    };
    bp * log_p.exp()
}

/// BLEU and mean ROUGE-1/2/L F1 of `candidates` against `references` (pairwise).
///
/// ```
/// use medify_qlora::score_answers;
/// let s = score_answers(&["Drink plenty of fluids.".into()], &["Drink plenty of fluids.".into()]);
/// assert_eq!((s.bleu, s.rouge1, s.rouge2, s.rouge_l), (1.0, 1.0, 1.0, 1.0));
/// ```
pub fn score_answers(candidates: &[String], references: &[String]) -> TextScores {
    let n = candidates.len().min(references.len());
    let mut s = TextScores {
        bleu: bleu(&candidates[..n], &references[..n]),
        records: n,
        ..TextScores::default()
    };
    for (c, r) in candidates.iter().zip(references).take(n) {
        let (c, r) = (rouge_tokens(c), rouge_tokens(r));
        s.rouge1 += f1(overlap(&ngrams(&c, 1), &ngrams(&r, 1)), c.len(), r.len());
        let (c2, r2) = (c.len().saturating_sub(1), r.len().saturating_sub(1));
        s.rouge2 += f1(overlap(&ngrams(&c, 2), &ngrams(&r, 2)), c2, r2);
        s.rouge_l += f1(lcs(&c, &r), c.len(), r.len());
    }
    if n > 0 {
        s.rouge1 /= n as f64;
        s.rouge2 /= n as f64;
        s.rouge_l /= n as f64;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn rouge_by_hand() {
        // cand: the cat sat on the mat (6), ref: the cat is on the mat (6)
        let s = score_answers(
            &v(&["The cat sat on the mat."]),
            &v(&["the cat is on the mat"]),
        );
        // unigrams: the x2, cat, on, mat match = 5 of 6 → F1 5/6
        assert!((s.rouge1 - 5.0 / 6.0).abs() < 1e-12);
        // bigrams: the cat, on the, the mat = 3 of 5 → F1 0.6
        assert!((s.rouge2 - 0.6).abs() < 1e-12);
        // LCS: the cat on the mat = 5 → 5/6
        assert!((s.rouge_l - 5.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn bleu_by_hand() {
        // 13a tokens: cand "a b c d e ." (6), ref "a b c d f ." (6)
        let b = bleu(&v(&["a b c d e."]), &v(&["a b c d f."]));
        // p1 5/6, p2 3/5, p3 2/4, p4 1/3, no brevity penalty
        let want =
            ((5.0f64 / 6.0).ln() + (0.6f64).ln() + (0.5f64).ln() + (1.0f64 / 3.0).ln()) / 4.0;
        assert!((b - want.exp()).abs() < 1e-12, "{b}");
        // A short candidate is penalised.
        let short = bleu(&v(&["a b c d"]), &v(&["a b c d e f g h"]));
        assert!((short - (1.0f64 - 2.0).exp()).abs() < 1e-12, "{short}");
        assert_eq!(bleu(&v(&["x y"]), &v(&["a b c d"])), 0.0);
    }
}
