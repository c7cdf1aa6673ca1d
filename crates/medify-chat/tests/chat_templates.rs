//! Chat templates of every family in `fixtures/chat_templates` (copied from ../shared/tokenizers
//! by `fixtures/scripts/make_chat_references.py`) against transformers' `apply_chat_template`:
//! the same text, the same token ids, and labels on exactly the assistant replies and their
//! end-of-turn markers.

use std::io::Read;
use std::path::{Path, PathBuf};

use medify_data::{ChatTemplate, Example, IGNORE, Message, Role, SpecialTokens};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/chat_templates")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap())
        .unwrap()
}

/// A model-like directory (tokenizer.json + tokenizer_config.json) for a family.
fn family_dir(family: &str, test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "medify-chat-{}-{test}-{family}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let gz_family = if family == "tinyllama-chat" {
        "llama2-chat"
    } else {
        family
    };
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(fixtures().join(gz_family).join("tokenizer.json.gz")).unwrap(),
    )
    .read_to_end(&mut json)
    .unwrap();
    std::fs::write(dir.join("tokenizer.json"), json).unwrap();
    std::fs::copy(
        fixtures().join(family).join("tokenizer_config.json"),
        dir.join("tokenizer_config.json"),
    )
    .unwrap();
    dir
}

fn messages(v: &Value) -> Vec<Message> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            Message::new(
                Role::parse(m["role"].as_str().unwrap()).unwrap(),
                m["content"].as_str().unwrap(),
            )
        })
        .collect()
}

fn numbers<T: TryFrom<i64>>(v: &Value) -> Vec<T>
where
    T::Error: std::fmt::Debug,
{
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| T::try_from(x.as_i64().unwrap()).unwrap())
        .collect()
}

#[test]
fn every_family_renders_tokenizes_and_masks_like_transformers() {
    let r = reference();
    let families = r.as_object().unwrap();
    assert_eq!(families.len(), 6);
    for (family, f) in families {
        let dir = family_dir(family, "families");
        let enc = medify_chat::load_chat_encoder(&dir, None).unwrap();
        let model_tokenizer = medify_models::ModelTokenizer::from_dir(&dir).unwrap();
        for (case, c) in f["cases"].as_object().unwrap() {
            let what = format!("{family}/{case}");
            let msgs = messages(&c["messages"]);
            let ex = Example::Chat(msgs.clone());
            let rendered = enc.render(&ex).unwrap();
            assert_eq!(
                rendered.text,
                c["render"].as_str().unwrap(),
                "{what}: render"
            );
            let e = enc.encode(&ex).unwrap();
            assert_eq!(e.input_ids, numbers::<u32>(&c["input_ids"]), "{what}: ids");
            // The model's own tokenizer (used by chat and generation) gives the same ids.
            assert_eq!(
                model_tokenizer.encode(&rendered.text, false).unwrap(),
                e.input_ids,
                "{what}: ModelTokenizer ids"
            );
            let want = numbers::<i64>(&c["labels"]);
            if e.labels != want {
                let tok = enc.tokenizer();
                let show = |l: &[i64]| {
                    let ids: Vec<u32> = l
                        .iter()
                        .filter(|&&x| x != IGNORE)
                        .map(|&x| x as u32)
                        .collect();
                    tok.decode(&ids, false).unwrap()
                };
                panic!(
                    "{what}: labels\n ours:   {:?}\n theirs: {:?}",
                    show(&e.labels),
                    show(&want)
                );
            }
            // Every reply is trained, ending with the family's end-of-turn marker.
            let trained: Vec<u32> = e
                .labels
                .iter()
                .filter(|&&l| l != IGNORE)
                .map(|&l| l as u32)
                .collect();
            let text = enc.tokenizer().decode(&trained, false).unwrap();
            for reply in ex.replies() {
                assert!(
                    text.contains(reply.trim()),
                    "{what}: {reply:?} not trained in {text:?}"
                );
            }
            let prompt = enc.generation_prompt(&msgs[..msgs.len() - 1]).unwrap();
            assert_eq!(
                prompt,
                c["generation_prompt"].as_str().unwrap(),
                "{what}: generation prompt"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn builtin_templates_render_like_the_official_ones() {
    let r = reference();
    for (family, builtin, cases) in [
        (
            "gemma-it",
            "gemma",
            &["single", "system", "multi_turn", "whitespace", "unicode"][..],
        ),
        (
            "llama2-chat",
            "llama2",
            &["single", "system", "multi_turn", "whitespace", "unicode"],
        ),
        (
            "llama3-instruct",
            "llama3",
            &["single", "system", "multi_turn", "whitespace", "unicode"],
        ),
        (
            "mistral-instruct",
            "mistral",
            &["single", "system", "multi_turn", "whitespace", "unicode"],
        ),
        (
            "tinyllama-chat",
            "tinyllama",
            &["single", "system", "multi_turn", "whitespace", "unicode"],
        ),
        // SmolLM2's own template adds a default system prompt; plain ChatML does not.
        ("smollm2-instruct", "chatml", &["system"]),
    ] {
        let dir = family_dir(family, "builtin");
        let official = medify_chat::load_chat_encoder(&dir, None).unwrap();
        let ours = medify_chat::load_chat_encoder(&dir, Some(builtin)).unwrap();
        for case in cases {
            let ex = Example::Chat(messages(&r[family]["cases"][case]["messages"]));
            assert_eq!(
                ours.render(&ex).unwrap(),
                official.render(&ex).unwrap(),
                "{family}/{case}"
            );
            assert_eq!(
                ours.encode(&ex).unwrap(),
                official.encode(&ex).unwrap(),
                "{family}/{case}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_template_that_raises_is_an_error_not_a_panic() {
    let t = ChatTemplate::new(
        "strict",
        "{% if messages|length > 1 %}{{ raise_exception('one turn only') }}{% endif %}x",
    )
    .unwrap();
    let two = [
        Message::new(Role::User, "a"),
        Message::new(Role::Assistant, "b"),
    ];
    let e = t
        .render(&two, false, &SpecialTokens::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("strict") && e.contains("one turn only"), "{e}");
}

/// Preference pairs tokenized as TRL's `DPOTrainer` tokenizes them
/// (`fixtures/scripts/make_preference_tokenization.py`): conversational pairs from the
/// medical-safety set, an implicit-prompt conversation, and text pairs, for every family.
#[test]
fn preference_pairs_tokenize_like_trls_dpo_trainer() {
    let path = fixtures().join("../preference/tokenization.json");
    let want: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let jsonl = |records: &Value| -> String {
        records
            .as_array()
            .unwrap()
            .iter()
            .map(|r| format!("{r}\n"))
            .collect()
    };
    let inputs = [
        ("chat", jsonl(&want["chat_pairs"])),
        ("implicit", format!("{}\n", want["implicit"])),
        ("text", jsonl(&want["text_pairs"])),
    ];
    for (family, runs) in want["families"].as_object().unwrap() {
        let dir = family_dir(family, "preference");
        let enc = medify_chat::load_chat_encoder(&dir, None).unwrap();
        for (kind, text) in &inputs {
            let Some(expected) = runs.get(*kind) else {
                continue;
            };
            let read = medify_data::read_preferences_from(
                text.as_bytes(),
                Path::new("pairs.jsonl"),
                medify_data::FileKind::Jsonl,
                &medify_data::ReadOptions::default(),
            )
            .unwrap();
            for (pair, e) in read.pairs.iter().zip(expected.as_array().unwrap()) {
                let got = enc.encode_pair(pair).unwrap();
                let what = format!("{family} {kind} {}", pair.origin);
                assert_eq!(
                    got.prompt,
                    numbers::<u32>(&e["prompt_ids"]),
                    "{what}: prompt"
                );
                assert_eq!(
                    got.chosen,
                    numbers::<u32>(&e["chosen_ids"]),
                    "{what}: chosen"
                );
                assert_eq!(
                    got.rejected,
                    numbers::<u32>(&e["rejected_ids"]),
                    "{what}: rejected"
                );
            }
            assert_eq!(read.pairs.len(), expected.as_array().unwrap().len());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
