//! Property-based fuzzing of every reader of a user's file: random and mutated inputs built from
//! the real fixtures must give `Ok` or a typed error, never a panic, and never an allocation
//! larger than the input justifies.
//!
//! `MEDIFY_FUZZ_CASES` sets the cases per round (default 3000, what CI runs, one round);
//! `MEDIFY_FUZZ_UNTIL` keeps every reader going in rounds of fresh cases until that time
//! (`cargo xtask fuzz --minutes N`). A failing input is shrunk and written to
//! `target/fuzz-failures/<reader>.bin`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Cursor;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use medify_qlora::data::{Example, Message, Role};
use medify_qlora::data::{FileKind, ReadOptions, read_preferences_from, read_records_from};
use medify_qlora::lora::LoraConfig;
use medify_qlora::models::{
    GgufSource, LlamaConfig, ModelTokenizer, SafetensorsSource, WeightSource,
};
use medify_qlora::quant::QuantStateJson;
use medify_qlora::quant::bnb;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// The system allocator, noting the largest single request of each thread.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|m| {
        if size > m.get() {
            m.set(size);
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the bookkeeping allocates nothing.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A reader of one kind of user file, run on bytes; `Err` is the reader's own typed error.
#[derive(Debug, Clone, Copy)]
enum Reader {
    Gguf,
    Safetensors,
    Bnb,
    QuantState,
    ModelConfig,
    AdapterConfig,
    TokenizerJson,
    TokenizerConfig,
    Jsonl,
    Csv,
    MedquadXml,
    Preferences,
}

/// A temporary directory per thread, reused across cases.
fn scratch() -> PathBuf {
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::tempdir().expect("temporary directory");
    }
    DIR.with(|d| d.path().to_path_buf())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("scratch write");
    path
}

impl Reader {
    const ALL: [Reader; 12] = [
        Reader::Gguf,
        Reader::Safetensors,
        Reader::Bnb,
        Reader::QuantState,
        Reader::ModelConfig,
        Reader::AdapterConfig,
        Reader::TokenizerJson,
        Reader::TokenizerConfig,
        Reader::Jsonl,
        Reader::Csv,
        Reader::MedquadXml,
        Reader::Preferences,
    ];

    /// Real inputs the mutations start from.
    fn seeds(self) -> Vec<Vec<u8>> {
        match self {
            Reader::Gguf => vec![
                fixture("fixtures/tiny_models/llama.gguf"),
                k_quant_export(),
                sentencepiece_gguf(),
            ],
            Reader::Safetensors => vec![
                fixture("fixtures/tiny_models/llama/model.safetensors"),
                fixture("fixtures/tiny_models/llama_nf4/model.safetensors"),
                fixture("fixtures/transformers_llama_int8/model.safetensors"),
                fixture("fixtures/lora/peft_lora/adapter_model.safetensors"),
            ],
            Reader::Bnb => vec![fixture("fixtures/tiny_models/llama_nf4/model.safetensors")],
            Reader::QuantState => {
                let bytes = fixture("fixtures/tiny_models/llama_nf4/model.safetensors");
                let st = safetensors::SafeTensors::deserialize(&bytes).expect("fixture");
                let mut states: Vec<Vec<u8>> = st
                    .tensors()
                    .into_iter()
                    .filter(|(name, _)| name.contains(".quant_state."))
                    .map(|(_, view)| view.data().to_vec())
                    .collect();
                states.truncate(4);
                assert!(!states.is_empty(), "the NF4 fixture holds quant states");
                states
            }
            Reader::ModelConfig => vec![
                fixture("fixtures/tiny_models/llama/config.json"),
                fixture("fixtures/tiny_models/llama_nf4/config.json"),
                fixture("fixtures/transformers_llama_int8/config.json"),
                fixture("fixtures/tiny_models/llama3/config.json"),
                fixture("fixtures/tiny_models/gemma/config.json"),
            ],
            Reader::AdapterConfig => vec![
                fixture("fixtures/lora/peft_lora/adapter_config.json"),
                fixture("fixtures/lora/peft_dora/adapter_config.json"),
                fixture("fixtures/lora/peft_rslora/adapter_config.json"),
            ],
            Reader::TokenizerJson => vec![fixture("fixtures/tiny_models/llama/tokenizer.json")],
            Reader::TokenizerConfig => [
                "llama2-chat",
                "llama3-instruct",
                "mistral-instruct",
                "gemma-it",
                "smollm2-instruct",
                "tinyllama-chat",
            ]
            .iter()
            .map(|f| {
                fixture(&format!(
                    "fixtures/chat_templates/{f}/tokenizer_config.json"
                ))
            })
            .collect(),
            Reader::Jsonl => ["messages", "sharegpt", "alpaca", "qa", "text"]
                .iter()
                .map(|f| fixture(&format!("fixtures/data/{f}.jsonl")))
                .collect(),
            Reader::Csv => vec![fixture("fixtures/data/chatbot.csv")],
            Reader::MedquadXml => vec![
                fixture("fixtures/data/medquad_xml/10_MPlus_ADAM_QA__0000009.xml"),
                fixture("fixtures/data/medquad_xml/3_GHR_QA__0000590.xml"),
            ],
            Reader::Preferences => {
                // conversational pairs, an implicit prompt, and text pairs
                let heldout = fixture("fixtures/medical_preferences/heldout.jsonl");
                let first: Vec<u8> = heldout
                    .split(|&b| b == b'\n')
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(&b'\n');
                vec![
                    first,
                    br#"{"chosen": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}], "rejected": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Green."}]}"#.to_vec(),
                    b"{\"prompt\": \"Q: fever?\", \"chosen\": \" See a doctor if it lasts.\", \"rejected\": \" Ignore it.\"}\n".to_vec(),
                ]
            }
        }
    }

    /// Runs the reader, as far as a user's file goes: parse, then read every part of it.
    fn run(self, bytes: &[u8]) -> Result<(), String> {
        let s = |e: &dyn std::fmt::Display| e.to_string();
        match self {
            Reader::Gguf => {
                let path = write(&scratch(), "model.gguf", bytes);
                let source = GgufSource::open(&path).map_err(|e| s(&e))?;
                let names: Vec<String> = source.tensor_infos().keys().cloned().collect();
                for name in names {
                    let _ = source.decode(&name);
                }
                ModelTokenizer::from_gguf(&source).map_err(|e| s(&e))?;
            }
            Reader::Safetensors => {
                let path = write(&scratch(), "model.safetensors", bytes);
                let source =
                    SafetensorsSource::open_files(&[path], "fuzz".into()).map_err(|e| s(&e))?;
                for name in source.names() {
                    if let Ok(w) = source.load(&name) {
                        let _ = w.shape();
                    }
                }
            }
            Reader::Bnb => {
                bnb::read_all(bytes, "fuzz").map_err(|e| s(&e))?;
            }
            Reader::QuantState => {
                QuantStateJson::parse(bytes, "w").map_err(|e| s(&e))?;
            }
            Reader::ModelConfig => {
                let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| s(&e))?;
                LlamaConfig::from_json(&value, "config.json").map_err(|e| s(&e))?;
            }
            Reader::AdapterConfig => {
                let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| s(&e))?;
                LoraConfig::from_peft_json(&value, Path::new("adapter_config.json"))
                    .map_err(|e| s(&e))?;
            }
            Reader::TokenizerJson | Reader::TokenizerConfig => {
                let dir = scratch();
                let (tokenizer, config) = match self {
                    Reader::TokenizerJson => (
                        bytes.to_vec(),
                        fixture("fixtures/tiny_models/llama/tokenizer_config.json"),
                    ),
                    _ => (
                        fixture("fixtures/tiny_models/llama/tokenizer.json"),
                        bytes.to_vec(),
                    ),
                };
                write(&dir, "tokenizer.json", &tokenizer);
                write(&dir, "tokenizer_config.json", &config);
                let tok = ModelTokenizer::from_dir(&dir).map_err(|e| s(&e))?;
                let encoder = medify_qlora::chat_encoder(&tok, None)
                    .or_else(|_| medify_qlora::chat_encoder(&tok, Some("chatml")))
                    .map_err(|e| s(&e))?;
                let chat = Example::Chat(vec![
                    Message::new(Role::System, "Be careful."),
                    Message::new(Role::User, "What is gout?"),
                    Message::new(Role::Assistant, "A form of arthritis."),
                ]);
                encoder.encode(&chat).map_err(|e| s(&e))?;
            }
            Reader::Preferences => {
                let encoder = medify_qlora::load_chat_encoder(
                    &root().join("fixtures/tiny_models/llama"),
                    Some("chatml"),
                )
                .map_err(|e| s(&e))?;
                let lenient = ReadOptions {
                    skip_invalid: true,
                    ..ReadOptions::default()
                };
                let _ = read_preferences_from(
                    Cursor::new(bytes),
                    Path::new("p.jsonl"),
                    FileKind::Jsonl,
                    &lenient,
                );
                let read = read_preferences_from(
                    Cursor::new(bytes),
                    Path::new("p.jsonl"),
                    FileKind::Jsonl,
                    &ReadOptions::default(),
                )
                .map_err(|e| s(&e))?;
                for pair in &read.pairs {
                    encoder.encode_pair(pair).map_err(|e| s(&e))?;
                }
            }
            Reader::Jsonl | Reader::Csv | Reader::MedquadXml => {
                let (name, kind) = match self {
                    Reader::Jsonl => ("data.jsonl", FileKind::Jsonl),
                    Reader::Csv => ("data.csv", FileKind::Csv),
                    _ => ("data.xml", FileKind::MedquadXml),
                };
                let lenient = ReadOptions {
                    skip_invalid: true,
                    ..ReadOptions::default()
                };
                let _ = read_records_from(Cursor::new(bytes), Path::new(name), kind, &lenient);
                let strict = ReadOptions::default();
                read_records_from(Cursor::new(bytes), Path::new(name), kind, &strict)
                    .map_err(|e| s(&e))?;
            }
        }
        Ok(())
    }
}

/// A Q4_K_M export of a random model 256 wide (Q4_K, Q6_K and Q5_0 blocks, a tied embedding),
/// so the mutations reach the K-quant decoders.
fn k_quant_export() -> Vec<u8> {
    use medify_qlora::models::{CausalLm, GgufExport, GgufType, LoadOptions, RandomWeights};
    let dir = root().join("fixtures/tiny_models/llama");
    let mut config = LlamaConfig::from_file(dir.join("config.json")).expect("fixture");
    (config.hidden_size, config.intermediate_size) = (256, 320);
    (config.head_dim, config.num_hidden_layers) = (64, 1);
    config.tie_word_embeddings = true;
    let source = RandomWeights::new(config.clone(), 5);
    let (model, _) = CausalLm::load(
        &source,
        &config,
        &burn::tensor::Device::flex(),
        &LoadOptions::dense(),
    )
    .expect("random model");
    let tok = ModelTokenizer::load(&dir).expect("fixture");
    let path = scratch().join("seed-q4km.gguf");
    let options = GgufExport {
        dtype: GgufType::Q4KM,
        overwrite: true,
        ..GgufExport::default()
    };
    model.save_gguf(&path, &tok, &options).expect("export");
    std::fs::read(&path).expect("export")
}

/// A tiny SentencePiece GGUF (`tokenizer.ggml.model = llama`: tokens, scores, token types, no
/// merges), metadata only, so the mutations reach the SentencePiece tokenizer builder.
fn sentencepiece_gguf() -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes()); // tensors
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    let tokens = [
        "<unk>", "<s>", "</s>", "<0x41>", "▁", "a", "b", "▁a", "ab", "▁ab",
    ];
    type Value = Box<dyn Fn(&mut Vec<u8>)>;
    let mut kv: Vec<(&str, Value)> = vec![
        (
            "general.architecture",
            Box::new(move |b| {
                b.extend(8u32.to_le_bytes());
                string(b, "llama");
            }),
        ),
        (
            "tokenizer.ggml.model",
            Box::new(move |b| {
                b.extend(8u32.to_le_bytes());
                string(b, "llama");
            }),
        ),
        (
            "tokenizer.ggml.tokens",
            Box::new(move |b| {
                b.extend(9u32.to_le_bytes());
                b.extend(8u32.to_le_bytes());
                b.extend((tokens.len() as u64).to_le_bytes());
                tokens.iter().for_each(|t| string(b, t));
            }),
        ),
        (
            "tokenizer.ggml.scores",
            Box::new(move |b| {
                b.extend(9u32.to_le_bytes());
                b.extend(6u32.to_le_bytes());
                b.extend((tokens.len() as u64).to_le_bytes());
                (0..tokens.len()).for_each(|i| b.extend((-(i as f32)).to_le_bytes()));
            }),
        ),
        (
            "tokenizer.ggml.token_type",
            Box::new(move |b| {
                b.extend(9u32.to_le_bytes());
                b.extend(5u32.to_le_bytes());
                b.extend((tokens.len() as u64).to_le_bytes());
                [3i32, 3, 3, 6, 1, 1, 1, 1, 1, 1]
                    .iter()
                    .for_each(|t| b.extend(t.to_le_bytes()));
            }),
        ),
    ];
    for (key, value) in [
        ("llama.embedding_length", 8u32),
        ("llama.attention.head_count", 2),
        ("llama.feed_forward_length", 16),
        ("llama.block_count", 1),
        ("tokenizer.ggml.bos_token_id", 1),
        ("tokenizer.ggml.eos_token_id", 2),
    ] {
        kv.push((
            key,
            Box::new(move |b| {
                b.extend(4u32.to_le_bytes());
                b.extend(value.to_le_bytes());
            }),
        ));
    }
    b.extend((kv.len() as u64).to_le_bytes());
    for (key, write) in &kv {
        string(&mut b, key);
        write(&mut b);
    }
    b
}

/// One edit of an input.
#[derive(Debug, Clone)]
enum Edit {
    /// Keep only the first `n` bytes (a fraction of the length, in 1/65536).
    Truncate(u16),
    /// XOR one byte.
    Flip(u16, u8),
    /// Insert bytes.
    Insert(u16, Vec<u8>),
    /// Remove up to `len` bytes.
    Remove(u16, u8),
    /// Overwrite 8 bytes with an integer that breaks sizes and offsets.
    Lie(u16, u64),
    /// Overwrite a JSON-ish token: digits, quotes and brackets that change types and lengths.
    Token(u16, &'static str),
}

const LIES: [u64; 8] = [
    0,
    1,
    u32::MAX as u64,
    1 << 31,
    1 << 40,
    1 << 60,
    u64::MAX,
    u64::MAX - 7,
];

const TOKENS: [&str; 12] = [
    "0",
    "-1",
    "1e308",
    "null",
    "[]",
    "{}",
    "\"",
    "99999999999999999999",
    "NaN",
    "]",
    "\u{0}",
    "<",
];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<u16>().prop_map(Edit::Truncate),
        (any::<u16>(), 1..=255u8).prop_map(|(p, x)| Edit::Flip(p, x)),
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(p, b)| Edit::Insert(p, b)),
        (any::<u16>(), any::<u8>()).prop_map(|(p, n)| Edit::Remove(p, n)),
        (any::<u16>(), proptest::sample::select(LIES.to_vec())).prop_map(|(p, v)| Edit::Lie(p, v)),
        (any::<u16>(), proptest::sample::select(TOKENS.to_vec()))
            .prop_map(|(p, t)| Edit::Token(p, t)),
    ]
}

/// Edits concentrate at the start, where headers and lengths live, half of the time.
fn at(pos: u16, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let p = pos as usize;
    if p.is_multiple_of(2) {
        (p / 2) % len.min(4096)
    } else {
        p * len / 65536
    }
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = bytes.len();
        match e {
            Edit::Truncate(f) => bytes.truncate(*f as usize * len / 65536),
            Edit::Flip(p, x) if len > 0 => bytes[at(*p, len)] ^= x,
            Edit::Insert(p, b) => {
                let i = at(*p, len);
                bytes.splice(i..i, b.iter().copied());
            }
            Edit::Remove(p, n) => {
                let i = at(*p, len);
                let end = (i + *n as usize).min(len);
                bytes.drain(i..end);
            }
            Edit::Lie(p, v) if len >= 8 => {
                let i = at(*p, len).min(len - 8);
                bytes[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            Edit::Token(p, t) => {
                let i = at(*p, len);
                let end = (i + t.len()).min(len);
                bytes.splice(i..end, t.bytes());
            }
            _ => {}
        }
    }
    bytes
}

/// Mutated seeds mostly, plain random bytes sometimes.
fn input(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    prop_oneof![
        9 => (0..n, proptest::collection::vec(edit(), 1..6))
            .prop_map(move |(i, edits)| apply(seeds[i].clone(), &edits)),
        1 => proptest::collection::vec(any::<u8>(), 0..512),
    ]
}

/// The most a reader may ask for at once: a small multiple of its input (4-bit weights decode to
/// 8 bytes per input byte) plus a fixed allowance for tables and buffers.
fn allowance(len: usize) -> usize {
    64 * len + (32 << 20)
}

thread_local! {
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
}

/// Panics inside a case are reported once, as the case's failure, not by the default hook on
/// every shrinking step; panics elsewhere print as usual.
fn quiet_inside_cases() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_CASE.with(Cell::get) {
                default(info);
            }
        }));
    });
}

/// Inputs a reader accepted and refused.
#[derive(Default)]
struct Tally {
    accepted: Cell<u64>,
    refused: Cell<u64>,
}

fn check(reader: Reader, bytes: &[u8], tally: &Tally) -> Result<(), TestCaseError> {
    LARGEST.with(|m| m.set(0));
    IN_CASE.with(|c| c.set(true));
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| reader.run(bytes)));
    IN_CASE.with(|c| c.set(false));
    let largest = LARGEST.with(Cell::get);
    match outcome {
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(TestCaseError::fail(format!(
                "{reader:?} panicked: {message}"
            )))
        }
        Ok(_) if largest > allowance(bytes.len()) => Err(TestCaseError::fail(format!(
            "{reader:?} allocated {largest} bytes at once for a {}-byte input",
            bytes.len()
        ))),
        // Ok and typed errors are both fine.
        Ok(Ok(())) => {
            tally.accepted.set(tally.accepted.get() + 1);
            Ok(())
        }
        Ok(Err(_)) => {
            tally.refused.set(tally.refused.get() + 1);
            Ok(())
        }
    }
}

fn cases() -> u32 {
    std::env::var("MEDIFY_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

/// `MEDIFY_FUZZ_UNTIL` (seconds since the Unix epoch): keep fuzzing until then. `cargo xtask
/// fuzz` sets it and runs every reader at once.
fn deadline() -> Option<Instant> {
    let until: f64 = std::env::var("MEDIFY_FUZZ_UNTIL").ok()?.parse().ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    Some(Instant::now() + Duration::from_secs_f64((until - now).max(0.0)))
}

fn fuzz(reader: Reader) {
    quiet_inside_cases();
    let strategy = input(reader.seeds());
    let deadline = deadline();
    let mut round = 0u64;
    let tally = Tally::default();
    loop {
        let config = Config {
            cases: cases(),
            failure_persistence: None,
            ..Config::default()
        };
        // A fixed seed per reader and round: CI runs the same cases every time.
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(reader as u64 * 1_000_003 + round).to_le_bytes());
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        let result = runner.run(&strategy, |bytes| check(reader, &bytes, &tally));
        if let Err(e) = result {
            let (why, bytes) = match e {
                TestError::Fail(why, bytes) => (why.to_string(), bytes),
                TestError::Abort(why) => (why.to_string(), Vec::new()),
            };
            let dir = root().join("target/fuzz-failures");
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("{reader:?}.bin").to_lowercase());
            let _ = std::fs::write(&file, &bytes);
            panic!("{why}\n(the shrunk input is in {})", file.display());
        }
        round += 1;
        if deadline.is_none_or(|d| Instant::now() >= d) {
            break;
        }
    }
    let (accepted, refused) = (tally.accepted.get(), tally.refused.get());
    eprintln!("{reader:?}: {accepted} inputs accepted, {refused} refused, {round} round(s)");
    // Inputs that all fail the first check (or all pass) would exercise almost nothing.
    assert!(
        accepted > 0 && refused > 0,
        "{reader:?}: {accepted} accepted, {refused} refused: the mutations are not reaching the reader"
    );
}

macro_rules! fuzz_tests {
    ($($name:ident => $reader:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            fuzz(Reader::$reader);
        }
    )*};
}

fuzz_tests! {
    gguf => Gguf,
    safetensors_dense_4bit_and_8bit => Safetensors,
    bnb_layout => Bnb,
    quant_state_json => QuantState,
    model_config_json => ModelConfig,
    adapter_config_json => AdapterConfig,
    tokenizer_json => TokenizerJson,
    tokenizer_config_and_chat_template => TokenizerConfig,
    jsonl_records => Jsonl,
    csv_records => Csv,
    medquad_xml_records => MedquadXml,
    preference_pairs => Preferences,
}

#[test]
fn the_edits_change_inputs_and_the_seeds_are_accepted() {
    // A fuzzer whose mutations do nothing, or whose seeds already fail, tests nothing. (The
    // MedlinePlus ADAM document is a seed that is refused: MedQuAD ships it without answers.)
    for reader in Reader::ALL {
        let outcomes: Vec<Result<(), String>> =
            reader.seeds().iter().map(|s| reader.run(s)).collect();
        assert!(
            outcomes.iter().any(Result::is_ok),
            "{reader:?}: every seed is rejected: {outcomes:?}"
        );
    }
    // The GGUF seeds that reach the K-quant and SentencePiece paths must themselves be read.
    for (i, seed) in Reader::Gguf.seeds().iter().enumerate() {
        assert_eq!(Reader::Gguf.run(seed), Ok(()), "GGUF seed {i}");
    }
    let seed = b"{\"a\": 1}".to_vec();
    assert_eq!(apply(seed.clone(), &[Edit::Truncate(32768)]), b"{\"a\"");
    assert_ne!(apply(seed.clone(), &[Edit::Flip(0, 1)]), seed);
    assert_eq!(apply(vec![0; 8], &[Edit::Lie(0, u64::MAX)]), vec![255; 8]);
}

#[test]
fn the_allocation_check_sees_a_large_request() {
    LARGEST.with(|m| m.set(0));
    let big: Vec<u8> = Vec::with_capacity(40 << 20);
    let largest = LARGEST.with(Cell::get);
    drop(big);
    assert!(largest >= 40 << 20 && largest > allowance(0), "{largest}");
}
