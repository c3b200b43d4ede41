//! Training: SGD with momentum, the learning-rate schedule, targets, losses and the resumable loop.

pub mod schedule;
pub mod sgd;
