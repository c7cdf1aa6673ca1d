//! `cargo xtask serve`: the OpenAI-compatible server and web chat of `medify-serve` over a
//! model (and adapter).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args as ClapArgs;
use medify_serve::{EngineConfig, ServeConfig, Server, shutdown_signal};

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
    /// Address to listen on; 127.0.0.1 keeps the server to this machine.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* (default: the MEDIFY_API_KEY variable, if set).
    #[arg(long)]
    api_key: Option<String>,
    /// The model name clients send and /v1/models lists (default: the adapter's or model's
    /// file or directory name).
    #[arg(long)]
    model_name: Option<String>,
    #[command(flatten)]
    system: SystemArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Leave out the safety disclaimer after answers.
    #[arg(long)]
    no_disclaimer: bool,
    /// Sequences decoded together at most.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Requests waiting beyond the batch at most (more get 429).
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Tokens per answer when a request gives no max_tokens.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// Seconds requests in flight may finish after Ctrl-C/SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 10)]
    grace: u64,
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let (mut base, from, _) = a.base.load(a.adapter.as_deref(), a.template.as_deref())?;
    a.decode.apply(&mut base.model);
    let named = a.adapter.as_deref().unwrap_or(&from.model);
    let model_name = a.model_name.clone().unwrap_or_else(|| {
        named
            .file_stem()
            .map_or("medify".into(), |s| s.to_string_lossy().into_owned())
    });
    let defaults = ServeConfig::default();
    let config = ServeConfig {
        model_name,
        api_key: a
            .api_key
            .clone()
            .or_else(|| std::env::var("MEDIFY_API_KEY").ok())
            .filter(|k| !k.is_empty()),
        system_prompt: a
            .system
            .choice()
            .unwrap_or_else(|| defaults.system_prompt.clone()),
        disclaimer: !a.no_disclaimer,
        default_max_tokens: a.max_tokens,
        engine: EngineConfig {
            max_batch: a.max_batch,
            queue: a.queue,
        },
        shutdown_grace: Duration::from_secs(a.grace),
        ..defaults
    };
    let name = config.model_name.clone();
    let keyed = config.api_key.is_some();
    let server = Server::new(base.model, base.tokenizer, base.encoder, config)
        .context("starting the engine")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("listening on {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "serving `{name}` at http://{addr}/ (web chat) and http://{addr}/v1 (OpenAI API{}); Ctrl-C stops",
            if keyed { ", bearer key required" } else { "" }
        );
        server
            .serve(listener, shutdown_signal())
            .await
            ?;
        eprintln!("stopped");
        Ok(())
    })
}
