//! # medify-qlora
//!
//! QLoRA fine-tuning of Llama-family models into medical question-answering assistants, on
//! CUDA, WGPU (Vulkan / Metal / WebGPU) and the CPU through burn.
//!
//! The entry points:
//!
//! * [`Finetune`]: a whole fine-tuning run in one call, new or resumed from a checkpoint;
//! * [`FinetunedModel`]: a base with the adapter trained over it, held as during training,
//!   ready for [`evaluate_loss`], [`score_multiple_choice`] or a [`Chat`];
//! * [`Chat`]: a conversation through the model's chat template with the medical safety layer.
//!
//! The crate is organised by concern: [`training`] (settings, the trainer and its observers,
//! run checkpoints and provenance, sweeps, model cards), [`evaluation`] (loss, multiple choice,
//! BLEU/ROUGE), [`loading`] (base and fine-tuned models, the device), and re-exports the
//! project's crates:
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
//! * [`safety`] and [`chat`]: red-flag triage, the default system prompt and disclaimer, and
//!   [`Chat`].
//!
//! Fine-tuning a tiny Llama on the embedded medical Q&A set (point the [`ModelSource`] at a
//! Hugging Face directory or a GGUF file for a real run); every [`FinetuneConfig`] field
//! applies, the chat template, system prompt and compute dtype included:
//!
//! ```
//! use medify_qlora::{Finetune, FinetuneConfig, ModelSource};
//!
//! let out = std::env::temp_dir().join(format!("medify-doc-{}", std::process::id()));
//! let config = FinetuneConfig { lora_r: 4, max_steps: Some(2), batch_size: 4, grad_accum: 1,
//!     max_len: 64, learning_rate: 1e-2, template: Some("chatml".into()),
//!     system_prompt: Some("You are a careful medical assistant.".into()),
//!     ..FinetuneConfig::default() };                                  // NF4 + DQ frozen base
//! let model = ModelSource::new(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
//!     .join("fixtures/tiny_models/llama"), None)?;
//! let summary = Finetune::new(config).model(model).output(&out).overwrite(true).run()?;
//! assert_eq!(summary.steps, 2);
//! assert!(out.join("adapter_model.safetensors").is_file());            // PEFT adapter
//! # std::fs::remove_dir_all(&out)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
pub mod evaluation;
pub mod loading;
pub mod training;

pub use error::{FinetuneError, Result};
pub use evaluation::{
    AnswerCase, AnswerReport, BleuScore, EvalResult, FewshotSampler, McConfig, McOption,
    McQuestion, McReport, McScore, McTask, Prf, RougeScores, ScoredAnswer, TextScores,
    batch_labels, bleu, corpus_bleu, evaluate_loss, predicted_tokens, read_mc_questions, rouge,
    score_answers, score_generated_answers, score_multiple_choice, token_batch,
};
pub use loading::{
    BaseModel, ChosenDevice, DeviceChoice, FinetunedModel, FinetunedOptions, MERGED_FILES,
    auto_device, load_base, load_base_with,
};
pub use medify_chat::{Chat, ChatError, Reply, chat_encoder, load_chat_encoder};
pub use medify_safety::DISCLAIMER;
pub use training::{
    ANSWERS_FILE, AdapterBase, AdapterSource, BaseQuant, BaseQuantization, CARD_FILE, CardOptions,
    DATA_REPORT_FILE, DataOrigin, DataReport, DataSource, EMBEDDED_MEDICAL_PREFERENCES,
    EMBEDDED_MEDICAL_QA, Finetune, FinetuneConfig, Fingerprint, GenerateSpec, HubExport, ModelCard,
    ModelSource, Optimizer, REFERENCE_LOGPS_FILE, RESUMABLE_SETTINGS, RunSources, SOURCES_FILE,
    SourceReport, StartedRun, StepMemory, SweepOptions, SweepProgress, SweepReport, SweepSpec,
    TrainData, TrainSummary, Trainer, TrainerOptions, Variant, VariantResult, export_hub,
    is_hub_id, peak_rss_bytes, release_freed_memory, reset_peak_memory, retain_freed_memory,
    run_sweep, write_loss_plot, write_model_card,
};

pub use medify_chat as chat;
pub use medify_data as data;
pub use medify_lora as lora;
pub use medify_models as models;
pub use medify_optim as optim;
pub use medify_quant as quant;
pub use medify_safety as safety;

/// The README's Rust examples, run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
