//! An Ollama `Modelfile` beside a GGUF export: `FROM` the file, the chat template as Ollama's
//! Go template, `stop` parameters at the end-of-turn tokens, and the system prompt with the
//! disclaimer the model card asks every answer to carry.
//!
//! Ollama renders its own Go template, not the Jinja one in the GGUF. The template families the
//! project knows (ChatML/SmolLM2, Llama 3, Zephyr/TinyLlama, Gemma, Mistral) are written out as
//! per-role prefixes and suffixes; a template of another shape gets no `TEMPLATE` line, and
//! Ollama falls back to detecting it from the GGUF's `tokenizer.chat_template`.

use std::path::Path;

use crate::error::{Result, io_err};
use crate::safety::DISCLAIMER;
use crate::training::checkpoints::write_atomic;

/// The text around each role's turn in a template family.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TurnFormat {
    /// `(before, after)` the system prompt; `None` folds it into the first user turn as
    /// `system + "\n\n" + user`, as the project's chat encoder does.
    system: Option<(String, String)>,
    user: (String, String),
    assistant: (String, String),
    /// What opens the assistant's turn to be generated.
    generation: String,
    /// Strings that end a turn.
    stops: Vec<String>,
}

/// The family of a Jinja chat template, by the markers it writes; `eos` is the tokenizer's
/// end-of-sequence token (Zephyr and Mistral end turns with it).
fn turn_format(jinja: &str, eos: &str) -> Option<TurnFormat> {
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    if jinja.contains("<|im_start|>") {
        Some(TurnFormat {
            system: Some(pair("<|im_start|>system\n", "<|im_end|>\n")),
            user: pair("<|im_start|>user\n", "<|im_end|>\n"),
            assistant: pair("<|im_start|>assistant\n", "<|im_end|>\n"),
            generation: "<|im_start|>assistant\n".into(),
            stops: vec!["<|im_end|>".into()],
        })
    } else if jinja.contains("<|start_header_id|>") {
        let header = |role: &str| format!("<|start_header_id|>{role}<|end_header_id|>\n\n");
        Some(TurnFormat {
            system: Some((header("system"), "<|eot_id|>".into())),
            user: (header("user"), "<|eot_id|>".into()),
            assistant: (header("assistant"), "<|eot_id|>".into()),
            generation: header("assistant"),
            stops: vec!["<|eot_id|>".into()],
        })
    } else if jinja.contains("<|assistant|>") && !eos.is_empty() {
        let end = format!("{eos}\n");
        Some(TurnFormat {
            system: Some(("<|system|>\n".into(), end.clone())),
            user: ("<|user|>\n".into(), end.clone()),
            assistant: ("<|assistant|>\n".into(), end),
            generation: "<|assistant|>\n".into(),
            stops: vec![eos.to_string()],
        })
    } else if jinja.contains("<start_of_turn>") {
        Some(TurnFormat {
            system: None,
            user: pair("<start_of_turn>user\n", "<end_of_turn>\n"),
            assistant: pair("<start_of_turn>model\n", "<end_of_turn>\n"),
            generation: "<start_of_turn>model\n".into(),
            stops: vec!["<end_of_turn>".into()],
        })
    } else if jinja.contains("[INST]") && !jinja.contains("<<SYS>>") && !eos.is_empty() {
        Some(TurnFormat {
            system: None,
            user: pair("[INST] ", " [/INST]"),
            assistant: (String::new(), format!("{eos} ")),
            generation: String::new(),
            stops: vec![eos.to_string(), "[INST]".into()],
        })
    } else {
        None
    }
}

impl TurnFormat {
    /// Ollama's Go template for this format: the system prompt (`.System`), then each message
    /// of `.Messages` by role, then the generation prompt. One line, so that no whitespace
    /// trimming can eat a newline of the literal text.
    fn go_template(&self) -> String {
        let mut t = String::new();
        let first_user = match &self.system {
            Some((pre, post)) => {
                t.push_str(&format!(
                    "{{{{ if .System }}}}{pre}{{{{ .System }}}}{post}{{{{ end }}}}"
                ));
                String::new()
            }
            None => "{{ if and (eq $i 0) $.System }}{{ $.System }}\n\n{{ end }}".to_string(),
        };
        let (up, us) = &self.user;
        let (ap, asuf) = &self.assistant;
        t.push_str(&format!(
            "{{{{ range $i, $m := .Messages }}}}{{{{ if eq .Role \"user\" }}}}{up}{first_user}{{{{ .Content }}}}{us}\
             {{{{ else if eq .Role \"assistant\" }}}}{ap}{{{{ .Content }}}}{asuf}{{{{ end }}}}{{{{ end }}}}{}",
            self.generation
        ));
        t
    }

    #[cfg(test)]
    /// What [`go_template`](Self::go_template) renders for `system` and `turns` (role, text;
    /// user and assistant only), for checking it against the Jinja template.
    fn render(&self, system: Option<&str>, turns: &[(&str, &str)]) -> String {
        let mut out = String::new();
        if let (Some(s), Some((pre, post))) = (system, &self.system) {
            out.push_str(&format!("{pre}{s}{post}"));
        }
        for (i, (role, text)) in turns.iter().enumerate() {
            let ((pre, post), fold) = match *role {
                "user" => (&self.user, self.system.is_none() && i == 0),
                _ => (&self.assistant, false),
            };
            out.push_str(pre);
            if let (true, Some(s)) = (fold, system) {
                out.push_str(&format!("{s}\n\n"));
            }
            out.push_str(text);
            out.push_str(post);
        }
        out.push_str(&self.generation);
        out
    }
}

/// An Ollama `Modelfile`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modelfile {
    /// What `FROM` names: the GGUF file, relative to the Modelfile.
    pub from: String,
    /// The Go template, when the chat template is of a family this crate writes out.
    pub template: Option<String>,
    /// `PARAMETER stop` values: the end-of-turn strings.
    pub stops: Vec<String>,
    /// The `SYSTEM` prompt.
    pub system: Option<String>,
}

impl Modelfile {
    /// The Modelfile of the GGUF file `gguf_name` (beside it), whose model is used with the
    /// Jinja chat template `chat_template` and end-of-sequence token `eos`. `system` is the
    /// system prompt (the run's, or the default educational one); the disclaimer the model card
    /// asks for is appended to it as an instruction, since Ollama has no other way to add it.
    ///
    /// ```
    /// use medify_qlora::training::Modelfile;
    /// let chatml = medify_qlora::data::ChatTemplate::builtin_source("chatml").unwrap();
    /// let m = Modelfile::new("model.gguf", chatml, "<|im_end|>", Some("Be careful."));
    /// let text = m.render();
    /// assert!(text.starts_with("FROM ./model.gguf\n"));
    /// assert!(text.contains("PARAMETER stop \"<|im_end|>\""));
    /// assert!(text.contains("TEMPLATE \"\"\"{{ if .System }}<|im_start|>system\n"));
    /// ```
    pub fn new(gguf_name: &str, chat_template: &str, eos: &str, system: Option<&str>) -> Modelfile {
        let format = turn_format(chat_template, eos);
        let mut stops = format.as_ref().map(|f| f.stops.clone()).unwrap_or_default();
        if stops.is_empty() && !eos.is_empty() {
            stops.push(eos.to_string());
        }
        let disclaimer =
            format!("End every answer with this note, on its own line: \"{DISCLAIMER}\"");
        let system = Some(match system {
            Some(s) if !s.is_empty() => format!("{s}\n\n{disclaimer}"),
            _ => disclaimer,
        });
        Modelfile {
            from: format!("./{gguf_name}"),
            template: format.map(|f| f.go_template()),
            stops,
            system,
        }
    }

    /// The Modelfile's text.
    pub fn render(&self) -> String {
        let quote = |s: &str| s.replace('"', "\\\"");
        let mut out = format!("FROM {}\n", self.from);
        if let Some(t) = &self.template {
            out.push_str(&format!("TEMPLATE \"\"\"{t}\"\"\"\n"));
        }
        for stop in &self.stops {
            out.push_str(&format!("PARAMETER stop \"{}\"\n", quote(stop)));
        }
        if let Some(s) = &self.system {
            out.push_str(&format!("SYSTEM \"\"\"{s}\"\"\"\n"));
        }
        out
    }

    /// Writes the Modelfile to `path` atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        write_atomic(path, self.render().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{ChatTemplate, Message, Role, SpecialTokens};

    /// Each family's prefixes and suffixes render what the project's Jinja template renders
    /// (less the BOS, which llama.cpp adds itself), so the Go template built from them prompts
    /// the model as training did.
    #[test]
    fn turn_formats_render_like_the_jinja_templates() {
        let special = SpecialTokens {
            bos: "<s>".into(),
            eos: "</s>".into(),
        };
        let turns = [
            ("user", "What is anemia?"),
            ("assistant", "A lack of healthy red blood cells."),
            ("user", "Is it serious?"),
        ];
        for name in ["chatml", "llama3", "tinyllama", "gemma", "mistral"] {
            let source = ChatTemplate::builtin_source(name).unwrap();
            let template = ChatTemplate::new(name, source).unwrap();
            let format = turn_format(source, "</s>").unwrap_or_else(|| panic!("{name}"));
            let system = format.system.is_some().then_some("Be careful.");
            let mut messages: Vec<Message> = system
                .map(|s| Message::new(Role::System, s))
                .into_iter()
                .collect();
            messages.extend(turns.iter().map(|(r, t)| {
                Message::new(
                    if *r == "user" {
                        Role::User
                    } else {
                        Role::Assistant
                    },
                    *t,
                )
            }));
            let jinja = template.render(&messages, true, &special).unwrap();
            let jinja = jinja.strip_prefix("<s>").unwrap_or(&jinja);
            assert_eq!(format.render(system, &turns), jinja, "{name}");
        }
        assert!(turn_format(ChatTemplate::builtin_source("llama2").unwrap(), "</s>").is_none());
    }

    #[test]
    fn an_unknown_template_still_gets_stops_and_the_disclaimer() {
        let m = Modelfile::new("x.gguf", "{{ messages }}", "</s>", None);
        let text = m.render();
        assert!(!text.contains("TEMPLATE"));
        assert!(text.contains("PARAMETER stop \"</s>\""));
        assert!(text.contains(DISCLAIMER));
    }

    #[test]
    fn the_system_prompt_folds_into_the_first_user_turn_without_a_system_role() {
        let gemma = turn_format(ChatTemplate::builtin_source("gemma").unwrap(), "<eos>").unwrap();
        let t = gemma.go_template();
        assert!(t.contains("{{ if and (eq $i 0) $.System }}{{ $.System }}\n\n{{ end }}"));
        assert_eq!(
            gemma.render(Some("S"), &[("user", "Q")]),
            "<start_of_turn>user\nS\n\nQ<end_of_turn>\n<start_of_turn>model\n"
        );
    }
}
