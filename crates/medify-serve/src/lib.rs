//! An OpenAI-compatible chat server (`POST /v1/chat/completions`, `GET /v1/models`,
//! `GET /health`) and a local web chat at `/` for medify-qlora models, with the medical safety
//! layer of [`medify_chat::Chat`]: triage before the answer, the educational default system
//! prompt, the disclaimer after it.
//!
//! One engine thread owns the model and decodes every client's sequence in one batch
//! ([`medify_models::DecodeBatch`]); the HTTP side runs on axum/tokio.

pub mod engine;
pub mod error;
pub mod request;
pub mod server;
pub mod text;

pub use engine::{Engine, EngineConfig, Event, Job, SubmitError};
pub use error::ApiError;
pub use server::{PAGE, ServeConfig, Server, shutdown_signal};
