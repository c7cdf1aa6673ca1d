//! # medify-qlora
//!
//! QLoRA fine-tuning of Llama-family models into medical question-answering assistants, on
//! CUDA, WGPU (Vulkan / Metal / WebGPU) and the CPU through burn.
//!
//! This facade re-exports the project's crates:
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
//! ```
//! use medify_qlora::quant::{Packed4Bit, QuantConfig};
//! let q = Packed4Bit::quantize(&[0.1f32; 64], &[1, 64], &QuantConfig::default()).unwrap();
//! assert_eq!(q.data.len(), 32);
//! ```

mod base;
pub mod checkpoint;
mod config;
mod error;
mod evaluate;
mod plot;
mod trainer;

pub use base::{BaseModel, load_base};
pub use config::FinetuneConfig;
pub use error::{FinetuneError, Result};
pub use evaluate::{EvalResult, evaluate, predicted_tokens, token_batch};
pub use plot::write_loss_plot;
pub use trainer::{TrainData, TrainSummary, Trainer, TrainerOptions};

pub use medify_data as data;
pub use medify_lora as lora;
pub use medify_models as models;
pub use medify_optim as optim;
pub use medify_quant as quant;
