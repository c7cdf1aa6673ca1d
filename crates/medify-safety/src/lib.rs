//! The medical safety layer of `chat` and `serve`: triage of the user's message before the
//! model answers, the routing put before its answer, the default system prompt that keeps the
//! assistant educational, and the disclaimer after every answer. No model and no backend: the
//! server, the chat and the model card use it without the trainer.
//!
//! Triage has two levels ([`TriageLevel`]): **emergency** (call the local emergency number now)
//! and **urgent** (see a clinician today). It combines
//! - rules (`rules.rs`): per red flag, combinations of concepts ("fever" and "stiff neck") over
//!   the normalised message (case, dropped apostrophes, slang and misspelt key words mended);
//! - context (`context.rs`): a mention that is denied ("no chest pain"), in the remote past ("had a
//!   stroke in 2019"), hypothetical ("what should I do if someone has a seizure?") or part of a
//!   question about a topic ("what is a stroke?") raises nothing; third persons ("my dad") do;
//! - optionally, a classifier ([`TriageClassifier`]: character and word n-grams, logistic
//!   regression) trained in Rust on the project's labelled messages. It is not part of the
//!   standard triage: on this data it raises false alarms on near-misses and catches nothing the
//!   rules miss (`docs/triage.md` has the cross-validated figures).
//!
//! It errs towards routing: a false alarm costs a sentence, a missed one much more. It is not a
//! diagnosis and does not replace the model's disclaimer. Its recall and false alarms on a
//! held-out set are measured by [`evaluate_triage`] (`cargo xtask triage`, `docs/triage.md`).

mod classifier;
mod context;
mod evaluate;
mod flags;
mod patterns;
mod rules;

use serde::{Deserialize, Serialize};

pub use classifier::{ClassifierConfig, TriageClassifier};
pub use context::normalize;
pub use evaluate::{
    FlagRecall, HELD_OUT_SET, LabelledMessage, Miss, TRAINING_SET, TriageDataError, TriageReport,
    evaluate_triage, held_out_messages, parse_labelled, read_labelled, training_messages,
};
pub use flags::{RedFlag, TriageLevel, UnknownFlag};

/// The system prompt used when the user gives none: an educational assistant that does not
/// diagnose or prescribe and points to professionals.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a careful medical information assistant. \
Explain health topics in plain language for education only. Do not diagnose conditions, do not \
prescribe or dose medications, and do not replace a clinician: encourage the user to see a \
doctor or other qualified health professional about their own situation, and to call emergency \
services for anything urgent.";

/// Appended to every answer unless turned off: the model is not a clinician.
pub const DISCLAIMER: &str = "This answer is general information from an AI model, not a \
diagnosis or medical advice. Please see a doctor or other qualified health professional about \
your situation. In an emergency, call your local emergency number (such as 911 or 112) now.";

/// What an emergency message asks the user to do.
pub const EMERGENCY_ADVICE: &str = "This may be a medical emergency. Call your local emergency \
number now (911 in the US and Canada, 112 in the EU, 999 in the UK, 000 in Australia) or go to \
the nearest emergency department. Do not wait for an answer from an AI model.";

/// For thoughts of suicide or self-harm: crisis lines by region.
pub const CRISIS_ADVICE: &str = "If you are thinking about ending your life or harming \
yourself, please reach out now: call or text 988 (Suicide & Crisis Lifeline, US and Canada), \
call 116 123 (Samaritans, UK and Ireland), call 13 11 14 (Lifeline, Australia), or your local \
emergency number (112 in the EU). If someone else is in danger, stay with them and call for \
help. You do not have to go through this alone.";

/// For poisoning and overdoses.
pub const POISON_ADVICE: &str = "For a poisoning or overdose, call your local emergency number \
now; in the US, Poison Control is 1-800-222-1222. Do not wait for symptoms.";

/// What an urgent (same-day) message asks the user to do.
pub const URGENT_ADVICE: &str = "This should be seen by a clinician today: contact your doctor, \
an urgent care centre or a nurse line (111 in the UK). If it gets worse or new symptoms appear, \
call your local emergency number.";

/// The routing that goes before the model's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Triage {
    /// How soon help is needed: the most urgent of `flags`.
    pub level: TriageLevel,
    /// What was recognised, each once, in [`RedFlag::ALL`] order.
    pub flags: Vec<RedFlag>,
    /// What to do, for the user to read first.
    pub message: String,
}

impl Triage {
    /// Whether this is an emergency (rather than an urgent, same-day matter).
    pub fn is_emergency(&self) -> bool {
        self.level == TriageLevel::Emergency
    }

    fn from_flags(mut flags: Vec<RedFlag>) -> Option<Triage> {
        flags.sort();
        flags.dedup();
        let level = flags.iter().map(|f| f.level()).max()?;
        let named: Vec<&str> = flags
            .iter()
            .filter(|f| f.level() == level)
            .map(|f| f.describe())
            .collect();
        let message = match level {
            TriageLevel::Urgent => format!("You mention {}. {URGENT_ADVICE}", named.join(", ")),
            TriageLevel::Emergency => {
                let mut message = format!("You mention {}. {EMERGENCY_ADVICE}", named.join(", "));
                if flags.contains(&RedFlag::Poisoning) {
                    message = format!("{message} {POISON_ADVICE}");
                }
                if flags.contains(&RedFlag::SelfHarm) {
                    message = if named.len() == 1 {
                        CRISIS_ADVICE.to_string()
                    } else {
                        format!("{message} {CRISIS_ADVICE}")
                    };
                }
                message
            }
        };
        Some(Triage {
            level,
            flags,
            message,
        })
    }
}

/// A triage: the rules, and optionally a classifier whose confident predictions add flags.
#[derive(Debug, Clone)]
pub struct Triager {
    /// The classifier and the probability at or above which its flags are raised.
    classifier: Option<(TriageClassifier, f32)>,
}

impl Triager {
    /// The rules and context alone.
    pub const fn rules_only() -> Triager {
        Triager { classifier: None }
    }

    /// The rules, plus `classifier`'s flags with a probability of at least `threshold`.
    pub fn with_classifier(classifier: TriageClassifier, threshold: f32) -> Triager {
        Triager {
            classifier: Some((classifier, threshold)),
        }
    }

    /// The standard triage: rules and context. The classifier is left out: in 5-fold
    /// cross-validation on the labelled set it adds false alarms without adding recall
    /// (`docs/triage.md`); [`Triager::with_trained_classifier`] adds it back.
    pub fn standard() -> &'static Triager {
        static STANDARD: Triager = Triager::rules_only();
        &STANDARD
    }

    /// Rules plus the classifier trained on the project's labelled training messages
    /// ([`TRAINING_SET`], tens of milliseconds), raising its flags at `threshold` or above.
    pub fn with_trained_classifier(threshold: f32) -> Triager {
        let examples: Vec<(String, Option<RedFlag>)> = training_messages()
            .iter()
            .map(|m| (normalize(&m.text), m.label))
            .collect();
        let classifier = TriageClassifier::train(&examples, &ClassifierConfig::default());
        Triager::with_classifier(classifier, threshold)
    }

    /// The routing for a user's message, or `None` when nothing calls for it.
    pub fn assess(&self, message: &str) -> Option<Triage> {
        let text = normalize(message);
        if context::about_a_topic(&text) {
            return None;
        }
        let clauses = context::Clauses::of(&text);
        let mut flags = rules::rule_flags(&text, &clauses);
        if rules::infant_fever(&text, &clauses) {
            flags.push(RedFlag::InfantFever);
        }
        if let Some((classifier, threshold)) = &self.classifier
            && !context::remote_past(&text)
        {
            let (probabilities, _) = classifier.probabilities(&text);
            flags.extend(
                probabilities
                    .into_iter()
                    .filter(|(_, p)| p >= threshold)
                    .map(|(f, _)| f),
            );
        }
        rules::adjust_chest_pain(&text, &clauses, &mut flags);
        Triage::from_flags(flags)
    }
}

/// The routing for a user's message by the standard triage ([`Triager::standard`]), or `None`
/// when it reads as a question about a topic or names no warning sign.
///
/// ```
/// use medify_safety::{RedFlag, TriageLevel, triage};
/// let t = triage("My dad's face is drooping and he can't lift his arm").unwrap();
/// assert_eq!((t.level, t.flags.as_slice()), (TriageLevel::Emergency, &[RedFlag::Stroke][..]));
/// assert!(t.message.contains("emergency number"));
/// assert!(triage("What is a stroke?").is_none());
/// assert!(triage("I had a stroke in 2019, how can I prevent another one?").is_none());
/// let t = triage("I had a mild chest pain this morning that went away").unwrap();
/// assert_eq!(t.level, TriageLevel::Urgent);
/// ```
pub fn triage(message: &str) -> Option<Triage> {
    Triager::standard().assess(message)
}

#[cfg(test)]
mod tests;
