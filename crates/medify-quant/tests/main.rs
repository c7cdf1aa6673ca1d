//! medify-quant integration tests.
//!
//! One test binary per crate: each file is a module, so the crate's integration tests link once
//! (a linked test binary is ~100 MB with burn in it).

mod bnb_vectors;
mod linear_4bit;
mod linear_int8;
mod transformers_4bit;
mod transformers_int8;
