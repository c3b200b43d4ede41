//! Output: CSV tables and PNG figures. Computes no statistics itself.

pub mod boxes;
pub mod font;
pub mod heatmap;
pub mod imbalance;
pub mod loss_cdf;
pub mod plot;
pub mod pr_curve;
pub mod progress;
pub mod sweep;

use anyhow::{Context, Result};

/// Builds a CSV file in memory (to be written atomically by the caller).
pub fn csv_bytes(
    build: impl FnOnce(&mut csv::Writer<Vec<u8>>) -> csv::Result<()>,
) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    build(&mut w)?;
    w.into_inner().context("cannot finish CSV")
}
