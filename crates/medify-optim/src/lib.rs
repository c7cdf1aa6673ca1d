//! Optimizers for QLoRA fine-tuning on burn: AdamW with bitsandbytes semantics, 32-bit or
//! blockwise 8-bit moments, state that lives in host memory and is paged onto the accelerator
//! for each parameter's update, global-norm clipping, parameter groups, learning-rate
//! schedules and exact save/resume.
//!
//! ```
//! use medify_optim::{AdamWConfig, LrSchedule, PagedAdamW, ScheduleKind, Warmup};
//!
//! // The QLoRA paper's optimizer: paged AdamW 32-bit, lr 2e-4 constant with 3% warmup,
//! // max grad norm 0.3, no weight decay.
//! let config = AdamWConfig::paged_adamw_32bit()
//!     .with_weight_decay(0.0)
//!     .with_max_grad_norm(Some(0.3));
//! let optimizer = PagedAdamW::new(config).unwrap();
//! let schedule = LrSchedule::new(ScheduleKind::Constant, 2e-4, 1000).with_warmup(Warmup::Ratio(0.03));
//! let lr = schedule.lr_at(optimizer.steps());
//! assert_eq!(lr, 0.0); // the first warmup step
//! ```

mod adamw;
mod blockwise;
mod config;
mod error;
mod host;
mod io;
mod schedule;
mod state;

pub use adamw::{PagedAdamW, StateMemory, StepReport};
pub use blockwise::BLOCK;
pub use config::{AdamWConfig, NonFinite, ParamGroup, StateBits};
pub use error::{OptimError, Result};
pub use schedule::{LrSchedule, ScheduleKind, Warmup};
