//! `ChatEncoder`: renders a record with the chat template, tokenizes it without adding special
//! tokens again, and labels only the assistant replies and the end-of-turn token(s) closing them.

use std::ops::Range;

use tokenizers::Tokenizer;

use crate::error::{DataError, Result};
use crate::record::{Example, Message, Role};
use crate::template::{ChatTemplate, SpecialTokens};

/// Label of a position the loss ignores (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// Markers that close an assistant turn in the supported families.
const END_OF_TURN: [&str; 4] = ["<|eot_id|>", "<end_of_turn>", "<|im_end|>", "</s>"];

/// One tokenized record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids of the rendered text.
    pub input_ids: Vec<u32>,
    /// `input_ids` where trained, [`IGNORE`] elsewhere.
    pub labels: Vec<i64>,
}

impl Encoded {
    /// Tokens the loss covers.
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE).count()
    }

    /// Tokens.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
}

/// A record rendered, with the byte spans of the text that is trained on (for previews).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The template's output (or the plain text).
    pub text: String,
    /// Trained byte ranges of `text`.
    pub trained: Vec<Range<usize>>,
}

/// The special tokens of a tokenizer, as `tokenizer_config.json` names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenizerSpecials {
    /// Beginning of sequence.
    pub bos: Option<String>,
    /// End of sequence.
    pub eos: Option<String>,
    /// Padding.
    pub pad: Option<String>,
    /// Unknown token.
    pub unk: Option<String>,
}

/// Renders, tokenizes and labels records for one model.
#[derive(Debug, Clone)]
pub struct ChatEncoder {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    specials: TokenizerSpecials,
    markers: Vec<String>,
    system_prompt: Option<String>,
    fold_system: bool,
}

impl ChatEncoder {
    /// An encoder from a tokenizer, a template and the special tokens.
    pub fn new(
        tokenizer: Tokenizer,
        template: ChatTemplate,
        specials: TokenizerSpecials,
    ) -> ChatEncoder {
        let mut markers: Vec<String> = specials.eos.iter().cloned().collect();
        for m in END_OF_TURN {
            if tokenizer.token_to_id(m).is_some() && !markers.iter().any(|x| x == m) {
                markers.push(m.to_string());
            }
        }
        let special = SpecialTokens {
            bos: specials.bos.clone().unwrap_or_default(),
            eos: specials.eos.clone().unwrap_or_default(),
        };
        let fold_system = !template.supports_system(&special);
        ChatEncoder {
            tokenizer,
            template,
            specials,
            markers,
            system_prompt: None,
            fold_system,
        }
    }

    /// Adds `prompt` as the system turn of every conversation that has none. Templates without a
    /// system role get it folded into the first user turn as `system + "\n\n" + user`.
    pub fn with_system_prompt(mut self, prompt: Option<String>) -> ChatEncoder {
        self.system_prompt = prompt.filter(|p| !p.is_empty());
        self
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The template.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The special tokens.
    pub fn specials(&self) -> &TokenizerSpecials {
        &self.specials
    }

    /// The padding id: the pad token when it exists and is not eos (so eos stays learnable),
    /// else unk, else eos. Padding is masked in attention and labels either way.
    pub fn pad_id(&self) -> u32 {
        let id = |t: &Option<String>| t.as_deref().and_then(|s| self.tokenizer.token_to_id(s));
        let eos = id(&self.specials.eos);
        match id(&self.specials.pad) {
            Some(p) if Some(p) != eos => p,
            _ => id(&self.specials.unk).or(eos).unwrap_or(0),
        }
    }

    pub(crate) fn special(&self) -> SpecialTokens {
        SpecialTokens {
            bos: self.specials.bos.clone().unwrap_or_default(),
            eos: self.specials.eos.clone().unwrap_or_default(),
        }
    }

    /// The turns the template sees: the system prompt added, and folded where unsupported.
    pub fn prepare_messages(&self, messages: &[Message]) -> Vec<Message> {
        let mut msgs = messages.to_vec();
        if let Some(p) = &self.system_prompt
            && msgs.first().is_none_or(|m| m.role != Role::System)
        {
            msgs.insert(0, Message::new(Role::System, p.clone()));
        }
        if self.fold_system && msgs.first().is_some_and(|m| m.role == Role::System) {
            let sys = msgs.remove(0);
            match msgs.iter_mut().find(|m| m.role == Role::User) {
                Some(user) => user.content = format!("{}\n\n{}", sys.content, user.content),
                None => msgs.insert(0, Message::new(Role::User, sys.content)),
            }
        }
        msgs
    }

    /// Renders a record and finds the spans to train on.
    #[allow(clippy::single_range_in_vec_init)] // one trained span: the whole text
    pub fn render(&self, example: &Example) -> Result<Rendered> {
        let messages = match example {
            Example::Text(t) => {
                return Ok(Rendered {
                    text: t.clone(),
                    trained: vec![0..t.len()],
                });
            }
            Example::Chat(m) => self.prepare_messages(m),
        };
        if messages.is_empty() {
            return Err(DataError::Invalid("empty conversation".into()));
        }
        let special = self.special();
        let text = self.template.render(&messages, false, &special)?;
        let mut trained = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != Role::Assistant {
                continue;
            }
            let upto = if i + 1 == messages.len() {
                text.clone()
            } else {
                self.template.render(&messages[..=i], false, &special)?
            };
            let prompt = self.template.render(&messages[..i], true, &special)?;
            let start = if upto.starts_with(&prompt) {
                prompt.len()
            } else {
                let plain = self.template.render(&messages[..i], false, &special)?;
                if !upto.starts_with(&plain) {
                    return Err(self.unlocatable(i));
                }
                plain.len()
            };
            if !text.starts_with(&upto) {
                return Err(self.unlocatable(i));
            }
            let reply = &upto[start..];
            // End at the last end-of-turn marker: a newline or space the template writes after
            // it belongs to the next turn's framing, not to the reply.
            let end = self
                .markers
                .iter()
                .filter_map(|mk| reply.rfind(mk.as_str()).map(|p| p + mk.len()))
                .max()
                .unwrap_or(reply.len());
            if end > 0 {
                trained.push(start..start + end);
            }
        }
        Ok(Rendered { text, trained })
    }

    /// The text a model continues to answer `messages` (the template with
    /// `add_generation_prompt`), for chat and evaluation by generation.
    pub fn generation_prompt(&self, messages: &[Message]) -> Result<String> {
        self.template
            .render(&self.prepare_messages(messages), true, &self.special())
    }

    fn unlocatable(&self, turn: usize) -> DataError {
        DataError::Template {
            name: self.template.name().to_string(),
            message: format!(
                "cannot locate assistant turn {turn}: rendering the conversation up to it is not a prefix of the whole"
            ),
        }
    }

    /// Renders, tokenizes (no special tokens added: the template writes them) and labels a
    /// record. Plain text is tokenized with the tokenizer's special tokens and trained in full.
    /// The first label is always ignored: nothing predicts the first token.
    pub fn encode(&self, example: &Example) -> Result<Encoded> {
        let rendered = self.render(example)?;
        let add_special = matches!(example, Example::Text(_));
        let enc = self
            .tokenizer
            .encode(rendered.text.as_str(), add_special)
            .map_err(DataError::Tokenizer)?;
        let ids = enc.get_ids().to_vec();
        let offsets = enc.get_offsets();
        let mut labels: Vec<i64> = if add_special {
            ids.iter().map(|&id| id as i64).collect()
        } else {
            ids.iter()
                .zip(offsets)
                .map(|(&id, &(s, e))| {
                    let inside = rendered.trained.iter().any(|r| s < r.end && e > r.start);
                    if inside { id as i64 } else { IGNORE }
                })
                .collect()
        };
        if let Some(first) = labels.first_mut() {
            *first = IGNORE;
        }
        Ok(Encoded {
            input_ids: ids,
            labels,
        })
    }
}
