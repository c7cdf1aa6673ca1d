//! Our BLEU and ROUGE against the libraries papers use, on fixtures/text_metrics/pairs.json
//! (long answers, numbers and decimals, hyphens, apostrophes, casing, HTML entities, a broken
//! line, an empty and a punctuation-only prediction, accents): sacrebleu's default corpus BLEU
//! (counts, totals, lengths and score) and rouge_score's ROUGE-1/2/L precision, recall and
//! F-measure per pair. References: fixtures/scripts/make_text_metric_references.py.

use std::path::Path;

use medify_qlora::{Prf, corpus_bleu, rouge, score_answers};
use serde_json::Value;

fn load(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/text_metrics")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1.0)
}

#[test]
fn bleu_equals_sacrebleu_and_rouge_equals_rouge_score() {
    let pairs = load("pairs.json");
    let want = load("reference_scores.json");
    let preds: Vec<String> = pairs["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["prediction"].as_str().unwrap().to_string())
        .collect();
    let refs: Vec<String> = pairs["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["reference"].as_str().unwrap().to_string())
        .collect();

    for w in want["bleu"].as_array().unwrap() {
        let idx: Vec<usize> = w["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as usize)
            .collect();
        let p: Vec<String> = idx.iter().map(|&i| preds[i].clone()).collect();
        let r: Vec<String> = idx.iter().map(|&i| refs[i].clone()).collect();
        let got = corpus_bleu(&p, &r);
        let counts: Vec<u64> = got.counts.iter().map(|&c| c as u64).collect();
        let totals: Vec<u64> = got.totals.iter().map(|&c| c as u64).collect();
        assert_eq!(serde_json::json!(counts), w["counts"], "counts of {idx:?}");
        assert_eq!(serde_json::json!(totals), w["totals"], "totals of {idx:?}");
        assert_eq!(
            got.sys_len as u64,
            w["sys_len"].as_u64().unwrap(),
            "{idx:?}"
        );
        assert_eq!(
            got.ref_len as u64,
            w["ref_len"].as_u64().unwrap(),
            "{idx:?}"
        );
        let score = w["score"].as_f64().unwrap() / 100.0;
        assert!(
            close(got.score, score),
            "BLEU of {idx:?}: {} vs sacrebleu {score}",
            got.score
        );
    }

    let mut means = [0.0; 3];
    for (i, w) in want["rouge"].as_array().unwrap().iter().enumerate() {
        let got = rouge(&preds[i], &refs[i]);
        for (k, (name, prf)) in [
            ("rouge1", got.rouge1),
            ("rouge2", got.rouge2),
            ("rougeL", got.rouge_l),
        ]
        .into_iter()
        .enumerate()
        {
            let Prf {
                precision,
                recall,
                fmeasure,
            } = prf;
            for (field, ours) in [
                ("precision", precision),
                ("recall", recall),
                ("fmeasure", fmeasure),
            ] {
                let theirs = w[name][field].as_f64().unwrap();
                assert!(
                    close(ours, theirs),
                    "pair {i} {name} {field}: {ours} vs rouge_score {theirs}"
                );
            }
            means[k] += w[name]["fmeasure"].as_f64().unwrap() / preds.len() as f64;
        }
    }
    let all = score_answers(&preds, &refs);
    assert!(close(
        all.bleu,
        want["bleu"][0]["score"].as_f64().unwrap() / 100.0
    ));
    assert!(
        close(all.rouge1, means[0]) && close(all.rouge2, means[1]) && close(all.rouge_l, means[2])
    );
}
