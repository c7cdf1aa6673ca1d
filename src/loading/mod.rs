//! Loading models for training and for use: a base model with its tokenizer and chat encoder
//! (dense or held in 4 bits), a fine-tuned model (a base with the adapter trained over it, held
//! as during training), and the device to load them on.

pub(crate) mod base;
mod device;
mod fetch;
mod finetuned;

pub use base::{BaseModel, MERGED_FILES, load_base, load_base_with};
pub use device::{ChosenDevice, DeviceChoice, auto_device};
pub use fetch::{SMOLLM2, SMOLLM2_HUB_ID, cache_root, fetch_smollm2, smollm2_path};
pub use finetuned::{FinetunedModel, FinetunedOptions};
