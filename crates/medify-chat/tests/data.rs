//! Reading every input format, clear errors for broken files, and the preparation pipeline
//! (dedupe, short replies, seeded split, truncation, packing, padding) on the fixtures in
//! `fixtures/data`, with the tiny Llama's ChatML tokenizer.

use std::path::{Path, PathBuf};

use medify_data::{
    Batch, ChatEncoder, DatasetConfig, Example, FieldMap, IGNORE, InputFormat, Message,
    ReadOptions, Role, Truncation, pack, prepare, read_records,
};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/data")
        .join(name)
}

fn encoder() -> ChatEncoder {
    medify_chat::load_chat_encoder(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny_models/llama"),
        None,
    )
    .unwrap()
}

fn examples(name: &str) -> Vec<Example> {
    read_records(&data(name), &ReadOptions::default())
        .unwrap()
        .records
        .into_iter()
        .map(|r| r.example)
        .collect()
}

#[test]
fn every_input_format_reads_into_conversations() {
    let anemia = Example::qa(
        "What is anemia?",
        "A shortage of healthy red blood cells to carry oxygen.",
    );
    let m = examples("messages.jsonl");
    assert_eq!(m.len(), 2, "blank lines are skipped");
    let Example::Chat(first) = &m[0] else {
        panic!()
    };
    assert_eq!(
        first[0],
        Message::new(Role::System, "You are a careful medical assistant.")
    );
    assert_eq!(m[1].replies().count(), 2);
    assert_eq!(examples("sharegpt.jsonl")[0], anemia);
    let alpaca = examples("alpaca.jsonl");
    assert_eq!(
        alpaca[0],
        Example::qa(
            "Explain the term below in plain language.\n\ntachycardia",
            "A heart rate faster than normal, over 100 beats per minute at rest."
        )
    );
    assert_eq!(alpaca[1], anemia);
    assert_eq!(examples("qa.jsonl")[0], anemia);
    assert_eq!(
        examples("text.jsonl")[0],
        Example::Text("Anemia is a shortage of healthy red blood cells.".into())
    );

    // CSV: Patient/Doctor are recognised; Description can be mapped to the system turn.
    let csv = read_records(&data("chatbot.csv"), &ReadOptions::default()).unwrap();
    assert_eq!(csv.records.len(), 2);
    assert_eq!(
        csv.records[0].origin,
        format!("{}:2", data("chatbot.csv").display())
    );
    assert!(
        matches!(&csv.records[1].example, Example::Chat(t) if t[0].content.starts_with("I get knee pain"))
    );
    let mapped = read_records(
        &data("chatbot.csv"),
        &ReadOptions {
            format: InputFormat::QuestionAnswer,
            fields: FieldMap::parse("question=Patient,answer=Doctor,system=Description").unwrap(),
            skip_invalid: false,
        },
    )
    .unwrap();
    assert!(
        matches!(&mapped.records[0].example, Example::Chat(t) if t[0].role == Role::System && t.len() == 3)
    );

    // MedQuAD XML: every answered QAPair; removed answers are skipped and counted.
    let xml = read_records(&data("medquad_xml"), &ReadOptions::default()).unwrap();
    assert!(xml.records.len() >= 5, "{}", xml.records.len());
    assert!(!xml.skipped.is_empty());
    assert!(xml.skipped.iter().any(|(o, _)| o.contains("ADAM")));
    assert!(
        matches!(&xml.records[0].example, Example::Chat(t) if t[0].content.starts_with("What is"))
    );
}

#[test]
fn broken_files_get_errors_naming_file_and_line() {
    let err = |name: &str| {
        read_records(&data(name), &ReadOptions::default())
            .unwrap_err()
            .to_string()
    };
    let e = err("bad/malformed.jsonl");
    assert!(
        e.contains("malformed.jsonl:3") && e.contains("malformed JSON"),
        "{e}"
    );
    let e = err("bad/unknown_role.jsonl");
    assert!(
        e.contains("unknown_role.jsonl:2") && e.contains("unknown role \"doctorbot\""),
        "{e}"
    );
    let e = err("bad/empty_conversation.jsonl");
    assert!(
        e.contains("empty_conversation.jsonl:1") && e.contains("empty conversation"),
        "{e}"
    );
    let e = err("bad/missing_field.jsonl");
    assert!(
        e.contains("missing_field.jsonl:2") && e.contains("missing field \"answer\""),
        "{e}"
    );
    let e = err("bad/nonexistent.jsonl");
    assert!(e.contains("nonexistent.jsonl"), "{e}");

    // With skip_invalid the bad records are counted, the good ones kept.
    let skip = ReadOptions {
        skip_invalid: true,
        ..ReadOptions::default()
    };
    let r = read_records(&data("bad/unknown_role.jsonl"), &skip).unwrap();
    assert_eq!((r.records.len(), r.skipped.len()), (1, 1));
    assert!(r.skipped[0].0.ends_with("unknown_role.jsonl:2"));
    // Malformed JSON is never skipped silently.
    assert!(read_records(&data("bad/malformed.jsonl"), &skip).is_err());
}

#[test]
fn preparation_cleans_splits_truncates_and_packs() {
    let enc = encoder();
    let mut records = Vec::new();
    for f in [
        "messages.jsonl",
        "sharegpt.jsonl",
        "alpaca.jsonl",
        "qa.jsonl",
        "text.jsonl",
    ] {
        records.extend(
            read_records(&data(f), &ReadOptions::default())
                .unwrap()
                .records,
        );
    }
    let n = records.len();
    let config = DatasetConfig {
        min_reply_chars: 5,
        validation_fraction: 0.25,
        ..DatasetConfig::default()
    };
    let p = prepare(records.clone(), &enc, &config).unwrap();
    // anemia appears in sharegpt, alpaca and twice in qa: three exact duplicates; "Ask." is short.
    assert_eq!((p.report.duplicates, p.report.short_replies), (3, 1));
    assert_eq!(p.train.len() + p.validation.len(), n - 4);
    assert_eq!(p.validation.len(), ((n - 4) as f64 * 0.25).round() as usize);
    // The same seed gives the same split; another seed a different order.
    let again = prepare(records.clone(), &enc, &config).unwrap();
    assert_eq!(again.train, p.train);
    let other = prepare(
        records.clone(),
        &enc,
        &DatasetConfig {
            seed: 7,
            ..config.clone()
        },
    )
    .unwrap();
    assert_ne!(
        other.train.iter().map(|e| &e.origin).collect::<Vec<_>>(),
        p.train.iter().map(|e| &e.origin).collect::<Vec<_>>()
    );
    for e in p.train.iter().chain(&p.validation) {
        assert!(e.encoded.trained_tokens() > 0, "{}", e.origin);
        assert_eq!(e.encoded.labels[0], IGNORE);
    }

    // Truncation: a max_len that cuts every reply away drops those records (loudly); Drop
    // drops every over-long one.
    let tight = DatasetConfig {
        max_len: 12,
        dedupe: false,
        ..DatasetConfig::default()
    };
    let t = prepare(records.clone(), &enc, &tight).unwrap();
    assert!(!t.report.untrained.is_empty());
    assert!(
        t.train
            .iter()
            .all(|e| e.encoded.len() <= 12 && e.encoded.trained_tokens() > 0)
    );
    let drop = prepare(
        records.clone(),
        &enc,
        &DatasetConfig {
            truncation: Truncation::Drop,
            ..tight
        },
    )
    .unwrap();
    assert_eq!(
        drop.report.too_long + drop.train.len() + drop.report.untrained.len(),
        n
    );

    // Packing into rows of 256 keeps every token, restarts positions, never crosses examples.
    let encoded: Vec<_> = p.train.iter().map(|e| e.encoded.clone()).collect();
    let rows = pack(&encoded, 256);
    assert!(rows.len() < encoded.len());
    assert_eq!(
        rows.iter().map(|r| r.len()).sum::<usize>(),
        encoded.iter().map(|e| e.len()).sum::<usize>()
    );
    let trained: usize = rows
        .iter()
        .map(|r| r.labels.iter().filter(|&&l| l != IGNORE).count())
        .sum();
    assert_eq!(
        trained,
        encoded.iter().map(|e| e.trained_tokens()).sum::<usize>()
    );

    // Padding uses a token that is not eos when the tokenizer has one, masked in labels.
    let pad = enc.pad_id();
    let eos = enc
        .tokenizer()
        .token_to_id(enc.specials().eos.as_deref().unwrap())
        .unwrap();
    assert_ne!(pad, eos);
    let batch = Batch::collate(&rows, pad);
    assert_eq!(batch.trained_tokens(), trained);
}
