//! [`Chat`]: multi-turn conversation with a (fine-tuned) model through its chat template, with
//! the medical safety layer of [`medify_safety`]: red-flag triage before the answer, an
//! educational default system prompt, and a disclaimer after every answer.
//!
//! It needs a model, its tokenizer and a [`ChatEncoder`] ([`chat_encoder`] makes one from the
//! tokenizer), not the trainer: the server and the terminal chat are built on it.

use std::path::Path;

use medify_data::{
    BUILTIN_TEMPLATES, ChatEncoder, ChatTemplate, DataError, Message, Role, TokenizerSpecials,
};
use medify_models::{CausalLm, GenerationConfig, ModelError, ModelTokenizer, TextStreamer};
pub use medify_safety::DISCLAIMER;
use medify_safety::{DEFAULT_SYSTEM_PROMPT, Triage, triage};

/// What can go wrong while answering.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// Loading the tokenizer, encoding, generating or decoding.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Rendering the conversation through the chat template.
    #[error(transparent)]
    Data(#[from] DataError),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ChatError>;

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
/// use medify_chat::{Chat, chat_encoder};
/// use medify_models::{LoadOptions, load_pretrained};
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama");
/// let (model, tokenizer, _) = load_pretrained(dir, &Device::flex(), &LoadOptions::dense()).unwrap();
/// let encoder = chat_encoder(&tokenizer, None).unwrap();
/// let mut chat = Chat::new(&model, &tokenizer, &encoder).with_max_new_tokens(8);
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

/// The chat encoder of a tokenizer: the model's own chat template, or the built-in `template`
/// when one is named, with the tokenizer's special tokens. The tokenizer is the one the model
/// loaded, so training records, prompts and generation share one set of ids.
///
/// ```
/// use medify_chat::chat_encoder;
/// use medify_models::ModelTokenizer;
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama");
/// let tok = ModelTokenizer::load(dir).unwrap();
/// let encoder = chat_encoder(&tok, Some("chatml")).unwrap();
/// assert_eq!(encoder.template().name(), "chatml");
/// ```
pub fn chat_encoder(tokenizer: &ModelTokenizer, template: Option<&str>) -> Result<ChatEncoder> {
    let chat = match (template, &tokenizer.chat_template) {
        (Some(name), _) => ChatTemplate::builtin(name)?,
        (None, Some(t)) => ChatTemplate::new(tokenizer.chat_template_origin(), t)?,
        (None, None) => {
            return Err(DataError::Invalid(format!(
                "{} has no chat template; name a built-in one ({})",
                tokenizer.chat_template_origin(),
                BUILTIN_TEMPLATES.join(", ")
            ))
            .into());
        }
    };
    let specials = TokenizerSpecials {
        bos: tokenizer.bos_token.clone(),
        eos: tokenizer.eos_token.clone(),
        pad: tokenizer.pad_token.clone(),
        unk: tokenizer.unk_token.clone(),
    };
    Ok(ChatEncoder::new(tokenizer.inner().clone(), chat, specials))
}

/// The chat encoder of a tokenizer or model directory or a `.gguf` file, without loading the
/// weights (for previews and data preparation).
///
/// ```
/// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama.gguf");
/// let encoder = medify_chat::load_chat_encoder(path.as_ref(), Some("chatml")).unwrap();
/// assert!(encoder.tokenizer().get_vocab_size(true) > 0);
/// ```
pub fn load_chat_encoder(path: &Path, template: Option<&str>) -> Result<ChatEncoder> {
    chat_encoder(&ModelTokenizer::load(path)?, template)
}
