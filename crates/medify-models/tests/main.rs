//! medify-models integration tests.
//!
//! One test binary per crate: each file is a module, so the crate's integration tests link once
//! (a linked test binary is ~100 MB with burn in it).

#[path = "../../../tests/common/mod.rs"]
mod common;

mod checkpointing;
mod fast_path;
mod gguf_export;
mod int8_base;
mod kquant_model;
mod kquants;
mod lora;
mod sentencepiece_gguf;
mod tokenizer_export;
