//! Derived statistics of trained models and losses (the paper's Figure 4 and friends).

pub mod loss_cdf;
pub mod loss_cdf_spread;
pub mod model_samples;
pub mod samples;
