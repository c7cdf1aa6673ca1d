//! Preference pairs (`prompt`, `chosen`, `rejected`) in TRL's formats, and their tokenization
//! exactly as TRL's `DPOTrainer` does it.
//!
//! Three shapes per record, as TRL reads them: strings (`{"prompt": "…", "chosen": "…",
//! "rejected": "…"}`), conversations (each a list of `{"role", "content"}` turns), and the
//! implicit prompt (only `chosen` and `rejected`, conversations or strings sharing a prefix,
//! which becomes the prompt). JSONL records may be any of them; CSV/TSV rows are strings.

use std::path::Path;

use serde_json::{Map, Value};

use crate::dataset::{Batch, Sequence};
use crate::encode::{ChatEncoder, IGNORE};
use crate::error::{DataError, Result, io_err};
use crate::record::{Message, Role};
use crate::sources::{FieldMap, FileKind, ReadOptions, each_record, field, files_of, turns};

/// A prompt or a completion: plain text, or chat turns.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Turns {
    /// Text, tokenized as it is (TRL's standard format).
    Text(String),
    /// Turns rendered through the model's chat template (TRL's conversational format).
    Chat(Vec<Message>),
}

impl Turns {
    fn is_empty(&self) -> bool {
        match self {
            Turns::Text(t) => t.trim().is_empty(),
            Turns::Chat(m) => m.is_empty() || m.iter().all(|t| t.content.trim().is_empty()),
        }
    }

    fn is_chat(&self) -> bool {
        matches!(self, Turns::Chat(_))
    }
}

/// One preference pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PreferencePair {
    /// What the answers respond to (empty for an implicit prompt with no shared prefix).
    pub prompt: Turns,
    /// The preferred answer.
    pub chosen: Turns,
    /// The dispreferred answer.
    pub rejected: Turns,
}

/// A pair with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcedPair {
    /// `path:line`.
    pub origin: String,
    /// The pair.
    pub pair: PreferencePair,
    /// Which data source of a run (0 when there is one).
    pub source: usize,
}

/// What reading preference data found.
#[derive(Debug, Clone, Default)]
pub struct PreferenceReport {
    /// Pairs read.
    pub pairs: Vec<SourcedPair>,
    /// Records left out with `skip_invalid`, with where and why.
    pub skipped: Vec<(String, String)>,
}

impl PreferenceReport {
    /// Marks every pair as coming from data source `source` of a mix.
    pub fn set_source(&mut self, source: usize) {
        for p in &mut self.pairs {
            p.source = source;
        }
    }
}

/// Reads preference pairs from a JSONL file or a CSV/TSV file with `prompt`, `chosen` and
/// `rejected` columns (renamed with [`ReadOptions::fields`]), or from every data file of a
/// directory, in order (as [`read_records`](crate::read_records) reads directories).
///
/// ```
/// use medify_data::{read_preferences_from, FileKind, ReadOptions, Turns};
/// let jsonl = r#"{"prompt": [{"role": "user", "content": "Chest pain, what now?"}], "chosen": [{"role": "assistant", "content": "Call emergency services."}], "rejected": [{"role": "assistant", "content": "Probably indigestion."}]}"#;
/// let read = read_preferences_from(jsonl.as_bytes(), "p.jsonl".as_ref(), FileKind::Jsonl,
///     &ReadOptions::default()).unwrap();
/// assert!(matches!(read.pairs[0].pair.chosen, Turns::Chat(_)));
/// assert_eq!(read.pairs[0].origin, "p.jsonl:1");
/// ```
pub fn read_preferences(path: &Path, options: &ReadOptions) -> Result<PreferenceReport> {
    let mut all = PreferenceReport::default();
    for f in files_of(path)? {
        let text = std::fs::read_to_string(&f).map_err(io_err(&f))?;
        let mut one = read_text(&text, &f, FileKind::from_path(&f), options)?;
        all.pairs.append(&mut one.pairs);
        all.skipped.append(&mut one.skipped);
    }
    Ok(all)
}

/// [`read_preferences`] from any reader; `name` stands for the source in errors and origins.
pub fn read_preferences_from(
    mut reader: impl std::io::Read,
    name: &Path,
    kind: FileKind,
    options: &ReadOptions,
) -> Result<PreferenceReport> {
    let mut text = String::new();
    reader.read_to_string(&mut text).map_err(io_err(name))?;
    read_text(&text, name, kind, options)
}

fn read_text(
    text: &str,
    path: &Path,
    kind: FileKind,
    options: &ReadOptions,
) -> Result<PreferenceReport> {
    let mut report = PreferenceReport::default();
    let add = |line: usize, obj: &Map<String, Value>, report: &mut PreferenceReport| {
        let origin = format!("{}:{line}", path.display());
        match parse_pair(obj, &options.fields) {
            Ok(pair) => {
                report.pairs.push(SourcedPair {
                    origin,
                    pair,
                    source: 0,
                });
                Ok(())
            }
            Err(message) if options.skip_invalid => {
                report.skipped.push((origin, message));
                Ok(())
            }
            Err(message) => Err(DataError::Record {
                path: path.to_path_buf(),
                line,
                message,
            }),
        }
    };
    if kind == FileKind::MedquadXml {
        return Err(DataError::File {
            path: path.to_path_buf(),
            message: "MedQuAD XML holds question/answer pairs, not preference pairs".into(),
        });
    }
    each_record(text, path, kind, |line, obj| add(line, obj, &mut report))?;
    if report.pairs.is_empty() {
        return Err(DataError::File {
            path: path.to_path_buf(),
            message: format!("no preference pairs ({} skipped)", report.skipped.len()),
        });
    }
    Ok(report)
}

/// A prompt or completion: text, or turns read as every conversation of the crate is read.
fn side(
    obj: &Map<String, Value>,
    canonical: &str,
    fields: &FieldMap,
) -> std::result::Result<Option<Turns>, String> {
    let name = fields.get(canonical);
    match field(obj, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(Turns::Text(s.clone()))),
        Some(list @ Value::Array(_)) => Ok(Some(Turns::Chat(turns(
            list,
            name,
            fields.get("role"),
            fields.get("content"),
        )?))),
        Some(other) => Err(format!(
            "field {name:?} must be a string or a list of turns, got {other}"
        )),
    }
}

/// TRL's `extract_prompt`: the longest common prefix of the two completions is the prompt (for
/// text, a space just before the divergence stays with the completions).
fn extract_prompt(chosen: Turns, rejected: Turns) -> std::result::Result<PreferencePair, String> {
    match (chosen, rejected) {
        (Turns::Chat(c), Turns::Chat(r)) => {
            let n = c.iter().zip(&r).take_while(|(a, b)| a == b).count();
            Ok(PreferencePair {
                prompt: Turns::Chat(c[..n].to_vec()),
                chosen: Turns::Chat(c[n..].to_vec()),
                rejected: Turns::Chat(r[n..].to_vec()),
            })
        }
        (Turns::Text(c), Turns::Text(r)) => {
            let mut n = c
                .char_indices()
                .zip(r.chars())
                .take_while(|((_, a), b)| a == b)
                .last()
                .map_or(0, |((i, a), _)| i + a.len_utf8());
            if n > 0 && c[..n].ends_with(' ') && n < c.len().min(r.len()) {
                n -= 1;
            }
            Ok(PreferencePair {
                prompt: Turns::Text(c[..n].to_string()),
                chosen: Turns::Text(c[n..].to_string()),
                rejected: Turns::Text(r[n..].to_string()),
            })
        }
        _ => Err("\"chosen\" and \"rejected\" must both be text or both be conversations".into()),
    }
}

fn parse_pair(
    obj: &Map<String, Value>,
    fields: &FieldMap,
) -> std::result::Result<PreferencePair, String> {
    let required = |canonical: &str| {
        side(obj, canonical, fields)?
            .ok_or_else(|| format!("missing field {:?}", fields.get(canonical)))
    };
    let chosen = required("chosen")?;
    let rejected = required("rejected")?;
    let prompt = side(obj, "prompt", fields)?;
    let pair = match prompt {
        // A prompt of the completions' kind is the prompt; otherwise the prompt is implicit in
        // the completions (some datasets add a text prompt beside conversations that hold it).
        Some(p) if p.is_chat() == chosen.is_chat() => PreferencePair {
            prompt: p,
            chosen,
            rejected,
        },
        _ => extract_prompt(chosen, rejected)?,
    };
    if pair.chosen.is_chat() != pair.rejected.is_chat() {
        return Err(
            "\"chosen\" and \"rejected\" must both be text or both be conversations".into(),
        );
    }
    for (side, t) in [("chosen", &pair.chosen), ("rejected", &pair.rejected)] {
        if t.is_empty() {
            return Err(format!("the {side} completion is empty"));
        }
        if let Turns::Chat(m) = t
            && m.last().is_some_and(|m| m.role != Role::Assistant)
        {
            return Err(format!(
                "the {side} completion must end with an assistant turn"
            ));
        }
    }
    if pair.chosen == pair.rejected {
        return Err("\"chosen\" and \"rejected\" are identical".into());
    }
    Ok(pair)
}

/// A pair tokenized as TRL's `DPOTrainer` tokenizes it: the prompt, then each completion, split
/// where the tokenized prompt stops being a prefix of the tokenized prompt + completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPair {
    /// `path:line` of the record.
    pub origin: String,
    /// The data source it came from.
    pub source: usize,
    /// Prompt ids.
    pub prompt: Vec<u32>,
    /// Chosen completion ids (ending with the end-of-turn or eos token).
    pub chosen: Vec<u32>,
    /// Rejected completion ids.
    pub rejected: Vec<u32>,
}

/// Which end of an over-long prompt + completion survives `max_length` (TRL's
/// `truncation_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairTruncation {
    /// Keep the first `max_length` tokens (TRL's default): the end of a long answer is cut.
    #[default]
    KeepStart,
    /// Keep the last `max_length` tokens: the start of a long prompt is cut.
    KeepEnd,
}

impl std::str::FromStr for PairTruncation {
    type Err = DataError;

    /// `keep_start` or `keep_end` (TRL's `truncation_mode` values).
    fn from_str(s: &str) -> Result<PairTruncation> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "keep_start" => Ok(PairTruncation::KeepStart),
            "keep_end" => Ok(PairTruncation::KeepEnd),
            other => Err(DataError::Invalid(format!(
                "pair truncation `{other}` is not one of keep_start, keep_end"
            ))),
        }
    }
}

impl EncodedPair {
    /// The pair as TRL's `DataCollatorForPreference` lays it out before padding: the chosen
    /// sequence (prompt + chosen) and the rejected one, each cut to `max_length` per
    /// `truncation`, labelled on its completion tokens only.
    pub fn rows(&self, max_length: Option<usize>, truncation: PairTruncation) -> [Sequence; 2] {
        let row = |completion: &[u32]| {
            let mut ids: Vec<u32> = self.prompt.iter().chain(completion).copied().collect();
            let mut labels: Vec<i64> = std::iter::repeat_n(IGNORE, self.prompt.len())
                .chain(completion.iter().map(|&t| t as i64))
                .collect();
            if let Some(max) = max_length
                && ids.len() > max
            {
                match truncation {
                    PairTruncation::KeepStart => {
                        ids.truncate(max);
                        labels.truncate(max);
                    }
                    PairTruncation::KeepEnd => {
                        ids.drain(..ids.len() - max);
                        labels.drain(..labels.len() - max);
                    }
                }
            }
            Sequence {
                positions: (0..ids.len() as u32).collect(),
                segments: vec![0; ids.len()],
                input_ids: ids,
                labels,
            }
        };
        [row(&self.chosen), row(&self.rejected)]
    }
}

/// A micro-batch of pairs as TRL concatenates it: every chosen row, then every rejected row,
/// right-padded to one width ([`Batch::collate`]).
///
/// ```
/// use medify_data::{EncodedPair, PairTruncation, pair_batch};
/// let pair = |p: Vec<u32>, c: Vec<u32>, r: Vec<u32>| EncodedPair { origin: String::new(), source: 0,
///     prompt: p, chosen: c, rejected: r };
/// let b = pair_batch(&[pair(vec![1, 2, 3], vec![4, 5], vec![6]), pair(vec![7, 8], vec![9], vec![10, 11])],
///     0, None, PairTruncation::KeepStart);
/// // TRL's DataCollatorForPreference example: the same ids and completion positions
/// assert_eq!(b.input_ids, vec![vec![1, 2, 3, 4, 5], vec![7, 8, 9, 0, 0], vec![1, 2, 3, 6, 0], vec![7, 8, 10, 11, 0]]);
/// assert_eq!(b.labels[1], vec![-100, -100, 9, -100, -100]);
/// ```
pub fn pair_batch(
    pairs: &[EncodedPair],
    pad_id: u32,
    max_length: Option<usize>,
    truncation: PairTruncation,
) -> Batch {
    let rows: Vec<[Sequence; 2]> = pairs
        .iter()
        .map(|p| p.rows(max_length, truncation))
        .collect();
    let ordered: Vec<Sequence> = rows
        .iter()
        .map(|[c, _]| c.clone())
        .chain(rows.iter().map(|[_, r]| r.clone()))
        .collect();
    Batch::collate(&ordered, pad_id)
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl ChatEncoder {
    /// Tokenizes a pair as TRL's `DPOTrainer` does. Conversations: the prompt rendered with the
    /// generation prompt, and the prompt followed by each completion rendered whole, all
    /// without added special tokens (the template writes them); the system prompt of
    /// [`with_system_prompt`](Self::with_system_prompt) is added to the prompt as for
    /// supervised data. Text: each completion gets the eos token appended unless it already
    /// ends with it, and the text is tokenized with the tokenizer's special tokens. The
    /// completion starts where the prompt's ids and the whole's diverge.
    pub fn encode_pair(&self, pair: &SourcedPair) -> Result<EncodedPair> {
        let encode = |text: &str, special: bool| -> Result<Vec<u32>> {
            Ok(self
                .tokenizer()
                .encode(text, special)
                .map_err(DataError::Tokenizer)?
                .get_ids()
                .to_vec())
        };
        let p = &pair.pair;
        let (prompt, with_chosen, with_rejected) = match (&p.prompt, &p.chosen, &p.rejected) {
            (Turns::Chat(prompt), Turns::Chat(chosen), Turns::Chat(rejected)) => {
                let prompt = self.prepare_messages(prompt);
                let special = self.special();
                let render = |msgs: &[Message], generation: bool| {
                    self.template().render(msgs, generation, &special)
                };
                let whole = |completion: &[Message]| -> Result<Vec<u32>> {
                    let msgs: Vec<Message> = prompt.iter().chain(completion).cloned().collect();
                    encode(&render(&msgs, false)?, false)
                };
                (
                    encode(&render(&prompt, true)?, false)?,
                    whole(chosen)?,
                    whole(rejected)?,
                )
            }
            (Turns::Text(prompt), Turns::Text(chosen), Turns::Text(rejected)) => {
                let eos = self.specials().eos.clone().unwrap_or_default();
                let ended = |t: &str| {
                    if t.ends_with(eos.as_str()) {
                        t.to_string()
                    } else {
                        format!("{t}{eos}")
                    }
                };
                (
                    encode(prompt, true)?,
                    encode(&format!("{prompt}{}", ended(chosen)), true)?,
                    encode(&format!("{prompt}{}", ended(rejected)), true)?,
                )
            }
            _ => {
                return Err(DataError::Invalid(format!(
                    "{}: prompt and completions must all be text or all be conversations",
                    pair.origin
                )));
            }
        };
        let n = common_prefix(&prompt, &with_chosen).min(common_prefix(&prompt, &with_rejected));
        Ok(EncodedPair {
            origin: pair.origin.clone(),
            source: pair.source,
            prompt: prompt[..n].to_vec(),
            chosen: with_chosen[n..].to_vec(),
            rejected: with_rejected[n..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<PreferenceReport> {
        read_preferences_from(
            text.as_bytes(),
            Path::new("p.jsonl"),
            FileKind::Jsonl,
            &ReadOptions::default(),
        )
    }

    #[test]
    fn every_trl_shape_reads() {
        let r = read(concat!(
            "{\"prompt\": \"The sky is\", \"chosen\": \" blue.\", \"rejected\": \" green.\"}\n",
            "{\"chosen\": [{\"role\": \"user\", \"content\": \"Sky?\"}, {\"role\": \"assistant\", \"content\": \"Blue.\"}], ",
            "\"rejected\": [{\"role\": \"user\", \"content\": \"Sky?\"}, {\"role\": \"assistant\", \"content\": \"Green.\"}]}\n",
            "{\"chosen\": \"The sky is blue.\", \"rejected\": \"The sky is green.\"}\n",
        ))
        .unwrap();
        assert_eq!(r.pairs.len(), 3);
        assert_eq!(r.pairs[0].pair.prompt, Turns::Text("The sky is".into()));
        let Turns::Chat(prompt) = &r.pairs[1].pair.prompt else {
            panic!()
        };
        assert_eq!(prompt, &[Message::new(Role::User, "Sky?")]);
        assert_eq!(
            r.pairs[1].pair.chosen,
            Turns::Chat(vec![Message::new(Role::Assistant, "Blue.")])
        );
        // TRL's extract_prompt on text keeps the space with the completions
        assert_eq!(r.pairs[2].pair.prompt, Turns::Text("The sky is".into()));
        assert_eq!(r.pairs[2].pair.chosen, Turns::Text(" blue.".into()));
    }

    #[test]
    fn bad_pairs_name_the_line_and_what_is_wrong() {
        let err = |t: &str| read(t).unwrap_err().to_string();
        let e = err(
            "{\"prompt\": \"q\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"prompt\": \"q\", \"chosen\": \"a\"}\n",
        );
        assert!(e.contains("p.jsonl:2") && e.contains("\"rejected\""), "{e}");
        let e = err("{\"prompt\": \"q\", \"chosen\": \"  \", \"rejected\": \"b\"}\n");
        assert!(e.contains("chosen completion is empty"), "{e}");
        let e = err("{\"prompt\": \"q\", \"chosen\": \"same\", \"rejected\": \"same\"}\n");
        assert!(e.contains("identical"), "{e}");
        let e = err(
            "{\"prompt\": [{\"role\": \"user\", \"content\": \"q\"}], \"chosen\": [{\"role\": \"user\", \"content\": \"a\"}], \"rejected\": [{\"role\": \"assistant\", \"content\": \"b\"}]}\n",
        );
        assert!(e.contains("must end with an assistant turn"), "{e}");
        let e = err(
            "{\"prompt\": \"q\", \"chosen\": [{\"role\": \"assistant\", \"content\": \"a\"}], \"rejected\": \"b\"}\n",
        );
        assert!(e.contains("both be text or both be conversations"), "{e}");
        let e = err("not json\n");
        assert!(
            e.contains("p.jsonl:1") && e.contains("malformed JSON"),
            "{e}"
        );
        // skipped and counted on request
        let lenient = ReadOptions {
            skip_invalid: true,
            ..ReadOptions::default()
        };
        let r = read_preferences_from(
            "{\"prompt\": \"q\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"chosen\": \"a\"}\n"
                .as_bytes(),
            Path::new("p.jsonl"),
            FileKind::Jsonl,
            &lenient,
        )
        .unwrap();
        assert_eq!((r.pairs.len(), r.skipped.len()), (1, 1));
    }

    #[test]
    fn csv_rows_are_text_pairs() {
        let csv =
            "question,good,bad\nWhat is a fever?,A raised temperature.,Nothing to worry about.\n";
        let options = ReadOptions {
            fields: FieldMap::parse("prompt=question,chosen=good,rejected=bad").unwrap(),
            ..ReadOptions::default()
        };
        let r = read_preferences_from(csv.as_bytes(), Path::new("p.csv"), FileKind::Csv, &options)
            .unwrap();
        assert_eq!(r.pairs[0].origin, "p.csv:2");
        assert_eq!(
            r.pairs[0].pair.rejected,
            Turns::Text("Nothing to worry about.".into())
        );
    }
}
