//! COCO evaluation of detection results, identical to pycocotools' `COCOeval` (bbox).
//!
//! `results` reads and validates a COCO results JSON; `coco` computes AP/AR, per-category AP and
//! precision-recall arrays from a `CocoDataset` and the detections.

pub mod coco;
pub mod results;

pub use coco::{evaluate, CocoEval, EvalError};
pub use results::{load_results, Detection};
