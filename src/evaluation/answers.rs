//! Answer quality: the model answers each chat record's last question and the answers are
//! scored against the record's reference reply with BLEU and ROUGE.

use serde::{Deserialize, Serialize};

use crate::chat::Chat;
use crate::data::{Example, Message, Role, SourcedExample};
use crate::error::Result;
use crate::evaluation::text_metrics::{TextScores, score_answers};

/// A conversation up to its last question, and the reply the record gives to it.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerCase {
    /// Every turn before the reference reply.
    pub conversation: Vec<Message>,
    /// The record's last assistant turn.
    pub reference: String,
}

impl AnswerCase {
    /// The cases of the chat records that end with an assistant reply (plain-text records and
    /// conversations ending with a question have no reference and are left out).
    pub fn from_records(records: &[SourcedExample]) -> Vec<AnswerCase> {
        records
            .iter()
            .filter_map(|r| match &r.example {
                Example::Chat(m) => match m.split_last() {
                    Some((last, before)) if last.role == Role::Assistant => Some(AnswerCase {
                        conversation: before.to_vec(),
                        reference: last.content.clone(),
                    }),
                    _ => None,
                },
                Example::Text(_) => None,
            })
            .collect()
    }

    /// The cases of preference pairs: the prompt's turns (or text, as a user turn) and the
    /// chosen answer as the reference.
    pub fn from_pairs(pairs: &[crate::data::SourcedPair]) -> Vec<AnswerCase> {
        use crate::data::Turns;
        pairs
            .iter()
            .filter_map(|p| {
                let conversation = match &p.pair.prompt {
                    Turns::Chat(m) => m.clone(),
                    Turns::Text(t) => vec![Message {
                        role: Role::User,
                        content: t.clone(),
                    }],
                };
                let reference = match &p.pair.chosen {
                    Turns::Chat(m) => m
                        .iter()
                        .rev()
                        .find(|m| m.role == Role::Assistant)?
                        .content
                        .clone(),
                    Turns::Text(t) => t.trim().to_string(),
                };
                Some(AnswerCase {
                    conversation,
                    reference,
                })
            })
            .collect()
    }

    /// The last user turn (what was asked).
    pub fn question(&self) -> &str {
        self.conversation
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map_or("", |m| m.content.as_str())
    }
}

/// One generated answer beside its question and reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredAnswer {
    /// The last user turn.
    pub question: String,
    /// The record's reply.
    pub reference: String,
    /// The model's answer, trimmed, without special tokens or disclaimer.
    pub answer: String,
}

/// The scores of a set of answers, and the answers themselves for reading them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerReport {
    /// Corpus BLEU and mean ROUGE over the answers.
    pub scores: TextScores,
    /// Every answer, in the order of the cases.
    pub answers: Vec<ScoredAnswer>,
}

/// Answers every case with `chat` (its generation settings; each case is its own conversation)
/// and scores the answers against the references. `on_answer(index, answer)` is called after
/// each one, for progress.
///
/// ```
/// use burn::tensor::Device;
/// use medify_qlora::data::{Message, Role};
/// use medify_qlora::{AnswerCase, Chat, load_base, score_generated_answers};
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tiny_models/llama");
/// let base = load_base(dir.as_ref(), &Device::flex(), None, None).unwrap();
/// let chat = Chat::new(&base.model, &base.tokenizer, &base.encoder).with_max_new_tokens(4);
/// let case = AnswerCase {
///     conversation: vec![Message::new(Role::User, "What is anemia?")],
///     reference: "A lack of healthy red blood cells.".into(),
/// };
/// let report = score_generated_answers(&chat, &[case], &mut |_, _| {}).unwrap();
/// assert_eq!(report.scores.records, 1);
/// assert_eq!(report.answers[0].question, "What is anemia?");
/// ```
pub fn score_generated_answers(
    chat: &Chat<'_>,
    cases: &[AnswerCase],
    on_answer: &mut dyn FnMut(usize, &ScoredAnswer),
) -> Result<AnswerReport> {
    let mut answers = Vec::with_capacity(cases.len());
    for (i, case) in cases.iter().enumerate() {
        let reply = chat.answer(&case.conversation, &mut |_| {})?;
        let answer = ScoredAnswer {
            question: case.question().to_string(),
            reference: case.reference.clone(),
            answer: reply.text.trim().to_string(),
        };
        on_answer(i, &answer);
        answers.push(answer);
    }
    let candidates: Vec<String> = answers.iter().map(|a| a.answer.clone()).collect();
    let references: Vec<String> = cases.iter().map(|c| c.reference.clone()).collect();
    Ok(AnswerReport {
        scores: score_answers(&candidates, &references),
        answers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SourcedExample;

    fn record(example: Example) -> SourcedExample {
        SourcedExample {
            example,
            origin: "test".into(),
            source: 0,
        }
    }

    #[test]
    fn cases_are_the_conversations_that_end_with_a_reply() {
        let qa = |q: &str, a: &str| {
            Example::Chat(vec![
                Message::new(Role::System, "Be careful."),
                Message::new(Role::User, q),
                Message::new(Role::Assistant, a),
            ])
        };
        let records = [
            record(qa("What is gout?", "A form of arthritis.")),
            record(Example::Text("plain text".into())),
            record(Example::Chat(vec![Message::new(Role::User, "Unanswered?")])),
        ];
        let cases = AnswerCase::from_records(&records);
        assert_eq!(cases.len(), 1);
        assert_eq!(cases[0].question(), "What is gout?");
        assert_eq!(cases[0].reference, "A form of arthritis.");
        assert_eq!(cases[0].conversation.len(), 2);
    }
}
