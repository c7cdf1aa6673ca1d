//! [`Chat`]: multi-turn conversation with a (fine-tuned) model through its chat template, with
//! the medical safety layer: red-flag triage before the answer, an educational default system
//! prompt, and a disclaimer after every answer.

use crate::data::{ChatEncoder, Message, Role};
use crate::error::Result;
use crate::models::{CausalLm, GenerationConfig, ModelTokenizer, TextStreamer};
use crate::safety::{DEFAULT_SYSTEM_PROMPT, Triage, triage};

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
    /// Routing for red flags in the user's message, shown before the answer: emergency help
    /// now, or a clinician today (`None` when there were none or triage is off).
    pub triage: Option<Triage>,
}

impl Reply {
    /// The routing message (if any), the answer and the disclaimer, as a user should see it.
    pub fn display_text(&self) -> String {
        let mut out = String::new();
        if let Some(e) = &self.triage {
            out.push_str(&e.message);
            out.push_str("\n\n");
        }
        match self.disclaimer {
            Some(d) => out.push_str(&format!("{}\n\n{d}", self.text.trim_end())),
            None => out.push_str(&self.text),
        }
        out
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
/// let urgent = chat.respond("I have crushing chest pain and I'm sweating", &mut |_| {}).unwrap();
/// assert!(urgent.display_text().starts_with("You mention chest pain"));
/// ```
pub struct Chat<'a> {
    model: &'a CausalLm,
    tokenizer: &'a ModelTokenizer,
    encoder: &'a ChatEncoder,
    history: Vec<Message>,
    system: Option<String>,
    generation: GenerationConfig,
    disclaimer: bool,
    triage: bool,
}

impl<'a> Chat<'a> {
    /// Greedy decoding, up to 256 new tokens, the educational [`DEFAULT_SYSTEM_PROMPT`],
    /// red-flag triage and the disclaimer on.
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
            system: Some(DEFAULT_SYSTEM_PROMPT.to_string()),
            generation: GenerationConfig {
                stop_ids: tokenizer.stop_ids.clone(),
                ..GenerationConfig::default()
            },
            disclaimer: true,
            triage: true,
        }
    }

    /// The system prompt of the whole conversation, replacing the default; `None` sends none.
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

    /// Turns red-flag triage (emergency or same-day routing before the answer) on or off.
    pub fn with_triage(mut self, on: bool) -> Self {
        self.triage = on;
        self
    }

    /// The routing for the last user turn of `conversation`, when triage is on and it names a
    /// red flag (for showing it before the answer streams).
    pub fn triage(&self, conversation: &[Message]) -> Option<Triage> {
        if !self.triage {
            return None;
        }
        let user = conversation.iter().rev().find(|m| m.role == Role::User)?;
        triage(&user.content)
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
        let messages = self.conversation_with(user);
        let reply = self.answer(&messages, on_text)?;
        self.history.push(Message::new(Role::User, user));
        self.history
            .push(Message::new(Role::Assistant, reply.text.trim().to_string()));
        Ok(reply)
    }

    /// The system prompt, the history and `user`: what [`respond`](Self::respond) answers.
    pub fn conversation_with(&self, user: &str) -> Vec<Message> {
        let mut messages = Vec::new();
        if let Some(s) = &self.system {
            messages.push(Message::new(Role::System, s.clone()));
        }
        messages.extend(self.history.iter().cloned());
        messages.push(Message::new(Role::User, user));
        messages
    }

    /// The next assistant turn of `conversation` (given whole; the history and system prompt of
    /// this chat are not used and not changed), streamed to `on_text` as it is generated.
    pub fn answer(&self, conversation: &[Message], on_text: &mut dyn FnMut(&str)) -> Result<Reply> {
        let ids = self.prompt_ids(conversation)?;
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
        self.reply(conversation, ids)
    }

    /// The token ids [`answer`](Self::answer) generates from: `conversation` rendered through
    /// the chat template up to the assistant's turn. A server that batches many conversations
    /// generates from these and finishes each with [`reply`](Self::reply).
    pub fn prompt_ids(&self, conversation: &[Message]) -> Result<Vec<u32>> {
        let prompt = self.encoder.generation_prompt(conversation)?;
        Ok(self.tokenizer.encode(&prompt, false)?)
    }

    /// The [`Reply`] to `conversation` made of the generated `ids`: their text, the disclaimer
    /// and the routing, exactly as [`answer`](Self::answer) gives them.
    pub fn reply(&self, conversation: &[Message], ids: Vec<u32>) -> Result<Reply> {
        let text = self.tokenizer.decode(&ids, true)?;
        Ok(Reply {
            ids,
            text,
            disclaimer: self.disclaimer.then_some(DISCLAIMER),
            triage: self.triage(conversation),
        })
    }

    /// The sampling settings answers are generated with (the tokenizer's stop ids included).
    pub fn generation(&self) -> &GenerationConfig {
        &self.generation
    }
}
