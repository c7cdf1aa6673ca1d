//! Cross-crate tests against the Python references.
//!
//! One test binary per crate: each file is a module, so the crate's integration tests link once
//! (a linked test binary is ~100 MB with burn in it).

mod common;
mod runs;

mod compute_dtype;
mod data_parallel;
mod faults;
mod finetune;
mod int8_training;
mod mixed_data;
mod models;
mod multiple_choice;
mod observers;
mod preference;
mod preference_training;
mod sweep;
mod text_metrics;
