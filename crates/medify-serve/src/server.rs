//! [`Server`]: the HTTP side. Handlers check a request completely (auth, schema, model, context
//! window) before it reaches the engine, so every refusal is an OpenAI error JSON with its
//! status; accepted requests stream tokens back from the shared [`Engine`].

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use medify_chat::Chat;
use medify_data::{ChatEncoder, Message, Role};
use medify_models::{CausalLm, GenerationConfig, ModelTokenizer, StopReason, TextStreamer};
use medify_safety::DISCLAIMER;
use medify_safety::{DEFAULT_SYSTEM_PROMPT, Triage};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::engine::{Engine, EngineConfig, Event, Job, SubmitError};
use crate::error::ApiError;
use crate::request::{ChatRequest, parse};
use crate::text::AnswerText;

/// The web chat, served at `/`: one file, no network access needed.
pub const PAGE: &str = include_str!("page.html");

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The name `/v1/models` lists and requests may give as `model`.
    pub model_name: String,
    /// When set, `/v1/*` needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// The system prompt for conversations without one (`None`: none).
    pub system_prompt: Option<String>,
    /// The safety disclaimer after every answer.
    pub disclaimer: bool,
    /// Tokens per answer when the request gives no `max_tokens` (capped by the context window).
    pub default_max_tokens: usize,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Batch and queue sizes.
    pub engine: EngineConfig,
    /// After a shutdown signal, how long requests in flight may run before they are cancelled.
    pub shutdown_grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            model_name: "medify".into(),
            api_key: None,
            system_prompt: Some(DEFAULT_SYSTEM_PROMPT.to_string()),
            disclaimer: true,
            default_max_tokens: 512,
            max_body_bytes: 1 << 20,
            engine: EngineConfig::default(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

struct AppState {
    model: Arc<CausalLm>,
    tokenizer: ModelTokenizer,
    encoder: ChatEncoder,
    engine: Engine,
    config: ServeConfig,
    started: u64,
    requests: AtomicU64,
}

impl AppState {
    fn chat(&self, generation: GenerationConfig) -> Chat<'_> {
        Chat::new(&self.model, &self.tokenizer, &self.encoder)
            .with_generation(generation)
            .with_disclaimer(self.config.disclaimer)
            .with_system(None)
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.config.api_key else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Compare without an early exit, so timing does not tell how much of a guess matched.
        let (a, b) = (given.as_bytes(), key.as_bytes());
        let diff = (0..a.len().max(b.len())).fold(a.len() ^ b.len(), |d, i| {
            d | usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0))
        });
        if diff == 0 {
            Ok(())
        } else {
            Err(ApiError::unauthorized())
        }
    }
}

/// A loaded model behind an engine thread, ready to serve.
///
/// ```no_run
/// use burn::tensor::Device;
/// use medify_serve::{ServeConfig, Server, shutdown_signal};
/// # async fn run() -> std::io::Result<()> {
/// let dir = std::path::Path::new("fixtures/tiny_models/llama");
/// let base = medify_qlora::load_base(dir, &Device::flex(), None, None).unwrap();
/// let server = Server::new(base.model, base.tokenizer, base.encoder, ServeConfig::default())?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// server.serve(listener, shutdown_signal()).await
/// # }
/// ```
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    /// Starts the engine thread over `model`.
    pub fn new(
        model: CausalLm,
        tokenizer: ModelTokenizer,
        encoder: ChatEncoder,
        config: ServeConfig,
    ) -> std::io::Result<Server> {
        let model = Arc::new(model);
        let (engine, _thread) = Engine::start(model.clone(), config.engine)?;
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Server {
            state: Arc::new(AppState {
                model,
                tokenizer,
                encoder,
                engine,
                config,
                started,
                requests: AtomicU64::new(0),
            }),
        })
    }

    /// The routes, for serving on a listener of the caller's or testing in process.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(page))
            .route("/health", get(health))
            .route("/v1/models", get(models))
            .route("/v1/models/{id}", get(model))
            .route("/v1/chat/completions", post(chat_completions))
            .fallback(no_route)
            .method_not_allowed_fallback(wrong_method)
            .layer(DefaultBodyLimit::max(self.state.config.max_body_bytes))
            .with_state(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` completes; then stops accepting, lets requests in
    /// flight finish for the configured grace period, cancels what is left, and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let engine = self.state.engine.clone();
        let grace = self.state.config.shutdown_grace;
        let signal = async move {
            shutdown.await;
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                engine.abort();
            });
        };
        let app = self.router();
        axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await?;
        self.state.engine.abort();
        Ok(())
    }
}

/// Completes on Ctrl-C or (on Unix) SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

async fn page() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE)).into_response()
}

async fn health(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "model": st.config.model_name,
        "running": st.engine.running(),
        "queued": st.engine.queued(),
        "disconnected": st.engine.disconnected(),
    }))
}

fn model_object(st: &AppState) -> Value {
    json!({
        "id": st.config.model_name,
        "object": "model",
        "created": st.started,
        "owned_by": "medify-qlora",
    })
}

async fn models(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = st.authorize(&headers) {
        return e.into_response();
    }
    Json(json!({"object": "list", "data": [model_object(&st)]})).into_response()
}

async fn model(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = st.authorize(&headers) {
        return e.into_response();
    }
    if id != st.config.model_name {
        return ApiError::unknown_model(&id, &st.config.model_name).into_response();
    }
    Json(model_object(&st)).into_response()
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::no_route(method.as_str(), uri.path())
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        ..ApiError::invalid(format!("{} does not take {method}", uri.path()), None)
    }
}

/// An accepted request: what the answer needs besides the tokens.
struct Accepted {
    id: String,
    created: u64,
    conversation: Vec<Message>,
    generation: GenerationConfig,
    prompt_tokens: usize,
    stops: Vec<String>,
    stream: bool,
    include_usage: bool,
    inline: bool,
    triage: Option<Triage>,
    disclaimer: Option<&'static str>,
    events: mpsc::UnboundedReceiver<Event>,
}

/// What the generation task hands the response: answer text and how it ended.
enum Out {
    Text(String),
    Done {
        finish_reason: &'static str,
        completion_tokens: usize,
    },
    Failed(ApiError),
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let accepted = match accept(&st, &headers, body) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let (tx, rx) = mpsc::channel(64);
    let head = Head::of(&st, &accepted);
    let stream = accepted.stream;
    tokio::spawn(drive(st.clone(), accepted, tx));
    if stream {
        stream_response(head, rx).into_response()
    } else {
        complete_response(head, rx).await
    }
}

fn accept(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Accepted, ApiError> {
    st.authorize(headers)?;
    let body = body.map_err(|rejection| ApiError {
        status: rejection.status(),
        message: rejection.body_text(),
        kind: "invalid_request_error",
        param: None,
        code: None,
    })?;
    let req: ChatRequest = parse(&body)?;
    if let Some(m) = &req.model
        && m != &st.config.model_name
    {
        return Err(ApiError::unknown_model(m, &st.config.model_name));
    }
    let mut conversation = req.conversation()?;
    if !conversation.iter().any(|m| m.role == Role::System)
        && let Some(s) = &st.config.system_prompt
    {
        conversation.insert(0, Message::new(Role::System, s.clone()));
    }
    let (temperature, top_p) = req.sampling()?;
    let stops = req.stop_strings()?;
    let asked = req.max_tokens()?;
    let chat = st.chat(GenerationConfig::default());
    let prompt = chat
        .prompt_ids(&conversation)
        .map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))?;
    let context = st.model.config().max_position_embeddings;
    if prompt.len() >= context {
        return Err(ApiError::context(
            format!(
                "the messages take {} tokens; this model's context window is {context}",
                prompt.len()
            ),
            "messages",
        ));
    }
    let room = context - prompt.len();
    let max_new_tokens = match asked {
        Some(n) if n > room => {
            return Err(ApiError::context(
                format!(
                    "the messages take {} tokens and `{}` asks for {n} more, past this model's \
                     context window of {context}",
                    prompt.len(),
                    req.max_tokens_field()
                ),
                req.max_tokens_field(),
            ));
        }
        Some(n) => n,
        None => st.config.default_max_tokens.min(room),
    };
    let n = st.requests.fetch_add(1, Ordering::Relaxed);
    let seed = req.seed.map_or_else(|| fresh_seed(n), |s| s as u64);
    let chat = st.chat(GenerationConfig {
        max_new_tokens,
        temperature,
        top_p,
        repetition_penalty: req.repetition_penalty.unwrap_or(1.0),
        seed,
        ..GenerationConfig::default()
    });
    let mut generation = chat.generation().clone();
    if req.ignore_eos {
        generation.stop_ids.clear();
    }
    let triage = chat.triage(&conversation);
    let inline = req.inline_safety_text();
    let prompt_tokens = prompt.len();
    let (events_tx, events) = mpsc::unbounded_channel();
    st.engine
        .submit(Job {
            prompt,
            config: generation.clone(),
            events: events_tx,
        })
        .map_err(|e| match e {
            SubmitError::QueueFull => ApiError::busy(),
            SubmitError::Closed => ApiError::closing(),
        })?;
    Ok(Accepted {
        id: format!("chatcmpl-{:x}-{n}", st.started),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        conversation,
        generation,
        prompt_tokens,
        stops,
        stream: req.stream.unwrap_or(false),
        include_usage: req.stream_options.is_some_and(|o| o.include_usage),
        inline,
        triage,
        disclaimer: st.config.disclaimer.then_some(DISCLAIMER),
        events,
    })
}

fn fresh_seed(n: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Turns the engine's tokens into answer text: pieces as they complete, cut at stop strings;
/// the end decoded from every token, exactly as [`Chat::reply`] decodes it.
async fn drive(st: Arc<AppState>, mut a: Accepted, out: mpsc::Sender<Out>) {
    let chat = st.chat(a.generation.clone());
    let mut streamer = TextStreamer::new(&st.tokenizer);
    let mut text = AnswerText::new(
        std::mem::take(&mut a.stops),
        a.inline && a.disclaimer.is_some(),
    );
    let mut ids = Vec::new();
    let stop_ids = &a.generation.stop_ids;
    let reason = loop {
        if out.is_closed() {
            return; // the client went away; dropping `a.events` cancels the sequence
        }
        match a.events.recv().await {
            Some(Event::Token(id)) => {
                ids.push(id);
                if stop_ids.contains(&id) {
                    continue;
                }
                match streamer.push(id) {
                    Ok(Some(piece)) => {
                        let send = text.push(&piece);
                        if !send.is_empty() && out.send(Out::Text(send)).await.is_err() {
                            return;
                        }
                        if text.stopped() {
                            break "stop";
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = out
                            .send(Out::Failed(ApiError::internal(e.to_string())))
                            .await;
                        return;
                    }
                }
            }
            Some(Event::Done(StopReason::StopToken)) => break "stop",
            Some(Event::Done(StopReason::MaxTokens)) => break "length",
            Some(Event::Done(StopReason::Cancelled)) | None => {
                let _ = out.send(Out::Failed(ApiError::closing())).await;
                return;
            }
            Some(Event::Failed(why)) => {
                let _ = out.send(Out::Failed(ApiError::internal(why))).await;
                return;
            }
        }
    };
    drop(a.events);
    let completion_tokens = ids.len();
    let full = match chat.reply(&a.conversation, ids) {
        Ok(reply) => reply.text,
        Err(e) => {
            let _ = out
                .send(Out::Failed(ApiError::internal(e.to_string())))
                .await;
            return;
        }
    };
    let stopped_before = text.stopped();
    let (rest, _) = text.finish(&full);
    if !rest.is_empty() {
        let _ = out.send(Out::Text(rest)).await;
    }
    let finish_reason = if text.stopped() && !stopped_before {
        "stop"
    } else {
        reason
    };
    let _ = out
        .send(Out::Done {
            finish_reason,
            completion_tokens,
        })
        .await;
}

/// The parts of every response object that do not change while it streams.
struct Head {
    id: String,
    created: u64,
    model: String,
    prompt_tokens: usize,
    include_usage: bool,
    inline: bool,
    triage: Option<Triage>,
    disclaimer: Option<&'static str>,
}

impl Head {
    fn of(st: &AppState, a: &Accepted) -> Head {
        Head {
            id: a.id.clone(),
            created: a.created,
            model: st.config.model_name.clone(),
            prompt_tokens: a.prompt_tokens,
            include_usage: a.include_usage,
            inline: a.inline,
            triage: a.triage.clone(),
            disclaimer: a.disclaimer,
        }
    }

    /// `medify.triage` (either level) and `medify.emergency` (the same object when it is an
    /// emergency, as before urgent routing existed; null otherwise).
    fn triage_json(&self) -> Value {
        json!({
            "triage": self.triage,
            "emergency": self.triage.as_ref().filter(|t| t.is_emergency()),
        })
    }

    fn usage(&self, completion_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    /// The routing message as it opens the content (when inline).
    fn opening(&self) -> Option<String> {
        let e = self.triage.as_ref().filter(|_| self.inline)?;
        Some(format!("{}\n\n", e.message))
    }

    /// The disclaimer as it closes the content (when inline).
    fn closing(&self) -> Option<String> {
        let d = self.disclaimer.filter(|_| self.inline)?;
        Some(format!("\n\n{d}"))
    }

    fn chunk(
        &self,
        delta: Value,
        finish_reason: Option<&str>,
        extra: Option<(&str, Value)>,
    ) -> Value {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        if let Some((k, v)) = extra {
            c[k] = v;
        }
        c
    }
}

async fn complete_response(head: Head, mut rx: mpsc::Receiver<Out>) -> Response {
    let mut content = head.opening().unwrap_or_default();
    while let Some(out) = rx.recv().await {
        match out {
            Out::Text(t) => content.push_str(&t),
            Out::Failed(e) => return e.into_response(),
            Out::Done {
                finish_reason,
                completion_tokens,
            } => {
                if let Some(c) = head.closing() {
                    content.push_str(&c);
                }
                let mut medify = head.triage_json();
                medify["disclaimer"] = json!(head.disclaimer);
                return Json(json!({
                    "id": head.id,
                    "object": "chat.completion",
                    "created": head.created,
                    "model": head.model,
                    "system_fingerprint": null,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": null},
                        "logprobs": null,
                        "finish_reason": finish_reason,
                    }],
                    "usage": head.usage(completion_tokens),
                    "medify": medify,
                }))
                .into_response();
            }
        }
    }
    ApiError::internal("generation ended without an answer").into_response()
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

fn stream_response(
    head: Head,
    rx: mpsc::Receiver<Out>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let mut first = vec![data(&head.chunk(
        json!({"role": "assistant", "content": ""}),
        None,
        Some(("medify", head.triage_json())),
    ))];
    if let Some(open) = head.opening() {
        first.push(data(&head.chunk(json!({"content": open}), None, None)));
    }
    let pending: std::collections::VecDeque<SseEvent> = first.into();
    let stream = futures_util::stream::unfold(
        (head, rx, pending, false),
        |(head, mut rx, mut pending, mut ended)| async move {
            loop {
                if let Some(ev) = pending.pop_front() {
                    return Some((Ok(ev), (head, rx, pending, ended)));
                }
                if ended {
                    return None;
                }
                match rx.recv().await {
                    Some(Out::Text(t)) => {
                        pending.push_back(data(&head.chunk(json!({"content": t}), None, None)));
                    }
                    Some(Out::Done {
                        finish_reason,
                        completion_tokens,
                    }) => {
                        if let Some(c) = head.closing() {
                            pending.push_back(data(&head.chunk(json!({"content": c}), None, None)));
                        }
                        pending.push_back(data(&head.chunk(
                            json!({}),
                            Some(finish_reason),
                            Some(("medify", json!({"disclaimer": head.disclaimer}))),
                        )));
                        if head.include_usage {
                            let mut u = head.chunk(json!({}), None, None);
                            u["choices"] = json!([]);
                            u["usage"] = head.usage(completion_tokens);
                            pending.push_back(data(&u));
                        }
                        pending.push_back(SseEvent::default().data("[DONE]"));
                        ended = true;
                    }
                    Some(Out::Failed(e)) => {
                        pending.push_back(data(&e.body()));
                        ended = true;
                    }
                    None => {
                        pending.push_back(data(
                            &ApiError::internal("generation ended without an answer").body(),
                        ));
                        ended = true;
                    }
                }
            }
        },
    );
    Sse::new(stream)
}
