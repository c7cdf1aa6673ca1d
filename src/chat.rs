//! [`Chat`]: multi-turn conversation with a (fine-tuned) model through its chat template, with
//! a medical safety disclaimer after every answer.

use crate::data::{ChatEncoder, Message, Role};
use crate::error::Result;
use crate::models::{CausalLm, GenerationConfig, ModelTokenizer, TextStreamer};

/// Appended to every answer unless turned off: the model is not a clinician.
pub const DISCLAIMER: &str = "This answer is general information from an AI model, not a \
diagnosis or medical advice. Please see a doctor or other qualified health professional about \
your situation. In an emergency, call your local emergency number (such as 911 or 112) now.";

/// One answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// Generated token ids (the end-of-turn token included when generation stopped on it).
    pub ids: Vec<u32>,
    /// The answer's text, without special tokens and without the disclaimer.
    pub text: String,
    /// The disclaimer that goes with it (`None` when turned off).
    pub disclaimer: Option<&'static str>,
}

impl Reply {
    /// The answer followed by the disclaimer, as a user should see it.
    pub fn display_text(&self) -> String {
        match self.disclaimer {
            Some(d) => format!("{}\n\n{d}", self.text.trim_end()),
            None => self.text.clone(),
        }
    }
}

/// A conversation: history, system prompt and generation settings.
///
/// ```
/// use burn::tensor::Device;
/// use medify_qlora::{Chat, load_base};
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tiny_models/llama");
/// let base = load_base(dir.as_ref(), &Device::flex(), None, None).unwrap();
/// let mut chat = Chat::new(&base.model, &base.tokenizer, &base.encoder).with_max_new_tokens(8);
/// let reply = chat.respond("What is anemia?", &mut |_| {}).unwrap();
/// assert!(reply.ids.len() <= 8);
/// assert!(reply.display_text().contains("not a diagnosis"));
/// assert_eq!(chat.history().len(), 2);
/// ```
pub struct Chat<'a> {
    model: &'a CausalLm,
    tokenizer: &'a ModelTokenizer,
    encoder: &'a ChatEncoder,
    history: Vec<Message>,
    system: Option<String>,
    generation: GenerationConfig,
    disclaimer: bool,
}

impl<'a> Chat<'a> {
    /// Greedy decoding, up to 256 new tokens, disclaimer on.
    pub fn new(
        model: &'a CausalLm,
        tokenizer: &'a ModelTokenizer,
        encoder: &'a ChatEncoder,
    ) -> Self {
        Chat {
            model,
            tokenizer,
            encoder,
            history: Vec::new(),
            system: None,
            generation: GenerationConfig {
                stop_ids: tokenizer.stop_ids.clone(),
                ..GenerationConfig::default()
            },
            disclaimer: true,
        }
    }

    /// A system prompt for the whole conversation.
    pub fn with_system(mut self, system: Option<String>) -> Self {
        self.system = system;
        self
    }

    /// Sampling settings (the tokenizer's stop ids are added).
    pub fn with_generation(mut self, mut config: GenerationConfig) -> Self {
        for id in &self.tokenizer.stop_ids {
            if !config.stop_ids.contains(id) {
                config.stop_ids.push(*id);
            }
        }
        self.generation = config;
        self
    }

    /// Upper bound on tokens per answer.
    pub fn with_max_new_tokens(mut self, n: usize) -> Self {
        self.generation.max_new_tokens = n;
        self
    }

    /// Turns the safety disclaimer on or off.
    pub fn with_disclaimer(mut self, on: bool) -> Self {
        self.disclaimer = on;
        self
    }

    /// The turns so far (user and assistant).
    pub fn history(&self) -> &[Message] {
        &self.history
    }

    /// Forgets the conversation.
    pub fn clear(&mut self) {
        self.history.clear();
    }

    /// Answers `user`, calling `on_text` with each new piece of text as it is generated; the
    /// question and the answer join the history.
    pub fn respond(&mut self, user: &str, on_text: &mut dyn FnMut(&str)) -> Result<Reply> {
        let mut messages = Vec::new();
        if let Some(s) = &self.system {
            messages.push(Message::new(Role::System, s.clone()));
        }
        messages.extend(self.history.iter().cloned());
        messages.push(Message::new(Role::User, user));
        let reply = self.answer(&messages, on_text)?;
        self.history.push(Message::new(Role::User, user));
        self.history
            .push(Message::new(Role::Assistant, reply.text.trim().to_string()));
        Ok(reply)
    }

    /// The next assistant turn of `conversation` (given whole; the history and system prompt of
    /// this chat are not used and not changed), streamed to `on_text` as it is generated.
    pub fn answer(&self, conversation: &[Message], on_text: &mut dyn FnMut(&str)) -> Result<Reply> {
        let prompt = self.encoder.generation_prompt(conversation)?;
        let ids = self.tokenizer.encode(&prompt, false)?;
        let mut streamer = TextStreamer::new(self.tokenizer);
        let stops = &self.generation.stop_ids;
        let out = self
            .model
            .generate(&[ids], &self.generation, &mut |_, id| {
                if !stops.contains(&id)
                    && let Ok(Some(piece)) = streamer.push(id)
                {
                    on_text(&piece);
                }
                true
            })?;
        let ids = out.into_iter().next().map(|g| g.ids).unwrap_or_default();
        let text = self.tokenizer.decode(&ids, true)?;
        Ok(Reply {
            ids,
            text,
            disclaimer: self.disclaimer.then_some(DISCLAIMER),
        })
    }
}
