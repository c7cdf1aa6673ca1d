//! BLEU and ROUGE for generated answers against reference answers, computed as the libraries
//! papers report them compute them (`tests/text_metrics.rs` checks both against their outputs).
//!
//! BLEU is sacrebleu's corpus BLEU with its defaults: mteval-v13a tokens, case kept, BLEU-4
//! with uniform weights, the brevity penalty and "exp" smoothing (an n-gram order without a
//! match counts as 1/2, 1/4, … of a match), reported in [0, 1] (sacrebleu's score / 100).
//! ROUGE-1/2/L are `rouge_score`'s without stemming (lower case, runs of ASCII letters and
//! digits); [`score_answers`] averages their F-measures over the pairs.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;
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

/// Python's `str.split()` whitespace (Unicode White_Space plus the four ASCII separators).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// sacrebleu's `13a` tokens (mteval-v13a): punctuation split from words, except apostrophes and
/// hyphens inside words and periods and commas next to digits (`38.5`, `1,000` stay whole).
fn bleu_tokens(text: &str) -> Vec<String> {
    static RULES: OnceLock<[(Regex, &str); 4]> = OnceLock::new();
    let rules = RULES.get_or_init(|| {
        let re = |p: &str| Regex::new(p).expect("valid 13a pattern");
        [
            (re(r"([\{-~\[-`\x20-&\(-\+:-@/])"), " ${1} "),
            (re(r"([^0-9])([\.,])"), "${1} ${2} "),
            (re(r"([\.,])([^0-9])"), " ${1} ${2}"),
            (re(r"([0-9])(-)"), "${1} ${2} "),
        ]
    });
    let mut line = text
        .trim_end_matches(py_space)
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut line = format!(" {line} ");
    for (re, with) in rules {
        line = re.replace_all(&line, *with).into_owned();
    }
    line.split(py_space)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
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

/// Corpus BLEU and the statistics it comes from (sacrebleu's `BLEUScore`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BleuScore {
    /// BLEU in [0, 1].
    pub score: f64,
    /// Matching 1- to 4-grams (clipped by the reference counts).
    pub counts: [usize; 4],
    /// Candidate 1- to 4-grams.
    pub totals: [usize; 4],
    /// Candidate tokens.
    pub sys_len: usize,
    /// Reference tokens.
    pub ref_len: usize,
}

/// sacrebleu's default corpus BLEU of `candidates` against one reference each.
pub fn corpus_bleu(candidates: &[String], references: &[String]) -> BleuScore {
    let mut s = BleuScore::default();
    for (c, r) in candidates.iter().zip(references) {
        let (c, r) = (bleu_tokens(c), bleu_tokens(r));
        s.sys_len += c.len();
        s.ref_len += r.len();
        for n in 1..=4 {
            s.counts[n - 1] += overlap(&ngrams(&c, n), &ngrams(&r, n));
            s.totals[n - 1] += c.len().saturating_sub(n - 1);
        }
    }
    if s.counts.iter().all(|&c| c == 0) {
        return s;
    }
    let bp = match (s.sys_len, s.ref_len) {
        (0, _) => 0.0,
        (c, r) if c < r => (1.0 - r as f64 / c as f64).exp(),
        _ => 1.0,
    };
    // An order with no candidate n-grams at all makes BLEU 0; one without matches is smoothed.
    let mut log_sum = 0.0;
    let mut smooth = 1.0;
    for n in 0..4 {
        if s.totals[n] == 0 {
            return s;
        }
        let p = if s.counts[n] == 0 {
            smooth *= 2.0;
            1.0 / (smooth * s.totals[n] as f64)
        } else {
            s.counts[n] as f64 / s.totals[n] as f64
        };
        log_sum += p.ln();
    }
    s.score = bp * (log_sum / 4.0).exp();
    s
}

/// Corpus BLEU-4 of `candidates` against one reference each, in [0, 1].
pub fn bleu(candidates: &[String], references: &[String]) -> f64 {
    corpus_bleu(candidates, references).score
}

/// Precision, recall and F-measure of one ROUGE variant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
}

impl Prf {
    fn of(matches: usize, cand: usize, reference: usize) -> Prf {
        let precision = matches as f64 / cand.max(1) as f64;
        let recall = matches as f64 / reference.max(1) as f64;
        let fmeasure = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Prf {
            precision,
            recall,
            fmeasure,
        }
    }
}

/// ROUGE-1, ROUGE-2 and ROUGE-L of one answer, as `rouge_score`'s `RougeScorer.score` gives them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RougeScores {
    pub rouge1: Prf,
    pub rouge2: Prf,
    pub rouge_l: Prf,
}

/// ROUGE of `candidate` against `reference`.
///
/// ```
/// let r = medify_qlora::rouge("the cat sat", "The cat is here");
/// assert_eq!(r.rouge1.precision, 2.0 / 3.0);
/// assert_eq!(r.rouge1.recall, 0.5);
/// ```
pub fn rouge(candidate: &str, reference: &str) -> RougeScores {
    let (c, r) = (rouge_tokens(candidate), rouge_tokens(reference));
    let (c2, r2) = (c.len().saturating_sub(1), r.len().saturating_sub(1));
    RougeScores {
        rouge1: Prf::of(overlap(&ngrams(&c, 1), &ngrams(&r, 1)), c.len(), r.len()),
        rouge2: Prf::of(overlap(&ngrams(&c, 2), &ngrams(&r, 2)), c2, r2),
        rouge_l: if c.is_empty() || r.is_empty() {
            Prf::default()
        } else {
            Prf::of(lcs(&c, &r), c.len(), r.len())
        },
    }
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
        let r = rouge(c, r);
        s.rouge1 += r.rouge1.fmeasure;
        s.rouge2 += r.rouge2.fmeasure;
        s.rouge_l += r.rouge_l.fmeasure;
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
