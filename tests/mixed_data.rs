//! A run over several data sources at once: a JSONL file, a weighted CSV read with its own
//! field names, and a directory of mixed files. The run reports each source's share, records
//! every source, and a resume checks them all.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use medify_qlora::data::ReadOptions;
use medify_qlora::{
    DataReport, DataSource, Finetune, FinetuneConfig, FinetuneError, ModelSource, RunSources,
    SOURCES_FILE,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medify-mixed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config() -> FinetuneConfig {
    FinetuneConfig {
        lora_r: 4,
        lora_alpha: 8.0,
        batch_size: 4,
        grad_accum: 1,
        max_len: 96,
        max_steps: Some(2),
        eval_every: 0,
        save_every: 1,
        validation_fraction: 0.1,
        ..FinetuneConfig::default()
    }
}

fn model() -> ModelSource {
    ModelSource::new(root().join("fixtures/tiny_models/llama"), None).unwrap()
}

/// The three sources: the project's Q&A set, the chatbot CSV (Patient/Doctor columns) at
/// weight 2, and a directory holding Alpaca and messages JSONL beside MedQuAD XML.
fn sources(data: &Path) -> Vec<DataSource> {
    let dir = data.join("more");
    std::fs::create_dir_all(dir.join("xml")).unwrap();
    for f in ["alpaca.jsonl", "messages.jsonl"] {
        std::fs::copy(root().join("fixtures/data").join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(
        root().join("fixtures/data/medquad_xml/3_GHR_QA__0000590.xml"),
        dir.join("xml/ghr.xml"),
    )
    .unwrap();
    std::fs::copy(
        root().join("fixtures/data/chatbot.csv"),
        data.join("chatbot.csv"),
    )
    .unwrap();
    let qa = root().join("fixtures/medical_qa/medical_qa.jsonl");
    vec![
        DataSource::file(&qa, &ReadOptions::default()).unwrap(),
        DataSource::parse(
            &format!(
                "{}?fields=question=Patient,answer=Doctor&weight=2",
                data.join("chatbot.csv").display()
            ),
            &ReadOptions::default(),
        )
        .unwrap(),
        DataSource::file(&dir, &ReadOptions::default()).unwrap(),
    ]
}

fn run(sources: &[DataSource], out: &Path) -> Finetune {
    let mut run = Finetune::new(config())
        .model(model())
        .output(out)
        .device(Device::flex())
        .progress(false);
    for s in sources {
        run = run.data(s.clone());
    }
    run
}

#[test]
fn several_sources_train_together_are_counted_and_checked_on_resume() {
    let data = temp("data");
    let out = temp("run");
    let sources = sources(&data);
    assert_eq!(sources[1].weight, 2.0);

    let started = run(&sources, &out).start().unwrap();
    let report = started.data.clone();
    let summary = { started }.trainer.train().unwrap();
    assert_eq!(summary.steps, 2);

    // Each source's share, as reading and preparation found it, also in the run directory.
    assert_eq!(DataReport::read(&out).unwrap().unwrap(), report);
    let [qa, csv, dir] = report.sources.as_slice() else {
        panic!("{report:?}")
    };
    assert_eq!(qa.counts.records, 71);
    assert_eq!(csv.counts.records, 2);
    assert_eq!(csv.weight, 2.0);
    assert_eq!(csv.formats, [("qa".to_string(), 2)]);
    // the directory: 2 Alpaca + 3 messages records + the XML's Q&A pairs
    let shapes: Vec<&str> = dir.formats.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(shapes, ["alpaca", "messages", "qa"]);
    assert!(dir.counts.records > 5, "{dir:?}");
    for s in &report.sources {
        let c = &s.counts;
        let kept = c.records - c.dropped - c.validation_examples;
        assert_eq!(
            c.train_examples as f64,
            (kept as f64 * s.weight).round(),
            "{s:?}"
        );
        assert!(c.trained_tokens > 0, "{s:?}");
    }

    // Every source is recorded, the weight with it.
    let recorded = RunSources::read(&out.join("checkpoints/step-000002"))
        .unwrap()
        .unwrap();
    assert_eq!(recorded.data, sources);
    let text = std::fs::read_to_string(out.join(SOURCES_FILE)).unwrap();
    assert!(text.contains("\"weight\": 2.0"), "{text}");

    // A resume with the recorded sources starts; a changed second source is named and
    // refused, as is a weight changed on the command line.
    Finetune::resume(&out).unwrap().start().unwrap();
    std::fs::write(
        data.join("chatbot.csv"),
        "Patient,Doctor\nI feel dizzy,Sit down and drink water.\n",
    )
    .unwrap();
    let err = Finetune::resume(&out)
        .unwrap()
        .start()
        .err()
        .expect("a changed source is refused");
    assert!(
        matches!(err, FinetuneError::SourceChanged { what: "data", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("source 2 of 3"), "{err}");
    assert!(err.to_string().contains("chatbot.csv"), "{err}");
    std::fs::copy(
        root().join("fixtures/data/chatbot.csv"),
        data.join("chatbot.csv"),
    )
    .unwrap();
    let mut reweighted = Finetune::resume(&out).unwrap();
    for (i, s) in sources.iter().enumerate() {
        let s = if i == 1 {
            s.clone().with_weight(3.0)
        } else {
            s.clone()
        };
        reweighted = reweighted.data(s);
    }
    let err = reweighted
        .start()
        .err()
        .expect("a changed weight is refused");
    assert!(err.to_string().contains("weight differs"), "{err}");
    let fewer = Finetune::resume(&out).unwrap().data(sources[0].clone());
    let err = fewer.start().err().expect("a missing source is refused");
    assert!(err.to_string().contains("3 source(s)"), "{err}");

    std::fs::remove_dir_all(&data).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
}
