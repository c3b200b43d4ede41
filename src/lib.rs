//! fl-lab: reproduces the analyses of *Focal Loss for Dense Object Detection* (Lin et al., 2017)
//! by training small RetinaNets with candle. See README.md and the module table in DESIGN.md.

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
pub mod report;
pub mod runtime;
pub mod train;
pub mod util;
