//! Tests of the `cargo xtask` binary.
//!
//! One test binary per crate: each file is a module, so the crate's integration tests link once
//! (a linked test binary is ~100 MB with burn in it).

mod eval;
mod merge;
mod serve;
mod triage;
