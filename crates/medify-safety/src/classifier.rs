//! A small text classifier for red flags: word unigrams and bigrams plus character 3–5-grams
//! (which carry misspellings and slang the rules never saw) feeding a multinomial logistic
//! regression. It is trained in Rust, in well under a second, from the project's labelled
//! messages (`crates/medify-safety/data/train.jsonl`, embedded), deterministically: the same data gives the same
//! weights on every machine. No download, no large model.

use std::collections::HashMap;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::flags::RedFlag;

/// Settings of [`TriageClassifier::train`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierConfig {
    /// Passes over the training messages.
    pub epochs: usize,
    /// Step size of the (AdaGrad) gradient steps.
    pub learning_rate: f32,
    /// L2 penalty on the weights.
    pub l2: f32,
    /// Seed of the shuffling between epochs.
    pub seed: u64,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self {
            epochs: 40,
            learning_rate: 0.5,
            l2: 1e-5,
            seed: 0x7121_a6e0,
        }
    }
}

/// A trained classifier: which flag, if any, a (normalised) message is about.
#[derive(Debug, Clone)]
pub struct TriageClassifier {
    vocab: HashMap<String, u32>,
    /// `vocab.len() × CLASSES`, row-major.
    weights: Vec<f32>,
    bias: Vec<f32>,
}

/// Class 0 is "no red flag"; class `i + 1` is `RedFlag::ALL[i]`.
const CLASSES: usize = RedFlag::ALL.len() + 1;

fn class_of(label: Option<RedFlag>) -> usize {
    label.map_or(0, |f| f.index() + 1)
}

/// The features of a normalised message, each once.
pub(crate) fn features(text: &str) -> Vec<String> {
    let words: Vec<&str> = text
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .collect();
    let mut out: Vec<String> = Vec::with_capacity(words.len() * 12);
    for (i, w) in words.iter().enumerate() {
        out.push(format!("w:{w}"));
        if let Some(next) = words.get(i + 1) {
            out.push(format!("b:{w} {next}"));
        }
        let padded: Vec<char> = format!(" {w} ").chars().collect();
        for n in 3..=5 {
            for gram in padded.windows(n) {
                out.push(format!("c:{}", gram.iter().collect::<String>()));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn softmax(z: &mut [f32]) {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in z.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in z.iter_mut() {
        *v /= sum;
    }
}

impl TriageClassifier {
    /// Trains on normalised messages and their labels (`None`: no red flag).
    pub fn train(examples: &[(String, Option<RedFlag>)], config: &ClassifierConfig) -> Self {
        let mut vocab: HashMap<String, u32> = HashMap::new();
        let encoded: Vec<(Vec<u32>, usize)> = examples
            .iter()
            .map(|(text, label)| {
                let ids = features(text)
                    .into_iter()
                    .map(|f| {
                        let next = vocab.len() as u32;
                        *vocab.entry(f).or_insert(next)
                    })
                    .collect();
                (ids, class_of(*label))
            })
            .collect();
        let mut weights = vec![0f32; vocab.len() * CLASSES];
        let mut bias = vec![0f32; CLASSES];
        let mut grad_sq = vec![1e-8f32; vocab.len() * CLASSES];
        let mut bias_sq = [1e-8f32; CLASSES];
        let mut order: Vec<usize> = (0..encoded.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut z = [0f32; CLASSES];
        for _ in 0..config.epochs {
            order.shuffle(&mut rng);
            for &i in &order {
                let (ids, class) = &encoded[i];
                let scale = 1.0 / (ids.len().max(1) as f32).sqrt();
                z.copy_from_slice(&bias);
                for &id in ids {
                    let row = &weights[id as usize * CLASSES..][..CLASSES];
                    for (zc, w) in z.iter_mut().zip(row) {
                        *zc += w * scale;
                    }
                }
                softmax(&mut z);
                z[*class] -= 1.0; // now dLoss/dz
                for &id in ids {
                    let base = id as usize * CLASSES;
                    for c in 0..CLASSES {
                        let g = z[c] * scale + config.l2 * weights[base + c];
                        grad_sq[base + c] += g * g;
                        weights[base + c] -= config.learning_rate * g / grad_sq[base + c].sqrt();
                    }
                }
                for c in 0..CLASSES {
                    bias_sq[c] += z[c] * z[c];
                    bias[c] -= config.learning_rate * z[c] / bias_sq[c].sqrt();
                }
            }
        }
        TriageClassifier {
            vocab,
            weights,
            bias,
        }
    }

    /// The probability of each flag for a normalised message, in [`RedFlag::ALL`] order, and the
    /// probability of no flag.
    pub fn probabilities(&self, text: &str) -> (Vec<(RedFlag, f32)>, f32) {
        let features = features(text);
        let scale = 1.0 / (features.len().max(1) as f32).sqrt();
        let ids = features
            .iter()
            .filter_map(|f| self.vocab.get(f).map(|&i| i as usize));
        let mut z = [0f32; CLASSES];
        z.copy_from_slice(&self.bias);
        for id in ids {
            for (zc, w) in z.iter_mut().zip(&self.weights[id * CLASSES..][..CLASSES]) {
                *zc += w * scale;
            }
        }
        softmax(&mut z);
        let flags = RedFlag::ALL
            .iter()
            .map(|&f| (f, z[f.index() + 1]))
            .collect();
        (flags, z[0])
    }

    /// How many distinct features the classifier knows.
    pub fn vocabulary_size(&self) -> usize {
        self.vocab.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_hold_words_bigrams_and_character_grams() {
        let f = features("cant breath");
        assert!(f.contains(&"w:cant".to_string()));
        assert!(f.contains(&"b:cant breath".to_string()));
        assert!(f.contains(&"c: br".to_string()));
        assert!(f.contains(&"c:eath ".to_string()));
        let mut sorted = f.clone();
        sorted.dedup();
        assert_eq!(sorted, f);
    }

    #[test]
    fn learns_a_separable_toy_set_and_is_deterministic() {
        let data: Vec<(String, Option<RedFlag>)> = [
            ("i want to die", Some(RedFlag::SelfHarm)),
            ("i wish i was dead", Some(RedFlag::SelfHarm)),
            ("i want to end my life", Some(RedFlag::SelfHarm)),
            ("i have a mild cold", None),
            ("my knee hurts a bit", None),
            ("what is a cold", None),
            ("he is having a seizure", Some(RedFlag::Seizure)),
            ("she is fitting and shaking", Some(RedFlag::Seizure)),
        ]
        .iter()
        .map(|(t, l)| (t.to_string(), *l))
        .collect();
        let a = TriageClassifier::train(&data, &ClassifierConfig::default());
        let b = TriageClassifier::train(&data, &ClassifierConfig::default());
        assert_eq!(a.weights, b.weights);
        let (flags, none) = a.probabilities("i want to be dead");
        let self_harm = flags[RedFlag::SelfHarm.index()].1;
        assert!(self_harm > 0.5 && self_harm > none, "{self_harm} vs {none}");
        let (flags, none) = a.probabilities("my knee hurts");
        assert!(none > 0.5, "{none} {flags:?}");
    }
}
