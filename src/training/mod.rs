//! Fine-tuning: the run's settings ([`FinetuneConfig`]), the training loop ([`Trainer`]), run
//! checkpoints and exact resume ([`checkpoints`]), the provenance of a run's model and data
//! ([`RunSources`]), sweeps, the loss plot, the model card and Hub export, and memory
//! measurement.

pub mod checkpoints;
pub(crate) mod config;
pub(crate) mod data_parallel;
pub(crate) mod finetune;
pub(crate) mod memory;
pub mod memory_model;
pub(crate) mod metrics;
pub(crate) mod model_card;
pub mod observers;
pub(crate) mod ollama;
pub(crate) mod plot;
pub mod preference;
pub mod preference_step;
pub(crate) mod provenance;
pub mod reference_table;
pub(crate) mod run;
mod step;
pub(crate) mod sweep;
pub(crate) mod trainer;

pub use config::{BaseQuant, BaseQuantization, FinetuneConfig, Optimizer, RESUMABLE_SETTINGS};
pub use data_parallel::{
    DataParallel, DeviceShare, DeviceSpec, GradientReduction, ParallelStepGradients, deal,
};
pub use finetune::Finetune;
pub use memory::{
    StepMemory, peak_rss_bytes, release_freed_memory, reset_peak_memory, retain_freed_memory,
};
pub use metrics::{
    EvalMetrics, EvalPreferenceMetrics, MetricsRecord, PreferenceMetrics, StepMetrics,
    append_metrics, read_metrics,
};
pub use model_card::{
    CARD_FILE, CardOptions, HubExport, ModelCard, export_hub, is_hub_id, write_model_card,
};
pub use observers::{
    LossPlot, MetricsLog, ModelCardWriter, PeakMemory, ProgressDisplay, RunContext, TrainObserver,
    default_observers,
};
pub use ollama::Modelfile;
pub use plot::{write_loss_plot, write_rewards_plot};
pub use preference::{
    Method, PairLogps, PairStats, PreferenceLoss, PreferenceObjective, ReferenceLogps,
    preference_loss,
};
pub use preference_step::{
    MicroBatchOutcome, PairEvaluation, PairMicroBatch, PreferenceShare, PreferenceStepGradients,
    Reference, evaluate_pairs, pair_logps, precompute_reference, preference_share_gradients,
    preference_step_gradients, reference_logps, reference_model,
};
pub use provenance::{
    AdapterBase, AdapterSource, DATA_REPORT_FILE, DataOrigin, DataReport, DataSource,
    EMBEDDED_MEDICAL_PREFERENCES, EMBEDDED_MEDICAL_QA, Fingerprint, ModelSource, RunSources,
    SOURCES_FILE, SourceReport,
};
pub use reference_table::{REFERENCE_LOGPS_FILE, ReferenceTable};
pub use run::{
    PreparedPairSources, PreparedSources, StartedRun, prepare_pair_sources, prepare_sources,
};
pub use step::{
    DROPOUT_CALLS_PER_STEP_BITS, MicroBatch, ShareGradients, StepGradients, share_gradients,
    step_gradients, step_tokens, train_step,
};
pub use sweep::{
    ANSWERS_FILE, GenerateSpec, SweepOptions, SweepProgress, SweepReport, SweepSpec, Variant,
    VariantResult, run_sweep,
};
pub use trainer::{TrainData, TrainSummary, Trainer, TrainerOptions};
