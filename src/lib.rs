//! fl-lab: reproduces the analyses of *Focal Loss for Dense Object Detection* (Lin et al., 2017)
//! by training small RetinaNets with candle. See README.md.
//!
//! Data flows from `data` (generated or COCO datasets, batches) through `model` (RetinaNet on the
//! kernels of `ops`) and `train` (targets, losses from `loss`, SGD, resumable runs) to `infer` and
//! `eval` (pycocotools-exact COCO evaluation); `experiments` runs the paper's sweeps over those,
//! `analysis` computes the loss CDFs, `report` writes tables and figures, and `commands` is the
//! command line.

pub mod analysis;
pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod device;
pub mod eval;
pub mod experiments;
pub mod geometry;
pub mod infer;
pub mod loss;
pub mod model;
pub mod ops;
pub mod plot;
pub mod report;
pub mod runtime;
pub mod train;
pub mod util;
