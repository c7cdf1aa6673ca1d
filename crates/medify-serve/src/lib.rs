//! An OpenAI-compatible chat server (`POST /v1/chat/completions`, `GET /v1/models`,
//! `GET /health`) and a local web chat for medify-qlora models, with the medical safety layer
//! of [`medify_qlora::Chat`].
//!
//! DRAFT (issue 17): only the engine exists so far; the crate is not yet a workspace member.

pub mod engine;

pub use engine::{Engine, EngineConfig, Event, Job, SubmitError};
