//! Conversations and plain-text records: what every input format is turned into.

use serde::Serialize;

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The person asking.
    User,
    /// The model's reply: the only text that is trained on.
    Assistant,
}

impl Role {
    /// Parses the role names OpenAI, ShareGPT and Gemma datasets use.
    ///
    /// ```
    /// use medify_data::Role;
    /// assert_eq!(Role::parse("gpt"), Some(Role::Assistant));
    /// assert_eq!(Role::parse("human"), Some(Role::User));
    /// assert_eq!(Role::parse("tool"), None);
    /// ```
    pub fn parse(name: &str) -> Option<Role> {
        match name.trim().to_ascii_lowercase().as_str() {
            "system" => Some(Role::System),
            "user" | "human" | "patient" | "question" => Some(Role::User),
            "assistant" | "gpt" | "model" | "chatgpt" | "bot" | "doctor" | "answer" => {
                Some(Role::Assistant)
            }
            _ => None,
        }
    }

    /// The name chat templates expect.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Message {
    /// Speaker.
    pub role: Role,
    /// Text, exactly as in the data (templates decide about trimming).
    pub content: String,
}

impl Message {
    /// A turn.
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// A record ready for the template: a conversation, or plain text trained on in full.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Example {
    /// Turns; only assistant turns are trained on.
    Chat(Vec<Message>),
    /// Plain text (`{"text"}` records): every token is trained on.
    Text(String),
}

impl Example {
    /// A single question and answer.
    pub fn qa(question: impl Into<String>, answer: impl Into<String>) -> Example {
        Example::Chat(vec![
            Message::new(Role::User, question),
            Message::new(Role::Assistant, answer),
        ])
    }

    /// The assistant replies (empty for text records).
    pub fn replies(&self) -> impl Iterator<Item = &str> {
        let msgs: &[Message] = match self {
            Example::Chat(m) => m,
            Example::Text(_) => &[],
        };
        msgs.iter()
            .filter(|m| m.role == Role::Assistant)
            .map(|m| m.content.as_str())
    }
}

/// A record and where it came from (`file:line`), so later problems can name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcedExample {
    /// `path:line` (or `path` for XML files).
    pub origin: String,
    /// The record.
    pub example: Example,
    /// Which of a run's data sources it came from (0 when there is one), so a mix of sources
    /// can be weighted and counted per source.
    pub source: usize,
}
