//! The training objective: classification loss chosen by config over all non-ignored anchors and
//! classes, smooth L1 on the positives' box deltas, both divided by the normalizer.

use super::targets::{TargetBuilder, Targets};
use crate::config::{Config, LossKind, NormalizerKind};
use crate::loss::ohem::{selection, OhemConfig, RatioMode};
use crate::loss::smooth_l1::smooth_l1_elem;
use crate::loss::{
    fl_star_loss_split, per_anchor_loss, sigmoid_focal_loss_split, smooth_l1_loss, FlStarParams,
    FocalParams, LossSplit,
};
use crate::model::Output;
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

/// The loss normalizer: max(1, positives in the minibatch) (paper), or detectron2's exponential
/// moving average of it (`normalizer = m * normalizer + (1 - m) * max(1, positives)`, starting at 100).
#[derive(Debug, Clone)]
pub struct Normalizer {
    kind: NormalizerKind,
    momentum: f64,
    /// Current EMA value (unused by `Positives`); saved in checkpoints.
    pub value: f64,
}

/// detectron2's initial EMA value (`self.loss_normalizer = 100`).
pub const EMA_START: f64 = 100.0;

impl Normalizer {
    pub fn new(kind: NormalizerKind, momentum: f64) -> Normalizer {
        Normalizer {
            kind,
            momentum,
            value: EMA_START,
        }
    }

    /// The divisor for a minibatch with `positives` foreground anchors (updates the EMA).
    pub fn next(&mut self, positives: usize) -> f64 {
        let p = (positives as f64).max(1.0);
        match self.kind {
            NormalizerKind::Positives => p,
            NormalizerKind::Ema => {
                self.value = self.momentum * self.value + (1.0 - self.momentum) * p;
                self.value
            }
        }
    }
}

/// Normalized loss terms (scalars).
pub struct LossTerms {
    pub cls: Tensor,
    pub boxes: Tensor,
    /// cls + box_weight * boxes.
    pub total: Tensor,
    /// How the classification loss and its gradient split over positives, hard and easy
    /// negatives (for OHEM: over the selected anchors, the only ones that carry a loss).
    pub split: LossSplit,
    /// OHEM with a positive fraction: whether any image's surviving positives reached their quota
    /// (`ohem::Selection`); false otherwise.
    pub ohem_quota_full: bool,
}

/// Computes the loss of one minibatch. `out.cls` `[N, T, K]`, `out.boxes` `[N, T, 4]`.
///
/// For `ohem`, every non-ignored anchor is scored by its unweighted binary cross entropy summed over
/// the K classes plus, for positives, its box loss; `crate::loss::ohem::selection` picks each image's
/// minibatch (NMS over the anchors), and only the selected anchors contribute to either loss.
pub fn compute(
    out: &Output,
    targets: &Targets,
    builder: &TargetBuilder,
    cfg: &Config,
    normalizer: &mut Normalizer,
) -> Result<LossTerms> {
    let norm = normalizer.next(targets.positives.len());
    compute_normalized(out, targets, builder, cfg, norm)
}

/// [`compute`] with the normalizer's value given: the loss of part of a batch, divided by the
/// whole batch's normalizer, so that the parts' losses add up to the batch's.
pub fn compute_normalized(
    out: &Output,
    targets: &Targets,
    builder: &TargetBuilder,
    cfg: &Config,
    norm: f64,
) -> Result<LossTerms> {
    let (n, t, k) = out.cls.dims3()?;
    if n * t != targets.labels.len() {
        bail!(
            "model predicts {t} anchors per image but the targets have {}",
            targets.anchors_per_image
        );
    }
    let dev = out.cls.device();
    let logits = out.cls.reshape((n * t, k))?;
    let labels = Tensor::from_slice(&targets.labels, n * t, dev)?;
    let l = &cfg.loss;
    let (alpha, gamma, beta) = (l.alpha as f32, l.gamma as f32, l.beta as f32);
    let box_beta = l.box_beta as f32;
    let np = targets.positives.len();
    let pos_pred = if np == 0 {
        None
    } else {
        let idx = Tensor::from_slice(&targets.positives, np, dev)?;
        Some(out.boxes.reshape((n * t, 4))?.index_select(&idx, 0)?)
    };
    let box_loss = |keep: Option<&[bool]>| -> Result<Tensor> {
        let Some(pred) = &pos_pred else {
            return Ok(Tensor::zeros((), DType::F32, dev)?);
        };
        let tgt = Tensor::from_slice(&targets.box_targets, (np, 4), dev)?;
        let (pred, tgt) = match keep {
            None => (pred.clone(), tgt),
            Some(keep) => {
                let rows: Vec<u32> = (0..np as u32).filter(|&j| keep[j as usize]).collect();
                if rows.is_empty() {
                    return Ok(Tensor::zeros((), DType::F32, dev)?);
                }
                let idx = Tensor::from_slice(&rows, rows.len(), dev)?;
                (pred.index_select(&idx, 0)?, tgt.index_select(&idx, 0)?)
            }
        };
        Ok(smooth_l1_loss(&pred, &tgt, box_beta)?)
    };
    let ce = |labels: &Tensor, alpha: Option<f32>| {
        sigmoid_focal_loss_split(&logits, labels, &FocalParams { gamma: 0.0, alpha })
    };
    let mut ohem_quota_full = false;
    let ((cls_sum, split), box_sum) = match l.kind {
        LossKind::Focal => {
            let p = FocalParams {
                gamma,
                alpha: Some(alpha),
            };
            (
                sigmoid_focal_loss_split(&logits, &labels, &p)?,
                box_loss(None)?,
            )
        }
        LossKind::Ce => (ce(&labels, Some(alpha))?, box_loss(None)?),
        LossKind::FlStar => {
            let p = FlStarParams::new(gamma, beta, Some(alpha))?;
            (fl_star_loss_split(&logits, &labels, &p)?, box_loss(None)?)
        }
        LossKind::Ohem => {
            let plain = FocalParams {
                gamma: 0.0,
                alpha: None,
            };
            let mut scores = per_anchor_loss(&logits, &labels, &plain)?;
            if let Some(pred) = &pos_pred {
                let p: Vec<f32> = pred.flatten_all()?.to_vec1()?;
                for (j, &a) in targets.positives.iter().enumerate() {
                    scores[a as usize] += (0..4)
                        .map(|c| {
                            smooth_l1_elem(p[4 * j + c] - targets.box_targets[4 * j + c], box_beta)
                        })
                        .sum::<f32>();
                }
            }
            let ohem = OhemConfig {
                batch_size: l.ohem_batch,
                nms_threshold: l.ohem_nms as f32,
                positive_fraction: (l.ohem_ratio > 0).then(|| 1.0 / (1.0 + l.ohem_ratio as f32)),
            };
            let anchors = &builder.anchors_for(t)?.boxes;
            let labels_i32: Vec<i32> = targets.labels.iter().map(|&v| v as i32).collect();
            // Unselected anchors become "ignore" (-1): they get no loss.
            let mut masked = vec![-1i64; n * t];
            for i in 0..n {
                let r = i * t..(i + 1) * t;
                let picked = selection(
                    &scores[r.clone()],
                    anchors,
                    &labels_i32[r],
                    &ohem,
                    RatioMode::Enforce,
                );
                ohem_quota_full |= picked.positive_quota_full;
                for a in picked.indices {
                    masked[i * t + a] = targets.labels[i * t + a];
                }
            }
            let keep: Vec<bool> = targets
                .positives
                .iter()
                .map(|&a| masked[a as usize] > 0)
                .collect();
            let masked = Tensor::from_vec(masked, n * t, dev)?;
            (ce(&masked, None)?, box_loss(Some(&keep))?)
        }
    };
    let cls = (cls_sum / norm)?;
    let boxes = (box_sum / norm)?;
    let total = (&cls + (&boxes * l.box_weight)?)?;
    Ok(LossTerms {
        cls,
        boxes,
        total,
        split,
        ohem_quota_full,
    })
}
