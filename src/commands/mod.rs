//! One module per subcommand: its flags (`Args`) and its top-level function (`run`).

pub mod bench;
pub mod data;
pub mod detect;
pub mod eval;
pub mod loss_cdf;
pub mod loss_curves;
pub mod sweep;
pub mod sweep_imbalance;
pub mod train;
