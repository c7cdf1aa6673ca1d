//! `ChatTemplate`: a model's Jinja chat template rendered as Hugging Face renders it
//! (trim_blocks, lstrip_blocks, `raise_exception`, `bos_token`, `eos_token`,
//! `add_generation_prompt`, Python string methods), or a built-in one by name.

use minijinja::{Environment, Error, ErrorKind, context};

use crate::error::{DataError, Result};
use crate::record::{Message, Role};

const CHATML: &str = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const ZEPHYR: &str = "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token + '\\n' }}{% endfor %}\
{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";

const LLAMA2: &str = "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}{% set turns = messages[1:] %}\
{% else %}{% set sys = none %}{% set turns = messages %}{% endif %}\
{% for m in turns %}{% if (m['role'] == 'user') != loop.index0 is even %}{{ raise_exception('roles must alternate user/assistant') }}{% endif %}\
{% if m['role'] == 'user' %}{% if loop.first and sys is not none %}{% set text = '<<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' + m['content'] %}\
{% else %}{% set text = m['content'] %}{% endif %}{{ bos_token + '[INST] ' + text.strip() + ' [/INST]' }}\
{% else %}{{ ' ' + m['content'].strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

const LLAMA3: &str = "{% for m in messages %}{% if loop.first %}{{ bos_token }}{% endif %}\
{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}\
{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

const MISTRAL: &str = "{{ bos_token }}{% for m in messages %}\
{% if m['role'] == 'system' %}{{ raise_exception('the system role is not supported') }}{% endif %}\
{% if (m['role'] == 'user') != loop.index0 is even %}{{ raise_exception('roles must alternate user/assistant') }}{% endif %}\
{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ m['content'] + eos_token + ' ' }}{% endif %}{% endfor %}";

const GEMMA: &str = "{{ bos_token }}{% for m in messages %}\
{% if m['role'] == 'system' %}{{ raise_exception('the system role is not supported') }}{% endif %}\
{% if (m['role'] == 'user') != loop.index0 is even %}{{ raise_exception('roles must alternate user/assistant') }}{% endif %}\
{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\\n' + m['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}\
{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";

/// Names of the built-in templates, for models whose `tokenizer_config.json` has none.
pub const BUILTIN_TEMPLATES: [&str; 6] = [
    "chatml",
    "tinyllama",
    "llama2",
    "llama3",
    "mistral",
    "gemma",
];

/// The special-token strings a template may reference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `bos_token` (empty when the model has none).
    pub bos: String,
    /// `eos_token`.
    pub eos: String,
}

/// A compiled chat template.
///
/// ```
/// use medify_data::{ChatTemplate, Message, Role, SpecialTokens};
/// let t = ChatTemplate::builtin("chatml").unwrap();
/// let special = SpecialTokens::default();
/// let text = t.render(&[Message::new(Role::User, "Hi")], true, &special).unwrap();
/// assert_eq!(text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
/// ```
pub struct ChatTemplate {
    name: String,
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .finish()
    }
}

impl Clone for ChatTemplate {
    fn clone(&self) -> Self {
        let source = self
            .env
            .get_template("chat")
            .map(|t| t.source().to_string())
            .unwrap_or_default();
        ChatTemplate::new(&self.name, &source).unwrap_or_else(|_| ChatTemplate {
            name: self.name.clone(),
            env: Environment::new(),
        })
    }
}

fn raise_exception(message: String) -> std::result::Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(fmt)` as Llama 3.1 templates call it: supports `%d %b %Y %m %B %y %H %M`.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil-from-days (proleptic Gregorian)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem % 3600 / 60)),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

impl ChatTemplate {
    /// Compiles a Jinja chat template; `name` identifies it in errors.
    pub fn new(name: &str, source: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| DataError::Template {
                name: name.to_string(),
                message: format!("does not parse: {e}"),
            })?;
        Ok(ChatTemplate {
            name: name.to_string(),
            env,
        })
    }

    /// A built-in template: `chatml`, `tinyllama` (alias `zephyr`), `llama2`, `llama3`,
    /// `mistral`, `gemma`.
    pub fn builtin(name: &str) -> Result<ChatTemplate> {
        ChatTemplate::new(name, ChatTemplate::builtin_source(name)?)
    }

    /// The Jinja source of a built-in template (for writing it into a tokenizer config).
    pub fn builtin_source(name: &str) -> Result<&'static str> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "chatml" | "smollm2" => CHATML,
            "tinyllama" | "zephyr" => ZEPHYR,
            "llama2" | "llama-2" => LLAMA2,
            "llama3" | "llama-3" => LLAMA3,
            "mistral" => MISTRAL,
            "gemma" => GEMMA,
            other => {
                return Err(DataError::Invalid(format!(
                    "unknown template {other:?}; built-in templates: {}",
                    BUILTIN_TEMPLATES.join(", ")
                )));
            }
        })
    }

    /// The template's name (built-in name or the file it came from).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renders `messages`; errors carry the template's own `raise_exception` message.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        special: &SpecialTokens,
    ) -> Result<String> {
        let template = self.env.get_template("chat").map_err(|e| self.err(e))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => special.bos,
                eos_token => special.eos,
            })
            .map_err(|e| self.err(e))
    }

    /// Whether the template accepts a system turn (Gemma's and Mistral's raise on one).
    pub fn supports_system(&self, special: &SpecialTokens) -> bool {
        let probe = [
            Message::new(Role::System, "S"),
            Message::new(Role::User, "U"),
        ];
        self.render(&probe, false, special)
            .map(|text| text.contains('S'))
            .unwrap_or(false)
    }

    fn err(&self, e: Error) -> DataError {
        let mut message = e.to_string();
        if let Some(detail) = e.detail()
            && !message.contains(detail)
        {
            message = format!("{message}: {detail}");
        }
        DataError::Template {
            name: self.name.clone(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_a_date() {
        let s = strftime_now("%d %b %Y".into());
        assert_eq!(s.len(), 11, "{s}");
        assert!(s[7..].parse::<i32>().unwrap() >= 2024);
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let t = ChatTemplate::builtin("gemma").unwrap();
        let special = SpecialTokens {
            bos: "<bos>".into(),
            eos: "<eos>".into(),
        };
        let e = t
            .render(
                &[
                    Message::new(Role::System, "x"),
                    Message::new(Role::User, "y"),
                ],
                false,
                &special,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("system role is not supported"), "{e}");
        assert!(!t.supports_system(&special));
        assert!(
            ChatTemplate::builtin("chatml")
                .unwrap()
                .supports_system(&special)
        );
        let e = ChatTemplate::new("broken", "{% for %}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("broken") && e.contains("does not parse"), "{e}");
    }
}
