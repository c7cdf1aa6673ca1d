//! Reading the formats medical Q&A data comes in: JSONL (OpenAI messages, ShareGPT, Alpaca,
//! question/answer, plain text), CSV with a header, and MedQuAD's original XML.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{DataError, Result, io_err};
use crate::record::{Example, Message, Role, SourcedExample};

/// The shape of the records in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// Decide for each record from its fields, so one file may mix shapes (MedQuAD Q&A,
    /// Alpaca and messages records side by side).
    #[default]
    Auto,
    /// `{"messages": [{"role", "content"}…]}` (OpenAI style).
    Messages,
    /// `{"conversations": [{"from", "value"}…]}` (ShareGPT).
    ShareGpt,
    /// `{"instruction", "input", "output"}`: user = instruction (+ "\n\n" + input), assistant = output.
    Alpaca,
    /// `{"question", "answer"}` (MedQuAD; CSV columns such as Patient/Doctor map here).
    QuestionAnswer,
    /// `{"text"}`: trained on in full.
    Text,
}

impl InputFormat {
    /// Parses `auto|messages|sharegpt|alpaca|qa|text`.
    pub fn parse(name: &str) -> Option<InputFormat> {
        match name.to_ascii_lowercase().as_str() {
            "auto" => Some(InputFormat::Auto),
            "messages" | "openai" | "chat" => Some(InputFormat::Messages),
            "sharegpt" | "conversations" => Some(InputFormat::ShareGpt),
            "alpaca" | "instruction" => Some(InputFormat::Alpaca),
            "qa" | "question-answer" | "medquad" => Some(InputFormat::QuestionAnswer),
            "text" | "plain" => Some(InputFormat::Text),
            _ => None,
        }
    }

    /// The name [`parse`](Self::parse) reads first for this format.
    pub fn name(self) -> &'static str {
        match self {
            InputFormat::Auto => "auto",
            InputFormat::Messages => "messages",
            InputFormat::ShareGpt => "sharegpt",
            InputFormat::Alpaca => "alpaca",
            InputFormat::QuestionAnswer => "qa",
            InputFormat::Text => "text",
        }
    }
}

/// Renames of the fields each format reads, e.g. `question=Patient,answer=Doctor` for a CSV.
/// Canonical names: `messages role content conversations from value instruction input output
/// question answer text system description`, and for preference pairs `prompt chosen rejected`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct FieldMap(BTreeMap<String, String>);

const CANONICAL: [&str; 17] = [
    "messages",
    "role",
    "content",
    "conversations",
    "from",
    "value",
    "instruction",
    "input",
    "output",
    "question",
    "answer",
    "text",
    "system",
    "description",
    "prompt",
    "chosen",
    "rejected",
];

impl FieldMap {
    /// Parses `canonical=actual,canonical=actual`.
    ///
    /// ```
    /// use medify_data::FieldMap;
    /// let map = FieldMap::parse("question=Patient, answer=Doctor").unwrap();
    /// assert_eq!(map.get("question"), "Patient");
    /// assert_eq!(map.get("text"), "text");
    /// assert!(FieldMap::parse("questoin=Q").is_err());
    /// ```
    pub fn parse(spec: &str) -> Result<FieldMap> {
        let mut map = BTreeMap::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                DataError::Invalid(format!(
                    "field mapping {part:?} must look like question=Patient"
                ))
            })?;
            let k = k.trim();
            if !CANONICAL.contains(&k) {
                return Err(DataError::Invalid(format!(
                    "field mapping: unknown field {k:?}; known: {}",
                    CANONICAL.join(", ")
                )));
            }
            map.insert(k.to_string(), v.trim().to_string());
        }
        Ok(FieldMap(map))
    }

    /// The actual name of a canonical field.
    pub fn get<'a>(&'a self, canonical: &'a str) -> &'a str {
        self.0.get(canonical).map_or(canonical, String::as_str)
    }
}

/// How to read a data file.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Record shape; `Auto` detects it per record.
    pub format: InputFormat,
    /// Field renames.
    pub fields: FieldMap,
    /// Skip (and count) records with a missing field, unknown role or empty conversation
    /// instead of failing. Malformed JSON or CSV is always an error.
    pub skip_invalid: bool,
}

/// What reading found.
#[derive(Debug, Clone, Default)]
pub struct ReadReport {
    /// Records read.
    pub records: Vec<SourcedExample>,
    /// Records left out, with where and why (e.g. MedQuAD answers removed upstream).
    pub skipped: Vec<(String, String)>,
    /// Records read per shape, in the order each shape first appeared.
    pub formats: Vec<(InputFormat, usize)>,
    /// Records read per file (one entry for a file, one per data file for a directory).
    pub files: Vec<(PathBuf, usize)>,
}

impl ReadReport {
    /// Counts one record read in `format`.
    fn count(&mut self, format: InputFormat) {
        match self.formats.iter_mut().find(|(f, _)| *f == format) {
            Some((_, n)) => *n += 1,
            None => self.formats.push((format, 1)),
        }
    }

    /// Marks every record as coming from data source `source` of a mix.
    pub fn set_source(&mut self, source: usize) {
        for r in &mut self.records {
            r.source = source;
        }
    }
}

/// The extensions a directory's data files are read by (JSONL, CSV, TSV, MedQuAD XML).
pub const DATA_FILE_EXTENSIONS: [&str; 4] = ["jsonl", "csv", "tsv", "xml"];

/// The data files under `dir`, in subdirectories too, sorted by path: files whose extension is
/// one of [`DATA_FILE_EXTENSIONS`], hidden files and directories left out. Reading a directory
/// and fingerprinting it both list it here, so they always see the same files.
pub fn data_files(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            if path.is_dir() {
                walk(&path, out)?;
            } else if path.extension().is_some_and(|e| {
                DATA_FILE_EXTENSIONS
                    .iter()
                    .any(|k| e.eq_ignore_ascii_case(k))
            }) {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.sort();
    Ok(files)
}

/// How one file's bytes are laid out, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// One JSON object per line (any other extension).
    Jsonl,
    /// Comma-separated with a header row (`.csv`).
    Csv,
    /// Tab-separated with a header row (`.tsv`).
    Tsv,
    /// MedQuAD's XML (`.xml`).
    MedquadXml,
}

impl FileKind {
    /// The kind a file's extension names (case-insensitive); JSONL when it names none of them.
    pub fn from_path(path: &Path) -> FileKind {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "csv" => FileKind::Csv,
            "tsv" => FileKind::Tsv,
            "xml" => FileKind::MedquadXml,
            _ => FileKind::Jsonl,
        }
    }
}

/// Reads a JSONL file, a CSV file (by extension `.csv`/`.tsv`), a MedQuAD XML file, or a
/// directory of them (see [`data_files`]; each file is read by its extension, and
/// [`ReadReport::files`] counts the records of each).
///
/// ```
/// use medify_data::{read_records, ReadOptions, Example};
/// let dir = std::env::temp_dir().join(format!("medify-read-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("qa.jsonl");
/// std::fs::write(&path, "{\"question\": \"What is asthma?\", \"answer\": \"A lung disease.\"}\n").unwrap();
/// let report = read_records(&path, &ReadOptions::default()).unwrap();
/// assert_eq!(report.records[0].example, Example::qa("What is asthma?", "A lung disease."));
/// assert_eq!(report.records[0].origin, format!("{}:1", path.display()));
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub fn read_records(path: &Path, options: &ReadOptions) -> Result<ReadReport> {
    let mut report = ReadReport::default();
    for f in files_of(path)? {
        let text = std::fs::read_to_string(&f).map_err(io_err(&f))?;
        read_text(&text, &f, FileKind::from_path(&f), options, &mut report)?;
    }
    finish(report, path)
}

/// The files a data path stands for: the file itself, or a directory's data files in order
/// (see [`data_files`]; a directory without any is an error naming it). Records and preference
/// pairs are both read from these.
pub(crate) fn files_of(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let files = data_files(path)?;
    if files.is_empty() {
        return Err(DataError::File {
            path: path.to_path_buf(),
            message: format!(
                "directory holds no data files (.{})",
                DATA_FILE_EXTENSIONS.join(", .")
            ),
        });
    }
    Ok(files)
}

/// Reads records from any reader (an embedded string, a network body, stdin); `name` stands
/// for the source in errors and in each record's origin.
///
/// ```
/// use medify_data::{read_records_from, FileKind, ReadOptions, Example};
/// let csv = "question,answer\nWhat is asthma?,A lung disease.\n";
/// let report = read_records_from(csv.as_bytes(), "upload.csv".as_ref(), FileKind::Csv,
///     &ReadOptions::default()).unwrap();
/// assert_eq!(report.records[0].example, Example::qa("What is asthma?", "A lung disease."));
/// assert_eq!(report.records[0].origin, "upload.csv:2");
/// ```
pub fn read_records_from(
    mut reader: impl std::io::Read,
    name: &Path,
    kind: FileKind,
    options: &ReadOptions,
) -> Result<ReadReport> {
    let mut text = String::new();
    reader.read_to_string(&mut text).map_err(io_err(name))?;
    let mut report = ReadReport::default();
    read_text(&text, name, kind, options, &mut report)?;
    finish(report, name)
}

fn read_text(
    text: &str,
    path: &Path,
    kind: FileKind,
    options: &ReadOptions,
    report: &mut ReadReport,
) -> Result<()> {
    let before = report.records.len();
    match kind {
        FileKind::MedquadXml => read_medquad_xml(text, path, report),
        _ => {
            let mut last = None;
            each_record(text, path, kind, |line, obj| {
                add_record(path, line, obj, &mut last, options, report)
            })
        }
    }?;
    report
        .files
        .push((path.to_path_buf(), report.records.len() - before));
    Ok(())
}

fn finish(report: ReadReport, path: &Path) -> Result<ReadReport> {
    if report.records.is_empty() {
        return Err(DataError::File {
            path: path.to_path_buf(),
            message: format!("no usable records ({} skipped)", report.skipped.len()),
        });
    }
    Ok(report)
}

/// Calls `record` with each JSON object of a JSONL text, or each row of a CSV/TSV text as an
/// object of its header's columns, with its line number; malformed lines are errors naming the
/// file and line. Supervised records and preference pairs are both read through here.
pub(crate) fn each_record(
    text: &str,
    path: &Path,
    kind: FileKind,
    mut record: impl FnMut(usize, &Map<String, Value>) -> Result<()>,
) -> Result<()> {
    let bad = |line: usize, message: String| DataError::Record {
        path: path.to_path_buf(),
        line,
        message,
    };
    let delimiter = match kind {
        FileKind::Jsonl => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let value: Value = serde_json::from_str(line)
                    .map_err(|e| bad(i + 1, format!("malformed JSON: {e}")))?;
                let Value::Object(obj) = value else {
                    return Err(bad(i + 1, "expected a JSON object per line".into()));
                };
                record(i + 1, &obj)?;
            }
            return Ok(());
        }
        FileKind::Csv => b',',
        FileKind::Tsv => b'\t',
        FileKind::MedquadXml => {
            return Err(DataError::File {
                path: path.to_path_buf(),
                message: "MedQuAD XML is read by its own reader".into(),
            });
        }
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| DataError::File {
            path: path.to_path_buf(),
            message: format!("cannot read the header row: {e}"),
        })?
        .clone();
    for (i, row) in reader.records().enumerate() {
        let row = row.map_err(|e| {
            bad(
                e.position().map_or(i + 2, |p| p.line() as usize),
                format!("malformed CSV: {e}"),
            )
        })?;
        let line = row.position().map_or(i + 2, |p| p.line() as usize);
        let obj: Map<String, Value> = headers
            .iter()
            .zip(row.iter())
            .map(|(h, v)| (h.to_string(), Value::String(v.to_string())))
            .collect();
        record(line, &obj)?;
    }
    Ok(())
}

fn read_medquad_xml(text: &str, path: &Path, report: &mut ReadReport) -> Result<()> {
    let doc = roxmltree::Document::parse(text).map_err(|e| DataError::File {
        path: path.to_path_buf(),
        message: format!("malformed XML: {e}"),
    })?;
    let origin = path.display().to_string();
    let mut found = false;
    for pair in doc.descendants().filter(|n| n.has_tag_name("QAPair")) {
        found = true;
        let child_text = |tag: &str| -> String {
            pair.children()
                .find(|c| c.has_tag_name(tag))
                .map(|c| c.descendants().filter_map(|d| d.text()).collect::<String>())
                .unwrap_or_default()
        };
        let pid = pair.attribute("pid").unwrap_or("?");
        let where_ = format!("{origin} (QAPair {pid})");
        let (q, a) = (child_text("Question"), child_text("Answer"));
        if q.trim().is_empty() || a.trim().is_empty() {
            report
                .skipped
                .push((where_, "empty question or answer".to_string()));
            continue;
        }
        report.records.push(SourcedExample {
            origin: where_,
            example: Example::qa(q.trim(), a.trim()),
            source: 0,
        });
        report.count(InputFormat::QuestionAnswer);
    }
    if !found {
        return Err(DataError::File {
            path: path.to_path_buf(),
            message: "no <QAPair> elements (not a MedQuAD document?)".into(),
        });
    }
    Ok(())
}

/// Finds a field by its mapped name, then case-insensitively.
pub(crate) fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn detect(obj: &Map<String, Value>, fields: &FieldMap) -> Option<InputFormat> {
    let has = |canonical: &str| field(obj, fields.get(canonical)).is_some();
    if has("messages") {
        Some(InputFormat::Messages)
    } else if has("conversations") {
        Some(InputFormat::ShareGpt)
    } else if has("instruction") && has("output") {
        Some(InputFormat::Alpaca)
    } else if (has("question") && has("answer"))
        || (field(obj, "patient").is_some() && field(obj, "doctor").is_some())
    {
        Some(InputFormat::QuestionAnswer)
    } else if has("text") {
        Some(InputFormat::Text)
    } else {
        None
    }
}

/// Reads one record in `options.format`, or, with `Auto`, in the shape its fields show. A
/// record whose shape cannot be told is read as the file's previous record was, so that a
/// record missing a field gets that field named rather than "cannot tell".
fn add_record(
    path: &Path,
    line: usize,
    obj: &Map<String, Value>,
    last: &mut Option<InputFormat>,
    options: &ReadOptions,
    report: &mut ReadReport,
) -> Result<()> {
    let origin = format!("{}:{line}", path.display());
    let format = match options.format {
        InputFormat::Auto => match detect(obj, &options.fields).or(*last) {
            Some(f) => f,
            None => {
                let pairs = ["chosen", "rejected"]
                    .iter()
                    .all(|k| obj.keys().any(|f| f.eq_ignore_ascii_case(k)));
                return Err(DataError::Record {
                    path: path.to_path_buf(),
                    line,
                    message: format!(
                        "cannot tell the format from fields {:?}; expected messages, conversations, instruction/output, question/answer or text (or pass a format and a field mapping){}",
                        obj.keys().collect::<Vec<_>>(),
                        if pairs {
                            "; these look like preference pairs: train on them with a preference method (--method dpo, ipo, orpo or simpo; preview --pairs)"
                        } else {
                            ""
                        }
                    ),
                });
            }
        },
        given => given,
    };
    *last = Some(format);
    match parse_record(obj, format, &options.fields) {
        Ok(example) => {
            report.records.push(SourcedExample {
                origin,
                example,
                source: 0,
            });
            report.count(format);
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
}

fn string_field(obj: &Map<String, Value>, name: &str) -> std::result::Result<String, String> {
    match field(obj, name) {
        None | Some(Value::Null) => Err(format!("missing field {name:?}")),
        Some(Value::String(s)) => Ok(s.clone()),
        // A number or `true` where text belongs is a mistake in the file, not text to train on.
        Some(v) => Err(format!("field {name:?} must be a string, got {v}")),
    }
}

/// Message content as a string, or OpenAI's list of `{"type": "text", "text"}` parts.
fn content_of(v: Option<&Value>, name: &str) -> std::result::Result<String, String> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p.get("text") {
                Some(Value::String(s)) => Ok(s.as_str()),
                _ => Err(format!(
                    "field {name:?}: only text parts are supported, got {p}"
                )),
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(|t| t.concat()),
        None | Some(Value::Null) => Err(format!("missing field {name:?}")),
        Some(v) => Err(format!("field {name:?} must be a string, got {v}")),
    }
}

/// A list of `{role, content}` turns (under `role_key`/`content_key`), named `list_name` in
/// errors: the one reader of conversations, for records and for preference pairs.
pub(crate) fn turns(
    list: &Value,
    list_name: &str,
    role_key: &str,
    content_key: &str,
) -> std::result::Result<Vec<Message>, String> {
    let items = list
        .as_array()
        .ok_or_else(|| format!("field {list_name:?} must be a list of turns"))?;
    if items.is_empty() {
        return Err(format!(
            "empty conversation (field {list_name:?} has no turns)"
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let obj = t
                .as_object()
                .ok_or_else(|| format!("{list_name}[{i}] must be an object"))?;
            let role_name = match field(obj, role_key) {
                Some(Value::String(s)) => s.as_str(),
                _ => return Err(format!("{list_name}[{i}]: missing field {role_key:?}")),
            };
            let role = Role::parse(role_name).ok_or_else(|| {
                format!("{list_name}[{i}]: unknown role {role_name:?} (system, user/human, assistant/gpt/model)")
            })?;
            let content = content_of(field(obj, content_key), &format!("{list_name}[{i}].{content_key}"))?;
            Ok(Message::new(role, content))
        })
        .collect()
}

fn parse_record(
    obj: &Map<String, Value>,
    format: InputFormat,
    f: &FieldMap,
) -> std::result::Result<Example, String> {
    let system = match field(obj, f.get("system")) {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            Some(Message::new(Role::System, s.clone()))
        }
        _ => None,
    };
    let with_system = |mut msgs: Vec<Message>| {
        if let Some(s) = &system
            && msgs.first().is_none_or(|m| m.role != Role::System)
        {
            msgs.insert(0, s.clone());
        }
        Example::Chat(msgs)
    };
    match format {
        InputFormat::Auto => Err("format not decided".into()),
        InputFormat::Messages => {
            let key = f.get("messages");
            let list = field(obj, key).ok_or_else(|| format!("missing field {key:?}"))?;
            turns(list, key, f.get("role"), f.get("content")).map(with_system)
        }
        InputFormat::ShareGpt => {
            let key = f.get("conversations");
            let list = field(obj, key).ok_or_else(|| format!("missing field {key:?}"))?;
            turns(list, key, f.get("from"), f.get("value")).map(with_system)
        }
        InputFormat::Alpaca => {
            let instruction = string_field(obj, f.get("instruction"))?;
            let input = match field(obj, f.get("input")) {
                None | Some(Value::Null) => String::new(),
                Some(_) => string_field(obj, f.get("input"))?,
            };
            let output = string_field(obj, f.get("output"))?;
            let user = if input.trim().is_empty() {
                instruction
            } else {
                format!("{instruction}\n\n{input}")
            };
            Ok(with_system(vec![
                Message::new(Role::User, user),
                Message::new(Role::Assistant, output),
            ]))
        }
        InputFormat::QuestionAnswer => {
            let pick = |canonical: &str, alias: &str| {
                let name = f.get(canonical);
                if field(obj, name).is_none() && field(obj, alias).is_some() {
                    string_field(obj, alias)
                } else {
                    string_field(obj, name)
                }
            };
            let q = pick("question", "patient")?;
            let a = pick("answer", "doctor")?;
            if q.trim().is_empty() || a.trim().is_empty() {
                return Err("empty question or answer".into());
            }
            Ok(with_system(vec![
                Message::new(Role::User, q),
                Message::new(Role::Assistant, a),
            ]))
        }
        InputFormat::Text => {
            let t = string_field(obj, f.get("text"))?;
            if t.is_empty() {
                return Err("empty text".into());
            }
            Ok(Example::Text(t))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn parse(v: Value) -> std::result::Result<Example, String> {
        let o = obj(v);
        let fmt = detect(&o, &FieldMap::default()).ok_or("undetected")?;
        parse_record(&o, fmt, &FieldMap::default())
    }

    #[test]
    fn every_format_becomes_a_conversation() {
        let qa = Example::qa("Q?", "A.");
        assert_eq!(
            parse(serde_json::json!({"question": "Q?", "answer": "A."})),
            Ok(qa.clone())
        );
        assert_eq!(
            parse(
                serde_json::json!({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": [{"type": "text", "text": "A."}]}]})
            ),
            Ok(qa.clone())
        );
        assert_eq!(
            parse(
                serde_json::json!({"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]})
            ),
            Ok(qa.clone())
        );
        assert_eq!(
            parse(serde_json::json!({"instruction": "Q?", "input": "", "output": "A."})),
            Ok(qa)
        );
        assert_eq!(
            parse(serde_json::json!({"instruction": "Explain", "input": "asthma", "output": "A."})),
            Ok(Example::qa("Explain\n\nasthma", "A."))
        );
        assert_eq!(
            parse(serde_json::json!({"Description": "d", "Patient": "Q?", "Doctor": "A."})),
            Ok(Example::qa("Q?", "A."))
        );
        assert_eq!(
            parse(serde_json::json!({"text": "t"})),
            Ok(Example::Text("t".into()))
        );
        let with_sys =
            parse(serde_json::json!({"system": "Be brief.", "question": "Q?", "answer": "A."}))
                .unwrap();
        let Example::Chat(m) = with_sys else { panic!() };
        assert_eq!(m[0], Message::new(Role::System, "Be brief."));
    }

    #[test]
    fn one_file_may_mix_record_shapes() {
        let text = concat!(
            "{\"question\": \"What is anemia?\", \"answer\": \"Too few red cells.\"}\n",
            "{\"instruction\": \"Explain\", \"input\": \"asthma\", \"output\": \"A.\"}\n",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"Q?\"}, {\"role\": \"assistant\", \"content\": \"A.\"}]}\n",
            "{\"question\": \"Is it serious?\", \"answer\": \"It can be.\"}\n",
        );
        let read = read_records_from(
            std::io::Cursor::new(text),
            Path::new("mixed.jsonl"),
            FileKind::Jsonl,
            &ReadOptions::default(),
        )
        .unwrap();
        assert_eq!(read.records.len(), 4);
        assert_eq!(
            read.formats,
            [
                (InputFormat::QuestionAnswer, 2),
                (InputFormat::Alpaca, 1),
                (InputFormat::Messages, 1)
            ]
        );
        assert_eq!(
            read.records[1].example,
            Example::qa("Explain\n\nasthma", "A.")
        );
        let names: Vec<&str> = read.formats.iter().map(|(f, _)| f.name()).collect();
        assert_eq!(names, ["qa", "alpaca", "messages"]);
        assert!(names.iter().all(|n| InputFormat::parse(n).is_some()));
        // A record of no shape after a Q&A one is read as Q&A, and its missing field is named.
        let text = "{\"question\": \"Q?\", \"answer\": \"A.\"}\n{\"questoin\": \"Q?\"}\n";
        let err = read_records_from(
            std::io::Cursor::new(text),
            Path::new("typo.jsonl"),
            FileKind::Jsonl,
            &ReadOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("typo.jsonl:2") && err.contains("\"question\""),
            "{err}"
        );
        // Preference pairs given as records: the error says what they are and what reads them.
        let pair = "{\"prompt\": \"Q?\", \"chosen\": \"A.\", \"rejected\": \"B.\"}\n";
        let err = read_records_from(
            std::io::Cursor::new(pair),
            Path::new("pairs.jsonl"),
            FileKind::Jsonl,
            &ReadOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("pairs.jsonl:1") && err.contains("--method dpo"),
            "{err}"
        );
    }

    #[test]
    fn a_directory_reads_every_data_file_under_it_by_extension() {
        let dir = std::env::temp_dir().join(format!("medify-data-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("xml").join(".hidden")).unwrap();
        std::fs::write(
            dir.join("a.jsonl"),
            "{\"question\": \"Q1?\", \"answer\": \"A1.\"}\n{\"text\": \"plain\"}\n",
        )
        .unwrap();
        std::fs::write(dir.join("b.CSV"), "question,answer\nQ2?,A2.\n").unwrap();
        std::fs::write(
            dir.join("xml").join("c.xml"),
            "<Document><QAPairs><QAPair pid=\"1\"><Question>Q3?</Question><Answer>A3.</Answer></QAPair></QAPairs></Document>",
        )
        .unwrap();
        std::fs::write(dir.join("README.md"), "not data").unwrap();
        std::fs::write(dir.join("xml").join(".hidden").join("d.jsonl"), "broken").unwrap();
        let read = read_records(&dir, &ReadOptions::default()).unwrap();
        let per_file: Vec<(String, usize)> = read
            .files
            .iter()
            .map(|(p, n)| (p.strip_prefix(&dir).unwrap().display().to_string(), *n))
            .collect();
        assert_eq!(
            per_file,
            [
                ("a.jsonl".to_string(), 2),
                ("b.CSV".to_string(), 1),
                (format!("xml{}c.xml", std::path::MAIN_SEPARATOR), 1)
            ]
        );
        assert_eq!(read.records[2].example, Example::qa("Q2?", "A2."));
        assert_eq!(data_files(&dir).unwrap().len(), 3);
        // a bad file in the directory is named
        std::fs::write(dir.join("e.jsonl"), "{\"question\": 1}\n").unwrap();
        let err = read_records(&dir, &ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("e.jsonl:1"), "{err}");
        let empty = dir.join("xml").join("empty");
        std::fs::create_dir_all(empty.join(".git")).unwrap();
        std::fs::write(empty.join(".git").join("x.jsonl"), "{}").unwrap();
        let err = read_records(&empty, &ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no data files"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_records_say_what_is_wrong() {
        let e = parse(serde_json::json!({"messages": []})).unwrap_err();
        assert!(e.contains("empty conversation"), "{e}");
        let e =
            parse(serde_json::json!({"messages": [{"role": "tool", "content": "x"}]})).unwrap_err();
        assert!(e.contains("unknown role \"tool\""), "{e}");
        let e = parse(serde_json::json!({"messages": [{"role": "user"}]})).unwrap_err();
        assert!(e.contains("missing field") && e.contains("content"), "{e}");
        let o = obj(serde_json::json!({"question": "Q?"}));
        let e = parse_record(&o, InputFormat::QuestionAnswer, &FieldMap::default()).unwrap_err();
        assert!(e.contains("missing field \"answer\""), "{e}");
        for wrong in [
            serde_json::json!({"question": 5, "answer": "A."}),
            serde_json::json!({"question": "Q?", "answer": true}),
        ] {
            let e = parse_record(
                &obj(wrong),
                InputFormat::QuestionAnswer,
                &FieldMap::default(),
            )
            .unwrap_err();
            assert!(e.contains("must be a string, got"), "{e}");
        }
        let e = parse(serde_json::json!({"text": 12})).unwrap_err();
        assert!(e.contains("field \"text\" must be a string, got 12"), "{e}");
    }

    #[test]
    fn field_maps_rename() {
        let f = FieldMap::parse("question=q,answer=a").unwrap();
        let o = obj(serde_json::json!({"q": "Q?", "a": "A."}));
        assert_eq!(detect(&o, &f), Some(InputFormat::QuestionAnswer));
        assert_eq!(
            parse_record(&o, InputFormat::QuestionAnswer, &f),
            Ok(Example::qa("Q?", "A."))
        );
    }
}
