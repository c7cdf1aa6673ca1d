//! The body of `POST /v1/chat/completions`: OpenAI's schema, parsed with the failing field
//! named, and checked against what this server can do.

use medify_data::{Message, Role};
use serde::Deserialize;

use crate::error::ApiError;

/// A chat completion request. Fields OpenAI defines that do not change a single-choice answer
/// here (`user`, `presence_penalty`, `logprobs: false`, …) are accepted and ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<InMessage>,
    /// Sampling temperature in [0, 2]; OpenAI's default is 1. 0 is greedy.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling in (0, 1].
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// The newer name of `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Not OpenAI's (vLLM and llama.cpp servers take it too): CTRL-style penalty, 1 = off.
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    /// Not OpenAI's (vLLM's): keep generating past end-of-turn tokens, up to `max_tokens`
    /// (for benchmarks that need answers of a fixed length).
    #[serde(default)]
    pub ignore_eos: bool,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub tools: Option<serde_json::Value>,
    /// This server's own options.
    #[serde(default)]
    pub medify: Option<MedifyOptions>,
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `medify`: how the safety layer's text reaches the client.
#[derive(Debug, Clone, Deserialize)]
pub struct MedifyOptions {
    /// When true (the default) the triage message and the disclaimer are part of the
    /// message content, so any OpenAI client shows them; when false they come only in the
    /// response's `medify` object (the web page shows them apart from the answer).
    #[serde(default = "yes")]
    pub inline_safety_text: bool,
}

fn yes() -> bool {
    true
}

/// `stop`: one string or up to four.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// One message as a client sends it.
#[derive(Debug, Clone, Deserialize)]
pub struct InMessage {
    pub role: InRole,
    #[serde(default)]
    pub content: Option<Content>,
}

/// The roles OpenAI defines; `developer` is the newer name of `system`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

/// Message content: a string, or a list of parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// One content part; only `text` parts can be answered by a text model.
#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// Parses a body, naming the field that does not fit the schema.
pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(format!("the body is not valid JSON: {inner}"), None)
        } else if path == "." {
            ApiError::invalid(format!("invalid request: {inner}"), None)
        } else {
            ApiError::invalid(format!("invalid `{path}`: {inner}"), Some(&path))
        }
    })
}

impl ChatRequest {
    /// The conversation as the chat template takes it.
    pub fn conversation(&self) -> Result<Vec<Message>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "`messages` must hold at least one message",
                Some("messages"),
            ));
        }
        let mut out = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.iter().enumerate() {
            let role = match m.role {
                InRole::System | InRole::Developer => Role::System,
                InRole::User => Role::User,
                InRole::Assistant => Role::Assistant,
                InRole::Tool | InRole::Function => {
                    return Err(ApiError::invalid(
                        "tool and function messages are not supported: this model has no tools",
                        Some(&format!("messages[{i}].role")),
                    ));
                }
            };
            let text = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => text.push_str(t),
                            ("text", None) => {
                                return Err(ApiError::invalid(
                                    "a text part needs `text`",
                                    Some(&format!("messages[{i}].content[{j}].text")),
                                ));
                            }
                            (other, _) => {
                                return Err(ApiError::invalid(
                                    format!(
                                        "content parts of type `{other}` are not supported: this is a text model"
                                    ),
                                    Some(&format!("messages[{i}].content[{j}].type")),
                                ));
                            }
                        }
                    }
                    text
                }
            };
            out.push(Message::new(role, text));
        }
        if out.last().map(|m| m.role) != Some(Role::User) {
            return Err(ApiError::invalid(
                "the last message must be the user's",
                Some(&format!("messages[{}].role", out.len() - 1)),
            ));
        }
        Ok(out)
    }

    /// The stop strings (at most four, none empty).
    pub fn stop_strings(&self) -> Result<Vec<String>, ApiError> {
        let list = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if list.len() > 4 {
            return Err(ApiError::invalid(
                "`stop` takes at most 4 strings",
                Some("stop"),
            ));
        }
        if list.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                "stop strings must not be empty",
                Some("stop"),
            ));
        }
        Ok(list)
    }

    /// Checks the sampling fields; returns (temperature, top_p).
    pub fn sampling(&self) -> Result<(f32, Option<f32>), ApiError> {
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                "`temperature` must be between 0 and 2",
                Some("temperature"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                "`top_p` must be in (0, 1]",
                Some("top_p"),
            ));
        }
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ApiError::invalid("only `n: 1` is supported", Some("n")));
        }
        if let Some(p) = self.repetition_penalty
            && !(p.is_finite() && p > 0.0)
        {
            return Err(ApiError::invalid(
                "`repetition_penalty` must be positive",
                Some("repetition_penalty"),
            ));
        }
        if self.logprobs == Some(true) {
            return Err(ApiError::invalid(
                "`logprobs` is not supported",
                Some("logprobs"),
            ));
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_null()) {
            return Err(ApiError::invalid(
                "`tools` are not supported: this model has no tools",
                Some("tools"),
            ));
        }
        let top_p = (temperature > 0.0 && top_p < 1.0).then_some(top_p);
        Ok((temperature, top_p))
    }

    /// `max_completion_tokens`, else `max_tokens`; 0 is refused.
    pub fn max_tokens(&self) -> Result<Option<usize>, ApiError> {
        let (value, name) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(v), _) => (v, "max_completion_tokens"),
            (None, Some(v)) => (v, "max_tokens"),
            (None, None) => return Ok(None),
        };
        if value == 0 {
            return Err(ApiError::invalid(
                format!("`{name}` must be at least 1"),
                Some(name),
            ));
        }
        Ok(Some(value as usize))
    }

    /// The name of the max-tokens field the client used (for errors about it).
    pub fn max_tokens_field(&self) -> &'static str {
        if self.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        }
    }

    /// Whether the triage text and disclaimer go into the content.
    pub fn inline_safety_text(&self) -> bool {
        self.medify.as_ref().is_none_or(|m| m.inline_safety_text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> ApiError {
        parse(body.as_bytes())
            .and_then(|r| r.conversation().map(|_| r))
            .and_then(|r| r.sampling().map(|_| r))
            .and_then(|r| r.stop_strings().map(|_| r))
            .and_then(|r| r.max_tokens().map(|_| r))
            .expect_err(body)
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("{", None),
            ("[]", None),
            (r#"{"model": "m"}"#, None),
            (r#"{"messages": "hi"}"#, Some("messages")),
            (
                r#"{"messages": [{"role": "boss", "content": "x"}]}"#,
                Some("messages[0].role"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": 5}]}"#,
                Some("messages[0].content"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#,
                Some("temperature"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "temperature": 3}"#,
                Some("temperature"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "top_p": 0}"#,
                Some("top_p"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}"#,
                Some("max_tokens"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}"#,
                Some("max_tokens"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "n": 2}"#,
                Some("n"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "stop": ["a","b","c","d","e"]}"#,
                Some("stop"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "stop": [""]}"#,
                Some("stop"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}"#,
                Some("stream"),
            ),
            (r#"{"messages": []}"#, Some("messages")),
            (
                r#"{"messages": [{"role": "tool", "content": "x"}]}"#,
                Some("messages[0].role"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
                Some("messages[0].content[0].type"),
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}"#,
                Some("messages[1].role"),
            ),
        ];
        for (body, param) in cases {
            let e = err(body);
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}: {}", e.message);
        }
    }

    #[test]
    fn openai_shapes_are_read() {
        let r = parse(br#"{"model": "m", "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}
        ], "stop": "END", "max_completion_tokens": 9, "max_tokens": 3, "user": "u1", "presence_penalty": 0}"#)
        .unwrap();
        let c = r.conversation().unwrap();
        assert_eq!(c[0], Message::new(Role::System, "Be brief."));
        assert_eq!(c[1], Message::new(Role::User, "Hi there"));
        assert_eq!(r.stop_strings().unwrap(), ["END"]);
        assert_eq!(r.max_tokens().unwrap(), Some(9));
        assert_eq!(r.sampling().unwrap(), (1.0, None));
        assert!(r.inline_safety_text());
    }
}
