//! Box geometry for dense detection: boxes and IoU, the anchor generator, the anchor-to-ground-truth
//! matcher, the R-CNN box coder and non-maximum suppression.
//!
//! Plain Rust on slices of `[f32; 4]` boxes in `x1, y1, x2, y2` order with continuous coordinates: a box
//! covering pixels 0..=9 is `[0, 0, 10, 10]` and has width 10, as in detectron2, torchvision and
//! pycocotools. Detectron (the paper's code) used the "+1" convention (width = x2 - x1 + 1); the anchor and
//! coder modules say where that changes a number.

pub mod anchors;
pub mod boxes;
pub mod coder;
pub mod matcher;
pub mod nms;

pub use anchors::{AnchorConfig, Anchors, LevelInfo};
pub use boxes::{area, clip, iou, iou_matrix, xywh_to_xyxy, xyxy_to_xywh, Box4};
pub use coder::BoxCoder;
pub use matcher::{
    anchor_labels, LowQualityMatches, Match, Matcher, BACKGROUND_LABEL, IGNORE_LABEL,
};
pub use nms::{batched_nms, nms};

/// Invalid geometry settings. Each message names the field and the value it had.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeometryError {
    #[error("invalid {field} = {value}: {reason}")]
    InvalidField {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl GeometryError {
    pub(crate) fn field(
        field: &'static str,
        value: impl std::fmt::Debug,
        reason: &'static str,
    ) -> Self {
        GeometryError::InvalidField {
            field,
            value: format!("{value:?}"),
            reason,
        }
    }
}
