//! Measuring the triage on labelled messages: per-flag recall, false alarms on near-misses, a
//! confusion table and the misses themselves (`cargo xtask triage`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::flags::{RedFlag, TriageLevel, UnknownFlag};
use super::{Triage, Triager};

/// The labelled messages the standard classifier is trained on (`crates/medify-safety/data/train.jsonl`).
pub const TRAINING_SET: &str = include_str!("../data/train.jsonl");

/// The held-out labelled messages (`crates/medify-safety/data/heldout.jsonl`): never trained on, used to
/// report recall and false alarms.
pub const HELD_OUT_SET: &str = include_str!("../data/heldout.jsonl");

/// One labelled message: what a person wrote and the flag it should raise (`None`: a
/// near-miss that must not raise any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelledMessage {
    /// The message.
    pub text: String,
    /// The flag it should raise.
    pub label: Option<RedFlag>,
    /// Its line in the file (1-based).
    pub line: usize,
}

/// A labelled set that cannot be read, with the file and line.
#[derive(Debug, thiserror::Error)]
pub enum TriageDataError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a JSON object with string fields `text` and `label`.
    #[error("{source_name}:{line}: {reason}")]
    Line {
        /// The file.
        source_name: String,
        /// The line (1-based).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A label that names no flag.
    #[error("{source_name}:{line}: field `label`: {source}")]
    Label {
        /// The file.
        source_name: String,
        /// The line (1-based).
        line: usize,
        /// The unknown name.
        source: UnknownFlag,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    text: String,
    label: String,
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
}

/// Parses a labelled set: JSON Lines of `{"text": "...", "label": "stroke" | "none"}` (an optional
/// `note` is allowed). Blank lines are skipped; `source_name` names the file in errors.
///
/// ```
/// use medify_safety::{RedFlag, parse_labelled};
/// let set = parse_labelled("{\"text\": \"I can't breathe\", \"label\": \"breathing\"}\n", "x.jsonl").unwrap();
/// assert_eq!(set[0].label, Some(RedFlag::Breathing));
/// let err = parse_labelled("{\"text\": \"hi\", \"label\": \"flu\"}", "x.jsonl").unwrap_err();
/// assert!(err.to_string().starts_with("x.jsonl:1: field `label`"));
/// ```
pub fn parse_labelled(
    text: &str,
    source_name: &str,
) -> Result<Vec<LabelledMessage>, TriageDataError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let record: Record = serde_json::from_str(raw).map_err(|e| TriageDataError::Line {
            source_name: source_name.to_string(),
            line,
            reason: format!("expected {{\"text\": string, \"label\": string}}: {e}"),
        })?;
        if record.text.trim().is_empty() {
            return Err(TriageDataError::Line {
                source_name: source_name.to_string(),
                line,
                reason: "field `text` is empty".into(),
            });
        }
        let label = match record.label.as_str() {
            "none" => None,
            name => Some(name.parse().map_err(|source| TriageDataError::Label {
                source_name: source_name.to_string(),
                line,
                source,
            })?),
        };
        out.push(LabelledMessage {
            text: record.text,
            label,
            line,
        });
    }
    Ok(out)
}

/// The embedded training part ([`TRAINING_SET`]), parsed.
pub fn training_messages() -> Vec<LabelledMessage> {
    parse_labelled(TRAINING_SET, "crates/medify-safety/data/train.jsonl")
        .expect("the embedded training set parses (tested)")
}

/// The embedded held-out part ([`HELD_OUT_SET`]), parsed.
pub fn held_out_messages() -> Vec<LabelledMessage> {
    parse_labelled(HELD_OUT_SET, "crates/medify-safety/data/heldout.jsonl")
        .expect("the embedded held-out set parses (tested)")
}

/// Reads a labelled set from a file (see [`parse_labelled`]).
pub fn read_labelled(path: &Path) -> Result<Vec<LabelledMessage>, TriageDataError> {
    let text = std::fs::read_to_string(path).map_err(|source| TriageDataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_labelled(&text, &path.display().to_string())
}

/// Recall of one flag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagRecall {
    /// The flag.
    pub flag: RedFlag,
    /// Its level.
    pub level: TriageLevel,
    /// Messages labelled with it.
    pub messages: usize,
    /// Of those, how many raised this very flag.
    pub flagged: usize,
    /// Of those, how many were routed at the flag's level or higher (by any flag).
    pub routed: usize,
    /// `flagged / messages`.
    pub recall: f64,
}

/// A message the triage got wrong: a missed flag, under-routing, or a false alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Miss {
    /// Its line in the labelled file.
    pub line: usize,
    /// The message.
    pub text: String,
    /// Its label (`None`: a near-miss).
    pub label: Option<RedFlag>,
    /// What the triage raised.
    pub predicted: Vec<RedFlag>,
    /// The level it routed to.
    pub level: Option<TriageLevel>,
}

/// How the triage did on a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriageReport {
    /// Messages scored.
    pub messages: usize,
    /// Emergency-labelled messages routed to emergency help, over all emergency-labelled ones.
    pub emergency_recall: f64,
    /// Urgent-labelled messages routed to a clinician today or to emergency help.
    pub urgent_recall: f64,
    /// Urgent-labelled messages routed at exactly the urgent level.
    pub urgent_exact: f64,
    /// Near-misses (label `none`) that raised anything, over all near-misses.
    pub false_alarm_rate: f64,
    /// Near-misses that raised anything.
    pub false_alarms: usize,
    /// Near-misses routed to emergency help.
    pub false_emergencies: usize,
    /// Near-misses in the set.
    pub near_misses: usize,
    /// Per flag, in [`RedFlag::ALL`] order (flags without messages left out).
    pub per_flag: Vec<FlagRecall>,
    /// Level confusion: true level ("none", "urgent", "emergency") → routed level → count.
    pub level_confusion: BTreeMap<String, BTreeMap<String, usize>>,
    /// Flag confusion: label → each flag raised (or "none") → count.
    pub flag_confusion: BTreeMap<String, BTreeMap<String, usize>>,
    /// Missed flags, under-routed messages and false alarms.
    pub misses: Vec<Miss>,
    /// Mean time per message, in microseconds (after the first, which may train the classifier).
    pub mean_micros: f64,
}

fn level_name(level: Option<TriageLevel>) -> &'static str {
    level.map_or("none", TriageLevel::name)
}

fn ratio(n: usize, d: usize) -> f64 {
    if d == 0 { 1.0 } else { n as f64 / d as f64 }
}

/// Runs `triager` over `messages` and scores it.
pub fn evaluate_triage(triager: &Triager, messages: &[LabelledMessage]) -> TriageReport {
    if let Some(first) = messages.first() {
        triager.assess(&first.text); // the first call compiles the rules; not timed
    }
    let start = Instant::now();
    let results: Vec<Option<Triage>> = messages.iter().map(|m| triager.assess(&m.text)).collect();
    let mean_micros = start.elapsed().as_secs_f64() * 1e6 / messages.len().max(1) as f64;

    let mut per_flag: BTreeMap<RedFlag, FlagRecall> = BTreeMap::new();
    let mut level_confusion: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut flag_confusion: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut misses = Vec::new();
    let (mut emergencies, mut emergencies_routed) = (0, 0);
    let (mut urgents, mut urgents_routed, mut urgents_exact) = (0, 0, 0);
    let (mut near, mut alarms, mut false_emergencies) = (0, 0, 0);
    for (m, result) in messages.iter().zip(&results) {
        let predicted = result.as_ref().map(|t| t.flags.clone()).unwrap_or_default();
        let level = result.as_ref().map(|t| t.level);
        let truth = m.label.map(|f| f.level());
        *level_confusion
            .entry(level_name(truth).to_string())
            .or_default()
            .entry(level_name(level).to_string())
            .or_default() += 1;
        let row = flag_confusion
            .entry(m.label.map_or("none", RedFlag::name).to_string())
            .or_default();
        if predicted.is_empty() {
            *row.entry("none".into()).or_default() += 1;
        }
        for f in &predicted {
            *row.entry(f.name().into()).or_default() += 1;
        }
        let wrong = match m.label {
            None => {
                near += 1;
                if let Some(l) = level {
                    alarms += 1;
                    false_emergencies += usize::from(l == TriageLevel::Emergency);
                }
                level.is_some()
            }
            Some(flag) => {
                let flagged = predicted.contains(&flag);
                let routed = level.is_some_and(|l| l >= flag.level());
                let entry = per_flag.entry(flag).or_insert(FlagRecall {
                    flag,
                    level: flag.level(),
                    messages: 0,
                    flagged: 0,
                    routed: 0,
                    recall: 0.0,
                });
                entry.messages += 1;
                entry.flagged += usize::from(flagged);
                entry.routed += usize::from(routed);
                match flag.level() {
                    TriageLevel::Emergency => {
                        emergencies += 1;
                        emergencies_routed += usize::from(routed);
                    }
                    TriageLevel::Urgent => {
                        urgents += 1;
                        urgents_routed += usize::from(routed);
                        urgents_exact += usize::from(level == Some(TriageLevel::Urgent));
                    }
                }
                !flagged || !routed
            }
        };
        if wrong {
            misses.push(Miss {
                line: m.line,
                text: m.text.clone(),
                label: m.label,
                predicted,
                level,
            });
        }
    }
    let per_flag = per_flag
        .into_values()
        .map(|mut r| {
            r.recall = ratio(r.flagged, r.messages);
            r
        })
        .collect();
    TriageReport {
        messages: messages.len(),
        emergency_recall: ratio(emergencies_routed, emergencies),
        urgent_recall: ratio(urgents_routed, urgents),
        urgent_exact: ratio(urgents_exact, urgents),
        false_alarm_rate: if near == 0 {
            0.0
        } else {
            alarms as f64 / near as f64
        },
        false_alarms: alarms,
        false_emergencies,
        near_misses: near,
        per_flag,
        level_confusion,
        flag_confusion,
        misses,
        mean_micros,
    }
}

impl TriageReport {
    /// The targets of the safety layer this report falls short of (empty: all met): emergency
    /// recall ≥ 98 %, 100 % for self-harm and poisoning, false alarms on near-misses ≤ 3 %,
    /// urgent recall ≥ 90 %.
    pub fn unmet_targets(&self) -> Vec<String> {
        let mut unmet = Vec::new();
        if self.emergency_recall < 0.98 {
            unmet.push(format!(
                "emergency recall {:.1} % < 98 %",
                self.emergency_recall * 100.0
            ));
        }
        for r in &self.per_flag {
            if matches!(r.flag, RedFlag::SelfHarm | RedFlag::Poisoning) && r.routed < r.messages {
                unmet.push(format!(
                    "{} routed {}/{} < 100 %",
                    r.flag.name(),
                    r.routed,
                    r.messages
                ));
            }
        }
        if self.false_alarm_rate > 0.03 {
            unmet.push(format!(
                "false alarms {:.1} % > 3 %",
                self.false_alarm_rate * 100.0
            ));
        }
        if self.urgent_recall < 0.90 {
            unmet.push(format!(
                "urgent recall {:.1} % < 90 %",
                self.urgent_recall * 100.0
            ));
        }
        unmet
    }

    /// The report as plain text: totals, per-flag recall, the level confusion and the misses.
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let pct = |x: f64| format!("{:.1} %", x * 100.0);
        let _ = writeln!(s, "messages            {}", self.messages);
        let _ = writeln!(s, "emergency recall    {}", pct(self.emergency_recall));
        let _ = writeln!(
            s,
            "urgent recall       {} (exactly urgent: {})",
            pct(self.urgent_recall),
            pct(self.urgent_exact)
        );
        let _ = writeln!(
            s,
            "false alarms        {} of {} near-misses ({}; {} as emergencies)",
            self.false_alarms,
            self.near_misses,
            pct(self.false_alarm_rate),
            self.false_emergencies
        );
        let _ = writeln!(s, "time per message    {:.1} µs", self.mean_micros);
        let _ = writeln!(
            s,
            "\n{:<22} {:<10} {:>5} {:>8} {:>7} {:>8}",
            "flag", "level", "n", "flagged", "routed", "recall"
        );
        for r in &self.per_flag {
            let _ = writeln!(
                s,
                "{:<22} {:<10} {:>5} {:>8} {:>7} {:>8}",
                r.flag.name(),
                r.level.name(),
                r.messages,
                r.flagged,
                r.routed,
                pct(r.recall)
            );
        }
        let levels = ["none", "urgent", "emergency"];
        let _ = writeln!(s, "\nlevel confusion (rows: label, columns: routed)");
        let _ = writeln!(
            s,
            "{:<10} {:>6} {:>6} {:>9}",
            "", levels[0], levels[1], levels[2]
        );
        for truth in levels {
            let row = self.level_confusion.get(truth);
            let get = |l: &str| row.and_then(|r| r.get(l)).copied().unwrap_or(0);
            let _ = writeln!(
                s,
                "{truth:<10} {:>6} {:>6} {:>9}",
                get("none"),
                get("urgent"),
                get("emergency")
            );
        }
        let unmet = self.unmet_targets();
        let _ = writeln!(
            s,
            "\ntargets: {}",
            if unmet.is_empty() {
                "all met".to_string()
            } else {
                unmet.join("; ")
            }
        );
        if !self.misses.is_empty() {
            let _ = writeln!(s, "\nmisses and false alarms");
            for m in &self.misses {
                let predicted: Vec<&str> = m.predicted.iter().map(|f| f.name()).collect();
                let _ = writeln!(
                    s,
                    "  line {:>4}  {:<20} -> {:<30} {}",
                    m.line,
                    m.label.map_or("none", RedFlag::name),
                    if predicted.is_empty() {
                        "none".to_string()
                    } else {
                        predicted.join(",")
                    },
                    m.text
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_sets_parse_and_cover_every_flag() {
        let (train, held) = (training_messages(), held_out_messages());
        assert!(train.len() + held.len() >= 500);
        for flag in RedFlag::ALL {
            let n = |set: &[LabelledMessage]| set.iter().filter(|m| m.label == Some(flag)).count();
            assert!(
                n(&train) + n(&held) >= 20,
                "{flag:?}: {}",
                n(&train) + n(&held)
            );
            assert!(n(&held) >= 5, "{flag:?} has {} held-out messages", n(&held));
        }
        let near = |set: &[LabelledMessage]| set.iter().filter(|m| m.label.is_none()).count();
        assert!(near(&train) + near(&held) >= 150);
        // No message is in both parts.
        for m in &held {
            assert!(
                !train.iter().any(|t| t.text == m.text),
                "{:?} is in both",
                m.text
            );
        }
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let bad = "{\"text\": \"a\", \"label\": \"none\"}\n\nnot json\n";
        let err = parse_labelled(bad, "f.jsonl").unwrap_err().to_string();
        assert!(err.starts_with("f.jsonl:3:"), "{err}");
        let err = parse_labelled("{\"text\": \"\", \"label\": \"none\"}", "f.jsonl").unwrap_err();
        assert!(err.to_string().contains("`text` is empty"), "{err}");
        let err = read_labelled(Path::new("/nonexistent/triage.jsonl")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/triage.jsonl"),
            "{err}"
        );
    }

    #[test]
    fn scores_count_what_they_say() {
        let set = parse_labelled(
            "{\"text\": \"I want to kill myself\", \"label\": \"self_harm\"}\n\
             {\"text\": \"What is a stroke?\", \"label\": \"none\"}\n\
             {\"text\": \"my knee hurts\", \"label\": \"stroke\"}\n",
            "t",
        )
        .unwrap();
        let r = evaluate_triage(&Triager::rules_only(), &set);
        assert_eq!(r.emergency_recall, 0.5);
        assert_eq!(r.false_alarm_rate, 0.0);
        assert_eq!(r.misses.len(), 1);
        assert_eq!(r.misses[0].line, 3);
        assert_eq!(r.level_confusion["emergency"]["emergency"], 1);
        assert_eq!(r.level_confusion["emergency"]["none"], 1);
        assert!(!r.unmet_targets().is_empty());
    }
}
