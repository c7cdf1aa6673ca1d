//! Evaluation of a (fine-tuned) model: loss and perplexity over labelled sequences,
//! multiple-choice accuracy as lm-eval scores it, and BLEU/ROUGE of generated answers against
//! reference replies.

pub(crate) mod answers;
pub(crate) mod loss;
pub(crate) mod multiple_choice;
pub(crate) mod py_random;
pub(crate) mod text_metrics;

pub use answers::{AnswerCase, AnswerReport, ScoredAnswer, score_generated_answers};
pub use loss::{EvalResult, batch_labels, evaluate_loss, predicted_tokens, token_batch};
pub use multiple_choice::{
    FewshotSampler, McConfig, McOption, McQuestion, McReport, McScore, McTask, read_mc_questions,
    score_multiple_choice,
};
pub use text_metrics::{
    BleuScore, Prf, RougeScores, TextScores, bleu, corpus_bleu, rouge, score_answers,
};
