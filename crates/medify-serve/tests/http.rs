//! The server over real HTTP (ureq) on the tiny Llama fixture on flex: answers equal
//! `medify_qlora::Chat`'s for the same seed and settings, streaming and not; every error code;
//! auth; concurrent clients; client disconnects; shutdown.

use std::io::{BufRead, BufReader};
use std::sync::OnceLock;
use std::time::Duration;

use burn::tensor::Device;
use medify_qlora::data::{Message, Role};
use medify_qlora::models::GenerationConfig;
use medify_qlora::{BaseModel, Chat, DISCLAIMER, Reply, load_base};
use medify_serve::{EngineConfig, ServeConfig};

use crate::common;
use common::agent;
use serde_json::{Value, json};

/// The tiny model's context window is 256 tokens and its tokenizer spends about one token per
/// two characters, so the tests use a short system prompt in place of the default (~290 tokens).
const SYSTEM: &str = "You are a careful medical assistant.";

const TINY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fixtures/tiny_models/llama"
);

fn base() -> BaseModel {
    load_base(TINY.as_ref(), &Device::flex(), None, None).expect("tiny model")
}

/// The reference: one loaded copy answering through `Chat`.
fn reference() -> &'static BaseModel {
    static BASE: OnceLock<BaseModel> = OnceLock::new();
    BASE.get_or_init(base)
}

/// The tiny model behind a server with the tests' short system prompt.
fn tiny_server(config: ServeConfig) -> common::Running {
    let config = ServeConfig {
        system_prompt: Some(SYSTEM.into()),
        ..config
    };
    common::Running::start(base(), config)
}

/// POSTs `body` (JSON text) with optional bearer `key`; returns the status and body JSON.
fn post(url: &str, body: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = agent()
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", &format!("Bearer {k}"));
    }
    let mut resp = req.send(body).unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn get(url: &str, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = agent().get(format!("{url}{path}"));
    if let Some(k) = key {
        req = req.header("authorization", &format!("Bearer {k}"));
    }
    let mut resp = req.call().unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// POSTs a streaming request; returns every `data:` payload (`[DONE]` as a string).
fn stream(url: &str, body: &Value) -> Vec<Value> {
    let resp = agent()
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(body.to_string())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let reader = BufReader::new(resp.into_body().into_reader());
    reader
        .lines()
        .map(|l| l.unwrap())
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .map(|d| serde_json::from_str(&d).unwrap_or(Value::String(d)))
        .collect()
}

fn streamed_content(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// What `Chat` answers to `messages` (the servers' system prompt added when they have none)
/// with these settings.
fn chat_reply(
    messages: &[(Role, &str)],
    temperature: f32,
    top_p: Option<f32>,
    seed: u64,
    max: usize,
) -> (Reply, usize) {
    let b = reference();
    let mut conversation: Vec<Message> =
        messages.iter().map(|(r, t)| Message::new(*r, *t)).collect();
    if !messages.iter().any(|(r, _)| *r == Role::System) {
        conversation.insert(0, Message::new(Role::System, SYSTEM));
    }
    let chat = Chat::new(&b.model, &b.tokenizer, &b.encoder).with_generation(GenerationConfig {
        max_new_tokens: max,
        temperature,
        top_p,
        seed,
        ..GenerationConfig::default()
    });
    let prompt = chat.prompt_ids(&conversation).unwrap().len();
    (chat.answer(&conversation, &mut |_| {}).unwrap(), prompt)
}

fn messages_json(messages: &[(Role, &str)]) -> Value {
    Value::Array(
        messages
            .iter()
            .map(|(r, t)| {
                let role = match r {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                };
                json!({"role": role, "content": t})
            })
            .collect(),
    )
}

fn finish_reason(reply: &Reply, max: usize) -> &'static str {
    let stops = &reference().tokenizer.stop_ids;
    if reply.ids.last().is_some_and(|id| stops.contains(id)) {
        "stop"
    } else {
        assert_eq!(reply.ids.len(), max);
        "length"
    }
}

#[test]
fn answers_equal_chat_streaming_and_not() {
    let server = tiny_server(ServeConfig::default());
    // (conversation, temperature, top_p, seed, max_tokens)
    type Case<'a> = (Vec<(Role, &'a str)>, f32, Option<f32>, u64, usize);
    let cases: Vec<Case> = vec![
        (vec![(Role::User, "What is anemia?")], 0.8, Some(0.9), 3, 20),
        (
            vec![(Role::User, "I have crushing chest pain and I'm sweating")],
            0.0,
            None,
            0,
            12,
        ),
        (
            vec![(Role::User, "burning when I pee and now a fever")],
            0.0,
            None,
            0,
            12,
        ),
        (
            vec![
                (Role::System, "Answer in one sentence."),
                (Role::User, "What causes gout?"),
                (Role::Assistant, "Uric acid crystals in a joint."),
                (Role::User, "How is it treated?"),
            ],
            1.0,
            None,
            11,
            16,
        ),
    ];
    for (messages, temperature, top_p, seed, max) in cases {
        let (reply, prompt_tokens) = chat_reply(&messages, temperature, top_p, seed, max);
        let mut body = json!({
            "model": "medify",
            "messages": messages_json(&messages),
            "temperature": temperature,
            "seed": seed,
            "max_tokens": max,
        });
        if let Some(p) = top_p {
            body["top_p"] = json!(p);
        }
        let (status, r) = post(&server.url, &body.to_string(), None);
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["object"], "chat.completion");
        assert_eq!(r["model"], "medify");
        let choice = &r["choices"][0];
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["message"]["content"], reply.display_text());
        assert_eq!(choice["finish_reason"], finish_reason(&reply, max));
        assert_eq!(r["usage"]["prompt_tokens"], prompt_tokens);
        assert_eq!(r["usage"]["completion_tokens"], reply.ids.len());
        assert_eq!(r["usage"]["total_tokens"], prompt_tokens + reply.ids.len());
        assert_eq!(r["medify"]["disclaimer"], DISCLAIMER);
        match &reply.triage {
            Some(t) => {
                assert_eq!(r["medify"]["triage"]["message"], t.message);
                assert_eq!(r["medify"]["triage"]["flags"], json!(t.flags));
                assert_eq!(r["medify"]["triage"]["level"], json!(t.level));
                // `emergency` keeps its old meaning: the same object, for emergencies only.
                if t.is_emergency() {
                    assert_eq!(r["medify"]["emergency"], r["medify"]["triage"]);
                } else {
                    assert!(r["medify"]["emergency"].is_null());
                }
            }
            None => assert!(r["medify"]["triage"].is_null() && r["medify"]["emergency"].is_null()),
        }

        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let events = stream(&server.url, &body);
        assert_eq!(events.last().unwrap(), "[DONE]");
        assert_eq!(events[0]["object"], "chat.completion.chunk");
        assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(
            events
                .iter()
                .all(|e| e == "[DONE]" || e["id"] == events[0]["id"])
        );
        assert_eq!(streamed_content(&events), reply.display_text());
        let finish: Vec<&Value> = events
            .iter()
            .filter(|e| !e["choices"][0]["finish_reason"].is_null() && e.is_object())
            .collect();
        assert_eq!(finish.len(), 1);
        assert_eq!(
            finish[0]["choices"][0]["finish_reason"],
            finish_reason(&reply, max)
        );
        let usage = &events[events.len() - 2];
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"], r["usage"]);
        if let Some(e) = &reply.triage {
            assert_eq!(events[0]["medify"]["triage"]["message"], e.message);
            assert!(
                streamed_content(&events[..2]).starts_with(&e.message),
                "the banner comes first"
            );
        }
    }
}

#[test]
fn safety_text_apart_and_stop_strings() {
    let server = tiny_server(ServeConfig::default());
    let messages = [(Role::User, "My baby is 6 weeks old and has a fever of 38.5")];
    let (reply, _) = chat_reply(&messages, 0.0, None, 0, 24);
    let body = json!({
        "messages": messages_json(&messages),
        "temperature": 0,
        "max_tokens": 24,
        "medify": {"inline_safety_text": false},
    });
    let (status, r) = post(&server.url, &body.to_string(), None);
    assert_eq!(status, 200);
    assert_eq!(r["choices"][0]["message"]["content"], reply.text);
    assert_eq!(r["medify"]["emergency"]["flags"], json!(["infant_fever"]));
    assert_eq!(r["medify"]["disclaimer"], DISCLAIMER);

    // A stop string from the middle of the answer ends it just before its first occurrence.
    let chars: Vec<(usize, char)> = reply.text.char_indices().collect();
    assert!(
        chars.len() > 8,
        "answer long enough to cut: {:?}",
        reply.text
    );
    let stop = &reply.text[chars[4].0..chars[7].0];
    let want = &reply.text[..reply.text.find(stop).unwrap()];
    let mut body = body;
    body["stop"] = json!(["never-in-this-answer", stop]);
    let (status, r) = post(&server.url, &body.to_string(), None);
    assert_eq!(status, 200);
    assert_eq!(r["choices"][0]["message"]["content"], want);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    body["stream"] = json!(true);
    let events = stream(&server.url, &body);
    assert_eq!(streamed_content(&events), want);
    assert!(
        events
            .iter()
            .all(|e| !e.to_string().contains(stop) || e["medify"].is_object())
    );
}

#[test]
fn every_error_has_its_status_and_openai_shape() {
    let server = tiny_server(ServeConfig {
        max_body_bytes: 64 * 1024,
        ..ServeConfig::default()
    });
    let long = "pain ".repeat(400);
    let cases: Vec<(String, u16, Option<&str>, Option<&str>)> = vec![
        ("{\"messages\": [".into(), 400, None, None),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}"#.into(),
            400,
            Some("temperature"),
            None,
        ),
        (
            r#"{"messages": [{"role": "nurse", "content": "hi"}]}"#.into(),
            400,
            Some("messages[0].role"),
            None,
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "n": 3}"#.into(),
            400,
            Some("n"),
            None,
        ),
        (
            r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}"#.into(),
            404,
            Some("model"),
            Some("model_not_found"),
        ),
        (
            json!({"messages": [{"role": "user", "content": long}]}).to_string(),
            400,
            Some("messages"),
            Some("context_length_exceeded"),
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 250}"#.into(),
            400,
            Some("max_tokens"),
            Some("context_length_exceeded"),
        ),
        (
            json!({"messages": [{"role": "user", "content": "x".repeat(70 * 1024)}]}).to_string(),
            413,
            None,
            None,
        ),
    ];
    for (body, status, param, code) in cases {
        let (got, r) = post(&server.url, &body, None);
        let shown = &body[..body.len().min(80)];
        assert_eq!(got, status, "{shown}: {r}");
        let e = &r["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{shown}: {r}"
        );
        assert!(e["type"].is_string(), "{shown}: {r}");
        assert_eq!(e["param"].as_str(), param, "{shown}: {r}");
        assert_eq!(e["code"].as_str(), code, "{shown}: {r}");
    }
    let (status, r) = get(&server.url, "/v1/nothing", None);
    assert_eq!(
        (status, r["error"]["type"].as_str()),
        (404, Some("invalid_request_error"))
    );
    let (status, r) = get(&server.url, "/v1/chat/completions", None);
    assert_eq!(status, 405, "{r}");
    assert!(r["error"]["message"].is_string());
    let (status, r) = get(&server.url, "/v1/models", None);
    assert_eq!(status, 200);
    assert_eq!(r["data"][0]["id"], "medify");
    assert_eq!(get(&server.url, "/v1/models/medify", None).0, 200);
    assert_eq!(get(&server.url, "/v1/models/other", None).0, 404);
    let (status, page) = get(&server.url, "/", None);
    assert_eq!(status, 200);
    assert!(
        page.as_str().is_some_and(|p| p.contains("<html")),
        "the web chat is served"
    );
}

#[test]
fn api_key_guards_the_api_only() {
    let server = tiny_server(ServeConfig {
        api_key: Some("s3cret".into()),
        ..ServeConfig::default()
    });
    let body = r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}"#;
    for key in [None, Some("wrong"), Some("s3cre"), Some("s3crett")] {
        let (status, r) = post(&server.url, body, key);
        assert_eq!(status, 401, "{key:?}");
        assert_eq!(r["error"]["code"], "invalid_api_key");
        assert_eq!(get(&server.url, "/v1/models", key).0, 401);
    }
    assert_eq!(post(&server.url, body, Some("s3cret")).0, 200);
    assert_eq!(get(&server.url, "/v1/models", Some("s3cret")).0, 200);
    assert_eq!(get(&server.url, "/health", None).0, 200);
    assert_eq!(get(&server.url, "/", None).0, 200);
}

#[test]
fn concurrent_clients_each_get_their_own_answer() {
    let server = tiny_server(ServeConfig::default());
    let questions = [
        "What is anemia?",
        "How do vaccines work?",
        "What is hypertension?",
        "Why do we get fevers?",
        "What does insulin do?",
        "What is asthma?",
    ];
    let url = server.url.clone();
    std::thread::scope(|s| {
        let handles: Vec<_> = questions
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let url = url.clone();
                s.spawn(move || {
                    let messages = [(Role::User, *q)];
                    let body = json!({
                        "messages": messages_json(&messages),
                        "temperature": 0.9,
                        "seed": i,
                        "max_tokens": 10 + 3 * i,
                        "stream": i % 2 == 0,
                    });
                    let content = if i % 2 == 0 {
                        streamed_content(&stream(&url, &body))
                    } else {
                        let (status, r) = post(&url, &body.to_string(), None);
                        assert_eq!(status, 200, "{r}");
                        r["choices"][0]["message"]["content"]
                            .as_str()
                            .unwrap()
                            .to_string()
                    };
                    (i, content)
                })
            })
            .collect();
        for h in handles {
            let (i, content) = h.join().unwrap();
            let (reply, _) = chat_reply(
                &[(Role::User, questions[i])],
                0.9,
                None,
                i as u64,
                10 + 3 * i,
            );
            assert_eq!(content, reply.display_text(), "client {i}");
        }
    });
}

#[test]
fn a_full_queue_answers_429() {
    let server = tiny_server(ServeConfig {
        engine: EngineConfig {
            max_batch: 1,
            queue: 1,
        },
        default_max_tokens: 10_000,
        ..ServeConfig::default()
    });
    // Long answers (up to the context window), fired together: one decodes, one waits, the
    // rest are refused.
    let body = r#"{"messages": [{"role": "user", "content": "Tell me about the heart."}], "temperature": 1, "seed": 1, "repetition_penalty": 0.5}"#;
    let url = server.url.clone();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|_| s.spawn(|| post(&url, body, None)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (status, r) = h.join().unwrap();
                match status {
                    200 => assert!(r["choices"][0]["message"]["content"].is_string()),
                    429 => assert_eq!(r["error"]["code"], "rate_limit_exceeded"),
                    other => panic!("unexpected {other}: {r}"),
                }
                status
            })
            .collect()
    });
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
}

#[test]
fn a_client_that_hangs_up_is_cancelled() {
    let server = tiny_server(ServeConfig {
        engine: EngineConfig {
            max_batch: 1,
            queue: 8,
        },
        default_max_tokens: 10_000,
        ..ServeConfig::default()
    });
    let url = server.url.clone();
    let long = r#"{"messages": [{"role": "user", "content": "Tell me about the heart."}], "temperature": 1, "seed": 1, "repetition_penalty": 0.5, "ignore_eos": true}"#;
    std::thread::scope(|s| {
        // Three answers as long as the context allows, one at a time, ahead of the client below,
        // so it hangs up while its request still waits and its first token comes after.
        let ahead: Vec<_> = (0..3).map(|_| s.spawn(|| post(&url, long, None))).collect();
        let mut health = Value::Null;
        for _ in 0..400 {
            health = get(&url, "/health", None).1;
            if health["running"] == 1 && health["queued"] == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(health["queued"], 2, "{health}");
        let resp = agent()
            .post(format!("{url}/v1/chat/completions"))
            .header("content-type", "application/json")
            .send(long.replace("\"seed\": 1", "\"stream\": true"))
            .unwrap();
        let mut reader = BufReader::new(resp.into_body().into_reader());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("data: "),
            "the first chunk comes at once: {line}"
        );
        drop(reader);
        for h in ahead {
            let (status, r) = h.join().unwrap();
            assert_eq!(status, 200, "{r}");
            assert_eq!(r["choices"][0]["finish_reason"], "length");
        }
        for _ in 0..400 {
            health = get(&url, "/health", None).1;
            if health["disconnected"] == 1 && health["running"] == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        assert_eq!(health["disconnected"], 1, "{health}");
        assert_eq!(health["running"], 0, "{health}");
    });
}

#[test]
fn shutdown_finishes_requests_in_flight_then_returns() {
    let mut server = tiny_server(ServeConfig::default());
    let messages = [(Role::User, "What is anemia?")];
    let (reply, _) = chat_reply(&messages, 0.0, None, 0, 60);
    let body = json!({"messages": messages_json(&messages), "temperature": 0, "max_tokens": 60, "stream": true});
    let resp = agent()
        .post(format!("{}/v1/chat/completions", server.url))
        .header("content-type", "application/json")
        .send(body.to_string())
        .unwrap();
    let mut reader = BufReader::new(resp.into_body().into_reader());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    let stop = server.stop.take().unwrap();
    stop.send(()).unwrap();
    let events: Vec<Value> = std::iter::once(first)
        .chain(reader.lines().map(|l| l.unwrap()))
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .map(|d| serde_json::from_str(d.trim()).unwrap_or(Value::String(d)))
        .collect();
    assert_eq!(streamed_content(&events), reply.display_text());
    assert_eq!(events.last().unwrap(), "[DONE]");
    server.thread.take().unwrap().join().unwrap().unwrap();
    // The port is free again: binding it succeeds, where a leaked listener would hold it.
    // (Connecting and expecting a refusal failed once in CI: a connect to a free local port
    // can be given that same port as its source and connect to itself, and any listener that
    // takes the freed port answers.) Tries for 2 s, past anything transient.
    let addr = server.url.trim_start_matches("http://").to_string();
    let free = (0..40).any(|_| {
        std::net::TcpListener::bind(&addr).is_ok() || {
            std::thread::sleep(Duration::from_millis(50));
            false
        }
    });
    assert!(free, "the listener on {addr} is closed after serve returns");
}
