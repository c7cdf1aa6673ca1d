//! `cargo xtask generate` and `cargo xtask eval`: raw completion and perplexity of a model.

use std::io::Write;
use std::path::PathBuf;

use clap::Args as ClapArgs;
use medify_qlora::data::{DatasetConfig, ReadOptions, prepare, read_records, unpacked};
use medify_qlora::loading::{FinetunedModel, FinetunedOptions};
use medify_qlora::lora::LoraSummary;
use medify_qlora::models::{GenerationConfig, LoadOptions, TextStreamer, load_pretrained};
use medify_qlora::training::Method;
use medify_qlora::{
    AdapterBase, AnswerCase, BaseModel, BaseQuant, Chat, evaluate_loss, load_base,
    score_generated_answers,
};

use crate::device::device_named;

/// Shared model options.
#[derive(ClapArgs, Debug)]
pub struct ModelArgs {
    /// A Hugging Face model directory (safetensors, dense or bitsandbytes 4-bit) or a .gguf file.
    /// With an adapter our trainer wrote: the base it trained over, by default.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Device: flex (CPU), wgpu, cuda, or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// nf4, fp4, int8 or none: hold linear layers in 4 or 8 bits while loading dense checkpoints. Default:
    /// with an adapter our trainer wrote, the quantization it trained over; otherwise none (as
    /// stored).
    #[arg(long)]
    pub quant: Option<BaseQuant>,
}

impl ModelArgs {
    /// The base to load without an adapter: `--model` with `--quant`.
    pub fn base(&self, adapter: Option<&std::path::Path>) -> anyhow::Result<AdapterBase> {
        let base = AdapterBase::resolve(
            adapter,
            self.model.as_deref(),
            self.quant.map(BaseQuant::linear_quant),
        )?;
        if base.from_record {
            eprintln!("base from the adapter's record: {}", describe(&base));
        }
        Ok(base)
    }

    /// Loads the base on `--device` (resolved as [`base`](Self::base) does) and applies
    /// `adapter` over it as its run trained it: what `chat`, `serve`, `eval` and `merge` talk to.
    pub fn load(
        &self,
        adapter: Option<&std::path::Path>,
        template: Option<&str>,
    ) -> anyhow::Result<(BaseModel, AdapterBase, Option<Tuned>)> {
        let device = device_named(&self.device)?;
        let Some(dir) = adapter else {
            let from = self.base(None)?;
            let base = load_base(&from.model, &device, from.quant.clone(), template)?;
            return Ok((base, from, None));
        };
        let options = FinetunedOptions {
            model: self.model.clone(),
            quant: self.quant,
            template: template.map(str::to_string),
            compute_dtype: None,
        };
        let tuned = FinetunedModel::load(dir, &device, &options)?;
        if tuned.from.from_record {
            eprintln!("base from the adapter's record: {}", describe(&tuned.from));
        }
        let info = Tuned {
            adapter: tuned.adapter,
            system_prompt: tuned.settings.and_then(|s| s.system_prompt),
        };
        Ok((tuned.base, tuned.from, Some(info)))
    }
}

/// What loading an adapter also tells: its size and the run's system prompt.
pub struct Tuned {
    /// Trainable versus total parameters.
    pub adapter: LoraSummary,
    /// The system prompt the run trained with, when it set one.
    pub system_prompt: Option<String>,
}

fn describe(base: &AdapterBase) -> String {
    format!(
        "{} ({})",
        base.model.display(),
        base.quant
            .as_ref()
            .map_or("dense".to_string(), ToString::to_string)
    )
}

/// How `chat` and `serve` decode on the CPU.
#[derive(ClapArgs, Debug)]
pub struct DecodeArgs {
    /// How the output head is held while decoding on the CPU: int8 (a quarter of f32's bytes
    /// read per token; each weight within its row's absmax / 254), bf16, or exact.
    #[arg(long, default_value = "int8")]
    pub lm_head: medify_qlora::models::HeadPrecision,
}

impl DecodeArgs {
    /// Sets the model's decode options.
    pub fn apply(&self, model: &mut medify_qlora::models::CausalLm) {
        model.set_decode_options(medify_qlora::models::DecodeOptions { head: self.lm_head });
    }
}

/// The system prompt of `chat` and `serve`.
#[derive(ClapArgs, Debug)]
pub struct SystemArgs {
    /// System prompt for conversations without one (default: an educational assistant that
    /// does not diagnose or prescribe).
    #[arg(long, conflicts_with = "no_system_prompt")]
    pub system: Option<String>,
    /// Send no system prompt at all.
    #[arg(long)]
    pub no_system_prompt: bool,
}

impl SystemArgs {
    /// `None` keeps the default; `Some(None)` sends none; `Some(Some(text))` sends `text`.
    pub fn choice(&self) -> Option<Option<String>> {
        match (&self.system, self.no_system_prompt) {
            (Some(s), _) => Some(Some(s.clone())),
            (None, true) => Some(None),
            (None, false) => None,
        }
    }
}

/// `generate`: continue a prompt without any chat template.
#[derive(ClapArgs, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to continue (tokenized with the tokenizer's default special tokens).
    #[arg(long)]
    pub prompt: String,
    /// Upper bound on new tokens.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample only among the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling threshold.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Penalty (> 1) on tokens already present.
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object {"ids": [...], "text": "..."} instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

/// lm-eval's few-shot samplers.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerArg {
    /// lm-eval's default sampler.
    Random,
    /// lm-eval's first_n.
    FirstN,
}

/// `eval`: loss and perplexity of plain-text records.
#[derive(ClapArgs, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A PEFT adapter directory to evaluate with (over the base and quantization its
    /// run_sources.json records, unless --model / --quant say otherwise).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Records: {"text"} JSONL (every token counts) or chat/Q&A records in any format `preview`
    /// reads (only the assistant's tokens count, exactly the labels preview shows).
    #[arg(
        long,
        required_unless_present_any = ["multiple_choice", "pairs"],
        conflicts_with_all = ["multiple_choice", "pairs"]
    )]
    pub data: Option<PathBuf>,
    /// Preference pairs (TRL's format: prompt/chosen/rejected, text or conversations) instead:
    /// the objective, reward accuracy and margin of the model (with --adapter) against the
    /// reference (the base, or the base with --reference-adapter), as DPO's evaluation logs
    /// them. With --generate the prompts are answered and scored against the chosen answers.
    #[arg(long, value_name = "FILE", conflicts_with = "multiple_choice")]
    pub pairs: Option<PathBuf>,
    /// With --pairs: the reference's adapter (e.g. the SFT adapter a DPO run started from).
    #[arg(long, requires = "pairs")]
    pub reference_adapter: Option<PathBuf>,
    /// With --pairs: the objective whose rewards are reported: dpo, ipo, orpo or simpo.
    #[arg(long, requires = "pairs", default_value = "dpo")]
    pub method: Method,
    /// With --pairs: β (default: TRL's for the method).
    #[arg(long, requires = "pairs")]
    pub beta: Option<f64>,
    /// Multiple-choice accuracy instead: a JSONL file of questions (MedQA, MedMCQA, PubMedQA or
    /// a list of choices), each option scored by its log-likelihood after lm-eval's prompt.
    #[arg(long, value_name = "FILE")]
    pub multiple_choice: Option<PathBuf>,
    /// With --multiple-choice: medqa, medmcqa, pubmedqa or choices (option texts scored, e.g.
    /// a condition from a list given symptoms). Default: detected from the first record.
    #[arg(long)]
    pub task: Option<medify_qlora::McTask>,
    /// With --multiple-choice: solved examples before each question (k-shot).
    #[arg(long, default_value_t = 0)]
    pub shots: usize,
    /// With --shots: a JSONL file of examples (lm-eval's few-shot split, e.g. MedQA's train).
    /// Default: the evaluated file, each question left out of its own examples.
    #[arg(long)]
    pub fewshot: Option<PathBuf>,
    /// With --shots: how examples are drawn, as lm-eval's samplers: random (lm-eval's default,
    /// Python's random.Random(--fewshot-seed).sample) or first-n.
    /// [default: random]
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerArg>,
    /// With --sampler random: lm-eval's fewshot_random_seed [default: 1234].
    #[arg(long)]
    pub fewshot_seed: Option<u64>,
    /// With --multiple-choice: score only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Built-in chat template instead of the model's.
    #[arg(long)]
    pub template: Option<String>,
    /// System prompt for conversations without one.
    #[arg(long)]
    pub system: Option<String>,
    /// Records evaluated together.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Tokens kept per record.
    #[arg(long, alias = "max-length", default_value_t = 2048)]
    pub max_len: usize,
    /// Also answer every chat record's last question (greedy) and score the answers against
    /// the reference replies with BLEU and ROUGE-1/2/L.
    #[arg(long)]
    pub generate: bool,
    /// Upper bound on tokens per generated answer.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Penalty (> 1) on tokens already present in a generated answer (transformers'
    /// `repetition_penalty`; 1 = off). Small models loop under pure greedy decoding.
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Print the report as one JSON object (with --generate: the answers too, each with its
    /// question and reference).
    #[arg(long)]
    pub json: bool,
}

pub fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let device = device_named(&args.model.device)?;
    let base = args.model.base(None)?;
    let options = LoadOptions {
        quantize: base.quant.clone(),
        ..LoadOptions::dense()
    };
    let (model, tok, _) = load_pretrained(&base.model, &device, &options)?;
    let prompt = tok.encode(&args.prompt, true)?;
    let cfg = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        stop_ids: tok.stop_ids.clone(),
    };
    let mut streamer = TextStreamer::new(&tok);
    let json = args.json;
    let mut stdout = std::io::stdout();
    if !json {
        print!("{}", args.prompt);
    }
    let out = model.generate(&[prompt], &cfg, &mut |_, id| {
        if !json && let Ok(Some(piece)) = streamer.push(id) {
            print!("{piece}");
            let _ = stdout.flush();
        }
        true
    })?;
    let ids = &out[0].ids;
    if json {
        let text = tok.decode(ids, true)?;
        println!("{}", serde_json::json!({ "ids": ids, "text": text }));
    } else {
        println!();
    }
    Ok(())
}

pub fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    if args.multiple_choice.is_some() && args.generate {
        return Err(anyhow::anyhow!(
            "--generate goes with --data, not --multiple-choice"
        ));
    }
    if args.data.is_some() {
        let mc_only = [
            ("--task", args.task.is_some()),
            ("--shots", args.shots > 0),
            ("--fewshot", args.fewshot.is_some()),
            ("--sampler", args.sampler.is_some()),
            ("--fewshot-seed", args.fewshot_seed.is_some()),
            ("--limit", args.limit.is_some()),
        ];
        if let Some((flag, _)) = mc_only.iter().find(|(_, given)| *given) {
            return Err(anyhow::anyhow!(
                "{flag} goes with --multiple-choice, not --data"
            ));
        }
    }
    let (base, _, _) = args
        .model
        .load(args.adapter.as_deref(), args.template.as_deref())?;
    if args.pairs.is_some() {
        return preference_pairs(args, &base);
    }
    let Some(data) = &args.data else {
        return multiple_choice(args, &base);
    };
    let encoder = base.encoder.clone().with_system_prompt(args.system.clone());
    let read = read_records(data, &ReadOptions::default())?;
    let cases = AnswerCase::from_records(&read.records);
    let config = DatasetConfig {
        max_len: args.max_len,
        dedupe: false,
        shuffle: false,
        validation_fraction: 0.0,
        ..DatasetConfig::default()
    };
    let prepared = prepare(read.records, &encoder, &config)?;
    let encoded: Vec<_> = prepared.train.iter().map(|e| e.encoded.clone()).collect();
    let report = evaluate_loss(
        &base.model,
        &unpacked(&encoded),
        encoder.pad_id(),
        args.batch_size,
    )?;
    let mut out = serde_json::to_value(report)?;
    let scores = if args.generate {
        Some(answer_cases(args, &base, &encoder, &cases, &mut out)?)
    } else {
        None
    };
    if args.json {
        println!("{out}");
    } else {
        println!(
            "loss {:.4}  perplexity {:.2}  over {} tokens in {} records",
            report.loss, report.perplexity, report.tokens, report.records
        );
        if let Some(s) = scores {
            print_scores(&s);
        }
    }
    Ok(())
}

/// The text scores' line of `eval --generate`.
fn print_scores(s: &medify_qlora::TextScores) {
    println!(
        "BLEU {:.4}  ROUGE-1 {:.4}  ROUGE-2 {:.4}  ROUGE-L {:.4}  over {} answers",
        s.bleu, s.rouge1, s.rouge2, s.rouge_l, s.records
    );
}

/// `eval --generate`: answers every case's question greedily, scores the answers against the
/// references, and puts scores and answers into `out`.
fn answer_cases(
    args: &EvalArgs,
    base: &BaseModel,
    encoder: &medify_qlora::data::ChatEncoder,
    cases: &[AnswerCase],
    out: &mut serde_json::Value,
) -> anyhow::Result<medify_qlora::TextScores> {
    let chat = Chat::new(&base.model, &base.tokenizer, encoder)
        .with_disclaimer(false)
        .with_generation(GenerationConfig {
            max_new_tokens: args.max_new_tokens,
            repetition_penalty: args.repetition_penalty,
            ..GenerationConfig::default()
        });
    let total = cases.len();
    let answered = score_generated_answers(&chat, cases, &mut |i, a| {
        if !args.json {
            eprintln!("[{}/{total}] {}", i + 1, a.answer);
        }
    })?;
    let s = answered.scores;
    out["bleu"] = s.bleu.into();
    out["rouge1"] = s.rouge1.into();
    out["rouge2"] = s.rouge2.into();
    out["rougeL"] = s.rouge_l.into();
    out["generated"] = s.records.into();
    // What was asked and answered, for reading the scores against the text.
    out["answers"] = serde_json::to_value(&answered.answers)?;
    Ok(s)
}

/// `eval --pairs`: the preference objective and DPO's reward statistics of the model against
/// its reference, over a file of pairs.
fn preference_pairs(args: &EvalArgs, base: &BaseModel) -> anyhow::Result<()> {
    use burn::module::Module;
    use medify_qlora::data::{PairTruncation, prepare_pairs, read_preferences};
    use medify_qlora::lora::LoraExt;
    use medify_qlora::training::{
        EvalPreferenceMetrics, PairMicroBatch, PreferenceObjective, Reference, evaluate_pairs,
    };
    let path = args.pairs.as_deref().expect("called with --pairs");
    let objective = PreferenceObjective {
        beta: args
            .beta
            .unwrap_or(PreferenceObjective::new(args.method).beta),
        ..PreferenceObjective::new(args.method)
    };
    objective.validate()?;
    let encoder = base.encoder.clone().with_system_prompt(args.system.clone());
    let read = read_preferences(path, &ReadOptions::default())?;
    let config = DatasetConfig {
        max_len: args.max_len,
        dedupe: false,
        shuffle: false,
        validation_fraction: 0.0,
        ..DatasetConfig::default()
    };
    let prepared = prepare_pairs(
        read.pairs.clone(),
        &encoder,
        &config,
        PairTruncation::KeepStart,
    )?;
    // The reference shares the base: the same weights with the reference's adapter, or none.
    let mut reference = base.model.valid();
    reference.remove_adapters()?;
    if let Some(dir) = &args.reference_adapter {
        reference.load_adapter(dir)?;
    }
    reference.set_adapters_training(false);
    let micro_batches = PairMicroBatch::chunks(
        &prepared.train,
        args.batch_size,
        encoder.pad_id(),
        Some(args.max_len),
        PairTruncation::KeepStart,
    );
    let e = evaluate_pairs(
        &base.model,
        &micro_batches,
        &objective,
        Reference::Model(&reference),
    )?;
    let m = EvalPreferenceMetrics::of(&e.stats);
    let mut out = serde_json::to_value(m)?;
    out["method"] = objective.method.as_str().into();
    out["beta"] = objective.beta.into();
    out["eval_loss"] = e.loss.into();
    let scores = if args.generate {
        let mut cases = AnswerCase::from_pairs(&read.pairs);
        if let Some(n) = args.limit {
            cases.truncate(n);
        }
        Some(answer_cases(args, base, &encoder, &cases, &mut out)?)
    } else {
        None
    };
    if args.json {
        println!("{out}");
    } else {
        println!(
            "{} loss {:.4}  reward accuracy {:.3}  margin {:.4}  (chosen {:.4}, rejected {:.4}) over {} pairs",
            objective.method,
            e.loss,
            m.rewards_accuracies,
            m.rewards_margins,
            m.rewards_chosen,
            m.rewards_rejected,
            m.pairs
        );
        if let Some(s) = scores {
            print_scores(&s);
        }
    }
    Ok(())
}

/// `eval --multiple-choice`: accuracy over a question file, lm-eval's way.
fn multiple_choice(args: &EvalArgs, base: &BaseModel) -> anyhow::Result<()> {
    use medify_qlora::{FewshotSampler, McConfig, read_mc_questions, score_multiple_choice};
    let path = args
        .multiple_choice
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--data or --multiple-choice is needed"))?;
    let (task, mut questions) = read_mc_questions(path, args.task)?;
    if let Some(n) = args.limit {
        questions.truncate(n);
    }
    let fewshot = match &args.fewshot {
        Some(p) => Some(read_mc_questions(p, Some(task))?.1),
        None => None,
    };
    let config = McConfig {
        task,
        shots: args.shots,
        fewshot,
        sampler: match (args.sampler, args.fewshot_seed) {
            (Some(SamplerArg::FirstN), Some(_)) => {
                return Err(anyhow::anyhow!("--fewshot-seed is for --sampler random"));
            }
            (Some(SamplerArg::FirstN), None) => FewshotSampler::FirstN,
            (_, seed) => FewshotSampler::Random {
                seed: seed.unwrap_or(1234),
            },
        },
        max_len: args
            .max_len
            .min(base.model.config().max_position_embeddings),
        batch_size: args.batch_size,
    };
    if !args.json {
        eprintln!(
            "{} questions, task {task}, {}-shot, from {}",
            questions.len(),
            args.shots,
            path.display()
        );
    }
    let json = args.json;
    let report = score_multiple_choice(
        &base.model,
        &base.tokenizer,
        &questions,
        &config,
        &mut |done, total| {
            if !json {
                eprint!("\rscored {done}/{total} sequences");
            }
        },
    )?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    eprintln!();
    println!(
        "{task} {}-shot: acc {:.4} ± {:.4}  acc_norm {:.4} ± {:.4}  over {} questions",
        report.shots,
        report.acc,
        report.acc_stderr,
        report.acc_norm,
        report.acc_norm_stderr,
        report.questions
    );
    if report.truncated > 0 {
        println!(
            "{} questions were longer than {} tokens and lost their start",
            report.truncated, config.max_len
        );
    }
    Ok(())
}
