//! Inference: from a model's flattened outputs to detections, and from detections to COCO results.
//!
//! [`detect_image`] follows Detectron's `test_retinanet.py` and detectron2's `RetinaNet.inference`: per
//! pyramid level, sigmoid scores over every (anchor, class) pair; keep those above `score_threshold`; keep the
//! `topk_per_level` best; decode their boxes with the box coder and clip them to the image; class-wise NMS
//! over all levels together; keep the `max_detections` best. [`rescale_detections`] maps boxes back to the
//! original image and [`coco_results`] turns them into COCO result records.

pub mod detect;
pub mod results;

pub use detect::{detect_batch, detect_image, Detection, InferConfig};
pub use results::{
    coco_results, coco_results_with_map, rescale_detections, write_coco_results, CocoResult,
};

/// Invalid inference settings or results that cannot be written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferError {
    #[error("invalid {field} = {value}: {reason}")]
    InvalidField {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("detection has class index {class}, which has no COCO category id (the model has more classes than the dataset?)")]
    UnknownClass { class: usize },
}
