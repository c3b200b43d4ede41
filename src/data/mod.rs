//! Datasets: COCO-format I/O, image decoding, the built-in generators and batching.

pub mod coco;
