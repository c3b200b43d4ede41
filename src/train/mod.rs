//! Training: SGD with momentum, the learning-rate schedule, targets, losses and the resumable loop.

pub mod dataset_source;
pub mod device_check;
pub mod objective;
pub mod schedule;
pub mod sgd;
pub mod sources;
pub mod step;
pub mod step_timing;
pub mod targets;
pub mod trainer;

pub use sources::{FixedSource, RandomSource};
pub use targets::GtBoxes;
pub use trainer::{train, BatchSource, MetricsRow, Summary, TrainBatch, TrainOptions};
