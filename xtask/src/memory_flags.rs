//! The activation-memory flags `finetune` and `bench-memory` share.

use clap::Args as ClapArgs;
use medify_qlora::models::{Checkpointing, ComputeDtype};

#[derive(ClapArgs, Debug, Clone)]
pub struct MemoryFlags {
    /// Keep only each layer's input and recompute layers in backward (the default).
    #[arg(long, overrides_with = "no_gradient_checkpointing")]
    pub gradient_checkpointing: bool,
    /// Keep every activation for backward: faster, far more memory.
    #[arg(long)]
    pub no_gradient_checkpointing: bool,
    /// Keep the checkpointed layer inputs in host memory (on accelerators).
    #[arg(long, conflicts_with = "no_gradient_checkpointing")]
    pub offload_checkpoints: bool,
    /// Activation and matmul dtype: f32, f16 or bf16 (default: bf16 on CUDA, f16 on Vulkan, f32
    /// on the CPU). Adapters and optimizer state stay f32.
    #[arg(long)]
    pub compute_dtype: Option<ComputeDtype>,
}

impl MemoryFlags {
    /// Whether checkpointing is on, over a default of on or off.
    pub fn enabled(&self, default_on: bool) -> bool {
        (default_on || self.gradient_checkpointing) && !self.no_gradient_checkpointing
    }

    /// What the flags ask for, over a default of checkpointing on or off.
    pub fn checkpointing(&self, default_on: bool) -> Checkpointing {
        Checkpointing::from_flags(self.enabled(default_on), self.offload_checkpoints)
    }

    /// The checkpointing flags as arguments again (for a child process).
    pub fn checkpoint_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.no_gradient_checkpointing {
            out.push("--no-gradient-checkpointing".to_string());
        }
        if self.offload_checkpoints {
            out.push("--offload-checkpoints".to_string());
        }
        out
    }
}
