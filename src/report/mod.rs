//! Output: CSV tables and PNG figures. Computes no statistics itself.

pub mod font;
pub mod plot;
pub mod pr_curve;
