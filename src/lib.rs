//! # medify-qlora
//!
//! QLoRA fine-tuning of Llama-family models into medical question-answering assistants, on
//! CUDA, WGPU (Vulkan / Metal / WebGPU) and the CPU through burn.
//!
//! This crate is the fine-tuning API ([`FinetuneConfig`], [`load_base`], [`Trainer`],
//! [`evaluate`]) and re-exports the project's crates:
//!
//! * [`quant`]: bitsandbytes-exact NF4/FP4 4-bit quantization with double quantization, the
//!   device-resident [`quant::Nf4Tensor`], its fused 4-bit matmul and frozen 4-bit linear.
//! * [`lora`]: LoRA / rsLoRA / DoRA adapters over frozen dense or 4-bit layers (QLoRA), with
//!   PEFT-compatible adapter files, merge and unmerge.
//! * [`data`]: medical Q&A records (JSONL, CSV, MedQuAD XML) rendered with the model's chat
//!   template into token ids with labels on the assistant replies only.
//! * [`models`]: Llama, Mistral and Gemma from safetensors, bitsandbytes 4-bit and GGUF
//!   checkpoints, with tokenizers, a KV cache and sampling.
//! * [`optim`]: paged AdamW with 32-bit or 8-bit blockwise state, gradient clipping, parameter
//!   groups, learning-rate schedules and exact save/resume.
//!
//! Fine-tuning in a few lines (here a tiny Llama and the embedded medical Q&A set; point
//! `load_base` at a Hugging Face directory or a GGUF file for a real run):
//!
//! ```
//! use burn::tensor::Device;
//! use medify_qlora::data::{ReadOptions, prepare, read_records};
//! use medify_qlora::{FinetuneConfig, TrainData, Trainer, TrainerOptions, load_base};
//!
//! let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
//! let config = FinetuneConfig { lora_r: 4, max_steps: Some(2), batch_size: 4, grad_accum: 1,
//!     max_len: 64, learning_rate: 1e-2, ..FinetuneConfig::default() };
//! let base = load_base(&root.join("fixtures/tiny_models/llama"), &Device::flex().autodiff(),
//!     config.quant_config()?, None)?;                               // NF4 + DQ frozen base
//! let records = read_records(&root.join("fixtures/medical_qa/medical_qa.jsonl"),
//!     &ReadOptions::default())?.records;
//! let prepared = prepare(records, &base.encoder, &config.dataset_config())?;
//! let data = TrainData::from_prepared(&prepared, &config, base.encoder.pad_id());
//! let out = std::env::temp_dir().join(format!("medify-doc-{}", std::process::id()));
//! let mut options = TrainerOptions::new(&out);
//! options.overwrite = true;
//! let mut trainer = Trainer::new(config, base.model, data, options)?;
//! let summary = trainer.train()?;                                 // PEFT adapter in `out`
//! assert_eq!(summary.steps, 2);
//! assert!(out.join("adapter_model.safetensors").is_file());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod answers;
mod base;
mod chat;
pub mod checkpoint;
mod config;
mod error;
mod evaluate;
mod memory;
pub mod memory_model;
mod model_card;
mod multiple_choice;
mod plot;
mod py_random;
mod run;
pub mod safety;
mod sources;
mod sweep;
mod text_metrics;
mod trainer;

pub use answers::{AnswerCase, AnswerReport, ScoredAnswer, score_generated_answers};
pub use base::{
    BaseModel, MERGED_FILES, chat_encoder, load_base, load_base_with, load_chat_encoder,
};
pub use chat::{Chat, DISCLAIMER, Reply};
pub use config::{BaseQuant, FinetuneConfig, Optimizer, RESUMABLE_SETTINGS};
pub use error::{FinetuneError, Result};
pub use evaluate::{EvalResult, batch_labels, evaluate, predicted_tokens, token_batch};
pub use memory::{
    StepMemory, peak_rss_bytes, release_freed_memory, reset_peak_memory, retain_freed_memory,
};
pub use model_card::{
    CARD_FILE, CardOptions, HubExport, ModelCard, export_hub, is_hub_id, write_model_card,
};
pub use multiple_choice::{
    FewshotSampler, McConfig, McOption, McQuestion, McReport, McScore, McTask, read_mc_questions,
    score_multiple_choice,
};
pub use plot::write_loss_plot;
pub use run::{StartedRun, start_run};
pub use sources::{
    AdapterBase, BaseQuantization, DataOrigin, DataSource, EMBEDDED_MEDICAL_QA, Fingerprint,
    ModelSource, RunSources, SOURCES_FILE,
};
pub use sweep::{
    ANSWERS_FILE, GenerateSpec, SweepOptions, SweepProgress, SweepReport, SweepSpec, Variant,
    VariantResult, run_sweep,
};
pub use text_metrics::{
    BleuScore, Prf, RougeScores, TextScores, bleu, corpus_bleu, rouge, score_answers,
};
pub use trainer::{TrainData, TrainSummary, Trainer, TrainerOptions};

pub use medify_data as data;
pub use medify_lora as lora;
pub use medify_models as models;
pub use medify_optim as optim;
pub use medify_quant as quant;
