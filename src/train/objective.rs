//! The training objective: classification loss chosen by config over all non-ignored anchors and
//! classes, smooth L1 on the positives' box deltas, both divided by the normalizer.

use super::targets::{TargetBuilder, Targets};
use crate::config::{Config, LossKind, NormalizerKind};
use crate::loss::ohem::{select, OhemConfig};
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
}

/// Computes the loss of one minibatch. `out.cls` `[N, T, K]`, `out.boxes` `[N, T, 4]`.
///
/// For `ohem`, every non-ignored anchor is scored by its unweighted binary cross entropy summed over
/// the K classes plus, for positives, its box loss; `crate::loss::ohem::select` picks each image's
/// minibatch (NMS over the anchors), and only the selected anchors contribute to either loss.
pub fn compute(
    out: &Output,
    targets: &Targets,
    builder: &TargetBuilder,
    cfg: &Config,
    normalizer: &mut Normalizer,
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
    let np = targets.positives.len();
    // [P] box loss of each positive (summed over the 4 coordinates).
    let box_per_pos = if np == 0 {
        None
    } else {
        let idx = Tensor::from_slice(&targets.positives, np, dev)?;
        let pred = out.boxes.reshape((n * t, 4))?.index_select(&idx, 0)?;
        let tgt = Tensor::from_slice(&targets.box_targets, (np, 4), dev)?;
        Some(smooth_l1(&pred, &tgt, l.box_beta)?.sum(1)?)
    };
    let (cls_sum, box_sum) = match l.kind {
        LossKind::Ohem => {
            let per_anchor = sigmoid_loss(&logits, &labels, k, None, 0.0, None)?.sum(1)?;
            let mut scores: Vec<f32> = per_anchor.to_vec1()?;
            let box_scores: Vec<f32> = match &box_per_pos {
                Some(b) => b.to_vec1()?,
                None => Vec::new(),
            };
            for (&a, &b) in targets.positives.iter().zip(&box_scores) {
                scores[a as usize] += b;
            }
            let ohem = OhemConfig {
                batch_size: l.ohem_batch,
                nms_threshold: l.ohem_nms as f32,
                positive_fraction: (l.ohem_ratio > 0).then(|| 1.0 / (1.0 + l.ohem_ratio as f32)),
            };
            let anchors = &builder.anchors_for(t)?.boxes;
            let mut selected = vec![0f32; n * t];
            let labels_i32: Vec<i32> = targets.labels.iter().map(|&v| v as i32).collect();
            for i in 0..n {
                let r = i * t..(i + 1) * t;
                for a in select(&scores[r.clone()], anchors, &labels_i32[r], &ohem) {
                    selected[i * t + a] = 1.0;
                }
            }
            let mask = Tensor::from_vec(selected.clone(), n * t, dev)?;
            let cls_sum = (per_anchor * mask)?.sum_all()?;
            let box_sum = match &box_per_pos {
                Some(b) => {
                    let pos_mask: Vec<f32> = targets
                        .positives
                        .iter()
                        .map(|&a| selected[a as usize])
                        .collect();
                    (b * Tensor::from_vec(pos_mask, np, dev)?)?.sum_all()?
                }
                None => Tensor::zeros((), DType::F32, dev)?,
            };
            (cls_sum, box_sum)
        }
        kind => {
            let (alpha, gamma, beta) = match kind {
                LossKind::Focal => (l.alpha, l.gamma, None),
                LossKind::Ce => (l.alpha, 0.0, None),
                _ => (l.alpha, l.gamma, Some(l.beta)),
            };
            let cls_sum = sigmoid_loss(&logits, &labels, k, Some(alpha), gamma, beta)?.sum_all()?;
            let box_sum = match &box_per_pos {
                Some(b) => b.sum_all()?,
                None => Tensor::zeros((), DType::F32, dev)?,
            };
            (cls_sum, box_sum)
        }
    };
    let norm = normalizer.next(np);
    let cls = (cls_sum / norm)?;
    let boxes = (box_sum / norm)?;
    let total = (&cls + (&boxes * l.box_weight)?)?;
    Ok(LossTerms { cls, boxes, total })
}

/// softplus(z) = max(z, 0) + log(1 + exp(-|z|)), stable for any z.
fn softplus(z: &Tensor) -> candle_core::Result<Tensor> {
    z.relu()? + ((z.abs()?.neg()?.exp()? + 1.0)?.log()?)
}

/// The per-(anchor, class) binary loss `[M, K]`, zero on ignored anchors (label -1):
/// `alpha_t (1 - p_t)^gamma (-log p_t)`, or FL* `alpha_t softplus(-(gamma x_t + beta)) / gamma` when
/// `fl_star_beta` is given; `alpha = None` leaves the loss unweighted. Computed in log space: with
/// x_t = x (2y - 1), -log p_t = softplus(-x_t) and (1 - p_t)^gamma = exp(-gamma softplus(x_t)).
/// `logits` `[M, K]`, `labels` `[M]` (-1 ignore, 0 background, c + 1 class c).
pub fn sigmoid_loss(
    logits: &Tensor,
    labels: &Tensor,
    k: usize,
    alpha: Option<f64>,
    gamma: f64,
    fl_star_beta: Option<f64>,
) -> candle_core::Result<Tensor> {
    let m = labels.dim(0)?;
    let dev = logits.device();
    // One-hot over classes 1..=K: class c + 1 lights column c.
    let cols = Tensor::arange(1i64, k as i64 + 1, dev)?.reshape((1, k))?;
    let lab = labels.reshape((m, 1))?;
    let y = lab.broadcast_eq(&cols)?.to_dtype(DType::F32)?;
    let valid = lab.ge(0i64)?.to_dtype(DType::F32)?;
    let sign = ((&y * 2.0)? - 1.0)?;
    let xt = (logits * &sign)?;
    let per = match fl_star_beta {
        Some(beta) => (softplus(&((&xt * gamma)? + beta)?.neg()?)? / gamma)?,
        None => {
            let ce = softplus(&xt.neg()?)?;
            if gamma == 0.0 {
                ce
            } else {
                ((softplus(&xt)? * (-gamma))?.exp()? * ce)?
            }
        }
    };
    let per = match alpha {
        Some(alpha) => (per * ((&y * (2.0 * alpha - 1.0))? + (1.0 - alpha))?)?,
        None => per,
    };
    per.broadcast_mul(&valid)
}

/// Elementwise smooth L1: 0.5 d^2 / beta if d < beta else d - 0.5 beta (L1 at beta 0).
pub fn smooth_l1(pred: &Tensor, target: &Tensor, beta: f64) -> candle_core::Result<Tensor> {
    let d = (pred - target)?.abs()?;
    if beta <= 0.0 {
        return Ok(d);
    }
    let quad = (d.sqr()? * (0.5 / beta))?;
    let lin = (&d - 0.5 * beta)?;
    d.lt(beta)?.where_cond(&quad, &lin)
}
