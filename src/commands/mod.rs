//! One module per subcommand: its flags (`Args`) and its top-level function (`run`).

pub mod eval;
pub mod loss_curves;
pub mod train;
