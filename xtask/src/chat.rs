//! `cargo xtask chat`: talk to a model (optionally with an adapter) through its chat template,
//! with streaming output and a medical safety disclaimer after every answer.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::Args as ClapArgs;
use medify_qlora::Chat;
use medify_qlora::models::GenerationConfig;
use serde_json::json;

use crate::models::{DecodeArgs, ModelArgs, SystemArgs};

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    base: ModelArgs,
    /// PEFT adapter directory to apply.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Built-in chat template instead of the model's.
    #[arg(long)]
    template: Option<String>,
    #[command(flatten)]
    system: SystemArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Answer this once and exit (no interactive loop).
    #[arg(long)]
    prompt: Option<String>,
    /// With --prompt: print {"ids", "text" (as shown), "answer" (the model's), "emergency"} only.
    #[arg(long)]
    json: bool,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Nucleus sampling.
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    /// Repetition penalty (1 disables).
    #[arg(long, default_value_t = 1.1)]
    repetition_penalty: f32,
    /// Upper bound on tokens per answer.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Leave out the safety disclaimer.
    #[arg(long)]
    no_disclaimer: bool,
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let (mut base, from, _) = a.base.load(a.adapter.as_deref(), a.template.as_deref())?;
    a.decode.apply(&mut base.model);
    let generation = GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_p: (a.temperature > 0.0 && a.top_p < 1.0).then_some(a.top_p),
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
        ..GenerationConfig::default()
    };
    let mut chat = Chat::new(&base.model, &base.tokenizer, &base.encoder)
        .with_generation(generation)
        .with_disclaimer(!a.no_disclaimer);
    if let Some(system) = a.system.choice() {
        chat = chat.with_system(system);
    }
    let mut stdout = std::io::stdout();
    if let Some(prompt) = &a.prompt {
        let json = a.json;
        if !json && let Some(t) = chat.triage(&chat.conversation_with(prompt)) {
            println!("{}\n", banner(&t));
        }
        let reply = chat.respond(prompt, &mut |piece| {
            if !json {
                print!("{piece}");
                let _ = stdout.flush();
            }
        })?;
        if json {
            let text = reply.display_text();
            // "emergency": the flags of an emergency (null otherwise), as before urgent routing
            // existed; "triage": level, flags and message of either level.
            let emergency = reply
                .triage
                .as_ref()
                .filter(|t| t.is_emergency())
                .map(|t| t.flags.clone());
            println!(
                "{}",
                json!({"ids": reply.ids, "text": text, "answer": reply.text,
                       "emergency": emergency, "triage": reply.triage})
            );
        } else {
            match reply.disclaimer {
                Some(d) => println!("\n\n{d}"),
                None => println!(),
            }
        }
        return Ok(());
    }
    eprintln!(
        "Chat with {} (empty line or Ctrl-D to quit, /reset to start over).",
        from.model.display()
    );
    let stdin = std::io::stdin();
    loop {
        print!("\nyou> ");
        let _ = stdout.flush();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if line.trim() == "/reset" {
            chat.clear();
            continue;
        }
        if let Some(t) = chat.triage(&chat.conversation_with(line.trim())) {
            println!("\n{}", banner(&t));
        }
        print!("assistant> ");
        let _ = stdout.flush();
        let reply = chat.respond(line.trim(), &mut |piece| {
            print!("{piece}");
            let _ = std::io::stdout().flush();
        })?;
        if let Some(d) = reply.disclaimer {
            println!("\n\n{d}");
        } else {
            println!();
        }
    }
    Ok(())
}

/// The routing as the terminal shows it: an emergency loud, an urgent matter calmer.
fn banner(t: &medify_qlora::safety::Triage) -> String {
    if t.is_emergency() {
        format!("!! EMERGENCY: {}", t.message)
    } else {
        format!("-- See a clinician today: {}", t.message)
    }
}
