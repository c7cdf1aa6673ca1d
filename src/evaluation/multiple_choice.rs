//! Multiple-choice accuracy as lm-evaluation-harness computes it, the figure medical LLM papers
//! report for MedQA, MedMCQA and PubMedQA.
//!
//! Each option is scored by the log-likelihood of `" " + choice` after the prompt, with the
//! prompt text of lm-eval's `medqa_4options`, `medmcqa` and `pubmedqa` tasks. The tokens are
//! split as lm-eval's `_encode_pair` splits them: the whole text is encoded, and the tokens past
//! the prompt's own encoding are the continuation. `acc` takes the option with the highest
//! log-likelihood; `acc_norm` divides each by its choice's length in characters first. Few-shot
//! examples are drawn as lm-eval draws them ([`FewshotSampler`]: by default Python's
//! `random.Random(1234).sample`, one stream across the questions in order), each followed by
//! `" " + its answer` and a blank line. Where the pool is the evaluated file, the question
//! itself is left out, as lm-eval does when both come from one split.

use std::path::Path;

use burn::module::Module;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::DataError;
use crate::error::{FinetuneError, Result};
use crate::evaluation::py_random::PyRandom;
use crate::lora::LoraExt;
use crate::models::{CausalLm, ModelTokenizer, TokenBatch};

/// Which lm-eval prompt a file's questions get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum McTask {
    /// `medqa_4options`: `Question: …\nA. …\nB. …\nAnswer:`, choices the option letters.
    MedQa,
    /// `medmcqa`: `Question: …\nChoices:\nA. …\nAnswer:`, choices the option letters.
    MedMcQa,
    /// `pubmedqa`: `Abstract: …\nQuestion: …\nAnswer:`, choices `yes`, `no`, `maybe`.
    PubMedQa,
    /// `Question: …\nAnswer:`, choices the options' texts (lm-eval's ARC/SciQ form): for
    /// picking a condition from a list given symptoms, where `acc_norm` matters.
    Choices,
}

impl McTask {
    /// Every task with its command-line name.
    pub const ALL: [(McTask, &'static str); 4] = [
        (McTask::MedQa, "medqa"),
        (McTask::MedMcQa, "medmcqa"),
        (McTask::PubMedQa, "pubmedqa"),
        (McTask::Choices, "choices"),
    ];

    /// The name lm-eval and `--task` use.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(t, _)| *t == self)
            .map_or("medqa", |(_, n)| n)
    }

    /// The task a record's fields suggest: MedMCQA's `opa`…, PubMedQA's context, lettered
    /// options (MedQA), or a plain list of choices.
    pub fn detect(record: &Value) -> McTask {
        let has = |k: &str| record.get(k).is_some();
        if has("opa") {
            McTask::MedMcQa
        } else if has("context") || has("contexts") || has("CONTEXTS") {
            McTask::PubMedQa
        } else if record.get("options").is_some_and(Value::is_object) || has("ending0") {
            McTask::MedQa
        } else {
            McTask::Choices
        }
    }

    /// The prompt of one question, without its answer (lm-eval's `doc_to_text`).
    pub fn prompt(self, q: &McQuestion) -> String {
        let lettered = |head: &str| {
            let mut s = format!("Question: {}\n{head}", q.question);
            for o in &q.options {
                s.push_str(&format!("{}. {}\n", o.label, o.text));
            }
            s + "Answer:"
        };
        match self {
            McTask::MedQa => lettered(""),
            McTask::MedMcQa => lettered("Choices:\n"),
            McTask::PubMedQa => format!(
                "Abstract: {}\nQuestion: {}\nAnswer:",
                q.context.join("\n"),
                q.question
            ),
            McTask::Choices => format!("Question: {}\nAnswer:", q.question),
        }
    }

    /// The strings scored after the prompt (lm-eval's `doc_to_choice`).
    pub fn choices(self, q: &McQuestion) -> Vec<String> {
        match self {
            McTask::MedQa | McTask::MedMcQa => q.options.iter().map(|o| o.label.clone()).collect(),
            McTask::PubMedQa | McTask::Choices => {
                q.options.iter().map(|o| o.text.clone()).collect()
            }
        }
    }
}

impl std::fmt::Display for McTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for McTask {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<McTask, String> {
        let s = s.to_ascii_lowercase();
        let s = if s == "medqa_4options" { "medqa" } else { &s };
        Self::ALL
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(t, _)| *t)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|(_, n)| *n).collect();
                format!("unknown task `{s}`: expected one of {}", names.join(", "))
            })
    }
}

/// One option: its label (`A`…, or PubMedQA's word) and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McOption {
    /// `A`, `B`, …; PubMedQA's `yes` / `no` / `maybe`.
    pub label: String,
    /// What the option says.
    pub text: String,
}

/// A question with its options and the index of the right one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McQuestion {
    /// The question (for the symptom task: the symptoms).
    pub question: String,
    /// PubMedQA's abstract, one paragraph per entry; empty elsewhere.
    pub context: Vec<String>,
    /// The options in order.
    pub options: Vec<McOption>,
    /// Index of the right option.
    pub answer: usize,
    /// 1-based line in its file.
    pub line: usize,
}

const PUBMEDQA: [&str; 3] = ["yes", "no", "maybe"];

impl McQuestion {
    /// Reads a record in the issue's form (`question`, `options` as `{"A": …}` or a list,
    /// `answer` as a label, an index or the option's text; `answer_idx` as the original MedQA
    /// files have it) or in the Hugging Face fields lm-eval reads: MedQA's `sent1`,
    /// `ending0`…, `label`; MedMCQA's `opa`…`opd`, `cop` (0-based); PubMedQA's `QUESTION`,
    /// `CONTEXTS`, `final_decision`. A PubMedQA record takes `context` as a string or a list.
    pub fn from_record(
        record: &Value,
        task: McTask,
        line: usize,
    ) -> std::result::Result<McQuestion, String> {
        let text = |v: &Value, field: &str| match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(format!("`{field}` must be a string")),
        };
        let field =
            |names: &[&'static str]| names.iter().find_map(|&n| record.get(n).map(|v| (n, v)));
        let (qname, question) =
            field(&["question", "sent1", "QUESTION"]).ok_or("missing `question`")?;
        let question = text(question, qname)?;
        let mut context = Vec::new();
        let options: Vec<McOption> = if task == McTask::PubMedQa {
            let (cname, c) = field(&["context", "contexts", "CONTEXTS"])
                .ok_or("missing `context` (PubMedQA's abstract)")?;
            context = match c {
                Value::Array(items) => items
                    .iter()
                    .map(|v| text(v, cname))
                    .collect::<std::result::Result<_, _>>()?,
                v => vec![text(v, cname)?],
            };
            PUBMEDQA
                .iter()
                .map(|w| McOption {
                    label: w.to_string(),
                    text: w.to_string(),
                })
                .collect()
        } else if let Some(opts) = record.get("options").or_else(|| record.get("choices")) {
            match opts {
                Value::Object(map) => map
                    .iter()
                    .map(|(k, v)| {
                        Ok(McOption {
                            label: k.clone(),
                            text: text(v, "options")?,
                        })
                    })
                    .collect::<std::result::Result<_, String>>()?,
                Value::Array(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        Ok(McOption {
                            label: letter(i)?,
                            text: text(v, "options")?,
                        })
                    })
                    .collect::<std::result::Result<_, String>>()?,
                _ => return Err("`options` must be an object of label → text or a list".into()),
            }
        } else {
            let keys: Vec<String> = if record.get("opa").is_some() {
                ["opa", "opb", "opc", "opd"].map(String::from).to_vec()
            } else {
                (0..)
                    .map(|i| format!("ending{i}"))
                    .take_while(|k| record.get(k).is_some())
                    .collect()
            };
            keys.iter()
                .enumerate()
                .map(|(i, k)| {
                    let v = record.get(k).ok_or_else(|| format!("missing `{k}`"))?;
                    Ok(McOption {
                        label: letter(i)?,
                        text: text(v, k)?,
                    })
                })
                .collect::<std::result::Result<_, String>>()?
        };
        if options.len() < 2 {
            return Err("a question needs at least two `options`".into());
        }
        let (aname, answer) = field(&["answer_idx", "answer", "label", "cop", "final_decision"])
            .ok_or("missing `answer`")?;
        let answer = match answer {
            Value::Number(n) => n
                .as_u64()
                .map(|i| i as usize)
                .filter(|&i| i < options.len())
                .ok_or_else(|| {
                    format!(
                        "`{aname}` {n} is not an option index (0..{})",
                        options.len()
                    )
                })?,
            Value::String(s) => {
                let s = s.trim();
                options
                    .iter()
                    .position(|o| o.label == s)
                    .or_else(|| options.iter().position(|o| o.label.eq_ignore_ascii_case(s)))
                    .or_else(|| options.iter().position(|o| o.text == s))
                    .ok_or_else(|| {
                        let labels: Vec<_> = options.iter().map(|o| o.label.as_str()).collect();
                        format!(
                            "`{aname}` \"{s}\" is neither an option label ({}) nor an option's text",
                            labels.join(", ")
                        )
                    })?
            }
            _ => {
                return Err(format!(
                    "`{aname}` must be a label, an index or an option's text"
                ));
            }
        };
        Ok(McQuestion {
            question,
            context,
            options,
            answer,
            line,
        })
    }
}

fn letter(i: usize) -> std::result::Result<String, String> {
    (i < 26)
        .then(|| char::from(b'A' + i as u8).to_string())
        .ok_or_else(|| "more than 26 options".to_string())
}

/// Reads a JSONL file of questions; with `task` `None` it is detected from the first record.
/// Errors name the file and line.
pub fn read_mc_questions(path: &Path, task: Option<McTask>) -> Result<(McTask, Vec<McQuestion>)> {
    let text = std::fs::read_to_string(path).map_err(crate::error::io_err(path))?;
    let bad = |line: usize, message: String| {
        FinetuneError::Data(DataError::Record {
            path: path.to_path_buf(),
            line,
            message,
        })
    };
    let mut task = task;
    let mut questions = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let record: Value =
            serde_json::from_str(raw).map_err(|e| bad(i + 1, format!("not JSON: {e}")))?;
        let t = *task.get_or_insert_with(|| McTask::detect(&record));
        questions.push(McQuestion::from_record(&record, t, i + 1).map_err(|m| bad(i + 1, m))?);
    }
    match task {
        Some(t) => Ok((t, questions)),
        None => Err(FinetuneError::Data(DataError::File {
            path: path.to_path_buf(),
            message: "no questions".into(),
        })),
    }
}

/// How k-shot examples are chosen: lm-eval's samplers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FewshotSampler {
    /// lm-eval's default: `random.Random(seed).sample(pool, k)`, one stream across the questions
    /// in file order (lm-eval's `fewshot_random_seed`, 1234 unless changed). Where the pool is
    /// the evaluated file, `k + 1` are drawn, the question itself is dropped and the first `k`
    /// kept, as lm-eval does.
    Random {
        /// The seed.
        seed: u64,
    },
    /// lm-eval's `first_n`: the first `k` of the pool (the question itself left out).
    FirstN,
}

impl Default for FewshotSampler {
    fn default() -> FewshotSampler {
        FewshotSampler::Random { seed: 1234 }
    }
}

/// Settings of a multiple-choice evaluation.
#[derive(Debug, Clone)]
pub struct McConfig {
    /// The prompt format.
    pub task: McTask,
    /// Examples before each question.
    pub shots: usize,
    /// Where the examples come from (lm-eval's few-shot split); `None`: the evaluated
    /// questions, each question's own left out (lm-eval with the few-shot split = the test
    /// split).
    pub fewshot: Option<Vec<McQuestion>>,
    /// How they are drawn.
    pub sampler: FewshotSampler,
    /// Tokens the model sees at most: longer inputs lose their start, as in lm-eval.
    pub max_len: usize,
    /// Sequences per forward pass.
    pub batch_size: usize,
}

/// One question's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McScore {
    /// 1-based line in the file.
    pub line: usize,
    /// The prompt the options were scored after (few-shot examples included).
    pub prompt: String,
    /// The scored strings, in option order.
    pub choices: Vec<String>,
    /// Natural-log likelihood of `" " + choice` after the prompt, per option.
    pub loglikelihoods: Vec<f64>,
    /// Index of the right option.
    pub answer: usize,
    /// The option with the highest log-likelihood (the first on a tie).
    pub predicted: usize,
    /// The option with the highest log-likelihood per character.
    pub predicted_norm: usize,
    /// Whether the input lost its start to `max_len`.
    pub truncated: bool,
}

/// Accuracy over a file, with lm-eval's standard errors (sample standard deviation / √n).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McReport {
    /// The prompt format.
    pub task: McTask,
    /// Examples before each question.
    pub shots: usize,
    /// Questions scored.
    pub questions: usize,
    /// Share answered right by log-likelihood.
    pub acc: f64,
    /// Its standard error (NaN below two questions).
    pub acc_stderr: f64,
    /// Share answered right by log-likelihood per character.
    pub acc_norm: f64,
    /// Its standard error.
    pub acc_norm_stderr: f64,
    /// Questions whose input was cut to `max_len`.
    pub truncated: usize,
    /// Every question's log-likelihoods and picks.
    pub scores: Vec<McScore>,
}

/// One option's tokens, as lm-eval's `_encode_pair` splits them.
fn encode_pair(
    tok: &ModelTokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end();
    let (context, continuation) = if trimmed.len() < context.len() {
        (
            trimmed,
            format!("{}{continuation}", &context[trimmed.len()..]),
        )
    } else {
        (context, continuation.to_string())
    };
    let whole = tok.encode(&format!("{context}{continuation}"), true)?;
    let ctx = tok.encode(context, true)?;
    let cont = whole.get(ctx.len()..).unwrap_or_default().to_vec();
    Ok((ctx, cont))
}

/// Two records lm-eval would take for the same document (it compares the dicts).
fn same_doc(a: &McQuestion, b: &McQuestion) -> bool {
    (&a.question, &a.context, &a.options, a.answer)
        == (&b.question, &b.context, &b.options, b.answer)
}

/// The examples before question `index`, drawn as `config.sampler` says; `rng` is the random
/// sampler's stream, created on first use and advanced question by question.
fn examples<'a>(
    config: &'a McConfig,
    questions: &'a [McQuestion],
    index: usize,
    rng: &mut Option<PyRandom>,
) -> Vec<&'a McQuestion> {
    let k = config.shots;
    if k == 0 {
        return Vec::new();
    }
    let (pool, own) = match &config.fewshot {
        Some(pool) => (pool.as_slice(), None),
        None => (questions, Some(&questions[index])),
    };
    let others: Vec<&McQuestion> = pool
        .iter()
        .filter(|q| own.is_none_or(|o| !same_doc(q, o)))
        .collect();
    let seed = match config.sampler {
        FewshotSampler::FirstN => return others.into_iter().take(k).collect(),
        FewshotSampler::Random { seed } => seed,
    };
    let rng = rng.get_or_insert_with(|| PyRandom::new(seed));
    let draw = |rng: &mut PyRandom, from: &[&'a McQuestion], n: usize| -> Vec<&'a McQuestion> {
        rng.sample(from.len(), n)
            .map(|ix| ix.into_iter().map(|i| from[i]).collect())
            .unwrap_or_default()
    };
    let all: Vec<&McQuestion> = pool.iter().collect();
    match own {
        None => draw(rng, &all, k),
        Some(o) => {
            let kept: Vec<&McQuestion> = draw(rng, &all, k + 1)
                .into_iter()
                .filter(|q| !same_doc(q, o))
                .take(k)
                .collect();
            if kept.len() == k {
                kept
            } else {
                // Copies of the question were drawn: lm-eval draws again from the rest.
                draw(rng, &others, k)
            }
        }
    }
}

/// The prompt of `question` after `examples`, each followed by its answer and a blank line.
fn fewshot_prompt(task: McTask, examples: &[&McQuestion], question: &McQuestion) -> String {
    let mut prompt = String::new();
    for ex in examples {
        let answer = &task.choices(ex)[ex.answer];
        prompt.push_str(&format!("{} {answer}\n\n", task.prompt(ex)));
    }
    prompt + &task.prompt(question)
}

/// A forward input and the log-probabilities to read from it.
struct Request {
    input: Vec<u32>,
    /// `(question, option, position, token)`.
    picks: Vec<(usize, usize, usize, u32)>,
}

/// Scores every question's options; `progress(done, total)` after each batch of sequences.
///
/// ```
/// use burn::tensor::Device;
/// use medify_qlora::{load_base, score_multiple_choice, McConfig, McOption, McQuestion, McTask};
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tiny_models/llama");
/// let base = load_base(dir.as_ref(), &Device::flex(), None, None).unwrap();
/// let opt = |l: &str, t: &str| McOption { label: l.into(), text: t.into() };
/// let q = McQuestion { question: "Which organ pumps blood?".into(), context: vec![],
///     options: vec![opt("A", "heart"), opt("B", "lung")], answer: 0, line: 1 };
/// let config = McConfig { task: McTask::MedQa, shots: 0, fewshot: None,
///     sampler: Default::default(), max_len: 2048, batch_size: 8 };
/// let r = score_multiple_choice(&base.model, &base.tokenizer, &[q], &config, &mut |_, _| {}).unwrap();
/// assert_eq!(r.scores[0].loglikelihoods.len(), 2);
/// assert!(r.scores[0].loglikelihoods.iter().all(|&ll| ll < 0.0));
/// ```
pub fn score_multiple_choice(
    model: &CausalLm,
    tokenizer: &ModelTokenizer,
    questions: &[McQuestion],
    config: &McConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<McReport> {
    if config.max_len < 2 {
        return Err(FinetuneError::Config {
            field: "max_len".into(),
            reason: "must be at least 2".into(),
        });
    }
    if let Some(q) = questions.iter().find(|q| q.answer >= q.options.len()) {
        return Err(FinetuneError::Config {
            field: "answer".into(),
            reason: format!("question on line {} has no option {}", q.line, q.answer),
        });
    }
    let pool_size = config
        .fewshot
        .as_ref()
        .map_or(questions.len().saturating_sub(1), Vec::len);
    if config.shots > pool_size {
        return Err(FinetuneError::Config {
            field: "shots".into(),
            reason: format!("{} examples asked for, {pool_size} available", config.shots),
        });
    }
    let mut plain = model.valid();
    plain.set_adapters_training(false);
    let mut scores = Vec::with_capacity(questions.len());
    let mut requests: Vec<Request> = Vec::new();
    let mut rng = None;
    for (qi, q) in questions.iter().enumerate() {
        let shots = examples(config, questions, qi, &mut rng);
        if shots.len() < config.shots {
            return Err(FinetuneError::Config {
                field: "shots".into(),
                reason: format!(
                    "{} examples asked for; only {} differ from the question on line {}",
                    config.shots,
                    shots.len(),
                    q.line
                ),
            });
        }
        let prompt = fewshot_prompt(config.task, &shots, q);
        let choices = config.task.choices(q);
        let mut truncated = false;
        // Each option's model input (prompt tokens + continuation, less the last token, cut
        // to max_len from the left) and where its continuation tokens are predicted.
        type Input = (Vec<u32>, Vec<(usize, u32)>);
        let mut inputs: Vec<Input> = Vec::new();
        for choice in &choices {
            let (ctx, cont) = encode_pair(tokenizer, &prompt, &format!(" {choice}"))?;
            if ctx.is_empty() || cont.len() > config.max_len {
                return Err(FinetuneError::Config {
                    field: "max_len".into(),
                    reason: format!(
                        "question on line {}: the prompt encodes to {} tokens and option \"{choice}\" \
                         to {}; at most {} fit",
                        q.line,
                        ctx.len(),
                        cont.len(),
                        config.max_len
                    ),
                });
            }
            let mut full = ctx;
            full.extend_from_slice(&cont);
            let cut = full.len().saturating_sub(config.max_len + 1);
            truncated |= cut > 0;
            let input = full[cut..full.len() - 1].to_vec();
            let first = input.len() - cont.len();
            let at = cont
                .iter()
                .enumerate()
                .map(|(k, &t)| (first + k, t))
                .collect();
            inputs.push((input, at));
        }
        // An input that is a prefix of another is read from the longer one (attention is
        // causal), so options of one token share a single pass over the prompt.
        let covered = |i: usize| {
            let (input, _) = &inputs[i];
            inputs.iter().enumerate().any(|(j, (other, _))| {
                (other.len() > input.len() || (other.len() == input.len() && j < i))
                    && other.starts_with(input)
            })
        };
        let hosts: Vec<usize> = (0..inputs.len()).filter(|&i| !covered(i)).collect();
        let base = requests.len();
        requests.extend(hosts.iter().map(|&h| Request {
            input: inputs[h].0.clone(),
            picks: Vec::new(),
        }));
        for (oi, (input, at)) in inputs.iter().enumerate() {
            // Prefixes are transitive, so some uncovered input extends this one.
            let k = hosts
                .iter()
                .position(|&h| inputs[h].0.starts_with(input))
                .unwrap_or_default();
            requests[base + k]
                .picks
                .extend(at.iter().map(|&(p, t)| (qi, oi, p, t)));
        }
        scores.push(McScore {
            line: q.line,
            prompt,
            choices,
            loglikelihoods: vec![0.0; q.options.len()],
            answer: q.answer,
            predicted: 0,
            predicted_norm: 0,
            truncated,
        });
    }
    // Longest first, so each batch pads little.
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(requests[i].input.len()));
    let pad = tokenizer.pad_id();
    let total = order.len();
    for (done, chunk) in order.chunks(config.batch_size.max(1)).enumerate() {
        let width = requests[chunk[0]].input.len();
        let ids: Vec<Vec<u32>> = chunk
            .iter()
            .map(|&i| {
                let mut row = requests[i].input.clone();
                row.resize(width, pad);
                row
            })
            .collect();
        let mut picks = Vec::new();
        let mut owners = Vec::new();
        for (row, &i) in chunk.iter().enumerate() {
            for &(qi, oi, p, t) in &requests[i].picks {
                picks.push((row, p, t));
                owners.push((qi, oi));
            }
        }
        // Right padding needs no mask: causal attention never lets a real token see it.
        let logp = plain.log_probs_at(&TokenBatch::new(ids), &picks)?;
        for ((qi, oi), lp) in owners.into_iter().zip(logp) {
            scores[qi].loglikelihoods[oi] += lp;
        }
        progress(((done + 1) * config.batch_size.max(1)).min(total), total);
    }
    for s in &mut scores {
        let lens: Vec<f64> = s.choices.iter().map(|c| c.chars().count() as f64).collect();
        s.predicted = argmax(&s.loglikelihoods);
        let normed: Vec<f64> = s
            .loglikelihoods
            .iter()
            .zip(&lens)
            .map(|(l, n)| l / n)
            .collect();
        s.predicted_norm = argmax(&normed);
    }
    let hits: Vec<f64> = scores
        .iter()
        .map(|s| f64::from(u8::from(s.predicted == s.answer)))
        .collect();
    let hits_norm: Vec<f64> = scores
        .iter()
        .map(|s| f64::from(u8::from(s.predicted_norm == s.answer)))
        .collect();
    Ok(McReport {
        task: config.task,
        shots: config.shots,
        questions: scores.len(),
        acc: mean(&hits),
        acc_stderr: mean_stderr(&hits),
        acc_norm: mean(&hits_norm),
        acc_norm_stderr: mean_stderr(&hits_norm),
        truncated: scores.iter().filter(|s| s.truncated).count(),
        scores,
    })
}

/// The first index of the largest value (numpy's `argmax`).
fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        f64::NAN
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// lm-eval's `mean_stderr`: the sample standard deviation over √n.
fn mean_stderr(xs: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if xs.len() < 2 {
        return f64::NAN;
    }
    let m = mean(xs);
    let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (var / n).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(record: Value, task: McTask) -> McQuestion {
        McQuestion::from_record(&record, task, 1).unwrap()
    }

    #[test]
    fn prompts_are_lm_evals() {
        let r = json!({"question": "Q?", "options": {"A": "x", "B": "y"}, "answer": "B"});
        let medqa = q(r.clone(), McTask::MedQa);
        assert_eq!(
            McTask::MedQa.prompt(&medqa),
            "Question: Q?\nA. x\nB. y\nAnswer:"
        );
        assert_eq!(McTask::MedQa.choices(&medqa), ["A", "B"]);
        assert_eq!(medqa.answer, 1);
        assert_eq!(
            McTask::MedMcQa.prompt(&medqa),
            "Question: Q?\nChoices:\nA. x\nB. y\nAnswer:"
        );
        let pub_ = q(
            json!({"question": "Q?", "context": ["p1", "p2"], "answer": "maybe"}),
            McTask::PubMedQa,
        );
        assert_eq!(
            McTask::PubMedQa.prompt(&pub_),
            "Abstract: p1\np2\nQuestion: Q?\nAnswer:"
        );
        assert_eq!(McTask::PubMedQa.choices(&pub_), ["yes", "no", "maybe"]);
        assert_eq!(pub_.answer, 2);
        let c = q(
            json!({"question": "fever", "options": ["flu", "cold"], "answer": "cold"}),
            McTask::Choices,
        );
        assert_eq!(McTask::Choices.prompt(&c), "Question: fever\nAnswer:");
        assert_eq!(McTask::Choices.choices(&c), ["flu", "cold"]);
        assert_eq!(c.answer, 1);
    }

    #[test]
    fn answers_and_fields_in_every_form() {
        let opts = json!({"A": "x", "B": "y", "C": "z"});
        for (answer, want) in [
            (json!("C"), 2),
            (json!("c"), 2),
            (json!("y"), 1),
            (json!(0), 0),
        ] {
            let r = json!({"question": "q", "options": opts, "answer": answer});
            assert_eq!(q(r, McTask::MedQa).answer, want);
        }
        // The original MedQA files: `answer` is the text, `answer_idx` the letter.
        let r = json!({"question": "q", "options": opts, "answer": "zzz", "answer_idx": "B"});
        assert_eq!(q(r, McTask::MedQa).answer, 1);
        let hf = json!({"sent1": "q", "ending0": "x", "ending1": "y", "label": 1});
        let hf = q(hf, McTask::MedQa);
        assert_eq!(
            (hf.options.len(), hf.answer, hf.options[1].label.as_str()),
            (2, 1, "B")
        );
        let mm = json!({"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 3});
        assert_eq!(McTask::detect(&mm), McTask::MedMcQa);
        assert_eq!(q(mm, McTask::MedMcQa).answer, 3);
        let pm = json!({"QUESTION": "q", "CONTEXTS": ["a"], "final_decision": "no"});
        assert_eq!(McTask::detect(&pm), McTask::PubMedQa);
        assert_eq!(q(pm, McTask::PubMedQa).answer, 1);
        assert_eq!(
            McTask::detect(&json!({"options": ["a", "b"]})),
            McTask::Choices
        );
        assert_eq!(
            McTask::detect(&json!({"options": {"A": "a"}})),
            McTask::MedQa
        );
        assert_eq!("medqa_4options".parse::<McTask>().unwrap(), McTask::MedQa);
        assert!(
            "mmlu"
                .parse::<McTask>()
                .unwrap_err()
                .contains("medqa, medmcqa")
        );
    }

    fn numbered(n: usize) -> Vec<McQuestion> {
        (0..n)
            .map(|i| McQuestion {
                question: format!("q{i}"),
                context: vec![],
                options: vec![
                    McOption {
                        label: "A".into(),
                        text: "x".into(),
                    },
                    McOption {
                        label: "B".into(),
                        text: "y".into(),
                    },
                ],
                answer: i % 2,
                line: i + 1,
            })
            .collect()
    }

    fn config(shots: usize, sampler: FewshotSampler) -> McConfig {
        McConfig {
            task: McTask::Choices,
            shots,
            fewshot: None,
            sampler,
            max_len: 64,
            batch_size: 1,
        }
    }

    #[test]
    fn first_n_examples_come_first_and_skip_the_question() {
        let qs = numbered(3);
        let mut config = config(2, FewshotSampler::FirstN);
        let prompt = |config: &McConfig, i: usize| {
            fewshot_prompt(config.task, &examples(config, &qs, i, &mut None), &qs[i])
        };
        assert_eq!(
            prompt(&config, 0),
            "Question: q1\nAnswer: y\n\nQuestion: q2\nAnswer: x\n\nQuestion: q0\nAnswer:"
        );
        assert_eq!(
            prompt(&config, 2),
            "Question: q0\nAnswer: x\n\nQuestion: q1\nAnswer: y\n\nQuestion: q2\nAnswer:"
        );
        config.fewshot = Some(numbered(2).split_off(1));
        config.shots = 1;
        assert_eq!(
            prompt(&config, 0),
            "Question: q1\nAnswer: y\n\nQuestion: q0\nAnswer:"
        );
    }

    #[test]
    fn the_random_sampler_is_lm_evals_one_stream() {
        let qs = numbered(10);
        let config = config(2, FewshotSampler::default());
        let names = |ex: Vec<&McQuestion>| -> Vec<String> {
            ex.iter().map(|q| q.question.clone()).collect()
        };
        // random.Random(1234).sample(range(10), 3) is [7, 1, 0]: question 0 drops itself and
        // keeps 7 and 1; question 1 draws next from the same stream.
        let mut rng = None;
        assert_eq!(names(examples(&config, &qs, 0, &mut rng)), ["q7", "q1"]);
        let mut py = PyRandom::new(1234);
        py.sample(10, 3);
        let next: Vec<String> = py
            .sample(10, 3)
            .unwrap()
            .into_iter()
            .filter(|&i| i != 1)
            .take(2)
            .map(|i| format!("q{i}"))
            .collect();
        assert_eq!(names(examples(&config, &qs, 1, &mut rng)), next);
        // A separate pool is sampled without dropping anything.
        let pooled = McConfig {
            fewshot: Some(numbered(10)),
            ..config
        };
        let first: Vec<String> = PyRandom::new(1234)
            .sample(10, 2)
            .unwrap()
            .into_iter()
            .map(|i| format!("q{i}"))
            .collect();
        assert_eq!(names(examples(&pooled, &qs, 0, &mut None)), first);
    }

    #[test]
    fn ties_take_the_first_and_stderr_is_lm_evals() {
        assert_eq!(argmax(&[-1.0, -0.5, -0.5]), 1);
        assert_eq!(argmax(&[-2.0]), 0);
        // Sample standard deviation of [1, 0, 1, 0] is sqrt(1/3); over sqrt(4).
        let se = mean_stderr(&[1.0, 0.0, 1.0, 0.0]);
        assert!((se - (1.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-15);
        assert!(mean_stderr(&[1.0]).is_nan());
    }
}
