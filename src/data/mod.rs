//! Datasets: COCO-format I/O, image decoding, the built-in generators and batching.

pub mod anchor_counts;
pub mod coco;
pub mod fashion;
pub mod generate;
pub mod image_io;
pub mod loader;
pub mod scene;
pub mod shapes;
pub mod stats;

pub use generate::{ensure_builtin, resolve, DataSource, Split};
