//! Losses, all computed from logits in log space so that they are finite for any logit.
//!
//! - [`stable`]: softplus / log-sigmoid building blocks shared by every loss (generic f32/f64);
//! - [`terms`]: the focal loss's and FL*'s value and derivative at one logit;
//! - [`focal`]: focal loss, alpha-balanced CE and FL*, per sample and over `[M, K]` tensors;
//! - [`smooth_l1`]: box regression loss;
//! - [`ohem`]: online hard example mining selection;
//! - [`split`]: the shares of loss and gradient carried by positives, hard and easy negatives.

pub mod focal;
mod fused;
pub mod ohem;
pub mod smooth_l1;
pub mod split;
pub mod stable;
pub mod terms;

pub use focal::{
    alpha_balanced_ce, fl_star_loss, fl_star_loss_split, fl_star_loss_with, per_anchor_loss,
    sigmoid_focal_loss, sigmoid_focal_loss_split, FlStarParams, FocalParams, LossParamError,
};
pub use smooth_l1::smooth_l1_loss;
pub use split::LossSplit;
