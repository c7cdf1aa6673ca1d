//! `cargo xtask preview`: what the trainer will see for a data file: the rendered text with the
//! trained tokens highlighted, or one JSON line of ids and labels per record.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;
use medify_qlora::DataSource;
use medify_qlora::data::{
    ChatEncoder, DatasetConfig, FieldMap, IGNORE, InputFormat, PairTruncation, ReadOptions,
    Truncation,
};
use medify_qlora::training::{
    PreparedPairSources, PreparedSources, prepare_pair_sources, prepare_sources,
};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// A directory with tokenizer.json and tokenizer_config.json.
    #[arg(long, conflicts_with = "model")]
    tokenizer: Option<PathBuf>,
    /// A model directory or .gguf file (its tokenizer and chat template are used).
    #[arg(long)]
    model: Option<PathBuf>,
    /// JSONL, CSV/TSV, a MedQuAD XML file or a directory of them; repeat for several sources,
    /// each optionally PATH?format=..&fields=..&weight=.. as for finetune.
    #[arg(
        long,
        required = true,
        value_name = "PATH[?format=..&fields=..&weight=..]"
    )]
    data: Vec<String>,
    /// Built-in template instead of the model's: chatml, tinyllama, llama2, llama3, mistral, gemma.
    #[arg(long)]
    template: Option<String>,
    /// Record format: auto, messages, sharegpt, alpaca, qa, text.
    #[arg(long, default_value = "auto")]
    format: String,
    /// Field renames, e.g. question=Patient,answer=Doctor.
    #[arg(long, default_value = "")]
    fields: String,
    /// System prompt added to every conversation that has none.
    #[arg(long)]
    system: Option<String>,
    /// Longest sequence in tokens.
    #[arg(long, alias = "max-length", default_value_t = 512)]
    max_len: usize,
    /// Drop over-long records instead of keeping their start.
    #[arg(long)]
    drop_long: bool,
    /// Records to show (human mode); all in --json mode unless given.
    #[arg(long)]
    limit: Option<usize>,
    /// Skip records with a missing field or unknown role instead of stopping.
    #[arg(long)]
    skip_invalid: bool,
    /// One JSON line per record: {"input_ids": [...], "labels": [...]}.
    #[arg(long)]
    json: bool,
    /// Read preference pairs (prompt/chosen/rejected) as a dpo/ipo/orpo/simpo run does: each
    /// pair's chosen and rejected rows, completions highlighted; with --json, TRL's
    /// {"prompt_ids", "chosen_ids", "rejected_ids"} per pair.
    #[arg(long)]
    pairs: bool,
    /// With --pairs: which end of an over-long pair survives --max-len (keep_start, keep_end).
    #[arg(long, requires = "pairs", default_value = "keep_start")]
    pair_truncation: PairTruncation,
}

/// A `ChatEncoder` for a tokenizer directory, a model directory or a GGUF file.
pub fn encoder_for(path: &Path, template: Option<&str>) -> anyhow::Result<ChatEncoder> {
    Ok(medify_qlora::load_chat_encoder(path, template)?)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let source = args
        .tokenizer
        .as_ref()
        .or(args.model.as_ref())
        .ok_or_else(|| anyhow::anyhow!("pass --tokenizer DIR or --model DIR|FILE.gguf"))?;
    let encoder =
        encoder_for(source, args.template.as_deref())?.with_system_prompt(args.system.clone());
    let format = InputFormat::parse(&args.format)
        .ok_or_else(|| anyhow::anyhow!("unknown --format {:?}", args.format))?;
    let defaults = ReadOptions {
        format,
        fields: FieldMap::parse(&args.fields)?,
        skip_invalid: args.skip_invalid,
    };
    let sources = args
        .data
        .iter()
        .map(|spec| DataSource::parse(spec, &defaults))
        .collect::<Result<Vec<_>, _>>()?;
    let config = DatasetConfig {
        max_len: args.max_len,
        truncation: if args.drop_long {
            Truncation::Drop
        } else {
            Truncation::KeepStart
        },
        dedupe: false,
        shuffle: false,
        ..DatasetConfig::default()
    };
    if args.pairs {
        return preview_pairs(args, &sources, &encoder, config);
    }
    // Every record is prepared so the counts cover the whole data; only `limit` are shown.
    let PreparedSources {
        records,
        mut prepared,
        report,
    } = prepare_sources(&sources, &encoder, config)?;
    let position: std::collections::HashMap<&str, usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.origin.as_str(), i))
        .collect();
    let trained_tokens: usize = prepared
        .train
        .iter()
        .map(|e| e.encoded.trained_tokens())
        .sum();
    let examples = prepared.train.len();
    if sources.iter().any(|s| s.weight != 1.0) {
        // Show records as they are in the files, each once.
        let mut seen = std::collections::HashSet::new();
        prepared.train.retain(|e| seen.insert(e.origin.clone()));
        prepared
            .train
            .sort_by_key(|e| position.get(e.origin.as_str()).copied());
    }
    if let Some(n) = args.limit.or((!args.json).then_some(5)) {
        prepared.train.truncate(n);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let color = !args.json && stdout.is_terminal();
    for ex in &prepared.train {
        let e = &ex.encoded;
        if args.json {
            let line = serde_json::json!({"input_ids": e.input_ids, "labels": e.labels});
            writeln!(out, "{line}")?;
            continue;
        }
        writeln!(
            out,
            "── {} ({} tokens, {} trained)",
            ex.origin,
            e.len(),
            e.trained_tokens()
        )?;
        highlighted(&mut out, &encoder, &e.input_ids, &e.labels, color)?;
        writeln!(out)?;
    }
    let r = &prepared.report;
    if !args.json {
        eprintln!(
            "{} of {examples} examples shown ({}); trained tokens in all: {trained_tokens}. Skipped while reading: {}; truncated: {}; dropped too long: {}; no trained token: {}; template errors: {}",
            prepared.train.len(),
            if color {
                "trained text in green"
            } else {
                "trained text in [[ ]]"
            },
            report.sources.iter().map(|s| s.skipped).sum::<usize>(),
            r.truncated,
            r.too_long,
            r.untrained.len(),
            r.template_errors.len()
        );
        for line in report.lines() {
            eprintln!("  {line}");
        }
    }
    Ok(())
}

/// Writes `ids` decoded, the trained (labelled) stretches in green (or `[[ ]]`), and a newline.
fn highlighted(
    out: &mut impl Write,
    encoder: &ChatEncoder,
    ids: &[u32],
    labels: &[i64],
    color: bool,
) -> anyhow::Result<()> {
    // Consecutive tokens with the same trained/ignored state are decoded together.
    let mut start = 0;
    while start < ids.len() {
        let trained = labels[start] != IGNORE;
        let mut end = start;
        while end < ids.len() && (labels[end] != IGNORE) == trained {
            end += 1;
        }
        let text = encoder
            .tokenizer()
            .decode(&ids[start..end], false)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let shown = match (trained, color) {
            (true, true) => format!("\x1b[1;32m{text}\x1b[0m"),
            (true, false) => format!("[[{text}]]"),
            (false, _) => text,
        };
        write!(out, "{shown}")?;
        start = end;
    }
    writeln!(out)?;
    Ok(())
}

/// `preview --pairs`: the pairs as a preference run tokenizes and cuts them.
fn preview_pairs(
    args: &Args,
    sources: &[DataSource],
    encoder: &ChatEncoder,
    config: DatasetConfig,
) -> anyhow::Result<()> {
    let max_len = config.max_len;
    let PreparedPairSources {
        mut prepared,
        report,
        ..
    } = prepare_pair_sources(sources, encoder, config, args.pair_truncation)?;
    let total = prepared.train.len();
    if let Some(n) = args.limit.or((!args.json).then_some(3)) {
        prepared.train.truncate(n);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let color = !args.json && stdout.is_terminal();
    for pair in &prepared.train {
        if args.json {
            let line = serde_json::json!({
                "prompt_ids": pair.prompt, "chosen_ids": pair.chosen, "rejected_ids": pair.rejected
            });
            writeln!(out, "{line}")?;
            continue;
        }
        let [chosen, rejected] = pair.rows(Some(max_len), args.pair_truncation);
        for (which, row) in [("chosen", &chosen), ("rejected", &rejected)] {
            let trained = row.labels.iter().filter(|&&l| l != IGNORE).count();
            writeln!(
                out,
                "── {} {which} ({} tokens, {trained} completion)",
                pair.origin,
                row.input_ids.len()
            )?;
            highlighted(&mut out, encoder, &row.input_ids, &row.labels, color)?;
        }
    }
    if !args.json {
        let r = &prepared.report;
        eprintln!(
            "{} of {total} pairs shown; cut at --max-len: {}; dropped (a completion cut away): {}; template errors: {}",
            prepared.train.len(),
            r.truncated,
            r.untrained.len(),
            r.template_errors.len()
        );
        for line in report.lines() {
            eprintln!("  {line}");
        }
    }
    Ok(())
}
