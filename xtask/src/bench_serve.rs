//! `cargo xtask bench-serve`: the OpenAI-compatible server under 1, 4 and 16 concurrent
//! streaming clients. Each client streams one answer of exactly `--max-tokens` tokens
//! (`ignore_eos`), so every round decodes the same work per client. Reported per round:
//! aggregate tokens/s (all clients' tokens over the round's wall time), per-client tokens/s
//! (after the first token) and time to first token. Baselines from the same invocation: the
//! one-client round (how throughput scales with clients) and `CausalLm::generate` called
//! directly on one sequence (what HTTP, SSE and the engine thread cost).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args as ClapArgs;
use medify_qlora::data::{Message, Role};
use medify_qlora::models::GenerationConfig;
use medify_qlora::safety::DEFAULT_SYSTEM_PROMPT;
use medify_qlora::{BaseQuant, load_base};
use medify_serve::{EngineConfig, ServeConfig, Server};
use serde_json::{Value, json};

use crate::device::device_named;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model directory or .gguf file (e.g. SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(long)]
    model: PathBuf,
    /// Device to serve on.
    #[arg(long, default_value = "flex")]
    device: String,
    /// nf4 or fp4: hold the linear layers in 4 bits (as `serve --quant`); default as stored.
    #[arg(long)]
    quant: Option<BaseQuant>,
    /// Concurrent streaming clients per round.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4, 16])]
    clients: Vec<usize>,
    /// Tokens each client's answer has.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Sequences decoded together at most (the server's --max-batch).
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    #[command(flatten)]
    decode: crate::models::DecodeArgs,
    /// Print JSON only.
    #[arg(long)]
    json: bool,
}

/// Questions without red flags (the emergency text would come before the first token).
const QUESTIONS: [&str; 16] = [
    "What is anemia?",
    "How do vaccines work?",
    "What is high blood pressure?",
    "Why do we get fevers?",
    "What does insulin do?",
    "What is asthma?",
    "How is type 2 diabetes managed?",
    "What causes migraines?",
    "What is cholesterol?",
    "How much sleep do adults need?",
    "What is osteoporosis?",
    "What are the symptoms of the flu?",
    "What is a healthy resting heart rate?",
    "How does the kidney filter blood?",
    "What is celiac disease?",
    "Why is vitamin D important?",
];

struct ClientRun {
    tokens: usize,
    ttft: Duration,
    total: Duration,
}

fn stream_one(url: &str, question: &str, max_tokens: usize) -> anyhow::Result<ClientRun> {
    let body = json!({
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
        "medify": {"inline_safety_text": false},
    });
    let start = Instant::now();
    let resp = ureq::post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(body.to_string())
        .context("request")?;
    let mut ttft = None;
    let mut tokens = None;
    for line in BufReader::new(resp.into_body().into_reader()).lines() {
        let line = line.context("reading the stream")?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(data).context("chunk")?;
        if let Some(e) = chunk.get("error") {
            return Err(anyhow::anyhow!("server error: {e}"));
        }
        if ttft.is_none()
            && chunk["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        {
            ttft = Some(start.elapsed());
        }
        if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
            tokens = Some(n as usize);
        }
    }
    Ok(ClientRun {
        tokens: tokens.ok_or_else(|| anyhow::anyhow!("the stream ended without usage"))?,
        ttft: ttft.ok_or_else(|| anyhow::anyhow!("no token arrived"))?,
        total: start.elapsed(),
    })
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let device = device_named(&a.device)?;
    let quant = a.quant.and_then(BaseQuant::linear_quant);
    let mut base = load_base(&a.model, &device, quant, None)?;
    a.decode.apply(&mut base.model);

    // Baseline: one sequence through `generate`, same prompt rendering as the server's.
    let chat = medify_qlora::Chat::new(&base.model, &base.tokenizer, &base.encoder);
    let conversation = [
        Message::new(Role::System, DEFAULT_SYSTEM_PROMPT),
        Message::new(Role::User, QUESTIONS[0]),
    ];
    let prompt = chat.prompt_ids(&conversation)?;
    let config = GenerationConfig {
        max_new_tokens: a.max_tokens,
        ..GenerationConfig::default()
    };
    let _ = base
        .model
        .generate(std::slice::from_ref(&prompt), &config, &mut |_, _| true)?; // warm-up
    let start = Instant::now();
    let mut first = None;
    let out = base
        .model
        .generate(std::slice::from_ref(&prompt), &config, &mut |_, _| {
            first.get_or_insert_with(|| start.elapsed());
            true
        })?;
    let total = start.elapsed();
    let first = first.unwrap_or(total);
    let direct_decode =
        (out[0].ids.len().saturating_sub(1)) as f64 / (total - first).as_secs_f64().max(1e-9);
    let direct_total = out[0].ids.len() as f64 / total.as_secs_f64();
    let direct = json!({
        "tokens": out[0].ids.len(),
        "tok_s": direct_total,
        "decode_tok_s": direct_decode,
        "ttft_ms": first.as_secs_f64() * 1e3,
    });
    if !a.json {
        eprintln!(
            "direct generate: {direct_total:.1} tok/s ({direct_decode:.1} after the first token), first token {:.0} ms",
            first.as_secs_f64() * 1e3
        );
    }

    let server = Server::new(
        base.model,
        base.tokenizer,
        base.encoder,
        ServeConfig {
            engine: EngineConfig {
                max_batch: a.max_batch,
                queue: a.clients.iter().copied().max().unwrap_or(1).max(64),
            },
            ..ServeConfig::default()
        },
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = runtime.spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    stream_one(&url, QUESTIONS[0], 4)?; // warm-up

    let mut rounds = Vec::new();
    let mut one_client = None;
    for &n in &a.clients {
        let start = Instant::now();
        let runs: Vec<anyhow::Result<ClientRun>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let url = &url;
                    s.spawn(move || stream_one(url, QUESTIONS[i % QUESTIONS.len()], a.max_tokens))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("client thread panicked")))
                })
                .collect()
        });
        let wall = start.elapsed().as_secs_f64();
        let runs: Vec<ClientRun> = runs.into_iter().collect::<Result<_, _>>()?;
        let tokens: usize = runs.iter().map(|r| r.tokens).sum();
        let aggregate = tokens as f64 / wall;
        let per_client: Vec<f64> = runs
            .iter()
            .map(|r| {
                (r.tokens.saturating_sub(1)) as f64 / (r.total - r.ttft).as_secs_f64().max(1e-9)
            })
            .collect();
        let ttft: Vec<f64> = runs.iter().map(|r| r.ttft.as_secs_f64() * 1e3).collect();
        let base_agg = *one_client.get_or_insert(aggregate);
        let round = json!({
            "clients": n,
            "tokens": tokens,
            "wall_s": wall,
            "aggregate_tok_s": aggregate,
            "aggregate_vs_1_client": aggregate / base_agg,
            "aggregate_vs_direct": aggregate / direct_total,
            "per_client_tok_s_mean": mean(&per_client),
            "per_client_tok_s_min": per_client.iter().copied().fold(f64::INFINITY, f64::min),
            "ttft_ms_mean": mean(&ttft),
            "ttft_ms_p50": percentile(&ttft, 0.5),
            "ttft_ms_max": percentile(&ttft, 1.0),
        });
        if !a.json {
            eprintln!(
                "{n:>2} clients: {aggregate:.1} tok/s aggregate ({:.2}x one client), {:.1} tok/s per client, first token {:.0} ms mean / {:.0} ms max",
                aggregate / base_agg,
                mean(&per_client),
                mean(&ttft),
                percentile(&ttft, 1.0)
            );
        }
        rounds.push(round);
    }
    let _ = stop.send(());
    runtime.block_on(serving)??;
    println!(
        "{}",
        json!({
            "bench": "serve",
            "model": a.model.display().to_string(),
            "device": a.device,
            "quant": a.quant.map(BaseQuant::as_str),
            "max_tokens": a.max_tokens,
            "max_batch": a.max_batch,
            "direct_generate": direct,
            "rounds": rounds,
        })
    );
    Ok(())
}
