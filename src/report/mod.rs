//! Output: CSV tables and PNG figures. Computes no statistics itself.

pub mod font;
pub mod loss_cdf;
pub mod plot;
pub mod pr_curve;
pub mod progress;
pub mod sweep;
